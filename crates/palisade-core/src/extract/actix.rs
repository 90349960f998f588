use std::future::{Ready, ready};

use actix_web::body::BoxBody;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use serde::de::DeserializeOwned;

use super::Authorized;
use super::Claims;
use super::common::{authorized_from, claims_from, identity_from, request_auth_from};
use crate::adapter::Rendering;
use crate::authz::Requires;
use crate::error::Rejection;
use crate::guard::RequestAuth;
use crate::identity::Identity;

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::UNAUTHORIZED)
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        crate::adapter::actix_response(self.clone().reply())
    }
}

/// An extractor's refusal, to be rendered as its request asks (a gRPC
/// call's, a HEAD request's): the request is read only for a refusal.
fn for_request(req: &HttpRequest) -> impl Fn(Rejection) -> Rejection {
    move |r| {
        let content_type = req.headers().get(actix_web::http::header::CONTENT_TYPE);
        r.rendered_as(Rendering::of_parts(
            req.method().as_str(),
            content_type.map(actix_web::http::header::HeaderValue::as_bytes),
        ))
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
        ready(identity(req).map_err(for_request(req)))
    }
}

impl<T: DeserializeOwned> FromRequest for Claims<T> {
    type Error = Rejection;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(
            identity(req)
                .and_then(|id| claims_from(&id))
                .map_err(for_request(req)),
        )
    }
}

impl<R: Requires> FromRequest for Authorized<R> {
    type Error = Rejection;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let ext = req.extensions();
        ready(authorized_from(ext.get::<RequestAuth>()).map_err(for_request(req)))
    }
}

impl FromRequest for RequestAuth {
    type Error = Rejection;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let ext = req.extensions();
        ready(request_auth_from(ext.get::<RequestAuth>()).map_err(for_request(req)))
    }
}
