//! Counters that every worker thread adds to on every request, without
//! the threads writing one cache line in turn: each thread adds to its own
//! stripe, and a read sums the stripes. One shared atomic counter per rule
//! made a rule that matches most requests move its line between CPUs on
//! each of them (`scaling` in `benches/benches/jwt.rs`).

use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
