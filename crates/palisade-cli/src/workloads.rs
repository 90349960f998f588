//! The workloads a policy file names ([`PolicySet::workloads`]), so that
//! `check` compiles every document for each workload it applies to, and
//! `test` knows which rules there are to reach; and how a workload asked
//! for on the command line is found among them.

use std::collections::BTreeMap;

use palisade_core::policy::{PolicySet, Workload};

use crate::args::WorkloadName;

/// The service name of a stand-in workload: any workload of its namespace.
pub(crate) use palisade_core::policy::ANY_SERVICE as ANY;

/// Every workload `set` names, then the stand-ins ([`PolicySet::workloads`]).
pub(crate) fn named(set: &PolicySet) -> Vec<Workload> {
    set.workloads()
}

/// The workload `name` stands for: the one labelled `app: NAME` and
/// `labels` (the labels a selector may read besides `app`), whether or
/// not the file names it so. `notes` says when the file names it only with
/// other labels (a `version: v2` variant, whose documents then do not
/// apply), names variants of it too, or does not name it at all (a typo,
/// or a workload only namespace-wide documents apply to).
pub(crate) fn resolve(
    named: &[Workload],
    name: &WorkloadName,
    labels: &BTreeMap<String, String>,
    notes: &mut Vec<String>,
) -> Workload {
    let workload = labels
        .iter()
        .fold(Workload::new(&name.service, &name.namespace), |w, (k, v)| {
            w.label(k, v)
        });
    let variants: Vec<String> = named
        .iter()
        .filter(|w| w.namespace == workload.namespace && w.service == workload.service && **w != workload)
        .map(label)
        .collect();
    let this = label(&workload);
    match (named.contains(&workload), variants.is_empty()) {
        (true, true) => {}
        // Asked for by its labels.
        (true, false) if !labels.is_empty() => {}
        (true, false) => notes.push(format!(
            "deciding for {this}; the file also names {}: give their labels with --label K=V (`labels:` in a case) to decide for one of them",
            variants.join(", ")
        )),
        (false, false) => notes.push(format!(
            "the file names {} but not {this}: deciding for {this}, which the documents selecting those other labels do not apply to; give the labels with --label K=V (`labels:` in a case) to decide for one of them",
            variants.join(", ")
        )),
        (false, true) => notes.push(format!(
            "the file names no workload {this}: only the documents for its whole namespace (or selecting it without `app`) apply"
        )),
    }
    workload
}

/// For the one workload a file names, taken when none is given: `notes`
/// names its labels when it has more than `app`.
pub(crate) fn note_labels(workload: &Workload, notes: &mut Vec<String>) {
    if workload.labels.len() > 1 {
        notes.push(format!(
            "deciding for {}, the one workload the file names, with its labels",
            label(workload)
        ));
    }
}

/// `NS/NAME`, with the labels other than `app` in brackets when there are.
pub(crate) fn label(w: &Workload) -> String {
    w.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(yaml: &str) -> Vec<String> {
        named(&PolicySet::from_yaml_str(yaml, "mesh.yaml").unwrap())
            .iter()
            .map(label)
            .collect()
    }

    #[test]
    fn selectors_and_rbac_hosts_name_workloads() {
        let yaml = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: prod}
spec:
  selector: {matchLabels: {app: details, version: v2}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {app: ratings}}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: r, namespace: prod}
spec:
  rules: [{services: [reviews.prod.svc.cluster.local, \"*.prod.svc.cluster.local\"], methods: [GET]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d, namespace: shop}
spec:
  host: reviews
  workloadSelector: {matchLabels: {app: front}}
  trafficPolicy: {tls: {mode: SIMPLE}}
";
        assert_eq!(
            labels(yaml),
            [
                "prod/details[version=v2]",
                "prod/ratings",
                "prod/reviews",
                "shop/front",
                "shop/ratings"
            ]
        );
    }

    #[test]
    fn documents_that_select_no_named_workload_get_a_stand_in() {
        let yaml = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: everyone, namespace: default}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: canary, namespace: default}
spec:
  selector: {matchLabels: {version: v2}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-wide, namespace: default}
spec: {}
";
        assert_eq!(labels(yaml), ["default/*", "default/*[version=v2]"]);
        let with_app = format!(
            "{yaml}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: d}}\nspec:\n  selector: {{matchLabels: {{app: details}}}}\n"
        );
        // The namespace-wide documents apply to details: no stand-in for them.
        assert_eq!(labels(&with_app), ["default/details", "default/*[version=v2]"]);
    }

    #[test]
    fn a_name_is_the_workload_labelled_app_alone_unless_labels_are_given() {
        let set = PolicySet::from_yaml_str(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  selector: {matchLabels: {app: details, version: v2}}\n",
            "p.yaml",
        )
        .unwrap();
        let all = named(&set);
        let name = |s: &str| crate::args::workload_name(s).unwrap();
        let v2 = BTreeMap::from([("version".to_owned(), "v2".to_owned())]);
        let mut notes = Vec::new();
        // Not the v2 variant, whose selector would then apply: said so.
        let plain = resolve(&all, &name("default/details"), &BTreeMap::new(), &mut notes);
        assert_eq!(plain, Workload::new("details", "default"));
        assert_eq!(
            notes,
            [
                "the file names default/details[version=v2] but not default/details: deciding for default/details, which the documents selecting those other labels do not apply to; give the labels with --label K=V (`labels:` in a case) to decide for one of them"
            ]
        );
        assert!(set.for_workload(&plain).documents().is_empty());
        notes.clear();
        let labelled = resolve(&all, &name("default/details"), &v2, &mut notes);
        assert_eq!(label(&labelled), "default/details[version=v2]");
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(set.for_workload(&labelled).documents().len(), 1);

        assert_eq!(
            label(&resolve(
                &all,
                &name("default/reviews"),
                &BTreeMap::new(),
                &mut notes
            )),
            "default/reviews"
        );
        assert_eq!(
            notes,
            [
                "the file names no workload default/reviews: only the documents for its whole namespace (or selecting it without `app`) apply"
            ]
        );
        notes.clear();
        note_labels(&all[0], &mut notes);
        assert_eq!(
            notes,
            ["deciding for default/details[version=v2], the one workload the file names, with its labels"]
        );
    }
}
