//! Per-call cost of an outbound credential that is already at hand: the
//! workload's cached client-credentials token and a caller's cached
//! exchanged token, each through `palisade-client`'s tower layer on a
//! no-op client service, paired with the same service setting the same
//! header value itself (the floor: what attaching a token costs at least).
//! The bar: under 1 µs per call. Results: benches/README.md.
#![expect(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::client::{
    CallerToken, ClientCredentials, Credentials, CredentialsLayer, TokenExchange, Upstreams,
};
use palisade::testkit::TestIssuer;
use tower::{Layer, Service, ServiceExt};

#[path = "../common/paired.rs"]
mod paired;
use paired::bench_paired;

const SECRET: &str = "bench-secret";

/// A client service that reads the header it would send.
fn sink()
-> impl Service<http::Request<()>, Response = http::Response<usize>, Error = Infallible, Future = impl Send>
+ Clone {
    tower::service_fn(|req: http::Request<()>| async move {
        Ok::<_, Infallible>(http::Response::new(
            req.headers()
                .get(http::header::AUTHORIZATION)
                .map_or(0, http::HeaderValue::len),
        ))
    })
}

fn client_benches(c: &mut Criterion) {
    let issuer = TestIssuer::builder()
        .client("productpage", SECRET)
        .start()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let own = ClientCredentials::builder(issuer.issuer(), "productpage")
        .client_secret(SECRET)
        .audience("details")
        .build()
        .unwrap();
    let exchange = TokenExchange::builder(issuer.issuer(), "productpage")
        .client_secret(SECRET)
        .audience("reviews")
        .build()
        .unwrap();
    let caller = CallerToken::new(&issuer.token().subject("alice").audience("productpage").sign());
    // Fetch both once: the bench measures the cached path.
    let own_header = rt.block_on(own.authorization()).unwrap();
    let exchanged_header = rt.block_on(exchange.authorization(&caller)).unwrap();
    let upstreams = Upstreams::builder()
        .host("details", Credentials::ClientCredentials(own))
        .host("reviews", Credentials::TokenExchange(exchange))
        .build();
    let layered = CredentialsLayer::new(upstreams).layer(sink());
    let floor = sink();

    let mut g = c.benchmark_group("client_paired");
    let mut results = Vec::new();
    for (name, uri, header) in [
        (
            "client_credentials_cached",
            "http://details:9080/details/0",
            own_header,
        ),
        (
            "token_exchange_cached",
            "http://reviews:9080/reviews/0",
            exchanged_header,
        ),
    ] {
        let request = || {
            let mut req = http::Request::get(uri).body(()).unwrap();
            req.extensions_mut().insert(caller.clone());
            req
        };
        let value = http::HeaderValue::from_str(&header).unwrap();
        let paired = bench_paired(
            &mut g,
            name,
            &mut || {
                let n = rt.block_on(layered.clone().oneshot(request())).unwrap();
                assert!(*n.body() > 7);
            },
            &mut || {
                let mut req = request();
                req.headers_mut()
                    .insert(http::header::AUTHORIZATION, value.clone());
                black_box(rt.block_on(floor.clone().oneshot(req)).unwrap());
            },
        );
        results.push((name, paired));
    }
    g.finish();
    for (name, p) in results {
        if let Some(p) = p {
            eprintln!(
                "client_paired/{name}: {:.0} ns per call over setting the header directly ({:.3}x)",
                p.overhead_ns, p.ratio
            );
        }
    }
}

criterion_group!(benches, client_benches);
criterion_main!(benches);
