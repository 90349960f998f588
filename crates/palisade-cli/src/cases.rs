//! `palisade test`: decision cases run through the workloads' guards, and
//! the rules no case reached.
//!
//! ```yaml
//! cases:
//! - name: alice reads
//!   workload: default/details          # optional when the file names one workload
//!   request: GET /details/1
//!   headers: {x-forwarded-for: 203.0.113.9}
//!   claims: {sub: alice, realm_access: {roles: [reader]}}   # a verified token's
//!   peer: cluster.local/ns/default/sa/productpage           # the mTLS peer
//!   expect: allow                      # allow | deny
//!   status: 200                        # optional: the exact status
//!   dry_run: allow                     # optional: what dry-run policies would decide
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use palisade_core::policy::Workload;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::Report;
use crate::args;
use crate::decide::{self, Bench, Outcome, Request};
use crate::workloads::{self, label};

/// The case file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Value>,
}

/// One case as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    workload: Option<String>,
    request: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    claims: Option<Map<String, Value>>,
    #[serde(default)]
    peer: Option<String>,
    expect: Expect,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    dry_run: Option<Expect>,
}

/// What a case expects.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// A case ready to run.
#[derive(Debug)]
struct Case {
    name: String,
    workload: Workload,
    request: Request,
    expect: Expect,
    status: Option<u16>,
    /// What dry-run policies would decide.
    dry_run: Option<Expect>,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        }
    }
}

impl Case {
    fn passes(&self, o: &Outcome) -> bool {
        let shadow = o.access.as_ref().and_then(|a| a.dry_run()).map(|d| {
            if d.would_allow() {
                Expect::Allow
            } else {
                Expect::Deny
            }
        });
        o.allowed == (self.expect == Expect::Allow)
            && self.status.is_none_or(|s| s == o.status)
            && self.dry_run.is_none_or(|d| Some(d) == shadow)
    }

    fn expected(&self) -> String {
        let mut out = self.expect.as_str().to_owned();
        if let Some(s) = self.status {
            out = format!("{out} {s}");
        }
        if let Some(d) = self.dry_run {
            out = format!("{out} (dry run {})", d.as_str());
        }
        out
    }
}

/// `palisade test FILE CASES`.
pub(crate) fn run(file: &Path, cases: &Path) -> Report {
    match try_run(file, cases) {
        Ok(report) | Err(report) => report,
    }
}

/// A bad case file: one line, status 1.
fn bad(line: String) -> Report {
    Report {
        err: vec![format!("error: {line}")],
        status: 1,
        ..Report::default()
    }
}

fn try_run(file: &Path, cases_file: &Path) -> Result<Report, Report> {
    let set = decide::load(file)?;
    let named = workloads::named(&set);
    let mut notes = Vec::new();
    let cases = read(cases_file, file, &named, &mut notes).map_err(bad)?;
    // Every workload of the file, so that their rules count too, and those
    // the cases name.
    let mut benches: Vec<Bench> = Vec::new();
    for workload in named.iter().chain(cases.iter().map(|c| &c.workload)) {
        if !benches.iter().any(|b| b.workload == *workload) {
            benches.push(Bench::compile(&set, workload.clone()).map_err(|e| Report::usage(e.to_string()))?);
        }
    }
    let rt = decide::runtime()?;
    let mut out = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for (i, case) in cases.iter().enumerate() {
        let bench = benches
            .iter()
            .find(|b| b.workload == case.workload)
            .ok_or_else(|| Report::usage(format!("no guard for {}", label(&case.workload))))?;
        let outcome = bench.decide(&case.request, &rt, &mut notes).map_err(|e| {
            bad(format!(
                "{}: case {} ({}): field `claims`: {e}",
                cases_file.display(),
                i + 1,
                case.name
            ))
        })?;
        if case.passes(&outcome) {
            passed += 1;
        } else {
            failed += 1;
            out.push(format!(
                "FAILED {} ({}): expected {}, got {} {} ({})",
                case.name,
                label(&case.workload),
                case.expected(),
                outcome.decision(),
                outcome.status,
                outcome.reason
            ));
        }
    }
    out.extend(
        not_reached(&benches)
            .into_iter()
            .map(|r| format!("not reached: {r}")),
    );
    out.push(format!("{passed} passed, {failed} failed"));
    let mut err: Vec<String> = Vec::new();
    for note in notes.into_iter().map(|n| format!("note: {n}")) {
        if !err.contains(&note) {
            err.push(note);
        }
    }
    Ok(Report {
        out,
        err,
        status: u8::from(failed > 0),
    })
}

/// Every rule of every workload's policies that no request matched:
/// `NS/POLICY rule N`, by policy then rule.
fn not_reached(benches: &[Bench]) -> Vec<String> {
    let mut reached: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for bench in benches {
        for m in bench.access.metrics() {
            let rules = reached.entry(m.policy).or_default();
            if rules.len() < m.rules_matched.len() {
                rules.resize(m.rules_matched.len(), false);
            }
            for (r, n) in rules.iter_mut().zip(&m.rules_matched) {
                *r |= *n > 0;
            }
        }
    }
    reached
        .into_iter()
        .flat_map(|(policy, rules)| {
            rules
                .into_iter()
                .enumerate()
                .filter(|(_, r)| !r)
                .map(move |(i, _)| format!("{policy} rule {i}"))
        })
        .collect()
}

/// Reads and checks the case file; a problem is one line naming the file
/// and the case.
fn read(
    path: &Path,
    policy_file: &Path,
    named: &[Workload],
    notes: &mut Vec<String>,
) -> Result<Vec<Case>, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    let options = serde_saphyr::options! { with_snippet: false };
    let file: CaseFile = serde_saphyr::from_str_with_options(&text, options).map_err(|e| {
        let message = e.render_with_options(serde_saphyr::render_options! {
            snippets: serde_saphyr::SnippetMode::Off,
        });
        format!("{name}: {message}")
    })?;
    if file.cases.is_empty() {
        return Err(format!("{name}: `cases` is empty"));
    }
    let mut cases = Vec::with_capacity(file.cases.len());
    for (i, value) in file.cases.into_iter().enumerate() {
        let n = i + 1;
        let title = value
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("case {n}"), |s| format!("case {n} ({s})"));
        let at = |field: &str, message: String| format!("{name}: {title}: field `{field}`: {message}");
        let spec: CaseSpec =
            serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string() {
                // The case itself: a missing or unknown field.
                top if top == "." => format!("{name}: {title}: {}", e.inner()),
                field => at(&field, e.inner().to_string()),
            })?;
        let (method, target) = args::request_line(&spec.request).map_err(|e| at("request", e))?;
        let mut headers = Vec::new();
        for (k, v) in spec.headers {
            if !args::is_header_name(&k) {
                return Err(at(&format!("headers.{k}"), "not a header name".into()));
            }
            headers.push((k, v));
        }
        let peer = spec
            .peer
            .as_deref()
            .map(args::peer_principal)
            .transpose()
            .map_err(|e| at("peer", e))?;
        let workload = match spec.workload.as_deref() {
            Some(w) => workloads::resolve(
                named,
                &args::workload_name(w).map_err(|e| at("workload", e))?,
                notes,
            ),
            None => match named {
                [only] => only.clone(),
                _ => {
                    return Err(format!(
                        "{name}: {title}: no `workload`, and {} names {} workloads ({}): say which",
                        policy_file.display(),
                        named.len(),
                        named.iter().map(label).collect::<Vec<_>>().join(", ")
                    ));
                }
            },
        };
        cases.push(Case {
            name: spec.name.unwrap_or_else(|| format!("case {n}")),
            workload,
            request: Request {
                method,
                target,
                headers,
                claims: spec.claims,
                peer,
            },
            expect: spec.expect,
            status: spec.status,
            dry_run: spec.dry_run,
        });
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files(std::path::PathBuf);

    impl Files {
        fn new(tag: &str, policy: &str, cases: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("palisade-cases-{}-{tag}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("p.yaml"), policy).unwrap();
            std::fs::write(dir.join("c.yaml"), cases).unwrap();
            Self(dir)
        }

        fn run(&self) -> Report {
            run(&self.0.join("p.yaml"), &self.0.join("c.yaml"))
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p}
spec:
  rules:
  - to: [{operation: {methods: [GET]}}]
  - to: [{operation: {methods: [POST]}}]
    when:
    - key: request.headers[x-ok]
      values: [\"yes\"]
";

    #[test]
    fn failures_and_unreached_rules_are_listed() {
        let files = Files::new(
            "fail",
            POLICY,
            "cases:
- {name: reads, request: GET /a, expect: allow, status: 200}
- {name: wrong, request: PUT /a, expect: allow}
",
        );
        let report = files.run();
        assert_eq!(report.status, 1);
        assert_eq!(
            report.out,
            [
                "FAILED wrong (default/*): expected allow, got deny 403 (denied: no ALLOW rule matched)",
                "not reached: default/p rule 1",
                "1 passed, 1 failed",
            ]
        );
    }

    #[test]
    fn a_dry_run_expectation_is_checked() {
        let dry = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: soon
  annotations: {istio.io/dry-run: \"true\"}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [POST]}}]}]
";
        let files = Files::new(
            "dry",
            dry,
            "cases:
- {name: shadow, request: POST /a, expect: allow, dry_run: deny}
- {name: wrong, request: POST /a, expect: allow, dry_run: allow}
",
        );
        let report = files.run();
        assert_eq!(report.status, 1);
        assert_eq!(
            report.out,
            [
                "FAILED wrong (default/*): expected allow (dry run allow), got allow 200 (allowed: no ALLOW policy applies; dry-run would deny by default/soon rule 0)",
                "1 passed, 1 failed",
            ]
        );
    }

    #[test]
    fn a_bad_case_is_named() {
        let cases = [
            (
                "cases:\n- {name: x, request: GET /, expect: alow}\n",
                "case 1 (x): field `expect`: unknown variant `alow`",
            ),
            (
                "cases:\n- {request: GET /, expect: allow, headerz: {}}\n",
                "case 1: field `headerz`: unknown field `headerz`",
            ),
            (
                "cases:\n- {request: GET, expect: allow}\n",
                "case 1: field `request`: `GET`",
            ),
            (
                "cases:\n- {request: GET /, expect: deny, peer: nobody}\n",
                "case 1: field `peer`",
            ),
            ("cases: []\n", "`cases` is empty"),
            ("casez: []\n", "unknown field `casez`"),
        ];
        for (i, (text, want)) in cases.into_iter().enumerate() {
            let files = Files::new(&format!("bad{i}"), POLICY, text);
            let report = files.run();
            assert_eq!((report.status, report.out.len()), (1, 0), "{text}: {report:?}");
            assert!(report.err[0].contains(want), "{text}: {:?}", report.err);
            assert!(report.err[0].contains("c.yaml"), "{:?}", report.err);
        }
    }

    #[test]
    fn a_case_without_workload_needs_a_file_of_one_workload() {
        let two = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a}
spec: {selector: {matchLabels: {app: details}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b}
spec: {selector: {matchLabels: {app: reviews}}}
";
        let files = Files::new(
            "two",
            two,
            "cases:\n- {name: who, request: GET /, expect: deny}\n",
        );
        let report = files.run();
        assert_eq!(report.status, 1);
        assert!(
            report.err[0].contains("case 1 (who): no `workload`, and")
                && report.err[0].contains("names 2 workloads (default/details, default/reviews)"),
            "{:?}",
            report.err
        );
    }
}
