//! Any bytes as a policy file: loading, selection and compilation must
//! answer with a located error or a policy, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_core::authz::AccessPolicy;
use palisade_core::policy::{PolicySet, Workload};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(set) = PolicySet::from_yaml_str(text, "fuzz.yaml")
    {
        let _ = AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default")));
    }
});
