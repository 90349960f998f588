//! Any bytes as a policy file: loading and the compilation of the access
//! policy answer with a located error or a policy, never panic.
//!
//! The oracle: an error names the file, and the document and line it
//! points at exist in the input; a loaded set's documents are numbered
//! and placed within the input, in order; loading and compiling are
//! deterministic (the same text gives the same set or the same error, the
//! same compile error).

use palisade_core::authz::AccessPolicy;
use palisade_core::policy::{PolicyError, PolicySet, Workload};

pub(crate) const SOURCE: &str = "fuzz.yaml";

/// How many documents and lines `text` can have at most: every `---` line
/// may start a document, and every line break (YAML's `\r` too) a line.
pub(crate) fn bounds(text: &str) -> (usize, usize) {
    let lines = text
        .matches(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
        .count()
        + 1;
    let markers = text.lines().filter(|l| l.starts_with("---")).count();
    (markers + 1, lines + 1)
}

/// The error points into `text`.
pub(crate) fn assert_located(e: &PolicyError, text: &str) {
    let (documents, lines) = bounds(text);
    assert_eq!(e.file, SOURCE, "{e}");
    assert!(!e.message.is_empty(), "{e}: no message");
    if let Some(d) = e.document {
        assert!(
            (1..=documents).contains(&(d as usize)),
            "{e}: document {d} of at most {documents}"
        );
    }
    if let Some(l) = e.line {
        assert!(l.get() as usize <= lines, "{e}: line {l} of {lines}");
    }
    assert!(
        e.column.is_none() || e.line.is_some(),
        "{e}: a column without a line"
    );
}

/// Loads `text`, checking what every loaded set and every error must hold.
pub(crate) fn load(text: &str) -> Result<PolicySet, PolicyError> {
    let loaded = PolicySet::from_yaml_str(text, SOURCE);
    assert_eq!(
        loaded,
        PolicySet::from_yaml_str(text, SOURCE),
        "loading is not deterministic"
    );
    match &loaded {
        Err(e) => assert_located(e, text),
        Ok(set) => {
            let (documents, lines) = bounds(text);
            let mut last = (0, 0);
            for doc in set.documents() {
                let line = doc.line.expect("a loaded document has a line");
                assert!(doc.index <= documents && line <= lines, "{doc:?}");
                assert!(doc.index > last.0 && line > last.1, "documents out of order");
                last = (doc.index, line);
            }
            for w in set.warnings() {
                assert_eq!(w.file(), SOURCE);
            }
        }
    }
    loaded
}

/// One input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(set) = load(text) else { return };
    let policy = set.for_workload(&Workload::new("details", "default"));
    let compiled = AccessPolicy::compile(&policy).map(drop);
    if let Err(e) = &compiled {
        assert_located(e, text);
    }
    assert_eq!(
        compiled,
        AccessPolicy::compile(&policy).map(drop),
        "compiling is not deterministic"
    );
}
