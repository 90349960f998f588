//! reviews' calls to ratings (`--upstream ratings=URL`), over gRPC: a tonic
//! channel under palisade-client's `CredentialsLayer`, with the credential
//! of the policy file's `UpstreamCredentials` for
//! `ratings.<namespace>.svc.cluster.local` and the TLS of its
//! `DestinationRule`.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    reason = "shared by several examples, each using a part"
)]

use std::pin::Pin;
use std::time::Duration;

use palisade::client::{CallerToken, Credentials, CredentialsLayer, CredentialsService};
use palisade::core::policy::PolicyError;
use palisade::mtls::{UpstreamTls, UpstreamTransport};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint};

use super::common::{self, Args, Setup};
use super::proto::ratings::GetRatingsRequest;
use super::proto::ratings::ratings_client::RatingsClient;

/// A connection, plaintext or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The ratings service, as reviews calls it: as the policy file says now
/// (a reload that changes its `UpstreamCredentials` or `DestinationRule`
/// documents builds the channel again).
#[derive(Clone)]
pub struct Ratings {
    current: common::Reloaded<RatingsChannel>,
    /// `--upstream-timeout`: for the whole call, the credential included.
    timeout: Duration,
}

/// The channel to ratings and what it is sent.
struct RatingsChannel {
    client: RatingsClient<CredentialsService<Channel>>,
    /// The credential is the caller's token, or made from it.
    needs_caller: bool,
    /// Its files watched while this channel is in force.
    _tls: UpstreamTls,
}

impl Ratings {
    /// The `--upstream ratings=URL` of `args`, if given; exits with one line
    /// naming what cannot be used.
    pub fn new(args: &Args, setup: &Setup) -> Option<Self> {
        let (_, url) = args.upstreams.iter().find(|(n, _)| n == "ratings")?;
        let shown = palisade::core::syntax::url_without_credentials(url);
        let host = format!("ratings.{}.svc.cluster.local", setup.workload.namespace);
        let (parsed, port, target) = common::upstream_target("ratings", url);
        let current = common::outbound_reloaded(args, setup, move |args, policy| {
            let bad = |why: &dyn std::fmt::Display| {
                PolicyError::new(policy.source(), format!("--upstream ratings={shown}: {why}"))
            };
            let (credentials, tls) = common::outbound_for(args, policy)?;
            let credentials = credentials.for_host(&host).map_err(|e| bad(&e))?.clone();
            let needs_caller = matches!(credentials, Credentials::Caller | Credentials::TokenExchange(_));
            let route = tls.for_host(&host, port);
            let name = route.sni().unwrap_or(&host).to_owned();
            let connector_tls = match route.transport() {
                UpstreamTransport::Tls(tls) => Some(tls.h2_connector()),
                UpstreamTransport::Plaintext if parsed.scheme() == "http" => None,
                _ => {
                    return Err(bad(
                        &"gRPC over TLS needs a DestinationRule with a trust bundle (SIMPLE with caCertificates, MUTUAL or ISTIO_MUTUAL)",
                    ));
                }
            };
            let scheme = if connector_tls.is_some() { "https" } else { "http" };
            let server_name = rustls_name(&name).ok_or_else(|| bad(&"not a host name"))?;
            // Every connection goes to the URL's host, as the mesh's DNS
            // would send the name there.
            let target = target.clone();
            let connector = tower::service_fn(move |_: tonic::transport::Uri| {
                let (tls, server_name, target) = (connector_tls.clone(), server_name.clone(), target.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(&target.addrs().await?[..]).await?;
                    let _ = tcp.set_nodelay(true);
                    let io: Pin<Box<dyn Io>> = match tls {
                        Some(tls) => Box::pin(tls.connect(server_name, tcp).await?),
                        None => Box::pin(tcp),
                    };
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
                }
            });
            // The channel's connections run on a runtime of their own:
            // actix-web has one per worker thread, and every worker shares
            // the channel.
            let _entered = outbound_runtime().enter();
            let channel = Endpoint::from_shared(format!("http://{name}:{port}"))
                .map_err(|e| bad(&e))?
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(connector);
            // The channel's requests carry a path only: the layer is told
            // where they go as the server sees it (a DPoP proof names the
            // URI): over TLS, `https`, whatever the channel's own endpoint
            // says.
            let credentials = CredentialsLayer::fixed_at(credentials, &format!("{scheme}://{name}:{port}"))
                .map_err(|e| bad(&e))?;
            let service = tower::ServiceBuilder::new().layer(credentials).service(channel);
            Ok(RatingsChannel {
                client: RatingsClient::new(service),
                needs_caller,
                _tls: tls,
            })
        });
        Some(Self {
            current,
            timeout: args.upstream_timeout,
        })
    }

    /// The ratings of product `id`, as a section: `{"status": S, "body": …}`
    /// (the gRPC outcome as the HTTP status it stands for; no answer within
    /// `--upstream-timeout` 504, as productpage's HTTP upstreams).
    pub async fn get(&self, id: i32, caller: Option<CallerToken>) -> Value {
        let mut req = tonic::Request::new(GetRatingsRequest { product_id: id });
        // Timed here, not by the channel (`Endpoint::timeout`), which does
        // not time a connection that hangs before its first answer. The
        // deadline is also sent (`grpc-timeout`), so ratings can give up as
        // well; tonic's channel enforces that one too, and reports it as
        // `CANCELLED` with `TimeoutExpired`'s text, read below as the
        // timeout it is.
        req.set_timeout(self.timeout);
        let channel = self.current.current();
        match caller {
            Some(caller) => {
                req.extensions_mut().insert(caller);
            }
            // Nothing is sent.
            None if channel.needs_caller => {
                return json!({"status": 401, "body": {"error": "the caller has no token to send on its behalf"}});
            }
            None => {}
        }
        let mut client = channel.client.clone();
        let call = client.get_ratings(req);
        let Ok(answer) = tokio::time::timeout(self.timeout, call).await else {
            return json!({"status": 504, "body": {"error": "ratings did not answer in time"}});
        };
        match answer {
            Ok(res) => json!({"status": 200, "body": res.into_inner().ratings}),
            Err(status) => {
                // This service's own credential for the call failed (the
                // issuer refused or is out of reach; with the `tonic`
                // feature such a failure is a status whose source says so):
                // the upstream could not be asked, as an unreachable one.
                let ours = palisade::client::ClientError::of(&status);
                let http = match status.code() {
                    // Its deadline passed while the credential was got.
                    _ if matches!(ours, Some(palisade::client::ClientError::DeadlineExceeded)) => 504,
                    _ if ours.is_some() => 502,
                    tonic::Code::Unauthenticated => 401,
                    tonic::Code::PermissionDenied => 403,
                    tonic::Code::InvalidArgument => 400,
                    tonic::Code::NotFound => 404,
                    tonic::Code::DeadlineExceeded => 504,
                    tonic::Code::Cancelled if status.message() == tonic::TimeoutExpired(()).to_string() => {
                        504
                    }
                    _ => 502,
                };
                // A refusal the caller's credential or request earned (any
                // user can earn one per request) at debug level; ratings'
                // failure at warn level, once a minute while it lasts.
                if matches!(http, 400 | 401 | 403 | 404) {
                    tracing::debug!(code = ?status.code(), message = status.message(), "ratings refused the call");
                } else {
                    palisade::core::sparse_warning!(code = ?status.code(), message = status.message(), "the ratings call failed (at warn level once a minute while it lasts)");
                }
                json!({"status": http, "body": {"grpc_status": status.code() as i32}})
            }
        }
    }
}

/// The runtime of outbound gRPC connections: one thread, for the process.
fn outbound_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("outbound-grpc")
            .enable_all()
            .build()
            .unwrap_or_else(|e| common::fail(&format!("cannot start the outbound runtime: {e}")))
    })
}

/// A name for the TLS handshake.
fn rustls_name(name: &str) -> Option<tokio_rustls::rustls::pki_types::ServerName<'static>> {
    tokio_rustls::rustls::pki_types::ServerName::try_from(name.to_owned()).ok()
}
