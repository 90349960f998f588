//! Serving a router with limits on slow, silent and greedy clients:
//! [`serve`] and [`serve_with`].
//!
//! `axum::serve` gives a client unlimited time to send its request head and
//! keeps an idle connection forever, and takes any body a handler reads.
//! This accept loop (hyper-util's automatic HTTP/1.1 or HTTP/2 server,
//! graceful shutdown) enforces [`ServerLimits`] instead, with the meaning
//! and defaults they have under actix-web:
//!
//! - a connection's first request head must be complete within the
//!   header-read timeout of the connection opening, a later one within the
//!   header-read timeout of its first byte; otherwise the connection is
//!   closed (HTTP/2: the first request only, then the idle timeout);
//! - a connection with no request in progress is closed when no new one
//!   begins within the idle timeout (HTTP/2: with a GOAWAY first, so a
//!   request sent meanwhile is retried elsewhere, not lost to a reset; the
//!   connection is cut if the client has not closed it one more idle
//!   timeout later);
//! - a connection whose client takes none of an answer for the write
//!   timeout is closed, and an HTTP/2 stream whose flow-control window
//!   stays shut that long is reset (its answer is handed to hyper 16 KiB
//!   at a time, so a window opened bit by bit is progress; the last piece
//!   of an answer is the idle timeout's to bound);
//! - an HTTP/1.1 upgrade (a WebSocket, through axum's `WebSocketUpgrade`
//!   or `hyper::upgrade::on`; a `CONNECT` tunnel) hands the connection to
//!   the application once the `101` (or the `CONNECT`'s 2xx) is written:
//!   its reads then wait as long as the application does, so a WebSocket's
//!   idleness is for its pings to judge (one that never pings keeps a peer
//!   that vanished, and its place, until the kernel gives up on the
//!   connection); its writes keep the write timeout; it holds its place
//!   under `max_connections` until it closes; and, as under `axum::serve`,
//!   shutdown does not wait for it or end it: it is the application's.
//!   An HTTP/2 `CONNECT` tunnel is not supported: its connection counts as
//!   idle while the tunnel runs, so the idle timeout closes it;
//! - request bodies pass [`BodyLimitLayer`], answered 413 beyond the limit;
//! - a connection older than the maximum connection age, when one is set,
//!   is closed gracefully once it has served a request (HTTP/2: with a
//!   GOAWAY);
//! - a response with `Connection: close` closes its connection once it is
//!   sent, as hyper does on HTTP/1.1; on HTTP/2, where the header has no
//!   place, a response with the extension
//!   [`palisade_core::adapter::CloseConnection`] gets the
//!   connection a GOAWAY (the guard's refusal of a client certificate no
//!   longer trusted carries both: `Reply::closing_connection`). A
//!   `Connection: close` alone, copied from an HTTP/1.1 upstream by a
//!   proxying handler, does not end an HTTP/2 connection;
//! - [`Handshake`] (TLS, in `palisade-mtls`) is bounded by the handshake
//!   timeout.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use palisade_core::limits::ServerLimits;
//! use tower_layer::Layer as _;
//! # async fn run(guard: palisade_core::Guard) -> std::io::Result<()> {
//! let router = Router::new().route("/", get(|| async { "hi" })).with_state(());
//! // The layer around the whole router: no outer router per request, as
//! // `PalisadeLayer::wrap` (for `axum::serve`) needs.
//! let app = palisade_axum::PalisadeLayer::new(guard).layer(router);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let limits = ServerLimits::default().header_read_timeout(std::time::Duration::from_secs(5));
//! palisade_axum::serve_with(listener, palisade_axum::Plain, limits, app, std::future::pending()).await
//! # }
//! ```
//!
//! Every request carries an `Arc<ConnectionInfo>` with the connection's
//! addresses (and what the handshake adds), which Palisade's guard reads for
//! Istio's `source.ip`, `destination.ip` and `ports`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Extensions, Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use palisade_core::adapter::CloseConnection;
use palisade_core::authn::ConnectionInfo;
use palisade_core::limits::{LOG_TARGET, ServerLimits};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::ServiceExt as _;
use tower_layer::Layer as _;
use tower_service::Service;

use crate::BodyLimitLayer;

/// How long open connections get to finish after shutdown was asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an HTTP/2 peer is pinged, and how long it has to answer.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// Concurrent HTTP/2 streams per connection: hyper's default (each may
/// hold a body up to the body limit while it waits).
const H2_MAX_STREAMS: u32 = 200;
/// The largest HTTP/2 header list (HPACK-decoded, each header counted as
/// its name and value and 32 bytes) a request may bring. A request over it
/// is answered 431 by h2 before Palisade runs, unlogged and uncounted, so
/// it must hold what Palisade's own limits let through: a browser
/// sign-in's session in up to eight cookies of 3800 bytes (before it is
/// kept in the store; hyper's default, 16 KiB, refused it, so the user
/// could not even log out), and a Kerberos ticket of Windows' default
/// `MaxTokenSize` (48,000 bytes, 64,010 in its `Authorization: Negotiate`
/// header, which SPNEGO's own `maxHeaderSize`, 64 KiB, lets through: a
/// user of many groups), with a browser's other headers. HTTP/1.1's head
/// takes hyper's ~400 KiB.
const H2_MAX_HEADER_LIST: u32 = 128 * 1024;

/// What happens to an accepted connection before HTTP is spoken on it: a
/// TLS handshake (`palisade-mtls` implements it), or nothing ([`Plain`]).
/// [`serve_with`] bounds it by [`ServerLimits::handshake_timeout`].
pub trait Handshake: Clone + Send + Sync + 'static {
    /// The stream HTTP is spoken on.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Turns an accepted connection into the stream HTTP is spoken on,
    /// adding what it learns (SNI, peer certificate) to `info`, which holds
    /// the addresses.
    ///
    /// # Errors
    /// A short reason for the debug log when the connection is given up.
    fn handshake<'a>(
        &'a self,
        tcp: TcpStream,
        info: &'a mut ConnectionInfo,
    ) -> impl Future<Output = Result<Self::Io, &'static str>> + Send + 'a;
}

/// Plaintext HTTP: no handshake.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;

    fn handshake<'a>(
        &'a self,
        tcp: TcpStream,
        _: &'a mut ConnectionInfo,
    ) -> impl Future<Output = Result<TcpStream, &'static str>> + Send + 'a {
        std::future::ready(Ok(tcp))
    }
}

/// Serves `service` in plaintext HTTP/1.1 and h2c on `listener` with the
/// default [`ServerLimits`] until `shutdown` completes, then lets open
/// connections finish (up to 10 s; an upgraded one is the application's):
/// `axum::serve` with limits. See the
/// [module documentation](self).
///
/// # Errors
/// None so far: a failed `accept` is logged and retried.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(listener, Plain, ServerLimits::default(), service, shutdown).await
}

/// Serves `service` on `listener` after `handshake`, with `limits`, until
/// `shutdown` completes, then lets open connections finish (up to 10 s; an
/// upgraded one is the application's).
/// See the [module documentation](self).
///
/// # Errors
/// None so far: a failed `accept` is logged and retried, a connection
/// that fails or breaks a limit is closed and logged at debug level.
pub async fn serve_with<H, S, B>(
    listener: TcpListener,
    handshake: H,
    limits: ServerLimits,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    H: Handshake,
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = BodyLimitLayer::new(limits).layer(service);
    // Told to every connection at shutdown: each finishes what is in
    // progress (HTTP/2: with a GOAWAY) and closes.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    // Every connection's task, so that those still open after the drain
    // timeout can be ended.
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    // At the limit, nothing is accepted until a connection closes: the
    // rest wait in the listener's backlog (as actix-web's `max_connections`).
    let open = Arc::new(tokio::sync::Semaphore::new(
        limits.connections().min(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let mut full_since: Option<tokio::time::Instant> = None;
    loop {
        // Finished connections leave the set.
        while connections.try_join_next().is_some() {}
        let permit = match Arc::clone(&open).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if full_since.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    full_since = Some(tokio::time::Instant::now());
                    tracing::warn!(target: LOG_TARGET, max = limits.connections(), "the connection limit is reached: new connections wait until one closes");
                }
                tokio::select! {
                    permit = Arc::clone(&open).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin,
                    // and say it once a minute.
                    static FAILING: palisade_core::logging::Sparse = palisade_core::logging::Sparse::per_minute();
                    if FAILING.due() {
                        tracing::warn!(target: LOG_TARGET, error = %e, "accept failed (said once a minute while it fails)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let mut stop = stop.clone();
        let (handshake, service) = (handshake.clone(), service.clone());
        connections.spawn(async move {
            let served = async {
                let _ = tcp.set_nodelay(true);
                let mut info = ConnectionInfo::default();
                info.remote_addr = Some(remote);
                info.local_addr = tcp.local_addr().ok();
                let io = tokio::time::timeout(limits.handshake(), handshake.handshake(tcp, &mut info))
                    .await
                    .map_err(|_| "handshake timed out")??;
                let stopped = Box::pin(async move {
                    let _ = stop.wait_for(|stopping| *stopping).await;
                });
                // The connection holds its place under the limit until its
                // transport closes: after an upgrade (a WebSocket), that is
                // when the application lets the upgraded stream go.
                connection(io, Arc::new(info), &limits, service, permit, stopped)
                    .await
                    .map_err(|e| reason(&*e))
            };
            if let Err(reason) = served.await {
                tracing::debug!(target: LOG_TARGET, %remote, reason, "connection closed");
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        connections.abort_all();
        tracing::warn!(target: LOG_TARGET, "connections still open after the drain timeout were closed");
    }
    Ok(())
}

/// Why hyper ended a connection, for the debug log: a deadline the client
/// missed, found by its text in the error or its sources (h2 keeps an I/O
/// error's text only), or the client.
fn reason(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut source = Some(e);
    while let Some(e) = source {
        let text = e.to_string();
        if let Some(why) = [HEAD_LATE, WRITE_LATE].into_iter().find(|why| text.contains(why)) {
            return why;
        }
        source = e.source();
    }
    "HTTP connection error"
}

/// The error of a missed deadline: `TimedOut`, with the text [`reason`]
/// finds again.
fn late(why: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, why)
}

/// Why a connection whose client read nothing for the write timeout closed.
const WRITE_LATE: &str = "the client took none of the answer for the write timeout";
/// Why a connection without a complete request head in time closed.
const HEAD_LATE: &str = "no complete request head in time";

/// One connection's HTTP/1.1 or HTTP/2 (by its first bytes: the h2 preface,
/// whether ALPN chose h2 or a plaintext caller has prior knowledge) with
/// the limits' deadlines on its reads, and HTTP/1.1 upgrades (WebSockets):
/// an upgraded connection keeps the write timeout, and its reads wait as
/// long as the application does. `open` is its place under the connection
/// limit, held as long as its transport; `stopped` completes at shutdown.
fn connection<I, S, B>(
    io: I,
    info: Arc<ConnectionInfo>,
    limits: &ServerLimits,
    service: S,
    open: tokio::sync::OwnedSemaphorePermit,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Serving<impl Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send + use<I, S, B>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::new());
    let activity_of_streams = Arc::clone(&activity);
    let io = Deadlines::new(io, activity.clone(), limits, open);
    let watched = Arc::clone(&activity);
    let extensions = request_extensions(info);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let h2 = req.version() == Version::HTTP_2;
        let connect = req.method() == http::Method::CONNECT;
        let in_flight = InFlight::enter(&activity, req.version());
        let mut req = req.map(Body::new);
        // The handshake's facts were read once.
        with_connection(&mut req, &extensions);
        let response = service.clone().oneshot(req);
        async move {
            let res = response.await?;
            if h2 && res.extensions().get::<CloseConnection>().is_some() {
                // HTTP/2 has no `Connection` header (hyper drops it): the
                // answer's wish to close the connection is a GOAWAY.
                in_flight.0.closing.store(true, Ordering::Release);
            }
            if !h2
                && (res.status() == http::StatusCode::SWITCHING_PROTOCOLS
                    || (connect && res.status().is_success()))
            {
                // Hyper hands the transport to the application once this
                // answer is written: an HTTP/1.1 upgrade, or a tunnel. (An
                // HTTP/2 CONNECT's stream is not watched: see the module
                // documentation.)
                in_flight.0.upgraded.store(true, Ordering::Release);
            }
            // Polled in its stream's task, which `Streams` made.
            let flow = if h2 {
                STREAM.try_with(Arc::clone).ok()
            } else {
                None
            };
            Ok::<_, Infallible>(res.map(|body| Tracked {
                body,
                in_flight,
                flow,
                rest: None,
            }))
        }
    });
    let mut http = hyper_util::server::conn::auto::Builder::new(Streams {
        write: limits.write(),
        activity: activity_of_streams,
    });
    // The deadlines are `Deadlines`': hyper's own header-read timer also
    // runs while the connection is idle, which would make it the idle
    // timeout too.
    http.http1().timer(TokioTimer::new()).header_read_timeout(None);
    http.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(H2_KEEP_ALIVE)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        // WebSockets over HTTP/2 (RFC 8441), as `axum::serve` allows them.
        .enable_connect_protocol();
    Serving {
        conn: http
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .into_owned(),
        // hyper-util's `GracefulConnection` is sealed, and its connection
        // with upgrades does not implement it.
        close: |conn| conn.graceful_shutdown(),
        activity: watched,
        stopped,
        aged: limits
            .connection_lifetime()
            .map(|age| Box::pin(tokio::time::sleep(age))),
        closing: false,
    }
}

pin_project_lite::pin_project! {
    /// A connection served until it ends: at shutdown, when its deadlines
    /// ask for it (`Activity::closing`: an idle HTTP/2 connection, an
    /// answer that closes it) or when it reaches its maximum age (`aged`),
    /// it is closed gracefully, with a GOAWAY on HTTP/2, so a
    /// client that was about to send a request knows to send it on another
    /// connection (grpc-go and tonic then retry it), rather than losing it
    /// to a reset.
    struct Serving<C> {
        #[pin]
        conn: C,
        close: fn(Pin<&mut C>),
        activity: Arc<Activity>,
        stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
        // When the connection is old enough to close
        // (`ServerLimits::max_connection_age`).
        aged: Option<Pin<Box<tokio::time::Sleep>>>,
        closing: bool,
    }
}

impl<C: Future> Future for Serving<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        // The age's timer, polled once a wake-up (a finished `Sleep` stays
        // ready).
        let aged = !*this.closing
            && this
                .aged
                .as_mut()
                .is_some_and(|aged| aged.as_mut().poll(cx).is_ready());
        loop {
            if !*this.closing
                && (this.activity.closing.load(Ordering::Acquire)
                    || this.stopped.as_mut().poll(cx).is_ready()
                    || (aged && this.activity.has_begun()))
            {
                *this.closing = true;
                (this.close)(this.conn.as_mut());
            }
            let polled = this.conn.as_mut().poll(cx);
            // A first request served within that poll on a connection
            // already past its age: closed now (once more round), not at
            // the next wake-up (the next request head's deadline).
            if polled.is_pending() && !*this.closing && aged && this.activity.has_begun() {
                continue;
            }
            return polled;
        }
    }
}

/// The extensions each request of a connection starts with: the
/// connection's facts (one `Arc`) in a table with room for seven, so that
/// the ones that come after them (the guard's `RequestAuth`, axum's
/// `MatchedPath`, path parameters and, with its `original-uri` feature,
/// `OriginalUri`, an application's own) do not grow it. Inserted one by one into an empty
/// table, the fourth would: a second allocation, a rehash and a free in
/// every request. A clone keeps the table's size, and a removal does not
/// shrink it; if either stopped being so, only this saving would go.
fn request_extensions(info: Arc<ConnectionInfo>) -> Extensions {
    #[derive(Clone, Copy)]
    struct Room<const N: u8>;
    let mut ext = Extensions::new();
    ext.insert(info);
    ext.insert(Room::<1>);
    ext.insert(Room::<2>);
    ext.insert(Room::<3>);
    ext.remove::<Room<1>>();
    ext.remove::<Room<2>>();
    ext.remove::<Room<3>>();
    ext
}

/// Gives `req` a copy of its connection's extensions, keeping whatever
/// hyper put in (an upgrade's handle).
fn with_connection(req: &mut Request<Body>, connection: &Extensions) {
    let mut ext = connection.clone();
    ext.extend(std::mem::take(req.extensions_mut()));
    *req.extensions_mut() = ext;
}

/// What the requests of one connection tell its reads: how many are in
/// progress, when the last one ended, and whether it speaks HTTP/2.
struct Activity {
    in_flight: AtomicUsize,
    h2: AtomicBool,
    /// When a request last ended, in nanoseconds after `opened`.
    ended: AtomicU64,
    /// When a write that waited for the client last went on, likewise (0:
    /// never).
    written: AtomicU64,
    /// The deadlines ask for the connection to be closed gracefully.
    closing: AtomicBool,
    /// An answer switched protocols: the transport is the application's.
    upgraded: AtomicBool,
    opened: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
            ended: AtomicU64::new(0),
            written: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            opened: Instant::now(),
        }
    }

    /// Notes that a write that waited went on at `now`.
    fn wrote(&self, now: Instant) {
        let at = u64::try_from(now.saturating_duration_since(self.opened).as_nanos()).unwrap_or(u64::MAX);
        self.written.store(at.max(1), Ordering::Release);
    }

    /// When a write that waited last went on.
    fn written(&self) -> Option<Instant> {
        match self.written.load(Ordering::Acquire) {
            0 => None,
            at => Some(self.opened + Duration::from_nanos(at)),
        }
    }

    /// Whether a request has begun on the connection: one past its maximum
    /// age is closed once it has served one (as actix-web's watch closes
    /// it), so that even an age shorter than a client takes to send its
    /// first request answers that request.
    fn has_begun(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0 || self.ended.load(Ordering::Acquire) > 0
    }

    /// When a request last ended.
    fn ended(&self) -> Instant {
        self.opened + Duration::from_nanos(self.ended.load(Ordering::Acquire))
    }
}

/// A request in progress, until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>, version: Version) -> Self {
        if version == Version::HTTP_2 {
            activity.h2.store(true, Ordering::Relaxed);
        }
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The time first, so that a read that sees no request in progress
        // sees when the last one ended. No wake-up: the connection's timer
        // is set to look again by the time the idle deadline could come
        // (waking the connection here would poll it once more for every
        // request, since this runs while it writes the response).
        let ended = u64::try_from(self.0.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.ended.fetch_max(ended, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in progress and, on an
    /// HTTP/2 stream, tells the stream's task when it waits for the
    /// client's flow-control window.
    struct Tracked<B> {
        #[pin]
        body: B,
        in_flight: InFlight,
        flow: Option<Arc<Flow>>,
        // HTTP/2: what is left of a data frame handed over in pieces.
        rest: Option<Bytes>,
    }
}

/// The most of a data frame an HTTP/2 answer hands over at once (h2's
/// default frame size): hyper asks for the next piece once the client's
/// window has taken the last, so a client that keeps reading makes
/// progress the write timeout sees, however large the application's
/// chunks, and at most this much is left unwatched when the answer ends.
const PIECE: usize = 16 * 1024;

impl<B: http_body::Body<Data = Bytes>> http_body::Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let Some(flow) = this.flow else {
            return this.body.poll_frame(cx);
        };
        if let Some(rest) = this.rest {
            let piece = if rest.len() > PIECE {
                rest.split_to(PIECE)
            } else {
                std::mem::take(rest)
            };
            if rest.is_empty() {
                *this.rest = None;
            }
            flow.handed(true);
            return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
        }
        let polled = this.body.poll_frame(cx);
        let Poll::Ready(Some(Ok(frame))) = polled else {
            flow.handed(false);
            return polled;
        };
        match frame.into_data() {
            Ok(mut data) => {
                if data.len() > PIECE {
                    *this.rest = Some(data.split_off(PIECE));
                }
                flow.handed(true);
                Poll::Ready(Some(Ok(http_body::Frame::data(data))))
            }
            Err(trailers) => {
                flow.handed(false);
                Poll::Ready(Some(Ok(trailers)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.body.size_hint();
        let Some(rest) = &self.rest else {
            return inner;
        };
        let held = rest.len() as u64;
        let mut hint = http_body::SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint.set_lower(inner.lower().saturating_add(held));
        hint
    }
}

tokio::task_local! {
    /// The flow of the HTTP/2 stream whose task is being polled.
    static STREAM: Arc<Flow>;
}

/// What an HTTP/2 stream's answer body tells the stream's task: hyper
/// polls the body for its next frame only once what it handed over last
/// has room in the stream's send capacity (the client's flow-control
/// windows, h2's send buffer), so a body whose last poll handed over a
/// frame, and that has not been polled since, waits for the client, or
/// for the connection's writes, which the connection times.
#[derive(Debug, Default)]
struct Flow {
    /// Data frames handed over.
    frames: AtomicU64,
    /// Whether the last poll handed one over.
    waiting: AtomicBool,
}

impl Flow {
    fn handed(&self, data: bool) {
        // Polled in the stream's task, as it reads them: no ordering.
        self.waiting.store(data, Ordering::Relaxed);
        if data {
            self.frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The executor of a connection's HTTP/2 streams (hyper spawns a task for
/// each): a stream whose answer waits for the client's flow-control window
/// for the write timeout, while the connection's writes do not wait
/// either, is dropped, which resets it (`CANCEL`), as nginx's
/// `send_timeout` ends it. The connection's other streams go on, and its
/// deadlines count again once no request is in progress. (h2 resets a
/// stream nobody holds: a handler that handed the request body to a task
/// of its own keeps the stream until that task lets it go.)
#[derive(Clone)]
struct Streams {
    write: Duration,
    activity: Arc<Activity>,
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(Watched {
            stream,
            flow: Arc::default(),
            activity: Arc::clone(&self.activity),
            timeout: self.write,
            seen: 0,
            since: None,
            timer: None,
        });
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 stream's task, with its flow's deadline.
    struct Watched<F> {
        #[pin]
        stream: F,
        flow: Arc<Flow>,
        activity: Arc<Activity>,
        timeout: Duration,
        // The frames handed over when the wait began, and since when it
        // waits.
        seen: u64,
        since: Option<Instant>,
        // Made the first time the stream waits.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let stream = this.stream;
        if STREAM
            .sync_scope(Arc::clone(this.flow), || stream.poll(cx))
            .is_ready()
        {
            return Poll::Ready(());
        }
        if !this.flow.waiting.load(Ordering::Relaxed) {
            *this.since = None;
            return Poll::Pending;
        }
        let frames = this.flow.frames.load(Ordering::Relaxed);
        let since = match *this.since {
            Some(since) if frames == *this.seen => since,
            // A new wait, or one after progress.
            _ => {
                *this.seen = frames;
                *this.since.insert(Instant::now())
            }
        };
        // A stream held up by a connection whose writes wait is the
        // connection's to time: while they go on, so may it.
        let since = this.activity.written().map_or(since, |w| w.max(since));
        let due = after(since, *this.timeout);
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if past(timer, due, cx) {
            tracing::debug!(target: LOG_TARGET, "an HTTP/2 stream's flow-control window stayed shut for the write timeout: stream reset");
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Where a connection is, as its reads see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head to be complete: the header-read deadline.
    Head,
    /// A request is in progress: no deadline.
    Busy,
    /// No request in progress, none begun: the idle deadline.
    Idle,
}

pin_project_lite::pin_project! {
    /// A connection whose reads keep the limits' deadlines: a read that
    /// waits past the header-read deadline fails (hyper closes the
    /// connection), one that waits past the idle deadline ends the stream
    /// (hyper closes an idle connection quietly).
    ///
    /// Each phase's deadline counts from `since`. The timer is moved only
    /// when a read has to wait: it may be set earlier than the deadline,
    /// never later, and when it fires early it is set again. While a request
    /// is in progress it is set to look again by the time the idle deadline
    /// could come (the request may end at any moment). A kept connection's
    /// requests so change no timer and wake nothing.
    struct Deadlines<I> {
        #[pin]
        io: I,
        activity: Arc<Activity>,
        phase: Phase,
        // Since when the phase is timed: the connection's opening, a
        // request head's first byte or the last request's end (idle time
        // counts from its answer's last write, when that came later:
        // `Activity::written`).
        since: Instant,
        timer: Pin<Box<tokio::time::Sleep>>,
        header_read: Duration,
        idle: Duration,
        writes: WriteClock,
        // The connection's place under the limit.
        open: tokio::sync::OwnedSemaphorePermit,
        // Its first bytes were looked at for the HTTP/2 preface.
        sniffed: bool,
    }
}

impl<I> Deadlines<I> {
    fn new(
        io: I,
        activity: Arc<Activity>,
        limits: &ServerLimits,
        open: tokio::sync::OwnedSemaphorePermit,
    ) -> Self {
        let since = activity.opened;
        Self {
            io,
            activity,
            phase: Phase::Head,
            since,
            timer: Box::pin(tokio::time::sleep_until(after(since, limits.header_read()))),
            header_read: limits.header_read(),
            idle: limits.idle(),
            writes: WriteClock {
                waiting: None,
                timeout: limits.write(),
                timer: None,
            },
            open,
            sniffed: false,
        }
    }
}

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// The writes' side of a connection's deadlines: a write that waits for the
/// client to read for the write timeout fails (hyper closes the
/// connection, whichever way it is busy), and one that goes on after
/// waiting is progress. A response is done for hyper when its body is,
/// which may be long before a slow reader has it all: while its bytes
/// still leave, the connection is not idle.
struct WriteClock {
    /// Since when a write waits for the client.
    waiting: Option<Instant>,
    timeout: Duration,
    /// Made the first time a write waits: most connections never do.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteClock {
    /// Notes a write's outcome (a write that never waits costs no clock
    /// read), failing one that has waited for the write timeout; progress
    /// is noted in `activity`, from which an idle connection's time counts
    /// again.
    fn note<T>(
        &mut self,
        result: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
        activity: &Activity,
    ) -> Poll<std::io::Result<T>> {
        match &result {
            Poll::Pending => {
                let due = after(*self.waiting.get_or_insert_with(Instant::now), self.timeout);
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                if past(timer, due, cx) {
                    return Poll::Ready(Err(late(WRITE_LATE)));
                }
            }
            Poll::Ready(_) => {
                if self.waiting.take().is_some() {
                    activity.wrote(Instant::now());
                }
            }
        }
        result
    }
}

/// `since` plus `timeout`, or about thirty years on for a timeout too long
/// to add.
fn after(since: Instant, timeout: Duration) -> Instant {
    since
        .checked_add(timeout)
        .unwrap_or_else(|| since + Duration::from_secs(30 * 365 * 86_400))
}

/// Whether `due` has come, with `timer` set to wake the task by then: the
/// timer is moved when it would fire after `due`, or fired before it.
fn past(timer: &mut Pin<Box<tokio::time::Sleep>>, due: Instant, cx: &mut Context<'_>) -> bool {
    if timer.deadline() > due {
        timer.as_mut().reset(due);
    }
    if timer.as_mut().poll(cx).is_pending() {
        return false;
    }
    if timer.deadline() >= due {
        return true;
    }
    timer.as_mut().reset(due);
    timer.as_mut().poll(cx).is_ready()
}

impl<I: AsyncRead> AsyncRead for Deadlines<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if this.activity.upgraded.load(Ordering::Acquire) {
            // An upgraded stream (a WebSocket): its reads are the
            // application's to time (its pings); no HTTP deadline applies.
            return this.io.poll_read(cx, buf);
        }
        if this.activity.in_flight.load(Ordering::Acquire) > 0 {
            *this.phase = Phase::Busy;
        } else if *this.phase == Phase::Busy
            // A request that ended without a read while it was in progress
            // (its body was already read with its head).
            || (*this.phase == Phase::Head && this.activity.ended() > *this.since)
        {
            *this.phase = Phase::Idle;
            *this.since = this.activity.ended();
        }
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // An HTTP/2 connection is known by its preface before its
                // first request (a channel opened ahead of its calls).
                if !*this.sniffed && buf.filled().len() > before {
                    *this.sniffed = true;
                    if buf.filled()[before..].starts_with(H2_PREFACE) {
                        this.activity.h2.store(true, Ordering::Relaxed);
                    }
                }
                // A new request's first bytes (HTTP/1: HTTP/2 sends pings
                // and window updates while idle).
                if *this.phase == Phase::Idle
                    && buf.filled().len() > before
                    && !this.activity.h2.load(Ordering::Relaxed)
                {
                    *this.phase = Phase::Head;
                    *this.since = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match *this.phase {
                Phase::Busy => {
                    // The requests in progress end at the earliest now, so
                    // their idle deadline is no earlier than this look.
                    if past(this.timer, after(*this.since, *this.idle), cx) {
                        if this.activity.in_flight.load(Ordering::Acquire) == 0 {
                            // Ended meanwhile: the idle deadline, at once.
                            cx.waker().wake_by_ref();
                        } else {
                            *this.since = Instant::now();
                            let _ = past(this.timer, after(*this.since, *this.idle), cx);
                        }
                    }
                    Poll::Pending
                }
                Phase::Head if past(this.timer, after(*this.since, *this.header_read), cx) => {
                    // HTTP/2 with no request yet: a GOAWAY first, as to an
                    // idle connection, so that a call sent at that moment
                    // is retried elsewhere rather than lost to a reset;
                    // the end only if the client does not close in another
                    // idle timeout.
                    if this.activity.h2.load(Ordering::Relaxed)
                        && !this.activity.closing.swap(true, Ordering::AcqRel)
                    {
                        tracing::trace!(target: LOG_TARGET, "HTTP/2 connection without a request: GOAWAY");
                        *this.since = Instant::now();
                        let _ = past(this.timer, after(*this.since, *this.idle), cx);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(late(HEAD_LATE)))
                }
                // Idle since the last request ended or, later, the last
                // write of its answer that went on after waiting.
                Phase::Idle
                    if past(
                        this.timer,
                        after(
                            this.activity
                                .written()
                                .map_or(*this.since, |w| w.max(*this.since)),
                            *this.idle,
                        ),
                        cx,
                    ) =>
                {
                    // HTTP/2: a GOAWAY first (`Serving`), and the end of the
                    // stream only if the client does not close in another
                    // idle timeout.
                    if this.activity.h2.load(Ordering::Relaxed)
                        && !this.activity.closing.swap(true, Ordering::AcqRel)
                    {
                        tracing::trace!(target: LOG_TARGET, "idle HTTP/2 connection: GOAWAY");
                        *this.since = Instant::now();
                        let _ = past(this.timer, after(*this.since, *this.idle), cx);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    // The end of the stream: hyper lets an idle connection go.
                    tracing::trace!(target: LOG_TARGET, "idle connection closed");
                    Poll::Ready(Ok(()))
                }
                Phase::Head | Phase::Idle => Poll::Pending,
            },
        }
    }
}

impl<I: AsyncWrite> AsyncWrite for Deadlines<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write(cx, buf);
        this.writes.note(result, cx, this.activity)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let result = this.io.poll_flush(cx);
        this.writes.note(result, cx, this.activity)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // TLS writes its close_notify.
        let this = self.project();
        let result = this.io.poll_shutdown(cx);
        this.writes.note(result, cx, this.activity)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write_vectored(cx, bufs);
        this.writes.note(result, cx, this.activity)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[derive(Clone)]
    struct Ext<const N: u8>;

    #[tokio::test]
    async fn at_the_connection_limit_new_connections_wait_for_one_to_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app: Router = Router::new().route("/", get(|| async { "hi" }));
        let limits = ServerLimits::default().max_connections(2);
        tokio::spawn(serve_with(listener, Plain, limits, app, std::future::pending()));
        let held = vec![
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        palisade_testkit::past_the_connection_limit_a_connection_waits(addr, held, "/").await;
    }

    #[test]
    fn a_request_without_extensions_gets_the_connections_facts() {
        let info = Arc::new(ConnectionInfo::default());
        let template = request_extensions(info.clone());
        let mut req = Request::new(Body::empty());
        with_connection(&mut req, &template);
        assert!(Arc::ptr_eq(
            req.extensions().get::<Arc<ConnectionInfo>>().unwrap(),
            &info
        ));
        assert_eq!(req.extensions().len(), 1);
        // Each request has a copy of its own.
        let mut other = Request::new(Body::empty());
        with_connection(&mut other, &template);
        other.extensions_mut().insert(Ext::<1>);
        assert_eq!(req.extensions().len(), 1);
        assert_eq!(template.len(), 1);
    }

    #[test]
    fn a_request_carries_its_connections_facts_and_hypers_extensions() {
        let info = Arc::new(ConnectionInfo::default());
        let template = request_extensions(info.clone());
        let mut req = Request::new(Body::empty());
        req.extensions_mut().insert(Ext::<9>);
        with_connection(&mut req, &template);
        assert!(Arc::ptr_eq(
            req.extensions().get::<Arc<ConnectionInfo>>().unwrap(),
            &info
        ));
        assert!(req.extensions().get::<Ext<9>>().is_some());
        // The markers that made room are gone.
        assert_eq!(req.extensions().len(), 2);
    }

    /// A router served with 1 s for a head, 2 s of idleness and 100-byte
    /// bodies; its address.
    async fn start() -> SocketAddr {
        let app = Router::new()
            .route("/", get(|| async { "hi" }))
            .route("/echo", post(|body: Bytes| async move { body.len().to_string() }))
            .route("/ignore", post(|| async { "not read" }));
        let limits = ServerLimits::default()
            .header_read_timeout(Duration::from_secs(1))
            .idle_timeout(Duration::from_secs(2))
            .body_limit(100);
        serve_app(app, limits).await
    }

    /// `app` served with `limits` on a loopback port; its address.
    async fn serve_app(app: Router, limits: ServerLimits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_with(listener, Plain, limits, app, std::future::pending()));
        addr
    }

    /// Half a second for a head and of idleness.
    fn half_second_limits() -> ServerLimits {
        ServerLimits::default()
            .header_read_timeout(Duration::from_millis(500))
            .idle_timeout(Duration::from_millis(500))
    }

    /// Reads until the server closes; what it sent and when it closed.
    async fn until_closed(tcp: &mut TcpStream) -> (String, Instant) {
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut seen))
            .await
            .expect("the connection was not closed");
        (String::from_utf8_lossy(&seen).into_owned(), Instant::now())
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    #[tokio::test]
    async fn a_silent_client_is_let_go_after_the_header_read_timeout() {
        let addr = start().await;
        let start = Instant::now();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let (seen, closed) = until_closed(&mut tcp).await;
        assert_eq!(seen, "");
        assert!(
            closed - start >= Duration::from_millis(900),
            "{:?}",
            closed - start
        );
    }

    #[tokio::test]
    async fn a_kept_connection_idles_for_the_idle_timeout_then_times_its_next_head() {
        // An idle timeout well above the pause below, so a loaded machine's
        // late wake-up does not reach it.
        let app = Router::new().route("/", get(|| async { "hi" }));
        let limits = ServerLimits::default()
            .header_read_timeout(Duration::from_secs(1))
            .idle_timeout(Duration::from_secs(5));
        let addr = serve_app(app, limits).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(GET).await.unwrap();
        let mut first = [0u8; 15];
        tcp.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200 OK");
        // Idle longer than the header-read timeout: still open.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tcp.write_all(b"GET / HT").await.unwrap();
        let started = Instant::now();
        // The rest of the head never comes: closed after the header-read
        // timeout, counted from the head's first byte.
        let (seen, closed) = until_closed(&mut tcp).await;
        assert!(!seen.contains("HTTP/1.1 200"), "{seen}");
        assert!(
            closed - started >= Duration::from_millis(900),
            "{:?}",
            closed - started
        );
    }

    /// Switches to an echo protocol (as a WebSocket handshake switches):
    /// the upgraded stream sends back what it reads until it ends.
    async fn switch_to_echo(mut req: Request<Body>) -> Response<Body> {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = io.read(&mut buf).await {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        if req.method() == http::Method::CONNECT {
            return Response::new(Body::empty());
        }
        Response::builder()
            .status(http::StatusCode::SWITCHING_PROTOCOLS)
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "echo")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn an_upgraded_connection_is_the_applications_and_keeps_its_place() {
        upgraded_and_kept(
            b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
            b"HTTP/1.1 101",
        )
        .await;
    }

    #[tokio::test]
    async fn a_connect_tunnel_is_the_applications_and_keeps_its_place() {
        upgraded_and_kept(
            b"CONNECT tunnel.example:443 HTTP/1.1\r\nhost: tunnel.example:443\r\n\r\n",
            b"HTTP/1.1 200",
        )
        .await;
    }

    /// Sends `request` to a server that switches it to echo, expects
    /// `answer`, then checks that the echo outlasts the HTTP deadlines and
    /// holds the one place under the connection limit until it closes.
    async fn upgraded_and_kept(request: &[u8], answer: &[u8]) {
        let app = Router::new()
            .route("/", get(|| async { "hi" }))
            .route("/echo", get(switch_to_echo))
            .fallback(switch_to_echo);
        let addr = serve_app(app, half_second_limits().max_connections(1)).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(answer), "{}", String::from_utf8_lossy(&head));
        // Quiet for longer than the idle and header-read timeouts: still
        // the application's.
        for word in [&b"ping"[..], b"pong"] {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            tcp.write_all(word).await.unwrap();
            let mut back = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back))
                .await
                .expect("the upgraded stream was cut")
                .unwrap();
            assert_eq!(&back, word);
        }
        // It holds the one place under the limit until it closes.
        let mut next = TcpStream::connect(addr).await.unwrap();
        next.write_all(GET).await.unwrap();
        let mut answer = [0u8; 15];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), next.read_exact(&mut answer))
                .await
                .is_err(),
            "answered while the upgraded connection holds the place"
        );
        drop(tcp);
        tokio::time::timeout(Duration::from_secs(5), next.read_exact(&mut answer))
            .await
            .expect("not answered once the upgraded connection closed")
            .unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let addr = start().await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(GET).await.unwrap();
        let mut first = [0u8; 15];
        tcp.read_exact(&mut first).await.unwrap();
        let answered = Instant::now();
        let (_, closed) = until_closed(&mut tcp).await;
        assert!(
            closed - answered >= Duration::from_millis(1900),
            "{:?}",
            closed - answered
        );
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_answered_413_declared_or_chunked() {
        let addr = start().await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 101\r\n\r\n")
            .await
            .unwrap();
        let (seen, _) = until_closed(&mut tcp).await;
        assert!(seen.starts_with("HTTP/1.1 413"), "{seen}");
        assert!(seen.contains("application/problem+json"), "{seen}");
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n64\r\n")
            .await
            .unwrap();
        tcp.write_all(&[b'a'; 100]).await.unwrap();
        tcp.write_all(b"\r\n1\r\na\r\n").await.unwrap();
        let (seen, _) = until_closed(&mut tcp).await;
        assert!(seen.starts_with("HTTP/1.1 413"), "{seen}");
        // At the limit: served.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 100\r\n\r\n")
            .await
            .unwrap();
        tcp.write_all(&[b'a'; 100]).await.unwrap();
        let (seen, _) = until_closed(&mut tcp).await;
        assert!(
            seen.starts_with("HTTP/1.1 200") && seen.ends_with("100"),
            "{seen}"
        );
    }

    #[tokio::test]
    async fn a_slow_response_is_not_cut_by_the_idle_timeout_which_counts_from_its_end() {
        let app = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "done"
            }),
        );
        let addr = serve_app(app, half_second_limits()).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // The whole answer, then the idle timeout counted from its end (not
        // from the request, which is older than it).
        let mut seen = Vec::new();
        while !seen.ends_with(b"done") {
            let mut chunk = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
                .await
                .expect("no answer")
                .unwrap();
            assert!(
                n > 0,
                "closed before the answer: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&chunk[..n]);
        }
        let answered = Instant::now();
        assert!(
            seen.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
        let (rest, closed) = until_closed(&mut tcp).await;
        assert_eq!(rest, "");
        // 500 ms after the server's end of the answer; the client saw the
        // answer somewhat later.
        assert!(
            closed - answered >= Duration::from_millis(250),
            "{:?}",
            closed - answered
        );
    }

    /// `size` bytes served with `limits` and read at most 1 MiB every
    /// 100 ms; what was read (head included) and how long it took.
    async fn read_slowly(limits: ServerLimits, size: usize) -> (usize, Duration) {
        let app = Router::new().route("/large", get(move || async move { vec![b'x'; size] }));
        let addr = serve_app(app, limits).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /large HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = 0usize;
        let mut chunk = vec![0u8; 1024 * 1024];
        let started = Instant::now();
        // The body and a head of more than 100 bytes.
        while got < size + 100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
                .await
                .expect("stalled")
                .unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        (got, started.elapsed())
    }

    #[tokio::test]
    async fn a_large_answer_to_a_slow_reader_is_not_cut_by_the_idle_timeout() {
        // A reader slower than the whole body's handing over (which ends
        // the request for hyper), never silent for the idle timeout.
        const SIZE: usize = 24 * 1024 * 1024;
        let (got, took) = read_slowly(half_second_limits(), SIZE).await;
        assert!(got >= SIZE + 100, "cut off after {got} bytes in {took:?}");
        assert!(took > Duration::from_millis(500), "not slow: {took:?}");
    }

    /// An answer that never ends, 64 KiB at a time.
    struct Endless;

    impl http_body::Body for Endless {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(&CHUNK)))))
        }
    }

    /// `/` and the endless `/endless`, with a write timeout of `write`.
    async fn serve_endless(write: Duration) -> SocketAddr {
        let app = Router::new()
            .route("/", get(|| async { "hi" }))
            .route("/endless", get(|| async { Body::new(Endless) }));
        serve_app(app, ServerLimits::default().write_timeout(write)).await
    }

    /// Reads and drops what comes until the end of the stream (or a reset),
    /// for at most `limit`; whether it came.
    async fn drains_to_the_end(tcp: &mut TcpStream, limit: Duration) -> bool {
        let mut chunk = vec![0u8; 1024 * 1024];
        tokio::time::timeout(limit, async {
            while let Ok(n) = tcp.read(&mut chunk).await
                && n > 0
            {}
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_is_let_go_after_the_write_timeout() {
        let addr = serve_endless(Duration::from_secs(1)).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // A pipelined second request: hyper reads no more while it writes
        // the first answer, so the deadline must not wait for a read.
        tcp.write_all(b"GET /endless HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        // What the buffers hold, then the end: the server gave up writing.
        assert!(
            drains_to_the_end(&mut tcp, Duration::from_secs(10)).await,
            "the answer went on: the connection was kept"
        );
    }

    #[tokio::test]
    async fn a_reader_that_keeps_reading_is_not_cut_by_the_write_timeout() {
        // At most 1 MiB every 100 ms: longer than the write timeout in all,
        // so writes wait again and again, each for far less.
        const SIZE: usize = 32 * 1024 * 1024;
        let limits = ServerLimits::default().write_timeout(Duration::from_secs(2));
        let (got, took) = read_slowly(limits, SIZE).await;
        assert!(got >= SIZE + 100, "cut off after {got} bytes in {took:?}");
        assert!(took > Duration::from_secs(2), "not slow: {took:?}");
    }

    #[tokio::test]
    async fn an_http2_stream_whose_window_stays_shut_is_reset_after_the_write_timeout() {
        let addr = serve_endless(Duration::from_secs(1)).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let get = |path: &str| Request::get(format!("http://x{path}")).body(()).unwrap();
        let (answer, _) = client.send_request(get("/endless"), true).unwrap();
        let answer = answer.await.unwrap();
        assert_eq!(answer.status(), 200);
        let mut body = answer.into_body();
        // Its capacity is never released: the window shuts after 64 KiB.
        let mut got = 0usize;
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match body.data().await {
                    Some(Ok(data)) => got += data.len(),
                    Some(Err(e)) => break Some(e),
                    None => break None,
                }
            }
        })
        .await
        .expect("the stream was kept waiting");
        assert_eq!(end.and_then(|e| e.reason()), Some(h2::Reason::CANCEL));
        assert!(got <= 65_535, "{got}");
        drop(body);
        // The connection's other streams are served, bodies included.
        let (answer, _) = client.send_request(get("/"), true).unwrap();
        let mut body = answer.await.unwrap().into_body();
        let hi = tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .expect("no body")
            .unwrap()
            .unwrap();
        assert_eq!(&hi[..], b"hi");
    }

    /// An HTTP/2 connection that sends no request within the head's time
    /// (a client that opens its channel ahead of its calls) is told GOAWAY,
    /// as an idle one is, rather than cut.
    #[tokio::test]
    async fn an_http2_connection_without_a_request_is_told_goaway() {
        let app = Router::new().route("/", get(|| async { "hi" }));
        let addr = serve_app(app, half_second_limits()).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        ends_with_goaway(client, connection, "the connection without a request").await;
    }

    #[tokio::test]
    async fn an_idle_http2_connection_is_told_goaway_before_it_is_closed() {
        let app = Router::new().route("/", get(|| async { "hi" }));
        let limits = ServerLimits::default().idle_timeout(Duration::from_millis(500));
        let addr = serve_app(app, limits).await;
        let (client, connection, answer) = h2_get(addr, "/").await;
        assert_eq!(answer.await.unwrap().status(), 200);
        // Idle past the timeout: a GOAWAY, so the client knows to open
        // another connection rather than lose a request to a reset.
        ends_with_goaway(client, connection, "the idle connection").await;
    }

    /// A WebSocket over HTTP/2 (RFC 8441) is accepted as under
    /// `axum::serve`: the server advertises the extended `CONNECT`, and the
    /// application gets the request with its `:protocol`.
    #[tokio::test]
    async fn an_http2_websocket_reaches_the_application() {
        let app = Router::new().route(
            "/ws",
            axum::routing::any(|req: axum::extract::Request| async move {
                let protocol = req.extensions().get::<hyper::ext::Protocol>();
                // A header: a 2xx answer to `CONNECT` has no body.
                let seen = format!(
                    "{} {:?}",
                    req.method(),
                    protocol.map(hyper::ext::Protocol::as_str)
                );
                [("x-seen", seen)]
            }),
        );
        let addr = serve_app(app, ServerLimits::default()).await;
        // A first answer: the server's settings have been read by then.
        let (client, _connection, answer) = h2_get(addr, "/ws").await;
        assert_eq!(answer.await.unwrap().status(), 200);
        assert!(client.is_extended_connect_protocol_enabled());
        let mut connect = Request::connect("http://x/ws").body(()).unwrap();
        connect
            .extensions_mut()
            .insert(h2::ext::Protocol::from("websocket"));
        let (answer, _) = client
            .ready()
            .await
            .unwrap()
            .send_request(connect, false)
            .unwrap();
        let answer = answer.await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["x-seen"], "CONNECT Some(\"websocket\")");
    }

    /// A browser sign-in's session in eight cookies of 3800 bytes reaches
    /// the application over HTTP/2 (hyper's 16 KiB header list would refuse
    /// it before Palisade runs, and the user could not even log out), and so
    /// does a Kerberos ticket of Windows' default `MaxTokenSize` (48,000
    /// bytes: `Negotiate` and 64,000 of base64) with a browser's other
    /// headers (a 64 KiB list refused it with 431 before Palisade ran).
    #[tokio::test]
    async fn an_http2_request_with_a_whole_sessions_cookies_or_a_large_ticket_is_served() {
        let app = Router::new().route("/", get(|| async { "hi" }));
        let addr = serve_app(app, ServerLimits::default()).await;
        let mut cookies = Request::get("http://x/");
        for i in 0..8 {
            cookies = cookies.header("cookie", format!("palisade_session_{i}={}", "a".repeat(3800)));
        }
        let ticket = Request::get("http://x/")
            .header("authorization", format!("Negotiate {}", "Y".repeat(64_000)))
            .header("user-agent", "a".repeat(200))
            .header("accept", "a".repeat(200))
            .header("cookie", format!("theme={}", "a".repeat(1000)));
        for request in [cookies, ticket] {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (client, connection) = h2::client::handshake(tcp).await.unwrap();
            let connection = tokio::spawn(connection);
            let mut client = client.ready().await.unwrap();
            let (answer, _) = client.send_request(request.body(()).unwrap(), true).unwrap();
            assert_eq!(answer.await.unwrap().status(), 200);
            drop(client);
            connection.abort();
        }
    }

    /// An HTTP/2 connection to `addr` with `GET path` sent on it: the
    /// client, the connection's task and the answer to come.
    async fn h2_get(
        addr: SocketAddr,
        path: &str,
    ) -> (
        h2::client::SendRequest<Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
        h2::client::ResponseFuture,
    ) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        let request = Request::get(format!("http://x{path}")).body(()).unwrap();
        let (answer, _) = client
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request, true)
            .unwrap();
        (client, connection, answer)
    }

    /// Waits for `connection` (`what`) to end, and checks that the server
    /// ended it with a GOAWAY.
    async fn ends_with_goaway(
        client: h2::client::SendRequest<Bytes>,
        connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
        what: &str,
    ) {
        let ended = tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .unwrap_or_else(|_| panic!("{what} was kept"))
            .unwrap();
        let refused = client
            .ready()
            .await
            .expect_err("the connection still takes requests");
        assert!(
            refused.is_go_away(),
            "{what}: closed without a GOAWAY: {refused:?} ({ended:?})"
        );
    }

    /// A router with `/` and `/slow` (answered after 600 ms), served with
    /// a maximum connection age of 300 ms; its address.
    async fn start_aging() -> SocketAddr {
        let app = Router::new().route("/", get(|| async { "hi" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "slow"
            }),
        );
        serve_app(
            app,
            ServerLimits::default().max_connection_age(Duration::from_millis(300)),
        )
        .await
    }

    #[tokio::test]
    async fn an_http1_connection_past_its_maximum_age_is_closed_after_its_answer() {
        let addr = start_aging().await;
        // Kept alive and idle: closed once old, well before the idle timeout.
        let opened = Instant::now();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(GET).await.unwrap();
        let mut first = [0u8; 15];
        tcp.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200 OK");
        let (_, closed) = until_closed(&mut tcp).await;
        let lived = closed - opened;
        assert!(
            lived >= Duration::from_millis(260) && lived < Duration::from_secs(5),
            "{lived:?}"
        );
        // A request in progress at that age is answered in full first.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (seen, _) = until_closed(&mut tcp).await;
        assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen}");
        assert!(seen.ends_with("slow"), "{seen}");
    }

    /// An age shorter than the client takes to send its first request:
    /// that request is answered, then the connection closed (as on
    /// actix-web), not the connection dropped unanswered.
    #[tokio::test]
    async fn a_connection_past_its_age_before_its_first_request_answers_it() {
        let app = Router::new().route("/", get(|| async { "hi" }));
        let limits = ServerLimits::default().max_connection_age(Duration::ZERO);
        let addr = serve_app(app, limits).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tcp.write_all(GET).await.unwrap();
        let sent = Instant::now();
        let (seen, closed) = until_closed(&mut tcp).await;
        assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen:?}");
        assert!(seen.ends_with("hi"), "{seen:?}");
        // At once, not at the next head's deadline (10 s).
        assert!(closed - sent < Duration::from_secs(5), "{:?}", closed - sent);
    }

    #[tokio::test]
    async fn an_http2_connection_past_its_maximum_age_is_told_goaway_and_finishes_its_streams() {
        let addr = start_aging().await;
        let (client, connection, answer) = h2_get(addr, "/slow").await;
        // The GOAWAY comes while the stream is in progress; the stream ends
        // with its whole answer.
        let answer = answer.await.unwrap();
        assert_eq!(answer.status(), 200);
        let mut body = answer.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(text, b"slow");
        ends_with_goaway(client, connection, "the old connection").await;
    }

    /// A body over the limit on an HTTP/2 connection is refused (413) on
    /// its stream only: the connection, which other requests may share (a
    /// gRPC channel, a proxy's pool), takes the next request. (Its
    /// `Connection: close` is for HTTP/1.1, where the rest of the body
    /// would otherwise be read.)
    #[tokio::test]
    async fn a_body_over_the_limit_ends_its_http2_stream_not_the_connection() {
        let app = Router::new().route(
            "/",
            get(|| async { "hi" }).post(|body: Bytes| async move { body.len().to_string() }),
        );
        let addr = serve_app(app, ServerLimits::default().body_limit(10)).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        let post = Request::post("http://x/")
            .header("content-length", "100")
            .body(())
            .unwrap();
        let (answer, mut body) = client
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(post, false)
            .unwrap();
        body.send_data(Bytes::from(vec![b'x'; 100]), true).unwrap();
        assert_eq!(answer.await.unwrap().status(), 413);
        let get = Request::get("http://x/").body(()).unwrap();
        let (answer, _) = client
            .clone()
            .ready()
            .await
            .expect("the connection takes the next request")
            .send_request(get, true)
            .unwrap();
        assert_eq!(answer.await.unwrap().status(), 200);
        assert!(!connection.is_finished(), "the connection is kept");
    }

    /// Two chunks of 256 KiB, then the end.
    struct TwoLargeChunks(u8);

    impl http_body::Body for TwoLargeChunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            if self.0 == 2 {
                return Poll::Ready(None);
            }
            self.0 += 1;
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![
                b'x';
                256 * 1024
            ])))))
        }
    }

    #[tokio::test]
    async fn an_http2_reader_that_keeps_opening_its_window_is_not_cut_for_large_chunks() {
        let app = Router::new().route("/large", get(|| async { Body::new(TwoLargeChunks(0)) }));
        let addr = serve_app(app, ServerLimits::default().write_timeout(Duration::from_secs(1))).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let request = Request::get("http://x/large").body(()).unwrap();
        let (answer, _) = client.send_request(request, true).unwrap();
        let mut body = answer.await.unwrap().into_body();
        // 160 KiB a second: a chunk takes 1.6 s, longer than the write
        // timeout, each 16 KiB a tenth of a second.
        let started = Instant::now();
        let mut got = 0usize;
        while let Some(data) = body.data().await {
            let data =
                data.unwrap_or_else(|e| panic!("cut after {got} bytes in {:?}: {e}", started.elapsed()));
            tokio::time::sleep(
                Duration::from_millis(100) * u32::try_from(data.len().div_ceil(16 * 1024)).unwrap(),
            )
            .await;
            got += data.len();
            body.flow_control().release_capacity(data.len()).unwrap();
        }
        assert_eq!(got, 512 * 1024);
        assert!(
            started.elapsed() > Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_closed_connection_is_logged_with_the_deadline_it_missed() {
        #[derive(Debug)]
        struct Wrapped(std::io::Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("connection error")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        // hyper's HTTP/1 error holds the I/O error as its source.
        assert_eq!(reason(&Wrapped(late(WRITE_LATE))), WRITE_LATE);
        assert_eq!(reason(&late(HEAD_LATE)), HEAD_LATE);
        // h2 keeps the I/O error's text only.
        let h2 = std::io::Error::other(format!("stream error: {WRITE_LATE}"));
        assert_eq!(reason(&h2), WRITE_LATE);
        assert_eq!(reason(&std::io::Error::other("reset")), "HTTP connection error");
    }

    #[tokio::test]
    async fn a_request_whose_unread_body_came_with_its_head_then_idles_for_the_idle_timeout() {
        let addr = start().await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let opened = Instant::now();
        tcp.write_all(
            b"POST /ignore HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let mut first = [0u8; 15];
        tcp.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200 OK");
        // Closed by the idle timeout (2 s) after the answer, not by the
        // header-read timeout (1 s) of the connection's opening.
        let (_, closed) = until_closed(&mut tcp).await;
        assert!(
            closed - opened >= Duration::from_millis(1800),
            "{:?}",
            closed - opened
        );
    }
}
