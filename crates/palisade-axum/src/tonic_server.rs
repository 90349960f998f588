//! The layer under tonic's own server (`tonic::transport::Server`), with
//! the `tonic` feature: the connection facts tonic records in a request's
//! extensions, read where Palisade's servers put a
//! [`ConnectionInfo`](palisade_core::authn::ConnectionInfo), the
//! `NamedService` that tonic's `add_service` asks of the services the
//! layers make.

use http::Extensions;
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use crate::{BodyLimit, GrpcStreams, Palisade, Require};

/// The addresses tonic's server recorded for the request's connection,
/// plain or under its own TLS, which records the TCP connection's facts as
/// well. (A TLS stream of the application's own, `serve_with_incoming`,
/// records them only within `TlsConnectInfo`, a type of tonic's TLS
/// features, which Palisade does not turn on.)
pub(crate) fn addrs(ext: &Extensions) -> Option<&TcpConnectInfo> {
    ext.get::<TcpConnectInfo>()
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
