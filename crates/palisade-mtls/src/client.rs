//! The client side: calling other services with this service's own
//! certificate, as Istio's `DestinationRule` with `tls.mode: MUTUAL` (or
//! `ISTIO_MUTUAL`) and `subjectAltNames` does. The server's chain is checked
//! against the trust bundle, and, when names are expected, its SPIFFE ID
//! (URI SAN) or DNS name must be one of them, whatever host name was dialled
//! (a workload certificate has no DNS name). Certificate, key and bundle
//! rotate like the server's.
//!
//! ```no_run
//! use palisade_mtls::ClientTls;
//! # async fn call() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = ClientTls::builder("productpage.crt", "productpage.key", "mesh-ca.pem")
//!     .expect_subject_alt_name("spiffe://cluster.local/ns/default/sa/details")
//!     .build()?;
//! tls.watch(std::time::Duration::from_secs(2));
//! // reqwest (with its rustls backend) takes the configuration as it is.
//! let client = reqwest::Client::builder()
//!     .use_preconfigured_tls((*tls.client_config()).clone())
//!     .build()?;
//! let body = client.get("https://details.default.svc:9080/list").send().await?.text().await?;
//! # let _ = body;
//! # Ok(()) }
//! ```
//!
//! With hyper, [`ClientTls::connector`] gives a `tokio_rustls::TlsConnector`
//! to put under `hyper::client::conn::http1::handshake` (or under a
//! hyper-util legacy-client connector).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::files;
use crate::resumption::ClientSessions;
use crate::server::TlsError;

/// Where a client's TLS material lives, and what the server must be.
#[derive(Clone, Debug)]
#[must_use]
pub struct ClientTlsBuilder {
    /// The client certificate chain and key; none for server-authenticated
    /// TLS ([`ClientTls::server_only`]).
    identity: Option<(PathBuf, PathBuf)>,
    ca: PathBuf,
    expected: Vec<String>,
    /// Any certificate the bundle vouches for, whatever its names.
    any_name: bool,
}

impl ClientTlsBuilder {
    /// The files, in the order their stamp is taken.
    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.ca.clone()];
        if let Some((cert, key)) = &self.identity {
            paths.extend([cert.clone(), key.clone()]);
        }
        paths
    }

    /// Accept a server whose certificate has this subject alternative name:
    /// a SPIFFE ID (`spiffe://cluster.local/ns/default/sa/details`, matched
    /// against the certificate's SPIFFE ID: its one URI SAN, as a server
    /// reads a client's, so a certificate with several URI SANs names no
    /// workload), another URI (matched among the URI SANs) or a DNS name
    /// (matched case-insensitively). Any one
    /// of the expected names will do; none expected: the dialled host name
    /// must be in the certificate, as for any HTTPS client.
    pub fn expect_subject_alt_name(mut self, name: impl Into<String>) -> Self {
        self.expected.push(name.into());
        self
    }

    /// Accept any workload certificate the trust bundle vouches for (one
    /// with a SPIFFE ID), whatever the dialled name, when no name is
    /// expected: `ISTIO_MUTUAL` without `subjectAltNames`, where the bundle
    /// is the mesh's own CA. A Kubernetes service name dialled
    /// (`NAME.NS.svc…`) takes a workload of namespace `NS` only (its pods'
    /// service accounts are of that namespace); any other name, any
    /// workload of the mesh. Weaker than Istio in Kubernetes, which fills
    /// in the destination's own service accounts. Not for a public CA's
    /// bundle.
    /// [`expect_subject_alt_name`](Self::expect_subject_alt_name) takes
    /// precedence.
    pub fn accept_any_name_in_bundle(mut self) -> Self {
        self.any_name = true;
        self
    }

    /// Loads the files.
    ///
    /// # Errors
    /// A [`TlsError`] naming the file that cannot be read or used.
    pub fn build(self) -> Result<ClientTls, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let stamp = files::stamp(&self.paths());
        let material = Arc::new(ArcSwap::from_pointee(load(&self, &provider)?));
        let expected: Arc<[String]> = self.expected.clone().into();
        let sessions = ClientSessions::new();
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(&self.ca, e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SanVerifier {
                material: material.clone(),
                expected,
                any_name: self.any_name,
                sessions: sessions.clone(),
            }))
            .with_client_cert_resolver(Arc::new(ClientCert(material.clone())));
        config.resumption = rustls::client::Resumption::store(sessions.clone());
        Ok(ClientTls(Arc::new(Inner {
            files: self,
            provider,
            material,
            config: Arc::new(config),
            sessions,
            stamp: Mutex::new(files::Stamps::built(stamp)),
        })))
    }
}

struct Material {
    key: Option<Arc<CertifiedKey>>,
    verifier: Arc<WebPkiServerVerifier>,
}

fn load(files: &ClientTlsBuilder, provider: &Arc<CryptoProvider>) -> Result<Material, TlsError> {
    let key = match &files.identity {
        Some((cert, key)) => Some(Arc::new(files::certified_key(cert, key, provider)?)),
        None => None,
    };
    let roots = files::roots(&files.ca)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::new(&files.ca, format!("cannot build the server verifier: {e}")))?;
    Ok(Material { key, verifier })
}

struct Inner {
    files: ClientTlsBuilder,
    provider: Arc<CryptoProvider>,
    material: Arc<ArcSwap<Material>>,
    config: Arc<ClientConfig>,
    /// Forgotten at each reload (`resumption`).
    sessions: Arc<ClientSessions>,
    stamp: Mutex<files::Stamps>,
}

/// A TLS client configuration with this service's certificate, rotating
/// like [`ServerTls`](crate::ServerTls). Cloning is an `Arc` clone.
#[derive(Clone)]
pub struct ClientTls(Arc<Inner>);

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files = &self.0.files;
        f.debug_struct("ClientTls")
            .field("cert", &files.identity.as_ref().map(|(cert, _)| cert))
            .field("key", &files.identity.as_ref().map(|_| "<file>"))
            .field("ca", &files.ca)
            .field("expected", &files.expected)
            .field("any_name", &files.any_name)
            .finish()
    }
}

impl ClientTls {
    /// Starts from this service's certificate chain and key (PEM) and the
    /// trust bundle for servers.
    pub fn builder(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        ca: impl Into<PathBuf>,
    ) -> ClientTlsBuilder {
        ClientTlsBuilder {
            identity: Some((cert.into(), key.into())),
            ca: ca.into(),
            expected: Vec::new(),
            any_name: false,
        }
    }

    /// Server-authenticated TLS (Istio's `SIMPLE`): no client certificate,
    /// the server checked against the trust bundle `ca`.
    pub fn server_only(ca: impl Into<PathBuf>) -> ClientTlsBuilder {
        ClientTlsBuilder {
            identity: None,
            ca: ca.into(),
            expected: Vec::new(),
            any_name: false,
        }
    }

    /// The rustls configuration; it follows every reload.
    #[must_use]
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.0.config.clone()
    }

    /// A tokio-rustls connector with this configuration, for hyper's client
    /// (`hyper::client::conn` over the returned stream, or hyper-util's
    /// legacy client with a connector built on it).
    #[must_use]
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client_config())
    }

    /// A connector for HTTP/2 alone (gRPC: tonic's channel): this
    /// configuration offering `h2` by ALPN, as HTTP/2 over TLS requires
    /// (RFC 9113 §3.2; grpc-java and grpc-go refuse a connection without
    /// it). It follows every reload, as [`connector`](Self::connector)'s.
    #[must_use]
    pub fn h2_connector(&self) -> tokio_rustls::TlsConnector {
        let mut config = ClientConfig::clone(&self.client_config());
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// Reads the files again, for new connections. The TLS sessions it
    /// could resume are forgotten, so a new connection presents the new
    /// certificate and checks the server against the new bundle.
    ///
    /// # Errors
    /// A [`TlsError`] naming the bad file; the old material stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        files::reload(self)
    }

    /// Whether `other` is this very client TLS (a clone of it), whose
    /// material reloads together.
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Reloads when a file changed since the last look.
    pub fn reload_if_changed(&self) -> bool {
        files::reload_if_changed(self)
    }

    /// Watches the files every `interval` from a background thread, until
    /// neither this `ClientTls` (nor a clone) nor a configuration or
    /// connector made from it (or a copy of that configuration) is in use:
    /// call it once per `ClientTls`. ([`reload_on_sighup`](Self::reload_on_sighup)
    /// keeps a clone for the runtime's life, and with it the watch.)
    pub fn watch(&self, interval: Duration) {
        files::watch(self, interval);
    }

    /// Reloads on `SIGHUP`, from a task on the current tokio runtime (the
    /// files are read on its blocking pool). The task lives as long as the
    /// runtime: call it once per `ClientTls`.
    ///
    /// # Errors
    /// When the signal handler cannot be installed.
    pub fn reload_on_sighup(&self) -> std::io::Result<()> {
        files::reload_on_sighup(self)
    }
}

impl files::Reload for ClientTls {
    fn paths(&self) -> Vec<PathBuf> {
        self.0.files.paths()
    }

    /// Another clone, or a configuration or connector made from it (its
    /// clients and their connections hold those), a copy of the
    /// configuration (`(*client_config()).clone()`, as reqwest's
    /// `use_preconfigured_tls` takes it) included: every copy holds the
    /// session store, which `Inner`, its configuration and the
    /// configuration's verifier hold once each.
    fn in_use_elsewhere(&self) -> bool {
        Arc::strong_count(&self.0) > 1
            || Arc::strong_count(&self.0.config) > 1
            || Arc::strong_count(&self.0.sessions) > 3
    }

    fn read_again(&self) -> Result<(), TlsError> {
        let loaded = load(&self.0.files, &self.0.provider);
        let files = &self.0.files;
        let named = files.identity.as_ref().map_or(&files.ca, |(cert, _)| cert);
        files::install(&self.0.material, loaded, named, "client TLS material")?;
        // A resumed session presents the old certificate and skips the
        // server's verification: none outlives the material it began with.
        self.0.sessions.forget();
        Ok(())
    }

    fn last_stamp(&self) -> &Mutex<files::Stamps> {
        &self.0.stamp
    }
}

#[derive(Debug)]
struct ClientCert(Arc<ArcSwap<Material>>);

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material").finish_non_exhaustive()
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.load().key.clone()
    }

    fn has_certs(&self) -> bool {
        self.0.load().key.is_some()
    }
}

struct SanVerifier {
    material: Arc<ArcSwap<Material>>,
    expected: Arc<[String]>,
    any_name: bool,
    /// Told which servers it verified, and with which reload's material.
    sessions: Arc<ClientSessions>,
}

impl fmt::Debug for SanVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SanVerifier")
            .field("expected", &self.expected)
            .field("any_name", &self.any_name)
            .finish()
    }
}

/// Whether the certificate has a SPIFFE ID: one URI SAN, a valid SPIFFE
/// ID, as a server reads a client's ([`crate::peer_identity`]).
fn has_spiffe_id(der: &[u8]) -> bool {
    crate::identity::spiffe_id_of(der).is_some()
}

/// Whether a workload certificate may serve the dialled name when no name
/// is expected ([`ClientTlsBuilder::accept_any_name_in_bundle`]): for a
/// Kubernetes service name (`NAME.NS.svc`, `NAME.NS.svc.DOMAIN` as
/// `NAME.NS.svc.cluster.local`), only a workload of namespace `NS` (SPIFFE
/// ID `…/ns/NS/…`), since a service's pods run under service accounts of
/// its own namespace; for any other name (an address, a short name, a
/// StatefulSet pod's `POD.NAME.NS.svc…`), any workload of the mesh. The
/// name is the one dialled: the `sni` when a rule sets one.
/// Istio pins the service's own service accounts, which only its registry
/// knows; this is the part of that a name tells.
fn serves_dialled_namespace(der: &[u8], server_name: &ServerName<'_>) -> bool {
    let ServerName::DnsName(name) = server_name else {
        return true;
    };
    let name = name.as_ref().to_ascii_lowercase();
    let Some(namespace) = crate::upstream::service_namespace(&name) else {
        return true;
    };
    crate::identity::spiffe_id_of(der).is_some_and(|id| {
        let mut path = id.path().split('/').skip(1);
        path.next() == Some("ns") && path.next().is_some_and(|ns| ns.eq_ignore_ascii_case(namespace))
    })
}

/// Whether the certificate names one of `expected`, each only among SANs
/// of its own type (Istio's typed matchers): a SPIFFE ID (`spiffe://…`)
/// as the certificate's SPIFFE ID, exactly (an X509-SVID has one URI SAN:
/// a certificate with several names no workload, as a server reads a
/// client's), another URI among its URI SANs exactly, a host name among
/// its DNS SANs without regard to case.
fn names_one_of(der: &[u8], expected: &[String]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let is_uri = |e: &str| e.contains("://");
    // A workload's SPIFFE ID; any other URI (`spiffe://td` alone, which
    // names no workload, too) is matched among the URI SANs.
    let names_workload = |e: &str| crate::SpiffeId::parse(e).is_ok_and(|id| !id.path().is_empty());
    let spiffe = crate::identity::spiffe_id_from(&cert);
    if spiffe.is_some_and(|id| expected.iter().any(|e| e == id.as_str())) {
        return true;
    }
    san.value.general_names.iter().any(|n| match n {
        GeneralName::URI(u) => expected.iter().any(|e| is_uri(e) && !names_workload(e) && e == u),
        GeneralName::DNSName(d) => expected.iter().any(|e| !is_uri(e) && e.eq_ignore_ascii_case(d)),
        _ => false,
    })
}

impl SanVerifier {
    /// The check of [`ServerCertVerifier::verify_server_cert`], with `verifier`.
    fn verify_with(
        &self,
        verifier: &WebPkiServerVerifier,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            // The chain is good and the dialled name is in the certificate.
            Ok(v) if self.expected.is_empty() || names_one_of(end_entity, &self.expected) => Ok(v),
            // The chain is good, and with no name expected any workload of
            // the mesh's own bundle will do: a certificate with a SPIFFE ID.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.any_name
                && self.expected.is_empty()
                && has_spiffe_id(end_entity)
                && serves_dialled_namespace(end_entity, server_name) =>
            {
                Ok(ServerCertVerified::assertion())
            }
            // The chain is good; only the dialled name is missing (SPIFFE
            // certificates carry no DNS name): the expected names decide.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.expected.is_empty() && names_one_of(end_entity, &self.expected) => {
                Ok(ServerCertVerified::assertion())
            }
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
            Err(e) => Err(e),
        }
    }
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Read before the material: a reload in between makes this
        // handshake's sessions unkept, never an old handshake's kept. The
        // name counts as verified once the server's signature checks too
        // (`verify_tls1x_signature`, which rustls calls after this).
        let generation = self.sessions.generation();
        let verifier = self.material.load().verifier.clone();
        let verified = self.verify_with(&verifier, end_entity, intermediates, server_name, ocsp, now);
        if verified.is_ok() {
            self.sessions.chain_verified(generation, end_entity, server_name);
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let signed = self
            .material
            .load()
            .verifier
            .verify_tls12_signature(message, cert, dss);
        if signed.is_ok() {
            self.sessions.signed(cert);
        }
        signed
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let signed = self
            .material
            .load()
            .verifier
            .verify_tls13_signature(message, cert, dss);
        if signed.is_ok() {
            // The server holds the key of the certificate whose chain was
            // verified: its sessions are kept from now.
            self.sessions.signed(cert);
        }
        signed
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.material.load().verifier.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use palisade_testkit::TestPki;

    use super::*;
    use crate::test_support::{Rotation, reloads_on_sighup};

    #[test]
    fn expected_names_match_sans_of_their_own_type_and_a_spiffe_id_is_one_valid_uri() {
        let pki = TestPki::new();
        let id = "spiffe://cluster.local/ns/default/sa/reviews";
        let workload = pki.workload("default", "reviews").cert_der();
        assert!(names_one_of(&workload, &[id.to_owned()]));
        assert!(has_spiffe_id(&workload));
        // The same text as a DNS name is no SPIFFE ID.
        let dns = pki.server(&[id]).cert_der();
        assert!(!names_one_of(&dns, &[id.to_owned()]));
        assert!(!has_spiffe_id(&dns));
        let host = pki.server(&["Reviews.Default.svc"]).cert_der();
        assert!(names_one_of(&host, &["reviews.default.svc".to_owned()]));
        // Two URIs, or one that is not a SPIFFE ID, are none, even when
        // one of the two is the expected ID.
        for uris in [
            &[id, "spiffe://cluster.local/ns/x/sa/y"][..],
            &["spiffe://cluster.local/ns/x/sa/y", id][..],
            &["spiffe://Bad Domain/x"][..],
            &["spiffe://cluster.local"][..],
        ] {
            let cert = pki.client_with_uris(uris).cert_der();
            assert!(!has_spiffe_id(&cert), "{uris:?}");
            assert!(!names_one_of(&cert, &[id.to_owned()]), "{uris:?}");
        }
        // A URI of another scheme is matched among several, and so is a
        // trust domain alone (no workload's ID).
        let other = "https://reviews.example/workload";
        let cert = pki.client_with_uris(&[id, other]).cert_der();
        assert!(names_one_of(&cert, &[other.to_owned()]));
        let domain = "spiffe://cluster.local";
        let cert = pki.client_with_uris(&[domain]).cert_der();
        assert!(names_one_of(&cert, &[domain.to_owned()]));
        // Nor is a leaf that may sign certificates.
        assert!(!has_spiffe_id(
            &pki.signing_workload("default", "reviews").cert_der()
        ));
    }

    /// `ISTIO_MUTUAL` without names: a Kubernetes service name dialled
    /// (`NAME.NS.svc…`) takes a workload of namespace `NS` only; any other
    /// name, any workload of the mesh; a certificate without a SPIFFE ID,
    /// none.
    #[test]
    fn any_name_in_the_bundle_is_of_the_dialled_services_namespace() {
        use crate::test_support::handshake_to;
        let dir = palisade_testkit::TempDir::new("palisade-mtls-client-namespace");
        let pki = TestPki::new();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let (cert, key) = pki
            .workload("default", "productpage")
            .write_to(dir.path(), "client")
            .unwrap();
        let client = ClientTls::builder(&cert, &key, &ca)
            .accept_any_name_in_bundle()
            .build()
            .unwrap()
            .client_config();
        let server = |cert: palisade_testkit::TestCert, name: &str| {
            let (c, k) = cert.write_to(dir.path(), name).unwrap();
            crate::ServerTls::builder(&c, &k).build().unwrap().server_config()
        };
        let reviews = server(pki.workload("prod", "reviews"), "reviews");
        for (dialled, accepted) in [
            ("reviews.prod.svc.cluster.local", true),
            ("reviews.PROD.svc", true),
            ("reviews.default.svc.cluster.local", false),
            ("reviews.other.svc", false),
            ("reviews", true),
            ("reviews.example.com", true),
            ("127.0.0.1", true),
        ] {
            let shook = handshake_to(client.clone(), reviews.clone(), dialled);
            assert_eq!(shook.is_ok(), accepted, "{dialled}: {shook:?}");
        }
        let no_id = server(pki.server(&["reviews.prod.svc.cluster.local.invalid"]), "plain");
        assert!(handshake_to(client, no_id, "reviews.prod.svc.cluster.local").is_err());
    }

    /// The HTTP/2 connector offers `h2`, which a server that speaks only
    /// HTTP/2 takes; the plain one offers nothing.
    #[test]
    fn the_http2_connector_offers_h2_by_alpn() {
        let dir = palisade_testkit::TempDir::new("palisade-mtls-client-alpn");
        let pki = TestPki::new();
        let (ca, server) = trusted_until_rotated(dir.path(), &pki);
        let mut h2_only = rustls::ServerConfig::clone(&server.server_config());
        h2_only.alpn_protocols = vec![b"h2".to_vec()];
        let h2_only = Arc::new(h2_only);
        let client = ClientTls::server_only(&ca).build().unwrap();
        let h2 = client.h2_connector().config().clone();
        let (c, _) = crate::test_support::handshake(h2, h2_only.clone()).unwrap();
        assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]));
        let (c, _) = crate::test_support::handshake(client.client_config(), h2_only).unwrap();
        assert_eq!(c.alpn_protocol(), None);
    }

    /// In `dir`: `ca.pem` with `old`'s CA, and a server of `localhost`
    /// that CA vouches for, asking for no client certificate (so it gives
    /// session tickets): the bundle's path, and the server.
    fn trusted_until_rotated(dir: &std::path::Path, old: &TestPki) -> (PathBuf, crate::ServerTls) {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, old.ca_pem()).unwrap();
        let (cert, key) = old.server(&["localhost"]).write_to(dir, "server").unwrap();
        (ca, crate::ServerTls::builder(&cert, &key).build().unwrap())
    }

    /// A connection opened before a reload can receive its server's
    /// session tickets after it (rustls puts them in the store the
    /// configuration has then): they are not kept, so the next connection
    /// does not resume a session whose server the new bundle no longer
    /// trusts (nor present the old certificate). Without a reload, the same
    /// late tickets are resumed (the test's control).
    #[test]
    fn tickets_a_connection_from_before_a_reload_receives_are_not_resumed() {
        use rustls::HandshakeKind;

        use crate::test_support::{handshake, handshake_holding_tickets};
        let dir = palisade_testkit::TempDir::new("palisade-mtls-client-late-tickets");
        let (old, new) = (TestPki::new(), TestPki::new());
        let (ca, server) = trusted_until_rotated(dir.path(), &old);
        for reload in [false, true] {
            let client = ClientTls::server_only(&ca).build().unwrap();
            let (mut c, tickets) = handshake_holding_tickets(client.client_config(), server.server_config());
            if reload {
                std::fs::write(&ca, new.ca_pem()).unwrap();
                client.reload().unwrap();
            }
            c.read_tls(&mut &tickets[..]).unwrap();
            c.process_new_packets().unwrap();
            let next = handshake(client.client_config(), server.server_config());
            if reload {
                let Err(e) = next else {
                    panic!("a session from before the reload resumed");
                };
                assert!(
                    matches!(
                        e,
                        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                    ),
                    "{e}"
                );
            } else {
                let (c, _) = next.unwrap();
                assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
            }
            std::fs::write(&ca, old.ca_pem()).unwrap();
        }
    }

    /// After a reload, a handshake whose server shows a chain the new
    /// bundle trusts but cannot sign with its key (an impostor replaying
    /// another server's certificate) does not make that name's sessions
    /// kept: the late tickets of a connection from before the reload, to a
    /// server the new bundle no longer trusts, are still not resumed.
    #[test]
    fn a_chain_shown_without_its_key_does_not_make_late_tickets_kept() {
        use rustls::ServerConfig;
        use rustls::server::{ClientHello, ResolvesServerCert};
        use rustls::sign::CertifiedKey;

        use crate::test_support::{handshake, handshake_holding_tickets};

        #[derive(Debug)]
        struct Impostor(Arc<CertifiedKey>);
        impl ResolvesServerCert for Impostor {
            fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
                Some(self.0.clone())
            }
        }

        let dir = palisade_testkit::TempDir::new("palisade-mtls-client-impostor");
        let (old, new) = (TestPki::new(), TestPki::new());
        let (ca, rotated_out) = trusted_until_rotated(dir.path(), &old);
        // The new bundle's server certificate, shown with another key.
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let trusted = new.server(&["localhost"]);
        let other_key = new.server(&["localhost"]);
        let key = rustls::pki_types::PrivateKeyDer::try_from(other_key.key_der()).unwrap();
        let signing = provider.key_provider.load_private_key(key).unwrap();
        let shown = CertifiedKey::new(vec![CertificateDer::from(trusted.cert_der())], signing);
        let impostor = Arc::new(
            ServerConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Impostor(Arc::new(shown)))),
        );

        let client = ClientTls::server_only(&ca).build().unwrap();
        let (mut c, tickets) = handshake_holding_tickets(client.client_config(), rotated_out.server_config());
        std::fs::write(&ca, new.ca_pem()).unwrap();
        client.reload().unwrap();
        let Err(e) = handshake(client.client_config(), impostor) else {
            panic!("the impostor passed")
        };
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
            ),
            "{e}"
        );
        c.read_tls(&mut &tickets[..]).unwrap();
        c.process_new_packets().unwrap();
        let Err(e) = handshake(client.client_config(), rotated_out.server_config()) else {
            panic!("a session from before the reload resumed")
        };
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "{e}"
        );
    }

    /// A watch's clone is in use elsewhere while another clone, a
    /// configuration made from it, or a copy of one, lives.
    #[test]
    fn a_watched_client_is_in_use_while_a_clone_or_its_configuration_lives() {
        use crate::files::Reload as _;
        let dir = palisade_testkit::TempDir::new("palisade-mtls-client-in-use");
        let r = Rotation::new(dir.path());
        let client = ClientTls::builder(&r.cert, &r.key, &r.ca).build().unwrap();
        let watched = client.clone();
        assert!(watched.in_use_elsewhere());
        let connector = client.connector();
        let copy = (*client.client_config()).clone();
        drop(client);
        assert!(watched.in_use_elsewhere(), "its connector");
        drop(connector);
        assert!(watched.in_use_elsewhere(), "a copy of its configuration");
        drop(copy);
        assert!(!watched.in_use_elsewhere());
    }

    /// The client side of certificate rotation: `SIGHUP` (and `reload`)
    /// makes new connections present the new certificate; a bad file is
    /// refused, naming it, and the old certificate stays in use.
    #[test]
    fn sighup_and_reload_rotate_the_client_certificate_and_a_bad_file_keeps_the_old() {
        let dir = palisade_testkit::TempDir::new("palisade-mtls-client-reload");
        let r = Rotation::new(dir.path());
        let (first, second, key) = (&r.first, &r.second, &r.key);
        let client = ClientTls::builder(&r.cert, key, &r.ca).build().unwrap();
        let presented = |client: &ClientTls| r.presented(client);
        assert_eq!(presented(&client), first.cert_der());
        // SIGHUP (no file watch running): the new files are used.
        assert!(
            reloads_on_sighup(
                || client.reload_on_sighup(),
                || drop(second.write_to(dir.path(), "client").unwrap()),
                || presented(&client) == second.cert_der(),
            ),
            "SIGHUP did not reload the client certificate"
        );
        // A broken key file: refused with an error naming it, old material kept.
        std::fs::write(
            key,
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = client.reload().unwrap_err();
        assert!(err.to_string().contains("client.key"), "{err}");
        assert_eq!(presented(&client), second.cert_der());
        // And `reload()` picks up good files again.
        first.write_to(dir.path(), "client").unwrap();
        client.reload().unwrap();
        assert_eq!(presented(&client), first.cert_der());
    }
}
