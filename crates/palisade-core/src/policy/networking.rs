//! `networking.istio.io` (`v1`, `v1beta1`, `v1alpha3`): `DestinationRule`.
//!
//! A `DestinationRule` says how a workload calls a host: with which TLS
//! settings, per port and per subset. Palisade reads and validates it when
//! the file loads; `palisade_mtls::UpstreamTls` applies it to calls.
//!
//! The fields of Istio's traffic policy that tune its proxy's calls
//! (`connectionPool`, `loadBalancer`, `outlierDetection`) are read and not
//! applied, each a warning when the file loads, so that a mesh's rules load
//! as they are. Those that would change where or how the bytes go
//! (`tunnel`, `proxyProtocol`) and `credentialName` (a Kubernetes secret)
//! are refused with a message naming the field, rather than silently
//! ignored.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::{FieldError, SelectorSpec};

/// `DestinationRule.spec`: how the selected workload calls `host`.
///
/// ```
/// use palisade_core::policy::{ClientTlsMode, PolicySet, Workload};
/// let yaml = "apiVersion: networking.istio.io/v1
/// kind: DestinationRule
/// metadata: {name: ratings, namespace: prod}
/// spec:
///   host: ratings.prod.svc.cluster.local
///   workloadSelector: {matchLabels: {app: reviews}}
///   trafficPolicy:
///     tls:
///       mode: MUTUAL
///       clientCertificate: /etc/palisade/reviews.pem
///       privateKey: /etc/palisade/reviews.key
///       caCertificates: /etc/palisade/ca.pem
/// ";
/// let set = PolicySet::from_yaml_str(yaml, "mesh.yaml")?;
/// let reviews = set.for_workload(&Workload::new("reviews", "prod"));
/// let (_, rule) = reviews.destination_rules().next().expect("selected");
/// let tls = rule.traffic_policy.as_ref().and_then(|p| p.tls.as_ref());
/// assert_eq!(tls.map(|t| t.mode), Some(ClientTlsMode::Mutual));
///
/// // The proxy's tuning loads, and is said not to be applied.
/// let pooled = yaml.replace("    tls:", "    connectionPool: {tcp: {maxConnections: 10}}\n    tls:");
/// let set = PolicySet::from_yaml_str(&pooled, "mesh.yaml")?;
/// assert_eq!(set.warnings()[0].field(), Some("spec.trafficPolicy.connectionPool"));
/// // What would change how the calls go is refused, naming the field.
/// let tunnelled = yaml.replace("    tls:", "    tunnel: {protocol: CONNECT, targetHost: proxy, targetPort: 3128}\n    tls:");
/// let err = PolicySet::from_yaml_str(&tunnelled, "mesh.yaml").unwrap_err();
/// assert_eq!(err.field.as_deref(), Some("spec.trafficPolicy.tunnel"));
/// # Ok::<(), palisade_core::policy::PolicyError>(())
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct DestinationRuleSpec {
    /// The host called: a service name (`reviews`,
    /// `reviews.prod.svc.cluster.local`) or a wildcard (`*.example.com`),
    /// without scheme, port or path. Required.
    #[serde(default)]
    pub host: String,
    /// The calling workloads the rule applies to, by label (Istio's
    /// `workloadSelector`, read as `selector` is in the other kinds);
    /// absent: every workload of the document's namespace, and those of
    /// every namespace for a document in the root namespace and for calls
    /// to the services of the document's own namespace (Istio's lookup
    /// path), where the rule is [`exported_to`](Self::exported_to) the
    /// caller's namespace; another namespace's only where it sets TLS.
    #[serde(default)]
    pub workload_selector: Option<SelectorSpec>,
    /// The namespaces whose calling workloads the rule is exported to, as
    /// in Istio ([`exported_to`](Self::exported_to)): absent or `*` every
    /// namespace, `.` its own, `~` none (a warning), or names.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// The policy for every call to the host.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicySpec>,
    /// Named subsets of the host's endpoints, each with its own policy.
    #[serde(default)]
    pub subsets: Vec<SubsetSpec>,
}

/// How well a `DestinationRule`'s host `pattern` (qualified, lower case:
/// [`DestinationRuleSpec::qualified_host`]) matches `host`: `None` not at
/// all; else the larger, the more specific, as Istio picks: an exact
/// match beats any wildcard, a longer wildcard (`*.default.svc.cluster.local`)
/// a shorter one (`*.local`, then `*`).
///
/// ```
/// use palisade_core::policy::host_specificity;
/// let host = "reviews.default.svc.cluster.local";
/// assert!(host_specificity(host, host) > host_specificity("*.svc.cluster.local", host));
/// assert!(host_specificity("*.local", host) > host_specificity("*", host));
/// assert_eq!(host_specificity("*.prod.svc.cluster.local", host), None);
/// ```
#[must_use]
pub fn host_specificity(pattern: &str, host: &str) -> Option<usize> {
    if pattern == host {
        return Some(usize::MAX);
    }
    if pattern == "*" {
        return Some(0);
    }
    let suffix = pattern.strip_prefix('*')?;
    (host.len() > suffix.len() && host.ends_with(suffix)).then_some(suffix.len())
}

impl DestinationRuleSpec {
    /// The host as lookups compare it, for a document in `namespace`: lower
    /// case, without a final `.`, a short name (`reviews`) qualified in the
    /// namespace (`reviews.NS.svc.cluster.local`).
    #[must_use]
    pub fn qualified_host(&self, namespace: &str) -> String {
        let host = self.host.trim_end_matches('.').to_ascii_lowercase();
        if host.contains('.') || host == "*" {
            host
        } else {
            format!("{host}.{namespace}.svc.cluster.local")
        }
    }

    /// Whether the rule, of `namespace`, is exported to the calling
    /// workloads of `caller` (a namespace), as Istio reads `exportTo`:
    /// absent or `*` to every namespace, `.` to its own, `~` to none,
    /// names to those.
    #[must_use]
    pub fn exported_to(&self, namespace: &str, caller: &str) -> bool {
        self.export_to.is_empty()
            || self.export_to.iter().any(|ns| match ns.as_str() {
                "*" => true,
                "." => namespace == caller,
                "~" => false,
                other => other == caller,
            })
    }

    /// Whether the rule, of `namespace`, is exported to that namespace's
    /// calling workloads only (`exportTo` of `.` or its name): Istio's
    /// private rule, which a workload of the root namespace (a gateway)
    /// looks up before the called service's namespace.
    #[must_use]
    pub fn private_to(&self, namespace: &str) -> bool {
        !self.export_to.is_empty() && self.export_to.iter().all(|e| e == "." || e == namespace)
    }

    /// Whether the rule sets TLS for calls to the host (its traffic
    /// policy's `tls`, or a port's).
    #[must_use]
    pub fn sets_tls(&self) -> bool {
        self.traffic_policy
            .as_ref()
            .is_some_and(|p| p.tls.is_some() || p.port_level_settings.iter().any(|port| port.tls.is_some()))
    }

    /// What is read and checked but not applied, or does nothing, said
    /// aloud when the file loads; `namespace` is the document's.
    ///
    /// `exportTo: [~]` is warned about: applied, it leaves the rule to no
    /// caller, as in Istio. So is a `workloadSelector` in the root
    /// namespace (it applies in that namespace only), the root namespace
    /// taken as the default one, `istio-system`: a file loads before any
    /// workload, whose root namespace may be another, is known.
    pub(super) fn warnings(&self, namespace: &str) -> Vec<FieldError> {
        let root = namespace == super::DEFAULT_ROOT_NAMESPACE;
        let export = self.export_to.iter().position(|ns| ns == "~").map(|i| {
            (
                format!("spec.exportTo[{i}]"),
                "exported to no namespace: the rule applies to no calling workload, as in Istio".to_owned(),
            )
        });
        let selector = (root && self.workload_selector.is_some()).then(|| {
            (
                "spec.workloadSelector".to_owned(),
                "applies to the selected workloads of this namespace only: a rule with a selector \
                 is read in the calling workload's own namespace, as in Istio (drop the selector to \
                 apply it to every namespace)"
                    .to_owned(),
            )
        });
        let subsets = self
            .subsets
            .iter()
            .enumerate()
            .filter(|(_, s)| s.traffic_policy.is_some())
            .map(|(i, _)| {
                (
                    format!("spec.subsets[{i}].trafficPolicy"),
                    "not applied: Palisade does not route calls to subsets (no VirtualService)".to_owned(),
                )
            });
        let tuning = self.traffic_policy.iter().flat_map(|p| {
            let ports = p.port_level_settings.iter().enumerate().flat_map(|(i, port)| {
                tuning_warnings(
                    port.tuning(),
                    &format!("spec.trafficPolicy.portLevelSettings[{i}]"),
                )
            });
            tuning_warnings(p.tuning(), "spec.trafficPolicy")
                .into_iter()
                .chain(ports)
                .collect::<Vec<_>>()
        });
        export
            .into_iter()
            .chain(selector)
            .chain(tuning)
            .chain(subsets)
            .collect()
    }

    pub(super) fn check(&self) -> Result<(), FieldError> {
        check_host(&self.host)?;
        check_export_to(&self.export_to)?;
        if let Some(p) = &self.traffic_policy {
            p.check("spec.trafficPolicy")?;
        }
        let repeat = super::first_repeat(self.subsets.iter().map(|s| &s.name));
        for (i, subset) in self.subsets.iter().enumerate() {
            let field = format!("spec.subsets[{i}]");
            if subset.name.trim().is_empty() {
                return Err((format!("{field}.name"), "must not be empty".into()));
            }
            if repeat.is_some_and(|(r, _)| r == i) {
                return Err((
                    format!("{field}.name"),
                    format!("subset `{}` is given twice", subset.name),
                ));
            }
            if let Some(p) = &subset.traffic_policy {
                p.check(&format!("{field}.trafficPolicy"))?;
            }
        }
        Ok(())
    }
}

/// `DestinationRule.spec.subsets[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SubsetSpec {
    /// The subset's name, unique in the rule.
    #[serde(default)]
    pub name: String,
    /// Labels the host's endpoints must have to be in the subset.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The subset's policy: the settings it gives override the rule's for
    /// traffic routed to the subset. Palisade routes none there: read and
    /// checked, not applied (a warning when the file loads).
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicySpec>,
}

/// `DestinationRule.spec.trafficPolicy` (and a subset's).
///
/// Istio's `connectionPool`, `loadBalancer` and `outlierDetection` tune
/// its proxy's calls: read and not applied (a warning when the file loads).
/// `tunnel` and `proxyProtocol` would change how the calls go: refused when
/// the file loads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct TrafficPolicySpec {
    /// TLS settings of calls to the host.
    #[serde(default)]
    pub tls: Option<ClientTlsSettingsSpec>,
    /// Settings for single ports: they override [`Self::tls`] on those ports.
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicySpec>,
    #[serde(default)]
    connection_pool: Option<super::Ignored>,
    #[serde(default)]
    load_balancer: Option<super::Ignored>,
    #[serde(default)]
    outlier_detection: Option<super::Ignored>,
    #[serde(default, rename = "tunnel", deserialize_with = "refuse_tunnel")]
    _tunnel: Option<Refused>,
    #[serde(default, rename = "proxyProtocol", deserialize_with = "refuse_proxy_protocol")]
    _proxy_protocol: Option<Refused>,
}

impl TrafficPolicySpec {
    fn tuning(&self) -> Tuning {
        tuning(
            self.connection_pool.as_ref(),
            self.load_balancer.as_ref(),
            self.outlier_detection.as_ref(),
        )
    }

    fn check(&self, field: &str) -> Result<(), FieldError> {
        if self.tls.is_none() && self.port_level_settings.is_empty() && !self.tuning().iter().any(|t| t.0) {
            return Err((
                field.to_owned(),
                "sets nothing: give `tls` or `portLevelSettings`".into(),
            ));
        }
        if let Some(tls) = &self.tls {
            tls.check(&format!("{field}.tls"))?;
        }
        let repeat = super::first_repeat(self.port_level_settings.iter().map(|p| p.port.number));
        for (i, p) in self.port_level_settings.iter().enumerate() {
            let field = format!("{field}.portLevelSettings[{i}]");
            let number = p.port.number;
            if repeat.is_some_and(|(r, _)| r == i) {
                return Err((
                    format!("{field}.port.number"),
                    format!("port {number} is given twice"),
                ));
            }
            match &p.tls {
                Some(tls) => tls.check(&format!("{field}.tls"))?,
                None if p.tuning().iter().any(|t| t.0) => {}
                None => return Err((field, "sets nothing: give `tls`".into())),
            }
        }
        Ok(())
    }
}

/// `trafficPolicy.portLevelSettings[]`: the settings of one port.
///
/// Istio's `connectionPool`, `loadBalancer` and `outlierDetection` are
/// read and not applied here too.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct PortTrafficPolicySpec {
    /// The port these settings are for.
    pub port: PortSelectorSpec,
    /// TLS settings of calls to that port.
    #[serde(default)]
    pub tls: Option<ClientTlsSettingsSpec>,
    #[serde(default)]
    connection_pool: Option<super::Ignored>,
    #[serde(default)]
    load_balancer: Option<super::Ignored>,
    #[serde(default)]
    outlier_detection: Option<super::Ignored>,
}

/// The parts of a traffic policy (or of a port's) that tune Istio's
/// proxy's calls, `(given, field, what it tunes)`: read, so that a mesh's
/// rules load as they are, and not applied (Palisade's calls go out without
/// a proxy; its client's pool and its resolver's choice of address stand).
type Tuning = [(bool, &'static str, &'static str); 3];

fn tuning(
    pool: Option<&super::Ignored>,
    balancer: Option<&super::Ignored>,
    outliers: Option<&super::Ignored>,
) -> Tuning {
    [
        (pool.is_some(), "connectionPool", "connection pool limits"),
        (balancer.is_some(), "loadBalancer", "the choice of endpoint"),
        (
            outliers.is_some(),
            "outlierDetection",
            "ejection of failing endpoints",
        ),
    ]
}

/// A warning for each part of `tuning` given, under `field`.
fn tuning_warnings(tuning: Tuning, field: &str) -> Vec<FieldError> {
    tuning
        .into_iter()
        .filter(|(given, ..)| *given)
        .map(|(_, name, what)| {
            (
                format!("{field}.{name}"),
                format!(
                    "not applied: it tunes Istio's proxy ({what}), and Palisade's calls go out without one"
                ),
            )
        })
        .collect()
}

impl PortTrafficPolicySpec {
    fn tuning(&self) -> Tuning {
        tuning(
            self.connection_pool.as_ref(),
            self.load_balancer.as_ref(),
            self.outlier_detection.as_ref(),
        )
    }
}

/// `portLevelSettings[].port`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct PortSelectorSpec {
    /// The port number, 1 to 65535.
    #[serde(deserialize_with = "port_number")]
    pub number: u16,
}

/// `trafficPolicy.tls`: how calls to the host use TLS (Istio's
/// `ClientTLSSettings`).
///
/// Files are paths read by the calling process. Istio's `credentialName`
/// (a Kubernetes secret) is refused when the file loads: Palisade reads
/// files, not secrets.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientTlsSettingsSpec {
    /// The mode; absent: [`ClientTlsMode::Disable`], as in Istio.
    #[serde(default)]
    pub mode: ClientTlsMode,
    /// The PEM client certificate chain. Required with `MUTUAL`; not with
    /// `ISTIO_MUTUAL`.
    #[serde(default)]
    pub client_certificate: Option<String>,
    /// The PEM private key of [`Self::client_certificate`]. Required with
    /// `MUTUAL`; not with `ISTIO_MUTUAL`.
    #[serde(default)]
    pub private_key: Option<String>,
    /// PEM trust anchors for the server's certificate; absent: the system's
    /// (under `SIMPLE` without `subjectAltNames`; required with `MUTUAL`).
    /// Not with `ISTIO_MUTUAL`.
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// Accepted names in the server's certificate (DNS names or SPIFFE IDs);
    /// empty: the host name.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// The SNI sent in the handshake; absent: the host name.
    #[serde(default)]
    pub sni: Option<String>,
    /// Istio's switch that turns off every check of the server's
    /// certificate. `true` is refused when the file loads, whichever
    /// workload the document names: Palisade always verifies the server's
    /// chain and names. Default `false`; not together
    /// with `caCertificates` or `subjectAltNames` (as in Istio), nor with
    /// `ISTIO_MUTUAL`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(
        default,
        rename = "credentialName",
        deserialize_with = "refuse_credential_name"
    )]
    _credential_name: Option<Refused>,
}

impl ClientTlsSettingsSpec {
    fn check(&self, field: &str) -> Result<(), FieldError> {
        let at = |name: &str| format!("{field}.{name}");
        let client = [
            ("clientCertificate", &self.client_certificate),
            ("privateKey", &self.private_key),
        ];
        let files = [client[0], client[1], ("caCertificates", &self.ca_certificates)];
        for (name, value) in files.into_iter().chain([("sni", &self.sni)]) {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err((at(name), "must not be empty (leave the field out instead)".into()));
            }
        }
        if let Some(i) = self.subject_alt_names.iter().position(|n| n.trim().is_empty()) {
            return Err((at(&format!("subjectAltNames[{i}]")), "must not be empty".into()));
        }
        let first_given = |fields: &[(&'static str, &Option<String>)]| {
            fields.iter().find(|(_, v)| v.is_some()).map(|(name, _)| *name)
        };
        match self.mode {
            ClientTlsMode::Disable => {
                let given = first_given(&files)
                    .or_else(|| self.sni.is_some().then_some("sni"))
                    .or_else(|| (!self.subject_alt_names.is_empty()).then_some("subjectAltNames"))
                    .or_else(|| self.insecure_skip_verify.then_some("insecureSkipVerify"));
                if let Some(name) = given {
                    return Err((
                        at(name),
                        "mode DISABLE (the default when `mode` is absent) calls in plaintext, \
                         so this would be ignored: set a mode or remove the field"
                            .into(),
                    ));
                }
            }
            ClientTlsMode::Simple => {
                if let Some(name) = first_given(&client) {
                    return Err((
                        at(name),
                        "SIMPLE presents no client certificate: use MUTUAL to present one".into(),
                    ));
                }
            }
            ClientTlsMode::Mutual => {
                if let Some((name, _)) = client.iter().find(|(_, v)| v.is_none()) {
                    return Err((
                        at(name),
                        "MUTUAL needs both `clientCertificate` and `privateKey`".into(),
                    ));
                }
            }
            ClientTlsMode::IstioMutual => {
                if let Some(name) = first_given(&files) {
                    return Err((
                        at(name),
                        "ISTIO_MUTUAL uses the workload's own mesh certificate and trust \
                         bundle and names no files: use MUTUAL to name them"
                            .into(),
                    ));
                }
                if self.insecure_skip_verify {
                    return Err((
                        at("insecureSkipVerify"),
                        "ISTIO_MUTUAL always verifies the server's mesh identity".into(),
                    ));
                }
            }
        }
        if self.insecure_skip_verify && (self.ca_certificates.is_some() || !self.subject_alt_names.is_empty())
        {
            return Err((
                at("insecureSkipVerify"),
                "cannot be combined with `caCertificates` or `subjectAltNames` (as in Istio): \
                 verification is either off or configured"
                    .into(),
            ));
        }
        // What no calling workload could use, refused for every document
        // (a workload that applies the rule refuses it the same way).
        if self.insecure_skip_verify {
            return Err((
                at("insecureSkipVerify"),
                "not supported: Palisade always verifies the upstream's certificate (name a `caCertificates` bundle instead)".into(),
            ));
        }
        if self.mode == ClientTlsMode::Simple
            && self.ca_certificates.is_none()
            && !self.subject_alt_names.is_empty()
        {
            return Err((
                at("subjectAltNames"),
                "checked only against a `caCertificates` bundle: name one (the system's trust anchors are checked against the dialled host name)".into(),
            ));
        }
        if self.mode == ClientTlsMode::Mutual && self.ca_certificates.is_none() {
            return Err((
                at("caCertificates"),
                "MUTUAL needs `caCertificates`: the bundle the upstream's certificate is checked against"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Istio's client TLS modes (`ClientTLSSettings.mode`).
///
/// Exhaustive on purpose: Istio's set is closed, and a client that matches
/// on the mode should have to decide for every one.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext: no TLS (Istio's default).
    #[default]
    Disable,
    /// TLS, verifying the server; no client certificate.
    Simple,
    /// Mutual TLS with the client certificate and key the rule names.
    Mutual,
    /// Mutual TLS with the workload's own mesh certificate and trust bundle,
    /// as Istio's sidecars do; the rule names no files.
    IstioMutual,
}

impl ClientTlsMode {
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "DISABLE",
            ClientTlsMode::Simple => "SIMPLE",
            ClientTlsMode::Mutual => "MUTUAL",
            ClientTlsMode::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}

/// `spec.host`: a host name or a leading wildcard, without scheme, port or path.
fn check_host(host: &str) -> Result<(), FieldError> {
    let field = || "spec.host".to_owned();
    if host.trim().is_empty() {
        return Err((field(), "required: the host the rule is for".into()));
    }
    if host.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
        return Err((
            field(),
            format!(
                "`{host}` is not a host name: write it without scheme, port or path \
                 (`reviews.prod.svc.cluster.local`, `*.example.com`)"
            ),
        ));
    }
    let rest = host.strip_prefix("*.").unwrap_or(host);
    if rest.contains('*') && host != "*" {
        return Err((
            field(),
            format!("`{host}`: a wildcard is only allowed as the whole first label (`*.example.com`)"),
        ));
    }
    Ok(())
}

/// `spec.exportTo`: `.`, `*`, `~` or namespace names; `*` and `~` alone.
fn check_export_to(export_to: &[String]) -> Result<(), FieldError> {
    let repeat = super::first_repeat(export_to);
    for (i, ns) in export_to.iter().enumerate() {
        let field = format!("spec.exportTo[{i}]");
        if ns.trim().is_empty() {
            return Err((field, "must not be empty".into()));
        }
        if repeat.is_some_and(|(r, _)| r == i) {
            return Err((field, format!("`{ns}` is given twice")));
        }
        if (ns == "*" || ns == "~") && export_to.len() > 1 {
            return Err((field, format!("`{ns}` cannot be combined with other entries")));
        }
    }
    Ok(())
}

/// A field Istio has that Palisade cannot apply. Holds no value: when the
/// field is present, deserialization fails with a message naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {}

/// The error for a field of Istio's proxy configuration.
fn proxy_only<E: serde::de::Error>(field: &str, what: &str) -> E {
    E::custom(format!(
        "`{field}` cannot apply in process: it configures Istio's proxy ({what}), \
         and Palisade's calls go out without one; remove the field"
    ))
}

fn refuse_tunnel<'de, D: Deserializer<'de>>(_: D) -> Result<Option<Refused>, D::Error> {
    Err(proxy_only("tunnel", "tunnelling through a proxy"))
}

fn refuse_proxy_protocol<'de, D: Deserializer<'de>>(_: D) -> Result<Option<Refused>, D::Error> {
    Err(proxy_only("proxyProtocol", "the PROXY protocol header"))
}

fn refuse_credential_name<'de, D: Deserializer<'de>>(_: D) -> Result<Option<Refused>, D::Error> {
    Err(D::Error::custom(
        "`credentialName` names a Kubernetes secret, and Palisade reads files, not secrets: \
         use `clientCertificate`, `privateKey` and `caCertificates`",
    ))
}

/// A port number: 1 to 65535.
fn port_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let n = i64::deserialize(deserializer)?;
    match u16::try_from(n) {
        Ok(n @ 1..) => Ok(n),
        _ => Err(D::Error::custom(format!("port number {n} is not in 1..=65535"))),
    }
}
