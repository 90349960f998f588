//! Building the authenticator from a policy file: Istio `RequestAuthentication`,
//! Palisade `JwtSettings` and Keycloak adapter documents.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use palisade_core::policy::{
    Document, DurationSpec, FromPolicy, JwtRuleSpec, JwtSettingsSpec, KeycloakAdapterConfig, PolicyError,
    WorkloadPolicy,
};

use crate::authenticator::JwtAuthenticator;
use crate::config::{FetchSettings, Provider, ProviderBuilder, TokenSource};

impl FromPolicy for JwtAuthenticator {
    /// Builds the authenticator for a workload from its policy documents:
    /// one provider per `jwtRules` entry and per `KeycloakAdapter`, tuned by
    /// `JwtSettings`. `None` when no document configures a JWT issuer.
    ///
    /// Istio semantics: an empty `audiences` accepts the workload's service
    /// name and host name; without `fromHeaders`/`fromParams`/`fromCookies`,
    /// tokens are read from `Authorization: Bearer` and the `access_token`
    /// query parameter.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the file, document and field.
    fn from_policy(policy: &WorkloadPolicy<'_>) -> Result<Option<JwtAuthenticator>, PolicyError> {
        let settings: Vec<(&Document, &JwtSettingsSpec)> = policy.jwt_settings().collect();
        let mut builder = JwtAuthenticator::builder().realm(policy.workload().service.clone());
        for (_, s) in settings.iter().filter(|(_, s)| s.issuer.is_none()) {
            if let Some(r) = &s.realm {
                builder = builder.realm(r.clone());
            }
            if let Some(n) = s.max_token_size {
                builder = builder.max_token_size(n.get());
            }
            if let Some(n) = s.verified_token_cache {
                builder = builder.cache_entries(n);
            }
        }
        let mut last_doc = None;
        for (doc, spec) in policy.request_authentications() {
            for (i, rule) in spec.jwt_rules.iter().enumerate() {
                let field = format!("spec.jwtRules[{i}]");
                let mut fetch = fetch_settings(policy, &settings, &rule.issuer)?;
                if let Some(t) = rule.timeout {
                    fetch.timeout = t.get();
                }
                let b = tune(istio_provider(policy, rule), policy, &settings, &rule.issuer)?;
                let provider = b
                    .fetch_settings(fetch)
                    .build()
                    .map_err(|e| policy.error_at(doc, &field, e.to_string()).with_source(e))?;
                builder = builder.provider(provider);
                last_doc = Some(doc);
            }
        }
        for (doc, kc) in policy.keycloak_adapters() {
            let b = keycloak_provider(kc).map_err(|e| policy.error_at(doc, "spec", e))?;
            let mut fetch = fetch_settings(policy, &settings, &kc.issuer())?;
            keycloak_fetch(kc, &mut fetch);
            let b = tune(b, policy, &settings, &kc.issuer())?;
            let provider = b
                .fetch_settings(fetch)
                .build()
                .map_err(|e| policy.error_at(doc, "spec", e.to_string()).with_source(e))?;
            builder = builder.provider(provider);
            last_doc = Some(doc);
        }
        let Some(doc) = last_doc else { return Ok(None) };
        builder
            .build()
            .map(Some)
            .map_err(|e| policy.error_at(doc, "", e.to_string()).with_source(e))
    }
}

impl JwtAuthenticator {
    /// Builds an authenticator for one `keycloak.json` adapter file.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the file and field.
    pub fn from_keycloak_json(path: impl AsRef<std::path::Path>) -> Result<JwtAuthenticator, PolicyError> {
        let name = path.as_ref().display().to_string();
        let kc = KeycloakAdapterConfig::from_json_file(&path)?;
        let err = |msg: String| PolicyError::new(&name, msg);
        let mut fetch = FetchSettings::default();
        keycloak_fetch(&kc, &mut fetch);
        let provider = keycloak_provider(&kc)
            .map_err(err)?
            .fetch_settings(fetch)
            .build()
            .map_err(|e| err(e.to_string()).with_source(e))?;
        JwtAuthenticator::builder()
            .realm(kc.realm.clone())
            .provider(provider)
            .build()
            .map_err(|e| err(e.to_string()).with_source(e))
    }
}

fn istio_provider(policy: &WorkloadPolicy<'_>, rule: &JwtRuleSpec) -> ProviderBuilder {
    let mut b = Provider::builder(rule.issuer.clone());
    if rule.audiences.is_empty() {
        let w = policy.workload();
        b = b.audience(w.host()).audience(w.service.clone());
    }
    for a in &rule.audiences {
        b = b.audience(a.clone());
    }
    match (&rule.jwks_uri, &rule.jwks) {
        (Some(u), _) => b = b.jwks_uri(u.clone()),
        (None, Some(j)) => b = b.jwks_inline(j.clone()),
        (None, None) => {}
    }
    for h in &rule.from_headers {
        b = b.source(TokenSource::Header {
            name: h.name.to_ascii_lowercase(),
            prefix: h.prefix.clone(),
        });
    }
    for p in &rule.from_params {
        b = b.source(TokenSource::Query(p.clone()));
    }
    for c in &rule.from_cookies {
        b = b.source(TokenSource::Cookie(c.clone()));
    }
    if rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty() {
        b = b
            .source(TokenSource::authorization_bearer())
            .source(TokenSource::Query("access_token".into()));
    }
    b = b.forward_original_token(rule.forward_original_token);
    if let Some(h) = &rule.output_payload_to_header {
        b = b.output_payload_to_header(h.to_ascii_lowercase());
    }
    for c in &rule.output_claim_to_headers {
        b = b.output_claim_to_header(c.claim.clone(), c.header.to_ascii_lowercase());
    }
    b
}

fn keycloak_provider(kc: &KeycloakAdapterConfig) -> Result<ProviderBuilder, String> {
    let mut b = Provider::builder(kc.issuer());
    if kc.verify_token_audience == Some(true) {
        let Some(resource) = &kc.resource else {
            return Err("verify-token-audience needs `resource`".into());
        };
        b = b.audience(resource.clone());
    } else {
        // Keycloak's own default; loud in the log (see `accept_any_audience`).
        b = b.dangerous().accept_any_audience();
    }
    if let Some(pk) = &kc.realm_public_key {
        b = b.public_key_pem(pk.clone());
    }
    if let Some(attr) = &kc.principal_attribute {
        b = b.principal_claim(attr.clone());
    }
    Ok(b)
}

fn keycloak_fetch(kc: &KeycloakAdapterConfig, f: &mut FetchSettings) {
    if let Some(s) = kc.min_time_between_jwks_requests {
        f.min_refresh_interval = Duration::from_secs(s);
    }
    if let Some(s) = kc.public_key_cache_ttl {
        f.default_ttl = Duration::from_secs(s);
        f.max_ttl = f.max_ttl.max(f.default_ttl);
        f.min_ttl = f.min_ttl.min(f.default_ttl);
    }
}

/// The `JwtSettings` documents that apply to `issuer`, in the order they
/// take effect: global ones first, then the issuer's own (which therefore
/// win), each group in file order.
fn for_issuer<'s, 'd>(
    settings: &'s [(&'d Document, &'d JwtSettingsSpec)],
    issuer: &str,
) -> Vec<&'s (&'d Document, &'d JwtSettingsSpec)> {
    let mut ordered: Vec<_> = settings
        .iter()
        .filter(|(_, s)| s.issuer.as_deref().is_none_or(|i| i == issuer))
        .collect();
    ordered.sort_by_key(|(_, s)| s.issuer.is_some());
    ordered
}

fn duration(v: Option<DurationSpec>) -> Option<Duration> {
    v.map(DurationSpec::get)
}

/// The fetch settings of `issuer`: defaults, then the documents of [`for_issuer`].
fn fetch_settings(
    policy: &WorkloadPolicy<'_>,
    settings: &[(&Document, &JwtSettingsSpec)],
    issuer: &str,
) -> Result<FetchSettings, PolicyError> {
    let mut f = FetchSettings::default();
    for (doc, s) in for_issuer(settings, issuer) {
        if let Some(d) = duration(s.jwks_cache_ttl) {
            f.default_ttl = d;
        }
        if let Some(d) = duration(s.min_refresh_interval) {
            f.min_refresh_interval = d;
        }
        if let Some(d) = duration(s.unknown_kid_wait) {
            f.unknown_kid_wait = d;
        }
        if let Some(d) = duration(s.max_stale) {
            f.max_stale = d;
        }
        if let Some(d) = duration(s.fetch_timeout) {
            f.timeout = d;
        }
        if let Some(n) = s.max_jwks_size {
            f.max_body = n.get();
        }
        if let Some(path) = &s.ca_file {
            f.extra_ca_pem = Some(
                std::fs::read(path)
                    .map_err(|e| policy.error_at(doc, "spec.caFile", format!("cannot read {path}: {e}")))?,
            );
        }
    }
    Ok(f)
}

/// Applies the verification settings of the documents of [`for_issuer`].
fn tune(
    mut b: ProviderBuilder,
    policy: &WorkloadPolicy<'_>,
    settings: &[(&Document, &JwtSettingsSpec)],
    issuer: &str,
) -> Result<ProviderBuilder, PolicyError> {
    for (doc, s) in for_issuer(settings, issuer) {
        if let Some(d) = duration(s.leeway) {
            b = b.leeway(d);
        }
        if let Some(d) = duration(s.max_token_lifetime) {
            b = b.max_lifetime(d);
        }
        if let Some(t) = &s.required_type {
            b = b.required_type(t.clone());
        }
        if let Some(c) = &s.principal_claim {
            b = b.principal_claim(c.clone());
        }
        if let Some(algs) = &s.algorithms {
            let mut parsed = Vec::new();
            for (i, a) in algs.iter().enumerate() {
                let field = format!("spec.algorithms[{i}]");
                let alg: Algorithm = a
                    .parse()
                    .map_err(|_| policy.error_at(doc, &field, format!("unknown algorithm `{a}`")))?;
                if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    return Err(policy.error_at(
                        doc,
                        &field,
                        "HMAC algorithms are configured in code, with their secret",
                    ));
                }
                parsed.push(alg);
            }
            b = b.algorithms(parsed);
        }
    }
    Ok(b)
}
