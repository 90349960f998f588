use super::*;
use crate::syntax::{is_landing_uri, is_service_path};

/// A document for the `reviews` workload, which the tests never select.
fn reviews(kind: &str, api_version: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: mine}}\nspec:\n  selector: {{matchLabels: {{app: details}}}}\n---\napiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: reviews-ops, namespace: default}}\nspec:\n{spec}"
    )
}

fn load_err(yaml: &str) -> PolicyError {
    PolicySet::from_yaml_str(yaml, "policy.yaml").unwrap_err()
}

/// Line and column of an error.
fn at(err: &PolicyError) -> (Option<u32>, Option<u32>) {
    (err.line.map(u32::from), err.column.map(u32::from))
}

#[test]
fn unknown_field_names_file_document_and_field() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec: {}\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: prod}\nspec:\n  jwtRules:\n  - issuer: x\n    audience: [y]\n";
    let err = PolicySet::from_yaml_str(yaml, "mesh.yaml").unwrap_err();
    assert_eq!(err.document, Some(2));
    assert_eq!(err.field.as_deref(), Some("spec.jwtRules[0].audience"));
    let line = err.to_string();
    assert!(
        line.starts_with("mesh.yaml: document 2 (RequestAuthentication prod/jwt)"),
        "{line}"
    );
    assert!(line.contains("unknown field `audience`"), "{line}");
}

#[test]
fn a_misspelt_action_for_another_workload_fails_to_load() {
    let yaml = reviews(
        "AuthorizationPolicy",
        "security.istio.io/v1",
        "  selector: {matchLabels: {app: reviews}}\n  action: ALOW\n",
    );
    let err = load_err(&yaml);
    assert_eq!(err.document, Some(2));
    assert_eq!(
        err.resource.as_deref(),
        Some("AuthorizationPolicy default/reviews-ops")
    );
    assert_eq!(err.field.as_deref(), Some("spec.action"));
    assert_eq!(at(&err), (Some(12), Some(11)));
    assert_eq!(
        err.to_string(),
        "policy.yaml: document 2 (AuthorizationPolicy default/reviews-ops): field `spec.action`: \
         unknown variant `ALOW`, expected one of ALLOW, DENY, AUDIT, CUSTOM (at line 12, column 11)"
    );
}

/// What Istio's validation refuses in a rule, refused when the file loads
/// (for another workload too), never read as "any": `from: []` and
/// `to: []` (an ALLOW of `/admin` to every caller otherwise), and a DENY
/// without rules, which denies nothing.
#[test]
fn empty_from_or_to_and_a_deny_without_rules_fail_to_load() {
    for (spec, field) in [
        (
            "  rules: [{from: [], to: [{operation: {paths: [\"/admin*\"]}}]}]\n",
            "spec.rules[0].from",
        ),
        ("  rules: [{}, {to: []}]\n", "spec.rules[1].to"),
        ("  action: DENY\n", "spec.rules"),
        ("  action: DENY\n  rules: []\n", "spec.rules"),
        ("  action: CUSTOM\n  provider: {name: ext}\n", "spec.rules"),
    ] {
        let yaml = reviews(
            "AuthorizationPolicy",
            "security.istio.io/v1",
            &format!("  selector: {{matchLabels: {{app: reviews}}}}\n{spec}"),
        );
        let err = load_err(&yaml);
        assert_eq!(err.field.as_deref(), Some(field), "{spec}: {err}");
    }
    let deny_all = reviews(
        "AuthorizationPolicy",
        "security.istio.io/v1",
        "  selector: {matchLabels: {app: reviews}}\n  action: DENY\n  rules: [{}]\n",
    );
    PolicySet::from_yaml_str(&deny_all, "policy.yaml").unwrap();
}

#[test]
fn a_bad_mtls_mode_for_another_workload_fails_to_load() {
    let yaml = reviews(
        "PeerAuthentication",
        "security.istio.io/v1",
        "  selector: {matchLabels: {app: reviews}}\n  portLevelMtls:\n    9080: {mode: STRICTER}\n",
    );
    let err = load_err(&yaml);
    assert_eq!(err.field.as_deref(), Some("spec.portLevelMtls.9080.mode"));
    assert!(
        err.message
            .contains("expected one of UNSET, DISABLE, PERMISSIVE, STRICT"),
        "{err}"
    );
    assert_eq!(at(&err).0, Some(13));
}

#[test]
fn unset_is_an_absent_mtls_mode() {
    let set = PolicySet::from_yaml_str(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspec: {mtls: {mode: UNSET}}\n",
        "f",
    )
    .unwrap();
    let Spec::PeerAuthentication(pa) = &set.documents()[0].spec else {
        panic!("not a PeerAuthentication")
    };
    assert_eq!(pa.mtls.as_ref().unwrap().mode, None);
}

#[test]
fn bad_rbac_modes_fail_to_load_in_another_namespace() {
    let yaml = reviews(
        "ClusterRbacConfig",
        "rbac.istio.io/v1alpha1",
        "  mode: ON_WITH_INCLUDE\n",
    )
    .replace("namespace: default", "namespace: elsewhere");
    let err = load_err(&yaml);
    assert_eq!(err.field.as_deref(), Some("spec.mode"));
    assert!(err.message.contains("ON_WITH_INCLUSION"), "{err}");

    let yaml = reviews(
        "ServiceRoleBinding",
        "rbac.istio.io/v1alpha1",
        "  subjects: [{user: '*'}]\n  roleRef: {kind: ServiceRole, name: r}\n  mode: ENFORCING\n",
    )
    .replace("namespace: default", "namespace: elsewhere");
    let err = load_err(&yaml);
    assert_eq!(err.field.as_deref(), Some("spec.mode"));
    assert!(
        err.message.contains("expected one of ENFORCED, PERMISSIVE"),
        "{err}"
    );
}

#[test]
fn a_bad_duration_for_another_issuer_fails_to_load() {
    let yaml = reviews(
        "JwtSettings",
        PALISADE_API_VERSION,
        "  issuer: https://elsewhere\n  jwksCacheTtl: 5 parsecs\n",
    )
    .replace("namespace: default", "namespace: elsewhere");
    let err = load_err(&yaml);
    assert_eq!(err.document, Some(2));
    assert_eq!(err.field.as_deref(), Some("spec.jwksCacheTtl"));
    assert!(err.message.contains("`5 parsecs` is not a duration"), "{err}");
    assert_eq!(at(&err), (Some(12), Some(17)));
}

#[test]
fn bad_escaped_slashes_fail_to_load_in_another_namespace() {
    let yaml = reviews(
        "AuthorizationSettings",
        PALISADE_API_VERSION,
        "  escapedSlashes: DECODE\n",
    )
    .replace("namespace: default", "namespace: elsewhere");
    let err = load_err(&yaml);
    assert_eq!(err.field.as_deref(), Some("spec.escapedSlashes"));
    assert!(err.message.contains("expected one of KEEP, REJECT"), "{err}");
}

#[test]
fn checks_of_whole_values_run_for_every_document() {
    let custom = reviews(
        "AuthorizationPolicy",
        "security.istio.io/v1",
        "  selector: {matchLabels: {app: reviews}}\n  action: CUSTOM\n  rules: [{}]\n",
    );
    let err = load_err(&custom);
    assert_eq!(err.field.as_deref(), Some("spec.provider"));
    assert_eq!(at(&err), (Some(6), None));
    assert!(err.to_string().ends_with("(in the document at line 6)"), "{err}");

    let ip = reviews(
        "AuthorizationPolicy",
        "security.istio.io/v1",
        "  selector: {matchLabels: {app: reviews}}\n  rules: [{from: [{source: {ipBlocks: [10.0.0.0/99]}}]}]\n",
    );
    assert_eq!(
        load_err(&ip).field.as_deref(),
        Some("spec.rules[0].from[0].source.ipBlocks[0]")
    );

    let both = reviews(
        "RequestAuthentication",
        "security.istio.io/v1",
        "  selector: {matchLabels: {app: reviews}}\n  jwtRules: [{issuer: x, jwksUri: 'https://x/jwks', jwks: '{}'}]\n",
    );
    assert_eq!(load_err(&both).field.as_deref(), Some("spec.jwtRules[0].jwks"));

    let zero = reviews(
        "JwtSettings",
        PALISADE_API_VERSION,
        "  issuer: https://elsewhere\n  maxTokenSize: 0\n",
    );
    assert_eq!(load_err(&zero).field.as_deref(), Some("spec.maxTokenSize"));

    let binding = reviews(
        "ServiceRoleBinding",
        "rbac.istio.io/v1alpha1",
        "  subjects: []\n  roleRef: {kind: ServiceRole, name: r}\n",
    )
    .replace("namespace: default", "namespace: elsewhere");
    assert_eq!(load_err(&binding).field.as_deref(), Some("spec.subjects"));
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec:\n  rules: [{to: [{operation: {paths: [/a]}}]\n";
    let err = load_err(yaml);
    assert_eq!(err.document, Some(2));
    assert_eq!(at(&err).0, Some(10), "{err}");
    assert!(err.column.is_some(), "{err}");
    assert!(err.to_string().contains("(at line 10, column"), "{err}");
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    let yaml = "# a mesh\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n---\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec: {action: DENIE}\n";
    let err = load_err(yaml);
    assert_eq!(err.document, Some(3));
    assert_eq!(at(&err).0, Some(11));
    let ok = PolicySet::from_yaml_str(&yaml.replace("DENIE", "DENY, rules: [{}]"), "f").unwrap();
    let indexes: Vec<_> = ok.documents().iter().map(|d| (d.index, d.line)).collect();
    assert_eq!(indexes, [(1, Some(2)), (3, Some(7))]);
    assert!(PolicySet::from_yaml_str("", "f").unwrap().documents().is_empty());
    let leading = load_err("---\n---\napiVersion: v9\nkind: X\n");
    assert_eq!((leading.document, at(&leading).0), (Some(2), Some(2)));
}

#[test]
fn a_file_of_comments_is_a_stream_of_no_documents() {
    let dir = std::env::temp_dir().join(format!("palisade-empty-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.yaml");
    for none in ["# none\n", "\n# none\n---\n"] {
        std::fs::write(&file, none).unwrap();
        assert!(
            PolicySet::from_file(&file).unwrap().documents().is_empty(),
            "{none:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The contract's `UpstreamCredentials` example lists every field; with
/// `from: caller` (or `none`) the grant's are unused, and said so.
#[test]
fn a_grants_fields_beside_a_relayed_token_are_unused_not_refused() {
    let yaml = "apiVersion: palisade.dev/v1alpha1\nkind: UpstreamCredentials\nmetadata: {name: to-reviews}\nspec:\n  selector: {matchLabels: {app: productpage}}\n  hosts: [reviews.default.svc.cluster.local]\n  token:\n    from: caller\n    issuer: https://kc.example/realms/istio\n    clientId: productpage\n    clientSecretFile: /nonexistent\n    audience: reviews\n    scopes: [reviews.read]\n";
    let set = PolicySet::from_yaml_str(yaml, "f").unwrap();
    let fields: Vec<_> = set.warnings().iter().map(ToString::to_string).collect();
    for field in ["issuer", "clientId", "clientSecretFile", "audience", "scopes"] {
        assert!(
            fields
                .iter()
                .any(|w| w.contains(&format!("spec.token.{field}")) && w.contains("unused")),
            "{field}: {fields:?}"
        );
    }
    let granted = yaml.replace("from: caller", "from: clientCredentials");
    assert!(
        PolicySet::from_yaml_str(&granted, "f")
            .unwrap()
            .warnings()
            .is_empty()
    );
    // A secret written in the file is said aloud, and not printed.
    let inline = granted.replace("clientSecretFile: /nonexistent", "clientSecret: s3cret-inline");
    let set = PolicySet::from_yaml_str(&inline, "f").unwrap();
    let [warning] = set.warnings() else {
        panic!("{:?}", set.warnings())
    };
    let text = warning.to_string();
    assert!(
        text.contains("spec.token.clientSecret")
            && text.contains("clientSecretFile")
            && !text.contains("s3cret"),
        "{text}"
    );
    // The other issuers of callers' tokens: an exchange's only.
    let with = |from: &str, issuers: &str| {
        yaml.replace("from: caller", &format!("from: {from}")).replace(
            "    scopes:",
            &format!("    subjectIssuers: {issuers}\n    scopes:"),
        )
    };
    PolicySet::from_yaml_str(&with("tokenExchange", "[https://sso.example/realms/istio]"), "f").unwrap();
    let err = PolicySet::from_yaml_str(&with("tokenExchange", "[sso.example]"), "f").unwrap_err();
    assert_eq!(
        err.field.as_deref(),
        Some("spec.token.subjectIssuers[0]"),
        "{err}"
    );
    // Unused elsewhere, as the grant's fields beside a relayed token are.
    for from in ["caller", "clientCredentials"] {
        let set = PolicySet::from_yaml_str(&with(from, "[https://sso.example/realms/istio]"), "f").unwrap();
        assert!(
            set.warnings().iter().any(|w| {
                let w = w.to_string();
                w.contains("spec.token.subjectIssuers") && w.contains("only tokenExchange")
            }),
            "{from}: {:?}",
            set.warnings()
        );
    }
}

/// An introspection client's secret written in the file is said aloud; one
/// in a file of its own is not.
#[test]
fn an_inline_introspection_secret_is_warned_of() {
    let yaml = |secret: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  jwtRules:\n  - issuer: https://kc.example/realms/istio\n    jwksUri: https://kc.example/jwks.json\n    audiences: [details]\n---\napiVersion: palisade.dev/v1alpha1\nkind: JwtSettings\nmetadata: {{name: opaque}}\nspec:\n  issuer: https://kc.example/realms/istio\n  introspection:\n    clientId: details\n    {secret}\n"
        )
    };
    let set = PolicySet::from_yaml_str(&yaml("clientSecret: s3cret-inline"), "f").unwrap();
    let text: Vec<_> = set.warnings().iter().map(ToString::to_string).collect();
    assert!(
        matches!(&text[..], [one] if one.contains("spec.introspection.clientSecret") && !one.contains("s3cret")),
        "{text:?}"
    );
    let set = PolicySet::from_yaml_str(&yaml("clientSecretFile: /etc/palisade/details.secret"), "f").unwrap();
    assert!(set.warnings().is_empty(), "{:?}", set.warnings());
}

#[test]
fn a_name_names_one_document_of_its_kind_and_namespace() {
    let doc = |meta: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {meta}\nspec: {{action: DENY, rules: [{{}}]}}\n"
        )
    };
    // The contract asks only `apiVersion` and `kind`: a nameless document
    // loads, with a warning, and two nameless ones are not duplicates.
    for nameless in ["{}", "{name: \"\"}", "{namespace: prod}"] {
        let set = PolicySet::from_yaml_str(&format!("{}---\n{}", doc(nameless), doc(nameless)), "f").unwrap();
        assert_eq!(set.documents().len(), 2, "{nameless}");
        assert!(
            set.warnings()
                .iter()
                .any(|w| w.to_string().contains("metadata.name")),
            "{nameless}"
        );
    }
    let err = load_err(&format!(
        "{}---\n{}",
        doc("{name: a}"),
        doc("{name: a, namespace: default}")
    ));
    assert_eq!(
        (err.document, err.field.as_deref()),
        (Some(2), Some("metadata.name"))
    );
    assert!(
        err.to_string()
            .contains("document 1 is already AuthorizationPolicy default/a"),
        "{err}"
    );
    // One name in two namespaces, or for two kinds, is two objects.
    let two = format!(
        "{}---\n{}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: a}}\nspec: {{}}\n",
        doc("{name: a}"),
        doc("{name: a, namespace: prod}")
    );
    assert_eq!(PolicySet::from_yaml_str(&two, "f").unwrap().documents().len(), 3);
    // `namespace: ""` is `default`, as kubectl reads it: this DENY applies.
    let set = PolicySet::from_yaml_str(&doc("{name: a, namespace: \"\"}"), "f").unwrap();
    let w = set.for_workload(&Workload::new("details", "default"));
    assert_eq!(w.documents().len(), 1);
}

#[test]
fn unknown_kind_is_an_error() {
    let err = PolicySet::from_yaml_str(
        "apiVersion: security.istio.io/v1\nkind: AuthorisationPolicy\nmetadata: {name: a}\n",
        "f",
    )
    .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("kind"));
}

#[test]
fn unknown_api_version_is_an_error() {
    let err = PolicySet::from_yaml_str("apiVersion: v9\nkind: X\n", "f").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("apiVersion"));
}

#[test]
fn selection_by_namespace_root_namespace_and_labels() {
    let yaml = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ns, namespace: prod}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-app}
spec: {selector: {matchLabels: {app: reviews}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mine}
spec: {selector: {matchLabels: {app: details}}}
";
    let set = PolicySet::from_yaml_str(yaml, "f").unwrap();
    assert_eq!(set.documents().len(), 4);
    let w = set.for_workload(&Workload::new("details", "default"));
    let names: Vec<_> = w.documents().iter().map(|d| d.metadata.name.as_str()).collect();
    assert_eq!(names, ["root", "mine"]);
}

/// A `DestinationRule` whose `workloadSelector` picks `reviews` as the
/// caller; `traffic_policy` is indented under `spec.trafficPolicy` and
/// starts at line 14.
fn reviews_rule(traffic_policy: &str) -> String {
    reviews(
        "DestinationRule",
        "networking.istio.io/v1",
        &format!(
            "  host: ratings.prod.svc.cluster.local\n  workloadSelector: {{matchLabels: {{app: reviews}}}}\n  trafficPolicy:\n{traffic_policy}"
        ),
    )
}

#[test]
fn a_mutual_destination_rule_applies_to_the_calling_workload_it_selects() {
    let yaml = "
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: ratings-mtls}
spec:
  host: ratings.prod.svc.cluster.local
  workloadSelector: {matchLabels: {app: details}}
  exportTo: [.]
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: /etc/certs/details.pem
      privateKey: /etc/certs/details.key
      caCertificates: /etc/certs/ca.pem
      subjectAltNames: [spiffe://cluster.local/ns/prod/sa/ratings]
    portLevelSettings:
    - port: {number: 9443}
      tls: {mode: SIMPLE, sni: ratings.example}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: ratings-reviews}
spec:
  host: ratings.prod.svc.cluster.local
  workloadSelector: {matchLabels: {app: reviews}}
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
";
    let set = PolicySet::from_yaml_str(yaml, "mesh.yaml").unwrap();
    assert_eq!(set.documents().len(), 2);

    let details = set.for_workload(&Workload::new("details", "default"));
    let rules: Vec<_> = details.destination_rules().collect();
    assert_eq!(rules.len(), 1);
    let (doc, rule) = rules[0];
    assert_eq!(doc.metadata.name, "ratings-mtls");
    assert_eq!(rule.host, "ratings.prod.svc.cluster.local");
    assert_eq!(rule.export_to, ["."]);
    let policy = rule.traffic_policy.as_ref().unwrap();
    let tls = policy.tls.as_ref().unwrap();
    assert_eq!(tls.mode, ClientTlsMode::Mutual);
    assert_eq!(tls.private_key.as_deref(), Some("/etc/certs/details.key"));
    assert!(!tls.insecure_skip_verify);
    let port = &policy.port_level_settings[0];
    assert_eq!(port.port.number, 9443);
    assert_eq!(port.tls.as_ref().unwrap().mode.as_str(), "SIMPLE");
    assert_eq!(rule.subsets[0].name, "v2");
    assert_eq!(
        rule.subsets[0]
            .traffic_policy
            .as_ref()
            .unwrap()
            .tls
            .as_ref()
            .unwrap()
            .mode,
        ClientTlsMode::IstioMutual
    );

    let reviews = set.for_workload(&Workload::new("reviews", "default"));
    let names: Vec<_> = reviews
        .destination_rules()
        .map(|(d, _)| d.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["ratings-reviews"]);
    let elsewhere = set.for_workload(&Workload::new("details", "prod"));
    assert_eq!(elsewhere.destination_rules().count(), 0);
}

#[test]
fn mutual_tls_without_a_private_key_for_another_workload_fails_to_load() {
    let yaml = reviews_rule("    tls: {mode: MUTUAL, clientCertificate: /etc/certs/reviews.pem}\n");
    let err = load_err(&yaml);
    assert_eq!(err.document, Some(2));
    assert_eq!(
        err.resource.as_deref(),
        Some("DestinationRule default/reviews-ops")
    );
    assert_eq!(err.field.as_deref(), Some("spec.trafficPolicy.tls.privateKey"));
    assert_eq!(at(&err), (Some(6), None));
    assert!(err.message.contains("MUTUAL needs"), "{err}");
}

#[test]
fn a_bad_client_tls_mode_for_another_workload_fails_to_load() {
    let yaml = reviews_rule("    tls:\n      mode: MUTAL\n");
    let err = load_err(&yaml);
    assert_eq!(err.field.as_deref(), Some("spec.trafficPolicy.tls.mode"));
    assert!(
        err.message
            .contains("expected one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
        "{err}"
    );
    assert_eq!(at(&err), (Some(15), Some(13)));
}

#[test]
fn credential_name_for_another_workload_is_refused_naming_the_field() {
    let yaml = reviews_rule("    tls:\n      mode: SIMPLE\n      credentialName: ratings-client\n");
    let err = load_err(&yaml);
    assert_eq!(err.document, Some(2));
    assert_eq!(
        err.field.as_deref(),
        Some("spec.trafficPolicy.tls.credentialName")
    );
    assert!(err.message.contains("Palisade reads files, not secrets"), "{err}");
    assert_eq!(at(&err).0, Some(16), "{err}");
}

/// Istio's proxy tuning (bookinfo's `destination-rule-reviews.yaml` sets
/// `loadBalancer`) loads, each part a warning naming its field; what would
/// change how the calls go (`tunnel`) is still refused.
#[test]
fn proxy_tuning_loads_with_a_warning_naming_the_field_and_a_tunnel_is_refused() {
    let warned = |yaml: &str| -> Vec<String> {
        PolicySet::from_yaml_str(yaml, "f")
            .unwrap()
            .warnings()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let pool =
        reviews_rule("    connectionPool:\n      tcp: {maxConnections: 100}\n    tls: {mode: SIMPLE}\n");
    let [w] = &warned(&pool)[..] else {
        panic!("{:?}", warned(&pool))
    };
    assert!(
        w.contains("spec.trafficPolicy.connectionPool") && w.contains("not applied"),
        "{w}"
    );
    // Alone, in the policy, a port's and a subset's: it sets something.
    let balancer = reviews_rule(
        "    loadBalancer: {simple: RANDOM}\n    outlierDetection: {consecutive5xxErrors: 7}\n    portLevelSettings:\n    - port: {number: 80}\n      loadBalancer: {simple: ROUND_ROBIN}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n",
    );
    let w = warned(&balancer);
    for field in [
        "spec.trafficPolicy.loadBalancer",
        "spec.trafficPolicy.outlierDetection",
        "spec.trafficPolicy.portLevelSettings[0].loadBalancer",
        "spec.subsets[0].trafficPolicy",
    ] {
        assert!(
            w.iter().any(|w| w.contains(&format!("`{field}`:"))),
            "{field}: {w:?}"
        );
    }
    assert_eq!(w.len(), 4, "{w:?}");
    // A port that sets nothing at all is still refused.
    let empty = reviews_rule("    portLevelSettings:\n    - port: {number: 80}\n");
    assert_eq!(
        load_err(&empty).field.as_deref(),
        Some("spec.trafficPolicy.portLevelSettings[0]")
    );
    let tunnel = reviews_rule("    tunnel: {protocol: CONNECT, targetHost: h, targetPort: 80}\n");
    let err = load_err(&tunnel);
    assert_eq!(err.field.as_deref(), Some("spec.trafficPolicy.tunnel"));
    assert!(
        err.message.starts_with("`tunnel` cannot apply in process"),
        "{err}"
    );
}

#[test]
fn destination_rule_checks_run_for_every_document() {
    let port =
        reviews_rule("    portLevelSettings:\n    - port: {number: 70000}\n      tls: {mode: SIMPLE}\n");
    let err = load_err(&port);
    assert_eq!(
        err.field.as_deref(),
        Some("spec.trafficPolicy.portLevelSettings[0].port.number")
    );
    assert!(err.message.contains("not in 1..=65535"), "{err}");
    assert_eq!(at(&err).0, Some(15), "{err}");
    let zero = port.replace("70000", "0");
    assert!(load_err(&zero).message.contains("port number 0"), "{zero}");

    let istio = reviews_rule("    tls: {mode: ISTIO_MUTUAL, caCertificates: /etc/certs/ca.pem}\n");
    assert_eq!(
        load_err(&istio).field.as_deref(),
        Some("spec.trafficPolicy.tls.caCertificates")
    );

    let unset = reviews_rule("    tls: {caCertificates: /etc/certs/ca.pem}\n");
    assert!(load_err(&unset).message.contains("mode DISABLE"), "{unset}");

    let no_host = reviews(
        "DestinationRule",
        "networking.istio.io/v1",
        "  trafficPolicy: {tls: {mode: SIMPLE}}\n",
    );
    assert_eq!(load_err(&no_host).field.as_deref(), Some("spec.host"));

    let subset = reviews(
        "DestinationRule",
        "networking.istio.io/v1",
        "  host: ratings\n  subsets:\n  - name: v1\n    trafficPolicy: {proxyProtocol: {version: V1}}\n",
    );
    assert_eq!(
        load_err(&subset).field.as_deref(),
        Some("spec.subsets[0].trafficPolicy.proxyProtocol")
    );

    let kind = reviews("VirtualService", "networking.istio.io/v1", "  hosts: [ratings]\n");
    let err = load_err(&kind);
    assert_eq!(err.field.as_deref(), Some("kind"));
    assert!(
        err.message
            .contains("not read by Palisade: it configures Istio's proxies"),
        "{err}"
    );
    // What else a mesh's files hold says what it is, and an unknown kind
    // of a known group or version says no more than that.
    for (kind, api, says) in [
        ("Policy", "authentication.istio.io/v1alpha1", "PeerAuthentication"),
        ("Service", "v1", "a Kubernetes object"),
        ("Deployment", "apps/v1", "a Kubernetes object"),
        ("List", "v1", "each of its `items` as a document"),
        ("HTTPRoute", "gateway.networking.k8s.io/v1", "Istio's proxies"),
        ("DestinationRules", "networking.istio.io/v1", "unknown kind"),
    ] {
        let err = load_err(&reviews(kind, api, "  x: 1\n"));
        assert!(err.message.contains(says), "{kind}: {err}");
    }
}

#[test]
fn an_oidc_login_names_one_way_for_the_client_to_authenticate() {
    let login = |extra: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: OidcLogin\nmetadata: {{name: login}}\nspec:\n  issuer: https://kc.example/realms/istio\n  clientId: productpage\n{extra}"
        )
    };
    for (extra, field, says) in [
        (
            "  clientSecretFile: /s\n  clientKey: {keyFile: /k}\n",
            "spec.clientKey",
            "not both",
        ),
        (
            "  clientAuthMethod: client_secret_post\n",
            "spec.clientAuthMethod",
            "public client",
        ),
        (
            "  clientSecretFile: /s\n  clientAuthMethod: private_key_jwt\n",
            "spec.clientAuthMethod",
            "needs clientKey",
        ),
        (
            "  clientKey: {keyFile: /k}\n  clientAuthMethod: client_secret_basic\n",
            "spec.clientAuthMethod",
            "private_key_jwt",
        ),
        (
            "  clientKey: {keyFile: /k, alg: RS256}\n",
            "spec.clientKey.alg",
            "unknown field",
        ),
        (
            "  clientKey: {keyFile: /k, algorithm: HS256}\n",
            "spec.clientKey.algorithm",
            "expected one of RS256, RS384",
        ),
        (
            "  clientKey: {keyFile: /k, algorithm: PS384}\n",
            "spec.clientKey.algorithm",
            "not a client key's algorithm",
        ),
        (
            "  sessionPath: /login\n",
            "spec.sessionPath",
            "used for two endpoints",
        ),
        (
            "  loginPath: /oauth2/callback\n",
            "spec.loginPath",
            "it is spec.callbackPath too",
        ),
        (
            "  callbackPath: /login\n",
            "spec.callbackPath",
            "it is spec.loginPath too",
        ),
        (
            "  sessionPath: session\n",
            "spec.sessionPath",
            "not a path of this service",
        ),
    ] {
        let err = load_err(&login(extra));
        assert_eq!(err.field.as_deref(), Some(field), "{extra}: {err}");
        assert!(err.to_string().contains(says), "{extra}: {err}");
    }
    for fine in [
        "",
        "  clientSecretFile: /s\n  clientAuthMethod: client_secret_post\n",
        "  clientKey: {keyFile: /k, algorithm: ES256, keyId: k1}\n  clientAuthMethod: private_key_jwt\n",
        "  clientKey: {keyFile: /k}\n",
        "  sessionPath: /oauth2/session\n",
    ] {
        PolicySet::from_yaml_str(&login(fine), "policy.yaml").unwrap_or_else(|e| panic!("{fine}: {e}"));
    }
}

const AUTHZ: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n";

/// The names of the documents that apply to `service` in `namespace`.
fn applying<'s>(set: &'s PolicySet, service: &str, namespace: &str) -> Vec<&'s str> {
    set.for_workload(&Workload::new(service, namespace))
        .documents()
        .iter()
        .map(|d| d.metadata.name.as_str())
        .collect()
}

#[test]
fn a_service_target_selects_the_workload_serving_it_in_the_document_namespace() {
    let yaml = format!(
        "{AUTHZ}metadata: {{name: refs, namespace: default}}\nspec:\n  targetRefs:\n  - {{kind: Service, group: \"\", name: details}}\n  - {{kind: Service, group: core, name: ratings}}\n  rules: [{{}}]\n\
         ---\n{AUTHZ}metadata: {{name: ref, namespace: default}}\nspec:\n  targetRef: {{kind: Service, name: details}}\n\
         ---\napiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: default}}\nspec:\n  targetRefs: [{{kind: Service, name: details}}]\n  jwtRules: [{{issuer: https://idp, audiences: [details]}}]\n\
         ---\n{AUTHZ}metadata: {{name: root, namespace: istio-system}}\nspec:\n  targetRefs: [{{kind: Service, name: details}}]\n\
         ---\n{AUTHZ}metadata: {{name: namespace-wide, namespace: default}}\nspec: {{}}\n"
    );
    let set = PolicySet::from_yaml_str(&yaml, "mesh.yaml").unwrap();
    assert_eq!(
        applying(&set, "details", "default"),
        ["refs", "ref", "jwt", "namespace-wide"]
    );
    assert_eq!(applying(&set, "ratings", "default"), ["refs", "namespace-wide"]);
    assert_eq!(applying(&set, "reviews", "default"), ["namespace-wide"]);
    // The root-namespace rule is for selectors: a Service target in
    // istio-system is the Service of that name in istio-system.
    assert_eq!(applying(&set, "details", "prod"), Vec::<&str>::new());
    assert_eq!(applying(&set, "details", "istio-system"), ["root"]);
    // A label the Service's workload carries does not matter: the target does.
    let labelled = Workload::new("reviews", "default").label("app", "details");
    assert!(!set.documents()[0].applies_to(&labelled));
    assert!(set.warnings().is_empty(), "{:?}", set.warnings());
    let Spec::AuthorizationPolicy(ap) = &set.documents()[0].spec else {
        panic!("not an AuthorizationPolicy")
    };
    assert_eq!(ap.target_refs[1], TargetRefSpec::service("ratings"));
    assert_eq!(ap.target_refs[0].group, TargetGroup::Core);
}

#[test]
fn gateway_targets_apply_to_no_workload_and_say_so() {
    let yaml = format!(
        "{AUTHZ}metadata: {{name: waypoint, namespace: default}}\nspec:\n  targetRefs:\n  - {{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}\n  action: DENY\n  rules: [{{}}]\n\
         ---\n{AUTHZ}metadata: {{name: class, namespace: istio-system}}\nspec:\n  targetRefs: [{{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}}]\n\
         ---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: egress, namespace: default}}\nspec:\n  targetRef: {{kind: ServiceEntry, group: networking.istio.io, name: github}}\n\
         ---\n{AUTHZ}metadata: {{name: both, namespace: default}}\nspec:\n  targetRefs:\n  - {{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}\n  - {{kind: Service, name: details}}\n"
    );
    let set = PolicySet::from_yaml_str(&yaml, "mesh.yaml").unwrap();
    // Without the target they would be namespace-wide (or mesh-wide).
    assert_eq!(applying(&set, "details", "default"), ["both"]);
    assert_eq!(applying(&set, "waypoint", "default"), Vec::<&str>::new());
    assert_eq!(
        applying(&set, "istio-waypoint", "istio-system"),
        Vec::<&str>::new()
    );
    let warnings: Vec<_> = set
        .warnings()
        .iter()
        .map(|w| (w.document(), w.field(), w.line().map(u32::from)))
        .collect();
    assert_eq!(
        warnings,
        [
            (Some(1), Some("spec.targetRefs[0]"), Some(1)),
            (Some(2), Some("spec.targetRefs[0]"), Some(9)),
            (Some(3), Some("spec.targetRef"), Some(15)),
            (Some(4), Some("spec.targetRefs[0]"), Some(21)),
        ]
    );
    assert_eq!(
        set.warnings()[0].to_string(),
        "mesh.yaml: document 1 (AuthorizationPolicy default/waypoint): field `spec.targetRefs[0]`: \
         `waypoint` is a Gateway (an ingress gateway or a waypoint), never an in-process workload: \
         this reference applies to no workload here (the proxy it names enforces the document) \
         (in the document at line 1)"
    );
    assert!(
        set.warnings()[2].message().contains("a ServiceEntry"),
        "{}",
        set.warnings()[2]
    );
    assert_eq!(
        set.warnings()[1].resource(),
        Some("AuthorizationPolicy istio-system/class")
    );
}

#[test]
fn target_refs_that_cannot_apply_fail_to_load_naming_the_field() {
    let gateway = "{kind: Gateway, group: gateway.networking.k8s.io, name: w}";
    for (spec, field, says) in [
        (
            "  selector: {matchLabels: {app: reviews}}\n  targetRefs: [{kind: Service, name: reviews}]\n"
                .to_owned(),
            "spec.targetRefs",
            "give either selector or targetRefs, not both (as in Istio)",
        ),
        (
            "  selector: {matchLabels: {app: reviews}}\n  targetRef: {kind: Service, name: reviews}\n"
                .to_owned(),
            "spec.targetRef",
            "give either selector or targetRef, not both (as in Istio)",
        ),
        (
            format!("  targetRef: {gateway}\n  targetRefs: [{gateway}]\n"),
            "spec.targetRefs",
            "give either targetRef or targetRefs, not both (as in Istio)",
        ),
        (
            "  targetRefs: [{kind: Service, group: gateway.networking.k8s.io, name: reviews}]\n".to_owned(),
            "spec.targetRefs[0].group",
            "a Service is in the group \"\" (core), not gateway.networking.k8s.io (as in Istio)",
        ),
        (
            "  targetRefs: [{kind: Gateway, name: w}]\n".to_owned(),
            "spec.targetRefs[0].group",
            "a Gateway is in the group gateway.networking.k8s.io, not \"\" (core) (as in Istio)",
        ),
        (
            "  targetRefs: [{kind: ServiceEntry, group: core, name: github}]\n".to_owned(),
            "spec.targetRefs[0].group",
            "a ServiceEntry is in the group networking.istio.io",
        ),
        (
            "  targetRefs: [{kind: Service, name: reviews, namespace: prod}]\n".to_owned(),
            "spec.targetRefs[0].namespace",
            "cross-namespace references are not supported (as in Istio)",
        ),
        (
            format!("  targetRefs:\n  - {gateway}\n  - {{kind: Service, name: ''}}\n"),
            "spec.targetRefs[1].name",
            "must not be empty",
        ),
        (
            "  targetRefs: [{kind: Deployment, name: reviews}]\n".to_owned(),
            "spec.targetRefs[0].kind",
            "unknown variant `Deployment`, expected one of Service, ServiceEntry, Gateway, GatewayClass",
        ),
        (
            "  targetRefs: [{kind: Service, group: apps, name: reviews}]\n".to_owned(),
            "spec.targetRefs[0].group",
            "unknown group `apps`",
        ),
        (
            "  targetRefs: [{kind: Service, name: reviews, sectionName: http}]\n".to_owned(),
            "spec.targetRefs[0].sectionName",
            "unknown field `sectionName`",
        ),
        (
            "  targetRefs: [{name: reviews}]\n".to_owned(),
            "spec.targetRefs[0]",
            "missing field `kind`",
        ),
    ] {
        for kind in ["AuthorizationPolicy", "RequestAuthentication"] {
            let err = load_err(&reviews(kind, "security.istio.io/v1", &spec));
            assert_eq!(err.document, Some(2), "{kind} {spec}: {err}");
            assert_eq!(err.field.as_deref(), Some(field), "{kind} {spec}: {err}");
            assert!(err.message.contains(says), "{kind} {spec}: {err}");
            assert_eq!(
                err.resource.as_deref(),
                Some(format!("{kind} default/reviews-ops").as_str())
            );
        }
    }
    // A located value error points at the value; a whole-value check at the document.
    let kind = load_err(&reviews(
        "AuthorizationPolicy",
        "security.istio.io/v1",
        "  targetRefs:\n  - kind: Deploymnt\n    name: reviews\n",
    ));
    assert_eq!(at(&kind), (Some(12), Some(11)), "{kind}");
    let both = load_err(&reviews(
        "AuthorizationPolicy",
        "security.istio.io/v1",
        "  selector: {matchLabels: {app: reviews}}\n  targetRefs: [{kind: Service, name: reviews}]\n",
    ));
    assert_eq!(at(&both), (Some(6), None));
    // An empty list is no target, as in Istio: the selector decides.
    PolicySet::from_yaml_str(
        &reviews(
            "AuthorizationPolicy",
            "security.istio.io/v1",
            "  selector: {matchLabels: {app: reviews}}\n  targetRefs: []\n",
        ),
        "f",
    )
    .unwrap();
}

#[test]
fn space_delimited_claims_are_read_and_checked() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec:\n  jwtRules:\n  - issuer: https://idp\n    spaceDelimitedClaims: [roles, https://example.com/groups]\n";
    let set = PolicySet::from_yaml_str(yaml, "f").unwrap();
    let Spec::RequestAuthentication(ra) = &set.documents()[0].spec else {
        panic!("not a RequestAuthentication")
    };
    assert_eq!(
        ra.jwt_rules[0].space_delimited_claims,
        ["roles", "https://example.com/groups"]
    );
    let err = load_err(&yaml.replace("[roles, ", "[roles, '', "));
    assert_eq!(
        err.field.as_deref(),
        Some("spec.jwtRules[0].spaceDelimitedClaims[1]")
    );
    assert_eq!(err.message, "must not be empty");
}

#[test]
fn a_loaded_policy_shows_its_redis_urls_without_their_password() {
    let yaml = "apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {name: dpop, namespace: default}
spec:
  dpop:
    replayStore: 'redis://:hunter2@redis.internal:6379/0'
---
apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {name: login, namespace: default}
spec:
  issuer: https://kc.example/realms/istio
  clientId: productpage
  session:
    store: 'rediss://app:hunter2@redis.internal:6380/1'
";
    let set = PolicySet::from_yaml_str(yaml, "policy.yaml").unwrap();
    let shown = format!("{set:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("redis://***@redis.internal:6379/0"), "{shown}");
    assert!(shown.contains("rediss://***@redis.internal:6380/1"), "{shown}");
    let policy = set.for_workload(&Workload::new("details", "default"));
    assert!(!format!("{policy:?}").contains("hunter2"));
}

#[test]
fn jwt_settings_refuse_what_they_would_drop_or_clamp() {
    let doc = |spec: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: JwtSettings\nmetadata: {{name: jwt}}\nspec:\n{spec}"
        )
    };
    for (spec, field) in [
        (
            "  issuer: https://kc.example/realms/x\n  realm: shop\n",
            "spec.realm",
        ),
        (
            "  issuer: https://kc.example/realms/x\n  maxTokenSize: 4096\n",
            "spec.maxTokenSize",
        ),
        (
            "  issuer: https://kc.example/realms/x\n  verifiedTokenCache: 0\n",
            "spec.verifiedTokenCache",
        ),
        (
            "  issuer: 'https://login.example/{tenant}/v2.0'\n  tenants: []\n",
            "spec.tenants",
        ),
        (
            "  issuer: 'https://{tenant}.example/{tenant}/v2.0'\n  tenants: [a]\n",
            "spec.issuer",
        ),
        ("  leeway: 11m\n", "spec.leeway"),
        ("  jwksCacheTtl: 10s\n", "spec.jwksCacheTtl"),
        ("  jwksCacheTtl: 48h\n", "spec.jwksCacheTtl"),
        ("  fetchTimeout: 0s\n", "spec.fetchTimeout"),
        ("  maxTokenLifetime: 0s\n", "spec.maxTokenLifetime"),
    ] {
        let err = load_err(&doc(spec));
        assert_eq!(err.field.as_deref(), Some(field), "{spec}: {err}");
    }
    for fine in [
        "  realm: shop\n  maxTokenSize: 4096\n  verifiedTokenCache: 0\n",
        "  issuer: https://kc.example/realms/x\n  leeway: 10m\n  jwksCacheTtl: 24h\n",
        "  jwksCacheTtl: 1m\n  fetchTimeout: 1s\n  maxTokenLifetime: 1h\n",
    ] {
        // With the rule the issuer's settings are for.
        let yaml = format!(
            "{}---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: j}}\nspec:\n  jwtRules: [{{issuer: 'https://kc.example/realms/x'}}]\n",
            doc(fine)
        );
        PolicySet::from_yaml_str(&yaml, "policy.yaml").unwrap_or_else(|e| panic!("{fine}: {e}"));
    }
}

#[test]
fn an_issuer_pattern_has_one_tenant() {
    let rule = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: entra}\nspec:\n  jwtRules:\n  - {issuer: https://idp.example}\n  - issuer: 'https://login.example/{tenant}/v2.0'\n    jwksUri: https://login.example/common/keys\n";
    // Its tenants may come in another file (`palisade explain --with`):
    // a workload's JWT authenticator is what needs them.
    PolicySet::from_yaml_str(rule, "policy.yaml").unwrap();
    let twice = rule.replace("login.example/{tenant}", "{tenant}.example/{tenant}");
    assert_ne!(twice, rule);
    let err = load_err(&twice);
    assert_eq!(err.field.as_deref(), Some("spec.jwtRules[1].issuer"), "{err}");
    assert!(err.to_string().contains("one `{tenant}`"), "{err}");
}

/// A role or group key that names no principal, or a realm the settings
/// do not allow, never matches: refused when the file loads.
#[test]
fn spnego_role_keys_name_principals_of_allowed_realms() {
    let doc = |tables: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: SpnegoSettings\nmetadata: {{name: krb}}\nspec:\n  allowedRealms: [EXAMPLE.TEST]\n{tables}"
        )
    };
    for (tables, field) in [
        ("  roles: {alice: [admin]}\n", "spec.roles[alice]"),
        ("  roles: {'*': [admin]}\n", "spec.roles[*]"),
        (
            "  groups: {'@EXAMPLE.TEST': [ops]}\n",
            "spec.groups[@EXAMPLE.TEST]",
        ),
        (
            "  roles: {'a*@EXAMPLE.TEST': [admin]}\n",
            "spec.roles[a*@EXAMPLE.TEST]",
        ),
        (
            "  roles: {alice@example.test: [admin]}\n",
            "spec.roles[alice@example.test]",
        ),
    ] {
        assert_eq!(load_err(&doc(tables)).field.as_deref(), Some(field), "{tables}");
    }
    PolicySet::from_yaml_str(
        &doc("  roles: {alice@EXAMPLE.TEST: [admin], '*@EXAMPLE.TEST': [user]}\n  groups: {bob@EXAMPLE.TEST: [ops]}\n"),
        "policy.yaml",
    )
    .unwrap();
}

#[test]
fn a_spnego_session_cookie_name_cannot_add_attributes() {
    let doc = |cookie: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: SpnegoSettings\nmetadata: {{name: krb}}\nspec:\n  sessionCookie:\n    keys: [{{id: 1, keyFile: /k}}]\n{cookie}"
        )
    };
    for (cookie, field) in [
        (
            "    name: 'sid; Domain=evil.example'\n",
            "spec.sessionCookie.name",
        ),
        ("    name: ''\n", "spec.sessionCookie.name"),
        ("    name: 'a=b'\n", "spec.sessionCookie.name"),
        ("    maxAge: 0s\n", "spec.sessionCookie.maxAge"),
    ] {
        assert_eq!(load_err(&doc(cookie)).field.as_deref(), Some(field), "{cookie}");
    }
    PolicySet::from_yaml_str(&doc("    name: krb_session\n    maxAge: 30m\n"), "policy.yaml").unwrap();
    // The builders' rule, an RFC 6265 cookie name (a token): `.` is one.
    PolicySet::from_yaml_str(&doc("    name: app.krb-session\n"), "policy.yaml").unwrap();
    let long = format!("    name: {}\n", "x".repeat(129));
    assert_eq!(
        load_err(&doc(&long)).field.as_deref(),
        Some("spec.sessionCookie.name")
    );
}

/// The (document, field) of each warning of a file.
fn warned(yaml: &str) -> Vec<(u32, String)> {
    let set = PolicySet::from_yaml_str(yaml, "mesh.yaml").unwrap();
    set.warnings()
        .iter()
        .map(|w| (w.document().unwrap(), w.field().unwrap_or_default().to_owned()))
        .collect()
}

#[test]
fn relaxations_and_fields_read_but_not_applied_are_warnings() {
    let pa = |mtls: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: details}}}}\n{mtls}"
        )
    };
    assert_eq!(
        warned(&pa(
            "  mtls: {mode: PERMISSIVE}\n  portLevelMtls: {8080: {mode: DISABLE}, 9090: {mode: STRICT}}\n"
        )),
        [
            (1, "spec.mtls.mode".into()),
            (1, "spec.portLevelMtls.8080.mode".into())
        ]
    );
    assert!(
        warned(&pa(
            "  mtls: {mode: STRICT}\n  portLevelMtls: {8080: {mode: UNSET}}\n"
        ))
        .is_empty()
    );

    let dry = format!(
        "{AUTHZ}metadata: {{name: d, annotations: {{istio.io/dry-run: \"true\"}}}}\nspec: {{action: DENY, rules: [{{}}]}}\n---\n\
         {AUTHZ}metadata: {{name: e, annotations: {{istio.io/dry-run: \"false\"}}}}\nspec: {{action: DENY, rules: [{{}}]}}\n"
    );
    assert_eq!(
        warned(&dry),
        [(1, "metadata.annotations.istio.io/dry-run".into())]
    );

    let rbac = "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {name: b, namespace: default}\nspec:\n  subjects: [{user: alice}]\n  roleRef: {kind: ServiceRole, name: r}\n  mode: PERMISSIVE\n\
                ---\napiVersion: rbac.istio.io/v1alpha1\nkind: RbacConfig\nmetadata: {name: default}\nspec:\n  mode: ON\n  inclusion: {namespaces: [default]}\n  enforcementMode: PERMISSIVE\n";
    assert_eq!(
        warned(rbac),
        [
            (1, "spec.mode".into()),
            (2, "spec.inclusion".into()),
            (2, "spec.enforcementMode".into())
        ]
    );

    let kc = "apiVersion: palisade.dev/v1alpha1\nkind: KeycloakAdapter\nmetadata: {name: kc}\nspec:\n  realm: r\n  auth-server-url: https://kc\n  ssl-required: all\n  use-resource-role-mappings: true\n  enable-cors: false\n  confidential-port: 0\n  disable-trust-manager: true\n";
    assert_eq!(
        warned(kc),
        [
            (1, "spec.ssl-required".into()),
            (1, "spec.use-resource-role-mappings".into()),
            (1, "spec.disable-trust-manager".into()),
            (1, "spec.verify-token-audience".into())
        ]
    );
    // Keycloak's own export, `external` (its default) and port 0, is not
    // said (docs/configuration.md says what `external` does there and not
    // here); its default audience check (none) is.
    assert_eq!(
        warned(&kc.replace("all", "external").replace("true", "false")),
        [(1, "spec.verify-token-audience".into())]
    );
    let json = r#"{"realm":"r","auth-server-url":"https://kc","allow-any-hostname":true}"#;
    assert!(KeycloakAdapterConfig::from_json_str(json, "keycloak.json").is_ok());
    // A value Keycloak's adapter refuses is refused; its case is free.
    for (ssl, loads) in [("NONE", true), ("External", true), ("al", false), ("all ", false)] {
        let json = format!(r#"{{"realm":"r","auth-server-url":"https://kc","ssl-required":"{ssl}"}}"#);
        let loaded = KeycloakAdapterConfig::from_json_str(&json, "keycloak.json");
        assert_eq!(loaded.is_ok(), loads, "{ssl}");
        if let Err(e) = loaded {
            assert_eq!(e.field.as_deref(), Some("ssl-required"), "{e}");
        }
    }
    // One application's adapter (`resource`, an audience check or sign-in)
    // without a selector applies namespace-wide: said; with one, it
    // applies to the workloads it selects only.
    let app = "apiVersion: palisade.dev/v1alpha1\nkind: KeycloakAdapter\nmetadata: {name: kc, namespace: default}\nspec: {realm: r, auth-server-url: 'https://kc', resource: reviews, bearer-only: true, verify-token-audience: true}\n";
    assert_eq!(warned(app), [(1, "spec.selector".into())]);
    let selected = app.replace("spec: {", "spec: {selector: {matchLabels: {app: reviews}}, ");
    assert!(warned(&selected).is_empty());
    let empty = app.replace("spec: {", "spec: {selector: {matchLabels: {}}, ");
    assert_eq!(warned(&empty), [(1, "spec.selector".into())]);
    let set = PolicySet::from_yaml_str(&selected, "kc.yaml").unwrap();
    let adapters = |name: &str| {
        set.for_workload(&Workload::new(name, "default"))
            .keycloak_adapters()
            .count()
    };
    assert_eq!((adapters("reviews"), adapters("details")), (1, 0));
    let realm_wide = app
        .replace("resource: reviews, ", "")
        .replace(", verify-token-audience: true", "");
    assert!(warned(&realm_wide).iter().all(|(_, f)| f != "spec.selector"));
    // A keycloak.json is one application's own file: no selector there.
    let json = r#"{"realm":"r","auth-server-url":"https://kc","selector":{"matchLabels":{"app":"x"}}}"#;
    let err = KeycloakAdapterConfig::from_json_str(json, "keycloak.json").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("selector"), "{err}");
    let json = r#"{"realm":"r","auth-server-url":"https://kc","selector":null}"#;
    let err = KeycloakAdapterConfig::from_json_str(json, "keycloak.json").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("selector"), "{err}");
    KeycloakAdapterConfig::from_json_str(r#"{"realm":"r","auth-server-url":"https://kc"}"#, "keycloak.json")
        .unwrap();

    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: default}\nspec:\n  host: ratings\n  exportTo: [.]\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - name: v2\n    labels: {version: v2}\n    trafficPolicy: {tls: {mode: SIMPLE}}\n";
    // `exportTo` is applied as Istio applies it; `~`, which leaves the
    // rule to no caller, is said.
    for applied in ["[.]", "['*']", "[default]", "[default, prod]"] {
        assert_eq!(
            warned(&dr.replace("[.]", applied)),
            [(1, "spec.subsets[1].trafficPolicy".into())],
            "{applied}"
        );
        assert_eq!(
            warned(
                &dr.replace("[.]", applied)
                    .replace("namespace: default", "namespace: istio-system")
            ),
            [(1, "spec.subsets[1].trafficPolicy".into())],
            "{applied}"
        );
    }
    assert_eq!(
        warned(&dr.replace("[.]", "['~']"))[0],
        (1, "spec.exportTo[0]".into())
    );

    let spnego = "apiVersion: palisade.dev/v1alpha1\nkind: SpnegoSettings\nmetadata: {name: k}\nspec:\n  sessionCookie:\n    keys: [{id: 1, keyFile: /k}]\n    insecureOverHttp: true\n";
    assert_eq!(
        warned(spnego),
        [(1, "spec.sessionCookie.insecureOverHttp".into())]
    );
    assert!(warned(&spnego.replace("true", "false")).is_empty());

    // Settings for an issuer the file never verifies are refused (a typo
    // would leave its checks out); for one it does, nothing is said.
    let settings = "apiVersion: palisade.dev/v1alpha1\nkind: JwtSettings\nmetadata: {name: s}\nspec: {issuer: 'https://idp.example/realms/a', leeway: 30s}\n\
                    ---\napiVersion: palisade.dev/v1alpha1\nkind: JwtSettings\nmetadata: {name: t}\nspec: {issuer: 'https://kc/realms/r', leeway: 30s}\n\
                    ---\napiVersion: palisade.dev/v1alpha1\nkind: KeycloakAdapter\nmetadata: {name: kc}\nspec: {selector: {matchLabels: {app: api}}, realm: r, auth-server-url: 'https://kc/', resource: api, verify-token-audience: true}\n";
    let err = load_err(settings);
    assert_eq!(
        (err.document, err.field.as_deref()),
        (Some(1), Some("spec.issuer")),
        "{err}"
    );
    assert!(err.to_string().contains("https://idp.example/realms/a"), "{err}");
    // A trailing `/` is another issuer: a typo as much as any.
    let ruled = |issuer: &str| {
        format!(
            "{settings}---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: j}}\nspec:\n  jwtRules: [{{issuer: '{issuer}', audiences: [a]}}]\n"
        )
    };
    assert_eq!(
        load_err(&ruled("https://idp.example/realms/a/")).field.as_deref(),
        Some("spec.issuer")
    );
    assert!(warned(&ruled("https://idp.example/realms/a")).is_empty());
}

#[test]
fn rbac_on_with_inclusion_must_include_something() {
    let config = |spec: &str| {
        format!(
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {{name: default}}\nspec:\n{spec}"
        )
    };
    for spec in [
        "  mode: ON_WITH_INCLUSION\n",
        "  mode: ON_WITH_INCLUSION\n  inclusion: {services: [], namespaces: []}\n",
    ] {
        let err = load_err(&config(spec));
        assert_eq!(err.field.as_deref(), Some("spec.inclusion"), "{err}");
        assert!(err.to_string().contains("RBAC is on nowhere"), "{err}");
    }
    assert!(
        PolicySet::from_yaml_str(
            &config("  mode: ON_WITH_INCLUSION\n  inclusion: {namespaces: [default]}\n"),
            "f"
        )
        .is_ok()
    );
}

#[test]
fn jwt_rule_fields_are_checked_when_the_file_loads() {
    let rule = |fields: &str| {
        reviews(
            "RequestAuthentication",
            "security.istio.io/v1",
            &format!(
                "  selector: {{matchLabels: {{app: reviews}}}}\n  jwtRules:\n  - issuer: https://a\n{fields}"
            ),
        )
    };
    let cases = [
        (
            "    fromHeaders: [{name: 'x token'}]\n",
            "spec.jwtRules[0].fromHeaders[0].name",
        ),
        (
            "    outputPayloadToHeader: 'x:y'\n",
            "spec.jwtRules[0].outputPayloadToHeader",
        ),
        (
            "    outputClaimToHeaders: [{header: x-sub, claim: sub}, {header: '', claim: iss}]\n",
            "spec.jwtRules[0].outputClaimToHeaders[1].header",
        ),
        ("    jwksUri: file:///etc/jwks.json\n", "spec.jwtRules[0].jwksUri"),
        ("    jwksUri: 'https:///certs'\n", "spec.jwtRules[0].jwksUri"),
        (
            "    fromCookies: [session, '']\n",
            "spec.jwtRules[0].fromCookies[1]",
        ),
        ("  - issuer: https://a\n", "spec.jwtRules[1].issuer"),
    ];
    for (fields, field) in cases {
        let err = load_err(&rule(fields));
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert_eq!(err.document, Some(2), "{err}");
    }
    let secret = load_err(&rule("    jwksUri: 'ftp://keys:hunter2@a/jwks'\n")).to_string();
    assert!(!secret.contains("hunter2"), "{secret}");
    let fine = "    fromHeaders: [{name: X-Token, prefix: 'Bearer '}]\n    outputClaimToHeaders: [{header: x-sub, claim: sub}]\n    jwksUri: https://a/jwks\n";
    assert!(PolicySet::from_yaml_str(&rule(fine), "f").is_ok());
}

#[test]
fn an_external_origin_is_a_scheme_a_host_and_a_port() {
    let login = |origin: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: OidcLogin\nmetadata: {{name: l}}\nspec:\n  issuer: https://idp\n  clientId: c\n  externalOrigin: '{origin}'\n"
        )
    };
    for good in [
        "https://shop.example",
        "https://shop.example:8443/",
        "http://127.0.0.1:8080",
    ] {
        assert!(PolicySet::from_yaml_str(&login(good), "f").is_ok(), "{good}");
    }
    for bad in [
        "shop.example",
        "https://shop.example/app",
        "https://user@shop.example",
        "https://user:s3cret@shop.example",
        "https://shop.example?x=1",
        "ftp://shop.example",
        "HTTPS://shop.example",
    ] {
        let err = load_err(&login(bad));
        assert_eq!(err.field.as_deref(), Some("spec.externalOrigin"), "{bad}: {err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}

#[test]
fn a_post_logout_redirect_is_a_path_here_or_an_absolute_url() {
    let login = |uri: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: OidcLogin\nmetadata: {{name: l}}\nspec:\n  issuer: https://idp\n  clientId: c\n  postLogoutRedirectUri: '{uri}'\n"
        )
    };
    for good in [
        "/",
        "/bye?from=logout",
        "https://www.example/bye",
        "http://127.0.0.1:8080/",
        "https://shop.example:8443/bye?x=1#top",
        "https://[::1]/",
        "https://bücher.example/",
    ] {
        assert!(PolicySet::from_yaml_str(&login(good), "f").is_ok(), "{good}");
        assert!(is_landing_uri(good), "{good}");
    }
    for bad in [
        "//evil.example/",
        "bye",
        "javascript:alert(1)",
        "https:///path",
        "https://:443/",
        "https://[::1/",
        "https://shop.example:port/",
        "https://shop.example:70000/",
        "HTTPS://shop.example/",
        "https://[.]/",
        "https://user@evil.example/",
        "https://user:s3cret@evil.example/",
        "/a\\b",
        "/a b",
    ] {
        let err = load_err(&login(bad));
        assert_eq!(
            err.field.as_deref(),
            Some("spec.postLogoutRedirectUri"),
            "{bad}: {err}"
        );
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(!is_landing_uri(bad), "{bad}");
    }
    assert!(!is_landing_uri("/a\r\nSet-Cookie: x=1"));
    assert!(!is_service_path("/cb?x=1") && !is_service_path("//cb") && is_service_path("/oauth2/callback"));
}

/// A document that expands aliases of aliases ("billion laughs": ten
/// levels of nine references, 10^9 strings once expanded) is refused
/// while it is read, naming the file, rather than exhausting memory.
#[test]
fn an_alias_bomb_is_refused_when_the_file_loads() {
    let mut yaml = String::from(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bomb}\nspec:\n  rules:\n  - to:\n    - operation:\n        paths: &l0 [\"/a\", \"/a\", \"/a\", \"/a\", \"/a\", \"/a\", \"/a\", \"/a\", \"/a\"]\n",
    );
    for level in 1..10 {
        let prev = format!("*l{}", level - 1);
        yaml.push_str(&format!(
            "    - operation:\n        methods: &l{level} [{}]\n",
            vec![prev; 9].join(", ")
        ));
    }
    let started = std::time::Instant::now();
    let err = PolicySet::from_yaml_str(&yaml, "bomb.yaml").unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // serde-saphyr's node budget stops the expansion.
    let shown = err.to_string();
    assert!(
        shown.contains("bomb.yaml: document 1") && shown.contains("budget"),
        "{shown}"
    );
}

#[test]
fn debug_shows_document_urls_as_logs_do() {
    let yaml = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  jwtRules:
  - issuer: https://kc.example/realms/shop
    jwksUri: https://keys:s3cret@kc.example/jwks.json?sig=abc
---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {name: introspection}
spec:
  issuer: https://kc.example/realms/shop
  introspection: {endpoint: 'https://kc.example/introspect?api_key=k3y', clientId: rs, clientSecret: x}
";
    let set = PolicySet::from_yaml_str(yaml, "urls.yaml").unwrap();
    let shown = format!("{set:?}");
    for secret in ["s3cret", "sig=abc", "k3y"] {
        assert!(!shown.contains(secret), "{secret}: {shown}");
    }
    assert!(shown.contains("kc.example/jwks.json"), "{shown}");
}

/// From an audit: values Istio takes that no request can match are said
/// aloud; values that break a promise at once (a header name no request
/// carries, an RBAC inclusion of blanks, a key fetch without a floor) are
/// refused, naming the field.
#[test]
fn values_that_match_nothing_are_said_and_values_that_cannot_work_refused() {
    let never = format!(
        "{AUTHZ}metadata: {{name: d}}\nspec:\n  action: ALLOW\n  rules:\n  - to: [{{operation: {{methods: [delete, GET, HEAD], paths: [\"admin/*\", \"/ok\", \"*.png\"]}}}}]\n---\n\
         apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRole\nmetadata: {{name: r}}\nspec:\n  rules: [{{services: [\"*\"], methods: [Post]}}]\n"
    );
    // Where they only narrow a rule; where they would leave requests open,
    // refused (`a_value_no_request_carries_is_refused_where_it_leaves_requests_open`).
    assert_eq!(
        warned(&never),
        [
            (1, "spec.rules[0].to[0].operation.methods[0]".into()),
            (1, "spec.rules[0].to[0].operation.paths[0]".into()),
            (2, "spec.rules[0].methods[0]".into()),
        ]
    );
    let header = format!(
        "{AUTHZ}metadata: {{name: h}}\nspec:\n  action: DENY\n  rules: [{{when: [{{key: \"request.headers[X Team]\", values: [\"*\"]}}]}}]\n"
    );
    let e = load_err(&header);
    assert_eq!(e.field.as_deref(), Some("spec.rules[0].when[0].key"), "{e}");
    assert!(e.message.contains("not an HTTP header name"), "{e}");
    // One per mesh: named `default`, as Istio's validation has it.
    for kind in ["ClusterRbacConfig", "RbacConfig"] {
        let named = format!(
            "apiVersion: rbac.istio.io/v1alpha1\nkind: {kind}\nmetadata: {{name: team, namespace: shop}}\nspec: {{mode: 'ON', enforcementMode: PERMISSIVE}}\n"
        );
        assert_eq!(load_err(&named).field.as_deref(), Some("metadata.name"), "{kind}");
    }
    let blank = "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {name: default}\nspec: {mode: ON_WITH_INCLUSION, inclusion: {namespaces: [\"\"]}}\n";
    assert_eq!(
        load_err(blank).field.as_deref(),
        Some("spec.inclusion.namespaces[0]")
    );
    let floor = "apiVersion: palisade.dev/v1alpha1\nkind: JwtSettings\nmetadata: {name: s}\nspec: {minRefreshInterval: 0s}\n";
    assert_eq!(load_err(floor).field.as_deref(), Some("spec.minRefreshInterval"));
    let keycloak = |extra: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: KeycloakAdapter\nmetadata: {{name: kc}}\nspec: {{selector: {{matchLabels: {{app: api}}}}, realm: r, auth-server-url: \"https://kc.example\", resource: api{extra}}}\n"
        )
    };
    assert_eq!(
        load_err(&keycloak(", min-time-between-jwks-requests: 0"))
            .field
            .as_deref(),
        Some("spec.min-time-between-jwks-requests")
    );
    for ttl in ["0", "9", "2592001", "18446744073709551615"] {
        assert_eq!(
            load_err(&keycloak(&format!(", public-key-cache-ttl: {ttl}")))
                .field
                .as_deref(),
            Some("spec.public-key-cache-ttl"),
            "{ttl}"
        );
    }
    assert_eq!(
        load_err(&keycloak(", min-time-between-jwks-requests: 86401"))
            .field
            .as_deref(),
        Some("spec.min-time-between-jwks-requests")
    );
    PolicySet::from_yaml_str(
        &keycloak(", public-key-cache-ttl: 10, min-time-between-jwks-requests: 86400"),
        "kc.yaml",
    )
    .unwrap();
    // Sign-in, which a document that is not bearer-only turns on, needs the
    // client id and a confidential client's secret: checked when the file
    // loads, whichever workload the document names.
    for (extra, field) in [
        (", credentials: {secrte: x}", "spec.credentials.secrte"),
        (
            ", credentials: {jwt: {client-keystore-file: k.jks}}",
            "spec.credentials.secret",
        ),
        (", credentials: {secret: 42}", "spec.credentials.secret"),
    ] {
        assert_eq!(
            load_err(&keycloak(extra)).field.as_deref(),
            Some(field),
            "{extra}"
        );
    }
    let no_resource = keycloak(", public-client: true").replace(", resource: api", "");
    assert_eq!(load_err(&no_resource).field.as_deref(), Some("spec.resource"));
    for fine in [
        ", public-client: true",
        ", credentials: {secret: s}",
        ", bearer-only: true, credentials: {}",
    ] {
        PolicySet::from_yaml_str(&keycloak(fine), "f").unwrap();
    }
    // A `keycloak.json` read for bearer tokens alone needs none of it.
    let export = r#"{"realm": "r", "auth-server-url": "https://kc.example", "resource": "api", "credentials": {"jwt": {"client-keystore-file": "k.jks"}}}"#;
    KeycloakAdapterConfig::from_json_str(export, "keycloak.json").unwrap();
    // The issuer is made of it: a host without a scheme is no issuer.
    let no_scheme = keycloak("").replace("\"https://kc.example\"", "kc.example:8443");
    let err = load_err(&no_scheme);
    assert_eq!(err.field.as_deref(), Some("spec.auth-server-url"), "{err}");
    assert!(
        err.to_string()
            .contains("`kc.example:8443` is not an http(s) URL"),
        "{err}"
    );
    // Keycloak's default accepts any of the realm's tokens: said.
    assert_eq!(warned(&keycloak("")), [(1, "spec.verify-token-audience".into())]);
    assert!(warned(&keycloak(", verify-token-audience: true")).is_empty());
    // What Keycloak's export writes for a client with Authorization
    // Services on enforces them (ENFORCING by default, or as written):
    // refused, since Palisade does not ask them. Turned off, it loads.
    for enforcer in [
        "{}",
        "{enforcement-mode: ENFORCING}",
        "{enforcement-mode: PERMISSIVE, paths: []}",
        "{enforcement-mode: 7}",
    ] {
        let err = load_err(&keycloak(&format!(
            ", verify-token-audience: true, policy-enforcer: {enforcer}"
        )));
        assert_eq!(
            err.field.as_deref(),
            Some("spec.policy-enforcer"),
            "{enforcer}: {err}"
        );
        assert!(err.to_string().contains("enforcement-mode: DISABLED"), "{err}");
    }
    assert!(
        warned(&keycloak(
            ", verify-token-audience: true, policy-enforcer: {enforcement-mode: DISABLED}"
        ))
        .is_empty()
    );
    let jwt = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: j}\nspec:\n  selector: {matchLabels: {app: nobody}}\n  jwtRules: [{issuer: 'https://kc.example/realms/r', timeout: 0s}]\n";
    assert_eq!(load_err(jwt).field.as_deref(), Some("spec.jwtRules[0].timeout"));
    for (rule, field) in [
        ("{issuer: kc-realm-r}", "issuer"),
        (
            "{issuer: 'https://kc.example/realms/r', jwks: '{\"keys\": 7}'}",
            "jwks",
        ),
        ("{issuer: 'https://kc.example/realms/r', jwks: 'keys'}", "jwks"),
    ] {
        let yaml = jwt.replace("{issuer: 'https://kc.example/realms/r', timeout: 0s}", rule);
        assert_ne!(yaml, jwt);
        assert_eq!(
            load_err(&yaml).field,
            Some(format!("spec.jwtRules[0].{field}")),
            "{rule}"
        );
    }
    // Not a URL, with its keys given: fine (no discovery).
    let named = jwt.replace(
        "{issuer: 'https://kc.example/realms/r', timeout: 0s}",
        "{issuer: kc-realm-r, jwks: '{\"keys\": []}'}",
    );
    assert!(PolicySet::from_yaml_str(&named, "j.yaml").is_ok());
    // A rule no workload here applies, refused all the same.
    let dr = |tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d, namespace: default}}\nspec:\n  host: ratings\n  workloadSelector: {{matchLabels: {{app: nobody}}}}\n  trafficPolicy: {{tls: {tls}}}\n"
        )
    };
    for (tls, field) in [
        ("{mode: SIMPLE, insecureSkipVerify: true}", "insecureSkipVerify"),
        ("{mode: SIMPLE, subjectAltNames: [ratings]}", "subjectAltNames"),
        (
            "{mode: MUTUAL, clientCertificate: /c, privateKey: /k}",
            "caCertificates",
        ),
    ] {
        assert_eq!(
            load_err(&dr(tls)).field.as_deref(),
            Some(format!("spec.trafficPolicy.tls.{field}").as_str()),
            "{tls}"
        );
    }
}

/// A policy file of no document (comments only) allows every request: a
/// warning of the file says so, which `palisade check` prints too. A file
/// of white space only, or document markers only (a writer's truncation, a
/// generator that failed or printed nothing), is refused, at start-up as on
/// reload. A stream given in code is not a
/// file: not warned of, and an empty one is no policy.
#[test]
fn a_file_of_no_document_is_warned_of_and_an_empty_one_refused() {
    let dir = std::env::temp_dir().join(format!("palisade-no-document-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("comments.yaml");
    std::fs::write(&file, "# no policy\n").unwrap();
    let set = PolicySet::from_file(&file).unwrap();
    let said: Vec<String> = set.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("comments.yaml") && said[0].contains(super::EMPTY_FILE),
        "{said:?}"
    );
    for text in ["", " \n\t\n", "---\n", "\u{feff}---\n...\n---\r\n"] {
        let file = dir.join("empty.yaml");
        std::fs::write(&file, text).unwrap();
        let err = PolicySet::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("empty.yaml") && err.contains("# no policy"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        PolicySet::from_yaml_str("", "inline")
            .unwrap()
            .documents()
            .is_empty()
    );
    assert!(
        PolicySet::from_yaml_str("# none\n", "inline")
            .unwrap()
            .warnings()
            .is_empty()
    );
}

/// Two `JwtSettings` documents of one level (one namespace, one issuer or
/// none) may not both give a setting: which would win is not for the
/// file's order to say. Other fields, another issuer or another namespace
/// (the workload's own overrides the root's) are fine.
#[test]
fn a_jwt_setting_is_given_once_per_namespace_and_issuer() {
    let doc = |name: &str, namespace: &str, spec: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: JwtSettings\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
        )
    };
    // With the rule the issuer's settings are for, last.
    let file = |a: String, b: String| {
        format!(
            "{a}---\n{b}---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: j}}\nspec:\n  jwtRules: [{{issuer: 'https://kc.example/realms/r'}}]\n"
        )
    };
    let err = load_err(&file(
        doc("a", "default", "{leeway: 10s, realm: shop}"),
        doc("b", "default", "{maxStale: 1h, leeway: 30s}"),
    ));
    assert_eq!(
        (err.document, err.field.as_deref()),
        (Some(2), Some("spec.leeway")),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("also given by JwtSettings default/a for"),
        "{err}"
    );
    let issuer = "https://kc.example/realms/r";
    let err = load_err(&file(
        doc("a", "default", &format!("{{issuer: '{issuer}', caFile: /a.pem}}")),
        doc("b", "default", &format!("{{issuer: '{issuer}', caFile: /b.pem}}")),
    ));
    assert_eq!(err.field.as_deref(), Some("spec.caFile"), "{err}");
    for (a, b) in [
        (
            doc("a", "default", "{leeway: 10s}"),
            doc("b", "default", "{maxStale: 1h}"),
        ),
        (
            doc("a", "default", "{leeway: 10s}"),
            doc("b", "istio-system", "{leeway: 30s}"),
        ),
        (
            doc("a", "default", "{leeway: 10s}"),
            doc("b", "default", &format!("{{issuer: '{issuer}', leeway: 30s}}")),
        ),
    ] {
        let yaml = file(a, b);
        PolicySet::from_yaml_str(&yaml, "policy.yaml").unwrap_or_else(|e| panic!("{yaml}: {e}"));
    }
    // Documents built in code are checked when their set is made.
    let fine = PolicySet::from_yaml_str(
        &file(
            doc("a", "default", "{leeway: 10s}"),
            doc("b", "default", "{maxStale: 1h}"),
        ),
        "policy.yaml",
    )
    .unwrap();
    let mut documents = fine.documents().to_vec();
    let Spec::JwtSettings(first) = &documents[0].spec else {
        panic!("a JwtSettings")
    };
    let leeway = first.leeway;
    let Spec::JwtSettings(second) = &mut documents[1].spec else {
        panic!("a JwtSettings")
    };
    second.leeway = leeway;
    let err = PolicySet::from_documents("code", documents).unwrap_err();
    assert_eq!(
        (err.document, err.field.as_deref()),
        (Some(2), Some("spec.leeway")),
        "{err}"
    );
    PolicySet::from_documents("code", fine.documents().to_vec()).unwrap();
}

/// A path pattern with `//` or a dot segment matches no request (requests
/// are matched normalised): said when the file loads; refused where it
/// would leave requests open (below).
#[test]
fn path_patterns_that_normalisation_removes_are_warnings() {
    let policy = |paths: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  action: ALLOW\n  rules: [{{to: [{{operation: {{paths: {paths}}}}}]}}]\n"
        )
    };
    assert_eq!(
        warned(&policy(
            "[\"/a//b\", \"/a/./b\", \"/a/../b\", \"*/../x\", \"/a.b/..c\", \"/a/%2e%2E/b\"]"
        )),
        [
            (1, "spec.rules[0].to[0].operation.paths[0]".into()),
            (1, "spec.rules[0].to[0].operation.paths[1]".into()),
            (1, "spec.rules[0].to[0].operation.paths[2]".into()),
            (1, "spec.rules[0].to[0].operation.paths[3]".into()),
            (1, "spec.rules[0].to[0].operation.paths[5]".into()),
        ]
    );
    assert!(warned(&policy("[\"/a/b/\", \"/a/*\", \"*.bak\"]")).is_empty());
}

/// A method or path no request carries, where it leaves requests open, is
/// refused naming the field: a `DENY` (or `CUSTOM`) rule's `methods` or
/// `paths` (the rule never fires: `delete` for `DELETE`), an `ALLOW` rule's
/// or a `ServiceRole`'s `notMethods` or `notPaths` (they exclude nothing).
/// Where it only narrows a rule, a warning.
#[test]
fn a_value_no_request_carries_is_refused_where_it_leaves_requests_open() {
    let ap = |action: &str, operation: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  action: {action}\n  rules: [{{to: [{{operation: {operation}}}]}}]\n"
        )
    };
    let custom =
        |operation: &str| ap("CUSTOM", operation).replace("  rules:", "  provider: {name: ext}\n  rules:");
    for (doc, field) in [
        (ap("DENY", "{methods: [GET, delete]}"), "spec.rules[0].to[0].operation.methods[1]"),
        (ap("DENY", "{paths: ['/admin//x']}"), "spec.rules[0].to[0].operation.paths[0]"),
        (ap("DENY", "{paths: ['admin/*']}"), "spec.rules[0].to[0].operation.paths[0]"),
        (custom("{methods: [post]}"), "spec.rules[0].to[0].operation.methods[0]"),
        (ap("ALLOW", "{notMethods: [delete]}"), "spec.rules[0].to[0].operation.notMethods[0]"),
        (ap("ALLOW", "{notPaths: ['/a/../admin']}"), "spec.rules[0].to[0].operation.notPaths[0]"),
        (
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRole\nmetadata: {name: r}\nspec:\n  rules: [{services: ['*'], notMethods: [delete]}]\n".into(),
            "spec.rules[0].notMethods[0]",
        ),
    ] {
        let err = load_err(&doc);
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert!(err.to_string().contains("matches no request"), "{err}");
    }
    // Where it narrows a rule only: loaded, with a warning.
    for doc in [
        ap("ALLOW", "{methods: [delete]}"),
        ap("DENY", "{notMethods: [get]}"),
        ap("DENY", "{notPaths: ['/a//b']}"),
        ap("AUDIT", "{methods: [delete]}"),
        // An extension method may be written as its clients send it.
        ap("DENY", "{methods: [purgeAll]}"),
    ] {
        assert_eq!(warned(&doc).len(), 1, "{doc}");
    }
}

/// The YAML reader's messages for the commonest slips are said as what to
/// write, at the right field: a key given twice (and a `---` missing
/// between two documents), a scalar where a list or a map goes, a value
/// read as an alias.
#[test]
fn the_commonest_yaml_slips_are_said_as_what_to_write() {
    let ap = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n";
    for (doc, field, said) in [
        (
            format!("{ap}spec:\n  action: DENY\n  action: ALLOW\n  rules: [{{}}]\n"),
            "spec.action",
            "given twice in one map: keep one",
        ),
        (
            format!("{ap}spec: {{}}\n{ap}spec: {{}}\n"),
            "apiVersion",
            "is a `---` line missing",
        ),
        (
            format!(
                "{ap}spec:\n  rules: [{{when: [{{key: 'request.auth.claims[groups]', values: admins}}]}}]\n"
            ),
            "spec.rules[0].when[0].values",
            "expected a list: `[a, b]`",
        ),
        (
            format!("{ap}spec:\n  rules: [{{from: [{{source: }}]}}]\n"),
            "spec.rules[0].from[0].source",
            "expected a map",
        ),
        (
            "apiVersion: palisade.dev/v1alpha1\nkind: JwtSettings\nmetadata: {name: s}\nspec: {leeway: *x}\n"
                .to_owned(),
            "spec",
            "quote it",
        ),
    ] {
        let err = load_err(&doc);
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert!(err.to_string().contains(said), "{err}");
        assert!(!err.to_string().contains("DuplicateKeyPolicy"), "{err}");
    }
}

/// A keycloak.json where a policy file goes is said to be one, with how
/// to give it.
#[test]
fn a_keycloak_json_given_as_a_policy_file_is_said_to_be_one() {
    let err = load_err(
        "{\n  \"realm\": \"shop\",\n  \"auth-server-url\": \"https://kc.example/\",\n  \"resource\": \"api\"\n}\n",
    );
    assert_eq!(err.field.as_deref(), Some("apiVersion"), "{err}");
    assert!(
        err.to_string().contains("this is a keycloak.json")
            && err.to_string().contains("kind: KeycloakAdapter"),
        "{err}"
    );
    let err = load_err("kind: AuthorizationPolicy\nmetadata: {name: p}\n");
    assert_eq!(err.message, "missing", "{err}");
}

/// A keycloak adapter whose `auth-server-url` is the realm's URL (the
/// issuer would be `…/realms/R/realms/R`): a warning naming the field.
#[test]
fn a_realms_url_as_the_auth_server_url_is_a_warning() {
    let kc = |url: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: KeycloakAdapter\nmetadata: {{name: kc}}\nspec: {{selector: {{matchLabels: {{app: api}}}}, realm: shop, auth-server-url: '{url}', resource: api, verify-token-audience: true}}\n"
        )
    };
    assert_eq!(
        warned(&kc("https://kc.example/realms/shop/")),
        [(1, "spec.auth-server-url".to_owned())]
    );
    assert!(warned(&kc("https://kc.example/auth")).is_empty());
}

/// An unknown condition key is refused with the nearest key Palisade
/// reads, its bracket kept, or the list of them.
#[test]
fn an_unknown_condition_key_names_the_nearest_one() {
    for (key, said) in [
        (
            "request.auth.claim[groups]",
            "did you mean `request.auth.claims[groups]`?",
        ),
        ("source.principals", "did you mean `source.principal`?"),
        (
            "request.auth.principals",
            "did you mean `request.auth.principal`?",
        ),
        (
            "request.header[x-tenant]",
            "did you mean `request.headers[x-tenant]`?",
        ),
        ("source.serviceaccount", "did you mean `source.serviceAccount`?"),
        ("request.time", "Palisade reads request.auth.principal, "),
    ] {
        let err = load_err(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  rules: [{{when: [{{key: '{key}', values: [x]}}]}}]\n"
        ));
        assert_eq!(err.field.as_deref(), Some("spec.rules[0].when[0].key"), "{err}");
        assert!(err.to_string().contains(said), "{key}: {err}");
    }
}

/// A namespace Kubernetes would refuse (`Default`) holds no workload
/// under Kubernetes: a warning naming the field (outside Kubernetes, a
/// workload may be named so in code).
#[test]
fn a_namespace_kubernetes_refuses_is_a_warning() {
    for ns in ["Default", "prod_eu", "-x"] {
        let doc = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec: {{action: DENY, rules: [{{}}]}}\n"
        );
        assert_eq!(warned(&doc), [(1, "metadata.namespace".to_owned())], "{ns}");
    }
    let fine = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system}\nspec: {action: DENY, rules: [{}]}\n";
    assert!(warned(fine).is_empty());
}

/// A request principal that is one of the file's issuers alone matches
/// none of its tokens (a principal is `ISSUER/SUBJECT`): a warning naming
/// the field and `ISSUER/*`.
#[test]
fn an_issuer_alone_as_a_request_principal_is_a_warning() {
    let file = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec:\n  jwtRules: [{issuer: 'https://kc.example/realms/shop', audiences: [api]}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {requestPrincipals: ['https://kc.example/realms/shop/alice', 'https://kc.example/realms/shop']}}]\n  - when: [{key: request.auth.principal, notValues: ['https://kc.example/realms/shop/']}]\n";
    let set = PolicySet::from_yaml_str(file, "mesh.yaml").unwrap();
    let warned: Vec<_> = set
        .warnings()
        .iter()
        .filter(|w| w.to_string().contains("request principal is ISSUER/SUBJECT"))
        .map(|w| (w.document(), w.field().map(str::to_owned)))
        .collect();
    assert_eq!(
        warned,
        [
            (
                Some(2),
                Some("spec.rules[0].from[0].source.requestPrincipals[1]".to_owned())
            ),
            (Some(2), Some("spec.rules[1].when[0].notValues[0]".to_owned())),
        ]
    );
    assert!(
        set.warnings()
            .iter()
            .any(|w| w.to_string().contains("`https://kc.example/realms/shop/*`"))
    );
}

/// An issuer that ends in `/` (Auth0's, Entra ID's v1) gives principals
/// `https://x.auth0.com//SUB`: a pattern without the issuer's own `/`
/// matches none of its tokens, and the issuer alone is told the same
/// pattern; a pattern written right is not warned of.
#[test]
fn a_request_principal_short_of_its_issuers_final_slash_is_a_warning() {
    let file = |principals: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  jwtRules: [{{issuer: 'https://x.auth0.com/', audiences: [api]}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  rules:\n  - from: [{{source: {{requestPrincipals: [{principals}]}}}}]\n"
        )
    };
    let warned = |principals: &str| -> Vec<String> {
        PolicySet::from_yaml_str(&file(principals), "auth0.yaml")
            .unwrap()
            .warnings()
            .iter()
            .filter(|w| w.to_string().contains("request principal is ISSUER/SUBJECT"))
            .map(ToString::to_string)
            .collect()
    };
    for (written, right) in [
        ("'https://x.auth0.com/*'", "`https://x.auth0.com//*`"),
        (
            "'https://x.auth0.com/auth0|42'",
            "`https://x.auth0.com//auth0|42`",
        ),
        ("'https://x.auth0.com/'", "`https://x.auth0.com//*`"),
    ] {
        let w = warned(written);
        assert!(w.len() == 1 && w[0].contains(right), "{written}: {w:?}");
    }
    assert!(warned("'https://x.auth0.com//*'").is_empty());
    assert!(warned("'*/auth0|42'").is_empty());
}

/// A peer principal written as a SPIFFE ID (`spiffe://…`) matches no
/// peer, in Istio as here: refused naming the field, in a source and a
/// condition alike (and an RBAC binding's `source.principal` property).
#[test]
fn a_principal_written_with_its_spiffe_scheme_is_refused() {
    for (doc, field) in [
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/b, 'spiffe://cluster.local/ns/default/sa/productpage']}}]}]\n",
            "spec.rules[0].from[0].source.principals[1]",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules: [{when: [{key: source.principal, notValues: ['SPIFFE://cluster.local/ns/x/sa/y']}]}]\n",
            "spec.rules[0].when[0].notValues[0]",
        ),
    ] {
        let err = load_err(doc);
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert!(err.to_string().contains("without `spiffe://`"), "{err}");
    }
}

/// An `RbacConfig` service named short (`details`) is that service of every
/// namespace here, and no service for Istio: said when the file loads (an
/// exclusion so turns RBAC off in every namespace).
#[test]
fn a_short_rbac_service_name_is_a_warning() {
    let rbac = |services: &str| {
        format!(
            "apiVersion: rbac.istio.io/v1alpha1\nkind: RbacConfig\nmetadata: {{name: default}}\nspec:\n  mode: ON_WITH_EXCLUSION\n  exclusion: {{services: {services}}}\n"
        )
    };
    assert_eq!(
        warned(&rbac(
            "[details, 'reviews.default.svc.cluster.local', '*', 'ratings.*']"
        )),
        [(1, "spec.exclusion.services[0]".into())]
    );
}

/// A `DENY` on `GET` without `HEAD` leaves HEAD to the GET handler (the
/// frameworks answer it so): said when the file loads.
#[test]
fn a_deny_of_get_without_head_is_a_warning() {
    let policy = |action: &str, methods: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  action: {action}\n  rules: [{{to: [{{operation: {{methods: {methods}, paths: ['/admin/*']}}}}]}}]\n"
        )
    };
    assert_eq!(
        warned(&policy("DENY", "[GET, POST]")),
        [(1, "spec.rules[0].to[0].operation.methods".into())]
    );
    assert!(warned(&policy("DENY", "[GET, HEAD]")).is_empty());
    assert!(warned(&policy("ALLOW", "[GET]")).is_empty());
    // A CUSTOM check of GET alone, an ALLOW of every method but GET.
    let custom = policy("CUSTOM", "[GET]").replace("  rules:", "  provider: {name: ext}\n  rules:");
    assert_eq!(
        warned(&custom),
        [(1, "spec.rules[0].to[0].operation.methods".into())]
    );
    let but_get = policy("ALLOW", "[POST]").replace("methods: [POST]", "notMethods: [GET]");
    assert_eq!(
        warned(&but_get),
        [(1, "spec.rules[0].to[0].operation.notMethods".into())]
    );
    // HEAD in another `to` of the rule covers it.
    let two = policy("DENY", "[GET]").replace(
        "paths: ['/admin/*']}}]",
        "paths: ['/admin/*']}}, {operation: {methods: [HEAD]}}]",
    );
    assert_ne!(two, policy("DENY", "[GET]"));
    assert!(warned(&two).is_empty());
}

/// `request.auth.claims[realm_access.roles]` reads a top-level claim of
/// that name (as Envoy does), not Keycloak's nested roles: said when the
/// file loads, with the form that reads them.
#[test]
fn a_dotted_claim_name_is_a_warning() {
    let policy = |key: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  rules: [{{when: [{{key: '{key}', values: [admin]}}]}}]\n"
        )
    };
    let set = PolicySet::from_yaml_str(&policy("request.auth.claims[realm_access.roles]"), "p.yaml").unwrap();
    let said: Vec<String> = set.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("request.auth.claims[realm_access][roles]"),
        "{said:?}"
    );
    assert!(warned(&policy("request.auth.claims[realm_access][roles]")).is_empty());
    assert!(warned(&policy("request.auth.claims[groups]")).is_empty());
    assert!(warned(&policy("request.auth.claims[https://shop.example/roles]")).is_empty());
}

/// A path pattern with an escape no normalised path holds (`%2A`, read as
/// the wildcard `*`; a `%` without two hex digits) is refused at load, in
/// an `AuthorizationPolicy` and in a `ServiceRole`, whose `notPaths` would
/// otherwise always hold; their escapes are read as a request's are.
#[test]
fn path_patterns_with_escapes_no_request_has_are_refused() {
    for (doc, field) in [
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: ['/files/%2A']}}]}]\n",
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRole\nmetadata: {name: r}\nspec:\n  rules: [{services: ['*'], notPaths: ['/ok', '/private%zz/*']}]\n",
            "spec.rules[0].notPaths[1]",
        ),
    ] {
        let err = load_err(doc);
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert!(err.to_string().contains("matches no request"), "{err}");
    }
    // A brace outside a whole `{*}` or `{**}` segment is refused as it is
    // written, not read as the escapes `%7B`, `%7D` (a literal no request
    // has: a DENY that never fires).
    for pattern in ["/api/{version}/admin", "/a/{id}/*", "*}", "/a/é{*}"] {
        let err = load_err(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: ['{pattern}']}}}}]}}]\n"
        ));
        assert_eq!(
            err.field.as_deref(),
            Some("spec.rules[0].to[0].operation.paths[0]"),
            "{pattern}: {err}"
        );
    }
}

/// A `DENY` of a host without a port misses the requests that name the
/// port (Istio compares it too): said when the file loads, so `palisade
/// check` prints it, and not for an `ALLOW`.
#[test]
fn a_deny_of_a_host_without_its_port_is_a_warning() {
    let policy = |action: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  action: {action}\n  rules: [{{to: [{{operation: {{hosts: [admin.example, 'api.example:*', 'db.example:5432']}}}}]}}]\n"
        )
    };
    assert_eq!(
        warned(&policy("DENY")),
        [(1, "spec.rules[0].to[0].operation.hosts[0]".into())]
    );
    assert!(warned(&policy("ALLOW")).is_empty());
    // An ALLOW of every host but one admits it with a port.
    let but = policy("ALLOW").replace("hosts:", "notHosts:");
    assert_eq!(
        warned(&but),
        [(1, "spec.rules[0].to[0].operation.notHosts[0]".into())]
    );
    // A CUSTOM check of a host is skipped for it with a port.
    let custom = policy("CUSTOM").replace("  rules:", "  provider: {name: ext}\n  rules:");
    assert_eq!(
        warned(&custom),
        [(1, "spec.rules[0].to[0].operation.hosts[0]".into())]
    );
}

/// A rule without `audiences` is checked against the service's names, where
/// Envoy under Istio checks none: said when the file loads, naming the rule.
#[test]
fn a_jwt_rule_without_audiences_is_a_warning() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec:\n  jwtRules:\n  - {issuer: https://a.example, audiences: [api]}\n  - {issuer: https://b.example}\n";
    assert_eq!(warned(yaml), [(1, "spec.jwtRules[1].audiences".into())]);
}

/// The dry-run annotation as Istio reads and validates it: Go's
/// `ParseBool` spellings; ALLOW and DENY only; AuthorizationPolicy only.
#[test]
fn the_dry_run_annotation_is_read_and_refused_as_istio_does() {
    let policy = |action: &str, value: &str| {
        format!(
            "{AUTHZ}metadata: {{name: p, annotations: {{istio.io/dry-run: \"{value}\"}}}}\nspec: {{action: {action}, rules: [{{}}]}}\n"
        )
    };
    for value in ["true", "True", "TRUE", "t", "T", "1"] {
        assert_eq!(
            warned(&policy("DENY", value)),
            [(1, "metadata.annotations.istio.io/dry-run".into())],
            "{value}"
        );
    }
    for value in ["false", "False", "FALSE", "f", "F", "0"] {
        assert!(warned(&policy("ALLOW", value)).is_empty(), "{value}");
    }
    let err = load_err(&policy("DENY", "yes"));
    assert_eq!(
        err.field.as_deref(),
        Some("metadata.annotations.istio.io/dry-run")
    );
    for action in ["AUDIT", "CUSTOM"] {
        let yaml = policy(action, "false").replace("rules:", "provider: {name: ext}, rules:");
        let yaml = if action == "AUDIT" {
            policy(action, "false")
        } else {
            yaml
        };
        let err = load_err(&yaml);
        assert_eq!(
            err.field.as_deref(),
            Some("metadata.annotations.istio.io/dry-run"),
            "{action}"
        );
        assert!(err.message.contains(action), "{err}");
    }
    let peer = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, annotations: {istio.io/dry-run: \"true\"}}\nspec: {mtls: {mode: STRICT}}\n";
    let err = load_err(peer);
    assert_eq!(
        err.field.as_deref(),
        Some("metadata.annotations.istio.io/dry-run")
    );
    assert!(err.message.contains("only an AuthorizationPolicy"), "{err}");
}

/// Documents pasted from examples applied with `kubectl apply -n NS` name
/// no namespace: beside documents that name one, each is a warning; two
/// of one name are refused saying why they are one.
#[test]
fn a_document_without_a_namespace_beside_named_ones_is_a_warning() {
    let doc = |name: &str, ns: &str| format!("{AUTHZ}metadata: {{name: {name}{ns}}}\nspec: {{}}\n");
    let file = [
        doc("a", ", namespace: foo"),
        doc("b", ""),
        doc("c", ", namespace: default"),
    ]
    .join("---\n");
    assert_eq!(warned(&file), [(2, "metadata.namespace".into())]);
    // Alone, or beside `default` and the root namespace only, it says nothing.
    let quiet = [
        doc("b", ""),
        doc("c", ", namespace: default"),
        doc("d", ", namespace: istio-system"),
    ];
    assert!(warned(&quiet.join("---\n")).is_empty());
    // An RbacConfig is the mesh's, whatever its namespace.
    let rbac = "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {name: default}\nspec: {mode: 'OFF'}\n";
    assert!(warned(&[doc("a", ", namespace: foo"), rbac.to_owned()].join("---\n")).is_empty());
    let twice = [doc("default", ""), doc("default", "")].join("---\n");
    assert!(
        load_err(&twice)
            .message
            .contains("kubectl's `-n` is not known here")
    );
    let named = [
        doc("default", ", namespace: foo"),
        doc("default", ", namespace: foo"),
    ]
    .join("---\n");
    assert!(!load_err(&named).message.contains("kubectl"));
}

/// What `kubectl get -o yaml` prints in `metadata` loads.
#[test]
fn kubectl_metadata_loads() {
    let yaml = format!(
        "{AUTHZ}metadata:\n  name: p\n  namespace: prod\n  uid: 1\n  resourceVersion: '2'\n  generation: 3\n  creationTimestamp: '2026-01-01T00:00:00Z'\n  managedFields: [{{manager: kubectl}}]\n  ownerReferences: [{{kind: X, name: y}}]\n  finalizers: [z]\nspec: {{}}\n"
    );
    PolicySet::from_yaml_str(&yaml, "f").unwrap();
}

/// A `DestinationRule`'s host as lookups compare it, and how well it
/// matches: exactly before the longest wildcard.
#[test]
fn destination_rule_hosts_are_qualified_and_match_exactly_before_the_longest_wildcard() {
    let qualified = |host: &str, namespace: &str| {
        DestinationRuleSpec {
            host: host.into(),
            ..DestinationRuleSpec::default()
        }
        .qualified_host(namespace)
    };
    assert_eq!(qualified("Reviews", "prod"), "reviews.prod.svc.cluster.local");
    assert_eq!(
        qualified("reviews.prod.svc.cluster.local.", "x"),
        "reviews.prod.svc.cluster.local"
    );
    assert_eq!(qualified("*", "x"), "*");
    assert_eq!(host_specificity("a.b.c", "a.b.c"), Some(usize::MAX));
    assert_eq!(host_specificity("*.b.c", "a.b.c"), Some(4));
    assert_eq!(host_specificity("*.c", "a.b.c"), Some(2));
    assert_eq!(host_specificity("*", "a.b.c"), Some(0));
    assert_eq!(host_specificity("*.b.c", "b.c"), None);
    assert_eq!(host_specificity("x.b.c", "a.b.c"), None);
}

/// Documents built in code pass the checks a file's documents pass when
/// their set is made, whichever part later reads them (a `KeycloakAdapter`'s
/// bounds were read by nothing that checked them).
#[test]
fn documents_built_in_code_are_checked_as_a_files() {
    let kc = "apiVersion: palisade.dev/v1alpha1\nkind: KeycloakAdapter\nmetadata: {name: kc}\nspec: {realm: r, auth-server-url: 'https://kc', resource: api, bearer-only: true, public-key-cache-ttl: 60}\n";
    let loaded = PolicySet::from_yaml_str(kc, "kc.yaml").unwrap();
    let mut documents = loaded.documents().to_vec();
    let Spec::KeycloakAdapter(k) = &mut documents[0].spec else {
        panic!("a KeycloakAdapter")
    };
    k.public_key_cache_ttl = Some(1);
    let err = PolicySet::from_documents("code", documents.clone()).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("spec.public-key-cache-ttl"), "{err}");
    assert!(err.to_string().starts_with("code: document 1"), "{err}");
    // Two of one kind and name, as a file's loading refuses them.
    let twice = [loaded.documents(), loaded.documents()].concat();
    let err = PolicySet::from_documents("code", twice).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("metadata.name"), "{err}");
    let fine = PolicySet::from_documents("code", loaded.documents().to_vec()).unwrap();
    assert_eq!(fine.documents().len(), 1);
}

/// One document turns sign-in on; every reader of it asks
/// `WorkloadPolicy::sign_in`, which refuses two.
#[test]
fn the_sign_in_document_is_chosen_once() {
    let login = |name: &str, extra: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: OidcLogin\nmetadata: {{name: {name}}}\nspec:\n  issuer: https://idp\n  clientId: shop\n{extra}"
        )
    };
    let adapter = |name: &str, spec: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: KeycloakAdapter\nmetadata: {{name: {name}}}\nspec: {{realm: r, auth-server-url: 'https://kc', {spec}}}\n"
        )
    };
    let workload = Workload::new("shop", "default");
    let sign_in = |yaml: &str| {
        let set = PolicySet::from_yaml_str(yaml, "p.yaml").unwrap_or_else(|e| panic!("{yaml}: {e}"));
        set.for_workload(&workload).sign_in().map(|s| {
            s.map(|s| {
                (
                    s.document().metadata.name.clone(),
                    s.client_id().to_owned(),
                    s.cookie_name().to_owned(),
                    s.paths().login.to_owned(),
                    s.paths().callback.to_owned(),
                )
            })
        })
    };
    let own = |s: &str| s.to_owned();
    assert_eq!(
        sign_in(&login(
            "l",
            "  loginPath: /signin\n  session: {cookieName: shop_session}\n"
        ))
        .unwrap(),
        Some((
            own("l"),
            own("shop"),
            own("shop_session"),
            own("/signin"),
            own("/oauth2/callback")
        ))
    );
    assert_eq!(
        sign_in(&adapter("kc", "resource: web, public-client: true")).unwrap(),
        Some((
            own("kc"),
            own("web"),
            own(SIGN_IN_COOKIE),
            own("/login"),
            own("/oauth2/callback")
        ))
    );
    // Bearer-only adapters sign nobody in.
    assert_eq!(
        sign_in(&adapter("kc", "resource: web, bearer-only: true")).unwrap(),
        None
    );
    for (yaml, document, field) in [
        (
            format!("{}---\n{}", login("a", ""), login("b", "")),
            1,
            "spec.selector",
        ),
        (
            format!(
                "{}---\n{}",
                login("a", ""),
                adapter("kc", "resource: web, public-client: true")
            ),
            1,
            "spec",
        ),
        (
            format!(
                "{}---\n{}",
                adapter("a", "resource: web, public-client: true"),
                adapter("b", "resource: web, public-client: true")
            ),
            2,
            "spec",
        ),
    ] {
        let err = sign_in(&yaml).unwrap_err();
        assert_eq!(
            (err.document, err.field.as_deref()),
            (Some(document), Some(field)),
            "{yaml}: {err}"
        );
    }
}

/// `problems_in_file`: every document that does not load, in file order;
/// nothing for a file that loads; the read error for one that cannot be
/// read.
#[test]
fn every_document_that_does_not_load_is_a_problem_of_its_own() {
    let dir = std::env::temp_dir().join(format!("palisade-problems-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.yaml");
    let ok = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ok}\nspec: {}\n";
    std::fs::write(
        &file,
        format!(
            "{}---\n{ok}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p}}\nspec: {{mtls: {{mode: STRICTT}}}}\n",
            ok.replace("spec: {}", "spec: {action: ALOW}").replace("name: ok", "name: first")
        ),
    )
    .unwrap();
    let first = PolicySet::from_file(&file).unwrap_err();
    let problems = PolicySet::problems_in_file(&file);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].to_string(), first.to_string());
    assert_eq!((problems[0].document, problems[1].document), (Some(1), Some(3)));
    assert_eq!(problems[1].field.as_deref(), Some("spec.mtls.mode"));
    std::fs::write(&file, ok).unwrap();
    assert!(PolicySet::problems_in_file(&file).is_empty());
    std::fs::remove_file(&file).unwrap();
    let problems = PolicySet::problems_in_file(&file);
    assert!(
        problems.len() == 1 && problems[0].to_string().contains("cannot read"),
        "{problems:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What Istio's validation refuses, refused when the file loads, for
/// another workload too, naming the field: a wildcard or an empty key in
/// a selector (which would select no workload here, where a reader may
/// take it for "every workload"), port 0 in `portLevelMtls`, an empty
/// audience or output claim; and what would only fail when the service
/// starts: an `OidcLogin` session timeout of zero or one that contradicts
/// the other's default, a SPNEGO service named as a principal, an empty
/// allowed realm.
#[test]
fn values_that_would_select_match_or_set_nothing_fail_to_load() {
    let cases = [
        (
            "AuthorizationPolicy",
            "security.istio.io/v1",
            "  selector: {matchLabels: {app: \"*\"}}\n  action: DENY\n  rules: [{}]\n",
            "spec.selector.matchLabels.app",
        ),
        (
            "AuthorizationPolicy",
            "security.istio.io/v1",
            "  selector: {matchLabels: {\"\": x}}\n",
            "spec.selector.matchLabels",
        ),
        (
            "DestinationRule",
            "networking.istio.io/v1",
            "  host: ratings.default.svc.cluster.local\n  workloadSelector: {matchLabels: {\"app*\": x}}\n",
            "spec.workloadSelector.matchLabels.app*",
        ),
        (
            "PeerAuthentication",
            "security.istio.io/v1",
            "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {0: {mode: DISABLE}}\n",
            "spec.portLevelMtls.0",
        ),
        (
            "RequestAuthentication",
            "security.istio.io/v1",
            "  jwtRules: [{issuer: https://kc.example/realms/x, audiences: [\"\"]}]\n",
            "spec.jwtRules[0].audiences[0]",
        ),
        (
            "RequestAuthentication",
            "security.istio.io/v1",
            "  jwtRules: [{issuer: https://kc.example/realms/x, outputClaimToHeaders: [{header: x-user, claim: \"\"}]}]\n",
            "spec.jwtRules[0].outputClaimToHeaders[0].claim",
        ),
        (
            "OidcLogin",
            "palisade.dev/v1alpha1",
            "  issuer: https://kc.example/realms/x\n  clientId: shop\n  session: {absoluteTimeout: 10m}\n",
            "spec.session.absoluteTimeout",
        ),
        (
            "OidcLogin",
            "palisade.dev/v1alpha1",
            "  issuer: https://kc.example/realms/x\n  clientId: shop\n  session: {idleTimeout: 9h}\n",
            "spec.session.idleTimeout",
        ),
        (
            "OidcLogin",
            "palisade.dev/v1alpha1",
            "  issuer: https://kc.example/realms/x\n  clientId: shop\n  session: {idleTimeout: 0s}\n",
            "spec.session.idleTimeout",
        ),
        (
            "SpnegoSettings",
            "palisade.dev/v1alpha1",
            "  service: HTTP/www.example.test\n",
            "spec.service",
        ),
        (
            "SpnegoSettings",
            "palisade.dev/v1alpha1",
            "  allowedRealms: [EXAMPLE.TEST, \"\"]\n",
            "spec.allowedRealms[1]",
        ),
    ];
    for (kind, api_version, spec, field) in cases {
        let err = load_err(&reviews(kind, api_version, spec));
        assert_eq!(err.document, Some(2), "{kind}: {err}");
        assert_eq!(err.field.as_deref(), Some(field), "{kind}: {err}");
    }
    // Within the defaults, and a service named as GSSAPI takes it: loaded.
    for (kind, api_version, spec) in [
        (
            "OidcLogin",
            "palisade.dev/v1alpha1",
            "  issuer: https://kc.example/realms/x\n  clientId: shop\n  session: {idleTimeout: 1h, absoluteTimeout: 2h}\n",
        ),
        (
            "SpnegoSettings",
            "palisade.dev/v1alpha1",
            "  service: HTTP@www.example.test\n",
        ),
        (
            "PeerAuthentication",
            "security.istio.io/v1",
            "  selector: {matchLabels: {app: reviews}}\n  portLevelMtls: {8080: {mode: DISABLE}}\n",
        ),
    ] {
        PolicySet::from_yaml_str(&reviews(kind, api_version, spec), "policy.yaml")
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

/// A policy file without end (a device) or too large is refused saying
/// so, rather than read until the memory is full.
#[test]
fn a_device_without_end_or_a_huge_file_is_refused_not_read_without_end() {
    let err = PolicySet::from_file("/dev/zero").unwrap_err();
    assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
    let dir = palisade_testkit::TempDir::new("palisade-policy-read");
    let huge = dir.path().join("huge.yaml");
    let file = std::fs::File::create(&huge).unwrap();
    file.set_len(MAX_POLICY_FILE + 1).unwrap();
    let err = PolicySet::from_file(&huge).unwrap_err();
    assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
    assert_eq!(PolicySet::problems_in_file(&huge).len(), 1);
}

/// The files a `JwtSettings` document reads when built are watched with the
/// policy file: a rotated DPoP nonce secret is a reload like a rotated
/// client secret.
#[test]
fn the_files_a_jwt_settings_document_reads_are_named_for_the_reloader() {
    let yaml = "apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {name: dpop, namespace: default}
spec:
  caFile: /etc/palisade/ca.pem
  dpop: {requireNonce: true, nonceSecretFile: /etc/palisade/nonce.secret}
";
    let set = PolicySet::from_yaml_str(yaml, "files.yaml").unwrap();
    let named: Vec<_> = set
        .files_named()
        .into_iter()
        .map(|f| f.display().to_string())
        .collect();
    assert_eq!(named, ["/etc/palisade/ca.pem", "/etc/palisade/nonce.secret"]);
}

/// A file of more documents than a process's policies need is refused,
/// naming the first over: each document is checked against the others
/// at every load, which must stay quick. Long lists in one document are
/// checked for repeats in one pass.
#[test]
fn a_file_of_too_many_documents_is_refused_and_long_lists_load() {
    let role = |i: usize| {
        format!(
            "---\napiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRole\nmetadata: {{name: r{i}}}\nspec:\n  rules: [{{services: ['*']}}]\n"
        )
    };
    let most: String = (0..super::MAX_DOCUMENTS).map(role).collect();
    assert_eq!(
        PolicySet::from_yaml_str(&most, "policy.yaml")
            .unwrap()
            .documents()
            .len(),
        super::MAX_DOCUMENTS
    );
    let err = load_err(&format!("{most}{}", role(super::MAX_DOCUMENTS)));
    assert_eq!(
        err.document,
        u32::try_from(super::MAX_DOCUMENTS + 1).ok(),
        "{err}"
    );
    assert!(err.to_string().contains("more than 4096 documents"), "{err}");
    // 100,000 namespaces exported to, the last given twice.
    let mut names: Vec<String> = (0..100_000).map(|i| format!("n{i}")).collect();
    names.push("n7".into());
    let dr = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: ratings\n  exportTo: [{}]\n",
        names.join(", ")
    );
    let err = load_err(&dr);
    assert_eq!(err.field.as_deref(), Some("spec.exportTo[100000]"), "{err}");
    assert!(err.to_string().contains("`n7` is given twice"), "{err}");
}
