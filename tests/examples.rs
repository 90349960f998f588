//! The example services, run as processes and called over HTTP, as the
//! outside checks of the interface in docs/examples.md do.

use std::process::Command;
use std::time::Duration;

use palisade::testkit::TestIssuer;

mod common;
use common::{Service, example, start};
use serde_json::Value;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn token_from(endpoint: &str, client_id: &str, secret: &str) -> String {
    common::access_token(
        endpoint,
        &format!("grant_type=client_credentials&client_id={client_id}&client_secret={secret}"),
    )
    .await
}

async fn check_contract_routes(svc: &Service, service: &str, item_route: &str, token: &str) {
    let c = client();
    let base = format!("http://{}", svc.addr);
    let res = c.get(format!("{base}/list")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["www-authenticate"],
        format!("Bearer realm=\"{service}\"")
    );
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = c
        .get(format!("{base}/list"))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );

    let res = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok");

    let res = c
        .get(format!("{base}/list"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.json::<Value>().await.unwrap().is_array());
    let res = c
        .post(format!("{base}/list"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = c
        .get(format!("{base}/{item_route}/7"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = c
        .get(format!("{base}/whoami"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let who: Value = res.json().await.unwrap();
    assert_eq!(who["authenticated"], true);
    assert_eq!(who["methods"], serde_json::json!(["jwt"]));
    assert_eq!(who["subject"], "demo");
    for field in [
        "request_principal",
        "issuer",
        "audiences",
        "authorized_party",
        "realm_roles",
        "client_roles",
        "scopes",
        "claims",
        "peer",
        "kerberos",
    ] {
        assert!(who.get(field).is_some(), "/whoami lacks {field}");
    }
}

#[tokio::test]
async fn details_and_reviews_demo_mode_follow_the_contract() {
    for (name, item) in [
        ("details", "details"),
        ("reviews", "reviews"),
        ("productpage", "details"),
    ] {
        let svc = start(name, &[]);
        let endpoint = svc
            .banner
            .iter()
            .find_map(|l| {
                l.split_whitespace()
                    .find(|w| w.ends_with("/protocol/openid-connect/token"))
            })
            .unwrap_or_else(|| panic!("{name}: no token command in the banner: {:?}", svc.banner))
            .to_owned();
        let token = token_from(&endpoint, "demo", "demo-secret").await;
        check_contract_routes(&svc, name, item, &token).await;
    }
}

#[tokio::test]
async fn a_policy_file_configures_the_service() {
    let issuer = TestIssuer::builder()
        .default_audience("reviews")
        .client("demo", "s3cret")
        .start()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("palisade-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules: [{{issuer: {}, audiences: [reviews]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: shop}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
  - to: [{{operation: {{paths: [/healthz]}}}}]
",
            issuer.issuer()
        ),
    )
    .unwrap();
    let svc = start(
        "reviews",
        &["--config", file.to_str().unwrap(), "--namespace", "shop"],
    );
    let token = token_from(&issuer.token_endpoint(), "demo", "s3cret").await;
    check_contract_routes(&svc, "reviews", "reviews", &token).await;
    // In another namespace the documents do not apply: Istio allows everything.
    let other = start(
        "reviews",
        &["--config", file.to_str().unwrap(), "--namespace", "elsewhere"],
    );
    let res = client()
        .get(format!("http://{}/list", other.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_configuration_exits_with_one_line_naming_file_document_and_field() {
    let dir = std::env::temp_dir().join(format!("palisade-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ok}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo}\nspec:\n  rules:\n  - from: [{source: {requestPrincipal: [\"*\"]}}]\n",
    )
    .unwrap();
    for name in ["details", "reviews"] {
        let out = Command::new(example(name))
            .args(["--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} accepted a bad file");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: {stderr}");
        assert!(lines[0].contains(file.to_str().unwrap()), "{stderr}");
        assert!(lines[0].contains("document 2"), "{stderr}");
        assert!(
            lines[0].contains("spec.rules[0].from[0].source.requestPrincipal"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
    // A file start-up warns of (a RequestAuthentication alone: requests
    // without credentials allowed), then a TLS file that is not there:
    // the error alone.
    let warned = dir.join("warned.yaml");
    std::fs::write(
        &warned,
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec:\n  jwtRules: [{issuer: https://issuer.example, jwksUri: 'http://127.0.0.1:9/jwks'}]\n",
    )
    .unwrap();
    let warned = warned.to_str().unwrap();
    for name in ["details", "reviews"] {
        let out = Command::new(example(name))
            .args(["--config", warned])
            .args(["--tls-cert", "/no/such/cert.pem", "--tls-key", "/no/such/key.pem"])
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains("/no/such/cert.pem"), "{name}: {stderr}");
        // Started, the same file's warning is said.
        let log = dir.join(format!("{name}.log"));
        let svc = common::start_logged(
            name,
            &["--config", warned],
            &[("RUST_LOG".to_owned(), "info".to_owned())],
            log.to_str().unwrap(),
        );
        let said = std::fs::read_to_string(&log).unwrap();
        assert!(
            said.contains("requests without credentials are allowed"),
            "{name}: {said}"
        );
        drop(svc);
    }
    for args in [
        &["--listen", "nowhere"][..],
        &["--bogus"],
        &["--config", "/no/such/file.yaml"],
    ] {
        let out = Command::new(example("details")).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).lines().count(),
            1,
            "{args:?}"
        );
    }
    // S4U for JWT users: its claim, realm and (with a file) issuer are
    // named, nothing is assumed; each refusal names the flag.
    let s4u = ["--keytab", "/k", "--backend", "http://b"];
    let file = file.to_str().unwrap();
    for (args, names) in [
        (
            &["--s4u-realm", "EXAMPLE.TEST"][..],
            "--s4u-realm needs --s4u-claim",
        ),
        (&["--s4u-claim", "upn"], "--s4u-claim needs --s4u-realm"),
        (
            &[
                "--s4u-realm",
                "EXAMPLE.TEST",
                "--s4u-claim",
                "upn",
                "--config",
                file,
            ],
            "needs --s4u-issuer",
        ),
        (&["--s4u-realm", "", "--s4u-claim", "upn"], "--s4u-realm :"),
        (
            &["--s4u-realm", "EXAMPLE.TEST", "--s4u-claim", "up n"],
            "--s4u-claim up n:",
        ),
        (&["--s4u-realm", "A@B", "--s4u-claim", "upn"], "--s4u-realm A@B:"),
        (
            &[
                "--s4u-realm",
                "EXAMPLE.TEST",
                "--s4u-claim",
                "upn",
                "--s4u-issuer",
                "",
            ],
            "--s4u-issuer: empty",
        ),
    ] {
        let out = Command::new(example("details"))
            .args(s4u.iter().chain(args))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
    }
    let out = Command::new(example("details"))
        .args(["--s4u-realm", "EXAMPLE.TEST", "--s4u-claim", "upn"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("need --backend"));
    std::fs::remove_dir_all(&dir).ok();
}

/// SIGTERM and SIGINT stop every program, exiting 0 (docs/examples.md).
#[test]
fn sigterm_and_sigint_shut_down_gracefully() {
    for name in ["details", "reviews", "productpage", "ratings"] {
        for signal in ["-TERM", "-INT"] {
            let mut svc = start(name, &[]);
            let pid = svc.child.id().to_string();
            assert!(
                Command::new("kill")
                    .args([signal, &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            let mut exited = None;
            for _ in 0..100 {
                if let Some(status) = svc.child.try_wait().unwrap() {
                    exited = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let status = exited.unwrap_or_else(|| panic!("{name} did not stop on {signal}"));
            assert!(status.success(), "{name} {signal}: {status:?}");
        }
    }
}

#[test]
fn every_sample_policy_compiles_for_the_example_services() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // `NAME.cases.yaml`: the decision cases of `palisade test`, not a policy.
        if path.to_string_lossy().ends_with(".cases.yaml") {
            continue;
        }
        let set = palisade::core::policy::PolicySet::from_file(&path).unwrap();
        // The examples register `demo-ext-authz` for CUSTOM policies.
        let authorizers = palisade::core::authz::ExternalAuthorizers::new().register(
            "demo-ext-authz",
            ["x-ext-authz"],
            |_c: palisade::core::authz::CheckRequest| async { palisade::core::authz::ExternalDecision::Deny },
        );
        for service in ["details", "reviews"] {
            let workload = palisade::core::policy::Workload::new(service, "default");
            palisade::guard_builder_from_policy(&set, &workload, &authorizers)
                .unwrap_or_else(|e| panic!("{e}"))
                .build()
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        seen += 1;
    }
    assert!(seen >= 10, "sample policies missing from {}", dir.display());
}

#[test]
fn jwks_uri_and_inline_jwks_together_are_refused() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec:\n  jwtRules:\n  - issuer: https://idp.example\n    jwksUri: https://idp.example/certs\n    jwks: '{\"keys\":[]}'\n";
    // Refused when the file loads, whichever workload the document is for.
    let err = palisade::core::policy::PolicySet::from_yaml_str(yaml, "both.yaml").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("spec.jwtRules[0].jwks"), "{err}");
}

#[tokio::test]
async fn hostile_input_gets_a_4xx_never_a_5xx_or_a_hang() {
    for name in ["details", "reviews"] {
        let svc = start(name, &[]);
        let c = client();
        let base = format!("http://{}", svc.addr);
        let huge = "A".repeat(200_000);
        let garbage = [
            format!("Bearer {huge}"),
            "Bearer ....".to_owned(),
            "Bearer e30.e30.e30.e30.e30".to_owned(),
            "Negotiate TlRMTVNTUAABAAAAB4IIAAAAAAAAAAAAAAAAAAAAAAA=".to_owned(),
            "bearer".to_owned(),
        ];
        for value in garbage {
            let res = c
                .get(format!("{base}/list"))
                .header("authorization", value.as_str())
                .send()
                .await;
            let status = res.map(|r| r.status().as_u16()).unwrap_or(0);
            assert!(
                (400..500).contains(&status),
                "{name}: {} bytes -> {status}",
                value.len()
            );
        }
        let res = c
            .get(format!("{base}/list?access_token={}", "x".repeat(10_000)))
            .send()
            .await
            .unwrap();
        // Istio's default locations include `access_token`: an oversized one is refused, not parsed.
        assert_eq!(res.status(), 401, "{name}");
        let challenge = res.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(
            challenge.contains("the token is too large"),
            "{name}: {challenge}"
        );
    }
}

/// Each authorization sample in `examples/policies/`, behind a
/// RequestAuthentication for the test issuer, enforced by `details` (axum)
/// and `reviews` (actix-web) as processes over HTTP.
#[tokio::test]
async fn sample_authorization_policies_are_enforced_by_both_examples() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let jwt = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: test-issuer}}
spec:
  jwtRules: [{{issuer: {}, jwksUri: {}, audiences: [details, reviews]}}]
---
",
        issuer.issuer(),
        issuer.jwks_uri()
    );
    let plain = issuer.token().subject("bob").realm_roles(&["user"]).sign();
    let editor = issuer.token().subject("eve").realm_roles(&["editor"]).sign();
    let client_admin = issuer
        .token()
        .subject("cat")
        .client_roles("reviews", &["admin"])
        .sign();
    let exporter = issuer.token().subject("ed").scope("read export").sign();
    let writer = issuer
        .token()
        .subject("wes")
        .claim("groups", serde_json::json!(["writers"]))
        .sign();
    type Row<'a> = (&'a str, &'a str, Option<&'a str>, &'a [(&'a str, &'a str)], u16);
    let table: Vec<(&str, Vec<Row<'_>>)> = vec![
        (
            "allow-by-role.yaml",
            vec![
                ("GET", "/healthz", None, &[], 200),
                ("GET", "/list", None, &[], 401),
                ("GET", "/list", Some(&plain), &[], 200),
                ("POST", "/list", Some(&plain), &[], 403),
                ("POST", "/list", Some(&editor), &[], 201),
                ("POST", "/list", Some(&client_admin), &[], 201),
            ],
        ),
        (
            "path-templates.yaml",
            vec![
                ("GET", "/ITEM/7", Some(&plain), &[], 200),
                ("GET", "/ITEM/7/export/all/csv", Some(&plain), &[], 403),
                ("GET", "/ITEM/7/x/../export/all", Some(&plain), &[], 403),
                ("GET", "/ITEM/7/export/all/csv", Some(&exporter), &[], 404),
            ],
        ),
        (
            "dry-run.yaml",
            vec![
                ("POST", "/list", Some(&plain), &[], 201),
                ("GET", "/list", None, &[], 200),
            ],
        ),
        (
            "behind-proxy.yaml",
            vec![
                ("GET", "/list", None, &[("x-forwarded-for", "203.0.113.9")], 403),
                (
                    "GET",
                    "/list",
                    None,
                    &[("x-forwarded-for", "203.0.113.9, 198.51.100.2")],
                    200,
                ),
                ("GET", "/list", None, &[], 200),
            ],
        ),
        (
            "rbac-v1alpha1.yaml",
            vec![
                ("GET", "/list", None, &[], 401),
                ("GET", "/list", Some(&plain), &[], 200),
                ("POST", "/list", Some(&plain), &[], 403),
                ("POST", "/list", Some(&writer), &[], 201),
            ],
        ),
        (
            "external-authz.yaml",
            vec![
                ("GET", "/list", None, &[], 200),
                ("POST", "/list", Some(&plain), &[], 403),
                ("POST", "/list", Some(&plain), &[("x-ext-authz", "allow")], 201),
            ],
        ),
        (
            "mesh-peers.yaml",
            vec![
                ("GET", "/list", None, &[], 403),
                ("GET", "/list", Some(&plain), &[], 403),
            ],
        ),
    ];
    let dir = std::env::temp_dir().join(format!("palisade-samples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let c = client();
    for (sample, rows) in &table {
        let file = dir.join(sample);
        let text = std::fs::read_to_string(samples.join(sample)).unwrap();
        std::fs::write(&file, format!("{jwt}{text}")).unwrap();
        for (name, item) in [("details", "details"), ("reviews", "reviews")] {
            let svc = start(name, &["--config", file.to_str().unwrap()]);
            for (method, path, token, headers, want) in rows {
                let url = format!("http://{}{}", svc.addr, path.replace("ITEM", item));
                let mut req = c.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                for (k, v) in *headers {
                    req = req.header(*k, *v);
                }
                let res = req.send().await.unwrap();
                assert_eq!(
                    res.status().as_u16(),
                    *want,
                    "{sample} on {name}: {method} {path}"
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The benchmarking modes are what `benches/wrk.sh` compares against, so
/// each must serve the same routes without authentication (`--no-guard`,
/// and `--floor` behind its two edits) and say so on stderr: a guarded
/// service started by mistake with either is never silent.
#[tokio::test]
async fn benchmarking_modes_serve_without_authentication_and_say_so() {
    let dir = palisade::testkit::TempDir::new("examples-bench-modes");
    for name in ["details", "reviews"] {
        for mode in ["--no-guard", "--floor"] {
            let log = dir.path().join(format!("{name}{mode}.log"));
            let svc = common::start_logged(name, &[mode], &[], log.to_str().unwrap());
            let list = client()
                .get(format!("http://{}/list", svc.addr))
                .send()
                .await
                .unwrap();
            assert_eq!(list.status(), 200, "{name} {mode}: /list without a token");
            let who: Value = client()
                .get(format!("http://{}/whoami", svc.addr))
                .bearer_auth("not-a-token")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(who["authenticated"], false, "{name} {mode}: {who}");
            let stderr = std::fs::read_to_string(&log).unwrap();
            assert!(
                stderr.contains(&format!("warning: {mode}: serving without authentication")),
                "{name} {mode}: no warning on stderr: {stderr}"
            );
        }
    }
}

/// What the policy file asks for and the flags leave off is said at
/// start-up: SPNEGO settings without `--keytab`, mutual TLS without
/// `--client-ca`.
#[test]
fn file_settings_the_flags_leave_off_are_said_at_start_up() {
    let dir = palisade::testkit::TempDir::new("examples-flags-off");
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        "apiVersion: palisade.dev/v1alpha1
kind: SpnegoSettings
metadata: {name: kerberos, namespace: default}
spec: {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
",
    )
    .unwrap();
    for name in ["details", "reviews"] {
        let log = dir.path().join(format!("{name}.log"));
        let svc = common::start_logged(
            name,
            &["--config", file.to_str().unwrap()],
            &[],
            log.to_str().unwrap(),
        );
        drop(svc);
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert!(
            stderr.contains("SpnegoSettings apply to this workload, but SPNEGO is off: --keytab turns it on"),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains("PeerAuthentication asks for mutual TLS on this port, but without --client-ca"),
            "{name}: {stderr}"
        );
    }
}
