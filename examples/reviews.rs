//! The `reviews` service (actix-web), as shared/CONTRACT.md describes it.
//!
//! ```text
//! cargo run --release --example reviews -- [--listen 127.0.0.1:9081] [--config policy.yaml]
//! ```

mod common;

use actix_web::{App, HttpResponse, HttpServer, web};
use palisade::Identity;
use palisade::actix::Palisade;

fn main() {
    common::init_logging();
    let args = common::args("reviews", 9081);
    let setup = common::setup(&args);
    let service: &'static str = Box::leak(setup.workload.service.clone().into_boxed_str());
    let guard = setup.guard.clone();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(Palisade::new(guard.clone()))
            .route("/healthz", web::get().to(|| async { "ok" }))
            .route(
                "/list",
                web::get().to(move || async move { HttpResponse::Ok().json(common::list_json(service)) }),
            )
            .route(
                "/list",
                web::post()
                    .to(move || async move { HttpResponse::Created().json(common::created_json(service)) }),
            )
            .route(
                "/reviews/{id}",
                web::get().to(move |id: web::Path<String>| async move {
                    HttpResponse::Ok().json(common::item_json(service, &id))
                }),
            )
            .route(
                "/whoami",
                web::get().to(|id: Option<Identity>| async move {
                    HttpResponse::Ok().json(palisade::core::whoami(id.as_ref()))
                }),
            )
    })
    .workers(2)
    .shutdown_timeout(5)
    .disable_signals()
    .on_connect(palisade::mtls::actix::on_connect);
    let server = match &setup.tls {
        Some(tls) if tls.mode() == palisade::mtls::MtlsMode::Permissive => common::fail(
            "--client-ca: PeerAuthentication PERMISSIVE (plaintext and mTLS on one port) is served by the axum examples; the actix-web example takes STRICT or DISABLE",
        ),
        Some(tls) => server.bind_rustls_0_23(args.listen, tls.actix_config()),
        None => server.bind(args.listen),
    }
    .unwrap_or_else(|e| common::fail(&format!("--listen {}: {e}", args.listen)));
    let tls = setup.tls.clone();
    let addr = server.addrs().first().copied().unwrap_or(args.listen);
    let result = actix_web::rt::System::new().block_on(async move {
        let server = server.run();
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
        common::announce(&setup, addr);
        println!("listening on {addr}");
        server.await
    });
    if let Err(e) = result {
        common::fail(&format!("server error: {e}"));
    }
}
