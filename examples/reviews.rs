//! The `reviews` service (actix-web), as docs/examples.md describes it;
//! with `--upstream ratings=URL` each review carries the product's ratings
//! from the ratings service (gRPC), called with the credential and TLS the
//! policy file gives (`UpstreamCredentials`, `DestinationRule`).
//!
//! ```text
//! cargo run --release --features full --example reviews -- [--listen 127.0.0.1:9081] [--config policy.yaml]
//! ```

mod common;
#[path = "common/floor.rs"]
mod floor;
#[path = "proto/mod.rs"]
mod proto;
#[path = "common/ratings_client.rs"]
mod ratings_client;

use actix_web::middleware::Condition;
use actix_web::{App, HttpResponse, HttpServer, web};
use palisade::actix::{BodyLimit, Palisade};
use palisade::mtls::actix::HttpSettings;
use palisade::prelude::Identity;

fn main() {
    common::init_logging();
    let args = common::args("reviews", 9081);
    let setup = common::setup(&args);
    let service: &'static str = Box::leak(setup.workload.service.clone().into_boxed_str());
    let guard = setup.guard.clone();
    let ratings = ratings_client::Ratings::new(&args, &setup);
    // `--no-guard` (benchmarking only): the same routes without Palisade.
    let guarded = !args.no_guard;
    let limits = args.limits;
    if args.floor {
        // `--floor` (benchmarking only): behind the floor instead, an app
        // of its own type, so that the other instances carry no layer of it.
        common::warn_floor();
        let app = move || {
            routes(
                App::new().wrap(floor::Floor::new()),
                service,
                ratings.clone(),
                limits,
            )
            // Last, so first: a body too large is refused before the guard.
            .wrap(BodyLimit::new(limits))
        };
        serve(&args, setup, app);
    } else {
        let app = move || {
            let app = App::new().wrap(Condition::new(guarded, Palisade::new(guard.clone())));
            // Last, so first: a body too large is refused before the guard.
            routes(app, service, ratings.clone(), limits).wrap(BodyLimit::new(limits))
        };
        serve(&args, setup, app);
    }
}

/// The service's routes on `app`, with the extractors' limits.
fn routes<T>(
    app: App<T>,
    service: &'static str,
    ratings: Option<ratings_client::Ratings>,
    limits: palisade::core::limits::ServerLimits,
) -> App<T>
where
    T: actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Error = actix_web::Error,
            InitError = (),
        >,
{
    app
        // The extractors' limits are the body limit too.
        .app_data(web::PayloadConfig::new(limits.max_body()))
        .app_data(web::JsonConfig::default().limit(limits.max_body()))
        .route("/healthz", web::get().to(|| async { "ok" }))
        .route(
            "/list",
            web::get().to(move || async move { HttpResponse::Ok().json(common::list_json(service)) }),
        )
        .route(
            "/list",
            // POST reads its body, as a real create would: the body
            // limit shows as 413.
            web::post().to(move |_body: web::Bytes| async move {
                HttpResponse::Created().json(common::created_json(service))
            }),
        )
        .route(
            "/reviews/{id}",
            web::get().to(move |id: web::Path<String>, req: actix_web::HttpRequest| {
                let ratings = ratings.clone();
                async move {
                    let mut item = common::item_json(service, &id);
                    if let (Some(ratings), Ok(product)) = (ratings, id.parse::<i32>()) {
                        item["ratings"] = ratings.get(product, caller_token(&req)).await;
                    }
                    HttpResponse::Ok().json(item)
                }
            }),
        )
        .route(
            "/whoami",
            web::get().to(|id: Option<Identity>| async move {
                HttpResponse::Ok().json(palisade::core::whoami(id.as_ref()))
            }),
        )
}

/// Serves the apps `app` makes, as the policy says (plaintext, PERMISSIVE
/// or STRICT mTLS), until SIGTERM or SIGINT.
fn serve<F, I, S, B>(args: &common::Args, setup: common::Setup, app: F)
where
    F: Fn() -> I + Send + Clone + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_web::dev::ServiceFactory<actix_http::Request, Config = actix_web::dev::AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<actix_http::Response<B>> + 'static,
    <S::Service as actix_web::dev::Service<actix_http::Request>>::Future: 'static,
    S::Service: 'static,
    B: actix_web::body::MessageBody + 'static,
{
    let limits = args.limits;
    let listen_error = |e: std::io::Error| format!("--listen {}: {e}", args.listen);
    // Plaintext and mutual TLS take Palisade's listener, which waits for a
    // caller's first byte with a timeout (actix-web's `bind_auto_h2c` waits
    // without end) and, while the mode in force is PERMISSIVE (plaintext
    // and mTLS on one port), tells the two apart by it: a policy reload
    // may change the mode (`ServerTls::set_mode`). TLS without a client CA
    // takes actix-web's own rustls listener.
    let (server, addr) = match &setup.tls {
        Some(tls) if !tls.takes_client_certificates() => {
            let server = palisade::actix::with_limits(HttpServer::new(app), &limits)
                .tls_handshake_timeout(limits.handshake())
                .workers(2)
                .shutdown_timeout(5)
                .disable_signals()
                .on_connect(tls.actix_on_connect())
                .bind_rustls_0_23(args.listen, tls.actix_config())
                .unwrap_or_else(|e| common::fail(&listen_error(e)));
            let addr = server.addrs().first().copied().unwrap_or(args.listen);
            (Listener::ActixWeb(Box::new(server)), addr)
        }
        tls => {
            let listener =
                std::net::TcpListener::bind(args.listen).unwrap_or_else(|e| common::fail(&listen_error(e)));
            let addr = listener.local_addr().unwrap_or(args.listen);
            let settings = HttpSettings::from_limits(&limits);
            let server = palisade::mtls::actix::server(listener, tls.clone(), settings, app)
                .unwrap_or_else(|e| common::fail(&listen_error(e)))
                .workers(2)
                .shutdown_timeout(5)
                .disable_signals();
            (Listener::Palisade(server), addr)
        }
    };
    let tls = setup.tls.clone();
    let result = actix_web::rt::System::new().block_on(async move {
        let server = match server {
            Listener::Palisade(server) => server.run(),
            Listener::ActixWeb(server) => server.run(),
        };
        let handle = server.handle();
        // Signal handlers are in place before the service says it is ready.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .unwrap_or_else(|e| common::fail(&format!("cannot listen for SIGTERM: {e}")));
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .unwrap_or_else(|e| common::fail(&format!("cannot listen for SIGINT: {e}")));
        if let Some(tls) = &tls
            && let Err(e) = tls.reload_on_sighup()
        {
            common::fail(&format!("cannot listen for SIGHUP: {e}"));
        }
        actix_web::rt::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            handle.stop(true).await;
        });
        common::start_operations(args, &setup);
        common::started();
        common::announce(&setup, addr);
        println!("listening on {addr}");
        server.await
    });
    if let Err(e) = result {
        common::fail(&format!("server error: {e}"));
    }
}

/// The bearer token the guard verified for the request being served.
fn caller_token(req: &actix_web::HttpRequest) -> Option<palisade::client::CallerToken> {
    use actix_web::HttpMessage as _;
    palisade::client::CallerToken::from_request(req.extensions().get::<palisade::core::RequestAuth>()?)
}

/// The two ways the service listens (see `main`).
enum Listener<H> {
    Palisade(palisade::mtls::actix::ServerBuilder),
    ActixWeb(Box<H>),
}
