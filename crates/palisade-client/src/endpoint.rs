//! The issuer's token endpoint as a confidential client calls it, and the
//! builder shared by the grants that call it.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_core::policy::ClientAuthMethod;
use palisade_jwt::dpop::DpopKey;
use serde::Deserialize;

use crate::{ClientError, LOG_TARGET};

/// The largest discovery or token answer read.
const BODY_LIMIT: usize = 256 * 1024;

/// How old a token must be for an upstream's refusal to drop it.
pub(crate) const REFUSED_FRESH: Duration = Duration::from_secs(30);

/// The most origins whose DPoP nonce one key keeps ([`DpopNonces`]).
const NONCES_KEPT: usize = 256;

/// The latest `DPoP-Nonce` each server gave a client's key, by origin, put
/// in the key's next proofs to that server: the token endpoint's (RFC 9449
/// §8) and each resource server's (§9), which may send a new one in any
/// answer. A server that requires nonces refuses a first call without one
/// (`use_dpop_nonce`); the calls after it carry its nonce. At most
/// [`NONCES_KEPT`] origins, all forgotten when one more comes (each server
/// then asks again).
#[derive(Default)]
pub(crate) struct DpopNonces(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl DpopNonces {
    /// The nonce to put in a proof of a call to `htu`.
    pub(crate) fn for_htu(&self, htu: &str) -> Option<String> {
        let nonces = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        nonces.get(&origin_of(htu)).cloned()
    }

    /// Keeps the nonce of `headers` (an answer to a call to `htu`), if they
    /// carry one that can go in a proof (RFC 9449 §8.1: `NQCHAR`s, here at
    /// most 512).
    pub(crate) fn keep(&self, htu: &str, headers: &http::HeaderMap) {
        let Some(nonce) = headers.get("dpop-nonce").and_then(|v| v.to_str().ok()) else {
            return;
        };
        let nqchar = |b: u8| b == b'!' || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
        if nonce.is_empty() || nonce.len() > 512 || !nonce.bytes().all(nqchar) {
            return;
        }
        let mut nonces = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let origin = origin_of(htu);
        if nonces.get(&origin).is_some_and(|n| n == nonce) {
            return;
        }
        if nonces.len() >= NONCES_KEPT && !nonces.contains_key(&origin) {
            nonces.clear();
        }
        nonces.insert(origin, nonce.to_owned());
    }
}

/// The origin of `htu` (`https://reviews.example:8443`) as nonces are kept
/// by: in lower case, without its scheme's default port (one server's
/// nonce, however a call spells its origin).
fn origin_of(htu: &str) -> String {
    // A proof's `htu` is absolute: the layer and `apply` make it so.
    palisade_core::syntax::origin_key(palisade_core::syntax::url_origin(htu).unwrap_or(htu))
}

/// A granted access token as an `Authorization` value, and when to stop
/// using it.
pub(crate) struct Granted {
    pub(crate) header: Arc<str>,
    /// The same, checked once as a header value (a clone is a reference
    /// count).
    pub(crate) value: http::HeaderValue,
    /// When it expires (`expires_in` after the request was sent).
    pub(crate) expires: Instant,
    /// When to get a new one: `renew_before` ahead of `expires`, at most
    /// half the token's lifetime ahead (a short-lived token is still used).
    pub(crate) renew_at: Instant,
    /// When it was asked for.
    pub(crate) obtained: Instant,
    /// An upstream refused it: due for renewal whatever `renew_at` says.
    pub(crate) refused: std::sync::atomic::AtomicBool,
    /// For a DPoP-bound token (RFC 9449): the key every call proves, the
    /// token (each proof's `ath`), and the servers' nonces for the key.
    pub(crate) dpop: Option<(Arc<DpopKey>, Arc<str>, Arc<DpopNonces>)>,
}

impl Granted {
    /// Notes an upstream's refusal of this token, sent as `sent`: when it
    /// is the one sent, and not so fresh that a new one would be refused
    /// alike (an audience, a clock), it is due for renewal at once; true
    /// then. Fresh: younger than 30 s ([`REFUSED_FRESH`]) or, for a token
    /// that lives less than two minutes, in its first quarter. An upstream
    /// that refuses every token so costs the issuer a grant per 30 s (four
    /// per lifetime of a short-lived token) at most.
    pub(crate) fn refuse(&self, sent: &http::HeaderValue) -> bool {
        let fresh = REFUSED_FRESH.min(self.expires.saturating_duration_since(self.obtained) / 4);
        self.value == *sent
            && self.obtained.elapsed() >= fresh
            && !self.refused.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Whether it is due for renewal at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now >= self.renew_at || self.refused.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The `DPoP` proof for a call of `method` to `htu` (the URI without
    /// query or fragment), when the token is DPoP-bound: with the server's
    /// latest nonce, if it gave one.
    pub(crate) fn proof(&self, method: &str, htu: &str) -> Option<http::HeaderValue> {
        let (key, token, nonces) = self.dpop.as_ref()?;
        let nonce = nonces.for_htu(htu);
        sensitive(key.proof(method, htu, Some(token), nonce.as_deref()))
    }

    /// The nonces of its key, for a DPoP-bound token.
    pub(crate) fn nonces(&self) -> Option<&Arc<DpopNonces>> {
        self.dpop.as_ref().map(|(_, _, nonces)| nonces)
    }
}

/// A credential as a header value: kept out of `Debug` and of HTTP/2's
/// header index.
fn sensitive(value: String) -> Option<http::HeaderValue> {
    let mut value = http::HeaderValue::try_from(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A confidential client of one issuer: the token endpoint (by discovery,
/// on first use) and the client's authentication.
pub(crate) struct TokenClient {
    pub(crate) issuer: String,
    /// The issuer as logs, `Debug` and errors show it: without a password
    /// the URL may carry.
    pub(crate) shown: String,
    pub(crate) client_id: String,
    secret: String,
    /// The secret goes in the form (`client_secret_post`), not in Basic.
    post: bool,
    http: reqwest::Client,
    /// The token endpoint, as discovered. Held while discovering:
    /// concurrent calls share one discovery.
    token_endpoint: tokio::sync::Mutex<Discovered>,
    /// The key to ask for DPoP-bound tokens with.
    dpop: Option<Arc<DpopKey>>,
    /// The servers' nonces for that key: the token endpoint's, and the
    /// upstreams' its tokens are sent to.
    nonces: Arc<DpopNonces>,
}

/// What discovery found of the token endpoint.
#[derive(Default)]
struct Discovered {
    endpoint: Option<Arc<str>>,
    /// The endpoint failed to answer as one: discovered again by the next
    /// call, and used meanwhile when discovery fails (it may be the
    /// discovery document that cannot be had).
    stale: bool,
    /// When discovery last failed, and why.
    failed: Option<(Instant, ClientError)>,
}

/// How long a failure to reach the issuer (a grant, an exchange, a
/// discovery) is the answer of every call it concerns: an issuer that is
/// down, or refuses, is asked once a second, not once a request.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

impl TokenClient {
    /// Posts `form` with the client's authentication; the granted bearer
    /// token, or why there is none.
    pub(crate) async fn request(
        &self,
        form: Vec<(&str, &str)>,
        renew_before: Duration,
    ) -> Result<Granted, ClientError> {
        let endpoint = self.endpoint().await?;
        let nonce = self.nonces.for_htu(&endpoint);
        let granted = match self
            .post_form(&endpoint, &form, nonce.as_deref(), renew_before)
            .await
        {
            // The issuer wants a nonce in the proof (RFC 9449 §8), another
            // than the one sent, if any: once more with it.
            Err((Some(nonce), _)) => self
                .post_form(&endpoint, &form, Some(&nonce), renew_before)
                .await
                .map_err(|(_, e)| e),
            other => other.map_err(|(_, e)| e),
        };
        // Discovered again by the next call when it did not answer as a
        // token endpoint (the issuer may have fixed or moved it; a refusal
        // is an answer, kept); trusted again once it answers. Not waited
        // for: while another call discovers, its answer is the one to keep.
        let unanswered = matches!(&granted, Err(ClientError::Unavailable(_)));
        if let Ok(mut known) = self.token_endpoint.try_lock()
            && known.endpoint.as_ref().is_some_and(|c| Arc::ptr_eq(c, &endpoint))
        {
            known.stale = unanswered;
        }
        granted
    }

    /// The token endpoint: discovered when not known, or when the one
    /// known failed; a discovery that fails is every call's answer for a
    /// second (the endpoint known before, when there is one), rather than
    /// each waiting call's own discovery in turn.
    async fn endpoint(&self) -> Result<Arc<str>, ClientError> {
        let mut known = self.token_endpoint.lock().await;
        if let (Some(endpoint), false) = (&known.endpoint, known.stale) {
            return Ok(Arc::clone(endpoint));
        }
        if let Some((at, e)) = &known.failed
            && at.elapsed() < RETRY_AFTER
        {
            return known.endpoint.clone().ok_or_else(|| e.clone());
        }
        match discover(&self.http, &self.issuer).await {
            Ok(endpoint) => {
                let endpoint: Arc<str> = endpoint.into();
                *known = Discovered {
                    endpoint: Some(Arc::clone(&endpoint)),
                    ..Discovered::default()
                };
                Ok(endpoint)
            }
            Err(e) => {
                known.failed = Some((Instant::now(), e.clone()));
                known.endpoint.clone().ok_or(e)
            }
        }
    }

    /// One token request; a refusal that asks for a DPoP nonce names it.
    async fn post_form(
        &self,
        endpoint: &str,
        form: &[(&str, &str)],
        nonce: Option<&str>,
        renew_before: Duration,
    ) -> Result<Granted, (Option<String>, ClientError)> {
        let mut form = form.to_vec();
        let mut req = self.http.post(endpoint);
        // The proof's `htu`: the endpoint without query or fragment (RFC
        // 9449 §4.2), as an issuer that advertises one with a query sees it.
        let htu = endpoint.split(['?', '#']).next().unwrap_or(endpoint);
        if let Some(key) = &self.dpop
            && let Some(proof) = sensitive(key.proof("POST", htu, None, nonce))
        {
            req = req.header("dpop", proof);
        }
        if self.post {
            form.push(("client_id", &self.client_id));
            form.push(("client_secret", &self.secret));
        } else {
            req = req.basic_auth(
                palisade_core::form::encode(&self.client_id),
                Some(palisade_core::form::encode(&self.secret)),
            );
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", palisade_core::form::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let sent = Instant::now();
        let res = req
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| (None, ClientError::Unavailable(e.without_url().to_string())))?;
        let status = res.status();
        if self.dpop.is_some() {
            self.nonces.keep(htu, res.headers());
        }
        let dpop_nonce = res
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_limited(res).await.map_err(|e| (None, e))?;
        if !status.is_success() {
            #[derive(Deserialize)]
            struct OAuthError {
                error: String,
            }
            // The issuer's refusal is an OAuth error with a status RFC
            // 6749 §5.2 gives it (400, 401 for the client's credentials;
            // Keycloak refuses a token exchange with 403). Another (`429`
            // throttling, a `404` of a moved endpoint), whatever its body
            // says, is an issuer that cannot grant now: a token still
            // valid is kept, and the endpoint is looked up again.
            return Err(match serde_json::from_slice::<OAuthError>(&body) {
                Ok(e) if matches!(status.as_u16(), 400 | 401 | 403) => {
                    let retry = (e.error == "use_dpop_nonce" && self.dpop.is_some())
                        .then_some(dpop_nonce)
                        .flatten()
                        .filter(|new| nonce != Some(new.as_str()));
                    // The error code only: the description may echo input.
                    let code = e.error.chars().filter(char::is_ascii_graphic).take(64).collect();
                    (retry, ClientError::Refused(code))
                }
                _ => (
                    None,
                    ClientError::Unavailable(format!("the token endpoint answered {status}")),
                ),
            });
        }
        self.granted_from(&body, renew_before, sent)
            .map_err(|e| (None, e))
    }

    /// The token of a successful answer.
    fn granted_from(
        &self,
        body: &[u8],
        renew_before: Duration,
        sent: Instant,
    ) -> Result<Granted, ClientError> {
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            token_type: Option<String>,
            #[serde(default, deserialize_with = "palisade_core::syntax::deserialize_expires_in")]
            expires_in: Option<f64>,
            /// RFC 8693's, in a token exchange's answer.
            #[serde(default)]
            issued_token_type: Option<String>,
        }
        let t: TokenResponse = serde_json::from_slice(body)
            .map_err(|_| ClientError::Unavailable("the token response is not the expected JSON".into()))?;
        // Only an access token is sent as one (an exchange may be answered
        // with an ID or refresh token, or a SAML assertion).
        if t.issued_token_type
            .as_deref()
            .is_some_and(|ty| ty != "urn:ietf:params:oauth:token-type:access_token")
        {
            return Err(ClientError::Unavailable(
                "the issuer issued a token that is not an access token (issued_token_type)".into(),
            ));
        }
        // A DPoP-bound token when asked for one (an issuer may still grant
        // a bearer token: RFC 9449 §5), else a bearer token.
        let bound = match t.token_type.as_deref() {
            Some(ty) if ty.eq_ignore_ascii_case("dpop") && self.dpop.is_some() => true,
            None => false,
            Some(ty) if ty.eq_ignore_ascii_case("bearer") => false,
            Some(_) => {
                return Err(ClientError::Unavailable(
                    "the issuer granted a token that is neither a bearer nor a DPoP token".into(),
                ));
            }
        };
        // RFC 6750's token68 characters, and not empty.
        let sendable = !t.access_token.is_empty()
            && t.access_token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
        if !sendable {
            return Err(ClientError::Unavailable(
                "the granted token is empty or cannot be sent as a bearer token".into(),
            ));
        }
        // Missing, zero or negative (an issuer that does not say): a
        // minute. Said: a second at least (a token due at once would be
        // asked for again by every call), a day at most.
        let lifetime = t
            .expires_in
            .filter(|e| e.is_finite() && *e > 0.0)
            .map_or(Duration::from_secs(60), |e| {
                Duration::from_secs_f64(e.clamp(1.0, 86_400.0))
            });
        let expires = sent + lifetime;
        let scheme = if bound { "DPoP" } else { "Bearer" };
        let header: Arc<str> = format!("{scheme} {}", t.access_token).into();
        let mut value = http::HeaderValue::from_str(&header).map_err(|_| {
            ClientError::Unavailable("the granted token cannot be sent as a bearer token".into())
        })?;
        value.set_sensitive(true);
        let dpop = if bound {
            self.dpop
                .clone()
                .map(|k| (k, Arc::from(t.access_token), Arc::clone(&self.nonces)))
        } else {
            None
        };
        Ok(Granted {
            header,
            value,
            expires,
            renew_at: expires - renew_before.min(lifetime / 2),
            obtained: sent,
            refused: std::sync::atomic::AtomicBool::new(false),
            dpop,
        })
    }
}

/// Builds a grant of a confidential client: [`ClientCredentials::builder`](crate::ClientCredentials::builder)
/// or [`TokenExchange::builder`](crate::TokenExchange::builder); `K` is
/// what [`build`](GrantBuilder::build) makes.
#[must_use]
pub struct GrantBuilder<K> {
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    secret: Option<String>,
    method: ClientAuthMethod,
    pub(crate) audience: Option<String>,
    scopes: Vec<String>,
    pub(crate) renew_before: Duration,
    pub(crate) timeout: Duration,
    ca_pem: Option<Vec<u8>>,
    dpop: Option<Arc<DpopKey>>,
    /// A token exchange's other issuers of callers' tokens.
    pub(crate) subject_issuers: Vec<String>,
    /// A token exchange's most calls to the issuer at once.
    pub(crate) max_concurrent_calls: usize,
    kind: PhantomData<fn() -> K>,
}

impl<K> fmt::Debug for GrantBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantBuilder")
            .field(
                "issuer",
                &palisade_core::syntax::url_without_credentials(&self.issuer),
            )
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl<K> GrantBuilder<K> {
    pub(crate) fn new(issuer: String, client_id: String) -> Self {
        Self {
            issuer,
            client_id,
            secret: None,
            method: ClientAuthMethod::ClientSecretBasic,
            audience: None,
            scopes: Vec::new(),
            renew_before: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            ca_pem: None,
            dpop: None,
            subject_issuers: Vec::new(),
            max_concurrent_calls: 32,
            kind: PhantomData,
        }
    }

    /// Asks for DPoP-bound tokens (RFC 9449) proved with `key`: each token
    /// request carries a proof, and so does each call made with the token
    /// (through [`Upstreams::apply`](crate::Upstreams::apply) or
    /// [`CredentialsLayer`](crate::CredentialsLayer), which know the call's
    /// method and URI). A stolen token is then useless without the key.
    pub fn dpop(mut self, key: DpopKey) -> Self {
        self.dpop = Some(Arc::new(key));
        self
    }

    /// The client secret (required: a public client is granted no tokens
    /// for itself and may not exchange them).
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// How the secret is sent: `client_secret_basic` (the default) or
    /// `client_secret_post`. `private_key_jwt` is not available here yet:
    /// `build` refuses it.
    pub fn client_auth_method(mut self, method: ClientAuthMethod) -> Self {
        self.method = method;
        self
    }

    /// The audience asked for: Keycloak's and RFC 8693's `audience`, and
    /// RFC 8707's `resource` too when it is an absolute URI.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The scopes asked for.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Get a new token when the current one has less than this left
    /// (default 30 s).
    pub fn renew_before(mut self, d: Duration) -> Self {
        self.renew_before = d;
        self
    }

    /// Timeout of each call to the issuer (default 5 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Extra PEM trust anchors for the issuer's TLS certificate.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// The space-separated scope, when any was set.
    pub(crate) fn scope(&self) -> Option<String> {
        (!self.scopes.is_empty()).then(|| self.scopes.join(" "))
    }

    /// The client these settings describe; nothing is fetched yet.
    pub(crate) fn client(&self, grant: &str) -> Result<TokenClient, ClientError> {
        if !palisade_core::syntax::is_http_url(&self.issuer) {
            return Err(ClientError::Config(format!(
                "the issuer `{}` is not an http(s) URL",
                palisade_core::syntax::url_without_credentials(&self.issuer)
            )));
        }
        if self.client_id.is_empty() {
            return Err(ClientError::Config("the client id is empty".into()));
        }
        if palisade_core::syntax::plain_http_elsewhere(&self.issuer) {
            palisade_core::config_warning!(
                target: LOG_TARGET,
                "the token issuer {} uses plain http: the client's credentials and the tokens it gets can be read in transit",
                palisade_core::syntax::url_without_credentials(&self.issuer)
            );
        }
        let Some(secret) = self.secret.clone().filter(|s| !s.is_empty()) else {
            return Err(ClientError::Config(format!("a {grant} needs the client secret")));
        };
        let post = match self.method {
            ClientAuthMethod::ClientSecretBasic => false,
            ClientAuthMethod::ClientSecretPost => true,
            _ => {
                return Err(ClientError::Config(format!(
                    "a {grant} sends the client secret by client_secret_basic or client_secret_post"
                )));
            }
        };
        let mut http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &self.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::Config(format!("the CA file: {e}")))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| ClientError::Config(format!("the HTTP client: {e}")))?;
        Ok(TokenClient {
            issuer: self.issuer.clone(),
            shown: palisade_core::syntax::url_without_credentials(&self.issuer),
            client_id: self.client_id.clone(),
            secret,
            post,
            http,
            token_endpoint: tokio::sync::Mutex::new(Discovered::default()),
            dpop: self.dpop.clone(),
            nonces: Arc::default(),
        })
    }
}

/// The token endpoint from the issuer's discovery document, whose `issuer`
/// must be the one configured, and which must be `https` when the document
/// is: the client's secret goes there.
async fn discover(http: &reqwest::Client, issuer: &str) -> Result<String, ClientError> {
    let unavailable = |e: palisade_jwt::DiscoveryError| ClientError::Unavailable(e.to_string());
    palisade_jwt::Discovery::fetch_endpoint(http, issuer, BODY_LIMIT, "token_endpoint")
        .await
        .map_err(unavailable)
}

async fn read_limited(res: reqwest::Response) -> Result<Vec<u8>, ClientError> {
    palisade_jwt::body_up_to(res, BODY_LIMIT)
        .await
        .map_err(|e| ClientError::Unavailable(e.without_url().to_string()))?
        .ok_or_else(|| ClientError::Unavailable("the issuer's answer is too large".into()))
}

/// Adds the audience asked for to a token request's `form`: `audience`
/// (RFC 8693, and servers that read it for other grants), and RFC 8707's
/// `resource` too when it is an absolute URI (oidc-provider reads that).
pub(crate) fn push_audience<'a>(form: &mut Vec<(&'static str, &'a str)>, audience: &'a str) {
    form.push(("audience", audience));
    if audience.contains("://") {
        form.push(("resource", audience));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_may_come_as_a_string_of_seconds() {
        let client = TokenClient {
            issuer: "https://kc.example".into(),
            shown: "https://kc.example".into(),
            client_id: "app".into(),
            secret: "s".into(),
            post: false,
            http: reqwest::Client::new(),
            token_endpoint: tokio::sync::Mutex::new(Discovered::default()),
            dpop: None,
            nonces: Arc::default(),
        };
        let sent = Instant::now();
        let lifetime = |body: &str| {
            client
                .granted_from(body.as_bytes(), Duration::ZERO, sent)
                .map(|g| g.expires - sent)
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":3600}"#).ok(),
            Some(hour)
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"3600"}"#).ok(),
            Some(hour)
        );
        // None, or not a number: the one-minute guess, or refused.
        let minute = Duration::from_secs(60);
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":null}"#).ok(),
            Some(minute)
        );
        assert!(lifetime(r#"{"access_token":"t","expires_in":"later"}"#).is_err());
        // Zero or less says nothing: the guess; a sliver, a second; more
        // than a day, a day.
        for nothing in ["0", "-5"] {
            let body = format!(r#"{{"access_token":"t","expires_in":{nothing}}}"#);
            assert_eq!(lifetime(&body).ok(), Some(minute), "{nothing}");
        }
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":0.001}"#).ok(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":1e9}"#).ok(),
            Some(Duration::from_secs(86_400))
        );
        // An exchange answered with another kind of token: not sent.
        let typed = |ty: &str| {
            lifetime(&format!(
                r#"{{"access_token":"t","issued_token_type":"urn:ietf:params:oauth:token-type:{ty}"}}"#
            ))
        };
        assert!(typed("access_token").is_ok());
        for other in ["id_token", "refresh_token", "saml2"] {
            assert!(
                matches!(typed(other), Err(ClientError::Unavailable(_))),
                "{other}"
            );
        }
    }

    /// Nonces are kept by origin (in any case, whatever the path), only
    /// when they can go in a proof, and bounded.
    #[test]
    fn dpop_nonces_are_kept_by_origin_and_only_when_usable() {
        let nonces = DpopNonces::default();
        let answer = |nonce: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("dpop-nonce", http::HeaderValue::from_str(nonce).unwrap());
            headers
        };
        nonces.keep("https://Reviews.example:8443/a?q=1", &answer("n-1"));
        assert_eq!(
            nonces.for_htu("https://reviews.example:8443/b").as_deref(),
            Some("n-1")
        );
        assert_eq!(nonces.for_htu("https://reviews.example/b"), None, "another port");
        // The scheme's default port written out is the same origin.
        nonces.keep("https://ratings.example:443/", &answer("n-2"));
        assert_eq!(
            nonces.for_htu("https://RATINGS.example/x").as_deref(),
            Some("n-2")
        );
        nonces.keep("http://ratings.example/", &answer("n-3"));
        assert_eq!(
            nonces.for_htu("http://ratings.example:80/x").as_deref(),
            Some("n-3")
        );
        assert_eq!(
            nonces.for_htu("https://ratings.example:443/").as_deref(),
            Some("n-2"),
            "another scheme's is its own"
        );
        assert_eq!(
            nonces.for_htu("http://reviews.example:8443/b"),
            None,
            "another scheme"
        );
        // One that cannot go in a proof (a quote, a space) is not kept.
        for bad in ["a\"b", "a b", ""] {
            nonces.keep("https://reviews.example:8443/", &answer(bad));
        }
        assert_eq!(
            nonces.for_htu("https://reviews.example:8443/").as_deref(),
            Some("n-1")
        );
        for i in 0..=NONCES_KEPT {
            nonces.keep(&format!("https://h{i}.example/"), &answer("n"));
        }
        let kept = nonces.0.lock().unwrap().len();
        assert!(kept <= NONCES_KEPT, "{kept}");
    }

    #[test]
    fn a_dpop_proof_is_a_sensitive_header() {
        let now = Instant::now();
        let granted = Granted {
            header: Arc::from("DPoP t"),
            value: http::HeaderValue::from_static("DPoP t"),
            expires: now + Duration::from_secs(60),
            renew_at: now + Duration::from_secs(30),
            obtained: now,
            refused: std::sync::atomic::AtomicBool::new(false),
            dpop: Some((
                Arc::new(DpopKey::generate().unwrap()),
                Arc::from("t"),
                Arc::default(),
            )),
        };
        let proof = granted.proof("GET", "https://reviews.example/r").unwrap();
        assert!(proof.is_sensitive(), "kept out of Debug and of HTTP/2's index");
        assert_eq!(format!("{proof:?}"), "Sensitive");
    }

    #[test]
    fn an_absolute_audience_is_asked_for_as_a_resource_too() {
        let mut form = Vec::new();
        push_audience(&mut form, "reviews");
        assert_eq!(form, [("audience", "reviews")]);
        let mut form = Vec::new();
        push_audience(&mut form, "https://reviews.example/");
        assert_eq!(
            form,
            [
                ("audience", "https://reviews.example/"),
                ("resource", "https://reviews.example/")
            ]
        );
    }
}
