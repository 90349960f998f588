//! # Palisade
//!
//! Embedded authentication and authorization for Rust web services: what
//! Keycloak's adapters and an Istio sidecar do for a mesh, in process.
//!
//! This facade re-exports the workspace crates behind features:
//!
//! | feature | crate | what |
//! |---|---|---|
//! | (always) | [`core`] | [`Identity`], [`Guard`], policies, the error model |
//! | `jwt` (default) | [`jwt`] | JWT bearer tokens, OIDC discovery, cached JWKS |
//! | `axum` | [`axum`] | tower layer + axum extractors |
//! | `actix` | [`actix`] | actix-web middleware + extractors |
//! | `mtls` | [`mtls`] | mutual TLS: SPIFFE peer identity, `PeerAuthentication`, rotation |
//! | `spnego` | [`spnego`] | Kerberos (HTTP Negotiate); needs the system's MIT Kerberos, never a default |
//! | `testkit` | [`testkit`] | an in-process OpenID issuer for tests and demos |
//! | `full` | all of the above | |
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
pub use palisade_core::{Claims, ErrorKind, Guard, Identity, Rejection};

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

#[cfg(feature = "jwt")]
use palisade_core::policy::{PolicyError, PolicySet, Workload};

/// Builds the [`Guard`] for a workload from a policy file's documents, with
/// Istio's semantics: `RequestAuthentication` configures the JWT issuers
/// (a request without a token passes authentication, a bad token is
/// refused), `AuthorizationPolicy` decides access (none means allow).
///
/// # Errors
/// A [`PolicyError`] naming the file, the document and the field of anything
/// that cannot be enforced exactly as written.
#[cfg(feature = "jwt")]
pub fn guard_from_policy(set: &PolicySet, workload: &Workload) -> Result<Guard, PolicyError> {
    guard_from_policy_with(set, workload, &palisade_core::authz::ExternalAuthorizers::new())
}

/// [`guard_from_policy`] with the external authorizers that `CUSTOM`
/// policies name (Istio's `extensionProviders`).
///
/// # Errors
/// As [`guard_from_policy`]; a `CUSTOM` policy whose provider is not in
/// `authorizers` is an error naming its `spec.provider.name`.
#[cfg(feature = "jwt")]
pub fn guard_from_policy_with(
    set: &PolicySet,
    workload: &Workload,
    authorizers: &palisade_core::authz::ExternalAuthorizers,
) -> Result<Guard, PolicyError> {
    guard_builder_from_policy(set, workload, authorizers)?
        .build()
        .map_err(|e| PolicyError::new(set.source(), e.to_string()))
}

/// The [`GuardBuilder`](palisade_core::GuardBuilder) of
/// [`guard_from_policy_with`], for adding authenticators the policy file
/// does not configure (SPNEGO with a keytab, say) before building.
///
/// # Errors
/// As [`guard_from_policy_with`].
#[cfg(feature = "jwt")]
pub fn guard_builder_from_policy(
    set: &PolicySet,
    workload: &Workload,
    authorizers: &palisade_core::authz::ExternalAuthorizers,
) -> Result<palisade_core::GuardBuilder, PolicyError> {
    let applicable = set.for_workload(workload);
    let access = palisade_core::authz::AccessPolicy::compile_with(&applicable, authorizers)?;
    let mut builder = Guard::builder().access_policy(access);
    if let Some(jwt) = palisade_jwt::JwtAuthenticator::from_policy(&applicable)? {
        builder = builder.authenticator(jwt);
    }
    Ok(builder)
}

/// The README's code blocks, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
