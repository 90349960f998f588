//! Serving an axum `Router` (or any tower service) over TLS, with the peer's
//! identity attached to the connection and exposed to every request on it.
//!
//! `axum::serve` has no TLS, so Palisade brings its own accept loop:
//! `palisade_axum::serve_with` (hyper-util's automatic HTTP/1.1 or HTTP/2
//! server, graceful shutdown, the [`ServerLimits`] on slow and silent
//! clients and on bodies) with tokio-rustls for the handshake (h2 is offered
//! by ALPN, and a plaintext caller in PERMISSIVE may speak h2c with prior
//! knowledge). (axum-server would do the TLS, but hides the connection
//! before the application sees it; the peer certificate is needed once per
//! connection.)
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use palisade_mtls::{MtlsMode, ServerTls};
//! # async fn run(guard: palisade_core::Guard) -> Result<(), Box<dyn std::error::Error>> {
//! let tls = ServerTls::builder("server.crt", "server.key").client_ca("mesh-ca.pem").mode(MtlsMode::Strict).build()?;
//! let app = palisade_axum::PalisadeLayer::new(guard).wrap(Router::new().route("/", get(|| async { "hi" })));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! palisade_mtls::axum::serve(listener, tls, app, std::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! [`serve_with`] takes the [`ServerLimits`] (timeouts and body limit)
//! instead of their defaults.
//!
//! In [`MtlsMode::Permissive`](crate::MtlsMode::Permissive) the first byte of each connection tells TLS
//! (a handshake record, `0x16`) from plaintext HTTP, as Istio's sidecar does;
//! plaintext callers have no peer identity.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use palisade_axum::Handshake;
use palisade_core::authn::ConnectionInfo;
use palisade_core::limits::ServerLimits;
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

use crate::identity::fill_from_session;
use crate::server::{ServerTls, handshake_failed, starts_with_tls};

/// Serves `service` on `listener` with `tls` and the default
/// [`ServerLimits`] until `shutdown` completes, then lets open connections
/// finish (up to 10 s).
///
/// Every request carries an `Arc<ConnectionInfo>` in its extensions: the
/// remote and local addresses, the SNI, and for a client certificate the
/// verified peer [`Identity`](palisade_core::Identity) (parsed once per
/// connection) and its chain. Palisade's guard takes the peer identity from
/// there; handlers see it in `Identity::peer`.
///
/// # Errors
/// None so far: a failed `accept` is logged and retried; failed handshakes
/// are logged at debug level and cost nothing else.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: ServerTls,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(listener, tls, ServerLimits::default(), service, shutdown).await
}

/// [`serve`] with these [`ServerLimits`]: the TLS handshake (and in
/// PERMISSIVE the first byte) within the handshake timeout, request heads
/// within the header-read timeout, idle connections closed after the idle
/// timeout, bodies over the limit answered 413.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with<S, B>(
    listener: TcpListener,
    tls: ServerTls,
    limits: ServerLimits,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // This loop speaks HTTP/2 too: offer it first, in a copy that shares
    // the rotating material.
    let config = {
        let mut c = (*tls.server_config()).clone();
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(c)
    };
    let handshake = Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(config),
        tls,
    };
    palisade_axum::serve_with(listener, handshake, limits, service, shutdown).await
}

/// The handshake of [`serve_with`]: in PERMISSIVE the first byte tells TLS
/// from plaintext, then rustls, and the session's facts in the
/// connection's [`ConnectionInfo`]. The loop bounds it by the handshake
/// timeout.
#[derive(Clone)]
struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Whose material checks each connection's peer again, and whose mode
    /// in force ([`ServerTls::set_mode`]) each new connection meets.
    tls: ServerTls,
}

/// A connection as HTTP sees it: TLS, or plaintext in PERMISSIVE.
type Stream = Box<dyn Io>;

/// The stream traits, object-safe together.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Handshake for Tls {
    type Io = Stream;

    async fn handshake(&self, tcp: TcpStream, info: &mut ConnectionInfo) -> Result<Stream, &'static str> {
        // No timeout of its own: the loop's bounds the whole handshake.
        let tls_first = !self.tls.serves_plaintext() || starts_with_tls(&tcp).await?;
        if !tls_first {
            // Plaintext, in PERMISSIVE: served while the mode stays so.
            info.peer_recheck = self.tls.mode_recheck(true);
            return Ok(Box::new(tcp) as Stream);
        }
        let stream = self
            .acceptor
            .accept(tcp)
            .await
            .map_err(|e| handshake_failed(&e))?;
        fill_from_session(info, stream.get_ref().1, &self.tls);
        Ok(Box::new(stream) as Stream)
    }
}
