//! [`RedisReplayStore`]: the [`ReplayStore`] every replica shares through
//! Redis (feature `redis`).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use palisade_core::Check;
use palisade_core::syntax::url_without_credentials;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

use super::{DpopConfigError, ReplayStore, ReplayStoreError};
use crate::jwks::jwks_runtime;

const LOG: &str = "palisade::jwt";

/// A [`ReplayStore`] in Redis, shared by every process that uses the same
/// server and prefix: a proof used at one replica is refused at all of
/// them. Each proof is one `SET <prefix><key> 1 NX EXAT <expiry>` (Redis
/// 6.2 or later), so records expire by themselves and the store needs no
/// cleaning.
///
/// Commands run on the process's `palisade-jwks` thread, so the store
/// works under any runtime (axum's, actix-web's single-threaded ones). One
/// connection is kept and reopened after a failure. Each answer is bounded
/// by the [command timeout](RedisReplayStoreBuilder::command_timeout) (1 s), connecting
/// included: past it, or when Redis refuses, the proof is refused with
/// [`DpopError::ReplayStoreUnavailable`](super::DpopError::ReplayStoreUnavailable)
/// (fail closed: an unchecked proof may be a replay). One `warn` line is
/// logged when Redis stops answering and one `info` line when it is back;
/// the URL is logged without its user and password.
///
/// ```no_run
/// use std::sync::Arc;
/// use palisade_jwt::dpop::{DpopSettings, RedisReplayStore};
///
/// let store = RedisReplayStore::builder("redis://redis.internal:6379/0")
///     .prefix("shop:dpop:")
///     .connect_blocking()?;
/// let mut settings = DpopSettings::default();
/// settings.replay_store = Arc::new(store);
/// # Ok::<(), palisade_jwt::dpop::DpopConfigError>(())
/// ```
#[derive(Clone)]
pub struct RedisReplayStore {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    /// The URL without credentials, for logs.
    shown: String,
    prefix: String,
    timeout: Duration,
    connection: Mutex<Option<MultiplexedConnection>>,
    /// When opening a connection last failed: commands that waited for
    /// that attempt share its failure rather than each try again.
    connecting: tokio::sync::Mutex<Option<Instant>>,
    down: AtomicBool,
}

/// Builds a [`RedisReplayStore`].
#[must_use]
pub struct RedisReplayStoreBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
}

impl fmt::Debug for RedisReplayStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplayStoreBuilder")
            .field("url", &url_without_credentials(&self.url))
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.timeout)
            .finish()
    }
}

impl fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplayStore")
            .field("url", &self.shared.shown)
            .field("prefix", &self.shared.prefix)
            .field("command_timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisReplayStore {
    /// The default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "palisade:dpop:";

    /// A builder for a store at `url` (`redis://[user:password@]host[:port][/db]`,
    /// or `rediss://` for TLS).
    pub fn builder(url: &str) -> RedisReplayStoreBuilder {
        RedisReplayStoreBuilder {
            url: url.to_owned(),
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            timeout: Duration::from_secs(1),
        }
    }

    /// The URL, its user information hidden ([`url_without_credentials`]).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.shared.shown
    }
}

impl RedisReplayStoreBuilder {
    /// The prefix of every key (default [`RedisReplayStore::DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// How long connecting and one command may take together (default 1 s,
    /// between 10 ms and 60 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The store, without connecting: the first proof connects.
    ///
    /// # Errors
    /// [`DpopConfigError::ReplayStore`] for a URL that is not a Redis URL
    /// or a timeout out of range.
    pub fn build(self) -> Result<RedisReplayStore, DpopConfigError> {
        let shown = url_without_credentials(&self.url);
        if let Some(why) = palisade_core::syntax::redis_command_timeout_problem(self.timeout) {
            return Err(DpopConfigError::ReplayStore(format!(
                "{shown}: the command timeout {why}"
            )));
        }
        let client = Client::open(self.url.as_str()).map_err(|e| {
            DpopConfigError::ReplayStore(format!("{shown}: not a Redis URL ({})", e.category()))
        })?;
        Ok(RedisReplayStore {
            shared: Arc::new(Shared {
                client,
                shown,
                prefix: self.prefix,
                timeout: self.timeout,
                connection: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(None),
                down: AtomicBool::new(false),
            }),
        })
    }

    /// The store, once Redis has answered a `PING`: for start-up, where a
    /// replay store that cannot be reached should stop the service. Blocks
    /// the calling thread for at most twice the command timeout.
    ///
    /// # Errors
    /// As [`build`](Self::build), and
    /// [`DpopConfigError::ReplayStoreUnreachable`] when Redis does not
    /// answer.
    pub fn connect_blocking(self) -> Result<RedisReplayStore, DpopConfigError> {
        let store = self.build()?;
        let shared = store.shared.clone();
        let runtime = jwks_runtime().map_err(|e| DpopConfigError::ReplayStore(format!("no runtime: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let pinged = shared
                .run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
                .await;
            let _ = tx.send(pinged);
        });
        match rx.recv_timeout(store.shared.timeout * 2) {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(why)) => Err(DpopConfigError::ReplayStoreUnreachable(format!(
                "{}: {why}",
                store.shared.shown
            ))),
            Err(_) => Err(DpopConfigError::ReplayStoreUnreachable(format!(
                "{}: no answer in time",
                store.shared.shown
            ))),
        }
    }
}

impl ReplayStore for RedisReplayStore {
    fn first_use(&self, key: &[u8; 32], expires_at: u64) -> Check<Result<bool, ReplayStoreError>> {
        let Ok(runtime) = jwks_runtime() else {
            return Check::Ready(Err(ReplayStoreError::Unavailable));
        };
        let shared = self.shared.clone();
        let name = format!("{}{}", shared.prefix, hex(key));
        // For as long as from now to the end of the second `expires_at`
        // (inclusive), on this host's clock: an `EXAT` would end the record
        // as that second begins, and earlier still on a Redis whose clock
        // runs ahead, while the proof is still accepted here.
        let ttl = expires_at
            .saturating_sub(crate::dpop::unix_now())
            .saturating_add(1);
        let join = runtime.spawn(async move {
            let set = shared
                .run(|mut c| async move {
                    redis::cmd("SET")
                        .arg(&name)
                        .arg(1)
                        .arg("NX")
                        .arg("EX")
                        .arg(ttl)
                        .query_async::<Option<String>>(&mut c)
                        .await
                })
                .await;
            set.map(|reply| reply.is_some())
                .map_err(|_| ReplayStoreError::Unavailable)
        });
        let bound = self.shared.timeout * 2 + Duration::from_secs(1);
        Check::pending(answered(join, bound))
    }
}

/// A command's answer as the request waits for it: for at most `bound`
/// (the command's own timeout starts only once the JWKS thread runs it,
/// which a busy thread may not do soon), the command abandoned when the
/// request stops waiting, or goes away (before its first poll too), so
/// that commands nobody waits for do not queue up on that thread.
fn answered(
    join: tokio::task::JoinHandle<Result<bool, ReplayStoreError>>,
    bound: Duration,
) -> impl Future<Output = Result<bool, ReplayStoreError>> + Send + 'static {
    let mut join = Abandoned(join);
    async move {
        crate::jwks::within(bound, &mut join.0)
            .await
            .and_then(Result::ok)
            .unwrap_or(Err(ReplayStoreError::Unavailable))
    }
}

/// A command's task, aborted when dropped.
struct Abandoned(tokio::task::JoinHandle<Result<bool, ReplayStoreError>>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Shared {
    /// The connection, opened when there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let kept = || {
            self.connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        if let Some(c) = kept() {
            return Ok(c);
        }
        let waiting_since = Instant::now();
        let mut last_failure = self.connecting.lock().await;
        if let Some(c) = kept() {
            return Ok(c);
        }
        if last_failure.is_some_and(|at| at >= waiting_since) {
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connecting failed while this command waited",
            )));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => {
                *last_failure = None;
                *self.connection.lock().unwrap_or_else(PoisonError::into_inner) = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                *last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Runs `f` on the connection within the timeout; after a failure,
    /// drops the connection (the next command opens a new one) and says why.
    async fn run<T, F>(&self, f: impl FnOnce(MultiplexedConnection) -> F) -> Result<T, String>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let attempt = async { f(self.connection().await?).await };
        let why = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(v)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(target: LOG, url = %self.shown, "the DPoP replay store answers again");
                }
                return Ok(v);
            }
            // The category and kind, never the message: it may quote a command.
            Ok(Err(e)) => format!("{} ({:?})", e.category(), e.kind()),
            Err(_) => "no answer in time".to_owned(),
        };
        *self.connection.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: LOG, url = %self.shown, reason = %why, "the DPoP replay store does not answer: DPoP proofs are refused until it does");
        }
        Err(why)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_shown() {
        let store = RedisReplayStore::builder("redis://user:s3cret@redis.internal:6380/2")
            .build()
            .unwrap();
        assert_eq!(store.url(), "redis://***@redis.internal:6380/2");
        assert!(!format!("{store:?}").contains("s3cret"));
        let builder = RedisReplayStore::builder("redis://:pa/s3cret@redis.internal/0");
        assert!(!format!("{builder:?}").contains("s3cret"), "{builder:?}");
        let err = builder.build().unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = RedisReplayStore::builder("redis://:s3cret@redis.internal/0")
            .command_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn a_url_that_is_not_redis_is_refused() {
        let err = RedisReplayStore::builder("http://example.com/")
            .build()
            .unwrap_err();
        assert!(matches!(err, DpopConfigError::ReplayStore(_)), "{err}");
    }

    /// A command the JWKS thread does not run in time (a busy thread) is
    /// answered as unavailable once the request's bound is over, and
    /// abandoned: it does not stay queued.
    #[test]
    fn a_command_not_run_in_time_is_unavailable_and_abandoned() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // A command the thread never gets to, holding `kept` while queued.
        let stuck = |kept: std::sync::Arc<()>| {
            tokio::spawn(async move {
                let _kept = kept;
                std::future::pending::<()>().await;
                Ok(true)
            })
        };
        let held = std::sync::Arc::new(());
        let kept = std::sync::Arc::clone(&held);
        rt.block_on(async {
            let join = stuck(kept);
            let started = Instant::now();
            let answer = answered(join, Duration::from_millis(100)).await;
            assert!(matches!(answer, Err(ReplayStoreError::Unavailable)), "{answer:?}");
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::task::yield_now().await;
        });
        assert_eq!(
            std::sync::Arc::strong_count(&held),
            1,
            "the command was abandoned"
        );
        // A request that goes away before it is first polled abandons its
        // command too.
        let held = std::sync::Arc::new(());
        let kept = std::sync::Arc::clone(&held);
        rt.block_on(async {
            drop(answered(stuck(kept), Duration::from_secs(60)));
            tokio::task::yield_now().await;
        });
        assert_eq!(std::sync::Arc::strong_count(&held), 1, "abandoned unpolled");
        // One that answers in time is its answer.
        let answer =
            rt.block_on(async { answered(tokio::spawn(async { Ok(false) }), Duration::from_secs(5)).await });
        assert!(matches!(answer, Ok(false)));
    }

    #[test]
    fn keys_are_hex() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
