//! The request body limit: [`BodyLimitLayer`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use palisade_core::adapter::{Rendering, Reply};
use palisade_core::limits::{BodyOutcome, BodyTimer, ServerLimits};
use tower_layer::Layer;
use tower_service::Service;

use crate::{HttpHead, ResponseBody, answered, reply};

/// Caps request bodies at [`ServerLimits::max_body`] (2 MiB by default, as
/// actix-web's `palisade_actix::BodyLimit`): a declared `Content-Length`
/// over it is answered 413 before a byte of the body is read, and any other
/// body ends with an error when it passes the limit, which axum's body
/// extractors (`Bytes`, `String`, `Json`, `Form`) answer 413. A body that
/// does not arrive in time ([`body_read_timeout`](ServerLimits::body_read_timeout)
/// and [`body_min_rate`](ServerLimits::body_min_rate)) ends with an error
/// too, and the request is answered 408 and its connection closed. The
/// extractors' own default limit (`DefaultBodyLimit`) is set to the same
/// number, so it is the one limit; a route's `DefaultBodyLimit` may lower
/// it, not raise it. A gRPC call's client stream may last hours: wrap the
/// gRPC service in [`GrpcStreamsLayer`], which lifts both for the gRPC
/// calls routed to it (and only there: a content type says nothing of
/// where a request goes).
///
/// [`serve`](crate::serve()) adds it; with `axum::serve`, add it yourself
/// around the whole router:
///
/// ```
/// use axum::{Router, body::Bytes, routing::post};
/// use palisade_axum::BodyLimitLayer;
/// use palisade_core::limits::ServerLimits;
/// use tower_layer::Layer as _;
///
/// let app: Router = Router::new().route("/upload", post(|body: Bytes| async move { body.len().to_string() }));
/// let app = BodyLimitLayer::new(ServerLimits::default().body_limit(64 * 1024)).layer(app);
/// # let _ = app;
/// ```
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct BodyLimitLayer {
    limits: ServerLimits,
}

impl BodyLimitLayer {
    /// The layer for these limits' [`body_limit`](ServerLimits::body_limit).
    pub fn new(limits: ServerLimits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            limits: self.limits,
        }
    }
}

/// The service [`BodyLimitLayer`] produces.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit<S> {
    inner: S,
    limits: ServerLimits,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BodyLimit<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    ReqBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ReqBody::Error: Into<axum::BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BodyLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let declared = req.headers().get(CONTENT_LENGTH).map(http::HeaderValue::as_bytes);
        if let Err(refusal) = self.limits.check_content_length(declared) {
            // The 413 is the guard's kind of answer: none to a HEAD request.
            // A gRPC call's declared length is checked as it is read, by
            // the limit its service may lift.
            let rendering = Rendering::of(&HttpHead::as_sent(&req));
            if rendering != Rendering::Grpc {
                return BodyLimitFuture {
                    kind: Kind::Refused {
                        reply: Some(rendering.render(refusal)),
                    },
                };
            }
        }
        // A request without a body (most) needs neither limit nor clock, nor
        // a look at its content type.
        if req.body().is_end_stream() {
            return BodyLimitFuture {
                kind: Kind::Inner {
                    fut: self.inner.call(req.map(Body::new)),
                    flags: None,
                    limits: self.limits,
                    rendering: Rendering::Http,
                },
            };
        }
        // The 408 or 413 is the guard's kind of answer: none to a HEAD
        // request, a gRPC status to a gRPC call.
        let rendering = Rendering::of(&HttpHead::as_sent(&req));
        let limit = self.limits.max_body();
        let flags = Arc::new(BodyFlags::default());
        let timer = BodyTimer::new(&self.limits);
        let mut req = if rendering == Rendering::Grpc {
            // Limited and timed too, unless routed to a service that
            // `GrpcStreamsLayer` wraps: a content type says nothing of where
            // the request goes. One switch for every body limit the
            // request passes (`serve`'s, and one of the application's).
            let lifted = match req.extensions().get::<Lift>() {
                Some(Lift(outer)) => Arc::clone(outer),
                None => Arc::new(AtomicBool::new(false)),
            };
            let mut req = req.map(|body| {
                Body::new(Liftable {
                    body: Body::new(body),
                    limits: Some((limit, timer)),
                    lifted: Arc::clone(&lifted),
                    flags: Arc::clone(&flags),
                })
            });
            req.extensions_mut().insert(Lift(lifted));
            req
        } else {
            req.map(|body| {
                Body::new(Timed {
                    inner: http_body_util::Limited::new(body, limit),
                    timer,
                    flags: Arc::clone(&flags),
                })
            })
        };
        DefaultBodyLimit::max(limit).apply(&mut req);
        BodyLimitFuture {
            kind: Kind::Inner {
                fut: self.inner.call(req),
                flags: Some(flags),
                limits: self.limits,
                rendering,
            },
        }
    }
}

/// A gRPC call's body: limited and timed as any request's, unless, by the
/// time it is first read, the service it was routed to (one
/// [`GrpcStreamsLayer`] wraps) lifted both.
struct Liftable {
    body: Body,
    /// The limit and clock, until the first read decides.
    limits: Option<(usize, BodyTimer)>,
    lifted: Arc<AtomicBool>,
    flags: Arc<BodyFlags>,
}

/// What became of a request's body as it was read, for the answer: it
/// came too slowly (`late`), or passed the limit (`over`: a gRPC service
/// answers that `UNKNOWN`, in a 200, not 413).
#[derive(Default)]
struct BodyFlags {
    late: AtomicBool,
    over: AtomicBool,
}

impl http_body::Body for Liftable {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some((limit, timer)) = this.limits.take()
            && !this.lifted.load(Ordering::Acquire)
        {
            let raw = std::mem::take(&mut this.body);
            this.body = Body::new(Timed {
                inner: http_body_util::Limited::new(raw, limit),
                timer,
                flags: Arc::clone(&this.flags),
            });
        }
        Pin::new(&mut this.body)
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(|e| unwrapped(e.into()))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A body error without the `axum::Error`s around it (a body limit's body
/// inside another's, or a [`Liftable`]): axum's extractors look one
/// layer deep for the limit's `LengthLimitError`, to answer 413.
fn unwrapped(mut e: axum::BoxError) -> axum::BoxError {
    loop {
        match e.downcast::<axum::Error>() {
            Ok(wrapped) => e = wrapped.into_inner(),
            Err(other) => return other,
        }
    }
}

/// The switch a gRPC call's [`Liftable`] body reads.
#[derive(Clone)]
struct Lift(Arc<AtomicBool>);

/// Lifts [`BodyLimitLayer`]'s limit and read timeout for the gRPC calls
/// (`content-type: application/grpc`) of the service it wraps: a
/// client-streaming call's body is its messages, for as long as the call
/// lasts (hours, gigabytes), and the gRPC server bounds each message
/// (tonic's `max_decoding_message_size`, 4 MiB by default). Wrap only
/// services with client-streaming (or bidirectional) RPCs, not a router
/// with other routes: whatever it takes that claims to be gRPC gets no
/// limit and no deadline, and a unary call's client could keep it waiting
/// for a message that never comes.
///
/// ```
/// use axum::Router;
/// use palisade_axum::GrpcStreamsLayer;
/// # fn f(grpc: Router) {
/// // `grpc`: tonic's routes, `Routes::into_axum_router()`.
/// let app: Router = Router::new().fallback_service(
///     axum::routing::post_service(tower_layer::Layer::layer(&GrpcStreamsLayer, grpc)),
/// );
/// # let _ = app; }
/// ```
#[derive(Clone, Copy, Debug, Default)]
#[must_use]
pub struct GrpcStreamsLayer;

impl<S> Layer<S> for GrpcStreamsLayer {
    type Service = GrpcStreams<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcStreams { inner }
    }
}

/// The service [`GrpcStreamsLayer`] produces.
#[derive(Clone, Copy, Debug)]
pub struct GrpcStreams<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for GrpcStreams<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(Lift(lifted)) = req.extensions().get::<Lift>() {
            lifted.store(true, Ordering::Release);
            // axum's extractors' limit, which `BodyLimit` set, too.
            DefaultBodyLimit::disable().apply(&mut req);
        }
        self.inner.call(req)
    }
}

pin_project_lite::pin_project! {
    /// A request body on the clock of [`BodyTimer`]: past its end, an error,
    /// and the request marked late; past the limit, marked over it.
    struct Timed<B> {
        #[pin]
        inner: B,
        timer: BodyTimer,
        flags: Arc<BodyFlags>,
    }
}

impl<B> http_body::Body for Timed<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(Ok(frame)) = &frame
                    && let Some(data) = frame.data_ref()
                {
                    this.timer.received(data.len());
                }
                Poll::Ready(frame.map(|f| {
                    f.map_err(|e| {
                        let e = unwrapped(e.into());
                        if e.is::<http_body_util::LengthLimitError>() {
                            this.flags.over.store(true, Ordering::Relaxed);
                        }
                        e
                    })
                }))
            }
            Poll::Pending => match this.timer.poll_late(cx) {
                Some(late) => {
                    this.flags.late.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(late.into())))
                }
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The future of [`BodyLimit`]: the inner service's response, or the 413.
    pub struct BodyLimitFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

impl<F> std::fmt::Debug for BodyLimitFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyLimitFuture").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner {
            #[pin]
            fut: F,
            flags: Option<Arc<BodyFlags>>,
            limits: ServerLimits,
            rendering: Rendering,
        },
        Refused { reply: Option<Reply> },
    }
}

impl<F, B, E> Future for BodyLimitFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner {
                fut,
                flags,
                limits,
                rendering,
            } => {
                let res = ready!(fut.poll(cx))?;
                // A request without a body (most) is answered as the app
                // answered it. (A gRPC call always has one: its messages.)
                let Some(f) = flags.as_deref() else {
                    return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                };
                // A body over the limit is met as it is read (a declared
                // length too, for a gRPC call), and the answer may be the
                // application's or its framework's (axum's extractors
                // answer 413, tonic `UNKNOWN`): the core decides.
                let outcome = if f.late.load(Ordering::Relaxed) {
                    BodyOutcome::Late
                } else if f.over.load(Ordering::Relaxed) {
                    BodyOutcome::Over
                } else {
                    BodyOutcome::Within
                };
                let cookies = || {
                    let cookies = res.headers().get_all(http::header::SET_COOKIE);
                    cookies.into_iter().filter_map(|v| v.to_str().ok())
                };
                if let Some(instead) =
                    limits.answer_instead(outcome, *rendering, res.status().as_u16(), cookies)
                {
                    return Poll::Ready(Ok(reply(instead)));
                }
                Poll::Ready(Ok(res.map(ResponseBody::inner)))
            }
            KindProj::Refused { reply: r } => Poll::Ready(Ok(r.take().map_or_else(answered, reply))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::routing::any;
    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    /// A body that never sends a byte.
    struct Stalled;

    /// A body of this many 8-byte chunks, of no declared length.
    struct Chunks(u8);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            if self.0 == 0 {
                return Poll::Ready(None);
            }
            self.0 -= 1;
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"xxxxxxxx")))))
        }
    }

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    /// The answer of a 10-byte, 200 ms body limit around a route that reads
    /// the body: status, headers and body.
    async fn send<B>(req: Request<B>) -> (u16, http::HeaderMap, Bytes)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let limits = ServerLimits::default()
            .body_limit(10)
            .body_read_timeout(Duration::from_millis(200));
        let app = Router::new().route("/", any(|body: Bytes| async move { body.len().to_string() }));
        let res = BodyLimitLayer::new(limits).layer(app).oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        (
            parts.status.as_u16(),
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    fn request(method: &str, content_type: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri("/")
            .header("content-type", content_type)
    }

    /// A handler that reads the stream itself and answers 500 on its error
    /// (as one streaming an upload to storage would): a body over the limit
    /// is still answered 413, with the cookies the app set.
    #[tokio::test]
    async fn a_streaming_handlers_own_answer_to_a_body_over_the_limit_is_413() {
        let app = Router::new().route(
            "/",
            any(|body: axum::body::Body| async move {
                match body.collect().await {
                    Ok(b) => (
                        http::StatusCode::OK,
                        [("set-cookie", "session=renewed")],
                        b.to_bytes().len().to_string(),
                    ),
                    Err(_) => (
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        [("set-cookie", "session=renewed")],
                        "storage failed".to_owned(),
                    ),
                }
            }),
        );
        let layered = BodyLimitLayer::new(ServerLimits::default().body_limit(10)).layer(app);
        for (chunks, status) in [(2, 413), (1, 200)] {
            let req = request("POST", "application/octet-stream")
                .body(Chunks(chunks))
                .unwrap();
            let res = layered.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), status, "{chunks} chunks");
            assert_eq!(res.headers()["set-cookie"], "session=renewed");
            let body = res.into_body().collect().await.unwrap().to_bytes();
            if status == 413 {
                assert!(
                    String::from_utf8_lossy(&body).contains("larger than 10 bytes"),
                    "{body:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn its_413_is_rendered_for_head_and_grpc_as_the_guard_renders_its_answers() {
        let declared = |method, content_type| {
            request(method, content_type)
                .header("content-length", "11")
                .body(Body::from("01234567890"))
                .unwrap()
        };
        let (status, _, body) = send(declared("POST", "text/plain")).await;
        assert_eq!(status, 413);
        assert!(!body.is_empty(), "the problem document");
        let (status, headers, body) = send(declared("HEAD", "text/plain")).await;
        assert_eq!(status, 413);
        assert!(body.is_empty(), "{body:?}");
        assert!(headers.get("grpc-status").is_none());
        let (status, headers, body) = send(declared("POST", "application/grpc")).await;
        assert_eq!(status, 200, "gRPC answers its errors with 200 and a grpc-status");
        assert!(headers.get("grpc-status").is_some(), "{headers:?}");
        assert!(body.is_empty(), "{body:?}");
    }

    #[tokio::test]
    async fn its_408_is_rendered_for_head_and_grpc_as_the_guard_renders_its_answers() {
        let stalled = |method, content_type| request(method, content_type).body(Stalled).unwrap();
        let (status, _, body) = send(stalled("POST", "text/plain")).await;
        assert_eq!(status, 408);
        assert!(!body.is_empty(), "the problem document");
        let (status, _, body) = send(stalled("HEAD", "text/plain")).await;
        assert_eq!(status, 408);
        assert!(body.is_empty(), "{body:?}");
        let (status, headers, body) = send(stalled("POST", "application/grpc")).await;
        assert_eq!(status, 200);
        assert!(headers.get("grpc-status").is_some(), "{headers:?}");
        assert!(body.is_empty(), "{body:?}");
    }

    /// The 408 in place of an answer that renewed a session cookie carries
    /// it (the issuer has spent the refresh token the old cookie holds).
    #[tokio::test]
    async fn a_late_bodys_408_keeps_the_cookies_the_answer_set() {
        let limits = ServerLimits::default().body_read_timeout(Duration::from_millis(100));
        let app = Router::new()
            .route("/", any(|body: Bytes| async move { body.len().to_string() }))
            .layer(axum::middleware::map_response(
                |mut res: axum::response::Response| async move {
                    res.headers_mut().append(
                        http::header::SET_COOKIE,
                        "s=new; Path=/; HttpOnly".parse().unwrap(),
                    );
                    res
                },
            ));
        let req = request("POST", "text/plain").body(Body::new(Stalled)).unwrap();
        let res = BodyLimitLayer::new(limits).layer(app).oneshot(req).await.unwrap();
        assert_eq!(res.status(), 408);
        assert_eq!(res.headers()["set-cookie"], "s=new; Path=/; HttpOnly");
        assert_eq!(res.headers()["cache-control"], "private");
    }

    /// A gRPC service answers a body over the limit as tonic does (200,
    /// `grpc-status: 2`, UNKNOWN, from the body's error): the answer is
    /// `RESOURCE_EXHAUSTED` (8), as for a body refused before the service.
    #[tokio::test]
    async fn a_grpc_services_own_answer_to_a_body_over_the_limit_is_resource_exhausted() {
        let limits = ServerLimits::default().body_limit(10);
        let tonic_like = tower::service_fn(|req: Request<Body>| async move {
            let status = match req.into_body().collect().await {
                Ok(_) => "0",
                Err(_) => "2",
            };
            let mut res = axum::response::Response::new(Body::empty());
            res.headers_mut().insert("grpc-status", status.parse().unwrap());
            Ok::<_, std::convert::Infallible>(res)
        });
        let app = BodyLimitLayer::new(limits).layer(tonic_like);
        // Chunked: no declared length, the limit is met as it is read.
        let req = request("POST", "application/grpc")
            .body(Body::new(Chunks(4)))
            .unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "8");
        let req = request("POST", "application/grpc")
            .body(Body::from("small"))
            .unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_grpc_service_wrapped_in_grpc_streams_takes_long_and_large_calls_others_do_not() {
        let limits = ServerLimits::default()
            .body_limit(10)
            .body_read_timeout(Duration::from_millis(200));
        let echo = || any(|body: Bytes| async move { body.len().to_string() });
        let app = Router::new()
            .route("/grpc", echo().layer(GrpcStreamsLayer))
            .route("/plain", echo());
        // Two body limits (`serve`'s and the application's): one switch.
        let app = BodyLimitLayer::new(limits).layer(BodyLimitLayer::new(limits).layer(app));
        let call = |path: &str, body: Body| {
            let req = request("POST", "application/grpc").uri(path).body(body).unwrap();
            app.clone().oneshot(req)
        };
        // Over the limit: taken by the gRPC service, refused elsewhere
        // (the content type alone lifts nothing) with a gRPC status.
        let big = || Body::from(vec![b'x'; 64]);
        let res = call("/grpc", big()).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "64");
        let res = call("/plain", big()).await.unwrap();
        assert_eq!(
            res.headers().get("grpc-status").map(|v| v.to_str().unwrap()),
            Some("8"),
            "{:?} {:?}",
            res.status(),
            res.headers()
        );
        // A declared length over the limit too.
        let declared = request("POST", "application/grpc")
            .uri("/grpc")
            .header("content-length", "64")
            .body(big())
            .unwrap();
        let res = app.clone().oneshot(declared).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "64");
        // Quiet past the read timeout: waited for by the gRPC service.
        let quiet = tokio::time::timeout(Duration::from_millis(600), call("/grpc", Body::new(Stalled))).await;
        assert!(quiet.is_err(), "a quiet gRPC stream was cut");
        let res = call("/plain", Body::new(Stalled)).await.unwrap();
        assert!(res.headers().get("grpc-status").is_some());
    }
}
