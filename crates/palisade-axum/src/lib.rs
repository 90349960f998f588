//! Palisade for axum, hyper and tonic: a tower [`Layer`] that authenticates
//! and authorizes every request, and (through `palisade-core`'s `axum`
//! feature) the extractors [`Identity`], `Option<Identity>` and
//! [`Claims<T>`](palisade_core::Claims).
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use palisade_axum::PalisadeLayer;
//! use palisade_core::{Guard, Identity};
//! use palisade_jwt::{JwtAuthenticator, Provider};
//!
//! async fn whoami(id: Identity) -> String {
//!     format!("hello {}", id.subject().unwrap_or("?"))
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let jwt = JwtAuthenticator::builder()
//!     .provider(Provider::builder("https://kc.example/realms/demo").audience("details").build()?)
//!     .build()?;
//! let guard = Guard::builder().authenticator(jwt).build()?;
//! let app: Router = Router::new().route("/whoami", get(whoami)).layer(PalisadeLayer::new(guard));
//! # Ok(()) }
//! ```
//!
//! The layer answers refused requests itself (401 with the challenges, 403,
//! 400) with an RFC 9457 body; the [`Rejection`]
//! travels in the response extensions. Allowed requests reach the inner
//! service with a [`RequestAuth`] in their
//! extensions (the [`Identity`], when there is one, and the access decision),
//! and with the header edits of the authenticators applied (the token removed
//! unless `forward_original_token`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use palisade_core::{
    Allowed, BoxDecision, Check, ConnectionInfo, Decision, Guard, HeaderEdit, HeaderTarget, PROBLEM_JSON,
    Rejection, RequestAuth, RequestHead,
};
use tower_layer::Layer;
use tower_service::Service;

pub use palisade_core::Identity;

/// Adds Palisade to a tower stack. Clone it freely: it shares one [`Guard`].
#[derive(Clone, Debug)]
#[must_use]
pub struct PalisadeLayer {
    guard: Guard,
}

impl PalisadeLayer {
    /// A layer that runs `guard` on every request.
    pub fn new(guard: Guard) -> Self {
        Self { guard }
    }
}

impl<S> Layer<S> for PalisadeLayer {
    type Service = Palisade<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Palisade {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// The service [`PalisadeLayer`] produces.
#[derive(Clone, Debug)]
pub struct Palisade<S> {
    inner: S,
    guard: Guard,
}

/// The headers authenticators read on every request, pre-parsed: looking a
/// header up by `&str` parses the name each time.
fn known(name: &str) -> Option<&'static http::header::HeaderName> {
    match name {
        "authorization" => Some(&http::header::AUTHORIZATION),
        "cookie" => Some(&http::header::COOKIE),
        _ => None,
    }
}

/// A view of an `http` 1 request head for the framework-free core.
#[derive(Debug)]
pub struct HttpRequestHead<'a, B>(pub &'a Request<B>);

impl<B> RequestHead for HttpRequestHead<'_, B> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }
    fn path(&self) -> &str {
        self.0.uri().path()
    }
    fn query(&self) -> Option<&str> {
        self.0.uri().query()
    }
    fn host(&self) -> Option<&str> {
        self.0
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.0.uri().authority().map(http::uri::Authority::as_str))
    }
    fn for_each_header(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        match known(name) {
            Some(n) => self
                .0
                .headers()
                .get_all(n)
                .into_iter()
                .for_each(|v| f(v.as_bytes())),
            None => self
                .0
                .headers()
                .get_all(name)
                .into_iter()
                .for_each(|v| f(v.as_bytes())),
        }
    }
    fn header_str(&self, name: &str) -> Option<&str> {
        self.0.headers().get(name).and_then(|v| v.to_str().ok())
    }
    fn header_value(&self, name: &str, index: usize) -> Option<&[u8]> {
        match known(name) {
            Some(n) => self.0.headers().get_all(n).into_iter().nth(index),
            None => self.0.headers().get_all(name).into_iter().nth(index),
        }
        .map(|v| v.as_bytes())
    }
    fn connection(&self) -> Option<&ConnectionInfo> {
        self.0.extensions().get::<ConnectionInfo>()
    }
}

/// The request's header map as a [`HeaderTarget`].
struct Headers<'a>(&'a mut http::HeaderMap);

impl HeaderTarget for Headers<'_> {
    fn remove(&mut self, name: &str) {
        match known(name) {
            Some(n) => {
                self.0.remove(n);
            }
            None => {
                self.0.remove(name);
            }
        }
    }

    fn set(&mut self, name: &str, value: &str) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.0.insert(n, v);
        }
    }
}

fn admit<B>(req: &mut Request<B>, guard: &Guard, mut allowed: Allowed) {
    HeaderEdit::apply_all(
        std::mem::take(&mut allowed.edits),
        &mut Headers(req.headers_mut()),
    );
    let ext = req.extensions_mut();
    ext.insert(RequestAuth::new(allowed, guard));
}

/// Renders a rejection as an `http` 1 response with any body type.
fn reject<B>(rejection: Rejection) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::problem(Bytes::from(rejection.problem_json())));
    *res.status_mut() = StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let headers = res.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    for c in rejection.challenges() {
        if let Ok(v) = HeaderValue::from_str(c) {
            headers.append(http::header::WWW_AUTHENTICATE, v);
        }
    }
    res.extensions_mut().insert(rejection);
    res
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Palisade<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let check = self.guard.check(&HttpRequestHead(&req));
        let kind = match check {
            Check::Ready(Decision::Allow(allowed)) => {
                admit(&mut req, &self.guard, allowed);
                Kind::Inner {
                    fut: self.inner.call(req),
                }
            }
            Check::Ready(Decision::Deny(r)) => Kind::Reject { rejection: Some(r) },
            Check::Pending(check) => {
                // The readied service goes into the future; a clone stays here.
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                Kind::Checking {
                    check,
                    pending: Some((svc, req, self.guard.clone())),
                }
            }
        };
        ResponseFuture { kind }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Palisade`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        kind: Kind<S, ReqBody>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Inner { #[pin] fut: S::Future },
        Reject { rejection: Option<Rejection> },
        Checking { check: BoxDecision, pending: Option<(S, Request<ReqBody>, Guard)> },
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.kind.as_mut().project() {
                KindProj::Inner { fut } => {
                    let res = ready!(fut.poll(cx))?;
                    return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                }
                KindProj::Reject { rejection } => {
                    let r = rejection
                        .take()
                        .unwrap_or_else(|| Rejection::forbidden("request already answered"));
                    return Poll::Ready(Ok(reject(r)));
                }
                KindProj::Checking { check, pending } => {
                    let decision = ready!(check.as_mut().poll(cx));
                    let Some((mut svc, mut req, guard)) = pending.take() else {
                        return Poll::Ready(Ok(reject(Rejection::forbidden("request already answered"))));
                    };
                    match decision {
                        Decision::Allow(allowed) => {
                            admit(&mut req, &guard, allowed);
                            let fut = svc.call(req);
                            this.kind.set(Kind::Inner { fut });
                        }
                        Decision::Deny(r) => return Poll::Ready(Ok(reject(r))),
                    }
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body: the inner service's, or a problem document.
    pub struct ResponseBody<B> {
        #[pin]
        inner: BodyKind<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = BodyProj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Problem { bytes: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    fn inner(body: B) -> Self {
        Self {
            inner: BodyKind::Inner { body },
        }
    }

    fn problem(bytes: Bytes) -> Self {
        Self {
            inner: BodyKind::Problem { bytes: Some(bytes) },
        }
    }
}

impl<B> http_body::Body for ResponseBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            BodyProj::Inner { body } => body.poll_frame(cx),
            BodyProj::Problem { bytes } => Poll::Ready(bytes.take().map(|b| Ok(http_body::Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Problem { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Problem { bytes } => {
                http_body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
