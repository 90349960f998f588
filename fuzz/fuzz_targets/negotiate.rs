//! The `negotiate` fuzz target: its input and oracle are described in
//! `src/negotiate.rs`, whose body the replay test runs on stable too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_fuzz::negotiate::run(data));
