use axum_core::body::Body;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;

use super::Authorized;
use super::Claims;
use super::common::{authorized_from, claims_from, identity_from};
use crate::authz::Requires;
use crate::error::{PROBLEM_JSON, Rejection};
use crate::guard::RequestAuth;
use crate::identity::Identity;

/// Renders a rejection as an `http` 1 response: status, one
/// `WWW-Authenticate` header per challenge, an RFC 9457 body; the rejection
/// itself travels in the response extensions.
#[must_use]
pub fn rejection_response(rejection: &Rejection) -> Response {
    let mut res = Response::new(Body::from(rejection.problem_json()));
    *res.status_mut() = StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    for c in rejection.challenges() {
        if let Ok(v) = HeaderValue::from_str(c) {
            headers.append(header::WWW_AUTHENTICATE, v);
        }
    }
    res.extensions_mut().insert(rejection.clone());
    res
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        rejection_response(&self)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        identity_from(parts.extensions.get::<RequestAuth>())
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Identity {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestAuth>()
            .and_then(|a| a.identity().cloned()))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Claims<T> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let identity = identity_from(parts.extensions.get::<RequestAuth>())?;
        claims_from(&identity)
    }
}

impl<S: Send + Sync, R: Requires> FromRequestParts<S> for Authorized<R> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        authorized_from(parts.extensions.get::<RequestAuth>())
    }
}
