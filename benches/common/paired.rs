//! Paired timing, shared by the benches: a contender's calls alternate with
//! its floor's, both timed, so drift on a shared machine reaches both halves
//! of a pair alike.

use std::time::{Duration, Instant};

use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;

/// What a paired benchmark measured over the same iterations.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code, reason = "each bench that includes this module uses a part")]
pub(crate) struct Paired {
    /// The contender's time over the floor's.
    pub(crate) ratio: f64,
    /// The contender's time minus the floor's, per call, in nanoseconds.
    pub(crate) overhead_ns: f64,
}

/// Benchmarks `contender` under `name`, its calls alternating with the
/// floor's (in turn first and second, both timed), and returns the ratio of
/// the two sums over the same iterations: drift on a shared machine reaches
/// both halves of a pair alike. (Timed one after the other, two identical
/// configurations differed by up to 3 % on this guest.) `None` when a filter
/// left the benchmark out.
#[allow(dead_code, reason = "each bench that includes this module uses a part")]
pub(crate) fn bench_paired(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    contender: &mut dyn FnMut(),
    floor: &mut dyn FnMut(),
) -> Option<Paired> {
    run(g, name, &mut || (), &mut |()| contender(), &mut |()| floor()).map(|(paired, _)| paired)
}

/// [`bench_paired`] on fresh inputs: before each batch, `make` makes one
/// input per pair, outside the timing (a proof or a ticket that may be used
/// once), and each pair runs `contender` and `floor` on it, in turn first
/// and second, both timed. Prints a line naming `name` with both times per
/// call and their ratio.
#[allow(dead_code, reason = "each bench that includes this module uses a part")]
pub(crate) fn bench_paired_fresh<I>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    make: &mut dyn FnMut() -> I,
    contender: &mut dyn FnMut(&I),
    floor: &mut dyn FnMut(&I),
) -> Option<Paired> {
    let (paired, line) = run(g, name, make, contender, floor)?;
    eprintln!("{name}: {line}");
    Some(paired)
}

/// The pairs, and a line saying how many, both times per call and the ratio.
fn run<I>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    make: &mut dyn FnMut() -> I,
    contender: &mut dyn FnMut(&I),
    floor: &mut dyn FnMut(&I),
) -> Option<(Paired, String)> {
    let (mut sum_contender, mut sum_floor, mut pairs) = (Duration::ZERO, Duration::ZERO, 0_u64);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let inputs: Vec<I> = (0..iters).map(|_| make()).collect();
            let mut timed = Duration::ZERO;
            for (i, input) in inputs.iter().enumerate() {
                let contender_first = i % 2 == 1;
                let start = Instant::now();
                if contender_first {
                    contender(input);
                } else {
                    floor(input);
                }
                let middle = Instant::now();
                if contender_first {
                    floor(input);
                } else {
                    contender(input);
                }
                let end = Instant::now();
                let (c, f) = if contender_first {
                    (middle - start, end - middle)
                } else {
                    (end - middle, middle - start)
                };
                timed += c;
                sum_contender += c;
                sum_floor += f;
                pairs += 1;
            }
            timed
        });
    });
    if sum_floor.is_zero() {
        return None;
    }
    #[expect(clippy::cast_precision_loss, reason = "a count of pairs, far below 2^52")]
    let per = |d: Duration| d.as_secs_f64() * 1e6 / pairs as f64;
    let ratio = sum_contender.as_secs_f64() / sum_floor.as_secs_f64();
    let line = format!(
        "{pairs} pairs, contender {:.1} µs, floor {:.1} µs, ratio {ratio:.3}x",
        per(sum_contender),
        per(sum_floor)
    );
    Some((
        Paired {
            ratio,
            overhead_ns: (per(sum_contender) - per(sum_floor)) * 1e3,
        },
        line,
    ))
}
