//! Key quality through the public API: weak RSA keys in an issuer's JWKS
//! (ROCA, under 2048 bits) are skipped with one warning and the rest of the
//! set still used; HMAC secrets must be as long as their hash and may have
//! a `kid`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::KeyPair;
use aws_lc_rs::{hmac, rand, signature};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade::core::adapter::Decision;
use palisade::core::authn::OwnedRequest;
use palisade::core::{Check, Guard};
use palisade::jwt::{Algorithm, ConfigError, FetchSettings, JwtAuthenticator, JwtError, Provider};
use palisade::testkit::TestIssuer;
use serde_json::{Value, json};

mod common;

/// Wycheproof's `jws_rsa_roca_key` (json_web_key_test.json, tcId 7): an
/// RSA key of 2049 bits with the ROCA fingerprint, public and private.
const ROCA: [(&str, &str); 8] = [
    (
        "n",
        "AanFpofbj7KjD4Lf-N2hVMKR7yewSyXhhbirIMTGpfYEhZ_lnt5UoK98DnKIgArXGTu3MaW_HhFw16HGaTDUHqPrId7fe4r11CqRw09yBFuW79V8sYIwHdzCaWflUI6auImYbVfoN9_nD5n8N8SY9DwXw7mwZM9wREPXoDPgOoIWl6q_MPsp7n0zs3Z5ZaiQWOOzl1S9OhwAfSiiOwz6efnXEaxuTEtPd7BjSx7NaFka8Dx9U7YqXy2RFj1O9PjyaDGuRh7YXsX3iMUSP_wSyHQg_c_qHRtKUsNSGCT7OZg0hzm2KphtjnayKJvC64vAbROBR4Ubg6Bxg9IQVZ-QYyE",
    ),
    ("e", "AQAB"),
    (
        "d",
        "NGpEqgz5j8BLNI1mEcK-sIVOr9AgMDWnRKisjAz4eWTtHlYiTLSWY4QeMzNir_LzBEr1LbZteTAvG5dVc9FpRDy6Grngd6bzy5nONYWPy8a1F88V-zT5OCgm2cd9N1EMzsOZEm1gE4xae1Z1dxptVsiGK-HvRypG_SMacch063aSDM46Asvao8PjqWGy-ZGwnaprx5ME4ZWRMKtov8BVMvkrs1KeM7TtjMg27hvreTueu8fbgNc9U93S2sWjw_4YvS72idsM95e-MCNwhKkrfufNhc5-8-pxD6cbiu8BnG4gR0vuQUNJFx16BsskC7JgOwEUhUg1Q0pYYj3DA54OwQ",
    ),
    (
        "p",
        "ARXNC8pC9mwATep-hd8UJIPF-zxRT3SLSo-oqcfvsfxh31YwlKtfIx7TZgXY1Zqva9zzxJZYxR1XrJp3M0Ny5yRSz04EE7tOjSC3-vR2oIGtkWPFUUF4VpEwrDzqPrZa7JKY-ZJ0qchxLYwzKj7LgEA2HY8l1GBQzHYqqbblMNyF",
    ),
    (
        "q",
        "AYhb2gXYokQugcoSDcl9jeeqwpccV-1Fv93RTtaFMoDJ5kJipWpmTIuT06ZLVc0-2FNl9U3HaiNnHgT07Sjnllj2XGBH5tFT-2u8UUby7QEX8I5QRrdCs6FEtoIxY-eGZWD5MbF8bwrdE1xuhk7dvxlGcEzsAqWMU1ORoRdCZgzt",
    ),
    (
        "dp",
        "b2E6rOmUK1Ej7DS2L-6_hSXHyTNAjBWc22RgTg1Ia0xCYygvM1Z9mkpfyVBatB5JPNlvpGgK_-y7A2NvZkeXbPTWsQzpbFveMZQSRhmZ2ORiOoJORdWdv7CoHfQ9GJfz6gLzbUjhGcBm5qNM-MhWr2gDCfW85LEAiRAp426Y3JE",
    ),
    (
        "dq",
        "43ITjgYJ8qpfFKuokGAXLe_AQ-brVaF0Wvrlz9eA8kWYFG2o5GgPAW6dZ64OPB-tOZNGQ2NRNNqm_UqaXHb7ofCWlj24ISqk-cw99XoHR_X_vg_tHnktNlRl1E0bU_CFvlRWqUOv_0Uu3ws3EmrbR6ScnwrFcgBJoY0vLBOSovU",
    ),
    (
        "qi",
        "azvnD35JmJmI6VoGG4J_koriDC-VENRIzJy9P9paHUtk7vVVPWfC2GzsvHXTF1ZrvqYmG-NtYxRkps6AQ8QKio9XbQ7tTnYmbCH9rSXj7yim3A9Rry92_LsplWRW2H_EIviYk4XdQY3SpSXCbd30fpVcJRhzF_SJ2ifEIPWd3NA",
    ),
];

/// Wycheproof's `keysize_too_small` public key (tcId 8): 1024 bits.
const RSA_1024_N: &str = "rJBIp6T1YK-RtPyvYqFFlcucqewSAA_IReSFchE8qyiQrbARqRlXWkB2DR8j_pJQnIpYELbQWZC5Cd0PTGAU8rMbar2AW6zpmBbi7aQf17lUBdt8XI9M9rq7FPVQ1dDdUXm1SVH_9qqWhvMPR422SbfHBEzCAtzK0ANDRo6qz78";

fn component(name: &str) -> Vec<u8> {
    let b64 = ROCA.iter().find(|(n, _)| *n == name).unwrap().1;
    URL_SAFE_NO_PAD.decode(b64).unwrap()
}

/// DER: a length.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(u8::try_from(len).unwrap());
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | u8::try_from(bytes.len() - skip).unwrap());
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// DER: an unsigned INTEGER, minimal.
fn der_uint(value: &[u8], out: &mut Vec<u8>) {
    let skip = value.iter().take_while(|&&b| b == 0).count();
    let mut body = value[skip..].to_vec();
    if body.first().is_none_or(|&b| b >= 0x80) {
        body.insert(0, 0);
    }
    out.push(0x02);
    der_len(body.len(), out);
    out.extend(body);
}

/// The ROCA key as a PKCS#1 `RSAPrivateKey`.
fn roca_private_key() -> signature::RsaKeyPair {
    let mut body = Vec::new();
    der_uint(&[0], &mut body);
    for name in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
        der_uint(&component(name), &mut body);
    }
    let mut der = vec![0x30];
    der_len(body.len(), &mut der);
    der.extend(body);
    signature::RsaKeyPair::from_der(&der).expect("the ROCA key is a valid RSA key")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn b64_json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn capture_logs() {
    common::logs::capture("palisade::jwks=warn");
}

fn settings() -> FetchSettings {
    let mut f = FetchSettings::default();
    f.min_refresh_interval = Duration::from_millis(50);
    // The first token waits for a new process's first discovery and JWKS
    // fetch; a refused key is answered as soon as its fetch ends anyway.
    f.unknown_kid_wait = Duration::from_secs(3);
    f
}

fn authenticator(issuer: &TestIssuer) -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .provider(
            Provider::builder(issuer.issuer())
                .audience("account")
                .fetch_settings(settings())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// The answer `guard` gives a request with `token`: 200 when allowed,
/// else the refusal's status.
async fn status(guard: &Guard, token: &str) -> u16 {
    let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
    let decision = match guard.check(&req) {
        Check::Ready(d) => d,
        Check::Pending(f) => f.await,
    };
    match decision {
        Decision::Allow(_) => 200,
        Decision::Deny(r) => r.status(),
        Decision::Reply(r) => r.status(),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_by_a_roca_key_of_the_issuer_gets_401_and_one_warning() {
    capture_logs();
    let issuer = TestIssuer::start().unwrap();
    issuer.add_jwk(json!({
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "roca-key",
        "n": ROCA[0].1, "e": "AQAB",
    }));
    // A token the ROCA key really signed: refused for the key, not the signature.
    let message = issuer.token().kid(Some("roca-key")).subject("mallory").unsigned();
    let message = message.trim_end_matches('.');
    let key = roca_private_key();
    let mut sig = vec![0; key.public_modulus_len()];
    key.sign(
        &signature::RSA_PKCS1_SHA256,
        &rand::SystemRandom::new(),
        message.as_bytes(),
        &mut sig,
    )
    .unwrap();
    signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, key.public_key().as_ref())
        .verify(message.as_bytes(), &sig)
        .expect("a valid RS256 signature");
    let forged = format!("{message}.{}", URL_SAFE_NO_PAD.encode(&sig));

    let jwt = authenticator(&issuer);
    let good = issuer.token().subject("alice").sign();
    assert_eq!(
        jwt.verify(&good).await.unwrap().subject(),
        Some("alice"),
        "the other key of the set is used"
    );
    assert_eq!(jwt.verify(&forged).await.unwrap_err(), JwtError::UnknownKey);
    let guard = Guard::builder().authenticator(jwt.clone()).build().unwrap();
    assert_eq!(status(&guard, &forged).await, 401);
    assert_eq!(status(&guard, &good).await, 200);

    // Each unknown-kid token made the issuer's keys be fetched again; the
    // warning is still one.
    assert!(issuer.jwks_fetches() >= 2, "{}", issuer.jwks_fetches());
    let lines = common::logs::lines(issuer.issuer());
    let roca: Vec<_> = lines.iter().filter(|l| l.contains("roca-key")).collect();
    assert_eq!(roca.len(), 1, "{lines:#?}");
    assert!(
        roca[0].contains("WARN") && roca[0].contains("ROCA"),
        "{}",
        roca[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1024_bit_key_in_the_jwks_is_skipped_at_load_and_a_2048_bit_one_used() {
    capture_logs();
    let issuer = TestIssuer::start().unwrap();
    issuer.add_jwk(json!({
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "RS256_1024",
        "n": RSA_1024_N, "e": "AQAB",
    }));
    let jwt = authenticator(&issuer);
    // The issuer's own key: RSA 2048.
    let n = issuer.jwks()["keys"][0]["n"].as_str().unwrap().to_owned();
    assert_eq!(URL_SAFE_NO_PAD.decode(n).unwrap().len(), 256);
    assert!(jwt.verify(&issuer.token().sign()).await.is_ok());
    // Were the short key loaded, a token naming it would fail on its
    // signature; it is not in the set at all.
    let naming_it = issuer.token().kid(Some("RS256_1024")).sign();
    assert_eq!(jwt.verify(&naming_it).await.unwrap_err(), JwtError::UnknownKey);
    let lines = common::logs::lines(issuer.issuer());
    let short: Vec<_> = lines.iter().filter(|l| l.contains("RS256_1024")).collect();
    assert_eq!(short.len(), 1, "{lines:#?}");
    assert!(short[0].contains("shorter than 2048 bits"), "{}", short[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_keys_of_an_inline_set_are_skipped_and_a_set_of_only_weak_keys_refused() {
    capture_logs();
    let issuer = TestIssuer::start().unwrap();
    let mut jwks = issuer.jwks();
    let roca = json!({"kty": "RSA", "kid": "inline-roca", "n": ROCA[0].1, "e": "AQAB"});
    jwks["keys"].as_array_mut().unwrap().push(roca.clone());
    let jwt = JwtAuthenticator::builder()
        .provider(
            Provider::builder("https://inline.example")
                .audience("account")
                .jwks_inline(jwks.to_string())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let token = issuer.token().issuer("https://inline.example").sign();
    assert!(jwt.verify(&token).await.is_ok());
    let lines = common::logs::lines("https://inline.example");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("inline-roca") && l.contains("ROCA")),
        "{lines:#?}"
    );

    let only_weak = JwtAuthenticator::builder()
        .provider(
            Provider::builder("https://weak.example")
                .audience("account")
                .jwks_inline(json!({"keys": [roca]}).to_string())
                .build()
                .unwrap(),
        )
        .build();
    assert!(matches!(
        only_weak,
        Err(palisade::jwt::ConfigError::InvalidInlineKeys(..))
    ));
}

/// An HS256 token of `iss` for audience `api`, with `kid` if given.
fn hs256(secret: &[u8], iss: &str, kid: Option<&str>) -> String {
    let mut header = json!({"alg": "HS256", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let claims = json!({"iss": iss, "aud": "api", "sub": "svc", "exp": now() + 300});
    let message = format!("{}.{}", b64_json(&header), b64_json(&claims));
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn hmac_authenticator(iss: &str, secret: &[u8], kid: Option<&str>) -> JwtAuthenticator {
    let builder = Provider::builder(iss).audience("api").dangerous();
    let provider = match kid {
        Some(kid) => builder.hmac_secret_with_kid(kid, secret.to_vec()),
        None => builder.hmac_secret(secret.to_vec()),
    };
    JwtAuthenticator::builder()
        .provider(provider.build().unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_secret_with_a_kid_refuses_tokens_naming_another_key() {
    let secret = [0x5a; 32];
    let iss = "https://hs.example";
    let jwt = hmac_authenticator(iss, &secret, Some("hs-2025"));
    assert!(jwt.verify(&hs256(&secret, iss, Some("hs-2025"))).await.is_ok());
    assert!(
        jwt.verify(&hs256(&secret, iss, None)).await.is_ok(),
        "no kid: the one secret"
    );
    assert_eq!(
        jwt.verify(&hs256(&secret, iss, Some("hs-2024")))
            .await
            .unwrap_err(),
        JwtError::UnknownKey
    );
    assert_eq!(
        jwt.verify(&hs256(&[0x5b; 32], iss, Some("hs-2025")))
            .await
            .unwrap_err(),
        JwtError::BadSignature
    );
}

#[tokio::test]
async fn a_secret_without_a_kid_verifies_tokens_whatever_kid_they_name() {
    let secret = [0x17; 48];
    let iss = "https://hs-any.example";
    let jwt = hmac_authenticator(iss, &secret, None);
    for kid in [None, Some("k1"), Some("anything")] {
        assert!(jwt.verify(&hs256(&secret, iss, kid)).await.is_ok(), "{kid:?}");
    }
    assert_eq!(
        jwt.verify(&hs256(&[0x18; 48], iss, Some("k1")))
            .await
            .unwrap_err(),
        JwtError::BadSignature
    );
}

#[test]
fn short_or_empty_secrets_are_refused_when_built() {
    for secret in [&[][..], &[1; 31][..]] {
        let err = Provider::builder("https://hs.example")
            .audience("api")
            .dangerous()
            .hmac_secret(secret.to_vec())
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::WeakHmacSecret {
                    algorithm: Algorithm::HS256,
                    min_len: 32,
                    ..
                }
            ),
            "{err}"
        );
    }
}
