//! The seam between the core and a web framework: for adapter authors.
//!
//! Applications do not need this module: they use `palisade-axum` or
//! `palisade-actix`. An adapter makes every decision through the core and
//! only translates types, so two frameworks cannot answer differently:
//!
//! 1. It shows the core its request through [`RequestHead`]
//!    and calls [`Guard::check`](crate::Guard::check), which answers a
//!    [`Check<Decision>`](crate::Check).
//! 2. It hands the [`Decision`] its request as a [`RequestTarget`]:
//!    [`Decision::apply`] makes the request's edits (the authenticators'
//!    header edits, the normalised path for the router, the [`RequestAuth`]
//!    record the extractors read) and answers either the
//!    [`ResponseEdits`] for the handler's response or the [`Reply`] to send
//!    instead.
//! 3. It translates a [`Reply`] (status, headers, body) into its response
//!    type, or applies the [`ResponseEdits`] to the handler's response
//!    through a [`ResponseTarget`].
//!
//! ```
//! use palisade_core::adapter::{Decision, Reply, RequestTarget, ResponseTarget, TargetRewrite};
//! use palisade_core::authz::AccessPolicy;
//! use palisade_core::authn::OwnedRequest;
//! use palisade_core::{Check, Guard, RequestAuth};
//!
//! /// A toy framework's request: an `OwnedRequest` plus a slot for the record.
//! struct Req(OwnedRequest, Option<RequestAuth>);
//! impl RequestTarget for Req {
//!     fn remove_header(&mut self, _: &str) {}
//!     fn set_header(&mut self, _: &str, _: &str) {}
//!     fn rewrite_target(&mut self, _: &str) -> Result<(), TargetRewrite> { Ok(()) }
//!     fn insert_auth(&mut self, auth: RequestAuth) { self.1 = Some(auth) }
//! }
//! struct Res(Vec<(String, String)>);
//! impl ResponseTarget for Res {
//!     fn append_header(&mut self, name: &str, value: &str) { self.0.push((name.into(), value.into())) }
//! }
//!
//! let guard = Guard::builder().access_policy(AccessPolicy::allow_all()).build()?;
//! let mut req = Req(OwnedRequest::get("/list"), None);
//! let Check::Ready(decision) = guard.check(&req.0) else { unreachable!() };
//! match decision.apply(&mut req) {
//!     Ok(edits) => {
//!         assert!(req.1.is_some(), "the extractors' record is in place");
//!         let mut res = Res(Vec::new());
//!         edits.apply(&mut res); // after the handler answered
//!     }
//!     Err(reply) => { let _: Reply = reply; /* send it */ }
//! }
//! # Ok::<(), palisade_core::GuardError>(())
//! ```

use std::borrow::Cow;

use crate::authz::{AccessDecision, AccessPolicy};
use crate::check::Check;
use crate::error::Rejection;
use crate::guard::{LOG_TARGET, RequestAuth};
use crate::request::{OwnedRequest, RequestHead};

use crate::authn::{HeaderEdit, HeaderEdits};
pub use crate::error::PROBLEM_JSON;

/// The debug response header that explains decisions, when the guard's
/// switch is on ([`GuardBuilder::explain_decisions_in_header`](crate::GuardBuilder::explain_decisions_in_header)).
pub const EXPLAIN_HEADER: &str = "x-palisade-authz";

/// Why a framework could not hand a rewritten request target to its router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetRewrite {
    /// The router already chose a route for the raw path: the middleware
    /// runs after routing. `advice` says, in the framework's terms, where
    /// to add it instead.
    AlreadyRouted {
        /// What the user should change, e.g. "wrap the whole Router".
        advice: &'static str,
    },
    /// The framework refused the target as a URI.
    Invalid,
}

/// A framework's request, as the core edits it when admitting it.
pub trait RequestTarget {
    /// Removes every value of the header `name` (lower case).
    fn remove_header(&mut self, name: &str);
    /// Sets the header `name` (lower case) to `value`; a name or value that
    /// HTTP cannot carry is skipped. The core removes the header first, so a
    /// skipped value never leaves the client's own header in its place.
    fn set_header(&mut self, name: &str, value: &str);
    /// Replaces the request's path and query (`/a/b?q`, already normalised)
    /// so that the router routes what the policy matched.
    ///
    /// # Errors
    /// [`TargetRewrite`] when routing already happened or the URI is refused.
    fn rewrite_target(&mut self, path_and_query: &str) -> Result<(), TargetRewrite>;
    /// Stores the record the extractors read (a request extension).
    fn insert_auth(&mut self, auth: RequestAuth);
}

/// A framework's response, as the core edits it after the handler answered.
pub trait ResponseTarget {
    /// Appends a header (lower-case name); a name or value that HTTP cannot
    /// carry is skipped.
    fn append_header(&mut self, name: &str, value: &str);

    /// The values of the header `name` (lower case), in order, or `None`
    /// when one of them is not text: the core reads the application's
    /// `Cache-Control` to merge a renewal's `private` into it (and appends
    /// the edit as it is to values it cannot read). The default reads
    /// none, and the edit is appended; implement it together with
    /// [`replace_header`](Self::replace_header).
    fn header_values(&self, _name: &str) -> Option<Vec<&str>> {
        Some(Vec::new())
    }

    /// Sets the header `name` (lower case) to `value` alone, in place of
    /// all its values; a name or value that HTTP cannot carry leaves the
    /// header as it was. The default appends.
    fn replace_header(&mut self, name: &str, value: &str) {
        self.append_header(name, value);
    }
}

/// The guard's verdict on one request: [`Guard::check`](crate::Guard::check).
///
/// Adapters should not match on it but call [`Decision::apply`]: a refusal,
/// a redirect or an authenticator's own answer is rendered by the core
/// either way. A refusal of a gRPC call or of a HEAD request, one that
/// carries the renewal of the user's cookie its authentication made, and
/// one that closes its connection (an mTLS peer no longer trusted:
/// [`Reply::closing_connection`]) comes as a [`Decision::Reply`] already
/// rendered ([`Reply::grpc`], [`Reply::without_body`]), its [`Rejection`]
/// inside ([`Reply::rejection`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
#[must_use = "a decision enforces nothing until it is applied (`Decision::apply`)"]
pub enum Decision {
    /// Let the request through, after these edits.
    Allow(Admission),
    /// Answer with this rejection instead of calling the handler.
    Deny(Rejection),
    /// Answer with this reply instead of calling the handler: a redirect
    /// to sign in, or an authenticator's own endpoint (a sign-in callback,
    /// a logout).
    Reply(Reply),
}

/// How the answers to a request are rendered: as they are, as a gRPC
/// client reads them, or without their body (a HEAD request).
///
/// The guard renders its own answers; an adapter renders the replies it
/// makes itself (a body limit's 413 and 408, axum's 400 for a router
/// nested at a templated path) the same way, so a HEAD request or a gRPC
/// call gets the same kind of answer from every layer:
///
/// ```
/// use palisade_core::Rejection;
/// use palisade_core::adapter::{Rendering, Reply};
/// use palisade_core::authn::OwnedRequest;
///
/// let head = OwnedRequest::new("HEAD", "/upload");
/// let reply = Rendering::of(&head).render(Reply::from(Rejection::malformed_path("no")));
/// assert_eq!(reply.status(), 400);
/// assert!(reply.body().is_empty());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rendering {
    /// As the reply is.
    #[default]
    Http,
    /// Without its body ([`Reply::without_body`]): the answer to a HEAD
    /// request.
    Head,
    /// As a gRPC client reads it ([`Reply::grpc`]): a `grpc-status`
    /// trailer-only answer with HTTP status 200.
    Grpc,
    /// As a grpc-web client reads it ([`Reply::grpc_web`]): the same, with
    /// grpc-web's content type (`application/grpc-web+proto`), as Envoy's
    /// `grpc_web` filter answers for its `jwt_authn` and `rbac`.
    GrpcWeb,
    /// [`GrpcWeb`](Rendering::GrpcWeb) for a call in grpc-web's text form
    /// (`application/grpc-web-text`).
    GrpcWebText,
}

impl Rendering {
    /// The rendering `req` gets: [`Head`](Rendering::Head) for a HEAD
    /// request, [`Grpc`](Rendering::Grpc) for a gRPC call (a POST whose
    /// content-type is `application/grpc`, `+proto` or any other suffix),
    /// [`GrpcWeb`](Rendering::GrpcWeb) or
    /// [`GrpcWebText`](Rendering::GrpcWebText) for a grpc-web call
    /// (`application/grpc-web`, `application/grpc-web-text`, with a suffix
    /// or not).
    #[must_use]
    pub fn of(req: &dyn RequestHead) -> Self {
        if req.method() == "HEAD" {
            Rendering::Head
        } else {
            grpc_rendering(req.method(), req.header_value("content-type", 0))
        }
    }

    /// [`Rendering::of`] from a request's method and first `content-type`
    /// value: for the extractors, which see a framework's request.
    #[cfg(any(feature = "axum", feature = "actix"))]
    pub(crate) fn of_parts(method: &str, content_type: Option<&[u8]>) -> Self {
        if method == "HEAD" {
            Rendering::Head
        } else {
            grpc_rendering(method, content_type)
        }
    }

    /// `reply` rendered so.
    #[must_use]
    pub fn render(self, reply: Reply) -> Reply {
        match self {
            Rendering::Http => reply,
            Rendering::Head => reply.without_body(),
            Rendering::Grpc => reply.grpc(),
            Rendering::GrpcWeb => reply.grpc_web(false),
            Rendering::GrpcWebText => reply.grpc_web(true),
        }
    }
}

impl Decision {
    /// The decision with its refusal or reply rendered for the request
    /// ([`Rendering::of`]): every adapter sends the same answer, and none
    /// needs to know that hyper's HTTP/2 server would send a HEAD
    /// response's body. An admission whose path rewrite may fail remembers
    /// the rendering for that 400.
    pub(crate) fn for_request(self, rendering: Rendering) -> Self {
        match self {
            Decision::Deny(r) if rendering != Rendering::Http => {
                Decision::Reply(rendering.render(Reply::from(r)))
            }
            Decision::Reply(r) => Decision::Reply(rendering.render(r)),
            Decision::Allow(mut a) if rendering != Rendering::Http => {
                if let Some(rare) = a.rare.as_mut() {
                    rare.rendering = rendering;
                }
                Decision::Allow(a)
            }
            d => d,
        }
    }

    /// Admits the request (its edits applied) or answers the refusal: the
    /// one place that turns a decision into what a framework does.
    ///
    /// # Errors
    /// The [`Reply`] to send instead of calling the handler: the refusal,
    /// a redirect, an authenticator's own answer, or a 400 when a
    /// normalised path cannot be handed to the router. When
    /// [`Reply::body_wanted`] says so, read the body and send
    /// [`Reply::finish_from_body`]'s answer instead.
    #[inline]
    pub fn apply(self, req: &mut dyn RequestTarget) -> Result<ResponseEdits, Reply> {
        match self {
            Decision::Allow(admission) => admission.apply(req),
            Decision::Deny(rejection) => Err(Reply::from(rejection)),
            Decision::Reply(reply) => Err(reply),
        }
    }
}

/// An allowed request: what the core asks the adapter to do with it.
#[derive(Clone, Debug)]
pub struct Admission {
    pub(crate) auth: RequestAuth,
    pub(crate) edits: HeaderEdits,
    /// The path rewrite and the response's edits, which most requests
    /// have not: boxed, so that a [`Decision`] stays small enough to move
    /// with a few stores rather than a `memcpy` call.
    pub(crate) rare: Option<Box<Rare>>,
}

/// What few admitted requests carry.
#[derive(Clone, Default)]
pub(crate) struct Rare {
    pub(crate) target: Option<String>,
    pub(crate) response: ResponseEdits,
    /// How a refused rewrite's 400 is rendered (HEAD, gRPC).
    pub(crate) rendering: Rendering,
}

/// The rewritten target's query shows its parameters' names only, as an
/// [`OwnedRequest`](crate::authn::OwnedRequest)'s does (`?access_token=`).
impl std::fmt::Debug for Rare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = self.target.as_deref().map(|t| match t.split_once('?') {
            Some((path, query)) => format!("{path}?{}", crate::request::query_names(query).join("&")),
            None => t.to_owned(),
        });
        f.debug_struct("Rare")
            .field("target", &target)
            .field("response", &self.response)
            .field("rendering", &self.rendering)
            .finish()
    }
}

/// The edits of a response that gets none.
static NO_RESPONSE_EDITS: ResponseEdits = ResponseEdits { headers: Vec::new() };

impl Admission {
    /// The record the extractors will read (identity, access decision).
    #[must_use]
    pub fn auth(&self) -> &RequestAuth {
        &self.auth
    }

    /// The path and query the request is rewritten to (the path
    /// normalised), when the path differs from the one sent.
    #[must_use]
    pub fn rewritten_target(&self) -> Option<&str> {
        self.rare.as_ref()?.target.as_deref()
    }

    /// The header edits the authenticators asked for (the token removed
    /// unless `forwardOriginalToken`, claims copied to headers).
    #[must_use]
    pub fn header_edits(&self) -> &[HeaderEdit] {
        self.edits.as_slice()
    }

    /// What will go on the response.
    #[must_use]
    pub fn response(&self) -> &ResponseEdits {
        self.rare.as_ref().map_or(&NO_RESPONSE_EDITS, |r| &r.response)
    }

    /// Applies the request's edits; see [`Decision::apply`].
    ///
    /// # Errors
    /// A 400 [`Reply`] when the normalised path cannot be handed to the
    /// router (the middleware runs after routing).
    #[inline]
    pub fn apply(self, req: &mut dyn RequestTarget) -> Result<ResponseEdits, Reply> {
        if let Some(target) = self.rewritten_target()
            && let Err(e) = req.rewrite_target(target)
        {
            return Err(self.rewrite_refused(e));
        }
        for edit in self.edits.as_slice() {
            match edit {
                HeaderEdit::Remove(name) => req.remove_header(name),
                // Removed first: a value the framework cannot carry must not
                // leave the client's header of that name in its place.
                HeaderEdit::Set(name, value) => {
                    req.remove_header(name);
                    req.set_header(name, value);
                }
            }
        }
        req.insert_auth(self.auth);
        Ok(self.rare.map(|r| r.response).unwrap_or_default())
    }
}

impl Admission {
    /// The 400 of a request whose normalised target the framework would
    /// not take.
    #[cold]
    #[inline(never)]
    fn rewrite_refused(&self, e: TargetRewrite) -> Reply {
        static AFTER_ROUTING: crate::logging::Sparse = crate::logging::Sparse::per_minute();
        // Any client can send such a path: said once a minute.
        if let TargetRewrite::AlreadyRouted { advice } = e
            && AFTER_ROUTING.due()
        {
            tracing::error!(
                target: LOG_TARGET,
                "a path that is not in normal form reached Palisade after routing: refused with 400. {advice}, so that the router sees the path the policy matched"
            );
        }
        // A renewal of the user's cookie reaches the browser with it.
        let reply = crate::guard::renewed(
            Reply::from(Rejection::malformed_path(
                "the request path is not in normal form",
            )),
            self.response().headers(),
        );
        let rendering = self.rare.as_ref().map_or(Rendering::Http, |r| r.rendering);
        rendering.render(reply)
    }
}

/// What goes on the response of an admitted request: headers from the
/// authenticators (a Negotiate mutual-authentication token) and the explain
/// header when that debug switch is on. (The access decision of an allowed
/// request is in its [`RequestAuth`]; a refusal carries its decision in its
/// [`Rejection`], in the response extensions.)
#[derive(Clone, Default)]
pub struct ResponseEdits {
    pub(crate) headers: Vec<(Cow<'static, str>, String)>,
}

impl std::fmt::Debug for ResponseEdits {
    // Values can hold a Negotiate mutual-authentication token: names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.headers.iter().map(|(n, _)| n))
            .finish()
    }
}

impl ResponseEdits {
    /// The headers to add (lower-case names), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (&**n, v.as_str()))
    }

    /// Whether there is no edit (most responses): an adapter need not keep
    /// or apply them.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// Applies the edits to the handler's response. A renewal's
    /// `Cache-Control: private` is merged into the application's own
    /// directives ([`private_cache_control`]) rather than added beside a
    /// `public` that contradicts it.
    pub fn apply(self, res: &mut dyn ResponseTarget) {
        for (name, value) in &self.headers {
            if name == "cache-control"
                && value == "private"
                && let Some(existing) = res.header_values("cache-control")
                && !existing.is_empty()
            {
                if let Some(merged) = private_cache_control(&existing) {
                    res.replace_header(name, &merged);
                }
                continue;
            }
            res.append_header(name, value);
        }
    }
}

/// A response's `Cache-Control` (its values, in order) made `private`,
/// for a response that carries a user's cookie: `None` when it already
/// keeps out of shared caches (`no-store`, or `private` for the whole
/// response), else `private` followed by its other directives, without
/// `public` (which RFC 9111 §5.2.2.9 lets a shared cache read as leave to
/// store) and without a `private` limited to named fields (§5.2.2.7, which
/// leaves the rest to shared caches).
///
/// ```
/// use palisade_core::adapter::private_cache_control;
/// assert_eq!(private_cache_control(&["public, max-age=600"]).as_deref(), Some("private, max-age=600"));
/// assert_eq!(private_cache_control(&["no-cache=\"a, b\"", "Public"]).as_deref(), Some("private, no-cache=\"a, b\""));
/// assert_eq!(private_cache_control(&["private=\"x\", max-age=5"]).as_deref(), Some("private, max-age=5"));
/// assert_eq!(private_cache_control(&["max-age=0, No-Store"]), None);
/// assert_eq!(private_cache_control(&["PRIVATE"]), None);
/// ```
#[must_use]
pub fn private_cache_control(values: &[&str]) -> Option<String> {
    let directives: Vec<&str> = values.iter().flat_map(|v| split_directives(v)).collect();
    let name = |d: &str| {
        d.split_once('=')
            .map_or(d, |(n, _)| n)
            .trim()
            .to_ascii_lowercase()
    };
    if directives
        .iter()
        .any(|d| name(d) == "no-store" || d.eq_ignore_ascii_case("private"))
    {
        return None;
    }
    let kept = directives
        .into_iter()
        .filter(|d| !matches!(name(d).as_str(), "public" | "private"));
    Some(
        std::iter::once("private")
            .chain(kept)
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// A `Cache-Control` value's directives, trimmed, without empty ones; a
/// comma inside a quoted string is part of its directive.
fn split_directives(value: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, b) in value.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|d| !d.is_empty());
    out
}

/// A response the core renders for the adapter to send instead of calling
/// the handler: a refusal (an RFC 9457 problem document with its status and
/// challenges), a redirect (browser sign-in), or the answer of one of an
/// authenticator's own endpoints (a sign-in callback, a logout). Rendered
/// once here, so both frameworks send the same bytes.
///
/// One kind needs the request body first (a back-channel logout's form):
/// when [`Reply::body_wanted`] says so, the adapter hands
/// [`Reply::finish_from_body`] its body's chunks (at most that many bytes
/// are read, within a time limit) and sends its answer.
///
/// ```
/// use palisade_core::Rejection;
/// use palisade_core::adapter::Reply;
/// let reply = Reply::from(Rejection::invalid_token("api", "the token has expired"));
/// assert_eq!(reply.status(), 401);
/// assert!(reply.headers().any(|(n, v)| n == "www-authenticate" && v.contains("invalid_token")));
/// assert!(reply.body().contains("\"status\":401"));
///
/// let to_sign_in = Reply::redirect("https://idp.example/auth?client_id=web");
/// assert_eq!(to_sign_in.status(), 302);
/// assert!(to_sign_in.rejection().is_none());
/// ```
#[derive(Clone)]
pub struct Reply(Box<Rendered>);

/// Boxed: a reply is the rare path, and keeps `Result<ResponseEdits, Reply>` small.
#[derive(Clone)]
struct Rendered {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// An answer to a HEAD request: `body` is what a GET would get, and
    /// is not sent.
    head: bool,
    /// The connection is to end once the reply is sent, on HTTP/2 too
    /// ([`Reply::closing_connection`]); a bare `Connection: close` header
    /// (a body left unread) ends an HTTP/1.1 connection only.
    ends_connection: bool,
    rejection: Option<Rejection>,
    body_wanted: Option<BodyWanted>,
}

/// What makes the reply once the body is read.
type Continuation = std::sync::Arc<dyn Fn(Vec<u8>) -> Check<Reply> + Send + Sync>;

/// Why a wanted body was not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unread {
    /// It passed the limit: 413.
    TooLarge,
    /// It did not arrive within the read time: 408.
    TimedOut,
    /// The framework could not read it: 400.
    Broken,
}

#[derive(Clone)]
struct BodyWanted {
    limit: usize,
    then: Continuation,
    /// How the reply made from the body is rendered (HEAD, gRPC).
    rendering: Rendering,
}

impl std::fmt::Debug for Reply {
    // Header values can hold a session cookie or a code: names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.0.status)
            .field(
                "headers",
                &self.0.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body_len", &self.0.body.len())
            .field("rejection", &self.0.rejection)
            .field("body_wanted", &self.0.body_wanted.as_ref().map(|b| b.limit))
            .finish()
    }
}

impl From<Rejection> for Reply {
    fn from(rejection: Rejection) -> Self {
        let mut headers = Vec::with_capacity(rejection.challenges().len() + 2);
        headers.push(("content-type", PROBLEM_JSON.to_owned()));
        for c in rejection.challenges() {
            headers.push(("www-authenticate", c.clone()));
        }
        if let Some(explanation) = rejection.explanation() {
            headers.push((EXPLAIN_HEADER, explanation));
        }
        Self(Box::new(Rendered {
            status: rejection.status(),
            headers,
            body: rejection.problem_json(),
            rejection: Some(rejection),
            head: false,
            ends_connection: false,
            body_wanted: None,
        }))
    }
}

impl Reply {
    /// A reply with this status, no header and an empty body.
    #[must_use]
    pub fn new(status: u16) -> Self {
        Self(Box::new(Rendered {
            status,
            headers: Vec::new(),
            body: String::new(),
            rejection: None,
            head: false,
            ends_connection: false,
            body_wanted: None,
        }))
    }

    /// A `302 Found` to `location`, not to be cached.
    #[must_use]
    pub fn redirect(location: impl Into<String>) -> Self {
        Self::new(302)
            .header("location", location)
            .header("cache-control", "no-store")
    }

    /// Adds a header (lower-case name; a name may repeat, as `set-cookie`).
    #[must_use]
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.0.headers.push((name, value.into()));
        self
    }

    /// The same, asking for the connection to be closed once it is sent:
    /// `Connection: close`, which hyper's HTTP/1 server obeys, and which
    /// actix-web's adapter ([`actix_response`]) turns into actix-http's way
    /// of saying it. On HTTP/2, where the header has no place,
    /// [`http_response`] marks the response with [`CloseConnection`], for
    /// which Palisade's own server (`palisade_axum::serve`, hence
    /// `palisade_mtls::axum::serve`) sends a GOAWAY; other HTTP/2 servers
    /// (actix-web's among them) drop the header and keep the connection.
    #[must_use]
    pub fn closing_connection(mut self) -> Self {
        self.0.ends_connection = true;
        if self.closes_connection() {
            return self;
        }
        self.header("connection", "close")
    }

    /// Whether the reply asks for its connection to be closed once it is
    /// sent: a `connection` header with the option `close`
    /// ([`closing_connection`](Self::closing_connection)).
    #[must_use]
    pub fn closes_connection(&self) -> bool {
        self.0
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && has_close(v))
    }

    /// An answer of `status` with an RFC 9457 problem body
    /// (`application/problem+json`) of type `urn:palisade:problem:<kind>`,
    /// as the guard's own refusals have: for an authenticator's endpoints
    /// that refuse with a status no [`Rejection`] has (405, 413, 502, 503).
    /// `detail` is a server-chosen sentence: never a credential or input.
    #[must_use]
    pub fn problem(status: u16, kind: &str, title: &str, detail: &str) -> Self {
        Self::new(status).with_body(
            PROBLEM_JSON,
            crate::error::problem_document(kind, title, status, detail),
        )
    }

    /// Sets the body and its `content-type`.
    #[must_use]
    pub fn with_body(mut self, content_type: &'static str, body: impl Into<String>) -> Self {
        self.0.headers.retain(|(n, _)| *n != "content-type");
        self.0.headers.push(("content-type", content_type.to_owned()));
        self.0.body = body.into();
        self
    }

    /// A reply that can only be made from the request body (at most
    /// `limit` bytes): `then` makes it. The adapter reads the body and
    /// calls [`Reply::finish_from_body`]; until then the reply is a 400.
    #[must_use]
    pub fn after_body(limit: usize, then: impl Fn(Vec<u8>) -> Check<Reply> + Send + Sync + 'static) -> Self {
        let mut reply = Reply::from(Rejection::bad_request("the request body was not read"));
        reply.0.body_wanted = Some(BodyWanted {
            limit,
            then: std::sync::Arc::new(then),
            rendering: Rendering::Http,
        });
        reply
    }

    /// The most body bytes [`Reply::finish_from_body`] reads, when this
    /// reply needs the body.
    #[must_use]
    pub fn body_wanted(&self) -> Option<usize> {
        self.0.body_wanted.as_ref().map(|b| b.limit)
    }

    /// Reads the body this reply wants and makes the reply from it; a
    /// reply that wants none answers itself. `next` polls the framework's body for its next
    /// chunk: `Some(Ok(Some(bytes)))` data, `Some(Ok(None))` a frame without
    /// data (trailers), `Some(Err(_))` a body that cannot be read, `None`
    /// its end.
    ///
    /// Reading stops at the first chunk past the limit (413), and at
    /// [`ServerLimits`](crate::limits::ServerLimits)' default body read
    /// time (20 s; 408), so a client that announces a body and sends none
    /// does not hold the request, whatever server runs it. A body that
    /// cannot be read is answered 400. Both adapters read bodies with it.
    pub async fn finish_from_body<D, E>(
        self,
        mut next: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<Option<Result<Option<D>, E>>>,
    ) -> Reply
    where
        D: AsRef<[u8]>,
    {
        let Some(limit) = self.body_wanted() else {
            return self;
        };
        let read = async {
            let mut bytes = Vec::new();
            loop {
                match std::future::poll_fn(&mut next).await {
                    None => return Ok(bytes),
                    Some(Err(_)) => return Err(Unread::Broken),
                    Some(Ok(None)) => {}
                    Some(Ok(Some(data))) => {
                        let data = data.as_ref();
                        // Stop reading past the limit; answered 413.
                        if bytes.len() + data.len() > limit {
                            return Err(Unread::TooLarge);
                        }
                        bytes.extend_from_slice(data);
                    }
                }
            }
        };
        let deadline = crate::limits::ServerLimits::default().body_read();
        let read = tokio::time::timeout(deadline, read)
            .await
            .unwrap_or(Err(Unread::TimedOut));
        self.finish_with_body(read).await
    }

    /// The reply made from the request body as read (or why it was not).
    fn finish_with_body(self, body: Result<Vec<u8>, Unread>) -> Check<Reply> {
        let Some(wanted) = self.0.body_wanted.clone() else {
            return Check::Ready(self);
        };
        let rendering = wanted.rendering;
        let reply = match body {
            Ok(bytes) if bytes.len() <= wanted.limit => (wanted.then)(bytes),
            // The rest of the body is not read: the connection closes.
            Ok(_) | Err(Unread::TooLarge) => Check::Ready(crate::limits::body_too_large(wanted.limit)),
            Err(Unread::TimedOut) => Check::Ready(crate::limits::body_too_slow()),
            Err(Unread::Broken) => Check::Ready(Reply::from(Rejection::bad_request(
                "the request body could not be read",
            ))),
        };
        match rendering {
            Rendering::Http => reply,
            _ => reply.map(move |r| rendering.render(r)),
        }
    }

    /// The same answer as a gRPC client reads it: HTTP 200,
    /// `content-type: application/grpc`, `cache-control: no-store`, no body,
    /// and the outcome in
    /// `grpc-status` and `grpc-message` (a "trailers-only" response, as
    /// gRPC servers send errors). An HTTP status would reach a gRPC client
    /// as a transport error instead. The challenges stay in
    /// `www-authenticate` (gRPC metadata), and [`Reply::rejection`] is
    /// kept. The code follows the status: 401 (and a redirect to sign in)
    /// `UNAUTHENTICATED` (16), 403 `PERMISSION_DENIED` (7), 400
    /// `INVALID_ARGUMENT` (3) but `UNAUTHENTICATED` where it challenges the
    /// caller (a bearer `invalid_request`: two tokens, as gRPC says of bad
    /// auth metadata), 404 and 405 `UNIMPLEMENTED` (12), 413 and
    /// 429 `RESOURCE_EXHAUSTED` (8), 502 to 504 `UNAVAILABLE` (14), any
    /// other `UNKNOWN` (2). A `Retry-After` of whole seconds becomes gRPC's
    /// retry pushback, `grpc-retry-pushback-ms`.
    ///
    /// ```
    /// use palisade_core::Rejection;
    /// use palisade_core::adapter::Reply;
    /// let reply = Reply::from(Rejection::invalid_token("api", "the token has expired")).grpc();
    /// assert_eq!(reply.status(), 200);
    /// let header = |name| reply.headers().find(|(n, _)| *n == name).map(|(_, v)| v.to_owned());
    /// assert_eq!(header("grpc-status").as_deref(), Some("16"));
    /// assert_eq!(header("grpc-message").as_deref(), Some("the token has expired"));
    /// assert!(header("www-authenticate").is_some_and(|c| c.contains("invalid_token")));
    /// assert!(reply.body().is_empty() && reply.rejection().is_some());
    /// ```
    #[must_use]
    pub fn grpc(self) -> Self {
        self.grpc_as(Rendering::Grpc, "application/grpc")
    }

    /// [`grpc`](Self::grpc) for a grpc-web call: the same status headers
    /// (a headers-only answer is one grpc-web allows), with grpc-web's
    /// content type, `application/grpc-web-text+proto` for the text form.
    /// A browser's client reads `grpc-status`, `grpc-message` and
    /// `www-authenticate` only if CORS exposes them
    /// (`Access-Control-Expose-Headers`).
    ///
    /// ```
    /// use palisade_core::Rejection;
    /// use palisade_core::adapter::Reply;
    /// let reply = Reply::from(Rejection::forbidden("access denied by policy")).grpc_web(false);
    /// assert_eq!(reply.status(), 200);
    /// let header = |name| reply.headers().find(|(n, _)| *n == name).map(|(_, v)| v.to_owned());
    /// assert_eq!(header("content-type").as_deref(), Some("application/grpc-web+proto"));
    /// assert_eq!(header("grpc-status").as_deref(), Some("7"));
    /// ```
    #[must_use]
    pub fn grpc_web(self, text: bool) -> Self {
        if text {
            self.grpc_as(Rendering::GrpcWebText, "application/grpc-web-text+proto")
        } else {
            self.grpc_as(Rendering::GrpcWeb, "application/grpc-web+proto")
        }
    }

    /// [`grpc`](Self::grpc) as `rendering`, with `content_type`.
    fn grpc_as(self, rendering: Rendering, content_type: &'static str) -> Self {
        let mut r = *self.0;
        if let Some(wanted) = r.body_wanted.as_mut() {
            // The reply made from the body is rendered so.
            wanted.rendering = rendering;
            return Self(Box::new(r));
        }
        let code = grpc_code(r.status, r.rejection.as_ref());
        let message = match &r.rejection {
            Some(rejection) => rejection.detail().to_owned(),
            None if (300..400).contains(&r.status) => "sign-in required".to_owned(),
            None => format!("refused with HTTP status {}", r.status),
        };
        // `Retry-After` in seconds, as gRPC's retry pushback (A6).
        let pushback = r
            .headers
            .iter()
            .find(|(n, _)| *n == "retry-after")
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
            .map(|secs| secs.saturating_mul(1000).to_string());
        let mut headers = Vec::with_capacity(r.headers.len() + 5);
        headers.push(("content-type", content_type.to_owned()));
        // A refusal carried by a 200: no cache may keep it.
        headers.push(("cache-control", "no-store".to_owned()));
        headers.push(("grpc-status", code.to_string()));
        headers.push(("grpc-message", grpc_percent_encode(&message)));
        if let Some(ms) = pushback {
            headers.push(("grpc-retry-pushback-ms", ms));
        }
        headers.extend(r.headers.into_iter().filter(|(n, _)| {
            matches!(
                *n,
                "www-authenticate" | EXPLAIN_HEADER | "set-cookie" | "connection"
            )
        }));
        Self(Box::new(Rendered {
            status: 200,
            headers,
            body: String::new(),
            rejection: r.rejection,
            head: false,
            ends_connection: r.ends_connection,
            body_wanted: None,
        }))
    }

    /// The same answer to a HEAD request: its status and headers, and no
    /// body ([`Reply::body`] and [`Reply::into_parts`] give none; hyper's
    /// HTTP/1 server drops a HEAD response's body, its HTTP/2 server would
    /// send it). `actix_response` keeps the body in the response, because
    /// actix-http drops it itself after sending the length a GET would
    /// get. A reply that wants the request body renders the reply made
    /// from it so.
    #[must_use]
    pub fn without_body(mut self) -> Self {
        match self.0.body_wanted.as_mut() {
            Some(wanted) => wanted.rendering = Rendering::Head,
            None => self.0.head = true,
        }
        self
    }

    /// The HTTP status code.
    #[must_use]
    pub fn status(&self) -> u16 {
        self.0.status
    }

    /// The headers, in order (lower-case names; a name may repeat).
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0.headers.iter().map(|(n, v)| (*n, v.as_str()))
    }

    /// The body to send: none to a HEAD request ([`Reply::without_body`]).
    #[must_use]
    pub fn body(&self) -> &str {
        if self.0.head { "" } else { &self.0.body }
    }

    /// The refusal this reply renders, when it is one.
    #[must_use]
    pub fn rejection(&self) -> Option<&Rejection> {
        self.0.rejection.as_ref()
    }

    /// Takes the reply apart for a framework's response builder: status,
    /// headers, body, and the rejection when it renders one (for the
    /// response extensions; its [`Rejection::access`] is the decision
    /// behind a policy refusal).
    #[must_use]
    pub fn into_parts(self) -> (u16, Vec<(&'static str, String)>, String, Option<Rejection>) {
        let r = *self.0;
        let body = if r.head { String::new() } else { r.body };
        (r.status, r.headers, body, r.rejection)
    }
}

/// `grpc-message` as the gRPC HTTP/2 protocol encodes it: printable ASCII
/// but `%` as it is, every other byte of the UTF-8 as `%XX`.
fn grpc_percent_encode(message: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Whether `req` is a gRPC call (a `POST` with `content-type:
/// application/grpc`, with or without a `+proto`/`+json` suffix or
/// parameters): its refusals are then rendered with [`Reply::grpc`].
#[must_use]
pub fn is_grpc(req: &dyn RequestHead) -> bool {
    is_grpc_call(req.method(), req.header_value("content-type", 0))
}

/// The gRPC status code of a refusal with the HTTP status `status`, as
/// [`Reply::grpc`] answers it: `UNAUTHENTICATED` (16) for 401 and a
/// redirect to sign in, `PERMISSION_DENIED` (7) for 403,
/// `INVALID_ARGUMENT` (3) for 400, `UNIMPLEMENTED` (12) for 404 and 405,
/// `RESOURCE_EXHAUSTED` (8) for 413 and 429, `UNAVAILABLE` (14) for 502
/// to 504, `UNKNOWN` (2) otherwise; a 400 that challenges the caller to
/// authenticate (a bearer `invalid_request`: two tokens) `UNAUTHENTICATED`,
/// as gRPC says of bad auth metadata.
pub(crate) fn grpc_code(status: u16, rejection: Option<&Rejection>) -> i32 {
    match status {
        400 if rejection.is_some_and(|r| !r.challenges().is_empty()) => 16,
        300..=399 | 401 => 16,
        403 => 7,
        400 => 3,
        404 | 405 => 12,
        413 | 429 => 8,
        502..=504 => 14,
        _ => 2,
    }
}

/// The rendering of a request that is not a HEAD request, from its method
/// and first `content-type` value: a gRPC or grpc-web call's, else HTTP's.
fn grpc_rendering(method: &str, content_type: Option<&[u8]>) -> Rendering {
    let is =
        |media_type: &[u8]| method == "POST" && content_type.is_some_and(|v| media_type_is(v, media_type));
    if is_grpc_call(method, content_type) {
        Rendering::Grpc
    } else if is(b"application/grpc-web") {
        Rendering::GrpcWeb
    } else if is(b"application/grpc-web-text") {
        Rendering::GrpcWebText
    } else {
        Rendering::Http
    }
}

/// Whether the content type `v` is `media_type` (in any letter case), with
/// a suffix (`+proto`) or parameters (`;charset=…`) or neither.
fn media_type_is(v: &[u8], media_type: &[u8]) -> bool {
    v.len() >= media_type.len()
        && v[..media_type.len()].eq_ignore_ascii_case(media_type)
        && matches!(v.get(media_type.len()), None | Some(b'+' | b';'))
}

/// [`is_grpc`] from a request's method and first `content-type` value.
fn is_grpc_call(method: &str, content_type: Option<&[u8]>) -> bool {
    method == "POST" && content_type.is_some_and(|v| media_type_is(v, b"application/grpc"))
}

/// The host of a request, for [`RequestHead::host`]: its `Host` header
/// (`host_header`, when it is text), else its target's authority (HTTP/2's
/// `:authority`) without the user information before an `@`, which names
/// no host. `Host` first, as actix-web's `guard::Host` and axum-extra's
/// `Host` read it once they find no `Forwarded` or `X-Forwarded-Host`
/// (which Palisade, as Envoy, does not read: a client may send them), so
/// a `hosts` rule decides on the host the application routes by; one rule
/// for every adapter.
///
/// A request whose host is ambiguous ([`ambiguous_host`]: two `Host`
/// headers, one that is not text, or a target naming another host) is
/// refused with 400 where the policy reads hosts (`hosts`, `notHosts`,
/// `request.headers[host]`, a `CUSTOM` authorizer): a rule on one host
/// could otherwise be passed by naming the other.
///
/// ```
/// use palisade_core::adapter::request_host;
/// assert_eq!(request_host(Some("shop.example"), Some("other.example")), Some("shop.example"));
/// assert_eq!(request_host(None, Some("x@admin.example:8080")), Some("admin.example:8080"));
/// assert_eq!(request_host(None, None), None);
/// ```
#[must_use]
pub fn request_host<'a>(host_header: Option<&'a str>, authority: Option<&'a str>) -> Option<&'a str> {
    host_header.or_else(|| authority.map(without_user_info))
}

/// Whether a request does not name one host plainly: it carries more
/// than one `Host` header, or one that is not text (RFC 9112 §3.2: a
/// server answers either with 400), or its target's authority
/// ([`RequestHead::authority`], without user information) names another
/// host than `Host`, compared without ASCII case (RFC 9112 §3.2.2 has a
/// server take the target's, RFC 9113 §8.3.1 calls it malformed; a port
/// written in one and not the other differs too). A request without a
/// `Host` header, or without an authority in its target (HTTP/1's usual
/// origin form) and one `Host`, is plain.
///
/// ```
/// use palisade_core::adapter::ambiguous_host;
/// use palisade_core::authn::RequestHead;
/// struct Head(&'static [&'static [u8]], Option<&'static str>);
/// impl RequestHead for Head {
///     fn method(&self) -> &str { "GET" }
///     fn path(&self) -> &str { "/" }
///     fn query(&self) -> Option<&str> { None }
///     fn host(&self) -> Option<&str> { None }
///     fn authority(&self) -> Option<&str> { self.1 }
///     fn header_value(&self, name: &str, i: usize) -> Option<&[u8]> {
///         self.0.get(i).copied().filter(|_| name == "host")
///     }
/// }
/// assert!(ambiguous_host(&Head(&[b"shop.example"], Some("admin.example"))));
/// assert!(ambiguous_host(&Head(&[b"shop.example", b"admin.example"], None)));
/// assert!(ambiguous_host(&Head(&[b"shop.ex\xe4mple"], None)));
/// assert!(!ambiguous_host(&Head(&[b"Shop.Example"], Some("x@shop.example"))));
/// assert!(!ambiguous_host(&Head(&[b"shop.example"], None)));
/// assert!(!ambiguous_host(&Head(&[], Some("admin.example"))));
/// ```
#[must_use]
pub fn ambiguous_host(req: &dyn RequestHead) -> bool {
    let Some(host) = req.header_value("host", 0) else {
        return false;
    };
    // Text as `http::HeaderValue::to_str` reads it: visible ASCII, space, tab.
    let text = host.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b));
    !text
        || req.header_value("host", 1).is_some()
        || req
            .authority()
            .is_some_and(|a| !host.eq_ignore_ascii_case(without_user_info(a).as_bytes()))
}

/// The 400 of a request whose host is [ambiguous](ambiguous_host), where
/// the policy reads hosts.
pub(crate) fn ambiguous_host_refusal() -> Rejection {
    Rejection::bad_request(
        "the request does not name one host: two Host headers, one that is not text, or a target naming another host",
    )
}

/// An authority without the user information before its `@`.
fn without_user_info(authority: &str) -> &str {
    &authority[authority.rfind('@').map_or(0, |at| at + 1)..]
}

/// Whether a response header Palisade sets may carry a credential, and is
/// marked sensitive (`HeaderValue::set_sensitive`: left out of `Debug`
/// output, never indexed by HTTP/2's HPACK): a session cookie, a
/// redirect's target (a logout's `id_token_hint`), a Negotiate token.
#[must_use]
pub fn is_sensitive_header(name: &str) -> bool {
    ["set-cookie", "location", "www-authenticate"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
}

/// `reply` in place of an answer that set the cookies `replaced_cookies`
/// (its `Set-Cookie` values), as a server's limit answers 408 or 413 after
/// the application answered: with those cookies, and `Cache-Control:
/// private` with them unless `reply` says `no-store` or `private`. A
/// session's renewal must reach the browser whatever the answer: the
/// issuer has spent the refresh token the old cookie holds.
///
/// ```
/// use palisade_core::adapter::{Reply, keeping_cookies};
/// let limit = Reply::problem(408, "body-timeout", "Request body timeout", "late");
/// let kept = keeping_cookies(limit, ["s=new; Path=/; HttpOnly"]);
/// let headers: Vec<_> = kept.headers().collect();
/// assert!(headers.contains(&("set-cookie", "s=new; Path=/; HttpOnly")));
/// assert!(headers.contains(&("cache-control", "private")));
/// ```
#[must_use]
pub fn keeping_cookies<'h>(reply: Reply, replaced_cookies: impl IntoIterator<Item = &'h str>) -> Reply {
    let mut cookies = replaced_cookies.into_iter().map(|c| ("set-cookie", c)).peekable();
    let private = cookies.peek().is_some().then_some(("cache-control", "private"));
    crate::guard::renewed(reply, cookies.chain(private))
}

/// Whether a `Connection` header's value has the option `close`.
fn has_close(value: &str) -> bool {
    list_has(value.as_bytes(), b"close")
}

/// Whether a header value that is a comma-separated list (`Connection`,
/// `Upgrade`) has `token` among its elements, in any letter case.
pub(crate) fn list_has(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|element| element.trim_ascii().eq_ignore_ascii_case(token))
}

/// A response extension: the connection is to be closed once this
/// response is sent, on HTTP/2 too, where no `Connection` header says it
/// ([`Reply::closing_connection`]). `palisade_axum::serve` sends the
/// connection a GOAWAY for it; an application's own response may carry it
/// too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseConnection;

/// A response header as `http` 1 carries it (axum, hyper, tonic), marked
/// sensitive when it may carry a credential ([`is_sensitive_header`]); a
/// name in capitals is lowered, and `None` stands for a name or value HTTP
/// cannot carry, which the renderers and adapters skip (never a panic, for
/// a reply a third party's authenticator made).
#[cfg(feature = "axum")]
#[must_use]
pub fn http_header(name: &str, value: &str) -> Option<(http::HeaderName, http::HeaderValue)> {
    let n = http::HeaderName::from_bytes(name.as_bytes()).ok()?;
    let mut v = http::HeaderValue::from_str(value).ok()?;
    v.set_sensitive(is_sensitive_header(name));
    Some((n, v))
}

/// [`http_header`] for actix-web's header types.
#[cfg(feature = "actix")]
#[must_use]
pub fn actix_header(
    name: &str,
    value: &str,
) -> Option<(
    actix_web::http::header::HeaderName,
    actix_web::http::header::HeaderValue,
)> {
    let n = actix_web::http::header::HeaderName::from_bytes(name.as_bytes()).ok()?;
    let mut v = actix_web::http::header::HeaderValue::from_str(value).ok()?;
    v.set_sensitive(is_sensitive_header(name));
    Some((n, v))
}

/// A [`Reply`] as an `http` 1 response (axum, hyper, tonic), with the body
/// made by `body`; the rejection and its access decision travel in the
/// response extensions, and so does [`CloseConnection`] when the reply
/// closes its connection.
#[cfg(feature = "axum")]
pub fn http_response<B>(reply: Reply, body: impl FnOnce(String) -> B) -> http::Response<B> {
    // Only a reply that ends its connection (`Reply::closing_connection`:
    // a peer no longer trusted) ends an HTTP/2 one; a limit's 413 or 408
    // says `Connection: close` for HTTP/1.1, where the rest of the body
    // would otherwise be read, and ends only its stream on HTTP/2 (one
    // client's oversized upload must not end a shared connection).
    let closes = reply.0.ends_connection;
    let (status, headers, text, rejection) = reply.into_parts();
    let mut res = http::Response::new(body(text));
    *res.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::UNAUTHORIZED);
    for (name, value) in headers {
        if let Some((n, v)) = http_header(name, &value) {
            res.headers_mut().append(n, v);
        }
    }
    if let Some(rejection) = rejection {
        if let Some(access) = rejection.access() {
            res.extensions_mut().insert(access.clone());
        }
        res.extensions_mut().insert(rejection);
    }
    if closes {
        res.extensions_mut().insert(CloseConnection);
    }
    res
}

/// A [`Reply`] as an actix-web response; the rejection and its access
/// decision travel in the response extensions.
#[cfg(feature = "actix")]
pub fn actix_response(reply: Reply) -> actix_web::HttpResponse {
    use actix_web::http::StatusCode;
    // actix-http drops a HEAD response's body itself, after sending the
    // length a GET would get: the body stays.
    let r = *reply.0;
    let (status, headers, text, rejection) = (r.status, r.headers, r.body, r.rejection);
    let mut builder =
        actix_web::HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED));
    for (name, value) in headers {
        // actix-http writes its own `Connection` header from the
        // response's connection type, and drops one among the headers
        // (its other options are hop-by-hop, no reply's to set).
        if name.eq_ignore_ascii_case("connection") {
            if has_close(&value) {
                builder.force_close();
            }
            continue;
        }
        // Skipped when HTTP cannot carry it: the builder would turn it
        // into a 500.
        if let Some(pair) = actix_header(name, &value) {
            builder.append_header(pair);
        }
    }
    let mut res = builder.body(text);
    if let Some(rejection) = rejection {
        if let Some(access) = rejection.access() {
            res.extensions_mut().insert(access.clone());
        }
        res.extensions_mut().insert(rejection);
    }
    res
}

/// Checks a route-level policy (a role requirement, say) against the
/// identity the Palisade middleware established: the one decision both
/// frameworks' route layers make, answered as the guard answers its own
/// denials: 401 with the guard's challenges when the caller has no
/// end-user credential and one could change the decision (a 403
/// `cross-origin` where the guard set aside a cookie or Kerberos ticket of a
/// write another origin started), 403 otherwise.
/// Without the middleware in front (a wiring mistake), every request is
/// refused with 500 ([`Rejection::unguarded`]) and an error is logged. A route policy that reads
/// hosts refuses a request whose host is [ambiguous](ambiguous_host) with
/// 400, and one that reads paths a malformed path (a bad escape, an
/// escaped slash it rejects) with 400, as the guard does.
pub fn authorize_route(
    policy: &AccessPolicy,
    auth: Option<&RequestAuth>,
    req: &dyn RequestHead,
) -> Check<Result<(), Reply>> {
    let Some(auth) = auth else {
        static UNCHECKED: crate::logging::Sparse = crate::logging::Sparse::per_minute();
        if UNCHECKED.due() {
            tracing::error!(target: LOG_TARGET, "a route policy runs on a request that no Palisade middleware checked: refused");
        }
        let reply = Reply::from(Rejection::unguarded());
        return Check::Ready(Err(Rendering::of(req).render(reply)));
    };
    // A refusal before the policy decides, counted and answered as its
    // denials are.
    // Told from the request itself: a decision that waits keeps a copy of
    // the headers sign-in reads only (no `content-type`).
    let rendering = Rendering::of(req);
    let early = |rejection: Rejection| Check::Ready(refused(auth, Decision::Deny(rejection), rendering));
    if policy.refuses_host(req) {
        return early(ambiguous_host_refusal());
    }
    // A path the policy cannot read is the request's fault (400), as the
    // guard answers it, not a denial to be authenticated for; a policy
    // that reads no path decides whatever the path holds, as the guard's.
    let path = match policy.path_of(req.path()) {
        // Routed already, on the path as sent: one whose normal form
        // another route would have taken (`/admin/../public/x`) is
        // refused, as the guard refuses it after routing; the policy
        // would decide for a route the request did not reach.
        Ok(std::borrow::Cow::Owned(path)) if crate::authz::path::needs_rewrite(req.path(), &path) => {
            tracing::debug!(target: LOG_TARGET, method = req.method(), "a path not in normal form refused by a route policy");
            return early(Rejection::malformed_path(
                "the request path is not in normal form (`..`, `//`, an escape a router reads otherwise), and the route was chosen from it".to_owned(),
            ));
        }
        Ok(path) => path,
        Err(e) => {
            tracing::debug!(target: LOG_TARGET, method = req.method(), reason = %e, "malformed path refused by a route policy");
            return early(Rejection::malformed_path(e.to_string()));
        }
    };
    fn verdict(
        auth: &RequestAuth,
        access: AccessDecision,
        req: &dyn RequestHead,
        rendering: Rendering,
    ) -> Result<(), Reply> {
        if access.is_allowed() {
            return Ok(());
        }
        tracing::debug!(target: LOG_TARGET, %access, "denied by route policy");
        let guard = auth.compiled();
        refused(
            auth,
            guard.sign_in_or(req, auth.refused(guard.refusal(auth.identity(), access))),
            rendering,
        )
    }
    /// A route's refusal (or sign-in's answer in its place), counted as
    /// decided before a gRPC call's refusal becomes a 200, then rendered.
    fn refused(auth: &RequestAuth, decision: Decision, rendering: Rendering) -> Result<(), Reply> {
        if !matches!(decision, Decision::Allow(_)) {
            auth.compiled().tally(&decision);
        }
        match decision.for_request(rendering) {
            Decision::Deny(r) => Err(Reply::from(r)),
            Decision::Reply(reply) => Err(reply),
            Decision::Allow(_) => Ok(()),
        }
    }
    match policy.check_normalized(req, auth.identity(), &path) {
        Check::Ready(access) => Check::Ready(verdict(auth, access, req, rendering)),
        Check::Pending(fut) => {
            let auth = auth.clone();
            let snapshot = OwnedRequest::snapshot(req, crate::guard::SIGN_IN_HEADERS);
            // Dropped undecided (the request gone), it is counted as such.
            let mut waiting = auth.waiting();
            Check::pending(async move {
                let access = fut.await;
                waiting.decided();
                verdict(&auth, access, &snapshot, rendering)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::OwnedRequest;

    /// A renewal's `private` is merged into the application's
    /// `Cache-Control` it can read, and appended beside one it cannot (a
    /// value that is not text is never lost to the merge).
    #[test]
    fn a_renewals_private_is_merged_into_text_and_appended_beside_the_rest() {
        /// A response's headers; `None` for a value that is not text.
        struct Res(Vec<(String, Option<String>)>);
        impl ResponseTarget for Res {
            fn append_header(&mut self, name: &str, value: &str) {
                self.0.push((name.to_owned(), Some(value.to_owned())));
            }
            fn header_values(&self, name: &str) -> Option<Vec<&str>> {
                self.0
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_deref())
                    .collect()
            }
            fn replace_header(&mut self, name: &str, value: &str) {
                self.0.retain(|(n, _)| n != name);
                self.append_header(name, value);
            }
        }
        let edits = || ResponseEdits {
            headers: vec![(Cow::Borrowed("cache-control"), "private".to_owned())],
        };
        let cache_control = |res: &Res| -> Vec<Option<String>> {
            res.0
                .iter()
                .filter(|(n, _)| n == "cache-control")
                .map(|(_, v)| v.clone())
                .collect()
        };
        let mut text = Res(vec![("cache-control".into(), Some("public, max-age=60".into()))]);
        edits().apply(&mut text);
        assert_eq!(cache_control(&text), [Some("private, max-age=60".to_owned())]);
        let mut unread = Res(vec![("cache-control".into(), None)]);
        edits().apply(&mut unread);
        assert_eq!(cache_control(&unread), [None, Some("private".to_owned())]);
    }

    /// A reply's header name in capitals (a third party's authenticator
    /// may write one) is lowered on axum as on actix-web, never a panic;
    /// one HTTP cannot carry is skipped.
    #[cfg(feature = "axum")]
    #[test]
    fn a_header_name_in_capitals_is_lowered_not_a_panic() {
        let reply = Reply::new(200).header("X-Custom", "1").header("bad name", "2");
        let res = http_response(reply, |_| ());
        assert_eq!(res.headers()["x-custom"], "1");
        assert_eq!(res.headers().len(), 1, "{:?}", res.headers());
    }

    /// The same on actix-web: the header is skipped, never a 500.
    #[cfg(feature = "actix")]
    #[test]
    fn a_header_actix_cannot_carry_is_skipped_not_a_500() {
        let reply = Reply::new(200).header("X-Custom", "1").header("bad name", "2");
        let res = actix_response(reply);
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(res.headers().get("x-custom").unwrap(), "1");
        assert_eq!(res.headers().len(), 1, "{:?}", res.headers());
    }

    /// A reply's headers that may carry a credential are marked sensitive
    /// by both renderers; the others are not.
    #[cfg(all(feature = "axum", feature = "actix"))]
    #[test]
    fn both_renderers_mark_the_headers_that_may_carry_a_credential() {
        let reply = || {
            Reply::redirect("https://idp.example/logout?id_token_hint=eyJ")
                .header("set-cookie", "s=1")
                .header("www-authenticate", "Negotiate oRQw")
        };
        let http = http_response(reply(), |_| ());
        let actix = actix_response(reply());
        for name in ["location", "set-cookie", "www-authenticate", "cache-control"] {
            let sensitive = is_sensitive_header(name);
            assert_eq!(sensitive, name != "cache-control", "{name}");
            assert_eq!(http.headers()[name].is_sensitive(), sensitive, "http: {name}");
            assert_eq!(
                actix.headers().get(name).map(|v| v.is_sensitive()),
                Some(sensitive),
                "actix: {name}"
            );
        }
    }

    /// A reply that closes its connection says so on either framework, in
    /// its way, and still does once rendered for gRPC or HEAD; saying it
    /// twice writes one header.
    #[cfg(all(feature = "axum", feature = "actix"))]
    #[test]
    fn a_closing_reply_closes_on_both_frameworks_however_rendered() {
        let reply = || {
            Reply::from(Rejection::forbidden("no"))
                .closing_connection()
                .closing_connection()
        };
        let plain = Reply::from(Rejection::forbidden("no"));
        assert!(!plain.closes_connection());
        assert!(
            http_response(plain, |_| ())
                .extensions()
                .get::<CloseConnection>()
                .is_none()
        );
        // A third party's spelling: an option among others.
        let listed = Reply::new(200).header("connection", "keep-alive, Close");
        assert!(listed.closes_connection());
        // A bare header (a limit's 413 or 408, for HTTP/1.1) ends no
        // HTTP/2 connection: only a closing reply does.
        for bare in [
            listed.clone(),
            crate::limits::body_too_large(10),
            crate::limits::body_too_slow(),
        ] {
            assert!(bare.closes_connection());
            let http = http_response(bare, |_| ());
            assert!(http.extensions().get::<CloseConnection>().is_none());
            assert!(http.headers().contains_key("connection"), "kept for HTTP/1.1");
        }
        let actix = actix_response(listed.clone().closing_connection());
        assert_eq!(
            actix.head().connection_type(),
            actix_web::http::ConnectionType::Close
        );
        assert_eq!(
            http_response(listed.closing_connection(), |_| ()).headers().len(),
            1
        );
        for (name, reply) in [
            ("http", reply()),
            ("grpc", reply().grpc()),
            ("head", reply().without_body()),
        ] {
            assert!(reply.closes_connection(), "{name}");
            let http = http_response(reply.clone(), |_| ());
            let values: Vec<_> = http.headers().get_all("connection").iter().collect();
            assert_eq!(values, ["close"], "{name}");
            assert!(http.extensions().get::<CloseConnection>().is_some(), "{name}");
            let actix = actix_response(reply);
            assert_eq!(
                actix.head().connection_type(),
                actix_web::http::ConnectionType::Close,
                "{name}"
            );
            assert!(actix.headers().get("connection").is_none(), "{name}");
        }
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        let with = |ct: &str| OwnedRequest::new("POST", "/p.S/M").header("content-type", ct);
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "APPLICATION/GRPC+json",
            "application/grpc;charset=x",
        ] {
            assert!(is_grpc(&with(yes)), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/json",
            "application/grp",
            "text/html",
        ] {
            assert!(!is_grpc(&with(no)), "{no}");
        }
        // grpc-web calls are rendered as grpc-web's, in either form.
        for (ct, rendering) in [
            ("application/grpc-web", Rendering::GrpcWeb),
            ("application/grpc-web+proto", Rendering::GrpcWeb),
            ("Application/GRPC-Web-Text", Rendering::GrpcWebText),
            ("application/grpc-web-text+proto", Rendering::GrpcWebText),
            ("application/grpc-webx", Rendering::Http),
            ("application/grpc-web-textual", Rendering::Http),
            ("application/grpc+proto", Rendering::Grpc),
        ] {
            assert_eq!(Rendering::of(&with(ct)), rendering, "{ct}");
        }
        let get = OwnedRequest::new("GET", "/p.S/M").header("content-type", "application/grpc-web");
        assert_eq!(Rendering::of(&get), Rendering::Http, "grpc-web calls are POSTs");
        assert!(!is_grpc(&OwnedRequest::new("POST", "/p.S/M")));
        let get = OwnedRequest::new("GET", "/p.S/M").header("content-type", "application/grpc");
        assert!(!is_grpc(&get), "gRPC calls are POSTs");
    }

    #[test]
    fn a_grpc_reply_has_its_code_and_a_percent_encoded_message() {
        let code = |status| {
            Reply::new(status)
                .grpc()
                .headers()
                .find(|(n, _)| *n == "grpc-status")
                .map(|(_, v)| v.to_owned())
        };
        for (status, want) in [
            (302, "16"),
            (401, "16"),
            (403, "7"),
            (400, "3"),
            (404, "12"),
            (413, "8"),
            (503, "14"),
            (500, "2"),
        ] {
            assert_eq!(code(status).as_deref(), Some(want), "{status}");
        }
        let two_tokens = Reply::from(Rejection::invalid_request("api", "two tokens")).grpc();
        assert!(two_tokens.headers().any(|h| h == ("grpc-status", "16")));
        assert_eq!(grpc_percent_encode("50% née\n"), "50%25 n%C3%A9e%0A");
        let denied = Reply::from(Rejection::forbidden("access denied")).grpc();
        assert_eq!(denied.status(), 200);
        assert!(
            denied
                .headers()
                .any(|h| h == ("content-type", "application/grpc"))
        );
        assert!(denied.headers().any(|h| h == ("grpc-status", "7")));
        assert!(denied.headers().any(|h| h == ("grpc-message", "access denied")));
        // A shed request's Retry-After is gRPC's retry pushback.
        let shed = Reply::problem(503, "busy", "Service busy", "try again")
            .header("retry-after", "1")
            .grpc();
        assert!(shed.headers().any(|h| h == ("grpc-status", "14")));
        assert!(shed.headers().any(|h| h == ("grpc-retry-pushback-ms", "1000")));
        assert!(!denied.headers().any(|(n, _)| n == "grpc-retry-pushback-ms"));
    }

    #[test]
    fn replies_to_a_head_request_have_no_body() {
        use crate::Guard;
        struct Routed;
        impl RequestTarget for Routed {
            fn remove_header(&mut self, _: &str) {}
            fn set_header(&mut self, _: &str, _: &str) {}
            fn rewrite_target(&mut self, _: &str) -> Result<(), TargetRewrite> {
                Err(TargetRewrite::AlreadyRouted {
                    advice: "wrap the router",
                })
            }
            fn insert_auth(&mut self, _: RequestAuth) {}
        }
        let answer = |guard: &Guard, method: &str, path: &str| {
            let Check::Ready(decision) = guard.check(&OwnedRequest::new(method, path)) else {
                unreachable!("nothing to wait for")
            };
            decision.apply(&mut Routed).expect_err("refused")
        };
        // A policy on paths: the guard hands the router the normalised path.
        let on_paths = AccessPolicy::builder()
            .allow("paths", [crate::authz::Rule::new().paths(["/a/*"])])
            .build()
            .unwrap();
        let open = Guard::builder().access_policy(on_paths).build().unwrap();
        let closed = Guard::builder()
            .access_policy(AccessPolicy::require_authenticated())
            .build()
            .unwrap();
        for (guard, path, status) in [(&open, "/a/./b", 400), (&closed, "/a", 403)] {
            let get = answer(guard, "GET", path);
            let head = answer(guard, "HEAD", path);
            assert_eq!((get.status(), head.status()), (status, status), "{path}");
            assert!(!get.body().is_empty(), "{path}");
            assert!(head.body().is_empty(), "{path}: {}", head.body());
            assert_eq!(
                get.headers().collect::<Vec<_>>(),
                head.headers().collect::<Vec<_>>(),
                "{path}"
            );
        }
    }

    #[test]
    fn a_reply_made_from_the_body_is_rendered_as_its_request() {
        let wanting = || Reply::after_body(10, |_| Check::Ready(Reply::problem(400, "x", "Bad", "bad form")));
        for body in [Ok(b"form".to_vec()), Err(Unread::TooLarge), Err(Unread::TimedOut)] {
            let Check::Ready(get) = wanting().finish_with_body(body.clone()) else {
                unreachable!()
            };
            let Check::Ready(head) = wanting().without_body().finish_with_body(body.clone()) else {
                unreachable!()
            };
            let Check::Ready(grpc) = wanting().grpc().finish_with_body(body) else {
                unreachable!()
            };
            assert!(!get.body().is_empty());
            assert_eq!(head.status(), get.status());
            assert!(head.body().is_empty(), "{}", head.body());
            assert!(grpc.headers().any(|(n, _)| n == "grpc-status"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_is_read_to_its_limit_and_within_the_read_time() {
        use std::task::Poll;
        /// What a framework's body yields when polled.
        type Chunk = Option<Result<Option<&'static [u8]>, ()>>;
        // The reply echoes the body's length as its status (200 + length).
        let wanting = || {
            Reply::after_body(10, |b| {
                Check::Ready(Reply::problem(
                    200 + u16::try_from(b.len()).unwrap(),
                    "x",
                    "Read",
                    "read",
                ))
            })
        };
        // Chunks and trailers, as a framework's body yields them.
        let answer = |chunks: Vec<Chunk>| {
            let mut chunks = chunks.into_iter();
            let mut polled = 0;
            async move {
                let reply = wanting()
                    .finish_from_body(|_| {
                        polled += 1;
                        Poll::Ready(chunks.next().flatten())
                    })
                    .await;
                (reply.status(), polled)
            }
        };
        let data = |d: &'static [u8]| Some(Ok(Some(d)));
        assert_eq!(
            answer(vec![data(b"logout"), Some(Ok(None)), data(b"=1")]).await,
            (208, 4)
        );
        assert_eq!(answer(vec![]).await, (200, 1), "an empty body");
        assert_eq!(
            answer(vec![data(b"0123456"), data(b"7890"), data(b"never read")]).await,
            (413, 2),
            "reading stops at the chunk past the limit"
        );
        assert_eq!(
            answer(vec![data(b"a"), Some(Err(()))]).await,
            (400, 2),
            "a body that cannot be read"
        );

        // A body announced and never sent: 408 once the read time is over.
        let never = tokio::spawn(wanting().finish_from_body(|_| Poll::<Chunk>::Pending));
        tokio::time::sleep(
            crate::limits::ServerLimits::default().body_read() - std::time::Duration::from_millis(1),
        )
        .await;
        assert!(!never.is_finished(), "still reading");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let late = never.await.unwrap();
        assert_eq!(late.status(), 408);
        // The unread rest of the body closes the connection, as the
        // server limits' answers do.
        assert!(
            late.headers().any(|(n, v)| n == "connection" && v == "close"),
            "{late:?}"
        );

        // A reply that wants no body answers itself without reading.
        let plain = Reply::problem(418, "x", "Teapot", "none")
            .finish_from_body(|_| -> Poll<Chunk> { unreachable!("read") })
            .await;
        assert_eq!(plain.status(), 418);
    }

    #[test]
    fn a_decision_moves_without_a_memcpy_call() {
        // LLVM copies up to 128 bytes with inline stores on x86-64; a
        // larger decision is moved by a `memcpy` call at each of the
        // guard's and adapters' returns (measured: a tenth of the guard's
        // time on a cached token).
        use crate::check::Check;
        assert!(
            std::mem::size_of::<Decision>() <= 128,
            "{}",
            std::mem::size_of::<Decision>()
        );
        assert!(
            std::mem::size_of::<Check<Result<Decision, Reply>>>() <= 128,
            "{}",
            std::mem::size_of::<Check<Result<Decision, Reply>>>()
        );
        assert!(
            std::mem::size_of::<crate::guard::Acc>() <= 128,
            "{}",
            std::mem::size_of::<crate::guard::Acc>()
        );
    }
}
