//! Instructions per request under `valgrind --tool=callgrind`: a repeatable
//! companion to the timed benches on a noisy shared machine. Runs one
//! scenario N times; `benches/instructions.sh` runs each scenario at two
//! counts and divides the difference, which cancels the set-up.
//!
//! `instructions SCENARIO N`, SCENARIO one of `axum-baseline`,
//! `axum-cached`, `actix-baseline`, `actix-cached`.

use std::hint::black_box;

use actix_web::{App, HttpResponse, web};
use axum::body::Body;
use axum::routing::get;
use palisade::jwt::{JwtAuthenticator, Provider};
use palisade::testkit::{SigningAlgorithm, TestIssuer};
use tower::ServiceExt;

fn guard(issuer: &TestIssuer) -> palisade::core::Guard {
    let jwt = JwtAuthenticator::builder()
        .realm("bench")
        .provider(
            Provider::builder(issuer.issuer())
                .audience("bench")
                .jwks_inline(issuer.jwks().to_string())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    palisade::core::Guard::builder()
        .authenticator(jwt)
        .build()
        .unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(scenario), Some(n)) = (args.next(), args.next().and_then(|n| n.parse::<u32>().ok())) else {
        eprintln!("usage: instructions SCENARIO N");
        std::process::exit(2);
    };
    // EdDSA: the cheapest key to make under valgrind; a cached token never
    // reaches the signature check anyway.
    let issuer = TestIssuer::builder()
        .algorithm(SigningAlgorithm::EdDsa)
        .default_audience("bench")
        .start()
        .unwrap();
    let token = issuer.token().sign();
    let (framework, with_guard) = match scenario.as_str() {
        "axum-baseline" => ("axum", false),
        "axum-cached" => ("axum", true),
        "actix-baseline" => ("actix", false),
        "actix-cached" => ("actix", true),
        other => panic!("unknown scenario {other}"),
    };
    if framework == "axum" {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let app = axum::Router::new().route("/", get(|| async { "ok" }));
        // Routes bound to their state once, as `axum::serve` does, not per
        // request.
        let app = if with_guard {
            app.layer(palisade::axum::PalisadeLayer::new(guard(&issuer)))
        } else {
            app
        }
        .with_state(());
        for _ in 0..n {
            let req = http::Request::get("/")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let res = rt.block_on(app.clone().oneshot(req)).unwrap();
            assert_eq!(res.status(), 200);
            black_box(res);
        }
    } else {
        let system = actix_web::rt::System::new();
        let guard = with_guard.then(|| guard(&issuer));
        system.block_on(async move {
            let route = || web::get().to(|| async { HttpResponse::Ok().body("ok") });
            let app = actix_web::test::init_service(
                App::new()
                    .wrap(actix_web::middleware::Condition::new(
                        guard.is_some(),
                        palisade::actix::Palisade::new(guard.clone().unwrap_or_else(|| {
                            palisade::core::Guard::builder()
                                .access_policy(palisade::core::authz::AccessPolicy::allow_all())
                                .build()
                                .unwrap()
                        })),
                    ))
                    .route("/", route()),
            )
            .await;
            for _ in 0..n {
                let req = actix_web::test::TestRequest::get()
                    .uri("/")
                    .append_header(("authorization", format!("Bearer {token}")))
                    .to_request();
                let res = actix_web::test::call_service(&app, req).await;
                assert_eq!(res.status(), 200);
                black_box(res);
            }
        });
    }
}
