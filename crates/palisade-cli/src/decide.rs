//! Deciding one request as a workload's running guard would: its access
//! policy and JWT authenticator compiled from the file as the services
//! compile them (the JWT authenticator offline), the caller described on
//! the command line given to [`Guard::check`] as an authenticator's
//! verified identity and as the connection's mTLS peer. No second
//! evaluator: the guard's own code decides, renders 401 or 403, and names
//! the deciding policy and rule.

use std::path::Path;

use palisade_core::adapter::Decision;
use palisade_core::authn::{
    AuthOutcome, Authenticated, Authenticator, ConnectionInfo, OwnedRequest, RequestHead,
};
use palisade_core::authz::{
    AccessDecision, AccessPolicy, Action, CheckRequest, ExternalAuthorizers, ExternalDecision,
};
use palisade_core::policy::{PolicyError, PolicySet, Spec, Workload};
use palisade_core::{Check, Guard, Identity, Rejection, TokenClaims, Verification};
use palisade_jwt::JwtAuthenticator;
use palisade_mtls::SpiffeId;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::Report;
use crate::args::Explain;
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
}

/// What the guard answered.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) allowed: bool,
    /// The HTTP status of the answer (the handler's 200 for an allowed
    /// request); for a gRPC call, the status its gRPC status stands for.
    pub(crate) status: u16,
    /// The gRPC status of a refused gRPC call.
    pub(crate) grpc_status: Option<u16>,
    /// The access decision, when the request got as far as the access policy.
    pub(crate) access: Option<AccessDecision>,
    /// Why, in a few words.
    pub(crate) reason: String,
}

impl Outcome {
    /// `allow` or `deny`.
    pub(crate) fn decision(&self) -> &'static str {
        if self.allowed { "allow" } else { "deny" }
    }

    /// What `explain` prints.
    pub(crate) fn explained(&self, workload: &Workload) -> Explained<'_> {
        let access = self.access.as_ref();
        Explained {
            decision: self.decision(),
            status: self.status,
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
        }
    }
}

/// `explain`'s JSON, its fields in this order.
#[derive(Debug, Serialize)]
pub(crate) struct Explained<'a> {
    decision: &'static str,
    status: u16,
    policy: Option<&'a str>,
    rule: Option<usize>,
    action: Option<&'static str>,
    reason: &'a str,
    workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run: Option<Shadow<'a>>,
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
}

impl Bench {
    /// Compiles the workload's access policy and JWT authenticator, as
    /// the services do (`guard_builder_from_policy`), the authenticator
    /// offline. `CUSTOM` policies get a stand-in authorizer that denies.
    pub(crate) fn compile(set: &PolicySet, workload: Workload) -> Result<Self, PolicyError> {
        let policy = set.for_workload(&workload);
        let access = AccessPolicy::compile_with(&policy, &stand_in_authorizers(set))?;
        let jwt = JwtAuthenticator::from_policy_offline(&policy)?;
        Ok(Self {
            workload,
            access,
            jwt,
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
        if let Some(claims) = &req.claims {
            guard = guard.authenticator(Presented(self.caller(claims.clone(), notes)?));
        }
        let guard = guard.build().map_err(|e| e.to_string())?;
        let head = self.head(req);
        let decision = match guard.check(&head) {
            Check::Ready(d) => d,
            Check::Pending(fut) => rt.block_on(fut),
        };
        let outcome = outcome(decision);
        if outcome.access.as_ref().and_then(AccessDecision::action) == Some(Action::Custom) {
            notes.push(format!(
                "{}: a CUSTOM policy's external authorizer is not asked offline; it is taken to deny",
                label(&self.workload)
            ));
        }
        Ok(outcome)
    }

    /// The verified identity `claims` stand for, mapped by the workload's
    /// JWT authenticator as it maps a bearer token's (or its refusal of
    /// them, for an issuer it does not trust).
    fn caller(&self, mut claims: Map<String, Value>, notes: &mut Vec<String>) -> Result<Caller, String> {
        let Some(jwt) = &self.jwt else {
            notes.push(format!(
                "{}: no RequestAuthentication or KeycloakAdapter applies, so a service with this file reads no token; the claims are taken as a verified token's all the same",
                label(&self.workload)
            ));
            // palisade-jwt's mapping with a provider's defaults.
            let claims = TokenClaims::from_claims(claims);
            return Ok(Ok(Identity::from_token(claims, Verification::assertion())));
        };
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
            claims.insert("iss".into(), Value::from(*issuer));
        }
        // The claims stand for a verified token: that is what the caller asked.
        Ok(jwt
            .identity_for_verified_claims(claims, Verification::assertion())
            .map_err(|e| e.rejection(jwt.realm())))
    }

    /// The request head, with the peer on its connection as the mTLS
    /// acceptor puts it (`palisade_mtls::peer_identity`).
    fn head(&self, req: &Request) -> OwnedRequest {
        let mut head = OwnedRequest::new(&req.method, &req.target);
        for (name, value) in &req.headers {
            head = head.header(name, value.as_bytes());
        }
        if let Some(peer) = &req.peer {
            let mut connection = ConnectionInfo::default();
            connection.tls = true;
            // The certificate was verified at the handshake: the caller says so.
            connection.peer = Some(Identity::from_peer(peer.peer(), Verification::assertion()));
            head = head.connection(connection);
        }
        head
    }
}

/// What a caller's claims came to: an identity, or the refusal of them.
type Caller = Result<Identity, Rejection>;

/// The authenticator of a caller described on the command line: it
/// answers every request with that caller.
struct Presented(Caller);

impl Authenticator for Presented {
    fn challenge(&self) -> Option<String> {
        None
    }

    fn authenticate(&self, _: &dyn RequestHead) -> Check<AuthOutcome> {
        Check::Ready(match &self.0 {
            Ok(identity) => AuthOutcome::Authenticated(Authenticated::new(identity.clone())),
            Err(rejection) => AuthOutcome::Rejected(rejection.clone()),
        })
    }
}

/// A stand-in for each external authorizer the file's `CUSTOM` policies
/// name: the real ones are registered by the service's code and cannot be
/// asked offline. They deny (fail closed, as an authorizer that cannot be
/// reached does).
pub(crate) fn stand_in_authorizers(set: &PolicySet) -> ExternalAuthorizers {
    set.documents()
        .iter()
        .filter_map(|d| match &d.spec {
            Spec::AuthorizationPolicy(p) => p.provider.as_ref().map(|p| p.name.as_str()),
            _ => None,
        })
        .fold(ExternalAuthorizers::new(), |a, name| {
            a.register(name, [""; 0], |_: CheckRequest| async { ExternalDecision::Deny })
        })
}

/// The guard's decision, as `explain` and `test` report it.
fn outcome(decision: Decision) -> Outcome {
    let refused = |status: u16, grpc_status: Option<u16>, rejection: Option<&Rejection>| Outcome {
        allowed: false,
        status,
        grpc_status,
        access: rejection.and_then(Rejection::access).cloned(),
        reason: match rejection {
            Some(r) => r
                .access()
                .map_or_else(|| r.detail().to_owned(), ToString::to_string),
            None => format!("answered {status} by an authenticator"),
        },
    };
    match decision {
        Decision::Allow(admission) => {
            let access = admission.auth().access().clone();
            Outcome {
                allowed: true,
                status: 200,
                grpc_status: None,
                reason: access.to_string(),
                access: Some(access),
            }
        }
        Decision::Deny(rejection) => refused(rejection.status(), None, Some(&rejection)),
        Decision::Reply(reply) => {
            let grpc = reply
                .headers()
                .find(|(name, _)| *name == "grpc-status")
                .and_then(|(_, v)| v.parse().ok());
            let status = reply.rejection().map_or(reply.status(), Rejection::status);
            refused(status, grpc, reply.rejection())
        }
        _ => refused(500, None, None),
    }
}

/// Loads the policy file, for `explain` and `test`.
pub(crate) fn load(file: &Path) -> Result<PolicySet, Report> {
    PolicySet::from_file(file).map_err(|e| Report::usage(e.to_string()))
}

/// A runtime for the checks that wait (a `CUSTOM` policy's authorizer).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Report> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Report::usage(format!("cannot start a runtime: {e}")))
}

/// `palisade explain`.
pub(crate) fn explain(args: &Explain) -> Report {
    match try_explain(args) {
        Ok(report) | Err(report) => report,
    }
}

fn try_explain(args: &Explain) -> Result<Report, Report> {
    let set = load(&args.file)?;
    let named = workloads::named(&set);
    let mut notes = Vec::new();
    let workload = match &args.workload {
        Some(name) => workloads::resolve(&named, name, &mut notes),
        None => match named.as_slice() {
            [only] => only.clone(),
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
    let bench = Bench::compile(&set, workload).map_err(|e| Report::usage(e.to_string()))?;
    let rt = runtime()?;
    let outcome = bench
        .decide(&args.request, &rt, &mut notes)
        .map_err(|e| Report::usage(format!("--claims: {e}")))?;
    let json = serde_json::to_string_pretty(&outcome.explained(&bench.workload))
        .map_err(|e| Report::usage(format!("cannot write the answer: {e}")))?;
    Ok(Report {
        out: vec![json],
        err: notes.into_iter().map(|n| format!("note: {n}")).collect(),
        status: 0,
    })
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
        let set = PolicySet::from_yaml_str(FILE, "p.yaml").unwrap();
        let bench = Bench::compile(&set, Workload::new("details", "default")).unwrap();
        let rt = runtime().unwrap();
        bench.decide(&req, &rt, &mut Vec::new()).unwrap()
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
            (o.allowed, o.status, o.access.unwrap().policy()),
            (false, 401, None)
        );
        let o = decide(request("GET /healthz"));
        assert_eq!((o.allowed, o.status), (true, 200));
        assert_eq!(o.access.as_ref().unwrap().policy(), Some("default/open-health"));
        assert_eq!(o.access.unwrap().rule(), Some(0));
        let alice = Request {
            claims: claims(json!({"sub": "alice"})),
            ..request("DELETE /list")
        };
        let o = decide(alice);
        assert_eq!((o.allowed, o.status), (false, 403));
        assert_eq!(o.access.as_ref().unwrap().policy(), Some("default/admins-delete"));
        assert_eq!(o.reason, "denied by DENY policy default/admins-delete rule 0");
    }

    #[test]
    fn claims_are_mapped_as_a_bearer_tokens_and_foreign_issuers_refused() {
        let admin = Request {
            claims: claims(json!({"sub": "root", "realm_access": {"roles": ["admin"]}})),
            ..request("DELETE /list")
        };
        let o = decide(admin);
        // Past the DENY policy; no ALLOW rule for DELETE by an end user.
        assert_eq!((o.allowed, o.status), (false, 403), "{}", o.reason);
        let alice = Request {
            claims: claims(json!({"sub": "alice"})),
            ..request("GET /list")
        };
        let o = decide(alice);
        assert_eq!((o.allowed, o.access.unwrap().rule()), (true, Some(1)));
        let foreign = Request {
            claims: claims(json!({"iss": "https://elsewhere", "sub": "mallory"})),
            ..request("GET /list")
        };
        let o = decide(foreign);
        assert_eq!((o.allowed, o.status, o.access.is_none()), (false, 401, true));
        assert_eq!(o.reason, "the token's issuer is not accepted");
    }

    #[test]
    fn the_peer_comes_with_the_connection() {
        let peer = Request {
            peer: Some(crate::args::peer_principal("cluster.local/ns/default/sa/productpage").unwrap()),
            ..request("POST /list")
        };
        let o = decide(peer);
        assert_eq!((o.allowed, o.access.unwrap().rule()), (true, Some(2)));
        let other = Request {
            peer: Some(crate::args::peer_principal("cluster.local/ns/default/sa/ratings").unwrap()),
            ..request("POST /list")
        };
        // No end user, and an ALLOW rule reads one: a token could help.
        let o = decide(other);
        assert_eq!((o.allowed, o.status), (false, 401));
    }

    #[test]
    fn a_bearer_header_is_read_by_the_workloads_own_authenticator() {
        let garbage = Request {
            headers: vec![("authorization".into(), "Bearer not-a-token".into())],
            ..request("GET /healthz")
        };
        let o = decide(garbage);
        assert_eq!((o.allowed, o.status), (false, 401));
        assert_eq!(o.reason, "the token is malformed");
    }

    #[test]
    fn grpc_refusals_carry_their_grpc_status() {
        let call = Request {
            headers: vec![("content-type".into(), "application/grpc".into())],
            ..request("POST /bookinfo.ratings.v1.Ratings/GetRatings")
        };
        let o = decide(call);
        assert_eq!((o.allowed, o.status, o.grpc_status), (false, 401, Some(16)));
    }
}
