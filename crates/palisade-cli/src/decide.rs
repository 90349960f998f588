//! Deciding one request as a workload's running guard would: its access
//! policy and JWT authenticator compiled from the file as the services
//! compile them (the JWT authenticator offline), the caller described on
//! the command line given to [`Guard::check`] as an authenticator's
//! verified identity and as the connection's mTLS peer and addresses. No
//! second evaluator: the guard's own code decides, renders 401 or 403, and
//! names the deciding policy and rule.
//!
//! Two parts of a service cannot run offline and have stand-ins: a `CUSTOM`
//! policy's external authorizer (it denies, as one that cannot be reached
//! does) and browser sign-in, whose discovery and sessions need the issuer:
//! its own routes answer as the service answers them for a browser with no
//! sign-in under way ([`SignInRoutes`]).

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use palisade_core::adapter::{Decision, Reply};
use palisade_core::authn::{
    AuthOutcome, Authenticated, Authenticator, ConnectionInfo, OwnedRequest, RequestHead,
};
use palisade_core::authz::{AccessDecision, AccessPolicy, Action, ExternalAuthorizers};
use palisade_core::policy::{PolicyError, PolicySet, Spec, Workload, WorkloadPolicy};
use palisade_core::{AuthMethod, Check, ErrorKind, Guard, Identity, Rejection, Verification};
use palisade_jwt::{JwtAuthenticator, JwtError};
use palisade_mtls::{MtlsMode, SpiffeId};
use palisade_signin::{SignIn, is_navigation};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::Report;
use crate::args::Explain;
use crate::load::Policy;
use crate::workloads::{self, label};

/// A request to decide, and who sends it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Request {
    /// `GET`.
    pub(crate) method: String,
    /// The path and query.
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    /// The claims of a verified token.
    pub(crate) claims: Option<Map<String, Value>>,
    /// The mTLS peer.
    pub(crate) peer: Option<SpiffeId>,
    /// The port the request arrives on (`destination.port`).
    pub(crate) port: Option<u16>,
    /// The caller's address (`source.ip`).
    pub(crate) source_ip: Option<IpAddr>,
}

/// How the service answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The handler is called.
    Allow,
    /// Refused: 401, 403 (or 400 for a malformed request).
    Deny,
    /// Answered by sign-in's own route, whatever the policy says.
    Reply,
}

impl Verdict {
    /// The contract's `decision`: `allow` or `deny`. Sign-in's own routes
    /// are not refused (the policy does not apply to them): `allow`, with
    /// `answered_by` saying who answers.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow | Verdict::Reply => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// What the guard answered.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) verdict: Verdict,
    /// The HTTP status of the answer (the handler's 200 for an allowed
    /// request); for a gRPC call, the status its gRPC status stands for.
    pub(crate) status: u16,
    /// The gRPC status of a refused gRPC call.
    pub(crate) grpc_status: Option<u16>,
    /// The access decision, when the request got as far as the access policy.
    pub(crate) access: Option<AccessDecision>,
    /// Why, in a few words.
    pub(crate) reason: String,
    /// Refused for want of a credential.
    missing_credential: bool,
    /// Who answered in the application's place (`Verdict::Reply`).
    answered_by: Option<&'static str>,
}

impl Outcome {
    /// Who answered an authenticator's reply: sign-in, for a path that is
    /// one of its routes (`sign_in_route`, the route's reason), whatever its
    /// status; otherwise a refusal (JWT's request for a DPoP nonce) is
    /// one, and any other answer is JWT's own route (its protected-resource
    /// metadata, the only other route an authenticator here answers).
    fn answered(mut self, sign_in_route: Option<&str>) -> Self {
        if self.verdict != Verdict::Reply {
            return self;
        }
        match sign_in_route {
            Some(reason) => {
                reason.clone_into(&mut self.reason);
                self.answered_by = Some("sign-in");
            }
            None if self.status >= 400 => self.verdict = Verdict::Deny,
            None => {
                self.answered_by = Some("jwt");
                self.reason = "the JWT authenticator's protected-resource metadata (RFC 9728)".to_owned();
            }
        }
        self
    }

    /// `allow` or `deny`.
    pub(crate) fn decision(&self) -> &'static str {
        self.verdict.as_str()
    }

    /// What `explain` prints.
    pub(crate) fn explained<'a>(&'a self, workload: &Workload, notes: &'a [String]) -> Explained<'a> {
        let access = self.access.as_ref();
        Explained {
            decision: self.decision(),
            status: self.status,
            answered_by: self.answered_by,
            policy: access.and_then(AccessDecision::policy),
            rule: access.and_then(AccessDecision::rule),
            action: access.and_then(AccessDecision::action).map(Action::as_str),
            reason: &self.reason,
            workload: label(workload),
            grpc_status: self.grpc_status,
            dry_run: access.and_then(AccessDecision::dry_run).map(|shadow| Shadow {
                decision: if shadow.would_allow() { "allow" } else { "deny" },
                policy: shadow.policy(),
                rule: shadow.rule(),
            }),
            notes,
        }
    }
}

/// `explain`'s JSON, its fields in this order.
#[derive(Debug, Serialize)]
pub(crate) struct Explained<'a> {
    decision: &'static str,
    status: u16,
    /// Who answers in the application's place (`sign-in` for its own
    /// routes); absent when the application's handler does or the guard
    /// refuses.
    #[serde(skip_serializing_if = "Option::is_none")]
    answered_by: Option<&'static str>,
    policy: Option<&'a str>,
    rule: Option<usize>,
    action: Option<&'static str>,
    reason: &'a str,
    workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run: Option<Shadow<'a>>,
    /// What the answer takes for granted, or what the service does that
    /// cannot be done offline.
    notes: &'a [String],
}

/// What dry-run policies would decide.
#[derive(Debug, Serialize)]
struct Shadow<'a> {
    decision: &'static str,
    policy: Option<&'a str>,
    rule: Option<usize>,
}

/// One workload's guard parts, compiled once: each request gets a guard
/// of these (the access policy shared, so its rule counters add up over
/// every request) and of the caller's identity.
pub(crate) struct Bench {
    pub(crate) workload: Workload,
    pub(crate) access: AccessPolicy,
    jwt: Option<JwtAuthenticator>,
    sign_in: Option<SignInRoutes>,
    /// A document for the workload reads `destination.ip`.
    reads_destination_ip: bool,
    /// A rule for the workload reads the host (`hosts`, `notHosts`).
    reads_hosts: bool,
    /// The workload's mTLS mode when a `PeerAuthentication` sets it, and
    /// the ports its `portLevelMtls` set otherwise.
    mtls: Option<(MtlsMode, Vec<(u16, MtlsMode)>)>,
    /// The workload is a stand-in (the file names none) and one of its JWT
    /// rules gives no audiences: Istio's default, the workload's own host
    /// and service name, is unknown.
    unknown_audience: bool,
}

impl Bench {
    /// Compiles the workload's access policy, JWT authenticator and
    /// browser sign-in, as the services do (`guard_builder_from_policy`),
    /// offline: the authenticator fetches no keys, sign-in is checked and
    /// stood in for ([`SignInRoutes`]). `CUSTOM` policies get a stand-in
    /// authorizer that denies.
    pub(crate) fn compile(set: &PolicySet, workload: Workload) -> Result<Self, PolicyError> {
        let policy = set.for_workload(&workload);
        let access = AccessPolicy::compile_with(&policy, &ExternalAuthorizers::stand_ins(set))?;
        let jwt = JwtAuthenticator::from_policy_offline(&policy)?;
        SignIn::check_policy(&policy)?;
        let sign_in = SignInRoutes::from_policy(&policy);
        let reads_destination_ip = reads_destination_ip(&policy);
        let reads_hosts = reads_hosts(&policy);
        let mtls = match policy.peer_authentications().next() {
            None => None,
            Some(_) => {
                let ports: std::collections::BTreeSet<u16> = policy
                    .peer_authentications()
                    .flat_map(|(_, pa)| pa.port_level_mtls.keys().copied())
                    .collect();
                let modes = ports
                    .into_iter()
                    .map(|port| palisade_mtls::mode_for_port(&policy, port).map(|m| (port, m)))
                    .collect::<Result<Vec<_>, _>>()?;
                // No port is 0: the workload's own mode.
                Some((palisade_mtls::mode_for_port(&policy, 0)?, modes))
            }
        };
        let unknown_audience = workload.service == workloads::ANY
            && policy
                .request_authentications()
                .any(|(_, ra)| ra.jwt_rules.iter().any(|r| r.audiences.is_empty()));
        Ok(Self {
            workload,
            access,
            jwt,
            sign_in,
            reads_destination_ip,
            reads_hosts,
            mtls,
            unknown_audience,
        })
    }

    /// Decides `req` with [`Guard::check`]; `notes` gets what the answer
    /// takes for granted. An error for a caller that cannot be described
    /// so (claims without `iss` when the workload trusts several issuers).
    pub(crate) fn decide(
        &self,
        req: &Request,
        rt: &tokio::runtime::Runtime,
        notes: &mut Vec<String>,
    ) -> Result<Outcome, String> {
        let mut guard = Guard::builder().access_policy(self.access.clone());
        if let Some(jwt) = &self.jwt {
            guard = guard.authenticator(jwt.clone());
        }
        if let Some(claims) = &req.claims
            && let Some(caller) = self.caller(claims.clone(), notes)?
        {
            guard = guard.authenticator(Presented(caller));
        }
        if let Some(sign_in) = &self.sign_in {
            guard = guard.authenticator(sign_in.clone());
        }
        let guard = guard.build().map_err(|e| e.to_string())?;
        let head = Observed::new(self.head(req));
        let decision = match guard.check(&head) {
            Check::Ready(d) => d,
            Check::Pending(fut) => rt.block_on(fut),
        };
        let route = self.sign_in.as_ref().and_then(|s| s.route(head.path()));
        let outcome = outcome(decision).answered(route.as_ref().map(|r| r.reason()));
        let w = label(&self.workload);
        if outcome.access.as_ref().and_then(AccessDecision::action) == Some(Action::Custom) {
            notes.push(format!(
                "{w}: a CUSTOM policy's external authorizer is not asked offline; it is taken to deny"
            ));
        }
        if head.read_local.get() {
            match req.port {
                None => notes.push(format!(
                    "{w}: a rule read the port the request arrived on (ports, notPorts, destination.port or destination.ip), and none was given: it is unknown, as to a guard whose server cannot tell it, and the request is refused as such a guard refuses it; a service knows its port: give it with --port N (`port:` in a case)"
                )),
                Some(_) if self.reads_destination_ip => notes.push(format!(
                    "{w}: destination.ip is read, and it is taken as 0.0.0.0 offline"
                )),
                Some(_) => {}
            }
        }
        // A signed token (three parts): a malformed one is refused here as
        // the service refuses it.
        let bearer = req.headers.iter().any(|(name, value)| {
            let (scheme, token) = value.trim().split_once(' ').unwrap_or_default();
            name.eq_ignore_ascii_case("authorization")
                && (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop"))
                && token.trim().split('.').count() == 3
        });
        if bearer && self.jwt.is_some() {
            notes.push(format!(
                "{w}: the token in --header authorization is read as the service reads it, but no key is fetched offline (only keys written in the file, a rule's `jwks`, are had), so a token signed by a key fetched from `jwksUri` cannot pass here: give its claims with --claims JSON (`claims:` in a case)"
            ));
        }
        if let Some((workload_mode, ports)) = &self.mtls {
            let mode = req
                .port
                .and_then(|p| ports.iter().find(|(q, _)| *q == p))
                .map_or(*workload_mode, |(_, m)| *m);
            match (mode, &req.peer) {
                (MtlsMode::Strict, None) => notes.push(format!(
                    "{w}: its PeerAuthentication makes the port STRICT: a caller without a client certificate is refused at the TLS handshake, before any policy (the answer is the policy's, for a request that reached it); give the caller's with --peer PRINCIPAL (`peer:` in a case)"
                )),
                (MtlsMode::Disable, Some(_)) => notes.push(format!(
                    "{w}: its PeerAuthentication turns mutual TLS off (DISABLE) for the port: no client certificate is asked for, so no request there has the peer --peer gives"
                )),
                _ => {}
            }
        }
        // The host decides when a rule reads it, or where a request with
        // an `Origin` started (another site's, without a host).
        let from_origin = req
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("origin"));
        if head.read_host.get() && head.head.host().is_none() && (self.reads_hosts || from_origin) {
            notes.push(format!(
                "{w}: the request's host was read (a rule's hosts or notHosts, or where a request with an Origin started), and none was given: every HTTP/1.1 and HTTP/2 request carries one, so the service may answer otherwise; give it with --header host:NAME (`headers: {{host: NAME}}` in a case)"
            ));
        }
        if head.read_remote.get() && req.source_ip.is_none() {
            notes.push(format!(
                "{w}: a rule read the caller's address (ipBlocks, notIpBlocks, source.ip, or remoteIpBlocks without a trusted X-Forwarded-For), and none was given: it is unknown, as to a guard whose server cannot tell it, and the request is refused as such a guard refuses it; give it with --source-ip IP (`source_ip:` in a case)"
            ));
        }
        if outcome.status == 403
            && self.jwt.is_none()
            && self.sign_in.is_none()
            && req.claims.is_none()
            && outcome
                .access
                .as_ref()
                .is_some_and(AccessDecision::end_user_could_help)
        {
            notes.push(format!(
                "{w}: the rules want an end user, and no RequestAuthentication, KeycloakAdapter or sign-in applies, so no credential could change the answer: 403, as the service answers; a service with SPNEGO on (`--keytab` in the examples) answers 401 with `Negotiate` instead"
            ));
        }
        if outcome.missing_credential && self.sign_in.is_some() && is_navigation(&head) {
            notes.push(format!(
                "{w}: sign-in is on: the service sends a browser's navigation to sign in (302 to the issuer) rather than answering 401; that redirect needs the issuer's discovery document and is not made offline"
            ));
        }
        Ok(outcome)
    }

    /// The verified identity `claims` stand for, checked and mapped by the
    /// workload's JWT authenticator as it checks and maps a bearer token's
    /// (or its refusal of them); `None` when the workload has no JWT
    /// authenticator, which means its service reads no token.
    fn caller(
        &self,
        mut claims: Map<String, Value>,
        notes: &mut Vec<String>,
    ) -> Result<Option<Caller>, String> {
        let Some(jwt) = &self.jwt else {
            notes.push(format!(
                "{}: the claims are ignored: no RequestAuthentication or KeycloakAdapter applies, so no issuer is configured and the service reads no token; add the issuer's documents with --with FILE (`with:` in a case file)",
                label(&self.workload)
            ));
            return Ok(None);
        };
        if self.unknown_audience {
            return Err("the file names no workload, and a RequestAuthentication without `audiences` accepts the workload's own service name and host, which are then unknown: name the workload (--workload NS/NAME, `workload:` in a case) or give the rule `audiences`".to_owned());
        }
        if !claims.contains_key("iss") {
            let issuers: Vec<&str> = jwt.issuers().collect();
            let [issuer] = issuers.as_slice() else {
                return Err(format!(
                    "the claims have no `iss`, and {} trusts {} issuers ({}): name one",
                    label(&self.workload),
                    issuers.len(),
                    issuers.join(", ")
                ));
            };
            if issuer.contains(palisade_core::syntax::TENANT) {
                return Err(format!(
                    "the claims have no `iss`, and {} trusts the issuer pattern {issuer}: name one of its tenants' issuers",
                    label(&self.workload)
                ));
            }
            claims.insert("iss".into(), Value::from(*issuer));
        }
        if claims.contains_key("cnf") {
            notes.push(format!(
                "{}: the claims bind the token to a key (`cnf`: a client certificate or a DPoP key); that binding is not checked offline",
                label(&self.workload)
            ));
        }
        // Signed and current: that is what the caller described.
        Ok(Some(
            jwt.authenticated_for_verified_claims(claims, Verification::assertion())
                .map_err(|e: JwtError| e.rejection(jwt.realm())),
        ))
    }

    /// The request head: the peer on its connection as the mTLS acceptor
    /// puts it (`palisade_mtls::peer_identity`), and the addresses given.
    fn head(&self, req: &Request) -> OwnedRequest {
        let mut head = OwnedRequest::new(&req.method, &req.target);
        for (name, value) in &req.headers {
            head = head.header(name, value.as_bytes());
        }
        // Always a connection, so that only the rules read the addresses.
        let mut connection = ConnectionInfo::default();
        if let Some(peer) = &req.peer {
            connection.tls = true;
            // The certificate was verified at the handshake: the caller says so.
            connection.peer = Some(Identity::from_peer(peer.peer(), Verification::assertion()));
        }
        connection.local_addr = req
            .port
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        connection.remote_addr = req.source_ip.map(|ip| SocketAddr::new(ip, 0));
        head.connection(connection)
    }
}

/// A request head that records whether the connection's addresses were
/// read: only the access policy's address and port rules read them
/// (`source.ip`, `remote.ip` without a trusted `X-Forwarded-For`,
/// `destination.ip`, `destination.port`).
struct Observed {
    head: OwnedRequest,
    read_local: Cell<bool>,
    read_remote: Cell<bool>,
    read_host: Cell<bool>,
}

impl Observed {
    fn new(head: OwnedRequest) -> Self {
        Self {
            head,
            read_local: Cell::new(false),
            read_remote: Cell::new(false),
            read_host: Cell::new(false),
        }
    }
}

impl RequestHead for Observed {
    fn method(&self) -> &str {
        self.head.method()
    }
    fn path(&self) -> &str {
        self.head.path()
    }
    fn query(&self) -> Option<&str> {
        self.head.query()
    }
    fn host(&self) -> Option<&str> {
        self.read_host.set(true);
        self.head.host()
    }
    fn header_value(&self, name: &str, index: usize) -> Option<&[u8]> {
        self.head.header_value(name, index)
    }
    fn for_each_header<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        self.head.for_each_header(name, f);
    }
    fn header_str(&self, name: &str) -> Option<&str> {
        self.head.header_str(name)
    }
    fn connection(&self) -> Option<&ConnectionInfo> {
        RequestHead::connection(&self.head)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        self.read_remote.set(true);
        self.head.remote_addr()
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        self.read_local.set(true);
        self.head.local_addr()
    }
}

/// Whether a rule for the workload matches the request's host.
fn reads_hosts(policy: &WorkloadPolicy<'_>) -> bool {
    policy.documents().iter().any(|d| match &d.spec {
        Spec::AuthorizationPolicy(p) => p
            .rules
            .iter()
            .flatten()
            .flat_map(|r| r.to.iter().flatten())
            .any(|t| t.operation.hosts.is_some() || t.operation.not_hosts.is_some()),
        _ => false,
    })
}

/// Whether a document for the workload reads `destination.ip`.
fn reads_destination_ip(policy: &WorkloadPolicy<'_>) -> bool {
    const KEY: &str = "destination.ip";
    policy.documents().iter().any(|d| match &d.spec {
        Spec::AuthorizationPolicy(p) => p
            .rules
            .iter()
            .flatten()
            .flat_map(|r| &r.when)
            .any(|c| c.key == KEY),
        Spec::ServiceRole(r) => r.rules.iter().flat_map(|r| &r.constraints).any(|c| c.key == KEY),
        Spec::ServiceRoleBinding(b) => b.subjects.iter().any(|s| s.properties.contains_key(KEY)),
        _ => false,
    })
}

/// What a caller's claims came to: the authenticator's answer (the
/// identity, the headers set from its claims), or the refusal of them.
type Caller = Result<Authenticated, Rejection>;

/// The authenticator of a caller described on the command line: it
/// answers every request with that caller.
struct Presented(Caller);

impl Authenticator for Presented {
    fn challenge(&self) -> Option<String> {
        None
    }

    fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
        Check::Ready(match &self.0 {
            Ok(authenticated) => AuthOutcome::Authenticated(authenticated.clone()),
            Err(rejection) => AuthOutcome::Rejected(rejection.clone()),
        })
    }
}

/// One of sign-in's own routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Callback,
    Login,
    Logout,
    Backchannel,
    Session,
}

impl Route {
    /// The methods it takes, and its answer to them, as
    /// `palisade_signin::SignIn` answers a browser with no sign-in under way
    /// and no session (405 to any other method).
    fn answer(self, method: &str) -> u16 {
        let (methods, status): (&[&str], u16) = match self {
            // Without the login-state cookie of a sign-in under way.
            Route::Callback => (&["GET"], 400),
            // To the issuer's authorization endpoint.
            Route::Login => (&["GET", "HEAD"], 302),
            // To the issuer's end-session endpoint, or postLogoutRedirectUri.
            Route::Logout => (&["GET", "POST"], 302),
            // A logout token cannot be verified offline.
            Route::Backchannel => (&["POST"], 400),
            // No session is read offline.
            Route::Session => (&["GET", "HEAD"], 401),
        };
        if methods.contains(&method) { status } else { 405 }
    }

    fn reason(self) -> &'static str {
        match self {
            Route::Callback => {
                "sign-in's callback (callbackPath), answered whatever the policy says: 400 without the login-state cookie of a sign-in under way in this browser (405 but to GET)"
            }
            Route::Login => {
                "sign-in's login route (loginPath), answered whatever the policy says: 302 to the issuer's authorization endpoint once its discovery document has loaded (503 before; 400 for a return_to off this service; 405 but to GET and HEAD)"
            }
            Route::Logout => {
                "sign-in's logout route (logoutPath), answered whatever the policy says: the session ends, 302 to the issuer's end-session endpoint or to postLogoutRedirectUri (405 but to GET and POST)"
            }
            Route::Backchannel => {
                "sign-in's back-channel logout route (backchannelLogoutPath), answered whatever the policy says: 200 for a valid logout token, which cannot be verified offline, else 400 (405 but to POST)"
            }
            Route::Session => {
                "sign-in's session route (sessionPath), answered whatever the policy says: 200 with the deadlines of the session the cookie holds, which cannot be read offline, else 401 (405 but to GET and HEAD)"
            }
        }
    }
}

/// Browser sign-in's own routes, for a workload with an `OidcLogin` (or a
/// `KeycloakAdapter` that is not bearer-only): the service answers them
/// whatever the access policy says. Offline, sign-in itself cannot be built
/// (it loads the issuer's discovery document), so this stand-in answers
/// them, with [`Route::answer`]'s status, and reads no session.
#[derive(Clone, Debug)]
pub(crate) struct SignInRoutes {
    routes: Vec<(String, Route)>,
    /// Sign-in's challenges (`Bearer`, then `Cookie`), which a guard whose other
    /// authenticators have none answers a request without a credential
    /// with (a 401, not a 403).
    challenge: String,
}

impl SignInRoutes {
    /// The routes of the workload's sign-in document
    /// ([`WorkloadPolicy::sign_in`]); `None` when no document turns
    /// sign-in on, or when the workload's sign-in documents cannot be used
    /// (which the service's start-up and `check` refuse).
    fn from_policy(policy: &WorkloadPolicy<'_>) -> Option<Self> {
        let sign_in = policy.sign_in().ok()??;
        let paths = sign_in.paths();
        Some(Self {
            routes: vec![
                (paths.callback.to_owned(), Route::Callback),
                (paths.login.to_owned(), Route::Login),
                (paths.logout.to_owned(), Route::Logout),
                (paths.backchannel_logout.to_owned(), Route::Backchannel),
            ]
            .into_iter()
            .chain(paths.session.map(|p| (p.to_owned(), Route::Session)))
            .collect(),
            challenge: palisade_core::authn::sign_in_challenge(
                sign_in.client_id(),
                paths.login,
                sign_in.cookie_name(),
            ),
        })
    }

    fn route(&self, path: &str) -> Option<Route> {
        self.routes.iter().find(|(p, _)| p == path).map(|(_, r)| *r)
    }
}

impl Authenticator for SignInRoutes {
    fn challenge(&self) -> Option<String> {
        None
    }

    fn fallback_challenge(&self) -> Option<String> {
        Some(self.challenge.clone())
    }

    fn method(&self) -> Option<AuthMethod> {
        Some(AuthMethod::Session)
    }

    fn authenticate(&self, req: &dyn RequestHead) -> Check<AuthOutcome> {
        Check::Ready(match self.route(req.path()) {
            Some(route) => AuthOutcome::Respond(Reply::new(route.answer(req.method()))),
            None => AuthOutcome::NoCredential,
        })
    }
}

/// The guard's decision, as `explain` and `test` report it.
fn outcome(decision: Decision) -> Outcome {
    let refused = |status: u16, grpc_status: Option<u16>, rejection: Option<&Rejection>| Outcome {
        verdict: Verdict::Deny,
        status,
        grpc_status,
        access: rejection.and_then(Rejection::access).cloned(),
        reason: match rejection {
            Some(r) => r
                .access()
                .map_or_else(|| r.detail().to_owned(), ToString::to_string),
            None => format!("answered {status} by an authenticator"),
        },
        missing_credential: rejection.is_some_and(|r| r.kind() == ErrorKind::MissingCredential),
        answered_by: None,
    };
    match decision {
        Decision::Allow(admission) => {
            let access = admission.auth().access().clone();
            Outcome {
                verdict: Verdict::Allow,
                status: 200,
                grpc_status: None,
                reason: access.to_string(),
                access: Some(access),
                missing_credential: false,
                answered_by: None,
            }
        }
        Decision::Deny(rejection) => refused(rejection.status(), None, Some(&rejection)),
        Decision::Reply(reply) => {
            let grpc = reply
                .headers()
                .find(|(name, _)| *name == "grpc-status")
                .and_then(|(_, v)| v.parse().ok());
            match reply.rejection() {
                Some(rejection) => refused(rejection.status(), grpc, Some(rejection)),
                // An authenticator's own route: sign-in's, here.
                None => Outcome {
                    verdict: Verdict::Reply,
                    grpc_status: grpc,
                    ..refused(reply.status(), grpc, None)
                },
            }
        }
        _ => refused(500, None, None),
    }
}

/// A policy file that does not load, or does not compile for a workload:
/// the error's one line, status 1.
pub(crate) fn unusable(e: &PolicyError, workload: Option<&Workload>) -> Report {
    let line = match workload {
        Some(w) => format!("{e} (for {})", label(w)),
        None => e.to_string(),
    };
    Report {
        err: vec![line],
        status: 1,
        ..Report::default()
    }
}

/// A runtime for the checks that wait (a `CUSTOM` policy's authorizer).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Report> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Report::failure(format!("cannot start a runtime: {e}")))
}

/// `palisade explain`.
pub(crate) fn explain(args: &Explain) -> Report {
    match try_explain(args) {
        Ok(report) | Err(report) => report,
    }
}

fn try_explain(args: &Explain) -> Result<Report, Report> {
    let policy = Policy::load(&args.file, &args.with).map_err(|e| unusable(&e, None))?;
    let set = &policy.set;
    let named = workloads::named(set);
    let mut notes = Vec::new();
    let workload = match &args.workload {
        Some(name) => workloads::resolve(&named, name, &args.labels, &mut notes),
        None => match named.as_slice() {
            [only] => {
                workloads::note_labels(only, &mut notes);
                only.clone()
            }
            _ => {
                return Err(Report::usage(format!(
                    "{} names {} workloads ({}): say which with --workload NS/NAME",
                    args.file.display(),
                    named.len(),
                    named.iter().map(label).collect::<Vec<_>>().join(", ")
                )));
            }
        },
    };
    let rt = runtime()?;
    // What the file and the workload's guard say aloud as it is built (an
    // empty file allowing everything, a claim key that never matches, a
    // relaxation), as `check` shows them: notes, each once.
    let (decided, said) = crate::check::said_while(|| {
        let bench = Bench::compile(set, workload.clone())
            .map_err(|e| unusable(&policy.locate(e), Some(&workload)))?;
        let outcome = bench
            .decide(&args.request, &rt, &mut notes)
            .map_err(|e| Report::usage(format!("--claims: {e}")))?;
        Ok::<_, Report>((bench, outcome))
    });
    let (bench, outcome) = decided?;
    let file = policy.warnings.iter().cloned();
    // Located as errors are: a document `--with` added names its own file.
    let workload_notes = set
        .for_workload(&workload)
        .warnings()
        .into_iter()
        .map(|w| policy.locate(w.into()).to_string());
    for note in file.chain(workload_notes).chain(said) {
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    let json = serde_json::to_string_pretty(&outcome.explained(&bench.workload, &notes))
        .map_err(|e| Report::failure(format!("cannot write the answer: {e}")))?;
    Ok(Report::ok(vec![json]))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const FILE: &str = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  jwtRules: [{issuer: https://kc.example/realms/shop, jwksUri: https://kc.example/certs}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: open-health}
spec:
  rules:
  - to: [{operation: {paths: [/healthz]}}]
  - from: [{source: {requestPrincipals: [\"*\"]}}]
    to: [{operation: {methods: [GET]}}]
  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admins-delete}
spec:
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE]}}]
    when:
    - key: request.auth.claims[realm_access][roles]
      notValues: [admin]
";

    fn decide(req: Request) -> Outcome {
        decide_with(FILE, req, &mut Vec::new())
    }

    /// `req` decided for default/details by `file`; `notes` gets the notes.
    fn decide_with(file: &str, req: Request, notes: &mut Vec<String>) -> Outcome {
        let set = PolicySet::from_yaml_str(file, "p.yaml").unwrap();
        let bench = Bench::compile(&set, Workload::new("details", "default")).unwrap();
        let rt = runtime().unwrap();
        bench.decide(&req, &rt, notes).unwrap()
    }

    fn request(line: &str) -> Request {
        let (method, target) = crate::args::request_line(line).unwrap();
        Request {
            method,
            target,
            ..Request::default()
        }
    }

    fn claims(json: Value) -> Option<Map<String, Value>> {
        json.as_object().cloned()
    }

    #[test]
    fn the_guard_answers_401_when_a_token_could_help_and_403_otherwise() {
        let o = decide(request("GET /list"));
        assert_eq!(
            (o.verdict, o.status, o.access.unwrap().policy()),
            (Verdict::Deny, 401, None)
        );
        let o = decide(request("GET /healthz"));
        assert_eq!((o.verdict, o.status), (Verdict::Allow, 200));
        assert_eq!(o.access.as_ref().unwrap().policy(), Some("default/open-health"));
        assert_eq!(o.access.unwrap().rule(), Some(0));
        let alice = Request {
            claims: claims(json!({"sub": "alice", "aud": "details"})),
            ..request("DELETE /list")
        };
        let o = decide(alice);
        assert_eq!((o.verdict, o.status), (Verdict::Deny, 403));
        assert_eq!(o.access.as_ref().unwrap().policy(), Some("default/admins-delete"));
        assert_eq!(o.reason, "denied by DENY policy default/admins-delete rule 0");
    }

    #[test]
    fn claims_are_mapped_as_a_bearer_tokens_and_foreign_issuers_refused() {
        let admin = Request {
            claims: claims(json!({"sub": "root", "aud": "details", "realm_access": {"roles": ["admin"]}})),
            ..request("DELETE /list")
        };
        let o = decide(admin);
        // Past the DENY policy; no ALLOW rule for DELETE by an end user.
        assert_eq!((o.verdict, o.status), (Verdict::Deny, 403), "{}", o.reason);
        let alice = Request {
            claims: claims(json!({"sub": "alice", "aud": "details"})),
            ..request("GET /list")
        };
        let o = decide(alice);
        assert_eq!((o.verdict, o.access.unwrap().rule()), (Verdict::Allow, Some(1)));
        let foreign = Request {
            claims: claims(json!({"iss": "https://elsewhere", "sub": "mallory"})),
            ..request("GET /list")
        };
        let o = decide(foreign);
        assert_eq!(
            (o.verdict, o.status, o.access.is_none()),
            (Verdict::Deny, 401, true)
        );
        assert_eq!(o.reason, "the token's issuer is not accepted");
    }

    /// The claims reach the policy as a token's would: through the
    /// headers the rule sets from them, and refused when they are
    /// another kind of token's.
    #[test]
    fn claims_set_the_rules_headers_and_another_kinds_are_refused() {
        let file = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  jwtRules:
  - issuer: https://kc.example/realms/shop
    jwksUri: https://kc.example/certs
    outputClaimToHeaders: [{header: x-tier, claim: tier}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-free}
spec:
  action: DENY
  rules:
  - when: [{key: 'request.headers[x-tier]', values: [free]}]
";
        let as_tier = |tier: &str| Request {
            claims: claims(json!({"sub": "alice", "aud": "details", "tier": tier})),
            ..request("GET /list")
        };
        let o = decide_with(file, as_tier("free"), &mut Vec::new());
        assert_eq!((o.verdict, o.status), (Verdict::Deny, 403), "{}", o.reason);
        assert_eq!(o.access.unwrap().policy(), Some("default/no-free"));
        let o = decide_with(file, as_tier("gold"), &mut Vec::new());
        assert_eq!(o.verdict, Verdict::Allow, "{}", o.reason);
        let id_token = Request {
            claims: claims(json!({"sub": "alice", "aud": "details", "typ": "ID"})),
            ..request("GET /list")
        };
        let o = decide_with(file, id_token, &mut Vec::new());
        assert_eq!((o.verdict, o.status), (Verdict::Deny, 401), "{}", o.reason);
    }

    /// What the workload's `PeerAuthentication` does before any policy is
    /// said: no answer is given for a caller the handshake refuses.
    #[test]
    fn the_mtls_mode_is_noted_where_it_refuses_first() {
        let file = format!(
            "{FILE}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  mtls: {{mode: STRICT}}
  portLevelMtls: {{9090: {{mode: DISABLE}}}}
"
        );
        let said = |req: Request| {
            let mut notes = Vec::new();
            decide_with(&file, req, &mut notes);
            notes
        };
        let anonymous = said(request("GET /healthz"));
        assert!(
            anonymous
                .iter()
                .any(|n| n.contains("STRICT") && n.contains("--peer")),
            "{anonymous:?}"
        );
        let peer = || Some(crate::args::peer_principal("cluster.local/ns/default/sa/productpage").unwrap());
        let with_peer = said(Request {
            peer: peer(),
            ..request("GET /healthz")
        });
        assert!(
            !with_peer.iter().any(|n| n.contains("PeerAuthentication")),
            "{with_peer:?}"
        );
        let off = said(Request {
            peer: peer(),
            port: Some(9090),
            ..request("GET /healthz")
        });
        assert!(off.iter().any(|n| n.contains("DISABLE")), "{off:?}");
        let plain = said(Request {
            port: Some(9090),
            ..request("GET /healthz")
        });
        assert!(
            !plain.iter().any(|n| n.contains("PeerAuthentication")),
            "{plain:?}"
        );
    }

    /// Without `iss`, a pattern's text is no issuer: the caller is told
    /// to name a tenant's.
    #[test]
    fn claims_without_iss_under_an_issuer_pattern_are_asked_for_one() {
        let file = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  jwtRules:
  - {issuer: 'https://login.example/{tenant}/v2.0', jwksUri: 'https://login.example/{tenant}/keys', audiences: [details]}
---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {name: tenants}
spec: {issuer: 'https://login.example/{tenant}/v2.0', tenants: [t1]}
";
        let set = PolicySet::from_yaml_str(file, "p.yaml").unwrap();
        let bench = Bench::compile(&set, Workload::new("details", "default")).unwrap();
        let rt = runtime().unwrap();
        let req = Request {
            claims: claims(json!({"sub": "alice", "aud": "details"})),
            ..request("GET /list")
        };
        let e = bench.decide(&req, &rt, &mut Vec::new()).unwrap_err();
        assert!(
            e.contains("the issuer pattern") && e.contains("name one of its tenants' issuers"),
            "{e}"
        );
        let named = Request {
            claims: claims(json!({"iss": "https://login.example/t1/v2.0", "sub": "alice", "aud": "details"})),
            ..request("GET /list")
        };
        let o = bench.decide(&named, &rt, &mut Vec::new()).unwrap();
        assert_eq!(o.verdict, Verdict::Allow, "{}", o.reason);
    }

    #[test]
    fn the_peer_comes_with_the_connection() {
        let peer = Request {
            peer: Some(crate::args::peer_principal("cluster.local/ns/default/sa/productpage").unwrap()),
            ..request("POST /list")
        };
        let o = decide(peer);
        assert_eq!((o.verdict, o.access.unwrap().rule()), (Verdict::Allow, Some(2)));
        let other = Request {
            peer: Some(crate::args::peer_principal("cluster.local/ns/default/sa/ratings").unwrap()),
            ..request("POST /list")
        };
        // No end user, and an ALLOW rule reads one: a token could help.
        let o = decide(other);
        assert_eq!((o.verdict, o.status), (Verdict::Deny, 401));
    }

    #[test]
    fn a_bearer_header_is_read_by_the_workloads_own_authenticator() {
        let garbage = Request {
            headers: vec![("authorization".into(), "Bearer not-a-token".into())],
            ..request("GET /healthz")
        };
        let mut notes = Vec::new();
        let o = decide_with(FILE, garbage, &mut notes);
        assert_eq!((o.verdict, o.status), (Verdict::Deny, 401));
        assert_eq!(o.reason, "the token is malformed");
        assert!(notes.is_empty(), "judged as the service judges it: {notes:?}");
        // A signed token: no key is had offline to judge it; said so.
        let signed = Request {
            headers: vec![(
                "authorization".into(),
                "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into(),
            )],
            ..request("GET /healthz")
        };
        let mut notes = Vec::new();
        decide_with(FILE, signed, &mut notes);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("no key is fetched offline") && n.contains("--claims")),
            "{notes:?}"
        );
    }

    #[test]
    fn grpc_refusals_carry_their_grpc_status() {
        let call = Request {
            headers: vec![("content-type".into(), "application/grpc".into())],
            ..request("POST /bookinfo.ratings.v1.Ratings/GetRatings")
        };
        let o = decide(call);
        assert_eq!(
            (o.verdict, o.status, o.grpc_status),
            (Verdict::Deny, 401, Some(16))
        );
    }

    #[test]
    fn claims_are_checked_as_the_service_checks_a_tokens() {
        for (claims, reason) in [
            (
                json!({"sub": "alice", "aud": "reviews"}),
                "the token is not meant for this service",
            ),
            (json!({"sub": "alice"}), "the token has no `aud` claim"),
            (json!({"aud": "details"}), "the token has no `sub` claim"),
        ] {
            let o = decide(Request {
                claims: claims.as_object().cloned(),
                ..request("GET /healthz")
            });
            // Refused before the policy, as the service refuses the token.
            assert_eq!(
                (o.verdict, o.status, o.access.is_none()),
                (Verdict::Deny, 401, true),
                "{claims}"
            );
            assert_eq!(o.reason, reason);
        }
        // The service's audiences: its host name too, as Istio's default.
        let o = decide(Request {
            claims: claims(
                json!({"sub": "alice", "aud": ["x", "details.default.svc.cluster.local"], "exp": 1}),
            ),
            ..request("GET /list")
        });
        assert_eq!(o.verdict, Verdict::Allow, "{}", o.reason);
    }

    #[test]
    fn claims_are_ignored_when_no_issuer_is_configured_for_the_workload() {
        let file = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: users}
spec:
  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]
";
        let mut notes = Vec::new();
        let o = decide_with(
            file,
            Request {
                claims: claims(json!({"iss": "https://kc.example/realms/shop", "sub": "alice"})),
                ..request("GET /list")
            },
            &mut notes,
        );
        // Anonymous, as the service, which reads no token, sees the caller;
        // and no credential could help it there: 403.
        assert_eq!((o.verdict, o.status), (Verdict::Deny, 403));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with(
                "default/details: the claims are ignored: no RequestAuthentication or KeycloakAdapter applies"
            ),
            "{notes:?}"
        );
        // Without claims: the 403 is said, and the 401 SPNEGO would give.
        let mut notes = Vec::new();
        let o = decide_with(file, request("GET /list"), &mut notes);
        assert_eq!(o.status, 403);
        assert!(
            notes.len() == 1
                && notes[0].contains("no credential could change the answer")
                && notes[0].contains("Negotiate"),
            "{notes:?}"
        );
    }

    const ADDRESSES: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-9080}
spec:
  action: DENY
  rules: [{to: [{operation: {notPorts: [\"9080\"], paths: [\"/admin/*\"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow}
spec:
  rules:
  - to: [{operation: {paths: [/healthz]}}]
  - from: [{source: {ipBlocks: [10.0.0.0/8]}}]
";

    /// The policy name of a guard's refusal when the server gives no
    /// address a rule reads.
    const UNKNOWN: &str = "(the connection's addresses are unknown)";

    #[test]
    fn ports_and_addresses_are_unknown_unless_given_and_a_note_says_so() {
        let decide = |req: Request| {
            let mut notes = Vec::new();
            let o = decide_with(ADDRESSES, req, &mut notes);
            (
                o.verdict,
                o.status,
                o.access.and_then(|a| a.policy().map(str::to_owned)),
                notes,
            )
        };
        // Both addresses given: no note.
        let (verdict, _, _, notes) = decide(Request {
            port: Some(9080),
            source_ip: Some("192.0.2.1".parse().unwrap()),
            ..request("GET /healthz")
        });
        assert_eq!((verdict, notes.len()), (Verdict::Allow, 0), "{notes:?}");
        // The port is unknown: refused, as by a guard whose server cannot
        // tell it (a DENY on `ports` could not be told from one that does
        // not apply).
        let (verdict, status, policy, notes) = decide(Request {
            source_ip: Some("10.1.2.3".parse().unwrap()),
            ..request("GET /admin/users")
        });
        assert_eq!(
            (verdict, status, policy.as_deref()),
            (Verdict::Deny, 403, Some(UNKNOWN))
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("give it with --port N"), "{notes:?}");
        let set = PolicySet::from_yaml_str(ADDRESSES, "p.yaml").unwrap();
        let running = Guard::builder()
            .access_policy(
                AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default"))).unwrap(),
            )
            .build()
            .unwrap();
        let Check::Ready(Decision::Deny(r)) = running.check(&OwnedRequest::get("/admin/users")) else {
            panic!("a guard that cannot tell the port denies too")
        };
        assert_eq!(r.access().and_then(AccessDecision::policy), Some(UNKNOWN));
        // On the port the service listens on.
        let (verdict, _, policy, notes) = decide(Request {
            port: Some(9080),
            source_ip: Some("10.1.2.3".parse().unwrap()),
            ..request("GET /admin/users")
        });
        assert_eq!(
            (verdict, policy.as_deref(), notes.len()),
            (Verdict::Allow, Some("default/allow"), 0),
            "{notes:?}"
        );
        let (verdict, ..) = decide(Request {
            port: Some(8080),
            source_ip: Some("10.1.2.3".parse().unwrap()),
            ..request("GET /admin/users")
        });
        assert_eq!(verdict, Verdict::Deny);
        // The source address unknown: refused the same way.
        let (verdict, status, policy, notes) = decide(Request {
            port: Some(9080),
            ..request("GET /healthz")
        });
        assert_eq!(
            (verdict, status, policy.as_deref()),
            (Verdict::Deny, 403, Some(UNKNOWN))
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("give it with --source-ip IP"), "{notes:?}");
        let (verdict, ..) = decide(Request {
            source_ip: Some("192.0.2.1".parse().unwrap()),
            ..request("GET /list")
        });
        assert_eq!(verdict, Verdict::Deny);
    }

    const SIGN_IN: &str = "apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {name: login}
spec:
  selector: {matchLabels: {app: details}}
  issuer: https://kc.example/realms/shop
  clientId: details
  logoutPath: /bye
  sessionPath: /oauth2/session
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  jwtRules: [{issuer: https://kc.example/realms/shop}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: users}
spec:
  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]
";

    /// Sign-in alone (no JWT rule): the service's 401 with sign-in's
    /// challenges (`Bearer`, then `Cookie`), and its redirect for a browser, as the guard
    /// answers with the real sign-in; not the 403 of a guard no challenge
    /// names.
    #[test]
    fn sign_in_alone_answers_401_and_notes_the_redirect() {
        let (login, rest) = SIGN_IN
            .split_once("---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication")
            .unwrap();
        let policy = rest.split_once("---\n").unwrap().1;
        let file = format!("{login}---\n{policy}");
        let o = decide_with(&file, request("GET /list"), &mut Vec::new());
        assert_eq!((o.verdict, o.status), (Verdict::Deny, 401), "{}", o.reason);
        let mut notes = Vec::new();
        let browser = Request {
            headers: vec![("accept".into(), "text/html".into())],
            ..request("GET /list")
        };
        let o = decide_with(&file, browser, &mut notes);
        assert_eq!(o.status, 401);
        assert!(notes.iter().any(|n| n.contains("sign-in is on")), "{notes:?}");
    }

    #[test]
    fn two_host_headers_are_refused_where_a_policy_reads_hosts_as_the_service_refuses_them() {
        let hosts = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop}
spec:
  selector: {matchLabels: {app: details}}
  rules: [{to: [{operation: {hosts: [shop.example]}}]}]
";
        let with_hosts = |hosts: &[&str]| Request {
            headers: hosts
                .iter()
                .map(|h| ("host".to_owned(), (*h).to_owned()))
                .collect(),
            ..request("GET /list")
        };
        let o = decide_with(hosts, with_hosts(&["shop.example"]), &mut Vec::new());
        assert_eq!((o.verdict, o.status), (Verdict::Allow, 200));
        let o = decide_with(
            hosts,
            with_hosts(&["shop.example", "evil.example"]),
            &mut Vec::new(),
        );
        assert_eq!((o.verdict, o.status), (Verdict::Deny, 400), "{}", o.reason);
    }

    #[test]
    fn another_authenticators_answer_is_its_own_route_or_a_refusal_never_sign_ins() {
        let metadata = format!(
            "{SIGN_IN}---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: metadata}}
spec:
  resourceMetadata: {{resource: https://shop.example/details}}
"
        );
        let o = decide_with(
            &metadata,
            request("GET /.well-known/oauth-protected-resource/details"),
            &mut Vec::new(),
        );
        assert_eq!(
            (o.verdict, o.status, o.answered_by),
            (Verdict::Reply, 200, Some("jwt"))
        );
        // A refusal in an authenticator's own words (a DPoP nonce asked
        // for) is a refusal, not an answer in the application's place.
        let nonce = Reply::problem(401, "use-dpop-nonce", "DPoP nonce required", "a nonce is needed");
        let o = outcome(Decision::Reply(nonce)).answered(None);
        assert_eq!((o.verdict, o.status, o.answered_by), (Verdict::Deny, 401, None));
        // Sign-in's routes are sign-in's, whatever their status.
        let bad_callback = Reply::problem(400, "bad-callback", "Bad callback", "no state");
        let o = outcome(Decision::Reply(bad_callback)).answered(Some("sign-in's callback"));
        assert_eq!((o.verdict, o.answered_by), (Verdict::Reply, Some("sign-in")));
    }

    #[test]
    fn sign_in_routes_are_answered_by_sign_in_whatever_the_policy_says() {
        let decide = |line: &str| decide_with(SIGN_IN, request(line), &mut Vec::new());
        for (line, status) in [
            ("GET /oauth2/callback?code=c&state=s", 400),
            ("POST /oauth2/callback", 405),
            ("GET /login?return_to=/list", 302),
            ("GET /bye", 302),
            ("POST /bye", 302),
            ("POST /oauth2/backchannel-logout", 400),
            ("GET /oauth2/backchannel-logout", 405),
            ("GET /oauth2/session", 401),
            ("POST /oauth2/session", 405),
        ] {
            let o = decide(line);
            assert_eq!(
                (o.verdict, o.status),
                (Verdict::Reply, status),
                "{line}: {}",
                o.reason
            );
            assert!(o.reason.starts_with("sign-in's "), "{line}: {}", o.reason);
        }
        // The default logout path is not one here; the policy decides it.
        let o = decide("GET /logout");
        assert_eq!((o.verdict, o.status), (Verdict::Deny, 401));
        // Sign-in's own routes, even with a token the service refuses.
        let o = decide_with(
            SIGN_IN,
            Request {
                claims: claims(json!({"sub": "alice", "aud": "elsewhere"})),
                ..request("GET /bye")
            },
            &mut Vec::new(),
        );
        assert_eq!(o.verdict, Verdict::Reply);
        // A navigation that needs a credential: the redirect is noted.
        let mut notes = Vec::new();
        let o = decide_with(
            SIGN_IN,
            Request {
                headers: vec![("accept".into(), "text/html".into())],
                ..request("GET /list")
            },
            &mut notes,
        );
        assert_eq!((o.verdict, o.status), (Verdict::Deny, 401));
        assert!(notes.iter().any(|n| n.contains("302 to the issuer")), "{notes:?}");
    }

    /// The stand-in's routes and answers are sign-in's own, where sign-in
    /// answers without its issuer (which is not there).
    #[test]
    fn the_sign_in_stand_in_answers_as_sign_in_does() {
        let real = SignIn::builder("http://127.0.0.1:1/realms/none", "details")
            .session_path("/oauth2/session")
            .build()
            .unwrap();
        let set = PolicySet::from_yaml_str(SIGN_IN, "p.yaml").unwrap();
        let stand_in =
            SignInRoutes::from_policy(&set.for_workload(&Workload::new("details", "default"))).unwrap();
        let rt = runtime().unwrap();
        let answer = |a: &dyn Authenticator, method: &str, path: &str| {
            let outcome = match a.authenticate(&OwnedRequest::new(method, path)) {
                Check::Ready(o) => o,
                Check::Pending(fut) => rt.block_on(fut),
            };
            match outcome {
                AuthOutcome::Respond(reply) => Some(reply.status()),
                _ => None,
            }
        };
        for (method, path) in [
            ("GET", "/oauth2/callback"),
            ("HEAD", "/oauth2/callback"),
            ("POST", "/oauth2/callback"),
            ("POST", "/login"),
            ("GET", "/logout"),
            ("POST", "/logout"),
            ("HEAD", "/logout"),
            ("GET", "/oauth2/backchannel-logout"),
            ("GET", "/oauth2/session"),
            ("HEAD", "/oauth2/session"),
            ("POST", "/oauth2/session"),
            ("GET", "/list"),
        ] {
            let stand_in_path = if path == "/logout" { "/bye" } else { path };
            assert_eq!(
                answer(&stand_in, method, stand_in_path),
                answer(&real, method, path),
                "{method} {path}"
            );
        }
        // Both are sign-in's own routes, whatever they answer.
        assert!(answer(&real, "GET", "/login").is_some());
        assert!(answer(&real, "POST", "/oauth2/backchannel-logout").is_some());
    }
}
