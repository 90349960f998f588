//! Log lines of a whole test binary, kept for its tests to read: work on
//! other threads (the `palisade-jwks` thread loads key sets) logs there, so
//! a thread-local subscriber would miss it.

use std::io::Write;
use std::sync::{Mutex, Once};

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keeps the lines `filter` (an `EnvFilter` directive, such as
/// `palisade::jwks=warn`) lets through; the first call of the binary sets
/// the filter.
pub(crate) fn capture(filter: &str) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(|| Capture)
            .init();
    });
}

/// The captured lines that mention `needle`.
pub(crate) fn lines(needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&LOG.lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}
