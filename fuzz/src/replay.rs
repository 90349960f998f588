//! Replays every committed corpus file and every input that ever failed
//! (`corpus/<target>/*`, `regressions/<target>/*`) through the targets'
//! bodies, on stable and without a sanitizer: `cargo test --manifest-path
//! fuzz/Cargo.toml` (in `scripts/test`).
//!
//! One test runs them all, one target after the other on one thread (the
//! SPNEGO target sets `KRB5_KTNAME` first, before any target starts a
//! thread that could read the environment); a panicking input is reported
//! with its path and the test goes on, so one run lists every failure.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use crate::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The binaries `Cargo.toml` declares.
fn declared_bins(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            let line = bin.lines().find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split('"').nth(1)?.to_owned())
        })
        .collect()
}

#[test]
fn every_corpus_file_and_regression_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    let mut bins = declared_bins(root);
    bins.sort();
    assert_eq!(names, bins, "TARGETS and the [[bin]]s of Cargo.toml differ");
    for kind in ["corpus", "regressions"] {
        for dir in std::fs::read_dir(root.join(kind)).unwrap() {
            let name = dir.unwrap().file_name().into_string().unwrap();
            assert!(names.contains(&name.as_str()), "{kind}/{name}: no such target");
        }
    }
    // Before any target starts a thread: it sets the environment.
    crate::negotiate_header::prepare();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = Vec::new();
    let mut count = 0;
    for (name, run) in TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        assert!(!corpus.is_empty(), "corpus/{name}: no seeds");
        for file in corpus.iter().chain(&inputs(&root.join("regressions").join(name))) {
            let data = std::fs::read(file).unwrap();
            count += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failed.push(format!(
                    "{}: {message}",
                    file.strip_prefix(root).unwrap().display()
                ));
            }
        }
    }
    std::panic::set_hook(hook);
    assert!(
        failed.is_empty(),
        "{} of {count} inputs failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    println!("{count} inputs replayed");
}
