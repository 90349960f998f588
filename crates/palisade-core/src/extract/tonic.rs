//! A refusal as a tonic handler returns it.

use crate::Rejection;

/// A refusal as a [`tonic::Status`], for a check in a tonic handler
/// (`auth.require(&realm_role("admin"))?` on the `RequestAuth` the guard
/// put in the request's extensions): the code the guard answers a gRPC
/// call with for the same refusal (`UNAUTHENTICATED` for a 401,
/// `PERMISSION_DENIED` for a 403), its description as the message, and
/// its challenges as `www-authenticate` metadata.
///
/// ```
/// use palisade_core::Rejection;
/// let status = tonic::Status::from(Rejection::invalid_token("api", "the token has expired"));
/// assert_eq!(status.code(), tonic::Code::Unauthenticated);
/// assert_eq!(status.message(), "the token has expired");
/// assert!(status.metadata().get("www-authenticate").is_some());
/// let status = tonic::Status::from(Rejection::forbidden("access denied by policy"));
/// assert_eq!(status.code(), tonic::Code::PermissionDenied);
/// ```
impl From<Rejection> for tonic::Status {
    fn from(rejection: Rejection) -> Self {
        let code = tonic::Code::from_i32(crate::adapter::grpc_code(rejection.status(), Some(&rejection)));
        let mut status = tonic::Status::new(code, rejection.detail().to_owned());
        for challenge in rejection.challenges() {
            if let Ok(value) = challenge.parse() {
                status.metadata_mut().append("www-authenticate", value);
            }
        }
        status
    }
}
