//! Why no credential could be attached, or an answer is not to be used.

/// Why an outbound call got no credential, or its answer is not to be
/// used. Messages never hold a token or a secret.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The upstream needs the caller's token and the request being served
    /// has none: nothing was sent.
    #[error("the upstream needs the caller's token, and there is none")]
    NoCallerToken,
    /// The upstream is to get the caller's token as it is
    /// (`Credentials::Caller`), and that token is bound to the caller's
    /// key (a `cnf` claim: DPoP, an mTLS client certificate): relayed
    /// without the key's proof it would be refused, or taken as a bearer
    /// token anyone holding a copy could send. Nothing was sent; exchange
    /// the token (`Credentials::TokenExchange`) for such callers.
    #[error("the caller's token is bound to the caller's key and cannot be relayed; exchange it instead")]
    CallerTokenBound,
    /// The issuer refused to grant a token (its OAuth error code).
    #[error("the issuer refused the token request: {0}")]
    Refused(String),
    /// The issuer cannot be reached or answered nonsense, and no valid
    /// token is at hand; or, for a token exchange, too many exchanges are
    /// under way (`max_concurrent_calls` and eight times as many waiting),
    /// or no turn came within one call's timeout.
    #[error("the issuer is unavailable: {0}")]
    Unavailable(String),
    /// A setting that cannot work; the message names it.
    #[error("outbound credentials: {0}")]
    Config(String),
    /// The upstream did not prove its identity as a Kerberos call asks it
    /// to (no mutual-authentication token, or one that does not check; an
    /// answer from another origin, after a redirect): its answer must not
    /// be used. (`MutualAuthentication::Optional` allows an answer with no
    /// token, or from another origin; a token that does not check is this
    /// error still.)
    #[error("the upstream's answer is not authenticated: {0}")]
    Unproven(String),
    /// A gRPC call's deadline (`grpc-timeout`) passed while its credential
    /// was being got: nothing was sent.
    #[error("the call's deadline passed while its credential was being got")]
    DeadlineExceeded,
}

impl ClientError {
    /// The `ClientError` an outbound call failed with, wherever it is in
    /// `error`'s chain: `error` itself (a [`CredentialsLayer`](crate::CredentialsLayer)'s
    /// boxed error), or its source (with the `tonic` feature the layer's
    /// error is a `tonic::Status` whose source it is; a client that wraps
    /// errors keeps it as a source too).
    ///
    /// ```
    /// use palisade_client::ClientError;
    /// let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(ClientError::NoCallerToken);
    /// assert!(matches!(ClientError::of(&*boxed), Some(ClientError::NoCallerToken)));
    /// ```
    #[must_use]
    pub fn of<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e ClientError> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<ClientError>() {
                return Some(found);
            }
            next = e.source();
        }
        None
    }
}
