//! productpage's calls to its back-ends (`--upstream NAME=URL`): the
//! credential from the policy file's `UpstreamCredentials` (palisade-client)
//! and the TLS from its `DestinationRule` (palisade-mtls), per upstream.
//!
//! An upstream named `NAME` is, for policy, the host
//! `NAME.<namespace>.svc.cluster.local`: requests are sent to that name
//! (as `Host`, and as SNI over TLS, unless the rule names another `sni`),
//! connected to the URL's host (resolved at each new connection), as a
//! mesh's DNS would. Every failure is an
//! answer of the section, never an error of productpage: no caller token
//! when one is needed 401, no connection or a failed TLS check 502, no
//! answer in time 504.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    reason = "shared by several examples, each using a part"
)]

use std::sync::Arc;

use palisade::client::{CallerToken, ClientError, Upstreams};
use palisade::core::RequestAuth;
use palisade::core::policy::PolicyError;
use palisade::mtls::{UpstreamTls, UpstreamTransport};
use serde_json::{Value, json};

use super::common::{self, Args, Setup};

/// An `--upstream NAME=URL`, as the command line gives it.
struct Wanted {
    name: String,
    url: reqwest::Url,
    port: u16,
    target: common::Target,
}

/// One back-end.
struct Upstream {
    name: String,
    /// `NAME.<namespace>.svc.cluster.local`: what policies call it.
    host: String,
    /// Where requests go: scheme, the name sent, the URL's port.
    base: reqwest::Url,
    client: reqwest::Client,
}

/// Every `--upstream`, and what each is sent: as the policy file says
/// now (a reload that changes its `UpstreamCredentials` or
/// `DestinationRule` documents builds them again).
#[derive(Clone)]
pub struct Backends {
    names: Arc<[String]>,
    current: common::Reloaded<Inner>,
}

struct Inner {
    upstreams: Vec<Upstream>,
    credentials: Upstreams,
    /// Its files watched while these calls are in force.
    _tls: UpstreamTls,
}

/// What one call answered: the upstream's status and body, or the status
/// standing for why there is none.
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    fn failed(status: u16, error: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": error.into() }),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({ "status": self.status, "body": self.body })
    }
}

impl Backends {
    /// The `--upstream` back-ends with the workload's `UpstreamCredentials`
    /// and `DestinationRule` documents; exits with one line naming the
    /// argument, or the file, document and field, that cannot be used.
    pub fn new(args: &Args, setup: &Setup) -> Self {
        let wanted: Arc<[Wanted]> = args
            .upstreams
            .iter()
            .map(|(name, url)| {
                let (url, port, target) = common::upstream_target(name, url);
                Wanted {
                    name: name.clone(),
                    url,
                    port,
                    target,
                }
            })
            .collect();
        let namespace = setup.workload.namespace.clone();
        let names = wanted.iter().map(|w| w.name.clone()).collect();
        let current = common::outbound_reloaded(args, setup, move |args, policy| {
            let (credentials, tls) = common::outbound_for(args, policy)?;
            // A credential that may not go to an upstream's host refuses
            // the file, not each call.
            for w in wanted.iter() {
                credentials
                    .for_host(&format!("{}.{namespace}.svc.cluster.local", w.name))
                    .map_err(|e| PolicyError::new(policy.source(), format!("--upstream {}: {e}", w.name)))?;
            }
            let upstreams = wanted
                .iter()
                .map(|w| upstream(w, &namespace, &tls, args))
                .collect::<Result<_, String>>()
                .map_err(|e| PolicyError::new(policy.source(), e))?;
            Ok(Inner {
                upstreams,
                credentials,
                _tls: tls,
            })
        });
        Self { names, current }
    }

    /// The names of the upstreams, in `--upstream` order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// `GET path` on upstream `name`, made while serving `auth`'s request.
    pub async fn get(&self, name: &str, path: &str, auth: Option<&RequestAuth>) -> Answer {
        let current = self.current.current();
        let Some(upstream) = current.upstreams.iter().find(|u| u.name == name) else {
            return Answer::failed(502, format!("no --upstream {name}"));
        };
        let Ok(url) = upstream.base.join(path) else {
            return Answer::failed(502, "bad path");
        };
        let caller = auth.and_then(CallerToken::from_request);
        let Ok(mut req) = upstream.client.get(url).build() else {
            return Answer::failed(502, "bad path");
        };
        let sent = match async {
            let credentials = current.credentials.for_host(&upstream.host)?;
            credentials
                .apply_request(&mut req, Some(&upstream.host), caller.as_ref())
                .await
        }
        .await
        {
            Ok(sent) => sent,
            Err(ClientError::NoCallerToken) => {
                return Answer::failed(401, "the caller has no token to send on its behalf");
            }
            Err(e) => {
                palisade::core::sparse_warning!(per: name; upstream = name, error = %e, "no credential for the upstream (at warn level once a minute for each upstream while it lasts)");
                return Answer::failed(502, "no credential for the upstream (see productpage's log)");
            }
        };
        match upstream.client.execute(req).await {
            Ok(res) => {
                // A cached token the upstream refuses is renewed; a
                // Kerberos call's answer must prove the upstream.
                if let Err(e) = sent.answered_by(&res) {
                    palisade::core::sparse_warning!(per: name; upstream = name, error = %e, "the upstream's answer is not used (at warn level once a minute for each upstream while it lasts)");
                    return Answer::failed(
                        502,
                        "the upstream did not prove its identity (see productpage's log)",
                    );
                }
                let status = res.status().as_u16();
                let text = match res.text().await {
                    Ok(t) => t,
                    Err(e) if e.is_timeout() => {
                        return Answer::failed(504, "the upstream did not answer in time");
                    }
                    Err(_) => return Answer::failed(502, "the upstream's answer could not be read"),
                };
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                Answer { status, body }
            }
            Err(e) if e.is_timeout() => Answer::failed(504, "the upstream did not answer in time"),
            Err(e) => {
                palisade::core::sparse_warning!(per: name; upstream = name, error = %e.without_url(), "upstream unreachable (at warn level once a minute for each upstream while it lasts)");
                Answer::failed(502, "the upstream cannot be reached or failed the TLS checks")
            }
        }
    }
}

/// One `--upstream NAME=URL` built, or why it cannot be.
fn upstream(wanted: &Wanted, namespace: &str, tls: &UpstreamTls, args: &Args) -> Result<Upstream, String> {
    let name = &wanted.name;
    let bad = |why: &dyn std::fmt::Display| {
        let shown = palisade::core::syntax::url_without_credentials(wanted.url.as_str());
        format!("--upstream {name}={shown}: {why}")
    };
    let port = wanted.port;
    let host = format!("{name}.{namespace}.svc.cluster.local");
    let route = tls.for_host(&host, port);
    let sent_name = route.sni().unwrap_or(&host).to_owned();
    // Every connection goes to the URL's host: no proxy from the
    // environment.
    let mut client = reqwest::Client::builder()
        .no_proxy()
        .timeout(args.upstream_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(wanted.target.clone()));
    // The rule decides; without one (or with DISABLE) the URL's scheme
    // does, an https URL getting TLS checked against the system's anchors.
    let scheme = match (route.transport(), wanted.url.scheme()) {
        (UpstreamTransport::Tls(tls), _) => {
            client = client.use_preconfigured_tls((*tls.client_config()).clone());
            "https"
        }
        (UpstreamTransport::Plaintext, "http") => "http",
        _ => "https",
    };
    let base = reqwest::Url::parse(&format!("{scheme}://{sent_name}:{port}/")).map_err(|e| bad(&e))?;
    Ok(Upstream {
        name: name.clone(),
        host,
        base,
        client: client.build().map_err(|e| bad(&e))?,
    })
}
