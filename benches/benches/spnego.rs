//! SPNEGO (HTTP `Negotiate`): the accept cost per request, Palisade's
//! `Guard::check` against raw libgssapi (the floor), on fresh initiator
//! tokens; the session-cookie path; and per-request time over a kept-alive
//! loopback connection, Palisade behind axum against Apache httpd with
//! mod_auth_gssapi, on the same realm and keytab in the same run, as a
//! ratio. Results: benches/README.md.
//!
//! The Kerberos library reads its configuration from the process
//! environment, which this workspace never sets (`unsafe` in Rust 2024): the
//! bench starts a realm (`KerberosRealm`: a real MIT KDC on loopback), then
//! runs itself again as a child with the realm's server environment and
//! alice's ticket cache, and the child measures while the parent keeps the
//! KDC up.
//!
//! Every accept needs a token no acceptor has seen (the replay cache
//! refuses a repeat): tokens are made with libgssapi's initiator outside the
//! timing, SPNEGO-wrapped as browsers and curl send them.
#![expect(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use criterion::{BatchSize, Criterion, criterion_group};

#[path = "../common/paired.rs"]
mod paired;
use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext, ServerCtx};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE, OidSet};
use paired::bench_paired_fresh;
use palisade::core::adapter::Decision;
use palisade::core::authn::OwnedRequest;
use palisade::core::authz::AccessPolicy;
use palisade::core::{Check, Guard, Identity, RequestAuth};
use palisade::spnego::{SessionCookie, SpnegoAuthenticator};
use palisade::testkit::{ApacheGssapi, KerberosRealm};

/// Set in the child that measures.
const CHILD: &str = "PALISADE_SPNEGO_BENCH_CHILD";
/// The environment the child needs: the realm's server environment and
/// alice's credential cache.
const KRB5_ENV: [&str; 5] = [
    "KRB5_CONFIG",
    "KRB5_KDC_PROFILE",
    "KRB5_KTNAME",
    "KRB5RCACHEDIR",
    "KRB5CCNAME",
];
const ALICE: &str = "alice@EXAMPLE.TEST";
const SERVICE: &str = "HTTP@localhost";

fn main() {
    if std::env::var_os(CHILD).is_some() {
        for var in KRB5_ENV {
            assert!(
                std::env::var_os(var).is_some(),
                "{var} is not set in the measuring child"
            );
        }
        benches();
        Criterion::default().configure_from_args().final_summary();
        return;
    }
    let realm = KerberosRealm::start().unwrap_or_else(|e| panic!("{e}"));
    realm.add_user("alice", "alice-password").unwrap();
    let keytab = realm.add_service("HTTP/localhost").unwrap();
    let ccache = realm.kinit("alice", "alice-password").unwrap();
    let env = realm.server_and_client_env(&keytab, &ccache);
    let status = Command::new(std::env::current_exe().unwrap())
        .args(std::env::args_os().skip(1))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(CHILD, "1")
        .status()
        .expect("the bench runs itself again with the realm's environment");
    // The realm (its KDC and directory) lives until the child is done.
    drop(realm);
    std::process::exit(status.code().unwrap_or(1));
}

// ------------------------------------------------------------- Kerberos

/// A Negotiate token for `HTTP@localhost` from alice's default credential
/// cache that no acceptor has seen: SPNEGO with Kerberos inside, asking for
/// mutual authentication, as browsers and curl send.
fn fresh_token() -> Vec<u8> {
    let target = Name::new(SERVICE.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE))
        .and_then(|n| n.canonicalize(Some(GSS_MECH_KRB5)))
        .unwrap();
    let mut ctx = ClientCtx::new(None, target, CtxFlags::GSS_C_MUTUAL_FLAG, Some(GSS_MECH_SPNEGO));
    ctx.step(None, None).unwrap().expect("an initial token").to_vec()
}

fn negotiate(token: &[u8]) -> String {
    format!("Negotiate {}", STANDARD.encode(token))
}

fn negotiate_request(token: &[u8]) -> OwnedRequest {
    OwnedRequest::get("/").header("authorization", negotiate(token))
}

/// Acceptor credentials as Palisade acquires them: the keytab's, for SPNEGO
/// and Kerberos.
fn acceptor_cred() -> Cred {
    let mut mechs = OidSet::new();
    mechs.add(GSS_MECH_SPNEGO).unwrap();
    mechs.add(GSS_MECH_KRB5).unwrap();
    Cred::acquire(None, None, CredUsage::Accept, Some(&mechs)).unwrap()
}

/// The floor: one GSSAPI accept and the client's name.
fn raw_accept(cred: &Cred, token: &[u8]) -> Name {
    let mut ctx = ServerCtx::new(Some(cred.clone()));
    ctx.step(token, None).unwrap();
    ctx.source_name().unwrap()
}

/// The GSSAPI calls Palisade's accept makes (`palisade_spnego::accept`),
/// on the calling thread: the floor's step, then one inquiry for the
/// mechanism, name and lifetime, the name's text and the delegated
/// credential. (The local name is asked once per principal and kept.)
fn raw_accept_palisade_calls(cred: &Cred, token: &[u8]) -> (String, Option<Vec<u8>>) {
    let mut ctx = ServerCtx::new(Some(cred.clone()));
    let mutual = ctx.step(token, None).unwrap();
    assert!(ctx.is_complete());
    let info = ctx.info().unwrap();
    assert!(info.mechanism == GSS_MECH_KRB5);
    black_box(info.lifetime);
    black_box(ctx.take_delegated_cred());
    (info.source_name.to_string(), mutual.map(|m| m.to_vec()))
}

fn authenticator(session: Option<SessionCookie>) -> SpnegoAuthenticator {
    let builder = SpnegoAuthenticator::builder();
    match session {
        Some(cookie) => builder.session_cookie(cookie),
        None => builder,
    }
    .build()
    .unwrap()
}

/// The guard's decision, checked inside `rt` as a request handler would:
/// on a multi-threaded runtime (axum's) GSSAPI runs on this thread, on a
/// single-threaded one (actix-web's) on the blocking pool.
fn decide(rt: &tokio::runtime::Runtime, guard: &Guard, req: &OwnedRequest) -> Decision {
    rt.block_on(async {
        match guard.check(req) {
            Check::Ready(d) => d,
            Check::Pending(fut) => fut.await,
        }
    })
}

fn principal(decision: &Decision) -> Option<&str> {
    match decision {
        Decision::Allow(a) => a.auth().identity()?.kerberos().map(|k| k.principal.as_str()),
        _ => None,
    }
}

// -------------------------------------------------------------- benches

fn accept_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cred = acceptor_cred();
    let spnego = authenticator(None);
    let guard = Guard::builder()
        .authenticator(spnego.clone())
        .access_policy(AccessPolicy::allow_all())
        .build()
        .unwrap();

    assert_eq!(raw_accept(&cred, &fresh_token()).to_string(), ALICE);
    assert_eq!(raw_accept_palisade_calls(&cred, &fresh_token()).0, ALICE);
    let d = decide(&rt, &guard, &negotiate_request(&fresh_token()));
    assert_eq!(principal(&d), Some(ALICE), "Palisade: {d:?}");

    let mut g = c.benchmark_group("spnego/accept");
    g.bench_function("raw_libgssapi", |b| {
        b.iter_batched(
            fresh_token,
            |token| raw_accept(&cred, black_box(&token)),
            BatchSize::SmallInput,
        );
    });
    // Where Palisade's time goes, on the same tokens: the GSSAPI calls it
    // makes, on this thread; and the floor's calls through tokio's blocking
    // pool, as Palisade runs them.
    g.bench_function("raw_libgssapi_palisade_calls", |b| {
        b.iter_batched(
            fresh_token,
            |token| raw_accept_palisade_calls(&cred, black_box(&token)),
            BatchSize::SmallInput,
        );
    });
    // The floor and the client's name as text (`gss_display_name`, which
    // MIT's krb5 mechanism answers by creating a krb5 context each time):
    // what any server that logs or maps the user pays, Apache included.
    g.bench_function("raw_libgssapi_name_text", |b| {
        b.iter_batched(
            fresh_token,
            |token| raw_accept(&cred, black_box(&token)).to_string(),
            BatchSize::SmallInput,
        );
    });
    g.bench_function("raw_libgssapi_spawn_blocking", |b| {
        b.iter_batched(
            fresh_token,
            |token| {
                let cred = cred.clone();
                rt.block_on(async move {
                    tokio::task::spawn_blocking(move || raw_accept(&cred, black_box(&token)))
                        .await
                        .unwrap()
                })
            },
            BatchSize::SmallInput,
        );
    });
    let before = spnego.stats();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    g.bench_function("palisade", |b| {
        b.iter_batched(
            || negotiate_request(&fresh_token()),
            |req| {
                let d = decide(&multi, &guard, black_box(&req));
                assert_eq!(principal(&d), Some(ALICE));
                d
            },
            BatchSize::SmallInput,
        );
    });
    // Paired: each Palisade accept alternates with the floor's, both on
    // fresh tokens made untimed before the pairs, so drift on the shared
    // machine reaches both alike (as `dpop/paired_request_vs_floor`).
    bench_paired_fresh(
        &mut g,
        "paired_palisade_vs_floor",
        &mut || (negotiate_request(&fresh_token()), fresh_token()),
        &mut |(req, _)| {
            let d = decide(&multi, &guard, black_box(req));
            assert_eq!(principal(&d), Some(ALICE));
        },
        &mut |(_, token)| {
            black_box(raw_accept(&cred, black_box(token)));
        },
    );
    g.bench_function("palisade_current_thread_runtime", |b| {
        b.iter_batched(
            || negotiate_request(&fresh_token()),
            |req| {
                let d = decide(&rt, &guard, black_box(&req));
                assert_eq!(principal(&d), Some(ALICE));
                d
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();
    let after = spnego.stats();
    let calls = after.calls - before.calls;
    if calls > 0 {
        let inside = (after.total - before.total).as_secs_f64() * 1e6 / calls as f64;
        eprintln!(
            "spnego/accept/palisade: {calls} accepts, {} refused; mean {inside:.1} µs per accept in \
             spawn_blocking + GSSAPI (the authenticator's stats), longest {:.1} µs",
            after.failures - before.failures,
            after.max.as_secs_f64() * 1e6
        );
    }
}

fn session_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cookie = SessionCookie::new("s")
        .key(1, &[7; 32])
        .unwrap()
        .insecure_over_http();
    let guard = Guard::builder()
        .authenticator(authenticator(Some(cookie)))
        .access_policy(AccessPolicy::allow_all())
        .build()
        .unwrap();
    let Decision::Allow(first) = decide(&rt, &guard, &negotiate_request(&fresh_token())) else {
        panic!("the first Negotiate was refused");
    };
    let set = first
        .response()
        .headers()
        .find(|(k, _)| *k == "set-cookie")
        .map(|(_, v)| v.to_owned())
        .expect("a set-cookie header on the first Negotiate");
    let pair = set.split(';').next().unwrap().to_owned();
    let req = OwnedRequest::get("/").header("cookie", pair);
    let Check::Ready(d) = guard.check(&req) else {
        panic!("the session-cookie path should be synchronous");
    };
    assert_eq!(principal(&d), Some(ALICE), "session cookie: {d:?}");

    let mut g = c.benchmark_group("spnego/session_cookie");
    g.bench_function("palisade", |b| {
        b.iter(|| match guard.check(black_box(&req)) {
            Check::Ready(d) => d,
            Check::Pending(_) => panic!("the session-cookie path should be synchronous"),
        });
    });
    g.finish();
}

// ------------------------------------------------------------ HTTP load

async fn whoami(Extension(auth): Extension<RequestAuth>) -> String {
    auth.identity()
        .and_then(Identity::kerberos)
        .map(|k| k.principal.clone())
        .unwrap_or_default()
}

/// Palisade in front of an axum app with `GET /whoami` (answering the
/// Kerberos principal), served on loopback from a background runtime; the
/// guard's default policy requires an authenticated caller, as Apache's
/// `Require valid-user` does.
fn start_palisade() -> (tokio::runtime::Runtime, u16) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let guard = Guard::builder()
        .authenticator(authenticator(None))
        .build()
        .unwrap();
    let app =
        palisade::axum::PalisadeLayer::new(guard).wrap(axum::Router::new().route("/whoami", get(whoami)));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rt, port)
}

/// Apache httpd with mod_auth_gssapi in the foreground (`-X`: one process
/// serving one connection at a time), accepting with a copy of the keytab in
/// `KRB5_KTNAME`, with the realm's `KRB5_CONFIG` and `KRB5RCACHEDIR`.
/// Configured as in tests/spnego_apache.rs, except for the load: no access
/// log and no debug logging (Palisade logs nothing per request either), and
/// unlimited requests per kept-alive connection.
fn start_apache() -> ApacheGssapi {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let keytab = PathBuf::from(var("KRB5_KTNAME").trim_start_matches("FILE:"));
    let env = ["KRB5_CONFIG", "KRB5RCACHEDIR"].map(|k| (k.to_owned(), var(k)));
    ApacheGssapi::builder()
        .access_log(false)
        .log_level("warn")
        .unlimited_keep_alive()
        .start(&keytab, &env)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One request on the client's kept-alive connection; panics unless 200.
async fn fetch(client: &reqwest::Client, url: &str, authorization: String) -> reqwest::Response {
    let res = client
        .get(url)
        .header(http::header::AUTHORIZATION, authorization)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{url}");
    res
}

/// `n` fresh tokens, then `n` requests: the requests' mean time.
fn timed_requests(rt: &tokio::runtime::Runtime, client: &reqwest::Client, url: &str, n: u64) -> Duration {
    let headers: Vec<String> = (0..n).map(|_| negotiate(&fresh_token())).collect();
    let start = Instant::now();
    rt.block_on(async {
        for h in headers {
            black_box(fetch(client, url, h).await.bytes().await.unwrap());
        }
    });
    start.elapsed()
}

fn http_benches(c: &mut Criterion) {
    let (_server, palisade_port) = start_palisade();
    let apache = start_apache();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = || reqwest::Client::builder().no_proxy().build().unwrap();
    let contenders = [
        (
            "palisade_axum",
            format!("http://127.0.0.1:{palisade_port}/whoami"),
            client(),
        ),
        (
            "apache_mod_auth_gssapi",
            format!("http://127.0.0.1:{}/whoami", apache.port()),
            client(),
        ),
    ];

    // Each authenticates alice once before anything is timed.
    rt.block_on(async {
        let (_, url, client) = &contenders[0];
        let res = fetch(client, url, negotiate(&fresh_token())).await;
        assert_eq!(res.text().await.unwrap(), ALICE, "Palisade");
        let (_, url, client) = &contenders[1];
        let res = fetch(client, url, negotiate(&fresh_token())).await;
        let user = res
            .headers()
            .get("x-remote-user")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(user.as_deref(), Some(ALICE), "Apache: {}", apache.error_log());
    });

    let mut g = c.benchmark_group("spnego/http_load");
    for (name, url, client) in &contenders {
        g.bench_function(*name, |b| b.iter_custom(|n| timed_requests(&rt, client, url, n)));
    }
    g.finish();

    // The same two, interleaved in rounds (alternating which goes first), so
    // that a change in the machine's load affects both alike: the ratio
    // from the medians of the rounds' means.
    const ROUNDS: usize = 30;
    const PER_ROUND: u64 = 100;
    let mut means: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut token_time = Duration::ZERO;
    for round in 0..ROUNDS {
        for k in 0..2 {
            let i = (round + k) % 2;
            let (_, url, client) = &contenders[i];
            let t = timed_requests(&rt, client, url, PER_ROUND);
            means[i].push(t.as_secs_f64() * 1e6 / PER_ROUND as f64);
        }
        let start = Instant::now();
        black_box(fresh_token());
        token_time += start.elapsed();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let palisade = median(&mut means[0]);
    let apache_us = median(&mut means[1]);
    eprintln!(
        "spnego/http_load interleaved ({ROUNDS} rounds x {PER_ROUND} requests each): \
         Palisade {palisade:.1} µs/request, Apache mod_auth_gssapi {apache_us:.1} µs/request, \
         Apache / Palisade = {:.2}x (an initiator token, made outside the timing: ~{:.1} µs)",
        apache_us / palisade,
        token_time.as_secs_f64() * 1e6 / ROUNDS as f64
    );
    if let Ok(entries) = std::fs::read_dir(std::env::var("KRB5RCACHEDIR").unwrap()) {
        for e in entries.flatten() {
            let len = e.metadata().map_or(0, |m| m.len());
            eprintln!("replay cache {}: {len} bytes", e.file_name().to_string_lossy());
        }
    }
}

criterion_group!(benches, accept_benches, session_benches, http_benches);
