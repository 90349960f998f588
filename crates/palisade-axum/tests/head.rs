//! The layer's own replies to HEAD requests carry no body: hyper's HTTP/1
//! server drops one, its HTTP/2 server would send it.

use axum::routing::get;
use http_body::Body as _;
use palisade_axum::PalisadeLayer;
use palisade_core::Guard;
use palisade_core::authz::AccessPolicy;
use tower_layer::Layer as _;
use tower_service::Service as _;

/// The status and body of the answer to `method /` without a credential.
async fn answer(method: &str) -> (u16, Vec<u8>) {
    let guard = Guard::builder()
        .access_policy(AccessPolicy::require_authenticated())
        .build()
        .unwrap();
    let router = axum::Router::new()
        .route("/", get(|| async { "ok" }))
        .with_state(());
    let mut svc = PalisadeLayer::new(guard).layer(router);
    let req = http::Request::builder()
        .method(method)
        .uri("/")
        .body(axum::body::Body::empty())
        .unwrap();
    std::future::poll_fn(|cx| {
        tower_service::Service::<http::Request<axum::body::Body>>::poll_ready(&mut svc, cx)
    })
    .await
    .unwrap();
    let res = svc.call(req).await.unwrap();
    let status = res.status().as_u16();
    let mut body = std::pin::pin!(res.into_body());
    let mut bytes = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(data) = frame.unwrap().into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    (status, bytes)
}

#[tokio::test]
async fn a_refusal_to_a_head_request_has_no_body() {
    let (status, body) = answer("GET").await;
    assert_eq!(status, 401);
    assert!(!body.is_empty(), "a GET is told why");
    let (status, body) = answer("HEAD").await;
    assert_eq!(status, 401);
    assert!(body.is_empty(), "{}", String::from_utf8_lossy(&body));
}
