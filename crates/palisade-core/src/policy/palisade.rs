//! `palisade.dev/v1alpha1`: what Istio's kinds cannot say. `JwtSettings`,
//! `AuthorizationSettings` and `SpnegoSettings` (`KeycloakAdapter` is in
//! [`super::KeycloakAdapterConfig`]).
//!
//! Absent fields keep the defaults of the types they configure (the JWT
//! provider's, the SPNEGO authenticator's); the defaults written below are
//! those, for reading convenience.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use serde::Deserialize;

use super::{DurationSpec, FieldError};
use crate::authz::EscapedSlashes;

/// JWS algorithms a `JwtSettings` document may name.
const ASYMMETRIC_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// `JwtSettings.spec`: what Istio's jwtRules cannot say.
/// Every field is optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtSettingsSpec {
    /// The issuer these settings are for; absent means every issuer.
    pub issuer: Option<String>,
    /// The `realm` of the `WWW-Authenticate: Bearer` challenge.
    pub realm: Option<String>,
    /// Clock leeway for `exp`, `nbf` and `iat` (default `60s`).
    pub leeway: Option<DurationSpec>,
    /// Refuse tokens whose `exp - iat` is longer than this.
    pub max_token_lifetime: Option<DurationSpec>,
    /// Refuse tokens longer than this many bytes before parsing (default 8192).
    pub max_token_size: Option<NonZeroUsize>,
    /// Require this `typ` header, such as `at+jwt` (RFC 9068).
    pub required_type: Option<String>,
    /// Accepted algorithms (default: every asymmetric one): `RS256`,
    /// `RS384`, `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384`, `EdDSA`.
    pub algorithms: Option<Vec<String>>,
    /// JWKS cache time to live when the server sends no `Cache-Control` (default `10m`).
    pub jwks_cache_ttl: Option<DurationSpec>,
    /// Minimum time between two JWKS fetches for unknown key ids (default `10s`).
    pub min_refresh_interval: Option<DurationSpec>,
    /// How long a request with an unknown `kid` waits for a refetch (default `2s`).
    pub unknown_kid_wait: Option<DurationSpec>,
    /// Keep using the last good JWKS this long while the issuer fails (default `24h`).
    pub max_stale: Option<DurationSpec>,
    /// Connect and total timeout of discovery and JWKS fetches (default `5s`).
    pub fetch_timeout: Option<DurationSpec>,
    /// Largest accepted discovery or JWKS body in bytes (default 1 MiB).
    pub max_jwks_size: Option<NonZeroUsize>,
    /// Entries of the verified-token cache (default 10000; 0 turns it off).
    pub verified_token_cache: Option<u64>,
    /// The claim used as the user name (Keycloak's `principal-attribute`).
    pub principal_claim: Option<String>,
    /// A PEM file of extra trust anchors for the issuer's TLS certificate.
    pub ca_file: Option<String>,
}

impl JwtSettingsSpec {
    pub(super) fn check(&self) -> Result<(), FieldError> {
        for (i, a) in self.algorithms.iter().flatten().enumerate() {
            let field = format!("spec.algorithms[{i}]");
            if matches!(a.as_str(), "HS256" | "HS384" | "HS512") {
                return Err((
                    field,
                    "HMAC algorithms are configured in code, with their secret".into(),
                ));
            }
            if !ASYMMETRIC_ALGORITHMS.contains(&a.as_str()) {
                return Err((
                    field,
                    format!(
                        "unknown algorithm `{a}`, expected one of {}",
                        ASYMMETRIC_ALGORITHMS.join(", ")
                    ),
                ));
            }
        }
        if self.algorithms.as_ref().is_some_and(Vec::is_empty) {
            return Err((
                "spec.algorithms".into(),
                "must not be empty (leave the field out instead)".into(),
            ));
        }
        Ok(())
    }
}

/// `AuthorizationSettings.spec`: what Istio sets in its mesh configuration
/// rather than in policies.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthorizationSettingsSpec {
    /// Istio's `numTrustedProxies`: how many `X-Forwarded-For` hops (from the
    /// right) are trusted proxies, for `remote.ip` and `remoteIpBlocks`.
    /// Default 0: `remote.ip` is the connection's address.
    #[serde(default)]
    pub num_trusted_proxies: Option<usize>,
    /// What `%2F`, `%5C` and `\` in a path do: `KEEP` (the default) or
    /// `REJECT` (400).
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// Debug switch: add an `x-palisade-authz` header saying which policy and
    /// rule decided. Off by default; never on in production.
    #[serde(default)]
    pub explain_header: Option<bool>,
}

/// `SpnegoSettings.spec`: Kerberos (HTTP Negotiate) settings for a service
/// started with a keytab.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SpnegoSettingsSpec {
    /// Accept only for this host-based service (`HTTP@www.example.test`).
    pub service: Option<String>,
    /// Accept clients of these realms only; the local name drops the realm.
    #[serde(default)]
    pub allowed_realms: Vec<String>,
    /// At most this many GSSAPI calls at once.
    pub concurrency: Option<NonZeroUsize>,
    /// The largest `Authorization: Negotiate` header (default 65536).
    pub max_header_size: Option<NonZeroUsize>,
    /// Session cookies (mod_auth_gssapi's `GssapiUseSessions`).
    pub session_cookie: Option<SessionCookieSpec>,
    /// Roles by principal (`alice@EXAMPLE.TEST: [admin]`; `*@REALM` for a
    /// whole realm): policies see them as `request.auth.claims[roles]`,
    /// role requirements as realm roles.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Groups by principal, the same way (`request.auth.claims[groups]`).
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
}

impl SpnegoSettingsSpec {
    pub(super) fn check(&self) -> Result<(), FieldError> {
        if let Some(c) = &self.session_cookie {
            if c.keys.is_empty() {
                return Err(("spec.sessionCookie.keys".into(), "give at least one key".into()));
            }
            for (i, k) in c.keys.iter().enumerate() {
                if c.keys[..i].iter().any(|o| o.id == k.id) {
                    return Err((
                        format!("spec.sessionCookie.keys[{i}].id"),
                        format!("key id {} is given twice", k.id),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `SpnegoSettings.spec.sessionCookie`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SessionCookieSpec {
    /// The cookie name (default `palisade_session`).
    pub name: Option<String>,
    /// The keys, newest first: new cookies use the first, all are read.
    pub keys: Vec<SessionKeySpec>,
    /// The longest a cookie lives (default `1h`; never past the ticket).
    pub max_age: Option<DurationSpec>,
    /// Send the cookie over plain HTTP (no `Secure`): development only.
    #[serde(default)]
    pub insecure_over_http: bool,
}

/// One session key: an id and a file holding 32 bytes (raw, hex or base64).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SessionKeySpec {
    /// 0-255, carried in the cookie.
    pub id: u8,
    /// The key file.
    pub key_file: String,
}
