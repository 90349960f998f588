//! Palisade signs and verifies with aws-lc-rs itself, never through
//! jsonwebtoken's process-wide default provider. An application that turns
//! on jsonwebtoken's `rust_crypto` feature beside the `aws_lc_rs` one
//! Palisade needs (Cargo merges the two) leaves jsonwebtoken no default,
//! and every call through it panics. Here a default that panics is
//! installed first, as such an application has one.

use jsonwebtoken::crypto::{CryptoProvider, KeyUtils};
use palisade::core::authn::{AuthOutcome, Authenticator, OwnedRequest};
use palisade::core::{Check, ErrorKind};
use palisade::jwt::{JwtAuthenticator, Provider};
use palisade::signin::ClientKey;
use palisade::testkit::{ClientKeyPair, SigningAlgorithm, TestIssuer};

static PANICS: CryptoProvider = CryptoProvider {
    signer_factory: |_, _| panic!("jsonwebtoken's process-wide default signer was used"),
    verifier_factory: |_, _| panic!("jsonwebtoken's process-wide default verifier was used"),
    key_utils: KeyUtils::new_unimplemented(),
};

/// The panicking default, once for the process (each test asks); a
/// default installed before would make the tests prove nothing.
fn install_panicking_default() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        assert!(
            PANICS.install_default().is_ok(),
            "another jsonwebtoken default was installed first"
        );
    });
}

fn outcome(jwt: &JwtAuthenticator, token: &str) -> AuthOutcome {
    let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
    match jwt.authenticate(&req) {
        Check::Ready(o) => o,
        Check::Pending(_) => panic!("a token with an inline key set waited"),
    }
}

#[test]
fn tokens_are_verified_without_jsonwebtokens_default_provider() {
    install_panicking_default();
    for alg in [
        SigningAlgorithm::Rs256,
        SigningAlgorithm::Es256,
        SigningAlgorithm::EdDsa,
    ] {
        let issuer = TestIssuer::builder()
            .algorithm(alg)
            .default_audience("api")
            .start()
            .unwrap();
        let jwt = JwtAuthenticator::builder()
            .provider(
                Provider::builder(issuer.issuer())
                    .audience("api")
                    .jwks_inline(issuer.jwks().to_string())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let token = issuer.token().subject("alice").sign();
        match outcome(&jwt, &token) {
            AuthOutcome::Authenticated(a) => assert_eq!(a.identity.subject(), Some("alice")),
            o => panic!("{alg:?}: {o:?}"),
        }
        // A signature of other bytes is still refused.
        let other = issuer.token().subject("mallory").sign();
        let (message, _) = token.rsplit_once('.').unwrap();
        let (_, signature) = other.rsplit_once('.').unwrap();
        match outcome(&jwt, &format!("{message}.{signature}")) {
            AuthOutcome::Rejected(r) => assert_eq!(r.kind(), ErrorKind::InvalidToken, "{r:?}"),
            o => panic!("{alg:?}: a signature of another token was accepted: {o:?}"),
        }
    }
}

#[test]
fn client_assertions_are_signed_without_jsonwebtokens_default_provider() {
    install_panicking_default();
    // `from_pem` signs a test assertion with the key.
    for (alg, name) in [
        (SigningAlgorithm::Es256, "ES256"),
        (SigningAlgorithm::Rs256, "RS256"),
        (SigningAlgorithm::EdDsa, "EdDSA"),
    ] {
        let pair = ClientKeyPair::generate(alg).unwrap();
        ClientKey::from_pem(name, pair.private_key_pem.as_bytes(), Some("k1")).unwrap();
    }
}
