//! JWT bearer authentication for Palisade: what Keycloak's bearer-only adapter
//! and Istio's `RequestAuthentication` do, in process.
//!
//! - Keys come from the issuer's JWKS (configured, or discovered from
//!   `/.well-known/openid-configuration`), cached, refreshed in the background
//!   before they expire, refetched once (single flight, rate limited) for an
//!   unknown `kid`, and kept through issuer outages.
//! - Every token is checked for signature, `exp`, `iss`, `aud`, a subject
//!   (`sub`, or a `client_id` standing in for it), `nbf` and `iat` when
//!   present, algorithm pinning by the key, forbidden headers (`alg: none`,
//!   `crit`, `b64`, nested and encrypted tokens) and duplicate claims.
//! - Algorithms accepted by default: RS256, RS384, RS512, PS256, PS384,
//!   PS512, ES256, ES384 and EdDSA (Ed25519); not ES512 (P-521). HMAC only
//!   with a secret configured in code, as long as its hash.
//! - Weak keys are skipped when a key set is loaded: RSA under 2048 bits
//!   or with the ROCA fingerprint (CVE-2017-15361).
//! - A verified token is cached, so a repeated token costs a hash lookup.
//!
//! ```no_run
//! use palisade_core::Guard;
//! use palisade_jwt::{JwtAuthenticator, Provider};
//!
//! let jwt = JwtAuthenticator::builder()
//!     .realm("reviews")
//!     .provider(
//!         Provider::builder("https://keycloak.example/realms/shop")
//!             .audience("reviews")
//!             .build()?,
//!     )
//!     .build()?;
//! let guard = Guard::builder().authenticator(jwt).build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod authenticator;
mod body;
mod cache;
mod config;
mod discovery;
pub mod dpop;
mod error;
mod front;
mod introspect;
mod jwks;
mod key_quality;
mod policy;
mod resource;
mod token;

pub use authenticator::{JwtAuthenticator, JwtAuthenticatorBuilder};
// For the workspace's crates that call an issuer (sign-in, the outbound
// client): not part of the API, which exposes no reqwest type.
#[doc(hidden)]
pub use body::body_up_to;
// For the same crates: an issuer's discovery document, read and checked once.
pub use config::{
    ConfigError, DangerousProviderBuilder, FetchSettings, JwksSource, Provider, ProviderBuilder, Tenants,
    TokenSource,
};
#[doc(hidden)]
pub use discovery::{Discovery, DiscoveryError};
pub use error::JwtError;
pub use introspect::{Introspection, IntrospectionAuth};
pub use jsonwebtoken::Algorithm;
pub use resource::ResourceMetadata;
