//! What Palisade's crates share to log: a line said sparingly for a
//! condition that holds for every request or connection while it lasts (a
//! limit reached, a dependency that does not answer), where a line each
//! time would let one client, or one outage, fill the logs. What a client
//! causes is logged at `DEBUG` and counted in the metrics instead.
//!
//! What a configuration says of itself as it is built (a relaxation, a
//! document not enforced) is said at `WARN` with
//! [`config_warning!`](crate::config_warning): a hot reload that builds the
//! same contents again (every 30 s while a file they name is missing)
//! says at `DEBUG` what an earlier try of them said ([`saying_again`]).

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[doc(hidden)]
pub use tracing as __tracing;

thread_local! {
    /// While [`saying_again`] runs: what the tries of the contents said.
    static SAID: RefCell<Option<HashSet<String>>> = const { RefCell::new(None) };
}

/// Runs `f`, one try of a configuration's build on this thread: what it
/// says of itself through [`config_warning!`](crate::config_warning) is
/// said at `WARN` the first time, at `DEBUG` when `said` (what the earlier
/// tries of the same contents said, kept by the caller) holds it. What is
/// said at `WARN` is added to `said`, so a warning that an earlier try did
/// not reach (it failed before) is still said once at `WARN`.
///
/// ```
/// use std::collections::HashSet;
/// use palisade_core::logging::{first_said, saying_again};
/// let mut said = HashSet::new();
/// assert!(saying_again(&mut said, || first_said("a debug switch is on")));
/// assert!(!saying_again(&mut said, || first_said("a debug switch is on")), "said before");
/// assert!(first_said("a debug switch is on"), "outside: always");
/// ```
pub fn saying_again<R>(said: &mut HashSet<String>, f: impl FnOnce() -> R) -> R {
    /// Hands the set back, even if `f` panics.
    struct Restore<'s> {
        said: &'s mut HashSet<String>,
        outer: Option<HashSet<String>>,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let inner = SAID.with(|s| s.replace(self.outer.take()));
            *self.said = inner.unwrap_or_default();
        }
    }
    let outer = SAID.with(|s| s.replace(Some(std::mem::take(said))));
    let _restore = Restore { said, outer };
    f()
}

/// Whether `message`, a configuration's warning, is said at `WARN`: always
/// outside [`saying_again`]; within it, when no try of the same contents
/// said it before (and it is now recorded as said).
#[must_use]
pub fn first_said(message: &str) -> bool {
    SAID.with(|s| match s.borrow_mut().as_mut() {
        None => true,
        Some(said) => said.insert(message.to_owned()),
    })
}

/// Logs what a configuration says of itself as it is built: at `WARN`, or
/// at `DEBUG` when an earlier try of the same contents said it
/// ([`saying_again`]). Takes `target:` and a format string with its
/// arguments.
///
/// ```
/// palisade_core::config_warning!(target: "palisade", "a debug switch is on: {}", "explainHeader");
/// ```
#[macro_export]
macro_rules! config_warning {
    (target: $target:expr, $($arg:tt)+) => {{
        let message = ::std::format!($($arg)+);
        if $crate::logging::first_said(&message) {
            $crate::logging::__tracing::warn!(target: $target, "{message}")
        } else {
            $crate::logging::__tracing::debug!(target: $target, "{message}")
        }
    }};
}

/// Logs a condition every caller's request may meet while it lasts (an
/// upstream down, an issuer unreachable): at `WARN` at most once a minute
/// from each place it is written ([`Sparse::per_minute`]), else at
/// `DEBUG`, so a flood of requests cannot fill the logs with it. Takes
/// what `tracing::warn!` takes (fields and a message).
///
/// With `per: KEY;` first, once a minute for each value of `KEY` (an
/// upstream's or an issuer's name, from configuration:
/// [`SparsePerKey`]), so one upstream's outage does not hide another's.
///
/// ```
/// let upstream = "details";
/// palisade_core::sparse_warning!(upstream, "upstream unreachable");
/// palisade_core::sparse_warning!(per: upstream; upstream, "upstream unreachable");
/// ```
#[macro_export]
macro_rules! sparse_warning {
    (per: $key:expr; $($arg:tt)+) => {{
        static SAID: $crate::logging::SparsePerKey = $crate::logging::SparsePerKey::per_minute();
        if SAID.due(&$key) {
            $crate::logging::__tracing::warn!($($arg)+)
        } else {
            $crate::logging::__tracing::debug!($($arg)+)
        }
    }};
    ($($arg:tt)+) => {{
        static SAID: $crate::logging::Sparse = $crate::logging::Sparse::per_minute();
        if SAID.due() {
            $crate::logging::__tracing::warn!($($arg)+)
        } else {
            $crate::logging::__tracing::debug!($($arg)+)
        }
    }};
}

/// At most one log line per interval: the first occurrence is said, the
/// next ones within the interval are not (their metrics count them). The
/// interval is measured on the monotonic clock, so a step of the wall
/// clock neither silences a line nor repeats it.
///
/// ```
/// use palisade_core::logging::Sparse;
///
/// static FULL: Sparse = Sparse::per_minute();
/// assert!(FULL.due());
/// assert!(!FULL.due(), "once a minute");
/// ```
#[derive(Debug)]
pub struct Sparse {
    /// The interval, in milliseconds.
    every: u64,
    /// When the last line was said, in milliseconds since the process's
    /// first look, plus one (0: never).
    said_at: AtomicU64,
}

impl Sparse {
    /// At most once a minute, Palisade's interval for every line it says
    /// sparingly; nothing said yet.
    #[must_use]
    pub const fn per_minute() -> Self {
        Self::every(Duration::from_secs(60))
    }

    /// At most once per `interval` (an interval of zero: every time);
    /// nothing said yet.
    #[must_use]
    pub const fn every(interval: Duration) -> Self {
        let millis = interval.as_millis();
        Self {
            every: if millis > u64::MAX as u128 {
                u64::MAX
            } else {
                millis as u64
            },
            said_at: AtomicU64::new(0),
        }
    }

    /// Whether to say the line now: `true` at most once per interval,
    /// whichever thread asks.
    pub fn due(&self) -> bool {
        static START: OnceLock<Instant> = OnceLock::new();
        let since = START.get_or_init(Instant::now).elapsed();
        let now = u64::try_from(since.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.said_at.load(Ordering::Relaxed);
        (last == 0 || now >= last.saturating_add(self.every))
            && self
                .said_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Once a minute ([`Sparse::per_minute`]).
impl Default for Sparse {
    fn default() -> Self {
        Self::per_minute()
    }
}

/// A [`Sparse`] for each key (an upstream's or an issuer's name): at most
/// one line per interval for each. Keys are meant to come from
/// configuration; beyond [`SparsePerKey::KEYS`] of them, the others share
/// one interval, so keys a client chooses cannot grow it.
///
/// ```
/// use palisade_core::logging::SparsePerKey;
///
/// static DOWN: SparsePerKey = SparsePerKey::per_minute();
/// assert!(DOWN.due("details") && DOWN.due("ratings"));
/// assert!(!DOWN.due("details"), "once a minute for each");
/// ```
#[derive(Debug)]
pub struct SparsePerKey {
    every: Duration,
    /// Each key's hash and its own interval, in the order first seen.
    keys: std::sync::Mutex<Vec<(u64, Sparse)>>,
    /// The interval of keys beyond [`KEYS`](Self::KEYS).
    others: Sparse,
}

impl SparsePerKey {
    /// The most keys with an interval of their own.
    pub const KEYS: usize = 64;

    /// At most once a minute for each key; nothing said yet.
    #[must_use]
    pub const fn per_minute() -> Self {
        Self::every(Duration::from_secs(60))
    }

    /// At most once per `interval` for each key; nothing said yet.
    #[must_use]
    pub const fn every(interval: Duration) -> Self {
        Self {
            every: interval,
            keys: std::sync::Mutex::new(Vec::new()),
            others: Sparse::every(interval),
        }
    }

    /// Whether to say the line for `key` now: `true` at most once per
    /// interval for each key, whichever thread asks.
    pub fn due<K: std::hash::Hash + ?Sized>(&self, key: &K) -> bool {
        use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, sparse)) = keys.iter().find(|(h, _)| *h == hash) {
            return sparse.due();
        }
        if keys.len() >= Self::KEYS {
            return self.others.due();
        }
        let sparse = Sparse::every(self.every);
        let due = sparse.due();
        keys.push((hash, sparse));
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A condition met by request after request: one `WARN` line, the
    /// others at `DEBUG`, each with its fields.
    #[test]
    fn a_sparse_warning_warns_once_and_says_the_rest_at_debug() {
        if !palisade_testkit::in_a_process_of_its_own(
            "logging::tests::a_sparse_warning_warns_once_and_says_the_rest_at_debug",
        ) {
            return;
        }
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("debug");
        tracing::subscriber::with_default(subscriber, || {
            for upstream in ["a", "b", "c"] {
                crate::sparse_warning!(upstream, "upstream unreachable");
            }
        });
        let said = lines.containing("upstream unreachable");
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(
            said[0].contains("WARN") && said[0].contains("upstream=\"a\""),
            "{said:?}"
        );
        assert!(said[1..].iter().all(|l| l.contains("DEBUG")), "{said:?}");
    }

    /// Once a minute for each key: a second upstream's outage is said
    /// while the first's is; keys beyond the table share one interval.
    #[test]
    fn a_sparse_warning_per_key_warns_once_for_each() {
        // The log lines of a thread's subscriber: alone in the process, no
        // other test registers the event's call site first.
        if !palisade_testkit::in_a_process_of_its_own(
            "logging::tests::a_sparse_warning_per_key_warns_once_for_each",
        ) {
            return;
        }
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("debug");
        tracing::subscriber::with_default(subscriber, || {
            for upstream in ["a", "b", "a", "b"] {
                crate::sparse_warning!(per: upstream; upstream, "upstream down");
            }
        });
        let said = lines.containing("upstream down");
        assert_eq!(said.len(), 4, "{said:?}");
        assert!(said[0].contains("WARN") && said[1].contains("WARN"), "{said:?}");
        assert!(said[2].contains("DEBUG") && said[3].contains("DEBUG"), "{said:?}");
        let table = SparsePerKey::per_minute();
        let first_seen = (0..SparsePerKey::KEYS + 10).filter(|k| table.due(k)).count();
        assert_eq!(
            first_seen,
            SparsePerKey::KEYS + 1,
            "the others share one interval"
        );
        assert!(!table.due(&0) && !table.due(&(SparsePerKey::KEYS + 5)));
    }

    #[test]
    fn one_line_per_interval_among_threads() {
        let sparse = std::sync::Arc::new(Sparse::per_minute());
        let said: usize = (0..8)
            .map(|_| {
                let sparse = std::sync::Arc::clone(&sparse);
                std::thread::spawn(move || (0..1000).filter(|_| sparse.due()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(said, 1);
        // An interval of zero: every time; a short one, again once it passed.
        let every = Sparse::every(Duration::ZERO);
        assert!(every.due() && every.due());
        let short = Sparse::every(Duration::from_millis(50));
        assert!(short.due());
        assert!(!short.due());
        std::thread::sleep(Duration::from_millis(60));
        assert!(short.due());
        // The default: once a minute.
        let default = Sparse::default();
        assert!(default.due() && !default.due());
        // An interval beyond u64's milliseconds: once.
        let forever = Sparse::every(Duration::MAX);
        assert!(forever.due() && !forever.due());
    }
}
