//! The verified identity of a caller.
//!
//! An [`Identity`] is a proof: it can only be built by code that holds a
//! [`Verification`] assertion, which authenticators create after a credential
//! has been checked. Handlers extract it (see the `axum` and `actix`
//! integrations) and never build it themselves.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};

/// How a caller was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A JWT bearer token (origin authentication).
    Jwt,
    /// A client certificate on a mutual-TLS connection (transport authentication).
    Mtls,
    /// A Kerberos ticket through HTTP Negotiate.
    Spnego,
    /// A browser sign-in session (OpenID Connect authorization code flow):
    /// the session's access token speaks for the user.
    Session,
}

impl AuthMethod {
    /// The lower-case name used in `/whoami` and logs: `jwt`, `mtls`,
    /// `spnego`, `session`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::Mtls => "mtls",
            AuthMethod::Spnego => "spnego",
            AuthMethod::Session => "session",
        }
    }
}

/// The assertion that a credential has been verified.
///
/// Only authenticators should call [`Verification::assertion`], right after the
/// signature, ticket or certificate chain of a credential has been checked.
/// The name is deliberately loud: creating one anywhere else forges identities.
#[derive(Debug)]
pub struct Verification {
    _private: (),
}

impl Verification {
    /// Asserts that the credential being turned into an [`Identity`] was verified.
    #[must_use]
    pub fn assertion() -> Self {
        Self { _private: () }
    }
}

/// What a verified JWT says about its bearer.
#[derive(Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TokenClaims {
    /// `iss`: the issuer, as configured for the provider that verified it
    /// (for an issuer configured as a pattern, the tenant's own issuer,
    /// `{tenant}` filled in).
    pub issuer: String,
    /// `sub`: the subject.
    pub subject: String,
    /// `aud`: the audiences (a string claim becomes one entry).
    pub audiences: Vec<String>,
    /// `azp`: the authorized party (Istio's `request.auth.presenter`).
    pub authorized_party: Option<String>,
    /// Keycloak realm roles (`realm_access.roles`), with those of the
    /// issuer's roles claim where one is configured
    /// ([`add_realm_roles_from`](Self::add_realm_roles_from)).
    pub realm_roles: Vec<String>,
    /// Keycloak client roles (`resource_access.<client>.roles`).
    pub client_roles: BTreeMap<String, Vec<String>>,
    /// `scope`, or else `scp`: a string split on spaces, or an array.
    pub scopes: Vec<String>,
    /// `preferred_username`, or the claim configured as principal attribute.
    pub preferred_username: Option<String>,
    /// `email`.
    pub email: Option<String>,
    /// `exp` as a time.
    pub expires_at: Option<SystemTime>,
    /// Every claim of the payload, as signed but for the roles of a roles
    /// claim, added to `realm_access.roles`.
    pub claims: Map<String, Value>,
    /// The tenant, for an issuer configured as a pattern
    /// (`https://login.microsoftonline.com/{tenant}/v2.0`): what `{tenant}`
    /// stands for in this token's issuer.
    pub tenant: Option<String>,
}

impl TokenClaims {
    /// Reads a JWT payload the way Keycloak's adapters do: `iss`, `sub`
    /// (`client_id` for a token without a subject), `aud`, `azp`, the realm
    /// roles (`realm_access.roles`), the client roles
    /// (`resource_access.<client>.roles`), `scope` (or `scp`),
    /// `preferred_username`, `email` and `exp`; every claim stays in
    /// [`TokenClaims::claims`]. Claims of the wrong type are left empty.
    ///
    /// ```
    /// use palisade_core::TokenClaims;
    /// let claims = serde_json::json!({
    ///     "iss": "https://kc.example/realms/shop", "sub": "u1", "azp": "web",
    ///     "realm_access": {"roles": ["admin"]}, "scope": "openid profile",
    /// });
    /// let t = TokenClaims::from_claims(claims.as_object().unwrap().clone());
    /// assert_eq!(t.realm_roles, ["admin"]);
    /// assert_eq!(t.scopes, ["openid", "profile"]);
    /// assert_eq!(t.authorized_party.as_deref(), Some("web"));
    /// ```
    #[must_use]
    pub fn from_claims(claims: Map<String, Value>) -> Self {
        fn strings(v: Option<&Value>) -> Vec<String> {
            match v {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                Some(Value::String(s)) => vec![s.clone()],
                _ => Vec::new(),
            }
        }
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let mut t = TokenClaims {
            issuer: text("iss").unwrap_or_default(),
            subject: text("sub").or_else(|| text("client_id")).unwrap_or_default(),
            audiences: strings(claims.get("aud")),
            authorized_party: text("azp"),
            realm_roles: strings(claims.get("realm_access").and_then(|r| r.get("roles"))),
            preferred_username: text("preferred_username"),
            email: text("email"),
            ..TokenClaims::default()
        };
        if let Some(Value::Object(resources)) = claims.get("resource_access") {
            t.client_roles = resources
                .iter()
                .map(|(client, access)| (client.clone(), strings(access.get("roles"))))
                .collect();
        }
        // `scope` (RFC 8693, RFC 9068) or `scp` (Okta's array, Microsoft
        // Entra ID's string), each a string of scopes separated by spaces
        // or an array of them.
        let scopes = |v: &Value| match v {
            Value::String(s) => Some(
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            Value::Array(_) => Some(strings(Some(v))),
            _ => None,
        };
        t.scopes = claims
            .get("scope")
            .and_then(scopes)
            .or_else(|| claims.get("scp").and_then(scopes))
            .unwrap_or_default();
        t.expires_at = claims
            .get("exp")
            .and_then(Value::as_f64)
            .filter(|e| *e >= 0.0 && e.is_finite())
            .map(|e| std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(e.min(1e11)));
        t.claims = claims;
        t
    }

    /// Adds the roles the top-level claim `claim` holds to the realm roles,
    /// for an issuer that carries its roles elsewhere than Keycloak's
    /// `realm_access.roles`: `groups` (Okta, Keycloak's group mapper),
    /// `roles` (Microsoft Entra ID), `cognito:groups`, a namespaced claim
    /// (Auth0), as Spring Security's `authorities-claim-name` does. The
    /// claim may be an array of strings, one string (one role, spaces and
    /// all: `Domain Admins`), or an object whose keys are the roles where
    /// their values are objects or `true` (ZITADEL's project roles, a map
    /// of flags); any other value, and an empty name, adds none. Keycloak's
    /// own claims (`realm_access`, `resource_access`) are not role claims:
    /// builders refuse them ([`crate::syntax::roles_claim_refusal`]).
    ///
    /// The roles are added where every check reads them:
    /// [`realm_roles`](Self::realm_roles) (`Identity::has_realm_role`, a
    /// `realm_role` requirement) and the claim
    /// `realm_access.roles` of [`claims`](Self::claims), which policies
    /// read as `request.auth.claims[realm_access][roles]` (as a Kerberos
    /// caller's mapped roles are). Every other claim stays as the issuer
    /// signed it, the role claim itself included.
    ///
    /// ```
    /// use palisade_core::TokenClaims;
    /// let claims = serde_json::json!({
    ///     "iss": "https://login.example", "sub": "u1",
    ///     "realm_access": {"roles": ["user"]}, "groups": ["admin", "user"],
    /// });
    /// let mut t = TokenClaims::from_claims(claims.as_object().unwrap().clone());
    /// t.add_realm_roles_from("groups");
    /// assert_eq!(t.realm_roles, ["user", "admin"]);
    /// assert_eq!(t.claims["realm_access"]["roles"], serde_json::json!(["user", "admin"]));
    /// ```
    pub fn add_realm_roles_from(&mut self, claim: &str) {
        if let Some(value) = self.claims.get(claim).cloned() {
            self.add_realm_roles(&value);
        }
    }

    /// Adds the roles `value` holds, read as
    /// [`add_realm_roles_from`](Self::add_realm_roles_from) reads its
    /// claim, for roles that come from another token than these claims'
    /// (a signed-in user's ID token, when the session's access token is
    /// meant for another API, whose roles are not this service's).
    ///
    /// ```
    /// use palisade_core::TokenClaims;
    /// let mut t = TokenClaims::default();
    /// t.add_realm_roles(&serde_json::json!(["admin"]));
    /// assert_eq!(t.realm_roles, ["admin"]);
    /// ```
    pub fn add_realm_roles(&mut self, value: &Value) {
        let found: Vec<&str> = match value {
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            // One role, spaces and all (`Domain Admins`): split, its words
            // would be roles of their own.
            Value::String(s) => vec![s.as_str()],
            // ZITADEL's `{"ROLE": {"ORG_ID": "ORG_DOMAIN"}}`, or a map of
            // flags: a key whose value is `false` (or anything but an
            // object or `true`) is not a role.
            Value::Object(roles) => roles
                .iter()
                .filter(|(_, v)| matches!(v, Value::Object(_) | Value::Bool(true)))
                .map(|(k, _)| k.as_str())
                .collect(),
            _ => return,
        };
        let before = self.realm_roles.len();
        for role in found {
            if !role.is_empty() && !self.realm_roles.iter().any(|r| r == role) {
                self.realm_roles.push(role.to_owned());
            }
        }
        if self.realm_roles.len() == before {
            return;
        }
        let roles = Value::from(self.realm_roles.clone());
        match self.claims.get_mut("realm_access") {
            Some(Value::Object(access)) => {
                access.insert("roles".into(), roles);
            }
            // Absent, or not an object (whose roles `from_claims` did not
            // read either): the roles alone.
            _ => {
                self.claims
                    .insert("realm_access".into(), serde_json::json!({ "roles": roles }));
            }
        }
    }
}

impl fmt::Debug for TokenClaims {
    // Claims can carry personal data, but never the token itself; names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClaims")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("audiences", &self.audiences)
            .field("realm_roles", &self.realm_roles)
            .field("client_roles", &self.client_roles)
            .field("scopes", &self.scopes)
            .field("claim_names", &self.claims.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The identity of the peer workload on a mutual-TLS connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// Istio's `source.principal`: the SPIFFE ID without `spiffe://`.
    pub principal: Option<String>,
    /// The SPIFFE ID from the certificate's single URI SAN.
    pub spiffe_id: Option<String>,
    /// Istio's `source.namespace`, when the SPIFFE ID has the `/ns/NS/sa/SA` form.
    pub namespace: Option<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// The subject distinguished name.
    pub subject: String,
    /// SHA-256 of the leaf certificate, lower-case hex.
    pub fingerprint_sha256: String,
    /// When the leaf certificate expires (its `notAfter`), when known: the
    /// latest a stream the peer opened should stay open, since the guard
    /// decides requests, not connections (docs/middleware.md, long-lived
    /// connections). Not in [`whoami`](crate::whoami)'s answer.
    pub not_after: Option<std::time::SystemTime>,
}

/// A Kerberos client principal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KerberosIdentity {
    /// The full principal, `alice@EXAMPLE.TEST`.
    pub principal: String,
    /// The local user name, `alice`.
    pub local_name: Option<String>,
    /// The realm, `EXAMPLE.TEST`.
    pub realm: String,
    /// Roles given by the service's mapping hook (policies see them as
    /// `request.auth.claims[roles]`; `has_realm_role` checks them).
    pub roles: Vec<String>,
    /// Groups given by the mapping hook (`request.auth.claims[groups]`).
    pub groups: Vec<String>,
}

#[derive(Clone, Default)]
struct Inner {
    methods: Vec<AuthMethod>,
    token: Option<TokenClaims>,
    peer: Option<PeerIdentity>,
    kerberos: Option<KerberosIdentity>,
    /// `request.auth.principal`, built once per identity (identities of
    /// cached tokens are reused across requests).
    request_principal: Option<String>,
    /// The claims policies read for a Kerberos caller.
    kerberos_claims: Option<Map<String, Value>>,
}

impl Inner {
    fn with_principal(mut self) -> Self {
        self.kerberos_claims = self.kerberos.as_ref().map(|k| {
            let mut m = Map::new();
            m.insert("sub".into(), Value::from(k.principal.clone()));
            m.insert("roles".into(), Value::from(k.roles.clone()));
            m.insert("groups".into(), Value::from(k.groups.clone()));
            m.insert("realm_access".into(), serde_json::json!({ "roles": k.roles }));
            m
        });
        self.request_principal = match (&self.token, &self.kerberos) {
            (Some(t), _) => Some(format!("{}/{}", t.issuer, t.subject)),
            (None, Some(k)) => Some(k.principal.clone()),
            (None, None) => None,
        };
        self
    }
}

/// A verified caller: who they are and how that was established.
///
/// Cloning is an `Arc` clone. `Debug` shows names and roles, never a credential.
///
/// ```
/// use palisade_core::{AuthMethod, Identity, TokenClaims, Verification};
/// let mut claims = TokenClaims::default();
/// claims.issuer = "https://idp.example".into();
/// claims.subject = "alice".into();
/// claims.realm_roles = vec!["admin".into()];
/// let id = Identity::from_token(claims, Verification::assertion());
/// assert_eq!(id.request_principal().as_deref(), Some("https://idp.example/alice"));
/// assert!(id.has_realm_role("admin"));
/// assert_eq!(id.methods(), [AuthMethod::Jwt]);
/// ```
#[derive(Clone)]
pub struct Identity(Arc<Inner>);

impl Identity {
    /// A copy that shares no reference count with this identity. Its
    /// clones count references in memory of its own, so a per-thread cache
    /// (an authenticator's copy of a hot token's identity on each worker
    /// thread) hands out identities without the threads writing one
    /// counter in turn. Costs what the claims cost to copy; a plain
    /// [`clone`](Clone::clone) is the cheap way to share one.
    ///
    /// ```
    /// use palisade_core::{Identity, TokenClaims, Verification};
    /// let mut claims = TokenClaims::default();
    /// claims.subject = "alice".into();
    /// let id = Identity::from_token(claims, Verification::assertion());
    /// let copy = id.unshared();
    /// assert_eq!(copy.request_principal(), id.request_principal());
    /// assert_eq!(copy.methods(), id.methods());
    /// ```
    #[must_use]
    pub fn unshared(&self) -> Self {
        Self(Arc::new(Inner::clone(&self.0)))
    }

    /// Builds the identity of a verified token's bearer.
    #[must_use]
    pub fn from_token(claims: TokenClaims, _proof: Verification) -> Self {
        Self(Arc::new(
            Inner {
                methods: vec![AuthMethod::Jwt],
                token: Some(claims),
                ..Inner::default()
            }
            .with_principal(),
        ))
    }

    /// Builds the identity of a signed-in browser user: the claims of the
    /// session's access token (or of its ID token, when the access token
    /// is opaque), with [`AuthMethod::Session`]. The request principal is
    /// `ISS/SUB`, as for a bearer token, so the same policies apply.
    #[must_use]
    pub fn from_session(claims: TokenClaims, _proof: Verification) -> Self {
        Self(Arc::new(
            Inner {
                methods: vec![AuthMethod::Session],
                token: Some(claims),
                ..Inner::default()
            }
            .with_principal(),
        ))
    }

    /// Builds the identity of a verified mTLS peer.
    #[must_use]
    pub fn from_peer(peer: PeerIdentity, _proof: Verification) -> Self {
        Self(Arc::new(Inner {
            methods: vec![AuthMethod::Mtls],
            peer: Some(peer),
            ..Inner::default()
        }))
    }

    /// Builds the identity of a verified Kerberos client.
    #[must_use]
    pub fn from_kerberos(principal: KerberosIdentity, _proof: Verification) -> Self {
        Self(Arc::new(
            Inner {
                methods: vec![AuthMethod::Spnego],
                kerberos: Some(principal),
                ..Inner::default()
            }
            .with_principal(),
        ))
    }

    /// Combines two identities established for the same request by different
    /// authenticators (a JWT over an mTLS connection, say). Facts of `self` win
    /// where both have one.
    #[must_use]
    pub fn merge(self, other: &Identity) -> Identity {
        let a = &self.0;
        let b = &other.0;
        let mut methods = a.methods.clone();
        for m in &b.methods {
            if !methods.contains(m) {
                methods.push(*m);
            }
        }
        methods.sort();
        Identity(Arc::new(
            Inner {
                methods,
                token: a.token.clone().or_else(|| b.token.clone()),
                peer: a.peer.clone().or_else(|| b.peer.clone()),
                kerberos: a.kerberos.clone().or_else(|| b.kerberos.clone()),
                request_principal: None,
                kerberos_claims: None,
            }
            .with_principal(),
        ))
    }

    /// How the caller was authenticated, in a stable order.
    #[must_use]
    pub fn methods(&self) -> &[AuthMethod] {
        &self.0.methods
    }

    /// The verified token's claims, when a JWT authenticated the caller.
    #[must_use]
    pub fn token(&self) -> Option<&TokenClaims> {
        self.0.token.as_ref()
    }

    /// The mTLS peer, when a client certificate authenticated the connection.
    #[must_use]
    pub fn peer(&self) -> Option<&PeerIdentity> {
        self.0.peer.as_ref()
    }

    /// The Kerberos principal, when a Negotiate ticket authenticated the caller.
    #[must_use]
    pub fn kerberos(&self) -> Option<&KerberosIdentity> {
        self.0.kerberos.as_ref()
    }

    /// Istio's `request.auth.principal`: `ISSUER/SUBJECT` for a JWT,
    /// `user@REALM` for Kerberos; `None` when no end-user credential was given.
    #[must_use]
    pub fn request_principal(&self) -> Option<String> {
        self.0.request_principal.clone()
    }

    /// [`Identity::request_principal`], borrowed.
    #[must_use]
    pub fn request_principal_str(&self) -> Option<&str> {
        self.0.request_principal.as_deref()
    }

    /// The claims authorization conditions (`request.auth.claims[…]`) read:
    /// the verified token's payload (with the roles of the issuer's roles
    /// claim added to `realm_access.roles`), or for a Kerberos caller `sub`, `roles`,
    /// `groups` and `realm_access.roles` from the mapping hook.
    #[must_use]
    pub fn claims(&self) -> Option<&Map<String, Value>> {
        self.0
            .token
            .as_ref()
            .map(|t| &t.claims)
            .or(self.0.kerberos_claims.as_ref())
    }

    /// The subject: `sub` of a JWT, else the Kerberos principal.
    #[must_use]
    pub fn subject(&self) -> Option<&str> {
        if let Some(t) = &self.0.token {
            return Some(&t.subject);
        }
        self.0.kerberos.as_ref().map(|k| k.principal.as_str())
    }

    /// The caller's name: for a token or a sign-in session the claim
    /// configured as the provider's principal (`preferred_username` unless
    /// set otherwise, Keycloak's `principal-attribute`), else its subject;
    /// for a Kerberos user the principal (`alice@EXAMPLE.TEST`); for a
    /// workload known by its certificate alone its principal
    /// (`cluster.local/ns/NS/sa/SA`). An end user's name comes before the
    /// workload's it called through. Unlike Spring Security's
    /// `Authentication.getName()`, whose default is `sub`, the default is
    /// the user name: for display and logs. Key data on
    /// [`request_principal`](Self::request_principal) (`ISSUER/sub`), which
    /// authorization decides on and a user cannot choose: a user name may
    /// be reused, or changed by its user where the issuer lets them.
    ///
    /// ```
    /// use palisade_core::{Identity, TokenClaims, Verification};
    /// let mut claims = TokenClaims::default();
    /// claims.subject = "5f1c".into();
    /// claims.preferred_username = Some("alice".into());
    /// let id = Identity::from_token(claims, Verification::assertion());
    /// assert_eq!(id.name(), Some("alice"));
    /// ```
    #[must_use]
    pub fn name(&self) -> Option<&str> {
        if let Some(t) = &self.0.token {
            let name = t.preferred_username.as_deref().filter(|n| !n.is_empty());
            return Some(name.unwrap_or(&t.subject));
        }
        if let Some(k) = &self.0.kerberos {
            return Some(&k.principal);
        }
        self.0.peer.as_ref().and_then(|p| p.principal.as_deref())
    }

    /// The token issuer.
    #[must_use]
    pub fn issuer(&self) -> Option<&str> {
        self.0.token.as_ref().map(|t| t.issuer.as_str())
    }

    /// Whether the caller holds this Keycloak realm role.
    #[must_use]
    pub fn has_realm_role(&self, role: &str) -> bool {
        self.0
            .token
            .as_ref()
            .is_some_and(|t| t.realm_roles.iter().any(|r| r == role))
            || self
                .0
                .kerberos
                .as_ref()
                .is_some_and(|k| k.roles.iter().any(|r| r == role))
    }

    /// Whether the caller holds this Keycloak client role.
    #[must_use]
    pub fn has_client_role(&self, client: &str, role: &str) -> bool {
        self.0.token.as_ref().is_some_and(|t| {
            t.client_roles
                .get(client)
                .is_some_and(|roles| roles.iter().any(|r| r == role))
        })
    }

    /// Whether the token grants this scope.
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0
            .token
            .as_ref()
            .is_some_and(|t| t.scopes.iter().any(|s| s == scope))
    }

    /// One claim of the verified token.
    #[must_use]
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.0.token.as_ref().and_then(|t| t.claims.get(name))
    }

    /// The `/whoami` document (described in `docs/examples.md`) for this identity.
    #[must_use]
    pub fn to_whoami(&self) -> Value {
        whoami(Some(self))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("methods", &self.0.methods)
            .field("token", &self.0.token)
            .field("peer", &self.0.peer)
            .field("kerberos", &self.0.kerberos)
            .finish()
    }
}

/// The `/whoami` document (`docs/examples.md`) for an optional identity: every
/// field is present, null or empty when not established.
#[must_use]
pub fn whoami(identity: Option<&Identity>) -> Value {
    let token = identity.and_then(Identity::token);
    let peer = identity.and_then(Identity::peer);
    let kerberos = identity.and_then(Identity::kerberos);
    serde_json::json!({
        "authenticated": identity.is_some(),
        "methods": identity.map(|i| i.methods().iter().map(|m| m.as_str()).collect::<Vec<_>>()).unwrap_or_default(),
        "request_principal": identity.and_then(Identity::request_principal),
        "subject": identity.and_then(Identity::subject),
        "issuer": token.map(|t| t.issuer.as_str()),
        "audiences": token.map(|t| t.audiences.clone()).unwrap_or_default(),
        "authorized_party": token.and_then(|t| t.authorized_party.as_deref()),
        "realm_roles": token.map(|t| t.realm_roles.clone()).unwrap_or_default(),
        "client_roles": token.map(|t| t.client_roles.clone()).unwrap_or_default(),
        "scopes": token.map(|t| t.scopes.clone()).unwrap_or_default(),
        "claims": token.map(|t| Value::Object(t.claims.clone())).unwrap_or_else(|| Value::Object(Map::new())),
        "peer": peer.map(|p| serde_json::json!({
            "principal": p.principal,
            "spiffe_id": p.spiffe_id,
            "dns_names": p.dns_names,
            "subject": p.subject,
            "fingerprint_sha256": p.fingerprint_sha256,
        })),
        "kerberos": kerberos.map(|k| serde_json::json!({
            "principal": k.principal,
            "local_name": k.local_name,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(sub: &str) -> TokenClaims {
        TokenClaims {
            issuer: "https://idp".into(),
            subject: sub.into(),
            ..TokenClaims::default()
        }
    }

    #[test]
    fn request_principal_is_issuer_slash_subject() {
        let id = Identity::from_token(token("bob"), Verification::assertion());
        assert_eq!(id.request_principal().unwrap(), "https://idp/bob");
    }

    #[test]
    fn merge_keeps_both_methods_and_facts() {
        let jwt = Identity::from_token(token("bob"), Verification::assertion());
        let peer = Identity::from_peer(
            PeerIdentity {
                principal: Some("cluster.local/ns/default/sa/web".into()),
                ..PeerIdentity::default()
            },
            Verification::assertion(),
        );
        let both = peer.merge(&jwt);
        assert_eq!(both.methods(), [AuthMethod::Jwt, AuthMethod::Mtls]);
        assert_eq!(both.subject(), Some("bob"));
        assert!(both.peer().is_some());
    }

    #[test]
    fn whoami_of_nobody_has_every_field() {
        let doc = whoami(None);
        for field in [
            "authenticated",
            "methods",
            "request_principal",
            "subject",
            "issuer",
            "audiences",
            "authorized_party",
            "realm_roles",
            "client_roles",
            "scopes",
            "claims",
            "peer",
            "kerberos",
        ] {
            assert!(doc.get(field).is_some(), "missing {field}");
        }
        assert_eq!(doc["authenticated"], false);
    }

    #[test]
    fn roles_are_added_from_the_claim_in_each_shape_it_takes() {
        let roles = |claims: Value| {
            let mut t = TokenClaims::from_claims(claims.as_object().unwrap().clone());
            t.add_realm_roles_from("groups");
            (t.realm_roles.clone(), t.claims.get("realm_access").cloned())
        };
        assert_eq!(
            roles(json!({"groups": ["a", 7, "b", "a"]})),
            (vec!["a".into(), "b".into()], Some(json!({"roles": ["a", "b"]})))
        );
        assert_eq!(roles(json!({"groups": "Domain Admins"})).0, ["Domain Admins"]);
        assert_eq!(
            roles(json!({"groups": {"a": {"org": 1}, "b": {}, "c": true, "d": false, "e": "x"}})).0,
            ["a", "b", "c"]
        );
        assert_eq!(roles(json!({"groups": ["", "a"]})).0, ["a"]);
        // Kept beside what realm_access holds, its other members too.
        assert_eq!(
            roles(json!({"realm_access": {"roles": ["u"], "x": 1}, "groups": ["a", "u"]})),
            (
                vec!["u".into(), "a".into()],
                Some(json!({"roles": ["u", "a"], "x": 1}))
            )
        );
        // A realm_access that is not an object held no roles.
        assert_eq!(
            roles(json!({"realm_access": "admin", "groups": ["a"]})).1,
            Some(json!({"roles": ["a"]}))
        );
        // Nothing to add: the claims as signed.
        for claims in [
            json!({"realm_access": "admin"}),
            json!({"groups": 7}),
            json!({"groups": []}),
            json!({"groups": ""}),
            json!({"groups": {"admin": false}}),
            json!({"realm_access": {"roles": ["a"], "x": 1}, "groups": ["a"]}),
        ] {
            assert_eq!(
                roles(claims.clone()).1,
                claims.get("realm_access").cloned(),
                "{claims}"
            );
        }
    }

    /// Scopes as each issuer writes them: `scope` a string (Keycloak,
    /// Auth0) or an array, `scp` an array (Okta) or a string (Microsoft
    /// Entra ID's `"Orders.Read Orders.Write"`).
    #[test]
    fn scopes_are_read_from_scope_or_scp_as_a_string_or_an_array() {
        let scopes = |claims: Value| TokenClaims::from_claims(claims.as_object().unwrap().clone()).scopes;
        assert_eq!(scopes(json!({"scope": "a  b"})), ["a", "b"]);
        assert_eq!(scopes(json!({"scope": ["a", "b"]})), ["a", "b"]);
        assert_eq!(
            scopes(json!({"scp": "Orders.Read Orders.Write"})),
            ["Orders.Read", "Orders.Write"]
        );
        assert_eq!(scopes(json!({"scp": ["a", "b"]})), ["a", "b"]);
        assert_eq!(scopes(json!({"scope": "a", "scp": "b"})), ["a"]);
        assert!(scopes(json!({"scope": 7})).is_empty());
    }

    #[test]
    fn the_name_is_the_principal_claim_else_the_subject_else_the_principal() {
        let mut t = token("u1");
        assert_eq!(
            Identity::from_token(t.clone(), Verification::assertion()).name(),
            Some("u1")
        );
        t.preferred_username = Some("alice".into());
        assert_eq!(
            Identity::from_token(t, Verification::assertion()).name(),
            Some("alice")
        );
        let kerberos = Identity::from_kerberos(
            KerberosIdentity {
                principal: "bob@EXAMPLE.TEST".into(),
                ..KerberosIdentity::default()
            },
            Verification::assertion(),
        );
        assert_eq!(kerberos.name(), Some("bob@EXAMPLE.TEST"));
        let peer = Identity::from_peer(
            PeerIdentity {
                principal: Some("cluster.local/ns/default/sa/web".into()),
                ..PeerIdentity::default()
            },
            Verification::assertion(),
        );
        assert_eq!(peer.name(), Some("cluster.local/ns/default/sa/web"));
        assert_eq!(
            Identity::from_peer(PeerIdentity::default(), Verification::assertion()).name(),
            None
        );
        // An end user's name before the workload's it came through.
        assert_eq!(peer.merge(&kerberos).name(), Some("bob@EXAMPLE.TEST"));
    }

    #[test]
    fn debug_shows_claim_names_not_values() {
        let mut t = token("bob");
        t.claims
            .insert("secret_thing".into(), Value::String("s3cr3t-value".into()));
        let id = Identity::from_token(t, Verification::assertion());
        let dbg = format!("{id:?}");
        assert!(dbg.contains("secret_thing"));
        assert!(!dbg.contains("s3cr3t-value"));
    }
}
