//! The request body limit: [`BodyLimitLayer`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use palisade_core::adapter::Reply;
use palisade_core::limits::ServerLimits;
use tower_layer::Layer;
use tower_service::Service;

use crate::{ResponseBody, answered, reply};

/// Caps request bodies at [`ServerLimits::max_body`] (2 MiB by default, as
/// actix-web's `palisade_actix::BodyLimit`): a declared `Content-Length`
/// over it is answered 413 before a byte of the body is read, and any other
/// body ends with an error when it passes the limit, which axum's body
/// extractors (`Bytes`, `String`, `Json`, `Form`) answer 413. The
/// extractors' own default limit (`DefaultBodyLimit`) is set to the same
/// number, so it is the one limit; a route's `DefaultBodyLimit` may lower
/// it, not raise it.
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
            return BodyLimitFuture {
                kind: Kind::Refused { reply: Some(refusal) },
            };
        }
        let limit = self.limits.max_body();
        let mut req = req.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
        DefaultBodyLimit::max(limit).apply(&mut req);
        BodyLimitFuture {
            kind: Kind::Inner {
                fut: self.inner.call(req),
            },
        }
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
        Inner { #[pin] fut: F },
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
            KindProj::Inner { fut } => Poll::Ready(Ok(ready!(fut.poll(cx))?.map(ResponseBody::inner))),
            KindProj::Refused { reply: r } => Poll::Ready(Ok(r.take().map_or_else(answered, reply))),
        }
    }
}
