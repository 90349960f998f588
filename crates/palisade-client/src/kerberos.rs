//! Kerberos (HTTP Negotiate) to upstreams on the caller's behalf: the
//! ticket the caller delegated, or S4U with the service's own key.

use std::fmt;
use std::time::Duration;

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

impl KerberosCaller {
    /// What the guard established for a request: its delegated ticket
    /// (`RequestAuth::attachment::<DelegatedCredential>()`) and its user as a
    /// Kerberos principal: the Kerberos identity's, or, with `s4u_realm`, a
    /// JWT user's `preferred_username` (else `sub`) `@` that realm, when it
    /// is a plain name (no `/`, `@`, `\\` or control character: a claim
    /// cannot name an instance or another realm). Give `s4u_realm` only when
    /// every issuer the guard trusts names users as that realm does.
    #[must_use]
    pub fn from_request(auth: &RequestAuth, s4u_realm: Option<&str>) -> Self {
        let delegated = auth.attachment::<DelegatedCredential>().cloned();
        let principal = auth
            .identity()
            .and_then(|id| match (id.kerberos(), id.token(), s4u_realm) {
                (Some(k), _, _) => Some(k.principal.clone()),
                // Only a plain user name becomes a principal: no instance
                // (`alice/admin`), realm, escape or control character from
                // a token claim.
                (None, Some(t), Some(realm)) => {
                    let user = t.preferred_username.as_deref().unwrap_or(&t.subject);
                    let plain = !user.is_empty()
                        && user.len() <= 256
                        && !user
                            .chars()
                            .any(|c| matches!(c, '/' | '@' | '\\') || c.is_control());
                    plain.then(|| format!("{user}@{realm}"))
                }
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
/// thread, not the request's.
#[derive(Clone, Debug)]
pub struct Kerberos {
    service: Option<String>,
    impersonator: Option<Impersonator>,
    kdc_timeout: Duration,
}

impl Default for Kerberos {
    fn default() -> Self {
        Self {
            service: None,
            impersonator: None,
            kdc_timeout: Duration::from_secs(5),
        }
    }
}

impl Kerberos {
    /// Delegated tickets only.
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
    /// (default 5 s); then the call fails with [`ClientError::Unavailable`]
    /// and is not sent.
    #[must_use]
    pub fn kdc_timeout(mut self, timeout: Duration) -> Self {
        self.kdc_timeout = timeout;
        self
    }

    /// The upstream's service name (`HTTP@backend.example.test`), when it
    /// is not `HTTP@` the host the request goes to.
    #[must_use]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// The `Negotiate` value for a call to `host` as `caller`.
    pub(crate) async fn authorization(
        &self,
        host: Option<&str>,
        caller: Option<&KerberosCaller>,
    ) -> Result<String, ClientError> {
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
        let ticket = match (&caller.delegated, &caller.principal, &self.impersonator) {
            (Some(d), _, _) => {
                let d = d.clone();
                tokio::task::spawn_blocking(move || d.negotiate_header(&service))
            }
            (None, Some(user), Some(imp)) => {
                let (imp, user) = (imp.clone(), user.clone());
                tokio::task::spawn_blocking(move || imp.negotiate_header(&user, &service))
            }
            _ => return Err(ClientError::NoCallerToken),
        };
        match tokio::time::timeout(self.kdc_timeout, ticket).await {
            Ok(Ok(Ok(h))) => Ok(h),
            Ok(Ok(Err(e))) => Err(ClientError::Refused(format!(
                "no Kerberos ticket for the upstream: {e}"
            ))),
            Ok(Err(_)) => Err(ClientError::Unavailable(
                "the Kerberos call did not finish".into(),
            )),
            Err(_) => Err(ClientError::Unavailable(format!(
                "no Kerberos ticket for the upstream within {:?}: is the KDC reachable?",
                self.kdc_timeout
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CallerToken, Credentials};

    #[tokio::test]
    async fn a_caller_without_a_ticket_or_a_principal_s4u_can_use_is_refused_before_any_call() {
        let delegation = Kerberos::delegation();
        let refused = |r: Result<String, ClientError>| matches!(r, Err(ClientError::NoCallerToken));
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
