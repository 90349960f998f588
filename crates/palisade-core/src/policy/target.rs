//! `targetRef` and `targetRefs`: Istio's way of attaching an
//! `AuthorizationPolicy` or a `RequestAuthentication` to a resource instead
//! of selecting workloads by label (ambient mode's waypoints require it for
//! L7 policies). What a target means in process: see [`TargetRefSpec`].

use std::fmt;

use serde::{Deserialize, Deserializer};

use super::{FieldError, SelectorSpec, Workload};

/// Istio's `PolicyTargetReference`: the resource an `AuthorizationPolicy`
/// or a `RequestAuthentication` is attached to (`spec.targetRefs[]`, or the
/// older single `spec.targetRef`), instead of a `selector`.
///
/// What a target means for a workload that enforces policy in process:
///
/// - **`Service`** (group `""` or `core`) named `NAME`: the workload that
///   serves that Service, which is the workload whose service name is
///   `NAME` (the examples' `--service NAME`, [`Workload::service`]) in the
///   document's namespace. Istio enforces such a policy at the Service's
///   waypoint, for every request to the Service; the in-process workload
///   receives exactly those requests. Labels do not matter, and neither
///   does the root-namespace rule: a Service target in `istio-system` is the
///   Service of that name in `istio-system`, not every workload of the mesh.
/// - **`Gateway`**, **`GatewayClass`** (group `gateway.networking.k8s.io`)
///   and **`ServiceEntry`** (group `networking.istio.io`): a Gateway API
///   gateway or waypoint, every gateway of a class, or a service outside
///   the mesh. None of them is an in-process workload, so the reference
///   selects no workload. The proxy it names enforces the document itself,
///   and a workload behind that proxy loses nothing when Palisade ignores
///   it, exactly as a document whose `selector` names other labels is
///   ignored. The file still loads (one file can describe a whole mesh),
///   and [`PolicySet::warnings`] says, for each such reference, that it
///   applies to no workload here. It is not an error because refusing it
///   would refuse every mesh file with a gateway policy in it, and not
///   applied because no in-process request passes through that gateway.
///
/// Anything else is a start-up error naming the field: another kind, a kind
/// in the wrong group (`Service` of `gateway.networking.k8s.io`), a
/// `namespace` (Istio refuses cross-namespace references), an empty `name`,
/// or `selector`, `targetRef` and `targetRefs` together (Istio allows only
/// one of them). An empty `targetRefs` is no target, as in Istio.
///
/// ```
/// use palisade_core::policy::{PolicySet, Workload};
/// let set = PolicySet::from_yaml_str(r#"
/// apiVersion: security.istio.io/v1
/// kind: AuthorizationPolicy
/// metadata: {name: reviews-l7, namespace: default}
/// spec:
///   targetRefs: [{kind: Service, group: "", name: reviews}]
///   rules: [{from: [{source: {serviceAccounts: [default/productpage]}}]}]
/// ---
/// apiVersion: security.istio.io/v1
/// kind: AuthorizationPolicy
/// metadata: {name: waypoint, namespace: default}
/// spec:
///   targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
///   action: DENY
///   rules: [{to: [{operation: {methods: [DELETE]}}]}]
/// "#, "mesh.yaml")?;
/// let reviews = set.for_workload(&Workload::new("reviews", "default"));
/// assert_eq!(reviews.authorization_policies().count(), 1);
/// assert_eq!(set.for_workload(&Workload::new("details", "default")).documents().len(), 0);
/// assert_eq!(set.warnings()[0].field(), Some("spec.targetRefs[0]"));
/// # Ok::<(), palisade_core::policy::PolicyError>(())
/// ```
///
/// [`PolicySet::warnings`]: super::PolicySet::warnings
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct TargetRefSpec {
    /// The API group; absent is the core group.
    #[serde(default)]
    pub group: TargetGroup,
    /// The kind of the resource.
    pub kind: TargetKind,
    /// The name of the resource.
    pub name: String,
    /// Must be absent or empty: the resource is in the document's namespace
    /// (Istio supports no cross-namespace reference).
    #[serde(default)]
    pub namespace: Option<String>,
}

impl TargetRefSpec {
    /// A reference to the core `Service` `name`.
    #[must_use]
    pub fn service(name: &str) -> Self {
        Self {
            group: TargetGroup::Core,
            kind: TargetKind::Service,
            name: name.to_owned(),
            namespace: None,
        }
    }

    /// Whether this reference names the workload, for a document in
    /// `namespace`: a `Service` of the workload's service name, in the
    /// workload's namespace.
    #[must_use]
    pub fn selects(&self, namespace: &str, workload: &Workload) -> bool {
        self.kind == TargetKind::Service && self.name == workload.service && namespace == workload.namespace
    }

    /// The checks of one reference; `field` is its path.
    fn check(&self, field: &str) -> Result<(), FieldError> {
        let expected = self.kind.group();
        if self.group != expected {
            return Err((
                format!("{field}.group"),
                format!(
                    "a {} is in the group {expected}, not {} (as in Istio)",
                    self.kind, self.group
                ),
            ));
        }
        if self.name.is_empty() {
            return Err((format!("{field}.name"), "must not be empty".into()));
        }
        if self.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
            return Err((
                format!("{field}.namespace"),
                "cross-namespace references are not supported (as in Istio): the target is in the document's namespace, leave `namespace` out".into(),
            ));
        }
        Ok(())
    }
}

/// The kinds a `targetRef` may name (Istio's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[non_exhaustive]
pub enum TargetKind {
    /// A Kubernetes `Service` (group `""` or `core`): the in-process
    /// workload of that service name.
    Service,
    /// An Istio `ServiceEntry` (group `networking.istio.io`): never an
    /// in-process workload.
    ServiceEntry,
    /// A Gateway API `Gateway` (group `gateway.networking.k8s.io`), such as
    /// a waypoint: never an in-process workload.
    Gateway,
    /// A Gateway API `GatewayClass` (group `gateway.networking.k8s.io`,
    /// from the root namespace): never an in-process workload.
    GatewayClass,
}

impl TargetKind {
    /// `Service`, `ServiceEntry`, `Gateway` or `GatewayClass`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Service => "Service",
            TargetKind::ServiceEntry => "ServiceEntry",
            TargetKind::Gateway => "Gateway",
            TargetKind::GatewayClass => "GatewayClass",
        }
    }

    /// The group this kind belongs to.
    #[must_use]
    pub fn group(self) -> TargetGroup {
        match self {
            TargetKind::Service => TargetGroup::Core,
            TargetKind::ServiceEntry => TargetGroup::NetworkingIstio,
            TargetKind::Gateway | TargetKind::GatewayClass => TargetGroup::GatewayApi,
        }
    }

    /// Whether a resource of this kind can be an in-process workload.
    #[must_use]
    pub fn can_be_a_workload(self) -> bool {
        self == TargetKind::Service
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The API groups of the kinds a `targetRef` may name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TargetGroup {
    /// The core group, written `""` (or absent) or `core`.
    #[default]
    Core,
    /// `gateway.networking.k8s.io`.
    GatewayApi,
    /// `networking.istio.io`.
    NetworkingIstio,
}

impl TargetGroup {
    /// The canonical spelling: `""` for the core group.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TargetGroup::Core => "",
            TargetGroup::GatewayApi => "gateway.networking.k8s.io",
            TargetGroup::NetworkingIstio => "networking.istio.io",
        }
    }
}

impl fmt::Display for TargetGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetGroup::Core => f.write_str("\"\" (core)"),
            other => f.write_str(other.as_str()),
        }
    }
}

impl<'de> Deserialize<'de> for TargetGroup {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let group = String::deserialize(deserializer)?;
        match group.as_str() {
            "" | "core" => Ok(TargetGroup::Core),
            "gateway.networking.k8s.io" => Ok(TargetGroup::GatewayApi),
            "networking.istio.io" => Ok(TargetGroup::NetworkingIstio),
            other => Err(serde::de::Error::custom(format!(
                "unknown group `{other}`, expected \"\" or core (Service), gateway.networking.k8s.io (Gateway, GatewayClass) or networking.istio.io (ServiceEntry)"
            ))),
        }
    }
}

/// How a document chooses its workloads: by `selector`, or by `targetRef`
/// / `targetRefs`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope<'a> {
    /// `spec.selector` (absent: every workload of the namespace).
    Selector(Option<&'a SelectorSpec>),
    /// `spec.targetRef` or `spec.targetRefs`, with the field they came from.
    Targets(&'static str, &'a [TargetRefSpec]),
}

impl<'a> Scope<'a> {
    /// The scope of a document with these fields (an empty `targetRefs` is
    /// absent, as in Istio).
    pub(crate) fn of(
        selector: Option<&'a SelectorSpec>,
        target_ref: Option<&'a TargetRefSpec>,
        target_refs: &'a [TargetRefSpec],
    ) -> Self {
        match (target_ref, target_refs) {
            (Some(one), _) => Scope::Targets("spec.targetRef", std::slice::from_ref(one)),
            (None, []) => Scope::Selector(selector),
            (None, many) => Scope::Targets("spec.targetRefs", many),
        }
    }

    /// The target references (none for a selector).
    pub(crate) fn refs(self) -> &'a [TargetRefSpec] {
        match self {
            Scope::Targets(_, refs) => refs,
            Scope::Selector(_) => &[],
        }
    }

    /// The field path of each reference, with the reference.
    pub(crate) fn targets(self) -> impl Iterator<Item = (String, &'a TargetRefSpec)> {
        let field = match self {
            Scope::Targets(field, _) => field,
            Scope::Selector(_) => "",
        };
        self.refs().iter().enumerate().map(move |(i, r)| {
            if field == "spec.targetRef" {
                (field.to_owned(), r)
            } else {
                (format!("{field}[{i}]"), r)
            }
        })
    }
}

/// The checks of `selector`, `targetRef` and `targetRefs` together.
pub(crate) fn check(
    selector: Option<&SelectorSpec>,
    target_ref: Option<&TargetRefSpec>,
    target_refs: &[TargetRefSpec],
) -> Result<(), FieldError> {
    if target_ref.is_some() && !target_refs.is_empty() {
        return Err((
            "spec.targetRefs".into(),
            "give either targetRef or targetRefs, not both (as in Istio)".into(),
        ));
    }
    let scope = Scope::of(selector, target_ref, target_refs);
    if let (Some(_), Scope::Targets(field, _)) = (selector, scope) {
        return Err((
            field.into(),
            format!(
                "give either selector or {}, not both (as in Istio)",
                field.trim_start_matches("spec.")
            ),
        ));
    }
    for (field, r) in scope.targets() {
        r.check(&field)?;
    }
    Ok(())
}

/// The warning for a reference that selects no in-process workload.
pub(crate) fn not_a_workload(r: &TargetRefSpec) -> Option<String> {
    let what = match r.kind {
        TargetKind::Service => return None,
        TargetKind::Gateway => "a Gateway (an ingress gateway or a waypoint)",
        TargetKind::GatewayClass => "a GatewayClass (every gateway of the class)",
        TargetKind::ServiceEntry => "a ServiceEntry (a service outside the mesh)",
    };
    Some(format!(
        "`{}` is {what}, never an in-process workload: this reference applies to no workload here (the proxy it names enforces the document)",
        r.name
    ))
}
