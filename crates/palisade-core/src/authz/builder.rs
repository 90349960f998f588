//! Policies written in code, with the same grammar and the same compiler as
//! policy files: the result is the same [`AccessPolicy`] type.
//!
//! ```
//! use palisade_core::authz::{AccessPolicy, Rule};
//! use palisade_core::authn::OwnedRequest;
//! let policy = AccessPolicy::builder()
//!     .deny("no-delete", [Rule::new().methods(["DELETE"])])
//!     .allow("public", [Rule::new().paths(["/healthz", "/public/*"])])
//!     .allow("users", [Rule::new().request_principals(["*"])])
//!     .build()?;
//! assert!(policy.evaluate(&OwnedRequest::get("/public/a"), None).is_allowed());
//! assert!(!policy.evaluate(&OwnedRequest::new("DELETE", "/public/a"), None).is_allowed());
//! assert!(!policy.evaluate(&OwnedRequest::get("/list"), None).is_allowed());
//! # Ok::<(), palisade_core::policy::PolicyError>(())
//! ```

use super::{AccessPolicy, Action, EscapedSlashes, ExternalAuthorizers};
use crate::policy::{
    AuthorizationPolicySpec, ConditionSpec, Document, ExtensionProviderSpec, FromSpec, Metadata,
    OperationSpec, PolicyError, PolicySet, RuleSpec, SourceSpec, Spec, ToSpec, Workload,
};

/// The condition key of Keycloak's realm roles.
const REALM_ROLES: &str = "request.auth.claims[realm_access][roles]";

fn strings<I, S>(values: I) -> Option<Vec<String>>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Some(values.into_iter().map(Into::into).collect())
}

/// One rule of a policy built in code: every field set must match (Istio's
/// `from.source`, `to.operation` and `when` in one).
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct Rule {
    source: SourceSpec,
    operation: OperationSpec,
    when: Vec<ConditionSpec>,
}

macro_rules! setters {
    ($part:ident: $($(#[$doc:meta])* $name:ident => $field:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name<I, S>(mut self, values: I) -> Self
            where
                I: IntoIterator<Item = S>,
                S: Into<String>,
            {
                self.$part.$field = strings(values);
                self
            }
        )*
    };
}

impl Rule {
    /// A rule that matches every request until fields are added.
    pub fn new() -> Self {
        Self::default()
    }

    setters!(source:
        /// Peer principals (`cluster.local/ns/default/sa/productpage`).
        principals => principals,
        /// Not these peer principals.
        not_principals => not_principals,
        /// Request principals (`ISSUER/SUBJECT`, `*` for any end user).
        request_principals => request_principals,
        /// Not these request principals.
        not_request_principals => not_request_principals,
        /// Peer namespaces.
        namespaces => namespaces,
        /// Not these peer namespaces.
        not_namespaces => not_namespaces,
        /// Peer Kubernetes service accounts (`prod/ratings`; `ratings` in
        /// the `default` namespace of policies built in code). Not with
        /// `principals` or `namespaces` in one rule (as in Istio).
        service_accounts => service_accounts,
        /// Not these peer service accounts.
        not_service_accounts => not_service_accounts,
        /// Connection addresses (CIDR blocks).
        ip_blocks => ip_blocks,
        /// Not these connection addresses.
        not_ip_blocks => not_ip_blocks,
        /// Client addresses behind trusted proxies.
        remote_ip_blocks => remote_ip_blocks,
        /// Not these client addresses.
        not_remote_ip_blocks => not_remote_ip_blocks,
    );

    setters!(operation:
        /// `Host` values.
        hosts => hosts,
        /// Not these `Host` values.
        not_hosts => not_hosts,
        /// Local ports.
        ports => ports,
        /// Not these local ports.
        not_ports => not_ports,
        /// Methods.
        methods => methods,
        /// Not these methods.
        not_methods => not_methods,
        /// Paths (exact, `prefix*`, `*suffix`, `{*}`/`{**}` templates).
        paths => paths,
        /// Not these paths.
        not_paths => not_paths,
    );

    /// A condition: `key` (`request.auth.claims[groups]`) has one of `values`.
    pub fn when<I, S>(mut self, key: &str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.when.push(ConditionSpec {
            key: key.to_owned(),
            values: strings(values),
            ..ConditionSpec::default()
        });
        self
    }

    /// A condition: `key` has none of `values`.
    pub fn when_not<I, S>(mut self, key: &str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.when.push(ConditionSpec {
            key: key.to_owned(),
            not_values: strings(values),
            ..ConditionSpec::default()
        });
        self
    }

    /// A condition: the caller has one of `roles` among its Keycloak realm
    /// roles (`realm_access.roles`: a token's, or the roles a Kerberos user
    /// is mapped to, as [`realm_role`](super::realm_role) reads them;
    /// Spring's `hasAnyRole`, without its `ROLE_` prefix). The same as
    /// `when("request.auth.claims[realm_access][roles]", roles)`.
    ///
    /// ```
    /// use palisade_core::authz::{AccessPolicy, Rule};
    /// // Admins only under /admin; any user elsewhere. Rules are not
    /// // ordered: a DENY keeps the others out (an ALLOW for users would
    /// // let them in, whatever comes before it).
    /// let policy = AccessPolicy::builder()
    ///     .deny("admins-only", [Rule::new().paths(["/admin", "/admin/*"]).not_realm_roles(["admin"])])
    ///     .allow("users", [Rule::new().request_principals(["*"])])
    ///     .build()?;
    /// # Ok::<(), palisade_core::policy::PolicyError>(())
    /// ```
    pub fn realm_roles<I, S>(self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.when(REALM_ROLES, roles)
    }

    /// A condition: the caller has none of `roles` among its realm roles
    /// (a caller with neither a token nor Kerberos roles has none).
    pub fn not_realm_roles<I, S>(self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.when_not(REALM_ROLES, roles)
    }

    /// A condition: the caller has one of `roles` among the client roles
    /// of `client` (`resource_access.CLIENT.roles`). The same as
    /// `when("request.auth.claims[resource_access][CLIENT][roles]", roles)`.
    pub fn client_roles<I, S>(self, client: &str, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.when(
            &format!("request.auth.claims[resource_access][{client}][roles]"),
            roles,
        )
    }

    /// A condition: the caller has none of `roles` among the client roles
    /// of `client`.
    pub fn not_client_roles<I, S>(self, client: &str, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.when_not(
            &format!("request.auth.claims[resource_access][{client}][roles]"),
            roles,
        )
    }

    fn into_rule(self) -> RuleSpec {
        let mut r = RuleSpec::default();
        if self.source != SourceSpec::default() {
            r.from = Some(vec![FromSpec { source: self.source }]);
        }
        if self.operation != OperationSpec::default() {
            r.to = Some(vec![ToSpec {
                operation: self.operation,
            }]);
        }
        r.when = self.when;
        r
    }
}

/// Builds an [`AccessPolicy`] in code; see [`AccessPolicy::builder`].
#[derive(Debug, Default)]
#[must_use]
pub struct AccessPolicyBuilder {
    documents: Vec<Document>,
    authorizers: ExternalAuthorizers,
}

impl AccessPolicyBuilder {
    fn push(self, name: &str, action: Action, rules: Option<Vec<Rule>>, provider: Option<&str>) -> Self {
        let spec = AuthorizationPolicySpec {
            action,
            rules: rules.map(|r| r.into_iter().map(Rule::into_rule).collect()),
            provider: provider.map(|p| ExtensionProviderSpec { name: p.to_owned() }),
            ..AuthorizationPolicySpec::default()
        };
        self.add(
            name,
            "security.istio.io/v1",
            "AuthorizationPolicy",
            Spec::AuthorizationPolicy(spec),
        )
    }

    /// Adds the document `name` of `kind`, as a file's would be.
    fn add(mut self, name: &str, api_version: &str, kind: &str, spec: Spec) -> Self {
        let mut metadata = Metadata::default();
        name.clone_into(&mut metadata.name);
        self.documents.push(Document {
            index: self.documents.len() + 1,
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            metadata,
            spec,
            line: None,
        });
        self
    }

    /// An ALLOW policy with these rules (none: it allows nothing).
    pub fn allow(self, name: &str, rules: impl IntoIterator<Item = Rule>) -> Self {
        self.push(name, Action::Allow, Some(rules.into_iter().collect()), None)
    }

    /// A DENY policy with these rules: at least one, or
    /// [`build`](Self::build) refuses it (it would deny nothing; Istio's
    /// validation refuses it too); [`Rule::new`] alone matches every
    /// request.
    pub fn deny(self, name: &str, rules: impl IntoIterator<Item = Rule>) -> Self {
        self.push(name, Action::Deny, Some(rules.into_iter().collect()), None)
    }

    /// An AUDIT policy with these rules (logged, no effect).
    pub fn audit(self, name: &str, rules: impl IntoIterator<Item = Rule>) -> Self {
        self.push(name, Action::Audit, Some(rules.into_iter().collect()), None)
    }

    /// A CUSTOM policy: requests its rules match are first sent to the
    /// authorizer registered as `provider` (see [`Self::authorizers`]). At
    /// least one rule, or [`build`](Self::build) refuses it.
    pub fn custom(self, name: &str, provider: &str, rules: impl IntoIterator<Item = Rule>) -> Self {
        self.push(
            name,
            Action::Custom,
            Some(rules.into_iter().collect()),
            Some(provider),
        )
    }

    /// What `%2F`, `%5C` and `\` in a request path do where a rule reads
    /// the path: [`EscapedSlashes::Reject`] (400, the default, as in a
    /// policy file) or [`EscapedSlashes::Keep`] (a relaxation, said at warn
    /// level: a route's wildcard capture decodes them into segments the
    /// path rules did not see). An `AuthorizationSettings` document's
    /// `escapedSlashes`.
    pub fn escaped_slashes(mut self, escaped: EscapedSlashes) -> Self {
        if escaped == EscapedSlashes::Keep {
            crate::config_warning!(target: crate::guard::LOG_TARGET, "escaped slashes are kept (escaped_slashes(Keep)): a route's wildcard capture decodes them into segments the path rules did not see");
        }
        self.settings().escaped_slashes = escaped;
        self
    }

    /// The mesh's trust domain and its aliases, as Istio's
    /// `meshConfig.trustDomain` and `trustDomainAliases`: a 5-part
    /// principal (`cluster.local/ns/NS/sa/SA`) of `cluster.local`, the
    /// domain or an alias names the workload in the domain and each alias.
    /// An `AuthorizationSettings` document's `trustDomain` and
    /// `trustDomainAliases`.
    pub fn trust_domain<A: Into<String>>(
        mut self,
        domain: impl Into<String>,
        aliases: impl IntoIterator<Item = A>,
    ) -> Self {
        let settings = self.settings();
        settings.trust_domain = Some(domain.into());
        settings.trust_domain_aliases = aliases.into_iter().map(Into::into).collect();
        self
    }

    /// The policy's `AuthorizationSettings`, added when there is none yet:
    /// each setter changes its own fields.
    fn settings(&mut self) -> &mut crate::policy::AuthorizationSettingsSpec {
        let at = match self
            .documents
            .iter()
            .position(|d| matches!(d.spec, Spec::AuthorizationSettings(_)))
        {
            Some(at) => at,
            None => {
                let taken = std::mem::take(self);
                *self = taken.add(
                    "settings",
                    "palisade.dev/v1alpha1",
                    "AuthorizationSettings",
                    Spec::AuthorizationSettings(crate::policy::AuthorizationSettingsSpec::default()),
                );
                self.documents.len() - 1
            }
        };
        match &mut self.documents[at].spec {
            Spec::AuthorizationSettings(s) => s,
            _ => unreachable!("the settings document was found or added at `at`"),
        }
    }

    /// The external authorizers CUSTOM policies name.
    pub fn authorizers(mut self, authorizers: ExternalAuthorizers) -> Self {
        self.authorizers = authorizers;
        self
    }

    /// Compiles the policies.
    ///
    /// # Errors
    /// A [`PolicyError`] (source `code`) naming the policy and field of
    /// anything that cannot be enforced exactly as written, and two
    /// policies of one name (decisions, logs and metrics name the policy
    /// that decided).
    pub fn build(self) -> Result<AccessPolicy, PolicyError> {
        let set = PolicySet::from_documents("code", self.documents)?;
        let workload = Workload::new("code", "default");
        let mut policy = AccessPolicy::compile_with(&set.for_workload(&workload), &self.authorizers)?;
        if let Some(engine) = std::sync::Arc::get_mut(&mut policy.0) {
            engine.in_code = true;
        }
        Ok(policy)
    }
}

impl AccessPolicy {
    /// Starts a policy written in code; it compiles with the same rules as a
    /// policy file and gives the same type.
    pub fn builder() -> AccessPolicyBuilder {
        AccessPolicyBuilder::default()
    }
}
