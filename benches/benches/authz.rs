//! Palisade's in-process Istio `AuthorizationPolicy` evaluation against two
//! policy engines from crates.io, `cedar-policy` and `casbin`, on one policy
//! set rendered three ways and the same request, in the same run.
//!
//! One description of a service's policy ([`service_policy`]: N API rules,
//! one admin rule, three DENY rules) is rendered as Istio YAML for Palisade,
//! as Cedar policies and as Casbin policy rows. Before anything is timed, all
//! three engines must give the expected decision on every probe of
//! [`probes`] for every N; the bench panics otherwise.
#![expect(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hint::black_box;
use std::str::FromStr;

use casbin::rhai::Dynamic;
use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi, function_map::OperatorFunction};
use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet as CedarPolicySet, Request, RestrictedExpression,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use palisade::core::authn::OwnedRequest;
use palisade::core::authz::AccessPolicy;
use palisade::core::policy::{PolicySet, Workload};
use palisade::core::{Identity, TokenClaims, Verification};

const ISSUER: &str = "https://idp.example/realms/demo";
/// `requestPrincipals` of every ALLOW rule: any subject of that issuer.
const PRINCIPALS: &str = "https://idp.example/realms/demo/*";
const HOST: &str = "details.default.svc.cluster.local";
const SIZES: [usize; 3] = [10, 100, 1000];

// ---------------------------------------------------------------------------
// The policy, described once.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// `request.auth.claims[groups]`
    Groups,
    /// `request.auth.claims[realm_access][roles]`
    Roles,
}

/// One Istio rule with at most one value per field, which is all the
/// generator needs. `None` means the field is absent (matches anything).
#[derive(Clone, Debug, Default)]
struct Rule {
    /// `from[0].source.requestPrincipals[0]`
    principals: Option<&'static str>,
    /// `to[0].operation.hosts[0]`
    host: Option<&'static str>,
    /// `to[0].operation.methods`
    methods: Option<&'static [&'static str]>,
    /// `to[0].operation.paths[0]`: exact, `prefix*` or `*suffix`
    path: Option<String>,
    /// `when[0]`: the claim must contain the value
    claim: Option<(Claim, &'static str)>,
}

struct Policy {
    name: &'static str,
    deny: bool,
    rules: Vec<Rule>,
}

const METHOD_SETS: [&[&str]; 3] = [&["GET", "HEAD"], &["GET", "POST"], &["GET", "PUT", "DELETE"]];
const REQUIREMENTS: [(Claim, &str); 4] = [
    (Claim::Groups, "dev"),
    (Claim::Roles, "user"),
    (Claim::Groups, "ops"),
    (Claim::Roles, "auditor"),
];

/// API rule `i`: a method set, the prefix `/api/v{i}/*`, one group or realm
/// role, any subject of the issuer, the service's host.
fn api_rule(i: usize) -> Rule {
    Rule {
        principals: Some(PRINCIPALS),
        host: Some(HOST),
        methods: Some(METHOD_SETS[i % METHOD_SETS.len()]),
        path: Some(format!("/api/v{i}/*")),
        claim: Some(REQUIREMENTS[i % REQUIREMENTS.len()]),
    }
}

/// A realistic service policy: DENY first (Istio evaluates DENY policies
/// before ALLOW ones in any case), an admin console, then `n` API rules.
fn service_policy(n: usize) -> Vec<Policy> {
    vec![
        Policy {
            name: "deny-dangerous",
            deny: true,
            rules: vec![
                // Nobody deletes through the admin console, admins included.
                Rule {
                    methods: Some(&["DELETE"]),
                    path: Some("/admin*".into()),
                    ..Rule::default()
                },
                // Internal endpoints are never served through the mesh.
                Rule {
                    path: Some("*/internal".into()),
                    ..Rule::default()
                },
                // Suspended users get nothing.
                Rule {
                    claim: Some((Claim::Groups, "suspended")),
                    ..Rule::default()
                },
            ],
        },
        Policy {
            name: "admin-console",
            deny: false,
            rules: vec![Rule {
                principals: Some(PRINCIPALS),
                host: Some(HOST),
                methods: Some(&["GET", "DELETE"]),
                path: Some("/admin/*".into()),
                claim: Some((Claim::Roles, "admin")),
            }],
        },
        Policy {
            name: "api",
            deny: false,
            rules: (0..n).map(api_rule).collect(),
        },
    ]
}

// ---------------------------------------------------------------------------
// Rendering: Istio YAML, Cedar, Casbin.

fn quoted_list(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", items.join(", "))
}

fn istio_yaml(policies: &[Policy]) -> String {
    let mut out = String::new();
    for p in policies {
        let action = if p.deny { "DENY" } else { "ALLOW" };
        write!(
            out,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {}, namespace: default}}\nspec:\n  action: {action}\n  rules:\n",
            p.name
        )
        .unwrap();
        for r in &p.rules {
            let mut first = true;
            let mut item = |out: &mut String, line: String| {
                out.push_str(if first { "  - " } else { "    " });
                out.push_str(&line);
                out.push('\n');
                first = false;
            };
            if let Some(pr) = r.principals {
                item(
                    &mut out,
                    format!("from: [{{source: {{requestPrincipals: [\"{pr}\"]}}}}]"),
                );
            }
            let mut op = Vec::new();
            if let Some(h) = r.host {
                op.push(format!("hosts: [\"{h}\"]"));
            }
            if let Some(m) = r.methods {
                op.push(format!("methods: {}", quoted_list(m)));
            }
            if let Some(path) = &r.path {
                op.push(format!("paths: [\"{path}\"]"));
            }
            if !op.is_empty() {
                item(&mut out, format!("to: [{{operation: {{{}}}}}]", op.join(", ")));
            }
            if let Some((claim, value)) = r.claim {
                let key = match claim {
                    Claim::Groups => "request.auth.claims[groups]",
                    Claim::Roles => "request.auth.claims[realm_access][roles]",
                };
                item(
                    &mut out,
                    format!("when: [{{key: \"{key}\", values: [\"{value}\"]}}]"),
                );
            }
        }
    }
    out
}

/// Cedar: principal `User::"<iss>/<sub>"` with attribute `requestPrincipal`
/// and parents `Group::"<g>"` / `Role::"<r>"` (one per group and realm role);
/// action `Action::"<METHOD>"`; resource `Host::"<host>"`; `context.path`.
/// Istio path patterns become `like` patterns (same `*` semantics).
fn cedar_policies(policies: &[Policy]) -> String {
    let mut out = String::new();
    for p in policies {
        for (i, r) in p.rules.iter().enumerate() {
            let effect = if p.deny { "forbid" } else { "permit" };
            let principal = if r.principals.is_some() {
                "principal is User"
            } else {
                "principal"
            };
            let action = match r.methods {
                None => "action".to_owned(),
                Some([m]) => format!("action == Action::\"{m}\""),
                Some(ms) => {
                    let ms: Vec<String> = ms.iter().map(|m| format!("Action::\"{m}\"")).collect();
                    format!("action in [{}]", ms.join(", "))
                }
            };
            let resource = r
                .host
                .map_or("resource".to_owned(), |h| format!("resource == Host::\"{h}\""));
            // Most selective condition first: Cedar short-circuits `&&`.
            let mut when = Vec::new();
            if let Some(path) = &r.path {
                if path.contains('*') {
                    when.push(format!("context.path like \"{path}\""));
                } else {
                    when.push(format!("context.path == \"{path}\""));
                }
            }
            if let Some(pr) = r.principals {
                when.push(format!("principal.requestPrincipal like \"{pr}\""));
            }
            if let Some((claim, value)) = r.claim {
                let ty = match claim {
                    Claim::Groups => "Group",
                    Claim::Roles => "Role",
                };
                when.push(format!("principal in {ty}::\"{value}\""));
            }
            write!(
                out,
                "@id(\"{}/{i}\")\n{effect} ({principal}, {action}, {resource})",
                p.name
            )
            .unwrap();
            if !when.is_empty() {
                write!(out, "\nwhen {{ {} }}", when.join(" && ")).unwrap();
            }
            out.push_str(";\n");
        }
    }
    out
}

/// Casbin ABAC model. The request's `sub` is a struct (principal, groups,
/// roles) that Casbin hands to its Rhai matcher as a map; the claim check is
/// Rhai's `in` on those arrays. Host and principal use the built-in
/// `keyMatch` (exact, or prefix up to a trailing `*`). Paths and methods use
/// two registered functions with Istio's semantics, because the built-ins do
/// not fit: `keyMatch` cuts the pattern at its first `*`, so `*/internal`
/// would match every path, and `keyMatch2..5`, `globMatch` and `regexMatch`
/// compile a regex or glob on every call. With `regexMatch(r.method,
/// p.method)` and `^(GET|HEAD)$` rows instead, as in Casbin's RESTful
/// example, the one regex compiled per request (for the row whose other
/// fields matched) added ~30 µs, twice the whole evaluation at N = 10.
const CASBIN_MODEL: &str = r#"
[request_definition]
r = sub, host, path, method

[policy_definition]
p = sub, host, path, method, claim, value, eft

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = pathMatch(r.path, p.path) && keyMatch(r.host, p.host) && keyMatch(r.sub.principal, p.sub) && methodMatch(r.method, p.method) && (p.claim == "" || (p.claim == "groups" && p.value in r.sub.groups) || (p.claim == "roles" && p.value in r.sub.roles))
"#;

/// One Casbin row per Istio rule; `*` stands for an absent field, methods
/// are joined with `|`.
fn casbin_rows(policies: &[Policy]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for p in policies {
        for r in &p.rules {
            let (claim, value) = match r.claim {
                None => ("", ""),
                Some((Claim::Groups, v)) => ("groups", v),
                Some((Claim::Roles, v)) => ("roles", v),
            };
            rows.push(vec![
                r.principals.unwrap_or("*").to_owned(),
                r.host.unwrap_or("*").to_owned(),
                r.path.clone().unwrap_or_else(|| "*".to_owned()),
                r.methods.map_or_else(|| "*".to_owned(), |m| m.join("|")),
                claim.to_owned(),
                value.to_owned(),
                if p.deny { "deny" } else { "allow" }.to_owned(),
            ]);
        }
    }
    rows
}

/// Istio's path match (`*`, `prefix*`, `*suffix`, exact), for Casbin.
fn istio_path_match(value: &str, pattern: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        value == pattern
    }
}

/// `pathMatch(r.path, p.path)` for Casbin's matcher.
fn casbin_path_match(value: Dynamic, pattern: Dynamic) -> Dynamic {
    match (value.into_immutable_string(), pattern.into_immutable_string()) {
        (Ok(v), Ok(p)) => istio_path_match(&v, &p).into(),
        _ => false.into(),
    }
}

/// `methodMatch(r.method, p.method)`: `*`, or one of `GET|HEAD|…` exactly.
fn casbin_method_match(value: Dynamic, pattern: Dynamic) -> Dynamic {
    match (value.into_immutable_string(), pattern.into_immutable_string()) {
        (Ok(v), Ok(p)) => (p == "*" || p.split('|').any(|m| m == v.as_str())).into(),
        _ => false.into(),
    }
}

// ---------------------------------------------------------------------------
// Callers: one verified user, prepared once per engine the way a service
// would cache it next to its verified token.

struct User {
    issuer: &'static str,
    subject: &'static str,
    groups: &'static [&'static str],
    roles: &'static [&'static str],
}

const ALICE: User = User {
    issuer: ISSUER,
    subject: "alice",
    groups: &["dev"],
    roles: &["user"],
};
const BOB: User = User {
    issuer: ISSUER,
    subject: "bob",
    groups: &["ops", "qa"],
    roles: &["user", "auditor", "admin"],
};
const CAROL: User = User {
    issuer: ISSUER,
    subject: "carol",
    groups: &["dev", "suspended"],
    roles: &["user"],
};
/// Same claims as Bob plus `dev`, from another realm whose issuer shares a
/// prefix with the trusted one (`…/realms/demo2/mallory`).
const MALLORY: User = User {
    issuer: "https://idp.example/realms/demo2",
    subject: "mallory",
    groups: &["dev", "ops"],
    roles: &["user", "auditor", "admin"],
};

impl User {
    fn satisfies(&self, (claim, value): (Claim, &str)) -> bool {
        match claim {
            Claim::Groups => self.groups.contains(&value),
            Claim::Roles => self.roles.contains(&value),
        }
    }
}

#[derive(serde::Serialize, Hash)]
struct CasbinSubject {
    principal: String,
    groups: Vec<String>,
    roles: Vec<String>,
}

struct Caller {
    name: &'static str,
    identity: Option<Identity>,
    cedar_principal: EntityUid,
    /// Cedar entities for this caller: built once per user (a service
    /// would cache them with the verified token), not per request.
    cedar_entities: Entities,
    casbin_subject: CasbinSubject,
}

fn cedar_uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(EntityTypeName::from_str(ty).unwrap(), EntityId::new(id))
}

impl Caller {
    fn user(name: &'static str, u: &User) -> Self {
        let principal = format!("{}/{}", u.issuer, u.subject);
        let mut t = TokenClaims::default();
        t.issuer = u.issuer.into();
        t.subject = u.subject.into();
        t.claims = serde_json::json!({"realm_access": {"roles": u.roles}, "groups": u.groups})
            .as_object()
            .unwrap()
            .clone();
        t.realm_roles = u.roles.iter().map(|r| (*r).to_owned()).collect();
        let identity = Identity::from_token(t, Verification::assertion());
        assert_eq!(identity.request_principal().as_deref(), Some(principal.as_str()));

        let uid = cedar_uid("User", &principal);
        let parents: HashSet<EntityUid> = u
            .groups
            .iter()
            .map(|g| cedar_uid("Group", g))
            .chain(u.roles.iter().map(|r| cedar_uid("Role", r)))
            .collect();
        let attrs = HashMap::from([(
            "requestPrincipal".to_owned(),
            RestrictedExpression::new_string(principal.clone()),
        )]);
        let entity = Entity::new(uid.clone(), attrs, parents).unwrap();
        Self {
            name,
            identity: Some(identity),
            cedar_principal: uid,
            cedar_entities: Entities::from_entities([entity], None).unwrap(),
            casbin_subject: CasbinSubject {
                principal,
                groups: u.groups.iter().map(|g| (*g).to_owned()).collect(),
                roles: u.roles.iter().map(|r| (*r).to_owned()).collect(),
            },
        }
    }

    fn anonymous() -> Self {
        Self {
            name: "anonymous",
            identity: None,
            cedar_principal: cedar_uid("Anonymous", "anonymous"),
            cedar_entities: Entities::empty(),
            casbin_subject: CasbinSubject {
                principal: String::new(),
                groups: Vec::new(),
                roles: Vec::new(),
            },
        }
    }
}

struct Callers {
    alice: Caller,
    bob: Caller,
    carol: Caller,
    mallory: Caller,
    anonymous: Caller,
}

impl Callers {
    fn new() -> Self {
        Self {
            alice: Caller::user("alice", &ALICE),
            bob: Caller::user("bob", &BOB),
            carol: Caller::user("carol", &CAROL),
            mallory: Caller::user("mallory", &MALLORY),
            anonymous: Caller::anonymous(),
        }
    }
}

// ---------------------------------------------------------------------------
// The three engines for one N.

struct Engines {
    palisade: AccessPolicy,
    cedar: CedarPolicySet,
    cedar_authorizer: Authorizer,
    /// Pre-parsed entity type names: parsing them is start-up work.
    cedar_action: EntityTypeName,
    cedar_host: EntityTypeName,
    casbin: Enforcer,
}

impl Engines {
    fn build(n: usize, rt: &tokio::runtime::Runtime) -> Self {
        let policies = service_policy(n);

        let yaml = istio_yaml(&policies);
        let set = PolicySet::from_yaml_str(&yaml, "bench.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let palisade =
            AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default"))).unwrap();

        let cedar_text = cedar_policies(&policies);
        let cedar = CedarPolicySet::from_str(&cedar_text).unwrap_or_else(|e| panic!("{e:?}\n{cedar_text}"));
        assert_eq!(cedar.policies().count(), n + 4);

        let casbin = rt.block_on(async {
            let model = DefaultModel::from_str(CASBIN_MODEL).await.unwrap();
            let mut e = Enforcer::new(model, MemoryAdapter::default()).await.unwrap();
            e.add_function("pathMatch", OperatorFunction::Arg2(casbin_path_match));
            e.add_function("methodMatch", OperatorFunction::Arg2(casbin_method_match));
            assert!(e.add_policies(casbin_rows(&policies)).await.unwrap());
            e
        });
        assert_eq!(casbin.get_all_policy().len(), n + 4);

        Self {
            palisade,
            cedar,
            cedar_authorizer: Authorizer::new(),
            cedar_action: EntityTypeName::from_str("Action").unwrap(),
            cedar_host: EntityTypeName::from_str("Host").unwrap(),
            casbin,
        }
    }

    fn palisade(&self, caller: &Caller, req: &OwnedRequest) -> bool {
        self.palisade.evaluate(req, caller.identity.as_ref()).is_allowed()
    }

    /// The Cedar request is built on every call, as a service pays it: the
    /// action and resource uids from the method and host, the context from
    /// the path. The principal and its entities come from the caller cache.
    fn cedar_response(
        &self,
        caller: &Caller,
        method: &str,
        host: &str,
        path: &str,
    ) -> cedar_policy::Response {
        let action = EntityUid::from_type_name_and_id(self.cedar_action.clone(), EntityId::new(method));
        let resource = EntityUid::from_type_name_and_id(self.cedar_host.clone(), EntityId::new(host));
        let context = Context::from_pairs([(
            "path".to_owned(),
            RestrictedExpression::new_string(path.to_owned()),
        )])
        .unwrap();
        let request = Request::new(caller.cedar_principal.clone(), action, resource, context, None).unwrap();
        self.cedar_authorizer
            .is_authorized(&request, &self.cedar, &caller.cedar_entities)
    }

    fn cedar(&self, caller: &Caller, method: &str, host: &str, path: &str) -> bool {
        self.cedar_response(caller, method, host, path).decision() == Decision::Allow
    }

    /// `enforce` converts the arguments to Rhai values on every call
    /// (the subject struct becomes a map): that is part of the price.
    fn casbin(&self, caller: &Caller, method: &str, host: &str, path: &str) -> bool {
        self.casbin
            .enforce((&caller.casbin_subject, host, path, method))
            .unwrap()
    }
}

// ---------------------------------------------------------------------------
// Agreement.

struct Probe<'a> {
    what: String,
    caller: &'a Caller,
    method: &'static str,
    host: &'static str,
    path: String,
    allowed: bool,
}

/// The API rule near the middle that Alice may use: the typical request.
fn typical_rule(n: usize) -> usize {
    (n / 2..n)
        .find(|&i| ALICE.satisfies(REQUIREMENTS[i % REQUIREMENTS.len()]))
        .unwrap()
}

fn probes(n: usize, c: &Callers) -> Vec<Probe<'_>> {
    let mid = typical_rule(n);
    let last = n - 1;
    let last_caller = if ALICE.satisfies(REQUIREMENTS[last % REQUIREMENTS.len()]) {
        &c.alice
    } else {
        &c.bob
    };
    let last_method = *METHOD_SETS[last % METHOD_SETS.len()].last().unwrap();
    // A rule near the middle whose claim Alice lacks and Bob has.
    let lacking = (n / 2..n)
        .find(|&i| {
            let req = REQUIREMENTS[i % REQUIREMENTS.len()];
            !ALICE.satisfies(req) && BOB.satisfies(req)
        })
        .unwrap();
    // A rule near the middle whose method set has no POST.
    let no_post = (n / 2..n)
        .find(|&i| {
            !METHOD_SETS[i % METHOD_SETS.len()].contains(&"POST") && ALICE.satisfies(REQUIREMENTS[i % 4])
        })
        .unwrap();
    let p = |what: &str, caller, method, host, path: String, allowed| Probe {
        what: what.to_owned(),
        caller,
        method,
        host,
        path,
        allowed,
    };
    vec![
        p(
            "typical: a rule near the middle",
            &c.alice,
            "GET",
            HOST,
            format!("/api/v{mid}/items"),
            true,
        ),
        p(
            "the last rule",
            last_caller,
            last_method,
            HOST,
            format!("/api/v{last}/items/7"),
            true,
        ),
        p(
            "prefix with nothing after it",
            &c.alice,
            "GET",
            HOST,
            format!("/api/v{mid}/"),
            true,
        ),
        p(
            "no rule: past the last",
            &c.alice,
            "GET",
            HOST,
            format!("/api/v{n}/items"),
            false,
        ),
        p(
            "no rule: prefix without its slash",
            &c.alice,
            "GET",
            HOST,
            format!("/api/v{mid}"),
            false,
        ),
        p(
            "no rule: unknown path",
            &c.alice,
            "GET",
            HOST,
            "/metrics".into(),
            false,
        ),
        p(
            "no rule: method not in the set",
            &c.alice,
            "POST",
            HOST,
            format!("/api/v{no_post}/items"),
            false,
        ),
        p(
            "no rule: PATCH is in no set",
            &c.bob,
            "PATCH",
            HOST,
            format!("/api/v{lacking}/items"),
            false,
        ),
        p(
            "no rule: claim missing",
            &c.alice,
            "GET",
            HOST,
            format!("/api/v{lacking}/items"),
            false,
        ),
        p(
            "claim present",
            &c.bob,
            "GET",
            HOST,
            format!("/api/v{lacking}/items"),
            true,
        ),
        p(
            "no rule: other host",
            &c.alice,
            "GET",
            "other.default.svc.cluster.local",
            format!("/api/v{mid}/items"),
            false,
        ),
        p(
            "no rule: other realm",
            &c.mallory,
            "GET",
            HOST,
            format!("/api/v{mid}/items"),
            false,
        ),
        p(
            "no rule: anonymous",
            &c.anonymous,
            "GET",
            HOST,
            format!("/api/v{mid}/items"),
            false,
        ),
        p(
            "DENY: suffix */internal over an ALLOW",
            &c.alice,
            "GET",
            HOST,
            format!("/api/v{mid}/internal"),
            false,
        ),
        p(
            "DENY: suspended group over an ALLOW",
            &c.carol,
            "GET",
            HOST,
            format!("/api/v{mid}/items"),
            false,
        ),
        p("admin console", &c.bob, "GET", HOST, "/admin/users".into(), true),
        p(
            "no rule: admin console without admin role",
            &c.alice,
            "GET",
            HOST,
            "/admin/users".into(),
            false,
        ),
        p(
            "DENY: DELETE /admin* over an ALLOW",
            &c.bob,
            "DELETE",
            HOST,
            "/admin/users/7".into(),
            false,
        ),
        p(
            "DENY: DELETE /admin* on a prefix sibling",
            &c.bob,
            "DELETE",
            HOST,
            "/administrators".into(),
            false,
        ),
        p(
            "DELETE allowed on an API rule",
            &c.bob,
            "DELETE",
            HOST,
            format!("/api/v{}/items/7", {
                (n / 2..n)
                    .find(|&i| i % 3 == 2 && BOB.satisfies(REQUIREMENTS[i % 4]))
                    .unwrap()
            }),
            true,
        ),
    ]
}

fn check_agreement(n: usize, engines: &Engines, callers: &Callers) {
    let probes = probes(n, callers);
    let count = probes.len();
    for p in probes {
        let req = OwnedRequest::new(p.method, &p.path).header("host", p.host);
        let palisade = engines.palisade(p.caller, &req);
        let cedar_response = engines.cedar_response(p.caller, p.method, p.host, &p.path);
        let cedar_errors: Vec<String> = cedar_response
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        let cedar = cedar_response.decision() == Decision::Allow;
        let casbin = engines.casbin(p.caller, p.method, p.host, &p.path);
        let line = format!(
            "N={n}, {}: {} {} {} {} (want {}) -> palisade {palisade} ({}), cedar {cedar}, casbin {casbin}",
            p.what,
            p.caller.name,
            p.method,
            p.host,
            p.path,
            p.allowed,
            engines.palisade.evaluate(&req, p.caller.identity.as_ref()),
        );
        assert!(
            palisade == p.allowed && cedar == p.allowed && casbin == p.allowed,
            "engines disagree: {line}"
        );
        assert!(
            cedar_errors.is_empty(),
            "cedar evaluation errors: {cedar_errors:?} for {line}"
        );
    }
    eprintln!("authz: N={n}: palisade, cedar and casbin agree on all {count} probes");
}

// ---------------------------------------------------------------------------
// Timing.

fn authz_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let callers = Callers::new();
    let mut g = c.benchmark_group("authz");
    for n in SIZES {
        let engines = Engines::build(n, &rt);
        check_agreement(n, &engines, &callers);

        // The typical request: Alice, GET on the API rule near the middle.
        // Outside the timed closures: compiled policies, and per caller what
        // a service caches with the verified token (Palisade's `Identity`,
        // Cedar's principal uid and `Entities`, Casbin's subject struct).
        // Inside: Palisade evaluates a borrowed request view (what the
        // adapters hand it); Cedar builds its `Request` (action and resource
        // uids, context with the path) and authorizes; Casbin converts its
        // arguments to Rhai values and enforces.
        let alice = &callers.alice;
        let path = format!("/api/v{}/items", typical_rule(n));
        let req = OwnedRequest::new("GET", &path).header("host", HOST);
        let id = alice.identity.as_ref();

        g.bench_function(BenchmarkId::new("palisade", n), |b| {
            b.iter(|| {
                let d = engines.palisade.evaluate(black_box(&req), black_box(id));
                assert!(d.is_allowed());
            });
        });
        g.bench_function(BenchmarkId::new("cedar", n), |b| {
            b.iter(|| assert!(engines.cedar(alice, black_box("GET"), black_box(HOST), black_box(&path))));
        });
        g.bench_function(BenchmarkId::new("casbin", n), |b| {
            b.iter(|| assert!(engines.casbin(alice, black_box("GET"), black_box(HOST), black_box(&path))));
        });
    }
    g.finish();
}

/// 10,000 rules of one kind, each telling the callers it admits apart by
/// one attribute, and a request that the rule in the middle admits: what
/// the index makes cost about the same whatever the kind (`index/*`).
fn index_benches(c: &mut Criterion) {
    const N: usize = 10_000;
    type MakeRule = fn(usize) -> String;
    let kinds: [(&str, MakeRule); 5] = [
        ("path", |i| {
            format!("  - to: [{{operation: {{paths: [\"/api/v{i}/*\"]}}}}]\n")
        }),
        ("host", |i| {
            format!("  - to: [{{operation: {{hosts: [\"svc{i}.example\"]}}}}]\n")
        }),
        ("claim", |i| {
            format!("  - when: [{{key: \"request.auth.claims[tenant]\", values: [\"t{i}\"]}}]\n")
        }),
        ("principal", |i| {
            format!("  - from: [{{source: {{requestPrincipals: [\"{ISSUER}/user{i}\"]}}}}]\n")
        }),
        ("header", |i| {
            format!("  - when: [{{key: \"request.headers[x-team]\", values: [\"team{i}\"]}}]\n")
        }),
    ];
    let mut g = c.benchmark_group("index");
    for (kind, rule) in kinds {
        let mut yaml = String::from(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: many, namespace: default}\nspec:\n  rules:\n",
        );
        for i in 0..N {
            yaml.push_str(&rule(i));
        }
        let set = PolicySet::from_yaml_str(&yaml, "index.yaml").unwrap();
        let policy = AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default"))).unwrap();
        let middle = N / 2;
        let (path, host) = (format!("/api/v{middle}/items"), format!("svc{middle}.example"));
        let req = OwnedRequest::get(if kind == "path" { &path } else { "/api" })
            .header("host", if kind == "host" { &host } else { HOST })
            .header("x-team", format!("team{middle}"));
        let mut token = TokenClaims::default();
        token.issuer = ISSUER.into();
        token.subject = format!("user{middle}");
        token.claims.insert("tenant".into(), format!("t{middle}").into());
        let id = Identity::from_token(token, Verification::assertion());
        let d = policy.evaluate(&req, Some(&id));
        assert!(d.is_allowed() && d.rule() == Some(middle), "{kind}: {d:?}");
        g.bench_function(BenchmarkId::new(kind, N), |b| {
            b.iter(|| black_box(policy.evaluate(black_box(&req), black_box(Some(&id)))).is_allowed())
        });
    }
    g.finish();
}

criterion_group!(benches, authz_benches, index_benches);
criterion_main!(benches);
