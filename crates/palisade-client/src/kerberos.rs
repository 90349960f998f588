//! Kerberos (HTTP Negotiate) to upstreams on the caller's behalf: the
//! ticket the caller delegated, or S4U with the service's own key.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use palisade_core::RequestAuth;
use palisade_spnego::{DelegatedCredential, Impersonator};

use crate::ClientError;

/// What the caller brings for Kerberos calls on its behalf: the ticket it
/// delegated to this service, and the Kerberos principal it is known as
/// (for S4U). Put it in a [`CallerToken`](crate::CallerToken) with
/// [`CallerToken::with_kerberos`](crate::CallerToken::with_kerberos) or
/// [`CallerToken::from_kerberos`](crate::CallerToken::from_kerberos).
/// `Debug` prints no credential.
#[derive(Clone, Default)]
pub struct KerberosCaller {
    delegated: Option<DelegatedCredential>,
    principal: Option<String>,
}

impl fmt::Debug for KerberosCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KerberosCaller")
            .field("delegated", &self.delegated.is_some())
            .field("principal", &self.principal)
            .finish()
    }
}

/// Which JWT users S4U may act for, and the Kerberos principal each is:
/// the tokens of one issuer, the value of one claim the operator names,
/// `@` one realm. Nothing is assumed: a claim a user can choose (a
/// self-registered `preferred_username`, an editable e-mail) would let that
/// user obtain back-end tickets as whoever it names, so name a claim the
/// issuer sets from the directory (Keycloak: the user name of an LDAP- or
/// Kerberos-federated realm with user-name editing and self-registration
/// off, or a mapper that copies the federated `KERBEROS_PRINCIPAL`
/// attribute's user part). Tokens of other issuers are never mapped; for
/// an issuer configured as a pattern (`…/{tenant}/v2.0`), name one
/// tenant's issuer: the pattern itself is no token's `iss`.
///
/// ```
/// use palisade_client::S4uUsers;
/// let users = S4uUsers::new("https://kc.example/realms/corp", "preferred_username", "CORP.EXAMPLE");
/// assert_eq!(users.realm(), "CORP.EXAMPLE");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S4uUsers {
    issuer: String,
    claim: String,
    realm: String,
}

impl S4uUsers {
    /// The users of `issuer` (its `iss`, exactly), each the string value of
    /// its token's `claim` `@` `realm`.
    #[must_use]
    pub fn new(issuer: impl Into<String>, claim: impl Into<String>, realm: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            claim: claim.into(),
            realm: realm.into(),
        }
    }

    /// The issuer whose users are mapped.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The claim that names a user.
    #[must_use]
    pub fn claim(&self) -> &str {
        &self.claim
    }

    /// The Kerberos realm the users are named in.
    #[must_use]
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// `user@REALM` for a token of the issuer whose claim is a plain user
    /// name: printable ASCII without space, `/`, `@` or `\\` (a claim
    /// cannot name an instance such as `alice/admin` or another realm, nor
    /// differ from a directory name only in invisible or look-alike
    /// characters a KDC may fold), else nothing; nothing either when the
    /// issuer or the realm is empty.
    fn principal(&self, token: &palisade_core::TokenClaims) -> Option<String> {
        if self.issuer.is_empty() || !plain(&self.realm) || token.issuer != self.issuer {
            return None;
        }
        let user = token.claims.get(&self.claim)?.as_str()?;
        (plain(user) && user.len() <= 256).then(|| format!("{user}@{}", self.realm))
    }
}

/// Printable ASCII, not empty, without space, `/`, `@` or `\\`.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"/@\\".contains(&b))
}

impl KerberosCaller {
    /// What the guard established for a request: its delegated ticket
    /// (`RequestAuth::attachment::<DelegatedCredential>()`) and its user as a
    /// Kerberos principal: the Kerberos identity's, or, with `s4u_users`, a
    /// JWT user's as [`S4uUsers`] names it (none for a token of another
    /// issuer, or whose claim is missing or not a plain user name).
    #[must_use]
    pub fn from_request(auth: &RequestAuth, s4u_users: Option<&S4uUsers>) -> Self {
        let delegated = auth.attachment::<DelegatedCredential>().cloned();
        let principal = auth
            .identity()
            .and_then(|id| match (id.kerberos(), id.token(), s4u_users) {
                (Some(k), _, _) => Some(k.principal.clone()),
                (None, Some(t), Some(users)) => users.principal(t),
                _ => None,
            });
        Self { delegated, principal }
    }

    /// A caller with this delegated ticket.
    #[must_use]
    pub fn delegated(credential: DelegatedCredential) -> Self {
        Self {
            delegated: Some(credential),
            principal: None,
        }
    }

    /// A caller known as this Kerberos principal (`alice@EXAMPLE.TEST`).
    #[must_use]
    pub fn principal(principal: impl Into<String>) -> Self {
        Self {
            delegated: None,
            principal: Some(principal.into()),
        }
    }

    /// Whether the caller delegated a ticket (calls use it, not S4U).
    #[must_use]
    pub fn has_delegated(&self) -> bool {
        self.delegated.is_some()
    }
}

/// How much a Kerberos call's successful answer must prove of the
/// upstream's identity ([`Kerberos::mutual_authentication`]), named as
/// Python's `requests-kerberos` names its settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MutualAuthentication {
    /// The answer must carry `WWW-Authenticate: Negotiate <token>` made
    /// with the service's key (as Palisade, Apache's mod_auth_gssapi and
    /// IIS send it), or [`Sent::answered`](crate::Sent::answered) fails
    /// with [`ClientError::Unproven`]. The default.
    #[default]
    Required,
    /// For an upstream that never sends the token: an answer without any
    /// Negotiate token (or from another origin, after a redirect) is used
    /// unproven, and said in a warning once a minute; one that carries a
    /// token must still prove, since a token that does not is an
    /// impostor's or a fault. Over plain `http` anyone on the path can then
    /// answer as the upstream: use TLS to the upstream with it.
    Optional,
}

/// [`Credentials::Kerberos`](crate::Credentials::Kerberos): an
/// `Authorization: Negotiate …` ticket for the upstream's host-based service
/// (`HTTP@<host>`, or the one [`Kerberos::service`] names) as the caller:
/// with the ticket the caller delegated when it did, else by protocol
/// transition and constrained delegation (S4U2Self, S4U2Proxy) with the
/// service's own key ([`Kerberos::s4u`]), for a caller known as a Kerberos
/// principal. A caller with neither is refused before anything is sent
/// ([`ClientError::NoCallerToken`]). Each call asks for a new ticket
/// (GSSAPI, on a blocking thread), and gives up after
/// [`Kerberos::kdc_timeout`] (default 5 s) with
/// [`ClientError::Unavailable`]: MIT Kerberos waits about 27 s for a KDC
/// that does not answer, and that wait is the library's, on its blocking
/// thread, not the request's. A KDC that refuses the connection, or whose
/// address does not resolve, is [`ClientError::Unavailable`] at once (an
/// outage), where the KDC's refusal of the user or of the delegation is
/// [`ClientError::Refused`]. So that an outage cannot fill the blocking
/// pool with such waits, at most [`Kerberos::concurrency`] calls run at
/// once (16 by default; a call waits for its turn within the same time,
/// and one that gets none fails with [`ClientError::Unavailable`] saying
/// so), and after a call to a service that timed out in the library,
/// calls to that service fail at once with [`ClientError::Unavailable`]
/// for as long again, asking the KDC nothing. Clones share both.
///
/// The ticket asks the upstream to prove its identity, and a successful
/// answer without that proof is an error ([`Sent`](crate::Sent)), unless
/// [`mutual_authentication`](Self::mutual_authentication) relaxes it for an
/// upstream that never sends one.
#[derive(Clone, Debug)]
pub struct Kerberos {
    service: Option<String>,
    mutual: MutualAuthentication,
    impersonator: Option<Impersonator>,
    kdc_timeout: Duration,
    calls: Arc<tokio::sync::Semaphore>,
    /// How many `calls` holds.
    concurrency: usize,
    /// By service and caller's realm ([`resting_key`]): until when calls
    /// fail at once, after one that timed out.
    resting: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Default for Kerberos {
    fn default() -> Self {
        Self {
            service: None,
            mutual: MutualAuthentication::Required,
            impersonator: None,
            kdc_timeout: Duration::from_secs(5),
            calls: Arc::new(tokio::sync::Semaphore::new(16)),
            concurrency: 16,
            resting: Arc::default(),
        }
    }
}

impl Kerberos {
    /// Delegated tickets only: the ticket-granting tickets callers forward,
    /// which the SPNEGO authenticator keeps only with
    /// [`accept_delegation`](palisade_spnego::SpnegoAuthenticatorBuilder::accept_delegation)
    /// (without it every call fails with [`ClientError::NoCallerToken`]).
    #[must_use]
    pub fn delegation() -> Self {
        Self::default()
    }

    /// Delegated tickets, else S4U with `impersonator` (the service's own
    /// credential, from its client keytab).
    #[must_use]
    pub fn s4u(impersonator: Impersonator) -> Self {
        Self {
            impersonator: Some(impersonator),
            ..Self::default()
        }
    }

    /// How long getting a ticket may take, KDC round trips included
    /// (default 5 s; at most ten years, which `Duration::MAX` is taken
    /// as); then the call fails with [`ClientError::Unavailable`] and is
    /// not sent.
    #[must_use]
    pub fn kdc_timeout(mut self, timeout: Duration) -> Self {
        self.kdc_timeout = timeout.min(palisade_core::syntax::LONGEST_DURATION);
        self
    }

    /// At most this many GSSAPI calls at once (default 16, at least 1):
    /// each holds a thread of the blocking pool until the library returns,
    /// which can be long after the call has timed out.
    #[must_use]
    pub fn concurrency(mut self, calls: usize) -> Self {
        self.concurrency = calls.max(1);
        self.calls = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
        self
    }

    /// Whether the upstream's answers must prove its identity (RFC 4559
    /// §5's mutual authentication): [`MutualAuthentication::Required`] by
    /// default.
    ///
    /// ```
    /// use palisade_client::{Kerberos, MutualAuthentication};
    /// // A back-end that never sends `WWW-Authenticate: Negotiate <token>`
    /// // with its answers: they are used without proof, with a warning.
    /// let legacy = Kerberos::delegation().mutual_authentication(MutualAuthentication::Optional);
    /// # let _ = legacy;
    /// ```
    #[must_use]
    pub fn mutual_authentication(mut self, mutual: MutualAuthentication) -> Self {
        if mutual == MutualAuthentication::Optional {
            // Said once a process; each answer used unproven is said too
            // (once a minute).
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    target: crate::LOG_TARGET,
                    "Kerberos calls made with MutualAuthentication::Optional use answers without the upstream's proof of identity (none sent, or a redirect followed elsewhere): over plain http, anyone on the path can answer them"
                );
            });
        }
        self.mutual = mutual;
        self
    }

    /// Whether the upstream's answers must prove its identity.
    #[must_use]
    pub fn mutual(&self) -> MutualAuthentication {
        self.mutual
    }

    /// The upstream's service name (`HTTP@backend.example.test`), when it
    /// is not `HTTP@` the host the request goes to.
    #[must_use]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// The service it names, if it does.
    pub(crate) fn named_service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// The Negotiate exchange of a call to `host` as `caller`: its
    /// `Authorization` value, and the check of the upstream's answer.
    pub(crate) async fn authorization(
        &self,
        host: Option<&str>,
        caller: Option<&KerberosCaller>,
    ) -> Result<palisade_spnego::Negotiation, ClientError> {
        let service = match (&self.service, host) {
            (Some(s), _) => s.clone(),
            (None, Some(h)) => format!("HTTP@{}", h.trim_start_matches('[').trim_end_matches(']')),
            (None, None) => {
                return Err(ClientError::Config(
                    "Kerberos needs the upstream's host or a service name".into(),
                ));
            }
        };
        let caller = caller.ok_or(ClientError::NoCallerToken)?;
        let work: Box<
            dyn FnOnce() -> Result<palisade_spnego::Negotiation, palisade_spnego::SpnegoError> + Send,
        > = match (&caller.delegated, &caller.principal, &self.impersonator) {
            (Some(d), _, _) => {
                let (d, service) = (d.clone(), service.clone());
                Box::new(move || d.negotiate(&service))
            }
            (None, Some(user), Some(imp)) => {
                let (imp, user, service) = (imp.clone(), user.clone(), service.clone());
                Box::new(move || imp.negotiate(&user, &service))
            }
            _ => return Err(ClientError::NoCallerToken),
        };
        let resting = || self.resting.lock().unwrap_or_else(PoisonError::into_inner);
        let key = resting_key(&service, caller.principal.as_deref());
        if resting().get(&key).is_some_and(|until| Instant::now() < *until) {
            return Err(ClientError::Unavailable(
                "the KDC did not answer a moment ago: no Kerberos ticket is asked for now".into(),
            ));
        }
        // A blocking thread and a timer need a Tokio runtime (with its time
        // driver): without a runtime, an error rather than a panic.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(ClientError::Config(
                "a Kerberos ticket is asked for inside a Tokio runtime only".into(),
            ));
        };
        let deadline = tokio::time::Instant::now() + self.kdc_timeout;
        let calls = self.calls.clone();
        // Whether the call got its turn: a timeout before it is a queue's,
        // not the KDC's.
        let started = Arc::new(AtomicBool::new(false));
        let ticket = {
            let started = started.clone();
            async move {
                // The permit goes with the GSSAPI call, which may outlive
                // this future by far.
                let permit = calls.acquire_owned().await.ok()?;
                started.store(true, Ordering::Relaxed);
                runtime
                    .spawn_blocking(move || {
                        let _held = permit;
                        work()
                    })
                    .await
                    .ok()
            }
        };
        match tokio::time::timeout_at(deadline, ticket).await {
            Ok(Some(Ok(h))) => {
                resting().remove(&key);
                Ok(h)
            }
            // No KDC reachable (refused at once, its name not resolved): an
            // outage, as a KDC that does not answer in time is.
            Ok(Some(Err(e))) if e.is_kdc_unreachable() => Err(ClientError::Unavailable(format!(
                "no Kerberos ticket for the upstream: {e}"
            ))),
            Ok(Some(Err(e))) => Err(ClientError::Refused(format!(
                "no Kerberos ticket for the upstream: {e}"
            ))),
            Ok(None) => Err(ClientError::Unavailable(
                "the Kerberos call did not finish".into(),
            )),
            Err(_) if !started.load(Ordering::Relaxed) => Err(ClientError::Unavailable(format!(
                "no Kerberos call could start within {:?}: all {} are under way",
                self.kdc_timeout, self.concurrency
            ))),
            Err(_) => {
                let mut resting = resting();
                let now = Instant::now();
                if resting.len() >= RESTING_MAX {
                    resting.retain(|_, until| *until > now);
                }
                // Set, not pushed further by the calls that were waiting.
                if resting.len() < RESTING_MAX && resting.get(&key).is_none_or(|until| *until <= now) {
                    resting.insert(key, now + self.kdc_timeout);
                }
                Err(ClientError::Unavailable(format!(
                    "no Kerberos ticket for the upstream within {:?}: is the KDC reachable?",
                    self.kdc_timeout
                )))
            }
        }
    }
}

/// What a call that timed out rests: calls to `service` for callers of the
/// same realm (`alice@EXAMPLE.TEST`'s `EXAMPLE.TEST`; a delegated ticket's
/// caller, of no known realm, its own). A caller of a trusted realm whose
/// KDC does not answer (a ticket for them needs it) holds up that realm's
/// callers, not every user's.
fn resting_key(service: &str, caller: Option<&str>) -> String {
    let realm = caller
        .and_then(|p| p.rsplit_once('@'))
        .map_or("", |(_, realm)| realm);
    format!("{service}\0{realm}")
}

/// The most services remembered as not answered; past it, none more.
const RESTING_MAX: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    /// A KDC that does not answer for one realm's callers rests that
    /// realm's calls to the service only.
    #[test]
    fn a_realm_that_does_not_answer_rests_its_own_callers_only() {
        let key = |caller| resting_key("HTTP@backend.example.test", caller);
        assert_eq!(key(Some("alice@EXAMPLE.TEST")), key(Some("bob@EXAMPLE.TEST")));
        assert_ne!(key(Some("eve@EVIL.TEST")), key(Some("alice@EXAMPLE.TEST")));
        assert_ne!(
            resting_key("HTTP@other.example.test", Some("alice@EXAMPLE.TEST")),
            key(Some("alice@EXAMPLE.TEST"))
        );
    }
    use crate::{CallerToken, Credentials};

    #[test]
    fn only_the_named_issuers_tokens_map_and_only_by_the_named_claim() {
        let users = S4uUsers::new("https://kc.example/realms/corp", "upn", "CORP.EXAMPLE");
        let token = |claims: serde_json::Value| {
            palisade_core::TokenClaims::from_claims(claims.as_object().unwrap().clone())
        };
        let iss = "https://kc.example/realms/corp";
        assert_eq!(
            users.principal(&token(
                serde_json::json!({"iss": iss, "sub": "u1", "upn": "alice"})
            )),
            Some("alice@CORP.EXAMPLE".into())
        );
        // Another issuer the guard trusts: not mapped, whatever it says.
        let other = serde_json::json!({"iss": "https://other.example", "sub": "u1", "upn": "alice"});
        assert_eq!(users.principal(&token(other)), None);
        // The user name a user may choose is not read, nor `sub`.
        let chosen = serde_json::json!({"iss": iss, "sub": "admin", "preferred_username": "admin"});
        assert_eq!(users.principal(&token(chosen)), None);
        // Only a plain name: no instance, realm, escape or control character.
        for bad in [
            "alice/admin",
            "alice@OTHER.REALM",
            "a\\b",
            "a\nb",
            "",
            " alice",
            "al ice",
            "ali\u{200b}ce",
            "ａlice",
        ] {
            let t = token(serde_json::json!({"iss": iss, "sub": "u1", "upn": bad}));
            assert_eq!(users.principal(&t), None, "{bad:?}");
        }
        // An empty issuer or a realm that is not a plain name maps nobody.
        let alice = serde_json::json!({"iss": "", "sub": "u1", "upn": "alice"});
        assert_eq!(
            S4uUsers::new("", "upn", "CORP.EXAMPLE").principal(&token(alice)),
            None
        );
        let alice = serde_json::json!({"iss": iss, "sub": "u1", "upn": "alice"});
        assert_eq!(S4uUsers::new(iss, "upn", "A@B").principal(&token(alice)), None);
        let not_text = serde_json::json!({"iss": iss, "sub": "u1", "upn": ["alice"]});
        assert_eq!(users.principal(&token(not_text)), None);
    }

    #[tokio::test]
    async fn a_caller_without_a_ticket_or_a_principal_s4u_can_use_is_refused_before_any_call() {
        let delegation = Kerberos::delegation();
        let refused = |r: Result<palisade_spnego::Negotiation, ClientError>| {
            matches!(r, Err(ClientError::NoCallerToken))
        };
        assert!(refused(delegation.authorization(Some("b.example"), None).await));
        // A principal needs S4U, which delegation-only credentials lack.
        let alice = KerberosCaller::principal("alice@EXAMPLE.TEST");
        assert!(refused(
            delegation.authorization(Some("b.example"), Some(&alice)).await
        ));
        assert!(matches!(
            delegation.authorization(None, Some(&alice)).await,
            Err(ClientError::Config(_))
        ));
        // Relaying needs a bearer token: a Kerberos-only caller has none.
        let kerberos_only = CallerToken::from_kerberos(alice);
        assert!(matches!(
            Credentials::Caller.authorization(Some(&kerberos_only)).await,
            Err(ClientError::NoCallerToken)
        ));
        assert_eq!(
            format!("{:?}", kerberos_only.kerberos()),
            "Some(KerberosCaller { delegated: false, principal: Some(\"alice@EXAMPLE.TEST\") })"
        );
    }
}
