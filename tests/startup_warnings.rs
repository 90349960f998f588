//! What start-up says aloud: relaxations and settings read without effect
//! are logged at warn level, naming where they are written, and the
//! secure settings next to them are not. Read from the log lines of this
//! test binary.

use palisade::core::policy::{KeycloakAdapterConfig, PolicySet};
use palisade::jwt::{Introspection, JwtAuthenticator, Provider};

mod common;

use common::logs;

fn capture() {
    logs::capture("palisade=warn");
}

#[test]
fn plain_http_to_another_host_is_a_warning_and_loopback_is_not() {
    capture();
    let provider = |issuer: &str, jwks: &str| {
        Provider::builder(issuer)
            .audience("api")
            .jwks_uri(jwks)
            .build()
            .unwrap()
    };
    provider(
        "https://keys-elsewhere.example",
        "http://keys:hunter2@keys-elsewhere.example/jwks",
    );
    provider("https://keys-here.example", "http://127.0.0.1:9/jwks");
    let warned = logs::lines("keys-elsewhere.example");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("JWKS URI uses plain http"), "{warned:?}");
    assert!(
        !warned[0].contains("hunter2"),
        "no password in the log: {warned:?}"
    );
    assert!(logs::lines("keys-here.example").is_empty());

    Provider::builder("https://introspected.example")
        .audience("api")
        .introspection(
            Introspection::client_secret_basic("rs", "s")
                .endpoint("http://rs:hunter2@introspect-elsewhere.example/i"),
        )
        .build()
        .unwrap();
    let warned = logs::lines("introspect-elsewhere.example");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("introspection over plain http"), "{warned:?}");
    assert!(!warned[0].contains("hunter2"), "{warned:?}");
}

#[test]
fn an_issuer_that_is_also_a_tenant_of_a_pattern_is_a_warning() {
    capture();
    let pattern = Provider::builder("https://login.overlap.example/{tenant}/v2.0")
        .audience("api")
        .tenants(["contoso", "fabrikam"])
        .jwks_uri("https://login.overlap.example/{tenant}/keys")
        .build()
        .unwrap();
    let fixed = |issuer: &str| {
        Provider::builder(issuer)
            .audience("other-api")
            .dangerous()
            .hmac_secret([7u8; 32])
            .build()
            .unwrap()
    };
    JwtAuthenticator::builder()
        .provider(pattern.clone())
        .provider(fixed("https://login.overlap.example/contoso/v2.0"))
        .build()
        .unwrap();
    let warned = logs::lines("also a tenant of an issuer pattern");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("https://login.overlap.example/contoso/v2.0")
            && warned[0].contains("tenant=\"contoso\""),
        "{warned:?}"
    );
    // An issuer beside the pattern, not in it, is no warning; nor is one
    // that fits it with a name its tenant list does not have.
    JwtAuthenticator::builder()
        .provider(pattern)
        .provider(fixed("https://login.overlap.example/common/oauth2"))
        .provider(fixed("https://login.overlap.example/northwind/v2.0"))
        .build()
        .unwrap();
    assert_eq!(logs::lines("also a tenant of an issuer pattern").len(), 1);
}

#[test]
fn a_policy_file_says_its_relaxations_when_it_loads() {
    capture();
    let yaml = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy-callers, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict-callers, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
";
    PolicySet::from_yaml_str(yaml, "relaxed.yaml").unwrap();
    let warned = logs::lines("relaxed.yaml");
    assert_eq!(warned.len(), 1, "{warned:?}");
    let line = &warned[0];
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains(
            "document 1 (PeerAuthentication default/legacy-callers): field `spec.mtls.mode`: PERMISSIVE"
        ),
        "{line}"
    );
}

#[test]
fn a_keycloak_json_says_which_keys_it_does_not_apply() {
    capture();
    let dir = std::env::temp_dir().join(format!("palisade-kc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keycloak.json");
    std::fs::write(
        &file,
        r#"{"realm":"shop","auth-server-url":"https://kc-warned.example/","resource":"api",
           "bearer-only":true,"verify-token-audience":true,"disable-trust-manager":true,"ssl-required":"none"}"#,
    )
    .unwrap();
    KeycloakAdapterConfig::from_json_file(&file).unwrap();
    JwtAuthenticator::from_keycloak_json(&file).unwrap();
    let name = file.display().to_string();
    let warned = logs::lines(&name);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(warned.len(), 2, "once per load: {warned:?}");
    for line in &warned {
        assert!(
            line.contains(
                "field `disable-trust-manager`: not applied: the issuer's certificate is always verified"
            ),
            "{line}"
        );
    }
    assert!(
        !warned.iter().any(|l| l.contains("ssl-required")),
        "`none` changes nothing: {warned:?}"
    );
}

#[test]
fn jwt_settings_for_a_workload_without_jwt_rules_say_they_apply_to_nothing() {
    use palisade::core::policy::{FromPolicy as _, Workload};
    capture();
    let yaml = "apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {name: lonely-dpop, namespace: default}
spec:
  dpop: {maxAge: 30s}
";
    let set = PolicySet::from_yaml_str(yaml, "lonely.yaml").unwrap();
    let jwt = JwtAuthenticator::from_policy(&set.for_workload(&Workload::new("details", "default"))).unwrap();
    assert!(jwt.is_none());
    let warned = logs::lines("lonely.yaml");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("JwtSettings default/lonely-dpop"),
        "{warned:?}"
    );
    assert!(warned[0].contains("apply to no issuer"), "{warned:?}");
}

/// An introspection endpoint that does not answer is said once, at warn
/// level, when it starts failing; the tokens refused meanwhile (any client
/// can send as many as it likes) are not each a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_introspection_outage_is_said_once_not_per_token() {
    use palisade::core::Check;
    use palisade::core::adapter::Decision;
    use palisade::core::authn::OwnedRequest;
    capture();
    // A port nothing listens on: every call is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let provider = Provider::builder("https://introspection-outage.example")
        .audience("api")
        .introspection(
            Introspection::client_secret_basic("rs", "s")
                .endpoint(format!("http://127.0.0.1:{port}/introspect")),
        )
        .build()
        .unwrap();
    let jwt = JwtAuthenticator::builder().provider(provider).build().unwrap();
    let guard = palisade::core::Guard::builder()
        .authenticator(jwt)
        .build()
        .unwrap();
    for i in 0..5 {
        let req = OwnedRequest::get("/").header("authorization", format!("Bearer opaque-token-{i}"));
        let decision = match guard.check(&req) {
            Check::Ready(d) => d,
            Check::Pending(f) => f.await,
        };
        assert!(!matches!(decision, Decision::Allow(_)), "token {i}");
    }
    // (Its keys cannot be fetched either: said once by the key fetcher.)
    let warned: Vec<String> = logs::lines("introspection-outage.example")
        .into_iter()
        .filter(|l| l.contains("token introspection"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("token introspection failed"), "{warned:?}");
    assert!(logs::lines("bearer token refused").is_empty());
}

/// A policy file that authenticates a workload but requires nothing of it
/// (no ALLOW policy, no RBAC) lets requests without a credential through,
/// as Istio's RequestAuthentication alone does: said at start-up, where a
/// Keycloak adapter's user would expect a 401. With an ALLOW policy for
/// the workload, nothing is said; with `ALLOW` policies for other
/// workloads only (a misspelt name or selector), the warning names them,
/// even for a workload the file does not authenticate.
#[test]
fn authentication_that_nothing_requires_is_a_warning() {
    capture();
    let authn = |name: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1
kind: KeycloakAdapter
metadata: {{name: kc, namespace: default}}
spec: {{selector: {{matchLabels: {{app: details}}}}, realm: shop, auth-server-url: 'https://{name}.example', resource: {name}, bearer-only: true, verify-token-audience: true}}
"
        )
    };
    let require_user = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: users, namespace: default}
spec:
  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]
";
    let workload = palisade::core::policy::Workload::new("details", "default");
    let open = PolicySet::from_yaml_str(&authn("open-kc"), "open.yaml").unwrap();
    palisade::guard_from_policy(&open, &workload).unwrap();
    let closed =
        PolicySet::from_yaml_str(&format!("{}{require_user}", authn("closed-kc")), "closed.yaml").unwrap();
    palisade::guard_from_policy(&closed, &workload).unwrap();
    // Istio's other way to require a token: a DENY of requests without one.
    let deny_anonymous = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-anonymous, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]
";
    let denied =
        PolicySet::from_yaml_str(&format!("{}{deny_anonymous}", authn("deny-kc")), "deny.yaml").unwrap();
    palisade::guard_from_policy(&denied, &workload).unwrap();
    let said = logs::lines("requests without credentials are allowed: no AuthorizationPolicy");
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains(" WARN "), "{said:?}");
    assert!(!said[0].contains("other workloads"), "{said:?}");
    // The file's ALLOW policies select another workload (a name spelt
    // otherwise than the file's): said, naming them.
    let elsewhere = require_user.replace("spec:\n", "spec:\n  selector: {matchLabels: {app: detials}}\n");
    let misspelt =
        PolicySet::from_yaml_str(&format!("{}{elsewhere}", authn("misspelt-kc")), "misspelt.yaml").unwrap();
    palisade::guard_from_policy(&misspelt, &workload).unwrap();
    let elsewhere_said = || {
        logs::lines("the file's ALLOW policies apply to other workloads (AuthorizationPolicy default/users)")
    };
    assert_eq!(elsewhere_said().len(), 1, "{:?}", elsewhere_said());
    // A workload none of whose documents applies, not even the file's
    // authentication: said too, though no credential is checked at all.
    let nobody = palisade::core::policy::Workload::new("ratings", "default");
    palisade::guard_from_policy(&misspelt, &nobody).unwrap();
    assert_eq!(elsewhere_said().len(), 2, "{:?}", elsewhere_said());
}
