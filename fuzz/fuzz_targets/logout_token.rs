//! The `logout_token` fuzz target: its input and oracle are described in
//! `src/logout_token.rs`, whose body the replay test runs on stable too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_fuzz::logout_token::run(data));
