//! Log lines of a whole test binary, kept for its tests to read
//! ([`palisade_testkit::logs::Lines::of_process`]): work on other threads
//! (the `palisade-jwks` thread loads key sets) logs there, so a
//! thread-local subscriber would miss it.

use std::sync::OnceLock;

use palisade_testkit::logs::Lines;

static LINES: OnceLock<Lines> = OnceLock::new();

/// Keeps the lines `filter` (an `EnvFilter` directive, such as
/// `palisade::jwks=warn`) lets through; the first call of the binary sets
/// the filter.
pub(crate) fn capture(filter: &str) {
    LINES.get_or_init(|| Lines::of_process(filter));
}

/// The captured lines that mention `needle`.
///
/// # Panics
/// Before [`capture`]: no line was kept.
pub(crate) fn lines(needle: &str) -> Vec<String> {
    LINES
        .get()
        .expect("logs::capture is called before logs::lines")
        .containing(needle)
}
