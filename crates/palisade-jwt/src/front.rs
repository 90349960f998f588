//! Each thread's own copies of the few tokens it sees most, in front of
//! the shared verified-token cache (Envoy's JWT filter keeps its token
//! cache per worker thread for the same reason).
//!
//! A hit in the shared cache writes memory every thread writes: the
//! shard's lock word, and the reference counts of the identity, the token
//! and the header edits it hands out. When every worker thread serves the
//! same token (a single upstream's service token, a load test), each of
//! those writes moves a cache line between CPUs, and a hit costs about
//! twice what it costs on one thread (`scaling` in `benches/benches/jwt.rs`).
//! A hit in a thread's front writes only that thread's memory.
//!
//! A token enters a thread's front on its second accepted shared-cache
//! hit among that thread's last [`SEEN`]: the copy costs what the claims
//! cost to copy, which a hot token repays at once and a stream of distinct
//! tokens never pays. Copies are paid for by hits, one per [`COPY_COST`]
//! of them: more hot tokens than [`SLOTS`] take turns slowly rather than
//! each evicting another on every request.
//!
//! What a thread keeps: at most [`SLOTS`] tokens with their claims. A copy
//! of an authenticator that has been dropped (a reload builds a new one)
//! is the first to go when the thread next copies a token; a copy whose
//! token is refused (expired, its key gone) goes at once. Tokens of an
//! issuer pattern's tenants are not copied: a copy would keep the tenant's
//! own key set, and its refresh, alive.
//!
//! Without a metrics recorder, a hit in the front writes nothing shared; with
//! one, the recorder's counters are shared atomics. A front entry is served under the same checks as a
//! shared one (its key still in the set, its time window, where the token
//! was found), so it needs no invalidation beyond the one those checks
//! already do; it may outlive the shared entry's eviction, which changes
//! nothing about the answer.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many tokens a thread keeps.
const SLOTS: usize = 4;

/// How many of its last shared-cache hits a thread remembers.
const SEEN: usize = 8;

/// How many hits in the front pay for one copy into it.
const COPY_COST: u32 = 64;

/// A cache's name in every thread's front: unique for the process's life,
/// so a cache built where a dropped one was can never read its entries.
pub(crate) fn new_owner() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

struct Slot<V> {
    owner: u64,
    /// Dead once the owner is dropped.
    alive: Weak<()>,
    token: Box<[u8]>,
    value: V,
}

/// One thread's front: a few tokens of any cache, and a short memory of
/// the tokens it last found in a shared cache.
pub(crate) struct Front<V> {
    slots: [Option<Slot<V>>; SLOTS],
    next: usize,
    seen: [(u64, u64); SEEN],
    seen_next: usize,
    /// Hits not yet spent on a copy.
    credit: u32,
}

/// A token's fingerprint for [`Front::deserves_copy`]: its length and last
/// eight bytes (a JWT's signature). A collision only copies an entry a
/// little early.
fn fingerprint(token: &[u8]) -> u64 {
    let tail = token.len().saturating_sub(8);
    let mut last = [0u8; 8];
    last[..token.len() - tail].copy_from_slice(&token[tail..]);
    u64::from_le_bytes(last) ^ (token.len() as u64).rotate_left(32)
}

impl<V> Front<V> {
    pub(crate) const fn new() -> Self {
        Self {
            slots: [const { None }; SLOTS],
            next: 0,
            seen: [(0, 0); SEEN],
            seen_next: 0,
            // The first copies are free.
            credit: COPY_COST * SLOTS as u32,
        }
    }

    /// This thread's copy of `owner`'s entry for `token`.
    pub(crate) fn find(&mut self, owner: u64, token: &[u8]) -> Option<&V> {
        let at = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.owner == owner && *s.token == *token))?;
        self.earn();
        self.slots[at].as_ref().map(|s| &s.value)
    }

    /// One more hit to pay for copies with.
    fn earn(&mut self) {
        self.credit = self.credit.saturating_add(1).min(COPY_COST * SLOTS as u32);
    }

    /// Forgets `owner`'s entry for `token`.
    pub(crate) fn remove(&mut self, owner: u64, token: &[u8]) {
        for slot in &mut self.slots {
            if slot
                .as_ref()
                .is_some_and(|s| s.owner == owner && *s.token == *token)
            {
                *slot = None;
            }
        }
    }

    /// Records an accepted shared-cache hit of `token`; true when the
    /// token deserves a copy here: its second hit among the last [`SEEN`],
    /// with the hits paying for the copy.
    pub(crate) fn deserves_copy(&mut self, owner: u64, token: &[u8]) -> bool {
        self.earn();
        let key = (owner, fingerprint(token));
        if let Some(at) = self.seen.iter().position(|k| *k == key) {
            if self.credit < COPY_COST {
                return false;
            }
            self.credit -= COPY_COST;
            self.seen[at] = (0, 0);
            return true;
        }
        self.seen[self.seen_next] = key;
        self.seen_next = (self.seen_next + 1) % SEEN;
        false
    }

    /// Keeps `value` for `owner`'s `token` (`alive` while the owner is),
    /// in place of an empty slot, a dropped owner's copy or else the oldest.
    pub(crate) fn insert(&mut self, owner: u64, alive: Weak<()>, token: &[u8], value: V) {
        self.remove(owner, token);
        let at = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_none_or(|s| s.alive.strong_count() == 0))
            .unwrap_or_else(|| {
                let oldest = self.next;
                self.next = (self.next + 1) % SLOTS;
                oldest
            });
        self.slots[at] = Some(Slot {
            owner,
            alive,
            token: token.into(),
            value,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_kept_from_its_second_hit_and_only_for_its_owner() {
        let mut front = Front::new();
        let (a, b) = (new_owner(), new_owner());
        assert!(!front.deserves_copy(a, b"token-1"));
        assert!(
            !front.deserves_copy(b, b"token-1"),
            "another cache's hit is another key"
        );
        assert!(front.deserves_copy(a, b"token-1"));
        let life = std::sync::Arc::new(());
        front.insert(a, std::sync::Arc::downgrade(&life), b"token-1", 1);
        assert_eq!(front.find(a, b"token-1"), Some(&1));
        assert_eq!(front.find(b, b"token-1"), None);
        assert_eq!(front.find(a, b"token-2"), None);
        assert_eq!(front.find(a, b"token-"), None, "the whole token is compared");
        front.remove(a, b"token-1");
        assert_eq!(front.find(a, b"token-1"), None);
    }

    #[test]
    fn distinct_tokens_are_never_copied_and_the_oldest_copy_goes_first() {
        let mut front = Front::new();
        let owner = new_owner();
        for i in 0..100 {
            assert!(!front.deserves_copy(owner, format!("distinct-{i}").as_bytes()));
        }
        let life = std::sync::Arc::new(());
        for i in 0..=SLOTS {
            front.insert(
                owner,
                std::sync::Arc::downgrade(&life),
                format!("hot-{i}").as_bytes(),
                i,
            );
        }
        assert_eq!(front.find(owner, b"hot-0"), None, "replaced by the fifth");
        for i in 1..=SLOTS {
            assert_eq!(front.find(owner, format!("hot-{i}").as_bytes()), Some(&i));
        }
        // Short tokens have a fingerprint too.
        assert!(!front.deserves_copy(owner, b"x"));
        assert!(front.deserves_copy(owner, b"x"));
    }

    #[test]
    fn copies_are_paid_for_by_hits() {
        let mut front = Front::new();
        let owner = new_owner();
        let life = std::sync::Arc::new(());
        let mut copies = 0;
        // Six hot tokens taking turns on a thread of four slots: after the
        // free first copies, one copy per COPY_COST hits, not one for
        // every request that misses the front.
        for round in 0..1000 {
            let token = format!("hot-{}", round % 6);
            if front.find(owner, token.as_bytes()).is_some() {
                continue;
            }
            if front.deserves_copy(owner, token.as_bytes()) {
                front.insert(owner, std::sync::Arc::downgrade(&life), token.as_bytes(), round);
                copies += 1;
            }
        }
        assert!(
            (SLOTS + 1..=SLOTS + 1000 / COPY_COST as usize).contains(&copies),
            "{copies} copies"
        );
    }
    #[test]
    fn a_dropped_owners_copies_go_first() {
        let mut front = Front::new();
        let (old, new) = (new_owner(), new_owner());
        let (old_life, new_life) = (std::sync::Arc::new(()), std::sync::Arc::new(()));
        for i in 0..SLOTS {
            front.insert(
                old,
                std::sync::Arc::downgrade(&old_life),
                format!("old-{i}").as_bytes(),
                i,
            );
        }
        front.insert(new, std::sync::Arc::downgrade(&new_life), b"new-0", 10);
        assert_eq!(
            front.find(old, b"old-0"),
            None,
            "the oldest went while its owner lived"
        );
        drop(old_life);
        for i in 1..SLOTS {
            front.insert(
                new,
                std::sync::Arc::downgrade(&new_life),
                format!("new-{i}").as_bytes(),
                10 + i,
            );
        }
        assert!(
            front.slots.iter().flatten().all(|s| s.owner == new),
            "every dropped owner's copy went"
        );
        assert_eq!(
            front.find(new, b"new-0"),
            Some(&10),
            "and none of the live owner's"
        );
    }

    #[test]
    fn after_a_change_of_tokens_copies_are_paid_for_by_shared_hits() {
        let mut front = Front::new();
        let owner = new_owner();
        let life = std::sync::Arc::new(());
        // The free first copies fill the slots and spend the credit; then
        // the workload moves to a new token, which no slot holds and no
        // hit in the front can pay for: the shared hits do.
        for i in 0..SLOTS {
            let token = format!("first-{i}");
            assert!(!front.deserves_copy(owner, token.as_bytes()));
            assert!(front.deserves_copy(owner, token.as_bytes()));
            front.insert(owner, std::sync::Arc::downgrade(&life), token.as_bytes(), 0);
        }
        let mut requests = 0;
        while front.find(owner, b"fresh").is_none() && requests <= COPY_COST {
            requests += 1;
            if front.deserves_copy(owner, b"fresh") {
                front.insert(owner, std::sync::Arc::downgrade(&life), b"fresh", 1);
            }
        }
        assert_eq!(
            front.find(owner, b"fresh"),
            Some(&1),
            "copied after {requests} requests"
        );
    }
}
