//! Provider configuration: one trusted issuer and how its tokens are checked.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use palisade_core::TokenClaims;
use palisade_core::syntax::{
    TENANT, is_http_url, is_http_url_pattern, plain_http_elsewhere, url_without_credentials,
};

use crate::introspect::Introspection;
use crate::key_quality::min_hmac_secret_len;

/// Every asymmetric algorithm supported, the default allowlist of tokens
/// and of DPoP proofs.
pub(crate) const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The HMAC algorithms, shortest hash first.
pub(crate) const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// Which tenants an issuer pattern (`https://login.example.com/{tenant}/v2.0`)
/// accepts: set with [`ProviderBuilder::tenants`] or
/// [`ProviderBuilder::tenant_resolver`].
#[derive(Clone)]
#[non_exhaustive]
pub enum Tenants {
    /// These tenants only.
    List(Vec<String>),
    /// Those for which the function answers true. Asked when a token
    /// naming a tenant is to be verified, before its signature can be
    /// checked, and the answer kept for a minute (a refused name among the
    /// last 1,024 refused): a tenant it stops allowing is refused, its
    /// tokens already verified included, and its keys dropped, within a
    /// minute; one it starts allowing is accepted within a minute. Names
    /// it never answered about are asked about at most fifty a second per
    /// pattern (a hundred at once): beyond that, their tokens are refused
    /// without asking, so tokens naming a new name each cannot call it
    /// once per request.
    Resolver(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl Tenants {
    pub(crate) fn allows(&self, tenant: &str) -> bool {
        match self {
            Tenants::List(list) => list.iter().any(|t| t == tenant),
            Tenants::Resolver(f) => f(tenant),
        }
    }

    /// Whether `tenant` may be allowed, without asking a resolver (which
    /// may take its time, or answer otherwise later): a list says; a
    /// resolver may.
    pub(crate) fn may_allow(&self, tenant: &str) -> bool {
        match self {
            Tenants::List(_) => self.allows(tenant),
            Tenants::Resolver(_) => true,
        }
    }
}

impl PartialEq for Tenants {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Tenants::List(a), Tenants::List(b)) => a == b,
            (Tenants::Resolver(a), Tenants::Resolver(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl fmt::Debug for Tenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tenants::List(list) => f.debug_tuple("List").field(list).finish(),
            Tenants::Resolver(_) => f.write_str("Resolver(<fn>)"),
        }
    }
}

/// A check of a verified token's claims, the application's own
/// ([`ProviderBuilder::check_claims`]): `Err` with a fixed description
/// refuses the token.
pub(crate) type ClaimsCheck = dyn Fn(&TokenClaims) -> Result<(), &'static str> + Send + Sync;

/// The application's checks of a provider, compared by identity (a reload
/// that keeps them keeps its verified tokens).
#[derive(Clone, Default)]
pub(crate) struct ClaimsChecks(pub(crate) Vec<Arc<ClaimsCheck>>);

impl PartialEq for ClaimsChecks {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl ClaimsChecks {
    /// The first refusal, if any.
    pub(crate) fn run(&self, claims: &TokenClaims) -> Result<(), &'static str> {
        self.0.iter().try_for_each(|check| check(claims))
    }
}

/// Configuration that cannot work, found when it is built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The issuer is empty, or not an `http(s)` URL while its keys are to be
    /// discovered from it (with `jwksUri`, `jwks` or a public key, any
    /// string will do, as Istio's `testing@secure.istio.io`).
    #[error("issuer `{0}` is not an http(s) URL, so its keys cannot be discovered: give jwksUri or jwks")]
    InvalidIssuer(String),
    /// A JWKS or discovery URL is not an `http(s)` URL (shown without
    /// credentials, see [`url_without_credentials`]).
    #[error("JWKS URL `{0}` is not an http(s) URL")]
    InvalidJwksUri(String),
    /// No audience configured and any-audience not explicitly allowed.
    #[error(
        "issuer `{0}`: configure at least one audience (or client ids, for tokens without one), or call dangerous().accept_any_audience()"
    )]
    NoAudience(String),
    /// An HMAC algorithm allowed without a secret, or a secret without an HMAC algorithm.
    #[error("issuer `{0}`: HMAC algorithms need a secret configured for that issuer, and only then")]
    Hmac(String),
    /// An HMAC secret that is empty or shorter than the output of the hash
    /// of an HMAC algorithm it is allowed for (RFC 7518 §3.2: 32 bytes for
    /// HS256, 48 for HS384, 64 for HS512). The secret itself is never shown.
    #[error(
        "issuer `{issuer}`: {algorithm:?} needs an HMAC secret of at least {min_len} bytes (RFC 7518 section 3.2)"
    )]
    WeakHmacSecret {
        /// The provider's issuer.
        issuer: String,
        /// The algorithm the secret is too short for.
        algorithm: Algorithm,
        /// The shortest secret it takes, in bytes.
        min_len: usize,
    },
    /// An unknown algorithm name.
    #[error("unknown algorithm `{0}`")]
    UnknownAlgorithm(String),
    /// The allowlist is empty.
    #[error("issuer `{0}`: the algorithm allowlist is empty")]
    NoAlgorithm(String),
    /// An inline JWKS or public key that cannot be used.
    #[error("issuer `{0}`: the inline key set is not usable: {1}")]
    InvalidInlineKeys(String, String),
    /// A header name that is not a valid lower-case HTTP token.
    #[error("`{0}` is not a valid header name")]
    InvalidHeaderName(String),
    /// Two providers for the same issuer.
    #[error("issuer `{0}` is configured twice")]
    DuplicateIssuer(String),
    /// No provider at all.
    #[error("no JWT provider is configured")]
    NoProvider,
    /// Extra trust anchors ([`FetchSettings::extra_ca_pem`]) without a
    /// usable certificate: the issuer, and why.
    #[error("issuer `{0}`: the CA certificates are not usable: {1}")]
    InvalidCa(String, String),
    /// A setting out of its range.
    #[error("{0}")]
    OutOfRange(String),
    /// A claim name (the roles' or the user name's) or a client id that
    /// cannot be one ([`palisade_core::syntax::roles_claim_refusal`], an
    /// empty name or id): the issuer, the setting and why.
    #[error("issuer `{0}`: {1} {2}")]
    InvalidClaimName(String, &'static str, String),
}

/// Where a provider's keys come from.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwksSource {
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`
    /// (a Keycloak realm URL works as is).
    Discovery,
    /// A JWKS URL.
    Uri(String),
    /// A fixed JWKS document (Istio's inline `jwks`).
    Inline(String),
    /// A fixed PEM public key (Keycloak's `realm-public-key`).
    PublicKeyPem(String),
}

impl fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Discovery => f.write_str("Discovery"),
            JwksSource::Uri(u) => f.debug_tuple("Uri").field(&url_without_credentials(u)).finish(),
            JwksSource::Inline(_) => f.write_str("Inline(<jwks>)"),
            JwksSource::PublicKeyPem(_) => f.write_str("PublicKeyPem(<key>)"),
        }
    }
}

impl JwksSource {
    /// Where the keys of one tenant of an issuer pattern come from, when
    /// tenants have keys of their own: its discovery document, or the
    /// JWKS URL with `{tenant}` replaced. `None` when every tenant shares
    /// these keys (a fixed JWKS URL, inline keys).
    pub(crate) fn for_tenant(&self, tenant: &str) -> Option<JwksSource> {
        match self {
            JwksSource::Discovery => Some(JwksSource::Discovery),
            JwksSource::Uri(u) if u.contains(TENANT) => Some(JwksSource::Uri(u.replace(TENANT, tenant))),
            _ => None,
        }
    }
}

/// Where a request may carry a token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenSource {
    /// A header (lower case); the prefix, if any, is stripped and must be
    /// present. `Authorization` with prefix `Bearer ` matches the scheme
    /// case-insensitively.
    Header {
        /// Lower-case header name.
        name: String,
        /// Prefix before the token.
        prefix: Option<String>,
    },
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

impl TokenSource {
    /// Whether two sources read the same tokens: a header named alike
    /// without regard to case, with the same prefix without regard to case
    /// (as it is matched); a cookie or a query parameter of the same name.
    pub(crate) fn reads_as(&self, other: &TokenSource) -> bool {
        match (self, other) {
            (TokenSource::Header { name: a, prefix: p }, TokenSource::Header { name: b, prefix: q }) => {
                a.eq_ignore_ascii_case(b)
                    && match (p, q) {
                        (Some(p), Some(q)) => p.eq_ignore_ascii_case(q),
                        (None, None) => true,
                        _ => false,
                    }
            }
            _ => self == other,
        }
    }

    /// The token in a value of this source's header, when the value has
    /// the prefix (compared without regard to case).
    pub(crate) fn header_token<'v>(prefix: Option<&str>, v: &'v [u8]) -> Option<&'v [u8]> {
        match prefix {
            None => Some(v),
            // The scheme as configured (`Bearer `) first: a compare of a
            // few words, not a loop over bytes.
            Some(p)
                if v.starts_with(p.as_bytes())
                    || v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes()) =>
            {
                Some(&v[p.len()..])
            }
            Some(_) => None,
        }
    }

    /// `Authorization: Bearer <token>`.
    #[must_use]
    pub fn authorization_bearer() -> Self {
        TokenSource::Header {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }
    }
}

/// JWKS fetching and caching, per provider. Defaults follow Keycloak's
/// adapter and Istio where they speak.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FetchSettings {
    /// Cache lifetime when the server sends no `Cache-Control: max-age` (10 min).
    pub default_ttl: Duration,
    /// Bounds applied to `max-age` (1 min to 24 h).
    pub min_ttl: Duration,
    /// Upper bound of `max-age`.
    pub max_ttl: Duration,
    /// At most one fetch per this interval for unknown key ids (10 s).
    pub min_refresh_interval: Duration,
    /// How long a request with an unknown `kid` waits for a fetch (2 s) at
    /// most: a fetch that ends without the key (failed, or the key not
    /// published) ends the wait at once.
    pub unknown_kid_wait: Duration,
    /// Keep the last good key set this long while fetching fails (24 h).
    pub max_stale: Duration,
    /// Connect and total timeout of each fetch (5 s).
    pub timeout: Duration,
    /// Largest body accepted (1 MiB).
    pub max_body: usize,
    /// Extra PEM trust anchors for the issuer's TLS certificate: at least
    /// one certificate, or [`ProviderBuilder::build`] refuses them
    /// ([`ConfigError::InvalidCa`]).
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(600),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(86_400),
            min_refresh_interval: Duration::from_secs(10),
            unknown_kid_wait: Duration::from_secs(2),
            max_stale: Duration::from_secs(86_400),
            timeout: Duration::from_secs(5),
            max_body: 1 << 20,
            extra_ca_pem: None,
        }
    }
}

/// A trusted issuer, validated. Build with [`Provider::builder`].
#[derive(Clone, PartialEq)]
pub struct Provider {
    pub(crate) issuer: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) any_audience: bool,
    /// Audiences compared as Envoy's `jwt_authn` compares them (an Istio
    /// rule's): scheme and final `/` aside.
    pub(crate) envoy_audiences: bool,
    pub(crate) jwks: JwksSource,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) hmac_secret: Option<Vec<u8>>,
    pub(crate) hmac_kid: Option<String>,
    pub(crate) leeway: Duration,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) required_type: Option<String>,
    pub(crate) any_token_kind: bool,
    pub(crate) sources: Vec<TokenSource>,
    pub(crate) forward_original_token: bool,
    pub(crate) output_payload_to_header: Option<String>,
    pub(crate) output_claims: Vec<(String, String)>,
    pub(crate) principal_claim: Option<String>,
    pub(crate) roles_claim: Option<String>,
    pub(crate) claims_checks: ClaimsChecks,
    pub(crate) client_ids: Vec<String>,
    pub(crate) require_subject: bool,
    pub(crate) fetch: FetchSettings,
    pub(crate) introspection: Option<Introspection>,
    pub(crate) tenants: Option<Tenants>,
    pub(crate) max_tenants: usize,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("any_audience", &self.any_audience)
            .field("envoy_audiences", &self.envoy_audiences)
            .field("jwks", &self.jwks)
            .field("algorithms", &self.algorithms)
            .field("hmac_secret", &self.hmac_secret.as_ref().map(|_| "<redacted>"))
            .field("hmac_kid", &self.hmac_kid)
            .field("sources", &self.sources)
            .field("introspection", &self.introspection)
            .field("tenants", &self.tenants)
            .field("roles_claim", &self.roles_claim)
            .field("client_ids", &self.client_ids)
            .field("claims_checks", &self.claims_checks.0.len())
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// Starts configuring the issuer whose `iss` is exactly `issuer`.
    pub fn builder(issuer: impl Into<String>) -> ProviderBuilder {
        ProviderBuilder {
            issuer: issuer.into(),
            audiences: Vec::new(),
            any_audience: false,
            envoy_audiences: false,
            jwks: JwksSource::Discovery,
            algorithms: None,
            hmac_secret: None,
            hmac_kid: None,
            leeway: Duration::from_secs(60),
            max_lifetime: None,
            required_type: None,
            any_token_kind: false,
            sources: Vec::new(),
            forward_original_token: false,
            output_payload_to_header: None,
            output_claims: Vec::new(),
            principal_claim: None,
            roles_claim: None,
            claims_checks: ClaimsChecks::default(),
            client_ids: Vec::new(),
            require_subject: true,
            fetch: FetchSettings::default(),
            introspection: None,
            tenants: None,
            max_tenants: 100,
        }
    }

    /// The issuer.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token sources, in order.
    #[must_use]
    pub fn sources(&self) -> &[TokenSource] {
        &self.sources
    }
}

/// Builds a [`Provider`].
///
/// ```
/// use palisade_jwt::Provider;
/// let p = Provider::builder("https://kc.example/realms/demo")
///     .audience("details")
///     .required_type("at+jwt")
///     .build()?;
/// assert_eq!(p.issuer(), "https://kc.example/realms/demo");
/// # Ok::<(), palisade_jwt::ConfigError>(())
/// ```
#[must_use]
#[derive(Clone)]
pub struct ProviderBuilder {
    issuer: String,
    audiences: Vec<String>,
    any_audience: bool,
    envoy_audiences: bool,
    jwks: JwksSource,
    algorithms: Option<Vec<Algorithm>>,
    hmac_secret: Option<Vec<u8>>,
    hmac_kid: Option<String>,
    leeway: Duration,
    max_lifetime: Option<Duration>,
    required_type: Option<String>,
    any_token_kind: bool,
    sources: Vec<TokenSource>,
    forward_original_token: bool,
    output_payload_to_header: Option<String>,
    output_claims: Vec<(String, String)>,
    principal_claim: Option<String>,
    roles_claim: Option<String>,
    claims_checks: ClaimsChecks,
    client_ids: Vec<String>,
    require_subject: bool,
    fetch: FetchSettings,
    introspection: Option<Introspection>,
    tenants: Option<Tenants>,
    max_tenants: usize,
}

impl fmt::Debug for ProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderBuilder")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Relaxations that weaken verification; reached through
/// [`ProviderBuilder::dangerous`] so they stand out in review.
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct DangerousProviderBuilder(ProviderBuilder);

impl DangerousProviderBuilder {
    /// Accepts tokens whatever their `aud` (Keycloak's default
    /// `verify-token-audience: false`). Any service of the realm can then
    /// replay its tokens here.
    pub fn accept_any_audience(mut self) -> ProviderBuilder {
        tracing::warn!(target: "palisade::jwt", issuer = %url_without_credentials(&self.0.issuer), "token audience is NOT verified (accept_any_audience)");
        self.0.any_audience = true;
        self.0
    }

    /// Accepts tokens that name no subject (neither `sub` nor, for a
    /// client's own token, `client_id`); their identity's subject is then
    /// empty. Only for tokens that identify something else, such as OpenID
    /// Connect Back-Channel Logout tokens, which may carry only `sid`:
    /// check what such a token must name yourself.
    pub fn subject_optional(mut self) -> ProviderBuilder {
        tracing::info!(target: "palisade::jwt", issuer = %url_without_credentials(&self.0.issuer), "tokens without a subject are accepted (subject_optional)");
        self.0.require_subject = false;
        self.0
    }

    /// Accepts JWTs that say they are another kind of token than an
    /// access token: a header `typ` of `logout+jwt`, `secevent+jwt` or
    /// `dpop+jwt`, a payload `typ` of Keycloak's ID, refresh and logout
    /// tokens (`ID`, `Refresh`, `Offline`, `Logout`, `Serialized-ID`),
    /// which it signs with the same key as its access tokens, a
    /// `token_use` of Cognito's or Ory's ID and refresh tokens (`id`,
    /// `id_token`, `refresh`, `refresh_token`), or a back-channel logout
    /// event. (An introspection answer's kind is checked whatever this
    /// says: the server's `token_type` or `token_use` says it.) Refused by
    /// default (RFC 8725 §3.11: an ID token is no access token). Only for
    /// verifiers of those tokens, which check their own claims.
    pub fn any_token_kind(mut self) -> ProviderBuilder {
        tracing::info!(target: "palisade::jwt", issuer = %url_without_credentials(&self.0.issuer), "tokens of any kind are accepted, ID and logout tokens too (any_token_kind)");
        self.0.any_token_kind = true;
        self.0
    }

    /// Verifies HMAC-signed tokens with this shared secret, and allows
    /// the HMAC algorithms it is long enough for (RFC 7518 §3.2): HS256
    /// from 32 bytes, HS384 from 48, HS512 from 64. An HMAC algorithm
    /// named in [`algorithms`](ProviderBuilder::algorithms) needs as much.
    ///
    /// The secret has no `kid`: it verifies a token whatever `kid` its
    /// header names, or none (there is no other key a `kid` could
    /// select). To refuse tokens that name another key, give it one with
    /// [`hmac_secret_with_kid`](Self::hmac_secret_with_kid).
    ///
    /// [`ProviderBuilder::build`] refuses an empty secret, or one shorter
    /// than 32 bytes, with [`ConfigError::WeakHmacSecret`]. Using a secret
    /// is logged at warn level (the issuer, never the secret).
    pub fn hmac_secret(mut self, secret: impl Into<Vec<u8>>) -> ProviderBuilder {
        tracing::warn!(target: "palisade::jwt", issuer = %url_without_credentials(&self.0.issuer), "tokens are verified with a shared HMAC secret (hmac_secret)");
        let secret = secret.into();
        let fits: Vec<Algorithm> = HMAC
            .into_iter()
            .filter(|&a| min_hmac_secret_len(a).is_some_and(|min| secret.len() >= min))
            .collect();
        let algorithms = self.0.algorithms.get_or_insert_with(Vec::new);
        if fits.is_empty() {
            // Too short for any: HS256 stays asked for, so that building
            // says what the secret lacks.
            algorithms.push(Algorithm::HS256);
        }
        algorithms.extend(fits);
        self.0.hmac_secret = Some(secret);
        self.0.hmac_kid = None;
        self.0
    }

    /// As [`hmac_secret`](Self::hmac_secret), the secret known by `kid`:
    /// a token whose header names another `kid` is refused as signed by
    /// an unknown key ([`JwtError::UnknownKey`](crate::JwtError::UnknownKey));
    /// one that names none is verified with it.
    pub fn hmac_secret_with_kid(self, kid: impl Into<String>, secret: impl Into<Vec<u8>>) -> ProviderBuilder {
        let mut builder = self.hmac_secret(secret);
        builder.hmac_kid = Some(kid.into());
        builder
    }
}

impl ProviderBuilder {
    /// Compares audiences as Envoy's `jwt_authn` compares an Istio rule's:
    /// an `http://` or `https://` scheme and a final `/` aside, so a
    /// token's `https://api.example.com/` is `https://api.example.com`.
    /// For `RequestAuthentication` rules only; every other audience (a
    /// sign-in's client id, a Keycloak adapter's `resource`) is exact.
    pub(crate) fn envoy_audience_match(mut self) -> Self {
        self.envoy_audiences = true;
        self
    }

    /// Accepts tokens whose `aud` holds this value (call again for more).
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }

    /// Fetches keys from this JWKS URL instead of discovering it.
    pub fn jwks_uri(mut self, uri: impl Into<String>) -> Self {
        self.jwks = JwksSource::Uri(uri.into());
        self
    }

    /// Uses this fixed JWKS document; nothing is fetched.
    pub fn jwks_inline(mut self, jwks_json: impl Into<String>) -> Self {
        self.jwks = JwksSource::Inline(jwks_json.into());
        self
    }

    /// Uses this fixed PEM public key (an RSA `SubjectPublicKeyInfo`, as
    /// Keycloak's `realm-public-key`); nothing is fetched.
    pub fn public_key_pem(mut self, pem: impl Into<String>) -> Self {
        self.jwks = JwksSource::PublicKeyPem(pem.into());
        self
    }

    /// Restricts the accepted algorithms. The default: RS256, RS384, RS512,
    /// PS256, PS384, PS512, ES256 (P-256), ES384 (P-384) and EdDSA
    /// (Ed25519). ES512 (P-521) and other curves are not supported. HS256/384/512 only with a secret
    /// ([`DangerousProviderBuilder::hmac_secret`]).
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = Some(algs.into_iter().collect());
        self
    }

    /// Clock leeway for `exp`, `nbf` and `iat` (default 60 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Refuses tokens whose `exp - iat` exceeds this (they must then carry `iat`).
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
        self
    }

    /// Requires this `typ` header, compared case-insensitively with an
    /// optional `application/` prefix (RFC 9068: `at+jwt`).
    pub fn required_type(mut self, typ: impl Into<String>) -> Self {
        self.required_type = Some(typ.into());
        self
    }

    /// Adds a place to read the token from. Without any, only
    /// `Authorization: Bearer` is read.
    pub fn source(mut self, source: TokenSource) -> Self {
        self.sources.push(source);
        self
    }

    /// Leaves the token in the request for the handler (default: removed
    /// from its header, as Istio does).
    pub fn forward_original_token(mut self, yes: bool) -> Self {
        self.forward_original_token = yes;
        self
    }

    /// Puts the verified payload (base64url JSON) into this header.
    pub fn output_payload_to_header(mut self, header: impl Into<String>) -> Self {
        self.output_payload_to_header = Some(header.into());
        self
    }

    /// Copies a claim (nested with `.`) into a header.
    pub fn output_claim_to_header(mut self, claim: impl Into<String>, header: impl Into<String>) -> Self {
        self.output_claims.push((header.into(), claim.into()));
        self
    }

    /// The claim used as user name (default `preferred_username`), as
    /// Keycloak's `principal-attribute`.
    pub fn principal_claim(mut self, claim: impl Into<String>) -> Self {
        self.principal_claim = Some(claim.into());
        self
    }

    /// A claim whose values are roles too, for an issuer that carries
    /// them elsewhere than Keycloak's `realm_access.roles` (Spring
    /// Security's `authorities-claim-name`): `groups` (Okta, Keycloak's
    /// group mapper), `roles` (Microsoft Entra ID), `cognito:groups`, an
    /// Auth0 namespaced claim. A top-level claim, named exactly (dots and
    /// colons are part of the name); an array of strings, one string (one
    /// role), or an object whose keys are roles where their values are
    /// objects or `true` (ZITADEL). Keycloak's own (`realm_access`,
    /// `resource_access`) fail [`build`](Self::build). Its roles are added to the realm roles every check
    /// reads (`Identity::has_realm_role`, a `realm_role` requirement, and
    /// policies' `request.auth.claims[realm_access][roles]`):
    /// [`TokenClaims::add_realm_roles_from`].
    ///
    /// ```
    /// use palisade_core::Verification;
    /// use palisade_jwt::{JwtAuthenticator, Provider};
    /// let jwt = JwtAuthenticator::builder()
    ///     .provider(
    ///         Provider::builder("https://login.example/tenant/v2.0")
    ///             .audience("api://orders")
    ///             .roles_claim("roles")
    ///             .build()?,
    ///     )
    ///     .build()?;
    /// let claims = serde_json::json!({
    ///     "iss": "https://login.example/tenant/v2.0", "sub": "u1", "aud": "api://orders",
    ///     "roles": ["Orders.Admin"],
    /// });
    /// let id = jwt.identity_for_verified_claims(claims.as_object().unwrap().clone(), Verification::assertion())?;
    /// assert!(id.has_realm_role("Orders.Admin"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn roles_claim(mut self, claim: impl Into<String>) -> Self {
        self.roles_claim = Some(claim.into());
        self
    }

    /// Clients whose access tokens are accepted without an audience: a
    /// token with no `aud` whose `client_id` (RFC 9068 §2.2) is one of
    /// these, as Amazon Cognito issues them (its access tokens carry the
    /// app client's id in `client_id` and name no audience; its ID tokens,
    /// which carry it in `aud`, are refused by their `token_use`). A token
    /// with an `aud` is held to the [`audience`](Self::audience)s as
    /// ever; with client ids and no audience, every token must name no
    /// audience. Spring Security checks no audience unless told to; here
    /// the client is named, as AWS's own verifier requires. A later call
    /// replaces the list.
    ///
    /// Such a token names no API: a token the same client got for another
    /// of your services is accepted here too. Require this service's scopes
    /// (`scope("orders/read")`, Cognito's resource-server scopes), as AWS
    /// advises.
    ///
    /// ```
    /// use palisade_core::Verification;
    /// use palisade_jwt::{JwtAuthenticator, JwtError, Provider};
    /// let pool = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Ab12";
    /// let jwt = JwtAuthenticator::builder()
    ///     .provider(Provider::builder(pool).client_ids(["6v9i4k0"]).roles_claim("cognito:groups").build()?)
    ///     .build()?;
    /// let claims = |client: &str| {
    ///     let c = serde_json::json!({"iss": pool, "sub": "u1", "client_id": client, "token_use": "access",
    ///                                "cognito:groups": ["admin"]});
    ///     jwt.identity_for_verified_claims(c.as_object().unwrap().clone(), Verification::assertion())
    /// };
    /// assert!(claims("6v9i4k0")?.has_realm_role("admin"));
    /// assert_eq!(claims("another").unwrap_err(), JwtError::InvalidAudience);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn client_ids<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> Self {
        self.client_ids = ids.into_iter().map(Into::into).collect();
        self
    }

    /// A check of the application's own on every token of this issuer, as
    /// Spring Security's `OAuth2TokenValidator`: after the signature, the
    /// time claims, the audience and the subject, on the claims as mapped
    /// (the tenant filled in, the roles of [`roles_claim`](Self::roles_claim)
    /// added). An `Err` refuses the token as the standard checks do (401
    /// `invalid_token`, the description in its challenge, counted with the
    /// reason `claims_check`); the description is a fixed text, so that a
    /// claim's value cannot end up in a response. Checks added more than
    /// once run in turn, the first refusal answering.
    ///
    /// A token is checked when it is verified: a verified token is answered
    /// from a cache until it expires (an opaque token's introspection
    /// answer for its `cacheTime`), so the check must depend on the claims
    /// alone (the clock is the standard checks'). It runs on the request's
    /// thread, or for an introspected token on the thread that fetches keys
    /// and asks every issuer: keep it quick, and never block. Browser
    /// sign-in's sessions are not checked by it.
    ///
    /// ```
    /// use palisade_core::Verification;
    /// use palisade_jwt::{JwtAuthenticator, JwtError, Provider};
    /// let jwt = JwtAuthenticator::builder()
    ///     .provider(
    ///         Provider::builder("https://kc.example/realms/shop")
    ///             .audience("details")
    ///             .check_claims(|t| match t.claims.get("email_verified") {
    ///                 Some(serde_json::Value::Bool(true)) => Ok(()),
    ///                 _ => Err("the e-mail address is not verified"),
    ///             })
    ///             .build()?,
    ///     )
    ///     .build()?;
    /// let claims = serde_json::json!({"iss": "https://kc.example/realms/shop", "sub": "u1", "aud": "details"});
    /// let refused = jwt.identity_for_verified_claims(claims.as_object().unwrap().clone(), Verification::assertion());
    /// assert_eq!(refused.unwrap_err(), JwtError::ClaimsRefused("the e-mail address is not verified"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_claims(
        mut self,
        check: impl Fn(&TokenClaims) -> Result<(), &'static str> + Send + Sync + 'static,
    ) -> Self {
        self.claims_checks.0.push(Arc::new(check));
        self
    }

    /// JWKS fetching and caching settings.
    pub fn fetch_settings(mut self, fetch: FetchSettings) -> Self {
        self.fetch = fetch;
        self
    }

    /// Checks this issuer's opaque tokens (and, if it says so, its JWTs)
    /// at its token introspection endpoint (RFC 7662).
    pub fn introspection(mut self, introspection: Introspection) -> Self {
        self.introspection = Some(introspection);
        self
    }

    /// For an issuer pattern (an issuer with `{tenant}` in it, as Entra
    /// ID's `https://login.microsoftonline.com/{tenant}/v2.0`): accepts
    /// tokens of these tenants. Each tenant's keys are discovered from its
    /// own issuer (or from `jwks_uri` with `{tenant}` replaced; a `jwks_uri`
    /// without it is shared by every tenant) on its first token, then
    /// refreshed and rate limited as a fixed issuer's. The identity's
    /// issuer is the tenant's (so request principals are
    /// `https://login.microsoftonline.com/<tenant>/v2.0/<sub>`), and
    /// [`TokenClaims::tenant`](palisade_core::TokenClaims::tenant) names it.
    /// Tenants' own keys start to be fetched at most twenty at once and
    /// ten a second on average: a token of a new tenant met beyond that is
    /// refused ([`JwtError::KeysUnavailable`](crate::JwtError::KeysUnavailable))
    /// until the rate allows (a tenant whose tokens have verified lately,
    /// or whose keys the process holds already, is not held to it).
    pub fn tenants<S: Into<String>>(mut self, tenants: impl IntoIterator<Item = S>) -> Self {
        self.tenants = Some(Tenants::List(tenants.into_iter().map(Into::into).collect()));
        self
    }

    /// As [`tenants`](Self::tenants), the tenants decided by `resolver`
    /// (a directory lookup, say), asked about a name at most once a minute,
    /// and about names it never answered about at most fifty a second per
    /// pattern, a hundred at once ([`Tenants::Resolver`]): keep it cheap, it runs on the request path,
    /// for names taken from tokens not yet verified. Tenants' keys start to
    /// be fetched at the rate [`tenants`](Self::tenants) says.
    pub fn tenant_resolver(mut self, resolver: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.tenants = Some(Tenants::Resolver(Arc::new(resolver)));
        self
    }

    /// At most this many tenants' key stores kept at once (default 100);
    /// when another is needed, a tenant no token has verified for yet goes
    /// first (so tokens with forged signatures, naming many tenants, push
    /// out at most one in use; while they keep coming, a new tenant's first
    /// tokens may find it pushed out before they verify, and fetch its keys
    /// again), else the one whose tokens were least recently verified. A
    /// request with a token already verified and cached
    /// does not count as a use, but a cached token is verified again once
    /// a minute (when its tenant's allowance is renewed), which does.
    pub fn max_tenants(mut self, max: usize) -> Self {
        self.max_tenants = max;
        self
    }

    /// Relaxations that weaken verification.
    pub fn dangerous(self) -> DangerousProviderBuilder {
        DangerousProviderBuilder(self)
    }

    /// Validates the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] saying which setting cannot work.
    pub fn build(self) -> Result<Provider, ConfigError> {
        let discovered = matches!(self.jwks, JwksSource::Discovery);
        if self.issuer.trim().is_empty() || (discovered && !is_http_url_pattern(&self.issuer)) {
            return Err(ConfigError::InvalidIssuer(url_without_credentials(&self.issuer)));
        }
        if let JwksSource::Uri(u) = &self.jwks
            && !is_http_url_pattern(u)
        {
            return Err(ConfigError::InvalidJwksUri(url_without_credentials(u)));
        }
        if self.audiences.is_empty() && !self.any_audience && self.client_ids.is_empty() {
            return Err(ConfigError::NoAudience(self.issuer));
        }
        let shown = url_without_credentials(&self.issuer);
        let names = [
            (
                "a client id",
                self.client_ids
                    .iter()
                    .any(|id| id.trim().is_empty())
                    .then(|| "must not be empty".to_owned()),
            ),
            (
                "the roles claim",
                self.roles_claim
                    .as_deref()
                    .and_then(palisade_core::syntax::roles_claim_refusal),
            ),
            (
                "the principal claim",
                self.principal_claim
                    .as_deref()
                    .and_then(palisade_core::syntax::principal_claim_refusal)
                    .map(str::to_owned),
            ),
        ];
        if let Some((what, refusal)) = names
            .into_iter()
            .find_map(|(what, refusal)| Some((what, refusal?)))
        {
            return Err(ConfigError::InvalidClaimName(shown, what, refusal));
        }
        let algorithms = self.algorithms.unwrap_or_else(|| ASYMMETRIC.to_vec());
        if algorithms.is_empty() {
            return Err(ConfigError::NoAlgorithm(self.issuer));
        }
        let has_hmac = algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        if has_hmac != self.hmac_secret.is_some() {
            return Err(ConfigError::Hmac(self.issuer));
        }
        if let Some(secret) = &self.hmac_secret {
            let short = algorithms
                .iter()
                .filter_map(|&a| Some((a, min_hmac_secret_len(a)?)))
                .find(|&(_, min)| secret.len() < min);
            if let Some((algorithm, min_len)) = short {
                return Err(ConfigError::WeakHmacSecret {
                    issuer: self.issuer,
                    algorithm,
                    min_len,
                });
            }
        }
        if let Some(kid) = &self.hmac_kid
            && (kid.is_empty() || kid.len() > crate::token::MAX_KID_LEN)
        {
            return Err(ConfigError::OutOfRange(format!(
                "issuer `{}`: an HMAC secret's kid is 1 to {} bytes",
                self.issuer,
                crate::token::MAX_KID_LEN
            )));
        }
        let sources = if self.sources.is_empty() {
            vec![TokenSource::authorization_bearer()]
        } else {
            self.sources
        };
        for s in &sources {
            if let TokenSource::Header { name, .. } = s {
                check_header_name(name)?;
            }
        }
        // Output headers: not the one the guard sets from the connection's
        // client certificate, which a token's claim must not replace.
        for h in self
            .output_payload_to_header
            .iter()
            .chain(self.output_claims.iter().map(|(h, _)| h))
        {
            check_header_name(h)?;
            if h == "x-forwarded-client-cert" {
                return Err(ConfigError::OutOfRange(
                    "`x-forwarded-client-cert` is set from the connection's client certificate: a token cannot be output to it"
                        .into(),
                ));
            }
        }
        let f = &self.fetch;
        if f.min_ttl > f.max_ttl || f.timeout.is_zero() || f.max_body == 0 {
            return Err(ConfigError::OutOfRange(
                "fetch settings: need min_ttl <= max_ttl, a non-zero timeout and max_body".into(),
            ));
        }
        crate::jwks::check_ca_bundle(f).map_err(|e| ConfigError::InvalidCa(shown.clone(), e))?;
        // Entra's documents write its tenant `{tenantid}`: a fixed issuer
        // so spelt would never match a token.
        if !self.issuer.contains(palisade_core::syntax::TENANT)
            && let Some(open) = shown.find('{')
        {
            let placeholder = shown[open..].split('}').next().unwrap_or_default();
            return Err(ConfigError::OutOfRange(format!(
                "issuer `{shown}`: `{placeholder}}}` is no placeholder here: an issuer pattern writes the tenant `{{tenant}}`"
            )));
        }
        // Where a tenant's keys are fetched from, its name cannot choose
        // the server.
        let fetched_from = [
            discovered.then_some(self.issuer.as_str()),
            match &self.jwks {
                JwksSource::Uri(u) => Some(u.as_str()),
                _ => None,
            },
        ];
        if let Some((url, why)) = fetched_from
            .into_iter()
            .flatten()
            .find_map(|u| palisade_core::syntax::tenant_misplaced(u).map(|why| (u, why)))
        {
            return Err(ConfigError::OutOfRange(format!(
                "`{}`: {why}",
                url_without_credentials(url)
            )));
        }
        // A pattern exactly when there are tenants, and no broken pattern.
        let pattern = self.tenants.is_some();
        if palisade_core::syntax::issuer_pattern(&self.issuer) != Ok(pattern) {
            return Err(ConfigError::OutOfRange(format!(
                "issuer `{}`: an issuer pattern has exactly one `{{tenant}}` and needs tenants (or a tenant resolver), and only it",
                self.issuer
            )));
        }
        if pattern && (self.introspection.is_some() || self.max_tenants == 0) {
            return Err(ConfigError::OutOfRange(format!(
                "issuer `{}`: an issuer pattern needs max_tenants above 0 and cannot introspect",
                self.issuer
            )));
        }
        if let Some(Tenants::List(list)) = &self.tenants
            && let Some(bad) = list.iter().find(|t| !palisade_core::syntax::is_tenant(t))
        {
            return Err(ConfigError::OutOfRange(format!(
                "issuer `{}`: `{bad}` is not a tenant (letters, digits, `.`, `-`, `_`)",
                self.issuer
            )));
        }
        if let Some(i) = &self.introspection {
            if i.endpoint.is_none() && !is_http_url(&self.issuer) {
                return Err(ConfigError::InvalidIssuer(url_without_credentials(&self.issuer)));
            }
            i.check(&self.issuer)?;
        }
        if plain_http_elsewhere(&self.issuer) {
            tracing::warn!(target: "palisade::jwt", issuer = %url_without_credentials(&self.issuer), "issuer uses plain http: keys can be tampered with in transit");
        }
        if let JwksSource::Uri(uri) = &self.jwks
            && plain_http_elsewhere(uri)
        {
            tracing::warn!(target: "palisade::jwt", issuer = %url_without_credentials(&self.issuer), jwks_uri = %url_without_credentials(uri), "JWKS URI uses plain http: keys can be tampered with in transit");
        }
        Ok(Provider {
            issuer: self.issuer,
            audiences: self.audiences,
            any_audience: self.any_audience,
            envoy_audiences: self.envoy_audiences,
            jwks: self.jwks,
            algorithms,
            hmac_secret: self.hmac_secret,
            hmac_kid: self.hmac_kid,
            leeway: self.leeway,
            max_lifetime: self.max_lifetime,
            required_type: self.required_type,
            any_token_kind: self.any_token_kind,
            sources,
            forward_original_token: self.forward_original_token,
            output_payload_to_header: self.output_payload_to_header,
            output_claims: self.output_claims,
            principal_claim: self.principal_claim,
            roles_claim: self.roles_claim,
            claims_checks: self.claims_checks,
            client_ids: self.client_ids,
            require_subject: self.require_subject,
            fetch: self.fetch,
            introspection: self.introspection,
            tenants: self.tenants,
            max_tenants: self.max_tenants,
        })
    }
}

fn check_header_name(name: &str) -> Result<(), ConfigError> {
    // Lower case: sources and outputs are matched and set by that name.
    let ok = palisade_core::syntax::is_http_token(name) && !name.bytes().any(|b| b.is_ascii_uppercase());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidHeaderName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Extra CA certificates the issuer's HTTP client could not use (none
    /// in the text, a PEM block that is not base64 or not a certificate)
    /// are a configuration error, not a key store that never fetches.
    #[test]
    fn ca_certificates_without_a_usable_one_are_refused() {
        let build = |pem: &[u8]| {
            let f = FetchSettings {
                extra_ca_pem: Some(pem.to_vec()),
                ..FetchSettings::default()
            };
            Provider::builder("https://i")
                .audience("a")
                .fetch_settings(f)
                .build()
        };
        let block = |body: &str| format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n");
        for pem in [
            String::new(),
            "not a certificate\n".into(),
            block("!!!!"),
            block("AAAAAAAA"),
        ] {
            let err = build(pem.as_bytes()).unwrap_err();
            assert!(matches!(err, ConfigError::InvalidCa(..)), "{pem:?}: {err}");
            assert!(
                err.to_string()
                    .starts_with("issuer `https://i`: the CA certificates"),
                "{err}"
            );
        }
        let ca = palisade_testkit::TestPki::new().ca_pem();
        assert!(build(ca.as_bytes()).is_ok());
        assert!(build(format!("{ca}{}", palisade_testkit::TestPki::new().ca_pem()).as_bytes()).is_ok());
    }

    #[test]
    fn audience_is_required_unless_dangerously_waived() {
        assert!(matches!(
            Provider::builder("https://i").build(),
            Err(ConfigError::NoAudience(_))
        ));
        assert!(
            Provider::builder("https://i")
                .dangerous()
                .accept_any_audience()
                .build()
                .is_ok()
        );
    }

    /// A tenant's name cannot choose the server its keys are fetched from
    /// (`{tenant}` as the host, or inside it after a fixed label), and a
    /// placeholder of another spelling (Entra's `{tenantid}`) is refused
    /// rather than compared as text.
    #[test]
    fn a_tenants_place_is_where_it_cannot_choose_the_server() {
        let build = |issuer: &str, jwks: Option<&str>| {
            let b = Provider::builder(issuer)
                .audience("api")
                .tenant_resolver(|_| true);
            match jwks {
                Some(u) => b.jwks_uri(u),
                None => b,
            }
            .build()
        };
        for (issuer, jwks) in [
            ("https://{tenant}/", None),
            ("https://login.{tenant}/v2.0", None),
            ("https://{tenant}.com/", None),
            ("https://idp.example/{tenant}", Some("https://{tenant}/keys")),
        ] {
            let err = build(issuer, jwks).unwrap_err().to_string();
            assert!(err.contains("may begin the host"), "{issuer} {jwks:?}: {err}");
        }
        for (issuer, jwks) in [
            ("https://login.example/{tenant}/v2.0", None),
            ("https://{tenant}.us.auth0.example/", None),
            // Compared, never fetched: any place.
            ("https://{tenant}/", Some("https://idp.example/keys")),
        ] {
            build(issuer, jwks).unwrap_or_else(|e| panic!("{issuer}: {e}"));
        }
        let err = Provider::builder("https://login.microsoftonline.com/{tenantid}/v2.0")
            .audience("api")
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`{tenantid}` is no placeholder") && err.contains("`{tenant}`"),
            "{err}"
        );
    }

    #[test]
    fn an_issuer_pattern_has_one_tenant_and_tenants_exactly_when_a_pattern() {
        let build = |issuer: &str, tenants: Option<&[&str]>| {
            let b = Provider::builder(issuer).audience("a");
            match tenants {
                Some(t) => b.tenants(t.iter().copied()),
                None => b,
            }
            .build()
        };
        let one = "https://login.example/{tenant}/v2.0";
        assert!(build(one, Some(&["t1"])).is_ok());
        assert!(build("https://login.example/t1/v2.0", None).is_ok());
        for (issuer, tenants) in [
            ("https://{tenant}.idp.example/{tenant}/v2.0", Some(&["t1"][..])),
            (one, None),
            ("https://login.example/t1/v2.0", Some(&["t1"][..])),
        ] {
            let err = build(issuer, tenants).unwrap_err();
            assert!(
                matches!(&err, ConfigError::OutOfRange(m) if m.contains("exactly one `{tenant}`")),
                "{issuer} {tenants:?}: {err}"
            );
        }
    }

    /// A roles claim naming Keycloak's own, whose keys would become roles
    /// (every client's id), or an empty name, is refused as a policy file
    /// refuses it.
    #[test]
    fn a_roles_claim_naming_keycloaks_own_is_refused() {
        let build = |roles: &str, principal: &str| {
            Provider::builder("https://i")
                .audience("a")
                .roles_claim(roles)
                .principal_claim(principal)
                .build()
        };
        for (roles, principal) in [
            ("realm_access", "email"),
            ("resource_access", "email"),
            ("", "email"),
            ("groups", ""),
        ] {
            assert!(
                matches!(build(roles, principal), Err(ConfigError::InvalidClaimName(..))),
                "{roles:?} {principal:?}"
            );
        }
        assert!(build("realm_access_roles", "email").is_ok());
    }

    #[test]
    fn hmac_needs_a_secret() {
        let err = Provider::builder("https://i")
            .audience("a")
            .algorithms([Algorithm::HS256])
            .build();
        assert!(matches!(err, Err(ConfigError::Hmac(_))));
        let ok = Provider::builder("https://i")
            .audience("a")
            .dangerous()
            .hmac_secret(b"0123456789abcdef0123456789abcdef".to_vec())
            .build()
            .unwrap();
        assert!(!format!("{ok:?}").contains("0123456789"));
    }

    fn with_secret(secret: &[u8]) -> ProviderBuilder {
        Provider::builder("https://i")
            .audience("a")
            .dangerous()
            .hmac_secret(secret.to_vec())
    }

    #[test]
    fn hmac_secrets_shorter_than_the_hash_are_refused_without_showing_them() {
        for (secret, algorithm, min_len) in [
            (&b""[..], Algorithm::HS256, 32),
            (&b"0123456789abcdef0123456789abcde"[..], Algorithm::HS256, 32),
        ] {
            let err = with_secret(secret).build().unwrap_err();
            assert_eq!(
                err,
                ConfigError::WeakHmacSecret {
                    issuer: "https://i".into(),
                    algorithm,
                    min_len
                }
            );
            let text = err.to_string();
            assert!(text.contains("HS256") && text.contains("32 bytes"), "{text}");
            if !secret.is_empty() {
                assert!(!text.contains("0123456789"), "{text}");
            }
        }
        // Named explicitly, each algorithm needs its own hash size.
        let err = with_secret(&[1; 47])
            .algorithms([Algorithm::HS384])
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::WeakHmacSecret {
                algorithm: Algorithm::HS384,
                min_len: 48,
                ..
            }
        ));
        let err = with_secret(&[1; 63])
            .algorithms([Algorithm::HS256, Algorithm::HS512])
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::WeakHmacSecret {
                algorithm: Algorithm::HS512,
                min_len: 64,
                ..
            }
        ));
        assert!(
            with_secret(&[1; 64])
                .algorithms([Algorithm::HS512])
                .build()
                .is_ok()
        );
    }

    #[test]
    fn a_secret_allows_the_hmac_algorithms_it_is_long_enough_for() {
        let algs = |len: usize| with_secret(&vec![1; len]).build().unwrap().algorithms;
        assert_eq!(algs(32), [Algorithm::HS256]);
        assert_eq!(algs(48), [Algorithm::HS256, Algorithm::HS384]);
        assert_eq!(algs(100), [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]);
    }

    #[test]
    fn a_secret_may_have_a_kid_of_sensible_length() {
        let p = Provider::builder("https://i")
            .audience("a")
            .dangerous()
            .hmac_secret_with_kid("hs-2024", vec![1; 32])
            .build()
            .unwrap();
        assert_eq!(p.hmac_kid.as_deref(), Some("hs-2024"));
        assert!(format!("{p:?}").contains("hs-2024"));
        for kid in [String::new(), "k".repeat(300)] {
            let err = Provider::builder("https://i")
                .audience("a")
                .dangerous()
                .hmac_secret_with_kid(kid, vec![1; 32])
                .build();
            assert!(matches!(err, Err(ConfigError::OutOfRange(_))));
        }
    }

    #[test]
    fn the_default_algorithms_are_exactly_the_supported_asymmetric_ones() {
        let p = Provider::builder("https://i").audience("a").build().unwrap();
        assert_eq!(
            p.algorithms,
            [
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::EdDSA,
            ]
        );
    }

    #[test]
    fn bad_urls_and_header_names_are_refused() {
        assert!(matches!(
            Provider::builder("ftp://x").audience("a").build(),
            Err(ConfigError::InvalidIssuer(_))
        ));
        assert!(matches!(
            Provider::builder("")
                .audience("a")
                .jwks_uri("https://x/jwks")
                .build(),
            Err(ConfigError::InvalidIssuer(_))
        ));
        // Istio's demo issuer: not a URL, fine with an explicit JWKS.
        assert!(
            Provider::builder("testing@secure.istio.io")
                .audience("a")
                .jwks_uri("https://x/jwks")
                .build()
                .is_ok()
        );
        assert!(matches!(
            Provider::builder("https://x")
                .audience("a")
                .jwks_uri("file:///etc/passwd")
                .build(),
            Err(ConfigError::InvalidJwksUri(_))
        ));
        let err = Provider::builder("https://x")
            .audience("a")
            .jwks_uri("ftp://keys:hunter2@x/jwks")
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("hunter2") && err.contains("ftp://***@x/jwks"),
            "{err}"
        );
        assert!(matches!(
            Provider::builder("https://x")
                .audience("a")
                .output_payload_to_header("Bad Header")
                .build(),
            Err(ConfigError::InvalidHeaderName(_))
        ));
    }

    #[test]
    fn default_source_is_the_authorization_header() {
        let p = Provider::builder("https://x").audience("a").build().unwrap();
        assert_eq!(p.sources(), [TokenSource::authorization_bearer()]);
    }
}
