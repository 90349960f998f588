//! Handler extractors shared by the framework integrations.
//!
//! With the `axum` feature, [`Identity`](crate::Identity), `Option<Identity>` and
//! [`Claims<T>`] implement axum's `FromRequestParts` (and
//! `OptionalFromRequestParts`); with the `actix` feature they implement
//! actix-web's `FromRequest` (`Option<T>` comes with actix-web). The meaning is
//! the same in both: the identity the Palisade middleware established, a 401
//! with the configured challenges when there is none.

#[cfg(feature = "actix")]
mod actix;
#[cfg(feature = "axum")]
mod axum;

#[cfg(feature = "actix")]
pub use self::actix::rejection_response as actix_response;
#[cfg(feature = "axum")]
pub use self::axum::rejection_response as axum_response;

/// The verified token's claims, deserialized into `T`.
///
/// A token whose claims do not fit `T` is answered with 403: the credential is
/// valid but not sufficient for this handler.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct MyClaims { sub: String, tenant: String }
/// // axum:      async fn handler(palisade_core::Claims(c): palisade_core::Claims<MyClaims>) {}
/// // actix-web: async fn handler(palisade_core::Claims(c): palisade_core::Claims<MyClaims>) {}
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims<T>(pub T);

#[cfg(any(feature = "axum", feature = "actix"))]
mod common {
    use serde::de::DeserializeOwned;

    use crate::error::Rejection;
    use crate::guard::RequestAuth;
    use crate::identity::Identity;

    /// The identity the middleware left in the request, or the 401 to answer.
    pub(super) fn identity_from(auth: Option<&RequestAuth>) -> Result<Identity, Rejection> {
        match auth {
            Some(a) => a.identity().cloned().ok_or_else(|| a.missing_credential()),
            None => {
                tracing::error!(target: crate::guard::LOG_TARGET, "Identity extracted on a route that no Palisade middleware guards");
                Err(Rejection::missing_credential(Vec::new()))
            }
        }
    }

    pub(super) fn claims_from<T: DeserializeOwned>(
        identity: &Identity,
    ) -> Result<super::Claims<T>, Rejection> {
        let Some(token) = identity.token() else {
            return Err(Rejection::forbidden("this resource needs a bearer token"));
        };
        serde_json::from_value(serde_json::Value::Object(token.claims.clone()))
            .map(super::Claims)
            .map_err(|_| Rejection::forbidden("the token does not carry the claims this resource needs"))
    }
}
