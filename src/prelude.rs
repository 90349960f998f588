//! What an application imports: `use palisade::prelude::*;`.
//!
//! The guard and its builder, the extractors, the error a handler may
//! return, the role requirements, the policy file, and the middleware of
//! each enabled framework.
//!
//! ```
//! use palisade::prelude::*;
//! # fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let guard: Guard = Guard::builder().access_policy(AccessPolicy::allow_all()).build()?;
//! let admins = realm_role("admin").or(client_role("reviews", "editor"));
//! # let _ = (guard, admins);
//! # Ok(()) }
//! ```

pub use palisade_core::authz::{AccessPolicy, Requirement, Requires, client_role, realm_role, scope};
pub use palisade_core::policy::{FromPolicy, PolicyError, PolicySet, Workload};
pub use palisade_core::{
    Authorized, Claims, ErrorKind, Guard, GuardBuilder, Identity, Rejection, RequestAuth,
};

#[cfg(feature = "jwt")]
pub use palisade_jwt::{JwtAuthenticator, Provider};

#[cfg(feature = "axum")]
pub use palisade_axum::{PalisadeLayer, RequireLayer, require};

#[cfg(feature = "actix")]
pub use palisade_actix::{Palisade, Require};
