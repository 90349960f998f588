//! Mutual TLS for Palisade: a service terminates TLS itself, knows which
//! workload calls it (its SPIFFE ID, `cluster.local/ns/NS/sa/SA`), and lets
//! policy use that identity, as Istio's `PeerAuthentication` and
//! `principals`/`namespaces` do, without a sidecar.
//!
//! - [`ServerTls`]: the server's certificate and key, the client trust
//!   bundle and CRLs, the [`MtlsMode`] (`STRICT`, `PERMISSIVE`, `DISABLE`),
//!   and rotation without restart ([`ServerTls::reload`], [`ServerTls::watch`],
//!   [`ServerTls::reload_on_sighup`]).
//! - [`axum::serve`] (feature `axum`): the accept loop for axum, hyper and
//!   tower services; [`ServerTls::actix_on_connect`] (feature `actix`): the
//!   same facts for actix-web's rustls listener, and [`actix::server`] for PERMISSIVE
//!   (plaintext and TLS on one port) under actix-web.
//! - [`peer_identity`] and [`SpiffeId`]: the identity parsed once per
//!   connection from the verified chain, never from the common name.
//! - [`mode_for_port`]: Istio `PeerAuthentication` documents, as written.
//! - [`ClientTls`]: calling other services with this service's certificate,
//!   checking the server's SPIFFE ID or name (Istio's `DestinationRule`
//!   `MUTUAL` with `subjectAltNames`), ready for reqwest and hyper;
//!   [`UpstreamTls`]: one per upstream host from the workload's
//!   `DestinationRule` documents (`DISABLE`, `SIMPLE`, `MUTUAL`,
//!   `ISTIO_MUTUAL`).
//! - Certificate-bound access tokens (RFC 8705 `cnf.x5t#S256`) are checked
//!   by `palisade-jwt` against the certificate of the connection.
//!
//! The peer identity reaches the request through the connection
//! ([`ConnectionInfo`](palisade_core::authn::ConnectionInfo)), never a header, and
//! the guard merges it into the request's [`Identity`](palisade_core::Identity):
//! `source.principal`, `source.namespace` and `principals: [...]` in
//! policies, and `peer` in `/whoami`.

mod client;
mod files;
pub mod identity;
mod peer_auth;
mod resumption;
mod server;
#[cfg(test)]
mod test_support;
mod upstream;

#[cfg(feature = "actix")]
pub mod actix;
#[cfg(feature = "axum")]
pub mod axum;

pub use client::{ClientTls, ClientTlsBuilder};
pub use identity::{SpiffeId, SpiffeIdError, fingerprint_sha256, peer_identity};
pub use peer_auth::mode_for_port;
/// The rustls this crate's configurations are of
/// ([`ServerTls::server_config`], [`ClientTls::client_config`]): name its
/// types through here, so that they are the same version.
pub use rustls;
pub use server::{LOG_TARGET, MtlsMode, ServerTls, ServerTlsBuilder, TlsError};
/// The tokio-rustls of [`ClientTls::connector`].
pub use tokio_rustls;
pub use upstream::{MeshIdentity, UpstreamRoute, UpstreamTls, UpstreamTransport};
