//! The JWT bearer authenticator: token extraction, verification, the
//! verified-token cache.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use palisade_core::adapter::Reply;
use palisade_core::authn::{
    AuthOutcome, Authenticated, Authenticator, BearerToken, HeaderEdit, HeaderEdits, RequestHead,
    bearer_challenge,
};
use palisade_core::metrics::{TENANT_EVENTS, TENANTS, TOKEN_CACHE};
use palisade_core::{AuthMethod, Check, Identity, TokenClaims, Verification};
use serde_json::{Map, Value};

use crate::cache::TokenCache;
use crate::config::{ConfigError, JwksSource, Provider, Tenants, TokenSource};
use crate::dpop::{
    DpopError, DpopSettings, DpopVerifier, ProofRequest, VerifiedProof, bound_token_matches, sha256,
};
use crate::error::JwtError;
use crate::front::Front;
use crate::introspect::{Active, Convert, Introspector, TokenKey, looks_like_jws};
use crate::jwks::{
    Fetched, KeySet, KeyStore, VerifyKey, fetched_store, fetched_store_if, hmac_key, parse_jwks, pem_key,
};
use crate::resource::{ResourceMetadata, Served};
use crate::token::{Parsed, is_other_kind, parse, parse_jws, peek_issuer, typ_is};
use palisade_core::syntax::TENANT;

const LOG: &str = "palisade::jwt";

struct ProviderState {
    cfg: Provider,
    store: Arc<KeyStore>,
    /// What keeps a fetched store fresh, shared with every authenticator
    /// that trusts the issuer the same way.
    fetched: Option<Arc<Fetched>>,
    /// Its token introspection, if configured.
    introspector: Option<Arc<Introspector>>,
    /// For an issuer pattern: the tenants met so far, and whether each has
    /// keys of its own.
    tenants: Option<Mutex<TenantStores>>,
}

/// The tenants of an issuer pattern met so far, least recently verified
/// first, and when the tenants' rule last allowed or refused a name.
#[derive(Default)]
struct TenantStores {
    live: HashMap<String, Arc<Tenant>>,
    order: std::collections::VecDeque<String>,
    /// When the rule last allowed each name ([`mono_ms`]): the live
    /// tenants, and names whose tenant could not be set up (at most
    /// [`REFUSED_TENANTS`] of those, forgotten all at once when full).
    allowed: HashMap<String, u64>,
    /// Names the rule refused, and when ([`mono_ms`]), so a resolver is not
    /// asked again for each token that names one; forgotten all at once
    /// when full.
    refused: HashMap<String, u64>,
    /// Names the rule is being asked about now, by one request: the others
    /// take its last answer meanwhile, if there is one.
    asking: std::collections::HashSet<String>,
    /// What is left of the rate at which tenants' key stores start.
    starts: StartBudget,
    /// What is left of the rate at which a resolver is asked about names
    /// it never answered ([`RESOLVER_ASKS_PER_SECOND`]); none asked yet is
    /// the whole burst.
    asks: Option<StartBudget>,
    /// Names refused for that rate: said once a minute.
    asks_throttled: palisade_core::logging::Sparse,
    /// Tenants a token has verified for lately (at most
    /// [`PROVEN_TENANTS`]): their stores start whatever the rate says, so
    /// that forged tokens naming new tenants, which use it up, keep no
    /// tenant in use out (one dropped as the least recently used, or met
    /// again after a reload).
    proven: std::collections::HashSet<String>,
    /// Tenants refused for that rate: said once a minute.
    throttled: palisade_core::logging::Sparse,
    /// What the pattern's tenants report ([`TENANTS`], [`TENANT_EVENTS`]).
    metrics: TenantMetrics,
}

/// The metrics of one issuer pattern's tenants.
struct TenantMetrics {
    live: metrics::Gauge,
    started: metrics::Counter,
    evicted: metrics::Counter,
    throttled: metrics::Counter,
}

impl Default for TenantMetrics {
    fn default() -> Self {
        Self {
            live: metrics::Gauge::noop(),
            started: metrics::Counter::noop(),
            evicted: metrics::Counter::noop(),
            throttled: metrics::Counter::noop(),
        }
    }
}

impl TenantMetrics {
    /// The handles of the pattern `issuer`, the counters at zero.
    fn of(issuer: &str) -> Self {
        let label = crate::jwks::metric_label(issuer);
        let event = |event: &'static str| {
            let c = metrics::counter!(TENANT_EVENTS, "issuer" => label.clone(), "event" => event);
            c.increment(0);
            c
        };
        Self {
            live: metrics::gauge!(TENANTS, "issuer" => label.clone()),
            started: event("started"),
            evicted: event("evicted"),
            throttled: event("throttled"),
        }
    }
}

/// How many tenants' key stores may start fetching keys per second, on
/// average, for one issuer pattern, and how many at once
/// ([`StartBudget`]). Each start is a discovery request and a key set
/// request to the issuer, asked for by a token whose signature cannot be
/// checked yet: without a bound, tokens naming a new tenant each, which a
/// rule that allows many names (a directory, every tenant) lets through,
/// have the service send the issuer two requests per token (and log a
/// warning per tenant when it does not answer).
const TENANT_STARTS_PER_SECOND: f64 = 10.0;
/// How many names a tenant resolver that never answered about them is
/// asked about per second, on average, per issuer pattern, and how many
/// at once: it is asked on the request's thread, before the token's
/// signature can be checked, so tokens naming a new name each would
/// otherwise call it once per request. Names it answered are asked again
/// once a minute whatever the rate, and so is a tenant met or proven
/// before; a name beyond it is refused as an unknown issuer's (401,
/// `unknown_issuer`) and not remembered, so it is asked when the rate
/// allows.
const RESOLVER_ASKS_PER_SECOND: f64 = 50.0;
const RESOLVER_ASKS_AT_ONCE: f64 = 100.0;

/// The most tenant names kept as proven ([`TenantStores::proven`]):
/// forgotten all at once when full.
const PROVEN_TENANTS: usize = 4096;
const TENANT_STARTS_AT_ONCE: f64 = 20.0;

/// A token bucket of tenant key store starts.
struct StartBudget {
    left: f64,
    at: std::time::Instant,
}

impl Default for StartBudget {
    fn default() -> Self {
        Self {
            left: TENANT_STARTS_AT_ONCE,
            at: std::time::Instant::now(),
        }
    }
}

impl StartBudget {
    /// Takes one start, if there is one left at `now`.
    fn take(&mut self, now: std::time::Instant) -> bool {
        self.take_at_rate(now, TENANT_STARTS_PER_SECOND, TENANT_STARTS_AT_ONCE)
    }

    /// Takes one, if there is one left at `now`, of a budget of
    /// `per_second` on average and `at_once` at most.
    fn take_at_rate(&mut self, now: std::time::Instant, per_second: f64, at_once: f64) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * per_second;
        self.left = (self.left + refill).min(at_once);
        // Never back: a reading earlier than the last (a test's, set
        // ahead) refills nothing.
        self.at = self.at.max(now);
        if self.left >= 1.0 {
            self.left -= 1.0;
            true
        } else {
            false
        }
    }
}

impl TenantStores {
    /// Reports how many tenants are held ([`TENANTS`]), after a change.
    fn count_held(&self) {
        self.metrics.live.set(self.live.len() as f64);
    }

    /// The rule's kept answer about `name` ([`TENANT_ANSWER_TTL_MS`]): allowed
    /// (since when), refused, or `None` when it is to be asked.
    fn kept(&self, name: &str) -> Option<Option<u64>> {
        let now = mono_ms();
        let fresh = |at: u64| now.saturating_sub(at) < TENANT_ANSWER_TTL_MS;
        match self.allowed.get(name) {
            Some(&at) if fresh(at) => Some(Some(at)),
            _ => self
                .refused
                .get(name)
                .is_some_and(|&at| fresh(at))
                .then_some(None),
        }
    }

    /// The rule's last answer about `name`, however old.
    fn last(&self, name: &str) -> Option<Option<u64>> {
        match self.allowed.get(name) {
            Some(&at) => Some(Some(at)),
            None => self.refused.contains_key(name).then_some(None),
        }
    }

    /// Keeps the rule's answer about `name`, given at `at`: a tenant no
    /// longer allowed goes with its keys; an allowed one's allowance is
    /// renewed ([`Tenant::allowed_at`]).
    fn record(&mut self, name: &str, allowed: bool, at: u64) {
        if allowed {
            self.refused.remove(name);
            // Names allowed but not live (their tenant could not be set
            // up: the start rate used up, the issuer unreachable) are
            // forgotten all at once when there are as many as refused
            // names are kept, so tokens naming a new tenant each, which a
            // rule allowing every name lets through, cannot grow the map.
            if !self.allowed.contains_key(name) && self.allowed.len() >= self.live.len() + REFUSED_TENANTS {
                let live = &self.live;
                self.allowed.retain(|n, _| live.contains_key(n));
            }
            self.allowed.insert(name.to_owned(), at);
            if let Some(live) = self.live.get(name) {
                live.allowed_at.store(at, Ordering::Relaxed);
            }
        } else {
            if self.live.remove(name).is_some() {
                self.count_held();
            }
            self.allowed.remove(name);
            self.order.retain(|n| n != name);
            if self.refused.len() >= REFUSED_TENANTS {
                self.refused.clear();
            }
            self.refused.insert(name.to_owned(), at);
        }
    }
}

/// Milliseconds on a clock that only moves forward (the kernel's coarse
/// monotonic clock on Linux, a few nanoseconds to read): the time of the
/// tenants' rule's answers, which a wall clock's steps must not age or
/// refresh.
///
/// Offset by a day, so that a time a day back from any reading is a
/// reading too (the tests age answers by subtracting; nothing is stored
/// at 0).
#[cfg(target_os = "linux")]
fn mono_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    MONO_OFFSET_MS
        + u64::try_from(t.tv_sec).unwrap_or(0) * 1000
        + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000
}

/// See the Linux one.
#[cfg(not(target_os = "linux"))]
fn mono_ms() -> u64 {
    use std::time::Instant;
    static BASE: OnceLock<Instant> = OnceLock::new();
    MONO_OFFSET_MS + u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(0)
}

/// [`mono_ms`]' offset: a day.
const MONO_OFFSET_MS: u64 = 86_400_000;

/// How many refused tenant names are remembered ([`TenantStores::refused`]),
/// and allowed ones without a tenant ([`TenantStores::allowed`]).
const REFUSED_TENANTS: usize = 1024;

/// How long the tenants' rule's answer about a name is kept: a tenant the
/// rule stops allowing (offboarded) is refused within this, one it starts
/// allowing is accepted within this.
const TENANT_ANSWER_TTL_MS: u64 = 60_000;

/// The tenants' rule's answer about `name`: `Some(when it allowed it)`
/// ([`mono_ms`]), or `None` when it refuses it (or, for a resolver, when a
/// name it never answered about finds its ask rate used up:
/// [`RESOLVER_ASKS_PER_SECOND`]). An answer is kept for
/// [`TENANT_ANSWER_TTL_MS`] (a refused name among the last
/// [`REFUSED_TENANTS`]); then one request asks the rule again, outside the
/// lock (a resolver may take its time), while the others take the last
/// answer, so a resolver is asked about a name once a minute, not once per
/// request that arrives while it answers.
fn rule_answer(stores: &Mutex<TenantStores>, tenants: &Tenants, name: &str) -> Option<u64> {
    /// Takes a name off `asking` however the rule's call ends.
    struct Asking<'a> {
        stores: &'a Mutex<TenantStores>,
        name: &'a str,
    }
    impl Drop for Asking<'_> {
        fn drop(&mut self) {
            let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
            stores.asking.remove(self.name);
        }
    }
    let asking = {
        let mut s = stores.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kept) = s.kept(name) {
            return kept;
        }
        // A name the resolver never answered about: asked at a bounded
        // rate (a list costs nothing to ask). A tenant met or proven
        // before (its answer forgotten with its eviction, or left behind
        // by a reload) is asked whatever the rate, so such tokens keep no
        // tenant in use out.
        if matches!(tenants, Tenants::Resolver(_))
            && s.last(name).is_none()
            && !s.live.contains_key(name)
            && !s.proven.contains(name)
        {
            let now = std::time::Instant::now();
            let asks = s.asks.get_or_insert(StartBudget {
                left: RESOLVER_ASKS_AT_ONCE,
                at: now,
            });
            if !asks.take_at_rate(now, RESOLVER_ASKS_PER_SECOND, RESOLVER_ASKS_AT_ONCE) {
                s.metrics.throttled.increment(1);
                if s.asks_throttled.due() {
                    tracing::warn!(target: LOG, per_second = RESOLVER_ASKS_PER_SECOND, "tokens name tenants the resolver has not answered about faster than it may be asked: theirs are refused until the rate allows (said once a minute)");
                }
                return None;
            }
        }
        if s.asking.contains(name) {
            // Another request asks: its last answer stands meanwhile, a
            // refusal however old, an allowance for one more time to live
            // (a rule that hangs does not keep a tenant in). Without one,
            // this request asks too rather than wait.
            match s.last(name) {
                Some(None) => return None,
                Some(Some(at)) if mono_ms().saturating_sub(at) < 2 * TENANT_ANSWER_TTL_MS => {
                    return Some(at);
                }
                _ => {}
            }
            None
        } else {
            s.asking.insert(name.to_owned());
            Some(Asking { stores, name })
        }
    };
    let allowed = tenants.allows(name);
    let at = mono_ms();
    stores
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .record(name, allowed, at);
    drop(asking);
    allowed.then_some(at)
}

/// The tenant `iss` names under `state`'s issuer pattern, with the
/// pattern's rule, if `iss` fits the pattern and the name is well formed
/// (not yet asked whether the rule allows it).
fn tenant_name<'i, 's>(state: &'s ProviderState, iss: &'i str) -> Option<(&'s Tenants, &'i str)> {
    let tenants = state.cfg.tenants.as_ref()?;
    Some((tenants, fits_pattern(&state.cfg.issuer, iss)?))
}

/// The tenant `iss` names under the issuer `pattern`, if it fits it and
/// the name is well formed.
fn fits_pattern<'i>(pattern: &str, iss: &'i str) -> Option<&'i str> {
    let (prefix, suffix) = pattern.split_once(TENANT)?;
    let name = iss.strip_prefix(prefix)?.strip_suffix(suffix)?;
    palisade_core::syntax::is_tenant(name).then_some(name)
}

/// One tenant of an issuer pattern.
struct Tenant {
    name: String,
    /// The pattern with `{tenant}` replaced.
    issuer: String,
    /// Its own keys, unless every tenant shares the provider's.
    store: Option<Arc<KeyStore>>,
    _fetched: Option<Arc<Fetched>>,
    /// When the tenants' rule last allowed it ([`mono_ms`]): a verified
    /// token of the tenant is answered from the cache for
    /// [`TENANT_ANSWER_TTL_MS`] after that, then verified again, which asks
    /// the rule again (one request asks; the others take its last answer
    /// meanwhile). So a tenant the rule stops allowing loses its cached
    /// tokens too, not only its new ones.
    allowed_at: AtomicU64,
    /// Whether a token of the tenant has been verified: until then it may
    /// have been set up by a forged token naming it, and it is the first
    /// to go when the tenants are too many, and is not kept fresh by use.
    verified: std::sync::atomic::AtomicBool,
    /// When it was set up: a tenant whose first token is still being
    /// checked (its keys fetched) is not the first to go for want of a
    /// verified token.
    created: std::time::Instant,
}

impl Tenant {
    /// Whether the rule's last allowance still holds.
    fn allowance_holds(&self) -> bool {
        mono_ms().saturating_sub(self.allowed_at.load(Ordering::Relaxed)) < TENANT_ANSWER_TTL_MS
    }
}

struct CacheEntry {
    identity: Identity,
    /// The token itself, attached to every request it authenticates.
    bearer: Arc<BearerToken>,
    provider: usize,
    kid: Option<String>,
    fingerprint: u64,
    exp: f64,
    nbf: Option<f64>,
    /// The tenant, for an issuer pattern (its keys, when its own): not
    /// kept alive by its cached tokens, so that `max_tenants` bounds the
    /// tenants' key stores (and their refreshes) held at once. A token of
    /// a tenant no longer held is verified again.
    tenant: Option<std::sync::Weak<Tenant>>,
    /// Claims copied to headers.
    edits: Vec<HeaderEdit>,
    /// The token's location when it was verified, and every edit for a
    /// request with the token there (its removal, then `edits`): shared by
    /// every hit from that location.
    source: usize,
    all_edits: HeaderEdits,
    /// The token's SHA-256, the first time a DPoP proof's `ath` needs it.
    sha256: OnceLock<[u8; 32]>,
    /// The token has no `cnf`: bound to no key or certificate, so a hit
    /// without a DPoP proof skips the binding check (a claim lookup).
    unbound: bool,
    /// The generation of the key store whose set held the token's key when
    /// it was cached (`u64::MAX`, matching none, if the set had moved on):
    /// while that generation is current, a hit need not look the key up.
    keys_generation: u64,
}

impl CacheEntry {
    /// A copy for one thread's front ([`crate::front`]): the same entry,
    /// with the identity, the token's attachment and the header edits it
    /// hands out behind reference counts of its own (the token's text and
    /// the claims inside are shared, and a hit does not count them).
    fn unshared(&self) -> Self {
        Self {
            identity: self.identity.unshared(),
            bearer: Arc::new(BearerToken::clone(&self.bearer)),
            provider: self.provider,
            kid: self.kid.clone(),
            fingerprint: self.fingerprint,
            exp: self.exp,
            nbf: self.nbf,
            tenant: self.tenant.clone(),
            edits: self.edits.clone(),
            source: self.source,
            all_edits: HeaderEdits::from(self.all_edits.as_slice().to_vec()),
            sha256: self.sha256.clone(),
            unbound: self.unbound,
            keys_generation: self.keys_generation,
        }
    }
}

type Cache = TokenCache<Arc<CacheEntry>>;

thread_local! {
    /// This thread's copies of the tokens it sees most, for every
    /// authenticator ([`crate::front`]).
    static FRONT: std::cell::RefCell<Front<CacheEntry>> = const { std::cell::RefCell::new(Front::new()) };
}

/// `f` of this thread's front; `None` while the thread is being torn
/// down or the front is in use further up the stack.
fn with_front<R>(f: impl FnOnce(&mut Front<CacheEntry>) -> R) -> Option<R> {
    FRONT
        .try_with(|front| front.try_borrow_mut().ok().map(|mut front| f(&mut front)))
        .ok()
        .flatten()
}

/// DPoP (RFC 9449) for this authenticator.
struct Dpop {
    verifier: DpopVerifier,
    /// The index of `Authorization: DPoP` in `Shared::sources`.
    source: usize,
    /// `scheme://authority` of the URIs proofs name, when fixed.
    origin: Option<String>,
    /// The `DPoP` challenge, without an error: `DPoP algs="…"`.
    challenge: String,
    /// The proof algorithms accepted, by name.
    algs: Vec<String>,
}

impl Dpop {
    /// The `DPoP` challenge of a refusal: RFC 9449's `error` code and a
    /// fixed description (an application's own, [`JwtError::ClaimsRefused`],
    /// kept to what a quoted-string holds).
    fn error_challenge(&self, code: &str, detail: &str) -> String {
        format!(
            "{}, error=\"{code}\", error_description=\"{}\"",
            self.challenge,
            palisade_core::syntax::quote_safe(detail)
        )
    }
}

struct Shared {
    realm: String,
    providers: Vec<ProviderState>,
    by_issuer: HashMap<String, usize>,
    /// The providers that introspect opaque tokens, in order.
    opaque: Vec<usize>,
    /// The same, for each of `sources`: those that read tokens there.
    opaque_by_source: Vec<Vec<usize>>,
    /// Never fetch keys (a tenant's either).
    offline: bool,
    /// Every source any provider reads, with the providers that accept it.
    sources: Vec<(TokenSource, Vec<usize>)>,
    /// For each of `sources`, the others that read the same header (mostly
    /// none): a header value several read is counted once, by the one
    /// that reads it most specifically ([`reads_first`]).
    same_header: Vec<Vec<usize>>,
    /// Every provider's output headers (`outputPayloadToHeader`,
    /// `outputClaimToHeaders`), each once.
    output_headers: Vec<String>,
    max_token_size: usize,
    resource_metadata: Option<ResourceMetadata>,
    resource: Option<Served>,
    dpop: Option<Dpop>,
    cache: Option<Cache>,
    /// The cache's name in each thread's front ([`crate::front`]).
    front_owner: u64,
    /// Held while this authenticator lives: its copies in the threads'
    /// fronts hold a `Weak` of it, and go first once it is dropped.
    alive: Arc<()>,
    cache_entries: u64,
    cache_hits: metrics::Counter,
    cache_misses: metrics::Counter,
}

/// The verified-token cache's counters ([`TOKEN_CACHE`]).
fn cache_counters() -> (metrics::Counter, metrics::Counter) {
    (
        metrics::counter!(TOKEN_CACHE, "result" => "hit"),
        metrics::counter!(TOKEN_CACHE, "result" => "miss"),
    )
}

/// Authenticates `Authorization: Bearer` (and configured) JWTs from one or
/// more issuers. Cloning is an `Arc` clone.
///
/// Building it starts fetching and refreshing the issuers' keys on a
/// background thread (one per process); it never blocks on the network and
/// never fails because an issuer is down (tokens then fail closed until
/// keys arrive).
///
/// ```no_run
/// use palisade_jwt::{JwtAuthenticator, Provider};
/// let jwt = JwtAuthenticator::builder()
///     .realm("details")
///     .provider(Provider::builder("https://kc.example/realms/demo").audience("details").build()?)
///     .build()?;
/// let guard = palisade_core::Guard::builder().authenticator(jwt).build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct JwtAuthenticator(Arc<Shared>);

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("realm", &self.0.realm)
            .field(
                "providers",
                &self.0.providers.iter().map(|p| &p.cfg).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`JwtAuthenticator`].
#[must_use]
#[derive(Debug)]
pub struct JwtAuthenticatorBuilder {
    realm: String,
    providers: Vec<Provider>,
    max_token_size: usize,
    cache_entries: u64,
    resource_metadata: Option<ResourceMetadata>,
    dpop: Option<DpopSettings>,
    dpop_origin: Option<String>,
    /// Never fetch keys ([`JwtAuthenticator::from_policy_offline`]).
    pub(crate) offline: bool,
}

impl JwtAuthenticatorBuilder {
    /// The `realm` of the `WWW-Authenticate: Bearer` challenge (default `palisade`).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = realm.into();
        self
    }

    /// Trusts an issuer.
    pub fn provider(mut self, provider: Provider) -> Self {
        self.providers.push(provider);
        self
    }

    /// Refuses longer tokens before parsing them (default 8 KiB).
    pub fn max_token_size(mut self, bytes: usize) -> Self {
        self.max_token_size = bytes;
        self
    }

    /// Entries of the verified-token cache (default 10,000; 0 turns it off).
    ///
    /// Each thread also keeps its own copies of up to four of the tokens
    /// it sees most (from a token's second hit), so that a hit writes no
    /// memory other threads write; a copy is checked as an entry is (its
    /// key, its lifetime, where the token was found). With the cache off,
    /// so are the copies.
    pub fn cache_entries(mut self, entries: u64) -> Self {
        self.cache_entries = entries;
        self
    }

    /// Serves this protected-resource metadata (RFC 9728) and names it in
    /// every challenge.
    pub fn resource_metadata(mut self, metadata: ResourceMetadata) -> Self {
        self.resource_metadata = Some(metadata);
        self
    }

    /// Accepts DPoP-bound tokens (RFC 9449): `Authorization: DPoP <token>`
    /// with a `DPoP` proof, checked with these settings, from every
    /// provider that reads `Authorization: Bearer`; the token's `cnf.jkt`
    /// must name the proof's key. Without it, `Authorization: DPoP` is not
    /// read, and a DPoP-bound token sent as a bearer token is refused
    /// either way.
    pub fn dpop(mut self, settings: DpopSettings) -> Self {
        self.dpop = Some(settings);
        self
    }

    /// The `scheme://host[:port]` clients use to reach this service, for
    /// the `htu` of their DPoP proofs. Default: the origin of the
    /// [`resource_metadata`](Self::resource_metadata)'s resource, else
    /// `https` on a TLS connection (`http` otherwise) and the request's
    /// `Host` header, with a warning at start-up: a `Host` is the client's
    /// to choose, so a proof made for another server could be replayed here
    /// under that server's name.
    pub fn dpop_origin(mut self, origin: impl Into<String>) -> Self {
        self.dpop_origin = Some(origin.into());
        self
    }

    /// Validates the configuration and starts key fetching.
    ///
    /// # Errors
    /// A [`ConfigError`] for duplicate issuers, unusable inline keys or no provider.
    pub fn build(self) -> Result<JwtAuthenticator, ConfigError> {
        if self.providers.is_empty() {
            return Err(ConfigError::NoProvider);
        }
        let mut by_issuer = HashMap::new();
        let mut issuers = std::collections::HashSet::new();
        let mut providers = Vec::new();
        for (i, cfg) in self.providers.into_iter().enumerate() {
            if !issuers.insert(cfg.issuer.clone()) {
                return Err(ConfigError::DuplicateIssuer(cfg.issuer));
            }
            // An issuer pattern is found through its tenants only: a token
            // whose `iss` is the pattern itself (`…/{tenant}/v2.0`) is no
            // tenant's and names no issuer.
            if cfg.tenants.is_none() {
                by_issuer.insert(cfg.issuer.clone(), i);
            }
            let inline = |r: Result<KeySet, String>| {
                r.map_err(|e| ConfigError::InvalidInlineKeys(cfg.issuer.clone(), e))
            };
            let fixed = match (&cfg.hmac_secret, &cfg.jwks) {
                (Some(secret), _) => Some(KeySet::secret(hmac_key(secret, cfg.hmac_kid.as_deref()))),
                (None, JwksSource::Inline(json)) => Some(inline(parse_jwks(&cfg.issuer, json.as_bytes()))?),
                (None, JwksSource::PublicKeyPem(pem)) => {
                    Some(inline(pem_key(pem).map(|k| KeySet::new(vec![k])))?)
                }
                (None, JwksSource::Discovery | JwksSource::Uri(_)) => None,
            };
            if fixed.as_ref().is_some_and(|s| s.keys.is_empty()) {
                return Err(ConfigError::InvalidInlineKeys(
                    cfg.issuer,
                    "no usable signature key".into(),
                ));
            }
            // The fetch counter's series from the start, at zero, whatever
            // the keys' source (a tenant pattern's are labelled with it).
            crate::jwks::count_no_fetches(&cfg.issuer);
            // A pattern whose tenants have keys of their own: those are
            // fetched per tenant; the provider's store stays empty.
            let per_tenant = cfg.tenants.is_some() && cfg.jwks.for_tenant(TENANT).is_some();
            let (store, fetched) = match fixed {
                None if per_tenant => (
                    Arc::new(KeyStore::never_fetched(&cfg.issuer, cfg.fetch.clone())),
                    None,
                ),
                Some(set) => (
                    Arc::new(KeyStore::new(&cfg.issuer, cfg.fetch.clone(), Some(set))),
                    None,
                ),
                None if self.offline => (
                    Arc::new(KeyStore::never_fetched(&cfg.issuer, cfg.fetch.clone())),
                    None,
                ),
                None => {
                    let fetched = fetched_store(&cfg.issuer, &cfg.issuer, &cfg.jwks, &cfg.fetch)
                        .map_err(|e| ConfigError::OutOfRange(format!("cannot start the JWKS thread: {e}")))?;
                    (fetched.store.clone(), Some(fetched))
                }
            };
            let introspector = match &cfg.introspection {
                Some(i) => Some(Arc::new(
                    Introspector::new(&cfg.issuer, i.clone(), cfg.fetch.clone(), self.offline)
                        .map_err(|e| ConfigError::OutOfRange(format!("cannot start the JWKS thread: {e}")))?,
                )),
                None => None,
            };
            let tenants = cfg.tenants.is_some().then(|| {
                Mutex::new(TenantStores {
                    metrics: TenantMetrics::of(&cfg.issuer),
                    ..TenantStores::default()
                })
            });
            providers.push(ProviderState {
                cfg,
                store,
                fetched,
                introspector,
                tenants,
            });
        }
        // An issuer that is also a tenant of a pattern is verified as
        // itself: the pattern's keys, audiences and tenant rule never see
        // its tokens. Legal (a tenant with settings of its own), but easy
        // to write by mistake.
        for pattern in providers.iter().filter(|p| p.cfg.tenants.is_some()) {
            for fixed in providers.iter().filter(|p| p.cfg.tenants.is_none()) {
                if let Some(tenant) = fits_pattern(&pattern.cfg.issuer, &fixed.cfg.issuer)
                    && pattern.cfg.tenants.as_ref().is_some_and(|t| t.may_allow(tenant))
                {
                    tracing::warn!(
                        target: "palisade::jwt",
                        issuer = %palisade_core::syntax::url_without_credentials(&fixed.cfg.issuer),
                        pattern = %palisade_core::syntax::url_without_credentials(&pattern.cfg.issuer),
                        tenant,
                        "an issuer is also a tenant of an issuer pattern: its tokens are verified under its own settings, never the pattern's"
                    );
                }
            }
        }
        let mut sources: Vec<(TokenSource, Vec<usize>)> = Vec::new();
        for (i, p) in providers.iter().enumerate() {
            for s in &p.cfg.sources {
                match sources.iter_mut().find(|(t, _)| t.reads_as(s)) {
                    Some((_, ps)) => ps.push(i),
                    None => sources.push((s.clone(), vec![i])),
                }
            }
        }
        let dpop = match self.dpop {
            None => None,
            Some(settings) => {
                let dpop_source = TokenSource::Header {
                    name: "authorization".into(),
                    prefix: Some("DPoP ".into()),
                };
                let bearer: Vec<usize> = sources
                    .iter()
                    .find(|(s, _)| s.reads_as(&TokenSource::authorization_bearer()))
                    .map(|(_, ps)| ps.clone())
                    .unwrap_or_default();
                if bearer.is_empty() {
                    return Err(ConfigError::OutOfRange(
                        "DPoP: no provider reads `Authorization: Bearer`, so none reads `Authorization: DPoP`".into(),
                    ));
                }
                sources.push((dpop_source, bearer));
                let algs: Vec<String> = settings.algorithms.iter().map(|a| format!("{a:?}")).collect();
                if !settings.replay_store.shared() {
                    tracing::info!(target: LOG, "DPoP proofs are remembered by this process only: with several replicas, a captured proof can be used once at each; share a replay store (JwtSettings dpop.replayStore: redis://…)");
                }
                let verifier =
                    DpopVerifier::new(settings).map_err(|e| ConfigError::OutOfRange(format!("DPoP: {e}")))?;
                let origin = match (self.dpop_origin, &self.resource_metadata) {
                    (Some(o), _) => Some(o),
                    // The resource identifier's origin is the one clients use.
                    (None, Some(meta)) => crate::resource::origin_of(&meta.resource),
                    (None, None) => None,
                };
                if let Some(o) = &origin
                    && !crate::resource::is_origin(o)
                {
                    return Err(ConfigError::OutOfRange(format!(
                        "DPoP origin `{}` is not scheme://host[:port]",
                        palisade_core::syntax::url_without_credentials(o)
                    )));
                }
                if origin.is_none() {
                    tracing::warn!(target: LOG, "DPoP proofs are checked against the request's own Host header: configure the origin clients use (dpop_origin, JwtSettings dpop.origin or resourceMetadata) so a proof made for another server cannot be replayed here with its Host");
                }
                Some(Dpop {
                    verifier,
                    source: sources.len() - 1,
                    origin: origin.map(|o| o.trim_end_matches('/').to_owned()),
                    challenge: format!("DPoP algs=\"{}\"", algs.join(" ")),
                    algs,
                })
            }
        };
        let resource = match &self.resource_metadata {
            None => None,
            Some(meta) => {
                // An issuer pattern is no issuer: its listed tenants are
                // (a resolver's are not known in advance).
                let issuers: Vec<String> = providers
                    .iter()
                    .flat_map(|p| match &p.cfg.tenants {
                        None => vec![p.cfg.issuer.clone()],
                        Some(crate::Tenants::List(names)) => names
                            .iter()
                            .map(|name| p.cfg.issuer.replace(palisade_core::syntax::TENANT, name))
                            .collect(),
                        Some(crate::Tenants::Resolver(_)) => Vec::new(),
                    })
                    .collect();
                let mut methods = Vec::new();
                for (source, _) in &sources {
                    let method = match source {
                        TokenSource::Header { name, prefix }
                            if name == "authorization" && prefix.as_deref() == Some("Bearer ") =>
                        {
                            "header"
                        }
                        TokenSource::Query(_) => "query",
                        _ => continue,
                    };
                    if !methods.contains(&method) {
                        methods.push(method);
                    }
                }
                let dpop_algs = dpop.as_ref().map_or(&[][..], |d| &d.algs[..]);
                Some(Served::new(meta, &issuers, &methods, dpop_algs)?)
            }
        };
        let opaque: Vec<usize> = (0..providers.len())
            .filter(|&i| providers[i].introspector.is_some())
            .collect();
        let opaque_by_source: Vec<Vec<usize>> = sources
            .iter()
            .map(|(_, readers)| opaque.iter().copied().filter(|p| readers.contains(p)).collect())
            .collect();
        // An opaque token names no issuer: read from where two issuers'
        // are, it would go to both introspection endpoints, each seeing the
        // other's tokens. It is refused there instead (Spring Security
        // resolves one introspector per request, never asks several); their
        // JWTs name their issuer and go to it alone.
        if let Some(both) = opaque_by_source.iter().find(|p| p.len() > 1) {
            tracing::warn!(
                target: LOG,
                first = %palisade_core::syntax::url_without_credentials(&providers[both[0]].cfg.issuer),
                second = %palisade_core::syntax::url_without_credentials(&providers[both[1]].cfg.issuer),
                "two issuers introspect tokens read from the same header or parameter: an opaque token found there names no issuer and is refused, not sent to both; read each issuer's tokens from its own place (fromHeaders, fromParams) to accept opaque tokens"
            );
        }
        let mut output_headers: Vec<String> = providers
            .iter()
            .flat_map(|p| {
                let cfg = &p.cfg;
                cfg.output_payload_to_header
                    .iter()
                    .chain(cfg.output_claims.iter().map(|(header, _)| header))
                    .cloned()
            })
            .collect();
        output_headers.sort_unstable();
        output_headers.dedup();
        let (cache_hits, cache_misses) = cache_counters();
        Ok(JwtAuthenticator(Arc::new(Shared {
            realm: self.realm,
            providers,
            by_issuer,
            opaque,
            opaque_by_source,
            offline: self.offline,
            same_header: sources
                .iter()
                .enumerate()
                .map(|(i, (s, _))| {
                    let TokenSource::Header { name, .. } = s else {
                        return Vec::new();
                    };
                    sources
                        .iter()
                        .enumerate()
                        .filter(|(j, (t, _))| {
                            *j != i
                                && matches!(t, TokenSource::Header { name: n, .. } if n.eq_ignore_ascii_case(name))
                        })
                        .map(|(j, _)| j)
                        .collect()
                })
                .collect(),
            sources,
            output_headers,
            max_token_size: self.max_token_size,
            resource_metadata: self.resource_metadata,
            resource,
            dpop,
            cache: (self.cache_entries > 0).then(|| TokenCache::new(self.cache_entries)),
            front_owner: crate::front::new_owner(),
            alive: Arc::new(()),
            cache_entries: self.cache_entries,
            cache_hits,
            cache_misses,
        })))
    }
}

impl JwtAuthenticator {
    /// On a reload that changes something else (a tenant added to the
    /// list, another issuer), each issuer pattern of `self` whose keys come
    /// from where `previous`'s came from takes the tenants `previous` met
    /// that its own list still allows, with their keys, and the names
    /// proven: else every tenant's keys would be fetched again after the
    /// swap, the start rate refusing the tokens of those beyond it. Only
    /// into a pattern that has met no tenant yet (a new authenticator).
    fn adopt_tenants(&self, previous: &JwtAuthenticator) {
        // The gauge of a pattern the reload drops says none are held; the
        // others', what this authenticator holds (below, once adopted).
        for q in &previous.0.providers {
            if let Some(old) = &q.tenants
                && !self
                    .0
                    .providers
                    .iter()
                    .any(|p| p.tenants.is_some() && p.cfg.issuer == q.cfg.issuer)
            {
                old.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .metrics
                    .live
                    .set(0.0);
            }
        }
        for p in &self.0.providers {
            let (Some(stores), Some(tenants)) = (&p.tenants, &p.cfg.tenants) else {
                continue;
            };
            stores.lock().unwrap_or_else(PoisonError::into_inner).count_held();
            let Some(old) = previous.0.providers.iter().find_map(|q| {
                (q.cfg.issuer == p.cfg.issuer && q.cfg.jwks == p.cfg.jwks && q.cfg.fetch == p.cfg.fetch)
                    .then_some(q.tenants.as_ref())
                    .flatten()
            }) else {
                continue;
            };
            let old = old.lock().unwrap_or_else(PoisonError::into_inner);
            let mut new = stores.lock().unwrap_or_else(PoisonError::into_inner);
            if !new.live.is_empty() {
                continue;
            }
            // The most recently used last, as kept; the newest first when
            // fewer fit.
            let kept: Vec<&String> = old
                .order
                .iter()
                .rev()
                .filter(|n| tenants.may_allow(n))
                .take(p.cfg.max_tenants)
                .collect();
            for name in kept.into_iter().rev() {
                if let Some(t) = old.live.get(name) {
                    new.order.push_back(name.clone());
                    new.live.insert(name.clone(), Arc::clone(t));
                }
            }
            new.count_held();
            new.proven = old
                .proven
                .iter()
                .filter(|n| tenants.may_allow(n))
                .cloned()
                .collect();
        }
    }

    /// Whether `self` and `other` accept the same tokens as the same
    /// identities: then `other`'s verified tokens are valid for `self`.
    fn same_config(&self, other: &JwtAuthenticator) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        a.realm == b.realm
            && a.max_token_size == b.max_token_size
            && a.cache_entries == b.cache_entries
            && a.resource_metadata == b.resource_metadata
            && match (&a.dpop, &b.dpop) {
                (None, None) => true,
                (Some(x), Some(y)) => {
                    x.origin == y.origin && x.source == y.source && x.verifier.same_as(&y.verifier)
                }
                _ => false,
            }
            && a.providers.len() == b.providers.len()
            && a.providers.iter().zip(&b.providers).all(|(p, q)| p.cfg == q.cfg)
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Whether a cached token is inside its validity window, read cheaply:
/// the kernel's coarse clock (a quarter of the cost of [`now_secs`])
/// answers when the token is more than [`COARSE_MARGIN`] from its `exp`
/// and past its `nbf`; nearer an edge the precise clock decides. The coarse
/// clock trails the true time by a tick or a few (tens of milliseconds,
/// even on a virtual machine whose timekeeping stalls), never leads it, so
/// the margin keeps the answer exactly the precise clock's.
fn in_cached_window(exp: f64, nbf: Option<f64>, leeway: Duration) -> Result<(), JwtError> {
    if clear_of_window_edges(exp, nbf, leeway) {
        return Ok(());
    }
    in_window(Some(exp), nbf, leeway, now_secs())
}

/// Whether the coarse clock says a cached token is within its window and
/// more than [`COARSE_MARGIN`] from its `exp`: [`in_cached_window`]'s
/// answer without the precise clock (which decides otherwise).
#[inline]
fn clear_of_window_edges(exp: f64, nbf: Option<f64>, leeway: Duration) -> bool {
    let coarse = coarse_now_secs();
    let l = leeway.as_secs_f64();
    coarse + COARSE_MARGIN <= exp + l && nbf.is_none_or(|nbf| coarse + l >= nbf)
}

/// How far from `exp` a cached token must be for the coarse clock to say
/// it is valid.
const COARSE_MARGIN: f64 = 1.0;

/// The kernel's coarse real-time clock: no later than the true time.
#[cfg(target_os = "linux")]
#[allow(clippy::cast_precision_loss)]
fn coarse_now_secs() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

#[cfg(not(target_os = "linux"))]
fn coarse_now_secs() -> f64 {
    now_secs()
}

/// Whether source `i`, which reads the header value `v`, is the one of
/// `others` (sources of the same header) that has it: the longest prefix
/// that `v` has (`Bearer ` before none, so `Bearer x` is the token `x`),
/// the first configured among equals.
fn reads_first(sources: &[(TokenSource, Vec<usize>)], i: usize, others: &[usize], v: &[u8]) -> bool {
    let prefix_len = |k: usize| match &sources[k].0 {
        TokenSource::Header { prefix, .. } => TokenSource::header_token(prefix.as_deref(), v)
            .is_some()
            .then(|| prefix.as_ref().map_or(0, String::len)),
        _ => None,
    };
    let Some(mine) = prefix_len(i) else {
        return false;
    };
    !others
        .iter()
        .any(|&j| prefix_len(j).is_some_and(|theirs| theirs > mine || theirs == mine && j < i))
}

/// Where a token was found: the index into `Shared::sources`.
struct Found<'r> {
    token: Cow<'r, str>,
    source: usize,
}

/// A request's DPoP proof and what it must name.
struct ProofOf<'r> {
    proof: Cow<'r, str>,
    method: Cow<'r, str>,
    /// The request's URI without its query, as `htu` must name it.
    htu: String,
}

impl ProofOf<'_> {
    /// The proof copied out of the request, to outlive it.
    fn into_owned(self) -> ProofOf<'static> {
        ProofOf {
            proof: Cow::Owned(self.proof.into_owned()),
            method: Cow::Owned(self.method.into_owned()),
            htu: self.htu,
        }
    }
}

/// A token as the request holds it, not yet checked to be text.
struct Located<'r> {
    bytes: &'r [u8],
    source: usize,
    /// Whether it came in the query, percent-encoded.
    query: bool,
}

impl<'r> Located<'r> {
    /// The token as text. A token is ASCII; anything else becomes an empty
    /// token, refused as malformed.
    fn found(self) -> Found<'r> {
        let text = std::str::from_utf8(self.bytes).map(str::trim).unwrap_or_default();
        let token = if self.query && text.contains(['%', '+']) {
            Cow::Owned(percent_decode(text))
        } else {
            Cow::Borrowed(text)
        };
        Found {
            token,
            source: self.source,
        }
    }
}

impl Found<'_> {
    fn into_owned(self) -> Found<'static> {
        Found {
            token: Cow::Owned(self.token.into_owned()),
            source: self.source,
        }
    }
}

impl JwtAuthenticator {
    /// Starts building an authenticator.
    pub fn builder() -> JwtAuthenticatorBuilder {
        JwtAuthenticatorBuilder {
            realm: "palisade".into(),
            providers: Vec::new(),
            max_token_size: 8 * 1024,
            cache_entries: 10_000,
            resource_metadata: None,
            dpop: None,
            dpop_origin: None,
            offline: false,
        }
    }

    /// The issuers it trusts, in the order they were configured.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.0.providers.iter().map(|p| p.cfg.issuer.as_str())
    }

    /// The [`Identity`] this authenticator establishes for a token with
    /// these claims once its signature has been verified: the provider of
    /// the `iss` claim checks them and maps them (its issuer, its principal
    /// claim; Keycloak realm and client roles, scopes, `azp`, every claim
    /// for policies), as it does for a bearer token, so the request
    /// principal is `ISS/SUB`.
    ///
    /// The claims are checked as a bearer token's are, but for what needs
    /// the token itself or the clock: the issuer is one this authenticator
    /// trusts, `sub` is a string (and present, unless the provider makes it
    /// optional or a `client_id` stands in), `aud` names one of the
    /// provider's audiences (unless it accepts any). Not looked at: the
    /// signature and algorithm, the time claims (`exp`, `nbf`, `iat`, and
    /// so the maximum lifetime, which may all be absent), the header's
    /// `typ`, the location the token came from and its certificate binding
    /// (`cnf`). `proof` is the caller's assertion that those hold (as in
    /// `palisade explain`, which decides a request for a caller described
    /// on the command line).
    ///
    /// ```
    /// use palisade_core::Verification;
    /// use palisade_jwt::{JwtAuthenticator, JwtError, Provider};
    /// let jwt = JwtAuthenticator::builder()
    ///     .provider(Provider::builder("https://kc.example/realms/shop").audience("details").build()?)
    ///     .build()?;
    /// let claims = serde_json::json!({
    ///     "iss": "https://kc.example/realms/shop", "sub": "alice", "aud": "details",
    ///     "realm_access": {"roles": ["admin"]},
    /// });
    /// let claims = claims.as_object().unwrap().clone();
    /// let id = jwt.identity_for_verified_claims(claims, Verification::assertion())?;
    /// assert_eq!(id.request_principal_str(), Some("https://kc.example/realms/shop/alice"));
    /// assert!(id.has_realm_role("admin"));
    ///
    /// let foreign = serde_json::json!({"iss": "https://elsewhere", "sub": "mallory"});
    /// let foreign = foreign.as_object().unwrap().clone();
    /// assert_eq!(
    ///     jwt.identity_for_verified_claims(foreign, Verification::assertion()).unwrap_err(),
    ///     JwtError::UnknownIssuer
    /// );
    /// let elsewhere = serde_json::json!({"iss": "https://kc.example/realms/shop", "sub": "bob", "aud": "reviews"});
    /// let elsewhere = elsewhere.as_object().unwrap().clone();
    /// assert_eq!(
    ///     jwt.identity_for_verified_claims(elsewhere, Verification::assertion()).unwrap_err(),
    ///     JwtError::InvalidAudience
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// What the authenticator answers a bearer token with these claims:
    /// [`JwtError::MissingClaim`] or [`JwtError::Malformed`] when `iss` is
    /// absent or not a string, [`JwtError::UnknownIssuer`] when no provider
    /// has that issuer, [`JwtError::MissingClaim`] or
    /// [`JwtError::InvalidClaim`] for `sub` or `aud`,
    /// [`JwtError::InvalidAudience`] when `aud` names none of the provider's
    /// audiences (or, without `aud`, `client_id` none of its client ids),
    /// [`JwtError::WrongType`] for the claims of another kind of token
    /// (`typ` `ID`, `Refresh` or `Logout`, a `token_use` of `id` or
    /// `refresh_token`, a logout token's `events`) unless the provider
    /// takes any kind, [`JwtError::ClaimsRefused`] when
    /// a check of the provider's own refuses them.
    pub fn identity_for_verified_claims(
        &self,
        claims: Map<String, Value>,
        proof: Verification,
    ) -> Result<Identity, JwtError> {
        self.authenticated_for_verified_claims(claims, proof)
            .map(|a| a.identity)
    }

    /// [`identity_for_verified_claims`](Self::identity_for_verified_claims)
    /// with what the authenticator hands the request besides the identity:
    /// the headers its providers set from the claims (`outputClaimToHeaders`,
    /// `outputPayloadToHeader`, the payload as these claims' JSON), which an
    /// access policy may read. The token's own header is not removed: there
    /// is none.
    ///
    /// ```
    /// use palisade_core::Verification;
    /// use palisade_core::authn::HeaderEdit;
    /// use palisade_jwt::{JwtAuthenticator, Provider};
    /// let jwt = JwtAuthenticator::builder()
    ///     .provider(
    ///         Provider::builder("https://kc.example/realms/shop")
    ///             .audience("details")
    ///             .output_claim_to_header("tier", "x-tier")
    ///             .build()?,
    ///     )
    ///     .build()?;
    /// let claims = serde_json::json!({
    ///     "iss": "https://kc.example/realms/shop", "sub": "alice", "aud": "details", "tier": "free",
    /// });
    /// let claims = claims.as_object().unwrap().clone();
    /// let a = jwt.authenticated_for_verified_claims(claims, Verification::assertion())?;
    /// assert_eq!(a.edits.as_slice(), [HeaderEdit::Set("x-tier".into(), "free".into())]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`identity_for_verified_claims`](Self::identity_for_verified_claims).
    pub fn authenticated_for_verified_claims(
        &self,
        claims: Map<String, Value>,
        proof: Verification,
    ) -> Result<Authenticated, JwtError> {
        let issuer = peek_issuer(&claims)?;
        let (provider, tenant) = match self.0.by_issuer.get(issuer) {
            Some(&p) => (p, None),
            None => self
                .tenant_of(issuer)
                .map(|(p, name)| (p, Some((name.to_owned(), issuer.to_owned()))))
                .ok_or(JwtError::UnknownIssuer)?,
        };
        let cfg = &self.0.providers[provider].cfg;
        // A token's kind as its claims tell it (an ID, refresh or logout
        // token); the header's `typ` is not there to read.
        if !cfg.any_token_kind && is_other_kind(None, &claims) {
            return Err(JwtError::WrongType);
        }
        check_subject_and_audience(cfg, &claims)?;
        let payload = cfg
            .output_payload_to_header
            .is_some()
            .then(|| URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string()));
        let tenant = tenant
            .as_ref()
            .map(|(name, issuer)| (name.as_str(), issuer.as_str()));
        let claims = token_claims(cfg, claims, tenant, None)?;
        let edits = output_edits(cfg, &claims.claims, payload.as_deref());
        Ok(Authenticated::new(Identity::from_token(claims, proof)).with_edits(HeaderEdits::from(edits)))
    }

    /// The `WWW-Authenticate` realm.
    #[must_use]
    pub fn realm(&self) -> &str {
        &self.0.realm
    }

    /// Where its protected-resource metadata (RFC 9728) is served, if it
    /// is: the `resource_metadata` of its challenges.
    #[must_use]
    pub fn resource_metadata_url(&self) -> Option<&str> {
        self.0.resource.as_ref().map(|r| r.url.as_str())
    }

    /// Verifies a token as if it came in `Authorization: Bearer`, for code
    /// that receives tokens outside HTTP (gRPC metadata, a WebSocket message).
    /// Any executor may poll it, a Tokio runtime or not: a wait for keys
    /// (or an introspection answer) is timed by the `palisade-jwks` thread
    /// when no Tokio runtime polls it.
    ///
    /// # Errors
    /// The [`JwtError`] that refused it; [`JwtError::WrongLocation`] when no
    /// provider reads tokens from `Authorization: Bearer`.
    pub async fn verify(&self, token: &str) -> Result<Identity, JwtError> {
        // No provider reads `Authorization: Bearer`: none takes the token
        // from there (not whichever reads the first location).
        let source = self
            .0
            .sources
            .iter()
            .position(|(s, _)| s.reads_as(&TokenSource::authorization_bearer()))
            .ok_or(JwtError::WrongLocation)?;
        let found = Found {
            token: Cow::Borrowed(token),
            source,
        };
        // Outside HTTP there is no proof and no certificate: a bound token
        // (DPoP, RFC 8705) is refused as it is from `Authorization: Bearer`.
        let bound =
            |r: Result<Authenticated, JwtError>| r.and_then(|a| bound_to(a, None, None)).map(|a| a.identity);
        bound(self.complete(self.start(found).into_owned()).await)
    }

    /// Verifies a compact JWS signed with one of `issuer`'s keys and
    /// returns its payload, whatever it holds: for signed documents that
    /// are not access tokens. The token rules that need no claims apply as
    /// they do to a bearer token: the size cap, a header without `crit`,
    /// `b64`, `cty: JWT` or `enc`, never `alg: none`, an algorithm of the
    /// provider's allowlist and pinned by the key, a key from the issuer's
    /// key set (or its HMAC secret) selected by `kid`, never from the
    /// header (`jwk`, `jku`, `x5c`, `x5u` are ignored), and a valid
    /// signature. Nothing in the payload is looked at: it is not checked
    /// for `exp`, `aud` or anything else, so never take it for a token.
    ///
    /// ```no_run
    /// # async fn f(jwt: palisade_jwt::JwtAuthenticator, jws: &str) -> Result<(), palisade_jwt::JwtError> {
    /// let payload = jwt.verify_jws("https://kc.example/realms/shop", jws).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The [`JwtError`] that refused it: [`JwtError::UnknownIssuer`] when
    /// `issuer` is not trusted, [`JwtError::Encrypted`] for a JWE,
    /// [`JwtError::Malformed`] when it is not a compact JWS,
    /// [`JwtError::UnknownKey`] when no key of the issuer fits its `kid`
    /// and algorithm, [`JwtError::BadSignature`],
    /// [`JwtError::KeyNotForIssuer`] when the key's JWK keeps it to another
    /// issuer, and the header refusals.
    pub async fn verify_jws(&self, issuer: &str, jws: &str) -> Result<Vec<u8>, JwtError> {
        let parsed = parse_jws(jws, self.0.max_token_size)?;
        let (provider, tenant) = match self.0.by_issuer.get(issuer) {
            Some(&p) => (p, None),
            None => {
                let (p, t) = self.tenant(issuer)?;
                (p, Some(t))
            }
        };
        if !self.0.providers[provider].cfg.algorithms.contains(&parsed.alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let store = self.store_of(provider, tenant.as_deref());
        let keys = store.keys();
        let signed = |k: &VerifyKey| check_signature(parsed.message, parsed.signature, parsed.alg, k).is_ok();
        let mut failed = None;
        let found = match keys.find(parsed.kid.as_deref(), parsed.alg) {
            // The only key that fits a token naming none, which it did not
            // sign: a key the issuer published since may have (as `step`).
            Some(k) if !keys.found_by_kid(parsed.kid.as_deref()) && !signed(k) => {
                failed = Some(k.fingerprint);
                None
            }
            Some(k) => Some(k.clone()),
            None => keys.signer(parsed.kid.as_deref(), parsed.alg, signed).cloned(),
        };
        let key = match found {
            Some(k) => k,
            None => match store
                .wait_for_key(parsed.kid.as_deref(), parsed.alg, failed)
                .await
            {
                Ok(k) => k,
                // Several keys of the set fetched meanwhile fit: the signer.
                Err(JwtError::UnknownKey) => store
                    .keys()
                    .signer(parsed.kid.as_deref(), parsed.alg, |k| {
                        check_signature(parsed.message, parsed.signature, parsed.alg, k).is_ok()
                    })
                    .cloned()
                    .ok_or(JwtError::UnknownKey)?,
                Err(e) => return Err(e),
            },
        };
        check_signature(parsed.message, parsed.signature, parsed.alg, &key)?;
        let payload = URL_SAFE_NO_PAD
            .decode(parsed.payload_b64)
            .map_err(|_| JwtError::Malformed)?;
        if key.issuer.is_some() {
            // For the issuer the token names and the one it is verified for.
            let mut claims: Map<String, Value> =
                serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed)?;
            check_key_issuer(&key, &claims)?;
            claims.insert("iss".into(), Value::from(issuer));
            check_key_issuer(&key, &claims)?;
        }
        Ok(payload)
    }

    /// The answer of a step, waiting for keys or an introspection answer
    /// as it says.
    async fn complete(&self, step: Step<'static>) -> Result<Authenticated, JwtError> {
        match step {
            Step::Done(r) | Step::Unbound(r) => r,
            Step::Wait {
                found,
                kid,
                alg,
                provider,
                tenant,
                failed,
            } => self.finish(found, kid, alg, provider, tenant, failed).await,
            Step::Introspect {
                found,
                providers,
                key,
            } => self.introspect(found, providers, key).await,
        }
    }

    /// Finds the request's token without copying or checking it: the
    /// common case (one token in one header) borrows it from the request.
    fn locate<'r>(&self, req: &'r dyn RequestHead) -> Result<Option<Located<'r>>, JwtError> {
        // The first token (its source, its bytes, whether it came in the
        // query), and how many there are.
        let mut first: Option<(usize, &'r [u8], bool)> = None;
        let mut count = 0usize;
        for (i, (source, _)) in self.0.sources.iter().enumerate() {
            match source {
                TokenSource::Header { name, prefix } => {
                    let others = &self.0.same_header[i];
                    req.for_each_header(name, &mut |v| {
                        if let Some(t) = TokenSource::header_token(prefix.as_deref(), v) {
                            // One header value is one token, however many
                            // sources read it (a rule's `Authorization`
                            // without a prefix, another's `Bearer `): the
                            // one that reads it most specifically has it.
                            if others.is_empty() || reads_first(&self.0.sources, i, others, v) {
                                count += 1;
                                first.get_or_insert((i, t, false));
                            }
                        }
                    });
                }
                TokenSource::Cookie(cookie) => {
                    req.for_each_header("cookie", &mut |v| {
                        for pair in v.split(|b| *b == b';') {
                            let pair = pair.trim_ascii();
                            if let Some(eq) = pair.iter().position(|b| *b == b'=')
                                && &pair[..eq] == cookie.as_bytes()
                            {
                                count += 1;
                                first.get_or_insert((i, &pair[eq + 1..], false));
                            }
                        }
                    });
                }
                TokenSource::Query(param) => {
                    if let Some(q) = req.query() {
                        for pair in q.split('&') {
                            // The name as an application's query parser
                            // reads it (`access%5Ftoken` is `access_token`):
                            // a second token under an encoded name is one.
                            if let Some((k, v)) = pair.split_once('=')
                                && (k == param || (k.contains(['%', '+']) && percent_decode(k) == *param))
                            {
                                count += 1;
                                first.get_or_insert((i, v.as_bytes(), true));
                            }
                        }
                    }
                }
            }
        }
        if count > 1 {
            return Err(JwtError::MultipleTokens);
        }
        Ok(first.map(|(source, bytes, query)| Located { bytes, source, query }))
    }

    fn start<'r>(&self, found: Found<'r>) -> Step<'r> {
        let shared = &self.0;
        if found.token.len() > shared.max_token_size {
            return Step::Done(Err(JwtError::TooLarge));
        }
        if !shared.opaque.is_empty() && !looks_like_jws(&found.token) {
            // An opaque token: the issuers that introspect them, in order.
            let providers = &shared.opaque_by_source[found.source];
            if providers.is_empty() {
                return Step::Done(Err(JwtError::WrongLocation));
            }
            // Several issuers' tokens are read from here: whose it is
            // cannot be told, and no endpoint is sent another's token.
            if providers.len() > 1 {
                return Step::Done(Err(JwtError::UnknownIssuer));
            }
            return self.start_introspection(found, providers);
        }
        if let Some(step) = self.hit(found.token.as_bytes(), found.source) {
            return step;
        }
        if shared.cache.is_some() {
            shared.cache_misses.increment(1);
        }
        let parsed = match parse(&found.token, shared.max_token_size) {
            Ok(p) => p,
            Err(e) => return Step::Done(Err(e)),
        };
        let (provider, tenant) = match peek_issuer(&parsed.claims) {
            Ok(iss) => match shared.by_issuer.get(iss) {
                Some(&p) => (p, None),
                None => match self.tenant(iss) {
                    Ok((p, t)) => (p, Some(t)),
                    Err(e) => return Step::Done(Err(e)),
                },
            },
            Err(e) => return Step::Done(Err(e)),
        };
        if !shared.sources[found.source].1.contains(&provider) {
            return Step::Done(Err(JwtError::WrongLocation));
        }
        let state = &shared.providers[provider];
        if state.introspector.as_ref().is_some_and(|i| i.jwts()) {
            // What the token's header says is checked here; its claims
            // come from the answer.
            if let Err(e) = check_type(&state.cfg, &parsed) {
                return Step::Done(Err(e));
            }
            return self.start_introspection(found, &[provider]);
        }
        if !state.cfg.algorithms.contains(&parsed.jws.alg) {
            return Step::Done(Err(JwtError::AlgorithmNotAllowed));
        }
        let keys = self.store_of(provider, tenant.as_deref()).keys();
        let (kid, alg) = (parsed.jws.kid.as_deref(), parsed.jws.alg);
        let key = keys.find(kid, alg).or_else(|| {
            keys.signer(kid, alg, |k| {
                check_signature(parsed.jws.message, parsed.jws.signature, alg, k).is_ok()
            })
        });
        match key {
            Some(key) => {
                let key = key.clone();
                let only_fit = !keys.found_by_kid(kid);
                let kid = parsed.jws.kid.clone();
                match self.verify_with(&found, parsed, &key, provider, tenant.as_ref()) {
                    // The only key that fits a token naming none: a key the
                    // issuer published since may have signed it.
                    Err(JwtError::BadSignature) if only_fit => Step::Wait {
                        found,
                        kid,
                        alg,
                        provider,
                        tenant,
                        failed: Some(key.fingerprint),
                    },
                    done => Step::Done(done),
                }
            }
            None => {
                let kid = parsed.jws.kid.clone();
                Step::Wait {
                    found,
                    kid,
                    alg,
                    provider,
                    tenant,
                    failed: None,
                }
            }
        }
    }

    /// The keys a token of `provider` (and `tenant`) is checked with.
    fn store_of<'a>(&'a self, provider: usize, tenant: Option<&'a Tenant>) -> &'a Arc<KeyStore> {
        tenant
            .and_then(|t| t.store.as_ref())
            .unwrap_or(&self.0.providers[provider].store)
    }

    /// The issuer pattern `iss` is a tenant of, and the tenant with its
    /// keys, if it is one of the pattern's tenants: its own store, fetched
    /// from its first token on, while it is among the provider's
    /// `max_tenants` whose tokens were most recently verified (a token is
    /// verified again, and so counts, once its tenant's allowance is
    /// [`TENANT_ANSWER_TTL_MS`] old). Called for a token not yet verified, so
    /// before its signature is checked.
    ///
    /// # Errors
    /// [`JwtError::UnknownIssuer`] when `iss` is no allowed tenant of a
    /// pattern; [`JwtError::KeysUnavailable`] when it is one whose keys
    /// cannot be fetched now (a store not started: [`StartBudget`]).
    fn tenant(&self, iss: &str) -> Result<(usize, Arc<Tenant>), JwtError> {
        let mut outcome = Err(JwtError::UnknownIssuer);
        for (i, state) in self.0.providers.iter().enumerate() {
            let Some(found) = self.tenant_in(state, iss) else {
                continue;
            };
            outcome = found.map(|t| (i, t));
            if outcome.is_ok() {
                break;
            }
        }
        outcome
    }

    /// [`tenant`](Self::tenant) among the tenants of `state`'s pattern:
    /// `None` when `iss` is no allowed tenant of it.
    fn tenant_in(&self, state: &ProviderState, iss: &str) -> Option<Result<Arc<Tenant>, JwtError>> {
        let (tenants, name) = tenant_name(state, iss)?;
        let stores = state.tenants.as_ref()?;
        let allowed_at = rule_answer(stores, tenants, name)?;
        let mut stores = stores.lock().unwrap_or_else(PoisonError::into_inner);
        // Refused by a request that asked meanwhile (a name is in one
        // of `refused` and `allowed` at most): not brought back.
        if stores.refused.contains_key(name) {
            return None;
        }
        if let Some(t) = stores.live.get(name).map(Arc::clone) {
            // Kept fresh only by the use of a tenant whose tokens
            // verify: forged tokens naming it do not keep it.
            if t.verified.load(Ordering::Relaxed)
                && let Some(at) = stores.order.iter().position(|n| n == name)
            {
                let used = stores.order.remove(at);
                stores.order.extend(used);
            }
            return Some(Ok(t));
        }
        // The latest allowance, if one was recorded meanwhile.
        let allowed_at = stores.allowed.get(name).copied().unwrap_or(allowed_at);
        Some(self.new_tenant(&state.cfg, &mut stores, name, iss, allowed_at))
    }

    /// The issuer pattern a verified `iss` is a tenant of, and the tenant,
    /// if the pattern's rule allows it ([`rule_answer`]).
    fn tenant_of<'i>(&self, iss: &'i str) -> Option<(usize, &'i str)> {
        self.0.providers.iter().enumerate().find_map(|(i, state)| {
            let (tenants, name) = tenant_name(state, iss)?;
            rule_answer(state.tenants.as_ref()?, tenants, name)?;
            Some((i, name))
        })
    }

    /// A tenant met for the first time (or again after it was dropped):
    /// kept, with its own key store when the provider's keys are per tenant,
    /// when there are `max_tenants` in place of one no token has verified
    /// for, else of the least recently used.
    fn new_tenant(
        &self,
        cfg: &Provider,
        stores: &mut TenantStores,
        name: &str,
        iss: &str,
        allowed_at: u64,
    ) -> Result<Arc<Tenant>, JwtError> {
        let (store, fetched) = match cfg.jwks.for_tenant(name) {
            None => (None, None),
            Some(_) if self.0.offline => (
                Some(Arc::new(KeyStore::never_fetched(iss, cfg.fetch.clone()))),
                None,
            ),
            Some(source) => {
                // Only a store not live yet costs the issuer requests.
                let may_start =
                    || stores.proven.contains(name) || stores.starts.take(std::time::Instant::now());
                match fetched_store_if(iss, &cfg.issuer, &source, &cfg.fetch, may_start) {
                    Ok(Some(f)) => (Some(Arc::clone(&f.store)), Some(f)),
                    Ok(None) => {
                        stores.metrics.throttled.increment(1);
                        if stores.throttled.due() {
                            tracing::warn!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(&cfg.issuer), per_second = TENANT_STARTS_PER_SECOND, "tokens name new tenants faster than their keys may be fetched: theirs are refused until the rate allows (said once a minute)");
                        }
                        return Err(JwtError::KeysUnavailable);
                    }
                    Err(e) => {
                        tracing::error!(target: LOG, issuer = %palisade_core::syntax::url_without_credentials(iss), error = %e, "cannot fetch the tenant's keys");
                        return Err(JwtError::KeysUnavailable);
                    }
                }
            }
        };
        let tenant = Arc::new(Tenant {
            name: name.to_owned(),
            issuer: iss.to_owned(),
            store,
            _fetched: fetched,
            allowed_at: AtomicU64::new(allowed_at),
            verified: std::sync::atomic::AtomicBool::new(false),
            created: std::time::Instant::now(),
        });
        if stores.order.len() >= cfg.max_tenants {
            // The oldest tenant no token ever verified for, since its keys
            // could have been fetched; else the oldest no token ever
            // verified for; else the oldest whose store has not verified
            // since it was made again; else (every tenant proven) the least
            // recently used. So tokens that name tenants without a valid
            // signature push out at most one tenant in use, however many
            // names they give and however fast (each newcomer then takes
            // the place of the last unproven one), and a new tenant has the
            // time its first token needs unless such tokens keep coming.
            let (live, verified_before) = (&stores.live, &stores.proven);
            let grace = cfg.fetch.timeout.saturating_mul(2);
            let verified = |n: &String| live.get(n).is_some_and(|t| t.verified.load(Ordering::Relaxed));
            // Among the unproven, a name no token ever verified for goes
            // before one whose tokens verified before (a busy tenant made
            // again, which forged tokens naming new tenants would else push
            // out again and again); a store made again is still unproven,
            // so tokens naming a known tenant without its signature push out
            // no tenant in use.
            let never = |n: &String| !verified(n) && !verified_before.contains(n);
            let unproven = stores
                .order
                .iter()
                .position(|n| never(n) && live.get(n).is_none_or(|t| t.created.elapsed() >= grace))
                .or_else(|| stores.order.iter().position(never))
                .or_else(|| stores.order.iter().position(|n| !verified(n)));
            if let Some(oldest) = stores.order.remove(unproven.unwrap_or(0)) {
                stores.live.remove(&oldest);
                stores.allowed.remove(&oldest);
                stores.metrics.evicted.increment(1);
            }
        }
        stores.order.push_back(name.to_owned());
        stores.live.insert(name.to_owned(), Arc::clone(&tenant));
        stores.metrics.started.increment(1);
        stores.count_held();
        Ok(tenant)
    }

    /// A fresh cached answer of one of `providers`, or the step that asks them.
    fn start_introspection<'r>(&self, found: Found<'r>, providers: &[usize]) -> Step<'r> {
        let key = TokenKey::of(&found.token);
        let now = now_secs();
        let mut refused = None;
        let mut ask = Vec::new();
        for &p in providers {
            let Some(introspector) = &self.0.providers[p].introspector else {
                continue;
            };
            match introspector.cached(&key, now) {
                Some(Ok(active)) => {
                    self.0.cache_hits.increment(1);
                    return Step::Done(self.introspected(&found, p, &active, now));
                }
                Some(Err(e)) => refused = Some(e),
                None => ask.push(p),
            }
        }
        if ask.is_empty() {
            self.0.cache_hits.increment(1);
            return Step::Done(Err(refused.unwrap_or(JwtError::Inactive)));
        }
        self.0.cache_misses.increment(1);
        Step::Introspect {
            found,
            providers: ask,
            key,
        }
    }

    /// Asks each provider in turn until one finds the token active.
    async fn introspect(
        &self,
        found: Found<'static>,
        providers: Vec<usize>,
        key: TokenKey,
    ) -> Result<Authenticated, JwtError> {
        let token: Arc<str> = Arc::from(&*found.token);
        let mut refused = JwtError::Inactive;
        for p in providers {
            let Some(introspector) = &self.0.providers[p].introspector else {
                continue;
            };
            let this = self.clone();
            let convert: Convert = Arc::new(move |answer| this.active_from(p, answer));
            match introspector.check(key, Arc::clone(&token), convert).await {
                Ok(active) => return self.introspected(&found, p, &active, now_secs()),
                // An unavailable endpoint outranks another issuer's "inactive".
                Err(e) if refused != JwtError::IntrospectionUnavailable => refused = e,
                Err(_) => {}
            }
        }
        Err(refused)
    }

    /// An introspection answer, checked as a JWT's claims are and mapped to
    /// the same identity.
    fn active_from(&self, provider: usize, mut claims: Map<String, Value>) -> Result<Active, JwtError> {
        let cfg = &self.0.providers[provider].cfg;
        if claims.remove("active") != Some(Value::Bool(true)) {
            return Err(JwtError::Inactive);
        }
        match claims.get("iss") {
            None => {
                claims.insert("iss".into(), Value::String(cfg.issuer.clone()));
            }
            Some(Value::String(iss)) if *iss == cfg.issuer => {}
            Some(_) => return Err(JwtError::UnknownIssuer),
        }
        // An access token, not a refresh or ID token the server reports
        // active (`token_type_hint` is only a hint): RFC 7662's
        // `token_type`, Keycloak's `typ`.
        for member in ["token_type", "typ"] {
            if let Some(t) = claims.get(member)
                && !t
                    .as_str()
                    .is_some_and(|t| t.eq_ignore_ascii_case("bearer") || t.eq_ignore_ascii_case("dpop"))
            {
                return Err(JwtError::WrongType);
            }
        }
        // A token the server calls DPoP-bound (RFC 7662's `token_type`,
        // Keycloak's `typ`) names its key (RFC 9449 §6.2: `cnf.jkt`);
        // without one its binding cannot be checked, and it is not taken
        // for a bearer token.
        if ["token_type", "typ"].iter().any(|member| {
            claims
                .get(*member)
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("dpop"))
        }) && !claims
            .get("cnf")
            .and_then(|c| c.get("jkt"))
            .is_some_and(Value::is_string)
        {
            return Err(JwtError::InvalidClaim("cnf"));
        }
        // Another kind of token by its claims, as for a JWT: Ory's and
        // Cognito's `token_use`, a logout event (whatever the provider
        // takes of JWTs: the server says what it answers about).
        if is_other_kind(None, &claims) {
            return Err(JwtError::WrongType);
        }
        let exp = number(&claims, "exp")?;
        // `nbf` is checked at each use: an answer may come before it.
        in_window(exp, None, cfg.leeway, now_secs())?;
        let nbf = number(&claims, "nbf")?;
        check_subject_and_audience(cfg, &claims)?;
        let payload = cfg.output_payload_to_header.as_ref().map(|_| {
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                Value::Object(claims.clone()).to_string(),
            )
        });
        // RFC 7662's `username`, the user's name where the answer has no
        // `preferred_username` and no other claim is configured.
        let username = claims.get("username").and_then(Value::as_str).map(str::to_owned);
        let token = token_claims(cfg, claims, None, username)?;
        let out_edits = output_edits(cfg, &token.claims, payload.as_deref());
        let edits = (0..self.0.sources.len())
            .map(|source| {
                let mut edits = self.removal_at(source, provider);
                edits.extend(out_edits.iter().cloned());
                HeaderEdits::from(edits)
            })
            .collect();
        Ok(Active {
            identity: Identity::from_token(token, Verification::assertion()),
            edits,
            exp,
            nbf,
        })
    }

    /// What a token gets from the introspection answer `body` (the body of
    /// a 200 from the endpoint of the provider of `issuer`), now: the path
    /// of [`Self::verify`] for an opaque token once the endpoint has
    /// answered, without the call and the cache. For the fuzz target of
    /// introspection answers (`fuzz/src/introspection.rs`); not part of
    /// the API.
    ///
    /// # Errors
    /// [`JwtError::UnknownIssuer`] when no provider of `issuer`
    /// introspects; [`JwtError::IntrospectionUnavailable`] when the body
    /// is not a JSON object (the call fails); else the refusal of the
    /// answer, as for a token.
    #[doc(hidden)]
    pub fn introspection_answer(&self, issuer: &str, body: &[u8]) -> Result<Identity, JwtError> {
        let p = self
            .0
            .providers
            .iter()
            .position(|p| p.cfg.issuer == issuer && p.introspector.is_some())
            .ok_or(JwtError::UnknownIssuer)?;
        let members = crate::introspect::parse_answer(body).ok_or(JwtError::IntrospectionUnavailable)?;
        let active = self.active_from(p, members)?;
        in_window(active.exp, active.nbf, self.0.providers[p].cfg.leeway, now_secs())?;
        Ok(active.identity)
    }

    /// A request authenticated by an introspection answer.
    fn introspected(
        &self,
        found: &Found<'_>,
        provider: usize,
        active: &Active,
        now: f64,
    ) -> Result<Authenticated, JwtError> {
        in_window(active.exp, active.nbf, self.0.providers[provider].cfg.leeway, now)?;
        Ok(Authenticated::new(active.identity.clone())
            .with_edits(active.edits.get(found.source).cloned().unwrap_or_default())
            .with_attachment(BearerToken::new(&*found.token)))
    }

    async fn finish(
        &self,
        found: Found<'static>,
        kid: Option<String>,
        alg: Algorithm,
        provider: usize,
        tenant: Option<Arc<Tenant>>,
        failed: Option<u64>,
    ) -> Result<Authenticated, JwtError> {
        let store = self.store_of(provider, tenant.as_deref());
        let waited = store.wait_for_key(kid.as_deref(), alg, failed).await;
        let parsed = parse(&found.token, self.0.max_token_size)?;
        // Several keys of the set fetched meanwhile fit a token that names
        // none: the one that signed it.
        let key = match waited {
            Ok(key) => key,
            Err(JwtError::UnknownKey) => store
                .keys()
                .signer(kid.as_deref(), alg, |k| {
                    check_signature(parsed.jws.message, parsed.jws.signature, alg, k).is_ok()
                })
                .cloned()
                .ok_or(JwtError::UnknownKey)?,
            Err(e) => return Err(e),
        };
        self.verify_with(&found, parsed, &key, provider, tenant.as_ref())
    }

    /// The answer for a token in the verified-token cache, read from
    /// `sources[source]`, when it is there and still good; an entry whose
    /// key is gone is dropped.
    fn hit(&self, token: &[u8], source: usize) -> Option<Step<'static>> {
        self.0.cache.as_ref()?;
        let owner = self.0.front_owner;
        // This thread's own copy first: it writes no memory another
        // thread writes.
        let front = with_front(|f| f.find(owner, token).map(|e| self.step(e, source))).flatten();
        self.after_front(token, source, front)
    }

    /// The cache's answer for a token given this thread's copy's answer
    /// (`None`: no copy): a refused copy is forgotten, the shared cache
    /// asked when there is no copy, a token whose key is gone dropped from
    /// it, and a hit counted.
    fn after_front(
        &self,
        token: &[u8],
        source: usize,
        front: Option<Option<Step<'static>>>,
    ) -> Option<Step<'static>> {
        let cache = self.0.cache.as_ref()?;
        let answer = match front {
            Some(answer) => {
                if !accepted(&answer) {
                    // Refused (expired, found in the wrong place) or its
                    // key gone: not kept here.
                    forget_copy(self.0.front_owner, token);
                }
                answer
            }
            None => self.shared_hit(cache, token, source)?,
        };
        if answer.is_none() {
            // The token's key is gone: from the shared cache (and from this
            // thread's front, above; other threads' fronts find the same).
            forget(cache, token);
        } else {
            self.0.cache_hits.increment(1);
        }
        answer
    }

    /// [`hit`](Self::hit) as a request's outcome, `None` when the cache
    /// has no answer. The common hit, this thread's copy of a token bound
    /// to nothing and plainly good ([`front_accepts`](Self::front_accepts)),
    /// is answered as it is found, without the [`Step`] every other answer
    /// is made of (the same outcome, the same counts).
    #[inline]
    fn cached_outcome(&self, token: &[u8], source: usize, req: &dyn RequestHead) -> Option<AuthOutcome> {
        self.0.cache.as_ref()?;
        let owner = self.0.front_owner;
        let found = with_front(|f| {
            f.find(owner, token).map(|e| {
                if self.front_accepts(e, source) {
                    // Built in place, not through the builders' moves.
                    let mut a = Authenticated::new(e.identity.clone());
                    a.edits = e.all_edits.clone();
                    a.attachments.push_shared(Arc::clone(&e.bearer));
                    Ok(a)
                } else {
                    Err(self.step(e, source))
                }
            })
        })
        .flatten();
        let front = match found {
            Some(Ok(a)) => {
                self.0.cache_hits.increment(1);
                return Some(AuthOutcome::Authenticated(a));
            }
            Some(Err(answer)) => Some(answer),
            None => None,
        };
        match self.after_front(token, source, front) {
            Some(Step::Unbound(r)) => Some(self.outcome_for(r, false)),
            Some(Step::Done(r)) => Some(self.bound_hit(r, req)),
            _ => None,
        }
    }

    /// Whether a thread's copy of a token is answered as it stands: bound
    /// to nothing, read from where it was verified, not a tenant's, its
    /// key set the one it was verified under, and within its time window
    /// by the coarse clock, clear of its edges ([`cached`](Self::cached)
    /// accepts it, with the entry's own edits; near an edge it decides).
    #[inline]
    fn front_accepts(&self, entry: &CacheEntry, source: usize) -> bool {
        entry.unbound
            && entry.source == source
            && entry.tenant.is_none()
            && self.0.sources[source].1.contains(&entry.provider)
            && self.0.providers[entry.provider].store.generation() == entry.keys_generation
            && clear_of_window_edges(entry.exp, entry.nbf, self.0.providers[entry.provider].cfg.leeway)
    }

    /// A cached token's answer from its entry.
    fn step(&self, entry: &CacheEntry, source: usize) -> Option<Step<'static>> {
        self.cached(entry, source).map(|done| {
            if entry.unbound {
                Step::Unbound(done)
            } else {
                Step::Done(done)
            }
        })
    }

    /// [`hit`](Self::hit) in the shared cache, for a token this thread has
    /// no copy of: `None` when the cache does not hold it. Out of line: a
    /// token a thread sees often is answered from its copy.
    #[inline(never)]
    fn shared_hit(
        &self,
        cache: &TokenCache<Arc<CacheEntry>>,
        token: &[u8],
        source: usize,
    ) -> Option<Option<Step<'static>>> {
        let owner = self.0.front_owner;
        // Answered under the cache's read lock, from the entry in place.
        let mut copy = None;
        let answer = cache.with(token, |entry| {
            let answer = self.step(entry, source);
            // An accepted token is copied here from its second hit,
            // unless it is a tenant's (its key set would live on).
            if accepted(&answer)
                && entry.tenant.is_none()
                && with_front(|f| f.deserves_copy(owner, token)) == Some(true)
            {
                copy = Some(Arc::clone(entry));
            }
            answer
        })?;
        if let Some(entry) = copy {
            let entry = entry.unshared();
            let alive = Arc::downgrade(&self.0.alive);
            with_front(|f| f.insert(owner, alive, token, entry));
        }
        Some(answer)
    }

    fn cached(&self, entry: &CacheEntry, source: usize) -> Option<Result<Authenticated, JwtError>> {
        let state = &self.0.providers[entry.provider];
        if !self.0.sources[source].1.contains(&entry.provider) {
            return Some(Err(JwtError::WrongLocation));
        }
        // A tenant's token whose tenant has gone (past `max_tenants`), or
        // whose allowance is older than the rule's answers are kept:
        // verified again, asking the rule again.
        let tenant = match &entry.tenant {
            Some(t) => Some(t.upgrade()?),
            None => None,
        };
        if tenant.as_ref().is_some_and(|t| !t.allowance_holds()) {
            return None;
        }
        let store = self.store_of(entry.provider, tenant.as_deref());
        if store.generation() != entry.keys_generation
            && !store.keys().still_has(entry.kid.as_deref(), entry.fingerprint)
        {
            return None;
        }
        if let Err(e) = in_cached_window(entry.exp, entry.nbf, state.cfg.leeway) {
            return Some(Err(e));
        }
        let edits = if source == entry.source {
            entry.all_edits.clone()
        } else {
            self.edits_at(source, entry)
        };
        Some(Ok(Authenticated::new(entry.identity.clone())
            .with_edits(edits)
            .with_shared_attachment(Arc::clone(&entry.bearer))))
    }

    /// A cached token's header edits when it came from another of the
    /// token's places than it was verified from.
    #[cold]
    #[inline(never)]
    fn edits_at(&self, source: usize, entry: &CacheEntry) -> HeaderEdits {
        let mut edits = self.removal_at(source, entry.provider);
        edits.extend(entry.edits.iter().cloned());
        edits.into()
    }

    fn removal(&self, found: &Found<'_>, provider: usize) -> Vec<HeaderEdit> {
        self.removal_at(found.source, provider)
    }

    /// The removal of a token read from `sources[source]`, unless the
    /// provider forwards it.
    fn removal_at(&self, source: usize, provider: usize) -> Vec<HeaderEdit> {
        if self.0.providers[provider].cfg.forward_original_token {
            return Vec::new();
        }
        match &self.0.sources[source].0 {
            TokenSource::Header { name, .. } => vec![HeaderEdit::Remove(name.clone())],
            // Cookies and query parameters cannot be removed without rewriting
            // the request target or other cookies; they are left as they are.
            TokenSource::Cookie(_) | TokenSource::Query(_) => Vec::new(),
        }
    }

    fn verify_with(
        &self,
        found: &Found<'_>,
        parsed: Parsed<'_>,
        key: &VerifyKey,
        provider: usize,
        tenant: Option<&Arc<Tenant>>,
    ) -> Result<Authenticated, JwtError> {
        let cfg = &self.0.providers[provider].cfg;
        check_signature(parsed.jws.message, parsed.jws.signature, parsed.jws.alg, key)?;
        check_key_issuer(key, &parsed.claims)?;
        let times = check_claims(cfg, tenant.map_or(&cfg.issuer, |t| &t.issuer), &parsed)?;
        if let Some(t) = tenant
            && !t.verified.load(Ordering::Relaxed)
        {
            t.verified.store(true, Ordering::Relaxed);
            if let Some(stores) = &self.0.providers[provider].tenants {
                let mut stores = stores.lock().unwrap_or_else(PoisonError::into_inner);
                if stores.proven.len() >= PROVEN_TENANTS {
                    stores.proven.clear();
                }
                stores.proven.insert(t.name.clone());
            }
        }
        let claims = token_claims(
            cfg,
            parsed.claims,
            tenant.map(|t| (t.name.as_str(), t.issuer.as_str())),
            None,
        )?;
        let out_edits = output_edits(cfg, &claims.claims, Some(parsed.jws.payload_b64));
        let identity = Identity::from_token(claims, Verification::assertion());
        let mut edits = self.removal(found, provider);
        edits.extend(out_edits.iter().cloned());
        let edits = HeaderEdits::from(edits);
        let bearer = Arc::new(BearerToken::new(&*found.token));
        if let Some(cache) = &self.0.cache {
            let store = self.store_of(provider, tenant.map(|t| &**t));
            let generation = store.generation();
            let keys_generation = if store.keys().still_has(key.kid.as_deref(), key.fingerprint) {
                generation
            } else {
                u64::MAX
            };
            let entry = Arc::new(CacheEntry {
                identity: identity.clone(),
                bearer: Arc::clone(&bearer),
                provider,
                tenant: tenant.map(Arc::downgrade),
                kid: key.kid.clone(),
                fingerprint: key.fingerprint,
                exp: times.exp,
                nbf: times.nbf,
                edits: out_edits,
                source: found.source,
                all_edits: edits.clone(),
                sha256: OnceLock::new(),
                unbound: identity.claim("cnf").is_none(),
                keys_generation,
            });
            let now = now_secs();
            cache.insert(found.token.as_bytes(), entry, |e| e.exp < now);
        }
        Ok(Authenticated::new(identity)
            .with_edits(edits)
            .with_shared_attachment(bearer))
    }
}

/// Whether `key` signs for the token with these `claims`. A JWK naming an
/// `issuer` keeps its key to that issuer's tokens, as Microsoft's libraries
/// read it (`EnableAadSigningKeyIssuerValidation`): Entra's key sets, one
/// for every tenant, name `https://login.microsoftonline.com/{tenantid}/v2.0`
/// for keys every tenant signs with, and one tenant's issuer for keys only
/// it may sign with (the consumer accounts' tenant). So a key is taken for
/// a token whose `iss` is the issuer it names, `{tenantid}` read as the
/// token's `tid` (a GUID, as Entra's tenant ids are); or, for an Entra v1
/// token (`https://sts.windows.net/{tid}/`), whose tenant's v2 issuer it
/// names, as Microsoft's libraries compare a v1 token's issuer with the v2
/// form.
fn check_key_issuer(key: &VerifyKey, claims: &Map<String, Value>) -> Result<(), JwtError> {
    const TENANT_ID: &str = "{tenantid}";
    let Some(kept_to) = key.issuer.as_deref() else {
        return Ok(());
    };
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or_default();
    let tid = claims.get("tid").and_then(Value::as_str).filter(|t| is_guid(t));
    let named = match (kept_to.contains(TENANT_ID), tid) {
        (false, _) => std::borrow::Cow::Borrowed(kept_to),
        (true, Some(tid)) => std::borrow::Cow::Owned(kept_to.replace(TENANT_ID, tid)),
        (true, None) => return Err(JwtError::KeyNotForIssuer),
    };
    let v1_of_its_tenant = || {
        tid.is_some_and(|tid| {
            iss == format!("https://sts.windows.net/{tid}/")
                && *named == format!("https://login.microsoftonline.com/{tid}/v2.0")
        })
    };
    if *named == *iss || v1_of_its_tenant() {
        Ok(())
    } else {
        Err(JwtError::KeyNotForIssuer)
    }
}

/// Whether `s` is a GUID in its 36-character form, as Entra's tenant ids.
fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The signature of `message` by `key`, which must allow `alg`.
fn check_signature(message: &str, signature: &str, alg: Algorithm, key: &VerifyKey) -> Result<(), JwtError> {
    if !key.allows(alg) {
        return Err(JwtError::AlgorithmNotAllowed);
    }
    if signature_valid(signature, message.as_bytes(), &key.key, alg) {
        Ok(())
    } else {
        Err(JwtError::BadSignature)
    }
}

/// Whether `signature` (base64url, a JWS's third part) signs `message`
/// under `key` with `alg`, by aws-lc-rs whatever jsonwebtoken's
/// process-wide default is. An application that turns on jsonwebtoken's
/// `rust_crypto` feature beside the `aws_lc_rs` one Palisade needs (Cargo
/// merges them) leaves jsonwebtoken no default, and its
/// `crypto::verify` then panics at each token.
pub(crate) fn signature_valid(
    signature: &str,
    message: &[u8],
    key: &jsonwebtoken::DecodingKey,
    alg: Algorithm,
) -> bool {
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.verifier_factory)(&alg, key)
        .is_ok_and(|verifier| verifier.verify(message, &signature).is_ok())
}

/// The headers `output_payload_to_header` and `output_claim_to_header` set
/// for a token with these claims (`payload`: the base64url payload).
fn output_edits(cfg: &Provider, claims: &Map<String, Value>, payload: Option<&str>) -> Vec<HeaderEdit> {
    let mut out = Vec::new();
    if let (Some(h), Some(payload)) = (&cfg.output_payload_to_header, payload) {
        out.push(HeaderEdit::Set(h.clone(), payload.to_owned()));
    }
    for (header, claim) in &cfg.output_claims {
        // Without the claim the header is removed: a client must not
        // supply what the handler takes for the token's claim.
        out.push(match claim_string(claims, claim) {
            Some(v) => HeaderEdit::Set(header.clone(), v),
            None => HeaderEdit::Remove(header.clone()),
        });
    }
    out
}

enum Step<'r> {
    Done(Result<Authenticated, JwtError>),
    /// Done, from the cache, for a token bound to no key or certificate.
    Unbound(Result<Authenticated, JwtError>),
    /// Ask the introspection endpoints of these providers.
    Introspect {
        found: Found<'r>,
        providers: Vec<usize>,
        key: TokenKey,
    },
    Wait {
        found: Found<'r>,
        kid: Option<String>,
        alg: Algorithm,
        provider: usize,
        tenant: Option<Arc<Tenant>>,
        /// The fingerprint of the key the token was taken for and whose
        /// signature did not check: the only key of the set that fits a
        /// token naming no `kid` (the issuer may have begun signing with a
        /// key published since).
        failed: Option<u64>,
    },
}

impl Step<'_> {
    /// The step with the token copied out of the request, to outlive it.
    fn into_owned(self) -> Step<'static> {
        match self {
            Step::Done(r) => Step::Done(r),
            Step::Unbound(r) => Step::Unbound(r),
            Step::Introspect {
                found,
                providers,
                key,
            } => Step::Introspect {
                found: found.into_owned(),
                providers,
                key,
            },
            Step::Wait {
                found,
                kid,
                alg,
                provider,
                tenant,
                failed,
            } => Step::Wait {
                found: found.into_owned(),
                kid,
                alg,
                provider,
                tenant,
                failed,
            },
        }
    }
}

struct Times {
    exp: f64,
    nbf: Option<f64>,
}

fn number(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or(JwtError::InvalidClaim(name)),
        Some(_) => Err(JwtError::InvalidClaim(name)),
    }
}

/// The claims against `issuer` (the provider's, or its tenant's).
fn check_claims(cfg: &Provider, issuer: &str, parsed: &Parsed<'_>) -> Result<Times, JwtError> {
    let claims = &parsed.claims;
    if peek_issuer(claims)? != issuer {
        return Err(JwtError::UnknownIssuer);
    }
    let times = check_times(cfg, claims).inspect_err(|e| {
        if matches!(e, JwtError::IssuedInFuture | JwtError::NotYetValid) {
            clock_behind(issuer, claims);
        }
    })?;
    check_subject_and_audience(cfg, claims)?;
    check_type(cfg, parsed)?;
    Ok(times)
}

/// The header's `typ`, when the provider requires one; and, unless the
/// provider takes any kind, not a JWT of another kind (an ID or logout
/// token, a DPoP proof: RFC 8725 §3.11).
fn check_type(cfg: &Provider, parsed: &Parsed<'_>) -> Result<(), JwtError> {
    let typ = parsed.jws.typ.as_deref();
    if let Some(required) = &cfg.required_type
        && !typ_is(typ.unwrap_or(""), required)
    {
        return Err(JwtError::WrongType);
    }
    if !cfg.any_token_kind && is_other_kind(typ, &parsed.claims) {
        return Err(JwtError::WrongType);
    }
    Ok(())
}

/// A token its issuer signed (the signature is checked first), dated
/// ahead of this machine's clock beyond the leeway: this clock, or the
/// issuer's, is most likely wrong, and every fresh token of the issuer is
/// refused until it is put right. Said at `WARN` once a minute for each
/// issuer, with how far ahead; a refusal of the token alone would be said at `DEBUG`.
fn clock_behind(issuer: &str, claims: &Map<String, Value>) {
    let dated = ["iat", "nbf"]
        .iter()
        .filter_map(|c| claims.get(*c)?.as_f64())
        .fold(f64::MIN, f64::max);
    palisade_core::sparse_warning!(
        per: issuer;
        target: LOG,
        issuer = %palisade_core::syntax::url_without_credentials(issuer),
        ahead = %format_args!("{:.0} s", dated - now_secs()),
        "a token signed by its issuer is dated ahead of this machine's clock: this clock or the issuer's is wrong (check NTP), and the issuer's fresh tokens are refused until it is put right"
    );
}

/// `exp`, `nbf`, `iat` against the clock, and the maximum lifetime.
fn check_times(cfg: &Provider, claims: &Map<String, Value>) -> Result<Times, JwtError> {
    let now = now_secs();
    let leeway = cfg.leeway.as_secs_f64();
    let exp = number(claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
    let nbf = number(claims, "nbf")?;
    in_window(Some(exp), nbf, cfg.leeway, now)?;
    let iat = number(claims, "iat")?;
    if iat.is_some_and(|iat| iat > now + leeway) {
        return Err(JwtError::IssuedInFuture);
    }
    if let Some(max) = cfg.max_lifetime {
        let iat = iat.ok_or(JwtError::MissingClaim("iat"))?;
        if exp - iat > max.as_secs_f64() {
            return Err(JwtError::LifetimeTooLong);
        }
    }
    Ok(Times { exp, nbf })
}

/// `exp` not passed and `nbf` reached at `now`, each with `leeway`.
fn in_window(exp: Option<f64>, nbf: Option<f64>, leeway: Duration, now: f64) -> Result<(), JwtError> {
    let leeway = leeway.as_secs_f64();
    if exp.is_some_and(|exp| now > exp + leeway) {
        return Err(JwtError::Expired);
    }
    if nbf.is_some_and(|nbf| now + leeway < nbf) {
        return Err(JwtError::NotYetValid);
    }
    Ok(())
}

/// Whether a token's audience `given` is the `configured` one: exactly, or
/// for an Istio rule's provider as Envoy's `jwt_authn` compares them (its
/// `CheckAudience`, which Istio's `audiences` go through): each without an
/// `http://` or `https://` scheme and a final `/`, so an Auth0-style
/// `https://api.example.com/` in a token is the `https://api.example.com`
/// a rule names. Nothing else is folded, and nothing for a sign-in's ID
/// and logout tokens (their audience is the client id, exactly).
fn same_audience(cfg: &Provider, configured: &str, given: &str) -> bool {
    configured == given || (cfg.envoy_audiences && envoy_audience(configured) == envoy_audience(given))
}

/// An audience as Envoy's `CheckAudience` compares it.
fn envoy_audience(aud: &str) -> &str {
    let aud = aud
        .strip_prefix("https://")
        .or_else(|| aud.strip_prefix("http://"))
        .unwrap_or(aud);
    aud.strip_suffix('/').unwrap_or(aud)
}

/// The claim checks that need neither the clock nor the token's header:
/// `sub` (a string; required unless the provider says otherwise, a
/// `client_id` standing in for it) and `aud` (one of the provider's
/// audiences, unless it accepts any).
fn check_subject_and_audience(cfg: &Provider, claims: &Map<String, Value>) -> Result<(), JwtError> {
    match claims.get("sub") {
        None | Some(Value::String(_)) => {}
        Some(_) => return Err(JwtError::InvalidClaim("sub")),
    }
    if cfg.require_subject
        && claims.get("sub").is_none()
        && claims.get("client_id").and_then(Value::as_str).is_none()
    {
        return Err(JwtError::MissingClaim("sub"));
    }
    if !cfg.any_audience {
        let ok = match claims.get("aud") {
            // A client's token without an audience (Cognito's), when the
            // provider names its clients.
            None if !cfg.client_ids.is_empty() => {
                let client = claims.get("client_id").and_then(Value::as_str);
                client.is_some_and(|c| cfg.client_ids.iter().any(|id| id == c))
            }
            None => return Err(JwtError::MissingClaim("aud")),
            Some(Value::String(a)) => cfg.audiences.iter().any(|x| same_audience(cfg, x, a)),
            Some(Value::Array(items)) => {
                let mut any = false;
                for item in items {
                    let Value::String(a) = item else {
                        return Err(JwtError::InvalidClaim("aud"));
                    };
                    any |= cfg.audiences.iter().any(|x| same_audience(cfg, x, a));
                }
                any
            }
            Some(_) => return Err(JwtError::InvalidClaim("aud")),
        };
        if !ok {
            return Err(JwtError::InvalidAudience);
        }
    }
    Ok(())
}

/// The claims of a token of `cfg`'s issuer as the identity holds them,
/// mapped as the provider says (its issuer, or for a pattern the tenant's
/// as `tenant` names it; the user's name from its principal claim, else
/// `username`; the roles of its roles claim) and checked by the
/// application's checks ([`Provider`]'s `check_claims`): every path that
/// makes an identity of a token's claims goes through here.
fn token_claims(
    cfg: &Provider,
    claims: Map<String, Value>,
    tenant: Option<(&str, &str)>,
    username: Option<String>,
) -> Result<TokenClaims, JwtError> {
    let principal = cfg.principal_claim.as_deref().unwrap_or("preferred_username");
    let preferred_username = claims.get(principal).and_then(Value::as_str).map(str::to_owned);
    let mut t = TokenClaims::from_claims(claims);
    t.preferred_username = match preferred_username {
        None if cfg.principal_claim.is_none() => username,
        name => name,
    };
    match tenant {
        Some((name, issuer)) => {
            issuer.clone_into(&mut t.issuer);
            t.tenant = Some(name.to_owned());
        }
        None => t.issuer.clone_from(&cfg.issuer),
    }
    if let Some(roles) = &cfg.roles_claim {
        t.add_realm_roles_from(roles);
    }
    cfg.claims_checks.run(&t).map_err(JwtError::ClaimsRefused)?;
    Ok(t)
}

/// A claim as a header value: strings as is, numbers and booleans printed,
/// arrays of those joined with `,`; nested claims with `.`.
fn claim_string(claims: &Map<String, Value>, path: &str) -> Option<String> {
    let mut parts = path.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.get(p)?;
    }
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let out = match v {
        Value::Array(items) => items.iter().filter_map(scalar).collect::<Vec<_>>().join(","),
        other => scalar(other)?,
    };
    // Header values must stay printable; control characters are dropped.
    Some(out.chars().filter(|c| !c.is_control()).collect())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The SHA-256 fingerprint (lower-case hex) of the connection's client
/// certificate, parsed once per connection by the TLS acceptor.
fn peer_thumbprint(req: &dyn RequestHead) -> Option<&str> {
    req.connection()
        .and_then(|c| c.peer.as_ref())
        .and_then(Identity::peer)
        .map(|p| p.fingerprint_sha256.as_str())
}

/// Why a token that passed, sent with `Authorization: DPoP`, cannot be
/// bound to any proof: it names no DPoP key (`cnf.jkt`). Asked before the
/// proof is checked, so such a request records no proof in the replay
/// store; the same answer [`bound_to`] gives after it.
fn unprovable(a: &Authenticated) -> Option<JwtError> {
    match a.identity.claim("cnf") {
        Some(c) if c.get("jkt").is_some_and(Value::is_string) => None,
        Some(c) if c.get("jkt").is_none() && c.get("x5t#S256").is_none() => {
            Some(JwtError::InvalidClaim("cnf"))
        }
        _ => Some(JwtError::DpopKeyMismatch),
    }
}

/// The DPoP key a token is bound to (`cnf.jkt`), which its proof must be
/// signed with.
fn bound_jkt(a: &Authenticated) -> Option<&str> {
    a.identity.claim("cnf")?.get("jkt")?.as_str()
}

/// RFC 8705 certificate-bound tokens: a token with `cnf.x5t#S256` is
/// accepted only over a connection whose client certificate has that
/// SHA-256 thumbprint (base64url, no padding). A token with a `cnf` that
/// names neither that nor a DPoP key (`jkt`), only methods Palisade cannot
/// check (`jwk`, `kid`, `jku`), is refused: its holder must prove
/// possession, and a bearer of it proves nothing. Tokens without `cnf`
/// pass as they are.
fn bound_to(
    a: Authenticated,
    peer_hex: Option<&str>,
    proof: Option<&VerifiedProof>,
) -> Result<Authenticated, JwtError> {
    // One lookup of `cnf` (claims are an ordered map hashed per lookup).
    let cnf = a.identity.claim("cnf");
    if cnf.is_some_and(|c| c.get("jkt").is_none() && c.get("x5t#S256").is_none()) {
        return Err(JwtError::InvalidClaim("cnf"));
    }
    let jkt = cnf.and_then(|c| c.get("jkt"));
    match (jkt, proof) {
        // RFC 9449 §7.1: a DPoP-bound token is not a bearer token.
        (Some(_), None) => return Err(JwtError::DpopBound),
        (Some(jkt), Some(proof)) if jkt.as_str().is_some_and(|j| bound_token_matches(j, proof)) => {}
        (_, Some(_)) => return Err(JwtError::DpopKeyMismatch),
        (None, None) => {}
    }
    let Some(bound) = cnf.and_then(|c| c.get("x5t#S256")) else {
        return Ok(a);
    };
    let Some(expected) = bound.as_str() else {
        return Err(JwtError::InvalidClaim("cnf"));
    };
    let Some(hex) = peer_hex else {
        return Err(JwtError::CertificateBinding);
    };
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    let actual = bytes.map(|b| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b));
    // Not secret, but compared in constant time all the same.
    match actual {
        Some(actual) if constant_time_eq(actual.as_bytes(), expected.trim_end_matches('=').as_bytes()) => {
            Ok(a)
        }
        _ => Err(JwtError::CertificateBinding),
    }
}

/// [`bound_to`] the key of `proof`, which passed: the answer carries the
/// next DPoP nonce when the proof's is about to expire.
fn proven(
    a: Authenticated,
    peer_hex: Option<&str>,
    proof: &VerifiedProof,
) -> Result<Authenticated, JwtError> {
    let a = bound_to(a, peer_hex, Some(proof))?;
    Ok(match &proof.next_nonce {
        Some(nonce) => a.with_response_header("dpop-nonce", nonce.clone()),
        None => a,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator for JwtAuthenticator {
    fn challenge(&self) -> Option<String> {
        let mut challenge = self.bearer_challenge();
        if let Some(d) = &self.0.dpop {
            challenge.push_str(", ");
            challenge.push_str(&d.challenge);
        }
        Some(challenge)
    }

    fn method(&self) -> Option<AuthMethod> {
        Some(AuthMethod::Jwt)
    }

    /// Configured alike, the previous authenticator itself, with its
    /// verified tokens. (Keys need no taking over: every authenticator of
    /// the process that trusts an issuer the same way shares its keys.)
    fn take_over(&self, previous: &dyn Authenticator) -> Option<Arc<dyn Authenticator>> {
        let previous = (previous as &dyn std::any::Any).downcast_ref::<JwtAuthenticator>()?;
        if self.same_config(previous) {
            return Some(Arc::new(previous.clone()));
        }
        self.adopt_tenants(previous);
        None
    }

    /// The issuers whose keys are fetched and have not loaded yet (or were
    /// dropped as older than `max_stale`): `the keys of ISSUER, …`. Keys
    /// given in the configuration, an issuer pattern's tenants (fetched as
    /// tokens name them) and an offline authenticator wait for nothing.
    fn waiting_for(&self) -> Option<String> {
        let waiting: Vec<String> = self
            .0
            .providers
            .iter()
            .filter(|p| p.fetched.is_some() && !p.store.keys().loaded)
            .map(|p| palisade_core::syntax::url_without_credentials(&p.cfg.issuer))
            .collect();
        (!waiting.is_empty()).then(|| format!("the keys of {}", waiting.join(", ")))
    }

    /// Every provider's `outputPayloadToHeader` and `outputClaimToHeaders`
    /// header: removed from every request, set again only from a token
    /// this authenticator verified (as Envoy's `jwt_authn` does).
    fn reserved_headers(&self) -> &[String] {
        &self.0.output_headers
    }

    fn authenticate(&self, req: &dyn RequestHead) -> Check<AuthOutcome> {
        if let Some(r) = &self.0.resource
            && req.path() == r.path
            && matches!(req.method(), "GET" | "HEAD")
        {
            return Check::Ready(metadata(r));
        }
        let located = match self.locate(req) {
            Ok(Some(l)) => l,
            Ok(None) => return Check::Ready(AuthOutcome::NoCredential),
            Err(e) => return Check::Ready(self.outcome(Err(e))),
        };
        // A token verified before is answered from the cache before its
        // text is checked: the cache holds only tokens that passed, compared
        // byte for byte. (`trim_ascii` trims less than `str::trim` does, so
        // a token it leaves padded just misses here.)
        // A token in a cookie, which a browser sends by itself, gives way to
        // a credential of another user the request carries itself.
        let cookie = matches!(
            self.0.sources.get(located.source),
            Some((TokenSource::Cookie(_), _))
        );
        if !located.query
            && self.0.dpop.as_ref().is_none_or(|d| d.source != located.source)
            && let Some(outcome) = self.cached_outcome(located.bytes.trim_ascii(), located.source, req)
        {
            return Check::Ready(if cookie { ambient(outcome) } else { outcome });
        }
        // At `DEBUG`, what the token says of itself goes with its refusal
        // (a refusal alone cannot tell an unknown issuer's from another's).
        let check = if tracing::enabled!(target: LOG, tracing::Level::DEBUG) {
            said_with_its_token(located.bytes, || self.authenticate_fully(req, located))
        } else {
            self.authenticate_fully(req, located)
        };
        match check {
            check if !cookie => check,
            Check::Ready(outcome) => Check::Ready(ambient(outcome)),
            Check::Pending(fut) => Check::pending(async move { ambient(fut.await) }),
        }
    }
}

/// `check` run in a `DEBUG` span of what the token says of itself, unverified
/// ([`Unverified`]), so its refusal line names the issuer, key and
/// algorithm the token claims.
#[cold]
#[inline(never)]
fn said_with_its_token(token: &[u8], check: impl FnOnce() -> Check<AuthOutcome>) -> Check<AuthOutcome> {
    use tracing::Instrument as _;
    let claims = Unverified::of(token);
    let span = tracing::debug_span!(
        target: LOG,
        "token",
        iss = claims.iss.as_deref().map(tracing::field::debug),
        aud = claims.aud.as_deref().map(tracing::field::debug),
        kid = claims.kid.as_deref().map(tracing::field::debug),
        alg = claims.alg.as_deref().map(tracing::field::debug),
        unverified = true,
    );
    match span.in_scope(check) {
        Check::Pending(pending) => Check::pending(pending.instrument(span)),
        ready => ready,
    }
}

/// What a token says of itself before any check, for a log line at
/// `DEBUG`: its header's `alg` and `kid`, its payload's `iss` and `aud`
/// (at most four), each as given, cut at 100 characters. Never the
/// signature, the subject or any other claim; nothing of a token that is
/// not a JWT or is over 16 KiB.
#[derive(Debug, Default, PartialEq)]
struct Unverified {
    iss: Option<String>,
    aud: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
}

impl Unverified {
    fn of(token: &[u8]) -> Self {
        const LONGEST: usize = 100;
        let cut = |v: &Value| v.as_str().map(|s| s.chars().take(LONGEST).collect::<String>());
        let decode = |part: &[u8]| {
            URL_SAFE_NO_PAD
                .decode(part)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
        };
        if token.len() > 16 * 1024 {
            return Self::default();
        }
        let mut parts = token.trim_ascii().split(|&b| b == b'.');
        let (header, payload) = (parts.next().and_then(decode), parts.next().and_then(decode));
        let header = header.unwrap_or_default();
        let payload = payload.unwrap_or_default();
        let aud = match payload.get("aud") {
            Some(Value::Array(all)) => Some(all.iter().take(4).filter_map(cut).collect::<Vec<_>>().join(" ")),
            Some(one) => cut(one),
            None => None,
        };
        Self {
            iss: payload.get("iss").and_then(cut),
            aud,
            kid: header.get("kid").and_then(cut),
            alg: header.get("alg").and_then(cut),
        }
    }
}

/// A cookie's authentication marked as such ([`Authenticated::ambient`]).
#[cold]
fn ambient(outcome: AuthOutcome) -> AuthOutcome {
    match outcome {
        AuthOutcome::Authenticated(a) => AuthOutcome::Authenticated(a.ambient()),
        other => other,
    }
}

/// Whether a cache's answer lets the request in.
fn accepted(answer: &Option<Step<'_>>) -> bool {
    matches!(answer, Some(Step::Done(Ok(_)) | Step::Unbound(Ok(_))))
}

/// Drops this thread's copy of a token its cache no longer accepts.
#[cold]
#[inline(never)]
fn forget_copy(owner: u64, token: &[u8]) {
    with_front(|f| f.remove(owner, token));
}

/// Drops a token whose key is gone from the shared cache.
#[cold]
#[inline(never)]
fn forget(cache: &TokenCache<Arc<CacheEntry>>, token: &[u8]) {
    cache.remove(token);
}

/// The protected-resource metadata (RFC 9728), served as it is asked for.
#[cold]
#[inline(never)]
fn metadata(r: &Served) -> AuthOutcome {
    AuthOutcome::Respond(
        Reply::new(200)
            .header("cache-control", "max-age=300")
            .with_body("application/json", r.body.clone()),
    )
}

impl JwtAuthenticator {
    /// A cached token bound to a certificate: checked against the peer's.
    #[inline(never)]
    fn bound_hit(&self, r: Result<Authenticated, JwtError>, req: &dyn RequestHead) -> AuthOutcome {
        self.outcome_for(r.and_then(|a| bound_to(a, peer_thumbprint(req), None)), false)
    }

    /// [`Authenticator::authenticate`] past the verified-token cache: the
    /// token checked and verified, its DPoP proof, a key to fetch. Out of
    /// line, so that a cached token's path holds none of its code (a
    /// server runs that path with its instruction cache emptied).
    ///
    /// The token is verified before its DPoP proof: a proof is checked
    /// (its key cached, its `jti` recorded in the replay store, which may
    /// be shared) only for a token that passed, and recorded only when it
    /// is signed with the key the token is bound to, so neither a caller
    /// without a token nor one holding another's token without its key can
    /// fill either. A request without exactly one `DPoP` header is refused
    /// first, which costs nothing.
    #[cold]
    #[inline(never)]
    fn authenticate_fully(&self, req: &dyn RequestHead, located: Located<'_>) -> Check<AuthOutcome> {
        let found = located.found();
        let d = match &self.0.dpop {
            Some(d) if d.source == found.source => d,
            _ => {
                return match self.start(found) {
                    // Nothing to bind, and no proof that would need a binding.
                    Step::Unbound(r) => Check::Ready(self.outcome_for(r, false)),
                    Step::Done(r) => Check::Ready(
                        self.outcome_for(r.and_then(|a| bound_to(a, peer_thumbprint(req), None)), false),
                    ),
                    step => {
                        let this = self.clone();
                        let step = step.into_owned();
                        let thumbprint = peer_thumbprint(req).map(str::to_owned);
                        Check::pending(async move {
                            let r = this.complete(step).await;
                            this.outcome_for(r.and_then(|a| bound_to(a, thumbprint.as_deref(), None)), false)
                        })
                    }
                };
            }
        };
        let proof = match self.proof_of(d, req) {
            Ok(proof) => proof,
            Err(outcome) => return Check::Ready(outcome),
        };
        let token = found.token.clone();
        match self.start(found) {
            Step::Done(Err(e)) | Step::Unbound(Err(e)) => Check::Ready(self.outcome_for(Err(e), true)),
            Step::Done(Ok(a)) | Step::Unbound(Ok(a)) => {
                if let Some(e) = unprovable(&a) {
                    return Check::Ready(self.outcome_for(Err(e), true));
                }
                let thumbprint = peer_thumbprint(req);
                match self.check_proof(d, &proof, &token, bound_jkt(&a)) {
                    Check::Ready(Ok(p)) => Check::Ready(self.outcome_for(proven(a, thumbprint, &p), true)),
                    Check::Ready(Err(outcome)) => Check::Ready(outcome),
                    Check::Pending(p) => {
                        let this = self.clone();
                        let thumbprint = thumbprint.map(str::to_owned);
                        Check::pending(async move {
                            match p.await {
                                Ok(p) => this.outcome_for(proven(a, thumbprint.as_deref(), &p), true),
                                Err(outcome) => outcome,
                            }
                        })
                    }
                }
            }
            step => {
                let this = self.clone();
                let step = step.into_owned();
                let token = token.into_owned();
                let thumbprint = peer_thumbprint(req).map(str::to_owned);
                let proof = proof.into_owned();
                Check::pending(async move {
                    let a = match this
                        .complete(step)
                        .await
                        .and_then(|a| unprovable(&a).map_or(Ok(a), Err))
                    {
                        Ok(a) => a,
                        Err(e) => return this.outcome_for(Err(e), true),
                    };
                    let Some(d) = &this.0.dpop else {
                        return this.outcome_for(Err(JwtError::DpopProof(DpopError::MissingProof)), true);
                    };
                    let p = match this.check_proof(d, &proof, &token, bound_jkt(&a)) {
                        Check::Ready(p) => p,
                        Check::Pending(p) => p.await,
                    };
                    match p {
                        Ok(p) => this.outcome_for(proven(a, thumbprint.as_deref(), &p), true),
                        Err(outcome) => outcome,
                    }
                })
            }
        }
    }

    /// `Bearer realm="…"`, with `resource_metadata` when it is served.
    fn bearer_challenge(&self) -> String {
        let mut challenge = bearer_challenge(&self.0.realm);
        if let Some(r) = &self.0.resource {
            challenge.push_str(&format!(", resource_metadata=\"{}\"", r.url));
        }
        challenge
    }

    /// The outcome refusing a request for its DPoP proof.
    fn refuse_proof(&self, d: &Dpop, e: DpopError) -> AuthOutcome {
        if e == DpopError::UseNonce
            && let Some(nonces) = d.verifier.nonce_source()
        {
            let challenge = d.error_challenge("use_dpop_nonce", &e.to_string());
            let reply = Reply::problem(401, "use-dpop-nonce", "DPoP nonce required", &e.to_string())
                .header("www-authenticate", challenge)
                .header("dpop-nonce", nonces.current());
            return AuthOutcome::Respond(reply);
        }
        self.outcome_for(Err(JwtError::DpopProof(e)), true)
    }

    /// The request's one `DPoP` proof and the URI it must name, or the
    /// outcome refusing a request without exactly one.
    fn proof_of<'r>(&self, d: &Dpop, req: &'r dyn RequestHead) -> Result<ProofOf<'r>, AuthOutcome> {
        let mut proofs = 0;
        req.for_each_header("dpop", &mut |_| proofs += 1);
        let proof = match (proofs, req.header_str("dpop")) {
            (1, Some(p)) => p.trim(),
            (0, _) => return Err(self.refuse_proof(d, DpopError::MissingProof)),
            _ => return Err(self.refuse_proof(d, DpopError::Malformed)),
        };
        let path = req.path();
        let mut htu = String::with_capacity(64 + path.len());
        match &d.origin {
            Some(o) => htu.push_str(o),
            None => {
                // The client's own `Host` (warned about at start-up): a
                // plain `host[:port]` only, so that it cannot move the path
                // a proof is compared with (`b.example/api`) or add to it.
                let host = req.host().unwrap_or_default();
                if host.is_empty()
                    || !host.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
                    })
                {
                    return Err(self.refuse_proof(d, DpopError::UriMismatch));
                }
                let tls = req.connection().is_some_and(|c| c.tls);
                htu.push_str(if tls { "https://" } else { "http://" });
                htu.push_str(host);
            }
        }
        htu.push_str(path);
        Ok(ProofOf {
            proof: Cow::Borrowed(proof),
            method: Cow::Borrowed(req.method()),
            htu,
        })
    }

    /// Checks a request's DPoP proof for `token`, a token that passed: the
    /// proof, or the outcome refusing the request; pending while a shared
    /// replay store answers.
    fn check_proof(
        &self,
        d: &Dpop,
        proof: &ProofOf<'_>,
        token: &str,
        jkt: Option<&str>,
    ) -> Check<Result<VerifiedProof, AuthOutcome>> {
        // A cached token's hash is kept with it.
        let cached = self.0.cache.as_ref().and_then(|c| c.get(token.as_bytes()));
        let mut request = match &cached {
            Some(entry) => ProofRequest::new(&proof.method, &proof.htu)
                .with_hashed_access_token(token, *entry.sha256.get_or_init(|| sha256(&[token.as_bytes()]))),
            None => ProofRequest::new(&proof.method, &proof.htu).with_access_token(token),
        };
        if let Some(jkt) = jkt {
            request = request.bound_to(jkt);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        match d.verifier.verify(&proof.proof, &request, now) {
            Check::Ready(Ok(p)) => Check::Ready(Ok(p)),
            // The answer `bound_to` gives a proof of another key.
            Check::Ready(Err(DpopError::OtherKey)) => {
                Check::Ready(Err(self.outcome_for(Err(JwtError::DpopKeyMismatch), true)))
            }
            Check::Ready(Err(e)) => Check::Ready(Err(self.refuse_proof(d, e))),
            Check::Pending(verified) => {
                let this = self.clone();
                Check::pending(async move {
                    match (verified.await, &this.0.dpop) {
                        (Ok(p), _) => Ok(p),
                        (Err(e), Some(d)) => Err(this.refuse_proof(d, e)),
                        (Err(e), None) => Err(this.outcome_for(Err(JwtError::DpopProof(e)), true)),
                    }
                })
            }
        }
    }

    /// The outcome; a refusal of a request that used `Authorization: DPoP`
    /// carries the `DPoP` challenge (RFC 9449 §7.1).
    fn outcome_for(&self, r: Result<Authenticated, JwtError>, dpop: bool) -> AuthOutcome {
        match (&self.0.dpop, r) {
            // A DPoP-bound token sent as a bearer token is told the scheme
            // to use too (RFC 9449 §7.1).
            (Some(d), Err(e)) if dpop || e == JwtError::DpopBound => {
                // At `DEBUG` whatever the reason: an issuer's keys or
                // introspection that cannot be had are said where they are
                // fetched, once (a line per request would let any client
                // fill the logs while they are down).
                tracing::debug!(target: LOG, reason = %e, "DPoP request refused");
                let code = match &e {
                    JwtError::DpopProof(p) => p.error_code(),
                    _ => "invalid_token",
                };
                let base = e.rejection(&self.0.realm);
                let detail = base.detail().to_owned();
                let challenge = d.error_challenge(code, &detail);
                // The bearer challenge stays offered (RFC 9449 §7.1). For a
                // token sent as a bearer token, first and with its error,
                // as without DPoP (a client reading one challenge reads
                // the scheme it used), then the DPoP one.
                let challenges = if dpop {
                    vec![challenge, self.bearer_challenge()]
                } else {
                    let mut bearer = match self.outcome(Err(e)) {
                        AuthOutcome::Rejected(r) => r.challenges().to_vec(),
                        _ => Vec::new(),
                    };
                    bearer.push(challenge);
                    bearer
                };
                AuthOutcome::Rejected(
                    palisade_core::Rejection::new(base.kind(), detail, challenges).with_reason(base.reason()),
                )
            }
            (_, r) => self.outcome(r),
        }
    }

    fn outcome(&self, r: Result<Authenticated, JwtError>) -> AuthOutcome {
        match r {
            Ok(a) => AuthOutcome::Authenticated(a),
            Err(e) => {
                // As in `outcome_for`: said where the keys are fetched.
                tracing::debug!(target: LOG, reason = %e, "bearer token refused");
                let rejection = e.rejection(&self.0.realm);
                AuthOutcome::Rejected(match &self.0.resource {
                    Some(r) => rejection.with_bearer_param("resource_metadata", &r.url),
                    None => rejection,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// An Istio rule's audiences compare as Envoy's `jwt_authn` compares
    /// them: scheme and final `/` aside, nothing else. Every other
    /// provider's (a sign-in's client id, whose ID and logout tokens must
    /// name it exactly) are exact.
    #[test]
    fn istio_audiences_compare_as_envoy_compares_them_others_exactly() {
        for (configured, given, same) in [
            ("https://api.example.com", "https://api.example.com/", true),
            ("https://api.example.com/", "api.example.com", true),
            ("api.example.com", "http://api.example.com", true),
            ("details", "details", true),
            ("https://api.example.com", "https://api.example.com/v1", false),
            ("https://api.example.com", "https://api.example.com.evil", false),
            ("https://api.example.com", "HTTPS://API.EXAMPLE.COM", false),
            ("details", "details//", false),
            ("details", "reviews", false),
        ] {
            assert_eq!(
                super::envoy_audience(configured) == super::envoy_audience(given),
                same,
                "{configured} / {given}"
            );
        }
        // As a token's claims are checked: an Istio rule's provider folds,
        // another does not.
        let jwt = |envoy: bool| {
            let b = Provider::builder("https://idp.example").audience("https://api.example.com");
            let b = if envoy { b.envoy_audience_match() } else { b };
            JwtAuthenticator::builder()
                .provider(b.build().unwrap())
                .build()
                .unwrap()
        };
        let check = |jwt: &JwtAuthenticator, aud: serde_json::Value| {
            let claims = serde_json::json!({"iss": "https://idp.example", "sub": "alice", "aud": aud});
            jwt.authenticated_for_verified_claims(
                claims.as_object().unwrap().clone(),
                Verification::assertion(),
            )
        };
        let (istio, exact) = (jwt(true), jwt(false));
        assert!(check(&istio, serde_json::json!("https://api.example.com/")).is_ok());
        assert!(check(&istio, serde_json::json!(["other", "api.example.com/"])).is_ok());
        assert!(matches!(
            check(&istio, serde_json::json!("https://api.example.com/v1")),
            Err(JwtError::InvalidAudience)
        ));
        assert!(check(&exact, serde_json::json!("https://api.example.com")).is_ok());
        assert!(matches!(
            check(&exact, serde_json::json!("https://api.example.com/")),
            Err(JwtError::InvalidAudience)
        ));
    }

    use serde_json::json;

    use super::*;

    /// DPoP with a replay store of this process only is said at start-up
    /// (replicas do not share it); with a shared store, nothing is.
    #[test]
    fn a_replay_store_of_one_process_is_said_at_start_up() {
        if !palisade_testkit::in_a_process_of_its_own(
            "authenticator::tests::a_replay_store_of_one_process_is_said_at_start_up",
        ) {
            return;
        }
        struct Shared;
        impl crate::dpop::ReplayStore for Shared {
            fn first_use(&self, _: &[u8; 32], _: u64) -> Check<Result<bool, crate::dpop::ReplayStoreError>> {
                Check::Ready(Ok(true))
            }
        }
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let jwks = issuer.jwks().to_string();
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("info");
        let said = "remembered by this process only";
        tracing::subscriber::with_default(subscriber, || {
            let build = |settings: DpopSettings| {
                JwtAuthenticator::builder()
                    .provider(
                        Provider::builder(issuer.issuer())
                            .audience("api")
                            .jwks_inline(jwks.clone())
                            .build()
                            .unwrap(),
                    )
                    .dpop(settings)
                    .dpop_origin("https://api.example")
                    .build()
                    .unwrap()
            };
            build(DpopSettings::default());
            assert_eq!(lines.containing(said).len(), 1);
            build(DpopSettings {
                replay_store: Arc::new(Shared),
                ..DpopSettings::default()
            });
            assert_eq!(lines.containing(said).len(), 1, "not for a shared store");
        });
    }

    /// `unprovable`, asked before a DPoP proof is checked, refuses exactly
    /// the tokens `bound_to` refuses after it with a matching proof, for
    /// every shape of `cnf`, and with the same error.
    #[test]
    fn a_token_unprovable_before_its_proof_is_refused_by_the_binding_after_it() {
        let proof = VerifiedProof {
            jkt: "key-thumbprint".into(),
            jti: "j".into(),
            iat: 0,
            next_nonce: None,
        };
        for cnf in [
            None,
            Some(json!({})),
            Some(json!("jkt")),
            Some(json!(["key-thumbprint"])),
            Some(Value::Null),
            Some(json!({"jkt": "key-thumbprint"})),
            Some(json!({"jkt": null})),
            Some(json!({"jkt": 7})),
            Some(json!({"x5t#S256": "abc"})),
            Some(json!({"jkt": "key-thumbprint", "x5t#S256": "abc"})),
            Some(json!({"jwk": {}})),
        ] {
            let mut claims = Map::new();
            claims.insert("sub".into(), json!("alice"));
            if let Some(c) = &cnf {
                claims.insert("cnf".into(), c.clone());
            }
            let a = || {
                Authenticated::new(Identity::from_token(
                    TokenClaims::from_claims(claims.clone()),
                    Verification::assertion(),
                ))
            };
            let before = unprovable(&a()).map(|e| e.to_string());
            // The certificate binding aside: a peer with that thumbprint.
            let after = bound_to(a(), Some("69b7"), Some(&proof))
                .err()
                .map(|e| e.to_string());
            let after = after.filter(|e| !e.contains("certificate"));
            assert_eq!(before, after, "cnf {cnf:?}");
        }
    }

    /// Tenants' key stores start twenty at once, then ten a second.
    #[test]
    fn tenant_stores_start_at_a_bounded_rate() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut budget = StartBudget {
            left: TENANT_STARTS_AT_ONCE,
            at: t0,
        };
        for _ in 0..20 {
            assert!(budget.take(t0));
        }
        assert!(!budget.take(t0), "twenty at once");
        assert!(!budget.take(at(50)));
        assert!(budget.take(at(150)), "ten a second");
        assert!(!budget.take(at(150)));
        // A long pause gives twenty again, not more.
        for _ in 0..20 {
            assert!(budget.take(at(60_000)));
        }
        assert!(!budget.take(at(60_000)));
    }

    /// An authenticator for the issuer pattern
    /// `http://127.0.0.1:9/realms/{tenant}`, every tenant allowed, each
    /// with its own key store (at an address that never answers).
    fn every_tenant_with_own_keys() -> JwtAuthenticator {
        every_tenant_with_own_keys_at_most(100)
    }

    /// [`every_tenant_with_own_keys`], `max` tenants kept at once.
    fn every_tenant_with_own_keys_at_most(max: usize) -> JwtAuthenticator {
        JwtAuthenticator::builder()
            .provider(
                Provider::builder("http://127.0.0.1:9/realms/{tenant}")
                    .audience("api")
                    .jwks_uri("http://127.0.0.1:9/realms/{tenant}/certs")
                    .tenant_resolver(|_| true)
                    .max_tenants(max)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    /// An issuer pattern reports its tenants: how many are held, and each
    /// one started, evicted for a newcomer, or refused for the start rate.
    #[test]
    fn tenants_are_counted_as_they_start_are_evicted_and_are_throttled() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let jwt = every_tenant_with_own_keys_at_most(2);
            for name in ["a", "b", "c"] {
                assert!(jwt.tenant(&format!("http://127.0.0.1:9/realms/{name}")).is_ok());
            }
            jwt.0.providers[0]
                .tenants
                .as_ref()
                .unwrap()
                .lock()
                .unwrap()
                .starts = StartBudget {
                left: 0.0,
                at: std::time::Instant::now(),
            };
            assert!(jwt.tenant("http://127.0.0.1:9/realms/d").is_err());
        });
        let values: std::collections::BTreeMap<String, DebugValue> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let labels: Vec<String> = key
                    .key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                (format!("{} {}", key.key().name(), labels.join(",")), value)
            })
            .collect();
        let pattern = "issuer=http://127.0.0.1:9/realms/{tenant}";
        let counter = |event: &str| values.get(&format!("{TENANT_EVENTS} {pattern},event={event}"));
        assert_eq!(counter("started"), Some(&DebugValue::Counter(3)), "{values:?}");
        assert_eq!(counter("evicted"), Some(&DebugValue::Counter(1)), "{values:?}");
        assert_eq!(counter("throttled"), Some(&DebugValue::Counter(1)), "{values:?}");
        assert_eq!(
            values.get(&format!("{TENANTS} {pattern}")),
            Some(&DebugValue::Gauge(2.0.into())),
            "{values:?}"
        );
    }

    /// With no start left, a tenant a token has verified for still gets its
    /// key store, and so does one whose store is live (another
    /// authenticator's: the one a reload replaces); a new one does not.
    #[test]
    fn a_proven_or_live_tenant_starts_whatever_the_rate() {
        let (old, jwt) = (every_tenant_with_own_keys(), every_tenant_with_own_keys());
        assert!(old.tenant("http://127.0.0.1:9/realms/live").is_ok());
        {
            let mut stores = jwt.0.providers[0].tenants.as_ref().unwrap().lock().unwrap();
            stores.starts = StartBudget {
                left: 0.0,
                at: std::time::Instant::now(),
            };
            stores.proven.insert("known".into());
        }
        assert!(matches!(
            jwt.tenant("http://127.0.0.1:9/realms/new"),
            Err(JwtError::KeysUnavailable)
        ));
        let known = jwt.tenant("http://127.0.0.1:9/realms/known");
        assert!(known.is_ok_and(|(_, t)| t.store.is_some()));
        let live = jwt.tenant("http://127.0.0.1:9/realms/live");
        assert!(live.is_ok_and(|(_, t)| t.store.is_some()));
    }

    /// Tokens naming a new name each, under a resolver, ask it at a bounded
    /// rate: a burst of a hundred, then fifty a second; a name it answered
    /// before is asked again (after a minute) whatever the rate, and a
    /// listed tenant's rule (a list) is not bounded.
    #[test]
    fn a_resolver_is_asked_about_new_names_at_a_bounded_rate() {
        use std::sync::atomic::AtomicUsize;
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&asked);
        let jwt = JwtAuthenticator::builder()
            .provider(
                Provider::builder("http://127.0.0.1:9/realms/{tenant}")
                    .audience("api")
                    .jwks_uri("http://127.0.0.1:9/realms/{tenant}/certs")
                    .tenant_resolver(move |n| {
                        counted.fetch_add(1, Ordering::Relaxed);
                        n.starts_with("ok")
                    })
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let state = &jwt.0.providers[0];
        let (tenants, stores) = (
            state.cfg.tenants.as_ref().unwrap(),
            state.tenants.as_ref().unwrap(),
        );
        assert!(rule_answer(stores, tenants, "ok-known").is_some());
        // The burst, with no time to refill it (the clock's reading after it).
        let later = std::time::Instant::now() + Duration::from_secs(3600);
        stores.lock().unwrap().asks = Some(StartBudget {
            left: RESOLVER_ASKS_AT_ONCE,
            at: later,
        });
        let flood = (0..1000)
            .filter(|i| rule_answer(stores, tenants, &format!("forged{i}")).is_none())
            .count();
        assert_eq!(flood, 1000);
        assert_eq!(asked.load(Ordering::Relaxed), 1 + RESOLVER_ASKS_AT_ONCE as usize);
        // Known: answered from what was kept, not refused for the rate.
        assert!(rule_answer(stores, tenants, "ok-known").is_some());
        // A new name beyond the rate is refused and not remembered.
        assert!(rule_answer(stores, tenants, "ok-new").is_none());
        assert!(stores.lock().unwrap().last("ok-new").is_none());
        // A tenant proven before, its answer forgotten, is asked whatever
        // the rate.
        stores.lock().unwrap().proven.insert("ok-proven".into());
        assert!(rule_answer(stores, tenants, "ok-proven").is_some());
    }

    /// A reload that adds a tenant to the list keeps the tenants met
    /// before that the list still allows, with their key stores, and the
    /// names proven; one the list no longer names is left behind.
    #[test]
    fn a_reload_keeps_the_tenants_met_before_that_are_still_allowed() {
        let listing = |names: &[&str]| {
            JwtAuthenticator::builder()
                .provider(
                    Provider::builder("http://127.0.0.1:9/realms/{tenant}")
                        .audience("api")
                        .jwks_uri("http://127.0.0.1:9/realms/{tenant}/certs")
                        .tenants(names.iter().copied())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap()
        };
        let old = listing(&["a", "b"]);
        let (_, a) = old.tenant("http://127.0.0.1:9/realms/a").unwrap();
        old.tenant("http://127.0.0.1:9/realms/b").unwrap();
        old.0.providers[0]
            .tenants
            .as_ref()
            .unwrap()
            .lock()
            .unwrap()
            .proven
            .extend(["a".to_owned(), "b".to_owned()]);
        let new = listing(&["a", "c"]);
        assert!(new.take_over(&old).is_none(), "another list: a new authenticator");
        let stores = new.0.providers[0].tenants.as_ref().unwrap().lock().unwrap();
        assert_eq!(stores.live.keys().collect::<Vec<_>>(), ["a"]);
        assert!(Arc::ptr_eq(&stores.live["a"], &a), "with its key store");
        assert_eq!(stores.proven, ["a".to_owned()].into());
        drop(stores);
        let (_, again) = new.tenant("http://127.0.0.1:9/realms/a").unwrap();
        assert!(Arc::ptr_eq(&again, &a));
    }

    /// A tenant whose tokens verified before is not the one pushed out by
    /// a newcomer, even when its store was made again since (unproven as a
    /// store, and older than the newcomers).
    #[test]
    fn a_tenant_proven_before_is_not_pushed_out_by_newcomers() {
        let jwt = every_tenant_with_own_keys_at_most(2);
        let tenant = |name: &str| jwt.tenant(&format!("http://127.0.0.1:9/realms/{name}")).unwrap();
        let stores = jwt.0.providers[0].tenants.as_ref().unwrap();
        stores.lock().unwrap().proven.insert("busy".into());
        tenant("busy");
        tenant("forged1");
        tenant("forged2");
        let live = stores
            .lock()
            .unwrap()
            .live
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(
            live,
            ["busy".to_owned(), "forged2".to_owned()].into(),
            "the newcomer took an unproven tenant's place"
        );
    }

    /// Tokens naming a new tenant each, allowed by the rule but refused
    /// for the start rate, leave no memory behind: the rule's allowances
    /// of names without a tenant are bounded, and a live tenant keeps its.
    #[test]
    fn allowed_tenants_that_cannot_start_are_bounded() {
        let jwt = every_tenant_with_own_keys();
        assert!(jwt.tenant("http://127.0.0.1:9/realms/live").is_ok());
        let stores = jwt.0.providers[0].tenants.as_ref().unwrap();
        stores.lock().unwrap().starts = StartBudget {
            left: 0.0,
            at: std::time::Instant::now(),
        };
        for i in 0..3 * REFUSED_TENANTS {
            // The resolver's own rate aside (a_resolver_is_asked_about_new_names_at_a_bounded_rate).
            stores.lock().unwrap().asks = None;
            assert!(matches!(
                jwt.tenant(&format!("http://127.0.0.1:9/realms/forged{i}")),
                Err(JwtError::KeysUnavailable)
            ));
        }
        let stores = stores.lock().unwrap();
        assert!(
            stores.allowed.len() <= REFUSED_TENANTS + stores.live.len(),
            "{}",
            stores.allowed.len()
        );
        assert!(stores.allowed.contains_key("live"));
    }

    /// The protected resource metadata (RFC 9728) names issuers: a fixed
    /// one, and each listed tenant of an issuer pattern, never the pattern
    /// itself (no issuer, and no URL); a resolver's tenants are unknown.
    #[test]
    fn the_resource_metadata_names_issuers_never_a_pattern() {
        let keys = palisade_testkit::TestIssuer::start().unwrap().jwks().to_string();
        let provider = |issuer: &str, tenants: Option<Tenants>| {
            let b = Provider::builder(issuer)
                .audience("api")
                .jwks_inline(keys.clone());
            match tenants {
                None => b,
                Some(Tenants::List(names)) => b.tenants(names),
                Some(Tenants::Resolver(_)) => b.tenant_resolver(|_| true),
            }
            .build()
            .unwrap()
        };
        let jwt = JwtAuthenticator::builder()
            .provider(provider("https://kc.example/realms/shop", None))
            .provider(provider(
                "https://login.example/{tenant}/v2.0",
                Some(Tenants::List(vec!["a".into(), "b".into()])),
            ))
            .provider(provider(
                "https://idp.example/{tenant}",
                Some(Tenants::Resolver(Arc::new(|_| true))),
            ))
            .resource_metadata(ResourceMetadata::new("https://api.example"))
            .build()
            .unwrap();
        let served = jwt.0.resource.as_ref().unwrap();
        let doc: Value = serde_json::from_str(&served.body).unwrap();
        assert_eq!(
            doc["authorization_servers"],
            serde_json::json!([
                "https://kc.example/realms/shop",
                "https://login.example/a/v2.0",
                "https://login.example/b/v2.0"
            ])
        );
    }

    #[test]
    fn the_cached_window_is_the_precise_clocks_near_its_edges() {
        let now = now_secs();
        let zero = Duration::ZERO;
        // Far from the edges: valid.
        assert_eq!(in_cached_window(now + 60.0, Some(now - 60.0), zero), Ok(()));
        // Within the margin, the precise clock decides: still valid...
        assert_eq!(in_cached_window(now + 0.5, None, zero), Ok(()));
        // ...and just expired is expired, however the coarse clock trails.
        assert_eq!(in_cached_window(now - 0.001, None, zero), Err(JwtError::Expired));
        assert_eq!(
            in_cached_window(now - 0.001, None, Duration::from_secs(1)),
            Ok(())
        );
        // Not yet valid, by the precise clock.
        assert_eq!(
            in_cached_window(now + 60.0, Some(now + 0.5), zero),
            Err(JwtError::NotYetValid)
        );
        // The coarse clock never leads the precise one.
        assert!(coarse_now_secs() <= now_secs());
    }

    /// A token read from a cookie, which a browser sends by itself, is
    /// marked so, on the first (verifying) and the cached path; one from a
    /// header is not.
    #[test]
    fn a_token_from_a_cookie_is_marked_ambient_on_every_path() {
        use palisade_core::authn::OwnedRequest;
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let jwt = JwtAuthenticator::builder()
            .provider(
                Provider::builder(issuer.issuer())
                    .audience("api")
                    .jwks_inline(issuer.jwks().to_string())
                    .source(TokenSource::authorization_bearer())
                    .source(TokenSource::Cookie("session".into()))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let ambient = |req: OwnedRequest| match jwt.authenticate(&req) {
            Check::Ready(AuthOutcome::Authenticated(a)) => a.ambient,
            Check::Ready(other) => panic!("{other:?}"),
            Check::Pending(_) => panic!("the keys are inline"),
        };
        let token = issuer.token().subject("alice").sign();
        for round in ["verified", "cached"] {
            let by_cookie = OwnedRequest::get("/").header("cookie", format!("a=b; session={token}"));
            assert!(ambient(by_cookie), "{round}");
            let by_header = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
            assert!(!ambient(by_header), "{round}");
        }
    }

    /// A token its issuer signed, dated ahead of this clock (this clock or
    /// the issuer's is wrong: every fresh token is refused), is said at
    /// `WARN` once a minute with how far ahead; a forged one is not (its
    /// signature is checked first), nor an expired one.
    #[test]
    fn a_signed_token_dated_ahead_of_this_clock_is_said_once_a_minute() {
        if !palisade_testkit::in_a_process_of_its_own(
            "authenticator::tests::a_signed_token_dated_ahead_of_this_clock_is_said_once_a_minute",
        ) {
            return;
        }
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let jwt = for_api(&issuer, |b| b.jwks_inline(issuer.jwks().to_string()));
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("warn");
        let said = "dated ahead of this machine's clock";
        tracing::subscriber::with_default(subscriber, || {
            let forged = issuer.token().issued_at(3600).sign();
            let (head, _) = forged.rsplit_once('.').unwrap();
            assert!(!accepts(&jwt, &format!("{head}.AAAA")));
            assert!(!accepts(&jwt, &issuer.token().expires_in(-3600).sign()));
            assert!(lines.containing(said).is_empty(), "{}", lines.text());
            assert!(!accepts(&jwt, &issuer.token().issued_at(3600).sign()));
            let warned = lines.containing(said);
            assert!(
                matches!(&warned[..], [one] if one.contains("ahead=3600 s") || one.contains("ahead=3599 s")),
                "{warned:?}"
            );
            assert!(!accepts(&jwt, &issuer.token().not_before(3600).sign()));
            assert_eq!(lines.containing(said).len(), 1, "once a minute");
        });
    }

    /// A refusal's `DEBUG` line names the issuer, audience, key and
    /// algorithm the token claims (what tells an unknown issuer's token
    /// from a stale key's), never the token or its signature; an
    /// accepted token is not said.
    #[test]
    fn a_refusal_at_debug_says_what_the_token_claims_and_not_the_token() {
        // The log lines of a thread's subscriber: alone in the process, no
        // other test registers the event's call site first.
        if !palisade_testkit::in_a_process_of_its_own(
            "authenticator::tests::a_refusal_at_debug_says_what_the_token_claims_and_not_the_token",
        ) {
            return;
        }
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let jwt = for_api(&issuer, |b| b.jwks_inline(issuer.jwks().to_string()));
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("palisade=debug");
        let other = issuer
            .token()
            .issuer("https://elsewhere.example/realms/x\n")
            .sign();
        let good = issuer.token().sign();
        tracing::subscriber::with_default(subscriber, || {
            assert!(!accepts(&jwt, &other));
            assert!(accepts(&jwt, &good));
        });
        let refused = lines.containing("refused");
        assert_eq!(refused.len(), 1, "{}", lines.text());
        let line = &refused[0];
        for said in [
            r#"iss="https://elsewhere.example/realms/x\n""#,
            r#"aud="api""#,
            "alg=\"RS256\"",
            "unverified=true",
            "not accepted",
        ] {
            assert!(line.contains(said), "{said} in {line}");
        }
        assert!(line.contains("kid="), "{line}");
        let (_, signature) = other.rsplit_once('.').unwrap();
        assert!(!lines.text().contains(signature), "{}", lines.text());
        assert!(
            !lines.text().contains(good.split('.').nth(1).unwrap()),
            "{}",
            lines.text()
        );
        // Not a JWT, or too long: nothing read.
        assert_eq!(Unverified::of(b"opaque-token"), Unverified::default());
        assert_eq!(Unverified::of(&vec![b'a'; 17 * 1024]), Unverified::default());
    }

    /// A readiness probe's question: an issuer whose keys are fetched is
    /// waited for until they have loaded once; keys given inline, never.
    #[test]
    fn an_issuers_keys_are_waited_for_until_they_have_loaded() {
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let inline = for_api(&issuer, |b| b.jwks_inline(issuer.jwks().to_string()));
        assert_eq!(inline.waiting_for(), None);
        // Nothing answers there: waited for.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nowhere = format!("http://{}/jwks", silent.local_addr().unwrap());
        let waiting = for_api(&issuer, |b| b.jwks_uri(nowhere));
        let said = waiting.waiting_for().expect("keys not loaded");
        assert_eq!(said, format!("the keys of {}", issuer.issuer()));
        let fetched = for_api(&issuer, |b| b.jwks_uri(issuer.jwks_uri()));
        let started = std::time::Instant::now();
        while fetched.waiting_for().is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the keys never loaded"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            waiting.waiting_for().is_some(),
            "still nothing from the silent one"
        );
    }

    /// An authenticator of `issuer`'s tokens for the audience `api`, its
    /// keys as `keys` says.
    fn for_api(
        issuer: &palisade_testkit::TestIssuer,
        keys: impl FnOnce(crate::config::ProviderBuilder) -> crate::config::ProviderBuilder,
    ) -> JwtAuthenticator {
        JwtAuthenticator::builder()
            .provider(
                keys(Provider::builder(issuer.issuer()).audience("api"))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    /// The testkit's expired and not-yet-valid tokens are refused under the
    /// default leeway, which a token expired a moment ago is within.
    #[test]
    fn the_testkits_expired_tokens_are_past_the_default_leeway() {
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let jwt = for_api(&issuer, |b| b.jwks_inline(issuer.jwks().to_string()));
        assert!(accepts(&jwt, &issuer.token().sign()));
        assert!(accepts(&jwt, &issuer.token().expires_in(-30).sign()));
        assert!(!accepts(&jwt, &issuer.token().expired().sign()));
        assert!(!accepts(&jwt, &issuer.token().not_yet_valid().sign()));
    }

    /// Whether `jwt` authenticates a request with `token` in
    /// `Authorization: Bearer`, an answer that is not ready awaited on a
    /// runtime of its own.
    fn accepts(jwt: &JwtAuthenticator, token: &str) -> bool {
        use palisade_core::authn::OwnedRequest;
        let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
        let outcome = match jwt.authenticate(&req) {
            Check::Ready(o) => o,
            Check::Pending(f) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f),
        };
        matches!(outcome, AuthOutcome::Authenticated(_))
    }

    /// A fixed PEM key (Keycloak's `realm-public-key`, whole or its bare
    /// base64 body) verifies tokens whatever `kid` they name, as
    /// Keycloak's adapters and Envoy take a key without `kid`: Keycloak
    /// names one in every token. So does an inline key set whose keys name
    /// none; a set that names its keys still refuses a `kid` it lacks.
    #[test]
    fn a_key_without_kid_verifies_tokens_that_name_one() {
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let pem = issuer.public_key_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut kidless = issuer.jwks();
        for key in kidless["keys"].as_array_mut().unwrap() {
            key.as_object_mut().unwrap().remove("kid");
        }
        let token = issuer.token().subject("alice").sign();
        let unknown_kid = issuer
            .token()
            .subject("alice")
            .header("kid", serde_json::json!("not-a-kid"))
            .sign();
        // (A `kid` a fixed set lacks waits for no fetch, but is answered
        // as any unknown key is: later.)
        let outcome = accepts;
        for (what, jwt) in [
            ("PEM", for_api(&issuer, |p| p.public_key_pem(pem.clone()))),
            (
                "realm-public-key",
                for_api(&issuer, |p| p.public_key_pem(body.clone())),
            ),
            (
                "key set without kid",
                for_api(&issuer, |p| p.jwks_inline(kidless.to_string())),
            ),
        ] {
            assert!(outcome(&jwt, &token), "{what}");
            assert!(outcome(&jwt, &unknown_kid), "{what}");
        }
        let named = for_api(&issuer, |p| p.jwks_inline(issuer.jwks().to_string()));
        assert!(outcome(&named, &token));
        assert!(!outcome(&named, &unknown_kid), "a kid the named set lacks");
    }

    /// One header value is one token, however many rules' sources read
    /// it: a rule reading `Authorization` with `bearer ` (or without a
    /// prefix) beside one with the default `Bearer ` does not make every
    /// request carry "two tokens" (`400`). Two headers are still two.
    /// And `verify`, with no provider reading `Authorization: Bearer`,
    /// refuses as from the wrong place rather than pick the first
    /// provider's place.
    #[test]
    fn a_header_read_by_two_sources_is_one_token() {
        use palisade_core::authn::OwnedRequest;
        let first = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let second = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let provider = |issuer: &palisade_testkit::TestIssuer, source: TokenSource| {
            Provider::builder(issuer.issuer())
                .audience("api")
                .jwks_inline(issuer.jwks().to_string())
                .source(source)
                .build()
                .unwrap()
        };
        let header = |prefix: Option<&str>| TokenSource::Header {
            name: "authorization".into(),
            prefix: prefix.map(str::to_owned),
        };
        // In either order of the rules: a value is the token of the source
        // with the longest prefix it has.
        for (other, bearer_first) in [
            (header(Some("bearer ")), true),
            (header(None), true),
            (header(None), false),
        ] {
            let (a, b) = (
                provider(&first, TokenSource::authorization_bearer()),
                provider(&second, other.clone()),
            );
            let jwt = if bearer_first {
                JwtAuthenticator::builder().provider(a).provider(b)
            } else {
                JwtAuthenticator::builder().provider(b).provider(a)
            }
            .build()
            .unwrap();
            let token = first.token().subject("alice").sign();
            let one = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
            let Check::Ready(AuthOutcome::Authenticated(_)) = jwt.authenticate(&one) else {
                panic!("{other:?}: one header refused")
            };
            let two = one.clone().header("authorization", format!("Bearer {token}"));
            let Check::Ready(AuthOutcome::Rejected(r)) = jwt.authenticate(&two) else {
                panic!("{other:?}: two headers taken")
            };
            assert_eq!(r.status(), 400, "{other:?}");
        }
        let elsewhere = JwtAuthenticator::builder()
            .provider(provider(
                &first,
                TokenSource::Header {
                    name: "x-token".into(),
                    prefix: None,
                },
            ))
            .build()
            .unwrap();
        let token = first.token().subject("alice").sign();
        let verified = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(elsewhere.verify(&token));
        assert!(matches!(verified, Err(JwtError::WrongLocation)), "{verified:?}");
    }

    /// A second token in the query under a percent-encoded name
    /// (`access%5Ftoken`, which an application's query parser reads as
    /// `access_token`) is a second token (`400`), not left unverified.
    #[test]
    fn a_query_token_under_an_encoded_name_is_a_token() {
        use palisade_core::authn::OwnedRequest;
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let jwt = for_api(&issuer, |p| {
            p.jwks_inline(issuer.jwks().to_string())
                .source(TokenSource::Query("access_token".into()))
        });
        let token = issuer.token().subject("alice").sign();
        let one = OwnedRequest::get(&format!("/x?access_token={token}"));
        assert!(matches!(
            jwt.authenticate(&one),
            Check::Ready(AuthOutcome::Authenticated(_))
        ));
        let alone = OwnedRequest::get(&format!("/x?access%5Ftoken={token}"));
        assert!(matches!(
            jwt.authenticate(&alone),
            Check::Ready(AuthOutcome::Authenticated(_))
        ));
        let two = OwnedRequest::get(&format!("/x?access_token={token}&access%5Ftoken=forged"));
        let Check::Ready(AuthOutcome::Rejected(r)) = jwt.authenticate(&two) else {
            panic!("a second token under an encoded name taken")
        };
        assert_eq!(r.status(), 400);
    }

    /// Two keys fit a token that names no `kid` (an issuer rotating keys
    /// without naming them): the one that signed it verifies it, as Envoy
    /// tries each; before, such a token was refused as of an unknown key.
    /// A token no key signed is still refused.
    #[test]
    fn a_token_without_kid_is_verified_by_whichever_fitting_key_signed_it() {
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        issuer.rotate_key();
        let jwt = for_api(&issuer, |p| p.jwks_inline(issuer.jwks().to_string()));
        let outcome = |token: &str| accepts(&jwt, token);
        // Signed by the second key of the set (the first is tried first).
        let unnamed = issuer.token().subject("alice").kid(None).sign();
        assert!(outcome(&unnamed));
        assert!(outcome(&unnamed), "from the cache");
        let other = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let forged = other
            .token()
            .issuer(issuer.issuer())
            .subject("mallory")
            .kid(None)
            .sign();
        assert!(!outcome(&forged), "no key of the set signed it");
        // The same when the keys are fetched for the token (the first
        // token after start-up, a new tenant's): after the fetch.
        let fetched = for_api(&issuer, |p| p.jwks_uri(issuer.jwks_uri()));
        assert!(accepts(&fetched, &unnamed), "verified once the keys are fetched");
    }

    /// An issuer whose one key (named by no token) is joined by a new one
    /// it signs with: the first token of the new key is verified once the
    /// set is fetched again, rather than refused by the old key's signature
    /// until the next scheduled fetch (minutes, or a day's `max-age`).
    #[test]
    fn a_key_published_since_is_fetched_for_a_token_the_only_fitting_key_did_not_sign() {
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let fetch = crate::FetchSettings {
            min_refresh_interval: Duration::from_millis(1),
            ..crate::FetchSettings::default()
        };
        let jwt = for_api(&issuer, |p| {
            p.jwks_uri(issuer.jwks_uri()).fetch_settings(fetch.clone())
        });
        // `verify_jws` (an ID token's, a logout token's) alike, with a key
        // store of its own (other settings).
        let own = crate::FetchSettings {
            timeout: Duration::from_secs(4),
            ..fetch.clone()
        };
        let jws = for_api(&issuer, |p| p.jwks_uri(issuer.jwks_uri()).fetch_settings(own));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let old = issuer.token().subject("alice").kid(None).sign();
        assert!(accepts(&jwt, &old), "the first key's");
        assert!(rt.block_on(jws.verify_jws(issuer.issuer(), &old)).is_ok());
        let fetches = issuer.jwks_fetches();
        issuer.rotate_key();
        let new = issuer.token().subject("alice").kid(None).sign();
        assert!(accepts(&jwt, &new), "the new key's, once fetched");
        assert_eq!(issuer.jwks_fetches(), fetches + 1);
        let verified = rt.block_on(jws.verify_jws(issuer.issuer(), &new));
        assert!(verified.is_ok(), "{verified:?}");
        assert_eq!(issuer.jwks_fetches(), fetches + 2, "its own store fetched");
    }

    /// An RSA key published with a zero octet before its modulus or
    /// exponent (as Java's `BigInteger.toByteArray` writes a modulus whose
    /// top bit is set) is the same key: it verifies its tokens.
    #[test]
    fn an_rsa_key_written_with_leading_zero_octets_verifies() {
        use palisade_core::authn::OwnedRequest;
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let mut keys = issuer.jwks();
        for key in keys["keys"].as_array_mut().unwrap() {
            for member in ["n", "e"] {
                let bytes = URL_SAFE_NO_PAD.decode(key[member].as_str().unwrap()).unwrap();
                let padded = [&[0u8][..], &bytes].concat();
                key[member] = Value::String(URL_SAFE_NO_PAD.encode(padded));
            }
        }
        let jwt = for_api(&issuer, |p| p.jwks_inline(keys.to_string()));
        let token = issuer.token().subject("alice").sign();
        let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
        let Check::Ready(AuthOutcome::Authenticated(_)) = jwt.authenticate(&req) else {
            panic!("a token of a key written with a leading zero octet is refused")
        };
    }

    /// `max_tenants` bounds the tenants held at once, their cached tokens
    /// notwithstanding: a tenant let go for another is dropped (its key
    /// store and refreshes with it), and its token, cached, is verified
    /// again the next time.
    #[test]
    fn cached_tokens_do_not_keep_a_tenant_past_max_tenants() {
        use palisade_core::authn::OwnedRequest;
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let base = issuer.base_url().to_owned();
        let jwt = JwtAuthenticator::builder()
            .provider(
                Provider::builder(format!("{base}/realms/{{tenant}}"))
                    .audience("api")
                    .jwks_inline(issuer.jwks().to_string())
                    .tenant_resolver(|_| true)
                    .max_tenants(1)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let authenticated = |token: &str| {
            let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
            matches!(
                jwt.authenticate(&req),
                Check::Ready(AuthOutcome::Authenticated(_))
            )
        };
        let held = |name: &str| {
            let stores = jwt.0.providers[0].tenants.as_ref().unwrap().lock().unwrap();
            stores.live.get(name).map(Arc::downgrade)
        };
        let first = issuer.token().issuer(&format!("{base}/realms/first")).sign();
        let second = issuer.token().issuer(&format!("{base}/realms/second")).sign();
        assert!(authenticated(&first));
        let first_tenant = held("first").expect("the first tenant is held");
        assert!(authenticated(&second));
        assert!(held("first").is_none(), "let go for the second");
        assert!(
            first_tenant.upgrade().is_none(),
            "no cached token keeps the first tenant alive"
        );
        assert!(authenticated(&first), "verified again");
    }

    /// A tenant the rule stops allowing loses its cached tokens within
    /// the time its answers are kept, and the rule is asked no more often
    /// than that; one it allows again regains them. (The answers are aged
    /// by hand: waiting [`TENANT_ANSWER_TTL_MS`] would take a minute.)
    #[test]
    fn a_tenants_cached_tokens_follow_the_rules_answer_once_it_is_stale() {
        use palisade_core::authn::OwnedRequest;
        use std::sync::atomic::AtomicBool;
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let base = issuer.base_url().to_owned();
        let allow = Arc::new(AtomicBool::new(true));
        let asked = Arc::new(AtomicU64::new(0));
        // While `slow`, the rule says it was entered and waits (5 s at
        // most) to be released.
        let slow = Arc::new(AtomicBool::new(false));
        let (entered, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let jwt = JwtAuthenticator::builder()
            .provider(
                Provider::builder(format!("{base}/realms/{{tenant}}"))
                    .audience("api")
                    .jwks_inline(issuer.jwks().to_string())
                    .tenant_resolver({
                        let (allow, asked) = (Arc::clone(&allow), Arc::clone(&asked));
                        let (slow, release_rx) = (Arc::clone(&slow), Arc::clone(&release_rx));
                        move |_| {
                            asked.fetch_add(1, Ordering::SeqCst);
                            if slow.load(Ordering::SeqCst) {
                                let _ = entered.send(());
                                let _ = release_rx.lock().unwrap().recv_timeout(Duration::from_secs(5));
                            }
                            allow.load(Ordering::SeqCst)
                        }
                    })
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let authenticated = |token: &str| {
            let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
            match jwt.authenticate(&req) {
                Check::Ready(AuthOutcome::Authenticated(_)) => true,
                Check::Ready(_) => false,
                Check::Pending(_) => panic!("the keys are inline"),
            }
        };
        // Every kept answer, and every tenant's allowance, made older
        // than they are kept.
        let age = || {
            let stale = TENANT_ANSWER_TTL_MS + 1_000;
            let mut guard = jwt.0.providers[0].tenants.as_ref().unwrap().lock().unwrap();
            let stores = &mut *guard;
            for at in stores.allowed.values_mut().chain(stores.refused.values_mut()) {
                *at = at.checked_sub(stale).unwrap();
            }
            for t in stores.live.values() {
                t.allowed_at.fetch_sub(stale, Ordering::SeqCst);
            }
        };
        let token = issuer.token().issuer(&format!("{base}/realms/team")).sign();
        let asked_times = || asked.load(Ordering::SeqCst);
        assert!(authenticated(&token));
        assert!(authenticated(&token), "from the cache");
        assert_eq!(asked_times(), 1);

        allow.store(false, Ordering::SeqCst);
        assert!(authenticated(&token), "the rule's answer is kept");
        assert_eq!(asked_times(), 1);
        age();
        assert!(
            !authenticated(&token),
            "the cached token is refused with its tenant"
        );
        assert_eq!(asked_times(), 2, "asked again once its answer was stale");
        let another = issuer.token().issuer(&format!("{base}/realms/team")).sign();
        assert!(!authenticated(&another));
        assert_eq!(asked_times(), 2, "the refusal is kept");

        allow.store(true, Ordering::SeqCst);
        age();
        assert!(authenticated(&token), "allowed again");
        assert!(authenticated(&another));
        assert!(authenticated(&token));
        assert_eq!(asked_times(), 3);

        // A slow rule: one request asks it, the others take its last
        // answer meanwhile rather than ask too.
        slow.store(true, Ordering::SeqCst);
        age();
        std::thread::scope(|scope| {
            let asking = scope.spawn(|| authenticated(&token));
            entered_rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert!(authenticated(&another), "the last answer stands");
            assert!(authenticated(&token));
            assert_eq!(asked_times(), 4, "asked by one request only");
            assert!(!asking.is_finished(), "the others did not wait for it");
            release.send(()).unwrap();
            assert!(asking.join().unwrap());
        });
        slow.store(false, Ordering::SeqCst);
        assert!(authenticated(&token));
        assert_eq!(asked_times(), 4, "its answer is kept");
    }

    #[test]
    fn an_accepted_token_is_copied_to_the_threads_front_and_a_refused_one_leaves_it() {
        use palisade_core::authn::OwnedRequest;
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let jwt = JwtAuthenticator::builder()
            .provider(
                Provider::builder(issuer.issuer())
                    .audience("api")
                    .leeway(Duration::ZERO)
                    .jwks_inline(issuer.jwks().to_string())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let owner = jwt.0.front_owner;
        let in_front = |token: &str| with_front(|f| f.find(owner, token.as_bytes()).is_some()) == Some(true);
        let authenticated = |token: &str| {
            let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
            matches!(
                jwt.authenticate(&req),
                Check::Ready(AuthOutcome::Authenticated(_))
            )
        };
        let token = issuer.token().expires_in(2).sign();
        // Verified, a first cache hit, a second: copied.
        for copied in [false, false, true] {
            assert!(authenticated(&token));
            assert_eq!(in_front(&token), copied);
        }
        assert!(authenticated(&token), "served from the copy");
        std::thread::sleep(Duration::from_millis(2100));
        assert!(!authenticated(&token), "expired, in the front as in the cache");
        assert!(!in_front(&token), "a refused copy is not kept");
        // An expired token is never copied, however often it is sent.
        for _ in 0..3 {
            assert!(!authenticated(&token));
        }
        assert!(!in_front(&token));
        // The copies hold no strong reference to their authenticator's
        // life: once it is dropped, they are the first to go.
        let alive = Arc::downgrade(&jwt.0.alive);
        drop(jwt);
        assert_eq!(alive.strong_count(), 0);
    }

    /// A provider's roles claim and its own check apply to a signed token
    /// as to claims: the roles are realm roles wherever read, and a refusal
    /// is a 401 in the check's words, counted under its own reason, each
    /// time the token comes (a refused token is never kept as accepted).
    #[test]
    fn a_signed_tokens_roles_come_from_the_roles_claim_and_its_claims_meet_the_check() {
        use palisade_core::authn::OwnedRequest;
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("api")
            .start()
            .unwrap();
        let jwt = JwtAuthenticator::builder()
            .provider(
                Provider::builder(issuer.issuer())
                    .audience("api")
                    .jwks_inline(issuer.jwks().to_string())
                    .roles_claim("groups")
                    .check_claims(|t| match t.claims.get("email_verified") {
                        Some(Value::Bool(true)) => Ok(()),
                        _ => Err("the e-mail address is not verified"),
                    })
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let outcome = |token: &str| {
            let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
            match jwt.authenticate(&req) {
                Check::Ready(outcome) => outcome,
                Check::Pending(_) => panic!("inline keys wait for nothing"),
            }
        };
        let verified = issuer
            .token()
            .claim("groups", serde_json::json!(["admin"]))
            .claim("email_verified", Value::Bool(true))
            .sign();
        for _ in 0..2 {
            let AuthOutcome::Authenticated(a) = outcome(&verified) else {
                panic!("a token that meets the check is accepted");
            };
            assert!(a.identity.has_realm_role("admin"));
            assert_eq!(
                a.identity.claims().unwrap()["realm_access"]["roles"],
                serde_json::json!(["admin"])
            );
        }
        let unverified = issuer
            .token()
            .claim("groups", serde_json::json!(["admin"]))
            .sign();
        for _ in 0..2 {
            let AuthOutcome::Rejected(r) = outcome(&unverified) else {
                panic!("a token the check refuses is refused");
            };
            assert_eq!(r.status(), 401);
            assert_eq!(r.reason(), "claims_check");
            assert!(
                r.challenges()[0].contains(r#"error_description="the e-mail address is not verified""#),
                "{:?}",
                r.challenges()
            );
        }
    }

    /// A Cognito ID token, whose `aud` is the client's id as an API's
    /// audience would be written, is not taken for an access token: its
    /// `token_use` says what it is, on the signed path as on the
    /// introspected one.
    #[test]
    fn a_cognito_id_token_is_not_an_access_token() {
        use palisade_core::authn::OwnedRequest;
        let issuer = palisade_testkit::TestIssuer::builder()
            .default_audience("client-1")
            .start()
            .unwrap();
        let jwt = JwtAuthenticator::builder()
            .provider(
                Provider::builder(issuer.issuer())
                    .audience("client-1")
                    .jwks_inline(issuer.jwks().to_string())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let outcome = |token_use: &str| {
            let token = issuer.token().claim("token_use", Value::from(token_use)).sign();
            let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
            match jwt.authenticate(&req) {
                Check::Ready(AuthOutcome::Rejected(r)) => Err(r.reason()),
                Check::Ready(AuthOutcome::Authenticated(_)) => Ok(()),
                _ => panic!("decided at once"),
            }
        };
        assert_eq!(outcome("access"), Ok(()));
        assert_eq!(outcome("id"), Err("wrong_type"));
        assert_eq!(outcome("ID"), Err("wrong_type"));
    }

    /// A JWK naming an `issuer` keeps its key to that issuer's tokens, as
    /// Microsoft's libraries read Entra's key sets: `{tenantid}` for every
    /// tenant's, a tenant's issuer for its own; a v1 token to a key of its
    /// tenant's v2 issuer. A `tid` that is no GUID names no tenant.
    #[test]
    fn a_jwks_issuer_keeps_its_key_to_that_issuers_tokens() {
        use serde_json::json;
        let mut key = crate::jwks::hmac_key(b"unused", None);
        let claims = |v: Value| v.as_object().cloned().unwrap();
        let v2 = |tid: &str| format!("https://login.microsoftonline.com/{tid}/v2.0");
        let v1 = |tid: &str| format!("https://sts.windows.net/{tid}/");
        let consumers = "9188040d-6c67-4c5b-b112-36a304b66dad";
        let acme = "c1a2b3c4-0000-4000-8000-00000000ac4e";
        let token = |iss: &str, tid: Option<&str>| match tid {
            Some(t) => claims(json!({"iss": iss, "tid": t})),
            None => claims(json!({"iss": iss})),
        };
        let refused = Err(JwtError::KeyNotForIssuer);
        // A key for every tenant.
        key.issuer = Some(v2("{tenantid}"));
        assert_eq!(check_key_issuer(&key, &token(&v2(acme), Some(acme))), Ok(()));
        assert_eq!(check_key_issuer(&key, &token(&v1(acme), Some(acme))), Ok(()));
        for (what, claims) in [
            ("no tid", token(&v2(acme), None)),
            ("another tenant's tid", token(&v2(acme), Some(consumers))),
            ("an empty tid", token(&v2(acme), Some(""))),
            ("a tid that is no GUID", token(&v2("x"), Some("x"))),
            (
                "another host",
                token(&format!("https://evil.example/{acme}/v2.0"), Some(acme)),
            ),
        ] {
            assert_eq!(check_key_issuer(&key, &claims), refused, "{what}");
        }
        // A key only the consumer accounts' tenant signs with.
        key.issuer = Some(v2(consumers));
        assert_eq!(
            check_key_issuer(&key, &token(&v2(consumers), Some(consumers))),
            Ok(())
        );
        assert_eq!(
            check_key_issuer(&key, &token(&v1(consumers), Some(consumers))),
            Ok(())
        );
        for (what, claims) in [
            ("another tenant's token", token(&v2(acme), Some(acme))),
            (
                "another tenant's claiming the consumer tenant",
                token(&v2(acme), Some(consumers)),
            ),
            // Segments of every Entra issuer.
            ("tid v2.0", token(&v2(acme), Some("v2.0"))),
            ("tid https:", token(&v2(acme), Some("https:"))),
            (
                "tid the host",
                token(&v2(acme), Some("login.microsoftonline.com")),
            ),
            ("a v1 token of another tenant", token(&v1(acme), Some(consumers))),
        ] {
            assert_eq!(check_key_issuer(&key, &claims), refused, "{what}");
        }
        // Another issuer's key (no tenants).
        key.issuer = Some("https://idp.example/".into());
        assert_eq!(
            check_key_issuer(&key, &token("https://idp.example/", None)),
            Ok(())
        );
        assert_eq!(
            check_key_issuer(&key, &token("https://other.example/", None)),
            refused
        );
        // A key that names none signs for its set's issuers, as before.
        key.issuer = None;
        assert_eq!(
            check_key_issuer(&key, &token("https://other.example/", None)),
            Ok(())
        );
        assert!(is_guid(acme) && is_guid(consumers) && !is_guid("v2.0"));
    }

    /// The check runs where tokens are verified: an access token, and a
    /// JWS the application verifies (a sign-in's ID token), refused with
    /// the key of another issuer, taken with their own; a key set whose
    /// `issuer` member is not text loses that key.
    #[test]
    fn a_key_kept_to_another_issuer_verifies_none_of_this_ones_tokens() {
        // A realm named as an Entra tenant is, its issuer `…/realms/TENANT`.
        const TENANT: &str = "c1a2b3c4-0000-4000-8000-00000000ac4e";
        let issuer = palisade_testkit::TestIssuer::builder()
            .realm(TENANT)
            .default_audience("api")
            .start()
            .unwrap();
        let keys_for = |kept_to: Value| {
            let mut keys = issuer.jwks();
            for key in keys["keys"].as_array_mut().unwrap() {
                key.as_object_mut()
                    .unwrap()
                    .insert("issuer".into(), kept_to.clone());
            }
            keys.to_string()
        };
        let token = issuer
            .token()
            .subject("alice")
            .claim("tid", serde_json::json!(TENANT))
            .sign();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let realms = format!("{}/realms", issuer.base_url());
        for (kept_to, accepted) in [
            (Value::from(issuer.issuer()), true),
            (Value::from(format!("{realms}/{{tenantid}}")), true),
            (
                Value::from(format!("{realms}/9188040d-6c67-4c5b-b112-36a304b66dad")),
                false,
            ),
            (
                Value::from("https://login.microsoftonline.com/{tenantid}/v2.0"),
                false,
            ),
            (
                Value::from(format!("https://other.example/realms/{TENANT}")),
                false,
            ),
        ] {
            let jwt = for_api(&issuer, |p| p.jwks_inline(keys_for(kept_to.clone())));
            assert_eq!(accepts(&jwt, &token), accepted, "{kept_to}");
            let verified = rt.block_on(jwt.verify_jws(issuer.issuer(), &token));
            assert_eq!(verified.is_ok(), accepted, "{kept_to}: {verified:?}");
            if !accepted {
                assert_eq!(verified, Err(JwtError::KeyNotForIssuer), "{kept_to}");
            }
        }
        let unreadable = JwtAuthenticator::builder()
            .provider(
                Provider::builder(issuer.issuer())
                    .audience("api")
                    .jwks_inline(keys_for(serde_json::json!(["not", "text"])))
                    .build()
                    .unwrap(),
            )
            .build();
        assert!(
            matches!(&unreadable, Err(e) if e.to_string().contains("no usable signature key")),
            "{:?}",
            unreadable.err()
        );
    }
}
