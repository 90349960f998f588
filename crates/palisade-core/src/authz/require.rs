//! Role and scope requirements written in code, as Spring's
//! `@PreAuthorize("hasRole('admin')")` or a Keycloak adapter's role checks.
//!
//! ```
//! use palisade_core::authz::{client_role, realm_role, scope};
//! let editors = realm_role("admin").or(client_role("reviews", "editor"));
//! let writers = editors.and(scope("reviews:write"));
//! assert_eq!(writers.to_string(), "(realm role `admin` or client role `reviews`/`editor`) and scope `reviews:write`");
//! ```
//!
//! A requirement turns into an [`AccessPolicy`](super::AccessPolicy) (one
//! ALLOW rule), the same type a policy file compiles to, so route layers
//! accept either.

use std::borrow::Cow;
use std::fmt;

use crate::identity::Identity;

type Name = Cow<'static, str>;

/// Something the caller's verified identity must satisfy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Requirement {
    /// Any authenticated end user or peer.
    Authenticated,
    /// A Keycloak realm role (`realm_access.roles`).
    RealmRole(Name),
    /// A Keycloak client role (`resource_access.<client>.roles`).
    ClientRole(Name, Name),
    /// An OAuth scope (`scope`, split on spaces).
    Scope(Name),
    /// At least one of these.
    Any(Vec<Requirement>),
    /// All of these.
    All(Vec<Requirement>),
}

/// Any authenticated caller: an end user (a token, a sign-in session, a
/// Kerberos ticket) or a workload known by its mutual-TLS certificate
/// alone, as Spring Security's `authenticated()` admits an X.509 client.
/// For an end user only, ask for a role or scope, or use the guard's
/// default ([`AccessPolicy::require_authenticated`](super::AccessPolicy::require_authenticated),
/// a request principal).
#[must_use]
pub fn authenticated() -> Requirement {
    Requirement::Authenticated
}

/// The Keycloak realm role `role`.
#[must_use]
pub fn realm_role(role: impl Into<Name>) -> Requirement {
    Requirement::RealmRole(role.into())
}

/// The Keycloak client role `role` of `client`.
#[must_use]
pub fn client_role(client: impl Into<Name>, role: impl Into<Name>) -> Requirement {
    Requirement::ClientRole(client.into(), role.into())
}

/// The OAuth scope `scope`.
#[must_use]
pub fn scope(scope: impl Into<Name>) -> Requirement {
    Requirement::Scope(scope.into())
}

impl Requirement {
    /// This or `other`.
    #[must_use]
    pub fn or(self, other: Requirement) -> Requirement {
        match self {
            Requirement::Any(mut v) => {
                v.push(other);
                Requirement::Any(v)
            }
            this => Requirement::Any(vec![this, other]),
        }
    }

    /// This and `other`.
    #[must_use]
    pub fn and(self, other: Requirement) -> Requirement {
        match self {
            Requirement::All(mut v) => {
                v.push(other);
                Requirement::All(v)
            }
            this => Requirement::All(vec![this, other]),
        }
    }

    /// Whether `identity` satisfies this requirement.
    #[must_use]
    pub fn is_met_by(&self, identity: &Identity) -> bool {
        match self {
            Requirement::Authenticated => true,
            Requirement::RealmRole(r) => identity.has_realm_role(r),
            Requirement::ClientRole(c, r) => identity.has_client_role(c, r),
            Requirement::Scope(s) => identity.has_scope(s),
            Requirement::Any(v) => v.iter().any(|r| r.is_met_by(identity)),
            Requirement::All(v) => v.iter().all(|r| r.is_met_by(identity)),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, v: &[Requirement], sep: &str| {
            for (i, r) in v.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                if matches!(r, Requirement::Any(_) | Requirement::All(_)) {
                    write!(f, "({r})")?;
                } else {
                    write!(f, "{r}")?;
                }
            }
            Ok(())
        };
        match self {
            Requirement::Authenticated => f.write_str("authenticated"),
            Requirement::RealmRole(r) => write!(f, "realm role `{r}`"),
            Requirement::ClientRole(c, r) => write!(f, "client role `{c}`/`{r}`"),
            Requirement::Scope(s) => write!(f, "scope `{s}`"),
            Requirement::Any(v) => list(f, v, " or "),
            Requirement::All(v) => list(f, v, " and "),
        }
    }
}

/// A requirement named by a type, for extractors (`Authorized<Admins>`).
///
/// ```
/// use palisade_core::authz::{Requires, Requirement, realm_role};
/// struct Admins;
/// impl Requires for Admins {
///     fn requirement() -> Requirement { realm_role("admin") }
/// }
/// ```
pub trait Requires: Send + Sync + 'static {
    /// The requirement.
    fn requirement() -> Requirement;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{TokenClaims, Verification};

    fn id(realm: &[&str], client: &[(&str, &str)], scopes: &[&str]) -> Identity {
        let mut t = TokenClaims {
            issuer: "i".into(),
            subject: "s".into(),
            realm_roles: realm.iter().map(|s| (*s).to_owned()).collect(),
            ..TokenClaims::default()
        };
        for (c, r) in client {
            t.client_roles
                .entry((*c).to_owned())
                .or_default()
                .push((*r).to_owned());
        }
        t.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        Identity::from_token(t, Verification::assertion())
    }

    #[test]
    fn or_and_combine_as_written() {
        let r = realm_role("admin")
            .or(client_role("reviews", "editor"))
            .and(scope("write"));
        assert!(r.is_met_by(&id(&["admin"], &[], &["write"])));
        assert!(r.is_met_by(&id(&[], &[("reviews", "editor")], &["write"])));
        assert!(!r.is_met_by(&id(&["admin"], &[], &["read"])));
        assert!(!r.is_met_by(&id(&[], &[("details", "editor")], &["write"])));
        assert!(authenticated().is_met_by(&id(&[], &[], &[])));
    }
}
