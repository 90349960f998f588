//! The answer to a refused request: status, challenges and an RFC 9457 body.

use std::borrow::Cow;
use std::fmt;

use crate::authz::AccessDecision;

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No credential, and the policy needs an authenticated caller (401).
    MissingCredential,
    /// A credential was present but is not valid (401, `invalid_token`).
    InvalidToken,
    /// The request is malformed, e.g. carries two tokens (400, `invalid_request`).
    InvalidRequest,
    /// A Negotiate (Kerberos) token was not acceptable (401).
    InvalidNegotiate,
    /// Authenticated (or not needed), but denied by policy (403).
    Forbidden,
    /// A credential the browser sent by itself (a session cookie, a
    /// Kerberos ticket) was set aside on a write another origin started,
    /// and the request needs a user (403): not a 401, which a page's script
    /// would read as "signed out".
    CrossOrigin,
    /// No Palisade middleware checked the request, and a handler or a
    /// route policy asked what it decided (500): a wiring mistake, refused
    /// rather than served unchecked, and not a 401 that would send the
    /// client looking for a credential.
    Unguarded,
}

/// The kind's stable machine name ([`ErrorKind::as_str`]).
///
/// ```
/// use palisade_core::ErrorKind;
/// assert_eq!(ErrorKind::CrossOrigin.to_string(), "cross-origin");
/// ```
impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ErrorKind {
    /// The HTTP status for this kind.
    #[must_use]
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::MissingCredential | ErrorKind::InvalidToken | ErrorKind::InvalidNegotiate => 401,
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Forbidden | ErrorKind::CrossOrigin => 403,
            ErrorKind::Unguarded => 500,
        }
    }

    /// A stable machine name, used in the problem `type`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MissingCredential => "missing-credential",
            ErrorKind::InvalidToken => "invalid-token",
            ErrorKind::InvalidRequest => "invalid-request",
            ErrorKind::InvalidNegotiate => "invalid-negotiate",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::CrossOrigin => "cross-origin",
            ErrorKind::Unguarded => "unguarded",
        }
    }

    /// The kind's name as a metric label (`invalid_token`): a rejection's
    /// [`reason`](Rejection::reason) unless its authenticator names one.
    fn reason(self) -> &'static str {
        match self {
            ErrorKind::MissingCredential => "missing_credential",
            ErrorKind::InvalidToken => "invalid_token",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::InvalidNegotiate => "invalid_negotiate",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::CrossOrigin => "cross_origin",
            ErrorKind::Unguarded => "unguarded",
        }
    }

    fn title(self) -> &'static str {
        match self {
            ErrorKind::MissingCredential => "Authentication required",
            ErrorKind::InvalidToken => "Invalid token",
            ErrorKind::InvalidRequest => "Invalid request",
            ErrorKind::InvalidNegotiate => "Invalid Negotiate token",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::CrossOrigin => "Cross-origin request refused",
            ErrorKind::Unguarded => "Not checked by Palisade",
        }
    }
}

/// A refused request, ready to be rendered by any framework.
///
/// The detail is a fixed, server-chosen sentence: it never echoes the
/// credential, a claim or a key.
///
/// ```
/// use palisade_core::{ErrorKind, Rejection};
/// let r = Rejection::invalid_token("api", "the token has expired");
/// assert_eq!(r.status(), 401);
/// assert_eq!(
///     r.challenges()[0],
///     r#"Bearer realm="api", error="invalid_token", error_description="the token has expired""#
/// );
/// assert!(r.problem_json().contains("\"status\":401"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: ErrorKind,
    detail: Cow<'static, str>,
    challenges: Vec<String>,
    access: Option<AccessDecision>,
    explain: bool,
    /// How a handler's extractor renders it as a response: as its request
    /// asks (a gRPC call, a HEAD request), which the guard's own refusals
    /// are rendered as by [`Decision`](crate::adapter::Decision).
    rendering: crate::adapter::Rendering,
    /// Why, as a metric label: the authenticator's name for it, or the
    /// kind's.
    reason: &'static str,
}

/// The media type of [`Rejection::problem_json`].
pub const PROBLEM_JSON: &str = "application/problem+json";

impl Rejection {
    /// A rejection of this kind with these `WWW-Authenticate` challenges.
    #[must_use]
    pub fn new(kind: ErrorKind, detail: impl Into<Cow<'static, str>>, challenges: Vec<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            challenges,
            access: None,
            explain: false,
            rendering: crate::adapter::Rendering::Http,
            reason: kind.reason(),
        }
    }

    /// The same rejection, with `reason` as its short machine name (the
    /// `reason` label of `palisade_authentication_failures_total`: one of a
    /// few fixed names, never a value from the request), in place of the
    /// kind's.
    ///
    /// ```
    /// use palisade_core::Rejection;
    /// let r = Rejection::invalid_token("api", "the token has expired");
    /// assert_eq!(r.reason(), "invalid_token");
    /// assert_eq!(r.with_reason("expired").reason(), "expired");
    /// ```
    #[must_use]
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = reason;
        self
    }

    /// Why, as a metric label: see [`with_reason`](Self::with_reason).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// The rejection rendered as `rendering` when a handler's extractor
    /// answers with it (`IntoResponse`, actix-web's `ResponseError`).
    #[cfg(any(feature = "axum", feature = "actix"))]
    pub(crate) fn rendered_as(mut self, rendering: crate::adapter::Rendering) -> Self {
        self.rendering = rendering;
        self
    }

    /// The response a handler's extractor answers with.
    #[cfg(any(feature = "axum", feature = "actix"))]
    pub(crate) fn reply(self) -> crate::adapter::Reply {
        let rendering = self.rendering;
        rendering.render(crate::adapter::Reply::from(self))
    }

    /// 401 for a bearer token that is not valid (RFC 6750 `invalid_token`).
    #[must_use]
    pub fn invalid_token(realm: &str, detail: impl Into<Cow<'static, str>>) -> Self {
        let detail = detail.into();
        let challenge = bearer_error_challenge(realm, "invalid_token", &detail);
        Self::new(ErrorKind::InvalidToken, detail, vec![challenge])
    }

    /// 400 for a malformed bearer request (RFC 6750 `invalid_request`).
    #[must_use]
    pub fn invalid_request(realm: &str, detail: impl Into<Cow<'static, str>>) -> Self {
        let detail = detail.into();
        let challenge = bearer_error_challenge(realm, "invalid_request", &detail);
        Self::new(ErrorKind::InvalidRequest, detail, vec![challenge])
    }

    /// Adds `name="value"` to each of its `Bearer` challenges (RFC 9728's
    /// `resource_metadata`, say).
    #[must_use]
    pub fn with_bearer_param(mut self, name: &str, value: &str) -> Self {
        for c in &mut self.challenges {
            if c.starts_with("Bearer ") {
                c.push_str(&format!(", {name}=\"{}\"", quote_safe(value)));
            }
        }
        self
    }

    /// 401 asking for credentials, with every configured challenge.
    #[must_use]
    pub fn missing_credential(challenges: Vec<String>) -> Self {
        Self::new(
            ErrorKind::MissingCredential,
            "this resource needs an authenticated caller",
            challenges,
        )
    }

    /// 500: no Palisade middleware checked the request, and a handler or
    /// a route policy asked what it decided ([`ErrorKind::Unguarded`]).
    #[must_use]
    pub fn unguarded() -> Self {
        Self::new(
            ErrorKind::Unguarded,
            "no Palisade middleware checked this request: the service is wired wrongly",
            Vec::new(),
        )
    }

    /// 403: authenticated, but not allowed.
    #[must_use]
    pub fn forbidden(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Forbidden, detail, Vec::new())
    }

    /// 400 for a request that cannot be handled as sent (a sign-in
    /// callback without its state, a form that does not parse).
    #[must_use]
    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidRequest, detail, Vec::new())
    }

    /// 400 for a request path that cannot be normalised (a bad
    /// percent-escape, or an escaped slash where those are refused).
    #[must_use]
    pub fn malformed_path(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidRequest, detail, Vec::new())
    }

    /// A refusal for want of a credential: asked for one (401) when a
    /// challenge says how (RFC 9110 §11.6.1), else, as no credential could
    /// change it, a 403 saying `detail`. Any other refusal as it is.
    #[must_use]
    pub(crate) fn or_outright(mut self, detail: &'static str) -> Self {
        if self.kind == ErrorKind::MissingCredential && self.challenges.is_empty() {
            self.kind = ErrorKind::Forbidden;
            self.detail = Cow::Borrowed(detail);
        }
        self
    }

    /// A refusal for want of a credential, of a request that carried one
    /// the guard set aside because another origin started it (a cookie or
    /// a Kerberos ticket on a cross-origin `POST`): a 403 saying so
    /// ([`ErrorKind::CrossOrigin`], problem type
    /// `urn:palisade:problem:cross-origin`), as Go's
    /// `CrossOriginProtection` and Spring Security's CSRF check answer, not
    /// a 401 that a browser's script reads as "signed out" and answers by
    /// signing in again, to be refused the same way. Any other refusal as
    /// it is.
    #[must_use]
    pub(crate) fn cross_origin(mut self) -> Self {
        if self.kind == ErrorKind::MissingCredential {
            self.kind = ErrorKind::CrossOrigin;
            self.detail = Cow::Borrowed(
                "another origin started this request, and a credential the browser sends by itself (a session cookie, a Kerberos ticket) does not authenticate such a request; origins of the service's own are named in trustedOrigins",
            );
            self.challenges = Vec::new();
            self.reason = ErrorKind::CrossOrigin.reason();
        }
        self
    }

    /// The same rejection, with the access decision that caused it.
    #[must_use]
    pub fn with_access(mut self, access: AccessDecision) -> Self {
        self.access = Some(access);
        self
    }

    /// The same rejection, explained in the `x-palisade-authz` header of its
    /// reply when `on` (the guard's debug switch).
    #[must_use]
    pub(crate) fn explained(mut self, on: bool) -> Self {
        self.explain = on;
        self
    }

    /// The value of the `x-palisade-authz` debug header: the decision behind
    /// a policy refusal, when the guard's explain switch is on.
    #[must_use]
    pub fn explanation(&self) -> Option<String> {
        self.access
            .as_ref()
            .filter(|_| self.explain)
            .map(ToString::to_string)
    }

    /// The access decision behind a policy refusal: which policy and rule.
    #[must_use]
    pub fn access(&self) -> Option<&AccessDecision> {
        self.access.as_ref()
    }

    /// Why the request was refused.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The HTTP status code.
    #[must_use]
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The human-readable detail (safe to show to the client).
    #[must_use]
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The `WWW-Authenticate` header values, one header each.
    #[must_use]
    pub fn challenges(&self) -> &[String] {
        &self.challenges
    }

    /// The RFC 9457 problem document.
    #[must_use]
    pub fn problem_json(&self) -> String {
        problem_document(self.kind.as_str(), self.kind.title(), self.status(), &self.detail)
    }
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection")
            .field("kind", &self.kind)
            .field("status", &self.status())
            .field("detail", &self.detail)
            .field("access", &self.access)
            .finish()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.kind.title(), self.status(), self.detail)
    }
}

impl std::error::Error for Rejection {}

/// An RFC 9457 problem document of type `urn:palisade:problem:<kind>`.
pub(crate) fn problem_document(kind: &str, title: &str, status: u16, detail: &str) -> String {
    /// The document's members, serialized in this order. (Through
    /// `json!`, an ordered map was built, hashed and dropped for every
    /// refusal: a flood of bad tokens paid for it.)
    #[derive(serde::Serialize)]
    struct Problem<'a> {
        #[serde(rename = "type")]
        kind: String,
        title: &'a str,
        status: u16,
        detail: &'a str,
    }
    let problem = Problem {
        kind: format!("urn:palisade:problem:{kind}"),
        title,
        status,
        detail,
    };
    serde_json::to_string(&problem).unwrap_or_default()
}

/// `Bearer realm="…"`, the challenge of a bearer-token authenticator.
#[must_use]
pub fn bearer_challenge(realm: &str) -> String {
    format!("Bearer realm=\"{}\"", quote_safe(realm))
}

fn bearer_error_challenge(realm: &str, error: &str, detail: &str) -> String {
    format!(
        "Bearer realm=\"{}\", error=\"{error}\", error_description=\"{}\"",
        quote_safe(realm),
        quote_safe(detail)
    )
}

/// `Cookie realm="…", form-action="…", cookie-name="…"`, the challenge of
/// a browser sign-in whose credential is a session cookie (the scheme of
/// draft-broyer-http-cookie-auth): where to sign in, and the cookie that
/// signing in sets.
#[must_use]
pub fn cookie_challenge(realm: &str, form_action: &str, cookie_name: &str) -> String {
    format!(
        "Cookie realm=\"{}\", form-action=\"{}\", cookie-name=\"{}\"",
        quote_safe(realm),
        quote_safe(form_action),
        quote_safe(cookie_name)
    )
}

/// The challenges of a guard that signs browsers in and takes no other
/// credential, for a request without one that is not sent to sign in (an
/// API call): `Bearer realm="REALM"` first, the challenge a client reads
/// for a request without a credential (docs/examples.md's 401), then the
/// [`cookie_challenge`] saying where to sign in.
#[must_use]
pub fn sign_in_challenge(realm: &str, form_action: &str, cookie_name: &str) -> String {
    format!(
        "{}, {}",
        bearer_challenge(realm),
        cookie_challenge(realm, form_action, cookie_name)
    )
}

use crate::syntax::quote_safe;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(Rejection::missing_credential(vec![]).status(), 401);
        assert_eq!(Rejection::invalid_token("r", "x").status(), 401);
        assert_eq!(Rejection::invalid_request("r", "x").status(), 400);
        assert_eq!(Rejection::forbidden("x").status(), 403);
        let cross = Rejection::missing_credential(vec!["Bearer".into()]).cross_origin();
        assert_eq!(
            (cross.status(), cross.kind(), cross.reason()),
            (403, ErrorKind::CrossOrigin, "cross_origin")
        );
        assert!(cross.challenges().is_empty());
        assert_eq!(
            Rejection::forbidden("x").cross_origin().kind(),
            ErrorKind::Forbidden,
            "only a missing credential"
        );
    }

    #[test]
    fn challenge_values_cannot_break_out_of_quotes() {
        let r = Rejection::invalid_token("a\"b\\c\n", "x\"y");
        assert_eq!(
            r.challenges()[0],
            "Bearer realm=\"abc\", error=\"invalid_token\", error_description=\"xy\""
        );
    }

    #[test]
    fn problem_body_is_rfc9457() {
        let v: serde_json::Value =
            serde_json::from_str(&Rejection::forbidden("denied by policy").problem_json()).unwrap();
        assert_eq!(v["status"], 403);
        assert_eq!(v["title"], "Forbidden");
        assert_eq!(v["type"], "urn:palisade:problem:forbidden");
        assert_eq!(v["detail"], "denied by policy");
    }

    #[test]
    fn problem_documents_keep_their_members_order_and_escapes() {
        let detail = "a \"quoted\" \\ value,\nnew line, tab\t, é, \u{1}";
        assert_eq!(
            problem_document("invalid-token", "Invalid token", 401, detail),
            format!(
                r#"{{"type":"urn:palisade:problem:invalid-token","title":"Invalid token","status":401,"detail":{}}}"#,
                serde_json::Value::from(detail)
            )
        );
    }

    #[test]
    fn quote_safe_copies_clean_values_whole_and_filters_the_rest() {
        assert_eq!(quote_safe("token expired"), "token expired");
        assert_eq!(quote_safe("a\"b\\c\nd é~"), "abcd ~");
    }
}
