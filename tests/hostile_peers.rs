//! Slow, silent and greedy clients against the example services, over real
//! sockets, in every listener mode (plaintext, TLS, mutual TLS STRICT and
//! PERMISSIVE) of both frameworks (details: axum; reviews: actix-web). Each
//! is let go within its limit plus a margin, never before it, never with a
//! 5xx, while a normal client is served. The services run with 2 s for a
//! handshake, a request head or a request body and 3 s of idleness
//! (`--handshake-timeout`, `--header-read-timeout`, `--body-read-timeout`,
//! `--idle-timeout`) and the default body limit and body rate.
//!
//! Then identity providers that answer slowly, without end, in a redirect
//! loop or with a sign-in page, at the key and the discovery endpoint:
//! abandoned within the fetch's limits, with one clear warning.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use palisade::testkit::{TestIssuer, TestPki};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

mod common;
use common::{ScratchDir, Service, start};

/// The services' handshake and header-read timeout.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Their idle timeout.
const IDLE: Duration = Duration::from_secs(3);
/// Not let go before this: the timeout, less scheduling slack.
const NOT_BEFORE: Duration = Duration::from_millis(1500);
/// Let go by this, whatever the machine's load.
const BY: Duration = Duration::from_secs(10);
/// A body of 50 times the default limit.
const HUGE_BODY: usize = 100 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    /// Server TLS, no client certificate asked for.
    Tls,
    Strict,
    Permissive,
}

impl Mode {
    /// How callers reach the port: plaintext, TLS or both.
    fn transports(self) -> &'static [bool] {
        match self {
            Mode::Plain => &[false],
            Mode::Tls | Mode::Strict => &[true],
            Mode::Permissive => &[false, true],
        }
    }
}

/// A running service in one mode, with what its callers need.
struct Fixture {
    name: &'static str,
    svc: Service,
    /// Client TLS (the productpage workload's certificate, `http/1.1`).
    tls: Arc<rustls::ClientConfig>,
    token: String,
    _issuer: TestIssuer,
    _dir: ScratchDir,
}

fn fixture(name: &'static str, mode: Mode) -> Fixture {
    fixture_with(name, mode, &[])
}

/// [`fixture`] with `extra` arguments for the service.
fn fixture_with(name: &'static str, mode: Mode, extra: &[&str]) -> Fixture {
    let issuer = TestIssuer::builder().default_audience(name).start().unwrap();
    let dir = ScratchDir::new(&format!("hostile-{name}-{mode:?}"));
    let pki = TestPki::new();
    let ca = dir.write("ca.pem", &pki.ca_pem());
    let (cert, key) = dir.cert("server", &pki.server(&["localhost"]));
    let (client_cert, client_key) = dir.cert("productpage", &pki.workload("default", "productpage"));
    let peer_mode = if mode == Mode::Permissive {
        "PERMISSIVE"
    } else {
        "STRICT"
    };
    let policy = dir.write(
        "policy.yaml",
        &format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules: [{{issuer: {iss}, audiences: [{name}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: default}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
  - to: [{{operation: {{paths: [/healthz]}}}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: {peer_mode}}}}}
",
            iss = issuer.issuer()
        ),
    );
    let timeout = TIMEOUT.as_secs().to_string();
    let idle = IDLE.as_secs().to_string();
    let mut args = vec![
        "--config",
        &policy,
        "--handshake-timeout",
        &timeout,
        "--header-read-timeout",
        &timeout,
        "--idle-timeout",
        &idle,
        "--body-read-timeout",
        &timeout,
    ];
    if mode != Mode::Plain {
        args.extend(["--tls-cert", &cert, "--tls-key", &key]);
    }
    if matches!(mode, Mode::Strict | Mode::Permissive) {
        args.extend(["--client-ca", &ca]);
    }
    args.extend(extra);
    let svc = start(name, &args);
    let client = palisade::mtls::ClientTls::builder(&client_cert, &client_key, &ca)
        .build()
        .unwrap();
    let mut tls = (*client.client_config()).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let token = issuer.token().subject("hostile-test").sign();
    Fixture {
        name,
        svc,
        tls: Arc::new(tls),
        token,
        _issuer: issuer,
        _dir: dir,
    }
}

/// A connection as the tests speak on it: plaintext or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Fixture {
    async fn tcp(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.svc.port)).await.unwrap()
    }

    /// A connection that has finished its TLS handshake when `tls`.
    async fn open(&self, tls: bool) -> Box<dyn Io> {
        let tcp = self.tcp().await;
        if !tls {
            return Box::new(tcp);
        }
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        Box::new(connector.connect(name, tcp).await.unwrap())
    }

    /// A connection that speaks HTTP/2 once open: TLS with ALPN `h2` when
    /// `tls`, else plaintext (h2c by prior knowledge, its preface the
    /// caller's).
    async fn open_h2(&self, tls: bool) -> Box<dyn Io> {
        let tcp = self.tcp().await;
        if !tls {
            return Box::new(tcp);
        }
        let mut config = (*self.tls).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        assert_eq!(
            stream.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "{}: no h2",
            self.name
        );
        Box::new(stream)
    }

    /// What a well-behaved client gets for `GET /list`, and how long it took.
    async fn normal_request(&self, tls: bool) -> u16 {
        let mut client = reqwest::Client::builder().timeout(BY);
        if tls {
            client = client.use_preconfigured_tls((*self.tls).clone());
        }
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://localhost:{}/list", self.svc.port);
        let res = client
            .build()
            .unwrap()
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: a normal request failed: {e}", self.name));
        res.status().as_u16()
    }
}

/// How a hostile connection ended: what the server sent before it closed
/// (a reset counts as closed), and when, from `since`.
struct Ending {
    answer: String,
    after: Duration,
}

/// Reads `r` until the server closes it (or `BY` passes: a panic naming
/// `what`).
async fn ending(mut r: impl AsyncRead + Unpin, since: Instant, what: &str) -> Ending {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BY, read)
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {BY:?}"));
    Ending {
        answer: String::from_utf8_lossy(&seen).into_owned(),
        after: since.elapsed(),
    }
}

impl Ending {
    /// Closed after the timeout ran out, not before, with nothing or `status`.
    fn timed_out(&self, what: &str, status: &str) {
        assert!(
            self.after >= NOT_BEFORE,
            "{what}: closed after only {:?}",
            self.after
        );
        assert!(
            self.answer.is_empty() || self.answer.starts_with(status),
            "{what}: answered {:?}",
            self.answer
        );
    }
}

/// Connects and sends nothing: let go after the handshake timeout (TLS
/// ports) or the header-read timeout (plaintext).
async fn silent(fx: &Fixture) {
    let since = Instant::now();
    let tcp = fx.tcp().await;
    let what = format!("{}: a silent connection", fx.name);
    ending(tcp, since, &what).await.timed_out(&what, "HTTP/1.1 408");
}

/// Starts a TLS record and stops.
async fn half_a_handshake(fx: &Fixture) {
    let since = Instant::now();
    let mut tcp = fx.tcp().await;
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let what = format!("{}: a stalled TLS handshake", fx.name);
    // Nothing, or a TLS alert record (type 21): never an HTTP answer.
    ending(tcp, since, &what).await.timed_out(&what, "\u{15}\u{3}");
}

/// Finishes the TLS handshake, then sends nothing.
async fn silent_after_handshake(fx: &Fixture) {
    let stream = fx.open(true).await;
    let since = Instant::now();
    let what = format!("{}: silent after the TLS handshake", fx.name);
    ending(stream, since, &what)
        .await
        .timed_out(&what, "HTTP/1.1 408");
}

/// Sends a request head one byte a second, without end.
async fn drip(fx: &Fixture, tls: bool) {
    let stream = fx.open(tls).await;
    let what = format!("{}: a head sent a byte a second (TLS {tls})", fx.name);
    drip_on(stream, &what).await;
}

/// Sends one request and reads its answer, then the next head one byte a
/// second, without end: let go after the header-read timeout (axum's loop
/// times every head) or by the idle plus the header-read timeout from the
/// answer (actix-http times only a connection's first head; Palisade's
/// watch times the others).
async fn drip_after_a_request(fx: &Fixture, tls: bool) {
    let mut stream = fx.open(tls).await;
    let what = format!("{}: a second head sent a byte a second (TLS {tls})", fx.name);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok") {
        match tokio::time::timeout(BY, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            other => panic!("{what}: the first request got {other:?}"),
        }
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{what}: {:?}",
        String::from_utf8_lossy(&answer)
    );
    drip_on(stream, &what).await;
}

/// Sends a request head on `stream` one byte a second, without end, until
/// the server lets it go (`what` names it).
async fn drip_on(stream: Box<dyn Io>, what: &str) {
    let since = Instant::now();
    let (r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            if w.write_all(&[*b]).await.is_err() || w.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    ending(r, since, what).await.timed_out(what, "HTTP/1.1 408");
    writer.abort();
}

/// What a client sending a body saw: how the connection ended, and how
/// much of the body it had sent when the answer began.
struct Sent {
    end: Ending,
    before_answer: usize,
}

/// Sends `head` then `body` (a part at a time) while reading.
async fn send(
    fx: &Fixture,
    tls: bool,
    head: String,
    body: impl Iterator<Item = Vec<u8>> + Send + 'static,
    what: &str,
) -> Sent {
    let stream = fx.open(tls).await;
    let since = Instant::now();
    let (mut r, mut w) = tokio::io::split(stream);
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let sent = sent.clone();
        async move {
            if w.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for part in body {
                if w.write_all(&part).await.is_err() {
                    return;
                }
                sent.fetch_add(part.len(), Ordering::Relaxed);
            }
            let _ = w.flush().await;
            // Then wait for the answer, without closing.
            std::future::pending::<()>().await;
        }
    });
    // The answer's first byte, then the rest until the server closes.
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(BY, r.read(&mut first)).await;
    let before_answer = sent.load(Ordering::Relaxed);
    let mut end = match read {
        Ok(Ok(1)) => ending(r, since, what).await,
        Ok(_) => Ending {
            answer: String::new(),
            after: since.elapsed(),
        },
        Err(_) => panic!("{what}: no answer and still open after {BY:?}"),
    };
    if read.is_ok_and(|r| r.is_ok_and(|n| n == 1)) {
        end.answer.insert(0, char::from(first[0]));
    }
    writer.abort();
    Sent { end, before_answer }
}

/// A 10 MB header: 431, or closed.
async fn huge_header(fx: &Fixture, tls: bool) {
    let what = format!("{}: a 10 MB header (TLS {tls})", fx.name);
    let head = "GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-big: ".to_owned();
    let body = (0..160)
        .map(|_| vec![b'a'; 64 * 1024])
        .chain([b"\r\n\r\n".to_vec()]);
    let Sent { end, .. } = send(fx, tls, head, body, &what).await;
    assert!(
        end.answer.is_empty() || end.answer.starts_with("HTTP/1.1 431"),
        "{what}: answered {:?}",
        end.answer
    );
}

/// `POST /list` with a valid token and a declared 100 MB body, of which
/// nothing is sent: 413 at once.
async fn huge_declared_body(fx: &Fixture, tls: bool) {
    let what = format!("{}: a declared 100 MB body (TLS {tls})", fx.name);
    let head = format!(
        "POST /list HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {HUGE_BODY}\r\n\r\n",
        fx.token
    );
    let Sent { end, .. } = send(fx, tls, head, std::iter::empty(), &what).await;
    assert!(
        end.answer.starts_with("HTTP/1.1 413"),
        "{what}: answered {:?}",
        end.answer
    );
}

/// `POST /list` with a valid token and a chunked body without end: 413
/// when it passes the limit (long before 100 MB), and the connection
/// closed rather than the rest read.
async fn endless_chunked_body(fx: &Fixture, tls: bool) {
    let what = format!("{}: an endless chunked body (TLS {tls})", fx.name);
    let head = format!(
        "POST /list HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        fx.token
    );
    const CHUNK: usize = 64 * 1024;
    let chunk = {
        let mut c = format!("{CHUNK:x}\r\n").into_bytes();
        c.extend_from_slice(&[b' '; CHUNK]);
        c.extend_from_slice(b"\r\n");
        c
    };
    let Sent { end, before_answer } = send(fx, tls, head, std::iter::repeat(chunk), &what).await;
    assert!(
        end.answer.starts_with("HTTP/1.1 413"),
        "{what}: answered {:?}",
        end.answer
    );
    assert!(
        before_answer < HUGE_BODY,
        "{what}: answered after {before_answer} bytes"
    );
}

/// `POST /list` with a valid token and a declared 1,000-byte body of which
/// ten bytes come and then nothing (`stall`), or one byte every 100 ms:
/// 408 once the body timeout runs out (the few bytes earn almost no time at
/// 500 bytes a second), and the connection closed.
async fn slow_body(fx: &Fixture, tls: bool, stall: bool) {
    let how = if stall { "stalls" } else { "drips" };
    let what = format!("{}: a body that {how} (TLS {tls})", fx.name);
    let head = format!(
        "POST /list HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n",
        fx.token
    );
    let stream = fx.open(tls).await;
    let since = Instant::now();
    let (r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        if w.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        if stall {
            let _ = w.write_all(b"{\"a\": \"bc").await;
            let _ = w.flush().await;
            std::future::pending::<()>().await;
        }
        for _ in 0..1000 {
            if w.write_all(b" ").await.is_err() || w.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let end = ending(r, since, &what).await;
    end.timed_out(&what, "HTTP/1.1 408");
    assert!(
        end.answer.starts_with("HTTP/1.1 408") && end.answer.contains("did not arrive in time"),
        "{what}: answered {:?}",
        end.answer
    );
    writer.abort();
}

/// Every hostile client of `mode` at once, with 50 more silent connections,
/// while a normal client is served.
async fn hostile_peers_are_bounded(name: &'static str, mode: Mode) {
    let fx = fixture(name, mode);
    let tls_port = mode != Mode::Plain;
    // Fifty silent connections, held throughout.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(fx.tcp().await);
    }
    let mut cases: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> =
        vec![Box::pin(silent(&fx))];
    if tls_port {
        cases.push(Box::pin(half_a_handshake(&fx)));
        cases.push(Box::pin(silent_after_handshake(&fx)));
    }
    for &tls in mode.transports() {
        cases.push(Box::pin(drip(&fx, tls)));
        cases.push(Box::pin(drip_after_a_request(&fx, tls)));
        cases.push(Box::pin(huge_header(&fx, tls)));
        cases.push(Box::pin(huge_declared_body(&fx, tls)));
        cases.push(Box::pin(endless_chunked_body(&fx, tls)));
        cases.push(Box::pin(slow_body(&fx, tls, true)));
        cases.push(Box::pin(slow_body(&fx, tls, false)));
    }
    let normal = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for &tls in mode.transports() {
            // Served while they hold their connections (within `BY`, the
            // client's timeout; how fast is the benches' business).
            let status = fx.normal_request(tls).await;
            assert_eq!(status, 200, "{name} {mode:?}: a normal client was refused");
        }
    };
    tokio::join!(futures_join_all(cases), normal);
    // The silent fifty are gone too.
    for tcp in idle {
        let what = format!("{name} {mode:?}: one of fifty silent connections");
        ending(tcp, Instant::now(), &what).await;
    }
    // And the service is still well.
    for &tls in mode.transports() {
        assert_eq!(fx.normal_request(tls).await, 200, "{name} {mode:?}");
    }
}

/// Runs the futures concurrently on this task.
async fn futures_join_all(cases: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>>) {
    let mut set: Vec<_> = cases.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in &mut set {
            if let Some(f) = slot {
                if f.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    pending = true;
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
}

/// An idle kept-alive connection is closed after the idle timeout, not
/// before.
async fn idle_keep_alive_is_bounded(name: &'static str) {
    let fx = fixture(name, Mode::Plain);
    let mut tcp = fx.tcp().await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut status = [0u8; 15];
    tcp.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200 OK", "{name}");
    let since = Instant::now();
    let what = format!("{name}: an idle kept-alive connection");
    let end = ending(tcp, since, &what).await;
    // The rest of the first answer, then nothing.
    assert!(end.answer.ends_with("ok"), "{what}: {:?}", end.answer);
    assert!(
        end.after >= IDLE - Duration::from_millis(500),
        "{what}: closed after {:?}",
        end.after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_plaintext_bounds_hostile_peers() {
    hostile_peers_are_bounded("details", Mode::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_tls_bounds_hostile_peers() {
    hostile_peers_are_bounded("details", Mode::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_strict_mtls_bounds_hostile_peers() {
    hostile_peers_are_bounded("details", Mode::Strict).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_permissive_mtls_bounds_hostile_peers() {
    hostile_peers_are_bounded("details", Mode::Permissive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_plaintext_bounds_hostile_peers() {
    hostile_peers_are_bounded("reviews", Mode::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_tls_bounds_hostile_peers() {
    hostile_peers_are_bounded("reviews", Mode::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_strict_mtls_bounds_hostile_peers() {
    hostile_peers_are_bounded("reviews", Mode::Strict).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_permissive_mtls_bounds_hostile_peers() {
    hostile_peers_are_bounded("reviews", Mode::Permissive).await;
}

/// A kept-alive connection older than `--max-connection-age` (1 s here,
/// give or take a tenth) is closed once idle, well before the idle
/// timeout (3 s), on both frameworks, in plaintext and under mutual TLS
/// (reviews: through `palisade_mtls`'s actix-web server and its watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_its_maximum_age_is_closed_on_both_frameworks() {
    for name in ["details", "reviews"] {
        for mode in [Mode::Plain, Mode::Strict] {
            let fx = fixture_with(name, mode, &["--max-connection-age", "1"]);
            let what = format!("{name} {mode:?}: a connection past its maximum age");
            let since = Instant::now();
            let mut stream = fx.open(mode == Mode::Strict).await;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
                .await
                .unwrap();
            let mut status = [0u8; 15];
            stream.read_exact(&mut status).await.unwrap();
            assert_eq!(&status, b"HTTP/1.1 200 OK", "{what}");
            let end = ending(stream, since, &what).await;
            assert!(end.answer.ends_with("ok"), "{what}: {:?}", end.answer);
            assert!(
                end.after >= Duration::from_millis(850) && end.after < IDLE - Duration::from_millis(500),
                "{what}: closed after {:?}",
                end.after
            );
        }
    }
}

/// An HTTP/2 frame: its type, flags, stream and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HTTP/2 frame header read off `r`, and its payload: its type, flags,
/// stream and payload; `None` at the end.
async fn h2_read_frame(r: &mut (impl AsyncRead + Unpin)) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

/// Opens an HTTP/2 connection by prior knowledge (`h2c`, frames by hand: no
/// client stays silent on purpose), sends `requests` times `GET /healthz`
/// on it, `IDLE - 1 s` apart, then says nothing more but the
/// acknowledgements any client sends (of the server's settings and pings,
/// which keep a connection alive under actix-http): how long after the
/// last answer's end (or the opening) the server closed it, and how many
/// requests were answered.
async fn http2_then_nothing(fx: &Fixture, tls: bool, requests: u32) -> (Duration, u32) {
    let (mut rd, mut wr) = tokio::io::split(fx.open_h2(tls).await);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(4, 0, 0, &[]));
    wr.write_all(&out).await.unwrap();
    // HPACK: :method GET, :scheme http or https (static table), :path and
    // :authority as literals with indexed names.
    let mut block = vec![0x82, if tls { 0x87 } else { 0x86 }, 0x04, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    let mut since = Instant::now();
    let (mut sent, mut answered) = (0, 0);
    let mut next = tokio::time::Instant::now();
    let read = async {
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next), if sent < requests => {
                    // HEADERS, END_STREAM | END_HEADERS, on streams 1, 3, 5…
                    let frame = h2_frame(1, 0x5, 2 * sent + 1, &block);
                    if wr.write_all(&frame).await.is_err() {
                        break;
                    }
                    sent += 1;
                    next += IDLE - Duration::from_secs(1);
                }
                frame = h2_read_frame(&mut rd) => {
                    let Some((kind, flags, stream, payload)) = frame else {
                        break;
                    };
                    let ack = match kind {
                        // SETTINGS and PING, not acknowledgements themselves.
                        4 if flags & 1 == 0 => Some(h2_frame(4, 1, 0, &[])),
                        6 if flags & 1 == 0 => Some(h2_frame(6, 1, 0, &payload)),
                        // DATA or HEADERS ending a request's stream: an answer.
                        0 | 1 if stream % 2 == 1 && flags & 1 == 1 => {
                            answered += 1;
                            since = Instant::now();
                            None
                        }
                        _ => None,
                    };
                    if let Some(ack) = ack
                        && wr.write_all(&ack).await.is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(BY + IDLE * requests, read)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: an HTTP/2 connection after {requests} requests still open",
                fx.name
            )
        });
    (since.elapsed(), answered)
}

/// An HTTP/2 connection that says nothing after its preface, or nothing
/// after its last answer, is closed however well it answers the server's
/// pings (actix-http took those for life: the connection stayed open for
/// good); one in use is not, past the time a silent one gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_idle_http2_connection_is_closed_on_both_frameworks() {
    // Plaintext (h2c, told by its preface) and TLS (h2, told by ALPN; on
    // reviews actix-web's own rustls listener).
    for (name, mode) in [
        ("details", Mode::Plain),
        ("reviews", Mode::Plain),
        ("details", Mode::Tls),
        ("reviews", Mode::Tls),
    ] {
        let fx = fixture(name, mode);
        let tls = mode != Mode::Plain;
        let name = format!("{name} {mode:?}");
        let (after, _) = http2_then_nothing(&fx, tls, 0).await;
        // axum: the header-read timeout of its opening; actix-web: the idle
        // plus the header-read timeout (its watch's, by the second).
        let silent = match fx.name {
            "details" => NOT_BEFORE,
            _ => IDLE + TIMEOUT - Duration::from_millis(500),
        };
        assert!(after >= silent, "{name}: silent, closed after only {after:?}");
        // Used every 2 s for 6 s: past the idle plus header-read timeouts
        // (5 s) of its opening, which a silent one gets.
        let (after, answered) = http2_then_nothing(&fx, tls, 4).await;
        assert_eq!(answered, 4, "{name}: requests on HTTP/2 unanswered");
        assert!(
            after >= IDLE - Duration::from_millis(500),
            "{name}: idle, closed after only {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout_on_both_frameworks() {
    idle_keep_alive_is_bounded("details").await;
    idle_keep_alive_is_bounded("reviews").await;
}

/// Hostile key and discovery endpoints: one server whose first path
/// segment says how it misbehaves. (Here rather than in tests/jwks.rs: all
/// key fetches of a process share one thread, and starting these stores
/// would shift the timings tests/jwks.rs measures.)
mod identity_provider {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use palisade::jwt::{FetchSettings, JwtAuthenticator, JwtError, Provider};
    use serde_json::json;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Every log line of this test binary, for the tests to look for theirs
    /// (the key fetches run on a thread of their own).
    fn logs() {
        crate::common::logs::capture("palisade=warn");
    }

    /// The log lines that mention `needle`.
    fn lines_with(needle: &str) -> Vec<String> {
        crate::common::logs::lines(needle)
    }

    /// A server that misbehaves by its path's first segment: `slow` (a
    /// byte every 200 ms, without end), `endless` (a body without end, as
    /// fast as it is read), `loop` (a redirect to itself), `html` (a
    /// sign-in page); its address and the bytes it has sent.
    async fn hostile_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                let sent = counter.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let mut send = async |bytes: &[u8]| {
                        let ok = tcp.write_all(bytes).await.is_ok();
                        sent.fetch_add(bytes.len(), Ordering::Relaxed);
                        ok
                    };
                    match path.split('/').nth(1).unwrap_or("") {
                        "slow" => {
                            if !send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").await {
                                return;
                            }
                            while send(b"1\r\n \r\n").await {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                        "endless" => {
                            if !send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n2\r\n[ \r\n").await {
                                return;
                            }
                            let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
                            while send(chunk.as_bytes()).await {}
                        }
                        "loop" => {
                            let answer = format!(
                                "HTTP/1.1 302 Found\r\nlocation: {path}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            );
                            send(answer.as_bytes()).await;
                        }
                        _ => {
                            let page = "<!DOCTYPE html><html><body><form>Sign in</form></body></html>";
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                                page.len()
                            );
                            send(answer.as_bytes()).await;
                        }
                    }
                });
            }
        });
        (base, sent)
    }

    /// 2 s per fetch (redirects included), 64 KiB per body, 1 s for a
    /// request to wait for keys.
    fn settings() -> FetchSettings {
        let mut f = FetchSettings::default();
        f.timeout = Duration::from_secs(2);
        f.max_body = 64 * 1024;
        f.unknown_kid_wait = Duration::from_secs(1);
        f.min_refresh_interval = Duration::from_millis(100);
        f
    }

    /// A token of `issuer` (signed by a key its endpoint never serves) is
    /// refused with `KeysUnavailable`, in bounded time, and one warning
    /// names the endpoint and `reason`.
    async fn refused_with(jwt: &JwtAuthenticator, issuer: &str, url: &str, reason: &str) {
        // Never checked (no key comes): no signing, which costs a loaded
        // machine the time the other tests measure.
        let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300;
        let token = format!(
            "{}.{}.{}",
            part(json!({"alg": "RS256", "typ": "JWT", "kid": "k1"})),
            part(json!({"iss": issuer, "aud": "account", "sub": "s", "exp": exp})),
            URL_SAFE_NO_PAD.encode([7u8; 256])
        );
        let started = Instant::now();
        assert_eq!(
            jwt.verify(&token).await.unwrap_err(),
            JwtError::KeysUnavailable,
            "{url}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url}: {:?}",
            started.elapsed()
        );
        crate::common::wait_until(&format!("a warning naming {url}"), async || {
            lines_with(url)
                .iter()
                .any(|l| l.contains("WARN") && l.contains(reason))
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_endless_looping_and_html_key_endpoints_are_abandoned_with_a_clear_warning() {
        logs();
        let (base, sent) = hostile_server().await;
        for (kind, reason) in [
            ("slow", "timed out"),
            ("endless", "body larger than 65536 bytes"),
            ("loop", "too many redirects"),
            ("html", "an HTML page"),
        ] {
            let issuer = format!("https://issuer.example/{kind}");
            let jwks_uri = format!("{base}/{kind}/jwks");
            let jwt = JwtAuthenticator::builder()
                .provider(
                    Provider::builder(&issuer)
                        .audience("account")
                        .jwks_uri(&jwks_uri)
                        .fetch_settings(settings())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap();
            refused_with(&jwt, &issuer, &jwks_uri, reason).await;
        }
        // The endless body was abandoned at the limit: what the server got
        // out is the limit plus what the sockets hold, not a stream's worth.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = sent.load(Ordering::Relaxed);
        assert!(out < 16 * 1024 * 1024, "the hostile server sent {out} bytes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_endless_looping_and_html_discovery_documents_are_abandoned_with_a_clear_warning() {
        logs();
        let (base, _) = hostile_server().await;
        for (kind, reason) in [
            ("slow", "timed out"),
            ("endless", "body larger than 65536 bytes"),
            ("loop", "too many redirects"),
            ("html", "an HTML page"),
        ] {
            // Discovery: `{issuer}/.well-known/openid-configuration`.
            let issuer = format!("{base}/{kind}/realms/r");
            let discovery = format!("{issuer}/.well-known/openid-configuration");
            let jwt = JwtAuthenticator::builder()
                .provider(
                    Provider::builder(&issuer)
                        .audience("account")
                        .fetch_settings(settings())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap();
            refused_with(&jwt, &issuer, &discovery, reason).await;
        }
    }
}
