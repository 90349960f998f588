//! Users for tests of an application's handlers and policies, without an
//! issuer (feature `test-util`).

use std::collections::HashMap;
use std::fmt;

use crate::authn::{AuthOutcome, Authenticated, Authenticator, RequestHead};
use crate::check::Check;
use crate::error::{ErrorKind, Rejection};
use crate::identity::{Identity, TokenClaims, Verification};

/// The scheme a test request names its user with: `Authorization: Test alice`.
const SCHEME: &str = "Test";

/// An authenticator for tests, as Spring Security's `@WithMockUser`: a
/// request whose `Authorization` header is `Test NAME` is the user
/// registered as `NAME`, and the guard's policies, route policies and
/// extractors answer it as they answer that user in production. A request
/// without the header is anonymous; one naming a user not registered is
/// refused (401, challenge `Test`). Put it in the guard in place of (or
/// beside) the authenticators a test cannot run:
///
/// ```
/// use palisade_core::adapter::Decision;
/// use palisade_core::authn::{OwnedRequest, TestUsers};
/// use palisade_core::authz::{AccessPolicy, Rule};
/// use palisade_core::{Check, Guard};
///
/// let users = TestUsers::new()
///     .with_realm_roles("alice", &["admin"])
///     .with_realm_roles("bob", &[]);
/// // The policy as production has it (here, in code).
/// let policy = AccessPolicy::builder()
///     .allow("admins", [Rule::new().paths(["/admin"]).realm_roles(["admin"])])
///     .build()?;
/// let guard = Guard::builder().authenticator(users).access_policy(policy).build()?;
/// let status = |user: Option<&str>| {
///     let mut req = OwnedRequest::get("/admin");
///     if let Some(user) = user {
///         req = req.header("authorization", format!("Test {user}"));
///     }
///     match guard.check(&req) {
///         Check::Ready(Decision::Allow(_)) => 200,
///         Check::Ready(Decision::Deny(r)) => r.status(),
///         _ => unreachable!(),
///     }
/// };
/// assert_eq!(status(Some("alice")), 200);
/// assert_eq!(status(Some("bob")), 403);
/// assert_eq!(status(None), 401);
/// assert_eq!(status(Some("mallory")), 401);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// It believes a header, so it exists only with the feature `test-util`
/// (which the facade's `test-util` turns on), and says so at warn level when
/// it is made: a service's own build must not have it.
pub struct TestUsers {
    users: HashMap<String, Identity>,
}

impl TestUsers {
    /// No users yet.
    #[must_use]
    pub fn new() -> Self {
        tracing::warn!(
            target: crate::guard::LOG_TARGET,
            "TestUsers: requests name their own user (`Authorization: Test NAME`); for tests only"
        );
        Self {
            users: HashMap::new(),
        }
    }

    /// `name` is `identity`.
    #[must_use]
    pub fn with_user(mut self, name: &str, identity: Identity) -> Self {
        self.users.insert(name.to_owned(), identity);
        self
    }

    /// `name` is the bearer of a token whose payload is `claims` (a JSON
    /// object, as a verified JWT's: `iss`, `sub`, `realm_access`,
    /// `resource_access`, `scope`, any other), read as Palisade reads a
    /// verified token's, so that Istio's `request.auth.*` conditions and
    /// `Identity`'s accessors see what they would see in production. A
    /// value that is not an object is read as an empty one.
    #[must_use]
    pub fn with_claims(self, name: &str, claims: serde_json::Value) -> Self {
        let claims = match claims {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let identity = Identity::from_token(TokenClaims::from_claims(claims), Verification::assertion());
        self.with_user(name, identity)
    }

    /// `name` is the bearer of a Keycloak access token of the issuer
    /// `https://issuer.test` whose `sub` and `preferred_username` are
    /// `name`, with these realm roles (`realm_access.roles`). For other
    /// claims, [`with_claims`](Self::with_claims).
    #[must_use]
    pub fn with_realm_roles(self, name: &str, realm_roles: &[&str]) -> Self {
        let claims = serde_json::json!({
            "iss": "https://issuer.test",
            "sub": name,
            "preferred_username": name,
            "realm_access": {"roles": realm_roles},
        });
        self.with_claims(name, claims)
    }
}

impl Default for TestUsers {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TestUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("TestUsers").field("users", &names).finish()
    }
}

impl Authenticator for TestUsers {
    fn challenge(&self) -> Option<String> {
        Some(SCHEME.to_owned())
    }

    fn authenticate(&self, request: &dyn RequestHead) -> Check<AuthOutcome> {
        let named = request.header_str("authorization").and_then(|v| {
            let (scheme, name) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case(SCHEME).then(|| name.trim())
        });
        Check::Ready(match named {
            None => AuthOutcome::NoCredential,
            Some(name) => match self.users.get(name) {
                Some(identity) => AuthOutcome::Authenticated(Authenticated::new(identity.clone())),
                None => AuthOutcome::Rejected(Rejection::new(
                    ErrorKind::InvalidToken,
                    "no test user of that name",
                    vec![SCHEME.to_owned()],
                )),
            },
        })
    }
}
