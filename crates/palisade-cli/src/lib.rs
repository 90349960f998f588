//! The `palisade` command: a mesh's policy file checked, one decision
//! explained, and decision cases run, offline, with the code the services
//! run.
//!
//! ```text
//! palisade check FILE
//! palisade explain FILE [--workload NS/NAME [--label K=V]...] --request "METHOD PATH"
//!                  [--header K:V]... [--claims JSON] [--peer PRINCIPAL]
//!                  [--port N] [--source-ip IP] [--with FILE]...
//! palisade test FILE CASES.yaml [--with FILE]...
//! ```
//!
//! - `check` compiles, for every workload the file names (below), what a
//!   service of that workload compiles when it starts: the access policy,
//!   the JWT authenticator, browser sign-in, the mTLS mode, the upstream
//!   credentials and the upstreams' TLS. It never contacts an issuer, a
//!   key server or a session store. Each problem is one line naming the
//!   file, the document and the field (and the workloads it concerns);
//!   the exit status is 1 when there is any.
//! - `explain` decides one request with [`Guard::check`](palisade_core::Guard::check),
//!   as the workload's running guard does, and prints the decision as
//!   JSON: `{"decision": "allow"|"deny", "status": N, "policy": …,
//!   "rule": …}`, a few more fields and `notes`, what the answer takes
//!   for granted. Browser sign-in's own routes (callback, login, logout,
//!   back-channel logout), which a service with sign-in answers whatever
//!   the policy says, are `allow` with `"answered_by": "sign-in"` and the
//!   status sign-in answers with; a case expects them as `allow` (or,
//!   stricter, `reply`). So is the JWT authenticator's protected-resource
//!   metadata, with `"answered_by": "jwt"`; an authenticator's refusal in
//!   its own words (a DPoP nonce asked for) is a `deny`.
//!
//!   `--claims` stands for a token with these claims, taken as signed and
//!   current: the workload's JWT authenticator checks them as it checks a
//!   bearer token's (issuer, audience, subject, the claims of another kind
//!   of token; not the signature, the token's header or the time claims,
//!   which are not read) and maps them to an identity, with the headers its
//!   rule sets from them
//!   (`palisade_jwt::JwtAuthenticator::authenticated_for_verified_claims`):
//!   the request principal is `ISS/SUB`, roles and scopes as for a bearer
//!   token, and claims it refuses are the service's 401. A workload
//!   without a `RequestAuthentication` or `KeycloakAdapter` reads no token:
//!   its claims are ignored, with a note. `--peer` is the mTLS peer's
//!   principal (`cluster.local/ns/NS/sa/SA`), put on the request's
//!   connection as the mTLS acceptor does; `--port` and `--source-ip` are
//!   the connection's addresses (unknown when not given, as to a guard
//!   whose server cannot tell, with a note when a rule reads them). The
//!   status is the guard's answer: 200 for an allowed request, 401 when a
//!   credential could change a denial, 403 otherwise (and 400 for a
//!   malformed path or two tokens).
//! - `test` runs a case file's cases through the same code and prints
//!   each failed case, the rules no case reached, and `N passed, N failed`;
//!   the exit status is 1 when a case failed or the case file is bad. A
//!   case without `workload` is run for each workload the file names, one
//!   case each (a failed one's line names its workload); for any workload
//!   of `default` when the file names none.
//!
//! `--with FILE` (and a case file's `with:`) adds policy documents to
//! FILE's, for a file that is a fragment: the issuer setup it leaves out.
//!
//! The workloads a file names: every `app` label of a selector (with the
//! document's namespace and the selector's other labels; a selector in the
//! root namespace names its workload in every namespace the file uses),
//! and every `NAME.NS.svc.cluster.local` of a `ServiceRole` or
//! `RbacConfig`. A document that applies to none of them (one written for
//! a whole namespace, or whose selector has no `app`) is compiled for a
//! stand-in workload it selects, shown as `NS/*`. `--workload NS/NAME` is
//! the workload labelled `app: NAME` alone, and `--label`'s.
//!
//! Exit status: 1 also when the policy file does not load (or does not
//! compile for the workload), for every subcommand, with a line naming
//! the file, the document and the field (`check`: one for each document
//! that does not load), and when the answer could not be written (a full
//! disk; not a closed pipe); 2 for a usage error (bad arguments), with one
//! line on stderr.

mod args;
mod cases;
mod check;
mod decide;
mod load;
mod workloads;

use std::io::Write;

/// Runs the command line `args` (without the program name), writing its
/// output to `out` and its errors to `err`; returns the exit status:
/// 0 success; 1 problems found (`check`), cases failed or a bad case file
/// (`test`), or a policy file that does not load (any subcommand); 2 a
/// usage error.
///
/// ```
/// let (mut out, mut err) = (Vec::new(), Vec::new());
/// let status = palisade_cli::run(["--version".to_owned()], &mut out, &mut err);
/// assert_eq!(status, 0);
/// assert!(String::from_utf8(out).unwrap().starts_with("palisade "));
/// ```
pub fn run<I>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = String>,
{
    let report = match args::parse(args) {
        Ok(args::Command::Help) => Report::ok(vec![args::USAGE.trim_end().to_owned()]),
        Ok(args::Command::Version) => Report::ok(vec![format!("palisade {}", env!("CARGO_PKG_VERSION"))]),
        Ok(args::Command::Check { file }) => check::run(&file),
        Ok(args::Command::Explain(e)) => decide::explain(&e),
        Ok(args::Command::Test(t)) => cases::run(&t),
        Err(usage) => Report::usage(usage),
    };
    report.write(out, err)
}

/// What a subcommand says and how it ends.
#[derive(Debug, Default)]
struct Report {
    /// Lines for stdout.
    out: Vec<String>,
    /// Lines for stderr.
    err: Vec<String>,
    status: u8,
}

impl Report {
    fn ok(out: Vec<String>) -> Self {
        Self {
            out,
            ..Self::default()
        }
    }

    /// A usage error (bad arguments): one line, status 2.
    fn usage(line: String) -> Self {
        Self {
            err: vec![format!("error: {line}")],
            status: 2,
            ..Self::default()
        }
    }

    /// Something that stops the subcommand but is no usage error (a bad
    /// case file): one line, status 1.
    fn failure(line: String) -> Self {
        Self {
            err: vec![format!("error: {line}")],
            status: 1,
            ..Self::default()
        }
    }

    /// Writes the answer; its status, or 1 when the answer could not be
    /// written (a full disk behind `> out.json`: a script must not read a
    /// truncated answer as a success). A closed pipe (`palisade … | head`)
    /// is a reader that has read enough: no error of its own.
    fn write(self, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
        let written = self
            .out
            .iter()
            .try_for_each(|line| writeln!(out, "{line}"))
            .and_then(|()| out.flush());
        for line in &self.err {
            let _ = writeln!(err, "{line}");
        }
        match written {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                let _ = writeln!(err, "error: the answer could not be written: {e}");
                self.status.max(1)
            }
            _ => self.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};

    /// A writer that fails as `kind` at every write.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// An answer that could not be written is a failure a script sees (a
    /// full disk behind `> out.json`); a closed pipe (`| head`) is not.
    #[test]
    fn an_answer_that_cannot_be_written_fails() {
        let help = || ["--help".to_owned()];
        let mut err = Vec::new();
        assert_eq!(super::run(help(), &mut Vec::new(), &mut err), 0);
        let mut err = Vec::new();
        assert_eq!(
            super::run(help(), &mut Failing(io::ErrorKind::StorageFull), &mut err),
            1
        );
        assert!(String::from_utf8(err).unwrap().contains("could not be written"));
        let mut err = Vec::new();
        assert_eq!(
            super::run(help(), &mut Failing(io::ErrorKind::BrokenPipe), &mut err),
            0
        );
        assert!(err.is_empty());
    }
}
