//! # Palisade
//!
//! Embedded authentication and authorization for Rust web services: what
//! Keycloak's adapters and an Istio sidecar do for a mesh, in process.
//!
//! This facade re-exports the workspace crates behind features:
//!
//! | feature | crate | what |
//! |---|---|---|
//! | (always) | [`core`] | [`Identity`](core::Identity), [`Guard`](core::Guard), policies, the error model |
//! | `jwt` (default) | [`jwt`] | JWT bearer tokens, OIDC discovery, cached JWKS |
//! | `axum` | [`axum`] | tower layer + axum extractors |
//! | `actix` | [`actix`] | actix-web middleware + extractors |
//! | `mtls` | [`mtls`] | mutual TLS: SPIFFE peer identity, `PeerAuthentication`, rotation |
//! | `spnego` | [`spnego`] | Kerberos (HTTP Negotiate); needs the system's MIT Kerberos, never a default |
//! | `testkit` | [`testkit`] | an in-process OpenID issuer for tests and demos |
//! | `full` | all of the above | |
//!
//! An application imports what it needs from [`prelude`]:
//! `use palisade::prelude::*;`.
//!
//! ```no_run
//! # #[cfg(feature = "jwt")] {
//! use palisade::core::policy::{PolicySet, Workload};
//!
//! let set = PolicySet::from_file("policy.yaml")?;
//! let guard = palisade::guard_from_policy(&set, &Workload::new("details", "default"))?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![doc = include_str!("../docs/configuration.md")]

pub use palisade_core as core;

#[cfg(feature = "jwt")]
pub use palisade_jwt as jwt;

#[cfg(feature = "axum")]
pub use palisade_axum as axum;

#[cfg(feature = "actix")]
pub use palisade_actix as actix;

#[cfg(feature = "testkit")]
pub use palisade_testkit as testkit;

#[cfg(feature = "mtls")]
pub use palisade_mtls as mtls;

#[cfg(feature = "spnego")]
pub use palisade_spnego as spnego;

#[cfg(feature = "signin")]
pub use palisade_signin as signin;

/// Outbound credentials: what the service sends to the hosts it calls
/// (feature `client`).
#[cfg(feature = "client")]
pub use palisade_client as client;

pub mod prelude;

// Applications import from `prelude`; every item's one home is its crate
// (`palisade::core::Guard`, `palisade::jwt::Provider`, …).

#[cfg(feature = "jwt")]
use palisade_core::policy::{PolicyError, PolicySet, Workload};

/// Builds the [`Guard`](palisade_core::Guard) for a workload from a policy file's documents, with
/// Istio's semantics: `RequestAuthentication` configures the JWT issuers
/// (a request without a token passes authentication, a bad token is
/// refused), `AuthorizationPolicy` decides access (none means allow).
///
/// # Errors
/// A [`PolicyError`] naming the file, the document and the field of anything
/// that cannot be enforced exactly as written.
#[cfg(feature = "jwt")]
pub fn guard_from_policy(set: &PolicySet, workload: &Workload) -> Result<palisade_core::Guard, PolicyError> {
    guard_builder_from_policy(set, workload, &palisade_core::authz::ExternalAuthorizers::new())?
        .build()
        .map_err(|e| PolicyError::new(set.source(), e.to_string()).with_source(e))
}

/// The [`GuardBuilder`](palisade_core::GuardBuilder) for a workload, with
/// every part the policy file configures: the access policy (with the
/// external authorizers `CUSTOM` policies name, Istio's
/// `extensionProviders`) and the JWT authenticator. Add what the file does
/// not turn on by itself before building, through the same step
/// (`.authenticator_from::<palisade::spnego::SpnegoAuthenticator>(&policy)`
/// when a keytab is given).
///
/// # Errors
/// A [`PolicyError`] naming the file, the document and the field of anything
/// that cannot be enforced exactly as written; a `CUSTOM` policy whose
/// provider is not in `authorizers` names its `spec.provider.name`.
#[cfg(feature = "jwt")]
pub fn guard_builder_from_policy(
    set: &PolicySet,
    workload: &Workload,
    authorizers: &palisade_core::authz::ExternalAuthorizers,
) -> Result<palisade_core::GuardBuilder, PolicyError> {
    let policy = set.for_workload(workload);
    let builder = palisade_core::Guard::builder()
        .access_policy_from(&policy, authorizers)?
        .authenticator_from::<palisade_jwt::JwtAuthenticator>(&policy)?;
    #[cfg(feature = "signin")]
    let builder = builder.authenticator_from::<palisade_signin::SignIn>(&policy)?;
    Ok(builder)
}

/// The README's code blocks, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
