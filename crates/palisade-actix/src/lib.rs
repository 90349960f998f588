//! Palisade for actix-web 4: a middleware that authenticates and authorizes
//! every request, and (through `palisade-core`'s `actix` feature) the
//! extractors [`Identity`], `Option<Identity>` and
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
//! [`Rejection`] travels in the response extensions.
//! Allowed requests reach the app with a
//! [`RequestAuth`] in their extensions (the
//! [`Identity`], when there is one, and the access decision) and with the
//! authenticators' header edits applied (the token removed unless
//! `forward_original_token`).

use std::future::{Future, Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::Uri;
use actix_web::http::header::{HOST, HeaderName, HeaderValue};
use actix_web::http::uri::PathAndQuery;
use actix_web::{Error, HttpMessage, HttpResponse};
use palisade_core::authz::AccessDecision;
use palisade_core::extract::actix_response;
use palisade_core::{
    Allowed, Check, ConnectionInfo, Decision, Guard, HeaderEdit, HeaderTarget, Rejection, RequestAuth,
    RequestHead,
};

mod require;

pub use palisade_core::Identity;
pub use require::{Require, RequireMiddleware};

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

/// The headers authenticators read on every request, pre-parsed: looking a
/// header up by `&str` parses the name each time.
fn known(name: &str) -> Option<&'static actix_web::http::header::HeaderName> {
    match name {
        "authorization" => Some(&actix_web::http::header::AUTHORIZATION),
        "cookie" => Some(&actix_web::http::header::COOKIE),
        _ => None,
    }
}

/// A view of an actix-web request head for the framework-free core.
#[derive(Debug)]
pub struct ActixRequestHead<'a>(pub &'a ServiceRequest);

impl RequestHead for ActixRequestHead<'_> {
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
        self.0
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.0.uri().authority().map(|a| a.as_str()))
    }
    fn for_each_header(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        let values = match known(name) {
            Some(n) => self.0.headers().get_all(n),
            None => self.0.headers().get_all(name),
        };
        values.for_each(|v| f(v.as_bytes()));
    }
    fn header_str(&self, name: &str) -> Option<&str> {
        self.0.headers().get(name).and_then(|v| v.to_str().ok())
    }
    fn header_value(&self, name: &str, index: usize) -> Option<&[u8]> {
        let mut values = match known(name) {
            Some(n) => self.0.headers().get_all(n),
            None => self.0.headers().get_all(name),
        };
        values.nth(index).map(|v| v.as_bytes())
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
        self.connection()
            .and_then(|c| c.local_addr)
            .or_else(|| Some(self.0.app_config().local_addr()))
    }
}

/// The request's header map as a [`HeaderTarget`].
struct Headers<'a>(&'a mut actix_web::http::header::HeaderMap);

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

/// Hands the normalised path to the router, or refuses the request when part
/// of the raw path was already routed (the middleware wraps a scope).
fn rewrite_path(req: &mut ServiceRequest, path: &str) -> Result<(), Rejection> {
    let refuse = || Rejection::malformed_path("the request path is not in normal form");
    let routed = req.match_info();
    if routed.unprocessed().len() != routed.as_str().len() {
        tracing::error!(
            target: palisade_core::guard::LOG_TARGET,
            "a path that is not in normal form reached Palisade wrapped on a scope, after part of it was routed: refused with 400. Wrap the App (App::new().wrap(Palisade::new(guard))) so the router sees the path the policy matched"
        );
        return Err(refuse());
    }
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|_| refuse())?);
    let uri = Uri::from_parts(parts).map_err(|_| refuse())?;
    req.match_info_mut().get_mut().update(&uri);
    req.head_mut().uri = uri;
    Ok(())
}

fn admit(
    req: &mut ServiceRequest,
    guard: &Guard,
    mut allowed: Allowed,
) -> Result<(AccessDecision, Vec<(String, String)>), Rejection> {
    if let Some(path) = allowed.path.take() {
        rewrite_path(req, &path)?;
    }
    HeaderEdit::apply_all(
        std::mem::take(&mut allowed.edits),
        &mut Headers(req.headers_mut()),
    );
    let access = allowed.access.clone();
    let headers = std::mem::take(&mut allowed.response_headers);
    req.extensions_mut().insert(RequestAuth::new(allowed, guard));
    Ok((access, headers))
}

/// The debug header that explains decisions, when the guard's switch is on.
const EXPLAIN_HEADER: &str = "x-palisade-authz";

/// Puts the decision in the response extensions (and the debug header).
fn explain(res: &mut HttpResponse<impl MessageBody>, guard: Option<&Guard>, access: AccessDecision) {
    if let Some(e) = guard
        .and_then(|g| g.explanation(&access))
        .and_then(|e| HeaderValue::from_str(&e).ok())
    {
        res.headers_mut()
            .insert(HeaderName::from_static(EXPLAIN_HEADER), e);
    }
    res.extensions_mut().insert(access);
}

/// The rejection as a response, explained.
fn refusal(rejection: &Rejection, guard: Option<&Guard>) -> HttpResponse {
    let mut res = actix_response(rejection);
    if let Some(access) = rejection.access() {
        explain(&mut res, guard, access.clone());
    }
    res
}

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Service<ServiceRequest> for PalisadeMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let check = self.guard.check(&ActixRequestHead(&req));
        let service = self.service.clone();
        let guard = self.guard.clone();
        Box::pin(async move {
            let decision = match check {
                Check::Ready(d) => d,
                Check::Pending(f) => f.await,
            };
            let rejection = match decision {
                Decision::Allow(allowed) => match admit(&mut req, &guard, allowed) {
                    Ok((access, headers)) => {
                        let mut res = service.call(req).await?;
                        explain(res.response_mut(), Some(&guard), access);
                        for (name, value) in headers {
                            if let (Ok(n), Ok(v)) = (
                                HeaderName::from_bytes(name.as_bytes()),
                                HeaderValue::from_str(&value),
                            ) {
                                res.headers_mut().append(n, v);
                            }
                        }
                        return Ok(res.map_into_left_body());
                    }
                    Err(r) => r,
                },
                Decision::Deny(r) => r,
            };
            Ok(req
                .into_response(refusal(&rejection, Some(&guard)))
                .map_into_right_body())
        })
    }
}
