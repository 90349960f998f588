//! The Kerberos side the SPNEGO tests share: a realm with alice and two
//! service principals, and the token curl sent.

use std::path::PathBuf;

use palisade::testkit::KerberosRealm;

/// A running realm, the keytab of `HTTP/localhost` and alice's credentials.
pub(crate) struct Realm {
    pub(crate) realm: KerberosRealm,
    pub(crate) keytab: PathBuf,
    pub(crate) ccache: PathBuf,
}

/// Starts a realm with the user `alice` (logged in) and the services
/// `HTTP/localhost` (its keytab kept) and `HTTP/elsewhere`.
pub(crate) fn realm() -> Realm {
    let realm = KerberosRealm::start().unwrap_or_else(|e| panic!("{e}"));
    realm.add_user("alice", "alice-password").unwrap();
    let keytab = realm.add_service("HTTP/localhost").unwrap();
    realm.add_service("HTTP/elsewhere").unwrap();
    let ccache = realm.kinit("alice", "alice-password").unwrap();
    Realm {
        realm,
        keytab,
        ccache,
    }
}

/// The last Negotiate token in curl's verbose log.
pub(crate) fn sent_token(verbose: &str) -> Option<String> {
    verbose
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("> Authorization: Negotiate "))
        .map(|t| t.trim().to_owned())
}
