//! TLS session resumption that a reload forgets. A resumed session skips
//! certificate verification: it carries the identity and trust of the
//! handshake that began it. So a session begun under material a reload
//! replaced (a client certificate a new CRL revokes, a CA taken out of the
//! bundle, this service's previous certificate) must not be resumed under
//! the new: every successful reload starts the store afresh, as Envoy's
//! new TLS context does when its secrets change.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};

/// Sessions kept for resumption, as rustls keeps them by default.
const SESSIONS: usize = 256;

/// A server's resumable sessions (TLS 1.3 tickets backed by this store,
/// TLS 1.2 session ids), forgotten at each reload.
pub(crate) struct ServerSessions(ArcSwap<ServerSessionMemoryCache>);

impl ServerSessions {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self(ArcSwap::new(ServerSessionMemoryCache::new(SESSIONS))))
    }

    /// Forgets every session: the next handshake of each client is a full
    /// one, verified against the material in use.
    pub(crate) fn forget(&self) {
        self.0.store(ServerSessionMemoryCache::new(SESSIONS));
    }
}

impl fmt::Debug for ServerSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSessions")
    }
}

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

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
