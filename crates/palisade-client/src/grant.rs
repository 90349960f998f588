//! The workload's own token: a client-credentials grant (RFC 6749 4.4),
//! cached and renewed.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use palisade_core::policy::ClientAuthMethod;
use serde::Deserialize;
use tokio::sync::{Mutex, OnceCell};

use crate::{ClientError, LOG_TARGET};

/// The largest discovery or token answer read.
const BODY_LIMIT: usize = 256 * 1024;

/// A granted access token and when to stop using it.
struct Granted {
    header: Arc<str>,
    /// When it expires (`expires_in` after the request was sent).
    expires: Instant,
}

struct Inner {
    issuer: String,
    client_id: String,
    secret: String,
    /// The secret goes in the form (`client_secret_post`), not in Basic.
    post: bool,
    audience: Option<String>,
    scope: Option<String>,
    renew_before: Duration,
    http: reqwest::Client,
    token_endpoint: OnceCell<String>,
    current: ArcSwapOption<Granted>,
    /// Held by the one request renewing the token.
    renewing: Mutex<()>,
}

/// The workload's own access token from the issuer's client-credentials
/// grant (a Keycloak service account): fetched on first use and shared by
/// every call; renewed when less than [`renew_before`](ClientCredentialsBuilder::renew_before)
/// is left, by one request while the others keep the current token; kept
/// while the issuer cannot be reached for as long as it is valid. The
/// client authenticates with its secret (`client_secret_basic` or
/// `client_secret_post`); the token endpoint comes from the issuer's
/// discovery document.
///
/// Cloning is an `Arc` clone. `Debug` prints no secret and no token.
#[derive(Clone)]
pub struct ClientCredentials(Arc<Inner>);

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("issuer", &self.0.issuer)
            .field("client_id", &self.0.client_id)
            .field("audience", &self.0.audience)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ClientCredentials`].
#[must_use]
pub struct ClientCredentialsBuilder {
    issuer: String,
    client_id: String,
    secret: Option<String>,
    method: ClientAuthMethod,
    audience: Option<String>,
    scopes: Vec<String>,
    renew_before: Duration,
    timeout: Duration,
    ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for ClientCredentialsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsBuilder")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl ClientCredentials {
    /// Starts building the grant of client `client_id` at `issuer`.
    pub fn builder(issuer: impl Into<String>, client_id: impl Into<String>) -> ClientCredentialsBuilder {
        ClientCredentialsBuilder {
            issuer: issuer.into(),
            client_id: client_id.into(),
            secret: None,
            method: ClientAuthMethod::ClientSecretBasic,
            audience: None,
            scopes: Vec::new(),
            renew_before: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            ca_pem: None,
        }
    }

    /// The `Authorization` header value (`Bearer …`) of the current token,
    /// fetching or renewing it when needed.
    ///
    /// # Errors
    /// [`ClientError::Refused`] when the issuer refuses the grant,
    /// [`ClientError::Unavailable`] when it cannot be reached and no valid
    /// token is at hand.
    pub async fn authorization(&self) -> Result<Arc<str>, ClientError> {
        let now = Instant::now();
        if let Some(g) = self.0.current.load().as_ref() {
            if now + self.0.renew_before < g.expires {
                return Ok(Arc::clone(&g.header));
            }
            // Due for renewal but still valid: one request renews, the
            // others keep using it meanwhile.
            if g.expires > now {
                let Ok(_renewing) = self.0.renewing.try_lock() else {
                    return Ok(Arc::clone(&g.header));
                };
                // Renewed by another request since the load above.
                let current = self.0.current.load_full();
                if let Some(c) = &current
                    && Instant::now() + self.0.renew_before < c.expires
                {
                    return Ok(Arc::clone(&c.header));
                }
                return self.renew(current.as_ref().or(Some(g))).await;
            }
        }
        let _renewing = self.0.renewing.lock().await;
        // Renewed while this request waited.
        if let Some(g) = self.0.current.load().as_ref()
            && Instant::now() + self.0.renew_before < g.expires
        {
            return Ok(Arc::clone(&g.header));
        }
        let current = self.0.current.load_full();
        self.renew(current.as_ref()).await
    }

    /// Asks for a new token (the caller holds `renewing`); on failure keeps
    /// `current` while it is valid.
    async fn renew(&self, current: Option<&Arc<Granted>>) -> Result<Arc<str>, ClientError> {
        match self.grant().await {
            Ok(g) => {
                let header = Arc::clone(&g.header);
                self.0.current.store(Some(Arc::new(g)));
                Ok(header)
            }
            Err(e) => match current {
                Some(g) if g.expires > Instant::now() => {
                    tracing::warn!(target: LOG_TARGET, issuer = %self.0.issuer, error = %e, "cannot renew the workload's token; the current one is used until it expires");
                    Ok(Arc::clone(&g.header))
                }
                _ => Err(e),
            },
        }
    }

    async fn grant(&self) -> Result<Granted, ClientError> {
        let inner = &*self.0;
        let endpoint = inner
            .token_endpoint
            .get_or_try_init(|| discover(&inner.http, &inner.issuer))
            .await?;
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &inner.scope {
            form.push(("scope", scope));
        }
        if let Some(audience) = &inner.audience {
            // Keycloak reads `audience`; RFC 8707 servers (oidc-provider)
            // `resource`, which must be an absolute URI.
            form.push(("audience", audience));
            if audience.contains("://") {
                form.push(("resource", audience));
            }
        }
        let mut req = inner.http.post(endpoint);
        if inner.post {
            form.push(("client_id", &inner.client_id));
            form.push(("client_secret", &inner.secret));
        } else {
            req = req.basic_auth(form_encode(&inner.client_id), Some(form_encode(&inner.secret)));
        }
        let sent = Instant::now();
        let res = req
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form.iter()
                    .map(|(k, v)| format!("{k}={}", form_encode(v)))
                    .collect::<Vec<_>>()
                    .join("&"),
            )
            .send()
            .await
            .map_err(|e| ClientError::Unavailable(e.without_url().to_string()))?;
        let status = res.status();
        let body = read_limited(res).await?;
        if !status.is_success() {
            #[derive(Deserialize)]
            struct OAuthError {
                error: String,
            }
            return Err(match serde_json::from_slice::<OAuthError>(&body) {
                Ok(e) if status.is_client_error() => {
                    ClientError::Refused(e.error.chars().filter(char::is_ascii_graphic).take(64).collect())
                }
                _ => ClientError::Unavailable(format!("the token endpoint answered {status}")),
            });
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            token_type: Option<String>,
            #[serde(default)]
            expires_in: Option<f64>,
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| ClientError::Unavailable("the token response is not the expected JSON".into()))?;
        if t.token_type
            .as_deref()
            .is_some_and(|ty| !ty.eq_ignore_ascii_case("bearer"))
        {
            return Err(ClientError::Unavailable(
                "the issuer granted a token that is not a bearer token".into(),
            ));
        }
        let header: http::HeaderValue = format!("Bearer {}", t.access_token)
            .parse()
            .map_err(|_| ClientError::Unavailable("the granted token cannot be sent in a header".into()))?;
        let lifetime = t
            .expires_in
            .filter(|e| e.is_finite() && *e > 0.0)
            .map_or(Duration::from_secs(60), |e| {
                Duration::from_secs_f64(e.min(86_400.0))
            });
        tracing::debug!(target: LOG_TARGET, issuer = %inner.issuer, lifetime_s = lifetime.as_secs(), "the workload's token was granted");
        Ok(Granted {
            header: header.to_str().unwrap_or_default().into(),
            expires: sent + lifetime,
        })
    }
}

impl ClientCredentialsBuilder {
    /// The client secret (required: a public client has no service
    /// account). Sent with `client_secret_basic`.
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// How the secret is sent: `client_secret_basic` (the default) or
    /// `client_secret_post`. `private_key_jwt` is not available here yet:
    /// [`build`](Self::build) refuses it.
    pub fn client_auth_method(mut self, method: ClientAuthMethod) -> Self {
        self.method = method;
        self
    }

    /// The audience asked for: Keycloak's `audience` parameter, and RFC
    /// 8707's `resource` too when it is an absolute URI.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The scopes asked for.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Renew the token when it has less than this left (default 30 s).
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

    /// Builds it; nothing is fetched before the first call.
    ///
    /// # Errors
    /// [`ClientError::Config`] naming the setting that cannot work.
    pub fn build(self) -> Result<ClientCredentials, ClientError> {
        if !(self.issuer.starts_with("https://") || self.issuer.starts_with("http://")) {
            return Err(ClientError::Config(format!(
                "the issuer `{}` is not an http(s) URL",
                self.issuer
            )));
        }
        if self.client_id.is_empty() {
            return Err(ClientError::Config("the client id is empty".into()));
        }
        let Some(secret) = self.secret.filter(|s| !s.is_empty()) else {
            return Err(ClientError::Config(
                "a client-credentials grant needs the client secret".into(),
            ));
        };
        let post = match self.method {
            ClientAuthMethod::ClientSecretBasic => false,
            ClientAuthMethod::ClientSecretPost => true,
            _ => {
                return Err(ClientError::Config(
                    "a client-credentials grant sends its secret by client_secret_basic or client_secret_post".into(),
                ));
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
        Ok(ClientCredentials(Arc::new(Inner {
            issuer: self.issuer,
            client_id: self.client_id,
            secret,
            post,
            audience: self.audience,
            scope: (!self.scopes.is_empty()).then(|| self.scopes.join(" ")),
            renew_before: self.renew_before,
            http,
            token_endpoint: OnceCell::new(),
            current: ArcSwapOption::empty(),
            renewing: Mutex::new(()),
        })))
    }
}

/// The token endpoint from the issuer's discovery document, whose `issuer`
/// must be the one configured.
async fn discover(http: &reqwest::Client, issuer: &str) -> Result<String, ClientError> {
    #[derive(Deserialize)]
    struct Metadata {
        issuer: String,
        token_endpoint: String,
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let res = http
        .get(url)
        .send()
        .await
        .map_err(|e| ClientError::Unavailable(e.without_url().to_string()))?;
    if !res.status().is_success() {
        return Err(ClientError::Unavailable(format!(
            "discovery answered {}",
            res.status()
        )));
    }
    let body = read_limited(res).await?;
    let m: Metadata = serde_json::from_slice(&body)
        .map_err(|_| ClientError::Unavailable("the discovery document does not parse".into()))?;
    if m.issuer != issuer {
        return Err(ClientError::Unavailable(format!(
            "the discovery document names the issuer `{}`, not `{issuer}`",
            m.issuer
        )));
    }
    Ok(m.token_endpoint)
}

async fn read_limited(mut res: reqwest::Response) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| ClientError::Unavailable(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(ClientError::Unavailable(
                "the issuer's answer is too large".into(),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `application/x-www-form-urlencoded` encoding of a form value, and of
/// the parts of HTTP Basic client credentials (RFC 6749 section 2.3.1).
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
