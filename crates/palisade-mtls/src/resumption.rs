//! TLS session resumption that a reload forgets, on the client side. A
//! resumed session carries the identity and the trust of the handshake
//! that began it: after a rotation, a connection that resumed would still
//! present the old client certificate, and one to a server the new bundle
//! no longer trusts would not check it again. Every successful reload of
//! a `ClientTls` starts its store afresh. (The server side resumes nothing
//! when it takes client certificates: `ServerTls::builder`.)

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;

/// Sessions kept for resumption, as rustls keeps them by default.
const SESSIONS: usize = 256;

/// A client's sessions with the servers it called, forgotten at each
/// reload: a new connection then presents the new certificate and checks
/// the server against the new bundle.
pub(crate) struct ClientSessions(ArcSwap<ClientSessionMemoryCache>);

impl ClientSessions {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self(ArcSwap::from_pointee(ClientSessionMemoryCache::new(
            SESSIONS,
        ))))
    }

    /// Forgets every session.
    pub(crate) fn forget(&self) {
        self.0.store(Arc::new(ClientSessionMemoryCache::new(SESSIONS)));
    }
}

impl fmt::Debug for ClientSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSessions")
    }
}

impl ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.0.load().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.load().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0.load().set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.load().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.0.load().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.0.load().insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.0.load().take_tls13_ticket(server_name)
    }
}
