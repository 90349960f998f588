//! The floor of the overhead figures: the edits a guard makes by default
//! to a request it lets through, with nothing checked. It drops the
//! token's header (Istio's `forwardOriginalToken: false`) and hands the
//! handler a record of the caller. It is a lower bound: it cannot refuse,
//! so its future and body are the app's own, where a guard's must be able
//! to carry a refusal instead.
//!
//! The example services serve behind it with `--floor` (benchmarking
//! only, `benches/wrk.sh`'s `FLOOR=1`); the benches' in-process apps
//! include this file too.

#![allow(
    dead_code,
    reason = "shared by the examples and the benches, each using one framework's half"
)]

use actix_web::HttpMessage;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};

/// The record a floor hands the handler: a verified caller, shared as a
/// guard would share a cached token's.
#[derive(Clone)]
pub(crate) struct Floor(
    #[expect(
        dead_code,
        reason = "held for the handler; the benches only ask that it is there"
    )]
    palisade::core::Identity,
);

impl Floor {
    pub(crate) fn new() -> Self {
        let mut claims = palisade::core::TokenClaims::default();
        claims.subject = "bench".into();
        Self(palisade::core::Identity::from_token(
            claims,
            palisade::core::Verification::assertion(),
        ))
    }

    /// The floor around an axum app (or any tower service), as a layer
    /// around the router would be: tower's `MapRequest`, no future of its
    /// own.
    pub(crate) fn around<S>(
        self,
        app: S,
    ) -> tower::util::MapRequest<
        S,
        impl Fn(http::Request<axum::body::Body>) -> http::Request<axum::body::Body> + Clone,
    > {
        tower::util::MapRequest::new(app, move |mut req: http::Request<axum::body::Body>| {
            req.headers_mut().remove(http::header::AUTHORIZATION);
            req.extensions_mut().insert(self.clone());
            req
        })
    }
}

impl<S, B> Transform<S, ServiceRequest> for Floor
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = FloorMiddleware<S>;
    type InitError = ();
    type Future = std::future::Ready<Result<FloorMiddleware<S>, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        std::future::ready(Ok(FloorMiddleware {
            service,
            floor: self.clone(),
        }))
    }
}

/// [`Floor`] as an actix-web middleware: its future is the app's own.
pub(crate) struct FloorMiddleware<S> {
    service: S,
    floor: Floor,
}

impl<S, B> Service<ServiceRequest> for FloorMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = S::Future;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        req.headers_mut().remove(actix_web::http::header::AUTHORIZATION);
        req.extensions_mut().insert(self.floor.clone());
        self.service.call(req)
    }
}
