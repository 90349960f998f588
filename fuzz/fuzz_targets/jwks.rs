//! Any bytes as an (inline) JWKS document: the lenient key-set parser must
//! answer, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_jwt::{JwtAuthenticator, Provider};

fuzz_target!(|data: &[u8]| {
    if let Ok(jwks) = std::str::from_utf8(data)
        && let Ok(provider) = Provider::builder("https://issuer.example").audience("api").jwks_inline(jwks).build()
    {
        let _ = JwtAuthenticator::builder().provider(provider).build();
    }
});
