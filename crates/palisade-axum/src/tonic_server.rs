//! The layer under tonic's own server (`tonic::transport::Server`), with
//! the `tonic` feature: the connection facts tonic records in a request's
//! extensions, read where Palisade's servers put a
//! [`ConnectionInfo`](palisade_core::authn::ConnectionInfo), the
//! `NamedService` that tonic's `add_service` asks of the services the
//! layers make, and a word on the client certificates tonic verifies.

use std::sync::atomic::{AtomicBool, Ordering};

use http::Extensions;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::{BodyLimit, GrpcStreams, Palisade, Require};

/// The addresses tonic's server recorded for the request's connection,
/// plain or TLS: its own TLS records the TCP connection's facts as well,
/// a TLS stream of the application's own (`serve_with_incoming`) only
/// within `TlsConnectInfo`.
pub(crate) fn addrs(ext: &Extensions) -> Option<&TcpConnectInfo> {
    ext.get::<TcpConnectInfo>().or_else(|| {
        ext.get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    })
}

/// Says, once in the process's life, that a client certificate tonic's
/// TLS verified is not read: the guard knows mTLS peers from Palisade's own
/// servers, which verify them as a `PeerAuthentication` says, so rules on
/// `principals` and `namespaces` see no peer here and refuse.
pub(crate) fn warn_of_unread_peer(ext: &Extensions) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.load(Ordering::Relaxed)
        && ext
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .is_some_and(|tls| tls.peer_certs().is_some())
        && !SAID.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            target: palisade_core::LOG_TARGET,
            "a client certificate verified by tonic's TLS is not read: rules on principals and namespaces see no mTLS peer and refuse. Serve mutual TLS with palisade_mtls::axum::serve_with to know the calling workload"
        );
    }
}

impl<S: NamedService> NamedService for Palisade<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: NamedService> NamedService for Require<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: NamedService> NamedService for GrpcStreams<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: NamedService> NamedService for BodyLimit<S> {
    const NAME: &'static str = S::NAME;
}
