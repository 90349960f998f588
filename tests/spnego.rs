//! SPNEGO against the example services as processes, with a real MIT KDC on
//! loopback (`palisade_testkit::KerberosRealm`) and real clients (`curl
//! --negotiate`). The Kerberos environment is passed to the child processes,
//! never set in this one.

use std::process::Command;

mod common;
use common::kerberos::{Realm, realm, sent_token};
use common::{example, start_with_env as start};
use serde_json::Value;

/// curl: (status, response headers lower-cased, body, verbose log).
fn curl(args: &[&str], env: &[(String, String)]) -> (u16, String, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "-D", "-", "-w", "\n%{http_code}"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap_or_else(|e| {
            panic!("curl cannot run ({e}): run ./scripts/test (it installs it) or `apt-get install curl`")
        });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    // With -D - the headers of every response come first; the body after the last blank line.
    let (headers, body) = rest.rsplit_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        status.trim().parse().unwrap_or(0),
        lower_names(headers),
        body.to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Header names lower-cased, values as sent (cookies are case-sensitive).
fn lower_names(headers: &str) -> String {
    headers
        .lines()
        .map(|l| match l.split_once(':') {
            Some((n, v)) => format!("{}:{v}", n.to_lowercase()),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn server_env(r: &Realm, with_ktname: bool) -> Vec<(String, String)> {
    r.realm
        .server_env(&r.keytab)
        .into_iter()
        .filter(|(k, _)| with_ktname || k != "KRB5_KTNAME")
        .collect()
}

fn keytab(r: &Realm) -> String {
    r.keytab.to_str().unwrap().to_owned()
}

/// The productpage example as a front-end calling `backend` on its users'
/// behalf: their delegated tickets, else S4U for Kerberos users and for
/// JWT users by `preferred_username`.
fn start_front(r: &Realm, backend: &str, env: &[(String, String)]) -> common::Service {
    start(
        "productpage",
        &[
            "--keytab",
            &keytab(r),
            "--backend",
            backend,
            "--s4u-realm",
            "EXAMPLE.TEST",
            "--s4u-claim",
            "preferred_username",
        ],
        env,
    )
}

#[test]
fn curl_negotiate_authenticates_a_kerberos_user_in_both_examples() {
    let r = realm();
    let client = r.realm.client_env(&r.ccache);
    for (name, with_ktname) in [("details", true), ("reviews", false)] {
        // reviews starts without KRB5_KTNAME: --keytab sets it (by re-executing).
        let svc = start(
            name,
            &["--keytab", &keytab(&r), "--admin", "127.0.0.1:0"],
            &server_env(&r, with_ktname),
        );
        let url = format!("http://localhost:{}/whoami", svc.port);
        let (status, headers, body, log) = curl(&["--negotiate", "-u", ":", &url], &client);
        assert_eq!(status, 200, "{name}: {headers}\n{log}");
        let who: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{name}: {body}"));
        assert_eq!(who["methods"], serde_json::json!(["spnego"]), "{name}: {who}");
        assert_eq!(who["request_principal"], "alice@EXAMPLE.TEST", "{name}");
        assert_eq!(who["kerberos"]["principal"], "alice@EXAMPLE.TEST", "{name}");
        assert_eq!(who["kerberos"]["local_name"], "alice", "{name}");
        // The mutual-authentication token on the successful response.
        let last = headers.rsplit("HTTP/1.1 ").next().unwrap_or("");
        assert!(
            last.contains("www-authenticate: Negotiate "),
            "{name}: no mutual token: {last}"
        );
        // The ticket was checked on the blocking pool, once, and is done.
        let admin = svc
            .banner
            .iter()
            .find_map(|l| l.strip_prefix("admin address "))
            .expect("the admin address");
        let (status, _, metrics, _) = curl(&[&format!("http://{admin}/metrics")], &[]);
        assert_eq!(status, 200);
        for line in [
            "palisade_spnego_blocking_calls_total 1",
            "palisade_spnego_blocking_in_flight 0",
            "palisade_authentications_total{method=\"spnego\",result=\"success\"} 1",
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "{name}: no `{line}` in\n{metrics}"
            );
        }
    }
}

#[test]
fn without_a_ticket_the_challenges_combine_bearer_and_negotiate() {
    let r = realm();
    let svc = start("details", &["--keytab", &keytab(&r)], &server_env(&r, true));
    let (status, headers, body, _) = curl(&[&format!("http://localhost:{}/list", svc.port)], &[]);
    assert_eq!(status, 401);
    assert!(
        headers
            .lines()
            .any(|l| l.trim_end() == "www-authenticate: Negotiate"),
        "{headers}"
    );
    assert!(headers.contains("www-authenticate: Bearer realm="), "{headers}");
    assert!(body.contains("\"status\":401"), "{body}");
}

#[test]
fn ntlm_replayed_foreign_and_garbage_tokens_get_401_negotiate() {
    let r = realm();
    let client = r.realm.client_env(&r.ccache);
    for name in ["details", "reviews"] {
        let svc = start(name, &["--keytab", &keytab(&r)], &server_env(&r, true));
        let url = format!("http://localhost:{}/whoami", svc.port);
        let (status, _, _, log) = curl(&["--negotiate", "-u", ":", &url], &client);
        assert_eq!(status, 200, "{name}: {log}");
        let token = sent_token(&log).expect("curl logs the token it sent");
        let ntlm = "TlRMTVNTUAABAAAAB4IIAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
        let cases = [
            ("replayed", token),
            ("NTLM", ntlm),
            ("bad base64", "%%%not-base64%%%".to_owned()),
            ("malformed ASN.1", "YIIBAAYGKwYBBQUCoA==".to_owned()),
            ("huge", "A".repeat(70_000)),
        ];
        for (what, value) in cases {
            let header = format!("Authorization: Negotiate {value}");
            let (status, headers, body, _) = curl(&["-H", &header, &url], &[]);
            if what == "huge" {
                // Refused by its size, before it is decoded.
                assert!(
                    body.contains("the Negotiate header is too large"),
                    "{name}: {body}"
                );
            }
            assert_eq!(status, 401, "{name}: {what}: {headers}");
            assert!(
                headers.contains("www-authenticate: Negotiate"),
                "{name}: {what}: {headers}"
            );
            assert!(
                !body.contains("GSS") && !body.contains("Minor"),
                "{name}: GSSAPI detail leaked: {body}"
            );
        }
        // A ticket for another service (same realm, other principal).
        let (status, headers, _, log) = curl(
            &[
                "--negotiate",
                "-u",
                ":",
                "--resolve",
                &format!("elsewhere:{}:127.0.0.1", svc.port),
                &format!("http://elsewhere:{}/whoami", svc.port),
            ],
            &client,
        );
        assert_eq!(
            status, 401,
            "{name}: a ticket for HTTP/elsewhere was accepted: {headers}\n{log}"
        );
    }
}

/// Refusals of this server's making, which refuse every user alike while
/// they last, are said at `WARN` once a minute for each cause with what to
/// do, and counted under their own reasons: a ticket for a service
/// principal the keytab lacks (a load balancer's alias), a keytab left
/// with an old key version after the service's key changed, and a client
/// that answered with NTLM. Nothing else in the log: no ticket.
#[test]
fn tickets_refused_for_causes_of_this_servers_are_said_and_counted_by_cause() {
    let r = realm();
    let client = r.realm.client_env(&r.ccache);
    let log = r.realm.dir().join("details-causes.log");
    let log = log.to_str().unwrap();
    let svc = common::start_logged(
        "details",
        &["--keytab", &keytab(&r), "--admin", "127.0.0.1:0"],
        &server_env(&r, true),
        log,
    );
    let whoami = |host: &str, client: &[(String, String)]| {
        curl(
            &[
                "--negotiate",
                "-u",
                ":",
                "--resolve",
                &format!("{host}:{}:127.0.0.1", svc.port),
                &format!("http://{host}:{}/whoami", svc.port),
            ],
            client,
        )
    };
    assert_eq!(whoami("localhost", &client).0, 200, "the keytab works at first");
    for _ in 0..2 {
        let (status, headers, _, _) = whoami("elsewhere", &client);
        assert_eq!(status, 401, "{headers}");
    }
    // The service's key changes in the realm; the keytab keeps the old
    // version. alice signs in again, so that her cache holds no ticket of
    // the old key.
    r.realm.rekey_service("HTTP/localhost").unwrap();
    let ccache = r.realm.kinit("alice", "alice-password").unwrap();
    let client = r.realm.client_env(&ccache);
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (status, headers, _, verbose) = whoami("localhost", &client);
        assert_eq!(status, 401, "a ticket of the new key version: {headers}");
        tokens.extend(sent_token(&verbose));
    }
    let ntlm = "Authorization: Negotiate TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==";
    let url = format!("http://localhost:{}/whoami", svc.port);
    assert_eq!(curl(&["-H", ntlm, &url], &[]).0, 401);

    let admin = svc
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("admin address "))
        .expect("the admin address");
    let (_, _, metrics, _) = curl(&[&format!("http://{admin}/metrics")], &[]);
    for (reason, n) in [("not_in_keytab", 2), ("keytab_key_version", 2), ("ntlm", 1)] {
        let line =
            format!("palisade_authentication_failures_total{{method=\"spnego\",reason=\"{reason}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
    let text = std::fs::read_to_string(log).unwrap();
    let warned = |needle: &str| {
        text.lines()
            .filter(|l| l.contains("WARN") && l.contains(needle))
            .collect::<Vec<_>>()
    };
    let missing = warned("cause=\"not_in_keytab\"");
    assert!(
        matches!(&missing[..], [one] if one.contains("HTTP/elsewhere") && one.contains("add its key to the keytab")),
        "{text}"
    );
    let stale = warned("cause=\"keytab_key_version\"");
    assert!(
        matches!(&stale[..], [one] if one.contains("replace the keytab")),
        "{text}"
    );
    let ntlm = warned("NTLM");
    assert!(matches!(&ntlm[..], [one] if one.contains("localhost")), "{text}");
    assert!(!tokens.is_empty());
    for token in &tokens {
        assert!(!text.contains(&token[..40]), "a ticket in the log:\n{text}");
    }
}

/// A replay cache MIT could not write (here its directory does not exist;
/// a read-only file system, a directory of another user's alike) fails at
/// start-up naming the directory and `KRB5RCACHEDIR`, where it refused
/// every ticket once the service was up.
#[test]
fn an_unwritable_replay_cache_fails_at_start_up() {
    let r = realm();
    let env: Vec<(String, String)> = server_env(&r, true)
        .into_iter()
        .map(|(k, v)| {
            if k == "KRB5RCACHEDIR" {
                (k, "/nonexistent-palisade-rcache".to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    let out = Command::new(example("details"))
        .args(["--listen", "127.0.0.1:0", "--keytab", &keytab(&r)])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent-palisade-rcache") && err.contains("KRB5RCACHEDIR"),
        "{err}"
    );
}

#[test]
fn a_missing_keytab_fails_at_start_up_with_one_line() {
    let out = Command::new(example("details"))
        .args(["--listen", "127.0.0.1:0", "--keytab", "/no/such.keytab"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/no/such.keytab"), "{err}");
}

#[test]
fn an_unusable_keytab_is_named_with_the_spnego_settings_document_with_or_without_delegation() {
    let dir = std::env::temp_dir().join(format!("palisade-spnego-unusable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keytab = dir.join("garbage.keytab");
    std::fs::write(&keytab, "not a keytab\n").unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: palisade.dev/v1alpha1\nkind: SpnegoSettings\nmetadata: {name: negotiate, namespace: default}\nspec: {}\n",
    )
    .unwrap();
    let (keytab, policy) = (keytab.to_str().unwrap(), policy.to_str().unwrap());
    for backend in [&[][..], &["--backend", "http://127.0.0.1:9"][..]] {
        let out = Command::new(example("details"))
            .args(["--listen", "127.0.0.1:0", "--keytab", keytab, "--config", policy])
            .args(backend)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{backend:?}: {err}");
        assert!(
            err.contains(&format!(
                "{policy}: document 1 (SpnegoSettings default/negotiate)"
            )),
            "{backend:?}: {err}"
        );
        assert!(
            err.contains(&format!("--keytab {keytab}: ")),
            "{backend:?}: {err}"
        );
        assert_eq!(err.matches(policy).count(), 1, "the file named once: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn write(r: &Realm, name: &str, text: &str) -> String {
    let p = r.realm.dir().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// The `name=value` of a `Set-Cookie` header in `headers`.
fn set_cookie<'h>(headers: &'h str, name: &str) -> Option<&'h str> {
    headers
        .lines()
        .filter_map(|l| l.strip_prefix("set-cookie: "))
        .find(|c| c.starts_with(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
}

#[test]
fn a_session_cookie_spares_the_negotiation_and_expires() {
    let r = realm();
    let client = r.realm.client_env(&r.ccache);
    let key = write(&r, "session.key", &"ab".repeat(32));
    let policy = write(
        &r,
        "policy.yaml",
        &format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: SpnegoSettings\nmetadata: {{name: krb}}\nspec:\n  allowedRealms: [EXAMPLE.TEST]\n  sessionCookie:\n    name: sess\n    keys: [{{id: 1, keyFile: {key}}}]\n    maxAge: 5s\n    insecureOverHttp: true\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: users}}\nspec:\n  rules: [{{from: [{{source: {{requestPrincipals: [\"*\"]}}}}]}}]\n"
        ),
    );
    for name in ["details", "reviews"] {
        let svc = start(
            name,
            &["--keytab", &keytab(&r), "--config", &policy],
            &server_env(&r, true),
        );
        let url = format!("http://localhost:{}/whoami", svc.port);
        let (status, headers, _, _) = curl(&["--negotiate", "-u", ":", &url], &client);
        assert_eq!(status, 200, "{name}");
        let cookie =
            set_cookie(&headers, "sess").unwrap_or_else(|| panic!("{name}: no session cookie: {headers}"));
        assert!(headers.contains("HttpOnly"), "{name}: {headers}");
        // No shared cache keeps a response that sets it.
        assert!(
            headers
                .lines()
                .any(|l| l.eq_ignore_ascii_case("cache-control: private")),
            "{name}: {headers}"
        );
        // The cookie alone: no ticket, no GSSAPI.
        let (status, _, body, _) = curl(&["-H", &format!("Cookie: {cookie}"), &url], &[]);
        assert_eq!(status, 200, "{name}: {body}");
        let who: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(who["kerberos"]["principal"], "alice@EXAMPLE.TEST", "{name}");
        assert_eq!(who["kerberos"]["local_name"], "alice", "{name}");
        // Tampered: refused (asked to negotiate again).
        let mut bad = cookie.to_owned();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        let (status, headers, _, _) = curl(&["-H", &format!("Cookie: {bad}"), &url], &[]);
        assert_eq!(status, 401, "{name}: a tampered cookie was accepted");
        assert!(headers.contains("www-authenticate: Negotiate"), "{name}");
        // Expired after its five seconds (long enough that a loaded
        // machine's curls above come before the end, whole seconds apart).
        std::thread::sleep(std::time::Duration::from_millis(5300));
        let (status, _, _, _) = curl(&["-H", &format!("Cookie: {cookie}"), &url], &[]);
        assert_eq!(status, 401, "{name}: an expired cookie was accepted");
    }
}

#[tokio::test]
async fn a_front_end_calls_a_back_end_as_the_user_by_delegation_and_by_s4u() {
    let r = realm();
    r.realm.allow_protocol_transition("HTTP/localhost").unwrap();
    let client = r.realm.client_env(&r.ccache);
    let env = server_env(&r, true);
    let backend = start("details", &["--keytab", &keytab(&r)], &env);
    let backend_url = format!("http://localhost:{}", backend.port);
    let front = start_front(&r, &backend_url, &env);
    let url = format!("http://localhost:{}/backend/whoami", front.port);
    // The client forwards its ticket-granting ticket: the front-end uses it.
    let (status, _, body, log) = curl(
        &["--negotiate", "-u", ":", "--delegation", "always", &url],
        &client,
    );
    assert_eq!(status, 200, "{body}\n{log}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["via"], "delegation", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["backend"]["kerberos"]["principal"], "alice@EXAMPLE.TEST", "{v}");
    // No delegation: protocol transition (S4U2Self) with the service's key.
    let (status, _, body, _) = curl(&["--negotiate", "-u", ":", &url], &client);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["via"], "s4u", "{v}");
    assert_eq!(v["backend"]["kerberos"]["principal"], "alice@EXAMPLE.TEST", "{v}");
    // A JWT user: the same, with the token's user name in the realm.
    let endpoint = front
        .banner
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.ends_with("/protocol/openid-connect/token"))
        })
        .expect("the demo banner names the token endpoint")
        .to_owned();
    let form = "grant_type=password&client_id=demo&client_secret=demo-secret&username=alice&password=alice";
    let token = common::access_token(&endpoint, form).await;
    let (status, _, body, _) = curl(&["-H", &format!("Authorization: Bearer {token}"), &url], &[]);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["via"], "s4u", "{v}");
    assert_eq!(v["backend"]["kerberos"]["principal"], "alice@EXAMPLE.TEST", "{v}");
    // Nobody: nothing to call the back-end as.
    let (status, _, _, _) = curl(&[&url], &[]);
    assert_eq!(status, 401);
}

/// A back-end that answers without proving it holds the service's key (RFC
/// 4559 §5's mutual authentication): an impostor on the name the ticket is
/// for. Its answer is not used, whatever it sends: no token, a token that
/// is not one, or the real back-end's token replayed from another call.
#[test]
fn a_back_end_that_does_not_prove_itself_is_not_believed() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};
    let r = realm();
    r.realm.allow_protocol_transition("HTTP/localhost").unwrap();
    let client = r.realm.client_env(&r.ccache);
    let env = server_env(&r, true);
    // The real back-end's mutual-authentication token, from a call of its own.
    let backend = start("details", &["--keytab", &keytab(&r)], &env);
    let (status, headers, _, _) = curl(
        &[
            "--negotiate",
            "-u",
            ":",
            &format!("http://localhost:{}/whoami", backend.port),
        ],
        &client,
    );
    assert_eq!(status, 200);
    let replayed = headers
        .lines()
        .find_map(|l| l.strip_prefix("www-authenticate: Negotiate "))
        .expect("the back-end proves itself to curl")
        .trim()
        .to_owned();
    drop(backend);
    // The impostor answers every call with what the user would be shown,
    // and the status and header lines of the case under way.
    let impostor = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = impostor.local_addr().unwrap().port();
    let challenge: Arc<Mutex<(u16, String)>> = Arc::new(Mutex::new((200, String::new())));
    let calls = Arc::new(Mutex::new(0_usize));
    {
        let (challenge, calls) = (challenge.clone(), calls.clone());
        std::thread::spawn(move || {
            for stream in impostor.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                *calls.lock().unwrap() += 1;
                let body = r#"{"kerberos":{"principal":"alice@EXAMPLE.TEST"}}"#;
                let (status, extra) = challenge.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    }
    let front = start_front(&r, &format!("http://localhost:{port}"), &env);
    let url = format!("http://localhost:{}/backend/whoami", front.port);
    let negotiate = |value: &str| format!("www-authenticate: {value}\r\n");
    for (name, status, sent) in [
        ("no token", 200, String::new()),
        ("a challenge only", 200, negotiate("Negotiate")),
        ("not a token", 200, negotiate("Negotiate YWJj")),
        (
            "the real back-end's token, replayed",
            200,
            negotiate(&format!("Negotiate {replayed}")),
        ),
        // Not a gRPC call: a gRPC status does not make it an error answer.
        (
            "a gRPC error status on a JSON answer",
            200,
            "grpc-status: 2\r\n".to_owned(),
        ),
        ("a redirect", 302, "location: http://localhost:1/\r\n".to_owned()),
    ] {
        *challenge.lock().unwrap() = (status, sent);
        let before = *calls.lock().unwrap();
        let (status, _, body, _) = curl(&["--negotiate", "-u", ":", &url], &client);
        assert_eq!(
            *calls.lock().unwrap(),
            before + 1,
            "{name}: the impostor was called"
        );
        assert_eq!(status, 502, "{name}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["error"], "the back-end did not prove its identity",
            "{name}: {v}"
        );
        assert_eq!(v["via"], "s4u", "{name}: {v}");
    }
    // An error answer need not prove anything (a Kerberos error token in
    // it is not checked): the caller is shown it as a failure.
    for sent in [String::new(), negotiate("Negotiate YWJj")] {
        *challenge.lock().unwrap() = (403, sent);
        let (status, _, body, _) = curl(&["--negotiate", "-u", ":", &url], &client);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], 403, "{v}");
    }
}

#[test]
fn mapped_roles_and_groups_reach_the_authorization_engine() {
    let r = realm();
    r.realm.add_user("bob", "bob-password").unwrap();
    let bob = r.realm.kinit("bob", "bob-password").unwrap();
    let policy = write(
        &r,
        "roles.yaml",
        "apiVersion: palisade.dev/v1alpha1\nkind: SpnegoSettings\nmetadata: {name: krb}\nspec:\n  roles: {alice@EXAMPLE.TEST: [admin]}\n  groups: {\"*@EXAMPLE.TEST\": [staff]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: roles}\nspec:\n  rules:\n  - to: [{operation: {paths: [/whoami]}}]\n    when: [{key: \"request.auth.claims[groups]\", values: [staff]}]\n  - to: [{operation: {paths: [/list]}}]\n    when: [{key: \"request.auth.claims[roles]\", values: [admin]}]\n",
    );
    for name in ["details", "reviews"] {
        let svc = start(
            name,
            &["--keytab", &keytab(&r), "--config", &policy],
            &server_env(&r, true),
        );
        let base = format!("http://localhost:{}", svc.port);
        let alice = r.realm.client_env(&r.ccache);
        let bob = r.realm.client_env(&bob);
        let get = |path: &str, env: &[(String, String)]| {
            curl(&["--negotiate", "-u", ":", &format!("{base}{path}")], env).0
        };
        assert_eq!(
            get("/list", &alice),
            200,
            "{name}: alice has the mapped role admin"
        );
        assert_eq!(get("/list", &bob), 403, "{name}: bob has no role");
        assert_eq!(get("/whoami", &bob), 200, "{name}: the realm-wide group staff");
    }
}

#[tokio::test]
async fn a_kdc_that_does_not_answer_costs_a_bounded_wait_and_a_clear_error() {
    let r = realm();
    // The realm's configuration, its KDC replaced by a silent one: for the
    // services only (the client keeps the real KDC).
    let (silent_conf, _silent) = r.realm.silent_krb5_conf().unwrap();
    let silent_conf = silent_conf.display().to_string();
    let env: Vec<(String, String)> = server_env(&r, true)
        .into_iter()
        .map(|(k, v)| {
            if k == "KRB5_CONFIG" {
                (k, silent_conf.clone())
            } else {
                (k, v)
            }
        })
        .collect();
    assert!(env.iter().any(|(k, _)| k == "KRB5_CONFIG"), "{env:?}");
    let backend = start("details", &["--keytab", &keytab(&r)], &server_env(&r, true));
    let log = r.realm.dir().join("productpage.log");
    let log = log.to_str().unwrap();
    let front = common::start_logged(
        "productpage",
        &[
            "--keytab",
            &keytab(&r),
            "--backend",
            &format!("http://localhost:{}", backend.port),
            "--s4u-realm",
            "EXAMPLE.TEST",
            "--s4u-claim",
            "preferred_username",
            "--upstream-timeout",
            "2",
        ],
        &env,
        log,
    );
    // A ticket the user brings is accepted with the keytab alone: no KDC.
    let client = r.realm.client_env(&r.ccache);
    let whoami = format!("http://localhost:{}/whoami", front.port);
    let (status, _, body, _) = curl(&["--negotiate", "-u", ":", &whoami], &client);
    assert_eq!(status, 200, "{body}");
    // S4U needs the KDC: a JWT user's call to the back-end gets a 502 once
    // the ticket's time is up (2 s), not MIT Kerberos' half minute.
    let endpoint = front
        .banner
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.ends_with("/protocol/openid-connect/token"))
        })
        .expect("the demo banner names the token endpoint")
        .to_owned();
    let form = "grant_type=password&client_id=demo&client_secret=demo-secret&username=alice&password=alice";
    let token = common::access_token(&endpoint, form).await;
    let url = format!("http://localhost:{}/backend/whoami", front.port);
    let started = std::time::Instant::now();
    let (status, _, body, _) = curl(&["-H", &format!("Authorization: Bearer {token}"), &url], &[]);
    let took = started.elapsed();
    assert_eq!(status, 502, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "no ticket for the back-end", "{v}");
    assert!(took >= std::time::Duration::from_millis(1500), "{took:?}");
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");
    // For as long again, calls fail at once: an outage does not fill the
    // blocking pool with the library's half-minute waits.
    let started = std::time::Instant::now();
    let (status, _, body, _) = curl(&["-H", &format!("Authorization: Bearer {token}"), &url], &[]);
    assert_eq!(status, 502, "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // One clear line says why; the second call's failure, the same outage
    // (`the KDC did not answer a moment ago`), is said at debug level: a
    // caller cannot add a warning per request.
    let logged = std::fs::read_to_string(log).unwrap();
    let warned: Vec<_> = logged
        .lines()
        .filter(|l| l.contains("cannot get a ticket for the back-end") && l.contains(" WARN "))
        .collect();
    assert!(
        matches!(&warned[..], [one] if one.contains("is the KDC reachable?")),
        "{logged}"
    );
    // The service is still well.
    let (status, _, _, _) = curl(&["--negotiate", "-u", ":", &whoami], &client);
    assert_eq!(status, 200);
}

/// A browser answers `401 Negotiate` with a ticket by itself, whatever page
/// started the request: a ticket authenticates a `POST` that another origin
/// started no more than a cookie does (the answer is 403, saying so), while the
/// same `POST` of this origin's, or of a client that is no browser, is
/// served.
#[test]
fn a_ticket_does_not_authenticate_a_post_another_origin_started() {
    let r = realm();
    let client = r.realm.client_env(&r.ccache);
    for name in ["details", "reviews"] {
        let svc = start(name, &["--keytab", &keytab(&r)], &server_env(&r, true));
        let url = format!("http://localhost:{}/list", svc.port);
        let post = |site: Option<&str>| {
            let mut args = vec!["--negotiate", "-u", ":", "-X", "POST", "--data", "{}"];
            args.extend(["-H", "content-type: application/json"]);
            let header = site.map(|s| format!("sec-fetch-site: {s}"));
            if let Some(h) = &header {
                args.extend(["-H", h.as_str()]);
            }
            args.push(&url);
            curl(&args, &client)
        };
        for (site, status) in [
            (None, 201),
            (Some("same-origin"), 201),
            (Some("same-site"), 403),
            (Some("cross-site"), 403),
        ] {
            let (got, headers, _, log) = post(site);
            assert_eq!(got, status, "{name}, {site:?}: {headers}\n{log}");
        }
    }
}
