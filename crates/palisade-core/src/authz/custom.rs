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

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use crate::check::BoxFuture;
use std::sync::Arc;

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
/// [`ExternalDecision::Deny`]: fail closed, as Istio's default.
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
    pub(crate) authorizer: Arc<dyn ExternalAuthorizer>,
    pub(crate) headers: Arc<[String]>,
}

/// The external authorizers a policy file's `CUSTOM` policies may name.
#[derive(Clone, Default)]
pub struct ExternalAuthorizers {
    map: BTreeMap<String, Registered>,
}

impl fmt::Debug for ExternalAuthorizers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.map.keys()).finish()
    }
}

impl ExternalAuthorizers {
    /// No authorizers.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
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
                authorizer: Arc::new(authorizer),
                headers: headers.into(),
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
