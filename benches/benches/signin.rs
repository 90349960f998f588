//! Per-request cost of a browser session: a request carrying a valid
//! session cookie (a Keycloak-sized access token, several cookie chunks)
//! through the whole stack of each framework, paired with the same app
//! without authentication receiving the same cookie. The bar:
//! at most 2 µs more. Results: benches/README.md.
#![expect(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]

use std::hint::black_box;
use std::time::Duration;

use actix_web::{App, HttpResponse, web};
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use palisade::signin::SignIn;
use palisade::signin::cookie::CookieKey;
use palisade::testkit::TestIssuer;
use tower::ServiceExt;

#[path = "../common/paired.rs"]
mod paired;
use paired::bench_paired;

/// A guard whose only authenticator is sign-in, and a session cookie for
/// it holding an access token with many roles (300: about 5 KiB of claims, so
/// the session spans two cookies as Keycloak's do).
fn setup(issuer: &TestIssuer) -> (palisade::prelude::Guard, String) {
    let sign_in = SignIn::builder(issuer.issuer(), "bench")
        .keys(vec![CookieKey::new("k1", &[7u8; 32]).unwrap()])
        .build()
        .unwrap();
    let roles: Vec<String> = (0..300).map(|i| format!("role-{i:03}")).collect();
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    let token = issuer.token().subject("alice").realm_roles(&roles).sign();
    let cookie = sign_in
        .session_cookie_for("alice", &token, Duration::from_secs(3600))
        .unwrap();
    assert!(cookie.contains("palisade_session_1="), "a multi-chunk session");
    let guard = palisade::prelude::Guard::builder()
        .authenticator(sign_in)
        .build()
        .unwrap();
    (guard, cookie)
}

fn axum_app(guard: Option<palisade::prelude::Guard>) -> axum::Router {
    let app = axum::Router::new().route("/", get(|| async { "ok" }));
    match guard {
        Some(g) => app.layer(palisade::axum::PalisadeLayer::new(g)),
        None => app,
    }
    .with_state(())
}

fn session_benches(c: &mut Criterion) {
    let issuer = TestIssuer::builder().default_audience("bench").start().unwrap();
    let (guard, cookie) = setup(&issuer);
    let mut g = c.benchmark_group("session_paired");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let baseline = axum_app(None);
    let signed_in = axum_app(Some(guard.clone()));
    let request = || {
        http::Request::get("/")
            .header("cookie", cookie.as_str())
            .body(Body::empty())
            .unwrap()
    };
    let axum = bench_paired(
        &mut g,
        "axum_session_cookie",
        &mut || {
            let res = rt.block_on(signed_in.clone().oneshot(request())).unwrap();
            assert_eq!(res.status(), 200);
        },
        &mut || {
            black_box(rt.block_on(baseline.clone().oneshot(request())).unwrap());
        },
    );

    let system = actix_web::rt::System::new();
    let (baseline, signed_in) = system.block_on(async {
        let route = || web::get().to(|| async { HttpResponse::Ok().body("ok") });
        let baseline = actix_web::test::init_service(App::new().route("/", route())).await;
        let signed_in = actix_web::test::init_service(
            App::new()
                .wrap(palisade::actix::Palisade::new(guard.clone()))
                .route("/", route()),
        )
        .await;
        (baseline, signed_in)
    });
    let req = || {
        actix_web::test::TestRequest::get()
            .uri("/")
            .append_header(("cookie", cookie.as_str()))
            .to_request()
    };
    let actix = bench_paired(
        &mut g,
        "actix_session_cookie",
        &mut || {
            let res = system.block_on(actix_web::test::call_service(&signed_in, req()));
            assert_eq!(res.status(), 200);
        },
        &mut || {
            black_box(system.block_on(actix_web::test::call_service(&baseline, req())));
        },
    );
    g.finish();
    for (name, p) in [("axum", axum), ("actix", actix)] {
        if let Some(p) = p {
            eprintln!(
                "session_paired/{name}: {:.0} ns per request over the same app without authentication ({:.3}x)",
                p.overhead_ns, p.ratio
            );
        }
    }
}

criterion_group!(benches, session_benches);
criterion_main!(benches);
