//! The built `palisade` binary on the repository's own policy files:
//! `check` and `test` pass on every sample and its case file; broken files,
//! wrong expectations and `explain`'s answers are checked field by field.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The workspace root: the samples' paths are relative to it.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn palisade(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the palisade binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every sample policy and its case file, relative to the root.
fn samples() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("examples/policies")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".yaml")
            && !stem.ends_with(".cases")
        {
            out.push((
                format!("examples/policies/{name}"),
                format!("examples/policies/{stem}.cases.yaml"),
            ));
        }
    }
    out.sort();
    out.push((
        "examples/bookinfo/mesh.yaml".into(),
        "examples/bookinfo/mesh.cases.yaml".into(),
    ));
    out
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("palisade-cli-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_sample_checks_and_passes_its_cases() {
    let samples = samples();
    assert!(samples.len() >= 11, "{samples:?}");
    for (policy, cases) in &samples {
        let check = palisade(&["check", policy]);
        assert_eq!(
            check.status.code(),
            Some(0),
            "check {policy}: {}",
            text(&check.stderr)
        );
        assert!(
            text(&check.stdout).contains(": ok: "),
            "{policy}: {}",
            text(&check.stdout)
        );

        let written = std::fs::read_to_string(root().join(cases))
            .unwrap_or_else(|e| panic!("{cases}: every sample has a case file: {e}"));
        // dry-run.yaml refuses nothing: its denials are what the dry run would do.
        assert!(
            written.contains("expect: allow")
                && (written.contains("expect: deny") || written.contains("dry_run: deny")),
            "{cases} has allow and deny cases"
        );
        let n = written.matches("expect:").count();
        let test = palisade(&["test", policy, cases]);
        let out = text(&test.stdout);
        assert_eq!(
            test.status.code(),
            Some(0),
            "test {cases}: {out}{}",
            text(&test.stderr)
        );
        assert!(
            out.ends_with(&format!("{n} passed, 0 failed\n")),
            "{cases}: {out}"
        );
        assert!(!out.contains("FAILED"), "{cases}: {out}");
        // Nothing taken for granted but what cannot be done offline: no
        // claims ignored, no unknown port or address, no workload guessed.
        // (A case without a peer on a STRICT port decides the policy the
        // handshake stands before, and is said to.)
        let err = text(&test.stderr);
        assert!(
            err.lines().all(
                |l| l.contains("a CUSTOM policy's external authorizer is not asked offline")
                    || l.contains("its PeerAuthentication makes the port STRICT")
            ),
            "{cases}: {err}"
        );
    }
}

#[test]
fn the_bookinfo_cases_reach_every_rule_of_the_mesh() {
    let test = palisade(&[
        "test",
        "examples/bookinfo/mesh.yaml",
        "examples/bookinfo/mesh.cases.yaml",
    ]);
    let out = text(&test.stdout);
    let n = std::fs::read_to_string(root().join("examples/bookinfo/mesh.cases.yaml"))
        .unwrap()
        .matches("expect:")
        .count();
    assert_eq!(test.status.code(), Some(0), "{out}{}", text(&test.stderr));
    assert!(out.ends_with(&format!("{n} passed, 0 failed\n")), "{out}");
    assert!(!out.contains("not reached"), "{out}");
}

#[test]
fn a_broken_file_fails_check_naming_the_field() {
    let dir = Scratch::new("broken");
    // A file a failed generator left empty: refused, as a service refuses
    // it (loaded, it would allow every request), where a file of comments
    // says "no policy".
    let empty = dir.file("empty.yaml", "\n");
    let check = palisade(&["check", &empty]);
    let err = text(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{err}");
    assert!(err.contains("empty.yaml") && err.contains("# no policy"), "{err}");
    let comments = dir.file("none.yaml", "# no policy\n");
    assert_eq!(palisade(&["check", &comments]).status.code(), Some(0));

    let sample = std::fs::read_to_string(root().join("examples/policies/deny-admin.yaml")).unwrap();
    let typo = dir.file("typo.yaml", &sample.replacen("action: DENY", "action: DENNY", 1));
    let check = palisade(&["check", &typo]);
    let err = text(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("document 2 (AuthorizationPolicy default/admin-needs-role): field `spec.action`"),
        "{err}"
    );

    // Every document that does not load is a line of its own, in file
    // order: here a second typo after sixteen documents that load.
    let mesh = std::fs::read_to_string(root().join("examples/bookinfo/mesh.yaml")).unwrap();
    let two = dir.file(
        "two.yaml",
        &format!(
            "{}---\n{mesh}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p}}\nspec: {{mtls: {{mode: STRICTT}}}}\n",
            sample.replacen("action: DENY", "action: DENNY", 1)
        ),
    );
    let check = palisade(&["check", &two]);
    let err = text(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].contains("field `spec.action`"), "{err}");
    assert!(
        lines[1].contains("(PeerAuthentication default/p): field `spec.mtls.mode`"),
        "{err}"
    );

    // A case file given to `check` says so, after the loader's own line.
    let cases = root().join("examples/policies/deny-admin.cases.yaml");
    let check = palisade(&["check", cases.to_str().unwrap()]);
    let err = text(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.lines().nth(1).unwrap().starts_with("hint: ")
            && err.contains("is a case file: `palisade test POLICY.yaml"),
        "{err}"
    );

    // Wrong only for the workloads it applies to, when compiled for them.
    let unbound = dir.file(
        "unbound.yaml",
        &mesh.replace(
            "roleRef: {kind: ServiceRole, name: reviews-reader}",
            "roleRef: {kind: ServiceRole, name: reviews-writer}",
        ),
    );
    let check = palisade(&["check", &unbound]);
    let err = text(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("field `spec.roleRef.name`: no ServiceRole `reviews-writer`"),
        "{err}"
    );
    assert!(
        err.contains("(for default/details, default/productpage, default/ratings, default/reviews)"),
        "{err}"
    );

    // SpnegoSettings, checked without a keytab or a Kerberos library: two
    // for one workload, and a session cookie named as sign-in's.
    let spnego = |name: &str, cookie: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1
kind: SpnegoSettings
metadata: {{name: {name}}}
spec: {{sessionCookie: {{name: {cookie}, keys: [{{id: 1, keyFile: /nonexistent}}]}}}}
"
        )
    };
    let login = "apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {name: login}
spec: {selector: {matchLabels: {app: details}}, issuer: https://kc.example/realms/shop, clientId: details}
";
    for (file, field) in [
        (
            format!("{}---\n{}", spnego("a", "neg"), spnego("b", "neg2")),
            "document 2 (SpnegoSettings default/b): field `kind`",
        ),
        (
            format!("{}---\n{login}", spnego("a", "palisade_session_1")),
            "field `spec.sessionCookie.name`: `palisade_session_1` is also a cookie of browser sign-in",
        ),
    ] {
        let check = palisade(&["check", &dir.file("spnego.yaml", &file)]);
        let err = text(&check.stderr);
        assert_eq!(check.status.code(), Some(1), "{err}");
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn a_wrong_expectation_fails_test_with_the_case_and_the_deciding_rule() {
    let dir = Scratch::new("wrong");
    let cases = std::fs::read_to_string(root().join("examples/policies/deny-admin.cases.yaml")).unwrap();
    let n = cases.matches("expect:").count();
    let wrong = cases.replacen(
        "- name: nobody may delete, not even an admin\n  request: DELETE /list\n  claims: *root\n  expect: deny",
        "- name: nobody may delete, not even an admin\n  request: DELETE /list\n  claims: *root\n  expect: allow",
        1,
    );
    assert_ne!(wrong, cases, "the case to break is in the sample");
    let wrong = dir.file("wrong.cases.yaml", &wrong);
    let test = palisade(&["test", "examples/policies/deny-admin.yaml", &wrong]);
    let out = text(&test.stdout);
    assert_eq!(test.status.code(), Some(1), "{out}");
    assert!(out.ends_with(&format!("{} passed, 1 failed\n", n - 1)), "{out}");
    assert!(
        out.contains("FAILED nobody may delete, not even an admin (default/*): expected allow 403, got deny 403 (denied by DENY policy default/no-delete rule 0)"),
        "{out}"
    );
}

#[test]
fn rules_no_case_reaches_are_listed() {
    let dir = Scratch::new("coverage");
    let cases = dir.file(
        "some.cases.yaml",
        "cases:\n- {name: health, request: GET /healthz, expect: allow}\n",
    );
    let test = palisade(&["test", "examples/policies/require-jwt.yaml", &cases]);
    let out = text(&test.stdout);
    assert_eq!(test.status.code(), Some(0), "{out}");
    assert_eq!(
        out,
        "not reached: default/require-jwt rule 0\n1 passed, 0 failed\n"
    );
}

#[test]
fn a_bad_case_file_names_the_file_and_the_case() {
    let dir = Scratch::new("badcase");
    let cases = dir.file(
        "bad.cases.yaml",
        "cases:\n- {name: fine, request: GET /healthz, expect: allow}\n- {name: typo, request: GET /list, expect: maybe}\n",
    );
    let test = palisade(&["test", "examples/policies/require-jwt.yaml", &cases]);
    let err = text(&test.stderr);
    assert_eq!(test.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bad.cases.yaml: case 2 (typo): field `expect`: unknown variant `maybe`"),
        "{err}"
    );
    assert_eq!(text(&test.stdout), "");

    // A token pasted where a map goes (headers, claims) is not echoed.
    for case in [
        "{request: GET /, headers: 'Authorization: Bearer SECRET-TOKEN', expect: allow}",
        "{request: GET /, claims: SECRET-TOKEN, expect: allow}",
        "{request: GET /, headers: {authorization: [Bearer, SECRET-TOKEN]}, expect: allow}",
    ] {
        let cases = dir.file("pasted.cases.yaml", &format!("cases:\n- {case}\n"));
        let test = palisade(&["test", "examples/policies/require-jwt.yaml", &cases]);
        let (out, err) = (text(&test.stdout), text(&test.stderr));
        assert_eq!(test.status.code(), Some(1), "{err}");
        assert!(err.contains("pasted.cases.yaml: case 1: field `"), "{err}");
        assert!(!out.contains("SECRET") && !err.contains("SECRET"), "{out}{err}");
    }

    // Without `workload` (the contract asks only `request` and `expect`),
    // a case is every workload's the file names: bookinfo's four.
    let cases = dir.file(
        "which.cases.yaml",
        "cases:\n- {name: where, request: DELETE /anything, expect: deny}\n",
    );
    let test = palisade(&["test", "examples/bookinfo/mesh.yaml", &cases]);
    let out = text(&test.stdout);
    assert_eq!(test.status.code(), Some(0), "{out}{}", text(&test.stderr));
    assert!(out.ends_with("4 passed, 0 failed\n"), "{out}");
}

/// `palisade explain` on a sample, parsed.
fn explain(args: &[&str]) -> Value {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    let out = palisade(&all);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
    // The contract's fields first, in its order.
    let printed = text(&out.stdout);
    let at = |field: &str| printed.find(&format!("\"{field}\":")).unwrap_or(usize::MAX);
    assert!(
        at("decision") < at("status") && at("status") < at("policy") && at("policy") < at("rule"),
        "{printed}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out.stdout)))
}

/// `explain`'s notes.
fn notes(v: &Value) -> Vec<String> {
    v["notes"]
        .as_array()
        .unwrap_or_else(|| panic!("explain always prints `notes`: {v}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

/// The fields the contract names.
fn summary(v: &Value) -> (String, u64, Value, Value) {
    (
        v["decision"].as_str().unwrap().to_owned(),
        v["status"].as_u64().unwrap(),
        v["policy"].clone(),
        v["rule"].clone(),
    )
}

/// Asserts that `v` is the refusal of a guard whose server cannot tell
/// the connection's addresses, with a first note naming `flag`, the
/// argument that gives them.
fn refused_for_unknown_addresses(v: &Value, flag: &str) {
    assert_eq!(
        summary(v),
        (
            "deny".into(),
            403,
            Value::from("(the connection's addresses are unknown)"),
            Value::Null
        )
    );
    assert!(notes(v)[0].contains(flag), "{v}");
}

#[test]
fn explain_gives_the_guards_decision_status_policy_and_rule() {
    let mesh = "examples/bookinfo/mesh.yaml";
    let alice = r#"{"sub": "alice", "aud": "bookinfo", "realm_access": {"roles": ["reviewer"]}}"#;
    let productpage = "cluster.local/ns/default/sa/productpage";
    let allowed = explain(&[
        mesh,
        "--workload",
        "default/details",
        "--request",
        "GET /details/1",
        "--peer",
        productpage,
        "--claims",
        alice,
    ]);
    assert_eq!(
        summary(&allowed),
        (
            "allow".into(),
            200,
            Value::from("default/details"),
            Value::from(0)
        )
    );
    assert_eq!(allowed["action"], "ALLOW");
    // No user: a token could change the answer.
    let no_user = explain(&[
        mesh,
        "--workload",
        "default/details",
        "--request",
        "GET /details/1",
        "--peer",
        productpage,
    ]);
    assert_eq!(summary(&no_user), ("deny".into(), 401, Value::Null, Value::Null));
    // A user, but not through productpage: refused.
    let no_peer = explain(&[
        mesh,
        "--workload",
        "default/details",
        "--request",
        "GET /details/1",
        "--claims",
        alice,
    ]);
    assert_eq!(summary(&no_peer), ("deny".into(), 403, Value::Null, Value::Null));
    assert_eq!(no_peer["reason"], "denied: no ALLOW rule matched");
    // The RBAC binding of reviews, a rule of its own.
    let reviews = explain(&[
        mesh,
        "--workload",
        "default/reviews",
        "--request",
        "GET /reviews/2",
        "--peer",
        productpage,
        "--claims",
        alice,
    ]);
    assert_eq!(
        summary(&reviews),
        (
            "allow".into(),
            200,
            Value::from("default/productpage-for-reviewers"),
            Value::from(0)
        )
    );
    // A DENY policy, with the header of a file naming one workload.
    let delete = explain(&[
        "examples/policies/deny-admin.yaml",
        "--request",
        "DELETE /list",
        "--claims",
        r#"{"sub": "root", "aud": "details", "realm_access": {"roles": ["admin"]}}"#,
    ]);
    assert_eq!(
        summary(&delete),
        (
            "deny".into(),
            403,
            Value::from("default/no-delete"),
            Value::from(0)
        )
    );
    assert_eq!(
        (delete["action"].as_str(), delete["workload"].as_str()),
        (Some("DENY"), Some("default/*"))
    );
    // gRPC: the status the gRPC status stands for, and the gRPC status.
    let grpc = explain(&[
        mesh,
        "--workload",
        "default/ratings",
        "--request",
        "POST /bookinfo.ratings.v1.Ratings/GetRatings",
        "--header",
        "content-type: application/grpc",
    ]);
    assert_eq!(
        (grpc["status"].as_u64(), grpc["grpc_status"].as_u64()),
        (Some(401), Some(16))
    );
    // A dry run reports what it would do.
    let dry = explain(&["examples/policies/dry-run.yaml", "--request", "POST /list"]);
    assert_eq!(summary(&dry), ("allow".into(), 200, Value::Null, Value::Null));
    assert_eq!(dry["dry_run"]["decision"], "deny");
    assert_eq!(dry["dry_run"]["policy"], "default/block-posts-soon");
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    for (args, want) in [
        (
            &["explain", "examples/bookinfo/mesh.yaml", "--request", "GET /"][..],
            "names 4 workloads (default/details, default/productpage, default/ratings, default/reviews)",
        ),
        (
            &[
                "explain",
                "examples/policies/require-jwt.yaml",
                "--request",
                "/list",
            ][..],
            "--request `/list`",
        ),
        (&["frobnicate"][..], "unknown subcommand `frobnicate`"),
        (&["check"][..], "check takes FILE"),
    ] {
        let out = palisade(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn service_targets_name_workloads_and_gateway_targets_are_noted() {
    let dir = Scratch::new("targets");
    let file = dir.file(
        "targets.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-l7, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: \"\", name: reviews}]
  rules: [{from: [{source: {serviceAccounts: [shop/productpage]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: at-the-gateway, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: ingress}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
",
    );
    let check = palisade(&["check", &file]);
    let out = text(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert!(
        out.contains("shop/reviews"),
        "the Service target names the workload: {out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("note: ")
            && l.contains("spec.targetRefs[0]")
            && l.contains("at-the-gateway")),
        "{out}"
    );
    // The Service target applies to reviews: productpage's peer is allowed, another is not.
    let decide = |peer: &str| {
        explain(&[
            &file,
            "--workload",
            "shop/reviews",
            "--request",
            "GET /reviews/1",
            "--peer",
            peer,
        ])
    };
    assert_eq!(
        decide("cluster.local/ns/shop/sa/productpage")["decision"],
        "allow"
    );
    let other = decide("cluster.local/ns/shop/sa/ratings");
    assert_eq!(other["decision"], "deny");
    assert_eq!(other["status"], 403);
}

#[test]
fn a_policy_file_that_does_not_load_exits_1_with_one_line_for_every_subcommand() {
    let dir = Scratch::new("unloadable");
    let sample = std::fs::read_to_string(root().join("examples/policies/deny-admin.yaml")).unwrap();
    let typo = dir.file("typo.yaml", &sample.replacen("action: DENY", "action: DENNY", 1));
    let cases = "examples/policies/deny-admin.cases.yaml";
    let want = "document 2 (AuthorizationPolicy default/admin-needs-role): field `spec.action`";
    let mut lines = Vec::new();
    for args in [
        &["check", &typo][..],
        &["test", &typo, cases][..],
        &["explain", &typo, "--request", "GET /admin"][..],
        &[
            "test",
            "examples/policies/require-jwt.yaml",
            cases,
            "--with",
            &typo,
        ][..],
        &[
            "explain",
            "examples/policies/require-jwt.yaml",
            "--with",
            &typo,
            "--request",
            "GET /",
        ][..],
    ] {
        let out = palisade(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(&typo) && err.contains(want), "{args:?}: {err}");
        assert_eq!(text(&out.stdout), "", "{args:?}");
        lines.push(err);
    }
    // The same line, whichever subcommand read the file.
    assert!(lines.windows(2).all(|w| w[0] == w[1]), "{lines:?}");

    for args in [
        &["check", "nonexistent.yaml"][..],
        &["test", "nonexistent.yaml", cases][..],
        &["explain", "nonexistent.yaml", "--request", "GET /"][..],
    ] {
        let out = palisade(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(
            err,
            "nonexistent.yaml: cannot read: No such file or directory (os error 2)\n"
        );
    }

    // Loads, but does not compile for the workload, as a service's start-up would fail.
    let unbound = dir.file(
        "unbound.yaml",
        &std::fs::read_to_string(root().join("examples/bookinfo/mesh.yaml"))
            .unwrap()
            .replace(
                "roleRef: {kind: ServiceRole, name: reviews-reader}",
                "roleRef: {kind: ServiceRole, name: reviews-writer}",
            ),
    );
    let out = palisade(&[
        "explain",
        &unbound,
        "--workload",
        "default/reviews",
        "--request",
        "GET /",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("field `spec.roleRef.name`: no ServiceRole `reviews-writer`")
            && err.ends_with("(for default/reviews)\n"),
        "{err}"
    );
}

#[test]
fn explain_says_what_it_takes_for_granted() {
    // A rule on the host, and no host given: said (every request to a
    // service carries one); with it, the answer the service gives.
    let dir = Scratch::new("explain-host");
    let hosts = dir.file(
        "hosts.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-host, namespace: default}
spec:
  rules: [{to: [{operation: {hosts: [details.shop.example]}}]}]
",
    );
    let base = [
        hosts.as_str(),
        "--workload",
        "default/details",
        "--request",
        "GET /x",
    ];
    let without = explain(&base);
    assert_eq!(without["decision"], "deny", "{without}");
    assert!(
        notes(&without).iter().any(|n| n.contains("--header host:")),
        "{without}"
    );
    let with = explain(&[&base[..], &["--header", "host:details.shop.example"]].concat());
    assert_eq!(with["decision"], "allow", "{with}");
    assert!(
        notes(&with).iter().all(|n| !n.contains("--header host:")),
        "{with}"
    );

    // A fragment without an issuer: the service reads no token, the claims are ignored.
    let fragment = "examples/policies/allow-by-role.yaml";
    let bob = r#"{"iss": "https://keycloak.example/realms/bookinfo", "sub": "bob", "aud": "reviews"}"#;
    let ignored = explain(&[fragment, "--request", "GET /list", "--claims", bob]);
    // No authenticator to name in a challenge: no credential could help.
    assert_eq!(ignored["status"], 403);
    let n = notes(&ignored);
    assert!(
        n.len() == 1
            && n[0].contains("the claims are ignored: no RequestAuthentication or KeycloakAdapter applies"),
        "{n:?}"
    );
    // With the realm's RequestAuthentication, the claims are a token for reviews.
    let dir = Scratch::new("explain-notes");
    let realm = dir.file(
        "realm.yaml",
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: keycloak}
spec:
  jwtRules: [{issuer: https://keycloak.example/realms/bookinfo, audiences: [reviews]}]
",
    );
    let read = explain(&[
        fragment,
        "--with",
        &realm,
        "--request",
        "GET /list",
        "--claims",
        bob,
    ]);
    assert_eq!(
        summary(&read),
        (
            "allow".into(),
            200,
            Value::from("default/read-write-by-role"),
            Value::from(1)
        )
    );
    assert!(notes(&read).is_empty(), "{read}");
    // A token for another service: the service's own 401.
    let elsewhere = explain(&[
        fragment,
        "--with",
        &realm,
        "--request",
        "GET /list",
        "--claims",
        r#"{"sub": "bob", "aud": "details"}"#,
    ]);
    assert_eq!(
        summary(&elsewhere),
        ("deny".into(), 401, Value::Null, Value::Null)
    );
    assert_eq!(elsewhere["reason"], "the token is not meant for this service");

    // A caller's address: unknown unless given, and then refused, as a
    // guard whose server cannot tell it refuses.
    let proxy = "examples/policies/behind-proxy.yaml";
    let unknown = explain(&[proxy, "--request", "GET /list"]);
    refused_for_unknown_addresses(&unknown, "--source-ip IP");
    let blocked = explain(&[proxy, "--request", "GET /list", "--source-ip", "203.0.113.5"]);
    assert_eq!(
        summary(&blocked),
        (
            "deny".into(),
            403,
            Value::from("default/block-range"),
            Value::from(0)
        )
    );
    assert!(notes(&blocked).is_empty(), "{blocked}");

    // A policy that reads the port refuses everything while the port is
    // unknown, as a guard that cannot tell it does; on the service's port
    // it decides.
    let ports = dir.file(
        "ports.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-9080}
spec:
  action: DENY
  rules: [{to: [{operation: {notPorts: [\"9080\"]}}]}]
",
    );
    let unknown = explain(&[&ports, "--request", "GET /list"]);
    refused_for_unknown_addresses(&unknown, "--port N");
    let on = explain(&[&ports, "--request", "GET /list", "--port", "9080"]);
    assert_eq!(on["decision"], "allow");
    assert!(notes(&on).is_empty(), "{on}");
    let off = explain(&[&ports, "--request", "GET /list", "--port", "9443"]);
    assert_eq!(
        summary(&off),
        (
            "deny".into(),
            403,
            Value::from("default/only-9080"),
            Value::from(0)
        )
    );
}

/// What the file says aloud when it loads (`check`'s notes) is said by
/// `explain` too: an empty file allows everything.
#[test]
fn explain_notes_what_the_file_says_as_it_loads() {
    let dir = Scratch::new("explain-warnings");
    let empty = dir.file("empty.yaml", "# no policy\n");
    let v = explain(&[&empty, "--workload", "default/details", "--request", "GET /"]);
    assert_eq!(v["decision"], "allow");
    assert!(
        notes(&v)
            .iter()
            .any(|n| n.contains("holds no document") && n.contains("every request is allowed")),
        "{v}"
    );
    // What a `--with` file says as it loads, and what the workload's
    // documents say together of one it added: each named by that file,
    // not by its place after the policy file's.
    for (name, document, field) in [
        (
            "with.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {namespace: default}\nspec: {}\n",
            "metadata.name",
        ),
        (
            "mesh.yaml",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {selector: {matchLabels: {app: details}}, mtls: {mode: STRICT}}\n",
            "spec.selector",
        ),
    ] {
        let with = dir.file(name, document);
        let v = explain(&[
            &empty,
            "--with",
            &with,
            "--workload",
            "default/details",
            "--request",
            "GET /",
        ]);
        assert!(
            notes(&v)
                .iter()
                .any(|n| n.starts_with(&format!("{with}: document 1")) && n.contains(field)),
            "{v}"
        );
    }
}

#[test]
fn explain_answers_sign_ins_own_routes_as_the_service_does() {
    let mesh = "examples/bookinfo/mesh.yaml";
    let logout = explain(&[
        mesh,
        "--workload",
        "default/productpage",
        "--request",
        "GET /logout",
    ]);
    // The contract's two decisions: not refused, answered by sign-in.
    assert_eq!(summary(&logout), ("allow".into(), 302, Value::Null, Value::Null));
    assert_eq!(logout["answered_by"], "sign-in");
    assert!(
        logout["reason"]
            .as_str()
            .unwrap()
            .starts_with("sign-in's logout route"),
        "{logout}"
    );
    let callback = explain(&[
        mesh,
        "--workload",
        "default/productpage",
        "--request",
        "GET /oauth2/callback?code=c&state=s",
    ]);
    assert_eq!(
        summary(&callback),
        ("allow".into(), 400, Value::Null, Value::Null)
    );
    assert_eq!(callback["answered_by"], "sign-in");
    // Not productpage's: details has no sign-in, and its policy decides.
    let details = explain(&[mesh, "--workload", "default/details", "--request", "GET /logout"]);
    assert_eq!(details["decision"], "deny");
    assert!(details.get("answered_by").is_none(), "{details}");
}

#[test]
fn a_workload_name_is_not_silently_a_labelled_variant() {
    let dir = Scratch::new("variants");
    let file = dir.file(
        "v2.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v2-closed}
spec:
  selector: {matchLabels: {app: details, version: v2}}
  action: DENY
  rules: [{}]
",
    );
    let plain = explain(&[&file, "--workload", "default/details", "--request", "GET /"]);
    assert_eq!(
        (plain["decision"].as_str(), plain["workload"].as_str()),
        (Some("allow"), Some("default/details"))
    );
    assert!(
        notes(&plain)[0].contains("default/details[version=v2]"),
        "{plain}"
    );
    let v2 = explain(&[
        &file,
        "--workload",
        "default/details",
        "--label",
        "version=v2",
        "--request",
        "GET /",
    ]);
    assert_eq!(
        (v2["decision"].as_str(), v2["workload"].as_str()),
        (Some("deny"), Some("default/details[version=v2]"))
    );
    assert!(notes(&v2).is_empty(), "{v2}");
}

#[test]
fn sign_ins_routes_are_allowed_as_the_contract_says_and_dry_runs_take_two_values() {
    let dir = Scratch::new("reply");
    let cases = dir.file(
        "signin.cases.yaml",
        "cases:
- {name: logout is answered, workload: default/productpage, request: GET /logout, expect: allow, status: 302}
- {name: stricter, workload: default/productpage, request: GET /logout, expect: reply}
",
    );
    let test = palisade(&["test", "examples/bookinfo/mesh.yaml", &cases]);
    let out = text(&test.stdout);
    assert_eq!(test.status.code(), Some(0), "{out}{}", text(&test.stderr));
    assert!(out.ends_with("2 passed, 0 failed\n"), "{out}");

    let bad = dir.file(
        "bad.cases.yaml",
        "cases:\n- {name: shadow, request: GET /healthz, expect: allow, dry_run: reply}\n",
    );
    let test = palisade(&["test", "examples/policies/dry-run.yaml", &bad]);
    let err = text(&test.stderr);
    assert_eq!(test.status.code(), Some(1), "{err}");
    assert!(
        err.contains("case 1 (shadow): field `dry_run`: unknown variant `reply`"),
        "{err}"
    );
}

#[test]
fn istios_default_audience_needs_the_workload_named() {
    let dir = Scratch::new("audience");
    let file = dir.file(
        "no-audiences.yaml",
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules: [{issuer: https://idp.example, jwksUri: https://idp.example/jwks}]
",
    );
    let claims = r#"{"iss": "https://idp.example", "sub": "alice", "aud": "details"}"#;
    let out = palisade(&["explain", &file, "--request", "GET /list", "--claims", claims]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("name the workload"), "{err}");
    // Named, the audience is the workload's service, as the service has it.
    let named = explain(&[
        &file,
        "--workload",
        "default/details",
        "--request",
        "GET /list",
        "--claims",
        claims,
    ]);
    assert_eq!(named["decision"], "allow", "{named}");
    let other = explain(&[
        &file,
        "--workload",
        "default/reviews",
        "--request",
        "GET /list",
        "--claims",
        claims,
    ]);
    assert_eq!(
        (other["decision"].as_str(), other["status"].as_u64()),
        (Some("deny"), Some(401)),
        "{other}"
    );
}
