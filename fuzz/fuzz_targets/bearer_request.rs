//! The `bearer_request` fuzz target: its input and oracle are described in
//! `src/bearer_request.rs`, whose body the replay test runs on stable too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_fuzz::bearer_request::run(data));
