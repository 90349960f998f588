//! Any bytes as a policy file of every kind, compiled for each workload it
//! names by everything a service builds from it at start-up, offline, as
//! `palisade check` does: the access policy (with stand-ins for `CUSTOM`
//! providers), the JWT authenticator (`RequestAuthentication`,
//! `JwtSettings`, `KeycloakAdapter`), the guard, browser sign-in
//! (`OidcLogin`), the SPNEGO settings, the mTLS mode
//! (`PeerAuthentication`), upstream credentials (`UpstreamCredentials`)
//! and upstream TLS (`DestinationRule`); `ServiceRole`, `ServiceRoleBinding`,
//! `RbacConfig` and `AuthorizationSettings` through the access policy.
//!
//! The oracle: no panic; every error names the file and a document and
//! line of the input (see [`crate::policy`]); every part answers the same
//! the second time.
//!
//! Inputs that could name a device or a kernel file (`/dev`, `/proc`,
//! `/sys`, or any YAML escape, which could spell them) are skipped: key
//! and secret files named by the policy are read, and `/dev/zero` would
//! never end. That is the operator's file, not untrusted input.

use palisade_client::Upstreams;
use palisade_core::Guard;
use palisade_core::authz::{AccessPolicy, CheckRequest, ExternalAuthorizers, ExternalDecision};
use palisade_core::policy::{FromPolicy, PolicyError, PolicySet, Spec, Workload, WorkloadPolicy};
use palisade_jwt::JwtAuthenticator;
use palisade_mtls::UpstreamTls;
use palisade_signin::SignIn;
use palisade_spnego::SpnegoAuthenticator;

use crate::policy::{SOURCE, assert_located, load};

/// At most this many workloads are compiled for one input.
const MAX_WORKLOADS: usize = 4;

/// Whether the text could name a special file.
fn names_special_file(text: &str) -> bool {
    text.contains('\\')
        || ["dev/", "/dev", "proc/", "/proc", "sys/", "/sys"]
            .iter()
            .any(|p| text.contains(p))
}

/// The workloads the documents select by `app` label, and the default one.
fn workloads(set: &PolicySet) -> Vec<Workload> {
    let mut out = vec![Workload::new("details", "default")];
    for doc in set.documents() {
        let Some(labels) = doc.spec.selector().map(|s| &s.match_labels) else {
            continue;
        };
        let Some(app) = labels.get("app") else { continue };
        let mut w = Workload::new(app, doc.metadata.namespace());
        for (k, v) in labels {
            w = w.label(k, v);
        }
        if out.len() < MAX_WORKLOADS && !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

/// Stand-ins for the `CUSTOM` providers the file names.
fn authorizers(set: &PolicySet) -> ExternalAuthorizers {
    set.documents()
        .iter()
        .filter_map(|d| match &d.spec {
            Spec::AuthorizationPolicy(p) => p.provider.as_ref().map(|p| p.name.as_str()),
            _ => None,
        })
        .fold(ExternalAuthorizers::new(), |a, name| {
            a.register(name, [""; 0], |_: CheckRequest| async { ExternalDecision::Deny })
        })
}

/// What each part answers: its error, or `None`.
fn compile(policy: &WorkloadPolicy<'_>, authorizers: &ExternalAuthorizers) -> Vec<Option<PolicyError>> {
    let access = AccessPolicy::compile_with(policy, authorizers);
    let jwt = JwtAuthenticator::from_policy_offline(policy);
    let guard = match (&access, &jwt) {
        (Ok(access), Ok(jwt)) => {
            let mut guard = Guard::builder().access_policy(access.clone());
            if let Some(jwt) = jwt.clone() {
                guard = guard.authenticator(jwt);
            }
            guard
                .build()
                .err()
                .map(|e| PolicyError::new(SOURCE, e.to_string()))
        }
        _ => None,
    };
    vec![
        access.err(),
        jwt.err(),
        guard,
        SignIn::check_policy(policy).err(),
        SpnegoAuthenticator::builder().settings_from(policy).err(),
        palisade_mtls::mode_for_port(policy, 0).err(),
        palisade_mtls::mode_for_port(policy, 8443).err(),
        Upstreams::from_policy(policy).err(),
        UpstreamTls::check_policy(policy).err(),
    ]
}

/// One input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if names_special_file(text) {
        return;
    }
    let Ok(set) = load(text) else { return };
    let authorizers = authorizers(&set);
    for workload in workloads(&set) {
        let policy = set.for_workload(&workload);
        let errors = compile(&policy, &authorizers);
        for e in errors.iter().flatten() {
            assert_located(e, text);
        }
        assert_eq!(
            errors,
            compile(&policy, &authorizers),
            "{workload:?}: compiling is not deterministic"
        );
    }
}
