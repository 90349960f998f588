//! The verified-token cache: a token seen before skips parsing and signature
//! verification.
//!
//! Keyed by the token's bytes themselves (compared exactly, so no hash
//! collision can make one token pass for another), spread over shards behind
//! read-write locks so concurrent hits rarely touch the same lock. The hash
//! is a seeded one of the token's length and its last [`HASHED`] bytes: a
//! JWT ends with its signature, which tells verified tokens apart as well
//! as the whole token would, and a hit need not hash ~800 bytes. The JWT
//! cache inserts only verified tokens, so a caller cannot fill a bucket
//! with tokens of one tail; the introspection cache's keys are SHA-256
//! digests, hashed whole. Bounded in entries; when a shard is full,
//! expired entries go first, then one the caller calls expendable (the
//! introspection cache's refusals), then an arbitrary one. Expiry and key presence
//! are checked by the caller on every hit.

use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};

use hashbrown::HashTable;

const SHARDS: usize = 32;

/// How many of a token's last bytes are hashed (with its length).
const HASHED: usize = 64;

type Slot<V> = (u64, Arc<[u8]>, V);

/// The shard of a hash: bits 52 to 56, which hashbrown uses for neither
/// the bucket (the low bits) nor the tag it compares before a key (the top
/// seven). Shards chosen by the top bits would leave the tags of one
/// shard's entries only two bits to differ in, and a lookup would compare
/// its ~800-byte token with about one entry in four of each group probed
/// instead of one in 128.
fn shard_of(hash: u64) -> usize {
    usize::try_from(hash >> 52).unwrap_or(0) % SHARDS
}

/// A bounded, sharded map from token to verified entry.
pub(crate) struct TokenCache<V> {
    shards: Box<[RwLock<HashTable<Slot<V>>>]>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
}

impl<V: Clone> TokenCache<V> {
    pub(crate) fn new(entries: u64) -> Self {
        let entries = usize::try_from(entries).unwrap_or(usize::MAX);
        let per_shard = entries.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            per_shard,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn locate(&self, token: &[u8]) -> (u64, &RwLock<HashTable<Slot<V>>>) {
        let tail = &token[token.len().saturating_sub(HASHED)..];
        let hash = self.hasher.hash_one((token.len(), tail));
        (hash, &self.shards[shard_of(hash)])
    }

    pub(crate) fn get(&self, token: &[u8]) -> Option<V> {
        self.with(token, V::clone)
    }

    /// `f` of the entry for `token`, called under the shard's read lock:
    /// a hit that needs only to read the entry does not clone it.
    pub(crate) fn with<R>(&self, token: &[u8], f: impl FnOnce(&V) -> R) -> Option<R> {
        let (hash, shard) = self.locate(token);
        let table = shard.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        table
            .find(hash, |(h, k, _)| *h == hash && &**k == token)
            .map(|(_, _, v)| f(v))
    }

    /// Inserts, evicting when the shard is full: entries for which `expired`
    /// holds first, else an arbitrary one.
    pub(crate) fn insert(&self, token: &[u8], value: V, expired: impl Fn(&V) -> bool) {
        self.insert_sparing(token, value, expired, |_| false);
    }

    /// [`insert`](Self::insert), evicting, when no entry has expired, one
    /// for which `expendable` holds before any other (a refusal before an
    /// admission: a flood of bad tokens then evicts its own kind).
    pub(crate) fn insert_sparing(
        &self,
        token: &[u8],
        value: V,
        expired: impl Fn(&V) -> bool,
        expendable: impl Fn(&V) -> bool,
    ) {
        let (hash, shard) = self.locate(token);
        let mut table = shard.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(entry) = table.find_entry(hash, |(h, k, _)| *h == hash && &**k == token) {
            entry.remove();
        }
        if table.len() >= self.per_shard {
            table.retain(|(_, _, v)| !expired(v));
        }
        if table.len() >= self.per_shard
            && let Some(victim) = table
                .iter()
                .find(|(_, _, v)| expendable(v))
                .or_else(|| table.iter().next())
                .map(|(h, k, _)| (*h, k.clone()))
            && let Ok(entry) = table.find_entry(victim.0, |(h, k, _)| *h == victim.0 && *k == victim.1)
        {
            entry.remove();
        }
        table.insert_unique(hash, (hash, Arc::from(token), value), |(h, _, _)| *h);
    }

    pub(crate) fn remove(&self, token: &[u8]) {
        let (hash, shard) = self.locate(token);
        let mut table = shard.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(entry) = table.find_entry(hash, |(h, k, _)| *h == hash && &**k == token) {
            entry.remove();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().map_or(0, |t| t.len())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_leaves_hashbrowns_tag_its_bits() {
        let c = TokenCache::<u8>::new(100);
        let mut tags = vec![std::collections::HashSet::new(); SHARDS];
        for i in 0..20_000u32 {
            let token = format!("eyJhbGciOiJFUzI1NiJ9.payload.signature-{i}");
            let tail = &token.as_bytes()[token.len().saturating_sub(HASHED)..];
            let hash = c.hasher.hash_one((token.len(), tail));
            tags[shard_of(hash)].insert(hash >> 57);
        }
        for (shard, seen) in tags.iter().enumerate() {
            // 7 free bits: about 128 tags; the top bits as the shard left 4.
            assert!(seen.len() > 100, "shard {shard}: {} distinct tags", seen.len());
        }
    }

    #[test]
    fn hits_need_the_exact_token() {
        let c = TokenCache::new(100);
        c.insert(b"a.b.c", 1, |_| false);
        assert_eq!(c.get(b"a.b.c"), Some(1));
        assert_eq!(c.get(b"a.b.d"), None);
        assert_eq!(c.get(b"a.b.c "), None);
        c.remove(b"a.b.c");
        assert_eq!(c.get(b"a.b.c"), None);
    }

    #[test]
    fn the_cache_stays_bounded_and_evicts_expired_entries_first() {
        // Room for 32 entries a shard; two live entries a shard on average,
        // then a flood of entries that have expired (values from 1,000 on).
        let c = TokenCache::new(SHARDS as u64 * 32);
        let expired = |v: &usize| *v >= 1_000;
        let live: Vec<String> = (0..2 * SHARDS).map(|i| format!("live-{i}")).collect();
        for (i, t) in live.iter().enumerate() {
            c.insert(t.as_bytes(), i, expired);
        }
        for i in 0..20_000 {
            c.insert(format!("token-{i}").as_bytes(), 1_000 + i, expired);
        }
        assert!(c.len() <= SHARDS * 32, "{}", c.len());
        assert!(
            live.iter().all(|t| c.get(t.as_bytes()).is_some()),
            "expired entries went first: no live one was evicted"
        );
        assert_eq!(c.get(b"token-19999"), Some(20_999));
    }

    #[test]
    fn tokens_of_one_tail_are_told_apart_by_their_other_bytes() {
        let c = TokenCache::new(100);
        let tail = "s".repeat(HASHED);
        c.insert(format!("a.{tail}").as_bytes(), 1, |_| false);
        c.insert(format!("b.{tail}").as_bytes(), 2, |_| false);
        assert_eq!(c.get(format!("a.{tail}").as_bytes()), Some(1));
        assert_eq!(c.get(format!("b.{tail}").as_bytes()), Some(2));
        assert_eq!(c.get(format!("c.{tail}").as_bytes()), None);
        assert_eq!(c.get(tail.as_bytes()), None);
    }

    #[test]
    fn expendable_entries_go_before_the_others() {
        // Room for 32 entries a shard; two (even) entries a shard on
        // average to keep, then a flood of expendable (odd) ones.
        let c = TokenCache::new(SHARDS as u64 * 32);
        let kept: Vec<String> = (0..2 * SHARDS).map(|i| format!("kept-{i}")).collect();
        for (i, t) in kept.iter().enumerate() {
            c.insert_sparing(t.as_bytes(), 2 * i, |_| false, |v| v % 2 == 1);
        }
        for i in 0..20_000 {
            c.insert_sparing(
                format!("junk-{i}").as_bytes(),
                2 * i + 1,
                |_| false,
                |v| v % 2 == 1,
            );
        }
        assert!(c.len() <= SHARDS * 32, "{}", c.len());
        assert!(
            kept.iter().all(|t| c.get(t.as_bytes()).is_some()),
            "a flood of expendable entries evicted none of the others"
        );
    }

    #[test]
    fn reinserting_replaces() {
        let c = TokenCache::new(10);
        c.insert(b"t", 1, |_| false);
        c.insert(b"t", 2, |_| false);
        assert_eq!(c.get(b"t"), Some(2));
        assert_eq!(c.len(), 1);
    }
}
