//! The workloads a policy file names ([`PolicySet::workloads`]).

use std::collections::{BTreeMap, BTreeSet};

use super::{DEFAULT_ROOT_NAMESPACE, Document, PolicySet, Spec, TargetKind, Workload};

/// The service name of a stand-in workload ([`PolicySet::workloads`]): any
/// workload of its namespace that its documents select.
pub const ANY_SERVICE: &str = "*";

impl PolicySet {
    /// Every workload the file names, each once: by the `app` label of a
    /// selector (`spec.selector`, a `DestinationRule`'s
    /// `workloadSelector`) in the document's namespace, with the
    /// selector's other labels (a selector in the root namespace names its
    /// workload in every other namespace of the file, `default` when there
    /// is none); by host (`NAME.NS.svc.cluster.local`) in `ServiceRole`
    /// rules and `RbacConfig` targets; by a `Service` target. Then, sorted,
    /// a stand-in workload for each document that applies to none of
    /// these (written for a whole namespace, or selecting by labels other
    /// than `app`), named [`ANY_SERVICE`] and selected by it.
    ///
    /// What a whole-file check compiles for (`palisade check`,
    /// `palisade::check_policy`).
    ///
    /// ```
    /// use palisade_core::policy::{PolicySet, Workload};
    /// let set = PolicySet::from_yaml_str(
    ///     "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  selector: {matchLabels: {app: details}}\n",
    ///     "mesh.yaml",
    /// )?;
    /// assert_eq!(set.workloads(), [Workload::new("details", "shop").label("app", "details")]);
    /// # Ok::<(), palisade_core::policy::PolicyError>(())
    /// ```
    #[must_use]
    pub fn workloads(&self) -> Vec<Workload> {
        let docs = self.documents();
        let root = DEFAULT_ROOT_NAMESPACE;
        let mut namespaces: BTreeSet<&str> = docs
            .iter()
            .map(|d| d.metadata.namespace())
            .filter(|ns| *ns != root)
            .collect();
        if namespaces.is_empty() {
            namespaces.insert("default");
        }
        let mut found: BTreeSet<(String, BTreeMap<String, String>)> = BTreeSet::new();
        for doc in docs {
            let ns = doc.metadata.namespace();
            if let Some(labels) = doc.spec.selector().map(|s| &s.match_labels)
                && labels.contains_key("app")
            {
                if ns == root {
                    for other in &namespaces {
                        found.insert(((*other).to_owned(), labels.clone()));
                    }
                } else {
                    found.insert((ns.to_owned(), labels.clone()));
                }
            }
            for host in hosts(doc) {
                if let Some((service, namespace)) = service_of_host(host) {
                    found.insert((namespace.to_owned(), app(service)));
                }
            }
            // A `Service` target names the workload serving that Service.
            for target in doc.spec.target_refs() {
                if target.kind == TargetKind::Service {
                    found.insert((ns.to_owned(), app(&target.name)));
                }
            }
        }
        let mut workloads: Vec<Workload> = found
            .into_iter()
            .map(|(ns, labels)| workload(&ns, &labels))
            .collect();
        let named = workloads.len();
        for doc in docs {
            if !workloads.iter().any(|w| doc.applies_to(w)) {
                let labels = doc
                    .spec
                    .selector()
                    .map(|s| s.match_labels.clone())
                    .unwrap_or_default();
                // A `DestinationRule` exported to other namespaces only
                // applies to a caller of the first it names.
                let ns = match &doc.spec {
                    Spec::DestinationRule(rule)
                        if !rule.exported_to(doc.metadata.namespace(), doc.metadata.namespace()) =>
                    {
                        rule.export_to
                            .iter()
                            .find(|e| !matches!(e.as_str(), "." | "*" | "~"))
                            .map_or(doc.metadata.namespace(), String::as_str)
                    }
                    _ => doc.metadata.namespace(),
                };
                workloads.push(workload(ns, &labels));
            }
        }
        workloads[named..].sort_by(|a, b| (&a.namespace, &a.labels).cmp(&(&b.namespace, &b.labels)));
        workloads
    }
}

fn app(service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), service.to_owned())])
}

/// The workload with these labels in `ns`; its service is the `app` label,
/// or [`ANY_SERVICE`].
fn workload(ns: &str, labels: &BTreeMap<String, String>) -> Workload {
    let service = labels.get("app").map_or(ANY_SERVICE, String::as_str);
    labels
        .iter()
        .fold(Workload::new(service, ns), |w, (k, v)| w.label(k, v))
}

/// The hosts a document names its workloads by.
fn hosts(doc: &Document) -> Vec<&str> {
    match &doc.spec {
        Spec::ServiceRole(role) => role
            .rules
            .iter()
            .flat_map(|r| &r.services)
            .map(String::as_str)
            .collect(),
        Spec::RbacConfig(config) => [&config.inclusion, &config.exclusion]
            .into_iter()
            .flatten()
            .flat_map(|t| &t.services)
            .map(String::as_str)
            .collect(),
        _ => Vec::new(),
    }
}

/// `(NAME, NS)` of `NAME.NS.svc.cluster.local`.
fn service_of_host(host: &str) -> Option<(&str, &str)> {
    let (service, ns) = host.strip_suffix(".svc.cluster.local")?.split_once('.')?;
    let plain = |s: &str| !s.is_empty() && !s.contains(['.', '*']);
    (plain(service) && plain(ns)).then_some((service, ns))
}
