//! Mutual TLS against the example services as processes, with real TLS
//! clients: curl (`--cert/--key`), `openssl s_client`, and reqwest (rustls)
//! for the load during rotation. Certificates come from the test kit's PKI.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use palisade::testkit::{TestIssuer, TestPki};

mod common;
use common::{ScratchDir, start, start_logged};
use serde_json::Value;

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool}` is missing: run ./scripts/test (it installs it) or `apt-get install {package}`"
    );
}

/// An example's arguments for mutual TLS with `server`'s certificate and
/// key and the client CA `ca`, after `first`.
fn mtls_args<'a>(first: &[&'a str], server: &'a (String, String), ca: &'a str) -> Vec<&'a str> {
    let mut args = first.to_vec();
    args.extend(["--tls-cert", &server.0, "--tls-key", &server.1, "--client-ca", ca]);
    args
}

/// `curl` over HTTPS: (exit code, HTTP status, body).
fn curl(
    port: u16,
    path: &str,
    ca: &str,
    client: Option<&(String, String)>,
    extra: &[&str],
) -> (i32, u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert", ca, "-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"));
    if let Some((cert, key)) = client {
        cmd.args(["--cert", cert, "--key", key]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        status.trim().parse().unwrap_or(0),
        body.to_owned(),
    )
}

/// `openssl s_client` sends one request: the whole output (stdout + stderr).
fn s_client(port: u16, ca: &str, client: Option<&(String, String)>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-quiet",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "localhost",
    ])
    .args(["-CAfile", ca, "-verify_return_error"]);
    if let Some((cert, key)) = client {
        cmd.args(["-cert", cert, "-key", key]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const POLICY: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-productpage}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
  - to: [{operation: {paths: [/healthz, /whoami]}}]
";

#[test]
fn strict_mtls_knows_the_caller_and_refuses_bad_certificates_with_curl_and_openssl() {
    need("curl", "curl");
    need("openssl", "openssl");
    let dir = ScratchDir::new("mtls-strict");
    let pki = TestPki::new();
    let ca = dir.write("ca.pem", &pki.ca_pem());
    let server = dir.cert("server", &pki.server(&["localhost", "127.0.0.1"]));
    let productpage = dir.cert("productpage", &pki.workload("default", "productpage"));
    let ratings = dir.cert("ratings", &pki.workload("default", "ratings"));
    let policy = dir.write("policy.yaml", POLICY);
    let bad = [
        (
            "expired",
            dir.cert("expired", &pki.expired("default", "productpage")),
        ),
        (
            "not yet valid",
            dir.cert("future", &pki.not_yet_valid("default", "productpage")),
        ),
        (
            "wrong EKU",
            dir.cert("eku", &pki.wrong_eku("default", "productpage")),
        ),
        (
            "unknown CA",
            dir.cert("stranger", &TestPki::new().workload("default", "productpage")),
        ),
    ];
    let two_uris = dir.cert(
        "two",
        &pki.client_with_uris(&[
            "spiffe://cluster.local/ns/default/sa/productpage",
            "spiffe://cluster.local/ns/x/sa/y",
        ]),
    );
    for name in ["details", "reviews"] {
        let svc = start(name, &mtls_args(&["--config", &policy], &server, &ca));
        // The right workload: allowed, and /whoami names it.
        let (code, status, _) = curl(svc.port, "/list", &ca, Some(&productpage), &[]);
        assert_eq!((code, status), (0, 200), "{name}: productpage /list");
        let (_, status, body) = curl(svc.port, "/whoami", &ca, Some(&productpage), &[]);
        assert_eq!(status, 200, "{name}");
        let who: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(who["methods"], serde_json::json!(["mtls"]), "{name}: {who}");
        assert_eq!(
            who["peer"]["principal"], "cluster.local/ns/default/sa/productpage",
            "{name}"
        );
        assert_eq!(
            who["peer"]["spiffe_id"],
            "spiffe://cluster.local/ns/default/sa/productpage"
        );
        assert_eq!(
            who["peer"]["fingerprint_sha256"],
            pki_fingerprint(&dir, "productpage"),
            "{name}: fingerprint of the presented leaf"
        );
        // Another workload: the connection is fine, the policy refuses.
        assert_eq!(
            curl(svc.port, "/list", &ca, Some(&ratings), &[]).1,
            403,
            "{name}: ratings /list"
        );
        let (_, _, body) = curl(svc.port, "/whoami", &ca, Some(&ratings), &[]);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["peer"]["principal"],
            "cluster.local/ns/default/sa/ratings"
        );
        // Two URI SANs: a valid chain, but no SPIFFE identity.
        let (_, status, body) = curl(svc.port, "/whoami", &ca, Some(&two_uris), &[]);
        assert_eq!(status, 200, "{name}: two URIs /whoami");
        let who: Value = serde_json::from_str(&body).unwrap();
        assert!(
            who["peer"]["principal"].is_null() && who["peer"]["spiffe_id"].is_null(),
            "{name}: {who}"
        );
        assert_eq!(
            curl(svc.port, "/list", &ca, Some(&two_uris), &[]).1,
            403,
            "{name}: two URIs /list"
        );
        // No certificate, or a bad one: no handshake, no HTTP status.
        let (code, status, _) = curl(svc.port, "/healthz", &ca, None, &[]);
        assert!(
            code != 0 && status == 0,
            "{name}: no certificate got through ({code}, {status})"
        );
        for (what, cert) in &bad {
            let (code, status, _) = curl(svc.port, "/healthz", &ca, Some(cert), &[]);
            assert!(
                code != 0 && status == 0,
                "{name}: {what} certificate got through ({code}, {status})"
            );
        }
        // openssl s_client: the same answers from another TLS stack.
        let out = s_client(svc.port, &ca, Some(&productpage));
        assert!(out.contains("HTTP/1.1 200"), "{name}: {out}");
        assert!(
            out.contains("cluster.local/ns/default/sa/productpage"),
            "{name}: {out}"
        );
        let out = s_client(svc.port, &ca, None);
        assert!(
            !out.contains("HTTP/1.1"),
            "{name}: answered without a certificate: {out}"
        );
        assert!(out.to_lowercase().contains("alert"), "{name}: {out}");
    }
}

fn pki_fingerprint(dir: &ScratchDir, name: &str) -> String {
    let pem = std::fs::read_to_string(dir.path(&format!("{name}.crt"))).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
    palisade::mtls::fingerprint_sha256(&der)
}

#[test]
fn permissive_mode_serves_plaintext_without_and_mtls_with_an_identity() {
    need("curl", "curl");
    let dir = ScratchDir::new("mtls-permissive");
    let pki = TestPki::new();
    let ca = dir.write("ca.pem", &pki.ca_pem());
    let server = dir.cert("server", &pki.server(&["localhost"]));
    let productpage = dir.cert("productpage", &pki.workload("default", "productpage"));
    let stranger = dir.cert("stranger", &TestPki::new().workload("default", "productpage"));
    let policy = dir.write(
        "policy.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: PERMISSIVE}}\n",
    );
    // One port, both ways in: the axum accept loop and, for actix-web,
    // Palisade's listener that peeks at the first byte.
    for name in ["details", "reviews"] {
        let svc = start(name, &mtls_args(&["--config", &policy], &server, &ca));
        let plain = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                &format!("http://127.0.0.1:{}/whoami", svc.port),
            ])
            .output()
            .unwrap();
        let who: Value =
            serde_json::from_slice(&plain.stdout).unwrap_or_else(|_| panic!("{name}: {plain:?}"));
        assert!(
            who["peer"].is_null() && who["authenticated"] == false,
            "{name}: {who}"
        );
        let (_, status, body) = curl(svc.port, "/whoami", &ca, Some(&productpage), &[]);
        assert_eq!(status, 200, "{name}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["peer"]["principal"],
            "cluster.local/ns/default/sa/productpage",
            "{name}"
        );
        let (_, status, body) = curl(svc.port, "/whoami", &ca, None, &[]);
        assert_eq!(
            status, 200,
            "{name}: TLS without a client certificate is accepted in PERMISSIVE"
        );
        assert!(
            serde_json::from_str::<Value>(&body).unwrap()["peer"].is_null(),
            "{name}"
        );
        let (code, status, _) = curl(svc.port, "/whoami", &ca, Some(&stranger), &[]);
        assert!(
            code != 0 && status == 0,
            "{name}: a certificate from an unknown CA is refused at the handshake even in PERMISSIVE"
        );
    }
}

/// One `GET /whoami` on a plaintext HTTP/1.1 connection: the status, and
/// whether the answer closes the connection.
fn http1(tcp: &mut std::net::TcpStream) -> (u16, bool) {
    use std::io::{BufRead, BufReader, Read};
    tcp.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut length, mut close) = (0, false);
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        close |= header == "connection: close";
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, close)
}

/// A reloaded `PeerAuthentication` changes the mode, as Istio applies one:
/// PERMISSIVE to STRICT refuses plaintext and TLS without a certificate
/// from then on, on new connections and at the next request of open ones,
/// and back again serves them.
#[test]
fn a_reloaded_peer_authentication_changes_the_mode_of_new_connections() {
    need("curl", "curl");
    let dir = ScratchDir::new("mtls-mode-reload");
    let pki = TestPki::new();
    let ca = dir.write("ca.pem", &pki.ca_pem());
    let server = dir.cert("server", &pki.server(&["localhost"]));
    let productpage = dir.cert("productpage", &pki.workload("default", "productpage"));
    let mode = |mode: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
        )
    };
    // Plaintext served (HTTP status 200), or the connection refused (0).
    let plain = |port: u16| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{port}/whoami"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u16>()
            .unwrap_or(0)
    };
    // Polled: the reload follows the file within a second or two.
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    for name in ["details", "reviews"] {
        let policy = dir.write(&format!("{name}.yaml"), &mode("PERMISSIVE"));
        let svc = start(name, &mtls_args(&["--config", &policy], &server, &ca));
        let port = svc.port;
        assert_eq!(plain(port), 200, "{name}: PERMISSIVE serves plaintext");
        assert_eq!(curl(port, "/whoami", &ca, None, &[]).1, 200, "{name}");
        // A plaintext connection kept open across the switch.
        let mut kept = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        kept.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(http1(&mut kept).0, 200, "{name}");
        dir.write(&format!("{name}.yaml"), &mode("STRICT"));
        until(&format!("{name}: plaintext refused once STRICT"), &|| {
            plain(port) == 0
        });
        // Its next request is refused, and the connection closed.
        assert_eq!(http1(&mut kept), (403, true), "{name}: the kept connection");
        let (code, status, _) = curl(port, "/whoami", &ca, None, &[]);
        assert!(code != 0 && status == 0, "{name}: STRICT needs a certificate");
        let (_, status, body) = curl(port, "/whoami", &ca, Some(&productpage), &[]);
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["peer"]["principal"],
            "cluster.local/ns/default/sa/productpage",
            "{name}"
        );
        dir.write(&format!("{name}.yaml"), &mode("PERMISSIVE"));
        until(&format!("{name}: plaintext served again"), &|| plain(port) == 200);
        assert_eq!(curl(port, "/whoami", &ca, None, &[]).1, 200, "{name}");
    }
}

#[test]
fn a_new_crl_refuses_a_revoked_client_at_its_next_handshake() {
    need("curl", "curl");
    let dir = ScratchDir::new("mtls-crl");
    let mut pki = TestPki::new();
    let ca = dir.write("ca.pem", &pki.ca_pem());
    let server = dir.cert("server", &pki.server(&["localhost"]));
    let other = dir.cert("other", &pki.workload("default", "other"));
    for name in ["details", "reviews"] {
        let victim = pki.workload("default", "victim");
        let victim_files = dir.cert("victim", &victim);
        let crl = dir.write("crl.pem", &pki.crl_pem());
        let log = dir.path(&format!("{name}.log"));
        let svc = start_logged(name, &mtls_args(&["--client-crl", &crl], &server, &ca), &[], &log);
        assert_eq!(
            curl(svc.port, "/healthz", &ca, Some(&victim_files), &[]).1,
            200,
            "{name}: before revocation"
        );
        pki.revoke(&victim);
        dir.write("crl.pem", &pki.crl_pem());
        let mut refused = false;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(100));
            let (code, status, _) = curl(svc.port, "/healthz", &ca, Some(&victim_files), &[]);
            if code != 0 && status == 0 {
                refused = true;
                break;
            }
        }
        assert!(refused, "{name}: the revoked client still gets through");
        assert_eq!(
            curl(svc.port, "/healthz", &ca, Some(&other), &[]).1,
            200,
            "{name}: others still get through"
        );
        // A broken CRL file keeps the last good one: the victim stays out.
        // (Counted from before it is written: the watch may have caught a
        // good CRL half-written and said so already.)
        let refusals = || {
            std::fs::read_to_string(&log)
                .unwrap()
                .matches("refused; the previous stays in use")
                .count()
        };
        let before = refusals();
        dir.write(
            "crl.pem",
            "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
        );
        // Once the watch has read it and said so.
        for _ in 0..100 {
            if refusals() > before {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(refusals() > before, "{name}: the broken CRL was never refused");
        let (code, status, _) = curl(svc.port, "/healthz", &ca, Some(&victim_files), &[]);
        assert!(
            code != 0 && status == 0,
            "{name}: a broken CRL file let the revoked client in"
        );
        assert_eq!(
            curl(svc.port, "/healthz", &ca, Some(&other), &[]).1,
            200,
            "{name}"
        );
    }
}

/// A connection made before its client certificate was revoked: the
/// handshake verified it, and the guard checks it again at the next request
/// after the CRL's reload, so the connection's requests are refused from
/// then on (Envoy would keep serving it until it closed).
#[tokio::test]
async fn a_revoked_clients_open_connection_is_refused_after_the_crls_reload() {
    need("curl", "curl");
    let dir = ScratchDir::new("mtls-crl-open");
    let mut pki = TestPki::new();
    let ca = dir.write("ca.pem", &pki.ca_pem());
    let server = dir.cert("server", &pki.server(&["localhost"]));
    // Both frameworks, and both ways each serves TLS: STRICT (reviews:
    // actix-web's own listener with `actix_on_connect`) and PERMISSIVE
    // (reviews: `palisade_mtls::actix::server`); over HTTP/1.1, and over
    // HTTP/2 where the server can close a connection with a GOAWAY
    // (`palisade_mtls::axum::serve`).
    for (example, mode, h2) in [
        ("details", "STRICT", false),
        ("reviews", "STRICT", false),
        ("details", "PERMISSIVE", false),
        ("reviews", "PERMISSIVE", false),
        ("details", "STRICT", true),
    ] {
        let policy = dir.write(
            &format!("{mode}.yaml"),
            &format!(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: mesh}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
            ),
        );
        let name = format!("{example} {mode}{}", if h2 { " HTTP/2" } else { "" });
        let victim = pki.workload("default", "victim");
        let victim_files = dir.cert("victim", &victim);
        let other = dir.cert("other", &pki.workload("default", "other"));
        let crl = dir.write("crl.pem", &pki.crl_pem());
        let svc = start(
            example,
            &mtls_args(&["--config", &policy, "--client-crl", &crl], &server, &ca),
        );
        let url = format!("https://localhost:{}/whoami", svc.port);
        let tls = |files: &(String, String)| {
            palisade::mtls::ClientTls::builder(&files.0, &files.1, &ca)
                .build()
                .unwrap()
        };
        // One client, one kept-alive connection.
        let open = if h2 {
            let mut config = (*tls(&victim_files).client_config()).clone();
            config.alpn_protocols = vec![b"h2".to_vec()];
            reqwest::Client::builder()
                .use_preconfigured_tls(config)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap()
        } else {
            client(&tls(&victim_files), false)
        };
        let res = open.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 200, "{name}: before revocation");
        let version = if h2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(res.version(), version, "{name}");
        let who: Value = res.json().await.unwrap();
        assert_eq!(
            who["peer"]["principal"], "cluster.local/ns/default/sa/victim",
            "{name}"
        );
        pki.revoke(&victim);
        dir.write("crl.pem", &pki.crl_pem());
        // Once the watch has reloaded it, a new connection is refused.
        let mut reloaded = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (code, status, _) = curl(svc.port, "/healthz", &ca, Some(&victim_files), &[]);
            if code != 0 && status == 0 {
                reloaded = true;
                break;
            }
        }
        assert!(reloaded, "{name}: the CRL was never reloaded");
        // The connection made before: its requests are refused now.
        let res = open
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: not the open connection (a new one was refused): {e}"));
        assert_eq!(res.status(), 403, "{name}");
        let problem: Value = res.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("no longer trusted")),
            "{name}: {problem}"
        );
        // And closed once that answer is sent (`Connection: close`; on
        // HTTP/2 a GOAWAY), so a client connects again (with a renewed
        // certificate, say) rather than be refused on it as long as it
        // keeps it: the next request's new connection fails its
        // handshake with this certificate.
        let next = open.get(&url).send().await;
        assert!(
            next.is_err(),
            "{name}: the refused connection was kept: {:?}",
            next.map(|r| r.status())
        );
        // Another client is served.
        let res = client(&tls(&other), false).get(&url).send().await.unwrap();
        assert_eq!(res.status(), 200, "{name}: another client");
    }
}

fn client(tls: &palisade::mtls::ClientTls, fresh_connections: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls((*tls.client_config()).clone())
        .timeout(Duration::from_secs(10));
    if fresh_connections {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn the_client_side_checks_the_servers_spiffe_id() {
    let dir = ScratchDir::new("mtls-client");
    let pki = TestPki::new();
    let ca = dir.write("ca.pem", &pki.ca_pem());
    // The server presents its workload certificate: a SPIFFE ID, no DNS name.
    let details = dir.cert("details", &pki.workload("default", "details"));
    let me = dir.cert("productpage", &pki.workload("default", "productpage"));
    let policy = dir.write(
        "policy.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict}\nspec: {mtls: {mode: STRICT}}\n",
    );
    for name in ["details", "reviews"] {
        let svc = start(name, &mtls_args(&["--config", &policy], &details, &ca));
        let url = format!("https://localhost:{}/whoami", svc.port);
        let right = palisade::mtls::ClientTls::builder(&me.0, &me.1, &ca)
            .expect_subject_alt_name("spiffe://cluster.local/ns/default/sa/details")
            .build()
            .unwrap();
        let res = client(&right, false).get(&url).send().await.unwrap();
        assert_eq!(res.status(), 200, "{name}");
        let who: Value = res.json().await.unwrap();
        assert_eq!(
            who["peer"]["principal"], "cluster.local/ns/default/sa/productpage",
            "{name}: the server saw our identity"
        );
        let wrong = palisade::mtls::ClientTls::builder(&me.0, &me.1, &ca)
            .expect_subject_alt_name("spiffe://cluster.local/ns/default/sa/ratings")
            .build()
            .unwrap();
        assert!(
            client(&wrong, false).get(&url).send().await.is_err(),
            "{name}: accepted the wrong server identity"
        );
        let by_host = palisade::mtls::ClientTls::builder(&me.0, &me.1, &ca)
            .build()
            .unwrap();
        assert!(
            client(&by_host, false).get(&url).send().await.is_err(),
            "{name}: `localhost` is not in a workload certificate"
        );
    }
}

#[tokio::test]
async fn rotating_the_server_certificate_and_trust_bundle_under_load_fails_no_request() {
    let dir = ScratchDir::new("mtls-rotate");
    let old = TestPki::new();
    let new = TestPki::new();
    let bundle = format!("{}{}", old.ca_pem(), new.ca_pem());
    let client_ca = dir.write("client-ca.pem", &old.ca_pem());
    let trust = dir.write("trust.pem", &bundle);
    let server = dir.cert("server", &old.server(&["localhost"]));
    let me = dir.cert("me", &old.workload("default", "productpage"));
    for name in ["details", "reviews"] {
        dir.cert("server", &old.server(&["localhost"]));
        dir.write("client-ca.pem", &old.ca_pem());
        let svc = start(name, &mtls_args(&[], &server, &client_ca));
        let url = format!("https://localhost:{}/healthz", svc.port);
        let tls = palisade::mtls::ClientTls::builder(&me.0, &me.1, &trust)
            .build()
            .unwrap();
        let c = client(&tls, true);
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut load = Vec::new();
        for _ in 0..4 {
            let (c, url, stop, ok, failed) =
                (c.clone(), url.clone(), stop.clone(), ok.clone(), failed.clone());
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match c.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        // Rotate: a certificate from the new CA, and a bundle trusting both.
        dir.cert("server", &new.server(&["localhost"]));
        dir.write("client-ca.pem", &bundle);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.await.unwrap();
        }
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        assert_eq!(
            failed,
            0,
            "{name}: {failed} of {} requests failed during the rotation",
            ok + failed
        );
        assert!(ok > 20, "{name}: only {ok} requests ran");
        // New handshakes now present the new certificate: a client trusting
        // only the new CA gets through.
        let only_new = dir.write("only-new.pem", &new.ca_pem());
        let tls = palisade::mtls::ClientTls::builder(&me.0, &me.1, &only_new)
            .build()
            .unwrap();
        assert_eq!(
            client(&tls, true).get(&url).send().await.unwrap().status(),
            200,
            "{name}: not rotated"
        );
        // And the new trust bundle admits a client of the new CA.
        let newcomer = dir.cert("newcomer", &new.workload("default", "newcomer"));
        let tls = palisade::mtls::ClientTls::builder(&newcomer.0, &newcomer.1, &only_new)
            .build()
            .unwrap();
        assert_eq!(
            client(&tls, true).get(&url).send().await.unwrap().status(),
            200,
            "{name}: bundle not rotated"
        );
    }
}

#[tokio::test]
async fn a_certificate_bound_token_works_only_over_its_certificate() {
    let dir = ScratchDir::new("mtls-bound");
    let pki = TestPki::new();
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let ca = dir.write("ca.pem", &pki.ca_pem());
    let server = dir.cert("server", &pki.server(&["localhost"]));
    let owner_cert = pki.workload("default", "productpage");
    let owner = dir.cert("owner", &owner_cert);
    let thief = dir.cert("thief", &pki.workload("default", "ratings"));
    let policy = dir.write(
        "policy.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  jwtRules: [{{issuer: {}, jwksUri: {}, audiences: [details, reviews]}}]\n",
            issuer.issuer(),
            issuer.jwks_uri()
        ),
    );
    let hex = owner_cert.sha256_fingerprint();
    let digest: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let x5t = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, digest);
    let token = issuer
        .token()
        .subject("alice")
        .claim("cnf", serde_json::json!({"x5t#S256": x5t}))
        .sign();
    let bearer = format!("authorization: Bearer {token}");
    for name in ["details", "reviews"] {
        let svc = start(name, &mtls_args(&["--config", &policy], &server, &ca));
        let (_, status, body) = curl(svc.port, "/whoami", &ca, Some(&owner), &["-H", &bearer]);
        assert_eq!(status, 200, "{name}: {body}");
        let who: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(who["methods"], serde_json::json!(["jwt", "mtls"]), "{name}");
        assert_eq!(who["subject"], "alice");
        let (_, status, _) = curl(svc.port, "/whoami", &ca, Some(&thief), &["-H", &bearer]);
        assert_eq!(
            status, 401,
            "{name}: a stolen bound token was accepted over another certificate"
        );
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "--cacert",
                &ca,
                "--cert",
                &thief.0,
                "--key",
                &thief.1,
                "-H",
                &bearer,
            ])
            .arg(format!("https://localhost:{}/whoami", svc.port))
            .output()
            .unwrap();
        let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(
            headers.contains("the token is bound to another client certificate"),
            "{name}: {headers}"
        );
    }
}

/// `curl` with `args`: (HTTP status, HTTP version as curl names it, body).
fn curl_version(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code} %{http_version}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", "0 0"));
    let (status, version) = tail.split_once(' ').unwrap_or(("0", "0"));
    (status.parse().unwrap_or(0), version.to_owned(), body.to_owned())
}

#[test]
fn every_mode_answers_http2_by_alpn_and_h2c_with_prior_knowledge_on_both_frameworks() {
    need("curl", "curl");
    let dir = ScratchDir::new("mtls-http2");
    let pki = TestPki::new();
    let ca = dir.write("ca.pem", &pki.ca_pem());
    let server = dir.cert("server", &pki.server(&["localhost"]));
    let productpage = dir.cert("productpage", &pki.workload("default", "productpage"));
    for name in ["details", "reviews"] {
        // Plaintext (no TLS at all): h2c with prior knowledge and HTTP/1.1.
        let svc = start(name, &[]);
        let url = format!("http://127.0.0.1:{}/healthz", svc.port);
        for (flag, want) in [("--http2-prior-knowledge", "2"), ("--http1.1", "1.1")] {
            let (status, version, body) = curl_version(&[flag, &url]);
            assert_eq!(
                (status, version.as_str(), body.as_str()),
                (200, want, "ok"),
                "{name} plaintext {flag}"
            );
        }
        drop(svc);
        for mode in ["STRICT", "PERMISSIVE", "DISABLE"] {
            let policy = dir.write(
                &format!("{name}-{mode}.yaml"),
                &format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: {mode}}}}}\n"),
            );
            let svc = start(name, &mtls_args(&["--config", &policy], &server, &ca));
            let url = format!("https://localhost:{}/whoami", svc.port);
            let tls = ["--cacert", &ca, "--cert", &productpage.0, "--key", &productpage.1];
            for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
                let mut args = tls.to_vec();
                args.extend([flag, &url]);
                let (status, version, body) = curl_version(&args);
                assert_eq!(
                    (status, version.as_str()),
                    (200, want),
                    "{name} {mode} {flag}: {body}"
                );
                let who: Value = serde_json::from_str(&body).unwrap();
                let principal = &who["peer"]["principal"];
                if mode == "DISABLE" {
                    assert!(
                        principal.is_null(),
                        "{name} {mode} {flag}: no client certificate is asked for: {who}"
                    );
                } else {
                    assert_eq!(
                        principal, "cluster.local/ns/default/sa/productpage",
                        "{name} {mode} {flag}"
                    );
                }
            }
            if mode == "PERMISSIVE" {
                let plain = format!("http://127.0.0.1:{}/whoami", svc.port);
                let (status, version, body) = curl_version(&["--http2-prior-knowledge", &plain]);
                assert_eq!(
                    (status, version.as_str()),
                    (200, "2"),
                    "{name} PERMISSIVE h2c: {body}"
                );
                assert!(
                    serde_json::from_str::<Value>(&body).unwrap()["peer"].is_null(),
                    "{name}"
                );
            }
        }
    }
}
