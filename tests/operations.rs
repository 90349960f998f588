//! Operations, from outside the example processes: the policy file's hot
//! reload under load (wrk) and the `--admin` listener's `/metrics` and
//! `/ready`, on both frameworks (details is axum, reviews actix-web).

mod common;

use common::{ScratchDir, Service, access_token, start, wait_until};
use palisade::testkit::TestIssuer;

/// Starts `example` with `--config file` and `--admin 127.0.0.1:0`; the
/// service and the admin listener's address, from its banner.
fn start_with_admin(example: &str, file: &str) -> (Service, String) {
    let svc = start(
        example,
        &["--config", file, "--service", example, "--admin", "127.0.0.1:0"],
    );
    let admin = admin_of(&svc);
    (svc, admin)
}

/// The admin listener's address, from `svc`'s banner.
fn admin_of(svc: &Service) -> String {
    svc.banner
        .iter()
        .find_map(|l| l.strip_prefix("admin address "))
        .unwrap_or_else(|| panic!("no admin address in {:?}", svc.banner))
        .to_owned()
}

/// Waits until the issuer's keys are in: a request that came while they
/// were being fetched would ask for one more fetch.
async fn keys_loaded(admin: &str, issuer: &TestIssuer) {
    let sample_name = format!(
        "palisade_jwks_fetches_total{{issuer=\"{}\",result=\"success\"}}",
        issuer.issuer()
    );
    wait_until("the issuer's keys", async || {
        sample(&metrics(admin).await, &sample_name) >= 1.0
    })
    .await;
}

/// Tokens of `issuer` for `service`; `/list` for any caller with one, and
/// `/whoami` too when `whoami` (the difference between the two valid files).
fn policy(issuer: &TestIssuer, service: &str, whoami: bool) -> String {
    let paths = if whoami { "[/list, /whoami]" } else { "[/list]" };
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules: [{{issuer: {iss}, audiences: [{service}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
    to: [{{operation: {{paths: {paths}}}}}]
",
        iss = issuer.issuer(),
        name = if whoami { "with-whoami" } else { "without-whoami" },
    )
}

/// Refused at load: `ALOW` is no action.
const BROKEN: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: default}
spec:
  action: ALOW
";

/// `/metrics` of the admin listener.
async fn metrics(admin: &str) -> String {
    let res = reqwest::get(format!("http://{admin}/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "Prometheus text format"
    );
    res.text().await.unwrap()
}

/// The value of the sample `name_and_labels` (exactly as rendered), or 0.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn reloads(text: &str) -> f64 {
    sample(text, "palisade_config_reloads_total{result=\"success\"}")
        + sample(text, "palisade_config_reloads_total{result=\"failure\"}")
}

async fn status(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn sighup(svc: &Service) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &svc.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

/// wrk running: killed on drop (a failed test leaves no load behind).
struct Load(Option<std::process::Child>);

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Load {
    /// Stops wrk (SIGINT, on which it reports) and returns its report.
    fn report(mut self) -> String {
        let child = self.0.take().unwrap();
        let stopped = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(stopped.success(), "wrk ended before the reloads did");
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    }
}

/// wrk against `url` with the token, for at most `secs`.
fn wrk(url: &str, token: &str, secs: u64) -> Load {
    Load(Some(
        std::process::Command::new("wrk")
            // wrk counts a request over its default 2 s as a socket error;
            // the assertion is about failed requests, not slow ones.
            .args(["-t1", "-c4", "--timeout", "30s", &format!("-d{secs}s"), "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(url)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run wrk ({e}): install it with `apt-get install wrk`")),
    ))
}

/// An example serving a policy file of its own issuer (`/whoami` allowed
/// when `whoami`), with the admin listener, the issuer's keys loaded, and
/// a token for it.
struct Running {
    issuer: TestIssuer,
    dir: ScratchDir,
    svc: Service,
    admin: String,
    token: String,
}

async fn running(example: &str, tag: &str, whoami: bool) -> Running {
    let issuer = TestIssuer::builder()
        .default_audience(example)
        .client("demo", "s3cret")
        .start()
        .unwrap();
    let dir = ScratchDir::new(&format!("{tag}-{example}"));
    let file = dir.write("policy.yaml", &policy(&issuer, example, whoami));
    let (svc, admin) = start_with_admin(example, &file);
    keys_loaded(&admin, &issuer).await;
    let token = access_token(
        &issuer.token_endpoint(),
        "grant_type=client_credentials&client_id=demo&client_secret=s3cret",
    )
    .await;
    Running {
        issuer,
        dir,
        svc,
        admin,
        token,
    }
}

/// 50 reloads (SIGHUP), alternating two valid files and a broken one,
/// while wrk loads a route both valid files allow: no request fails, and
/// after each reload the route the files disagree on answers as the file
/// in force says (the broken one keeps the one before). Then a change
/// without a signal is picked up by the file watch.
async fn reload_under_load(example: &str) {
    let Running {
        issuer,
        dir,
        svc,
        admin,
        token,
    } = running(example, "reload", true).await;
    let with = policy(&issuer, example, true);
    let without = policy(&issuer, example, false);
    let whoami = format!("http://{}/whoami", svc.addr);
    assert_eq!(status(&whoami, &token).await, 200);

    // Until the reloads are done: then SIGINT, on which wrk reports.
    let load = wrk(&format!("http://{}/list", svc.addr), &token, 600);
    let mut in_force = true; // whether the file in force allows /whoami
    for i in 0..50 {
        let before = reloads(&metrics(&admin).await);
        let (text, valid) = match i % 3 {
            0 => (&without, Some(false)),
            1 => (&with, Some(true)),
            _ => (&BROKEN.to_owned(), None),
        };
        dir.write("policy.yaml", text);
        sighup(&svc);
        wait_until(&format!("reload {i} in /metrics"), async || {
            reloads(&metrics(&admin).await) > before
        })
        .await;
        if let Some(v) = valid {
            in_force = v;
        }
        let want = if in_force { 200 } else { 403 };
        assert_eq!(status(&whoami, &token).await, want, "after reload {i}");
    }
    let report = load.report();
    let requests: u64 = report
        .lines()
        .find_map(|l| {
            l.split_once(" requests in ")
                .map(|(n, _)| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
    // Load ran throughout (a debug build on a loaded machine still serves
    // thousands a second).
    assert!(requests > 200, "{report}");
    assert!(
        !report.contains("Non-2xx"),
        "a request failed during the reloads:\n{report}"
    );
    assert!(!report.contains("Socket errors"), "{report}");

    let text = metrics(&admin).await;
    assert!(
        sample(&text, "palisade_config_reloads_total{result=\"failure\"}") >= 16.0,
        "{text}"
    );
    assert!(
        sample(&text, "palisade_config_reloads_total{result=\"success\"}") >= 34.0,
        "{text}"
    );
    // One issuer, never changed: its keys were fetched once, whatever the reloads.
    assert_eq!(issuer.jwks_fetches(), 1);

    // The file watch, without a signal: the last file in force allowed
    // /whoami iff `in_force`; write the other.
    dir.write("policy.yaml", if in_force { &without } else { &with });
    let want = if in_force { 403 } else { 200 };
    wait_until("the changed file to be picked up", async || {
        status(&whoami, &token).await == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_reloads_its_policy_under_load() {
    reload_under_load("details").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_reloads_its_policy_under_load() {
    reload_under_load("reviews").await;
}

/// The contract's metrics after known traffic, and `/ready`.
async fn admin_listener(example: &str) {
    let Running {
        issuer,
        dir,
        svc,
        admin,
        token,
    } = running(example, "admin", false).await;
    let url = |p: &str| format!("http://{}{p}", svc.addr);
    assert_eq!(status(&url("/list"), &token).await, 200);
    assert_eq!(status(&url("/list"), &token).await, 200);
    assert_eq!(status(&url("/whoami"), &token).await, 403);
    assert_eq!(status(&url("/list"), "not-a-token").await, 401);
    let expired = issuer.token().audience(example).expires_in(-3600).sign();
    assert_eq!(status(&url("/list"), &expired).await, 401);
    let anonymous = reqwest::get(url("/list")).await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let ready = reqwest::get(format!("http://{admin}/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);

    let text = metrics(&admin).await;
    let get = |s: &str| sample(&text, s);
    assert_eq!(
        get(
            "palisade_decisions_total{decision=\"allow\",policy=\"default/without-whoami\",action=\"ALLOW\"}"
        ),
        2.0,
        "{text}"
    );
    // /whoami (no ALLOW rule matched), the bad tokens and the missing one.
    assert_eq!(
        get("palisade_decisions_total{decision=\"deny\",policy=\"\",action=\"\"}"),
        4.0,
        "{text}"
    );
    assert_eq!(
        get("palisade_authentications_total{method=\"jwt\",result=\"success\"}"),
        3.0,
        "{text}"
    );
    assert_eq!(
        get("palisade_authentications_total{method=\"jwt\",result=\"failure\"}"),
        2.0,
        "{text}"
    );
    // And why, each once.
    for reason in ["malformed", "expired"] {
        assert_eq!(
            get(&format!(
                "palisade_authentication_failures_total{{method=\"jwt\",reason=\"{reason}\"}}"
            )),
            1.0,
            "{reason}: {text}"
        );
    }
    let issuer_label = issuer.issuer();
    assert_eq!(
        get(&format!(
            "palisade_jwks_fetches_total{{issuer=\"{issuer_label}\",result=\"success\"}}"
        )),
        1.0,
        "{text}"
    );
    // The failures' series too, at zero since start-up; none without an
    // issuer, since the file configures one.
    let failures = format!("palisade_jwks_fetches_total{{issuer=\"{issuer_label}\",result=\"failure\"}} 0");
    assert!(text.contains(&failures), "{text}");
    assert!(
        !text.contains("palisade_jwks_fetches_total{issuer=\"\""),
        "{text}"
    );
    assert_eq!(get("palisade_token_cache_total{result=\"hit\"}"), 2.0, "{text}");
    assert_eq!(get("palisade_check_duration_seconds_count"), 6.0, "{text}");
    assert!(
        text.contains("palisade_check_duration_seconds_bucket{le=\"0.001\"}"),
        "{text}"
    );
    assert!(text.contains("# HELP palisade_decisions_total"), "{text}");
    // The contract's reload counter is there before any reload, at zero.
    for result in ["success", "failure"] {
        assert!(
            text.contains(&format!("palisade_config_reloads_total{{result=\"{result}\"}} 0")),
            "{result}: {text}"
        );
    }
    // No token in the metrics.
    assert!(!text.contains(&token[..20]));

    // The admin routes are the admin listener's only: with every path
    // allowed, the service's own port has no /metrics.
    dir.write(
        "policy.yaml",
        &policy(&issuer, example, false).replace("[/list]", "[\"*\"]"),
    );
    sighup(&svc);
    wait_until("the allow-all file to be loaded", async || {
        status(&url("/whoami"), &token).await == 200
    })
    .await;
    assert_eq!(status(&url("/metrics"), &token).await, 404);
    assert_eq!(status(&url("/ready"), &token).await, 404);
}

/// The contract's counters are on /metrics from the start with a file
/// that configures no issuer: the key fetches' without one, at zero.
async fn contract_counters_without_an_issuer(example: &str) {
    let dir = ScratchDir::new(&format!("metrics-no-issuer-{example}"));
    let file = dir.write(
        "policy.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: open, namespace: default}
spec:
  rules: [{}]
",
    );
    let (_svc, admin) = start_with_admin(example, &file);
    let text = metrics(&admin).await;
    for series in [
        "palisade_jwks_fetches_total{issuer=\"\",result=\"success\"} 0",
        "palisade_jwks_fetches_total{issuer=\"\",result=\"failure\"} 0",
        "palisade_config_reloads_total{result=\"success\"} 0",
    ] {
        assert!(text.contains(series), "{example}: {series}: {text}");
    }
    for name in [
        "palisade_decisions_total",
        "palisade_authentications_total",
        "palisade_check_duration_seconds",
    ] {
        assert!(text.contains(name), "{example}: {name}: {text}");
    }
}

#[tokio::test]
async fn the_contracts_counters_are_there_without_an_issuer_on_both_frameworks() {
    contract_counters_without_an_issuer("details").await;
    contract_counters_without_an_issuer("reviews").await;
}

#[tokio::test]
async fn details_serves_metrics_and_readiness_on_the_admin_listener() {
    admin_listener("details").await;
}

#[tokio::test]
async fn reviews_serves_metrics_and_readiness_on_the_admin_listener() {
    admin_listener("reviews").await;
}

/// `GET /ready` of `admin`: the status and the body.
async fn ready(admin: &str) -> (u16, String) {
    let res = reqwest::get(format!("http://{admin}/ready")).await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// With `--ready-waits-for-keys`, `/ready` answers 503 naming the issuer
/// while its keys cannot be had (here: nothing answers its discovery), and
/// 200 once they have loaded; without the flag, 200 once the service
/// listens, whatever the keys.
async fn ready_waits_for_keys(example: &str) {
    let issuer = TestIssuer::start().unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}/realms/down", silent.local_addr().unwrap());
    let dir = ScratchDir::new(&format!("ready-{example}"));
    let file = |iss: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: default}}\nspec:\n  jwtRules: [{{issuer: '{iss}', audiences: [{example}]}}]\n"
        )
    };
    let down = dir.write("down.yaml", &file(&nowhere));
    let up = dir.write("up.yaml", &file(issuer.issuer()));
    let with = |f: &str, wait: bool| {
        let mut args = vec!["--config", f, "--service", example, "--admin", "127.0.0.1:0"];
        if wait {
            args.push("--ready-waits-for-keys");
        }
        let svc = start(example, &args);
        let admin = admin_of(&svc);
        (svc, admin)
    };
    let (_svc, admin) = with(&down, true);
    let (status, body) = ready(&admin).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, format!("waiting for the keys of {nowhere}"));
    let (_svc, admin) = with(&down, false);
    assert_eq!(ready(&admin).await, (200, "ready".to_owned()));
    let (svc, admin) = with(&up, true);
    wait_until("ready once the keys are in", async || {
        ready(&admin).await.0 == 200
    })
    .await;
    // Ready from then on: a reload to an issuer that does not answer
    // keeps it ready (every replica reads the same file).
    let before = reloads(&metrics(&admin).await);
    std::fs::write(&up, file(&nowhere)).unwrap();
    sighup(&svc);
    wait_until("the reload", async || reloads(&metrics(&admin).await) > before).await;
    assert_eq!(ready(&admin).await, (200, "ready".to_owned()));
    drop(silent);
}

#[tokio::test]
async fn details_readiness_can_wait_for_the_issuers_keys() {
    ready_waits_for_keys("details").await;
}

#[tokio::test]
async fn reviews_readiness_can_wait_for_the_issuers_keys() {
    ready_waits_for_keys("reviews").await;
}

#[test]
fn the_admin_listener_is_never_the_service_port() {
    let out = std::process::Command::new(common::example("details"))
        .args(["--listen", "127.0.0.1:19999", "--admin", "127.0.0.1:19999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--admin") && err.contains("never on the service's port"),
        "{err}"
    );
}

/// details started with `--config` (`file(first)`) and the admin listener,
/// its log kept; for each `(value, times)` of `steps`, the file rewritten as
/// `file(value)` and reloaded (SIGHUP), which must succeed, after which its
/// log must say `said` `times` times in all.
async fn reloads_say(
    tag: &str,
    extra: &[&str],
    file: impl Fn(&str) -> String,
    first: &str,
    steps: &[(&str, usize)],
    said: &str,
) {
    let dir = ScratchDir::new(tag);
    let path = dir.write("policy.yaml", &file(first));
    let log = dir.path("stderr.log");
    let mut args = vec![
        "--config",
        &path,
        "--service",
        "details",
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend(extra);
    let svc = common::start_logged("details", &args, &[], &log);
    let admin = admin_of(&svc);
    let log = || std::fs::read_to_string(&log).unwrap();
    for (value, times) in steps {
        let before = reloads(&metrics(&admin).await);
        // Each file a new one, whatever the value.
        dir.write("policy.yaml", &format!("{}# {value}\n", file(value)));
        sighup(&svc);
        wait_until("the reload", async || reloads(&metrics(&admin).await) > before).await;
        let text = metrics(&admin).await;
        assert_eq!(
            sample(&text, "palisade_config_reloads_total{result=\"failure\"}"),
            0.0,
            "{text}"
        );
        assert_eq!(log().matches(said).count(), *times, "{value}: {}", log());
    }
}

/// A reload that relaxes the listener's mTLS mode (in force for new
/// connections at once: `tests/mtls.rs`) says so at `WARN`; one that keeps
/// or tightens it does not.
#[tokio::test]
async fn a_reload_that_relaxes_the_mtls_mode_says_so() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let pki = palisade::testkit::TestPki::new();
    let certs = ScratchDir::new("reload-mode-certs");
    let (cert, key) = certs.cert("details", &pki.workload("default", "details"));
    let ca = certs.write("ca.pem", &pki.ca_pem());
    let file = |mode: &str| {
        format!(
            "{}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: details, namespace: default}}
spec: {{selector: {{matchLabels: {{app: details}}}}, mtls: {{mode: {mode}}}}}
",
            policy(&issuer, "details", true)
        )
    };
    reloads_say(
        "reload-mode",
        &["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca],
        file,
        "STRICT",
        &[("STRICT", 0), ("PERMISSIVE", 1), ("STRICT", 1), ("DISABLE", 2)],
        "mutual TLS mode relaxed for new connections",
    )
    .await;
    // Without --client-ca the listener takes no client certificate, now or
    // after a restart: no mode to wait for.
    reloads_say(
        "reload-mode-no-ca",
        &["--tls-cert", &cert, "--tls-key", &key],
        file,
        "STRICT",
        &[("STRICT", 0), ("PERMISSIVE", 0)],
        "mutual TLS mode",
    )
    .await;
}

/// A reload of a file that does not load keeps the policy in force and
/// logs one `ERROR` line naming the file, the document and the field
/// (docs/examples.md), on both frameworks.
#[tokio::test]
async fn a_file_that_does_not_load_is_one_error_line_naming_document_and_field() {
    for example in ["details", "reviews"] {
        let issuer = TestIssuer::builder().default_audience(example).start().unwrap();
        let dir = ScratchDir::new(&format!("reload-error-{example}"));
        let path = dir.write("policy.yaml", &policy(&issuer, example, false));
        let log = dir.path("stderr.log");
        let svc = common::start_logged(
            example,
            &["--config", &path, "--service", example, "--admin", "127.0.0.1:0"],
            &[],
            &log,
        );
        let admin = admin_of(&svc);
        let failures = || async {
            sample(
                &metrics(&admin).await,
                "palisade_config_reloads_total{result=\"failure\"}",
            )
        };
        // The file it started with is in force, and the gauges say so.
        let text = metrics(&admin).await;
        assert_eq!(
            sample(&text, "palisade_config_last_reload_successful"),
            1.0,
            "{text}"
        );
        let started = sample(&text, "palisade_config_last_reload_success_timestamp_seconds");
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((epoch - 600.0..=epoch).contains(&started), "{started}: {text}");
        dir.write("policy.yaml", BROKEN);
        sighup(&svc);
        wait_until("the refused reload", async || failures().await >= 1.0).await;
        // Until a file loads, the gauge stays at 0 (an alert lasts as long
        // as the file a restart would refuse), the time of the last success
        // where it was.
        let text = metrics(&admin).await;
        assert_eq!(
            sample(&text, "palisade_config_last_reload_successful"),
            0.0,
            "{text}"
        );
        assert_eq!(
            sample(&text, "palisade_config_last_reload_success_timestamp_seconds"),
            started,
            "{text}"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        let errors: Vec<_> = text.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{example}: {text}");
        for part in [
            path.as_str(),
            "document 1",
            "AuthorizationPolicy default/broken",
            "spec.action",
        ] {
            assert!(errors[0].contains(part), "{example}: {part}: {}", errors[0]);
        }
        // The policy in force stays: /list without a token is still 401.
        let res = reqwest::get(format!("http://{}/list", svc.addr)).await.unwrap();
        assert_eq!(res.status(), 401, "{example}");
        // A file that loads puts the gauge back.
        dir.write(
            "policy.yaml",
            &format!("{}# again\n", policy(&issuer, example, false)),
        );
        sighup(&svc);
        wait_until("the reload", async || {
            sample(&metrics(&admin).await, "palisade_config_last_reload_successful") == 1.0
        })
        .await;
    }
}
