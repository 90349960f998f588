//! Building the authenticator from a policy file: Istio `RequestAuthentication`,
//! Palisade `JwtSettings` and Keycloak adapter documents.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use palisade_core::policy::{
    ClientAuthMethod, Document, DpopSpec, DurationSpec, FromPolicy, IntrospectionSpec, JwtRuleSpec,
    JwtSettingsSpec, KeycloakAdapterConfig, PolicyError, WorkloadPolicy, read_secret_file,
};

use crate::authenticator::JwtAuthenticator;
use crate::config::{ConfigError, FetchSettings, Provider, ProviderBuilder, TokenSource};
use crate::dpop::{DpopSettings, MemoryReplayStore, NonceSource, ReplayStore};
use crate::introspect::Introspection;
use crate::resource::ResourceMetadata;

impl FromPolicy for JwtAuthenticator {
    /// Builds the authenticator for a workload from its policy documents:
    /// one provider per issuer of the `jwtRules` entries (one issuer's
    /// rules in two documents that differ in their `audiences` alone are
    /// one, with every audience) and per `KeycloakAdapter`, tuned by
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
        let built = from_policy(policy, false)?;
        if built.is_none() {
            // No issuer: the fetch counter is still on /metrics, at zero,
            // without one (the example services' contract lists it; an
            // empty label is Prometheus's absent one).
            crate::jwks::count_no_fetches("");
        }
        Ok(built)
    }
}

impl JwtAuthenticator {
    /// [`FromPolicy::from_policy`], checked and built the same way, but the
    /// authenticator never fetches keys: no thread is started and no issuer
    /// is contacted, now or later. Tokens of issuers whose keys are in the
    /// file (`jwks`, a Keycloak `realm-public-key`) are verified as usual;
    /// the others are refused at once as [`JwtError::KeysUnavailable`](crate::JwtError::KeysUnavailable).
    ///
    /// For tools that check a policy file or explain its decisions offline
    /// (`palisade check`, `palisade explain`), never for serving.
    ///
    /// # Errors
    /// As [`FromPolicy::from_policy`]: a [`PolicyError`] naming the file,
    /// document and field.
    pub fn from_policy_offline(policy: &WorkloadPolicy<'_>) -> Result<Option<JwtAuthenticator>, PolicyError> {
        from_policy(policy, true)
    }
}

fn from_policy<'p>(
    policy: &WorkloadPolicy<'p>,
    offline: bool,
) -> Result<Option<JwtAuthenticator>, PolicyError> {
    // In the order they take effect, each setting the last one's: the root
    // namespace's, then the workload's own namespace's (as a namespace's
    // Istio documents override the mesh's); see also `for_issuer`. Within
    // a namespace a setting is given once (every `PolicySet` is checked).
    let mut settings: Vec<(&Document, &JwtSettingsSpec)> = policy.jwt_settings().collect();
    settings.sort_by_key(|(d, _)| d.metadata.namespace() == policy.workload().namespace);
    let mut builder = JwtAuthenticator::builder().realm(policy.workload().service.clone());
    builder.offline = offline;
    for (doc, s) in settings.iter().filter(|(_, s)| s.issuer.is_none()) {
        if let Some(r) = &s.realm {
            builder = builder.realm(r.clone());
        }
        if let Some(n) = s.max_token_size {
            builder = builder.max_token_size(n.get());
        }
        if let Some(n) = s.verified_token_cache {
            builder = builder.cache_entries(n);
        }
        if let Some(d) = &s.dpop {
            let store = replay_store(d.replay_store.as_deref(), offline, |m| {
                policy.error_at(doc, "spec.dpop.replayStore", m)
            })?;
            builder = dpop(builder, d, store).map_err(|(m, source)| {
                let e = policy.error_at(doc, "spec.dpop.nonceSecretFile", m);
                match source {
                    Some(source) => e.with_source(source),
                    None => e,
                }
            })?;
        }
        if let Some(r) = &s.resource_metadata {
            let mut meta =
                ResourceMetadata::new(r.resource.clone()).scopes(r.scopes.iter().flatten().cloned());
            if let Some(n) = &r.resource_name {
                meta = meta.name(n.clone());
            }
            if let Some(d) = &r.documentation {
                meta = meta.documentation(d.clone());
            }
            builder = builder.resource_metadata(meta);
        }
    }
    // Each provider's issuer and where it is written: (issuer, document,
    // the issuer's field, the inline keys' field).
    let mut written: Vec<Written<'_>> = Vec::new();
    let mut once = |issuer: &str, doc: &'p Document, field: String, keys: String| {
        if let Some((_, first, first_field, _)) = written.iter().find(|(i, ..)| i == issuer) {
            // Two `jwtRules` could have been one (`merged_rules`); a
            // Keycloak adapter's issuer never merges.
            let (why, fix) = if [doc, *first].iter().all(|d| d.kind == "RequestAuthentication") {
                (
                    ", with other settings than its audiences",
                    ": Istio lets a token in by either rule; give the rules the same settings but for their audiences, or keep one",
                )
            } else {
                ("", ": keep one")
            };
            return Err(policy.error_at(
                doc,
                &field,
                format!(
                    "issuer `{issuer}` is configured twice for this workload{why} (also {} {first_field}){fix}",
                    first.resource()
                ),
            ));
        }
        written.push((issuer.to_owned(), doc, field, keys));
        Ok(())
    };
    for (doc, i, rule) in &merged_rules(policy) {
        let (doc, rule) = (*doc, &**rule);
        {
            let field = format!("spec.jwtRules[{i}]");
            once(
                &rule.issuer,
                doc,
                format!("{field}.issuer"),
                format!("{field}.jwks"),
            )?;
            let mut fetch = fetch_settings(policy, &settings, &rule.issuer, None)?;
            if let Some(t) = rule.timeout {
                fetch.timeout = t.get();
            }
            let b = tune(
                istio_provider(policy, rule),
                policy,
                &settings,
                &rule.issuer,
                None,
            )?;
            let provider = b.fetch_settings(fetch).build().map_err(|e| {
                let at = format!("{field}{}", rule_field(rule, &e));
                policy.error_at(doc, &at, e.to_string()).with_source(e)
            })?;
            builder = builder.provider(provider);
        }
    }
    for (doc, kc) in policy.keycloak_adapters() {
        once(
            &kc.issuer(),
            doc,
            "spec.realm".into(),
            "spec.realm-public-key".into(),
        )?;
        let b = keycloak_provider(kc).map_err(|e| policy.error_at(doc, "spec", e))?;
        // Its settings between the mesh's JwtSettings and its issuer's own:
        // the more particular wins.
        let fetch = fetch_settings(policy, &settings, &kc.issuer(), Some(kc))?;
        let b = tune(b, policy, &settings, &kc.issuer(), Some(kc))?;
        let provider = b
            .fetch_settings(fetch)
            .build()
            .map_err(|e| policy.error_at(doc, "spec", e.to_string()).with_source(e))?;
        builder = builder.provider(provider);
    }
    let Some((_, last, ..)) = written.last() else {
        // Settings for the workload's JWT authenticator, and none to apply them to.
        let lonely = settings
            .iter()
            .filter(|(_, s)| s.dpop.is_some() || s.resource_metadata.is_some());
        for (doc, _) in lonely {
            let why = "dpop and resourceMetadata apply to no issuer: no RequestAuthentication or KeycloakAdapter applies to this workload";
            palisade_core::config_warning!(target: "palisade::jwt", "{}", policy.error_at(doc, "spec", why));
        }
        return Ok(None);
    };
    builder.build().map(Some).map_err(|e| {
        // Inline keys are parsed here: name the field that holds them.
        let (doc, field) = match &e {
            ConfigError::InvalidInlineKeys(issuer, _) => written
                .iter()
                .find(|(i, ..)| i == issuer)
                .map_or((*last, ""), |(_, doc, _, keys)| (*doc, keys.as_str())),
            _ => (*last, ""),
        };
        policy.error_at(doc, field, e.to_string()).with_source(e)
    })
}

/// A provider's issuer and where it is written: the document, the issuer's
/// field and the field of its inline keys.
type Written<'a> = (String, &'a Document, String, String);

/// The field of a `jwtRules` entry a provider's build error is about
/// (`""`: the entry as a whole).
fn rule_field(rule: &JwtRuleSpec, e: &ConfigError) -> String {
    match e {
        ConfigError::InvalidIssuer(_) => ".issuer".into(),
        ConfigError::InvalidJwksUri(_) => ".jwksUri".into(),
        ConfigError::InvalidInlineKeys(..) => ".jwks".into(),
        ConfigError::InvalidHeaderName(name) => {
            let same = |h: &str| h.eq_ignore_ascii_case(name);
            if let Some(k) = rule.from_headers.iter().position(|h| same(&h.name)) {
                format!(".fromHeaders[{k}].name")
            } else if rule.output_payload_to_header.as_deref().is_some_and(same) {
                ".outputPayloadToHeader".into()
            } else if let Some(k) = rule.output_claim_to_headers.iter().position(|c| same(&c.header)) {
                format!(".outputClaimToHeaders[{k}].header")
            } else {
                String::new()
            }
        }
        ConfigError::OutOfRange(_) if rule.timeout.is_some_and(|t| t.get().is_zero()) => ".timeout".into(),
        _ => String::new(),
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

/// The workload's `jwtRules`, in file order, with those of one issuer in
/// several documents (a mesh-wide rule in the root namespace and a
/// namespace's, say) that differ in their `audiences` alone made one, with
/// every audience (an empty list standing for the service's names, as the
/// rule alone reads it): Istio lets a token in by any rule of its issuer,
/// so by any of their audiences. Rules that differ otherwise stay apart,
/// and the second is refused.
fn merged_rules<'p>(policy: &WorkloadPolicy<'p>) -> Vec<(&'p Document, usize, Cow<'p, JwtRuleSpec>)> {
    let w = policy.workload();
    let audiences = |r: &JwtRuleSpec| {
        if r.audiences.is_empty() {
            vec![w.host(), w.service.clone()]
        } else {
            r.audiences.clone()
        }
    };
    let but_audiences = |r: &JwtRuleSpec| {
        let mut r = r.clone();
        r.audiences.clear();
        r
    };
    let mut rules: Vec<(&'p Document, usize, Cow<'p, JwtRuleSpec>)> = Vec::new();
    for (doc, spec) in policy.request_authentications() {
        for (i, rule) in spec.jwt_rules.iter().enumerate() {
            let same = rules.iter_mut().find(|(d, _, r)| {
                !std::ptr::eq(*d, doc) && r.issuer == rule.issuer && but_audiences(r) == but_audiences(rule)
            });
            if let Some((_, _, first)) = same {
                let mut all = audiences(first);
                for a in audiences(rule) {
                    if !all.contains(&a) {
                        all.push(a);
                    }
                }
                first.to_mut().audiences = all;
                continue;
            }
            rules.push((doc, i, Cow::Borrowed(rule)));
        }
    }
    rules
}

fn istio_provider(policy: &WorkloadPolicy<'_>, rule: &JwtRuleSpec) -> ProviderBuilder {
    let mut b = Provider::builder(rule.issuer.clone()).envoy_audience_match();
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
/// win), each group in the order of `settings` (the root namespace's, then
/// the workload's namespace's).
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
    mut adapter: Option<&KeycloakAdapterConfig>,
) -> Result<FetchSettings, PolicyError> {
    let mut f = FetchSettings::default();
    for (doc, s) in for_issuer(settings, issuer) {
        if s.issuer.is_some()
            && let Some(kc) = adapter.take()
        {
            keycloak_fetch(kc, &mut f);
        }
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
            f.extra_ca_pem = Some(std::fs::read(path).map_err(|e| {
                policy
                    .error_at(doc, "spec.caFile", format!("cannot read {path}: {e}"))
                    .with_source(e)
            })?);
            crate::jwks::check_ca_bundle(&f)
                .map_err(|e| policy.error_at(doc, "spec.caFile", format!("{path}: {e}")))?;
        }
    }
    if let Some(kc) = adapter {
        keycloak_fetch(kc, &mut f);
    }
    Ok(f)
}

/// Applies the verification settings of the documents of [`for_issuer`],
/// and a Keycloak adapter's `principal-attribute` after the mesh's
/// settings and before its issuer's own.
fn tune(
    mut b: ProviderBuilder,
    policy: &WorkloadPolicy<'_>,
    settings: &[(&Document, &JwtSettingsSpec)],
    issuer: &str,
    adapter: Option<&KeycloakAdapterConfig>,
) -> Result<ProviderBuilder, PolicyError> {
    let mut principal = adapter.and_then(|kc| kc.principal_attribute.as_ref());
    for (doc, s) in for_issuer(settings, issuer) {
        if s.issuer.is_some()
            && let Some(attr) = principal.take()
        {
            b = b.principal_claim(attr.clone());
        }
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
        if let Some(c) = &s.roles_claim {
            b = b.roles_claim(c.clone());
        }
        if let Some(ids) = &s.client_ids {
            b = b.client_ids(ids.iter().cloned());
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
        if let Some(t) = &s.tenants {
            b = b.tenants(t.iter().cloned());
        }
        if let Some(n) = s.max_tenants {
            b = b.max_tenants(n.get());
        }
        if let Some(i) = &s.introspection {
            b = b.introspection(introspection(i).map_err(|(field, m, source)| {
                let e = policy.error_at(doc, &field, m);
                match source {
                    Some(source) => e.with_source(source),
                    None => e,
                }
            })?);
        }
    }
    if let Some(attr) = principal {
        b = b.principal_claim(attr.clone());
    }
    if let Some(uri) = policy.jwks_uri_override(issuer) {
        if !palisade_core::syntax::is_http_url_pattern(uri) {
            return Err(PolicyError::new(
                policy.source(),
                format!(
                    "the JWKS URI PolicySet::jwks_uri_override gave issuer `{issuer}`, `{}`, is not an http(s) URL",
                    palisade_core::syntax::url_without_credentials(uri)
                ),
            ));
        }
        // A relaxation of what the file trusts, made in code (a test's
        // stand-in issuer): said aloud each time.
        tracing::warn!(
            target: "palisade::jwt",
            issuer,
            jwks_uri = %palisade_core::syntax::url_without_credentials(uri),
            "the keys of this issuer are fetched from the URI the code set (PolicySet::jwks_uri_override), not from where {} says",
            policy.source(),
        );
        b = b.jwks_uri(uri);
    }
    Ok(b)
}

/// The replay store `spec.dpop.replayStore` names. Every authenticator
/// built from a policy file with the same store shares one, so a proof
/// accepted just before a reload cannot be replayed just after it; a Redis
/// store is reached when first named (not offline), and kept while an
/// authenticator uses it ([`Registry`](palisade_core::reload::Registry)). `err` locates
/// a refusal; one that did not reach the store carries the I/O error
/// (a hot reload tries such a file again).
fn replay_store(
    url: Option<&str>,
    offline: bool,
    err: impl Fn(String) -> PolicyError,
) -> Result<Arc<dyn ReplayStore>, PolicyError> {
    static MEMORY: OnceLock<Arc<MemoryReplayStore>> = OnceLock::new();
    let url = match url {
        // Offline nothing is served: the URL was checked when the file loaded.
        Some(url) if url != "memory" && !offline => url,
        _ => return Ok(MEMORY.get_or_init(|| Arc::new(MemoryReplayStore::new())).clone()),
    };
    #[cfg(feature = "redis")]
    {
        use crate::dpop::RedisReplayStore;
        // While an authenticator uses it (the old one serves while a
        // reload builds the new one).
        static REDIS: palisade_core::reload::Registry<String, RedisReplayStore> =
            palisade_core::reload::Registry::new();
        let store = REDIS.get_or_make(url.to_owned(), || {
            RedisReplayStore::builder(url)
                .connect_blocking()
                .map(Arc::new)
                .map_err(|e| match e {
                    // Not reached: what may answer later.
                    crate::dpop::DpopConfigError::ReplayStoreUnreachable(_) => {
                        err(e.to_string()).unreachable(e)
                    }
                    // What the file says (a URL Redis's client refuses),
                    // which only an edit changes.
                    _ => err(e.to_string()).with_source(e),
                })
        })?;
        Ok(store)
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = url;
        Err(err(
            "a Redis replay store needs palisade-jwt's `redis` feature".into()
        ))
    }
}

/// `spec.dpop` (checked when the file loaded), with its replay store; an
/// error is `nonceSecretFile`'s message and the secret file's error.
fn dpop(
    mut builder: crate::JwtAuthenticatorBuilder,
    spec: &DpopSpec,
    replay_store: Arc<dyn ReplayStore>,
) -> Result<crate::JwtAuthenticatorBuilder, (String, Option<palisade_core::policy::SecretFileError>)> {
    let mut settings = DpopSettings {
        replay_store,
        ..DpopSettings::default()
    };
    if let Some(algs) = &spec.algorithms {
        settings.algorithms = algs.iter().filter_map(|a| a.parse().ok()).collect();
    }
    if let Some(m) = spec.max_age {
        settings.max_age = m.get();
    }
    settings.require_nonce = spec.require_nonce.unwrap_or(false);
    if settings.require_nonce {
        settings.nonce_source = match &spec.nonce_secret_file {
            // Every replica given the file accepts the others' nonces; a
            // reload of the same file keeps the nonces handed out valid.
            Some(file) => {
                let secret = read_secret_file(file).map_err(|e| (e.to_string(), Some(e)))?;
                Some(
                    NonceSource::from_secret(secret.as_bytes(), NonceSource::DEFAULT_WINDOW)
                        .map_err(|e| (format!("`{file}`: {e}"), None))?,
                )
            }
            None => {
                tracing::info!(target: "palisade::jwt", "DPoP nonces are made with a key of this process's own: replicas behind one load balancer refuse each other's nonces (clients are asked for a new one); give them one file (JwtSettings dpop.nonceSecretFile)");
                // One nonce key per process: a reload keeps the nonces handed out valid.
                static NONCES: OnceLock<Option<NonceSource>> = OnceLock::new();
                NONCES
                    .get_or_init(|| NonceSource::generate(NonceSource::DEFAULT_WINDOW).ok())
                    .clone()
            }
        };
    }
    builder = builder.dpop(settings);
    if let Some(o) = &spec.origin {
        builder = builder.dpop_origin(o.clone());
    }
    Ok(builder)
}

/// `spec.introspection`, its secret read; an error is its field, message and
/// the secret file's error.
fn introspection(
    spec: &IntrospectionSpec,
) -> Result<Introspection, (String, String, Option<palisade_core::policy::SecretFileError>)> {
    let secret = match (&spec.client_secret, &spec.client_secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(file)) => read_secret_file(file).map_err(|e| {
            (
                "spec.introspection.clientSecretFile".to_owned(),
                e.to_string(),
                Some(e),
            )
        })?,
        (None, None) => return Err(("spec.introspection".into(), "no client secret".into(), None)),
    };
    let mut i = match spec.client_auth_method {
        Some(ClientAuthMethod::ClientSecretPost) => {
            Introspection::client_secret_post(spec.client_id.clone(), secret)
        }
        _ => Introspection::client_secret_basic(spec.client_id.clone(), secret),
    };
    if let Some(e) = &spec.endpoint {
        i = i.endpoint(e.clone());
    }
    if spec.jwts == Some(true) {
        i = i.also_jwts();
    }
    if let Some(d) = duration(spec.cache_time) {
        i = i.cache_time(d);
    }
    if let Some(d) = duration(spec.negative_cache_time) {
        i = i.negative_cache_time(d);
    }
    if let Some(n) = spec.cache_entries {
        i = i.cache_entries(u64::try_from(n.get()).unwrap_or(u64::MAX));
    }
    if let Some(d) = duration(spec.serve_stale_for) {
        i = i.serve_stale_when_unreachable(d);
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use palisade_core::Verification;
    use palisade_core::policy::{PolicySet, Workload};

    use super::*;
    use crate::JwtError;

    /// The offline authenticator of `set` for the workload `default/details`.
    fn details_offline(set: &PolicySet) -> Result<Option<JwtAuthenticator>, PolicyError> {
        JwtAuthenticator::from_policy_offline(&set.for_workload(&Workload::new("details", "default")))
    }

    /// A policy whose issuer's keys are fetched from `port` on loopback.
    fn policy_fetching_from(port: u16) -> PolicySet {
        let yaml = format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  jwtRules:
  - issuer: https://idp.example/realms/shop
    jwksUri: http://127.0.0.1:{port}/certs
"
        );
        PolicySet::from_yaml_str(&yaml, "jwt.yaml").unwrap()
    }

    /// Whether something connected to `listener` within `wait`.
    fn connected_within(listener: &TcpListener, wait: Duration) -> bool {
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if listener.accept().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A workload's errors name the document and field they are about,
    /// also when only compiling its documents together shows them.
    #[test]
    fn errors_of_the_workloads_rules_name_their_field() {
        let ra = |name: &str, rule: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}}}\nspec:\n  jwtRules:\n  - issuer: https://idp.example\n{rule}"
            )
        };
        let compile = |yaml: &str| {
            let set = PolicySet::from_yaml_str(yaml, "jwt.yaml").unwrap();
            details_offline(&set).unwrap_err()
        };
        let twice = format!("{}---\n{}", ra("a", "    jwks: '{\"keys\": []}'\n"), ra("b", ""));
        let err = compile(&twice);
        assert_eq!(
            (err.document, err.field.as_deref()),
            (Some(2), Some("spec.jwtRules[0].issuer")),
            "{err}"
        );
        assert!(
            err.message
                .contains("also RequestAuthentication default/a spec.jwtRules[0].issuer"),
            "{err}"
        );
        let unusable = format!(
            "{}---\n{}",
            // A JWKS in shape (checked when the file loads), with a key
            // only building the authenticator reads.
            ra("a", "    jwks: '{\"keys\": [{\"kty\": \"nope\"}]}'\n"),
            ra("b", "").replace("idp.example", "other.example")
        );
        let err = compile(&unusable);
        assert_eq!(
            (err.document, err.field.as_deref()),
            (Some(1), Some("spec.jwtRules[0].jwks")),
            "{err}"
        );
        // Refused when the file loads, whatever workload it names.
        let timeout = ra("a", "    timeout: 0s\n");
        let err = PolicySet::from_yaml_str(&timeout, "jwt.yaml").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.jwtRules[0].timeout"), "{err}");
    }

    #[test]
    fn offline_authenticator_never_contacts_the_issuer_and_refuses_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let set = policy_fetching_from(listener.local_addr().unwrap().port());
        let policy = set.for_workload(&Workload::new("details", "default"));
        let jwt = JwtAuthenticator::from_policy_offline(&policy).unwrap().unwrap();
        assert_eq!(
            jwt.issuers().collect::<Vec<_>>(),
            ["https://idp.example/realms/shop"]
        );
        assert!(!connected_within(&listener, Duration::from_millis(500)));
        // A token that needs a fetched key: refused without waiting for one.
        let part = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let token = format!(
            "{}.{}.c2ln",
            part(r#"{"alg":"RS256","kid":"k1"}"#),
            part(
                r#"{"iss":"https://idp.example/realms/shop","sub":"alice","aud":"details","exp":9999999999}"#
            )
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        assert_eq!(
            rt.block_on(jwt.verify(&token)).unwrap_err(),
            JwtError::KeysUnavailable
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(!connected_within(&listener, Duration::from_millis(200)));
    }

    #[test]
    fn the_serving_authenticator_does_fetch_which_is_what_offline_avoids() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let set = policy_fetching_from(listener.local_addr().unwrap().port());
        let policy = set.for_workload(&Workload::new("details", "default"));
        let _jwt = JwtAuthenticator::from_policy(&policy).unwrap().unwrap();
        assert!(connected_within(&listener, Duration::from_secs(5)));
    }

    /// One issuer's rules in two documents (the mesh's and a namespace's)
    /// that differ in their audiences alone: a token of any of their
    /// audiences gets in, as Istio lets it in by either rule (the empty
    /// list standing for the service's names). Rules that differ otherwise
    /// are refused, naming the second.
    #[test]
    fn one_issuers_rules_in_two_documents_take_every_audience() {
        let rule = |ns: &str, audiences: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: {ns}}}\nspec:\n  jwtRules:\n  - issuer: https://idp.example\n    jwksUri: https://idp.example/jwks\n{audiences}---\n"
            )
        };
        // The mesh's rule, and the namespace's with `extra`.
        let with_mesh = |extra: &str| {
            let yaml = format!(
                "{}{}",
                rule("istio-system", "    audiences: [mesh]\n"),
                rule("default", extra)
            );
            PolicySet::from_yaml_str(&yaml, "p.yaml").unwrap()
        };
        let set = with_mesh("");
        let jwt = details_offline(&set).unwrap().unwrap();
        let check = |aud: &str| {
            let claims = serde_json::json!({"iss": "https://idp.example", "sub": "alice", "aud": aud});
            jwt.identity_for_verified_claims(claims.as_object().unwrap().clone(), Verification::assertion())
        };
        // (An Istio rule's audiences compare as Envoy compares them.)
        for aud in [
            "mesh",
            "details",
            "details.default.svc.cluster.local",
            "https://mesh/",
        ] {
            assert!(check(aud).is_ok(), "{aud}");
        }
        assert_eq!(check("reviews").unwrap_err(), JwtError::InvalidAudience);
        // Other settings too: refused, naming the second document's rule.
        let set = with_mesh("    forwardOriginalToken: true\n");
        let err = details_offline(&set).unwrap_err();
        assert_eq!(err.document, Some(2), "{err}");
        assert_eq!(err.field.as_deref(), Some("spec.jwtRules[0].issuer"), "{err}");
        assert!(err.to_string().contains("configured twice"), "{err}");
    }

    #[test]
    fn verified_claims_are_mapped_by_their_issuers_provider() {
        let yaml = "apiVersion: palisade.dev/v1alpha1
kind: KeycloakAdapter
metadata: {name: kc}
spec:
  realm: shop
  auth-server-url: https://kc.example/
  resource: details
  bearer-only: true
  principal-attribute: email
";
        let set = PolicySet::from_yaml_str(yaml, "kc.yaml").unwrap();
        let jwt = details_offline(&set).unwrap().unwrap();
        let claims = serde_json::json!({
            "iss": "https://kc.example/realms/shop",
            "sub": "u1",
            "email": "alice@example.com",
            "resource_access": {"details": {"roles": ["editor"]}},
            "scope": "openid export",
        });
        let id = jwt
            .identity_for_verified_claims(claims.as_object().unwrap().clone(), Verification::assertion())
            .unwrap();
        assert_eq!(
            id.request_principal_str(),
            Some("https://kc.example/realms/shop/u1")
        );
        let token = id.token().unwrap();
        // The provider's principal claim, as for a bearer token.
        assert_eq!(token.preferred_username.as_deref(), Some("alice@example.com"));
        assert!(id.has_client_role("details", "editor"));
        assert!(id.has_scope("export"));
        let no_issuer = serde_json::json!({"sub": "u1"});
        assert_eq!(
            jwt.identity_for_verified_claims(
                no_issuer.as_object().unwrap().clone(),
                Verification::assertion()
            )
            .unwrap_err(),
            JwtError::MissingClaim("iss")
        );
    }

    /// A Keycloak adapter's settings stand between the mesh's `JwtSettings`
    /// (no `issuer`) and its issuer's own: the more particular wins.
    #[test]
    fn an_adapters_settings_win_over_the_meshs_and_lose_to_its_issuers() {
        let adapter = "apiVersion: palisade.dev/v1alpha1
kind: KeycloakAdapter
metadata: {name: kc}
spec: {realm: shop, auth-server-url: 'https://kc.example/', resource: details, bearer-only: true, principal-attribute: email}
";
        let settings = |issuer: &str| {
            format!(
                "---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: s}}
spec: {{{issuer}principalClaim: nickname}}
"
            )
        };
        let principal = |yaml: &str| {
            let set = PolicySet::from_yaml_str(yaml, "kc.yaml").unwrap();
            let jwt = JwtAuthenticator::from_policy_offline(
                &set.for_workload(&Workload::new("details", "default")),
            )
            .unwrap()
            .unwrap();
            let claims = serde_json::json!({
                "iss": "https://kc.example/realms/shop", "sub": "u1",
                "email": "alice@example.com", "nickname": "al",
            });
            let id = jwt
                .identity_for_verified_claims(claims.as_object().unwrap().clone(), Verification::assertion())
                .unwrap();
            id.token().unwrap().preferred_username.clone()
        };
        let mesh = format!("{adapter}{}", settings(""));
        assert_eq!(principal(&mesh).as_deref(), Some("alice@example.com"));
        let own = format!(
            "{adapter}{}",
            settings("issuer: 'https://kc.example/realms/shop', ")
        );
        assert_eq!(principal(&own).as_deref(), Some("al"));
    }

    /// `rolesClaim` makes a claim's values realm roles, for the identity
    /// and for the policies that read `realm_access.roles`; a value naming
    /// Keycloak's own roles is refused, naming the field.
    #[test]
    fn roles_claim_adds_realm_roles_and_refuses_keycloaks_own() {
        let yaml = |claim: &str| {
            format!(
                "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules: [{{issuer: https://login.example/t/v2.0, audiences: [details]}}]
---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: entra, namespace: default}}
spec: {{issuer: https://login.example/t/v2.0, rolesClaim: '{claim}'}}
"
            )
        };
        let set = PolicySet::from_yaml_str(&yaml("roles"), "jwt.yaml").unwrap();
        let jwt = details_offline(&set).unwrap().unwrap();
        let claims = serde_json::json!({
            "iss": "https://login.example/t/v2.0", "sub": "u1", "aud": "details",
            "roles": ["Orders.Admin"], "groups": ["g1"],
        });
        let id = jwt
            .identity_for_verified_claims(claims.as_object().unwrap().clone(), Verification::assertion())
            .unwrap();
        assert!(id.has_realm_role("Orders.Admin"));
        assert!(!id.has_realm_role("g1"));
        assert_eq!(
            id.claims().unwrap()["realm_access"]["roles"],
            serde_json::json!(["Orders.Admin"])
        );
        for claim in ["", "realm_access.roles", "resource_access.details.roles"] {
            let err = PolicySet::from_yaml_str(&yaml(claim), "jwt.yaml").unwrap_err();
            assert_eq!(err.document, Some(2), "{err}");
            assert_eq!(err.field.as_deref(), Some("spec.rolesClaim"), "{err}");
        }
    }

    /// Cognito from a policy file: an access token without `aud` is
    /// accepted for a client `clientIds` names, its groups as roles; one of
    /// another client, or an ID token, is refused.
    #[test]
    fn client_ids_accept_a_cognito_access_token_without_an_audience() {
        let pool = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Ab12";
        let yaml = format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules: [{{issuer: '{pool}'}}]
---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: cognito, namespace: default}}
spec: {{issuer: '{pool}', clientIds: [6v9i4k0], rolesClaim: 'cognito:groups', principalClaim: username}}
"
        );
        let set = PolicySet::from_yaml_str(&yaml, "jwt.yaml").unwrap();
        let jwt = details_offline(&set).unwrap().unwrap();
        let check = |claims: serde_json::Value| {
            jwt.identity_for_verified_claims(claims.as_object().unwrap().clone(), Verification::assertion())
        };
        let id = check(serde_json::json!({
            "iss": pool, "sub": "u1", "client_id": "6v9i4k0", "token_use": "access",
            "username": "alice", "cognito:groups": ["admin"],
        }))
        .unwrap();
        assert!(id.has_realm_role("admin"));
        assert_eq!(id.name(), Some("alice"));
        let other =
            serde_json::json!({"iss": pool, "sub": "u1", "client_id": "other", "token_use": "access"});
        assert_eq!(check(other).unwrap_err(), JwtError::InvalidAudience);
        let id_token = serde_json::json!({"iss": pool, "sub": "u1", "aud": "6v9i4k0", "token_use": "id"});
        assert_eq!(check(id_token).unwrap_err(), JwtError::WrongType);
        let empty = yaml.replace("clientIds: [6v9i4k0]", "clientIds: []");
        let err = PolicySet::from_yaml_str(&empty, "jwt.yaml").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.clientIds"), "{err}");
        // Mesh-wide, client ids would open every issuer to tokens without
        // an audience: refused.
        let everyone = yaml.replace(&format!("spec: {{issuer: '{pool}', "), "spec: {");
        assert_ne!(everyone, yaml);
        let err = PolicySet::from_yaml_str(&everyone, "jwt.yaml").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.clientIds"), "{err}");
    }

    /// A Redis replay store is shared by the authenticators that name it
    /// (a reload's new one and the old), kept while one uses it and
    /// connected anew once none does.
    #[cfg(feature = "redis")]
    #[test]
    fn one_redis_replay_store_per_url_while_it_is_used() {
        let redis = palisade_testkit::redis::RedisServer::start().unwrap();
        let err = |m: String| PolicyError::new("dpop.yaml", m);
        let first = replay_store(Some(&redis.url()), false, err).unwrap();
        let again = replay_store(Some(&redis.url()), false, err).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "a reload finds the store in use");
        let weak = Arc::downgrade(&first);
        drop((first, again));
        assert!(weak.upgrade().is_none(), "not kept once unused");
        assert!(replay_store(Some(&redis.url()), false, err).is_ok());
    }

    /// A setting of the workload's own namespace overrides the root
    /// namespace's, whichever comes first in the file (as Istio's
    /// namespace-wide documents override the mesh's).
    #[test]
    fn the_workloads_namespace_overrides_the_root_namespace_whatever_the_order() {
        let rule = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules: [{issuer: https://kc.example/realms/shop, audiences: [details]}]
";
        let settings = |name: &str, namespace: &str, claim: &str| {
            format!(
                "apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{principalClaim: {claim}}}
"
            )
        };
        let own = settings("own", "default", "email");
        let mesh = settings("mesh", "istio-system", "nickname");
        for (first, second) in [(&own, &mesh), (&mesh, &own)] {
            let yaml = format!("{rule}---\n{first}---\n{second}");
            let set = PolicySet::from_yaml_str(&yaml, "jwt.yaml").unwrap();
            let jwt = JwtAuthenticator::from_policy_offline(
                &set.for_workload(&Workload::new("details", "default")),
            )
            .unwrap()
            .unwrap();
            let claims = serde_json::json!({
                "iss": "https://kc.example/realms/shop",
                "sub": "u1",
                "aud": "details",
                "email": "alice@example.com",
                "nickname": "al",
            });
            let id = jwt
                .identity_for_verified_claims(claims.as_object().unwrap().clone(), Verification::assertion())
                .unwrap();
            assert_eq!(
                id.token().unwrap().preferred_username.as_deref(),
                Some("alice@example.com"),
                "{yaml}"
            );
        }
        // Two of one namespace giving the setting, built in code: refused
        // as a file with them is.
        let set = PolicySet::from_yaml_str(&format!("{rule}---\n{own}---\n{mesh}"), "jwt.yaml").unwrap();
        let mut documents = set.documents().to_vec();
        documents[2].metadata.namespace = Some("default".into());
        let err = PolicySet::from_documents("code", documents).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.principalClaim"), "{err}");
    }

    /// A `caFile` that holds no usable certificate is refused at load,
    /// naming the document and the field.
    #[test]
    fn a_ca_file_without_a_certificate_is_refused_at_its_field() {
        let dir = palisade_testkit::TempDir::new("palisade-jwt-ca");
        let (bad, good) = (dir.path().join("bad.pem"), dir.path().join("good.pem"));
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&good, palisade_testkit::TestPki::new().ca_pem()).unwrap();
        let load = |file: &std::path::Path| {
            let yaml = format!(
                "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  jwtRules: [{{issuer: https://kc.example/realms/shop, audiences: [details]}}]
---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: tls}}
spec: {{caFile: '{}'}}
",
                file.display()
            );
            let set = PolicySet::from_yaml_str(&yaml, "jwt.yaml").unwrap();
            details_offline(&set).map(|jwt| jwt.is_some())
        };
        let err = load(&bad).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.caFile"), "{err}");
        assert!(err.to_string().contains("tls"), "{err}");
        assert_eq!(load(&good).ok(), Some(true));
    }

    #[test]
    fn verified_claims_are_checked_as_a_tokens_but_for_signature_and_time() {
        let yaml = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  jwtRules: [{issuer: https://kc.example/realms/shop, audiences: [details]}]
---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {name: tuning}
spec: {maxTokenLifetime: 5m, requiredType: at+jwt}
";
        let set = PolicySet::from_yaml_str(yaml, "jwt.yaml").unwrap();
        let jwt = details_offline(&set).unwrap().unwrap();
        let check = |claims: serde_json::Value| {
            jwt.identity_for_verified_claims(claims.as_object().unwrap().clone(), Verification::assertion())
                .map(|id| id.request_principal_str().map(str::to_owned))
        };
        let iss = "https://kc.example/realms/shop";
        // Long expired, issued long before, no `typ` to look at: the clock and
        // the header are not this check's.
        assert_eq!(
            check(
                serde_json::json!({"iss": iss, "sub": "alice", "aud": ["x", "details"], "exp": 1, "iat": 0})
            ),
            Ok(Some(format!("{iss}/alice")))
        );
        assert_eq!(
            check(serde_json::json!({"iss": iss, "sub": "alice", "aud": "reviews"})),
            Err(JwtError::InvalidAudience)
        );
        assert_eq!(
            check(serde_json::json!({"iss": iss, "sub": "alice"})),
            Err(JwtError::MissingClaim("aud"))
        );
        assert_eq!(
            check(serde_json::json!({"iss": iss, "aud": "details"})),
            Err(JwtError::MissingClaim("sub"))
        );
        assert_eq!(
            check(serde_json::json!({"iss": iss, "sub": 7, "aud": "details"})),
            Err(JwtError::InvalidClaim("sub"))
        );
        assert_eq!(
            check(serde_json::json!({"iss": iss, "client_id": "svc", "aud": "details"})),
            Ok(Some(format!("{iss}/svc")))
        );
    }
}
