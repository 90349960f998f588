//! Per-request overhead of the guard (a cached JWT, an allow-authenticated
//! policy) over HTTP/2 and through tonic, each paired with the same stack
//! without Palisade, over a kept-alive loopback connection:
//!
//! - HTTP/2: an axum route served by `axum::serve` (hyper-util's automatic
//!   HTTP/1.1-or-2 server), h2c with prior knowledge, called by reqwest;
//! - gRPC: the ratings service of `examples/ratings.rs` as tonic routes
//!   behind `PalisadeLayer`, called by tonic's client over h2c.
//!
//! Results: benches/README.md.
#![expect(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]

use std::hint::black_box;
use std::net::SocketAddr;

use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use palisade::core::policy::{PolicySet, Workload};
use palisade::testkit::TestIssuer;
use tonic::transport::{Channel, Endpoint};

#[path = "../common/paired.rs"]
mod paired;
use paired::bench_paired;
#[path = "../../examples/proto/mod.rs"]
mod proto;
use proto::ratings::ratings_client::RatingsClient;
use proto::ratings::ratings_server::{Ratings, RatingsServer};
use proto::ratings::{GetRatingsRequest, ProductRatings, RateProductRequest};

/// Ratings with a fixed answer: the bench measures the stack, not a store.
struct Fixed;

#[tonic::async_trait]
impl Ratings for Fixed {
    async fn get_ratings(
        &self,
        req: tonic::Request<GetRatingsRequest>,
    ) -> Result<tonic::Response<ProductRatings>, tonic::Status> {
        Ok(tonic::Response::new(ProductRatings {
            product_id: req.get_ref().product_id,
            ratings: [("Reviewer1".to_owned(), 5), ("Reviewer2".to_owned(), 4)].into(),
        }))
    }

    async fn rate_product(
        &self,
        _: tonic::Request<RateProductRequest>,
    ) -> Result<tonic::Response<ProductRatings>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the bench"))
    }
}

/// The guard of a workload whose tokens come from `issuer` (audience
/// `bench`, JWKS inline) and whose every request needs one.
fn guard(issuer: &TestIssuer) -> palisade::prelude::Guard {
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules: [{{issuer: {iss}, audiences: [bench], jwks: '{jwks}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: default}}
spec:
  rules: [{{from: [{{source: {{requestPrincipals: [\"*\"]}}}}]}}]
",
        iss = issuer.issuer(),
        jwks = issuer.jwks(),
    );
    let set = PolicySet::from_yaml_str(&yaml, "bench.yaml").unwrap();
    palisade::guard_builder_from_policy(
        &set,
        &Workload::new("bench", "default"),
        &palisade::core::authz::ExternalAuthorizers::new(),
    )
    .unwrap()
    .build()
    .unwrap()
}

/// Serves `router` on a loopback port (h2c or HTTP/1.1, by the first bytes).
async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn guarded(router: axum::Router, guard: Option<palisade::prelude::Guard>) -> axum::Router {
    match guard {
        Some(g) => palisade::axum::PalisadeLayer::new(g).wrap(router).into_router(),
        None => router,
    }
}

fn grpc_benches(c: &mut Criterion) {
    // Client and servers share one thread: no cross-thread wake-ups.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let issuer = TestIssuer::start().unwrap();
    let token = issuer.token().subject("alice").audience("bench").sign();
    let bearer = format!("Bearer {token}");
    let guard = guard(&issuer);

    let page = || axum::Router::new().route("/", get(|| async { "ok" }));
    let ratings = || {
        tonic::service::Routes::new(RatingsServer::new(Fixed))
            .prepare()
            .into_axum_router()
    };
    let (h2_guarded, h2_plain, grpc_guarded, grpc_plain) = rt.block_on(async {
        (
            serve(guarded(page(), Some(guard.clone()))).await,
            serve(guarded(page(), None)).await,
            serve(guarded(ratings(), Some(guard.clone()))).await,
            serve(guarded(ratings(), None)).await,
        )
    });

    // HTTP/2: one client each, h2c with prior knowledge (one connection).
    let h2 = || {
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap()
    };
    let (h2_guarded_client, h2_plain_client) = (h2(), h2());
    let h2_get = |client: &reqwest::Client, addr: SocketAddr| {
        let req = client
            .get(format!("http://{addr}/"))
            .header("authorization", &bearer);
        rt.block_on(async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.version(), http::Version::HTTP_2);
            assert_eq!(res.status(), 200);
            black_box(res.bytes().await.unwrap());
        });
    };
    // Before timing: both answer, the guarded one refuses a call without a token.
    h2_get(&h2_guarded_client, h2_guarded);
    h2_get(&h2_plain_client, h2_plain);
    let refused = rt
        .block_on(h2_guarded_client.get(format!("http://{h2_guarded}/")).send())
        .unwrap();
    assert_eq!(refused.status(), 401);

    // gRPC: tonic's client over h2c.
    let channel = |addr: SocketAddr| -> Channel {
        rt.block_on(Endpoint::from_shared(format!("http://{addr}")).unwrap().connect())
            .unwrap()
    };
    let (grpc_guarded_channel, grpc_plain_channel) = (channel(grpc_guarded), channel(grpc_plain));
    let metadata: tonic::metadata::MetadataValue<_> = bearer.parse().unwrap();
    let grpc_get = |channel: &Channel| {
        let mut client = RatingsClient::new(channel.clone());
        let mut req = tonic::Request::new(GetRatingsRequest { product_id: 0 });
        req.metadata_mut().insert("authorization", metadata.clone());
        rt.block_on(async move {
            let res = client.get_ratings(req).await.unwrap();
            black_box(res.into_inner());
        });
    };
    grpc_get(&grpc_guarded_channel);
    grpc_get(&grpc_plain_channel);
    let refused = rt
        .block_on(
            RatingsClient::new(grpc_guarded_channel.clone()).get_ratings(GetRatingsRequest { product_id: 0 }),
        )
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // The same guarded and plain routers called in process (no network):
    // what the guard itself costs on this request.
    let bearer_ref = &bearer;
    let in_process = |router: axum::Router| {
        use tower::ServiceExt as _;
        let bearer = bearer_ref;
        let router = router.with_state(());
        let req = || {
            http::Request::get("/")
                .header("authorization", bearer.as_str())
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let rt = &rt;
        move || {
            let res = rt.block_on(router.clone().oneshot(req())).unwrap();
            assert_eq!(res.status(), 200);
            black_box(res);
        }
    };
    let mut in_process_guarded = in_process(guarded(page(), Some(guard.clone())));
    let mut in_process_plain = in_process(guarded(page(), None));

    let mut g = c.benchmark_group("guard_over_h2_and_grpc");
    let mut results = Vec::new();
    if let Some(p) = bench_paired(
        &mut g,
        "in_process_axum_cached_jwt",
        &mut in_process_guarded,
        &mut in_process_plain,
    ) {
        results.push(("in_process_axum_cached_jwt", p));
    }
    if let Some(p) = bench_paired(
        &mut g,
        "h2c_axum_cached_jwt",
        &mut || h2_get(&h2_guarded_client, h2_guarded),
        &mut || h2_get(&h2_plain_client, h2_plain),
    ) {
        results.push(("h2c_axum_cached_jwt", p));
    }
    if let Some(p) = bench_paired(
        &mut g,
        "grpc_tonic_cached_jwt",
        &mut || grpc_get(&grpc_guarded_channel),
        &mut || grpc_get(&grpc_plain_channel),
    ) {
        results.push(("grpc_tonic_cached_jwt", p));
    }
    g.finish();
    for (name, p) in results {
        println!(
            "guard_over_h2_and_grpc/{name}: {:.0} ns per request over the same stack without Palisade ({:.3}x)",
            p.overhead_ns, p.ratio
        );
    }
}

criterion_group!(benches, grpc_benches);
criterion_main!(benches);
