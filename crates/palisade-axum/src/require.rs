//! Route-level requirements: a role, scope or whole policy for some routes,
//! on top of the [`PalisadeLayer`](crate::PalisadeLayer).
//!
//! ```
//! use axum::{Router, routing::{get, post}};
//! use palisade_axum::require;
//! use palisade_core::authz::{client_role, realm_role};
//! let admin: Router = Router::new()
//!     .route("/admin", post(|| async { "done" }))
//!     .route_layer(require(realm_role("admin").or(client_role("reviews", "editor"))));
//! ```
//!
//! axum's `route_layer` wraps the routes added before it only: a route
//! added after it is not required to meet anything more than the
//! [`PalisadeLayer`](crate::PalisadeLayer)'s policy. Add it after the
//! routes it is for (or give a route its own `.layer(require(..))` in a
//! `Router` of its own, merged in).
//!
//! The decision is `palisade_core::adapter::authorize_route`, the same function the
//! actix-web adapter calls: 401 with the challenges when the request has no
//! identity (a 403 `cross-origin` where the guard set aside a cookie or
//! Kerberos ticket of a write another origin started), 403 when it has one
//! that falls short.

use std::task::{Context, Poll};

use http::{Request, Response};
use palisade_core::RequestAuth;
use palisade_core::adapter::authorize_route;
use palisade_core::authz::AccessPolicy;
use tower_layer::Layer;
use tower_service::Service;

use crate::{HttpHead, ResponseBody, ResponseFuture};

/// A layer that checks a route-level policy; see [`require`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RequireLayer {
    policy: AccessPolicy,
}

impl RequireLayer {
    /// Requires `policy` (a [`Requirement`](palisade_core::authz::Requirement)
    /// such as `realm_role("admin")`, or an [`AccessPolicy`] built in code or
    /// loaded from YAML) on the routes it wraps.
    pub fn new(policy: impl Into<AccessPolicy>) -> Self {
        Self {
            policy: policy.into(),
        }
    }
}

/// [`RequireLayer::new`], for `.route_layer(require(realm_role("admin")))`.
pub fn require(policy: impl Into<AccessPolicy>) -> RequireLayer {
    RequireLayer::new(policy)
}

impl<S> Layer<S> for RequireLayer {
    type Service = Require<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Require {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service [`RequireLayer`] produces.
#[derive(Clone, Debug)]
pub struct Require<S> {
    inner: S,
    policy: AccessPolicy,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Require<S>
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

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let auth = req.extensions().get::<RequestAuth>();
        let check = match HttpHead::new(&req, self.policy.reads_path()) {
            Ok(head) => authorize_route(&self.policy, auth, &head),
            Err(reply) => palisade_core::Check::Ready(Err(reply)),
        };
        ResponseFuture::start(&mut self.inner, req, check, |verdict, _| verdict.map(|()| None))
    }
}
