//! `palisade test`: decision cases run through the workloads' guards, and
//! the rules no case reached.
//!
//! ```yaml
//! with:                                # optional: documents added to the policy file's
//! - apiVersion: security.istio.io/v1
//!   kind: RequestAuthentication
//!   metadata: {name: realm}
//!   spec: {jwtRules: [{issuer: https://kc.example/realms/shop, audiences: [details]}]}
//! cases:
//! - name: alice reads
//!   workload: default/details          # optional when the file names one workload
//!   labels: {version: v2}              # optional: labels besides `app: details`
//!   request: GET /details/1
//!   headers: {x-forwarded-for: 203.0.113.9}
//!   claims: {sub: alice, aud: details, realm_access: {roles: [reader]}}  # a token's, signed and current
//!   peer: cluster.local/ns/default/sa/productpage                        # the mTLS peer
//!   port: 9080                         # the port the request arrives on
//!   source_ip: 198.51.100.7            # the caller's address
//!   expect: allow                      # allow | deny | reply (sign-in's own routes)
//!   status: 200                        # optional: the exact status
//!   dry_run: allow                     # optional: what dry-run policies would decide
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use palisade_core::policy::Workload;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::Report;
use crate::args::{self, Test};
use crate::decide::{self, Bench, Outcome, Request, Verdict, unusable};
use crate::load::Policy;
use crate::workloads::{self, label};

/// The case file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// Policy documents added to the policy file's.
    #[serde(default)]
    with: Vec<Value>,
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
    #[serde(default, deserialize_with = "scalars_as_text")]
    labels: BTreeMap<String, String>,
    request: String,
    #[serde(default, deserialize_with = "scalars_as_text")]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    claims: Option<Map<String, Value>>,
    #[serde(default)]
    peer: Option<String>,
    #[serde(default)]
    port: Option<u32>,
    #[serde(default)]
    source_ip: Option<String>,
    expect: Expect,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    dry_run: Option<Shadow>,
}

/// A map of scalars, each as its text (YAML's unquoted `1` or `true` as
/// `"1"`, `"true"`), as a policy file's label and header values are read.
fn scalars_as_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error as _;
    BTreeMap::<String, Value>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            Value::Number(n) => Ok((k, n.to_string())),
            Value::Bool(b) => Ok((k, b.to_string())),
            // The value itself is not shown: a pasted token would be.
            other => Err(D::Error::custom(format!(
                "`{k}`: a string, number or boolean, not {}",
                kind(&other)
            ))),
        })
        .collect()
}

/// What a JSON value is, for a message that must not show it.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// A deserializer's message without the text values it quotes (`invalid
/// type: string "Bearer eyJ…", expected a map`): a case's headers and
/// claims are where a pasted token goes.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(" \"") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find('"') {
            Some(end) => rest = &rest[start + 2 + end + 1..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// What a case expects dry-run policies to decide.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Shadow {
    Allow,
    Deny,
}

impl Shadow {
    fn as_str(self) -> &'static str {
        match self {
            Shadow::Allow => "allow",
            Shadow::Deny => "deny",
        }
    }
}

/// What a case expects: the contract's `allow` (the handler, or one of
/// sign-in's own routes, which no policy refuses) or `deny`; `reply` is
/// the stricter form of `allow` for sign-in's routes only.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
    Reply,
}

/// A case ready to run.
#[derive(Debug)]
struct Case {
    name: String,
    /// Its number in the case file.
    number: usize,
    /// Whether the file's case runs for several workloads, this one of them.
    shared: bool,
    workload: Workload,
    request: Request,
    expect: Expect,
    status: Option<u16>,
    /// What dry-run policies would decide.
    dry_run: Option<Shadow>,
    /// What reading the case found worth saying.
    notes: Vec<String>,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
            Expect::Reply => "reply",
        }
    }

    /// Whether the service's verdict is what this expects: `allow` as the
    /// contract's decision says it (`explain` prints sign-in's routes as
    /// `allow` too).
    fn matches(self, v: Verdict) -> bool {
        match self {
            Expect::Allow => matches!(v, Verdict::Allow | Verdict::Reply),
            Expect::Deny => v == Verdict::Deny,
            Expect::Reply => v == Verdict::Reply,
        }
    }
}

impl Case {
    fn passes(&self, o: &Outcome) -> bool {
        let shadow = o.access.as_ref().and_then(|a| a.dry_run()).map(|d| {
            if d.would_allow() {
                Shadow::Allow
            } else {
                Shadow::Deny
            }
        });
        self.expect.matches(o.verdict)
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

/// `palisade test FILE CASES [--with FILE]…`.
pub(crate) fn run(args: &Test) -> Report {
    match try_run(args) {
        Ok(report) | Err(report) => report,
    }
}

/// A bad case file: one line, status 1.
fn bad(line: String) -> Report {
    Report::failure(line)
}

fn try_run(args: &Test) -> Result<Report, Report> {
    let cases_file = &args.cases;
    let mut policy = Policy::load(&args.file, &args.with).map_err(|e| unusable(&e, None))?;
    let file = read(cases_file).map_err(bad)?;
    policy
        .add_values(&file.with, &format!("{} `with`", cases_file.display()))
        .map_err(|e| unusable(&e, None))?;
    let named = workloads::named(&policy.set);
    let cases = cases(file.cases, cases_file, &named).map_err(bad)?;
    // Every workload of the file, so that their rules count too, and those
    // the cases name.
    let mut benches: Vec<Bench> = Vec::new();
    // Workloads left out, each with its note.
    let mut elsewhere: Vec<(&Workload, String)> = Vec::new();
    for workload in named.iter().chain(cases.iter().map(|c| &c.workload)) {
        // A workload left out is one no case names: the file names it once.
        if benches.iter().any(|b| b.workload == *workload) {
            continue;
        }
        match Bench::compile(&policy.set, workload.clone()) {
            Ok(bench) => benches.push(bench),
            // A file only that workload's host has (a secret, key or CA
            // file missing or unreadable here) does not stop the cases of
            // the others; any other error does (a file that is there but
            // wrong, a directory), as does a case of that workload.
            Err(e)
                if e.io_error().is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                    )
                }) && !cases.iter().any(|c| c.workload == *workload) =>
            {
                let why = policy.locate(e);
                elsewhere.push((
                    workload,
                    format!(
                        "note: {} is not decided here, and its rules are not counted: {why} (no case names it)",
                        label(workload)
                    ),
                ));
            }
            Err(e) => return Err(unusable(&policy.locate(e), Some(workload))),
        }
    }
    let rt = decide::runtime()?;
    let mut out = Vec::new();
    // Each note once, with the cases it was found for.
    let mut notes: Vec<(String, Vec<String>)> = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for case in &cases {
        let bench = benches
            .iter()
            .find(|b| b.workload == case.workload)
            .ok_or_else(|| Report::failure(format!("no guard for {}", label(&case.workload))))?;
        let mut found = case.notes.clone();
        let named = if case.shared {
            format!("{} ({})", case.name, label(&case.workload))
        } else {
            case.name.clone()
        };
        // Claims that cannot stand for a token of this workload fail this
        // case (for this workload), not the run: the others are decided.
        let outcome = match bench.decide(&case.request, &rt, &mut found) {
            Ok(outcome) => outcome,
            Err(e) => {
                failed += 1;
                out.push(format!(
                    "FAILED {} ({}): {}: case {}: field `claims`: {e}",
                    case.name,
                    label(&case.workload),
                    cases_file.display(),
                    case.number
                ));
                continue;
            }
        };
        for note in found {
            match notes.iter_mut().find(|(n, _)| *n == note) {
                Some((_, names)) => names.push(named.clone()),
                None => notes.push((note, vec![named.clone()])),
            }
        }
        if case.passes(&outcome) {
            passed += 1;
        } else {
            failed += 1;
            out.push(format!(
                "FAILED {} ({}): expected {}, got {} {} ({})",
                case.name,
                label(&case.workload),
                case.expected(),
                if outcome.verdict == Verdict::Reply {
                    "reply"
                } else {
                    outcome.decision()
                },
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
    let err = elsewhere
        .into_iter()
        .map(|(_, note)| note)
        .chain(notes.into_iter().map(|(note, names)| {
            let which = if names.len() == 1 { "case" } else { "cases" };
            format!("note: {note} ({which}: {})", names.join("; "))
        }))
        .collect();
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

/// Reads the case file; a problem is one line naming the file.
fn read(path: &Path) -> Result<CaseFile, String> {
    let name = path.display();
    let text =
        palisade_core::policy::read_policy_text(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
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
    Ok(file)
}

/// Checks the cases of the case file at `path`; a problem is one line
/// naming the file and the case.
fn cases(values: Vec<Value>, path: &Path, named: &[Workload]) -> Result<Vec<Case>, String> {
    let name = path.display();
    let mut cases = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
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
                field => at(&field, without_quoted_values(&e.inner().to_string())),
            })?;
        let (method, target) = args::request_line(&spec.request).map_err(|e| at("request", e))?;
        let mut headers = Vec::new();
        for (k, v) in spec.headers {
            if !palisade_core::syntax::is_http_token(&k) {
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
        let port = spec
            .port
            .map(|p| args::port(&p.to_string()))
            .transpose()
            .map_err(|e| at("port", e))?;
        let source_ip = spec
            .source_ip
            .as_deref()
            .map(args::ip)
            .transpose()
            .map_err(|e| at("source_ip", e))?;
        for (k, v) in &spec.labels {
            args::label(&format!("{k}={v}")).map_err(|e| at(&format!("labels.{k}"), e))?;
        }
        let mut notes = Vec::new();
        // Without `workload` (the contract needs only `request` and
        // `expect`), the case is every workload's the file names, one case
        // each (the FAILED line names it); a file that names none (an
        // empty one) is decided for any workload of `default`.
        let workloads = match spec.workload.as_deref() {
            Some(w) => vec![workloads::resolve(
                named,
                &args::workload_name(w).map_err(|e| at("workload", e))?,
                &spec.labels,
                &mut notes,
            )],
            None if !spec.labels.is_empty() => {
                return Err(at("labels", "needs `workload`".into()));
            }
            None => match named {
                [] => vec![Workload::new(workloads::ANY, "default")],
                [only] => {
                    workloads::note_labels(only, &mut notes);
                    vec![only.clone()]
                }
                several => several.to_vec(),
            },
        };
        let case_name = spec.name.unwrap_or_else(|| format!("case {n}"));
        for workload in &workloads {
            cases.push(Case {
                name: case_name.clone(),
                number: n,
                shared: workloads.len() > 1,
                workload: workload.clone(),
                request: Request {
                    method: method.clone(),
                    target: target.clone(),
                    headers: headers.clone(),
                    claims: spec.claims.clone(),
                    peer: peer.clone(),
                    port,
                    source_ip,
                },
                expect: spec.expect,
                status: spec.status,
                dry_run: spec.dry_run,
                notes: notes.clone(),
            });
        }
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
            run(&Test {
                file: self.0.join("p.yaml"),
                cases: self.0.join("c.yaml"),
                with: Vec::new(),
            })
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

    /// Unquoted numbers and booleans in `headers` and `labels` are their
    /// text, as in a policy file (`x-ok: yes` would be a string anyway).
    #[test]
    fn unquoted_scalar_header_and_label_values_are_text() {
        let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p}
spec:
  selector: {matchLabels: {version: \"2\"}}
  rules:
  - when:
    - key: request.headers[x-n]
      values: [\"1\"]
";
        let files = Files::new(
            "scalars",
            policy,
            "cases:
- {name: number, workload: default/reviews, labels: {version: 2}, request: GET /a, headers: {x-n: 1}, expect: allow}
- {name: other, workload: default/reviews, labels: {version: 2}, request: GET /a, headers: {x-n: true}, expect: deny}
",
        );
        let report = files.run();
        assert_eq!(
            report.out.last().map(String::as_str),
            Some("2 passed, 0 failed"),
            "{:?} {:?}",
            report.out,
            report.err
        );
        assert_eq!(report.status, 0);
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
            (
                "cases:\n- {request: GET /, expect: deny, port: 70000}\n",
                "case 1: field `port`: `70000`: write a port number",
            ),
            (
                "cases:\n- {request: GET /, expect: deny, source_ip: localhost}\n",
                "case 1: field `source_ip`: `localhost`",
            ),
            (
                "cases:\n- {request: GET /, expect: deny, labels: {version: v2}}\n",
                "case 1: field `labels`: needs `workload`",
            ),
            (
                "cases:\n- {request: GET /, expect: deny, workload: default/d, labels: {app: x}}\n",
                "case 1: field `labels.app`",
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
    fn a_case_without_workload_is_every_workloads_of_the_file() {
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
        let two = two.replace(
            "spec: {selector: {matchLabels: {app: reviews}}}",
            "spec: {selector: {matchLabels: {app: reviews}}, action: ALLOW, rules: [{}]}",
        );
        // details has an ALLOW policy with no rules (denies all); reviews
        // one that allows all.
        let files = Files::new(
            "two",
            &two,
            "cases:\n- {name: who, request: GET /, expect: deny}\n",
        );
        let report = files.run();
        assert_eq!(report.status, 1, "{report:?}");
        let out = report.out.join("\n");
        assert!(out.contains("1 passed, 1 failed"), "{out}");
        assert!(out.contains("FAILED who (default/reviews):"), "{out}");
        assert!(!out.contains("(default/details)"), "passed: not listed: {out}");
        // A file that names no workload decides for any of `default`.
        let empty = Files::new(
            "none",
            "# no policy\n",
            "cases:\n- {name: open, request: GET /, expect: allow}\n",
        );
        let report = empty.run();
        assert_eq!(report.status, 0, "{report:?}");
        assert!(report.out.join("\n").contains("1 passed, 0 failed"), "{report:?}");
    }

    #[test]
    fn a_role_rule_is_reported_by_its_index_in_the_role() {
        // Each workload compiles only the role's rules that name it.
        let rbac = "apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec: {mode: 'ON'}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: reader}
spec:
  rules:
  - {services: [details.default.svc.cluster.local], methods: [GET]}
  - {services: [reviews.default.svc.cluster.local], methods: [GET]}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: readers}
spec:
  subjects: [{user: '*'}]
  roleRef: {kind: ServiceRole, name: reader}
";
        let details = "cases:
- {name: details, workload: default/details, request: GET /list, expect: allow}
";
        let report = Files::new("role-details", rbac, details).run();
        assert_eq!(
            report.out,
            ["not reached: default/readers rule 1", "1 passed, 0 failed"],
            "{report:?}"
        );
        let reviews = "cases:
- {name: reviews, workload: default/reviews, request: GET /list, expect: allow}
";
        let report = Files::new("role-reviews", rbac, reviews).run();
        assert_eq!(
            report.out,
            ["not reached: default/readers rule 0", "1 passed, 0 failed"],
            "{report:?}"
        );
    }

    #[test]
    fn a_workload_whose_files_are_elsewhere_does_not_stop_the_cases_of_others() {
        let policy = |secret: &str| {
            format!(
                "apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {{name: login}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  issuer: https://kc.example/realms/shop
  clientId: productpage
  clientSecretFile: {secret}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: gets}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  rules: [{{to: [{{operation: {{methods: [GET]}}}}]}}]
"
            )
        };
        let details = "cases:
- {name: details, workload: default/details, request: GET /list, expect: allow}
";
        // Only productpage's host has its secret.
        let missing = "/nonexistent/palisade/productpage.secret";
        let report = Files::new("elsewhere", &policy(missing), details).run();
        assert_eq!(report.status, 0, "{report:?}");
        assert_eq!(report.out, ["1 passed, 0 failed"], "{report:?}");
        assert_eq!(report.err.len(), 1, "{report:?}");
        assert!(
            report.err[0].starts_with("note: default/productpage is not decided here")
                && report.err[0].contains("spec.clientSecretFile")
                && report.err[0].contains(missing),
            "{report:?}"
        );
        // A case of that workload needs it.
        let productpage = "cases:
- {name: home, workload: default/productpage, request: GET /, expect: allow}
";
        let report = Files::new("elsewhere-named", &policy(missing), productpage).run();
        assert_eq!(report.status, 1, "{report:?}");
        assert!(report.err[0].contains("spec.clientSecretFile"), "{report:?}");
        // A file that is there but wrong is the policy's problem: empty, not
        // text, a directory.
        let files = Files::new("elsewhere-there", "", details);
        let empty = files.0.join("empty.secret");
        std::fs::write(&empty, "\n").unwrap();
        let binary = files.0.join("binary.secret");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        for (file, says) in [
            (&empty, "is empty"),
            (&binary, "cannot read"),
            (&files.0, "cannot read"),
        ] {
            std::fs::write(files.0.join("p.yaml"), policy(&file.display().to_string())).unwrap();
            let report = files.run();
            assert_eq!(report.status, 1, "{file:?}: {report:?}");
            assert!(report.err[0].contains(says), "{file:?}: {report:?}");
        }
    }

    /// Claims one case cannot stand for (no `iss`, two issuers trusted)
    /// fail that case; the others are decided.
    #[test]
    fn claims_a_case_cannot_give_fail_that_case_alone() {
        let policy = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  selector: {matchLabels: {app: details}}
  jwtRules:
  - {issuer: https://a.example, jwksUri: https://a.example/certs}
  - {issuer: https://b.example, jwksUri: https://b.example/certs}
";
        let cases = "cases:
- {name: no issuer, workload: default/details, request: GET /, claims: {sub: alice, aud: details}, expect: allow}
- {name: anyone, workload: default/details, request: GET /, expect: allow}
";
        let report = Files::new("claims-one-case", policy, cases).run();
        assert_eq!(report.status, 1, "{report:?}");
        assert_eq!(report.out.len(), 2, "{report:?}");
        assert!(
            report.out[0].starts_with("FAILED no issuer (default/details): ")
                && report.out[0].contains("case 1: field `claims`: the claims have no `iss`"),
            "{report:?}"
        );
        assert_eq!(report.out[1], "1 passed, 1 failed");
    }

    const FRAGMENT: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: users}
spec:
  selector: {matchLabels: {app: details}}
  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]
";

    const USERS: &str = "cases:
- {name: a user, request: GET /list, claims: {sub: alice, aud: details}, expect: allow}
- {name: another audience, request: GET /list, claims: {sub: alice, aud: reviews}, expect: deny, status: 401}
- {name: nobody, request: GET /list, expect: deny, status: 401}
";

    #[test]
    fn a_case_file_adds_the_issuer_setup_a_fragment_leaves_out() {
        // Without an issuer the service reads no token: the claims are
        // ignored, and no token could help (403, with no challenge to give).
        let files = Files::new("fragment", FRAGMENT, USERS);
        let report = files.run();
        assert_eq!(report.status, 1, "{report:?}");
        assert_eq!(
            report.out,
            [
                "FAILED a user (default/details): expected allow, got deny 403 (denied: no ALLOW rule matched)",
                "FAILED another audience (default/details): expected deny 401, got deny 403 (denied: no ALLOW rule matched)",
                "FAILED nobody (default/details): expected deny 401, got deny 403 (denied: no ALLOW rule matched)",
                "not reached: default/users rule 0",
                "0 passed, 3 failed"
            ]
        );
        assert_eq!(report.err.len(), 2, "{report:?}");
        assert!(
            report.err[0]
                .starts_with("note: default/details: the claims are ignored: no RequestAuthentication")
                && report.err[0].ends_with("(cases: a user; another audience)"),
            "{report:?}"
        );
        assert!(
            report.err[1].contains("no credential could change the answer")
                && report.err[1].ends_with("(case: nobody)"),
            "{report:?}"
        );
        let with = format!(
            "with:
- apiVersion: security.istio.io/v1
  kind: RequestAuthentication
  metadata: {{name: realm}}
  spec: {{jwtRules: [{{issuer: https://kc.example/realms/shop, audiences: [details]}}]}}
{USERS}"
        );
        let files = Files::new("with", FRAGMENT, &with);
        let report = files.run();
        assert_eq!((report.status, report.err.len()), (0, 0), "{report:?}");
        assert_eq!(report.out, ["3 passed, 0 failed"]);

        let files = Files::new("badwith", FRAGMENT, &with.replace("jwtRules:", "jwtRulez:"));
        let report = files.run();
        assert_eq!(
            (report.status, report.out.len(), report.err.len()),
            (1, 0, 1),
            "{report:?}"
        );
        assert!(
            report.err[0]
                .contains("c.yaml `with`: document 1 (RequestAuthentication default/realm): field `spec"),
            "{report:?}"
        );
    }

    #[test]
    fn ports_addresses_labels_and_sign_in_replies_are_cases_fields() {
        let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v2-on-9080}
spec:
  selector: {matchLabels: {app: details, version: v2}}
  action: DENY
  rules: [{to: [{operation: {notPorts: [\"9080\"]}}]}, {from: [{source: {ipBlocks: [203.0.113.0/24]}}]}]
---
apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {name: login}
spec:
  selector: {matchLabels: {app: details}}
  issuer: https://kc.example/realms/shop
  clientId: details
";
        let files = Files::new(
            "fields",
            policy,
            "cases:
- {name: v1 on any port, workload: default/details, request: GET /, expect: allow}
- {name: v2 on 9080, workload: default/details, labels: {version: v2}, port: 9080, source_ip: 198.51.100.1, request: GET /, expect: allow}
- {name: v2 elsewhere, workload: default/details, labels: {version: v2}, port: 8080, source_ip: 198.51.100.1, request: GET /, expect: deny, status: 403}
- {name: v2 from a blocked range, workload: default/details, labels: {version: v2}, port: 9080, source_ip: 203.0.113.7, request: GET /, expect: deny}
- {name: logout, workload: default/details, request: GET /logout, expect: reply, status: 302}
- {name: not a reply, workload: default/details, request: GET /logout, expect: deny}
",
        );
        let report = files.run();
        assert_eq!(report.status, 1, "{report:?}");
        assert_eq!(
            report.out,
            [
                "FAILED not a reply (default/details): expected deny, got reply 302 (sign-in's logout route (logoutPath), answered whatever the policy says: the session ends, 302 to the issuer's end-session endpoint or to postLogoutRedirectUri (405 but to GET and POST))",
                "5 passed, 1 failed"
            ]
        );
        // default/details is not the v2 variant: said so, for the cases that name it alone.
        assert_eq!(report.err.len(), 1, "{report:?}");
        assert!(
            report.err[0].starts_with(
                "note: deciding for default/details; the file also names default/details[version=v2]"
            ) && report.err[0].ends_with("(cases: v1 on any port; logout; not a reply)"),
            "{report:?}"
        );
    }
}
