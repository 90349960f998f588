use axum_core::body::Body;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::Authorized;
use super::Claims;
use super::common::{authorized_from, claims_from, identity_from, optional_identity_from, request_auth_from};
use crate::adapter::Rendering;
use crate::authz::Requires;
use crate::error::Rejection;
use crate::guard::RequestAuth;
use crate::identity::Identity;

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        crate::adapter::http_response(self.reply(), Body::from)
    }
}

/// An extractor's refusal, to be rendered as its request asks (a gRPC
/// call's, a HEAD request's): the request is read only for a refusal.
fn for_request(parts: &Parts) -> impl Fn(Rejection) -> Rejection {
    move |r| {
        let content_type = parts.headers.get(http::header::CONTENT_TYPE);
        r.rendered_as(Rendering::of_parts(
            parts.method.as_str(),
            content_type.map(http::HeaderValue::as_bytes),
        ))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        identity_from(parts.extensions.get::<RequestAuth>()).map_err(for_request(parts))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Identity {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(optional_identity_from(parts.extensions.get::<RequestAuth>()))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Claims<T> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        identity_from(parts.extensions.get::<RequestAuth>())
            .and_then(|identity| claims_from(&identity))
            .map_err(for_request(parts))
    }
}

impl<S: Send + Sync, R: Requires> FromRequestParts<S> for Authorized<R> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        authorized_from(parts.extensions.get::<RequestAuth>()).map_err(for_request(parts))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestAuth {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        request_auth_from(parts.extensions.get::<RequestAuth>()).map_err(for_request(parts))
    }
}
