//! What Palisade's crates share to log: a line said sparingly for a
//! condition that holds for every request or connection while it lasts (a
//! limit reached, a dependency that does not answer), where a line each
//! time would let one client, or one outage, fill the logs. What a client
//! causes is logged at `DEBUG` and counted in the metrics instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// At most one log line per interval: the first occurrence is said, the
/// next ones within the interval are not (their metrics count them).
///
/// ```
/// use std::time::Duration;
/// use palisade_core::logging::Sparse;
///
/// static FULL: Sparse = Sparse::new();
/// assert!(FULL.due(Duration::from_secs(60)));
/// assert!(!FULL.due(Duration::from_secs(60)), "once a minute");
/// ```
#[derive(Debug, Default)]
pub struct Sparse {
    /// When the last line was said, in seconds since the epoch (0: never).
    said_at: AtomicU64,
}

impl Sparse {
    /// Nothing said yet.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            said_at: AtomicU64::new(0),
        }
    }

    /// Whether to say the line now: `true` at most once per `every`
    /// (whole seconds), whichever thread asks.
    pub fn due(&self, every: Duration) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs().max(1));
        let last = self.said_at.load(Ordering::Relaxed);
        (last == 0 || now >= last.saturating_add(every.as_secs()))
            && self
                .said_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_among_threads() {
        let sparse = std::sync::Arc::new(Sparse::new());
        let said: usize = (0..8)
            .map(|_| {
                let sparse = std::sync::Arc::clone(&sparse);
                std::thread::spawn(move || (0..1000).filter(|_| sparse.due(Duration::from_secs(60))).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(said, 1);
        // An interval of zero: every time.
        let every = Sparse::new();
        assert!(every.due(Duration::ZERO) && every.due(Duration::ZERO));
    }
}
