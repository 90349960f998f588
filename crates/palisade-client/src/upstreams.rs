//! Which credential goes to which host.

use std::collections::HashMap;
use std::sync::Arc;

use crate::{CallerToken, ClientCredentials, ClientError, TokenExchange};

/// What an outbound call to a host carries.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Credentials {
    /// Nothing.
    #[default]
    None,
    /// The caller's own token, relayed.
    Caller,
    /// The workload's own token.
    ClientCredentials(ClientCredentials),
    /// A token for the upstream on behalf of the caller (RFC 8693).
    TokenExchange(TokenExchange),
    /// A Kerberos ticket for the upstream as the caller (its delegated
    /// ticket, or S4U): `Authorization: Negotiate …`.
    #[cfg(feature = "spnego")]
    Kerberos(crate::Kerberos),
}

impl Credentials {
    /// The `Authorization` header value for a call made while serving a
    /// request whose token is `caller`; `None` when nothing is to be sent.
    /// (`Kerberos` needs the upstream's host unless it names its service:
    /// use [`Upstreams::authorization`].)
    ///
    /// # Errors
    /// [`ClientError::NoCallerToken`] when the caller's token is needed and
    /// there is none; the grant's errors.
    pub async fn authorization(&self, caller: Option<&CallerToken>) -> Result<Option<Arc<str>>, ClientError> {
        self.authorization_to(None, caller).await
    }

    /// [`authorization`](Self::authorization) for a call to `host`.
    pub(crate) async fn authorization_to(
        &self,
        host: Option<&str>,
        caller: Option<&CallerToken>,
    ) -> Result<Option<Arc<str>>, ClientError> {
        let _ = host;
        match self {
            Credentials::None => Ok(None),
            Credentials::Caller => Ok(Some(format!("Bearer {}", bearer(caller)?).into())),
            Credentials::ClientCredentials(c) => c.authorization().await.map(Some),
            Credentials::TokenExchange(x) => {
                let token = caller.ok_or(ClientError::NoCallerToken)?;
                x.authorization(token).await.map(Some)
            }
            #[cfg(feature = "spnego")]
            Credentials::Kerberos(k) => k
                .authorization(host, caller.and_then(CallerToken::kerberos))
                .await
                .map(|h| Some(h.into())),
        }
    }

    /// Sets `headers`' `Authorization` for a call to `host` to
    /// [`authorization`](Self::authorization), or removes it when nothing is
    /// to be sent.
    pub(crate) async fn apply_to(
        &self,
        headers: &mut http::HeaderMap,
        host: Option<&str>,
        caller: Option<&CallerToken>,
    ) -> Result<(), ClientError> {
        let _ = host;
        let value = match self {
            Credentials::None => {
                headers.remove(http::header::AUTHORIZATION);
                return Ok(());
            }
            Credentials::Caller => {
                let mut value =
                    http::HeaderValue::try_from(format!("Bearer {}", bearer(caller)?)).map_err(|_| {
                        ClientError::Config("the caller's token cannot be sent in a header".into())
                    })?;
                value.set_sensitive(true);
                value
            }
            Credentials::ClientCredentials(c) => c.granted().await?.value.clone(),
            Credentials::TokenExchange(x) => {
                let token = caller.ok_or(ClientError::NoCallerToken)?;
                x.granted(token).await?.value.clone()
            }
            #[cfg(feature = "spnego")]
            Credentials::Kerberos(k) => {
                let header = k
                    .authorization(host, caller.and_then(CallerToken::kerberos))
                    .await?;
                let mut value = http::HeaderValue::try_from(header).map_err(|_| {
                    ClientError::Config("the Kerberos ticket cannot be sent in a header".into())
                })?;
                value.set_sensitive(true);
                value
            }
        };
        headers.insert(http::header::AUTHORIZATION, value);
        Ok(())
    }
}

/// The caller's bearer token, or why there is none.
fn bearer(caller: Option<&CallerToken>) -> Result<&str, ClientError> {
    caller
        .and_then(CallerToken::bearer)
        .ok_or(ClientError::NoCallerToken)
}

/// A host as entries and lookups compare it: lower case, an IPv6
/// literal without brackets, no trailing dot.
fn normalize(host: &str) -> String {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Credentials by host: what the workload sends to each host it calls. A
/// host no entry names gets the `*` entry, else nothing.
#[derive(Clone, Debug, Default)]
pub struct Upstreams(Arc<HashMap<String, Credentials>>);

/// Builds [`Upstreams`].
#[derive(Debug, Default)]
#[must_use]
pub struct UpstreamsBuilder(HashMap<String, Credentials>);

impl UpstreamsBuilder {
    /// What calls to `host` carry (a host name as the request's authority
    /// names it, without the port; `*` for every other host). A later entry
    /// for the same host replaces an earlier one.
    pub fn host(mut self, host: impl Into<String>, credentials: Credentials) -> Self {
        self.0.insert(normalize(&host.into()), credentials);
        self
    }

    /// Builds it.
    pub fn build(self) -> Upstreams {
        Upstreams(Arc::new(self.0))
    }
}

impl Upstreams {
    /// Starts an empty map.
    pub fn builder() -> UpstreamsBuilder {
        UpstreamsBuilder::default()
    }

    /// The credentials of calls to `host` (compared without case, an IPv6
    /// literal with or without brackets, a trailing dot or not; no port).
    #[must_use]
    pub fn for_host(&self, host: &str) -> &Credentials {
        self.0
            .get(&normalize(host))
            .or_else(|| self.0.get("*"))
            .unwrap_or(&Credentials::None)
    }

    /// The `Authorization` header value for a call to `uri`.
    ///
    /// # Errors
    /// As [`Credentials::authorization`].
    pub async fn authorization(
        &self,
        uri: &http::Uri,
        caller: Option<&CallerToken>,
    ) -> Result<Option<Arc<str>>, ClientError> {
        let host = uri.host();
        self.for_host(host.unwrap_or_default())
            .authorization_to(host, caller)
            .await
    }

    /// Sets the `Authorization` header of a `reqwest` request for its
    /// host (replacing any), or removes it when the host gets nothing.
    ///
    /// # Errors
    /// As [`Credentials::authorization`]: the request must then not be
    /// sent.
    pub async fn apply(
        &self,
        req: &mut reqwest::Request,
        caller: Option<&CallerToken>,
    ) -> Result<(), ClientError> {
        let host = req.url().host_str().map(str::to_owned);
        self.for_host(host.as_deref().unwrap_or_default())
            .apply_to(req.headers_mut(), host.as_deref(), caller)
            .await
    }
}
