//! The authenticate step, for authenticator authors: what an
//! [`Authenticator`] reads ([`RequestHead`]) and what it answers
//! ([`AuthOutcome`], in a [`Check`]).
//!
//! ```
//! use palisade_core::authn::{AuthOutcome, Authenticated, Authenticator, RequestHead};
//! use palisade_core::{Check, Identity, Rejection, TokenClaims, Verification};
//!
//! /// Trusts an `x-user` header: for a test, never for production.
//! struct HeaderUser;
//! impl Authenticator for HeaderUser {
//!     fn challenge(&self) -> Option<String> { Some("X-User".into()) }
//!     fn authenticate(&self, req: &dyn RequestHead) -> Check<AuthOutcome> {
//!         Check::Ready(match req.header_str("x-user") {
//!             None => AuthOutcome::NoCredential,
//!             Some("") => AuthOutcome::Rejected(Rejection::forbidden("empty user")),
//!             Some(user) => {
//!                 let mut claims = TokenClaims::default();
//!                 claims.issuer = "header".into();
//!                 claims.subject = user.into();
//!                 let id = Identity::from_token(claims, Verification::assertion());
//!                 AuthOutcome::Authenticated(Authenticated::new(id))
//!             }
//!         })
//!     }
//! }
//! ```

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::adapter::Reply;
use crate::check::Check;
use crate::error::Rejection;
use crate::identity::{AuthMethod, Identity};

pub use crate::error::{bearer_challenge, cookie_challenge, sign_in_challenge};
pub use crate::flight::{Busy, SingleFlight};
pub use crate::request::{
    ConnectionInfo, OwnedRequest, PeerRecheck, RequestHead, origin_among, started_elsewhere,
};
pub use crate::shed::shed_soonest;
#[cfg(feature = "test-util")]
pub use crate::testing::TestUsers;

/// A change to the request's headers that an authenticator asks for before the
/// handler sees the request (Istio's `forwardOriginalToken: false`,
/// `outputPayloadToHeader`, `outputClaimToHeaders`).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderEdit {
    /// Remove every value of this header (lower case).
    Remove(String),
    /// Replace this header (lower case) with this value.
    Set(String, String),
}

impl fmt::Debug for HeaderEdit {
    // Values can hold claims; print names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderEdit::Remove(n) => write!(f, "Remove({n})"),
            HeaderEdit::Set(n, _) => write!(f, "Set({n}, <value>)"),
        }
    }
}

/// The header edits of one authentication, shared: an authenticator that
/// caches its answer hands out the same edits to every request without
/// allocating.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits(Option<Arc<[HeaderEdit]>>);

impl HeaderEdits {
    /// No edit.
    #[must_use]
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|e| e.is_empty())
    }

    /// The edits, in order.
    #[must_use]
    pub fn as_slice(&self) -> &[HeaderEdit] {
        self.0.as_deref().unwrap_or_default()
    }

    /// These edits followed by `more`.
    #[must_use]
    pub fn then(self, more: HeaderEdits) -> Self {
        match (self.is_empty(), more.is_empty()) {
            (_, true) => self,
            (true, false) => more,
            // Removals of headers `more` edits anyway (it removes or
            // replaces them whatever they held): `more` as it is, shared,
            // not copied (the guard's reserved headers, then the JWT
            // authenticator's edits of the same headers).
            (false, false)
                if self.as_slice().iter().all(|e| match e {
                    HeaderEdit::Remove(n) => more.touches(n),
                    HeaderEdit::Set(..) => false,
                }) =>
            {
                more
            }
            (false, false) => self
                .as_slice()
                .iter()
                .chain(more.as_slice())
                .cloned()
                .collect::<Vec<_>>()
                .into(),
        }
    }
}

impl HeaderEdits {
    /// Whether one of the edits removes or sets the header `name`.
    pub(crate) fn touches(&self, name: &str) -> bool {
        self.as_slice().iter().any(|e| match e {
            HeaderEdit::Remove(n) | HeaderEdit::Set(n, _) => n.eq_ignore_ascii_case(name),
        })
    }
}

impl From<Vec<HeaderEdit>> for HeaderEdits {
    fn from(edits: Vec<HeaderEdit>) -> Self {
        Self((!edits.is_empty()).then(|| edits.into()))
    }
}

/// The bearer token an authenticator verified for this request (a JWT
/// authenticator's token, or a sign-in session's access token), attached to
/// the request (`RequestAuth::attachment::<BearerToken>()`): what a service
/// relays or exchanges when it calls others on the caller's behalf. It is
/// the token that was checked, wherever it was read from, so a second,
/// unchecked `Authorization` header is never what gets relayed; and it is
/// there whether or not the header was kept for the handler
/// (`forwardOriginalToken`). `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    /// A verified token.
    #[must_use]
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Self(token.into())
    }

    /// The token.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The token, shared.
    #[must_use]
    pub fn shared(&self) -> &Arc<str> {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Values an authenticator hands to the handler beside the identity (a
/// delegated Kerberos credential, say), found by type with
/// `RequestAuth::attachment::<T>()`.
#[derive(Clone, Default)]
pub struct Attachments(Slots);

/// One value is held inline (the common case: the verified bearer token of
/// a request), so attaching it allocates nothing.
#[derive(Clone, Default)]
enum Slots {
    #[default]
    None,
    One(Arc<dyn Any + Send + Sync>),
    Many(Vec<Arc<dyn Any + Send + Sync>>),
}

impl Slots {
    fn as_slice(&self) -> &[Arc<dyn Any + Send + Sync>] {
        match self {
            Slots::None => &[],
            Slots::One(value) => std::slice::from_ref(value),
            Slots::Many(values) => values,
        }
    }

    #[inline]
    fn push(&mut self, value: Arc<dyn Any + Send + Sync>) {
        // The first value (a request's verified token): put in place.
        if let Slots::None = self {
            *self = Slots::One(value);
            return;
        }
        *self = match std::mem::take(self) {
            Slots::None => Slots::One(value),
            Slots::One(first) => Slots::Many(vec![first, value]),
            Slots::Many(mut values) => {
                values.push(value);
                Slots::Many(values)
            }
        };
    }
}

impl fmt::Debug for Attachments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attachments({})", self.0.as_slice().len())
    }
}

impl Attachments {
    /// Adds a value.
    pub fn push<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0.push(Arc::new(value));
    }

    /// Adds a value already shared (a cached one: no allocation for it).
    #[inline]
    pub fn push_shared<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.0.push(value);
    }

    /// The first value of type `T`.
    #[must_use]
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.0.as_slice().iter().find_map(|a| a.downcast_ref::<T>())
    }

    /// Appends another set (taking it whole when this one is empty, as it
    /// is for a request's first authenticator).
    pub fn append(&mut self, other: &mut Attachments) {
        if matches!(self.0, Slots::None) {
            std::mem::swap(&mut self.0, &mut other.0);
            return;
        }
        match std::mem::take(&mut other.0) {
            Slots::None => {}
            Slots::One(value) => self.0.push(value),
            Slots::Many(values) => values.into_iter().for_each(|v| self.0.push(v)),
        }
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        matches!(self.0, Slots::None)
    }
}

#[cfg(test)]
mod attachment_tests {
    use super::{Attachments, AuthOutcome, Authenticated};
    use crate::{Identity, TokenClaims};

    #[test]
    fn attachments_keep_every_value_in_order_whatever_their_number() {
        let mut a = Attachments::default();
        assert!(a.is_empty());
        assert_eq!(a.get::<u8>(), None);
        a.push(1u8);
        assert!(!a.is_empty());
        assert_eq!(a.get::<u8>(), Some(&1));
        a.push(2u8);
        a.push("three");
        // The first of a type wins.
        assert_eq!(a.get::<u8>(), Some(&1));
        assert_eq!(a.get::<&str>(), Some(&"three"));
        let mut b = Attachments::default();
        b.push(4u16);
        let mut c = Attachments::default();
        c.push(5u32);
        c.push(6u64);
        // Appended to a set of one, then of several; an empty set takes
        // the other whole.
        b.append(&mut c);
        assert!(c.is_empty());
        a.append(&mut b);
        assert!(b.is_empty());
        assert_eq!(format!("{a:?}"), "Attachments(6)");
        assert_eq!(
            (a.get::<u16>(), a.get::<u32>(), a.get::<u64>()),
            (Some(&4), Some(&5), Some(&6))
        );
        let mut empty = Attachments::default();
        empty.append(&mut a);
        assert_eq!(format!("{empty:?}"), "Attachments(6)");
        assert!(a.is_empty());
    }

    #[test]
    fn an_authentication_shows_its_response_headers_names_only() {
        let claims = TokenClaims {
            subject: "alice".into(),
            ..TokenClaims::default()
        };
        let id = Identity::from_token(claims, crate::Verification::assertion());
        let outcome = AuthOutcome::Authenticated(
            Authenticated::new(id)
                .with_response_header("set-cookie", "palisade_session=s3cret-session".into())
                .with_response_header("www-authenticate", "Negotiate s3cret-token".into()),
        );
        let shown = format!("{outcome:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains(r#"response_headers: ["set-cookie", "www-authenticate"]"#),
            "{shown}"
        );
    }
}

/// A successful authentication.
#[derive(Clone)]
#[non_exhaustive]
pub struct Authenticated {
    /// Who the caller is.
    pub identity: Identity,
    /// Header changes to apply before the handler runs.
    pub edits: HeaderEdits,
    /// Headers to add to the response (a Negotiate mutual-authentication
    /// token: `WWW-Authenticate: Negotiate …`), lower-case names.
    pub response_headers: Vec<(String, String)>,
    /// Values for the handler.
    pub attachments: Attachments,
    /// The credential came from a cookie, which a browser sends by itself
    /// ([`ambient`](Self::ambient)).
    pub ambient: bool,
    /// A browser sends the credential by itself whenever the server asks
    /// (a Negotiate ticket), whatever page started the request
    /// ([`browser_sent`](Self::browser_sent)); cookies are, being ambient.
    pub browser_sent: bool,
}

impl fmt::Debug for Authenticated {
    // Response header values can be credentials (a session cookie, a
    // Negotiate mutual-authentication token): names only, as
    // `ResponseEdits` shows them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticated")
            .field("identity", &self.identity)
            .field("edits", &self.edits)
            .field(
                "response_headers",
                &self.response_headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("attachments", &self.attachments)
            .field("ambient", &self.ambient)
            .field("browser_sent", &self.browser_sent)
            .finish()
    }
}

impl Authenticated {
    /// An authentication with no header changes.
    #[must_use]
    #[inline]
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            edits: HeaderEdits::none(),
            response_headers: Vec::new(),
            attachments: Attachments::default(),
            ambient: false,
            browser_sent: false,
        }
    }

    /// Marks the credential as a cookie's (a sign-in or Negotiate session),
    /// which a browser sends by itself: where the request also carries a
    /// credential of its own (a header) naming another user, that one is
    /// taken and this authentication is dropped whole (its identity, its
    /// attachments, its edits), as Keycloak's adapters take a bearer token
    /// before a session. Two credentials of its own naming different users
    /// refuse the request (`400`).
    #[must_use]
    pub fn ambient(mut self) -> Self {
        self.ambient = true;
        self
    }

    /// Marks the credential as one a browser sends by itself when the
    /// server asks, whatever page started the request (HTTP Negotiate: the
    /// browser answers a `401 Negotiate` with a ticket for any host its
    /// settings allow). Like a cookie ([`ambient`](Self::ambient)), it then
    /// does not authenticate a request that may change state and that
    /// another origin started (see `GuardBuilder::trusted_origin`); unlike
    /// a cookie, it is a credential of the request's own otherwise.
    #[must_use]
    pub fn browser_sent(mut self) -> Self {
        self.browser_sent = true;
        self
    }

    /// Whether a browser may have sent the credential by itself: a cookie's
    /// or one [`browser_sent`](Self::browser_sent).
    #[must_use]
    pub fn sent_unasked(&self) -> bool {
        self.ambient || self.browser_sent
    }

    /// Attaches a value for the handler.
    #[must_use]
    pub fn with_attachment<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.attachments.push(value);
        self
    }

    /// Attaches a value already shared (one kept in a cache).
    #[must_use]
    #[inline]
    pub fn with_shared_attachment<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.attachments.push_shared(value);
        self
    }

    /// Adds a response header.
    #[must_use]
    pub fn with_response_header(mut self, name: &str, value: String) -> Self {
        self.response_headers.push((name.to_owned(), value));
        self
    }

    /// Adds header changes.
    #[must_use]
    #[inline]
    pub fn with_edits(mut self, edits: impl Into<HeaderEdits>) -> Self {
        self.edits = edits.into();
        self
    }
}

/// What one authenticator found in a request.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AuthOutcome {
    /// A valid credential.
    Authenticated(Authenticated),
    /// No credential of this authenticator's kind.
    NoCredential,
    /// A credential that is not acceptable: the request is refused whatever the policy.
    Rejected(Rejection),
    /// Answer with this reply, whatever the access policy says: the request
    /// is for one of the authenticator's own endpoints (a sign-in
    /// callback, a logout), or the authenticator sheds it (SPNEGO's `503`
    /// when no GSSAPI permit came free in time). The first such answer of
    /// a request is final.
    Respond(Reply),
}

/// Checks one kind of credential.
///
/// Implementations read what they need from the request synchronously and
/// answer a ready outcome (the fast path: no credential, a cached token) or
/// a `'static` future (I/O, blocking work), so no request borrow crosses an
/// `await`.
pub trait Authenticator: Any + Send + Sync {
    /// The `WWW-Authenticate` challenge this authenticator adds when a
    /// credential is required and missing (`Bearer realm="…"`, `Negotiate`).
    /// `None` for a credential no challenge asks for (a peer's
    /// certificate). A 401 names how to authenticate (RFC 9110 §11.6.1), so
    /// where no authenticator of the guard offers a challenge (nor a
    /// [`fallback_challenge`](Self::fallback_challenge), nor a
    /// [`sign_in`](Self::sign_in) for the request) a request refused for
    /// want of a credential is answered 403, as Spring Security's
    /// `Http403ForbiddenEntryPoint` answers for certificates.
    fn challenge(&self) -> Option<String>;

    /// Authenticates a request.
    fn authenticate(&self, request: &dyn RequestHead) -> Check<AuthOutcome>;

    /// What this authenticator still waits for before it can verify the
    /// credentials it expects (an issuer's keys never fetched yet), said
    /// for a readiness probe ([`Guard::waiting_for`](crate::Guard::waiting_for)).
    /// `None` (the default): nothing.
    fn waiting_for(&self) -> Option<String> {
        None
    }

    /// The origin this authenticator knows the service by, when it is
    /// configured (a browser sign-in's external origin,
    /// `https://shop.example`): requests it starts are the service's own
    /// wherever a guard compares origins (see `GuardBuilder::trusted_origin`),
    /// even behind a proxy that gives the service another `Host`. `None`
    /// (the default): the request's `Host` says it.
    fn own_origin(&self) -> Option<&str> {
        None
    }

    /// The challenge of a guard none of whose authenticators has one
    /// ([`challenge`](Self::challenge)): a 401 must carry one (RFC 9110
    /// §11.6.1). Browser sign-in, whose credential is a cookie, gives its
    /// challenges here ([`sign_in_challenge`]: `Bearer`, then the `Cookie`
    /// one saying where to sign in), so that they are not added beside
    /// another authenticator's `Bearer`. `None` (the default): none.
    fn fallback_challenge(&self) -> Option<String> {
        None
    }

    /// For an interactive authenticator (browser sign-in): the answer to a
    /// request the policy refuses for want of a credential, in place of the
    /// 401: a redirect to sign in for a browser's navigation, or (browser
    /// sign-in's) a 503 for any request whose session cannot be used now.
    /// `None` (the default) keeps the 401 and its challenges.
    fn sign_in(&self, request: &dyn RequestHead) -> Option<Reply> {
        let _ = request;
        None
    }

    /// How this authenticator authenticates, for the `method` label of
    /// [`AUTHENTICATIONS`](crate::metrics::AUTHENTICATIONS); `None` (the
    /// default) is reported as `custom`.
    fn method(&self) -> Option<AuthMethod> {
        None
    }

    /// Hot reload ([`Guard::replace`](crate::Guard::replace)): called on
    /// each authenticator of the new configuration with each of the one it
    /// replaces, until one answers. `Some` is the authenticator to use in
    /// this one's place: `previous` itself when both are configured alike,
    /// or a copy of this one that shares the state of `previous` still
    /// valid (fetched keys, verified tokens). `None` (the default) keeps
    /// this one as built.
    fn take_over(&self, previous: &dyn Authenticator) -> Option<Arc<dyn Authenticator>> {
        let _ = previous;
        None
    }

    /// The request headers (lower case) this authenticator sets from a
    /// verified credential, such as Istio's `outputPayloadToHeader` and
    /// `outputClaimToHeaders`. The guard removes them from every request
    /// before any authenticator's edits, as Envoy does, so that a client
    /// cannot supply what the handler takes for a verified claim: not
    /// without a credential, nor with one this authenticator did not
    /// verify. The access policy reads them as edited too. Empty by
    /// default.
    fn reserved_headers(&self) -> &[String] {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::{HeaderEdit, HeaderEdits};
    use std::sync::Arc;

    fn edits(e: &[HeaderEdit]) -> HeaderEdits {
        e.to_vec().into()
    }

    #[test]
    fn then_applies_in_order_and_shares_edits_that_subsume_the_first() {
        let remove = |n: &str| HeaderEdit::Remove(n.into());
        let set = |n: &str, v: &str| HeaderEdit::Set(n.into(), v.into());
        let reserved = edits(&[remove("x-user"), remove("x-jwt-payload")]);
        // Each reserved header removed or set again: the second, shared.
        let jwt = edits(&[
            remove("authorization"),
            set("X-User", "bob"),
            remove("x-jwt-payload"),
        ]);
        let both = reserved.clone().then(jwt.clone());
        assert!(Arc::ptr_eq(both.0.as_ref().unwrap(), jwt.0.as_ref().unwrap()));
        // One left untouched: both, in order.
        let partial = edits(&[set("x-user", "bob")]);
        assert_eq!(
            reserved.clone().then(partial).as_slice(),
            [remove("x-user"), remove("x-jwt-payload"), set("x-user", "bob")]
        );
        // A set is never dropped.
        let first = edits(&[set("x-a", "1")]);
        assert_eq!(
            first.then(edits(&[remove("x-a")])).as_slice(),
            [set("x-a", "1"), remove("x-a")]
        );
    }
}
