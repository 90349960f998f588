//! From `AuthorizationPolicy` documents to compiled rules. Anything that
//! cannot be enforced exactly as written is an error naming the document and
//! the field: never a silently wider ALLOW or narrower DENY.

use std::borrow::Cow;
use std::sync::Arc;

use super::attr::{Clause, IpAttr, StrAttr, Test};
use super::custom::ExternalAuthorizers;
use super::matcher::{IpBlock, PathMatch, ServiceAccount, StrMatch, parse_port};
use super::{Action, CompiledPolicy, CompiledRule};
use crate::policy::{
    AuthorizationPolicySpec, ConditionSpec, Document, Metadata, OperationSpec, PolicyError, RuleSpec,
    SourceSpec, Spec, WorkloadPolicy,
};

/// A field-relative error: (field path below the current node, message).
pub(crate) use crate::policy::FieldError;

fn nonempty<'v>(values: &'v [String], field: &str) -> Result<&'v [String], FieldError> {
    if values.is_empty() {
        return Err((
            field.to_owned(),
            "must not be empty (leave the field out instead)".to_owned(),
        ));
    }
    Ok(values)
}

fn strs(values: &[String], field: &str) -> Result<Box<[StrMatch]>, FieldError> {
    nonempty(values, field)?
        .iter()
        .enumerate()
        .map(|(i, v)| StrMatch::parse(v).map_err(|m| (format!("{field}[{i}]"), m)))
        .collect()
}

fn paths(values: &[String], field: &str) -> Result<Box<[PathMatch]>, FieldError> {
    path_patterns(nonempty(values, field)?, field)
}

/// Path patterns (`AuthorizationPolicy` and `ServiceRole` `paths`,
/// `notPaths`), their escapes read as a request path's are once
/// normalised ([`pattern_escapes`](super::path::pattern_escapes)). An
/// escape no normalised path holds is refused: a `%` without two hex
/// digits (such a request is refused as malformed), and `%2A`, which a
/// request's normalisation decodes to `*`, the patterns' wildcard.
pub(crate) fn path_patterns(values: &[String], field: &str) -> Result<Box<[PathMatch]>, FieldError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let at = || format!("{field}[{i}]");
            if let Some(why) = super::path::unmatchable_escape(v) {
                return Err((at(), format!("`{v}` {why}")));
            }
            // As written first: its escapes read, `{version}` would be
            // `%7Bversion%7D`, a literal no request has, not a template
            // that is refused.
            PathMatch::parse(v).map_err(|e| (at(), e))?;
            PathMatch::parse(&super::path::pattern_escapes(v))
                .map_err(|_| (at(), format!("`{v}` is not a path pattern")))
        })
        .collect()
}

fn ips(values: &[String], field: &str) -> Result<Box<[IpBlock]>, FieldError> {
    nonempty(values, field)?
        .iter()
        .enumerate()
        .map(|(i, v)| IpBlock::parse(v).map_err(|m| (format!("{field}[{i}]"), m)))
        .collect()
}

fn ports(values: &[String], field: &str) -> Result<Box<[u16]>, FieldError> {
    nonempty(values, field)?
        .iter()
        .enumerate()
        .map(|(i, v)| parse_port(v).map_err(|m| (format!("{field}[{i}]"), m)))
        .collect()
}

/// Adds a clause for an optional positive field and its `not…` twin.
fn pair(
    out: &mut Vec<Clause>,
    (pos, pos_name): (Option<&Vec<String>>, &str),
    (neg, neg_name): (Option<&Vec<String>>, &str),
    build: impl Fn(&[String], &str) -> Result<Test, FieldError>,
) -> Result<(), FieldError> {
    if let Some(v) = pos {
        out.push(Clause {
            test: build(v, pos_name)?,
            negate: false,
        });
    }
    if let Some(v) = neg {
        out.push(Clause {
            test: build(v, neg_name)?,
            negate: true,
        });
    }
    Ok(())
}

/// `values` of a peer principal (`principals`, `source.principal`, an
/// RBAC `user` or `source.principal` property) as Istio reads them against
/// the mesh's trust domains (`domains`: its own, then its aliases;
/// `AuthorizationSettings`' `trustDomain` and `trustDomainAliases`): a
/// principal of five `/`-separated parts whose trust domain is
/// `cluster.local`, one of `domains`, or a `*`-led pattern covering one
/// (`*-td`), names that workload in each of `domains`, the pattern kept
/// as written for the domains it covers (Istio's
/// `ReplaceTrustDomainAliases`); other principals (`*`, `cluster.local/*`,
/// another domain's), and every principal without such settings, as
/// written.
pub(crate) fn principals_in_mesh<'v>(values: &'v [String], domains: &[String]) -> Cow<'v, [String]> {
    if domains.is_empty() {
        return Cow::Borrowed(values);
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len() * domains.len());
    let mut keep = |p: String| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for v in values {
        let domain = v.split('/').next().unwrap_or_default();
        // A `*`-led domain (`*-td`) covers the domains that end as it does.
        let covers = |d: &str| d == domain || domain.strip_prefix('*').is_some_and(|tail| d.ends_with(tail));
        let in_mesh = v.split('/').count() == 5
            && domain != "*"
            && (domain == "cluster.local" || domains.iter().any(|d| covers(d)));
        if in_mesh {
            let rest = &v[domain.len()..];
            for d in domains {
                keep(if covers(d) {
                    v.clone()
                } else {
                    format!("{d}{rest}")
                });
            }
        } else {
            keep(v.clone());
        }
    }
    Cow::Owned(out)
}

fn service_accounts(values: &[String], field: &str, namespace: &str) -> Result<Test, FieldError> {
    let accounts = ServiceAccount::parse_all(nonempty(values, field)?, namespace, field)?;
    Ok(Test::ServiceAccount(accounts))
}

/// The clauses of a source; `namespace` is the policy's, the namespace of a
/// service account written without one; `domains` the mesh's trust
/// domains ([`principals_in_mesh`]).
pub(crate) fn source_clauses(
    s: &SourceSpec,
    namespace: &str,
    domains: &[String],
) -> Result<Vec<Clause>, FieldError> {
    if s.principals.is_some()
        || s.not_principals.is_some()
        || s.namespaces.is_some()
        || s.not_namespaces.is_some()
    {
        for (given, field) in [
            (&s.service_accounts, "serviceAccounts"),
            (&s.not_service_accounts, "notServiceAccounts"),
        ] {
            if given.is_some() {
                return Err((
                    field.to_owned(),
                    "cannot be set with principals or namespaces in the same source (as in Istio); use another `from` entry".to_owned(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    let str_attr = |attr: StrAttr| move |v: &[String], f: &str| Ok(Test::Str(attr.clone(), strs(v, f)?));
    let ip_attr = |attr: IpAttr| move |v: &[String], f: &str| Ok(Test::Ip(attr, ips(v, f)?));
    pair(
        &mut out,
        (s.principals.as_ref(), "principals"),
        (s.not_principals.as_ref(), "notPrincipals"),
        |v, f| key_test(&Key::Str(StrAttr::PeerPrincipal), v, f, namespace, domains),
    )?;
    pair(
        &mut out,
        (s.request_principals.as_ref(), "requestPrincipals"),
        (s.not_request_principals.as_ref(), "notRequestPrincipals"),
        str_attr(StrAttr::RequestPrincipal),
    )?;
    pair(
        &mut out,
        (s.namespaces.as_ref(), "namespaces"),
        (s.not_namespaces.as_ref(), "notNamespaces"),
        |v, f| key_test(&Key::Str(StrAttr::PeerNamespace), v, f, namespace, domains),
    )?;
    pair(
        &mut out,
        (s.service_accounts.as_ref(), "serviceAccounts"),
        (s.not_service_accounts.as_ref(), "notServiceAccounts"),
        |v, f| service_accounts(v, f, namespace),
    )?;
    pair(
        &mut out,
        (s.ip_blocks.as_ref(), "ipBlocks"),
        (s.not_ip_blocks.as_ref(), "notIpBlocks"),
        ip_attr(IpAttr::Source),
    )?;
    pair(
        &mut out,
        (s.remote_ip_blocks.as_ref(), "remoteIpBlocks"),
        (s.not_remote_ip_blocks.as_ref(), "notRemoteIpBlocks"),
        ip_attr(IpAttr::Remote),
    )?;
    if out.is_empty() {
        return Err((
            String::new(),
            "an empty source matches every caller: give at least one field".into(),
        ));
    }
    Ok(out)
}

pub(crate) fn operation_clauses(o: &OperationSpec) -> Result<Vec<Clause>, FieldError> {
    let mut out = Vec::new();
    // Cheap tests first: methods, then paths, then the rest.
    pair(
        &mut out,
        (o.methods.as_ref(), "methods"),
        (o.not_methods.as_ref(), "notMethods"),
        |v, f| Ok(Test::Str(StrAttr::Method, strs(v, f)?)),
    )?;
    pair(
        &mut out,
        (o.paths.as_ref(), "paths"),
        (o.not_paths.as_ref(), "notPaths"),
        |v, f| Ok(Test::Path(paths(v, f)?)),
    )?;
    pair(
        &mut out,
        (o.hosts.as_ref(), "hosts"),
        (o.not_hosts.as_ref(), "notHosts"),
        |v, f| Ok(Test::Host(strs(v, f)?)),
    )?;
    pair(
        &mut out,
        (o.ports.as_ref(), "ports"),
        (o.not_ports.as_ref(), "notPorts"),
        |v, f| Ok(Test::Port(ports(v, f)?)),
    )?;
    if out.is_empty() {
        return Err((
            String::new(),
            "an empty operation matches every request: give at least one field".into(),
        ));
    }
    Ok(out)
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

/// The kind of value a `when` key takes.
pub(crate) enum Key {
    Str(StrAttr),
    Ip(IpAttr),
    Port,
    /// `source.serviceAccount`.
    ServiceAccount,
}

/// Parses a condition key (`request.auth.claims[groups]`).
pub(crate) fn parse_key(key: &str) -> Result<Key, String> {
    let attr = match key {
        "request.auth.principal" => StrAttr::RequestPrincipal,
        "request.auth.audiences" => StrAttr::Audiences,
        "request.auth.presenter" => StrAttr::Presenter,
        "request.auth.tenant" => StrAttr::Tenant,
        "source.principal" => StrAttr::PeerPrincipal,
        "source.namespace" => StrAttr::PeerNamespace,
        "connection.sni" => StrAttr::Sni,
        "source.ip" => return Ok(Key::Ip(IpAttr::Source)),
        "remote.ip" => return Ok(Key::Ip(IpAttr::Remote)),
        "destination.ip" => return Ok(Key::Ip(IpAttr::Destination)),
        "destination.port" => return Ok(Key::Port),
        "source.serviceAccount" => return Ok(Key::ServiceAccount),
        k if k.starts_with("request.experimental.") => {
            return Err(format!(
                "`{key}` is an experimental Envoy header matcher that Palisade does not implement; use request.headers[Name]"
            ));
        }
        k if k.starts_with("experimental.") => {
            return Err(format!(
                "`{key}` is an Envoy filter attribute that an in-process HTTP service does not have"
            ));
        }
        k if k.starts_with("request.headers") => {
            return match bracketed(&k["request.headers".len()..]).as_deref() {
                // Envoy's matchers see its pseudo-headers; a request here has
                // none, so such a condition would never hold (a DENY never
                // fire): refused, pointing at the fields that match them.
                Some([h]) if h.starts_with(':') => Err(format!(
                    "`{key}`: pseudo-headers are not request headers here; match `:path`, `:authority` and `:method` with `to.operation` `paths`, `hosts` and `methods`"
                )),
                // A name no request can carry: a condition that never holds.
                Some([h]) if !crate::syntax::is_http_token(h) => {
                    Err(format!("`{key}`: `{h}` is not an HTTP header name"))
                }
                // What an HTTP/2 request carries as `:authority` (no
                // `Host` header), which Envoy reads under this name too.
                Some([h]) if h.eq_ignore_ascii_case("host") => Ok(Key::Str(StrAttr::Host)),
                Some([h]) => Ok(Key::Str(StrAttr::Header(h.to_ascii_lowercase().into()))),
                _ => Err(format!("`{key}`: write request.headers[Name]")),
            };
        }
        k if k.starts_with("request.auth.claims") => {
            return bracketed(&k["request.auth.claims".len()..])
                .map(|p| Key::Str(StrAttr::Claim(p.into())))
                .ok_or_else(|| {
                    format!("`{key}`: write request.auth.claims[name] or request.auth.claims[a][b]")
                });
        }
        _ => return Err(unknown_key(key)),
    };
    Ok(Key::Str(attr))
}

/// The condition keys Palisade reads, as a message lists them (the
/// bracketed ones with their form).
const KEYS: [&str; 14] = [
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[name]",
    "request.auth.tenant",
    "request.headers[name]",
    "source.principal",
    "source.namespace",
    "source.serviceAccount",
    "source.ip",
    "remote.ip",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// An unknown condition key's message: the nearest key Palisade reads
/// (a letter or two off, a plural, `claim` for `claims`), else the list.
fn unknown_key(key: &str) -> String {
    // The part before a bracket is compared, so `request.auth.claim[groups]`
    // is near `request.auth.claims[name]`.
    let (stem, bracket) = key.split_once('[').map_or((key, None), |(s, b)| (s, Some(b)));
    let near = KEYS
        .iter()
        .map(|k| (k, k.split_once('[').map_or(*k, |(s, _)| s)))
        .map(|(k, s)| (edits(&stem.to_ascii_lowercase(), &s.to_ascii_lowercase()), k, s))
        .filter(|(d, _, _)| *d <= 2)
        .min_by_key(|(d, _, _)| *d);
    match near {
        Some((_, k, s)) => {
            let meant = match (bracket, k.contains('[')) {
                (Some(b), true) => format!("{s}[{b}"),
                _ => (*k).to_owned(),
            };
            format!("unknown condition key `{key}`: did you mean `{meant}`?")
        }
        None => format!(
            "unknown condition key `{key}`; Palisade reads {}",
            KEYS.join(", ")
        ),
    }
}

/// The edit distance of two short strings (Levenshtein).
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A test of `key` against `values`; `namespace` is the policy's (for a
/// service account written without one).
pub(crate) fn key_test(
    key: &Key,
    values: &[String],
    field: &str,
    namespace: &str,
    domains: &[String],
) -> Result<Test, FieldError> {
    Ok(match key {
        // A peer's principal is its SPIFFE ID without the scheme, as
        // Istio's: `spiffe://…` would match no peer (in a DENY, or a
        // `notPrincipals` of an ALLOW, a rule that leaves its peer open).
        Key::Str(StrAttr::PeerPrincipal) => {
            if let Some(i) = values
                .iter()
                .position(|v| v.get(..9).is_some_and(|s| s.eq_ignore_ascii_case("spiffe://")))
            {
                return Err((
                    format!("{field}[{i}]"),
                    format!(
                        "a principal is written without `spiffe://`, as Istio's are (`{}`): with it, it matches no peer",
                        &values[i][9..]
                    ),
                ));
            }
            Test::Str(
                StrAttr::PeerPrincipal,
                strs(&principals_in_mesh(values, domains), field)?,
            )
        }
        // A host is compared without case, as `hosts` compares it.
        Key::Str(StrAttr::Host) => {
            let lower: Vec<String> = values.iter().map(|v| v.to_ascii_lowercase()).collect();
            Test::Str(StrAttr::Host, strs(&lower, field)?)
        }
        // A namespace is one segment of a principal (`td/ns/NS/sa/SA`): a
        // value with a `/` would match or not by how the rules are indexed.
        Key::Str(StrAttr::PeerNamespace) => {
            if let Some(i) = values.iter().position(|v| v.contains('/')) {
                return Err((format!("{field}[{i}]"), "a namespace name has no `/`".into()));
            }
            Test::Str(StrAttr::PeerNamespace, strs(values, field)?)
        }
        Key::Str(attr) => Test::Str(attr.clone(), strs(values, field)?),
        Key::Ip(attr) => Test::Ip(*attr, ips(values, field)?),
        Key::Port => Test::Port(ports(values, field)?),
        Key::ServiceAccount => service_accounts(values, field, namespace)?,
    })
}

/// The clauses of a condition: `values`, `notValues`, or both (then both
/// must hold, as in Istio).
pub(crate) fn condition_clauses(
    c: &ConditionSpec,
    namespace: &str,
    domains: &[String],
) -> Result<Vec<Clause>, FieldError> {
    let key = parse_key(&c.key).map_err(|m| ("key".to_owned(), m))?;
    if c.values.is_none() && c.not_values.is_none() {
        return Err((
            "values".to_owned(),
            "a condition needs values, notValues or both".to_owned(),
        ));
    }
    let mut out = Vec::new();
    pair(
        &mut out,
        (c.values.as_ref(), "values"),
        (c.not_values.as_ref(), "notValues"),
        |v, f| key_test(&key, v, f, namespace, domains),
    )?;
    Ok(out)
}

/// The dry-run annotation's name.
pub(crate) const DRY_RUN: &str = "istio.io/dry-run";

/// The `istio.io/dry-run` annotation, read as Istio reads it (Go's
/// `strconv.ParseBool`: `true`, `True`, `TRUE`, `t`, `T`, `1`, and the
/// same of false).
pub(crate) fn dry_run(metadata: &Metadata) -> Result<bool, FieldError> {
    match metadata.annotations.get(DRY_RUN).map(String::as_str) {
        None | Some("false" | "False" | "FALSE" | "f" | "F" | "0") => Ok(false),
        Some("true" | "True" | "TRUE" | "t" | "T" | "1") => Ok(true),
        Some(other) => Err((
            format!("metadata.annotations.{DRY_RUN}"),
            format!(
                "`{other}` is not a boolean (`true` or `false`, read as Go's ParseBool reads them, as Istio does)"
            ),
        )),
    }
}

/// Where the dry-run annotation may be, whatever its value, as Istio's
/// validation has it: on an `ALLOW` or `DENY` `AuthorizationPolicy` only
/// (elsewhere it would be read as a dry run and do nothing).
pub(crate) fn check_dry_run_place(metadata: &Metadata, spec: &Spec) -> Result<(), FieldError> {
    if !metadata.annotations.contains_key(DRY_RUN) {
        return Ok(());
    }
    let why = match spec {
        Spec::AuthorizationPolicy(p) => match p.action {
            Action::Allow | Action::Deny => return Ok(()),
            Action::Custom => "a dry run is for ALLOW and DENY policies only, not CUSTOM (as in Istio)",
            Action::Audit => "a dry run is for ALLOW and DENY policies only, not AUDIT (as in Istio)",
        },
        _ => {
            "only an AuthorizationPolicy has a dry run (as in Istio): this document is in force as it is; remove the annotation"
        }
    };
    Err((format!("metadata.annotations.{DRY_RUN}"), why.into()))
}

/// The checks of an `AuthorizationPolicy` that need no workload, run for
/// every document when the file loads: its selector or target references,
/// the action and its provider, the dry-run annotation and every rule.
pub(crate) fn check_policy(metadata: &Metadata, spec: &AuthorizationPolicySpec) -> Result<(), FieldError> {
    spec.check_scope()?;
    dry_run(metadata)?;
    match (spec.action, &spec.provider) {
        (Action::Custom, None) => {
            return Err(("spec.provider".into(), "a CUSTOM policy needs a provider".into()));
        }
        (Action::Custom, Some(p)) if p.name.is_empty() => {
            return Err(("spec.provider.name".into(), "must not be empty".into()));
        }
        (Action::Custom, Some(_)) | (_, None) => {}
        (_, Some(_)) => {
            return Err((
                "spec.provider".into(),
                "only a CUSTOM policy takes a provider".into(),
            ));
        }
    }
    compile_rules(spec, metadata.namespace(), &[]).map(drop)
}

/// The rules of a policy in `namespace`, compiled; errors name the field
/// below `spec`.
fn compile_rules(
    spec: &AuthorizationPolicySpec,
    namespace: &str,
    domains: &[String],
) -> Result<Vec<CompiledRule>, FieldError> {
    let mut rules = Vec::new();
    // `spec: {}` (no rules) under ALLOW matches nothing: deny all. Under
    // DENY or CUSTOM it would match nothing either, which Istio's
    // validation refuses as meaningless (`rules: [{}]` matches everything).
    if matches!(spec.action, Action::Deny | Action::Custom) && spec.rules.as_ref().is_none_or(Vec::is_empty) {
        let what = if spec.action == Action::Deny {
            "a DENY policy without rules denies nothing"
        } else {
            "a CUSTOM policy without rules asks its authorizer nothing"
        };
        return Err((
            "spec.rules".into(),
            format!("{what} (Istio's validation refuses it): write `rules: [{{}}]` for every request"),
        ));
    }
    for (ri, rule) in spec.rules.iter().flatten().enumerate() {
        let join = |base: String, (sub, msg): FieldError| {
            let field = if sub.is_empty() {
                format!("spec.rules[{ri}].{base}")
            } else {
                format!("spec.rules[{ri}].{base}.{sub}")
            };
            (field, msg)
        };
        for (field, empty) in [
            ("from", rule.from.as_ref().is_some_and(Vec::is_empty)),
            ("to", rule.to.as_ref().is_some_and(Vec::is_empty)),
        ] {
            if empty {
                return Err((
                    format!("spec.rules[{ri}].{field}"),
                    "must not be empty (leave the field out instead)".into(),
                ));
            }
        }
        let mut from = Vec::new();
        for (fi, f) in rule.from.iter().flatten().enumerate() {
            from.push(
                source_clauses(&f.source, namespace, domains)
                    .map_err(|e| join(format!("from[{fi}].source"), e))?,
            );
        }
        let mut to = Vec::new();
        for (ti, t) in rule.to.iter().flatten().enumerate() {
            to.push(operation_clauses(&t.operation).map_err(|e| join(format!("to[{ti}].operation"), e))?);
        }
        let mut when = Vec::new();
        for (ci, c) in rule.when.iter().enumerate() {
            when.extend(
                condition_clauses(c, namespace, domains).map_err(|e| join(format!("when[{ci}]"), e))?,
            );
        }
        rules.push(CompiledRule::new(from, to, when));
    }
    Ok(rules)
}

/// Istio's exact host match includes the port: a DENY on `admin.example`
/// misses `Host: admin.example:443`, a CUSTOM check of it is not asked for
/// `admin.example:443`, and an ALLOW of every host but it (`notHosts`)
/// admits that. Legal, as in Istio, but said when the file loads ((field,
/// message) of each such host of the rule).
pub(crate) fn hosts_without_port(action: Action, ri: usize, rule: &RuleSpec) -> Vec<FieldError> {
    let (field, what): (&str, fn(&str) -> String) = match action {
        Action::Deny => ("hosts", |h| format!("a DENY of `{h}` does not match `{h}:PORT`")),
        // The authorizer is not asked about `h:PORT`: a check skipped.
        Action::Custom => ("hosts", |h| {
            format!("a CUSTOM check of `{h}` is not asked for `{h}:PORT`")
        }),
        Action::Allow => ("notHosts", |h| {
            format!("an ALLOW of every host but `{h}` admits `{h}:PORT`")
        }),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for (ti, t) in rule.to.iter().flatten().enumerate() {
        let hosts = if action != Action::Allow {
            &t.operation.hosts
        } else {
            &t.operation.not_hosts
        };
        for (hi, h) in hosts.iter().flatten().enumerate() {
            if let Ok(m) = StrMatch::parse(h)
                && let Some(h) = super::matcher::host_without_port(&m)
            {
                out.push((
                    format!("spec.rules[{ri}].to[{ti}].operation.{field}[{hi}]"),
                    format!(
                        "{} (Istio matches the port too); add `{h}:*` for every port",
                        what(h)
                    ),
                ));
            }
        }
    }
    out
}

pub(crate) fn compile_policy(
    w: &WorkloadPolicy<'_>,
    doc: &Document,
    spec: &AuthorizationPolicySpec,
    authorizers: &ExternalAuthorizers,
    domains: &[String],
) -> Result<CompiledPolicy, PolicyError> {
    // `check_policy` ran when the document's set was made.
    let action = spec.action;
    let dry_run = dry_run(&doc.metadata).map_err(|(field, msg)| w.error_at(doc, &field, msg))?;
    let provider = match &spec.provider {
        Some(p) if action == Action::Custom => {
            let Some(a) = authorizers.get(&p.name) else {
                return Err(w.error_at(
                    doc,
                    "spec.provider.name",
                    format!(
                        "no external authorizer is registered under `{}` (register one with ExternalAuthorizers::register)",
                        p.name
                    ),
                ));
            };
            Some((Arc::<str>::from(p.name.as_str()), a))
        }
        _ => None,
    };
    let rules = compile_rules(spec, doc.metadata.namespace(), domains)
        .map_err(|(field, msg)| w.error_at(doc, &field, msg))?;
    Ok(CompiledPolicy::new(
        format!("{}/{}", doc.metadata.namespace(), doc.metadata.name),
        action,
        dry_run,
        rules,
        provider,
    ))
}
