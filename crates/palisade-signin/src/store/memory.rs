//! The in-process store.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use palisade_core::BoxFuture;

use super::revocations::{Inserted, RevocationSet};
use super::{Revocation, SessionRef, SessionStore, StoreError, bounded_ttl};

/// The default cap on live entries, for each of revocations, used one-time
/// values and session data.
const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// The store for one process (the default): revocations, used one-time
/// values and session data in hash maps, each entry with its expiry.
///
/// Bounded: each of the three maps holds at most `max_entries` live
/// entries (100 000 by default; [`with_max_entries`](Self::with_max_entries)).
/// Expired entries are purged when a map grows, and an insertion into a map
/// still full of live entries fails with [`StoreError::Full`] rather than
/// forgetting a revocation or a used value early (single sessions' and
/// `sid`s' revocations fill nine tenths of theirs: the rest is kept for
/// subjects', which sign-in falls back to). Session data is bounded
/// in count, not in bytes: the caller bounds each value.
///
/// Replicas do not share it: with more than one, use a shared store
/// (`RedisStore`, feature `redis`). It begins empty, so it knows of the
/// sessions ended since it was made only
/// ([`SessionStore::endings_since`]): a session whose tokens are older (a
/// cookie sealed with configured keys before a restart) is refreshed at
/// the issuer before it is taken. Cheap to clone (the clones share the
/// maps). `Debug` prints counts only.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// When the store was made: it knows the sessions ended since.
    began: SystemTime,
    max_entries: usize,
    revocations: RwLock<RevocationSet>,
    used: Mutex<Expiring<()>>,
    data: Mutex<Expiring<Data>>,
}

/// Session data, with the session's generation when it was written as one
/// ([`SessionStore::put_session`]).
struct Data {
    generation: Option<u32>,
    bytes: Vec<u8>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("MemoryStore")
            .field("max_entries", &inner.max_entries)
            .field(
                "revocations",
                &inner
                    .revocations
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len(),
            )
            .field("used", &lock(&inner.used).map.len())
            .field("sessions", &lock(&inner.data).map.len())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store holding up to 100 000 live entries in each map.
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_entries(DEFAULT_MAX_ENTRIES)
    }

    /// An empty store holding up to `max` live entries (at least 1) in
    /// each of its maps: revocations, used one-time values, session data.
    #[must_use]
    pub fn with_max_entries(max: usize) -> Self {
        let max_entries = max.max(1);
        Self {
            inner: Arc::new(Inner {
                began: SystemTime::now(),
                max_entries,
                revocations: RwLock::new(RevocationSet::new()),
                used: Mutex::new(Expiring::new()),
                data: Mutex::new(Expiring::new()),
            }),
        }
    }

    /// The store, as if made at `began` (tests of sessions older than it).
    #[cfg(test)]
    pub(crate) fn began_at(mut self, began: SystemTime) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("a store not shared yet")
            .began = began;
        self
    }

    fn revoke_now(&self, revocation: &Revocation) -> Result<(), StoreError> {
        let max = self.inner.max_entries;
        let mut set = self
            .inner
            .revocations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match set.insert(revocation, SystemTime::now(), max) {
            Inserted::Yes | Inserted::Expired => Ok(()),
            Inserted::Full => Err(StoreError::Full { max }),
        }
    }

    fn use_once_now(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut used = lock(&self.inner.used);
        if used.get(key, now).is_some() {
            return Ok(false);
        }
        used.insert(key, (), deadline(now, ttl), now, self.inner.max_entries)?;
        Ok(true)
    }

    fn put_now(
        &self,
        id: &str,
        generation: Option<u32>,
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut data = lock(&self.inner.data);
        let later = |held: &Data| {
            held.generation
                .zip(generation)
                .is_some_and(|(held, new)| held > new)
        };
        if data.get(id, now).is_some_and(later) {
            return Ok(false);
        }
        let value = Data { generation, bytes };
        data.insert(id, value, deadline(now, ttl), now, self.inner.max_entries)?;
        Ok(true)
    }
}

impl SessionStore for MemoryStore {
    /// One process: its refreshes need no claim.
    fn shared(&self) -> bool {
        false
    }

    /// Since it was made: it begins empty.
    fn endings_since(&self) -> Option<SystemTime> {
        Some(self.inner.began)
    }

    fn revoke(&self, revocation: Revocation) -> BoxFuture<Result<(), StoreError>> {
        Box::pin(std::future::ready(self.revoke_now(&revocation)))
    }

    fn is_revoked(&self, session: &SessionRef<'_>) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .revocations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(session))
    }

    fn use_once(&self, key: &str, ttl: Duration) -> BoxFuture<Result<bool, StoreError>> {
        Box::pin(std::future::ready(self.use_once_now(key, ttl)))
    }

    fn put(&self, id: &str, data: Vec<u8>, ttl: Duration) -> BoxFuture<Result<(), StoreError>> {
        Box::pin(std::future::ready(self.put_now(id, None, data, ttl).map(drop)))
    }

    fn put_session(
        &self,
        id: &str,
        generation: u32,
        data: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<Result<bool, StoreError>> {
        Box::pin(std::future::ready(self.put_now(id, Some(generation), data, ttl)))
    }

    fn get(&self, id: &str) -> BoxFuture<Result<Option<Vec<u8>>, StoreError>> {
        let data = lock(&self.inner.data)
            .get(id, Instant::now())
            .map(|d| d.bytes.clone());
        Box::pin(std::future::ready(Ok(data)))
    }

    fn remove(&self, id: &str) -> BoxFuture<Result<(), StoreError>> {
        lock(&self.inner.data).map.remove(id);
        Box::pin(std::future::ready(Ok(())))
    }

    fn release(&self, key: &str) -> BoxFuture<Result<(), StoreError>> {
        lock(&self.inner.used).map.remove(key);
        Box::pin(std::future::ready(Ok(())))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn deadline(now: Instant, ttl: Duration) -> Instant {
    // `bounded_ttl` keeps the sum far from `Instant`'s limits.
    now.checked_add(bounded_ttl(ttl)).unwrap_or(now)
}

/// A map whose entries expire, purged when it grows.
struct Expiring<V> {
    map: HashMap<String, (Instant, V)>,
    /// The length at which the next insertion of a new key purges.
    next_purge: usize,
}

/// The fewest entries before an insertion purges expired ones.
const FIRST_PURGE: usize = 1024;

impl<V> Expiring<V> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            next_purge: FIRST_PURGE,
        }
    }

    fn get(&self, key: &str, now: Instant) -> Option<&V> {
        self.map
            .get(key)
            .filter(|(expires, _)| *expires > now)
            .map(|(_, v)| v)
    }

    fn insert(
        &mut self,
        key: &str,
        value: V,
        expires: Instant,
        now: Instant,
        max: usize,
    ) -> Result<(), StoreError> {
        if let Some(entry) = self.map.get_mut(key) {
            *entry = (expires, value);
            return Ok(());
        }
        if self.map.len() >= self.next_purge.min(max) {
            self.map.retain(|_, (e, _)| *e > now);
            self.next_purge = self.map.len().saturating_mul(2).max(FIRST_PURGE);
            if self.map.len() >= max {
                return Err(StoreError::Full { max });
            }
        }
        self.map.insert(key.to_owned(), (expires, value));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn session<'a>(
        id: &'a str,
        subject: &'a str,
        sid: Option<&'a str>,
        created: SystemTime,
    ) -> SessionRef<'a> {
        SessionRef {
            id,
            issuer: "https://idp",
            subject,
            sid,
            created,
        }
    }

    #[test]
    fn a_revoked_session_is_revoked_and_others_are_not() {
        let store = MemoryStore::new();
        let now = SystemTime::now();
        block_on(store.revoke(Revocation::Session {
            id: "s1".into(),
            until: now + HOUR,
        }))
        .unwrap();
        assert!(store.is_revoked(&session("s1", "alice", None, now)).unwrap());
        assert!(!store.is_revoked(&session("s2", "alice", None, now)).unwrap());
        // Clones share the state.
        assert!(
            store
                .clone()
                .is_revoked(&session("s1", "bob", None, now))
                .unwrap()
        );
    }

    #[test]
    fn a_sid_revocation_matches_its_issuer_and_sid_only() {
        let store = MemoryStore::new();
        let now = SystemTime::now();
        block_on(store.revoke(Revocation::Sid {
            issuer: "https://idp".into(),
            sid: "idp-1".into(),
            before: now + Duration::from_millis(1),
            until: now + HOUR,
        }))
        .unwrap();
        assert!(
            store
                .is_revoked(&session("a", "alice", Some("idp-1"), now))
                .unwrap()
        );
        assert!(
            store
                .is_revoked(&session("b", "bob", Some("idp-1"), now))
                .unwrap()
        );
        assert!(
            !store
                .is_revoked(&session("c", "alice", Some("idp-2"), now))
                .unwrap()
        );
        assert!(!store.is_revoked(&session("d", "alice", None, now)).unwrap());
        let other_issuer = SessionRef {
            issuer: "https://other",
            ..session("e", "alice", Some("idp-1"), now)
        };
        assert!(!store.is_revoked(&other_issuer).unwrap());
    }

    #[test]
    fn a_subject_revocation_matches_sessions_created_before_only() {
        let store = MemoryStore::new();
        let now = SystemTime::now();
        block_on(store.revoke(Revocation::Subject {
            issuer: "https://idp".into(),
            subject: "alice".into(),
            before: now,
            until: now + HOUR,
        }))
        .unwrap();
        let earlier = now - Duration::from_secs(60);
        let later = now + Duration::from_secs(1);
        assert!(store.is_revoked(&session("a", "alice", None, earlier)).unwrap());
        assert!(!store.is_revoked(&session("b", "alice", None, later)).unwrap());
        assert!(!store.is_revoked(&session("c", "alice", None, now)).unwrap());
        assert!(!store.is_revoked(&session("d", "bob", None, earlier)).unwrap());
    }

    #[test]
    fn a_revocation_already_expired_is_forgotten() {
        let store = MemoryStore::new();
        let now = SystemTime::now();
        block_on(store.revoke(Revocation::Session {
            id: "old".into(),
            until: now - Duration::from_secs(1),
        }))
        .unwrap();
        assert!(!store.is_revoked(&session("old", "alice", None, now)).unwrap());
    }

    #[test]
    fn use_once_answers_true_once_until_the_ttl_ends() {
        let store = MemoryStore::new();
        assert!(block_on(store.use_once("jti-1", Duration::from_millis(500))).unwrap());
        assert!(!block_on(store.use_once("jti-1", Duration::from_millis(500))).unwrap());
        assert!(block_on(store.use_once("jti-2", HOUR)).unwrap());
        std::thread::sleep(Duration::from_millis(700));
        assert!(block_on(store.use_once("jti-1", HOUR)).unwrap());
        assert!(!block_on(store.use_once("jti-2", HOUR)).unwrap());
        // Released: usable once more.
        block_on(store.release("jti-2")).unwrap();
        assert!(block_on(store.use_once("jti-2", HOUR)).unwrap());
        assert!(!block_on(store.use_once("jti-2", HOUR)).unwrap());
    }

    #[test]
    fn session_data_is_put_got_removed_and_expires() {
        let store = MemoryStore::new();
        block_on(store.put("s1", b"one".to_vec(), HOUR)).unwrap();
        block_on(store.put("s2", b"two".to_vec(), Duration::from_millis(500))).unwrap();
        assert_eq!(block_on(store.get("s1")).unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(block_on(store.get("s2")).unwrap().as_deref(), Some(&b"two"[..]));
        block_on(store.put("s1", b"uno".to_vec(), HOUR)).unwrap();
        assert_eq!(block_on(store.get("s1")).unwrap().as_deref(), Some(&b"uno"[..]));
        block_on(store.remove("s1")).unwrap();
        assert_eq!(block_on(store.get("s1")).unwrap(), None);
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(block_on(store.get("s2")).unwrap(), None);
        block_on(store.remove("never-there")).unwrap();
    }

    #[test]
    fn a_full_store_refuses_new_entries_until_some_expire() {
        let store = MemoryStore::with_max_entries(2);
        let short = Duration::from_millis(500);
        assert!(block_on(store.use_once("a", short)).unwrap());
        assert!(block_on(store.use_once("b", HOUR)).unwrap());
        assert!(matches!(
            block_on(store.use_once("c", HOUR)),
            Err(StoreError::Full { max: 2 })
        ));
        // Still refused as used, not forgotten.
        assert!(!block_on(store.use_once("a", HOUR)).unwrap());
        std::thread::sleep(Duration::from_millis(700));
        assert!(block_on(store.use_once("c", HOUR)).unwrap());

        let now = SystemTime::now();
        let revoke = |id: &str| {
            block_on(store.revoke(Revocation::Session {
                id: id.into(),
                until: now + HOUR,
            }))
        };
        revoke("r1").unwrap();
        revoke("r2").unwrap();
        assert!(matches!(revoke("r3"), Err(StoreError::Full { max: 2 })));
        assert!(store.is_revoked(&session("r1", "x", None, now)).unwrap());

        block_on(store.put("d1", vec![1], HOUR)).unwrap();
        block_on(store.put("d2", vec![2], HOUR)).unwrap();
        assert!(matches!(
            block_on(store.put("d3", vec![3], HOUR)),
            Err(StoreError::Full { max: 2 })
        ));
        // Replacing an existing entry is not growth.
        block_on(store.put("d2", vec![22], HOUR)).unwrap();
    }

    #[test]
    fn a_huge_ttl_is_bounded_not_a_panic() {
        let store = MemoryStore::new();
        assert!(block_on(store.use_once("k", Duration::MAX)).unwrap());
        block_on(store.put("s", vec![], Duration::MAX)).unwrap();
        assert_eq!(block_on(store.get("s")).unwrap(), Some(vec![]));
    }

    #[test]
    fn debug_prints_counts_not_contents() {
        let store = MemoryStore::new();
        block_on(store.put("secret-session-id", b"secret-data".to_vec(), HOUR)).unwrap();
        let dbg = format!("{store:?}");
        assert!(dbg.contains("sessions: 1") && !dbg.contains("secret"), "{dbg}");
    }
}
