//! The caller's own token, for relaying it.

use std::fmt;
use std::sync::Arc;

/// What the request being served brings for calls on its behalf: its
/// access token, to relay or exchange ([`Credentials::Caller`](crate::Credentials::Caller),
/// [`Credentials::TokenExchange`](crate::Credentials::TokenExchange)), and
/// with the `spnego` feature its Kerberos facts ([`KerberosCaller`](crate::KerberosCaller),
/// for `Credentials::Kerberos`). Put it in an outbound `http::Request`'s
/// extensions for [`CredentialsLayer`](crate::CredentialsLayer), or pass it
/// to [`Upstreams::apply`](crate::Upstreams::apply). Cloning is cheap;
/// `Debug` never prints a token.
#[derive(Clone)]
pub struct CallerToken {
    bearer: Option<Arc<str>>,
    /// The token is bound to its holder's key (a `cnf` claim: a DPoP key,
    /// a client certificate): relayed, it would go without the proof.
    bound: bool,
    /// The issuer (`iss`) of a token a guard verified.
    issuer: Option<Arc<str>>,
    #[cfg(feature = "spnego")]
    kerberos: Option<Arc<crate::KerberosCaller>>,
}

impl CallerToken {
    /// A token as it is (a sign-in session's access token, say).
    #[must_use]
    pub fn new(token: &str) -> Self {
        Self {
            bearer: Some(token.into()),
            bound: false,
            issuer: None,
            #[cfg(feature = "spnego")]
            kerberos: None,
        }
    }

    /// The bearer token a Palisade guard verified for the request being
    /// served: a JWT authenticator's, or a sign-in session's access token
    /// (the [`BearerToken`](palisade_core::authn::BearerToken) attachment).
    /// The one to relay: it is the token that was checked, whether or not
    /// the `Authorization` header was kept for the handler. `None` when no
    /// bearer token authenticated the request. A token bound to its
    /// holder's key (its claims have `cnf`: a DPoP key, an mTLS client
    /// certificate) is not relayed ([`Credentials::Caller`](crate::Credentials::Caller)
    /// refuses it): sent without the key's proof, an upstream that checks
    /// the binding refuses it, and one that does not would take a copy
    /// anyone could send. It may be exchanged.
    #[must_use]
    pub fn from_request(auth: &palisade_core::RequestAuth) -> Option<Self> {
        let bound = auth.identity().is_some_and(|i| i.claim("cnf").is_some());
        let issuer = auth
            .identity()
            .and_then(|i| i.token())
            .map(|t| Arc::from(t.issuer.as_str()));
        auth.attachment::<palisade_core::authn::BearerToken>()
            .map(|t| Self {
                bearer: Some(Arc::clone(t.shared())),
                bound,
                issuer,
                #[cfg(feature = "spnego")]
                kerberos: None,
            })
    }

    /// A caller known to Kerberos only (no bearer token).
    #[cfg(feature = "spnego")]
    #[must_use]
    pub fn from_kerberos(kerberos: crate::KerberosCaller) -> Self {
        Self {
            bearer: None,
            bound: false,
            issuer: None,
            kerberos: Some(Arc::new(kerberos)),
        }
    }

    /// The same caller, with its Kerberos facts.
    #[cfg(feature = "spnego")]
    #[must_use]
    pub fn with_kerberos(mut self, kerberos: crate::KerberosCaller) -> Self {
        self.kerberos = Some(Arc::new(kerberos));
        self
    }

    /// The caller's Kerberos facts, when given.
    #[cfg(feature = "spnego")]
    #[must_use]
    pub fn kerberos(&self) -> Option<&crate::KerberosCaller> {
        self.kerberos.as_deref()
    }

    /// The bearer token of an inbound request's `Authorization` header
    /// (scheme case-insensitive, one header only); `None` without one.
    /// Behind a Palisade guard use [`CallerToken::from_request`] instead:
    /// the header need not be the token the guard checked (a rule may read
    /// tokens from elsewhere), and it is removed unless the rule keeps it.
    #[must_use]
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next()?.to_str().ok()?;
        if values.next().is_some() {
            return None;
        }
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim_start_matches(' ');
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
            .then(|| Self::new(token))
    }

    /// The bearer token, when the caller has one.
    #[must_use]
    pub fn bearer(&self) -> Option<&str> {
        self.bearer.as_deref()
    }

    /// The issuer (`iss`) of the token, when a guard verified it
    /// ([`from_request`](Self::from_request)); a token taken as it is
    /// ([`new`](Self::new), [`from_headers`](Self::from_headers)) has none
    /// known.
    #[must_use]
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// A token as a guard verified it, from `issuer`.
    #[cfg(test)]
    pub(crate) fn verified(token: &str, issuer: &str) -> Self {
        Self {
            issuer: Some(issuer.into()),
            ..Self::new(token)
        }
    }

    /// The bearer token, shared.
    pub(crate) fn shared(&self) -> Option<&Arc<str>> {
        self.bearer.as_ref()
    }

    /// Whether the token is bound to its holder's key
    /// ([`from_request`](Self::from_request)).
    pub(crate) fn is_bound(&self) -> bool {
        self.bound
    }
}

impl fmt::Debug for CallerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallerToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_bearer_token_of_one_authorization_header_is_the_callers() {
        assert_eq!(
            CallerToken::from_headers(&headers(&["Bearer abc.def"]))
                .and_then(|t| t.bearer().map(str::to_owned)),
            Some("abc.def".to_owned())
        );
        assert!(CallerToken::from_headers(&headers(&["bearer  x"])).is_some());
        for bad in [
            &[][..],
            &["Basic YWxpY2U6cHc="],
            &["Bearer "],
            &["Bearer a b"],
            &["Bearer a", "Bearer b"],
        ] {
            assert!(CallerToken::from_headers(&headers(bad)).is_none(), "{bad:?}");
        }
        assert_eq!(
            format!("{:?}", CallerToken::new("secret")),
            "CallerToken(<redacted>)"
        );
    }
}
