//! Palisade for actix-web 4: a middleware that authenticates and authorizes
//! every request, and (through `palisade-core`'s `actix` feature) the
//! extractors [`Identity`](palisade_core::Identity), `Option<Identity>` and
//! [`Claims<T>`](palisade_core::Claims), with the same meaning as in axum.
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use palisade_actix::Palisade;
//! use palisade_core::{Guard, Identity};
//! use palisade_jwt::{JwtAuthenticator, Provider};
//!
//! async fn whoami(id: Identity) -> String {
//!     format!("hello {}", id.subject().unwrap_or("?"))
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let jwt = JwtAuthenticator::builder()
//!     .provider(Provider::builder("https://kc.example/realms/demo").audience("reviews").build()?)
//!     .build()?;
//! let guard = Guard::builder().authenticator(jwt).build()?;
//! HttpServer::new(move || App::new().wrap(Palisade::new(guard.clone())).route("/whoami", web::get().to(whoami)))
//!     .bind("127.0.0.1:9081")?
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Refused requests are answered with a response (not an `Err`), so outer
//! middleware such as CORS still runs on them. The
//! [`Rejection`](palisade_core::Rejection) travels in the response extensions.
//! Allowed requests reach the app with a
//! [`RequestAuth`] in their extensions (the
//! [`Identity`](palisade_core::Identity), when there is one, and the access decision) and with the
//! authenticators' header edits applied (the token removed unless
//! `forward_original_token`). What to do is decided by `palisade-core` for
//! both frameworks; this crate only translates types.
//!
//! # Connection facts
//! Istio's `ports`, `destination.ip` and `source.ip` read the connection's
//! addresses: add [`on_connect`] to the `HttpServer`
//! (`palisade_mtls::ServerTls::actix_on_connect` for TLS listeners).
//!
//! # Names in the two adapters
//! | actix-web | axum / tower | what |
//! |---|---|---|
//! | [`Palisade`] (a `Transform`) → [`PalisadeMiddleware<S>`] | `PalisadeLayer` → `Palisade<S>` | the guard on every request |
//! | [`ResponseFuture<S, B>`] | `ResponseFuture<S, ReqBody>` | the middleware's future (named, not boxed) |
//! | [`Require`] → [`RequireMiddleware<S>`] | `RequireLayer` (`require`) → `Require<S>` | a route-level policy |
//! | `Identity`, `Option<Identity>`, `Claims<T>`, `Authorized<R>`, `RequestAuth` | the same | extractors |

use std::future::{Future, Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::Uri;
use actix_web::http::header::{AUTHORIZATION, COOKIE, HOST, HeaderName, HeaderValue};
use actix_web::http::uri::PathAndQuery;
use actix_web::{Error, HttpMessage};
use palisade_core::adapter::{
    Reply, RequestTarget, ResponseEdits, ResponseTarget, TargetRewrite, actix_response,
};
use palisade_core::authn::{ConnectionInfo, RequestHead};
use palisade_core::{Check, Guard, RequestAuth};

mod limit;
mod require;

pub use limit::{Answer, BodyLimit, BodyLimitMiddleware, speaks_http2, with_limits};
pub use require::{Require, RequireMiddleware};

/// Records a plain TCP connection's addresses for Istio's `ports`,
/// `destination.ip` and `source.ip` rules, and puts the watch on it with
/// which [`BodyLimit`] times the heads of its later requests:
/// `HttpServer::new(…).on_connect(palisade_actix::on_connect)` ([`with_limits`]
/// sets it), the counterpart of axum's `ConnectAddrs`. (Without it the local
/// address is the listener's, unknown behind a wildcard bind;
/// `palisade_mtls`'s `on_connect` does both for TLS connections.)
pub fn on_connect(connection: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        let mut info = ConnectionInfo::default();
        info.remote_addr = tcp.peer_addr().ok();
        info.local_addr = tcp.local_addr().ok();
        data.insert(info);
        limit::watch(tcp, data);
    }
}

/// A boxed future (actix-web services are `!Send`): `BodyLimit`'s, and
/// [`ResponseFuture`]'s while a check waits.
type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// The middleware factory: `App::new().wrap(Palisade::new(guard))`.
#[derive(Clone, Debug)]
#[must_use]
pub struct Palisade {
    guard: Guard,
}

impl Palisade {
    /// Runs `guard` on every request of the wrapped app, scope or resource.
    pub fn new(guard: Guard) -> Self {
        Self { guard }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Palisade
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = PalisadeMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(PalisadeMiddleware {
            service: Rc::new(service),
            guard: self.guard.clone(),
        }))
    }
}

/// The service [`Palisade`] wraps around the app.
#[derive(Debug)]
pub struct PalisadeMiddleware<S> {
    service: Rc<S>,
    guard: Guard,
}

/// An actix-web request, as the core reads and edits it.
struct ActixRequest<'a>(&'a mut ServiceRequest);

/// An actix-web request, as the core reads it.
struct ActixHead<'a>(&'a ServiceRequest);

impl<'a> ActixHead<'a> {
    /// The values of a header; the two read on every request pre-parsed
    /// (looking a header up by `&str` parses the name each time).
    fn values(&self, name: &str) -> std::slice::Iter<'a, HeaderValue> {
        match name {
            "authorization" => self.0.headers().get_all(AUTHORIZATION),
            "cookie" => self.0.headers().get_all(COOKIE),
            _ => self.0.headers().get_all(name),
        }
    }
}

impl RequestHead for ActixHead<'_> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }
    fn path(&self) -> &str {
        self.0.path()
    }
    fn query(&self) -> Option<&str> {
        self.0.uri().query()
    }
    fn host(&self) -> Option<&str> {
        palisade_core::adapter::request_host(
            self.0.headers().get(HOST).and_then(|h| h.to_str().ok()),
            self.0.uri().authority().map(|a| a.as_str()),
        )
    }
    fn authority(&self) -> Option<&str> {
        self.0.uri().authority().map(|a| a.as_str())
    }
    fn header_value(&self, name: &str, index: usize) -> Option<&[u8]> {
        self.values(name).nth(index).map(HeaderValue::as_bytes)
    }
    fn for_each_header<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        self.values(name).for_each(|v| f(v.as_bytes()));
    }
    fn connection(&self) -> Option<&ConnectionInfo> {
        self.0.conn_data::<ConnectionInfo>()
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        self.connection()
            .and_then(|c| c.remote_addr)
            .or_else(|| self.0.peer_addr())
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        // Without `on_connect`, the listener's address: right for a
        // listener on one address, unknown (not `0.0.0.0`) for a wildcard.
        self.connection()
            .and_then(|c| c.local_addr)
            .or_else(|| Some(self.0.app_config().local_addr()).filter(|a| !a.ip().is_unspecified()))
    }
}

impl RequestTarget for ActixRequest<'_> {
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
        let routed = self.0.match_info();
        if routed.unprocessed().len() != routed.as_str().len() {
            return Err(TargetRewrite::AlreadyRouted {
                advice: "Palisade wraps a scope: wrap the App instead (App::new().wrap(Palisade::new(guard)))",
            });
        }
        let mut parts = self.0.uri().clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|_| TargetRewrite::Invalid)?);
        let uri = Uri::from_parts(parts).map_err(|_| TargetRewrite::Invalid)?;
        self.0.match_info_mut().get_mut().update(&uri);
        self.0.head_mut().uri = uri;
        Ok(())
    }

    fn insert_auth(&mut self, auth: RequestAuth) {
        self.0.extensions_mut().insert(auth);
    }
}

/// An actix-web response's headers, as the core edits them.
struct ActixResponse<'a>(&'a mut actix_web::http::header::HeaderMap);

impl ResponseTarget for ActixResponse<'_> {
    fn append_header(&mut self, name: &str, value: &str) {
        if let Some((n, v)) = palisade_core::adapter::actix_header(name, value) {
            self.0.append(n, v);
        }
    }

    fn header_values(&self, name: &str) -> Option<Vec<&str>> {
        self.0.get_all(name).map(|v| v.to_str().ok()).collect()
    }

    fn replace_header(&mut self, name: &str, value: &str) {
        if let Some((n, v)) = palisade_core::adapter::actix_header(name, value) {
            self.0.insert(n, v);
        }
    }
}

/// The answer of the middlewares, from the core's verdict on a request.
type Answered<B> = Result<ServiceResponse<EitherBody<B>>, Error>;

pin_project_lite::pin_project! {
    /// The future of [`PalisadeMiddleware`] and [`RequireMiddleware`]: the
    /// app's response with the core's edits, or the core's reply. A
    /// request the core admitted at once (a cached token) is not boxed:
    /// the future is the app's own, plus the response's edits.
    pub struct ResponseFuture<S, B>
    where
        S: Service<ServiceRequest>,
    {
        #[pin]
        kind: Kind<S, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<S, B>
    where
        S: Service<ServiceRequest>,
    {
        Inner { #[pin] fut: S::Future, edits: Option<ResponseEdits> },
        Replied { res: Option<ServiceResponse<EitherBody<B>>> },
        Waiting { fut: LocalFuture<Answered<B>> },
    }
}

impl<S: Service<ServiceRequest>, B> std::fmt::Debug for ResponseFuture<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.kind {
            Kind::Inner { .. } => "calling the app",
            Kind::Replied { .. } => "replied",
            Kind::Waiting { .. } => "checking",
        };
        f.debug_tuple("ResponseFuture").field(&state).finish()
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Output = Answered<B>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        match self.project().kind.project() {
            KindProj::Inner { fut, edits } => match fut.poll(cx) {
                Poll::Ready(res) => Poll::Ready(answered(res, edits.take())),
                Poll::Pending => Poll::Pending,
            },
            KindProj::Replied { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Ready(Err(actix_web::error::ErrorInternalServerError(
                    "polled after completion",
                ))),
            },
            KindProj::Waiting { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// Calls `service` once `check` is known and `admit` applied it to the
/// request: the handler's response with the core's edits, or the core's
/// reply (a response, not an `Err`, so outer middleware still runs).
/// Inlined, so a ready check builds the app's future in place.
#[inline]
fn respond<S, B, V: 'static>(
    service: &Rc<S>,
    mut req: ServiceRequest,
    check: Check<V>,
    admit: fn(V, &mut ServiceRequest) -> Result<Option<ResponseEdits>, Reply>,
) -> ResponseFuture<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    let kind = match check {
        Check::Ready(verdict) => match admit(verdict, &mut req) {
            Ok(edits) => Kind::Inner {
                fut: service.call(req),
                edits,
            },
            Err(reply) if reply.body_wanted().is_none() => Kind::Replied {
                res: Some(refused(req, actix_response(reply))),
            },
            Err(reply) => Kind::Waiting {
                fut: Box::pin(refuse(req, reply)),
            },
        },
        Check::Pending(check) => {
            let service = Rc::clone(service);
            Kind::Waiting {
                fut: Box::pin(async move {
                    match admit(check.await, &mut req) {
                        Ok(edits) => answered(service.call(req).await, edits),
                        Err(reply) => refuse(req, reply).await,
                    }
                }),
            }
        }
    };
    ResponseFuture { kind }
}

/// The app's answer with the core's edits: an `Err` stays one, its
/// response (what actix-web answers it with) carrying them (a renewed
/// session cookie, a Negotiate token) rather than lose them.
fn answered<B>(res: Result<ServiceResponse<B>, Error>, edits: Option<ResponseEdits>) -> Answered<B> {
    match (res, edits) {
        (Ok(res), edits) => Ok(edited(res, edits)),
        (Err(e), Some(edits)) => {
            let mut response = e.error_response();
            edits.apply(&mut ActixResponse(response.headers_mut()));
            Err(actix_web::error::InternalError::from_response(e, response).into())
        }
        (Err(e), None) => Err(e),
    }
}

/// The app's response with the core's edits, as the middlewares answer it.
fn edited<B>(mut res: ServiceResponse<B>, edits: Option<ResponseEdits>) -> ServiceResponse<EitherBody<B>> {
    if let Some(edits) = edits {
        edits.apply(&mut ActixResponse(res.headers_mut()));
    }
    res.map_into_left_body()
}

/// Answers `req` with the core's `reply`, made from the request body when
/// the reply wants it (a back-channel logout's form), read as the core
/// reads bodies on every framework: at most the reply's limit, within the
/// core's read time ([`Reply::finish_from_body`]).
async fn refuse<B>(mut req: ServiceRequest, reply: Reply) -> Answered<B> {
    let mut payload = req.take_payload();
    // Read to its end: the connection is kept, as hyper keeps it.
    let mut ended = false;
    let reply = reply
        .finish_from_body(|cx| {
            let next = futures_core::Stream::poll_next(Pin::new(&mut payload), cx);
            ended |= matches!(next, std::task::Poll::Ready(None));
            next.map(|c| c.map(|c| c.map(Some)))
        })
        .await;
    if ended {
        return Ok(req.into_response(actix_response(reply)).map_into_right_body());
    }
    req.set_payload(payload);
    Ok(refused(req, actix_response(reply)))
}

/// `req` answered with `response`, a refusal: a request body left unread
/// is not read after it either ([`limit::closing_unread`]).
fn refused<B>(mut req: ServiceRequest, response: actix_web::HttpResponse) -> ServiceResponse<EitherBody<B>> {
    let headers = req.headers();
    let has_body = headers.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || headers
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    if !has_body {
        return req.into_response(response).map_into_right_body();
    }
    let unread = req.take_payload();
    limit::closing_unread(req.into_response(response), unread).map_into_right_body()
}

impl<S, B> Service<ServiceRequest> for PalisadeMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        if req.app_config().secure() {
            warn_of_tls_without_facts(&req);
        }
        let check = self.guard.check(&ActixHead(&req));
        respond(&self.service, req, check, |decision, req| {
            decision
                .apply(&mut ActixRequest(req))
                .map(|e| (!e.is_empty()).then_some(e))
        })
    }
}

/// Says, once in the process's life, that requests arrive over TLS
/// without the connection facts `palisade_mtls`'s `on_connect` records:
/// `HttpServer::on_connect` keeps one callback, and [`with_limits`] (or an
/// application's own) set after `ServerTls::actix_on_connect` replaces it,
/// so that the mTLS peer of every connection is unknown and rules on
/// principals refuse.
fn warn_of_tls_without_facts(req: &ServiceRequest) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.load(std::sync::atomic::Ordering::Relaxed)
        && !req.conn_data::<ConnectionInfo>().is_some_and(|c| c.tls)
        && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(
            target: palisade_core::LOG_TARGET,
            "requests arrive over TLS without the connection facts of palisade_mtls: the mTLS peer and the connection's addresses are unknown to policies. Where clients send certificates, set .on_connect(tls.actix_on_connect()) after with_limits (HttpServer keeps one on_connect), or serve with palisade_mtls::actix::server"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An authenticator answering every request from its body (as a
    /// back-channel logout does): the body's length, at most 64 bytes.
    struct Echo;

    impl palisade_core::authn::Authenticator for Echo {
        fn challenge(&self) -> Option<String> {
            None
        }
        fn authenticate(
            &self,
            _: &dyn palisade_core::authn::RequestHead,
        ) -> Check<palisade_core::authn::AuthOutcome> {
            Check::Ready(palisade_core::authn::AuthOutcome::Respond(Reply::after_body(
                64,
                |body| Check::Ready(Reply::new(200).with_body("text/plain", body.len().to_string())),
            )))
        }
    }

    /// A reply made from a body read to its end keeps the connection, as
    /// hyper keeps it; one whose body was left unread (past the limit)
    /// closes it, so that the rest is not read.
    #[actix_web::test]
    async fn a_body_read_to_its_end_keeps_the_connection() {
        let guard = Guard::builder().authenticator(Echo).build().unwrap();
        let app = actix_web::test::init_service(
            actix_web::App::new()
                .wrap(Palisade::new(guard))
                .default_service(actix_web::web::to(actix_web::HttpResponse::Ok)),
        )
        .await;
        let post = |body: Vec<u8>| {
            actix_web::test::TestRequest::post()
                .uri("/")
                .set_payload(body)
                .to_request()
        };
        let res = actix_web::test::call_service(&app, post(b"hello".to_vec())).await;
        assert_eq!(res.status().as_u16(), 200);
        assert_ne!(
            res.response().head().connection_type(),
            actix_web::http::ConnectionType::Close
        );
        let res = actix_web::test::call_service(&app, post(vec![b'x'; 500])).await;
        assert_eq!(res.status().as_u16(), 413);
        assert_eq!(
            res.response().head().connection_type(),
            actix_web::http::ConnectionType::Close
        );
    }

    #[test]
    fn the_host_is_the_one_the_application_sees() {
        let absolute = actix_web::test::TestRequest::default()
            .uri("http://public.example/p")
            .insert_header((HOST, "admin.example"))
            .to_srv_request();
        assert_eq!(ActixHead(&absolute).host(), Some("admin.example"));
        assert_eq!(ActixHead(&absolute).authority(), Some("public.example"));
        assert!(palisade_core::adapter::ambiguous_host(&ActixHead(&absolute)));
        let without_host = actix_web::test::TestRequest::default()
            .uri("http://x@admin.example:8080/p")
            .to_srv_request();
        assert_eq!(ActixHead(&without_host).host(), Some("admin.example:8080"));
    }
}
