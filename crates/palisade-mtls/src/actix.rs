//! actix-web: the peer identity of a rustls connection, for every request
//! on it, through `HttpServer::on_connect`.
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use palisade_mtls::ServerTls;
//! # async fn run(guard: palisade_core::Guard) -> Result<(), Box<dyn std::error::Error>> {
//! let tls = ServerTls::builder("server.crt", "server.key").client_ca("mesh-ca.pem").build()?;
//! HttpServer::new(move || App::new().wrap(palisade_actix::Palisade::new(guard.clone())).route("/", web::get().to(|| async { "hi" })))
//!     .on_connect(palisade_mtls::actix::on_connect)
//!     .bind_rustls_0_23("127.0.0.1:8443", tls.actix_config())?
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The config shares the rotating material of the [`ServerTls`]: a reload
//! reaches actix-web's listener too. actix-web listens with TLS or without it
//! per port, so [`MtlsMode::Permissive`](crate::MtlsMode::Permissive)
//! (plaintext and TLS on one port) needs the axum accept loop.

use std::any::Any;

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use palisade_core::ConnectionInfo;

use crate::identity::fill_from_session;
use crate::server::ServerTls;

/// The `on_connect` callback: puts the connection's [`ConnectionInfo`]
/// (addresses, SNI, and for a client certificate the verified peer identity,
/// parsed once) in the connection data, where Palisade's middleware finds it.
pub fn on_connect(conn: &dyn Any, data: &mut Extensions) {
    let mut info = ConnectionInfo::default();
    if let Some(tls) = conn.downcast_ref::<TlsStream<TcpStream>>() {
        let (tcp, session) = tls.get_ref();
        info.remote_addr = tcp.peer_addr().ok();
        info.local_addr = tcp.local_addr().ok();
        fill_from_session(&mut info, session);
    } else if let Some(tcp) = conn.downcast_ref::<TcpStream>() {
        info.remote_addr = tcp.peer_addr().ok();
        info.local_addr = tcp.local_addr().ok();
    } else {
        return;
    }
    data.insert(info);
}

impl ServerTls {
    /// The rustls configuration by value, as `HttpServer::bind_rustls_0_23`
    /// takes it; it shares this server's rotating material.
    #[must_use]
    pub fn actix_config(&self) -> rustls::ServerConfig {
        (*self.server_config()).clone()
    }
}
