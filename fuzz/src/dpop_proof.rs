//! DPoP proofs: any proof must be answered, never panic the verifier, and a
//! proof it accepts is accepted once only (the second time is a replay).
//!
//! The first byte picks the mode. Odd: the rest is the proof itself. Even:
//! the rest is `extra header members` NEWLINE `payload`, signed with a fixed
//! Ed25519 key whose `jwk` is in the header, so the claim checks and the
//! accepting path are reached; `@ath` in the payload stands for the access
//! token's hash, and bit 1 of the first byte presents that token.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_core::Check;
use palisade_jwt::dpop::{
    DpopError, DpopSettings, DpopVerifier, ProofRequest, ReplayStore, ReplayStoreError, bound_token_matches,
    jwk_thumbprint,
};

const NOW: u64 = 1_700_000_000;
const TOKEN: &str = "access-token";
const HTU: &str = "https://server.example/token";

struct Signer {
    pair: Ed25519KeyPair,
    jwk: String,
    jkt: String,
}

fn signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwk = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}"#);
        let jkt = jwk_thumbprint(&serde_json::from_str(&jwk).unwrap()).unwrap();
        Signer { pair, jwk, jkt }
    })
}

/// Remembers every key for good. The proofs are dated `NOW`, fixed so that
/// a crash reproduces, and long past by the system clock that
/// `MemoryReplayStore` expires its entries with.
#[derive(Default)]
struct Forever(Mutex<HashSet<[u8; 32]>>);

impl ReplayStore for Forever {
    fn first_use(&self, key: &[u8; 32], _expires_at: u64) -> Check<Result<bool, ReplayStoreError>> {
        Check::Ready(Ok(self.0.lock().unwrap().insert(*key)))
    }
}

/// One input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let signed = mode & 1 == 0;
    let proof = if signed {
        let s = signer();
        let (extra, payload) = text.split_once('\n').unwrap_or(("", &text));
        let ath = URL_SAFE_NO_PAD.encode(digest(&SHA256, TOKEN.as_bytes()));
        let payload = payload.replace("@ath", &ath);
        let header = format!(r#"{{"typ":"dpop+jwt","alg":"EdDSA","jwk":{}{extra}}}"#, s.jwk);
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = URL_SAFE_NO_PAD.encode(s.pair.sign(message.as_bytes()));
        format!("{message}.{signature}")
    } else {
        text.into_owned()
    };
    let mut settings = DpopSettings::default();
    settings.replay_store = Arc::new(Forever::default());
    let verifier = DpopVerifier::new(settings).unwrap();
    let mut request = ProofRequest::new("POST", HTU);
    if mode & 2 != 0 {
        request = request.with_access_token(TOKEN);
    }
    let verify = |proof: &str| match verifier.verify(proof, &request, NOW) {
        Check::Ready(r) => r,
        Check::Pending(_) => panic!("the in-memory store answers at once"),
    };
    if let Ok(verified) = verify(&proof) {
        assert_eq!(verify(&proof), Err(DpopError::Replayed));
        assert!(bound_token_matches(&verified.jkt, &verified));
        if signed {
            assert_eq!(verified.jkt, signer().jkt);
        }
    }
}
