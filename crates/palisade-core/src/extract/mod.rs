//! Handler extractors shared by the framework integrations.
//!
//! With the `axum` feature, [`Identity`](crate::Identity), `Option<Identity>` and
//! [`Claims<T>`] implement axum's `FromRequestParts` (and
//! `OptionalFromRequestParts`); with the `actix` feature they implement
//! actix-web's `FromRequest` (`Option<T>` comes with actix-web). The meaning is
//! the same in both: the identity the Palisade middleware established, a 401
//! with the configured challenges when there is none (a 403 where no
//! authenticator offers a challenge, as mTLS alone: no credential could
//! give one; a 403 `cross-origin` where the guard set aside a cookie or Kerberos
//! ticket of a write another origin started). A refusal is rendered
//! as the guard's own are for the request: a gRPC call's as a trailers-only
//! answer (`grpc-status` 16 or 7), a HEAD request's without a body. On a
//! route no Palisade middleware guards (a wiring mistake) they answer 500
//! ([`Rejection::unguarded`](crate::Rejection::unguarded)) with an error
//! line, and `Option<Identity>` is `None`.

#[cfg(feature = "actix")]
mod actix;
#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "tonic")]
mod tonic;

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

/// The verified identity of a caller who meets the requirement `R`, as
/// Spring's `@PreAuthorize`: 401 without an identity (403 where no
/// authenticator offers a challenge, or a cross-origin write's credential
/// was set aside), 403 when it falls short.
///
/// ```
/// use palisade_core::Authorized;
/// use palisade_core::authz::{Requirement, Requires, realm_role};
/// struct Admins;
/// impl Requires for Admins {
///     fn requirement() -> Requirement { realm_role("admin") }
/// }
/// // axum:      async fn handler(Authorized(id, _): Authorized<Admins>) {}
/// // actix-web: async fn handler(Authorized(id, _): Authorized<Admins>) {}
/// ```
pub struct Authorized<R>(pub crate::Identity, pub std::marker::PhantomData<R>);

impl<R> std::fmt::Debug for Authorized<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Authorized").field(&self.0).finish()
    }
}

#[cfg(any(feature = "axum", feature = "actix"))]
mod common {
    use serde::de::DeserializeOwned;

    use crate::error::Rejection;
    use crate::guard::RequestAuth;
    use crate::identity::Identity;

    /// Said of a route no Palisade middleware guards.
    static UNGUARDED: crate::logging::Sparse = crate::logging::Sparse::per_minute();

    /// The identity the middleware left in the request, or the 401 to answer.
    pub(super) fn identity_from(auth: Option<&RequestAuth>) -> Result<Identity, Rejection> {
        match auth {
            Some(a) => a.identity().cloned().ok_or_else(|| a.missing_credential()),
            None => Err(unguarded()),
        }
    }

    /// The 500 for an identity asked for on a route no Palisade middleware
    /// guards ([`Rejection::unguarded`]: a wiring mistake, not a missing
    /// credential), with an error line (every request to that route: said
    /// once a minute).
    fn unguarded() -> Rejection {
        if UNGUARDED.due() {
            tracing::error!(target: crate::LOG_TARGET, "an identity was asked for on a route that no Palisade middleware guards: answered 500. Add the middleware in front of the route");
        }
        Rejection::unguarded()
    }

    /// The guard's record of the request, for the `RequestAuth`
    /// extractor: on a route no Palisade middleware guards, the 500 with
    /// the error line [`identity_from`] says.
    pub(super) fn request_auth_from(auth: Option<&RequestAuth>) -> Result<RequestAuth, Rejection> {
        auth.cloned().ok_or_else(unguarded)
    }

    /// The identity for `Option<Identity>`: `None` for an anonymous
    /// caller, and, with an error line as [`identity_from`] says it, on a
    /// route no Palisade middleware guards (as actix-web's `Option`
    /// extractor, which calls that one, does).
    #[cfg_attr(not(feature = "axum"), allow(dead_code, reason = "axum's extractor only"))]
    pub(super) fn optional_identity_from(auth: Option<&RequestAuth>) -> Option<Identity> {
        identity_from(auth).ok()
    }

    /// The identity, when it meets `R`'s requirement: 401 without one, 403 short of it.
    pub(super) fn authorized_from<R: crate::authz::Requires>(
        auth: Option<&RequestAuth>,
    ) -> Result<super::Authorized<R>, Rejection> {
        let identity = auth.ok_or_else(unguarded)?.require(&R::requirement())?;
        Ok(super::Authorized(identity.clone(), std::marker::PhantomData))
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
