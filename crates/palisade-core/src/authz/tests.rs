use std::net::SocketAddr;

use proptest::prelude::*;

use super::*;
use crate::identity::{PeerIdentity, TokenClaims, Verification};
use crate::policy::{PolicySet, Workload};
use crate::request::{ConnectionInfo, OwnedRequest};

fn policy(yaml: &str) -> Result<AccessPolicy, PolicyError> {
    let set = PolicySet::from_yaml_str(yaml, "t.yaml")?;
    AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default")))
}

fn user(sub: &str, claims: serde_json::Value) -> Identity {
    user_of("https://idp", sub, claims)
}

fn user_of(issuer: &str, sub: &str, claims: serde_json::Value) -> Identity {
    let t = TokenClaims {
        issuer: issuer.into(),
        subject: sub.into(),
        claims: claims.as_object().cloned().unwrap_or_default(),
        ..TokenClaims::default()
    };
    Identity::from_token(t, Verification::assertion())
}

fn peer(principal: &str) -> Identity {
    let ns = principal.split("/ns/").nth(1).and_then(|r| r.split('/').next());
    Identity::from_peer(
        PeerIdentity {
            principal: Some(principal.into()),
            namespace: ns.map(str::to_owned),
            ..PeerIdentity::default()
        },
        Verification::assertion(),
    )
}

fn conn(remote: &str, local: &str) -> ConnectionInfo {
    ConnectionInfo {
        remote_addr: Some(remote.parse::<SocketAddr>().unwrap()),
        local_addr: Some(local.parse::<SocketAddr>().unwrap()),
        ..ConnectionInfo::default()
    }
}

const HEAD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n";

fn allowed(p: &AccessPolicy, req: &OwnedRequest, id: Option<&Identity>) -> bool {
    p.evaluate(req, id).is_allowed()
}

#[test]
fn no_policy_allows_everyone() {
    assert!(allowed(&policy("").unwrap(), &OwnedRequest::get("/"), None));
}

#[test]
fn empty_spec_denies_all_and_empty_rule_allows_all() {
    let deny_all = policy(&format!("{HEAD}spec: {{}}\n")).unwrap();
    assert!(!allowed(
        &deny_all,
        &OwnedRequest::get("/"),
        Some(&user("a", serde_json::json!({})))
    ));
    let allow_all = policy(&format!("{HEAD}spec: {{rules: [{{}}]}}\n")).unwrap();
    assert!(allowed(&allow_all, &OwnedRequest::get("/"), None));
}

#[test]
fn deny_wins_over_allow_and_is_explained() {
    let yaml = format!(
        "{HEAD}spec: {{rules: [{{}}]}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: d}}\nspec:\n  action: DENY\n  rules: [{{to: [{{operation: {{methods: [GET]}}}}]}}, {{to: [{{operation: {{paths: [\"/admin*\"]}}}}]}}]\n"
    );
    let p = policy(&yaml).unwrap();
    let d = p.evaluate(&OwnedRequest::new("POST", "/admin/x"), None);
    assert!(!d.is_allowed());
    assert_eq!(
        (d.policy(), d.rule(), d.action()),
        (Some("default/d"), Some(1), Some(Action::Deny))
    );
    assert_eq!(d.to_string(), "denied by DENY policy default/d rule 1");
    let ok = p.evaluate(&OwnedRequest::new("POST", "/list"), None);
    assert_eq!(ok.to_string(), "allowed by ALLOW policy default/p rule 0");
}

#[test]
fn paths_are_normalised_before_matching() {
    let p = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [\"/admin\", \"/admin/*\"]}}}}]}}]\n"
    ))
    .unwrap();
    for path in [
        "/admin",
        "//admin",
        "/%61dmin",
        "/x/../admin",
        "/admin/./",
        "/public/%2e%2e/admin/x",
    ] {
        assert!(
            !allowed(&p, &OwnedRequest::get(path), None),
            "{path} slipped past the DENY rule"
        );
    }
    assert!(allowed(&p, &OwnedRequest::get("/administrator"), None));
    assert!(
        !allowed(&p, &OwnedRequest::get("/bad%zz"), None),
        "a malformed path is never allowed"
    );
}

/// Escaped slashes are refused by default: a wildcard capture decodes
/// them into segments a path rule did not see. `KEEP` serves them, and is
/// warned of.
#[test]
fn escaped_slashes_are_refused_unless_kept() {
    let deny = format!(
        "{HEAD}spec:\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [\"/files/private/*\"]}}}}]}}]\n"
    );
    let keep = "---\napiVersion: palisade.dev/v1alpha1\nkind: AuthorizationSettings\nmetadata: {name: s}\nspec: {escapedSlashes: KEEP}\n";
    let strict = policy(&deny).unwrap();
    let kept = policy(&format!("{deny}{keep}")).unwrap();
    for path in [
        "/files/private%2Fkey",
        "/files/private%5ckey",
        "/files/private\\key",
    ] {
        assert!(!allowed(&strict, &OwnedRequest::get(path), None), "{path}");
        assert!(allowed(&kept, &OwnedRequest::get(path), None), "{path} (KEEP)");
    }
    assert!(allowed(&strict, &OwnedRequest::get("/files/public/key"), None));
    let warned = PolicySet::from_yaml_str(&format!("{deny}{keep}"), "p.yaml").unwrap();
    let warned: Vec<_> = warned.warnings().iter().filter_map(|w| w.field()).collect();
    assert_eq!(warned, ["spec.escapedSlashes"]);
    assert!(
        PolicySet::from_yaml_str(&deny, "p.yaml")
            .unwrap()
            .warnings()
            .is_empty()
    );
    // In code: the same default, and the same switch.
    let code = |escaped: Option<EscapedSlashes>| {
        let b = AccessPolicy::builder().deny("d", [Rule::new().paths(["/files/private/*"])]);
        match escaped {
            Some(e) => b.escaped_slashes(e),
            None => b,
        }
        .build()
        .unwrap()
    };
    let escaped = OwnedRequest::get("/files/private%2Fkey");
    assert!(!allowed(&code(None), &escaped, None));
    assert!(allowed(&code(Some(EscapedSlashes::Keep)), &escaped, None));
    assert!(!allowed(&code(Some(EscapedSlashes::Reject)), &escaped, None));
}

/// A pattern written with escapes, as a policy for Envoy (which keeps
/// `%40` and `%3A`) writes it, matches the requests it names: its escapes
/// are normalised as the requests' are.
#[test]
fn escapes_in_patterns_match_as_the_requests_do() {
    let p = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [\"/users/admin%40corp.example\", \"*%3adelete\"]}}}}]}}]\n"
    ))
    .unwrap();
    for path in [
        "/users/admin%40corp.example",
        "/users/admin@corp.example",
        "/users/admin%40corp%2Eexample",
        "/items/7%3Adelete",
        "/items/7:delete",
    ] {
        assert!(
            !allowed(&p, &OwnedRequest::get(path), None),
            "{path} slipped past the DENY rule"
        );
    }
    assert!(allowed(&p, &OwnedRequest::get("/users/bob@corp.example"), None));
}

/// `request.headers[host]` reads the host an HTTP/2 request gives as its
/// `:authority` (it has no `Host` header), as Envoy reads it: a DENY on it
/// fires over HTTP/2 too.
#[test]
fn a_condition_on_the_host_header_reads_an_http2_authority() {
    struct Http2(OwnedRequest);
    impl RequestHead for Http2 {
        fn method(&self) -> &str {
            self.0.method()
        }
        fn path(&self) -> &str {
            self.0.path()
        }
        fn query(&self) -> Option<&str> {
            self.0.query()
        }
        fn host(&self) -> Option<&str> {
            self.0.host()
        }
        fn authority(&self) -> Option<&str> {
            self.0.host()
        }
        fn header_value(&self, name: &str, index: usize) -> Option<&[u8]> {
            (name != "host")
                .then(|| self.0.header_value(name, index))
                .flatten()
        }
    }
    // Four rules and more: the rules are indexed by the host's value.
    let p = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules:\n{}",
        ["admin.example", "ops.example", "db.example", "vault.example"]
            .map(|h| format!("  - when: [{{key: 'request.headers[Host]', values: [{h}]}}]\n"))
            .concat()
    ))
    .unwrap();
    let to = |host: &str| OwnedRequest::get("/").header("host", host);
    // Without case, as `hosts`.
    assert!(matches!(p.check(&to("Admin.EXAMPLE"), None), Check::Ready(d) if !d.allowed));
    for (req, what) in [
        (&to("admin.example") as &dyn RequestHead, "HTTP/1.1"),
        (&Http2(to("admin.example")), "HTTP/2"),
    ] {
        assert!(
            matches!(p.check(req, None), Check::Ready(d) if !d.allowed),
            "{what}"
        );
    }
    assert!(matches!(p.check(&Http2(to("shop.example")), None), Check::Ready(d) if d.allowed));
}

#[test]
fn templates_and_suffixes_match_paths() {
    let p = policy(&format!(
        "{HEAD}spec:\n  rules: [{{to: [{{operation: {{paths: [\"/api/{{*}}/items\", \"/files/{{**}}\", \"*.html\"]}}}}]}}]\n"
    ))
    .unwrap();
    for (path, want) in [
        ("/api/v1/items", true),
        ("/api/v1/x/items", false),
        ("/files/a/b/c", true),
        ("/files", false),
        ("/x/index.html", true),
        ("/x/index.htm", false),
    ] {
        assert_eq!(allowed(&p, &OwnedRequest::get(path), None), want, "{path}");
    }
}

#[test]
fn not_request_principals_matches_anonymous() {
    let p = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules: [{{from: [{{source: {{notRequestPrincipals: [\"*\"]}}}}]}}]\n"
    ))
    .unwrap();
    assert!(!allowed(&p, &OwnedRequest::get("/"), None));
    assert!(allowed(
        &p,
        &OwnedRequest::get("/"),
        Some(&user("a", serde_json::json!({})))
    ));
}

/// `requestPrincipals` as Istio matches them: each pattern split at its
/// last `/` into an issuer and a subject part, each matched on its own.
#[test]
fn request_principals_match_issuer_and_subject_apart_as_in_istio() {
    let cases: [(&str, &str, &str, bool); 18] = [
        // Exactly one issuer's subjects, not those of an issuer under it.
        ("https://acme.okta.com/*", "https://acme.okta.com", "u1", true),
        (
            "https://acme.okta.com/*",
            "https://acme.okta.com/oauth2/default",
            "u1",
            false,
        ),
        ("https://idp/ab*", "https://idp", "abc", true),
        ("https://idp/ab*", "https://idp", "xab", false),
        // A subject suffix of any issuer; a subject with a `/` is no match.
        ("*/admin", "https://idp", "admin", true),
        ("*/admin", "https://idp", "tenant-x/admin", false),
        ("*.okta.com/admin", "https://acme.okta.com", "admin", true),
        ("*.okta.com/admin", "https://acme.okta.com", "root", false),
        ("*admin", "https://idp", "super-admin", true),
        // No `/`: an issuer prefix, or exactly an issuer with no subject.
        ("https:*", "https://idp", "u", true),
        ("https://idp/bob", "https://idp", "bob", true),
        ("https://idp/bob", "https://idp/bob", "", false),
        ("idp", "idp", "", true),
        ("idp", "idp", "bob", false),
        ("https://idp/a/b", "https://idp", "a/b", false),
        ("https://idp/a/b", "https://idp/a", "b", true),
        // `*` needs both an issuer and a subject.
        ("*", "https://idp", "bob", true),
        ("*", "https://idp", "", false),
    ];
    for (pattern, iss, sub, want) in cases {
        for yaml in [
            format!(
                "{HEAD}spec:\n  rules: [{{from: [{{source: {{requestPrincipals: [\"{pattern}\"]}}}}]}}]\n"
            ),
            format!(
                "{HEAD}spec:\n  rules: [{{when: [{{key: request.auth.principal, values: [\"{pattern}\"]}}]}}]\n"
            ),
        ] {
            let p = policy(&yaml).unwrap();
            let id = user_of(iss, sub, serde_json::json!({}));
            assert_eq!(
                allowed(&p, &OwnedRequest::get("/"), Some(&id)),
                want,
                "{pattern} against {iss} / {sub}: {yaml}"
            );
        }
    }
    // The same with enough rules to be indexed: an issuer-only pattern
    // (no `/`) still finds its rule.
    let rules: Vec<String> = (0..6)
        .map(|i| format!("{{from: [{{source: {{requestPrincipals: [idp{i}]}}}}]}}"))
        .collect();
    let many = policy(&format!("{HEAD}spec:\n  rules: [{}]\n", rules.join(", "))).unwrap();
    assert!(allowed(
        &many,
        &OwnedRequest::get("/"),
        Some(&user_of("idp3", "", serde_json::json!({})))
    ));
    assert!(!allowed(
        &many,
        &OwnedRequest::get("/"),
        Some(&user_of("idp3", "bob", serde_json::json!({})))
    ));
    // ... also when another source of the rule has a subject.
    let rules: Vec<String> = (0..6)
        .map(|i| format!("{{from: [{{source: {{requestPrincipals: [idp{i}/bob]}}}}, {{source: {{requestPrincipals: [idp{i}]}}}}]}}"))
        .collect();
    let many = policy(&format!("{HEAD}spec:\n  rules: [{}]\n", rules.join(", "))).unwrap();
    for sub in ["", "bob"] {
        let id = user_of("idp3", sub, serde_json::json!({}));
        assert!(allowed(&many, &OwnedRequest::get("/"), Some(&id)), "idp3/{sub}");
    }
    // The negation too: a DENY of everyone but one issuer's users.
    let deny = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules: [{{from: [{{source: {{notRequestPrincipals: [\"https://acme.okta.com/*\"]}}}}]}}]\n"
    ))
    .unwrap();
    let nested = user_of(
        "https://acme.okta.com/oauth2/default",
        "u1",
        serde_json::json!({}),
    );
    assert!(!allowed(&deny, &OwnedRequest::get("/"), Some(&nested)));
    let own = user_of("https://acme.okta.com", "u1", serde_json::json!({}));
    assert!(allowed(&deny, &OwnedRequest::get("/"), Some(&own)));
}

/// A header value that is not UTF-8 is still a value: present for `*`,
/// and compared as bytes (Envoy's header matchers), so a DENY on a header
/// cannot be dodged by sending one invalid byte.
#[test]
fn header_conditions_see_values_that_are_not_utf8() {
    let p = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules:\n  - when: [{{key: \"request.headers[x-debug]\", values: [\"*\"]}}]\n  - when: [{{key: \"request.headers[x-role]\", values: [\"*admin\"]}}]\n"
    ))
    .unwrap();
    let with = |name: &str, value: &[u8]| OwnedRequest::get("/").header(name, value.to_vec());
    assert!(allowed(&p, &OwnedRequest::get("/"), None));
    assert!(!allowed(&p, &with("x-debug", b"\xff"), None));
    assert!(!allowed(&p, &with("x-role", b"\xffadmin"), None));
    assert!(allowed(&p, &with("x-role", b"\xffuser"), None));
}

/// A pseudo-header condition would never hold here (no request has
/// one): refused when the file loads, so that a DENY on it cannot be
/// silently inert.
#[test]
fn pseudo_header_conditions_are_refused() {
    for name in [":path", ":authority", ":method"] {
        let err = policy(&format!(
            "{HEAD}spec:\n  action: DENY\n  rules: [{{when: [{{key: \"request.headers[{name}]\", values: [\"/admin*\"]}}]}}]\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("pseudo-headers"), "{err}");
    }
}

/// Istio's reading of the mesh's trust domains (`trustDomain`,
/// `trustDomainAliases`): a 5-part principal of `cluster.local`, the
/// mesh's domain, an alias or a `*`-led pattern covering one names the
/// workload in the mesh's domain and each alias, in `principals`,
/// `notPrincipals`, `source.principal` (`values`, `notValues`) and RBAC
/// `user` and `source.principal` properties; other shapes and other
/// domains stay as written; without the settings nothing changes.
#[test]
fn cluster_local_names_the_meshs_trust_domain_and_its_aliases() {
    const MESH: &str = "---\napiVersion: palisade.dev/v1alpha1\nkind: AuthorizationSettings\nmetadata: {name: s}\nspec: {trustDomain: prod.example, trustDomainAliases: [old.example]}\n";
    let req = OwnedRequest::get("/");
    let peers = [
        peer("prod.example/ns/default/sa/sleep"),
        peer("old.example/ns/default/sa/sleep"),
        peer("cluster.local/ns/default/sa/sleep"),
        peer("partner.example/ns/default/sa/sleep"),
    ];
    let allow = |principal: &str| {
        format!("{HEAD}spec:\n  rules: [{{from: [{{source: {{principals: [\"{principal}\"]}}}}]}}]\n")
    };
    let rbac = |subject: &str| {
        format!(
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {{name: default}}\nspec: {{mode: 'ON'}}\n---\napiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRole\nmetadata: {{name: r, namespace: default}}\nspec: {{rules: [{{services: ['*'], methods: ['*']}}]}}\n---\napiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {{name: b, namespace: default}}\nspec: {{subjects: [{subject}], roleRef: {{kind: ServiceRole, name: r}}}}\n"
        )
    };
    // Who is let in (prod, old, local, partner): with the settings, without.
    let cases = [
        (
            allow("cluster.local/ns/default/sa/sleep"),
            [true, true, false, false],
            [false, false, true, false],
        ),
        (
            allow("old.example/ns/default/sa/sleep"),
            [true, true, false, false],
            [false, true, false, false],
        ),
        (
            allow("cluster.local/ns/default/sa/*"),
            [true, true, false, false],
            [false, false, true, false],
        ),
        // A `*`-led domain kept where it covers a mesh domain (old), the
        // others named.
        (
            allow("*ld.example/ns/default/sa/sleep"),
            [true, true, false, false],
            [false, true, false, false],
        ),
        // Not five parts, any domain, or another domain: as written.
        (
            allow("cluster.local/*"),
            [false, false, true, false],
            [false, false, true, false],
        ),
        (
            allow("*/ns/default/sa/sleep"),
            [true, true, true, true],
            [true, true, true, true],
        ),
        (
            allow("partner.example/ns/default/sa/sleep"),
            [false, false, false, true],
            [false, false, false, true],
        ),
        (
            format!(
                "{HEAD}spec:\n  rules: [{{when: [{{key: source.principal, values: [cluster.local/ns/default/sa/sleep]}}]}}]\n"
            ),
            [true, true, false, false],
            [false, false, true, false],
        ),
        (
            format!(
                "{HEAD}spec:\n  action: DENY\n  rules: [{{when: [{{key: source.principal, notValues: [cluster.local/ns/default/sa/sleep]}}]}}]\n"
            ),
            [true, true, false, false],
            [false, false, true, false],
        ),
        (
            format!(
                "{HEAD}spec:\n  action: DENY\n  rules: [{{from: [{{source: {{notPrincipals: [cluster.local/ns/default/sa/sleep]}}}}]}}]\n"
            ),
            [true, true, false, false],
            [false, false, true, false],
        ),
        (
            rbac("{user: cluster.local/ns/default/sa/sleep}"),
            [true, true, false, false],
            [false, false, true, false],
        ),
        (
            rbac("{properties: {source.principal: cluster.local/ns/default/sa/sleep}}"),
            [true, true, false, false],
            [false, false, true, false],
        ),
    ];
    for (docs, with_settings, without) in cases {
        let mesh = policy(&format!("{docs}{MESH}")).unwrap();
        let plain = policy(&docs).unwrap();
        for (i, id) in peers.iter().enumerate() {
            assert_eq!(
                allowed(&mesh, &req, Some(id)),
                with_settings[i],
                "{docs}: peer {i}"
            );
            assert_eq!(
                allowed(&plain, &req, Some(id)),
                without[i],
                "{docs}: peer {i}, no settings"
            );
        }
    }
    // Aliases alone: the mesh's own domain is `cluster.local`.
    let aliases = policy(&format!(
        "{}---\napiVersion: palisade.dev/v1alpha1\nkind: AuthorizationSettings\nmetadata: {{name: s}}\nspec: {{trustDomainAliases: [old.example]}}\n",
        allow("cluster.local/ns/default/sa/sleep")
    ))
    .unwrap();
    let let_in: Vec<bool> = peers.iter().map(|id| allowed(&aliases, &req, Some(id))).collect();
    assert_eq!(let_in, [false, true, true, false]);
    for (spec, field) in [
        ("{trustDomain: Prod.Example}", "spec.trustDomain"),
        (
            "{trustDomainAliases: [old.example, '*.example']}",
            "spec.trustDomainAliases[1]",
        ),
    ] {
        let bad = policy(&format!("{HEAD}spec: {{}}\n---\napiVersion: palisade.dev/v1alpha1\nkind: AuthorizationSettings\nmetadata: {{name: s}}\nspec: {spec}\n"))
            .unwrap_err()
            .to_string();
        assert!(bad.contains(field) && bad.contains("not a trust domain"), "{bad}");
    }
}

/// In code, `trust_domain` is the settings' `trustDomain` and
/// `trustDomainAliases`; `escaped_slashes` set after it keeps it; a name
/// that is no trust domain fails the build naming the field.
#[test]
fn the_builders_trust_domain_is_the_settings_one() {
    let sleep = || Rule::new().principals(["cluster.local/ns/default/sa/sleep"]);
    let p = AccessPolicy::builder()
        .trust_domain("prod.example", ["old.example"])
        .escaped_slashes(EscapedSlashes::Keep)
        .allow("sleep", [sleep()])
        .build()
        .unwrap();
    assert_eq!(p.settings().trust_domains, ["prod.example", "old.example"]);
    assert_eq!(p.settings().escaped_slashes, EscapedSlashes::Keep);
    let req = OwnedRequest::get("/");
    assert!(allowed(&p, &req, Some(&peer("old.example/ns/default/sa/sleep"))));
    assert!(!allowed(
        &p,
        &req,
        Some(&peer("cluster.local/ns/default/sa/sleep"))
    ));
    let err = AccessPolicy::builder()
        .trust_domain("Prod.Example", Vec::<String>::new())
        .allow("sleep", [sleep()])
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.trustDomain") && err.contains("not a trust domain"),
        "{err}"
    );
}

#[test]
fn principals_and_namespaces_come_from_the_peer() {
    let p = policy(&format!(
        "{HEAD}spec:\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/default/sa/productpage]}}}}]\n  - from: [{{source: {{namespaces: [test]}}}}]\n"
    ))
    .unwrap();
    let req = OwnedRequest::get("/");
    assert!(allowed(
        &p,
        &req,
        Some(&peer("cluster.local/ns/default/sa/productpage"))
    ));
    assert!(allowed(&p, &req, Some(&peer("cluster.local/ns/test/sa/any"))));
    assert!(!allowed(
        &p,
        &req,
        Some(&peer("cluster.local/ns/default/sa/ratings"))
    ));
    assert!(!allowed(
        &p,
        &req,
        Some(&user("productpage", serde_json::json!({})))
    ));
    assert!(!allowed(&p, &req, None));
}

#[test]
fn namespaces_are_read_from_the_whole_principal_as_istios_regex() {
    // As palisade-mtls leaves it for an ID that is not `…/ns/NS/sa/SA`.
    let peer_only = |principal: &str| {
        Identity::from_peer(
            PeerIdentity {
                principal: Some(principal.into()),
                ..PeerIdentity::default()
            },
            Verification::assertion(),
        )
    };
    let deny = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules: [{{from: [{{source: {{namespaces: [untrusted]}}}}]}}]\n"
    ))
    .unwrap();
    let req = OwnedRequest::get("/");
    for principal in [
        "cluster.local/ns/untrusted/sa/x",
        "cluster.local/ns/untrusted/sa/x/pod/1",
        "cluster.local/ns/ns/untrusted/sa/x",
    ] {
        assert!(!allowed(&deny, &req, Some(&peer_only(principal))), "{principal}");
    }
    for principal in [
        "cluster.local/ns/trusted/sa/untrusted",
        "cluster.local/ns/untrusted",
    ] {
        assert!(allowed(&deny, &req, Some(&peer_only(principal))), "{principal}");
    }
    let allow = policy(&format!(
        "{HEAD}spec:\n  rules: [{{when: [{{key: source.namespace, values: [\"prod*\"]}}]}}]\n"
    ))
    .unwrap();
    assert!(allowed(&allow, &req, Some(&peer_only("td/ns/prod-eu/sa/a/b"))));
    assert!(!allowed(&allow, &req, Some(&peer_only("td/ns/dev/sa/prod"))));
    // A wildcard is Istio's `.*`, which may reach past the segment.
    let suffix = policy(&format!(
        "{HEAD}spec:\n  rules: [{{from: [{{source: {{namespaces: [\"*prod\"]}}}}]}}]\n"
    ))
    .unwrap();
    assert!(allowed(&suffix, &req, Some(&peer_only("td/ns/eu-prod/sa/a"))));
    assert!(allowed(
        &suffix,
        &req,
        Some(&peer_only("td/ns/dev/sa/prod/pod/1"))
    ));
    assert!(!allowed(&suffix, &req, Some(&peer_only("td/ns/dev/sa/prod"))));
}

#[test]
fn ip_blocks_read_the_connection_and_remote_ip_the_trusted_hop() {
    let yaml = format!(
        "{HEAD}spec:\n  rules:\n  - from: [{{source: {{ipBlocks: [10.0.0.0/8]}}}}]\n  - from: [{{source: {{remoteIpBlocks: [203.0.113.7]}}}}]\n---\napiVersion: palisade.dev/v1alpha1\nkind: AuthorizationSettings\nmetadata: {{name: s}}\nspec: {{numTrustedProxies: 1}}\n"
    );
    let p = policy(&yaml).unwrap();
    assert_eq!(p.headers_read(), ["x-forwarded-for"]);
    let direct = OwnedRequest::get("/").connection(conn("10.1.2.3:5000", "127.0.0.1:80"));
    assert!(allowed(&p, &direct, None));
    let proxied = OwnedRequest::get("/")
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
        .connection(conn("192.0.2.1:5000", "127.0.0.1:80"));
    assert!(allowed(&p, &proxied, None));
    let spoofed = OwnedRequest::get("/")
        .header("x-forwarded-for", "203.0.113.7, 198.51.100.1")
        .connection(conn("192.0.2.1:5000", "127.0.0.1:80"));
    assert!(!allowed(&p, &spoofed, None), "only the trusted hop counts");
    // Two trusted proxies: the second hop from the right, across repeated
    // headers (read as one list, the last line last); too few hops or a bad
    // one: the connection's address.
    let two = policy(&yaml.replace("numTrustedProxies: 1", "numTrustedProxies: 2")).unwrap();
    let from_proxy = || OwnedRequest::get("/").connection(conn("192.0.2.1:5000", "127.0.0.1:80"));
    for (lines, remote_allowed) in [
        (&["203.0.113.7, 10.9.9.9"][..], true),
        (&["198.51.100.1, 203.0.113.7", "10.9.9.9"][..], true),
        (&["203.0.113.7", "10.9.9.9"][..], true),
        (&["203.0.113.7", "198.51.100.1, 10.9.9.9"][..], false),
        (&["10.9.9.9"][..], false),
        (&["not-an-ip, 10.9.9.9"][..], false),
    ] {
        let req = lines
            .iter()
            .fold(from_proxy(), |r, l| r.header("x-forwarded-for", *l));
        assert_eq!(allowed(&two, &req, None), remote_allowed, "{lines:?}");
    }
    let not_text = from_proxy()
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-for", b"\xff".to_vec())
        .header("x-forwarded-for", "10.9.9.9");
    assert!(
        !allowed(&two, &not_text, None),
        "a value not UTF-8 is a bad hop: the connection's address"
    );
    // A client's byte that is not UTF-8 on the line its proxy appended to
    // hides none of the proxy's hops (it made the whole line unread, and a
    // DENY of the client's address missed).
    let appended = OwnedRequest::get("/")
        .header("x-forwarded-for", b"\xff, 203.0.113.7".to_vec())
        .connection(conn("192.0.2.1:5000", "127.0.0.1:80"));
    assert!(allowed(&p, &appended, None), "the trusted hop, after a bad one");
    let bad_trusted = from_proxy().header("x-forwarded-for", b"203.0.113.7, \xff, 10.9.9.9".to_vec());
    assert!(
        !allowed(&two, &bad_trusted, None),
        "the trusted hop is the bad one"
    );
    // A header of many commas is a scan: decided, the connection's address.
    let commas = from_proxy().header("x-forwarded-for", ",".repeat(200_000));
    assert!(!allowed(&two, &commas, None));
}

#[test]
fn ports_and_destination_conditions_read_the_local_address() {
    let p = policy(&format!(
        "{HEAD}spec:\n  rules:\n  - to: [{{operation: {{ports: [\"9080\"]}}}}]\n    when: [{{key: destination.ip, values: [127.0.0.0/8]}}]\n"
    ))
    .unwrap();
    assert!(allowed(
        &p,
        &OwnedRequest::get("/").connection(conn("1.2.3.4:1", "127.0.0.1:9080")),
        None
    ));
    assert!(!allowed(
        &p,
        &OwnedRequest::get("/").connection(conn("1.2.3.4:1", "127.0.0.1:9081")),
        None
    ));
    assert_eq!(
        p.evaluate(&OwnedRequest::get("/"), None).policy(),
        Some(ADDRESSES_UNKNOWN),
        "no connection facts: refused"
    );
}

#[test]
fn a_rule_on_addresses_the_server_does_not_give_refuses_rather_than_never_matching() {
    let deny = |when: &str| policy(&format!("{HEAD}spec:\n  action: DENY\n  rules: [{{{when}}}]\n")).unwrap();
    let known = OwnedRequest::get("/").connection(conn("198.51.100.1:1", "127.0.0.1:9080"));
    for (rule, reads) in [
        (
            "from: [{source: {ipBlocks: [203.0.113.0/24]}}]",
            "the remote address",
        ),
        ("to: [{operation: {ports: [\"8080\"]}}]", "the port"),
        (
            "when: [{key: destination.ip, values: [10.0.0.0/8]}]",
            "the local address",
        ),
        (
            "from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]",
            "remote.ip without trusted proxies",
        ),
    ] {
        let p = deny(rule);
        assert!(allowed(&p, &known, None), "{reads}: the DENY does not apply");
        let d = p.evaluate(&OwnedRequest::get("/"), None);
        assert!(
            !d.is_allowed(),
            "{reads} unknown: a DENY that could apply is no reason to admit"
        );
        assert_eq!(d.policy(), Some(ADDRESSES_UNKNOWN), "{reads}");
        assert_eq!(
            d.to_string(),
            "denied: the connection's addresses, which the policy reads, are unknown"
        );
    }
    // A policy that reads no address decides without them.
    assert!(allowed(
        &deny("to: [{operation: {paths: [/admin]}}]"),
        &OwnedRequest::get("/"),
        None
    ));
    // Behind a trusted proxy, `remote.ip` comes from X-Forwarded-For.
    let behind = policy(&format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: AuthorizationSettings\nmetadata: {{name: t}}\nspec: {{numTrustedProxies: 1}}\n---\n{HEAD}spec:\n  action: DENY\n  rules: [{{from: [{{source: {{remoteIpBlocks: [203.0.113.0/24]}}}}]}}]\n"
    ))
    .unwrap();
    let forwarded = |xff: &str| OwnedRequest::get("/").header("x-forwarded-for", xff);
    assert!(allowed(&behind, &forwarded("198.51.100.7"), None));
    assert!(!allowed(&behind, &forwarded("203.0.113.7"), None));
    assert_eq!(
        behind.evaluate(&OwnedRequest::get("/"), None).policy(),
        Some(ADDRESSES_UNKNOWN)
    );
}

/// A DENY on `connection.sni` refuses a request whose server gives no
/// connection facts (a TLS listener Palisade cannot see into), rather than
/// never fire; a plain connection Palisade's servers describe has no
/// server name, as in Istio, and is decided.
#[test]
fn a_rule_on_the_server_name_the_server_does_not_give_refuses_rather_than_never_matching() {
    let deny = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules: [{{when: [{{key: connection.sni, values: [admin.internal]}}]}}]\n"
    ))
    .unwrap();
    let plain = OwnedRequest::get("/").connection(conn("198.51.100.1:1", "127.0.0.1:9080"));
    assert!(
        allowed(&deny, &plain, None),
        "a plain connection has no server name"
    );
    let mut named = conn("198.51.100.1:1", "127.0.0.1:9080");
    named.tls = true;
    named.sni = Some("admin.internal".into());
    assert!(!allowed(&deny, &OwnedRequest::get("/").connection(named), None));
    let d = deny.evaluate(&OwnedRequest::get("/"), None);
    assert!(!d.is_allowed(), "unknown: the DENY could apply");
    assert_eq!(d.policy(), Some(SERVER_NAME_UNKNOWN));
    assert_eq!(
        d.to_string(),
        "denied: the connection's TLS server name, which the policy reads, is unknown"
    );
    // Reported only (AUDIT), it is never in the way.
    let audit = policy(&format!(
        "{HEAD}spec:\n  action: AUDIT\n  rules: [{{when: [{{key: connection.sni, values: [admin.internal]}}]}}]\n"
    ))
    .unwrap();
    assert!(allowed(&audit, &OwnedRequest::get("/"), None));
}

#[test]
fn claims_conditions_read_nested_array_and_scope_claims() {
    let p = policy(&format!(
        "{HEAD}spec:\n  rules:\n  - when:\n    - key: request.auth.claims[realm_access][roles]\n      values: [admin]\n  - when:\n    - key: request.auth.claims[scope]\n      values: [write]\n"
    ))
    .unwrap();
    let req = OwnedRequest::get("/");
    assert!(allowed(
        &p,
        &req,
        Some(&user(
            "a",
            serde_json::json!({"realm_access": {"roles": ["user", "admin"]}})
        ))
    ));
    assert!(allowed(
        &p,
        &req,
        Some(&user("a", serde_json::json!({"scope": "read write"})))
    ));
    assert!(!allowed(
        &p,
        &req,
        Some(&user(
            "b",
            serde_json::json!({"realm_access": {"roles": ["user"]}, "scope": "read"})
        ))
    ));
}

#[test]
fn header_conditions_with_not_values_match_an_absent_header() {
    let p = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules: [{{when: [{{key: \"request.headers[X-Env]\", notValues: [prod]}}]}}]\n"
    ))
    .unwrap();
    assert!(allowed(&p, &OwnedRequest::get("/").header("x-env", "prod"), None));
    assert!(!allowed(&p, &OwnedRequest::get("/").header("x-env", "dev"), None));
    assert!(!allowed(&p, &OwnedRequest::get("/"), None));
}

#[test]
fn a_repeated_header_is_matched_as_its_values_joined_as_in_envoy() {
    let deny = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules: [{{when: [{{key: \"request.headers[x-env]\", notValues: [prod]}}]}}]\n"
    ))
    .unwrap();
    let twice = |a: &str, b: &str| OwnedRequest::get("/x").header("x-env", a).header("x-env", b);
    assert!(
        !allowed(&deny, &twice("prod", "dev"), None),
        "`prod,dev` is not `prod`: a second value escapes no DENY"
    );
    assert!(allowed(
        &deny,
        &OwnedRequest::get("/x").header("x-env", "prod"),
        None
    ));
    // An ALLOW, evaluated by rule and through the value index alike.
    for paths in ["", "to: [{operation: {paths: [\"/x\"]}}], "] {
        let allow = policy(&format!(
            "{HEAD}spec:\n  rules: [{{{paths}when: [{{key: \"request.headers[x-env]\", values: [prod, \"prod,dev\"]}}]}}]\n"
        ))
        .unwrap();
        assert!(
            allowed(&allow, &OwnedRequest::get("/x").header("x-env", "prod"), None),
            "{paths}"
        );
        assert!(allowed(&allow, &twice("prod", "dev"), None), "{paths}");
        assert!(!allowed(&allow, &twice("prod", "prod"), None), "{paths}");
        assert!(!allowed(&allow, &twice("dev", "prod"), None), "{paths}");
    }
}

#[test]
fn a_star_wants_a_value_as_istios_dot_plus() {
    let p = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules: [{{when: [{{key: \"request.auth.claims[tenant]\", notValues: [\"*\"]}}]}}]\n"
    ))
    .unwrap();
    let with = |tenant: &str| user("alice", serde_json::json!({ "tenant": tenant }));
    assert!(
        !allowed(&p, &OwnedRequest::get("/"), Some(&with(""))),
        "an empty tenant is none"
    );
    assert!(allowed(&p, &OwnedRequest::get("/"), Some(&with("t1"))));
}

#[test]
fn dry_run_policy_is_reported_not_enforced() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  annotations: {istio.io/dry-run: \"true\"}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/x]}}]}]\n";
    let p = policy(yaml).unwrap();
    let d = p.evaluate(&OwnedRequest::get("/x"), None);
    assert!(d.is_allowed());
    let shadow = d.dry_run().expect("a dry-run report");
    assert!(!shadow.would_allow());
    assert_eq!(shadow.policy(), Some("default/p"));
    assert!(
        d.to_string().ends_with("dry-run would deny by default/p rule 0"),
        "{d}"
    );
    assert!(
        p.evaluate(&OwnedRequest::get("/y"), None)
            .dry_run()
            .unwrap()
            .would_allow()
    );
    assert_eq!(p.metrics()[0].matched, 1);
    assert_eq!(p.metrics()[0].rules_matched, [1]);
}

#[test]
fn metrics_count_each_rule_that_decided_audited_or_shadowed() {
    let yaml = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: open}
spec:
  rules:
  - to: [{operation: {paths: [/a]}}]
  - to: [{operation: {paths: [/b]}}]
  - to: [{operation: {paths: [/c]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
";
    let p = policy(yaml).unwrap();
    for path in ["/a", "/c", "/c", "/nothing"] {
        let _ = p.evaluate(&OwnedRequest::get(path), None);
    }
    let _ = p.evaluate(&OwnedRequest::new("DELETE", "/b"), None);
    let m = p.metrics();
    assert_eq!(
        (m[0].policy.as_str(), m[0].rules_matched.as_slice(), m[0].matched),
        ("default/open", &[1, 1, 2][..], 4)
    );
    assert_eq!(
        (m[1].policy.as_str(), m[1].rules_matched.as_slice()),
        ("default/audit", &[1][..])
    );
}

#[test]
fn unsupported_or_wrong_fields_fail_at_start_up_with_their_path() {
    let cases = [
        (
            "spec:\n  rules: [{when: [{key: request.auth.claimz, values: [a]}]}]\n",
            "spec.rules[0].when[0].key",
        ),
        ("spec:\n  action: MAYBE\n", "spec.action"),
        (
            "spec:\n  rules: [{from: [{source: {ipBlocks: [10.0.0.300]}}]}]\n",
            "spec.rules[0].from[0].source.ipBlocks[0]",
        ),
        (
            "spec:\n  rules: [{to: [{operation: {ports: [http]}}]}]\n",
            "spec.rules[0].to[0].operation.ports[0]",
        ),
        (
            "spec:\n  rules: [{to: [{operation: {paths: [\"/a/{**}/b\"]}}]}]\n",
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            "spec:\n  rules: [{to: [{operation: {methods: []}}]}]\n",
            "spec.rules[0].to[0].operation.methods",
        ),
        (
            "spec:\n  rules: [{from: [{source: {}}]}]\n",
            "spec.rules[0].from[0].source",
        ),
        (
            "spec:\n  rules: [{when: [{key: \"experimental.envoy.filters.network.mysql_proxy[db.table]\", values: [a]}]}]\n",
            "spec.rules[0].when[0].key",
        ),
        (
            "spec:\n  action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]\n",
            "spec.provider.name",
        ),
        ("spec:\n  provider: {name: ext}\n", "spec.provider"),
        (
            "spec:\n  rules: [{to: [{operation: {paths: [\"/a*b\"]}}]}]\n",
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            "spec:\n  rules: [{from: [{source: {serviceAccounts: [\"prod/*\"]}}]}]\n",
            "spec.rules[0].from[0].source.serviceAccounts[0]",
        ),
        (
            "spec:\n  rules: [{from: [{source: {notServiceAccounts: [a/b/c]}}]}]\n",
            "spec.rules[0].from[0].source.notServiceAccounts[0]",
        ),
        (
            "spec:\n  rules: [{from: [{source: {serviceAccounts: []}}]}]\n",
            "spec.rules[0].from[0].source.serviceAccounts",
        ),
        (
            "spec:\n  rules: [{when: [{key: source.serviceAccount, notValues: [prod/]}]}]\n",
            "spec.rules[0].when[0].notValues[0]",
        ),
        (
            "spec:\n  rules: [{when: [{key: source.serviceAccount}]}]\n",
            "spec.rules[0].when[0].values",
        ),
        (
            "spec:\n  rules: [{when: [{key: \"request.experimental.inline.headers[x-a]\", values: [a]}]}]\n",
            "spec.rules[0].when[0].key",
        ),
        (
            "spec:\n  selector: {matchLabels: {app: details}}\n  targetRefs: [{kind: Service, name: details}]\n",
            "spec.targetRefs",
        ),
    ];
    for (spec, field) in cases {
        let err = policy(&format!("{HEAD}{spec}")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some(field), "{spec}: {err}");
        assert_eq!(err.document, Some(1));
    }
}

#[tokio::test]
async fn custom_policy_asks_its_authorizer_first() {
    let yaml = format!(
        "{HEAD}spec:\n  action: CUSTOM\n  provider: {{name: ext}}\n  rules: [{{to: [{{operation: {{paths: [\"/api/*\"]}}}}]}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: all}}\nspec: {{rules: [{{}}]}}\n"
    );
    let set = PolicySet::from_yaml_str(&yaml, "t.yaml").unwrap();
    let authorizers =
        ExternalAuthorizers::new().register("ext", ["x-ext-authz"], |c: CheckRequest| async move {
            if c.request.header_str("x-ext-authz") == Some("allow") && c.request.path() == "/api/x" {
                ExternalDecision::Allow
            } else {
                ExternalDecision::Deny
            }
        });
    let p = AccessPolicy::compile_with(
        &set.for_workload(&Workload::new("details", "default")),
        &authorizers,
    )
    .unwrap();
    let run = |req: OwnedRequest| {
        let p = p.clone();
        async move {
            match p.check(&req, None) {
                crate::Check::Ready(d) => (false, d),
                crate::Check::Pending(f) => (true, f.await),
            }
        }
    };
    let (asked, d) = run(OwnedRequest::get("/api/./x").header("x-ext-authz", "allow")).await;
    assert!(asked && d.is_allowed(), "the authorizer sees the normalised path");
    let (asked, d) = run(OwnedRequest::get("/api/x")).await;
    assert!(asked && !d.is_allowed());
    assert_eq!(d.action(), Some(Action::Custom));
    let (asked, d) = run(OwnedRequest::get("/other")).await;
    assert!(!asked && d.is_allowed(), "no CUSTOM rule matched: not asked");
    let other = AccessPolicy::compile_with(
        &PolicySet::from_yaml_str(
            &format!("{yaml}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: c2}}\nspec: {{action: CUSTOM, provider: {{name: ext2}}, rules: [{{}}]}}\n"),
            "t.yaml",
        )
        .unwrap()
        .for_workload(&Workload::new("details", "default")),
        &authorizers.clone().register("ext2", [""; 0], |_c: CheckRequest| async { ExternalDecision::Allow }),
    );
    assert_eq!(other.unwrap_err().field.as_deref(), Some("spec.provider.name"));
}

/// A runtime without Tokio's timer (or none at all) cannot time an
/// authorizer: it is asked without a timeout, and its answer counts, where
/// starting the timer would have panicked in the request's future.
#[test]
fn custom_policy_is_decided_on_a_runtime_without_a_timer() {
    let yaml = format!("{HEAD}spec:\n  action: CUSTOM\n  provider: {{name: ext}}\n  rules: [{{}}]\n");
    let set = PolicySet::from_yaml_str(&yaml, "t.yaml").unwrap();
    let authorizers =
        ExternalAuthorizers::new().register("ext", ["x-ext-authz"], |c: CheckRequest| async move {
            if c.request.header_str("x-ext-authz") == Some("allow") {
                ExternalDecision::Allow
            } else {
                ExternalDecision::Deny
            }
        });
    let p = AccessPolicy::compile_with(
        &set.for_workload(&Workload::new("details", "default")),
        &authorizers,
    )
    .unwrap();
    let timerless = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for (header, allowed) in [("allow", true), ("deny", false), ("allow", true)] {
        let req = OwnedRequest::get("/x").header("x-ext-authz", header);
        let crate::Check::Pending(f) = p.check(&req, None) else {
            panic!("the authorizer is asked")
        };
        assert_eq!(timerless.block_on(f).is_allowed(), allowed, "{header}");
    }
}

const RBAC: &str = "
apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec: {mode: ON_WITH_INCLUSION, inclusion: {namespaces: [default]}}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: details-viewer, namespace: default}
spec:
  rules:
  - services: [details.default.svc.cluster.local]
    methods: [GET]
    paths: [\"/details/*\"]
    constraints: [{key: \"destination.labels[version]\", values: [v1, v2]}]
  - services: [reviews.default.svc.cluster.local]
    methods: [\"*\"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: bind-details, namespace: default}
spec:
  subjects:
  - user: cluster.local/ns/default/sa/productpage
  - group: auditors
  roleRef: {kind: ServiceRole, name: details-viewer}
";

#[test]
fn rbac_roles_and_bindings_compile_into_the_engine() {
    let set = PolicySet::from_yaml_str(RBAC, "rbac.yaml").unwrap();
    let w = Workload::new("details", "default").label("version", "v1");
    let p = AccessPolicy::compile(&set.for_workload(&w)).unwrap();
    let get = OwnedRequest::get("/details/1");
    assert!(allowed(
        &p,
        &get,
        Some(&peer("cluster.local/ns/default/sa/productpage"))
    ));
    assert!(allowed(
        &p,
        &get,
        Some(&user("eve", serde_json::json!({"groups": ["auditors"]})))
    ));
    assert!(!allowed(
        &p,
        &get,
        Some(&peer("cluster.local/ns/default/sa/ratings"))
    ));
    assert!(!allowed(
        &p,
        &OwnedRequest::new("POST", "/details/1"),
        Some(&peer("cluster.local/ns/default/sa/productpage"))
    ));
    let d = p.evaluate(&get, Some(&peer("cluster.local/ns/default/sa/productpage")));
    assert_eq!(d.policy(), Some("default/bind-details"));
    assert_eq!(d.rule(), Some(0));
    // reviews compiles only the role's second rule, and names it as written.
    let reviews = AccessPolicy::compile(&set.for_workload(&Workload::new("reviews", "default"))).unwrap();
    let d = reviews.evaluate(
        &OwnedRequest::new("DELETE", "/reviews/1"),
        Some(&peer("cluster.local/ns/default/sa/productpage")),
    );
    assert_eq!((d.policy(), d.rule()), (Some("default/bind-details"), Some(1)));
    assert_eq!(reviews.metrics()[0].rules_matched, [0, 1]);
    // The version constraint is decided against the workload's labels.
    let v3 =
        AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default").label("version", "v3")))
            .unwrap();
    assert!(!allowed(
        &v3,
        &get,
        Some(&peer("cluster.local/ns/default/sa/productpage"))
    ));
    // A `*` constraint on a label matches any value, an empty one too, as
    // Istio's pilot decided it.
    let star = RBAC.replace("values: [v1, v2]}]", "values: [\"*\"]}]");
    assert_ne!(star, RBAC);
    let star = PolicySet::from_yaml_str(&star, "r.yaml").unwrap();
    let empty =
        AccessPolicy::compile(&star.for_workload(&Workload::new("details", "default").label("version", "")))
            .unwrap();
    assert!(allowed(
        &empty,
        &get,
        Some(&peer("cluster.local/ns/default/sa/productpage"))
    ));
    // RBAC is not on for another namespace: everything passes, as in Istio.
    let other = AccessPolicy::compile(&set.for_workload(&Workload::new("details", "prod"))).unwrap();
    assert!(allowed(&other, &get, None));
}

/// A `ServiceRole`'s `notPaths` are read as a request's path is (an
/// escape of `@` matches the request that sends it either way), and a
/// constraint on `request.headers[host]` loads and reads the host.
#[test]
fn rbac_paths_read_escapes_and_constraints_read_the_host() {
    let yaml = RBAC
        .replace(
            "    paths: [\"/details/*\"]\n",
            "    paths: [\"/details/*\"]\n    notPaths: [\"/details/admin%40corp/*\"]\n",
        )
        .replace(
            "\"destination.labels[version]\", values: [v1, v2]}]",
            "\"request.headers[host]\", values: [details.example]}]",
        );
    assert_ne!(yaml, RBAC);
    let set = PolicySet::from_yaml_str(&yaml, "rbac.yaml").unwrap();
    let p = AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default"))).unwrap();
    let caller = peer("cluster.local/ns/default/sa/productpage");
    let get = |path: &str, host: &str| OwnedRequest::get(path).header("host", host);
    assert!(allowed(&p, &get("/details/1", "details.example"), Some(&caller)));
    assert!(!allowed(&p, &get("/details/1", "other.example"), Some(&caller)));
    for excluded in ["/details/admin@corp/x", "/details/admin%40corp/x"] {
        assert!(
            !allowed(&p, &get(excluded, "details.example"), Some(&caller)),
            "{excluded}"
        );
    }
}

/// A namespace value with a `/` names no namespace (one segment of a
/// principal): refused at load, in `namespaces` and in a
/// `source.namespace` condition, rather than match or not by how many
/// rules the policy has.
#[test]
fn a_namespace_with_a_slash_is_refused() {
    for (rule, field) in [
        (
            "from: [{source: {namespaces: [prod, \"prod/sa\"]}}]",
            "namespaces[1]",
        ),
        ("from: [{source: {notNamespaces: [\"a/b\"]}}]", "notNamespaces[0]"),
        (
            "when: [{key: source.namespace, values: [\"prod/sa\"]}]",
            "values[0]",
        ),
    ] {
        let yaml = format!("{HEAD}spec:\n  action: DENY\n  rules:\n  - {rule}\n");
        let err = policy(&yaml).unwrap_err().to_string();
        assert!(err.contains(field) && err.contains("no `/`"), "{rule}: {err}");
    }
}

/// A `ServiceRole` rule's empty list (`methods: []`) is refused, naming
/// it, as in an `AuthorizationPolicy`: Istio reads it as unset (any), and
/// as written it would match nothing.
#[test]
fn an_empty_list_in_a_service_role_is_refused() {
    for field in ["methods", "notMethods", "paths", "notPaths", "ports", "notPorts"] {
        let yaml = RBAC
            .replace(
                "    methods: [\"*\"]\n",
                &format!("    methods: [\"*\"]\n    {field}: []\n"),
            )
            .replace("    methods: [\"*\"]\n    methods: []\n", "    methods: []\n");
        assert_ne!(yaml, RBAC, "{field}");
        let refused = PolicySet::from_yaml_str(&yaml, "rbac.yaml")
            .map_err(|e| e.to_string())
            .and_then(|set| {
                AccessPolicy::compile(&set.for_workload(&Workload::new("reviews", "default")))
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .unwrap_err();
        assert!(
            refused.contains(field) && refused.contains("must not be empty"),
            "{field}: {refused}"
        );
    }
}

/// Istio (1.4 on): where `AuthorizationPolicy` documents apply to a
/// workload, its older RBAC is not enforced; it is still checked.
#[test]
fn authorization_policies_take_precedence_over_the_older_rbac() {
    let with_policy = format!(
        "{RBAC}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: only-reviews, namespace: default}}\nspec:\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/default/sa/reviews]}}}}]}}]\n"
    );
    let set = PolicySet::from_yaml_str(&with_policy, "rbac.yaml").unwrap();
    let w = Workload::new("details", "default").label("version", "v1");
    let p = AccessPolicy::compile(&set.for_workload(&w)).unwrap();
    let get = OwnedRequest::get("/details/1");
    // The binding would let productpage in; the policy lets only reviews.
    assert!(!allowed(
        &p,
        &get,
        Some(&peer("cluster.local/ns/default/sa/productpage"))
    ));
    assert!(allowed(
        &p,
        &get,
        Some(&peer("cluster.local/ns/default/sa/reviews"))
    ));
    // Only an enforced ALLOW takes RBAC's place: beside a DENY, an AUDIT
    // or a dry-run ALLOW alone, RBAC (on, deny by default) still decides.
    for (action, dry) in [("DENY", false), ("AUDIT", false), ("ALLOW", true)] {
        // (Istio refuses the annotation on an AUDIT policy, even `false`.)
        let annotations = if dry {
            ", annotations: {istio.io/dry-run: \"true\"}"
        } else {
            ""
        };
        let other = format!(
            "{RBAC}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: default{annotations}}}\nspec:\n  action: {action}\n  rules: [{{to: [{{operation: {{paths: [/nowhere]}}}}]}}]\n"
        );
        let set = PolicySet::from_yaml_str(&other, "rbac.yaml").unwrap();
        let p = AccessPolicy::compile(&set.for_workload(&w)).unwrap();
        assert!(
            allowed(&p, &get, Some(&peer("cluster.local/ns/default/sa/productpage"))),
            "{action} {dry}: the binding admits productpage"
        );
        assert!(
            !allowed(&p, &get, Some(&peer("cluster.local/ns/default/sa/ratings"))),
            "{action} {dry}: RBAC denies what no binding allows"
        );
    }
    // A mistake in the RBAC documents is still an error.
    let broken = with_policy.replace("/details/*", "/de*tails");
    let err = PolicySet::from_yaml_str(&broken, "rbac.yaml")
        .and_then(|set| AccessPolicy::compile(&set.for_workload(&w)).map(drop));
    assert!(err.is_err());
}

#[test]
fn rbac_errors_name_their_field() {
    let bad_ref = RBAC.replace("name: details-viewer}", "name: nope}");
    let err = PolicySet::from_yaml_str(&bad_ref, "r.yaml")
        .and_then(|s| AccessPolicy::compile(&s.for_workload(&Workload::new("details", "default"))))
        .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("spec.roleRef.name"));
    let bad_key = RBAC.replace("destination.labels[version]", "destination.user");
    let err = PolicySet::from_yaml_str(&bad_key, "r.yaml")
        .and_then(|s| AccessPolicy::compile(&s.for_workload(&Workload::new("details", "default"))))
        .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("spec.rules[0].constraints[0].key"));
    assert_eq!(err.document, Some(2));
}

#[test]
fn rbac_permissive_binding_is_a_dry_run() {
    let yaml = RBAC.replace(
        "roleRef: {kind: ServiceRole, name: details-viewer}",
        "roleRef: {kind: ServiceRole, name: details-viewer}\n  mode: PERMISSIVE",
    );
    let set = PolicySet::from_yaml_str(&yaml, "r.yaml").unwrap();
    let p =
        AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default").label("version", "v1")))
            .unwrap();
    let d = p.evaluate(
        &OwnedRequest::get("/details/1"),
        Some(&peer("cluster.local/ns/default/sa/productpage")),
    );
    assert!(!d.is_allowed(), "RBAC on with no enforced binding denies");
    assert!(d.dry_run().unwrap().would_allow());

    // PERMISSIVE for the whole mesh: RBAC is transparent, its bindings and
    // its default denial a dry run.
    let yaml = RBAC.replace(
        "spec: {mode: ON_WITH_INCLUSION, inclusion: {namespaces: [default]}}",
        "spec: {mode: ON_WITH_INCLUSION, inclusion: {namespaces: [default]}, enforcementMode: PERMISSIVE}",
    );
    assert_ne!(yaml, RBAC);
    let set = PolicySet::from_yaml_str(&yaml, "r.yaml").unwrap();
    let p =
        AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default").label("version", "v1")))
            .unwrap();
    let viewer = peer("cluster.local/ns/default/sa/productpage");
    let d = p.evaluate(&OwnedRequest::get("/details/1"), Some(&viewer));
    assert!(d.is_allowed(), "a mesh-wide PERMISSIVE denies nothing");
    assert!(d.dry_run().unwrap().would_allow());
    let d = p.evaluate(&OwnedRequest::new("POST", "/details/1"), Some(&viewer));
    assert!(d.is_allowed());
    assert!(
        !d.dry_run().unwrap().would_allow(),
        "the binding would not admit it"
    );
}

#[test]
fn requirements_compile_to_the_same_policy_type() {
    let p: AccessPolicy = realm_role("admin").or(client_role("reviews", "editor")).into();
    let mut t = TokenClaims {
        issuer: "i".into(),
        subject: "s".into(),
        ..TokenClaims::default()
    };
    t.client_roles.insert("reviews".into(), vec!["editor".into()]);
    let editor = Identity::from_token(t, Verification::assertion());
    assert!(allowed(&p, &OwnedRequest::get("/"), Some(&editor)));
    assert!(!allowed(
        &p,
        &OwnedRequest::get("/"),
        Some(&user("x", serde_json::json!({})))
    ));
    assert!(!allowed(&p, &OwnedRequest::get("/"), None));
}

#[test]
fn a_thousand_rules_are_indexed_by_path_prefix() {
    let mut yaml = format!("{HEAD}spec:\n  rules:\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - to: [{{operation: {{methods: [GET], paths: [\"/api/v{i}/*\"]}}}}]\n"
        ));
    }
    let p = policy(&yaml).unwrap();
    assert!(p.0.allow.any.is_empty());
    assert_eq!(p.0.allow.by_prefix.get("/api/v500/").map(Vec::len), Some(1));
    let d = p.evaluate(&OwnedRequest::get("/api/v500/items"), None);
    assert_eq!(d.rule(), Some(500));
    assert!(!allowed(&p, &OwnedRequest::get("/api/v1000/items"), None));
    assert!(!allowed(&p, &OwnedRequest::new("POST", "/api/v5/items"), None));
}

#[test]
fn rules_without_paths_are_indexed_by_host_claim_principal_or_header() {
    type MakeRule = fn(usize) -> String;
    let kinds: [(&str, MakeRule); 4] = [
        ("host", |i| {
            format!("  - to: [{{operation: {{hosts: [\"Svc{i}.example\"]}}}}]\n")
        }),
        ("claim", |i| {
            format!("  - when: [{{key: \"request.auth.claims[tenant]\", values: [\"t{i}\", \"u{i}\"]}}]\n")
        }),
        ("principal", |i| {
            format!(
                "  - from: [{{source: {{requestPrincipals: [\"https://idp/user{i}\"]}}}}, {{source: {{requestPrincipals: [\"https://idp/alias{i}\"]}}}}]\n"
            )
        }),
        ("header", |i| {
            format!(
                "  - to: [{{operation: {{paths: [\"/x\"]}}}}]\n    when: [{{key: \"request.headers[x-team]\", values: [\"team{i}\"]}}]\n"
            )
        }),
    ];
    for (kind, rule) in kinds {
        let mut yaml = format!("{HEAD}spec:\n  rules:\n");
        for i in 0..1000 {
            yaml.push_str(&rule(i));
        }
        let p = policy(&yaml).unwrap();
        let idx = &p.0.allow;
        assert!(idx.any.is_empty(), "{kind}");
        let indexed = idx.by_host.len() + idx.by_value.iter().map(|(_, l)| l.len()).sum::<usize>();
        assert!(indexed >= 1000, "{kind}: {indexed}");
        let (req, id) = match kind {
            "host" => (OwnedRequest::get("/").header("host", "svc500.EXAMPLE"), None),
            "claim" => (
                OwnedRequest::get("/"),
                Some(user("alice", serde_json::json!({"tenant": ["zz", "u500"]}))),
            ),
            "principal" => (
                OwnedRequest::get("/"),
                Some(user("alias500", serde_json::json!({}))),
            ),
            _ => (OwnedRequest::get("/x").header("x-team", "team500"), None),
        };
        let d = p.evaluate(&req, id.as_ref());
        assert_eq!(d.rule(), Some(500), "{kind}");
        if kind == "header" {
            // Through the index too, a repeated header is its values joined.
            let twice = OwnedRequest::get("/x")
                .header("x-team", "team500")
                .header("x-team", "team500");
            assert!(!allowed(&p, &twice, None), "`team500,team500` is no team");
        }
        let other = OwnedRequest::get("/").header("host", "svc1000.example");
        assert!(!allowed(&p, &other, None), "{kind}");
    }
}

// Property tests over small random policy sets.

fn arb_rule() -> impl Strategy<Value = String> {
    let path = prop::sample::select(vec!["/a", "/a/*", "/b*", "*", "/a/b", "*/c"]);
    let method = prop::sample::select(vec!["GET", "POST", "*"]);
    let principal = prop::sample::select(vec!["*", "https://idp/alice", "https://idp/*"]);
    (path, method, principal, any::<bool>(), any::<bool>()).prop_map(|(p, m, pr, neg_path, with_from)| {
        let paths = if neg_path { "notPaths" } else { "paths" };
        let from = if with_from {
            format!("from: [{{source: {{requestPrincipals: [\"{pr}\"]}}}}], ")
        } else {
            String::new()
        };
        format!("{{{from}to: [{{operation: {{methods: [\"{m}\"], {paths}: [\"{p}\"]}}}}]}}")
    })
}

fn arb_policy(action: &'static str) -> impl Strategy<Value = String> {
    // A DENY without rules is refused when the file loads (as in Istio).
    let fewest = usize::from(action == "DENY");
    prop::collection::vec(arb_rule(), fewest..4).prop_map(move |rules| {
        let rules = if rules.is_empty() {
            String::new()
        } else {
            format!("\n  rules: [{}]", rules.join(", "))
        };
        format!("spec:\n  action: {action}{rules}\n")
    })
}

fn doc(i: usize, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}}}\n{spec}")
}

fn requests() -> Vec<(OwnedRequest, Option<Identity>)> {
    let mut out = Vec::new();
    for m in ["GET", "POST"] {
        for p in ["/a", "/a/b", "/b/c", "/x/../a", "/c"] {
            out.push((OwnedRequest::new(m, p), None));
            out.push((
                OwnedRequest::new(m, p),
                Some(user("alice", serde_json::json!({}))),
            ));
            out.push((OwnedRequest::new(m, p), Some(user("bob", serde_json::json!({})))));
        }
    }
    out
}

/// A rule of any indexable kind, exact or not, negated or not.
fn arb_indexable_rule() -> impl Strategy<Value = String> {
    let value = prop::sample::select(vec!["a", "b", "a*", "*b", "*"]);
    let field = prop::sample::select(vec![
        "to: [{operation: {hosts: [\"@H\"]}}]",
        "to: [{operation: {notHosts: [\"@H\"]}}]",
        "to: [{operation: {paths: [\"/P\"]}}, {operation: {hosts: [\"@H\"]}}]",
        "to: [{operation: {methods: [GET], hosts: [\"@H\", \"c.test\"]}}]",
        "from: [{source: {requestPrincipals: [\"@R\"]}}]",
        "from: [{source: {requestPrincipals: [\"@R\"]}}, {source: {notRequestPrincipals: [\"@R\"]}}]",
        "from: [{source: {principals: [\"@P\"]}}]",
        "when: [{key: \"request.auth.claims[g]\", values: [\"@V\"]}]",
        "when: [{key: \"request.auth.claims[g]\", notValues: [\"@V\"]}]",
        "when: [{key: \"request.auth.claims[scope]\", values: [\"@V\"]}]",
        "when: [{key: \"request.headers[x-v]\", values: [\"@V\"]}, {key: source.namespace, values: [\"@V\"]}]",
        "to: [{operation: {paths: [\"@Q\"]}}]",
        "to: [{operation: {paths: [\"@Q\", \"/c/\"]}}]",
        "to: [{operation: {methods: [GET], paths: [\"@Q\"]}}]",
        "to: [{operation: {notPaths: [\"@Q\"]}}]",
    ]);
    (field, value.clone(), value).prop_map(|(f, v, h)| {
        let host = if h == "*" {
            "*".to_owned()
        } else {
            format!("{h}.test").replace("*.test", "*")
        };
        let (principal, peer) = match v {
            "*" => ("*".to_owned(), "*".to_owned()),
            "*b" => ("*/b".to_owned(), "*b/sa/s".to_owned()),
            v => (
                format!("https://idp/{v}"),
                format!("cluster.local/ns/{v}")
                    .replace("/ns/a", "/ns/a/sa/s")
                    .replace("/ns/b", "/ns/b/sa/s")
                    .replace("s/sa/s*", "s*"),
            ),
        };
        let path = match v {
            "a" => "/a/*",
            "b" => "/a/b/*",
            "a*" => "/a*",
            "*b" => "*/c",
            _ => "/*",
        };
        format!(
            "{{{}}}",
            f.replace("@Q", path)
                .replace("@H", &host)
                .replace("@R", &principal)
                .replace("@P", &peer)
                .replace("@V", v)
                .replace("/P", "/a")
        )
    })
}

fn indexable_requests() -> Vec<(OwnedRequest, Option<Identity>)> {
    let mut out = Vec::new();
    for host in ["a.test", "A.TEST", "b.test", "ab.test", "a.test.test"] {
        for (method, path) in [
            ("GET", "/a"),
            ("GET", "/z"),
            ("GET", "/a/b/c"),
            ("POST", "/a/"),
            ("GET", "/c/"),
        ] {
            let req = || {
                OwnedRequest::new(method, path)
                    .header("host", host)
                    .header("x-v", "a")
            };
            out.push((req(), None));
            out.push((
                req(),
                Some(user("a", serde_json::json!({"g": "a", "scope": "x a"}))),
            ));
            out.push((
                req(),
                Some(user("b", serde_json::json!({"g": ["b", "ab"], "scope": "b"}))),
            ));
            out.push((req(), Some(peer("cluster.local/ns/a/sa/s"))));
            out.push((req(), Some(peer("cluster.local/ns/b/sa/s"))));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// With the index (more rules than the threshold), the deciding rule is
    /// the first rule that, alone (too few rules to be indexed), matches.
    #[test]
    fn the_index_finds_the_first_matching_rule(rules in prop::collection::vec(arb_indexable_rule(), 5..16)) {
        let one = |rules: &[String]| policy(&format!("{HEAD}spec:\n  rules: [{}]\n", rules.join(", "))).unwrap();
        let all = one(&rules);
        let alone: Vec<AccessPolicy> = rules.iter().map(|r| one(std::slice::from_ref(r))).collect();
        for (req, id) in indexable_requests() {
            let expected = alone.iter().position(|p| allowed(p, &req, id.as_ref()));
            prop_assert_eq!(all.evaluate(&req, id.as_ref()).rule(), expected, "{:?} {:?}", req, rules);
        }
    }

    #[test]
    fn deny_always_wins_and_allows_never_widen_a_deny(
        denies in prop::collection::vec(arb_policy("DENY"), 1..3),
        allows in prop::collection::vec(arb_policy("ALLOW"), 0..3),
        extra in arb_policy("ALLOW"),
    ) {
        let docs: Vec<String> = denies.iter().chain(&allows).enumerate().map(|(i, s)| doc(i, s)).collect();
        let only_deny = policy(&denies.iter().enumerate().map(|(i, s)| doc(i, s)).collect::<Vec<_>>().join("---\n")).unwrap();
        let base = policy(&docs.join("---\n")).unwrap();
        let wider = policy(&format!("{}---\n{}", docs.join("---\n"), doc(99, &extra))).unwrap();
        for (req, id) in requests() {
            let denied_by_deny = !only_deny.evaluate(&req, id.as_ref()).is_allowed();
            if denied_by_deny {
                prop_assert!(!base.evaluate(&req, id.as_ref()).is_allowed());
                prop_assert!(!wider.evaluate(&req, id.as_ref()).is_allowed());
            }
            if base.evaluate(&req, id.as_ref()).is_allowed() && !allows.is_empty() {
                prop_assert!(wider.evaluate(&req, id.as_ref()).is_allowed(), "an added ALLOW policy narrowed access");
            }
        }
    }

    #[test]
    fn decisions_do_not_depend_on_document_order(
        specs in prop::collection::vec(prop_oneof![arb_policy("DENY"), arb_policy("ALLOW")], 1..5),
    ) {
        let forward: Vec<String> = specs.iter().enumerate().map(|(i, s)| doc(i, s)).collect();
        let mut backward = forward.clone();
        backward.reverse();
        let a = policy(&forward.join("---\n")).unwrap();
        let b = policy(&backward.join("---\n")).unwrap();
        for (req, id) in requests() {
            prop_assert_eq!(a.evaluate(&req, id.as_ref()).is_allowed(), b.evaluate(&req, id.as_ref()).is_allowed());
        }
    }
}

#[test]
fn only_denials_a_credential_could_change_ask_for_one() {
    let ip = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules: [{{from: [{{source: {{ipBlocks: [10.0.0.0/8]}}}}]}}]\n"
    ))
    .unwrap();
    let d = ip.evaluate(
        &OwnedRequest::get("/").connection(conn("10.0.0.1:1", "127.0.0.1:80")),
        None,
    );
    assert!(!d.is_allowed() && !d.end_user_could_help());
    let who = policy(&format!(
        "{HEAD}spec:\n  rules: [{{from: [{{source: {{requestPrincipals: [\"*\"]}}}}]}}]\n"
    ))
    .unwrap();
    assert!(who.evaluate(&OwnedRequest::get("/"), None).end_user_could_help());
    let none = policy(&format!("{HEAD}spec: {{}}\n")).unwrap();
    assert!(!none.evaluate(&OwnedRequest::get("/"), None).end_user_could_help());
}

#[test]
fn a_policy_built_in_code_decides_as_its_yaml_twin_and_names_bad_fields() {
    let code = AccessPolicy::builder()
        .allow(
            "p",
            [Rule::new()
                .methods(["GET"])
                .paths(["/api/{*}/items"])
                .when("request.auth.claims[groups]", ["dev"])],
        )
        .build()
        .unwrap();
    let yaml = policy(&format!(
        "{HEAD}spec:\n  rules:\n  - to: [{{operation: {{methods: [GET], paths: [\"/api/{{*}}/items\"]}}}}]\n    when: [{{key: \"request.auth.claims[groups]\", values: [dev]}}]\n"
    ))
    .unwrap();
    let dev = user("a", serde_json::json!({"groups": ["dev"]}));
    for (m, path, id) in [
        ("GET", "/api/v1/items", Some(&dev)),
        ("GET", "/api/v1/items", None),
        ("POST", "/api/v1/items", Some(&dev)),
    ] {
        let req = OwnedRequest::new(m, path);
        assert_eq!(
            code.evaluate(&req, id).is_allowed(),
            yaml.evaluate(&req, id).is_allowed(),
            "{m} {path}"
        );
    }
    assert!(
        code.evaluate(&OwnedRequest::get("/api/v1/items"), Some(&dev))
            .is_allowed()
    );
    let err = AccessPolicy::builder()
        .deny("d", [Rule::new().ip_blocks(["not-an-ip"])])
        .build()
        .unwrap_err();
    assert_eq!(
        err.field.as_deref(),
        Some("spec.rules[0].from[0].source.ipBlocks[0]")
    );
    assert!(
        err.to_string()
            .starts_with("code: document 1 (AuthorizationPolicy default/d)"),
        "{err}"
    );
}

#[test]
fn service_accounts_match_the_peer_and_default_to_the_policy_namespace() {
    let p = policy(&format!(
        "{HEAD}spec:\n  rules:\n  - from: [{{source: {{serviceAccounts: [prod/ratings, productpage]}}}}]\n"
    ))
    .unwrap();
    let req = OwnedRequest::get("/");
    for (who, want) in [
        ("cluster.local/ns/prod/sa/ratings", true),
        ("example.org/ns/default/sa/productpage", true),
        ("cluster.local/ns/default/sa/ratings", false),
        ("cluster.local/ns/prod/sa/productpage", false),
        ("cluster.local/ns/prod/sa/ratings-v2", false),
        ("cluster.local/ns/prod/sa/rating", false),
    ] {
        assert_eq!(allowed(&p, &req, Some(&peer(who))), want, "{who}");
    }
    // An end user is not a service account, nor is an anonymous caller.
    assert!(!allowed(&p, &req, Some(&user("ratings", serde_json::json!({})))));
    assert!(!allowed(&p, &req, None));
    // The policy's own namespace, not `default`, completes a bare name.
    let prod = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  rules: [{from: [{source: {serviceAccounts: [productpage]}}]}]\n";
    let set = PolicySet::from_yaml_str(prod, "t.yaml").unwrap();
    let p = AccessPolicy::compile(&set.for_workload(&Workload::new("details", "prod"))).unwrap();
    assert!(allowed(
        &p,
        &req,
        Some(&peer("cluster.local/ns/prod/sa/productpage"))
    ));
    assert!(!allowed(
        &p,
        &req,
        Some(&peer("cluster.local/ns/default/sa/productpage"))
    ));
}

#[test]
fn not_service_accounts_and_the_service_account_condition_deny_as_written() {
    let p = policy(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules:\n  - from: [{{source: {{notServiceAccounts: [default/productpage]}}}}]\n    to: [{{operation: {{paths: [/a]}}}}]\n  - to: [{{operation: {{paths: [/b]}}}}]\n    when: [{{key: source.serviceAccount, values: [prod/ratings]}}]\n"
    ))
    .unwrap();
    let productpage = peer("cluster.local/ns/default/sa/productpage");
    let ratings = peer("cluster.local/ns/prod/sa/ratings");
    assert!(allowed(&p, &OwnedRequest::get("/a"), Some(&productpage)));
    assert!(!allowed(&p, &OwnedRequest::get("/a"), Some(&ratings)));
    assert!(
        !allowed(&p, &OwnedRequest::get("/a"), None),
        "no peer is not productpage"
    );
    assert!(!allowed(&p, &OwnedRequest::get("/b"), Some(&ratings)));
    assert!(allowed(&p, &OwnedRequest::get("/b"), Some(&productpage)));
    assert!(allowed(&p, &OwnedRequest::get("/b"), None));
    let code = AccessPolicy::builder()
        .allow("sa", [Rule::new().service_accounts(["prod/ratings"])])
        .build()
        .unwrap();
    assert!(allowed(&code, &OwnedRequest::get("/"), Some(&ratings)));
    assert!(!allowed(&code, &OwnedRequest::get("/"), Some(&productpage)));
}

#[test]
fn service_accounts_with_principals_or_namespaces_in_one_source_are_refused() {
    for (source, field) in [
        ("serviceAccounts: [a/b], principals: [x]", "serviceAccounts"),
        ("serviceAccounts: [a/b], notNamespaces: [x]", "serviceAccounts"),
        ("notServiceAccounts: [a/b], namespaces: [x]", "notServiceAccounts"),
        (
            "notServiceAccounts: [a/b], notPrincipals: [x]",
            "notServiceAccounts",
        ),
    ] {
        let err = policy(&format!(
            "{HEAD}spec:\n  rules: [{{from: [{{source: {{{source}}}}}]}}]\n"
        ))
        .unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some(format!("spec.rules[0].from[0].source.{field}").as_str()),
            "{source}"
        );
        assert_eq!(
            err.message,
            "cannot be set with principals or namespaces in the same source (as in Istio); use another `from` entry"
        );
    }
    // In two `from` entries they are alternatives, as Istio allows.
    let p = policy(&format!(
        "{HEAD}spec:\n  rules: [{{from: [{{source: {{serviceAccounts: [prod/ratings]}}}}, {{source: {{namespaces: [test]}}}}]}}]\n"
    ))
    .unwrap();
    assert!(allowed(
        &p,
        &OwnedRequest::get("/"),
        Some(&peer("cluster.local/ns/prod/sa/ratings"))
    ));
    assert!(allowed(
        &p,
        &OwnedRequest::get("/"),
        Some(&peer("cluster.local/ns/test/sa/x"))
    ));
    assert!(!allowed(
        &p,
        &OwnedRequest::get("/"),
        Some(&peer("cluster.local/ns/prod/sa/x"))
    ));
    // RBAC subjects may use the key too, completed with the binding's namespace.
    let rbac = RBAC.replace(
        "  - group: auditors",
        "  - properties: {source.serviceAccount: productpage}",
    );
    let set = PolicySet::from_yaml_str(&rbac, "rbac.yaml").unwrap();
    let w = Workload::new("details", "default").label("version", "v1");
    let p = AccessPolicy::compile(&set.for_workload(&w)).unwrap();
    let get = OwnedRequest::get("/details/1");
    assert!(allowed(&p, &get, Some(&peer("td/ns/default/sa/productpage/x"))));
    assert!(!allowed(&p, &get, Some(&peer("td/ns/prod/sa/productpage"))));
}

#[test]
fn a_condition_with_values_and_not_values_needs_both() {
    let p = policy(&format!(
        "{HEAD}spec:\n  rules: [{{when: [{{key: \"request.headers[x-env]\", values: [\"pr*\"], notValues: [prod]}}]}}]\n"
    ))
    .unwrap();
    assert!(allowed(
        &p,
        &OwnedRequest::get("/").header("x-env", "preview"),
        None
    ));
    assert!(!allowed(
        &p,
        &OwnedRequest::get("/").header("x-env", "prod"),
        None
    ));
    assert!(!allowed(&p, &OwnedRequest::get("/").header("x-env", "dev"), None));
    assert!(!allowed(&p, &OwnedRequest::get("/"), None));
}

#[test]
fn space_delimited_claims_are_split_for_their_issuer_only() {
    const RA: &str = "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec:\n  jwtRules:\n  - {issuer: https://idp, spaceDelimitedClaims: [roles, a.b]}\n  - {issuer: https://other}\n";
    let rules = format!(
        "{HEAD}spec:\n  rules:\n  - when: [{{key: \"request.auth.claims[roles]\", values: [admin]}}]\n  - when: [{{key: \"request.auth.claims[permission]\", values: [write]}}]\n  - when: [{{key: \"request.auth.claims[a.b]\", values: [x]}}]\n  - when: [{{key: \"request.auth.claims[a][b]\", values: [y]}}]\n"
    );
    let split = policy(&format!("{rules}{RA}")).unwrap();
    let plain = policy(&rules).unwrap();
    let req = OwnedRequest::get("/");
    let admin = user("u", serde_json::json!({"roles": "user admin"}));
    assert!(allowed(&split, &req, Some(&admin)));
    assert!(
        !allowed(&plain, &req, Some(&admin)),
        "without the rule `roles` is one string"
    );
    let other = user_of("https://other", "u", serde_json::json!({"roles": "user admin"}));
    assert!(
        !allowed(&split, &req, Some(&other)),
        "only that issuer's tokens are split"
    );
    // `permission` is split for every token, as `scope` is (Istio's defaults).
    let writer = user_of(
        "https://other",
        "u",
        serde_json::json!({"permission": "read write"}),
    );
    assert!(allowed(&plain, &req, Some(&writer)));
    // A dotted name is the top-level claim of that name, as Envoy reads it.
    let dotted = user("u", serde_json::json!({"a.b": "x z"}));
    assert!(allowed(&split, &req, Some(&dotted)));
    assert!(!allowed(&plain, &req, Some(&dotted)));
    let nested = user("u", serde_json::json!({"a": {"b": "y z"}}));
    assert!(
        !allowed(&split, &req, Some(&nested)),
        "a nested claim is never split"
    );
}

/// An issuer pattern's `spaceDelimitedClaims` split its tenants' tokens
/// (their issuer is the pattern with `{tenant}` filled in): before, the
/// claim was matched whole, and a DENY on one of its words never fired.
#[test]
fn space_delimited_claims_of_an_issuer_pattern_split_its_tenants_tokens() {
    let yaml = format!(
        "{HEAD}spec:\n  action: DENY\n  rules:\n  - when: [{{key: \"request.auth.claims[roles]\", values: [suspended]}}]\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  jwtRules:\n  - {{issuer: \"https://login.example/{{tenant}}/v2.0\", spaceDelimitedClaims: [roles]}}\n"
    );
    let p = policy(&yaml).unwrap();
    let tenant_user = |tenant: &str, issuer: &str| {
        let t = TokenClaims {
            issuer: issuer.into(),
            subject: "u".into(),
            claims: serde_json::json!({"roles": "user suspended"})
                .as_object()
                .cloned()
                .unwrap(),
            tenant: Some(tenant.into()),
            ..TokenClaims::default()
        };
        Identity::from_token(t, Verification::assertion())
    };
    let req = OwnedRequest::get("/");
    let acme = tenant_user("acme", "https://login.example/acme/v2.0");
    assert!(
        !allowed(&p, &req, Some(&acme)),
        "the DENY on a word of the claim fires"
    );
    // Another issuer's token, whatever tenant it names, is not split.
    let elsewhere = tenant_user("acme", "https://elsewhere.example/acme/v2.0");
    assert!(allowed(&p, &req, Some(&elsewhere)));
}

#[test]
fn target_refs_decide_which_workload_a_policy_governs() {
    let yaml = format!(
        "{HEAD}spec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  action: DENY\n  rules: [{{}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: svc}}\nspec:\n  targetRefs: [{{kind: Service, name: details}}]\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [/admin]}}}}]}}]\n"
    );
    let set = PolicySet::from_yaml_str(&yaml, "t.yaml").unwrap();
    let details = AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default"))).unwrap();
    assert!(
        allowed(&details, &OwnedRequest::get("/list"), None),
        "the waypoint's DENY is not this workload's"
    );
    let d = details.evaluate(&OwnedRequest::get("/admin"), None);
    assert_eq!((d.is_allowed(), d.policy()), (false, Some("default/svc")));
    let reviews = AccessPolicy::compile(&set.for_workload(&Workload::new("reviews", "default"))).unwrap();
    assert!(allowed(&reviews, &OwnedRequest::get("/admin"), None));
}

/// Policies built in code are checked as a file's: two of one name are
/// refused (decisions and metrics name the one that decided), as is a rule
/// a file's loading refuses.
#[test]
fn policies_built_in_code_are_checked_as_a_files() {
    let err = AccessPolicy::builder()
        .allow("p", [Rule::new().paths(["/a"])])
        .deny("p", [Rule::new().paths(["/b"])])
        .build()
        .unwrap_err();
    assert_eq!(
        (err.document, err.field.as_deref()),
        (Some(2), Some("metadata.name")),
        "{err}"
    );
    let err = AccessPolicy::builder().deny("d", []).build().unwrap_err();
    assert!(err.to_string().starts_with("code: document 1"), "{err}");
    AccessPolicy::builder()
        .allow("a", [Rule::new().paths(["/a"])])
        .deny("d", [Rule::new().paths(["/b"])])
        .build()
        .unwrap();
}

/// The builder's role conditions read Keycloak's realm and client roles:
/// admins only under `/admin`, any user elsewhere, a client role for
/// `/reports`; a caller without a token has no role.
#[test]
fn the_builders_role_conditions_read_realm_and_client_roles() {
    let policy = AccessPolicy::builder()
        .deny(
            "admins-only",
            [Rule::new()
                .paths(["/admin", "/admin/*"])
                .not_realm_roles(["admin"])],
        )
        .deny(
            "reporters-only",
            [Rule::new()
                .paths(["/reports"])
                .not_client_roles("shop", ["reporter"])],
        )
        .allow("users", [Rule::new().request_principals(["*"])])
        .allow("admins-anywhere", [Rule::new().realm_roles(["admin"])])
        .allow("reporters", [Rule::new().client_roles("shop", ["reporter"])])
        .build()
        .unwrap();
    let admin = user("a", serde_json::json!({"realm_access": {"roles": ["admin"]}}));
    let reporter = user(
        "r",
        serde_json::json!({"resource_access": {"shop": {"roles": ["reporter"]}}}),
    );
    let plain = user("u", serde_json::json!({"realm_access": {"roles": ["user"]}}));
    let allowed =
        |path: &str, who: Option<&Identity>| policy.evaluate(&OwnedRequest::get(path), who).is_allowed();
    assert!(allowed("/admin", Some(&admin)) && allowed("/admin/x", Some(&admin)));
    assert!(!allowed("/admin", Some(&plain)) && !allowed("/admin/x", Some(&reporter)));
    assert!(!allowed("/admin", None));
    assert!(allowed("/reports", Some(&reporter)) && !allowed("/reports", Some(&admin)));
    assert!(allowed("/list", Some(&plain)) && !allowed("/list", None));
}
