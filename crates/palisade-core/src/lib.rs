//! Framework-free core of [Palisade](https://docs.rs/palisade): the verified
//! [`Identity`], a neutral view of a request ([`RequestHead`]), the
//! authenticate step ([`Authenticator`]), the error model ([`Rejection`]),
//! access control ([`authz`]) and the policy-file loader ([`policy`]).
//!
//! The framework adapters (`palisade-axum`, `palisade-actix`) only translate
//! requests and responses; every decision is made by [`Guard::check`].
//!
//! ```
//! use palisade_core::{Check, Decision, Guard, OwnedRequest, ErrorKind};
//! use palisade_core::authz::AccessPolicy;
//! # struct NoAuth;
//! # impl palisade_core::Authenticator for NoAuth {
//! #     fn challenge(&self) -> Option<String> { Some("Bearer realm=\"demo\"".into()) }
//! #     fn authenticate(&self, _: &dyn palisade_core::RequestHead) -> palisade_core::Authenticating {
//! #         palisade_core::Authenticating::Ready(palisade_core::AuthOutcome::NoCredential)
//! #     }
//! # }
//! let guard = Guard::builder().authenticator(NoAuth).build()?;
//! match guard.check(&OwnedRequest::get("/list")) {
//!     Check::Ready(Decision::Deny(rejection)) => {
//!         assert_eq!(rejection.kind(), ErrorKind::MissingCredential);
//!         assert_eq!(rejection.challenges(), ["Bearer realm=\"demo\""]);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), palisade_core::GuardError>(())
//! ```

pub mod authn;
pub mod authz;
pub mod error;
pub mod extract;
pub mod guard;
pub mod identity;
pub mod policy;
pub mod request;

pub use authn::{
    Attachments, AuthOutcome, Authenticated, Authenticating, Authenticator, BoxOutcome, HeaderEdit,
    HeaderTarget,
};
pub use error::{ErrorKind, PROBLEM_JSON, Rejection, bearer_challenge};
pub use extract::{Authorized, Claims};
pub use guard::{
    Allowed, BoxDecision, Check, Decision, Guard, GuardBuilder, GuardError, RequestAuth, RouteCheck,
    authorize_route,
};
pub use identity::{AuthMethod, Identity, KerberosIdentity, PeerIdentity, TokenClaims, Verification, whoami};
pub use request::{ConnectionInfo, OwnedRequest, RequestHead};
