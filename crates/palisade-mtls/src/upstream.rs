//! TLS to upstreams as Istio's `DestinationRule` says it: for each host the
//! workload calls, plaintext, server-authenticated TLS (`SIMPLE`), or
//! mutual TLS with named files (`MUTUAL`) or with the workload's own mesh
//! certificate (`ISTIO_MUTUAL`), the server's certificate checked against
//! `subjectAltNames`.
//!
//! ```
//! use palisade_core::policy::{PolicySet, Workload};
//! use palisade_mtls::{UpstreamTls, UpstreamTransport};
//! let yaml = "apiVersion: networking.istio.io/v1
//! kind: DestinationRule
//! metadata: {name: reviews, namespace: default}
//! spec:
//!   host: reviews
//!   trafficPolicy:
//!     tls: {mode: DISABLE}
//!     portLevelSettings:
//!     - port: {number: 9443}
//!       tls: {mode: SIMPLE}
//! ";
//! let set = PolicySet::from_yaml_str(yaml, "mesh.yaml")?;
//! let policy = set.for_workload(&Workload::new("productpage", "default"));
//! let tls = UpstreamTls::from_policy(&policy, None)?;
//! let host = "reviews.default.svc.cluster.local";
//! assert!(matches!(tls.for_host(host, 9080).transport(), UpstreamTransport::Plaintext));
//! assert!(matches!(tls.for_host(host, 9443).transport(), UpstreamTransport::SystemTls));
//! // No rule for the host: plaintext, as in Istio without a sidecar.
//! assert!(matches!(tls.for_host("ratings.default.svc.cluster.local", 9443).transport(), UpstreamTransport::Plaintext));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use palisade_core::policy::{
    ClientTlsMode, ClientTlsSettingsSpec, Document, PolicyError, WorkloadPolicy, host_specificity,
};

use crate::ClientTls;

/// The workload's own mesh identity, for `ISTIO_MUTUAL`: its certificate
/// chain and key (a SPIFFE workload certificate) and the mesh's trust
/// bundle (the examples' `--tls-cert`, `--tls-key` and `--client-ca`).
/// Made with [`MeshIdentity::new`]: it may gain fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MeshIdentity {
    /// The PEM certificate chain.
    pub cert: PathBuf,
    /// The PEM private key.
    pub key: PathBuf,
    /// The PEM trust bundle of the mesh.
    pub ca: PathBuf,
}

impl MeshIdentity {
    /// The workload's certificate chain `cert` and key `key`, and the
    /// mesh's trust bundle `ca` (PEM files).
    #[must_use]
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>, ca: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }
    }
}

/// How a call to one upstream travels.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum UpstreamTransport {
    /// Plaintext (`DISABLE`, or no rule that sets TLS for the host and
    /// port, and no `ISTIO_MUTUAL` behind one that sets none).
    Plaintext,
    /// TLS with this configuration (`SIMPLE` with `caCertificates`,
    /// `MUTUAL`, `ISTIO_MUTUAL`).
    Tls(ClientTls),
    /// `SIMPLE` without `caCertificates`: TLS checked against the system's
    /// trust anchors and the dialled host name, as the HTTP client does by
    /// default.
    SystemTls,
}

/// What calls to one host and port use: the transport and the SNI.
#[derive(Clone, Debug)]
pub struct UpstreamRoute {
    transport: UpstreamTransport,
    sni: Option<String>,
    /// `ISTIO_MUTUAL`: what Istio's automatic mutual TLS would use.
    mesh: bool,
}

impl UpstreamRoute {
    /// The transport.
    #[must_use]
    pub fn transport(&self) -> &UpstreamTransport {
        &self.transport
    }

    /// The SNI the rule names (`tls.sni`); `None`: the host name dialled.
    #[must_use]
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }
}

/// Where a rule's namespace is on Istio's lookup path, the first
/// highest: the calling workload's namespace, the called service's, the
/// root namespace.
#[derive(Debug)]
enum Tier {
    Root,
    /// Another namespace's rule, for calls to the services of that
    /// namespace (`NAME.NAMESPACE.svc…`) only.
    Service(String),
    Local,
}

/// One `DestinationRule`, its settings built.
#[derive(Debug)]
struct Rule {
    /// The host, fully qualified (a short name is in the rule's namespace),
    /// lower case; `*.suffix` or `*` for wildcards.
    host: String,
    /// Where the document is on Istio's lookup path.
    tier: Tier,
    /// The document, of the workload's namespace, has a `workloadSelector`
    /// (which selects the workload: the others do not apply).
    selected: bool,
    default: Option<UpstreamRoute>,
    ports: Vec<(u16, UpstreamRoute)>,
}

impl Rule {
    /// Whether the rule says anything of TLS (a `trafficPolicy` with `tls`
    /// or a port's).
    fn has_tls(&self) -> bool {
        self.default.is_some() || !self.ports.is_empty()
    }

    /// The TLS it sets for `port`: the port's, else the rule's; `None`
    /// when it sets none there.
    fn route_for(&self, port: u16) -> Option<&UpstreamRoute> {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, r)| r)
            .or(self.default.as_ref())
    }

    /// The rule's rank for a host it matches with `specificity`; the
    /// highest is taken, the first document among equals. As Istio looks
    /// rules up: the workload's own namespace, then the called service's,
    /// then the root namespace, then within it the most specific host. Then a rule that sets TLS
    /// before one that does not, so that a rule of subsets only never
    /// hides its host's TLS (Istio merges a host's rules, and falls back
    /// to its automatic mutual TLS, where Palisade would take only an
    /// `ISTIO_MUTUAL` rule further on, and else call in plaintext); then
    /// a rule whose `workloadSelector` selects the workload before one for
    /// every workload.
    fn rank(&self, specificity: usize) -> (u8, usize, bool, bool) {
        let tier = match self.tier {
            Tier::Root => 0,
            Tier::Service(_) => 1,
            Tier::Local => 2,
        };
        (tier, specificity, self.has_tls(), self.selected)
    }

    /// Whether the rule is on the lookup path of a call to `host`: another
    /// namespace's rule is for its own services only, and only where it
    /// sets TLS: one without (a canary's subsets) would hide, from the
    /// callers of every namespace, a root-namespace rule other than
    /// `ISTIO_MUTUAL` (a `SIMPLE` one is taken here, unlike behind a rule
    /// of the caller's own namespace).
    fn on_path(&self, host: &str) -> bool {
        match &self.tier {
            Tier::Service(ns) => self.has_tls() && service_namespace(host) == Some(ns.as_str()),
            Tier::Root | Tier::Local => true,
        }
    }
}

/// The namespace of a Kubernetes service's name (`NAME.NAMESPACE.svc…`).
pub(crate) fn service_namespace(host: &str) -> Option<&str> {
    let mut labels = host.split('.');
    let (_, namespace) = (labels.next()?, labels.next()?);
    (labels.next() == Some("svc")).then_some(namespace)
}

/// The TLS of every upstream the workload's `DestinationRule` documents
/// name, built when the policy loads (a file that cannot be read fails
/// then, naming the document and field). Cloning is an `Arc` clone.
///
/// Rule lookup follows Istio: the workload's namespace, then the called
/// service's (a rule of another namespace applies to calls to its own
/// services, `NAME.NAMESPACE.svc…`, only where it sets TLS), then the
/// root namespace, each rule where its `exportTo` lets it; within it, an exact host before wildcards, the longest
/// wildcard first (`*.default.svc.cluster.local` before `*`); then one
/// that sets TLS before one that does not; then a rule whose
/// `workloadSelector` selects the workload before one for every workload
/// (a rule with a selector applies in its own namespace only); then the
/// first document. A call whose rule sets no TLS for its port (subsets
/// only, the proxy's tuning only, another port's TLS) takes the
/// best-ranked `ISTIO_MUTUAL` further on its path (the mesh-wide `*.local`
/// rule), as Istio's automatic mutual TLS would, and is otherwise
/// plaintext. Two of one namespace and selector that set TLS for one
/// host are warned of when the file loads, and so is a rule without TLS
/// that hides a root-namespace rule's TLS other than `ISTIO_MUTUAL` for
/// its host when no rule of its namespace sets it. A short host (`reviews`) is in the
/// rule's namespace (`reviews.NS.svc.cluster.local`). A port's
/// `portLevelSettings` override the rule's `tls`. Subsets' policies apply
/// to traffic a `VirtualService` routes to a subset, which Palisade does
/// not do: they are read and checked, not applied.
#[derive(Clone, Debug, Default)]
pub struct UpstreamTls(Arc<Vec<Rule>>);

const PLAINTEXT: UpstreamRoute = UpstreamRoute {
    transport: UpstreamTransport::Plaintext,
    sni: None,
    mesh: false,
};

impl UpstreamTls {
    /// The client TLS of every route that has one.
    fn clients(&self) -> impl Iterator<Item = &ClientTls> {
        self.0
            .iter()
            .flat_map(|r| r.default.iter().chain(r.ports.iter().map(|(_, route)| route)))
            .filter_map(|route| match &route.transport {
                UpstreamTransport::Tls(client) => Some(client),
                _ => None,
            })
    }

    /// Watches the files of every route's client TLS (certificates, keys,
    /// bundles) every `interval`, as [`ClientTls::watch`] does, from one
    /// background thread for all routes, so the workload's certificate
    /// rotates in the calls it makes as in the ones it takes
    /// (`ISTIO_MUTUAL` reads the same files as the listener). Call it once.
    /// The thread ends once nothing uses these routes' TLS any more (this
    /// `UpstreamTls` and its clones, and the configurations, copies of
    /// them and connectors made from it, dropped): an `UpstreamTls` built
    /// again at a reload of the policy file, and watched, replaces the old
    /// one's watch. ([`reload_on_sighup`](Self::reload_on_sighup) keeps
    /// its clients for the runtime's life, and with them the watch.)
    pub fn watch(&self, interval: std::time::Duration) {
        let _detached = crate::files::watch_all(self.distinct_clients(), interval);
    }

    /// Reloads every route's client TLS on `SIGHUP`, as
    /// [`ClientTls::reload_on_sighup`] does, from one task on the current
    /// tokio runtime. Call it once.
    ///
    /// # Errors
    /// When the signal handler cannot be installed.
    pub fn reload_on_sighup(&self) -> std::io::Result<()> {
        crate::files::reload_all_on_sighup(self.distinct_clients())
    }

    /// Every route's client TLS once, however many routes share it.
    fn distinct_clients(&self) -> Vec<ClientTls> {
        let mut out: Vec<ClientTls> = Vec::new();
        for client in self.clients() {
            if !out.iter().any(|c| c.same_as(client)) {
                out.push(client.clone());
            }
        }
        out
    }

    /// Builds the transports of `policy`'s `DestinationRule` documents;
    /// `mesh` is the workload's own identity for `ISTIO_MUTUAL`.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the document and field: a file that cannot
    /// be read or used, `ISTIO_MUTUAL` without a mesh identity, `MUTUAL`
    /// without `caCertificates`, `SIMPLE` with `subjectAltNames` but
    /// without `caCertificates`, or `insecureSkipVerify` (not supported).
    pub fn from_policy(
        policy: &WorkloadPolicy<'_>,
        mesh: Option<&MeshIdentity>,
    ) -> Result<Self, PolicyError> {
        Self::build(policy, Mesh::Given(mesh))
    }

    /// Checks `policy`'s `DestinationRule` documents as
    /// [`from_policy`](Self::from_policy) builds them (every file they
    /// name read and used), but for the mesh identity `ISTIO_MUTUAL` uses,
    /// which is the workload's own and given when it starts, not by the
    /// file. For tools that check a policy file (`palisade check`).
    ///
    /// # Errors
    /// As [`from_policy`](Self::from_policy), but for a missing mesh identity.
    pub fn check_policy(policy: &WorkloadPolicy<'_>) -> Result<(), PolicyError> {
        Self::build(policy, Mesh::NotChecked).map(drop)
    }

    fn build(policy: &WorkloadPolicy<'_>, mesh: Mesh<'_>) -> Result<Self, PolicyError> {
        let mut rules = Vec::new();
        for (doc, spec) in policy.destination_rules() {
            let host = spec.qualified_host(doc.metadata.namespace());
            let namespace = doc.metadata.namespace();
            let workload = policy.workload();
            // A workload of the root namespace (a gateway) takes that
            // namespace's rules kept to it (`exportTo: [.]`) first, and its
            // exported ones after the called service's, as Istio does.
            let tier = if namespace == workload.root_namespace
                && (namespace != workload.namespace || !spec.private_to(namespace))
            {
                Tier::Root
            } else if namespace == workload.namespace {
                Tier::Local
            } else {
                Tier::Service(namespace.to_owned())
            };
            // A rule with a selector is the workload's namespace's
            // (`destination_rules` leaves out those with a selector of any other
            // namespace, the root one included).
            let selected = spec.workload_selector.is_some();
            let Some(traffic) = &spec.traffic_policy else {
                rules.push(Rule {
                    host,
                    tier,
                    selected,
                    default: None,
                    ports: Vec::new(),
                });
                continue;
            };
            let default = traffic
                .tls
                .as_ref()
                .map(|t| route(policy, doc, "spec.trafficPolicy.tls", t, mesh))
                .transpose()?;
            let mut ports = Vec::new();
            for (i, p) in traffic.port_level_settings.iter().enumerate() {
                if let Some(t) = &p.tls {
                    let field = format!("spec.trafficPolicy.portLevelSettings[{i}].tls");
                    ports.push((p.port.number, route(policy, doc, &field, t, mesh)?));
                }
            }
            rules.push(Rule {
                host,
                tier,
                selected,
                default,
                ports,
            });
        }
        Ok(Self(Arc::new(rules)))
    }

    /// What a call to `host` (a fully qualified name, as
    /// `reviews.default.svc.cluster.local`) on `port` uses.
    #[must_use]
    pub fn for_host(&self, host: &str, port: u16) -> &UpstreamRoute {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let Some(rule) = self.best(&host, Some) else {
            return &PLAINTEXT;
        };
        // The rule taken sets no TLS for the port (subsets only, the
        // proxy's tuning only, another port's): Istio then uses its
        // automatic mutual TLS, which is `ISTIO_MUTUAL` where the mesh's
        // rules further on say so (the mesh-wide `*.local` rule), and
        // plaintext otherwise, as a `SIMPLE` or `MUTUAL` rule further on is
        // hidden by it in Istio too (warned of when the file loads).
        rule.route_for(port)
            .or_else(|| self.best(&host, |r| r.route_for(port).filter(|found| found.mesh)))
            .unwrap_or(&PLAINTEXT)
    }

    /// What `take` takes of the highest-ranked rule on the path of a call
    /// to `host` it takes anything of; the first document among equals.
    fn best<'a, T>(&'a self, host: &str, take: impl Fn(&'a Rule) -> Option<T>) -> Option<T> {
        self.0
            .iter()
            .filter(|r| r.on_path(host))
            .filter_map(|r| Some((take(r)?, r)))
            .filter_map(|(taken, r)| host_specificity(&r.host, host).map(|s| (r.rank(s), taken)))
            .fold(None, |best, (rank, taken)| match best {
                Some((b, _)) if b >= rank => best,
                _ => Some((rank, taken)),
            })
            .map(|(_, taken)| taken)
    }
}

/// The mesh identity `ISTIO_MUTUAL` uses.
#[derive(Clone, Copy)]
enum Mesh<'m> {
    /// The workload's own, when it has one.
    Given(Option<&'m MeshIdentity>),
    /// Not known: only checking the file (`ISTIO_MUTUAL` is not built).
    NotChecked,
}

/// One `tls` block built.
fn route(
    policy: &WorkloadPolicy<'_>,
    doc: &Document,
    field: &str,
    tls: &ClientTlsSettingsSpec,
    mesh: Mesh<'_>,
) -> Result<UpstreamRoute, PolicyError> {
    // `Document::check` refused what cannot be built (`insecureSkipVerify`,
    // `MUTUAL` without its files, names without the bundle to check them).
    let error = |name: &str, message: String| policy.error_at(doc, &format!("{field}{name}"), message);
    let built = |b: crate::ClientTlsBuilder| {
        let b = tls
            .subject_alt_names
            .iter()
            .fold(b, |b, name| b.expect_subject_alt_name(name.clone()));
        // A file that cannot be read keeps its I/O error as the source.
        b.build().map_err(|e| error("", e.to_string()).with_source(e))
    };
    let transport = match tls.mode {
        ClientTlsMode::Disable => UpstreamTransport::Plaintext,
        ClientTlsMode::Simple => match &tls.ca_certificates {
            Some(ca) => UpstreamTransport::Tls(built(ClientTls::server_only(ca))?),
            None => UpstreamTransport::SystemTls,
        },
        ClientTlsMode::Mutual => {
            let (Some(cert), Some(key), Some(ca)) =
                (&tls.client_certificate, &tls.private_key, &tls.ca_certificates)
            else {
                return Err(error("", "MUTUAL names its three files".into()));
            };
            UpstreamTransport::Tls(built(ClientTls::builder(cert, key, ca))?)
        }
        ClientTlsMode::IstioMutual => {
            let mesh = match mesh {
                Mesh::Given(mesh) => mesh,
                // Only the mesh identity remains to be read: nothing to build.
                Mesh::NotChecked => return Ok(PLAINTEXT),
            };
            let Some(mesh) = mesh else {
                return Err(error(
                    ".mode",
                    "ISTIO_MUTUAL uses the workload's own certificate, key and mesh bundle, and none was given (the examples take them from --tls-cert, --tls-key and --client-ca)".into(),
                ));
            };
            // Without names, any workload of the mesh (a SPIFFE certificate
            // of its own CA; of the service's namespace when a service is
            // dialled by name) will do: said at start-up, as it is weaker
            // than Istio's service-account names.
            let b = ClientTls::builder(&mesh.cert, &mesh.key, &mesh.ca);
            let b = if tls.subject_alt_names.is_empty() {
                palisade_core::config_warning!(
                    target: crate::LOG_TARGET,
                    "{}: {field}: ISTIO_MUTUAL without subjectAltNames: any workload certificate of the mesh CA is accepted for this host (of the service's namespace when a Kubernetes service name, NAME.NS.svc, is dialled); name the upstream's SPIFFE ID to pin it",
                    doc.resource()
                );
                b.accept_any_name_in_bundle()
            } else {
                b
            };
            UpstreamTransport::Tls(built(b)?)
        }
    };
    Ok(UpstreamRoute {
        transport,
        sni: tls.sni.clone(),
        mesh: tls.mode == ClientTlsMode::IstioMutual,
    })
}

#[cfg(test)]
mod tests {
    use palisade_core::policy::{PolicySet, Workload};

    use super::*;

    #[test]
    fn check_policy_reads_the_files_a_rule_names_but_not_the_mesh_identity() {
        let rule = |tls: &str| {
            let yaml = format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {tls}\n"
            );
            PolicySet::from_yaml_str(&yaml, "dr.yaml").unwrap()
        };
        let mesh =
            rule("{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/reviews]}");
        let policy = mesh.for_workload(&Workload::new("productpage", "default"));
        UpstreamTls::check_policy(&policy).unwrap();
        let err = UpstreamTls::from_policy(&policy, None).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.trafficPolicy.tls.mode"));
        let files = rule(
            "{mode: MUTUAL, clientCertificate: /nonexistent/c.pem, privateKey: /nonexistent/k.pem, caCertificates: /nonexistent/ca.pem}",
        );
        let err = UpstreamTls::check_policy(&files.for_workload(&Workload::new("productpage", "default")))
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.trafficPolicy.tls"), "{err}");
        // Missing here: an I/O error, which a hot reload waits out.
        assert_eq!(
            err.io_error().map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound),
            "{err}"
        );
    }

    #[test]
    fn a_rule_built_in_code_is_checked_as_a_file_would_be() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: SIMPLE}\n";
        let loaded = PolicySet::from_yaml_str(yaml, "dr.yaml").unwrap();
        let workload = Workload::new("productpage", "default");
        // What a file cannot say, put into a document by code: refused
        // when the set is made, as a file's loading refuses it.
        for (relax, field) in [
            (
                (|t: &mut ClientTlsSettingsSpec| t.insecure_skip_verify = true)
                    as fn(&mut ClientTlsSettingsSpec),
                "insecureSkipVerify",
            ),
            (
                |t| t.subject_alt_names.push("reviews.example".into()),
                "subjectAltNames",
            ),
            (|t| t.mode = ClientTlsMode::Mutual, "clientCertificate"),
        ] {
            let mut documents = loaded.documents().to_vec();
            let palisade_core::policy::Spec::DestinationRule(spec) = &mut documents[0].spec else {
                panic!("a DestinationRule");
            };
            relax(spec.traffic_policy.as_mut().unwrap().tls.as_mut().unwrap());
            let err = PolicySet::from_documents("code", documents).unwrap_err();
            assert_eq!(
                err.field,
                Some(format!("spec.trafficPolicy.tls.{field}")),
                "{err}"
            );
            assert!(err.to_string().starts_with("code: document 1"), "{err}");
        }
        UpstreamTls::from_policy(&loaded.for_workload(&workload), None).unwrap();
    }

    /// The threads of this process named as the TLS file watcher (Linux:
    /// the name is cut to 15 bytes).
    fn watcher_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim_end() == "palisade-tls-wa")
            .count()
    }

    /// A `DestinationRule`'s client TLS follows its files: the workload's
    /// rotated certificate reaches its calls too, once watched, every
    /// route's from one thread.
    #[test]
    fn every_watched_rules_client_certificate_rotates_from_one_thread() {
        let dir = palisade_testkit::TempDir::new("palisade-mtls-upstream-watch");
        let r = crate::test_support::Rotation::new(dir.path());
        let (cert, key, ca) = (&r.cert, &r.key, &r.ca);
        let rule = |name: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {name}\n  trafficPolicy:\n    tls: {{mode: MUTUAL, clientCertificate: {}, privateKey: {}, caCertificates: {}}}\n",
                cert.display(),
                key.display(),
                ca.display()
            )
        };
        let yaml = [rule("reviews"), rule("ratings"), rule("details")].join("---\n");
        let set = PolicySet::from_yaml_str(&yaml, "dr.yaml").unwrap();
        let tls = UpstreamTls::from_policy(&set.for_workload(&Workload::new("productpage", "default")), None)
            .unwrap();
        let presented = |service: &str| {
            let UpstreamTransport::Tls(client) = tls
                .for_host(&format!("{service}.default.svc.cluster.local"), 443)
                .transport()
            else {
                panic!("no client TLS for {service}")
            };
            r.presented(client)
        };
        let services = ["reviews", "ratings", "details"];
        for s in services {
            assert_eq!(presented(s), r.first.cert_der(), "{s}");
        }
        let before = watcher_threads();
        tls.watch(std::time::Duration::from_millis(50));
        // A thread takes its name once it runs: wait for the first, then
        // long enough for any other to have named itself.
        let named = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            watcher_threads() > before
        });
        assert!(named, "no watcher thread");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(watcher_threads(), before + 1, "one watcher for three routes");
        // A file's stamp may keep its second: the change must differ in it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        r.second.write_to(dir.path(), "client").unwrap();
        for s in services {
            let rotated = (0..100).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                presented(s) == r.second.cert_der()
            });
            assert!(rotated, "{s}: the rule's client certificate did not rotate");
        }
    }

    /// Istio's lookup path: the caller's namespace, then the called
    /// service's (its rules for its own services, where exported to the
    /// caller), then the root namespace.
    #[test]
    fn the_called_services_namespace_rule_applies_to_callers_elsewhere_where_exported() {
        let rule = |namespace: &str, host: &str, mode: &str, export: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: {namespace}}}\nspec:\n  host: {host}\n{export}  trafficPolicy:\n    tls: {{mode: {mode}}}\n---\n"
            )
        };
        let transport = |yaml: &str, caller: &str, host: &str| {
            let set = PolicySet::from_yaml_str(yaml, "dr.yaml").unwrap();
            let tls =
                UpstreamTls::from_policy(&set.for_workload(&Workload::new("reviews", caller)), None).unwrap();
            match tls.for_host(host, 9080).transport() {
                UpstreamTransport::Plaintext => "plaintext",
                UpstreamTransport::SystemTls => "tls",
                _ => "other",
            }
        };
        let ratings = "ratings.prod.svc.cluster.local";
        // The service's namespace's rule, by its short name: for a caller
        // of any namespace.
        let own = rule("prod", "ratings", "SIMPLE", "");
        assert_eq!(transport(&own, "shop", ratings), "tls");
        assert_eq!(transport(&own, "prod", ratings), "tls");
        // Before the root namespace's, after the caller's own.
        let root = rule("istio-system", "'*.local'", "DISABLE", "");
        assert_eq!(transport(&format!("{root}{own}"), "shop", ratings), "tls");
        let callers = rule("shop", ratings, "DISABLE", "");
        assert_eq!(
            transport(&format!("{own}{callers}"), "shop", ratings),
            "plaintext"
        );
        // A namespace's rule is for its own services only: not for a host
        // of another namespace, nor one outside the cluster.
        let foreign = rule("prod", "details.other.svc.cluster.local", "SIMPLE", "");
        assert_eq!(
            transport(&foreign, "shop", "details.other.svc.cluster.local"),
            "plaintext"
        );
        let external = rule("prod", "api.example.com", "SIMPLE", "");
        assert_eq!(transport(&external, "shop", "api.example.com"), "plaintext");
        // Where exported: `.` keeps it to its own namespace's callers, a
        // list to those named, `~` to none.
        let private = rule("prod", "ratings", "SIMPLE", "  exportTo: [.]\n");
        assert_eq!(transport(&private, "shop", ratings), "plaintext");
        assert_eq!(transport(&private, "prod", ratings), "tls");
        let listed = rule("prod", "ratings", "SIMPLE", "  exportTo: [shop]\n");
        assert_eq!(transport(&listed, "shop", ratings), "tls");
        assert_eq!(transport(&listed, "web", ratings), "plaintext");
        assert_eq!(
            transport(&listed, "prod", ratings),
            "plaintext",
            "not exported to its own namespace"
        );
        let none = rule("prod", "ratings", "SIMPLE", "  exportTo: ['~']\n");
        assert_eq!(transport(&none, "prod", ratings), "plaintext");
        // One of the service's namespace that sets no TLS (a canary's
        // subsets) does not hide the root namespace's TLS from callers
        // elsewhere, whatever its mode (not on their path at all).
        let subsets_only = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: canary, namespace: prod}\nspec:\n  host: ratings\n  subsets: [{name: v2, labels: {version: v2}}]\n---\n";
        let root_tls = rule("istio-system", "'*.local'", "SIMPLE", "");
        assert_eq!(
            transport(&format!("{subsets_only}{root_tls}"), "shop", ratings),
            "tls"
        );
        // A workload of the root namespace (a gateway): its namespace's
        // rules kept to it first, then the called service's, then its
        // exported ones.
        assert_eq!(transport(&format!("{root}{own}"), "istio-system", ratings), "tls");
        let root_kept = rule("istio-system", "'*.local'", "DISABLE", "  exportTo: [.]\n");
        assert_eq!(
            transport(&format!("{own}{root_kept}"), "istio-system", ratings),
            "plaintext"
        );
        // The root namespace's, too.
        let root_private = rule("istio-system", "'*.local'", "SIMPLE", "  exportTo: [.]\n");
        assert_eq!(transport(&root_private, "shop", ratings), "plaintext");
        assert_eq!(
            transport(&root_private.replace("[.]", "[shop]"), "shop", ratings),
            "tls"
        );
    }

    #[test]
    fn rules_are_taken_by_namespace_host_tls_and_then_selector() {
        let rule = |name: &str, namespace: &str, host: &str, tls: Option<&str>| {
            let policy = tls.map_or(String::new(), |t| {
                format!("\n  trafficPolicy:\n    tls: {{mode: {t}}}")
            });
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  host: {host}{policy}\n---\n"
            )
        };
        let selecting = |name: &str, tls: &str| {
            rule(name, "default", "reviews", Some(tls)).replace(
                "  host: reviews",
                "  host: reviews\n  workloadSelector: {matchLabels: {app: productpage}}",
            )
        };
        let warnings = |yaml: String| {
            let set = PolicySet::from_yaml_str(&yaml, "dr.yaml").unwrap();
            set.warnings().iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        let transport = |yaml: String| {
            let set = PolicySet::from_yaml_str(&yaml, "dr.yaml").unwrap();
            let tls =
                UpstreamTls::from_policy(&set.for_workload(&Workload::new("productpage", "default")), None)
                    .unwrap();
            match tls
                .for_host("reviews.default.svc.cluster.local", 9080)
                .transport()
            {
                UpstreamTransport::Plaintext => "plaintext",
                UpstreamTransport::SystemTls => "tls",
                _ => "other",
            }
        };
        // A rule without TLS (subsets only, say) first, by its short name:
        // Istio merges the host's rules, and the TLS applies.
        let merged = [
            rule("subsets", "default", "reviews", None),
            rule(
                "tls",
                "default",
                "reviews.default.svc.cluster.local",
                Some("SIMPLE"),
            ),
        ];
        assert_eq!(transport(merged.concat()), "tls");
        // The root namespace's rule first: the workload's namespace wins.
        let scoped = [
            rule(
                "mesh",
                "istio-system",
                "reviews.default.svc.cluster.local",
                Some("SIMPLE"),
            ),
            rule("local", "default", "reviews", Some("DISABLE")),
        ];
        assert_eq!(transport(scoped.concat()), "plaintext");
        assert_eq!(transport(scoped[0].clone()), "tls");
        // Two that set TLS: the first, with a warning when the file loads.
        let twice = [
            rule("a", "default", "reviews", Some("SIMPLE")),
            rule(
                "b",
                "default",
                "Reviews.default.svc.cluster.local.",
                Some("DISABLE"),
            ),
        ];
        assert_eq!(transport(twice.concat()), "tls");
        let warned = warnings(twice.concat());
        assert!(
            warned
                .iter()
                .any(|w| w.contains("document 2") && w.contains("spec.host") && w.contains("document 1")),
            "{warned:?}"
        );
        // A rule whose selector selects the workload, before one for all.
        let selected = [
            rule("all", "default", "reviews", Some("DISABLE")),
            selecting("mine", "SIMPLE"),
        ];
        assert_eq!(transport(selected.concat()), "tls");
        // One without TLS (a canary's subsets) does not hide the TLS of
        // the rule for all.
        let canary = [
            rule("all", "default", "reviews", Some("SIMPLE")),
            selecting("canary", "SIMPLE").replace("  trafficPolicy:\n    tls: {mode: SIMPLE}\n", ""),
        ];
        assert!(!canary[1].contains("trafficPolicy"), "{}", canary[1]);
        assert_eq!(transport(canary.concat()), "tls");
        // A rule with a selector in the root namespace applies to no other
        // namespace's workload (as in Istio), whatever the file's order.
        let root_selector = |tls: &str| {
            selecting("mine", tls)
                .replace("namespace: default", "namespace: istio-system")
                .replace("host: reviews", "host: reviews.default.svc.cluster.local")
        };
        let mesh = rule(
            "mesh",
            "istio-system",
            "reviews.default.svc.cluster.local",
            Some("SIMPLE"),
        );
        assert_eq!(transport(format!("{}{mesh}", root_selector("DISABLE"))), "tls");
        assert_eq!(transport(format!("{mesh}{}", root_selector("DISABLE"))), "tls");
        assert_eq!(transport(root_selector("SIMPLE")), "plaintext", "no rule applies");
        let warned = warnings(root_selector("SIMPLE"));
        assert!(
            warned
                .iter()
                .any(|w| w.contains("spec.workloadSelector") && w.contains("own namespace")),
            "{warned:?}"
        );
        // The workload's namespace first, then the most specific host in it.
        let namespace_first = [
            rule(
                "exact",
                "istio-system",
                "reviews.default.svc.cluster.local",
                Some("DISABLE"),
            ),
            rule(
                "wildcard",
                "default",
                "'*.default.svc.cluster.local'",
                Some("SIMPLE"),
            ),
        ];
        assert_eq!(transport(namespace_first.concat()), "tls");
        // A rule of the workload's namespace without TLS hides the root
        // namespace's: plaintext, as warned when the file loads.
        let hidden = [
            rule(
                "mesh",
                "istio-system",
                "reviews.default.svc.cluster.local",
                Some("SIMPLE"),
            ),
            rule("subsets", "default", "reviews", None),
        ];
        assert_eq!(transport(hidden.concat()), "plaintext");
        let warned = warnings(hidden.concat());
        assert!(
            warned
                .iter()
                .any(|w| w.contains("document 2") && w.contains("hides the TLS document 1")),
            "{warned:?}"
        );
        // And by a mesh-wide wildcard of the root namespace.
        let mesh_wide = [
            rule("mesh", "istio-system", "'*.local'", Some("SIMPLE")),
            rule("subsets", "default", "reviews", None),
        ];
        assert_eq!(transport(mesh_wide.concat()), "plaintext");
        let warned = warnings(mesh_wide.concat());
        assert!(
            warned
                .iter()
                .any(|w| w.contains("document 2") && w.contains("for `*.local`")),
            "{warned:?}"
        );
        assert_eq!(transport(mesh_wide[0].clone()), "tls");
        // Said when the namespace's rule that sets it selects other workloads.
        let canary_only = [
            hidden[0].clone(),
            hidden[1].clone(),
            selecting("canary", "SIMPLE").replace("app: productpage", "app: canary"),
        ];
        assert_eq!(transport(canary_only.concat()), "plaintext");
        let warned = warnings(canary_only.concat());
        assert!(warned.iter().any(|w| w.contains("hides")), "{warned:?}");
        // Not when a rule of the namespace sets the host's TLS (it is taken).
        let covered = [
            hidden[0].clone(),
            hidden[1].clone(),
            rule("tls", "default", "reviews", Some("SIMPLE")),
        ];
        assert_eq!(transport(covered.concat()), "tls");
        let warned = warnings(covered.concat());
        assert!(!warned.iter().any(|w| w.contains("hides")), "{warned:?}");
        // Rules of other selectors or namespaces are not warned of.
        let apart = [
            rule("a", "default", "reviews", Some("SIMPLE")),
            rule("b", "prod", "reviews", Some("SIMPLE")),
            rule("c", "default", "reviews.prod.svc.cluster.local", Some("DISABLE")),
            selecting("d", "DISABLE"),
            rule(
                "e",
                "istio-system",
                "reviews.default.svc.cluster.local",
                Some("SIMPLE"),
            ),
        ];
        let warned = warnings(apart.concat());
        assert!(warned.is_empty(), "{warned:?}");
    }

    /// Behind a rule that sets no TLS for the call (subsets only, the
    /// proxy's tuning only, another port's TLS), the call takes the mesh's
    /// `ISTIO_MUTUAL` further on the path, as Istio's automatic mutual TLS
    /// would, and nothing else: a `SIMPLE` rule further on stays hidden
    /// (plaintext, warned of), as in Istio; an explicit `DISABLE` is taken.
    #[test]
    fn behind_a_rule_without_tls_a_call_takes_the_meshs_istio_mutual() {
        let dir = palisade_testkit::TempDir::new("palisade-upstream-automatic");
        let pki = palisade_testkit::TestPki::new();
        let (cert, key) = pki
            .workload("default", "productpage")
            .write_to(dir.path(), "productpage")
            .unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let mesh = MeshIdentity { cert, key, ca };
        let rule = |name: &str, namespace: &str, host: &str, policy: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  host: {host}\n{policy}---\n"
            )
        };
        let transport = |yaml: &str, port: u16| {
            let set = PolicySet::from_yaml_str(yaml, "dr.yaml").unwrap();
            let policy = set.for_workload(&Workload::new("productpage", "default"));
            let tls = UpstreamTls::from_policy(&policy, Some(&mesh)).unwrap();
            let route = tls.for_host("reviews.default.svc.cluster.local", port);
            match (route.transport(), route.mesh) {
                (UpstreamTransport::Plaintext, _) => "plaintext",
                (UpstreamTransport::Tls(_), true) => "mesh",
                _ => "other",
            }
        };
        let mesh_wide = rule(
            "mesh",
            "istio-system",
            "'*.local'",
            "  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n",
        );
        let simple_wide = rule(
            "egress",
            "istio-system",
            "'*.local'",
            "  trafficPolicy: {tls: {mode: SIMPLE}}\n",
        );
        let other_port = rule(
            "port",
            "default",
            "reviews",
            "  trafficPolicy: {portLevelSettings: [{port: {number: 9999}, tls: {mode: DISABLE}}]}\n",
        );
        for local in [
            rule(
                "subsets",
                "default",
                "reviews",
                "  subsets: [{name: v1, labels: {version: v1}}]\n",
            ),
            rule(
                "tuned",
                "default",
                "reviews",
                "  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n",
            ),
            other_port.clone(),
        ] {
            assert_eq!(transport(&format!("{mesh_wide}{local}"), 9080), "mesh", "{local}");
            assert_eq!(transport(&format!("{local}{mesh_wide}"), 9080), "mesh", "{local}");
            let hidden = format!("{simple_wide}{local}");
            assert_eq!(transport(&hidden, 9080), "plaintext", "{local}");
            // Warned of for a rule that sets no TLS at all (one that sets
            // another port's is not read so closely when the file loads).
            let set = PolicySet::from_yaml_str(&hidden, "dr.yaml").unwrap();
            assert_eq!(
                set.warnings()
                    .iter()
                    .any(|w| w.to_string().contains("hides the TLS")),
                !local.contains("portLevelSettings"),
                "{:?}",
                set.warnings()
            );
            let set = PolicySet::from_yaml_str(&format!("{mesh_wide}{local}"), "dr.yaml").unwrap();
            assert!(
                !set.warnings().iter().any(|w| w.to_string().contains("hides")),
                "{:?}",
                set.warnings()
            );
        }
        // The port the namespace's rule sets is its own.
        assert_eq!(transport(&format!("{mesh_wide}{other_port}"), 9999), "plaintext");
        // An explicit DISABLE is TLS set: taken.
        let off = rule(
            "off",
            "default",
            "reviews",
            "  trafficPolicy: {tls: {mode: DISABLE}}\n",
        );
        assert_eq!(transport(&format!("{mesh_wide}{off}"), 9080), "plaintext");
        // No rule at all: plaintext, as before.
        assert_eq!(transport("", 9080), "plaintext");
    }
}
