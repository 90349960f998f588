//! The relying party: [`SignIn`], an [`Authenticator`] that reads session
//! cookies, sends browsers to sign in, and answers its own endpoints.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_core::adapter::Reply;
use palisade_core::authn::{AuthOutcome, Authenticated, Authenticator, RequestHead, SingleFlight};
use palisade_core::syntax::html_escape;
use palisade_core::{Check, Rejection};
use palisade_jwt::{FetchSettings, JwtAuthenticator, Provider};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::LOG_TARGET;
use crate::config::{ClientAuth, Config, SecretMethod, SignInBuilder, SignInError, check_path};
use crate::cookie::{CookieKey, CookieSealer, Opened, RawCookie, SealError};
use crate::provider::{Issuer, Metadata, TokenError, form_encode, param, param_count};
use crate::session::{
    Cache, Live, Payload, Session, Successors, at, new_store_key, now, now_ms, now_us, open_stored,
    open_successor, refresh_claim, seal_stored, seal_successor, successor_key, unverified_claims,
};
use crate::store::{MemoryStore, Revocation, SessionRef, SessionStore};
use palisade_core::reload::Registry;

/// How long a refreshed session stays in the store for the other replicas
/// (requests that still carry the cookie it replaces).
const SUCCESSOR_TTL: Duration = Duration::from_secs(300);
/// The longest a request waits for a refresh another replica makes.
const MAX_SUCCESSOR_WAIT: Duration = Duration::from_secs(60);
/// Beyond three issuer timeouts, how long a replica's claim to refresh a
/// session lasts ([`SignIn::claim_lease`]).
const CLAIM_MARGIN: Duration = Duration::from_secs(10);
/// The most successors one look follows (a cookie several refreshes old).
const MAX_SUCCESSOR_STEPS: usize = 8;
/// The longest pause between two looks for a successor another replica is
/// making.
const SUCCESSOR_POLL: Duration = Duration::from_millis(200);

/// How long a sign-in may take, from the redirect to the callback.
const LOGIN_STATE_TTL: u64 = 600;
/// The oldest a back-channel logout token may be (its `iat`, seconds):
/// well under [`LOGOUT_JTI_TTL`], so that no token outlives the memory of
/// its `jti` (Back-Channel Logout 1.0, 2.6, lets an RP refuse old ones).
const LOGOUT_TOKEN_MAX_AGE: u64 = 600;
/// How long a back-channel logout token's `jti` is remembered (seconds).
const LOGOUT_JTI_TTL: u64 = 3600;
/// How many sign-ins one browser may have under way at once (tabs opened
/// without a session), each with its own login-state cookie; one more
/// removes the oldest's.
const MAX_LOGINS: usize = 4;
/// The longest page to return to after sign-in that its login-state
/// cookie keeps (a longer one returns to `/`): any site can send a browser
/// to `loginPath?return_to=…` or a long URL, and [`MAX_LOGINS`] cookies of
/// about 4 KiB each would make every request of the site too large for a
/// proxy's 8 KiB header limit (nginx's default) for ten minutes: at this
/// length the four take about 3 KiB, leaving the rest of the line to the
/// session cookie.
const MAX_RETURN_TO: usize = 256;
/// How many leading characters of `state` name its login-state cookie
/// (`NAME_login_<tag>`): 72 random bits, so tabs do not collide.
const STATE_TAG_LEN: usize = 12;
/// The most sessions kept opened in memory (each seen again is compared in
/// place rather than opened).
const SESSION_CACHE: usize = 10_000;
/// The largest back-channel logout request body.
const BACKCHANNEL_BODY_LIMIT: usize = 64 * 1024;
/// The event a back-channel logout token must carry.
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What the browser carries between the redirect to the issuer and the
/// callback, sealed in a short-lived cookie.
#[derive(Serialize, Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    redirect_uri: String,
    /// When the sign-in started, in microseconds since the epoch (the
    /// oldest of a browser's sign-ins is told apart).
    created_us: u64,
}

struct Inner {
    config: Config,
    /// Shared by the relying parties that call the issuer alike
    /// ([`shared_issuer`]): a hot reload does not load its discovery
    /// document again.
    issuer: Arc<Issuer>,
    /// ID and logout tokens: the issuer's keys, `aud` = the client id.
    verifier: JwtAuthenticator,
    /// Session cookies for requests over TLS (`Secure`) and over plain HTTP
    /// (`Secure` too when [`secure_only`](Self::secure_only)).
    sessions: [CookieSealer; 2],
    /// The cookie name has a `__Host-` or `__Secure-` prefix, or the
    /// external origin is `https`: every cookie is `Secure`, whatever the
    /// request came over.
    secure_only: bool,
    /// The session keys, which also seal the login-state cookies.
    keys: Vec<CookieKey>,
    /// Given no keys, the random one in `keys`, held (never read) so that
    /// a relying party a reload builds with the same store finds it
    /// ([`ephemeral_key`]).
    _keyless: Option<Arc<CookieKey>>,
    /// `NAME_login_`: the login-state cookies' names begin so.
    state_prefix: String,
    store: Arc<dyn SessionStore>,
    cache: Cache,
    /// Shared with every relying party of this client at this issuer
    /// keeping its sessions in this store ([`shared_refreshes`]).
    refreshes: Arc<Refreshes>,
    /// How many sessions each subject has had ended one by one lately.
    endings: Endings,
    rng: SystemRandom,
    /// What this relying party's issuer fails to do (its token endpoint
    /// unreachable, its ID tokens refused) is said once a minute.
    issuer_down: palisade_core::logging::Sparse,
    /// The token endpoint refusing this client itself (a secret rotated
    /// on one side only): said once a minute, apart from the rest.
    client_refused: palisade_core::logging::Sparse,
    /// A session store that fails writes: said once a minute
    /// ([`SignIn::store_failed`]).
    store_down: palisade_core::logging::Sparse,
    /// A logout the store cannot record: said once a minute, apart.
    logout_unrecorded: palisade_core::logging::Sparse,
    /// A refresh token the issuer cannot revoke at a logout: said once a
    /// minute, apart from the refreshes' outage.
    revocation_failing: palisade_core::logging::Sparse,
    /// The refresh tokens a logout here revoked at the issuer (or tried
    /// to): revoked once, however often a saved copy of a cookie logs out
    /// again (while the store cannot say it ended, every such logout would
    /// call the issuer).
    revoked_tokens: Noted,
    /// The stored sessions' cookies whose data the store could not give
    /// back lately: a request carrying one is asked to come back
    /// ([`UNREADABLE_FOR`]) rather than be sent to sign in.
    unreadable: Noted,
}

/// How long a stored session that could not be read counts as unreadable
/// for the requests that carry it.
const UNREADABLE_FOR: Duration = Duration::from_secs(5);

/// Secrets (refresh tokens, cookie values) this process noted, by their
/// SHA-256, with when; forgotten all at once at [`Noted::MAX`].
#[derive(Default)]
struct Noted(std::sync::Mutex<std::collections::HashMap<[u8; 32], std::time::Instant>>);

impl Noted {
    /// The most secrets noted.
    const MAX: usize = 10_000;

    /// Notes `secret` now; whether it was not noted before.
    fn note(&self, secret: &str) -> bool {
        let mut noted = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if noted.len() >= Self::MAX {
            noted.clear();
        }
        noted
            .insert(sha256_of(secret), std::time::Instant::now())
            .is_none()
    }

    /// Whether `secret` was noted within `within`.
    fn noted_within(&self, secret: &str, within: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&sha256_of(secret))
            .is_some_and(|at| at.elapsed() < within)
    }
}

/// Browser sign-in: an OpenID Connect relying party, as an
/// [`Authenticator`] of the guard. See the [crate] documentation.
///
/// Cloning is an `Arc` clone. `Debug` prints no secret.
#[derive(Clone)]
pub struct SignIn(Arc<Inner>);

impl fmt::Debug for SignIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignIn")
            .field(
                "issuer",
                &palisade_core::syntax::url_without_credentials(&self.0.config.issuer),
            )
            .field("client_id", &self.0.config.client_id)
            .field(
                "confidential",
                &!matches!(self.0.config.client_auth, ClientAuth::None),
            )
            .field("callback_path", &self.0.config.callback_path)
            .finish_non_exhaustive()
    }
}

impl SignIn {
    /// Starts building the relying party of `client_id` at `issuer`.
    pub fn builder(issuer: impl Into<String>, client_id: impl Into<String>) -> SignInBuilder {
        SignInBuilder::new(issuer.into(), client_id.into())
    }

    /// `scheme://host` browsers reach this service at: the configured
    /// external origin, or the request's own.
    fn origin(&self, req: &dyn RequestHead) -> Option<String> {
        match &self.0.config.external_origin {
            Some(o) => Some(o.clone()),
            None => origin(req),
        }
    }

    /// Whether the cookies of this request's answer get `Secure`: over TLS,
    /// and always for a `__Host-`/`__Secure-` name or an `https` external
    /// origin.
    fn secure(&self, req: &dyn RequestHead) -> bool {
        self.0.secure_only || is_tls(req)
    }

    fn sealer(&self, secure: bool) -> &CookieSealer {
        &self.0.sessions[usize::from(!secure)]
    }

    /// The sealer of the login-state cookie of the sign-in whose `state`
    /// is this (its first characters name the cookie), or `None` when
    /// `state` cannot be one of ours.
    fn state_sealer(&self, secure: bool, state: &str) -> Option<CookieSealer> {
        let tag = state.get(..STATE_TAG_LEN)?;
        if !tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return None;
        }
        state_sealer(&self.0.state_prefix, tag, &self.0.keys, secure).ok()
    }

    /// The `Set-Cookie` removals that keep the browser's sign-ins under
    /// way below [`MAX_LOGINS`] when one more starts: the oldest go, and
    /// any that no longer opens.
    fn prune_logins(&self, req: &dyn RequestHead, secure: bool) -> Vec<String> {
        let names = cookie_names(req, &self.0.state_prefix);
        if names.len() < MAX_LOGINS {
            return Vec::new();
        }
        let mut under_way = Vec::new();
        let mut removals = Vec::new();
        for name in names {
            let Ok(sealer) = state_sealer(name, "", &self.0.keys, secure) else {
                continue;
            };
            let created = match sealer.open(req) {
                Opened::Valid { plaintext, .. } => serde_json::from_slice::<LoginState>(&plaintext)
                    .ok()
                    .map(|s| s.created_us),
                _ => None,
            };
            match created {
                Some(created) => under_way.push((created, sealer)),
                None => removals.extend(sealer.clear(1)),
            }
        }
        under_way.sort_by_key(|(created, _)| std::cmp::Reverse(*created));
        for (_, sealer) in under_way.iter().skip(MAX_LOGINS - 1) {
            removals.extend(sealer.clear(1));
        }
        removals
    }

    /// `bytes` random bytes, base64url. `None` when the system generator
    /// fails (it does not on supported platforms; said at error level): a
    /// failure leaves zeros, and a state, nonce or session id of them would
    /// be shared by every sign-in, so the caller refuses instead.
    fn random(&self, bytes: usize) -> Option<String> {
        let mut buf = vec![0u8; bytes];
        if self.0.rng.fill(&mut buf).is_err() {
            tracing::error!(target: LOG_TARGET, "the system random generator failed");
            return None;
        }
        Some(URL_SAFE_NO_PAD.encode(buf))
    }

    /// A `Cookie` request header value holding a session for a user signed
    /// in with these tokens: for tests of an application's signed-in pages
    /// without a browser. The access token's claims (a JWT of this issuer)
    /// give the identity, **unverified**: whoever calls this makes any
    /// user, so it exists only with the feature `test-util` (which the
    /// facade's `test-util` turns on), never in a build of a service that
    /// does not ask for it. The session has no refresh token, so with the
    /// in-memory store it is for this relying party (or one sharing its
    /// store) made before it: another's store, made later, does not know
    /// whether it ended ([`SessionStore::endings_since`]).
    ///
    /// # Errors
    /// [`SignInError::Config`] when the session does not fit in cookies.
    #[cfg(feature = "test-util")]
    pub fn session_cookie_for(
        &self,
        subject: &str,
        access_token: &str,
        expires_in: Duration,
    ) -> Result<String, SignInError> {
        let t = now();
        let id = self
            .random(16)
            .ok_or_else(|| SignInError::Config("no session id: the system random generator failed".into()))?;
        let session = Session {
            v: 1,
            id,
            sub: subject.to_owned(),
            sid: None,
            created_ms: now_ms(),
            seen: t,
            at: access_token.to_owned(),
            at_exp: t + expires_in.as_secs(),
            at_got: t,
            rt: None,
            it: None,
            generation: 0,
            store_key: None,
        };
        let plaintext =
            serde_json::to_vec(&Payload::Inline(session)).map_err(|e| SignInError::Config(e.to_string()))?;
        let cookies = self
            .sealer(false)
            .seal(&plaintext, None, 0)
            .map_err(|e| SignInError::Config(e.to_string()))?;
        Ok(cookies
            .iter()
            .filter_map(|c| c.split(';').next())
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// The in-memory store of the client `client_id` at `issuer`, shared by
/// every [`SignIn`] of the process for that client. A hot reload builds a
/// new `SignIn`: the sessions ended before it, and the logout tokens and
/// codes already used, must stay so. It lives while one of them does.
fn shared_memory_store(issuer: &str, client_id: &str) -> Arc<dyn SessionStore> {
    static LIVE: Registry<(String, String), MemoryStore> = Registry::new();
    LIVE.get_or_make((issuer.to_owned(), client_id.to_owned()), || {
        Ok::<_, std::convert::Infallible>(Arc::new(MemoryStore::new()))
    })
    .unwrap_or_else(|never| match never {})
}

/// What the relying parties of one client at one issuer, keeping their
/// sessions in one store, know of the sessions they refresh: each
/// session's latest refresh, for requests that still carry the cookie it
/// replaced, and the refreshes under way, which other requests of the
/// session join. The issuer spends a refresh token when it answers
/// (Keycloak's "revoke refresh token" ends the session when a spent one
/// comes again), so a hot reload must not lose them, whatever else it
/// changes (a secret, a scope, a cookie's settings).
struct Refreshes {
    successors: Successors,
    refreshing: SingleFlight<String, Result<Arc<Live>, Unusable>>,
}

/// The [`Refreshes`] of the client `client_id` at `issuer` keeping its
/// sessions in `store`: one for the process while a relying party uses it.
fn shared_refreshes(issuer: &str, client_id: &str, store: &Arc<dyn SessionStore>) -> Arc<Refreshes> {
    static LIVE: Registry<(String, String, usize), Refreshes> = Registry::new();
    // The store by its address, as in `ephemeral_key`.
    let store = Arc::as_ptr(store).cast::<()>() as usize;
    LIVE.get_or_make((issuer.to_owned(), client_id.to_owned(), store), || {
        Ok::<_, std::convert::Infallible>(Arc::new(Refreshes {
            successors: Successors::new(),
            refreshing: SingleFlight::new(),
        }))
    })
    .unwrap_or_else(|never| match never {})
}

/// Whether `e`, refusing an ID token, says that the issuer's keys cannot
/// be had now rather than that the token is bad: no key set at all (the
/// issuer's JWKS cannot be fetched), or none of the token's `kid` in the
/// set fetched. An ID token comes from the token endpoint itself, never
/// from the browser, so a key it names that the set lacks is the issuer's
/// rotation racing the fetch of its keys (the verifier fetches at most
/// once per `min_refresh_interval`), not a forgery: a refresh then keeps
/// the session rather than end it, and a sign-in is the issuer's failure.
fn keys_not_had(e: &palisade_jwt::JwtError) -> bool {
    matches!(
        e,
        palisade_jwt::JwtError::KeysUnavailable | palisade_jwt::JwtError::UnknownKey
    )
}

/// The `typ` of a compact JWS's header, when it has one (the token's
/// signature checked before).
fn jws_typ(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let json = URL_SAFE_NO_PAD.decode(header).ok()?;
    let header: Value = serde_json::from_slice(&json).ok()?;
    header.get("typ")?.as_str().map(str::to_owned)
}

/// Whether a JWS `typ` may be a logout token's: `logout+jwt` (with or
/// without `application/`, RFC 7515 4.1.9), or the generic `JWT`.
fn is_logout_typ(typ: &str) -> bool {
    let typ = typ.to_ascii_lowercase();
    let typ = typ.strip_prefix("application/").unwrap_or(&typ);
    matches!(typ, "logout+jwt" | "jwt")
}

/// Why a back-channel logout was refused (answered `400` either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogoutRefused {
    /// The token's fault (not valid, replayed, not a logout token).
    Token(&'static str),
    /// This side's: the token could not be checked or the logout recorded
    /// now (the issuer's keys, the store). Lost unless the issuer sends it
    /// again, so said aloud.
    Here(&'static str),
}

/// A claim's NumericDate in whole seconds
/// ([`numeric_date`](palisade_core::syntax::numeric_date)).
fn numeric_date(value: &Value) -> Option<u64> {
    value.as_number().and_then(palisade_core::syntax::numeric_date)
}

/// How many sessions of one subject are ended one by one (each a
/// revocation the store keeps until the session's absolute timeout)
/// within an absolute timeout, by a logout here, a back-channel logout
/// naming its `sid` and `sub` or a refresh the issuer refuses, before each
/// further one ends every session of the subject begun before it (one
/// revocation in place of many). Without it, a user who signs in and out
/// in a loop fills an in-memory store's single-session revocations (nine
/// tenths of 100,000 by default; then every session's ending falls back to
/// its user's, in the tenth kept for those), and grows every replica's
/// mirror of a Redis store's. A thousand: far more than a person signs out
/// in a working day (until then a logout ends its own session only, as
/// the example services' contract says), a hundredth of the memory
/// store's room.
const ENDINGS_PER_SUBJECT: u32 = 1000;

/// The most subjects whose endings are counted at once: past it, the
/// counts whose window has passed go, then all (a subject forgotten
/// counts from zero again).
const COUNTED_SUBJECTS: usize = 10_000;

/// The sessions ended one by one, per subject: how many, and when the
/// count's window ends (Unix seconds).
struct Endings {
    counts: Mutex<HashMap<String, (u32, u64)>>,
    /// [`ENDINGS_PER_SUBJECT`], but in tests.
    budget: std::sync::atomic::AtomicU32,
}

impl Default for Endings {
    fn default() -> Self {
        Self {
            counts: Mutex::default(),
            budget: std::sync::atomic::AtomicU32::new(ENDINGS_PER_SUBJECT),
        }
    }
}

impl Endings {
    /// Counts one more ending of `subject`'s sessions at `now`, in a window
    /// of `window` seconds from its first; whether it is past
    /// [`ENDINGS_PER_SUBJECT`].
    fn one_more(&self, subject: &str, now: u64, window: u64) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= COUNTED_SUBJECTS && !counts.contains_key(subject) {
            counts.retain(|_, (_, end)| *end > now);
            if counts.len() >= COUNTED_SUBJECTS {
                counts.clear();
            }
        }
        let (count, end) = counts
            .entry(subject.to_owned())
            .or_insert((0, now.saturating_add(window)));
        if *end <= now {
            (*count, *end) = (0, now.saturating_add(window));
        }
        *count = count.saturating_add(1);
        *count > self.budget.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The issuer as `config` calls it (its URL, timeout and trust anchors),
/// shared by every [`SignIn`] of the process that calls it alike while one
/// does: a hot reload builds a new `SignIn` while the old one lives, so the
/// discovery document already loaded carries over, even while the issuer
/// is down.
fn shared_issuer(config: &Config) -> Result<Arc<Issuer>, SignInError> {
    static LIVE: Registry<(String, Duration, Option<Vec<u8>>), Issuer> = Registry::new();
    let key = (config.issuer.clone(), config.timeout, config.ca_pem.clone());
    LIVE.get_or_make(key, || Issuer::start(config).map(Arc::new))
        .map_err(SignInError::Config)
}

/// The random session key of the client `client_id` at `issuer` keeping
/// its sessions in `store`, for a relying party given no keys: one for the
/// process, while a relying party uses it, so that a hot reload (a new
/// [`SignIn`] with the same store) still opens the sessions and sign-ins
/// sealed before it. It never outlives the store: a key that did would
/// open again a session the store's end of it went with (sign-in turned
/// off and on again by two reloads, say).
fn ephemeral_key(
    issuer: &str,
    client_id: &str,
    store: &Arc<dyn SessionStore>,
) -> Result<Arc<CookieKey>, SignInError> {
    static LIVE: Registry<(String, String, usize), CookieKey> = Registry::new();
    // The store by its address: a key alive means a relying party holding
    // it and the store alive, so no other store has that address.
    let store = Arc::as_ptr(store).cast::<()>() as usize;
    LIVE.get_or_make((issuer.to_owned(), client_id.to_owned(), store), || {
        palisade_core::config_warning!(target: LOG_TARGET, "no session keys configured: a random key was made; sessions end with this process and replicas cannot share them");
        Ok(Arc::new(CookieKey::generate("ephemeral")?))
    })
}

impl SignInBuilder {
    /// Builds the relying party: starts loading the issuer's discovery
    /// document and keys in the background (requests before they arrive
    /// get the 401 rather than a redirect).
    ///
    /// # Errors
    /// A [`SignInError`] naming the setting that cannot work.
    pub fn build(self) -> Result<SignIn, SignInError> {
        let Checked {
            config,
            keys,
            sessions,
            secure_only,
            state_prefix,
            provider,
            store,
            keyless,
        } = self.checked()?;
        let verifier = JwtAuthenticator::builder()
            .realm(config.client_id.clone())
            .provider(provider)
            .build()?;
        let issuer = shared_issuer(&config)?;
        let refreshes = shared_refreshes(&config.issuer, &config.client_id, &store);
        Ok(SignIn(Arc::new(Inner {
            config,
            issuer,
            verifier,
            sessions,
            secure_only,
            keys,
            _keyless: keyless,
            state_prefix,
            store,
            cache: Cache::new(SESSION_CACHE),
            refreshes,
            endings: Endings::default(),
            rng: SystemRandom::new(),
            issuer_down: palisade_core::logging::Sparse::per_minute(),
            client_refused: palisade_core::logging::Sparse::per_minute(),
            store_down: palisade_core::logging::Sparse::per_minute(),
            logout_unrecorded: palisade_core::logging::Sparse::per_minute(),
            revocation_failing: palisade_core::logging::Sparse::per_minute(),
            revoked_tokens: Noted::default(),
            unreadable: Noted::default(),
        })))
    }

    /// Every check of [`build`](Self::build), starting nothing: no
    /// discovery, no key fetching.
    pub(crate) fn checked(self) -> Result<Checked, SignInError> {
        let mut config = self.config;
        if !palisade_core::syntax::is_http_url(&config.issuer) {
            return Err(SignInError::Config(format!(
                "the issuer `{}` is not an http(s) URL",
                palisade_core::syntax::url_without_credentials(&config.issuer)
            )));
        }
        if config.client_id.is_empty() {
            return Err(SignInError::Config("the client id is empty".into()));
        }
        if let Some(refusal) = config
            .claim_names
            .roles
            .as_deref()
            .and_then(palisade_core::syntax::roles_claim_refusal)
        {
            return Err(SignInError::Config(format!("rolesClaim {refusal}")));
        }
        let params = config.authorization_params.iter();
        if let Some((_, refusal)) =
            palisade_core::syntax::authorization_params_refusal(params.map(|(n, v)| (n.as_str(), v.as_str())))
        {
            return Err(SignInError::Config(format!(
                "the authorization parameter {refusal}"
            )));
        }
        if let Some(refusal) = config
            .claim_names
            .principal
            .as_deref()
            .and_then(palisade_core::syntax::principal_claim_refusal)
        {
            return Err(SignInError::Config(format!("principalClaim {refusal}")));
        }
        let paths = [
            ("callbackPath", &config.callback_path),
            ("loginPath", &config.login_path),
            ("logoutPath", &config.logout_path),
            ("backchannelLogoutPath", &config.backchannel_path),
        ];
        for (i, (field, path)) in paths.iter().enumerate() {
            check_path(field, path)?;
            if paths[..i].iter().any(|(_, p)| p == path) {
                return Err(SignInError::Config(format!(
                    "{field} `{path}` is used for two endpoints"
                )));
            }
        }
        if let Some(path) = &config.session_path {
            check_path("sessionPath", path)?;
            if paths.iter().any(|(_, p)| *p == path) {
                return Err(SignInError::Config(format!(
                    "sessionPath `{path}` is used for two endpoints"
                )));
            }
        }
        if config.timeout.is_zero() {
            return Err(SignInError::Config(
                "the timeout of calls to the issuer is zero: every call would fail".into(),
            ));
        }
        // Added to the time of day on every request: bounded, as a policy
        // file's durations are, so the sums cannot overflow.
        for (what, d) in [
            ("the idle timeout", config.idle_timeout),
            ("the absolute timeout", config.absolute_timeout),
            ("refresh_before", config.refresh_before),
            ("the timeout of calls to the issuer", config.timeout),
        ] {
            if d > palisade_core::syntax::LONGEST_DURATION {
                return Err(SignInError::Config(format!("{what} is longer than ten years")));
            }
        }
        if !palisade_core::syntax::is_landing_uri(&config.post_logout_redirect) {
            return Err(SignInError::Config(format!(
                "postLogoutRedirectUri `{}` is neither a path of this service nor an absolute http(s) URL",
                palisade_core::syntax::url_without_credentials(&config.post_logout_redirect)
            )));
        }
        // As a browser writes them in `Origin`.
        if let Some(o) = &mut config.external_origin {
            *o = browser_origin("externalOrigin", o)?;
        }
        for o in &mut config.trusted_origins {
            *o = browser_origin("trusted origin", o)?;
        }
        if config.idle_timeout > config.absolute_timeout {
            return Err(SignInError::Config(
                "the idle timeout is longer than the absolute timeout".into(),
            ));
        }
        if config.idle_timeout.is_zero() || config.absolute_timeout.is_zero() {
            return Err(SignInError::Config(
                "a session timeout of zero would end every session at once".into(),
            ));
        }
        let mut scopes = self.scopes;
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        config.scope = scopes.join(" ");
        config.client_auth = match (self.secret, self.client_key) {
            (Some(_), Some(_)) => {
                return Err(SignInError::Config(
                    "a client authenticates with a secret or with a key, not both".into(),
                ));
            }
            (None, Some(key)) => ClientAuth::PrivateKeyJwt(Arc::new(key)),
            (None, None) => ClientAuth::None,
            (Some((s, SecretMethod::Basic)), None) => ClientAuth::Basic(s),
            (Some((s, SecretMethod::Post)), None) => ClientAuth::Post(s),
        };
        let store = self
            .store
            .unwrap_or_else(|| shared_memory_store(&config.issuer, &config.client_id));
        let keyless = if self.keys.is_empty() {
            Some(ephemeral_key(&config.issuer, &config.client_id, &store)?)
        } else {
            None
        };
        let keys = match &keyless {
            Some(key) => vec![CookieKey::clone(key)],
            None => self.keys,
        };
        let sealer = |name: &str, secure: bool, chunks: usize| -> Result<CookieSealer, SignInError> {
            Ok(CookieSealer::builder(name, keys.clone())
                .secure(secure)
                .max_chunks(chunks)
                .build()?)
        };
        let state_prefix = format!("{}_login_", config.cookie_name);
        // A `__Host-`/`__Secure-` name (a browser refuses such a cookie
        // without `Secure`) or an `https` external origin: every cookie is
        // `Secure`, the second sealer's too.
        let secure_only = crate::cookie::prefix_requires_secure(&config.cookie_name)
            || config
                .external_origin
                .as_deref()
                .is_some_and(|o| o.starts_with("https://"));
        for secure in [true, secure_only] {
            state_sealer(&state_prefix, &"x".repeat(STATE_TAG_LEN), &keys, secure)?;
        }
        let sessions = [
            sealer(&config.cookie_name, true, 8)?,
            sealer(&config.cookie_name, secure_only, 8)?,
        ];
        let mut fetch = FetchSettings::default();
        fetch.extra_ca_pem.clone_from(&config.ca_pem);
        // Every call to the issuer, its keys' too (`SignInBuilder::timeout`).
        fetch.timeout = config.timeout;
        // ID tokens and logout tokens: a logout token may name only `sid`
        // (Back-Channel Logout 1.0, 2.4), so `sub` is checked here, by
        // `verify_id_token` and `backchannel_logout`; and they are not
        // access tokens, which is what the kind checks here.
        let provider = Provider::builder(config.issuer.clone())
            .audience(config.client_id.clone())
            .dangerous()
            .subject_optional()
            .dangerous()
            .any_token_kind()
            .fetch_settings(fetch)
            .build()?;
        Ok(Checked {
            config,
            keys,
            sessions,
            secure_only,
            state_prefix,
            provider,
            store,
            keyless,
        })
    }
}

/// A [`SignInBuilder`] whose settings all passed their checks: what
/// [`SignInBuilder::build`] starts a relying party with.
pub(crate) struct Checked {
    config: Config,
    keys: Vec<CookieKey>,
    sessions: [CookieSealer; 2],
    /// Every cookie `Secure`, whatever the request came over.
    secure_only: bool,
    state_prefix: String,
    provider: Provider,
    store: Arc<dyn SessionStore>,
    /// The random key of a relying party given none, with the store.
    keyless: Option<Arc<CookieKey>>,
}

/// The page that asks to confirm a logout another site started: a form
/// that posts to `path` from this origin. Not to be framed (a hidden frame
/// could have the button clicked), nor kept. No `form-action` directive:
/// browsers apply it to the redirects after the post too, and the logout
/// redirects to the issuer's `end_session_endpoint` on another origin.
fn confirm_logout(path: &str) -> Reply {
    let path = html_escape(path);
    Reply::new(200)
        .header("cache-control", "no-store")
        .header("x-frame-options", "DENY")
        .header(
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        )
        .with_body(
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Sign out</title></head>\n<body><p>Sign out of this site?</p>\n<form method=\"post\" action=\"{path}\"><button type=\"submit\" id=\"sign-out\">Sign out</button></form></body></html>\n"
            ),
        )
}

/// A sign-in state's single-use mark, let go unless the sign-in completes:
/// when it fails, or when its request goes away before it ends (the
/// future dropped), so that callbacks with codes the issuer refuses leave
/// nothing in the store.
struct StateMark {
    store: Arc<dyn SessionStore>,
    key: Option<String>,
}

impl StateMark {
    /// The sign-in completed: the state stays used.
    fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for StateMark {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let release = self.store.release(&key);
        // On the runtime, past the request's end; without one (never in a
        // server), the mark lasts its time-to-live.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = release.await {
                    tracing::debug!(target: LOG_TARGET, error = %e, "a failed sign-in's state stays marked used until it expires");
                }
            });
        }
    }
}

/// The sealer of the login-state cookie `prefix` + `tag`.
fn state_sealer(
    prefix: &str,
    tag: &str,
    keys: &[CookieKey],
    secure: bool,
) -> Result<CookieSealer, crate::cookie::KeyError> {
    CookieSealer::builder(&format!("{prefix}{tag}"), keys.to_vec())
        .secure(secure)
        .max_chunks(1)
        .build()
}

/// The distinct names of the request's cookies that begin with `prefix`
/// (at most 16: a browser sends no more sign-ins than that).
fn cookie_names<'r>(req: &'r dyn RequestHead, prefix: &str) -> Vec<&'r str> {
    let mut names = Vec::new();
    for (name, _) in crate::cookie::cookie_pairs(req) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if name.starts_with(prefix) && !names.contains(&name) && names.len() < 16 {
            names.push(name);
        }
    }
    names
}

/// Whether the request came over TLS (cookies then get `Secure`).
fn is_tls(req: &dyn RequestHead) -> bool {
    req.connection().is_some_and(|c| c.tls)
}

/// `scheme://host` of the request, when its `Host` is a plain authority.
fn origin(req: &dyn RequestHead) -> Option<String> {
    let host = req.host()?;
    let plain = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    plain.then(|| format!("{}://{host}", if is_tls(req) { "https" } else { "http" }))
}

/// `origin` as a browser writes it in `Origin`; an error naming the setting
/// `what` for a value that is not an http(s) origin.
fn browser_origin(what: &str, origin: &str) -> Result<String, SignInError> {
    if !palisade_core::syntax::is_origin(origin) {
        return Err(SignInError::Config(format!(
            "{what} `{}` is not an http(s) origin (scheme, host and port only)",
            palisade_core::syntax::url_without_credentials(origin)
        )));
    }
    Ok(palisade_core::syntax::origin_key(origin))
}

/// Whether a request is a browser's navigation (a page load, not an API
/// call): a `GET` or `HEAD` with `Sec-Fetch-Mode: navigate`, or without
/// that header accepting HTML and not saying it comes from a script
/// (`X-Requested-With`). Only a navigation is sent to sign in; an API
/// call, and a form's `POST`, get the 401 (a redirect would lose the form),
/// or the 503 of a session that cannot be used now.
/// Neither is the load of a frame or an embedded object (`Sec-Fetch-Dest`
/// other than `document`, as mod_auth_openidc reads it: an issuer's
/// sign-in page refuses to be framed, so the frame would stay blank) nor a
/// speculative prefetch or prerender (`Sec-Purpose`: a page the user has
/// not opened would start a sign-in, taking one of the browser's four
/// login-state slots; a browser does not use a prefetch answered 401).
///
/// ```
/// use palisade_core::authn::OwnedRequest;
/// let page = OwnedRequest::get("/p").header("accept", "text/html");
/// assert!(palisade_signin::is_navigation(&page));
/// assert!(!palisade_signin::is_navigation(&OwnedRequest::get("/api")));
/// let ajax = page.clone().header("x-requested-with", "XMLHttpRequest");
/// assert!(!palisade_signin::is_navigation(&ajax));
/// let frame = OwnedRequest::get("/p").header("sec-fetch-mode", "navigate").header("sec-fetch-dest", "iframe");
/// assert!(!palisade_signin::is_navigation(&frame));
/// let prefetch = OwnedRequest::get("/p").header("sec-fetch-mode", "navigate").header("sec-purpose", "prefetch");
/// assert!(!palisade_signin::is_navigation(&prefetch));
/// ```
#[must_use]
pub fn is_navigation(req: &dyn RequestHead) -> bool {
    if !matches!(req.method(), "GET" | "HEAD") {
        return false;
    }
    if req.header_value("sec-purpose", 0).is_some()
        || req
            .header_str("sec-fetch-dest")
            .is_some_and(|dest| !dest.eq_ignore_ascii_case("document"))
    {
        return false;
    }
    match req.header_str("sec-fetch-mode") {
        Some(mode) => mode.eq_ignore_ascii_case("navigate"),
        // A script's request says so (jQuery's `X-Requested-With`, as
        // Spring Security reads it) even when it asks for HTML.
        None => {
            req.header_str("x-requested-with").is_none()
                && req.header_str("accept").is_some_and(|a| a.contains("text/html"))
        }
    }
}

/// A path of this origin to return to (`/a?b`), or `None` for anything
/// that could leave it (`//evil`, `/\evil`, a scheme, control characters).
/// Characters beyond ASCII (a decoded `return_to=%2Fcaf%C3%A9`) are
/// percent-encoded again, as a browser sends them: a `Location` header
/// holds ASCII only, and the redirect after sign-in would have none.
fn local_target(target: &str) -> Option<Cow<'_, str>> {
    let ok = target.starts_with('/')
        && !target.starts_with("//")
        && !target.starts_with("/\\")
        && !target.bytes().any(|b| b.is_ascii_control() || b == b' ');
    if !ok {
        return None;
    }
    if target.is_ascii() {
        return Some(Cow::Borrowed(target));
    }
    let mut encoded = String::with_capacity(target.len() * 3);
    for &b in target.as_bytes() {
        if b.is_ascii() {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    Some(Cow::Owned(encoded))
}

/// Why a refresh gives a request no tokens of its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unusable {
    /// The session has ended (the issuer refused its refresh token, or
    /// refreshed it with an ID token that is not valid; it timed out).
    Ended,
    /// Not now: its access token has expired and no fresh one can be had
    /// (the issuer does not answer, or the replica refreshing it handed on
    /// nothing in time). The session itself is whole: a request the policy
    /// would refuse for want of a user is answered 503 instead (`SignIn::sign_in`).
    NotNow,
}

/// The SHA-256 of `text`.
fn sha256_of(text: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut hash = [0; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// A session whose refresh brought nothing: its tokens while they last.
fn while_valid(live: Arc<Live>) -> Result<Arc<Live>, Unusable> {
    if live.session.at_exp > now() {
        Ok(live)
    } else {
        Err(Unusable::NotNow)
    }
}

fn problem(status: u16, detail: &'static str) -> Reply {
    let reply = Reply::from(Rejection::bad_request(detail));
    if status == 400 {
        return reply;
    }
    let title = match status {
        403 => "Sign-in refused",
        405 => "Method not allowed",
        _ => "Sign-in unavailable",
    };
    Reply::problem(status, "sign-in", title, detail)
}

/// The 503 of a session whose revocations the store cannot read now.
fn revocations_unknown_reply() -> Reply {
    problem(
        503,
        "sessions cannot be checked now (the session store does not answer); try again",
    )
    .header("retry-after", "5")
}

/// The 503 of a stored session the store could not give back now.
fn unreadable_now_reply() -> Reply {
    problem(
        503,
        "the session cannot be read now (the session store does not answer); try again",
    )
    .header("retry-after", "5")
}

fn with_cookies(mut reply: Reply, cookies: Vec<String>) -> Reply {
    for c in cookies {
        reply = reply.header("set-cookie", c);
    }
    reply
}

/// Constant-time equality of two strings of public length.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

impl SignIn {
    /// The redirect to the issuer that starts a sign-in returning to
    /// `return_to`, with its login-state cookie.
    fn start_sign_in(&self, req: &dyn RequestHead, return_to: &str, clear_session: bool) -> Option<Reply> {
        let metadata = self.0.issuer.metadata()?;
        let origin = self.origin(req)?;
        let c = &self.0.config;
        let secure = self.secure(req);
        let state = LoginState {
            state: self.random(32)?,
            nonce: self.random(32)?,
            verifier: self.random(32)?,
            return_to: if return_to.len() <= MAX_RETURN_TO {
                return_to.to_owned()
            } else {
                tracing::debug!(target: LOG_TARGET, length = return_to.len(), "the page to return to after sign-in is too long to keep: returning to /");
                "/".to_owned()
            },
            redirect_uri: format!("{origin}{}", c.callback_path),
            created_us: now_us(),
        };
        let challenge = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, state.verifier.as_bytes()));
        let sep = if metadata.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let mut location = format!(
            "{}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={challenge}&code_challenge_method=S256",
            metadata.authorization_endpoint,
            form_encode(&c.client_id),
            form_encode(&state.redirect_uri),
            form_encode(&c.scope),
            state.state,
            state.nonce,
        );
        for (name, value) in &c.authorization_params {
            location.push('&');
            location.push_str(&form_encode(name));
            location.push('=');
            location.push_str(&form_encode(value));
        }
        // Each sign-in has its own cookie, so sign-ins started in two tabs
        // both finish.
        let sealer = self.state_sealer(secure, &state.state)?;
        let ttl = Some(Duration::from_secs(LOGIN_STATE_TTL));
        let state_cookie = match sealer.seal(&serde_json::to_vec(&state).ok()?, ttl, 0) {
            Ok(cookie) => cookie,
            // A page too long to keep in the cookie: the user returns to `/`.
            Err(SealError::TooLarge { .. }) if state.return_to != "/" => {
                tracing::debug!(target: LOG_TARGET, length = state.return_to.len(), "the page to return to after sign-in is too long to keep: returning to /");
                let state = LoginState {
                    return_to: "/".into(),
                    ..state
                };
                sealer.seal(&serde_json::to_vec(&state).ok()?, ttl, 0).ok()?
            }
            Err(_) => return None,
        };
        let mut reply = with_cookies(Reply::redirect(location), self.prune_logins(req, secure));
        reply = with_cookies(reply, state_cookie);
        // A stale session cookie goes now, so the browser comes back clean.
        // Not at `loginPath`, which any site can send a browser to: the
        // session a user has stays until the sign-in replaces it (chunks
        // that cannot be joined go all the same).
        let chunks = match self.sealer(secure).raw(req) {
            RawCookie::Present { .. } if !clear_session => 0,
            raw => raw.chunks(),
        };
        if chunks > 0 {
            reply = with_cookies(reply, self.sealer(secure).clear(chunks));
        }
        Some(reply)
    }

    /// Where a sign-in may return to: a path of this origin
    /// ([`local_target`]), or an absolute http(s) URL, without user
    /// information, on one of the trusted origins
    /// ([`SignInBuilder::trusted_origin`]), taken whole.
    pub(crate) fn return_target<'t>(&self, target: &'t str) -> Option<Cow<'t, str>> {
        if let Some(local) = local_target(target) {
            return Some(local);
        }
        let trusted = &self.0.config.trusted_origins;
        let on_trusted = !trusted.is_empty()
            && target.is_ascii()
            && palisade_core::syntax::is_landing_uri(target)
            && !target.starts_with('/')
            && palisade_core::syntax::url_origin(target)
                .is_some_and(|o| !o.contains('@') && trusted.contains(&palisade_core::syntax::origin_key(o)));
        on_trusted.then_some(Cow::Borrowed(target))
    }

    /// `GET loginPath?return_to=/path`.
    fn login(&self, req: &dyn RequestHead) -> Reply {
        if !matches!(req.method(), "GET" | "HEAD") {
            return problem(405, "sign in with GET").header("allow", "GET");
        }
        let query = req.query().unwrap_or_default();
        let requested = param(query, "return_to").unwrap_or_else(|| "/".into());
        // An absolute URL of this very origin is accepted as its path.
        let own = self.origin(req);
        let target = match own.as_deref().and_then(|o| requested.strip_prefix(o)) {
            Some(rest) if rest.starts_with('/') => rest.to_owned(),
            _ => requested,
        };
        let Some(target) = self.return_target(&target) else {
            return problem(
                400,
                "return_to must be a path of this service, or a page of one of its trusted origins",
            );
        };
        self.start_sign_in(req, &target, false)
            .unwrap_or_else(|| self.not_started(req))
    }

    /// Why `loginPath` could not start a sign-in: the callback's address is made from
    /// `Host`, and without a plain one there is none to give the issuer
    /// (400: the client's fault, not ours); else the issuer's discovery
    /// document has not loaded yet (503, to try again).
    #[cold]
    fn not_started(&self, req: &dyn RequestHead) -> Reply {
        if self.origin(req).is_none() {
            return problem(400, "the request's Host header is missing or not a host name");
        }
        problem(
            503,
            "sign-in is not ready: the issuer's discovery document has not loaded yet",
        )
        .header("retry-after", "5")
    }

    /// The callback: checks the state, exchanges the code, validates the
    /// ID token, and opens a new session.
    ///
    /// Only the login-state cookie that the callback's `state` names is
    /// cleared, whatever the outcome: another sign-in under way in the
    /// same browser is left to finish.
    fn callback(&self, req: &dyn RequestHead) -> Check<Reply> {
        let secure = self.secure(req);
        // Not HEAD: a link checker's HEAD would spend the code, and the
        // browser's GET would then be refused.
        if req.method() != "GET" {
            return Check::Ready(problem(405, "the sign-in callback takes GET").header("allow", "GET"));
        }
        let query = req.query().unwrap_or_default();
        if ["state", "code", "iss", "error"]
            .iter()
            .any(|p| param_count(query, p) > 1)
        {
            return Check::Ready(problem(400, "the sign-in callback repeats a parameter"));
        }
        let given = param(query, "state").unwrap_or_default();
        let Some(sealer) = self.state_sealer(secure, &given) else {
            return Check::Ready(problem(
                400,
                "the sign-in state does not match this browser's: start again",
            ));
        };
        let clear_state = sealer.clear(1);
        let refuse =
            |status, detail| Check::Ready(with_cookies(problem(status, detail), clear_state.clone()));
        let state: LoginState = match sealer.open(req) {
            Opened::Valid { plaintext, .. } => match serde_json::from_slice(&plaintext) {
                Ok(s) => s,
                Err(_) => return refuse(400, "the sign-in state is missing or not valid: start again"),
            },
            Opened::Absent => {
                return Check::Ready(problem(
                    400,
                    "the sign-in state is missing or not valid: start again",
                ));
            }
            _ => return refuse(400, "the sign-in state is missing or not valid: start again"),
        };
        if !same(&given, &state.state) {
            return refuse(
                400,
                "the sign-in state does not match this browser's: start again",
            );
        }
        if now_us().saturating_sub(state.created_us) > LOGIN_STATE_TTL * 1_000_000 {
            return refuse(400, "the sign-in took too long: start again");
        }
        let Some(metadata) = self.0.issuer.metadata() else {
            return refuse(
                503,
                "sign-in is not ready: the issuer's discovery document has not loaded yet",
            );
        };
        match param(query, "iss") {
            Some(iss) if iss != metadata.issuer => {
                return refuse(400, "the authorization response comes from another issuer");
            }
            None if metadata.authorization_response_iss_parameter_supported => {
                return refuse(400, "the authorization response does not name its issuer");
            }
            _ => {}
        }
        if let Some(error) = param(query, "error") {
            // What the callback's URL says, which any client can write:
            // at `DEBUG`, as every refusal a client can cause.
            tracing::debug!(target: LOG_TARGET, error = %error.chars().filter(char::is_ascii_graphic).take(64).collect::<String>(), "the issuer refused a sign-in");
            return refuse(403, "the issuer did not sign the user in");
        }
        let Some(code) = param(query, "code").filter(|c| !c.is_empty()) else {
            return refuse(400, "the sign-in callback has no code");
        };
        // A session the browser kept through the sign-in (`loginPath`
        // leaves it): the new one replaces every chunk of it.
        let previous_chunks = self.sealer(secure).raw(req).chunks();
        let this = self.clone();
        Check::pending(async move {
            // A state signs in once (RFC 9700 §2.1): its cookie, cleared
            // in the browser only, would let a copy of a completed
            // sign-in's cookie and callback send codes to the issuer with
            // the client's credentials, and a callback sent twice at once
            // would make two sessions. The mark stands for a sign-in under
            // way or completed: one that fails lets it go, so a flood of
            // callbacks with codes the issuer refuses (any client can have
            // login-state cookies) leaves nothing in the store, where the
            // marks would fill a memory store's room, which back-channel
            // logout tokens' marks share, or a Redis's memory. A store that
            // cannot say leaves the cookie's binding to stand alone.
            let once = format!("login-state:{}", URL_SAFE_NO_PAD.encode(sha256_of(&state.state)));
            let mark = match this
                .0
                .store
                .use_once(&once, Duration::from_secs(LOGIN_STATE_TTL))
                .await
            {
                Ok(false) => {
                    return with_cookies(
                        problem(400, "this sign-in was already used: start again"),
                        clear_state,
                    );
                }
                Ok(true) => Some(StateMark {
                    store: Arc::clone(&this.0.store),
                    key: Some(once),
                }),
                Err(_) => None,
            };
            match this
                .finish_sign_in(&metadata, code, state, secure, previous_chunks)
                .await
            {
                Ok(reply) => {
                    if let Some(mark) = mark {
                        mark.keep();
                    }
                    with_cookies(reply, clear_state)
                }
                // The mark goes with `mark`, here or where the request
                // went away (the future dropped mid-sign-in).
                Err((status, detail)) => with_cookies(problem(status, detail), clear_state),
            }
        })
    }

    async fn finish_sign_in(
        &self,
        metadata: &Metadata,
        code: String,
        state: LoginState,
        secure: bool,
        previous_chunks: usize,
    ) -> Result<Reply, (u16, &'static str)> {
        let c = &self.0.config;
        let form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code),
            ("redirect_uri", state.redirect_uri.clone()),
            ("code_verifier", state.verifier.clone()),
        ];
        let mut tokens = match self.0.issuer.token(c, &metadata.token_endpoint, form).await {
            Ok(t) => t,
            Err(TokenError::Refused(error)) => {
                // A code a client made up or replayed is its own doing; the
                // issuer refusing this client (a secret rotated on one side
                // only) fails every sign-in, and is said once a minute.
                let code = error
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next();
                let client = matches!(code, Some("invalid_client" | "unauthorized_client"));
                if client && self.0.client_refused.due() {
                    tracing::warn!(target: LOG_TARGET, %error, "the issuer refuses this client at its token endpoint: every sign-in fails (said once a minute)");
                } else {
                    tracing::debug!(target: LOG_TARGET, %error, "the issuer refused an authorization code");
                }
                return Err((400, "the issuer refused the authorization code: start again"));
            }
            Err(TokenError::Unavailable(e)) => {
                if self.0.issuer_down.due() {
                    tracing::warn!(target: LOG_TARGET, error = %e, "the token endpoint cannot be reached (said once a minute while it lasts)");
                } else {
                    tracing::debug!(target: LOG_TARGET, error = %e, "the token endpoint cannot be reached");
                }
                return Err((502, "the issuer cannot be reached: try again later"));
            }
        };
        let Some(id_token) = tokens.id_token.take() else {
            return Err((400, "the issuer sent no ID token"));
        };
        let claims = self.verify_id_token(&id_token, &state.nonce).await?;
        let t = now();
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let at_exp = tokens.access_token_expiry(t);
        let id = self.random(16).ok_or((503, "no session can be started now"))?;
        let session = Session {
            v: 1,
            id,
            sub,
            sid: claims.get("sid").and_then(Value::as_str).map(str::to_owned),
            created_ms: now_ms(),
            seen: t,
            at: tokens.access_token,
            at_exp,
            at_got: t,
            rt: tokens.refresh_token,
            it: Some(id_token),
            generation: 0,
            store_key: None,
        };
        let cookies = self
            .seal(&session, previous_chunks, secure)
            .await
            .map_err(|()| (502, "the session cannot be stored: try again later"))?;
        tracing::info!(target: LOG_TARGET, subject = ?session.sub, "signed in");
        // Checked again: a login-state cookie of an earlier release may
        // hold its target decoded.
        let target = self
            .return_target(&state.return_to)
            .map_or_else(|| "/".to_owned(), Cow::into_owned);
        Ok(with_cookies(Reply::redirect(target), cookies))
    }

    /// Checks an ID token as OpenID Connect Core 3.1.3.7 says: signature,
    /// `iss`, `aud` and `exp` by the key machinery; then `nonce`, `azp`
    /// and `iat` here.
    async fn verify_id_token(
        &self,
        token: &str,
        nonce: &str,
    ) -> Result<Map<String, Value>, (u16, &'static str)> {
        let identity = self.0.verifier.verify(token).await.map_err(|e| {
            // The issuer's doing (or its keys' outage), never a client's:
            // every sign-in fails meanwhile, said once a minute.
            if self.0.issuer_down.due() {
                tracing::warn!(target: LOG_TARGET, error = %e, "an ID token from the token endpoint was refused (said once a minute)");
            } else {
                tracing::debug!(target: LOG_TARGET, error = %e, "an ID token was refused");
            }
            // The issuer's keys not had: its outage, as an unreachable
            // token endpoint is (the browser may try again).
            if keys_not_had(&e) {
                return (502, "the issuer's keys cannot be had: try again later");
            }
            (400, "the ID token is not valid")
        })?;
        let claims = identity.claims().cloned().unwrap_or_default();
        if !claims
            .get("nonce")
            .and_then(Value::as_str)
            .is_some_and(|n| same(n, nonce))
        {
            return Err((400, "the ID token's nonce does not match this sign-in"));
        }
        let audiences = identity.token().map(|t| t.audiences.len()).unwrap_or_default();
        self.check_id_claims(&claims, audiences).map_err(|e| (400, e))?;
        if claims
            .get("sub")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err((400, "the ID token has no subject"));
        }
        Ok(claims)
    }

    /// The checks of an ID token's claims beyond the key machinery's, at
    /// sign-in and at a refresh alike: `azp` and a recent `iat`.
    fn check_id_claims(&self, claims: &Map<String, Value>, audiences: usize) -> Result<(), &'static str> {
        // `azp` is a string (OpenID Connect Core 2); one of another type
        // names no client this relying party can accept, so it is refused
        // rather than ignored.
        match claims.get("azp") {
            Some(Value::String(azp)) if *azp == self.0.config.client_id => {}
            Some(_) => return Err("the ID token was issued to another client"),
            None if audiences > 1 => return Err("the ID token has several audiences and no azp"),
            None => {}
        }
        let t = now();
        match claims.get("iat").and_then(numeric_date) {
            Some(iat) if iat <= t + 60 && t.saturating_sub(iat) <= LOGIN_STATE_TTL => Ok(()),
            _ => Err("the ID token's iat is missing or out of range"),
        }
    }

    /// Checks the ID token a refresh returned, as OpenID Connect Core 12.2
    /// says: valid as at sign-in (signature, `iss`, `aud`, `exp`, `azp`,
    /// `iat`), of the same user, and with the first ID token's `nonce` when
    /// it carries one. Its `auth_time`, when it carries one, is a time, not
    /// in the future, and no earlier than the last ID token's when that has
    /// one: Keycloak reports its
    /// session's latest authentication (the user signed in again at the
    /// issuer, to another application asking for `prompt=login` or a
    /// stronger level), where the specification keeps the first.
    ///
    /// `Err(None)` when the issuer's keys cannot be had now (the token is
    /// neither good nor bad yet), `Err(Some(why))` when it is not valid.
    async fn verify_refreshed_id_token(&self, token: &str, s: &Session) -> Result<(), Option<&'static str>> {
        let identity = self.0.verifier.verify(token).await.map_err(|e| {
            // The issuer's keys not had: not a verdict.
            if keys_not_had(&e) {
                if self.0.issuer_down.due() {
                    tracing::warn!(target: LOG_TARGET, error = %e, "the ID tokens of refreshes cannot be checked now: the issuer's keys cannot be had (said once a minute while it lasts)");
                } else {
                    tracing::debug!(target: LOG_TARGET, error = %e, "the ID token of a refresh cannot be checked now");
                }
                return None;
            }
            tracing::info!(target: LOG_TARGET, error = %e, "the ID token of a refresh was refused");
            Some("its signature, issuer, audience or expiry is not valid")
        })?;
        let claims = identity.claims().cloned().unwrap_or_default();
        let audiences = identity.token().map(|t| t.audiences.len()).unwrap_or_default();
        self.check_id_claims(&claims, audiences).map_err(Some)?;
        if claims.get("sub").and_then(Value::as_str) != Some(s.sub.as_str()) {
            return Err(Some("it names another user"));
        }
        // The last ID token (the sign-in's, or a refresh's since) was
        // verified when it came and has been sealed in the session since:
        // its claims are read as they are. `auth_time`, when the new one
        // carries it: a time, not in the future, and no earlier than the
        // last one's when that is a time (an issuer may add it only on
        // refresh).
        let last = s.it.as_deref().and_then(unverified_claims).unwrap_or_default();
        if claims.get("nonce").is_some_and(|n| last.get("nonce") != Some(n)) {
            return Err(Some("its nonce differs from the first ID token's"));
        }
        if let Some(latest) = claims.get("auth_time") {
            let then = last.get("auth_time").and_then(numeric_date);
            let bad = numeric_date(latest).is_none_or(|l| then.is_some_and(|t| l < t) || l > now() + 60);
            if bad {
                return Err(Some(
                    "its auth_time is earlier than the last ID token's, in the future, or not a time",
                ));
            }
        }
        Ok(())
    }

    /// The `Set-Cookie` values of a session: sealed in cookies, or in the
    /// store with a reference in the cookie when it is too large.
    async fn seal(&self, session: &Session, previous_chunks: usize, secure: bool) -> Result<Vec<String>, ()> {
        let sealer = self.sealer(secure);
        let inline = serde_json::to_vec(&Payload::Inline(session.clone())).map_err(|_| ())?;
        if let Ok(cookies) = sealer.seal(&inline, None, previous_chunks) {
            return Ok(cookies);
        }
        let c = &self.0.config;
        let ttl = Duration::from_secs(
            (session.created_secs() + c.absolute_timeout.as_secs()).saturating_sub(now()),
        );
        // Sealed with a key only the cookie holds: the store alone shows no token.
        // A session first stored here (at sign-in, or an earlier release's)
        // gets its key now; sessions refreshed here have theirs already.
        let key = session.store_key.clone().or_else(new_store_key).ok_or(())?;
        let sealed = seal_stored(&session.id, &inline, &key).ok_or(())?;
        let written = self
            .0
            .store
            .put_session(&session.id, session.generation, sealed, ttl)
            .await
            .map_err(|e| {
                tracing::warn!(target: LOG_TARGET, error = %e, "a session too large for cookies cannot be stored");
            })?;
        if !written {
            // Another replica refreshed the session since this one read it:
            // the store keeps that newer copy, which the same cookie names.
            tracing::debug!(target: LOG_TARGET, subject = ?session.sub, "a stored session was not written back: the store holds a later refresh of it");
        }
        let reference = serde_json::to_vec(&Payload::Stored {
            id: session.id.clone(),
            key: Some(key.to_string()),
        })
        .map_err(|_| ())?;
        sealer.seal(&reference, None, previous_chunks).map_err(|_| ())
    }

    /// A session's cookie value, opened (from the cache when seen before).
    fn open_session(&self, raw: &str, secure: bool) -> Check<Option<Arc<Live>>> {
        if let Some(live) = self.0.cache.get(raw) {
            return Check::Ready(Some(live));
        }
        let Ok(opened) = self.sealer(secure).open_raw(raw) else {
            return Check::Ready(None);
        };
        let issuer = &self.0.config.issuer;
        let absolute = self.0.config.absolute_timeout;
        match serde_json::from_slice::<Payload>(&opened.plaintext) {
            Ok(Payload::Inline(session)) => {
                if !self.made_here(&session) {
                    return Check::Ready(None);
                }
                let live = Arc::new(Live::new(session, issuer, &self.0.config.claim_names, None));
                self.0.cache.insert(raw, Arc::clone(&live), absolute);
                Check::Ready(Some(live))
            }
            Ok(Payload::Stored { id, key }) => {
                let this = self.clone();
                let raw = raw.to_owned();
                Check::pending(async move {
                    let data = match this.0.store.get(&id).await {
                        Ok(Some(d)) => d,
                        Ok(None) => return None,
                        Err(e) => {
                            // The store says when it stops answering.
                            tracing::debug!(target: LOG_TARGET, error = %e, "a stored session cannot be read");
                            this.0.unreadable.note(&raw);
                            return None;
                        }
                    };
                    let session = this.stored_session(&id, key.as_deref(), data)?;
                    let live = Arc::new(Live::new(
                        session,
                        &this.0.config.issuer,
                        &this.0.config.claim_names,
                        None,
                    ));
                    this.0
                        .cache
                        .insert(&raw, Arc::clone(&live), this.0.config.absolute_timeout);
                    Some(live)
                })
            }
            Err(_) => Check::Ready(None),
        }
    }

    /// The session in `data`, stored under `id` and sealed with `key` (its
    /// cookie's), when it opens and was made here.
    fn stored_session(&self, id: &str, key: Option<&str>, data: Vec<u8>) -> Option<Session> {
        // Without a key: stored in clear by an earlier release.
        let data = match key {
            Some(key) => {
                let opened = open_stored(id, key, data);
                if opened.is_none() {
                    tracing::debug!(target: LOG_TARGET, "a stored session does not open with its cookie's key");
                }
                opened?
            }
            None => data,
        };
        let Ok(Payload::Inline(mut session)) = serde_json::from_slice(&data) else {
            return None;
        };
        if !self.made_here(&session) {
            return None;
        }
        session.store_key = key.map(Arc::from);
        Some(session)
    }

    /// The copy of `previous`, a session kept in the store, that the store
    /// holds when it is a later refresh (another replica's, written back
    /// under the id the cookie names, its successor gone from the store
    /// since): this replica read the session before that refresh.
    async fn stored_later(&self, previous: &Session) -> Option<Arc<Live>> {
        let key = previous.store_key.as_deref()?;
        let data = match self.0.store.get(&previous.id).await {
            Ok(data) => data?,
            Err(e) => {
                tracing::debug!(target: LOG_TARGET, error = %e, "the store cannot say whether another replica refreshed a stored session");
                return None;
            }
        };
        let stored = self.stored_session(&previous.id, Some(key), data)?;
        if !stored.newer_than(previous) {
            return None;
        }
        let next = Arc::new(Live::new(
            stored,
            &self.0.config.issuer,
            &self.0.config.claim_names,
            None,
        ));
        self.0.refreshes.successors.insert(Arc::clone(&next));
        Some(next)
    }

    /// Whether a session was made by this relying party: its ID token (as
    /// verified at sign-in, sealed since) names this issuer and this client
    /// among its audiences. A cookie sealed under another issuer or client
    /// that shares the keys and the cookie's name (one configuration
    /// reloaded into another, two relying parties on one host) would
    /// otherwise stand for its `sub` under this issuer (OpenID Connect
    /// Core 5.7: only `iss` and `sub` together name a user).
    fn made_here(&self, session: &Session) -> bool {
        let c = &self.0.config;
        let Some(claims) = session.it.as_deref().and_then(unverified_claims) else {
            // No ID token: a session of an earlier release, kept as it is.
            return session.it.is_none();
        };
        let audience = match claims.get("aud") {
            Some(Value::String(a)) => a == &c.client_id,
            Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(c.client_id.as_str())),
            _ => false,
        };
        let here = claims.get("iss").and_then(Value::as_str) == Some(c.issuer.as_str()) && audience;
        if !here {
            tracing::debug!(target: LOG_TARGET, "a session cookie of another issuer or client: not accepted");
        }
        here
    }

    /// Whether a session stands at `t`: `Ok(false)` when it timed out or
    /// is recorded as ended, `Err` when the store cannot say whether it
    /// ended.
    fn standing(&self, s: &Session, t: u64) -> Result<bool, crate::store::StoreError> {
        if self.timed_out(s, t) {
            return Ok(false);
        }
        self.0
            .store
            .is_revoked(&self.session_ref(s))
            .map(|revoked| !revoked)
    }

    /// Whether a session may still be used: not ended, not timed out.
    fn usable(&self, s: &Session, t: u64) -> bool {
        self.standing(s, t).unwrap_or_else(|e| {
            // The store says when it stops answering.
            tracing::debug!(target: LOG_TARGET, error = %e, "session revocations cannot be checked: the session is not accepted");
            false
        })
    }

    /// Whether a session has ended already: timed out, or recorded as
    /// ended. (A store that cannot say is taken for one that has not: a
    /// logout of it is recorded again.)
    fn ended_already(&self, s: &Session, t: u64) -> bool {
        matches!(self.standing(s, t), Ok(false))
    }

    /// Whether the session's tokens are older than the store's knowledge
    /// of ended sessions (a memory store after a restart): it may have
    /// ended meanwhile, unknown to this store, which only the issuer can
    /// tell.
    fn may_have_ended_unseen(&self, s: &Session) -> bool {
        self.0
            .store
            .endings_since()
            .is_some_and(|since| s.tokens_before(since))
    }

    /// `live`, or the newer successor an earlier request's refresh made of
    /// it, and whether it is that successor. Only a newer one: another
    /// replica may have refreshed the session since, and this one's
    /// successor would send the browser (and the issuer, at the next
    /// refresh) tokens it already replaced.
    fn newest(&self, live: Arc<Live>) -> (Arc<Live>, bool) {
        match self.0.refreshes.successors.get(&live.session.id) {
            Some(next) if next.session.newer_than(&live.session) => (next, true),
            _ => (live, false),
        }
    }

    /// Whether `req` carries a stored session's cookie whose data the store
    /// could not give back within [`UNREADABLE_FOR`].
    fn unreadable_now(&self, req: &dyn RequestHead) -> bool {
        let RawCookie::Present { value, .. } = self.sealer(self.secure(req)).raw(req) else {
            return false;
        };
        self.0.unreadable.noted_within(&value, UNREADABLE_FOR)
    }

    /// Whether the store holds the ending of the session `id` itself
    /// ([`end_id`](Self::end_id)), whoever its user.
    fn ended_by_id(&self, id: &str) -> bool {
        let by_id = SessionRef {
            id,
            issuer: &self.0.config.issuer,
            subject: "",
            sid: None,
            created: std::time::SystemTime::now(),
        };
        matches!(self.0.store.is_revoked(&by_id), Ok(true))
    }

    /// Whether a session is past its idle or absolute timeout at `t`.
    fn timed_out(&self, s: &Session, t: u64) -> bool {
        let c = &self.0.config;
        // Saturating: a cookie's times are whatever was sealed in it.
        let idle_end = s.seen.saturating_add(c.idle_timeout.as_secs());
        t >= s.created_secs() + c.absolute_timeout.as_secs() || t >= idle_end
    }

    /// A session as the store's revocations name it.
    fn session_ref<'s>(&'s self, s: &'s Session) -> SessionRef<'s> {
        SessionRef {
            id: &s.id,
            issuer: &self.0.config.issuer,
            subject: &s.sub,
            sid: s.sid.as_deref(),
            created: UNIX_EPOCH + Duration::from_millis(s.created_ms),
        }
    }

    /// Whether `req` carries a session this process has seen that is
    /// whole (not ended, not timed out) but without a valid access token:
    /// its refresh has just failed for now ([`Unusable::NotNow`]; one that
    /// ended the session forgot it here).
    fn renewal_not_now(&self, req: &dyn RequestHead) -> bool {
        let Ok(parts) = self.sealer(self.secure(req)).parts(req) else {
            return false;
        };
        let Some(live) = self.0.cache.get_parts(parts.len(), parts.iter()) else {
            return false;
        };
        let t = now();
        let s = &live.session;
        s.rt.is_some() && s.at_exp <= t && self.usable(s, t)
    }

    /// Whether `req` carries a session cookie this service sealed and the
    /// store cannot say now whether any session was ended (a shared store out of reach, its
    /// copy of the revocations too old to trust).
    fn revocations_unknown(&self, req: &dyn RequestHead) -> bool {
        // A cookie this service sealed: one that does not open (a forged
        // or foreign value) gets the 401 of a request without a session,
        // not the outage's 503 (bad input gets a 4xx).
        let sealer = self.sealer(self.secure(req));
        let carries = match sealer.raw(req) {
            RawCookie::Present { value, .. } => sealer.open_raw(&value).is_ok(),
            _ => false,
        };
        let probe = SessionRef {
            id: "",
            issuer: &self.0.config.issuer,
            subject: "",
            sid: None,
            created: UNIX_EPOCH,
        };
        carries && self.0.store.is_revoked(&probe).is_err()
    }

    /// The outcome for a request carrying this session.
    fn admit(&self, live: Arc<Live>, chunks: usize, secure: bool) -> Check<AuthOutcome> {
        let t = now();
        let c = &self.0.config;
        // A session refreshed by an earlier request: use its new tokens.
        let (live, mut renew) = self.newest(live);
        if !self.usable(&live.session, t) {
            return Check::Ready(AuthOutcome::NoCredential);
        }
        // A session that may have ended unknown to this store: the issuer
        // is asked before it is taken.
        let unknown = self.may_have_ended_unseen(&live.session);
        if unknown || live.session.at_exp <= t + live.session.refresh_lead(c.refresh_before.as_secs()) {
            if live.session.rt.is_some() {
                let this = self.clone();
                return Check::pending(async move {
                    let before = Arc::clone(&live);
                    if unknown {
                        // Right after a start, the issuer's discovery may
                        // still be under way: the refresh waits for it.
                        this.0.issuer.metadata_within(this.0.config.timeout).await;
                    }
                    match this.refresh(live).await {
                        // Not refreshed (the issuer cannot be asked now):
                        // whether it ended is still unknown.
                        Ok(next) if unknown && !next.session.newer_than(&before.session) => {
                            AuthOutcome::NoCredential
                        }
                        // The same tokens (the issuer cannot be asked now,
                        // another replica is refreshing them): the cookie
                        // stays, so it never replaces a newer one, unless
                        // it is older than this replica's successor. Told
                        // by generation, not by copy: a request that joined
                        // another's refresh gets that request's copy, and
                        // keeps its own when that copy is older (another
                        // cookie of the session).
                        Ok(next) => {
                            let renew = renew || next.session.newer_than(&before.session);
                            let newest = if before.session.newer_than(&next.session) {
                                before
                            } else {
                                next
                            };
                            // Its idle timeout renewed as any request's is,
                            // while the refresh brings nothing new (the
                            // issuer cannot answer): by a lone replica only.
                            // With a shared store, another replica may be
                            // refreshing the session, and this cookie of the
                            // old tokens could land after its new one.
                            let renew = renew
                                || (!this.0.store.shared() && this.idle_renewal_due(&newest.session, now()));
                            this.authenticated(newest, renew, chunks, secure).await
                        }
                        // Ended, or without a token for now: the request
                        // goes as one without a session. (A page the policy
                        // would then send to sign in keeps a whole
                        // session's cookie: `sign_in`.)
                        Err(Unusable::Ended | Unusable::NotNow) => AuthOutcome::NoCredential,
                    }
                });
            }
            if unknown || live.session.at_exp <= t {
                return Check::Ready(AuthOutcome::NoCredential);
            }
        }
        renew |= self.idle_renewal_due(&live.session, t);
        if !renew {
            return Check::Ready(AuthOutcome::Authenticated(
                Authenticated::new(live.identity.clone())
                    .with_attachment(live.signed_in.clone())
                    .with_shared_attachment(Arc::clone(&live.bearer))
                    .ambient(),
            ));
        }
        let this = self.clone();
        Check::pending(async move { this.authenticated(live, true, chunks, secure).await })
    }

    /// The answer of `sessionPath`: the deadlines of the session `req`
    /// carries, read as a request's authentication reads them, but
    /// neither renewed nor refreshed.
    fn session_info(&self, req: &dyn RequestHead) -> Check<Reply> {
        if !matches!(req.method(), "GET" | "HEAD") {
            return Check::Ready(
                problem(405, "the session's deadlines are read with GET").header("allow", "GET, HEAD"),
            );
        }
        if self.revocations_unknown(req) {
            return Check::Ready(revocations_unknown_reply());
        }
        let secure = self.secure(req);
        let Ok(parts) = self.sealer(secure).parts(req) else {
            return Check::Ready(self.no_session());
        };
        if let Some(live) = self.0.cache.get_parts(parts.len(), parts.iter()) {
            return Check::Ready(self.deadlines(live));
        }
        // Not read yet: a stored session the store just failed to give
        // back is the outage's 503 for a while, as a request's is.
        if self.unreadable_now(req) {
            return Check::Ready(unreadable_now_reply());
        }
        let Ok(value) = parts.join() else {
            return Check::Ready(self.no_session());
        };
        match self.open_session(&value, secure) {
            Check::Ready(Some(live)) => Check::Ready(self.deadlines(live)),
            Check::Ready(None) => Check::Ready(self.no_session()),
            Check::Pending(fut) => {
                let this = self.clone();
                let value = value.to_string();
                Check::pending(async move {
                    match fut.await {
                        Some(live) => this.deadlines(live),
                        // A stored session the store did not give back.
                        None if this.0.unreadable.noted_within(&value, UNREADABLE_FOR) => {
                            unreadable_now_reply()
                        }
                        None => this.no_session(),
                    }
                })
            }
        }
    }

    /// `sessionPath`'s answer to a request without a usable session: a
    /// 401 whose challenge says where to sign in, never a redirect.
    fn no_session(&self) -> Reply {
        let mut reply = Reply::problem(401, "no-session", "Not signed in", "no session: sign in")
            .header("cache-control", "no-store");
        if let Some(challenge) = self.fallback_challenge() {
            reply = reply.header("www-authenticate", challenge);
        }
        reply
    }

    /// The deadlines of `live` (or of its refreshed successor), or the 401
    /// of a request without a usable session, as [`admit`](Self::admit)
    /// would take it. Without a refresh token, the session ends with its
    /// access token, and says so.
    fn deadlines(&self, live: Arc<Live>) -> Reply {
        let (live, _) = self.newest(live);
        let (t, c, s) = (now(), &self.0.config, &live.session);
        match self.standing(s, t) {
            Ok(true) => {}
            Ok(false) => return self.no_session(),
            Err(e) => {
                tracing::debug!(target: LOG_TARGET, error = %e, "session revocations cannot be checked");
                return revocations_unknown_reply();
            }
        }
        let unknown = self.may_have_ended_unseen(s);
        // Without a refresh token, a session whose access token expired
        // (or may have ended unknown to this store) is over; with one, the
        // next request refreshes it (or, unknown, asks the issuer whether
        // it ended).
        if s.rt.is_none() && (unknown || s.at_exp <= t) {
            return self.no_session();
        }
        let mut ends = s.created_secs().saturating_add(c.absolute_timeout.as_secs());
        if s.rt.is_none() {
            ends = ends.min(s.at_exp);
        }
        let body = serde_json::json!({
            "subject": s.sub,
            "signed_in_at": s.created_secs(),
            "ends_at": ends,
            "idle_ends_at": s.seen.saturating_add(c.idle_timeout.as_secs()).min(ends),
        });
        Reply::new(200)
            .header("cache-control", "no-store")
            .with_body("application/json", body.to_string())
    }

    /// The 503 of a request whose session the store cannot vouch for or
    /// give back now, when it is one: every route that reads sessions
    /// answers it, not the 401 a script would read as "signed out".
    fn store_not_answering(&self, req: &dyn RequestHead) -> Option<Reply> {
        // A session the store cannot vouch for now (its revocations cannot
        // be read): the browser keeps its cookie and is asked to come back.
        // Sent to sign in, it would lose the cookie and, signed in again
        // at once by the issuer's own session, come back with a session
        // refused the same way, round and round.
        if self.revocations_unknown(req) {
            return Some(revocations_unknown_reply());
        }
        // A stored session whose data the store could not give back now:
        // sent to sign in, the browser would lose its cookie for a blip.
        self.unreadable_now(req).then(unreadable_now_reply)
    }

    /// Whether the cookie of `session` is to be sealed again at `t` to renew
    /// its idle timeout: the cookie says when the session was last seen,
    /// renewed once a quarter of the timeout has passed.
    fn idle_renewal_due(&self, session: &Session, t: u64) -> bool {
        t.saturating_sub(session.seen) >= (self.0.config.idle_timeout.as_secs() / 4).max(1)
    }

    /// An authentication by `live`, with a new cookie when `renew`.
    async fn authenticated(&self, live: Arc<Live>, renew: bool, chunks: usize, secure: bool) -> AuthOutcome {
        // A cookie, which a browser sends by itself: a credential the
        // request carries itself, of another user, wins over it.
        let mut out = Authenticated::new(live.identity.clone())
            .with_attachment(live.signed_in.clone())
            .with_shared_attachment(Arc::clone(&live.bearer))
            .ambient();
        if renew {
            let mut session = live.session.clone();
            session.seen = now();
            if let Ok(cookies) = self.seal(&session, chunks, secure).await {
                for cookie in cookies {
                    out = out.with_response_header("set-cookie", cookie);
                }
                // The application's response now carries the session's
                // cookie: no shared cache may keep it for others (beside
                // the application's own directives, `private` wins).
                out = out.with_response_header("cache-control", "private".to_owned());
            }
        }
        AuthOutcome::Authenticated(out)
    }

    /// Refreshes a session's tokens, once for all concurrent requests of
    /// the session, and once for every replica sharing the store (the
    /// first to claim it asks the issuer and hands the result on through
    /// the store). [`Unusable::Ended`] ends the session for good;
    /// [`Unusable::NotNow`] leaves it whole, without tokens for now.
    ///
    /// The refresh runs as a task of its own, not in a request: once the
    /// issuer has rotated the refresh token, the new one must be kept even
    /// if every request that waited has gone (a client hung up, a timeout
    /// layer fired). Sent again, the old one would be refused and end the
    /// session, and an issuer that detects reuse revokes the whole family.
    async fn refresh(&self, live: Arc<Live>) -> Result<Arc<Live>, Unusable> {
        let this = self.clone();
        let id = live.session.id.clone();
        // After the answer, a request finds the successor (`refresh_once`).
        let call = move || async move { this.refresh_once(live).await };
        // No answer: the refresh's task ended without one.
        let answer = self.0.refreshes.refreshing.run(id, call).await;
        answer.unwrap_or(Err(Unusable::NotNow))
    }

    async fn refresh_once(&self, live: Arc<Live>) -> Result<Arc<Live>, Unusable> {
        // Another request refreshed it meanwhile.
        if let (next, true) = self.newest(Arc::clone(&live)) {
            return Ok(next);
        }
        // No discovery document yet (the issuer down since start-up, a
        // reload's new client): the tokens while they last.
        let Some(metadata) = self.0.issuer.metadata() else {
            return while_valid(live);
        };
        if !self.0.store.shared() {
            return self.ask_issuer(live, &metadata, None).await;
        }
        // Another replica did (a shared store): its successor, or the
        // session it wrote back to the store.
        if let Some(next) = self.adopt(&live.session).await {
            return Ok(next);
        }
        if let Some(next) = self.stored_later(&live.session).await {
            return Ok(next);
        }
        // One replica asks the issuer: the refresh token works once.
        let claim = refresh_claim(&live.session);
        match self.0.store.use_once(&claim, self.claim_lease()).await {
            Ok(true) => self.claimed(live, &metadata, &claim).await,
            Ok(false) => self.await_successor(live, &metadata, &claim).await,
            // The store cannot say whether another replica refreshes it:
            // the old tokens while they last, rather than risk sending a
            // spent refresh token; once they expired, refreshed here, as a
            // lone replica would.
            Err(_) if live.session.at_exp > now() => Ok(live),
            Err(e) => {
                tracing::debug!(target: LOG_TARGET, error = %e, "the store cannot say whether another replica refreshes a session: refreshing here");
                self.ask_issuer(live, &metadata, None).await
            }
        }
    }

    /// How long a replica's claim to refresh a session lasts: a lease past
    /// the longest its refresh can take (the token endpoint's answer, the
    /// issuer's keys for a new ID token, the handoff to the store: each
    /// bounded by the issuer or store timeout), and past the longest
    /// another replica's request waits for it ([`successor_wait`](Self::successor_wait)):
    /// 25 s by default. A replica stopped mid-refresh holds the session's
    /// refresh no longer than that. The successor it leads to may outlive
    /// it (five minutes): a replica that gets the claim looks for one
    /// again ([`claimed`](Self::claimed)).
    fn claim_lease(&self) -> Duration {
        self.0
            .config
            .timeout
            .saturating_mul(3)
            .saturating_add(CLAIM_MARGIN)
    }

    /// The refresh of a session this replica claimed: the successor
    /// another replica handed on before the last claim on it lapsed, if
    /// there is one, else the issuer's answer.
    async fn claimed(
        &self,
        live: Arc<Live>,
        metadata: &Metadata,
        claim: &str,
    ) -> Result<Arc<Live>, Unusable> {
        if let Some(next) = self.adopt(&live.session).await {
            return Ok(next);
        }
        self.ask_issuer(live, metadata, Some(claim)).await
    }

    /// Asks the issuer for new tokens with the session's refresh token;
    /// this replica holds `claim` (a shared store), released when the
    /// issuer cannot answer so that a later request may try again.
    async fn ask_issuer(
        &self,
        live: Arc<Live>,
        metadata: &Metadata,
        claim: Option<&str>,
    ) -> Result<Arc<Live>, Unusable> {
        let c = &self.0.config;
        let s = &live.session;
        let form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", s.rt.clone().unwrap_or_default()),
        ];
        let t = now();
        match self.0.issuer.token(c, &metadata.token_endpoint, form).await {
            Ok(tokens) => {
                let mut next = s.clone();
                next.generation = s.generation.saturating_add(1);
                next.at_exp = tokens.access_token_expiry(t);
                next.at_got = t;
                next.at = tokens.access_token;
                if tokens.refresh_token.is_some() {
                    next.rt = tokens.refresh_token;
                }
                if let Some(id_token) = tokens.id_token {
                    match self.verify_refreshed_id_token(&id_token, s).await {
                        Ok(()) => next.it = Some(id_token),
                        // The keys cannot be had now: the new access and
                        // refresh tokens (from the token endpoint itself)
                        // are kept with the first ID token, rather than
                        // spend a rotated refresh token for nothing.
                        Err(None) => {}
                        Err(Some(why)) => {
                            tracing::warn!(target: LOG_TARGET, reason = why, subject = ?s.sub, "the issuer refreshed a session with an ID token that is not valid: the session ends");
                            if let Err(e) = self.end(s).await {
                                self.store_failed(&e, false, "an ended session cannot be recorded");
                            }
                            return Err(Unusable::Ended);
                        }
                    }
                }
                next.seen = t;
                // The successor may outgrow its cookies: it has its store
                // key before any request seals it, so every write of it
                // (by each request that waited for this refresh, on every
                // replica) uses the one key its cookies carry.
                if next.store_key.is_none() {
                    next.store_key = new_store_key();
                }
                tracing::debug!(target: LOG_TARGET, subject = ?next.sub, "session tokens refreshed");
                if claim.is_some() {
                    self.hand_on(s, &next).await;
                }
                let next = Arc::new(Live::new(next, &c.issuer, &c.claim_names, None));
                self.0.refreshes.successors.insert(Arc::clone(&next));
                Ok(next)
            }
            // Only a dead grant ends the session (RFC 6749 §5.2): a
            // throttled (`429`) or misconfigured client (`invalid_client`
            // after a secret's rotation) is the issuer's trouble, not the
            // session's.
            // With a shared store, another replica may have spent this
            // refresh token a moment before (a rotation): asked without
            // the store's claim (it could not give one), or with a claim
            // taken once that replica's had lapsed (it was slower than its
            // lease). Its successor, if it is in the store; without a
            // claim, not ended on the issuer's say either, but left without
            // tokens for now: a later request, with the store back, claims
            // and knows.
            Err(TokenError::Refused(error)) if error == "invalid_grant" => {
                if self.0.store.shared() {
                    if let Some(next) = self.adopt(s).await {
                        return Ok(next);
                    }
                    if claim.is_none() {
                        tracing::debug!(target: LOG_TARGET, %error, subject = ?s.sub, "the issuer refused a refresh made without the store's claim: another replica may have made it; not ended");
                        return Err(Unusable::NotNow);
                    }
                }
                tracing::info!(target: LOG_TARGET, %error, subject = ?s.sub, "the issuer refused to refresh a session: it ends");
                if let Err(e) = self.end(s).await {
                    self.store_failed(&e, false, "an ended session cannot be recorded");
                }
                Err(Unusable::Ended)
            }
            Err(TokenError::Refused(e) | TokenError::Unavailable(e)) => {
                if self.0.issuer_down.due() {
                    tracing::warn!(target: LOG_TARGET, error = %e, "the issuer cannot refresh sessions now (said once a minute while it lasts)");
                } else {
                    tracing::debug!(target: LOG_TARGET, error = %e, "the issuer cannot refresh a session now");
                }
                // The next request, on any replica, may try again.
                if let Some(claim) = claim
                    && let Err(e) = self.0.store.release(claim).await
                {
                    tracing::debug!(target: LOG_TARGET, error = %e, "a refresh's claim cannot be released: the other replicas wait for it to expire");
                }
                while_valid(live)
            }
        }
    }

    /// How long a request waits for the refresh another replica claimed:
    /// that replica's call to the token endpoint, one for the issuer's
    /// keys (an ID token signed with a new key) and its store commands,
    /// with a margin; at most [`MAX_SUCCESSOR_WAIT`].
    fn successor_wait(&self) -> Duration {
        self.0
            .config
            .timeout
            .saturating_mul(3)
            .saturating_add(Duration::from_secs(5))
            .min(MAX_SUCCESSOR_WAIT)
    }

    /// Puts `next`, the refreshed successor of `previous`, in the store for
    /// the other replicas, sealed with a key only `previous`'s holders can
    /// derive. A failure leaves them on the old tokens while those last.
    async fn hand_on(&self, previous: &Session, next: &Session) {
        let Some(sealed) = seal_successor(previous, next) else {
            return;
        };
        if let Err(e) = self
            .0
            .store
            .put(&successor_key(previous), sealed, SUCCESSOR_TTL)
            .await
        {
            self.store_failed(
                &e,
                false,
                "a refreshed session cannot be handed to the other replicas: until the browser brings the new cookie, their requests use the old tokens while those last, then wait and end",
            );
        }
    }

    /// The latest successor of `previous` other replicas put in the store
    /// (following a chain of refreshes); `None` when there is none, or the
    /// store cannot say.
    async fn adopt(&self, previous: &Session) -> Option<Arc<Live>> {
        let mut latest: Option<Arc<Live>> = None;
        for _ in 0..MAX_SUCCESSOR_STEPS {
            let from = latest.as_ref().map_or(previous, |l| &l.session);
            let sealed = match self.0.store.get(&successor_key(from)).await {
                Ok(Some(sealed)) => sealed,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(target: LOG_TARGET, error = %e, "the store cannot say whether another replica refreshed a session");
                    break;
                }
            };
            let Some(next) = open_successor(from, sealed) else {
                tracing::debug!(target: LOG_TARGET, "a refreshed session in the store does not open with the session it replaces");
                break;
            };
            latest = Some(Arc::new(Live::new(
                next,
                &self.0.config.issuer,
                &self.0.config.claim_names,
                None,
            )));
        }
        if let Some(next) = &latest {
            self.0.refreshes.successors.insert(Arc::clone(next));
        }
        latest
    }

    /// Another replica claimed the session's refresh. Its tokens are used
    /// while they last (the cookie is left as it is); once they have
    /// expired, the successor that replica hands on, for as long as it may
    /// take to make one, or a refresh here when that replica gives up its
    /// claim (the issuer could not answer it). [`Unusable::NotNow`] when
    /// nothing comes, [`Unusable::Ended`] when the session ends meanwhile
    /// (the issuer refused that replica).
    async fn await_successor(
        &self,
        live: Arc<Live>,
        metadata: &Metadata,
        claim: &str,
    ) -> Result<Arc<Live>, Unusable> {
        if live.session.at_exp > now() {
            return Ok(live);
        }
        let started = tokio::time::Instant::now();
        let wait = self.successor_wait();
        let mut pause = Duration::from_millis(20);
        while started.elapsed() < wait {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(SUCCESSOR_POLL);
            if let Some(next) = self.adopt(&live.session).await {
                return Ok(next);
            }
            if !self.usable(&live.session, now()) {
                return Err(Unusable::Ended);
            }
            if let Ok(true) = self.0.store.use_once(claim, self.claim_lease()).await {
                return self.claimed(live, metadata, claim).await;
            }
        }
        tracing::info!(target: LOG_TARGET, subject = ?live.session.sub, "another replica claimed a session's refresh and handed on no tokens in time: this request goes without the session");
        Err(Unusable::NotNow)
    }

    /// A session store's failure to record `what`, said at warn level at
    /// most once a minute while the store fails, at debug level otherwise:
    /// in an outage every refresh or logout would say it, and a client can
    /// send logouts. A `severe` one (a logout not recorded) is said at
    /// error level, once a minute of its own, whatever else was said.
    fn store_failed(&self, e: &crate::store::StoreError, severe: bool, what: &str) {
        let said = if severe {
            &self.0.logout_unrecorded
        } else {
            &self.0.store_down
        };
        if !said.due() {
            tracing::debug!(target: LOG_TARGET, error = %e, "{what}");
        } else if severe {
            tracing::error!(target: LOG_TARGET, error = %e, "{what} (said once a minute while the store fails)");
        } else {
            tracing::warn!(target: LOG_TARGET, error = %e, "{what} (said once a minute while the store fails)");
        }
    }

    /// Ends a session here: forgotten by this process at once, recorded as
    /// ended in the store (for every replica) until its absolute timeout.
    /// Past [`ENDINGS_PER_SUBJECT`] of its user's, every session of the
    /// user begun before now is ended instead
    /// ([`subject_ended`](Self::subject_ended)), in one revocation: a
    /// logout, or a refresh the issuer refuses (which a user can bring about
    /// as cheaply, signed in many times, then signed out at the issuer).
    async fn end(&self, s: &Session) -> Result<(), crate::store::StoreError> {
        let c = &self.0.config;
        if self
            .0
            .endings
            .one_more(&s.sub, now(), c.absolute_timeout.as_secs())
        {
            self.forget_here(&s.id);
            return self.0.store.revoke(self.subject_ended(&s.sub)).await;
        }
        let until = at(s.created_secs() + c.absolute_timeout.as_secs());
        match self.end_id(s.id.clone(), until).await {
            // An in-memory store full of sessions' endings (kept for their
            // absolute timeout: many users signing in and out): every
            // session of the user begun before now, which the store keeps
            // room for, rather than a logout that ends nothing elsewhere.
            Err(crate::store::StoreError::Full { .. }) => {
                tracing::warn!(target: LOG_TARGET, "the session store's revocations are full of single sessions: a session's ending (a logout, a refresh the issuer refused) ends every session of its user begun before it");
                self.0.store.revoke(self.subject_ended(&s.sub)).await
            }
            ended => ended,
        }
    }

    /// Forgets the session of this id in this process: its cached copy and
    /// its latest refresh.
    fn forget_here(&self, id: &str) {
        self.0.refreshes.successors.remove(id);
        self.0.cache.remove_session(id);
    }

    /// The revocation of every session of `subject` begun before now, kept
    /// while one of them may live.
    fn subject_ended(&self, subject: &str) -> Revocation {
        let c = &self.0.config;
        Revocation::Subject {
            issuer: c.issuer.clone(),
            subject: subject.to_owned(),
            // Sessions created from the next millisecond on are not the
            // ones ended (creation times are whole milliseconds; one
            // created in this very millisecond ends too: closed rather
            // than open). Replicas' clocks must agree to better than that.
            before: UNIX_EPOCH + Duration::from_millis(now_ms() + 1),
            until: at(now() + c.absolute_timeout.as_secs()),
        }
    }

    /// [`end`](Self::end) for the session of this id, recorded until `until`.
    async fn end_id(&self, id: String, until: std::time::SystemTime) -> Result<(), crate::store::StoreError> {
        self.forget_here(&id);
        self.0.store.revoke(Revocation::Session { id, until }).await
    }

    /// The id of the stored session a session cookie's value refers to,
    /// when it is such a reference.
    fn stored_id(&self, raw: &str, secure: bool) -> Option<String> {
        let opened = self.sealer(secure).open_raw(raw).ok()?;
        match serde_json::from_slice::<Payload>(&opened.plaintext) {
            Ok(Payload::Stored { id, .. }) => Some(id),
            _ => None,
        }
    }

    /// `logoutPath`: ends the session here, then at the issuer.
    fn logout(&self, req: &dyn RequestHead) -> Check<Reply> {
        if !matches!(req.method(), "GET" | "POST") {
            return Check::Ready(problem(405, "log out with GET or POST").header("allow", "GET, POST"));
        }
        // Started by another site (a link, an image, a form: logout CSRF),
        // as the browser says: asked to confirm, as Spring Security and
        // Keycloak do. The page's form posts from this origin.
        if palisade_core::authn::started_elsewhere(req, self.0.config.external_origin.as_deref())
            && !palisade_core::authn::origin_among(req, &self.0.config.trusted_origins)
        {
            return Check::Ready(confirm_logout(&self.0.config.logout_path));
        }
        let secure = self.secure(req);
        let c = &self.0.config;
        let sealer = self.sealer(secure);
        let (value, chunks) = match sealer.raw(req) {
            RawCookie::Present { value, chunks } => (Some(value), chunks),
            RawCookie::Absent => (None, 0),
            RawCookie::Invalid { chunks, .. } => (None, chunks),
        };
        let clear = sealer.clear(chunks.max(1));
        let own = self.origin(req).unwrap_or_default();
        let after = if c.post_logout_redirect.starts_with('/') {
            format!("{own}{}", c.post_logout_redirect)
        } else {
            c.post_logout_redirect.clone()
        };
        let opened = value.as_deref().map(|v| self.open_session(v, secure));
        let value = value.map(Cow::into_owned);
        let this = self.clone();
        let finish = move |live: Option<Arc<Live>>| async move {
            let metadata = this.0.issuer.metadata();
            // A session kept in the store names its id in the cookie: when
            // the store cannot give the session back (unreachable, or the
            // data gone), the logout still ends it by that id (until the
            // longest a session can live from now: its creation time is in
            // the data) and at the issuer.
            let stored = || value.as_deref().and_then(|v| this.stored_id(v, secure));
            let ended_before = live
                .as_ref()
                .is_some_and(|l| this.ended_already(&l.session, now()));
            // The refresh token to revoke: the newest copy's this process
            // knows (a refresh a request made since the cookie was
            // sealed), before the ending forgets it.
            let refresh_token = live
                .as_ref()
                .and_then(|l| this.newest(Arc::clone(l)).0.session.rt.clone());
            let ended = match &live {
                // Ended before (a saved copy of its cookie logged out
                // again): nothing more to record, and no more of its
                // user's endings counted, which past their limit end every
                // session of theirs.
                Some(_) if ended_before => Ok(()),
                Some(live) => this.end(&live.session).await,
                None => match stored() {
                    // Ended before by its id (a saved copy of its cookie
                    // logged out again, its data gone with the first
                    // logout): nothing more to record, so replaying one
                    // cookie writes no revocation per request (with Redis,
                    // an announcement each, pushing replicas that lag past
                    // what the stream keeps into a reload).
                    Some(id) if this.ended_by_id(&id) => Ok(()),
                    Some(id) => {
                        let until = at(now() + this.0.config.absolute_timeout.as_secs());
                        this.end_id(id, until).await
                    }
                    None => return with_cookies(Reply::redirect(after), clear),
                },
            };
            if let Err(e) = ended {
                this.store_failed(
                    &e,
                    true,
                    "a logged-out session cannot be recorded as ended now: other replicas accept a saved copy of its cookie until the store records it (the Redis store writes it when Redis answers again, unless it stops first or is at its cap) or it times out",
                );
            }
            // A session kept in the store: its data (its refresh token
            // among them, sealed) goes too, rather than wait out its
            // absolute timeout there. Its revocation is what ends it; a
            // failure here leaves only data no cookie opens any longer.
            if let Some(id) = stored()
                && let Err(e) = this.0.store.remove(&id).await
            {
                tracing::debug!(target: LOG_TARGET, error = %e, "a logged-out session's data cannot be removed from the store now: it expires with the session");
            }
            // With `revoke_on_logout`, its refresh token is revoked at the
            // issuer (RFC 7009) when the issuer says where: the grant then
            // ends even if the browser never finishes the issuer's logout
            // (its confirmation page left), so a saved copy of the cookie
            // cannot be refreshed back to life where the store forgot its
            // ending (a memory store after a restart). Once per token here.
            let revocation = metadata
                .as_ref()
                .and_then(|m| m.revocation_endpoint.as_deref())
                .filter(|_| this.0.config.revoke_on_logout);
            if let (Some(endpoint), Some(refresh_token)) = (revocation, refresh_token.as_deref())
                && this.0.revoked_tokens.note(refresh_token)
                && let Err(TokenError::Refused(e) | TokenError::Unavailable(e)) = this
                    .0
                    .issuer
                    .revoke(&this.0.config, endpoint, refresh_token)
                    .await
            {
                if this.0.revocation_failing.due() {
                    tracing::warn!(target: LOG_TARGET, error = %e, "a logged-out session's refresh token cannot be revoked at the issuer: it ends here, and at the issuer when its session there ends or the token expires (said once a minute while it lasts)");
                } else {
                    tracing::debug!(target: LOG_TARGET, error = %e, "a logged-out session's refresh token cannot be revoked at the issuer");
                }
            }
            let id_token = live.as_ref().and_then(|l| l.session.it.as_deref());
            match &live {
                Some(live) => tracing::info!(target: LOG_TARGET, subject = ?live.session.sub, "logged out"),
                None => {
                    tracing::debug!(target: LOG_TARGET, "logged out of a stored session that could not be read (or was ended before)")
                }
            }
            let location = match metadata.as_ref().and_then(|m| m.end_session_endpoint.as_deref()) {
                Some(end) => {
                    let sep = if end.contains('?') { '&' } else { '?' };
                    let mut l = format!(
                        "{end}{sep}client_id={}&post_logout_redirect_uri={}",
                        form_encode(&this.0.config.client_id),
                        form_encode(&after)
                    );
                    if let Some(it) = id_token {
                        l.push_str("&id_token_hint=");
                        l.push_str(it);
                    }
                    l
                }
                None => after,
            };
            // The issuer's logout URL carries the ID token as its hint:
            // not sent on as a `Referer` by the page it leads to.
            with_cookies(Reply::redirect(location), clear).header("referrer-policy", "no-referrer")
        };
        match opened {
            None => Check::pending(finish(None)),
            Some(Check::Ready(live)) => Check::pending(finish(live)),
            Some(Check::Pending(fut)) => Check::pending(async move { finish(fut.await).await }),
        }
    }

    /// `backchannelLogoutPath`: OpenID Connect Back-Channel Logout 1.0.
    fn backchannel(&self, req: &dyn RequestHead) -> Reply {
        if req.method() != "POST" {
            return problem(405, "back-channel logout takes POST").header("allow", "POST");
        }
        let this = self.clone();
        Reply::after_body(BACKCHANNEL_BODY_LIMIT, move |body| {
            let this = this.clone();
            Check::pending(async move {
                let answer = match this.backchannel_logout(&body).await {
                    Ok(()) => return Reply::new(200).header("cache-control", "no-store"),
                    Err(LogoutRefused::Token(description)) => {
                        tracing::debug!(target: LOG_TARGET, reason = description, "a back-channel logout was refused");
                        description
                    }
                    // The issuer's logout is lost unless it sends it again
                    // (Keycloak does not): said aloud, once a minute.
                    Err(LogoutRefused::Here(description)) => {
                        if this.0.logout_unrecorded.due() {
                            tracing::error!(target: LOG_TARGET, reason = description, "a back-channel logout could not be taken now: the user's sessions here stay valid unless the issuer sends it again (said once a minute while it lasts)");
                        } else {
                            tracing::debug!(target: LOG_TARGET, reason = description, "a back-channel logout could not be taken now");
                        }
                        description
                    }
                };
                let body = serde_json::json!({"error": "invalid_request", "error_description": answer});
                Reply::new(400)
                    .header("cache-control", "no-store")
                    .with_body("application/json", body.to_string())
            })
        })
    }

    async fn backchannel_logout(&self, body: &[u8]) -> Result<(), LogoutRefused> {
        use LogoutRefused::{Here, Token};
        let form = std::str::from_utf8(body).map_err(|_| Token("the body is not a form"))?;
        if param_count(form, "logout_token") != 1 {
            return Err(Token("give exactly one logout_token"));
        }
        let token = param(form, "logout_token").ok_or(Token("the logout_token does not decode"))?;
        let identity = self.0.verifier.verify(&token).await.map_err(|e| {
            // The issuer's keys not had: no verdict on the token. (A `kid`
            // the key set still lacks after the verifier fetched it again
            // is the token's: anyone can send one.)
            if matches!(e, palisade_jwt::JwtError::KeysUnavailable) {
                Here("the issuer's keys cannot be had now: send it again")
            } else {
                Token("the logout token is not valid")
            }
        })?;
        // Typed as another kind of token (an access token's `at+jwt`),
        // it is not a logout token, whatever its claims (Back-Channel
        // Logout 1.0, 2.4: `logout+jwt`; an untyped one, or Keycloak's
        // older `JWT`, is taken).
        if jws_typ(&token).is_some_and(|typ| !is_logout_typ(&typ)) {
            return Err(Token("the token is typed as another kind than a logout token"));
        }
        let claims = identity.claims().ok_or(Token("the logout token has no claims"))?;
        if claims.contains_key("nonce") {
            return Err(Token("a logout token must not have a nonce"));
        }
        if !claims
            .get("events")
            .and_then(|e| e.get(BACKCHANNEL_EVENT))
            .is_some_and(Value::is_object)
        {
            return Err(Token("the logout token has no back-channel logout event"));
        }
        let t = now();
        match claims.get("iat").and_then(numeric_date) {
            Some(iat) if iat > t + 60 => return Err(Token("the logout token's iat is in the future")),
            // Older than its `jti` is remembered, it could be replayed.
            Some(iat) if iat + LOGOUT_TOKEN_MAX_AGE < t => return Err(Token("the logout token is too old")),
            Some(_) => {}
            None => return Err(Token("the logout token has no iat")),
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty())
            .ok_or(Token("the logout token has no jti"))?;
        let sid = claims
            .get("sid")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if sid.is_none() && sub.is_none() {
            return Err(Token("the logout token names neither sid nor sub"));
        }
        let c = &self.0.config;
        let used = format!("logout-jti:{}:{jti}", c.issuer);
        let fresh = self
            .0
            .store
            .use_once(&used, Duration::from_secs(LOGOUT_JTI_TTL))
            .await
            .map_err(|_| Here("logout tokens cannot be checked for replay now"))?;
        if !fresh {
            return Err(Token("the logout token was already used"));
        }
        let until = at(t + c.absolute_timeout.as_secs());
        // A session of the issuer's ended by its `sid`, one by one, while
        // its subject's endings are few ([`ENDINGS_PER_SUBJECT`]); else
        // every session of the subject begun before now.
        let one_by_one = |sub: Option<&str>| {
            sub.is_none_or(|sub| !self.0.endings.one_more(sub, now(), c.absolute_timeout.as_secs()))
        };
        let revocation = match (sid, sub) {
            (Some(sid), sub) if one_by_one(sub) => Revocation::Sid {
                issuer: c.issuer.clone(),
                sid: sid.to_owned(),
                // As a subject's ending: from the next millisecond on,
                // sessions of that `sid` are new ones.
                before: UNIX_EPOCH + Duration::from_millis(now_ms() + 1),
                until,
            },
            (_, Some(sub)) => self.subject_ended(sub),
            (_, None) => return Err(Token("the logout token names neither sid nor sub")),
        };
        let by_sid = matches!(revocation, Revocation::Sid { .. });
        let mut recorded = self.0.store.revoke(revocation).await;
        // A store full of single sessions' endings keeps room for a
        // subject's: the user's sessions begun before now (see `end`).
        if let (Err(crate::store::StoreError::Full { .. }), Some(sub)) = (&recorded, sub) {
            recorded = self.0.store.revoke(self.subject_ended(sub)).await;
        }
        // An issuer that does not say its ID tokens carry `sid` (Back-Channel
        // Logout 2.1) may have signed sessions in without one, which the
        // `sid` does not find: a token naming both ends the subject's
        // sessions too (2.7: by `iss` and `sub` and/or `sid`).
        let sid_in_id_tokens = self
            .0
            .issuer
            .metadata()
            .is_some_and(|m| m.backchannel_logout_session_supported);
        if let (true, Ok(()), Some(sub), false) = (by_sid, &recorded, sub, sid_in_id_tokens) {
            recorded = self.0.store.revoke(self.subject_ended(sub)).await;
        }
        if recorded.is_err() {
            // Not recorded for every replica: the token may be sent again
            // (its `jti` released) rather than be refused as a replay. A
            // token naming only `sub` then ends the sessions begun before
            // its second delivery: the safe side, as the issuer meant the
            // user's sessions to end.
            return Err(Here(match self.0.store.release(&used).await {
                Ok(()) => "the logout cannot be recorded now: send it again",
                Err(e) => {
                    self.store_failed(
                        &e,
                        false,
                        "a logout token that could not be recorded cannot be released either: the issuer's retry will be refused as a replay",
                    );
                    "the logout cannot be recorded now"
                }
            }));
        }
        tracing::info!(target: LOG_TARGET, by_sid = sid.is_some(), "sessions ended by back-channel logout");
        Ok(())
    }
}

impl Authenticator for SignIn {
    /// None beside another authenticator's: an API call of a guard that
    /// also takes bearer tokens is told `Bearer` ([`fallback_challenge`](Self::fallback_challenge)).
    fn challenge(&self) -> Option<String> {
        None
    }

    /// `externalOrigin`, when configured: the origin the service is
    /// reached by.
    fn own_origin(&self) -> Option<&str> {
        self.0.config.external_origin.as_deref()
    }

    /// `Bearer realm="CLIENT", Cookie realm="CLIENT", form-action="LOGIN
    /// PATH", cookie-name="…"` ([`sign_in_challenge`](palisade_core::authn::sign_in_challenge)):
    /// the 401 of a guard that signs browsers in and takes no other
    /// credential (an API call without a session) carries the `Bearer`
    /// challenge of a request without a credential and says where to sign
    /// in (sign-in takes no bearer token: one sent gets the same answer).
    fn fallback_challenge(&self) -> Option<String> {
        let c = &self.0.config;
        Some(palisade_core::authn::sign_in_challenge(
            &c.client_id,
            &c.login_path,
            &c.cookie_name,
        ))
    }

    /// The issuer's discovery document not loaded yet (a browser would
    /// get the 401 in place of the redirect to sign in), and the keys of
    /// its ID tokens ([`JwtAuthenticator`]'s).
    fn waiting_for(&self) -> Option<String> {
        let issuer = palisade_core::syntax::url_without_credentials(&self.0.config.issuer);
        if self.0.issuer.metadata().is_none() {
            return Some(format!("the discovery document of {issuer}"));
        }
        self.0.verifier.waiting_for()
    }

    /// Hot reload. Configured alike (every setting, secret, session key
    /// and store the same), the previous relying party itself, with its
    /// sessions seen and the refreshes it made. (Sessions and sign-ins in
    /// progress open after any reload whose keys still hold theirs, and the
    /// issuer's discovery document is shared by relying parties that call
    /// it alike: neither needs taking over.)
    fn take_over(&self, previous: &dyn Authenticator) -> Option<Arc<dyn Authenticator>> {
        let previous = (previous as &dyn std::any::Any).downcast_ref::<SignIn>()?;
        let (new, old) = (&*self.0, &*previous.0);
        (new.config == old.config && new.keys == old.keys && Arc::ptr_eq(&new.store, &old.store))
            .then(|| Arc::new(previous.clone()) as Arc<dyn Authenticator>)
    }

    fn method(&self) -> Option<palisade_core::AuthMethod> {
        Some(palisade_core::AuthMethod::Session)
    }

    fn authenticate(&self, req: &dyn RequestHead) -> Check<AuthOutcome> {
        let c = &self.0.config;
        let path = req.path();
        if path == c.callback_path {
            return self.callback(req).map(AuthOutcome::Respond);
        }
        if path == c.login_path {
            return Check::Ready(AuthOutcome::Respond(self.login(req)));
        }
        if path == c.logout_path {
            return self.logout(req).map(AuthOutcome::Respond);
        }
        if path == c.backchannel_path {
            return Check::Ready(AuthOutcome::Respond(self.backchannel(req)));
        }
        if c.session_path.as_deref() == Some(path) {
            return self.session_info(req).map(AuthOutcome::Respond);
        }
        let secure = self.secure(req);
        let Ok(parts) = self.sealer(secure).parts(req) else {
            return Check::Ready(AuthOutcome::NoCredential);
        };
        let chunks = parts.chunks;
        // A session seen before: compared in place, nothing joined.
        if let Some(live) = self.0.cache.get_parts(parts.len(), parts.iter()) {
            return self.admit(live, chunks, secure);
        }
        let Ok(value) = parts.join() else {
            return Check::Ready(AuthOutcome::NoCredential);
        };
        match self.open_session(&value, secure) {
            Check::Ready(Some(live)) => self.admit(live, chunks, secure),
            Check::Ready(None) => Check::Ready(AuthOutcome::NoCredential),
            Check::Pending(fut) => {
                let this = self.clone();
                Check::pending(async move {
                    match fut.await {
                        Some(live) => this.admit(live, chunks, secure).await,
                        None => AuthOutcome::NoCredential,
                    }
                })
            }
        }
    }

    fn sign_in(&self, req: &dyn RequestHead) -> Option<Reply> {
        // The three 503s below answer every request carrying a session that
        // cannot be used *now*, an API call as well as a page: a script
        // reads a 401 as "signed out" and sends the user to sign in, into
        // the outage.
        if let Some(reply) = self.store_not_answering(req) {
            return Some(reply);
        }
        // A whole session whose access token has expired and could not be
        // refreshed now (the issuer down or throttling, the replica that
        // claimed the refresh silent): sent to sign in, the browser would
        // lose its cookie, and the refresh token in it, for the outage.
        if self.renewal_not_now(req) {
            return Some(
                problem(
                    503,
                    "the session cannot be renewed now (the issuer does not answer); try again",
                )
                .header("retry-after", "5"),
            );
        }
        if !is_navigation(req) {
            return None;
        }
        let target = match req.query() {
            Some(q) => format!("{}?{q}", req.path()),
            None => req.path().to_owned(),
        };
        // When no sign-in can start (no discovery document yet, a `Host`
        // that is no host name), the guard's 401 and its challenges: a
        // guard that also takes bearer tokens answers as it would without
        // sign-in (`loginPath` says why with 503 or 400).
        self.start_sign_in(req, local_target(&target).as_deref().unwrap_or("/"), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::authn::OwnedRequest;

    /// A relying party of an issuer that never answers, sealing with `key`.
    fn offline(key: &CookieKey) -> SignIn {
        SignIn::builder("http://127.0.0.1:9", "shop")
            .keys(vec![key.clone()])
            .build()
            .unwrap()
    }

    /// The claim names a policy file refuses are refused in code too.
    #[test]
    fn a_roles_claim_naming_keycloaks_own_is_refused() {
        let key = CookieKey::new("k1", &[7; 32]).unwrap();
        let build = |f: &dyn Fn(SignInBuilder) -> SignInBuilder| {
            f(SignIn::builder("http://127.0.0.1:9", "shop").keys(vec![key.clone()])).build()
        };
        for f in [
            &(|b: SignInBuilder| b.roles_claim("realm_access")) as &dyn Fn(SignInBuilder) -> SignInBuilder,
            &|b| b.roles_claim("resource_access"),
            &|b| b.roles_claim(""),
            &|b| b.principal_claim(""),
        ] {
            assert!(matches!(build(f), Err(SignInError::Config(_))));
        }
        assert!(build(&|b| b.roles_claim("groups").principal_claim("email")).is_ok());
    }

    #[test]
    fn a_reload_takes_over_the_relying_party_configured_alike_only() {
        let key = CookieKey::new("k1", &[7; 32]).unwrap();
        let build = |f: &dyn Fn(SignInBuilder) -> SignInBuilder| {
            f(SignIn::builder("http://127.0.0.1:9", "shop")
                .client_secret("s1", SecretMethod::Basic)
                .keys(vec![key.clone()]))
            .build()
            .unwrap()
        };
        let old = build(&|b| b);
        // Whether a reload to `new` keeps the old relying party itself, and
        // whether `new` calls the issuer through the old one's discovery.
        let taken = |new: &SignIn| {
            let kept = new.take_over(&old).is_some_and(|next| {
                (next.as_ref() as &dyn std::any::Any)
                    .downcast_ref::<SignIn>()
                    .is_some_and(|next| Arc::ptr_eq(&next.0, &old.0))
            });
            (kept, Arc::ptr_eq(&new.0.issuer, &old.0.issuer))
        };
        // Alike: the old one itself, with what it has seen.
        assert_eq!(taken(&build(&|b| b)), (true, true));
        // Else the old discovery document, when the issuer is reached alike.
        for (what, change) in [
            (
                "a secret",
                (|b| b.client_secret("s2", SecretMethod::Basic)) as fn(SignInBuilder) -> SignInBuilder,
            ),
            ("a key", |b| b.keys(vec![CookieKey::new("k1", &[8; 32]).unwrap()])),
            ("a scope", |b| b.scopes(["openid", "email"])),
            ("the idle timeout", |b| b.idle_timeout(Duration::from_secs(60))),
        ] {
            assert_eq!(taken(&build(&change)), (false, true), "{what}");
        }
        assert_eq!(
            taken(&build(&|b| b.timeout(Duration::from_secs(2)))),
            (false, false)
        );
        let other = SignIn::builder("http://127.0.0.1:9/realms/other", "shop")
            .keys(vec![key.clone()])
            .build()
            .unwrap();
        assert_eq!(taken(&other), (false, false));
    }

    /// `iat` is a NumericDate, which may have a fraction (as the JWT
    /// verifier reads it): an ID token's and a logout token's are read so.
    #[test]
    fn an_iat_with_a_fraction_is_a_date() {
        let sign_in = offline(&CookieKey::new("k1", &[1; 32]).unwrap());
        let claims = |iat: Value| {
            let mut claims = Map::new();
            claims.insert("iat".into(), iat);
            claims
        };
        let t = now();
        assert_eq!(
            sign_in.check_id_claims(&claims(serde_json::json!(t as f64 + 0.5)), 1),
            Ok(())
        );
        assert_eq!(sign_in.check_id_claims(&claims(serde_json::json!(t)), 1), Ok(()));
        for bad in [
            serde_json::json!(-1.5),
            serde_json::json!("1700000000"),
            serde_json::json!(null),
        ] {
            assert!(sign_in.check_id_claims(&claims(bad.clone()), 1).is_err(), "{bad}");
        }
        assert_eq!(
            numeric_date(&serde_json::json!(1_700_000_000.9)),
            Some(1_700_000_000)
        );
    }

    /// A user who signs in and out in a loop has sessions ended one by one
    /// only up to [`ENDINGS_PER_SUBJECT`]; then each ending ends all the
    /// user's sessions begun before it, in one revocation. So the loop
    /// cannot fill the store's revocations, and others' logouts are still
    /// recorded; every session ended stays ended.
    #[tokio::test]
    async fn a_sign_in_and_out_loop_cannot_fill_the_stores_revocations() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let store = Arc::new(crate::store::MemoryStore::with_max_entries(20));
        let sign_in = SignIn::builder("http://127.0.0.1:9/realms/loop", "shop")
            .keys(vec![key])
            .store(store.clone())
            .build()
            .unwrap();
        // A budget the store's 20 can show.
        sign_in
            .0
            .endings
            .budget
            .store(16, std::sync::atomic::Ordering::Relaxed);
        let session = |sub: &str, n: u64| Session {
            id: format!("{sub}-{n}"),
            sub: sub.into(),
            created_ms: now_ms() - 1000 + n,
            ..alice()
        };
        let revoked = |s: &Session| {
            let r = crate::store::SessionRef {
                id: &s.id,
                issuer: "http://127.0.0.1:9/realms/loop",
                subject: &s.sub,
                sid: None,
                created: UNIX_EPOCH + Duration::from_millis(s.created_ms),
            };
            store.is_revoked(&r).unwrap()
        };
        let ended: Vec<Session> = (0..100).map(|n| session("mallory", n)).collect();
        for s in &ended {
            sign_in.end(s).await.expect("recorded");
        }
        assert!(ended.iter().all(revoked), "every session ended stays ended");
        let bob = session("bob", 0);
        assert!(!revoked(&bob));
        sign_in
            .end(&bob)
            .await
            .expect("another user's logout is recorded");
        assert!(revoked(&bob));
    }

    /// Many users' logouts, each within its budget, fill an in-memory
    /// store's single-session endings: a later logout still ends its
    /// session, as every session of its user begun before it (the room the
    /// store keeps for that), rather than failing and ending nothing
    /// elsewhere.
    #[tokio::test]
    async fn a_logout_still_ends_its_session_when_the_store_is_full_of_others() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let store = Arc::new(crate::store::MemoryStore::with_max_entries(20));
        let sign_in = SignIn::builder("http://127.0.0.1:9/realms/full", "shop")
            .keys(vec![key])
            .store(store.clone())
            .build()
            .unwrap();
        let session = |sub: String| Session {
            id: format!("{sub}-1"),
            sub,
            created_ms: now_ms() - 1000,
            ..alice()
        };
        let revoked = |s: &Session| {
            let r = crate::store::SessionRef {
                id: &s.id,
                issuer: "http://127.0.0.1:9/realms/full",
                subject: &s.sub,
                sid: None,
                created: UNIX_EPOCH + Duration::from_millis(s.created_ms),
            };
            store.is_revoked(&r).unwrap()
        };
        for n in 0..18 {
            sign_in.end(&session(format!("user{n}"))).await.expect("recorded");
        }
        let late = session("late".into());
        sign_in.end(&late).await.expect("recorded as its user's ending");
        assert!(revoked(&late));
    }

    /// One copy of a user's cookie logged out again and again (by anyone
    /// holding it) counts as one ending of that user's sessions, not one
    /// per logout: past the budget, an ending ends every session of the
    /// user, which would log them out on every device. Each logout still
    /// clears the cookie and goes to the issuer.
    #[tokio::test]
    async fn one_cookie_logged_out_again_and_again_ends_no_other_session() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let store = Arc::new(crate::store::MemoryStore::default());
        let sign_in = SignIn::builder("http://127.0.0.1:9/realms/again", "shop")
            .keys(vec![key.clone()])
            .store(store.clone())
            .build()
            .unwrap();
        sign_in
            .0
            .endings
            .budget
            .store(3, std::sync::atomic::Ordering::Relaxed);
        let phone = Session {
            id: "phone".into(),
            created_ms: now_ms() - 5_000,
            ..alice()
        };
        let laptop = Session {
            id: "laptop".into(),
            created_ms: now_ms() - 4_000,
            ..alice()
        };
        let cookie = session_cookie(key, &Payload::Inline(laptop));
        for _ in 0..10 {
            let reply = logged_out(&sign_in, &cookie).await;
            assert_eq!(reply.status(), 302);
            assert!(
                reply.headers().any(|(n, _)| n == "set-cookie"),
                "the cookie is cleared"
            );
        }
        let revoked = |id: &str, created_ms: u64| {
            store
                .is_revoked(&crate::store::SessionRef {
                    id,
                    issuer: "http://127.0.0.1:9/realms/again",
                    subject: "alice",
                    sid: None,
                    created: UNIX_EPOCH + Duration::from_millis(created_ms),
                })
                .unwrap()
        };
        assert!(
            revoked("laptop", now_ms() - 4_000),
            "the session logged out is ended"
        );
        assert!(
            !revoked(&phone.id, phone.created_ms),
            "the user's other session lives"
        );
    }

    /// A hot reload that changes a setting builds a new relying party,
    /// which still knows the refreshes the old one made: a request with
    /// the cookie a refresh replaced is renewed with its tokens rather
    /// than sending the issuer the spent refresh token again. Another
    /// client's relying party knows none.
    #[tokio::test]
    async fn a_reload_that_changes_a_setting_keeps_the_refreshes_made() {
        // An issuer that never answers, of this test only: a refresh
        // tried is refused.
        const ISSUER: &str = "http://127.0.0.1:9/realms/reloaded";
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let build = |client: &str, scope: &str| {
            SignIn::builder(ISSUER, client)
                .keys(vec![key.clone()])
                .scopes(["openid", scope])
                .build()
                .unwrap()
        };
        let old = build("shop", "email");
        let refreshed = Session {
            at: "at-1".into(),
            rt: Some("refresh-1".into()),
            generation: 1,
            ..alice()
        };
        old.0.refreshes.successors.insert(Arc::new(Live::new(
            refreshed,
            ISSUER,
            &crate::session::ClaimNames::default(),
            None,
        )));
        let replaced = Session {
            rt: Some("refresh-0".into()),
            ..due()
        };
        let renewed = async |sign_in: &SignIn| {
            let req = OwnedRequest::get("/page").header(
                "cookie",
                session_cookie(key.clone(), &Payload::Inline(replaced.clone())),
            );
            let outcome = match sign_in.authenticate(&req) {
                Check::Ready(outcome) => outcome,
                Check::Pending(renewal) => renewal.await,
            };
            match outcome {
                AuthOutcome::Authenticated(a) => a
                    .attachments
                    .get::<palisade_core::authn::BearerToken>()
                    .map(|t| t.as_str().to_owned()),
                _ => None,
            }
        };
        let new = build("shop", "profile");
        assert_eq!(renewed(&new).await.as_deref(), Some("at-1"));
        let another_client = build("kiosk", "profile");
        assert_ne!(renewed(&another_client).await.as_deref(), Some("at-1"));
        drop(old);
    }

    /// A readiness probe waits for the issuer's discovery document and its
    /// keys; an issuer that does not answer is waited for.
    #[tokio::test]
    async fn a_readiness_probe_waits_for_the_issuers_discovery_and_keys() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nowhere = format!("http://{}/realms/down", silent.local_addr().unwrap());
        let down = SignIn::builder(&nowhere, "web")
            .keys(vec![CookieKey::new("k1", &[1; 32]).unwrap()])
            .build()
            .unwrap();
        assert_eq!(
            down.waiting_for(),
            Some(format!("the discovery document of {nowhere}"))
        );
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let up = SignIn::builder(issuer.issuer(), "web")
            .keys(vec![CookieKey::new("k1", &[1; 32]).unwrap()])
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        while up.waiting_for().is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{:?}",
                up.waiting_for()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(down.waiting_for().is_some());
    }

    /// A trusted origin's page may be returned to after sign-in, whole;
    /// no other origin's, however its URL is dressed (user information, a
    /// longer host, another scheme, `//`). A logout a trusted origin's
    /// page posts is taken; another origin's is asked to confirm, and
    /// without trusted origins so is every one but this origin's.
    #[tokio::test]
    async fn a_trusted_origin_is_returned_to_and_its_logout_taken() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let build = |trusted: Option<&str>| {
            let mut b = SignIn::builder("http://127.0.0.1:9", "shop")
                .keys(vec![key.clone()])
                .store(Arc::new(MemoryStore::new()));
            if let Some(t) = trusted {
                b = b.trusted_origin(t);
            }
            b.build().unwrap()
        };
        let trusting = build(Some("https://APP.shop.example:443"));
        let plain = build(None);
        let page = "https://app.shop.example/orders?x=1#top";
        assert_eq!(trusting.return_target(page).as_deref(), Some(page));
        assert_eq!(trusting.return_target("/p").as_deref(), Some("/p"));
        for other in [
            "https://evil.example/",
            "https://app.shop.example@evil.example/",
            "https://app.shop.example.evil.example/",
            "http://app.shop.example/",
            "//app.shop.example/",
            "https://app.shop.example/a b",
        ] {
            assert_eq!(trusting.return_target(other), None, "{other}");
        }
        assert_eq!(plain.return_target(page), None);
        // `loginPath` refuses an untrusted page at once (400); a trusted
        // one goes on (here to the 503 of an issuer not discovered yet).
        let login = |sign_in: &SignIn, to: &str| {
            let req = OwnedRequest::get(&format!("/login?return_to={}", form_encode(to)))
                .header("host", "api.shop.example");
            sign_in.login(&req).status()
        };
        assert_eq!(login(&plain, page), 400);
        assert_eq!(login(&trusting, "https://evil.example/"), 400);
        assert_ne!(login(&trusting, page), 400);
        let logout = |sign_in: &SignIn, origin: &str| {
            let req = OwnedRequest::new("POST", "/oauth2/logout")
                .header("host", "api.shop.example")
                .header("sec-fetch-site", "same-site")
                .header("origin", origin);
            sign_in.logout(&req)
        };
        let status = |check: Check<Reply>| async move {
            match check {
                Check::Ready(r) => r.status(),
                Check::Pending(f) => f.await.status(),
            }
        };
        let taken = status(logout(&trusting, "https://app.shop.example")).await;
        assert_eq!(taken, 302, "taken");
        let other = status(logout(&trusting, "https://blog.shop.example")).await;
        assert_eq!(other, 200, "asked to confirm");
        let untrusted = status(logout(&plain, "https://app.shop.example")).await;
        assert_eq!(untrusted, 200, "asked to confirm");
        assert!(
            SignIn::builder("http://127.0.0.1:9", "shop")
                .keys(vec![key.clone()])
                .trusted_origin("https://app.shop.example/path")
                .build()
                .is_err()
        );
    }

    /// Waits for `sign_in`'s discovery, which runs on a thread of its own
    /// (10 s at most).
    async fn discovered(sign_in: &SignIn) {
        let start = std::time::Instant::now();
        while sign_in.0.issuer.metadata().is_none() {
            assert!(start.elapsed() < Duration::from_secs(10), "no discovery");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Alice's session `s1`, seen now, its access token `at-0` good for an
    /// hour: what a test makes its own from.
    fn alice() -> Session {
        let t = now();
        Session {
            v: 1,
            id: "s1".into(),
            sub: "alice".into(),
            sid: None,
            created_ms: now_ms(),
            seen: t,
            at: "at-0".into(),
            at_exp: t + 3600,
            at_got: t,
            rt: None,
            it: None,
            generation: 0,
            store_key: None,
        }
    }

    #[tokio::test]
    async fn a_rebuilt_relying_party_remembers_what_the_one_it_replaces_used() {
        let first = shared_memory_store("https://idp.example", "shop");
        let again = shared_memory_store("https://idp.example", "shop");
        let other = shared_memory_store("https://idp.example", "another-client");
        assert!(
            first
                .use_once("logout-jti", Duration::from_secs(60))
                .await
                .unwrap()
        );
        // A logout token (or code) used before a reload stays used after it.
        assert!(
            !again
                .use_once("logout-jti", Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert!(
            other
                .use_once("logout-jti", Duration::from_secs(60))
                .await
                .unwrap()
        );
    }

    /// The `name=value` pair of a plain-HTTP session cookie holding
    /// `payload`, sealed with `key`.
    fn session_cookie(key: CookieKey, payload: &Payload) -> String {
        let sealer = CookieSealer::builder("palisade_session", vec![key])
            .secure(false)
            .build()
            .unwrap();
        let plaintext = serde_json::to_vec(payload).unwrap();
        sealer.seal(&plaintext, None, 0).unwrap()[0]
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    /// A memory store that fails as a shared one that is briefly
    /// unreachable does: its first revocations, or every read of session
    /// data.
    #[derive(Default)]
    struct Flaky {
        store: MemoryStore,
        /// How many revocations fail, from the first.
        revocations_failing: std::sync::atomic::AtomicUsize,
        reads_fail: bool,
        revocations_unknown: bool,
        /// Whether `use_once` (a refresh's claim) fails.
        claims_fail: bool,
        /// How many revocations were asked for.
        revokes: std::sync::atomic::AtomicUsize,
        /// How many of the first reads of session data find nothing (as if
        /// another replica had not written it yet).
        hidden_gets: std::sync::atomic::AtomicUsize,
        /// The time-to-live of every `use_once` (a refresh's claim).
        claim_ttls: std::sync::Mutex<Vec<Duration>>,
    }

    type StoreResult<T> = palisade_core::BoxFuture<Result<T, crate::store::StoreError>>;

    impl SessionStore for Flaky {
        fn revoke(&self, revocation: Revocation) -> StoreResult<()> {
            self.revokes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self
                .revocations_failing
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                return Box::pin(std::future::ready(Err(crate::store::StoreError::Unavailable)));
            }
            self.store.revoke(revocation)
        }
        fn is_revoked(&self, session: &SessionRef<'_>) -> Result<bool, crate::store::StoreError> {
            if self.revocations_unknown {
                return Err(crate::store::StoreError::Unavailable);
            }
            self.store.is_revoked(session)
        }
        fn use_once(&self, key: &str, ttl: Duration) -> StoreResult<bool> {
            if self.claims_fail {
                return Box::pin(std::future::ready(Err(crate::store::StoreError::Unavailable)));
            }
            self.claim_ttls.lock().unwrap().push(ttl);
            self.store.use_once(key, ttl)
        }
        fn put(&self, id: &str, data: Vec<u8>, ttl: Duration) -> StoreResult<()> {
            self.store.put(id, data, ttl)
        }
        fn put_session(&self, id: &str, generation: u32, data: Vec<u8>, ttl: Duration) -> StoreResult<bool> {
            self.store.put_session(id, generation, data, ttl)
        }
        fn get(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
            if self.reads_fail {
                return Box::pin(std::future::ready(Err(crate::store::StoreError::Unavailable)));
            }
            let hidden = self.hidden_gets.fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            );
            if hidden.is_ok() {
                return Box::pin(std::future::ready(Ok(None)));
            }
            self.store.get(id)
        }
        fn remove(&self, id: &str) -> StoreResult<()> {
            self.store.remove(id)
        }
        fn release(&self, key: &str) -> StoreResult<()> {
            self.store.release(key)
        }
    }

    /// A store that cannot record logouts is said at error level once a
    /// minute, not once per logout: any client with a session cookie can
    /// send one.
    #[tokio::test]
    async fn logouts_the_store_cannot_record_are_said_once_a_minute() {
        if !palisade_testkit::in_a_process_of_its_own(
            "flow::tests::logouts_the_store_cannot_record_are_said_once_a_minute",
        ) {
            return;
        }
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("debug");
        let _subscriber = tracing::subscriber::set_default(subscriber);
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let store = Arc::new(Flaky {
            revocations_failing: std::sync::atomic::AtomicUsize::new(3),
            ..Flaky::default()
        });
        let sign_in = SignIn::builder(issuer.issuer(), "shop")
            .keys(vec![key.clone()])
            .store(store)
            .build()
            .unwrap();
        discovered(&sign_in).await;
        let cookie = session_cookie(key, &Payload::Inline(alice()));
        for _ in 0..3 {
            assert_eq!(logged_out(&sign_in, &cookie).await.status(), 302);
        }
        let unrecorded = lines.containing("a logged-out session cannot be recorded as ended now");
        assert_eq!(unrecorded.len(), 3, "{unrecorded:?}");
        assert!(
            unrecorded[0].contains("ERROR") && unrecorded[0].contains("once a minute"),
            "{unrecorded:?}"
        );
        assert!(
            unrecorded[1..].iter().all(|l| l.contains("DEBUG")),
            "{unrecorded:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_logout_of_a_stored_session_the_store_cannot_read_still_ends_it_here_and_at_the_issuer() {
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let store = Arc::new(Flaky {
            reads_fail: true,
            ..Flaky::default()
        });
        let (sign_in, cookie) = with_a_stored_session(&issuer, &store).await;
        store
            .store
            .put("stored-1", b"sealed".to_vec(), Duration::from_secs(600))
            .await
            .unwrap();
        let reply = logged_out(&sign_in, &cookie).await;
        assert_eq!(reply.status(), 302);
        let location = reply
            .headers()
            .find(|(n, _)| *n == "location")
            .map(|(_, v)| v.to_owned())
            .unwrap();
        assert!(
            location.contains("client_id=shop"),
            "sent to the issuer's end-session endpoint: {location}"
        );
        assert!(!location.contains("id_token_hint"), "{location}");
        let session = SessionRef {
            id: "stored-1",
            issuer: issuer.issuer(),
            subject: "alice",
            sid: None,
            created: std::time::SystemTime::now(),
        };
        assert!(matches!(store.is_revoked(&session), Ok(true)), "ended by its id");
        assert_eq!(
            store.store.get("stored-1").await.unwrap(),
            None,
            "its data is removed from the store"
        );
    }

    /// A stored session's cookie logged out again and again, its data
    /// gone with the first logout: its ending is recorded once, not once
    /// per logout (with Redis, a stream announcement each).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stored_sessions_cookie_logged_out_again_records_its_ending_once() {
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let store = Arc::new(Flaky::default());
        let (sign_in, cookie) = with_a_stored_session(&issuer, &store).await;
        for _ in 0..5 {
            assert_eq!(logged_out(&sign_in, &cookie).await.status(), 302);
        }
        assert_eq!(store.revokes.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_login_path_keeps_the_session_a_navigation_refused_for_want_of_one_clears() {
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let sign_in = SignIn::builder(issuer.issuer(), "shop")
            .keys(vec![key.clone()])
            .build()
            .unwrap();
        discovered(&sign_in).await;
        let session = alice();
        let cookie = session_cookie(key, &Payload::Inline(session));
        let clears_session = |reply: &Reply| {
            reply
                .headers()
                .any(|(n, v)| n == "set-cookie" && v.starts_with("palisade_session=;"))
        };
        // Any site can send a browser to `loginPath`: the session stays
        // until a sign-in replaces it.
        let login = OwnedRequest::get("/login?return_to=%2Fx")
            .header("host", "app.test")
            .header("sec-fetch-mode", "navigate")
            .header("cookie", cookie.clone());
        let Check::Ready(AuthOutcome::Respond(reply)) = sign_in.authenticate(&login) else {
            panic!("loginPath is answered at once")
        };
        assert_eq!(reply.status(), 302);
        assert!(
            !clears_session(&reply),
            "{:?}",
            reply.headers().collect::<Vec<_>>()
        );
        // A navigation sent to sign in carries a session that does not do.
        let page = OwnedRequest::get("/page")
            .header("host", "app.test")
            .header("sec-fetch-mode", "navigate")
            .header("cookie", cookie);
        let reply = sign_in.sign_in(&page).expect("a redirect");
        assert_eq!(reply.status(), 302);
        assert!(
            clears_session(&reply),
            "{:?}",
            reply.headers().collect::<Vec<_>>()
        );
    }

    /// Extra authorization parameters follow the sign-in's own, encoded;
    /// one the sign-in sets itself is refused when it is built.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn extra_authorization_parameters_go_with_the_redirect() {
        let (sign_in, _) = refreshing_at_with("200 OK", "{}", |b| {
            b.authorization_param("audience", "https://orders.example/api")
                .authorization_param("access_type", "offline")
        })
        .await;
        let page = OwnedRequest::get("/page")
            .header("host", "app.test")
            .header("sec-fetch-mode", "navigate");
        let reply = sign_in.sign_in(&page).expect("a redirect");
        let location = reply
            .headers()
            .find(|(name, _)| name.eq_ignore_ascii_case("location"))
            .map(|(_, value)| value.to_owned())
            .unwrap();
        assert!(
            location.ends_with(
                "&code_challenge_method=S256&audience=https%3A%2F%2Forders.example%2Fapi&access_type=offline"
            ),
            "{location}"
        );
        let built = |params: &[(&str, &str)]| {
            params
                .iter()
                .fold(
                    SignIn::builder("http://127.0.0.1:9", "shop")
                        .keys(vec![CookieKey::new("k1", &[1; 32]).unwrap()]),
                    |b, (name, value)| b.authorization_param(*name, *value),
                )
                .build()
        };
        for params in [
            &[("nonce", "x")][..],
            &[("Nonce", "x")],
            &[("state", "x")],
            &[("redirect_uri", "x")],
            &[("scope", "x")],
            &[("response_mode", "form_post")],
            &[("", "x")],
            &[("acr_values", "mfa")],
            &[("max_age", "0")],
            &[("prompt", "none")],
            &[("audience", "a"), ("Audience", "b")],
        ] {
            assert!(matches!(built(params), Err(SignInError::Config(_))), "{params:?}");
        }
        assert!(built(&[("prompt", "login consent"), ("login_hint", "alice")]).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_the_store_cannot_vouch_for_is_answered_503_not_sent_round_to_sign_in() {
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let relying_party = |revocations_unknown: bool| {
            let store = Flaky {
                revocations_unknown,
                ..Flaky::default()
            };
            SignIn::builder(issuer.issuer(), "shop")
                .keys(vec![key.clone()])
                .store(Arc::new(store))
                .build()
                .unwrap()
        };
        let (down, up) = (relying_party(true), relying_party(false));
        discovered(&down).await;
        discovered(&up).await;
        let session = alice();
        let page = OwnedRequest::get("/page")
            .header("host", "app.test")
            .header("sec-fetch-mode", "navigate");
        let with_cookie = page
            .clone()
            .header("cookie", session_cookie(key.clone(), &Payload::Inline(session)));
        let Check::Ready(AuthOutcome::NoCredential) = down.authenticate(&with_cookie) else {
            panic!("a session whose revocations cannot be read is accepted")
        };
        let reply = down.sign_in(&with_cookie).expect("an answer");
        assert_eq!(reply.status(), 503);
        assert!(reply.headers().any(|(n, v)| n == "retry-after" && v == "5"));
        assert!(
            !reply.headers().any(|(n, _)| n == "set-cookie"),
            "the browser keeps its cookie"
        );
        // An API call too (a 401 would send a script's user to sign in).
        let api = OwnedRequest::get("/api")
            .header("host", "app.test")
            .header("sec-fetch-mode", "cors")
            .header("cookie", session_cookie(key.clone(), &Payload::Inline(alice())));
        assert_eq!(down.sign_in(&api).expect("an answer").status(), 503);
        // A cookie of the session's name that this service did not seal (of
        // another key under the same id) is no session: bad input, not the
        // outage's 503.
        let other_key = CookieKey::new("k1", &[2; 32]).unwrap();
        let forged = OwnedRequest::get("/api")
            .header("host", "app.test")
            .header("sec-fetch-mode", "cors")
            .header("cookie", session_cookie(other_key, &Payload::Inline(alice())));
        assert!(down.sign_in(&forged).is_none(), "the 401");
        // Without a cookie, and with a store that answers, sign-in as ever.
        assert_eq!(down.sign_in(&page).expect("a redirect").status(), 302);
        let Check::Ready(AuthOutcome::Authenticated(_)) = up.authenticate(&with_cookie) else {
            panic!("the session is refused by a store that answers")
        };
    }

    /// A navigation with a stored session's cookie whose data the store
    /// cannot give back now (a Redis command that failed) is answered 503
    /// with `Retry-After`, keeping its cookie, rather than sent to sign in
    /// (which would replace the session for a blip).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stored_session_the_store_cannot_read_now_is_answered_503() {
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let store = Arc::new(Flaky {
            reads_fail: true,
            ..Flaky::default()
        });
        let (sign_in, cookie) = with_a_stored_session(&issuer, &store).await;
        let page = OwnedRequest::get("/page")
            .header("host", "app.test")
            .header("sec-fetch-mode", "navigate");
        let with_cookie = page.clone().header("cookie", cookie);
        let Check::Pending(read) = sign_in.authenticate(&with_cookie) else {
            panic!("a stored session is read")
        };
        assert!(matches!(read.await, AuthOutcome::NoCredential));
        let reply = sign_in.sign_in(&with_cookie).expect("an answer");
        assert_eq!(reply.status(), 503, "{reply:?}");
        assert!(reply.headers().any(|(n, v)| n == "retry-after" && v == "5"));
        assert!(
            !reply.headers().any(|(n, _)| n == "set-cookie"),
            "the cookie is kept"
        );
        assert_eq!(
            sign_in.sign_in(&page).expect("a redirect").status(),
            302,
            "without it, sign-in"
        );
    }

    /// Alice's session `stored-1` at `generation`, its access token
    /// `at-GENERATION-…` (too large for cookies) expired `expired` (else
    /// good for an hour), sealed as the store keeps it with `key`.
    fn stored_generation(generation: u32, expired: bool, key: &str) -> (Session, Vec<u8>) {
        let session = Session {
            id: "stored-1".into(),
            at: format!("at-{generation}-{}", "x".repeat(40_000)),
            ..alice_at(generation, expired)
        };
        let inline = serde_json::to_vec(&Payload::Inline(session.clone())).unwrap();
        let sealed = seal_stored("stored-1", &inline, key).unwrap();
        (session, sealed)
    }

    /// The generation of the session the store holds under `stored-1`.
    async fn stored_generation_held(store: &Flaky, key: &str) -> u32 {
        let data = store.store.get("stored-1").await.unwrap().expect("stored");
        let Ok(Payload::Inline(held)) = serde_json::from_slice(&open_stored("stored-1", key, data).unwrap())
        else {
            panic!("a session")
        };
        held.generation
    }

    /// Replicas sharing a store, a session too large for cookies in it
    /// (its cookie names the stored data, not a generation): a replica
    /// that read the session before another refreshed it never writes the
    /// older copy back (renewing its idle timeout, say), which would send
    /// every replica back to a refresh token the issuer had rotated; and
    /// once its own copy's tokens expired, it takes the later one the store
    /// holds rather than refresh with its spent token (which would end the
    /// session), though the successor handed on is gone from the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_never_puts_back_or_refreshes_an_older_copy_of_a_stored_session() {
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let store = Arc::new(Flaky::default());
        let (sign_in, _) = with_a_stored_session(&issuer, &store).await;
        let store_key = new_store_key().unwrap();
        let (first, _) = stored_generation(1, true, &store_key);
        let (_, later) = stored_generation(2, false, &store_key);
        store
            .put_session("stored-1", 2, later, Duration::from_secs(600))
            .await
            .unwrap();
        let mut first = Session {
            store_key: Some(Arc::clone(&store_key)),
            ..first
        };
        first.seen = now();
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let reference = sign_in.seal(&first, 0, false).await.expect("sealed");
        assert_eq!(reference.len(), 1, "a reference to the store");
        assert_eq!(
            stored_generation_held(&store, &store_key).await,
            2,
            "not put back"
        );

        // This replica's cache holds generation 1, its token expired.
        let cookie = session_cookie(
            key,
            &Payload::Stored {
                id: "stored-1".into(),
                key: Some(store_key.to_string()),
            },
        );
        let raw = cookie.strip_prefix("palisade_session=").unwrap();
        let live = Arc::new(Live::new(
            first,
            issuer.issuer(),
            &crate::session::ClaimNames::default(),
            None,
        ));
        sign_in.0.cache.insert(raw, live, Duration::from_secs(600));
        let request = OwnedRequest::get("/page")
            .header("host", "app.test")
            .header("cookie", cookie);
        let Check::Pending(renewal) = sign_in.authenticate(&request) else {
            panic!("an expired token is refreshed")
        };
        let AuthOutcome::Authenticated(a) = renewal.await else {
            panic!("the session ended")
        };
        let token = a.attachments.get::<palisade_core::authn::BearerToken>().unwrap();
        assert!(token.as_str().starts_with("at-2-"), "the store's later copy");
    }

    /// Alice's session at `generation` (refresh token
    /// `refresh-token-of-GENERATION`, access token `at-GENERATION`), that token
    /// expired when `expired`.
    fn alice_at(generation: u32, expired: bool) -> Session {
        Session {
            at: format!("at-{generation}"),
            at_exp: if expired { now() - 1 } else { now() + 3600 },
            rt: Some(format!("refresh-token-of-{generation}")),
            generation,
            ..alice()
        }
    }

    /// Replicas sharing `store`: a request of this one with a cookie of
    /// alice's first generation, expired, whose refresh another replica
    /// made (generation 2, handed on through the store); the access token
    /// the request goes with, or `None` when the session ended.
    async fn refreshed_elsewhere(issuer: &palisade_testkit::TestIssuer, store: Arc<Flaky>) -> Option<String> {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let sign_in = SignIn::builder(issuer.issuer(), "shop")
            .keys(vec![key.clone()])
            .store(store as Arc<dyn SessionStore>)
            .build()
            .unwrap();
        discovered(&sign_in).await;
        let first = alice_at(1, true);
        sign_in.hand_on(&first, &alice_at(2, false)).await;
        let request = OwnedRequest::get("/page")
            .header("host", "app.test")
            .header("cookie", session_cookie(key, &Payload::Inline(first)));
        let Check::Pending(refresh) = sign_in.authenticate(&request) else {
            panic!("an expired token is refreshed")
        };
        match refresh.await {
            AuthOutcome::Authenticated(a) => Some(
                a.attachments
                    .get::<palisade_core::authn::BearerToken>()
                    .unwrap()
                    .as_str()
                    .to_owned(),
            ),
            _ => None,
        }
    }

    /// A replica's claim on a refresh is a lease past the longest its
    /// refresh and the others' waits take (25 s with the default issuer
    /// timeout), not minutes: a replica stopped mid-refresh holds up the
    /// session's requests elsewhere no longer. A replica that claims a
    /// refresh once the last claim lapsed looks for the successor handed on
    /// meanwhile before it asks the issuer; and one whose refresh the issuer
    /// refuses (that successor's replica spent the token) takes it rather
    /// than end the session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_lapses_soon_and_whoever_claims_next_takes_the_successor_handed_on() {
        let issuer = palisade_testkit::TestIssuer::builder()
            .public_client("shop")
            .start()
            .unwrap();
        // The successor is not seen before the claim: asked for after it.
        let store = Arc::new(Flaky {
            hidden_gets: std::sync::atomic::AtomicUsize::new(1),
            ..Flaky::default()
        });
        let asked = issuer.token_requests();
        let token = refreshed_elsewhere(&issuer, Arc::clone(&store)).await;
        assert_eq!(token.as_deref(), Some("at-2"));
        assert_eq!(issuer.token_requests(), asked, "the issuer is not asked");
        let ttls = store.claim_ttls.lock().unwrap().clone();
        assert_eq!(ttls, [Duration::from_secs(25)], "one claim, a lease");

        // Nor after the claim: the issuer refuses the spent token.
        let store = Arc::new(Flaky {
            hidden_gets: std::sync::atomic::AtomicUsize::new(2),
            ..Flaky::default()
        });
        let token = refreshed_elsewhere(&issuer, store).await;
        assert_eq!(issuer.token_requests(), asked + 1, "the issuer is asked");
        assert_eq!(token.as_deref(), Some("at-2"), "the session goes on");
    }

    /// A relying party of `issuer` keeping its sessions in `store`,
    /// discovered, and the cookie of a session it stored (`stored-1`).
    async fn with_a_stored_session(
        issuer: &palisade_testkit::TestIssuer,
        store: &Arc<Flaky>,
    ) -> (SignIn, String) {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let sign_in = SignIn::builder(issuer.issuer(), "shop")
            .keys(vec![key.clone()])
            .store(Arc::clone(store) as Arc<dyn SessionStore>)
            .build()
            .unwrap();
        discovered(&sign_in).await;
        let cookie = session_cookie(
            key,
            &Payload::Stored {
                id: "stored-1".into(),
                key: Some("its key".into()),
            },
        );
        (sign_in, cookie)
    }

    /// The answer to a logout this origin started, with `cookie`.
    async fn logged_out(sign_in: &SignIn, cookie: &str) -> Reply {
        let logout = OwnedRequest::new("POST", "/logout")
            .header("host", "app.test")
            .header("sec-fetch-site", "same-origin")
            .header("cookie", cookie);
        match sign_in.logout(&logout) {
            Check::Ready(r) => r,
            Check::Pending(f) => f.await,
        }
    }

    /// A relying party of `issuer` whose store fails its first `failing`
    /// revocations.
    fn failing_revocations(issuer: &palisade_testkit::TestIssuer, failing: usize) -> SignIn {
        let store = Flaky {
            revocations_failing: std::sync::atomic::AtomicUsize::new(failing),
            ..Flaky::default()
        };
        SignIn::builder(issuer.issuer(), "shop")
            .keys(vec![CookieKey::new("k1", &[1; 32]).unwrap()])
            .store(Arc::new(store))
            .build()
            .unwrap()
    }

    /// A back-channel logout naming `sid` and `sub`, with the store's
    /// single endings full: recorded as the user's ending (every session of
    /// theirs begun before it), not refused for the issuer to send again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_back_channel_logout_falls_back_to_the_users_ending_when_the_store_is_full() {
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let store = Arc::new(MemoryStore::with_max_entries(20));
        let sign_in = SignIn::builder(issuer.issuer(), "shop")
            .keys(vec![CookieKey::new("k1", &[1; 32]).unwrap()])
            .store(store.clone())
            .build()
            .unwrap();
        for n in 0..18 {
            let other = Session {
                id: format!("user{n}-1"),
                sub: format!("user{n}"),
                ..alice()
            };
            sign_in.end(&other).await.expect("recorded");
        }
        assert_eq!(
            sign_in.backchannel_logout(&alices_logout_of_idp_7(&issuer)).await,
            Ok(())
        );
        let alices = crate::store::SessionRef {
            id: "s1",
            issuer: issuer.issuer(),
            subject: "alice",
            sid: Some("another-sid"),
            created: UNIX_EPOCH + Duration::from_millis(now_ms() - 1000),
        };
        assert!(
            store.is_revoked(&alices).unwrap(),
            "every session of alice's begun before it"
        );
    }

    /// The body of a back-channel logout of alice's session `idp-7` at the
    /// issuer (naming `sid` and `sub`), for client `shop`.
    fn alices_logout_of_idp_7(issuer: &palisade_testkit::TestIssuer) -> Vec<u8> {
        let token = issuer
            .logout_token()
            .audience("shop")
            .subject("alice")
            .claim("sid", serde_json::json!("idp-7"))
            .sign();
        format!("logout_token={token}").into_bytes()
    }

    /// A logout token naming both `sid` and `sub` from an issuer that does
    /// not say its ID tokens carry `sid`: the `sid`'s sessions end and the
    /// subject's too, a session signed in without a `sid` among them, which
    /// the `sid` alone would not find; from one that does, the `sid`'s
    /// alone (another of the user's browsers stays signed in).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_logout_naming_sid_and_sub_finds_sessions_without_a_sid_where_they_may_be() {
        for sid_in_id_tokens in [false, true] {
            let issuer = palisade_testkit::TestIssuer::builder()
                .backchannel_logout_session(sid_in_id_tokens)
                .start()
                .unwrap();
            let store = Arc::new(MemoryStore::new());
            let sign_in = SignIn::builder(issuer.issuer(), "shop")
                .keys(vec![CookieKey::new("k1", &[1; 32]).unwrap()])
                .store(store.clone())
                .build()
                .unwrap();
            discovered(&sign_in).await;
            assert_eq!(
                sign_in.backchannel_logout(&alices_logout_of_idp_7(&issuer)).await,
                Ok(())
            );
            let session = |sid, subject| crate::store::SessionRef {
                id: "s1",
                issuer: issuer.issuer(),
                subject,
                sid,
                created: UNIX_EPOCH + Duration::from_millis(now_ms() - 1000),
            };
            // The `sid`'s sessions, whoever they name.
            assert!(store.is_revoked(&session(Some("idp-7"), "alice")).unwrap());
            assert!(store.is_revoked(&session(Some("idp-7"), "anyone")).unwrap());
            assert_eq!(
                store.is_revoked(&session(None, "alice")).unwrap(),
                !sid_in_id_tokens,
                "a session without a sid (sid in ID tokens: {sid_in_id_tokens})"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_logout_the_store_could_not_record_may_be_sent_again_and_then_only_once() {
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let sign_in = failing_revocations(&issuer, 1);
        let body = format!(
            "logout_token={}",
            issuer.logout_token().audience("shop").subject("alice").sign()
        );
        assert_eq!(
            sign_in.backchannel_logout(body.as_bytes()).await,
            Err(LogoutRefused::Here(
                "the logout cannot be recorded now: send it again"
            ))
        );
        assert_eq!(sign_in.backchannel_logout(body.as_bytes()).await, Ok(()));
        assert_eq!(
            sign_in.backchannel_logout(body.as_bytes()).await,
            Err(LogoutRefused::Token("the logout token was already used"))
        );
        // Typed as another kind of token: refused, whatever its claims;
        // `JWT` and `application/logout+jwt` are taken (and no `typ`).
        let typed = |typ: &str| {
            let token = issuer.logout_token().audience("shop").subject("bob");
            format!(
                "logout_token={}",
                token.header("typ", serde_json::json!(typ)).sign()
            )
        };
        assert_eq!(
            sign_in.backchannel_logout(typed("at+jwt").as_bytes()).await,
            Err(LogoutRefused::Token(
                "the token is typed as another kind than a logout token"
            ))
        );
        for typ in ["JWT", "application/Logout+JWT"] {
            assert_eq!(
                sign_in.backchannel_logout(typed(typ).as_bytes()).await,
                Ok(()),
                "{typ:?}"
            );
        }
    }

    /// A back-channel logout this side could not take (the store did not
    /// record it) is lost unless the issuer sends it again: said at error
    /// level, once a minute; a bad token only at debug level.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_back_channel_logout_lost_here_is_said_aloud_a_bad_token_is_not() {
        if !palisade_testkit::in_a_process_of_its_own(
            "flow::tests::a_back_channel_logout_lost_here_is_said_aloud_a_bad_token_is_not",
        ) {
            return;
        }
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("debug");
        let _subscriber = tracing::subscriber::set_default(subscriber);
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let sign_in = failing_revocations(&issuer, 2);
        let deliver = |body: String| {
            let reply = sign_in.backchannel(&OwnedRequest::new("POST", "/oauth2/backchannel-logout"));
            let mut body = Some(body.into_bytes());
            async move {
                reply
                    .finish_from_body(|_| {
                        std::task::Poll::Ready(body.take().map(|b| Ok::<_, std::io::Error>(Some(b))))
                    })
                    .await
            }
        };
        let token = || issuer.logout_token().audience("shop").subject("alice").sign();
        for _ in 0..2 {
            assert_eq!(deliver(format!("logout_token={}", token())).await.status(), 400);
        }
        assert_eq!(deliver("logout_token=not.a.token".into()).await.status(), 400);
        let lost = lines.containing("could not be taken now");
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(
            lost[0].contains("ERROR") && lost[0].contains("once a minute"),
            "{lost:?}"
        );
        assert!(lost[1].contains("DEBUG"), "{lost:?}");
        let refused = lines.containing("a back-channel logout was refused");
        assert!(
            matches!(&refused[..], [one] if one.contains("DEBUG") && one.contains("not valid")),
            "{refused:?}"
        );
    }

    #[test]
    fn settings_that_cannot_work_fail_the_build_saying_which() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let build = |b: SignInBuilder| match b.keys(vec![key.clone()]).build() {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        let rp = || SignIn::builder("http://127.0.0.1:9", "shop");
        assert_eq!(
            build(rp().post_logout_redirect_uri("https://shop.example/bye")),
            ""
        );
        for bad in ["//evil.example", "evil", "/a\r\nx: y"] {
            let err = build(rp().post_logout_redirect_uri(bad));
            assert!(err.contains("postLogoutRedirectUri"), "{bad}: {err}");
        }
        let err = build(rp().timeout(Duration::ZERO));
        assert!(err.contains("timeout of calls to the issuer is zero"), "{err}");
        for (what, rp) in [
            ("the absolute timeout", rp().absolute_timeout(Duration::MAX)),
            (
                "the idle timeout",
                rp().idle_timeout(Duration::MAX).absolute_timeout(Duration::MAX),
            ),
            ("refresh_before", rp().refresh_before(Duration::MAX)),
            ("the timeout of calls", rp().timeout(Duration::MAX)),
        ] {
            let err = build(rp);
            assert!(err.contains(what) && err.contains("ten years"), "{err}");
        }
        let err = build(rp().callback_path("/cb x"));
        assert!(err.contains("callbackPath"), "{err}");
    }

    #[test]
    fn an_https_external_origin_makes_every_session_cookie_secure() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let secure_on_plain_http = |b: SignInBuilder| {
            let sign_in = b.keys(vec![key.clone()]).build().unwrap();
            let set = sign_in.sealer(false).seal(b"{}", None, 0).unwrap();
            set[0].contains("; Secure")
        };
        let rp = || SignIn::builder("http://127.0.0.1:9", "shop");
        assert!(!secure_on_plain_http(rp()));
        assert!(!secure_on_plain_http(rp().external_origin("http://shop.example")));
        assert!(secure_on_plain_http(rp().external_origin("https://shop.example")));
        assert!(secure_on_plain_http(rp().cookie_name("__Host-shop")));
    }

    #[test]
    fn a_session_seen_at_the_end_of_time_is_no_overflow() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let sign_in = offline(&key);
        let session = Session {
            seen: u64::MAX,
            at: "opaque".into(),
            ..alice()
        };
        let req = OwnedRequest::get("/page").header("cookie", session_cookie(key, &Payload::Inline(session)));
        let Check::Ready(AuthOutcome::Authenticated(a)) = sign_in.authenticate(&req) else {
            panic!("the session is refused or answered later")
        };
        assert_eq!(a.identity.subject(), Some("alice"));
    }

    /// A relying party answering `/oauth2/session`, sealing with `key`.
    fn offline_with_session_path(key: &CookieKey) -> SignIn {
        SignIn::builder("http://127.0.0.1:9", "shop")
            .keys(vec![key.clone()])
            .session_path("/oauth2/session")
            .build()
            .unwrap()
    }

    /// The reply `sign_in` gives `req` itself, which must not wait.
    fn answered(sign_in: &SignIn, req: &OwnedRequest) -> Reply {
        match sign_in.authenticate(req) {
            Check::Ready(AuthOutcome::Respond(reply)) => reply,
            Check::Ready(_) => panic!("the session route was not answered"),
            Check::Pending(_) => panic!("the session route waited"),
        }
    }

    fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
        reply.headers().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// A page that polls the session route learns when the session ends,
    /// and polling does not keep it alive: no cookie is sealed again, even
    /// for a session due a renewal, and the idle deadline stays where the
    /// last real request put it.
    #[tokio::test]
    async fn the_session_route_says_the_deadlines_without_renewing_the_session() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let sign_in = offline_with_session_path(&key);
        let idle = palisade_core::policy::OidcSessionSpec::DEFAULT_IDLE_TIMEOUT.as_secs();
        let absolute = palisade_core::policy::OidcSessionSpec::DEFAULT_ABSOLUTE_TIMEOUT.as_secs();
        // Last seen half an idle timeout ago: a page request would renew it.
        let seen = now() - idle / 2;
        let session = Session {
            seen,
            rt: Some("rt-0".into()),
            ..alice()
        };
        let cookie = session_cookie(key.clone(), &Payload::Inline(session.clone()));
        let page = OwnedRequest::get("/page").header("cookie", cookie.clone());
        let outcome = match sign_in.authenticate(&page) {
            Check::Ready(outcome) => outcome,
            Check::Pending(f) => f.await,
        };
        let AuthOutcome::Authenticated(a) = outcome else {
            panic!("the session does not open");
        };
        assert!(
            a.response_headers.iter().any(|(n, _)| n == "set-cookie"),
            "a page request does not renew the session"
        );
        let req = OwnedRequest::get("/oauth2/session").header("cookie", cookie);
        let reply = answered(&sign_in, &req);
        assert_eq!(reply.status(), 200, "{}", reply.body());
        assert_eq!(header(&reply, "set-cookie"), None, "the session was renewed");
        assert_eq!(header(&reply, "cache-control"), Some("no-store"));
        let body: serde_json::Value = serde_json::from_str(reply.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "subject": "alice",
                "signed_in_at": session.created_secs(),
                "ends_at": session.created_secs() + absolute,
                "idle_ends_at": seen + idle,
            })
        );
        assert!(
            !reply.body().contains("at-0") && !reply.body().contains("rt-0"),
            "a token in {}",
            reply.body()
        );
        // Without a refresh token, the session ends with its access token.
        let at_exp = now() + 600;
        let short = Session {
            at_exp,
            rt: None,
            ..session
        };
        let req = OwnedRequest::get("/oauth2/session")
            .header("cookie", session_cookie(key, &Payload::Inline(short)));
        let reply = answered(&sign_in, &req);
        let body: serde_json::Value = serde_json::from_str(reply.body()).unwrap();
        assert_eq!(body["ends_at"], at_exp, "{body}");
        assert_eq!(body["idle_ends_at"], at_exp, "{body}");
    }

    /// A stored session (too large for cookies) is read from the store for
    /// its deadlines; one the store cannot give back now is the outage's
    /// 503, not the 401 a page would take for "signed out", and so is a
    /// session whose endings the store cannot read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_session_route_reads_stored_sessions_and_says_503_when_the_store_does_not_answer() {
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let store_key = new_store_key().unwrap();
        let (session, sealed) = stored_generation(0, false, &store_key);
        for (reads_fail, revocations_unknown, status) in
            [(false, false, 200), (true, false, 503), (false, true, 503)]
        {
            let store = Arc::new(Flaky {
                reads_fail,
                revocations_unknown,
                ..Flaky::default()
            });
            store
                .store
                .put("stored-1", sealed.clone(), Duration::from_secs(600))
                .await
                .unwrap();
            let sign_in = SignIn::builder(issuer.issuer(), "shop")
                .keys(vec![key.clone()])
                .store(Arc::clone(&store) as Arc<dyn SessionStore>)
                .session_path("/oauth2/session")
                .build()
                .unwrap();
            let cookie = session_cookie(
                key.clone(),
                &Payload::Stored {
                    id: "stored-1".into(),
                    key: Some(store_key.to_string()),
                },
            );
            let req = OwnedRequest::get("/oauth2/session").header("cookie", cookie);
            let reply = match sign_in.authenticate(&req) {
                Check::Ready(AuthOutcome::Respond(r)) => r,
                Check::Pending(f) => match f.await {
                    AuthOutcome::Respond(r) => r,
                    _ => panic!("not answered"),
                },
                Check::Ready(_) => panic!("not answered"),
            };
            let what = format!("reads fail {reads_fail}, revocations unknown {revocations_unknown}");
            assert_eq!(reply.status(), status, "{what}: {}", reply.body());
            if status == 200 {
                let body: serde_json::Value = serde_json::from_str(reply.body()).unwrap();
                assert_eq!(body["subject"], "alice", "{what}");
                assert_eq!(body["signed_in_at"], session.created_secs(), "{what}");
            } else {
                assert_eq!(header(&reply, "retry-after"), Some("5"), "{what}");
            }
            // Asked again, the same (the first read's outcome is kept).
            let again = answered(&sign_in, &req);
            assert_eq!(again.status(), status, "{what}, again: {}", again.body());
        }
    }

    #[test]
    fn the_session_route_refuses_a_request_without_a_usable_session() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let sign_in = offline_with_session_path(&key);
        let other = CookieKey::new("k2", &[2; 32]).unwrap();
        let idle = palisade_core::policy::OidcSessionSpec::DEFAULT_IDLE_TIMEOUT.as_secs();
        let t = now();
        let idled = Session {
            seen: t - idle - 1,
            ..alice()
        };
        let absolute = palisade_core::policy::OidcSessionSpec::DEFAULT_ABSOLUTE_TIMEOUT;
        let too_old = Session {
            created_ms: now_ms() - u64::try_from(absolute.as_millis()).unwrap() - 1_000,
            rt: Some("rt-0".into()),
            ..alice()
        };
        // No refresh token and an expired access token: nothing to refresh.
        let expired = Session {
            at_exp: t - 1,
            ..alice()
        };
        for (what, req) in [
            ("no cookie", OwnedRequest::get("/oauth2/session")),
            (
                "a cookie sealed with another key",
                OwnedRequest::get("/oauth2/session")
                    .header("cookie", session_cookie(other, &Payload::Inline(alice()))),
            ),
            (
                "an idle session",
                OwnedRequest::get("/oauth2/session")
                    .header("cookie", session_cookie(key.clone(), &Payload::Inline(idled))),
            ),
            (
                "a session past its absolute timeout",
                OwnedRequest::get("/oauth2/session")
                    .header("cookie", session_cookie(key.clone(), &Payload::Inline(too_old))),
            ),
            (
                "an expired session without a refresh token",
                OwnedRequest::get("/oauth2/session")
                    .header("cookie", session_cookie(key.clone(), &Payload::Inline(expired))),
            ),
        ] {
            let reply = answered(&sign_in, &req);
            assert_eq!(reply.status(), 401, "{what}: {}", reply.body());
            assert_eq!(header(&reply, "cache-control"), Some("no-store"), "{what}");
            assert_eq!(header(&reply, "location"), None, "{what}");
            let challenge = header(&reply, "www-authenticate").unwrap_or_default();
            assert!(
                challenge.contains(r#"form-action="/login""#),
                "{what}: {challenge}"
            );
        }
        let post = OwnedRequest::new("POST", "/oauth2/session")
            .header("cookie", session_cookie(key.clone(), &Payload::Inline(alice())));
        let reply = answered(&sign_in, &post);
        assert_eq!(reply.status(), 405);
        assert_eq!(header(&reply, "allow"), Some("GET, HEAD"));
        // Without a sessionPath, the path is one of the application's.
        let req = OwnedRequest::get("/oauth2/session")
            .header("cookie", session_cookie(key.clone(), &Payload::Inline(alice())));
        assert!(matches!(
            offline(&key).authenticate(&req),
            Check::Ready(AuthOutcome::Authenticated(_))
        ));
    }

    #[test]
    fn a_session_path_must_be_a_path_of_its_own() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        for path in ["/login", "/oauth2/callback", "oauth2/session", "/a?b"] {
            let built = SignIn::builder("http://127.0.0.1:9", "shop")
                .keys(vec![key.clone()])
                .session_path(path)
                .build();
            let Err(SignInError::Config(why)) = built else {
                panic!("{path} was accepted");
            };
            assert!(why.contains("sessionPath"), "{path}: {why}");
        }
    }

    /// An issuer on loopback whose discovery document points at its own
    /// token and revocation endpoints, which answer every request `status`
    /// with `body`.
    async fn issuer_answering_tokens(status: &'static str, body: &'static str) -> String {
        issuer_answering(status, move |_: &str| body.to_owned(), None).await
    }

    /// [`issuer_answering_tokens`] whose discovery document is answered
    /// `delay` late (a start while the issuer is slow).
    async fn issuer_answering_tokens_late(
        status: &'static str,
        body: &'static str,
        delay: Duration,
    ) -> String {
        issuer_answering_late(status, move |_: &str| body.to_owned(), None, delay).await
    }

    /// [`issuer_answering_tokens`], with the token endpoint's body made
    /// from the issuer's URL, and `jwks` (a status line and a body) as its
    /// key set's answer when given.
    async fn issuer_answering(
        status: &'static str,
        body: impl Fn(&str) -> String + Send + Sync + 'static,
        jwks: Option<(&'static str, &'static str)>,
    ) -> String {
        issuer_answering_late(status, body, jwks, Duration::ZERO).await
    }

    /// [`issuer_answering`], its discovery document answered `delay` late.
    async fn issuer_answering_late(
        status: &'static str,
        body: impl Fn(&str) -> String + Send + Sync + 'static,
        jwks: Option<(&'static str, &'static str)>,
        delay: Duration,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let discovery = format!(
            r#"{{"issuer":"{issuer}","authorization_endpoint":"{issuer}/auth","token_endpoint":"{issuer}/token","revocation_endpoint":"{issuer}/revoke","jwks_uri":"{issuer}/jwks"}}"#
        );
        let tokens = body(&issuer);
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let discovery = discovery.clone();
                let tokens = tokens.clone();
                tokio::spawn(async move {
                    let mut head = vec![0; 8192];
                    let n = conn.read(&mut head).await.unwrap_or(0);
                    let (status, body) = if head[..n].starts_with(b"GET /.well-known/openid-configuration") {
                        tokio::time::sleep(delay).await;
                        ("200 OK", discovery.as_str())
                    } else if let (true, Some(jwks)) = (head[..n].starts_with(b"GET /jwks"), jwks) {
                        jwks
                    } else {
                        (status, tokens.as_str())
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        issuer
    }

    /// A relying party, discovered, of an issuer whose token endpoint
    /// answers `status` and `body`; and its session key.
    async fn refreshing_at(status: &'static str, body: &'static str) -> (SignIn, CookieKey) {
        refreshing_at_with(status, body, |b| b).await
    }

    /// [`refreshing_at`], its builder finished by `more`.
    async fn refreshing_at_with(
        status: &'static str,
        body: &'static str,
        more: impl FnOnce(SignInBuilder) -> SignInBuilder,
    ) -> (SignIn, CookieKey) {
        let issuer = issuer_answering_tokens(status, body).await;
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        // A store that knows every session's ending (as Redis does), so
        // that the sessions' tokens are refreshed when they are due only.
        let store = MemoryStore::new().began_at(UNIX_EPOCH);
        let sign_in = more(
            SignIn::builder(&issuer, "shop")
                .keys(vec![key.clone()])
                .store(Arc::new(store)),
        )
        .build()
        .unwrap();
        discovered(&sign_in).await;
        (sign_in, key)
    }

    /// Alice's session, due for a refresh (within `refresh_before`) and
    /// still valid.
    fn due() -> Session {
        Session {
            at_exp: now() + 10,
            at_got: now() - 3590,
            rt: Some("refresh-0".into()),
            ..alice()
        }
    }

    /// A session whose tokens are older than the in-memory store (sealed
    /// with a configured key before a restart, or before two reloads
    /// turned sign-in off and on): its ending may have gone with the old
    /// store, so it is taken only once the issuer has refreshed it (which
    /// an ended issuer session refuses); one that cannot be refreshed now,
    /// or has no refresh token, is not taken. A session whose tokens came
    /// since is taken as it is.
    #[tokio::test]
    async fn a_session_older_than_the_memory_store_is_refreshed_before_it_is_taken() {
        for (status, body, taken) in [
            (
                "200 OK",
                r#"{"access_token":"at-1","expires_in":300,"refresh_token":"refresh-1"}"#,
                true,
            ),
            ("400 Bad Request", r#"{"error":"invalid_grant"}"#, false),
            ("503 Service Unavailable", "", false),
        ] {
            // The discovery document comes late: the first session's
            // refresh waits for it rather than refuse the session.
            let issuer = issuer_answering_tokens_late(status, body, Duration::from_millis(300)).await;
            let key = CookieKey::new("k1", &[1; 32]).unwrap();
            let sign_in = SignIn::builder(&issuer, "shop")
                .keys(vec![key.clone()])
                .store(Arc::new(MemoryStore::new()))
                .build()
                .unwrap();
            let t = now();
            let cookie = |s: Session| {
                OwnedRequest::get("/page").header("cookie", session_cookie(key.clone(), &Payload::Inline(s)))
            };
            let since = Session {
                rt: Some("refresh-0".into()),
                ..alice()
            };
            let Check::Ready(AuthOutcome::Authenticated(_)) = sign_in.authenticate(&cookie(since)) else {
                panic!("{status}: tokens obtained since the store began are taken as they are")
            };
            let before = Session {
                at_got: t - 10,
                rt: Some("refresh-0".into()),
                ..alice()
            };
            let Check::Pending(refresh) = sign_in.authenticate(&cookie(before.clone())) else {
                panic!("{status}: older tokens are refreshed first")
            };
            match (refresh.await, taken) {
                (AuthOutcome::Authenticated(a), true) => assert_eq!(
                    a.attachments
                        .get::<palisade_core::authn::BearerToken>()
                        .map(|t| t.as_str().to_owned())
                        .as_deref(),
                    Some("at-1")
                ),
                (AuthOutcome::NoCredential, false) => {}
                (other, _) => panic!("{status}: {other:?}"),
            }
            let without_refresh_token = Session {
                rt: None,
                id: "s2".into(),
                ..before
            };
            assert!(
                matches!(
                    sign_in.authenticate(&cookie(without_refresh_token)),
                    Check::Ready(AuthOutcome::NoCredential)
                ),
                "{status}: older tokens that cannot be refreshed are not taken"
            );
        }
    }

    /// A logout whose refresh token the issuer cannot revoke now (its
    /// revocation endpoint answers 503, or refuses) still ends the session
    /// here and answers the redirect, and says so at warn level once a
    /// minute; the same token is not sent again by a saved copy of the
    /// cookie logged out again (each would call the issuer).
    #[tokio::test]
    async fn a_logout_the_issuer_cannot_revoke_still_ends_the_session() {
        if !palisade_testkit::in_a_process_of_its_own(
            "flow::tests::a_logout_the_issuer_cannot_revoke_still_ends_the_session",
        ) {
            return;
        }
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("debug");
        let _subscriber = tracing::subscriber::set_default(subscriber);
        let said = || lines.containing("cannot be revoked");
        for (status, body) in [
            ("503 Service Unavailable", ""),
            ("400 Bad Request", r#"{"error":"unsupported_token_type"}"#),
        ] {
            let (sign_in, key) = refreshing_at_with(status, body, |b| b.revoke_on_logout(true)).await;
            for (n, level) in [(1, "WARN"), (2, "DEBUG")] {
                let session = Session {
                    id: format!("s{n}"),
                    rt: Some(format!("refresh-{n}")),
                    ..alice()
                };
                let cookie = session_cookie(key.clone(), &Payload::Inline(session));
                let page = OwnedRequest::get("/page").header("cookie", cookie.clone());
                assert!(
                    matches!(
                        sign_in.authenticate(&page),
                        Check::Ready(AuthOutcome::Authenticated(_))
                    ),
                    "{status}"
                );
                let before = said().len();
                for _ in 0..3 {
                    let reply = logged_out(&sign_in, &cookie).await;
                    assert_eq!(reply.status(), 302, "{status}: {reply:?}");
                }
                let now_said = said();
                assert_eq!(now_said.len(), before + 1, "{status}: tried once: {now_said:?}");
                assert!(
                    now_said.last().is_some_and(|l| l.contains(level)),
                    "{status}: session {n} at {level} level (once a minute at warn): {now_said:?}"
                );
                assert!(
                    matches!(
                        sign_in.authenticate(&page),
                        Check::Ready(AuthOutcome::NoCredential)
                    ),
                    "{status}: ended here"
                );
            }
        }
    }

    /// With a shared store that cannot give a refresh's claim, an expired
    /// session is refreshed here without one; the issuer's `invalid_grant`
    /// may then answer another replica's rotation of the same refresh
    /// token a moment before, so the session is left without tokens for
    /// now, not ended. Refused under the claim, or by a store that serves
    /// this process alone (which claims nothing), it ends.
    #[tokio::test]
    async fn a_refresh_refused_without_the_stores_claim_does_not_end_the_session() {
        let issuer = issuer_answering_tokens("400 Bad Request", r#"{"error":"invalid_grant"}"#).await;
        for (what, store, ended) in [
            (
                "shared, no claim",
                Arc::new(Flaky {
                    claims_fail: true,
                    ..Flaky::default()
                }) as Arc<dyn SessionStore>,
                false,
            ),
            ("shared, claimed", Arc::new(Flaky::default()), true),
            (
                "this process's",
                Arc::new(MemoryStore::new().began_at(UNIX_EPOCH)),
                true,
            ),
        ] {
            let key = CookieKey::new("k1", &[1; 32]).unwrap();
            let sign_in = SignIn::builder(&issuer, "shop")
                .keys(vec![key.clone()])
                .store(Arc::clone(&store))
                .build()
                .unwrap();
            discovered(&sign_in).await;
            let expired = Session {
                at_exp: now() - 10,
                at_got: now() - 3600,
                rt: Some("refresh-0".into()),
                ..alice()
            };
            let created = expired.created_ms;
            let req =
                OwnedRequest::get("/page").header("cookie", session_cookie(key, &Payload::Inline(expired)));
            let Check::Pending(refresh) = sign_in.authenticate(&req) else {
                panic!("an expired session is refreshed first")
            };
            assert!(matches!(refresh.await, AuthOutcome::NoCredential), "{what}");
            let session = SessionRef {
                id: "s1",
                issuer: &issuer,
                subject: "alice",
                sid: None,
                created: UNIX_EPOCH + Duration::from_millis(created),
            };
            assert_eq!(store.is_revoked(&session).unwrap(), ended, "{what}");
        }
    }

    /// The issuer's keys cannot be had when a sign-in comes back (no key
    /// set, or none of the ID token's `kid` in it: a rotation the key
    /// fetch has not seen yet): the callback answers 502 (the issuer's
    /// outage, as an unreachable token endpoint is), not 400, which blames
    /// the browser.
    #[tokio::test]
    async fn a_key_outage_at_the_callback_is_the_issuers_failure() {
        // An ID token whose claims would pass: only its key is missing.
        let id_token = |issuer: &str| {
            use base64::Engine as _;
            let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            let t = now();
            let claims =
                serde_json::json!({"iss": issuer, "aud": "shop", "sub": "a", "iat": t, "exp": t + 300});
            let jwt = format!(
                "{}.{}.c2ln",
                b64(serde_json::json!({"alg": "RS256", "kid": "k1"})),
                b64(claims)
            );
            format!(r#"{{"access_token":"at","id_token":"{jwt}","expires_in":300}}"#)
        };
        // Another key than `k1`.
        let other_keys: &'static str = Box::leak(
            palisade_testkit::TestIssuer::start()
                .unwrap()
                .jwks()
                .to_string()
                .into_boxed_str(),
        );
        for jwks in [("503 Service Unavailable", ""), ("200 OK", other_keys)] {
            let issuer = issuer_answering("200 OK", id_token, Some(jwks)).await;
            let key = CookieKey::new("k1", &[1; 32]).unwrap();
            let sign_in = SignIn::builder(&issuer, "shop").keys(vec![key]).build().unwrap();
            discovered(&sign_in).await;
            let (state, cookie) = login_started(&sign_in, "/login?return_to=%2Fp");
            let callback = OwnedRequest::get(&format!("/oauth2/callback?code=c&state={state}"))
                .header("host", "app.test")
                .header("cookie", cookie);
            let reply = match sign_in.callback(&callback) {
                Check::Ready(r) => r,
                Check::Pending(f) => f.await,
            };
            assert_eq!(reply.status(), 502, "{jwks:?}: {reply:?}");
        }
    }

    /// A sign-in begun at `login` (a `/login` URL): its `state` and the
    /// `Cookie` value of its login-state cookie.
    fn login_started(sign_in: &SignIn, login: &str) -> (String, String) {
        let (state, cookie, _) = login_at(sign_in, login, "app.test");
        (state, cookie)
    }

    /// A sign-in begun at `login` on `host`: its `state`, the `Cookie`
    /// value of its login-state cookie, and where it sends the browser.
    fn login_at(sign_in: &SignIn, login: &str, host: &str) -> (String, String, String) {
        let login = sign_in.login(&OwnedRequest::get(login).header("host", host));
        assert_eq!(login.status(), 302);
        let location = login
            .headers()
            .find(|(n, _)| *n == "location")
            .unwrap()
            .1
            .to_owned();
        let state = location
            .split("state=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_owned();
        let cookie = login
            .headers()
            .filter(|(n, v)| *n == "set-cookie" && v.starts_with("palisade_session_login_"))
            .map(|(_, v)| v.split(';').next().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("; ");
        (state, cookie, location)
    }

    /// The query the issuer sends the browser back with from `location`
    /// (its authorization endpoint, which signs the chosen user in at
    /// once), asked over real HTTP.
    async fn callback_query(location: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let rest = location.strip_prefix("http://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let mut tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
        let ask = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        tcp.write_all(ask.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        let back = answer
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("location:")
                    .then(|| l[9..].trim().to_owned())
            })
            .unwrap_or_else(|| panic!("the issuer sent the browser nowhere: {answer}"));
        back.split_once('?').unwrap().1.to_owned()
    }

    /// The status of the callback `/oauth2/callback?{query}` on host
    /// `127.0.0.1:8080` with `cookie`.
    async fn called_back(sign_in: &SignIn, query: &str, cookie: &str) -> u16 {
        let callback = OwnedRequest::get(&format!("/oauth2/callback?{query}"))
            .header("host", "127.0.0.1:8080")
            .header("cookie", cookie);
        match sign_in.callback(&callback) {
            Check::Ready(r) => r,
            Check::Pending(f) => f.await,
        }
        .status()
    }

    /// A state signs in once: a completed sign-in's cookie and callback
    /// sent again are refused before the issuer is asked (whose token
    /// endpoint each would call with the client's credentials). A sign-in
    /// that fails lets its state go: callbacks with codes the issuer
    /// refuses, which any client can send with login-state cookies it asks
    /// for, leave no mark in the store (whose room back-channel logout
    /// tokens' marks share), and the state can still sign in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_state_signs_in_once_and_a_refused_code_leaves_no_mark() {
        let issuer = palisade_testkit::TestIssuer::builder()
            .public_client("shop")
            .start()
            .unwrap();
        issuer.sign_in_as(Some("alice"));
        let store = MemoryStore::with_max_entries(2);
        let sign_in = SignIn::builder(issuer.issuer(), "shop")
            .keys(vec![CookieKey::new("k1", &[1; 32]).unwrap()])
            .store(Arc::new(store.clone()))
            .build()
            .unwrap();
        discovered(&sign_in).await;
        let iss = issuer.issuer().replace(':', "%3A").replace('/', "%2F");
        let started: Vec<_> = (0..3)
            .map(|_| login_at(&sign_in, "/login", "127.0.0.1:8080"))
            .collect();
        let asked = issuer.token_requests();
        for (state, cookie, _) in &started {
            let refused = called_back(&sign_in, &format!("code=junk&state={state}&iss={iss}"), cookie).await;
            assert_eq!(refused, 400, "the issuer refuses the code");
        }
        assert_eq!(issuer.token_requests(), asked + 3);
        assert!(
            matches!(store.use_once("probe", Duration::from_secs(60)).await, Ok(true)),
            "the refused sign-ins left their states unmarked"
        );
        // The first state, with the code the issuer gives alice.
        let (_, cookie, location) = &started[0];
        let query = callback_query(location).await;
        assert_eq!(called_back(&sign_in, &query, cookie).await, 302, "signed in");
        let asked = issuer.token_requests();
        assert_eq!(
            called_back(&sign_in, &query, cookie).await,
            400,
            "the completed sign-in's callback again"
        );
        let other = query.replacen("code=", "code=other", 1);
        assert_eq!(
            called_back(&sign_in, &other, cookie).await,
            400,
            "and with another code"
        );
        assert_eq!(issuer.token_requests(), asked, "the issuer is not asked again");
    }

    /// A state's mark is let go when its sign-in does not complete, also
    /// when the request goes away mid-sign-in (its future dropped), and
    /// kept when it completes.
    #[tokio::test]
    async fn a_state_mark_is_let_go_unless_kept() {
        let store = MemoryStore::new();
        let shared: Arc<dyn SessionStore> = Arc::new(store.clone());
        let mark = |key: &str| StateMark {
            store: Arc::clone(&shared),
            key: Some(key.to_owned()),
        };
        let ttl = Duration::from_secs(60);
        assert!(matches!(store.use_once("dropped", ttl).await, Ok(true)));
        drop(mark("dropped"));
        tokio::task::yield_now().await;
        assert!(matches!(store.use_once("dropped", ttl).await, Ok(true)), "let go");
        assert!(matches!(store.use_once("kept", ttl).await, Ok(true)));
        mark("kept").keep();
        tokio::task::yield_now().await;
        assert!(
            matches!(store.use_once("kept", ttl).await, Ok(false)),
            "still used"
        );
    }

    /// An issuer that grants access tokens for less than `refresh_before`
    /// (20 s against 30 s): a session is refreshed once half its token's
    /// lifetime has passed, not by every request (each a call to the token
    /// endpoint and a new cookie).
    #[tokio::test]
    async fn a_short_lived_token_is_refreshed_at_half_its_lifetime_not_at_every_request() {
        let (sign_in, key) = refreshing_at(
            "200 OK",
            r#"{"access_token":"at-1","expires_in":20,"refresh_token":"refresh-1"}"#,
        )
        .await;
        let t = now();
        let fresh = Session {
            at_got: t,
            at_exp: t + 20,
            rt: Some("refresh-0".into()),
            ..alice()
        };
        let req =
            OwnedRequest::get("/page").header("cookie", session_cookie(key.clone(), &Payload::Inline(fresh)));
        let Check::Ready(AuthOutcome::Authenticated(a)) = sign_in.authenticate(&req) else {
            panic!("a token obtained now is used as it is")
        };
        assert!(a.response_headers.is_empty(), "no new cookie");
        let half = Session {
            at_got: t - 11,
            at_exp: t + 9,
            rt: Some("refresh-0".into()),
            ..alice()
        };
        let req = OwnedRequest::get("/page").header("cookie", session_cookie(key, &Payload::Inline(half)));
        let Check::Pending(renewal) = sign_in.authenticate(&req) else {
            panic!("past half its lifetime, the token is refreshed")
        };
        let AuthOutcome::Authenticated(a) = renewal.await else {
            panic!("refreshed")
        };
        assert_eq!(
            a.attachments
                .get::<palisade_core::authn::BearerToken>()
                .map(|t| t.as_str().to_owned())
                .as_deref(),
            Some("at-1")
        );
    }

    #[tokio::test]
    async fn only_a_dead_grant_ends_a_session_at_its_refresh() {
        for (status, body, ends) in [
            ("429 Too Many Requests", r#"{"error":"too_many_requests"}"#, false),
            ("401 Unauthorized", r#"{"error":"invalid_client"}"#, false),
            ("503 Service Unavailable", "", false),
            ("400 Bad Request", r#"{"error":"invalid_grant"}"#, true),
        ] {
            let (sign_in, key) = refreshing_at(status, body).await;
            let session = due();
            let req =
                OwnedRequest::get("/page").header("cookie", session_cookie(key, &Payload::Inline(session)));
            let Check::Pending(renewal) = sign_in.authenticate(&req) else {
                panic!("{status}: the session is not renewed")
            };
            match renewal.await {
                AuthOutcome::Authenticated(a) if !ends => assert_eq!(
                    a.attachments
                        .get::<palisade_core::authn::BearerToken>()
                        .map(|t| t.as_str().to_owned())
                        .as_deref(),
                    Some("at-0"),
                    "{status}: the old tokens, while they last"
                ),
                AuthOutcome::Authenticated(_) => panic!("{status}: the session outlived a dead grant"),
                other if !ends => panic!("{status}: the session ended: {other:?}"),
                _ => {}
            }
        }
    }

    /// What a guard answers a request: its decision, awaited.
    async fn decided(guard: &palisade_core::Guard, req: &OwnedRequest) -> palisade_core::adapter::Decision {
        match guard.check(req) {
            Check::Ready(d) => d,
            Check::Pending(f) => f.await,
        }
    }

    /// A session whose access token has expired while the issuer cannot
    /// refresh it (down, throttling, a rotated client secret) is whole: a
    /// page the policy would send to sign in is answered 503 and keeps its
    /// cookie (sent to sign in, the browser would lose it and its refresh
    /// token for the outage); so is an API call (a 401 would send a
    /// script's user to sign in, into the outage); a page anyone may see is
    /// served, as to a caller without a session. A dead grant still ends
    /// the session: its page goes to sign in, its API call gets the 401.
    #[tokio::test]
    async fn an_issuer_outage_after_the_token_expired_keeps_the_session_whole() {
        use palisade_core::adapter::Decision;
        for (status, body, ends) in [
            ("503 Service Unavailable", "", false),
            ("429 Too Many Requests", r#"{"error":"too_many_requests"}"#, false),
            ("400 Bad Request", r#"{"error":"invalid_grant"}"#, true),
        ] {
            let (sign_in, key) = refreshing_at(status, body).await;
            let required = palisade_core::Guard::builder()
                .authenticator(sign_in.clone())
                .build()
                .unwrap();
            let public = palisade_core::Guard::builder()
                .authenticator(sign_in.clone())
                .access_policy(palisade_core::authz::AccessPolicy::allow_all())
                .build()
                .unwrap();
            let expired = Session {
                at_exp: now() - 1,
                ..due()
            };
            let cookie = session_cookie(key, &Payload::Inline(expired));
            let page = OwnedRequest::get("/page")
                .header("host", "app.test")
                .header("sec-fetch-mode", "navigate")
                .header("cookie", cookie.clone());
            let api = OwnedRequest::get("/api")
                .header("host", "app.test")
                .header("sec-fetch-mode", "cors")
                .header("cookie", cookie);
            match decided(&required, &page).await {
                Decision::Reply(reply) if !ends => {
                    assert_eq!(reply.status(), 503, "{status}");
                    assert!(reply.headers().any(|(n, v)| n == "retry-after" && v == "5"));
                    assert!(!reply.headers().any(|(n, _)| n == "set-cookie"), "{status}");
                }
                Decision::Reply(reply) if ends => assert_eq!(reply.status(), 302, "{status}"),
                other => panic!("{status}: {other:?}"),
            }
            let Decision::Allow(_) = decided(&public, &page).await else {
                panic!("{status}: a page anyone may see is refused")
            };
            match decided(&required, &api).await {
                Decision::Reply(reply) if !ends => {
                    assert_eq!(reply.status(), 503, "{status}: an API call, as the page");
                    assert!(reply.headers().any(|(n, v)| n == "retry-after" && v == "5"));
                }
                Decision::Deny(r) if ends => assert_eq!(r.status(), 401, "{status}"),
                other => panic!("{status}: an API call with an expired session: {other:?}"),
            }
        }
    }

    /// Before the issuer's discovery document is had (the issuer down
    /// since start-up), a session due for a refresh is used while its
    /// access token lasts, and a page of one whose token has expired is
    /// answered 503 with its cookie kept.
    #[tokio::test]
    async fn without_discovery_a_due_session_is_used_while_its_token_lasts() {
        use palisade_core::adapter::Decision;
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let sign_in = SignIn::builder("http://127.0.0.1:9", "shop")
            .keys(vec![key.clone()])
            .store(Arc::new(MemoryStore::new().began_at(UNIX_EPOCH)))
            .build()
            .unwrap();
        let guard = palisade_core::Guard::builder()
            .authenticator(sign_in)
            .build()
            .unwrap();
        let page = |session: Session| {
            OwnedRequest::get("/page")
                .header("host", "app.test")
                .header("sec-fetch-mode", "navigate")
                .header("cookie", session_cookie(key.clone(), &Payload::Inline(session)))
        };
        let Decision::Allow(_) = decided(&guard, &page(due())).await else {
            panic!("a valid session refused for want of discovery")
        };
        let expired = Session {
            at_exp: now() - 1,
            ..due()
        };
        let Decision::Reply(reply) = decided(&guard, &page(expired)).await else {
            panic!("an expired session without discovery is not answered")
        };
        assert_eq!(reply.status(), 503);
    }

    /// Two requests of one session whose refresh brings no new tokens (the
    /// issuer cannot answer now; another replica holds the claim), each
    /// with its own copy of the session (two cookies of it, or one opened
    /// twice at once on a replica that had not seen it): neither renews
    /// the cookie. Before, the request that joined the other's refresh
    /// took its copy for new tokens and set a cookie of the old ones,
    /// which could replace the browser's newer cookie.
    #[tokio::test]
    async fn a_refresh_that_brings_no_new_tokens_renews_no_cookie() {
        let (sign_in, key) = refreshing_at("503 Service Unavailable", "").await;
        let session = due();
        // Sealed twice: two cookie values, two copies once opened.
        let pending = || {
            let req = OwnedRequest::get("/page").header(
                "cookie",
                session_cookie(key.clone(), &Payload::Inline(session.clone())),
            );
            let Check::Pending(renewal) = sign_in.authenticate(&req) else {
                panic!("the session is not refreshed")
            };
            renewal
        };
        let (first, second) = tokio::join!(pending(), pending());
        for (which, outcome) in [("first", first), ("second", second)] {
            let AuthOutcome::Authenticated(a) = outcome else {
                panic!("{which}: the session ended: {outcome:?}")
            };
            assert!(
                !a.response_headers.iter().any(|(n, _)| n == "set-cookie"),
                "{which}: a cookie of the old tokens: {:?}",
                a.response_headers
            );
        }
    }

    /// A session due for a refresh the issuer cannot answer now still has
    /// its idle timeout renewed, as any request's is: an active user is
    /// not signed out for idling while the issuer is down.
    #[tokio::test]
    async fn a_refresh_that_brings_nothing_still_renews_the_idle_timeout() {
        let (sign_in, key) = refreshing_at("503 Service Unavailable", "").await;
        // Last seen ten minutes ago: a quarter of the idle timeout (30
        // minutes) has passed.
        let session = Session {
            seen: now() - 600,
            ..due()
        };
        let req = OwnedRequest::get("/page")
            .header("cookie", session_cookie(key.clone(), &Payload::Inline(session)));
        let Check::Pending(renewal) = sign_in.authenticate(&req) else {
            panic!("the session is not refreshed")
        };
        let AuthOutcome::Authenticated(a) = renewal.await else {
            panic!("the session ended")
        };
        let cookie = a
            .response_headers
            .iter()
            .find(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.split(';').next().unwrap().split_once('=').unwrap().1.to_owned())
            .expect("a renewed cookie");
        let opened = sign_in.sealer(false).open_raw(&cookie).unwrap();
        let Ok(Payload::Inline(renewed)) = serde_json::from_slice::<Payload>(&opened.plaintext) else {
            panic!("not a session")
        };
        assert!(renewed.seen + 5 >= now(), "seen now: {}", renewed.seen);
        assert_eq!(renewed.at, due().at, "the same tokens");
    }

    /// A guard that signs browsers in and takes nothing else: an API call
    /// without a session, or a navigation that cannot be sent to sign in
    /// yet, gets a 401 that says where to sign in (a 401 carries a
    /// challenge); `loginPath` says why it cannot start.
    #[test]
    fn a_sign_in_only_guard_challenges_where_it_cannot_sign_in() {
        use palisade_core::adapter::Decision;
        let sign_in = offline(&CookieKey::new("k1", &[1; 32]).unwrap());
        let guard = palisade_core::Guard::builder()
            .authenticator(sign_in)
            .build()
            .unwrap();
        let refused = |req: &OwnedRequest| match guard.check(req) {
            Check::Ready(Decision::Deny(r)) => (r.status(), r.challenges().to_vec()),
            Check::Ready(Decision::Reply(r)) => (r.status(), Vec::new()),
            other => panic!("not refused at once: {other:?}"),
        };
        let api = OwnedRequest::get("/api/x")
            .header("accept", "application/json")
            .header("host", "shop.example");
        assert_eq!(
            refused(&api),
            (
                401,
                vec![
                    r#"Bearer realm="shop", Cookie realm="shop", form-action="/login", cookie-name="palisade_session""#.to_owned()
                ]
            )
        );
        let page = |host: &str| {
            OwnedRequest::get("/page")
                .header("sec-fetch-mode", "navigate")
                .header("host", host)
        };
        // The issuer never answers: no discovery document yet.
        let challenged = refused(&api);
        assert_eq!(refused(&page("shop.example")), challenged);
        assert_eq!(refused(&page("a b")), challenged);
        let login = |host: &str| {
            OwnedRequest::get("/login?return_to=/page")
                .header("host", host)
                .header("sec-fetch-mode", "navigate")
        };
        // Beside an authenticator with a challenge (a JWT one): its 401
        // alone, for the API call and the navigation alike.
        struct Bearer;
        impl Authenticator for Bearer {
            fn challenge(&self) -> Option<String> {
                Some(palisade_core::authn::bearer_challenge("shop"))
            }
            fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
                Check::Ready(AuthOutcome::NoCredential)
            }
        }
        let both = palisade_core::Guard::builder()
            .authenticator(Bearer)
            .authenticator(offline(&CookieKey::new("k1", &[1; 32]).unwrap()))
            .build()
            .unwrap();
        for req in [&api, &page("shop.example")] {
            let Check::Ready(Decision::Deny(r)) = both.check(req) else {
                panic!("not refused at once")
            };
            assert_eq!(
                (r.status(), r.challenges()),
                (401, &[r#"Bearer realm="shop""#.to_owned()][..])
            );
        }
        assert_eq!(refused(&login("shop.example")).0, 503);
        assert_eq!(
            refused(&login("a b")).0,
            400,
            "no host to make the callback's address from"
        );
    }

    /// A request that joins a refresh started for an older copy of its
    /// session (another cookie of it, older) keeps its own, newer tokens.
    #[tokio::test]
    async fn a_request_that_joins_an_older_copys_refresh_keeps_its_newer_tokens() {
        let (sign_in, key) = refreshing_at("503 Service Unavailable", "").await;
        let copy = |at: &str, generation: u32| Session {
            at: at.into(),
            generation,
            ..due()
        };
        let pending = |s: Session| {
            let req =
                OwnedRequest::get("/page").header("cookie", session_cookie(key.clone(), &Payload::Inline(s)));
            let Check::Pending(renewal) = sign_in.authenticate(&req) else {
                panic!("the session is not refreshed")
            };
            renewal
        };
        let (older, newer) = tokio::join!(pending(copy("at-0", 0)), pending(copy("at-1", 1)));
        let token = |outcome: AuthOutcome| match outcome {
            AuthOutcome::Authenticated(a) => a
                .attachments
                .get::<palisade_core::authn::BearerToken>()
                .unwrap()
                .as_str()
                .to_owned(),
            other => panic!("the session ended: {other:?}"),
        };
        assert_eq!(token(older), "at-0");
        assert_eq!(token(newer), "at-1", "its own tokens, not the older copy's");
    }

    #[test]
    fn the_callback_takes_get_only_so_a_head_spends_no_code() {
        let sign_in = offline(&CookieKey::new("k1", &[1; 32]).unwrap());
        for method in ["HEAD", "POST"] {
            let req = OwnedRequest::new(method, "/oauth2/callback?code=c&state=s");
            let Check::Ready(AuthOutcome::Respond(reply)) = sign_in.authenticate(&req) else {
                panic!("{method}: not answered at once")
            };
            assert_eq!(reply.status(), 405, "{method}");
            assert!(
                reply.headers().any(|(n, v)| n == "allow" && v == "GET"),
                "{method}"
            );
        }
    }

    #[test]
    fn a_session_made_for_another_issuer_or_client_is_not_accepted() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        let sign_in = offline(&key);
        let id_token = |claims: serde_json::Value| {
            let part = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
            format!(
                "{}.{}.c2ln",
                part(&serde_json::json!({"alg": "RS256"})),
                part(&claims)
            )
        };
        let with = |it: Option<String>| {
            let session = Session {
                at: "opaque".into(),
                it,
                ..alice()
            };
            let req = OwnedRequest::get("/page")
                .header("cookie", session_cookie(key.clone(), &Payload::Inline(session)));
            matches!(
                sign_in.authenticate(&req),
                Check::Ready(AuthOutcome::Authenticated(_))
            )
        };
        let here = serde_json::json!({"iss": "http://127.0.0.1:9", "aud": "shop", "sub": "alice"});
        assert!(with(Some(id_token(here))));
        assert!(with(Some(id_token(
            serde_json::json!({"iss": "http://127.0.0.1:9", "aud": ["web", "shop"]})
        ))));
        assert!(with(None), "a session of an earlier release");
        for elsewhere in [
            serde_json::json!({"iss": "https://other.example", "aud": "shop"}),
            serde_json::json!({"iss": "http://127.0.0.1:9", "aud": ["web"]}),
            serde_json::json!({"iss": "http://127.0.0.1:9"}),
        ] {
            assert!(!with(Some(id_token(elsewhere.clone()))), "{elsewhere}");
        }
    }

    #[tokio::test]
    async fn an_older_refresh_of_this_replica_never_replaces_a_cookies_newer_tokens() {
        let key = CookieKey::new("k1", &[1; 32]).unwrap();
        // An issuer of its own: the refresh recorded below is shared with
        // the relying parties of the same client, issuer and store.
        let sign_in = SignIn::builder("http://127.0.0.1:9/realms/newer", "shop")
            .keys(vec![key.clone()])
            .build()
            .unwrap();
        let session = |at: &str, generation: u32| Session {
            at: at.into(),
            rt: Some(format!("refresh-{generation}")),
            generation,
            ..alice()
        };
        let request = |s: Session| {
            OwnedRequest::get("/page").header("cookie", session_cookie(key.clone(), &Payload::Inline(s)))
        };
        let token_of = |check: Check<AuthOutcome>| match check {
            Check::Ready(AuthOutcome::Authenticated(a)) => a
                .attachments
                .get::<palisade_core::authn::BearerToken>()
                .unwrap()
                .as_str()
                .to_owned(),
            Check::Ready(_) => panic!("the session is refused"),
            Check::Pending(_) => "renewed".to_owned(),
        };
        let renewed_token = |check: Check<AuthOutcome>| async move {
            let Check::Pending(renewal) = check else {
                panic!("not renewed")
            };
            let AuthOutcome::Authenticated(a) = renewal.await else {
                panic!("the renewal is refused")
            };
            a.attachments
                .get::<palisade_core::authn::BearerToken>()
                .unwrap()
                .as_str()
                .to_owned()
        };
        // This replica refreshed the session once; another replica has
        // refreshed it again since, and the browser carries that cookie.
        sign_in.0.refreshes.successors.insert(Arc::new(Live::new(
            session("at-1", 1),
            "http://127.0.0.1:9",
            &crate::session::ClaimNames::default(),
            None,
        )));
        assert_eq!(
            token_of(sign_in.authenticate(&request(session("at-2", 2)))),
            "at-2",
            "the cookie's newer tokens are used as they are"
        );
        // A cookie older than this replica's refresh: renewed with it.
        assert_eq!(
            token_of(sign_in.authenticate(&request(session("at-0", 0)))),
            "renewed"
        );
        assert_eq!(
            renewed_token(sign_in.authenticate(&request(session("at-0", 0)))).await,
            "at-1"
        );
    }

    #[test]
    fn a_page_too_long_to_keep_returns_to_the_root() {
        let issuer = palisade_testkit::TestIssuer::start().unwrap();
        let keys = vec![CookieKey::new("k1", &[1; 32]).unwrap()];
        let sign_in = SignIn::builder(issuer.issuer(), "shop")
            .keys(keys.clone())
            .build()
            .unwrap();
        let page = |target: &str| {
            OwnedRequest::get(target)
                .header("host", "app.test")
                .header("accept", "text/html")
        };
        // Discovery happens on a thread of its own.
        let start = std::time::Instant::now();
        while sign_in.0.issuer.metadata().is_none() {
            assert!(start.elapsed() < Duration::from_secs(10), "no discovery");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Up to MAX_RETURN_TO kept; beyond it (2.5 KiB, even 1 KiB, fitted
        // a cookie, and four such cookies at once left too little of a
        // proxy's header line for the session cookie), and beyond what a
        // cookie holds, the root.
        for (length, kept) in [
            (MAX_RETURN_TO - 1, true),
            (MAX_RETURN_TO, false),
            (2500, false),
            (4000, false),
        ] {
            let long = "a".repeat(length);
            let login = OwnedRequest::get(&format!("/login?return_to=%2F{long}")).header("host", "app.test");
            for reply in [
                sign_in.sign_in(&page(&format!("/{long}"))).unwrap(),
                sign_in.login(&login),
            ] {
                assert_eq!(reply.status(), 302);
                let (_, cookie) = reply
                    .headers()
                    .find(|(n, v)| *n == "set-cookie" && v.starts_with("palisade_session_login_"))
                    .unwrap();
                let pair = cookie.split(';').next().unwrap();
                // What a browser sends back of it, MAX_LOGINS at once.
                assert!(pair.len() * MAX_LOGINS < 3584, "{length}: {} bytes", pair.len());
                let sealer = CookieSealer::builder(pair.split('=').next().unwrap(), keys.clone())
                    .secure(false)
                    .max_chunks(1)
                    .build()
                    .unwrap();
                let Opened::Valid { plaintext, .. } =
                    sealer.open(&OwnedRequest::get("/").header("cookie", pair))
                else {
                    panic!("the login-state cookie does not open")
                };
                let state: LoginState = serde_json::from_slice(&plaintext).unwrap();
                if kept {
                    assert_eq!(state.return_to, format!("/{long}"));
                } else {
                    assert_eq!(state.return_to, "/", "{length}");
                }
            }
        }
    }

    #[test]
    fn return_targets_stay_on_this_origin() {
        assert_eq!(local_target("/a/b?c=d").as_deref(), Some("/a/b?c=d"));
        // Decoded from `return_to`, beyond ASCII: encoded again, so that
        // the redirect after sign-in has a `Location` to send.
        assert_eq!(local_target("/café?q=ü").as_deref(), Some("/caf%C3%A9?q=%C3%BC"));
        assert!(
            palisade_core::adapter::Reply::redirect(local_target("/café").unwrap().into_owned())
                .headers()
                .any(|(n, v)| n == "location" && v.is_ascii())
        );
        for bad in [
            "//evil.example/x",
            "/\\evil.example",
            "https://evil.example/",
            "evil",
            "/a\r\nb",
            "",
        ] {
            assert_eq!(local_target(bad).as_deref(), None, "{bad}");
        }
    }

    #[test]
    fn navigations_are_told_from_api_calls() {
        let nav = OwnedRequest::get("/p").header("accept", "text/html,application/xhtml+xml");
        assert!(is_navigation(&nav));
        let fetch = OwnedRequest::get("/p")
            .header("accept", "text/html")
            .header("sec-fetch-mode", "cors");
        assert!(!is_navigation(&fetch));
        assert!(is_navigation(
            &OwnedRequest::get("/p").header("sec-fetch-mode", "navigate")
        ));
        assert!(!is_navigation(
            &OwnedRequest::get("/p").header("accept", "application/json")
        ));
        assert!(!is_navigation(
            &OwnedRequest::new("POST", "/p").header("accept", "text/html")
        ));
        let navigate = || OwnedRequest::get("/p").header("sec-fetch-mode", "navigate");
        assert!(is_navigation(&navigate().header("sec-fetch-dest", "document")));
        for dest in ["iframe", "frame", "embed", "object"] {
            assert!(
                !is_navigation(&navigate().header("sec-fetch-dest", dest)),
                "{dest}"
            );
        }
        for purpose in ["prefetch", "prefetch;prerender", "prefetch;anonymous-client-ip"] {
            assert!(
                !is_navigation(&navigate().header("sec-purpose", purpose)),
                "{purpose}"
            );
        }
    }

    #[test]
    fn origins_come_from_plain_host_headers_only() {
        assert_eq!(
            origin(&OwnedRequest::get("/").header("host", "127.0.0.1:9082")).as_deref(),
            Some("http://127.0.0.1:9082")
        );
        assert_eq!(origin(&OwnedRequest::get("/").header("host", "evil/x@y")), None);
        assert_eq!(origin(&OwnedRequest::get("/")), None);
    }
}
