//! TLS session resumption that a reload forgets, on the client side. A
//! resumed session carries the identity and the trust of the handshake
//! that began it: after a rotation, a connection that resumed would still
//! present the old client certificate, and one to a server the new bundle
//! no longer trusts would not check it again. Every successful reload of
//! a `ClientTls` starts its store afresh, and keeps the sessions a server
//! gives afterwards only for a server name a handshake has verified since,
//! its chain and its signature (a connection opened before the reload may
//! receive its tickets after it: rustls puts them in the store the
//! configuration has then, and says nothing of the connection they came
//! on). What that leaves: once a handshake has verified a name, a late
//! ticket from an older connection to that name is kept too, so a server
//! that shares its name with one the new bundle trusts (a fleet rotated
//! in part), or the old client certificate on such a connection, can
//! still be resumed with. (The server side resumes nothing when it takes
//! client certificates: `ServerTls::builder`.)

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;

/// Sessions kept for resumption, as rustls keeps them by default.
const SESSIONS: usize = 256;

/// Server names remembered as verified since the last reload; past it,
/// forgotten all at once (their servers' next sessions are not kept until
/// a handshake verifies them again).
const VERIFIED_NAMES: usize = 1024;

/// Handshakes whose chain is verified and whose signature is still to
/// check, remembered at once; past it, forgotten all at once (those
/// handshakes' sessions are then not kept).
const PENDING_HANDSHAKES: usize = 256;

/// A client's sessions with the servers it called, forgotten at each
/// reload: a new connection then presents the new certificate and checks
/// the server against the new bundle.
pub(crate) struct ClientSessions {
    cache: ArcSwap<ClientSessionMemoryCache>,
    verified: Mutex<Verified>,
}

/// The server names a handshake has verified since the last reload.
struct Verified {
    /// Counts the reloads.
    generation: u64,
    names: HashSet<ServerName<'static>>,
    /// Handshakes of this generation whose chain is verified, by the
    /// server's certificate: the names it was verified for (one
    /// certificate may serve several at once), until the server's
    /// signature proves it holds the certificate's key. Emptied at each
    /// reload, with `names`.
    pending: HashMap<Vec<u8>, Vec<ServerName<'static>>>,
}

impl ClientSessions {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            cache: ArcSwap::from_pointee(ClientSessionMemoryCache::new(SESSIONS)),
            verified: Mutex::new(Verified {
                generation: 0,
                names: HashSet::new(),
                pending: HashMap::new(),
            }),
        })
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, Verified> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The reloads so far: read before the material a handshake is
    /// verified with is loaded ([`verified_as`](Self::verified_as)).
    pub(crate) fn generation(&self) -> u64 {
        self.verified().generation
    }

    /// A handshake verified the chain of `certificate`, the server of
    /// `name`, with the material of `generation`: its name counts as
    /// verified once the server's signature is checked ([`signed`](Self::signed)).
    pub(crate) fn chain_verified(&self, generation: u64, certificate: &[u8], name: &ServerName<'_>) {
        let mut v = self.verified();
        if v.generation == generation {
            if v.pending.len() >= PENDING_HANDSHAKES && !v.pending.contains_key(certificate) {
                v.pending.clear();
            }
            let names = v.pending.entry(certificate.to_vec()).or_default();
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
    }

    /// A handshake checked the signature of the server holding
    /// `certificate`: the names its chain was verified for count as
    /// verified (their sessions are kept). A reload since emptied
    /// `pending`, so none of an older generation is found.
    pub(crate) fn signed(&self, certificate: &[u8]) {
        let mut v = self.verified();
        let Some(names) = v.pending.remove(certificate) else {
            return;
        };
        for name in names {
            if !v.names.contains(&name) {
                if v.names.len() >= VERIFIED_NAMES {
                    v.names.clear();
                }
                v.names.insert(name);
            }
        }
    }

    /// Forgets every session, and which servers were verified. Called
    /// after the new material is in place.
    pub(crate) fn forget(&self) {
        let mut v = self.verified();
        v.generation += 1;
        v.names.clear();
        v.pending.clear();
        self.cache
            .store(Arc::new(ClientSessionMemoryCache::new(SESSIONS)));
    }

    /// The store a new session with `name`'s server goes into: none when
    /// no handshake has verified that server since the last reload (the
    /// session may be of a connection opened before it).
    fn keeping(&self, name: &ServerName<'_>) -> Option<Arc<ClientSessionMemoryCache>> {
        // Under the lock, so that the store is the one of the generation
        // whose names were read.
        let v = self.verified();
        v.names.contains(name).then(|| self.cache.load_full())
    }
}

impl fmt::Debug for ClientSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSessions")
    }
}

impl ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.cache.load().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.cache.load().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        if let Some(cache) = self.keeping(&server_name) {
            cache.set_tls12_session(server_name, value);
        }
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.cache.load().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.cache.load().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        if let Some(cache) = self.keeping(&server_name) {
            cache.insert_tls13_ticket(server_name, value);
        }
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.cache.load().take_tls13_ticket(server_name)
    }
}
