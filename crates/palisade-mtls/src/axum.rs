//! Serving an axum `Router` (or any tower service) over TLS, with the peer's
//! identity attached to the connection and exposed to every request on it.
//!
//! `axum::serve` has no TLS, so Palisade brings its own accept loop:
//! tokio-rustls for the handshake, hyper-util's automatic HTTP/1.1 or HTTP/2
//! server for the requests (h2 is offered by ALPN, and a plaintext caller in
//! PERMISSIVE may speak h2c with prior knowledge), hyper-util's graceful
//! shutdown. (axum-server would do the TLS, but hides
//! the connection before the application sees it; the peer certificate is
//! needed once per connection, so the loop is ours: about a hundred lines.)
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use palisade_mtls::{MtlsMode, ServerTls};
//! # async fn run(guard: palisade_core::Guard) -> Result<(), Box<dyn std::error::Error>> {
//! let tls = ServerTls::builder("server.crt", "server.key").client_ca("mesh-ca.pem").mode(MtlsMode::Strict).build()?;
//! let app: Router = palisade_axum::PalisadeLayer::new(guard).wrap(Router::new().route("/", get(|| async { "hi" })));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! palisade_mtls::axum::serve(listener, tls, app, std::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! In [`MtlsMode::Permissive`] the first byte of each connection tells TLS
//! (a handshake record, `0x16`) from plaintext HTTP, as Istio's sidecar does;
//! plaintext callers have no peer identity.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use palisade_core::authn::ConnectionInfo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tower_service::Service;

use crate::identity::fill_from_session;
use crate::server::{HANDSHAKE_TIMEOUT, LOG_TARGET, MtlsMode, ServerTls, starts_with_tls};

/// How long open connections get to finish after shutdown was asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle HTTP/2 peer is pinged, and how long it has to answer.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// Concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 256;

/// Serves `service` on `listener` with `tls` until `shutdown` completes, then
/// lets open connections finish (up to 10 s).
///
/// Every request carries an `Arc<ConnectionInfo>` in its extensions: the
/// remote and local addresses, the SNI, and for a client certificate the
/// verified peer [`Identity`](palisade_core::Identity) (parsed once per
/// connection) and its chain. Palisade's guard takes the peer identity from
/// there; handlers see it in `Identity::peer`.
///
/// # Errors
/// Only when the listener fails for good; failed handshakes are logged at
/// debug level and cost nothing else.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: ServerTls,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // This loop speaks HTTP/2 too: offer it first, in a copy that shares
    // the rotating material.
    let config = {
        let mut c = (*tls.server_config()).clone();
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(c)
    };
    let graceful = GracefulShutdown::new();
    // Every connection's task, so that those still open after the drain
    // timeout can be ended.
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Finished connections leave the set.
        while connections.try_join_next().is_some() {}
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(target: LOG_TARGET, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let watcher = graceful.watcher();
        let (mode, config) = (tls.mode(), config.clone());
        let service = service.clone();
        connections.spawn(async move {
            if let Err(reason) = connection(tcp, remote, mode, config, service, watcher).await {
                tracing::debug!(target: LOG_TARGET, %remote, reason, "connection closed before any request");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        connections.abort_all();
        tracing::warn!(target: LOG_TARGET, "connections still open after the drain timeout were closed");
    }
    Ok(())
}

async fn connection<S, B>(
    tcp: TcpStream,
    remote: SocketAddr,
    mode: MtlsMode,
    config: Arc<rustls::ServerConfig>,
    service: S,
    watcher: Watcher,
) -> Result<(), &'static str>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = tcp.set_nodelay(true);
    let mut info = ConnectionInfo::default();
    info.remote_addr = Some(remote);
    info.local_addr = tcp.local_addr().ok();
    let tls_first = match mode {
        MtlsMode::Permissive => starts_with_tls(&tcp, HANDSHAKE_TIMEOUT).await?,
        MtlsMode::Strict | MtlsMode::Disable => true,
    };
    if !tls_first {
        return http(TokioIo::new(tcp), Arc::new(info), service, watcher).await;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return Err("TLS handshake failed"),
        Err(_) => return Err("TLS handshake timed out"),
    };
    let (_, session) = stream.get_ref();
    fill_from_session(&mut info, session);
    http(TokioIo::new(stream), Arc::new(info), service, watcher).await
}

async fn http<I, S, B>(
    io: TokioIo<I>,
    info: Arc<ConnectionInfo>,
    service: S,
    watcher: Watcher,
) -> Result<(), &'static str>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(Body::new);
        // Per request: one Arc clone. The identity was parsed at the handshake.
        req.extensions_mut().insert(info.clone());
        service.clone().oneshot(req)
    });
    // HTTP/1.1 or HTTP/2 by the connection's first bytes (the h2 preface),
    // whether ALPN chose h2 or the plaintext caller has prior knowledge.
    // Telling them apart waits for bytes with no timeout of its own: the
    // first read has one. A silent HTTP/2 peer is pinged, and let go when it
    // does not answer.
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    http.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(H2_KEEP_ALIVE)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let io = TokioIo::new(FirstReadDeadline::new(io.into_inner(), HANDSHAKE_TIMEOUT));
    let conn = http.serve_connection(io, svc).into_owned();
    watcher.watch(conn).await.map_err(|_| "HTTP connection error")
}

pin_project_lite::pin_project! {
    /// A connection whose first 24 bytes (an HTTP/2 preface's length: what
    /// telling HTTP/1.1 from HTTP/2 may read) must come within a deadline;
    /// after that it is the connection itself.
    struct FirstReadDeadline<I> {
        #[pin]
        io: I,
        deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        read: usize,
    }
}

impl<I> FirstReadDeadline<I> {
    fn new(io: I, limit: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            read: 0,
        }
    }
}

impl<I: AsyncRead> AsyncRead for FirstReadDeadline<I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.project();
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                *this.read += buf.filled().len() - before;
                // Also the end of the stream (nothing read) ends the watch.
                if *this.read >= 24 || buf.filled().len() == before {
                    *this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<I: AsyncWrite> AsyncWrite for FirstReadDeadline<I> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
