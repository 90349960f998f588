//! Throughput of signed-in requests under `wrk`: Palisade's browser sign-in
//! (axum, `PalisadeLayer` with `SignIn`, the sealed-cookie session) against
//! Apache httpd with mod_auth_openidc (the reference relying party:
//! prefork, keep-alive, `OIDCSessionType server-cache`), with the floor of
//! each: the same axum app without authentication, and the same Apache
//! serving its public page (no `AuthType`). Each server signs alice in at
//! the same testkit issuer first; then every request is `GET /whoami` with
//! that server's session cookie, answered `ok`.
//!
//! The servers run on `SERVER_CPUS` (default CPU 0: this process pins
//! itself before any thread starts, and Apache inherits it), `wrk` on
//! `WRK_CPUS` (default 1), `ROUNDS` rounds (5) of `DURATION` seconds (5)
//! with `CONNECTIONS` (16) connections, the order of the servers rotating
//! between rounds. A wrk script counts answers other than 200, which fail
//! the run (a lost session would otherwise pass as 302s). Needs `wrk`,
//! `taskset`, Debian's `apache2` and `libapache2-mod-auth-openidc`.
//!
//! ```sh
//! cargo bench -p palisade-benches --bench signin_wrk
//! ROUNDS=8 DURATION=10 cargo bench -p palisade-benches --bench signin_wrk
//! ```
//!
//! Results and the machine: benches/README.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use palisade::axum::{ConnectAddrs, PalisadeLayer};
use palisade::signin::SignIn;
use palisade::signin::cookie::CookieKey;
use palisade::testkit::TestIssuer;
use palisade::testkit::apache::ApacheOpenidc;

const CLIENT: &str = "bench";
const USER_AGENT: &str = "palisade-signin-wrk";
const NAVIGATION: &str = "text/html,application/xhtml+xml";
/// Counts answers other than 200 across wrk's threads and prints them.
const WRK_SCRIPT: &str = r#"local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body) if status ~= 200 then bad = bad + 1 end end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("bad") end
  io.write(string.format("non-200: %d\n", n))
end
"#;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn number(name: &str, default: u64) -> u64 {
    setting(name, &default.to_string())
        .parse()
        .unwrap_or_else(|_| panic!("{name} must be a whole number"))
}

fn require(command: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {command}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{command}` is missing: install it with `sudo apt-get install {package}`"
    );
}

/// A browser's cookies for one server, by name.
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, res: &reqwest::Response) {
        for v in res.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (name, value) = v.split(';').next().unwrap().split_once('=').unwrap();
            let lower = v.to_ascii_lowercase();
            if value.is_empty() || lower.contains("max-age=0") || lower.contains("01 jan 1970") {
                self.0.remove(name.trim());
            } else {
                self.0.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

async fn fetch(client: &reqwest::Client, url: &str, jar: &Jar) -> reqwest::Response {
    let mut req = client
        .get(url)
        .header("accept", NAVIGATION)
        .header("user-agent", USER_AGENT);
    if !jar.0.is_empty() {
        req = req.header("cookie", jar.header());
    }
    req.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn location(res: &reqwest::Response) -> String {
    assert_eq!(res.status(), 302, "{}: {res:?}", res.url());
    res.headers()["location"].to_str().unwrap().to_owned()
}

/// Signs alice in at `base` (the issuer signs her in without a page) and
/// answers the `Cookie` header of her session there, checked to work.
async fn sign_in(client: &reqwest::Client, base: &str) -> String {
    let mut jar = Jar::default();
    let start = fetch(client, &format!("{base}/whoami"), &jar).await;
    jar.take(&start);
    let at_issuer = fetch(client, &location(&start), &Jar::default()).await;
    let callback = location(&at_issuer);
    let callback = if callback.starts_with('/') {
        format!("{base}{callback}")
    } else {
        callback
    };
    let back = fetch(client, &callback, &jar).await;
    location(&back);
    jar.take(&back);
    let cookie = jar.header();
    let check = fetch(client, &format!("{base}/whoami"), &jar).await;
    assert_eq!(check.status(), 200, "{base}: the session works: {check:?}");
    cookie
}

/// Serves `GET /whoami` (`ok`) on a free port, guarded by `sign_in` or not.
async fn serve(sign_in: Option<SignIn>) -> String {
    let router = axum::Router::new().route("/whoami", axum::routing::get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    match sign_in {
        Some(s) => {
            let guard = palisade::prelude::Guard::builder()
                .authenticator(s)
                .build()
                .unwrap();
            let app = PalisadeLayer::new(guard).wrap(router);
            tokio::spawn(async move {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<ConnectAddrs>(),
                )
                .await
                .unwrap();
            });
        }
        None => {
            tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        }
    }
    format!("http://{addr}")
}

/// One wrk run: requests per second, and wrk's socket errors line
/// (`connect 0, read 0, write 0, timeout 1`) when it printed one.
fn wrk(url: &str, cookie: &str, script: &std::path::Path) -> (f64, Option<String>) {
    let (cpus, duration, connections) = (
        setting("WRK_CPUS", "1"),
        number("DURATION", 5),
        number("CONNECTIONS", 16),
    );
    let out = Command::new("taskset")
        .args(["-c", &cpus, "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{duration}s"))
        .arg("-s")
        .arg(script)
        .args(["-H", &format!("Cookie: {cookie}")])
        .args(["-H", &format!("User-Agent: {USER_AGENT}")])
        .args(["-H", &format!("Accept: {NAVIGATION}")])
        .arg(url)
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no `{name}` in wrk's output:\n{text}"))
            .trim()
            .to_owned()
    };
    assert_eq!(field("non-200:"), "0", "{url}: answers other than 200:\n{text}");
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|e| e.trim().to_owned());
    (field("Requests/sec:").parse().unwrap(), errors)
}

fn main() {
    // Criterion's harness passes `--bench`; nothing here takes arguments.
    require("wrk", "wrk");
    require("taskset", "util-linux");
    ApacheOpenidc::check_installed().unwrap_or_else(|e| panic!("{e}"));
    // Pin before any thread starts: the runtime's, the issuer's and
    // Apache's processes inherit it.
    let server_cpus = setting("SERVER_CPUS", "0");
    let pinned = Command::new("taskset")
        .args(["-pc", &server_cpus, &std::process::id().to_string()])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(pinned, "cannot pin the servers to CPUs {server_cpus}");

    let issuer = TestIssuer::builder()
        .default_audience(CLIENT)
        .public_client(CLIENT)
        .user("alice", "alice-password", &["reader"])
        .token_lifetime(Duration::from_secs(3600))
        .start()
        .unwrap();
    issuer.sign_in_as(Some("alice"));
    let connections = number("CONNECTIONS", 16);
    let apache = ApacheOpenidc::builder(
        &format!("{}/.well-known/openid-configuration", issuer.issuer()),
        CLIENT,
    )
    .log_level("warn")
    .concurrent(usize::try_from(connections).unwrap())
    .start()
    .unwrap_or_else(|e| panic!("{e}"));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let relying_party = SignIn::builder(issuer.issuer(), CLIENT)
        .keys(vec![CookieKey::new("k1", &[7u8; 32]).unwrap()])
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (palisade, floor, cookies) = rt.block_on(async {
        let palisade = serve(Some(relying_party)).await;
        let floor = serve(None).await;
        // Discovery loads in the background: wait for the first redirect.
        for _ in 0..100 {
            if fetch(&client, &format!("{palisade}/whoami"), &Jar::default())
                .await
                .status()
                == 302
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let apache_cookie = sign_in(&client, &apache.url()).await;
        let palisade_cookie = sign_in(&client, &palisade).await;
        (palisade, floor, [apache_cookie, palisade_cookie])
    });
    let servers = [
        (
            "Apache + mod_auth_openidc",
            format!("{}/whoami", apache.url()),
            cookies[0].clone(),
        ),
        (
            "Palisade (axum)",
            format!("{palisade}/whoami"),
            cookies[1].clone(),
        ),
        (
            "axum without authentication",
            format!("{floor}/whoami"),
            cookies[1].clone(),
        ),
        (
            "Apache without authentication (its public page)",
            apache.logged_out_url(),
            cookies[0].clone(),
        ),
    ];
    let script = std::env::temp_dir().join(format!("palisade-signin-wrk-{}.lua", std::process::id()));
    std::fs::write(&script, WRK_SCRIPT).unwrap();
    let rounds = number("ROUNDS", 5);
    let mut rates = vec![Vec::new(); servers.len()];
    for round in 0..rounds {
        for k in 0..servers.len() {
            let i = (k + usize::try_from(round).unwrap()) % servers.len();
            let (name, url, cookie) = &servers[i];
            let (rate, errors) = wrk(url, cookie, &script);
            let errors = errors
                .map(|e| format!(" (socket errors: {e})"))
                .unwrap_or_default();
            eprintln!("round {}: {name}: {rate:.0} requests/s{errors}", round + 1);
            rates[i].push(rate);
        }
    }
    let _ = std::fs::remove_file(&script);
    let sum = |i: usize| rates[i].iter().sum::<f64>();
    let mut table =
        String::from("| server | requests/s per round | mean | ratio to Apache |\n|---|---|---:|---:|\n");
    for (i, (name, _, _)) in servers.iter().enumerate() {
        let each: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
        let _ = writeln!(
            table,
            "| {name} | {} | {:.0} | {:.3}× |",
            each.join(", "),
            sum(i) / rates[i].len() as f64,
            sum(i) / sum(0)
        );
    }
    println!("{table}");
    println!(
        "Palisade / Apache + mod_auth_openidc: {:.3}×; each over its own floor: Palisade {:.3}×, mod_auth_openidc {:.3}×",
        sum(1) / sum(0),
        sum(1) / sum(2),
        sum(0) / sum(3)
    );
}
