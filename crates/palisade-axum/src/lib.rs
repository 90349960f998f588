//! Palisade for axum, hyper and tonic: a tower [`Layer`] that authenticates
//! and authorizes every request, and (through `palisade-core`'s `axum`
//! feature) the extractors [`Identity`](palisade_core::Identity), `Option<Identity>` and
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
//! // policy matched; `axum::serve(listener, app)` takes the result (a
//! // `GuardedRouter`: add every route before wrapping).
//! let app = PalisadeLayer::new(guard).wrap(router);
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
//! was checked. As every axum layer, `Router::layer` wraps only the routes
//! added before it: a route, merge or nest added after it is served
//! unguarded. [`PalisadeLayer::wrap`] returns a [`GuardedRouter`], which
//! takes no more routes.
//!
//! The three cost differently (`benches/README.md`, "Instructions per
//! request"). Cheapest is the layer around the router, served as it is by
//! [`serve()`] (or hyper): `serve(listener, layer.layer(router.with_state(())), shutdown)`.
//! [`PalisadeLayer::wrap`] returns a `Router` for `axum::serve`, which
//! costs a second, outer router per request (about 1,900 instructions
//! more); `Router::layer` boxes the layered service per route (about
//! 1,000 more).
//!
//! # Route-level requirements
//! [`require`] adds a role or policy check to some routes, on top of the
//! layer: `.route_layer(require(realm_role("admin").or(client_role("reviews", "editor"))))`.
//!
//! The layer answers refused requests itself (401 with the challenges, 403,
//! 400) with an RFC 9457 body; the [`Rejection`](palisade_core::Rejection)
//! travels in the response extensions. Allowed requests reach the inner
//! service with a [`RequestAuth`] in their
//! extensions (the [`Identity`](palisade_core::Identity), when there is one, and the access decision),
//! and with the header edits of the authenticators applied (the token removed
//! unless `forward_original_token`). What to do is decided by
//! `palisade-core` for both frameworks; this crate only translates types.
//!
//! # Serving
//! [`serve()`] is `axum::serve` with limits on slow, silent and greedy
//! clients (a header-read and an idle timeout, a body limit:
//! [`ServerLimits`](palisade_core::limits::ServerLimits)), the same as
//! actix-web's under `palisade-actix`; `palisade_mtls::axum::serve_with`
//! serves TLS and mutual TLS on the same loop. [`BodyLimitLayer`] is the
//! body limit alone.
//!
//! # Connection facts under `axum::serve`
//! Istio's `ports`, `destination.ip` and `source.ip` read the connection's
//! addresses. [`serve()`] and `palisade_mtls::axum::serve` provide them; under
//! plain `axum::serve`, ask axum for them with [`ConnectAddrs`]:
//! `axum::serve(listener, app.into_make_service_with_connect_info::<ConnectAddrs>())`.
//!
//! # Under tonic's server
//! With the `tonic` feature the layer also runs under tonic's own server,
//! `tonic::transport::Server::builder().layer(PalisadeLayer::new(guard).post_only())`:
//! policies read the connection's addresses tonic records,
//! [`post_only`](PalisadeLayer::post_only) refuses a call made with another
//! method than `POST` before tonic runs it, and [`Require<S>`] (like the
//! other services here) is a tonic `NamedService`, so
//! `add_service(require(..).layer(svc))` puts a requirement on one gRPC
//! service. mTLS peers are known under Palisade's servers only
//! (`docs/grpc.md`).
//!
//! # Names in the two adapters
//! | axum / tower | actix-web | what |
//! |---|---|---|
//! | [`PalisadeLayer`] → [`Palisade<S>`], [`ResponseFuture`] | `Palisade` (a `Transform`) → `PalisadeMiddleware<S>` | the guard on every request |
//! | [`RequireLayer`] ([`require`]) → [`Require<S>`], [`ResponseFuture`] | `Require` → `RequireMiddleware<S>` | a route-level policy |
//! | `Identity`, `Option<Identity>`, `Claims<T>`, `Authorized<R>`, `RequestAuth` | the same | extractors |

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, HOST, HeaderName, HeaderValue};
use http::{Request, Response};
use palisade_core::adapter::{
    Decision, Rendering, Reply, RequestTarget, ResponseEdits, ResponseTarget, TargetRewrite, http_response,
};
use palisade_core::authn::{ConnectionInfo, RequestHead};
use palisade_core::{BoxFuture, Check, Guard, RequestAuth};
use tower_layer::Layer;
use tower_service::Service;

mod limit;
mod require;
pub mod serve;
#[cfg(feature = "tonic")]
mod tonic_server;

pub use limit::{BodyLimit, BodyLimitFuture, BodyLimitLayer, GrpcStreams, GrpcStreamsLayer};
pub use require::{Require, RequireLayer, require};
pub use serve::{Handshake, Plain, serve, serve_with};

/// Adds Palisade to a tower stack. Clone it freely: it shares one [`Guard`].
#[derive(Clone, Debug)]
#[must_use]
pub struct PalisadeLayer {
    guard: Guard,
    post_only: bool,
}

impl PalisadeLayer {
    /// A layer that runs `guard` on every request.
    pub fn new(guard: Guard) -> Self {
        Self {
            guard,
            post_only: false,
        }
    }

    /// Refuses every request whose method is not `POST` with 405 (`allow:
    /// POST`), before the guard: for a server of gRPC services only, such
    /// as tonic's own `Server`. gRPC's method is `POST`, the one policies
    /// name for it (`methods: [POST]`), but tonic runs the call a path
    /// names whatever the method, so without this a `DENY` written for
    /// `POST` would not stop a `PUT` of the same call. (Served as
    /// `docs/grpc.md` shows, under an axum router with `post_service`,
    /// the router refuses other methods itself.) A CORS layer that answers
    /// grpc-web's preflights goes in front of this one.
    ///
    /// ```
    /// # fn f(guard: palisade_core::Guard) {
    /// let layer = palisade_axum::PalisadeLayer::new(guard).post_only();
    /// // tonic::transport::Server::builder().layer(layer).add_service(…)
    /// # let _ = layer;
    /// # }
    /// ```
    pub fn post_only(mut self) -> Self {
        self.post_only = true;
        self
    }

    /// Wraps a whole axum [`Router`](axum::Router): Palisade runs before
    /// routing, so the router sees the normalised path the policy matched,
    /// and the result is a `Router` that `axum::serve` takes as it is.
    /// (Under [`serve()`], `self.layer(router.with_state(()))` routes the
    /// same without the outer router this needs; axum's `OriginalUri` then
    /// holds the normalised target rather than the one sent.)
    ///
    /// ```
    /// # fn f(guard: palisade_core::Guard) {
    /// use axum::{Router, routing::get};
    /// let app = palisade_axum::PalisadeLayer::new(guard)
    ///     .wrap(Router::new().route("/list", get(|| async { "[]" })));
    /// # }
    /// ```
    ///
    /// The result is a [`GuardedRouter`], not a `Router`: routes added to
    /// a router after it is wrapped (`.route`, `.merge`, `.nest`,
    /// `.fallback`) would be matched before the guarded one and served
    /// unchecked. Add every route before wrapping.
    pub fn wrap(&self, router: axum::Router) -> GuardedRouter {
        // Bound to its state now, as `axum::serve` binds the outer router:
        // a router called as a service unbound prepares each route on
        // every request.
        GuardedRouter(axum::Router::new().fallback_service(self.layer(router.with_state(()))))
    }
}

/// A router with the guard around every route ([`PalisadeLayer::wrap`]):
/// what `axum::serve` serves, as a `Router`, and what tower layers wrap
/// ([`layer`](Self::layer), outside the guard), but closed to new routes,
/// which would be matched before the guarded ones and served unchecked.
///
/// ```
/// # async fn f(guard: palisade_core::Guard) -> std::io::Result<()> {
/// use axum::{Router, extract::Request, middleware::Next, response::Response, routing::get};
/// async fn trace(req: Request, next: Next) -> Response {
///     next.run(req).await
/// }
/// let app = palisade_axum::PalisadeLayer::new(guard)
///     .wrap(Router::new().route("/list", get(|| async { "[]" })))
///     // Outside the guard: runs first.
///     .layer(axum::middleware::from_fn(trace));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// axum::serve(listener, app.into_make_service_with_connect_info::<palisade_axum::ConnectAddrs>()).await
/// # }
/// ```
///
/// A route added after wrapping does not compile:
///
/// ```compile_fail
/// # fn f(guard: palisade_core::Guard) {
/// use axum::{Router, routing::get};
/// let app = palisade_axum::PalisadeLayer::new(guard)
///     .wrap(Router::new().route("/list", get(|| async { "[]" })))
///     .route("/admin", get(|| async { "unguarded" }));
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct GuardedRouter(axum::Router);

impl GuardedRouter {
    /// Adds `layer` around the guard (its requests reach the guard after
    /// it), as [`Router::layer`](axum::Router::layer) does: CORS, tracing,
    /// request ids.
    pub fn layer<L>(self, layer: L) -> Self
    where
        L: Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: Service<axum::extract::Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<axum::extract::Request>>::Response: axum::response::IntoResponse + 'static,
        <L::Service as Service<axum::extract::Request>>::Error: Into<std::convert::Infallible> + 'static,
        <L::Service as Service<axum::extract::Request>>::Future: Send + 'static,
    {
        Self(self.0.layer(layer))
    }

    /// The service `axum::serve` (or a server that makes a service per
    /// connection) takes.
    pub fn into_make_service(self) -> axum::routing::IntoMakeService<axum::Router> {
        self.0.into_make_service()
    }

    /// The service `axum::serve` takes with the connection's addresses
    /// ([`ConnectAddrs`], which rules on ports and addresses read).
    pub fn into_make_service_with_connect_info<C>(
        self,
    ) -> axum::extract::connect_info::IntoMakeServiceWithConnectInfo<axum::Router, C> {
        self.0.into_make_service_with_connect_info()
    }

    /// The router itself, open to new routes again: a route, a merged or
    /// nested router, or a fallback added to it is matched before the
    /// guarded routes and served without the guard (a health check left
    /// open on purpose, say). Prefer a policy that opens the route.
    pub fn into_router(self) -> axum::Router {
        self.0
    }
}

/// What `axum::serve(listener, app)` calls for each connection.
impl<L: axum::serve::Listener> Service<axum::serve::IncomingStream<'_, L>> for GuardedRouter {
    type Response = axum::Router;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<axum::Router, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: axum::serve::IncomingStream<'_, L>) -> Self::Future {
        std::future::ready(Ok(self.0.clone()))
    }
}

impl<B> Service<Request<B>> for GuardedRouter
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<B>>::poll_ready(&mut self.0, cx)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.0.call(req)
    }
}

impl<S> Layer<S> for PalisadeLayer {
    type Service = Palisade<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Palisade {
            inner,
            guard: self.guard.clone(),
            post_only: self.post_only,
        }
    }
}

/// The service [`PalisadeLayer`] produces.
///
/// The response's edits (a renewed session cookie, a Negotiate
/// mutual-authentication token, `Cache-Control: private`) are made to the
/// inner service's response; when it answers with an `Err` (a fallible
/// tower stack, not axum's `Router`, whose error is `Infallible`) there is
/// no response to make them to, and the error is passed on as it is: turn
/// errors into responses inside the layer (`HandleErrorLayer`) to keep
/// them.
#[derive(Clone, Debug)]
pub struct Palisade<S> {
    inner: S,
    guard: Guard,
    post_only: bool,
}

/// The local and remote address of a plain TCP connection, for
/// `axum::serve(listener, app.into_make_service_with_connect_info::<ConnectAddrs>())`:
/// with it, Istio's `ports`, `destination.ip` and `source.ip` rules see the
/// connection. (`palisade_mtls::axum::serve` provides them itself.)
///
/// A test that calls the router in process (`oneshot`) stands for a
/// connection with `axum::extract::ConnectInfo(ConnectAddrs::new(remote,
/// Some(local)))` in the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectAddrs {
    /// The caller's address.
    pub remote: SocketAddr,
    /// The address the connection arrived on.
    pub local: Option<SocketAddr>,
}

impl ConnectAddrs {
    /// The addresses of a connection from `remote`, arrived on `local`.
    #[must_use]
    pub fn new(remote: SocketAddr, local: Option<SocketAddr>) -> Self {
        Self { remote, local }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for ConnectAddrs
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self {
            remote: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
}

/// An `http` 1 request, as the core reads it.
struct HttpHead<'a, B>(&'a Request<B>, std::borrow::Cow<'a, str>);

/// An `http` 1 request, as the core edits it.
struct HttpRequest<'a, B>(&'a mut Request<B>);

impl<'a, B> HttpHead<'a, B> {
    /// The request with the path it carries (inside a nest, without the
    /// nest's prefix): enough to render a reply for it.
    fn as_sent(req: &'a Request<B>) -> Self {
        Self(req, std::borrow::Cow::Borrowed(req.uri().path()))
    }

    /// The request as policies see it. Inside `Router::nest("/api", …)`
    /// axum strips the prefix from the URI; policies match the full path
    /// (as actix-web's scopes show it, and Istio sees it), so a literal
    /// prefix is put back. A templated one (`/t/{tenant}`) cannot be:
    /// `Err` with the refusal, unless the policy reads no path
    /// (`reads_path` false: a role check decides the same anywhere).
    fn new(req: &'a Request<B>, reads_path: bool) -> Result<Self, Reply> {
        let Some(nested) = req.extensions().get::<axum::extract::NestedPath>() else {
            return Ok(Self::as_sent(req));
        };
        let prefix = nested.as_str().trim_end_matches('/');
        if prefix.contains('{') {
            if !reads_path {
                return Ok(Self::as_sent(req));
            }
            static TEMPLATED: palisade_core::logging::Sparse = palisade_core::logging::Sparse::per_minute();
            if TEMPLATED.due() {
                tracing::error!(
                    target: palisade_core::LOG_TARGET,
                    prefix,
                    "Palisade runs inside a router nested at a templated path: the full path cannot be known, refused with 400. Add the layer outside the nest"
                );
            }
            let reply = Reply::from(palisade_core::Rejection::malformed_path(
                "the request path cannot be checked here",
            ));
            return Err(Rendering::of(&Self::as_sent(req)).render(reply));
        }
        let path = match req.uri().path() {
            // axum hands `/api` and `/api/` alike to the nested service as
            // `/`: the request's own tells them apart.
            "/" if req
                .extensions()
                .get::<axum::extract::OriginalUri>()
                .is_some_and(|o| o.path().ends_with('/')) =>
            {
                format!("{prefix}/")
            }
            "/" => prefix.to_owned(),
            rest => format!("{prefix}{rest}"),
        };
        Ok(Self(req, std::borrow::Cow::Owned(path)))
    }

    fn connect_addrs(&self) -> Option<&ConnectAddrs> {
        self.0
            .extensions()
            .get::<axum::extract::ConnectInfo<ConnectAddrs>>()
            .map(|c| &c.0)
    }
}

/// A header name the core passes: the two read on every request
/// pre-parsed (looking a header up by `&str` parses the name each time).
fn lookup<'h>(headers: &'h http::HeaderMap, name: &str) -> http::header::GetAll<'h, HeaderValue> {
    match name {
        "authorization" => headers.get_all(AUTHORIZATION),
        "cookie" => headers.get_all(COOKIE),
        _ => headers.get_all(name),
    }
}

impl<B> HttpHead<'_, B> {
    /// The protocol an HTTP/2 extended `CONNECT` (RFC 8441) opens, such as
    /// `websocket`. Envoy hands such a request to its filters as the
    /// HTTP/1.1 upgrade it stands for (`GET`, `Upgrade: websocket`,
    /// `Connection: upgrade`), and this adapter shows it to the core so:
    /// a rule on `GET` or on the `upgrade` header, and the cross-origin
    /// check of a WebSocket's opening request, hold over HTTP/2 too.
    fn h2_upgrade(&self) -> Option<&str> {
        if self.0.method() != http::Method::CONNECT {
            return None;
        }
        let protocol = self.0.extensions().get::<hyper::ext::Protocol>()?.as_str();
        (!protocol.is_empty() && protocol != "bytestream").then_some(protocol)
    }

    /// The headers of the HTTP/1.1 upgrade an HTTP/2 extended `CONNECT`
    /// stands for (HTTP/2 carries neither).
    fn upgrade_header(&self, name: &str) -> Option<&[u8]> {
        match name {
            "upgrade" => self.h2_upgrade().map(str::as_bytes),
            "connection" => self.h2_upgrade().map(|_| b"upgrade".as_slice()),
            _ => None,
        }
    }
}

impl<B> RequestHead for HttpHead<'_, B> {
    fn method(&self) -> &str {
        if self.h2_upgrade().is_some() {
            return "GET";
        }
        self.0.method().as_str()
    }
    fn path(&self) -> &str {
        &self.1
    }
    fn query(&self) -> Option<&str> {
        self.0.uri().query()
    }
    fn host(&self) -> Option<&str> {
        palisade_core::adapter::request_host(
            self.0.headers().get(HOST).and_then(|h| h.to_str().ok()),
            self.0.uri().authority().map(http::uri::Authority::as_str),
        )
    }
    fn authority(&self) -> Option<&str> {
        self.0.uri().authority().map(http::uri::Authority::as_str)
    }
    fn header_value(&self, name: &str, index: usize) -> Option<&[u8]> {
        if index == 0
            && let Some(v) = self.upgrade_header(name)
        {
            return Some(v);
        }
        lookup(self.0.headers(), name)
            .into_iter()
            .nth(index)
            .map(HeaderValue::as_bytes)
    }
    fn for_each_header<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        if let Some(v) = self.upgrade_header(name) {
            return f(v);
        }
        lookup(self.0.headers(), name)
            .into_iter()
            .for_each(|v| f(v.as_bytes()));
    }
    fn connection(&self) -> Option<&ConnectionInfo> {
        // `palisade_mtls::axum::serve` shares one `Arc` per connection.
        let ext = self.0.extensions();
        ext.get::<std::sync::Arc<ConnectionInfo>>()
            .map(|c| &**c)
            .or_else(|| ext.get::<ConnectionInfo>())
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        let addr = self
            .connection()
            .and_then(|c| c.remote_addr)
            .or_else(|| self.connect_addrs().map(|c| c.remote))
            .or_else(|| {
                self.0
                    .extensions()
                    .get::<axum::extract::ConnectInfo<SocketAddr>>()
                    .map(|c| c.0)
            });
        #[cfg(feature = "tonic")]
        let addr = addr.or_else(|| tonic_server::addrs(self.0.extensions())?.remote_addr());
        addr
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        let addr = self
            .connection()
            .and_then(|c| c.local_addr)
            .or_else(|| self.connect_addrs().and_then(|c| c.local));
        #[cfg(feature = "tonic")]
        let addr = addr.or_else(|| tonic_server::addrs(self.0.extensions())?.local_addr());
        addr
    }
}

impl<B> RequestTarget for HttpRequest<'_, B> {
    fn remove_header(&mut self, name: &str) {
        match name {
            "authorization" => self.0.headers_mut().remove(AUTHORIZATION),
            _ => self.0.headers_mut().remove(name),
        };
    }

    fn set_header(&mut self, name: &str, value: &str) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.0.headers_mut().insert(n, v);
        }
    }

    fn rewrite_target(&mut self, target: &str) -> Result<(), TargetRewrite> {
        let ext = self.0.extensions();
        if ext.get::<axum::extract::MatchedPath>().is_some()
            || ext.get::<axum::extract::NestedPath>().is_some()
        {
            return Err(TargetRewrite::AlreadyRouted {
                advice: "PalisadeLayer was added with Router::layer: wrap the whole Router instead (PalisadeLayer::new(guard).wrap(router))",
            });
        }
        let mut parts = self.0.uri().clone().into_parts();
        parts.path_and_query =
            Some(http::uri::PathAndQuery::try_from(target).map_err(|_| TargetRewrite::Invalid)?);
        *self.0.uri_mut() = http::Uri::from_parts(parts).map_err(|_| TargetRewrite::Invalid)?;
        Ok(())
    }

    fn insert_auth(&mut self, auth: RequestAuth) {
        self.0.extensions_mut().insert(auth);
    }
}

/// An `http` 1 response, as the core edits it.
struct HttpResponse<'a, B>(&'a mut Response<B>);

impl<B> ResponseTarget for HttpResponse<'_, B> {
    fn append_header(&mut self, name: &str, value: &str) {
        if let Some((n, v)) = palisade_core::adapter::http_header(name, value) {
            self.0.headers_mut().append(n, v);
        }
    }

    fn header_values(&self, name: &str) -> Option<Vec<&str>> {
        self.0
            .headers()
            .get_all(name)
            .into_iter()
            .map(|v| v.to_str().ok())
            .collect()
    }

    fn replace_header(&mut self, name: &str, value: &str) {
        if let Some((n, v)) = palisade_core::adapter::http_header(name, value) {
            self.0.headers_mut().insert(n, v);
        }
    }
}

/// A reply of the core as a response of the layer.
fn reply<B>(r: Reply) -> Response<ResponseBody<B>> {
    http_response(r, |text| ResponseBody::problem(Bytes::from(text)))
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Palisade<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ReqBody: http_body::Body + Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        if self.post_only && req.method() != http::Method::POST {
            return ResponseFuture::refused(not_post(&req), req);
        }
        let check = match HttpHead::new(&req, true) {
            Ok(head) => self.guard.check(&head),
            Err(reply) => return ResponseFuture::refused(reply, req),
        };
        // A decision made at once is applied here, the request kept in
        // this frame until it goes to the inner service: through `start`
        // it was copied once more.
        match check {
            Check::Ready(decision) => match admit(decision, &mut req) {
                Ok(edits) => ResponseFuture {
                    inner: Some(self.inner.call(req)),
                    edits,
                    other: None,
                },
                Err(reply) => ResponseFuture::refused(reply, req),
            },
            check => ResponseFuture::start(&mut self.inner, req, check, admit),
        }
    }
}

/// The answer to a request [`PalisadeLayer::post_only`] refuses.
#[cold]
fn not_post<B>(req: &Request<B>) -> Reply {
    let reply = Reply::problem(405, "method", "Method not allowed", "only POST is served here")
        .header("allow", "POST");
    Rendering::of(&HttpHead::as_sent(req)).render(reply)
}

/// Applies the guard's decision to the request.
#[inline]
fn admit<B>(decision: Decision, req: &mut Request<B>) -> Result<Option<ResponseEdits>, Reply> {
    decision
        .apply(&mut HttpRequest(req))
        .map(|e| (!e.is_empty()).then_some(e))
}

/// A verdict applied to the request: the edits for the response, or the
/// reply to send instead of calling the inner service.
type Admitted<B> = Result<(Request<B>, Option<ResponseEdits>), Reply>;

pin_project_lite::pin_project! {
    /// The future of [`Palisade`] and [`Require`]: the inner service's
    /// response with the core's edits, or the core's reply.
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // Until the answer, exactly one of `inner` and `other` is `Some`.
        // The inner service's future is a field of its own rather than a
        // variant among the other states: as a variant it was copied twice
        // on its way out of `call`, as a field once (a few hundred bytes
        // each with axum's router; `benches/instructions.sh` counts it).
        #[pin]
        inner: Option<S::Future>,
        edits: Option<ResponseEdits>,
        other: Option<Box<Other<S, ReqBody>>>,
    }
}

/// What a [`ResponseFuture`] waits for when it is not (yet) the inner
/// service's response: boxed, as only refusals and checks that wait have it.
enum Other<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    Reply(Option<Reply>),
    Finishing(BoxFuture<Reply>),
    Checking {
        check: BoxFuture<Admitted<ReqBody>>,
        svc: Option<S>,
    },
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>> + Clone,
    ReqBody: http_body::Body + Send + 'static,
{
    /// Calls `inner` once `check` is known and `admit` applied it to the
    /// request (now when it is ready, else in the future). Inlined into
    /// [`Require`](crate::Require)'s `call`, and into [`Palisade`]'s for a
    /// check that waits.
    #[inline]
    fn start<V: Send + 'static>(
        inner: &mut S,
        mut req: Request<ReqBody>,
        check: Check<V>,
        admit: fn(V, &mut Request<ReqBody>) -> Result<Option<ResponseEdits>, Reply>,
    ) -> Self {
        let other = match check {
            Check::Ready(verdict) => match admit(verdict, &mut req) {
                Ok(edits) => {
                    return Self {
                        inner: Some(inner.call(req)),
                        edits,
                        other: None,
                    };
                }
                Err(reply) => return Self::refused(reply, req),
            },
            Check::Pending(fut) => {
                // The readied service goes into the future; a clone stays.
                let clone = inner.clone();
                Other::Checking {
                    check: Box::pin(async move {
                        let verdict = fut.await;
                        match admit(verdict, &mut req) {
                            Ok(edits) => Ok((req, edits)),
                            Err(reply) => Err(with_body(reply, req).await),
                        }
                    }),
                    svc: Some(std::mem::replace(inner, clone)),
                }
            }
        };
        Self {
            inner: None,
            edits: None,
            other: Some(Box::new(other)),
        }
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
    ReqBody: http_body::Body + Send + 'static,
{
    /// The future of a request answered with `reply` instead of the inner
    /// service's response.
    #[cold]
    #[inline(never)]
    fn refused(reply: Reply, req: Request<ReqBody>) -> Self {
        let other = if reply.body_wanted().is_some() {
            Other::Finishing(Box::pin(with_body(reply, req)))
        } else {
            Other::Reply(Some(reply))
        };
        Self {
            inner: None,
            edits: None,
            other: Some(Box::new(other)),
        }
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
            if let Some(fut) = this.inner.as_mut().as_pin_mut() {
                let mut res = ready!(fut.poll(cx))?;
                if let Some(e) = this.edits.take() {
                    e.apply(&mut HttpResponse(&mut res));
                }
                return Poll::Ready(Ok(res.map(ResponseBody::inner)));
            }
            let (req, edits, mut svc) = match this.other.as_deref_mut() {
                None => return Poll::Ready(Ok(answered())),
                Some(Other::Reply(r)) => return Poll::Ready(Ok(r.take().map_or_else(answered, reply))),
                Some(Other::Finishing(r)) => return Poll::Ready(Ok(reply(ready!(r.as_mut().poll(cx))))),
                Some(Other::Checking { check, svc }) => {
                    let admitted = ready!(check.as_mut().poll(cx));
                    let Some(svc) = svc.take() else {
                        return Poll::Ready(Ok(answered()));
                    };
                    match admitted {
                        Ok((req, edits)) => (req, edits, svc),
                        Err(r) => return Poll::Ready(Ok(reply(r))),
                    }
                }
            };
            *this.other = None;
            *this.edits = edits;
            this.inner.set(Some(svc.call(req)));
        }
    }
}

/// The reply made from the request body, when the reply wants it (a
/// back-channel logout's form); otherwise the reply itself.
async fn with_body<B: http_body::Body + Send + 'static>(reply: Reply, req: Request<B>) -> Reply {
    use bytes::Buf;
    let mut body = Box::pin(req.into_body());
    reply
        .finish_from_body(|cx| {
            body.as_mut().poll_frame(cx).map(|frame| {
                // A frame's data as `Bytes` (no copy when it is `Bytes`).
                frame.map(|f| f.map(|f| f.into_data().ok().map(|mut d| d.copy_to_bytes(d.remaining()))))
            })
        })
        .await
}

/// The answer to a future polled after it completed (a caller bug).
fn answered<B>() -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::problem(Bytes::new()));
    *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    res
}

impl<S, ReqBody> std::fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// The response body: the inner service's, or a problem document.
    pub struct ResponseBody<B> {
        #[pin]
        inner: BodyKind<B>,
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            BodyKind::Inner { .. } => "Inner",
            BodyKind::Problem { .. } => "Problem",
        };
        f.debug_tuple("ResponseBody")
            .field(&format_args!("{kind}"))
            .finish()
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

    /// A refusal's body; an empty one (a gRPC refusal, HEAD) is ended
    /// from the start, so hyper sends HTTP/2 headers that end the stream:
    /// gRPC's trailers-only answer, whose `grpc-status` clients read only
    /// there (grpc-go reports `INTERNAL` for headers followed by an empty
    /// DATA frame).
    fn problem(bytes: Bytes) -> Self {
        Self {
            inner: BodyKind::Problem {
                bytes: (!bytes.is_empty()).then_some(bytes),
            },
        }
    }
}

/// An empty body, ended from the start: what a layer in front of the
/// guard that answers by itself needs (tower-http's `CorsLayer` answers a
/// preflight with one).
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::problem(Bytes::new())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_refusal_body_is_ended_from_the_start() {
        use http_body::Body as _;
        let empty = ResponseBody::<axum::body::Body>::problem(Bytes::new());
        assert!(empty.is_end_stream(), "a trailers-only gRPC answer");
        assert_eq!(empty.size_hint().exact(), Some(0));
        let problem = ResponseBody::<axum::body::Body>::problem(Bytes::from_static(b"{}"));
        assert!(!problem.is_end_stream());
        assert_eq!(problem.size_hint().exact(), Some(2));
        // Public types are `Debug` (C-DEBUG), a body saying which it is.
        assert_eq!(format!("{problem:?}"), "ResponseBody(Problem)");
        fn debug<T: std::fmt::Debug>() {}
        debug::<ResponseFuture<axum::Router, axum::body::Body>>();
        debug::<crate::limit::BodyLimitFuture<std::future::Ready<()>>>();
    }

    #[test]
    fn the_host_is_the_one_the_application_sees() {
        // `Host` first, as axum's `Host` extractor reads it: a `hosts` rule
        // decides on the host the application routes by.
        let absolute = Request::builder()
            .uri("http://public.example/p")
            .header(HOST, "admin.example")
            .body(())
            .unwrap();
        assert_eq!(HttpHead(&absolute, "/p".into()).host(), Some("admin.example"));
        // The target's host is seen too: a policy on hosts refuses the two.
        assert_eq!(
            HttpHead(&absolute, "/p".into()).authority(),
            Some("public.example")
        );
        assert!(palisade_core::adapter::ambiguous_host(&HttpHead(
            &absolute,
            "/p".into()
        )));
        // Without `Host` (HTTP/2), the authority, without user information.
        let h2 = Request::builder()
            .uri("http://x@admin.example:8080/p")
            .body(())
            .unwrap();
        assert_eq!(HttpHead(&h2, "/p".into()).host(), Some("admin.example:8080"));
    }
}
