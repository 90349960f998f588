//! Why a token was refused.

use palisade_core::Rejection;

/// Why a bearer token was refused. The description is fixed text: it never
/// echoes the token, a claim value or a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Longer than the configured cap.
    #[error("the token is too large")]
    TooLarge,
    /// Not three base64url parts of JSON objects.
    #[error("the token is malformed")]
    Malformed,
    /// A JWE.
    #[error("encrypted tokens are not accepted")]
    Encrypted,
    /// `alg: none` or an empty signature.
    #[error("unsigned tokens are not accepted")]
    Unsigned,
    /// `crit` or `b64` in the header.
    #[error("the token uses a header extension that is not supported")]
    CriticalHeader,
    /// `cty: JWT`.
    #[error("nested tokens are not accepted")]
    Nested,
    /// An algorithm outside the provider's allowlist or not matching the key.
    #[error("the token's algorithm is not accepted")]
    AlgorithmNotAllowed,
    /// The same member twice in the header or payload.
    #[error("the token has a duplicate claim")]
    DuplicateClaim,
    /// A required claim is absent.
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong type.
    #[error("the token's `{0}` claim is not valid")]
    InvalidClaim(&'static str),
    /// `iss` is not a configured provider.
    #[error("the token's issuer is not accepted")]
    UnknownIssuer,
    /// The token arrived where its issuer's tokens are not accepted.
    #[error("the token's issuer is not accepted in this location")]
    WrongLocation,
    /// `aud` holds none of the configured audiences.
    #[error("the token is not meant for this service")]
    InvalidAudience,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// `exp - iat` exceeds the configured maximum.
    #[error("the token's lifetime is longer than allowed")]
    LifetimeTooLong,
    /// `typ` is not the required one, or the token says it is another
    /// kind of JWT than an access token (an ID or logout token, a DPoP
    /// proof).
    #[error("the token's type is not accepted")]
    WrongType,
    /// No published key has the token's `kid`.
    #[error("the token's signing key is not known")]
    UnknownKey,
    /// The issuer's keys could not be fetched (and none are cached).
    #[error("the issuer's signing keys are unavailable")]
    KeysUnavailable,
    /// The signature does not verify.
    #[error("the token's signature is not valid")]
    BadSignature,
    /// The key that signed the token is kept to another issuer or tenant
    /// than the token's: its JWK names an `issuer`, as Microsoft's key
    /// sets, one for every tenant, do for keys only one tenant may sign
    /// with.
    #[error("the token's signing key is not one its issuer signs with")]
    KeyNotForIssuer,
    /// More than one token in one request.
    #[error("the request carries more than one token")]
    MultipleTokens,
    /// Introspection (RFC 7662) says the token is not active: revoked,
    /// expired, or unknown to the issuer.
    #[error("the token is not active")]
    Inactive,
    /// The token needs introspection and the endpoint could not be asked
    /// (unreachable, failing, or refusing this service's credentials).
    #[error("the token could not be checked: the issuer's introspection endpoint is unavailable")]
    IntrospectionUnavailable,
    /// A DPoP-bound token (RFC 9449 `cnf.jkt`) sent as a plain bearer token.
    #[error("the token is bound to a DPoP key and needs a DPoP proof")]
    DpopBound,
    /// The DPoP proof that came with the token was refused.
    #[error("{0}")]
    DpopProof(crate::dpop::DpopError),
    /// A token sent with a DPoP proof is not bound to the proof's key (its
    /// `cnf.jkt` names another key, or it has none).
    #[error("the token is not bound to the DPoP proof's key")]
    DpopKeyMismatch,
    /// A certificate-bound token (RFC 8705 `cnf.x5t#S256`) over a connection
    /// without that client certificate.
    #[error("the token is bound to another client certificate")]
    CertificateBinding,
    /// A check of the application's own
    /// ([`ProviderBuilder::check_claims`](crate::ProviderBuilder::check_claims))
    /// refused the token's claims, saying why.
    #[error("{0}")]
    ClaimsRefused(&'static str),
}

impl JwtError {
    /// The answer for this error: 401 `invalid_token`, or 400
    /// `invalid_request` for [`JwtError::MultipleTokens`].
    #[must_use]
    pub fn rejection(&self, realm: &str) -> Rejection {
        match self {
            JwtError::MultipleTokens => Rejection::invalid_request(realm, self.to_string()),
            _ => Rejection::invalid_token(realm, self.to_string()),
        }
        .with_reason(self.reason())
    }

    /// A short fixed name for the error: the `reason` label of
    /// `palisade_authentication_failures_total` (`expired`, `unknown_key`,
    /// `keys_unavailable`, …).
    ///
    /// ```
    /// use palisade_jwt::JwtError;
    /// assert_eq!(JwtError::KeysUnavailable.reason(), "keys_unavailable");
    /// assert_eq!(JwtError::MissingClaim("aud").reason(), "missing_claim");
    /// ```
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "too_large",
            JwtError::Malformed => "malformed",
            JwtError::Encrypted => "encrypted",
            JwtError::Unsigned => "unsigned",
            JwtError::CriticalHeader => "critical_header",
            JwtError::Nested => "nested",
            JwtError::AlgorithmNotAllowed => "algorithm_not_allowed",
            JwtError::DuplicateClaim => "duplicate_claim",
            JwtError::MissingClaim(_) => "missing_claim",
            JwtError::InvalidClaim(_) => "invalid_claim",
            JwtError::UnknownIssuer => "unknown_issuer",
            JwtError::WrongLocation => "wrong_location",
            JwtError::InvalidAudience => "invalid_audience",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::IssuedInFuture => "issued_in_future",
            JwtError::LifetimeTooLong => "lifetime_too_long",
            JwtError::WrongType => "wrong_type",
            JwtError::UnknownKey => "unknown_key",
            JwtError::KeysUnavailable => "keys_unavailable",
            JwtError::BadSignature => "bad_signature",
            JwtError::KeyNotForIssuer => "key_not_for_issuer",
            JwtError::MultipleTokens => "multiple_tokens",
            JwtError::Inactive => "inactive",
            JwtError::IntrospectionUnavailable => "introspection_unavailable",
            JwtError::DpopBound => "dpop_bound",
            JwtError::DpopProof(_) => "dpop_proof",
            JwtError::DpopKeyMismatch => "dpop_key_mismatch",
            JwtError::CertificateBinding => "certificate_binding",
            JwtError::ClaimsRefused(_) => "claims_check",
        }
    }
}
