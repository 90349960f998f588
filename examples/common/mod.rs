//! What the example services share: arguments, policy loading, the demo
//! issuer and the framework-free bodies of their routes (docs/examples.md).

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    reason = "shared by several examples, each using a part"
)]

use std::net::SocketAddr;
use std::path::PathBuf;

use palisade::core::authn::RequestHead;
use palisade::core::authz::{CheckRequest, ExternalAuthorizers, ExternalDecision};
use palisade::core::policy::{PolicyError, PolicySet, Workload, WorkloadPolicy};
use palisade::mtls::ServerTls;
use palisade::prelude::Guard;
use palisade::testkit::TestIssuer;

/// The command line of every example.
#[derive(Clone)]
pub struct Args {
    pub listen: SocketAddr,
    pub config: Option<PathBuf>,
    pub service: String,
    pub namespace: String,
    pub keytab: Option<PathBuf>,
    /// A back-end to call on the user's behalf (`GET /backend/whoami`).
    pub backend: Option<String>,
    /// JWT users for S4U (`palisade::client::S4uUsers`): `--s4u-realm` and
    /// `--s4u-claim` name them `<claim>@<realm>`; `--s4u-issuer` (default in
    /// demo mode: the demo issuer) is the only issuer whose users map.
    pub s4u_realm: Option<String>,
    pub s4u_claim: Option<String>,
    pub s4u_issuer: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub client_crls: Vec<PathBuf>,
    /// `--no-guard`, for benchmarking only: the same routes without Palisade.
    pub no_guard: bool,
    /// `--floor`, for benchmarking only: the same routes without Palisade,
    /// behind a floor instead (`floor.rs`: the token's header removed, a
    /// record of the caller inserted, nothing checked). Sets `no_guard`.
    pub floor: bool,
    /// `--upstream NAME=URL` (productpage, reviews): the back-ends it calls.
    pub upstreams: Vec<(String, String)>,
    /// `--upstream-timeout SECONDS`: how long an upstream has to answer.
    pub upstream_timeout: std::time::Duration,
    /// `--admin ADDR`: `/metrics` and `/ready`, without authentication.
    pub admin: Option<SocketAddr>,
    /// `--ready-waits-for-keys`: `/ready` answers 503 until every issuer's
    /// keys (and a sign-in's discovery document) have loaded
    /// ([`Guard::waiting_for`]).
    pub ready_waits_for_keys: bool,
    /// `--handshake-timeout`, `--header-read-timeout`, `--idle-timeout`, `--write-timeout`,
    /// `--max-connection-age`, `--body-read-timeout` (seconds), `--body-min-rate` (bytes a second)
    /// and `--body-limit` (bytes): what a client is granted.
    pub limits: palisade::core::limits::ServerLimits,
}

/// Parses the arguments described in docs/examples.md, or exits with one line on stderr.
///
/// With `--keytab`, the Kerberos library must find the keytab in
/// `KRB5_KTNAME`, which it reads from the process environment: when that
/// is not already set to the file (and `KRB5CCNAME` to a `MEMORY:` cache,
/// for S4U's tickets), the program replaces itself (exec, same process id)
/// with a copy that has it, before any thread starts.
pub fn args(service: &str, port: u16) -> Args {
    let args = match parse(service, port, std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => fail(&msg),
    };
    if let Some(keytab) = &args.keytab {
        let path = std::fs::canonicalize(keytab)
            .unwrap_or_else(|e| fail(&format!("--keytab {}: {e}", keytab.display())));
        let want = format!("FILE:{}", path.display());
        let set = |var: &str| std::env::var(var).ok().as_deref() == Some(want.as_str());
        // S4U's tickets in a cache of the process's own: not a shared
        // one's principal, nor the service's ticket left for others.
        let own_cache = std::env::var("KRB5CCNAME").is_ok_and(|c| c.starts_with("MEMORY:"));
        if !set("KRB5_KTNAME") || !set("KRB5_CLIENT_KTNAME") || !own_cache {
            use std::os::unix::process::CommandExt;
            let exe = std::env::current_exe()
                .unwrap_or_else(|e| fail(&format!("cannot re-execute for --keytab: {e}")));
            // The same keytab serves as client keytab for S4U calls to back-ends.
            let err = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("KRB5_KTNAME", &want)
                .env("KRB5_CLIENT_KTNAME", &want)
                .env("KRB5CCNAME", "MEMORY:palisade")
                .exec();
            fail(&format!("cannot re-execute for --keytab: {err}"));
        }
    }
    // `--floor` is announced where the floor is put in place (`warn_floor`).
    if args.no_guard && !args.floor {
        eprintln!("warning: --no-guard: serving without authentication or policy (benchmarking only)");
    }
    args
}

/// Says on stderr that the service runs behind the floor: called where
/// the floor is put in place, so the line shows that it is.
pub fn warn_floor() {
    eprintln!(
        "warning: --floor: serving without authentication or policy, behind a floor that only removes the Authorization header (benchmarking only)"
    );
}

pub fn fail(msg: &str) -> ! {
    // The warnings of a start-up that fails are of a configuration that
    // will not run: the error is said alone.
    drop(
        HELD.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(),
    );
    eprintln!("error: {msg}");
    std::process::exit(2)
}

/// The JWT users a back-end is called for with S4U: `--s4u-realm` and
/// `--s4u-claim` name them, of `--s4u-issuer` or, in demo mode, the demo
/// issuer (with a policy file, `--s4u-issuer` is required: which of its
/// issuers names users as the realm does is the operator's to say).
pub fn s4u_users(args: &Args, setup: &Setup) -> Option<palisade::client::S4uUsers> {
    let (realm, claim) = (args.s4u_realm.as_ref()?, args.s4u_claim.as_ref()?);
    // `parse` refuses --s4u-realm with --config and without --s4u-issuer.
    let issuer = args
        .s4u_issuer
        .clone()
        .or_else(|| setup.demo.as_ref().map(|demo| demo.issuer().to_owned()))?;
    Some(palisade::client::S4uUsers::new(issuer, claim, realm))
}

fn parse(service: &str, port: u16, mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        config: None,
        service: service.to_owned(),
        namespace: "default".to_owned(),
        keytab: None,
        backend: None,
        s4u_realm: None,
        s4u_claim: None,
        s4u_issuer: None,
        tls_cert: None,
        tls_key: None,
        client_ca: None,
        client_crls: Vec::new(),
        no_guard: false,
        floor: false,
        upstreams: Vec::new(),
        upstream_timeout: std::time::Duration::from_secs(5),
        admin: None,
        ready_waits_for_keys: false,
        limits: palisade::core::limits::ServerLimits::default(),
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                args.listen = v
                    .parse()
                    .map_err(|_| format!("--listen {v}: not an address such as 127.0.0.1:9080"))?;
            }
            "--config" => args.config = Some(PathBuf::from(value()?)),
            "--admin" => {
                let v = value()?;
                args.admin = Some(
                    v.parse()
                        .map_err(|_| format!("--admin {v}: not an address such as 127.0.0.1:9090"))?,
                );
            }
            "--service" => args.service = value()?,
            "--namespace" => args.namespace = value()?,
            "--tls-cert" => args.tls_cert = Some(PathBuf::from(value()?)),
            "--tls-key" => args.tls_key = Some(PathBuf::from(value()?)),
            "--client-ca" => args.client_ca = Some(PathBuf::from(value()?)),
            "--client-crl" => args.client_crls.push(PathBuf::from(value()?)),
            "--keytab" => args.keytab = Some(PathBuf::from(value()?)),
            "--backend" => args.backend = Some(value()?),
            "--s4u-realm" => args.s4u_realm = Some(value()?),
            "--s4u-claim" => args.s4u_claim = Some(value()?),
            "--s4u-issuer" => args.s4u_issuer = Some(value()?),
            "--ready-waits-for-keys" => args.ready_waits_for_keys = true,
            "--no-guard" => args.no_guard = true,
            "--floor" => {
                args.no_guard = true;
                args.floor = true;
            }
            "--upstream" => {
                let v = value()?;
                let (name, url) = v
                    .split_once('=')
                    .filter(|(n, u)| !n.is_empty() && (u.starts_with("http://") || u.starts_with("https://")))
                    .ok_or_else(|| {
                        format!(
                            "--upstream {}: write NAME=URL, as details=https://127.0.0.1:9080",
                            palisade::core::syntax::url_without_credentials(&v)
                        )
                    })?;
                if args.upstreams.iter().any(|(n, _)| n == name) {
                    return Err(format!("--upstream {name} is given twice"));
                }
                args.upstreams.push((name.to_owned(), url.to_owned()));
            }
            "--upstream-timeout" => args.upstream_timeout = seconds(&flag, &value()?)?,
            "--handshake-timeout" => args.limits = args.limits.handshake_timeout(seconds(&flag, &value()?)?),
            "--header-read-timeout" => {
                args.limits = args.limits.header_read_timeout(seconds(&flag, &value()?)?);
            }
            "--idle-timeout" => args.limits = args.limits.idle_timeout(seconds(&flag, &value()?)?),
            "--write-timeout" => args.limits = args.limits.write_timeout(seconds(&flag, &value()?)?),
            "--max-connection-age" => {
                let v = value()?;
                let age = seconds_up_to(&v, 30.0 * 86_400.0).ok_or_else(|| {
                    format!("{flag} {v}: a number of seconds, more than 0, at most 30 days")
                })?;
                args.limits = args.limits.max_connection_age(age);
            }
            "--body-read-timeout" => args.limits = args.limits.body_read_timeout(seconds(&flag, &value()?)?),
            "--body-min-rate" => {
                let v = value()?;
                let rate = v
                    .parse()
                    .map_err(|_| format!("--body-min-rate {v}: a number of bytes a second, such as 500"))?;
                args.limits = args.limits.body_min_rate(rate);
            }
            "--body-limit" => {
                let v = value()?;
                let bytes = v
                    .parse()
                    .map_err(|_| format!("--body-limit {v}: a number of bytes, such as 2097152"))?;
                args.limits = args.limits.body_limit(bytes);
            }
            "-h" | "--help" => {
                println!(
                    "usage: {service} [--listen ADDR] [--config FILE] [--service NAME] [--namespace NS]\n\
                     \x20      [--tls-cert FILE --tls-key FILE [--client-ca FILE [--client-crl FILE]...]]\n\
                     \x20      [--keytab FILE [--backend URL [--s4u-realm REALM --s4u-claim CLAIM [--s4u-issuer ISSUER]]]]\n\
                     \x20      [--upstream NAME=URL]... [--upstream-timeout SECONDS] (productpage, reviews)\n\
                     \x20      [--admin ADDR [--ready-waits-for-keys]]\n\
                     \x20      [--handshake-timeout S] [--header-read-timeout S] [--idle-timeout S] [--write-timeout S]\n\
                     \x20      [--body-limit BYTES] [--body-read-timeout S] [--body-min-rate BYTES] [--max-connection-age S]\n\
                     Without --config, a demo issuer is started and a ready-to-paste command is printed.\n\
                     The --config file is reloaded when it changes or on SIGHUP; a file that does not load\n\
                     keeps the policy in force. --admin serves GET /metrics (Prometheus) and GET /ready;\n\
                     with --ready-waits-for-keys, /ready answers 503 until every issuer's keys (and discovery) have loaded.\n\
                     A client has --handshake-timeout (default 10) seconds for its TLS handshake, --header-read-timeout\n\
                     (10) for a request head, --idle-timeout (75) to begin its next request, --write-timeout (60; not\n\
                     reviews, on actix-web) to take more of an answer or open an HTTP/2 window; a body over --body-limit\n\
                     (2097152) bytes is answered 413, one not received within --body-read-timeout (20) seconds plus\n\
                     one for every --body-min-rate (500) bytes that arrived is answered 408. A connection older than\n\
                     --max-connection-age (none by default, at most 30 days), give or take a tenth, is closed once it\n\
                     has served a request, after its answer in progress (HTTP/2: a GOAWAY; reviews, on actix-web:\n\
                     HTTP/1.1 only).\n\
                     --client-ca turns mutual TLS on; its mode comes from the policy file's PeerAuthentication\n\
                     (default STRICT). Certificates, keys, CA and CRL files are reloaded when they change or on SIGHUP.\n\
                     --no-guard (benchmarking only) serves the same routes without Palisade: no authentication,\n\
                     no policy, /whoami says unauthenticated; --floor (benchmarking only) does too, behind a floor\n\
                     that only removes the Authorization header and hands the handler a record; see benches/wrk.sh."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    match (&args.tls_cert, &args.tls_key) {
        (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
        _ => {}
    }
    if args.backend.is_some() && args.keytab.is_none() {
        return Err("--backend needs --keytab (the back-end is called with Kerberos)".into());
    }
    let s4u = [&args.s4u_realm, &args.s4u_claim, &args.s4u_issuer];
    if s4u.iter().any(|v| v.is_some()) {
        if args.backend.is_none() {
            return Err("--s4u-realm, --s4u-claim and --s4u-issuer need --backend".into());
        }
        let no_user_name = "name a claim the issuer sets from the directory, not one users choose";
        let Some(realm) = &args.s4u_realm else {
            return Err(format!(
                "--s4u-claim needs --s4u-realm REALM: S4U for JWT users; {no_user_name}"
            ));
        };
        let Some(claim) = &args.s4u_claim else {
            return Err(format!(
                "--s4u-realm needs --s4u-claim CLAIM: S4U for JWT users; {no_user_name}"
            ));
        };
        if realm.is_empty()
            || !realm
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"/@\\".contains(&b))
        {
            return Err(format!(
                "--s4u-realm {realm}: a realm name (no space, `/`, `@` or `\\`)"
            ));
        }
        if claim.is_empty() || !claim.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("--s4u-claim {claim}: a claim name (no space)"));
        }
        match &args.s4u_issuer {
            Some(issuer) if issuer.is_empty() => return Err("--s4u-issuer: empty".into()),
            None if args.config.is_some() => {
                return Err("--s4u-realm with --config needs --s4u-issuer ISSUER: \
                            the issuer whose users the realm names"
                    .into());
            }
            _ => {}
        }
    }
    if args.client_ca.is_some() && args.tls_cert.is_none() {
        return Err("--client-ca needs --tls-cert and --tls-key".into());
    }
    if !args.client_crls.is_empty() && args.client_ca.is_none() {
        return Err("--client-crl needs --client-ca".into());
    }
    // Port 0 on both is two different ports, chosen when bound.
    if args.admin.is_some_and(|a| {
        a.port() != 0
            && a.port() == args.listen.port()
            && (a.ip() == args.listen.ip() || a.ip().is_unspecified() || args.listen.ip().is_unspecified())
    }) {
        return Err(format!(
            "--admin {}: the admin listener is never on the service's port",
            args.listen
        ));
    }
    Ok(args)
}

/// A `--…-timeout` value: seconds, more than 0, at most an hour.
fn seconds(flag: &str, v: &str) -> Result<std::time::Duration, String> {
    seconds_up_to(v, 3600.0).ok_or_else(|| format!("{flag} {v}: a number of seconds, more than 0"))
}

/// `v` as seconds, more than 0, at most `most`.
fn seconds_up_to(v: &str, most: f64) -> Option<std::time::Duration> {
    v.parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= most)
        .map(std::time::Duration::from_secs_f64)
}

/// Logging on stderr, filtered by `RUST_LOG` (default `info`).
///
/// Until [`started`], the lines are held: a start-up that fails prints its
/// one error line alone (docs/examples.md), not the warnings of a configuration
/// that will not run before it.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // A panic in start-up says what was held before it (without waiting
    // for a lock a panicking log write may hold).
    let panicked = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        use std::io::Write as _;
        if let Ok(mut held) = HELD.try_lock()
            && let Some(lines) = held.take()
        {
            let _ = std::io::stderr().write_all(&lines);
        }
        panicked(info);
    }));
}

/// Log lines written before the service started (`None` once it has).
static HELD: std::sync::Mutex<Option<Vec<u8>>> = std::sync::Mutex::new(Some(Vec::new()));

/// The most start-up log held (a `RUST_LOG=trace` start-up): past it, the
/// lines go out as they come.
const HELD_MAX: usize = 1 << 20;

/// Standard error, holding lines until the service starts.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut held = HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match held.as_mut() {
            Some(lines) if lines.len() + buf.len() <= HELD_MAX => {
                lines.extend_from_slice(buf);
                Ok(buf.len())
            }
            Some(_) => {
                let lines = held.take().unwrap_or_default();
                std::io::stderr().write_all(&lines)?;
                std::io::stderr().write(buf)
            }
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The service has started: the start-up's log lines go out, and the
/// next ones as they come.
pub fn started() {
    use std::io::Write as _;
    // Written under the lock, so no line of a thread already running goes
    // out before them.
    let mut held = HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(lines) = held.take() {
        let _ = std::io::stderr().write_all(&lines);
    }
}

/// What a running example needs: its guard and, in demo mode, the issuer
/// (kept alive for the life of the program).
pub struct Setup {
    /// The policy file (or the demo policy), every document.
    pub set: PolicySet,
    pub guard: Guard,
    pub demo: Option<TestIssuer>,
    pub workload: Workload,
    /// TLS, when `--tls-cert` was given; mutual TLS with `--client-ca`.
    pub tls: Option<ServerTls>,
    /// The Prometheus recorder, with `--admin`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// What else reads the file, told of each reload.
    pub reloads: Reloads,
}

/// Puts a reloaded file's settings in force (run once the whole file is
/// accepted).
pub type Commit = Box<dyn FnOnce() + Send>;

type Hook = Box<dyn Fn(&WorkloadPolicy<'_>) -> Result<Option<Commit>, PolicyError> + Send + Sync>;

/// The parts of a service that read the policy file beside its guard (the
/// calls it makes to upstreams, productpage's sign-in links). Each is
/// asked, at every reload of `--config`, what it would put in force;
/// one refusal keeps the whole file out (the old policy stays, as for the
/// guard), and the rest are put in force with the guard.
#[derive(Clone, Default)]
pub struct Reloads(std::sync::Arc<std::sync::Mutex<Vec<Hook>>>);

impl Reloads {
    /// `prepare` reads a reloaded file's documents for this workload and
    /// answers what to put in force, if anything changed, or why the file
    /// cannot be used (naming the document and field).
    pub fn on_reload(
        &self,
        prepare: impl Fn(&WorkloadPolicy<'_>) -> Result<Option<Commit>, PolicyError> + Send + Sync + 'static,
    ) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(prepare));
    }

    /// Every part's commit for `policy`, or the first refusal.
    fn prepare(&self, policy: &WorkloadPolicy<'_>) -> Result<Vec<Commit>, PolicyError> {
        let hooks = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        hooks
            .iter()
            .filter_map(|prepare| prepare(policy).transpose())
            .collect()
    }
}

/// The demo policy: tokens of the embedded issuer for this service; every
/// route but `/healthz` needs one. productpage also signs browsers in at
/// the embedded issuer (its public client `productpage`), and shows
/// `/productpage` to anyone, with a sign-in link.
pub fn demo_policy(issuer: &TestIssuer, workload: &Workload) -> String {
    let productpage = workload.service == "productpage";
    let mut yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: demo-jwt, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: {svc}}}}}
  jwtRules:
  - issuer: {iss}
    jwksUri: {jwks}
    audiences: [{svc}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: {svc}}}}}
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
  - to: [{{operation: {{methods: [GET], paths: [{open}]}}}}]
{grpc_health}",
        ns = workload.namespace,
        svc = workload.service,
        iss = issuer.issuer(),
        jwks = issuer.jwks_uri(),
        open = if productpage {
            "/healthz, /productpage"
        } else {
            "/healthz"
        },
        // gRPC health checks (POSTs) need no token either; `Watch`, a
        // stream a caller may hold open, does.
        grpc_health = if workload.service == "ratings" {
            "  - to: [{operation: {methods: [POST], paths: [/grpc.health.v1.Health/Check]}}]\n"
        } else {
            ""
        },
    );
    if productpage {
        yaml.push_str(&format!(
            "---
apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {{name: demo-login, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: {svc}}}}}
  issuer: {iss}
  clientId: productpage
",
            ns = workload.namespace,
            svc = workload.service,
            iss = issuer.issuer(),
        ));
    }
    yaml
}

/// Loads `--config`, or starts the demo issuer; exits with one line on error.
pub fn setup(args: &Args) -> Setup {
    // Before the guard: it registers its metrics when it is built.
    let metrics = args.admin.map(|_| install_metrics());
    let workload = Workload::new(&args.service, &args.namespace);
    let (set, demo) = match &args.config {
        Some(path) => (
            PolicySet::from_file(path).unwrap_or_else(|e| fail(&e.to_string())),
            None,
        ),
        None => {
            let issuer = TestIssuer::builder()
                .default_audience(&args.service)
                .client("demo", "demo-secret")
                .public_client("productpage")
                .user("alice", "alice", &["user", "admin"])
                .start()
                .unwrap_or_else(|e| fail(&format!("cannot start the demo issuer: {e}")));
            let yaml = demo_policy(&issuer, &workload);
            let set = PolicySet::from_yaml_str(&yaml, "demo policy").unwrap_or_else(|e| fail(&e.to_string()));
            (set, Some(issuer))
        }
    };
    let guard = build_guard(&set, &workload, args.keytab.as_deref(), args.backend.is_some())
        .unwrap_or_else(|e| fail(&e.to_string()));
    if args.keytab.is_none()
        && let Some((doc, _)) = set.for_workload(&workload).spnego_settings().next()
    {
        tracing::warn!(
            document = %doc.resource(),
            "the policy file's SpnegoSettings apply to this workload, but SPNEGO is off: --keytab turns it on"
        );
    }
    let tls = tls(args, &set.for_workload(&workload));
    Setup {
        set,
        guard,
        demo,
        workload,
        tls,
        metrics,
        reloads: Reloads::default(),
    }
}

/// The workload's guard from a policy file's documents: the one way from
/// the file to the guard, at start-up and on every reload. Each part
/// configures itself from the workload's documents; SPNEGO is turned on by
/// `--keytab`, and keeps forwarded tickets (`delegation`) for `--backend`,
/// which calls on with them.
fn build_guard(
    set: &PolicySet,
    workload: &Workload,
    keytab: Option<&std::path::Path>,
    delegation: bool,
) -> Result<Guard, palisade::core::policy::PolicyError> {
    use palisade::core::policy::PolicyError;
    use palisade::spnego::SpnegoAuthenticator;
    let mut builder = palisade::guard_builder_from_policy(set, workload, &demo_authorizers())?;
    if let Some(keytab) = keytab {
        // What building finds is the keytab's fault: say which.
        let failed = |mut e: PolicyError| {
            e.message = format!("--keytab {}: {}", keytab.display(), e.message);
            e
        };
        let policy = set.for_workload(workload);
        let mut spnego = SpnegoAuthenticator::builder().settings_from(&policy)?;
        if delegation {
            spnego = spnego.accept_delegation();
        }
        builder = builder.authenticator(spnego.build_for(&policy).map_err(failed)?);
    }
    builder
        .build()
        .map_err(|e| PolicyError::new(set.source(), e.to_string()))
}

/// Installs the Prometheus recorder `--admin` serves, with the guard's
/// latency as a histogram.
fn install_metrics() -> metrics_exporter_prometheus::PrometheusHandle {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(palisade::core::metrics::CHECK_DURATION.to_owned()),
            palisade::core::metrics::CHECK_DURATION_BUCKETS,
        )
        .and_then(PrometheusBuilder::install_recorder)
        .unwrap_or_else(|e| fail(&format!("--admin: cannot install the metrics recorder: {e}")));
    palisade::core::metrics::describe();
    handle
}

/// What runs beside the service once it listens, on the current tokio
/// runtime: the policy file's reload (a change of `--config`, or SIGHUP)
/// and the `--admin` listener. Exits with one line when either cannot start.
pub fn start_operations(args: &Args, setup: &Setup) {
    if let Some(path) = &args.config {
        let workload = setup.workload.clone();
        let keytab = args.keytab.clone();
        let delegation = args.backend.is_some();
        // The listener's mTLS mode follows the file, as a reloaded
        // PeerAuthentication does in Istio. (Without
        // --client-ca the listener takes no client certificate whatever the
        // file says, as start-up warned.)
        let port = args.listen.port();
        let tls = args.client_ca.as_ref().and(setup.tls.clone());
        let reloads = setup.reloads.clone();
        let reloader = palisade::core::reload::PolicyReloader::new(path, &setup.guard, move |set| {
            // Everything start-up reads from the file is checked, so a file
            // the service would refuse at its next start is refused now.
            let policy = set.for_workload(&workload);
            palisade::client::Upstreams::check_policy(&policy)?;
            palisade::mtls::UpstreamTls::check_policy(&policy)?;
            let wanted = palisade::mtls::mode_for_port(&policy, port)?;
            let guard = build_guard(set, &workload, keytab.as_deref(), delegation)?;
            // The calls it makes (`UpstreamCredentials`, `DestinationRule`)
            // and the rest follow the file too, once all of it is accepted.
            let commits = reloads.prepare(&policy)?;
            // Put in force with the guard (the reloader swaps it in next):
            // a server with a client CA takes every mode.
            if let Some(tls) = &tls {
                tls.set_mode(wanted)
                    .map_err(|e| palisade::core::policy::PolicyError::new(set.source(), e.to_string()))?;
            }
            for commit in commits {
                commit();
            }
            Ok(guard)
        })
        // A change made since start-up read the file is loaded too.
        .loaded_from(&setup.set);
        if let Err(e) = reloader.watch(std::time::Duration::from_millis(500)) {
            fail(&format!(
                "--config {}: cannot watch the file: {e}",
                path.display()
            ));
        }
        if let Err(e) = reloader.reload_on_sighup() {
            fail(&format!("cannot listen for SIGHUP: {e}"));
        }
    }
    if args.ready_waits_for_keys && args.admin.is_none() {
        fail("--ready-waits-for-keys needs --admin (it is what GET /ready answers)");
    }
    if let (Some(addr), Some(handle)) = (args.admin, setup.metrics.clone()) {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .unwrap_or_else(|e| fail(&format!("--admin {addr}: {e}")));
        // Said before `listening on`, with the port `:0` was given; in
        // words that do not contain `listening on`, the service's own
        // readiness line (docs/examples.md), which a reader may look for
        // anywhere in a line.
        println!("admin address {}", listener.local_addr().unwrap_or(addr));
        std::thread::Builder::new()
            .name("admin".into())
            .spawn({
                let keys = args.ready_waits_for_keys.then(|| setup.guard.clone());
                move || admin(listener, handle, keys)
            })
            .unwrap_or_else(|e| fail(&format!("--admin {addr}: {e}")));
    }
}

/// `GET /ready` has answered 200 (`--ready-waits-for-keys`): it does from
/// then on.
static READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The `--admin` listener, on a thread and runtime of its own so a busy
/// service never starves it: `GET /metrics` (Prometheus text) and
/// `GET /ready`, which with `keys` (`--ready-waits-for-keys`) answers 503
/// while the guard waits for an issuer's keys.
fn admin(
    listener: std::net::TcpListener,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    keys: Option<Guard>,
) {
    use axum::routing::get;
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => fail(&format!("--admin: {e}")),
    };
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| fail(&format!("--admin: {e}")));
        // Histograms are drained into their buckets by upkeep.
        let upkeep = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        let app = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let handle = handle.clone();
                    async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            handle.render(),
                        )
                    }
                }),
            )
            .route(
                "/ready",
                get(move || {
                    // Once ready, ready until the process ends: a reload
                    // that adds an issuer (every replica reads the same
                    // file) does not take them all out of service at once.
                    let waiting = match &keys {
                        Some(guard) if !READY.load(std::sync::atomic::Ordering::Relaxed) => {
                            guard.waiting_for()
                        }
                        _ => Vec::new(),
                    };
                    if waiting.is_empty() {
                        READY.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    async move {
                        if waiting.is_empty() {
                            (axum::http::StatusCode::OK, "ready".to_owned())
                        } else {
                            (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                format!("waiting for {}", waiting.join("; ")),
                            )
                        }
                    }
                }),
            );
        // With the default limits on slow and silent clients.
        if let Err(e) = palisade::axum::serve(listener, app, std::future::pending()).await {
            tracing::error!(error = %e, "the admin listener stopped");
        }
    });
}

/// `--tls-cert`, `--tls-key`, `--client-ca`, `--client-crl`: the mode comes
/// from the policy file's PeerAuthentication for the listening port.
fn tls(args: &Args, policy: &WorkloadPolicy<'_>) -> Option<ServerTls> {
    // Checked whatever the flags, as every reload checks it.
    let mode =
        palisade::mtls::mode_for_port(policy, args.listen.port()).unwrap_or_else(|e| fail(&e.to_string()));
    if args.client_ca.is_none()
        && mode != palisade::mtls::MtlsMode::Disable
        && policy.peer_authentications().next().is_some()
    {
        tracing::warn!(
            ?mode,
            "the policy file's PeerAuthentication asks for mutual TLS on this port, but without --client-ca no client certificate is asked for: callers are not told apart by one"
        );
    }
    let (cert, key) = (args.tls_cert.as_ref()?, args.tls_key.as_ref()?);
    let mut b = ServerTls::builder(cert, key);
    if let Some(ca) = &args.client_ca {
        b = b.client_ca(ca).mode(mode);
        for crl in &args.client_crls {
            b = b.crl(crl);
        }
    }
    let tls = b.build().unwrap_or_else(|e| fail(&e.to_string()));
    tls.watch(std::time::Duration::from_secs(1));
    Some(tls)
}

/// The external authorizer `CUSTOM` policies may name in the examples:
/// `demo-ext-authz` allows a request iff it carries `x-ext-authz: allow`, as
/// Istio's sample ext-authz server does.
pub fn demo_authorizers() -> ExternalAuthorizers {
    ExternalAuthorizers::new().register("demo-ext-authz", ["x-ext-authz"], |c: CheckRequest| async move {
        if c.request.header_str("x-ext-authz") == Some("allow") {
            ExternalDecision::Allow
        } else {
            ExternalDecision::Deny
        }
    })
}

/// Prints the demo banner (stdout) before the `listening on` line.
pub fn announce(setup: &Setup, listen: SocketAddr) {
    if let Some(issuer) = &setup.demo {
        println!("demo mode: embedded development issuer at {}", issuer.issuer());
        println!("get a token and call the service:");
        println!(
            "  TOKEN=$(curl -s -d grant_type=client_credentials -d client_id=demo -d client_secret=demo-secret {} | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')",
            issuer.token_endpoint()
        );
        println!("  curl -H \"Authorization: Bearer $TOKEN\" http://{listen}/list");
        println!("  curl -H \"Authorization: Bearer $TOKEN\" http://{listen}/whoami");
        if setup.workload.service == "productpage" {
            println!(
                "or open http://{listen}/productpage in a browser and sign in as alice (password alice)"
            );
        }
    }
}

pub fn list_json(service: &str) -> serde_json::Value {
    serde_json::json!([
        {"id": 1, "service": service, "title": "The Comedy of Errors"},
        {"id": 2, "service": service, "title": "Hamlet"},
    ])
}

pub fn created_json(service: &str) -> serde_json::Value {
    serde_json::json!({"id": 3, "service": service, "created": true})
}

pub fn item_json(service: &str, id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "service": service, "title": "The Comedy of Errors"})
}

/// The workload's calls to upstreams as its policy says: the credential
/// of each host (`UpstreamCredentials`) and the TLS of each host and port
/// (`DestinationRule`; `ISTIO_MUTUAL` with the workload's own
/// `--tls-cert`, `--tls-key` and `--client-ca`), whose files are watched
/// while it is in use, so the workload's rotated certificate reaches the
/// calls it makes too.
///
/// # Errors
/// A document that cannot be used, naming its field.
pub fn outbound_for(
    args: &Args,
    policy: &WorkloadPolicy<'_>,
) -> Result<(palisade::client::Upstreams, palisade::mtls::UpstreamTls), PolicyError> {
    use palisade::core::policy::FromPolicy as _;
    let credentials = palisade::client::Upstreams::from_policy(policy)?.unwrap_or_default();
    let mesh = match (&args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(palisade::mtls::MeshIdentity::new(cert, key, ca)),
        _ => None,
    };
    let tls = palisade::mtls::UpstreamTls::from_policy(policy, mesh.as_ref())?;
    tls.watch(std::time::Duration::from_secs(1));
    Ok((credentials, tls))
}

/// What the workload's calls to upstreams are built from: the documents
/// that configure them (names and specs, in name order, not where they
/// stand in the file), and a digest of the client secrets their files hold
/// (a secret rotated in its file is a change; a `DestinationRule`'s TLS
/// files reload on their own).
fn outbound_documents(policy: &WorkloadPolicy<'_>) -> (Vec<(String, palisade::core::policy::Spec)>, u64) {
    let documents: Vec<_> = policy
        .documents()
        .iter()
        .filter(|d| matches!(d.kind.as_str(), "UpstreamCredentials" | "DestinationRule"))
        .map(|d| (d.resource(), d.spec.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let secrets: Vec<PathBuf> = documents
        .iter()
        .flat_map(|(_, spec)| spec.files())
        .map(PathBuf::from)
        .collect();
    (documents, palisade::core::reload::files_digest(&secrets))
}

/// A value made from `setup`'s file by `build`, and made again at each
/// reload of `--config`, put in force with the reload's guard (a file
/// `build` refuses keeps the old value, as it keeps the old policy). Exits
/// with one line when the file cannot be used at start-up.
pub fn reloaded<T: Send + Sync + 'static>(
    setup: &Setup,
    build: impl Fn(&WorkloadPolicy<'_>) -> Result<T, PolicyError> + Send + Sync + 'static,
) -> Reloaded<T> {
    let first = build(&setup.set.for_workload(&setup.workload)).unwrap_or_else(|e| fail(&e.to_string()));
    let current = Reloaded(std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(
        first,
    ))));
    let swapped = current.clone();
    setup.reloads.on_reload(move |policy| {
        let built = std::sync::Arc::new(build(policy)?);
        let swapped = swapped.clone();
        Ok(Some(Box::new(move || swapped.replace(built))))
    });
    current
}

/// The calls to upstreams of `setup`'s file, built by `build`, and built
/// again at each reload of `--config` that changes the workload's
/// `UpstreamCredentials` or `DestinationRule` documents or a client secret
/// their files hold (a reload that does not keeps the calls, and their
/// cached tokens), put in force with
/// the reload's guard (so that a file whose new documents cannot be used
/// keeps the old calls, as it keeps the old policy). Calls begun before
/// finish as they began. Exits with one line when the file's documents
/// cannot be used at start-up.
pub fn outbound_reloaded<T: Send + Sync + 'static>(
    args: &Args,
    setup: &Setup,
    build: impl Fn(&Args, &WorkloadPolicy<'_>) -> Result<T, PolicyError> + Send + Sync + 'static,
) -> Reloaded<T> {
    use std::sync::{Arc, Mutex, PoisonError};
    let policy = setup.set.for_workload(&setup.workload);
    let first = build(args, &policy).unwrap_or_else(|e| fail(&e.to_string()));
    let current = Reloaded(Arc::new(std::sync::RwLock::new(Arc::new(first))));
    let last = Arc::new(Mutex::new(outbound_documents(&policy)));
    let (args, swapped) = (args.clone(), current.clone());
    setup.reloads.on_reload(move |policy| {
        let documents = outbound_documents(policy);
        if *last.lock().unwrap_or_else(PoisonError::into_inner) == documents {
            return Ok(None);
        }
        let built = Arc::new(build(&args, policy)?);
        let (last, swapped) = (last.clone(), swapped.clone());
        Ok(Some(Box::new(move || {
            swapped.replace(built);
            *last.lock().unwrap_or_else(PoisonError::into_inner) = documents;
            tracing::info!(
                "calls to upstreams follow the reloaded UpstreamCredentials and DestinationRule documents"
            );
        })))
    });
    current
}

/// A value a reload of `--config` may replace ([`reloaded`],
/// [`outbound_reloaded`]).
pub struct Reloaded<T>(std::sync::Arc<std::sync::RwLock<std::sync::Arc<T>>>);

impl<T> Clone for Reloaded<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Reloaded<T> {
    /// The value in force now.
    pub fn current(&self) -> std::sync::Arc<T> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, value: std::sync::Arc<T>) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    }
}

/// `--upstream NAME=URL`'s URL, its port and where its connections go;
/// exits naming the argument when the URL cannot be used.
pub fn upstream_target(name: &str, url: &str) -> (reqwest::Url, u16, Target) {
    let shown = palisade::core::syntax::url_without_credentials(url);
    let bad = |why: &str| -> ! { fail(&format!("--upstream {name}={shown}: {why}")) };
    let parsed = reqwest::Url::parse(url).unwrap_or_else(|e| bad(&e.to_string()));
    let port = parsed.port_or_known_default().unwrap_or_else(|| bad("no port"));
    let host = parsed.host_str().unwrap_or_else(|| bad("no host"));
    // An IPv6 literal is written in brackets.
    let host = match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(ip) => Host::Addr(ip),
        Err(_) => Host::Name(host.to_owned()),
    };
    (parsed, port, Target { host, port })
}

/// Where an upstream's connections go: the `--upstream` URL's host and
/// port, whatever name the request carries (as a mesh's DNS sends
/// `NAME.<namespace>.svc.cluster.local` there). A name is resolved at each
/// new connection, so one that does not resolve (yet) makes that call
/// fail, as an upstream that cannot be reached: 502 in its section.
#[derive(Clone, Debug)]
pub struct Target {
    host: Host,
    port: u16,
}

#[derive(Clone, Debug)]
enum Host {
    Addr(std::net::IpAddr),
    Name(String),
}

impl Target {
    /// The addresses to connect to now.
    pub async fn addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        match &self.host {
            Host::Addr(ip) => Ok(vec![SocketAddr::new(*ip, self.port)]),
            Host::Name(name) => Ok(tokio::net::lookup_host((name.as_str(), self.port))
                .await?
                .collect()),
        }
    }
}

/// For reqwest: every name the client connects to is this target.
impl reqwest::dns::Resolve for Target {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let target = self.clone();
        Box::pin(async move {
            let addrs = target.addrs().await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
