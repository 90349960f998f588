//! The `request_path` fuzz target: its input and oracle are described in
//! `src/request_path.rs`, whose body the replay test runs on stable too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_fuzz::request_path::run(data));
