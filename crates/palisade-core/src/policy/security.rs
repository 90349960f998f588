//! `security.istio.io` (`v1`, `v1beta1`): `RequestAuthentication`,
//! `AuthorizationPolicy` and `PeerAuthentication`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::target::{self, Scope, TargetRefSpec};
use super::{FieldError, SelectorSpec};
use crate::authz::Action;

/// `RequestAuthentication.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RequestAuthenticationSpec {
    /// Which workloads it applies to, by label. Not together with
    /// [`Self::target_ref`] or [`Self::target_refs`].
    #[serde(default)]
    pub selector: Option<SelectorSpec>,
    /// The resource it is attached to (the older, single form of
    /// [`Self::target_refs`]).
    #[serde(default)]
    pub target_ref: Option<TargetRefSpec>,
    /// The resources it is attached to: a `Service` is the workload of that
    /// service name; a gateway or `ServiceEntry` is no in-process workload
    /// (see [`TargetRefSpec`]).
    #[serde(default)]
    pub target_refs: Vec<TargetRefSpec>,
    /// One rule per accepted issuer.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRuleSpec>,
}

impl RequestAuthenticationSpec {
    /// How it chooses workloads.
    pub(crate) fn scope(&self) -> Scope<'_> {
        Scope::of(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
        )
    }

    pub(super) fn check(&self) -> Result<(), FieldError> {
        target::check(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
        )?;
        let repeat = super::first_repeat(self.jwt_rules.iter().map(|r| &r.issuer));
        for (i, rule) in self.jwt_rules.iter().enumerate() {
            let at = |field: &str| format!("spec.jwtRules[{i}].{field}");
            if rule.issuer.trim().is_empty() {
                return Err((at("issuer"), "must not be empty".into()));
            }
            if let Some((_, j)) = repeat.filter(|(r, _)| *r == i) {
                return Err((
                    at("issuer"),
                    format!(
                        "issuer `{}` is configured twice (also spec.jwtRules[{j}])",
                        rule.issuer
                    ),
                ));
            }
            if rule.timeout.is_some_and(|t| t.get().is_zero()) {
                return Err((at("timeout"), "must be longer than 0s".into()));
            }
            crate::syntax::issuer_pattern(&rule.issuer).map_err(|e| (at("issuer"), e.into()))?;
            // Discovery, for a rule that names no keys, needs an http(s) issuer.
            if rule.jwks_uri.is_none()
                && rule.jwks.is_none()
                && !crate::syntax::is_http_url_pattern(&rule.issuer)
            {
                let shown = crate::syntax::url_without_credentials(&rule.issuer);
                return Err((
                    at("issuer"),
                    format!(
                        "`{shown}` is not an http(s) URL, so its keys cannot be discovered: give jwksUri or jwks"
                    ),
                ));
            }
            if let Some(jwks) = &rule.jwks
                && !serde_json::from_str::<serde_json::Value>(jwks).is_ok_and(|v| v["keys"].is_array())
            {
                return Err((at("jwks"), "not a JWKS: a JSON object with a `keys` array".into()));
            }
            if let Some(uri) = &rule.jwks_uri
                && !crate::syntax::is_http_url_pattern(uri)
            {
                let shown = crate::syntax::url_without_credentials(uri);
                return Err((at("jwksUri"), format!("`{shown}` is not an http(s) URL")));
            }
            let headers = rule
                .from_headers
                .iter()
                .enumerate()
                .map(|(k, h)| (format!("fromHeaders[{k}].name"), &h.name))
                .chain(
                    rule.output_payload_to_header
                        .iter()
                        .map(|h| ("outputPayloadToHeader".to_owned(), h)),
                )
                .chain(
                    rule.output_claim_to_headers
                        .iter()
                        .enumerate()
                        .map(|(k, c)| (format!("outputClaimToHeaders[{k}].header"), &c.header)),
                );
            for (field, name) in headers {
                if !crate::syntax::is_http_token(name) {
                    return Err((at(&field), format!("`{name}` is not an HTTP header name")));
                }
            }
            // As Istio's validation: an empty audience or claim name would
            // match nothing, or set no header, without a word.
            let named = [
                ("fromParams", &rule.from_params),
                ("fromCookies", &rule.from_cookies),
                ("audiences", &rule.audiences),
            ];
            if let Some(k) = rule
                .output_claim_to_headers
                .iter()
                .position(|c| c.claim.trim().is_empty())
            {
                return Err((
                    at(&format!("outputClaimToHeaders[{k}].claim")),
                    "must not be empty".into(),
                ));
            }
            for (field, names) in named {
                if let Some(k) = names.iter().position(|n| n.is_empty()) {
                    return Err((at(&format!("{field}[{k}]")), "must not be empty".into()));
                }
            }
            if rule.jwks_uri.is_some() && rule.jwks.is_some() {
                return Err((
                    format!("spec.jwtRules[{i}].jwks"),
                    "give either jwksUri or jwks, not both".into(),
                ));
            }
            for (j, claim) in rule.space_delimited_claims.iter().enumerate() {
                if claim.is_empty() {
                    return Err((
                        format!("spec.jwtRules[{i}].spaceDelimitedClaims[{j}]"),
                        "must not be empty".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `RequestAuthentication.spec.jwtRules[]`, as Istio defines it. `Debug`
/// shows `jwksUri` as logs do ([`url_without_credentials`]) and an inline
/// JWKS by its length.
///
/// [`url_without_credentials`]: crate::syntax::url_without_credentials
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtRuleSpec {
    /// `iss` of accepted tokens.
    pub issuer: String,
    /// Accepted `aud` values, compared as Envoy compares them (an
    /// `http(s)://` scheme and a final `/` aside); empty means the
    /// service's own host names, as Istio does (here: the service name and
    /// its cluster host name).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where to fetch the JWKS; absent means OpenID discovery from the issuer.
    /// Not together with [`Self::jwks`].
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// An inline JWKS document (JSON text).
    #[serde(default)]
    pub jwks: Option<String>,
    /// Headers that carry the token, with an optional prefix.
    #[serde(default)]
    pub from_headers: Vec<JwtHeaderSpec>,
    /// Query parameters that carry the token.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies that carry the token.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// A header to receive the verified payload (base64url JSON).
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request for the handler (default: removed).
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied into request headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeaderSpec>,
    /// Timeout of JWKS fetches (Istio's `timeout`, e.g. `5s`); absent: the
    /// `fetchTimeout` of `JwtSettings`.
    #[serde(default)]
    pub timeout: Option<super::DurationSpec>,
    /// Top-level claims whose string value is a space-separated list, for
    /// `request.auth.claims[NAME]` conditions on this issuer's tokens: each
    /// word matches on its own. `scope` and `permission` always are (as in
    /// Istio). A name is a claim name as written in the token, dots
    /// included: as Envoy does, `a.b` is the top-level claim `a.b`, never
    /// the nested `a` → `b`.
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
}

impl std::fmt::Debug for JwtRuleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtRuleSpec")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field(
                "jwks_uri",
                &self
                    .jwks_uri
                    .as_deref()
                    .map(crate::syntax::url_without_credentials),
            )
            .field(
                "jwks",
                &self.jwks.as_ref().map(|j| format!("<{} bytes>", j.len())),
            )
            .field("from_headers", &self.from_headers)
            .field("from_params", &self.from_params)
            .field("from_cookies", &self.from_cookies)
            .field("output_payload_to_header", &self.output_payload_to_header)
            .field("forward_original_token", &self.forward_original_token)
            .field("output_claim_to_headers", &self.output_claim_to_headers)
            .field("timeout", &self.timeout)
            .field("space_delimited_claims", &self.space_delimited_claims)
            .finish()
    }
}

/// `jwtRules[].fromHeaders[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtHeaderSpec {
    /// The header name.
    pub name: String,
    /// A prefix to strip, such as `Bearer `.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// `jwtRules[].outputClaimToHeaders[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ClaimToHeaderSpec {
    /// The header to set.
    pub header: String,
    /// The claim to copy (nested claims with `.`).
    pub claim: String,
}

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthorizationPolicySpec {
    /// Which workloads it applies to, by label. Not together with
    /// [`Self::target_ref`] or [`Self::target_refs`].
    #[serde(default)]
    pub selector: Option<SelectorSpec>,
    /// The resource it is attached to (the older, single form of
    /// [`Self::target_refs`]).
    #[serde(default)]
    pub target_ref: Option<TargetRefSpec>,
    /// The resources it is attached to: a `Service` is the workload of that
    /// service name; a gateway or `ServiceEntry` is no in-process workload
    /// (see [`TargetRefSpec`]).
    #[serde(default)]
    pub target_refs: Vec<TargetRefSpec>,
    /// What a matching rule does (`ALLOW`, the default, `DENY`, `AUDIT` or `CUSTOM`).
    #[serde(default)]
    pub action: Action,
    /// The external authorizer of a `CUSTOM` policy (and of no other).
    #[serde(default)]
    pub provider: Option<ExtensionProviderSpec>,
    /// The rules; absent with `ALLOW` denies everything (`spec: {}`).
    #[serde(default)]
    pub rules: Option<Vec<RuleSpec>>,
}

impl AuthorizationPolicySpec {
    /// How it chooses workloads.
    pub(crate) fn scope(&self) -> Scope<'_> {
        Scope::of(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
        )
    }

    /// The checks of `selector`, `targetRef` and `targetRefs`.
    pub(crate) fn check_scope(&self) -> Result<(), FieldError> {
        target::check(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
        )
    }
}

/// `AuthorizationPolicy.spec.provider`: an extension provider (external authorizer).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ExtensionProviderSpec {
    /// The name the authorizer was registered under.
    pub name: String,
}

/// `AuthorizationPolicy.spec.rules[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RuleSpec {
    /// Sources; any may match. Absent: any source; present, not empty
    /// (as Istio validates it: `from: []` is refused, not read as any).
    #[serde(default)]
    pub from: Option<Vec<FromSpec>>,
    /// Operations; any may match. Absent: any operation; present, not
    /// empty (`to: []` is refused).
    #[serde(default)]
    pub to: Option<Vec<ToSpec>>,
    /// Conditions; all must match.
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

/// `rules[].from[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct FromSpec {
    /// The source.
    pub source: SourceSpec,
}

/// `rules[].to[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ToSpec {
    /// The operation.
    pub operation: OperationSpec,
}

/// `from[].source`: every field present must match.
///
/// `serviceAccounts` (and `notServiceAccounts`) are Kubernetes service
/// accounts of the mTLS peer, `NAMESPACE/NAME`, or `NAME` for one in the
/// policy's namespace; no wildcard, at most 16, and not in the same source
/// as `principals` or `namespaces` (all as in Istio). `prod/ratings`
/// matches the peer whose SPIFFE ID is
/// `spiffe://TRUST_DOMAIN/ns/prod/sa/ratings`; as with Istio's own matcher,
/// extra path segments after `ns/prod/` or after `sa/ratings` match too.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
#[expect(missing_docs, reason = "fields are Istio's, documented there one to one")]
pub struct SourceSpec {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub request_principals: Option<Vec<String>>,
    pub not_request_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub not_namespaces: Option<Vec<String>>,
    pub service_accounts: Option<Vec<String>>,
    pub not_service_accounts: Option<Vec<String>>,
    pub ip_blocks: Option<Vec<String>>,
    pub not_ip_blocks: Option<Vec<String>>,
    pub remote_ip_blocks: Option<Vec<String>>,
    pub not_remote_ip_blocks: Option<Vec<String>>,
}

/// `to[].operation`: every field present must match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
#[expect(missing_docs, reason = "fields are Istio's, documented there one to one")]
pub struct OperationSpec {
    pub hosts: Option<Vec<String>>,
    pub not_hosts: Option<Vec<String>>,
    pub ports: Option<Vec<String>>,
    pub not_ports: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
}

/// `rules[].when[]`: with `values`, `notValues` or both (then both must
/// hold, as in Istio).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ConditionSpec {
    /// The attribute (`request.auth.claims[groups]`).
    pub key: String,
    /// Matches when the attribute has one of these.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// Matches when the attribute has none of these.
    #[serde(default)]
    pub not_values: Option<Vec<String>>,
}

/// `PeerAuthentication.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct PeerAuthenticationSpec {
    /// Which workloads it applies to.
    #[serde(default)]
    pub selector: Option<SelectorSpec>,
    /// The workload-wide mode.
    #[serde(default)]
    pub mtls: Option<PeerMtlsSpec>,
    /// Per-port modes (only with a selector, as in Istio).
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u16, PeerMtlsSpec>,
}

impl PeerAuthenticationSpec {
    /// Whether the document selects workloads by labels: a `selector`
    /// with `matchLabels`. Without (`selector: {}` included), Istio takes
    /// it for its namespace's policy, or the mesh's in the root namespace.
    #[must_use]
    pub fn selects_workloads(&self) -> bool {
        self.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty())
    }

    pub(super) fn check(&self) -> Result<(), FieldError> {
        if self.port_level_mtls.contains_key(&0) {
            return Err((
                "spec.portLevelMtls.0".into(),
                "port 0 is no port (1 to 65535, as in Istio)".into(),
            ));
        }
        if !self.port_level_mtls.is_empty() && !self.selects_workloads() {
            return Err((
                "spec.portLevelMtls".into(),
                "portLevelMtls needs a selector with matchLabels (as in Istio)".into(),
            ));
        }
        Ok(())
    }

    /// The modes that relax [`MtlsMode::Strict`], said aloud when the file loads.
    pub(super) fn warnings(&self) -> Vec<FieldError> {
        let said = |mode: Option<MtlsMode>| match mode? {
            MtlsMode::Strict => None,
            MtlsMode::Permissive => {
                Some("PERMISSIVE: plaintext callers are accepted too, without a peer identity".to_owned())
            }
            MtlsMode::Disable => {
                Some("DISABLE: callers present no certificate, so none has a peer identity".to_owned())
            }
        };
        let whole = self.mtls.as_ref().and_then(|m| said(m.mode));
        let ports = self
            .port_level_mtls
            .iter()
            .filter_map(|(port, m)| Some((format!("spec.portLevelMtls.{port}.mode"), said(m.mode)?)));
        whole
            .map(|m| ("spec.mtls.mode".to_owned(), m))
            .into_iter()
            .chain(ports)
            .collect()
    }
}

/// `PeerAuthentication.spec.mtls` and `portLevelMtls` values.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct PeerMtlsSpec {
    /// The mode; `None` when absent or `UNSET`: inherited from the next
    /// document (the namespace's, then the root namespace's), else
    /// [`MtlsMode::Strict`].
    #[serde(default, deserialize_with = "unset_is_none")]
    pub mode: Option<MtlsMode>,
}

/// Istio's `PeerAuthentication` modes (`UNSET` is the absence of one).
///
/// Exhaustive on purpose: Istio's set is closed, and a listener that
/// matches on the mode should have to decide for every one.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// A client certificate is required: no certificate, no handshake.
    #[default]
    Strict,
    /// Plaintext HTTP and mutual TLS on the same port, told apart by the
    /// first byte; plaintext callers (and TLS callers without a
    /// certificate) have no peer identity.
    Permissive,
    /// TLS without client certificates.
    Disable,
}

impl MtlsMode {
    /// `STRICT`, `PERMISSIVE` or `DISABLE`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Disable => "DISABLE",
        }
    }
}

/// The modes as written, in Istio's order, `UNSET` included.
#[derive(Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum WrittenMtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

fn unset_is_none<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<MtlsMode>, D::Error> {
    Ok(match Option::<WrittenMtlsMode>::deserialize(deserializer)? {
        None | Some(WrittenMtlsMode::Unset) => None,
        Some(WrittenMtlsMode::Disable) => Some(MtlsMode::Disable),
        Some(WrittenMtlsMode::Permissive) => Some(MtlsMode::Permissive),
        Some(WrittenMtlsMode::Strict) => Some(MtlsMode::Strict),
    })
}
