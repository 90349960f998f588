//! The request body limit ([`BodyLimit`]) and the server's timeouts
//! ([`with_limits`]).

use std::cell::RefCell;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::error::PayloadError;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage as _};
use palisade_core::adapter::actix_response;
use palisade_core::limits::{BodyTimer, ServerLimits};

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
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = BodyLimitMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
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
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let declared = req.headers().get(CONTENT_LENGTH).map(|v| v.as_bytes());
        if let Err(refusal) = self.limits.check_content_length(declared) {
            let mut res = actix_response(refusal);
            // actix-http writes the connection header from this, not from
            // the header map: close rather than read the body.
            res.head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
            return Box::pin(ready(Ok(req.into_response(res).map_into_right_body())));
        }
        let cut = Rc::new(RefCell::new(None));
        let payload = Limited {
            inner: Some(req.take_payload()),
            left: self.limits.max_body(),
            timer: BodyTimer::new(&self.limits),
            cut: Rc::clone(&cut),
        };
        req.set_payload(Payload::Stream {
            payload: Box::pin(payload),
        });
        let service = Rc::clone(&self.service);
        let limits = self.limits;
        Box::pin(async move {
            let res = service.call(req).await?;
            let Some((unread, why)) = cut.borrow_mut().take() else {
                return Ok(res.map_into_left_body());
            };
            // Whatever the app answered a body it could not read in time.
            let res = match why {
                Cut::Late => res.into_response(actix_response(limits.body_too_slow())),
                Cut::Overflow => res.map_into_boxed_body(),
            };
            // The rest of the body is not read: actix-http would read it to
            // its end (a dropped chunked payload is drained) unless the
            // payload outlives the response, which then closes the
            // connection, as hyper does.
            Ok(res
                .map_body(|head, body| {
                    head.set_connection_type(actix_web::http::ConnectionType::Close);
                    BoxBody::new(Holding {
                        body: BoxBody::new(body),
                        _unread: unread,
                    })
                })
                .map_into_right_body())
        })
    }
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
    /// Where the unread payload goes when it passed the limit or was late,
    /// and whether it was late.
    cut: Rc<RefCell<Option<(Payload, Cut)>>>,
}

/// Why a payload was cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    Overflow,
    Late,
}

impl futures_core::Stream for Limited {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Cut off: the error was given.
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match self.left.checked_sub(chunk.len()) {
                Some(left) => {
                    self.left = left;
                    self.timer.received(chunk.len());
                    Poll::Ready(Some(Ok(chunk)))
                }
                None => {
                    self.cut_off(Cut::Overflow);
                    tracing::debug!(target: palisade_core::limits::LOG_TARGET, "request body cut off at the limit");
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            },
            Poll::Pending => match self.timer.poll_late(cx) {
                Some(late) => {
                    self.cut_off(Cut::Late);
                    Poll::Ready(Some(Err(PayloadError::Io(late))))
                }
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl Limited {
    fn cut_off(&mut self, why: Cut) {
        if let Some(unread) = self.inner.take() {
            *self.cut.borrow_mut() = Some((unread, why));
        }
    }
}

/// Sets the timeouts of `limits` on actix-web's `HttpServer`:
/// `client_request_timeout` is the header-read timeout, `keep_alive` the
/// idle timeout, as `palisade_mtls::actix::HttpSettings::from_limits` does
/// for Palisade's own listener. (A TLS listener's handshake timeout is
/// `HttpServer::tls_handshake_timeout(limits.handshake())`.)
///
/// actix-web times the head of a connection's first request only: on a
/// kept-alive connection the idle timeout runs until the next request's
/// first byte, and its head then has no deadline of its own (axum's
/// `palisade_axum::serve` times every head).
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
}

#[cfg(test)]
mod tests {
    use actix_web::{App, test, web};

    use super::*;

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
}
