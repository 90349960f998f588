//! Key sets: lenient parsing, a lock-free current set per issuer, and a
//! background fetcher that refreshes before expiry, single-flights refetches
//! for unknown key ids and keeps the last good set through outages.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::{Notify, watch};

use palisade_core::metrics::JWKS_FETCHES;

use crate::config::{FetchSettings, JwksSource};
use crate::key_quality::{RsaWeakness, check_rsa_modulus, pkcs1_modulus};

const LOG: &str = "palisade::jwks";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
    Hmac,
}

/// One usable verification key.
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Option<Algorithm>,
    pub(crate) family: Family,
    pub(crate) key: DecodingKey,
    /// Identifies the key material (not a security hash: it detects a key
    /// replaced under the same kid).
    pub(crate) fingerprint: u64,
    /// The issuer the JWK keeps the key to (its `issuer` member, which
    /// Microsoft's key sets write, `{tenantid}` standing for the token's
    /// tenant): [`crate::authenticator`] takes it only for that issuer's
    /// tokens.
    pub(crate) issuer: Option<String>,
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn allows(&self, alg: Algorithm) -> bool {
        match self.alg {
            Some(a) => a == alg,
            None => family_allows(self.family, alg),
        }
    }
}

pub(crate) fn family_allows(family: Family, alg: Algorithm) -> bool {
    match family {
        Family::Rsa => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        Family::P256 => alg == Algorithm::ES256,
        Family::P384 => alg == Algorithm::ES384,
        Family::Ed25519 => alg == Algorithm::EdDSA,
        Family::Hmac => matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512),
    }
}

/// The keys of one issuer at one time.
#[derive(Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<Arc<VerifyKey>>,
    /// Each `kid`'s keys, in the set's order: one issuer may publish one
    /// `kid` for several algorithms (Keycloak derives the `kid` from the
    /// key, so one key in an RS256 and a PS256 provider is two entries).
    by_kid: HashMap<String, Vec<usize>, foldhash::fast::RandomState>,
    /// The key that answers to any `kid`: an HMAC secret configured without one.
    any_kid: Option<usize>,
    /// Whether a fetch (or a static configuration) ever produced this set.
    pub(crate) loaded: bool,
}

/// The most keys one token naming no `kid` is checked against
/// ([`KeySet::signer`]).
const MAX_SIGNERS_TRIED: usize = 4;

impl KeySet {
    pub(crate) fn new(keys: Vec<VerifyKey>) -> Self {
        let mut by_kid: HashMap<String, Vec<usize>, _> = HashMap::default();
        let mut kept: Vec<Arc<VerifyKey>> = Vec::new();
        for k in keys {
            if let Some(kid) = &k.kid {
                let same = by_kid.entry(kid.clone()).or_default();
                // Two keys of one `kid` that take the same algorithms: the
                // first, as a token naming the `kid` could not tell them.
                if same.iter().any(|&i: &usize| same_algorithms(&kept[i], &k)) {
                    tracing::debug!(target: LOG, kid = %kid, "duplicate kid in key set: first kept");
                    continue;
                }
                same.push(kept.len());
            }
            kept.push(Arc::new(k));
        }
        Self {
            keys: kept,
            by_kid,
            any_kid: None,
            loaded: true,
        }
    }

    /// The set of one configured HMAC secret: with a `kid`, tokens naming
    /// another are refused; without one, it verifies tokens whatever `kid`
    /// they name (there is no other key a `kid` could select).
    pub(crate) fn secret(key: VerifyKey) -> Self {
        let kid_free = key.kid.is_none();
        let mut set = Self::new(vec![key]);
        if kid_free {
            set.any_kid = Some(0);
        }
        set
    }

    /// The key for a token: by `kid`, or the only key that fits `alg` when
    /// the token names none or the set names none (a fixed PEM key, as
    /// Keycloak's `realm-public-key`, or a key set without `kid`s: as
    /// Keycloak and Envoy, which try a key without `kid` for any token).
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Arc<VerifyKey>> {
        let only_fit = || {
            let mut fits = self.keys.iter().filter(|k| k.allows(alg));
            let first = fits.next()?;
            fits.next().is_none().then_some(first)
        };
        match kid {
            Some(_) if self.by_kid.is_empty() && self.any_kid.is_none() => only_fit(),
            Some(kid) => match self.by_kid.get(kid) {
                // The key of the `kid` that takes `alg`; else its first, for
                // the refusal to name the algorithm.
                Some(same) => same
                    .iter()
                    .map(|&i| &self.keys[i])
                    .find(|k| k.allows(alg))
                    .or_else(|| same.first().map(|&i| &self.keys[i])),
                None => self.any_kid.map(|i| &self.keys[i]),
            },
            None => only_fit(),
        }
    }

    /// Where several keys fit a token that names no `kid` (or a set that
    /// names none: an issuer rotating keys without `kid`s), the first of
    /// them that `signed` the token, as Envoy tries each; `None` where
    /// [`find`](Self::find) answers, or none signed it.
    pub(crate) fn signer(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        signed: impl Fn(&VerifyKey) -> bool,
    ) -> Option<&Arc<VerifyKey>> {
        let unnamed = kid.is_none() || self.by_kid.is_empty() && self.any_kid.is_none();
        if !unnamed {
            return None;
        }
        let mut fits = self.keys.iter().filter(|k| k.allows(alg));
        let (first, second) = (fits.next()?, fits.next()?);
        // At most a few signature checks for one token: a set of many keys
        // that fit is no rotation, and each check a forged token costs.
        [first, second]
            .into_iter()
            .chain(fits)
            .take(MAX_SIGNERS_TRIED)
            .find(|k| signed(k))
    }

    /// Whether [`find`](Self::find) takes a token naming `kid` by its
    /// `kid` (not as the only key that fits).
    pub(crate) fn found_by_kid(&self, kid: Option<&str>) -> bool {
        kid.is_some() && !(self.by_kid.is_empty() && self.any_kid.is_none())
    }

    /// Whether this exact key (kid and material) is still in the set.
    pub(crate) fn still_has(&self, kid: Option<&str>, fingerprint: u64) -> bool {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .is_some_and(|same| same.iter().any(|&i| self.keys[i].fingerprint == fingerprint)),
            None => self.keys.iter().any(|k| k.fingerprint == fingerprint),
        }
    }
}

/// The `kid`s of `set`'s keys that `other` does not hold (the same `kid`
/// with other material counts as not held), for a log line: at most eight,
/// each quoted (they come from the issuer), then how many more.
fn kids_not_in(set: &KeySet, other: &KeySet) -> String {
    const SHOWN: usize = 8;
    let mut names: Vec<String> = Vec::new();
    for k in &set.keys {
        if other.still_has(k.kid.as_deref(), k.fingerprint) {
            continue;
        }
        let name = k
            .kid
            .as_deref()
            .map_or_else(|| "(no kid)".to_owned(), |kid| format!("{kid:?}"));
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return "none".to_owned();
    }
    let more = names.len().saturating_sub(SHOWN);
    names.truncate(SHOWN);
    let mut list = names.join(", ");
    if more > 0 {
        list.push_str(&format!(" and {more} more"));
    }
    list
}

/// Whether two keys take the same algorithms.
fn same_algorithms(a: &VerifyKey, b: &VerifyKey) -> bool {
    crate::config::ASYMMETRIC
        .iter()
        .chain(&crate::config::HMAC)
        .all(|&alg| a.allows(alg) == b.allows(alg))
}

fn fingerprint(parts: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// Why a JWK is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    /// Not a key this library verifies with (an encryption key, an unknown
    /// `kty`, a symmetric key, broken members): skipped quietly.
    Unusable(&'static str),
    /// A signature key too weak to trust: skipped with a warning.
    Weak(RsaWeakness),
}

/// Parses `issuer`'s JWKS document leniently: a key that cannot be used for
/// signatures here (unknown `kty` or `alg`, `use: enc`, symmetric) is
/// skipped with a debug line, a weak one (an RSA key under 2048 bits or
/// with the ROCA fingerprint) with a warning naming the issuer and the
/// `kid`, once per process; only a document that is not a key set fails.
pub(crate) fn parse_jwks(issuer: &str, bytes: &[u8]) -> Result<KeySet, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|_| "the body is not JSON".to_owned())?;
    let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
        return Err("the document has no `keys` array".into());
    };
    let mut out = Vec::new();
    for (i, jwk) in keys.iter().enumerate() {
        match parse_jwk(jwk) {
            Ok(k) => out.push(k),
            Err(Skip::Unusable(why)) => {
                let kid = jwk.get("kid").and_then(|k| k.as_str()).unwrap_or("");
                tracing::debug!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(issuer), index = i, kid, why, "JWK skipped");
            }
            Err(Skip::Weak(weakness)) => {
                let kid = jwk.get("kid").and_then(|k| k.as_str()).unwrap_or("");
                let n = jwk.get("n").and_then(Value::as_str).unwrap_or("");
                warn_weak_key(issuer, kid, n, weakness);
            }
        }
    }
    Ok(KeySet::new(out))
}

/// Warns of a weak key the first time this process meets it (an issuer's
/// keys are fetched again and again); later at debug level.
fn warn_weak_key(issuer: &str, kid: &str, material: &str, weakness: RsaWeakness) {
    static WARNED: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let id = fingerprint(&[issuer, kid, material]);
    let first = {
        let mut warned = WARNED.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.contains(&id) {
            false
        } else {
            if warned.len() >= 1024 {
                warned.clear();
            }
            warned.push(id);
            true
        }
    };
    let why = weakness.reason();
    if first {
        tracing::warn!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(issuer), kid, why, "weak signing key refused: tokens it signs are refused as signed by an unknown key");
    } else {
        tracing::debug!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(issuer), kid, why, "weak signing key refused");
    }
}

fn parse_jwk(jwk: &Value) -> Result<VerifyKey, Skip> {
    let s = |name: &str| jwk.get(name).and_then(Value::as_str);
    if let Some(u) = jwk.get("use")
        && u.as_str() != Some("sig")
    {
        return Err(Skip::Unusable("not a signature key (use)"));
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|o| o.as_str() == Some("verify"))
    {
        return Err(Skip::Unusable("not a verification key (key_ops)"));
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(
            a.parse::<Algorithm>()
                .map_err(|_| Skip::Unusable("unsupported alg"))?,
        ),
        Some(_) => return Err(Skip::Unusable("alg is not a string")),
    };
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= crate::token::MAX_KID_LEN => Some(k.clone()),
        Some(_) => return Err(Skip::Unusable("kid is not a short string")),
    };
    // A key kept to one issuer that could not be read as one would sign
    // for every issuer sharing the set: not used.
    let issuer = match jwk.get("issuer") {
        None => None,
        Some(Value::String(i)) if i.is_empty() => None,
        Some(Value::String(i)) => Some(i.clone()),
        Some(_) => return Err(Skip::Unusable("issuer is not a string")),
    };
    let (family, key, fp) = match s("kty") {
        Some("RSA") => {
            let (Some(n), Some(e)) = (s("n"), s("e")) else {
                return Err(Skip::Unusable("RSA key without n or e"));
            };
            let component = |c: &str| {
                URL_SAFE_NO_PAD
                    .decode(c.trim_end_matches('='))
                    .map_err(|_| Skip::Unusable("bad RSA components"))
            };
            let (modulus, exponent) = (component(n)?, component(e)?);
            check_rsa_modulus(&modulus).map_err(Skip::Weak)?;
            // Without leading zero octets, which some issuers write (Java's
            // `BigInteger.toByteArray`) and aws-lc refuses at each check:
            // the key would load and never verify.
            let significant = |c: &[u8]| c[c.iter().position(|&b| b != 0).unwrap_or(c.len())..].to_vec();
            let exponent = significant(&exponent);
            if exponent.is_empty() {
                return Err(Skip::Unusable("bad RSA components"));
            }
            let key = DecodingKey::from_rsa_raw_components(&significant(&modulus), &exponent);
            (Family::Rsa, key, fingerprint(&["RSA", n, e]))
        }
        Some("EC") => {
            let (Some(x), Some(y)) = (s("x"), s("y")) else {
                return Err(Skip::Unusable("EC key without x or y"));
            };
            let family = match s("crv") {
                Some("P-256") => Family::P256,
                Some("P-384") => Family::P384,
                _ => return Err(Skip::Unusable("unsupported curve")),
            };
            let key =
                DecodingKey::from_ec_components(x, y).map_err(|_| Skip::Unusable("bad EC components"))?;
            (family, key, fingerprint(&["EC", x, y]))
        }
        Some("OKP") => {
            if s("crv") != Some("Ed25519") {
                return Err(Skip::Unusable("unsupported OKP curve"));
            }
            let Some(x) = s("x") else {
                return Err(Skip::Unusable("OKP key without x"));
            };
            let key = DecodingKey::from_ed_components(x).map_err(|_| Skip::Unusable("bad OKP key"))?;
            (Family::Ed25519, key, fingerprint(&["OKP", x]))
        }
        Some("oct") => return Err(Skip::Unusable("symmetric keys are never taken from a key set")),
        _ => return Err(Skip::Unusable("unsupported kty")),
    };
    if let Some(a) = alg
        && !family_allows(family, a)
    {
        return Err(Skip::Unusable("alg does not fit the key type"));
    }
    Ok(VerifyKey {
        kid,
        alg,
        family,
        key,
        // The same material kept to another issuer is another key.
        fingerprint: match &issuer {
            Some(i) => fingerprint(&[&fp.to_string(), i]),
            None => fp,
        },
        issuer,
    })
}

/// A fixed key for an HMAC secret, under `kid` if it has one.
pub(crate) fn hmac_key(secret: &[u8], kid: Option<&str>) -> VerifyKey {
    VerifyKey {
        kid: kid.map(str::to_owned),
        alg: None,
        family: Family::Hmac,
        key: DecodingKey::from_secret(secret),
        fingerprint: 0,
        issuer: None,
    }
}

/// A fixed key from a PEM public key (RSA or EC `SubjectPublicKeyInfo`), or
/// the bare base64 body Keycloak shows as `realm-public-key`.
pub(crate) fn pem_key(pem: &str) -> Result<VerifyKey, String> {
    let text = if pem.contains("-----BEGIN") {
        pem.to_owned()
    } else {
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            pem.trim()
        )
    };
    if let Ok(key) = DecodingKey::from_rsa_pem(text.as_bytes()) {
        let modulus = key
            .try_get_as_bytes()
            .ok()
            .and_then(pkcs1_modulus)
            .ok_or_else(|| "not an RSA public key in PEM".to_owned())?;
        check_rsa_modulus(modulus).map_err(|w| w.reason().to_owned())?;
        return Ok(VerifyKey {
            kid: None,
            alg: None,
            family: Family::Rsa,
            key,
            fingerprint: fingerprint(&["PEM", &text]),
            issuer: None,
        });
    }
    Err(pem_refusal(pem, &text))
}

/// Why `given` (a fixed key: Keycloak's `realm-public-key`, whole or its
/// bare base64; `text`, as PEM) is no RSA public key, told apart as a user
/// who pasted the wrong thing needs it told. Never the key's content.
fn pem_refusal(given: &str, text: &str) -> String {
    const FETCH: &str = "or leave it out to fetch the realm's keys";
    if given.contains("PRIVATE KEY") {
        return format!(
            "a private key, not a public key: give the realm's public key (and keep the private key secret), {FETCH}"
        );
    }
    if given.contains("BEGIN CERTIFICATE") {
        return format!(
            "a certificate, not a public key: give the realm's public key (Keycloak: Realm settings, Keys, the RS256 key's Public key), {FETCH}"
        );
    }
    if DecodingKey::from_ec_pem(text.as_bytes()).is_ok() || DecodingKey::from_ed_pem(text.as_bytes()).is_ok()
    {
        return format!(
            "an EC or EdDSA public key: a fixed key must be RSA (Keycloak's RS256 key), {FETCH}, whatever their kind"
        );
    }
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.trim().chars())
        .collect();
    if base64::engine::general_purpose::STANDARD.decode(&body).is_err() {
        return "not base64 (cut short, or damaged?): give the realm's public key whole, as PEM or Keycloak's bare base64".into();
    }
    "not an RSA public key in PEM (or Keycloak's bare base64 of one)".into()
}

/// The current keys of one issuer and the machinery to refresh them.
pub(crate) struct KeyStore {
    pub(crate) issuer: String,
    /// The `issuer` label of its fetch metrics: the issuer, or for a
    /// tenant's store the provider's pattern (`…/{tenant}`), so that the
    /// series stay as many as the configured issuers however many tenants
    /// come and go.
    pub(crate) metric_issuer: String,
    current: ArcSwap<KeySet>,
    version: watch::Sender<u64>,
    demand: Notify,
    epoch: Instant,
    /// Milliseconds since `epoch` before which no demand-driven fetch starts.
    next_allowed_ms: AtomicU64,
    /// The fetch count (`version`) that would satisfy every request waiting now.
    wanted: AtomicU64,
    /// Whether a fetch is under way.
    fetching: AtomicBool,
    pub(crate) settings: FetchSettings,
    pub(crate) fetched: bool,
    /// Incremented after each replacement of `current` by a set with other
    /// keys: a verified token whose key was in the set of a generation
    /// still current needs no look-up of its key.
    generation: AtomicU64,
    /// Held by [`replace`](Self::replace): the comparison with the old set,
    /// the store and the new generation are one step even if a second
    /// writer ever came (today the store's one fetch task is the only one).
    replacing: Mutex<()>,
}

impl KeyStore {
    pub(crate) fn new(issuer: &str, settings: FetchSettings, fixed: Option<KeySet>) -> Self {
        let fetched = fixed.is_none();
        Self {
            issuer: issuer.to_owned(),
            metric_issuer: metric_label(issuer),
            current: ArcSwap::from_pointee(fixed.unwrap_or_default()),
            version: watch::Sender::new(0),
            demand: Notify::new(),
            epoch: Instant::now(),
            next_allowed_ms: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            fetching: AtomicBool::new(false),
            settings,
            fetched,
            generation: AtomicU64::new(0),
            replacing: Mutex::new(()),
        }
    }

    /// A store no key will ever come to (offline, or a pattern whose
    /// tenants have stores of their own): a token that needs one is refused
    /// at once (`KeysUnavailable`), without waiting.
    pub(crate) fn never_fetched(issuer: &str, settings: FetchSettings) -> Self {
        let mut store = Self::new(issuer, settings, None);
        store.fetched = false;
        store
    }

    pub(crate) fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    /// The generation of the key set: read it before [`keys`](Self::keys),
    /// so that a set replaced meanwhile shows as a newer generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes `set` the current keys; a new generation when its keys differ.
    fn replace(&self, set: KeySet) {
        let _one_writer = self.replacing.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = {
            let old = self.current.load();
            // Whatever their order: an issuer may list the same keys
            // another way at each fetch.
            let changed = old.keys.len() != set.keys.len()
                || set
                    .keys
                    .iter()
                    .any(|k| !old.still_has(k.kid.as_deref(), k.fingerprint))
                || old
                    .keys
                    .iter()
                    .any(|k| !set.still_has(k.kid.as_deref(), k.fingerprint));
            // A rotation is said (which kids came and went), so a token
            // refused as signed by an unknown key can be told from a key
            // the issuer withdrew; the first load and a set dropped as too
            // old have lines of their own.
            if changed && old.loaded && set.loaded {
                let (added, removed) = (kids_not_in(&set, &old), kids_not_in(&old, &set));
                // The same keys in another order are no rotation.
                if (added.as_str(), removed.as_str()) != ("none", "none") {
                    tracing::info!(
                        target: LOG,
                        issuer = %palisade_core::syntax::url_without_credentials(&self.issuer),
                        added = %added,
                        removed = %removed,
                        keys = set.keys.len(),
                        "JWKS changed"
                    );
                }
            }
            changed
        };
        self.current.store(Arc::new(set));
        // After the store: a reader that sees the new generation sees the
        // new set.
        if changed {
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Waits (bounded) for a fetch that may bring this key. Returns the key,
    /// or why not.
    pub(crate) async fn wait_for_key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        failed: Option<u64>,
    ) -> Result<Arc<VerifyKey>, crate::JwtError> {
        let wait = self.settings.unknown_kid_wait;
        // A key whose signature did not check is no answer.
        let find = |set: &KeySet| {
            set.find(kid, alg)
                .filter(|k| Some(k.fingerprint) != failed)
                .cloned()
        };
        let unknown = || {
            if self.current.load().loaded {
                crate::JwtError::UnknownKey
            } else {
                crate::JwtError::KeysUnavailable
            }
        };
        // Read once, first: a fetch under way now may have begun before the
        // key was published; one not under way now begins after this
        // request's token (and so its key) existed. Read after `seen`, a
        // fetch that ended in between would be taken for one not under
        // way, and its version for the one that looked for the key.
        let in_flight = self.fetching.load(Ordering::Acquire);
        // Subscribed before looking: a set stored after this look is
        // announced to `rx` (a fetch stores the set, then the version).
        let mut rx = self.version.subscribe();
        let seen = *rx.borrow_and_update();
        // The request missed the key earlier; a fetch may have brought it
        // since (another request's), and the next may be far off.
        if let Some(k) = find(&self.current.load()) {
            return Ok(k);
        }
        if !self.fetched {
            return Err(unknown());
        }
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        if !in_flight
            && self.next_allowed_ms.load(Ordering::Acquire) > self.now_ms().saturating_add(wait_ms)
            && !self.fetching.load(Ordering::Acquire)
        {
            // No fetch is under way (a fetch marks itself under way before
            // it moves the next allowed time, read first here) and none may
            // start within the wait: answer now rather than hold the
            // request, from the set of a fetch that ended since the look
            // above, if one did.
            return find(&self.current.load()).ok_or_else(unknown);
        }
        // A fetch already under way may have started before the key was
        // published: only the one after it is sure to see it.
        let need = seen.wrapping_add(1 + u64::from(in_flight));
        self.wanted.fetch_max(need, Ordering::AcqRel);
        self.demand.notify_one();
        let found = within(wait, async {
            loop {
                if rx.changed().await.is_err() {
                    return None;
                }
                if let Some(k) = find(&self.current.load()) {
                    return Some(k);
                }
                // The fetch that would have brought the key has ended
                // without it (the key is not published, or the fetch
                // failed): no use waiting out the rest of the wait.
                if *rx.borrow() >= need {
                    return None;
                }
            }
        })
        .await;
        found.flatten().ok_or_else(unknown)
    }
}

/// `f`'s output if it comes within `wait`, whatever polls it: in a Tokio
/// runtime the wait is that runtime's timer; outside one (a `futures`
/// executor, a plain `block_on`), where Tokio's timer would panic, it is the
/// `palisade-jwks` thread's. `None` when the time is up (or no timer can be
/// had).
pub(crate) async fn within<F: Future>(wait: Duration, f: F) -> Option<F::Output> {
    let timed = if tokio::runtime::Handle::try_current().is_ok() {
        tokio::time::timeout(wait, f)
    } else {
        let handle = jwks_runtime().ok()?;
        // The timer is registered with the runtime current when it is made.
        let _entered = handle.enter();
        tokio::time::timeout(wait, f)
    };
    timed.await.ok()
}

/// Keeps one store's keys fresh on the process's JWKS thread; dropping it
/// stops that.
struct FetchTask(tokio::task::AbortHandle);

impl Drop for FetchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A fetched key store and the task that keeps it fresh, shared by every
/// authenticator of the process that trusts its issuer the same way (the
/// same issuer, key source and fetch settings): one replacing another in a
/// hot reload keeps the keys rather than fetching them again, and the
/// issuer is asked once however many authenticators trust it. The task
/// stops when the last of them is dropped.
pub(crate) struct Fetched {
    pub(crate) store: Arc<KeyStore>,
    _task: FetchTask,
}

/// Puts both of `metric_issuer`'s fetch series on the recorder at zero (the
/// example services' contract lists the counter), rather than only once a
/// fetch has ended.
pub(crate) fn count_no_fetches(metric_issuer: &str) {
    for result in ["success", "failure"] {
        metrics::counter!(JWKS_FETCHES, "issuer" => metric_label(metric_issuer), "result" => result)
            .increment(0);
    }
}

/// An issuer as a metric's label: without credentials a URL could carry
/// (a scrape shows every label to whoever reads the metrics).
pub(crate) fn metric_label(issuer: &str) -> String {
    palisade_core::syntax::url_without_credentials(issuer)
}

type LiveStore = (String, JwksSource, FetchSettings, Weak<Fetched>);

/// The store for `issuer` fetched from `source` with `settings`: a live
/// one if there is one, else a new one, fetching from now on.
pub(crate) fn fetched_store(
    issuer: &str,
    metric_issuer: &str,
    source: &JwksSource,
    settings: &FetchSettings,
) -> std::io::Result<Arc<Fetched>> {
    fetched_store_if(issuer, metric_issuer, source, settings, || true)?
        .ok_or_else(|| std::io::Error::other("a key store that may start did not"))
}

/// [`fetched_store`], starting a new store only when `may_start` says so
/// (asked only then: a live store costs the issuer nothing); `None` when
/// it does not.
pub(crate) fn fetched_store_if(
    issuer: &str,
    metric_issuer: &str,
    source: &JwksSource,
    settings: &FetchSettings,
    may_start: impl FnOnce() -> bool,
) -> std::io::Result<Option<Arc<Fetched>>> {
    static LIVE: Mutex<Vec<LiveStore>> = Mutex::new(Vec::new());
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    live.retain(|(.., weak)| weak.strong_count() > 0);
    let found = live
        .iter()
        .filter(|(i, src, set, _)| i == issuer && src == source && set == settings)
        .find_map(|(.., weak)| weak.upgrade());
    if let Some(shared) = found {
        return Ok(Some(shared));
    }
    if !may_start() {
        return Ok(None);
    }
    let mut store = KeyStore::new(issuer, settings.clone(), None);
    store.metric_issuer = metric_label(metric_issuer);
    count_no_fetches(metric_issuer);
    let store = Arc::new(store);
    let task = FetchTask(
        jwks_runtime()?
            .spawn(run_store(store.clone(), source.clone()))
            .abort_handle(),
    );
    let fetched = Arc::new(Fetched { store, _task: task });
    live.push((
        issuer.to_owned(),
        source.clone(),
        settings.clone(),
        Arc::downgrade(&fetched),
    ));
    Ok(Some(fetched))
}

/// The runtime of the one `palisade-jwks` thread, started on first use:
/// every store's refresh runs there, so requests never wait for a
/// scheduled refresh and no authenticator starts a thread of its own.
pub(crate) fn jwks_runtime() -> std::io::Result<tokio::runtime::Handle> {
    static RUNTIME: Mutex<Option<tokio::runtime::Handle>> = Mutex::new(None);
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = &*slot {
        return Ok(handle.clone());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("palisade-jwks".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Which redirects a client follows.
#[derive(Clone, Copy)]
enum Redirects {
    /// Any but from `https` to plain `http` (keys must not leave TLS on a
    /// server's say; a key set may move to another origin, a CDN).
    NoDowngrade,
    /// Only to the first request's origin (which also keeps it on TLS): an
    /// introspection's `POST` carries the token, and perhaps the client's
    /// secret, in its body, which a `307` or `308` to another server would
    /// hand on (RFC 7662 §4: to the authorization server only).
    SameOrigin,
}

/// Follows at most `max` redirects of the kind `redirects` allows.
fn redirect_policy(max: usize, redirects: Redirects) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let previous = attempt.previous();
        let refused = match redirects {
            Redirects::NoDowngrade => (previous.last().is_some_and(|u| u.scheme() == "https")
                && attempt.url().scheme() != "https")
                .then_some("a redirect from https to plain http"),
            Redirects::SameOrigin => previous
                .first()
                .is_some_and(|first| first.origin() != attempt.url().origin())
                .then_some("a redirect to another origin"),
        };
        if let Some(why) = refused {
            attempt.error(why)
        } else if previous.len() > max {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

pub(crate) fn http_client(settings: &FetchSettings) -> Result<reqwest::Client, String> {
    client_with(settings, Redirects::NoDowngrade)
}

/// Checks that the issuer's HTTP client can be built with `settings`' extra
/// trust anchors, which hold at least one certificate: at configuration,
/// so that a bad CA file is an error there, not a key store that never
/// fetches.
pub(crate) fn check_ca_bundle(settings: &FetchSettings) -> Result<(), String> {
    let Some(pem) = &settings.extra_ca_pem else {
        return Ok(());
    };
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("bad CA bundle: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    http_client(settings).map(drop)
}

/// [`http_client`] whose redirects stay on the first request's origin
/// ([`Redirects::SameOrigin`]): for token introspection.
pub(crate) fn same_origin_client(settings: &FetchSettings) -> Result<reqwest::Client, String> {
    client_with(settings, Redirects::SameOrigin)
}

fn client_with(settings: &FetchSettings, redirects: Redirects) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(settings.timeout)
        .timeout(settings.timeout)
        .redirect(redirect_policy(3, redirects))
        .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &settings.extra_ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("bad CA bundle: {e}"))?;
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| {
        // reqwest's own text is "builder error"; what went wrong is its source.
        let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
        format!("cannot build HTTP client: {why}")
    })
}

/// Runs `build` on Tokio's blocking pool, one such build at a time
/// process-wide, and waits for it: for work too slow for the JWKS thread,
/// whose every store's refreshes (and introspection's and DPoP's Redis
/// checks) it would hold up. Building an HTTP client is such work: it
/// reads and parses the system's trust store (about 2 ms in a release
/// build, 13 in a debug one), once per key store, so once per tenant an
/// issuer pattern admits, which tokens not yet verified can name. One at
/// a time, a flood of new tenants takes one blocking thread at most; a
/// store dropped while it waits for its turn gives it up.
async fn off_the_jwks_thread<T: Send + 'static>(
    build: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    static BUILDING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    // Never closed, so `acquire` always gives a permit.
    let _turn = BUILDING.acquire().await;
    tokio::task::spawn_blocking(build)
        .await
        .unwrap_or_else(|e| Err(format!("the build stopped: {e}")))
}

async fn run_store(store: Arc<KeyStore>, source: JwksSource) {
    let settings = store.settings.clone();
    let client = match off_the_jwks_thread(move || http_client(&settings)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&store.issuer), error = %e, "JWKS fetching disabled");
            return;
        }
    };
    let s = store.settings.clone();
    let mut jwks_uri = match &source {
        JwksSource::Uri(u) => Some(u.clone()),
        _ => None,
    };
    let discovers = matches!(source, JwksSource::Discovery);
    let mut next_refresh = tokio::time::Instant::now();
    let mut backoff = Duration::from_secs(1);
    let mut healthy: Option<bool> = None;
    let mut last_good: Option<Instant> = None;
    loop {
        let demanded = tokio::select! {
            () = tokio::time::sleep_until(next_refresh) => false,
            () = store.demand.notified() => true,
        };
        if demanded {
            if *store.version.borrow() >= store.wanted.load(Ordering::Acquire) {
                // Every request that asked has been served by a later fetch.
                continue;
            }
            let allowed = store.next_allowed_ms.load(Ordering::Acquire);
            let now = store.now_ms();
            if allowed > now {
                tokio::time::sleep(Duration::from_millis(allowed - now)).await;
            }
        }
        let min_interval_ms = u64::try_from(s.min_refresh_interval.as_millis()).unwrap_or(u64::MAX);
        // Under way first, then the next allowed time: a request that reads
        // the time this fetch set also reads it under way (`wait_for_key`).
        store.fetching.store(true, Ordering::Release);
        store
            .next_allowed_ms
            .store(store.now_ms().saturating_add(min_interval_ms), Ordering::Release);
        let result = fetch(&client, &store, &mut jwks_uri, discovers).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        metrics::counter!(JWKS_FETCHES, "issuer" => store.metric_issuer.clone(), "result" => outcome)
            .increment(1);
        match result {
            Ok((set, max_age)) => {
                let count = set.keys.len();
                store.replace(set);
                let ttl = max_age.unwrap_or(s.default_ttl).clamp(s.min_ttl, s.max_ttl);
                // Refresh at three quarters of the lifetime, so no request
                // waits, give or take a tenth: replicas started together do
                // not keep asking the issuer together.
                next_refresh = tokio::time::Instant::now()
                    + palisade_core::limits::give_or_take_a_tenth(ttl.mul_f64(0.75));
                backoff = Duration::from_secs(1);
                if healthy != Some(true) {
                    tracing::info!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&store.issuer), keys = count, "JWKS loaded");
                }
                healthy = Some(true);
                last_good = Some(Instant::now());
            }
            Err(e) => {
                let cached = store.current.load().keys.len();
                if healthy != Some(false) {
                    tracing::warn!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&store.issuer), error = %e, cached_keys = cached, "JWKS fetch failed; keeping the last good keys and retrying with backoff");
                }
                healthy = Some(false);
                if last_good.is_none_or(|t| t.elapsed() > s.max_stale) && cached > 0 {
                    tracing::error!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&store.issuer), "cached JWKS older than max_stale dropped: tokens of this issuer now fail");
                    store.replace(KeySet::default());
                }
                // Give or take a tenth, as above: a fleet retrying an
                // issuer that is back does not come back at it at once.
                next_refresh =
                    tokio::time::Instant::now() + palisade_core::limits::give_or_take_a_tenth(backoff);
                backoff = (backoff * 2)
                    .min(Duration::from_secs(300))
                    .min(s.default_ttl.max(Duration::from_secs(1)));
            }
        }
        store.version.send_modify(|v| *v = v.wrapping_add(1));
        // Only now: a request that misses a key before this fetch's set and
        // version are out must still count this fetch as under way, and so
        // ask for the next one (its `need`); cleared earlier, it took this
        // fetch, which may have begun before the key was published, for
        // the one after.
        store.fetching.store(false, Ordering::Release);
    }
}

/// One fetch of the key set: from `jwks_uri`, or from the URI the issuer's
/// discovery document names when it is `None` (then kept in it). A
/// discovered URI that fails is forgotten, so the next fetch asks the
/// discovery document again: an issuer that moved its keys is followed, as
/// Istio reads discovery again.
async fn fetch(
    client: &reqwest::Client,
    store: &KeyStore,
    jwks_uri: &mut Option<String>,
    discovers: bool,
) -> Result<(KeySet, Option<Duration>), String> {
    let result = fetch_from(client, store, jwks_uri).await;
    if result.is_err() && discovers {
        *jwks_uri = None;
    }
    result
}

async fn fetch_from(
    client: &reqwest::Client,
    store: &KeyStore,
    jwks_uri: &mut Option<String>,
) -> Result<(KeySet, Option<Duration>), String> {
    let uri = match jwks_uri {
        Some(u) => u.clone(),
        None => {
            // The keys come over TLS when the document did.
            let u =
                crate::Discovery::fetch_endpoint(client, &store.issuer, store.settings.max_body, "jwks_uri")
                    .await
                    .map_err(|e| e.to_string())?;
            if palisade_core::syntax::plain_http_elsewhere(&u) {
                tracing::warn!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&store.issuer), jwks_uri = %palisade_core::syntax::url_without_credentials(&u), "the discovery document's JWKS URI uses plain http: keys can be tampered with in transit");
            }
            *jwks_uri = Some(u.clone());
            u
        }
    };
    let (body, max_age) = get(client, &uri, store.settings.max_body).await?;
    let set = parse_jwks(&store.issuer, &body)
        .map_err(|e| format!("{}: {e}", palisade_core::syntax::url_without_credentials(&uri)))?;
    Ok((set, max_age))
}

pub(crate) async fn get(
    client: &reqwest::Client,
    url: &str,
    max_body: usize,
) -> Result<(Vec<u8>, Option<Duration>), String> {
    // What errors (and so the logs) say of it: no user information.
    let shown = palisade_core::syntax::url_without_credentials(url);
    let resp = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("{shown}: {}", describe(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("{shown}: HTTP {}", resp.status().as_u16()));
    }
    // A sign-in page or a proxy's error page where JSON belongs: said as
    // such, and not read.
    if resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/html"))
    {
        return Err(format!(
            "{shown}: an HTML page (content-type text/html), not JSON"
        ));
    }
    let max_age = resp
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let body = crate::body_up_to(resp, max_body)
        .await
        .map_err(|e| format!("{shown}: {}", describe(&e)))?
        .ok_or_else(|| format!("{shown}: body larger than {max_body} bytes"))?;
    Ok((body, max_age))
}

pub(crate) fn describe(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_redirect() {
        "too many redirects"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "broken body"
    } else {
        "request failed"
    }
}

/// `max-age` of a `Cache-Control` value (`no-store`/`no-cache` count as 0).
pub(crate) fn max_age(value: &str) -> Option<Duration> {
    let mut out = None;
    for d in value.split(',').map(str::trim) {
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            out = v.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slow builds (a key store's HTTP client) run off the JWKS thread, one
    /// at a time.
    #[test]
    fn slow_builds_run_off_the_jwks_thread_one_at_a_time() {
        use std::sync::atomic::AtomicUsize;
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let jwks = jwks_runtime().unwrap();
        let builds: Vec<_> = (0..3)
            .map(|_| {
                jwks.spawn(off_the_jwks_thread(|| {
                    let running = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
                    MOST.fetch_max(running, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(30));
                    RUNNING.fetch_sub(1, Ordering::SeqCst);
                    Ok(std::thread::current().name().map(str::to_owned))
                }))
            })
            .collect();
        let waiter = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for build in builds {
            let thread = waiter.block_on(build).unwrap().unwrap();
            assert_ne!(thread.as_deref(), Some("palisade-jwks"));
        }
        assert_eq!(MOST.load(Ordering::SeqCst), 1, "builds ran at once");
    }

    const RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    /// One `kid` for one key in two algorithms (Keycloak's RS256 and PS256
    /// providers of one imported key): a token of either finds the key
    /// that takes its algorithm. Two entries of one `kid` for the same
    /// algorithms keep the first.
    #[test]
    fn a_kid_published_for_two_algorithms_finds_the_one_a_token_names() {
        let key =
            |alg: &str| serde_json::json!({"kty": "RSA", "kid": "k", "alg": alg, "n": RSA_N, "e": "AQAB"});
        let set = parse_jwks(
            "https://idp",
            serde_json::json!({"keys": [key("RS256"), key("PS256"), key("RS256")]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(set.keys.len(), 2, "the second RS256 entry is a duplicate");
        for alg in [Algorithm::RS256, Algorithm::PS256] {
            let found = set.find(Some("k"), alg).expect("a key");
            assert!(found.allows(alg), "{alg:?}");
        }
        let refused = set
            .find(Some("k"), Algorithm::ES256)
            .expect("the kid's first, for the refusal");
        assert!(!refused.allows(Algorithm::ES256));
        assert!(set.still_has(Some("k"), set.keys[1].fingerprint));
    }

    /// A server on loopback answering every request with `answer`; the
    /// count of requests it got.
    async fn serve(answer: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&asked);
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut head = vec![0; 8192];
                    let _ = conn.read(&mut head).await;
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        (origin, asked)
    }

    #[tokio::test]
    async fn a_fetchs_error_and_a_key_sources_debug_show_no_password() {
        let (origin, _) =
            serve("HTTP/1.1 500 Oops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()).await;
        let with_password = origin.replace("http://", "http://svc:hunter2@");
        let client = http_client(&FetchSettings::default()).unwrap();
        for url in [
            format!("{with_password}/jwks"),
            "http://svc:hunter2@127.0.0.1:1/jwks".into(),
        ] {
            let err = get(&client, &url, 1 << 20).await.unwrap_err();
            assert!(!err.contains("hunter2") && err.contains("127.0.0.1"), "{err}");
        }
        let source = crate::config::JwksSource::Uri("https://svc:hunter2@keys.example/jwks".into());
        assert!(!format!("{source:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn a_discovered_key_set_uri_that_fails_is_discovered_again() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let moved = Arc::new(AtomicBool::new(false));
        let (issuer, flag) = (origin.clone(), Arc::clone(&moved));
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let (issuer, moved) = (issuer.clone(), flag.load(SeqCst));
                tokio::spawn(async move {
                    let mut head = vec![0; 8192];
                    let n = conn.read(&mut head).await.unwrap_or(0);
                    let line = String::from_utf8_lossy(&head[..n])
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let keys = if moved { "/keys-2" } else { "/keys-1" };
                    let jwks = serde_json::json!({"keys": [{"kty": "RSA", "alg": "RS256", "kid": "k", "n": RSA_N, "e": "AQAB"}]});
                    let (status, body) = if line.contains("/.well-known/openid-configuration") {
                        (
                            "200 OK",
                            serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}{keys}")})
                                .to_string(),
                        )
                    } else if line.contains(&format!("{keys} ")) {
                        ("200 OK", jwks.to_string())
                    } else {
                        ("404 Not Found", String::new())
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        let store = KeyStore::new(&origin, FetchSettings::default(), None);
        let client = http_client(&store.settings).unwrap();
        let mut uri = None;
        assert!(fetch(&client, &store, &mut uri, true).await.is_ok());
        assert_eq!(uri, Some(format!("{origin}/keys-1")));
        // The issuer moves its keys: the old URI fails once, and is forgotten.
        moved.store(true, SeqCst);
        assert!(fetch(&client, &store, &mut uri, true).await.is_err());
        assert_eq!(uri, None);
        assert!(fetch(&client, &store, &mut uri, true).await.is_ok());
        assert_eq!(uri, Some(format!("{origin}/keys-2")));
        // A configured URI is kept whatever happens to it.
        let mut configured = Some(format!("{origin}/keys-1"));
        assert!(fetch(&client, &store, &mut configured, false).await.is_err());
        assert_eq!(configured, Some(format!("{origin}/keys-1")));
    }

    #[tokio::test]
    async fn an_introspection_post_follows_no_redirect_to_another_origin() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_owned();
        let (elsewhere, asked_elsewhere) = serve(ok).await;
        let moved = |to: &str| {
            format!(
                "HTTP/1.1 308 Permanent Redirect\r\nlocation: {to}/introspect\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
        };
        let (origin, _) = serve(moved(&elsewhere)).await;
        let post = |client: reqwest::Client, url: String| async move {
            client.post(url).body("token=secret-token").send().await
        };
        let settings = FetchSettings::default();
        let refused = post(
            same_origin_client(&settings).unwrap(),
            format!("{origin}/introspect"),
        )
        .await;
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(
            asked_elsewhere.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the token went elsewhere"
        );
        // Key sets may move to another origin (a CDN).
        let followed = post(http_client(&settings).unwrap(), format!("{origin}/introspect")).await;
        assert_eq!(followed.unwrap().status(), 200);
        assert_eq!(asked_elsewhere.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn enc_keys_unknown_kty_and_bad_alg_are_skipped_not_fatal() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc", "n": RSA_N, "e": "AQAB"},
            {"kty": "XYZ", "kid": "future"},
            {"kty": "RSA", "alg": "RSA-OAEP", "kid": "oaep", "n": RSA_N, "e": "AQAB"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "alg": "RS256", "kid": "good", "use": "sig", "n": RSA_N, "e": "AQAB"},
        ]});
        let set = parse_jwks("https://i", doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(set.find(Some("good"), Algorithm::RS256).is_some());
        assert!(set.find(Some("enc"), Algorithm::RS256).is_none());
    }

    /// A key set of one RSA key under each of `kids`.
    fn set(kids: &[&str]) -> KeySet {
        let keys: Vec<_> = kids
            .iter()
            .map(|kid| serde_json::json!({"kty": "RSA", "alg": "RS256", "kid": kid, "n": RSA_N, "e": "AQAB"}))
            .collect();
        parse_jwks(
            "https://i",
            serde_json::json!({ "keys": keys }).to_string().as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_new_generation_comes_with_other_keys_only() {
        let store = KeyStore::new("https://i", FetchSettings::default(), Some(set(&["a"])));
        let g = store.generation();
        // A refresh that brings the same keys keeps every cached token fast,
        // in another order too.
        store.replace(set(&["a"]));
        assert_eq!(store.generation(), g);
        store.replace(set(&["a", "b"]));
        assert_eq!(store.generation(), g + 1);
        store.replace(set(&["b", "a"]));
        assert_eq!(store.generation(), g + 1);
        store.replace(set(&["a", "b"]));
        store.replace(set(&["b"]));
        assert_eq!(store.generation(), g + 2);
        store.replace(KeySet::default());
        assert_eq!(store.generation(), g + 3);
    }

    #[test]
    fn a_rotation_is_said_with_the_kids_that_came_and_went() {
        // The log lines of a thread's subscriber: alone in the process, no
        // other test registers the event's call site first.
        if !palisade_testkit::in_a_process_of_its_own(
            "jwks::tests::a_rotation_is_said_with_the_kids_that_came_and_went",
        ) {
            return;
        }
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("info");
        tracing::subscriber::with_default(subscriber, || {
            let store = KeyStore::new("https://i", FetchSettings::default(), Some(set(&["old", "kept"])));
            store.replace(set(&["old", "kept"]));
            store.replace(set(&["kept", "old"]));
            assert!(
                lines.containing("JWKS changed").is_empty(),
                "the same keys again are no change"
            );
            store.replace(set(&["kept", "new"]));
            let said = lines.containing("JWKS changed");
            assert_eq!(said.len(), 1, "{said:?}");
            assert!(
                said[0].contains(r#"added="new""#) && said[0].contains(r#"removed="old""#),
                "{}",
                said[0]
            );
            assert!(said[0].contains("INFO"), "{}", said[0]);
            // Dropped as too old: said by its own error line, not as a rotation.
            store.replace(KeySet::default());
            assert_eq!(lines.containing("JWKS changed").len(), 1);
        });
        let many: Vec<String> = (0..11).map(|i| format!("k{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            kids_not_in(&set(&many), &set(&["k0"])),
            r#""k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8" and 2 more"#
        );
        assert_eq!(kids_not_in(&set(&["a"]), &set(&["a"])), "none");
    }

    #[test]
    fn a_key_pins_its_algorithm() {
        let doc = serde_json::json!({"keys": [{"kty": "RSA", "alg": "RS256", "kid": "k", "n": RSA_N, "e": "AQAB"}]});
        let set = parse_jwks("https://i", doc.to_string().as_bytes()).unwrap();
        let k = set.find(Some("k"), Algorithm::RS256).unwrap();
        assert!(k.allows(Algorithm::RS256));
        assert!(!k.allows(Algorithm::PS256));
        assert!(!k.allows(Algorithm::HS256));
    }

    #[test]
    fn kidless_token_needs_exactly_one_fitting_key() {
        let one = serde_json::json!({"keys": [{"kty": "RSA", "n": RSA_N, "e": "AQAB"}]});
        let set = parse_jwks("https://i", one.to_string().as_bytes()).unwrap();
        assert!(set.find(None, Algorithm::RS256).is_some());
        assert!(set.find(None, Algorithm::ES256).is_none());
        let two = serde_json::json!({"keys": [{"kty": "RSA", "kid": "a", "n": RSA_N, "e": "AQAB"}, {"kty": "RSA", "kid": "b", "n": RSA_N, "e": "AQAB"}]});
        let set = parse_jwks("https://i", two.to_string().as_bytes()).unwrap();
        assert!(set.find(None, Algorithm::RS256).is_none());
    }

    #[test]
    fn short_rsa_keys_are_skipped() {
        let doc =
            serde_json::json!({"keys": [{"kty": "RSA", "kid": "weak", "n": &RSA_N[..170], "e": "AQAB"}]});
        assert!(
            parse_jwks("https://i", doc.to_string().as_bytes())
                .unwrap()
                .keys
                .is_empty()
        );
    }

    /// Wycheproof's `rejects1024bitRsaKey` key.
    const RSA_1024_N: &str = "rJBIp6T1YK-RtPyvYqFFlcucqewSAA_IReSFchE8qyiQrbARqRlXWkB2DR8j_pJQnIpYELbQWZC5Cd0PTGAU8rMbar2AW6zpmBbi7aQf17lUBdt8XI9M9rq7FPVQ1dDdUXm1SVH_9qqWhvMPR422SbfHBEzCAtzK0ANDRo6qz78";
    /// Wycheproof's `rejectsKeyWithRocaVulnerability` key.
    const ROCA_N: &str = "AanFpofbj7KjD4Lf-N2hVMKR7yewSyXhhbirIMTGpfYEhZ_lnt5UoK98DnKIgArXGTu3MaW_HhFw16HGaTDUHqPrId7fe4r11CqRw09yBFuW79V8sYIwHdzCaWflUI6auImYbVfoN9_nD5n8N8SY9DwXw7mwZM9wREPXoDPgOoIWl6q_MPsp7n0zs3Z5ZaiQWOOzl1S9OhwAfSiiOwz6efnXEaxuTEtPd7BjSx7NaFka8Dx9U7YqXy2RFj1O9PjyaDGuRh7YXsX3iMUSP_wSyHQg_c_qHRtKUsNSGCT7OZg0hzm2KphtjnayKJvC64vAbROBR4Ubg6Bxg9IQVZ-QYyE";

    #[test]
    fn weak_rsa_keys_are_skipped_and_the_others_kept() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "roca", "n": ROCA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "short", "n": RSA_1024_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "good", "n": RSA_N, "e": "AQAB"},
        ]});
        let set = parse_jwks("https://i", doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(set.find(Some("good"), Algorithm::RS256).is_some());
        assert!(set.find(Some("roca"), Algorithm::RS256).is_none());
        assert!(set.find(Some("short"), Algorithm::RS256).is_none());
        assert_eq!(
            parse_jwk(&doc["keys"][0]).err(),
            Some(Skip::Weak(RsaWeakness::Roca))
        );
        assert_eq!(
            parse_jwk(&doc["keys"][1]).err(),
            Some(Skip::Weak(RsaWeakness::TooShort))
        );
    }

    /// A fixed key that is not an RSA public key is refused saying what it
    /// is: a private key, a certificate, an EC key, base64 cut short.
    #[test]
    fn a_fixed_key_of_the_wrong_kind_is_said_to_be_so() {
        const EC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEGiqw02MWWjF0H8Rbtvg6PAKF4GOC
uhsMRtQYVNfXCb4rC0q5NaIhyGHflfrgxSLNZQ7t3W5XYQu6SGqPxOBbdw==
-----END PUBLIC KEY-----
";
        let bare_ec: String = EC.lines().filter(|l| !l.starts_with("-----")).collect();
        for (given, said) in [
            (
                "-----BEGIN PRIVATE KEY-----\nMIIEvwIBADANBg\n-----END PRIVATE KEY-----\n",
                "a private key",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                "a certificate",
            ),
            (EC, "an EC or EdDSA public key"),
            (&bare_ec, "an EC or EdDSA public key"),
            (&bare_ec[..30], "not base64"),
            (
                "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA",
                "not an RSA public key",
            ),
        ] {
            let err = pem_key(given).err().unwrap();
            assert!(err.contains(said), "{given}: {err}");
            assert!(!err.contains("MII"), "{err}");
        }
    }

    #[test]
    fn a_weak_pem_key_is_refused_with_its_reason() {
        // SubjectPublicKeyInfo of the ROCA modulus, e = 65537.
        let n = URL_SAFE_NO_PAD.decode(ROCA_N).unwrap();
        assert!(n[0] < 0x80, "positive as it is");
        let mut int = vec![0x02, 0x82];
        int.extend(u16::try_from(n.len()).unwrap().to_be_bytes());
        int.extend(&n);
        int.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut pkcs1 = vec![0x30, 0x82];
        pkcs1.extend(u16::try_from(int.len()).unwrap().to_be_bytes());
        pkcs1.extend(int);
        let mut bits = vec![0x03, 0x82];
        bits.extend(u16::try_from(pkcs1.len() + 1).unwrap().to_be_bytes());
        bits.push(0);
        bits.extend(pkcs1);
        let alg_id = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
        ];
        let mut spki = vec![0x30, 0x82];
        spki.extend(u16::try_from(alg_id.len() + bits.len()).unwrap().to_be_bytes());
        spki.extend(alg_id);
        spki.extend(bits);
        let pem = base64::engine::general_purpose::STANDARD.encode(&spki);
        let err = pem_key(&pem).err().unwrap();
        assert!(err.contains("ROCA"), "{err}");
    }

    #[test]
    fn a_secret_without_kid_answers_to_any_kid_and_one_with_a_kid_to_its_own() {
        let free = KeySet::secret(hmac_key(&[7; 32], None));
        assert!(free.find(Some("whatever"), Algorithm::HS256).is_some());
        assert!(free.find(None, Algorithm::HS256).is_some());
        let named = KeySet::secret(hmac_key(&[7; 32], Some("hs-1")));
        assert!(named.find(Some("hs-1"), Algorithm::HS256).is_some());
        assert!(named.find(None, Algorithm::HS256).is_some());
        assert!(named.find(Some("hs-2"), Algorithm::HS256).is_none());
    }

    #[test]
    fn a_document_without_keys_fails() {
        assert!(parse_jwks("https://i", b"<html>").is_err());
        assert!(parse_jwks("https://i", b"{\"kids\":[]}").is_err());
    }

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(max_age("public, max-age=300"), Some(Duration::from_secs(300)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
    }
}
