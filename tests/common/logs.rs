//! Log lines of a whole test binary, kept for its tests to read
//! ([`palisade_testkit::logs::Lines::of_process`]): work on other threads
//! (the `palisade-jwks` thread loads key sets) logs there, so a
//! thread-local subscriber would miss it.

use palisade_testkit::logs::Lines;

/// Keeps the lines `filter` (an `EnvFilter` directive, such as
/// `palisade::jwks=warn`) lets through; the first call of the binary sets
/// the filter.
pub(crate) fn capture(filter: &str) {
    let _ = Lines::of_process(filter);
}

/// The captured lines that mention `needle`.
pub(crate) fn lines(needle: &str) -> Vec<String> {
    Lines::of_process("").containing(needle)
}
