//! `rbac.istio.io/v1alpha1`, Istio's older RBAC: `ServiceRole`,
//! `ServiceRoleBinding`, `RbacConfig` and `ClusterRbacConfig`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::FieldError;

/// `ServiceRole.spec`: what may be done.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceRoleSpec {
    /// The permissions; any may match.
    #[serde(default)]
    pub rules: Vec<AccessRuleSpec>,
}

/// `ServiceRole.spec.rules[]`: every field present must match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
#[expect(missing_docs, reason = "fields are Istio's, documented there one to one")]
pub struct AccessRuleSpec {
    /// Host names of the services (`details.default.svc.cluster.local`, `*`, `details.*`).
    #[serde(default)]
    pub services: Vec<String>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
    pub ports: Option<Vec<u16>>,
    pub not_ports: Option<Vec<u16>>,
    /// Extra conditions, each `key` with `values` (any may match).
    #[serde(default)]
    pub constraints: Vec<ConstraintSpec>,
}

/// A `constraints[]` entry of a `ServiceRole` rule.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ConstraintSpec {
    /// The attribute (`destination.labels[version]`, `request.headers[X-Team]`).
    pub key: String,
    /// Accepted values (exact, `prefix*`, `*suffix`, `*`).
    #[serde(default)]
    pub values: Vec<String>,
}

/// `ServiceRoleBinding.spec`: who holds a role.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceRoleBindingSpec {
    /// The subjects; any may match.
    #[serde(default)]
    pub subjects: Vec<SubjectSpec>,
    /// The `ServiceRole` (same namespace) granted.
    pub role_ref: RoleRefSpec,
    /// Enforced (the default) or evaluated and logged only.
    #[serde(default)]
    pub mode: EnforcementMode,
}

/// `ServiceRoleBinding.spec.subjects[]`: every field present must match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SubjectSpec {
    /// The peer principal (`cluster.local/ns/default/sa/productpage`), or `*`.
    #[serde(default)]
    pub user: Option<String>,
    /// A value of the token's `groups` claim.
    #[serde(default)]
    pub group: Option<String>,
    /// Attribute conditions (`source.namespace`, `request.auth.claims[email]`, …).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// `ServiceRoleBinding.spec.roleRef`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RoleRefSpec {
    /// Always `ServiceRole`.
    pub kind: String,
    /// The role's name.
    pub name: String,
}

/// `ServiceRoleBinding.spec.mode` and `RbacConfig.spec.enforcementMode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum EnforcementMode {
    /// Decisions are enforced (the default).
    #[default]
    Enforced,
    /// Decisions are evaluated and logged, not enforced (a dry run).
    Permissive,
}

/// `RbacConfig` / `ClusterRbacConfig.spec`: where the older RBAC is switched on.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RbacConfigSpec {
    /// Where RBAC is on (default: nowhere).
    #[serde(default)]
    pub mode: RbacMode,
    /// Where RBAC is on, for [`RbacMode::OnWithInclusion`].
    #[serde(default)]
    pub inclusion: Option<RbacTargetSpec>,
    /// Where RBAC is off, for [`RbacMode::OnWithExclusion`].
    #[serde(default)]
    pub exclusion: Option<RbacTargetSpec>,
    /// The mode of every binding: [`EnforcementMode::Permissive`] makes them all dry runs.
    #[serde(default)]
    pub enforcement_mode: EnforcementMode,
}

impl RbacConfigSpec {
    /// `ON_WITH_INCLUSION` must include something: as written without, the
    /// older RBAC would be on nowhere, every binding unenforced.
    pub(super) fn check(&self) -> Result<(), FieldError> {
        // A blank entry names nothing: an inclusion of only blanks would
        // switch RBAC on nowhere, an exclusion's would exclude nothing.
        for (list, target) in [("inclusion", &self.inclusion), ("exclusion", &self.exclusion)] {
            let Some(t) = target else { continue };
            for (field, names) in [("services", &t.services), ("namespaces", &t.namespaces)] {
                if let Some(i) = names.iter().position(|n| n.trim().is_empty()) {
                    return Err((format!("spec.{list}.{field}[{i}]"), "must not be empty".into()));
                }
            }
        }
        let names_none = |t: &Option<RbacTargetSpec>| {
            t.as_ref()
                .is_none_or(|t| t.services.is_empty() && t.namespaces.is_empty())
        };
        if self.mode == RbacMode::OnWithInclusion && names_none(&self.inclusion) {
            return Err((
                "spec.inclusion".into(),
                "ON_WITH_INCLUSION needs `inclusion` with at least one service or namespace: \
                 as written, RBAC is on nowhere"
                    .into(),
            ));
        }
        Ok(())
    }

    /// What the mode ignores, and a dry run, said aloud when the file loads.
    pub(super) fn warnings(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        if self.inclusion.is_some() && self.mode != RbacMode::OnWithInclusion {
            out.push((
                "spec.inclusion".into(),
                "ignored: only the mode ON_WITH_INCLUSION reads it".into(),
            ));
        }
        if self.exclusion.is_some() && self.mode != RbacMode::OnWithExclusion {
            out.push((
                "spec.exclusion".into(),
                "ignored: only the mode ON_WITH_EXCLUSION reads it".into(),
            ));
        }
        // Istio matches fully qualified names only; a short one here names
        // the service of every namespace, which an exclusion turns RBAC
        // off for.
        for (field, target) in [("inclusion", &self.inclusion), ("exclusion", &self.exclusion)] {
            for (i, service) in target.iter().flat_map(|t| t.services.iter()).enumerate() {
                if !service.contains('.') && service != "*" {
                    out.push((
                        format!("spec.{field}.services[{i}]"),
                        format!(
                            "`{service}` is the service `{service}` of every namespace here, and no service for Istio, which matches fully qualified names: write `{service}.NAMESPACE.svc.cluster.local`"
                        ),
                    ));
                }
            }
        }
        if self.enforcement_mode == EnforcementMode::Permissive && self.mode != RbacMode::Off {
            out.push((
                "spec.enforcementMode".into(),
                "a dry run: every ServiceRoleBinding's decisions are logged, not enforced".into(),
            ));
        }
        out
    }
}

/// `RbacConfig.spec.mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum RbacMode {
    /// RBAC is off everywhere (the default).
    #[default]
    Off,
    /// RBAC is on everywhere.
    On,
    /// RBAC is on for the services and namespaces of `inclusion` only.
    OnWithInclusion,
    /// RBAC is on except for the services and namespaces of `exclusion`.
    OnWithExclusion,
}

/// `RbacConfig.spec.inclusion` / `exclusion`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RbacTargetSpec {
    /// Service host names (`details.default.svc.cluster.local`).
    #[serde(default)]
    pub services: Vec<String>,
    /// Namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
}
