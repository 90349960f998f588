//! The command line, parsed by hand (as the example services do): each
//! value checked here, so a mistake is one line naming the argument.

use std::path::PathBuf;

use palisade_mtls::SpiffeId;
use serde_json::{Map, Value};

use crate::decide::Request;

/// `palisade --help`.
pub(crate) const USAGE: &str = "\
usage: palisade check FILE
       palisade explain FILE [--workload NS/NAME] --request \"METHOD PATH\"
                        [--header K:V]... [--claims JSON] [--peer PRINCIPAL]
       palisade test FILE CASES.yaml

check    compiles every document of the policy file FILE for every workload it
         names, as the services do when they start (offline: no issuer, key
         server or session store is contacted); one line per problem, exit 1.
explain  decides one request as the workload's guard would and prints
         {\"decision\": \"allow\"|\"deny\", \"status\": N, \"policy\": …, \"rule\": …} as JSON.
         --claims: the claims of a verified token ({\"sub\": \"alice\", \"realm_access\":
         {\"roles\": [\"admin\"]}}; `iss` may be left out when the workload trusts one
         issuer); --peer: the mTLS peer, as cluster.local/ns/NS/sa/SA.
         --workload may be left out when FILE names one workload.
test     runs the decision cases of CASES.yaml; prints each failed case, the
         rules no case reached and `N passed, N failed`; exit 1 on a failure.
         CASES.yaml: `cases:` a list of {name, workload: NS/NAME, request:
         \"METHOD PATH\", headers: {K: V}, claims: {…}, peer: PRINCIPAL,
         expect: allow|deny, status: N, dry_run: allow|deny} (request and expect
         required; status and dry_run, when given, must match too).

Exit status: 0 success, 1 problems or failed cases, 2 a usage error or a
file that cannot be used.
";

/// A workload named on the command line or in a case: `NS/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WorkloadName {
    pub(crate) namespace: String,
    pub(crate) service: String,
}

/// `palisade explain`'s arguments.
#[derive(Debug)]
pub(crate) struct Explain {
    pub(crate) file: PathBuf,
    pub(crate) workload: Option<WorkloadName>,
    pub(crate) request: Request,
}

/// A parsed command line.
#[derive(Debug)]
pub(crate) enum Command {
    Help,
    Version,
    Check { file: PathBuf },
    Explain(Explain),
    Test { file: PathBuf, cases: PathBuf },
}

/// Parses the arguments (without the program name).
pub(crate) fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut it = args.into_iter();
    let Some(sub) = it.next() else {
        return Err("a subcommand is needed: check, explain or test (see --help)".into());
    };
    let rest: Vec<String> = it.collect();
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    match sub.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "-V" | "--version" => Ok(Command::Version),
        "check" => match no_flags(&sub, &rest)? {
            [file] => Ok(Command::Check { file: file.into() }),
            _ => Err("check takes FILE (see --help)".into()),
        },
        "test" => match no_flags(&sub, &rest)? {
            [file, cases] => Ok(Command::Test {
                file: file.into(),
                cases: cases.into(),
            }),
            _ => Err("test takes FILE CASES.yaml (see --help)".into()),
        },
        "explain" => explain(rest).map(Command::Explain),
        other => Err(format!(
            "unknown subcommand `{other}`: check, explain or test (see --help)"
        )),
    }
}

/// The arguments, when none of them is a flag.
fn no_flags<'a>(sub: &str, args: &'a [String]) -> Result<&'a [String], String> {
    match args.iter().find(|a| a.starts_with("--")) {
        Some(flag) => Err(format!("{sub}: unknown argument `{flag}` (see --help)")),
        None => Ok(args),
    }
}

fn explain(args: Vec<String>) -> Result<Explain, String> {
    let mut file = None;
    let mut workload = None;
    let mut request = None;
    let mut headers = Vec::new();
    let mut claims = None;
    let mut peer = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--workload" => workload = Some(workload_name(&value()?).map_err(|e| format!("--workload {e}"))?),
            "--request" => request = Some(request_line(&value()?).map_err(|e| format!("--request {e}"))?),
            "--header" => headers.push(header(&value()?).map_err(|e| format!("--header {e}"))?),
            "--claims" => claims = Some(claims_json(&value()?).map_err(|e| format!("--claims {e}"))?),
            "--peer" => peer = Some(peer_principal(&value()?).map_err(|e| format!("--peer {e}"))?),
            flag if flag.starts_with("--") => {
                return Err(format!("explain: unknown argument `{flag}` (see --help)"));
            }
            path if file.is_none() => file = Some(PathBuf::from(path)),
            extra => return Err(format!("explain: unexpected argument `{extra}` (see --help)")),
        }
    }
    let file = file.ok_or("explain needs the policy FILE (see --help)")?;
    let (method, target) = request.ok_or("explain needs --request \"METHOD PATH\" (see --help)")?;
    Ok(Explain {
        file,
        workload,
        request: Request {
            method,
            target,
            headers,
            claims,
            peer,
        },
    })
}

/// `NS/NAME`.
pub(crate) fn workload_name(text: &str) -> Result<WorkloadName, String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(WorkloadName {
            namespace: ns.to_owned(),
            service: name.to_owned(),
        }),
        _ => Err(format!("`{text}`: write NAMESPACE/NAME, as default/details")),
    }
}

/// `METHOD PATH`: an HTTP method and a target starting with `/`.
pub(crate) fn request_line(text: &str) -> Result<(String, String), String> {
    let mut parts = text.split_ascii_whitespace();
    let usage = || format!("`{text}`: write \"METHOD PATH\", as \"GET /details/1\"");
    let (Some(method), Some(target), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(usage());
    };
    if !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') || !target.starts_with('/') {
        return Err(usage());
    }
    Ok((method.to_owned(), target.to_owned()))
}

/// `NAME:VALUE`.
pub(crate) fn header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if is_header_name(name.trim()) => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!(
            "`{text}`: write NAME:VALUE, as \"x-forwarded-for: 203.0.113.9\""
        )),
    }
}

/// An HTTP header name (RFC 9110 token).
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A JSON object of claims.
fn claims_json(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(claims)) => Ok(claims),
        Ok(_) => Err("must be a JSON object, as '{\"sub\": \"alice\"}'".into()),
        Err(e) => Err(format!("is not JSON: {e}")),
    }
}

/// An mTLS peer: Istio's principal (`cluster.local/ns/NS/sa/SA`) or the
/// SPIFFE ID itself.
pub(crate) fn peer_principal(text: &str) -> Result<SpiffeId, String> {
    let id = if text.starts_with("spiffe://") {
        text.to_owned()
    } else {
        format!("spiffe://{text}")
    };
    let usage = |why: String| format!("`{text}`: {why} (write TRUST_DOMAIN/ns/NS/sa/SA)");
    let id = SpiffeId::parse(&id).map_err(|e| usage(e.to_string()))?;
    if id.path().is_empty() {
        return Err(usage("a trust domain, not a workload".into()));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Result<Command, String> {
        parse(line.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn explain_takes_its_flags_in_any_order() {
        let Ok(Command::Explain(e)) = args(&[
            "explain",
            "--request",
            "GET /details/1?x=1",
            "mesh.yaml",
            "--header",
            "X-Forwarded-For: 203.0.113.9",
            "--peer",
            "cluster.local/ns/default/sa/productpage",
            "--claims",
            r#"{"sub": "alice"}"#,
            "--workload",
            "default/details",
        ]) else {
            panic!()
        };
        assert_eq!(e.file, PathBuf::from("mesh.yaml"));
        assert_eq!(
            e.workload,
            Some(WorkloadName {
                namespace: "default".into(),
                service: "details".into()
            })
        );
        assert_eq!(
            (e.request.method.as_str(), e.request.target.as_str()),
            ("GET", "/details/1?x=1")
        );
        assert_eq!(
            e.request.headers,
            [("X-Forwarded-For".to_owned(), "203.0.113.9".to_owned())]
        );
        assert_eq!(e.request.peer.unwrap().namespace(), Some("default"));
        assert_eq!(e.request.claims.unwrap()["sub"], "alice");
    }

    #[test]
    fn mistakes_name_the_argument() {
        let cases: [(&[&str], &str); 9] = [
            (&[], "a subcommand is needed"),
            (&["lint", "f"], "unknown subcommand `lint`"),
            (&["check"], "check takes FILE"),
            (&["check", "a", "b"], "check takes FILE"),
            (&["test", "a"], "test takes FILE CASES.yaml"),
            (&["explain", "f", "--request", "GET"], "--request `GET`"),
            (
                &["explain", "f", "--request", "GET /", "--workload", "details"],
                "--workload `details`",
            ),
            (
                &["explain", "f", "--request", "GET /", "--claims", "[1]"],
                "--claims must be a JSON object",
            ),
            (
                &["explain", "f", "--request", "GET /", "--peer", "Cluster.local/x"],
                "--peer `Cluster.local/x`",
            ),
        ];
        for (line, want) in cases {
            let err = args(line).unwrap_err();
            assert!(err.contains(want), "{line:?}: {err}");
        }
        assert!(args(&["explain", "f"]).unwrap_err().contains("needs --request"));
        assert!(
            args(&["explain", "--request", "GET /"])
                .unwrap_err()
                .contains("needs the policy FILE")
        );
        assert!(
            args(&["explain", "f", "--header"])
                .unwrap_err()
                .contains("--header needs a value")
        );
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(args(&["--help"]), Ok(Command::Help)));
        assert!(matches!(args(&["check", "--help"]), Ok(Command::Help)));
        assert!(matches!(args(&["--version"]), Ok(Command::Version)));
    }
}
