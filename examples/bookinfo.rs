//! The whole bookinfo system of the design notes on this machine, from one
//! command (`scripts/bookinfo`, which builds the services first):
//!
//! - the embedded issuer as Keycloak's realm `istio` (public client
//!   `productpage`, users `alice`, a reviewer, and `bob`, who is not);
//! - a test PKI with a SPIFFE identity per workload
//!   (`spiffe://cluster.local/ns/default/sa/<service>`);
//! - `details`, `reviews`, `ratings` and `productpage` as processes, with
//!   STRICT mutual TLS between them and one policy file
//!   (`examples/bookinfo/mesh.yaml`);
//!
//! then prints what to open in a browser and what to paste in a terminal,
//! and runs until Ctrl-C (or until a service stops).
//!
//! ```text
//! cargo build --release --features full --examples
//! target/release/examples/bookinfo [--base-port 9080]
//! ```
//!
//! Ports: details `BASE`, reviews `BASE+1`, productpage `BASE+2`, ratings
//! `BASE+3`, the issuer `BASE+10`.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use palisade::testkit::{TestIssuer, TestPki};

/// The policy file, with the issuer at its default address.
const MESH: &str = include_str!("bookinfo/mesh.yaml");
const DEFAULT_ISSUER: &str = "http://127.0.0.1:9090/realms/istio";

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

/// The running services: stopped and their files removed on drop.
struct System {
    children: Vec<(&'static str, Child)>,
    dir: PathBuf,
}

impl Drop for System {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            // SIGTERM first: they shut down gracefully.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
        }
        // Up to 10 s to finish; then killed.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for (_, child) in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl System {
    /// Starts `name` with `args` and waits for its `listening on` line;
    /// why not, when it cannot be started or stops first.
    fn start(&mut self, name: &'static str, args: &[String]) -> Result<(), String> {
        let exe = sibling(name);
        let mut child = Command::new(&exe)
            .args(args)
            // Warnings and errors only, unless RUST_LOG says otherwise.
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {}: {e} (build the services first: cargo build --release --features full --examples, or run scripts/bookinfo)",
                    exe.display()
                )
            })?;
        let stdout = child.stdout.take();
        self.children.push((name, child));
        let mut lines = std::io::BufReader::new(stdout.ok_or("no stdout")?).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("listening on ") => break,
                Some(Ok(_)) => {}
                _ => return Err(format!("{name} stopped before it was ready (its error is above)")),
            }
        }
        // Keep reading, so that the service never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(())
    }
}

/// An example binary next to this one.
fn sibling(name: &str) -> PathBuf {
    let mut p = std::env::current_exe().unwrap_or_else(|e| fail(&format!("cannot find myself: {e}")));
    p.set_file_name(name);
    p
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", path.display())));
    path.to_string_lossy().into_owned()
}

fn main() {
    let mut base: u16 = 9080;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--base-port" => {
                base = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|b| (1024..65_000).contains(b))
                    .unwrap_or_else(|| fail("--base-port needs a port number from 1024 to 64999"));
            }
            "-h" | "--help" => {
                println!(
                    "usage: bookinfo [--base-port 9080]  (details BASE, reviews +1, productpage +2, ratings +3, issuer +10)"
                );
                return;
            }
            other => fail(&format!("unknown argument `{other}` (see --help)")),
        }
    }
    let port = |offset: u16| base + offset;
    // SIGINT and SIGTERM are caught from here on: one during start-up stops
    // what has started, as one later does.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("cannot start a runtime: {e}")));
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _entered = rt.enter();
        let term = signal(SignalKind::terminate()).unwrap_or_else(|e| fail(&e.to_string()));
        let int = signal(SignalKind::interrupt()).unwrap_or_else(|e| fail(&e.to_string()));
        (term, int)
    };
    let issuer = TestIssuer::builder()
        .realm("istio")
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port(10))))
        .default_audience("bookinfo")
        .public_client("productpage")
        .user("alice", "alice", &["user", "reviewer"])
        .user("bob", "bob", &["user"])
        .start()
        .unwrap_or_else(|e| fail(&format!("cannot start the issuer on 127.0.0.1:{}: {e}", port(10))));
    let dir = std::env::temp_dir().join(format!("palisade-bookinfo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dir.display())));
    let mut system = System {
        children: Vec::new(),
        dir: dir.clone(),
    };
    let pki = TestPki::new();
    let ca = write(&dir, "mesh-ca.pem", &pki.ca_pem());
    let mesh = write(&dir, "mesh.yaml", &MESH.replace(DEFAULT_ISSUER, issuer.issuer()));
    let url = |offset: u16, tls: bool| {
        format!(
            "{}://127.0.0.1:{}",
            if tls { "https" } else { "http" },
            port(offset)
        )
    };
    // Back-ends first, so that every upstream is there when called.
    for (name, offset, upstream) in [
        ("details", 0, None),
        ("ratings", 3, None),
        ("reviews", 1, Some(format!("ratings={}", url(3, true)))),
        (
            "productpage",
            2,
            Some(format!("details={}\u{0}reviews={}", url(0, true), url(1, true))),
        ),
    ] {
        let cert = pki.workload("default", name);
        let mut args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{}", port(offset)),
            "--config".to_owned(),
            mesh.clone(),
            "--tls-cert".to_owned(),
            write(&dir, &format!("{name}.crt"), &cert.cert_pem()),
            "--tls-key".to_owned(),
            write(&dir, &format!("{name}.key"), &cert.key_pem()),
            "--client-ca".to_owned(),
            ca.clone(),
        ];
        for u in upstream.iter().flat_map(|u| u.split('\u{0}')) {
            args.extend(["--upstream".to_owned(), u.to_owned()]);
        }
        if let Err(e) = system.start(name, &args) {
            drop(system);
            fail(&e);
        }
    }
    let token = issuer.token_endpoint();
    println!(
        "bookinfo is running (Ctrl-C stops it):
  issuer (Keycloak realm `istio`)  {iss}
  details      {details}   axum, STRICT mTLS
  reviews      {reviews}   actix-web, STRICT mTLS, calls ratings
  ratings      {ratings}   tonic (gRPC), STRICT mTLS
  productpage  {pp}    axum, browsers in plaintext, calls details and reviews
  policy file  {mesh}

Open {pp}/productpage in a browser and sign in as alice (password alice,
a reviewer) or bob (password bob, who may not read reviews).

Or in a terminal:
  TOKEN=$(curl -s -d grant_type=password -d client_id=productpage -d username=alice -d password=alice {token} | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')
  curl -s -H \"Authorization: Bearer $TOKEN\" {pp}/api/v1/products/0
  curl -s -H \"Authorization: Bearer $TOKEN\" {pp}/upstreams/whoami
bookinfo ready",
        iss = issuer.issuer(),
        details = url(0, true),
        reviews = url(1, true),
        ratings = url(3, true),
        pp = url(2, false),
    );
    let stopped = rt.block_on(wait(&mut system, signals));
    drop(system);
    if stopped {
        std::process::exit(1);
    }
}

/// Until SIGINT or SIGTERM (`false`), or until a service stops (`true`).
async fn wait(
    system: &mut System,
    (mut term, mut int): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
) -> bool {
    loop {
        tokio::select! {
            _ = term.recv() => return false,
            _ = int.recv() => return false,
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                for (name, child) in &mut system.children {
                    if let Ok(Some(status)) = child.try_wait() {
                        eprintln!("error: {name} stopped ({status}); stopping the others");
                        return true;
                    }
                }
            }
        }
    }
}
