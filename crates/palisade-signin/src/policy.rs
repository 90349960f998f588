//! [`SignIn`] from a policy file: an `OidcLogin` document, or a
//! `KeycloakAdapter` that is not bearer-only (as Keycloak's adapter turns
//! browser sign-in on).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::policy::{
    ClientAuthMethod, Document, FromPolicy, OidcLoginSpec, PolicyError, SignInDocument, WorkloadPolicy,
    read_secret_file,
};

use crate::config::{ClientKey, SecretMethod, SignInBuilder, SignInError};
use crate::cookie::{CookieKey, KeyError};
use crate::flow::SignIn;
use crate::store::SessionStore;

/// The session store at `url`, connected; `None` for `memory` or when
/// only checking (`connect` false: the URL was checked when the file loaded).
/// `err` locates a refusal; one that did not reach the store carries the
/// I/O error (a hot reload tries such a file again).
///
/// One Redis store per URL for the whole process while a relying party
/// uses it: a hot reload builds a new [`SignIn`], which must keep what the
/// store it replaces holds in memory (the revocations it has seen, those
/// Redis has not taken yet), as the in-memory store and the DPoP replay
/// store are kept.
fn store(
    url: &str,
    connect: bool,
    err: impl Fn(String) -> PolicyError,
) -> Result<Option<Arc<dyn SessionStore>>, PolicyError> {
    if url == "memory" || !connect {
        return Ok(None);
    }
    #[cfg(feature = "redis")]
    {
        static LIVE: palisade_core::reload::Registry<String, crate::store::RedisStore> =
            palisade_core::reload::Registry::new();
        let store = LIVE.get_or_make(url.to_owned(), || {
            // Start-up code, perhaps inside a runtime: the store runs on a
            // thread of its own.
            crate::store::RedisStore::builder(url)
                .connect_blocking()
                .map(Arc::new)
                .map_err(|e| match e {
                    // Not reached: what may answer later.
                    crate::store::StoreError::Connect { .. } | crate::store::StoreError::Unavailable => {
                        err(e.to_string()).unreachable(e)
                    }
                    // What the file says, which only an edit changes.
                    _ => err(e.to_string()).with_source(e),
                })
        })?;
        Ok(Some(store))
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = url;
        Err(err("a Redis store needs palisade-signin's `redis` feature".into()))
    }
}

/// The builder of an `OidcLogin` document; the session store is
/// connected when `connect` says so.
fn from_login(
    policy: &WorkloadPolicy<'_>,
    doc: &Document,
    spec: &OidcLoginSpec,
    connect: bool,
) -> Result<SignInBuilder, PolicyError> {
    let err = |field: &str, message: String| policy.error_at(doc, field, message);
    let mut b = SignIn::builder(spec.issuer.clone(), spec.client_id.clone());
    if let Some(file) = &spec.client_secret_file {
        let secret =
            read_secret_file(file).map_err(|e| err("spec.clientSecretFile", e.to_string()).with_source(e))?;
        let method = match spec.client_auth_method {
            Some(ClientAuthMethod::ClientSecretPost) => SecretMethod::Post,
            _ => SecretMethod::Basic,
        };
        b = b.client_secret(secret, method);
    } else if let Some(k) = &spec.client_key {
        let pem = std::fs::read(&k.key_file).map_err(|e| {
            err(
                "spec.clientKey.keyFile",
                format!(
                    "cannot read {}: {e}",
                    palisade_core::syntax::file_as_shown(&k.key_file)
                ),
            )
            .with_source(e)
        })?;
        let key = ClientKey::from_pem(
            k.algorithm.as_deref().unwrap_or("RS256"),
            &pem,
            k.key_id.as_deref(),
        )
        .map_err(|e| err("spec.clientKey", e.to_string()))?;
        b = b.client_key(key);
    }
    if let Some(scopes) = &spec.scopes {
        b = b.scopes(scopes.iter().cloned());
    }
    if let Some(p) = &spec.callback_path {
        b = b.callback_path(p.clone());
    }
    if let Some(p) = &spec.login_path {
        b = b.login_path(p.clone());
    }
    if let Some(p) = &spec.logout_path {
        b = b.logout_path(p.clone());
    }
    if let Some(p) = &spec.session_path {
        b = b.session_path(p.clone());
    }
    if let Some(p) = &spec.backchannel_logout_path {
        b = b.backchannel_logout_path(p.clone());
    }
    if let Some(p) = &spec.post_logout_redirect_uri {
        b = b.post_logout_redirect_uri(p.clone());
    }
    if let Some(revoke) = spec.revoke_on_logout {
        b = b.revoke_on_logout(revoke);
    }
    if let Some(o) = &spec.external_origin {
        b = b.external_origin(o.clone());
    }
    if let Some(c) = &spec.principal_claim {
        b = b.principal_claim(c.clone());
    }
    if let Some(c) = &spec.roles_claim {
        b = b.roles_claim(c.clone());
    }
    for (name, value) in spec.authorization_params.iter().flatten() {
        b = b.authorization_param(name.clone(), value.clone());
    }
    if let Some(file) = &spec.ca_file {
        let pem = std::fs::read(file)
            .map_err(|e| err("spec.caFile", format!("cannot read `{file}`: {e}")).with_source(e))?;
        b = b.ca_pem(pem);
    }
    let s = &spec.session;
    if let Some(name) = &s.cookie_name {
        b = b.cookie_name(name.clone());
    }
    if let Some(d) = s.idle_timeout {
        b = b.idle_timeout(Duration::from(d));
    }
    if let Some(d) = s.absolute_timeout {
        b = b.absolute_timeout(Duration::from(d));
    }
    let mut keys = Vec::with_capacity(s.keys.len());
    for (i, k) in s.keys.iter().enumerate() {
        let key = CookieKey::from_file(&k.id, Path::new(&k.key_file)).map_err(|e| {
            let refused = err(&format!("spec.session.keys[{i}].keyFile"), e.to_string());
            // The file's read error, for `PolicyError::io_error` (a reload
            // tries a file missing here again); it says its cause itself.
            match e {
                KeyError::ReadFile { error, .. } => refused.with_source(error),
                e => refused.with_source(e),
            }
        })?;
        keys.push(key);
    }
    b = b.keys(keys);
    if let Some(url) = &s.store
        && let Some(st) = store(url, connect, |m| err("spec.session.store", m))?
    {
        b = b.store(st);
    }
    Ok(b)
}

/// The builder of the workload's sign-in document
/// ([`WorkloadPolicy::sign_in`]), and that document; `None` when no document
/// turns sign-in on.
fn builder<'a>(
    policy: &WorkloadPolicy<'a>,
    connect: bool,
) -> Result<Option<(SignInBuilder, &'a Document)>, PolicyError> {
    let found = found_builder(policy, connect)?;
    // The workload's trusted origins (`AuthorizationSettings`), which the
    // guard trusts with the session's writes: returned to after sign-in,
    // and their logouts taken.
    Ok(found.map(|(mut b, doc)| {
        for (_, settings) in policy.authorization_settings() {
            for origin in &settings.trusted_origins {
                b = b.trusted_origin(origin.clone());
            }
        }
        (b, doc)
    }))
}

fn found_builder<'a>(
    policy: &WorkloadPolicy<'a>,
    connect: bool,
) -> Result<Option<(SignInBuilder, &'a Document)>, PolicyError> {
    Ok(match policy.sign_in()? {
        Some(SignInDocument::OidcLogin(doc, spec)) => Some((from_login(policy, doc, spec, connect)?, doc)),
        Some(SignInDocument::KeycloakAdapter(doc, k, client)) => {
            let mut b = SignIn::builder(k.issuer(), client.to_owned());
            if k.public_client != Some(true) {
                let secret = k
                    .credentials
                    .as_ref()
                    .and_then(|c| c.get("secret"))
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| {
                        policy.error_at(
                            doc,
                            "spec.credentials.secret",
                            "a confidential client needs its secret",
                        )
                    })?;
                b = b.client_secret(secret, SecretMethod::Basic);
            }
            // The user's name as the adapter's bearer tokens have it.
            if let Some(attr) = &k.principal_attribute {
                b = b.principal_claim(attr.clone());
            }
            Some((b, doc))
        }
        None => None,
    })
}

impl SignIn {
    /// Checks the workload's sign-in document as [`FromPolicy::from_policy`]
    /// reads it (every setting, the secret, client key, CA and session key
    /// files) without starting anything: no discovery, no key fetching, no
    /// connection to the session store. `Ok` when no document turns
    /// sign-in on. For tools that check a policy file offline (`palisade
    /// check`).
    ///
    /// # Errors
    /// As [`FromPolicy::from_policy`], but for a store that cannot be reached.
    pub fn check_policy(policy: &WorkloadPolicy<'_>) -> Result<(), PolicyError> {
        match builder(policy, false)? {
            Some((b, doc)) => b
                .checked()
                .map(drop)
                .map_err(|e| policy.error_at(doc, field_of(&e), e.to_string()).with_source(e)),
            None => Ok(()),
        }
    }
}

/// The field of the sign-in document a build error is about: the CA file,
/// or the document as a whole (the message names the setting).
fn field_of(e: &SignInError) -> &'static str {
    match e {
        SignInError::Issuer(palisade_jwt::ConfigError::InvalidCa(..)) => "spec.caFile",
        _ => "spec",
    }
}

impl FromPolicy for SignIn {
    /// The relying party of the workload's `OidcLogin` document, or of a
    /// `KeycloakAdapter` that is not bearer-only (`public-client`, or
    /// `credentials.secret`); `None` when neither applies. Two documents
    /// that turn sign-in on for one workload are an error.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the document and field that cannot be used
    /// (an unreadable key or secret file, a store that cannot be reached).
    fn from_policy(policy: &WorkloadPolicy<'_>) -> Result<Option<Self>, PolicyError> {
        match builder(policy, true)? {
            Some((b, doc)) => b
                .build()
                .map(Some)
                .map_err(|e| policy.error_at(doc, field_of(&e), e.to_string()).with_source(e)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use palisade_core::policy::{PolicySet, Workload};

    use super::*;

    /// productpage's `OidcLogin` document, then `more` (documents of their
    /// own, each after `---`).
    fn login_with(issuer: &str, session: &str, more: &str) -> PolicySet {
        let yaml = format!(
            "apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {{name: login}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  issuer: {issuer}
  clientId: productpage
  session: {session}
{more}"
        );
        PolicySet::from_yaml_str(&yaml, "login.yaml").unwrap()
    }

    fn login(issuer: &str, session: &str) -> PolicySet {
        login_with(issuer, session, "")
    }

    /// The workload's `trustedOrigins` are sign-in's too.
    #[test]
    fn the_workloads_trusted_origins_are_sign_ins() {
        let key = palisade_testkit::TempDir::new("palisade-signin-trusted");
        let file = key.path().join("k1.key");
        std::fs::write(&file, [7u8; 32]).unwrap();
        let set = login_with(
            "http://127.0.0.1:9/realms/istio",
            &format!("{{keys: [{{id: k1, keyFile: {}}}]}}", file.display()),
            "---
apiVersion: palisade.dev/v1alpha1
kind: AuthorizationSettings
metadata: {name: settings}
spec:
  trustedOrigins: ['https://App.shop.example']
",
        );
        let sign_in = SignIn::from_policy(&set.for_workload(&Workload::new("productpage", "default")))
            .unwrap()
            .unwrap();
        let page = "https://app.shop.example/orders";
        assert_eq!(sign_in.return_target(page).as_deref(), Some(page));
    }

    #[test]
    fn check_policy_starts_nothing_and_connects_to_no_store() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let set = login(
            &format!("http://127.0.0.1:{port}/realms/istio"),
            &format!("{{store: \"redis://127.0.0.1:{port}/0\"}}"),
        );
        SignIn::check_policy(&set.for_workload(&Workload::new("productpage", "default"))).unwrap();
        SignIn::check_policy(&set.for_workload(&Workload::new("details", "default"))).unwrap();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            assert!(
                listener.accept().is_err(),
                "check_policy contacted the issuer or the store"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A `caFile` holding no usable certificate is refused naming that
    /// field, offline (`palisade check`) as at start-up.
    #[test]
    fn a_ca_file_without_a_certificate_is_refused_at_its_field() {
        let dir = palisade_testkit::TempDir::new("palisade-signin-ca");
        let (bad, good) = (dir.path().join("bad.pem"), dir.path().join("good.pem"));
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&good, palisade_testkit::TestPki::new().ca_pem()).unwrap();
        let set = |file: &Path| {
            let yaml = format!(
                "apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {{name: login}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  issuer: https://kc.example/realms/istio
  clientId: productpage
  caFile: '{}'
",
                file.display()
            );
            PolicySet::from_yaml_str(&yaml, "login.yaml").unwrap()
        };
        let workload = Workload::new("productpage", "default");
        let bad = set(&bad);
        let err = SignIn::check_policy(&bad.for_workload(&workload)).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.caFile"), "{err}");
        assert!(err.to_string().contains("CA certificates"), "{err}");
        SignIn::check_policy(&set(&good).for_workload(&workload)).unwrap();
    }

    /// Two adapters that sign in for one workload: refused, naming the
    /// second, rather than the first kept and the other realm's sign-in
    /// silently dropped.
    #[test]
    fn two_keycloak_adapters_that_sign_in_are_refused() {
        let adapter = |name: &str, realm: &str| {
            format!(
                "apiVersion: palisade.dev/v1alpha1
kind: KeycloakAdapter
metadata: {{name: {name}}}
spec: {{realm: {realm}, auth-server-url: 'https://kc.example', resource: productpage, public-client: true}}
"
            )
        };
        let yaml = format!("{}---\n{}", adapter("a", "one"), adapter("b", "two"));
        let set = PolicySet::from_yaml_str(&yaml, "kc.yaml").unwrap();
        let err =
            SignIn::check_policy(&set.for_workload(&Workload::new("productpage", "default"))).unwrap_err();
        assert_eq!(
            (err.document, err.field.as_deref()),
            (Some(2), Some("spec")),
            "{err}"
        );
        let bearer = yaml.replacen("public-client: true", "bearer-only: true", 1);
        let set = PolicySet::from_yaml_str(&bearer, "kc.yaml").unwrap();
        SignIn::check_policy(&set.for_workload(&Workload::new("productpage", "default"))).unwrap();
    }

    /// A hot reload keeps the Redis store of a URL (with the revocations it
    /// holds in memory) while a relying party uses it, and connects anew
    /// once none does.
    #[cfg(feature = "redis")]
    #[test]
    fn one_redis_store_per_url_while_it_is_used() {
        let redis = palisade_testkit::redis::RedisServer::start().unwrap();
        let err = |m: String| PolicyError::new("login.yaml", m);
        let first = store(&redis.url(), true, err).unwrap().unwrap();
        let again = store(&redis.url(), true, err).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "a reload finds the store in use");
        let weak = Arc::downgrade(&first);
        drop((first, again));
        assert!(weak.upgrade().is_none(), "not kept once unused");
        let anew = store(&redis.url(), true, err).unwrap().unwrap();
        assert_eq!(Arc::strong_count(&anew), 1);
        // Offline (`palisade check`) or `memory`: no Redis store at all.
        assert!(store(&redis.url(), false, err).unwrap().is_none());
        assert!(store("memory", true, err).unwrap().is_none());
    }

    /// A Redis store that does not answer stops the start-up, naming the
    /// field, as an error a hot reload tries again (it may answer later).
    #[cfg(feature = "redis")]
    #[test]
    fn a_session_store_that_does_not_answer_is_refused_to_be_tried_again() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let set = login(
            "https://kc.example/realms/istio",
            &format!("{{store: \"redis://:hunter2@127.0.0.1:{port}/0\"}}"),
        );
        let err =
            SignIn::from_policy(&set.for_workload(&Workload::new("productpage", "default"))).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.session.store"), "{err}");
        assert_eq!(
            err.io_error().map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotConnected),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn check_policy_names_the_field_that_cannot_be_used() {
        let set = login(
            "https://kc.example/realms/istio",
            "{keys: [{id: k1, keyFile: /nonexistent/palisade-session.key}]}",
        );
        let err =
            SignIn::check_policy(&set.for_workload(&Workload::new("productpage", "default"))).unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("spec.session.keys[0].keyFile"),
            "{err}"
        );
        // A file missing on this host, which a reload tries again (and
        // `palisade test` leaves to the host that has it), said once.
        assert_eq!(
            err.io_error().map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound),
            "{err}"
        );
        assert_eq!(err.to_string().matches("No such file").count(), 1, "{err}");
        // So is a client secret's.
        let set = login_with(
            "https://kc.example/realms/istio",
            "{}",
            "  clientSecretFile: /nonexistent/palisade-secret\n",
        );
        let err =
            SignIn::check_policy(&set.for_workload(&Workload::new("productpage", "default"))).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.clientSecretFile"), "{err}");
        assert_eq!(
            err.io_error().map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound),
            "{err}"
        );
    }

    /// A Keycloak adapter that signs in names its users by its
    /// `principal-attribute` in sessions too, as its bearer tokens do.
    #[test]
    fn a_keycloak_adapters_principal_attribute_names_its_signed_in_users() {
        let yaml = "apiVersion: palisade.dev/v1alpha1
kind: KeycloakAdapter
metadata: {name: kc}
spec:
  realm: shop
  auth-server-url: https://kc.example/
  resource: productpage
  public-client: true
  principal-attribute: email
";
        let set = PolicySet::from_yaml_str(yaml, "kc.yaml").unwrap();
        let (b, _) = builder(&set.for_workload(&Workload::new("productpage", "default")), true)
            .unwrap()
            .unwrap();
        assert_eq!(b.config.claim_names.principal.as_deref(), Some("email"));
    }

    /// `principalClaim`, `rolesClaim` and `authorizationParams` reach the
    /// sign-in; a roles claim naming Keycloak's own, or a parameter the
    /// sign-in sets itself, is refused at its field.
    #[test]
    fn the_claims_named_and_the_authorization_params_reach_the_sign_in() {
        let yaml = |extra: &str| {
            format!(
                "apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {{name: login}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  issuer: https://login.example/t/v2.0
  clientId: productpage
{extra}"
            )
        };
        let built = |extra: &str| {
            let set = PolicySet::from_yaml_str(&yaml(extra), "login.yaml").unwrap();
            let workload = Workload::new("productpage", "default");
            builder(&set.for_workload(&workload), true).unwrap().unwrap().0
        };
        assert_eq!(
            built("  principalClaim: upn\n  rolesClaim: roles\n")
                .config
                .claim_names,
            crate::session::ClaimNames {
                principal: Some("upn".into()),
                roles: Some("roles".into()),
                client_id: "productpage".into(),
            }
        );
        assert_eq!(
            built("  authorizationParams: {audience: api, prompt: login}\n")
                .config
                .authorization_params,
            [
                ("audience".into(), "api".into()),
                ("prompt".into(), "login".into())
            ]
        );
        for (extra, field) in [
            ("  rolesClaim: realm_access.roles\n", "spec.rolesClaim"),
            ("  principalClaim: ''\n", "spec.principalClaim"),
            (
                "  authorizationParams: {nonce: x}\n",
                "spec.authorizationParams.nonce",
            ),
        ] {
            let err = PolicySet::from_yaml_str(&yaml(extra), "login.yaml").unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
        }
    }
}
