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
//! Documents that do not apply to the workload (another namespace, a
//! selector that does not match) are parsed and validated all the same, so one
//! file can describe a whole mesh and a typo anywhere in it is caught.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The `apiVersion` of Palisade's own kinds.
pub const PALISADE_API_VERSION: &str = "palisade.dev/v1alpha1";
/// Istio's default root namespace: documents there apply to every workload.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// A policy file that could not be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyError {
    /// The file (or the name given for an in-memory source).
    pub file: String,
    /// The 1-based index of the document in the stream, when known.
    pub document: Option<usize>,
    /// `Kind namespace/name` of the document, when known.
    pub resource: Option<String>,
    /// The field path inside the document (`spec.jwtRules[0].issuer`), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    /// An error about a whole file (or named source).
    #[must_use]
    pub fn new(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            document: None,
            resource: None,
            field: None,
            message: message.into(),
        }
    }

    /// The same error, located at a field of a document.
    #[must_use]
    pub fn at(mut self, document: usize, resource: Option<String>, field: impl Into<String>) -> Self {
        self.document = Some(document);
        self.resource = resource;
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        if let Some(r) = &self.resource {
            write!(f, " ({r})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PolicyError {}

/// The workload a service runs as: what selects the documents that apply to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The service name (`app` label).
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

    /// The host name `ServiceRole.rules.services` matches:
    /// `<service>.<namespace>.svc.cluster.local`.
    #[must_use]
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.service, self.namespace)
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
    /// The namespace; absent means `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels (not used for selection).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (`istio.io/dry-run`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, rename = "uid")]
    _uid: Option<serde_yaml::Value>,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<serde_yaml::Value>,
    #[serde(default, rename = "generation")]
    _generation: Option<serde_yaml::Value>,
    #[serde(default, rename = "creationTimestamp")]
    _creation_timestamp: Option<serde_yaml::Value>,
}

impl Metadata {
    /// The namespace, `default` when absent.
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// `spec.selector` of Istio documents.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Selector {
    /// Labels the workload must all have.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `RequestAuthentication.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RequestAuthenticationSpec {
    /// Which workloads it applies to.
    #[serde(default)]
    pub selector: Option<Selector>,
    /// One rule per accepted issuer.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// `RequestAuthentication.spec.jwtRules[]`, as Istio defines it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtRule {
    /// `iss` of accepted tokens.
    pub issuer: String,
    /// Accepted `aud` values; empty means the service's own host names, as
    /// Istio does (here: the service name and its cluster host name).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where to fetch the JWKS; absent means OpenID discovery from the issuer.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// An inline JWKS document (JSON text).
    #[serde(default)]
    pub jwks: Option<String>,
    /// Headers that carry the token, with an optional prefix.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters that carry the token.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies that carry the token.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// A header to receive the verified payload (base64url JSON).
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request for the handler (default: removed).
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied into request headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Timeout of JWKS fetches (Istio's `timeout`, e.g. `5s`).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `jwtRules[].fromHeaders[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtHeader {
    /// The header name.
    pub name: String,
    /// A prefix to strip, such as `Bearer `.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// `jwtRules[].outputClaimToHeaders[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ClaimToHeader {
    /// The header to set.
    pub header: String,
    /// The claim to copy (nested claims with `.`).
    pub claim: String,
}

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthorizationPolicySpec {
    /// Which workloads it applies to.
    #[serde(default)]
    pub selector: Option<Selector>,
    /// `ALLOW` (default), `DENY`, `AUDIT` or `CUSTOM`.
    #[serde(default)]
    pub action: Option<String>,
    /// The external authorizer of a `CUSTOM` policy.
    #[serde(default)]
    pub provider: Option<Provider>,
    /// The rules; absent with `ALLOW` denies everything (`spec: {}`).
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
}

/// `AuthorizationPolicy.spec.provider`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Provider {
    /// The name the authorizer was registered under.
    pub name: String,
}

/// `AuthorizationPolicy.spec.rules[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Rule {
    /// Sources; any may match.
    #[serde(default)]
    pub from: Vec<From>,
    /// Operations; any may match.
    #[serde(default)]
    pub to: Vec<To>,
    /// Conditions; all must match.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `rules[].from[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct From {
    /// The source.
    pub source: Source,
}

/// `rules[].to[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct To {
    /// The operation.
    pub operation: Operation,
}

/// `from[].source`: every field present must match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
#[expect(missing_docs, reason = "fields are Istio's, documented there one to one")]
pub struct Source {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub request_principals: Option<Vec<String>>,
    pub not_request_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub not_namespaces: Option<Vec<String>>,
    pub ip_blocks: Option<Vec<String>>,
    pub not_ip_blocks: Option<Vec<String>>,
    pub remote_ip_blocks: Option<Vec<String>>,
    pub not_remote_ip_blocks: Option<Vec<String>>,
}

/// `to[].operation`: every field present must match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
#[expect(missing_docs, reason = "fields are Istio's, documented there one to one")]
pub struct Operation {
    pub hosts: Option<Vec<String>>,
    pub not_hosts: Option<Vec<String>>,
    pub ports: Option<Vec<String>>,
    pub not_ports: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
}

/// `rules[].when[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Condition {
    /// The attribute (`request.auth.claims[groups]`).
    pub key: String,
    /// Matches when the attribute has one of these.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// Matches when the attribute has none of these.
    #[serde(default)]
    pub not_values: Option<Vec<String>>,
}

/// `PeerAuthentication.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct PeerAuthenticationSpec {
    /// Which workloads it applies to.
    #[serde(default)]
    pub selector: Option<Selector>,
    /// The workload-wide mode.
    #[serde(default)]
    pub mtls: Option<MtlsMode>,
    /// Per-port modes.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u16, MtlsMode>,
}

/// `PeerAuthentication.spec.mtls`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct MtlsMode {
    /// `UNSET`, `DISABLE`, `PERMISSIVE` or `STRICT`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// `rbac.istio.io/v1alpha1` `ServiceRole.spec`: what may be done.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceRoleSpec {
    /// The permissions; any may match.
    #[serde(default)]
    pub rules: Vec<AccessRule>,
}

/// `ServiceRole.spec.rules[]`: every field present must match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
#[expect(missing_docs, reason = "fields are Istio's, documented there one to one")]
pub struct AccessRule {
    /// Host names of the services (`details.default.svc.cluster.local`, `*`, `details.*`).
    #[serde(default)]
    pub services: Vec<String>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
    pub ports: Option<Vec<i64>>,
    pub not_ports: Option<Vec<i64>>,
    /// Extra conditions, each `key` with `values` (any may match).
    #[serde(default)]
    pub constraints: Vec<RbacCondition>,
}

/// A `constraints[]` entry of a `ServiceRole` rule.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RbacCondition {
    /// The attribute (`destination.labels[version]`, `request.headers[X-Team]`).
    pub key: String,
    /// Accepted values (exact, `prefix*`, `*suffix`, `*`).
    #[serde(default)]
    pub values: Vec<String>,
}

/// `rbac.istio.io/v1alpha1` `ServiceRoleBinding.spec`: who holds a role.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceRoleBindingSpec {
    /// The subjects; any may match.
    #[serde(default)]
    pub subjects: Vec<Subject>,
    /// The `ServiceRole` (same namespace) granted.
    pub role_ref: RoleRef,
    /// `ENFORCED` (default) or `PERMISSIVE` (evaluated and logged, not enforced).
    #[serde(default)]
    pub mode: Option<String>,
}

/// `ServiceRoleBinding.spec.subjects[]`: every field present must match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Subject {
    /// The peer principal (`cluster.local/ns/default/sa/productpage`), or `*`.
    #[serde(default)]
    pub user: Option<String>,
    /// A value of the token's `groups` claim.
    #[serde(default)]
    pub group: Option<String>,
    /// Attribute conditions (`source.namespace`, `request.auth.claims[email]`, …).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// `ServiceRoleBinding.spec.roleRef`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RoleRef {
    /// Always `ServiceRole`.
    pub kind: String,
    /// The role's name.
    pub name: String,
}

/// `rbac.istio.io/v1alpha1` `RbacConfig` / `ClusterRbacConfig.spec`: where
/// the older RBAC is switched on.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RbacConfigSpec {
    /// `OFF`, `ON`, `ON_WITH_INCLUSION` or `ON_WITH_EXCLUSION`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Where RBAC is on, for `ON_WITH_INCLUSION`.
    #[serde(default)]
    pub inclusion: Option<RbacTarget>,
    /// Where RBAC is off, for `ON_WITH_EXCLUSION`.
    #[serde(default)]
    pub exclusion: Option<RbacTarget>,
    /// `ENFORCED` (default) or `PERMISSIVE` for every binding.
    #[serde(default)]
    pub enforcement_mode: Option<String>,
}

/// `RbacConfig.spec.inclusion` / `exclusion`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RbacTarget {
    /// Service host names (`details.default.svc.cluster.local`).
    #[serde(default)]
    pub services: Vec<String>,
    /// Namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// `palisade.dev/v1alpha1` `SpnegoSettings.spec`: Kerberos (HTTP
/// Negotiate) settings for a service started with a keytab.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SpnegoSettingsSpec {
    /// Accept only for this host-based service (`HTTP@www.example.test`).
    pub service: Option<String>,
    /// Accept clients of these realms only; the local name drops the realm.
    #[serde(default)]
    pub allowed_realms: Vec<String>,
    /// At most this many GSSAPI calls at once.
    pub concurrency: Option<usize>,
    /// The largest `Authorization: Negotiate` header (default 65536).
    pub max_header_size: Option<usize>,
    /// Session cookies (mod_auth_gssapi's `GssapiUseSessions`).
    pub session_cookie: Option<SessionCookieSpec>,
    /// Roles by principal (`alice@EXAMPLE.TEST: [admin]`; `*@REALM` for a
    /// whole realm): policies see them as `request.auth.claims[roles]`,
    /// role requirements as realm roles.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Groups by principal, the same way (`request.auth.claims[groups]`).
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
}

/// `SpnegoSettings.spec.sessionCookie`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SessionCookieSpec {
    /// The cookie name (default `palisade_session`).
    pub name: Option<String>,
    /// The keys, newest first: new cookies use the first, all are read.
    pub keys: Vec<SessionKeySpec>,
    /// The longest a cookie lives (default `1h`; never past the ticket).
    pub max_age: Option<String>,
    /// Send the cookie over plain HTTP (no `Secure`): development only.
    #[serde(default)]
    pub insecure_over_http: bool,
}

/// One session key: an id and a file holding 32 bytes (raw, hex or base64).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SessionKeySpec {
    /// 0-255, carried in the cookie.
    pub id: u8,
    /// The key file.
    pub key_file: String,
}

/// `palisade.dev/v1alpha1` `AuthorizationSettings.spec`: what Istio sets in
/// its mesh configuration rather than in policies.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthorizationSettingsSpec {
    /// Istio's `numTrustedProxies`: how many `X-Forwarded-For` hops (from the
    /// right) are trusted proxies, for `remote.ip` and `remoteIpBlocks`.
    /// Default 0: `remote.ip` is the connection's address.
    #[serde(default)]
    pub num_trusted_proxies: Option<usize>,
    /// `KEEP` (default) or `REJECT` (400) for paths with `%2F`, `%5C` or `\`.
    #[serde(default)]
    pub escaped_slashes: Option<String>,
    /// Debug switch: add an `x-palisade-authz` header saying which policy and
    /// rule decided. Off by default; never on in production.
    #[serde(default)]
    pub explain_header: Option<bool>,
}

/// `palisade.dev/v1alpha1` `JwtSettings.spec`: what Istio's jwtRules cannot say.
/// Every field is optional; the defaults are the documented ones.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtSettingsSpec {
    /// The issuer these settings are for; absent means every issuer.
    pub issuer: Option<String>,
    /// The `realm` of the `WWW-Authenticate: Bearer` challenge.
    pub realm: Option<String>,
    /// Clock leeway for `exp`, `nbf` and `iat` (default `60s`).
    pub leeway: Option<String>,
    /// Refuse tokens whose `exp - iat` is longer than this.
    pub max_token_lifetime: Option<String>,
    /// Refuse tokens longer than this many bytes before parsing (default 8192).
    pub max_token_size: Option<usize>,
    /// Require this `typ` header, such as `at+jwt` (RFC 9068).
    pub required_type: Option<String>,
    /// Accepted algorithms (default: every asymmetric one).
    pub algorithms: Option<Vec<String>>,
    /// JWKS cache time to live when the server sends no `Cache-Control` (default `10m`).
    pub jwks_cache_ttl: Option<String>,
    /// Minimum time between two JWKS fetches for unknown key ids (default `10s`).
    pub min_refresh_interval: Option<String>,
    /// How long a request with an unknown `kid` waits for a refetch (default `2s`).
    pub unknown_kid_wait: Option<String>,
    /// Keep using the last good JWKS this long while the issuer fails (default `24h`).
    pub max_stale: Option<String>,
    /// Connect and total timeout of discovery and JWKS fetches (default `5s`).
    pub fetch_timeout: Option<String>,
    /// Largest accepted discovery or JWKS body in bytes (default 1 MiB).
    pub max_jwks_size: Option<usize>,
    /// Entries of the verified-token cache (default 10000; 0 turns it off).
    pub verified_token_cache: Option<u64>,
    /// The claim used as the user name (Keycloak's `principal-attribute`).
    pub principal_claim: Option<String>,
    /// A PEM file of extra trust anchors for the issuer's TLS certificate.
    pub ca_file: Option<String>,
}

/// A Keycloak OIDC adapter configuration (`keycloak.json`), also accepted as
/// the spec of the `palisade.dev/v1alpha1` kind `KeycloakAdapter`.
///
/// Fields that only make sense for browser log-in (`credentials`, CORS, …)
/// are accepted and ignored; the secret in `credentials` is never printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
#[expect(
    missing_docs,
    reason = "fields are Keycloak's adapter options, documented there"
)]
pub struct KeycloakAdapterConfig {
    pub realm: String,
    pub auth_server_url: String,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub bearer_only: Option<bool>,
    #[serde(default)]
    pub ssl_required: Option<String>,
    #[serde(default)]
    pub use_resource_role_mappings: Option<bool>,
    #[serde(default)]
    pub principal_attribute: Option<String>,
    #[serde(default)]
    pub verify_token_audience: Option<bool>,
    #[serde(default)]
    pub min_time_between_jwks_requests: Option<u64>,
    #[serde(default)]
    pub public_key_cache_ttl: Option<u64>,
    #[serde(default)]
    pub realm_public_key: Option<String>,
    #[serde(default)]
    pub confidential_port: Option<u16>,
    #[serde(default)]
    pub public_client: Option<bool>,
    #[serde(default)]
    pub enable_cors: Option<bool>,
    #[serde(default)]
    pub credentials: Option<serde_json::Value>,
    #[serde(default)]
    pub allow_any_hostname: Option<bool>,
    #[serde(default)]
    pub disable_trust_manager: Option<bool>,
}

impl fmt::Debug for KeycloakAdapterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeycloakAdapterConfig")
            .field("realm", &self.realm)
            .field("auth_server_url", &self.auth_server_url)
            .field("resource", &self.resource)
            .field("credentials", &self.credentials.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl KeycloakAdapterConfig {
    /// Reads a `keycloak.json` file.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the file and field when it cannot be read or
    /// does not have the adapter's shape.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let name = path.as_ref().display().to_string();
        let text = std::fs::read_to_string(path.as_ref())
            .map_err(|e| PolicyError::new(&name, format!("cannot read: {e}")))?;
        Self::from_json_str(&text, &name)
    }

    /// Parses a `keycloak.json` document.
    ///
    /// # Errors
    /// A [`PolicyError`] naming `source` and the field.
    pub fn from_json_str(text: &str, source: &str) -> Result<Self, PolicyError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let mut err = PolicyError::new(source, e.inner().to_string());
            let path = e.path().to_string();
            err.field = (path != ".").then_some(path);
            err
        })
    }

    /// The issuer URL: `<auth-server-url>/realms/<realm>`.
    #[must_use]
    pub fn issuer(&self) -> String {
        format!(
            "{}/realms/{}",
            self.auth_server_url.trim_end_matches('/'),
            self.realm
        )
    }
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
    /// `rbac.istio.io/v1alpha1` `ServiceRole`.
    ServiceRole(ServiceRoleSpec),
    /// `rbac.istio.io/v1alpha1` `ServiceRoleBinding`.
    ServiceRoleBinding(ServiceRoleBindingSpec),
    /// `rbac.istio.io/v1alpha1` `RbacConfig` or `ClusterRbacConfig`.
    RbacConfig(RbacConfigSpec),
}

impl Spec {
    fn selector(&self) -> Option<&Selector> {
        match self {
            Spec::RequestAuthentication(s) => s.selector.as_ref(),
            Spec::AuthorizationPolicy(s) => s.selector.as_ref(),
            Spec::PeerAuthentication(s) => s.selector.as_ref(),
            Spec::JwtSettings(_)
            | Spec::KeycloakAdapter(_)
            | Spec::AuthorizationSettings(_)
            | Spec::SpnegoSettings(_)
            | Spec::ServiceRole(_)
            | Spec::ServiceRoleBinding(_)
            | Spec::RbacConfig(_) => None,
        }
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

    /// Whether this document applies to the workload.
    #[must_use]
    pub fn applies_to(&self, workload: &Workload) -> bool {
        let ns = self.metadata.namespace();
        match self.spec {
            // Mesh-wide switches: one per mesh, wherever they are written.
            Spec::RbacConfig(_) => return true,
            // Namespaced, without the root-namespace rule; `services` selects.
            Spec::ServiceRole(_) | Spec::ServiceRoleBinding(_) => return ns == workload.namespace,
            _ => {}
        }
        if ns != workload.namespace && ns != workload.root_namespace {
            return false;
        }
        match self.spec.selector() {
            None => true,
            Some(sel) => sel
                .match_labels
                .iter()
                .all(|(k, v)| workload.labels.get(k) == Some(v)),
        }
    }
}

/// Every document of a policy file, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySet {
    source: String,
    documents: Vec<Document>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDocument {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: serde_yaml::Value,
    #[serde(default)]
    spec: serde_yaml::Value,
    #[serde(default, rename = "status")]
    _status: serde_yaml::Value,
}

impl PolicySet {
    /// Reads and validates a policy file.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the file, the document and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let name = path.as_ref().display().to_string();
        let text = std::fs::read_to_string(path.as_ref())
            .map_err(|e| PolicyError::new(&name, format!("cannot read: {e}")))?;
        Self::from_yaml_str(&text, &name)
    }

    /// Parses and validates a YAML stream; `source` names it in errors.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the source, the document and the field.
    pub fn from_yaml_str(text: &str, source: &str) -> Result<Self, PolicyError> {
        let mut documents = Vec::new();
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let index = i + 1;
            let raw: Option<RawDocument> = serde_path_to_error::deserialize(de).map_err(|e| {
                PolicyError::new(source, e.inner().to_string()).at(
                    index,
                    None,
                    e.path().to_string().trim_start_matches('.'),
                )
            })?;
            // An empty document (a stray `---`) is allowed, as kubectl allows it.
            let Some(raw) = raw else { continue };
            documents.push(Self::document(raw, index, source)?);
        }
        Ok(Self {
            source: source.to_owned(),
            documents,
        })
    }

    fn document(raw: RawDocument, index: usize, source: &str) -> Result<Document, PolicyError> {
        let err = |field: &str, msg: String| PolicyError::new(source, msg).at(index, None, field);
        let api_version = raw
            .api_version
            .ok_or_else(|| err("apiVersion", "missing".into()))?;
        let kind = raw.kind.ok_or_else(|| err("kind", "missing".into()))?;
        let metadata: Metadata = if raw.metadata.is_null() {
            Metadata::default()
        } else {
            typed(raw.metadata).map_err(|(path, msg)| err(&format!("metadata{path}"), msg))?
        };
        let resource = Some(format!("{kind} {}/{}", metadata.namespace(), metadata.name));
        let at = |path: String, msg: String| {
            PolicyError::new(source, msg).at(index, resource.clone(), format!("spec{path}"))
        };
        let spec = match (api_version.as_str(), kind.as_str()) {
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "RequestAuthentication") => {
                Spec::RequestAuthentication(typed(raw.spec).map_err(|(p, m)| at(p, m))?)
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
                Spec::AuthorizationPolicy(typed(raw.spec).map_err(|(p, m)| at(p, m))?)
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "PeerAuthentication") => {
                Spec::PeerAuthentication(typed(raw.spec).map_err(|(p, m)| at(p, m))?)
            }
            (PALISADE_API_VERSION, "JwtSettings") => {
                Spec::JwtSettings(typed(raw.spec).map_err(|(p, m)| at(p, m))?)
            }
            (PALISADE_API_VERSION, "KeycloakAdapter") => {
                Spec::KeycloakAdapter(typed(raw.spec).map_err(|(p, m)| at(p, m))?)
            }
            ("rbac.istio.io/v1alpha1", "ServiceRole") => {
                Spec::ServiceRole(typed(raw.spec).map_err(|(p, m)| at(p, m))?)
            }
            ("rbac.istio.io/v1alpha1", "ServiceRoleBinding") => {
                Spec::ServiceRoleBinding(typed(raw.spec).map_err(|(p, m)| at(p, m))?)
            }
            ("rbac.istio.io/v1alpha1", "RbacConfig" | "ClusterRbacConfig") => {
                Spec::RbacConfig(typed(raw.spec).map_err(|(p, m)| at(p, m))?)
            }
            (PALISADE_API_VERSION, "AuthorizationSettings") => {
                Spec::AuthorizationSettings(typed(raw.spec).map_err(|(p, m)| at(p, m))?)
            }
            (PALISADE_API_VERSION, "SpnegoSettings") => {
                Spec::SpnegoSettings(typed(raw.spec).map_err(|(p, m)| at(p, m))?)
            }
            (
                "security.istio.io/v1"
                | "security.istio.io/v1beta1"
                | "rbac.istio.io/v1alpha1"
                | PALISADE_API_VERSION,
                _,
            ) => {
                return Err(
                    PolicyError::new(source, format!("unknown kind `{kind}` for {api_version}"))
                        .at(index, resource, "kind"),
                );
            }
            _ => {
                return Err(
                    PolicyError::new(source, format!("unknown apiVersion `{api_version}`")).at(
                        index,
                        resource,
                        "apiVersion",
                    ),
                );
            }
        };
        Ok(Document {
            index,
            api_version,
            kind,
            metadata,
            spec,
        })
    }

    /// A set of documents built in memory (by code); `source` names it in errors.
    #[must_use]
    pub fn from_documents(source: &str, documents: Vec<Document>) -> Self {
        Self {
            source: source.to_owned(),
            documents,
        }
    }

    /// The name of the file or source this set was read from.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every document, applicable or not.
    #[must_use]
    pub fn documents(&self) -> &[Document] {
        &self.documents
    }

    /// The documents that apply to `workload`.
    #[must_use]
    pub fn for_workload(&self, workload: &Workload) -> WorkloadPolicy<'_> {
        WorkloadPolicy {
            source: &self.source,
            workload: workload.clone(),
            documents: self.documents.iter().filter(|d| d.applies_to(workload)).collect(),
        }
    }

    /// An error located at a document of this set (for compilers of its documents).
    #[must_use]
    pub fn error_at(&self, document: &Document, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::new(&self.source, message).at(document.index, Some(document.resource()), field)
    }
}

/// The documents of a [`PolicySet`] that apply to one workload.
#[derive(Clone, Debug)]
pub struct WorkloadPolicy<'a> {
    source: &'a str,
    workload: Workload,
    documents: Vec<&'a Document>,
}

impl<'a> WorkloadPolicy<'a> {
    /// The workload.
    #[must_use]
    pub fn workload(&self) -> &Workload {
        &self.workload
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

    /// Applicable `AuthorizationSettings` documents.
    pub fn authorization_settings(
        &self,
    ) -> impl Iterator<Item = (&'a Document, &'a AuthorizationSettingsSpec)> + '_ {
        self.documents.iter().filter_map(|d| match &d.spec {
            Spec::AuthorizationSettings(s) => Some((*d, s)),
            _ => None,
        })
    }

    /// An error located at a field of one of these documents.
    #[must_use]
    pub fn error_at(&self, document: &Document, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::new(self.source, message).at(document.index, Some(document.resource()), field)
    }
}

fn typed<T: DeserializeOwned + Default>(value: serde_yaml::Value) -> Result<T, (String, String)> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            String::new()
        } else {
            format!(".{path}")
        };
        (path, e.inner().to_string())
    })
}

/// Parses a duration as Istio writes them: `500ms`, `5s`, `1.5s`, `10m`, `24h`.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((t, ""), |i| t.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 5s, 10m or 24h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{text}` needs a unit: ms, s, m or h")),
    };
    if !seconds.is_finite() || !(0.0..=10.0 * 365.0 * 86400.0).contains(&seconds) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_names_file_document_and_field() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec: {}\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: prod}\nspec:\n  jwtRules:\n  - issuer: x\n    audience: [y]\n";
        let err = PolicySet::from_yaml_str(yaml, "mesh.yaml").unwrap_err();
        assert_eq!(err.document, Some(2));
        assert_eq!(err.field.as_deref(), Some("spec.jwtRules[0].audience"));
        let line = err.to_string();
        assert!(
            line.starts_with("mesh.yaml: document 2 (RequestAuthentication prod/jwt)"),
            "{line}"
        );
        assert!(line.contains("unknown field `audience`"), "{line}");
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let err = PolicySet::from_yaml_str(
            "apiVersion: security.istio.io/v1\nkind: AuthorisationPolicy\nmetadata: {name: a}\n",
            "f",
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("kind"));
    }

    #[test]
    fn unknown_api_version_is_an_error() {
        let err = PolicySet::from_yaml_str("apiVersion: v9\nkind: X\n", "f").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("apiVersion"));
    }

    #[test]
    fn selection_by_namespace_root_namespace_and_labels() {
        let yaml = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ns, namespace: prod}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-app}
spec: {selector: {matchLabels: {app: reviews}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mine}
spec: {selector: {matchLabels: {app: details}}}
";
        let set = PolicySet::from_yaml_str(yaml, "f").unwrap();
        assert_eq!(set.documents().len(), 4);
        let w = set.for_workload(&Workload::new("details", "default"));
        let names: Vec<_> = w.documents().iter().map(|d| d.metadata.name.as_str()).collect();
        assert_eq!(names, ["root", "mine"]);
    }

    #[test]
    fn keycloak_json_loads_and_names_bad_fields() {
        let ok = KeycloakAdapterConfig::from_json_str(
            r#"{"realm":"demo","auth-server-url":"http://kc:8080/","resource":"api","bearer-only":true,"credentials":{"secret":"hunter2"}}"#,
            "keycloak.json",
        )
        .unwrap();
        assert_eq!(ok.issuer(), "http://kc:8080/realms/demo");
        assert!(!format!("{ok:?}").contains("hunter2"));
        let err = KeycloakAdapterConfig::from_json_str(
            r#"{"realm":"demo","auth-server-url":"x","bearer-onli":true}"#,
            "keycloak.json",
        )
        .unwrap_err();
        assert!(err.to_string().contains("bearer-onli"), "{err}");
    }

    #[test]
    fn durations_parse_like_istio() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("xs").is_err());
    }
}
