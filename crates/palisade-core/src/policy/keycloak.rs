//! Keycloak's OIDC adapter configuration (`keycloak.json`), also the spec of
//! the `palisade.dev/v1alpha1` kind `KeycloakAdapter`.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::PolicyError;

/// A Keycloak OIDC adapter configuration (`keycloak.json`), also accepted as
/// the spec of the `palisade.dev/v1alpha1` kind `KeycloakAdapter`.
///
/// `public-client` and `credentials` turn browser sign-in on for `resource`
/// (unless `bearer-only`); the secret in `credentials` is never printed.
/// Accepted so that a `keycloak.json` loads, and not applied:
/// `ssl-required` (one of `all`, `external`, `none`, any case; TLS is the
/// server's: Keycloak's adapter refuses a token or a sign-in over plain
/// http from an address that is not private under `external`, its
/// default, and from any under `all`, where Palisade does not look at the
/// connection), `use-resource-role-mappings`
/// (role checks name realm or client roles explicitly), `confidential-port`,
/// `enable-cors`, `allow-any-hostname` and `disable-trust-manager` (the
/// issuer's certificate and name are always verified). Given with a value
/// other than Keycloak's own export writes (`ssl-required: all`, a `true`,
/// a port other than 0; the export's `external` and 0 are not said, though
/// `external` does something in Keycloak), each is a warning when the file
/// loads
/// ([`PolicySet::warnings`](super::PolicySet::warnings), and a warn-level
/// log line for [`Self::from_json_file`]).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
#[expect(
    missing_docs,
    reason = "fields are Keycloak's adapter options, documented there"
)]
pub struct KeycloakAdapterConfig {
    pub realm: String,
    pub auth_server_url: String,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub bearer_only: Option<bool>,
    #[serde(default)]
    pub ssl_required: Option<String>,
    #[serde(default)]
    pub use_resource_role_mappings: Option<bool>,
    #[serde(default)]
    pub principal_attribute: Option<String>,
    #[serde(default)]
    pub verify_token_audience: Option<bool>,
    #[serde(default)]
    pub min_time_between_jwks_requests: Option<u64>,
    #[serde(default)]
    pub public_key_cache_ttl: Option<u64>,
    #[serde(default)]
    pub realm_public_key: Option<String>,
    #[serde(default)]
    pub confidential_port: Option<u16>,
    #[serde(default)]
    pub public_client: Option<bool>,
    #[serde(default)]
    pub enable_cors: Option<bool>,
    #[serde(default)]
    pub credentials: Option<serde_json::Value>,
    #[serde(default)]
    pub allow_any_hostname: Option<bool>,
    #[serde(default)]
    pub disable_trust_manager: Option<bool>,
    /// Keycloak's Authorization Services (what its export writes for a
    /// client with them on): Palisade does not ask them, so only
    /// `enforcement-mode: DISABLED` loads (any other mode, Keycloak's
    /// default `ENFORCING` included, would deny what they do not permit).
    #[serde(default)]
    pub policy_enforcer: Option<serde_json::Value>,
    /// The workloads a `KeycloakAdapter` document applies to, as an
    /// `OidcLogin`'s `selector` (absent: every workload of its namespace,
    /// and of the mesh from the root namespace). Palisade's, not a
    /// `keycloak.json` option: refused in one.
    #[serde(default)]
    pub selector: Option<super::SelectorSpec>,
}

impl fmt::Debug for KeycloakAdapterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeycloakAdapterConfig")
            .field("realm", &self.realm)
            .field("auth_server_url", &self.auth_server_url)
            .field("resource", &self.resource)
            .field("credentials", &self.credentials.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl KeycloakAdapterConfig {
    /// Reads a `keycloak.json` file.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the file and field when it cannot be read or
    /// does not have the adapter's shape.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let name = path.as_ref().display().to_string();
        let text = super::read_policy_text(path.as_ref())
            .map_err(|e| PolicyError::new(&name, format!("cannot read: {e}")))?;
        Self::from_json_str(&text, &name)
    }

    /// Parses a `keycloak.json` document.
    ///
    /// # Errors
    /// A [`PolicyError`] naming `source` and the field.
    pub fn from_json_str(text: &str, source: &str) -> Result<Self, PolicyError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let inner = e.inner();
            let (line, column) = (inner.line(), inner.column());
            let message = inner.to_string();
            let message = message
                .strip_suffix(&format!(" at line {line} column {column}"))
                .unwrap_or(&message);
            let mut err = PolicyError::new(source, message)
                .at_line((line > 0).then_some(line), (column > 0).then_some(column));
            let path = e.path().to_string();
            err.field = (path != ".").then_some(path);
            err
        })?;
        let located = |(field, message): super::FieldError| {
            let mut err = PolicyError::new(source, message);
            err.field = Some(field.trim_start_matches("spec.").to_owned());
            err
        };
        // A `selector` key, even `null`: a file written for a document's
        // spec.
        let keys: Result<std::collections::BTreeMap<String, serde::de::IgnoredAny>, _> =
            serde_json::from_str(text);
        if keys.is_ok_and(|k| k.contains_key("selector")) {
            return Err(located((
                "selector".into(),
                "not a keycloak.json option: a KeycloakAdapter document's spec takes it".into(),
            )));
        }
        config.check().map_err(located)?;
        for warning in config.warnings() {
            crate::config_warning!(target: super::LOG_TARGET, "{}", located(warning));
        }
        Ok(config)
    }

    /// What can be checked without the workload: the adapter's own rules.
    pub(super) fn check(&self) -> Result<(), super::FieldError> {
        if self.realm.trim().is_empty() {
            return Err(("spec.realm".into(), "must not be empty".into()));
        }
        if self.auth_server_url.trim().is_empty() {
            return Err(("spec.auth-server-url".into(), "must not be empty".into()));
        }
        // Keycloak's adapter refuses to deploy with another value.
        if let Some(ssl) = &self.ssl_required
            && !["all", "external", "none"]
                .iter()
                .any(|v| ssl.eq_ignore_ascii_case(v))
        {
            return Err((
                "spec.ssl-required".into(),
                format!("`{ssl}` is not one of `all`, `external`, `none` (Keycloak's adapter refuses it)"),
            ));
        }
        // The issuer is made of it (`<auth-server-url>/realms/<realm>`).
        if !crate::syntax::is_http_url(&self.auth_server_url) {
            return Err((
                "spec.auth-server-url".into(),
                format!(
                    "`{}` is not an http(s) URL",
                    crate::syntax::url_without_credentials(&self.auth_server_url)
                ),
            ));
        }
        // 0 would fetch the keys on every unknown key id, or again at once;
        // a few seconds of cache would have every replica fetch them that
        // often whether tokens come or not; beyond 30 days, keys removed
        // from the realm would be trusted that long (and the instant of the
        // next fetch could overflow).
        for (field, value, least, most) in [
            (
                "spec.min-time-between-jwks-requests",
                self.min_time_between_jwks_requests,
                1,
                86_400,
            ),
            (
                "spec.public-key-cache-ttl",
                self.public_key_cache_ttl,
                10,
                2_592_000,
            ),
        ] {
            if let Some(v) = value
                && !(least..=most).contains(&v)
            {
                return Err((
                    field.into(),
                    format!("{v}: must be from {least} to {most} (seconds)"),
                ));
            }
        }
        // Keycloak's enforcer denies what its permissions do not allow
        // unless told DISABLED; loading one that Palisade does not ask would
        // allow all of that.
        if let Some(enforcer) = &self.policy_enforcer {
            let mode = match enforcer.get("enforcement-mode") {
                None => "ENFORCING, the default",
                Some(serde_json::Value::String(mode)) if mode.eq_ignore_ascii_case("DISABLED") => "",
                Some(serde_json::Value::String(mode)) => mode,
                Some(_) => "not a mode",
            };
            if !mode.is_empty() {
                return Err((
                    "spec.policy-enforcer".into(),
                    format!(
                        "Keycloak's Authorization Services (enforcement mode {mode}) are not asked by Palisade, which would allow what they deny: write the permissions as AuthorizationPolicy documents, then set `enforcement-mode: DISABLED` or remove `policy-enforcer`"
                    ),
                ));
            }
        }
        if self.verify_token_audience == Some(true) && self.resource.is_none() {
            return Err((
                "spec.resource".into(),
                "verify-token-audience needs `resource`".into(),
            ));
        }
        Ok(())
    }

    /// What browser sign-in needs of a document that turns it on (a policy
    /// file's; `keycloak.json` read for bearer tokens alone needs none of
    /// it): the client id and, for a confidential client, its secret.
    /// Checked for every document of a file, whichever workload it names.
    pub(super) fn check_sign_in(&self) -> Result<(), super::FieldError> {
        if self.signs_in() {
            if self.resource.as_deref().is_none_or(|r| r.trim().is_empty()) {
                return Err((
                    "spec.resource".into(),
                    "sign-in needs the client id (`resource`)".into(),
                ));
            }
            // What is wrong with it, said without its value.
            match &self.credentials {
                Some(serde_json::Value::Object(c)) => {
                    if let Some(other) = c
                        .keys()
                        .find(|k| !["secret", "jwt", "secret-jwt", "provider"].contains(&k.as_str()))
                    {
                        return Err((
                            format!("spec.credentials.{other}"),
                            "unknown key: Keycloak's credentials take `secret` (Palisade reads it), `jwt`, `secret-jwt` or `provider`".into(),
                        ));
                    }
                    if c.get("secret").is_some_and(|v| !v.is_string()) {
                        return Err((
                            "spec.credentials.secret".into(),
                            "must be a string (quote it if it is written as a number)".into(),
                        ));
                    }
                }
                Some(_) => {
                    return Err((
                        "spec.credentials".into(),
                        "must be a map: `credentials: {secret: …}`".into(),
                    ));
                }
                None => {}
            }
            let secret = self
                .credentials
                .as_ref()
                .and_then(|c| c.get("secret"))
                .and_then(serde_json::Value::as_str);
            if self.public_client != Some(true) && secret.is_none_or(str::is_empty) {
                return Err((
                    "spec.credentials.secret".into(),
                    "a confidential client needs its secret (Palisade takes `secret` only, not Keycloak's `jwt` client authentication)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Whether it turns browser sign-in on, as Keycloak's adapter does: not
    /// `bearer-only`, and a public client or one with `credentials`.
    #[must_use]
    pub fn signs_in(&self) -> bool {
        self.bearer_only != Some(true) && (self.public_client == Some(true) || self.credentials.is_some())
    }

    /// The keys given that Palisade reads and does not apply, said aloud
    /// when the file loads: each a value other than Keycloak's own export writes.
    pub(super) fn warnings(&self) -> Vec<super::FieldError> {
        let not_applied = [
            (
                "ssl-required",
                // `external`, Keycloak's default and what its export writes,
                // is left unsaid: a file with it says nothing on purpose.
                self.ssl_required
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("all")),
                "not applied: Palisade does not refuse plain-http requests; serve TLS (palisade-mtls) to require it",
            ),
            (
                "use-resource-role-mappings",
                self.use_resource_role_mappings == Some(true),
                "not applied: role checks name realm or client roles explicitly (in code `realm_role(ROLE)` or `client_role(RESOURCE, ROLE)`; in a policy `request.auth.claims[resource_access][RESOURCE][roles]`)",
            ),
            (
                "confidential-port",
                // 0, as Keycloak's export writes it: no port.
                self.confidential_port.is_some_and(|p| p != 0),
                "not applied: Palisade does not redirect to another port",
            ),
            (
                "enable-cors",
                self.enable_cors == Some(true),
                "not applied: Palisade neither answers CORS nor refuses, as Keycloak's adapter does, a token whose `allowed-origins` lacks the request's `Origin`; add a CORS layer in front of the guard (README: CORS) to answer preflights and limit which origins' scripts may read answers",
            ),
            (
                "allow-any-hostname",
                self.allow_any_hostname == Some(true),
                "not applied: the issuer's certificate name is always verified",
            ),
            (
                "disable-trust-manager",
                self.disable_trust_manager == Some(true),
                "not applied: the issuer's certificate is always verified",
            ),
        ];
        let mut said: Vec<super::FieldError> = not_applied
            .into_iter()
            .filter(|(_, given, _)| *given)
            .map(|(key, _, why)| (format!("spec.{key}"), why.to_owned()))
            .collect();
        // The realm's URL where the server's goes: the issuer would be
        // `…/realms/R/realms/R`, and every token refused as another
        // issuer's.
        if let Some((_, realm)) = self.auth_server_url.trim_end_matches('/').rsplit_once("/realms/")
            && !realm.contains('/')
        {
            said.push((
                "spec.auth-server-url".into(),
                format!(
                    "ends with a realm's path (`/realms/{realm}`): it is the server's URL (Keycloak 17+: `https://HOST`; older: `https://HOST/auth`), the issuer being `<auth-server-url>/realms/<realm>`, so as written every token is refused as another issuer's"
                ),
            ));
        }
        // Keycloak's default, and a relaxation: said as the others are.
        if self.verify_token_audience != Some(true) {
            said.push((
                "spec.verify-token-audience".into(),
                "off: tokens the realm issued to any of its clients are accepted; set it (with `resource`) to accept only this client's"
                    .into(),
            ));
        }
        said
    }

    /// The issuer URL: `<auth-server-url>/realms/<realm>`.
    #[must_use]
    pub fn issuer(&self) -> String {
        format!(
            "{}/realms/{}",
            self.auth_server_url.trim_end_matches('/'),
            self.realm
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sign-in's credentials of the wrong shape are said as such (not
    /// as a missing secret), naming the key, never the value.
    #[test]
    fn credentials_of_the_wrong_shape_are_said_without_their_value() {
        for (credentials, field, said) in [
            (
                r#"{"secrett":"hunter2x"}"#,
                "spec.credentials.secrett",
                "unknown key",
            ),
            (
                r#"{"secret":8812736450192}"#,
                "spec.credentials.secret",
                "must be a string",
            ),
            (r#""hunter2x""#, "spec.credentials", "must be a map"),
            (
                r#"{"jwt":{}}"#,
                "spec.credentials.secret",
                "a confidential client needs its secret",
            ),
        ] {
            let yaml = format!(
                "apiVersion: palisade.dev/v1alpha1\nkind: KeycloakAdapter\nmetadata: {{name: kc}}\nspec: {{\"selector\": {{\"matchLabels\": {{\"app\": \"web\"}}}}, \"realm\":\"demo\",\"auth-server-url\":\"https://kc.example\",\"resource\":\"web\",\"credentials\":{credentials}}}\n"
            );
            let err = crate::policy::PolicySet::from_yaml_str(&yaml, "kc.yaml").unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert!(err.to_string().contains(said), "{err}");
            assert!(
                !err.to_string().contains("hunter2x") && !err.to_string().contains("8812736450192"),
                "{err}"
            );
        }
    }

    #[test]
    fn keycloak_json_loads_and_names_bad_fields() {
        let ok = KeycloakAdapterConfig::from_json_str(
            r#"{"realm":"demo","auth-server-url":"http://kc:8080/","resource":"api","bearer-only":true,"credentials":{"secret":"hunter2"}}"#,
            "keycloak.json",
        )
        .unwrap();
        assert_eq!(ok.issuer(), "http://kc:8080/realms/demo");
        assert!(!format!("{ok:?}").contains("hunter2"));
        let err = KeycloakAdapterConfig::from_json_str(
            r#"{"realm":"demo","auth-server-url":"x","bearer-onli":true}"#,
            "keycloak.json",
        )
        .unwrap_err();
        assert!(err.to_string().contains("bearer-onli"), "{err}");
        let err = KeycloakAdapterConfig::from_json_str(
            r#"{"realm":"demo","auth-server-url":"/auth"}"#,
            "keycloak.json",
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("auth-server-url"), "{err}");
    }
}
