//! RFC 9449 DPoP, server side: verifying the proof of possession a client
//! sends in the `DPoP` header.
//!
//! A DPoP proof is a small JWT the client signs, for every request, with a
//! key pair of its own. Its header carries the public key (`jwk`); its
//! claims bind it to one request (`htm`, `htu`), one moment (`iat`), one use
//! (`jti`), at a resource server to one access token (`ath`), and optionally
//! to a nonce the server handed out. An access token bound to the key names
//! the key's RFC 7638 thumbprint in its `cnf.jkt` claim, which
//! [`bound_token_matches`] compares with the proof's.
//!
//! [`DpopVerifier::verify`] runs every check of RFC 9449 §4.3, each refusal
//! with its own [`DpopError`]. The cheap checks come first, then the
//! signature, and last the `jti` is recorded in the [`ReplayStore`], so
//! unsigned junk can never fill the store.
//!
//! ```
//! use std::time::{SystemTime, UNIX_EPOCH};
//!
//! use palisade_jwt::dpop::{DpopError, DpopSettings, DpopVerifier, ProofRequest, bound_token_matches};
//!
//! # async fn check() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = DpopVerifier::new(DpopSettings::default())?;
//!
//! // From the request: `Authorization: DPoP <token>` and the `DPoP` header.
//! let (token, proof, cnf_jkt) = ("eyJhbGciOi...", "not.a.proof", "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
//! let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
//! let request = ProofRequest::new("GET", "https://api.example/orders").with_access_token(token);
//! // At once with the in-memory replay store; a shared one is awaited.
//! match verifier.verify(proof, &request, now).await {
//!     // The token (verified separately) must be bound to the proof's key.
//!     Ok(verified) => assert!(bound_token_matches(cnf_jkt, &verified)),
//!     // 401 with `error="use_dpop_nonce"` and a `DPoP-Nonce` header.
//!     Err(DpopError::UseNonce) => unreachable!("nonces are not required by default"),
//!     // 401 with `error="invalid_dpop_proof"`.
//!     Err(e) => assert_eq!(e.error_code(), "invalid_dpop_proof"),
//! }
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(check())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is checked, in order
//! 1. Size ([`DpopSettings::max_proof_len`]), then form: a compact JWS of
//!    three non-empty parts of strict base64url (no padding, no other
//!    character), header and payload JSON objects in which no member that
//!    a check reads appears twice (others are skipped unread).
//! 2. `typ` is `dpop+jwt`, compared as a media type (RFC 7515 §4.1.9: ASCII
//!    case-insensitive, `application/` optional); no `crit` or `b64`; `alg`
//!    in [`DpopSettings::algorithms`] (never `none` or HMAC).
//! 3. `jwk` is a public key (no `d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`, `k`;
//!    not `oct`) that fits `alg`: RSA of 2048 to 8192 bits for RS*/PS*, EC
//!    P-256 for ES256, P-384 for ES384, OKP Ed25519 for EdDSA. Its members
//!    must be canonical (no leading zero octet, exact coordinate lengths),
//!    so each key has one thumbprint.
//! 4. Claims: `jti` a string of 1 to 256 characters; `htm` equal to the
//!    method, case included; `htu` equal to the request's URI once both are
//!    normalised (query and fragment dropped; scheme and host in lower case;
//!    default port dropped; RFC 3986 §6.2.2 percent-encoding and dot-segment
//!    normalisation); `iat` within [`max_age`](DpopSettings::max_age) in the
//!    past and [`leeway`](DpopSettings::leeway) in the future; `ath` the
//!    base64url SHA-256 of the access token, when one is presented; a valid
//!    `nonce`, when [required](DpopSettings::require_nonce).
//! 5. The signature, with the `jwk`.
//! 6. The `jti` is new for this key ([`ReplayStore::first_use`]).
//!
//! # Caveats
//! - Finding the one `DPoP` header of the request (RFC 9449 §4.3 check 1)
//!   is the caller's job; a value holding a comma or a space is refused as
//!   malformed here.
//! - The default [`MemoryReplayStore`] is per process: behind a load
//!   balancer without affinity, share a store (a [`ReplayStore`] over
//!   Redis, say) or a replayed proof may land on another replica.
//! - [`MemoryReplayStore`] expires its records by the system clock: give
//!   [`DpopVerifier::verify`] the system time too, not a clock of its own.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, digest, hmac, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use palisade_core::Check;
use serde_json::Value;

use self::members::{Claims, Header, Jwk, JwkMember, Member};
use crate::jwks::{Family, family_allows};

mod members;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use self::redis::{RedisReplayStore, RedisReplayStoreBuilder};

/// Longest `jti` accepted, in characters.
const MAX_JTI_CHARS: usize = 256;
/// The largest [`DpopSettings::max_age`]: RFC 9449 §11.1 wants proofs
/// accepted only "for a relatively brief period on the order of seconds or
/// minutes".
const MAX_MAX_AGE: Duration = Duration::from_secs(300);
const MAX_LEEWAY: Duration = Duration::from_secs(60);
const MIN_PROOF_LEN: usize = 1024;
const MAX_PROOF_LEN: usize = 64 * 1024;
/// 8192 bits, the most aws-lc verifies.
const MAX_RSA_OCTETS: usize = 1024;
/// An RSA public exponent of at most 33 bits, as ring and aws-lc accept
/// (65537, `AQAB`, is 3 octets): a longer one is refused before the key is
/// built or kept, so a proof cannot make the key cache hold kilobytes of it.
const MAX_RSA_EXPONENT_OCTETS: usize = 5;

/// Why a DPoP proof was refused. The description is fixed text, safe to
/// send to the client: it never echoes the proof, a claim, a key or the
/// access token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopError {
    /// Longer than [`DpopSettings::max_proof_len`].
    #[error("the DPoP proof is too large")]
    TooLarge,
    /// Not a compact JWS of three non-empty base64url parts whose header and
    /// payload are JSON objects without duplicate members (a comma or a
    /// space, as from several proofs in one header, lands here too).
    #[error("the DPoP proof is malformed")]
    Malformed,
    /// `typ` is missing or not `dpop+jwt` (compared as a media type: ASCII
    /// case-insensitive, an `application/` prefix allowed).
    #[error("the DPoP proof's type is not dpop+jwt")]
    WrongType,
    /// `alg` is `none`, symmetric, unknown or not in
    /// [`DpopSettings::algorithms`].
    #[error("the DPoP proof's algorithm is not accepted")]
    AlgorithmNotAllowed,
    /// `crit` (no extension is understood) or `b64` in the header.
    #[error("the DPoP proof uses a header extension that is not supported")]
    CriticalHeader,
    /// No `jwk` in the header, or one that is not a usable public key: an
    /// unsupported `kty` or curve, members missing or not in their
    /// canonical base64url form, an RSA modulus over 8192 bits.
    #[error("the DPoP proof's key is not valid")]
    InvalidKey,
    /// The `jwk` holds private key members, or is a symmetric (`oct`) key.
    #[error("the DPoP proof's key must be a public key")]
    PrivateKey,
    /// An RSA key shorter than 2048 bits, or with the ROCA fingerprint
    /// (CVE-2017-15361: its private key can be found).
    #[error("the DPoP proof's key is too weak")]
    WeakKey,
    /// `alg` does not fit the key: RS*/PS* need an RSA key, ES256 a P-256
    /// key, ES384 a P-384 key, EdDSA an Ed25519 key; or the `jwk` names
    /// another `alg`.
    #[error("the DPoP proof's algorithm does not fit its key")]
    KeyMismatch,
    /// The signature does not verify with the proof's key.
    #[error("the DPoP proof's signature is not valid")]
    BadSignature,
    /// A required claim is absent.
    #[error("the DPoP proof has no `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or form.
    #[error("the DPoP proof's `{0}` claim is not valid")]
    InvalidClaim(&'static str),
    /// `htm` is not the request's method.
    #[error("the DPoP proof is for another HTTP method")]
    MethodMismatch,
    /// `htu` is not the request's URI.
    #[error("the DPoP proof is for another URI")]
    UriMismatch,
    /// `iat` is further in the past than [`DpopSettings::max_age`].
    #[error("the DPoP proof is too old")]
    TooOld,
    /// `iat` is further in the future than [`DpopSettings::leeway`].
    #[error("the DPoP proof was issued in the future")]
    IssuedInFuture,
    /// `ath` is not the hash of the access token presented with the proof.
    #[error("the DPoP proof is for another access token")]
    AccessTokenMismatch,
    /// A nonce is required and the proof has none, or one that is not (or
    /// no longer) valid. Answer with `error="use_dpop_nonce"` and a fresh
    /// nonce in the `DPoP-Nonce` header (RFC 9449 §8, §9).
    #[error("the DPoP proof must carry a current server nonce")]
    UseNonce,
    /// The proof was accepted before: its `jti` was seen with this key.
    #[error("the DPoP proof has already been used")]
    Replayed,
    /// The proof is signed with another key than the one the access token
    /// is bound to ([`ProofRequest::bound_to`]); not recorded.
    #[error("the DPoP proof's key is not the one the access token is bound to")]
    OtherKey,
    /// The [`ReplayStore`] could not say whether the proof was used before
    /// (a shared store that is unreachable): refused, since it may be a
    /// replay. The store logs why.
    #[error("the DPoP proof could not be checked for replay: the replay store is unavailable")]
    ReplayStoreUnavailable,
    /// `Authorization: DPoP` without a `DPoP` header (the caller finds it).
    #[error("the request has no DPoP proof")]
    MissingProof,
}

impl DpopError {
    /// The `error` parameter of the `WWW-Authenticate: DPoP` challenge for
    /// this refusal: `use_dpop_nonce` for [`DpopError::UseNonce`],
    /// `invalid_dpop_proof` otherwise (RFC 9449 §7.1, §12.2).
    #[must_use]
    pub fn error_code(&self) -> &'static str {
        match self {
            DpopError::UseNonce => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }
}

/// A client's DPoP key (ES256, P-256): signs the proofs that go with its
/// DPoP-bound tokens, to the token endpoint and to resource servers.
///
/// ```
/// use palisade_jwt::dpop::{DpopKey, DpopSettings, DpopVerifier, ProofRequest};
/// let key = DpopKey::generate()?;
/// let proof = key.proof("GET", "https://api.example/orders", Some("the-access-token"), None);
/// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
/// let verifier = DpopVerifier::new(DpopSettings::default())?;
/// let request = ProofRequest::new("GET", "https://api.example/orders").with_access_token("the-access-token");
/// let verified = verifier.verify(&proof, &request, now).into_ready().expect("an in-memory store answers at once");
/// assert_eq!(verified?.jkt, key.thumbprint());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DpopKey {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
    header_b64: String,
    thumbprint: String,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl DpopKey {
    /// A new random key.
    ///
    /// # Errors
    /// [`DpopConfigError::Random`] when the system's generator fails.
    pub fn generate() -> Result<Self, DpopConfigError> {
        let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .map_err(|_| DpopConfigError::Random)?;
        Ok(Self::from_pair(pair))
    }

    /// A P-256 key from its PKCS#8 DER form (as kept between restarts).
    ///
    /// # Errors
    /// [`DpopConfigError::OutOfRange`] when it is not a P-256 PKCS#8 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, DpopConfigError> {
        let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
        )
        .map_err(|_| DpopConfigError::OutOfRange("a DPoP key must be a P-256 key in PKCS#8"))?;
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: aws_lc_rs::signature::EcdsaKeyPair) -> Self {
        use aws_lc_rs::signature::KeyPair as _;
        // The uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..65]),
        );
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
        let thumbprint = jwk_thumbprint(&jwk).unwrap_or_default();
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        Self {
            pair,
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            thumbprint,
        }
    }

    /// The key's RFC 7638 thumbprint: the `jkt` of the tokens bound to it.
    #[must_use]
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A proof for one request: `method` and `htu` (the URI without query
    /// or fragment), `access_token` for a resource server (its `ath`), and
    /// the server's `nonce` when it asked for one.
    #[must_use]
    pub fn proof(&self, method: &str, htu: &str, access_token: Option<&str>, nonce: Option<&str>) -> String {
        let mut jti = [0u8; 16];
        let _ = rand::fill(&mut jti);
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = serde_json::json!({
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "htm": method,
            "htu": htu,
            "iat": iat,
        });
        if let Some(token) = access_token {
            claims["ath"] =
                Value::String(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, token.as_bytes())));
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = Value::String(nonce.to_owned());
        }
        let message = format!(
            "{}.{}",
            self.header_b64,
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .pair
            .sign(&rand::SystemRandom::new(), message.as_bytes())
            .map(|s| URL_SAFE_NO_PAD.encode(s.as_ref()))
            .unwrap_or_default();
        format!("{message}.{signature}")
    }
}

/// Why [`DpopSettings`] or a [`NonceSource`] cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopConfigError {
    /// [`DpopSettings::algorithms`] is empty.
    #[error("the DPoP algorithm allowlist is empty")]
    NoAlgorithm,
    /// An HMAC algorithm in [`DpopSettings::algorithms`]: a proof is signed
    /// with a key only the client holds.
    #[error("{0:?} is symmetric: DPoP proofs are signed with the client's own private key")]
    SymmetricAlgorithm(Algorithm),
    /// A setting out of its range.
    #[error("{0}")]
    OutOfRange(&'static str),
    /// A [`NonceSource`] secret shorter than 32 bytes.
    #[error("a DPoP nonce secret needs at least 32 bytes")]
    WeakNonceSecret,
    /// The system's random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// A shared replay store that cannot be used: a bad URL or setting.
    /// The URL is shown without credentials.
    #[error("DPoP replay store {0}")]
    ReplayStore(String),
    /// A shared replay store that did not answer when connecting at
    /// start-up (it may later). The URL is shown without credentials.
    #[error("DPoP replay store {0}")]
    ReplayStoreUnreachable(String),
}

/// How proofs are checked. Defaults follow RFC 9449 §11.1 (accept a proof
/// only briefly after it was made).
#[derive(Clone)]
#[non_exhaustive]
pub struct DpopSettings {
    /// The signature algorithms a proof may use: RS256, RS384, RS512,
    /// PS256, PS384, PS512, ES256, ES384 and EdDSA. HMAC algorithms are
    /// refused by [`DpopVerifier::new`], `none` is never accepted.
    pub algorithms: Vec<Algorithm>,
    /// How far in the past a proof's `iat` may lie (60 s, at most 5 min).
    /// Also how long a `jti` is remembered: a longer window lets a captured
    /// proof be used longer (though once only) and grows the replay store.
    /// Clients with badly skewed clocks are better served by nonces than by
    /// a longer window.
    pub max_age: Duration,
    /// How far in the future `iat` may lie, for clock skew (5 s, at most
    /// 1 min).
    pub leeway: Duration,
    /// Whether every proof must carry a current server nonce (false). A
    /// nonce stops a client from making proofs in advance (RFC 9449 §11.2).
    pub require_nonce: bool,
    /// Where nonces come from when [`require_nonce`](Self::require_nonce)
    /// holds (none: [`DpopVerifier::new`] makes one with a random key and
    /// [`NonceSource::DEFAULT_WINDOW`]). Give one built with
    /// [`NonceSource::from_secret`] when several replicas must accept each
    /// other's nonces.
    pub nonce_source: Option<NonceSource>,
    /// The largest proof accepted, in bytes (8 KiB, between 1 KiB and
    /// 64 KiB): an 8192-bit RSA proof is about 4 KiB.
    pub max_proof_len: usize,
    /// Where the `jti` of every accepted proof is remembered (a
    /// [`MemoryReplayStore`] of [`MemoryReplayStore::DEFAULT_CAPACITY`]
    /// entries, new for each `DpopSettings::default()` and shared by its
    /// clones). Keep it across a reload, or proofs accepted just before
    /// it can be replayed just after.
    pub replay_store: Arc<dyn ReplayStore>,
}

impl Default for DpopSettings {
    fn default() -> Self {
        Self {
            algorithms: crate::config::ASYMMETRIC.to_vec(),
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
            require_nonce: false,
            nonce_source: None,
            max_proof_len: 8 * 1024,
            replay_store: Arc::new(MemoryReplayStore::default()),
        }
    }
}

impl fmt::Debug for DpopSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopSettings")
            .field("algorithms", &self.algorithms)
            .field("max_age", &self.max_age)
            .field("leeway", &self.leeway)
            .field("require_nonce", &self.require_nonce)
            .field("nonce_source", &self.nonce_source)
            .field("max_proof_len", &self.max_proof_len)
            .field("replay_store", &format_args!("<dyn ReplayStore>"))
            .finish()
    }
}

/// Remembers which proofs were used: the `jti` of every accepted proof,
/// under its key's thumbprint, for as long as the proof could be accepted.
///
/// [`MemoryReplayStore`] answers at once, for one process;
/// `RedisReplayStore` (feature `redis`) is shared by every replica that
/// uses the same Redis, so a proof used at one is refused at all. Implement
/// it over another shared store with an atomic "set if absent, with an
/// expiry".
pub trait ReplayStore: Send + Sync {
    /// Records `key` until `expires_at` (Unix seconds, inclusive) and
    /// answers true when it was not already recorded (or its record has
    /// expired); answers false, recording nothing, for a key seen before:
    /// a replay. A store that must ask another process answers with a
    /// pending [`Check`], and with [`ReplayStoreError`] when it cannot get
    /// an answer (it should log why, without secrets, and bound the wait).
    ///
    /// `key` is SHA-256 of the proof key's RFC 7638 thumbprint followed by
    /// the `jti` (the thumbprint has a fixed length, so no two pairs share
    /// a key): a `jti` reused by another key is not a replay.
    fn first_use(&self, key: &[u8; 32], expires_at: u64) -> Check<Result<bool, ReplayStoreError>>;

    /// Whether other processes share what this store records (the
    /// default); a store of one process says `false`, and an authenticator
    /// using it says at start-up that replicas do not share it.
    fn shared(&self) -> bool {
        true
    }
}

/// Why a [`ReplayStore`] could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayStoreError {
    /// The store did not answer (in time).
    #[error("the DPoP replay store is unavailable")]
    Unavailable,
}

/// A bounded, in-process [`ReplayStore`], cheap under concurrency: the
/// entries are spread over shards, each behind its own lock, by a hash
/// seeded per store (so a client cannot aim all its proofs at one shard).
///
/// Expiry follows the system clock. When a shard is full, its expired
/// entries go first, then the one that expires soonest. Refusing new
/// proofs when full would let anyone lock every client out, since anyone
/// can make validly signed proofs with a key of their own; evicting lets a
/// replay through only for a proof whose record was pushed out, and the
/// soonest-expiring one is the proof with the least life left, so a
/// replayer must both hold a captured proof and outpace the store with
/// more than [`capacity`](Self::capacity) signed proofs within its last
/// seconds.
pub struct MemoryReplayStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
}

#[derive(Default)]
struct Shard {
    expiry: HashMap<[u8; 32], u64, foldhash::fast::RandomState>,
    /// The same entries, soonest expiry first.
    by_expiry: BinaryHeap<Reverse<(u64, [u8; 32])>>,
}

impl Shard {
    /// Drops the entries that expired before `now`.
    fn purge(&mut self, now: u64) {
        while let Some(&Reverse((expires_at, key))) = self.by_expiry.peek()
            && expires_at < now
        {
            self.by_expiry.pop();
            self.expiry.remove(&key);
        }
    }

    /// Drops the entry that expires soonest.
    fn evict_one(&mut self) {
        if let Some(Reverse((_, key))) = self.by_expiry.pop() {
            self.expiry.remove(&key);
        }
    }
}

impl MemoryReplayStore {
    /// The default bound: 100 000 entries, a few megabytes, which at the
    /// default 65 s a `jti` is remembered (`max_age` plus `leeway`) covers
    /// about 1 500 proofs per second before the oldest records are evicted.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A store of [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) entries.
    #[must_use]
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A store of about `capacity` entries (at least one; rounded up to a
    /// multiple of its shard count, 16 from 16 384 entries, else one).
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let shards = if capacity >= 16 * 1024 { 16 } else { 1 };
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(shards),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The most entries the store holds.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// The entries held now, expired ones not yet dropped included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).expiry.len())
            .sum()
    }

    /// Whether the store holds no entry.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn first_use_at(&self, key: &[u8; 32], expires_at: u64, now: u64) -> bool {
        let hash = self.hasher.hash_one(key);
        let shard = usize::try_from(hash >> 60).unwrap_or(0) % self.shards.len();
        let mut shard = self.shards[shard].lock().unwrap_or_else(PoisonError::into_inner);
        if shard.expiry.get(key).is_some_and(|&e| e >= now) {
            return false;
        }
        // Also drops an expired record of this very key, so every entry is
        // in both the map and the heap exactly once.
        shard.purge(now);
        if shard.expiry.len() >= self.per_shard {
            shard.evict_one();
        }
        shard.expiry.insert(*key, expires_at);
        shard.by_expiry.push(Reverse((expires_at, *key)));
        true
    }
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReplayStore")
            .field("capacity", &self.capacity())
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl ReplayStore for MemoryReplayStore {
    /// One process's.
    fn shared(&self) -> bool {
        false
    }

    fn first_use(&self, key: &[u8; 32], expires_at: u64) -> Check<Result<bool, ReplayStoreError>> {
        Check::Ready(Ok(self.first_use_at(key, expires_at, unix_now())))
    }
}

/// Stateless server nonces (RFC 9449 §8): HMAC-SHA256 of a time window
/// under a secret key, base64url. A nonce is valid during the window it was
/// issued in and the next one, so for between one and two windows.
///
/// Nothing is stored per client: any process holding the same secret
/// ([`NonceSource::from_secret`]) accepts the nonces of the others.
/// Cloning shares the key; `Debug` leaves it out.
#[derive(Clone)]
pub struct NonceSource {
    key: Arc<hmac::Key>,
    /// Names the key without showing it (a tag under it of a context of
    /// its own): two sources with the same secret have the same `id`.
    id: [u8; TAG_LEN],
    window: u64,
}

/// Bytes of the window number, then of the truncated tag, in a nonce.
const WINDOW_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Base64url characters of a nonce.
const NONCE_CHARS: usize = (WINDOW_LEN + TAG_LEN) * 4 / 3;
/// Binds the tags to this use of the secret.
const NONCE_CONTEXT: &[u8] = b"palisade dpop nonce v1\0";
/// The context of a source's `id`.
const ID_CONTEXT: &[u8] = b"palisade dpop nonce key id v1\0";

impl NonceSource {
    /// 5 minutes: a nonce is valid for 5 to 10 minutes, long enough that a
    /// client sending a request every few minutes rarely needs the extra
    /// round trip of a `use_dpop_nonce` answer, short enough to keep
    /// proofs made in advance useless soon.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

    /// A source with a random key, for one process.
    ///
    /// # Errors
    /// [`DpopConfigError::OutOfRange`] for a window under 1 s or over 1 h;
    /// [`DpopConfigError::Random`] when the system's random generator fails.
    pub fn generate(window: Duration) -> Result<Self, DpopConfigError> {
        let window = window_secs(window)?;
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rand::SystemRandom::new())
            .map_err(|_| DpopConfigError::Random)?;
        Ok(Self::with_key(key, window))
    }

    fn with_key(key: hmac::Key, window: u64) -> Self {
        let mut id = [0; TAG_LEN];
        id.copy_from_slice(&hmac::sign(&key, ID_CONTEXT).as_ref()[..TAG_LEN]);
        Self {
            key: Arc::new(key),
            id,
            window,
        }
    }

    /// A source whose nonces every process with the same `secret` (random,
    /// at least 32 bytes) accepts.
    ///
    /// # Errors
    /// [`DpopConfigError::WeakNonceSecret`] for a secret under 32 bytes;
    /// [`DpopConfigError::OutOfRange`] for a window under 1 s or over 1 h.
    pub fn from_secret(secret: &[u8], window: Duration) -> Result<Self, DpopConfigError> {
        if secret.len() < 32 {
            return Err(DpopConfigError::WeakNonceSecret);
        }
        let window = window_secs(window)?;
        Ok(Self::with_key(hmac::Key::new(hmac::HMAC_SHA256, secret), window))
    }

    /// The nonce to hand out now (the `DPoP-Nonce` header).
    #[must_use]
    pub fn current(&self) -> String {
        self.current_at(unix_now())
    }

    /// The nonce to hand out at `now_unix` (Unix seconds).
    #[must_use]
    pub fn current_at(&self, now_unix: u64) -> String {
        let window = now_unix / self.window;
        let mut bytes = [0; WINDOW_LEN + TAG_LEN];
        bytes[..WINDOW_LEN].copy_from_slice(&window.to_be_bytes());
        bytes[WINDOW_LEN..].copy_from_slice(&self.tag(window));
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Whether `nonce` is one this source handed out in the current window
    /// or the one before.
    #[must_use]
    pub fn check(&self, nonce: &str) -> bool {
        self.check_at(nonce, unix_now())
    }

    /// Whether `nonce` is valid at `now_unix` (Unix seconds). The tag is
    /// compared in constant time.
    #[must_use]
    pub fn check_at(&self, nonce: &str, now_unix: u64) -> bool {
        self.age_at(nonce, now_unix).is_some()
    }

    /// For a valid `nonce` at `now_unix`, whether it is of the window
    /// before the current one (valid for less than one more window);
    /// `None` for a nonce that is not valid.
    fn age_at(&self, nonce: &str, now_unix: u64) -> Option<NonceAge> {
        if nonce.len() != NONCE_CHARS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        let (window, tag) = bytes.split_first_chunk::<WINDOW_LEN>()?;
        let window = u64::from_be_bytes(*window);
        let current = now_unix / self.window;
        let age = if window == current {
            NonceAge::Current
        } else if window.checked_add(1) == Some(current) {
            NonceAge::Previous
        } else {
            return None;
        };
        constant_time::verify_slices_are_equal(&self.tag(window), tag)
            .is_ok()
            .then_some(age)
    }

    fn tag(&self, window: u64) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(NONCE_CONTEXT);
        ctx.update(&window.to_be_bytes());
        let full = ctx.sign();
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }
}

/// Of which window a valid nonce is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NonceAge {
    Current,
    Previous,
}

impl fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceSource")
            .field("window", &Duration::from_secs(self.window))
            .finish_non_exhaustive()
    }
}

fn window_secs(window: Duration) -> Result<u64, DpopConfigError> {
    let secs = window.as_secs();
    if (1..=3600).contains(&secs) {
        Ok(secs)
    } else {
        Err(DpopConfigError::OutOfRange(
            "the DPoP nonce window must be between 1 s and 1 h",
        ))
    }
}

/// The request a proof must be for.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct ProofRequest<'a> {
    /// The HTTP method, as received (`GET`); compared with `htm` exactly,
    /// case included (RFC 9110 methods are case-sensitive).
    pub method: &'a str,
    /// The request's URI as the server sees it:
    /// `scheme://authority/path`, the scheme and host the client used
    /// (behind a proxy, the external ones). A query or fragment is ignored.
    pub htu: &'a str,
    /// The access token presented with the proof (`Authorization: DPoP`),
    /// whose hash the proof must then carry in `ath`. None at a token
    /// endpoint.
    pub access_token: Option<&'a str>,
    /// The SHA-256 of `access_token`, when the caller keeps it (a cached
    /// token's).
    access_token_sha256: Option<[u8; 32]>,
    /// The thumbprint the access token is bound to (`cnf.jkt`), when the
    /// caller knows it.
    bound_jkt: Option<&'a str>,
}

impl<'a> ProofRequest<'a> {
    /// A request with no access token.
    #[must_use]
    pub fn new(method: &'a str, htu: &'a str) -> Self {
        Self {
            method,
            htu,
            access_token: None,
            access_token_sha256: None,
            bound_jkt: None,
        }
    }

    /// The same request, for an access token bound to the key of
    /// thumbprint `jkt` (its `cnf.jkt`): a proof signed with another key is
    /// refused ([`DpopError::OtherKey`]) before it is recorded, so that a
    /// holder of the token without its key, signing proofs with keys of
    /// their own, cannot fill the replay store (evicting others' records)
    /// or the key cache.
    #[must_use]
    pub fn bound_to(mut self, jkt: &'a str) -> Self {
        self.bound_jkt = Some(jkt);
        self
    }

    /// The same request, presenting `access_token`.
    #[must_use]
    pub fn with_access_token(mut self, access_token: &'a str) -> Self {
        self.access_token = Some(access_token);
        self.access_token_sha256 = None;
        self
    }

    /// The same request, presenting `access_token` whose SHA-256 the
    /// caller already has: it must be `sha256(access_token)`.
    #[must_use]
    pub(crate) fn with_hashed_access_token(mut self, access_token: &'a str, sha256: [u8; 32]) -> Self {
        self.access_token = Some(access_token);
        self.access_token_sha256 = Some(sha256);
        self
    }
}

impl fmt::Debug for ProofRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProofRequest")
            .field("method", &self.method)
            .field("htu", &self.htu)
            .field("access_token", &self.access_token.map(|_| "<redacted>"))
            .finish()
    }
}

/// A proof that passed every check, built only by [`DpopVerifier::verify`].
/// `Debug` leaves the `jti` out.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedProof {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key, base64url
    /// without padding: what a bound token's `cnf.jkt` must be.
    pub jkt: String,
    /// The proof's unique identifier.
    pub jti: String,
    /// When the client made the proof (Unix seconds, a fraction dropped).
    pub iat: u64,
    /// When nonces are required and the proof's nonce is of the window
    /// before the current one (valid for less than one more window): the
    /// current nonce, for the answer's `DPoP-Nonce` header (RFC 9449
    /// §8.2), so that the client moves on to it before its own stops
    /// working, without a `use_dpop_nonce` refusal and a retry.
    pub next_nonce: Option<String>,
}

impl fmt::Debug for VerifiedProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedProof")
            .field("jkt", &self.jkt)
            .field("iat", &self.iat)
            .finish_non_exhaustive()
    }
}

/// Whether a token's `cnf.jkt` claim names the key of `proof`, compared in
/// constant time.
#[must_use]
pub fn bound_token_matches(jkt_claim: &str, proof: &VerifiedProof) -> bool {
    constant_time::verify_slices_are_equal(jkt_claim.as_bytes(), proof.jkt.as_bytes()).is_ok()
}

/// The RFC 7638 SHA-256 thumbprint of a public JWK, base64url without
/// padding: the required members only (`e`, `kty`, `n` for RSA; `crv`,
/// `kty`, `x`, `y` for EC; `crv`, `kty`, `x` for OKP), in lexicographic
/// order, without whitespace. The values are taken as they are; nothing
/// checks that they make a usable key.
///
/// # Errors
/// [`DpopError::InvalidKey`] when `jwk` is not an object, its `kty` is none
/// of those three, or a required member is missing or not a string.
pub fn jwk_thumbprint(jwk: &Value) -> Result<String, DpopError> {
    let Value::Object(jwk) = jwk else {
        return Err(DpopError::InvalidKey);
    };
    thumbprint(|name| jwk.get(name).and_then(Value::as_str))
}

/// The thumbprint of the key whose required members `member` gives.
fn thumbprint<'k>(member: impl Fn(&str) -> Option<&'k str>) -> Result<String, DpopError> {
    let mut canonical = String::with_capacity(768);
    push_canonical(&mut canonical, member)?;
    Ok(URL_SAFE_NO_PAD.encode(sha256(&[canonical.as_bytes()])))
}

/// Appends the key's required members as RFC 7638 orders and writes them:
/// the input of its thumbprint.
fn push_canonical<'k>(
    canonical: &mut String,
    member: impl Fn(&str) -> Option<&'k str>,
) -> Result<(), DpopError> {
    let required: &[&str] = match member("kty") {
        Some("RSA") => &["e", "kty", "n"],
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => return Err(DpopError::InvalidKey),
    };
    canonical.push('{');
    for (i, name) in required.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        let value = member(name).ok_or(DpopError::InvalidKey)?;
        canonical.push('"');
        canonical.push_str(name);
        canonical.push_str("\":");
        push_json_string(canonical, value);
    }
    canonical.push('}');
    Ok(())
}

/// `s` as a JSON string, escaped as `serde_json` writes it.
fn push_json_string(out: &mut String, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(&Value::from(s).to_string());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Verifies DPoP proofs. Cheap to clone (clones share the replay store).
#[derive(Clone)]
pub struct DpopVerifier {
    settings: DpopSettings,
    nonces: Option<NonceSource>,
    max_age: u64,
    leeway: u64,
    /// Keys of recent proofs, shared by clones.
    keys: Arc<KeyCache>,
}

impl fmt::Debug for DpopVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopVerifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl DpopVerifier {
    /// A verifier for these settings, checked.
    ///
    /// # Errors
    /// - [`DpopConfigError::NoAlgorithm`] for an empty allowlist,
    ///   [`DpopConfigError::SymmetricAlgorithm`] for an HMAC algorithm in it.
    /// - [`DpopConfigError::OutOfRange`] for a `max_age` under 1 s or over
    ///   5 min, a `leeway` over 1 min, or a `max_proof_len` under 1 KiB or
    ///   over 64 KiB.
    /// - [`DpopConfigError::Random`] when nonces are required, no source is
    ///   given, and the system's random generator fails.
    pub fn new(settings: DpopSettings) -> Result<Self, DpopConfigError> {
        if settings.algorithms.is_empty() {
            return Err(DpopConfigError::NoAlgorithm);
        }
        if let Some(&alg) = settings
            .algorithms
            .iter()
            .find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(DpopConfigError::SymmetricAlgorithm(alg));
        }
        if settings.max_age < Duration::from_secs(1) || settings.max_age > MAX_MAX_AGE {
            return Err(DpopConfigError::OutOfRange(
                "the DPoP max_age must be between 1 s and 5 min",
            ));
        }
        if settings.leeway > MAX_LEEWAY {
            return Err(DpopConfigError::OutOfRange(
                "the DPoP leeway must be at most 1 min",
            ));
        }
        if !(MIN_PROOF_LEN..=MAX_PROOF_LEN).contains(&settings.max_proof_len) {
            return Err(DpopConfigError::OutOfRange(
                "the DPoP max_proof_len must be between 1 KiB and 64 KiB",
            ));
        }
        let nonces = match (settings.require_nonce, &settings.nonce_source) {
            (false, _) => None,
            (true, Some(source)) => Some(source.clone()),
            (true, None) => Some(NonceSource::generate(NonceSource::DEFAULT_WINDOW)?),
        };
        Ok(Self {
            max_age: settings.max_age.as_secs(),
            leeway: settings.leeway.as_secs(),
            settings,
            nonces,
            keys: Arc::default(),
        })
    }

    /// The settings this verifier checks with.
    #[must_use]
    pub fn settings(&self) -> &DpopSettings {
        &self.settings
    }

    /// Whether `self` and `other` accept the same proofs and remember them
    /// in the same store (a reload that changed nothing).
    pub(crate) fn same_as(&self, other: &DpopVerifier) -> bool {
        let (a, b) = (&self.settings, &other.settings);
        a.algorithms == b.algorithms
            && a.max_age == b.max_age
            && a.leeway == b.leeway
            && a.max_proof_len == b.max_proof_len
            && Arc::ptr_eq(&a.replay_store, &b.replay_store)
            && match (&self.nonces, &other.nonces) {
                (None, None) => true,
                (Some(x), Some(y)) => x.id == y.id && x.window == y.window,
                _ => false,
            }
    }

    /// The nonce source when nonces are required: its
    /// [`current`](NonceSource::current) nonce goes in the `DPoP-Nonce`
    /// header of a [`DpopError::UseNonce`] answer (and may go in any other
    /// answer, so clients keep a fresh one).
    #[must_use]
    pub fn nonce_source(&self) -> Option<&NonceSource> {
        self.nonces.as_ref()
    }

    /// Checks `proof`, the value of the request's one `DPoP` header, for
    /// `req` at `now_unix` (Unix seconds, from the system clock the replay
    /// store uses too), and records it as used. Ready at once but for a
    /// proof that passed every other check and goes to a shared replay
    /// store.
    ///
    /// # Errors
    /// The first check that fails, as a [`DpopError`]; a proof that fails is
    /// not recorded.
    pub fn verify(
        &self,
        proof: &str,
        req: &ProofRequest<'_>,
        now_unix: u64,
    ) -> Check<Result<VerifiedProof, DpopError>> {
        let (replay_key, expires_at, verified) = match self.check(proof, req, now_unix) {
            Ok(checked) => checked,
            Err(e) => return Check::Ready(Err(e)),
        };
        let recorded = |first: Result<bool, ReplayStoreError>| match first {
            Ok(true) => Ok(verified),
            Ok(false) => Err(DpopError::Replayed),
            Err(ReplayStoreError::Unavailable) => Err(DpopError::ReplayStoreUnavailable),
        };
        match self.settings.replay_store.first_use(&replay_key, expires_at) {
            Check::Ready(first) => Check::Ready(recorded(first)),
            Check::Pending(first) => Check::pending(async move { recorded(first.await) }),
        }
    }

    /// Every check but the replay: the proof, and its replay store key and
    /// expiry.
    fn check(
        &self,
        proof: &str,
        req: &ProofRequest<'_>,
        now_unix: u64,
    ) -> Result<([u8; 32], u64, VerifiedProof), DpopError> {
        if proof.len() > self.settings.max_proof_len {
            return Err(DpopError::TooLarge);
        }
        if !proof
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(DpopError::Malformed);
        }
        let mut parts = proof.split('.');
        let (Some(h), Some(p), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DpopError::Malformed);
        };
        if h.is_empty() || p.is_empty() || signature.is_empty() {
            return Err(DpopError::Malformed);
        }
        let header_json = URL_SAFE_NO_PAD.decode(h).map_err(|_| DpopError::Malformed)?;
        let header: Header<'_> = members::parse(&header_json).ok_or(DpopError::Malformed)?;
        let alg = self.check_header(&header)?;
        let (key, unknown) = proof_key(&header, alg, &self.keys)?;
        let claims_json = URL_SAFE_NO_PAD.decode(p).map_err(|_| DpopError::Malformed)?;
        let claims: Claims<'_> = members::parse(&claims_json).ok_or(DpopError::Malformed)?;
        let checked = self.check_claims(&claims, req, now_unix)?;
        let message = &proof[..h.len() + 1 + p.len()];
        if !crate::authenticator::signature_valid(signature, message.as_bytes(), &key.key, alg) {
            return Err(DpopError::BadSignature);
        }
        // Kept, and recorded last, only for a signed proof of the key the
        // token is bound to: junk, or proofs of keys of a token's thief,
        // never fill the key cache (emptying it of the keys of clients in
        // use) or the replay store.
        if let Some(jkt) = req.bound_jkt
            && constant_time::verify_slices_are_equal(jkt.as_bytes(), key.jkt.as_bytes()).is_err()
        {
            return Err(DpopError::OtherKey);
        }
        if let Some(id) = unknown {
            self.keys.insert(id, Arc::clone(&key));
        }
        let replay_key = sha256(&[key.jkt.as_bytes(), checked.jti.as_bytes()]);
        let expires_at = checked
            .iat
            .saturating_add(self.max_age)
            .saturating_add(self.leeway);
        Ok((
            replay_key,
            expires_at,
            VerifiedProof {
                jkt: key.jkt.clone(),
                jti: checked.jti,
                iat: checked.iat,
                next_nonce: checked.next_nonce,
            },
        ))
    }

    /// `typ`, `crit`, `b64` and `alg`: the algorithm, allowed.
    fn check_header(&self, header: &Header<'_>) -> Result<Algorithm, DpopError> {
        // A media type: case-insensitive, `application/` optional (RFC 7515 §4.1.9).
        let Some(typ) = header.typ.as_ref().and_then(Member::as_str) else {
            return Err(DpopError::WrongType);
        };
        if !crate::token::typ_is(typ, "dpop+jwt") {
            return Err(DpopError::WrongType);
        }
        if header.crit.0 || header.b64.0 {
            return Err(DpopError::CriticalHeader);
        }
        let Some(alg) = header.alg.as_ref().and_then(Member::as_str) else {
            return Err(DpopError::Malformed);
        };
        // `none` and unknown names do not parse; HMAC ones are never allowed.
        match alg.parse::<Algorithm>() {
            Ok(alg) if self.settings.algorithms.contains(&alg) => Ok(alg),
            _ => Err(DpopError::AlgorithmNotAllowed),
        }
    }

    /// Every claim check that needs no key: `jti`, `htm`, `htu`, `iat`,
    /// `ath`, `nonce`.
    fn check_claims(
        &self,
        claims: &Claims<'_>,
        req: &ProofRequest<'_>,
        now: u64,
    ) -> Result<CheckedClaims, DpopError> {
        let jti = match &claims.jti {
            None => return Err(DpopError::MissingClaim("jti")),
            Some(Member::Str(jti)) if !jti.is_empty() && jti.chars().count() <= MAX_JTI_CHARS => jti,
            Some(_) => return Err(DpopError::InvalidClaim("jti")),
        };
        match &claims.htm {
            None => return Err(DpopError::MissingClaim("htm")),
            Some(Member::Str(htm)) if htm == req.method => {}
            Some(Member::Str(_)) => return Err(DpopError::MethodMismatch),
            Some(_) => return Err(DpopError::InvalidClaim("htm")),
        }
        let htu = match &claims.htu {
            None => return Err(DpopError::MissingClaim("htu")),
            Some(Member::Str(htu)) => normalize_htu(htu).ok_or(DpopError::InvalidClaim("htu"))?,
            Some(_) => return Err(DpopError::InvalidClaim("htu")),
        };
        if normalize_htu(req.htu).is_none_or(|expected| expected != htu) {
            return Err(DpopError::UriMismatch);
        }
        let iat = match &claims.iat {
            None => return Err(DpopError::MissingClaim("iat")),
            Some(Member::Num(n)) => {
                palisade_core::syntax::numeric_date(n).ok_or(DpopError::InvalidClaim("iat"))?
            }
            Some(_) => return Err(DpopError::InvalidClaim("iat")),
        };
        if iat.saturating_add(self.max_age) < now {
            return Err(DpopError::TooOld);
        }
        if iat > now.saturating_add(self.leeway) {
            return Err(DpopError::IssuedInFuture);
        }
        if let Some(token) = req.access_token {
            let expected = req
                .access_token_sha256
                .unwrap_or_else(|| sha256(&[token.as_bytes()]));
            // One spare byte: the decoder's size estimate for 43 characters is 33.
            let mut ath_bytes = [0_u8; 33];
            match &claims.ath {
                None => return Err(DpopError::MissingClaim("ath")),
                Some(Member::Str(ath))
                    if ath.len() == 43
                        && URL_SAFE_NO_PAD.decode_slice(ath.as_bytes(), &mut ath_bytes) == Ok(32)
                        && constant_time::verify_slices_are_equal(&ath_bytes[..32], &expected).is_ok() => {}
                Some(Member::Str(_)) => return Err(DpopError::AccessTokenMismatch),
                Some(_) => return Err(DpopError::InvalidClaim("ath")),
            }
        }
        let mut next_nonce = None;
        if let Some(nonces) = &self.nonces {
            match &claims.nonce {
                Some(Member::Str(nonce)) => match nonces.age_at(nonce, now) {
                    Some(NonceAge::Current) => {}
                    Some(NonceAge::Previous) => next_nonce = Some(nonces.current_at(now)),
                    None => return Err(DpopError::UseNonce),
                },
                _ => return Err(DpopError::UseNonce),
            }
        }
        Ok(CheckedClaims {
            jti: jti.clone().into_owned(),
            iat,
            next_nonce,
        })
    }
}

struct CheckedClaims {
    jti: String,
    iat: u64,
    next_nonce: Option<String>,
}

/// The proof's public key, checked for its algorithm, and its thumbprint.
struct ProofKey {
    key: DecodingKey,
    jkt: String,
}

/// The header's `jwk`: a public key of a supported type that fits `alg`;
/// with its cache id when it was built now, to be kept once the proof is
/// found signed with it.
fn proof_key(
    header: &Header<'_>,
    alg: Algorithm,
    keys: &KeyCache,
) -> Result<(Arc<ProofKey>, Option<String>), DpopError> {
    let Some(JwkMember::Object(jwk)) = &header.jwk else {
        return Err(DpopError::InvalidKey);
    };
    if jwk.has_private_member() {
        return Err(DpopError::PrivateKey);
    }
    let kty = string_member(jwk, "kty")?;
    if kty == "oct" {
        return Err(DpopError::PrivateKey);
    }
    if let Some(named) = &jwk.alg
        && named.as_str().and_then(|a| a.parse::<Algorithm>().ok()) != Some(alg)
    {
        return Err(DpopError::KeyMismatch);
    }
    // The algorithm and the members the thumbprint covers, which are all
    // the key is built from: a client signs its proofs with one key, so it
    // is built, checked and hashed once.
    let name = alg_name(alg);
    let mut id = String::with_capacity(160);
    id.push_str(name.unwrap_or_default());
    let members = id.len();
    push_canonical(&mut id, |name| jwk.get(name))?;
    if name.is_some()
        && let Some(known) = keys.get(&id)
    {
        return Ok((known, None));
    }
    let key = match kty {
        "RSA" => {
            if !family_allows(Family::Rsa, alg) {
                return Err(DpopError::KeyMismatch);
            }
            let n = unsigned(string_member(jwk, "n")?)?;
            let e = unsigned(string_member(jwk, "e")?)?;
            if n.len() > MAX_RSA_OCTETS || e.len() > MAX_RSA_EXPONENT_OCTETS {
                return Err(DpopError::InvalidKey);
            }
            // Under 2048 bits, or made by the library of ROCA (CVE-2017-15361).
            if crate::key_quality::check_rsa_modulus(&n).is_err() {
                return Err(DpopError::WeakKey);
            }
            DecodingKey::from_rsa_raw_components(&n, &e)
        }
        "EC" => {
            let (fits, len) = match string_member(jwk, "crv")? {
                "P-256" => (Algorithm::ES256, 32),
                "P-384" => (Algorithm::ES384, 48),
                _ => return Err(DpopError::InvalidKey),
            };
            if alg != fits {
                return Err(DpopError::KeyMismatch);
            }
            let (x, y) = (string_member(jwk, "x")?, string_member(jwk, "y")?);
            // Decoded (strictly) by `from_ec_components`: the length is enough here.
            if x.len() != b64_len(len) || y.len() != b64_len(len) {
                return Err(DpopError::InvalidKey);
            }
            DecodingKey::from_ec_components(x, y).map_err(|_| DpopError::InvalidKey)?
        }
        "OKP" => {
            if string_member(jwk, "crv")? != "Ed25519" {
                return Err(DpopError::InvalidKey);
            }
            if alg != Algorithm::EdDSA {
                return Err(DpopError::KeyMismatch);
            }
            let x = string_member(jwk, "x")?;
            if x.len() != b64_len(32) {
                return Err(DpopError::InvalidKey);
            }
            DecodingKey::from_ed_components(x).map_err(|_| DpopError::InvalidKey)?
        }
        _ => return Err(DpopError::InvalidKey),
    };
    let key = Arc::new(ProofKey {
        key,
        jkt: URL_SAFE_NO_PAD.encode(sha256(&[&id.as_bytes()[members..]])),
    });
    // Kept once the proof's signature is checked ([`DpopVerifier::check`]).
    Ok((key, name.is_some().then_some(id)))
}

/// The name of a JWS algorithm, as a key of [`KeyCache`] (none for one
/// added to `jsonwebtoken` later: its keys are not kept).
fn alg_name(alg: Algorithm) -> Option<&'static str> {
    Some(match alg {
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        _ => return None,
    })
}

/// The keys of recent proofs, built and checked, by algorithm and the
/// members their thumbprint covers. Bounded: when full, it starts over.
#[derive(Default)]
struct KeyCache(Mutex<HashMap<Box<str>, Arc<ProofKey>, foldhash::fast::RandomState>>);

impl KeyCache {
    /// The most keys held (about 300 bytes each, RSA ones about 600).
    const MAX: usize = 4096;

    fn get(&self, id: &str) -> Option<Arc<ProofKey>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn insert(&self, id: String, key: Arc<ProofKey>) {
        let mut keys = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= Self::MAX {
            keys.clear();
        }
        keys.insert(id.into_boxed_str(), key);
    }
}

/// A Base64urlUInt (RFC 7518 §2): strict base64url, non-empty, no leading
/// zero octet, so each key has one spelling and one thumbprint.
fn unsigned(b64: &str) -> Result<Vec<u8>, DpopError> {
    match URL_SAFE_NO_PAD.decode(b64) {
        Ok(bytes) if bytes.first().is_some_and(|&b| b != 0) => Ok(bytes),
        _ => Err(DpopError::InvalidKey),
    }
}

/// The length of `n` octets in unpadded base64url.
const fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

fn string_member<'k>(jwk: &'k Jwk<'_>, name: &str) -> Result<&'k str, DpopError> {
    jwk.get(name).ok_or(DpopError::InvalidKey)
}

/// A NumericDate as whole Unix seconds: a non-negative integer, or a finite
/// non-negative number whose fraction is dropped.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `uri` without its query and fragment, normalised as RFC 9449 §4.3 asks
/// (RFC 3986 §6.2.2 syntax-based and §6.2.3 scheme-based normalisation):
/// scheme and host in lower case, the default port and an empty one
/// dropped, an empty path as `/`, percent-escapes in upper case and those
/// of unreserved characters decoded, dot segments removed. `None` when it
/// is not an absolute `http` or `https` URI with a host, has user
/// information, a bad port or escape, or characters no URI holds (an
/// internationalised host must be in its ASCII form).
fn normalize_htu(uri: &str) -> Option<Cow<'_, str>> {
    let uri = uri.split('#').next().unwrap_or_default();
    let uri = uri.split('?').next().unwrap_or_default();
    if is_normal_htu(uri) {
        return Some(Cow::Borrowed(uri));
    }
    normalize_htu_fully(uri).map(Cow::Owned)
}

/// [`normalize_htu`] of a URI without query and fragment, step by step.
fn normalize_htu_fully(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = split_port(authority)?;
    let mut out = String::with_capacity(uri.len() + 1);
    out.push_str(&scheme);
    out.push_str("://");
    if let Some(literal) = host.strip_prefix('[') {
        // An IP literal: hexadecimal digits, colons and dots.
        let literal = literal.strip_suffix(']')?;
        if literal.is_empty()
            || !literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        out.push('[');
        out.push_str(&literal.to_ascii_lowercase());
        out.push(']');
    } else {
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| is_unreserved(b) || is_sub_delim(b) || b == b'%')
        {
            return None;
        }
        push_normalized(&mut out, host, true)?;
    }
    if let Some(port) = port
        && port != default_port
    {
        out.push(':');
        out.push_str(&port.to_string());
    }
    let mut normalized = String::with_capacity(path.len());
    push_normalized(&mut normalized, path, false)?;
    let path = remove_dot_segments(&normalized);
    out.push_str(if path.is_empty() { "/" } else { &path });
    Some(out)
}

/// Whether `uri` (without query and fragment) is already in the form
/// [`normalize_htu`] gives, as most are: `http` or `https` in lower case, a
/// host of lower-case letters, digits, `.` and `-`, no port or another than
/// the default (without leading zero), a path of plain characters (no
/// escape) without dot segments.
fn is_normal_htu(uri: &str) -> bool {
    let (rest, default_port) = if let Some(r) = uri.strip_prefix("https://") {
        (r, 443)
    } else if let Some(r) = uri.strip_prefix("http://") {
        (r, 80)
    } else {
        return false;
    };
    let Some(slash) = rest.find('/') else {
        return false;
    };
    let (authority, path) = rest.split_at(slash);
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let port_ok = port.is_none_or(|p| {
        !p.starts_with('0')
            && p.parse::<u16>()
                .is_ok_and(|n| n != default_port && n.to_string() == p)
    });
    let path_ok = path
        .bytes()
        .all(|b| is_unreserved(b) || is_sub_delim(b) || matches!(b, b'/' | b':' | b'@'))
        && path.split('/').all(|segment| segment != "." && segment != "..");
    host_ok && port_ok && path_ok
}

/// Splits `host[:port]`; `None` for user information, a port that is not
/// a number below 65536, or a colon outside an IP literal.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.contains('@') {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let (host, rest) = authority.split_at(end);
        if rest.is_empty() {
            (host, None)
        } else {
            (host, Some(rest.strip_prefix(':')?))
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// Appends `s` with every percent-escape in upper case and those of
/// unreserved characters decoded (RFC 3986 §6.2.2.1, §6.2.2.2), in lower
/// case when `lower` (a host). `None` for a `%` not followed by two
/// hexadecimal digits or a character outside a URI's.
fn push_normalized(out: &mut String, s: &str, lower: bool) -> Option<()> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let case = |b: u8| char::from(if lower { b.to_ascii_lowercase() } else { b });
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            let decoded = (hi << 4) | lo;
            if is_unreserved(decoded) {
                out.push(case(decoded));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(hi)]));
                out.push(char::from(HEX[usize::from(lo)]));
            }
            i += 3;
        } else {
            if !(is_unreserved(b) || is_sub_delim(b) || b":/?#[]@".contains(&b)) {
                return None;
            }
            out.push(case(b));
            i += 1;
        }
    }
    Some(())
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// RFC 3986 §5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output: Vec<&str> = Vec::new();
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            output.pop();
        } else if input == "/.." {
            input = "/";
            output.pop();
        } else if input == "." || input == ".." {
            input = "";
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            output.push(&input[..end]);
            input = &input[end..];
        }
    }
    output.concat()
}

#[cfg(test)]
mod tests {
    impl DpopVerifier {
        /// `verify` with the in-memory store, which answers at once.
        fn verify_now(
            &self,
            proof: &str,
            req: &ProofRequest<'_>,
            now: u64,
        ) -> Result<VerifiedProof, DpopError> {
            self.verify(proof, req, now)
                .into_ready()
                .unwrap_or_else(|_| panic!("the memory store answers at once"))
        }
    }

    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::json;

    use super::*;

    const TOKEN: &str = "an-access-token";
    const HTU: &str = "https://api.example/orders";

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn now() -> u64 {
        unix_now()
    }

    fn fresh_jti() -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!("jti-{}", NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn rsa_pair(which: usize) -> &'static aws_lc_rs::rsa::KeyPair {
        static PAIRS: [OnceLock<aws_lc_rs::rsa::KeyPair>; 2] = [OnceLock::new(), OnceLock::new()];
        PAIRS[which].get_or_init(|| {
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key generation")
        })
    }

    enum Material {
        Rsa(&'static aws_lc_rs::rsa::KeyPair),
        Ec(EcdsaKeyPair),
        Ed(Ed25519KeyPair),
    }

    /// A client's key pair, its public JWK and the algorithm it signs with.
    struct TestKey {
        material: Material,
        alg: Algorithm,
        jwk: Value,
    }

    impl TestKey {
        fn rsa(alg: Algorithm) -> Self {
            Self::rsa_pair(0, alg)
        }

        fn other_rsa() -> Self {
            Self::rsa_pair(1, Algorithm::RS256)
        }

        fn rsa_pair(which: usize, alg: Algorithm) -> Self {
            let pair = rsa_pair(which);
            let public = pair.public_key();
            let jwk = json!({
                "kty": "RSA",
                "n": b64(public.modulus().big_endian_without_leading_zero()),
                "e": b64(public.exponent().big_endian_without_leading_zero()),
            });
            Self {
                material: Material::Rsa(pair),
                alg,
                jwk,
            }
        }

        fn ec(alg: Algorithm) -> Self {
            let (signing, crv, len) = match alg {
                Algorithm::ES384 => (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48),
                _ => (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32),
            };
            let pair = EcdsaKeyPair::generate(signing).expect("EC key generation");
            let point = pair.public_key().as_ref();
            let jwk = json!({
                "kty": "EC",
                "crv": crv,
                "x": b64(&point[1..=len]),
                "y": b64(&point[len + 1..]),
            });
            Self {
                material: Material::Ec(pair),
                alg,
                jwk,
            }
        }

        fn ed25519() -> Self {
            let pair = Ed25519KeyPair::generate().expect("Ed25519 key generation");
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
            Self {
                material: Material::Ed(pair),
                alg: Algorithm::EdDSA,
                jwk,
            }
        }

        fn sign(&self, message: &[u8]) -> Vec<u8> {
            let rng = SystemRandom::new();
            match &self.material {
                Material::Rsa(pair) => {
                    let padding: &'static dyn signature::RsaEncoding = match self.alg {
                        Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                        Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                        Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                        Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                        Algorithm::PS512 => &signature::RSA_PSS_SHA512,
                        _ => &signature::RSA_PKCS1_SHA256,
                    };
                    let mut sig = vec![0; pair.public_modulus_len()];
                    pair.sign(padding, &rng, message, &mut sig).expect("RSA signing");
                    sig
                }
                Material::Ec(pair) => pair.sign(&rng, message).expect("ECDSA signing").as_ref().to_vec(),
                Material::Ed(pair) => pair.sign(message).as_ref().to_vec(),
            }
        }

        /// A valid proof for `GET HTU` with `TOKEN`, made now.
        fn proof(&self) -> Proof {
            Proof {
                header: json!({"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk}),
                claims: json!({
                    "jti": fresh_jti(),
                    "htm": "GET",
                    "htu": HTU,
                    "iat": now(),
                    "ath": b64(sha256(&[TOKEN.as_bytes()])),
                }),
            }
        }
    }

    /// A proof's header and claims, to edit before signing.
    struct Proof {
        header: Value,
        claims: Value,
    }

    impl Proof {
        fn header(mut self, name: &str, value: Value) -> Self {
            self.header[name] = value;
            self
        }

        fn jwk(mut self, name: &str, value: Value) -> Self {
            self.header["jwk"][name] = value;
            self
        }

        fn claim(mut self, name: &str, value: Value) -> Self {
            self.claims[name] = value;
            self
        }

        fn without_header(mut self, name: &str) -> Self {
            self.header.as_object_mut().expect("an object").remove(name);
            self
        }

        fn without_claim(mut self, name: &str) -> Self {
            self.claims.as_object_mut().expect("an object").remove(name);
            self
        }

        fn signed_by(&self, key: &TestKey) -> String {
            let message = format!(
                "{}.{}",
                b64(self.header.to_string()),
                b64(self.claims.to_string())
            );
            let sig = key.sign(message.as_bytes());
            format!("{message}.{}", b64(sig))
        }
    }

    fn verifier() -> DpopVerifier {
        DpopVerifier::new(DpopSettings::default()).expect("default settings")
    }

    fn request() -> ProofRequest<'static> {
        ProofRequest::new("GET", HTU).with_access_token(TOKEN)
    }

    /// Verifies with a new verifier, for `GET HTU` with `TOKEN`, now.
    fn check(proof: &str) -> Result<VerifiedProof, DpopError> {
        verifier().verify_now(proof, &request(), now())
    }

    fn refusal(proof: &Proof, key: &TestKey) -> DpopError {
        check(&proof.signed_by(key)).expect_err("the proof is refused")
    }

    // Accepted proofs.

    #[test]
    fn valid_rs256_proof_is_accepted() {
        let key = TestKey::rsa(Algorithm::RS256);
        let proof = key.proof();
        let verified = check(&proof.signed_by(&key)).expect("accepted");
        assert_eq!(verified.jkt, jwk_thumbprint(&key.jwk).expect("a thumbprint"));
        assert_eq!(verified.jti, proof.claims["jti"].as_str().expect("a jti"));
        assert_eq!(Some(verified.iat), proof.claims["iat"].as_u64());
    }

    #[test]
    fn valid_es256_proof_is_accepted() {
        let key = TestKey::ec(Algorithm::ES256);
        let verified = check(&key.proof().signed_by(&key)).expect("accepted");
        assert_eq!(verified.jkt, jwk_thumbprint(&key.jwk).expect("a thumbprint"));
    }

    #[test]
    fn valid_eddsa_proof_is_accepted() {
        let key = TestKey::ed25519();
        let verified = check(&key.proof().signed_by(&key)).expect("accepted");
        assert_eq!(verified.jkt, jwk_thumbprint(&key.jwk).expect("a thumbprint"));
    }

    #[test]
    fn every_default_algorithm_is_accepted() {
        for alg in [
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            let key = TestKey::rsa(alg);
            check(&key.proof().signed_by(&key)).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        }
        let key = TestKey::ec(Algorithm::ES384);
        check(&key.proof().signed_by(&key)).expect("ES384 accepted");
    }

    #[test]
    fn ath_is_not_needed_without_an_access_token() {
        let key = TestKey::ed25519();
        let proof = key.proof().without_claim("ath").signed_by(&key);
        verifier()
            .verify_now(&proof, &ProofRequest::new("GET", HTU), now())
            .expect("accepted at a token endpoint");
    }

    #[test]
    fn a_fractional_iat_is_accepted_and_rounded_down() {
        let key = TestKey::ed25519();
        let now = now();
        let iat = now as f64 - 0.5;
        let proof = key.proof().claim("iat", json!(iat)).signed_by(&key);
        let verified = verifier().verify_now(&proof, &request(), now).expect("accepted");
        assert_eq!(verified.iat, now - 1);
    }

    // The proof's form.

    #[test]
    fn oversized_proof_is_refused_before_parsing() {
        assert_eq!(check(&"a".repeat(8 * 1024 + 1)), Err(DpopError::TooLarge));
        let key = TestKey::ed25519();
        let big = key.proof().claim("pad", json!("x".repeat(8 * 1024)));
        assert_eq!(refusal(&big, &key), DpopError::TooLarge);
    }

    #[test]
    fn two_part_and_four_part_proofs_are_malformed() {
        let key = TestKey::ed25519();
        let proof = key.proof().signed_by(&key);
        let (two, _) = proof.rsplit_once('.').expect("three parts");
        assert_eq!(check(two), Err(DpopError::Malformed));
        assert_eq!(check(&format!("{proof}.{two}")), Err(DpopError::Malformed));
        for junk in ["", ".", "..", "...", "a..c", "a.b.", ".b.c"] {
            assert_eq!(check(junk), Err(DpopError::Malformed), "{junk}");
        }
    }

    #[test]
    fn several_proofs_in_one_value_are_malformed() {
        let key = TestKey::ed25519();
        let proof = key.proof().signed_by(&key);
        for joined in [
            format!("{proof},{proof}"),
            format!("{proof}, {proof}"),
            format!("{proof} "),
        ] {
            assert_eq!(check(&joined), Err(DpopError::Malformed));
        }
    }

    #[test]
    fn padded_base64_is_malformed() {
        let key = TestKey::ed25519();
        let proof = key.proof().signed_by(&key);
        assert_eq!(check(&format!("{proof}==")), Err(DpopError::Malformed));
    }

    #[test]
    fn non_json_header_is_malformed() {
        let key = TestKey::ed25519();
        let proof = key.proof();
        let claims = b64(proof.claims.to_string());
        for header in ["not json", "[]", "\"dpop+jwt\"", "{\"typ\":\"dpop+jwt\"} {}"] {
            let message = format!("{}.{claims}", b64(header));
            let signed = format!("{message}.{}", b64(key.sign(message.as_bytes())));
            assert_eq!(check(&signed), Err(DpopError::Malformed), "{header}");
        }
    }

    #[test]
    fn non_json_payload_is_malformed() {
        let key = TestKey::ed25519();
        let header = b64(key.proof().header.to_string());
        for payload in ["not json", "[1]", "{\"jti\":\"a\",\"jti\":\"b\"}"] {
            let message = format!("{header}.{}", b64(payload));
            let signed = format!("{message}.{}", b64(key.sign(message.as_bytes())));
            assert_eq!(check(&signed), Err(DpopError::Malformed), "{payload}");
        }
    }

    #[test]
    fn duplicate_header_members_are_malformed() {
        let key = TestKey::ed25519();
        let proof = key.proof();
        let header = format!(
            r#"{{"typ":"dpop+jwt","alg":"EdDSA","alg":"HS256","jwk":{}}}"#,
            key.jwk
        );
        let message = format!("{}.{}", b64(header), b64(proof.claims.to_string()));
        let signed = format!("{message}.{}", b64(key.sign(message.as_bytes())));
        assert_eq!(check(&signed), Err(DpopError::Malformed));
    }

    #[test]
    fn array_header_or_claims_are_malformed() {
        let key = TestKey::ed25519();
        let proof = key.proof();
        let header = format!(r#"["dpop+jwt","EdDSA",false,false,{}]"#, key.jwk);
        let message = format!("{}.{}", b64(header), b64(proof.claims.to_string()));
        let signed = format!("{message}.{}", b64(key.sign(message.as_bytes())));
        assert_eq!(check(&signed), Err(DpopError::Malformed));
        let header = proof.header.to_string();
        let claims = format!(r#"[{}]"#, proof.claims["jti"]);
        let message = format!("{}.{}", b64(header), b64(claims));
        let signed = format!("{message}.{}", b64(key.sign(message.as_bytes())));
        assert_eq!(check(&signed), Err(DpopError::Malformed));
    }

    #[test]
    fn duplicate_jwk_members_are_malformed() {
        let key = TestKey::ed25519();
        let proof = key.proof();
        let jwk = key.jwk.to_string();
        let doubled = format!(r#"{{"kty":"OKP",{}"#, &jwk[1..]);
        let header = format!(r#"{{"typ":"dpop+jwt","alg":"EdDSA","jwk":{doubled}}}"#);
        let message = format!("{}.{}", b64(header), b64(proof.claims.to_string()));
        let signed = format!("{message}.{}", b64(key.sign(message.as_bytes())));
        assert_eq!(check(&signed), Err(DpopError::Malformed));
    }

    #[test]
    fn thumbprint_escapes_as_json_does() {
        for crv in ["P-256", "a\"b", "back\\slash", "tab\t", "\u{1}"] {
            let jwk = json!({"kty": "EC", "crv": crv, "x": "x", "y": "y"});
            let canonical = format!(r#"{{"crv":{},"kty":"EC","x":"x","y":"y"}}"#, json!(crv));
            let expected = URL_SAFE_NO_PAD.encode(sha256(&[canonical.as_bytes()]));
            assert_eq!(jwk_thumbprint(&jwk).unwrap(), expected, "{crv:?}");
        }
    }

    // The header.

    #[test]
    fn wrong_typ_is_refused() {
        let key = TestKey::ed25519();
        for typ in [
            json!("jwt"),
            json!("at+jwt"),
            json!("dpop"),
            json!(1),
            json!(["dpop+jwt"]),
        ] {
            assert_eq!(
                refusal(&key.proof().header("typ", typ.clone()), &key),
                DpopError::WrongType,
                "{typ}"
            );
        }
        assert_eq!(
            refusal(&key.proof().without_header("typ"), &key),
            DpopError::WrongType
        );
    }

    #[test]
    fn typ_is_compared_as_a_media_type() {
        let key = TestKey::ed25519();
        for typ in ["DPoP+JWT", "application/dpop+jwt", "Application/DPOP+jwt"] {
            check(&key.proof().header("typ", json!(typ)).signed_by(&key))
                .unwrap_or_else(|e| panic!("{typ}: {e}"));
        }
    }

    #[test]
    fn hs256_is_refused() {
        let key = TestKey::rsa(Algorithm::RS256);
        let proof = key.proof().header("alg", json!("HS256"));
        assert_eq!(refusal(&proof, &key), DpopError::AlgorithmNotAllowed);
        let secret = key
            .proof()
            .header("alg", json!("HS256"))
            .header("jwk", json!({"kty": "oct", "k": "c2VjcmV0"}));
        assert_eq!(refusal(&secret, &key), DpopError::AlgorithmNotAllowed);
    }

    #[test]
    fn alg_none_is_refused() {
        let key = TestKey::ed25519();
        for alg in ["none", "None", "NONE"] {
            assert_eq!(
                refusal(&key.proof().header("alg", json!(alg)), &key),
                DpopError::AlgorithmNotAllowed,
                "{alg}"
            );
        }
        let proof = key.proof().header("alg", json!("none")).signed_by(&key);
        let (unsigned, _) = proof.rsplit_once('.').expect("three parts");
        assert_eq!(check(&format!("{unsigned}.")), Err(DpopError::Malformed));
    }

    #[test]
    fn missing_alg_is_malformed() {
        let key = TestKey::ed25519();
        assert_eq!(
            refusal(&key.proof().without_header("alg"), &key),
            DpopError::Malformed
        );
    }

    #[test]
    fn algorithm_outside_the_allowlist_is_refused() {
        let settings = DpopSettings {
            algorithms: vec![Algorithm::ES256],
            ..DpopSettings::default()
        };
        let verifier = DpopVerifier::new(settings).expect("valid settings");
        let key = TestKey::rsa(Algorithm::RS256);
        let proof = key.proof().signed_by(&key);
        assert_eq!(
            verifier.verify_now(&proof, &request(), now()),
            Err(DpopError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn crit_and_b64_are_refused() {
        let key = TestKey::ed25519();
        let crit = key.proof().header("crit", json!(["exp"])).header("exp", json!(1));
        assert_eq!(refusal(&crit, &key), DpopError::CriticalHeader);
        assert_eq!(
            refusal(&key.proof().header("b64", json!(false)), &key),
            DpopError::CriticalHeader
        );
    }

    // The key.

    #[test]
    fn private_key_in_jwk_is_refused() {
        let key = TestKey::ec(Algorithm::ES256);
        for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            let proof = key.proof().jwk(member, json!("AQAB"));
            assert_eq!(refusal(&proof, &key), DpopError::PrivateKey, "{member}");
        }
    }

    #[test]
    fn a_known_key_is_built_once_and_every_other_check_still_applies() {
        let v = verifier();
        let key = TestKey::ec(Algorithm::ES256);
        let first = v
            .verify_now(&key.proof().signed_by(&key), &request(), now())
            .expect("accepted");
        let again = v
            .verify_now(&key.proof().signed_by(&key), &request(), now())
            .expect("accepted again");
        assert_eq!(first.jkt, again.jkt);
        assert_eq!(first.jkt, jwk_thumbprint(&key.jwk).expect("a thumbprint"));
        assert_eq!(v.keys.0.lock().expect("keys").len(), 1);
        // What the thumbprint does not cover is checked on every proof.
        let with_private = key.proof().jwk("d", json!("AQAB")).signed_by(&key);
        assert_eq!(
            v.verify_now(&with_private, &request(), now()).unwrap_err(),
            DpopError::PrivateKey
        );
        let named = key.proof().jwk("alg", json!("ES384")).signed_by(&key);
        assert_eq!(
            v.verify_now(&named, &request(), now()).unwrap_err(),
            DpopError::KeyMismatch
        );
        // A known key in the header does not vouch for the signature.
        let forged = key.proof().signed_by(&TestKey::ec(Algorithm::ES256));
        assert_eq!(
            v.verify_now(&forged, &request(), now()).unwrap_err(),
            DpopError::BadSignature
        );
        // Nor for the token: the hash a caller keeps must be the token's.
        let other =
            ProofRequest::new("GET", HTU).with_hashed_access_token(TOKEN, sha256(&[b"another token"]));
        assert_eq!(
            v.verify_now(&key.proof().signed_by(&key), &other, now())
                .unwrap_err(),
            DpopError::AccessTokenMismatch
        );
        let kept = ProofRequest::new("GET", HTU).with_hashed_access_token(TOKEN, sha256(&[TOKEN.as_bytes()]));
        v.verify_now(&key.proof().signed_by(&key), &kept, now())
            .expect("the kept hash is the token's");
    }

    /// Proofs whose signature is not their key's (junk with a fresh key
    /// each) are refused without keeping their keys, which would empty
    /// the cache of the keys of clients in use; a signed proof's key is
    /// kept.
    #[test]
    fn only_the_key_of_a_signed_proof_is_kept() {
        let v = verifier();
        let signer = TestKey::ec(Algorithm::ES256);
        for _ in 0..3 {
            let junk = TestKey::ec(Algorithm::ES256).proof().signed_by(&signer);
            assert_eq!(
                v.verify_now(&junk, &request(), now()).unwrap_err(),
                DpopError::BadSignature
            );
        }
        assert_eq!(v.keys.0.lock().expect("keys").len(), 0);
        v.verify_now(&signer.proof().signed_by(&signer), &request(), now())
            .expect("accepted");
        assert_eq!(v.keys.0.lock().expect("keys").len(), 1);
    }

    #[test]
    fn the_key_cache_is_bounded() {
        let cache = KeyCache::default();
        let key = TestKey::ec(Algorithm::ES256);
        let built = || {
            Arc::new(ProofKey {
                key: DecodingKey::from_ec_components(
                    key.jwk["x"].as_str().expect("x"),
                    key.jwk["y"].as_str().expect("y"),
                )
                .expect("a key"),
                jkt: String::new(),
            })
        };
        for i in 0..KeyCache::MAX + 5 {
            cache.insert(format!("id-{i}"), built());
        }
        let held = cache.0.lock().expect("keys").len();
        assert!((1..=KeyCache::MAX).contains(&held), "{held} keys held");
    }

    #[test]
    fn symmetric_jwk_is_refused() {
        let key = TestKey::ec(Algorithm::ES256);
        let proof = key.proof().header("jwk", json!({"kty": "oct"}));
        assert_eq!(refusal(&proof, &key), DpopError::PrivateKey);
    }

    #[test]
    fn alg_not_fitting_the_key_is_refused() {
        let rsa = TestKey::rsa(Algorithm::RS256);
        let p256 = TestKey::ec(Algorithm::ES256);
        let p384 = TestKey::ec(Algorithm::ES384);
        let ed = TestKey::ed25519();
        for (key, alg) in [
            (&rsa, "ES256"),
            (&rsa, "EdDSA"),
            (&p256, "ES384"),
            (&p256, "RS256"),
            (&p256, "EdDSA"),
            (&p384, "ES256"),
            (&ed, "ES256"),
            (&ed, "PS256"),
        ] {
            let proof = key.proof().header("alg", json!(alg));
            assert_eq!(
                refusal(&proof, key),
                DpopError::KeyMismatch,
                "{alg} with {}",
                key.jwk["kty"]
            );
        }
        let named = rsa.proof().jwk("alg", json!("RS512"));
        assert_eq!(refusal(&named, &rsa), DpopError::KeyMismatch);
        let named = rsa.proof().jwk("alg", json!("RS256"));
        check(&named.signed_by(&rsa)).expect("a jwk naming the proof's alg is accepted");
    }

    #[test]
    fn rsa_key_below_2048_bits_is_refused() {
        let key = TestKey::rsa(Algorithm::RS256);
        let mut short = vec![0xC5; 128];
        short[127] |= 1;
        assert_eq!(
            refusal(&key.proof().jwk("n", json!(b64(&short))), &key),
            DpopError::WeakKey
        );
        // 2047 bits: 256 octets, the top bit clear.
        let mut almost = vec![0xC5; 256];
        almost[0] = 0x7F;
        assert_eq!(
            refusal(&key.proof().jwk("n", json!(b64(&almost))), &key),
            DpopError::WeakKey
        );
        // A 2048-bit modulus with the ROCA fingerprint (Wycheproof's).
        let roca = crate::key_quality::tests::ROCA_N;
        assert_eq!(
            refusal(&key.proof().jwk("n", json!(roca)), &key),
            DpopError::WeakKey
        );
    }

    #[test]
    fn missing_or_unusable_jwk_is_refused() {
        let rsa = TestKey::rsa(Algorithm::RS256);
        let ec = TestKey::ec(Algorithm::ES256);
        let ed = TestKey::ed25519();
        let n = rsa.jwk["n"].as_str().expect("n").to_owned();
        let cases = [
            (rsa.proof().without_header("jwk"), &rsa),
            (rsa.proof().header("jwk", json!("a key")), &rsa),
            (rsa.proof().jwk("kty", json!("RSA2")), &rsa),
            (rsa.proof().jwk("kty", json!(null)), &rsa),
            (rsa.proof().jwk("e", json!(1)), &rsa),
            (rsa.proof().jwk("n", json!(format!("AA{n}"))), &rsa),
            (rsa.proof().jwk("n", json!(b64(vec![0xC5; 1025]))), &rsa),
            (rsa.proof().jwk("e", json!(b64(vec![0x01; 6]))), &rsa),
            (rsa.proof().jwk("e", json!(b64(vec![0x01; 1024]))), &rsa),
            (ec.proof().jwk("crv", json!("P-521")), &ec),
            (ec.proof().jwk("x", json!("AQAB")), &ec),
            (ec.proof().jwk("y", json!(null)), &ec),
            (ed.proof().jwk("crv", json!("X25519")), &ed),
            (ed.proof().jwk("x", json!(b64([1; 31]))), &ed),
        ];
        for (i, (proof, key)) in cases.iter().enumerate() {
            assert_eq!(refusal(proof, key), DpopError::InvalidKey, "case {i}");
        }
    }

    #[test]
    fn bad_signature_is_refused() {
        let key = TestKey::rsa(Algorithm::RS256);
        let other = TestKey::other_rsa();
        // Signed by another key than the one in the header.
        assert_eq!(refusal(&key.proof(), &other), DpopError::BadSignature);
        // Claims changed after signing.
        let signed = key.proof().signed_by(&key);
        let mut parts: Vec<&str> = signed.split('.').collect();
        let changed = b64(key.proof().claims.to_string());
        parts[1] = &changed;
        assert_eq!(check(&parts.join(".")), Err(DpopError::BadSignature));
        // Not even a signature's length.
        parts[2] = "AAAA";
        assert_eq!(check(&parts.join(".")), Err(DpopError::BadSignature));
        // An EC point off the curve.
        let ec = TestKey::ec(Algorithm::ES256);
        let off = ec.proof().jwk("y", ec.jwk["x"].clone());
        assert_eq!(refusal(&off, &ec), DpopError::BadSignature);
    }

    // The claims.

    #[test]
    fn jti_must_be_a_short_non_empty_string() {
        let key = TestKey::ed25519();
        assert_eq!(
            refusal(&key.proof().without_claim("jti"), &key),
            DpopError::MissingClaim("jti")
        );
        for jti in [json!(""), json!(7), json!("j".repeat(257))] {
            assert_eq!(
                refusal(&key.proof().claim("jti", jti), &key),
                DpopError::InvalidClaim("jti")
            );
        }
        check(&key.proof().claim("jti", json!("é".repeat(256))).signed_by(&key)).expect("256 characters");
    }

    #[test]
    fn wrong_htm_is_refused() {
        let key = TestKey::ed25519();
        for htm in ["POST", "get", "GET "] {
            assert_eq!(
                refusal(&key.proof().claim("htm", json!(htm)), &key),
                DpopError::MethodMismatch,
                "{htm}"
            );
        }
        assert_eq!(
            refusal(&key.proof().without_claim("htm"), &key),
            DpopError::MissingClaim("htm")
        );
        assert_eq!(
            refusal(&key.proof().claim("htm", json!(1)), &key),
            DpopError::InvalidClaim("htm")
        );
    }

    #[test]
    fn wrong_htu_is_refused() {
        let key = TestKey::ed25519();
        for htu in [
            "https://api.example/Orders",
            "https://api.example/orders/",
            "https://api.example/orders/1",
            "https://api.example/",
            "http://api.example/orders",
            "https://api.example:8443/orders",
            "https://other.example/orders",
            "https://api.example.evil/orders",
            "https://api.example/orders%2F",
        ] {
            assert_eq!(
                refusal(&key.proof().claim("htu", json!(htu)), &key),
                DpopError::UriMismatch,
                "{htu}"
            );
        }
        for htu in [json!("/orders"), json!("ftp://api.example/orders"), json!(1)] {
            assert_eq!(
                refusal(&key.proof().claim("htu", htu.clone()), &key),
                DpopError::InvalidClaim("htu"),
                "{htu}"
            );
        }
        assert_eq!(
            refusal(&key.proof().without_claim("htu"), &key),
            DpopError::MissingClaim("htu")
        );
    }

    #[test]
    fn htu_differing_only_by_query_fragment_default_port_or_case_is_accepted() {
        let key = TestKey::ed25519();
        for htu in [
            "https://api.example/orders?page=2",
            "https://api.example/orders#top",
            "https://api.example/orders?a=b#c",
            "https://api.example:443/orders",
            "https://api.example:/orders",
            "https://API.Example/orders",
            "HTTPS://api.example/orders",
            "https://api.example/%6Frders",
            "https://api.example/./shop/../orders",
        ] {
            check(&key.proof().claim("htu", json!(htu)).signed_by(&key))
                .unwrap_or_else(|e| panic!("{htu}: {e}"));
        }
        let proof = key
            .proof()
            .claim("htu", json!("http://api.example"))
            .signed_by(&key);
        let root = ProofRequest::new("GET", "http://API.example:80/?x").with_access_token(TOKEN);
        verifier()
            .verify_now(&proof, &root, now())
            .expect("the same root");
    }

    #[test]
    fn htu_is_normalised_as_rfc_3986_says() {
        for (uri, want) in [
            ("HTTP://Example.COM:80", "http://example.com/"),
            (
                "https://example.com:/a/b/../c/./d?q#f",
                "https://example.com/a/c/d",
            ),
            (
                "https://example.com/%7euser/%2f%41%e2%82%ac",
                "https://example.com/~user/%2FA%E2%82%AC",
            ),
            ("https://[2001:DB8::1]:443/x", "https://[2001:db8::1]/x"),
            ("https://[::1]:8443/x", "https://[::1]:8443/x"),
            ("https://example.com:8443", "https://example.com:8443/"),
            ("https://example.com:00443/", "https://example.com/"),
            ("https://%45xample.com/", "https://example.com/"),
            ("https://example.com/a/../../b", "https://example.com/b"),
            (
                "https://example.com/a;b=c/d:e@f",
                "https://example.com/a;b=c/d:e@f",
            ),
        ] {
            assert_eq!(normalize_htu(uri).as_deref(), Some(want), "{uri}");
        }
        for uri in [
            "",
            "/orders",
            "api.example/orders",
            "ftp://example.com/",
            "https:///orders",
            "https://user@example.com/",
            "https://user:pass@example.com/",
            "https://example.com:99999/",
            "https://example.com:-1/",
            "https://example.com:abc/",
            "https://a:b:c/",
            "https://[::1/",
            "https://[]/",
            "https://[::1]x/",
            "https://example.com/%zz",
            "https://example.com/%4",
            "https://exa mple.com/",
            "https://example.com/a b",
            "https://example.com/\u{e4}",
            "https://b\u{fc}cher.example/",
        ] {
            assert_eq!(normalize_htu(uri), None, "{uri}");
        }
    }

    #[test]
    fn a_uri_taken_as_normal_is_its_own_normal_form() {
        let schemes = ["http://", "https://", "HTTP://", "ftp://"];
        let hosts = [
            "api.example",
            "Api.example",
            "10.0.0.1",
            "[::1]",
            "a_b.example",
            "",
        ];
        let ports = ["", ":443", ":80", ":8443", ":08443", ":99999", ":"];
        let paths = [
            "/", "/a/b", "/a/./b", "/a/../b", "/.", "/a%2Fb", "/~x", "/a b", "/x:y@z", "", "/a//b",
        ];
        let mut normal = 0;
        for scheme in schemes {
            for host in hosts {
                for port in ports {
                    for path in paths {
                        let uri = format!("{scheme}{host}{port}{path}");
                        if is_normal_htu(&uri) {
                            normal += 1;
                            assert_eq!(normalize_htu_fully(&uri).as_deref(), Some(uri.as_str()), "{uri}");
                        }
                    }
                }
            }
        }
        assert!(normal > 50, "{normal}");
    }

    #[test]
    fn stale_iat_is_refused() {
        let key = TestKey::ed25519();
        let now = now();
        let old = key.proof().claim("iat", json!(now - 61)).signed_by(&key);
        assert_eq!(
            verifier().verify_now(&old, &request(), now),
            Err(DpopError::TooOld)
        );
        let oldest = key.proof().claim("iat", json!(now - 60)).signed_by(&key);
        verifier()
            .verify_now(&oldest, &request(), now)
            .expect("exactly max_age old");
    }

    #[test]
    fn future_iat_is_refused() {
        let key = TestKey::ed25519();
        let now = now();
        let early = key.proof().claim("iat", json!(now + 6)).signed_by(&key);
        assert_eq!(
            verifier().verify_now(&early, &request(), now),
            Err(DpopError::IssuedInFuture)
        );
        let skewed = key.proof().claim("iat", json!(now + 5)).signed_by(&key);
        verifier()
            .verify_now(&skewed, &request(), now)
            .expect("within leeway");
        let far = key.proof().claim("iat", json!(u64::MAX)).signed_by(&key);
        assert_eq!(
            verifier().verify_now(&far, &request(), now),
            Err(DpopError::IssuedInFuture)
        );
    }

    #[test]
    fn iat_must_be_a_date() {
        let key = TestKey::ed25519();
        assert_eq!(
            refusal(&key.proof().without_claim("iat"), &key),
            DpopError::MissingClaim("iat")
        );
        for iat in [json!("1700000000"), json!(-1), json!(-0.5), json!(null)] {
            assert_eq!(
                refusal(&key.proof().claim("iat", iat.clone()), &key),
                DpopError::InvalidClaim("iat"),
                "{iat}"
            );
        }
    }

    #[test]
    fn missing_ath_is_refused() {
        let key = TestKey::ed25519();
        assert_eq!(
            refusal(&key.proof().without_claim("ath"), &key),
            DpopError::MissingClaim("ath")
        );
    }

    #[test]
    fn wrong_ath_is_refused() {
        let key = TestKey::ed25519();
        let other = b64(sha256(&[b"another-token"]));
        assert_eq!(
            refusal(&key.proof().claim("ath", json!(other)), &key),
            DpopError::AccessTokenMismatch
        );
        let padded = format!("{}=", b64(sha256(&[TOKEN.as_bytes()])));
        assert_eq!(
            refusal(&key.proof().claim("ath", json!(padded)), &key),
            DpopError::AccessTokenMismatch
        );
        assert_eq!(
            refusal(&key.proof().claim("ath", json!(1)), &key),
            DpopError::InvalidClaim("ath")
        );
    }

    // Replays.

    #[test]
    fn replayed_jti_is_refused() {
        let verifier = verifier();
        let key = TestKey::ed25519();
        let proof = key.proof();
        let signed = proof.signed_by(&key);
        verifier
            .verify_now(&signed, &request(), now())
            .expect("first use");
        assert_eq!(
            verifier.verify_now(&signed, &request(), now()),
            Err(DpopError::Replayed)
        );
        // Another proof by the same key with the same jti.
        let again = proof.claim("iat", json!(now() - 1)).signed_by(&key);
        assert_eq!(
            verifier.verify_now(&again, &request(), now()),
            Err(DpopError::Replayed)
        );
        // Clones share the store.
        assert_eq!(
            verifier.clone().verify_now(&signed, &request(), now()),
            Err(DpopError::Replayed)
        );
    }

    /// A proof for a token bound to another key is refused before it is
    /// recorded: a thief of the token, signing with keys of their own,
    /// cannot fill the replay store (evicting others' records).
    #[test]
    fn a_proof_of_another_key_than_the_tokens_is_refused_unrecorded() {
        let (thief, owner) = (TestKey::ed25519(), TestKey::ed25519());
        let jkt = |key: &TestKey| {
            verifier()
                .verify_now(&key.proof().signed_by(key), &request(), now())
                .expect("a proof of its own")
                .jkt
        };
        let (thiefs, owners) = (jkt(&thief), jkt(&owner));
        let verifier = verifier();
        let signed = thief.proof().signed_by(&thief);
        assert_eq!(
            verifier.verify_now(&signed, &request().bound_to(&owners), now()),
            Err(DpopError::OtherKey)
        );
        assert_eq!(
            verifier.keys.0.lock().unwrap().len(),
            0,
            "its key is not kept either"
        );
        // Not recorded: for a token bound to its own key, its first use.
        let first = verifier.verify_now(&signed, &request().bound_to(&thiefs), now());
        assert_eq!(first.map(|p| p.jkt), Ok(thiefs));
        assert_eq!(verifier.keys.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_same_jti_under_another_key_is_not_a_replay() {
        let verifier = verifier();
        let (a, b) = (TestKey::ed25519(), TestKey::ed25519());
        let jti = json!("shared");
        verifier
            .verify_now(
                &a.proof().claim("jti", jti.clone()).signed_by(&a),
                &request(),
                now(),
            )
            .expect("key a");
        verifier
            .verify_now(&b.proof().claim("jti", jti).signed_by(&b), &request(), now())
            .expect("key b");
    }

    #[test]
    fn refused_proofs_are_not_recorded() {
        let store = Arc::new(MemoryReplayStore::with_capacity(10));
        let settings = DpopSettings {
            replay_store: store.clone(),
            ..DpopSettings::default()
        };
        let verifier = DpopVerifier::new(settings).expect("valid settings");
        let key = TestKey::ed25519();
        let forger = TestKey::ed25519();
        let proof = key.proof();
        for _ in 0..50 {
            let forged = key.proof().signed_by(&forger);
            assert_eq!(
                verifier.verify_now(&forged, &request(), now()),
                Err(DpopError::BadSignature)
            );
        }
        let wrong_method = ProofRequest::new("POST", HTU).with_access_token(TOKEN);
        assert_eq!(
            verifier.verify_now(&proof.signed_by(&key), &wrong_method, now()),
            Err(DpopError::MethodMismatch)
        );
        assert!(store.is_empty());
        verifier
            .verify_now(&proof.signed_by(&key), &request(), now())
            .expect("first use");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn memory_store_remembers_a_key_until_it_expires() {
        let store = MemoryReplayStore::with_capacity(10);
        let key = [1; 32];
        assert!(store.first_use_at(&key, 100, 50));
        assert!(!store.first_use_at(&key, 200, 60));
        assert!(!store.first_use_at(&key, 200, 100));
        assert!(store.first_use_at(&key, 200, 101));
        assert!(!store.first_use_at(&key, 300, 150));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn replay_store_is_bounded_and_evicts_the_soonest_expiring_entry() {
        let store = MemoryReplayStore::with_capacity(3);
        assert_eq!(store.capacity(), 3);
        assert!(store.first_use_at(&[1; 32], 300, 0));
        assert!(store.first_use_at(&[2; 32], 200, 0));
        assert!(store.first_use_at(&[3; 32], 400, 0));
        assert!(store.first_use_at(&[4; 32], 500, 0));
        assert_eq!(store.len(), 3);
        // 2 expired soonest: pushed out, so let in again, pushing out 1.
        assert!(store.first_use_at(&[2; 32], 200, 0));
        assert!(store.first_use_at(&[1; 32], 300, 0));
        assert!(!store.first_use_at(&[4; 32], 500, 0));
    }

    #[test]
    fn replay_store_drops_expired_entries_before_live_ones() {
        let store = MemoryReplayStore::with_capacity(2);
        assert!(store.first_use_at(&[1; 32], 1000, 0));
        assert!(store.first_use_at(&[2; 32], 10, 0));
        assert!(store.first_use_at(&[3; 32], 2000, 50));
        assert!(!store.first_use_at(&[1; 32], 1000, 50));
        assert!(!store.first_use_at(&[3; 32], 2000, 50));
    }

    #[test]
    fn replay_store_stays_bounded_under_load() {
        let store = MemoryReplayStore::with_capacity(20_000);
        assert_eq!(store.shards.len(), 16);
        assert!(store.capacity() >= 20_000);
        for i in 0..60_000_u32 {
            let key = sha256(&[&i.to_be_bytes()]);
            assert!(store.first_use_at(&key, 1000 + u64::from(i), 0));
        }
        assert!(store.len() <= store.capacity());
        assert!(MemoryReplayStore::default().capacity() >= MemoryReplayStore::DEFAULT_CAPACITY);
    }

    #[test]
    fn replay_store_admits_each_key_once_across_threads() {
        let store = Arc::new(MemoryReplayStore::new());
        let admitted: usize = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let store = &store;
                    s.spawn(move || {
                        (0..2000_u32)
                            .filter(|i| {
                                matches!(
                                    store.first_use(&sha256(&[&i.to_be_bytes()]), u64::MAX),
                                    Check::Ready(Ok(true))
                                )
                            })
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("no panic")).sum()
        });
        assert_eq!(admitted, 2000);
    }

    // Nonces.

    fn nonce_verifier() -> DpopVerifier {
        let settings = DpopSettings {
            require_nonce: true,
            ..DpopSettings::default()
        };
        DpopVerifier::new(settings).expect("valid settings")
    }

    #[test]
    fn missing_nonce_asks_for_one() {
        let key = TestKey::ed25519();
        let err = nonce_verifier()
            .verify_now(&key.proof().signed_by(&key), &request(), now())
            .expect_err("a nonce is required");
        assert_eq!(err, DpopError::UseNonce);
        assert_eq!(err.error_code(), "use_dpop_nonce");
    }

    #[test]
    fn invalid_nonce_asks_for_a_new_one() {
        let verifier = nonce_verifier();
        let nonces = verifier.nonce_source().expect("nonces are required");
        let key = TestKey::ed25519();
        let now = now();
        let stranger = NonceSource::generate(NonceSource::DEFAULT_WINDOW).expect("a source");
        let window = NonceSource::DEFAULT_WINDOW.as_secs();
        for nonce in [
            json!("abc"),
            json!(1),
            json!(stranger.current_at(now)),
            json!(nonces.current_at(now - 2 * window)),
            json!(nonces.current_at(now + window)),
        ] {
            let proof = key.proof().claim("nonce", nonce.clone()).signed_by(&key);
            assert_eq!(
                verifier.verify_now(&proof, &request(), now),
                Err(DpopError::UseNonce),
                "{nonce}"
            );
        }
    }

    #[test]
    fn valid_nonce_is_accepted() {
        let verifier = nonce_verifier();
        let nonces = verifier.nonce_source().expect("nonces are required");
        let key = TestKey::ed25519();
        let now = now();
        let previous = nonces.current_at(now - NonceSource::DEFAULT_WINDOW.as_secs());
        let current = nonces.current_at(now);
        // The current nonce stands; one of the window before is replaced.
        for (nonce, next) in [(current.clone(), None), (previous, Some(current))] {
            let proof = key.proof().claim("nonce", json!(nonce)).signed_by(&key);
            let verified = verifier
                .verify_now(&proof, &request(), now)
                .expect("a current nonce");
            assert_eq!(verified.next_nonce, next);
        }
    }

    #[test]
    fn nonces_are_ignored_unless_required() {
        let key = TestKey::ed25519();
        check(&key.proof().claim("nonce", json!("stale")).signed_by(&key)).expect("not required");
        assert!(verifier().nonce_source().is_none());
    }

    #[test]
    fn replicas_sharing_a_secret_accept_each_others_nonces() {
        let secret = [7; 32];
        let window = Duration::from_secs(60);
        let a = NonceSource::from_secret(&secret, window).expect("a source");
        let b = NonceSource::from_secret(&secret, window).expect("a source");
        let nonce = a.current_at(1_000_000);
        assert_eq!(nonce.len(), NONCE_CHARS);
        assert!(b.check_at(&nonce, 1_000_000));
        assert!(b.check_at(&nonce, 1_000_079));
        assert!(!b.check_at(&nonce, 1_000_140));
        assert!(!b.check_at(&nonce, 999_900));
        let c = NonceSource::from_secret(&[8; 32], window).expect("a source");
        assert!(!c.check_at(&nonce, 1_000_000));
        assert!(a.check(&a.current()));
    }

    #[test]
    fn weak_nonce_settings_are_refused() {
        let window = Duration::from_secs(60);
        assert_eq!(
            NonceSource::from_secret(&[1; 31], window).unwrap_err(),
            DpopConfigError::WeakNonceSecret
        );
        for window in [Duration::ZERO, Duration::from_secs(3601)] {
            assert!(matches!(
                NonceSource::generate(window),
                Err(DpopConfigError::OutOfRange(_))
            ));
        }
    }

    // Thumbprints and bound tokens.

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29",
        });
        assert_eq!(
            jwk_thumbprint(&jwk).expect("a thumbprint"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn thumbprint_matches_rfc_8037_ed25519_example() {
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(
            jwk_thumbprint(&jwk).expect("a thumbprint"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn thumbprint_uses_only_the_required_members() {
        let key = TestKey::ec(Algorithm::ES256);
        let mut decorated = key.jwk.clone();
        decorated["kid"] = json!("k1");
        decorated["use"] = json!("sig");
        decorated["alg"] = json!("ES256");
        assert_eq!(jwk_thumbprint(&decorated), jwk_thumbprint(&key.jwk));
        let (x, y) = (
            key.jwk["x"].as_str().expect("x"),
            key.jwk["y"].as_str().expect("y"),
        );
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        assert_eq!(
            jwk_thumbprint(&key.jwk).expect("a thumbprint"),
            b64(sha256(&[canonical.as_bytes()]))
        );
        for bad in [
            json!("a key"),
            json!({"kty": "oct", "k": "c2VjcmV0"}),
            json!({"kty": "EC", "crv": "P-256", "x": "AQAB"}),
            json!({"kty": "RSA", "n": 1, "e": "AQAB"}),
        ] {
            assert_eq!(jwk_thumbprint(&bad), Err(DpopError::InvalidKey), "{bad}");
        }
    }

    #[test]
    fn bound_token_matches_only_the_proofs_key() {
        let key = TestKey::ec(Algorithm::ES256);
        let verified = check(&key.proof().signed_by(&key)).expect("accepted");
        let jkt = jwk_thumbprint(&key.jwk).expect("a thumbprint");
        assert!(bound_token_matches(&jkt, &verified));
        assert!(!bound_token_matches(&format!("{jkt}="), &verified));
        assert!(!bound_token_matches(&jkt.to_ascii_uppercase(), &verified));
        let other = TestKey::ec(Algorithm::ES256);
        assert!(!bound_token_matches(
            &jwk_thumbprint(&other.jwk).expect("a thumbprint"),
            &verified
        ));
    }

    // Settings, Debug, robustness.

    #[test]
    fn a_verifier_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<DpopVerifier>();
        shared::<MemoryReplayStore>();
        shared::<NonceSource>();
    }

    #[test]
    fn unsafe_settings_are_refused() {
        let with = |edit: fn(&mut DpopSettings)| {
            let mut settings = DpopSettings::default();
            edit(&mut settings);
            DpopVerifier::new(settings).map(|_| ())
        };
        assert_eq!(with(|s| s.algorithms.clear()), Err(DpopConfigError::NoAlgorithm));
        assert_eq!(
            with(|s| s.algorithms.push(Algorithm::HS256)),
            Err(DpopConfigError::SymmetricAlgorithm(Algorithm::HS256))
        );
        for edit in [
            (|s: &mut DpopSettings| s.max_age = Duration::ZERO) as fn(&mut DpopSettings),
            |s| s.max_age = Duration::from_secs(301),
            |s| s.leeway = Duration::from_secs(61),
            |s| s.max_proof_len = 100,
            |s| s.max_proof_len = 1 << 20,
        ] {
            assert!(matches!(with(edit), Err(DpopConfigError::OutOfRange(_))));
        }
        assert_eq!(with(|s| s.max_age = Duration::from_secs(300)), Ok(()));
    }

    #[test]
    fn debug_output_holds_no_proof_token_or_secret() {
        let key = TestKey::ed25519();
        let verified =
            check(&key.proof().claim("jti", json!("secret-jti")).signed_by(&key)).expect("accepted");
        let shown = format!("{verified:?}");
        assert!(
            shown.contains(&verified.jkt) && !shown.contains("secret-jti"),
            "{shown}"
        );
        let shown = format!("{:?}", request());
        assert!(!shown.contains(TOKEN), "{shown}");
        let secret = [0x41; 32];
        let nonces = NonceSource::from_secret(&secret, Duration::from_secs(60)).expect("a source");
        let shown = format!("{nonces:?}");
        assert!(!shown.contains("65, 65") && !shown.contains("AAAA"), "{shown}");
        let settings = DpopSettings {
            nonce_source: Some(nonces),
            ..DpopSettings::default()
        };
        let shown = format!("{:?}", DpopVerifier::new(settings).expect("valid settings"));
        assert!(shown.contains("max_age") && !shown.contains("65, 65"), "{shown}");
    }

    #[test]
    fn messages_are_fixed_text() {
        for e in [
            DpopError::Malformed,
            DpopError::MissingClaim("ath"),
            DpopError::UriMismatch,
            DpopError::Replayed,
        ] {
            assert!(e.to_string().starts_with("the DPoP proof"), "{e}");
            assert_eq!(e.error_code(), "invalid_dpop_proof");
        }
    }

    #[test]
    fn mutated_proofs_never_panic_and_are_accepted_once_at_most() {
        let verifier = verifier();
        let key = TestKey::ed25519();
        let good = key.proof().signed_by(&key);
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"eyJ0.-_=+/AZaz09{}\"\\ ,\x00";
        let now = now();
        for _ in 0..5_000 {
            let mut bytes = good.clone().into_bytes();
            for _ in 0..(next() % 4 + 1) {
                let pos = usize::try_from(next()).unwrap_or(0) % bytes.len().max(1);
                let c = alphabet[usize::try_from(next()).unwrap_or(0) % alphabet.len()];
                match next() % 3 {
                    0 if !bytes.is_empty() => bytes[pos] = c,
                    1 => bytes.insert(pos, c),
                    _ if !bytes.is_empty() => {
                        bytes.remove(pos);
                    }
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if verifier.verify_now(&text, &request(), now).is_ok() {
                assert_eq!(
                    verifier.verify_now(&text, &request(), now),
                    Err(DpopError::Replayed)
                );
            }
        }
    }
}
