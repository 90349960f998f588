//! What every worker thread writes on every request, without the threads
//! writing one cache line in turn (`scaling` in `benches/benches/jwt.rs`):
//!
//! - counters: each thread adds to its own stripe, and a read sums the
//!   stripes. One shared atomic counter per rule made a rule that matches
//!   most requests move its line between CPUs on each of them;
//! - shares of one `Arc`: each request's record keeps the configuration
//!   alive through its thread's share, so the clone and the drop write that
//!   share's count, not the one count of the configuration.

use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Counters per line: a line is 128 bytes, the pair of 64-byte lines
/// x86's adjacent-line prefetch moves together.
const PER_LINE: usize = 16;

#[repr(align(128))]
struct Line([AtomicU64; PER_LINE]);

impl Line {
    fn new() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// How many stripes: the CPUs, rounded up to a power of two, at most 16.
/// A thread's stripe is its number in the order threads first counted,
/// modulo this: a runtime's workers, started together, mostly get stripes
/// of their own, but two threads can share one (which is only slower, as
/// one shared counter was).
fn stripes() -> usize {
    static STRIPES: OnceLock<usize> = OnceLock::new();
    *STRIPES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .next_power_of_two()
            .min(16)
    })
}

/// This thread's stripe number, any size: the caller reduces it.
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    NUMBER
        .try_with(|n| {
            if n.get() == usize::MAX {
                n.set(NEXT.fetch_add(1, Ordering::Relaxed));
            }
            n.get()
        })
        .unwrap_or(0)
}

/// `len` counters, striped by thread.
#[derive(Default)]
pub(crate) struct Striped {
    lines: Box<[Line]>,
    /// Lines per stripe: `len` counters, rounded up to whole lines.
    per_stripe: usize,
    /// The number of stripes less one (a power of two less one).
    mask: usize,
    len: usize,
}

impl Striped {
    pub(crate) fn new(len: usize) -> Self {
        let per_stripe = len.div_ceil(PER_LINE);
        Self {
            lines: (0..per_stripe * stripes()).map(|_| Line::new()).collect(),
            per_stripe,
            mask: stripes() - 1,
            len,
        }
    }

    /// Adds one to counter `i` (nothing when out of range).
    #[inline]
    pub(crate) fn add(&self, i: usize) {
        if i >= self.len {
            return;
        }
        let stripe = thread_number() & self.mask;
        if let Some(line) = self.lines.get(stripe * self.per_stripe + i / PER_LINE) {
            line.0[i % PER_LINE].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counter `i`: the sum of its stripes.
    pub(crate) fn get(&self, i: usize) -> u64 {
        if i >= self.len {
            return 0;
        }
        self.lines
            .chunks(self.per_stripe)
            .map(|stripe| stripe[i / PER_LINE].0[i % PER_LINE].load(Ordering::Relaxed))
            .sum()
    }
}

/// Shares of one `Arc<T>`, one per stripe. Each share is an `Arc` of its
/// own holding a clone of the value's: cloning a thread's share writes the
/// share's count only. The value lives while `Shares` or any clone of a
/// share does; nothing is kept per thread, so dropping `Shares` and the
/// clones frees the value wherever its threads are.
pub(crate) struct Shares<T> {
    shares: Box<[Arc<Share<T>>]>,
    /// The number of stripes less one.
    mask: usize,
}

/// One share of a value: derefs to it. Aligned to a line pair, so that in
/// its `Arc` the reference counts share their line with nothing else.
#[repr(align(128))]
pub(crate) struct Share<T>(Arc<T>);

impl<T> Shares<T> {
    pub(crate) fn new(value: T) -> Self {
        let value = Arc::new(value);
        Self {
            shares: (0..stripes()).map(|_| Arc::new(Share(value.clone()))).collect(),
            mask: stripes() - 1,
        }
    }

    /// The calling thread's share.
    #[inline]
    pub(crate) fn mine(&self) -> &Arc<Share<T>> {
        &self.shares[thread_number() & self.mask]
    }

    /// The value.
    pub(crate) fn value(&self) -> &T {
        &self.shares[0].0
    }
}

impl<T> Deref for Share<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Share<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Debug for Striped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries((0..self.len).map(|i| self.get(i)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_threads_additions_are_counted_once() {
        let counters = Striped::new(40);
        std::thread::scope(|s| {
            for t in 0..8 {
                let counters = &counters;
                s.spawn(move || {
                    for i in 0..40 {
                        for _ in 0..=t {
                            counters.add(i);
                        }
                    }
                });
            }
        });
        // Threads 0..8 added 1..=8 times each: 36 per counter.
        assert!((0..40).all(|i| counters.get(i) == 36), "{counters:?}");
        counters.add(40);
        assert_eq!(counters.get(40), 0, "out of range: nothing");
        assert_eq!(format!("{:?}", Striped::new(2)), "[0, 0]");
        assert_eq!(Striped::default().get(0), 0);
    }

    #[test]
    fn a_share_keeps_the_value_until_the_last_clone_goes() {
        let shares = Shares::new(String::from("compiled"));
        let value = Arc::downgrade(&shares.mine().0);
        let held = shares.mine().clone();
        drop(shares);
        assert_eq!(held.as_str(), "compiled", "a request's share outlives the swap");
        assert_eq!(value.strong_count(), 1, "the other shares are gone");
        drop(held);
        assert_eq!(
            value.strong_count(),
            0,
            "and so is the value, with the last share"
        );
    }

    #[test]
    fn threads_get_shares_of_their_own() {
        let shares = Shares::new(0_u8);
        assert_eq!(shares.shares.len(), stripes());
        assert!(
            shares
                .shares
                .iter()
                .all(|s| Arc::ptr_eq(&s.0, &shares.shares[0].0)),
            "one value"
        );
        // New threads get new numbers, so shares round the stripes (other
        // tests' threads may take numbers in between: eight threads all on
        // one stripe of several would take seven such coincidences).
        let seen: std::collections::HashSet<usize> = std::thread::scope(|s| {
            (0..8)
                .map(|_| s.spawn(|| Arc::as_ptr(shares.mine()) as usize).join().unwrap())
                .collect()
        });
        assert_eq!(seen.len() > 1, stripes() > 1, "{} shares seen", seen.len());
    }

    #[test]
    fn the_stripes_of_a_counter_are_lines_apart() {
        let counters = Striped::new(1);
        let lines: Vec<usize> = counters
            .lines
            .iter()
            .map(|l| std::ptr::from_ref(l) as usize)
            .collect();
        assert!(lines.iter().all(|a| a % 128 == 0), "aligned to 128 bytes");
        assert_eq!(lines.len(), stripes());
    }
}
