use std::future::{Ready, ready};

use actix_web::body::BoxBody;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use serde::de::DeserializeOwned;

use super::Authorized;
use super::Claims;
use super::common::{authorized_from, claims_from, identity_from, request_auth_from};
use crate::adapter::Reply;
use crate::authz::Requires;
use crate::error::Rejection;
use crate::guard::RequestAuth;
use crate::identity::Identity;

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::UNAUTHORIZED)
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        crate::adapter::actix_response(Reply::from(self.clone()))
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

impl FromRequest for RequestAuth {
    type Error = Rejection;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let ext = req.extensions();
        ready(request_auth_from(ext.get::<RequestAuth>()))
    }
}
