//! The policy file: a YAML stream of Istio and Palisade documents.
//!
//! ```
//! use palisade_core::policy::{PolicySet, Workload};
//! let yaml = r#"
//! apiVersion: security.istio.io/v1
//! kind: RequestAuthentication
//! metadata: {name: jwt, namespace: default}
//! spec:
//!   selector: {matchLabels: {app: details}}
//!   jwtRules:
//!   - issuer: https://idp.example/realms/demo
//!     audiences: [details]
//! ---
//! apiVersion: security.istio.io/v1
//! kind: RequestAuthentication
//! metadata: {name: other, namespace: default}
//! spec:
//!   selector: {matchLabels: {app: reviews}}
//!   jwtRules: [{issuer: https://elsewhere}]
//! "#;
//! let set = PolicySet::from_yaml_str(yaml, "inline.yaml")?;
//! let mine = set.for_workload(&Workload::new("details", "default"));
//! assert_eq!(mine.request_authentications().count(), 1);
//! # Ok::<(), palisade_core::policy::PolicyError>(())
//! ```
//!
//! Every document is parsed into typed schemas (enums for actions and modes,
//! [`DurationSpec`] for durations) and checked as far as it can be without a
//! workload when the file loads, whichever workload it names: one file can
//! describe a whole mesh, and a typo anywhere in it is a start-up error naming
//! the file, the document, the field, and the line and column.
//!
//! ```
//! use palisade_core::policy::PolicySet;
//! let yaml = "apiVersion: security.istio.io/v1
//! kind: AuthorizationPolicy
//! metadata: {name: ops, namespace: prod}
//! spec:
//!   selector: {matchLabels: {app: reviews}}
//!   action: ALOW
//! ";
//! let err = PolicySet::from_yaml_str(yaml, "mesh.yaml").unwrap_err();
//! assert_eq!(err.field.as_deref(), Some("spec.action"));
//! assert_eq!((err.line.map(u32::from), err.column.map(u32::from)), (Some(6), Some(11)));
//! assert!(err.to_string().starts_with(
//!     "mesh.yaml: document 1 (AuthorizationPolicy prod/ops): field `spec.action`: unknown variant `ALOW`"
//! ));
//! ```
//!
//! A document applies to a workload by its namespace (the workload's, or the
//! root namespace for every workload; a `DestinationRule` also from the
//! called service's namespace, where its `exportTo` lets it: see
//! [`Document::applies_to`]) and `selector`, or, for an
//! `AuthorizationPolicy` or `RequestAuthentication` with `targetRefs`, when
//! it targets the `Service` the workload serves ([`TargetRefSpec`] says what
//! each kind of target means in process). What loads but applies to no
//! in-process workload is listed by [`PolicySet::warnings`].
//!
//! The schemas are grouped by API: `security.istio.io` ([`AuthorizationPolicySpec`],
//! [`RequestAuthenticationSpec`], [`PeerAuthenticationSpec`]), `rbac.istio.io`
//! ([`ServiceRoleSpec`], [`ServiceRoleBindingSpec`], [`RbacConfigSpec`]),
//! `palisade.dev` ([`JwtSettingsSpec`], [`AuthorizationSettingsSpec`],
//! [`SpnegoSettingsSpec`]), `networking.istio.io` ([`DestinationRuleSpec`],
//! read and validated for outbound calls) and Keycloak's adapter file
//! ([`KeycloakAdapterConfig`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};

mod assemble;
mod duration;
mod error;
mod keycloak;
mod networking;
mod palisade;
mod rbac;
mod security;
mod target;
mod workloads;

pub use self::assemble::FromPolicy;
pub use self::duration::{DurationError, DurationSpec, parse_duration};
pub use self::error::{PolicyError, PolicyWarning};
pub use self::keycloak::KeycloakAdapterConfig;
pub use self::networking::{
    ClientTlsMode, ClientTlsSettingsSpec, DestinationRuleSpec, PortSelectorSpec, PortTrafficPolicySpec,
    SubsetSpec, TrafficPolicySpec, host_specificity,
};
pub use self::palisade::{
    AuthorizationSettingsSpec, ClientAuthMethod, DpopSpec, IntrospectionSpec, JwtSettingsSpec,
    NEGOTIATE_COOKIE, OidcClientKeySpec, OidcLoginSpec, OidcSessionKeySpec, OidcSessionSpec,
    ResourceMetadataSpec, SIGN_IN_COOKIE, SessionCookieSpec, SessionKeySpec, SignInPaths, SpnegoSettingsSpec,
    TokenFrom, UpstreamCredentialsSpec, UpstreamTokenSpec,
};
pub use self::rbac::{
    AccessRuleSpec, ConstraintSpec, EnforcementMode, RbacConfigSpec, RbacMode, RbacTargetSpec, RoleRefSpec,
    ServiceRoleBindingSpec, ServiceRoleSpec, SubjectSpec,
};
pub use self::security::{
    AuthorizationPolicySpec, ClaimToHeaderSpec, ConditionSpec, ExtensionProviderSpec, FromSpec,
    JwtHeaderSpec, JwtRuleSpec, MtlsMode, OperationSpec, PeerAuthenticationSpec, PeerMtlsSpec,
    RequestAuthenticationSpec, RuleSpec, SourceSpec, ToSpec,
};
use self::target::Scope;
pub use self::target::{TargetGroup, TargetKind, TargetRefSpec};
pub use self::workloads::ANY_SERVICE;

/// Log target of the policy loader (its warnings).
pub const LOG_TARGET: &str = "palisade::policy";
/// The `apiVersion` of Palisade's own kinds.
pub const PALISADE_API_VERSION: &str = "palisade.dev/v1alpha1";
/// Istio's default root namespace: documents there apply to every workload.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The `apiVersion`s of `security.istio.io` this loader reads.
const SECURITY_API_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];
/// The `apiVersion` of Istio's older RBAC kinds.
const RBAC_API_VERSION: &str = "rbac.istio.io/v1alpha1";
/// The `apiVersion`s of `networking.istio.io` this loader reads.
const NETWORKING_API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// A problem found by a check of a deserialized value: (field path, message).
pub(crate) type FieldError = (String, String);

/// The workload a service runs as: what selects the documents that apply
/// to it. Made with [`Workload::new`]: it may gain fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Workload {
    /// The service name (`app` label): also the Kubernetes `Service` this
    /// workload serves, which a `targetRefs` entry of kind `Service` names.
    pub service: String,
    /// The namespace.
    pub namespace: String,
    /// The workload's labels; always holds `app: <service>`.
    pub labels: BTreeMap<String, String>,
    /// The root namespace whose documents apply to every workload.
    pub root_namespace: String,
}

impl Workload {
    /// A workload with the label `app: <service>` in `namespace`.
    #[must_use]
    pub fn new(service: &str, namespace: &str) -> Self {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_owned(), service.to_owned());
        Self {
            service: service.to_owned(),
            namespace: namespace.to_owned(),
            labels,
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
        }
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets the root namespace, whose documents apply to every workload
    /// (Istio's `rootNamespace`, `istio-system` by default).
    ///
    /// ```
    /// use palisade_core::policy::Workload;
    /// let w = Workload::new("details", "shop").root_namespace("mesh-root");
    /// assert_eq!((w.namespace.as_str(), w.root_namespace.as_str()), ("shop", "mesh-root"));
    /// ```
    #[must_use]
    pub fn root_namespace(mut self, namespace: &str) -> Self {
        namespace.clone_into(&mut self.root_namespace);
        self
    }

    /// The host name `ServiceRole.rules.services` matches:
    /// `<service>.<namespace>.svc.cluster.local`.
    #[must_use]
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.service, self.namespace)
    }
}

/// `NS/NAME`, with the labels other than `app` in brackets when there are
/// (`default/details[version=v2]`): how `palisade check` and
/// `palisade::check_policy` name a workload.
impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service)?;
        let mut extra = self.labels.iter().filter(|(k, _)| *k != "app");
        if let Some((k, v)) = extra.next() {
            write!(f, "[{k}={v}")?;
            for (k, v) in extra {
                write!(f, ",{k}={v}")?;
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

/// Kubernetes object metadata (the fields Palisade reads, plus the usual
/// read-only ones that `kubectl get -o yaml` prints, which are ignored).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Metadata {
    /// The document's name.
    #[serde(default)]
    pub name: String,
    /// The namespace; absent or empty means `default`, as for kubectl.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels (not used for selection).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (`istio.io/dry-run`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, rename = "uid")]
    _uid: Option<Ignored>,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<Ignored>,
    #[serde(default, rename = "generation")]
    _generation: Option<Ignored>,
    #[serde(default, rename = "creationTimestamp")]
    _creation_timestamp: Option<Ignored>,
    #[serde(default, rename = "managedFields")]
    _managed_fields: Option<Ignored>,
    #[serde(default, rename = "ownerReferences")]
    _owner_references: Option<Ignored>,
    #[serde(default, rename = "finalizers")]
    _finalizers: Option<Ignored>,
    #[serde(default, rename = "selfLink")]
    _self_link: Option<Ignored>,
    #[serde(default, rename = "deletionTimestamp")]
    _deletion_timestamp: Option<Ignored>,
    #[serde(default, rename = "deletionGracePeriodSeconds")]
    _deletion_grace_period_seconds: Option<Ignored>,
}

impl Metadata {
    /// The namespace, `default` when absent or empty (as kubectl reads
    /// `namespace: ""`).
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    }
}

/// A value that is accepted and not kept (read-only Kubernetes fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ignored;

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer).map(|_| Ignored)
    }
}

/// `spec.selector` of Istio documents.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SelectorSpec {
    /// Labels the workload must all have.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// The typed body of a document.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Spec {
    /// `security.istio.io` `RequestAuthentication`.
    RequestAuthentication(RequestAuthenticationSpec),
    /// `security.istio.io` `AuthorizationPolicy`.
    AuthorizationPolicy(AuthorizationPolicySpec),
    /// `security.istio.io` `PeerAuthentication`.
    PeerAuthentication(PeerAuthenticationSpec),
    /// `palisade.dev/v1alpha1` `JwtSettings`.
    JwtSettings(JwtSettingsSpec),
    /// `palisade.dev/v1alpha1` `KeycloakAdapter`.
    KeycloakAdapter(KeycloakAdapterConfig),
    /// `palisade.dev/v1alpha1` `AuthorizationSettings`.
    AuthorizationSettings(AuthorizationSettingsSpec),
    /// `palisade.dev/v1alpha1` `SpnegoSettings`.
    SpnegoSettings(SpnegoSettingsSpec),
    /// `palisade.dev/v1alpha1` `OidcLogin`: browser sign-in.
    OidcLogin(OidcLoginSpec),
    /// `palisade.dev/v1alpha1` `UpstreamCredentials`: the token the
    /// workload sends to a host it calls.
    UpstreamCredentials(UpstreamCredentialsSpec),
    /// `rbac.istio.io/v1alpha1` `ServiceRole`.
    ServiceRole(ServiceRoleSpec),
    /// `rbac.istio.io/v1alpha1` `ServiceRoleBinding`.
    ServiceRoleBinding(ServiceRoleBindingSpec),
    /// `rbac.istio.io/v1alpha1` `RbacConfig` or `ClusterRbacConfig`.
    RbacConfig(RbacConfigSpec),
    /// `networking.istio.io` `DestinationRule`: how the workload calls a host.
    DestinationRule(DestinationRuleSpec),
}

impl Spec {
    /// The files the document names that its parts read when they are
    /// built (secrets, keys, CA bundles), as written, in the order they
    /// are named; not a `DestinationRule`'s, whose TLS watches its own
    /// files. What a reloader watches with the policy file.
    #[must_use]
    pub fn files(&self) -> Vec<&str> {
        let mut files: Vec<&str> = Vec::new();
        match self {
            Self::JwtSettings(s) => {
                files.extend(s.ca_file.as_deref());
                if let Some(i) = &s.introspection {
                    files.extend(i.client_secret_file.as_deref());
                }
                if let Some(d) = &s.dpop {
                    files.extend(d.nonce_secret_file.as_deref());
                }
            }
            Self::SpnegoSettings(s) => {
                let cookie_keys = s.session_cookie.iter().flat_map(|c| &c.keys);
                files.extend(cookie_keys.map(|k| k.key_file.as_str()));
            }
            Self::OidcLogin(s) => {
                files.extend(s.client_secret_file.as_deref());
                files.extend(s.ca_file.as_deref());
                files.extend(s.client_key.iter().map(|k| k.key_file.as_str()));
                files.extend(s.session.keys.iter().map(|k| k.key_file.as_str()));
            }
            Self::UpstreamCredentials(s) => files.extend(s.token.client_secret_file.as_deref()),
            Self::RequestAuthentication(_)
            | Self::AuthorizationPolicy(_)
            | Self::PeerAuthentication(_)
            | Self::KeycloakAdapter(_)
            | Self::AuthorizationSettings(_)
            | Self::ServiceRole(_)
            | Self::ServiceRoleBinding(_)
            | Self::RbacConfig(_)
            | Self::DestinationRule(_) => {}
        }
        files
    }

    /// The document's workload selector: `spec.selector` (for a
    /// `DestinationRule`, `spec.workloadSelector`: the calling workload).
    /// `None` for kinds that select by namespace alone, by target
    /// references (`targetRefs`), or by other means
    /// (`ServiceRole.rules.services`, `RbacConfig`).
    #[must_use]
    pub fn selector(&self) -> Option<&SelectorSpec> {
        match self.scope() {
            Scope::Selector(s) => s,
            Scope::Targets(..) => None,
        }
    }

    /// The document's target references (`spec.targetRefs`, or the older
    /// `spec.targetRef`); empty when it selects workloads by a selector.
    #[must_use]
    pub fn target_refs(&self) -> &[TargetRefSpec] {
        self.scope().refs()
    }

    /// How the document chooses its workloads: a selector (absent: all of
    /// the namespace), or target references.
    fn scope(&self) -> Scope<'_> {
        Scope::Selector(match self {
            Spec::RequestAuthentication(s) => return s.scope(),
            Spec::AuthorizationPolicy(s) => return s.scope(),
            Spec::PeerAuthentication(s) => s.selector.as_ref(),
            Spec::OidcLogin(s) => s.selector.as_ref(),
            Spec::KeycloakAdapter(s) => s.selector.as_ref(),
            // Select the calling workload.
            Spec::UpstreamCredentials(s) => s.selector.as_ref(),
            Spec::DestinationRule(s) => s.workload_selector.as_ref(),
            Spec::JwtSettings(_)
            | Spec::AuthorizationSettings(_)
            | Spec::SpnegoSettings(_)
            | Spec::ServiceRole(_)
            | Spec::ServiceRoleBinding(_)
            | Spec::RbacConfig(_) => None,
        })
    }
}

/// One document of the stream.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Document {
    /// 1-based position in the stream.
    pub index: usize,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata`.
    pub metadata: Metadata,
    /// The typed `spec`.
    pub spec: Spec,
    /// The 1-based line of the file where the document starts (`None` for
    /// documents built in code).
    pub line: Option<usize>,
}

impl Document {
    /// `Kind namespace/name`, for messages.
    #[must_use]
    pub fn resource(&self) -> String {
        format!(
            "{} {}/{}",
            self.kind,
            self.metadata.namespace(),
            self.metadata.name
        )
    }

    /// An error located at a field of this document; `source` names the file.
    #[must_use]
    pub fn error(&self, source: &str, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::new(source, message)
            .at(self.index, Some(self.resource()), field)
            .at_line(self.line, None)
    }

    /// The checks of this document that need no workload, as loading a
    /// file makes them (and [`PolicySet::from_documents`] for documents
    /// built in code).
    ///
    /// # Errors
    /// A [`PolicyError`] naming `source`, this document and the field.
    pub fn check(&self, source: &str) -> Result<(), PolicyError> {
        self.check_fields()
            .map_err(|(field, message)| self.error(source, &field, message))
    }

    fn check_fields(&self) -> Result<(), FieldError> {
        self.check_selector()?;
        crate::authz::compile::check_dry_run_place(&self.metadata, &self.spec)?;
        match &self.spec {
            Spec::RequestAuthentication(s) => s.check(),
            Spec::AuthorizationPolicy(s) => {
                crate::authz::compile::check_policy(&self.metadata, s)?;
                never_matching_leaves_open(
                    s.action,
                    s.rules.iter().flatten().enumerate().flat_map(|(ri, rule)| {
                        rule.to.iter().flatten().enumerate().map(move |(ti, to)| {
                            let o = &to.operation;
                            (
                                format!("spec.rules[{ri}].to[{ti}].operation"),
                                [&o.methods, &o.not_methods],
                                [&o.paths, &o.not_paths],
                            )
                        })
                    }),
                )
            }
            Spec::PeerAuthentication(s) => s.check(),
            Spec::JwtSettings(s) => s.check(),
            Spec::KeycloakAdapter(s) => s.check().and_then(|()| s.check_sign_in()),
            Spec::SpnegoSettings(s) => s.check(),
            Spec::OidcLogin(s) => s.check(),
            Spec::UpstreamCredentials(s) => s.check(),
            Spec::ServiceRole(s) => {
                crate::authz::rbac::check_role(s)?;
                never_matching_leaves_open(
                    crate::authz::Action::Allow,
                    s.rules.iter().enumerate().map(|(ri, rule)| {
                        (
                            format!("spec.rules[{ri}]"),
                            [&rule.methods, &rule.not_methods],
                            [&rule.paths, &rule.not_paths],
                        )
                    }),
                )
            }
            Spec::ServiceRoleBinding(s) => crate::authz::rbac::check_binding(s, self.metadata.namespace()),
            Spec::DestinationRule(s) => s.check(),
            // One per mesh, as Istio's validation has it: a team's
            // `PERMISSIVE` one of another name would switch RBAC for all.
            Spec::RbacConfig(_) if self.metadata.name != "default" => Err((
                "metadata.name".into(),
                format!(
                    "must be `default`, not `{}` (Istio refuses any other name: one per mesh)",
                    self.metadata.name
                ),
            )),
            Spec::RbacConfig(s) => s.check(),
            Spec::AuthorizationSettings(s) => s.check(),
        }
    }

    /// The selector's labels, as Istio validates them: no empty key and no
    /// wildcard (a `*` would match no workload's label here, where a reader
    /// may take it for "every workload").
    fn check_selector(&self) -> Result<(), FieldError> {
        let Some(selector) = self.spec.selector() else {
            return Ok(());
        };
        let at = match self.spec {
            Spec::DestinationRule(_) => "spec.workloadSelector.matchLabels",
            _ => "spec.selector.matchLabels",
        };
        for (key, value) in &selector.match_labels {
            if key.trim().is_empty() {
                return Err((
                    at.into(),
                    "an empty label key is not supported in a selector".into(),
                ));
            }
            if key.contains('*') || value.contains('*') {
                return Err((
                    format!("{at}.{key}"),
                    "a wildcard is not supported in a selector (Istio refuses it): leave the selector out to select every workload of the namespace".into(),
                ));
            }
        }
        Ok(())
    }

    /// Whether this document applies to the workload.
    ///
    /// A document with `targetRef` or `targetRefs` applies to the workload
    /// that serves a `Service` it names, in the document's own namespace
    /// (see [`TargetRefSpec`]); any other document by its namespace (the
    /// workload's or the root namespace) and its selector. A
    /// `DestinationRule` applies to the calling workloads it is exported
    /// to, on Istio's lookup path: of the caller's namespace, of any other
    /// (for calls to the services of its own namespace, without a
    /// `workloadSelector`), of the root namespace.
    #[must_use]
    pub fn applies_to(&self, workload: &Workload) -> bool {
        let ns = self.metadata.namespace();
        match &self.spec {
            // Mesh-wide switches: one per mesh, wherever they are written.
            Spec::RbacConfig(_) => return true,
            // Namespaced, without the root-namespace rule; `services` selects.
            Spec::ServiceRole(_) | Spec::ServiceRoleBinding(_) => return ns == workload.namespace,
            Spec::DestinationRule(rule) => {
                if !rule.exported_to(ns, &workload.namespace) {
                    return false;
                }
                // The called service's namespace's rule (its hosts' own
                // namespace: `UpstreamTls` reads it so).
                if ns != workload.namespace && ns != workload.root_namespace {
                    return rule.workload_selector.is_none();
                }
            }
            _ => {}
        }
        let selector = match self.spec.scope() {
            scope @ Scope::Targets(..) => {
                return scope.refs().iter().any(|t| t.selects(ns, workload));
            }
            Scope::Selector(selector) => selector,
        };
        if ns != workload.namespace && ns != workload.root_namespace {
            return false;
        }
        match selector {
            None => true,
            Some(sel) => sel
                .match_labels
                .iter()
                .all(|(k, v)| workload.labels.get(k) == Some(v)),
        }
    }

    /// What loads but does nothing here (a target reference that names no
    /// in-process workload, a field read and not applied) or relaxes a
    /// default (a dry run, plaintext callers). (field path, message) pairs.
    fn warnings(&self) -> Vec<FieldError> {
        let mut out: Vec<FieldError> = self
            .spec
            .scope()
            .targets()
            .filter_map(|(field, t)| target::not_a_workload(t).map(|m| (field, m)))
            .collect();
        // Kubernetes refuses such a name: under it no workload is in it (a
        // document for `Default` applies to none of `default`'s), though a
        // workload named so in code, outside Kubernetes, may be.
        if let Some(ns) = &self.metadata.namespace
            && !ns.is_empty()
            && !crate::syntax::is_dns_label(ns)
        {
            out.push((
                "metadata.namespace".into(),
                format!(
                    "{ns:?} is not a namespace name Kubernetes takes (lower-case letters, digits and `-`, at most 63, starting and ending with a letter or digit): this document applies only to a workload whose namespace is written exactly so"
                ),
            ));
        }
        match &self.spec {
            Spec::AuthorizationPolicy(p) => {
                if crate::authz::compile::dry_run(&self.metadata) == Ok(true) {
                    out.push((
                        "metadata.annotations.istio.io/dry-run".into(),
                        "a dry run: this policy's decisions are logged, not enforced".into(),
                    ));
                }
                for (ri, rule) in p.rules.iter().flatten().enumerate() {
                    // Keycloak's roles are nested (`realm_access.roles`),
                    // and a dotted name is read as one claim, as Envoy
                    // reads it: such a condition never holds. (A URL,
                    // as namespaced claims are named, is one claim.)
                    for (wi, condition) in rule.when.iter().enumerate() {
                        if let Some(name) = condition.key.strip_prefix("request.auth.claims[")
                            && let Some(name) = name.strip_suffix(']')
                            && !name.contains(['[', ']', '/', ':'])
                            && name.contains('.')
                        {
                            out.push((
                                format!("spec.rules[{ri}].when[{wi}].key"),
                                format!(
                                    "reads the top-level claim named `{name}`, as Envoy does; for a nested claim write request.auth.claims[{}]",
                                    name.split('.').collect::<Vec<_>>().join("][")
                                ),
                            ));
                        }
                    }
                    for (ti, to) in rule.to.iter().flatten().enumerate() {
                        let o = &to.operation;
                        let at = format!("spec.rules[{ri}].to[{ti}].operation");
                        out.extend(never_matching(
                            &at,
                            [&o.methods, &o.not_methods],
                            [&o.paths, &o.not_paths],
                            false,
                        ));
                    }
                    out.extend(head_left_out(
                        p.action,
                        ri,
                        rule.to.as_deref().unwrap_or_default(),
                    ));
                    out.extend(crate::authz::compile::hosts_without_port(p.action, ri, rule));
                }
            }
            Spec::ServiceRole(r) => {
                for (ri, rule) in r.rules.iter().enumerate() {
                    out.extend(never_matching(
                        &format!("spec.rules[{ri}]"),
                        [&rule.methods, &rule.not_methods],
                        [&rule.paths, &rule.not_paths],
                        false,
                    ));
                }
            }
            Spec::PeerAuthentication(s) => out.extend(s.warnings()),
            // Istio's documentation says the service's names are then the
            // audiences, and so does Palisade; Envoy, as Istio configures
            // it, checks none: a mesh's tokens without `aud` get in there.
            Spec::RequestAuthentication(r) => out.extend(
                r.jwt_rules
                    .iter()
                    .enumerate()
                    .filter(|(_, rule)| rule.audiences.is_empty())
                    .map(|(i, _)| {
                        (
                            format!("spec.jwtRules[{i}].audiences"),
                            "none given: a token's `aud` must name the service (`<service>.<namespace>.svc.cluster.local` or `<service>`), as Istio's documentation says, where Envoy, as Istio configures it, checks none: list the audiences the issuer's tokens carry".to_owned(),
                        )
                    }),
            ),
            Spec::ServiceRoleBinding(s) if s.mode == EnforcementMode::Permissive => out.push((
                "spec.mode".into(),
                "a dry run: this binding's decisions are logged, not enforced".into(),
            )),
            Spec::RbacConfig(s) => out.extend(s.warnings()),
            Spec::KeycloakAdapter(s) => {
                out.extend(s.warnings());
                // A keycloak.json is one application's: its audience check
                // or its sign-in, namespace-wide, is every workload's.
                // (An empty `matchLabels` selects as much as none.)
                if s.selector.as_ref().is_none_or(|sel| sel.match_labels.is_empty())
                    && s.resource.is_some()
                    && (s.verify_token_audience == Some(true) || s.signs_in())
                {
                    let ns = self.metadata.namespace();
                    let scope = if ns == DEFAULT_ROOT_NAMESPACE {
                        format!("every workload of the mesh ({ns} is the root namespace)")
                    } else {
                        format!("every workload of namespace {ns}")
                    };
                    out.push((
                        "spec.selector".into(),
                        format!(
                            "selects no workload in particular: this adapter of the client `{}` applies to {scope} (its audience check or its sign-in too); give it `selector: {{matchLabels: {{app: …}}}}`",
                            s.resource.as_deref().unwrap_or_default(),
                        ),
                    ));
                }
            }
            Spec::DestinationRule(s) => out.extend(s.warnings(self.metadata.namespace())),
            Spec::SpnegoSettings(s) => out.extend(s.warnings()),
            Spec::UpstreamCredentials(s) => out.extend(s.warnings()),
            Spec::AuthorizationSettings(s) => out.extend(s.warnings()),
            Spec::JwtSettings(s) => out.extend(s.warnings()),
            _ => {}
        }
        out
    }
}

/// Why a kind a mesh's files hold beside its policies is not read here,
/// and what to do instead; `None` for a kind that is simply unknown.
fn not_read(api_version: &str, kind: &str) -> Option<&'static str> {
    // Kubernetes' core group is the bare `v1`.
    let group = match api_version.split_once('/') {
        Some((group, _)) => group,
        None if api_version == "v1" => "",
        None => return None,
    };
    Some(match (group, kind) {
        ("authentication.istio.io", _) => {
            "Istio's authentication policy before 1.5; write it as a PeerAuthentication (mTLS) and a RequestAuthentication (JWT)"
        }
        (
            "networking.istio.io",
            "VirtualService" | "Gateway" | "ServiceEntry" | "Sidecar" | "EnvoyFilter" | "WorkloadEntry"
            | "WorkloadGroup" | "ProxyConfig",
        )
        | ("telemetry.istio.io" | "extensions.istio.io" | "gateway.networking.k8s.io", _) => {
            "it configures Istio's proxies, not the authentication or authorization of an in-process workload; keep it out of the policy file"
        }
        ("", "List") => {
            "a list of objects, as `kubectl get -o yaml` prints several; write each of its `items` as a document of its own (separated by `---`)"
        }
        ("" | "apps" | "batch" | "rbac.authorization.k8s.io" | "networking.k8s.io", _) => {
            "a Kubernetes object, not a policy; keep it out of the policy file"
        }
        _ => return None,
    })
}

/// Every document of a policy file, validated.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    source: String,
    documents: Vec<Document>,
    warnings: Vec<PolicyWarning>,
    /// The text's [`digest`]: a reloader tells a change from it.
    digest: u64,
    /// Read from a file: what the files it names held just after it was
    /// read (`reload::files_digest`), so a reloader also loads a change
    /// of them made before it was made.
    named_digest: Option<u64>,
    /// `(issuer, JWKS URI)`: where keys are fetched from in place of where
    /// the documents say ([`PolicySet::jwks_uri_override`]).
    jwks_overrides: Vec<(String, String)>,
}

/// Two sets are equal when their documents (and the overrides code gave
/// them, [`PolicySet::jwks_uri_override`]) are, whatever text (comments,
/// spacing) they were read from.
impl PartialEq for PolicySet {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
            && self.documents == other.documents
            && self.warnings == other.warnings
            && self.jwks_overrides == other.jwks_overrides
    }
}

/// Why a policy file of nothing but white space (and document markers,
/// `---`, which a generator that printed nothing leaves) is not loaded.
pub(crate) const EMPTY_TEXT: &str = "empty (a file being written?): not loaded; to remove every policy, write a file of comments (`# no policy`)";

/// What is said of a policy file that holds no document (comments only),
/// at start-up and on reload.
pub(crate) const EMPTY_FILE: &str = "the policy file holds no document: no policy, so every request is allowed; if a writer has not finished it, replace the file by renaming a complete one over it";

/// A digest of a policy file's bytes, to tell a change (not a secret: the
/// writer of the file is trusted).
pub(crate) fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same bytes give the same digest in this process,
    // the only place digests are compared.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The first entry of `items` equal to an earlier one: its index, and the
/// earlier one's. One pass with a hash set, so that a list as long as the
/// YAML parser lets a document hold (hundreds of thousands of entries)
/// is checked in linear time.
pub(crate) fn first_repeat<T: std::hash::Hash + Eq>(
    items: impl IntoIterator<Item = T>,
) -> Option<(usize, usize)> {
    let mut seen = HashMap::new();
    for (i, item) in items.into_iter().enumerate() {
        if let Some(&first) = seen.get(&item) {
            return Some((i, first));
        }
        seen.insert(item, i);
    }
    None
}

/// The most documents a policy file holds (a mesh's policies for the
/// services of one process are tens): more is refused, naming the first
/// over, so that the checks of each document against the others stay
/// quick at every load and reload.
pub const MAX_DOCUMENTS: usize = 4096;

/// Checks `document` as loading a file checks it, alone and against the
/// documents before it, and adds it (and its warnings).
fn admit(
    documents: &mut Vec<Document>,
    warnings: &mut Vec<PolicyWarning>,
    document: Document,
    source: &str,
) -> Result<(), PolicyError> {
    document.check(source)?;
    let mut warn = |document: &Document, field: &str, message: String| {
        warnings.push(PolicyWarning::new(document.error(source, field, message)));
    };
    // Kubernetes keeps one object per kind, namespace and name: of
    // two, one would be ignored there, and both apply here. (A
    // document without a name is accepted, as the contract asks
    // only `apiVersion` and `kind`, and said to be nameless.)
    if document.metadata.name.is_empty() {
        warn(
            &document,
            "metadata.name",
            "missing: Kubernetes would refuse this document; logs and decisions name it by its kind alone"
                .to_owned(),
        );
    } else if let Some(first) = documents.iter().find(|d: &&Document| {
        d.kind == document.kind
            && d.metadata.name == document.metadata.name
            && d.metadata.namespace() == document.metadata.namespace()
    }) {
        // Documents pasted from `kubectl apply -n NS` examples name no
        // namespace, and land in one.
        let unnamed = if document.metadata.namespace.is_none() || first.metadata.namespace.is_none() {
            " (a document without `metadata.namespace` is in `default`: kubectl's `-n` is not known here)"
        } else {
            ""
        };
        return Err(document.error(
            source,
            "metadata.name",
            format!(
                "document {} is already {} {}/{}: give each its own name (Kubernetes would keep only one){unnamed}",
                first.index,
                first.kind,
                first.metadata.namespace(),
                first.metadata.name
            ),
        ));
    }
    if let Some(e) = given_twice(documents.iter(), &document, source) {
        return Err(e);
    }
    for (field, message) in document.warnings() {
        warn(&document, &field, message);
    }
    documents.push(document);
    Ok(())
}

/// The checks of a whole set, once each document is admitted.
fn finish(
    documents: &[Document],
    warnings: &mut Vec<PolicyWarning>,
    source: &str,
) -> Result<(), PolicyError> {
    settings_for_no_issuer(documents, source)?;
    for (document, field, message) in destination_rule_warnings(documents) {
        warnings.push(PolicyWarning::new(document.error(source, field, message)));
    }
    for (document, field, message) in issuers_as_request_principals(documents) {
        warnings.push(PolicyWarning::new(document.error(source, &field, message)));
    }
    // A file that names namespaces (other than the root namespace, whose
    // mesh-wide documents sit beside `default`'s), with documents that
    // name none: likely
    // pasted from examples applied with `kubectl apply -n NS`, which land
    // in `default` here, and apply to none of NS's workloads.
    let named: std::collections::BTreeSet<&str> = documents
        .iter()
        .filter_map(|d| d.metadata.namespace.as_deref())
        .filter(|ns| !["", "default", DEFAULT_ROOT_NAMESPACE].contains(ns))
        .collect();
    if !named.is_empty() {
        let named = named.into_iter().collect::<Vec<_>>().join(", ");
        // (An `RbacConfig` is the mesh's, whatever its namespace.)
        let unnamed = documents
            .iter()
            .filter(|d| d.metadata.namespace.is_none() && !matches!(d.spec, Spec::RbacConfig(_)));
        for document in unnamed {
            warnings.push(PolicyWarning::new(document.error(
                source,
                "metadata.namespace",
                format!(
                    "missing: read as `default` (as kubectl reads it without `-n`), while the file's other documents name {named}; give it the namespace of the workloads it is for"
                ),
            )));
        }
    }
    Ok(())
}

/// A request principal (`requestPrincipals`, `notRequestPrincipals`, a
/// `request.auth.principal` condition) that is one of the file's issuers
/// alone: a request principal is `ISSUER/SUBJECT`, so it matches no token
/// of that issuer (read as the issuer's parent and a subject), and a `DENY`
/// on it never fires. Likely meant: `ISSUER/*`.
fn issuers_as_request_principals(documents: &[Document]) -> Vec<(&Document, String, String)> {
    let issuers: Vec<&str> = documents
        .iter()
        .flat_map(|d| match &d.spec {
            Spec::RequestAuthentication(s) => s.jwt_rules.iter().map(|r| r.issuer.as_str()).collect(),
            _ => Vec::new(),
        })
        .collect();
    let mut out = Vec::new();
    if issuers.is_empty() {
        return out;
    }
    let the_issuer = |v: &str| {
        issuers
            .iter()
            .find(|i| i.trim_end_matches('/') == v.trim_end_matches('/'))
    };
    // `https://idp.example/*` for the issuer `https://idp.example/` (Auth0's,
    // Entra ID's v1): the pattern's issuer part, before its last `/`, lacks
    // the issuer's own final `/`.
    let short_of_its_slash = |v: &str| {
        let (iss, sub) = v.rsplit_once('/')?;
        let issuer = format!("{iss}/");
        (!v.starts_with('*') && !issuers.contains(&iss) && issuers.contains(&issuer.as_str()))
            .then(|| (format!("{issuer}/{sub}"), issuer))
    };
    for d in documents {
        let Spec::AuthorizationPolicy(p) = &d.spec else {
            continue;
        };
        for (ri, rule) in p.rules.iter().flatten().enumerate() {
            let sources = rule.from.iter().flatten().enumerate().flat_map(|(fi, f)| {
                [
                    ("requestPrincipals", &f.source.request_principals),
                    ("notRequestPrincipals", &f.source.not_request_principals),
                ]
                .map(|(name, values)| (format!("spec.rules[{ri}].from[{fi}].source.{name}"), values))
            });
            let conditions = rule
                .when
                .iter()
                .enumerate()
                .filter(|(_, c)| c.key == "request.auth.principal")
                .flat_map(|(wi, c)| {
                    [("values", &c.values), ("notValues", &c.not_values)]
                        .map(|(name, values)| (format!("spec.rules[{ri}].when[{wi}].{name}"), values))
                });
            for (field, values) in sources.chain(conditions) {
                for (i, v) in values.iter().flatten().enumerate() {
                    let message = match the_issuer(v) {
                        Some(issuer) => Some(format!(
                            "`{v}` is an issuer of this file alone: a request principal is ISSUER/SUBJECT, so it matches none of its tokens; write `{issuer}/*` for any subject of that issuer"
                        )),
                        None => short_of_its_slash(v).map(|(written, issuer)| format!(
                            "`{v}` names the issuer without the `/` it ends in: a request principal is ISSUER/SUBJECT and this file's issuer is `{issuer}`, so it matches none of its tokens; write `{written}`"
                        )),
                    };
                    if let Some(message) = message {
                        out.push((d, format!("{field}[{i}]"), message));
                    }
                }
            }
        }
    }
    out
}

/// A setting `document` (a `JwtSettings`) gives that an earlier one of
/// the same level gives too: the same namespace and the same `issuer` (or
/// neither names one), so the same workloads and issuers. Which would win
/// is not for the file's order to say.
fn given_twice<'d>(
    earlier: impl IntoIterator<Item = &'d Document>,
    document: &Document,
    source: &str,
) -> Option<PolicyError> {
    let Spec::JwtSettings(spec) = &document.spec else {
        return None;
    };
    let given = spec.given();
    earlier.into_iter().find_map(|d| match &d.spec {
        Spec::JwtSettings(other)
            if other.issuer == spec.issuer && d.metadata.namespace() == document.metadata.namespace() =>
        {
            let field = other.given().into_iter().find(|f| given.contains(f))?;
            Some(document.error(
                source,
                &format!("spec.{field}"),
                format!(
                    "also given by {} for the same namespace and issuer: give each setting once",
                    d.resource()
                ),
            ))
        }
        _ => None,
    })
}

/// Refuses a `JwtSettings` document whose `issuer` no `jwtRules` entry
/// and no `KeycloakAdapter` of the file has: a typo of one (or a rule
/// taken out), whose settings, some of them checks (`requiredType`,
/// DPoP), would silently apply to no provider.
fn settings_for_no_issuer(documents: &[Document], source: &str) -> Result<(), PolicyError> {
    let issuers: Vec<String> = documents
        .iter()
        .flat_map(|d| match &d.spec {
            Spec::RequestAuthentication(s) => s.jwt_rules.iter().map(|r| r.issuer.clone()).collect(),
            Spec::KeycloakAdapter(k) => vec![k.issuer()],
            _ => Vec::new(),
        })
        .collect();
    let unruled = documents.iter().find_map(|d| match &d.spec {
        Spec::JwtSettings(JwtSettingsSpec { issuer: Some(i), .. }) if !issuers.contains(i) => Some((d, i)),
        _ => None,
    });
    match unruled {
        Some((document, issuer)) => Err(document.error(
            source,
            "spec.issuer",
            format!("no jwtRules entry or KeycloakAdapter of this file has the issuer `{issuer}`: these settings would apply to no provider (is the issuer spelled as in the rule?)"),
        )),
        None => Ok(()),
    }
}

/// What a file's `DestinationRule`s make of one another, said aloud:
/// - one that sets TLS for a host an earlier one of the same namespace and
///   `workloadSelector` sets it for (`reviews` and
///   `reviews.NS.svc.cluster.local` are one host): only the first applies,
///   as Istio merges a host's rules keeping the first traffic policy, which
///   a reader of the file cannot tell from the file;
/// - one of another namespace than the root one that sets no TLS for a host
///   a root-namespace rule sets it for, other than `ISTIO_MUTUAL` (which
///   the call takes, as Istio's automatic mutual TLS): that namespace's
///   workloads take their own namespace's rule, as Istio's do, and call in
///   plaintext.
fn destination_rule_warnings(documents: &[Document]) -> Vec<(&Document, &'static str, String)> {
    let rules: Vec<(&Document, &networking::DestinationRuleSpec, String)> = documents
        .iter()
        .filter_map(|d| match &d.spec {
            Spec::DestinationRule(s) => Some((d, s, s.qualified_host(d.metadata.namespace()))),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for (i, (d, s, host)) in rules.iter().enumerate() {
        let namespace = d.metadata.namespace();
        let named = |e: &Document| format!("document {} ({})", e.index, e.resource());
        if s.sets_tls() {
            let first = rules[..i].iter().find(|(e, es, eh)| {
                es.sets_tls()
                    && e.metadata.namespace() == namespace
                    && es.workload_selector == s.workload_selector
                    && eh == host
            });
            if let Some((first, ..)) = first {
                out.push((
                    *d,
                    "spec.host",
                    format!(
                        "{} sets TLS for `{host}` too: only the first document's applies (as Istio keeps the first traffic policy of a host's rules); give the host one rule",
                        named(first)
                    ),
                ));
            }
        } else if namespace != DEFAULT_ROOT_NAMESPACE
            // A rule of its namespace that sets TLS for the host is taken
            // before it.
            && !rules.iter().any(|(e, es, eh)| {
                es.sets_tls()
                    && e.metadata.namespace() == namespace
                    && (es.workload_selector.is_none() || es.workload_selector == s.workload_selector)
                    && eh == host
            })
        {
            // The root namespace's rule for the host, or a wildcard over
            // it, that is not `ISTIO_MUTUAL` (which a call behind a rule
            // without TLS takes, as Istio's automatic mutual TLS).
            let root = rules.iter().find(|(e, es, eh)| {
                es.sets_tls()
                    && e.metadata.namespace() == DEFAULT_ROOT_NAMESPACE
                    && es.workload_selector.is_none()
                    && networking::host_specificity(eh, host).is_some()
                    && es
                        .traffic_policy
                        .as_ref()
                        .and_then(|p| p.tls.as_ref())
                        .is_none_or(|t| t.mode != networking::ClientTlsMode::IstioMutual)
            });
            if let Some((root, _, root_host)) = root {
                out.push((
                    *d,
                    "spec.host",
                    format!(
                        "sets no TLS for `{host}`, and hides the TLS {} sets for `{root_host}` from the workloads of `{namespace}`, which take their own namespace's rule and call in plaintext, as Istio's do but for the mesh's workloads (only an `ISTIO_MUTUAL` rule further on stands for Istio's automatic mutual TLS): set the TLS here too",
                        named(root)
                    ),
                ));
            }
        }
    }
    out
}

/// What the loader reads first of every document: enough to name it in
/// errors and to know which schema its `spec` has.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

/// The whole document, read a second time with the schema of its kind.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Body<S> {
    #[serde(default, rename = "apiVersion")]
    _api_version: Ignored,
    #[serde(default, rename = "kind")]
    _kind: Ignored,
    #[serde(default, rename = "metadata")]
    _metadata: Ignored,
    #[serde(default)]
    spec: Option<S>,
    #[serde(default, rename = "status")]
    _status: Ignored,
}

/// One document of the stream, as text.
struct Chunk<'a> {
    text: &'a str,
    /// The 1-based line of the file where `text` starts.
    first_line: usize,
    /// Whether `text` starts with a `---` marker.
    marked: bool,
}

/// A deserialization error, located.
struct Located {
    field: String,
    message: String,
    line: Option<usize>,
    column: Option<usize>,
}

/// Whether a line is a document marker (`---`, alone or before content).
fn is_marker(line: &str) -> bool {
    line.trim_end_matches(['\n', '\r'])
        .strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Splits a YAML stream into its documents. A line starting with `---` ends
/// a document wherever it is (YAML forbids it inside one), so the split is
/// exact, and each document is parsed on its own with its own line numbers.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line) = (0, 1);
    let (mut offset, mut line_no) = (0, 1);
    for line in text.split_inclusive('\n') {
        if is_marker(line) && offset > 0 {
            chunks.push(Chunk {
                text: &text[start..offset],
                first_line: start_line,
                marked: text[start..].lines().next().is_some_and(is_marker),
            });
            (start, start_line) = (offset, line_no);
        }
        offset += line.len();
        line_no += 1;
    }
    chunks.push(Chunk {
        text: &text[start..],
        first_line: start_line,
        marked: text[start..].lines().next().is_some_and(is_marker),
    });
    chunks
}

/// Deserializes one document, keeping the field path and the line and column.
fn parse<T: DeserializeOwned>(chunk: &Chunk<'_>) -> Result<T, Located> {
    let options = serde_saphyr::options! { with_snippet: false };
    let mut path = String::new();
    serde_saphyr::with_deserializer_from_str_with_options(chunk.text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|e| {
        let location = e.location().filter(|l| l.line() > 0);
        let message = e.render_with_options(serde_saphyr::render_options! {
            snippets: serde_saphyr::SnippetMode::Off,
        });
        let (message, line, column) = match location {
            Some(l) => {
                let suffix = format!(" at line {}, column {}", l.line(), l.column());
                let message = message
                    .strip_suffix(&suffix)
                    .map_or(message.clone(), str::to_owned);
                let line = usize::try_from(l.line()).ok().map(|n| n + chunk.first_line - 1);
                (message, line, usize::try_from(l.column()).ok())
            }
            None => (message, None, None),
        };
        let field = if path == "." { String::new() } else { path };
        let (field, message) = in_plain_words(field, message);
        Located {
            field,
            message,
            line,
            column,
        }
    })
}

/// The YAML reader's messages for a user's commonest slips, said as what
/// to write: a key given twice (the field named, not `?`), a scalar where
/// a list or a map goes, a value read as an alias, a tab.
fn in_plain_words(field: String, message: String) -> (String, String) {
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split_once(", set DuplicateKeyPolicy")
            .map_or(rest, |(k, _)| k);
        let parent = field.trim_end_matches('?').trim_end_matches('.');
        let field = if parent.is_empty() {
            key.to_owned()
        } else {
            format!("{parent}.{key}")
        };
        let hint = if parent.is_empty() {
            " (at the top of a document: is a `---` line missing between two documents?)"
        } else {
            ""
        };
        return (field, format!("given twice in one map: keep one{hint}"));
    }
    let message = match message.as_str() {
        "expected sequence start" => {
            "expected a list: `[a, b]`, or one `- item` line each (a single value is written `[value]`)".to_owned()
        }
        "expected mapping start" => "expected a map: `key: value` lines indented under the field, or `{key: value}` (a field with nothing under it, or the next lines not indented more than it, is no map)".to_owned(),
        "alias references unknown anchor" => {
            "a value starting with `*` is read as a YAML alias: quote it (`'*…'`)".to_owned()
        }
        m if m.starts_with("tabs disallowed") => format!("{m}: indent with spaces"),
        _ => message,
    };
    (field, message)
}

/// The largest policy file read (16 MiB; a mesh's policies are kilobytes).
pub const MAX_POLICY_FILE: u64 = 16 << 20;

/// Reads a policy file, or a file of its kind (a Keycloak adapter's JSON,
/// `palisade test`'s cases), of at most [`MAX_POLICY_FILE`] bytes, so that
/// a device without end (`/dev/zero`) is an error rather than a read that
/// fills the memory. A pipe (`/dev/stdin`, a shell's `<(…)`) is read as
/// its writer writes it.
///
/// # Errors
/// The file's own error, or [`std::io::ErrorKind::InvalidInput`] for a
/// larger one, saying so.
pub fn read_policy_file(path: impl AsRef<Path>) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let path = path.as_ref();
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_POLICY_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_POLICY_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {} MiB", MAX_POLICY_FILE >> 20),
        ));
    }
    Ok(bytes)
}

/// [`read_policy_file`] as text: UTF-8, as `std::fs::read_to_string` reads it.
///
/// # Errors
/// As [`read_policy_file`], and [`std::io::ErrorKind::InvalidData`] for a
/// file that is not UTF-8.
pub fn read_policy_text(path: impl AsRef<Path>) -> std::io::Result<String> {
    String::from_utf8(read_policy_file(path)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

impl PolicySet {
    /// Every file the documents name that is read when a part is built
    /// (secrets, session and client keys, CA bundles), once each, in the
    /// order they are named: a reloader watches them with the file.
    pub(crate) fn files_named(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for file in self.documents.iter().flat_map(|d| d.spec.files()) {
            let file = PathBuf::from(file);
            if !out.contains(&file) {
                out.push(file);
            }
        }
        out
    }

    /// Reads and validates a policy file. A file of nothing but white space
    /// is refused: it is most likely one a writer has
    /// truncated and not yet written (`> policy.yaml`, a generator that
    /// failed), and loading it would allow every request. A file of
    /// comments only (`# no policy`) is a YAML stream of no documents,
    /// which allows every request: it loads, with a warning.
    ///
    /// The files the documents name (secrets, keys, CA bundles) are read
    /// too, for their digest only, so that a reloader told of this set
    /// ([`PolicyReloader::loaded_from`](crate::reload::PolicyReloader::loaded_from))
    /// sees a change made after it was read.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the file, the document and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let name = path.as_ref().display().to_string();
        let text = read_policy_text(path.as_ref())
            .map_err(|e| PolicyError::new(&name, format!("cannot read: {e}")))?;
        let mut set = Self::from_file_text(&text, &name)?;
        set.named_digest = Some(crate::reload::files_digest(&set.files_named()));
        Ok(set)
    }

    /// Every problem of the policy file at `path` that keeps it from
    /// loading, one per document that does not load, in file order (what
    /// [`from_file`](Self::from_file) stops at the first of; two documents
    /// of one name, or a setting given twice, are found against the
    /// documents before them that loaded, and settings naming no issuer
    /// once every document loads): `palisade
    /// check`'s one line per problem. Empty when the file loads. Nothing is
    /// logged.
    #[must_use]
    pub fn problems_in_file(path: impl AsRef<Path>) -> Vec<PolicyError> {
        let name = path.as_ref().display().to_string();
        match read_policy_text(path.as_ref()) {
            Ok(text) => Self::parse_all(&text, &name, false).err().unwrap_or_default(),
            Err(e) => vec![PolicyError::new(&name, format!("cannot read: {e}"))],
        }
    }

    /// A policy file's text, read at start-up or on reload: parsed as any
    /// stream, and one that holds no document is warned of too
    /// ([`EMPTY_FILE`]). The warnings are logged as a configuration's
    /// ([`config_warning!`](crate::config_warning): at debug level for a
    /// reload trying again contents refused for what lies outside them,
    /// whose warnings were said the first time).
    pub(crate) fn from_file_text(text: &str, name: &str) -> Result<Self, PolicyError> {
        if text
            .lines()
            .all(|l| matches!(l.trim().trim_start_matches('\u{feff}'), "" | "---" | "..."))
        {
            return Err(PolicyError::new(name, EMPTY_TEXT));
        }
        let mut set = Self::parse(text, name)?;
        if set.documents.is_empty() {
            set.warnings
                .push(PolicyWarning::new(PolicyError::new(name, EMPTY_FILE)));
        }
        set.say_warnings();
        Ok(set)
    }

    /// A policy file's text parsed without a word (its warnings not said):
    /// `None` when it does not load.
    pub(crate) fn quietly(text: &str, name: &str) -> Option<Self> {
        Self::parse(text, name).ok()
    }

    /// Logs each warning ([`config_warning!`](crate::config_warning)).
    fn say_warnings(&self) {
        for warning in &self.warnings {
            crate::config_warning!(target: LOG_TARGET, "{warning}");
        }
    }

    /// Parses and validates a YAML stream; `source` names it in errors.
    ///
    /// Every document is checked, whichever workload it applies to.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the source, the document, the field, and the
    /// line and column when the YAML parser knows them.
    pub fn from_yaml_str(text: &str, source: &str) -> Result<Self, PolicyError> {
        let set = Self::parse(text, source)?;
        set.say_warnings();
        Ok(set)
    }

    /// [`from_yaml_str`](Self::from_yaml_str) without logging its warnings.
    fn parse(text: &str, source: &str) -> Result<Self, PolicyError> {
        Self::parse_all(text, source, true).map_err(|mut problems| problems.swap_remove(0))
    }

    /// [`parse`](Self::parse), going on past a document that does not load
    /// unless `first_only`: every such document's problem, in file order
    /// (the checks across documents run once each of them loads).
    fn parse_all(text: &str, source: &str, first_only: bool) -> Result<Self, Vec<PolicyError>> {
        let mut documents = Vec::new();
        let mut warnings = Vec::new();
        let mut problems = Vec::new();
        let mut count = 0;
        for chunk in split_documents(text) {
            let index = count + 1;
            let located = |resource: Option<String>, e: Located| {
                PolicyError::new(source, e.message)
                    .at(index, resource, e.field)
                    .at_line(e.line, e.column)
            };
            let header: Option<Header> = match parse(&chunk) {
                Ok(header) => header,
                Err(e) => {
                    problems.push(located(None, e));
                    count = index;
                    if first_only {
                        break;
                    }
                    continue;
                }
            };
            // Text before the first `---` that holds no document is not one.
            if header.is_none() && chunk.first_line == 1 && !chunk.marked {
                continue;
            }
            count = index;
            if index > MAX_DOCUMENTS {
                problems.push(
                    PolicyError::new(
                        source,
                        format!("more than {MAX_DOCUMENTS} documents in one file: split the file"),
                    )
                    .at(index, None, "")
                    .at_line(Some(chunk.first_line), None),
                );
                break;
            }
            // An empty document (a stray `---`) is allowed, as kubectl allows it.
            let Some(header) = header else { continue };
            let admitted = Self::document(&chunk, header, index, source, located)
                .and_then(|document| admit(&mut documents, &mut warnings, document, source));
            if let Err(e) = admitted {
                problems.push(e);
                if first_only {
                    break;
                }
            }
        }
        if problems.is_empty()
            && let Err(e) = finish(&documents, &mut warnings, source)
        {
            problems.push(e);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            source: source.to_owned(),
            documents,
            warnings,
            digest: digest(text.as_bytes()),
            named_digest: None,
            jwks_overrides: Vec::new(),
        })
    }

    fn document(
        chunk: &Chunk<'_>,
        header: Header,
        index: usize,
        source: &str,
        located: impl Fn(Option<String>, Located) -> PolicyError,
    ) -> Result<Document, PolicyError> {
        let missing = |field: &str| {
            PolicyError::new(source, "missing")
                .at(index, None, field)
                .at_line(Some(chunk.first_line), None)
        };
        let Some(api_version) = header.api_version else {
            // A keycloak.json given where a policy file goes.
            let keycloak = ["realm", "auth-server-url"]
                .iter()
                .all(|k| chunk.text.contains(&format!("\"{k}\"")));
            return Err(if keycloak && header.kind.is_none() {
                PolicyError::new(
                    source,
                    "missing: this is a keycloak.json, not a policy document; give it as a document `apiVersion: palisade.dev/v1alpha1`, `kind: KeycloakAdapter`, `spec:` its contents, or load it as it is (`JwtAuthenticator::from_keycloak_json`, `KeycloakAdapterConfig::from_json_file`)",
                )
                .at(index, None, "apiVersion")
                .at_line(Some(chunk.first_line), None)
            } else {
                missing("apiVersion")
            });
        };
        let kind = header.kind.ok_or_else(|| missing("kind"))?;
        let metadata = header.metadata.unwrap_or_default();
        let resource = format!("{kind} {}/{}", metadata.namespace(), metadata.name);
        let spec = match Self::spec(chunk, &api_version, &kind) {
            Some(Ok(spec)) => spec,
            Some(Err(e)) => return Err(located(Some(resource), e)),
            None => {
                let known = SECURITY_API_VERSIONS.contains(&api_version.as_str())
                    || NETWORKING_API_VERSIONS.contains(&api_version.as_str())
                    || [RBAC_API_VERSION, PALISADE_API_VERSION].contains(&api_version.as_str());
                let (field, message) = if let Some(why) = not_read(&api_version, &kind) {
                    (
                        "kind",
                        format!("`{kind}` ({api_version}) is not read by Palisade: {why}"),
                    )
                } else if known {
                    ("kind", format!("unknown kind `{kind}` for {api_version}"))
                } else {
                    ("apiVersion", format!("unknown apiVersion `{api_version}`"))
                };
                return Err(PolicyError::new(source, message)
                    .at(index, Some(resource), field)
                    .at_line(Some(chunk.first_line), None));
            }
        };
        Ok(Document {
            index,
            api_version,
            kind,
            metadata,
            spec,
            line: Some(chunk.first_line),
        })
    }

    /// The typed `spec` for a kind; `None` for a kind this loader does not know.
    fn spec(chunk: &Chunk<'_>, api_version: &str, kind: &str) -> Option<Result<Spec, Located>> {
        fn body<S: DeserializeOwned + Default>(
            chunk: &Chunk<'_>,
            wrap: fn(S) -> Spec,
        ) -> Option<Result<Spec, Located>> {
            Some(parse::<Body<S>>(chunk).map(|b| wrap(b.spec.unwrap_or_default())))
        }
        if SECURITY_API_VERSIONS.contains(&api_version) {
            return match kind {
                "RequestAuthentication" => body(chunk, Spec::RequestAuthentication),
                "AuthorizationPolicy" => body(chunk, Spec::AuthorizationPolicy),
                "PeerAuthentication" => body(chunk, Spec::PeerAuthentication),
                _ => None,
            };
        }
        if NETWORKING_API_VERSIONS.contains(&api_version) {
            return match kind {
                "DestinationRule" => body(chunk, Spec::DestinationRule),
                _ => None,
            };
        }
        match (api_version, kind) {
            (RBAC_API_VERSION, "ServiceRole") => body(chunk, Spec::ServiceRole),
            (RBAC_API_VERSION, "ServiceRoleBinding") => body(chunk, Spec::ServiceRoleBinding),
            (RBAC_API_VERSION, "RbacConfig" | "ClusterRbacConfig") => body(chunk, Spec::RbacConfig),
            (PALISADE_API_VERSION, "JwtSettings") => body(chunk, Spec::JwtSettings),
            (PALISADE_API_VERSION, "KeycloakAdapter") => body(chunk, Spec::KeycloakAdapter),
            (PALISADE_API_VERSION, "AuthorizationSettings") => body(chunk, Spec::AuthorizationSettings),
            (PALISADE_API_VERSION, "SpnegoSettings") => body(chunk, Spec::SpnegoSettings),
            (PALISADE_API_VERSION, "OidcLogin") => body(chunk, Spec::OidcLogin),
            (PALISADE_API_VERSION, "UpstreamCredentials") => body(chunk, Spec::UpstreamCredentials),
            _ => None,
        }
    }

    /// A set of documents built in memory (by code); `source` names it in
    /// errors. Each document is checked as loading a file checks it, alone
    /// and with the others (two of one name, a setting given twice, a
    /// `JwtSettings` for no issuer), so every [`PolicySet`] holds only
    /// documents that passed; [`warnings`](Self::warnings) are kept, not
    /// logged.
    ///
    /// Two documents of one kind, namespace and name are refused here too:
    /// decisions, logs and metrics name a policy by them, so two would be
    /// told apart by nothing (so the policies of an
    /// [`AccessPolicy`](crate::authz::AccessPolicy) built in code need
    /// names of their own too).
    ///
    /// # Errors
    /// A [`PolicyError`] naming `source`, the document (its `index`) and
    /// the field.
    pub fn from_documents(source: &str, documents: Vec<Document>) -> Result<Self, PolicyError> {
        let mut checked = Vec::with_capacity(documents.len());
        let mut warnings = Vec::new();
        for document in documents {
            admit(&mut checked, &mut warnings, document, source)?;
        }
        finish(&checked, &mut warnings, source)?;
        Ok(Self {
            source: source.to_owned(),
            documents: checked,
            warnings,
            // No text: the digest of none.
            digest: digest(b""),
            named_digest: None,
            jwks_overrides: Vec::new(),
        })
    }

    /// The name of the file or source this set was read from.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The [`digest`] of the text the set was read from.
    pub(crate) fn digest(&self) -> u64 {
        self.digest
    }

    /// What the files it names held when it was read from a file.
    pub(crate) fn named_digest(&self) -> Option<u64> {
        self.named_digest
    }

    /// Every document, applicable or not.
    #[must_use]
    pub fn documents(&self) -> &[Document] {
        &self.documents
    }

    /// What loaded but takes no effect in process, or relaxes a default,
    /// in file order (see [`PolicyWarning`]); each is also logged at warn
    /// level (target [`LOG_TARGET`]) when the file loads. A checker prints
    /// them as notes: they are not errors, since one file may describe a
    /// whole mesh, gateways included, and a relaxation may be meant.
    #[must_use]
    pub fn warnings(&self) -> &[PolicyWarning] {
        &self.warnings
    }

    /// The documents that apply to `workload`.
    #[must_use]
    pub fn for_workload(&self, workload: &Workload) -> WorkloadPolicy<'_> {
        WorkloadPolicy {
            source: &self.source,
            workload: workload.clone(),
            documents: self.documents.iter().filter(|d| d.applies_to(workload)).collect(),
            all: &self.documents,
            jwks_overrides: &self.jwks_overrides,
        }
    }

    /// The set, with the keys that verify `issuer`'s bearer tokens fetched
    /// from `jwks_uri` rather than where its documents say (a `jwtRules`
    /// entry's `jwksUri` or `jwks`, a `KeycloakAdapter`'s
    /// `realm-public-key` or certificates endpoint, the issuer's discovery
    /// document): for a test that runs the production policy file against
    /// a stand-in issuer, as a test of a Spring resource server sets
    /// `jwk-set-uri`. Every other setting of the issuer stays as the file
    /// says (audiences, claims, token locations, introspection of opaque
    /// tokens), and its tokens still carry its `iss`
    /// (`palisade_testkit::TestIssuer`'s `token().issuer(…)`). `issuer` is
    /// matched as the file writes it (a Keycloak adapter's is its
    /// `auth-server-url` and `/realms/` and its realm). Browser sign-in
    /// (`OidcLogin`) is not affected: it still reads the issuer's
    /// discovery document and its ID tokens' keys.
    ///
    /// Set in code only, never by a file: a relaxation of what the file
    /// trusts, so a guard built with it says so in a warning (target
    /// `palisade::jwt`), naming the issuer and the URI; an override whose
    /// issuer no document of the set configures is a warning at once
    /// (target [`LOG_TARGET`]). The override is the set's, not the file's: a reloader that
    /// reads the file again builds without it unless its build function
    /// sets it again.
    ///
    /// ```
    /// use palisade_core::policy::{PolicySet, Workload};
    ///
    /// let yaml = r#"
    /// apiVersion: security.istio.io/v1
    /// kind: RequestAuthentication
    /// metadata: {name: jwt, namespace: shop}
    /// spec:
    ///   jwtRules:
    ///   - issuer: https://keycloak.example.com/realms/shop
    /// "#;
    /// let set = PolicySet::from_yaml_str(yaml, "policy.yaml")?
    ///     .jwks_uri_override("https://keycloak.example.com/realms/shop", "http://127.0.0.1:8081/certs");
    /// let policy = set.for_workload(&Workload::new("details", "shop"));
    /// assert_eq!(
    ///     policy.jwks_uri_override("https://keycloak.example.com/realms/shop"),
    ///     Some("http://127.0.0.1:8081/certs")
    /// );
    /// # Ok::<(), palisade_core::policy::PolicyError>(())
    /// ```
    #[must_use]
    pub fn jwks_uri_override(mut self, issuer: impl Into<String>, jwks_uri: impl Into<String>) -> Self {
        let issuer = issuer.into();
        let configured = self.documents.iter().any(|d| match &d.spec {
            Spec::RequestAuthentication(s) => s.jwt_rules.iter().any(|r| r.issuer == issuer),
            Spec::KeycloakAdapter(kc) => kc.issuer() == issuer,
            _ => false,
        });
        if !configured {
            tracing::warn!(
                target: LOG_TARGET,
                issuer,
                "PolicySet::jwks_uri_override names an issuer that no document of {} configures: it overrides nothing (an issuer is matched as the file writes it; a Keycloak adapter's is its auth-server-url, /realms/ and its realm)",
                self.source,
            );
        }
        self.jwks_overrides.retain(|(i, _)| *i != issuer);
        self.jwks_overrides.push((issuer, jwks_uri.into()));
        self
    }

    /// An error located at a document of this set (for compilers of its documents).
    #[must_use]
    pub fn error_at(&self, document: &Document, field: &str, message: impl Into<String>) -> PolicyError {
        document.error(&self.source, field, message)
    }
}

/// The one document that turns browser sign-in on for a workload
/// ([`WorkloadPolicy::sign_in`]).
#[derive(Clone, Copy, Debug)]
pub enum SignInDocument<'a> {
    /// An `OidcLogin` document.
    OidcLogin(&'a Document, &'a OidcLoginSpec),
    /// A `KeycloakAdapter` that is not bearer-only, and its client id
    /// (`resource`): sign-in with the default paths and cookie.
    KeycloakAdapter(&'a Document, &'a KeycloakAdapterConfig, &'a str),
}

impl<'a> SignInDocument<'a> {
    /// The document.
    #[must_use]
    pub fn document(self) -> &'a Document {
        match self {
            Self::OidcLogin(doc, _) | Self::KeycloakAdapter(doc, _, _) => doc,
        }
    }

    /// The client id the service signs browsers in as.
    #[must_use]
    pub fn client_id(self) -> &'a str {
        match self {
            Self::OidcLogin(_, spec) => &spec.client_id,
            Self::KeycloakAdapter(_, _, client) => client,
        }
    }

    /// The session cookie's name.
    #[must_use]
    pub fn cookie_name(self) -> &'a str {
        match self {
            Self::OidcLogin(_, spec) => spec.cookie_name(),
            Self::KeycloakAdapter(..) => SIGN_IN_COOKIE,
        }
    }

    /// The paths of sign-in's own routes.
    #[must_use]
    pub fn paths(self) -> SignInPaths<'a> {
        match self {
            Self::OidcLogin(_, spec) => spec.paths(),
            Self::KeycloakAdapter(..) => SignInPaths::DEFAULT,
        }
    }
}

/// The documents of a [`PolicySet`] that apply to one workload.
#[derive(Clone, Debug)]
pub struct WorkloadPolicy<'a> {
    source: &'a str,
    workload: Workload,
    documents: Vec<&'a Document>,
    /// Every document of the set, those for other workloads too.
    all: &'a [Document],
    /// See [`PolicySet::jwks_uri_override`].
    jwks_overrides: &'a [(String, String)],
}

impl<'a> WorkloadPolicy<'a> {
    /// The set's `AuthorizationPolicy` `ALLOW` documents that apply to other
    /// workloads than this one (`KIND NS/NAME`): when none applies to it, a
    /// workload name or selector spelt otherwise than the file's is the
    /// likely cause of a service left open.
    pub(crate) fn allow_policies_elsewhere(&self) -> Vec<String> {
        self.all
            .iter()
            .filter(|d| matches!(&d.spec, Spec::AuthorizationPolicy(p) if p.action == crate::authz::Action::Allow))
            .filter(|d| !d.applies_to(&self.workload))
            .map(Document::resource)
            .collect()
    }

    /// The name of the file or source the documents were read from.
    #[must_use]
    pub fn source(&self) -> &str {
        self.source
    }

    /// The workload.
    #[must_use]
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// Where the keys of `issuer` are fetched from in place of where the
    /// documents say, when the set was given one
    /// ([`PolicySet::jwks_uri_override`]).
    #[must_use]
    pub fn jwks_uri_override(&self, issuer: &str) -> Option<&'a str> {
        self.jwks_overrides
            .iter()
            .find(|(i, _)| i == issuer)
            .map(|(_, uri)| uri.as_str())
    }

    /// The applicable documents, in file order.
    #[must_use]
    pub fn documents(&self) -> &[&'a Document] {
        &self.documents
    }

    /// Applicable `RequestAuthentication` documents.
    pub fn request_authentications(
        &self,
    ) -> impl Iterator<Item = (&'a Document, &'a RequestAuthenticationSpec)> + '_ {
        self.documents.iter().filter_map(|d| match &d.spec {
            Spec::RequestAuthentication(s) => Some((*d, s)),
            _ => None,
        })
    }

    /// Applicable `AuthorizationPolicy` documents.
    pub fn authorization_policies(
        &self,
    ) -> impl Iterator<Item = (&'a Document, &'a AuthorizationPolicySpec)> + '_ {
        self.documents.iter().filter_map(|d| match &d.spec {
            Spec::AuthorizationPolicy(s) => Some((*d, s)),
            _ => None,
        })
    }

    /// What this workload's documents say that it ignores, said aloud: a
    /// `PeerAuthentication` with a workload selector in the root namespace
    /// (Istio's `ComposePeerAuthentication` ignores it). The service logs
    /// each when it composes its mTLS mode; `palisade check` prints them.
    #[must_use]
    pub fn warnings(&self) -> Vec<PolicyWarning> {
        self.peer_authentications()
            .filter(|(d, s)| d.metadata.namespace() == self.workload.root_namespace && s.selects_workloads())
            .map(|(d, _)| PolicyWarning::new(self.error_at(d, "spec.selector", ROOT_SELECTOR_IGNORED)))
            .collect()
    }

    /// Applicable `PeerAuthentication` documents.
    pub fn peer_authentications(
        &self,
    ) -> impl Iterator<Item = (&'a Document, &'a PeerAuthenticationSpec)> + '_ {
        self.documents.iter().filter_map(|d| match &d.spec {
            Spec::PeerAuthentication(s) => Some((*d, s)),
            _ => None,
        })
    }

    /// Applicable `JwtSettings` documents.
    pub fn jwt_settings(&self) -> impl Iterator<Item = (&'a Document, &'a JwtSettingsSpec)> + '_ {
        self.documents.iter().filter_map(|d| match &d.spec {
            Spec::JwtSettings(s) => Some((*d, s)),
            _ => None,
        })
    }

    /// Applicable `KeycloakAdapter` documents.
    pub fn keycloak_adapters(&self) -> impl Iterator<Item = (&'a Document, &'a KeycloakAdapterConfig)> + '_ {
        self.documents.iter().filter_map(|d| match &d.spec {
            Spec::KeycloakAdapter(s) => Some((*d, s)),
            _ => None,
        })
    }

    /// Applicable `SpnegoSettings` documents.
    pub fn spnego_settings(&self) -> impl Iterator<Item = (&'a Document, &'a SpnegoSettingsSpec)> + '_ {
        self.documents.iter().filter_map(|d| match &d.spec {
            Spec::SpnegoSettings(s) => Some((*d, s)),
            _ => None,
        })
    }

    /// The one applicable `SpnegoSettings` document, checked as far as the
    /// file alone allows (no keytab, no Kerberos library): at most one
    /// applies, and its session cookie is not named as one of browser
    /// sign-in's, each of which would overwrite the other's session. What
    /// the SPNEGO authenticator and `palisade check` both ask.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the document and field.
    pub fn spnego_settings_checked(
        &self,
    ) -> Result<Option<(&'a Document, &'a SpnegoSettingsSpec)>, PolicyError> {
        let mut settings = self.spnego_settings();
        let Some((doc, spec)) = settings.next() else {
            return Ok(None);
        };
        if let Some((second, _)) = settings.next() {
            return Err(self.error_at(
                second,
                "kind",
                format!(
                    "only one SpnegoSettings document may apply (document {} does)",
                    doc.index
                ),
            ));
        }
        if let Some(cookie) = &spec.session_cookie {
            let name = cookie.name.as_deref().unwrap_or(NEGOTIATE_COOKIE);
            if let Some(login) = self.sign_in_cookie_of(name) {
                return Err(self.error_at(
                    doc,
                    "spec.sessionCookie.name",
                    format!("`{name}` is also a cookie of browser sign-in ({login}): each would overwrite the other's session; name them apart"),
                ));
            }
        }
        Ok(Some((doc, spec)))
    }

    /// The sign-in document whose session cookie is `name`, or its chunks'
    /// (`NAME_1`, …).
    fn sign_in_cookie_of(&self, name: &str) -> Option<String> {
        // Every such document, not only the one `sign_in` would choose: a
        // file with two is refused there, and this clash is said as well.
        let logins = self.oidc_logins().map(|(d, s)| (d, s.cookie_name()));
        let adapters = self
            .keycloak_adapters()
            .filter(|(_, k)| k.signs_in())
            .map(|(d, _)| (d, SIGN_IN_COOKIE));
        logins.chain(adapters).find_map(|(doc, cookie)| {
            let clash = name == cookie
                || name
                    .strip_prefix(cookie)
                    .is_some_and(|rest| rest.starts_with('_'));
            clash.then(|| doc.resource())
        })
    }

    /// The one document that turns browser sign-in on for the workload: an
    /// `OidcLogin`, or a `KeycloakAdapter` that is not bearer-only
    /// ([`KeycloakAdapterConfig::signs_in`]); `None` when none does. Every
    /// part that reads sign-in (the relying party, a build without it, the
    /// `palisade` command's stand-in) asks here, so they agree on which
    /// document it is.
    ///
    /// # Errors
    /// A [`PolicyError`] when two documents turn sign-in on for the
    /// workload, naming the first `OidcLogin` (of two, or beside a
    /// `KeycloakAdapter`) or the second `KeycloakAdapter`. (A
    /// `KeycloakAdapter` that signs in without a client, `resource`, is
    /// refused already when its set is made.)
    pub fn sign_in(&self) -> Result<Option<SignInDocument<'a>>, PolicyError> {
        let mut logins = self.oidc_logins();
        let mut adapters = self.keycloak_adapters().filter(|(_, k)| k.signs_in());
        let adapter = adapters.next();
        if let Some((doc, _)) = adapters.next() {
            return Err(self.error_at(
                doc,
                "spec",
                "a second KeycloakAdapter that is not bearer-only turns sign-in on for this workload: keep one (or make the others `bearer-only`)",
            ));
        }
        match (logins.next(), adapter) {
            (Some((doc, _)), _) if logins.next().is_some() => Err(self.error_at(
                doc,
                "spec.selector",
                "two OidcLogin documents select this workload",
            )),
            (Some((doc, spec)), None) => Ok(Some(SignInDocument::OidcLogin(doc, spec))),
            (Some((doc, _)), Some(_)) => Err(self.error_at(
                doc,
                "spec",
                "a KeycloakAdapter that is not bearer-only already turns sign-in on for this workload: keep one",
            )),
            (None, Some((doc, k))) => match k.resource.as_deref() {
                Some(client) => Ok(Some(SignInDocument::KeycloakAdapter(doc, k, client))),
                None => Err(self.error_at(
                    doc,
                    "spec.resource",
                    "sign-in needs the client id (`resource`)",
                )),
            },
            (None, None) => Ok(None),
        }
    }

    /// Applicable `OidcLogin` documents.
    pub fn oidc_logins(&self) -> impl Iterator<Item = (&'a Document, &'a OidcLoginSpec)> + '_ {
        self.documents.iter().filter_map(|d| match &d.spec {
            Spec::OidcLogin(s) => Some((*d, s)),
            _ => None,
        })
    }

    /// Applicable `UpstreamCredentials` documents: what this workload
    /// sends to the hosts it calls.
    pub fn upstream_credentials(
        &self,
    ) -> impl Iterator<Item = (&'a Document, &'a UpstreamCredentialsSpec)> + '_ {
        self.documents.iter().filter_map(|d| match &d.spec {
            Spec::UpstreamCredentials(s) => Some((*d, s)),
            _ => None,
        })
    }

    /// Applicable `AuthorizationSettings` documents.
    pub fn authorization_settings(
        &self,
    ) -> impl Iterator<Item = (&'a Document, &'a AuthorizationSettingsSpec)> + '_ {
        self.documents.iter().filter_map(|d| match &d.spec {
            Spec::AuthorizationSettings(s) => Some((*d, s)),
            _ => None,
        })
    }

    /// Applicable `DestinationRule` documents: those exported to this
    /// workload's namespace on Istio's lookup path (its own namespace's,
    /// those of the services it calls, the root namespace's), whose
    /// `workloadSelector` selects it as the caller. A rule with a selector
    /// applies only in its own namespace, as Istio reads it: a
    /// root-namespace one applies to no workload of another namespace
    /// (warned of when the file loads). Another namespace's applies to
    /// calls to the services of that namespace only, which
    /// `palisade_mtls::UpstreamTls` sees to.
    pub fn destination_rules(&self) -> impl Iterator<Item = (&'a Document, &'a DestinationRuleSpec)> + '_ {
        self.documents.iter().filter_map(|d| match &d.spec {
            Spec::DestinationRule(s)
                if s.workload_selector.is_none() || d.metadata.namespace() == self.workload.namespace =>
            {
                Some((*d, s))
            }
            _ => None,
        })
    }

    /// An error located at a field of one of these documents.
    #[must_use]
    pub fn error_at(&self, document: &Document, field: &str, message: impl Into<String>) -> PolicyError {
        document.error(self.source, field, message)
    }
}

/// Methods and paths, under `at` (`methods`/`notMethods`, then
/// `paths`/`notPaths`), that no request can carry, said aloud: Istio takes
/// them, and a rule with one then matches less than it reads (a `DENY`
/// that never fires, a `notMethods` that excludes nothing). With
/// `standard_methods_only`, a method in other letters than capitals only
/// when it is a standard one ([`STANDARD_METHODS`]): an extension method
/// may be written as its clients send it.
fn never_matching(
    at: &str,
    methods: [&Option<Vec<String>>; 2],
    paths: [&Option<Vec<String>>; 2],
    standard_methods_only: bool,
) -> Vec<FieldError> {
    let mut out = Vec::new();
    for (field, values) in ["methods", "notMethods"].into_iter().zip(methods) {
        for (i, m) in values.iter().flatten().enumerate() {
            if m.bytes().any(|b| b.is_ascii_lowercase())
                && (!standard_methods_only || STANDARD_METHODS.contains(&m.to_ascii_uppercase().as_str()))
            {
                out.push((
                    format!("{at}.{field}[{i}]"),
                    format!(
                        "`{m}` matches no request: methods are compared exactly, and clients send them in capitals (`{}`)",
                        m.to_ascii_uppercase()
                    ),
                ));
            }
        }
    }
    for (field, values) in ["paths", "notPaths"].into_iter().zip(paths) {
        for (i, p) in values.iter().flatten().enumerate() {
            // As matched: `%2e%2e` is a `..` segment there.
            let matched = crate::authz::path::pattern_escapes(p);
            let segments = || matched.split('/').skip(1);
            if !p.starts_with('/') && !p.starts_with('*') {
                out.push((
                    format!("{at}.{field}[{i}]"),
                    format!("`{p}` matches no request: a request's path starts with `/`"),
                ));
            } else if matched.contains("//") || segments().any(|s| s == "." || s == "..") {
                out.push((
                    format!("{at}.{field}[{i}]"),
                    format!(
                        "`{p}` matches no request: paths are matched with runs of `/` merged and `.` and `..` segments resolved"
                    ),
                ));
            }
        }
    }
    out
}

/// The methods of HTTP (RFC 9110), PATCH and WebDAV's: what a client sends
/// in capitals, so a rule's `delete` is a slip for `DELETE`.
const STANDARD_METHODS: [&str; 17] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "SEARCH",
];

/// A rule's operation: its field path, its methods and its paths (each
/// with its `not` list).
type Operation<'a> = (String, [&'a Option<Vec<String>>; 2], [&'a Option<Vec<String>>; 2]);

/// What [`never_matching`] finds where it leaves requests open, refused:
/// a `DENY` or `CUSTOM` rule's `methods` or `paths` (the rule never fires
/// for what it names), an `ALLOW` rule's (or a `ServiceRole`'s)
/// `notMethods` or `notPaths` (it excludes nothing). Elsewhere a value no
/// request carries only narrows a rule (a warning).
fn never_matching_leaves_open<'a>(
    action: crate::authz::Action,
    operations: impl Iterator<Item = Operation<'a>>,
) -> Result<(), FieldError> {
    use crate::authz::Action;
    let (kind, what) = match action {
        Action::Deny => ("DENY", "never refuses what it names"),
        Action::Custom => ("CUSTOM", "never asks its authorizer about what it names"),
        Action::Allow => ("ALLOW", "excludes nothing: it allows what it means to leave out"),
        _ => return Ok(()),
    };
    for (at, [methods, not_methods], [paths, not_paths]) in operations {
        let (methods, paths) = if action == Action::Allow {
            ([&None, not_methods], [&None, not_paths])
        } else {
            ([methods, &None], [paths, &None])
        };
        if let Some((field, message)) = never_matching(&at, methods, paths, true).into_iter().next() {
            return Err((
                field,
                format!(
                    "{message}; in {} {kind} rule such a value {what}",
                    if kind.starts_with('A') { "an" } else { "a" }
                ),
            ));
        }
    }
    Ok(())
}

/// A rule that treats `GET` and not `HEAD`: methods are compared exactly,
/// as in Istio, and axum and actix-web answer `HEAD` with the `GET`
/// handler (without its body). A `DENY` (or a `CUSTOM` check) of `GET`
/// leaves `HEAD` to it, as does an `ALLOW` of every method but `GET`.
fn head_left_out(action: crate::authz::Action, ri: usize, to: &[security::ToSpec]) -> Option<FieldError> {
    use crate::authz::Action;
    type List = fn(&security::OperationSpec) -> Option<&Vec<String>>;
    let (field, why, list): (&str, &str, List) = match action {
        Action::Deny | Action::Custom => ("methods", "refuses GET and not HEAD", |o| o.methods.as_ref()),
        Action::Allow => ("notMethods", "allows every method but GET, HEAD included", |o| {
            o.not_methods.as_ref()
        }),
        _ => return None,
    };
    let lists_it =
        |t: &security::ToSpec, m: &str| list(&t.operation).is_some_and(|l| l.iter().any(|x| x == m));
    if to.iter().any(|t| lists_it(t, "HEAD")) {
        return None;
    }
    let ti = to.iter().position(|t| lists_it(t, "GET"))?;
    Some((
        format!("spec.rules[{ri}].to[{ti}].operation.{field}"),
        format!(
            "{why}, which axum and actix-web answer with the GET handler (without its body): list HEAD with GET"
        ),
    ))
}

/// Why a `PeerAuthentication` selector in the root namespace does nothing.
const ROOT_SELECTOR_IGNORED: &str = "a workload selector in the root namespace is ignored, as Istio ignores it: put the document in the workload's namespace";

/// The secret in a file a policy document names (`clientSecretFile`),
/// without its trailing newline.
///
/// # Errors
/// [`SecretFileError`]: the file cannot be read, or is empty.
pub fn read_secret_file(file: &str) -> Result<String, SecretFileError> {
    let text = std::fs::read_to_string(file).map_err(|error| SecretFileError::Unreadable {
        file: file.to_owned(),
        error,
    })?;
    let secret = text.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(SecretFileError::Empty {
            file: file.to_owned(),
        });
    }
    Ok(secret)
}

/// Why [`read_secret_file`] has no secret; displayed as the message for
/// the field that names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// The file cannot be read (missing, or not readable by this process).
    #[error("cannot read {}: {error}", crate::syntax::file_as_shown(file))]
    Unreadable {
        /// The file, as the document names it.
        file: String,
        /// Why (in the message too, so not its `source`).
        error: std::io::Error,
    },
    /// The file holds nothing but line ends.
    #[error("`{file}` is empty")]
    Empty {
        /// The file, as the document names it.
        file: String,
    },
}

#[cfg(test)]
mod tests;
