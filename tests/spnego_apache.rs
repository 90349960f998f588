//! Palisade's SPNEGO decisions compared with Apache httpd + mod_auth_gssapi,
//! the reference Negotiate implementation, on the same realm and the same
//! requests: a real MIT KDC on loopback (`palisade_testkit::KerberosRealm`),
//! Apache in the foreground (`apache2 -X`) with a generated minimal
//! configuration, the `details` example with `--keytab`, and `curl`.
//!
//! Every request of the set gets an accept (2xx) or refuse (4xx) decision
//! from both. Where the decisions agree the test asserts that; where they
//! differ on purpose, it asserts each side's behaviour and says why (see
//! also docs/spnego.md, "Compared with Apache mod_auth_gssapi").
//!
//! Needs Debian's `apache2` and `libapache2-mod-auth-gssapi`: without them
//! the test fails with one line saying what to install.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use palisade::testkit::KerberosRealm;

mod common;
use common::start_with_env as start;
use serde_json::Value;

const APACHE: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";
/// The modules the generated configuration loads (`log_config` is built
/// into Debian's `apache2`).
const APACHE_MODULES: [(&str, &str); 6] = [
    ("mpm_prefork_module", "mod_mpm_prefork.so"),
    ("authn_core_module", "mod_authn_core.so"),
    ("authz_core_module", "mod_authz_core.so"),
    // `Require valid-user`
    ("authz_user_module", "mod_authz_user.so"),
    ("headers_module", "mod_headers.so"),
    ("auth_gssapi_module", "mod_auth_gssapi.so"),
];
const NTLM: &str = "TlRMTVNTUAABAAAAB4IIAAAAAAAAAAAAAAAAAAAAAAA=";

// ---------------------------------------------------------------- Palisade

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The numeric id `id` prints (`id -u`, `id -g www-data`, …).
fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Fails with one line when `apache2` or a module is missing: no silent skip.
fn require_apache() {
    let missing = std::iter::once(PathBuf::from(APACHE))
        .chain(APACHE_MODULES.iter().map(|(_, f)| Path::new(MODULES).join(f)))
        .find(|p| !p.is_file());
    if let Some(p) = missing {
        panic!(
            "{} is missing: apt-get install apache2 libapache2-mod-auth-gssapi",
            p.display()
        );
    }
}

/// Apache httpd with mod_auth_gssapi in the foreground (`-X`: one process,
/// no detaching), killed and its directory removed on drop.
struct Apache {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Apache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Apache {
    /// What Apache wrote to stderr (configuration errors) and its error log.
    fn error_log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        read("stderr.log") + &read("error.log")
    }

    /// Starts Apache on a free loopback port, accepting with a copy of
    /// `keytab`. `env` is the realm's server environment (`KRB5_CONFIG`,
    /// `KRB5RCACHEDIR`); `KRB5_KTNAME` is set to the copy.
    fn start(keytab: &Path, env: &[(String, String)]) -> Apache {
        require_apache();
        let dir = std::env::temp_dir().join(format!(
            "palisade-apache-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        for sub in ["", "run", "htdocs"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // The resource: a static file; the authenticated user comes back in
        // a response header (mod_headers evaluates REMOTE_USER, which
        // mod_auth_gssapi sets to the client principal).
        std::fs::write(dir.join("htdocs/whoami"), "ok\n").unwrap();
        std::fs::set_permissions(dir.join("htdocs/whoami"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let kt = dir.join("http.keytab");
        std::fs::copy(keytab, &kt).unwrap();
        std::fs::set_permissions(&kt, std::fs::Permissions::from_mode(0o400)).unwrap();

        // Apache refuses to serve as root: as root, the worker drops to
        // www-data (nobody when there is none), which must read the
        // keytab copy and write the realm's replay cache directory (MIT
        // names the file after the euid, so Palisade's cache, root's, stays
        // a separate file) and read the realm's krb5.conf.
        let mut user = String::new();
        if id(&["-u"]) == Some(0) {
            let (uid, gid) = match (id(&["-u", "www-data"]), id(&["-g", "www-data"])) {
                (Some(u), Some(g)) => (u, g),
                _ => (65534, 65534),
            };
            user = format!("User #{uid}\nGroup #{gid}\n");
            std::os::unix::fs::chown(&kt, Some(uid), Some(gid)).unwrap();
            let var = |name: &str| {
                env.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| PathBuf::from(v))
                    .unwrap_or_else(|| panic!("{name} is not in the server environment"))
            };
            let rcache = var("KRB5RCACHEDIR");
            std::os::unix::fs::chown(&rcache, Some(uid), Some(gid)).unwrap();
            let conf = var("KRB5_CONFIG");
            if let Some(d) = conf.parent() {
                let mode = std::fs::metadata(d).unwrap().permissions().mode();
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011)).unwrap();
            }
            let mode = std::fs::metadata(&conf).unwrap().permissions().mode();
            std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(mode | 0o044)).unwrap();
        }

        let port = free_port();
        let d = dir.display();
        let modules: String = APACHE_MODULES
            .iter()
            .map(|(name, file)| format!("LoadModule {name} {MODULES}/{file}\n"))
            .collect();
        let conf = format!(
            r#"ServerRoot "{d}"
ServerName localhost
PidFile "{d}/run/httpd.pid"
DefaultRuntimeDir "{d}/run"
Mutex file:{d}/run default
ErrorLog "{d}/error.log"
LogLevel info auth_gssapi:debug
LogFormat "%h %u \"%r\" %>s" brief
CustomLog "{d}/access.log" brief
Listen 127.0.0.1:{port}
{modules}{user}DocumentRoot "{d}/htdocs"
<Location />
    AuthType GSSAPI
    AuthName "GSSAPI"
    GssapiCredStore keytab:{kt}
    GssapiAllowedMech krb5
    GssapiBasicAuth Off
    Require valid-user
    Header set X-Remote-User "expr=%{{REMOTE_USER}}"
</Location>
"#,
            kt = kt.display(),
        );
        let conf_path = dir.join("httpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();

        let child = Command::new(APACHE)
            .arg("-X")
            .arg("-d")
            .arg(&dir)
            .arg("-f")
            .arg(&conf_path)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(
                env.iter()
                    .filter(|(k, _)| k != "KRB5_KTNAME")
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env("KRB5_KTNAME", format!("FILE:{}", kt.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {APACHE}: {e}"));
        let mut apache = Apache { child, dir, port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = apache.child.try_wait() {
                panic!(
                    "apache2 exited ({status}) before listening:\n{}",
                    apache.error_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "apache2 did not listen within 10 s:\n{}",
                apache.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        apache
    }
}

// ------------------------------------------------------------------ curl

struct Reply {
    status: u16,
    /// The headers of the last response, as sent.
    headers: String,
    body: String,
    /// curl's `-v` log.
    log: String,
}

impl Reply {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .collect()
    }

    /// `WWW-Authenticate: Negotiate` (bare, or with a mutual token).
    fn negotiate(&self) -> Option<&str> {
        self.header("www-authenticate").into_iter().find(|v| {
            v.split(' ')
                .next()
                .is_some_and(|s| s.eq_ignore_ascii_case("negotiate"))
        })
    }
}

fn curl(args: &[&str], env: &[(String, String)]) -> Reply {
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "-D", "-", "-w", "\n%{http_code}"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    // With -D - the headers of every response come first; the body after the last blank line.
    let (headers, body) = rest.rsplit_once("\r\n\r\n").unwrap_or((rest, ""));
    let last = headers.rsplit("HTTP/1.1 ").next().unwrap_or("");
    Reply {
        status: status.trim().parse().unwrap_or(0),
        headers: last.to_owned(),
        body: body.to_owned(),
        log: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn sent_token(verbose: &str) -> Option<String> {
    verbose
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("> Authorization: Negotiate "))
        .map(|t| t.trim().to_owned())
}

/// A Negotiate token for `HTTP/localhost` that no acceptor has seen: curl
/// talks to a stub that answers `401 Negotiate` to everything, so the
/// token it sends is never accepted (and never enters a replay cache).
fn fresh_token(client: &[(String, String)]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Not joined: if curl gave up early the thread waits in accept until
    // the test ends.
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let Ok(mut stream) = stream else { return };
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let url = format!("http://localhost:{port}/");
    let reply = curl(&["--negotiate", "-u", ":", &url], client);
    assert_eq!(reply.status, 401, "{}", reply.log);
    sent_token(&reply.log).unwrap_or_else(|| panic!("curl sent no token to the stub:\n{}", reply.log))
}

// ------------------------------------------------------------------ realm

struct Realm {
    realm: KerberosRealm,
    keytab: PathBuf,
    ccache: PathBuf,
}

fn realm() -> Realm {
    let realm = KerberosRealm::start().unwrap_or_else(|e| panic!("{e}"));
    realm.add_user("alice", "alice-password").unwrap();
    let keytab = realm.add_service("HTTP/localhost").unwrap();
    realm.add_service("HTTP/elsewhere").unwrap();
    let ccache = realm.kinit("alice", "alice-password").unwrap();
    Realm {
        realm,
        keytab,
        ccache,
    }
}

// ------------------------------------------------------------- comparison

/// One request's outcome at one server.
struct Outcome {
    status: u16,
    /// `WWW-Authenticate: Negotiate` on the response (a challenge on a
    /// refusal, the mutual-authentication token on an acceptance).
    negotiate: bool,
    /// The authenticated user the server reports.
    user: Option<String>,
    /// `WWW-Authenticate: Bearer …` on the response.
    bearer: bool,
    /// The response body says something about GSSAPI's error.
    leaks: bool,
}

impl Outcome {
    fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn refused(&self) -> bool {
        (400..500).contains(&self.status)
    }

    fn decision(&self) -> String {
        let what = if self.accepted() {
            "accept"
        } else if self.refused() {
            "refuse"
        } else {
            "ERROR"
        };
        let challenge = match (self.negotiate, self.bearer, self.accepted()) {
            (true, _, true) => ", mutual token",
            (true, true, false) => ", Negotiate + Bearer",
            (true, false, false) => ", Negotiate",
            (false, true, false) => ", Bearer",
            _ => "",
        };
        match &self.user {
            Some(u) => format!("{what} {} ({u}{challenge})", self.status),
            None => format!("{what} {}{challenge}", self.status),
        }
    }
}

/// The servers compared: how to build the URL, and the user they report.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Apache,
    Palisade,
}

impl Server {
    fn url(self, host: &str, port: u16) -> String {
        format!("http://{host}:{port}/whoami")
    }

    fn user(self, reply: &Reply) -> Option<String> {
        if !(200..300).contains(&reply.status) {
            return None;
        }
        match self {
            Server::Apache => reply.header("x-remote-user").first().map(|s| (*s).to_owned()),
            Server::Palisade => serde_json::from_str::<Value>(&reply.body)
                .ok()?
                .get("request_principal")?
                .as_str()
                .map(str::to_owned),
        }
    }
}

const CASES: [&str; 10] = [
    "valid ticket (curl --negotiate)",
    "no credentials",
    "raw NTLM token",
    "replayed token",
    "ticket for HTTP/elsewhere",
    "bad base64",
    "valid token + trailing junk",
    "truncated SPNEGO token",
    "Basic alice:password",
    "two Negotiate headers",
];

/// Runs the request set against one server (on `port`) and returns the
/// outcomes in the order of [`CASES`].
fn run_cases(server: Server, port: u16, client: &[(String, String)]) -> Vec<(Outcome, String)> {
    let url = server.url("localhost", port);
    let outcome = |reply: &Reply| Outcome {
        status: reply.status,
        negotiate: reply.negotiate().is_some(),
        user: server.user(reply),
        bearer: reply
            .header("www-authenticate")
            .iter()
            .any(|v| v.to_ascii_lowercase().starts_with("bearer")),
        leaks: ["GSS", "Minor", "krb5", "keytab"]
            .iter()
            .any(|w| reply.body.contains(w)),
    };
    let with = |header: String| curl(&["-H", &header, &url], &[]);
    let mut out = Vec::new();

    // 1. A valid exchange: 401 Negotiate, then the token, then 200.
    let valid = curl(&["--negotiate", "-u", ":", &url], client);
    let used = sent_token(&valid.log).expect("curl logs the token it sent");
    out.push((outcome(&valid), valid.log.clone()));
    // 2. No credentials.
    let none = curl(&[&url], &[]);
    out.push((outcome(&none), none.log));
    // 3. Raw NTLMSSP in a Negotiate header.
    let ntlm = with(format!("Authorization: Negotiate {NTLM}"));
    out.push((outcome(&ntlm), ntlm.log));
    // 4. The token of exchange 1, again.
    let replay = with(format!("Authorization: Negotiate {used}"));
    out.push((outcome(&replay), replay.log));
    // 5. A ticket for HTTP/elsewhere (in the realm, not in the keytab).
    let other = curl(
        &[
            "--negotiate",
            "-u",
            ":",
            "--resolve",
            &format!("elsewhere:{port}:127.0.0.1"),
            &server.url("elsewhere", port),
        ],
        client,
    );
    out.push((outcome(&other), other.log));
    // 6. Not base64 at all.
    let bad = with("Authorization: Negotiate %%%not-base64%%%".to_owned());
    out.push((outcome(&bad), bad.log));
    // 7. A fresh, valid token followed by characters outside the alphabet.
    let junk = with(format!("Authorization: Negotiate {}!!junk", fresh_token(client)));
    out.push((outcome(&junk), junk.log));
    // 8. The first half of a fresh SPNEGO token.
    let whole = STANDARD.decode(fresh_token(client)).unwrap();
    let half = STANDARD.encode(&whole[..whole.len() / 2]);
    let cut = with(format!("Authorization: Negotiate {half}"));
    out.push((outcome(&cut), cut.log));
    // 9. Basic with alice's Kerberos password (GssapiBasicAuth Off).
    let basic = STANDARD.encode("alice:alice-password");
    let basic = with(format!("Authorization: Basic {basic}"));
    out.push((outcome(&basic), basic.log));
    // 10. Two Authorization headers: a fresh, valid token, then another.
    let first = format!("Authorization: Negotiate {}", fresh_token(client));
    let two = curl(&["-H", &first, "-H", "Authorization: Negotiate Zm9v", &url], &[]);
    out.push((outcome(&two), two.log));
    out
}

#[test]
fn palisade_and_apache_mod_auth_gssapi_decide_the_same_requests_alike() {
    require_apache();
    let r = realm();
    let client = r.realm.client_env(&r.ccache);
    let env = r.realm.server_env(&r.keytab);

    let apache = Apache::start(&r.keytab, &env);
    let keytab = r.keytab.to_str().unwrap().to_owned();
    let palisade = start("details", &["--keytab", &keytab], &env);

    let a = run_cases(Server::Apache, apache.port, &client);
    let p = run_cases(Server::Palisade, palisade.port, &client);

    let mut table = format!(
        "{:<31} | {:<45} | {}\n",
        "case", "Apache mod_auth_gssapi", "Palisade"
    );
    for (i, case) in CASES.iter().enumerate() {
        table += &format!("{case:<31} | {:<45} | {}\n", a[i].0.decision(), p[i].0.decision());
    }
    eprintln!("{table}");
    let ctx = |i: usize| {
        format!(
            "{}\n{table}\napache curl log:\n{}\npalisade curl log:\n{}\napache error log:\n{}",
            CASES[i],
            a[i].1,
            p[i].1,
            apache.error_log()
        )
    };

    // 1. Both accept alice, report her full principal and send the
    //    mutual-authentication token on the 200.
    let alice = Some("alice@EXAMPLE.TEST".to_owned());
    assert!(a[0].0.accepted() && p[0].0.accepted(), "{}", ctx(0));
    assert_eq!(a[0].0.user, alice, "{}", ctx(0));
    assert_eq!(p[0].0.user, alice, "{}", ctx(0));
    assert!(a[0].0.negotiate && p[0].0.negotiate, "{}", ctx(0));

    // 2–6, 8, 9: the same refusal, a 401 that asks for Negotiate again
    // and says nothing about why. The reasons differ inside (Apache's
    // error log): NTLM reaches GSSAPI in Apache ("an unsupported mechanism
    // was requested") and is refused before it in Palisade; bad base64
    // decodes to an empty token in Apache (APR's decoder stops at the
    // first character outside the alphabet), to which SPNEGO answers with
    // a continuation that Apache cannot keep without GssapiConnectionBound
    // or GssapiUseSessions, where Palisade refuses the header itself; a
    // truncated token is malformed for GSSAPI in Apache and for Palisade's
    // token check before GSSAPI; Basic is ignored by both (GssapiBasicAuth
    // Off; no authenticator of the example takes Basic).
    for i in [1, 2, 3, 4, 5, 7, 8] {
        assert_eq!(a[i].0.status, 401, "Apache: {}", ctx(i));
        assert_eq!(p[i].0.status, 401, "Palisade: {}", ctx(i));
        assert!(a[i].0.negotiate, "Apache sent no Negotiate challenge: {}", ctx(i));
        assert!(
            p[i].0.negotiate,
            "Palisade sent no Negotiate challenge: {}",
            ctx(i)
        );
    }
    // The details example also takes JWTs: when the request carries no
    // credential it knows (none, Basic) its 401 offers Bearer next to
    // Negotiate; a refused Negotiate token gets the Negotiate challenge
    // alone, from the authenticator that refused it. Apache offers
    // Negotiate alone every time (GssapiBasicAuth Off).
    for i in [1, 2, 3, 4, 5, 7, 8] {
        assert!(!a[i].0.bearer, "Apache: {}", ctx(i));
        assert_eq!(p[i].0.bearer, i == 1 || i == 8, "Palisade: {}", ctx(i));
    }
    for (i, case) in CASES.iter().enumerate() {
        assert!(!a[i].0.leaks, "Apache leaks GSSAPI detail: {case}");
        assert!(!p[i].0.leaks, "Palisade leaks GSSAPI detail: {case}");
    }

    // 7. The first difference: a valid token with trailing characters that
    //    are not base64. Apache decodes with APR's apr_base64_decode, which
    //    stops at the first character outside the alphabet and ignores the
    //    rest, so the token before the junk is accepted. Palisade decodes
    //    strictly (RFC 4648, canonical padding) and refuses a header that
    //    is not exactly one base64 token: no real client sends anything
    //    after its token, and a proxy or filter that reads the header
    //    differently from the server that decides is a parser differential
    //    Palisade does not want to offer.
    assert!(a[6].0.accepted(), "Apache: {}", ctx(6));
    assert_eq!(a[6].0.user, alice, "Apache: {}", ctx(6));
    assert_eq!(p[6].0.status, 401, "Palisade: {}", ctx(6));
    assert!(p[6].0.negotiate, "Palisade: {}", ctx(6));

    // 10. The second difference: two `Authorization: Negotiate` headers
    //    (a fresh valid token, then `Zm9v`). Apache merges repeated
    //    request headers into one comma-separated value; mod_auth_gssapi
    //    takes the first word after the scheme (`<token>,`), APR's decoder
    //    stops at the comma, and the first token is accepted, the second
    //    never looked at. Palisade refuses a request carrying more than one
    //    Negotiate token: which one counts would otherwise depend on the
    //    proxies in between (first, last, merged), and the choice is
    //    exactly what a header-injection attack plays on.
    assert!(a[9].0.accepted(), "Apache: {}", ctx(9));
    assert_eq!(a[9].0.user, alice, "Apache: {}", ctx(9));
    assert_eq!(p[9].0.status, 401, "Palisade: {}", ctx(9));
    assert!(p[9].0.negotiate, "Palisade: {}", ctx(9));
}
