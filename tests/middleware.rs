//! The guard among tower-http's layers, in the order `docs/middleware.md`
//! gives: no token reaches the application's request logs, a trailing
//! slash trimmed outside the guard cannot walk around an exact-path
//! `DENY`, and a refusal carries the request's id.

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use http::{HeaderName, Request, StatusCode, header};
use palisade::axum::{GuardedRouter, PalisadeLayer};
use palisade::core::policy::{PolicySet, Workload};
use palisade::testkit::TestIssuer;
use tower::ServiceExt;
use tower_http::normalize_path::NormalizePathLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Tokens of `issuer` for `details`, from `Authorization` or the
/// `access_token` query parameter (Istio's default locations); `/admin`
/// refused to everyone.
fn guard(issuer: &TestIssuer) -> palisade::prelude::Guard {
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules: [{{issuer: {}, jwksUri: {}, audiences: [details]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: default}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: callers, namespace: default}}
spec:
  rules: [{{from: [{{source: {{requestPrincipals: [\"*\"]}}}}]}}]
",
        issuer.issuer(),
        issuer.jwks_uri()
    );
    let set = PolicySet::from_yaml_str(&yaml, "policy.yaml").unwrap();
    palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap()
}

/// The routes, guarded, inside the layers of `docs/middleware.md` (the
/// last added is the outermost); `path_only` the span the docs give, else
/// tower-http's default, which records the whole URI.
fn app(guard: palisade::prelude::Guard, path_only: bool) -> GuardedRouter {
    let router = axum::Router::new()
        .route("/data", get(|| async { "[]" }))
        .route("/admin", get(|| async { "admin" }));
    let app = PalisadeLayer::new(guard)
        .wrap(router)
        .layer(NormalizePathLayer::trim_trailing_slash())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ));
    let app = if path_only {
        app.layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Body>| {
                    tracing::debug_span!("request", method = %req.method(), path = req.uri().path())
                })
                .on_request(|_: &Request<Body>, _: &tracing::Span| tracing::debug!("started")),
        )
    } else {
        app.layer(TraceLayer::new_for_http())
    };
    app.layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            header::PROXY_AUTHORIZATION,
        ]))
}

async fn answer(app: &GuardedRouter, req: Request<Body>) -> (StatusCode, Option<String>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let id = res
        .headers()
        .get(&REQUEST_ID)
        .map(|v| v.to_str().unwrap().to_owned());
    (res.status(), id)
}

#[tokio::test]
async fn in_the_documented_order_no_token_is_logged_and_no_slash_walks_around_a_deny() {
    let issuer = TestIssuer::start().unwrap();
    let token = issuer.token().subject("alice").audience("details").sign();
    let (lines, subscriber) = palisade::testkit::logs::Lines::subscriber("debug");
    let _logging = tracing::subscriber::set_default(subscriber);
    let app = app(guard(&issuer), true);

    let by_header = Request::get("/data")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(answer(&app, by_header).await.0, StatusCode::OK);
    let by_query = Request::get(format!("/data?access_token={token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(answer(&app, by_query).await.0, StatusCode::OK);
    assert_eq!(lines.containing("started").len(), 2, "{}", lines.text());
    let signature = token.rsplit('.').next().unwrap();
    assert!(!lines.text().contains(signature), "{}", lines.text());

    // `/admin/`, trimmed before the guard: the guard and the router see
    // the same `/admin`, which the DENY names.
    for path in ["/admin", "/admin/"] {
        let req = Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let (status, id) = answer(&app, req).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            id.is_some_and(|id| !id.is_empty()),
            "{path}: the refusal has the request's id"
        );
    }

    // tower-http's default span records the whole URI: a token in the
    // query is logged (what the docs warn of).
    let logged = app_with_default_span(&issuer, &token).await;
    assert!(logged.contains(signature), "{logged}");
}

/// What tower-http's default span logs of a request with a token in its
/// query.
async fn app_with_default_span(issuer: &TestIssuer, token: &str) -> String {
    let (lines, subscriber) = palisade::testkit::logs::Lines::subscriber("debug");
    let _logging = tracing::subscriber::set_default(subscriber);
    let app = app(guard(issuer), false);
    let req = Request::get(format!("/data?access_token={token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(answer(&app, req).await.0, StatusCode::OK);
    lines.text()
}
