//! Arbitrary request heads (headers, cookies, query) through the whole
//! guard: token extraction and the decision must answer, never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_core::Check;
use palisade_core::authn::{Authenticator, OwnedRequest};
use palisade_jwt::{JwtAuthenticator, Provider, TokenSource};

fn jwt() -> &'static JwtAuthenticator {
    static J: OnceLock<JwtAuthenticator> = OnceLock::new();
    J.get_or_init(|| {
        let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"e","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        JwtAuthenticator::builder()
            .provider(
                Provider::builder("https://issuer.example")
                    .audience("api")
                    .jwks_inline(jwks)
                    .source(TokenSource::authorization_bearer())
                    .source(TokenSource::Cookie("session".into()))
                    .source(TokenSource::Query("access_token".into()))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let target = parts.next().unwrap_or("/");
    let mut req = OwnedRequest::get(target);
    for (name, value) in [("authorization", parts.next()), ("cookie", parts.next()), ("authorization", parts.next())] {
        if let Some(v) = value {
            req = req.header(name, v.as_bytes().to_vec());
        }
    }
    if let Check::Ready(outcome) = jwt().authenticate(&req) {
        let _ = outcome;
    }
});
