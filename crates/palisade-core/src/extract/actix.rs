use std::future::{Ready, ready};

use actix_web::body::BoxBody;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use serde::de::DeserializeOwned;

use super::Authorized;
use super::Claims;
use super::common::{authorized_from, claims_from, identity_from};
use crate::authz::Requires;
use crate::error::{PROBLEM_JSON, Rejection};
use crate::guard::RequestAuth;
use crate::identity::Identity;

/// Renders a rejection as an actix-web response: status, one
/// `WWW-Authenticate` header per challenge, an RFC 9457 body; the rejection
/// itself travels in the response extensions.
#[must_use]
pub fn rejection_response(rejection: &Rejection) -> HttpResponse {
    let status = StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut builder = HttpResponse::build(status);
    builder.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
    for c in rejection.challenges() {
        if let Ok(v) = HeaderValue::from_str(c) {
            builder.append_header((header::WWW_AUTHENTICATE, v));
        }
    }
    let mut res = builder.body(rejection.problem_json());
    res.extensions_mut().insert(rejection.clone());
    res
}

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::UNAUTHORIZED)
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        rejection_response(self)
    }
}

fn identity(req: &HttpRequest) -> Result<Identity, Rejection> {
    let ext = req.extensions();
    identity_from(ext.get::<RequestAuth>())
}

impl FromRequest for Identity {
    type Error = Rejection;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(identity(req))
    }
}

impl<T: DeserializeOwned> FromRequest for Claims<T> {
    type Error = Rejection;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(identity(req).and_then(|id| claims_from(&id)))
    }
}

impl<R: Requires> FromRequest for Authorized<R> {
    type Error = Rejection;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let ext = req.extensions();
        ready(authorized_from(ext.get::<RequestAuth>()))
    }
}
