//! Log lines kept in memory for a test to read back: what Palisade says
//! aloud (a warning at start-up, a line said once a minute) is behaviour,
//! and a test can assert it.
//!
//! ```
//! use palisade_testkit::logs::Lines;
//!
//! let (lines, subscriber) = Lines::subscriber("info");
//! tracing::subscriber::with_default(subscriber, || tracing::warn!("the store is down"));
//! assert_eq!(lines.containing("store is down").len(), 1);
//! assert!(lines.containing("store is down")[0].contains("WARN"));
//! ```

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Log lines, as `tracing-subscriber`'s `fmt` writes them without colour
/// (`TIME LEVEL target: message fields`). Cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct Lines(Arc<Mutex<Vec<u8>>>);

impl Lines {
    /// The lines of the whole process that `filter` (an `EnvFilter`
    /// directive, such as `palisade=warn`) lets through, for work on other
    /// threads (key fetches, stores) to be seen too. The first call of the
    /// process installs the global subscriber with its filter; the later
    /// ones return the same lines, whatever their filter.
    ///
    /// # Panics
    /// When something else installed the process's global subscriber:
    /// nothing could be kept, and a test that looks for no line would
    /// pass without looking.
    #[must_use]
    pub fn of_process(filter: &str) -> Lines {
        static PROCESS: OnceLock<Lines> = OnceLock::new();
        PROCESS
            .get_or_init(|| {
                let (lines, subscriber) = Lines::subscriber(filter);
                if tracing::subscriber::set_global_default(subscriber).is_err() {
                    panic!("another global tracing subscriber is installed: this process's log lines cannot be kept");
                }
                lines
            })
            .clone()
    }

    /// New lines and a subscriber that keeps in them what `filter` lets
    /// through, to install for the calling thread only
    /// (`tracing::subscriber::set_default`, `with_default`): what a
    /// current-thread runtime's tasks log is kept, another thread's is not.
    #[must_use]
    pub fn subscriber(filter: &str) -> (Lines, impl tracing::Subscriber + Send + Sync + 'static) {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (lines, subscriber)
    }

    /// Everything kept so far.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    /// The lines kept so far that contain `needle`.
    #[must_use]
    pub fn containing(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
