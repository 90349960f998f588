//! `CUSTOM` policies: an asynchronous authorizer registered in code under the
//! name a policy's `provider.name` gives (Istio's `extensionProviders`).
//!
//! ```
//! use palisade_core::authz::{CheckRequest, ExternalAuthorizers, ExternalDecision};
//! use palisade_core::authn::RequestHead;
//! let authorizers = ExternalAuthorizers::new().register(
//!     "ext-authz",
//!     ["x-ext-authz"],
//!     |check: CheckRequest| async move {
//!         if check.request.header_str("x-ext-authz") == Some("allow") {
//!             ExternalDecision::Allow
//!         } else {
//!             ExternalDecision::Deny
//!         }
//!     },
//! );
//! assert_eq!(authorizers.names().collect::<Vec<_>>(), ["ext-authz"]);
//! ```
//!
//! An authorizer that does not answer within its [timeout](ExternalAuthorizers::timeout)
//! (10 s unless set), or that panics, is taken to deny: the request gets a
//! 403, as Istio answers when its external authorizer fails and `failOpen`
//! is off, and a warning says so (at most once a minute).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::check::BoxFuture;
use crate::logging::Sparse;

use crate::identity::Identity;
use crate::request::OwnedRequest;

/// What an external authorizer sees: the request (method, normalised path,
/// query, host, connection and the headers the authorizer asked for) and the
/// verified identity, if any.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CheckRequest {
    /// The request head, with the normalised path.
    pub request: OwnedRequest,
    /// The verified caller.
    pub identity: Option<Identity>,
}

/// An external authorizer's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExternalDecision {
    /// Go on to the DENY and ALLOW policies.
    Allow,
    /// Refuse with 403.
    Deny,
}

/// The authorizer behind a `CUSTOM` policy. Closures
/// `Fn(CheckRequest) -> impl Future<Output = ExternalDecision>` implement it.
/// An authorizer that cannot decide (its service is down) should answer
/// [`ExternalDecision::Deny`]: fail closed, as Istio's default. One that
/// takes longer than its [timeout](ExternalAuthorizers::timeout), or
/// panics, is taken to have answered that.
pub trait ExternalAuthorizer: Send + Sync + 'static {
    /// Decides one request.
    fn authorize(&self, request: CheckRequest) -> BoxFuture<ExternalDecision>;
}

impl<F, Fut> ExternalAuthorizer for F
where
    F: Fn(CheckRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ExternalDecision> + Send + 'static,
{
    fn authorize(&self, request: CheckRequest) -> BoxFuture<ExternalDecision> {
        Box::pin(self(request))
    }
}

#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) name: Arc<str>,
    pub(crate) authorizer: Arc<dyn ExternalAuthorizer>,
    pub(crate) headers: Arc<[String]>,
    pub(crate) timeout: Duration,
}

impl Registered {
    /// The authorizer's verdict on `request`: [`ExternalDecision::Deny`]
    /// when it does not answer within the timeout or panics (said at WARN,
    /// at most once a minute).
    pub(crate) async fn ask(&self, request: CheckRequest) -> ExternalDecision {
        static SAID: Sparse = Sparse::per_minute();
        let asked = CatchUnwind(self.authorizer.authorize(request));
        let failure = match tokio::time::timeout(self.timeout, asked).await {
            Ok(Ok(verdict)) => return verdict,
            Ok(Err(())) => "panicked",
            Err(_) => "did not answer in time",
        };
        if SAID.due() {
            tracing::warn!(
                target: super::LOG_TARGET,
                provider = %self.name,
                timeout = ?self.timeout,
                "the external authorizer `{}` {failure}: requests it was asked about are denied \
                 (said at most once a minute)",
                self.name
            );
        }
        ExternalDecision::Deny
    }
}

/// A future whose panic is its output's `Err`, so that a panicking
/// authorizer denies a request rather than dropping its connection.
struct CatchUnwind(BoxFuture<ExternalDecision>);

impl Future for CatchUnwind {
    type Output = Result<ExternalDecision, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(verdict)) => Poll::Ready(Ok(verdict)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// The external authorizers a policy file's `CUSTOM` policies may name.
#[derive(Clone)]
pub struct ExternalAuthorizers {
    map: BTreeMap<String, Registered>,
    timeout: Duration,
}

impl Default for ExternalAuthorizers {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

impl fmt::Debug for ExternalAuthorizers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAuthorizers")
            .field("names", &self.map.keys())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ExternalAuthorizers {
    /// How long an authorizer may take unless [`timeout`](Self::timeout)
    /// says otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// No authorizers.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How long each authorizer may take to answer (Istio's
    /// `extensionProviders[].envoyExtAuthzHttp.timeout`) before the request
    /// is denied, whatever it answers later: 10 s unless set
    /// ([`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT); Istio's proxy waits 600 s, which holds a
    /// request and its connection for ten minutes when an authorizer
    /// hangs). At least 1 ms, at most ten years. The timeout runs on
    /// Tokio's timer, which the runtime deciding the request must have
    /// enabled, as axum's, actix-web's and `#[tokio::main]`'s have.
    ///
    /// ```
    /// use std::time::Duration;
    /// use palisade_core::authz::{CheckRequest, ExternalAuthorizers, ExternalDecision};
    /// let authorizers = ExternalAuthorizers::new()
    ///     .timeout(Duration::from_millis(500))
    ///     .register("ext-authz", [""; 0], |_: CheckRequest| async { ExternalDecision::Allow });
    /// # let _ = authorizers;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(Duration::from_millis(1), crate::syntax::LONGEST_DURATION);
        for registered in self.map.values_mut() {
            registered.timeout = self.timeout;
        }
        self
    }

    /// Registers `authorizer` under `name`, to be sent the request headers
    /// `headers` (Istio's `includeRequestHeadersInCheck`).
    #[must_use]
    pub fn register<I, S>(mut self, name: &str, headers: I, authorizer: impl ExternalAuthorizer) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let headers: Vec<String> = headers
            .into_iter()
            .map(|h| h.as_ref().to_ascii_lowercase())
            .collect();
        self.map.insert(
            name.to_owned(),
            Registered {
                name: name.into(),
                authorizer: Arc::new(authorizer),
                headers: headers.into(),
                timeout: self.timeout,
            },
        );
        self
    }

    /// A stand-in for each provider a `CUSTOM` policy of `set` names, each
    /// refusing every request (failing closed, as an authorizer that
    /// cannot be reached does): what compiles a file's policies where their
    /// authorizers are not at hand (a whole-file check, `palisade check`),
    /// since the real ones are registered by each service's code.
    #[must_use]
    pub fn stand_ins(set: &crate::policy::PolicySet) -> Self {
        set.documents()
            .iter()
            .filter_map(|d| match &d.spec {
                crate::policy::Spec::AuthorizationPolicy(p) => p.provider.as_ref().map(|p| p.name.as_str()),
                _ => None,
            })
            .fold(Self::new(), |a, name| {
                a.register(name, [""; 0], |_: CheckRequest| async { ExternalDecision::Deny })
            })
    }

    /// The registered names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    pub(crate) fn get(&self, name: &str) -> Option<Registered> {
        self.map.get(name).cloned()
    }
}
