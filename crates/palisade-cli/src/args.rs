//! The command line, parsed by hand (as the example services do): each
//! value checked here, so a mistake is one line naming the argument.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use palisade_mtls::SpiffeId;
use serde_json::{Map, Value};

use crate::decide::Request;

/// `palisade --help`.
pub(crate) const USAGE: &str = "\
usage: palisade check FILE
       palisade explain FILE [--workload NS/NAME [--label K=V]...] --request \"METHOD PATH\"
                        [--header K:V]... [--claims JSON] [--peer PRINCIPAL]
                        [--port N] [--source-ip IP] [--with FILE]...
       palisade test FILE CASES.yaml [--with FILE]...

check    compiles every document of the policy file FILE for every workload it
         names, as the services do when they start (offline: no issuer, key
         server or session store is contacted); one line per problem, exit 1.
explain  decides one request as the workload's guard would and prints
         {\"decision\": \"allow\"|\"deny\", \"status\": N, \"policy\": …,
         \"rule\": …, …, \"notes\": […]} as JSON. Sign-in's own routes
         (callback, login, logout, back-channel logout), which the service
         answers whatever the policy says, are \"allow\" with
         \"answered_by\": \"sign-in\" and sign-in's status.
         --workload: the workload with the label app: NAME, and --label's.
         It may be left out when FILE names one workload.
         --claims: the claims of a token, taken as signed and current: the
         workload's JWT authenticator checks them as it checks a bearer
         token's (issuer, audience, subject, another kind of token's typ)
         and maps them, with the headers its rule sets from them
         (outputClaimToHeaders), but the signature, the token's header and
         the time claims (exp, nbf, iat, and so the maximum lifetime) are
         not read. `iss` may be left out when the
         workload trusts one issuer. Without a RequestAuthentication or
         KeycloakAdapter for the workload the service reads no token: the
         claims are ignored (a note says so).
         --peer: the mTLS peer, as cluster.local/ns/NS/sa/SA.
         --port: the port the request arrives on (ports, notPorts,
         destination.port; destination.ip is then 0.0.0.0); --source-ip:
         the caller's address (ipBlocks, source.ip; remoteIpBlocks without
         a trusted X-Forwarded-For). Without them both are unknown, as to a
         guard whose server cannot tell: a policy whose rules read the one
         not given refuses the request (403), as such a guard does, and a
         note says so.
         --with: more policy documents, read after FILE's (the issuer setup
         of a fragment: a RequestAuthentication).
test     runs the decision cases of CASES.yaml; prints each failed case, the
         rules no case reached and `N passed, N failed`; exit 1 on a failure.
         Notes go to stderr, one line each. CASES.yaml:
           with: [DOCUMENT, …]    # optional: policy documents added to FILE's
           cases:                 # a list of
           - name: …
             workload: NS/NAME    # labels: {K: V} for a labelled variant
             request: \"METHOD PATH\"
             headers: {K: V}
             claims: {…}
             peer: PRINCIPAL
             port: N
             source_ip: IP
             expect: allow|deny   # or reply: sign-in's own routes only
             status: N            # optional: the exact status
             dry_run: allow|deny  # optional: what dry-run policies would decide
         (request and expect required; the rest as for explain).

-h or --help where a flag may stand prints this; `--` ends the flags (a
file named like one: `palisade check -- --odd.yaml`).

Exit status: 0 success; 1 problems (check), failed cases or a bad case file
(test), or a policy file that does not load (a line naming the file, the
document and the field; check gives one for each document that does not
load); 2 a usage error (bad arguments).
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
    /// More policy files.
    pub(crate) with: Vec<PathBuf>,
    pub(crate) workload: Option<WorkloadName>,
    /// The workload's labels besides `app`.
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) request: Request,
}

/// `palisade test`'s arguments.
#[derive(Debug)]
pub(crate) struct Test {
    pub(crate) file: PathBuf,
    pub(crate) cases: PathBuf,
    /// More policy files.
    pub(crate) with: Vec<PathBuf>,
}

/// A parsed command line.
#[derive(Debug)]
pub(crate) enum Command {
    Help,
    Version,
    Check { file: PathBuf },
    Explain(Box<Explain>),
    Test(Test),
}

/// Parses the arguments (without the program name).
pub(crate) fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut it = args.into_iter();
    let Some(sub) = it.next() else {
        return Err("a subcommand is needed: check, explain or test (see --help)".into());
    };
    let rest = Words::new(it.collect());
    match sub.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "-V" | "--version" => Ok(Command::Version),
        "check" => check(rest),
        "test" => test(rest),
        "explain" => explain(rest),
        other => Err(format!(
            "unknown subcommand `{other}`: check, explain or test (see --help)"
        )),
    }
}

/// A subcommand's arguments, read in turn: `-h`, `--help` and `--NAME` are
/// flags where a flag may stand (not as a flag's value, not after `--`,
/// which ends the flags: `-- --odd-file-name.yaml`).
struct Words {
    it: std::vec::IntoIter<String>,
    flags_ended: bool,
}

/// One argument of [`Words`].
enum Word {
    /// `-h` or `--help`.
    Help,
    /// `--NAME`, whose value (if it takes one) is [`Words::value`].
    Flag(String),
    /// Anything else: a file.
    Positional(String),
}

impl Words {
    fn new(args: Vec<String>) -> Self {
        Self {
            it: args.into_iter(),
            flags_ended: false,
        }
    }

    fn next(&mut self) -> Option<Word> {
        let arg = self.it.next()?;
        if self.flags_ended {
            return Some(Word::Positional(arg));
        }
        Some(match arg.as_str() {
            "--" => {
                self.flags_ended = true;
                return self.next();
            }
            "-h" | "--help" => Word::Help,
            flag if flag.starts_with("--") => Word::Flag(arg),
            _ => Word::Positional(arg),
        })
    }

    /// The value of `flag`: the next argument, whatever it looks like.
    fn value(&mut self, flag: &str) -> Result<String, String> {
        self.it.next().ok_or_else(|| format!("{flag} needs a value"))
    }
}

fn check(mut args: Words) -> Result<Command, String> {
    let mut files = Vec::new();
    while let Some(word) = args.next() {
        match word {
            Word::Help => return Ok(Command::Help),
            Word::Flag(flag) => return Err(format!("check: unknown argument `{flag}` (see --help)")),
            Word::Positional(path) => files.push(path),
        }
    }
    match <[String; 1]>::try_from(files) {
        Ok([file]) => Ok(Command::Check { file: file.into() }),
        Err(_) => Err("check takes FILE (see --help)".into()),
    }
}

fn test(mut args: Words) -> Result<Command, String> {
    let mut files = Vec::new();
    let mut with = Vec::new();
    while let Some(word) = args.next() {
        match word {
            Word::Help => return Ok(Command::Help),
            Word::Flag(flag) if flag == "--with" => with.push(PathBuf::from(args.value(&flag)?)),
            Word::Flag(flag) => return Err(format!("test: unknown argument `{flag}` (see --help)")),
            Word::Positional(path) => files.push(PathBuf::from(path)),
        }
    }
    let [file, cases] =
        <[PathBuf; 2]>::try_from(files).map_err(|_| "test takes FILE CASES.yaml (see --help)".to_owned())?;
    Ok(Command::Test(Test { file, cases, with }))
}

/// `value` into `slot`, which a flag given twice would fill twice: the
/// second is refused rather than silently kept.
fn once<T>(slot: &mut Option<T>, flag: &str, value: T) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("{flag} is given twice (see --help)"));
    }
    *slot = Some(value);
    Ok(())
}

fn explain(mut args: Words) -> Result<Command, String> {
    let mut file = None;
    let mut with = Vec::new();
    let mut workload = None;
    let mut labels = BTreeMap::new();
    let mut request = None;
    let mut req = Request::default();
    while let Some(word) = args.next() {
        let arg = match word {
            Word::Help => return Ok(Command::Help),
            Word::Positional(path) if file.is_none() => {
                file = Some(PathBuf::from(path));
                continue;
            }
            Word::Positional(extra) => {
                return Err(format!("explain: unexpected argument `{extra}` (see --help)"));
            }
            Word::Flag(flag) => flag,
        };
        let mut value = || args.value(&arg);
        let named = |e: String| format!("{arg} {e}");
        match arg.as_str() {
            "--workload" => once(&mut workload, &arg, workload_name(&value()?).map_err(named)?)?,
            "--label" => {
                let (k, v) = label(&value()?).map_err(named)?;
                if labels.contains_key(&k) {
                    return Err(format!("{arg} {k} is given twice (see --help)"));
                }
                labels.insert(k, v);
            }
            "--request" => once(&mut request, &arg, request_line(&value()?).map_err(named)?)?,
            "--header" => req.headers.push(header(&value()?).map_err(named)?),
            "--claims" => once(&mut req.claims, &arg, claims_json(&value()?).map_err(named)?)?,
            "--peer" => once(&mut req.peer, &arg, peer_principal(&value()?).map_err(named)?)?,
            "--port" => once(&mut req.port, &arg, port(&value()?).map_err(named)?)?,
            "--source-ip" => once(&mut req.source_ip, &arg, ip(&value()?).map_err(named)?)?,
            "--with" => with.push(PathBuf::from(value()?)),
            flag => return Err(format!("explain: unknown argument `{flag}` (see --help)")),
        }
    }
    let file = file.ok_or("explain needs the policy FILE (see --help)")?;
    (req.method, req.target) = request.ok_or("explain needs --request \"METHOD PATH\" (see --help)")?;
    if workload.is_none() && !labels.is_empty() {
        return Err("explain: --label needs --workload NS/NAME (see --help)".into());
    }
    Ok(Command::Explain(Box::new(Explain {
        file,
        with,
        workload,
        labels,
        request: req,
    })))
}

/// `KEY=VALUE`, a workload label other than `app` (the workload's NAME).
pub(crate) fn label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(("app", _)) => Err(format!(
            "`{text}`: `app` is the workload's NAME (--workload NS/NAME, a case's `workload`)"
        )),
        Some((k, v)) if is_label_key(k) => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{text}`: write KEY=VALUE, as version=v2")),
    }
}

/// A Kubernetes label key: letters, digits, `-`, `_`, `.` and one `/`.
fn is_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.matches('/').count() <= 1
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// A TCP port, 1 to 65535.
pub(crate) fn port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{text}`: write a port number, 1 to 65535")),
    }
}

/// An IPv4 or IPv6 address.
pub(crate) fn ip(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("`{text}`: write an IP address, as 203.0.113.9 or 2001:db8::1"))
}

/// `NS/NAME`.
pub(crate) fn workload_name(text: &str) -> Result<WorkloadName, String> {
    // `check` prints a labelled variant as `NS/NAME[k=v]`: its labels are
    // given apart.
    if let Some((name, labels)) = text.split_once('[') {
        let labels = labels.trim_end_matches(']').replace(',', " --label ");
        return Err(format!(
            "`{text}`: write NAMESPACE/NAME and the labels apart: --workload {name} --label {labels} (`labels:` in a case)"
        ));
    }
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
        Some((name, value)) if palisade_core::syntax::is_http_token(name.trim()) => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        // Not echoed, not even the part before a `:`: a header is where a
        // credential goes (`Bearer eyJ…` or `Cookie=sid=…` with the name
        // mistyped), and this line lands in CI logs.
        _ => Err(
            "has no header name before its `:` (the argument is not shown: it may hold a credential): write NAME:VALUE, as \"x-forwarded-for: 203.0.113.9\""
                .into(),
        ),
    }
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
            "--label",
            "version=v2",
            "--port",
            "9080",
            "--source-ip",
            "2001:db8::1",
            "--with",
            "realm.yaml",
        ]) else {
            panic!()
        };
        assert_eq!(e.file, PathBuf::from("mesh.yaml"));
        assert_eq!(e.with, [PathBuf::from("realm.yaml")]);
        assert_eq!(e.labels["version"], "v2");
        assert_eq!(e.request.port, Some(9080));
        assert_eq!(e.request.source_ip, Some("2001:db8::1".parse().unwrap()));
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
        let cases: [(&[&str], &str); 18] = [
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
            (
                &["explain", "f", "--request", "GET /", "--port", "0"],
                "--port `0`: write a port number",
            ),
            (
                &["explain", "f", "--request", "GET /", "--source-ip", "10.0.0"],
                "--source-ip `10.0.0`: write an IP address",
            ),
            (
                &[
                    "explain",
                    "f",
                    "--request",
                    "GET /",
                    "--workload",
                    "a/b",
                    "--label",
                    "app=c",
                ],
                "--label `app=c`: `app` is the workload's NAME",
            ),
            (
                &["explain", "f", "--request", "GET /", "--label", "version=v2"],
                "--label needs --workload",
            ),
            (
                &["explain", "f", "--request", "GET /", "--request", "POST /"],
                "--request is given twice",
            ),
            (
                &["explain", "f", "--request", "GET /", "--port", "1", "--port", "2"],
                "--port is given twice",
            ),
            (
                &[
                    "explain",
                    "f",
                    "--request",
                    "GET /",
                    "--workload",
                    "prod/details[version=v2]",
                ],
                "--workload prod/details --label version=v2",
            ),
            (&["test", "a", "b", "--with"], "--with needs a value"),
            (
                &["test", "a", "b", "--frob", "x"],
                "test: unknown argument `--frob`",
            ),
        ];
        for (line, want) in cases {
            let err = args(line).unwrap_err();
            assert!(err.contains(want), "{line:?}: {err}");
        }
        assert!(args(&["explain", "f"]).unwrap_err().contains("needs --request"));
        let labels = ["--workload", "a/b", "--label", "v=1", "--label", "v=2"];
        let twice = args(&[&["explain", "f", "--request", "GET /"][..], &labels[..]].concat()).unwrap_err();
        assert!(twice.contains("--label v is given twice"), "{twice}");
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
        // A header without its name is most often a credential: not shown.
        for (header, said, hidden) in [
            ("Bearer eyJhbGci.e30.c2ln", "--header has no header name", "eyJ"),
            ("x@y: secret-value", "--header has no header name", "secret-value"),
            ("Cookie=sid=abc:def", "--header has no header name", "sid=abc"),
        ] {
            let err = args(&["explain", "f", "--request", "GET /", "--header", header]).unwrap_err();
            assert!(err.contains(said), "{err}");
            assert!(!err.contains(hidden), "{err}");
        }
    }

    #[test]
    fn test_takes_more_policy_files() {
        let Ok(Command::Test(t)) = args(&[
            "test",
            "--with",
            "realm.yaml",
            "p.yaml",
            "c.yaml",
            "--with",
            "x.yaml",
        ]) else {
            panic!()
        };
        assert_eq!(
            (t.file, t.cases, t.with),
            (
                PathBuf::from("p.yaml"),
                PathBuf::from("c.yaml"),
                vec![PathBuf::from("realm.yaml"), PathBuf::from("x.yaml")]
            )
        );
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(args(&["--help"]), Ok(Command::Help)));
        assert!(matches!(args(&["check", "--help"]), Ok(Command::Help)));
        assert!(matches!(args(&["check", "p.yaml", "-h"]), Ok(Command::Help)));
        assert!(matches!(args(&["test", "-h"]), Ok(Command::Help)));
        assert!(matches!(
            args(&["explain", "p.yaml", "--help", "--request", "GET /"]),
            Ok(Command::Help)
        ));
        assert!(matches!(args(&["--version"]), Ok(Command::Version)));
    }

    /// `-h` as a flag's value is that value, not a request for help; `--`
    /// ends the flags, so a file may be named like one.
    #[test]
    fn flags_are_read_where_a_flag_may_stand() {
        let Ok(Command::Explain(e)) = args(&["explain", "--request", "GET /", "--with", "-h", "p.yaml"])
        else {
            panic!()
        };
        assert_eq!(
            (e.file, e.with),
            (PathBuf::from("p.yaml"), vec![PathBuf::from("-h")])
        );
        let e = args(&["explain", "p.yaml", "--request", "GET /", "--header", "-h"]).unwrap_err();
        assert!(e.starts_with("--header has no header name"), "{e}");

        let Ok(Command::Check { file }) = args(&["check", "--", "--odd.yaml"]) else {
            panic!()
        };
        assert_eq!(file, PathBuf::from("--odd.yaml"));
        let Ok(Command::Test(t)) = args(&["test", "--with", "r.yaml", "--", "-h", "--c.yaml"]) else {
            panic!()
        };
        assert_eq!(
            (t.file, t.cases, t.with),
            (
                PathBuf::from("-h"),
                PathBuf::from("--c.yaml"),
                vec![PathBuf::from("r.yaml")]
            )
        );
        let Ok(Command::Explain(e)) = args(&["explain", "--request", "GET /", "--", "--help"]) else {
            panic!()
        };
        assert_eq!(e.file, PathBuf::from("--help"));
        // Before `--`, an unknown flag is still refused.
        let e = args(&["check", "--odd.yaml"]).unwrap_err();
        assert!(e.contains("unknown argument `--odd.yaml`"), "{e}");
    }
}
