//! The server side: a rustls `ServerConfig` whose certificate, key, client
//! trust bundle and CRLs can be replaced while it serves. New handshakes use
//! the new material; an open connection's client certificate is verified
//! again at its first request, at its next request when the client bundle
//! or CRLs changed, and when a certificate of its chain expires or a CRL
//! passes its `nextUpdate` ([`ServerTls::peer_recheck`]); a bad new file
//! keeps the old material and logs one error naming the file. The checks
//! are per request: an upgraded connection (a WebSocket, a `CONNECT`
//! tunnel) or one long streaming call is one request, and goes on after
//! its peer's certificate is revoked until it ends, as under Envoy. Bound
//! such streams' life where a revocation must reach them.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use palisade_core::authn::PeerRecheck;

use crate::files;
use crate::identity::SpiffeId;

/// Log target of the TLS side.
pub const LOG_TARGET: &str = "palisade::mtls";

/// PERMISSIVE's test, as Istio's sidecar makes it: a connection whose first
/// byte is a TLS handshake record (`0x16`) is TLS, anything else plaintext.
/// The byte is peeked, not read; the caller bounds the wait. The error is a
/// reason for the debug log.
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) async fn starts_with_tls(tcp: &tokio::net::TcpStream) -> Result<bool, &'static str> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) => Ok(first[0] == 0x16),
        Ok(_) => Err("closed"),
        Err(_) => Err("read error"),
    }
}

/// Istio's `PeerAuthentication` modes: the policy schema's own type, so a
/// mode read from a policy file is the mode the listener takes.
pub use palisade_core::policy::MtlsMode;

/// The mode in force, shared by a server's configuration, its verifier and
/// its listeners: [`ServerTls::set_mode`] changes it.
#[derive(Debug, Default)]
struct LiveMode(std::sync::atomic::AtomicU8);

impl LiveMode {
    fn new(mode: MtlsMode) -> Self {
        let live = Self::default();
        live.set(mode);
        live
    }

    fn get(&self) -> MtlsMode {
        match self.0.load(std::sync::atomic::Ordering::Acquire) {
            0 => MtlsMode::Strict,
            1 => MtlsMode::Permissive,
            _ => MtlsMode::Disable,
        }
    }

    fn set(&self, mode: MtlsMode) {
        let code = match mode {
            MtlsMode::Strict => 0,
            MtlsMode::Permissive => 1,
            MtlsMode::Disable => 2,
        };
        self.0.store(code, std::sync::atomic::Ordering::Release);
    }
}

/// The refusal of `asked` (a mode, a CRL, a trust domain) on a server
/// whose certificate is `cert` and that has no client CA.
fn needs_client_ca(cert: &Path, asked: &str) -> TlsError {
    TlsError::new(
        cert,
        format!("{asked} asks for mutual TLS, which needs a client CA to check callers with"),
    )
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
#[non_exhaustive]
pub struct TlsError {
    /// The file.
    pub file: String,
    /// What is wrong.
    pub message: String,
    /// The I/O error of a file that could not be read (missing, not
    /// allowed): one that may be there later, as a hot reload that waits
    /// for it tells from the others.
    #[source]
    io: Option<std::io::Error>,
}

impl TlsError {
    pub(crate) fn new(file: &Path, message: impl fmt::Display) -> Self {
        Self {
            file: file.display().to_string(),
            message: message.to_string(),
            io: None,
        }
    }

    /// A file that could not be read or parsed: with its I/O error as the
    /// source when there is one.
    pub(crate) fn reading(file: &Path, message: impl fmt::Display, e: rustls::pki_types::pem::Error) -> Self {
        let mut err = Self::new(file, message);
        if let rustls::pki_types::pem::Error::Io(io) = e {
            err.io = Some(io);
        }
        err
    }
}

/// Where the server's TLS material lives.
#[derive(Clone, Debug)]
#[must_use]
pub struct ServerTlsBuilder {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    crls: Vec<PathBuf>,
    /// `None`: not asked for ([`MtlsMode::Strict`] with a client CA).
    mode: Option<MtlsMode>,
    allow_unknown_revocation: bool,
    allow_expired_crls: bool,
    trust_domains: Vec<String>,
    /// Federated trust domains' bundles ([`ServerTlsBuilder::federated_bundle`]).
    federated: Vec<(String, PathBuf)>,
}

impl ServerTlsBuilder {
    /// Trust anchors (PEM) for client certificates: turns mutual TLS on,
    /// and TLS session resumption off (a resumed session is not verified
    /// again, so a certificate revoked or expired since would pass): every
    /// connection's certificate is checked against the material in use.
    pub fn client_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.client_ca = Some(path.into());
        self
    }

    /// A PEM file of CRLs checked for client certificates (any number of files).
    pub fn crl(mut self, path: impl Into<PathBuf>) -> Self {
        self.crls.push(path.into());
        self
    }

    /// The mode (default [`MtlsMode::Strict`] with a client CA).
    /// [`Strict`](MtlsMode::Strict) and
    /// [`Permissive`](MtlsMode::Permissive) need a
    /// [`client_ca`](Self::client_ca): without one, [`build`](Self::build)
    /// fails rather than serve TLS to callers it cannot tell apart.
    pub fn mode(mut self, mode: MtlsMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Accept client certificates whose revocation status the CRLs do not
    /// cover (by default, with CRLs configured, such a certificate is refused).
    pub fn allow_unknown_revocation_status(mut self) -> Self {
        palisade_core::config_warning!(target: LOG_TARGET, "client certificates with an unknown revocation status are accepted");
        self.allow_unknown_revocation = true;
        self
    }

    /// The SPIFFE trust domains a client certificate may belong to (the
    /// mesh's own, `cluster.local` by default in Istio, and its aliases): a
    /// certificate the bundle verifies whose SPIFFE ID names another trust
    /// domain, or that has none, is refused at the handshake, as Istio's
    /// sidecars match the trust domain of a caller's URI SAN. Needed
    /// where the bundle holds another domain's CA (federation): otherwise
    /// that CA could issue `spiffe://cluster.local/ns/prod/sa/admin` and be
    /// taken for a local workload. Without it, every trust domain the
    /// bundle's CAs sign for is accepted. Under [`MtlsMode::Disable`] no
    /// client certificate is asked for, and a warning says these (and
    /// CRLs) check nothing.
    ///
    /// The bundle is one trust store: every CA in it may issue IDs of every
    /// listed domain. So listing another domain to accept its workloads
    /// (the partner of a federation, whose CA is in the bundle) lets that
    /// domain's CA issue IDs of yours as well; the certificate's domain is
    /// not tied to the CA that signed it. Give a partner's CA as its
    /// domain's own bundle instead ([`federated_bundle`](Self::federated_bundle)).
    /// A warning at start-up says so when two or more domains share a
    /// bundle of two or more CAs. Aliases of one mesh under one CA
    /// (Istio's `trustDomainAliases`) are not affected.
    pub fn trust_domains<S: Into<String>>(mut self, domains: impl IntoIterator<Item = S>) -> Self {
        self.trust_domains = domains.into_iter().map(Into::into).collect();
        self
    }

    /// The CA bundle (PEM) of a federated trust domain (SPIFFE federation,
    /// the bundle of each domain its own): a client certificate whose
    /// SPIFFE ID names `domain` is verified against this bundle only, never
    /// against [`client_ca`](Self::client_ca)'s, and one naming another
    /// domain never against this one. So the partner's CA cannot issue this
    /// mesh's IDs, nor this mesh's CA the partner's. `domain` is accepted
    /// beside [`trust_domains`](Self::trust_domains) when those are listed.
    /// Needs a client CA (this mesh's own), which must not hold the
    /// partner's CA (refused at build and reload, naming it). The CRLs
    /// apply to every bundle; a partner's chain no CRL covers is accepted
    /// (its CRLs are seldom at hand), while this mesh's own stay
    /// fail-closed. The files are watched and reloaded with the others.
    pub fn federated_bundle(mut self, domain: impl Into<String>, ca: impl Into<PathBuf>) -> Self {
        self.federated.push((domain.into(), ca.into()));
        self
    }

    /// Use CRLs past their `nextUpdate`. By default such a CRL fails the
    /// handshake of every client whose chain it covers, as in OpenSSL (and so Envoy): whoever can stall
    /// the CRL's publication would otherwise freeze revocation where it
    /// stands. Publish CRLs in time rather than turn this on.
    pub fn allow_expired_crls(mut self) -> Self {
        palisade_core::config_warning!(target: LOG_TARGET, "CRLs past their nextUpdate are used");
        self.allow_expired_crls = true;
        self
    }

    /// Loads the files and builds the server. Its counter of refused client
    /// certificates (`palisade_authentications_total{method="mtls",
    /// result="failure"}`) reports to the `metrics` recorder installed
    /// now: install it first, as before building the guard.
    ///
    /// # Errors
    /// A [`TlsError`] naming the file that cannot be read or used; one
    /// naming the certificate when mutual TLS is asked for (a
    /// [`mode`](Self::mode) other than `DISABLE`, or a [`crl`](Self::crl))
    /// without a [`client_ca`](Self::client_ca) to check callers with, and
    /// for a [`trust_domains`](Self::trust_domains) entry that is not a
    /// SPIFFE trust domain.
    pub fn build(mut self) -> Result<ServerTls, TlsError> {
        if !self.federated.is_empty() && self.client_ca.is_none() {
            return Err(TlsError::new(
                &self.cert,
                "a federated trust domain's bundle needs a client CA for this mesh's own callers",
            ));
        }
        for (domain, _) in &self.federated {
            if self.federated.iter().filter(|(d, _)| d == domain).count() > 1 {
                return Err(TlsError::new(
                    &self.cert,
                    format!("the federated trust domain `{domain}` is given two bundles"),
                ));
            }
        }
        // A federated domain is accepted as a listed one is.
        if !self.trust_domains.is_empty() {
            for (domain, _) in &self.federated {
                if !self.trust_domains.contains(domain) {
                    self.trust_domains.push(domain.clone());
                }
            }
        }
        for domain in self
            .trust_domains
            .iter()
            .chain(self.federated.iter().map(|(d, _)| d))
        {
            if SpiffeId::parse(&format!("spiffe://{domain}/x")).map_or(true, |id| id.trust_domain() != domain)
            {
                return Err(TlsError::new(
                    &self.cert,
                    format!(
                        "`{domain}` is not a SPIFFE trust domain (lower case letters, digits, `.`, `-`, `_`)"
                    ),
                ));
            }
        }
        let mode = match (&self.client_ca, self.mode) {
            (Some(_), mode) => mode.unwrap_or(MtlsMode::Strict),
            (None, None | Some(MtlsMode::Disable))
                if self.crls.is_empty() && self.trust_domains.is_empty() =>
            {
                MtlsMode::Disable
            }
            (None, mode) => {
                let asked = match mode {
                    Some(mode) if mode != MtlsMode::Disable => format!("mode {mode:?}"),
                    _ if !self.crls.is_empty() => "a CRL".to_owned(),
                    _ => "a trust domain".to_owned(),
                };
                return Err(needs_client_ca(&self.cert, &asked));
            }
        };
        if mode == MtlsMode::Disable && !(self.trust_domains.is_empty() && self.crls.is_empty()) {
            // A policy file's PeerAuthentication may turn mutual TLS off
            // under code that set these: loud, not fatal.
            palisade_core::config_warning!(target: LOG_TARGET, "mutual TLS is off (mode DISABLE): no client certificate is asked for, so the trust domains and CRLs configured check nothing");
        }
        // Domains the main bundle answers for: the listed ones a
        // federated bundle does not.
        let main_domains = self
            .trust_domains
            .iter()
            .filter(|d| !self.federated.iter().any(|(f, _)| f == *d))
            .count();
        if mode != MtlsMode::Disable
            && main_domains >= 2
            && let Some(ca) = &self.client_ca
            && files::roots(ca).is_ok_and(|r| r.roots.len() >= 2)
        {
            palisade_core::config_warning!(
                target: LOG_TARGET,
                "the client CA bundle {} holds several CAs and the trust domains {} are accepted with it: any of its CAs may issue IDs of any of them (a federated partner's CA could issue IDs of this mesh); give a partner's CA as its domain's own bundle (federated_bundle)",
                ca.display(),
                self.trust_domains.join(", ")
            );
        }
        let files = Files {
            cert: self.cert,
            key: self.key,
            client_ca: self.client_ca,
            crls: self.crls,
            allow_unknown_revocation: self.allow_unknown_revocation,
            allow_expired_crls: self.allow_expired_crls,
            federated: self.federated,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let stamp = files::stamp(&files.paths().cloned().collect::<Vec<_>>());
        let material = Arc::new(ArcSwap::from_pointee(files.load(&provider)?));
        let verifier = Arc::new(DynVerifier {
            material: material.clone(),
            mode: Arc::new(LiveMode::new(mode)),
            provider: provider.clone(),
            trust_domains: self.trust_domains.into(),
            refused: metrics::counter!(
                palisade_core::metrics::AUTHENTICATIONS,
                "method" => "mtls",
                "result" => "failure"
            ),
            refused_because: REFUSAL_REASONS.map(|reason| {
                metrics::counter!(palisade_core::metrics::AUTHENTICATION_FAILURES, "method" => "mtls", "reason" => reason)
            }),
        });
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(&files.cert, e))?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(Arc::new(DynResolver(material.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // A resumed session is not verified again: a client certificate
        // revoked (a CRL reloaded) or expired since would be accepted, and
        // a store forgotten at each reload still takes the sessions of
        // handshakes under way. So a server that takes client
        // certificates resumes none: every connection's certificate is
        // checked against the material in use. (Whatever its mode, which
        // may change to one that takes them.)
        if files.client_ca.is_some() {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        Ok(ServerTls(Arc::new(Inner {
            files,
            provider,
            material,
            verifier,
            config: Arc::new(config),
            stamp: std::sync::Mutex::new(files::Stamps::built(stamp)),
        })))
    }
}

#[derive(Clone, Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    crls: Vec<PathBuf>,
    allow_unknown_revocation: bool,
    allow_expired_crls: bool,
    /// Federated trust domains and their bundles.
    federated: Vec<(String, PathBuf)>,
}

struct Material {
    key: Arc<CertifiedKey>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Each federated trust domain's verifier: its certificates are
    /// verified with it, and with it only.
    federated: Vec<(String, Arc<dyn ClientCertVerifier>)>,
    /// A digest of what client certificates are verified with (the
    /// bundle's anchors, the CRLs, the settings): a reload that leaves it
    /// as it was (the server's own certificate rotating) has open
    /// connections' peers not verified again.
    clients: u64,
    /// The earliest `nextUpdate` of the CRLs (seconds since the epoch),
    /// from which that CRL refuses every peer whose chain it covers;
    /// `u64::MAX` without CRLs, or when expired CRLs are allowed; `0` for
    /// one x509-parser cannot read (open connections are then checked
    /// once a minute).
    crls_expire: u64,
}

/// Reports a failed handshake and gives the reason the connection's log
/// line names: at `debug` with the TLS error for a client's own fault, and
/// at `warn` (at most once a minute) when this server's CRLs are past their
/// `nextUpdate`, which fails every client until a fresh CRL is loaded.
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) fn handshake_failed(error: &(dyn std::error::Error + 'static)) -> &'static str {
    static EXPIRED_CRL: palisade_core::logging::Sparse = palisade_core::logging::Sparse::per_minute();
    let mut source = Some(error);
    let mut expired_crl = false;
    while let Some(e) = source {
        if let Some(rustls::Error::InvalidCertificate(c)) = e.downcast_ref::<rustls::Error>() {
            expired_crl = matches!(
                c,
                rustls::CertificateError::ExpiredRevocationList
                    | rustls::CertificateError::ExpiredRevocationListContext { .. }
            );
        }
        // An io::Error's `source` is its inner error's source: the inner
        // error itself (tokio-rustls's rustls error) is `get_ref`'s.
        source = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    if expired_crl {
        if EXPIRED_CRL.due() {
            tracing::warn!(target: LOG_TARGET, "a client certificate was refused because a CRL is past its nextUpdate: every mutual TLS client whose chain it covers is, until a fresh CRL is loaded");
        }
        return "TLS handshake failed: a CRL is past its nextUpdate";
    }
    tracing::debug!(target: LOG_TARGET, %error, "TLS handshake failed");
    "TLS handshake failed"
}

impl Files {
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key]
            .into_iter()
            .chain(&self.client_ca)
            .chain(&self.crls)
            .chain(self.federated.iter().map(|(_, ca)| ca))
    }

    /// The material: the client bundle's verifiers are built whatever
    /// the mode (a mode that takes no certificate may change to one that
    /// does); the mode decides whether they are asked.
    fn load(&self, provider: &Arc<CryptoProvider>) -> Result<Material, TlsError> {
        let key = files::certified_key(&self.cert, &self.key, provider)?;
        let mut clients = std::collections::hash_map::DefaultHasher::new();
        (self.allow_unknown_revocation, self.allow_expired_crls).hash(&mut clients);
        let mut crls_expire = u64::MAX;
        let hash_anchors =
            |roots: &rustls::RootCertStore, clients: &mut std::collections::hash_map::DefaultHasher| {
                for anchor in &roots.roots {
                    anchor.subject.as_ref().hash(clients);
                    anchor.subject_public_key_info.as_ref().hash(clients);
                    anchor
                        .name_constraints
                        .as_ref()
                        .map(AsRef::<[u8]>::as_ref)
                        .hash(clients);
                }
            };
        let mut federated = Vec::new();
        let verifier = match &self.client_ca {
            None => None,
            Some(ca) => {
                let roots = Arc::new(files::roots(ca)?);
                hash_anchors(&roots, &mut clients);
                let mut crls = Vec::new();
                for path in &self.crls {
                    let list: Vec<CertificateRevocationListDer<'static>> =
                        CertificateRevocationListDer::pem_file_iter(path)
                            .and_then(Iterator::collect)
                            .map_err(|e| TlsError::reading(path, format!("cannot read the CRLs: {e}"), e))?;
                    if list.is_empty() {
                        return Err(TlsError::new(path, "no CRL in the file"));
                    }
                    // Parsed when a verifier is built: each file's on its
                    // own, so that an error names the file it is in.
                    WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider.clone())
                        .with_crls(list.clone())
                        .build()
                        .map_err(|e| TlsError::new(path, format!("cannot use the CRLs: {e}")))?;
                    for crl in &list {
                        crl.as_ref().hash(&mut clients);
                        if !self.allow_expired_crls {
                            // One x509-parser cannot read (webpki took it):
                            // open connections are checked once a minute.
                            let next = crate::identity::crl_next_update(crl.as_ref()).unwrap_or(0);
                            crls_expire = crls_expire.min(next);
                        }
                    }
                    crls.extend(list);
                }
                // Every bundle's verifier alike: the CRLs and the revocation
                // settings; a federated one takes a chain no CRL covers (a
                // partner's CRLs are seldom at hand), and still refuses one
                // a CRL revokes. (Whether a certificate is required is the
                // mode's, which `DynVerifier` answers.)
                let verifier_of = |roots: Arc<rustls::RootCertStore>, named: &Path, federated: bool| {
                    let mut b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                        .with_crls(crls.clone());
                    if self.allow_unknown_revocation || federated {
                        b = b.allow_unknown_revocation_status();
                    }
                    if !self.allow_expired_crls {
                        b = b.enforce_revocation_expiration();
                    }
                    b.build()
                        .map(|v| -> Arc<dyn ClientCertVerifier> { v })
                        .map_err(|e| TlsError::new(named, format!("cannot build the client verifier: {e}")))
                };
                for (domain, bundle) in &self.federated {
                    let theirs = Arc::new(files::roots(bundle)?);
                    // A partner's CA left in this mesh's bundle could still
                    // mint this mesh's IDs: refused, naming it.
                    if theirs.roots.iter().any(|t| {
                        roots
                            .roots
                            .iter()
                            .any(|o| o.subject_public_key_info == t.subject_public_key_info)
                    }) {
                        return Err(TlsError::new(
                            ca,
                            format!(
                                "holds a CA of the federated trust domain `{domain}` ({}): remove it from this bundle, where it could issue this mesh's IDs",
                                bundle.display()
                            ),
                        ));
                    }
                    domain.hash(&mut clients);
                    hash_anchors(&theirs, &mut clients);
                    federated.push((domain.clone(), verifier_of(theirs, bundle, true)?));
                }
                let first = self.crls.first().unwrap_or(ca);
                Some(verifier_of(roots, first, false)?)
            }
        };
        Ok(Material {
            key: Arc::new(key),
            verifier,
            federated,
            clients: clients.finish(),
            crls_expire,
        })
    }
}

struct Inner {
    files: Files,
    provider: Arc<CryptoProvider>,
    material: Arc<ArcSwap<Material>>,
    /// The client certificates' verifier the config uses, for checking a
    /// connection's peer again ([`Recheck`]); it holds the mode in force.
    verifier: Arc<DynVerifier>,
    config: Arc<ServerConfig>,
    stamp: std::sync::Mutex<files::Stamps>,
}

/// A TLS server's configuration with hot rotation. Cloning is an `Arc` clone.
///
/// ```no_run
/// use palisade_mtls::{MtlsMode, ServerTls};
/// let tls = ServerTls::builder("server.crt", "server.key")
///     .client_ca("mesh-ca.pem")
///     .crl("mesh.crl")
///     .mode(MtlsMode::Strict)
///     .build()?;
/// tls.watch(std::time::Duration::from_secs(2)); // rotate when the files change
/// let config = tls.server_config(); // for tokio-rustls, actix-web, hyper
/// # let _ = config;
/// # Ok::<(), palisade_mtls::TlsError>(())
/// ```
#[derive(Clone)]
pub struct ServerTls(Arc<Inner>);

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.0.files.cert)
            .field("key", &"<file>")
            .field("client_ca", &self.0.files.client_ca)
            .field("crls", &self.0.files.crls)
            .field("mode", &self.mode())
            .finish()
    }
}

impl ServerTls {
    /// Starts from the server's PEM certificate chain and private key.
    pub fn builder(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> ServerTlsBuilder {
        ServerTlsBuilder {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            crls: Vec::new(),
            mode: None,
            allow_unknown_revocation: false,
            allow_expired_crls: false,
            trust_domains: Vec::new(),
            federated: Vec::new(),
        }
    }

    /// The rustls configuration; it follows every reload. It offers
    /// `http/1.1` by ALPN (a server that also speaks HTTP/2 puts `h2` first
    /// in its copy, as `axum::serve` does).
    #[must_use]
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.0.config.clone()
    }

    /// The mode in force for new connections.
    #[must_use]
    pub fn mode(&self) -> MtlsMode {
        self.0.verifier.mode.get()
    }

    /// Whether a new connection that is not TLS is served, in plaintext:
    /// in [`Permissive`](MtlsMode::Permissive) only (the serving helpers
    /// ask it of each connection).
    #[cfg(any(feature = "axum", feature = "actix"))]
    #[must_use]
    pub(crate) fn serves_plaintext(&self) -> bool {
        self.mode() == MtlsMode::Permissive
    }

    /// Whether it was built with a [`client_ca`](ServerTlsBuilder::client_ca):
    /// a mode that takes client certificates may be put in force.
    #[must_use]
    pub fn takes_client_certificates(&self) -> bool {
        self.0.files.client_ca.is_some()
    }

    /// Puts `mode` in force, as a reloaded `PeerAuthentication` does in
    /// Istio (the examples' policy reload calls it): new handshakes ask for
    /// a client certificate, or require one, as it says; under the serving
    /// helpers ([`axum::serve_with`](crate::axum::serve_with),
    /// [`actix::server`](crate::actix::server)) a plaintext caller is
    /// served in [`Permissive`](MtlsMode::Permissive) only, and a
    /// connection already open that the mode would not take now
    /// (plaintext once it is not PERMISSIVE, TLS without a certificate
    /// once it is STRICT) is refused (`403`) at its next request, closed
    /// after the answer (HTTP/1.1; HTTP/2 with a GOAWAY under axum, while
    /// actix-web keeps an HTTP/2 connection and refuses each request on
    /// it). Connections with a verified peer keep it.
    ///
    /// # Errors
    /// [`Strict`](MtlsMode::Strict) or [`Permissive`](MtlsMode::Permissive)
    /// on a server built without a [`client_ca`](ServerTlsBuilder::client_ca),
    /// which has nothing to check certificates with: the mode in force
    /// stays.
    pub fn set_mode(&self, mode: MtlsMode) -> Result<(), TlsError> {
        if mode != MtlsMode::Disable && !self.takes_client_certificates() {
            return Err(needs_client_ca(&self.0.files.cert, &format!("mode {mode:?}")));
        }
        let was = self.mode();
        if was == mode {
            return Ok(());
        }
        self.0.verifier.mode.set(mode);
        // Any change to a mode other than STRICT takes in what the one
        // before did not (PERMISSIVE plaintext, DISABLE callers without an
        // identity): a relaxation, said loudly.
        if mode == MtlsMode::Strict {
            tracing::info!(target: LOG_TARGET, from = ?was, to = ?mode, "mutual TLS mode tightened: connections without a client certificate are closed at their next request");
        } else {
            tracing::warn!(target: LOG_TARGET, from = ?was, to = ?mode, "mutual TLS mode relaxed for new connections");
        }
        Ok(())
    }

    /// Reads the files again and uses them for new handshakes (a server
    /// that takes client certificates resumes no TLS session, so every
    /// new connection's certificate is checked against them), and, when
    /// the client bundle or CRLs changed, for open connections' next
    /// requests ([`peer_recheck`](Self::peer_recheck)).
    ///
    /// # Errors
    /// A [`TlsError`] naming the bad file; the old material stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        files::reload(self)
    }

    /// Reloads when a file's modification time or size changed since the
    /// last look; `true` when new material is in use.
    pub fn reload_if_changed(&self) -> bool {
        files::reload_if_changed(self)
    }

    /// Watches the files from a background thread, every `interval`, and
    /// reloads on change. Returns at once; the thread lives as long as the
    /// process (it keeps this material in use by every listener built from
    /// it), so call it once per `ServerTls`: each call starts a thread.
    pub fn watch(&self, interval: Duration) {
        files::watch(self, interval);
    }

    /// Reloads on `SIGHUP`, from a task on the current tokio runtime (the
    /// files are read on its blocking pool). The task lives as long as the
    /// runtime: call it once per `ServerTls`, not per worker.
    ///
    /// # Errors
    /// When the signal handler cannot be installed.
    pub fn reload_on_sighup(&self) -> std::io::Result<()> {
        files::reload_on_sighup(self)
    }
}

impl ServerTls {
    /// The check, per request, of a connection's peer that presented
    /// `chain` (DER, leaf first) and that this server's handshake verified:
    /// what [`ConnectionInfo::peer_recheck`](palisade_core::authn::ConnectionInfo::peer_recheck)
    /// holds. `palisade_mtls::axum::serve`, [`actix::server`](crate::actix::server)
    /// and [`actix_on_connect`](Self::actix_on_connect) set it; an accept
    /// loop of one's own sets it with this, next to the peer's
    /// [`peer_identity`](crate::peer_identity).
    ///
    /// The chain is verified again, as a handshake verifies it (the trust
    /// bundle, the CRLs, the trust domains, the time of day):
    /// - at the connection's first request (the handshake may have used
    ///   material a reload has replaced since);
    /// - after a reload that changed the client bundle or CRLs (the
    ///   server's own certificate rotating does not count);
    /// - once the first of the chain's certificates to expire has, or the
    ///   first of the CRLs to pass its `nextUpdate` has (unless
    ///   [`allow_expired_crls`](ServerTlsBuilder::allow_expired_crls));
    /// - for a peer refused, at most once a minute (a CRL past its
    ///   `nextUpdate` refuses every peer whose chain it covers until a
    ///   fresh one comes).
    ///
    /// Otherwise the answer is a comparison.
    #[must_use]
    pub fn peer_recheck(&self, chain: Arc<[Vec<u8>]>) -> Arc<dyn PeerRecheck> {
        let not_after = chain
            .iter()
            .filter_map(|der| crate::identity::not_after(der))
            .min()
            .unwrap_or(u64::MAX);
        Arc::new(Recheck {
            verifier: self.0.verifier.clone(),
            chain,
            not_after,
            verdict: ArcSwap::from_pointee(Verdict {
                verified: None,
                next_check: 0,
                trusted: false,
            }),
        })
    }
}

/// A connection accepted without a client certificate (plaintext in
/// PERMISSIVE, or TLS without one): still accepted while the mode in force
/// would accept it now ([`ServerTls::set_mode`]), so a switch to STRICT
/// ends such connections at their next request rather than leave them open
/// for as long as their callers keep them.
#[cfg(any(feature = "axum", feature = "actix", test))]
#[derive(Debug)]
struct ModeRecheck {
    mode: Arc<LiveMode>,
    plaintext: bool,
}

#[cfg(any(feature = "axum", feature = "actix", test))]
impl PeerRecheck for ModeRecheck {
    fn still_trusted(&self) -> bool {
        match self.mode.get() {
            MtlsMode::Permissive => true,
            MtlsMode::Disable => !self.plaintext,
            MtlsMode::Strict => false,
        }
    }
}

impl ServerTls {
    /// The check, at each request, of a connection accepted without a
    /// client certificate (`plaintext`: not TLS at all) against the mode in
    /// force; `None` for a server whose mode cannot change to one that
    /// refuses it (no client CA).
    #[cfg(any(feature = "axum", feature = "actix", test))]
    pub(crate) fn mode_recheck(&self, plaintext: bool) -> Option<Arc<dyn PeerRecheck>> {
        self.takes_client_certificates().then(|| {
            Arc::new(ModeRecheck {
                mode: self.0.verifier.mode.clone(),
                plaintext,
            }) as Arc<dyn PeerRecheck>
        })
    }
}

/// How often a refused peer, or a chain one of whose certificates has
/// expired, is verified again.
const RECHECK_EVERY: Duration = Duration::from_secs(60);

/// A connection's peer, checked again when the client verification
/// material changed (a reload: a CRL that revokes it, a bundle without its
/// issuer), or time has (a certificate's expiry, a CRL's `nextUpdate`):
/// the verifier's whole check, as at a handshake
/// ([`ServerTls::peer_recheck`]).
struct Recheck {
    verifier: Arc<DynVerifier>,
    /// The chain the peer presented, leaf first.
    chain: Arc<[Vec<u8>]>,
    /// The earliest `notAfter` of the chain, in seconds since the epoch.
    not_after: u64,
    /// The last verdict, with what it holds for: one record, so that
    /// requests checking at once leave a verdict with its own material.
    verdict: ArcSwap<Verdict>,
}

/// A verdict on a connection's peer.
struct Verdict {
    /// [`Material::clients`] of the material it was reached with; `None`
    /// before the first.
    verified: Option<u64>,
    /// Until when (seconds since the epoch) it stands for that material.
    next_check: u64,
    trusted: bool,
}

impl fmt::Debug for Recheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recheck")
            .field("not_after", &self.not_after)
            .field("trusted", &self.verdict.load().trusted)
            .finish_non_exhaustive()
    }
}

impl PeerRecheck for Recheck {
    fn still_trusted(&self) -> bool {
        let material = self.verifier.material.load_full();
        let now = UnixTime::now().as_secs();
        let last = self.verdict.load();
        if last.verified == Some(material.clients) && now < last.next_check {
            return last.trusted;
        }
        let trusted = match self.chain.split_first() {
            Some((leaf, intermediates)) => {
                let intermediates: Vec<CertificateDer<'_>> = intermediates
                    .iter()
                    .map(|c| CertificateDer::from(c.as_slice()))
                    .collect();
                let verdict = self.verifier.verify_with(
                    &material,
                    &CertificateDer::from(leaf.as_slice()),
                    &intermediates,
                    UnixTime::since_unix_epoch(Duration::from_secs(now)),
                );
                if let Err(error) = &verdict {
                    static REFUSED: palisade_core::logging::Sparse =
                        palisade_core::logging::Sparse::per_minute();
                    if REFUSED.due() {
                        tracing::warn!(target: LOG_TARGET, %error, "a connection's client certificate is refused now (its requests are answered 403; at most one such line a minute)");
                    }
                }
                verdict.is_ok()
            }
            None => false,
        };
        // A certificate is expired once the time is past its `notAfter`
        // (webpki's reading); a CRL from its `nextUpdate` on.
        let until = self.not_after.saturating_add(1).min(material.crls_expire);
        let next_check = if trusted && now < until {
            until
        } else {
            now.saturating_add(RECHECK_EVERY.as_secs())
        };
        self.verdict.store(Arc::new(Verdict {
            verified: Some(material.clients),
            next_check,
            trusted,
        }));
        trusted
    }
}

impl files::Reload for ServerTls {
    fn paths(&self) -> Vec<PathBuf> {
        self.0.files.paths().cloned().collect()
    }

    fn read_again(&self) -> Result<(), TlsError> {
        let loaded = self.0.files.load(&self.0.provider);
        files::install(
            &self.0.material,
            loaded,
            &self.0.files.cert,
            "server TLS material (certificate, key, trust bundle, CRLs)",
        )
    }

    fn last_stamp(&self) -> &std::sync::Mutex<files::Stamps> {
        &self.0.stamp
    }
}

#[derive(Debug)]
struct DynResolver(Arc<ArcSwap<Material>>);

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("client_auth", &self.verifier.is_some())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for DynResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().key.clone())
    }
}

/// Why a client certificate was refused in the handshake, as the `reason`
/// of `palisade_authentication_failures_total{method="mtls"}`.
const REFUSAL_REASONS: [&str; 4] = [
    "certificate_expired",
    "certificate_revoked",
    "certificate_unknown_issuer",
    "certificate_refused",
];

struct DynVerifier {
    material: Arc<ArcSwap<Material>>,
    mode: Arc<LiveMode>,
    provider: Arc<CryptoProvider>,
    /// Empty: any the bundle signs for.
    trust_domains: Arc<[String]>,
    /// Client certificates refused (`palisade_authentications_total`'s
    /// mTLS failures; its successes are the guard's, per request).
    refused: metrics::Counter,
    /// The refusals by reason, in [`REFUSAL_REASONS`]' order.
    refused_because: [metrics::Counter; 4],
}

impl fmt::Debug for DynVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynVerifier")
            .field("mode", &self.mode.get())
            .finish_non_exhaustive()
    }
}

impl DynVerifier {
    /// The client certificate checked against the material in use and the
    /// trust domains.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify_with(&self.material.load(), end_entity, intermediates, now)
    }

    /// [`verify`](Self::verify) with `material`.
    fn verify_with(
        &self,
        material: &Material,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // A federated domain's certificate is verified with its bundle
        // alone; any other with the main bundle (SPIFFE: the bundle of the
        // leaf's own trust domain).
        let own_bundle = (!material.federated.is_empty())
            .then(|| crate::identity::spiffe_id_of(end_entity))
            .flatten()
            .and_then(|id| {
                material
                    .federated
                    .iter()
                    .find(|(d, _)| d == id.trust_domain())
                    .map(|(_, v)| v)
            });
        let verified = match own_bundle.or(material.verifier.as_ref()) {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now)?,
            None => {
                return Err(rustls::Error::General(
                    "client certificates are not accepted".into(),
                ));
            }
        };
        if !self.trust_domains.is_empty() {
            let id = crate::identity::spiffe_id_of(end_entity);
            if !id.is_some_and(|id| self.trust_domains.iter().any(|d| d == id.trust_domain())) {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(verified)
    }
}

impl ClientCertVerifier for DynVerifier {
    fn offer_client_auth(&self) -> bool {
        self.mode.get() != MtlsMode::Disable && self.material.load().verifier.is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode.get() == MtlsMode::Strict && self.offer_client_auth()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle can change under us; clients send their certificate
        // without hints (curl, OpenSSL, rustls, Go do).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.verify(end_entity, intermediates, now);
        if let Err(e) = &verified {
            self.refused.increment(1);
            use rustls::CertificateError as C;
            let reason = match e {
                rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => 0,
                rustls::Error::InvalidCertificate(C::Revoked) => 1,
                rustls::Error::InvalidCertificate(C::UnknownIssuer) => 2,
                _ => 3,
            };
            self.refused_because[reason].increment(1);
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use palisade_testkit::TestPki;

    use super::*;
    use crate::test_support::{client_config, handshake, reloads_on_sighup};

    /// The leaf certificate a server presents, from an in-memory handshake.
    fn presented(tls: &ServerTls, client: &palisade_testkit::TestCert, ca: &str) -> Vec<u8> {
        let (c, _) = handshake(client_config(ca, client), tls.server_config()).unwrap();
        c.peer_certificates().unwrap()[0].to_vec()
    }

    /// Whether a handshake of `client` (its session cache kept between
    /// calls) with `server` was resumed, or the error.
    fn resumed(client: &Arc<rustls::ClientConfig>, server: &ServerTls) -> Result<bool, rustls::Error> {
        let (_, s) = handshake(client.clone(), server.server_config())?;
        Ok(s.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
    }

    #[test]
    fn trust_domains_refuse_a_bundled_cas_certificates_for_other_domains() {
        let dir = palisade_testkit::TempDir::new("palisade-mtls-trust-domains");
        let (mesh, partner) = (TestPki::new(), TestPki::with_trust_domain("partner.example"));
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, mesh.ca_pem() + &partner.ca_pem()).unwrap();
        let (cert, key) = mesh
            .server(&["localhost"])
            .write_to(dir.path(), "server")
            .unwrap();
        let server = |domains: &[&str]| {
            ServerTls::builder(&cert, &key)
                .client_ca(&bundle)
                .trust_domains(domains.iter().copied())
                .build()
                .unwrap()
        };
        let local = mesh.workload("prod", "admin");
        let federated = partner.workload("prod", "admin");
        let no_spiffe_id = mesh.client_with_uris(&["https://client.example/not-spiffe"]);
        let (open, mesh_only) = (server(&[]), server(&["cluster.local"]));
        for client in [&local, &federated] {
            assert!(handshake(client_config(&mesh.ca_pem(), client), open.server_config()).is_ok());
        }
        assert!(handshake(client_config(&mesh.ca_pem(), &local), mesh_only.server_config()).is_ok());
        for client in [&federated, &no_spiffe_id] {
            let refused = handshake(client_config(&mesh.ca_pem(), client), mesh_only.server_config());
            let refused = format!("{:?}", refused.expect_err("another trust domain passed"));
            assert!(refused.contains("ApplicationVerificationFailure"), "{refused}");
        }
        let bad = ServerTls::builder(&cert, &key)
            .client_ca(&bundle)
            .trust_domains(["Cluster.Local"])
            .build();
        assert!(bad.unwrap_err().message.contains("not a SPIFFE trust domain"));
        let without_ca = ServerTls::builder(&cert, &key)
            .trust_domains(["cluster.local"])
            .build();
        assert!(
            without_ca
                .unwrap_err()
                .message
                .starts_with("a trust domain asks for mutual TLS")
        );
    }

    #[test]
    fn an_expired_crl_fails_handshakes_unless_allowed_out_loud() {
        let dir = palisade_testkit::TempDir::new("palisade-mtls-expired-crl");
        let pki = TestPki::new();
        let client = pki.workload("default", "productpage");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let (cert, key) = pki.server(&["localhost"]).write_to(dir.path(), "server").unwrap();
        let (fresh, expired) = (dir.path().join("fresh.pem"), dir.path().join("expired.pem"));
        std::fs::write(&fresh, pki.crl_pem()).unwrap();
        std::fs::write(&expired, pki.expired_crl_pem()).unwrap();
        let config = || client_config(&pki.ca_pem(), &client);
        let server = |crl: &Path| ServerTls::builder(&cert, &key).client_ca(&ca).crl(crl);
        assert!(handshake(config(), server(&fresh).build().unwrap().server_config()).is_ok());
        let refused = handshake(config(), server(&expired).build().unwrap().server_config())
            .expect_err("an expired CRL is used");
        assert!(
            format!("{refused:?}").contains("ExpiredRevocationList"),
            "{refused:?}"
        );
        // Said as the server's own trouble, whatever wraps it (tokio-rustls
        // hands it over in an io::Error).
        #[cfg(any(feature = "axum", feature = "actix"))]
        {
            let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, refused);
            assert_eq!(
                handshake_failed(&wrapped),
                "TLS handshake failed: a CRL is past its nextUpdate"
            );
            let other = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
            assert_eq!(handshake_failed(&other), "TLS handshake failed");
        }
        let allowed = server(&expired).allow_expired_crls().build().unwrap();
        assert!(handshake(config(), allowed.server_config()).is_ok());
    }

    /// A CRL that cannot be parsed is named by its own file, not by the
    /// first of the files given.
    #[test]
    fn a_crl_that_cannot_be_used_is_named_by_its_file() {
        let dir = palisade_testkit::TempDir::new("palisade-mtls-bad-crl");
        let pki = TestPki::new();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let (cert, key) = pki.server(&["localhost"]).write_to(dir.path(), "server").unwrap();
        let (good, bad) = (dir.path().join("good-crl.pem"), dir.path().join("bad-crl.pem"));
        std::fs::write(&good, pki.crl_pem()).unwrap();
        std::fs::write(
            &bad,
            "-----BEGIN X509 CRL-----\nMAMCAQE=\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let e = ServerTls::builder(&cert, &key)
            .client_ca(&ca)
            .crl(&good)
            .crl(&bad)
            .build()
            .unwrap_err();
        assert_eq!(e.file, bad.display().to_string(), "{e}");
    }

    #[test]
    fn mutual_tls_asked_for_without_a_client_ca_is_an_error_not_plain_tls() {
        let dir = palisade_testkit::TempDir::new("palisade-mtls-no-ca");
        let pki = TestPki::new();
        let (cert, key) = pki.server(&["localhost"]).write_to(dir.path(), "server").unwrap();
        for (b, asked) in [
            (
                ServerTls::builder(&cert, &key).mode(MtlsMode::Strict),
                "mode Strict",
            ),
            (
                ServerTls::builder(&cert, &key).mode(MtlsMode::Permissive),
                "mode Permissive",
            ),
            (
                ServerTls::builder(&cert, &key).crl(dir.path().join("crl.pem")),
                "a CRL",
            ),
        ] {
            let err = b.build().unwrap_err();
            assert_eq!(err.file, cert.display().to_string());
            assert!(
                err.message.starts_with(asked) && err.message.contains("client CA"),
                "{err}"
            );
        }
        for plain in [
            ServerTls::builder(&cert, &key),
            ServerTls::builder(&cert, &key).mode(MtlsMode::Disable),
        ] {
            assert_eq!(plain.build().unwrap().mode(), MtlsMode::Disable);
        }
    }

    /// Counts Palisade's mTLS warnings.
    #[derive(Default)]
    struct Warnings(std::sync::atomic::AtomicUsize);

    impl tracing::Subscriber for Warnings {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let m = event.metadata();
            if m.target() == LOG_TARGET && *m.level() == tracing::Level::WARN {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// The mode follows `set_mode` (a reloaded PeerAuthentication), a
    /// relaxation said at WARN; a server without a client CA takes no mode
    /// that asks for certificates.
    #[test]
    fn the_mode_in_force_changes_and_a_relaxation_is_warned_about() {
        if !palisade_testkit::in_a_process_of_its_own(
            "server::tests::the_mode_in_force_changes_and_a_relaxation_is_warned_about",
        ) {
            return;
        }
        let dir = palisade_testkit::TempDir::new("palisade-mtls-set-mode");
        let pki = TestPki::new();
        let (cert, key) = pki.server(&["localhost"]).write_to(dir.path(), "server").unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let tls = ServerTls::builder(&cert, &key).client_ca(&ca).build().unwrap();
        let verifier = tls.0.verifier.clone();
        assert!(tls.takes_client_certificates());
        assert!(verifier.client_auth_mandatory(), "STRICT by default");
        let seen = std::sync::Arc::new(Warnings::default());
        tracing::subscriber::with_default(seen.clone(), || {
            tls.set_mode(MtlsMode::Permissive).unwrap();
            assert_eq!(tls.mode(), MtlsMode::Permissive);
            assert!(verifier.offer_client_auth() && !verifier.client_auth_mandatory());
            tls.set_mode(MtlsMode::Disable).unwrap();
            assert!(!verifier.offer_client_auth());
            tls.set_mode(MtlsMode::Strict).unwrap();
            assert!(verifier.client_auth_mandatory());
        });
        assert_eq!(
            seen.0.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "two relaxations"
        );
        // Connections accepted without a certificate, at their requests:
        // plaintext while PERMISSIVE, TLS while not STRICT.
        let plaintext = tls.mode_recheck(true).unwrap();
        let no_cert = tls.mode_recheck(false).unwrap();
        for (mode, served) in [
            (MtlsMode::Permissive, (true, true)),
            (MtlsMode::Disable, (false, true)),
            (MtlsMode::Strict, (false, false)),
        ] {
            tls.set_mode(mode).unwrap();
            assert_eq!(
                (plaintext.still_trusted(), no_cert.still_trusted()),
                served,
                "{mode:?}"
            );
        }
        let plain = ServerTls::builder(&cert, &key).build().unwrap();
        assert!(!plain.takes_client_certificates());
        assert!(plain.set_mode(MtlsMode::Strict).is_err());
        assert_eq!(plain.mode(), MtlsMode::Disable, "the mode in force stays");
    }

    /// A policy file may turn mutual TLS off under code that set trust
    /// domains or CRLs: the server starts, plain, and says what is unused.
    #[test]
    fn trust_domains_and_crls_under_mode_disable_are_warned_about() {
        if !palisade_testkit::in_a_process_of_its_own(
            "server::tests::trust_domains_and_crls_under_mode_disable_are_warned_about",
        ) {
            return;
        }
        let dir = palisade_testkit::TempDir::new("palisade-mtls-disable-warn");
        let pki = TestPki::new();
        let (cert, key) = pki.server(&["localhost"]).write_to(dir.path(), "server").unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let crl = dir.path().join("crl.pem");
        std::fs::write(&crl, pki.crl_pem()).unwrap();
        let warnings = |b: ServerTlsBuilder| {
            let seen = std::sync::Arc::new(Warnings::default());
            let built = tracing::subscriber::with_default(seen.clone(), || b.build().unwrap());
            assert_eq!(built.mode(), MtlsMode::Disable);
            seen.0.load(std::sync::atomic::Ordering::Relaxed)
        };
        let disabled = || {
            ServerTls::builder(&cert, &key)
                .client_ca(&ca)
                .mode(MtlsMode::Disable)
        };
        assert_eq!(warnings(disabled().trust_domains(["cluster.local"])), 1);
        assert_eq!(warnings(disabled().crl(&crl)), 1);
        assert_eq!(warnings(disabled()), 0, "nothing unused, nothing said");
    }

    /// A federated trust domain's bundle (SPIFFE federation): its CA's
    /// certificates of its own domain pass, and neither CA can issue the
    /// other's IDs, whichever is listed; a domain given two bundles, or a
    /// federated bundle without a client CA, is refused at build.
    #[test]
    fn a_federated_bundle_verifies_its_own_domain_only() {
        let dir = palisade_testkit::TempDir::new("palisade-mtls-federation");
        let (mesh, partner) = (TestPki::new(), TestPki::with_trust_domain("partner.example"));
        let (mesh_ca, partner_ca) = (dir.path().join("mesh.pem"), dir.path().join("partner.pem"));
        std::fs::write(&mesh_ca, mesh.ca_pem()).unwrap();
        std::fs::write(&partner_ca, partner.ca_pem()).unwrap();
        let (cert, key) = mesh
            .server(&["localhost"])
            .write_to(dir.path(), "server")
            .unwrap();
        let local = mesh.workload("prod", "admin");
        let theirs = partner.workload("shop", "checkout");
        // Each CA minting the other's IDs.
        let forged_local = partner.client_with_uris(&["spiffe://cluster.local/ns/prod/sa/admin"]);
        let forged_theirs = mesh.client_with_uris(&["spiffe://partner.example/ns/shop/sa/checkout"]);
        for listed in [&[][..], &["cluster.local"][..]] {
            let server = ServerTls::builder(&cert, &key)
                .client_ca(&mesh_ca)
                .trust_domains(listed.iter().copied())
                .federated_bundle("partner.example", &partner_ca)
                .build()
                .unwrap();
            for (client, passes) in [
                (&local, true),
                (&theirs, true),
                (&forged_local, false),
                (&forged_theirs, false),
            ] {
                let answer = handshake(client_config(&mesh.ca_pem(), client), server.server_config());
                assert_eq!(answer.is_ok(), passes, "{listed:?} {client:?}: {answer:?}");
            }
        }
        // The partner's CA left in the mesh's bundle: refused, naming it.
        let both = dir.path().join("both.pem");
        std::fs::write(&both, mesh.ca_pem() + &partner.ca_pem()).unwrap();
        let shared = ServerTls::builder(&cert, &key)
            .client_ca(&both)
            .federated_bundle("partner.example", &partner_ca)
            .build();
        assert!(
            shared
                .unwrap_err()
                .message
                .contains("federated trust domain `partner.example`")
        );
        // With a CRL of the mesh's CA: the partner's chains, which no CRL
        // covers, still pass; the mesh's own stay fail-closed.
        let crl = dir.path().join("crl.pem");
        std::fs::write(&crl, mesh.crl_pem()).unwrap();
        let with_crl = ServerTls::builder(&cert, &key)
            .client_ca(&mesh_ca)
            .crl(&crl)
            .federated_bundle("partner.example", &partner_ca)
            .build()
            .unwrap();
        for client in [&local, &theirs] {
            let answer = handshake(client_config(&mesh.ca_pem(), client), with_crl.server_config());
            assert!(answer.is_ok(), "{client:?}: {answer:?}");
        }
        let twice = ServerTls::builder(&cert, &key)
            .client_ca(&mesh_ca)
            .federated_bundle("partner.example", &partner_ca)
            .federated_bundle("partner.example", &mesh_ca)
            .build();
        assert!(twice.unwrap_err().message.contains("two bundles"));
        let without_ca = ServerTls::builder(&cert, &key)
            .federated_bundle("partner.example", &partner_ca)
            .build();
        assert!(without_ca.unwrap_err().message.contains("needs a client CA"));
        let bad = ServerTls::builder(&cert, &key)
            .client_ca(&mesh_ca)
            .federated_bundle("Partner.Example", &partner_ca)
            .build();
        assert!(bad.unwrap_err().message.contains("not a SPIFFE trust domain"));
    }

    /// Several trust domains over a bundle of several CAs: any of the CAs
    /// may issue IDs of any of the domains, which a warning says; one
    /// domain, or one CA with its aliases, is nothing to say.
    #[test]
    fn several_domains_over_several_cas_are_warned_about() {
        if !palisade_testkit::in_a_process_of_its_own(
            "server::tests::several_domains_over_several_cas_are_warned_about",
        ) {
            return;
        }
        let dir = palisade_testkit::TempDir::new("palisade-mtls-federation-warn");
        let (mesh, partner) = (TestPki::new(), TestPki::new());
        let (cert, key) = mesh
            .server(&["localhost"])
            .write_to(dir.path(), "server")
            .unwrap();
        let one = dir.path().join("one.pem");
        std::fs::write(&one, mesh.ca_pem()).unwrap();
        let both = dir.path().join("both.pem");
        std::fs::write(&both, mesh.ca_pem() + &partner.ca_pem()).unwrap();
        let warnings = |ca: &std::path::Path, domains: &[&str]| {
            let seen = std::sync::Arc::new(Warnings::default());
            let b = ServerTls::builder(&cert, &key)
                .client_ca(ca)
                .trust_domains(domains.to_vec());
            tracing::subscriber::with_default(seen.clone(), || b.build().unwrap());
            seen.0.load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(warnings(&both, &["cluster.local", "partner.example"]), 1);
        assert_eq!(warnings(&both, &["cluster.local"]), 0);
        assert_eq!(warnings(&one, &["cluster.local", "old.local"]), 0);
    }

    /// A server that takes client certificates resumes no session (a
    /// resumed one is not verified again), so a certificate revoked by a
    /// CRL the server reloads is refused at the next connection; a server
    /// without client certificates resumes sessions as rustls does.
    #[test]
    fn a_client_certificate_is_verified_at_every_connection_so_a_revoked_one_is_refused() {
        let dir = palisade_testkit::TempDir::new("palisade-mtls-resumption");
        let mut pki = TestPki::new();
        let client = pki.workload("default", "productpage");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let crl = dir.path().join("crl.pem");
        std::fs::write(&crl, pki.crl_pem()).unwrap();
        let (cert, key) = pki.server(&["localhost"]).write_to(dir.path(), "server").unwrap();
        let config = client_config(&pki.ca_pem(), &client);
        let plain = ServerTls::builder(&cert, &key).build().unwrap();
        assert_eq!(
            resumed(&config, &plain),
            Ok(false),
            "the first handshake is a full one"
        );
        assert_eq!(
            resumed(&config, &plain),
            Ok(true),
            "without client certificates, sessions resume"
        );
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let mutual = metrics::with_local_recorder(&recorder, || {
            ServerTls::builder(&cert, &key)
                .client_ca(&ca)
                .crl(&crl)
                .build()
                .unwrap()
        });
        for _ in 0..2 {
            assert_eq!(resumed(&config, &mutual), Ok(false), "a session resumed");
        }
        pki.revoke(&client);
        std::fs::write(&crl, pki.crl_pem()).unwrap();
        mutual.reload().unwrap();
        assert!(
            resumed(&config, &mutual).is_err(),
            "a revoked client connected after the CRL's reload"
        );
        // The refused certificate is counted (the handshakes before were
        // not refusals), and why.
        let snapshot = snapshotter.snapshot().into_vec();
        let counted = |name: &str, label: (&str, &str)| {
            snapshot.iter().find_map(|(key, _, _, value)| {
                (key.key().name() == name
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == label.0 && l.value() == label.1))
                .then_some(value)
            })
        };
        let one = Some(&metrics_util::debugging::DebugValue::Counter(1));
        assert_eq!(
            counted(palisade_core::metrics::AUTHENTICATIONS, ("result", "failure")),
            one
        );
        assert_eq!(
            counted(
                palisade_core::metrics::AUTHENTICATION_FAILURES,
                ("reason", "certificate_revoked")
            ),
            one
        );
    }

    /// An open connection's peer ([`ServerTls::peer_recheck`]) is refused
    /// once a reloaded CRL revokes it or its certificate has expired, and
    /// trusted again when the server's own fault (a CRL past its
    /// `nextUpdate`) is mended; others' connections are not refused.
    #[test]
    fn an_open_connections_peer_is_checked_again_when_the_client_material_changes() {
        let dir = palisade_testkit::TempDir::new("palisade-mtls-recheck");
        let mut pki = TestPki::new();
        let client = pki.workload("default", "productpage");
        let other = pki.workload("default", "reviews");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let crl = dir.path().join("crl.pem");
        std::fs::write(&crl, pki.crl_pem()).unwrap();
        let (cert, key) = pki.server(&["localhost"]).write_to(dir.path(), "server").unwrap();
        let tls = ServerTls::builder(&cert, &key)
            .client_ca(&ca)
            .crl(&crl)
            .build()
            .unwrap();
        let chain = |certs: &[&palisade_testkit::TestCert]| -> Arc<[Vec<u8>]> {
            certs.iter().map(|c| c.cert_der()).collect()
        };
        let open = tls.peer_recheck(chain(&[&client]));
        assert!(open.still_trusted());
        // The first request verifies the chain: one the handshake's
        // material may not have seen (another CA's) is refused.
        let stranger = TestPki::new().workload("default", "productpage");
        assert!(!tls.peer_recheck(chain(&[&stranger])).still_trusted());
        // The server's own certificate rotates: still trusted.
        pki.server(&["localhost"]).write_to(dir.path(), "server").unwrap();
        tls.reload().unwrap();
        assert!(open.still_trusted());
        // A CRL past its nextUpdate (the server's fault) refuses every
        // peer, until a fresh one comes.
        std::fs::write(&crl, pki.expired_crl_pem()).unwrap();
        tls.reload().unwrap();
        assert!(!open.still_trusted(), "a CRL past its nextUpdate");
        std::fs::write(&crl, pki.crl_pem()).unwrap();
        tls.reload().unwrap();
        assert!(open.still_trusted(), "a fresh CRL again");
        // A CRL that revokes it: refused, and stays so.
        pki.revoke(&client);
        std::fs::write(&crl, pki.crl_pem()).unwrap();
        tls.reload().unwrap();
        assert!(!open.still_trusted(), "revoked");
        assert!(!open.still_trusted(), "still revoked");
        assert!(tls.peer_recheck(chain(&[&other])).still_trusted(), "another peer");
        // A leaf that has expired (since the handshake): refused. An
        // expired certificate sent along with a good chain, which the
        // handshake ignores: verified again, and trusted.
        assert!(
            !tls.peer_recheck(chain(&[&pki.expired("default", "late")]))
                .still_trusted()
        );
        let extra = pki.expired("default", "extra");
        let padded = tls.peer_recheck(chain(&[&other, &extra]));
        assert!(padded.still_trusted());
        assert!(padded.still_trusted());
    }

    #[test]
    fn sighup_and_reload_rotate_and_a_bad_file_keeps_the_old_material() {
        let dir = std::env::temp_dir().join(format!("palisade-mtls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = TestPki::new();
        let (first, second) = (pki.server(&["localhost"]), pki.server(&["localhost"]));
        let client = pki.workload("default", "productpage");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let (cert, key) = first.write_to(&dir, "server").unwrap();
        let tls = ServerTls::builder(&cert, &key).client_ca(&ca).build().unwrap();
        assert_eq!(presented(&tls, &client, &pki.ca_pem()), first.cert_der());
        // SIGHUP (no file watch running): the new files are used.
        assert!(
            reloads_on_sighup(
                || tls.reload_on_sighup(),
                || drop(second.write_to(&dir, "server").unwrap()),
                || presented(&tls, &client, &pki.ca_pem()) == second.cert_der(),
            ),
            "SIGHUP did not reload the certificate"
        );
        // A broken key file: refused with an error naming it, old material kept.
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = tls.reload().unwrap_err();
        assert!(err.to_string().contains("server.key"), "{err}");
        assert_eq!(presented(&tls, &client, &pki.ca_pem()), second.cert_der());
        // And `reload()` picks up good files again.
        first.write_to(&dir, "server").unwrap();
        tls.reload().unwrap();
        assert_eq!(presented(&tls, &client, &pki.ca_pem()), first.cert_der());
        std::fs::remove_dir_all(&dir).ok();
    }
}
