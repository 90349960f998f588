//! The guard under tonic's own server (`Server::builder().layer(..)`, the
//! `tonic` feature): policies read the connection's addresses tonic
//! records (`ports`, `ipBlocks`), `post_only` refuses a call made with
//! another method than `POST` before tonic runs it, and a route-level
//! requirement wraps one service as tonic's `add_service` takes it.

use std::net::SocketAddr;

use palisade::axum::{PalisadeLayer, require};
use palisade::core::authz::realm_role;
use palisade::core::policy::{PolicySet, Workload};
use palisade::testkit::TestIssuer;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, Service, ServiceExt};

const CHECK: &str = "/grpc.health.v1.Health/Check";

/// A policy whose one rule opens health checks to a caller with a token,
/// from loopback, on `port` only (and, with `peer`, from that mTLS
/// principal only).
fn policy(issuer: &TestIssuer, port: u16, peer: Option<&str>) -> String {
    let principals = peer.map(|p| format!(", principals: [{p}]")).unwrap_or_default();
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
  - from: [{{source: {{requestPrincipals: [\"*\"], ipBlocks: [127.0.0.1/32]{principals}}}}}]
    to: [{{operation: {{methods: [POST], ports: [\"{port}\"], paths: [{CHECK}]}}}}]
",
        iss = issuer.issuer(),
        jwks = issuer.jwks_uri(),
    )
}

/// A policy that refuses health checks made with `POST` to everyone.
fn deny_post() -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-checks, namespace: default}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  action: DENY
  rules:
  - to: [{{operation: {{methods: [POST], paths: [{CHECK}]}}}}]
"
    )
}

/// How [`serve`] serves: a requirement on the service, the layer's
/// `post_only`.
#[derive(Default)]
struct Serving {
    ops_only: bool,
    post_only: bool,
}

/// tonic's server on loopback (plaintext: tonic's TLS records the same
/// `TcpConnectInfo`, and its TLS features would change how this crate's
/// other tests' channels connect) with the guard of `policy` (given the
/// address it listens on) around the health service (behind
/// `require(realm_role("ops"))` when `ops_only`), and a channel to it. The
/// server stops when the returned sender is dropped.
async fn serve(
    policy: impl FnOnce(SocketAddr) -> String,
    serving: Serving,
) -> (Channel, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let set = PolicySet::from_yaml_str(&policy(addr), "policy.yaml").unwrap();
    let guard = palisade::guard_from_policy(&set, &Workload::new("ratings", "default")).unwrap();
    let (_, health) = tonic_health::server::health_reporter();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = Server::builder();
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let layer = PalisadeLayer::new(guard);
    let mut server = server.layer(if serving.post_only {
        layer.post_only()
    } else {
        layer
    });
    tokio::spawn(async move {
        let signal = async {
            let _ = stopped.await;
        };
        let served = if serving.ops_only {
            server
                .add_service(require(realm_role("ops")).layer(health))
                .serve_with_incoming_shutdown(incoming, signal)
                .await
        } else {
            server
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
        };
        served.unwrap();
    });
    (endpoint.connect().await.unwrap(), stop)
}

fn check(token: Option<&str>) -> tonic::Request<HealthCheckRequest> {
    let mut req = tonic::Request::new(HealthCheckRequest::default());
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn token(issuer: &TestIssuer, roles: &[&str]) -> String {
    issuer
        .token()
        .subject("alice")
        .audience("ratings")
        .realm_roles(roles)
        .sign()
}

#[tokio::test]
async fn policies_read_the_connection_tonic_records() {
    let issuer = TestIssuer::start().unwrap();
    let token = token(&issuer, &[]);

    let (channel, _stop) = serve(|addr| policy(&issuer, addr.port(), None), Serving::default()).await;
    let mut health = HealthClient::new(channel);
    let none = health.check(check(None)).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let served = health.check(check(Some(&token))).await.unwrap();
    assert_eq!(
        served.get_ref().status(),
        ServingStatus::Serving,
        "the rule's port and address are the connection's"
    );

    // The same rule naming another port than the one the call came to.
    let (channel, _stop) = serve(|addr| policy(&issuer, addr.port() ^ 1, None), Serving::default()).await;
    let refused = HealthClient::new(channel)
        .check(check(Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

/// A health check made with `method`, with `token`, through `channel`:
/// the HTTP status, the `allow` header and the `grpc-status` of the answer.
async fn call_with(
    method: &str,
    token: &str,
    channel: &mut Channel,
) -> (http::StatusCode, Option<String>, Option<String>) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://localhost{CHECK}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        // An empty `HealthCheckRequest`: no compression, no bytes.
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from_static(&[0, 0, 0, 0, 0]),
        )))
        .unwrap();
    let res = channel.ready().await.unwrap().call(req).await.unwrap();
    let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (status, allow, grpc_status) = (res.status(), header("allow"), header("grpc-status"));
    // A call tonic answered has its status in the trailers.
    let trailers = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .trailers()
        .cloned();
    let grpc_status = grpc_status.or_else(|| Some(trailers?.get("grpc-status")?.to_str().ok()?.to_owned()));
    (status, allow, grpc_status)
}

#[tokio::test]
async fn post_only_refuses_other_methods_that_tonic_would_run_past_a_deny_for_post() {
    let issuer = TestIssuer::start().unwrap();
    let token = token(&issuer, &[]);

    // As tonic's server runs it by itself: a PUT is the same call, and the
    // DENY written for gRPC's POST does not see it.
    let (mut channel, _stop) = serve(|_| deny_post(), Serving::default()).await;
    let denied = HealthClient::new(channel.clone())
        .check(check(Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let put = call_with("PUT", &token, &mut channel).await;
    assert_eq!(
        put,
        (http::StatusCode::OK, None, Some("0".into())),
        "tonic ran the call"
    );

    let serving = Serving {
        post_only: true,
        ..Serving::default()
    };
    let (mut channel, _stop) = serve(|_| deny_post(), serving).await;
    for method in ["PUT", "GET", "DELETE", "HEAD"] {
        let (status, allow, grpc_status) = call_with(method, &token, &mut channel).await;
        assert_eq!(status, http::StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(allow.as_deref(), Some("POST"), "{method}");
        assert_eq!(grpc_status, None, "{method}");
    }
    let denied = HealthClient::new(channel)
        .check(check(Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
}

#[tokio::test]
async fn a_requirement_wraps_one_service_as_add_service_takes_it() {
    let issuer = TestIssuer::start().unwrap();
    let serving = Serving {
        ops_only: true,
        ..Serving::default()
    };
    let (channel, _stop) = serve(|addr| policy(&issuer, addr.port(), None), serving).await;
    let mut health = HealthClient::new(channel);
    let refused = health
        .check(check(Some(&token(&issuer, &["user"]))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let served = health
        .check(check(Some(&token(&issuer, &["ops"]))))
        .await
        .unwrap();
    assert_eq!(served.get_ref().status(), ServingStatus::Serving);
}
