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
use palisade::prelude::Identity;
use std::sync::Arc;

use axum::Extension;
use palisade::axum::PalisadeLayer;
use palisade::core::RequestAuth;
use tower::Layer as _;

/// A back-end called on the user's behalf, with palisade-client's
/// `Credentials::Kerberos`: the user's delegated ticket when the client
/// forwarded one, else S4U (protocol transition) with the service's own key.
pub struct Backend {
    pub url: String,
    /// The JWT users S4U acts for (`--s4u-realm`, `--s4u-claim`,
    /// `--s4u-issuer`); none: only Kerberos users.
    pub s4u_users: Option<palisade::client::S4uUsers>,
    /// `Credentials::Kerberos`.
    pub credentials: palisade::client::Credentials,
    pub client: reqwest::Client,
}

/// `GET /backend/whoami`: the back-end's `/whoami` as seen when called on
/// behalf of this request's user, with how (`delegation` or `s4u`).
async fn backend_whoami(backend: Arc<Backend>, auth: RequestAuth) -> axum::response::Response {
    use axum::response::IntoResponse;
    use palisade::client::{CallerToken, ClientError, KerberosCaller};
    let Ok(url) = reqwest::Url::parse(&format!("{}/whoami", backend.url.trim_end_matches('/'))) else {
        return (StatusCode::BAD_GATEWAY, "bad --backend").into_response();
    };
    let caller = KerberosCaller::from_request(&auth, backend.s4u_users.as_ref());
    let via = if caller.has_delegated() {
        "delegation"
    } else {
        "s4u"
    };
    let mut req = match backend.client.get(url).build() {
        Ok(r) => r,
        Err(_) => return (StatusCode::BAD_GATEWAY, "bad --backend").into_response(),
    };
    let host = req.url().host_str().map(str::to_owned);
    let sent = match backend
        .credentials
        .apply(
            req.headers_mut(),
            host.as_deref(),
            Some(&CallerToken::from_kerberos(caller)),
        )
        .await
    {
        // A Kerberos ticket: the answer must prove the back-end.
        Ok(sent) => sent,
        Err(ClientError::NoCallerToken) => return auth.missing_credential().into_response(),
        Err(e) => {
            palisade::core::sparse_warning!(error = %e, via, "cannot get a ticket for the back-end (at warn level once a minute while it lasts)");
            return (
                StatusCode::BAD_GATEWAY,
                Json(serde_json::json!({"via": via, "error": "no ticket for the back-end"})),
            )
                .into_response();
        }
    };
    match backend.client.execute(req).await {
        Ok(res) => {
            if let Err(e) = sent.answered_by(&res) {
                palisade::core::sparse_warning!(error = %e, via, "the back-end's answer is not used (at warn level once a minute while it lasts)");
                return (
                    StatusCode::BAD_GATEWAY,
                    Json(serde_json::json!({"via": via, "error": "the back-end did not prove its identity"})),
                )
                    .into_response();
            }
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap_or(serde_json::Value::Null);
            Json(serde_json::json!({"via": via, "status": status, "backend": body})).into_response()
        }
        Err(e) => {
            palisade::core::sparse_warning!(error = %e.without_url(), "back-end call failed (at warn level once a minute while it lasts)");
            (
                StatusCode::BAD_GATEWAY,
                Json(serde_json::json!({"via": via, "error": "back-end unreachable"})),
            )
                .into_response()
        }
    }
}

/// The routes of a contract service; [`serve`] puts Palisade around them.
pub fn app(service: &'static str, backend: Option<Backend>, extra: Router) -> Router {
    let mut router = extra
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/list",
            // POST reads its body, as a real create would: the body limit
            // shows as 413.
            get(move || async move { Json(common::list_json(service)) }).post(
                move |_body: axum::body::Bytes| async move {
                    (StatusCode::CREATED, Json(common::created_json(service)))
                },
            ),
        )
        .route(
            "/details/{id}",
            get(move |Path(id): Path<String>| async move { Json(common::item_json(service, &id)) }),
        )
        .route(
            "/whoami",
            get(|id: Option<Identity>| async move { Json(palisade::core::whoami(id.as_ref())) }),
        );
    if let Some(backend) = backend {
        let backend = Arc::new(backend);
        router = router.route(
            "/backend/whoami",
            get(move |Extension(auth): Extension<RequestAuth>| backend_whoami(backend.clone(), auth)),
        );
    }
    router
}

#[path = "floor.rs"]
mod floor;

/// Runs a contract service on axum: arguments, policy, routes, graceful shutdown.
pub async fn run(default_name: &str, default_port: u16) {
    run_with(default_name, default_port, Router::new()).await;
}

/// [`run`] with a service's own routes beside the contract's.
pub async fn run_with(default_name: &str, default_port: u16, extra: Router) {
    serve(default_name, default_port, |parts| {
        app(parts.service, parts.backend, extra)
    })
    .await;
}

/// What a service's router is made of.
pub struct Parts<'a> {
    pub service: &'static str,
    /// `--backend`.
    pub backend: Option<Backend>,
    pub args: &'a common::Args,
    pub setup: &'a common::Setup,
}

/// Runs the router `make` builds, guarded by Palisade: arguments, policy,
/// graceful shutdown. The layer goes around the whole router (the service
/// `palisade::axum::serve` is given), so the router sees the normalised
/// path the policy matched and no second router runs per request, as one
/// would under `PalisadeLayer::wrap`. Without a guard (`--no-guard`,
/// benchmarking only) the routes are served as they are; with `--floor`
/// (benchmarking only) behind the floor of `floor.rs`.
pub async fn serve(default_name: &str, default_port: u16, make: impl FnOnce(Parts<'_>) -> Router) {
    common::init_logging();
    let args = common::args(default_name, default_port);
    let setup = common::setup(&args);
    let service: &'static str = Box::leak(setup.workload.service.clone().into_boxed_str());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .unwrap_or_else(|e| common::fail(&format!("--listen {}: {e}", args.listen)));
    let addr = listener.local_addr().unwrap_or(args.listen);
    let backend = args.backend.clone().map(|url| Backend {
        url,
        s4u_users: common::s4u_users(&args, &setup),
        // `--upstream-timeout` bounds getting a ticket too.
        credentials: palisade::client::Credentials::Kerberos(
            match palisade::spnego::Impersonator::new() {
                Ok(imp) => palisade::client::Kerberos::s4u(imp),
                Err(e) => {
                    tracing::warn!(error = %e, "no S4U: only delegated tickets reach the back-end");
                    palisade::client::Kerberos::delegation()
                }
            }
            .kdc_timeout(args.upstream_timeout),
        ),
        // No redirects: reqwest keeps `Authorization` on a redirect to
        // the same host by another scheme (https to http).
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|e| common::fail(&format!("--backend: {e}"))),
    });
    let guard = (!args.no_guard).then(|| setup.guard.clone());
    let router = make(Parts {
        service,
        backend,
        args: &args,
        setup: &setup,
    })
    .with_state(());
    let stop = shutdown_signal();
    common::start_operations(&args, &setup);
    common::started();
    common::announce(&setup, addr);
    println!("listening on {addr}");
    let limits = args.limits;
    let tls = setup.tls.clone();
    let served = match guard {
        Some(guard) => {
            serve_on(
                listener,
                tls,
                limits,
                PalisadeLayer::new(guard).layer(router),
                stop,
            )
            .await
        }
        None if args.floor => {
            common::warn_floor();
            serve_on(listener, tls, limits, floor::Floor::new().around(router), stop).await
        }
        None => serve_on(listener, tls, limits, router, stop).await,
    };
    if let Err(e) = served {
        common::fail(&format!("server error: {e}"));
    }
}

/// Serves `app` on `listener`, over TLS (mutual when the policy says so)
/// when `tls` is given, until `stop`.
async fn serve_on<S, B>(
    listener: tokio::net::TcpListener,
    tls: Option<palisade::mtls::ServerTls>,
    limits: palisade::core::limits::ServerLimits,
    app: S,
    stop: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: tower::Service<
            axum::http::Request<axum::body::Body>,
            Response = axum::http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tls {
        Some(tls) => {
            if let Err(e) = tls.reload_on_sighup() {
                common::fail(&format!("cannot listen for SIGHUP: {e}"));
            }
            palisade::mtls::axum::serve_with(listener, tls, limits, app, stop).await
        }
        None => palisade::axum::serve_with(listener, palisade::axum::Plain, limits, app, stop).await,
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
