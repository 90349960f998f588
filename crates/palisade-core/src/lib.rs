//! Framework-free core of [Palisade](https://docs.rs/palisade): the verified
//! [`Identity`], the [`Guard`] that authenticates and authorizes a request,
//! the error model ([`Rejection`]), access control ([`authz`]) and the
//! policy-file loader ([`policy`]).
//!
//! Applications use it through `palisade-axum` or `palisade-actix` (or the
//! `palisade` facade and its prelude). The other public modules are for
//! people extending Palisade: [`authn`] for authenticator authors,
//! [`adapter`] for framework adapter authors, [`syntax`] for the rules a
//! setting's value must meet, which every crate's builders share. Every decision is made here,
//! once, so every framework answers identically.
//!
//! ```
//! use palisade_core::adapter::Decision;
//! use palisade_core::authn::{AuthOutcome, Authenticator, OwnedRequest, RequestHead};
//! use palisade_core::{Check, ErrorKind, Guard};
//! # struct NoAuth;
//! # impl Authenticator for NoAuth {
//! #     fn challenge(&self) -> Option<String> { Some("Bearer realm=\"demo\"".into()) }
//! #     fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
//! #         Check::Ready(AuthOutcome::NoCredential)
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

pub mod adapter;
pub mod authn;
pub mod authz;
pub mod form;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod syntax;

mod check;
mod error;
mod extract;
mod flight;
mod guard;
mod identity;
mod request;
mod shed;
mod striped;
#[cfg(feature = "test-util")]
mod testing;

pub use check::{BoxFuture, Check, CheckFuture};
pub use error::{ErrorKind, Rejection};
pub use extract::{Authorized, Claims};
pub use guard::{Guard, GuardBuilder, GuardError, LOG_TARGET, RequestAuth};
pub use identity::{AuthMethod, Identity, KerberosIdentity, PeerIdentity, TokenClaims, Verification, whoami};
