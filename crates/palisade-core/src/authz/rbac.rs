//! The older `rbac.istio.io/v1alpha1` kinds, compiled into the same engine:
//! each `ServiceRoleBinding` becomes an ALLOW policy whose rules are its
//! role's rules that apply to this workload, with the binding's subjects as
//! sources. `RbacConfig` switches RBAC on (deny by default) for the workload;
//! a `PERMISSIVE` binding (or `enforcementMode`) is a dry-run policy.
//!
//! Mapping (as Istio's own conversion to `AuthorizationPolicy`):
//! `subjects[].user` → `source.principal` (`*`: anyone), `group` →
//! `request.auth.claims[groups]`, `properties` → `when` conditions;
//! `rules[].services` selects the workload by its host
//! `<service>.<namespace>.svc.cluster.local`; `methods`, `paths`, `ports` and
//! their `not…` forms → the operation; `constraints` → `when`, with
//! `destination.labels[…]`, `destination.name` and `destination.namespace`
//! decided against the workload at start-up.

use super::attr::{Clause, StrAttr, Test};
use super::compile::{FieldError, Key, key_test, parse_key};
use super::matcher::StrMatch;
use super::{Action, CompiledPolicy, CompiledRule};
use crate::policy::{
    AccessRuleSpec, Document, EnforcementMode, PolicyError, RbacConfigSpec, RbacMode, RbacTargetSpec,
    ServiceRoleBindingSpec, ServiceRoleSpec, Spec, SubjectSpec, Workload, WorkloadPolicy,
};

fn rbac_on<'a>(w: &WorkloadPolicy<'a>) -> Result<Option<(&'a Document, &'a RbacConfigSpec)>, PolicyError> {
    let mut found: Option<(&'a Document, &'a RbacConfigSpec)> = None;
    for d in w.documents() {
        if let Spec::RbacConfig(c) = &d.spec {
            if let Some((prev, _)) = found {
                return Err(w.error_at(
                    d,
                    "kind",
                    format!(
                        "only one RbacConfig or ClusterRbacConfig per mesh (document {} is one)",
                        prev.index
                    ),
                ));
            }
            found = Some((d, c));
        }
    }
    let Some((doc, cfg)) = found else { return Ok(None) };
    let wl = w.workload();
    let host = wl.host();
    let listed = |t: &Option<RbacTargetSpec>| {
        t.as_ref().is_some_and(|t| {
            t.services
                .iter()
                .any(|s| s.eq_ignore_ascii_case(&host) || s == &wl.service)
                || t.namespaces.contains(&wl.namespace)
        })
    };
    let on = match cfg.mode {
        RbacMode::Off => false,
        RbacMode::On => true,
        RbacMode::OnWithInclusion => listed(&cfg.inclusion),
        RbacMode::OnWithExclusion => !listed(&cfg.exclusion),
    };
    Ok(on.then_some((doc, cfg)))
}

/// Compiles the RBAC documents into `out`; returns whether RBAC is on and
/// enforced for the workload (deny by default).
pub(crate) fn compile(
    w: &WorkloadPolicy<'_>,
    out: &mut Vec<CompiledPolicy>,
    domains: &[String],
) -> Result<bool, PolicyError> {
    let roles: Vec<(&Document, &ServiceRoleSpec)> = w
        .documents()
        .iter()
        .filter_map(|d| match &d.spec {
            Spec::ServiceRole(s) => Some((*d, s)),
            _ => None,
        })
        .collect();
    // Validate every role, on or off, so a typo is caught either way.
    let mut compiled_roles = Vec::new();
    for (doc, role) in &roles {
        let mut rules = Vec::new();
        for (ri, rule) in role.rules.iter().enumerate() {
            let r = role_rule(w.workload(), rule)
                .map_err(|(f, m)| w.error_at(doc, &format!("spec.rules[{ri}].{f}"), m))?;
            rules.push(r);
        }
        compiled_roles.push((doc.metadata.name.as_str(), rules));
    }
    let config = rbac_on(w)?;
    let permissive_all = config.is_some_and(|(_, c)| c.enforcement_mode == EnforcementMode::Permissive);
    let mut bindings = 0;
    for d in w.documents() {
        let Spec::ServiceRoleBinding(b) = &d.spec else {
            continue;
        };
        bindings += 1;
        check_binding(b, d.metadata.namespace()).map_err(|(f, m)| w.error_at(d, &f, m))?;
        let Some((_, rules)) = compiled_roles.iter().find(|(n, _)| *n == b.role_ref.name) else {
            return Err(w.error_at(
                d,
                "spec.roleRef.name",
                format!(
                    "no ServiceRole `{}` in namespace `{}`",
                    b.role_ref.name,
                    d.metadata.namespace()
                ),
            ));
        };
        let dry_run = permissive_all || b.mode == EnforcementMode::Permissive;
        let mut from = Vec::new();
        for (si, s) in b.subjects.iter().enumerate() {
            from.push(
                subject(s, d.metadata.namespace(), domains)
                    .map_err(|(f, m)| w.error_at(d, &format!("spec.subjects[{si}].{f}"), m))?,
            );
        }
        if config.is_none() {
            continue;
        }
        // A subject with no constraint (`user: "*"`) admits anyone.
        let from = if from.iter().any(Vec::is_empty) {
            Vec::new()
        } else {
            from
        };
        // Only the role's rules that name the workload compile; decisions
        // and counters still number them as the role writes them.
        let (written, compiled): (Vec<u32>, Vec<CompiledRule>) = rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let (to, when) = r.as_ref()?;
                Some((
                    u32::try_from(i).ok()?,
                    CompiledRule::new(from.clone(), to.clone(), when.clone()),
                ))
            })
            .unzip();
        out.push(
            CompiledPolicy::new(
                format!("{}/{}", d.metadata.namespace(), d.metadata.name),
                Action::Allow,
                dry_run,
                compiled,
                None,
            )
            .written_as(written, rules.len()),
        );
    }
    if config.is_none() && (bindings > 0 || !roles.is_empty()) {
        // An RbacConfig that leaves this workload out is a choice; none at
        // all is likely a forgotten document.
        if w.documents()
            .iter()
            .any(|d| matches!(d.spec, Spec::RbacConfig(_)))
        {
            tracing::debug!(
                target: super::LOG_TARGET,
                "the RbacConfig does not include this workload: its ServiceRole/ServiceRoleBinding documents are not enforced"
            );
        } else {
            crate::config_warning!(
                target: super::LOG_TARGET,
                "ServiceRole/ServiceRoleBinding documents apply to this workload but no RbacConfig switches RBAC on for it: they are not enforced (as in Istio)"
            );
        }
    }
    // A mesh-wide PERMISSIVE makes every binding a dry run and RBAC
    // "transparent to users" (Istio): nothing is denied by default either.
    Ok(config.is_some() && !permissive_all)
}

/// The checks of a `ServiceRole` that need no workload, run for every
/// document when the file loads.
pub(crate) fn check_role(role: &ServiceRoleSpec) -> Result<(), FieldError> {
    // The errors of a rule do not depend on the workload it is compiled for.
    let any = Workload::new("", "");
    for (ri, rule) in role.rules.iter().enumerate() {
        role_rule(&any, rule).map_err(|(f, m)| (format!("spec.rules[{ri}].{f}"), m))?;
    }
    Ok(())
}

/// The checks of a `ServiceRoleBinding` in `namespace` that need no
/// workload, run for every document when the file loads.
pub(crate) fn check_binding(b: &ServiceRoleBindingSpec, namespace: &str) -> Result<(), FieldError> {
    if b.role_ref.kind != "ServiceRole" {
        return Err(("spec.roleRef.kind".into(), "must be ServiceRole".into()));
    }
    if b.subjects.is_empty() {
        return Err((
            "spec.subjects".into(),
            "a binding needs at least one subject".into(),
        ));
    }
    for (si, s) in b.subjects.iter().enumerate() {
        subject(s, namespace, &[]).map_err(|(f, m)| (format!("spec.subjects[{si}].{f}"), m))?;
    }
    Ok(())
}

type RoleRule = Option<(Vec<Vec<Clause>>, Vec<Clause>)>;

/// One `ServiceRole` rule: `None` when its `services` do not name this workload.
fn role_rule(wl: &Workload, rule: &AccessRuleSpec) -> Result<RoleRule, FieldError> {
    if rule.services.is_empty() {
        return Err((
            "services".into(),
            "a rule needs services (\"*\" for every service)".into(),
        ));
    }
    let host = wl.host();
    let mut applies = false;
    for (i, s) in rule.services.iter().enumerate() {
        let m = StrMatch::parse(s).map_err(|e| (format!("services[{i}]"), e))?;
        applies |= m.matches_ignore_case(&host);
    }
    let strs = |v: &[String], f: &str| -> Result<Box<[StrMatch]>, FieldError> {
        v.iter()
            .enumerate()
            .map(|(i, s)| StrMatch::parse(s).map_err(|e| (format!("{f}[{i}]"), e)))
            .collect()
    };
    // An empty list is refused, as in an AuthorizationPolicy: Istio reads
    // it as unset (any), and as written it would match nothing here.
    for (empty, field) in [
        (rule.methods.as_ref().is_some_and(Vec::is_empty), "methods"),
        (rule.not_methods.as_ref().is_some_and(Vec::is_empty), "notMethods"),
        (rule.paths.as_ref().is_some_and(Vec::is_empty), "paths"),
        (rule.not_paths.as_ref().is_some_and(Vec::is_empty), "notPaths"),
        (rule.ports.as_ref().is_some_and(Vec::is_empty), "ports"),
        (rule.not_ports.as_ref().is_some_and(Vec::is_empty), "notPorts"),
    ] {
        if empty {
            return Err((
                field.into(),
                "must not be empty (leave it out to match any)".into(),
            ));
        }
    }
    let mut op = Vec::new();
    for (values, negate, field) in [
        (&rule.methods, false, "methods"),
        (&rule.not_methods, true, "notMethods"),
    ] {
        if let Some(v) = values {
            op.push(Clause {
                test: Test::Str(StrAttr::Method, strs(v, field)?),
                negate,
            });
        }
    }
    for (values, negate, field) in [(&rule.paths, false, "paths"), (&rule.not_paths, true, "notPaths")] {
        if let Some(v) = values {
            let ms = super::compile::path_patterns(v, field)?;
            op.push(Clause {
                test: Test::Path(ms),
                negate,
            });
        }
    }
    for (values, negate) in [(&rule.ports, false), (&rule.not_ports, true)] {
        if let Some(v) = values {
            op.push(Clause {
                test: Test::Port(v.as_slice().into()),
                negate,
            });
        }
    }
    let mut when = Vec::new();
    for (ci, c) in rule.constraints.iter().enumerate() {
        let field = format!("constraints[{ci}]");
        if c.values.is_empty() {
            return Err((format!("{field}.values"), "must not be empty".into()));
        }
        // Decided here, as Istio's pilot decided them (`stringMatch`): a
        // `*` matches any value, an empty label too.
        let any = |value: &str| -> Result<bool, FieldError> {
            let mut hit = false;
            for (i, v) in c.values.iter().enumerate() {
                let m = StrMatch::parse(v).map_err(|e| (format!("{field}.values[{i}]"), e))?;
                hit |= matches!(m, StrMatch::Any) || m.matches(value);
            }
            Ok(hit)
        };
        let test = if let Some(label) = c
            .key
            .strip_prefix("destination.labels[")
            .and_then(|k| k.strip_suffix(']'))
        {
            Test::Const(match wl.labels.get(label) {
                Some(v) => any(v)?,
                None => false,
            })
        } else if c.key == "destination.name" {
            Test::Const(any(&wl.service)?)
        } else if c.key == "destination.namespace" {
            Test::Const(any(&wl.namespace)?)
        } else {
            match parse_key(&c.key) {
                Ok(k @ (Key::Port | Key::Ip(_) | Key::Str(StrAttr::Header(_) | StrAttr::Host))) => {
                    key_test(&k, &c.values, &format!("{field}.values"), &wl.namespace, &[])?
                }
                _ => {
                    return Err((
                        format!("{field}.key"),
                        format!(
                            "`{}` is not a constraint Palisade can enforce (destination.labels[…], destination.name, destination.namespace, destination.ip, destination.port, request.headers[…])",
                            c.key
                        ),
                    ));
                }
            }
        };
        when.push(Clause { test, negate: false });
    }
    Ok(applies.then(|| (if op.is_empty() { Vec::new() } else { vec![op] }, when)))
}

/// A subject's clauses (all must hold; empty: anyone); `namespace` is the
/// binding's, `domains` the mesh's trust domains
/// ([`principals_in_mesh`](super::compile::principals_in_mesh)).
fn subject(s: &SubjectSpec, namespace: &str, domains: &[String]) -> Result<Vec<Clause>, FieldError> {
    let mut out = Vec::new();
    if let Some(user) = &s.user
        && user != "*"
    {
        let users = super::compile::principals_in_mesh(std::slice::from_ref(user), domains)
            .iter()
            .map(|u| StrMatch::parse(u).map_err(|e| ("user".to_owned(), e)))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Clause {
            test: Test::Str(StrAttr::PeerPrincipal, users.into()),
            negate: false,
        });
    }
    if let Some(group) = &s.group {
        out.push(Clause {
            test: Test::Str(
                StrAttr::Claim(vec!["groups".to_owned()].into()),
                vec![StrMatch::parse(group).map_err(|e| ("group".to_owned(), e))?].into(),
            ),
            negate: false,
        });
    }
    for (key, value) in &s.properties {
        let field = format!("properties.{key}");
        let k = parse_key(key).map_err(|m| (field.clone(), m))?;
        out.push(Clause {
            test: key_test(&k, std::slice::from_ref(value), &field, namespace, domains)?,
            negate: false,
        });
    }
    if s.user.is_none() && s.group.is_none() && s.properties.is_empty() {
        return Err((String::new(), "a subject needs user, group or properties".into()));
    }
    Ok(out)
}
