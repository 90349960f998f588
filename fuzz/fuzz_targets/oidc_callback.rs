//! The `oidc_callback` fuzz target: its input and oracle are described in
//! `src/oidc_callback.rs`, whose body the replay test runs on stable too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_fuzz::oidc_callback::run(data));
