//! Bearer tokens through `JwtAuthenticator::verify`: parsing, header
//! rules, duplicate-claim detection and claim checks.
//!
//! The first byte picks the mode. Odd: the rest is the token. Even: the
//! rest is `extra header members` NEWLINE `payload`, signed with a fixed
//! Ed25519 key the provider trusts (`@now` in the payload is the current
//! time), so the claim checks and the accepting path are reached.
//!
//! The oracle:
//! - a token longer than the cap is refused as too large;
//! - an accepted token's claims (read by the oracle itself) name the
//!   issuer and the audience, carry `exp` not past, `nbf` and `iat` not in
//!   the future, a string `sub` (or a `client_id`), and the identity says
//!   the same issuer and subject;
//! - a token is accepted in its one encoding only: the same token with
//!   padding, the standard base64 alphabet, white space or a fifth part is
//!   refused;
//! - the verdict does not depend on how the JSON is written: the header
//!   and claims re-encoded (compact, members deduplicated) and signed again
//!   are accepted or refused as the original, for the same reason (except
//!   when the original's only fault was a duplicate member).

use std::sync::OnceLock;

use palisade_jwt::{JwtAuthenticator, JwtError, Provider};
use serde_json::{Map, Value};

use crate::common::{now, runtime, same_claims, signer};

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "api";
/// The authenticator's default cap on a token's length.
const MAX_TOKEN: usize = 8 * 1024;

/// A fixed RSA key (RFC 7517 appendix A.1) and the fuzzing Ed25519 key.
fn jwks() -> String {
    format!(
        r#"{{"keys":[{{"kty":"RSA","kid":"k","alg":"RS256","e":"AQAB","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}},{}]}}"#,
        signer().jwk
    )
}

fn jwt() -> &'static JwtAuthenticator {
    static J: OnceLock<JwtAuthenticator> = OnceLock::new();
    J.get_or_init(|| {
        JwtAuthenticator::builder()
            .provider(
                Provider::builder(ISSUER)
                    .audience(AUDIENCE)
                    .jwks_inline(jwks())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    })
}

fn verify(token: &str) -> Result<palisade_core::Identity, JwtError> {
    runtime().block_on(jwt().verify(token))
}

fn number(claims: &Map<String, Value>, name: &str) -> Option<f64> {
    claims.get(name).and_then(Value::as_f64)
}

/// Whether a time claim is within a few seconds of a limit of the clock
/// checks (the verdict may change while the oracle looks).
fn near_edge(claims: &Map<String, Value>, now: f64) -> bool {
    ["exp", "nbf", "iat"]
        .iter()
        .filter_map(|c| number(claims, c))
        .any(|t| (t - (now - 60.0)).abs() < 5.0 || (t - (now + 60.0)).abs() < 5.0)
}

fn assert_accepted_claims(token: &str, identity: &palisade_core::Identity, before: f64, after: f64) {
    let claims = crate::common::payload(token).expect("an accepted token has a JSON object payload");
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some(ISSUER),
        "{claims:?}"
    );
    let exp = number(&claims, "exp").expect("an accepted token has exp");
    assert!(before <= exp + 60.0, "expired: {claims:?}");
    if claims.contains_key("nbf") {
        assert!(
            number(&claims, "nbf").is_some_and(|nbf| nbf <= after + 60.0),
            "not yet valid: {claims:?}"
        );
    }
    if claims.contains_key("iat") {
        assert!(
            number(&claims, "iat").is_some_and(|iat| iat <= after + 60.0),
            "issued in the future: {claims:?}"
        );
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(items)) => {
            items.iter().all(Value::is_string) && items.iter().any(|a| a == AUDIENCE)
        }
        _ => false,
    };
    assert!(audience_ok, "not for this audience: {claims:?}");
    match claims.get("sub") {
        Some(Value::String(sub)) => assert_eq!(identity.subject(), Some(sub.as_str())),
        None => assert!(
            claims.get("client_id").is_some_and(Value::is_string),
            "{claims:?}"
        ),
        Some(other) => panic!("accepted with sub {other}"),
    }
    assert_eq!(identity.issuer(), Some(ISSUER));
}

/// Other encodings of the same token.
fn variants(token: &str) -> Vec<String> {
    let mut out = vec![
        format!("{token}="),
        format!(" {token}"),
        format!("{token} "),
        format!("{token}.x"),
    ];
    let parts: Vec<&str> = token.split('.').collect();
    for i in 0..parts.len() {
        let mut padded = parts.clone();
        let with = format!("{}==", parts[i]);
        padded[i] = &with;
        out.push(padded.join("."));
    }
    if token.contains(['-', '_']) {
        out.push(token.replace('-', "+").replace('_', "/"));
    }
    out
}

/// The header and payload of a token, as JSON objects read by the oracle.
fn decoded(token: &str) -> Option<(Map<String, Value>, Map<String, Value>)> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok()?;
    Some((serde_json::from_slice(&h).ok()?, crate::common::payload(token)?))
}

/// One input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let signed = mode & 1 == 0;
    let token = if signed {
        let (extra, payload) = text.split_once('\n').unwrap_or(("", text));
        signer().sign(extra, &payload.replace("@now", &now().to_string()))
    } else {
        text.to_owned()
    };
    let before = crate::common::now() as f64;
    let verdict = verify(&token);
    let after = crate::common::now() as f64;
    if token.len() > MAX_TOKEN {
        assert_eq!(verdict.as_ref().err(), Some(&JwtError::TooLarge));
        return;
    }
    if let Ok(identity) = &verdict {
        assert_accepted_claims(&token, identity, before, after);
        for variant in variants(&token) {
            assert!(
                verify(&variant).is_err(),
                "{variant:?}: another encoding of an accepted token is accepted"
            );
        }
    }
    // The verdict of the same JSON written canonically.
    if !signed || verdict.as_ref().err() == Some(&JwtError::DuplicateClaim) {
        return;
    }
    let Some((header, claims)) = decoded(&token) else {
        return;
    };
    if near_edge(&claims, before) {
        return;
    }
    let canonical = signer().sign_raw(
        Value::Object(header).to_string().as_bytes(),
        Value::Object(claims).to_string().as_bytes(),
    );
    if canonical.len() > MAX_TOKEN {
        return;
    }
    let again = verify(&canonical);
    match (&verdict, &again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.subject(), b.subject());
            assert!(same_claims(a, b), "{:?} and {:?}", a.claims(), b.claims());
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "{token:?} and {canonical:?} refused for different reasons"),
        _ => panic!("{token:?} ({verdict:?}) and {canonical:?} ({again:?}) decided apart"),
    }
}
