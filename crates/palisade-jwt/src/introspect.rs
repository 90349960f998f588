//! RFC 7662 token introspection: opaque access tokens (and, when
//! configured, every JWT of an issuer) checked at the issuer's
//! introspection endpoint.
//!
//! Answers are cached by the SHA-256 of the token (the token itself is never
//! kept), never past the token's `exp` nor the configured cache time;
//! refusals for a short time of their own. Requests that carry the same
//! unknown token at the same time share one call. The calls run on the
//! process's `palisade-jwks` thread, at most
//! [`Introspection::max_concurrent_calls`] at once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_core::authn::HeaderEdits;
use palisade_core::metrics::INTROSPECTIONS;
use palisade_core::syntax::url_without_credentials;
use palisade_core::{Identity, form};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, watch};

use crate::cache::TokenCache;
use crate::config::{ConfigError, FetchSettings};
use crate::error::JwtError;
use crate::jwks::{describe, jwks_runtime, same_origin_client, within};

const LOG: &str = "palisade::jwt";

/// How the service authenticates itself to the introspection endpoint
/// (RFC 7662 requires it to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntrospectionAuth {
    /// HTTP Basic with the client id and secret, each form-encoded
    /// (RFC 6749 §2.3.1; Keycloak's and most servers' default).
    ClientSecretBasic,
    /// The client id and secret as form fields.
    ClientSecretPost,
}

/// Token introspection (RFC 7662) for one issuer: set with
/// [`ProviderBuilder::introspection`](crate::ProviderBuilder::introspection).
///
/// A token that is not a JWT (no JWS header: Keycloak's and
/// oidc-provider's opaque tokens, ZITADEL's, Ory's `ory_at_…`) is checked
/// at the introspection endpoint of the issuer whose tokens are read from
/// where it was found. An opaque token names no issuer: where two
/// introspecting issuers' tokens are read from the same place, it is
/// refused there (a warning says so when the authenticator is built), so
/// that no endpoint is sent another issuer's token. With
/// [`also_jwts`](Self::also_jwts), that issuer's JWTs are checked there too
/// instead of by their signature, so a revoked token is refused within the
/// cache time.
///
/// An active answer is checked as a JWT's claims are (`iss` when present,
/// `exp`, `nbf`, `sub` or `client_id`, `aud` against the provider's
/// audiences) and becomes the same [`Identity`]: Keycloak roles, `scope`,
/// `client_id`, every member for policies (`username` stands in for the
/// user name when the answer has no `preferred_username` and no principal
/// claim is configured).
///
/// ```
/// use std::time::Duration;
/// use palisade_jwt::{Introspection, Provider};
/// let provider = Provider::builder("https://kc.example/realms/shop")
///     .audience("details")
///     .introspection(
///         Introspection::client_secret_basic("details", "s3cret")
///             .cache_time(Duration::from_secs(30)),
///     )
///     .build()?;
/// assert!(!format!("{provider:?}").contains("s3cret"));
/// # Ok::<(), palisade_jwt::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[must_use]
pub struct Introspection {
    pub(crate) endpoint: Option<String>,
    pub(crate) client_id: String,
    pub(crate) secret: String,
    pub(crate) auth: IntrospectionAuth,
    pub(crate) jwts: bool,
    pub(crate) cache_time: Duration,
    pub(crate) negative_cache_time: Duration,
    pub(crate) cache_entries: u64,
    pub(crate) stale_for: Option<Duration>,
    pub(crate) max_concurrent_calls: usize,
}

impl fmt::Debug for Introspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspection")
            .field("endpoint", &self.endpoint.as_deref().map(url_without_credentials))
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .field("auth", &self.auth)
            .field("jwts", &self.jwts)
            .field("cache_time", &self.cache_time)
            .field("negative_cache_time", &self.negative_cache_time)
            .field("cache_entries", &self.cache_entries)
            .field("stale_for", &self.stale_for)
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .finish_non_exhaustive()
    }
}

impl Introspection {
    /// Introspection as the client `client_id`, authenticated with HTTP
    /// Basic and `secret`; the endpoint is discovered from the issuer's
    /// `/.well-known/openid-configuration` (`introspection_endpoint`).
    pub fn client_secret_basic(client_id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self::new(
            client_id.into(),
            secret.into(),
            IntrospectionAuth::ClientSecretBasic,
        )
    }

    /// As [`client_secret_basic`](Self::client_secret_basic), the secret
    /// sent as a form field.
    pub fn client_secret_post(client_id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self::new(
            client_id.into(),
            secret.into(),
            IntrospectionAuth::ClientSecretPost,
        )
    }

    fn new(client_id: String, secret: String, auth: IntrospectionAuth) -> Self {
        Self {
            endpoint: None,
            client_id,
            secret,
            auth,
            jwts: false,
            cache_time: Duration::from_secs(60),
            negative_cache_time: Duration::from_secs(5),
            cache_entries: 10_000,
            stale_for: None,
            max_concurrent_calls: 32,
        }
    }

    /// Uses this endpoint instead of discovering it.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Checks this issuer's JWTs at the endpoint too, instead of by their
    /// signature (Keycloak's lightweight access tokens carry too few
    /// claims; revocation takes effect within the cache time).
    pub fn also_jwts(mut self) -> Self {
        self.jwts = true;
        self
    }

    /// How long an active answer is used before asking again (default
    /// 60 s; never past the token's `exp`): the longest a revoked token
    /// stays accepted. Zero asks for every request.
    pub fn cache_time(mut self, time: Duration) -> Self {
        self.cache_time = time;
        self
    }

    /// How long a refusal (an inactive token, or an answer that does not
    /// fit this service) is remembered (default 5 s), so a client
    /// repeating a bad token does not make a call each time.
    pub fn negative_cache_time(mut self, time: Duration) -> Self {
        self.negative_cache_time = time;
        self
    }

    /// Answers kept at most (default 10,000).
    pub fn cache_entries(mut self, entries: u64) -> Self {
        self.cache_entries = entries;
        self
    }

    /// At most this many calls at once to the endpoint (default 32);
    /// further distinct tokens wait for a turn, up to eight times as many,
    /// beyond which they are refused at once as unavailable.
    pub fn max_concurrent_calls(mut self, calls: usize) -> Self {
        self.max_concurrent_calls = calls;
        self
    }

    /// While the endpoint cannot be reached, keeps accepting a token whose
    /// last answer was active for up to `time` past its cache time (never
    /// past its `exp`). A relaxation: a token revoked during an outage
    /// stays accepted; logged at start-up and at each use.
    pub fn serve_stale_when_unreachable(mut self, time: Duration) -> Self {
        self.stale_for = Some(time);
        self
    }

    /// Checks the settings (called by the provider's `build`).
    pub(crate) fn check(&self, issuer: &str) -> Result<(), ConfigError> {
        if self.client_id.is_empty() || self.secret.is_empty() {
            return Err(ConfigError::OutOfRange(format!(
                "issuer `{issuer}`: introspection needs a client id and a secret"
            )));
        }
        if let Some(e) = &self.endpoint {
            if !palisade_core::syntax::is_http_url(e) {
                return Err(ConfigError::OutOfRange(format!(
                    "issuer `{issuer}`: the introspection endpoint `{}` is not an http(s) URL",
                    url_without_credentials(e)
                )));
            }
            if palisade_core::syntax::plain_http_elsewhere(e) {
                tracing::warn!(target: LOG, issuer = %url_without_credentials(issuer), endpoint = %url_without_credentials(e), "introspection over plain http: the client secret and tokens cross the network in clear");
            }
        }
        if self.max_concurrent_calls == 0 {
            return Err(ConfigError::OutOfRange(format!(
                "issuer `{issuer}`: introspection needs at least one concurrent call"
            )));
        }
        if let Some(stale) = self.stale_for {
            tracing::warn!(target: LOG, issuer = %url_without_credentials(issuer), stale_for = ?stale, "introspection answers are served stale while the endpoint is unreachable: revoked tokens stay accepted meanwhile");
        }
        Ok(())
    }
}

/// An active answer, checked and mapped: what a cached answer hands to
/// each request.
pub(crate) struct Active {
    pub(crate) identity: Identity,
    /// Every header edit for a request with the token, by the index of
    /// the place it was read from (its removal, then claims copied to
    /// headers): shared by every request.
    pub(crate) edits: Vec<HeaderEdits>,
    pub(crate) exp: Option<f64>,
    pub(crate) nbf: Option<f64>,
}

/// Turns an answer's members into an [`Active`], or the refusal.
pub(crate) type Convert = Arc<dyn Fn(Map<String, Value>) -> Result<Active, JwtError> + Send + Sync>;

type Outcome = Result<Arc<Active>, JwtError>;

struct Answer {
    outcome: Outcome,
    /// Used without asking until then (unix seconds).
    fresh_until: f64,
    /// Kept until then: past `fresh_until` only to be served stale.
    keep_until: f64,
}

/// One provider's introspection: its client, cache and calls in flight.
pub(crate) struct Introspector {
    issuer: String,
    cfg: Introspection,
    fetch: FetchSettings,
    client: Result<reqwest::Client, String>,
    runtime: Option<tokio::runtime::Handle>,
    /// The endpoint the issuer's discovery document names, once found: one
    /// discovery at a time (calls that need it meanwhile wait for it); a
    /// failed one is tried again by the next call.
    discovered: tokio::sync::OnceCell<Arc<str>>,
    /// When the last discovery failed: the calls waiting for one fail at
    /// once until `min_refresh_interval` has passed, rather than each
    /// trying again in turn against an issuer that is down.
    discovery_failed: Mutex<Option<std::time::Instant>>,
    cache: TokenCache<Arc<Answer>>,
    in_flight: Mutex<HashMap<TokenKey, watch::Receiver<Option<Outcome>>>>,
    permits: Semaphore,
    active: metrics::Counter,
    inactive: metrics::Counter,
    failure: metrics::Counter,
    /// Whether the endpoint is failing, and whether that was said: one
    /// warning per outage (at most one a minute, for an endpoint that
    /// fails and answers in turn), its end said after it.
    health: Mutex<Health>,
    failing_said: palisade_core::logging::Sparse,
}

/// What the introspection client has said of its endpoint.
#[derive(Default)]
struct Health {
    /// The last call failed.
    failing: bool,
    /// A warning was said since the endpoint last answered.
    warned: bool,
}

/// Removes a call from the calls in flight when dropped.
struct Done<'a>(&'a Introspector, TokenKey);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.1);
    }
}

/// The cache key of a token: its SHA-256, base64url (made on the stack:
/// a cache hit allocates nothing for it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey([u8; 43]);

impl TokenKey {
    pub(crate) fn of(token: &str) -> Self {
        let mut out = [0u8; 43];
        let hash = digest::digest(&digest::SHA256, token.as_bytes());
        // 32 bytes are exactly 43 base64url characters without padding.
        let _ = URL_SAFE_NO_PAD.encode_slice(hash.as_ref(), &mut out);
        Self(out)
    }
}

/// Whether a token has the shape of a compact JWS (three parts, a JSON
/// object header): anything else is an opaque token.
pub(crate) fn looks_like_jws(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    // `{` in base64url: `ey` (`{"`), `ew` (`{\n`), `e3` (`{}`) or `eyA`-like.
    URL_SAFE_NO_PAD
        .decode(header.get(..header.len().min(8)).unwrap_or_default())
        .or_else(|_| URL_SAFE_NO_PAD.decode(header.get(..4).unwrap_or_default()))
        .is_ok_and(|b| b.trim_ascii_start().first() == Some(&b'{'))
}

/// The members of an introspection answer (a 200's body), or `None` when
/// it is not a JSON object.
pub(crate) fn parse_answer(body: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice(body).ok()
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Introspector {
    /// The introspector of `issuer`; `offline` never calls (every unknown
    /// token is then unavailable).
    pub(crate) fn new(
        issuer: &str,
        cfg: Introspection,
        fetch: FetchSettings,
        offline: bool,
    ) -> std::io::Result<Self> {
        let runtime = if offline { None } else { Some(jwks_runtime()?) };
        let issuer_label = crate::jwks::metric_label(issuer);
        let counter = |result: &'static str| metrics::counter!(INTROSPECTIONS, "issuer" => issuer_label.clone(), "result" => result);
        Ok(Self {
            issuer: issuer.to_owned(),
            client: same_origin_client(&fetch),
            permits: Semaphore::new(cfg.max_concurrent_calls),
            cache: TokenCache::new(cfg.cache_entries.max(1)),
            active: counter("active"),
            inactive: counter("inactive"),
            failure: counter("failure"),
            health: Mutex::new(Health::default()),
            failing_said: palisade_core::logging::Sparse::per_minute(),
            cfg,
            fetch,
            runtime,
            discovered: tokio::sync::OnceCell::new(),
            discovery_failed: Mutex::new(None),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this issuer's JWTs are introspected too.
    pub(crate) fn jwts(&self) -> bool {
        self.cfg.jwts
    }

    /// A fresh cached answer for the token of `key`.
    pub(crate) fn cached(&self, key: &TokenKey, now: f64) -> Option<Outcome> {
        let answer = self.cache.get(&key.0)?;
        (now < answer.fresh_until).then(|| answer.outcome.clone())
    }

    /// Asks the endpoint about `token` (or joins the call already asking),
    /// caches the answer and returns it.
    pub(crate) async fn check(self: &Arc<Self>, key: TokenKey, token: Arc<str>, convert: Convert) -> Outcome {
        let Some(runtime) = &self.runtime else {
            return Err(JwtError::IntrospectionUnavailable);
        };
        let mut rx = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(rx) = in_flight.get(&key) {
                rx.clone()
            } else if let Some(outcome) = self.cached(&key, now_secs()) {
                // A call that ended since the caller looked: its answer is
                // cached before the call leaves the map.
                return outcome;
            } else if in_flight.len() >= self.cfg.max_concurrent_calls.saturating_mul(8) {
                // A flood of distinct unknown tokens: refuse at once rather
                // than queue calls without bound.
                // The metric counts it; a line per refused token would let
                // the flood fill the logs too.
                self.failure.increment(1);
                tracing::debug!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&self.issuer), "token introspection refused: too many calls waiting");
                return Err(JwtError::IntrospectionUnavailable);
            } else {
                let (tx, rx) = watch::channel(None);
                in_flight.insert(key, rx.clone());
                let this = Arc::clone(self);
                // On the jwks thread: the call completes (and is cached)
                // even if every request waiting for it goes away.
                runtime.spawn(async move {
                    // Out of the map however the call ends (even by a panic).
                    let _done = Done(&this, key);
                    let outcome = this.ask(&key, &token, &convert).await;
                    tx.send_replace(Some(outcome));
                });
                rx
            }
        };
        // The call is bounded by the client's timeout; this bound only
        // guards against a call that never reports.
        let bound = self
            .fetch
            .timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(1));
        match within(bound, rx.wait_for(Option::is_some)).await {
            Some(Ok(v)) => v.clone().unwrap_or(Err(JwtError::IntrospectionUnavailable)),
            Some(Err(_)) | None => Err(JwtError::IntrospectionUnavailable),
        }
    }

    async fn ask(&self, key: &TokenKey, token: &str, convert: &Convert) -> Outcome {
        let key = &key.0;
        let answer = match self.call(token).await {
            Ok(members) => members,
            Err(reason) => {
                self.failure.increment(1);
                // Said when the endpoint starts failing, and when it answers
                // again; in between each failure is counted, and said at
                // `DEBUG`.
                let first = {
                    let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
                    health.failing = true;
                    let say = !health.warned && self.failing_said.due();
                    health.warned |= say;
                    say
                };
                let now = now_secs();
                let stale = self
                    .cfg
                    .stale_for
                    .and_then(|_| self.cache.get(key))
                    .filter(|old| now < old.keep_until && old.outcome.is_ok());
                if let Some(old) = stale {
                    if first {
                        tracing::warn!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&self.issuer), error = %reason, "token introspection failed: serving the last answers (serve_stale_when_unreachable)");
                    } else {
                        tracing::debug!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&self.issuer), error = %reason, "token introspection failed: serving the last answer");
                    }
                    return old.outcome.clone();
                }
                if first {
                    tracing::warn!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&self.issuer), error = %reason, "token introspection failed: tokens refused until it answers again");
                } else {
                    tracing::debug!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&self.issuer), error = %reason, "token introspection failed: token refused");
                }
                return Err(JwtError::IntrospectionUnavailable);
            }
        };
        let recovered = {
            let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            let warned = health.failing && health.warned;
            *health = Health::default();
            warned
        };
        if recovered {
            tracing::info!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&self.issuer), "token introspection answers again");
        }
        let now = now_secs();
        let outcome = convert(answer).map(Arc::new);
        let answer = match &outcome {
            Ok(active) => {
                self.active.increment(1);
                let exp = active.exp.unwrap_or(f64::INFINITY);
                let fresh_until = (now + self.cfg.cache_time.as_secs_f64()).min(exp);
                let keep_until = self
                    .cfg
                    .stale_for
                    .map_or(fresh_until, |s| (fresh_until + s.as_secs_f64()).min(exp));
                Answer {
                    outcome: outcome.clone(),
                    fresh_until,
                    keep_until,
                }
            }
            Err(e) => {
                self.inactive.increment(1);
                tracing::debug!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&self.issuer), reason = %e, "introspected token refused");
                let until = now + self.cfg.negative_cache_time.as_secs_f64();
                Answer {
                    outcome: outcome.clone(),
                    fresh_until: until,
                    keep_until: until,
                }
            }
        };
        if answer.keep_until > now {
            // Refusals are evicted first: a flood of tokens the endpoint
            // refuses (junk) does not push out the active ones.
            self.cache.insert_sparing(
                key,
                Arc::new(answer),
                |a| a.keep_until < now,
                |a| a.outcome.is_err(),
            );
        } else if outcome.is_err() {
            // A refusal kept for no time (`negativeCacheTime: 0`) still
            // replaces the token's last answer: an active one left behind
            // would be served, stale, at the endpoint's next failure, to a
            // token it has since refused (revoked).
            self.cache.remove(key);
        }
        outcome
    }

    /// One call to the endpoint: the answer's members, or why there is none.
    async fn call(&self, token: &str) -> Result<Map<String, Value>, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let endpoint = self.endpoint(client).await?;
        // What errors (and so the logs) say of it: no user information.
        let shown = url_without_credentials(&endpoint);
        let mut body = format!("token={}&token_type_hint=access_token", form::encode(token));
        let mut request = client
            .post(&*endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        let (id, secret) = (form::encode(&self.cfg.client_id), form::encode(&self.cfg.secret));
        match self.cfg.auth {
            // reqwest marks the header sensitive (kept out of `Debug` and
            // of HTTP/2's header index), as sign-in's token requests do.
            IntrospectionAuth::ClientSecretBasic => request = request.basic_auth(id, Some(secret)),
            IntrospectionAuth::ClientSecretPost => {
                body.push_str(&format!("&client_id={id}&client_secret={secret}"));
            }
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "shutting down".to_owned())?;
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{shown}: {}", describe(&e)))?;
        let status = response.status().as_u16();
        let max = self.fetch.max_body;
        let bytes = crate::body_up_to(response, max)
            .await
            .map_err(|e| format!("{shown}: {}", describe(&e)))?
            .ok_or_else(|| format!("{shown}: answer larger than {max} bytes"))?;
        if status != 200 {
            // An OAuth error answer names its error code (RFC 6749 §5.2).
            let code = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_graphic()));
            let why = match (status, code.as_deref()) {
                (_, Some("invalid_client")) | (401 | 403, _) => {
                    ": this service's client credentials were refused"
                }
                _ => "",
            };
            return Err(format!(
                "{shown}: HTTP {status} {}{why}",
                code.unwrap_or_default()
            ));
        }
        parse_answer(&bytes).ok_or_else(|| format!("{shown}: the answer is not a JSON object"))
    }

    /// The configured endpoint, or the one the issuer's discovery document names.
    async fn endpoint(&self, client: &reqwest::Client) -> Result<Arc<str>, String> {
        if let Some(e) = &self.cfg.endpoint {
            return Ok(e.as_str().into());
        }
        let discover = || async {
            let failed = *self
                .discovery_failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if failed.is_some_and(|t| t.elapsed() < self.fetch.min_refresh_interval) {
                return Err(format!(
                    "{}: discovery failed moments ago",
                    palisade_core::syntax::url_without_credentials(&self.issuer)
                ));
            }
            let found = self.discover(client).await;
            if found.is_err() {
                *self
                    .discovery_failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(std::time::Instant::now());
            }
            found
        };
        self.discovered.get_or_try_init(discover).await.map(Arc::clone)
    }

    /// The endpoint the issuer's discovery document names.
    async fn discover(&self, client: &reqwest::Client) -> Result<Arc<str>, String> {
        crate::Discovery::fetch_endpoint(
            client,
            &self.issuer,
            self.fetch.max_body,
            "introspection_endpoint",
        )
        .await
        .map(Into::into)
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls that need the endpoint at once make one discovery request; a
    /// failure is shared by the calls waiting for it and those of the next
    /// `min_refresh_interval`, then tried again; a found endpoint is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_endpoint_is_discovered_once_for_calls_at_once() {
        use std::io::{Read as _, Write as _};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(AtomicUsize::new(0));
        let served = issuer.clone();
        let counter = Arc::clone(&asked);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let (served, counter) = (served.clone(), Arc::clone(&counter));
                std::thread::spawn(move || {
                    let mut stream = stream.unwrap();
                    let mut head = Vec::new();
                    let mut byte = [0; 1];
                    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    // The first discovery fails; the others answer, slowly.
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(200));
                    let body = if n == 0 {
                        "{}".to_owned()
                    } else {
                        format!(r#"{{"issuer":"{served}","introspection_endpoint":"{served}/introspect"}}"#)
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        let fetch = FetchSettings {
            // Long enough that the second batch below comes within it on a
            // loaded machine.
            min_refresh_interval: Duration::from_secs(2),
            ..FetchSettings::default()
        };
        let introspector = Arc::new(
            Introspector::new(
                &issuer,
                Introspection::client_secret_basic("rs", "s"),
                fetch.clone(),
                false,
            )
            .unwrap(),
        );
        let client = same_origin_client(&fetch).unwrap();
        let all = |n: usize| {
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..n {
                let (introspector, client) = (Arc::clone(&introspector), client.clone());
                calls.spawn(async move { introspector.endpoint(&client).await });
            }
            calls.join_all()
        };
        // The first discovery fails; the calls waiting for it fail at once
        // rather than each asking again.
        assert!(all(6).await.iter().all(Result::is_err));
        assert_eq!(asked.load(Ordering::SeqCst), 1, "one discovery for six calls");
        assert!(all(6).await.iter().all(Result::is_err), "within the interval");
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // After it, one call asks again, and the others take what it found.
        tokio::time::sleep(Duration::from_millis(2050)).await;
        let found = all(6).await;
        let endpoint = format!("{issuer}/introspect");
        assert!(found.iter().all(|e| e.as_deref() == Ok(&*endpoint)), "{found:?}");
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // Kept.
        introspector.endpoint(&client).await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn only_jws_shaped_tokens_are_taken_for_jwts() {
        assert!(looks_like_jws("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"));
        assert!(looks_like_jws("ewogImFsZyI6IlJTMjU2In0.e30.c2ln"));
        assert!(!looks_like_jws("2YotnFZFEjr1zCsicMWpAA"));
        assert!(!looks_like_jws("ory_at_abcdef.ghijkl"));
        assert!(!looks_like_jws("abc.def.ghi"));
        assert!(!looks_like_jws("eyJhbGciOiJSUzI1NiJ9.e30.c2ln.x.y"));
        assert!(!looks_like_jws(""));
    }

    #[test]
    fn an_answer_is_mapped_as_a_token_only_when_it_says_active() {
        let jwt = crate::JwtAuthenticator::builder()
            .provider(
                crate::Provider::builder("https://i.example")
                    .audience("api")
                    .introspection(
                        Introspection::client_secret_basic("rs", "s")
                            .endpoint("http://127.0.0.1:9/introspect"),
                    )
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let answer = |body: &str| jwt.introspection_answer("https://i.example", body.as_bytes());
        let id = answer(r#"{"active":true,"sub":"alice","aud":"api","exp":4102444800}"#).unwrap();
        assert_eq!(id.subject(), Some("alice"));
        for access in ["access_token", "access"] {
            let body =
                format!(r#"{{"active":true,"sub":"a","aud":"api","exp":4102444800,"token_use":"{access}"}}"#);
            assert!(answer(&body).is_ok(), "{body}: Ory's and Cognito's access tokens");
        }
        assert_eq!(id.issuer(), Some("https://i.example"));
        for (body, refusal) in [
            (
                r#"{"active":false,"sub":"alice","aud":"api"}"#,
                JwtError::Inactive,
            ),
            (
                r#"{"active":"true","sub":"alice","aud":"api"}"#,
                JwtError::Inactive,
            ),
            (r#"{"sub":"alice","aud":"api"}"#, JwtError::Inactive),
            (
                r#"{"active":true,"iss":"https://other","sub":"a","aud":"api"}"#,
                JwtError::UnknownIssuer,
            ),
            (
                r#"{"active":true,"sub":"a","aud":"api","exp":1}"#,
                JwtError::Expired,
            ),
            (
                r#"{"active":true,"sub":"a","aud":"api","token_type":"refresh_token"}"#,
                JwtError::WrongType,
            ),
            (
                r#"{"active":true,"sub":"a","aud":"api","exp":4102444800,"client_id":"web","token_use":"refresh_token"}"#,
                JwtError::WrongType,
            ),
            (
                r#"{"active":true,"sub":"a","aud":"api","exp":4102444800,"token_use":"id"}"#,
                JwtError::WrongType,
            ),
            (r#"[{"active":true}]"#, JwtError::IntrospectionUnavailable),
            // DPoP-bound, its key unnamed: no bearer token.
            (
                r#"{"active":true,"sub":"a","aud":"api","exp":4102444800,"token_type":"DPoP"}"#,
                JwtError::InvalidClaim("cnf"),
            ),
            // So as Keycloak says it.
            (
                r#"{"active":true,"sub":"a","aud":"api","exp":4102444800,"typ":"DPoP"}"#,
                JwtError::InvalidClaim("cnf"),
            ),
        ] {
            assert_eq!(answer(body).unwrap_err(), refusal, "{body}");
        }
        assert_eq!(
            jwt.introspection_answer("https://other", b"{}").unwrap_err(),
            JwtError::UnknownIssuer
        );
    }

    /// An introspection answer's claims are mapped and checked as a
    /// signed token's: the provider's roles claim, its own check, and
    /// `username` as the name only where no principal claim is set.
    #[test]
    fn an_answer_gets_the_providers_roles_claim_and_check() {
        let jwt = |principal: Option<&str>| {
            let b = crate::Provider::builder("https://i.example")
                .audience("api")
                .introspection(
                    Introspection::client_secret_basic("rs", "s").endpoint("http://127.0.0.1:9/introspect"),
                )
                .roles_claim("groups")
                .check_claims(|t| {
                    if t.claims.contains_key("tid") {
                        Ok(())
                    } else {
                        Err("no tenant")
                    }
                });
            let b = match principal {
                Some(p) => b.principal_claim(p),
                None => b,
            };
            crate::JwtAuthenticator::builder()
                .provider(b.build().unwrap())
                .build()
                .unwrap()
        };
        let body = r#"{"active":true,"sub":"a","aud":"api","exp":4102444800,"username":"al","email":"a@x","tid":"t","groups":["admin"]}"#;
        let id = jwt(None)
            .introspection_answer("https://i.example", body.as_bytes())
            .unwrap();
        assert!(id.has_realm_role("admin"));
        assert_eq!(id.name(), Some("al"));
        let id = jwt(Some("email"))
            .introspection_answer("https://i.example", body.as_bytes())
            .unwrap();
        assert_eq!(id.name(), Some("a@x"));
        let unchecked = r#"{"active":true,"sub":"a","aud":"api","exp":4102444800}"#;
        assert_eq!(
            jwt(None)
                .introspection_answer("https://i.example", unchecked.as_bytes())
                .unwrap_err(),
            JwtError::ClaimsRefused("no tenant")
        );
    }

    #[test]
    fn the_cache_key_is_a_hash_not_the_token() {
        let key = TokenKey::of("secret-token");
        let text = std::str::from_utf8(&key.0).unwrap();
        assert_eq!(text.len(), 43);
        assert!(!text.contains("secret"));
        assert!(key == TokenKey::of("secret-token"));
        assert!(key != TokenKey::of("secret-token2"));
    }

    #[test]
    fn settings_are_checked_and_the_secret_never_printed() {
        let ok = Introspection::client_secret_basic("rs", "hunter2");
        assert!(ok.check("https://i").is_ok());
        assert!(!format!("{ok:?}").contains("hunter2"));
        assert!(
            Introspection::client_secret_basic("rs", "")
                .check("https://i")
                .is_err()
        );
        assert!(
            Introspection::client_secret_post("", "x")
                .check("https://i")
                .is_err()
        );
        assert!(
            Introspection::client_secret_basic("rs", "x")
                .endpoint("ftp://x/introspect")
                .check("https://i")
                .is_err()
        );
        assert!(
            Introspection::client_secret_basic("rs", "x")
                .max_concurrent_calls(0)
                .check("https://i")
                .is_err()
        );
    }
}
