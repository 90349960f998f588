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
//! | `test-util` | (features of `core` and `signin`; turns on `testkit`) | what only a test may hold: [`TestUsers`](core::authn::TestUsers), users without credentials, and `SignIn::session_cookie_for`, sessions from unverified tokens; never in a service's build, nor in `full` |
//! | `signin` | [`signin`] | browser sign-in as an OpenID Connect relying party (turns on `jwt`) |
//! | `redis` | (features of `signin` and `jwt`) | in Redis, for what is on: sign-in's session and revocation stores (with `signin`), DPoP's replay cache (with `jwt`) |
//! | `client` | [`client`] | outbound credentials: token relay, client credentials, token exchange (upstream TLS is `mtls`'s `UpstreamTls`) |
//! | `tonic` | (features of `core`, `client` and `axum`) | `From<Rejection> for tonic::Status` for checks in a tonic handler; `CredentialsLayer`'s failures as `tonic::Status` (`UNAUTHENTICATED`, `UNAVAILABLE`); the layer under tonic's own `Server` (the connection's addresses read, `NamedService`) |
//! | `full` | all of the above but `test-util` | |
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
/// Only this workload's part of the file is compiled here; to check the
/// whole file, as `palisade check` does, call [`check_policy`] where every
/// workload's files are at hand.
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
    #[cfg(not(feature = "signin"))]
    sign_in_unbuilt(&policy)?;
    Ok(builder)
}

/// Without the `signin` feature, a document that turns browser sign-in on
/// for the workload is an error naming it, not a sign-in silently left out
/// (browsers would get 401s where the file promises a redirect).
#[cfg(all(feature = "jwt", not(feature = "signin")))]
fn sign_in_unbuilt(policy: &palisade_core::policy::WorkloadPolicy<'_>) -> Result<(), PolicyError> {
    match policy.sign_in()? {
        Some(sign_in) => Err(policy.error_at(
            sign_in.document(),
            "spec",
            "turns browser sign-in on, which needs palisade's `signin` feature (or make a KeycloakAdapter `bearer-only`)",
        )),
        None => Ok(()),
    }
}

/// Checks a whole policy file as each service checks its own part of it
/// at start-up: for every workload the file names
/// ([`PolicySet::workloads`]), what such a service would build from it
/// ([`policy_problems`]), offline; what `palisade check` runs. A file loads
/// only when each of its documents is valid on its own; this also finds
/// what only compiling a workload's documents together shows (two
/// documents of one kind for one workload, a JWT rule whose inline key
/// cannot be used, a sign-in whose timeouts contradict each other), for every
/// workload.
///
/// It reads the files every workload's documents name (client secrets,
/// keys, CA files): call it where they all are (a CI step, one host
/// running every service), not in a service that has only its own.
/// [`guard_from_policy`] compiles only its own workload's part.
///
/// `CUSTOM` policies are compiled with stand-ins for their authorizers
/// ([`ExternalAuthorizers::stand_ins`](palisade_core::authz::ExternalAuthorizers::stand_ins)):
/// each service registers its own. The parts compiled are those of this
/// build's features (`jwt`; `signin`; `mtls`: the mutual-TLS mode and
/// upstream TLS; `client`: upstream credentials).
///
/// # Errors
/// The first problem found, naming the file, the document and the field,
/// and the workload it was found for.
#[cfg(feature = "jwt")]
pub fn check_policy(set: &PolicySet) -> Result<(), PolicyError> {
    let authorizers = palisade_core::authz::ExternalAuthorizers::stand_ins(set);
    for workload in set.workloads() {
        if let Some(mut e) = policy_problems(set, &workload, &authorizers).into_iter().next() {
            // As `palisade check` names it (`NS/*` for a stand-in).
            e.message = format!("{} (for {workload})", e.message);
            return Err(e);
        }
    }
    Ok(())
}

/// Every problem a service of `workload` would meet building its parts
/// from `set` at start-up, each part built on its own so that all are
/// found: the guard (access policy with `authorizers`, JWT authenticator),
/// browser sign-in, the mutual-TLS mode, upstream credentials and upstream
/// TLS, as this build's features have them. Nothing is contacted: no keys
/// are fetched, no issuer is discovered, no store is connected, and
/// `ISTIO_MUTUAL` is not given the workload's own certificate (a start-up
/// argument, not the file's). `palisade check` reports these.
#[cfg(feature = "jwt")]
#[must_use]
pub fn policy_problems(
    set: &PolicySet,
    workload: &Workload,
    authorizers: &palisade_core::authz::ExternalAuthorizers,
) -> Vec<PolicyError> {
    let policy = set.for_workload(workload);
    let mut errors = Vec::new();
    let access =
        palisade_core::authz::AccessPolicy::compile_with(&policy, authorizers).map_err(|e| errors.push(e));
    let jwt = palisade_jwt::JwtAuthenticator::from_policy_offline(&policy).map_err(|e| errors.push(e));
    if let (Ok(access), Ok(jwt)) = (access, jwt) {
        let mut guard = palisade_core::Guard::builder().access_policy(access);
        if let Some(jwt) = jwt {
            guard = guard.authenticator(jwt);
        }
        if let Err(e) = guard.build() {
            errors.push(PolicyError::new(set.source(), e.to_string()).with_source(e));
        }
    }
    #[cfg(feature = "signin")]
    if let Err(e) = palisade_signin::SignIn::check_policy(&policy) {
        errors.push(e);
    }
    #[cfg(not(feature = "signin"))]
    if let Err(e) = sign_in_unbuilt(&policy) {
        errors.push(e);
    }
    // What SPNEGO reads of the file needs no Kerberos library to check.
    if let Err(e) = policy.spnego_settings_checked() {
        errors.push(e);
    }
    #[cfg(feature = "mtls")]
    {
        // Its one error (two documents at one level) does not depend on the port.
        if let Err(e) = palisade_mtls::mode_for_port(&policy, 0) {
            errors.push(e);
        }
        if let Err(e) = palisade_mtls::UpstreamTls::check_policy(&policy) {
            errors.push(e);
        }
    }
    #[cfg(feature = "client")]
    if let Err(e) = palisade_client::Upstreams::check_policy(&policy) {
        errors.push(e);
    }
    errors
}

/// The README's code blocks, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// docs/signin.md's code, compiled as a doc test too.
#[cfg(doctest)]
#[doc = include_str!("../docs/signin.md")]
struct SigninDoctests;

/// The facade built without the `signin` feature (`cargo test -p palisade
/// --no-default-features --features jwt --lib`, a step of `scripts/test`).
#[cfg(all(test, feature = "jwt", not(feature = "signin")))]
mod without_sign_in {
    use super::*;

    /// A document that turns sign-in on is an error naming it, in the
    /// guard's assembly and in the file's check, not left out.
    #[test]
    fn a_sign_in_document_is_refused_not_dropped() {
        let yaml = "apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {name: login, namespace: default}
spec: {issuer: 'https://kc.example/realms/shop', clientId: shop}
";
        let set = PolicySet::from_yaml_str(yaml, "login.yaml").unwrap();
        let workload = Workload::new("shop", "default");
        let err = guard_from_policy(&set, &workload).unwrap_err();
        assert_eq!(
            (err.document, err.field.as_deref()),
            (Some(1), Some("spec")),
            "{err}"
        );
        assert!(err.to_string().contains("`signin` feature"), "{err}");
        assert!(check_policy(&set).is_err());
        let bearer = "apiVersion: palisade.dev/v1alpha1
kind: KeycloakAdapter
metadata: {name: kc, namespace: default}
spec: {realm: shop, auth-server-url: 'https://kc.example', resource: shop, bearer-only: true}
";
        let set = PolicySet::from_yaml_str(bearer, "kc.yaml").unwrap();
        guard_from_policy(&set, &workload).unwrap();
    }
}
