//! The relying party's settings and their builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::cookie::CookieKey;
use crate::store::SessionStore;

/// A client secret: never printed.
#[derive(Clone)]
pub(crate) struct Secret(Arc<str>);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Debug)]
pub(crate) enum ClientAuth {
    /// A public client: PKCE alone.
    None,
    /// `client_secret_basic`.
    Basic(Secret),
    /// `client_secret_post`.
    Post(Secret),
}

/// How a confidential client sends its secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretMethod {
    /// HTTP Basic (`client_secret_basic`), the default.
    #[default]
    Basic,
    /// Form fields (`client_secret_post`).
    Post,
}

/// Everything the flow reads, fixed at build.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    pub(crate) client_auth: ClientAuth,
    pub(crate) scope: String,
    pub(crate) callback_path: String,
    pub(crate) login_path: String,
    pub(crate) logout_path: String,
    pub(crate) backchannel_path: String,
    pub(crate) post_logout_redirect: String,
    pub(crate) cookie_name: String,
    pub(crate) idle_timeout: Duration,
    pub(crate) absolute_timeout: Duration,
    pub(crate) refresh_before: Duration,
    pub(crate) timeout: Duration,
    pub(crate) ca_pem: Option<Vec<u8>>,
}

/// Why a [`SignIn`](crate::SignIn) cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignInError {
    /// A setting that cannot work; the message names it.
    #[error("sign-in: {0}")]
    Config(String),
    /// A session key that cannot be used.
    #[error("sign-in: {0}")]
    Key(#[from] crate::cookie::KeyError),
    /// The session store cannot be reached.
    #[error("sign-in: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Builds a [`SignIn`](crate::SignIn): [`SignIn::builder`](crate::SignIn::builder).
#[must_use]
pub struct SignInBuilder {
    pub(crate) config: Config,
    pub(crate) secret: Option<(Secret, SecretMethod)>,
    pub(crate) scopes: Vec<String>,
    pub(crate) keys: Vec<CookieKey>,
    pub(crate) store: Option<Arc<dyn SessionStore>>,
}

impl fmt::Debug for SignInBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignInBuilder")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .field("confidential", &self.secret.is_some())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl SignInBuilder {
    pub(crate) fn new(issuer: String, client_id: String) -> Self {
        Self {
            config: Config {
                issuer,
                client_id,
                client_auth: ClientAuth::None,
                scope: String::new(),
                callback_path: "/oauth2/callback".into(),
                login_path: "/login".into(),
                logout_path: "/logout".into(),
                backchannel_path: "/oauth2/backchannel-logout".into(),
                post_logout_redirect: "/".into(),
                cookie_name: "palisade_session".into(),
                idle_timeout: Duration::from_secs(30 * 60),
                absolute_timeout: Duration::from_secs(8 * 3600),
                refresh_before: Duration::from_secs(30),
                timeout: Duration::from_secs(5),
                ca_pem: None,
            },
            secret: None,
            scopes: vec!["openid".into(), "profile".into(), "email".into()],
            keys: Vec::new(),
            store: None,
        }
    }

    /// Makes this a confidential client with this secret, sent as `method` says.
    pub fn client_secret(mut self, secret: impl Into<String>, method: SecretMethod) -> Self {
        self.secret = Some((Secret(secret.into().into()), method));
        self
    }

    /// The scopes to ask for (default `openid profile email`); `openid` is
    /// added when missing.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Where the issuer sends the browser back (default `/oauth2/callback`).
    pub fn callback_path(mut self, path: impl Into<String>) -> Self {
        self.config.callback_path = path.into();
        self
    }

    /// Starts a sign-in, `?return_to=/path` (default `/login`).
    pub fn login_path(mut self, path: impl Into<String>) -> Self {
        self.config.login_path = path.into();
        self
    }

    /// Ends the session here and at the issuer (default `/logout`).
    pub fn logout_path(mut self, path: impl Into<String>) -> Self {
        self.config.logout_path = path.into();
        self
    }

    /// Receives back-channel logout tokens (default `/oauth2/backchannel-logout`).
    pub fn backchannel_logout_path(mut self, path: impl Into<String>) -> Self {
        self.config.backchannel_path = path.into();
        self
    }

    /// Where the browser lands after logout: a path of this service (made
    /// absolute on the request's origin) or an absolute URL (default `/`).
    pub fn post_logout_redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.config.post_logout_redirect = uri.into();
        self
    }

    /// The session cookie's name (default `palisade_session`).
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.config.cookie_name = name.into();
        self
    }

    /// A session unused this long ends (default 30 minutes).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self
    }

    /// A session ends this long after sign-in (default 8 hours).
    pub fn absolute_timeout(mut self, d: Duration) -> Self {
        self.config.absolute_timeout = d;
        self
    }

    /// Refresh the access token when it has less than this left (default 30 s).
    pub fn refresh_before(mut self, d: Duration) -> Self {
        self.config.refresh_before = d;
        self
    }

    /// Timeout of each call to the issuer (default 5 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.config.timeout = d;
        self
    }

    /// Extra PEM trust anchors for the issuer's TLS certificate.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.config.ca_pem = Some(pem.into());
        self
    }

    /// The session keys, newest first: new cookies use the first, all are
    /// read. Without keys, a random key is made at build (sessions then end
    /// with the process and cannot be shared by replicas; a warning says so).
    pub fn keys(mut self, keys: Vec<CookieKey>) -> Self {
        self.keys = keys;
        self
    }

    /// The store shared by replicas (default: in memory, this process).
    pub fn store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }
}

/// A path this service serves, as the settings require.
pub(crate) fn check_path(field: &str, path: &str) -> Result<(), SignInError> {
    if !path.starts_with('/') || path.starts_with("//") || path.contains(['?', '#', '\\']) {
        return Err(SignInError::Config(format!(
            "{field} `{path}` is not a path of this service"
        )));
    }
    Ok(())
}
