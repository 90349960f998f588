//! The authenticate step: what an authenticator is and what it answers.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::Rejection;
use crate::identity::Identity;
use crate::request::RequestHead;

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

/// A framework's request headers, as the adapters expose them to
/// [`HeaderEdit::apply_all`].
pub trait HeaderTarget {
    /// Removes every value of the header `name` (lower case).
    fn remove(&mut self, name: &str);
    /// Replaces the header `name` (lower case) with `value`; a name or value
    /// that HTTP cannot carry is skipped.
    fn set(&mut self, name: &str, value: &str);
}

impl HeaderEdit {
    /// Applies edits in order: the one place that decides what an edit does,
    /// for every framework.
    pub fn apply_all(edits: Vec<HeaderEdit>, target: &mut dyn HeaderTarget) {
        for edit in edits {
            match edit {
                HeaderEdit::Remove(name) => target.remove(&name),
                HeaderEdit::Set(name, value) => target.set(&name, &value),
            }
        }
    }
}

/// Values an authenticator hands to the handler beside the identity (a
/// delegated Kerberos credential, say), found by type with
/// `RequestAuth::attachment::<T>()`.
#[derive(Clone, Default)]
pub struct Attachments(Vec<Arc<dyn Any + Send + Sync>>);

impl fmt::Debug for Attachments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attachments({})", self.0.len())
    }
}

impl Attachments {
    /// Adds a value.
    pub fn push<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0.push(Arc::new(value));
    }

    /// The first value of type `T`.
    #[must_use]
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.0.iter().find_map(|a| a.downcast_ref::<T>())
    }

    /// Appends another set.
    pub fn append(&mut self, other: &mut Attachments) {
        self.0.append(&mut other.0);
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A successful authentication.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Authenticated {
    /// Who the caller is.
    pub identity: Identity,
    /// Header changes to apply before the handler runs.
    pub edits: Vec<HeaderEdit>,
    /// Headers to add to the response (a Negotiate mutual-authentication
    /// token: `WWW-Authenticate: Negotiate …`), lower-case names.
    pub response_headers: Vec<(String, String)>,
    /// Values for the handler.
    pub attachments: Attachments,
}

impl Authenticated {
    /// An authentication with no header changes.
    #[must_use]
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            edits: Vec::new(),
            response_headers: Vec::new(),
            attachments: Attachments::default(),
        }
    }

    /// Attaches a value for the handler.
    #[must_use]
    pub fn with_attachment<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.attachments.push(value);
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
    pub fn with_edits(mut self, edits: Vec<HeaderEdit>) -> Self {
        self.edits = edits;
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
}

/// A boxed, sendable future of an [`AuthOutcome`].
pub type BoxOutcome = Pin<Box<dyn Future<Output = AuthOutcome> + Send + 'static>>;

/// An outcome that is either known now (the fast path: no credential, a cached
/// token) or needs I/O or blocking work first.
#[non_exhaustive]
pub enum Authenticating {
    /// Known without waiting.
    Ready(AuthOutcome),
    /// Known once the future completes.
    Pending(BoxOutcome),
}

impl fmt::Debug for Authenticating {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authenticating::Ready(o) => f.debug_tuple("Ready").field(o).finish(),
            Authenticating::Pending(_) => f.write_str("Pending(<future>)"),
        }
    }
}

/// Checks one kind of credential.
///
/// Implementations read what they need from the request synchronously and
/// return either a ready outcome or a `'static` future, so no request borrow
/// crosses an `await`.
pub trait Authenticator: Send + Sync + 'static {
    /// The `WWW-Authenticate` challenge this authenticator adds when a
    /// credential is required and missing (`Bearer realm="…"`, `Negotiate`).
    fn challenge(&self) -> Option<String>;

    /// Authenticates a request.
    fn authenticate(&self, request: &dyn RequestHead) -> Authenticating;
}
