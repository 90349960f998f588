//! Outbound credentials for Palisade services: the bearer token a service
//! sends to the hosts it calls, as an Istio sidecar with a token plugin or
//! Spring Security's OAuth2 client would attach it.
//!
//! - [`Credentials::Caller`]: the caller's own access token, relayed (its
//!   bearer header, [`CallerToken::from_headers`], or its sign-in session's
//!   token). A call that needs it and has none is refused before anything
//!   is sent ([`ClientError::NoCallerToken`]).
//! - [`Credentials::TokenExchange`]: a token for the upstream's audience on
//!   behalf of the caller ([`TokenExchange`], RFC 8693 as Keycloak's
//!   standard token exchange): it names the workload in `azp` (Keycloak's
//!   V2) or in an `act` claim (issuers that add it, as the testkit's);
//!   each caller token is exchanged once and kept until shortly before
//!   expiry.
//! - [`Credentials::ClientCredentials`]: the workload's own token from a
//!   client-credentials grant ([`ClientCredentials`]): fetched once and
//!   shared by every call, renewed before it expires by one request while
//!   the others keep using the current token, and kept for as long as it
//!   is valid when a renewal fails (the issuer is down, or refuses it:
//!   tokens it issued stay valid where upstreams check them themselves).
//! - `Credentials::Kerberos` (feature `spnego`): a Kerberos ticket for the
//!   upstream (`Authorization: Negotiate`) as the caller, from the ticket it
//!   delegated or by S4U with the service's own key (`Kerberos`,
//!   `KerberosCaller`; a JWT user only as `S4uUsers` names it).
//! - [`Credentials::None`]: nothing is attached.
//!
//! [`Upstreams`] maps hosts to credentials, in code or from the policy
//! file's `UpstreamCredentials` documents ([`palisade_core::policy::FromPolicy`]).
//! [`CredentialsLayer`] attaches them to `http::Request`s of any tower
//! client by the URI's host (a request whose URI names none is refused:
//! a `Host` header need not be where it goes), or all to one upstream with
//! [`CredentialsLayer::fixed_at`] (a tonic `Channel`, whose requests carry a
//! path only: the layer is told the origin they go to);
//! [`Upstreams::apply`] to a `reqwest::Request` by its host, and
//! [`Credentials::apply_request`] for an upstream known by another name
//! than its URL's host. A host that
//! gets nothing has any `Authorization` it carried removed.
//!
//! ```no_run
//! use palisade_client::{CallerToken, ClientCredentials, Credentials, Upstreams};
//! # async fn demo(inbound: &http::HeaderMap) -> Result<(), Box<dyn std::error::Error>> {
//! let own = ClientCredentials::builder("https://kc.example/realms/istio", "productpage")
//!     .client_secret(std::fs::read_to_string("/etc/palisade/productpage.secret")?.trim_end())
//!     .build()?;
//! let upstreams = Upstreams::builder()
//!     .host("details.default.svc.cluster.local", Credentials::ClientCredentials(own))
//!     .host("reviews.default.svc.cluster.local", Credentials::Caller)
//!     .build();
//! // No redirects: reqwest keeps `Authorization` on a redirect to the same
//! // host and port by another scheme (`https` to `http`: in clear).
//! let client = reqwest::Client::builder()
//!     .redirect(reqwest::redirect::Policy::none())
//!     .build()?;
//! let mut req = client.get("http://reviews.default.svc.cluster.local:9080/reviews/0").build()?;
//! let sent = upstreams.apply(&mut req, CallerToken::from_headers(inbound).as_ref()).await?;
//! let res = client.execute(req).await?;
//! // A cached token the upstream refuses is renewed in the background; a
//! // Kerberos call's answer must prove the upstream (an error if not,
//! // unless `MutualAuthentication::Optional` allows it).
//! sent.answered_by(&res)?;
//! # Ok(()) }
//! ```

mod caller;
mod endpoint;
mod error;
mod exchange;
mod grant;
#[cfg(feature = "spnego")]
mod kerberos;
mod layer;
mod policy;
mod sent;
mod upstreams;

pub use caller::CallerToken;
pub use endpoint::GrantBuilder;
pub use error::ClientError;
pub use exchange::{TokenExchange, TokenExchangeBuilder};
pub use grant::{ClientCredentials, ClientCredentialsBuilder};
#[cfg(feature = "spnego")]
pub use kerberos::{Kerberos, KerberosCaller, MutualAuthentication, S4uUsers};
pub use layer::{CredentialsLayer, CredentialsService};
/// The reqwest whose requests [`Upstreams::apply`] completes and whose
/// responses [`Sent::answered_by`] reads: name its types through here, so
/// that they are the same version (reqwest 0.13).
pub use reqwest;
pub use sent::Sent;
pub use upstreams::{Credentials, Upstreams, UpstreamsBuilder};

/// The `tracing` target of this crate's events.
pub const LOG_TARGET: &str = "palisade::client";
