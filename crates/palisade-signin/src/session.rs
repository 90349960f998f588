//! What a session cookie holds, the identity made from it, and the cache
//! that makes a repeated cookie cost a hash lookup.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, RandomizedNonceKey};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_core::{Identity, TokenClaims, Verification};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cookie::{open_framed, seal_framed};

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    crate::store::unix_ms(SystemTime::now())
}

/// Microseconds since the epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `secs` seconds after the epoch, at most the year 5138 (as token claims'
/// times are bounded): an issuer's `exp` of 2⁶³ seconds or more would
/// overflow `SystemTime`.
pub(crate) fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.min(MAX_SECS))
}

/// The latest time `at` gives: 10¹¹ seconds after the epoch.
const MAX_SECS: u64 = 100_000_000_000;

/// The sealed content of a session cookie. `Debug` prints no token.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    /// Format version.
    pub(crate) v: u8,
    /// This session's id: random, new at every sign-in.
    pub(crate) id: String,
    /// The user (`sub` of the ID token).
    pub(crate) sub: String,
    /// The issuer's session id (`sid`), for back-channel logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sid: Option<String>,
    /// When the user signed in, in milliseconds since the epoch: a
    /// back-channel logout by `sub` ends the sessions created before it,
    /// and a sign-in in the same second after it must survive.
    pub(crate) created_ms: u64,
    /// The last time the session was seen in use (idle timeout).
    pub(crate) seen: u64,
    /// The access token.
    pub(crate) at: String,
    /// When the access token expires.
    pub(crate) at_exp: u64,
    /// When the access token was obtained: one granted for less than
    /// `refresh_before` is refreshed once half its lifetime has passed
    /// ([`Session::refresh_lead`]). Absent (0) in cookies of earlier
    /// releases.
    #[serde(default, rename = "ag", skip_serializing_if = "is_zero")]
    pub(crate) at_got: u64,
    /// The refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rt: Option<String>,
    /// The ID token (the `id_token_hint` of a logout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) it: Option<String>,
    /// How many times its tokens were refreshed: of two copies of one
    /// session (this replica's last refresh, a cookie another replica
    /// renewed since), the one refreshed more often holds the newer
    /// tokens. Absent (0) in cookies of earlier releases.
    #[serde(default, rename = "g", skip_serializing_if = "is_zero")]
    pub(crate) generation: u32,
    /// The key the session is sealed with in the store, when it is kept
    /// there (from its cookie, never serialized): every write of the
    /// session uses it, so a cookie issued before a renewal still opens it.
    #[serde(skip)]
    pub(crate) store_key: Option<Arc<str>>,
}

/// Whether a count or a time is zero (left out of the cookie).
fn is_zero<N: Default + PartialEq>(n: &N) -> bool {
    *n == N::default()
}

impl Session {
    /// How long before its expiry the access token is refreshed:
    /// `refresh_before`; for a token granted for less than that, half its
    /// lifetime, so that it is not refreshed again by every request (it
    /// would be due as soon as it came).
    pub(crate) fn refresh_lead(&self, refresh_before: u64) -> u64 {
        let lifetime = self.at_exp.saturating_sub(self.at_got);
        if self.at_got == 0 || lifetime >= refresh_before {
            return refresh_before;
        }
        lifetime / 2
    }

    /// Whether the session's tokens were obtained before `since`, to the
    /// second (a cookie of an earlier release, which does not say when,
    /// counts as before).
    pub(crate) fn tokens_before(&self, since: SystemTime) -> bool {
        self.at_got < since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// Whether this copy's tokens are newer than `other`'s, a copy of the
    /// same session: refreshed more often.
    pub(crate) fn newer_than(&self, other: &Session) -> bool {
        self.generation > other.generation
    }

    /// When the user signed in, in seconds since the epoch (timeouts).
    pub(crate) fn created_secs(&self) -> u64 {
        self.created_ms / 1000
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("sub", &self.sub)
            .field("created_ms", &self.created_ms)
            .field("at_got", &self.at_got)
            .field("seen", &self.seen)
            .field("at_exp", &self.at_exp)
            .finish_non_exhaustive()
    }
}

/// The cookie's plaintext: the session itself, or a reference to it in
/// the store when it would not fit in cookies.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t")]
pub(crate) enum Payload {
    /// The whole session.
    #[serde(rename = "s")]
    Inline(Session),
    /// The session is in the store under this id.
    #[serde(rename = "r")]
    Stored {
        /// The session id.
        id: String,
        /// The key the stored session is sealed with (base64url), held by
        /// the cookie only: the store alone (a Redis dump, a replica's
        /// memory) shows no token. `None`: stored in clear by a release
        /// before this one, read as it is until it times out.
        #[serde(default, rename = "k", skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
}

/// What a stored session's seal is bound to: its id, under a label of its own.
fn stored_aad(id: &str) -> Vec<u8> {
    [&b"palisade stored session v1\0"[..], id.as_bytes()].concat()
}

/// A new key for a stored session (base64url of 32 random bytes).
pub(crate) fn new_store_key() -> Option<Arc<str>> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes).into())
}

/// Seals a session for the store, bound to its id, with `key` (its
/// cookie's, from [`new_store_key`]). A session keeps its key for life (a
/// fresh nonce per write), so every cookie issued for it opens what is
/// stored last.
pub(crate) fn seal_stored(id: &str, plaintext: &[u8], key: &str) -> Option<Vec<u8>> {
    let key = RandomizedNonceKey::new(&AES_256_GCM, &URL_SAFE_NO_PAD.decode(key).ok()?).ok()?;
    seal_framed(&key, &stored_aad(id), plaintext)
}

/// Opens what [`seal_stored`] sealed for `id` with `key`; `None` when it
/// does not open (another session's data, a wrong key, tampering).
pub(crate) fn open_stored(id: &str, key: &str, sealed: Vec<u8>) -> Option<Vec<u8>> {
    let key = RandomizedNonceKey::new(&AES_256_GCM, &URL_SAFE_NO_PAD.decode(key).ok()?).ok()?;
    open_framed(&key, &stored_aad(id), sealed)
}

/// What a replica that refreshes a session hands the others through the
/// store: the refreshed session and the key its stored copy is sealed
/// with (never in a cookie's `Session`), so that every replica writes it
/// under the one key.
#[derive(Serialize, Deserialize)]
struct Handoff {
    #[serde(rename = "s")]
    session: Session,
    #[serde(default, rename = "k", skip_serializing_if = "Option::is_none")]
    store_key: Option<String>,
}

/// The label of a refreshed session's seal.
const HANDOFF_LABEL: &[u8] = b"palisade refreshed session v1\0";

/// The store key claimed by the replica that refreshes `previous`
/// (`SessionStore::use_once`): one per session and generation.
pub(crate) fn refresh_claim(previous: &Session) -> String {
    format!("refresh:{}:{}", previous.id, previous.generation)
}

/// The store key the refreshed successor of `previous` is put under.
pub(crate) fn successor_key(previous: &Session) -> String {
    format!("refresh:{}:{}:next", previous.id, previous.generation)
}

/// The key a successor of `previous` is sealed with: derived (HKDF-SHA256)
/// from its refresh token, which only the holders of its cookie know, so
/// that the store alone (a Redis dump) shows no token and gives nothing a
/// browser could present. `None` without a refresh token.
fn handoff_key(previous: &Session) -> Option<RandomizedNonceKey> {
    use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
    // A token anyone could guess is no secret to derive a key from.
    let rt = previous.rt.as_deref().filter(|rt| rt.len() >= 16)?;
    let prk = Salt::new(HKDF_SHA256, HANDOFF_LABEL).extract(rt.as_bytes());
    let info = [previous.id.as_bytes()];
    let mut key = [0u8; 32];
    prk.expand(&info, HKDF_SHA256).ok()?.fill(&mut key).ok()?;
    RandomizedNonceKey::new(&AES_256_GCM, &key).ok()
}

/// What a successor's seal is bound to: the session and the generation it
/// replaces.
fn handoff_aad(previous: &Session) -> Vec<u8> {
    [
        HANDOFF_LABEL,
        previous.id.as_bytes(),
        b"\0",
        previous.generation.to_string().as_bytes(),
    ]
    .concat()
}

/// Seals `next`, the refreshed successor of `previous`, for the store.
pub(crate) fn seal_successor(previous: &Session, next: &Session) -> Option<Vec<u8>> {
    let handoff = Handoff {
        session: next.clone(),
        store_key: next.store_key.as_deref().map(str::to_owned),
    };
    let plaintext = serde_json::to_vec(&handoff).ok()?;
    seal_framed(&handoff_key(previous)?, &handoff_aad(previous), &plaintext)
}

/// Opens what [`seal_successor`] sealed for `previous`: the successor, with
/// its store key; `None` when it does not open or is not a later copy of
/// the same session.
pub(crate) fn open_successor(previous: &Session, sealed: Vec<u8>) -> Option<Session> {
    let plaintext = open_framed(&handoff_key(previous)?, &handoff_aad(previous), sealed)?;
    let Handoff {
        mut session,
        store_key,
    } = serde_json::from_slice(&plaintext).ok()?;
    if session.id != previous.id || !session.newer_than(previous) {
        return None;
    }
    session.store_key = store_key.map(Arc::from);
    Some(session)
}

/// The claims of a JWT's payload, without checking its signature: for a
/// token the relying party received from the token endpoint itself.
pub(crate) fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The issuer's names for what a session's identity reads besides
/// Keycloak's: the user's name and roles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClaimNames {
    /// The claim read as the user's name (default `preferred_username`).
    pub(crate) principal: Option<String>,
    /// A claim whose values are realm roles too.
    pub(crate) roles: Option<String>,
    /// This relying party's client id: the roles claim of an access token
    /// is read only when the token is meant for it (its `aud` names it);
    /// one meant for another API carries that API's roles (Entra ID's
    /// `roles`), so the ID token's are read instead.
    pub(crate) client_id: String,
}

/// A session as requests use it: the session and the identity it gives.
pub(crate) struct Live {
    pub(crate) session: Session,
    pub(crate) identity: Identity,
    pub(crate) signed_in: SignedIn,
    /// The access token as every authenticator hands it on
    /// (`RequestAuth::attachment::<BearerToken>()`), for relaying.
    pub(crate) bearer: Arc<palisade_core::authn::BearerToken>,
}

/// Whether `aud` of `claims` names `client_id` (a string, or an array
/// holding it).
fn names_audience(claims: &Map<String, Value>, client_id: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => a == client_id,
        Some(Value::Array(items)) => items.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    }
}

impl Live {
    /// The identity of a session: the access token's claims when it is a
    /// JWT of this issuer and user, else the ID token's (`id_claims`).
    pub(crate) fn new(
        session: Session,
        issuer: &str,
        names: &ClaimNames,
        id_claims: Option<Map<String, Value>>,
    ) -> Self {
        let from_access = unverified_claims(&session.at).filter(|c| {
            c.get("iss").and_then(Value::as_str) == Some(issuer)
                && c.get("sub")
                    .and_then(Value::as_str)
                    .is_none_or(|s| s == session.sub)
        });
        let foreign_access = from_access
            .as_ref()
            .is_some_and(|c| !names_audience(c, &names.client_id));
        let id_claims = id_claims.or_else(|| session.it.as_deref().and_then(unverified_claims));
        // An access token meant for another API: its roles are that API's.
        let id_roles = match (&names.roles, foreign_access) {
            (Some(claim), true) => Some(id_claims.as_ref().and_then(|c| c.get(claim).cloned())),
            _ => None,
        };
        let claims = from_access.or(id_claims).unwrap_or_default();
        let principal = names
            .principal
            .as_ref()
            .map(|c| claims.get(c).and_then(Value::as_str).map(str::to_owned));
        let mut t = TokenClaims::from_claims(claims);
        issuer.clone_into(&mut t.issuer);
        session.sub.clone_into(&mut t.subject);
        if let Some(name) = principal {
            t.preferred_username = name;
        }
        // The roles claim of an access token meant for another API is that
        // API's: policies reading the claim itself
        // (`request.auth.claims[roles]`) see the ID token's too.
        match (id_roles, &names.roles) {
            (Some(roles), Some(claim)) => match roles {
                Some(roles) => {
                    t.claims.insert(claim.clone(), roles.clone());
                    t.add_realm_roles(&roles);
                }
                None => {
                    t.claims.remove(claim);
                }
            },
            (_, Some(claim)) => t.add_realm_roles_from(claim),
            (_, None) => {}
        }
        // The session was sealed by this service after the tokens came from
        // the issuer's token endpoint (ID token verified): its content is
        // what was verified then.
        let identity = Identity::from_session(t, Verification::assertion());
        let access_token: Arc<str> = Arc::from(session.at.as_str());
        let bearer = Arc::new(palisade_core::authn::BearerToken::new(Arc::clone(&access_token)));
        let signed_in = SignedIn {
            access_token,
            expires_at: at(session.at_exp),
            signed_in_at: UNIX_EPOCH + Duration::from_millis(session.created_ms.min(MAX_SECS * 1000)),
        };
        Self {
            session,
            identity,
            signed_in,
            bearer,
        }
    }
}

/// What a handler can use of a signed-in user's session beyond the
/// identity: the access token, to call other services on the user's
/// behalf (token relay). Found with
/// `RequestAuth::attachment::<SignedIn>()`. `Debug` never prints the token.
#[derive(Clone)]
pub struct SignedIn {
    access_token: Arc<str>,
    expires_at: SystemTime,
    signed_in_at: SystemTime,
}

impl SignedIn {
    /// The session's current access token.
    #[must_use]
    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// When the access token expires (it is refreshed before then while
    /// the session lasts).
    #[must_use]
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// When the user signed in: the session ends at the latest this plus
    /// the absolute timeout (`absoluteTimeout`, 8 hours by default), for a
    /// page that warns its user before then. Refreshes keep it.
    #[must_use]
    pub fn signed_in_at(&self) -> SystemTime {
        self.signed_in_at
    }
}

impl fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedIn")
            .field("access_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("signed_in_at", &self.signed_in_at)
            .finish()
    }
}

/// Opened sessions by cookie value. An entry is found by a fingerprint of
/// the value (its length and first bytes, which hold the seal's random
/// nonce, under a per-process hash seed) and then compared in full, chunk
/// by chunk as the request carried them, so a hit costs no joining and a
/// forged or altered cookie can never hit an entry. Bounded; entries leave
/// when their session's absolute timeout passes.
pub(crate) struct Cache {
    map: RwLock<HashMap<u64, Entry, foldhash::fast::RandomState>>,
    seed: foldhash::quality::RandomState,
    capacity: usize,
}

/// A cached session: the whole cookie value, and the session.
type Entry = (Box<str>, Arc<Live>);

/// How many leading bytes of a cookie value its fingerprint reads.
const FINGERPRINT_HEAD: usize = 96;

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::default()),
            seed: foldhash::quality::RandomState::default(),
            capacity,
        }
    }

    fn fingerprint(&self, len: usize, head: &[u8]) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.seed.build_hasher();
        h.write_usize(len);
        h.write(head);
        h.finish()
    }

    /// The session of a cookie value given as its chunks.
    pub(crate) fn get_parts<'p>(
        &self,
        len: usize,
        mut parts: impl Iterator<Item = &'p [u8]> + Clone,
    ) -> Option<Arc<Live>> {
        let mut head = [0u8; FINGERPRINT_HEAD];
        let mut filled = 0;
        for part in parts.clone() {
            let n = part.len().min(FINGERPRINT_HEAD - filled);
            head[filled..filled + n].copy_from_slice(&part[..n]);
            filled += n;
            if filled == FINGERPRINT_HEAD {
                break;
            }
        }
        let key = self.fingerprint(len, &head[..filled]);
        let map = self.map.read().ok()?;
        let (value, live) = map.get(&key)?;
        let mut rest = value.as_bytes();
        if rest.len() != len {
            return None;
        }
        let same = parts.all(|part| match rest.split_at_checked(part.len()) {
            Some((here, after)) if here == part => {
                rest = after;
                true
            }
            _ => false,
        });
        (same && rest.is_empty()).then(|| Arc::clone(live))
    }

    /// The session of a joined cookie value.
    pub(crate) fn get(&self, cookie: &str) -> Option<Arc<Live>> {
        self.get_parts(cookie.len(), std::iter::once(cookie.as_bytes()))
    }

    pub(crate) fn insert(&self, cookie: &str, live: Arc<Live>, absolute: Duration) {
        let head = &cookie.as_bytes()[..cookie.len().min(FINGERPRINT_HEAD)];
        let key = self.fingerprint(cookie.len(), head);
        let Ok(mut map) = self.map.write() else { return };
        if map.len() >= self.capacity {
            let limit = now().saturating_sub(absolute.as_secs());
            map.retain(|_, (_, l)| l.session.created_secs() > limit);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(key, (cookie.into(), live));
    }

    pub(crate) fn remove_session(&self, id: &str) {
        if let Ok(mut map) = self.map.write() {
            map.retain(|_, (_, l)| l.session.id != id);
        }
    }
}

/// Refreshed sessions by session id: a request that still carries the old
/// cookie uses the new tokens (and gets the new cookie), so one refresh
/// serves every request of the session.
pub(crate) struct Successors(RwLock<HashMap<String, Arc<Live>>>);

/// The most successors kept: each holds a session's tokens and claims
/// (kilobytes), and sessions refreshed in a loop must not hold the
/// process's memory. Past it, the eighth due to expire soonest go.
const MAX_SUCCESSORS: usize = 10_000;

impl Successors {
    pub(crate) fn new() -> Self {
        Self(RwLock::new(HashMap::new()))
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Live>> {
        let map = self.0.read().ok()?;
        map.get(id).cloned()
    }

    /// Keeps `live` as its session's successor, unless the one kept is
    /// newer (another request, another replica's hand-on).
    pub(crate) fn insert(&self, live: Arc<Live>) {
        let Ok(mut map) = self.0.write() else { return };
        let t = now();
        // Old successors are useless once their own access token expired.
        if map.len() > 1024 {
            map.retain(|_, l| l.session.at_exp > t);
        }
        if map
            .get(&live.session.id)
            .is_some_and(|kept| kept.session.newer_than(&live.session))
        {
            return;
        }
        if map.len() >= MAX_SUCCESSORS && !map.contains_key(&live.session.id) {
            palisade_core::authn::shed_soonest(&mut map, MAX_SUCCESSORS / 8, |l| l.session.at_exp);
        }
        map.insert(live.session.id.clone(), live);
    }

    pub(crate) fn remove(&self, id: &str) {
        if let Ok(mut map) = self.0.write() {
            map.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Successors of sessions refreshed in a loop stay bounded: past the
    /// cap, those due to expire soonest go, the newest is kept.
    #[test]
    fn successors_are_bounded() {
        let successors = Successors::new();
        let t = now();
        let live = |n: usize| {
            let session = Session {
                v: 1,
                id: format!("s{n}"),
                sub: "alice".into(),
                sid: None,
                created_ms: 0,
                seen: t,
                at: "at".into(),
                at_exp: t + 600 + n as u64,
                at_got: 0,
                rt: None,
                it: None,
                generation: 0,
                store_key: None,
            };
            Arc::new(Live::new(session, "https://idp", &ClaimNames::default(), None))
        };
        for n in 0..MAX_SUCCESSORS + 10 {
            successors.insert(live(n));
        }
        let kept = successors.0.read().unwrap().len();
        assert!(kept <= MAX_SUCCESSORS, "{kept}");
        assert!(successors.get(&format!("s{}", MAX_SUCCESSORS + 9)).is_some());
        assert!(successors.get("s0").is_none(), "the soonest due went first");
    }

    #[test]
    fn a_stored_session_opens_with_its_key_for_its_id_only() {
        let key = new_store_key().unwrap();
        let sealed = seal_stored("s1", b"{\"at\":\"token\"}", &key).unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"token"));
        assert_eq!(
            open_stored("s1", &key, sealed.clone()).as_deref(),
            Some(&b"{\"at\":\"token\"}"[..])
        );
        // The session's next write: its key, a fresh nonce.
        let again = seal_stored("s1", b"{\"at\":\"token\"}", &key).unwrap();
        assert_ne!(again, sealed);
        assert!(open_stored("s1", &key, again).is_some());
        let other_key = new_store_key().unwrap();
        assert_ne!(key, other_key, "a key per session");
        assert_eq!(
            open_stored("s2", &key, sealed.clone()),
            None,
            "another session's id"
        );
        assert_eq!(open_stored("s1", &other_key, sealed.clone()), None, "another key");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open_stored("s1", &key, tampered), None);
        assert_eq!(open_stored("s1", &key, sealed[..5].to_vec()), None);
        assert_eq!(open_stored("s1", "not base64!", sealed), None);
    }

    #[test]
    fn a_refreshed_session_opens_only_for_the_holders_of_the_session_it_replaces() {
        let previous = session("old-token");
        let mut next = session("new-token");
        next.rt = Some("rotated-secret".into());
        next.generation = 1;
        next.store_key = new_store_key();
        let sealed = seal_successor(&previous, &next).unwrap();
        for secret in [&b"new-token"[..], b"rotated-secret", b"refresh-secret"] {
            assert!(!sealed.windows(secret.len()).any(|w| w == secret));
        }
        let opened = open_successor(&previous, sealed.clone()).unwrap();
        assert_eq!((opened.at.as_str(), opened.generation), ("new-token", 1));
        assert_eq!(opened.store_key, next.store_key, "the stored copy's key travels");
        // Whoever lacks the refresh token it replaces (the store alone).
        let mut stranger = previous.clone();
        stranger.rt = Some("another-refresh-secret-entirely".into());
        assert!(open_successor(&stranger, sealed.clone()).is_none());
        // Another session, another generation, tampering.
        let mut other = previous.clone();
        other.id = "s2".into();
        assert!(open_successor(&other, sealed.clone()).is_none());
        let mut later = previous.clone();
        later.generation = 1;
        assert!(open_successor(&later, sealed.clone()).is_none());
        let mut tampered = sealed;
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open_successor(&previous, tampered).is_none());
        // Not a later copy of the session.
        let stale = seal_successor(&previous, &previous).unwrap();
        assert!(open_successor(&previous, stale).is_none());
        // Without a refresh token, or one anyone could guess, there is
        // nothing to derive a key from.
        let mut without = previous.clone();
        without.rt = None;
        assert!(seal_successor(&without, &next).is_none());
        without.rt = Some(String::new());
        assert!(seal_successor(&without, &next).is_none());
        assert_ne!(refresh_claim(&previous), refresh_claim(&later));
        assert_ne!(successor_key(&previous), refresh_claim(&previous));
    }

    #[test]
    fn a_successor_is_never_replaced_by_an_older_copy() {
        let successors = Successors::new();
        let live = |generation: u32| {
            let mut s = session("t");
            s.generation = generation;
            Arc::new(Live::new(s, "https://i", &ClaimNames::default(), None))
        };
        successors.insert(live(2));
        successors.insert(live(1));
        assert_eq!(successors.get("s1").unwrap().session.generation, 2);
        successors.insert(live(3));
        assert_eq!(successors.get("s1").unwrap().session.generation, 3);
    }

    #[test]
    fn an_expiry_past_what_system_time_holds_is_the_latest_it_gives() {
        assert_eq!(at(5), UNIX_EPOCH + Duration::from_secs(5));
        for far in [MAX_SECS, MAX_SECS + 1, 1 << 63, u64::MAX] {
            assert_eq!(at(far), UNIX_EPOCH + Duration::from_secs(MAX_SECS), "{far}");
        }
    }

    fn session(at: &str) -> Session {
        Session {
            v: 1,
            id: "s1".into(),
            sub: "alice".into(),
            sid: Some("idp-1".into()),
            created_ms: 1_000,
            seen: 1,
            at: at.into(),
            at_exp: 2,
            at_got: 1,
            rt: Some("refresh-secret-of-the-session".into()),
            it: None,
            generation: 0,
            store_key: None,
        }
    }

    fn jwt(claims: &Value) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    #[test]
    fn the_cache_finds_a_value_only_when_every_byte_matches_however_it_is_split() {
        let cache = Cache::new(10);
        let value = "v1.2.k1.".to_owned() + &"A".repeat(200) + "tail";
        cache.insert(
            &value,
            Arc::new(Live::new(
                session("opaque"),
                "https://i",
                &ClaimNames::default(),
                None,
            )),
            Duration::from_secs(60),
        );
        let b = value.as_bytes();
        assert!(cache.get(&value).is_some());
        for split in [1, 50, 96, 97, 150, b.len() - 1] {
            let parts = [&b[..split], &b[split..]];
            assert!(
                cache.get_parts(b.len(), parts.iter().copied()).is_some(),
                "{split}"
            );
        }
        // The same head and length, a different byte further on.
        let mut altered = value.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = b'X';
        let altered = String::from_utf8(altered).unwrap();
        assert!(cache.get(&altered).is_none());
        let parts = [&altered.as_bytes()[..100], &altered.as_bytes()[100..]];
        assert!(cache.get_parts(altered.len(), parts.iter().copied()).is_none());
        // A prefix, and the value with more after it.
        assert!(cache.get(&value[..value.len() - 1]).is_none());
        assert!(cache.get(&(value.clone() + "x")).is_none());
        cache.remove_session("s1");
        assert!(cache.get(&value).is_none());
    }

    #[test]
    fn the_identity_comes_from_the_access_token_of_this_issuer_and_user() {
        let at = jwt(
            &serde_json::json!({"iss": "https://i", "sub": "alice", "realm_access": {"roles": ["reader"]}}),
        );
        let live = Live::new(session(&at), "https://i", &ClaimNames::default(), None);
        assert!(live.identity.has_realm_role("reader"));
        assert_eq!(live.identity.request_principal_str(), Some("https://i/alice"));
        assert_eq!(live.identity.methods(), [palisade_core::AuthMethod::Session]);
    }

    /// The issuer's names for the user's name and roles, as a bearer
    /// token's provider has them.
    #[test]
    fn a_sessions_name_and_roles_come_from_the_claims_named() {
        let at = jwt(&serde_json::json!({
            "iss": "https://i", "sub": "alice", "aud": ["shop", "other"], "preferred_username": "al",
            "email": "a@example.com", "roles": ["Orders.Admin"],
        }));
        let live = Live::new(session(&at), "https://i", &ClaimNames::default(), None);
        assert_eq!(live.identity.name(), Some("al"));
        assert!(!live.identity.has_realm_role("Orders.Admin"));
        let names = ClaimNames {
            principal: Some("email".into()),
            roles: Some("roles".into()),
            client_id: "shop".into(),
        };
        let live = Live::new(session(&at), "https://i", &names, None);
        assert_eq!(live.identity.name(), Some("a@example.com"));
        assert!(live.identity.has_realm_role("Orders.Admin"));
        assert_eq!(
            live.identity.claims().unwrap()["realm_access"]["roles"],
            serde_json::json!(["Orders.Admin"])
        );
        // A principal claim the token lacks: no name but the subject.
        let names = ClaimNames {
            principal: Some("upn".into()),
            roles: None,
            client_id: "shop".into(),
        };
        assert_eq!(
            Live::new(session(&at), "https://i", &names, None).identity.name(),
            Some("alice")
        );
    }

    /// An access token meant for another API (asked for with that API's
    /// scope) carries that API's roles: the roles claim is read from the
    /// ID token, meant for this client, instead.
    #[test]
    fn an_access_token_for_another_api_gives_no_roles_of_its_own() {
        let names = ClaimNames {
            principal: None,
            roles: Some("roles".into()),
            client_id: "shop".into(),
        };
        let orders = jwt(&serde_json::json!({
            "iss": "https://i", "sub": "alice", "aud": "api://orders", "roles": ["Orders.Admin"],
        }));
        let id_token = jwt(&serde_json::json!({
            "iss": "https://i", "sub": "alice", "aud": "shop", "roles": ["Shop.Reader"],
        }));
        let mut s = session(&orders);
        s.it = Some(id_token);
        let live = Live::new(s.clone(), "https://i", &names, None);
        assert!(!live.identity.has_realm_role("Orders.Admin"));
        assert!(live.identity.has_realm_role("Shop.Reader"));
        // The claim itself, as a policy reads it, is the ID token's too.
        assert_eq!(
            live.identity.claim("roles"),
            Some(&serde_json::json!(["Shop.Reader"]))
        );
        // Without an ID token to read: no roles from that claim.
        s.it = None;
        let live = Live::new(s, "https://i", &names, None);
        assert!(!live.identity.has_realm_role("Orders.Admin"));
        assert!(live.identity.token().unwrap().realm_roles.is_empty());
        assert_eq!(live.identity.claim("roles"), None);
    }

    #[test]
    fn an_access_token_of_another_user_or_an_opaque_one_falls_back_to_the_id_token() {
        let id_claims = serde_json::json!({"iss": "https://i", "sub": "alice", "name": "Alice"});
        let other = jwt(
            &serde_json::json!({"iss": "https://i", "sub": "mallory", "realm_access": {"roles": ["admin"]}}),
        );
        for at in [other.as_str(), "opaque-token"] {
            let live = Live::new(
                session(at),
                "https://i",
                &ClaimNames::default(),
                id_claims.as_object().cloned(),
            );
            assert!(!live.identity.has_realm_role("admin"));
            assert_eq!(live.identity.subject(), Some("alice"));
            assert_eq!(live.identity.claim("name"), Some(&Value::from("Alice")));
        }
    }

    /// A handler reads when the user signed in and when the access token
    /// expires, from the session.
    #[test]
    fn the_handler_reads_when_the_user_signed_in() {
        let mut s = session("at");
        s.created_ms = 1_700_000_000_123;
        let signed_in = Live::new(s.clone(), "https://i", &ClaimNames::default(), None).signed_in;
        assert_eq!(
            signed_in.signed_in_at(),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        assert_eq!(signed_in.expires_at(), at(s.at_exp));
    }

    #[test]
    fn debug_prints_no_token() {
        let s = session("access-secret");
        let text = format!(
            "{s:?} {:?}",
            Live::new(s.clone(), "https://i", &ClaimNames::default(), None).signed_in
        );
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn malformed_tokens_have_no_claims() {
        for t in [
            "",
            "a.b",
            "a.b.c.d",
            "a.!!!.c",
            &format!("a.{}.c", URL_SAFE_NO_PAD.encode("[1]")),
        ] {
            assert!(unverified_claims(t).is_none(), "{t}");
        }
    }
}
