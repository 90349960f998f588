//! [`PolicyError`]: what is wrong with a policy file, and where.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

/// A policy file that could not be used, with where the problem is.
///
/// Displayed as `file: document N (Kind namespace/name): field `path`:
/// message (at line L, column C)`, each part present when known.
///
/// When a value was refused by another part (a key file that does not
/// parse, a builder that rejects a setting), the message says why, and that
/// error is kept for inspection as its [`cause`](Self::cause) (and
/// [`io_error`](Self::io_error) finds an I/O error in it), not as its
/// [`source`](std::error::Error::source): a reporter that prints an
/// error's chain (anyhow's `{:#}`, `Caused by:`) would say the cause
/// twice, and the one-line report, which names the file, document and
/// field, says it once. Its `Debug` shows the cause as its message says
/// it, not as its own `Debug` would (which may hold what a field gave,
/// such as a secret pasted where its file's path goes): `fn main() ->
/// Result<_, Box<dyn Error>>` prints an error's `Debug`.
///
/// ```
/// use palisade_core::policy::PolicyError;
///
/// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
/// let e = PolicyError::new("policy.yaml", format!("cannot read key.pem: {io}")).with_source(io);
/// assert!(std::error::Error::source(&e).is_none());
/// assert_eq!(e.io_error().map(std::io::Error::kind), Some(std::io::ErrorKind::NotFound));
/// assert!(e.cause().is_some_and(|c| c.to_string() == "no such file"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct PolicyError {
    /// The file (or the name given for an in-memory source).
    pub file: String,
    /// The 1-based index of the document in the stream, when known.
    pub document: Option<u32>,
    /// `Kind namespace/name` of the document, when known.
    pub resource: Option<String>,
    /// The field path inside the document (`spec.jwtRules[0].issuer`), when known.
    pub field: Option<String>,
    /// The 1-based line in the file: of the offending value for syntax and
    /// type errors, of the document's start for checks of a whole value.
    pub line: Option<NonZeroU32>,
    /// The 1-based column of the offending value, when [`Self::line`] points at it.
    pub column: Option<NonZeroU32>,
    /// What is wrong.
    pub message: String,
    /// The error behind the message, when another part refused the value.
    // A thin pointer: the error stays under clippy's `result_large_err` size.
    source: Option<Arc<Box<dyn std::error::Error + Send + Sync + 'static>>>,
}

impl std::fmt::Debug for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyError")
            .field("file", &self.file)
            .field("document", &self.document)
            .field("resource", &self.resource)
            .field("field", &self.field)
            .field("line", &self.line)
            .field("column", &self.column)
            .field("message", &self.message)
            .field("source", &self.source.as_ref().map(|e| e.to_string()))
            .finish()
    }
}

/// Equal when they say the same thing at the same place (the sources are
/// not compared).
impl PartialEq for PolicyError {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.file,
            self.document,
            &self.resource,
            &self.field,
            self.line,
            self.column,
            &self.message,
        ) == (
            &other.file,
            other.document,
            &other.resource,
            &other.field,
            other.line,
            other.column,
            &other.message,
        )
    }
}

impl Eq for PolicyError {}

impl PolicyError {
    /// An error about a whole file (or named source).
    #[must_use]
    pub fn new(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            document: None,
            resource: None,
            field: None,
            line: None,
            column: None,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, caused by `source`, which the message says (kept as
    /// its [`cause`](Self::cause)).
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(Box::new(source)));
        self
    }

    /// The same error, caused by a service a document names (a shared
    /// store) that did not answer: `source` kept inside an I/O error of
    /// kind [`NotConnected`](std::io::ErrorKind::NotConnected), so that
    /// [`io_error`](Self::io_error) finds it and a hot reload tries the
    /// file again, as it does for a file that cannot be read here.
    #[must_use]
    pub fn unreachable(self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.with_source(std::io::Error::new(std::io::ErrorKind::NotConnected, source))
    }

    /// The error that caused this one, when another part refused the
    /// value ([`with_source`](Self::with_source)): for inspection (a
    /// downcast to that part's error type), as the message already says it.
    #[must_use]
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref().map(|e| &**e)
    }

    /// The first I/O error in this error's [`cause`](Self::cause) and its
    /// [`source`](std::error::Error::source) chain. In the errors Palisade
    /// makes, that is what lies outside the file and may change by itself:
    /// a file a document names (a secret, key or CA file) that could not
    /// be read here, or a service it names that did not answer
    /// ([`unreachable`](Self::unreachable): `NotConnected`). Its
    /// [`kind`](std::io::Error::kind) tells a file missing or unreadable on
    /// this host (`NotFound`, `PermissionDenied`) from one that is there
    /// but wrong (`InvalidData` for a secret that is not text,
    /// `IsADirectory`).
    #[must_use]
    pub fn io_error(&self) -> Option<&std::io::Error> {
        let mut next = self.cause().map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Some(io);
            }
            // Says its cause in its message, so not as its source.
            if let Some(super::SecretFileError::Unreadable { error, .. }) = e.downcast_ref() {
                return Some(error);
            }
            next = e.source();
        }
        None
    }

    /// The same error, located at a field of a document.
    #[must_use]
    pub fn at(mut self, document: usize, resource: Option<String>, field: impl Into<String>) -> Self {
        self.document = u32::try_from(document).ok();
        self.resource = resource;
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    /// The same error, at a 1-based line (and column) of the file; zero and
    /// `None` mean unknown.
    #[must_use]
    pub fn at_line(mut self, line: Option<usize>, column: Option<usize>) -> Self {
        let position = |n: Option<usize>| n.and_then(|n| u32::try_from(n).ok()).and_then(NonZeroU32::new);
        self.line = position(line);
        self.column = self.line.and(position(column));
        self
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        if let Some(r) = &self.resource {
            write!(f, " ({r})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)?;
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " (at line {l}, column {c})"),
            (Some(l), None) => write!(f, " (in the document at line {l})"),
            _ => Ok(()),
        }
    }
}

/// No [`source`](std::error::Error::source): the message says the cause
/// (see [`PolicyError::cause`]).
impl std::error::Error for PolicyError {}

/// Something in a policy file that loads but should be said aloud:
/// - what takes effect for no in-process workload: a `targetRefs` entry
///   naming a `Gateway`, `GatewayClass` or `ServiceEntry` (see
///   [`TargetRefSpec`](super::TargetRefSpec)), a `KeycloakAdapter` key or a
///   `DestinationRule` field read and not applied, an `RbacConfig`
///   `inclusion` or `exclusion` its mode ignores;
/// - what relaxes a secure default: a dry-run `AuthorizationPolicy`,
///   `ServiceRoleBinding` or `RbacConfig`, a `PeerAuthentication` mode
///   `PERMISSIVE` or `DISABLE`;
/// - what Palisade reads otherwise than a mesh, or is likely a mistake: a
///   `jwtRules` entry without `audiences`, a document without
///   `metadata.namespace` beside documents that name one, a `DestinationRule`
///   tuning Istio's proxy (`connectionPool`, `loadBalancer`,
///   `outlierDetection`), a host without a port in a `DENY` or `CUSTOM`
///   rule.
///
/// Located and displayed as a [`PolicyError`] is, so a checker can print it
/// the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWarning(PolicyError);

impl PolicyWarning {
    pub(crate) fn new(at: PolicyError) -> Self {
        Self(at)
    }

    /// The file (or the name given for an in-memory source).
    #[must_use]
    pub fn file(&self) -> &str {
        &self.0.file
    }

    /// The 1-based index of the document in the stream.
    #[must_use]
    pub fn document(&self) -> Option<u32> {
        self.0.document
    }

    /// `Kind namespace/name` of the document.
    #[must_use]
    pub fn resource(&self) -> Option<&str> {
        self.0.resource.as_deref()
    }

    /// The field path inside the document (`spec.targetRefs[0]`).
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        self.0.field.as_deref()
    }

    /// The 1-based line where the document starts.
    #[must_use]
    pub fn line(&self) -> Option<NonZeroU32> {
        self.0.line
    }

    /// What it means.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

/// The warning as an error, at the same place with the same message: for
/// a tool that locates documents itself (a stream made of several files)
/// or refuses what others only warn of.
impl From<PolicyWarning> for PolicyError {
    fn from(warning: PolicyWarning) -> Self {
        warning.0
    }
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
