//! Any bytes as a request target through the guard: it answers (a
//! decision, or 400 for a path it cannot normalise), never panics; the path
//! the router is handed is normal (no `//`, `.` or `..` segment) and a fixed
//! point (the same request again is not rewritten and decided alike); and a
//! normalised path under `/admin` is never allowed.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_core::adapter::Decision;
use palisade_core::authn::{OwnedRequest, RequestHead};
use palisade_core::policy::{PolicySet, Workload};
use palisade_core::{Check, Guard};

const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*", "/api/{*}/secret/{**}", "*.bak"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow}
spec:
  rules: [{to: [{operation: {paths: ["/public/*", "/api/{*}/items", "/"]}}]}]
"#;

fn guard() -> &'static Guard {
    static G: OnceLock<Guard> = OnceLock::new();
    G.get_or_init(|| {
        let set = PolicySet::from_yaml_str(POLICY, "fuzz.yaml").unwrap();
        let access =
            palisade_core::authz::AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default")))
                .unwrap();
        Guard::builder().access_policy(access).build().unwrap()
    })
}

fn decide(req: &OwnedRequest) -> Decision {
    match guard().check(req) {
        Check::Ready(d) => d,
        Check::Pending(_) => panic!("no CUSTOM policy: every decision is synchronous"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let req = OwnedRequest::get(&format!("/{raw}"));
    let Decision::Allow(admission) = decide(&req) else { return };
    let target = admission.rewritten_target().map_or_else(
        || match req.query() {
            Some(q) => format!("{}?{q}", req.path()),
            None => req.path().to_owned(),
        },
        str::to_owned,
    );
    let path = target.split('?').next().unwrap_or_default();
    assert!(!path.contains("//"), "{path}");
    assert!(!path.split('/').any(|s| s == "." || s == ".."), "{path}");
    assert!(path != "/admin" && !path.starts_with("/admin/"), "{path} allowed");
    let Decision::Allow(again) = decide(&OwnedRequest::get(&target)) else {
        panic!("{target}: allowed once, refused when sent as rewritten")
    };
    assert_eq!(again.rewritten_target(), None, "{target}: not a fixed point");
});
