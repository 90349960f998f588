//! Mutual TLS: the handshake-plus-identity cost per new connection against a
//! plain rustls mutual handshake (the floor), in memory; and the per-request
//! cost on a kept-alive HTTPS connection through Palisade's accept loop and
//! guard against plain HTTPS (tokio-rustls + hyper), over loopback. Results:
//! benches/README.md.
#![expect(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Extension;
use axum::body::Body;
use axum::routing::get;

use criterion::{Criterion, criterion_group, criterion_main};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use palisade::core::authn::ConnectionInfo;
use palisade::core::authz::AccessPolicy;
use palisade::mtls::{ServerTls, peer_identity};
use palisade::testkit::{TestCert, TestPki};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use tower::ServiceExt;

#[path = "../common/paired.rs"]
mod paired;
use paired::bench_paired;

const PRINCIPAL: &str = "cluster.local/ns/default/sa/productpage";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(pki: &TestPki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca_der())).unwrap();
    Arc::new(roots)
}

fn key_of(cert: &TestCert) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(cert.key_der().into())
}

/// A scratch directory for the PEM files `ServerTls` reads.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server's certificate (`localhost`), its key and the CA, as files.
fn palisade_tls(dir: &Path, pki: &TestPki, server: &TestCert, client_ca: bool) -> ServerTls {
    let (crt, key) = server.write_to(dir, "server").unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let builder = ServerTls::builder(crt, key);
    if client_ca { builder.client_ca(ca) } else { builder }
        .build()
        .unwrap()
}

/// Moves TLS records between the two ends, in memory, until neither has
/// anything left to send (the handshake, then the server's session tickets).
fn pump(client: &mut ClientConnection, server: &mut ServerConnection, buf: &mut Vec<u8>) {
    loop {
        buf.clear();
        while client.wants_write() {
            client.write_tls(buf).unwrap();
        }
        let mut moved = !buf.is_empty();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets().unwrap();
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(buf).unwrap();
        }
        moved |= !buf.is_empty();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
        }
        if !moved {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
}

fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, buf: &mut Vec<u8>) -> ServerConnection {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    pump(&mut c, &mut s, buf);
    s
}

fn handshake_benches(c: &mut Criterion) {
    let pki = TestPki::new();
    let server_cert = pki.server(&["localhost"]);
    let workload = pki.workload("default", "productpage");
    let dir = Dir(std::env::temp_dir().join(format!("palisade-bench-mtls-hs-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();

    // One client for both: TLS 1.3 only, the workload certificate, no
    // resumption (every handshake is a full one).
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&pki))
        .with_client_auth_cert(vec![CertificateDer::from(workload.cert_der())], key_of(&workload))
        .unwrap();
    client.resumption = rustls::client::Resumption::disabled();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = Arc::new(client);

    // The floor: a fixed certificate and rustls's own client verifier.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&pki), provider())
        .build()
        .unwrap();
    let mut plain = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_cert.cert_der())],
            key_of(&server_cert),
        )
        .unwrap();
    plain.alpn_protocols = vec![b"http/1.1".to_vec()];
    let plain = Arc::new(plain);

    let palisade = palisade_tls(&dir.0, &pki, &server_cert, true).server_config();

    // Both handshakes succeed, mutually, and the identity is the workload's.
    let mut buf = Vec::with_capacity(16 * 1024);
    for config in [&plain, &palisade] {
        let s = handshake(&client, config, &mut buf);
        assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let leaf = s.peer_certificates().expect("no client certificate")[0].clone();
        let id = peer_identity(&leaf).expect("no peer identity");
        assert_eq!(id.principal.as_deref(), Some(PRINCIPAL));
        eprintln!(
            "mtls/handshake: {:?}, {:?}, key exchange {:?}",
            s.protocol_version().unwrap(),
            s.negotiated_cipher_suite().unwrap().suite(),
            s.negotiated_key_exchange_group().unwrap().name()
        );
    }

    // Each contender is paired with the floor (`bench_paired`).
    let (client, plain, palisade) = (&client, &plain, &palisade);
    let floor = || {
        let mut buf = Vec::with_capacity(16 * 1024);
        move || {
            let s = handshake(client, plain, &mut buf);
            black_box(s.peer_certificates().map(<[_]>::len));
        }
    };
    let mut g = c.benchmark_group("mtls/handshake");
    type Contender<'a> = (&'static str, Box<dyn FnMut() + 'a>);
    let mut contenders: [Contender<'_>; 4] = [
        ("plain_rustls", Box::new(floor())),
        ("plain_rustls_with_identity_parse", {
            let mut buf = Vec::with_capacity(16 * 1024);
            Box::new(move || {
                let s = handshake(client, plain, &mut buf);
                let leaf = &s.peer_certificates().expect("no client certificate")[0];
                black_box(peer_identity(leaf).expect("no peer identity"));
            })
        }),
        ("palisade_config_only", {
            let mut buf = Vec::with_capacity(16 * 1024);
            Box::new(move || {
                let s = handshake(client, palisade, &mut buf);
                black_box(s.peer_certificates().map(<[_]>::len));
            })
        }),
        ("palisade", {
            let mut buf = Vec::with_capacity(16 * 1024);
            Box::new(move || {
                let s = handshake(client, palisade, &mut buf);
                let leaf = &s.peer_certificates().expect("no client certificate")[0];
                let id = peer_identity(leaf).expect("no peer identity");
                assert!(id.principal.is_some());
                black_box(id);
            })
        }),
    ];
    let mut paired = Vec::new();
    for (name, contender) in &mut contenders {
        paired.push((*name, bench_paired(&mut g, name, contender, &mut floor())));
    }
    g.finish();
    for (name, ratio) in paired {
        if let Some(p) = ratio {
            eprintln!(
                "mtls/handshake/{name}: paired with the floor {:.3}x ({:+.0} ns per handshake)",
                p.ratio, p.overhead_ns
            );
        }
    }

    let leaf = workload.cert_der();
    c.bench_function("mtls/identity_parse", |b| {
        b.iter(|| black_box(peer_identity(black_box(&leaf))));
    });
    // The part of the parse that hashes the leaf and writes it in hex.
    c.bench_function("mtls/identity_parse_fingerprint_only", |b| {
        b.iter(|| black_box(palisade::mtls::fingerprint_sha256(black_box(&leaf))));
    });
}

async fn whoami(id: Option<palisade::prelude::Identity>) -> String {
    id.and_then(|i| i.peer().and_then(|p| p.principal.clone()))
        .unwrap_or_else(|| "anonymous".to_owned())
}

/// The remote port of the connection, as Palisade's accept loop saw it.
async fn conn(Extension(info): Extension<Arc<ConnectionInfo>>) -> String {
    info.remote_addr.map(|a| a.port().to_string()).unwrap_or_default()
}

fn app() -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/whoami", get(whoami))
}

/// The floor: tokio-rustls and hyper's HTTP/1.1 server, server auth only.
/// Counts the connections it accepts.
async fn serve_plain(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
    app: axum::Router,
    accepted: Arc<AtomicUsize>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                app.clone().oneshot(req.map(Body::new))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn client(pki: &TestPki, addr: SocketAddr, identity: Option<&TestCert>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap();
    let mut b = reqwest::Client::builder()
        .tls_certs_only([ca])
        .http1_only()
        .pool_max_idle_per_host(1)
        .resolve("localhost", addr);
    if let Some(cert) = identity {
        let pem = format!("{}{}", cert.cert_pem(), cert.key_pem());
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn get_text(client: &reqwest::Client, url: &str) -> String {
    let res = client.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200, "GET {url}");
    res.text().await.unwrap()
}

fn request_benches(c: &mut Criterion) {
    // Client and servers share one thread: no cross-thread wake-ups.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pki = TestPki::new();
    let server_cert = pki.server(&["localhost"]);
    let workload = pki.workload("default", "productpage");
    let dir = Dir(std::env::temp_dir().join(format!("palisade-bench-mtls-req-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let tls = palisade_tls(&dir.0, &pki, &server_cert, true);
    let guard = palisade::prelude::Guard::builder()
        .access_policy(AccessPolicy::allow_all())
        .build()
        .unwrap();

    // (a) Palisade: mutual TLS, identity per connection, the guard in front.
    let palisade_app = palisade::axum::PalisadeLayer::new(guard).wrap(app().route("/conn", get(conn)));
    // (a') Palisade's accept loop alone (mutual TLS, no guard): where the overhead is.
    let serve_only_app = app().route("/conn", get(conn));
    // (b) The floor.
    let mut plain = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server_cert.cert_der())],
            key_of(&server_cert),
        )
        .unwrap();
    plain.alpn_protocols = vec![b"http/1.1".to_vec()];
    let accepted = Arc::new(AtomicUsize::new(0));

    let (palisade_addr, serve_only_addr, plain_addr) = rt.block_on(async {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let (l1, l2, l3) = (
            bind().await.unwrap(),
            bind().await.unwrap(),
            bind().await.unwrap(),
        );
        let addrs = (
            l1.local_addr().unwrap(),
            l2.local_addr().unwrap(),
            l3.local_addr().unwrap(),
        );
        tokio::spawn(palisade::mtls::axum::serve(
            l1,
            tls.clone(),
            palisade_app,
            std::future::pending(),
        ));
        tokio::spawn(palisade::mtls::axum::serve(
            l2,
            tls,
            serve_only_app,
            std::future::pending(),
        ));
        tokio::spawn(serve_plain(l3, Arc::new(plain), app(), accepted.clone()));
        addrs
    });
    let url = |addr: SocketAddr, path: &str| format!("https://localhost:{}{path}", addr.port());
    let palisade_client = client(&pki, palisade_addr, Some(&workload));
    let serve_only_client = client(&pki, serve_only_addr, Some(&workload));
    let plain_client = client(&pki, plain_addr, None);

    // Before timing: the answers, the identity on the connection, keep-alive.
    rt.block_on(async {
        assert_eq!(get_text(&palisade_client, &url(palisade_addr, "/")).await, "ok");
        assert_eq!(
            get_text(&palisade_client, &url(palisade_addr, "/whoami")).await,
            PRINCIPAL
        );
        let port = get_text(&palisade_client, &url(palisade_addr, "/conn")).await;
        assert_eq!(
            get_text(&palisade_client, &url(palisade_addr, "/conn")).await,
            port,
            "not kept alive"
        );
        assert_eq!(
            get_text(&serve_only_client, &url(serve_only_addr, "/")).await,
            "ok"
        );
        assert_eq!(get_text(&plain_client, &url(plain_addr, "/")).await, "ok");
        assert_eq!(
            get_text(&plain_client, &url(plain_addr, "/whoami")).await,
            "anonymous"
        );
    });

    // Each contender is checked to use one connection during its timing
    // (the server closes a connection idle for 10 s, which the other
    // contenders' timing exceeds, so the check is made per contender).
    let get = |client: &reqwest::Client, url: &str| {
        let body = rt.block_on(async {
            let res = client.get(url).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.bytes().await.unwrap()
        });
        black_box(body);
    };
    let plain_root = url(plain_addr, "/");
    let mut floor = || get(&plain_client, &plain_root);
    let mut g = c.benchmark_group("mtls/request");
    let mut paired = Vec::new();
    for (name, client, addr, has_conn_route) in [
        ("plain_https", &plain_client, plain_addr, false),
        (
            "palisade_serve_without_guard",
            &serve_only_client,
            serve_only_addr,
            true,
        ),
        ("palisade", &palisade_client, palisade_addr, true),
    ] {
        let root = url(addr, "/");
        let connection = || {
            if has_conn_route {
                rt.block_on(get_text(client, &url(addr, "/conn")))
            } else {
                rt.block_on(get_text(client, &root));
                accepted.load(Ordering::Relaxed).to_string()
            }
        };
        let before = connection();
        paired.push((
            name,
            bench_paired(&mut g, name, &mut || get(client, &root), &mut floor),
        ));
        assert_eq!(connection(), before, "{name}: the client reconnected");
    }
    g.finish();
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "the plain HTTPS client reconnected"
    );
    for (name, ratio) in paired {
        if let Some(p) = ratio {
            eprintln!(
                "mtls/request/{name}: paired with the floor {:.3}x ({:+.0} ns per request)",
                p.ratio, p.overhead_ns
            );
        }
    }
}

criterion_group!(benches, handshake_benches, request_benches);
criterion_main!(benches);
