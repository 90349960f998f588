//! A GSSAPI accept that stalls (MIT's replay cache locked by another
//! process, as a slow disk or a shared cache file does) on a multi-threaded
//! runtime: it may hold the worker it runs on, never every worker. Before,
//! every worker could be inside an accept at once (the limit on accepts is
//! four per CPU), and the whole server, health checks included, waited for
//! the lock.
//!
//! GSSAPI reads its environment when first used, so the test starts a real
//! MIT KDC and runs itself again with that environment; a third run of the
//! same binary holds the lock, since a process's own `fcntl` locks never
//! keep it waiting.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use palisade_core::authn::{AuthOutcome, Authenticator as _};
use palisade_spnego::SpnegoAuthenticator;

mod common;
use common::fresh_request;

/// Set in the run with the realm's environment.
const CHILD: &str = "PALISADE_SPNEGO_STALL_CHILD";
/// Set, to the file to lock, in the run that holds the lock.
const LOCKER: &str = "PALISADE_SPNEGO_STALL_LOCKER";
const TEST: &str = "a_stalled_accept_leaves_a_worker_to_serve_every_other_task";
/// How long the lock is held.
const STALL: Duration = Duration::from_secs(4);

#[test]
fn a_stalled_accept_leaves_a_worker_to_serve_every_other_task() {
    if let Some(file) = std::env::var_os(LOCKER) {
        hold_lock(&file);
        return;
    }
    if std::env::var_os(CHILD).is_some() {
        stall();
        return;
    }
    common::run_again_in_a_realm(TEST, CHILD);
}

/// In the locking run: the replay cache locked as MIT locks it, for `STALL`.
fn hold_lock(file: &std::ffi::OsStr) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    rustix::fs::fcntl_lock(&f, rustix::fs::FlockOperation::LockExclusive).unwrap();
    println!("locked");
    std::thread::sleep(STALL);
}

/// In the run with the realm's environment: two tickets arrive while the
/// replay cache is locked, on a runtime of two workers; a task that only
/// sleeps a millisecond is still served at once.
fn stall() {
    let auth = SpnegoAuthenticator::builder().build().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The first accept makes the replay cache's file.
    let first = fresh_request();
    let outcome = runtime.block_on(async { auth.authenticate(&first).await });
    assert!(matches!(outcome, AuthOutcome::Authenticated(_)), "{outcome:?}");
    let dir = std::env::var("KRB5RCACHEDIR").expect("the realm's replay cache directory");
    let cache = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .expect("a replay cache")
        .unwrap()
        .path();
    let mut locker = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
        .env(LOCKER, &cache)
        .env_remove(CHILD)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(locker.stdout.take().unwrap()).lines();
    assert!(
        // libtest prints the line after its `test NAME ... `.
        lines.any(|l| l.is_ok_and(|l| l.ends_with("locked"))),
        "the replay cache was not locked"
    );
    let requests = [fresh_request(), fresh_request()];
    let started = Instant::now();
    let (done, answers) = mpsc::channel();
    for req in requests {
        let (auth, done) = (auth.clone(), done.clone());
        runtime.spawn(async move {
            let outcome = auth.authenticate(&req).await;
            done.send((
                "accept",
                matches!(outcome, AuthOutcome::Authenticated(_)),
                started.elapsed(),
            ))
            .unwrap();
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    let probe = done.clone();
    runtime.spawn(async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        probe.send(("probe", true, started.elapsed())).unwrap();
    });
    drop(done);
    let answers: Vec<_> = answers.iter().take(3).collect();
    let _ = locker.wait();
    let probe = answers
        .iter()
        .find(|(what, ..)| *what == "probe")
        .expect("the probe ran");
    assert!(
        probe.2 < STALL / 2,
        "a task that sleeps 1 ms waited for the stalled accepts: {answers:?}"
    );
    // The tickets are answered once the lock is let go: they did wait for
    // it (else the test proves nothing).
    assert!(
        answers
            .iter()
            .filter(|(what, ok, waited)| *what == "accept" && *ok && *waited >= STALL / 2)
            .count()
            == 2,
        "{answers:?}"
    );
    runtime.shutdown_timeout(Duration::from_secs(1));
}
