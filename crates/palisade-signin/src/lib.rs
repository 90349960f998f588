//! Browser sign-in for Palisade: an OpenID Connect relying party, as
//! Keycloak's adapters, Spring Security's `oauth2Login` or Apache
//! mod_auth_openidc do it, in process and through the same guard as bearer
//! tokens.
//!
//! - **The flow**: authorization code with PKCE (S256), `state` bound to the
//!   browser in a short-lived encrypted cookie, `nonce`, the RFC 9207 `iss`
//!   response parameter checked when the issuer advertises it; public and
//!   confidential clients (`client_secret_basic`, `client_secret_post`).
//!   Endpoints come from discovery; ID and logout tokens are checked with
//!   `palisade-jwt`'s key machinery (signature by the issuer's JWKS, `iss`,
//!   `aud`, `exp`; then `nonce`, `azp`, `iat`).
//! - **Who the user is**: the session's access token, read as a bearer
//!   token would be (roles, request principal `ISS/SUB`), so a signed-in
//!   user passes the same `AuthorizationPolicy` as an API caller;
//!   [`AuthMethod::Session`](palisade_core::AuthMethod::Session). An opaque
//!   access token falls back to the ID token's claims.
//! - **Sessions**: stateless, in an AES-256-GCM cookie with key ids (keys
//!   shared by replicas, rotated newest first), split over several cookies
//!   when large; `HttpOnly`, `SameSite=Lax`, `Secure` over HTTPS; a new
//!   session id at every sign-in; idle and absolute timeouts. The access
//!   token is refreshed before it expires, once per session even under
//!   concurrent requests, and once between replicas sharing a store while
//!   the store answers; a refresh refused with `invalid_grant` ends the
//!   session.
//! - **Logout**: at `logoutPath` (here and at the issuer's
//!   `end_session_endpoint`, with `id_token_hint` and
//!   `post_logout_redirect_uri`), and OpenID Connect Back-Channel Logout
//!   1.0. Ended sessions are recorded in a [`SessionStore`](store::SessionStore): in memory by
//!   default, in Redis (feature `redis`) for several replicas.
//!
//! A browser's navigation without a credential to a route that needs one is
//! sent to sign in (302); any other request gets the guard's 401 with its
//! challenges, but one whose session cannot be used now (the session store
//! or the issuer out of reach) gets 503 with `Retry-After`, and a write
//! another origin started, whose cookie is set aside, gets 403. The callback, login, logout and back-channel routes are
//! answered by [`SignIn`] itself, whatever the access policy says.
//!
//! ```no_run
//! use palisade_core::Guard;
//! use palisade_signin::SignIn;
//! use palisade_signin::cookie::CookieKey;
//!
//! let key = CookieKey::from_file("k1", "/etc/palisade/session.key")?;
//! let sign_in = SignIn::builder("https://kc.example/realms/istio", "productpage")
//!     .keys(vec![key])
//!     .build()?;
//! let guard = Guard::builder().authenticator(sign_in).build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
pub mod cookie;
mod flow;
mod policy;
mod provider;
mod session;
pub mod store;

pub use config::{ClientKey, SecretMethod, SignInBuilder, SignInError};
pub use flow::{SignIn, is_navigation};
pub use session::SignedIn;

/// Log target of the sign-in flow.
pub const LOG_TARGET: &str = "palisade::signin";
