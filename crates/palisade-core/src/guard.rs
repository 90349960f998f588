//! The pipeline every adapter runs: authenticate, then authorize.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::adapter::{Admission, Decision, EXPLAIN_HEADER, Rare, Rendering, Reply, ResponseEdits};
use crate::authn::{Attachments, AuthOutcome, Authenticated, Authenticator, HeaderEdit, HeaderEdits};
use crate::authz::{AccessDecision, AccessPolicy, Action, ExternalAuthorizers};
use crate::check::Check;
use crate::error::Rejection;
use crate::identity::Identity;
use crate::metrics::GuardMetrics;
use crate::policy::{PolicyError, WorkloadPolicy};
use crate::request::{ConnectionInfo, OwnedRequest, RequestHead};
use crate::striped::{Share, Shares};
use crate::syntax::origin_key;

/// Log target of every decision.
pub const LOG_TARGET: &str = "palisade";

/// Why a handler's need for an identity is a 403 where no authenticator
/// offers a challenge.
const NO_AUTHENTICATOR: &str =
    "this resource needs an authenticated caller, and none of the authenticators here could give one";

/// The mark, in a request's record, of a credential the browser sent by
/// itself that the guard set aside, another origin having started the
/// request ([`RequestAuth::refused`]).
struct SetAside;

/// The headers an interactive authenticator reads to tell a browser's
/// navigation from an API call.
pub(crate) const SIGN_IN_HEADERS: &[&str] = &[
    "accept",
    "sec-fetch-mode",
    "sec-fetch-dest",
    "sec-purpose",
    "x-requested-with",
    "cookie",
    // Whether another origin started the request (a cookie's authority).
    "sec-fetch-site",
    "origin",
    "referer",
];

/// What Palisade established for an allowed request. The adapters put it in
/// the request's extensions (one extension, so the hot path allocates once);
/// the extractors read it.
///
/// ```
/// use palisade_core::adapter::Decision;
/// use palisade_core::authn::OwnedRequest;
/// use palisade_core::authz::AccessPolicy;
/// use palisade_core::{Check, Guard};
/// let guard = Guard::builder().access_policy(AccessPolicy::allow_all()).build()?;
/// let Check::Ready(Decision::Allow(admission)) = guard.check(&OwnedRequest::get("/")) else { panic!() };
/// let auth = admission.auth();
/// assert!(auth.identity().is_none());
/// // No authenticator here offers a challenge: no credential would help.
/// assert_eq!(auth.missing_credential().status(), 403);
/// # Ok::<(), palisade_core::GuardError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RequestAuth {
    identity: Option<Identity>,
    access: AccessDecision,
    /// The configuration that decided, kept for the request's life: a
    /// reload does not change how a request in flight is answered. Through
    /// the thread's share, so keeping it writes no count other threads do.
    compiled: Arc<Share<Compiled>>,
    attachments: Attachments,
}

impl RequestAuth {
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

    /// The refusal for a handler that needs an identity the request lacks:
    /// 401 with the guard's challenges, or 403 where no authenticator
    /// offers one (a 401 names how to authenticate, RFC 9110 §11.6.1), or
    /// a 403 `cross-origin` where the guard set aside a cookie or Kerberos ticket
    /// of a write another origin started.
    #[must_use]
    pub fn missing_credential(&self) -> Rejection {
        self.refused(self.compiled.missing_credential())
            .or_outright(NO_AUTHENTICATOR)
    }

    /// `rejection`, for this request: a refusal for want of a credential
    /// says that another origin started the request, where the guard set
    /// aside a credential the browser sent by itself ([`Rejection::cross_origin`]).
    pub(crate) fn refused(&self, rejection: Rejection) -> Rejection {
        if self.attachments.get::<SetAside>().is_some() {
            rejection.cross_origin()
        } else {
            rejection
        }
    }

    /// Checks a requirement in the handler, where it depends on what the
    /// handler reads first (Spring Security's `@PreAuthorize` on a service
    /// method with its arguments, or an `AccessDeniedException` thrown by
    /// hand): the identity when it meets `requirement`; else the refusal to
    /// answer with, as the `Authorized<R>` extractor answers: 401 with the
    /// guard's challenges for an anonymous caller
    /// ([`missing_credential`](Self::missing_credential), which also says
    /// when it is a 403), 403 for one
    /// short of the requirement. The refusal renders in both frameworks
    /// (`?` in a handler returning `Result<_, Rejection>`).
    ///
    /// ```
    /// use palisade_core::adapter::Decision;
    /// use palisade_core::authn::OwnedRequest;
    /// use palisade_core::authz::{AccessPolicy, realm_role};
    /// use palisade_core::{Check, Guard};
    /// let guard = Guard::builder().access_policy(AccessPolicy::allow_all()).build()?;
    /// let Check::Ready(Decision::Allow(admission)) = guard.check(&OwnedRequest::get("/")) else { panic!() };
    /// let refused = admission.auth().require(&realm_role("admin")).unwrap_err();
    /// assert_eq!(refused.status(), 403, "no authenticator here offers a challenge");
    /// # Ok::<(), palisade_core::GuardError>(())
    /// ```
    ///
    /// # Errors
    /// The [`Rejection`] for a caller without an identity or short of
    /// `requirement`.
    pub fn require(&self, requirement: &crate::authz::Requirement) -> Result<&Identity, Rejection> {
        let identity = self.identity().ok_or_else(|| self.missing_credential())?;
        if requirement.is_met_by(identity) {
            Ok(identity)
        } else {
            tracing::debug!(target: LOG_TARGET, %requirement, "identity does not meet the handler's requirement");
            Err(Rejection::forbidden(SHORT_OF_REQUIREMENT))
        }
    }

    /// The configuration that checked this request.
    pub(crate) fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// A watch on a route policy's check that waits: counted as cancelled
    /// if dropped before [`Waiting::decided`].
    pub(crate) fn waiting(&self) -> Waiting {
        Waiting::new(Arc::clone(&self.compiled), None)
    }
}

/// The description of a refusal for a caller short of a handler's
/// requirement.
pub(crate) const SHORT_OF_REQUIREMENT: &str = "the caller lacks a role or scope this resource needs";

/// Configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuardError {
    /// The policy needs authenticated callers but no authenticator is configured.
    #[error("the access policy needs authenticated callers but no authenticator is configured")]
    NoAuthenticator,
    /// A trusted origin ([`GuardBuilder::trusted_origin`]) that is not
    /// `scheme://host[:port]`.
    #[error("`{0}` is not an origin (scheme://host[:port])")]
    NotAnOrigin(String),
}

/// One configuration of a guard, compiled: what a request is checked
/// against from start to end, whatever reloads happen meanwhile. A guard
/// holds it in shares, one per stripe of threads: the `RequestAuth` of each
/// request keeps its thread's share.
pub(crate) struct Compiled {
    authenticators: Vec<Arc<dyn Authenticator>>,
    access: AccessPolicy,
    /// What a pending check copies from the request: the headers the
    /// policy reads and those a sign-in redirect looks at.
    snapshot_headers: Vec<String>,
    challenges: Vec<String>,
    explain: bool,
    metrics: GuardMetrics,
    /// The removal of every authenticator's reserved headers
    /// ([`Authenticator::reserved_headers`]): the first edits of every
    /// request; none for most configurations.
    reserved: HeaderEdits,
    /// Origins whose requests of any method a cookie authenticates
    /// ([`GuardBuilder::trusted_origin`]).
    trusted_origins: Box<[String]>,
}

/// A request whose reserved headers are as the handler will see them: a
/// client's own values gone, an authenticator's in their place. Other
/// headers are the request's own (the policy reads `authorization` even
/// where the token's header is removed before the handler).
struct Edited<'a> {
    inner: &'a dyn RequestHead,
    reserved: &'a HeaderEdits,
    edits: HeaderEdits,
    /// `x-forwarded-client-cert` is edited too ([`client_cert_details`]).
    client_cert: bool,
}

impl Edited<'_> {
    /// What the edits leave of the reserved header `name`: `None` when it
    /// is not reserved, `Some(None)` when it is removed, `Some(Some(v))`
    /// when it is set.
    fn edited(&self, name: &str) -> Option<Option<&[u8]>> {
        let client_cert = self.client_cert && name.eq_ignore_ascii_case(CLIENT_CERT_HEADER);
        if !(client_cert || self.reserved.touches(name)) {
            return None;
        }
        // Removed for every request, unless an authenticator sets it.
        let mut out = Some(None);
        for e in self.edits.as_slice() {
            match e {
                HeaderEdit::Remove(n) if n.eq_ignore_ascii_case(name) => out = Some(None),
                HeaderEdit::Set(n, v) if n.eq_ignore_ascii_case(name) => out = Some(Some(v.as_bytes())),
                _ => {}
            }
        }
        out
    }
}

impl RequestHead for Edited<'_> {
    fn method(&self) -> &str {
        self.inner.method()
    }
    fn path(&self) -> &str {
        self.inner.path()
    }
    fn query(&self) -> Option<&str> {
        self.inner.query()
    }
    fn host(&self) -> Option<&str> {
        self.inner.host()
    }
    fn authority(&self) -> Option<&str> {
        self.inner.authority()
    }
    fn header_value(&self, name: &str, index: usize) -> Option<&[u8]> {
        match self.edited(name) {
            None => self.inner.header_value(name, index),
            Some(v) => v.filter(|_| index == 0),
        }
    }
    fn connection(&self) -> Option<&ConnectionInfo> {
        self.inner.connection()
    }
    fn for_each_header<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        match self.edited(name) {
            None => self.inner.for_each_header(name, f),
            Some(v) => v.into_iter().for_each(f),
        }
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Envoy's header of the client certificate's details.
const CLIENT_CERT_HEADER: &str = "x-forwarded-client-cert";

/// The `x-forwarded-client-cert` of a request from the verified peer
/// `peer` on a TLS connection: Envoy's details of it as Istio's sidecar
/// hands them on (`Hash`, the certificate's SHA-256; `URI`, its SPIFFE ID;
/// `DNS`, each name). Not the server's own identity (Envoy's `By`), not
/// known here, nor the subject, whose text here is not Envoy's (RFC 4514).
fn client_cert_details(peer: &crate::identity::PeerIdentity) -> HeaderEdit {
    let mut details = format!("Hash={}", peer.fingerprint_sha256);
    let uri = peer.spiffe_id.iter().map(|uri| ("URI", uri));
    for (key, value) in uri.chain(peer.dns_names.iter().map(|dns| ("DNS", dns))) {
        // A value cannot end its pair or the element: no `;`, `,` or space.
        let value = crate::syntax::quote_safe(value).replace([';', ',', ' '], "");
        details.push_str(&format!(";{key}={value}"));
    }
    HeaderEdit::Set(CLIENT_CERT_HEADER.into(), details)
}

/// The removal of the reserved headers of `authenticators`, each once.
fn reserved_removals(authenticators: &[Arc<dyn Authenticator>]) -> HeaderEdits {
    let mut names: Vec<&String> = authenticators.iter().flat_map(|a| a.reserved_headers()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| HeaderEdit::Remove(n.clone()))
        .collect::<Vec<_>>()
        .into()
}

/// Authenticates and authorizes requests; framework-free. The tower and
/// actix-web adapters both call [`Guard::check`], so they answer identically.
///
/// Cloning is an `Arc` clone; every clone sees a [`Guard::replace`]
/// (hot reload), so the adapters need not be rebuilt.
///
/// ```
/// use palisade_core::adapter::Decision;
/// use palisade_core::authn::OwnedRequest;
/// use palisade_core::authz::AccessPolicy;
/// use palisade_core::{Check, Guard};
/// let guard = Guard::builder().access_policy(AccessPolicy::allow_all()).build()?;
/// let Check::Ready(Decision::Allow(admission)) = guard.check(&OwnedRequest::get("/")) else { panic!() };
/// assert!(admission.auth().identity().is_none());
/// # Ok::<(), palisade_core::GuardError>(())
/// ```
#[derive(Clone)]
pub struct Guard(Arc<ArcSwap<Shares<Compiled>>>);

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.load().value(), f)
    }
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("authenticators", &self.authenticators.len())
            .field("challenges", &self.challenges)
            .field("access", &self.access)
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
    /// The access policy is a policy file's ([`access_policy_from`](Self::access_policy_from)).
    access_from_file: bool,
    /// The file's `ALLOW` policies for other workloads than this one.
    allow_elsewhere: Vec<String>,
    /// The policy is [`allow_unauthenticated`](Self::allow_unauthenticated)'s,
    /// which said so.
    open_on_purpose: bool,
    explain: bool,
    trusted_origins: Vec<String>,
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

    /// Adds the authenticator `A` as the workload's policy documents
    /// configure it, or nothing when they do not configure one: the one
    /// step from a policy file to each part of a guard.
    ///
    /// ```
    /// use palisade_core::authn::{AuthOutcome, Authenticator, RequestHead};
    /// use palisade_core::policy::{FromPolicy, PolicyError, PolicySet, Workload, WorkloadPolicy};
    /// use palisade_core::{Check, Guard};
    /// struct Nobody;
    /// impl Authenticator for Nobody {
    ///     fn challenge(&self) -> Option<String> { None }
    ///     fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
    ///         Check::Ready(AuthOutcome::NoCredential)
    ///     }
    /// }
    /// impl FromPolicy for Nobody {
    ///     fn from_policy(_: &WorkloadPolicy<'_>) -> Result<Option<Self>, PolicyError> { Ok(Some(Nobody)) }
    /// }
    /// let set = PolicySet::from_yaml_str("", "empty.yaml")?;
    /// let policy = set.for_workload(&Workload::new("details", "default"));
    /// let guard = Guard::builder()
    ///     .access_policy_from(&policy, &Default::default())?
    ///     .authenticator_from::<Nobody>(&policy)?
    ///     .build()
    ///     .map_err(|e| PolicyError::new("empty.yaml", e.to_string()))?;
    /// # let _ = guard;
    /// # Ok::<(), PolicyError>(())
    /// ```
    ///
    /// # Errors
    /// The [`PolicyError`] of [`FromPolicy::from_policy`](crate::policy::FromPolicy::from_policy).
    pub fn authenticator_from<A: Authenticator + crate::policy::FromPolicy>(
        self,
        policy: &WorkloadPolicy<'_>,
    ) -> Result<Self, PolicyError> {
        Ok(match A::from_policy(policy)? {
            Some(a) => self.authenticator(a),
            None => self,
        })
    }

    /// Sets the access policy the workload's documents describe
    /// (`AuthorizationPolicy`, the RBAC kinds, `AuthorizationSettings`),
    /// with the external authorizers `CUSTOM` policies name.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the document and field of anything that
    /// cannot be enforced exactly as written.
    pub fn access_policy_from(
        self,
        policy: &WorkloadPolicy<'_>,
        authorizers: &ExternalAuthorizers,
    ) -> Result<Self, PolicyError> {
        let mut builder = self.access_policy(AccessPolicy::compile_with(policy, authorizers)?);
        builder.access_from_file = true;
        builder.allow_elsewhere = policy.allow_policies_elsewhere();
        Ok(builder)
    }

    /// Adds a shared authenticator.
    pub fn shared_authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.authenticators.push(authenticator);
        self
    }

    /// Sets the access policy (default: [`AccessPolicy::require_authenticated`]).
    pub fn access_policy(mut self, policy: AccessPolicy) -> Self {
        self.access = Some(policy);
        self.access_from_file = false;
        self.allow_elsewhere = Vec::new();
        self.open_on_purpose = false;
        self
    }

    /// Lets requests without credentials through (Istio's
    /// `RequestAuthentication` alone). Invalid credentials are still refused;
    /// handlers see `Option<Identity>`. It sets the access policy (to
    /// [`AccessPolicy::allow_all`]): one set before it is replaced, one set
    /// after it replaces it.
    pub fn allow_unauthenticated(self) -> Self {
        crate::config_warning!(target: LOG_TARGET, "requests without credentials are allowed (allow_unauthenticated)");
        let mut open = self.access_policy(AccessPolicy::allow_all());
        open.open_on_purpose = true;
        open
    }

    /// Debug switch: every response says which policy and rule decided in
    /// an `x-palisade-authz` header. Never for production (it tells callers
    /// how the policy is built); also set by `explainHeader` in a policy
    /// file's `AuthorizationSettings`.
    pub fn explain_decisions_in_header(mut self) -> Self {
        crate::config_warning!(target: LOG_TARGET, "authorization decisions are explained in an x-palisade-authz response header: a debug switch, not for production");
        self.explain = true;
        self
    }

    /// Lets requests that `origin` (`https://app.shop.example`) starts
    /// use this service's cookies whatever their method: a relaxation, for
    /// a site of your own on another origin that calls this service with
    /// the browser's credentials (`fetch(…, {credentials: "include"})`).
    ///
    /// By default a cookie (a sign-in session, a Negotiate session, a JWT
    /// read from a cookie) authenticates a request other than `GET`,
    /// `HEAD` and `OPTIONS` only when the browser says this origin started
    /// it ([`started_elsewhere`](crate::authn::started_elsewhere), as Go's
    /// `CrossOriginProtection` reads `Sec-Fetch-Site` and `Origin`).
    /// `SameSite=Lax` keeps other sites' forms from sending the cookie, but
    /// a sibling subdomain counts as the same site; a request another origin
    /// started is decided as though it carried no cookie, and refused with
    /// 403 (problem type `urn:palisade:problem:cross-origin`) where a user
    /// is needed. Also set by
    /// `trustedOrigins` in a policy file's `AuthorizationSettings`.
    pub fn trusted_origin(mut self, origin: impl Into<String>) -> Self {
        let origin = origin.into();
        crate::config_warning!(target: LOG_TARGET, "{} (trusted origin)", trusted_origin_warning(&origin));
        self.trusted_origins.push(origin);
        self
    }

    /// Builds the guard.
    ///
    /// # Errors
    /// [`GuardError::NoAuthenticator`] when no authenticator and no access
    /// policy were given: the default policy would refuse every request;
    /// [`GuardError::NotAnOrigin`] for a [trusted origin](Self::trusted_origin)
    /// that is not `scheme://host[:port]`.
    pub fn build(self) -> Result<Guard, GuardError> {
        if self.authenticators.is_empty() && self.access.is_none() {
            return Err(GuardError::NoAuthenticator);
        }
        if let Some(bad) = self.trusted_origins.iter().find(|o| !crate::syntax::is_origin(o)) {
            return Err(GuardError::NotAnOrigin(crate::syntax::url_without_credentials(
                bad,
            )));
        }
        let access = self.access.unwrap_or_else(AccessPolicy::require_authenticated);
        // Said as `allow_unauthenticated` says it in code: a Keycloak
        // adapter's or a sign-in's user would expect a 401 or a redirect.
        // Without authenticators, said only when the file's ALLOW policies
        // are for other workloads (a misspelt name leaves the workload's
        // authentication behind too); with them, always.
        if self.access_from_file
            && access.requires_nothing()
            && (!self.authenticators.is_empty() || !self.allow_elsewhere.is_empty())
        {
            // A workload name or selector spelt otherwise than the file's
            // leaves the service open as surely as a missing policy.
            const NAMED: usize = 5;
            let elsewhere = match &self.allow_elsewhere[..] {
                [] => String::new(),
                names => format!(
                    "; the file's ALLOW policies apply to other workloads ({}{}): is this workload's name, namespace or a selector spelt otherwise than the file's? (If it is meant to be open, an ALLOW policy for it with `rules: [{{}}]` says so.)",
                    names[..names.len().min(NAMED)].join(", "),
                    if names.len() > NAMED {
                        format!(" and {} more", names.len() - NAMED)
                    } else {
                        String::new()
                    }
                ),
            };
            crate::config_warning!(target: LOG_TARGET, "requests without credentials are allowed: no AuthorizationPolicy ALLOW (or RBAC) of the policy file applies to this workload, so nothing requires a credential (as with Istio's RequestAuthentication alone); to require a user, add an AuthorizationPolicy with `from: [{{source: {{requestPrincipals: [\"*\"]}}}}]`{elsewhere}");
        } else if !self.access_from_file
            && access.in_code()
            && !self.open_on_purpose
            && !self.authenticators.is_empty()
            && access.requires_nothing()
        {
            // A policy built in code of DENY (or AUDIT) rules only: every
            // other request is allowed, as in Istio, which a Spring
            // Security user (whose `authorizeHttpRequests` ends in
            // `authenticated()`) would not expect.
            crate::config_warning!(target: LOG_TARGET, "requests without credentials are allowed: the access policy given in code has no ALLOW rule, so whatever no DENY refuses is allowed with or without a credential (as in Istio); to require a user, add `.allow(\"users\", [Rule::new().request_principals([\"*\"])])`, or call `allow_unauthenticated()` to say the service is open");
        }
        let mut challenges: Vec<String> = self.authenticators.iter().filter_map(|a| a.challenge()).collect();
        if challenges.is_empty() {
            challenges = self
                .authenticators
                .iter()
                .filter_map(|a| a.fallback_challenge())
                .collect();
        }
        let settings = access.settings();
        let explain = self.explain || settings.explain_header;
        // Trusted: those set in code and in the file, and the origins the
        // authenticators know the service by (a sign-in's external origin).
        let mut trusted_origins: Vec<String> = self
            .trusted_origins
            .iter()
            .chain(&settings.trusted_origins)
            .map(|o| origin_key(o))
            .chain(
                self.authenticators
                    .iter()
                    .filter_map(|a| a.own_origin())
                    .map(origin_key),
            )
            .collect();
        trusted_origins.sort_unstable();
        trusted_origins.dedup();
        let trusted_origins = trusted_origins.into_boxed_slice();
        let mut snapshot_headers = access.headers_read().to_vec();
        for h in SIGN_IN_HEADERS {
            if !snapshot_headers.iter().any(|n| n == h) {
                snapshot_headers.push((*h).to_owned());
            }
        }
        Ok(Guard(Arc::new(ArcSwap::from_pointee(Shares::new(Compiled {
            metrics: GuardMetrics::new(&self.authenticators, &access),
            reserved: reserved_removals(&self.authenticators),
            authenticators: self.authenticators,
            access,
            snapshot_headers,
            challenges,
            explain,
            trusted_origins,
        })))))
    }
}

#[derive(Default)]
pub(crate) struct Acc {
    identity: Option<Identity>,
    edits: HeaderEdits,
    response_headers: Vec<(Cow<'static, str>, String)>,
    attachments: Attachments,
    /// Boxed, so that `Acc` moves with a few stores (see the size test in
    /// `adapter`): a refusal is the rare path.
    rejection: Option<Box<Rejection>>,
    respond: Option<Reply>,
    /// Cookie-borne authentications ([`Authenticated::ambient`]) with their
    /// authenticator's place, taken in once every authenticator has
    /// answered ([`settle`](Self::settle)).
    ambient: Vec<(usize, Authenticated)>,
    /// The identity's request principal came with a credential the request
    /// carries itself (a header), not with a cookie.
    explicit: bool,
    /// Another origin started the request, which may change state: the
    /// credentials a browser sends unasked ([`Authenticated::sent_unasked`])
    /// do not authenticate it ([`Compiled::unasked_refused`]).
    refuse_unasked: bool,
    /// Such a credential was set aside ([`left_aside`](Self::left_aside)):
    /// a refusal for want of a credential says why ([`Rejection::cross_origin`]).
    set_aside: bool,
}

impl Acc {
    /// Adds the outcome of the authenticator at place `at` (in the
    /// configuration's order).
    fn add(&mut self, at: usize, outcome: AuthOutcome) {
        match outcome {
            AuthOutcome::Authenticated(a) if self.refuse_unasked && a.sent_unasked() => self.left_aside(a),
            AuthOutcome::Authenticated(a) if a.ambient => self.ambient.push((at, a)),
            AuthOutcome::Authenticated(a) => {
                // Two end users (a bearer token and a Kerberos ticket of
                // different people): neither is the caller, and their facts
                // must not add up to what neither has.
                if self.explicit && self.other_user(&a.identity) {
                    if self.rejection.is_none() {
                        self.rejection = Some(Box::new(Rejection::bad_request(
                            "the request carries the credentials of more than one user",
                        )));
                    }
                    return;
                }
                self.explicit |= a.identity.request_principal_str().is_some();
                self.take_in(a);
            }
            AuthOutcome::NoCredential => {}
            AuthOutcome::Respond(reply) => {
                if self.respond.is_none() {
                    self.respond = Some(reply);
                }
            }
            AuthOutcome::Rejected(r) => {
                if self.rejection.is_none() {
                    self.rejection = Some(Box::new(r));
                }
            }
        }
    }

    /// Whether `identity` names another user than the one accumulated.
    fn other_user(&self, identity: &Identity) -> bool {
        self.identity
            .as_ref()
            .and_then(Identity::request_principal_str)
            .is_some_and(|p| identity.request_principal_str().is_some_and(|q| p != q))
    }

    /// Takes in the cookies' authentications, once every authenticator has
    /// answered, in the configuration's order: each is set aside (all but
    /// its renewal of the cookie) when a credential the request carries
    /// itself, or an earlier cookie, named another user, else combined as
    /// any other. (Cookies of two users, a
    /// Negotiate session's and a sign-in's, say, are never one identity:
    /// the first configured speaks, whichever answered first.)
    fn settle(&mut self) {
        if self.ambient.is_empty() {
            return;
        }
        let mut cookies = std::mem::take(&mut self.ambient);
        cookies.sort_by_key(|(at, _)| *at);
        for (_, a) in cookies {
            if self.other_user(&a.identity) {
                tracing::debug!(
                    target: LOG_TARGET,
                    "a session cookie of another user than the request's credential is left aside"
                );
                // The cookie is still the browser's: its renewal (a spent
                // refresh token replaced) must reach it.
                self.keep_renewals(a.response_headers);
                continue;
            }
            self.take_in(a);
        }
    }

    /// An authentication a browser sent unasked, for a request another
    /// origin started: the request is decided as though it carried none.
    /// Its renewal of the user's own cookie (a refreshed session, whose
    /// refresh token the issuer has spent) still reaches the browser.
    #[cold]
    #[inline(never)]
    fn left_aside(&mut self, a: Authenticated) {
        tracing::debug!(
            target: LOG_TARGET,
            "another origin started this request: a credential the browser sent by itself does not authenticate it"
        );
        self.set_aside = true;
        self.keep_renewals(a.response_headers);
    }

    /// Keeps, of the response headers of an authentication that does not
    /// count, its renewal of the user's cookie ([`renewal`]).
    fn keep_renewals(&mut self, headers: Vec<(String, String)>) {
        self.response_headers.extend(
            headers
                .into_iter()
                .filter_map(|(name, value)| renewal(&name).map(|name| (Cow::Borrowed(name), value))),
        );
    }

    /// Combines an authentication with what has accumulated.
    fn take_in(&mut self, a: Authenticated) {
        let Authenticated {
            identity,
            edits,
            response_headers,
            mut attachments,
            ..
        } = a;
        self.attachments.append(&mut attachments);
        self.identity = Some(match self.identity.take() {
            Some(prev) => prev.merge(&identity),
            None => identity,
        });
        // While none have accumulated, an authenticator's edits are taken
        // as they are (`then` would move both for nothing), and no empty
        // list of headers is extended.
        self.edits = if self.edits.is_empty() {
            edits
        } else {
            std::mem::take(&mut self.edits).then(edits)
        };
        if !response_headers.is_empty() {
            self.response_headers
                .extend(response_headers.into_iter().map(|(n, v)| (Cow::Owned(n), v)));
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
    pub fn challenges(&self) -> Vec<String> {
        self.0.load().value().challenges.clone()
    }

    /// The rejection for a request that needs a credential and has none:
    /// 401 with the challenges, or 403 where no authenticator offers one
    /// (as [`RequestAuth::missing_credential`]).
    #[must_use]
    pub fn missing_credential(&self) -> Rejection {
        self.0
            .load()
            .value()
            .missing_credential()
            .or_outright(NO_AUTHENTICATOR)
    }

    /// What the authenticators in force still wait for before they can
    /// verify the credentials they expect (each issuer's keys not fetched
    /// once yet, or dropped as older than its `max_stale`), for a
    /// readiness probe that keeps traffic away until then, as Envoy's
    /// `jwt_authn` keeps its listener with `async_fetch.fast_listener:
    /// false`. Empty when nothing is awaited. Keys fetched once and failing
    /// since are not waited for: they are kept, and tokens they signed are
    /// verified.
    ///
    /// ```
    /// use palisade_core::Guard;
    /// use palisade_core::authz::AccessPolicy;
    /// let guard = Guard::builder().access_policy(AccessPolicy::allow_all()).build()?;
    /// assert!(guard.waiting_for().is_empty());
    /// # Ok::<(), palisade_core::GuardError>(())
    /// ```
    #[must_use]
    pub fn waiting_for(&self) -> Vec<String> {
        self.0
            .load()
            .value()
            .authenticators
            .iter()
            .filter_map(|a| a.waiting_for())
            .collect()
    }

    /// The guard's authenticator of type `A` as it is now (the first, if
    /// it has several), `None` without one: for what an application asks
    /// of a part besides deciding requests, when the guard was built from
    /// a policy file and the application holds no handle of its own, such
    /// as the JWT authenticator's `verify` for a token that arrives in a
    /// WebSocket message, or in a test sign-in's `session_cookie_for`. A
    /// [`replace`](Self::replace) (a hot reload) may put another in its
    /// place; ask again rather than keep it.
    ///
    /// ```
    /// use palisade_core::authn::{AuthOutcome, Authenticator, RequestHead};
    /// use palisade_core::{Check, Guard};
    /// struct Nobody;
    /// impl Authenticator for Nobody {
    ///     fn challenge(&self) -> Option<String> { None }
    ///     fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
    ///         Check::Ready(AuthOutcome::NoCredential)
    ///     }
    /// }
    /// struct Other;
    /// # impl Authenticator for Other {
    /// #     fn challenge(&self) -> Option<String> { None }
    /// #     fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> { Check::Ready(AuthOutcome::NoCredential) }
    /// # }
    /// let guard = Guard::builder().authenticator(Nobody).build()?;
    /// assert!(guard.authenticator::<Nobody>().is_some());
    /// assert!(guard.authenticator::<Other>().is_none());
    /// # Ok::<(), palisade_core::GuardError>(())
    /// ```
    #[must_use]
    pub fn authenticator<A: Authenticator>(&self) -> Option<Arc<A>> {
        self.0.load().value().authenticators.iter().find_map(|a| {
            (Arc::clone(a) as Arc<dyn std::any::Any + Send + Sync>)
                .downcast::<A>()
                .ok()
        })
    }

    /// The access policy in force.
    #[must_use]
    pub fn access_policy(&self) -> AccessPolicy {
        self.0.load().value().access.clone()
    }

    /// Checks a request. Cached credentials and requests without any are
    /// decided synchronously; the rest (a JWKS fetch, a `CUSTOM` policy's
    /// authorizer) wait. [`Decision::apply`] turns the decision into what
    /// the framework does.
    pub fn check(&self, req: &dyn RequestHead) -> Check<Decision> {
        self.0.load().mine().check(req)
    }

    /// Hot reload: from now on this guard, and every clone of it, checks
    /// requests as `next` does. The swap is atomic; a request already being
    /// checked finishes under the configuration it started with.
    ///
    /// State still valid is carried over: each authenticator of `next` is
    /// offered those of the configuration it replaces
    /// ([`Authenticator::take_over`]), so an unchanged JWT issuer keeps its
    /// keys and verified tokens rather than fetching and verifying again.
    ///
    /// ```
    /// use palisade_core::adapter::Decision;
    /// use palisade_core::authn::OwnedRequest;
    /// use palisade_core::authz::AccessPolicy;
    /// use palisade_core::{Check, Guard};
    /// let guard = Guard::builder().access_policy(AccessPolicy::require_authenticated()).build()?;
    /// let layer_copy = guard.clone();
    /// assert!(matches!(layer_copy.check(&OwnedRequest::get("/")), Check::Ready(Decision::Deny(_))));
    /// guard.replace(Guard::builder().access_policy(AccessPolicy::allow_all()).build()?);
    /// assert!(matches!(layer_copy.check(&OwnedRequest::get("/")), Check::Ready(Decision::Allow(_))));
    /// # Ok::<(), palisade_core::GuardError>(())
    /// ```
    pub fn replace(&self, next: Guard) {
        let next = next.0.load_full();
        let next = next.value();
        // `rcu`: two replacements at once both carry state over correctly.
        self.0.rcu(|previous| {
            let previous = previous.value();
            let authenticators: Vec<Arc<dyn Authenticator>> = next
                .authenticators
                .iter()
                .map(|a| {
                    previous
                        .authenticators
                        .iter()
                        .find_map(|p| a.take_over(p.as_ref()))
                        .unwrap_or_else(|| a.clone())
                })
                .collect();
            Shares::new(Compiled {
                metrics: GuardMetrics::new(&authenticators, &next.access),
                reserved: next.reserved.clone(),
                authenticators,
                access: next.access.clone(),
                snapshot_headers: next.snapshot_headers.clone(),
                challenges: next.challenges.clone(),
                explain: next.explain,
                trusted_origins: next.trusted_origins.clone(),
            })
        });
    }
}

impl Compiled {
    /// Whether the credentials a browser sends unasked (cookies, Negotiate
    /// tickets) may not authenticate a request: a method that may change
    /// state, or a `GET` that opens a connection of another protocol (a
    /// WebSocket, whose socket then carries what the page sends:
    /// cross-site WebSocket hijacking), started by
    /// another origin than this one or the trusted ones
    /// ([`GuardBuilder::trusted_origin`]).
    #[inline]
    fn unasked_refused(&self, req: &dyn RequestHead) -> bool {
        (!matches!(req.method(), "GET" | "HEAD" | "OPTIONS") || asks_upgrade(req))
            && crate::request::started_elsewhere(req, None)
            && !crate::request::origin_among(req, &self.trusted_origins)
    }

    /// The rejection for a request that needs a credential and has none.
    pub(crate) fn missing_credential(&self) -> Rejection {
        Rejection::missing_credential(self.challenges.clone())
    }

    /// The sign-in answer for a request refused for want of a credential:
    /// the first interactive authenticator's (a redirect to sign in, a 503),
    /// else
    /// the refusal itself (a 403 where no authenticator offers a challenge).
    pub(crate) fn sign_in_or(&self, req: &dyn RequestHead, rejection: Rejection) -> Decision {
        if rejection.kind() == crate::error::ErrorKind::MissingCredential
            && let Some(reply) = self.authenticators.iter().find_map(|a| a.sign_in(req))
        {
            tracing::debug!(target: LOG_TARGET, method = req.method(), path = req.path(), "sent to sign in");
            return Decision::Reply(reply);
        }
        // A 401 names how to authenticate (RFC 9110 §11.6.1); where no
        // authenticator offers a scheme (a peer certificate's alone) and
        // none sends this request to sign in, no credential could change
        // the answer: a 403, as Istio answers.
        Decision::Deny(rejection.or_outright("access denied by policy"))
    }

    /// The answer to a request the access policy denied, the same for the
    /// guard and route policies: 401 with the challenges when the caller has
    /// no end-user credential and one could change the decision (the
    /// deciding rules read the request principal or claims); 403 otherwise,
    /// as Istio answers. It carries the decision, explained in a header when
    /// that debug switch is on.
    pub(crate) fn refusal(&self, identity: Option<&Identity>, access: AccessDecision) -> Rejection {
        let anonymous = identity.is_none_or(|i| i.request_principal_str().is_none());
        let rejection = match access.action() {
            Some(Action::Custom) => Rejection::forbidden("access denied by an external authorizer"),
            _ if anonymous && access.end_user_could_help() => self.missing_credential(),
            _ => Rejection::forbidden("access denied by policy"),
        };
        rejection.with_access(access).explained(self.explain)
    }

    /// Reports a decision and the time it took.
    fn count(&self, started: Option<quanta::Instant>, decision: &Decision) {
        self.metrics.finish(started);
        self.tally(decision);
    }

    /// Counts a decision: the guard's, or a route policy's refusal of a
    /// request the guard allowed (a refusal still, whoever made it).
    pub(crate) fn tally(&self, decision: &Decision) {
        match decision {
            Decision::Allow(a) => self.metrics.decided(true, Some(a.auth().access())),
            Decision::Deny(r) => self.metrics.decided(false, r.access()),
            // A refusal rendered (with a cookie's renewal, for gRPC, for
            // HEAD) is counted as the refusal it holds.
            Decision::Reply(r) if let Some(rejection) = r.rejection() => {
                self.metrics.decided(false, rejection.access());
            }
            // A refusal in the authenticator's words (sign-in's 403) is a
            // refusal still.
            Decision::Reply(r) if matches!(r.status(), 401 | 403) => self.metrics.decided(false, None),
            Decision::Reply(_) => self.metrics.replied(),
        }
    }
}

/// A check that waits (for keys, an introspection, an authorizer, a ticket
/// check): dropped undecided, when its request went away first, it is
/// counted as cancelled, and the time it waited is recorded with the
/// others, so an issuer that hangs shows in the histogram even when every
/// client gives up first.
pub(crate) struct Waiting {
    share: Arc<Share<Compiled>>,
    /// When the guard's check began, when timed (`None` too for a route
    /// policy's check, whose time the histogram does not hold).
    started: Option<quanta::Instant>,
    decided: bool,
}

impl Waiting {
    fn new(share: Arc<Share<Compiled>>, started: Option<quanta::Instant>) -> Self {
        Self {
            share,
            started,
            decided: false,
        }
    }

    /// The check was decided: nothing to count on drop.
    pub(crate) fn decided(&mut self) {
        self.decided = true;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.decided {
            self.share.metrics.finish(self.started);
            self.share.metrics.cancelled();
        }
    }
}

/// The pipeline, on a thread's share of a configuration: what it keeps
/// for later (a `RequestAuth`, a future) keeps the share.
///
/// The path of a request allowed at once is kept short in code as well as
/// in instructions: in a server, the kernel and the framework empty the
/// CPU's instruction cache between two requests, so each line of code the
/// check runs is fetched again (`CACHE=1 benches/insitu.sh`). What only
/// refusals, waits, rewrites and debug logging run is in functions of its
/// own, marked cold, out of that path.
impl Share<Compiled> {
    /// [`Guard::check`] against this configuration.
    fn check(self: &Arc<Self>, req: &dyn RequestHead) -> Check<Decision> {
        let started = self.metrics.start();
        let check = self.check_http(req);
        // An allowed request without a path rewrite reads no more headers.
        // Matched by reference: the decision is returned where it was made.
        if let Check::Ready(d @ Decision::Allow(a)) = &check
            && a.rewritten_target().is_none()
        {
            self.count(started, d);
            return check;
        }
        self.rendered(started, check, req)
    }

    /// [`check`](Self::check)'s answer when it is not an admission as it
    /// stands: rendered for the request, now or once it is known.
    #[cold]
    #[inline(never)]
    fn rendered(
        self: &Arc<Self>,
        started: Option<quanta::Instant>,
        check: Check<Decision>,
        req: &dyn RequestHead,
    ) -> Check<Decision> {
        match check {
            Check::Ready(d) => {
                self.count(started, &d);
                Check::Ready(d.for_request(Rendering::of(req)))
            }
            Check::Pending(fut) => {
                let rendering = Rendering::of(req);
                let mut waiting = Waiting::new(self.clone(), started);
                Check::pending(async move {
                    let d = fut.await;
                    waiting.decided();
                    waiting.share.count(waiting.started, &d);
                    d.for_request(rendering)
                })
            }
        }
    }

    /// The refusal of a request whose connection would not be accepted
    /// now ([`ConnectionInfo::peer_recheck`](crate::authn::ConnectionInfo::peer_recheck)):
    /// its mTLS peer no longer trusted (counted as an mTLS failure), or,
    /// made without a certificate, no longer in the mode in force. Out of
    /// line: only requests on connections that carry a check call it.
    #[inline(never)]
    fn peer_refused(&self, req: &dyn RequestHead, connection: &ConnectionInfo) -> Option<Decision> {
        let recheck = connection.peer_recheck.as_deref()?;
        if recheck.still_trusted() {
            return None;
        }
        if connection.peer.is_some() {
            self.metrics.mtls.refused("certificate_no_longer_trusted");
        }
        Some(peer_no_longer_trusted(req, connection.peer.is_some()))
    }

    /// [`Guard::check`] with refusals rendered for HTTP.
    fn check_http(self: &Arc<Self>, req: &dyn RequestHead) -> Check<Decision> {
        let access = &self.access;
        if access.refuses_host(req) {
            return Check::Ready(two_hosts(req));
        }
        let path = match access.path_of(req.path()) {
            Ok(p) => p,
            Err(e) => return Check::Ready(malformed_path(req, &e)),
        };
        // The mTLS peer, verified at the handshake, comes with the
        // connection, and is checked again if the trust material changed
        // or its certificate expired since.
        let connection = req.connection();
        let peer = connection.and_then(|c| c.peer.clone());
        if let Some(c) = connection
            && c.peer_recheck.is_some()
            && let Some(refused) = self.peer_refused(req, c)
        {
            return Check::Ready(refused);
        }
        if peer.is_some() {
            self.metrics.mtls.success.increment(1);
        }
        // Envoy's `x-forwarded-client-cert`, which an application ported
        // from a sidecar reads as the caller's certificate: on a TLS
        // connection set from the verified peer (or removed without one),
        // and removed wherever a client sent it itself.
        // (Looked for as bytes: a value that is not text is a value.)
        let verified = connection.filter(|c| c.tls).and_then(|c| c.peer.as_ref()?.peer());
        let client_cert = match verified {
            Some(peer) => Some(client_cert_details(peer)),
            None if req.header_value(CLIENT_CERT_HEADER, 0).is_some() => {
                Some(HeaderEdit::Remove(CLIENT_CERT_HEADER.into()))
            }
            None => None,
        };
        if let [only] = &self.authenticators[..]
            && peer.is_none()
            && self.reserved.is_empty()
            && client_cert.is_none()
        {
            return self.check_one(only, req, path);
        }
        let edits = match client_cert {
            Some(e) => HeaderEdits::from(vec![e]).then(self.reserved.clone()),
            None => self.reserved.clone(),
        };
        let mut acc = Acc {
            identity: peer,
            edits,
            ..Acc::default()
        };
        // Whether credentials sent unasked are refused: asked (it reads
        // headers) only once one is met, or before waiting.
        let mut unasked = None;
        let mut pending = Vec::new();
        for (i, a) in self.authenticators.iter().enumerate() {
            match a.authenticate(req) {
                Check::Ready(outcome) => {
                    self.metrics.authenticators[i].count(&outcome);
                    if sent_unasked(&outcome) {
                        acc.refuse_unasked = *unasked.get_or_insert_with(|| self.unasked_refused(req));
                    }
                    acc.add(i, outcome);
                }
                Check::Pending(fut) => pending.push((i, fut)),
            }
        }
        let rewrite = rewrite_needed(req, &path);
        if pending.is_empty() {
            return self.decide(&mut acc, req, &path, rewrite);
        }
        acc.refuse_unasked = unasked.unwrap_or_else(|| self.unasked_refused(req));
        self.authenticated_later(acc, pending, req, &path, rewrite)
    }

    /// [`check_http`](Self::check_http) for the common configuration: one
    /// authenticator, no mTLS peer and no reserved header to remove. An
    /// authentication it answers at once, with no response header and no
    /// path rewrite, is decided as it is, without accumulating it in an
    /// [`Acc`]; every other answer goes the general way, as it would have.
    #[inline]
    fn check_one(
        self: &Arc<Self>,
        only: &Arc<dyn Authenticator>,
        req: &dyn RequestHead,
        path: Cow<'_, str>,
    ) -> Check<Decision> {
        let rewrite = rewrite_needed(req, &path);
        let outcome = match only.authenticate(req) {
            Check::Ready(outcome) => outcome,
            Check::Pending(fut) => {
                let acc = Acc {
                    refuse_unasked: self.unasked_refused(req),
                    ..Acc::default()
                };
                return self.authenticated_later(acc, vec![(0, fut)], req, &path, rewrite);
            }
        };
        self.metrics.authenticators[0].count(&outcome);
        match outcome {
            AuthOutcome::Authenticated(a)
                if !rewrite
                    && a.response_headers.is_empty()
                    && !(a.sent_unasked() && self.unasked_refused(req)) =>
            {
                self.decide_authenticated(a, req, &path)
            }
            outcome => {
                let mut acc = Acc {
                    refuse_unasked: sent_unasked(&outcome) && self.unasked_refused(req),
                    ..Acc::default()
                };
                acc.add(0, outcome);
                self.decide(&mut acc, req, &path, rewrite)
            }
        }
    }

    /// [`decide`](Self::decide) for one authentication, with no response
    /// header and no rewrite: an allowed request without the debug switches
    /// is admitted here, anything else [`finish`](Self::finish)ed as the
    /// general path does.
    #[inline]
    fn decide_authenticated(
        self: &Arc<Self>,
        a: Authenticated,
        req: &dyn RequestHead,
        path: &str,
    ) -> Check<Decision> {
        let Authenticated {
            identity,
            edits,
            attachments,
            ..
        } = a;
        match self.access.check_normalized(req, Some(&identity), path) {
            Check::Ready(access)
                if access.is_allowed()
                    && !self.explain
                    && !tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG) =>
            {
                if trace_may_be_wanted() {
                    allowed_event(&access);
                }
                Check::Ready(Decision::Allow(Admission {
                    auth: RequestAuth {
                        identity: Some(identity),
                        access,
                        compiled: self.clone(),
                        attachments,
                    },
                    edits,
                    rare: None,
                }))
            }
            check => {
                let mut acc = Acc {
                    identity: Some(identity),
                    edits,
                    attachments,
                    ..Acc::default()
                };
                match check {
                    Check::Ready(access) => Check::Ready(self.finish(&mut acc, access, None, req, path)),
                    Check::Pending(fut) => self.authorized_later(acc, fut, None, req, path),
                }
            }
        }
    }

    /// [`check_http`](Self::check_http) once authenticators that have to
    /// wait have answered.
    #[cold]
    #[inline(never)]
    fn authenticated_later(
        self: &Arc<Self>,
        mut acc: Acc,
        pending: Vec<(usize, crate::check::BoxFuture<AuthOutcome>)>,
        req: &dyn RequestHead,
        path: &str,
        rewrite: bool,
    ) -> Check<Decision> {
        // The request's own path stays in the snapshot: a rewrite's target
        // is made from it.
        let snapshot = OwnedRequest::snapshot(req, &self.snapshot_headers);
        let path = path.to_owned();
        let guard = self.clone();
        Check::pending(async move {
            for (i, fut) in pending {
                let outcome = fut.await;
                guard.metrics.authenticators[i].count(&outcome);
                acc.add(i, outcome);
            }
            guard.decide(&mut acc, &snapshot, &path, rewrite).await
        })
    }

    /// The normalised target a rewritten request is served at: `path`
    /// as the router reads it (raw bytes kept raw), with the query.
    #[cold]
    #[inline(never)]
    fn target_of(&self, req: &dyn RequestHead, path: &str) -> String {
        let routed = self.access.router_path(req.path());
        debug_assert!(routed.is_some(), "a path normalised once is routed");
        let path = routed.unwrap_or_else(|| path.to_owned());
        match req.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        }
    }

    /// Authorizes; `rewrite` says the normalised `path` differs from the
    /// request's. The accumulated outcome is borrowed and its parts taken,
    /// not moved from one function to the next.
    fn decide(
        self: &Arc<Self>,
        acc: &mut Acc,
        req: &dyn RequestHead,
        path: &str,
        rewrite: bool,
    ) -> Check<Decision> {
        acc.settle();
        if let Some(reply) = acc.respond.take() {
            // An authenticator's own answer (SPNEGO's 503 when busy) keeps
            // another's renewal of its cookie, as a refusal does.
            let renewals = std::mem::take(&mut acc.response_headers);
            return Check::Ready(with_renewals(Decision::Reply(reply), renewals));
        }
        if let Some(rejection) = acc.rejection.take() {
            let renewals = std::mem::take(&mut acc.response_headers);
            return Check::Ready(with_renewals(credential_refused(rejection, req), renewals));
        }
        // Where headers are reserved, the policy (and a CUSTOM authorizer)
        // reads them as the handler will get them: a client's own value
        // gone, a verified one in its place, as Envoy's RBAC reads what
        // `jwt_authn` left. Other headers are the request's own.
        let edited;
        let client_cert = acc.edits.touches(CLIENT_CERT_HEADER);
        let req: &dyn RequestHead = if self.reserved.is_empty() && !client_cert {
            req
        } else {
            edited = Edited {
                inner: req,
                reserved: &self.reserved,
                edits: acc.edits.clone(),
                client_cert,
            };
            &edited
        };
        let target = if rewrite {
            Some(self.target_of(req, path))
        } else {
            None
        };
        match self.access.check_normalized(req, acc.identity.as_ref(), path) {
            Check::Ready(access) => Check::Ready(self.finish(acc, access, target, req, path)),
            Check::Pending(fut) => self.authorized_later(std::mem::take(acc), fut, target, req, path),
        }
    }

    /// [`decide`](Self::decide) once a `CUSTOM` policy's authorizer has
    /// answered.
    #[cold]
    #[inline(never)]
    fn authorized_later(
        self: &Arc<Self>,
        acc: Acc,
        fut: crate::check::BoxFuture<AccessDecision>,
        target: Option<String>,
        req: &dyn RequestHead,
        path: &str,
    ) -> Check<Decision> {
        let guard = self.clone();
        let snapshot = OwnedRequest::snapshot(req, &self.snapshot_headers);
        let path = path.to_owned();
        Check::pending(async move {
            let mut acc = acc;
            let access = fut.await;
            guard.finish(&mut acc, access, target, &snapshot, &path)
        })
    }

    /// The decision on an authorized request: an admission, with its
    /// record, or the refusal (or the sign-in it sends to instead).
    fn finish(
        self: &Arc<Self>,
        acc: &mut Acc,
        access: AccessDecision,
        target: Option<String>,
        req: &dyn RequestHead,
        path: &str,
    ) -> Decision {
        if !access.is_allowed()
            || target.is_some()
            || self.explain
            || !acc.response_headers.is_empty()
            || tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG)
        {
            return self.finish_fully(std::mem::take(acc), access, target, req, path);
        }
        if trace_may_be_wanted() {
            allowed_event(&access);
        }
        self.admission(acc, access, None)
    }

    /// The admission of a request: its record, kept with this share, and
    /// its edits. A credential set aside is marked in the record
    /// ([`SetAside`]), for a route policy's or a handler's refusal.
    #[inline]
    fn admission(
        self: &Arc<Self>,
        acc: &mut Acc,
        access: AccessDecision,
        rare: Option<Box<Rare>>,
    ) -> Decision {
        if acc.set_aside {
            acc.attachments.push(SetAside);
        }
        Decision::Allow(Admission {
            auth: RequestAuth {
                identity: acc.identity.take(),
                access,
                compiled: self.clone(),
                attachments: std::mem::take(&mut acc.attachments),
            },
            edits: std::mem::take(&mut acc.edits),
            rare,
        })
    }

    /// [`finish`](Self::finish) for what a plain admission lacks: a
    /// refusal, a rewrite, response headers, the debug span and events.
    #[cold]
    #[inline(never)]
    fn finish_fully(
        self: &Arc<Self>,
        mut acc: Acc,
        access: AccessDecision,
        target: Option<String>,
        req: &dyn RequestHead,
        path: &str,
    ) -> Decision {
        let method = req.method();
        // The span costs a few hundred instructions even when nobody
        // listens (tracing's `log` compatibility): made only when wanted.
        // Field names follow OpenTelemetry's conventions, so a
        // tracing-opentelemetry pipeline exports them as they are
        // (docs/observability.md).
        let span = if tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG) {
            tracing::debug_span!(
                target: LOG_TARGET,
                "palisade.authorize",
                http.request.method = method,
                url.path = path,
                palisade.decision = if access.is_allowed() { "allow" } else { "deny" },
                palisade.policy = access.policy().unwrap_or(""),
                palisade.rule = access.rule().map(|r| r as i64).unwrap_or(-1),
                enduser.id = acc.identity.as_ref().and_then(Identity::request_principal_str).unwrap_or(""),
                palisade.explanation = %access,
            )
        } else {
            tracing::Span::none()
        };
        let _entered = span.enter();
        if !access.is_allowed() {
            tracing::debug!(target: LOG_TARGET, authenticated = acc.identity.is_some(), %access, "denied");
            let rejection = self.refusal(acc.identity.as_ref(), access);
            let rejection = if acc.set_aside {
                rejection.cross_origin()
            } else {
                rejection
            };
            // The sign-in answer is found outside the span, as it was when
            // the caller found it.
            drop(_entered);
            drop(span);
            return with_renewals(self.sign_in_or(req, rejection), acc.response_headers);
        }
        allowed_event(&access);
        let mut headers = std::mem::take(&mut acc.response_headers);
        if self.explain {
            headers.push((Cow::Borrowed(EXPLAIN_HEADER), access.to_string()));
        }
        let rare = (target.is_some() || !headers.is_empty()).then(|| {
            Box::new(Rare {
                target,
                response: ResponseEdits { headers },
                rendering: Rendering::Http,
            })
        });
        self.admission(&mut acc, access, rare)
    }
}

/// Whether a TRACE event may reach anyone: a subscriber's filter lets
/// TRACE through somewhere, or none is set, when tracing hands events to a
/// `log` logger (its `log` feature) that may want it. A superset of what
/// `trace!` itself asks; two loads.
#[inline]
fn trace_may_be_wanted() -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    (STATIC_MAX_LEVEL >= LevelFilter::TRACE && LevelFilter::current() >= LevelFilter::TRACE)
        || !tracing::dispatcher::has_been_set()
}

/// The TRACE event of an allowed request, out of line: the fast path
/// carries a call rather than the macro's code.
#[inline(never)]
fn allowed_event(access: &AccessDecision) {
    tracing::trace!(target: LOG_TARGET, %access, "allowed");
}

/// A refusal or a reply (a redirect to sign in, an authenticator's own
/// answer) with the renewal of the user's own cookie an authentication
/// made (a refreshed sign-in session, whose refresh token the issuer has
/// spent; a new Negotiate session): the browser must have it whatever the
/// request's answer, or its next request brings the spent token. Other
/// response headers (a mutual-authentication token) are an admission's.
fn with_renewals(decision: Decision, headers: Vec<(Cow<'static, str>, String)>) -> Decision {
    if !headers.iter().any(|(name, _)| renewal(name).is_some()) {
        return decision;
    }
    let headers = headers
        .iter()
        .map(|(name, value)| (name.as_ref(), value.as_str()));
    match decision {
        Decision::Deny(rejection) => Decision::Reply(renewed(Reply::from(rejection), headers)),
        Decision::Reply(reply) => Decision::Reply(renewed(reply, headers)),
        // An admission carries its renewals as response edits.
        allowed @ Decision::Allow(_) => allowed,
    }
}

/// `reply` with the renewal of the user's cookie among `headers` (a
/// refusal's, a reply's, and an admission's whose path the framework
/// refuses): a renewal's `Cache-Control: private` is added unless the
/// reply already keeps itself out of shared caches (`no-store`,
/// `private`).
pub(crate) fn renewed<'h>(reply: Reply, headers: impl Iterator<Item = (&'h str, &'h str)>) -> Reply {
    let unshared = reply.headers().any(|(name, value)| {
        name == "cache-control"
            && value
                .split(',')
                .any(|d| matches!(d.trim().to_ascii_lowercase().as_str(), "no-store" | "private"))
    });
    headers
        .filter_map(|(name, value)| renewal(name).map(|name| (name, value)))
        .filter(|(name, _)| !(unshared && *name == "cache-control"))
        .fold(reply, |reply, (name, value)| reply.header(name, value))
}

/// `name` (a response header's) when it belongs to the renewal of a
/// cookie, which reaches the browser whatever becomes of the request
/// ([`renewed`], [`Acc::keep_renewals`]).
fn renewal(name: &str) -> Option<&'static str> {
    match name {
        "set-cookie" => Some("set-cookie"),
        "cache-control" => Some("cache-control"),
        _ => None,
    }
}

/// What a trusted origin relaxes, said when it is configured (in code or
/// in a policy file's `trustedOrigins`).
pub(crate) fn trusted_origin_warning(origin: &str) -> String {
    format!(
        "requests that {} starts may use this service's cookies whatever their method",
        crate::syntax::url_without_credentials(origin)
    )
}

/// Whether `outcome` is an authentication by a credential a browser sends
/// unasked ([`Authenticated::sent_unasked`]).
fn sent_unasked(outcome: &AuthOutcome) -> bool {
    matches!(outcome, AuthOutcome::Authenticated(a) if a.sent_unasked())
}

/// Whether `req` asks to become a connection of another protocol: an
/// `Upgrade` header (a WebSocket's `Upgrade: websocket` on HTTP/1.1; an
/// adapter shows HTTP/2's extended `CONNECT`, RFC 8441, as that `GET` with
/// its `:protocol` as the header), whatever the protocol. A browser's page
/// cannot set the header (a forbidden header name), so only the browser's
/// own WebSocket sends it.
fn asks_upgrade(req: &dyn RequestHead) -> bool {
    let mut upgrade = false;
    req.for_each_header("upgrade", &mut |v| {
        upgrade |= !v.iter().all(u8::is_ascii_whitespace);
    });
    upgrade
}

/// The refusal of a path that cannot be normalised.
#[cold]
#[inline(never)]
fn malformed_path(req: &dyn RequestHead, e: &dyn fmt::Display) -> Decision {
    tracing::debug!(target: LOG_TARGET, method = req.method(), reason = %e, "malformed path refused");
    Decision::Deny(Rejection::malformed_path(e.to_string()))
}

/// Whether the router must be handed the normalised `path` rather than
/// the request's own. Normalising may allocate without changing anything
/// (`%20`), or change only what needs no rewrite (`%3A`).
#[expect(
    clippy::ptr_arg,
    reason = "a borrowed path is the request's own, unchanged: no rewrite, without a scan"
)]
fn rewrite_needed(req: &dyn RequestHead, path: &Cow<'_, str>) -> bool {
    matches!(path, Cow::Owned(p) if crate::authz::path::needs_rewrite(req.path(), p))
}

/// The refusal of a request whose host is ambiguous, where the policy
/// reads hosts.
#[cold]
#[inline(never)]
fn two_hosts(req: &dyn RequestHead) -> Decision {
    tracing::debug!(target: LOG_TARGET, method = req.method(), "a request with an ambiguous host refused");
    Decision::Deny(crate::adapter::ambiguous_host_refusal())
}

/// The refusal of a request on a connection whose mTLS peer is no longer
/// trusted ([`PeerRecheck`](crate::authn::PeerRecheck)).
#[cold]
#[inline(never)]
fn peer_no_longer_trusted(req: &dyn RequestHead, with_peer: bool) -> Decision {
    let (why, detail) = if with_peer {
        (
            "the connection's peer certificate is no longer trusted",
            "the connection's client certificate is no longer trusted (revoked or expired since the connection began, or refused by the trust material in use now): connect again",
        )
    } else {
        (
            "the connection has no client certificate, which the mutual TLS mode in force requires",
            "the connection was made without a client certificate, which mutual TLS no longer allows here: connect again with one",
        )
    };
    tracing::debug!(target: LOG_TARGET, method = req.method(), path = req.path(), "{why}");
    let refusal = Rejection::forbidden(detail);
    // The connection is closed after the answer (a GOAWAY on HTTP/2
    // where the server can send one: `Reply::closing_connection`), so a
    // client that has renewed its certificate, or a pool, connects again
    // rather than be refused on it for as long as it keeps it.
    Decision::Reply(Reply::from(refusal).closing_connection())
}

/// The refusal of a credential an authenticator refused.
#[cold]
#[inline(never)]
#[allow(
    clippy::boxed_local,
    reason = "the caller moves one pointer; unboxed here, off the hot path"
)]
fn credential_refused(rejection: Box<Rejection>, req: &dyn RequestHead) -> Decision {
    tracing::debug!(target: LOG_TARGET, method = req.method(), path = req.path(), status = rejection.status(), reason = rejection.detail(), "credential refused");
    Decision::Deny(*rejection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::identity::{TokenClaims, Verification};

    /// A session cookie's authenticator that knows the service's external
    /// origin, as a sign-in does, and renews the cookie at every request.
    struct Session(bool);

    impl Authenticator for Session {
        fn challenge(&self) -> Option<String> {
            None
        }
        fn own_origin(&self) -> Option<&str> {
            Some("https://shop.example")
        }
        fn authenticate(&self, req: &dyn RequestHead) -> Check<AuthOutcome> {
            if req.header_str("cookie") != Some("session=alice") {
                return Check::Ready(AuthOutcome::NoCredential);
            }
            let t = TokenClaims {
                issuer: "i".into(),
                subject: "alice".into(),
                ..TokenClaims::default()
            };
            let outcome = AuthOutcome::Authenticated(
                Authenticated::new(Identity::from_token(t, Verification::assertion()))
                    .with_response_header("set-cookie", "session=alice; renewed".to_owned())
                    .with_response_header("cache-control", "private".to_owned())
                    .ambient(),
            );
            if self.0 {
                Check::pending(async move { outcome })
            } else {
                Check::Ready(outcome)
            }
        }
    }

    /// A file's `DENY` policy `default/no` that refuses every request.
    fn deny_everything() -> AccessPolicy {
        let set = crate::policy::PolicySet::from_yaml_str(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no, namespace: default}\nspec: {action: DENY, rules: [{}]}\n",
            "t.yaml",
        )
        .unwrap();
        AccessPolicy::compile(&set.for_workload(&crate::policy::Workload::new("details", "default"))).unwrap()
    }

    /// A refusal keeps the renewal of the user's cookie its authentication
    /// made (a refreshed session, whose refresh token the issuer spent):
    /// the browser gets it with the 403, with an authentication that waits
    /// too.
    #[test]
    fn a_refusal_keeps_the_cookie_renewal_of_its_authentication() {
        let deny = deny_everything();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for waits in [false, true] {
            let guard = Guard::builder()
                .authenticator(Session(waits))
                .access_policy(deny.clone())
                .build()
                .unwrap();
            let req = OwnedRequest::get("/orders").header("cookie", "session=alice");
            let Decision::Reply(reply) = rt.block_on(async { guard.check(&req).await }) else {
                panic!("a refusal that renews the cookie is a reply")
            };
            assert_eq!(reply.status(), 403, "waits: {waits}");
            assert!(reply.rejection().is_some(), "still a refusal");
            assert!(
                reply
                    .headers()
                    .any(|(n, v)| n == "set-cookie" && v == "session=alice; renewed"),
                "waits: {waits}: {reply:?}"
            );
            // A credential refused beside it (a bad bearer token): 401,
            // with the renewal too.
            let guard = Guard::builder()
                .authenticator(Session(waits))
                .authenticator(Fixed(None, false))
                .build()
                .unwrap();
            let req = req.header("authorization", "Bearer bad");
            let Decision::Reply(reply) = rt.block_on(async { guard.check(&req).await }) else {
                panic!("a refusal that renews the cookie is a reply")
            };
            assert_eq!(reply.status(), 401, "waits: {waits}");
            assert!(
                reply.headers().any(|(n, _)| n == "set-cookie"),
                "waits: {waits}: {reply:?}"
            );
        }
    }

    /// An authenticator that answers every request itself, as SPNEGO's
    /// 503 does when all its workers are busy.
    struct Busy;

    impl Authenticator for Busy {
        fn challenge(&self) -> Option<String> {
            None
        }
        fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
            Check::Ready(AuthOutcome::Respond(
                Reply::new(503).header("cache-control", "no-cache"),
            ))
        }
    }

    /// The renewal of the user's cookie reaches the browser when the answer
    /// is not the policy's: an authenticator's own reply, and when the
    /// cookie is set aside for a bearer token of another user; with an
    /// authentication that waits too.
    #[test]
    fn an_authenticators_reply_and_another_users_credential_keep_the_renewal() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let renewed = |headers: Vec<(&str, &str)>| {
            headers
                .iter()
                .filter(|(n, v)| *n == "set-cookie" && *v == "session=alice; renewed")
                .count()
        };
        for waits in [false, true] {
            let guard = Guard::builder()
                .authenticator(Session(waits))
                .authenticator(Busy)
                .build()
                .unwrap();
            let req = OwnedRequest::get("/orders").header("cookie", "session=alice");
            let Decision::Reply(reply) = rt.block_on(async { guard.check(&req).await }) else {
                panic!("the authenticator's reply")
            };
            assert_eq!(reply.status(), 503, "waits: {waits}");
            assert_eq!(renewed(reply.headers().collect()), 1, "waits: {waits}: {reply:?}");
            // `no-cache` lets a shared cache keep it: the renewal's
            // `private` is added.
            assert_eq!(
                reply
                    .headers()
                    .filter(|(n, _)| *n == "cache-control")
                    .collect::<Vec<_>>(),
                [("cache-control", "no-cache"), ("cache-control", "private")],
                "waits: {waits}"
            );

            let guard = Guard::builder()
                .authenticator(Session(waits))
                .authenticator(Fixed(Some("bob"), false))
                .access_policy(AccessPolicy::allow_all())
                .build()
                .unwrap();
            let req = req.header("authorization", "Bearer good");
            let Decision::Allow(admission) = rt.block_on(async { guard.check(&req).await }) else {
                panic!("bob is let in")
            };
            assert_eq!(
                admission
                    .auth()
                    .identity()
                    .and_then(Identity::request_principal_str),
                Some("i/bob"),
                "waits: {waits}"
            );
            assert_eq!(
                renewed(admission.response().headers().collect()),
                1,
                "waits: {waits}: alice's renewed cookie still reaches the browser"
            );
        }
    }

    /// An interactive authenticator: a redirect to sign in for a request
    /// refused for want of a credential.
    struct Login;

    impl Authenticator for Login {
        fn challenge(&self) -> Option<String> {
            None
        }
        fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
            Check::Ready(AuthOutcome::NoCredential)
        }
        fn sign_in(&self, _: &dyn RequestHead) -> Option<Reply> {
            Some(Reply::redirect("https://idp.example/auth"))
        }
    }

    /// A request another origin started is decided without the cookie; a
    /// policy that wants a user refuses it with 403 saying why (not a 401,
    /// which a page's script reads as "signed out", nor a redirect to sign
    /// in), and the refusal carries the cookie's renewal too, with its
    /// `cache-control` once. The same request from this origin is the
    /// user's.
    #[test]
    fn a_cross_origin_write_whose_cookie_was_set_aside_is_refused_with_403_and_keeps_the_renewal() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for waits in [false, true] {
            let guard = Guard::builder()
                .authenticator(Session(waits))
                .authenticator(Login)
                .access_policy(AccessPolicy::require_authenticated())
                .build()
                .unwrap();
            let req = |origin: &str| {
                OwnedRequest::new("POST", "/orders")
                    .header("host", "backend:8080")
                    .header("cookie", "session=alice")
                    .header("origin", origin)
            };
            let Decision::Reply(reply) =
                rt.block_on(async { guard.check(&req("https://evil.example")).await })
            else {
                panic!("refused, with the renewal")
            };
            assert_eq!(reply.status(), 403, "waits: {waits}");
            let rejection = reply.rejection().expect("a refusal");
            assert_eq!(rejection.reason(), "cross_origin");
            assert!(
                rejection
                    .problem_json()
                    .contains("urn:palisade:problem:cross-origin"),
                "{}",
                rejection.problem_json()
            );
            assert!(
                rejection.detail().contains("another origin"),
                "{}",
                rejection.detail()
            );
            let headers: Vec<_> = reply.headers().collect();
            assert!(
                headers.contains(&("set-cookie", "session=alice; renewed")),
                "waits: {waits}: {headers:?}"
            );
            assert!(
                !headers
                    .iter()
                    .any(|(n, _)| *n == "www-authenticate" || *n == "location"),
                "waits: {waits}: {headers:?}"
            );
            assert_eq!(
                headers
                    .iter()
                    .filter(|(n, _)| *n == "cache-control")
                    .collect::<Vec<_>>(),
                [&("cache-control", "private")],
                "waits: {waits}: the renewal's, once"
            );
            let own = rt.block_on(async { guard.check(&req("http://backend:8080")).await });
            assert!(matches!(own, Decision::Allow(_)), "waits: {waits}: {own:?}");
        }
    }

    /// Without a credential set aside, a policy that wants a user sends
    /// the request to sign in.
    #[test]
    fn a_request_without_a_credential_is_sent_to_sign_in() {
        let guard = Guard::builder()
            .authenticator(Login)
            .access_policy(AccessPolicy::require_authenticated())
            .build()
            .unwrap();
        let Check::Ready(Decision::Reply(reply)) = guard.check(&OwnedRequest::get("/orders")) else {
            panic!("sent to sign in")
        };
        assert_eq!(reply.status(), 302);
    }

    /// A framework that cannot take the normalised path (the layer runs
    /// after routing) refuses the admission with 400: the cookie's renewal
    /// goes with it.
    #[test]
    fn a_path_the_framework_refuses_keeps_the_renewal() {
        struct Routed;
        impl crate::adapter::RequestTarget for Routed {
            fn remove_header(&mut self, _: &str) {}
            fn set_header(&mut self, _: &str, _: &str) {}
            fn rewrite_target(&mut self, _: &str) -> Result<(), crate::adapter::TargetRewrite> {
                Err(crate::adapter::TargetRewrite::Invalid)
            }
            fn insert_auth(&mut self, _: RequestAuth) {}
        }
        let set = crate::policy::PolicySet::from_yaml_str(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: orders, namespace: default}\nspec: {rules: [{to: [{operation: {paths: [/orders]}}]}]}\n",
            "t.yaml",
        )
        .unwrap();
        let orders =
            AccessPolicy::compile(&set.for_workload(&crate::policy::Workload::new("details", "default")))
                .unwrap();
        let guard = Guard::builder()
            .authenticator(Session(false))
            .access_policy(orders)
            .build()
            .unwrap();
        let req = OwnedRequest::get("/a/../orders").header("cookie", "session=alice");
        let Check::Ready(Decision::Allow(admission)) = guard.check(&req) else {
            panic!("allowed")
        };
        assert_eq!(admission.rewritten_target(), Some("/orders"));
        let Err(reply) = admission.apply(&mut Routed) else {
            panic!("refused by the framework")
        };
        assert_eq!(reply.status(), 400);
        let headers: Vec<_> = reply.headers().collect();
        assert!(
            headers.contains(&("set-cookie", "session=alice; renewed"))
                && headers.contains(&("cache-control", "private")),
            "{headers:?}"
        );
    }

    /// A refusal that carries a cookie's renewal (a reply) is counted as
    /// the refusal it holds: under the policy that decided.
    #[test]
    fn a_refusal_with_a_renewal_is_counted_under_its_policy() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let deny = deny_everything();
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let guard = Guard::builder()
                .authenticator(Session(false))
                .access_policy(deny)
                .build()
                .unwrap();
            let req = OwnedRequest::get("/orders").header("cookie", "session=alice");
            assert!(matches!(guard.check(&req), Check::Ready(Decision::Reply(_))));
        });
        let denied = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find_map(|(key, _, _, value)| {
                let labels: Vec<String> = key
                    .key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                (key.key().name() == "palisade_decisions_total"
                    && labels.join(",") == "decision=deny,policy=default/no,action=DENY")
                    .then_some(value)
            });
        assert!(matches!(denied, Some(DebugValue::Counter(1))), "{denied:?}");
    }

    /// Behind a proxy that gives the service another `Host`, a browser
    /// without Fetch Metadata names the sign-in's external origin in
    /// `Origin`: the request is the service's own. Another origin's `POST`
    /// is decided without the cookie, whose renewal still reaches the
    /// browser; with an authentication that waits too.
    #[test]
    fn the_sign_ins_own_origin_is_trusted_and_a_left_aside_renewal_is_kept() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for waits in [false, true] {
            let guard = Guard::builder()
                .authenticator(Session(waits))
                .access_policy(AccessPolicy::allow_all())
                .build()
                .unwrap();
            let post = |origin: &str| {
                OwnedRequest::new("POST", "/orders")
                    .header("host", "backend:8080")
                    .header("cookie", "session=alice")
                    .header("origin", origin)
            };
            for (origin, signed_in) in [("https://shop.example", true), ("https://evil.example", false)] {
                let Decision::Allow(admission) = rt.block_on(async { guard.check(&post(origin)).await })
                else {
                    panic!("{origin}: allowed")
                };
                assert_eq!(
                    admission.auth().identity().is_some(),
                    signed_in,
                    "{origin}, waits: {waits}"
                );
                let renewed: Vec<_> = admission
                    .response()
                    .headers()
                    .filter(|(n, _)| *n == "set-cookie")
                    .collect();
                assert_eq!(
                    renewed.len(),
                    1,
                    "{origin}, waits: {waits}: the renewal reaches the browser"
                );
            }
        }
    }

    struct Fixed(Option<&'static str>, bool);

    /// `x-forwarded-client-cert`, which an application ported from a
    /// sidecar reads as its caller's certificate: set from the verified
    /// peer on a TLS connection, and removed wherever a client sent it, as
    /// text or not; a request without it and without a peer is left as it
    /// is. A policy reads it as the handler will get it.
    #[test]
    fn the_client_certificate_header_comes_from_the_handshake_only() {
        use crate::identity::PeerIdentity;
        let guard = |policy: AccessPolicy| {
            Guard::builder()
                .authenticator(Fixed(None, false))
                .access_policy(policy)
                .build()
                .unwrap()
        };
        let open = guard(AccessPolicy::allow_all());
        let edits = |req: OwnedRequest| match open.check(&req) {
            Check::Ready(Decision::Allow(a)) => a.header_edits().to_vec(),
            _ => panic!("allowed"),
        };
        let forged = "Hash=00;URI=spiffe://cluster.local/ns/istio-system/sa/admin";
        let xfcc = || "x-forwarded-client-cert".to_owned();
        let removed = [HeaderEdit::Remove(xfcc())];
        let tls = ConnectionInfo {
            tls: true,
            ..ConnectionInfo::default()
        };
        assert_eq!(edits(OwnedRequest::get("/")), []);
        assert_eq!(edits(OwnedRequest::get("/").connection(tls.clone())), []);
        assert_eq!(
            edits(OwnedRequest::get("/").header("x-forwarded-client-cert", forged)),
            removed
        );
        let not_text =
            OwnedRequest::get("/").header("x-forwarded-client-cert", &b"URI=spiffe://x/sa/admin;\xff"[..]);
        assert_eq!(edits(not_text), removed, "a value that is not text");
        let peer = |tls: ConnectionInfo| ConnectionInfo {
            peer: Some(Identity::from_peer(
                PeerIdentity {
                    principal: Some("cluster.local/ns/shop/sa/web".into()),
                    spiffe_id: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
                    dns_names: vec!["web.shop".into()],
                    fingerprint_sha256: "ab12".into(),
                    ..PeerIdentity::default()
                },
                Verification::assertion(),
            )),
            ..tls
        };
        assert_eq!(
            edits(
                OwnedRequest::get("/")
                    .header("x-forwarded-client-cert", forged)
                    .connection(peer(tls))
            ),
            [HeaderEdit::Set(
                xfcc(),
                "Hash=ab12;URI=spiffe://cluster.local/ns/shop/sa/web;DNS=web.shop".into()
            )]
        );
        // A DENY on the header reads what the handler gets, not the
        // client's value.
        use crate::authz::Rule;
        let deny = AccessPolicy::builder()
            .deny(
                "no-admin",
                [Rule::new().when("request.headers[x-forwarded-client-cert]", ["*sa/admin"])],
            )
            .allow("all", [Rule::new()])
            .build()
            .unwrap();
        let denying = guard(deny);
        let req = OwnedRequest::get("/").header("x-forwarded-client-cert", forged);
        assert!(matches!(denying.check(&req), Check::Ready(Decision::Allow(_))));
    }

    /// A handler's own check answers as the `Authorized<R>` extractor:
    /// the identity when it meets the requirement, 403 short of it, and
    /// 401 with the guard's challenge for an anonymous caller.
    #[test]
    fn a_handlers_requirement_answers_401_403_or_the_identity() {
        use crate::authz::{authenticated, realm_role};
        let guard = Guard::builder()
            .authenticator(Fixed(Some("alice"), false))
            .access_policy(AccessPolicy::allow_all())
            .build()
            .unwrap();
        let auth = |req: OwnedRequest| match guard.check(&req) {
            Check::Ready(Decision::Allow(a)) => a.auth().clone(),
            _ => panic!("allowed"),
        };
        let alice = auth(OwnedRequest::get("/").header("authorization", "Bearer good"));
        assert_eq!(alice.require(&authenticated()).unwrap().subject(), Some("alice"));
        assert_eq!(alice.require(&realm_role("admin")).unwrap_err().status(), 403);
        let anonymous = auth(OwnedRequest::get("/"));
        let refused = anonymous.require(&authenticated()).unwrap_err();
        assert_eq!(refused.status(), 401);
        assert_eq!(refused.challenges(), ["Bearer realm=\"t\""]);
    }

    impl Authenticator for Fixed {
        fn challenge(&self) -> Option<String> {
            Some("Bearer realm=\"t\"".into())
        }
        fn authenticate(&self, req: &dyn RequestHead) -> Check<AuthOutcome> {
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
                Check::pending(async move { outcome })
            } else {
                Check::Ready(outcome)
            }
        }
    }

    #[test]
    fn the_credentials_of_two_users_in_one_request_are_refused_not_merged() {
        let guard = |a: &'static str, b: &'static str| {
            Guard::builder()
                .authenticator(Fixed(Some(a), false))
                .authenticator(Fixed(Some(b), true))
                .access_policy(AccessPolicy::allow_all())
                .build()
                .unwrap()
        };
        let req = OwnedRequest::get("/").header("authorization", "Bearer good");
        let decided = |g: Guard| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(async { g.check(&req).await })
        };
        match decided(guard("alice", "bob")) {
            Decision::Deny(r) => {
                assert_eq!(r.status(), 400, "{r:?}");
                assert!(r.detail().contains("more than one user"), "{r:?}");
            }
            other => panic!("two users were let in: {other:?}"),
        }
        // The same user by two means (a token and its session, say) is one.
        match decided(guard("alice", "alice")) {
            Decision::Allow(a) => {
                assert_eq!(
                    a.auth().identity().and_then(Identity::request_principal_str),
                    Some("i/alice")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// A request whose target names `.0` (when it has an authority) and
    /// which carries the `Host` headers `.1`.
    struct Hosts(Option<&'static str>, &'static [&'static [u8]]);

    impl RequestHead for Hosts {
        fn method(&self) -> &str {
            "GET"
        }
        fn path(&self) -> &str {
            "/p"
        }
        fn query(&self) -> Option<&str> {
            None
        }
        fn host(&self) -> Option<&str> {
            let header = self.1.first().and_then(|h| std::str::from_utf8(h).ok());
            crate::adapter::request_host(header, self.0)
        }
        fn authority(&self) -> Option<&str> {
            self.0
        }
        fn header_value(&self, name: &str, index: usize) -> Option<&[u8]> {
            self.1.get(index).copied().filter(|_| name == "host")
        }
    }

    #[test]
    fn a_request_with_an_ambiguous_host_is_refused_where_an_enforced_policy_reads_hosts() {
        let guard = |spec: &str| {
            let yaml = format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec: {spec}\n"
            );
            let set = crate::policy::PolicySet::from_yaml_str(&yaml, "p.yaml").unwrap();
            let policy = set.for_workload(&crate::policy::Workload::new("w", "default"));
            let ext = crate::authz::ExternalAuthorizers::new().register(
                "ext",
                Vec::<String>::new(),
                |_: crate::authz::CheckRequest| async { crate::authz::ExternalDecision::Allow },
            );
            Guard::builder()
                .access_policy_from(&policy, &ext)
                .unwrap()
                .build()
                .unwrap()
        };
        let decided = |g: &Guard, req: &Hosts| {
            // With the timer a CUSTOM authorizer's timeout runs on.
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
                .block_on(async { g.check(req).await })
        };
        let ambiguous = [
            // Either host may be the allowed one.
            Hosts(Some("shop.example"), &[b"admin.example"]),
            Hosts(Some("admin.example"), &[b"shop.example"]),
            Hosts(Some("shop.example:8080"), &[b"shop.example"]),
            Hosts(None, &[b"shop.example", b"admin.example"]),
            Hosts(None, &[b"shop.ex\xe4mple"]),
        ];
        let plain = [
            Hosts(Some("u@Shop.Example"), &[b"shop.example"]),
            Hosts(Some("shop.example"), &[]),
            Hosts(None, &[b"shop.example"]),
        ];
        for spec in [
            "{rules: [{to: [{operation: {hosts: [shop.example]}}]}]}",
            "{rules: [{to: [{operation: {notHosts: [admin.example]}}]}]}",
            "{rules: [{when: [{key: \"request.headers[Host]\", values: [shop.example]}]}]}",
            // An external authorizer is sent the host.
            "{action: CUSTOM, provider: {name: ext}, rules: [{}]}",
        ] {
            let g = guard(spec);
            for req in &ambiguous {
                match decided(&g, req) {
                    Decision::Deny(r) => {
                        assert_eq!(r.status(), 400, "{spec}: {r:?}");
                        assert!(r.detail().contains("one host"), "{r:?}");
                    }
                    other => panic!("{spec}: an ambiguous host was decided on: {other:?}"),
                }
            }
            // A header condition needs the header (HTTP/2 may send none).
            for req in plain
                .iter()
                .filter(|r| !(spec.contains("headers") && r.1.is_empty()))
            {
                assert!(
                    matches!(decided(&g, req), Decision::Allow(_)),
                    "{spec}: {:?} {:?}",
                    req.0,
                    req.1
                );
            }
        }
        // A policy that reads no host, or reads it in a dry run only (never
        // in the way), lets the request be decided.
        for spec in [
            "{rules: [{to: [{operation: {paths: [/p]}}]}]}",
            "{rules: [{to: [{operation: {paths: [/p]}}]}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: dry, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: DENY, rules: [{to: [{operation: {hosts: [admin.example]}}]}]}",
        ] {
            let g = guard(spec);
            for req in &ambiguous {
                assert!(matches!(decided(&g, req), Decision::Allow(_)), "{spec}");
            }
        }
    }

    /// A session cookie: `user`, with a marker attachment, as a browser
    /// sends it by itself; a Negotiate session's with the role `admin` for
    /// a `user@REALM`.
    struct Cookie(&'static str);

    impl Authenticator for Cookie {
        fn challenge(&self) -> Option<String> {
            None
        }
        fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
            let id = if self.0.contains('@') {
                let k = crate::identity::KerberosIdentity {
                    principal: self.0.into(),
                    roles: vec!["admin".into()],
                    ..Default::default()
                };
                Identity::from_kerberos(k, Verification::assertion())
            } else {
                let t = TokenClaims {
                    issuer: "i".into(),
                    subject: self.0.into(),
                    ..TokenClaims::default()
                };
                Identity::from_session(t, Verification::assertion())
            };
            Check::Ready(AuthOutcome::Authenticated(
                Authenticated::new(id).with_attachment(self.0).ambient(),
            ))
        }
    }

    #[test]
    fn a_header_credential_of_another_user_wins_over_a_session_cookie_whole() {
        // `cookies` in the configuration's order, then the token's
        // authenticator, answering at once or later.
        let allowed = |cookies: &[&'static str], token: Option<&'static str>, later: bool| {
            let mut b = Guard::builder();
            for c in cookies {
                b = b.authenticator(Cookie(c));
            }
            let guard = b
                .authenticator(Fixed(token, later))
                .access_policy(AccessPolicy::allow_all())
                .build()
                .unwrap();
            let req = match token {
                Some(_) => OwnedRequest::get("/").header("authorization", "Bearer good"),
                None => OwnedRequest::get("/"),
            };
            let decided = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(async { guard.check(&req).await });
            match decided {
                Decision::Allow(a) => {
                    let auth = a.auth();
                    let who = auth
                        .identity()
                        .and_then(Identity::request_principal_str)
                        .map(str::to_owned);
                    let admin = auth.identity().is_some_and(|id| id.has_realm_role("admin"));
                    (who, auth.attachment::<&'static str>().copied(), admin)
                }
                other => panic!("{other:?}"),
            }
        };
        for later in [false, true] {
            // The token's user; nothing of the cookie's: not its
            // attachment, not its role.
            for cookie in ["mallory", "mallory@R"] {
                assert_eq!(
                    allowed(&[cookie], Some("bob"), later),
                    (Some("i/bob".into()), None, false),
                    "{cookie}, the token answering later: {later}"
                );
            }
            // The same user: combined.
            assert_eq!(
                allowed(&["bob"], Some("bob"), later),
                (Some("i/bob".into()), Some("bob"), false)
            );
        }
        // The cookie alone.
        assert_eq!(
            allowed(&["carol"], None, false),
            (Some("i/carol".into()), Some("carol"), false)
        );
        // Cookies of two users (a sign-in's and a Negotiate session's) are
        // never one identity: the first configured speaks, the other is
        // left aside whole.
        assert_eq!(
            allowed(&["carol", "dave@R"], None, false),
            (Some("i/carol".into()), Some("carol"), false)
        );
        assert_eq!(
            allowed(&["dave@R", "carol"], None, false),
            (Some("dave@R".into()), Some("dave@R"), true)
        );
    }

    fn ready(check: Check<Decision>) -> Decision {
        match check {
            Check::Ready(d) => d,
            Check::Pending(_) => panic!("expected a ready decision"),
        }
    }

    /// An access policy built in code with no ALLOW rule (DENY rules only,
    /// or none) leaves every other request open, as in Istio, which a
    /// Spring Security user would not expect: said at start-up, unless
    /// `allow_unauthenticated` said so, and not for a policy that allows.
    #[test]
    fn a_policy_in_code_without_an_allow_rule_is_said_to_leave_the_service_open() {
        // The log lines of a thread's subscriber: alone in the process, no
        // other test registers the event's call site first.
        if !palisade_testkit::in_a_process_of_its_own(
            "guard::tests::a_policy_in_code_without_an_allow_rule_is_said_to_leave_the_service_open",
        ) {
            return;
        }
        let said = "the access policy given in code has no ALLOW rule";
        let with = |build: fn(GuardBuilder) -> GuardBuilder| {
            let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("warn");
            tracing::subscriber::with_default(subscriber, || {
                build(Guard::builder().authenticator(Alive(Arc::new(()))))
                    .build()
                    .unwrap();
            });
            lines.containing(said).len()
        };
        assert_eq!(
            with(|b| b.access_policy(
                AccessPolicy::builder()
                    .deny("no-delete", [crate::authz::Rule::new().methods(["DELETE"])])
                    .build()
                    .unwrap()
            )),
            1
        );
        assert_eq!(with(|b| b.access_policy(AccessPolicy::allow_all())), 1);
        assert_eq!(with(GuardBuilder::allow_unauthenticated), 0);
        // Compiled from a file (as `palisade check` and the facade's
        // checks hand it over): said in the file's terms, if at all.
        assert_eq!(
            with(|b| {
                let set = crate::policy::PolicySet::from_yaml_str(
                    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-delete}\nspec: {action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}\n",
                    "deny.yaml",
                )
                .unwrap();
                b.access_policy(
                    AccessPolicy::compile(
                        &set.for_workload(&crate::policy::Workload::new("details", "default")),
                    )
                    .unwrap(),
                )
            }),
            0
        );
        assert_eq!(with(|b| b), 0, "the default requires a user");
        assert_eq!(
            with(|b| b.access_policy(
                AccessPolicy::builder()
                    .allow("users", [crate::authz::Rule::new().request_principals(["*"])])
                    .build()
                    .unwrap()
            )),
            0
        );
    }

    /// An authenticator that says when it is dropped: its `Arc<()>` goes
    /// with it.
    struct Alive(#[allow(dead_code, reason = "held for its drop")] Arc<()>);

    impl Authenticator for Alive {
        fn challenge(&self) -> Option<String> {
            Some("Alive".into())
        }
        fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
            Check::Ready(AuthOutcome::NoCredential)
        }
    }

    /// An authenticator of transport peers: it offers no challenge.
    struct PeerOnly;

    impl Authenticator for PeerOnly {
        fn challenge(&self) -> Option<String> {
            None
        }
        fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
            Check::Ready(AuthOutcome::NoCredential)
        }
    }

    /// A 401 names how to authenticate: a guard whose authenticators
    /// offer no challenge refuses a caller without a user with a 403, as
    /// does a handler's need for an identity; with a challenge, the 401.
    #[test]
    fn a_refusal_no_challenge_could_answer_is_a_403() {
        let needs_user = || {
            AccessPolicy::builder()
                .allow("users", [crate::authz::Rule::new().request_principals(["*"])])
                .build()
                .unwrap()
        };
        let peers = Guard::builder()
            .authenticator(PeerOnly)
            .access_policy(needs_user())
            .build()
            .unwrap();
        let Decision::Deny(r) = ready(peers.check(&OwnedRequest::get("/"))) else {
            panic!("refused")
        };
        assert_eq!((r.status(), r.challenges()), (403, &[][..]));
        assert!(r.access().is_some(), "the decision stays with it");
        let users = Guard::builder()
            .authenticator(PeerOnly)
            .authenticator(Alive(Arc::new(())))
            .access_policy(needs_user())
            .build()
            .unwrap();
        let Decision::Deny(r) = ready(users.check(&OwnedRequest::get("/"))) else {
            panic!("refused")
        };
        assert_eq!((r.status(), r.challenges()), (401, &["Alive".to_owned()][..]));
        // A handler's need for an identity, on a request the guard let in.
        let open = |a: Guard| match ready(a.check(&OwnedRequest::get("/"))) {
            Decision::Allow(a) => a.auth().missing_credential(),
            other => panic!("{other:?}"),
        };
        let peers = Guard::builder()
            .authenticator(PeerOnly)
            .access_policy(AccessPolicy::allow_all())
            .build()
            .unwrap();
        assert_eq!(open(peers).status(), 403);
        let users = Guard::builder()
            .authenticator(Alive(Arc::new(())))
            .access_policy(AccessPolicy::allow_all())
            .build()
            .unwrap();
        assert_eq!(open(users).status(), 401);
    }

    #[test]
    fn a_request_keeps_its_configuration_through_a_reload_and_no_longer() {
        let life = Arc::new(());
        let alive = Arc::downgrade(&life);
        let guard = Guard::builder()
            .authenticator(Alive(life))
            .access_policy(AccessPolicy::allow_all())
            .build()
            .unwrap();
        let auths: Vec<RequestAuth> = std::thread::scope(|s| {
            (0..4)
                .map(|_| {
                    s.spawn(|| match ready(guard.check(&OwnedRequest::get("/"))) {
                        Decision::Allow(a) => a.auth().clone(),
                        other => panic!("{other:?}"),
                    })
                    .join()
                    .unwrap()
                })
                .collect()
        });
        guard.replace(
            Guard::builder()
                .access_policy(AccessPolicy::allow_all())
                .build()
                .unwrap(),
        );
        assert!(
            guard.challenges().is_empty(),
            "the new configuration has no authenticator"
        );
        for auth in &auths {
            assert_eq!(
                auth.missing_credential().challenges(),
                ["Alive"],
                "answered as it was checked"
            );
        }
        assert_eq!(alive.strong_count(), 1, "kept by the requests in flight");
        drop(auths);
        assert_eq!(alive.strong_count(), 0, "and by nothing else, on any thread");
    }

    /// A subscriber that keeps the names of the spans made and the levels
    /// of Palisade's events.
    #[derive(Default)]
    struct Seen(std::sync::Mutex<(Vec<&'static str>, Vec<tracing::Level>)>);

    impl tracing::Subscriber for Seen {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            let mut seen = self.0.lock().unwrap();
            seen.0.push(span.metadata().name());
            tracing::span::Id::from_u64(seen.0.len() as u64)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if event.metadata().target() == LOG_TARGET {
                self.0.lock().unwrap().1.push(*event.metadata().level());
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn an_allowed_request_is_traced_whichever_path_finishes_it() {
        if !palisade_testkit::in_a_process_of_its_own(
            "guard::tests::an_allowed_request_is_traced_whichever_path_finishes_it",
        ) {
            return;
        }
        let guard = Guard::builder()
            .access_policy(AccessPolicy::allow_all())
            .build()
            .unwrap();
        let seen = Arc::new(Seen::default());
        tracing::subscriber::with_default(seen.clone(), || {
            assert!(matches!(
                ready(guard.check(&OwnedRequest::get("/"))),
                Decision::Allow(_)
            ));
        });
        let (spans, events) = std::mem::take(&mut *seen.0.lock().unwrap());
        assert!(spans.contains(&"palisade.authorize"), "the debug span: {spans:?}");
        assert!(
            events.contains(&tracing::Level::TRACE),
            "the allowed event: {events:?}"
        );
        // Without a subscriber the plain admission's path runs: the same
        // decision.
        assert!(
            matches!(ready(guard.check(&OwnedRequest::get("/"))), Decision::Allow(a) if a.rewritten_target().is_none())
        );
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
        assert_eq!(a.auth().identity().unwrap().subject(), Some("late"));
    }

    /// A policy that allows only subject `alice` of issuer `i`.
    fn only_alice() -> AccessPolicy {
        let set = crate::policy::PolicySet::from_yaml_str(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-alice, namespace: default}
spec:
  rules:
  - from: [{source: {requestPrincipals: [i/alice]}}]
",
            "t.yaml",
        )
        .unwrap();
        let policy = set.for_workload(&crate::policy::Workload::new("details", "default"));
        AccessPolicy::compile_with(&policy, &ExternalAuthorizers::new()).unwrap()
    }

    #[tokio::test]
    async fn a_replacement_is_seen_by_every_clone_and_spares_requests_in_flight() {
        let guard = Guard::builder()
            .authenticator(Fixed(Some("bob"), true))
            .build()
            .unwrap();
        let layer_copy = guard.clone();
        let bob = || OwnedRequest::get("/").header("authorization", "Bearer good");
        let Check::Pending(in_flight) = layer_copy.check(&bob()) else {
            panic!("expected pending")
        };
        guard.replace(
            Guard::builder()
                .authenticator(Fixed(Some("bob"), true))
                .access_policy(only_alice())
                .build()
                .unwrap(),
        );
        // Started before the replacement: decided by the policy it started with.
        assert!(matches!(in_flight.await, Decision::Allow(_)));
        let Check::Pending(after) = layer_copy.check(&bob()) else {
            panic!("expected pending")
        };
        let Decision::Deny(r) = after.await else {
            panic!("the new policy denies bob")
        };
        assert_eq!(r.status(), 403);
    }

    /// Counts its calls; takes over a previous `Counting` with the same name.
    struct Counting(&'static str, Arc<std::sync::atomic::AtomicUsize>);

    impl Authenticator for Counting {
        fn challenge(&self) -> Option<String> {
            None
        }
        fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Check::Ready(AuthOutcome::NoCredential)
        }
        fn take_over(&self, previous: &dyn Authenticator) -> Option<Arc<dyn Authenticator>> {
            let p = (previous as &dyn std::any::Any).downcast_ref::<Counting>()?;
            (p.0 == self.0).then(|| Arc::new(Counting(p.0, p.1.clone())) as Arc<dyn Authenticator>)
        }
    }

    #[test]
    fn a_replacement_keeps_the_state_its_authenticators_take_over() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (old, new, other) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let guard = Guard::builder()
            .authenticator(Counting("a", old.clone()))
            .allow_unauthenticated()
            .build()
            .unwrap();
        guard.replace(
            Guard::builder()
                .authenticator(Counting("a", new.clone()))
                .authenticator(Counting("b", other.clone()))
                .allow_unauthenticated()
                .build()
                .unwrap(),
        );
        let _ = guard.check(&OwnedRequest::get("/"));
        assert_eq!(
            [
                old.load(Ordering::Relaxed),
                new.load(Ordering::Relaxed),
                other.load(Ordering::Relaxed)
            ],
            [1, 0, 1],
            "`a` carried over, `b` as built"
        );
    }

    #[test]
    fn decisions_and_authentications_are_counted_by_label() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let guard = Guard::builder()
                .authenticator(Fixed(Some("alice"), false))
                .access_policy(only_alice())
                .build()
                .unwrap();
            let req = |token: Option<&str>| {
                let r = OwnedRequest::get("/");
                match token {
                    Some(t) => r.header("authorization", t),
                    None => r,
                }
            };
            for t in [Some("Bearer good"), Some("Bearer good"), Some("Bearer bad"), None] {
                let _ = guard.check(&req(t));
            }
            // A route policy's refusal of a request the guard allowed is a
            // deny too.
            let Check::Ready(Decision::Allow(admitted)) = guard.check(&req(Some("Bearer good"))) else {
                panic!("alice is allowed");
            };
            let admins = AccessPolicy::from(crate::authz::realm_role("admin"));
            let refused = crate::adapter::authorize_route(&admins, Some(admitted.auth()), &req(None));
            assert!(matches!(refused, Check::Ready(Err(r)) if r.status() == 403));
            // A gRPC call's refusal too, though it is answered 200.
            let grpc = OwnedRequest::new("POST", "/p.S/M").header("content-type", "application/grpc");
            let refused = crate::adapter::authorize_route(&admins, Some(admitted.auth()), &grpc);
            assert!(matches!(refused, Check::Ready(Err(r)) if r.status() == 200));
            // And one refused before it decides: a path it cannot read.
            let paths = AccessPolicy::builder()
                .allow("admin", [crate::authz::Rule::new().paths(["/admin/*"])])
                .build()
                .unwrap();
            let bad = OwnedRequest::get("/admin/%zz");
            let refused = crate::adapter::authorize_route(&paths, Some(admitted.auth()), &bad);
            assert!(matches!(refused, Check::Ready(Err(r)) if r.status() == 400));
        });
        let mut counters = std::collections::BTreeMap::new();
        let mut durations = 0;
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            match value {
                DebugValue::Counter(n) => {
                    counters.insert(format!("{}{{{}}}", key.name(), labels.join(",")), n);
                }
                DebugValue::Histogram(v) => durations += v.len(),
                DebugValue::Gauge(_) => {}
            }
        }
        let get = |k: &str| counters.get(k).copied().unwrap_or(0);
        assert_eq!(
            get("palisade_decisions_total{decision=allow,policy=default/only-alice,action=ALLOW}"),
            3
        );
        // The bad token and the missing one, refused before any policy
        // decided, and the route policy's three refusals.
        assert_eq!(get("palisade_decisions_total{decision=deny,policy=,action=}"), 5);
        assert_eq!(get("palisade_decisions_total{decision=reply,policy=,action=}"), 0);
        assert_eq!(
            get("palisade_authentications_total{method=custom,result=success}"),
            3
        );
        assert_eq!(
            get("palisade_authentications_total{method=custom,result=failure}"),
            1
        );
        assert_eq!(durations, 5, "one duration per decision of the guard");
    }

    #[test]
    fn a_route_policy_answers_a_path_it_cannot_read_400_as_the_guard_does() {
        let guard = Guard::builder()
            .authenticator(Fixed(Some("alice"), false))
            .access_policy(AccessPolicy::allow_all())
            .build()
            .unwrap();
        let req = |p: &str| OwnedRequest::get(p).header("authorization", "Bearer good");
        let bad = req("/admin/%zz");
        let Check::Ready(Decision::Allow(admitted)) = guard.check(&bad) else {
            panic!("the guard's policy reads no path");
        };
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: admin}\nspec: {rules: [{to: [{operation: {paths: [/admin/*]}}]}]}\n";
        let set = crate::policy::PolicySet::from_yaml_str(yaml, "route.yaml").unwrap();
        let paths =
            AccessPolicy::compile(&set.for_workload(&crate::policy::Workload::new("details", "default")))
                .unwrap();
        let answer = |policy: &AccessPolicy| match crate::adapter::authorize_route(
            policy,
            Some(admitted.auth()),
            &bad,
        ) {
            Check::Ready(Ok(())) => 200,
            Check::Ready(Err(reply)) => reply.status(),
            Check::Pending(_) => panic!("nothing to wait for"),
        };
        assert_eq!(answer(&paths), 400, "not a denial to authenticate for");
        // A policy that reads no path decides whatever the path holds.
        assert_eq!(answer(&AccessPolicy::require_authenticated()), 200);
        // Routed on a path whose normal form another route takes: the
        // policy, which would decide for that form, refuses it (as the
        // guard does after routing), where it allows the normal form.
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: public}\nspec: {rules: [{to: [{operation: {paths: [/public/*]}}]}]}\n";
        let set = crate::policy::PolicySet::from_yaml_str(yaml, "route.yaml").unwrap();
        let public =
            AccessPolicy::compile(&set.for_workload(&crate::policy::Workload::new("details", "default")))
                .unwrap();
        let route =
            |path: &str| match crate::adapter::authorize_route(&public, Some(admitted.auth()), &req(path)) {
                Check::Ready(Ok(())) => 200,
                Check::Ready(Err(reply)) => reply.status(),
                Check::Pending(_) => panic!("nothing to wait for"),
            };
        assert_eq!(route("/public/x"), 200);
        assert_eq!(route("/admin/../public/x"), 400);
        assert_eq!(route("/admin/%2e%2e/public/x"), 400);
        assert_eq!(route("public/x"), 400, "no `/`");
    }

    /// A path that does not begin with `/` (an HTTP/2 `:path` of
    /// `admin/x`, which h2 and hyper pass on) is refused `400` whatever
    /// the policy reads: a `DENY` on `/admin/*` would not match it, and a
    /// router's fallback (a file server) may serve it as `/admin/x`.
    /// `OPTIONS *` and an empty path (`CONNECT`) are no such path.
    #[test]
    fn a_path_that_does_not_begin_with_a_slash_is_refused() {
        let deny_admin = {
            let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: admin}\nspec: {action: DENY, rules: [{to: [{operation: {paths: [/admin/*]}}]}]}\n";
            let set = crate::policy::PolicySet::from_yaml_str(yaml, "deny.yaml").unwrap();
            AccessPolicy::compile(&set.for_workload(&crate::policy::Workload::new("details", "default")))
                .unwrap()
        };
        for policy in [deny_admin, AccessPolicy::allow_all()] {
            let guard = Guard::builder().access_policy(policy).build().unwrap();
            let status = |req: OwnedRequest| match guard.check(&req) {
                Check::Ready(Decision::Allow(_)) => 200,
                Check::Ready(Decision::Deny(r)) => r.status(),
                _ => panic!("nothing to wait for"),
            };
            assert_eq!(status(OwnedRequest::get("admin/secret")), 400);
            assert_eq!(status(OwnedRequest::get("/public")), 200);
            assert_eq!(status(OwnedRequest::new("OPTIONS", "*")), 200);
        }
    }

    /// A route policy's refusal that waits (a `CUSTOM` policy asking its
    /// authorizer) is rendered for the request as one decided at once: a
    /// gRPC call's as a `grpc-status` (the request's copy kept while it
    /// waits has no `content-type`), a HEAD request's without a body.
    #[tokio::test]
    async fn a_route_policys_refusal_that_waits_is_rendered_for_the_request() {
        use crate::authz::{CheckRequest, ExternalAuthorizers, ExternalDecision};
        let guard = Guard::builder()
            .authenticator(Fixed(Some("alice"), false))
            .access_policy(AccessPolicy::allow_all())
            .build()
            .unwrap();
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext}\nspec: {action: CUSTOM, provider: {name: ext}, rules: [{}]}\n";
        let set = crate::policy::PolicySet::from_yaml_str(yaml, "route.yaml").unwrap();
        let authorizers =
            ExternalAuthorizers::new().register("ext", Vec::<String>::new(), |_: CheckRequest| async {
                ExternalDecision::Deny
            });
        let refusing = AccessPolicy::compile_with(
            &set.for_workload(&crate::policy::Workload::new("details", "default")),
            &authorizers,
        )
        .unwrap();
        for (req, status, grpc_status, body) in [
            (
                OwnedRequest::new("POST", "/p.S/M").header("content-type", "application/grpc"),
                200,
                Some("7"),
                false,
            ),
            (OwnedRequest::new("HEAD", "/"), 403, None, false),
            (OwnedRequest::get("/"), 403, None, true),
        ] {
            let req = req.header("authorization", "Bearer good");
            let Check::Ready(Decision::Allow(admitted)) = guard.check(&req) else {
                panic!("the guard allows alice");
            };
            let Check::Pending(refusal) =
                crate::adapter::authorize_route(&refusing, Some(admitted.auth()), &req)
            else {
                panic!("the authorizer is asked");
            };
            let Err(reply) = refusal.await else {
                panic!("refused")
            };
            let header = |name: &str| {
                reply
                    .headers()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_owned())
            };
            assert_eq!(
                (
                    reply.status(),
                    header("grpc-status").as_deref(),
                    !reply.body().is_empty()
                ),
                (status, grpc_status, body),
                "{} {}: {reply:?}",
                req.method(),
                req.path()
            );
        }
    }

    /// An authenticator that waits and finds no credential, and sends a
    /// browser's navigation to sign in as `palisade_signin` tells one.
    struct SignsIn;

    impl Authenticator for SignsIn {
        fn challenge(&self) -> Option<String> {
            Some("Bearer realm=\"t\"".into())
        }
        fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
            Check::pending(async { AuthOutcome::NoCredential })
        }
        fn sign_in(&self, req: &dyn RequestHead) -> Option<Reply> {
            let navigation = req.header_str("x-requested-with").is_none()
                && req.header_str("accept").is_some_and(|a| a.contains("text/html"));
            navigation.then(|| Reply::redirect("/login"))
        }
    }

    #[tokio::test]
    async fn a_check_that_waits_tells_a_scripts_request_from_a_navigation() {
        let guard = Guard::builder().authenticator(SignsIn).build().unwrap();
        let page = OwnedRequest::get("/").header("accept", "text/html");
        let Check::Pending(check) = guard.check(&page) else {
            panic!("the check waits");
        };
        assert!(matches!(check.await, Decision::Reply(r) if r.status() == 302));
        // jQuery's marker travels with the request the check keeps.
        let script = page.header("x-requested-with", "XMLHttpRequest");
        match guard.check(&script).await {
            Decision::Deny(r) => assert_eq!(r.status(), 401),
            other => panic!("a script's request is not sent to sign in: {other:?}"),
        }
    }

    /// An authenticator whose check never ends: an issuer that hangs.
    struct Hangs;

    impl Authenticator for Hangs {
        fn challenge(&self) -> Option<String> {
            None
        }
        fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
            Check::pending(std::future::pending())
        }
    }

    #[test]
    fn a_check_dropped_before_its_decision_is_counted_as_cancelled() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        metrics::with_local_recorder(&recorder, || {
            let hangs = Guard::builder().authenticator(Hangs).build().unwrap();
            let Check::Pending(check) = hangs.check(&OwnedRequest::get("/")) else {
                panic!("the check waits");
            };
            // The client goes away.
            drop(check);
            // A check that waits and ends is a decision, not a cancel.
            let waits = Guard::builder()
                .authenticator(Fixed(Some("alice"), true))
                .access_policy(only_alice())
                .build()
                .unwrap();
            let req = OwnedRequest::get("/").header("authorization", "Bearer good");
            let d = rt.block_on(async { waits.check(&req).await });
            let Decision::Allow(admitted) = d else {
                panic!("alice is allowed");
            };
            // A route policy's check that waits (an external authorizer)
            // and is dropped: counted too.
            let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ask}\nspec: {action: CUSTOM, provider: {name: hangs}, rules: [{}]}\n";
            let set = crate::policy::PolicySet::from_yaml_str(yaml, "route.yaml").unwrap();
            let authorizers =
                ExternalAuthorizers::new().register("hangs", [""; 0], |_: crate::authz::CheckRequest| {
                    std::future::pending::<crate::authz::ExternalDecision>()
                });
            let route = AccessPolicy::compile_with(
                &set.for_workload(&crate::policy::Workload::new("details", "default")),
                &authorizers,
            )
            .unwrap();
            let Check::Pending(check) = crate::adapter::authorize_route(&route, Some(admitted.auth()), &req)
            else {
                panic!("the route policy asks its authorizer");
            };
            drop(check);
        });
        let (mut cancelled, mut allowed, mut durations) = (0, 0, 0);
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            match (key.key().name(), value) {
                ("palisade_checks_cancelled_total", DebugValue::Counter(n)) => cancelled += n,
                ("palisade_decisions_total", DebugValue::Counter(n)) => allowed += n,
                ("palisade_check_duration_seconds", DebugValue::Histogram(v)) => durations += v.len(),
                _ => {}
            }
        }
        assert_eq!(cancelled, 2, "the guard's and the route policy's");
        assert_eq!(allowed, 1, "the cancelled checks decided nothing");
        assert_eq!(durations, 2, "the cancelled guard check's time is recorded too");
    }

    #[test]
    fn without_a_recorder_checks_stop_reading_the_clock() {
        let guard = Guard::builder()
            .access_policy(AccessPolicy::allow_all())
            .build()
            .unwrap();
        assert!(
            guard.0.load().value().metrics.timed(),
            "timed until found unheard"
        );
        assert!(matches!(
            guard.check(&OwnedRequest::get("/")),
            Check::Ready(Decision::Allow(_))
        ));
        assert!(
            !guard.0.load().value().metrics.timed(),
            "no recorder heard the first check"
        );
        // With a recorder the durations keep coming (the test above counts
        // one per decision).
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let heard = metrics::with_local_recorder(&recorder, || {
            Guard::builder()
                .access_policy(AccessPolicy::allow_all())
                .build()
                .unwrap()
        });
        for _ in 0..2 {
            let _ = heard.check(&OwnedRequest::get("/"));
        }
        assert!(heard.0.load().value().metrics.timed());
    }
}
