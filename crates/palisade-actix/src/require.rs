//! Route-level requirements for a scope or resource, on top of the
//! [`Palisade`](crate::Palisade) middleware on the `App`.
//!
//! ```
//! use actix_web::{App, HttpResponse, web};
//! use palisade_actix::Require;
//! use palisade_core::authz::{client_role, realm_role};
//! let app = App::new().service(
//!     web::scope("/admin")
//!         .wrap(Require::new(realm_role("admin").or(client_role("reviews", "editor"))))
//!         .route("", web::post().to(HttpResponse::Ok)),
//! );
//! # let _ = app;
//! ```
//!
//! The decision is `palisade_core::adapter::authorize_route`, the same function the
//! axum adapter's `require` calls: 401 with the challenges when the request
//! has no identity (a 403 `cross-origin` where the guard set aside a cookie
//! or Kerberos ticket of a write another origin started), 403 when it has
//! one that falls short. Refusals are responses, so outer middleware still
//! runs.

use std::future::{Ready, ready};
use std::rc::Rc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::{Error, HttpMessage};
use palisade_core::RequestAuth;
use palisade_core::adapter::authorize_route;
use palisade_core::authz::AccessPolicy;

use crate::{ActixHead, ResponseFuture, respond};

/// Requires a policy (a [`Requirement`](palisade_core::authz::Requirement)
/// or an [`AccessPolicy`]) on a scope or resource:
/// `.wrap(Require::new(realm_role("admin")))`.
#[derive(Clone, Debug)]
#[must_use]
pub struct Require {
    policy: AccessPolicy,
}

impl Require {
    /// Requires `policy` on what it wraps.
    pub fn new(policy: impl Into<AccessPolicy>) -> Self {
        Self {
            policy: policy.into(),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Require
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = RequireMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequireMiddleware {
            service: Rc::new(service),
            policy: self.policy.clone(),
        }))
    }
}

/// The service [`Require`] wraps around a scope or resource.
#[derive(Debug)]
pub struct RequireMiddleware<S> {
    service: Rc<S>,
    policy: AccessPolicy,
}

impl<S, B> Service<ServiceRequest> for RequireMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let check = {
            let ext = req.extensions();
            authorize_route(&self.policy, ext.get::<RequestAuth>(), &ActixHead(&req))
        };
        respond(&self.service, req, check, |verdict, _| verdict.map(|()| None))
    }
}
