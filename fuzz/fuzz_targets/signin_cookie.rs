//! The `signin_cookie` fuzz target: its input and oracle are described in
//! `src/signin_cookie.rs`, whose body the replay test runs on stable too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_fuzz::signin_cookie::run(data));
