//! The in-memory set of revocations both stores answer `is_revoked` from:
//! hash lookups by session id, by (issuer, sid) and by (issuer, subject).

use std::collections::HashMap;
use std::time::SystemTime;

use super::{Revocation, SessionRef};

/// A window of a subject or `sid` revocation: sessions created before
/// `before` are revoked; the entry may be forgotten at `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    before: SystemTime,
    until: SystemTime,
}

/// The fewest entries before an insertion purges expired ones.
const FIRST_PURGE: usize = 1024;

/// Revocations with the time each may be forgotten. Looking up an entry
/// whose `until` has passed still answers revoked until it is purged: the
/// sessions it matches have expired anyway.
pub(super) struct RevocationSet {
    sessions: HashMap<String, SystemTime>,
    /// issuer → sid → its window (of two, the later `before` and the later
    /// `until`: a later logout of a `sid` revokes what an earlier one did).
    sids: HashMap<String, HashMap<String, Window>>,
    /// issuer → subject → windows, none covering another.
    subjects: HashMap<String, HashMap<String, Vec<Window>>>,
    len: usize,
    /// The entry count at which the next insertion purges.
    next_purge: usize,
}

// Its keys are session ids: counts only.
impl std::fmt::Debug for RevocationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationSet")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Whether an insertion was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Inserted {
    /// Recorded (or already covered by an entry as strong).
    Yes,
    /// Not recorded: `until` has passed.
    Expired,
    /// Not recorded: the set holds `max` live entries.
    Full,
}

impl RevocationSet {
    pub(super) fn new() -> Self {
        Self {
            sessions: HashMap::new(),
            sids: HashMap::new(),
            subjects: HashMap::new(),
            len: 0,
            next_purge: FIRST_PURGE,
        }
    }

    /// The number of entries (subject windows counted one by one).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Records `revocation` unless it has expired or the set holds `max`
    /// live entries; session and `sid` entries fill nine tenths at most,
    /// the rest kept for subject windows: what a logout falls back to when
    /// the set is full of the former (one window per user, however many
    /// sessions one user ended), so a flood of one kind cannot make every
    /// later logout fail. Purges expired entries now and then, so the set
    /// stays within twice its live entries.
    pub(super) fn insert(&mut self, revocation: &Revocation, now: SystemTime, max: usize) -> Inserted {
        let until = revocation.until();
        if until <= now {
            return Inserted::Expired;
        }
        let cap = match revocation {
            Revocation::Subject { .. } => max,
            Revocation::Session { .. } | Revocation::Sid { .. } => max - max / 10,
        };
        // An entry already there is widened in place: it adds nothing.
        let present = match revocation {
            Revocation::Session { id, .. } => self.sessions.contains_key(id),
            Revocation::Sid { issuer, sid, .. } => self.sids.get(issuer).is_some_and(|s| s.contains_key(sid)),
            Revocation::Subject { .. } => false,
        };
        if !present && self.len >= self.next_purge.min(cap) {
            self.purge(now);
            if self.len >= cap {
                return Inserted::Full;
            }
        }
        let added = match revocation {
            Revocation::Session { id, until } => record(&mut self.sessions, id, *until, |kept, until| {
                *kept = (*kept).max(until)
            }),
            Revocation::Sid {
                issuer,
                sid,
                before,
                until,
            } => record(
                self.sids.entry(issuer.clone()).or_default(),
                sid,
                Window {
                    before: *before,
                    until: *until,
                },
                |kept, new| {
                    kept.before = kept.before.max(new.before);
                    kept.until = kept.until.max(new.until);
                },
            ),
            Revocation::Subject {
                issuer,
                subject,
                before,
                until,
            } => {
                let windows = self
                    .subjects
                    .entry(issuer.clone())
                    .or_default()
                    .entry(subject.clone())
                    .or_default();
                add_window(
                    windows,
                    Window {
                        before: *before,
                        until: *until,
                    },
                )
            }
        };
        self.len = self.len.saturating_add_signed(added);
        Inserted::Yes
    }

    /// Whether a revocation matches `session`.
    pub(super) fn contains(&self, session: &SessionRef<'_>) -> bool {
        if self.sessions.contains_key(session.id) {
            return true;
        }
        if let Some(sid) = session.sid
            && self
                .sids
                .get(session.issuer)
                .and_then(|sids| sids.get(sid))
                .is_some_and(|w| session.created < w.before)
        {
            return true;
        }
        self.subjects
            .get(session.issuer)
            .and_then(|subjects| subjects.get(session.subject))
            .is_some_and(|windows| windows.iter().any(|w| session.created < w.before))
    }

    /// Forgets the entries whose `until` has passed.
    pub(super) fn purge(&mut self, now: SystemTime) {
        self.sessions.retain(|_, until| *until > now);
        for sids in self.sids.values_mut() {
            sids.retain(|_, w| w.until > now);
        }
        self.sids.retain(|_, sids| !sids.is_empty());
        for subjects in self.subjects.values_mut() {
            for windows in subjects.values_mut() {
                windows.retain(|w| w.until > now);
            }
            subjects.retain(|_, windows| !windows.is_empty());
        }
        self.subjects.retain(|_, subjects| !subjects.is_empty());
        self.len = self.sessions.len()
            + self.sids.values().map(HashMap::len).sum::<usize>()
            + self
                .subjects
                .values()
                .flat_map(HashMap::values)
                .map(Vec::len)
                .sum::<usize>();
        self.next_purge = (self.len.saturating_mul(2)).max(FIRST_PURGE);
    }
}

/// Records `new` under `key`, or `join`s it into the entry there (a later
/// time, a wider window: it revokes at least what both did); the change
/// in count, 1 when the key was not there.
fn record<V>(map: &mut HashMap<String, V>, key: &str, new: V, join: impl FnOnce(&mut V, V)) -> isize {
    match map.get_mut(key) {
        Some(kept) => {
            join(kept, new);
            0
        }
        None => {
            map.insert(key.to_owned(), new);
            1
        }
    }
}

/// Adds `new` unless a window covers it (revokes at least as much for at
/// least as long), dropping the windows it covers; the change in count.
fn add_window(windows: &mut Vec<Window>, new: Window) -> isize {
    if windows
        .iter()
        .any(|w| w.before >= new.before && w.until >= new.until)
    {
        return 0;
    }
    let before = windows.len();
    windows.retain(|w| !(new.before >= w.before && new.until >= w.until));
    windows.push(new);
    // At most a handful of windows per subject: the counts fit.
    windows.len().cast_signed() - before.cast_signed()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn subject(before: u64, until: u64) -> Revocation {
        Revocation::Subject {
            issuer: "iss".into(),
            subject: "alice".into(),
            before: at(before),
            until: at(until),
        }
    }

    fn alice(created: u64) -> SessionRef<'static> {
        SessionRef {
            id: "x",
            issuer: "iss",
            subject: "alice",
            sid: None,
            created: at(created),
        }
    }

    /// Session ids (the relying party's, the identity provider's `sid`)
    /// stay out of `Debug` output; the rest shows.
    #[test]
    fn debug_output_shows_no_session_id() {
        let session = SessionRef {
            id: "rp-session-7f3a",
            sid: Some("idp-session-91c2"),
            ..alice(0)
        };
        let mut set = RevocationSet::new();
        let revocations = [
            Revocation::Session {
                id: "rp-session-7f3a".into(),
                until: at(100),
            },
            Revocation::Sid {
                issuer: "iss".into(),
                sid: "idp-session-91c2".into(),
                before: at(1),
                until: at(100),
            },
        ];
        for r in &revocations {
            assert_eq!(set.insert(r, at(0), 10), Inserted::Yes);
        }
        let shown = format!("{session:?} {revocations:?} {set:?}");
        assert!(
            !shown.contains("rp-session") && !shown.contains("idp-session"),
            "{shown}"
        );
        assert!(shown.contains("alice") && shown.contains("iss"), "{shown}");
    }

    #[test]
    fn a_covered_subject_window_is_not_kept_and_a_covering_one_replaces() {
        let mut set = RevocationSet::new();
        assert_eq!(set.insert(&subject(10, 100), at(0), 10), Inserted::Yes);
        assert_eq!(set.insert(&subject(5, 50), at(0), 10), Inserted::Yes);
        assert_eq!(set.len(), 1);
        // Revokes more but is forgotten sooner: both kept.
        assert_eq!(set.insert(&subject(20, 60), at(0), 10), Inserted::Yes);
        assert_eq!(set.len(), 2);
        assert!(set.contains(&alice(19)) && !set.contains(&alice(20)));
        assert_eq!(set.insert(&subject(30, 200), at(0), 10), Inserted::Yes);
        assert_eq!(set.len(), 1);
        set.purge(at(250));
        assert_eq!(set.len(), 0);
        assert!(!set.contains(&alice(0)));
    }

    /// A back-channel logout by `sid` ends that session's sessions begun
    /// before it, not one the identity provider's session starts later
    /// (Keycloak keeps the `sid` when it logs a user out of one client
    /// only, and signs her in to it again at once).
    #[test]
    fn a_sid_revocation_ends_the_sessions_begun_before_it() {
        let sid = |before, until| Revocation::Sid {
            issuer: "iss".into(),
            sid: "idp-1".into(),
            before: at(before),
            until: at(until),
        };
        let with_sid = |created| SessionRef {
            sid: Some("idp-1"),
            ..alice(created)
        };
        let mut set = RevocationSet::new();
        assert_eq!(set.insert(&sid(10, 100), at(0), 10), Inserted::Yes);
        assert!(set.contains(&with_sid(9)) && !set.contains(&with_sid(10)));
        // A later logout of the same `sid`: one entry, ending both.
        assert_eq!(set.insert(&sid(20, 90), at(0), 10), Inserted::Yes);
        assert_eq!(set.len(), 1);
        assert!(set.contains(&with_sid(19)) && !set.contains(&with_sid(20)));
        set.purge(at(95));
        assert!(set.contains(&with_sid(19)), "kept to the later until");
        set.purge(at(100));
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn a_full_set_purges_then_refuses() {
        let mut set = RevocationSet::new();
        let session = |id: &str, until| Revocation::Session {
            id: id.into(),
            until: at(until),
        };
        assert_eq!(set.insert(&session("a", 10), at(0), 2), Inserted::Yes);
        assert_eq!(set.insert(&session("b", 100), at(0), 2), Inserted::Yes);
        assert_eq!(set.insert(&session("c", 100), at(0), 2), Inserted::Full);
        // Once `a` has expired, its place is free.
        assert_eq!(set.insert(&session("c", 100), at(20), 2), Inserted::Yes);
        assert_eq!(set.insert(&session("d", 10), at(20), 2), Inserted::Expired);
        assert_eq!(set.len(), 2);
    }

    /// Sessions fill nine tenths of the set: the last tenth takes subject
    /// windows, which a logout falls back to, after the sessions are full.
    #[test]
    fn a_set_full_of_sessions_keeps_room_for_subjects() {
        let mut set = RevocationSet::new();
        for i in 0..9 {
            let r = Revocation::Session {
                id: format!("s{i}"),
                until: at(100),
            };
            assert_eq!(set.insert(&r, at(0), 10), Inserted::Yes);
        }
        let tenth = Revocation::Session {
            id: "s9".into(),
            until: at(100),
        };
        assert_eq!(set.insert(&tenth, at(0), 10), Inserted::Full);
        assert_eq!(set.insert(&subject(10, 100), at(0), 10), Inserted::Yes);
        assert!(set.contains(&alice(5)));
        let bob = Revocation::Subject {
            issuer: "iss".into(),
            subject: "bob".into(),
            before: at(10),
            until: at(100),
        };
        assert_eq!(set.insert(&bob, at(0), 10), Inserted::Full);
        // A session already ended, ended again: widened in place, not
        // refused.
        let again = Revocation::Session {
            id: "s3".into(),
            until: at(200),
        };
        assert_eq!(set.insert(&again, at(0), 10), Inserted::Yes);
        set.purge(at(150));
        assert_eq!(set.len(), 1, "only s3, widened, is left");
    }
}
