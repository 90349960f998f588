//! The store shared between replicas through Redis (feature `redis`).
//!
//! # How the revocation mirror stays in sync
//!
//! A revocation is written in one transaction to a sorted set
//! (`<prefix>revoked`, the member names what is revoked, the score is
//! `until` in Unix milliseconds; entries past `until` are trimmed at each
//! write) and to a stream (`<prefix>revoked:stream`, trimmed to about
//! 10 000 entries) that announces it.
//!
//! Each replica keeps every revocation in memory and follows the stream
//! with `XREAD BLOCK` on a connection of its own. When that connection
//! opens (at [`RedisStoreBuilder::connect`] and after every failure) the
//! replica notes the stream's last entry, loads the sorted set, then reads
//! the stream from that entry: nothing written meanwhile is missed. A
//! revocation reaches the other replicas in the time of one round trip. A
//! replica that falls further behind than the stream keeps, or whose
//! stream was deleted under it (a read that starts after an entry no
//! longer in the stream), reloads the set rather than skip what it did not
//! read, refusing sessions until it has (fail closed), with one `warn`
//! line.
//! Loading merges into what the replica knows, so a Redis that lost its
//! data (restarted without persistence) does not make revoked sessions
//! valid again on the replicas that saw the revocation; replicas started
//! after such a loss do not know it. Run Redis with persistence (AOF) when
//! that matters.
//!
//! A revocation that Redis cannot record (an outage, a timeout) is still
//! honoured by the replica that made it, and kept: the mirror writes it
//! the next time Redis answers (after a read of the stream or a
//! reconnection, in transactions of at most 500), so the other replicas
//! learn it then. [`SessionStore::revoke`]
//! answers [`StoreError::Unavailable`] meanwhile, as it did. The writes
//! run on a task of their own, so the mirror's reads go on; after a write
//! that fails while reads work, the next waits, from 50 ms doubling to
//! 30 s. A replica keeps at most 1 000
//! such revocations, each once; one `info` line says how many were written
//! late, one `warn` line when some could not be kept. They live in that
//! replica's memory only: a replica that stops first loses them.
//!
//! Each `XREAD` returns at least every quarter of `max_staleness`, so a
//! replica knows when it last heard from Redis. After a read, at most once
//! per such quarter, the mirror writes something that changes nothing
//! (`ZADD … XX` of a member never added): a Redis that answers reads and
//! refuses writes (a read-only replica after a failover, out of memory,
//! `min-replicas-to-write` unmet) can record no logout for any replica,
//! so the mirror counts as heard from only while Redis takes writes too,
//! and every replica fails closed together; one `warn` line says so, one
//! `info` line when writes work again. When the mirror last heard from
//! Redis longer ago than `max_staleness` (5 s by default), [`SessionStore::is_revoked`]
//! answers [`StoreError::Unavailable`] (fail closed) until the mirror has
//! reconnected and reloaded. One `warn` line is logged when the mirror goes
//! stale and one `info` line when it is back; reconnection backs off from
//! 50 ms to 1 s.
//!
//! # Session data
//!
//! A session too large for cookies is kept under `<prefix>session:<id>`,
//! and its generation (how often it was refreshed) under
//! `<prefix>session-generation:<id>`, written together by one script that
//! writes nothing when the store holds a later generation
//! ([`SessionStore::put_session`]): a replica that read the session before
//! another refreshed it cannot put the older copy back.
//!
//! # The runtime thread
//!
//! The store runs its connections and commands on a thread of its own with
//! a single-threaded tokio runtime, started by `connect` and stopped when
//! the last clone of the [`RedisStore`] is dropped. Its futures can thus be
//! awaited on any runtime: axum's multi-threaded one, actix-web's
//! single-threaded ones, or none. Every command has a timeout (1 s by
//! default): a Redis that hangs makes requests fail with
//! [`StoreError::Unavailable`], it does not hang them.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use palisade_core::BoxFuture;
use palisade_core::syntax::url_without_credentials;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, RedisError};
use serde_json::Value as Json;

use super::revocations::RevocationSet;
use super::{LOG_TARGET, Revocation, SessionRef, SessionStore, StoreError, bounded_ttl, unix_ms};

/// The default key prefix.
const DEFAULT_PREFIX: &str = "palisade:";
/// The default [`RedisStoreBuilder::max_staleness`].
const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(5);
/// The default [`RedisStoreBuilder::command_timeout`].
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// The stream keeps about this many announcements.
const STREAM_LENGTH: u32 = 10_000;
/// How many announcements one `XREAD` returns at most: fewer than the
/// stream keeps, so that a replica that fell further behind reads a full
/// batch (`follow`).
const READ_COUNT: u32 = 1000;
const _: () = assert!(READ_COUNT < STREAM_LENGTH);
/// The mirror's reconnection backoff.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the mirror forgets expired revocations.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// At most this many revocations wait to be written after a failure: a
/// tenth of what the stream keeps, so that several replicas writing theirs
/// at once do not push entries out before the others have read them.
const MAX_UNRECORDED: usize = 1_000;
/// The longest pause between two tries to write them.
const MAX_LATE_BACKOFF: Duration = Duration::from_secs(30);
/// They are written this many to a transaction.
const RECORD_CHUNK: usize = 500;

/// The store shared between replicas through Redis; see the module docs.
///
/// ```no_run
/// use palisade_signin::store::{RedisStore, SessionStore};
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), palisade_signin::store::StoreError> {
/// let store = RedisStore::builder("redis://redis.internal:6379/0")
///     .prefix("shop:")
///     .connect()
///     .await?;
/// assert!(store.use_once("jti-1", Duration::from_secs(300)).await?);
/// # Ok(())
/// # }
/// ```
///
/// Cheap to clone. `Debug` prints the URL without its password.
#[derive(Clone)]
pub struct RedisStore {
    handle: Arc<Handle>,
}

/// What the clones share; dropping it stops the runtime thread.
struct Handle {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    /// Dropped with the handle: the runtime thread then ends.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The state the runtime's tasks and the callers share.
struct Shared {
    client: Client,
    /// The URL without its password, for messages.
    url: String,
    keys: Keys,
    command_timeout: Duration,
    max_staleness: Duration,
    /// How long one `XREAD` blocks.
    block: Duration,
    /// The commands' connection, opened on first use and after a failure.
    connection: Mutex<Option<MultiplexedConnection>>,
    /// Held while a command opens the connection, so one does.
    connecting: tokio::sync::Mutex<Option<Instant>>,
    mirror: RwLock<RevocationSet>,
    /// When `mirror` was last known complete: nanoseconds since `epoch`.
    synced: AtomicU64,
    /// The mirror is known to lack announcements the stream no longer
    /// holds, until it has reloaded (fail closed meanwhile).
    incomplete: AtomicBool,
    epoch: Instant,
    /// Whether the warning that the mirror is stale was logged and its
    /// recovery not yet.
    stale_logged: AtomicBool,
    /// Revocations Redis did not record, written when it next answers.
    unrecorded: Mutex<Vec<Revocation>>,
    /// Wakes the task that writes them: Redis answered a read.
    answered: tokio::sync::Notify,
    /// Whether revocations were dropped at the cap and that was logged.
    cap_logged: AtomicBool,
}

struct Keys {
    revoked: String,
    stream: String,
    used: String,
    session: String,
    /// Beside a session's data, its generation (`put_session`).
    generation: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &*self.handle.shared;
        f.debug_struct("RedisStore")
            .field("url", &shared.url)
            .field("revoked_key", &shared.keys.revoked)
            .field("max_staleness", &shared.max_staleness)
            .field("command_timeout", &shared.command_timeout)
            .finish_non_exhaustive()
    }
}

/// Configures a [`RedisStore`]. `Debug` prints the URL without its
/// password.
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    max_staleness: Duration,
    command_timeout: Duration,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &url_without_credentials(&self.url))
            .field("prefix", &self.prefix)
            .field("max_staleness", &self.max_staleness)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://[:PASSWORD@]HOST:PORT/DB`) with the
    /// default settings, loads the revocations and starts following them.
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        Self::builder(url).connect().await
    }

    /// [`connect`](Self::connect) for synchronous start-up code; see
    /// [`RedisStoreBuilder::connect_blocking`].
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::connect`].
    pub fn connect_blocking(url: &str) -> Result<RedisStore, StoreError> {
        Self::builder(url).connect_blocking()
    }

    /// A builder for a store at `url`, to change the defaults.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            max_staleness: DEFAULT_MAX_STALENESS,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// Runs `task` on the store's runtime; the future works on any runtime.
    fn spawn<T, F>(&self, task: impl FnOnce(Arc<Shared>) -> F) -> BoxFuture<Result<T, StoreError>>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let join = self.handle.runtime.spawn(task(self.handle.shared.clone()));
        Box::pin(async move { join.await.unwrap_or(Err(StoreError::Unavailable)) })
    }

    fn command<T: FromRedisValue + Send + 'static>(&self, cmd: Cmd) -> BoxFuture<Result<T, StoreError>> {
        self.spawn(|shared| async move { shared.query(&cmd).await })
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key the store uses. Default `palisade:`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// How long the revocation mirror may go without hearing from Redis
    /// before [`SessionStore::is_revoked`] fails closed. Default 5 s; at
    /// least 40 ms.
    pub fn max_staleness(mut self, max: Duration) -> Self {
        self.max_staleness = max;
        self
    }

    /// How long a command (and connecting) may take before it fails with
    /// [`StoreError::Unavailable`]. Default 1 s; between 10 ms and 60 s.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Starts the store's runtime thread, connects, loads the revocations
    /// and starts following them. Can be awaited on any runtime (or with
    /// none), the work runs on the store's own thread.
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] for a URL the client does not understand or
    /// settings out of bounds; [`StoreError::Connect`], naming the URL
    /// without its password, when Redis cannot be reached or does not
    /// answer within twice the command timeout.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let (done, started) = tokio::sync::oneshot::channel();
        let (handle, url) = self.launch(move |result| {
            let _ = done.send(result);
        })?;
        let result = started.await;
        finish(handle, url, result.ok())
    }

    /// [`connect`](Self::connect) for synchronous start-up code: blocks the
    /// calling thread until the store is connected. Needs no runtime, and
    /// may be called from inside one (it then blocks that runtime's thread
    /// meanwhile, as any blocking start-up step does).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn connect_blocking(self) -> Result<RedisStore, StoreError> {
        let (done, started) = std::sync::mpsc::sync_channel(1);
        let (handle, url) = self.launch(move |result| {
            let _ = done.send(result);
        })?;
        let result = started.recv();
        finish(handle, url, result.ok())
    }

    /// Checks the settings, starts the runtime thread and, on it, the first
    /// connection; `done` is called with its outcome (an error message
    /// without the password).
    fn launch(
        self,
        done: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<(Handle, String), StoreError> {
        let url = url_without_credentials(&self.url);
        if self.max_staleness < Duration::from_millis(40) {
            return Err(StoreError::Config("max_staleness must be at least 40 ms".into()));
        }
        if let Some(why) = palisade_core::syntax::redis_command_timeout_problem(self.command_timeout) {
            return Err(StoreError::Config(format!("command_timeout {why}")));
        }
        // Errors from `open` may quote the URL: they are not passed on.
        let client = Client::open(self.url.as_str())
            .map_err(|_| StoreError::Config(format!("{url} is not a Redis URL this build can use")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Connect {
                url: url.clone(),
                reason: format!("cannot start the store's runtime: {e}"),
            })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime_handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("palisade-redis-store".into())
            .spawn(move || {
                // Ends when the last `RedisStore` clone drops the sender;
                // dropping the runtime then cancels the tasks.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| StoreError::Connect {
                url: url.clone(),
                reason: format!("cannot start the store's thread: {e}"),
            })?;
        let prefix = &self.prefix;
        let shared = Arc::new(Shared {
            client,
            url: url.clone(),
            keys: Keys {
                revoked: format!("{prefix}revoked"),
                stream: format!("{prefix}revoked:stream"),
                used: format!("{prefix}used:"),
                session: format!("{prefix}session:"),
                generation: format!("{prefix}session-generation:"),
            },
            command_timeout: self.command_timeout,
            max_staleness: self.max_staleness,
            block: (self.max_staleness / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            connection: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            mirror: RwLock::new(RevocationSet::new()),
            synced: AtomicU64::new(0),
            incomplete: AtomicBool::new(false),
            epoch: Instant::now(),
            stale_logged: AtomicBool::new(false),
            unrecorded: Mutex::new(Vec::new()),
            answered: tokio::sync::Notify::new(),
            cap_logged: AtomicBool::new(false),
        });
        let handle = Handle {
            shared: shared.clone(),
            runtime: runtime_handle,
            _stop: stop,
        };
        let password = password_of(&self.url);
        handle.runtime.spawn(async move {
            let first = async {
                shared.connection().await?;
                shared.open_mirror().await
            };
            let outcome = match tokio::time::timeout(shared.command_timeout * 2, first).await {
                Err(_) => Err("no answer in time".to_owned()),
                Ok(Err(e)) => Err(scrub(&e.to_string(), &password)),
                Ok(Ok((connection, last_id))) => {
                    shared.mark_synced();
                    tokio::spawn(follow(shared.clone(), connection, last_id));
                    tokio::spawn(write_late(shared.clone()));
                    tokio::spawn(watch(shared));
                    Ok(())
                }
            };
            done(outcome);
        });
        Ok((handle, url))
    }
}

/// The store once the first connection's outcome is known (`None` when
/// the runtime stopped before telling).
fn finish(
    handle: Handle,
    url: String,
    outcome: Option<Result<(), String>>,
) -> Result<RedisStore, StoreError> {
    match outcome {
        Some(Ok(())) => Ok(RedisStore {
            handle: Arc::new(handle),
        }),
        Some(Err(reason)) => Err(StoreError::Connect { url, reason }),
        None => Err(StoreError::Connect {
            url,
            reason: "the store's runtime stopped".into(),
        }),
    }
}

impl SessionStore for RedisStore {
    fn revoke(&self, revocation: Revocation) -> BoxFuture<Result<(), StoreError>> {
        self.spawn(|shared| async move {
            let now = SystemTime::now();
            if revocation.until() <= now {
                return Ok(());
            }
            // Honoured here even when Redis does not record it, and then
            // kept to be written when it answers again.
            shared.apply(&revocation, now);
            let recorded = shared.record(std::slice::from_ref(&revocation), now).await;
            if recorded.is_err() {
                shared.keep_unrecorded([revocation]);
            }
            recorded
        })
    }

    fn is_revoked(&self, session: &SessionRef<'_>) -> Result<bool, StoreError> {
        let shared = &*self.handle.shared;
        if shared.is_stale() {
            return Err(StoreError::Unavailable);
        }
        Ok(shared
            .mirror
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(session))
    }

    fn use_once(&self, key: &str, ttl: Duration) -> BoxFuture<Result<bool, StoreError>> {
        // A value of this call's own: when the command is sent again on a
        // new connection (`Shared::run`) after Redis took it and the answer
        // was lost, the key holds it, and the use is still this call's.
        // Set and read back in one script, so that one answer says.
        const USE_ONCE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end \
             if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end \
             return 0";
        let mut mark = [0u8; 16];
        if aws_lc_rs::rand::fill(&mut mark).is_err() {
            return Box::pin(std::future::ready(Err(StoreError::Unavailable)));
        }
        let mark = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, mark);
        let mut eval = redis::cmd("EVAL");
        eval.arg(USE_ONCE)
            .arg(1)
            .arg(format!("{}{key}", self.handle.shared.keys.used))
            .arg(mark)
            .arg(ttl_ms(ttl));
        let first = self.command::<i64>(eval);
        Box::pin(async move { Ok(first.await? == 1) })
    }

    fn put(&self, id: &str, data: Vec<u8>, ttl: Duration) -> BoxFuture<Result<(), StoreError>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}{id}", self.handle.shared.keys.session))
            .arg(data)
            .arg("PX")
            .arg(ttl_ms(ttl));
        self.command(cmd)
    }

    fn put_session(
        &self,
        id: &str,
        generation: u32,
        data: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<Result<bool, StoreError>> {
        // The generation beside the data, compared and both written in one
        // script. A replica of an earlier release writes the data alone:
        // the generation key then lags, which lets an older copy through
        // as before, and never holds back a newer one.
        const PUT_SESSION: &str = "local held = tonumber(redis.call('GET', KEYS[2])) \
             if held and held > tonumber(ARGV[1]) then return 0 end \
             redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) \
             redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3]) \
             return 1";
        let keys = &self.handle.shared.keys;
        let mut eval = redis::cmd("EVAL");
        eval.arg(PUT_SESSION)
            .arg(2)
            .arg(format!("{}{id}", keys.session))
            .arg(format!("{}{id}", keys.generation))
            .arg(generation)
            .arg(data)
            .arg(ttl_ms(ttl));
        let written = self.command::<i64>(eval);
        Box::pin(async move { Ok(written.await? == 1) })
    }

    fn get(&self, id: &str) -> BoxFuture<Result<Option<Vec<u8>>, StoreError>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{}{id}", self.handle.shared.keys.session));
        self.command(cmd)
    }

    fn remove(&self, id: &str) -> BoxFuture<Result<(), StoreError>> {
        let keys = &self.handle.shared.keys;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{}{id}", keys.session))
            .arg(format!("{}{id}", keys.generation));
        self.command(cmd)
    }

    fn release(&self, key: &str) -> BoxFuture<Result<(), StoreError>> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{}{key}", self.handle.shared.keys.used));
        self.command(cmd)
    }
}

impl Shared {
    fn config(&self, response_timeout: Duration) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(response_timeout))
    }

    /// The commands' connection, opened when there is none, and whether
    /// it was open before. Callers that waited while another one failed to
    /// open it share that failure rather than queue one attempt each.
    async fn connection(&self) -> Result<(MultiplexedConnection, bool), RedisError> {
        if let Some(c) = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok((c, true));
        }
        let waiting_since = Instant::now();
        let mut last_failure = self.connecting.lock().await;
        if let Some(c) = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok((c, true));
        }
        if last_failure.is_some_and(|at| at >= waiting_since) {
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connecting failed while this command waited",
            )));
        }
        match self
            .client
            .get_multiplexed_async_connection_with_config(&self.config(self.command_timeout))
            .await
        {
            Ok(c) => {
                *last_failure = None;
                *self.connection.lock().unwrap_or_else(PoisonError::into_inner) = Some(c.clone());
                Ok((c, false))
            }
            Err(e) => {
                *last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Runs `f` on the commands' connection within the command timeout;
    /// drops the connection after a failure so the next command opens a
    /// new one. A connection open before that turns out closed (while
    /// idle: a proxy's timeout, a Redis restarted) is replaced at once and
    /// `f` sent again on the new one, once, within the same timeout: else
    /// the first command after a quiet spell fails (a back-channel logout
    /// lost). A command whose answer alone was lost is thus sent twice:
    /// each of this store's is safe to repeat (`use_once` recognises its
    /// own mark).
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let attempt = async {
            let (c, reused) = self.connection().await?;
            match f(c).await {
                Err(e) if reused && (e.is_io_error() || e.is_connection_dropped()) && !e.is_timeout() => {
                    tracing::debug!(target: LOG_TARGET, url = %self.url, reason = %described(&e), "session store: the commands' connection was closed; sending the command again on a new one");
                    *self.connection.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    let (c, _) = self.connection().await?;
                    f(c).await
                }
                done => done,
            }
        };
        let failure = match tokio::time::timeout(self.command_timeout, attempt).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => described(&e),
            Err(_) => "no answer in time".to_owned(),
        };
        *self.connection.lock().unwrap_or_else(PoisonError::into_inner) = None;
        tracing::debug!(target: LOG_TARGET, url = %self.url, reason = %failure, "session store command failed");
        Err(StoreError::Unavailable)
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Opens the mirror's connection and loads every live revocation;
    /// returns the connection and the stream entry to read after.
    async fn open_mirror(&self) -> Result<(MultiplexedConnection, String), RedisError> {
        let mut c = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config(self.block + self.command_timeout))
            .await?;
        let last: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.keys.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await?;
        let last_id = last
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
        let now = SystemTime::now();
        let live: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.keys.revoked)
            .arg(unix_ms(now))
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await?;
        // Decoded before the lock: requests read the mirror meanwhile.
        // Scores are whole milliseconds, exact in an f64.
        let live: Vec<Revocation> = live
            .into_iter()
            .filter_map(|(member, until)| decode(&member, until as u64))
            .collect();
        let mut mirror = self.mirror.write().unwrap_or_else(PoisonError::into_inner);
        for revocation in &live {
            mirror.insert(revocation, now, usize::MAX);
        }
        Ok((c, last_id))
    }

    /// Writes `revocations` in one transaction: each into the sorted set
    /// and announced on the stream; entries past their `until` are
    /// trimmed from the set.
    async fn record(&self, revocations: &[Revocation], now: SystemTime) -> Result<(), StoreError> {
        let mut tx = redis::pipe();
        tx.atomic();
        for revocation in revocations {
            let member = encode(revocation);
            let until = unix_ms(revocation.until());
            tx.cmd("ZADD")
                .arg(&self.keys.revoked)
                .arg("GT")
                .arg(until)
                .arg(&member)
                .ignore()
                .cmd("XADD")
                .arg(&self.keys.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_LENGTH)
                .arg("*")
                .arg("m")
                .arg(&member)
                .arg("u")
                .arg(until)
                .ignore();
        }
        tx.cmd("ZREMRANGEBYSCORE")
            .arg(&self.keys.revoked)
            .arg("-inf")
            .arg(format!("({}", unix_ms(now)))
            .ignore();
        let tx = &tx;
        self.run(|mut c| async move { tx.query_async::<()>(&mut c).await })
            .await
    }

    /// Keeps revocations Redis did not record, to write them later: after
    /// those already waiting, once each.
    fn keep_unrecorded(&self, revocations: impl IntoIterator<Item = Revocation>) {
        let mut unrecorded = self.unrecorded.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = keep(&mut unrecorded, revocations);
        drop(unrecorded);
        // Once until the list has been written out again.
        if dropped > 0 && !self.cap_logged.swap(true, Ordering::AcqRel) {
            tracing::warn!(target: LOG_TARGET, url = %self.url, dropped, "session store: revocations Redis did not record cannot be kept to write later ({MAX_UNRECORDED} wait already); other replicas will not learn them");
        }
    }

    /// Puts back, first, what a late write left; then what was kept while
    /// it ran (nothing keeps one between the two steps: every caller runs
    /// on the store's one-thread runtime, and neither step awaits).
    fn restore_unrecorded(&self, left: Vec<Revocation>) {
        let arrived = std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(PoisonError::into_inner));
        self.keep_unrecorded(left.into_iter().chain(arrived));
    }

    /// Writes the revocations Redis did not record before, those still in
    /// force, in transactions of a bounded size; puts back what a failure
    /// leaves. Whether every one was written.
    async fn record_unrecorded(&self) -> bool {
        let now = SystemTime::now();
        let waiting: Vec<Revocation> =
            std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .filter(|r| r.until() > now)
                .collect();
        let mut written = 0;
        let mut all = true;
        for (i, chunk) in waiting.chunks(RECORD_CHUNK).enumerate() {
            if self.record(chunk, now).await.is_err() {
                self.restore_unrecorded(waiting.into_iter().skip(i * RECORD_CHUNK).collect());
                all = false;
                break;
            }
            written += chunk.len();
        }
        if written > 0 {
            tracing::info!(target: LOG_TARGET, url = %self.url, count = written, "session store: revocations Redis could not record earlier are written now");
        }
        if all {
            self.cap_logged.store(false, Ordering::Release);
        }
        all
    }

    /// Whether revocations wait to be written.
    fn has_unrecorded(&self) -> bool {
        !self
            .unrecorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    fn apply(&self, revocation: &Revocation, now: SystemTime) {
        self.mirror
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(revocation, now, usize::MAX);
    }

    fn mark_synced(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.synced.store(nanos, Ordering::Release);
        self.incomplete.store(false, Ordering::Release);
        if self.stale_logged.swap(false, Ordering::AcqRel) {
            tracing::info!(target: LOG_TARGET, url = %self.url, "session store: revocations synced from Redis again");
        }
    }

    /// How long since the mirror was last known complete.
    fn staleness(&self) -> Duration {
        let synced = Duration::from_nanos(self.synced.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(synced)
    }

    fn is_stale(&self) -> bool {
        self.incomplete.load(Ordering::Acquire) || self.staleness() > self.max_staleness
    }
}

/// Follows the stream of revocations into the mirror, reconnecting and
/// reloading after any failure. Runs until the runtime stops.
async fn follow(shared: Arc<Shared>, connection: MultiplexedConnection, mut last_id: String) {
    let mut connection = Some(connection);
    let mut backoff = MIN_BACKOFF;
    // A gap was found and no read has caught up since: another gap then
    // waits before its reload, and is not logged again.
    let mut behind = false;
    // When Redis last took a write (`probe`), and whether it refused the
    // last one.
    let mut wrote: Option<Instant> = None;
    let mut writes_refused = false;
    loop {
        let Some(c) = connection.as_mut() else {
            match shared.open_mirror().await {
                Ok((c, id)) => {
                    connection = Some(c);
                    last_id = id;
                    // Not while Redis refuses writes: a reconnection would
                    // grant another `max_staleness`; the next probe says.
                    if !writes_refused {
                        shared.mark_synced();
                        shared.answered.notify_one();
                    }
                }
                Err(e) => {
                    tracing::debug!(target: LOG_TARGET, url = %shared.url, reason = %described(&e), "session store: reconnecting the revocation mirror failed");
                    back_off(&mut backoff, MAX_BACKOFF).await;
                }
            }
            continue;
        };
        let block_ms = u64::try_from(shared.block.as_millis()).unwrap_or(1000);
        let read: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&shared.keys.stream)
            .arg(&last_id)
            .query_async(c)
            .await;
        match read {
            Ok(reply) => {
                let now = SystemTime::now();
                let from = last_id.clone();
                let mut count = 0;
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    count += 1;
                    let member = entry.get::<String>("m");
                    let until = entry.get::<u64>("u");
                    match member.zip(until).and_then(|(m, u)| decode(&m, u)) {
                        Some(revocation) => shared.apply(&revocation, now),
                        None => {
                            tracing::debug!(target: LOG_TARGET, id = %entry.id, "session store: unreadable revocation announcement skipped")
                        }
                    }
                    last_id = entry.id;
                }
                // A replica more than the stream's length behind would skip
                // what the trimming took (or what a stream deleted and made
                // again held): that shows as a read from an entry no longer
                // in the stream (see `holds`). The mirror is then known to
                // be incomplete, and refuses sessions until reloaded.
                let check = count > 0 && (from != "0-0" || count >= READ_COUNT as usize);
                if check {
                    match holds(c, &shared.keys.stream, &from).await {
                        Ok(true) => {}
                        Ok(false) => {
                            shared.incomplete.store(true, Ordering::Release);
                            if behind {
                                back_off(&mut backoff, MAX_BACKOFF).await;
                            } else {
                                tracing::warn!(target: LOG_TARGET, url = %shared.url, "session store: the revocation mirror may have fallen further behind than the stream keeps; reloading every revocation");
                            }
                            behind = true;
                            connection = None;
                            continue;
                        }
                        Err(e) => {
                            lose(
                                &shared,
                                &mut connection,
                                &mut backoff,
                                &e,
                                "cannot check the stream",
                            )
                            .await;
                            continue;
                        }
                    }
                }
                if count < READ_COUNT as usize {
                    behind = false;
                }
                // A Redis that answers reads and refuses writes (a
                // read-only replica after a failover, out of memory,
                // `min-replicas-to-write` unmet) cannot record a logout on
                // any replica, and the others would go on reading a mirror
                // that looks complete: the mirror is synced only while
                // writes are taken too, so every replica fails closed
                // after `max_staleness`, together.
                if wrote.is_none_or(|at| at.elapsed() >= shared.block) {
                    match probe(c, &shared.keys.revoked).await {
                        Ok(()) => {
                            wrote = Some(Instant::now());
                            if std::mem::take(&mut writes_refused) {
                                tracing::info!(target: LOG_TARGET, url = %shared.url, "session store: Redis takes writes again");
                            }
                        }
                        Err(e) if e.code().is_some() => {
                            if !std::mem::replace(&mut writes_refused, true) {
                                tracing::warn!(target: LOG_TARGET, url = %shared.url, reason = %described(&e), "session store: Redis answers reads but refuses writes: logouts cannot be recorded, so sessions are refused once that has lasted max_staleness, until it takes writes again");
                            }
                            continue;
                        }
                        Err(e) => {
                            lose(&shared, &mut connection, &mut backoff, &e, "lost its connection").await;
                            continue;
                        }
                    }
                }
                shared.mark_synced();
                backoff = MIN_BACKOFF;
                if shared.has_unrecorded() {
                    shared.answered.notify_one();
                }
            }
            Err(e) => lose(&shared, &mut connection, &mut backoff, &e, "lost its connection").await,
        }
    }
}

/// The mirror's connection failed with `e` (the mirror `what`): said at
/// debug level, the connection dropped for a new one and its reload, after
/// the backoff. Not at once: a command that fails every time (an ACL that
/// refuses `XREAD`, a proxy that cannot block) would reload the whole
/// mirror in a loop. A read that works resets the backoff.
async fn lose(
    shared: &Shared,
    connection: &mut Option<MultiplexedConnection>,
    backoff: &mut Duration,
    e: &RedisError,
    what: &str,
) {
    tracing::debug!(target: LOG_TARGET, url = %shared.url, reason = %described(e), "session store: the revocation mirror {what}");
    *connection = None;
    back_off(backoff, MAX_BACKOFF).await;
}

/// A write that changes nothing (`ZADD … XX` of a member never added),
/// refused as a revocation's write would be: whether Redis takes writes.
async fn probe(c: &mut MultiplexedConnection, revoked: &str) -> Result<(), RedisError> {
    let _: i64 = redis::cmd("ZADD")
        .arg(revoked)
        .arg("XX")
        .arg(0)
        .arg("(write probe)")
        .query_async(c)
        .await?;
    Ok(())
}

/// Waits `backoff`, then doubles it, up to `max`.
async fn back_off(backoff: &mut Duration, max: Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(max);
}

/// Whether the stream still holds the entry `id`. The stream is trimmed
/// from its oldest entry, so while the last entry a replica read is there,
/// nothing after it has been trimmed; once it is gone, something after it
/// may have been, unread. (`0-0`, a stream empty when the mirror loaded, is
/// never held: it is checked only after a full read, which then reloads;
/// that costs a reload, not a revocation.)
async fn holds(c: &mut MultiplexedConnection, stream: &str, id: &str) -> Result<bool, RedisError> {
    let entry: StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg(id)
        .arg(id)
        .query_async(c)
        .await?;
    Ok(!entry.ids.is_empty())
}

/// Writes the revocations Redis did not record when the mirror hears from
/// it again, on a task of its own so that the mirror's reads go on
/// meanwhile. After a write that fails while reads work (a read-only
/// replica after a failover, an out-of-memory Redis), the next try waits,
/// from 50 ms doubling to 30 s. Runs until the runtime stops.
async fn write_late(shared: Arc<Shared>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        shared.answered.notified().await;
        if shared.record_unrecorded().await {
            backoff = MIN_BACKOFF;
        } else {
            back_off(&mut backoff, MAX_LATE_BACKOFF).await;
        }
    }
}

/// Logs when the mirror goes stale (the moment it does); forgets expired
/// revocations now and then. Runs until the runtime stops. The recovery
/// is logged when the mirror is next marked synced.
async fn watch(shared: Arc<Shared>) {
    let mut purged = Instant::now();
    loop {
        let staleness = shared.staleness();
        if staleness > shared.max_staleness {
            if !shared.stale_logged.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    target: LOG_TARGET,
                    url = %shared.url,
                    max_staleness = ?shared.max_staleness,
                    "session store: revocations not synced from Redis; sessions are refused until it is back"
                );
            }
            tokio::time::sleep(shared.block).await;
        } else {
            // Wake when it would go stale, unless synced meanwhile.
            let left = shared.max_staleness - staleness;
            tokio::time::sleep(left + Duration::from_millis(1)).await;
        }
        if purged.elapsed() >= PURGE_EVERY {
            purged = Instant::now();
            shared
                .mirror
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .purge(SystemTime::now());
        }
    }
}

/// Adds `revocations` to `waiting`, each once (a logout sent twice, a
/// back-channel logout the issuer sends again), while it holds fewer than
/// [`MAX_UNRECORDED`]; how many did not fit.
fn keep(waiting: &mut Vec<Revocation>, revocations: impl IntoIterator<Item = Revocation>) -> usize {
    let mut dropped = 0;
    for revocation in revocations {
        if waiting.contains(&revocation) {
            continue;
        }
        if waiting.len() < MAX_UNRECORDED {
            waiting.push(revocation);
        } else {
            dropped += 1;
        }
    }
    dropped
}

/// The sorted-set member naming what `revocation` revokes (JSON).
fn encode(revocation: &Revocation) -> String {
    let json = match revocation {
        Revocation::Session { id, .. } => serde_json::json!(["session", id]),
        Revocation::Sid {
            issuer, sid, before, ..
        } => serde_json::json!(["sid", issuer, sid, unix_ms(*before)]),
        Revocation::Subject {
            issuer,
            subject,
            before,
            ..
        } => serde_json::json!(["subject", issuer, subject, unix_ms(*before)]),
    };
    json.to_string()
}

/// The revocation a member names, forgotten at `until_ms`; `None` for a
/// member this version does not know.
fn decode(member: &str, until_ms: u64) -> Option<Revocation> {
    let until = SystemTime::UNIX_EPOCH + Duration::from_millis(until_ms);
    let Json::Array(parts) = serde_json::from_str(member).ok()? else {
        return None;
    };
    let text = |i: usize| parts.get(i).and_then(Json::as_str).map(str::to_owned);
    match (parts.first()?.as_str()?, parts.len()) {
        ("session", 2) => Some(Revocation::Session { id: text(1)?, until }),
        ("sid", 4) => Some(Revocation::Sid {
            issuer: text(1)?,
            sid: text(2)?,
            before: SystemTime::UNIX_EPOCH + Duration::from_millis(parts[3].as_u64()?),
            until,
        }),
        // Written by a version whose `sid` revocations had no `before`:
        // every session of the `sid`, as that version meant.
        ("sid", 3) => Some(Revocation::Sid {
            issuer: text(1)?,
            sid: text(2)?,
            before: until,
            until,
        }),
        ("subject", 4) => Some(Revocation::Subject {
            issuer: text(1)?,
            subject: text(2)?,
            before: SystemTime::UNIX_EPOCH + Duration::from_millis(parts[3].as_u64()?),
            until,
        }),
        _ => None,
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(bounded_ttl(ttl).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A Redis error as it may be logged: its category and kind. Its message
/// may quote the command, and a command names a session (`session:<id>`).
fn described(e: &RedisError) -> String {
    format!("{} ({:?})", e.category(), e.kind())
}

/// What may be the password in `url`, to scrub from messages: the user
/// information's password as a URL parser reads it (up to the first `/`,
/// `?` or `#`), and, as [`url_without_credentials`] hides it, everything
/// after the scheme and before the last `@` (a password with an unescaped
/// `/` or `@`).
fn password_of(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    [
        authority.rfind('@').map(|at| &authority[..at]),
        rest.rfind('@').map(|at| &rest[..at]),
    ]
    .into_iter()
    .flatten()
    .map(|user| user.split_once(':').map_or(user, |(_, p)| p))
    .filter(|p| !p.is_empty())
    .map(str::to_owned)
    .collect()
}

fn scrub(message: &str, passwords: &[String]) -> String {
    passwords
        .iter()
        .fold(message.to_owned(), |m, p| m.replace(p.as_str(), "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_a_thousand_revocations_wait_to_be_written_each_once() {
        let until = SystemTime::now() + Duration::from_secs(60);
        let session = |i: usize| Revocation::Session {
            id: format!("s{i}"),
            until,
        };
        let mut waiting = Vec::new();
        assert_eq!(keep(&mut waiting, (0..MAX_UNRECORDED - 1).map(session)), 0);
        assert_eq!(keep(&mut waiting, (100_000..100_003).map(session)), 2);
        assert_eq!(waiting.len(), MAX_UNRECORDED);
        // The earlier ones stay; of the later, the first offered fitted.
        assert_eq!(waiting[0], session(0));
        assert_eq!(waiting[MAX_UNRECORDED - 1], session(100_000));
        // One already waiting is not kept twice, and takes no room.
        let mut twice = vec![session(1)];
        assert_eq!(keep(&mut twice, [session(1), session(2), session(1)]), 0);
        assert_eq!(twice, [session(1), session(2)]);
    }

    #[test]
    fn passwords_are_scrubbed_from_messages() {
        assert_eq!(password_of("redis://app:s3cret@h:1/0"), ["s3cret", "s3cret"]);
        assert_eq!(password_of("redis://:s3/cr@t@h:1/0"), ["s3/cr@t"]);
        // An `@` in the query: the parser's reading is scrubbed too.
        assert_eq!(
            password_of("redis://:s3cret@h/0?x=a@b"),
            ["s3cret", "s3cret@h/0?x=a"]
        );
        assert!(password_of("redis://h:1/0").is_empty());
        let scrubbed = scrub("auth s3cret failed", &password_of("redis://:s3cret@h/0?x=a@b"));
        assert_eq!(scrubbed, "auth *** failed");
    }

    #[test]
    fn a_url_that_does_not_parse_is_refused_without_its_password() {
        // An unescaped `/` in the password: no URL parser reads it, and the
        // error names the URL.
        let store = RedisStore::builder("redis://:pa/s3cret@127.0.0.1:6379/0");
        assert!(!format!("{store:?}").contains("s3cret"), "{store:?}");
        let err = store.connect_blocking().unwrap_err();
        assert!(matches!(err, StoreError::Config(_)), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(err.to_string().contains("redis://***@127.0.0.1:6379/0"), "{err}");
    }

    #[test]
    fn revocations_survive_encoding() {
        let until = SystemTime::UNIX_EPOCH + Duration::from_millis(1_750_000_000_123);
        let before = SystemTime::UNIX_EPOCH + Duration::from_millis(1_740_000_000_456);
        for r in [
            Revocation::Session {
                id: "s\"1\\".into(),
                until,
            },
            Revocation::Sid {
                issuer: "https://idp".into(),
                sid: "x".into(),
                before,
                until,
            },
            Revocation::Subject {
                issuer: "https://idp".into(),
                subject: "ålice".into(),
                before,
                until,
            },
        ] {
            assert_eq!(decode(&encode(&r), unix_ms(until)), Some(r));
        }
        // A `sid` member of the form an earlier release wrote: every
        // session of the `sid` until it may be forgotten.
        assert_eq!(
            decode(r#"["sid","https://idp","x"]"#, unix_ms(until)),
            Some(Revocation::Sid {
                issuer: "https://idp".into(),
                sid: "x".into(),
                before: until,
                until,
            })
        );
        for unknown in [
            "",
            "{}",
            "[]",
            "[\"session\"]",
            "[\"future\",\"x\"]",
            "[\"subject\",\"i\",\"s\",-1]",
        ] {
            assert_eq!(decode(unknown, 0), None, "{unknown}");
        }
    }

    #[tokio::test]
    async fn a_redis_that_is_not_there_is_a_connect_error_naming_the_url_without_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://:hunter2@127.0.0.1:{port}/0");
        let started = Instant::now();
        let err = RedisStore::builder(&url)
            .command_timeout(Duration::from_millis(300))
            .connect()
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        let message = err.to_string();
        assert!(matches!(err, StoreError::Connect { .. }), "{message}");
        assert!(
            message.contains(&format!("redis://***@127.0.0.1:{port}/0")),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[tokio::test]
    async fn settings_out_of_bounds_and_foreign_urls_are_config_errors() {
        let staleness = RedisStore::builder("redis://127.0.0.1:1/0")
            .max_staleness(Duration::from_millis(1))
            .connect()
            .await;
        assert!(matches!(staleness, Err(StoreError::Config(_))));
        for timeout in [Duration::from_millis(1), Duration::MAX] {
            let commands = RedisStore::builder("redis://127.0.0.1:1/0")
                .command_timeout(timeout)
                .connect()
                .await;
            assert!(matches!(commands, Err(StoreError::Config(_))), "{timeout:?}");
        }
        let url = RedisStore::connect("http://user:pw@example/").await;
        match url {
            Err(StoreError::Config(m)) => assert!(!m.contains("pw@"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
