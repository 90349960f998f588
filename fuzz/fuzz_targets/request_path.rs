//! Any bytes as a request path: normalisation answers with a path or a
//! refusal, never panics; a normalised path is a fixed point, has no `//`,
//! `.` or `..` segment; and an evaluation against a policy with every kind of
//! path pattern decides.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_core::OwnedRequest;
use palisade_core::authz::AccessPolicy;
use palisade_core::policy::{PolicySet, Workload};

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

fn policy() -> &'static AccessPolicy {
    static P: OnceLock<AccessPolicy> = OnceLock::new();
    P.get_or_init(|| {
        let set = PolicySet::from_yaml_str(POLICY, "fuzz.yaml").unwrap();
        AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default"))).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let path = format!("/{raw}");
    let p = policy();
    if let Ok(n) = p.normalize_path(&path) {
        assert!(!n.contains("//"), "{n}");
        assert!(!n.split('/').any(|s| s == "." || s == ".."), "{n}");
        assert_eq!(p.normalize_path(&n).unwrap(), n, "normalisation is idempotent");
        let d = p.evaluate(&OwnedRequest::get(&n), None);
        // A normalised path under /admin is never allowed.
        if n == "/admin" || n.starts_with("/admin/") {
            assert!(!d.is_allowed(), "{n}");
        }
    }
});
