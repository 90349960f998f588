//! `palisade check`: every workload the file names compiled as a service
//! of that workload compiles it when it starts, offline.

use std::path::Path;

use palisade_core::authz::ExternalAuthorizers;
use palisade_core::policy::PolicySet;

use crate::Report;
use crate::workloads::{self, label};

/// Checks `file`: one line per problem on stderr and status 1, or one line
/// saying what was checked.
pub(crate) fn run(file: &Path) -> Report {
    let set = match PolicySet::from_file(file) {
        Ok(set) => set,
        Err(e) => {
            // Every document that does not load, not only the first.
            let mut err: Vec<String> = PolicySet::problems_in_file(file)
                .iter()
                .map(ToString::to_string)
                .collect();
            if err.is_empty() {
                err.push(e.to_string());
            }
            if looks_like_cases(file) {
                err.push(format!(
                    "hint: {} is a case file: `palisade test POLICY.yaml {}` decides its cases with a policy file",
                    file.display(),
                    file.display()
                ));
            }
            return Report {
                err,
                status: 1,
                ..Report::default()
            };
        }
    };
    let named = workloads::named(&set);
    let authorizers = ExternalAuthorizers::stand_ins(&set);
    // Each problem once, with the workloads it was found for; what building
    // the workloads' guards says aloud (a relaxation), each once.
    let mut problems: Vec<(String, Vec<String>)> = Vec::new();
    let ((), said) = said_while(|| {
        for workload in &named {
            for e in palisade::policy_problems(&set, workload, &authorizers) {
                let line = e.to_string();
                match problems.iter_mut().find(|(l, _)| *l == line) {
                    Some((_, ws)) => ws.push(label(workload)),
                    None => problems.push((line, vec![label(workload)])),
                }
            }
        }
    });
    if problems.is_empty() {
        let names: Vec<String> = named.iter().map(label).collect();
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        // What loads but does nothing in process (a Gateway target), and
        // what a workload ignores (each once).
        let mut out: Vec<String> = set.warnings().iter().map(|w| format!("note: {w}")).collect();
        let workloads = named.iter().flat_map(|w| set.for_workload(w).warnings());
        for note in workloads
            .map(|w| format!("note: {w}"))
            .chain(said.iter().map(|w| format!("note: {w}")))
        {
            if !out.contains(&note) {
                out.push(note);
            }
        }
        out.push(format!(
            "{}: ok: {}, {}: {}",
            set.source(),
            plural(set.documents().len(), "document"),
            plural(names.len(), "workload"),
            names.join(", ")
        ));
        return Report::ok(out);
    }
    Report {
        err: problems
            .into_iter()
            .map(|(line, ws)| format!("{line} (for {})", ws.join(", ")))
            .collect(),
        status: 1,
        ..Report::default()
    }
}

/// Whether `file` is a case file of `palisade test` (a top-level
/// What Palisade says at `WARN` or above on this thread while `f` runs:
/// the relaxations a service logs when it builds its guard (keys fetched
/// over plain http, an explain header, a token relayed to every host), which
/// `check` shows as notes as it shows the file's own. Each line once, its
/// fields after the message.
pub(crate) fn said_while<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    let said = Said::default();
    let subscriber = tracing_subscriber::registry().with(said.clone());
    let out = tracing::subscriber::with_default(subscriber, f);
    let lines = std::mem::take(&mut *said.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    (out, lines)
}

/// The lines [`said_while`] gathers.
#[derive(Clone, Default)]
struct Said(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Said {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        /// The message, then `name=value` of the other fields.
        #[derive(Default)]
        struct Line(String, Vec<String>);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                } else {
                    self.1.push(format!("{}={value:?}", field.name()));
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    value.clone_into(&mut self.0);
                } else {
                    self.1.push(format!("{}={value}", field.name()));
                }
            }
        }
        // ERROR is the least verbose level, WARN the next.
        if *event.metadata().level() > tracing::Level::WARN {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        let text = if line.1.is_empty() {
            line.0
        } else {
            format!("{} ({})", line.0, line.1.join(", "))
        };
        let mut said = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !said.contains(&text) {
            said.push(text);
        }
    }
}

/// `cases:` key) rather than a policy file: given to `check` by mistake.
fn looks_like_cases(file: &Path) -> bool {
    palisade_core::policy::read_policy_text(file)
        .is_ok_and(|text| text.lines().any(|l| l.starts_with("cases:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Report {
        let path = std::env::temp_dir().join(format!(
            "palisade-check-{}-{}.yaml",
            std::process::id(),
            yaml.len()
        ));
        std::fs::write(&path, yaml).unwrap();
        let report = run(&path);
        let _ = std::fs::remove_file(&path);
        report
    }

    #[test]
    fn every_problem_of_every_workload_is_a_line() {
        let report = check(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a}
spec:
  selector: {matchLabels: {app: details}}
  rules: [{}]
---
apiVersion: palisade.dev/v1alpha1
kind: UpstreamCredentials
metadata: {name: u}
spec:
  selector: {matchLabels: {app: reviews}}
  hosts: [ratings.default.svc.cluster.local]
  token: {from: clientCredentials, issuer: https://kc.example/realms/x, clientId: reviews, clientSecretFile: /nonexistent/secret}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p1}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p2}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: b}
spec:
  subjects: [{user: \"*\"}]
  roleRef: {kind: ServiceRole, name: missing}
",
        );
        assert_eq!(report.status, 1, "{report:?}");
        let err = report.err.join("\n");
        assert!(
            err.contains("document 2 (UpstreamCredentials default/u): field `spec.token.clientSecretFile`"),
            "{err}"
        );
        assert!(err.contains("(for default/reviews)"), "{err}");
        // Two namespace-wide PeerAuthentication documents: for every workload.
        assert!(
            err.contains("document 4 (PeerAuthentication default/p2)"),
            "{err}"
        );
        assert!(err.contains("(for default/details, default/reviews)"), "{err}");
        assert!(
            err.contains("document 5 (ServiceRoleBinding default/b): field `spec.roleRef.name`"),
            "{err}"
        );
        assert_eq!(report.err.len(), 3, "{err}");
    }

    #[test]
    fn a_good_file_says_what_was_checked() {
        let report = check(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  jwtRules: [{issuer: https://kc.example/realms/x, jwksUri: http://127.0.0.1:9/certs, audiences: [details]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a}
spec:
  selector: {matchLabels: {app: details}}
  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]
",
        );
        assert_eq!((report.status, report.err.len()), (0, 0), "{report:?}");
        assert!(
            report.out[0].ends_with("ok: 2 documents, 1 workload: default/details"),
            "{:?}",
            report.out
        );
    }

    /// What a service says aloud when it builds its guard (here: keys
    /// fetched over plain http from another machine) is a note too.
    #[test]
    fn a_relaxation_said_when_a_guard_is_built_is_a_note() {
        if !palisade_testkit::in_a_process_of_its_own(
            "check::tests::a_relaxation_said_when_a_guard_is_built_is_a_note",
        ) {
            return;
        }
        let report = check(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules: [{issuer: https://kc.example/realms/notes, jwksUri: http://kc.example/realms/notes/certs}]
",
        );
        assert_eq!((report.status, report.err.len()), (0, 0), "{report:?}");
        assert!(
            report
                .out
                .iter()
                .any(|l| l.starts_with("note: JWKS URI uses plain http")
                    && l.contains("jwks_uri=http://kc.example/realms/notes/certs")),
            "{:?}",
            report.out
        );
    }

    #[test]
    fn a_relaxation_is_a_note_of_a_good_file() {
        let report = check(
            "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  mtls: {mode: PERMISSIVE}
",
        );
        assert_eq!(
            (report.status, report.err.len(), report.out.len()),
            (0, 0, 2),
            "{report:?}"
        );
        assert!(report.out[0].starts_with("note: "), "{:?}", report.out);
        assert!(
            report.out[0].contains("(PeerAuthentication default/legacy): field `spec.mtls.mode`: PERMISSIVE"),
            "{:?}",
            report.out
        );
    }

    #[test]
    fn a_selector_in_the_root_namespace_is_a_note_as_the_service_logs_it() {
        let report = check(
            "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec:
  selector: {matchLabels: {app: details}}
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  rules: [{}]
",
        );
        assert_eq!(report.status, 0, "{report:?}");
        let notes: Vec<&String> = report.out.iter().filter(|l| l.starts_with("note: ")).collect();
        assert_eq!(notes.len(), 1, "once, whatever the workloads: {report:?}");
        assert!(
            notes[0].contains("(PeerAuthentication istio-system/mesh): field `spec.selector`: a workload selector in the root namespace is ignored"),
            "{report:?}"
        );
    }
}
