//! Relying parties for the sign-in targets, built once per process.
//!
//! - [`offline`]: its issuer (`127.0.0.1:9`) never answers, so it never
//!   has the discovery document: a session that needs refreshing ends,
//!   nothing is sent anywhere. For session cookies.
//! - [`online`]: its issuer is a loopback stub (see
//!   [`crate::common::serve`]) that serves the discovery document and the
//!   fuzzing key's JWKS, read once at start-up; the token endpoint answers
//!   404, and the targets never wait for a call to it. For callbacks,
//!   logins and back-channel logout.
//!
//! Both keep their sessions' state in a [`Store`]: an in-memory store,
//! replaced by an empty one between inputs before it fills up (it holds at
//! most 100,000 entries, and every accepted logout token adds some).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use palisade_core::BoxFuture;
use palisade_core::authn::{Authenticator, OwnedRequest};
use palisade_signin::SignIn;
use palisade_signin::cookie::{CookieKey, CookieSealer};
use palisade_signin::store::{MemoryStore, Revocation, SessionRef, SessionStore, StoreError};

use crate::common::{serve, signer, wait_until};

pub(crate) const CLIENT: &str = "fuzz-client";
/// The session cookie's name (the default).
pub(crate) const COOKIE: &str = "palisade_session";
/// The login-state cookies' names begin so.
pub(crate) const STATE_PREFIX: &str = "palisade_session_login_";
/// The offline relying party's issuer: the discard port, never open.
pub(crate) const OFFLINE_ISSUER: &str = "http://127.0.0.1:9";

/// The session keys, newest first.
pub(crate) fn keys() -> Vec<CookieKey> {
    vec![
        CookieKey::new("k1", &[1; 32]).unwrap(),
        CookieKey::new("k0", &[2; 32]).unwrap(),
    ]
}

/// An in-memory session store that the targets empty between inputs
/// before it is full.
#[derive(Default)]
pub(crate) struct Store {
    inner: Mutex<Arc<MemoryStore>>,
    writes: AtomicUsize,
}

impl Store {
    fn current(&self) -> Arc<MemoryStore> {
        Arc::clone(&self.inner.lock().unwrap())
    }

    /// Between inputs: a fresh store when this one has taken many writes.
    /// Whether it was replaced (everything it remembered is forgotten).
    pub(crate) fn make_room(&self) -> bool {
        if self.writes.load(Ordering::Relaxed) < 50_000 {
            return false;
        }
        *self.inner.lock().unwrap() = Arc::new(MemoryStore::new());
        self.writes.store(0, Ordering::Relaxed);
        true
    }
}

impl SessionStore for Store {
    fn revoke(&self, revocation: Revocation) -> BoxFuture<Result<(), StoreError>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.current().revoke(revocation)
    }

    fn is_revoked(&self, session: &SessionRef<'_>) -> Result<bool, StoreError> {
        self.current().is_revoked(session)
    }

    fn use_once(&self, key: &str, ttl: Duration) -> BoxFuture<Result<bool, StoreError>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.current().use_once(key, ttl)
    }

    fn put(&self, id: &str, data: Vec<u8>, ttl: Duration) -> BoxFuture<Result<(), StoreError>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.current().put(id, data, ttl)
    }

    fn put_session(
        &self,
        id: &str,
        generation: u32,
        data: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<Result<bool, StoreError>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.current().put_session(id, generation, data, ttl)
    }

    fn get(&self, id: &str) -> BoxFuture<Result<Option<Vec<u8>>, StoreError>> {
        self.current().get(id)
    }

    fn remove(&self, id: &str) -> BoxFuture<Result<(), StoreError>> {
        self.current().remove(id)
    }
}

/// A relying party and its store.
pub(crate) struct Rp {
    pub(crate) sign_in: SignIn,
    pub(crate) store: Arc<Store>,
    pub(crate) issuer: String,
}

fn build(issuer: &str) -> Rp {
    let store = Arc::new(Store::default());
    let sign_in = SignIn::builder(issuer, CLIENT)
        .keys(keys())
        .store(Arc::clone(&store) as Arc<dyn SessionStore>)
        .build()
        .unwrap();
    Rp {
        sign_in,
        store,
        issuer: issuer.to_owned(),
    }
}

pub(crate) fn offline() -> &'static Rp {
    static RP: OnceLock<Rp> = OnceLock::new();
    RP.get_or_init(|| build(OFFLINE_ISSUER))
}

pub(crate) fn online() -> &'static Rp {
    static RP: OnceLock<Rp> = OnceLock::new();
    RP.get_or_init(|| {
        let issuer = serve(|base| {
            let discovery = serde_json::json!({
                "issuer": base,
                "authorization_endpoint": format!("{base}/authorize"),
                "token_endpoint": format!("{base}/token"),
                "jwks_uri": format!("{base}/jwks"),
                "end_session_endpoint": format!("{base}/logout"),
                "authorization_response_iss_parameter_supported": true,
                "code_challenge_methods_supported": ["S256"],
            });
            vec![
                (
                    "/.well-known/openid-configuration".to_owned(),
                    discovery.to_string(),
                ),
                ("/jwks".to_owned(), format!(r#"{{"keys":[{}]}}"#, signer().jwk)),
            ]
        });
        let rp = build(&issuer);
        // Discovery happens on a thread of its own: a navigation is sent
        // to sign in once it has.
        let page = OwnedRequest::get("/")
            .header("host", "app.test")
            .header("accept", "text/html");
        wait_until("the stub issuer's discovery", || {
            rp.sign_in.sign_in(&page).is_some()
        });
        rp
    })
}

/// A sealer of the session cookie as a relying party over plain HTTP
/// seals it (no `Secure`).
pub(crate) fn session_sealer() -> &'static CookieSealer {
    static S: OnceLock<CookieSealer> = OnceLock::new();
    S.get_or_init(|| {
        CookieSealer::builder(COOKIE, keys())
            .secure(false)
            .max_chunks(8)
            .build()
            .unwrap()
    })
}

/// The sealer of the login-state cookie of a sign-in whose `state` begins
/// with `tag` (12 characters), over plain HTTP.
pub(crate) fn state_sealer(tag: &str) -> CookieSealer {
    CookieSealer::builder(&format!("{STATE_PREFIX}{tag}"), keys())
        .secure(false)
        .max_chunks(1)
        .build()
        .unwrap()
}

/// `name=value` of each `Set-Cookie` value: what a browser sends back.
pub(crate) fn cookie_header(set_cookies: &[String]) -> String {
    set_cookies
        .iter()
        .filter_map(|c| c.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}
