//! The pipeline every adapter runs: authenticate, then authorize.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::authn::{Attachments, AuthOutcome, Authenticated, Authenticating, Authenticator, HeaderEdit};
use crate::authz::{AccessCheck, AccessDecision, AccessPolicy, Action};
use crate::error::Rejection;
use crate::identity::Identity;
use crate::request::{OwnedRequest, RequestHead};

/// Log target of every decision.
pub const LOG_TARGET: &str = "palisade";

/// A request that may proceed, with what was established about it.
#[derive(Clone, Debug)]
pub struct Allowed {
    /// The verified caller, if any credential was given.
    pub identity: Option<Identity>,
    /// Header changes to apply before the handler runs.
    pub edits: Vec<HeaderEdit>,
    /// Which policy allowed it.
    pub access: AccessDecision,
    /// The normalised path, when it differs from the request's: the adapter
    /// rewrites the request so the router sees what the policy matched.
    pub path: Option<String>,
    /// Headers the adapter adds to the response (lower-case names), such as
    /// a Negotiate mutual-authentication token.
    pub response_headers: Vec<(String, String)>,
    /// Values the authenticators attached for the handler.
    pub attachments: Attachments,
}

/// What Palisade established for an allowed request. The adapters put it in
/// the request's extensions (one extension, so the hot path allocates once);
/// the extractors read it.
///
/// ```
/// use palisade_core::{Check, Decision, Guard, OwnedRequest, RequestAuth};
/// use palisade_core::authz::AccessPolicy;
/// let guard = Guard::builder().access_policy(AccessPolicy::allow_all()).build()?;
/// let Check::Ready(Decision::Allow(allowed)) = guard.check(&OwnedRequest::get("/")) else { panic!() };
/// let auth = RequestAuth::new(allowed, &guard);
/// assert!(auth.identity().is_none());
/// assert_eq!(auth.missing_credential().status(), 401);
/// # Ok::<(), palisade_core::GuardError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RequestAuth {
    identity: Option<Identity>,
    access: AccessDecision,
    guard: Guard,
    attachments: Attachments,
}

impl RequestAuth {
    /// The record of an allowed request (its header edits are the adapter's
    /// to apply and are not kept).
    #[must_use]
    pub fn new(allowed: Allowed, guard: &Guard) -> Self {
        Self {
            identity: allowed.identity,
            access: allowed.access,
            guard: guard.clone(),
            attachments: allowed.attachments,
        }
    }

    /// A value an authenticator attached (`palisade_spnego::DelegatedCredential`).
    #[must_use]
    pub fn attachment<T: 'static>(&self) -> Option<&T> {
        self.attachments.get::<T>()
    }

    /// The verified caller, when a credential was given.
    #[must_use]
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Which policy allowed the request, and by which rule.
    #[must_use]
    pub fn access(&self) -> &AccessDecision {
        &self.access
    }

    /// The 401 for a handler that needs an identity the request lacks.
    #[must_use]
    pub fn missing_credential(&self) -> Rejection {
        self.guard.missing_credential()
    }

    /// The guard that established this record.
    #[must_use]
    pub fn guard(&self) -> &Guard {
        &self.guard
    }
}

/// The answer to a denied request, the same for the guard and route
/// policies: 401 with the challenges when the caller has no end-user
/// credential and one could change the decision (the deciding rules read
/// the request principal or claims); 403 otherwise, as Istio answers.
fn refusal(
    identity: Option<&Identity>,
    access: &AccessDecision,
    missing: impl FnOnce() -> Rejection,
) -> Rejection {
    let anonymous = identity.is_none_or(|i| i.request_principal_str().is_none());
    match access.action() {
        Some(Action::Custom) => Rejection::forbidden("access denied by an external authorizer"),
        _ if anonymous && access.end_user_could_help() => missing(),
        _ => Rejection::forbidden("access denied by policy"),
    }
}

/// The verdict of a route-level policy ([`authorize_route`]): known now, or
/// once a `CUSTOM` policy's authorizer answered.
pub enum RouteCheck {
    /// Known without waiting.
    Ready(Result<AccessDecision, Rejection>),
    /// Known once the future completes.
    Pending(Pin<Box<dyn Future<Output = Result<AccessDecision, Rejection>> + Send + 'static>>),
}

impl fmt::Debug for RouteCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteCheck::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            RouteCheck::Pending(_) => f.write_str("Pending(<future>)"),
        }
    }
}

/// Checks a route-level policy (a role requirement, say) against the
/// identity the Palisade middleware established: the one decision both
/// frameworks' route layers make. No identity and denied: 401 with the
/// guard's challenges; an identity and denied: 403. Without the middleware
/// in front (a wiring mistake), every request is refused with 401 and an
/// error is logged.
pub fn authorize_route(
    policy: &AccessPolicy,
    auth: Option<&RequestAuth>,
    req: &dyn RequestHead,
) -> RouteCheck {
    let Some(auth) = auth else {
        tracing::error!(target: LOG_TARGET, "a route policy runs on a request that no Palisade middleware checked: refused");
        return RouteCheck::Ready(Err(Rejection::missing_credential(Vec::new())));
    };
    let refuse = |auth: &RequestAuth, access: AccessDecision| {
        if access.is_allowed() {
            return Ok(access);
        }
        tracing::debug!(target: LOG_TARGET, %access, "denied by route policy");
        let r = refusal(auth.identity(), &access, || auth.missing_credential());
        Err(r.with_access(access))
    };
    match policy.check(req, auth.identity()) {
        AccessCheck::Ready(access) => RouteCheck::Ready(refuse(auth, access)),
        AccessCheck::Pending(fut) => {
            let auth = auth.clone();
            RouteCheck::Pending(Box::pin(async move { refuse(&auth, fut.await) }))
        }
    }
}

/// The guard's verdict on one request.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Let the request through.
    Allow(Allowed),
    /// Answer with this rejection instead of calling the handler.
    Deny(Rejection),
}

/// A boxed, sendable future of a [`Decision`].
pub type BoxDecision = Pin<Box<dyn Future<Output = Decision> + Send + 'static>>;

/// A decision known now, or after I/O (a JWKS fetch, a first signature check).
pub enum Check {
    /// Known without waiting.
    Ready(Decision),
    /// Known once the future completes.
    Pending(BoxDecision),
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Ready(d) => f.debug_tuple("Ready").field(d).finish(),
            Check::Pending(_) => f.write_str("Pending(<future>)"),
        }
    }
}

/// Configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuardError {
    /// The policy needs authenticated callers but no authenticator is configured.
    #[error("the access policy needs authenticated callers but no authenticator is configured")]
    NoAuthenticator,
}

struct Inner {
    authenticators: Vec<Arc<dyn Authenticator>>,
    access: AccessPolicy,
    challenges: Vec<String>,
    explain: bool,
}

/// Authenticates and authorizes requests; framework-free. The tower and
/// actix-web adapters both call [`Guard::check`], so they answer identically.
///
/// Cloning is an `Arc` clone.
///
/// ```
/// use palisade_core::{Check, Decision, Guard, OwnedRequest};
/// use palisade_core::authz::AccessPolicy;
/// let guard = Guard::builder().access_policy(AccessPolicy::allow_all()).build()?;
/// let Check::Ready(Decision::Allow(allowed)) = guard.check(&OwnedRequest::get("/")) else { panic!() };
/// assert!(allowed.identity.is_none());
/// # Ok::<(), palisade_core::GuardError>(())
/// ```
#[derive(Clone)]
pub struct Guard(Arc<Inner>);

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("authenticators", &self.0.authenticators.len())
            .field("challenges", &self.0.challenges)
            .field("access", &self.0.access)
            .finish()
    }
}

/// Builds a [`Guard`]. Secure by default: unless told otherwise, every request
/// needs an authenticated caller.
#[must_use]
#[derive(Default)]
pub struct GuardBuilder {
    authenticators: Vec<Arc<dyn Authenticator>>,
    access: Option<AccessPolicy>,
    explain: bool,
}

impl fmt::Debug for GuardBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardBuilder")
            .field("authenticators", &self.authenticators.len())
            .field("access", &self.access)
            .finish()
    }
}

impl GuardBuilder {
    /// Adds an authenticator; a request may carry any one kind of credential.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticators.push(Arc::new(authenticator));
        self
    }

    /// Adds a shared authenticator.
    pub fn shared_authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.authenticators.push(authenticator);
        self
    }

    /// Sets the access policy (default: [`AccessPolicy::require_authenticated`]).
    pub fn access_policy(mut self, policy: AccessPolicy) -> Self {
        self.access = Some(policy);
        self
    }

    /// Lets requests without credentials through (Istio's
    /// `RequestAuthentication` alone). Invalid credentials are still refused;
    /// handlers see `Option<Identity>`.
    pub fn allow_unauthenticated(self) -> Self {
        tracing::warn!(target: LOG_TARGET, "requests without credentials are allowed (allow_unauthenticated)");
        self.access_policy(AccessPolicy::allow_all())
    }

    /// Debug switch: every response says which policy and rule decided in
    /// an `x-palisade-authz` header. Never for production (it tells callers
    /// how the policy is built); also set by `explainHeader` in a policy
    /// file's `AuthorizationSettings`.
    pub fn explain_decisions_in_header(mut self) -> Self {
        tracing::warn!(target: LOG_TARGET, "authorization decisions are explained in an x-palisade-authz response header: a debug switch, not for production");
        self.explain = true;
        self
    }

    /// Builds the guard.
    ///
    /// # Errors
    /// [`GuardError::NoAuthenticator`] when no authenticator and no access
    /// policy were given: the default policy would refuse every request.
    pub fn build(self) -> Result<Guard, GuardError> {
        if self.authenticators.is_empty() && self.access.is_none() {
            return Err(GuardError::NoAuthenticator);
        }
        let access = self.access.unwrap_or_else(AccessPolicy::require_authenticated);
        let challenges = self.authenticators.iter().filter_map(|a| a.challenge()).collect();
        let explain = self.explain || access.settings().explain_header;
        Ok(Guard(Arc::new(Inner {
            authenticators: self.authenticators,
            access,
            challenges,
            explain,
        })))
    }
}

#[derive(Default)]
struct Acc {
    identity: Option<Identity>,
    edits: Vec<HeaderEdit>,
    response_headers: Vec<(String, String)>,
    attachments: Attachments,
    rejection: Option<Rejection>,
}

impl Acc {
    fn add(&mut self, outcome: AuthOutcome) {
        match outcome {
            AuthOutcome::Authenticated(Authenticated {
                identity,
                mut edits,
                mut response_headers,
                mut attachments,
            }) => {
                self.attachments.append(&mut attachments);
                self.identity = Some(match self.identity.take() {
                    Some(prev) => prev.merge(&identity),
                    None => identity,
                });
                self.edits.append(&mut edits);
                self.response_headers.append(&mut response_headers);
            }
            AuthOutcome::NoCredential => {}
            AuthOutcome::Rejected(r) => {
                if self.rejection.is_none() {
                    self.rejection = Some(r);
                }
            }
        }
    }
}

impl Guard {
    /// Starts building a guard.
    pub fn builder() -> GuardBuilder {
        GuardBuilder::default()
    }

    /// Every `WWW-Authenticate` challenge of the configured authenticators.
    #[must_use]
    pub fn challenges(&self) -> &[String] {
        &self.0.challenges
    }

    /// The rejection for a request that needs a credential and has none.
    #[must_use]
    pub fn missing_credential(&self) -> Rejection {
        Rejection::missing_credential(self.0.challenges.clone())
    }

    /// The access policy.
    #[must_use]
    pub fn access_policy(&self) -> &AccessPolicy {
        &self.0.access
    }

    /// The value of the `x-palisade-authz` debug header for a decision, when
    /// that switch is on.
    #[must_use]
    pub fn explanation(&self, access: &AccessDecision) -> Option<String> {
        self.0.explain.then(|| access.to_string())
    }

    /// Checks a request. Cached credentials and requests without any are
    /// decided synchronously; the rest (a JWKS fetch, a `CUSTOM` policy's
    /// authorizer) return a future.
    pub fn check(&self, req: &dyn RequestHead) -> Check {
        let access = &self.0.access;
        let path = if access.reads_path() {
            match access.normalize_path(req.path()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(target: LOG_TARGET, method = req.method(), reason = %e, "malformed path refused");
                    return Check::Ready(Decision::Deny(Rejection::malformed_path(e.to_string())));
                }
            }
        } else {
            Cow::Borrowed(req.path())
        };
        // The mTLS peer, verified at the handshake, comes with the connection.
        let mut acc = Acc {
            identity: req.connection().and_then(|c| c.peer.clone()),
            ..Acc::default()
        };
        let mut pending = Vec::new();
        for a in &self.0.authenticators {
            match a.authenticate(req) {
                Authenticating::Ready(outcome) => acc.add(outcome),
                Authenticating::Pending(fut) => pending.push(fut),
            }
        }
        let rewrite = matches!(path, Cow::Owned(_));
        if pending.is_empty() {
            return self.decide(acc, req, &path, rewrite);
        }
        let snapshot = OwnedRequest::snapshot(req, access.headers_read()).with_path(&path);
        let guard = self.clone();
        Check::Pending(Box::pin(async move {
            for fut in pending {
                acc.add(fut.await);
            }
            match guard.decide(acc, &snapshot, snapshot.path(), rewrite) {
                Check::Ready(d) => d,
                Check::Pending(f) => f.await,
            }
        }))
    }

    /// Authorizes; `rewrite` says the normalised `path` differs from the request's.
    fn decide(&self, acc: Acc, req: &dyn RequestHead, path: &str, rewrite: bool) -> Check {
        if let Some(rejection) = acc.rejection {
            tracing::debug!(target: LOG_TARGET, method = req.method(), path = req.path(), status = rejection.status(), reason = rejection.detail(), "credential refused");
            return Check::Ready(Decision::Deny(rejection));
        }
        let rewrite = rewrite.then(|| path.to_owned());
        match self.0.access.check_normalized(req, acc.identity.as_ref(), path) {
            AccessCheck::Ready(access) => Check::Ready(self.finish(acc, access, rewrite, req.method(), path)),
            AccessCheck::Pending(fut) => {
                let guard = self.clone();
                let method = req.method().to_owned();
                let path = path.to_string();
                Check::Pending(Box::pin(async move {
                    let access = fut.await;
                    guard.finish(acc, access, rewrite, &method, &path)
                }))
            }
        }
    }

    fn finish(
        &self,
        acc: Acc,
        access: AccessDecision,
        path: Option<String>,
        method: &str,
        p: &str,
    ) -> Decision {
        let span = tracing::debug_span!(target: LOG_TARGET, "authorize", method, path = p, decision = tracing::field::Empty);
        let _entered = span.enter();
        if access.is_allowed() {
            span.record("decision", tracing::field::display(&access));
            tracing::trace!(target: LOG_TARGET, %access, "allowed");
            return Decision::Allow(Allowed {
                identity: acc.identity,
                edits: acc.edits,
                access,
                path,
                response_headers: acc.response_headers,
                attachments: acc.attachments,
            });
        }
        span.record("decision", tracing::field::display(&access));
        tracing::debug!(target: LOG_TARGET, authenticated = acc.identity.is_some(), %access, "denied");
        let rejection = refusal(acc.identity.as_ref(), &access, || self.missing_credential());
        Decision::Deny(rejection.with_access(access))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::identity::{TokenClaims, Verification};

    struct Fixed(Option<&'static str>, bool);

    impl Authenticator for Fixed {
        fn challenge(&self) -> Option<String> {
            Some("Bearer realm=\"t\"".into())
        }
        fn authenticate(&self, req: &dyn RequestHead) -> Authenticating {
            let outcome = match req.header_str("authorization") {
                None => AuthOutcome::NoCredential,
                Some("Bearer good") => {
                    let t = TokenClaims {
                        issuer: "i".into(),
                        subject: self.0.unwrap_or("s").into(),
                        ..TokenClaims::default()
                    };
                    AuthOutcome::Authenticated(Authenticated::new(Identity::from_token(
                        t,
                        Verification::assertion(),
                    )))
                }
                Some(_) => AuthOutcome::Rejected(Rejection::invalid_token("t", "bad")),
            };
            if self.1 {
                Authenticating::Pending(Box::pin(async move { outcome }))
            } else {
                Authenticating::Ready(outcome)
            }
        }
    }

    fn ready(check: Check) -> Decision {
        match check {
            Check::Ready(d) => d,
            Check::Pending(_) => panic!("expected a ready decision"),
        }
    }

    #[test]
    fn default_requires_an_authenticated_caller() {
        let g = Guard::builder()
            .authenticator(Fixed(None, false))
            .build()
            .unwrap();
        let Decision::Deny(r) = ready(g.check(&OwnedRequest::get("/"))) else {
            panic!()
        };
        assert_eq!(r.kind(), ErrorKind::MissingCredential);
        assert_eq!(r.challenges(), ["Bearer realm=\"t\""]);
        assert!(matches!(
            ready(g.check(&OwnedRequest::get("/").header("authorization", "Bearer good"))),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn invalid_credential_is_refused_even_when_anonymous_is_allowed() {
        let g = Guard::builder()
            .authenticator(Fixed(None, false))
            .allow_unauthenticated()
            .build()
            .unwrap();
        assert!(matches!(
            ready(g.check(&OwnedRequest::get("/"))),
            Decision::Allow(_)
        ));
        let Decision::Deny(r) = ready(g.check(&OwnedRequest::get("/").header("authorization", "Bearer bad")))
        else {
            panic!()
        };
        assert_eq!(r.kind(), ErrorKind::InvalidToken);
    }

    #[test]
    fn no_authenticator_with_required_auth_fails_to_build() {
        assert_eq!(Guard::builder().build().unwrap_err(), GuardError::NoAuthenticator);
    }

    #[tokio::test]
    async fn pending_authentication_is_decided_after_the_future() {
        let g = Guard::builder()
            .authenticator(Fixed(Some("late"), true))
            .build()
            .unwrap();
        let Check::Pending(fut) = g.check(&OwnedRequest::get("/").header("authorization", "Bearer good"))
        else {
            panic!("expected pending")
        };
        let Decision::Allow(a) = fut.await else { panic!() };
        assert_eq!(a.identity.unwrap().subject(), Some("late"));
    }
}
