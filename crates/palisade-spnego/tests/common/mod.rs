//! What the tests that run GSSAPI in a realm share. GSSAPI reads its
//! environment (the realm's configuration, the keytab, alice's credential
//! cache) when first used, so each test starts a real MIT KDC and runs
//! itself again with that environment.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libgssapi::context::{ClientCtx, CtxFlags};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE};
use palisade_core::authn::OwnedRequest;
use palisade_testkit::KerberosRealm;

/// Runs test `name` again (marked with `marker`) in a new realm where
/// alice is signed in and the keytab holds `HTTP/localhost`.
pub(crate) fn run_again_in_a_realm(name: &str, marker: &str) {
    let realm = KerberosRealm::start().unwrap_or_else(|e| panic!("{e}"));
    realm.add_user("alice", "alice-password").unwrap();
    let keytab = realm.add_service("HTTP/localhost").unwrap();
    let ccache = realm.kinit("alice", "alice-password").unwrap();
    palisade_testkit::run_test_again(name, marker, &realm.server_and_client_env(&keytab, &ccache));
    drop(realm);
}

/// A request with a new Negotiate ticket of alice's for `HTTP/localhost`:
/// a client context of its own, which no acceptor has seen (no replay).
pub(crate) fn fresh_request() -> OwnedRequest {
    let target = Name::new(b"HTTP@localhost", Some(GSS_NT_HOSTBASED_SERVICE))
        .and_then(|n| n.canonicalize(Some(GSS_MECH_KRB5)))
        .unwrap();
    let mut ctx = ClientCtx::new(None, target, CtxFlags::GSS_C_MUTUAL_FLAG, Some(GSS_MECH_SPNEGO));
    let token = ctx.step(None, None).unwrap().expect("an initial token");
    OwnedRequest::get("/").header("authorization", format!("Negotiate {}", STANDARD.encode(&*token)))
}
