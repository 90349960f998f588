//! Access control: Istio `AuthorizationPolicy` semantics, evaluated in process.
//!
//! This version compiles the part of the grammar that concerns end-user
//! authentication and the operation: `from.source.requestPrincipals` /
//! `notRequestPrincipals`, `to.operation.hosts` / `methods` / `paths` and
//! their `not…` forms, and `when` on `request.auth.*` and `request.headers[…]`.
//! Anything else in a document that applies to the workload is a start-up
//! error, never a silently wider or narrower policy.
//!
//! ```
//! use palisade_core::authz::AccessPolicy;
//! use palisade_core::policy::{PolicySet, Workload};
//! use palisade_core::OwnedRequest;
//! let set = PolicySet::from_yaml_str(r#"
//! apiVersion: security.istio.io/v1
//! kind: AuthorizationPolicy
//! metadata: {name: require-jwt}
//! spec:
//!   rules:
//!   - from: [{source: {requestPrincipals: ["*"]}}]
//!   - to: [{operation: {paths: ["/healthz"]}}]
//! "#, "p.yaml")?;
//! let policy = AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default")))?;
//! assert!(policy.evaluate(&OwnedRequest::get("/healthz"), None).is_allowed());
//! assert!(!policy.evaluate(&OwnedRequest::get("/list"), None).is_allowed());
//! # Ok::<(), palisade_core::policy::PolicyError>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::identity::Identity;
use crate::policy::{
    AuthorizationPolicySpec, Condition, Document, Operation, PolicyError, Source, WorkloadPolicy,
};
use crate::request::RequestHead;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Matcher {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Matcher {
    fn parse(pattern: &str) -> Self {
        if pattern == "*" {
            Matcher::Any
        } else if let Some(p) = pattern.strip_suffix('*') {
            Matcher::Prefix(p.to_owned())
        } else if let Some(s) = pattern.strip_prefix('*') {
            Matcher::Suffix(s.to_owned())
        } else {
            Matcher::Exact(pattern.to_owned())
        }
    }

    fn matches(&self, value: &str, ignore_case: bool) -> bool {
        let eq = |a: &str, b: &str| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            Matcher::Any => true,
            Matcher::Exact(e) => eq(value, e),
            Matcher::Prefix(p) => {
                value.len() >= p.len() && value.is_char_boundary(p.len()) && eq(&value[..p.len()], p)
            }
            Matcher::Suffix(s) => {
                value.len() >= s.len()
                    && value.is_char_boundary(value.len() - s.len())
                    && eq(&value[value.len() - s.len()..], s)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Attr {
    RequestPrincipal,
    Method,
    Path,
    Host,
    Header(String),
    Audiences,
    Presenter,
    Claim(Vec<String>),
}

#[derive(Clone, Debug)]
struct Clause {
    attr: Attr,
    matchers: Vec<Matcher>,
    negate: bool,
}

impl Clause {
    fn holds(&self, req: &dyn RequestHead, id: Option<&Identity>) -> bool {
        if self.attr == Attr::RequestPrincipal && self.matchers.contains(&Matcher::Any) {
            // `requestPrincipals: ["*"]`: only presence matters; no string is built.
            let present = id.is_some_and(|i| i.token().is_some() || i.kerberos().is_some());
            return present != self.negate;
        }
        let values = attr_values(&self.attr, req, id);
        let ignore_case = self.attr == Attr::Host;
        let any = values.iter().any(|v| {
            self.matchers.iter().any(|m| {
                m.matches(v, ignore_case)
                    || (self.attr == Attr::Host
                        && v.rsplit_once(':').is_some_and(|(h, _)| m.matches(h, true)))
            })
        });
        any != self.negate
    }
}

fn attr_values<'a>(attr: &Attr, req: &'a dyn RequestHead, id: Option<&'a Identity>) -> Vec<Cow<'a, str>> {
    let token = id.and_then(Identity::token);
    match attr {
        Attr::RequestPrincipal => id
            .and_then(Identity::request_principal)
            .map(Cow::Owned)
            .into_iter()
            .collect(),
        Attr::Method => vec![Cow::Borrowed(req.method())],
        Attr::Path => vec![Cow::Borrowed(req.path())],
        Attr::Host => req.host().map(Cow::Borrowed).into_iter().collect(),
        Attr::Header(name) => req.header_str(name).map(Cow::Borrowed).into_iter().collect(),
        Attr::Audiences => token
            .map(|t| t.audiences.iter().map(|a| Cow::Borrowed(a.as_str())).collect())
            .unwrap_or_default(),
        Attr::Presenter => token
            .and_then(|t| t.authorized_party.as_deref())
            .map(Cow::Borrowed)
            .into_iter()
            .collect(),
        Attr::Claim(path) => {
            let Some(t) = token else { return Vec::new() };
            let mut value = t.claims.get(&path[0]);
            for key in &path[1..] {
                value = value.and_then(|v| v.get(key));
            }
            match value {
                Some(Value::String(s)) if path.len() == 1 && path[0] == "scope" => s
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(Cow::Borrowed)
                    .collect(),
                Some(Value::String(s)) => vec![Cow::Borrowed(s.as_str())],
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(Cow::Borrowed)
                    .collect(),
                Some(Value::Bool(b)) => vec![Cow::Owned(b.to_string())],
                Some(Value::Number(n)) => vec![Cow::Owned(n.to_string())],
                _ => Vec::new(),
            }
        }
    }
}

#[derive(Clone, Debug)]
struct CompiledRule {
    /// Any group may match; each group's clauses must all hold. Empty: matches.
    from: Vec<Vec<Clause>>,
    to: Vec<Vec<Clause>>,
    when: Vec<Clause>,
}

impl CompiledRule {
    fn matches(&self, req: &dyn RequestHead, id: Option<&Identity>) -> bool {
        let group = |g: &Vec<Clause>| g.iter().all(|c| c.holds(req, id));
        (self.from.is_empty() || self.from.iter().any(group))
            && (self.to.is_empty() || self.to.iter().any(group))
            && self.when.iter().all(|c| c.holds(req, id))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    Audit,
}

#[derive(Clone, Debug)]
struct CompiledPolicy {
    name: Arc<str>,
    action: Action,
    dry_run: bool,
    rules: Vec<CompiledRule>,
}

impl CompiledPolicy {
    fn matching_rule(&self, req: &dyn RequestHead, id: Option<&Identity>) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(req, id))
    }
}

/// The outcome of evaluating an [`AccessPolicy`], with its explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessDecision {
    allowed: bool,
    policy: Option<Arc<str>>,
    rule: Option<usize>,
}

impl AccessDecision {
    /// Whether the request may proceed.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The `namespace/name` of the policy that decided, if one did.
    #[must_use]
    pub fn policy(&self) -> Option<&str> {
        self.policy.as_deref()
    }

    /// The index of the rule that matched in that policy.
    #[must_use]
    pub fn rule(&self) -> Option<usize> {
        self.rule
    }
}

impl fmt::Display for AccessDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allowed" } else { "denied" };
        match (&self.policy, self.rule) {
            (Some(p), Some(r)) => write!(f, "{verdict} by {p} rule {r}"),
            (Some(p), None) => write!(f, "{verdict}: no rule of ALLOW policy {p} matched"),
            (None, _) if self.allowed => write!(f, "{verdict}: no ALLOW policy applies"),
            (None, _) => write!(f, "{verdict}: authentication required"),
        }
    }
}

/// A compiled set of access rules. A policy built in code and one loaded from
/// YAML are the same type.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    policies: Vec<CompiledPolicy>,
    has_allow: bool,
    headers: Vec<String>,
}

impl AccessPolicy {
    /// Every request is allowed, with or without credentials (Istio with no
    /// `AuthorizationPolicy`). Invalid credentials are still refused.
    #[must_use]
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Only requests with an authenticated end user (`requestPrincipals: ["*"]`)
    /// are allowed. This is what the code builders use unless told otherwise.
    #[must_use]
    pub fn require_authenticated() -> Self {
        Self {
            policies: vec![CompiledPolicy {
                name: Arc::from("palisade/require-authenticated"),
                action: Action::Allow,
                dry_run: false,
                rules: vec![CompiledRule {
                    from: vec![vec![Clause {
                        attr: Attr::RequestPrincipal,
                        matchers: vec![Matcher::Any],
                        negate: false,
                    }]],
                    to: Vec::new(),
                    when: Vec::new(),
                }],
            }],
            has_allow: true,
            headers: Vec::new(),
        }
    }

    /// Compiles the `AuthorizationPolicy` documents that apply to a workload.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the document and field of anything this
    /// version cannot enforce exactly as written.
    pub fn compile(workload: &WorkloadPolicy<'_>) -> Result<Self, PolicyError> {
        let mut out = Self::default();
        for (doc, spec) in workload.authorization_policies() {
            let policy = compile_policy(workload, doc, spec)?;
            if policy.action == Action::Allow && !policy.dry_run {
                out.has_allow = true;
            }
            out.policies.push(policy);
        }
        for p in &out.policies {
            for r in &p.rules {
                for c in r.from.iter().chain(&r.to).flatten().chain(&r.when) {
                    if let Attr::Header(h) = &c.attr
                        && !out.headers.contains(h)
                    {
                        out.headers.push(h.clone());
                    }
                }
            }
        }
        Ok(out)
    }

    /// The request headers that `when` conditions read (lower case).
    #[must_use]
    pub fn headers_read(&self) -> &[String] {
        &self.headers
    }

    /// Decides: DENY policies first, then ALLOW (none means allow). Dry-run
    /// policies are evaluated and logged, never enforced.
    pub fn evaluate(&self, req: &dyn RequestHead, identity: Option<&Identity>) -> AccessDecision {
        for p in self.policies.iter().filter(|p| p.action != Action::Allow) {
            if let Some(rule) = p.matching_rule(req, identity) {
                match (p.action, p.dry_run) {
                    (Action::Deny, false) => {
                        return AccessDecision {
                            allowed: false,
                            policy: Some(p.name.clone()),
                            rule: Some(rule),
                        };
                    }
                    (Action::Deny, true) => {
                        tracing::info!(target: "palisade::authz", policy = %p.name, rule, "dry-run DENY policy would deny");
                    }
                    _ => {
                        tracing::info!(target: "palisade::authz", policy = %p.name, rule, "AUDIT policy matched")
                    }
                }
            }
        }
        if !self.has_allow {
            return AccessDecision {
                allowed: true,
                policy: None,
                rule: None,
            };
        }
        let mut last = None;
        for p in self.policies.iter().filter(|p| p.action == Action::Allow) {
            match p.matching_rule(req, identity) {
                Some(rule) if !p.dry_run => {
                    return AccessDecision {
                        allowed: true,
                        policy: Some(p.name.clone()),
                        rule: Some(rule),
                    };
                }
                Some(rule) => {
                    tracing::info!(target: "palisade::authz", policy = %p.name, rule, "dry-run ALLOW policy would allow");
                }
                None if !p.dry_run => last = Some(p.name.clone()),
                None => {}
            }
        }
        AccessDecision {
            allowed: false,
            policy: last,
            rule: None,
        }
    }
}

fn compile_policy(
    w: &WorkloadPolicy<'_>,
    doc: &Document,
    spec: &AuthorizationPolicySpec,
) -> Result<CompiledPolicy, PolicyError> {
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => {
            return Err(w.error_at(
                doc,
                "spec.action",
                "CUSTOM is not supported by this version of Palisade yet",
            ));
        }
        other => return Err(w.error_at(doc, "spec.action", format!("unknown action `{other}`"))),
    };
    if spec.provider.is_some() {
        return Err(w.error_at(doc, "spec.provider", "only a CUSTOM policy takes a provider"));
    }
    let dry_run = match doc
        .metadata
        .annotations
        .get("istio.io/dry-run")
        .map(String::as_str)
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(w.error_at(
                doc,
                "metadata.annotations.istio.io/dry-run",
                format!("`{other}` is not \"true\" or \"false\""),
            ));
        }
    };
    let mut rules = Vec::new();
    // `spec: {}` (no rules) under ALLOW matches nothing: deny all. Under DENY
    // it matches nothing either: no effect. Both are Istio's semantics.
    for (ri, rule) in spec.rules.iter().flatten().enumerate() {
        let mut from = Vec::new();
        for (fi, f) in rule.from.iter().enumerate() {
            from.push(source_clauses(&f.source).map_err(|(field, msg)| {
                w.error_at(doc, &format!("spec.rules[{ri}].from[{fi}].source.{field}"), msg)
            })?);
        }
        let mut to = Vec::new();
        for (ti, t) in rule.to.iter().enumerate() {
            to.push(operation_clauses(&t.operation).map_err(|(field, msg)| {
                w.error_at(doc, &format!("spec.rules[{ri}].to[{ti}].operation.{field}"), msg)
            })?);
        }
        let mut when = Vec::new();
        for (ci, c) in rule.when.iter().enumerate() {
            when.push(condition_clause(c).map_err(|(field, msg)| {
                w.error_at(doc, &format!("spec.rules[{ri}].when[{ci}].{field}"), msg)
            })?);
        }
        rules.push(CompiledRule { from, to, when });
    }
    Ok(CompiledPolicy {
        name: Arc::from(format!("{}/{}", doc.metadata.namespace(), doc.metadata.name)),
        action,
        dry_run,
        rules,
    })
}

const NOT_YET: &str =
    "is not supported by this version of Palisade yet (it needs the mTLS or full authorization engine)";

fn list(values: &[String], field: &'static str) -> Result<Vec<Matcher>, (String, String)> {
    if values.is_empty() {
        return Err((field.to_owned(), "must not be empty".to_owned()));
    }
    Ok(values.iter().map(|v| Matcher::parse(v)).collect())
}

fn push(
    out: &mut Vec<Clause>,
    attr: Attr,
    values: Option<&Vec<String>>,
    negate: bool,
    field: &'static str,
) -> Result<(), (String, String)> {
    if let Some(values) = values {
        out.push(Clause {
            attr,
            matchers: list(values, field)?,
            negate,
        });
    }
    Ok(())
}

fn source_clauses(s: &Source) -> Result<Vec<Clause>, (String, String)> {
    let unsupported = [
        ("principals", s.principals.is_some()),
        ("notPrincipals", s.not_principals.is_some()),
        ("namespaces", s.namespaces.is_some()),
        ("notNamespaces", s.not_namespaces.is_some()),
        ("ipBlocks", s.ip_blocks.is_some()),
        ("notIpBlocks", s.not_ip_blocks.is_some()),
        ("remoteIpBlocks", s.remote_ip_blocks.is_some()),
        ("notRemoteIpBlocks", s.not_remote_ip_blocks.is_some()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, present)| *present) {
        return Err(((*field).to_owned(), NOT_YET.to_owned()));
    }
    let mut out = Vec::new();
    push(
        &mut out,
        Attr::RequestPrincipal,
        s.request_principals.as_ref(),
        false,
        "requestPrincipals",
    )?;
    push(
        &mut out,
        Attr::RequestPrincipal,
        s.not_request_principals.as_ref(),
        true,
        "notRequestPrincipals",
    )?;
    Ok(out)
}

fn operation_clauses(o: &Operation) -> Result<Vec<Clause>, (String, String)> {
    if o.ports.is_some() {
        return Err(("ports".to_owned(), NOT_YET.to_owned()));
    }
    if o.not_ports.is_some() {
        return Err(("notPorts".to_owned(), NOT_YET.to_owned()));
    }
    for (field, paths) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
        if paths.iter().flatten().any(|p| p.contains('{')) {
            return Err((
                field.to_owned(),
                "path templates ({*}, {**}) are not supported by this version of Palisade yet".to_owned(),
            ));
        }
    }
    let mut out = Vec::new();
    push(&mut out, Attr::Host, o.hosts.as_ref(), false, "hosts")?;
    push(&mut out, Attr::Host, o.not_hosts.as_ref(), true, "notHosts")?;
    push(&mut out, Attr::Method, o.methods.as_ref(), false, "methods")?;
    push(&mut out, Attr::Method, o.not_methods.as_ref(), true, "notMethods")?;
    push(&mut out, Attr::Path, o.paths.as_ref(), false, "paths")?;
    push(&mut out, Attr::Path, o.not_paths.as_ref(), true, "notPaths")?;
    Ok(out)
}

fn condition_clause(c: &Condition) -> Result<Clause, (String, String)> {
    let attr = parse_key(&c.key).map_err(|m| ("key".to_owned(), m))?;
    match (&c.values, &c.not_values) {
        (Some(v), None) => Ok(Clause {
            attr,
            matchers: list(v, "values")?,
            negate: false,
        }),
        (None, Some(v)) => Ok(Clause {
            attr,
            matchers: list(v, "notValues")?,
            negate: true,
        }),
        (Some(_), Some(_)) => Err((
            "values".to_owned(),
            "give either values or notValues in one condition".to_owned(),
        )),
        (None, None) => Err((
            "values".to_owned(),
            "a condition needs values or notValues".to_owned(),
        )),
    }
}

fn bracketed(rest: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut s = rest;
    while !s.is_empty() {
        let inner = s.strip_prefix('[')?;
        let end = inner.find(']')?;
        let key = &inner[..end];
        if key.is_empty() {
            return None;
        }
        out.push(key.to_owned());
        s = &inner[end + 1..];
    }
    (!out.is_empty()).then_some(out)
}

fn parse_key(key: &str) -> Result<Attr, String> {
    match key {
        "request.auth.principal" => return Ok(Attr::RequestPrincipal),
        "request.auth.audiences" => return Ok(Attr::Audiences),
        "request.auth.presenter" => return Ok(Attr::Presenter),
        "source.ip"
        | "remote.ip"
        | "source.namespace"
        | "source.principal"
        | "destination.ip"
        | "destination.port"
        | "connection.sni"
        | "experimental.envoy.filters.network.mysql_proxy[db.table]" => {
            return Err(format!("`{key}` {NOT_YET}"));
        }
        _ => {}
    }
    if let Some(rest) = key.strip_prefix("request.headers") {
        return match bracketed(rest).as_deref() {
            Some([h]) => Ok(Attr::Header(h.to_ascii_lowercase())),
            _ => Err(format!("`{key}`: write request.headers[Name]")),
        };
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        return bracketed(rest)
            .map(Attr::Claim)
            .ok_or_else(|| format!("`{key}`: write request.auth.claims[name] or request.auth.claims[a][b]"));
    }
    Err(format!("unknown condition key `{key}`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{TokenClaims, Verification};
    use crate::policy::{PolicySet, Workload};
    use crate::request::OwnedRequest;

    fn policy(yaml: &str) -> Result<AccessPolicy, PolicyError> {
        let set = PolicySet::from_yaml_str(yaml, "t.yaml")?;
        AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default")))
    }

    fn user(sub: &str, claims: serde_json::Value) -> Identity {
        let t = TokenClaims {
            issuer: "https://idp".into(),
            subject: sub.into(),
            claims: claims.as_object().cloned().unwrap_or_default(),
            ..TokenClaims::default()
        };
        Identity::from_token(t, Verification::assertion())
    }

    const HEAD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n";

    #[test]
    fn no_policy_allows_everyone() {
        assert!(
            policy("")
                .unwrap()
                .evaluate(&OwnedRequest::get("/"), None)
                .is_allowed()
        );
    }

    #[test]
    fn empty_spec_denies_all() {
        let p = policy(&format!("{HEAD}spec: {{}}\n")).unwrap();
        assert!(
            !p.evaluate(&OwnedRequest::get("/"), Some(&user("a", serde_json::json!({}))))
                .is_allowed()
        );
    }

    #[test]
    fn empty_rule_allows_all() {
        let p = policy(&format!("{HEAD}spec: {{rules: [{{}}]}}\n")).unwrap();
        assert!(p.evaluate(&OwnedRequest::get("/"), None).is_allowed());
    }

    #[test]
    fn deny_wins_over_allow() {
        let yaml = format!(
            "{HEAD}spec: {{rules: [{{}}]}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: d}}\nspec:\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [\"/admin*\"]}}}}]}}]\n"
        );
        let p = policy(&yaml).unwrap();
        let d = p.evaluate(&OwnedRequest::get("/admin/x"), None);
        assert!(!d.is_allowed());
        assert_eq!(d.policy(), Some("default/d"));
        assert!(p.evaluate(&OwnedRequest::get("/list"), None).is_allowed());
    }

    #[test]
    fn not_request_principals_matches_anonymous() {
        let p = policy(&format!(
            "{HEAD}spec:\n  action: DENY\n  rules: [{{from: [{{source: {{notRequestPrincipals: [\"*\"]}}}}]}}]\n"
        ))
        .unwrap();
        assert!(!p.evaluate(&OwnedRequest::get("/"), None).is_allowed());
        assert!(
            p.evaluate(&OwnedRequest::get("/"), Some(&user("a", serde_json::json!({}))))
                .is_allowed()
        );
    }

    #[test]
    fn claims_conditions_read_nested_and_array_claims() {
        let p = policy(&format!(
            "{HEAD}spec:\n  rules:\n  - when:\n    - key: request.auth.claims[realm_access][roles]\n      values: [admin]\n"
        ))
        .unwrap();
        let admin = user(
            "a",
            serde_json::json!({"realm_access": {"roles": ["user", "admin"]}}),
        );
        let plain = user("b", serde_json::json!({"realm_access": {"roles": ["user"]}}));
        assert!(p.evaluate(&OwnedRequest::get("/"), Some(&admin)).is_allowed());
        assert!(!p.evaluate(&OwnedRequest::get("/"), Some(&plain)).is_allowed());
    }

    #[test]
    fn scope_claim_is_split_on_spaces() {
        let p = policy(&format!(
            "{HEAD}spec:\n  rules:\n  - when:\n    - key: request.auth.claims[scope]\n      values: [write]\n"
        ))
        .unwrap();
        let id = user("a", serde_json::json!({"scope": "read write"}));
        assert!(p.evaluate(&OwnedRequest::get("/"), Some(&id)).is_allowed());
    }

    #[test]
    fn hosts_are_case_insensitive_and_port_aware() {
        let p = policy(&format!(
            "{HEAD}spec:\n  rules: [{{to: [{{operation: {{hosts: [\"details.example\"]}}}}]}}]\n"
        ))
        .unwrap();
        let req = OwnedRequest::get("/").header("host", "Details.Example:8080");
        assert!(p.evaluate(&req, None).is_allowed());
        let other = OwnedRequest::get("/").header("host", "evil.example");
        assert!(!p.evaluate(&other, None).is_allowed());
    }

    #[test]
    fn dry_run_policy_is_not_enforced() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  annotations: {istio.io/dry-run: \"true\"}\nspec:\n  action: DENY\n  rules: [{}]\n";
        assert!(
            policy(yaml)
                .unwrap()
                .evaluate(&OwnedRequest::get("/"), None)
                .is_allowed()
        );
    }

    #[test]
    fn unsupported_fields_fail_at_start_up_with_their_path() {
        let err = policy(&format!(
            "{HEAD}spec:\n  rules: [{{from: [{{source: {{principals: [a]}}}}]}}]\n"
        ))
        .unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("spec.rules[0].from[0].source.principals")
        );
        let err = policy(&format!(
            "{HEAD}spec:\n  rules: [{{when: [{{key: request.auth.claimz, values: [a]}}]}}]\n"
        ))
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.rules[0].when[0].key"));
        let err = policy(&format!("{HEAD}spec:\n  action: MAYBE\n")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.action"));
    }

    #[test]
    fn policy_order_does_not_change_the_decision() {
        let a = format!("{HEAD}spec: {{rules: [{{to: [{{operation: {{methods: [GET]}}}}]}}]}}\n");
        let b = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: q}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/x]}}]}]\n";
        let ab = policy(&format!("{a}---\n{b}")).unwrap();
        let ba = policy(&format!("{b}---\n{a}")).unwrap();
        for (m, path) in [("GET", "/x"), ("GET", "/y"), ("POST", "/y")] {
            let req = OwnedRequest::new(m, path);
            assert_eq!(
                ab.evaluate(&req, None).is_allowed(),
                ba.evaluate(&req, None).is_allowed()
            );
        }
    }
}
