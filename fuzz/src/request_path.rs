//! Any bytes as a request target (`/` + the input; the first `?` starts
//! the query, as in HTTP) through the guard. What the guard relies on:
//!
//! - a path is refused as malformed (400) exactly when a `%` is not
//!   followed by two hex digits, or, but with `escapedSlashes: KEEP`, when
//!   it holds `\`, `%2F` or `%5C`;
//! - otherwise the path the router is handed (the rewritten target, or the
//!   request's own) is normal: it starts with `/`, has no `//`, no `.` or
//!   `..` segment, no escape of an unreserved character and no lower-case
//!   hex digit in an escape (but of a segment's own delimiters, `:`, `@`
//!   and sub-delims, which are matched decoded and may reach the router as
//!   sent); the query is handed on unchanged;
//! - normalisation is a fixed point: the rewritten target, sent again, is
//!   not rewritten, and it is decided as the original request was (the
//!   policy matched the path the router routes);
//! - a path with its bytes a URI holds only escaped (non-ASCII, `"`,
//!   `[`, `]`, `^`, `{`, `|`, `}`) escaped is decided as the raw one
//!   (routers serve both from one route);
//! - a normalised path under `/admin`, `/public/privé` or
//!   `/public/[private]`, or ending in `.bak`, is never allowed.
//!
//! (An earlier version fed `/admin/..?` as a path: normalisation keeps a
//! `?` as path data, while a request target splits at it, so the oracle
//! saw `/admin/..?` allowed. That input is in `regressions/request_path/`.)

use std::sync::OnceLock;

use palisade_core::adapter::Decision;
use palisade_core::authn::{OwnedRequest, RequestHead};
use palisade_core::authz::AccessPolicy;
use palisade_core::policy::{PolicySet, Workload};
use palisade_core::{Check, Guard};

const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*", "/api/{*}/secret/{**}", "*.bak", "/public/privé/*", "/public/[private]/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow}
spec:
  rules: [{to: [{operation: {paths: ["/public/*", "/api/{*}/items", "/"]}}]}]
"#;

/// Allows every path, reading it: its admissions show the normalised path
/// of any request that is not malformed.
const ALLOW_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: all}
spec:
  rules: [{to: [{operation: {paths: ["*"]}}]}]
"#;

/// Escaped slashes served (the default refuses them).
const KEEP_ESCAPED_SLASHES: &str = r#"
---
apiVersion: palisade.dev/v1alpha1
kind: AuthorizationSettings
metadata: {name: settings}
spec: {escapedSlashes: KEEP}
"#;

struct Guards {
    policy: Guard,
    all: Guard,
    strict: Guard,
}

fn guard(yaml: &str) -> Guard {
    let set = PolicySet::from_yaml_str(yaml, "fuzz.yaml").unwrap();
    let access = AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default"))).unwrap();
    Guard::builder().access_policy(access).build().unwrap()
}

fn guards() -> &'static Guards {
    static G: OnceLock<Guards> = OnceLock::new();
    G.get_or_init(|| Guards {
        policy: guard(&format!("{POLICY}{KEEP_ESCAPED_SLASHES}")),
        all: guard(&format!("{ALLOW_ALL}{KEEP_ESCAPED_SLASHES}")),
        strict: guard(ALLOW_ALL),
    })
}

fn decide(guard: &Guard, req: &OwnedRequest) -> Decision {
    match guard.check(req) {
        Check::Ready(d) => d,
        Check::Pending(_) => panic!("no CUSTOM policy: every decision is synchronous"),
    }
}

/// Allowed, denied, or refused with this status.
fn verdict(d: &Decision) -> (bool, u16) {
    match d {
        Decision::Allow(_) => (true, 200),
        Decision::Deny(r) => (false, r.status()),
        Decision::Reply(r) => (false, r.status()),
        _ => panic!("an unknown decision: {d:?}"),
    }
}

fn bad_escape(path: &[u8]) -> bool {
    path.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(path.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && path.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// A `\`, or an escape of `/` or `\`, in a path without bad escapes.
fn escaped_slash(path: &[u8]) -> bool {
    path.contains(&b'\\')
        || path.windows(3).any(|w| {
            w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
        })
}

/// The checks a normalised path passes.
fn assert_normal(path: &str) {
    assert!(path.starts_with('/'), "{path:?}: not absolute");
    assert!(!path.contains("//"), "{path:?}: `//`");
    assert!(
        !path.split('/').any(|s| s == "." || s == ".."),
        "{path:?}: a dot segment"
    );
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let escape = &bytes[i + 1..i + 3];
        let value = u8::from_str_radix(std::str::from_utf8(escape).unwrap(), 16).unwrap();
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "{path:?}: an escaped unreserved character"
        );
        // A segment's own delimiters (`:`, `@`, sub-delims but `+`) are
        // matched decoded and may reach the router as sent, in either case:
        // decoding them alone rewrites nothing.
        let delimiter = b"!$&'()*+,;=:@".contains(&value);
        assert!(
            delimiter || !escape.iter().any(u8::is_ascii_lowercase),
            "{path:?}: a lower-case escape"
        );
    }
}

/// One input.
pub fn run(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let target = format!("/{raw}");
    let req = OwnedRequest::get(&target);
    let (path, query) = (req.path().to_owned(), req.query().map(str::to_owned));
    assert!(!path.contains('?'), "a request path never holds `?`");
    let g = guards();

    // Malformed exactly when the model says so, in both modes.
    let all = decide(&g.all, &req);
    let malformed = bad_escape(path.as_bytes());
    assert_eq!(
        verdict(&all),
        if malformed { (false, 400) } else { (true, 200) },
        "{target:?}"
    );
    let strict = decide(&g.strict, &req);
    let refused = malformed || escaped_slash(path.as_bytes());
    assert_eq!(
        verdict(&strict),
        if refused { (false, 400) } else { (true, 200) },
        "{target:?} (REJECT, the default)"
    );
    let Decision::Allow(admission) = all else {
        assert_eq!(verdict(&decide(&g.policy, &req)), (false, 400), "{target:?}");
        return;
    };

    // What the router is handed.
    let routed = admission
        .rewritten_target()
        .map_or_else(|| target.clone(), str::to_owned);
    let (normal, routed_query) = match routed.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (routed.as_str(), None),
    };
    assert_normal(normal);
    assert_eq!(routed_query, query.as_deref(), "{target:?}: the query changed");
    if admission.rewritten_target().is_some() {
        assert_ne!(normal, path, "{target:?}: rewritten to itself");
    }

    // A fixed point, decided alike.
    let again = OwnedRequest::get(&routed);
    let Decision::Allow(second) = decide(&g.all, &again) else {
        panic!("{routed:?}: allowed once, refused when sent as rewritten")
    };
    assert_eq!(second.rewritten_target(), None, "{routed:?}: not a fixed point");
    let first = verdict(&decide(&g.policy, &req));
    assert_eq!(
        first,
        verdict(&decide(&g.policy, &again)),
        "{target:?} and {routed:?} decided apart"
    );

    // Raw and escaped, decided alike.
    let raw_only_escaped = |b: u8| b >= 0x80 || b"\"[]^{|}".contains(&b);
    if path.bytes().any(raw_only_escaped) {
        let escaped: String = path
            .bytes()
            .map(|b| {
                if raw_only_escaped(b) {
                    format!("%{b:02X}")
                } else {
                    char::from(b).to_string()
                }
            })
            .collect();
        let escaped = match &query {
            Some(q) => format!("{escaped}?{q}"),
            None => escaped,
        };
        assert_eq!(
            first,
            verdict(&decide(&g.policy, &OwnedRequest::get(&escaped))),
            "{target:?} and {escaped:?} decided apart"
        );
    }

    // What the policy denies is never allowed.
    let private = [
        "/public/priv%C3%A9/",
        "/public/privé/",
        "/public/%5Bprivate%5D/",
        "/public/[private]/",
    ]
    .iter()
    .any(|p| normal.starts_with(p));
    if normal == "/admin" || normal.starts_with("/admin/") || normal.ends_with(".bak") || private {
        assert!(!first.0, "{target:?} ({normal:?}) allowed");
    }
}
