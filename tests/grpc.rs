//! The `ratings` example (tonic behind Palisade's tower layer) as a gRPC
//! client sees it, over h2c and over mutual TLS: refusals are gRPC statuses
//! with the challenge in `www-authenticate` metadata, policies match gRPC
//! paths as Istio does (`/package.Service/Method`), and health checks pass
//! without a token when the policy says so.

use std::time::Duration;

use palisade::testkit::{TestIssuer, TestPki};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

mod common;
#[path = "../examples/proto/mod.rs"]
mod proto;

use proto::ratings::ratings_client::RatingsClient;
use proto::ratings::{GetRatingsRequest, RateProductRequest};

/// Anyone signed in reads ratings; only a realm `admin` rates; reviews'
/// workload (mTLS) may read without a user token; health checks are open.
fn policy(issuer: &TestIssuer) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules: [{{issuer: {iss}, jwksUri: {jwks}, audiences: [ratings]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ratings, namespace: default}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  rules:
  - to: [{{operation: {{methods: [POST], paths: [/grpc.health.v1.Health/Check]}}}}]
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
    to: [{{operation: {{paths: [/bookinfo.ratings.v1.Ratings/GetRatings]}}}}]
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/reviews]}}}}]
    to: [{{operation: {{paths: [/bookinfo.ratings.v1.Ratings/GetRatings]}}}}]
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
    to: [{{operation: {{paths: [/bookinfo.ratings.v1.Ratings/RateProduct]}}}}]
    when: [{{key: \"request.auth.claims[realm_access][roles]\", values: [admin]}}]
",
        iss = issuer.issuer(),
        jwks = issuer.jwks_uri(),
    )
}

/// A token of a realm `admin`, who may rate.
fn admin(issuer: &TestIssuer) -> String {
    issuer
        .token()
        .subject("bob")
        .audience("ratings")
        .realm_roles(&["admin"])
        .sign()
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn challenge(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The whole contract of ratings, through `channel`.
async fn check_contract(channel: Channel, issuer: &TestIssuer, what: &str) {
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "bookinfo.ratings.v1.Ratings".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: health check: {e:?}"));
    assert_eq!(health.get_ref().status(), ServingStatus::Serving, "{what}");

    let mut ratings = RatingsClient::new(channel);
    let get = || GetRatingsRequest { product_id: 0 };
    let none = ratings.get_ratings(with_token(get(), None)).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{what}: no token: {none:?}");
    assert!(challenge(&none).starts_with("Bearer"), "{what}: {none:?}");

    let bad = ratings
        .get_ratings(with_token(get(), Some("not.a.token")))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated, "{what}: {bad:?}");
    assert!(challenge(&bad).contains("invalid_token"), "{what}: {bad:?}");

    let wrong_audience = issuer.token().subject("alice").audience("reviews").sign();
    let refused = ratings
        .get_ratings(with_token(get(), Some(&wrong_audience)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");

    let user = issuer
        .token()
        .subject("alice")
        .audience("ratings")
        .realm_roles(&["user"])
        .sign();
    let read = ratings.get_ratings(with_token(get(), Some(&user))).await.unwrap();
    assert_eq!(read.get_ref().ratings.get("Reviewer1"), Some(&5), "{what}");

    let rate = || RateProductRequest {
        product_id: 0,
        reviewer: "alice".into(),
        stars: 3,
    };
    let denied = ratings
        .rate_product(with_token(rate(), Some(&user)))
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Code::PermissionDenied,
        "{what}: a user without the admin role: {denied:?}"
    );

    let admin = admin(issuer);
    let rated = ratings
        .rate_product(with_token(rate(), Some(&admin)))
        .await
        .unwrap();
    assert_eq!(rated.get_ref().ratings.get("alice"), Some(&3), "{what}");
}

/// ratings over h2c with [`policy`]: the issuer, the service (and its
/// directory) and a channel whose calls have `timeout` each.
async fn h2c_ratings(
    tag: &str,
    timeout: Duration,
) -> (TestIssuer, common::ScratchDir, common::Service, Channel) {
    let issuer = TestIssuer::start().unwrap();
    let dir = common::ScratchDir::new(tag);
    let file = dir.write("policy.yaml", &policy(&issuer));
    let svc = common::start("ratings", &["--config", &file]);
    let channel = Endpoint::from_shared(format!("http://{}", svc.addr))
        .unwrap()
        .timeout(timeout)
        .connect()
        .await
        .unwrap();
    (issuer, dir, svc, channel)
}

#[tokio::test]
async fn ratings_over_h2c_answers_refusals_as_grpc_statuses_and_matches_grpc_paths() {
    let (issuer, _dir, svc, channel) = h2c_ratings("grpc", Duration::from_secs(10)).await;
    check_contract(channel.clone(), &issuer, "h2c").await;

    // A plain HTTP/1.1 client is not a gRPC client: it gets HTTP statuses.
    let res = reqwest::Client::new()
        .post(format!(
            "http://{}/bookinfo.ratings.v1.Ratings/GetRatings",
            svc.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // An RPC by another method than POST, which policies name, is not run
    // (tonic would run it: a PUT would pass a DENY on POST).
    let user = issuer.token().subject("alice").audience("ratings").sign();
    let res = reqwest::Client::new()
        .put(format!(
            "http://{}/bookinfo.ratings.v1.Ratings/GetRatings",
            svc.addr
        ))
        .bearer_auth(&user)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        // One uncompressed, empty message: product 0.
        .body(vec![0u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405, "{:?}", res.headers());
}

#[tokio::test]
async fn ratings_over_mutual_tls_knows_the_calling_workload() {
    let issuer = TestIssuer::start().unwrap();
    let pki = TestPki::new();
    let dir = common::ScratchDir::new("grpc-mtls");
    let policy = dir.write("policy.yaml", &policy(&issuer));
    let ca = dir.write("ca.pem", &pki.ca_pem());
    let (cert, key) = dir.cert("ratings", &pki.workload("default", "ratings"));
    let svc = common::start(
        "ratings",
        &[
            "--config",
            &policy,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--client-ca",
            &ca,
        ],
    );
    let channel_as = |workload: &str| {
        let (cert, key) = dir.cert(workload, &pki.workload("default", workload));
        let tls = palisade::mtls::ClientTls::builder(cert, key, &ca)
            .expect_subject_alt_name("spiffe://cluster.local/ns/default/sa/ratings")
            .build()
            .unwrap();
        let addr = svc.addr.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let (tls, addr) = (tls.h2_connector(), addr.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from("ratings").unwrap();
                let stream = tls.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        Endpoint::from_static("https://ratings.default.svc.cluster.local")
            .timeout(Duration::from_secs(10))
            .connect_with_connector_lazy(connector)
    };
    check_contract(channel_as("productpage"), &issuer, "mTLS").await;
    // reviews' workload reads without a user token (its peer principal);
    // productpage's does not.
    let get = || GetRatingsRequest { product_id: 0 };
    let reviews = RatingsClient::new(channel_as("reviews")).get_ratings(get()).await;
    assert!(reviews.is_ok(), "{reviews:?}");
    let productpage = RatingsClient::new(channel_as("productpage"))
        .get_ratings(get())
        .await
        .unwrap_err();
    assert_eq!(productpage.code(), Code::Unauthenticated, "{productpage:?}");
}

#[tokio::test]
async fn ratings_keeps_at_most_ten_thousand_and_still_takes_a_known_reviewers_new_stars() {
    const CAP: usize = 10_000;
    let (issuer, _dir, _svc, channel) = h2c_ratings("grpc-cap", Duration::from_secs(30)).await;
    let admin = admin(&issuer);
    // Spread over 100 products, so that no answer (a product's ratings)
    // grows large.
    let rate = |i: usize, stars: i32| RateProductRequest {
        product_id: i32::try_from(i % 100).unwrap(),
        reviewer: format!("r{i}"),
        stars,
    };
    // One more than the store keeps, sixteen at a time.
    let mut workers = tokio::task::JoinSet::new();
    for first in 0..16 {
        let (channel, admin) = (channel.clone(), admin.clone());
        workers.spawn(async move {
            let mut ratings = RatingsClient::new(channel);
            let (mut kept, mut full) = (0, 0);
            for i in (first..=CAP).step_by(16) {
                match ratings.rate_product(with_token(rate(i, 3), Some(&admin))).await {
                    Ok(_) => kept += 1,
                    Err(e) if e.code() == Code::ResourceExhausted => full += 1,
                    Err(e) => panic!("rating {i}: {e:?}"),
                }
            }
            (kept, full)
        });
    }
    let (mut kept, mut full) = (0, 0);
    while let Some(done) = workers.join_next().await {
        let (k, f) = done.unwrap();
        (kept, full) = (kept + k, full + f);
    }
    assert_eq!((kept, full), (CAP, 1));
    let mut ratings = RatingsClient::new(channel);
    // A new reviewer is refused, whichever product; a known one's new
    // stars replace the old ones.
    let refused = ratings
        .rate_product(with_token(rate(CAP + 1, 4), Some(&admin)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("full"), "{refused:?}");
    let product = ratings
        .get_ratings(with_token(GetRatingsRequest { product_id: 7 }, Some(&admin)))
        .await
        .unwrap();
    let reviewer = product
        .get_ref()
        .ratings
        .keys()
        .find(|r| r.starts_with('r'))
        .unwrap()
        .clone();
    let known = RateProductRequest {
        product_id: 7,
        reviewer: reviewer.clone(),
        stars: 1,
    };
    let rated = ratings
        .rate_product(with_token(known, Some(&admin)))
        .await
        .unwrap();
    assert_eq!(rated.get_ref().ratings.get(&reviewer), Some(&1));
}
