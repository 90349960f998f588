//! The limit on GSSAPI accepts at once, under a crowd of Negotiate
//! requests on a multi-threaded runtime: calls that find every permit
//! taken wait for one (and then run on the blocking pool) instead of
//! running at once, and every one of them is still answered.
//!
//! GSSAPI reads its environment (the realm's configuration, the keytab,
//! alice's credential cache) when first used, so the test starts a real
//! MIT KDC and runs itself again with that environment.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use metrics::{Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use palisade_core::authn::{AuthOutcome, Authenticator as _, OwnedRequest};
use palisade_core::metrics::SPNEGO_BLOCKING;
use palisade_spnego::SpnegoAuthenticator;

mod common;

/// Set in the run that measures.
const CHILD: &str = "PALISADE_SPNEGO_CONCURRENCY_CHILD";
const TEST: &str = "a_crowd_of_negotiate_requests_runs_at_most_the_limit_of_accepts_at_once";
/// The limit under test, and how many requests arrive at once.
const LIMIT: usize = 2;
const CROWD: usize = 16;

#[test]
fn a_crowd_of_negotiate_requests_runs_at_most_the_limit_of_accepts_at_once() {
    if std::env::var_os(CHILD).is_some() {
        crowd();
        return;
    }
    common::run_again_in_a_realm(TEST, CHILD);
}

/// In the run with the realm's environment: `CROWD` requests at once
/// through an authenticator limited to `LIMIT` accepts.
fn crowd() {
    let in_flight = Arc::new(InFlight::default());
    metrics::set_global_recorder(Watch(in_flight.clone())).unwrap();
    let auth = SpnegoAuthenticator::builder().concurrency(LIMIT).build().unwrap();
    // Made before the crowd: a client context per request, each a new
    // authenticator that no acceptor has seen (no replay).
    let requests: Vec<OwnedRequest> = (0..CROWD).map(|_| common::fresh_request()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let outcomes = runtime.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(CROWD));
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|req| {
                let (auth, barrier) = (auth.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    auth.authenticate(&req).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    });
    for outcome in &outcomes {
        match outcome {
            AuthOutcome::Authenticated(a) => {
                let kerberos = a.identity.kerberos().expect("a Kerberos identity");
                assert_eq!(kerberos.principal, "alice@EXAMPLE.TEST");
            }
            other => panic!("a request of the crowd was not authenticated: {other:?}"),
        }
    }
    let stats = auth.stats();
    assert_eq!(stats.calls, CROWD as u64, "{stats:?}");
    let most = in_flight.most.load(Ordering::SeqCst);
    assert!(most >= 1, "no accept was seen running");
    assert!(
        most <= LIMIT as i64,
        "{most} accepts ran at once, with a limit of {LIMIT}"
    );
    assert_eq!(
        in_flight.now.load(Ordering::SeqCst),
        0,
        "an accept was never seen to end"
    );
}

/// The accepts in flight (the authenticator's own gauge), now and at most.
#[derive(Default)]
struct InFlight {
    now: AtomicI64,
    most: AtomicI64,
}

impl GaugeFn for InFlight {
    fn increment(&self, value: f64) {
        let now = self.now.fetch_add(value as i64, Ordering::SeqCst) + value as i64;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    fn decrement(&self, value: f64) {
        self.now.fetch_sub(value as i64, Ordering::SeqCst);
    }

    fn set(&self, value: f64) {
        self.now.store(value as i64, Ordering::SeqCst);
        self.most.fetch_max(value as i64, Ordering::SeqCst);
    }
}

/// A recorder that watches the in-flight gauge and ignores the rest.
struct Watch(Arc<InFlight>);

impl Recorder for Watch {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        if key.name() == SPNEGO_BLOCKING {
            Gauge::from_arc(self.0.clone())
        } else {
            Gauge::noop()
        }
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
