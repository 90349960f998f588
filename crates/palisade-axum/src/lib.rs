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
//! let router: Router = Router::new().route("/whoami", get(whoami));
//! // Wrap the whole router, so the router sees the normalised path the
//! // policy matched; `axum::serve(listener, app)` takes the result.
//! let app: Router = PalisadeLayer::new(guard).wrap(router);
//! # let _ = app;
//! # Ok(()) }
//! ```
//!
//! # Wrapping the router or `Router::layer`
//! Paths are normalised before policy matching (`/a/../admin` is `/admin`)
//! and the request is rewritten so the router routes what the policy saw.
//! That only works when the layer runs before routing: wrap the `Router`
//! ([`PalisadeLayer::wrap`], or `layer.layer(router)` in a tower stack). `Router::layer(PalisadeLayer…)` runs after routing; it still
//! works for every normal path, and refuses a path that is not in normal
//! form with 400 rather than let the router route something else than what
//! was checked.
//!
//! # Route-level requirements
//! [`require`] adds a role or policy check to some routes, on top of the
//! layer: `.route_layer(require(realm_role("admin").or(client_role("reviews", "editor"))))`.
//!
//! The layer answers refused requests itself (401 with the challenges, 403,
//! 400) with an RFC 9457 body; the [`Rejection`]
//! travels in the response extensions. Allowed requests reach the inner
//! service with a [`RequestAuth`] in their
//! extensions (the [`Identity`], when there is one, and the access decision),
//! and with the header edits of the authenticators applied (the token removed
//! unless `forward_original_token`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use palisade_core::authz::AccessDecision;
use palisade_core::{
    Allowed, BoxDecision, Check, ConnectionInfo, Decision, Guard, HeaderEdit, HeaderTarget, PROBLEM_JSON,
    Rejection, RequestAuth, RequestHead,
};
use tower_layer::Layer;
use tower_service::Service;

mod require;

pub use palisade_core::Identity;
pub use require::{Require, RequireLayer, require};

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

    /// Wraps a whole axum [`Router`](axum::Router): Palisade runs before
    /// routing, so the router sees the normalised path the policy matched,
    /// and the result is a `Router` that `axum::serve` takes as it is.
    ///
    /// ```
    /// # fn f(guard: palisade_core::Guard) {
    /// use axum::{Router, routing::get};
    /// let app: Router = palisade_axum::PalisadeLayer::new(guard)
    ///     .wrap(Router::new().route("/list", get(|| async { "[]" })));
    /// # }
    /// ```
    pub fn wrap(&self, router: axum::Router) -> axum::Router {
        axum::Router::new().fallback_service(self.layer(router))
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
        // `palisade_mtls::axum::serve` shares one `Arc` per connection.
        let ext = self.0.extensions();
        ext.get::<std::sync::Arc<ConnectionInfo>>()
            .map(|c| &**c)
            .or_else(|| ext.get::<ConnectionInfo>())
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        // A TLS acceptor's `ConnectionInfo`, else axum's `ConnectInfo`
        // (`into_make_service_with_connect_info::<SocketAddr>()`).
        self.connection().and_then(|c| c.remote_addr).or_else(|| {
            self.0
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0)
        })
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

/// Hands the normalised path to the router, or refuses the request when the
/// router has already chosen a route for the raw path (`Router::layer`).
fn rewrite_path<B>(req: &mut Request<B>, path: &str) -> Result<(), Rejection> {
    if req.extensions().get::<axum::extract::MatchedPath>().is_some() {
        tracing::error!(
            target: palisade_core::guard::LOG_TARGET,
            "a path that is not in normal form reached a PalisadeLayer added with Router::layer, after routing: refused with 400. Wrap the whole Router instead (PalisadeLayer::new(guard).layer(router)) so the router sees the path the policy matched"
        );
        return Err(Rejection::malformed_path(
            "the request path is not in normal form",
        ));
    }
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(target)
            .map_err(|_| Rejection::malformed_path("the request path is not in normal form"))?,
    );
    *req.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|_| Rejection::malformed_path("the request path is not in normal form"))?;
    Ok(())
}

fn admit<B>(req: &mut Request<B>, guard: &Guard, mut allowed: Allowed) -> Result<Admitted, Rejection> {
    if let Some(path) = allowed.path.take() {
        rewrite_path(req, &path)?;
    }
    HeaderEdit::apply_all(
        std::mem::take(&mut allowed.edits),
        &mut Headers(req.headers_mut()),
    );
    let admitted = Admitted {
        explanation: guard.explanation(&allowed.access),
        access: allowed.access.clone(),
        headers: std::mem::take(&mut allowed.response_headers),
    };
    req.extensions_mut().insert(RequestAuth::new(allowed, guard));
    Ok(admitted)
}

/// What goes on the response of an admitted request.
struct Admitted {
    access: AccessDecision,
    explanation: Option<String>,
    headers: Vec<(String, String)>,
}

impl Admitted {
    fn apply<B>(self, res: &mut Response<B>) {
        if let Some(e) = self.explanation.and_then(|e| HeaderValue::from_str(&e).ok()) {
            res.headers_mut().insert(EXPLAIN_HEADER, e);
        }
        for (name, value) in self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                res.headers_mut().append(n, v);
            }
        }
        res.extensions_mut().insert(self.access);
    }
}

/// The debug header that explains decisions, when the guard's switch is on.
const EXPLAIN_HEADER: &str = "x-palisade-authz";

/// Renders a rejection as an `http` 1 response with any body type.
fn reject<B>(rejection: Rejection, guard: Option<&Guard>) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::problem(Bytes::from(rejection.problem_json())));
    *res.status_mut() = StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let headers = res.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    for c in rejection.challenges() {
        if let Ok(v) = HeaderValue::from_str(c) {
            headers.append(http::header::WWW_AUTHENTICATE, v);
        }
    }
    if let Some(access) = rejection.access() {
        if let Some(e) = guard
            .and_then(|g| g.explanation(access))
            .and_then(|e| HeaderValue::from_str(&e).ok())
        {
            headers.insert(EXPLAIN_HEADER, e);
        }
        res.extensions_mut().insert(access.clone());
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
            Check::Ready(Decision::Allow(allowed)) => match admit(&mut req, &self.guard, allowed) {
                Ok(admitted) => Kind::Inner {
                    fut: self.inner.call(req),
                    admitted: Some(admitted),
                },
                Err(r) => Kind::Reject {
                    rejection: Some((r, self.guard.clone())),
                },
            },
            Check::Ready(Decision::Deny(r)) => Kind::Reject {
                rejection: Some((r, self.guard.clone())),
            },
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
        Inner { #[pin] fut: S::Future, admitted: Option<Admitted> },
        Reject { rejection: Option<(Rejection, Guard)> },
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
                KindProj::Inner { fut, admitted } => {
                    let mut res = ready!(fut.poll(cx))?;
                    if let Some(a) = admitted.take() {
                        a.apply(&mut res);
                    }
                    return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                }
                KindProj::Reject { rejection } => {
                    let Some((r, guard)) = rejection.take() else {
                        return Poll::Ready(Ok(answered()));
                    };
                    return Poll::Ready(Ok(reject(r, Some(&guard))));
                }
                KindProj::Checking { check, pending } => {
                    let decision = ready!(check.as_mut().poll(cx));
                    let Some((mut svc, mut req, guard)) = pending.take() else {
                        return Poll::Ready(Ok(answered()));
                    };
                    match decision {
                        Decision::Allow(allowed) => match admit(&mut req, &guard, allowed) {
                            Ok(admitted) => {
                                let fut = svc.call(req);
                                this.kind.set(Kind::Inner {
                                    fut,
                                    admitted: Some(admitted),
                                });
                            }
                            Err(r) => return Poll::Ready(Ok(reject(r, Some(&guard)))),
                        },
                        Decision::Deny(r) => return Poll::Ready(Ok(reject(r, Some(&guard)))),
                    }
                }
            }
        }
    }
}

/// The answer to a future polled after it completed (a caller bug).
fn answered<B>() -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::problem(Bytes::new()));
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res
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
