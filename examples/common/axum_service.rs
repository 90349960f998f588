//! The axum side of the example services (`details`, `productpage`).

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    reason = "shared by several examples, each using a part"
)]

use super::common;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use palisade::Identity;
use palisade::axum::PalisadeLayer;

/// The routes of a contract service, guarded by Palisade. The layer wraps
/// the whole router, so the router sees the normalised path the policy
/// matched.
pub fn app(service: &'static str, guard: palisade::Guard) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/list",
            get(move || async move { Json(common::list_json(service)) })
                .post(move || async move { (StatusCode::CREATED, Json(common::created_json(service))) }),
        )
        .route(
            "/details/{id}",
            get(move |Path(id): Path<String>| async move { Json(common::item_json(service, &id)) }),
        )
        .route(
            "/whoami",
            get(|id: Option<Identity>| async move { Json(palisade::core::whoami(id.as_ref())) }),
        );
    PalisadeLayer::new(guard).wrap(router)
}

/// Runs a contract service on axum: arguments, policy, routes, graceful shutdown.
pub async fn run(default_name: &str, default_port: u16) {
    common::init_logging();
    let args = common::args(default_name, default_port);
    let setup = common::setup(&args);
    let service: &'static str = Box::leak(setup.workload.service.clone().into_boxed_str());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .unwrap_or_else(|e| common::fail(&format!("--listen {}: {e}", args.listen)));
    let addr = listener.local_addr().unwrap_or(args.listen);
    let app = app(service, setup.guard.clone());
    let stop = shutdown_signal();
    common::announce(&setup, addr);
    println!("listening on {addr}");
    let served = match setup.tls.clone() {
        Some(tls) => {
            if let Err(e) = tls.reload_on_sighup() {
                common::fail(&format!("cannot listen for SIGHUP: {e}"));
            }
            palisade::mtls::axum::serve(listener, tls, app, stop).await
        }
        None => {
            let make = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, make).with_graceful_shutdown(stop).await
        }
    };
    if let Err(e) = served {
        common::fail(&format!("server error: {e}"));
    }
}

/// Registers SIGTERM and SIGINT handlers now; the future completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .unwrap_or_else(|e| common::fail(&format!("cannot listen for SIGTERM: {e}")));
    let mut int = signal(SignalKind::interrupt())
        .unwrap_or_else(|e| common::fail(&format!("cannot listen for SIGINT: {e}")));
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
