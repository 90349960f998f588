//! Any bytes as an inline JWKS document: the lenient key-set parser
//! answers, never panics.
//!
//! The oracle, with a token signed by the fuzzing Ed25519 key (`kid`
//! `fuzz`, valid claims): it verifies only if the set holds that key as a
//! signing key (an `OKP`/`Ed25519` key with its `x`, no other `kid`, `use`
//! absent or `sig`, `key_ops` absent or with `verify`, `alg` absent or
//! `EdDSA`); and a document is read as its canonical re-encoding is (same
//! JSON, compact, when it has no duplicate member): both build or both
//! fail, and the token gets the same verdict.

use std::sync::OnceLock;

use palisade_jwt::{JwtAuthenticator, JwtError, Provider};
use serde_json::Value;

use crate::common::{KID, runtime, signer, strict_json};

const ISSUER: &str = "https://issuer.example";

/// A token of the fuzzing key, valid until 2100.
fn token() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| {
        signer().sign(
            "",
            &format!(r#"{{"iss":"{ISSUER}","aud":"api","sub":"alice","exp":4102444800}}"#),
        )
    })
}

/// Built or not, and the token's verdict when built.
fn outcome(jwks: &str) -> Option<Result<(), JwtError>> {
    let provider = Provider::builder(ISSUER)
        .audience("api")
        .jwks_inline(jwks)
        .build()
        .ok()?;
    let jwt = JwtAuthenticator::builder().provider(provider).build().ok()?;
    Some(runtime().block_on(jwt.verify(token())).map(drop))
}

/// Whether the set holds the fuzzing key as a signing key (read by the
/// oracle).
fn holds_signing_key(jwks: &Value) -> bool {
    let x = serde_json::from_str::<Value>(&signer().jwk).unwrap()["x"]
        .as_str()
        .and_then(key_bytes)
        .unwrap();
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    keys.iter().any(|k| {
        let member = |name: &str| k.get(name);
        member("kty") == Some(&"OKP".into())
            && member("crv") == Some(&"Ed25519".into())
            && member("x").and_then(Value::as_str).and_then(key_bytes) == Some(x.clone())
            && member("kid").is_none_or(|kid| kid == KID)
            && member("use").is_none_or(|u| u == "sig")
            && member("alg").is_none_or(|a| a == "EdDSA")
            && member("key_ops").is_none_or(|ops| {
                ops.as_array()
                    .is_some_and(|ops| ops.iter().any(|o| o == "verify"))
            })
    })
}

/// A key's bytes, its base64url written with or without padding.
fn key_bytes(b64: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .ok()
}

/// One input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = outcome(text);
    let Some(json) = strict_json(data) else { return };
    if first == Some(Ok(())) {
        assert!(
            holds_signing_key(&json),
            "{text}: a token verified by a key the set does not hold"
        );
    }
    let canonical = json.to_string();
    assert_eq!(first, outcome(&canonical), "{text} and {canonical} read apart");
}
