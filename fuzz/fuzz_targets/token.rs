//! Any bytes as a bearer token: parsing, header rules, duplicate-claim
//! detection and claim checks must answer, never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_jwt::{JwtAuthenticator, Provider};

/// A fixed RSA key (RFC 7517 appendix A.1), so nothing is fetched.
const JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"k","alg":"RS256","e":"AQAB","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}]}"#;

fn setup() -> &'static (tokio::runtime::Runtime, JwtAuthenticator) {
    static S: OnceLock<(tokio::runtime::Runtime, JwtAuthenticator)> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let jwt = JwtAuthenticator::builder()
            .provider(Provider::builder("https://issuer.example").audience("api").jwks_inline(JWKS).build().unwrap())
            .build()
            .unwrap();
        (rt, jwt)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let (rt, jwt) = setup();
        let _ = rt.block_on(jwt.verify(token));
    }
});
