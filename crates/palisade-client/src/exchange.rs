//! A token for the upstream on behalf of the caller: RFC 8693 token
//! exchange, cached per caller token.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_core::authn::{Busy, SingleFlight};
use tokio::sync::Semaphore;

// A failed exchange is every answer for its caller token for
// `RETRY_AFTER`: a token the issuer refuses (expired, foreign, not to be
// exchanged) is not asked about again at each request, and an issuer that
// is down is asked once a second per caller token.
use crate::endpoint::{GrantBuilder, Granted, RETRY_AFTER, TokenClient};
use crate::{CallerToken, ClientError, LOG_TARGET};

/// RFC 8693's grant type and its token type of an access token.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The most exchanged tokens kept.
const CAPACITY: usize = 10_000;
/// The most failures kept (each for a second).
const FAILURES_KEPT: usize = 1_000;
/// The longest caller token sent for exchange: twice a guard's default
/// limit (8 KiB). A longer one (an unverified header's junk) is refused
/// without asking the issuer, and never kept.
const MAX_SUBJECT_TOKEN: usize = 16 * 1024;
/// How many exchanges may wait for a turn, per call allowed at once.
const WAITING_PER_CALL: usize = 8;

/// The cache key: the caller's token itself (shared with its
/// [`CallerToken`]), compared in full, so a hash collision cannot hand one
/// caller another's token; hashed with a per-process random seed.
type Key = Arc<str>;
type Map<V> = HashMap<Key, V, foldhash::fast::RandomState>;

struct Inner {
    client: TokenClient,
    /// The issuers of the callers' tokens it sends: its own, and those
    /// [`subject_issuer`](GrantBuilder::subject_issuer) adds (no trailing
    /// `/`).
    subject_issuers: Vec<String>,
    audience: Option<String>,
    scope: Option<String>,
    renew_before: Duration,
    cache: Mutex<Map<Arc<Granted>>>,
    /// The last failed exchange of a caller token, and when it failed.
    failures: Mutex<Map<(Instant, ClientError)>>,
    /// The exchanges under way, one per caller token, each awaited by
    /// every request of that caller and never cut short by them.
    flights: SingleFlight<Key, Result<Arc<Granted>, ClientError>>,
    /// The calls to the issuer at once.
    permits: Semaphore,
    /// The longest an exchange waits for a turn: one call's timeout.
    turn_within: Duration,
    /// The most exchanges under way (calling or waiting for a permit).
    most_under_way: usize,
}

/// A token for the upstream's audience on behalf of the caller (RFC 8693,
/// as Keycloak's standard token exchange): the workload, a confidential
/// client, trades the caller's access token for one whose `aud` is the
/// upstream and whose `act` names the workload (RFC 8693 delegation; the
/// testkit issuer adds it, Keycloak's standard token exchange V2 names the
/// workload in `azp` only). Each caller token's exchange is made once
/// (concurrent calls wait for it) and kept in a bounded cache keyed by the
/// caller's token; from [`renew_before`](GrantBuilder::renew_before) its
/// expiry it is renewed in the background, used meanwhile, and used to
/// its end while the issuer cannot be reached; a renewal the issuer
/// refuses ends it. A failed exchange is the answer for that caller token
/// during the next second (when no valid token is at hand), without
/// asking the issuer again. A caller token over 16 KiB (twice a guard's
/// default limit: junk from an unverified header) is refused without
/// asking the issuer.
///
/// At most [`max_concurrent_calls`](GrantBuilder::max_concurrent_calls)
/// exchanges (32 by default) are asked of the issuer at once; the
/// exchanges of other caller tokens wait for a turn (at most one call's
/// [`timeout`](GrantBuilder::timeout)), up to eight times as many, beyond
/// which an exchange is refused at once as [`ClientError::Unavailable`]
/// (not kept as the caller token's failure):
/// a burst of distinct callers (a front-end's users after an outage, a
/// flood of tokens) neither floods the issuer nor queues without bound.
///
/// A caller's token verified by a Palisade guard
/// ([`CallerToken::from_request`]) is sent only when its issuer (`iss`) is
/// this exchange's issuer or one [`subject_issuer`](GrantBuilder::subject_issuer)
/// names: a service that trusts several issuers does not hand one's
/// users' tokens to another, whose operator could use them at the service.
///
/// Cloning is an `Arc` clone. `Debug` prints no secret and no token.
#[derive(Clone)]
pub struct TokenExchange(Arc<Inner>);

/// Builds a [`TokenExchange`].
pub type TokenExchangeBuilder = GrantBuilder<TokenExchange>;

impl fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchange")
            .field("issuer", &self.0.client.shown)
            .field("client_id", &self.0.client.client_id)
            .field("audience", &self.0.audience)
            .finish_non_exhaustive()
    }
}

impl GrantBuilder<TokenExchange> {
    /// Sends the tokens of callers from `issuer` for exchange too (the
    /// issuer's own callers' always are): an issuer that brokers another's
    /// tokens (Keycloak's external-to-internal exchange), or the issuer's
    /// own name in its tokens when the service reaches it by another URL
    /// (Keycloak's frontend URL).
    pub fn subject_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.subject_issuers.push(issuer.into());
        self
    }

    /// At most `calls` exchanges asked of the issuer at once (default 32,
    /// as introspection's calls); the exchanges of other caller tokens
    /// wait for a turn (at most one call's [`timeout`](Self::timeout)), up
    /// to eight times as many, and beyond that are refused at once as
    /// unavailable.
    pub fn max_concurrent_calls(mut self, calls: usize) -> Self {
        self.max_concurrent_calls = calls;
        self
    }

    /// Builds it; nothing is fetched before the first call.
    ///
    /// # Errors
    /// [`ClientError::Config`] naming the setting that cannot work.
    pub fn build(self) -> Result<TokenExchange, ClientError> {
        if self.max_concurrent_calls == 0 {
            return Err(ClientError::Config(
                "a token exchange needs at least one concurrent call (`max_concurrent_calls`)".into(),
            ));
        }
        let client = self.client("token exchange")?;
        let subject_issuers = std::iter::once(&self.issuer)
            .chain(&self.subject_issuers)
            .map(|i| i.trim_end_matches('/').to_owned())
            .collect();
        Ok(TokenExchange(Arc::new(Inner {
            client,
            subject_issuers,
            scope: self.scope(),
            audience: self.audience,
            renew_before: self.renew_before,
            cache: Mutex::new(Map::default()),
            failures: Mutex::new(Map::default()),
            flights: SingleFlight::new(),
            permits: Semaphore::new(self.max_concurrent_calls.min(Semaphore::MAX_PERMITS)),
            // Those calling, and eight times as many waiting.
            most_under_way: self.max_concurrent_calls.saturating_mul(1 + WAITING_PER_CALL),
            turn_within: self.timeout,
        })))
    }
}

impl TokenExchange {
    /// Starts building the exchanges of client `client_id` at `issuer`.
    pub fn builder(issuer: impl Into<String>, client_id: impl Into<String>) -> TokenExchangeBuilder {
        GrantBuilder::new(issuer.into(), client_id.into())
    }

    /// The `Authorization` value (`Bearer …`) of the exchanged token for
    /// `caller`.
    ///
    /// # Errors
    /// [`ClientError::Refused`] when the issuer refuses the exchange (an
    /// expired or foreign caller token, a client not allowed to exchange),
    /// [`ClientError::Unavailable`] when it cannot be reached, or too many
    /// exchanges are under way, or no turn came within one call's timeout
    /// ([`max_concurrent_calls`](GrantBuilder::max_concurrent_calls)),
    /// [`ClientError::NoCallerToken`] when the caller has no bearer token.
    pub async fn authorization(&self, caller: &CallerToken) -> Result<Arc<str>, ClientError> {
        self.granted(caller).await.map(|g| Arc::clone(&g.header))
    }

    /// The exchanged token for `caller`, exchanging it when none is cached.
    pub(crate) async fn granted(&self, caller: &CallerToken) -> Result<Arc<Granted>, ClientError> {
        let inner = &*self.0;
        let key = caller.shared().ok_or(ClientError::NoCallerToken)?;
        if key.len() > MAX_SUBJECT_TOKEN {
            return Err(ClientError::Refused(format!(
                "invalid_request (the caller's token is over {} KiB: not sent for exchange)",
                MAX_SUBJECT_TOKEN / 1024
            )));
        }
        if let Some(iss) = caller.issuer()
            && !inner
                .subject_issuers
                .iter()
                .any(|i| i == iss.trim_end_matches('/'))
        {
            return Err(ClientError::Config(format!(
                "the caller's token is from `{}`, whose tokens this exchange does not send to `{}` (add it with `subject_issuer` if it should)",
                palisade_core::syntax::url_without_credentials(iss),
                inner.client.shown
            )));
        }
        if let Some(answer) = self.answered(key) {
            return answer;
        }
        // Due for renewal and still valid: renewed in the background (not
        // again within a second of a failure), used meanwhile, as the
        // workload's own token is; no request waits on the issuer.
        let cached = lock(&inner.cache).get(&**key).cloned();
        if let Some(g) = cached.filter(|g| Instant::now() < g.expires) {
            // Not while too many exchanges are under way: the token in
            // hand is still valid, and a later request renews it.
            if !self.failed_recently(key) {
                let (this, caller) = (self.clone(), Arc::clone(key));
                let _ =
                    inner
                        .flights
                        .start_at_most(Arc::clone(key), inner.most_under_way, move || async move {
                            this.exchange(&caller).await
                        });
            }
            return Ok(g);
        }
        // A task of its own: a request that goes away (a client hanging up,
        // a timeout) neither cancels the exchange for the others waiting nor
        // makes the next request start a second one.
        let (this, caller) = (self.clone(), Arc::clone(key));
        let exchange = move || async move { this.exchange(&caller).await };
        match inner
            .flights
            .run_at_most(Arc::clone(key), inner.most_under_way, exchange)
            .await
        {
            Ok(Some(answer)) => answer,
            Ok(None) => Err(ClientError::Unavailable(
                "the token exchange ended without an answer".into(),
            )),
            Err(Busy) => {
                // A line per refused exchange would let a flood fill the
                // logs too.
                tracing::debug!(target: LOG_TARGET, issuer = %inner.client.shown, "a token exchange refused: too many under way");
                Err(ClientError::Unavailable(
                    "too many token exchanges are waiting for the issuer".into(),
                ))
            }
        }
    }

    async fn exchange(&self, caller: &Arc<str>) -> Result<Arc<Granted>, ClientError> {
        let inner = &*self.0;
        // An exchange that ended between the caller's look and this one.
        if let Some(answer) = self.answered(caller) {
            return answer;
        }
        let mut form = vec![
            ("grant_type", GRANT_TYPE),
            ("subject_token", &**caller),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
        ];
        if let Some(audience) = &inner.audience {
            crate::endpoint::push_audience(&mut form, audience);
        }
        if let Some(scope) = &inner.scope {
            form.push(("scope", scope));
        }
        // A turn within one call's timeout: the requests waiting for this
        // exchange have given up by then, and the issuer is slow to answer
        // those before (the semaphore is never closed).
        let Ok(Ok(_turn)) = tokio::time::timeout(inner.turn_within, inner.permits.acquire()).await else {
            return Err(ClientError::Unavailable(
                "the token exchange waited too long for a turn: the issuer is slow to answer the exchanges before it".into(),
            ));
        };
        let granted = match inner.client.request(form, inner.renew_before).await {
            Ok(g) => Arc::new(g),
            Err(e) => {
                tracing::info!(target: LOG_TARGET, issuer = %inner.client.shown, error = %e, "a token exchange failed");
                // Failures last a second: when the map is full, it is
                // emptied rather than searched for those that ended.
                let mut failures = lock(&inner.failures);
                if failures.len() >= FAILURES_KEPT {
                    failures.clear();
                }
                failures.insert(Arc::clone(caller), (Instant::now(), e.clone()));
                drop(failures);
                // Refused (the user disabled, the session revoked): the
                // token exchanged before is not used any more. Unreachable:
                // it is, while it lasts.
                if matches!(e, ClientError::Refused(_)) {
                    lock(&inner.cache).remove(&**caller);
                }
                return Err(e);
            }
        };
        let mut cache = lock(&inner.cache);
        if cache.len() >= CAPACITY {
            make_room(&mut cache, Instant::now());
        }
        cache.insert(Arc::clone(caller), Arc::clone(&granted));
        drop(cache);
        lock(&inner.failures).remove(&**caller);
        Ok(granted)
    }

    /// The upstream refused `sent`, exchanged for `caller`'s token: when it
    /// is still the cached one (and not fresh), it is due for renewal, and
    /// the next call starts one (used meanwhile, as a token due is).
    pub(crate) fn refused(&self, caller: &str, sent: &http::HeaderValue) {
        let refused = lock(&self.0.cache).get(caller).is_some_and(|g| g.refuse(sent));
        if refused {
            tracing::info!(target: LOG_TARGET, issuer = %self.0.client.shown, "the upstream refused an exchanged token: it is exchanged again");
        }
    }

    /// The answer an earlier exchange of `caller`'s token gave, while it
    /// holds: its token until it is due for renewal, its failure for
    /// [`RETRY_AFTER`] when no valid token is cached.
    fn answered(&self, caller: &str) -> Option<Result<Arc<Granted>, ClientError>> {
        let now = Instant::now();
        let cached = lock(&self.0.cache).get(caller).cloned();
        if let Some(g) = &cached
            && !g.due(now)
        {
            return Some(Ok(Arc::clone(g)));
        }
        if cached.is_some_and(|g| now < g.expires) {
            return None;
        }
        self.recent_failure(caller).map(Err)
    }

    /// The failure of `caller`'s last exchange, within [`RETRY_AFTER`].
    fn recent_failure(&self, caller: &str) -> Option<ClientError> {
        lock(&self.0.failures)
            .get(caller)
            .filter(|(at, _)| at.elapsed() < RETRY_AFTER)
            .map(|(_, e)| e.clone())
    }

    /// Whether `caller`'s last exchange failed within [`RETRY_AFTER`].
    fn failed_recently(&self, caller: &str) -> bool {
        self.recent_failure(caller).is_some()
    }
}

/// Room in a full cache: the expired tokens go, and when that is not an
/// eighth of it, the eighth due for renewal soonest (the next to be
/// exchanged again anyway). Emptying it would send every caller in use to
/// the issuer at once; an eighth at a time costs one pass per
/// `CAPACITY / 8` exchanges.
fn make_room(cache: &mut Map<Arc<Granted>>, now: Instant) {
    cache.retain(|_, g| g.expires > now);
    let excess = cache.len().saturating_sub(CAPACITY - CAPACITY / 8);
    palisade_core::authn::shed_soonest(cache, excess, |g| g.renew_at);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller's token verified from another issuer is not sent to this
    /// one (refused before any call); its own issuer's is (here to an
    /// issuer that does not answer), with or without a trailing `/`, and
    /// so is a named subject issuer's.
    #[tokio::test]
    async fn callers_tokens_go_only_to_their_own_or_a_named_issuer() {
        // A port nothing listens on: a call there fails at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let issuer = format!("http://{closed}/realms/shop");
        let exchange = |named: Option<&str>| {
            let b = TokenExchange::builder(issuer.clone(), "app").client_secret("s");
            match named {
                Some(n) => b.subject_issuer(n),
                None => b,
            }
            .build()
            .unwrap()
        };
        let other = "https://other.example/realms/partners";
        let err = exchange(None)
            .authorization(&CallerToken::verified("t1", other))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Config(m) if m.contains("is from `https://other.example/realms/partners`")),
            "{err}"
        );
        for (caller, named) in [
            (CallerToken::verified("t2", &issuer), None),
            (CallerToken::verified("t3", &format!("{issuer}/")), None),
            (CallerToken::verified("t4", other), Some(other)),
            // Taken as it is: no issuer known.
            (CallerToken::new("t5"), None),
        ] {
            let err = exchange(named).authorization(&caller).await.unwrap_err();
            assert!(matches!(err, ClientError::Unavailable(_)), "{err}");
        }
    }

    /// A caller's token longer than a guard would take (an unverified
    /// header's junk) is refused without asking the issuer, and is not
    /// kept as a failure.
    #[tokio::test]
    async fn a_caller_token_too_long_is_refused_without_asking_the_issuer() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let exchange = TokenExchange::builder(format!("http://{closed}/realms/shop"), "app")
            .client_secret("s")
            .build()
            .unwrap();
        let long = CallerToken::new(&"a".repeat(MAX_SUBJECT_TOKEN + 1));
        let err = exchange.authorization(&long).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Refused(m) if m.contains("16 KiB")),
            "{err}"
        );
        assert!(lock(&exchange.0.failures).is_empty());
        let at_limit = CallerToken::new(&"a".repeat(MAX_SUBJECT_TOKEN));
        let err = exchange.authorization(&at_limit).await.unwrap_err();
        assert!(matches!(err, ClientError::Unavailable(_)), "asked: {err}");
    }

    /// A burst of distinct callers: at most `max_concurrent_calls`
    /// exchanges reach the issuer at once, eight times as many wait, and
    /// the rest are refused at once without a call (and without being
    /// kept as their tokens' failures).
    #[tokio::test]
    async fn a_burst_of_callers_is_bounded_at_the_issuer_and_in_waiting() {
        let (issuer, mut seen) = an_issuer_that_never_answers_a_token_request().await;
        let exchange = TokenExchange::builder(issuer, "app")
            .client_secret("s")
            .max_concurrent_calls(2)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut waiting = Vec::new();
        // Two calling, eight times as many waiting.
        let most = 2 * (1 + WAITING_PER_CALL);
        for i in 0..most {
            let (exchange, caller) = (exchange.clone(), CallerToken::new(&format!("t{i}")));
            waiting.push(tokio::spawn(async move { exchange.authorization(&caller).await }));
        }
        // Two calls reach the issuer; the others wait for a turn.
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await
                .unwrap();
        }
        while exchange.0.flights.under_way() < most {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(seen.try_recv().is_err(), "a third call reached the issuer");
        // One more caller is refused at once; a caller already waiting is joined.
        let late = CallerToken::new("t-late");
        let late = exchange.authorization(&late);
        let err = tokio::time::timeout(Duration::from_secs(5), late)
            .await
            .expect("refused at once")
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Unavailable(m) if m.contains("too many")),
            "{err}"
        );
        assert!(lock(&exchange.0.failures).is_empty());
        let joined = tokio::time::timeout(
            Duration::from_millis(200),
            exchange.authorization(&CallerToken::new("t0")),
        )
        .await;
        assert!(
            joined.is_err(),
            "the waiting caller's exchange was joined, not refused"
        );
        assert!(waiting.iter().all(|w| !w.is_finished()));
        assert!(seen.try_recv().is_err());
    }

    /// A caller waits for a turn at most one call's timeout: with one
    /// turn, the second caller takes it when the first call times out, and
    /// the third, whose wait began before the second's call, gives up
    /// while that call is under way, saying why, without a call of its own.
    #[tokio::test]
    async fn a_turn_is_waited_for_at_most_one_calls_timeout() {
        let (issuer, mut seen) = an_issuer_that_never_answers_a_token_request().await;
        let timeout = Duration::from_secs(1);
        let exchange = TokenExchange::builder(issuer, "app")
            .client_secret("s")
            .max_concurrent_calls(1)
            .timeout(timeout)
            .build()
            .unwrap();
        let started = tokio::time::Instant::now();
        let mut callers = Vec::new();
        for i in 0..3 {
            let (each, caller) = (exchange.clone(), CallerToken::new(&format!("t{i}")));
            callers.push(tokio::spawn(async move {
                let answer = each.authorization(&caller).await;
                (answer, started.elapsed())
            }));
            // In this order at the semaphore, which is fair; the first's
            // call under way (its timeout running) before the second waits.
            if i == 0 {
                tokio::time::timeout(Duration::from_secs(10), seen.recv())
                    .await
                    .unwrap();
            }
            while exchange.0.flights.under_way() <= i {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut answers = Vec::new();
        for c in callers {
            answers.push(
                tokio::time::timeout(Duration::from_secs(10), c)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let [(first, _), (second, second_at), (third, third_at)] = &answers[..] else {
            unreachable!()
        };
        assert!(
            matches!(first, Err(ClientError::Unavailable(m)) if !m.contains("turn")),
            "{first:?}"
        );
        assert!(
            matches!(third, Err(ClientError::Unavailable(m)) if m.contains("waited too long for a turn")),
            "{third:?}"
        );
        assert!(
            *third_at < *second_at && *third_at >= timeout,
            "gave up at {third_at:?}, one timeout after it began waiting, while the second call ({second_at:?}) was under way"
        );
        assert!(second.is_err(), "{second:?}");
        // The first and the second called; the third never did.
        tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap();
        assert!(seen.try_recv().is_err());
    }

    /// A gRPC call's deadline (`grpc-timeout`) bounds the time its
    /// credential takes: an exchange the issuer never answers fails the
    /// call at the deadline, not at the exchange's own timeout, and
    /// nothing is sent.
    #[tokio::test]
    async fn a_grpc_calls_deadline_bounds_the_wait_for_its_credential() {
        use tower::ServiceExt as _;
        use tower_layer::Layer as _;
        let (issuer, _seen) = an_issuer_that_never_answers_a_token_request().await;
        let exchange = TokenExchange::builder(issuer, "app")
            .client_secret("s")
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let inner = {
            let sent = Arc::clone(&sent);
            tower::service_fn(move |_: http::Request<()>| {
                sent.store(true, std::sync::atomic::Ordering::SeqCst);
                async { Ok::<_, std::convert::Infallible>(http::Response::new(())) }
            })
        };
        let svc = crate::CredentialsLayer::fixed(crate::Credentials::TokenExchange(exchange)).layer(inner);
        let mut req = http::Request::post("http://ratings:9083/r.Ratings/Get")
            .header("grpc-timeout", "300m")
            .body(())
            .unwrap();
        req.extensions_mut().insert(CallerToken::new("t0"));
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
            .await
            .expect("the deadline ends the call")
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
        let deadline = ClientError::of(&*err).map(|e| matches!(e, ClientError::DeadlineExceeded));
        assert_eq!(deadline, Some(true), "{err}");
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst), "nothing sent");
    }

    /// The URL of an issuer that answers discovery and never answers a
    /// token request, each on a connection of its own, and a message for
    /// each token request that reaches it.
    async fn an_issuer_that_never_answers_a_token_request()
    -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/realms/shop", listener.local_addr().unwrap());
        let document = format!(r#"{{"issuer":"{issuer}","token_endpoint":"{issuer}/token"}}"#);
        let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (document, seen_tx) = (document.clone(), seen_tx.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if head.starts_with(b"GET ") {
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{document}",
                            document.len()
                        );
                        let _ = conn.write_all(answer.as_bytes()).await;
                    } else {
                        let _ = seen_tx.send(());
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        (issuer, seen)
    }

    #[test]
    fn a_max_concurrent_calls_of_zero_is_refused() {
        let err = TokenExchange::builder("https://kc.example/realms/shop", "app")
            .client_secret("s")
            .max_concurrent_calls(0)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Config(m) if m.contains("max_concurrent_calls")),
            "{err}"
        );
    }

    #[test]
    fn a_full_cache_sheds_its_expired_then_an_eighth_due_soonest_not_everything() {
        let now = Instant::now();
        let granted = |renew_in: u64, expires_in: Option<u64>| {
            let renew_at = now + Duration::from_secs(renew_in);
            Arc::new(Granted {
                header: "Bearer t".into(),
                value: http::HeaderValue::from_static("Bearer t"),
                expires: expires_in.map_or(renew_at + Duration::from_secs(30), |e| {
                    now.checked_sub(Duration::from_secs(e)).unwrap_or(now)
                }),
                renew_at,
                obtained: now,
                refused: std::sync::atomic::AtomicBool::new(false),
                dpop: None,
            })
        };
        let mut cache = Map::default();
        for i in 0..CAPACITY as u64 {
            cache.insert(Arc::from(format!("caller-{i}")), granted(100 + i, None));
        }
        make_room(&mut cache, now);
        assert_eq!(cache.len(), CAPACITY - CAPACITY / 8);
        // The ones due soonest went; the rest stayed.
        for i in 0..(CAPACITY / 8) as u64 {
            assert!(!cache.contains_key(format!("caller-{i}").as_str()), "{i}");
        }
        assert!(cache.contains_key(format!("caller-{}", CAPACITY / 8).as_str()));
        // Expired tokens go first, and when they make room, alone.
        let mut cache = Map::default();
        for i in 0..CAPACITY as u64 {
            let expired = (i % 2 == 0).then_some(1);
            cache.insert(Arc::from(format!("caller-{i}")), granted(100 + i, expired));
        }
        make_room(&mut cache, now);
        assert_eq!(cache.len(), CAPACITY / 2);
        assert!(cache.contains_key("caller-1") && !cache.contains_key("caller-0"));
    }
}
