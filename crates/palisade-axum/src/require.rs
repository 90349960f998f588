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
//! The decision is `palisade_core::authorize_route`, the same function the
//! actix-web adapter calls: 401 with the challenges when the request has no
//! identity, 403 when it has one that falls short.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use palisade_core::authz::AccessPolicy;
use palisade_core::{RequestAuth, RouteCheck, authorize_route};
use tower_layer::Layer;
use tower_service::Service;

use crate::{HttpRequestHead, ResponseBody, reject};

/// A layer that checks a route-level policy; see [`require`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RequireLayer {
    policy: AccessPolicy,
}

/// Requires `policy` (a [`Requirement`](palisade_core::authz::Requirement)
/// such as `realm_role("admin")`, or an [`AccessPolicy`] built in code or
/// loaded from YAML) on the routes it wraps.
pub fn require(policy: impl Into<AccessPolicy>) -> RequireLayer {
    RequireLayer {
        policy: policy.into(),
    }
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

type BoxResponse<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Require<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    // Boxed: a route-level check is rarer than the layer's, and may await an
    // external authorizer.
    type Future = BoxResponse<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let auth = req.extensions().get::<RequestAuth>().cloned();
        let check = authorize_route(&self.policy, auth.as_ref(), &HttpRequestHead(&req));
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let guard = auth.map(|a| a.guard().clone());
        Box::pin(async move {
            let verdict = match check {
                RouteCheck::Ready(v) => v,
                RouteCheck::Pending(f) => f.await,
            };
            match verdict {
                Ok(_) => Ok(svc.call(req).await?.map(ResponseBody::inner)),
                Err(r) => Ok(reject(r, guard.as_ref())),
            }
        })
    }
}
