//! Resident memory of each example service under minutes of distinct
//! credentials: every cache Palisade keeps must be bounded, so a process
//! that has seen a million tokens holds what one that has seen ten
//! thousand holds. Method and results: `README.md` ("Memory under distinct
//! credentials").
//!
//! ```sh
//! cargo bench -p palisade-benches --bench memory                   # 300 s per service
//! cargo bench -p palisade-benches --bench memory -- --seconds 60 details
//! ```
//!
//! For each service (details, reviews, productpage, ratings), one release
//! binary of the example is started with a policy file that trusts an
//! in-process issuer (ES256, discovery and JWKS on loopback) and, for the
//! HTTP services, signs browsers in with it. Sixteen clients then send, in
//! turn: a valid token never sent before (a new subject and `jti`, signed
//! per request), a token naming a `kid` never seen before, a bearer that is
//! no JWT, a session cookie that was never issued, and (HTTP services) a
//! whole browser sign-in followed by a request with its new session
//! cookie. Every answer's status is checked. The process's `VmRSS` is read
//! every 5 s; the service passes when its resident memory in the second
//! half of the run grows by less than 5 % (or 4 MiB, whichever is more)
//! over its value at half time. The bench exits 1 when a service does not
//! pass or answers a request other than expected.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade::testkit::{SigningAlgorithm, TestIssuer};

const SERVICES: [&str; 4] = ["details", "reviews", "productpage", "ratings"];
const CLIENTS: usize = 16;
const SAMPLE: Duration = Duration::from_secs(5);
/// A session key, as a key file holds it (hex).
const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn main() {
    let (seconds, services) = arguments();
    build(&services);
    let mut failed = false;
    let mut rows = Vec::new();
    for service in &services {
        let run = measure(service, Duration::from_secs(seconds));
        failed |= !run.passed() || run.unexpected > 0;
        rows.push(run.row());
    }
    println!(
        "\n| service | seconds | requests | of them sign-ins | RSS at 60 s | at half time | at the end | highest | verdict |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    if failed {
        eprintln!("error: a service's memory grew, or it answered a request other than expected (above)");
        std::process::exit(1);
    }
}

/// `--seconds N` and service names; `cargo bench` adds `--bench`.
fn arguments() -> (u64, Vec<String>) {
    let mut seconds = 300;
    let mut services = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&s| s >= 20)
                    .unwrap_or_else(|| usage("--seconds takes a number of seconds, at least 20"));
            }
            s if SERVICES.contains(&s) => services.push(s.to_owned()),
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    if services.is_empty() {
        services = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    }
    (seconds, services)
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "error: {problem}\nusage: cargo bench -p palisade-benches --bench memory -- [--seconds N] [details|reviews|productpage|ratings]..."
    );
    std::process::exit(2);
}

/// The release binaries of the examples, built now (a bench runs in the
/// release profile, so they land next to it).
fn build(services: &[String]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--all-features"]);
    for s in services {
        cmd.args(["--example", s]);
    }
    // The bench runs from the benches package; the examples are the root's.
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    println!("building the examples: {cmd:?}");
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building the examples failed");
}

fn example(name: &str) -> PathBuf {
    let mut p = std::env::current_exe().expect("the bench's path");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("examples").join(name)
}

/// The kinds of request a client sends, in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    NewToken,
    UnknownKid,
    NotAJwt,
    ForgedSession,
    SignIn,
}

const HTTP_TURNS: [Kind; 8] = [
    Kind::NewToken,
    Kind::UnknownKid,
    Kind::NewToken,
    Kind::NotAJwt,
    Kind::NewToken,
    Kind::ForgedSession,
    Kind::NewToken,
    Kind::SignIn,
];
const GRPC_TURNS: [Kind; 4] = [Kind::NewToken, Kind::UnknownKid, Kind::NewToken, Kind::NotAJwt];

struct Run {
    service: String,
    seconds: u64,
    requests: u64,
    sign_ins: u64,
    unexpected: u64,
    /// (seconds since the start, VmRSS in KiB)
    samples: Vec<(u64, u64)>,
}

impl Run {
    fn at(&self, t: u64) -> u64 {
        self.samples
            .iter()
            .rev()
            .find(|(s, _)| *s <= t)
            .map_or(0, |(_, kib)| *kib)
    }

    fn half(&self) -> u64 {
        self.at(self.seconds / 2)
    }

    fn end(&self) -> u64 {
        self.samples.last().map_or(0, |(_, kib)| *kib)
    }

    fn highest_after_half(&self) -> u64 {
        self.samples
            .iter()
            .filter(|(s, _)| *s >= self.seconds / 2)
            .map(|(_, kib)| *kib)
            .max()
            .unwrap_or(0)
    }

    /// Growth in the second half within 5 % or 4 MiB of the half-time RSS.
    fn passed(&self) -> bool {
        let allowed = (self.half() / 20).max(4096);
        self.highest_after_half() <= self.half() + allowed
    }

    fn row(&self) -> String {
        let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
        let highest = self.samples.iter().map(|(_, k)| *k).max().unwrap_or(0);
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.service,
            self.seconds,
            self.requests,
            self.sign_ins,
            mib(self.at(60)),
            mib(self.half()),
            mib(self.end()),
            mib(highest),
            if self.passed() && self.unexpected == 0 {
                "flat".to_owned()
            } else if self.unexpected > 0 {
                format!("{} unexpected answers", self.unexpected)
            } else {
                "GREW".to_owned()
            }
        )
    }
}

struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(service: &str, policy: &std::path::Path) -> Service {
    let mut child = Command::new(example(service))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(policy)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", example(service).display()));
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let addr = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{service} exited before listening"))
            .expect("its output");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_owned();
        }
    };
    // Its later output is drained, so a full pipe never blocks it.
    std::thread::spawn(move || for _ in lines {});
    Service {
        child,
        base: format!("http://{addr}"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn policy(service: &str, issuer: &TestIssuer, key_file: &std::path::Path) -> String {
    let mut yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: {iss}
    audiences: [{service}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: default}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
",
        iss = issuer.issuer()
    );
    if service != "ratings" {
        yaml.push_str(&format!(
            "---
apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {{name: login, namespace: default}}
spec:
  selector: {{matchLabels: {{app: {service}}}}}
  issuer: {iss}
  clientId: {service}
  session:
    keys: [{{id: k1, keyFile: {key}}}]
",
            iss = issuer.issuer(),
            key = key_file.display()
        ));
    }
    yaml
}

fn measure(service: &str, duration: Duration) -> Run {
    let issuer = TestIssuer::builder()
        .algorithm(SigningAlgorithm::Es256)
        .default_audience(service)
        .public_client(service)
        .user("alice", "alice-password", &["reader"])
        .token_lifetime(Duration::from_secs(3600))
        .start()
        .expect("the test issuer starts");
    issuer.sign_in_as(Some("alice"));
    let dir = std::env::temp_dir().join(format!("palisade-memory-{}-{service}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let key_file = dir.join("session.key");
    std::fs::write(&key_file, format!("{KEY_HEX}\n")).expect("the key file");
    let policy_file = dir.join("policy.yaml");
    std::fs::write(&policy_file, policy(service, &issuer, &key_file)).expect("the policy file");
    let svc = start(service, &policy_file);
    let pid = svc.child.id();
    println!(
        "\n{service}: {} for {} s, pid {pid}",
        svc.base,
        duration.as_secs()
    );

    let issuer = Arc::new(issuer);
    let grpc = service == "ratings";
    let counts: Arc<std::sync::Mutex<BTreeMap<(Kind, u16), u64>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let unexpected = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    if !grpc {
        // Sign-in starts once the issuer's discovery document is loaded.
        runtime.block_on(async {
            let http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a client");
            for _ in 0..100 {
                let navigation = http
                    .get(format!("{}/list", svc.base))
                    .header("accept", "text/html")
                    .send()
                    .await;
                if navigation.is_ok_and(|r| r.status() == 302) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{service} does not send a navigation to sign in after 10 s");
        });
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut samples = vec![(0, rss_kib(pid))];
    runtime.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let (issuer, counts, next, unexpected) =
                (issuer.clone(), counts.clone(), next.clone(), unexpected.clone());
            let base = svc.base.clone();
            clients.push(tokio::spawn(async move {
                let mut http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
                if grpc {
                    http = http.http2_prior_knowledge();
                }
                let http = http.build().expect("a client");
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let kind = if grpc {
                        GRPC_TURNS[i as usize % GRPC_TURNS.len()]
                    } else {
                        HTTP_TURNS[i as usize % HTTP_TURNS.len()]
                    };
                    let (status, expected, step) = one(&http, &base, &issuer, kind, i, grpc).await;
                    if status != expected && unexpected.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("{kind:?} #{i}: {step} answered {status}, expected {expected}");
                    }
                    *counts.lock().expect("counts").entry((kind, status)).or_default() += 1;
                }
            }));
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + SAMPLE, SAMPLE);
        while Instant::now() < deadline {
            tick.tick().await;
            let t = started.elapsed().as_secs();
            let kib = rss_kib(pid);
            samples.push((t, kib));
            if t % 30 < 5 {
                println!(
                    "  {t:>4} s: {:>7.1} MiB, {} requests",
                    kib as f64 / 1024.0,
                    next.load(Ordering::Relaxed)
                );
            }
        }
        for c in clients {
            c.await.expect("a client finished");
        }
    });
    samples.push((started.elapsed().as_secs(), rss_kib(pid)));
    drop(svc);
    let _ = std::fs::remove_dir_all(&dir);
    let counts = counts.lock().expect("counts");
    for ((kind, status), n) in counts.iter() {
        println!("  {kind:?} answered {status}: {n}");
    }
    let sign_ins = counts
        .iter()
        .filter(|((k, _), _)| *k == Kind::SignIn)
        .map(|(_, n)| n)
        .sum();
    Run {
        service: service.to_owned(),
        seconds: duration.as_secs(),
        requests: counts.values().sum(),
        sign_ins,
        unexpected: unexpected.load(Ordering::Relaxed),
        samples,
    }
}

/// Sends request `i` of `kind`: the status (for gRPC, the `grpc-status`
/// of a refusal, else the HTTP status), the one expected and the step that
/// answered (a sign-in has several).
async fn one(
    http: &reqwest::Client,
    base: &str,
    issuer: &TestIssuer,
    kind: Kind,
    i: u64,
    grpc: bool,
) -> (u16, u16, &'static str) {
    let (bearer, cookie) = match kind {
        Kind::NewToken => (
            Some(
                issuer
                    .token()
                    .subject(&format!("user-{i}"))
                    .claim("jti", serde_json::json!(format!("memory-{i}")))
                    .sign(),
            ),
            None,
        ),
        Kind::UnknownKid => (
            Some(issuer.token().kid(Some(&format!("unknown-{i}"))).sign()),
            None,
        ),
        Kind::NotAJwt => (Some(format!("not-a-jwt-{i:016x}")), None),
        Kind::ForgedSession => (None, Some(format!("palisade_session={}", forged(i)))),
        Kind::SignIn => return sign_in(http, base, i).await,
    };
    let ok = if grpc { 0 } else { 200 };
    let refused = if grpc { 16 } else { 401 };
    let expected = if kind == Kind::NewToken { ok } else { refused };
    let mut req = if grpc {
        // grpc.health.v1.Health/Check with an empty HealthCheckRequest.
        http.post(format!("{base}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(vec![0u8, 0, 0, 0, 0])
    } else {
        http.get(format!("{base}/whoami"))
            .header("accept", "application/json")
    };
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let Ok(res) = req.send().await else {
        return (0, expected, "the request");
    };
    let status = if grpc {
        // A refusal is trailers-only: grpc-status in the headers. An answer
        // carries it in trailers; a 200 without it in the headers is one.
        res.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(if res.status() == 200 {
                0
            } else {
                res.status().as_u16()
            })
    } else {
        res.status().as_u16()
    };
    let _ = res.bytes().await;
    (status, expected, "the request")
}

/// A session cookie value that no key sealed: base64url text of the
/// length a real one has.
fn forged(i: u64) -> String {
    let mut s = String::with_capacity(300);
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(ALPHABET[(x % 64) as usize] as char);
    }
    s
}

/// A browser's sign-in: the navigation (302 to the issuer, a login-state
/// cookie), the issuer (302 back with a code), the callback (302, the
/// session cookie), then one request with the session: its status, 200
/// expected. A step that answers otherwise is that step's status.
async fn sign_in(http: &reqwest::Client, base: &str, i: u64) -> (u16, u16, &'static str) {
    let nav = |url: String| {
        http.get(url)
            .header("accept", "text/html,application/xhtml+xml")
            .header("sec-fetch-mode", "navigate")
    };
    let status = |res: &reqwest::Response| res.status().as_u16();
    let Ok(first) = nav(format!("{base}/list?tab={i}")).send().await else {
        return (0, 200, "the navigation");
    };
    let (Some(to_issuer), 302) = (location(&first), status(&first)) else {
        return (status(&first), 200, "the navigation");
    };
    let login_state = cookies(&first);
    let Ok(at_issuer) = nav(to_issuer).send().await else {
        return (0, 200, "the issuer");
    };
    let Some(callback) = location(&at_issuer) else {
        return (status(&at_issuer), 200, "the issuer");
    };
    let Ok(back) = nav(callback).header("cookie", login_state).send().await else {
        return (0, 200, "the callback");
    };
    let session = cookies(&back);
    if status(&back) != 302 || !session.contains("palisade_session=") {
        return (status(&back), 200, "the callback");
    }
    let Ok(res) = http
        .get(format!("{base}/whoami"))
        .header("accept", "application/json")
        .header("cookie", session)
        .send()
        .await
    else {
        return (0, 200, "the session's request");
    };
    let answer = status(&res);
    let _ = res.bytes().await;
    (answer, 200, "the session's request")
}

/// The `name=value` pairs a response sets, as a `Cookie` header.
fn cookies(res: &reqwest::Response) -> String {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next())
        .filter(|pair| pair.split_once('=').is_some_and(|(_, v)| !v.is_empty()))
        .collect::<Vec<_>>()
        .join("; ")
}

fn location(res: &reqwest::Response) -> Option<String> {
    res.headers().get("location")?.to_str().ok().map(str::to_owned)
}
