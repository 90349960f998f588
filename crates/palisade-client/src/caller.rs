//! The caller's own token, for relaying it.

use std::fmt;
use std::sync::Arc;

/// The access token of the request being served, to relay to an upstream
/// ([`Credentials::Caller`](crate::Credentials::Caller)). Put it in an
/// outbound `http::Request`'s extensions for [`CredentialsLayer`](crate::CredentialsLayer),
/// or pass it to [`Upstreams::apply`](crate::Upstreams::apply). Cloning is
/// an `Arc` clone; `Debug` never prints the token.
#[derive(Clone, PartialEq, Eq)]
pub struct CallerToken(Arc<str>);

impl CallerToken {
    /// A token as it is (a sign-in session's access token, say).
    #[must_use]
    pub fn new(token: &str) -> Self {
        Self(token.into())
    }

    /// The bearer token of an inbound request's `Authorization` header
    /// (scheme case-insensitive, one header only); `None` without one.
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

    /// The token.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The token, shared.
    pub(crate) fn shared(&self) -> &Arc<str> {
        &self.0
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
            CallerToken::from_headers(&headers(&["Bearer abc.def"])).map(|t| t.as_str().to_owned()),
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
