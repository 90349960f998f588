//! The browser sign-in half of [`TestIssuer`]: the authorization endpoint
//! and its login form, the `authorization_code` and `refresh_token` grants,
//! userinfo, the end-session endpoint and back-channel logout.
//!
//! Everything here is decided from [`State`]; the HTTP plumbing (reading a
//! request, writing an answer) is the one of the crate root.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    HttpRequest, SigningKey, State, TestIssuer, TokenBuilder, b64, basic_auth, form, json_answer, lock, now,
    random_b64, respond, secret_eq,
};

/// How long an authorization code can be exchanged.
const CODE_LIFETIME: i64 = 60;
/// How long a refresh token can be used (Keycloak's default SSO idle time).
const REFRESH_LIFETIME: i64 = 1800;
/// How long a logout token delivery may take, connection included.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The `events` member of a back-channel logout token.
pub(crate) const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A registered client.
pub(crate) struct Client {
    /// `None` for a public client.
    pub(crate) secret: Option<String>,
    /// The key pair of a `private_key_jwt` client.
    pub(crate) key: Option<Arc<SigningKey>>,
    /// Exact redirect URIs; when empty, any loopback URI is allowed.
    pub(crate) redirect_uris: Vec<String>,
    pub(crate) backchannel_logout_uri: Option<String>,
}

impl Client {
    /// Whether the client has no credential of its own (PKCE alone).
    pub(crate) fn is_public(&self) -> bool {
        self.secret.is_none() && self.key.is_none()
    }

    /// Whether `uri` may receive an authorization response or be a
    /// `post_logout_redirect_uri` for this client.
    fn allows_redirect(&self, uri: &str) -> bool {
        if self.redirect_uris.is_empty() {
            is_loopback_uri(uri)
        } else {
            self.redirect_uris.iter().any(|u| u == uri)
        }
    }
}

/// `http(s)://127.0.0.1`, `localhost` or `[::1]`, any port, any path; no
/// user info, no fragment.
fn is_loopback_uri(uri: &str) -> bool {
    if uri.contains('#') || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some(rest) = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !authority.ends_with(']') => {
            if port.is_empty() || port.parse::<u16>().is_err() {
                return false;
            }
            host
        }
        _ => authority,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// What an authorization grants, carried from the code to every refresh.
#[derive(Clone)]
struct Grant {
    client_id: String,
    user: String,
    sid: String,
    scope: String,
    nonce: Option<String>,
    auth_time: i64,
}

struct CodeGrant {
    grant: Grant,
    redirect_uri: String,
    code_challenge: Option<String>,
    expires: i64,
    used: bool,
}

struct RefreshGrant {
    grant: Grant,
    expires: i64,
    used: bool,
}

/// An IdP session, created by a sign-in and ended by the end-session endpoint.
struct Session {
    user: String,
    client_id: String,
    active: bool,
}

/// The sign-in state the endpoints share with the test.
#[derive(Default)]
pub(crate) struct SignIn {
    auto_user: Option<String>,
    refuse_refresh: bool,
    pub(crate) refresh_delay: std::time::Duration,
    /// What [`TestIssuer::pad_access_tokens`] set.
    access_token_padding: usize,
    codes: HashMap<String, CodeGrant>,
    sessions: HashMap<String, Session>,
    refresh_tokens: HashMap<String, RefreshGrant>,
    end_session_requests: Vec<EndSessionRequest>,
    deliveries: Vec<BackchannelDelivery>,
    authorization_requests: usize,
    code_exchanges: usize,
    refreshes: usize,
    /// Refresh tokens ended by the revocation endpoint.
    revoked_refresh_tokens: usize,
    /// What [`TestIssuer::tamper_id_tokens`] set.
    id_token_tamper: Option<IdTokenTamper>,
    /// The `jti`s of the client assertions seen (each works once).
    assertion_ids: std::collections::HashSet<String>,
    /// The key of [`IdTokenTamper::unpublished_key`], made at first need.
    unpublished_key: Option<Arc<SigningKey>>,
}

/// One request the end-session endpoint received, as it was sent; see
/// [`TestIssuer::end_session_requests`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndSessionRequest {
    /// The `id_token_hint` parameter.
    pub id_token_hint: Option<String>,
    /// The `post_logout_redirect_uri` parameter.
    pub post_logout_redirect_uri: Option<String>,
    /// The `state` parameter.
    pub state: Option<String>,
    /// The `client_id` parameter.
    pub client_id: Option<String>,
}

impl fmt::Debug for EndSessionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndSessionRequest")
            .field(
                "id_token_hint",
                &self.id_token_hint.as_ref().map(|_| "<redacted>"),
            )
            .field("post_logout_redirect_uri", &self.post_logout_redirect_uri)
            .field("state", &self.state)
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// One logout token the issuer POSTed to a client's back-channel logout
/// URI when an IdP session ended; see [`TestIssuer::backchannel_deliveries`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackchannelDelivery {
    /// Where it was POSTed.
    pub uri: String,
    /// The HTTP status answered, `None` when there was no answer within 5 s.
    pub status: Option<u16>,
    /// The `sid` of the ended session (also in the token).
    pub sid: String,
    /// The logout token sent, to replay it with [`TestIssuer::deliver_logout`].
    pub logout_token: String,
}

impl fmt::Debug for BackchannelDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackchannelDelivery")
            .field("uri", &self.uri)
            .field("status", &self.status)
            .field("sid", &self.sid)
            .finish_non_exhaustive()
    }
}

/// How the token endpoint spoils the ID tokens it returns, to test that a
/// relying party refuses them; see [`TestIssuer::tamper_id_tokens`].
///
/// Starts from the ID token the issuer would send (with the nonce of the
/// authorization request, `aud` and `azp` the client, fresh `iat` and
/// `exp`, signed by the current key); each call changes one thing, in the
/// order given. Of the ways to sign ([`IdTokenTamper::unsigned`],
/// [`IdTokenTamper::hmac_with_client_secret`],
/// [`IdTokenTamper::unpublished_key`]) the last one called wins;
/// [`IdTokenTamper::header`] edits apply after it.
///
/// ```
/// use palisade_testkit::IdTokenTamper;
/// use serde_json::json;
/// // Another client's token: both `aud` and `azp` name it.
/// let stolen = IdTokenTamper::new()
///     .claim("aud", json!("another-client"))
///     .claim("azp", json!("another-client"));
/// // An expired one, issued 15 minutes ago.
/// let expired = IdTokenTamper::new().expires_in(-600).issued_at(-900);
/// // Not signed at all, or forged with the client secret.
/// let unsigned = IdTokenTamper::new().unsigned();
/// let forged = IdTokenTamper::new().hmac_with_client_secret();
/// // No ID token in the token response.
/// let none = IdTokenTamper::new().omit();
/// assert_ne!(stolen, expired);
/// # let _ = (unsigned, forged, none);
/// ```
///
/// `Debug` names the edited claims and headers and the signing, never a
/// value.
#[derive(Clone, Default, PartialEq)]
#[must_use]
pub struct IdTokenTamper {
    edits: Vec<Edit>,
    signing: Signing,
    omit: bool,
}

#[derive(Clone, PartialEq)]
enum Edit {
    Claim(String, Value),
    WithoutClaim(String),
    ExpiresIn(i64),
    IssuedAt(i64),
    Header(String, Value),
}

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
enum Signing {
    #[default]
    CurrentKey,
    Unsigned,
    ClientSecret,
    UnpublishedKey,
}

impl fmt::Debug for IdTokenTamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let edits: Vec<String> = self
            .edits
            .iter()
            .map(|e| match e {
                Edit::Claim(name, _) => format!("claim {name}"),
                Edit::WithoutClaim(name) => format!("without claim {name}"),
                Edit::ExpiresIn(secs) => format!("exp now{secs:+}"),
                Edit::IssuedAt(secs) => format!("iat now{secs:+}"),
                Edit::Header(name, _) => format!("header {name}"),
            })
            .collect();
        f.debug_struct("IdTokenTamper")
            .field("edits", &edits)
            .field("signing", &self.signing)
            .field("omit", &self.omit)
            .finish()
    }
}

impl IdTokenTamper {
    /// No change yet: the ID token the issuer would send.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a claim, replacing the issued one (`aud` too): a wrong `nonce`,
    /// another `iss`, `azp` of another client, a non-string `sub`, …
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.edits.push(Edit::Claim(name.to_owned(), value));
        self
    }

    /// Removes a claim: no `sub`, no `nonce`, no `iat`, …
    pub fn without_claim(mut self, name: &str) -> Self {
        self.edits.push(Edit::WithoutClaim(name.to_owned()));
        self
    }

    /// `exp` = the time of issue + `secs` (negative: already expired).
    pub fn expires_in(mut self, secs: i64) -> Self {
        self.edits.push(Edit::ExpiresIn(secs));
        self
    }

    /// `iat` = the time of issue + `secs` (negative: in the past).
    pub fn issued_at(mut self, secs: i64) -> Self {
        self.edits.push(Edit::IssuedAt(secs));
        self
    }

    /// Sets a JOSE header parameter after signing is chosen (a `kid` of a
    /// published key on a token of [`IdTokenTamper::unpublished_key`], an
    /// `alg` that does not match the signature, …).
    pub fn header(mut self, name: &str, value: Value) -> Self {
        self.edits.push(Edit::Header(name.to_owned(), value));
        self
    }

    /// `alg: none`, no `kid` and an empty signature (`header.payload.`).
    pub fn unsigned(mut self) -> Self {
        self.signing = Signing::Unsigned;
        self
    }

    /// `alg: HS256`, no `kid`, signed with the client's secret as the HMAC
    /// key, as an issuer configured for symmetric ID tokens would; an
    /// attacker who knows the secret (every replica holds it) could forge
    /// these. A public client has no secret: the key is then empty.
    pub fn hmac_with_client_secret(mut self) -> Self {
        self.signing = Signing::ClientSecret;
        self
    }

    /// Signed with the issuer's algorithm by a key its JWKS never
    /// publishes, under a `kid` of its own (the same key for the life of
    /// the issuer).
    pub fn unpublished_key(mut self) -> Self {
        self.signing = Signing::UnpublishedKey;
        self
    }

    /// No `id_token` member in the token response at all; the other edits
    /// are then moot.
    pub fn omit(mut self) -> Self {
        self.omit = true;
        self
    }

    /// The `id_token` of a token response, `None` to send none.
    fn finish(
        &self,
        mut token: TokenBuilder<'_>,
        secret: Option<&str>,
        unpublished: Option<Arc<SigningKey>>,
    ) -> Option<String> {
        if self.omit {
            return None;
        }
        let mut headers = Vec::new();
        for edit in &self.edits {
            token = match edit {
                Edit::Claim(name, value) => token.claim(name, value.clone()),
                Edit::WithoutClaim(name) => token.without_claim(name),
                Edit::ExpiresIn(secs) => token.expires_in(*secs),
                Edit::IssuedAt(secs) => token.issued_at(*secs),
                Edit::Header(name, value) => {
                    headers.push((name, value));
                    token
                }
            };
        }
        token = match self.signing {
            Signing::CurrentKey => token,
            Signing::Unsigned => token.header("alg", json!("none")).kid(None),
            Signing::ClientSecret => token.header("alg", json!("HS256")).kid(None),
            Signing::UnpublishedKey => match unpublished {
                Some(key) => {
                    let kid = key.kid.clone();
                    token.key = key;
                    token.kid(Some(&kid))
                }
                None => token,
            },
        };
        for (name, value) in headers {
            token = token.header(name, value.clone());
        }
        Some(match self.signing {
            Signing::CurrentKey | Signing::UnpublishedKey => token.sign(),
            Signing::Unsigned => token.unsigned(),
            Signing::ClientSecret => {
                let (message, _) = token.encoded();
                let key = hmac::Key::new(hmac::HMAC_SHA256, secret.unwrap_or_default().as_bytes());
                format!("{message}.{}", b64(hmac::sign(&key, message.as_bytes()).as_ref()))
            }
        })
    }
}

impl TestIssuer {
    /// Signs `user` in at once at every authorization request, without a
    /// login page, until changed; `None` serves the login form again. The
    /// user need not be registered with [`TestIssuerBuilder::user`]; an
    /// unregistered one has no roles.
    ///
    /// ```
    /// use palisade_testkit::TestIssuer;
    /// let issuer = TestIssuer::builder()
    ///     .public_client("web")
    ///     .redirect_uris("web", &["http://127.0.0.1:8080/callback"])
    ///     .user("alice", "wonderland", &["reader"])
    ///     .start()?;
    /// // The next authorization request answers `302` to the redirect URI
    /// // with a code for alice, as if she had typed her password.
    /// issuer.sign_in_as(Some("alice"));
    /// assert!(issuer.authorization_endpoint().ends_with("/protocol/openid-connect/auth"));
    /// // Back to the login form.
    /// issuer.sign_in_as(None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// [`TestIssuerBuilder::user`]: crate::TestIssuerBuilder::user
    pub fn sign_in_as(&self, user: Option<&str>) {
        lock(&self.state.signin).auto_user = user.map(str::to_owned);
    }

    /// While `true`, every `refresh_token` grant answers `400 invalid_grant`
    /// (the refresh token is not spent, so it works again once switched off).
    pub fn refuse_refresh(&self, refuse: bool) {
        lock(&self.state.signin).refuse_refresh = refuse;
    }

    /// Access tokens the token endpoint issues from now on (code exchanges
    /// and refreshes) carry a `padding` claim of `bytes` characters, as a
    /// user with many roles or groups makes them large; 0 (the default)
    /// adds none.
    pub fn pad_access_tokens(&self, bytes: usize) {
        lock(&self.state.signin).access_token_padding = bytes;
    }

    /// The answer to each `refresh_token` grant is sent this long after
    /// the grant was decided (the refresh token spent): a caller that gives
    /// up meanwhile has had its refresh token rotated without learning the
    /// new one. `Duration::ZERO` (the default) answers at once.
    pub fn delay_refresh_answers(&self, delay: std::time::Duration) {
        lock(&self.state.signin).refresh_delay = delay;
    }

    /// Changes the ID tokens the token endpoint returns (code exchanges and
    /// refreshes alike) until changed again; `None` sends them as issued.
    /// Everything else in the token response stays right, so a relying
    /// party that signs the user in anyway has accepted a bad ID token.
    ///
    /// ```
    /// use palisade_testkit::{IdTokenTamper, TestIssuer};
    /// use serde_json::json;
    /// let issuer = TestIssuer::builder()
    ///     .client("web", "web-secret")
    ///     .redirect_uris("web", &["http://127.0.0.1:8080/callback"])
    ///     .start()?;
    /// // The next code exchange answers an ID token with a foreign nonce.
    /// issuer.tamper_id_tokens(Some(IdTokenTamper::new().claim("nonce", json!("not-yours"))));
    /// // Or one forged with the client secret.
    /// issuer.tamper_id_tokens(Some(IdTokenTamper::new().hmac_with_client_secret()));
    /// // Back to good ID tokens.
    /// issuer.tamper_id_tokens(None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Panics
    /// When the system cannot make the key of
    /// [`IdTokenTamper::unpublished_key`] (as [`TestIssuer::rotate_key`]).
    pub fn tamper_id_tokens(&self, tamper: Option<IdTokenTamper>) {
        let needs_key = tamper
            .as_ref()
            .is_some_and(|t| t.signing == Signing::UnpublishedKey)
            && lock(&self.state.signin).unpublished_key.is_none();
        let key = needs_key.then(|| Arc::new(SigningKey::generate(self.state.alg).expect("key generation")));
        let mut signin = lock(&self.state.signin);
        if let Some(key) = key {
            signin.unpublished_key.get_or_insert(key);
        }
        signin.id_token_tamper = tamper;
    }

    /// The requests the end-session endpoint received, oldest first.
    #[must_use]
    pub fn end_session_requests(&self) -> Vec<EndSessionRequest> {
        lock(&self.state.signin).end_session_requests.clone()
    }

    /// The logout tokens POSTed to back-channel logout URIs, oldest first.
    #[must_use]
    pub fn backchannel_deliveries(&self) -> Vec<BackchannelDelivery> {
        lock(&self.state.signin).deliveries.clone()
    }

    /// Authorization requests received (login form submissions not counted).
    #[must_use]
    pub fn authorization_requests(&self) -> usize {
        lock(&self.state.signin).authorization_requests
    }

    /// Successful `authorization_code` grants.
    #[must_use]
    pub fn code_exchanges(&self) -> usize {
        lock(&self.state.signin).code_exchanges
    }

    /// Refresh tokens the revocation endpoint (RFC 7009,
    /// `protocol/openid-connect/revoke`, in the discovery document as
    /// `revocation_endpoint`) ended: each then answers `invalid_grant`.
    #[must_use]
    pub fn revoked_refresh_tokens(&self) -> usize {
        lock(&self.state.signin).revoked_refresh_tokens
    }

    /// Successful `refresh_token` grants.
    #[must_use]
    pub fn refreshes(&self) -> usize {
        lock(&self.state.signin).refreshes
    }

    /// The authorization endpoint (login), `GET` or `POST`.
    ///
    /// An unknown `client_id` or a `redirect_uri` the client may not use
    /// answers a `400` HTML page, never a redirect. Other faults redirect
    /// with `error` (and `state`, `iss`): `response_type` other than `code`
    /// (`unsupported_response_type`), a `scope` without `openid`
    /// (`invalid_scope`), a PKCE method other than `S256` or a public client
    /// without PKCE (`invalid_request`), `prompt=none` when nobody would be
    /// signed in at once (`login_required`); other `prompt` values are
    /// ignored. The user is the one of [`TestIssuer::sign_in_as`], else a
    /// registered user named by `login_hint`, else whoever passes the login
    /// form. A sign-in starts an IdP session (a fresh `sid`) and redirects
    /// with a single-use `code`, valid for 60 s, bound to the client,
    /// redirect URI, PKCE challenge, nonce, user, session and scope.
    #[must_use]
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/auth", self.state.issuer)
    }

    /// The end-session endpoint (RP-initiated logout), `GET` or `POST`.
    ///
    /// Every request is recorded (see [`TestIssuer::end_session_requests`]).
    /// An `id_token_hint` must be a token this issuer signed (expired ones
    /// are fine), else `400`; its `sid`'s IdP session ends, after which the
    /// session's refresh tokens and access tokens (at userinfo) are refused
    /// and, when its client registered one, a logout token is POSTed to the
    /// back-channel logout URI before the answer. The answer is a `302` to
    /// `post_logout_redirect_uri` (with `state`) when it is allowed for the
    /// client (`client_id`, else the hint's `azp`), a `400` page when it is
    /// not (and the session is kept), or a `200` "You are signed out" page.
    #[must_use]
    pub fn end_session_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/logout", self.state.issuer)
    }

    /// The userinfo endpoint: for a bearer access token this issuer signed,
    /// unexpired and of an IdP session still active, `sub`,
    /// `preferred_username`, `name`, `email` and `email_verified`; else `401`.
    #[must_use]
    pub fn userinfo_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/userinfo", self.state.issuer)
    }

    /// Starts minting an OpenID Connect Back-Channel Logout 1.0 token signed
    /// by the current key: header `typ: logout+jwt`; claims `iss`, `aud`
    /// (the default audience until [`TokenBuilder::audience`]), `iat`, `exp`
    /// (in 2 minutes), a random `jti` and the back-channel logout event.
    /// It has neither `sub` nor `sid`: set them with
    /// [`TokenBuilder::subject`] (which leaves `preferred_username` out
    /// here) and `.claim("sid", ..)`.
    pub fn logout_token(&self) -> TokenBuilder<'_> {
        self.state.logout_token()
    }

    /// POSTs `logout_token=<token>` (form-encoded) to `uri`, as the issuer
    /// does on logout, and answers the HTTP status, `None` when there was no
    /// answer within 5 s. Only `http://` URIs are served.
    ///
    /// This blocks the calling thread. From a current-thread async runtime
    /// that also runs the receiver (a default `#[tokio::test]`), use
    /// [`TestIssuer::deliver_logout_async`], or the receiver never answers.
    pub fn deliver_logout(&self, uri: &str, logout_token: &str) -> Option<u16> {
        let (tx, rx) = mpsc::channel();
        let (uri, token) = (uri.to_owned(), logout_token.to_owned());
        self.runtime.spawn(async move {
            let _ = tx.send(post_logout_token(&uri, &token).await);
        });
        rx.recv().ok().flatten()
    }

    /// [`TestIssuer::deliver_logout`] for async tests, on any runtime.
    pub async fn deliver_logout_async(&self, uri: &str, logout_token: &str) -> Option<u16> {
        let (uri, token) = (uri.to_owned(), logout_token.to_owned());
        self.runtime
            .spawn(async move { post_logout_token(&uri, &token).await })
            .await
            .ok()
            .flatten()
    }
}

/// The parameters of the query string of `path`.
fn query(path: &str) -> HashMap<String, String> {
    path.split_once('?')
        .map(|(_, q)| form(q.as_bytes()))
        .unwrap_or_default()
}

/// The query parameters and, for a POST, the form fields over them.
fn parameters(req: &HttpRequest) -> HashMap<String, String> {
    let mut params = query(&req.path);
    if req.method == "POST" {
        params.extend(form(&req.body));
    }
    params
}

/// A parameter, an empty one counting as absent.
fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// Percent-encodes all but the unreserved characters.
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `uri` with `pairs` added to its query.
fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let sep = if uri.contains('?') { '&' } else { '?' };
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect();
    format!("{uri}{sep}{}", query.join("&"))
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const HTML: &str = "text/html; charset=utf-8";

fn no_store() -> (&'static str, String) {
    ("cache-control", "no-store".to_owned())
}

async fn found<S: AsyncWrite + Unpin>(stream: &mut S, location: &str) {
    respond(
        stream,
        "302 Found",
        &[("location", location.to_owned()), no_store()],
        "text/plain",
        b"",
    )
    .await;
}

/// An HTML page with a title and one message; never a redirect.
async fn page<S: AsyncWrite + Unpin>(stream: &mut S, status: &str, title: &str, message: &str) {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n\
         <body><h1>{t}</h1>\n<p id=\"kc-page-message\">{m}</p>\n</body></html>\n",
        t = html_escape(title),
        m = html_escape(message),
    );
    respond(stream, status, &[no_store()], HTML, body.as_bytes()).await;
}

/// The login form, carrying the authorization request in hidden inputs.
async fn login_page<S: AsyncWrite + Unpin>(
    stream: &mut S,
    state: &State,
    params: &HashMap<String, String>,
    error: Option<&str>,
) {
    let realm = state.prefix.trim_start_matches("/realms/");
    let username = param(params, "username")
        .or_else(|| param(params, "login_hint"))
        .unwrap_or("");
    let mut hidden: Vec<(&String, &String)> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "username" | "password" | "login"))
        .collect();
    hidden.sort();
    let hidden: String = hidden
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
                html_escape(k),
                html_escape(v)
            )
        })
        .collect();
    let error = error
        .map(|e| format!("<p id=\"input-error\" role=\"alert\">{}</p>\n", html_escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Sign in to {realm}</title></head>\n\
         <body><h1>Sign in to {realm}</h1>\n{error}<form method=\"post\">\n\
         <label for=\"username\">Username</label>\n\
         <input id=\"username\" name=\"username\" type=\"text\" value=\"{username}\" autofocus>\n\
         <label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\">\n\
         {hidden}<input type=\"submit\" id=\"kc-login\" name=\"login\" value=\"Sign In\">\n\
         </form>\n</body></html>\n",
        realm = html_escape(realm),
        username = html_escape(username),
    );
    respond(stream, "200 OK", &[no_store()], HTML, body.as_bytes()).await;
}

/// Where an authorization response goes, with what it always carries.
struct Callback<'a> {
    redirect_uri: &'a str,
    state: Option<&'a str>,
    iss: Option<&'a str>,
}

impl Callback<'_> {
    fn location(&self, first: &[(&str, &str)]) -> String {
        let mut pairs = first.to_vec();
        pairs.extend(self.state.map(|s| ("state", s)));
        pairs.extend(self.iss.map(|i| ("iss", i)));
        with_query(self.redirect_uri, &pairs)
    }

    async fn error<S: AsyncWrite + Unpin>(&self, stream: &mut S, error: &str, description: &str) {
        let location = self.location(&[("error", error), ("error_description", description)]);
        found(stream, &location).await;
    }
}

/// A PKCE S256 challenge: 43 base64url characters (a SHA-256 hash).
fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636: 43 to 128 unreserved characters whose SHA-256 is the challenge.
fn pkce_matches(challenge: &str, verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        && secret_eq(&b64(digest(&SHA256, verifier.as_bytes()).as_ref()), challenge)
}

/// `GET` or `POST` `protocol/openid-connect/auth`.
pub(crate) async fn authorize<S: AsyncWrite + Unpin>(stream: &mut S, state: &State, req: &HttpRequest) {
    let params = parameters(req);
    let p = |name: &str| param(&params, name);
    let submitted = req.method == "POST" && params.contains_key("username");
    if !submitted {
        lock(&state.signin).authorization_requests += 1;
    }
    let Some((client_id, client)) = p("client_id").and_then(|id| state.clients.get_key_value(id)) else {
        return page(
            stream,
            "400 Bad Request",
            "We are sorry...",
            "Client not found: the client_id is missing or unknown.",
        )
        .await;
    };
    let Some(redirect_uri) = p("redirect_uri").filter(|uri| client.allows_redirect(uri)) else {
        return page(
            stream,
            "400 Bad Request",
            "We are sorry...",
            "Invalid parameter: redirect_uri",
        )
        .await;
    };
    let callback = Callback {
        redirect_uri,
        state: p("state"),
        iss: state.iss_parameter.then_some(state.issuer.as_str()),
    };
    if p("response_type") != Some("code") {
        return callback
            .error(
                stream,
                "unsupported_response_type",
                "only response_type=code is served",
            )
            .await;
    }
    let scope = p("scope").unwrap_or("");
    if !scope.split(' ').any(|s| s == "openid") {
        return callback
            .error(stream, "invalid_scope", "the scope must contain openid")
            .await;
    }
    let code_challenge = match (p("code_challenge"), p("code_challenge_method")) {
        (None, None) if client.is_public() => {
            return callback
                .error(stream, "invalid_request", "PKCE is required for public clients")
                .await;
        }
        (None, None) => None,
        (Some(challenge), Some("S256")) if is_s256_challenge(challenge) => Some(challenge.to_owned()),
        _ => {
            return callback
                .error(
                    stream,
                    "invalid_request",
                    "code_challenge_method must be S256, with a 43-character code_challenge",
                )
                .await;
        }
    };
    let user = if submitted {
        let name = p("username").unwrap_or("");
        let password = params.get("password").map_or("", String::as_str);
        match state.users.get(name) {
            Some(u) if secret_eq(&u.password, password) => name.to_owned(),
            _ => return login_page(stream, state, &params, Some("Invalid username or password.")).await,
        }
    } else if let Some(user) = lock(&state.signin).auto_user.clone() {
        user
    } else if let Some(hint) = p("login_hint").filter(|h| state.users.contains_key(*h)) {
        hint.to_owned()
    } else if p("prompt").is_some_and(|v| v.split(' ').any(|p| p == "none")) {
        return callback
            .error(stream, "login_required", "the user is not signed in")
            .await;
    } else {
        return login_page(stream, state, &params, None).await;
    };
    let grant = Grant {
        client_id: client_id.clone(),
        user: user.clone(),
        sid: random_b64(16),
        scope: scope.to_owned(),
        nonce: p("nonce").map(str::to_owned),
        auth_time: now(),
    };
    let code = random_b64(32);
    {
        let mut signin = lock(&state.signin);
        signin.sessions.insert(
            grant.sid.clone(),
            Session {
                user,
                client_id: client_id.clone(),
                active: true,
            },
        );
        signin.codes.insert(
            code.clone(),
            CodeGrant {
                expires: grant.auth_time + CODE_LIFETIME,
                grant,
                redirect_uri: redirect_uri.to_owned(),
                code_challenge,
                used: false,
            },
        );
    }
    found(stream, &callback.location(&[("code", &code)])).await;
}

/// An OAuth error answer of the token endpoint.
pub(crate) struct TokenError {
    status: &'static str,
    error: &'static str,
    description: &'static str,
}

impl TokenError {
    pub(crate) fn new(status: &'static str, error: &'static str, description: &'static str) -> Self {
        Self {
            status,
            error,
            description,
        }
    }

    pub(crate) fn invalid_client(description: &'static str) -> Self {
        Self::new("401 Unauthorized", "invalid_client", description)
    }

    pub(crate) fn bad_request(error: &'static str, description: &'static str) -> Self {
        Self::new("400 Bad Request", error, description)
    }

    pub(crate) fn invalid_grant(description: &'static str) -> Self {
        Self::bad_request("invalid_grant", description)
    }

    pub(crate) async fn answer<S: AsyncWrite + Unpin>(&self, stream: &mut S, state: &State) {
        let mut extra = vec![no_store()];
        if self.error == "invalid_client" {
            let realm = state.prefix.trim_start_matches("/realms/");
            extra.push(("www-authenticate", format!("Basic realm=\"{realm}\"")));
        }
        let body = json!({"error": self.error, "error_description": self.description});
        respond(
            stream,
            self.status,
            &extra,
            "application/json",
            body.to_string().as_bytes(),
        )
        .await;
    }
}

/// Authenticates the client of a token request: a confidential client by
/// `client_secret_basic` or `client_secret_post`, a public one by its
/// `client_id` alone. Answers the client's id.
pub(crate) fn authenticate<'s>(
    state: &'s State,
    req: &HttpRequest,
    f: &HashMap<String, String>,
) -> Result<(&'s String, &'s Client), TokenError> {
    if f.contains_key("client_assertion_type") || f.contains_key("client_assertion") {
        if basic_auth(req).is_some() || f.contains_key("client_secret") {
            return Err(TokenError::bad_request(
                "invalid_request",
                "more than one client authentication method",
            ));
        }
        return client_assertion(state, f);
    }
    let (id, secret) = match basic_auth(req) {
        Some((id, secret)) => {
            if f.contains_key("client_secret") {
                return Err(TokenError::bad_request(
                    "invalid_request",
                    "more than one client authentication method",
                ));
            }
            if f.get("client_id").is_some_and(|form_id| *form_id != id) {
                return Err(TokenError::invalid_client(
                    "client_id differs from the Basic user",
                ));
            }
            (id, Some(secret))
        }
        None => {
            let id = f
                .get("client_id")
                .cloned()
                .ok_or_else(|| TokenError::invalid_client("client authentication required"))?;
            (id, f.get("client_secret").cloned())
        }
    };
    let Some((id, client)) = state.clients.get_key_value(&id) else {
        return Err(TokenError::invalid_client("unknown client"));
    };
    match (&client.secret, secret) {
        (Some(expected), Some(given)) if secret_eq(expected, &given) => Ok((id, client)),
        (None, None) if client.key.is_none() => Ok((id, client)),
        _ => Err(TokenError::invalid_client("client authentication failed")),
    }
}

/// A JWT's header or claims.
fn jwt_part(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `private_key_jwt`: the client assertion (RFC 7523 section 3), signed by
/// the client's key with its algorithm; `iss` = `sub` = the client (and the
/// form's `client_id`, when given), `aud` the issuer or the token endpoint,
/// `exp` in the future and at most 10 minutes away, a `jti` not seen
/// before.
fn client_assertion<'s>(
    state: &'s State,
    f: &HashMap<String, String>,
) -> Result<(&'s String, &'s Client), TokenError> {
    let refuse = |why: &'static str| Err(TokenError::invalid_client(why));
    if f.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return refuse("client_assertion_type must be the JWT bearer type");
    }
    let Some(assertion) = f.get("client_assertion") else {
        return refuse("client_assertion is missing");
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return refuse("client_assertion is not a signed JWT");
    }
    let (Some(header), Some(claims)) = (jwt_part(parts[0]), jwt_part(parts[1])) else {
        return refuse("client_assertion is not a JWT");
    };
    let text = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let Some(sub) = text(&claims, "sub") else {
        return refuse("client_assertion has no sub");
    };
    let Some((id, client)) = state.clients.get_key_value(&sub) else {
        return refuse("unknown client");
    };
    let Some(key) = &client.key else {
        return refuse("the client does not authenticate with private_key_jwt");
    };
    if text(&claims, "iss").as_deref() != Some(sub.as_str()) || f.get("client_id").is_some_and(|c| *c != sub)
    {
        return refuse("client_assertion's iss, sub and client_id differ");
    }
    if text(&header, "alg").as_deref() != Some(key.alg()) {
        return refuse("client_assertion is not signed with the client's algorithm");
    }
    let signed = &assertion[..parts[0].len() + 1 + parts[1].len()];
    let verified = URL_SAFE_NO_PAD
        .decode(parts[2])
        .is_ok_and(|sig| key.verify(signed.as_bytes(), &sig));
    if !verified {
        return refuse("client_assertion's signature does not verify");
    }
    let token_endpoint = format!("{}/protocol/openid-connect/token", state.issuer);
    let audience_ok = |a: &Value| {
        a.as_str()
            .is_some_and(|a| a == state.issuer || a == token_endpoint)
    };
    let aud_ok = match claims.get("aud") {
        Some(Value::Array(items)) => items.iter().any(audience_ok),
        Some(a) => audience_ok(a),
        None => false,
    };
    if !aud_ok {
        return refuse("client_assertion's aud is neither the issuer nor the token endpoint");
    }
    let t = now();
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp > t && exp <= t + 600 => {}
        _ => return refuse("client_assertion's exp is missing, past or too far away"),
    }
    let Some(jti) = text(&claims, "jti").filter(|j| !j.is_empty()) else {
        return refuse("client_assertion has no jti");
    };
    if !lock(&state.signin).assertion_ids.insert(jti) {
        return refuse("client_assertion was used before");
    }
    Ok((id, client))
}

/// `grant_type=authorization_code`. The code is spent by its first
/// presentation, whether or not the rest of the request is right.
pub(crate) fn exchange_code(
    state: &State,
    req: &HttpRequest,
    f: &HashMap<String, String>,
) -> Result<Value, TokenError> {
    let (client_id, _) = authenticate(state, req, f)?;
    let Some(code) = f.get("code") else {
        return Err(TokenError::bad_request("invalid_request", "code is missing"));
    };
    let grant = {
        let mut guard = lock(&state.signin);
        let signin = &mut *guard;
        let Some(c) = signin.codes.get_mut(code) else {
            return Err(TokenError::invalid_grant("unknown code"));
        };
        if c.used {
            return Err(TokenError::invalid_grant("code already used"));
        }
        c.used = true;
        if c.expires < now() {
            return Err(TokenError::invalid_grant("code expired"));
        }
        if c.grant.client_id != *client_id {
            return Err(TokenError::invalid_grant("code issued to another client"));
        }
        if f.get("redirect_uri") != Some(&c.redirect_uri) {
            return Err(TokenError::invalid_grant(
                "redirect_uri differs from the authorization request",
            ));
        }
        let pkce = match (&c.code_challenge, f.get("code_verifier")) {
            (Some(challenge), Some(verifier)) => pkce_matches(challenge, verifier),
            (None, None) => true,
            _ => false,
        };
        if !pkce {
            return Err(TokenError::invalid_grant("PKCE verification failed"));
        }
        if !signin.sessions.get(&c.grant.sid).is_some_and(|s| s.active) {
            return Err(TokenError::invalid_grant("session not active"));
        }
        signin.code_exchanges += 1;
        c.grant.clone()
    };
    Ok(issue(state, &grant))
}

/// `grant_type=refresh_token`, with rotation: each refresh token works once.
pub(crate) fn refresh(
    state: &State,
    req: &HttpRequest,
    f: &HashMap<String, String>,
) -> Result<Value, TokenError> {
    let (client_id, _) = authenticate(state, req, f)?;
    let Some(token) = f.get("refresh_token") else {
        return Err(TokenError::bad_request(
            "invalid_request",
            "refresh_token is missing",
        ));
    };
    let grant = {
        let mut guard = lock(&state.signin);
        let signin = &mut *guard;
        if signin.refuse_refresh {
            return Err(TokenError::invalid_grant(
                "refresh refused (TestIssuer::refuse_refresh)",
            ));
        }
        let Some(r) = signin.refresh_tokens.get_mut(token) else {
            return Err(TokenError::invalid_grant("unknown refresh token"));
        };
        if r.used {
            return Err(TokenError::invalid_grant("refresh token already used"));
        }
        r.used = true;
        if r.expires < now() {
            return Err(TokenError::invalid_grant("refresh token expired"));
        }
        if r.grant.client_id != *client_id {
            return Err(TokenError::invalid_grant(
                "refresh token issued to another client",
            ));
        }
        if !signin.sessions.get(&r.grant.sid).is_some_and(|s| s.active) {
            return Err(TokenError::invalid_grant("session not active"));
        }
        let mut grant = r.grant.clone();
        if let Some(requested) = f.get("scope").filter(|s| !s.is_empty()) {
            if !requested
                .split(' ')
                .all(|s| grant.scope.split(' ').any(|g| g == s))
            {
                return Err(TokenError::bad_request(
                    "invalid_scope",
                    "scope wider than granted",
                ));
            }
            grant.scope.clone_from(requested);
        }
        signin.refreshes += 1;
        grant
    };
    Ok(issue(state, &grant))
}

/// The token response of a code exchange or refresh, recording the new
/// refresh token.
fn issue(state: &State, grant: &Grant) -> Value {
    let roles: Vec<&str> = state
        .users
        .get(&grant.user)
        .map(|u| u.roles.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let padding = lock(&state.signin).access_token_padding;
    let mut access_token = state
        .token()
        .subject(&grant.user)
        .realm_roles(&roles)
        .scope(&grant.scope)
        .claim("azp", json!(grant.client_id))
        .claim("sid", json!(grant.sid));
    if padding > 0 {
        access_token = access_token.claim("padding", json!("p".repeat(padding)));
    }
    let access_token = access_token.sign();
    let mut id_token = state
        .token()
        .subject(&grant.user)
        .without_claim("scope")
        .claim("aud", json!(grant.client_id))
        .claim("azp", json!(grant.client_id))
        .claim("typ", json!("ID"))
        .claim("auth_time", json!(grant.auth_time))
        .claim("sid", json!(grant.sid))
        .claim("name", json!(grant.user))
        .claim("email", json!(email_of(&grant.user)))
        .claim("email_verified", json!(true));
    if let Some(nonce) = &grant.nonce {
        id_token = id_token.claim("nonce", json!(nonce));
    }
    let refresh_token = random_b64(32);
    let (tamper, unpublished) = {
        let mut signin = lock(&state.signin);
        signin.refresh_tokens.insert(
            refresh_token.clone(),
            RefreshGrant {
                grant: grant.clone(),
                expires: now() + REFRESH_LIFETIME,
                used: false,
            },
        );
        (signin.id_token_tamper.clone(), signin.unpublished_key.clone())
    };
    let id_token = match tamper {
        None => Some(id_token.sign()),
        Some(tamper) => {
            let secret = state
                .clients
                .get(&grant.client_id)
                .and_then(|c| c.secret.as_deref());
            tamper.finish(id_token, secret, unpublished)
        }
    };
    let mut answer = json!({
        "access_token": access_token,
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": state.lifetime,
        "refresh_expires_in": REFRESH_LIFETIME,
        "scope": grant.scope,
        "session_state": grant.sid,
    });
    if let Some(id_token) = id_token {
        answer["id_token"] = json!(id_token);
    }
    answer
}

fn email_of(user: &str) -> String {
    format!("{user}@example.test")
}

/// `GET` or `POST` `protocol/openid-connect/userinfo` with a bearer access
/// token this issuer signed, unexpired, whose session (if any) is active.
pub(crate) async fn userinfo<S: AsyncWrite + Unpin>(stream: &mut S, state: &State, req: &HttpRequest) {
    let claims = req
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .and_then(|(_, v)| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .and_then(|token| state.verify(token.trim()))
        .filter(|c| c.get("typ").and_then(Value::as_str) == Some("Bearer"))
        .filter(|c| {
            c.get("exp")
                .and_then(Value::as_i64)
                .is_some_and(|exp| exp > now())
        })
        .filter(|c| match c.get("sid").and_then(Value::as_str) {
            Some(sid) => lock(&state.signin).sessions.get(sid).is_some_and(|s| s.active),
            None => true,
        });
    let Some(claims) = claims else {
        return respond(
            stream,
            "401 Unauthorized",
            &[("www-authenticate", "Bearer error=\"invalid_token\"".to_owned())],
            "application/json",
            json!({"error": "invalid_token"}).to_string().as_bytes(),
        )
        .await;
    };
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    let username = claims
        .get("preferred_username")
        .and_then(Value::as_str)
        .unwrap_or(sub);
    json_answer(
        stream,
        "200 OK",
        &json!({
            "sub": sub,
            "preferred_username": username,
            "name": username,
            "email": email_of(username),
            "email_verified": true,
        }),
    )
    .await;
}

/// The client an ID token was issued to: `azp`, else a single `aud`.
fn client_of(claims: &Map<String, Value>) -> Option<&str> {
    claims
        .get("azp")
        .and_then(Value::as_str)
        .or_else(|| match claims.get("aud") {
            Some(Value::String(aud)) => Some(aud.as_str()),
            Some(Value::Array(auds)) if auds.len() == 1 => auds[0].as_str(),
            _ => None,
        })
}

/// `POST protocol/openid-connect/revoke` (RFC 7009): the client
/// authenticates as at the token endpoint; a refresh token of its own ends
/// (it works no more), and any other token, or none known, is `200` all
/// the same, as the RFC has it. Access tokens are not revoked here.
pub(crate) async fn revoke<S: AsyncWrite + Unpin>(stream: &mut S, state: &State, req: &HttpRequest) {
    let f = form(&req.body);
    let client_id = match authenticate(state, req, &f) {
        Ok((id, _)) => id.clone(),
        Err(e) => return e.answer(stream, state).await,
    };
    let Some(token) = f.get("token") else {
        return TokenError::bad_request("invalid_request", "token is missing")
            .answer(stream, state)
            .await;
    };
    {
        let mut guard = lock(&state.signin);
        let signin = &mut *guard;
        if let Some(r) = signin.refresh_tokens.get_mut(token)
            && r.grant.client_id == client_id
            && !r.used
        {
            r.used = true;
            signin.revoked_refresh_tokens += 1;
        }
    }
    respond(
        stream,
        "200 OK",
        &[("cache-control", "no-store".to_owned())],
        "application/json",
        b"",
    )
    .await;
}

/// `GET` or `POST` `protocol/openid-connect/logout`.
pub(crate) async fn end_session<S: AsyncWrite + Unpin>(stream: &mut S, state: &State, req: &HttpRequest) {
    let params = parameters(req);
    let p = |name: &str| param(&params, name);
    lock(&state.signin).end_session_requests.push(EndSessionRequest {
        id_token_hint: p("id_token_hint").map(str::to_owned),
        post_logout_redirect_uri: p("post_logout_redirect_uri").map(str::to_owned),
        state: p("state").map(str::to_owned),
        client_id: p("client_id").map(str::to_owned),
    });
    let hint = match p("id_token_hint") {
        None => None,
        Some(token) => match state.verify(token) {
            Some(claims) => Some(claims),
            None => {
                return page(
                    stream,
                    "400 Bad Request",
                    "We are sorry...",
                    "Invalid id_token_hint",
                )
                .await;
            }
        },
    };
    let hinted_client = hint.as_ref().and_then(client_of);
    if let (Some(given), Some(hinted)) = (p("client_id"), hinted_client)
        && given != hinted
    {
        return page(
            stream,
            "400 Bad Request",
            "We are sorry...",
            "The id_token_hint was issued to another client",
        )
        .await;
    }
    let client_id = p("client_id").or(hinted_client);
    let redirect = p("post_logout_redirect_uri");
    if let Some(uri) = redirect {
        let allowed = client_id
            .and_then(|id| state.clients.get(id))
            .is_some_and(|c| c.allows_redirect(uri));
        if !allowed {
            return page(
                stream,
                "400 Bad Request",
                "We are sorry...",
                "Invalid parameter: post_logout_redirect_uri",
            )
            .await;
        }
    }
    let ended = hint
        .as_ref()
        .and_then(|claims| claims.get("sid")?.as_str())
        .and_then(|sid| {
            let mut signin = lock(&state.signin);
            let session = signin.sessions.get_mut(sid).filter(|s| s.active)?;
            session.active = false;
            Some((sid.to_owned(), session.user.clone(), session.client_id.clone()))
        });
    if let Some((sid, user, client_id)) = ended {
        let uri = state
            .clients
            .get(&client_id)
            .and_then(|c| c.backchannel_logout_uri.clone());
        if let Some(uri) = uri {
            let logout_token = state
                .logout_token()
                .audience(&client_id)
                .subject(&user)
                .claim("sid", json!(sid))
                .sign();
            let status = post_logout_token(&uri, &logout_token).await;
            lock(&state.signin).deliveries.push(BackchannelDelivery {
                uri,
                status,
                sid,
                logout_token,
            });
        }
    }
    match redirect {
        Some(uri) => {
            let location = match p("state") {
                Some(s) => with_query(uri, &[("state", s)]),
                None => uri.to_owned(),
            };
            found(stream, &location).await;
        }
        None => page(stream, "200 OK", "You are signed out", "You are signed out.").await,
    }
}

/// POSTs `logout_token=<token>` to an `http://` URI; answers the status.
async fn post_logout_token(uri: &str, token: &str) -> Option<u16> {
    let delivery = async {
        let rest = uri.strip_prefix("http://")?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path
        };
        let has_port = !authority.ends_with(']')
            && authority
                .rsplit_once(':')
                .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
        let addr = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let body = format!("logout_token={}", url_encode(token));
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
             content-length: {}\r\nuser-agent: palisade-testkit\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let mut parts = line.split(' ');
        parts.next().filter(|v| v.starts_with("HTTP/1."))?;
        parts.next()?.parse().ok()
    };
    tokio::time::timeout(DELIVERY_TIMEOUT, delivery)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_rule_accepts_loopback_hosts_only() {
        for ok in [
            "http://127.0.0.1:8080/cb",
            "http://localhost:3000/auth/callback?x=1",
            "https://localhost:8443/cb",
            "https://127.0.0.1:1/",
            "http://[::1]:8080/cb",
            "http://localhost/cb",
        ] {
            assert!(is_loopback_uri(ok), "{ok}");
        }
        for bad in [
            "http://example.com:8080/cb",
            "http://127.0.0.1.example.com/cb",
            "http://127.0.0.1:80@evil.example/cb",
            "http://evil.example@127.0.0.1:80/cb",
            "http://localhost:8080/cb#frag",
            "http://localhost:99999/cb",
            "http://localhost:/cb",
            "ftp://localhost:21/",
            "javascript://localhost:1/%0aalert(1)",
            "http://127.0.0.2:8080/cb",
            "http://localhost:8080/c b",
        ] {
            assert!(!is_loopback_uri(bad), "{bad}");
        }
    }

    #[test]
    fn pkce_s256_matches_the_rfc_7636_example() {
        // RFC 7636, appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(is_s256_challenge(challenge));
        assert!(pkce_matches(challenge, verifier));
        assert!(!pkce_matches(challenge, &verifier.replace('d', "e")));
        assert!(!pkce_matches(challenge, challenge));
    }

    #[test]
    fn url_encode_round_trips_through_the_form_decoder() {
        let s = "a b&c=d/é?+%";
        let decoded = form(format!("k={}", url_encode(s)).as_bytes());
        assert_eq!(decoded["k"], s);
    }

    #[test]
    fn debug_of_recorded_requests_hides_tokens() {
        let r = EndSessionRequest {
            id_token_hint: Some("eyJ.secret.token".into()),
            post_logout_redirect_uri: None,
            state: Some("st".into()),
            client_id: None,
        };
        let d = BackchannelDelivery {
            uri: "http://127.0.0.1:1/bc".into(),
            status: Some(200),
            sid: "s".into(),
            logout_token: "eyJ.secret.token".into(),
        };
        let dbg = format!("{r:?} {d:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
    }

    /// The decoded header and payload of a compact JWS.
    fn parts(token: &str) -> (Value, Value) {
        let mut it = token.split('.').map(|p| {
            let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p).unwrap();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        });
        (it.next().unwrap(), it.next().unwrap())
    }

    #[test]
    fn tampered_id_tokens_are_issued_as_asked() {
        let issuer = TestIssuer::builder().client("web", "s3cret").start().unwrap();
        let state = &issuer.state;
        let grant = Grant {
            client_id: "web".into(),
            user: "alice".into(),
            sid: "sid-1".into(),
            scope: "openid".into(),
            nonce: Some("nonce-1".into()),
            auth_time: now(),
        };
        let id_token = |tamper: Option<IdTokenTamper>| {
            issuer.tamper_id_tokens(tamper);
            let answer = issue(state, &grant);
            assert!(answer["access_token"].is_string(), "{answer}");
            answer.get("id_token").map(|t| t.as_str().unwrap().to_owned())
        };

        let good = state.verify(&id_token(None).unwrap()).unwrap();
        assert_eq!(
            (&good["nonce"], &good["aud"], &good["azp"]),
            (&json!("nonce-1"), &json!("web"), &json!("web"))
        );

        let edited = id_token(Some(
            IdTokenTamper::new()
                .claim("nonce", json!("wrong"))
                .claim("aud", json!("other"))
                .without_claim("sub")
                .expires_in(-600)
                .issued_at(-900),
        ))
        .unwrap();
        let claims = state.verify(&edited).expect("still signed by the issuer");
        assert_eq!(
            (&claims["nonce"], &claims["aud"]),
            (&json!("wrong"), &json!("other"))
        );
        assert!(!claims.contains_key("sub"), "{claims:?}");
        let t = now();
        assert!(
            (t - 610..=t - 590).contains(&claims["exp"].as_i64().unwrap()),
            "{claims:?}"
        );
        assert!(
            (t - 910..=t - 890).contains(&claims["iat"].as_i64().unwrap()),
            "{claims:?}"
        );

        let unsigned = id_token(Some(IdTokenTamper::new().unsigned())).unwrap();
        let (header, payload) = parts(unsigned.trim_end_matches('.'));
        assert!(
            unsigned.ends_with('.') && unsigned.split('.').count() == 3,
            "{unsigned}"
        );
        assert_eq!(header["alg"], "none");
        assert!(header.get("kid").is_none(), "{header}");
        assert_eq!(payload["nonce"], "nonce-1");

        let forged = id_token(Some(IdTokenTamper::new().hmac_with_client_secret())).unwrap();
        let (message, sig) = forged.rsplit_once('.').unwrap();
        assert_eq!(parts(message).0["alg"], "HS256");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        let sig = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        assert!(hmac::verify(&key, message.as_bytes(), &sig).is_ok());
        assert!(state.verify(&forged).is_none());

        let unpublished = id_token(Some(IdTokenTamper::new().unpublished_key())).unwrap();
        let kid = parts(&unpublished).0["kid"].as_str().unwrap().to_owned();
        assert!(
            !issuer.jwks().to_string().contains(&kid),
            "{kid} is not published"
        );
        assert!(state.verify(&unpublished).is_none());
        let again = id_token(Some(IdTokenTamper::new().unpublished_key())).unwrap();
        assert_eq!(parts(&again).0["kid"], kid, "one unpublished key");
        let posing = id_token(Some(
            IdTokenTamper::new()
                .unpublished_key()
                .header("kid", json!(issuer.current_kid())),
        ))
        .unwrap();
        assert_eq!(parts(&posing).0["kid"], json!(issuer.current_kid()));
        assert!(
            state.verify(&posing).is_none(),
            "a published kid on another key's signature"
        );

        assert_eq!(id_token(Some(IdTokenTamper::new().omit())), None);
        assert!(
            state.verify(&id_token(None).unwrap()).is_some(),
            "switched off again"
        );
    }

    #[test]
    fn debug_of_a_tamper_names_no_value() {
        let t = IdTokenTamper::new()
            .claim("nonce", json!("secret-nonce"))
            .header("kid", json!("secret-kid"))
            .expires_in(-600)
            .hmac_with_client_secret();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
        assert!(dbg.contains("nonce") && dbg.contains("ClientSecret"), "{dbg}");
    }
}
