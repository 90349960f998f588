//! `palisade.dev/v1alpha1`: what Istio's kinds cannot say. `JwtSettings`,
//! `AuthorizationSettings`, `SpnegoSettings`, `OidcLogin` and
//! `UpstreamCredentials`
//! (`KeycloakAdapter` is in [`super::KeycloakAdapterConfig`]).
//!
//! Absent fields keep the defaults of the types they configure (the JWT
//! provider's, the SPNEGO authenticator's); the defaults written below are
//! those, for reading convenience.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use serde::Deserialize;

use super::{DurationSpec, FieldError, SelectorSpec};
use crate::authz::EscapedSlashes;
use crate::syntax::{
    CLIENT_KEY_ALGORITHMS, COOKIE_NAME_RULE, is_cookie_name, is_http_url, is_landing_uri, is_service_path,
    url_without_credentials,
};

/// JWS algorithms a `JwtSettings` document may name.
const ASYMMETRIC_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// `JwtSettings.spec`: what Istio's jwtRules cannot say.
/// Every field is optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtSettingsSpec {
    /// The issuer these settings are for; absent means every issuer. A
    /// `jwtRules` entry or `KeycloakAdapter` of the file must have this
    /// issuer, spelled alike, or the file is refused.
    pub issuer: Option<String>,
    /// The `realm` of the `WWW-Authenticate: Bearer` challenge (a document
    /// without `issuer`).
    pub realm: Option<String>,
    /// Clock leeway for `exp`, `nbf` and `iat` (default `60s`, at most `10m`).
    pub leeway: Option<DurationSpec>,
    /// Refuse tokens whose `exp - iat` is longer than this.
    pub max_token_lifetime: Option<DurationSpec>,
    /// Refuse tokens longer than this many bytes before parsing (default
    /// 8192; a document without `issuer`).
    pub max_token_size: Option<NonZeroUsize>,
    /// Require this `typ` header, such as `at+jwt` (RFC 9068).
    pub required_type: Option<String>,
    /// Accepted algorithms, by default all of these: `RS256`, `RS384`,
    /// `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384`, `EdDSA`
    /// (Ed25519). `ES512` (P-521) and HMAC algorithms are not accepted.
    pub algorithms: Option<Vec<String>>,
    /// JWKS cache time to live when the server sends no `Cache-Control`
    /// (default `10m`, between `1m` and `24h`).
    pub jwks_cache_ttl: Option<DurationSpec>,
    /// Minimum time between two JWKS fetches for unknown key ids (default `10s`).
    pub min_refresh_interval: Option<DurationSpec>,
    /// How long a request with an unknown `kid` waits for a refetch (default `2s`).
    pub unknown_kid_wait: Option<DurationSpec>,
    /// Keep using the last good JWKS this long while the issuer fails (default `24h`).
    pub max_stale: Option<DurationSpec>,
    /// Connect and total timeout of discovery and JWKS fetches (default `5s`).
    pub fetch_timeout: Option<DurationSpec>,
    /// Largest accepted discovery or JWKS body in bytes (default 1 MiB).
    pub max_jwks_size: Option<NonZeroUsize>,
    /// Entries of the verified-token cache (default 10000; 0 turns it off;
    /// a document without `issuer`).
    pub verified_token_cache: Option<u64>,
    /// The claim used as the user name (Keycloak's `principal-attribute`).
    pub principal_claim: Option<String>,
    /// A top-level claim whose values are realm roles too, for an issuer
    /// that carries roles elsewhere than `realm_access.roles`: `groups`,
    /// `roles` (Entra ID), `cognito:groups` (Spring Security's
    /// `authorities-claim-name`). An array of strings, one string (one
    /// role), or an object whose keys are roles where their values are
    /// objects or `true`.
    pub roles_claim: Option<String>,
    /// Clients whose access tokens are accepted without an audience: a
    /// token with no `aud` whose `client_id` is one of these (Amazon
    /// Cognito's access tokens).
    pub client_ids: Option<Vec<String>>,
    /// A PEM file of extra trust anchors for the issuer's TLS certificate.
    pub ca_file: Option<String>,
    /// Token introspection (RFC 7662) for this issuer's opaque tokens
    /// (the document must name its `issuer`).
    pub introspection: Option<Box<IntrospectionSpec>>,
    /// The service's protected-resource metadata (RFC 9728), served at its
    /// well-known URL and named in its challenges (a document without
    /// `issuer`).
    pub resource_metadata: Option<ResourceMetadataSpec>,
    /// Accept DPoP-bound tokens (RFC 9449) with their proofs (a document
    /// without `issuer`); present means on.
    pub dpop: Option<DpopSpec>,
    /// For an issuer pattern (`issuer` with `{tenant}`, as a `jwtRules`
    /// entry names it): the tenants accepted.
    pub tenants: Option<Vec<String>>,
    /// For an issuer pattern: at most this many tenants' keys kept at once
    /// (default 100).
    pub max_tenants: Option<NonZeroUsize>,
}

/// `JwtSettings.spec.dpop`: `Authorization: DPoP` with a `DPoP` proof.
///
/// ```yaml
/// apiVersion: palisade.dev/v1alpha1
/// kind: JwtSettings
/// metadata: {name: dpop}
/// spec:
///   dpop:
///     algorithms: [ES256]
///     origin: https://shop.example
/// ```
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct DpopSpec {
    /// Proof algorithms accepted, by default all of these: `RS256`,
    /// `RS384`, `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384`,
    /// `EdDSA` (Ed25519).
    pub algorithms: Option<Vec<String>>,
    /// How old a proof may be (default `60s`, at most `5m`).
    pub max_age: Option<DurationSpec>,
    /// Require a server nonce in every proof (default `false`).
    pub require_nonce: Option<bool>,
    /// With `requireNonce`: a file holding the key nonces are made with (at
    /// least 32 bytes of text, such as `openssl rand -base64 48`), so that
    /// every replica given the same file accepts the others' nonces
    /// (default: a random key per process, so replicas behind one load
    /// balancer refuse each other's nonces).
    pub nonce_secret_file: Option<String>,
    /// `scheme://host[:port]` clients use to reach the service, when TLS is
    /// terminated in front of it (default: from the connection and `Host`).
    pub origin: Option<String>,
    /// Where used proofs are remembered: `memory` (the default, one
    /// process) or `redis://HOST:PORT/DB`, shared by every replica so a
    /// proof used at one is refused at all (feature `redis`).
    pub replay_store: Option<String>,
}

/// `JwtSettings.spec.resourceMetadata` (RFC 9728).
///
/// ```yaml
/// apiVersion: palisade.dev/v1alpha1
/// kind: JwtSettings
/// metadata: {name: details-metadata}
/// spec:
///   resourceMetadata:
///     resource: https://shop.example/details
///     scopes: [read]
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ResourceMetadataSpec {
    /// The resource identifier: the service's URL as clients know it
    /// (`https`, or `http` for a service reached so; no query or fragment).
    pub resource: String,
    /// `scopes_supported`.
    pub scopes: Option<Vec<String>>,
    /// `resource_name`.
    pub resource_name: Option<String>,
    /// `resource_documentation`.
    pub documentation: Option<String>,
}

/// `JwtSettings.spec.introspection`: how the issuer's opaque tokens (and,
/// with `jwts: true`, its JWTs) are checked at its introspection endpoint.
///
/// ```yaml
/// apiVersion: palisade.dev/v1alpha1
/// kind: JwtSettings
/// metadata: {name: shop-introspection}
/// spec:
///   issuer: https://kc.example/realms/shop
///   introspection:
///     clientId: details
///     clientSecretFile: /etc/palisade/details.secret
///     cacheTime: 30s
/// ```
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct IntrospectionSpec {
    /// The endpoint (default: the issuer's discovery document's
    /// `introspection_endpoint`).
    pub endpoint: Option<String>,
    /// The service's client at the issuer.
    pub client_id: String,
    /// A file holding the client's secret (read without its trailing newline).
    pub client_secret_file: Option<String>,
    /// The client's secret, inline (prefer `clientSecretFile`: an inline
    /// secret loads with a warning).
    pub client_secret: Option<String>,
    /// `client_secret_basic` (the default) or `client_secret_post`.
    pub client_auth_method: Option<ClientAuthMethod>,
    /// Introspect the issuer's JWTs too, instead of checking their signature.
    pub jwts: Option<bool>,
    /// How long an active answer is used (default `60s`).
    pub cache_time: Option<DurationSpec>,
    /// How long a refusal is remembered (default `5s`).
    pub negative_cache_time: Option<DurationSpec>,
    /// Answers kept at most (default 10000).
    pub cache_entries: Option<NonZeroUsize>,
    /// While the endpoint is unreachable, keep accepting tokens last found
    /// active for this long past their cache time (default: never).
    pub serve_stale_for: Option<DurationSpec>,
}

// The Redis URLs below can carry a password: shown without it.
impl std::fmt::Debug for DpopSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopSpec")
            .field("algorithms", &self.algorithms)
            .field("max_age", &self.max_age)
            .field("require_nonce", &self.require_nonce)
            .field("nonce_secret_file", &self.nonce_secret_file)
            .field("origin", &self.origin)
            .field(
                "replay_store",
                &self.replay_store.as_deref().map(url_without_credentials),
            )
            .finish()
    }
}

impl std::fmt::Debug for OidcSessionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSessionSpec")
            .field("cookie_name", &self.cookie_name)
            .field("idle_timeout", &self.idle_timeout)
            .field("absolute_timeout", &self.absolute_timeout)
            .field("keys", &self.keys)
            .field("store", &self.store.as_deref().map(url_without_credentials))
            .finish()
    }
}

impl std::fmt::Debug for IntrospectionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionSpec")
            .field("endpoint", &self.endpoint.as_deref().map(url_without_credentials))
            .field("client_id", &self.client_id)
            .field("client_secret_file", &self.client_secret_file)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_auth_method", &self.client_auth_method)
            .field("jwts", &self.jwts)
            .finish_non_exhaustive()
    }
}

/// Said of a client secret written in the policy file itself.
const INLINE_SECRET: &str = "the client's secret is written in the policy file: whoever can read the file, or a copy of it (a repository, a backup, a ConfigMap), holds it; give it in a file of its own with clientSecretFile";

impl JwtSettingsSpec {
    /// A secret written inline, said aloud when the file loads.
    pub(super) fn warnings(&self) -> Vec<FieldError> {
        self.introspection
            .as_ref()
            .filter(|i| i.client_secret.is_some())
            .map(|_| {
                (
                    "spec.introspection.clientSecret".to_owned(),
                    INLINE_SECRET.to_owned(),
                )
            })
            .into_iter()
            .collect()
    }

    /// The fields this document gives (without `spec.`). Destructured, so
    /// that a field added later is listed too.
    pub(super) fn given(&self) -> Vec<&'static str> {
        let Self {
            issuer: _,
            realm,
            leeway,
            max_token_lifetime,
            max_token_size,
            required_type,
            algorithms,
            jwks_cache_ttl,
            min_refresh_interval,
            unknown_kid_wait,
            max_stale,
            fetch_timeout,
            max_jwks_size,
            verified_token_cache,
            principal_claim,
            roles_claim,
            client_ids,
            ca_file,
            introspection,
            resource_metadata,
            dpop,
            tenants,
            max_tenants,
        } = self;
        [
            ("realm", realm.is_some()),
            ("leeway", leeway.is_some()),
            ("maxTokenLifetime", max_token_lifetime.is_some()),
            ("maxTokenSize", max_token_size.is_some()),
            ("requiredType", required_type.is_some()),
            ("algorithms", algorithms.is_some()),
            ("jwksCacheTtl", jwks_cache_ttl.is_some()),
            ("minRefreshInterval", min_refresh_interval.is_some()),
            ("unknownKidWait", unknown_kid_wait.is_some()),
            ("maxStale", max_stale.is_some()),
            ("fetchTimeout", fetch_timeout.is_some()),
            ("maxJwksSize", max_jwks_size.is_some()),
            ("verifiedTokenCache", verified_token_cache.is_some()),
            ("principalClaim", principal_claim.is_some()),
            ("rolesClaim", roles_claim.is_some()),
            ("clientIds", client_ids.is_some()),
            ("caFile", ca_file.is_some()),
            ("introspection", introspection.is_some()),
            ("resourceMetadata", resource_metadata.is_some()),
            ("dpop", dpop.is_some()),
            ("tenants", tenants.is_some()),
            ("maxTenants", max_tenants.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, given)| given.then_some(field))
        .collect()
    }

    pub(super) fn check(&self) -> Result<(), FieldError> {
        let pattern = match self.issuer.as_deref().map(crate::syntax::issuer_pattern) {
            Some(Err(e)) => return Err(("spec.issuer".into(), e.into())),
            Some(Ok(pattern)) => pattern,
            None => false,
        };
        if (self.tenants.is_some() || self.max_tenants.is_some()) && !pattern {
            return Err((
                "spec.tenants".into(),
                "needs an issuer pattern: `spec.issuer` with `{tenant}` in it".into(),
            ));
        }
        if self.tenants.as_ref().is_some_and(Vec::is_empty) {
            return Err((
                "spec.tenants".into(),
                "must not be empty: an issuer pattern with no tenant accepts no token".into(),
            ));
        }
        // What one authenticator has once, whichever issuer: read from a
        // document without `issuer` only, so refused in one with it rather
        // than dropped.
        if self.issuer.is_some() {
            for (field, set) in [
                ("spec.realm", self.realm.is_some()),
                ("spec.maxTokenSize", self.max_token_size.is_some()),
                ("spec.verifiedTokenCache", self.verified_token_cache.is_some()),
            ] {
                if set {
                    return Err((
                        field.into(),
                        "applies to every issuer: put it in a document without `issuer`".into(),
                    ));
                }
            }
        }
        let secs = |d: &Option<DurationSpec>| d.map(|d| d.get());
        if secs(&self.leeway).is_some_and(|l| l > std::time::Duration::from_secs(600)) {
            return Err((
                "spec.leeway".into(),
                "at most 10m: a longer leeway keeps expired tokens valid".into(),
            ));
        }
        if secs(&self.jwks_cache_ttl).is_some_and(|t| {
            t < std::time::Duration::from_secs(60) || t > std::time::Duration::from_secs(86_400)
        }) {
            return Err(("spec.jwksCacheTtl".into(), "must be between 1m and 24h".into()));
        }
        for (field, d) in [
            ("spec.fetchTimeout", &self.fetch_timeout),
            ("spec.maxTokenLifetime", &self.max_token_lifetime),
            // 0 would let every token with an unknown key id fetch the keys.
            ("spec.minRefreshInterval", &self.min_refresh_interval),
        ] {
            if secs(d).is_some_and(|d| d.is_zero()) {
                return Err((field.into(), "must be longer than 0s".into()));
            }
        }
        check_claim_names(self.principal_claim.as_deref(), self.roles_claim.as_deref())?;
        for (i, id) in self.client_ids.iter().flatten().enumerate() {
            if id.trim().is_empty() {
                return Err((format!("spec.clientIds[{i}]"), "must not be empty".into()));
            }
        }
        if self.client_ids.is_some() && self.issuer.is_none() {
            return Err((
                "spec.clientIds".into(),
                "needs `issuer`: every trusted issuer would accept tokens without an audience for these clients".into(),
            ));
        }
        if self.client_ids.as_ref().is_some_and(Vec::is_empty) {
            return Err((
                "spec.clientIds".into(),
                "must not be empty (leave the field out instead)".into(),
            ));
        }
        for (i, t) in self.tenants.iter().flatten().enumerate() {
            if !crate::syntax::is_tenant(t) {
                return Err((
                    format!("spec.tenants[{i}]"),
                    format!("`{t}` is not a tenant (letters, digits, `.`, `-`, `_`)"),
                ));
            }
        }
        if let Some(d) = &self.dpop {
            if self.issuer.is_some() {
                return Err((
                    "spec.dpop".into(),
                    "applies to every issuer: put it in a document without `issuer`".into(),
                ));
            }
            for (i, a) in d.algorithms.iter().flatten().enumerate() {
                if !ASYMMETRIC_ALGORITHMS.contains(&a.as_str()) {
                    return Err((
                        format!("spec.dpop.algorithms[{i}]"),
                        format!(
                            "`{a}` is not a DPoP algorithm, expected one of {}",
                            ASYMMETRIC_ALGORITHMS.join(", ")
                        ),
                    ));
                }
            }
            if d.algorithms.as_ref().is_some_and(Vec::is_empty) {
                return Err((
                    "spec.dpop.algorithms".into(),
                    "must not be empty (leave the field out instead)".into(),
                ));
            }
            if d.max_age
                .is_some_and(|m| m.get().is_zero() || m.get().as_secs() > 300)
            {
                return Err(("spec.dpop.maxAge".into(), "must be between 1s and 5m".into()));
            }
            if d.nonce_secret_file.is_some() && d.require_nonce != Some(true) {
                return Err((
                    "spec.dpop.nonceSecretFile".into(),
                    "keys the nonces `requireNonce: true` asks for: set that too, or leave this out".into(),
                ));
            }
            if let Some(o) = &d.origin {
                let rest = o.strip_prefix("https://").or_else(|| o.strip_prefix("http://"));
                let authority = rest.map(|h| h.strip_suffix('/').unwrap_or(h));
                if !authority.is_some_and(|h| {
                    !h.is_empty()
                        && h.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
                        })
                }) {
                    return Err((
                        "spec.dpop.origin".into(),
                        format!(
                            "`{}` is not scheme://host[:port]",
                            crate::syntax::url_without_credentials(o)
                        ),
                    ));
                }
            }
            if let Some(store) = &d.replay_store
                && !is_store_url(store)
            {
                return Err((
                    "spec.dpop.replayStore".into(),
                    "`memory` or a `redis://HOST:PORT/DB` URL".into(),
                ));
            }
        }
        if let Some(r) = &self.resource_metadata {
            if self.issuer.is_some() {
                return Err((
                    "spec.resourceMetadata".into(),
                    "describes the whole service: put it in a document without `issuer`".into(),
                ));
            }
            if let Some(why) = crate::syntax::resource_identifier_problem(&r.resource) {
                return Err((
                    "spec.resourceMetadata.resource".into(),
                    format!("`{}` {why}", crate::syntax::url_without_credentials(&r.resource)),
                ));
            }
        }
        if let Some(i) = &self.introspection {
            if self.issuer.is_none() {
                return Err((
                    "spec.introspection".into(),
                    "name the issuer it is for in `spec.issuer`".into(),
                ));
            }
            if i.client_id.is_empty() {
                return Err(("spec.introspection.clientId".into(), "must not be empty".into()));
            }
            if i.client_secret.is_some() == i.client_secret_file.is_some() {
                return Err((
                    "spec.introspection".into(),
                    "give exactly one of clientSecretFile and clientSecret".into(),
                ));
            }
            if matches!(i.client_auth_method, Some(ClientAuthMethod::PrivateKeyJwt)) {
                return Err((
                    "spec.introspection.clientAuthMethod".into(),
                    "introspection supports client_secret_basic and client_secret_post".into(),
                ));
            }
            if let Some(e) = &i.endpoint
                && !is_http_url(e)
            {
                return Err((
                    "spec.introspection.endpoint".into(),
                    format!("`{}` is not an http(s) URL", url_without_credentials(e)),
                ));
            }
        }
        for (i, a) in self.algorithms.iter().flatten().enumerate() {
            let field = format!("spec.algorithms[{i}]");
            if matches!(a.as_str(), "HS256" | "HS384" | "HS512") {
                return Err((
                    field,
                    "HMAC algorithms are configured in code, with their secret".into(),
                ));
            }
            if !ASYMMETRIC_ALGORITHMS.contains(&a.as_str()) {
                return Err((
                    field,
                    format!(
                        "unknown algorithm `{a}`, expected one of {}",
                        ASYMMETRIC_ALGORITHMS.join(", ")
                    ),
                ));
            }
        }
        if self.algorithms.as_ref().is_some_and(Vec::is_empty) {
            return Err((
                "spec.algorithms".into(),
                "must not be empty (leave the field out instead)".into(),
            ));
        }
        Ok(())
    }
}

/// `AuthorizationSettings.spec`: what Istio sets in its mesh configuration
/// rather than in policies.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthorizationSettingsSpec {
    /// Istio's `numTrustedProxies`: how many `X-Forwarded-For` hops (from the
    /// right) are trusted proxies, for `remote.ip` and `remoteIpBlocks`.
    /// Default 0: `remote.ip` is the connection's address.
    #[serde(default)]
    pub num_trusted_proxies: Option<usize>,
    /// What `%2F`, `%5C` and `\` in a path do: `REJECT` (400, the
    /// default) or `KEEP` (a relaxation, warned of when the file loads).
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// Debug switch: add an `x-palisade-authz` header saying which policy and
    /// rule decided. Off by default; never on in production.
    #[serde(default)]
    pub explain_header: Option<bool>,
    /// Origins (`https://app.shop.example`) whose requests may use this
    /// service's cookies whatever their method (a relaxation, warned of
    /// when the file loads): by default a request other than `GET`, `HEAD`
    /// and `OPTIONS` that another origin started is served as though it
    /// carried no cookie (`GuardBuilder::trusted_origin`).
    #[serde(default)]
    pub trusted_origins: Vec<String>,
    /// Istio's `meshConfig.trustDomain`: the trust domain of this mesh's
    /// workloads (`prod.example`), which a policy's
    /// `cluster.local/ns/NS/sa/SA` principals name, as in Istio. Unset:
    /// `cluster.local`.
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// Istio's `meshConfig.trustDomainAliases`: former or other names of
    /// the mesh's trust domain; a principal naming the mesh's domain, an
    /// alias or `cluster.local` names the workload in each of them.
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
}

/// Whether `domain` is a SPIFFE trust domain name: lower-case letters,
/// digits, `.`, `-` and `_`.
fn is_trust_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

impl AuthorizationSettingsSpec {
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        let domains = self
            .trust_domain
            .iter()
            .map(|d| ("spec.trustDomain".to_owned(), d))
            .chain(
                self.trust_domain_aliases
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (format!("spec.trustDomainAliases[{i}]"), d)),
            );
        for (field, domain) in domains {
            if !is_trust_domain(domain) {
                return Err((
                    field,
                    format!("`{domain}` is not a trust domain (lower-case letters, digits, `.`, `-`, `_`)"),
                ));
            }
        }
        match self
            .trusted_origins
            .iter()
            .position(|o| !crate::syntax::is_origin(o))
        {
            Some(i) => Err((
                format!("spec.trustedOrigins[{i}]"),
                crate::GuardError::NotAnOrigin(crate::syntax::url_without_credentials(
                    &self.trusted_origins[i],
                ))
                .to_string(),
            )),
            None => Ok(()),
        }
    }

    /// The relaxation it asks for, said aloud when the file loads.
    pub(super) fn warnings(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        for (i, origin) in self.trusted_origins.iter().enumerate() {
            out.push((
                format!("spec.trustedOrigins[{i}]"),
                crate::guard::trusted_origin_warning(origin),
            ));
        }
        if self.escaped_slashes == EscapedSlashes::Keep {
            out.push((
                "spec.escapedSlashes".into(),
                "KEEP: paths with `%2F`, `%5C` or `\\` are served, and a route's wildcard capture (axum's `{*path}`, actix-web's `{tail:.*}`) decodes them into segments path rules did not see (a DENY on `/files/private/*` does not refuse `/files/private%2Fkey`)".into(),
            ));
        }
        out
    }
}

/// The Negotiate session cookie's default name
/// (`SpnegoSettings.spec.sessionCookie.name`).
pub const NEGOTIATE_COOKIE: &str = "palisade_negotiate";

/// Browser sign-in's session cookie's default name
/// (`OidcLogin.spec.session.cookieName`, and a `KeycloakAdapter`'s).
pub const SIGN_IN_COOKIE: &str = "palisade_session";

/// The paths of browser sign-in's own routes, which the service answers
/// whatever its access policy says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignInPaths<'a> {
    /// Where the issuer sends the browser back
    /// (`OidcLogin.spec.callbackPath`).
    pub callback: &'a str,
    /// Starts a sign-in (`OidcLogin.spec.loginPath`).
    pub login: &'a str,
    /// Ends the session (`OidcLogin.spec.logoutPath`).
    pub logout: &'a str,
    /// Receives back-channel logout tokens
    /// (`OidcLogin.spec.backchannelLogoutPath`).
    pub backchannel_logout: &'a str,
    /// Answers with the session's deadlines, when one is set
    /// (`OidcLogin.spec.sessionPath`).
    pub session: Option<&'a str>,
}

impl OidcSessionSpec {
    /// The idle timeout without `idleTimeout`: 30 minutes.
    pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);
    /// The absolute timeout without `absoluteTimeout`: 8 hours.
    pub const DEFAULT_ABSOLUTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8 * 3600);
}

impl SignInPaths<'static> {
    /// The defaults: `/oauth2/callback`, `/login`, `/logout` and
    /// `/oauth2/backchannel-logout`, and no session route (a
    /// `KeycloakAdapter` that signs in always uses them).
    pub const DEFAULT: Self = Self {
        callback: "/oauth2/callback",
        login: "/login",
        logout: "/logout",
        backchannel_logout: "/oauth2/backchannel-logout",
        session: None,
    };
}

impl OidcLoginSpec {
    /// The document's paths, each defaulting to [`SignInPaths::DEFAULT`]'s.
    #[must_use]
    pub fn paths(&self) -> SignInPaths<'_> {
        let d = SignInPaths::DEFAULT;
        SignInPaths {
            callback: self.callback_path.as_deref().unwrap_or(d.callback),
            login: self.login_path.as_deref().unwrap_or(d.login),
            logout: self.logout_path.as_deref().unwrap_or(d.logout),
            backchannel_logout: self
                .backchannel_logout_path
                .as_deref()
                .unwrap_or(d.backchannel_logout),
            session: self.session_path.as_deref(),
        }
    }

    /// The session cookie's name ([`SIGN_IN_COOKIE`] by default).
    #[must_use]
    pub fn cookie_name(&self) -> &str {
        self.session.cookie_name.as_deref().unwrap_or(SIGN_IN_COOKIE)
    }
}

/// `SpnegoSettings.spec`: Kerberos (HTTP Negotiate) settings for a service
/// started with a keytab.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SpnegoSettingsSpec {
    /// Accept only for this host-based service (`HTTP@www.example.test`);
    /// without it, tickets for any `HTTP/…` principal of the keytab.
    pub service: Option<String>,
    /// Accept clients of these realms only; with one, a one-part
    /// principal's local name drops it (with several or none, krb5's
    /// `aname_to_localname` rules give it).
    #[serde(default)]
    pub allowed_realms: Vec<String>,
    /// At most this many GSSAPI calls at once.
    pub concurrency: Option<NonZeroUsize>,
    /// How long a ticket waits for one of them before a `503` (default
    /// 10 s).
    pub queue_timeout: Option<DurationSpec>,
    /// The largest `Authorization: Negotiate` header (default 65536).
    pub max_header_size: Option<NonZeroUsize>,
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
    /// Keep a ticket-granting ticket the client forwards (delegation), for
    /// calls on its behalf; default `false`: it is dropped with the
    /// context, as mod_auth_gssapi does without `GssapiDelegCcacheDir`.
    #[serde(default)]
    pub accept_delegation: bool,
}

impl SpnegoSettingsSpec {
    /// The relaxation it can make, said aloud when the file loads.
    pub(super) fn warnings(&self) -> Vec<FieldError> {
        self.session_cookie
            .as_ref()
            .filter(|c| c.insecure_over_http)
            .map(|_| {
                (
                    "spec.sessionCookie.insecureOverHttp".to_owned(),
                    "session cookies are sent without `Secure`: over plain HTTP too (development only)"
                        .to_owned(),
                )
            })
            .into_iter()
            .collect()
    }

    pub(super) fn check(&self) -> Result<(), FieldError> {
        // A host-based service name, as GSSAPI takes it: a principal's form
        // (`HTTP/host`) would name a service of no host.
        if let Some(service) = &self.service
            && !service
                .split_once('@')
                .is_some_and(|(s, h)| !s.is_empty() && !h.is_empty() && !service.contains(['/', ' ']))
        {
            return Err((
                "spec.service".into(),
                format!(
                    "`{service}` is not a host-based service name, `SERVICE@HOST` (`HTTP@www.example.test`)"
                ),
            ));
        }
        if let Some(i) = self.allowed_realms.iter().position(|r| r.trim().is_empty()) {
            return Err((format!("spec.allowedRealms[{i}]"), "must not be empty".into()));
        }
        // A key that names no principal, or a realm not allowed, never
        // matches: a typo would grant nothing without a word.
        for (field, table) in [("roles", &self.roles), ("groups", &self.groups)] {
            for key in table.keys() {
                let at = format!("spec.{field}[{key}]");
                let Some((local, realm)) = key
                    .rsplit_once('@')
                    .filter(|(l, r)| !l.is_empty() && !r.is_empty())
                else {
                    return Err((
                        at,
                        "must be a principal, `name@REALM`, or `*@REALM` for a whole realm".into(),
                    ));
                };
                if local.contains('*') && local != "*" {
                    return Err((at, "`*` stands for a whole realm only (`*@REALM`)".into()));
                }
                if !self.allowed_realms.is_empty() && !self.allowed_realms.iter().any(|r| r == realm) {
                    return Err((
                        at,
                        format!(
                            "realm `{realm}` is not among allowedRealms: it would never match (realms are compared exactly, case too)"
                        ),
                    ));
                }
            }
        }
        if let Some(c) = &self.session_cookie {
            if c.keys.is_empty() {
                return Err(("spec.sessionCookie.keys".into(), "give at least one key".into()));
            }
            if let Some(name) = &c.name
                && !is_cookie_name(name)
            {
                return Err(("spec.sessionCookie.name".into(), COOKIE_NAME_RULE.into()));
            }
            if c.max_age.is_some_and(|m| m.get().is_zero()) {
                return Err((
                    "spec.sessionCookie.maxAge".into(),
                    "must be longer than 0s".into(),
                ));
            }
            let repeat = super::first_repeat(c.keys.iter().map(|k| k.id));
            for (i, k) in c.keys.iter().enumerate() {
                if repeat.is_some_and(|(r, _)| r == i) {
                    return Err((
                        format!("spec.sessionCookie.keys[{i}].id"),
                        format!("key id {} is given twice", k.id),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `SpnegoSettings.spec.sessionCookie`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SessionCookieSpec {
    /// The cookie name (default `palisade_negotiate`: not sign-in's `palisade_session`).
    pub name: Option<String>,
    /// The keys, newest first: new cookies use the first, all are read.
    pub keys: Vec<SessionKeySpec>,
    /// The longest a cookie lives (default `1h`; never past the ticket).
    pub max_age: Option<DurationSpec>,
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

/// `OidcLogin.spec`: browser sign-in as an OpenID Connect relying party
/// (authorization code flow with PKCE) for the selected workload.
///
/// ```yaml
/// apiVersion: palisade.dev/v1alpha1
/// kind: OidcLogin
/// metadata: {name: productpage-login, namespace: default}
/// spec:
///   selector: {matchLabels: {app: productpage}}
///   issuer: https://kc.example/realms/istio
///   clientId: productpage
///   session:
///     keys: [{id: k1, keyFile: /etc/palisade/session.key}]
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct OidcLoginSpec {
    /// The workloads that sign users in (absent: every workload of the namespace).
    pub selector: Option<SelectorSpec>,
    /// The issuer; its endpoints come from its discovery document.
    pub issuer: String,
    /// The client id registered at the issuer.
    pub client_id: String,
    /// A file holding the client secret (read without its trailing
    /// newline); absent means a public client (PKCE alone).
    pub client_secret_file: Option<String>,
    /// How the client authenticates: `client_secret_basic` (the default
    /// with a secret), `client_secret_post`, or `private_key_jwt` (the
    /// default with a `clientKey`).
    pub client_auth_method: Option<ClientAuthMethod>,
    /// The private key of `private_key_jwt`: the client signs a short
    /// assertion at each call to the token endpoint instead of sending a
    /// secret.
    pub client_key: Option<OidcClientKeySpec>,
    /// Scopes asked for (default `openid profile email`; `openid` is always sent).
    pub scopes: Option<Vec<String>>,
    /// Where the issuer sends the browser back (default `/oauth2/callback`).
    pub callback_path: Option<String>,
    /// Starts a sign-in, `?return_to=/path` (default `/login`).
    pub login_path: Option<String>,
    /// Ends the session here and at the issuer (default `/logout`).
    pub logout_path: Option<String>,
    /// Receives OpenID Connect back-channel logout tokens (default
    /// `/oauth2/backchannel-logout`).
    pub backchannel_logout_path: Option<String>,
    /// Answers a `GET` with the session's deadlines as JSON, without
    /// renewing its idle timeout, for a page that warns its user (none by
    /// default; `/oauth2/session`, say).
    pub session_path: Option<String>,
    /// Where the issuer sends the browser after logout: a path of this
    /// service or an absolute http(s) URL (default `/`; see
    /// [`is_landing_uri`]).
    pub post_logout_redirect_uri: Option<String>,
    /// Whether a logout revokes the session's refresh token at the
    /// issuer's `revocation_endpoint` (RFC 7009; default `false`): its
    /// grant ends even when the user leaves the issuer's logout
    /// unfinished. Off by default: Keycloak before the fix of its issue
    /// 35486 (26.1, and backports) also ends the client's sessions of the
    /// user's other sessions and the user's consent.
    pub revoke_on_logout: Option<bool>,
    /// A PEM file of extra trust anchors for the issuer's TLS certificate.
    pub ca_file: Option<String>,
    /// The origin browsers reach this service at (`https://shop.example`),
    /// when a proxy in front of it ends TLS or rewrites `Host` (see
    /// [`is_origin`](crate::syntax::is_origin)); absent: each request's
    /// `Host` and connection.
    pub external_origin: Option<String>,
    /// The claim read as the signed-in user's name (default
    /// `preferred_username`), as `JwtSettings`' `principalClaim`.
    pub principal_claim: Option<String>,
    /// A top-level claim whose values are the user's realm roles too
    /// (`groups`, Entra ID's `roles`), as `JwtSettings`' `rolesClaim`.
    pub roles_claim: Option<String>,
    /// Extra parameters of the authorization request the browser is sent
    /// to: Auth0's `audience` (a JWT access token for that API), Google's
    /// `access_type: offline` (a refresh token), Entra ID's `domain_hint`,
    /// `prompt`. Not those the sign-in sets itself
    /// ([`authorization_param_refusal`](crate::syntax::authorization_param_refusal)).
    pub authorization_params: Option<std::collections::BTreeMap<String, String>>,
    /// The session's settings.
    #[serde(default)]
    pub session: OidcSessionSpec,
}

/// How a confidential client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientAuthMethod {
    /// HTTP Basic with the client id and secret (the default).
    #[default]
    ClientSecretBasic,
    /// The id and secret as form fields.
    ClientSecretPost,
    /// A JWT signed by the client's private key (`clientKey`).
    PrivateKeyJwt,
}

/// `OidcLogin.spec.clientKey`: the client's private key for
/// `private_key_jwt`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct OidcClientKeySpec {
    /// A PEM file of the private key (PKCS#8, or PKCS#1 for RSA).
    pub key_file: String,
    /// The signing algorithm: `RS256` (the default), `RS384`, `RS512`,
    /// `PS256`, `ES256`, `ES384` or `EdDSA`.
    pub algorithm: Option<String>,
    /// The key id the issuer knows the key by (the assertion's `kid`).
    pub key_id: Option<String>,
}

/// `OidcLogin.spec.session`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct OidcSessionSpec {
    /// The cookie name (default `palisade_session`; large sessions add
    /// `NAME_1`, `NAME_2`, …).
    pub cookie_name: Option<String>,
    /// A session unused this long ends (default `30m`,
    /// [`DEFAULT_IDLE_TIMEOUT`](Self::DEFAULT_IDLE_TIMEOUT)).
    pub idle_timeout: Option<DurationSpec>,
    /// A session ends this long after sign-in whatever happens (default
    /// `8h`, [`DEFAULT_ABSOLUTE_TIMEOUT`](Self::DEFAULT_ABSOLUTE_TIMEOUT)).
    pub absolute_timeout: Option<DurationSpec>,
    /// The AES-256-GCM keys, newest first: new cookies use the first, all
    /// are read. Shared by every replica. Absent: a random key made at
    /// start (sessions end with the process; one replica only).
    #[serde(default)]
    pub keys: Vec<OidcSessionKeySpec>,
    /// `memory` (the default, one process) or `redis://HOST:PORT/DB`,
    /// shared by every replica: ended sessions and used logout tokens.
    pub store: Option<String>,
}

/// One session key: an id carried in the cookie and a file of 32 bytes
/// (raw, hex or base64 text).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct OidcSessionKeySpec {
    /// Letters, digits, `-` and `_`, at most 32.
    pub id: String,
    /// The key file.
    pub key_file: String,
}

/// `UpstreamCredentials.spec`: the bearer token the selected (calling)
/// workload sends to `hosts`.
///
/// ```yaml
/// apiVersion: palisade.dev/v1alpha1
/// kind: UpstreamCredentials
/// metadata: {name: productpage-to-reviews, namespace: default}
/// spec:
///   selector: {matchLabels: {app: productpage}}
///   hosts: [reviews.default.svc.cluster.local]
///   token:
///     from: tokenExchange
///     issuer: https://kc.example/realms/istio
///     clientId: productpage
///     clientSecretFile: /etc/palisade/productpage.secret
///     audience: reviews
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamCredentialsSpec {
    /// The calling workloads (absent: every workload of the namespace).
    pub selector: Option<SelectorSpec>,
    /// The hosts called (as the request's authority names them, without
    /// the port); `*` for every host no other document names.
    pub hosts: Vec<String>,
    /// The token sent.
    pub token: UpstreamTokenSpec,
}

/// `UpstreamCredentials.spec.token`. `Debug` never prints `clientSecret`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamTokenSpec {
    /// Where the token comes from.
    pub from: TokenFrom,
    /// The issuer whose token endpoint (by discovery) grants the token:
    /// `clientCredentials` and `tokenExchange` only.
    pub issuer: Option<String>,
    /// The workload's client at the issuer.
    pub client_id: Option<String>,
    /// A file holding the client's secret (read without its trailing
    /// newline).
    pub client_secret_file: Option<String>,
    /// The client's secret, inline (prefer `clientSecretFile`: an inline
    /// secret loads with a warning).
    pub client_secret: Option<String>,
    /// How the secret is sent: `client_secret_basic` (the default) or
    /// `client_secret_post`.
    pub client_auth_method: Option<ClientAuthMethod>,
    /// The audience asked for: RFC 8693's `audience`, and the
    /// client-credentials `audience` (Keycloak) and `resource` (RFC 8707).
    pub audience: Option<String>,
    /// The scopes asked for.
    pub scopes: Option<Vec<String>>,
    /// Ask for DPoP-bound tokens (RFC 9449), proved on every call with a
    /// key made at start-up (`clientCredentials` and `tokenExchange`).
    pub dpop: Option<bool>,
    /// `tokenExchange` only: the issuers (`iss`) whose callers' tokens are
    /// sent to `issuer` for exchange, besides `issuer` itself (default:
    /// none besides it). A caller's token from another issuer the service
    /// trusts is not handed to this one: its operator could use it here.
    pub subject_issuers: Option<Vec<String>>,
}

impl std::fmt::Debug for UpstreamTokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTokenSpec")
            .field("from", &self.from)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret_file", &self.client_secret_file)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_auth_method", &self.client_auth_method)
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("dpop", &self.dpop)
            .field("subject_issuers", &self.subject_issuers)
            .finish()
    }
}

/// Where an upstream call's token comes from.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum TokenFrom {
    /// The caller's own access token, relayed (its bearer header or its
    /// sign-in session).
    Caller,
    /// The workload's own token (a client-credentials grant).
    ClientCredentials,
    /// An RFC 8693 token exchange of the caller's token.
    TokenExchange,
    /// No token.
    #[default]
    None,
}

impl UpstreamCredentialsSpec {
    /// Whether the token is granted by an issuer (client credentials, a
    /// token exchange).
    fn asks_an_issuer(&self) -> bool {
        matches!(
            self.token.from,
            TokenFrom::ClientCredentials | TokenFrom::TokenExchange
        )
    }

    /// The grant's fields given to a token source that asks no issuer, and
    /// a secret written inline.
    pub(super) fn warnings(&self) -> Vec<FieldError> {
        let t = &self.token;
        let subject_issuers =
            (t.subject_issuers.is_some() && t.from != TokenFrom::TokenExchange).then(|| {
                (
                    "spec.token.subjectIssuers".to_owned(),
                    "unused: only tokenExchange sends callers' tokens to an issuer".to_owned(),
                )
            });
        if self.asks_an_issuer() {
            return t
                .client_secret
                .is_some()
                .then(|| ("spec.token.clientSecret".to_owned(), INLINE_SECRET.to_owned()))
                .into_iter()
                .chain(subject_issuers)
                .collect();
        }
        [
            ("spec.token.issuer", t.issuer.is_some()),
            ("spec.token.clientId", t.client_id.is_some()),
            ("spec.token.clientSecretFile", t.client_secret_file.is_some()),
            ("spec.token.clientSecret", t.client_secret.is_some()),
            ("spec.token.clientAuthMethod", t.client_auth_method.is_some()),
            ("spec.token.audience", t.audience.is_some()),
            ("spec.token.scopes", t.scopes.is_some()),
            ("spec.token.dpop", t.dpop.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(field, _)| {
            (
                field.to_owned(),
                "unused: only clientCredentials and tokenExchange ask an issuer for a token".to_owned(),
            )
        })
        .chain(subject_issuers)
        .collect()
    }

    pub(super) fn check(&self) -> Result<(), FieldError> {
        if self.hosts.is_empty() {
            return Err(("spec.hosts".into(), "name at least one host (or `*`)".into()));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            // A name, or an IPv6 literal in brackets; no port.
            let ipv6 = h
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(|r| {
                    !r.is_empty() && r.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                });
            let plain = h == "*"
                || ipv6
                || (!h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
            if !plain {
                return Err((
                    format!("spec.hosts[{i}]"),
                    format!("`{h}` is not a host name (no port, no scheme)"),
                ));
            }
        }
        let t = &self.token;
        // `caller` and `none` ask no issuer: what only a grant reads is
        // said to be unused (`warnings`), as the contract's example is
        // written with every field.
        if !self.asks_an_issuer() {
            return Ok(());
        }
        match &t.issuer {
            Some(i) if is_http_url(i) => {}
            Some(_) => return Err(("spec.token.issuer".into(), "must be an http(s) URL".into())),
            None => {
                return Err((
                    "spec.token.issuer".into(),
                    "the issuer that grants the token is required".into(),
                ));
            }
        }
        if t.client_id.as_deref().is_none_or(|c| c.trim().is_empty()) {
            return Err((
                "spec.token.clientId".into(),
                "the workload's client id is required".into(),
            ));
        }
        for (i, issuer) in t.subject_issuers.iter().flatten().enumerate() {
            if !is_http_url(issuer) {
                return Err((
                    format!("spec.token.subjectIssuers[{i}]"),
                    "must be an http(s) URL".into(),
                ));
            }
        }
        if t.client_auth_method == Some(ClientAuthMethod::PrivateKeyJwt) {
            return Err((
                "spec.token.clientAuthMethod".into(),
                "a workload's own token is asked for with client_secret_basic or client_secret_post".into(),
            ));
        }
        match (&t.client_secret_file, &t.client_secret) {
            (Some(_), Some(_)) => Err((
                "spec.token.clientSecret".into(),
                "give clientSecretFile or clientSecret, not both".into(),
            )),
            (None, None) => Err((
                "spec.token.clientSecretFile".into(),
                "a public client cannot be granted tokens for itself: give its secret".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// `spec.principalClaim` and `spec.rolesClaim`, of a `JwtSettings` or an
/// `OidcLogin` document ([`crate::syntax::roles_claim_refusal`]).
fn check_claim_names(principal: Option<&str>, roles: Option<&str>) -> Result<(), FieldError> {
    if let Some(refusal) = principal.and_then(crate::syntax::principal_claim_refusal) {
        return Err(("spec.principalClaim".into(), refusal.into()));
    }
    match roles.and_then(crate::syntax::roles_claim_refusal) {
        Some(refusal) => Err(("spec.rolesClaim".into(), refusal)),
        None => Ok(()),
    }
}

impl OidcLoginSpec {
    pub(super) fn check(&self) -> Result<(), FieldError> {
        if !is_http_url(&self.issuer) {
            return Err(("spec.issuer".into(), "must be an http(s) URL".into()));
        }
        check_claim_names(self.principal_claim.as_deref(), self.roles_claim.as_deref())?;
        let params = self.authorization_params.iter().flatten();
        if let Some((name, refusal)) =
            crate::syntax::authorization_params_refusal(params.map(|(n, v)| (n.as_str(), v.as_str())))
        {
            return Err((format!("spec.authorizationParams.{name}"), refusal));
        }
        if self.client_id.trim().is_empty() {
            return Err(("spec.clientId".into(), "must not be empty".into()));
        }
        // Each path as it will be used, its default where it is not set: a
        // path set to another's default is two endpoints too. The error
        // names the field that was set.
        let used = self.paths();
        let paths = [
            (
                "spec.callbackPath",
                Some(used.callback),
                self.callback_path.is_some(),
            ),
            ("spec.loginPath", Some(used.login), self.login_path.is_some()),
            ("spec.logoutPath", Some(used.logout), self.logout_path.is_some()),
            (
                "spec.backchannelLogoutPath",
                Some(used.backchannel_logout),
                self.backchannel_logout_path.is_some(),
            ),
            ("spec.sessionPath", used.session, true),
        ];
        for (i, &(field, path, set)) in paths.iter().enumerate() {
            let Some(p) = path else { continue };
            if set && !is_service_path(p) {
                return Err((field.into(), format!("`{p}` is not a path of this service")));
            }
            if let Some(&(other, _, other_set)) = paths[..i].iter().find(|(_, o, _)| *o == path) {
                let (field, other) = if set || !other_set {
                    (field, other)
                } else {
                    (other, field)
                };
                return Err((
                    field.into(),
                    format!("`{p}` is used for two endpoints (it is {other} too)"),
                ));
            }
        }
        if let Some(origin) = &self.external_origin
            && !crate::syntax::is_origin(origin)
        {
            return Err((
                "spec.externalOrigin".into(),
                format!(
                    "`{}` is not an http(s) origin (scheme, host and port only)",
                    crate::syntax::url_without_credentials(origin)
                ),
            ));
        }
        if let Some(uri) = &self.post_logout_redirect_uri
            && !is_landing_uri(uri)
        {
            return Err((
                "spec.postLogoutRedirectUri".into(),
                format!(
                    "`{}` is neither a path of this service nor an absolute http(s) URL",
                    crate::syntax::url_without_credentials(uri)
                ),
            ));
        }
        match (
            &self.client_secret_file,
            &self.client_key,
            self.client_auth_method,
        ) {
            (Some(_), Some(_), _) => {
                return Err((
                    "spec.clientKey".into(),
                    "a client authenticates with clientSecretFile or clientKey, not both".into(),
                ));
            }
            (None, None, Some(_)) => {
                return Err((
                    "spec.clientAuthMethod".into(),
                    "a public client has no secret or key to send: give clientSecretFile or clientKey".into(),
                ));
            }
            (Some(_), None, Some(ClientAuthMethod::PrivateKeyJwt)) => {
                return Err((
                    "spec.clientAuthMethod".into(),
                    "private_key_jwt needs clientKey, not clientSecretFile".into(),
                ));
            }
            (None, Some(_), Some(m)) if m != ClientAuthMethod::PrivateKeyJwt => {
                return Err((
                    "spec.clientAuthMethod".into(),
                    "a clientKey authenticates with private_key_jwt".into(),
                ));
            }
            _ => {}
        }
        if let Some(a) = self.client_key.as_ref().and_then(|k| k.algorithm.as_deref())
            && !CLIENT_KEY_ALGORITHMS.contains(&a)
        {
            return Err((
                "spec.clientKey.algorithm".into(),
                format!(
                    "`{a}` is not a client key's algorithm, expected one of {}",
                    CLIENT_KEY_ALGORITHMS.join(", ")
                ),
            ));
        }
        if let Some(scopes) = &self.scopes
            && let Some(i) = scopes.iter().position(|s| s.is_empty() || s.contains(' '))
        {
            return Err((
                format!("spec.scopes[{i}]"),
                "a scope is one non-empty word".into(),
            ));
        }
        let s = &self.session;
        let keys_repeat = super::first_repeat(s.keys.iter().map(|k| &k.id));
        for (i, k) in s.keys.iter().enumerate() {
            if k.id.is_empty()
                || k.id.len() > 32
                || !k
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err((
                    format!("spec.session.keys[{i}].id"),
                    "letters, digits, `-` and `_`, at most 32".into(),
                ));
            }
            if keys_repeat.is_some_and(|(r, _)| r == i) {
                return Err((
                    format!("spec.session.keys[{i}].id"),
                    format!("key id {} is given twice", k.id),
                ));
            }
        }
        if let Some(store) = &s.store
            && !is_store_url(store)
        {
            return Err((
                "spec.session.store".into(),
                "`memory` or a `redis://HOST:PORT/DB` URL".into(),
            ));
        }
        // Each as written or its default: a session cannot outlive its
        // absolute timeout, and one of zero would end every session at once.
        let idle = s
            .idle_timeout
            .map_or(OidcSessionSpec::DEFAULT_IDLE_TIMEOUT, Into::into);
        let absolute = s
            .absolute_timeout
            .map_or(OidcSessionSpec::DEFAULT_ABSOLUTE_TIMEOUT, Into::into);
        for (field, d) in [
            ("spec.session.idleTimeout", idle),
            ("spec.session.absoluteTimeout", absolute),
        ] {
            if d.is_zero() {
                return Err((field.into(), "zero: every session would end at once".into()));
            }
        }
        if idle > absolute {
            let (field, message) = match (s.idle_timeout, s.absolute_timeout) {
                (Some(_), Some(_)) => (
                    "spec.session.idleTimeout",
                    "longer than absoluteTimeout".to_owned(),
                ),
                (Some(_), None) => (
                    "spec.session.idleTimeout",
                    format!(
                        "longer than the default absoluteTimeout ({}h)",
                        absolute.as_secs() / 3600
                    ),
                ),
                _ => (
                    "spec.session.absoluteTimeout",
                    format!("shorter than the default idleTimeout ({}m)", idle.as_secs() / 60),
                ),
            };
            return Err((field.into(), message));
        }
        if let Some(name) = &s.cookie_name
            && !is_cookie_name(name)
        {
            return Err(("spec.session.cookieName".into(), COOKIE_NAME_RULE.into()));
        }
        Ok(())
    }
}

/// `memory`, or the URL of a Redis store.
fn is_store_url(store: &str) -> bool {
    store == "memory" || store.starts_with("redis://") || store.starts_with("rediss://")
}
