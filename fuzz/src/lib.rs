//! The bodies of Palisade's fuzz targets, one module per target.
//!
//! Each module's `run` takes one input and panics when its oracle finds a
//! fault; its documentation says what the input is and what the oracle
//! checks. The libFuzzer binaries in `fuzz_targets/` only call it; the
//! replay test (`cargo test`, on stable, run by `scripts/test`) runs every
//! file of `corpus/<target>/` and `regressions/<target>/` through the same
//! `run`. Fixtures (keys, authenticators, relying parties, the policy) are
//! built once per process; nothing is fetched from outside the process,
//! and no input waits on a clock.

mod common;
mod signin;

pub mod bearer_request;
pub mod dpop_proof;
pub mod introspection;
pub mod jwks;
pub mod logout_token;
pub mod negotiate;
pub mod negotiate_header;
pub mod oidc_callback;
pub mod policy;
pub mod policy_kinds;
pub mod request_path;
pub mod signin_cookie;
pub mod token;

#[cfg(test)]
mod replay;

/// A target's body: one input, a panic when the oracle finds a fault.
pub type Body = fn(&[u8]);

/// Every target: its name (the binary's, and its corpus and regressions
/// directories') and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("bearer_request", bearer_request::run),
    ("dpop_proof", dpop_proof::run),
    ("introspection", introspection::run),
    ("jwks", jwks::run),
    ("logout_token", logout_token::run),
    ("negotiate", negotiate::run),
    ("negotiate_header", negotiate_header::run),
    ("oidc_callback", oidc_callback::run),
    ("policy", policy::run),
    ("policy_kinds", policy_kinds::run),
    ("request_path", request_path::run),
    ("signin_cookie", signin_cookie::run),
    ("token", token::run),
];
