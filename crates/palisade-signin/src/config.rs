//! The relying party's settings and their builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::policy::SignInPaths;

use crate::cookie::CookieKey;
use crate::store::SessionStore;

/// A client secret: never printed.
#[derive(Clone, PartialEq)]
pub(crate) struct Secret(Arc<str>);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ClientAuth {
    /// A public client: PKCE alone.
    None,
    /// `client_secret_basic`.
    Basic(Secret),
    /// `client_secret_post`.
    Post(Secret),
    /// `private_key_jwt`.
    PrivateKeyJwt(Arc<ClientKey>),
}

/// The client's private key for `private_key_jwt` (OpenID Connect Core 9,
/// RFC 7523): the client proves itself at the token endpoint with a short
/// JWT it signs, instead of a shared secret. Register the public key (or a
/// JWKS URL serving it) with the issuer. `Debug` prints the algorithm and
/// key id only.
pub struct ClientKey {
    pub(crate) algorithm: jsonwebtoken::Algorithm,
    pub(crate) kid: Option<String>,
    pub(crate) key: jsonwebtoken::EncodingKey,
    /// SHA-256 of the PEM: two keys are told apart without the key.
    pub(crate) digest: [u8; 32],
}

/// The same algorithm, key id and key (its PEM's digest).
impl PartialEq for ClientKey {
    fn eq(&self, other: &Self) -> bool {
        (self.algorithm, &self.kid, self.digest) == (other.algorithm, &other.kid, other.digest)
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// A key from its PEM (PKCS#8, or PKCS#1 for RSA) that signs with
    /// `algorithm` (`RS256`, `RS384`, `RS512`, `PS256`, `ES256` with a
    /// P-256 key, `ES384` with a P-384 key, `EdDSA` with an Ed25519 key),
    /// and the key id the issuer knows it by, when it has several.
    ///
    /// # Errors
    /// [`SignInError::Config`] when the algorithm is not one of those, the
    /// PEM does not hold a private key of its kind, or a test signature
    /// fails (a key of another curve). The message never holds the key.
    pub fn from_pem(algorithm: &str, pem: &[u8], kid: Option<&str>) -> Result<Self, SignInError> {
        use jsonwebtoken::{Algorithm, EncodingKey};
        use palisade_core::syntax::CLIENT_KEY_ALGORITHMS;
        let alg = match algorithm.parse::<Algorithm>() {
            Ok(alg) if CLIENT_KEY_ALGORITHMS.contains(&algorithm) => alg,
            _ => {
                return Err(SignInError::Config(format!(
                    "the client key's algorithm `{algorithm}` is not one of {}",
                    CLIENT_KEY_ALGORITHMS.join(", ")
                )));
            }
        };
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            _ => EncodingKey::from_rsa_pem(pem),
        }
        .map_err(|_| {
            SignInError::Config(format!("the client key is not a PEM private key for {algorithm}"))
        })?;
        let digest = crate::cookie::sha256(pem);
        let key = Self {
            algorithm: alg,
            kid: kid.map(str::to_owned),
            key,
            digest,
        };
        key.assertion("test", "test", "test", 0)
            .map_err(|()| SignInError::Config(format!("the client key cannot sign with {algorithm}")))?;
        Ok(key)
    }

    /// A client assertion (RFC 7523 section 3): `iss` and `sub` the client,
    /// `aud` the issuer's identifier, a random `jti`, valid for 60 s.
    pub(crate) fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        jti: &str,
        now: u64,
    ) -> Result<String, ()> {
        let mut header = jsonwebtoken::Header::new(self.algorithm);
        header.kid.clone_from(&self.kid);
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": jti,
            "iat": now,
            "exp": now + 60,
        });
        // Signed by aws-lc-rs, not by jsonwebtoken's process-wide default
        // (`jsonwebtoken::encode`), which panics where an application has
        // turned on its `rust_crypto` feature beside `aws_lc_rs`.
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signer =
            (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.signer_factory)(&self.algorithm, &self.key)
                .map_err(|_| ())?;
        let header = serde_json::to_vec(&header).map_err(|_| ())?;
        let claims = serde_json::to_vec(&claims).map_err(|_| ())?;
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = signer.try_sign(message.as_bytes()).map_err(|_| ())?;
        Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// How a confidential client sends its secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretMethod {
    /// HTTP Basic (`client_secret_basic`), the default.
    #[default]
    Basic,
    /// Form fields (`client_secret_post`).
    Post,
}

/// Everything the flow reads, fixed at build. Equal when every setting is,
/// secrets and keys included (a hot reload keeps a relying party
/// configured alike).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Config {
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    pub(crate) client_auth: ClientAuth,
    pub(crate) scope: String,
    pub(crate) callback_path: String,
    pub(crate) login_path: String,
    pub(crate) logout_path: String,
    pub(crate) backchannel_path: String,
    pub(crate) session_path: Option<String>,
    pub(crate) post_logout_redirect: String,
    pub(crate) revoke_on_logout: bool,
    pub(crate) cookie_name: String,
    pub(crate) idle_timeout: Duration,
    pub(crate) absolute_timeout: Duration,
    pub(crate) refresh_before: Duration,
    pub(crate) timeout: Duration,
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// `scheme://host[:port]` browsers reach this service at, when a
    /// proxy in front of it ends TLS or rewrites `Host`.
    pub(crate) external_origin: Option<String>,
    /// Other origins of the service's own ([`SignInBuilder::trusted_origin`]),
    /// as [`origin_key`](palisade_core::syntax::origin_key) writes them.
    pub(crate) trusted_origins: Vec<String>,
    /// The issuer's names for the user's name and roles.
    pub(crate) claim_names: crate::session::ClaimNames,
    /// Extra parameters of the authorization request, in order.
    pub(crate) authorization_params: Vec<(String, String)>,
}

/// Why a [`SignIn`](crate::SignIn) cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignInError {
    /// A setting that cannot work; the message names it.
    #[error("sign-in: {0}")]
    Config(String),
    /// A session key that cannot be used.
    #[error("sign-in: {0}")]
    Key(crate::cookie::KeyError),
    /// The session store cannot be reached.
    #[error("sign-in: {0}")]
    Store(crate::store::StoreError),
    /// The issuer's settings cannot be used to check its ID tokens (its
    /// URL, or its CA certificates, [`SignInBuilder::ca_pem`], holding none
    /// that is usable: [`palisade_jwt::ConfigError::InvalidCa`]).
    #[error("sign-in: {0}")]
    Issuer(palisade_jwt::ConfigError),
}

// The causes are in the messages, so none is a `source` (a chain printer,
// anyhow's `{:#}`, would say each twice).
impl From<crate::cookie::KeyError> for SignInError {
    fn from(e: crate::cookie::KeyError) -> Self {
        Self::Key(e)
    }
}

impl From<crate::store::StoreError> for SignInError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<palisade_jwt::ConfigError> for SignInError {
    fn from(e: palisade_jwt::ConfigError) -> Self {
        Self::Issuer(e)
    }
}

/// Builds a [`SignIn`](crate::SignIn): [`SignIn::builder`](crate::SignIn::builder).
#[must_use]
pub struct SignInBuilder {
    pub(crate) config: Config,
    pub(crate) secret: Option<(Secret, SecretMethod)>,
    pub(crate) client_key: Option<ClientKey>,
    pub(crate) scopes: Vec<String>,
    pub(crate) keys: Vec<CookieKey>,
    pub(crate) store: Option<Arc<dyn SessionStore>>,
}

impl fmt::Debug for SignInBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignInBuilder")
            .field(
                "issuer",
                &palisade_core::syntax::url_without_credentials(&self.config.issuer),
            )
            .field("client_id", &self.config.client_id)
            .field(
                "confidential",
                &(self.secret.is_some() || self.client_key.is_some()),
            )
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl SignInBuilder {
    pub(crate) fn new(issuer: String, client_id: String) -> Self {
        let claim_names = crate::session::ClaimNames {
            client_id: client_id.clone(),
            ..crate::session::ClaimNames::default()
        };
        Self {
            config: Config {
                issuer,
                client_id,
                client_auth: ClientAuth::None,
                scope: String::new(),
                callback_path: SignInPaths::DEFAULT.callback.into(),
                login_path: SignInPaths::DEFAULT.login.into(),
                logout_path: SignInPaths::DEFAULT.logout.into(),
                backchannel_path: SignInPaths::DEFAULT.backchannel_logout.into(),
                session_path: None,
                post_logout_redirect: "/".into(),
                revoke_on_logout: false,
                cookie_name: palisade_core::policy::SIGN_IN_COOKIE.into(),
                idle_timeout: palisade_core::policy::OidcSessionSpec::DEFAULT_IDLE_TIMEOUT,
                absolute_timeout: palisade_core::policy::OidcSessionSpec::DEFAULT_ABSOLUTE_TIMEOUT,
                refresh_before: Duration::from_secs(30),
                timeout: Duration::from_secs(5),
                ca_pem: None,
                external_origin: None,
                trusted_origins: Vec::new(),
                claim_names,
                authorization_params: Vec::new(),
            },
            secret: None,
            client_key: None,
            scopes: vec!["openid".into(), "profile".into(), "email".into()],
            keys: Vec::new(),
            store: None,
        }
    }

    /// Makes this a confidential client with this secret, sent as `method` says.
    pub fn client_secret(mut self, secret: impl Into<String>, method: SecretMethod) -> Self {
        self.secret = Some((Secret(secret.into().into()), method));
        self
    }

    /// Makes this a confidential client that authenticates with
    /// `private_key_jwt`: a client assertion signed by `key`, its `aud` the
    /// issuer's identifier (as RFC 7523bis asks, against audience
    /// injection; Keycloak and oidc-provider accept it). A client secret
    /// cannot be set as well.
    pub fn client_key(mut self, key: ClientKey) -> Self {
        self.client_key = Some(key);
        self
    }

    /// The scopes to ask for (default `openid profile email`); `openid` is
    /// added when missing.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// An extra parameter of the authorization request the browser is sent
    /// to, as Spring Security's `OAuth2AuthorizationRequestResolver`
    /// customizer adds one: Auth0's `audience` (without it Auth0 issues an
    /// opaque access token, and the session's identity comes from the ID
    /// token), Google's `access_type=offline` (else no refresh token, and
    /// the session ends with its first access token), Entra ID's
    /// `domain_hint`, `prompt`. Those the sign-in sets itself (`state`,
    /// `nonce`, PKCE's, `redirect_uri`, `scope`, …) fail
    /// [`build`](Self::build): [`palisade_core::syntax::authorization_param_refusal`].
    pub fn authorization_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.authorization_params.push((name.into(), value.into()));
        self
    }

    /// Where the issuer sends the browser back (default `/oauth2/callback`).
    pub fn callback_path(mut self, path: impl Into<String>) -> Self {
        self.config.callback_path = path.into();
        self
    }

    /// Starts a sign-in, `?return_to=/path` (default `/login`).
    pub fn login_path(mut self, path: impl Into<String>) -> Self {
        self.config.login_path = path.into();
        self
    }

    /// Ends the session here and at the issuer (default `/logout`).
    pub fn logout_path(mut self, path: impl Into<String>) -> Self {
        self.config.logout_path = path.into();
        self
    }

    /// Receives back-channel logout tokens (default `/oauth2/backchannel-logout`).
    pub fn backchannel_logout_path(mut self, path: impl Into<String>) -> Self {
        self.config.backchannel_path = path.into();
        self
    }

    /// Answers a `GET` with the session's deadlines as JSON, without
    /// renewing its idle timeout (none by default; `/oauth2/session`, say):
    /// for a single-page application that warns its user before the
    /// session ends, which a poll of any other endpoint would keep alive
    /// (mod_auth_openidc's `info` hook). 200 `{"subject", "signed_in_at",
    /// "ends_at", "idle_ends_at"}` (seconds since the epoch: when the user
    /// signed in, when the session ends at the latest, when it ends unless
    /// used before), `401` without a usable session, `503` when the store
    /// cannot say; never a token. See docs/signin.md.
    pub fn session_path(mut self, path: impl Into<String>) -> Self {
        self.config.session_path = Some(path.into());
        self
    }

    /// Where the browser lands after logout: a path of this service (made
    /// absolute on the request's origin) or an absolute http(s) URL (default
    /// `/`); anything else fails [`SignInBuilder::build`] (see
    /// [`is_landing_uri`](palisade_core::syntax::is_landing_uri)).
    pub fn post_logout_redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.config.post_logout_redirect = uri.into();
        self
    }

    /// Whether a logout revokes the session's refresh token at the
    /// issuer's `revocation_endpoint` (RFC 7009), when its discovery
    /// document names one (default `false`). The grant then ends even when
    /// the user leaves the issuer's logout unfinished, so that, with an
    /// in-memory store and configured keys, a saved copy of the cookie
    /// cannot be refreshed back to life after a restart (a shared store
    /// keeps the ending without it). Off by default because Keycloak
    /// before the fix of its issue 35486 (26.1, and backports to 24 and
    /// 26.0) also ends this client's sessions in the user's other
    /// sessions (other browsers) and the user's consent to the client.
    /// The newest refresh token this process knows for the session is
    /// revoked, once per process, waited for up to the issuer timeout; a
    /// failure is logged and the logout goes on.
    pub fn revoke_on_logout(mut self, revoke: bool) -> Self {
        self.config.revoke_on_logout = revoke;
        self
    }

    /// The origin browsers reach this service at (`https://shop.example`),
    /// when a proxy in front of it ends TLS or rewrites `Host`: the
    /// callback address given to the issuer, where a logout returns and
    /// which origin a logout form may come from are then made from it,
    /// not from the request's `Host` and connection, and an `https`
    /// origin makes every cookie `Secure`. Without it they come from each
    /// request (`Host`, and TLS on the connection). No forwarded header
    /// (`X-Forwarded-Proto`, `Forwarded`) is trusted: a client can send
    /// them. An origin with a path, user information or another scheme
    /// fails [`SignInBuilder::build`].
    pub fn external_origin(mut self, origin: impl Into<String>) -> Self {
        self.config.external_origin = Some(origin.into());
        self
    }

    /// An origin of the service's own other than its own (a single-page
    /// application at `https://app.shop.example` calling this service at
    /// `https://api.shop.example`): a sign-in may return to a page of it
    /// (`loginPath?return_to=https://app.shop.example/orders`), and a
    /// logout its page posts ends the session without asking to confirm.
    /// Give the guard the same origins
    /// ([`GuardBuilder::trusted_origin`](palisade_core::GuardBuilder::trusted_origin)),
    /// for the session to count on its writes; from a policy file, an
    /// `AuthorizationSettings` document's `trustedOrigins` does both. An
    /// origin with a path, user information or another scheme fails
    /// [`SignInBuilder::build`].
    pub fn trusted_origin(mut self, origin: impl Into<String>) -> Self {
        self.config.trusted_origins.push(origin.into());
        self
    }

    /// The claim used as the signed-in user's name (default
    /// `preferred_username`), as Keycloak's `principal-attribute` and
    /// [`ProviderBuilder::principal_claim`](palisade_jwt::ProviderBuilder::principal_claim)
    /// for bearer tokens: `Identity::name()` and `TokenClaims::preferred_username`.
    pub fn principal_claim(mut self, claim: impl Into<String>) -> Self {
        self.config.claim_names.principal = Some(claim.into());
        self
    }

    /// A claim whose values are the signed-in user's realm roles too
    /// (`groups`, Entra ID's `roles`), as
    /// [`ProviderBuilder::roles_claim`](palisade_jwt::ProviderBuilder::roles_claim)
    /// for bearer tokens: [`TokenClaims::add_realm_roles_from`](palisade_core::TokenClaims::add_realm_roles_from).
    pub fn roles_claim(mut self, claim: impl Into<String>) -> Self {
        self.config.claim_names.roles = Some(claim.into());
        self
    }

    /// The session cookie's name (default `palisade_session`). A
    /// `__Host-` name (no other subdomain can set or overwrite it) or
    /// `__Secure-` name makes every cookie of the sign-in `Secure`, over
    /// plain HTTP too (where browsers keep it only for `localhost`).
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.config.cookie_name = name.into();
        self
    }

    /// A session unused this long ends (default 30 minutes; at most ten
    /// years, as in a policy file).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self
    }

    /// A session ends this long after sign-in (default 8 hours; at most
    /// ten years, as in a policy file).
    pub fn absolute_timeout(mut self, d: Duration) -> Self {
        self.config.absolute_timeout = d;
        self
    }

    /// Refresh the access token when it has less than this left (default
    /// 30 s; at most ten years).
    pub fn refresh_before(mut self, d: Duration) -> Self {
        self.config.refresh_before = d;
        self
    }

    /// Timeout of each call to the issuer (default 5 s; more than zero, at
    /// most ten years).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.config.timeout = d;
        self
    }

    /// Extra PEM trust anchors for the issuer's TLS certificate.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.config.ca_pem = Some(pem.into());
        self
    }

    /// The session keys, newest first: new cookies use the first, all are
    /// read. Without keys, a random key is made at build (sessions then end
    /// with the process and cannot be shared by replicas; a warning says so).
    pub fn keys(mut self, keys: Vec<CookieKey>) -> Self {
        self.keys = keys;
        self
    }

    /// The store shared by replicas (default: in memory, this process).
    pub fn store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }
}

/// A path this service serves, as the settings require.
pub(crate) fn check_path(field: &str, path: &str) -> Result<(), SignInError> {
    if !palisade_core::syntax::is_service_path(path) {
        return Err(SignInError::Config(format!(
            "{field} `{path}` is not a path of this service"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use palisade_testkit::{ClientKeyPair, SigningAlgorithm};

    use super::*;

    #[test]
    fn a_client_key_signs_with_its_own_algorithm_only() {
        let es = ClientKeyPair::generate(SigningAlgorithm::Es256).unwrap();
        let rs = ClientKeyPair::generate(SigningAlgorithm::Rs256).unwrap();
        let key = ClientKey::from_pem("ES256", es.private_key_pem.as_bytes(), Some("k1")).unwrap();
        let assertion = key.assertion("c", "https://issuer", "j", 1_000).unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                assertion.split('.').next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "k1");
        assert!(ClientKey::from_pem("RS256", rs.private_key_pem.as_bytes(), None).is_ok());
        for (alg, pem) in [
            ("ES384", &es.private_key_pem),
            ("RS256", &es.private_key_pem),
            ("ES256", &rs.private_key_pem),
            ("HS256", &es.private_key_pem),
            ("none", &es.private_key_pem),
        ] {
            let err = ClientKey::from_pem(alg, pem.as_bytes(), None)
                .unwrap_err()
                .to_string();
            assert!(!err.contains("PRIVATE KEY"), "{alg}: no key in {err}");
        }
        assert!(!format!("{key:?}").contains("PRIVATE"), "{key:?}");
    }
}
