//! Test kit for Palisade users: an in-process OpenID Connect issuer, and a
//! PKI generator ([`TestPki`]) for mTLS tests: a CA, SPIFFE workload and
//! server certificates, the bad ones (expired, not yet valid, wrong EKU, two
//! URI SANs, another CA) and revocation with a CRL. For SPNEGO tests, a
//! throw-away Kerberos realm ([`KerberosRealm`]: an MIT KDC on loopback) and
//! the reference `Negotiate` server, Apache httpd with mod_auth_gssapi
//! ([`ApacheGssapi`]).
//!
//! [`TestIssuer`] serves, on loopback and over real HTTP, what a Keycloak
//! realm serves to a resource server: the discovery document, the JWKS and a
//! token endpoint (client_credentials and password grants). It mints tokens
//! with any claims and headers, rotates and retires keys, and injects
//! outages, latency and garbage, counting every fetch, so the behaviour of a
//! service under those conditions can be tested without a real provider.
//!
//! It is also the identity provider of browser sign-in tests: the
//! authorization code flow with PKCE (an authorization endpoint with a login
//! form, or an instant sign-in with [`TestIssuer::sign_in_as`]), refresh
//! with rotation, userinfo, RP-initiated logout (recorded, see
//! [`TestIssuer::end_session_requests`]) and back-channel logout tokens
//! POSTed to the clients that registered a URI for them.
//!
//! ```
//! use palisade_testkit::TestIssuer;
//! let issuer = TestIssuer::builder().default_audience("details").start()?;
//! let token = issuer.token().subject("alice").realm_roles(&["admin"]).sign();
//! assert_eq!(token.split('.').count(), 3);
//! assert!(issuer.issuer().ends_with("/realms/demo"));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! For a relying party under test, register it and choose who signs in:
//!
//! ```
//! use palisade_testkit::TestIssuer;
//! let issuer = TestIssuer::builder()
//!     .client("web", "web-secret")
//!     .redirect_uris("web", &["http://127.0.0.1:3000/callback"])
//!     .backchannel_logout_uri("web", "http://127.0.0.1:3000/backchannel-logout")
//!     .user("alice", "wonderland", &["reader"])
//!     .start()?;
//! // Authorization requests now sign alice in without showing the login form.
//! issuer.sign_in_as(Some("alice"));
//! // ... point the relying party at `issuer.issuer()` and sign in ...
//! assert_eq!(issuer.code_exchanges(), 0);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The server runs on its own thread with its own runtime, so it works from
//! plain `#[test]`s, `#[tokio::test]`s and actix-web's runtimes alike, and
//! stops when the [`TestIssuer`] is dropped. Each connection answers one
//! request (`Connection: close`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use signin::TokenError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

#[cfg(unix)]
pub mod apache;
pub mod browser;
pub mod kerberos;
pub mod logs;
pub mod pki;
pub mod redis;
#[cfg(unix)]
pub use apache::{ApacheGssapi, ApacheGssapiBuilder, ApacheOpenidc, ApacheOpenidcBuilder};
mod signin;
pub use kerberos::{KerberosRealm, SilentKdc};
pub use pki::{TestCert, TestPki};
pub use signin::{BackchannelDelivery, EndSessionRequest, IdTokenTamper};

/// The algorithm the issuer signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys (Keycloak's default).
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl SigningAlgorithm {
    fn name(self) -> &'static str {
        match self {
            SigningAlgorithm::Rs256 => "RS256",
            SigningAlgorithm::Es256 => "ES256",
            SigningAlgorithm::EdDsa => "EdDSA",
        }
    }
}

/// What the discovery and JWKS endpoints do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer normally.
    None,
    /// Answer `503 Service Unavailable`.
    Unavailable,
    /// Answer `200` with a body that is not JSON.
    Garbage,
    /// Never answer (until the issuer is dropped).
    Hang,
    /// Close the connection without answering.
    Reset,
}

enum Material {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// The key pair of a `private_key_jwt` client of a [`TestIssuer`]:
/// [`TestIssuer::client_key_pair`]. `Debug` leaves the private key out.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientKeyPair {
    /// The JWS algorithm it signs with: the issuer's own (`RS256` by
    /// default, see [`TestIssuerBuilder::algorithm`]).
    pub algorithm: String,
    /// The private key, PKCS#8 PEM.
    pub private_key_pem: String,
    /// The public key as a JWK (`kid`, `alg`, `use: sig`), for a client's
    /// registered `jwks` at another provider.
    pub public_jwk: Value,
}

impl ClientKeyPair {
    /// A new key pair of `alg`, for a `private_key_jwt` client registered
    /// at another provider (its `jwks` holds [`public_jwk`](Self::public_jwk)).
    ///
    /// # Errors
    /// When key generation fails.
    pub fn generate(alg: SigningAlgorithm) -> std::io::Result<Self> {
        Ok(Self::of(&SigningKey::generate(alg)?))
    }

    fn of(key: &SigningKey) -> Self {
        Self {
            algorithm: key.alg().to_owned(),
            private_key_pem: key.private_key_pem(),
            public_jwk: key.jwk.clone(),
        }
    }
}

impl fmt::Debug for ClientKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKeyPair")
            .field("algorithm", &self.algorithm)
            .field("public_jwk", &self.public_jwk)
            .finish_non_exhaustive()
    }
}

struct SigningKey {
    kid: String,
    material: Material,
    jwk: Value,
}

impl SigningKey {
    fn generate(alg: SigningAlgorithm) -> std::io::Result<Self> {
        let kid = random_hex(8);
        let err = |_| std::io::Error::other("key generation failed");
        let (material, jwk) = match alg {
            SigningAlgorithm::Rs256 => {
                let k = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(err)?;
                let public = k.public_key();
                let jwk = json!({
                    "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                });
                (Material::Rsa(k), jwk)
            }
            SigningAlgorithm::Es256 => {
                let k = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).map_err(err)?;
                let point = k.public_key().as_ref();
                let jwk = json!({
                    "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                });
                (Material::Ec(k), jwk)
            }
            SigningAlgorithm::EdDsa => {
                let k = Ed25519KeyPair::generate().map_err(err)?;
                let jwk = json!({
                    "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA",
                    "x": b64(k.public_key().as_ref()),
                });
                (Material::Ed(k), jwk)
            }
        };
        Ok(Self { kid, material, jwk })
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.material {
            Material::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .expect("RSA signing");
                sig
            }
            Material::Ec(k) => k.sign(&rng, message).expect("ECDSA signing").as_ref().to_vec(),
            Material::Ed(k) => k.sign(message).as_ref().to_vec(),
        }
    }

    /// The private key as PKCS#8 PEM.
    fn private_key_pem(&self) -> String {
        use aws_lc_rs::encoding::AsDer;
        let der = match &self.material {
            Material::Rsa(k) => k.as_der().map(|d| d.as_ref().to_vec()),
            Material::Ec(k) => k.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
            Material::Ed(k) => k.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
        }
        .expect("a generated key exports as PKCS#8");
        pem("PRIVATE KEY", &der)
    }

    /// The public key as a PEM `SubjectPublicKeyInfo`.
    fn public_key_pem(&self) -> String {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair as _;
        let der = match &self.material {
            Material::Rsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Material::Ec(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Material::Ed(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
        }
        .expect("a generated key's public key exports as DER");
        pem("PUBLIC KEY", &der)
    }

    /// The JWS `alg` this key signs with.
    fn alg(&self) -> &str {
        self.jwk["alg"].as_str().unwrap_or_default()
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Rsa(k) => signature::UnparsedPublicKey::new(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                k.public_key().as_ref(),
            )
            .verify(message, sig)
            .is_ok(),
            Material::Ec(k) => signature::UnparsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                k.public_key().as_ref(),
            )
            .verify(message, sig)
            .is_ok(),
            Material::Ed(k) => {
                signature::UnparsedPublicKey::new(&signature::ED25519, k.public_key().as_ref())
                    .verify(message, sig)
                    .is_ok()
            }
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new().fill(&mut buf).expect("system randomness");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `bytes` random bytes, base64url: codes, refresh tokens, session ids.
fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new().fill(&mut buf).expect("system randomness");
    b64(&buf)
}

/// Compares two secrets in constant time (for equal lengths).
fn secret_eq(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// Runs the test `name` of the running test binary again, in a process of
/// its own with `env` and `marker=1` set, and panics with its output
/// unless it ran and passed. For a test whose library reads its
/// environment once per process (GSSAPI reads `KRB5_CONFIG`, the keytab
/// and the credential cache when first used): the test checks `marker`
/// and, when it is set, does its work instead of its set-up.
///
/// ```no_run
/// const CHILD: &str = "MY_TEST_CHILD";
/// #[test]
/// fn with_a_realm() {
///     if std::env::var_os(CHILD).is_some() {
///         // … the work, with the realm's environment …
///         return;
///     }
///     let env = vec![("KRB5_CONFIG".to_owned(), "/tmp/krb5.conf".to_owned())];
///     palisade_testkit::run_test_again("with_a_realm", CHILD, &env);
/// }
/// ```
///
/// # Panics
/// When the test binary cannot be run again, or the test failed or did
/// not run there.
pub fn run_test_again(name: &str, marker: &str, env: &[(String, String)]) {
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(marker, "1")
        .output()
        .expect("the test runs itself again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the run of {name} again failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the run of {name} again ran no test:\n{stdout}"
    );
}

/// Whether the calling test, `name` (its path in the test binary, as
/// `--exact` takes it), runs its body here: `true` in a process of its
/// own, started by this call; `false` in the harness's process, once that
/// run has passed (it panics otherwise, as [`run_test_again`]).
///
/// For a test that installs a tracing subscriber for its thread
/// (`with_default`, `set_default`) and asserts on what it kept. tracing
/// caches whether each callsite is wanted, process-wide, when the
/// callsite is first reached; while a single subscriber is installed, it
/// asks the reaching thread's own subscriber, so a callsite another
/// test's thread reaches first keeps "not wanted" (tracing-core's
/// single-dispatcher path), and the test misses its event now and then.
/// Alone in its process, no other test reaches it first.
///
/// ```no_run
/// #[test]
/// fn says_it_once() {
///     if !palisade_testkit::in_a_process_of_its_own("tests::says_it_once") {
///         return;
///     }
///     // … the subscriber, the work, the assertions on what it kept …
/// }
/// ```
///
/// # Panics
/// As [`run_test_again`].
#[must_use]
pub fn in_a_process_of_its_own(name: &str) -> bool {
    const MARKER: &str = "PALISADE_TEST_IN_A_PROCESS_OF_ITS_OWN";
    if std::env::var_os(MARKER).is_some() {
        return true;
    }
    run_test_again(name, MARKER, &[]);
    false
}

/// Checks a server at its limit of connections, `held` being the
/// connections that make it: a new connection to `addr`, its request for
/// `path` sent, is not answered while they stay open (the kernel takes it
/// into the backlog, the server does not), and is answered `200` once the
/// first of them closes.
///
/// # Panics
/// When the new connection is answered within 300 ms, or not within 5 s
/// of the first held connection closing, or not with `200`.
pub async fn past_the_connection_limit_a_connection_waits(
    addr: SocketAddr,
    mut held: Vec<tokio::net::TcpStream>,
    path: &str,
) {
    let mut next = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the connection");
    next.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("the request sent");
    let mut answer = vec![0; 1024];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), next.read(&mut answer))
            .await
            .is_err(),
        "answered past the limit"
    );
    drop(held.remove(0));
    let n = tokio::time::timeout(Duration::from_secs(5), next.read(&mut answer))
        .await
        .expect("not answered once a connection closed")
        .expect("the answer read");
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
}

/// A port of 127.0.0.1 that nothing listens on now, for a server a test
/// starts as a process of its own (which binds it itself).
///
/// Between this check and the server's bind, the port must stay free. One
/// the kernel hands out for port 0 is in its ephemeral range, where any
/// outgoing connection (another test's client, a browser's) may take it
/// as its local port; so the port is taken below that range (Linux's
/// `ip_local_port_range`, 32768 upward by default), never twice in one
/// process, from an offset set by the process id so that test binaries
/// run side by side seldom meet. A server that still finds its port taken
/// (another program's listener) fails to start: start it again on another.
///
/// # Errors
///
/// No free port below the ephemeral range (then one the kernel picks, as
/// a last resort), or loopback cannot be bound at all.
///
/// ```
/// let port = palisade_testkit::free_port()?;
/// let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
/// assert_eq!(listener.local_addr()?.port(), port);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    const LOWEST: u32 = 20_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral > LOWEST + 1_000 {
        let span = ephemeral - LOWEST;
        // The first call starts at this process's offset; later ones go on
        // from the last port given.
        let _ = NEXT.compare_exchange(
            u32::MAX,
            (std::process::id().wrapping_mul(2_654_435_761)) % span,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        for _ in 0..span.min(2_000) {
            let n = NEXT.fetch_add(1, Ordering::Relaxed) % span;
            let Ok(port) = u16::try_from(LOWEST + n) else {
                continue;
            };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A temporary directory for a test's files, removed with everything in
/// it when dropped: `<prefix>-<pid>-<nanoseconds>-<n>` in the system's
/// temporary directory, unique within the process however many tests
/// start at once.
///
/// ```
/// let dir = palisade_testkit::TempDir::new("palisade-doc");
/// std::fs::write(dir.path().join("policy.yaml"), "")?;
/// let path = dir.path().to_owned();
/// drop(dir);
/// assert!(!path.exists());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates the directory.
    ///
    /// # Panics
    ///
    /// When it cannot be created (a test cannot go on without it).
    #[must_use]
    pub fn new(prefix: &str) -> TempDir {
        let dir = scratch_dir(prefix);
        // `create_dir`, not `_all`: a name already taken fails loudly.
        if let Err(e) = std::fs::create_dir(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        TempDir(dir)
    }

    /// The directory's path.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new, not yet created directory for a harness's files, named
/// `<prefix>-<pid>-<nanoseconds>-<n>` in the system's temporary directory,
/// `n` counting this process's calls: tests started at once may read the
/// same clock, and a harness removes its directory when it is dropped.
fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

struct User {
    password: String,
    roles: Vec<String>,
}

struct State {
    issuer: String,
    /// `/realms/<realm>`: the path every endpoint sits under.
    prefix: String,
    alg: SigningAlgorithm,
    default_audience: String,
    lifetime: i64,
    /// Published keys; the last one signs.
    keys: Mutex<Vec<Arc<SigningKey>>>,
    extra: Mutex<Vec<Value>>,
    fault: Mutex<Fault>,
    latency: Mutex<Duration>,
    /// How long after a token exchange is decided its answer is sent.
    exchange_delay: Mutex<Duration>,
    /// How long after a client-credentials grant is decided its answer is
    /// sent.
    client_credentials_delay: Mutex<Duration>,
    cache_control: Mutex<Option<String>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    client_credentials_grants: AtomicUsize,
    token_exchanges: AtomicUsize,
    token_requests: AtomicUsize,
    clients: HashMap<String, signin::Client>,
    users: HashMap<String, User>,
    /// Whether authorization responses carry `iss` (RFC 9207).
    iss_parameter: bool,
    /// Whether discovery says ID tokens carry `sid` (Back-Channel Logout).
    sid_in_id_tokens: bool,
    /// The discovery document's `jwks_uri`, when not the issuer's own.
    advertised_jwks_uri: Option<String>,
    signin: Mutex<signin::SignIn>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    fn signing_key(&self) -> Arc<SigningKey> {
        lock(&self.keys)
            .last()
            .cloned()
            .expect("the issuer always has a key")
    }

    fn jwks(&self) -> Value {
        let mut keys: Vec<Value> = lock(&self.keys).iter().map(|k| k.jwk.clone()).collect();
        keys.extend(lock(&self.extra).iter().cloned());
        json!({ "keys": keys })
    }

    /// The claims of a compact JWS signed by a published key of this issuer
    /// with its algorithm and carrying its `iss`; expiry is not checked.
    fn verify(&self, token: &str) -> Option<Map<String, Value>> {
        let (message, sig) = token.rsplit_once('.')?;
        let (header, payload) = message.split_once('.')?;
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg")?.as_str()? != self.alg.name() {
            return None;
        }
        let kid = header.get("kid")?.as_str()?;
        let key = lock(&self.keys).iter().find(|k| k.kid == kid).cloned()?;
        if !key.verify(message.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).ok()?) {
            return None;
        }
        let Value::Object(claims) = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?
        else {
            return None;
        };
        (claims.get("iss")?.as_str()? == self.issuer).then_some(claims)
    }
}

/// An in-process OpenID Connect issuer on loopback. Dropping it stops the server.
pub struct TestIssuer {
    state: Arc<State>,
    base_url: String,
    ca_pem: Option<String>,
    /// The server's runtime, for work started by the test (logout delivery).
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestIssuer")
            .field("issuer", &self.state.issuer)
            .field(
                "kids",
                &lock(&self.state.keys)
                    .iter()
                    .map(|k| k.kid.clone())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Configures a [`TestIssuer`].
#[must_use]
pub struct TestIssuerBuilder {
    realm: String,
    alg: SigningAlgorithm,
    bind: SocketAddr,
    default_audience: String,
    lifetime: Duration,
    /// Client id to secret, `None` for a public client.
    clients: HashMap<String, Option<String>>,
    /// Clients that authenticate with `private_key_jwt`.
    key_clients: Vec<String>,
    redirect_uris: HashMap<String, Vec<String>>,
    backchannel_logout_uris: HashMap<String, String>,
    users: HashMap<String, User>,
    iss_parameter: bool,
    sid_in_id_tokens: bool,
    tls: bool,
    advertised_jwks_uri: Option<String>,
}

impl fmt::Debug for TestIssuerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestIssuerBuilder")
            .field("realm", &self.realm)
            .field("alg", &self.alg)
            .field("clients", &self.clients.keys().collect::<Vec<_>>())
            .field("redirect_uris", &self.redirect_uris)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("iss_parameter", &self.iss_parameter)
            .field("advertised_jwks_uri", &self.advertised_jwks_uri)
            .finish_non_exhaustive()
    }
}

impl TestIssuerBuilder {
    /// The realm name (default `demo`): the issuer is `http://ADDR/realms/<realm>`.
    pub fn realm(mut self, name: &str) -> Self {
        self.realm = name.to_owned();
        self
    }

    /// The signing algorithm (default RS256).
    pub fn algorithm(mut self, alg: SigningAlgorithm) -> Self {
        self.alg = alg;
        self
    }

    /// The address to listen on (default `127.0.0.1:0`).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// The `aud` of minted and issued tokens (default `account`, as Keycloak).
    pub fn default_audience(mut self, aud: &str) -> Self {
        self.default_audience = aud.to_owned();
        self
    }

    /// A confidential client: it authenticates with `secret` by
    /// `client_secret_basic` or `client_secret_post`, for the
    /// client_credentials, authorization_code and refresh_token grants.
    /// PKCE is optional for it. Replaces a client of the same id.
    pub fn client(mut self, id: &str, secret: &str) -> Self {
        self.clients.insert(id.to_owned(), Some(secret.to_owned()));
        self.key_clients.retain(|c| c != id);
        self
    }

    /// A public client: it sends only its `client_id` to the token endpoint,
    /// and its authorization requests must use PKCE (S256). Replaces a
    /// client of the same id.
    pub fn public_client(mut self, id: &str) -> Self {
        self.clients.insert(id.to_owned(), None);
        self.key_clients.retain(|c| c != id);
        self
    }

    /// A confidential client that authenticates with `private_key_jwt`
    /// (OpenID Connect Core 9, RFC 7523): a JWT signed by its private key,
    /// `iss` and `sub` the client id, `aud` the issuer or the token
    /// endpoint, unexpired, its `jti` used once. The issuer makes the key
    /// pair (of its own algorithm) at start: give the relying party
    /// [`TestIssuer::client_key_pair`]. Replaces a client of the same id.
    pub fn private_key_jwt_client(mut self, id: &str) -> Self {
        self.clients.insert(id.to_owned(), None);
        if !self.key_clients.iter().any(|c| c == id) {
            self.key_clients.push(id.to_owned());
        }
        self
    }

    /// Registers exact redirect URIs for `client` (added to earlier ones);
    /// they are also its allowed `post_logout_redirect_uri`s. A client
    /// without any accepts every loopback URI: `http` or `https` on
    /// `127.0.0.1`, `localhost` or `[::1]`, any port and path.
    pub fn redirect_uris(mut self, client: &str, uris: &[&str]) -> Self {
        self.redirect_uris
            .entry(client.to_owned())
            .or_default()
            .extend(uris.iter().map(|u| (*u).to_owned()));
        self
    }

    /// Registers `client`'s back-channel logout URI: when an IdP session of
    /// the client ends at the end-session endpoint, the issuer POSTs it a
    /// logout token (see [`TestIssuer::backchannel_deliveries`]) and waits
    /// up to 5 s for the answer before answering the browser. Only
    /// `http://` URIs are served.
    pub fn backchannel_logout_uri(mut self, client: &str, uri: &str) -> Self {
        self.backchannel_logout_uris
            .insert(client.to_owned(), uri.to_owned());
        self
    }

    /// Whether authorization responses carry `iss` and discovery says
    /// `authorization_response_iss_parameter_supported` (RFC 9207); on by
    /// default. Off, to test a relying party against a provider without it.
    pub fn iss_response_parameter(mut self, on: bool) -> Self {
        self.iss_parameter = on;
        self
    }

    /// Whether discovery says `backchannel_logout_session_supported` (its
    /// ID tokens carry `sid`); on by default. Off, to test a relying party
    /// against a provider whose sessions may have none.
    pub fn backchannel_logout_session(mut self, on: bool) -> Self {
        self.sid_in_id_tokens = on;
        self
    }

    /// A user for the password grant and the login form, with realm roles.
    /// Its ID tokens carry `name` = `name` and `email` = `<name>@example.test`.
    pub fn user(mut self, name: &str, password: &str, realm_roles: &[&str]) -> Self {
        self.users.insert(
            name.to_owned(),
            User {
                password: password.to_owned(),
                roles: realm_roles.iter().map(|r| (*r).to_owned()).collect(),
            },
        );
        self
    }

    /// Serves HTTPS with a certificate for `127.0.0.1` and `localhost` issued
    /// by a fresh private CA (see [`TestIssuer::ca_pem`]), as a private
    /// issuer would.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// The `jwks_uri` the discovery document gives (default this issuer's
    /// own [`TestIssuer::jwks_uri`]): for testing what a client makes of
    /// one elsewhere, such as a plain-http one.
    pub fn advertised_jwks_uri(mut self, uri: impl Into<String>) -> Self {
        self.advertised_jwks_uri = Some(uri.into());
        self
    }

    /// Lifetime of minted and issued tokens (default 300 s).
    pub fn token_lifetime(mut self, d: Duration) -> Self {
        self.lifetime = d;
        self
    }

    /// Generates the first key and starts serving.
    ///
    /// # Errors
    /// When the address cannot be bound or a thread cannot be started, and
    /// (`InvalidInput`) when redirect or back-channel logout URIs name a
    /// client that is not registered.
    pub fn start(self) -> std::io::Result<TestIssuer> {
        let mut redirect_uris = self.redirect_uris;
        let mut backchannel = self.backchannel_logout_uris;
        if let Some(unknown) = redirect_uris
            .keys()
            .chain(backchannel.keys())
            .find(|id| !self.clients.contains_key(*id))
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("URIs registered for client {unknown}, which is not registered"),
            ));
        }
        let key_clients = self.key_clients;
        let clients = self
            .clients
            .into_iter()
            .map(|(id, secret)| {
                let key = if key_clients.contains(&id) {
                    Some(Arc::new(SigningKey::generate(self.alg)?))
                } else {
                    None
                };
                let client = signin::Client {
                    secret,
                    key,
                    redirect_uris: redirect_uris.remove(&id).unwrap_or_default(),
                    backchannel_logout_uri: backchannel.remove(&id),
                };
                Ok((id, client))
            })
            .collect::<std::io::Result<_>>()?;
        let listener = std::net::TcpListener::bind(self.bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (acceptor, ca_pem) = if self.tls {
            let (acceptor, ca) = tls_acceptor()?;
            (Some(acceptor), Some(ca))
        } else {
            (None, None)
        };
        let scheme = if self.tls { "https" } else { "http" };
        let base_url = format!("{scheme}://{addr}");
        let state = Arc::new(State {
            issuer: format!("{base_url}/realms/{}", self.realm),
            prefix: format!("/realms/{}", self.realm),
            alg: self.alg,
            default_audience: self.default_audience,
            lifetime: i64::try_from(self.lifetime.as_secs()).unwrap_or(300),
            keys: Mutex::new(vec![Arc::new(SigningKey::generate(self.alg)?)]),
            extra: Mutex::new(Vec::new()),
            fault: Mutex::new(Fault::None),
            latency: Mutex::new(Duration::ZERO),
            exchange_delay: Mutex::new(Duration::ZERO),
            client_credentials_delay: Mutex::new(Duration::ZERO),
            cache_control: Mutex::new(None),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            client_credentials_grants: AtomicUsize::new(0),
            token_exchanges: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            clients,
            users: self.users,
            iss_parameter: self.iss_parameter,
            sid_in_id_tokens: self.sid_in_id_tokens,
            advertised_jwks_uri: self.advertised_jwks_uri,
            signin: Mutex::new(signin::SignIn::default()),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let runtime = rt.handle().clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let thread = std::thread::Builder::new()
            .name("palisade-test-issuer".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    let mut conns = tokio::task::JoinSet::new();
                    tokio::select! {
                        _ = stop_rx => {}
                        () = async {
                            loop {
                                if let Ok((stream, _)) = listener.accept().await {
                                    let state = served.clone();
                                    match acceptor.clone() {
                                        None => {
                                            conns.spawn(serve(stream, state));
                                        }
                                        Some(tls) => {
                                            conns.spawn(async move {
                                                if let Ok(stream) = tls.accept(stream).await {
                                                    serve(stream, state).await;
                                                }
                                            });
                                        }
                                    }
                                }
                            }
                        } => {}
                    }
                    conns.abort_all();
                });
            })?;
        Ok(TestIssuer {
            state,
            base_url,
            ca_pem,
            runtime,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl TestIssuer {
    /// Starts an issuer with the defaults.
    ///
    /// # Errors
    /// When the loopback address cannot be bound.
    pub fn start() -> std::io::Result<TestIssuer> {
        Self::builder().start()
    }

    /// Configures an issuer.
    pub fn builder() -> TestIssuerBuilder {
        TestIssuerBuilder {
            realm: "demo".into(),
            alg: SigningAlgorithm::Rs256,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            default_audience: "account".into(),
            lifetime: Duration::from_secs(300),
            clients: HashMap::new(),
            key_clients: Vec::new(),
            redirect_uris: HashMap::new(),
            backchannel_logout_uris: HashMap::new(),
            users: HashMap::new(),
            iss_parameter: true,
            sid_in_id_tokens: true,
            tls: false,
            advertised_jwks_uri: None,
        }
    }

    /// The issuer URL (`iss`): `http://127.0.0.1:PORT/realms/<realm>`.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// `http://127.0.0.1:PORT` (`https` with [`TestIssuerBuilder::tls`]).
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The PEM certificate of the private CA that issued the server
    /// certificate, when serving HTTPS.
    #[must_use]
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Where the JWKS is served, as Keycloak lays it out.
    #[must_use]
    pub fn jwks_uri(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.state.issuer)
    }

    /// The key pair of a [`TestIssuerBuilder::private_key_jwt_client`], as
    /// the relying party and other providers need it; `None` for any other
    /// client.
    #[must_use]
    pub fn client_key_pair(&self, client: &str) -> Option<ClientKeyPair> {
        let key = self.state.clients.get(client)?.key.as_ref()?;
        Some(ClientKeyPair::of(key))
    }

    /// The token endpoint.
    #[must_use]
    pub fn token_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.state.issuer)
    }

    /// The `kid` of the key that signs now.
    #[must_use]
    pub fn current_kid(&self) -> String {
        self.state.signing_key().kid.clone()
    }

    /// The public key of the key that signs now, as a PEM
    /// `SubjectPublicKeyInfo`: a fixed key for a verifier (Keycloak's
    /// `realm-public-key` is its base64 body), which knows no `kid`.
    #[must_use]
    pub fn public_key_pem(&self) -> String {
        self.state.signing_key().public_key_pem()
    }

    /// Starts minting a token signed by the current key.
    pub fn token(&self) -> TokenBuilder<'_> {
        self.state.token()
    }
}

impl State {
    fn header(&self, key: &SigningKey, typ: &str) -> Map<String, Value> {
        let mut header = Map::new();
        header.insert("alg".into(), json!(self.alg.name()));
        header.insert("typ".into(), json!(typ));
        header.insert("kid".into(), json!(key.kid));
        header
    }

    fn token(&self) -> TokenBuilder<'_> {
        let key = self.signing_key();
        let t = now();
        let header = self.header(&key, "JWT");
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("sub".into(), json!("test-user"));
        claims.insert("aud".into(), json!(self.default_audience));
        claims.insert("exp".into(), json!(t + self.lifetime));
        claims.insert("iat".into(), json!(t));
        claims.insert("jti".into(), json!(random_hex(12)));
        claims.insert("typ".into(), json!("Bearer"));
        claims.insert("azp".into(), json!("test-client"));
        claims.insert("preferred_username".into(), json!("test-user"));
        claims.insert("scope".into(), json!("openid profile email"));
        TokenBuilder {
            key,
            header,
            claims,
            audiences: None,
            username_set: false,
            raw_payload: None,
            _state: std::marker::PhantomData,
        }
    }

    fn logout_token(&self) -> TokenBuilder<'_> {
        let key = self.signing_key();
        let t = now();
        let header = self.header(&key, "logout+jwt");
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("aud".into(), json!(self.default_audience));
        claims.insert("iat".into(), json!(t));
        claims.insert("exp".into(), json!(t + 120));
        claims.insert("jti".into(), json!(random_hex(12)));
        claims.insert("events".into(), json!({ signin::BACKCHANNEL_LOGOUT_EVENT: {} }));
        TokenBuilder {
            key,
            header,
            claims,
            audiences: None,
            // A logout token names no username: `subject` sets `sub` only.
            username_set: true,
            raw_payload: None,
            _state: std::marker::PhantomData,
        }
    }
}

impl TestIssuer {
    /// Adds a new signing key (same algorithm); the old ones stay published.
    /// Returns the new `kid`.
    pub fn rotate_key(&self) -> String {
        let key = SigningKey::generate(self.state.alg).expect("key generation");
        let kid = key.kid.clone();
        lock(&self.state.keys).push(Arc::new(key));
        kid
    }

    /// Stops publishing a key (it is kept for signing if it is the only one).
    pub fn retire_key(&self, kid: &str) {
        let mut keys = lock(&self.state.keys);
        if keys.len() > 1 {
            keys.retain(|k| k.kid != kid);
        }
    }

    /// Publishes an extra raw JWK as it is (an encryption key, an unknown `kty`).
    pub fn add_jwk(&self, jwk: Value) {
        lock(&self.state.extra).push(jwk);
    }

    /// Sets what the discovery and JWKS endpoints do.
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.state.fault) = fault;
    }

    /// Delays every discovery and JWKS answer.
    pub fn set_latency(&self, d: Duration) {
        *lock(&self.state.latency) = d;
    }

    /// Sets (or removes) the `Cache-Control` header of JWKS answers.
    pub fn set_cache_control(&self, value: Option<&str>) {
        *lock(&self.state.cache_control) = value.map(str::to_owned);
    }

    /// JWKS requests received, faulty answers included.
    #[must_use]
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Client-credentials grants given (tokens issued to a client for
    /// itself).
    #[must_use]
    pub fn client_credentials_grants(&self) -> usize {
        self.state.client_credentials_grants.load(Ordering::SeqCst)
    }

    /// Token exchanges granted (RFC 8693).
    #[must_use]
    pub fn token_exchanges(&self) -> usize {
        self.state.token_exchanges.load(Ordering::SeqCst)
    }

    /// Requests the token endpoint received, whatever their grant and
    /// whether granted or refused.
    #[must_use]
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// The answer to each token exchange is sent this long after the
    /// exchange was decided (and counted by [`Self::token_exchanges`]): a
    /// client that gives up meanwhile has had its exchange made without
    /// learning the token. `Duration::ZERO` (the default) answers at once.
    pub fn delay_exchange_answers(&self, delay: Duration) {
        *lock(&self.state.exchange_delay) = delay;
    }

    /// The answer to each client-credentials grant is sent this long after
    /// the grant was decided (and counted by
    /// [`Self::client_credentials_grants`]): a client that gives up
    /// meanwhile has been granted a token without learning it.
    /// `Duration::ZERO` (the default) answers at once.
    pub fn delay_client_credentials_answers(&self, delay: Duration) {
        *lock(&self.state.client_credentials_delay) = delay;
    }

    /// Discovery requests received.
    #[must_use]
    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// The JWKS document published now.
    #[must_use]
    pub fn jwks(&self) -> Value {
        self.state.jwks()
    }
}

/// Mints one token; see [`TestIssuer::token`].
#[must_use]
pub struct TokenBuilder<'a> {
    key: Arc<SigningKey>,
    header: Map<String, Value>,
    claims: Map<String, Value>,
    audiences: Option<Vec<String>>,
    username_set: bool,
    raw_payload: Option<String>,
    _state: std::marker::PhantomData<&'a State>,
}

impl fmt::Debug for TokenBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBuilder")
            .field("kid", &self.key.kid)
            .finish_non_exhaustive()
    }
}

impl TokenBuilder<'_> {
    /// `sub` (and `preferred_username`, unless set as a claim).
    pub fn subject(mut self, s: &str) -> Self {
        self.claims.insert("sub".into(), json!(s));
        if !self.username_set {
            self.claims.insert("preferred_username".into(), json!(s));
        }
        self
    }

    /// Adds an audience; the first call replaces the default, later ones make an array.
    pub fn audience(mut self, a: &str) -> Self {
        self.audiences.get_or_insert_with(Vec::new).push(a.to_owned());
        self
    }

    /// No `aud` claim at all.
    pub fn no_audience(mut self) -> Self {
        self.audiences = Some(Vec::new());
        self
    }

    /// Overrides `iss`.
    pub fn issuer(mut self, iss: &str) -> Self {
        self.claims.insert("iss".into(), json!(iss));
        self
    }

    /// No `iss` claim.
    pub fn no_issuer(mut self) -> Self {
        self.claims.remove("iss");
        self
    }

    /// `realm_access.roles`.
    pub fn realm_roles(mut self, roles: &[&str]) -> Self {
        self.claims
            .insert("realm_access".into(), json!({ "roles": roles }));
        self
    }

    /// `resource_access.<client>.roles`.
    pub fn client_roles(mut self, client: &str, roles: &[&str]) -> Self {
        let access = self.claims.entry("resource_access").or_insert_with(|| json!({}));
        if let Value::Object(map) = access {
            map.insert(client.to_owned(), json!({ "roles": roles }));
        }
        self
    }

    /// `scope`.
    pub fn scope(mut self, s: &str) -> Self {
        self.claims.insert("scope".into(), json!(s));
        self
    }

    /// Any claim, replacing a default of the same name.
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        if name == "preferred_username" {
            self.username_set = true;
        }
        if name == "aud" {
            self.audiences = None;
        }
        self.claims.insert(name.to_owned(), value);
        self
    }

    /// Removes a claim, a default one included (`aud` as
    /// [`TokenBuilder::no_audience`]); a later [`TokenBuilder::subject`]
    /// does not bring back a removed `preferred_username`.
    pub fn without_claim(mut self, name: &str) -> Self {
        match name {
            "aud" => self.audiences = Some(Vec::new()),
            "preferred_username" => self.username_set = true,
            _ => {}
        }
        self.claims.remove(name);
        self
    }

    /// Any JOSE header parameter (`alg`, `crit`, `typ`, …), replacing a default.
    pub fn header(mut self, name: &str, value: Value) -> Self {
        self.header.insert(name.to_owned(), value);
        self
    }

    /// Sets or removes `kid`.
    pub fn kid(mut self, kid: Option<&str>) -> Self {
        match kid {
            Some(k) => {
                self.header.insert("kid".into(), json!(k));
            }
            None => {
                self.header.remove("kid");
            }
        }
        self
    }

    /// `exp` = now + `secs`. Verifiers allow some clock skew (Palisade 60
    /// seconds by default, `ProviderBuilder::leeway`): a token that expired
    /// less than that ago is still accepted, so a test of an expired
    /// token should go past it, or use [`expired`](Self::expired).
    pub fn expires_in(mut self, secs: i64) -> Self {
        self.claims.insert("exp".into(), json!(now() + secs));
        self
    }

    /// An expired token, past any verifier's leeway: `exp` an hour ago,
    /// `iat` two hours ago.
    pub fn expired(self) -> Self {
        self.issued_at(-7200).expires_in(-3600)
    }

    /// A token not valid yet, past any verifier's leeway: `nbf` in an
    /// hour.
    pub fn not_yet_valid(self) -> Self {
        self.not_before(3600)
    }

    /// `nbf` = now + `secs_from_now`.
    pub fn not_before(mut self, secs_from_now: i64) -> Self {
        self.claims.insert("nbf".into(), json!(now() + secs_from_now));
        self
    }

    /// `iat` = now + `secs_from_now`.
    pub fn issued_at(mut self, secs_from_now: i64) -> Self {
        self.claims.insert("iat".into(), json!(now() + secs_from_now));
        self
    }

    /// Signs exactly this payload text instead of the claims (to test
    /// duplicate claim names, which a JSON map cannot hold).
    pub fn raw_payload(mut self, json_text: &str) -> Self {
        self.raw_payload = Some(json_text.to_owned());
        self
    }

    fn encoded(mut self) -> (String, Arc<SigningKey>) {
        match self.audiences.take() {
            None => {}
            Some(a) if a.is_empty() => {
                self.claims.remove("aud");
            }
            Some(a) if a.len() == 1 => {
                self.claims.insert("aud".into(), json!(a[0]));
            }
            Some(a) => {
                self.claims.insert("aud".into(), json!(a));
            }
        }
        let header = Value::Object(self.header).to_string();
        let payload = self
            .raw_payload
            .unwrap_or_else(|| Value::Object(self.claims).to_string());
        (
            format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes())),
            self.key,
        )
    }

    /// The compact JWS `header.payload.signature`.
    pub fn sign(self) -> String {
        let (message, key) = self.encoded();
        let sig = key.sign(message.as_bytes());
        format!("{message}.{}", b64(&sig))
    }

    /// `header.payload.` with an empty signature (for `alg: none` tests).
    pub fn unsigned(self) -> String {
        format!("{}.", self.encoded().0)
    }
}

/// A private CA and a server certificate for `127.0.0.1` and `localhost`
/// signed by it; the acceptor serves with the server certificate.
fn tls_acceptor() -> std::io::Result<(tokio_rustls::TlsAcceptor, String)> {
    let err = |e: rcgen::Error| std::io::Error::other(format!("test certificate: {e}"));
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "palisade-testkit CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(std::io::Error::other)?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca_cert.pem()))
}

struct HttpRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

const MAX_REQUEST: usize = 64 * 1024;

async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<HttpRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if len > MAX_REQUEST {
        return None;
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Some(HttpRequest {
        method,
        path,
        headers,
        body,
    })
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    extra: &[(&str, String)],
    content_type: &str,
    body: &[u8],
) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

async fn json_answer<S: AsyncWrite + Unpin>(stream: &mut S, status: &str, value: &Value) {
    respond(
        stream,
        status,
        &[],
        "application/json",
        value.to_string().as_bytes(),
    )
    .await;
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, state: Arc<State>) {
    let Some(req) = read_request(&mut stream).await else {
        return;
    };
    let path = req.path.split('?').next().unwrap_or("").to_owned();
    let Some(rest) = path.strip_prefix(&state.prefix).and_then(|r| r.strip_prefix('/')) else {
        return json_answer(&mut stream, "404 Not Found", &json!({"error": "not_found"})).await;
    };
    match (req.method.as_str(), rest) {
        ("GET", ".well-known/openid-configuration") => {
            state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            let endpoint = |name: &str| format!("{}/protocol/openid-connect/{name}", state.issuer);
            let doc = json!({
                "issuer": state.issuer,
                "authorization_endpoint": endpoint("auth"),
                "token_endpoint": endpoint("token"),
                "userinfo_endpoint": endpoint("userinfo"),
                "end_session_endpoint": endpoint("logout"),
                "revocation_endpoint": endpoint("revoke"),
                "jwks_uri": state.advertised_jwks_uri.clone().unwrap_or_else(|| endpoint("certs")),
                "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", "password", TOKEN_EXCHANGE_GRANT],
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "scopes_supported": ["openid", "profile", "email"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                "id_token_signing_alg_values_supported": [state.alg.name()],
                "subject_types_supported": ["public"],
                "backchannel_logout_supported": true,
                "backchannel_logout_session_supported": state.sid_in_id_tokens,
                "authorization_response_iss_parameter_supported": state.iss_parameter,
            });
            faulty(&mut stream, &state, doc, None).await;
        }
        // An open redirect (`?to=URL`), for testing a client's redirect
        // policy: a test issuer only.
        ("GET", "redirect") => {
            let query = req.path.split_once('?').map_or("", |(_, q)| q);
            let to = form(query.as_bytes()).remove("to").unwrap_or_default();
            let to = to.replace(['\r', '\n'], "");
            respond(&mut stream, "302 Found", &[("location", to)], "text/plain", b"").await;
        }
        ("GET", "protocol/openid-connect/certs") => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let cc = lock(&state.cache_control).clone();
            faulty(&mut stream, &state, state.jwks(), cc).await;
        }
        ("POST", "protocol/openid-connect/token") => token_endpoint(&mut stream, &state, &req).await,
        ("GET" | "POST", "protocol/openid-connect/auth") => {
            signin::authorize(&mut stream, &state, &req).await
        }
        ("POST", "protocol/openid-connect/revoke") => signin::revoke(&mut stream, &state, &req).await,
        ("GET" | "POST", "protocol/openid-connect/logout") => {
            signin::end_session(&mut stream, &state, &req).await;
        }
        ("GET" | "POST", "protocol/openid-connect/userinfo") => {
            signin::userinfo(&mut stream, &state, &req).await;
        }
        _ => json_answer(&mut stream, "404 Not Found", &json!({"error": "not_found"})).await,
    }
}

async fn faulty<S: AsyncWrite + Unpin>(
    stream: &mut S,
    state: &State,
    doc: Value,
    cache_control: Option<String>,
) {
    let latency = *lock(&state.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = lock(&state.fault).clone();
    match fault {
        Fault::None => {
            let extra: Vec<(&str, String)> =
                cache_control.into_iter().map(|v| ("cache-control", v)).collect();
            respond(
                stream,
                "200 OK",
                &extra,
                "application/json",
                doc.to_string().as_bytes(),
            )
            .await;
        }
        Fault::Unavailable => respond(stream, "503 Service Unavailable", &[], "text/plain", b"down").await,
        Fault::Garbage => {
            respond(
                stream,
                "200 OK",
                &[],
                "application/json",
                b"<html>surprise</html>",
            )
            .await
        }
        Fault::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
        // Dropping the stream closes it without a byte of answer.
        Fault::Reset => {}
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (url_decode(k), url_decode(v)))
        .collect()
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn basic_auth(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers.iter().find(|(k, _)| k == "authorization")?.1.clone();
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((url_decode(id), url_decode(secret)))
}

async fn token_endpoint<S: AsyncWrite + Unpin>(stream: &mut S, state: &State, req: &HttpRequest) {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let f = form(&req.body);
    // Decided first, answered after the grant type's delay, if any.
    let (answer, delay) = match f.get("grant_type").map(String::as_str) {
        Some("client_credentials") => (
            client_credentials(state, req, &f),
            *lock(&state.client_credentials_delay),
        ),
        Some("password") => (password_grant(state, req, &f), Duration::ZERO),
        Some("authorization_code") => (signin::exchange_code(state, req, &f), Duration::ZERO),
        Some("refresh_token") => (signin::refresh(state, req, &f), lock(&state.signin).refresh_delay),
        Some(TOKEN_EXCHANGE_GRANT) => (token_exchange(state, req, &f), *lock(&state.exchange_delay)),
        _ => (
            Err(TokenError::bad_request(
                "unsupported_grant_type",
                "grant_type is missing or not served",
            )),
            Duration::ZERO,
        ),
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match answer {
        Ok(body) => {
            respond(
                stream,
                "200 OK",
                &[("cache-control", "no-store".to_owned())],
                "application/json",
                body.to_string().as_bytes(),
            )
            .await;
        }
        Err(e) => e.answer(stream, state).await,
    }
}

/// The authenticated client of a grant only confidential clients may use;
/// `public` says why a public one may not.
fn confidential<'s>(
    state: &'s State,
    req: &HttpRequest,
    f: &HashMap<String, String>,
    public: &'static str,
) -> Result<&'s String, TokenError> {
    let (id, client) = signin::authenticate(state, req, f)?;
    if client.is_public() {
        return Err(TokenError::bad_request("unauthorized_client", public));
    }
    Ok(id)
}

fn client_credentials(
    state: &State,
    req: &HttpRequest,
    f: &HashMap<String, String>,
) -> Result<Value, TokenError> {
    let id = confidential(state, req, f, "a public client has no service account")?;
    let mut token = state
        .token()
        .subject(id)
        .claim("azp", json!(id))
        .claim("clientId", json!(id));
    // Keycloak's `audience` parameter, RFC 8707's `resource`.
    if let Some(aud) = f.get("audience").or_else(|| f.get("resource")) {
        token = token.audience(aud);
    }
    state.client_credentials_grants.fetch_add(1, Ordering::SeqCst);
    Ok(json!({"access_token": token.sign(), "token_type": "Bearer", "expires_in": state.lifetime}))
}

/// RFC 8693's grant type.
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693's token type of an access token.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// RFC 8693 token exchange, as Keycloak's standard token exchange: a
/// confidential client trades a valid access token of this issuer whose
/// `aud` (or `azp`) is the client for one for `audience` (default: the
/// client itself) on behalf of the same user, with the user's realm roles
/// and scope and `azp` the client; it adds RFC 8693's `act` naming the
/// client (4.1; an `act` already there is nested), which Keycloak's V2
/// exchange leaves out.
fn token_exchange(
    state: &State,
    req: &HttpRequest,
    f: &HashMap<String, String>,
) -> Result<Value, TokenError> {
    let id = confidential(state, req, f, "a public client cannot exchange tokens")?;
    let invalid = |why: &'static str| TokenError::bad_request("invalid_request", why);
    let subject = f
        .get("subject_token")
        .ok_or_else(|| invalid("subject_token is missing"))?;
    if f.get("subject_token_type").map(String::as_str) != Some(ACCESS_TOKEN_TYPE) {
        return Err(invalid("subject_token_type must be the access token type"));
    }
    if f.get("requested_token_type")
        .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
    {
        return Err(invalid("only access tokens are issued"));
    }
    let claims = state
        .verify(subject)
        .filter(|c| {
            c.get("exp")
                .and_then(Value::as_i64)
                .is_some_and(|exp| exp > now())
        })
        .ok_or_else(|| TokenError::invalid_grant("subject_token is not a valid token of this issuer"))?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| TokenError::invalid_grant("subject_token has no subject"))?;
    // As Keycloak: the client exchanges only tokens meant for it.
    let for_client = claims.get("azp").and_then(Value::as_str) == Some(id.as_str())
        || match claims.get("aud") {
            Some(Value::String(a)) => a == id,
            Some(Value::Array(a)) => a.iter().any(|a| a.as_str() == Some(id.as_str())),
            _ => false,
        };
    if !for_client {
        return Err(TokenError::bad_request(
            "access_denied",
            "the client is not within the subject token's audience",
        ));
    }
    let roles: Vec<&str> = claims
        .get("realm_access")
        .and_then(|r| r.get("roles"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut act = json!({ "sub": id });
    if let Some(previous) = claims.get("act") {
        act["act"] = previous.clone();
    }
    let mut token = state
        .token()
        .subject(sub)
        .realm_roles(&roles)
        .audience(f.get("audience").map_or(id.as_str(), String::as_str))
        .claim("azp", json!(id))
        .claim("act", act);
    let scope = f
        .get("scope")
        .map(String::as_str)
        .or_else(|| claims.get("scope").and_then(Value::as_str));
    if let Some(scope) = scope {
        token = token.scope(scope);
    }
    state.token_exchanges.fetch_add(1, Ordering::SeqCst);
    Ok(json!({
        "access_token": token.sign(),
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": state.lifetime,
    }))
}

/// The password grant does not authenticate the client; `azp` is the
/// client id sent, if any.
fn password_grant(
    state: &State,
    req: &HttpRequest,
    f: &HashMap<String, String>,
) -> Result<Value, TokenError> {
    let (Some(user), Some(password)) = (f.get("username"), f.get("password")) else {
        return Err(TokenError::bad_request(
            "invalid_request",
            "username and password are required",
        ));
    };
    match state.users.get(user) {
        Some(u) if secret_eq(&u.password, password) => {
            let roles: Vec<&str> = u.roles.iter().map(String::as_str).collect();
            let azp = basic_auth(req)
                .map(|(id, _)| id)
                .or_else(|| f.get("client_id").cloned())
                .unwrap_or_else(|| "test-client".into());
            let token = state
                .token()
                .subject(user)
                .realm_roles(&roles)
                .claim("azp", json!(azp))
                .sign();
            Ok(json!({"access_token": token, "token_type": "Bearer", "expires_in": state.lifetime}))
        }
        _ => Err(TokenError::bad_request(
            "invalid_grant",
            "invalid user credentials",
        )),
    }
}

/// `der` as PEM of `label`, in lines of 64 characters.
fn pem(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Ports for servers are outside the kernel's ephemeral range (where
    /// a client's connection could take one first), each free, and a
    /// process is not given one twice.
    #[cfg(target_os = "linux")]
    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_given_once() {
        let ephemeral: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        // (A range reaching down to the lowest ports leaves none below it.)
        if ephemeral > 21_000 {
            assert!(ports.iter().all(|p| *p < ephemeral), "{ports:?}");
        }
        for p in ports {
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    fn http(issuer: &TestIssuer, method: &str, path: &str, body: &str) -> (u16, String) {
        let addr = issuer.base_url().trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn payload(token: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
    }

    fn access_token(body: &str) -> String {
        serde_json::from_str::<Value>(body).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn path_of(url: &str) -> String {
        let rest = url.trim_start_matches("http://");
        rest[rest.find('/').unwrap()..].to_owned()
    }

    fn verify(jwk: &Value, token: &str) -> bool {
        let (message, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let d = |f: &str| URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
        match jwk["kty"].as_str().unwrap() {
            "RSA" => signature::RsaPublicKeyComponents { n: d("n"), e: d("e") }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message.as_bytes(), &sig)
                .is_ok(),
            "EC" => {
                let mut point = vec![4u8];
                point.extend(d("x"));
                point.extend(d("y"));
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message.as_bytes(), &sig)
                    .is_ok()
            }
            _ => signature::UnparsedPublicKey::new(&signature::ED25519, d("x"))
                .verify(message.as_bytes(), &sig)
                .is_ok(),
        }
    }

    #[test]
    fn discovery_names_the_jwks_uri() {
        let issuer = TestIssuer::start().unwrap();
        let (status, body) = http(
            &issuer,
            "GET",
            &format!("{}/.well-known/openid-configuration", path_of(issuer.issuer())),
            "",
        );
        assert_eq!(status, 200);
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["jwks_uri"], issuer.jwks_uri());
        assert_eq!(doc["issuer"], issuer.issuer());
        assert_eq!(issuer.discovery_fetches(), 1);
    }

    #[test]
    fn minted_tokens_verify_against_the_published_jwk_for_every_algorithm() {
        for alg in [
            SigningAlgorithm::Rs256,
            SigningAlgorithm::Es256,
            SigningAlgorithm::EdDsa,
        ] {
            let issuer = TestIssuer::builder().algorithm(alg).start().unwrap();
            let token = issuer.token().sign();
            let jwks = issuer.jwks();
            assert!(verify(&jwks["keys"][0], &token), "{alg:?}");
            let parts: Vec<&str> = token.split('.').collect();
            let tampered = format!("{}.{}.{}", parts[0], b64(b"{\"sub\":\"mallory\"}"), parts[2]);
            assert!(!verify(&jwks["keys"][0], &tampered), "{alg:?}");
        }
    }

    #[test]
    fn rotation_publishes_both_keys_and_signs_with_the_new_one() {
        let issuer = TestIssuer::start().unwrap();
        let old = issuer.current_kid();
        let new = issuer.rotate_key();
        assert_ne!(old, new);
        let kids: Vec<String> = issuer.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, [old.clone(), new.clone()]);
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(issuer.token().sign().split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["kid"], new);
        issuer.retire_key(&old);
        assert_eq!(issuer.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn faults_are_served_and_counted() {
        let issuer = TestIssuer::start().unwrap();
        let certs = path_of(&issuer.jwks_uri());
        issuer.set_fault(Fault::Unavailable);
        assert_eq!(http(&issuer, "GET", &certs, "").0, 503);
        issuer.set_fault(Fault::Garbage);
        let (status, body) = http(&issuer, "GET", &certs, "");
        assert_eq!(status, 200);
        assert!(serde_json::from_str::<Value>(&body).is_err());
        issuer.set_fault(Fault::Reset);
        assert_eq!(http(&issuer, "GET", &certs, "").0, 0);
        issuer.set_fault(Fault::None);
        issuer.set_cache_control(Some("max-age=120"));
        assert_eq!(http(&issuer, "GET", &certs, "").0, 200);
        assert_eq!(issuer.jwks_fetches(), 4);
    }

    #[test]
    fn client_credentials_checks_the_secret() {
        let issuer = TestIssuer::builder().client("svc", "s3cret").start().unwrap();
        let path = path_of(&issuer.token_endpoint());
        let (status, _) = http(
            &issuer,
            "POST",
            &path,
            "grant_type=client_credentials&client_id=svc&client_secret=nope",
        );
        assert_eq!(status, 401);
        let (status, body) = http(
            &issuer,
            "POST",
            &path,
            "grant_type=client_credentials&client_id=svc&client_secret=s3cret",
        );
        assert_eq!(status, 200);
        let payload = payload(&access_token(&body));
        assert_eq!(payload["sub"], "svc");
        assert_eq!(payload["azp"], "svc");
        let (status, _) = http(&issuer, "POST", &path, "grant_type=implicit");
        assert_eq!(status, 400);
    }

    #[test]
    fn password_grant_carries_the_users_roles() {
        let issuer = TestIssuer::builder()
            .user("alice", "pw", &["admin"])
            .start()
            .unwrap();
        let path = path_of(&issuer.token_endpoint());
        assert_eq!(
            http(
                &issuer,
                "POST",
                &path,
                "grant_type=password&username=alice&password=bad"
            )
            .0,
            400
        );
        let (status, body) = http(
            &issuer,
            "POST",
            &path,
            "grant_type=password&username=alice&password=pw",
        );
        assert_eq!(status, 200);
        let payload = payload(&access_token(&body));
        assert_eq!(payload["realm_access"]["roles"], json!(["admin"]));
        assert_eq!(payload["sub"], "alice");
    }

    #[test]
    fn own_tokens_verify_for_every_algorithm_and_others_do_not() {
        for alg in [
            SigningAlgorithm::Rs256,
            SigningAlgorithm::Es256,
            SigningAlgorithm::EdDsa,
        ] {
            let issuer = TestIssuer::builder().algorithm(alg).start().unwrap();
            let token = issuer.token().subject("alice").expires_in(-60).sign();
            assert_eq!(issuer.state.verify(&token).unwrap()["sub"], "alice", "{alg:?}");
            let (message, _) = token.rsplit_once('.').unwrap();
            let other = TestIssuer::builder().algorithm(alg).start().unwrap();
            let forged = other.token().kid(Some(&issuer.current_kid())).sign();
            assert!(issuer.state.verify(&forged).is_none(), "{alg:?}");
            assert!(issuer.state.verify(&format!("{message}.")).is_none(), "{alg:?}");
            let foreign = issuer.token().issuer("https://elsewhere.example").sign();
            assert!(issuer.state.verify(&foreign).is_none(), "{alg:?}");
        }
    }

    #[test]
    fn without_claim_removes_defaults() {
        let issuer = TestIssuer::start().unwrap();
        let p = payload(
            &issuer
                .token()
                .without_claim("aud")
                .without_claim("preferred_username")
                .subject("bob")
                .sign(),
        );
        assert!(
            p.get("aud").is_none() && p.get("preferred_username").is_none(),
            "{p}"
        );
        assert_eq!(p["sub"], "bob");
    }

    #[test]
    fn public_clients_have_no_client_credentials() {
        let issuer = TestIssuer::builder().public_client("web").start().unwrap();
        let (status, body) = http(
            &issuer,
            "POST",
            &path_of(&issuer.token_endpoint()),
            "grant_type=client_credentials&client_id=web",
        );
        assert_eq!(status, 400);
        assert!(body.contains("unauthorized_client"), "{body}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let b = TestIssuer::builder()
            .client("svc", "top-secret")
            .user("u", "pw-secret", &[]);
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("top-secret") && !dbg.contains("pw-secret"), "{dbg}");
    }
}
