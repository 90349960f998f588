//! Session stores: what the replicas of a service that signs users in must
//! share. Revoked sessions (a logout on one replica ends the session on
//! all), used one-time values (a back-channel logout token's `jti`, a
//! sign-in state's mark, let go when its sign-in fails, a refresh's claim;
//! an authorization code is left to the issuer, which takes it once) and,
//! optionally, server-side session data for
//! sessions too large for cookies.
//!
//! ```
//! use palisade_signin::store::{MemoryStore, Revocation, SessionRef, SessionStore};
//! use std::time::{Duration, SystemTime};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let store = MemoryStore::new();
//! let now = SystemTime::now();
//! let session = SessionRef::new("s-1", "https://idp.example", "alice", now).with_sid("idp-session-7");
//! assert!(!store.is_revoked(&session)?);
//! // A back-channel logout for the identity provider's session: its
//! // sessions begun until now end.
//! let until = now + Duration::from_secs(8 * 3600);
//! let before = now + Duration::from_millis(1);
//! store
//!     .revoke(Revocation::Sid { issuer: "https://idp.example".into(), sid: "idp-session-7".into(), before, until })
//!     .await?;
//! assert!(store.is_revoked(&session)?);
//! let mut later = session;
//! (later.id, later.created) = ("s-2", before);
//! assert!(!store.is_revoked(&later)?);
//! // A logout token is used once.
//! assert!(store.use_once("jti-42", Duration::from_secs(300)).await?);
//! assert!(!store.use_once("jti-42", Duration::from_secs(300)).await?);
//! # Ok::<(), palisade_signin::store::StoreError>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`MemoryStore`] serves one process. With the `redis` feature,
//! `RedisStore` shares the state between replicas through Redis, each
//! replica keeping a mirror of the revocations in memory so that
//! [`SessionStore::is_revoked`] never waits for the network.

mod memory;
#[cfg(feature = "redis")]
mod redis;
mod revocations;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_core::BoxFuture;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::{RedisStore, RedisStoreBuilder};

/// The tracing target of the stores' log lines.
#[cfg(feature = "redis")]
const LOG_TARGET: &str = "palisade::signin::store";

/// The longest time-to-live a store keeps (100 years): longer ones are
/// shortened to it.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Shared session state; see the module docs. Implementations are cheap to
/// clone handles, safe to share between threads and runtimes.
pub trait SessionStore: Send + Sync + 'static {
    /// Records a revocation; every replica sharing the store sees it within
    /// a second. A revocation whose `until` has passed is accepted and
    /// forgotten.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when a shared store cannot record it
    /// now (the replica that revoked still honours it; the Redis store
    /// keeps it and writes it when Redis answers again);
    /// [`StoreError::Full`] when an in-memory store is at its cap.
    fn revoke(&self, revocation: Revocation) -> BoxFuture<Result<(), StoreError>>;

    /// Whether this session is revoked, answered from memory without I/O
    /// (the per-request fast path).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] from a shared store that has not been
    /// able to read its revocations recently (fail closed: the caller must
    /// not treat the session as valid).
    fn is_revoked(&self, session: &SessionRef<'_>) -> Result<bool, StoreError>;

    /// Marks `key` used for `ttl`; `Ok(false)` when it was already used
    /// (a logout token's `jti`, a code, a session's refresh that another
    /// replica claimed). `ttl` should cover the time the
    /// value is valid.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`], [`StoreError::Full`]: the caller cannot
    /// know whether the value was used, and refuses it. (A command that
    /// timed out may still have marked the value, so a retry can answer
    /// `Ok(false)`: at most once, never twice.)
    fn use_once(&self, key: &str, ttl: Duration) -> BoxFuture<Result<bool, StoreError>>;

    /// Stores server-side session data under `id` for `ttl`, replacing
    /// what was there: a session too large for cookies under its id, and a
    /// session one replica refreshed, for the others, under a key of its
    /// own (`refresh:…`). The data is sealed (AES-256-GCM) with a key only
    /// the session's cookie holds or can derive: a store sees no token.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`], [`StoreError::Full`].
    fn put(&self, id: &str, data: Vec<u8>, ttl: Duration) -> BoxFuture<Result<(), StoreError>>;

    /// Stores a session's data under its `id` as [`put`](Self::put) does,
    /// unless the store holds a later `generation` of it (a replica that
    /// refreshed the session since this one read it wrote its successor):
    /// then nothing is written and the answer is `Ok(false)`. Sessions
    /// too large for cookies are written so: their cookie names the stored
    /// data, not a generation, so an older copy written last (a replica
    /// renewing its idle timeout from what it read before the refresh)
    /// would send every replica back to a refresh token the issuer has
    /// already rotated, and the session would end at the next refresh.
    ///
    /// The default writes whatever the store holds (last writer wins). A
    /// store that wraps another forwards it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`], [`StoreError::Full`].
    fn put_session(
        &self,
        id: &str,
        generation: u32,
        data: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<Result<bool, StoreError>> {
        let _ = generation;
        let put = self.put(id, data, ttl);
        Box::pin(async move { put.await.map(|()| true) })
    }

    /// The session data stored under `id`, unless removed or expired.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`].
    fn get(&self, id: &str) -> BoxFuture<Result<Option<Vec<u8>>, StoreError>>;

    /// Removes the session data stored under `id` (nothing when there is
    /// none).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`].
    fn remove(&self, id: &str) -> BoxFuture<Result<(), StoreError>>;

    /// Forgets that `key` was used ([`use_once`](Self::use_once)), so
    /// that it can be used once more: for a use whose effect could not be
    /// recorded (a back-channel logout whose revocation the store could
    /// not take), so that the sender's retry is not refused as a replay,
    /// for a refresh the issuer could not answer, so that another replica
    /// may try it (without, it waits for the claim to expire), and for a
    /// sign-in that failed or whose request went away, so that its state's
    /// mark leaves the store.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the mark could not be removed. The
    /// default removes nothing and answers so: a store without this method
    /// keeps every mark, and the caller says the retry will be refused.
    fn release(&self, key: &str) -> BoxFuture<Result<(), StoreError>> {
        let _ = key;
        Box::pin(std::future::ready(Err(StoreError::Unavailable)))
    }

    /// Whether several replicas share this store. The sign-in then makes
    /// each refresh once between them: the first replica to claim it
    /// ([`use_once`](Self::use_once)) asks the issuer and puts the new
    /// session in the store ([`put`](Self::put), five minutes); the claim
    /// is [`release`](Self::release)d when the issuer cannot answer. The
    /// default is `true`; a store that serves one process says `false`,
    /// and the sign-in neither claims nor hands anything on through it.
    fn shared(&self) -> bool {
        true
    }

    /// Since when the store holds every session's ending: a session whose
    /// tokens were obtained before then may have ended where the store
    /// cannot say (a [`MemoryStore`] begins empty with its process, and a
    /// saved cookie outlives it when the session keys are configured). The
    /// sign-in then asks the issuer for new tokens (a refresh, which an
    /// ended issuer session refuses) before it takes such a session, and
    /// refuses one it cannot refresh. The default, `None`: since ever (a
    /// store that outlives processes, as Redis does). A store that wraps
    /// another forwards it (and [`shared`](Self::shared) and
    /// [`put_session`](Self::put_session)), or says when it began itself if
    /// it can forget.
    fn endings_since(&self) -> Option<SystemTime> {
        None
    }
}

/// The facts about a session that revocations match against. Its `Debug`
/// output leaves out the two session ids. Made with
/// [`SessionRef::new`]: it may gain fields.
#[derive(Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionRef<'a> {
    /// The session's own id (the relying party's).
    pub id: &'a str,
    /// The identity provider's issuer.
    pub issuer: &'a str,
    /// The ID token's `sub`.
    pub subject: &'a str,
    /// The ID token's `sid` (the identity provider's session), when it has
    /// one.
    pub sid: Option<&'a str>,
    /// When the session was created (signed in).
    pub created: SystemTime,
}

impl<'a> SessionRef<'a> {
    /// The session `id` of `subject` at `issuer`, signed in at `created`,
    /// of no identity provider's session id.
    #[must_use]
    pub fn new(id: &'a str, issuer: &'a str, subject: &'a str, created: SystemTime) -> Self {
        Self {
            id,
            issuer,
            subject,
            sid: None,
            created,
        }
    }

    /// With the identity provider's session id (the ID token's `sid`).
    #[must_use]
    pub fn with_sid(mut self, sid: &'a str) -> Self {
        self.sid = Some(sid);
        self
    }
}

/// What a logout revokes. `until` is when the entry may be forgotten: the
/// caller passes now plus the absolute session timeout, after which every
/// session it matches has expired anyway. Its `Debug` output leaves out
/// the session ids.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revocation {
    /// One session (a logout here).
    Session {
        /// The session's id.
        id: String,
        /// When the entry may be forgotten.
        until: SystemTime,
    },
    /// Every session of the identity provider's session created before
    /// `before` (a back-channel logout with `sid`): the identity provider
    /// may go on with that session (Keycloak logs a user out of one client
    /// only and keeps her `sid`), and a session it then signs her in to is
    /// not the one ended.
    Sid {
        /// The identity provider's issuer.
        issuer: String,
        /// Its session id.
        sid: String,
        /// Sessions created at or after this instant are not revoked.
        before: SystemTime,
        /// When the entry may be forgotten.
        until: SystemTime,
    },
    /// Every session of the subject created before `before` (a
    /// back-channel logout with `sub` only).
    Subject {
        /// The identity provider's issuer.
        issuer: String,
        /// The subject.
        subject: String,
        /// Sessions created at or after this instant are not revoked.
        before: SystemTime,
        /// When the entry may be forgotten.
        until: SystemTime,
    },
}

// Session ids name a signed-in user's session (the `Session`'s own `Debug`
// leaves its id out): shown as `***`.
impl std::fmt::Debug for SessionRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRef")
            .field("id", &"***")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("sid", &self.sid.map(|_| "***"))
            .field("created", &self.created)
            .finish()
    }
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Revocation::Session { until, .. } => f
                .debug_struct("Session")
                .field("id", &"***")
                .field("until", until)
                .finish(),
            Revocation::Sid {
                issuer,
                before,
                until,
                ..
            } => f
                .debug_struct("Sid")
                .field("issuer", issuer)
                .field("sid", &"***")
                .field("before", before)
                .field("until", until)
                .finish(),
            Revocation::Subject {
                issuer,
                subject,
                before,
                until,
            } => f
                .debug_struct("Subject")
                .field("issuer", issuer)
                .field("subject", subject)
                .field("before", before)
                .field("until", until)
                .finish(),
        }
    }
}

impl Revocation {
    /// When the entry may be forgotten.
    #[must_use]
    pub fn until(&self) -> SystemTime {
        match self {
            Revocation::Session { until, .. }
            | Revocation::Sid { until, .. }
            | Revocation::Subject { until, .. } => *until,
        }
    }
}

/// A store operation that failed. Messages carry no key, value or
/// password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The shared store cannot be reached, did not answer in time, or its
    /// revocation mirror is out of date (fail closed).
    #[error("the session store is unavailable")]
    Unavailable,
    /// An in-memory store holds its maximum number of live entries.
    #[error("the session store is full ({max} live entries)")]
    Full {
        /// The cap that was reached.
        max: usize,
    },
    /// The store could not be reached when it was created.
    #[error("cannot connect to the session store at {url}: {reason}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// The store's configuration is not usable.
    #[error("invalid session store configuration: {0}")]
    Config(String),
}

/// Milliseconds since the Unix epoch (0 before it, saturating).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ttl` bounded to what the stores keep: at least 1 ms, at most
/// [`MAX_TTL`].
fn bounded_ttl(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_millis(1), MAX_TTL)
}
