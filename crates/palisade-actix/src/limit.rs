//! The request body limit ([`BodyLimit`]), the server's timeouts
//! ([`with_limits`]) and the watch on the heads of a connection's later
//! requests, which actix-http does not time.

use std::cell::{Cell, OnceCell, RefCell};
use std::future::{Ready, ready};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Once;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{
    Extensions, Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready,
};
use actix_web::error::PayloadError;
use actix_web::http::Version;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::rt::net::TcpStream;
use actix_web::rt::task::JoinHandle;
use actix_web::rt::time::{Instant, sleep_until};
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage as _};
use palisade_core::adapter::{Rendering, actix_response};
use palisade_core::limits::{BodyOutcome, BodyTimer, ServerLimits};

use crate::LocalFuture;

/// Caps request bodies at [`ServerLimits::max_body`] (2 MiB by default, as
/// axum's `palisade_axum::BodyLimitLayer`): a declared `Content-Length`
/// over it is answered 413 (and the connection closed) before a byte of the
/// body is read, and any other body ends with `PayloadError::Overflow` when
/// it passes the limit, which actix-web's extractors answer 413. A body
/// that does not arrive in time ([`body_read_timeout`](ServerLimits::body_read_timeout)
/// and [`body_min_rate`](ServerLimits::body_min_rate)) ends with an error
/// too, and the request is answered 408 and its connection closed.
///
/// It also times what actix-http does not: where the connection was
/// recorded by [`on_connect`](crate::on_connect) (set by [`with_limits`])
/// or `palisade_mtls::ServerTls::actix_on_connect`, a connection whose next
/// request has not begun within the [idle](ServerLimits::idle) plus the
/// [header-read](ServerLimits::header_read) timeout of the end of its last
/// answer (HTTP/1's later heads, an idle HTTP/2 connection, whose pings
/// actix-http takes for life) or of its opening (an HTTP/2 connection that
/// says nothing after its preface) is closed, and with a
/// [maximum connection age](ServerLimits::max_connection_age) one past it
/// is closed: idle, at once; busy, by its answer (`Connection: close`), or
/// a second after that answer ends when its head went out before the age.
/// (Without that record, which a custom `on_connect` in their place leaves
/// out, one warning says so.) A request counts once it reaches this
/// middleware, so wrap the whole `App` with it: requests of a connection
/// that go around it (a scope it does not wrap) leave the connection idle
/// in its eyes. An HTTP/2 connection is told by its TLS session's ALPN, or
/// on plaintext by the preface that came with the connection.
///
/// actix-web's extractors keep their own limits on top (`web::Bytes` and
/// `String` 256 KiB, `web::Json` 2 MiB): give the app the same number so
/// that one limit holds, as below. Wrap the `App` with it last, so it runs
/// first:
///
/// ```
/// use actix_web::{App, web};
/// use palisade_actix::BodyLimit;
/// use palisade_core::limits::ServerLimits;
///
/// let limits = ServerLimits::default();
/// let app = App::new()
///     .app_data(web::PayloadConfig::new(limits.max_body()))
///     .app_data(web::JsonConfig::default().limit(limits.max_body()))
///     .route("/upload", web::post().to(|body: web::Bytes| async move { body.len().to_string() }))
///     .wrap(BodyLimit::new(limits));
/// # let _ = app;
/// ```
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct BodyLimit {
    limits: ServerLimits,
}

impl BodyLimit {
    /// The middleware for these limits' [`body_limit`](ServerLimits::body_limit).
    pub fn new(limits: ServerLimits) -> Self {
        Self { limits }
    }
}

impl<S, B> Transform<S, ServiceRequest> for BodyLimit
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<Answer<B>>>;
    type Error = Error;
    type Transform = BodyLimitMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        enable_sweep(&self.limits);
        ready(Ok(BodyLimitMiddleware {
            service: Rc::new(service),
            limits: self.limits,
        }))
    }
}

/// The service [`BodyLimit`] wraps around the app.
#[derive(Debug)]
pub struct BodyLimitMiddleware<S> {
    service: Rc<S>,
    limits: ServerLimits,
}

impl<S, B> Service<ServiceRequest> for BodyLimitMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<Answer<B>>>;
    type Error = Error;
    type Future = LocalFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let declared = req.headers().get(CONTENT_LENGTH).map(|v| v.as_bytes());
        // As a gRPC status to a gRPC call, as the guard's refusals are.
        let rendering = Rendering::of(&crate::ActixHead(&req));
        if let Err(refusal) = self.limits.check_content_length(declared) {
            let mut res = actix_response(rendering.render(refusal));
            // actix-http writes the connection header from this, not from
            // the header map: close rather than read the body.
            res.head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
            return Box::pin(ready(Ok(req.into_response(res).map_into_right_body())));
        }
        let begun = begin(&req, &self.limits);
        let cut = Rc::new(RefCell::new(None));
        // `Connection: close` is HTTP/1's: an HTTP/2 connection past its
        // age is closed by its watchdog once idle.
        let http1 = req.version() <= Version::HTTP_11;
        // A chunked HTTP/1 body left unread when the answer is made (a
        // handler that does not read it, a 404): actix-http would read it
        // to its end, as long as it lasts, to keep the connection (the
        // bodies it drains are those its own `chunked` tells).
        let chunked = http1 && req.chunked().unwrap_or(false);
        // A WebSocket's frames arrive as its opening request's payload
        // (actix-http streams the rest of the connection so), once the
        // application has answered 101: from then on the socket is the
        // application's, as an upgraded connection is under axum, neither
        // cut off at the body limit nor for its silence.
        let upgraded = Rc::new(Cell::new(false));
        let payload = Limited {
            inner: Some(req.take_payload()),
            left: self.limits.max_body(),
            timer: BodyTimer::new(&self.limits),
            cut: Rc::clone(&cut),
            keep_unread: chunked,
            ended: false,
            upgraded: Rc::clone(&upgraded),
        };
        req.set_payload(Payload::Stream {
            payload: Box::pin(payload),
        });
        let service = Rc::clone(&self.service);
        let limits = self.limits;
        Box::pin(async move {
            let res = service.call(req).await?;
            if res.status() == actix_web::http::StatusCode::SWITCHING_PROTOCOLS {
                upgraded.set(true);
            }
            let cut = cut.borrow_mut().take();
            let outcome = cut.as_ref().map_or(BodyOutcome::Within, |(_, why)| *why);
            // In place of the app's answer, with the cookies it set (a
            // session's renewal), as the core decides for both frameworks.
            let instead = limits.answer_instead(outcome, rendering, res.status().as_u16(), || {
                let cookies = res.headers().get_all(actix_web::http::header::SET_COOKIE);
                cookies.filter_map(|v| v.to_str().ok())
            });
            Ok(match (cut, instead) {
                (None, None) => aged(res, http1, begun).map_into_left_body(),
                // The application's own lower limit, to a gRPC call: the
                // connection is in the watch until it is sent, as for any
                // answer.
                (None, Some(reply)) => aged(res.into_response(actix_response(reply)), http1, begun)
                    .map_into_boxed_body()
                    .map_into_right_body(),
                // The rest of the body is not read: the connection closes.
                (Some((unread, _)), instead) => {
                    let res = match instead {
                        Some(reply) => res.into_response(actix_response(reply)),
                        None => res.map_into_boxed_body(),
                    };
                    closing_unread(res, unread).map_into_right_body()
                }
            })
        })
    }
}

/// `res` with its request's part in the connection's watch (`begun`) kept
/// until it is sent; on HTTP/1, past the connection's maximum age, it
/// closes the connection (an upgrade's connection is the application's).
fn aged<B>(res: ServiceResponse<B>, http1: bool, begun: Option<Begun>) -> ServiceResponse<Answer<B>> {
    res.map_body(|head, body| {
        if http1
            && head.status != actix_web::http::StatusCode::SWITCHING_PROTOCOLS
            && let Some(b) = begun.as_ref().filter(|b| b.0.past_age())
        {
            head.set_connection_type(actix_web::http::ConnectionType::Close);
            b.0.closing.set(true);
        }
        Answer { body, begun }
    })
}

/// `res` with the request's `unread` payload held until it is sent, and
/// the connection then closed: the rest of the body is not read. actix-http
/// would read a dropped payload to its end (a chunked one is drained),
/// past every limit; hyper closes the connection the same way.
pub(crate) fn closing_unread<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
    unread: Payload,
) -> ServiceResponse<BoxBody> {
    res.map_body(|head, body| {
        head.set_connection_type(actix_web::http::ConnectionType::Close);
        BoxBody::new(Holding {
            body: BoxBody::new(body),
            _unread: unread,
        })
    })
}

/// A response body that keeps the request's unread payload until it is
/// sent.
struct Holding {
    body: BoxBody,
    _unread: Payload,
}

impl MessageBody for Holding {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

/// A request payload that fails with [`PayloadError::Overflow`] once it
/// passes the limit, or with a timed-out I/O error once it is late (see
/// [`BodyTimer`]), and is not read further.
struct Limited {
    /// Taken when it passes the limit or is late.
    inner: Option<Payload>,
    left: usize,
    timer: BodyTimer,
    /// Where the unread payload goes when it passed the limit (`Over`) or
    /// was late (`Late`), or was dropped unfinished (`Within`: answered
    /// without reading it all), and why.
    cut: Rc<RefCell<Option<(Payload, BodyOutcome)>>>,
    /// Whether a payload dropped before its end goes to `cut`, for the
    /// connection to be closed rather than the rest read.
    keep_unread: bool,
    /// Whether the payload has ended.
    ended: bool,
    /// Whether the application answered 101: the payload is then an
    /// upgraded connection's (a WebSocket's frames), passed on as it comes.
    upgraded: Rc<Cell<bool>>,
}

impl Drop for Limited {
    fn drop(&mut self) {
        if self.keep_unread && !self.ended && !self.upgraded.get() {
            self.cut_off(BodyOutcome::Within);
        }
    }
}

impl futures_core::Stream for Limited {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Cut off: the error was given.
        let upgraded = self.upgraded.get();
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if upgraded {
            return Pin::new(inner).poll_next(cx);
        }
        match Pin::new(inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match self.left.checked_sub(chunk.len()) {
                Some(left) => {
                    self.left = left;
                    self.timer.received(chunk.len());
                    Poll::Ready(Some(Ok(chunk)))
                }
                None => {
                    self.cut_off(BodyOutcome::Over);
                    tracing::debug!(target: palisade_core::limits::LOG_TARGET, "request body cut off at the limit");
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            },
            Poll::Pending => match self.timer.poll_late(cx) {
                Some(late) => {
                    self.cut_off(BodyOutcome::Late);
                    Poll::Ready(Some(Err(PayloadError::Io(late))))
                }
                None => Poll::Pending,
            },
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

impl Limited {
    fn cut_off(&mut self, why: BodyOutcome) {
        if let Some(unread) = self.inner.take() {
            *self.cut.borrow_mut() = Some((unread, why));
        }
    }
}

/// Sets the timeouts of `limits` on actix-web's `HttpServer`:
/// `client_request_timeout` is the header-read timeout, `keep_alive` the
/// idle timeout, as `palisade_mtls::actix::HttpSettings::from_limits` does
/// for Palisade's own listener, and [`on_connect`](crate::on_connect), which
/// lets [`BodyLimit`] time the later heads of a connection. (A TLS
/// listener's handshake timeout is
/// `HttpServer::tls_handshake_timeout(limits.handshake())`, and its
/// `on_connect` is `palisade_mtls::ServerTls::actix_on_connect`, which records the
/// connection the same way. `HttpServer` keeps one `on_connect`: set that
/// one after this function, which would replace it, or serve TLS with
/// `palisade_mtls::actix::server` and `HttpSettings::from_limits`, which
/// set both; the guard warns once when requests arrive over TLS without
/// it.)
///
/// actix-http times the head of a connection's first request only: on a
/// kept-alive connection its idle timeout runs until the next request's
/// first byte, and that request's head has no deadline of its own.
/// [`BodyLimit`] closes an HTTP/1 connection whose next request has not
/// begun within the idle plus the header-read timeout of the end of its
/// last answer, so a later head has between the header-read timeout and
/// both together, by when its first byte came (axum's
/// `palisade_axum::serve` gives every head the header-read timeout from its
/// first byte).
///
/// ```no_run
/// use actix_web::{App, HttpServer, web};
/// use palisade_core::limits::ServerLimits;
/// # async fn run() -> std::io::Result<()> {
/// let limits = ServerLimits::default();
/// let server = HttpServer::new(move || {
///     App::new()
///         .route("/", web::get().to(|| async { "hi" }))
///         .wrap(palisade_actix::BodyLimit::new(limits))
/// });
/// palisade_actix::with_limits(server, &limits).bind("127.0.0.1:8080")?.run().await
/// # }
/// ```
pub fn with_limits<F, I, S, B>(
    server: actix_web::HttpServer<F, I, S, B>,
    limits: &ServerLimits,
) -> actix_web::HttpServer<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_web::dev::ServiceFactory<actix_http::Request, Config = actix_web::dev::AppConfig> + 'static,
    S::Error: Into<Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<actix_http::Response<B>> + 'static,
    <S::Service as Service<actix_http::Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    server
        .client_request_timeout(limits.header_read())
        .keep_alive(limits.idle())
        .max_connections(limits.connections())
        .on_connect(crate::on_connect)
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's part in the connection's
    /// watch when it has been sent (dropped): the body of every answer
    /// [`BodyLimit`] lets through.
    pub struct Answer<B> {
        #[pin]
        body: B,
        begun: Option<Begun>,
    }
}

impl<B: MessageBody> MessageBody for Answer<B> {
    type Error = B::Error;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.project().body.poll_next(cx)
    }

    fn try_into_bytes(self) -> Result<Bytes, Self> {
        let Answer { body, begun } = self;
        body.try_into_bytes().map_err(|body| Answer { body, begun })
    }
}

impl<B> std::fmt::Debug for Answer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer").finish_non_exhaustive()
    }
}

/// The watch on one connection (in its connection data): what actix-http
/// does not time, the heads of its requests after the first.
struct Watch(Rc<Connection>);

/// What the watch knows of its connection.
struct Connection {
    /// A second handle on the socket, to end the connection with.
    socket: socket2::Socket,
    /// Requests begun whose answers have not been sent.
    open: Cell<usize>,
    /// When the last answer was sent.
    ended: Cell<Instant>,
    /// The task that ends the connection, once a first request started it.
    watchdog: OnceCell<JoinHandle<()>>,
    /// When it opened.
    opened: Instant,
    /// When it is old enough to close (`ServerLimits::max_connection_age`),
    /// drawn at its first request.
    aged: OnceCell<Option<Instant>>,
    /// An answer past its age said `Connection: close`: actix-http closes
    /// the connection itself once that answer is written.
    closing: Cell<bool>,
    /// Told when a request ends on a connection past its age, for the
    /// watchdog to close it once it is idle.
    idle: Rc<tokio::sync::Notify>,
}

impl Connection {
    /// Whether the connection is past its maximum age.
    fn past_age(&self) -> bool {
        self.aged
            .get()
            .copied()
            .flatten()
            .is_some_and(|at| Instant::now() >= at)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(task) = self.watchdog.get() {
            task.abort();
        }
    }
}

/// This worker's sweep of silent HTTP/2 connections: how long one may go
/// without a request from its opening, the connections to look at, and
/// whether its task runs.
struct Sweep {
    silent: Duration,
    fresh: Vec<Weak<Connection>>,
    running: bool,
}

thread_local! {
    /// Set by the first [`BodyLimit`] made on this worker (which marks
    /// requests begun: without one, no connection could be told busy).
    static SWEEP: RefCell<Option<Sweep>> = const { RefCell::new(None) };
}

/// How often a worker's fresh HTTP/2 connections are looked at.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Turns on, for this worker, the closing of HTTP/2 connections on which no
/// request has begun within the idle plus the header-read timeout of their
/// opening ([`sweep`]): actix-http times an HTTP/2 connection's preface
/// only, and one that then says nothing (its pings answered) would be kept
/// for good. (An HTTP/1 connection's first head it times itself.)
fn enable_sweep(limits: &ServerLimits) {
    SWEEP.with(|sweep| {
        let mut sweep = sweep.borrow_mut();
        if sweep.is_none() {
            *sweep = Some(Sweep {
                silent: limits.idle().saturating_add(limits.header_read()),
                fresh: Vec::new(),
                running: false,
            });
        }
    });
}

/// Puts an HTTP/2 connection in this worker's sweep, when it has one, and
/// starts the sweep's task (on the worker's runtime, where the connection
/// is served) if it is not running.
fn sweep(conn: &Rc<Connection>) {
    SWEEP.with(|sweep| {
        let mut sweep = sweep.borrow_mut();
        let Some(sweep) = sweep.as_mut() else {
            return;
        };
        sweep.fresh.push(Rc::downgrade(conn));
        if !sweep.running {
            actix_web::rt::spawn(sweeping(sweep.silent));
            sweep.running = true;
        }
    });
}

/// The sweep's task: every [`SWEEP_EVERY`], closes the connections of the
/// sweep silent for `silent` since their opening and forgets those gone or
/// begun (their watchdog times them); ends when none is left.
async fn sweeping(silent: Duration) {
    loop {
        actix_web::rt::time::sleep(SWEEP_EVERY).await;
        let now = Instant::now();
        let left = SWEEP.with(|sweep| {
            let mut sweep = sweep.borrow_mut();
            let Some(sweep) = sweep.as_mut() else {
                return false;
            };
            sweep.fresh.retain(|conn| {
                let Some(conn) = conn.upgrade() else {
                    return false;
                };
                if conn.watchdog.get().is_some() {
                    // A request began: its watchdog times it from now.
                    return false;
                }
                if now.saturating_duration_since(conn.opened) < silent {
                    return true;
                }
                tracing::debug!(target: palisade_core::limits::LOG_TARGET, "HTTP/2 connection closed: no request began within the idle and header-read timeouts of its opening");
                let _ = conn.socket.shutdown(std::net::Shutdown::Both);
                false
            });
            sweep.running = !sweep.fresh.is_empty();
            sweep.running
        });
        if !left {
            return;
        }
    }
}

/// Marks the connection `data` records (by [`on_connect`](crate::on_connect))
/// as one that speaks HTTP/2, told by its TLS session's ALPN (`h2`):
/// `palisade_mtls`'s `on_connect` calls it. A plaintext connection's
/// `on_connect` tells HTTP/2 by its preface itself. Such a connection on
/// which no request has begun within the idle plus the header-read timeout
/// of its opening is closed, where a [`BodyLimit`] runs.
pub fn speaks_http2(data: &Extensions) {
    if let Some(Watch(conn)) = data.get::<Watch>() {
        sweep(conn);
    }
}

/// Whether a plaintext connection begins with the HTTP/2 preface
/// (`PRI * HTTP/2.0`, h2c by prior knowledge), by what has arrived of it,
/// without waiting.
fn begins_h2c(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 3];
    let mut read = tokio::io::ReadBuf::new(&mut buf);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    matches!(tcp.poll_peek(&mut cx, &mut read), Poll::Ready(Ok(3))) && read.filled() == b"PRI"
}

/// Puts a watch on `tcp` in its connection data (see [`BodyLimit`]).
pub(crate) fn watch(tcp: &TcpStream, data: &mut Extensions) {
    let socket = match socket2::SockRef::from(tcp).try_clone() {
        Ok(socket) => socket,
        Err(error) => {
            // Out of file descriptors, for every connection while it lasts:
            // said once a minute.
            static UNWATCHED: palisade_core::logging::Sparse = palisade_core::logging::Sparse::per_minute();
            if UNWATCHED.due() {
                tracing::warn!(target: palisade_core::limits::LOG_TARGET, %error, "cannot watch a connection: its later request heads are not timed (said once a minute)");
            }
            return;
        }
    };
    let conn = Rc::new(Connection {
        socket,
        open: Cell::new(0),
        ended: Cell::new(Instant::now()),
        watchdog: OnceCell::new(),
        opened: Instant::now(),
        aged: OnceCell::new(),
        closing: Cell::new(false),
        idle: Rc::new(tokio::sync::Notify::new()),
    });
    if begins_h2c(tcp) {
        sweep(&conn);
    }
    data.insert(Watch(conn));
}

/// A request's part in its connection's watch: while it lives, the
/// connection is busy.
struct Begun(Rc<Connection>);

impl Drop for Begun {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        self.0.ended.set(Instant::now());
        if self.0.open.get() == 0 && self.0.past_age() {
            self.0.idle.notify_one();
        }
    }
}

/// Marks the start of `req` in its connection's watch, and starts the
/// watchdog on the connection's first request: HTTP/1's, whose later heads
/// actix-http does not time, and HTTP/2's, whose idle connections it keeps
/// while they answer its pings (each of its streams counts as a request
/// begun). Connections without a watch are told of once.
fn begin(req: &ServiceRequest, limits: &ServerLimits) -> Option<Begun> {
    let Some(Watch(conn)) = req.conn_data::<Watch>() else {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            tracing::warn!(
                target: palisade_core::limits::LOG_TARGET,
                "the connection has no watch (neither palisade_actix::on_connect nor palisade_mtls::ServerTls::actix_on_connect ran): \
                 heads of kept-alive connections' later requests are not timed"
            );
        });
        return None;
    };
    conn.open.set(conn.open.get() + 1);
    conn.watchdog.get_or_init(|| {
        let aged = *conn.aged.get_or_init(|| {
            limits
                .connection_lifetime()
                .map(|lifetime| conn.opened + lifetime)
        });
        let limit = limits.idle().saturating_add(limits.header_read());
        actix_web::rt::spawn(watchdog(Rc::downgrade(conn), limit, aged))
    });
    Some(Begun(Rc::clone(conn)))
}

/// How long after its last answer ended an idle connection past its age is
/// closed, when that answer did not close it itself (its head was sent
/// before the age): time for actix-http to write the answer's tail, which
/// it may still hold after the answer's body is done.
const FLUSHED: Duration = Duration::from_secs(1);

/// Ends the connection once no request has begun within `limit` of the end
/// of its last answer, or once it is idle past `aged`, its maximum age (a
/// request in progress then has its answer close the connection, or, when
/// that answer's head went out before the age, the watchdog closes it
/// [`FLUSHED`] after it ends). It wakes at most once per `limit` while
/// requests are open, and when the last of them ends past the age; it
/// holds the connection only while awake.
async fn watchdog(conn: Weak<Connection>, limit: Duration, aged: Option<Instant>) {
    let mut at = Instant::now() + limit;
    if let Some(aged) = aged {
        at = at.min(aged);
    }
    loop {
        let woken = {
            let Some(conn) = conn.upgrade() else {
                return;
            };
            let aged_by_then = aged.is_some_and(|aged| at >= aged);
            // Past its age and busy: woken when the last request ends too.
            if aged_by_then && conn.open.get() > 0 {
                let told = Rc::clone(&conn.idle);
                drop(conn);
                tokio::time::timeout_at(at, told.notified()).await.is_ok()
            } else {
                drop(conn);
                sleep_until(at).await;
                false
            }
        };
        let Some(conn) = conn.upgrade() else {
            return;
        };
        let now = Instant::now();
        let past_age = aged.is_some_and(|aged| now >= aged);
        if past_age && conn.closing.get() {
            // Its answer said `Connection: close`: actix-http closes it.
            return;
        }
        // Past its age and idle since its last answer had time to leave:
        // closed.
        if past_age && conn.open.get() == 0 && now >= conn.ended.get() + FLUSHED {
            tracing::debug!(target: palisade_core::limits::LOG_TARGET, "connection closed: past its maximum age");
            let _ = conn.socket.shutdown(std::net::Shutdown::Both);
            return;
        }
        at = if conn.open.get() > 0 {
            now + limit
        } else {
            conn.ended.get() + limit
        };
        if at <= now {
            tracing::debug!(
                target: palisade_core::limits::LOG_TARGET,
                "connection closed: no request began within the idle and header-read timeouts of the last answer"
            );
            let _ = conn.socket.shutdown(std::net::Shutdown::Both);
            return;
        }
        match aged {
            // Woken at its age too.
            Some(aged) if !past_age => at = at.min(aged),
            // Idle past its age (or just woken by its last request's end):
            // closed once its last answer had time to leave.
            Some(_) if conn.open.get() == 0 || woken => at = at.min(conn.ended.get() + FLUSHED),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{App, HttpResponse, HttpServer, test, web};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A body of ten parts, one every 300 ms.
    struct Ticks {
        left: u32,
        next: Pin<Box<actix_web::rt::time::Sleep>>,
    }

    impl futures_core::Stream for Ticks {
        type Item = Result<Bytes, std::convert::Infallible>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            std::task::ready!(self.next.as_mut().poll(cx));
            self.left -= 1;
            let at = Instant::now() + Duration::from_millis(300);
            self.next.as_mut().reset(at);
            Poll::Ready(Some(Ok(Bytes::from_static(b"tick "))))
        }
    }

    /// An `HttpServer` (one worker, plaintext) with `limits` set by
    /// [`with_limits`] and [`BodyLimit`]: `/ok`, `/slow` (answered after
    /// 3 s) and `/stream` (3 s of ticks). Its port and handle.
    fn server(limits: ServerLimits) -> (u16, actix_web::dev::ServerHandle) {
        let app = move || {
            App::new()
                .route("/ok", web::get().to(|| async { "ok" }))
                .route(
                    "/slow",
                    web::get().to(|| async {
                        actix_web::rt::time::sleep(Duration::from_secs(3)).await;
                        "slow"
                    }),
                )
                .route(
                    "/stream",
                    web::get().to(|| async {
                        HttpResponse::Ok().streaming(Ticks {
                            left: 10,
                            next: Box::pin(actix_web::rt::time::sleep(Duration::ZERO)),
                        })
                    }),
                )
                .wrap(BodyLimit::new(limits))
        };
        started(&limits, app)
    }

    /// An `HttpServer` of `app` (one worker, plaintext) with `limits` set
    /// by [`with_limits`], started: its port and handle.
    fn started<F, I, S, B>(limits: &ServerLimits, app: F) -> (u16, actix_web::dev::ServerHandle)
    where
        F: Fn() -> I + Send + Clone + 'static,
        I: actix_service::IntoServiceFactory<S, actix_http::Request>,
        S: actix_web::dev::ServiceFactory<actix_http::Request, Config = actix_web::dev::AppConfig> + 'static,
        S::Error: Into<Error> + 'static,
        S::InitError: std::fmt::Debug,
        S::Response: Into<actix_http::Response<B>> + 'static,
        <S::Service as Service<actix_http::Request>>::Future: 'static,
        S::Service: 'static,
        B: MessageBody + 'static,
    {
        let server = with_limits(HttpServer::new(app), limits)
            .workers(1)
            .disable_signals()
            .bind("127.0.0.1:0")
            .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        (port, handle)
    }

    /// A connection to a new [`server`] with `limits`, and its handle.
    async fn connected(
        limits: ServerLimits,
    ) -> (actix_web::rt::net::TcpStream, actix_web::dev::ServerHandle) {
        let (port, handle) = server(limits);
        let tcp = actix_web::rt::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        (tcp, handle)
    }

    /// One second for a head and one of idleness.
    fn short() -> ServerLimits {
        ServerLimits::default()
            .header_read_timeout(Duration::from_secs(1))
            .idle_timeout(Duration::from_secs(1))
    }

    /// Sends `GET path` on `tcp` and reads the answer to its end (the body
    /// ends with `last`): the answer.
    async fn get(tcp: &mut actix_web::rt::net::TcpStream, path: &str, last: &str) -> String {
        let head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.ends_with(last.as_bytes()) {
            let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf));
            match read.await {
                Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
                other => panic!("GET {path}: {other:?} after {:?}", String::from_utf8_lossy(&seen)),
            }
        }
        String::from_utf8(seen).unwrap()
    }

    /// A chunked body the app answers without reading (here `/ok`'s
    /// handler, which takes none) is not read on to its end: the
    /// connection is closed once the answer is sent, as hyper does, rather
    /// than kept reading whatever the client sends.
    #[actix_web::test]
    async fn an_unread_chunked_body_closes_the_connection_rather_than_drain() {
        let limits = ServerLimits::default()
            .header_read_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(5));
        let (mut tcp, handle) = connected(limits).await;
        tcp.write_all(
            b"GET /ok HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        // The client goes on sending chunks, as fast as it likes.
        let sender = actix_web::rt::spawn(async move {
            while wr.write_all(b"5\r\nhello\r\n").await.is_ok() {
                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        let seen = String::from_utf8_lossy(&seen);
        assert!(closed.is_ok(), "still reading the body after 3 s: {seen:?}");
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen:?}");
        assert!(
            seen.to_ascii_lowercase().contains("connection: close"),
            "{seen:?}"
        );
        sender.abort();
        handle.stop(false).await;
    }

    /// A request body that never sends a byte.
    struct Stalled;

    impl futures_core::Stream for Stalled {
        type Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>;

        fn poll_next(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Pending
        }
    }

    /// The 408 in place of an answer that renewed a session cookie carries
    /// it (the issuer has spent the refresh token the old cookie holds).
    #[actix_web::test]
    async fn a_late_bodys_408_keeps_the_cookies_the_answer_set() {
        use actix_web::dev::Service as _;
        let limits = ServerLimits::default().body_read_timeout(Duration::from_millis(100));
        let app = test::init_service(
            App::new()
                .route(
                    "/",
                    web::post().to(|body: web::Bytes| async move { body.len().to_string() }),
                )
                .wrap_fn(|req, srv| {
                    let answer = srv.call(req);
                    async move {
                        let mut res = answer.await?;
                        res.headers_mut().append(
                            actix_web::http::header::SET_COOKIE,
                            actix_web::http::header::HeaderValue::from_static("s=new; Path=/; HttpOnly"),
                        );
                        Ok(res)
                    }
                })
                .wrap(BodyLimit::new(limits)),
        )
        .await;
        let mut req = test::TestRequest::post().uri("/").to_request();
        *req.payload() = Payload::Stream {
            payload: Box::pin(Stalled),
        };
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status().as_u16(), 408);
        let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(header("set-cookie").as_deref(), Some("s=new; Path=/; HttpOnly"));
        assert_eq!(header("cache-control").as_deref(), Some("private"));
    }

    /// A timeout of "no limit" (`Duration::MAX`), which actix-http and the
    /// watch would add to the time of day, is a long one (ten years), not
    /// a panic: the connection serves a request, and another after it.
    #[actix_web::test]
    async fn an_endless_idle_timeout_is_no_panic() {
        let (mut tcp, handle) = connected(ServerLimits::default().idle_timeout(Duration::MAX)).await;
        for _ in 0..2 {
            assert!(get(&mut tcp, "/ok", "ok").await.starts_with("HTTP/1.1 200"));
        }
        handle.stop(false).await;
    }

    /// actix-http times only a connection's first head; the watch ends a
    /// connection whose second head drips, within the idle and the
    /// header-read timeout of the first answer, not before the header-read
    /// timeout.
    #[actix_web::test]
    async fn a_later_head_that_drips_is_cut_off() {
        let (mut tcp, handle) = connected(short()).await;
        assert!(get(&mut tcp, "/ok", "ok").await.starts_with("HTTP/1.1 200"));
        let since = std::time::Instant::now();
        let (mut r, mut w) = tcp.into_split();
        let drip = actix_web::rt::spawn(async move {
            for b in b"GET /ok HTTP/1.1\r\nx-slow: "
                .iter()
                .chain(std::iter::repeat(&b'a'))
            {
                if w.write_all(&[*b]).await.is_err() {
                    break;
                }
                actix_web::rt::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut rest)).await;
        let after = since.elapsed();
        assert!(
            closed.is_ok(),
            "the dripping connection is still open after {after:?}"
        );
        assert!(
            (Duration::from_millis(900)..Duration::from_secs(5)).contains(&after),
            "closed after {after:?}"
        );
        drip.abort();
        handle.stop(false).await;
    }

    /// The watch counts from the end of an answer: a slow answer and a long
    /// streamed one (each longer than both timeouts) are sent whole, and
    /// the connection then serves another request.
    #[actix_web::test]
    async fn slow_and_long_answers_are_not_cut_off() {
        let (mut tcp, handle) = connected(short()).await;
        assert!(get(&mut tcp, "/slow", "slow").await.starts_with("HTTP/1.1 200"));
        let stream = get(&mut tcp, "/stream", "0\r\n\r\n").await;
        assert_eq!(stream.matches("tick").count(), 10, "{stream}");
        assert!(get(&mut tcp, "/ok", "ok").await.starts_with("HTTP/1.1 200"));
        handle.stop(false).await;
    }

    /// Past its maximum age (here 1 s, give or take a tenth) a connection
    /// is closed: an idle one by the watch, a busy one once its answer is
    /// sent whole, as `palisade_axum::serve` closes them.
    #[actix_web::test]
    async fn a_connection_past_its_maximum_age_is_closed_idle_or_after_its_answer() {
        let limits = ServerLimits::default().max_connection_age(Duration::from_secs(1));
        // Idle after an answer: closed at its age, long before the idle
        // timeout (75 s).
        let opened = std::time::Instant::now();
        let (mut tcp, handle) = connected(limits).await;
        let answer = get(&mut tcp, "/ok", "ok").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(!answer.contains("connection: close"), "{answer}");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
        let lived = opened.elapsed();
        assert!(closed.is_ok(), "the old connection is still open after {lived:?}");
        assert!(
            (Duration::from_millis(850)..Duration::from_secs(5)).contains(&lived),
            "closed after {lived:?}"
        );
        handle.stop(false).await;
        // Busy at its age (`/slow` takes 3 s): the answer comes whole, says
        // it closes, and the connection then closes.
        let (mut tcp, handle) = connected(limits).await;
        let answer = get(&mut tcp, "/slow", "slow").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "the old connection is still open after its answer"
        );
        handle.stop(false).await;
        // A streamed answer whose head went out before the age (3 s of
        // ticks): sent whole, without `Connection: close`, and the
        // connection closed soon after it ends, not after the idle timeout.
        let opened = std::time::Instant::now();
        let (mut tcp, handle) = connected(limits).await;
        let stream = get(&mut tcp, "/stream", "0\r\n\r\n").await;
        assert_eq!(stream.matches("tick").count(), 10, "{stream}");
        assert!(!stream.contains("connection: close"), "{stream}");
        let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
        let lived = opened.elapsed();
        assert!(closed.is_ok(), "the old connection is still open after {lived:?}");
        assert!(lived < Duration::from_secs(6), "closed after {lived:?}");
        handle.stop(false).await;
    }

    /// A WebSocket's frames come as its opening request's payload: once
    /// answered 101, the socket is not cut off at the body limit, nor for
    /// its silence (an upgraded connection is the application's, as under
    /// axum); a request naming the header that is answered otherwise is
    /// still held to the limit.
    #[actix_web::test]
    async fn a_websockets_frames_are_not_held_to_the_body_limit_or_timeout() {
        let limits = short()
            .body_limit(100)
            .body_read_timeout(Duration::from_millis(300));
        let app = move || {
            App::new()
                .route(
                    "/ws",
                    // The socket's bytes echoed, as a WebSocket handler reads
                    // and writes them.
                    web::get().to(|payload: web::Payload| async move {
                        HttpResponse::SwitchingProtocols()
                            .insert_header((actix_web::http::header::UPGRADE, "websocket"))
                            .streaming(payload)
                    }),
                )
                .route("/echo", web::route().to(echo))
                .wrap(BodyLimit::new(limits))
        };
        let (port, handle) = started(&limits, app);
        let mut tcp = actix_web::rt::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tcp.write_all(
            b"GET /ws HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(
            seen.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
        let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut echoed = seen.len() - head_end;
        // Five times the limit, with pauses longer than the read timeout.
        for _ in 0..5 {
            actix_web::rt::time::sleep(Duration::from_millis(500)).await;
            tcp.write_all(&[b'x'; 100]).await.unwrap();
            let before = echoed;
            while echoed < before + 100 {
                let n = actix_web::rt::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                    .await
                    .expect("the echo")
                    .unwrap();
                assert!(n > 0, "the socket was cut off after {echoed} bytes");
                echoed += n;
            }
        }
        assert_eq!(echoed, 500);
        // Requests naming the header that are answered otherwise: their
        // payload (the rest of the connection, as actix-http streams it) is
        // held to the limit.
        for method in ["GET", "POST"] {
            let mut tcp = actix_web::rt::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let head = format!(
                "{method} /echo HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n"
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            tcp.write_all(&[b'x'; 150]).await.unwrap();
            let n = actix_web::rt::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer: the payload was not limited"))
                .unwrap();
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 413"),
                "{method}: {}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
        handle.stop(false).await;
    }

    async fn echo(body: web::Bytes) -> String {
        body.len().to_string()
    }

    #[actix_web::test]
    async fn bodies_over_the_limit_are_answered_413_declared_or_streamed() {
        let limits = ServerLimits::default().body_limit(100);
        let app = test::init_service(
            App::new()
                .app_data(web::PayloadConfig::new(1_000_000))
                .route("/echo", web::post().to(echo))
                .wrap(BodyLimit::new(limits)),
        )
        .await;
        // Declared: refused before the handler, and the connection closed.
        let req = test::TestRequest::post()
            .uri("/echo")
            .insert_header((CONTENT_LENGTH, "101"))
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), 413);
        assert_eq!(
            res.response().head().connection_type(),
            actix_web::http::ConnectionType::Close
        );
        let problem = test::read_body(res).await;
        assert!(String::from_utf8_lossy(&problem).contains("larger than 100 bytes"));
        // To a gRPC call, a gRPC status (RESOURCE_EXHAUSTED), as the
        // guard's refusals are, and as under axum.
        let req = test::TestRequest::post()
            .uri("/echo")
            .insert_header((CONTENT_LENGTH, "101"))
            .insert_header(("content-type", "application/grpc"))
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), 200, "gRPC answers 200 with its status");
        assert_eq!(
            res.headers().get("grpc-status").and_then(|v| v.to_str().ok()),
            Some("8")
        );
        // Not declared: cut off at the limit although the app allows more.
        for (size, status) in [(101, 413), (100, 200)] {
            let mut req = test::TestRequest::post()
                .uri("/echo")
                .set_payload(vec![b'a'; size])
                .to_request();
            req.headers_mut().remove(CONTENT_LENGTH);
            let res = test::call_service(&app, req).await;
            assert_eq!(res.status(), status, "{size} bytes");
            let close = res.response().head().connection_type() == actix_web::http::ConnectionType::Close;
            assert_eq!(close, status == 413, "{size} bytes");
        }
    }

    /// A handler that reads the stream itself and answers 500 on its error
    /// (as one streaming an upload to storage would): a body over the limit
    /// is still answered 413, with the cookies the app set.
    #[actix_web::test]
    async fn a_streaming_handlers_own_answer_to_a_body_over_the_limit_is_413() {
        use futures_core::Stream as _;
        let app = test::init_service(
            App::new()
                .route(
                    "/upload",
                    web::post().to(|mut body: web::Payload| async move {
                        let mut got = 0;
                        while let Some(chunk) =
                            std::future::poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await
                        {
                            match chunk {
                                Ok(c) => got += c.len(),
                                Err(_) => {
                                    return HttpResponse::InternalServerError()
                                        .insert_header(("set-cookie", "session=renewed"))
                                        .body("storage failed");
                                }
                            }
                        }
                        HttpResponse::Ok().body(got.to_string())
                    }),
                )
                .wrap(BodyLimit::new(ServerLimits::default().body_limit(100))),
        )
        .await;
        for (size, status) in [(101, 413), (100, 200)] {
            let mut req = test::TestRequest::post()
                .uri("/upload")
                .set_payload(vec![b'a'; size])
                .to_request();
            req.headers_mut().remove(CONTENT_LENGTH);
            let res = test::call_service(&app, req).await;
            assert_eq!(res.status(), status, "{size} bytes");
            if status == 413 {
                assert_eq!(res.headers().get("set-cookie").unwrap(), "session=renewed");
                let problem = test::read_body(res).await;
                assert!(String::from_utf8_lossy(&problem).contains("larger than 100 bytes"));
            }
        }
    }
}
