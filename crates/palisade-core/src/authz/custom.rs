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
    /// How long it may take: its set's ([`ExternalAuthorizers::get`]).
    pub(crate) timeout: Duration,
    /// When its failure was last said.
    said: Arc<Sparse>,
}

/// Set once a request was decided on a runtime without Tokio's timer:
/// authorizers are then asked without a timeout (said once), rather than
/// each request trying, and failing, to start one.
static TIMERLESS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Registered {
    /// The authorizer's verdict on `request`: [`ExternalDecision::Deny`]
    /// when it does not answer within the timeout or panics (said at WARN,
    /// at most once a minute).
    pub(crate) async fn ask(&self, request: CheckRequest) -> ExternalDecision {
        let asked = Asked {
            asked: CatchUnwind(self.authorizer.authorize(request)),
            deadline: deadline(self.timeout),
        };
        let failure = match asked.await {
            Ok(verdict) => return verdict,
            Err(failure) => failure,
        };
        if self.said.due() {
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

/// The timer of an authorizer's timeout: `None` outside a Tokio runtime
/// or on one built without its timer (`enable_time`), said at WARN once.
fn deadline(timeout: Duration) -> Option<Pin<Box<tokio::time::Sleep>>> {
    use std::sync::atomic::Ordering;
    if !TIMERLESS.load(Ordering::Relaxed) && tokio::runtime::Handle::try_current().is_ok() {
        // Tokio panics when the runtime has no timer (its message is
        // printed once, by the first request that tries).
        if let Ok(sleep) = std::panic::catch_unwind(|| tokio::time::sleep(timeout)) {
            return Some(Box::pin(sleep));
        }
    }
    if !TIMERLESS.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            target: super::LOG_TARGET,
            "external authorizers are asked without a timeout: the runtime deciding requests has no \
             Tokio timer (build it with `enable_time`, as axum's, actix-web's and #[tokio::main]'s are)"
        );
    }
    None
}

/// An authorizer's answer: its verdict, or why it has none (`panicked`,
/// `did not answer in time`).
struct Asked {
    asked: CatchUnwind,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for Asked {
    type Output = Result<ExternalDecision, &'static str>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(answer) = Pin::new(&mut self.asked).poll(cx) {
            return Poll::Ready(answer.map_err(|()| "panicked"));
        }
        let expired = self
            .deadline
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if expired {
            Poll::Ready(Err("did not answer in time"))
        } else {
            Poll::Pending
        }
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
    /// Tokio's timer, which axum's, actix-web's and `#[tokio::main]`'s
    /// runtimes have; outside a Tokio runtime, or on one built without
    /// `enable_time`, authorizers are asked without it (said once at WARN).
    /// A panic is caught only where panics unwind (not with `panic =
    /// "abort"`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use palisade_core::authz::{CheckRequest, ExternalAuthorizers, ExternalDecision};
    /// let authorizers = ExternalAuthorizers::new()
    ///     .timeout(Duration::from_millis(500))
    ///     .register("ext-authz", [""; 0], |_: CheckRequest| async { ExternalDecision::Allow });
    /// # let _ = authorizers;
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(Duration::from_millis(1), crate::syntax::LONGEST_DURATION);
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
                timeout: Self::DEFAULT_TIMEOUT,
                said: Arc::new(Sparse::per_minute()),
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

    /// The authorizer registered under `name`, with the set's timeout
    /// (whenever [`timeout`](Self::timeout) was set).
    pub(crate) fn get(&self, name: &str) -> Option<Registered> {
        self.map.get(name).map(|r| Registered {
            timeout: self.timeout,
            ..r.clone()
        })
    }
}
