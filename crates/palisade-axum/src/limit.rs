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
use palisade_core::limits::{BodyTimer, ServerLimits};
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
/// it, not raise it. A gRPC call is let through as it is: its body is its
/// messages, for as long as the call lasts (a client stream may last
/// hours and carry gigabytes), and tonic bounds each message
/// (`max_decoding_message_size`, 4 MiB by default). A request without a
/// body (most) needs neither limit nor clock.
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
        // A gRPC call's body is its messages, for as long as the call
        // lasts (a stream may last hours); tonic bounds each message.
        if req.body().is_end_stream() || palisade_core::adapter::is_grpc(&HttpHead::as_sent(&req)) {
            return BodyLimitFuture {
                kind: Kind::Inner {
                    fut: self.inner.call(req.map(Body::new)),
                    late: None,
                    limits: self.limits,
                    rendering: Rendering::Http,
                },
            };
        }
        let declared = req.headers().get(CONTENT_LENGTH).map(http::HeaderValue::as_bytes);
        if let Err(refusal) = self.limits.check_content_length(declared) {
            return BodyLimitFuture {
                kind: Kind::Refused {
                    reply: Some(Rendering::of(&HttpHead::as_sent(&req)).render(refusal)),
                },
            };
        }
        // The 408 for a body too slow is the guard's kind of answer: none
        // to a HEAD request.
        let rendering = Rendering::of(&HttpHead::as_sent(&req));
        let limit = self.limits.max_body();
        let late = Arc::new(AtomicBool::new(false));
        let mut req = req.map(|body| {
            Body::new(Timed {
                inner: http_body_util::Limited::new(body, limit),
                timer: BodyTimer::new(&self.limits),
                late: Arc::clone(&late),
            })
        });
        DefaultBodyLimit::max(limit).apply(&mut req);
        BodyLimitFuture {
            kind: Kind::Inner {
                fut: self.inner.call(req),
                late: Some(late),
                limits: self.limits,
                rendering,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body on the clock of [`BodyTimer`]: past its end, an error,
    /// and the request marked late.
    struct Timed<B> {
        #[pin]
        inner: B,
        timer: BodyTimer,
        late: Arc<AtomicBool>,
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
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timer.poll_late(cx) {
                Some(late) => {
                    this.late.store(true, Ordering::Relaxed);
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

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner {
            #[pin]
            fut: F,
            late: Option<Arc<AtomicBool>>,
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
                late,
                limits,
                rendering,
            } => {
                let res = ready!(fut.poll(cx))?;
                // Whatever the app answered a body it could not read in time.
                if late.as_ref().is_some_and(|l| l.load(Ordering::Relaxed)) {
                    return Poll::Ready(Ok(reply(rendering.render(limits.body_too_slow()))));
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

    #[tokio::test]
    async fn its_413_is_rendered_for_head_as_the_guard_renders_its_answers_and_not_for_grpc() {
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
        // A gRPC call's messages are tonic's to bound: let through.
        let (status, headers, body) = send(declared("POST", "application/grpc")).await;
        assert_eq!((status, &body[..]), (200, &b"11"[..]));
        assert!(headers.get("grpc-status").is_none(), "{headers:?}");
    }

    #[tokio::test]
    async fn its_408_is_rendered_for_head_as_the_guard_renders_its_answers_and_not_for_grpc() {
        let stalled = |method, content_type| request(method, content_type).body(Stalled).unwrap();
        let (status, _, body) = send(stalled("POST", "text/plain")).await;
        assert_eq!(status, 408);
        assert!(!body.is_empty(), "the problem document");
        let (status, _, body) = send(stalled("HEAD", "text/plain")).await;
        assert_eq!(status, 408);
        assert!(body.is_empty(), "{body:?}");
        // A gRPC stream may be quiet for as long as the call lasts.
        let waited = tokio::time::timeout(
            Duration::from_millis(600),
            send(stalled("POST", "application/grpc")),
        )
        .await;
        assert!(waited.is_err(), "a quiet gRPC stream was cut: {waited:?}");
    }
}
