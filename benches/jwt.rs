//! Per-request overhead of Palisade's JWT authentication through the whole
//! stack, in process, against the no-auth baseline and the raw
//! `jsonwebtoken::decode` floor. Results and ratios: benches/README.md.
#![expect(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]

use std::hint::black_box;

use actix_web::{App, HttpResponse, web};
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use palisade::jwt::{JwtAuthenticator, Provider};
use palisade::testkit::{SigningAlgorithm, TestIssuer};
use tower::ServiceExt;

fn guard(issuer: &TestIssuer, cache_entries: u64) -> palisade::Guard {
    let jwt = JwtAuthenticator::builder()
        .realm("bench")
        .cache_entries(cache_entries)
        .provider(
            Provider::builder(issuer.issuer())
                .audience("bench")
                .jwks_inline(issuer.jwks().to_string())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    palisade::Guard::builder().authenticator(jwt).build().unwrap()
}

fn axum_app(guard: Option<palisade::Guard>) -> axum::Router {
    let app = axum::Router::new().route("/", get(|| async { "ok" }));
    match guard {
        Some(g) => app.layer(palisade::axum::PalisadeLayer::new(g)),
        None => app,
    }
}

fn request(token: &str) -> http::Request<Body> {
    http::Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

fn axum_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let issuer = TestIssuer::builder().default_audience("bench").start().unwrap();
    let token = issuer.token().sign();
    let mut g = c.benchmark_group("axum");
    let baseline = axum_app(None);
    g.bench_function("baseline_no_auth", |b| {
        b.iter(|| rt.block_on(baseline.clone().oneshot(request(&token))).unwrap());
    });
    let cached = axum_app(Some(guard(&issuer, 10_000)));
    rt.block_on(cached.clone().oneshot(request(&token))).unwrap();
    g.bench_function("palisade_cached_token", |b| {
        b.iter(|| {
            let res = rt.block_on(cached.clone().oneshot(request(&token))).unwrap();
            assert_eq!(res.status(), 200);
        });
    });
    for (name, alg) in [
        ("RS256", SigningAlgorithm::Rs256),
        ("ES256", SigningAlgorithm::Es256),
        ("EdDSA", SigningAlgorithm::EdDsa),
    ] {
        let issuer = TestIssuer::builder()
            .algorithm(alg)
            .default_audience("bench")
            .start()
            .unwrap();
        let token = issuer.token().sign();
        let fresh = axum_app(Some(guard(&issuer, 0)));
        g.bench_function(format!("palisade_fresh_token_{name}"), |b| {
            b.iter(|| {
                let res = rt.block_on(fresh.clone().oneshot(request(&token))).unwrap();
                assert_eq!(res.status(), 200);
            });
        });
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(issuer.jwks()["keys"][0].clone()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(
            jwk.common
                .key_algorithm
                .map_or(jsonwebtoken::Algorithm::RS256, |a| a.to_string().parse().unwrap()),
        );
        validation.set_audience(&["bench"]);
        validation.set_issuer(&[issuer.issuer()]);
        g.bench_function(format!("floor_jsonwebtoken_decode_{name}"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &key, &validation).unwrap()
            });
        });
    }
    g.finish();
}

fn actix_benches(c: &mut Criterion) {
    let system = actix_web::rt::System::new();
    let issuer = TestIssuer::builder().default_audience("bench").start().unwrap();
    let token = issuer.token().sign();
    let guard = guard(&issuer, 10_000);
    let (baseline, cached) = system.block_on(async {
        let baseline = actix_web::test::init_service(
            App::new().route("/", web::get().to(|| async { HttpResponse::Ok().body("ok") })),
        )
        .await;
        let cached = actix_web::test::init_service(
            App::new()
                .wrap(palisade::actix::Palisade::new(guard))
                .route("/", web::get().to(|| async { HttpResponse::Ok().body("ok") })),
        )
        .await;
        (baseline, cached)
    });
    let req = || {
        actix_web::test::TestRequest::get()
            .uri("/")
            .append_header(("authorization", format!("Bearer {token}")))
            .to_request()
    };
    let mut g = c.benchmark_group("actix");
    g.bench_function("baseline_no_auth", |b| {
        b.iter(|| system.block_on(actix_web::test::call_service(&baseline, req())));
    });
    g.bench_function("palisade_cached_token", |b| {
        b.iter(|| {
            let res = system.block_on(actix_web::test::call_service(&cached, req()));
            assert_eq!(res.status(), 200);
        });
    });
    g.finish();
}

criterion_group!(benches, axum_benches, actix_benches);
criterion_main!(benches);
