//! The issuer as a relying party sees it: its discovery document (loaded in
//! the background, retried until it arrives) and its token endpoint.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::LOG_TARGET;
use crate::config::{ClientAuth, Config};

/// The largest token-endpoint answer read (an ID token with many claims
/// is a few KiB).
const TOKEN_RESPONSE_LIMIT: usize = 256 * 1024;

/// What the relying party needs from the issuer's discovery document.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Metadata {
    pub(crate) issuer: String,
    pub(crate) authorization_endpoint: String,
    pub(crate) token_endpoint: String,
    #[serde(default)]
    pub(crate) end_session_endpoint: Option<String>,
    /// RFC 7009: where a logout revokes the session's refresh token.
    #[serde(default)]
    pub(crate) revocation_endpoint: Option<String>,
    /// RFC 9207: the issuer names itself in authorization responses.
    #[serde(default)]
    pub(crate) authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    pub(crate) code_challenge_methods_supported: Option<Vec<String>>,
    /// Back-Channel Logout 2.1: the issuer's ID tokens carry `sid` (and its
    /// logout tokens name it). Without it, a session may have no `sid` to
    /// be found by.
    #[serde(default)]
    pub(crate) backchannel_logout_session_supported: bool,
}

/// The token endpoint's answer.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub(crate) access_token: String,
    #[serde(default)]
    pub(crate) id_token: Option<String>,
    #[serde(default)]
    pub(crate) refresh_token: Option<String>,
    #[serde(default, deserialize_with = "palisade_core::syntax::deserialize_expires_in")]
    pub(crate) expires_in: Option<f64>,
}

impl TokenResponse {
    /// When the access token expires, in seconds since the epoch, for an
    /// answer received at `now`: `expires_in`, else the token's own `exp`,
    /// else five minutes.
    pub(crate) fn access_token_expiry(&self, now: u64) -> u64 {
        self.expires_in
            .filter(|e| e.is_finite() && *e > 0.0)
            .map(|e| now + e.min(1e9) as u64)
            .or_else(|| {
                crate::session::unverified_claims(&self.access_token)?
                    .get("exp")?
                    .as_number()
                    .and_then(palisade_core::syntax::numeric_date)
            })
            .unwrap_or(now + 300)
    }
}

/// Why the token endpoint gave no tokens.
#[derive(Debug)]
pub(crate) enum TokenError {
    /// The issuer refused (`invalid_grant`, `invalid_client`, …): a refresh
    /// refused with `invalid_grant` ends the session; any other refusal
    /// leaves it to be tried again.
    Refused(String),
    /// The issuer could not be asked (network, timeout, 5xx, garbage).
    Unavailable(String),
}

/// The issuer's metadata (once loaded) and an HTTP client for it.
pub(crate) struct Issuer {
    pub(crate) http: reqwest::Client,
    metadata: Arc<ArcSwapOption<Metadata>>,
    /// Told each time the metadata is loaded.
    loaded: Arc<tokio::sync::Notify>,
    _stop: oneshot::Sender<()>,
}

impl Issuer {
    /// Starts loading the discovery document on a thread of its own (so it
    /// works under any runtime, or none): retried with backoff until it
    /// arrives, then refreshed hourly.
    pub(crate) fn start(config: &Config) -> Result<Self, String> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("palisade-signin/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.ca_pem {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("bad CA bundle: {e}"))?;
            b = b.tls_certs_merge(certs);
        }
        let http = b
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let metadata = Arc::new(ArcSwapOption::empty());
        let (stop, mut stopped) = oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let issuer = config.issuer.clone();
        // As every URL is said in logs: without credentials or a query's values.
        let shown = palisade_core::syntax::url_without_credentials(&issuer);
        let loaded = Arc::new(tokio::sync::Notify::new());
        let (client, slot, told) = (http.clone(), Arc::clone(&metadata), Arc::clone(&loaded));
        std::thread::Builder::new()
            .name("palisade-signin-discovery".into())
            .spawn(move || {
                rt.block_on(async move {
                    let mut wait = Duration::from_millis(200);
                    loop {
                        let next = match discover(&client, &issuer).await {
                            Ok(m) => {
                                if slot.load().is_none() {
                                    tracing::info!(target: LOG_TARGET, issuer = %shown, "sign-in ready: the issuer's discovery document is loaded");
                                }
                                slot.store(Some(Arc::new(m)));
                                told.notify_waiters();
                                wait = Duration::from_millis(200);
                                Duration::from_secs(3600)
                            }
                            Err(e) => {
                                tracing::warn!(target: LOG_TARGET, issuer = %shown, error = %e, "cannot load the issuer's discovery document; retrying");
                                wait = (wait * 2).min(Duration::from_secs(30));
                                wait
                            }
                        };
                        tokio::select! {
                            () = tokio::time::sleep(next) => {}
                            _ = &mut stopped => return,
                        }
                    }
                });
            })
            .map_err(|e| format!("cannot start the discovery thread: {e}"))?;
        Ok(Self {
            http,
            metadata,
            loaded,
            _stop: stop,
        })
    }

    /// The metadata, once loaded.
    pub(crate) fn metadata(&self) -> Option<Arc<Metadata>> {
        self.metadata.load_full()
    }

    /// The metadata, waiting up to `wait` for it to load.
    pub(crate) async fn metadata_within(&self, wait: Duration) -> Option<Arc<Metadata>> {
        let loaded = self.loaded.notified();
        tokio::pin!(loaded);
        // Listening before the look, so that a load in between is heard.
        loaded.as_mut().enable();
        if let Some(m) = self.metadata() {
            return Some(m);
        }
        let _ = tokio::time::timeout(wait, loaded).await;
        self.metadata()
    }

    /// Calls the token endpoint with `form` and the client's authentication.
    pub(crate) async fn token(
        &self,
        config: &Config,
        endpoint: &str,
        form: Vec<(&'static str, String)>,
    ) -> Result<TokenResponse, TokenError> {
        let (status, bytes) = self.post(config, endpoint, form).await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|_| TokenError::Unavailable("the token response is not the expected JSON".into()));
        }
        Err(refusal(status, &bytes, "the token endpoint"))
    }

    /// Revokes `refresh_token` at the issuer's revocation `endpoint`
    /// (RFC 7009), with the client's authentication. `200` is success,
    /// whether or not the issuer still knew the token.
    pub(crate) async fn revoke(
        &self,
        config: &Config,
        endpoint: &str,
        refresh_token: &str,
    ) -> Result<(), TokenError> {
        let form = vec![
            ("token", refresh_token.to_owned()),
            ("token_type_hint", "refresh_token".to_owned()),
        ];
        let (status, bytes) = self.post(config, endpoint, form).await?;
        if status.is_success() {
            return Ok(());
        }
        Err(refusal(status, &bytes, "the revocation endpoint"))
    }

    /// POSTs `form` to `endpoint` with the client's authentication: the
    /// answer's status and its body, up to [`TOKEN_RESPONSE_LIMIT`].
    async fn post(
        &self,
        config: &Config,
        endpoint: &str,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), TokenError> {
        let mut req = self.http.post(endpoint).header("accept", "application/json");
        match &config.client_auth {
            ClientAuth::None => form.push(("client_id", config.client_id.clone())),
            ClientAuth::Basic(secret) => {
                req = req.basic_auth(form_encode(&config.client_id), Some(form_encode(secret.expose())));
            }
            ClientAuth::Post(secret) => {
                form.push(("client_id", config.client_id.clone()));
                form.push(("client_secret", secret.expose().to_owned()));
            }
            ClientAuth::PrivateKeyJwt(key) => {
                let mut jti = [0u8; 18];
                aws_lc_rs::rand::fill(&mut jti)
                    .map_err(|_| TokenError::Unavailable("the system random generator failed".into()))?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let jti = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, jti);
                let assertion = key
                    .assertion(&config.client_id, &config.issuer, &jti, now)
                    .map_err(|()| TokenError::Unavailable("the client assertion cannot be signed".into()))?;
                form.push(("client_id", config.client_id.clone()));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let res = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| TokenError::Unavailable(e.without_url().to_string()))?;
        let status = res.status();
        let bytes = palisade_jwt::body_up_to(res, TOKEN_RESPONSE_LIMIT)
            .await
            .map_err(|e| TokenError::Unavailable(e.without_url().to_string()))?
            .ok_or_else(|| TokenError::Unavailable("the issuer's response is too large".into()))?;
        Ok((status, bytes))
    }
}

/// Why `endpoint` (named in the error) answered `status` with `body`, not
/// a success.
fn refusal(status: reqwest::StatusCode, body: &[u8], endpoint: &str) -> TokenError {
    #[derive(Deserialize)]
    struct OAuthError {
        error: String,
    }
    match (serde_json::from_slice::<OAuthError>(body), status.as_u16()) {
        // "Later", whatever the body says, as a 5xx.
        (_, 408 | 429) => TokenError::Unavailable(format!("{endpoint} answered {status}")),
        (Ok(e), _) if status.is_client_error() => TokenError::Refused(
            // The error code only: the description may echo input.
            e.error.chars().filter(char::is_ascii_graphic).take(64).collect(),
        ),
        // A refusal of what was sent without OAuth's JSON, such as a
        // proxy's 413 or 414 for a code a browser made too long. Other
        // statuses without it (401, 404: a gateway, a wrong endpoint)
        // are the service's setup, said as the issuer unavailable.
        (_, 400 | 413 | 414) => TokenError::Refused(format!("HTTP {}", status.as_u16())),
        _ => TokenError::Unavailable(format!("{endpoint} answered {status}")),
    }
}

async fn discover(client: &reqwest::Client, issuer: &str) -> Result<Metadata, String> {
    let discovery = palisade_jwt::Discovery::fetch(client, issuer, 1 << 20)
        .await
        .map_err(|e| e.to_string())?;
    // The browser is sent to the first, the code and the client's
    // credentials to the second, the ID token as a hint to the third: each
    // an http(s) URL, and over TLS when the document came over TLS.
    for member in ["authorization_endpoint", "token_endpoint"] {
        discovery.required_endpoint(member).map_err(|e| e.to_string())?;
    }
    // A logout endpoint that cannot be used costs the logout at the issuer
    // only (the session still ends here), not every sign-in.
    // So is a revocation endpoint, the refresh token's revocation at a
    // logout.
    let mut document = discovery.document().clone();
    if let Some(members) = document.as_object_mut() {
        members.remove("end_session_endpoint");
        members.remove("revocation_endpoint");
    }
    let mut m = Metadata::deserialize(&document).map_err(|e| format!("{}: {e}", discovery.shown_url()))?;
    m.end_session_endpoint = match discovery.endpoint("end_session_endpoint") {
        Ok(endpoint) => endpoint.map(str::to_owned),
        Err(e) => {
            tracing::warn!(target: LOG_TARGET, error = %e, "the issuer's logout endpoint is not used: a logout ends the session here only");
            None
        }
    };
    m.revocation_endpoint = match discovery.endpoint("revocation_endpoint") {
        Ok(endpoint) => endpoint.map(str::to_owned),
        Err(e) => {
            tracing::warn!(target: LOG_TARGET, error = %e, "the issuer's revocation endpoint is not used: a logout does not revoke the session's refresh token");
            None
        }
    };
    if let Some(methods) = &m.code_challenge_methods_supported
        && !methods.iter().any(|m| m == "S256")
    {
        return Err("the issuer does not support PKCE with S256".into());
    }
    Ok(m)
}

pub(crate) use palisade_core::form::{encode as form_encode, param};

/// How many times `name` appears in a query string or form body.
pub(crate) fn param_count(query: &str, name: &str) -> usize {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) == name)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A logout endpoint that cannot be used (`null`, not a URL) is none:
    /// sign-in works, and a logout ends the session here only.
    #[tokio::test]
    async fn a_logout_endpoint_that_cannot_be_used_is_none_and_sign_in_works() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for logout in ["null", "42", r#""not a url""#, r#""http://127.0.0.1:1/logout""#] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let issuer = format!("http://{}", listener.local_addr().unwrap());
            let body = format!(
                r#"{{"issuer":"{issuer}","authorization_endpoint":"{issuer}/auth","token_endpoint":"{issuer}/token","end_session_endpoint":{logout}}}"#
            );
            tokio::spawn(async move {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut head = vec![0; 4096];
                let _ = conn.read(&mut head).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
            let m = discover(&reqwest::Client::new(), &issuer).await.unwrap();
            let expected =
                (logout == r#""http://127.0.0.1:1/logout""#).then_some("http://127.0.0.1:1/logout");
            assert_eq!(m.end_session_endpoint.as_deref(), expected, "{logout}");
            assert_eq!(m.token_endpoint, format!("{issuer}/token"));
        }
    }

    #[test]
    fn params_are_found_by_exact_name() {
        let q = "code=abc&state=x%20y&codes=no&state=again";
        assert_eq!(param(q, "code").as_deref(), Some("abc"));
        assert_eq!(param(q, "state").as_deref(), Some("x y"));
        assert_eq!(param_count(q, "state"), 2);
        assert_eq!(param(q, "missing"), None);
    }

    #[test]
    fn expires_in_may_come_as_a_string_of_seconds() {
        let read =
            |json: &str| serde_json::from_str::<TokenResponse>(json).map(|t| t.access_token_expiry(1_000));
        assert_eq!(read(r#"{"access_token":"t","expires_in":300}"#).ok(), Some(1_300));
        assert_eq!(
            read(r#"{"access_token":"t","expires_in":"300"}"#).ok(),
            Some(1_300)
        );
        assert_eq!(read(r#"{"access_token":"t"}"#).ok(), Some(1_300), "five minutes");
        assert!(read(r#"{"access_token":"t","expires_in":{}}"#).is_err());
        // Without `expires_in`, the access token's own `exp`, a fraction
        // or not.
        let jwt = |claims: &str| {
            use base64::Engine as _;
            let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            format!(
                r#"{{"access_token":"{}.{}.c2ln"}}"#,
                b64(r#"{"alg":"RS256"}"#),
                b64(claims)
            )
        };
        assert_eq!(read(&jwt(r#"{"exp":1600}"#)).ok(), Some(1_600));
        assert_eq!(read(&jwt(r#"{"exp":1600.5}"#)).ok(), Some(1_600));
    }

    /// The token endpoint's answer to one request: `status` with `body`.
    async fn answering(status: &str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}/token", listener.local_addr().unwrap());
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            conn.write_all(head.as_bytes()).await.unwrap();
            conn.write_all(body.as_bytes()).await.unwrap();
        });
        endpoint
    }

    #[tokio::test]
    async fn a_refusal_without_oauth_json_is_a_refusal_and_a_busy_issuer_is_not() {
        let config = crate::SignIn::builder("http://127.0.0.1:9", "shop").config;
        let issuer = Issuer::start(&config).unwrap();
        let html = "<html><body>Request Entity Too Large</body></html>";
        for (status, refused) in [
            ("413 Payload Too Large", true),
            ("414 URI Too Long", true),
            ("400 Bad Request", true),
            // A gateway's or a wrong endpoint's: the setup, not the code.
            ("401 Unauthorized", false),
            ("404 Not Found", false),
            ("429 Too Many Requests", false),
            ("503 Service Unavailable", false),
        ] {
            let endpoint = answering(status, html).await;
            let answer = issuer
                .token(
                    &config,
                    &endpoint,
                    vec![("grant_type", "authorization_code".into())],
                )
                .await;
            match answer {
                Err(TokenError::Refused(e)) => assert!(refused, "{status}: refused ({e})"),
                Err(TokenError::Unavailable(e)) => assert!(!refused, "{status}: unavailable ({e})"),
                Ok(_) => panic!("{status}: answered"),
            }
        }
    }

    #[tokio::test]
    async fn a_token_response_without_end_is_read_to_the_limit_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            conn.write_all(head.as_bytes()).await.unwrap();
            let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
            // Until the client hangs up.
            while conn.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let mut config = crate::SignIn::builder("http://127.0.0.1:9", "shop").config;
        // The client's own timeout well after the test's: the limit, not
        // the clock, ends the read.
        config.timeout = Duration::from_secs(60);
        let issuer = Issuer::start(&config).unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            issuer.token(&config, &endpoint, vec![("grant_type", "refresh_token".into())]),
        )
        .await
        .expect("the answer came before the client's own timeout");
        assert!(
            matches!(&answer, Err(TokenError::Unavailable(e)) if e == "the issuer's response is too large"),
            "{:?}",
            answer.err().map(|e| match e {
                TokenError::Refused(e) | TokenError::Unavailable(e) => e,
            })
        );
    }
}
