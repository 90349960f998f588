//! Per-request overhead of Palisade's JWT authentication through the whole
//! stack, in process, against the no-auth baseline and the raw
//! `jsonwebtoken::decode` floor. Results and ratios: benches/README.md.
#![expect(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]

use std::hint::black_box;

use actix_web::{App, HttpResponse, web};
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use palisade::core::Check;
use palisade::jwt::{JwtAuthenticator, Provider};
use palisade::testkit::{SigningAlgorithm, TestIssuer};
use tower::ServiceExt;

#[path = "../../examples/common/floor.rs"]
mod floor;
#[path = "../common/paired.rs"]
mod paired;
use paired::{bench_paired, bench_paired_fresh};

fn authenticator(issuer: &TestIssuer, cache_entries: u64) -> JwtAuthenticator {
    JwtAuthenticator::builder()
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
        .unwrap()
}

fn guard(issuer: &TestIssuer, cache_entries: u64) -> palisade::prelude::Guard {
    palisade::prelude::Guard::builder()
        .authenticator(authenticator(issuer, cache_entries))
        .build()
        .unwrap()
}

fn axum_app(guard: Option<palisade::prelude::Guard>) -> axum::Router {
    let app = axum::Router::new().route("/", get(|| async { "ok" }));
    // Routes bound to their state once, as `axum::serve` does: an unbound
    // router converts each layered route on every call.
    match guard {
        Some(g) => app.layer(palisade::axum::PalisadeLayer::new(g)),
        None => app,
    }
    .with_state(())
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

/// The cached-token overhead of each framework, each Palisade call paired
/// with a call of the same app without authentication (timed alternately,
/// so the machine's drift reaches both): the figure the overhead target is
/// about. Prints the overhead per request and the ratio.
fn overhead_benches(c: &mut Criterion) {
    let issuer = TestIssuer::builder().default_audience("bench").start().unwrap();
    let token = issuer.token().sign();
    let mut g = c.benchmark_group("overhead_paired");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let baseline = axum_app(None);
    let cached = axum_app(Some(guard(&issuer, 10_000)));
    let axum = bench_paired(
        &mut g,
        "axum_cached_token",
        &mut || {
            let res = rt.block_on(cached.clone().oneshot(request(&token))).unwrap();
            assert_eq!(res.status(), 200);
        },
        &mut || {
            black_box(rt.block_on(baseline.clone().oneshot(request(&token))).unwrap());
        },
    );

    // The layer around the router, as `palisade::axum::serve` (or hyper) is
    // given it: no per-route boxing, the router's own body unchanged.
    let around = tower::Layer::layer(
        &palisade::axum::PalisadeLayer::new(guard(&issuer, 10_000)),
        axum_app(None),
    );
    let axum_around = bench_paired(
        &mut g,
        "axum_around_router_cached_token",
        &mut || {
            let res = rt.block_on(around.clone().oneshot(request(&token))).unwrap();
            assert_eq!(res.status(), 200);
        },
        &mut || {
            black_box(rt.block_on(baseline.clone().oneshot(request(&token))).unwrap());
        },
    );

    // The floor around the same router: the token's header dropped and a
    // record inserted, nothing checked (`examples/common/floor.rs`).
    let floored = floor::Floor::new().around(axum_app(None));
    let axum_floor = bench_paired(
        &mut g,
        "axum_floor",
        &mut || {
            let res = rt.block_on(floored.clone().oneshot(request(&token))).unwrap();
            assert_eq!(res.status(), 200);
        },
        &mut || {
            black_box(rt.block_on(baseline.clone().oneshot(request(&token))).unwrap());
        },
    );

    // The same with metrics on: the guard built while a Prometheus
    // recorder is installed (its handles are bound to it), every decision
    // counted and timed into the latency histogram.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(palisade::core::metrics::CHECK_DURATION.into()),
            palisade::core::metrics::CHECK_DURATION_BUCKETS,
        )
        .unwrap()
        .build_recorder();
    let upkeep = recorder.handle();
    let metered_guard = metrics::with_local_recorder(&recorder, || guard(&issuer, 10_000));
    let metered = axum_app(Some(metered_guard.clone()));
    let mut calls = 0u32;
    let axum_metrics = bench_paired(
        &mut g,
        "axum_cached_token_metrics_on",
        &mut || {
            let res = rt.block_on(metered.clone().oneshot(request(&token))).unwrap();
            assert_eq!(res.status(), 200);
            // The exporter drains histogram samples at upkeep, as an
            // application's would every few seconds.
            calls += 1;
            if calls.is_multiple_of(100_000) {
                upkeep.run_upkeep();
            }
        },
        &mut || {
            black_box(rt.block_on(baseline.clone().oneshot(request(&token))).unwrap());
        },
    );

    let system = actix_web::rt::System::new();
    let (baseline, cached, metered, floored) = system.block_on(async {
        let route = || web::get().to(|| async { HttpResponse::Ok().body("ok") });
        let baseline = actix_web::test::init_service(App::new().route("/", route())).await;
        let cached = actix_web::test::init_service(
            App::new()
                .wrap(palisade::actix::Palisade::new(guard(&issuer, 10_000)))
                .route("/", route()),
        )
        .await;
        let metered = actix_web::test::init_service(
            App::new()
                .wrap(palisade::actix::Palisade::new(metered_guard))
                .route("/", route()),
        )
        .await;
        let floored =
            actix_web::test::init_service(App::new().wrap(floor::Floor::new()).route("/", route())).await;
        (baseline, cached, metered, floored)
    });
    let req = || {
        actix_web::test::TestRequest::get()
            .uri("/")
            .append_header(("authorization", format!("Bearer {token}")))
            .to_request()
    };
    let actix = bench_paired(
        &mut g,
        "actix_cached_token",
        &mut || {
            let res = system.block_on(actix_web::test::call_service(&cached, req()));
            assert_eq!(res.status(), 200);
        },
        &mut || {
            black_box(system.block_on(actix_web::test::call_service(&baseline, req())));
        },
    );
    let actix_floor = bench_paired(
        &mut g,
        "actix_floor",
        &mut || {
            let res = system.block_on(actix_web::test::call_service(&floored, req()));
            assert_eq!(res.status(), 200);
        },
        &mut || {
            black_box(system.block_on(actix_web::test::call_service(&baseline, req())));
        },
    );
    let actix_metrics = bench_paired(
        &mut g,
        "actix_cached_token_metrics_on",
        &mut || {
            let res = system.block_on(actix_web::test::call_service(&metered, req()));
            assert_eq!(res.status(), 200);
            calls += 1;
            if calls.is_multiple_of(100_000) {
                upkeep.run_upkeep();
            }
        },
        &mut || {
            black_box(system.block_on(actix_web::test::call_service(&baseline, req())));
        },
    );
    g.finish();
    for (name, p) in [
        ("axum", axum),
        ("axum, layer around the router", axum_around),
        ("axum, the floor around the router", axum_floor),
        ("actix", actix),
        ("actix, the floor", actix_floor),
        ("axum, metrics on", axum_metrics),
        ("actix, metrics on", actix_metrics),
    ] {
        if let Some(p) = p {
            eprintln!(
                "overhead_paired/{name}: {:.0} ns per request over the same app without authentication ({:.3}x)",
                p.overhead_ns, p.ratio
            );
        }
    }
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

/// A Keycloak-shaped token: what axum-keycloak-auth insists on parsing.
fn keycloak_token(issuer: &TestIssuer) -> String {
    issuer
        .token()
        .subject("alice")
        .realm_roles(&["user"])
        .claim("email", serde_json::json!("alice@example.test"))
        .claim("email_verified", serde_json::json!(true))
        .claim("name", serde_json::json!("Alice Liddell"))
        .claim("given_name", serde_json::json!("Alice"))
        .claim("family_name", serde_json::json!("Liddell"))
        .sign()
}

fn peer_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let issuer = TestIssuer::builder().default_audience("bench").start().unwrap();
    let token = keycloak_token(&issuer);
    let mut g = c.benchmark_group("peers_repeated_token");

    // Palisade on the very same token.
    let palisade = axum_app(Some(guard(&issuer, 10_000)));
    g.bench_function("palisade_axum", |b| {
        b.iter(|| {
            assert_eq!(
                rt.block_on(palisade.clone().oneshot(request(&token)))
                    .unwrap()
                    .status(),
                200
            )
        });
    });

    // jwt-authorizer (axum 0.7).
    let authorizer: jwt_authorizer::Authorizer<serde_json::Value> = rt
        .block_on(
            jwt_authorizer::JwtAuthorizer::from_jwks_url(&issuer.jwks_uri())
                .validation(
                    jwt_authorizer::Validation::new()
                        .aud(&["bench"])
                        .iss(&[issuer.issuer()]),
                )
                .build(),
        )
        .unwrap();
    let app07 = axum07::Router::new()
        .route("/", axum07::routing::get(|| async { "ok" }))
        .layer(jwt_authorizer::IntoLayer::into_layer(authorizer));
    let req07 = || {
        http::Request::get("/")
            .header("authorization", format!("Bearer {token}"))
            .body(axum07::body::Body::empty())
            .unwrap()
    };
    assert_eq!(rt.block_on(app07.clone().oneshot(req07())).unwrap().status(), 200);
    let base07 = axum07::Router::new().route("/", axum07::routing::get(|| async { "ok" }));
    g.bench_function("baseline_axum07_no_auth", |b| {
        b.iter(|| rt.block_on(base07.clone().oneshot(req07())).unwrap());
    });
    g.bench_function("jwt_authorizer", |b| {
        b.iter(|| assert_eq!(rt.block_on(app07.clone().oneshot(req07())).unwrap().status(), 200));
    });

    // axum-keycloak-auth (axum 0.8), against the issuer's Keycloak-shaped realm.
    let instance = rt.block_on(async {
        let config = axum_keycloak_auth::instance::KeycloakConfig::builder()
            .server(axum_keycloak_auth::Url::parse(&format!("{}/", issuer.base_url())).unwrap())
            .realm("demo".to_owned())
            .build();
        let instance = axum_keycloak_auth::instance::KeycloakAuthInstance::new(config);
        for _ in 0..100 {
            if instance.is_operational().await {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        instance
    });
    let keycloak = axum::Router::new().route("/", get(|| async { "ok" })).layer(
        axum_keycloak_auth::layer::KeycloakAuthLayer::<String>::builder()
            .instance(instance)
            .passthrough_mode(axum_keycloak_auth::PassthroughMode::Block)
            .persist_raw_claims(false)
            .expected_audiences(vec!["bench".to_owned()])
            .build(),
    );
    assert_eq!(
        rt.block_on(keycloak.clone().oneshot(request(&token)))
            .unwrap()
            .status(),
        200
    );
    g.bench_function("axum_keycloak_auth", |b| {
        b.iter(|| {
            assert_eq!(
                rt.block_on(keycloak.clone().oneshot(request(&token)))
                    .unwrap()
                    .status(),
                200
            )
        });
    });
    g.finish();
}

fn actix_peer_benches(c: &mut Criterion) {
    use actix_web::dev::ServiceRequest;
    use actix_web_httpauth::extractors::bearer::BearerAuth;

    struct Keys {
        key: jsonwebtoken::DecodingKey,
        validation: jsonwebtoken::Validation,
    }

    async fn validator(
        req: ServiceRequest,
        credentials: BearerAuth,
    ) -> Result<ServiceRequest, (actix_web::Error, ServiceRequest)> {
        let keys = req.app_data::<web::Data<Keys>>().expect("keys").clone();
        match jsonwebtoken::decode::<serde_json::Value>(credentials.token(), &keys.key, &keys.validation) {
            Ok(data) => {
                actix_web::HttpMessage::extensions_mut(&req).insert(data.claims);
                Ok(req)
            }
            Err(_) => Err((actix_web::error::ErrorUnauthorized("invalid token"), req)),
        }
    }

    let system = actix_web::rt::System::new();
    let issuer = TestIssuer::builder().default_audience("bench").start().unwrap();
    let token = keycloak_token(&issuer);
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(issuer.jwks()["keys"][0].clone()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["bench"]);
    validation.set_issuer(&[issuer.issuer()]);
    let keys = web::Data::new(Keys {
        key: jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        validation,
    });
    let guard = guard(&issuer, 10_000);
    let (httpauth, palisade) = system.block_on(async {
        let httpauth = actix_web::test::init_service(
            App::new()
                .app_data(keys)
                .wrap(actix_web_httpauth::middleware::HttpAuthentication::bearer(
                    validator,
                ))
                .route("/", web::get().to(|| async { HttpResponse::Ok().body("ok") })),
        )
        .await;
        let palisade = actix_web::test::init_service(
            App::new()
                .wrap(palisade::actix::Palisade::new(guard))
                .route("/", web::get().to(|| async { HttpResponse::Ok().body("ok") })),
        )
        .await;
        (httpauth, palisade)
    });
    let req = || {
        actix_web::test::TestRequest::get()
            .uri("/")
            .append_header(("authorization", format!("Bearer {token}")))
            .to_request()
    };
    let mut g = c.benchmark_group("actix_peers_repeated_token");
    g.bench_function("palisade_actix", |b| {
        b.iter(|| {
            assert_eq!(
                system
                    .block_on(actix_web::test::call_service(&palisade, req()))
                    .status(),
                200
            )
        });
    });
    g.bench_function("actix_web_httpauth_jsonwebtoken", |b| {
        b.iter(|| {
            assert_eq!(
                system
                    .block_on(actix_web::test::call_service(&httpauth, req()))
                    .status(),
                200
            )
        });
    });
    g.finish();
}

/// Where the cached path spends its time, framework-free.
fn breakdown_benches(c: &mut Criterion) {
    use palisade::core::authn::{Authenticator, OwnedRequest};
    let issuer = TestIssuer::builder().default_audience("bench").start().unwrap();
    let token = issuer.token().sign();
    let jwt = authenticator(&issuer, 10_000);
    let guard = palisade::prelude::Guard::builder()
        .authenticator(jwt.clone())
        .build()
        .unwrap();
    let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
    let _ = guard.check(&req);
    let mut g = c.benchmark_group("breakdown");
    g.bench_function("jwt_authenticate_cached", |b| {
        b.iter(|| black_box(jwt.authenticate(black_box(&req))))
    });
    g.bench_function("guard_check_cached", |b| {
        b.iter(|| black_box(guard.check(black_box(&req))))
    });
    let cache: moka::sync::Cache<std::sync::Arc<str>, u64, foldhash::fast::RandomState> =
        moka::sync::Cache::builder()
            .max_capacity(10_000)
            .build_with_hasher(foldhash::fast::RandomState::default());
    cache.insert(std::sync::Arc::from(token.as_str()), 1);
    g.bench_function("moka_get_token_key", |b| {
        b.iter(|| black_box(cache.get(black_box(token.as_str()))))
    });
    g.finish();
}

/// Cached-token checks on every CPU at once (one thread each): with one
/// token shared by all threads (a single upstream's service token), with a
/// token of each thread's own (many users), and, as the floor, with a
/// guard of each thread's own (nothing shared but the allocator); and on
/// one thread alone. The time is each thread's per check: what the first
/// two add to the floor is contention on memory the threads share.
fn scaling_benches(c: &mut Criterion) {
    use palisade::core::authn::OwnedRequest;
    use palisade::prelude::Guard;
    let threads = std::thread::available_parallelism().map_or(2, usize::from).max(2);
    let issuer = TestIssuer::builder().default_audience("bench").start().unwrap();
    let shared = guard(&issuer, 10_000);
    let one_token = issuer.token().sign();
    let token_of = |i: usize| {
        issuer
            .token()
            .claim("jti", serde_json::json!(format!("bench-{i}")))
            .sign()
    };
    // (guard, request) for each thread, the token verified and cached.
    let prepared = |guard: Guard, token: &str| {
        let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
        assert!(
            matches!(
                guard.check(&req),
                Check::Ready(palisade::core::adapter::Decision::Allow(_))
            ),
            "allowed, and cached from now on"
        );
        (guard, req)
    };
    let scenarios: Vec<(&str, Vec<(Guard, OwnedRequest)>)> = vec![
        (
            "guard_check_cached/one_thread",
            vec![prepared(shared.clone(), &one_token)],
        ),
        (
            "guard_check_cached/one_token_all_threads",
            (0..threads)
                .map(|_| prepared(shared.clone(), &one_token))
                .collect(),
        ),
        (
            "guard_check_cached/a_token_per_thread",
            (0..threads)
                .map(|i| prepared(shared.clone(), &token_of(i)))
                .collect(),
        ),
        (
            "guard_check_cached/a_guard_per_thread",
            (0..threads)
                .map(|i| prepared(guard(&issuer, 10_000), &token_of(i)))
                .collect(),
        ),
    ];
    // hyper's servers (`axum::serve`) clone the service for every request,
    // and with it the guard it holds: the `/cloned` rows clone the
    // thread's guard before each check and drop the clone after it.
    let scenarios = scenarios.iter().flat_map(|(name, work)| {
        let cloned = (name.contains("all_threads") || name.contains("per_thread"))
            .then(|| (format!("{name}/cloned"), work, true));
        std::iter::once(((*name).to_owned(), work, false)).chain(cloned)
    });
    let mut g = c.benchmark_group("scaling");
    for (name, work, clone) in scenarios {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = std::sync::Barrier::new(work.len());
                std::thread::scope(|s| {
                    let handles: Vec<_> = work
                        .iter()
                        .map(|(guard, req)| {
                            let start = &start;
                            s.spawn(move || {
                                start.wait();
                                let began = std::time::Instant::now();
                                if clone {
                                    for _ in 0..iters {
                                        let guard = black_box(guard).clone();
                                        let _ = black_box(guard.check(black_box(req)));
                                    }
                                } else {
                                    for _ in 0..iters {
                                        let _ = black_box(guard.check(black_box(req)));
                                    }
                                }
                                began.elapsed()
                            })
                        })
                        .collect();
                    // Each thread's time per check, averaged over the threads.
                    let total: std::time::Duration = handles.into_iter().map(|h| h.join().unwrap()).sum();
                    total / u32::try_from(work.len()).unwrap_or(1)
                })
            });
        });
    }
    g.finish();
}

/// A loopback introspection endpoint that answers every call with an
/// active token for `bench`: only the first request of the bench reaches
/// it (the rest are cache hits, which is what is measured).
fn introspection_endpoint() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut buf = vec![0u8; 16 * 1024];
            let mut n = 0;
            // The request's head and its short form body.
            while let Ok(k) = conn.read(&mut buf[n..]) {
                n += k;
                let text = String::from_utf8_lossy(&buf[..n]);
                if k == 0 || text.contains("token=") && text.ends_with("access_token") || n == buf.len() {
                    break;
                }
            }
            let body = r#"{"active":true,"sub":"alice","aud":"bench","scope":"read","exp":4102444800}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// A cached introspection answer against a cached JWT: the opaque token
/// costs a SHA-256 of the token more than the JWT's lookup.
fn introspection_benches(c: &mut Criterion) {
    use palisade::core::authn::{AuthOutcome, Authenticator, OwnedRequest};
    use palisade::jwt::Introspection;
    let issuer = TestIssuer::builder().default_audience("bench").start().unwrap();
    let jwt = authenticator(&issuer, 10_000);
    let token = issuer.token().sign();
    let jwt_req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
    let opaque = JwtAuthenticator::builder()
        .realm("bench")
        .provider(
            Provider::builder(issuer.issuer())
                .audience("bench")
                .jwks_inline(issuer.jwks().to_string())
                .introspection(
                    Introspection::client_secret_basic("bench", "secret").endpoint(introspection_endpoint()),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let opaque_req =
        OwnedRequest::get("/").header("authorization", "Bearer 2YotnFZFEjr1zCsicMWpAAkT3x9bQ7pZ");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (auth, req) in [(&jwt, &jwt_req), (&opaque, &opaque_req)] {
        let outcome = runtime.block_on(auth.authenticate(req).into_future());
        assert!(matches!(outcome, AuthOutcome::Authenticated(_)), "{outcome:?}");
        assert!(auth.authenticate(req).is_ready(), "cached");
    }
    let mut g = c.benchmark_group("introspection");
    g.bench_function("jwt_authenticate_cached", |b| {
        b.iter(|| black_box(jwt.authenticate(black_box(&jwt_req))))
    });
    g.bench_function("introspected_authenticate_cached", |b| {
        b.iter(|| black_box(opaque.authenticate(black_box(&opaque_req))))
    });
    g.finish();
}

/// A DPoP request (a cached DPoP-bound token and a fresh proof each time)
/// against its floor: the raw ES256 check of the proof's signature plus the
/// same token sent as a cached bearer token.
fn dpop_benches(c: &mut Criterion) {
    use criterion::BatchSize;
    use palisade::core::authn::{AuthOutcome, Authenticator, OwnedRequest};
    use palisade::jwt::dpop::{DpopKey, DpopSettings};
    let key = DpopKey::generate().unwrap();
    let issuer = TestIssuer::builder().default_audience("bench").start().unwrap();
    let token = issuer
        .token()
        .claim("cnf", serde_json::json!({"jkt": key.thumbprint()}))
        .sign();
    let plain = issuer.token().sign();
    let provider = || {
        Provider::builder(issuer.issuer())
            .audience("bench")
            .jwks_inline(issuer.jwks().to_string())
            .build()
            .unwrap()
    };
    let dpop = JwtAuthenticator::builder()
        .realm("bench")
        .provider(provider())
        .dpop(DpopSettings::default())
        .build()
        .unwrap();
    let bearer = JwtAuthenticator::builder()
        .realm("bench")
        .provider(provider())
        .build()
        .unwrap();
    let htu = "http://bench.test/";
    let request = |proof: String| {
        OwnedRequest::get("/")
            .header("host", "bench.test")
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
    };
    let first = request(key.proof("GET", htu, Some(&token), None));
    assert!(matches!(
        dpop.authenticate(&first),
        Check::Ready(AuthOutcome::Authenticated(_))
    ));
    let bearer_req = OwnedRequest::get("/").header("authorization", format!("Bearer {plain}"));
    assert!(matches!(
        bearer.authenticate(&bearer_req),
        Check::Ready(AuthOutcome::Authenticated(_))
    ));
    // The raw check of one proof's signature. Every proof a server sees is
    // new, so every floor checks a fresh one, made (untimed) like the
    // request's: verifying one signature over and over would let the branch
    // predictor learn the variable-time scalar multiplication's pattern.
    let fresh_proof = || {
        let proof = key.proof("GET", htu, Some(&token), None);
        let (message, signature) = proof.rsplit_once('.').unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                message.split('.').next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let jwk = &header["jwk"];
        let (x, y) = (
            jwk["x"].as_str().unwrap().to_owned(),
            jwk["y"].as_str().unwrap().to_owned(),
        );
        (message.to_owned(), signature.to_owned(), x, y)
    };
    let (_, _, x, y) = fresh_proof();
    let decoding = jsonwebtoken::DecodingKey::from_ec_components(&x, &y).unwrap();
    let verify = |message: &str, signature: &str, key: &jsonwebtoken::DecodingKey| {
        jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, jsonwebtoken::Algorithm::ES256)
            .unwrap()
    };
    let (message, signature, _, _) = fresh_proof();
    assert!(verify(&message, &signature, &decoding));
    let mut g = c.benchmark_group("dpop");
    g.bench_function("floor_es256_verify_proof", |b| {
        b.iter_batched(
            fresh_proof,
            |(message, signature, _, _)| {
                assert!(verify(&message, &signature, &decoding));
                (message, signature)
            },
            BatchSize::SmallInput,
        )
    });
    // A proof brings its own key: the floor of checking one is building
    // the key from its `jwk` and verifying with it.
    g.bench_function("floor_es256_key_from_jwk_and_verify", |b| {
        b.iter_batched(
            fresh_proof,
            |(message, signature, x, y)| {
                let key = jsonwebtoken::DecodingKey::from_ec_components(&x, &y).unwrap();
                assert!(verify(&message, &signature, &key));
                (message, signature, x, y)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("floor_bearer_cached_token", |b| {
        b.iter(|| black_box(bearer.authenticate(black_box(&bearer_req))))
    });
    // Paired: each DPoP request alternates with its floor (key from the
    // proof's `jwk`, verify, and a cached bearer token's request), both on
    // fresh proofs made untimed before the pairs, so drift on a shared
    // machine reaches both alike.
    bench_paired_fresh(
        &mut g,
        "paired_request_vs_floor",
        &mut || {
            let p = fresh_proof();
            (request(key.proof("GET", htu, Some(&token), None)), p)
        },
        &mut |(req, _)| {
            let outcome = dpop.authenticate(black_box(req));
            assert!(matches!(outcome, Check::Ready(AuthOutcome::Authenticated(_))));
        },
        &mut |(_, (message, signature, x, y))| {
            let key = jsonwebtoken::DecodingKey::from_ec_components(x, y).unwrap();
            assert!(verify(message, signature, &key));
            let _ = black_box(bearer.authenticate(black_box(&bearer_req)));
        },
    );
    g.bench_function("dpop_request_cached_token", |b| {
        b.iter_batched(
            || request(key.proof("GET", htu, Some(&token), None)),
            |req| {
                let outcome = dpop.authenticate(&req);
                assert!(matches!(outcome, Check::Ready(AuthOutcome::Authenticated(_))));
                outcome
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    dpop_benches,
    introspection_benches,
    breakdown_benches,
    scaling_benches,
    overhead_benches,
    axum_benches,
    actix_benches,
    peer_benches,
    actix_peer_benches
);
criterion_main!(benches);
