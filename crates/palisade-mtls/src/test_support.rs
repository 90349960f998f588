//! What the crate's unit tests share: in-memory TLS handshakes, and the
//! lock of the tests that send the process `SIGHUP`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

/// A client of `localhost` that trusts `ca_pem` and presents `cert`.
pub(crate) fn client_config(ca_pem: &str, cert: &palisade_testkit::TestCert) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![CertificateDer::from(cert.cert_der())], key)
            .unwrap(),
    )
}

/// One handshake between `client` (dialling `localhost`) and `server`,
/// with the server's session tickets, which follow it, delivered; the two
/// ends, or the error either raised.
pub(crate) fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    handshake_to(client, server, "localhost")
}

/// As [`handshake`], the client dialling `name`.
pub(crate) fn handshake_to(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    name: &str,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let mut c = ClientConnection::new(client, ServerName::try_from(name.to_owned()).unwrap())?;
    let mut s = ServerConnection::new(server)?;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets()?;
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() && !s.wants_write() {
            return Ok((c, s));
        }
    }
}

/// A handshake between `client` (dialling `localhost`) and `server` with
/// what the server sends after the client's `Finished` (its session
/// tickets) held back: the client's end, and those bytes, for the test to
/// give it ([`ClientConnection::read_tls`]) when it likes.
pub(crate) fn handshake_holding_tickets(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> (ClientConnection, Vec<u8>) {
    let mut c = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets().unwrap();
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        if !c.is_handshaking() && !s.is_handshaking() {
            assert!(!buf.is_empty(), "the server sent no tickets");
            return (c, buf);
        }
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets().unwrap();
    }
}

/// A client certificate about to rotate, in `dir`: a server of
/// `localhost` that asks the mesh CA's workloads for one, and two
/// certificates of one workload, the first written as `client.pem` and
/// `client.key`.
pub(crate) struct Rotation {
    pub(crate) ca: std::path::PathBuf,
    pub(crate) server: crate::ServerTls,
    pub(crate) first: palisade_testkit::TestCert,
    pub(crate) second: palisade_testkit::TestCert,
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
}

impl Rotation {
    pub(crate) fn new(dir: &std::path::Path) -> Rotation {
        let pki = palisade_testkit::TestPki::new();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let (server_cert, server_key) = pki.server(&["localhost"]).write_to(dir, "server").unwrap();
        let server = crate::ServerTls::builder(&server_cert, &server_key)
            .client_ca(&ca)
            .build()
            .unwrap();
        let (first, second) = (
            pki.workload("default", "productpage"),
            pki.workload("default", "productpage"),
        );
        let (cert, key) = first.write_to(dir, "client").unwrap();
        Rotation {
            ca,
            server,
            first,
            second,
            cert,
            key,
        }
    }

    /// The leaf certificate `client` presents to the server, from an
    /// in-memory handshake.
    pub(crate) fn presented(&self, client: &crate::ClientTls) -> Vec<u8> {
        let (_, s) = handshake(client.client_config(), self.server.server_config()).unwrap();
        s.peer_certificates().unwrap()[0].to_vec()
    }
}

/// Held while a test sends the process `SIGHUP`: every listener of the
/// process reloads on it, so two such tests at once would reload each
/// other's files.
fn sighup_lock() -> MutexGuard<'static, ()> {
    static SIGHUP: Mutex<()> = Mutex::new(());
    SIGHUP.lock().unwrap_or_else(PoisonError::into_inner)
}

/// On a runtime of its own: has `listen` install a reload on `SIGHUP`,
/// `change` the files, sends the process `SIGHUP`, and waits up to a
/// second for `reloaded`; whether it came to hold. Holds the
/// [`sighup_lock`] meanwhile.
pub(crate) fn reloads_on_sighup(
    listen: impl FnOnce() -> std::io::Result<()>,
    change: impl FnOnce(),
    reloaded: impl Fn() -> bool,
) -> bool {
    let _sighup = sighup_lock();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        listen().unwrap();
        change();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if reloaded() {
                return true;
            }
        }
        false
    })
}
