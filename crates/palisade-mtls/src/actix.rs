//! actix-web: the peer identity of a rustls connection, for every request
//! on it.
//!
//! For STRICT and DISABLE, actix-web's own rustls listener and the
//! [`ServerTls::actix_on_connect`] callback are enough:
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use palisade_mtls::ServerTls;
//! # async fn run(guard: palisade_core::Guard) -> Result<(), Box<dyn std::error::Error>> {
//! let tls = ServerTls::builder("server.crt", "server.key").client_ca("mesh-ca.pem").build()?;
//! HttpServer::new(move || App::new().wrap(palisade_actix::Palisade::new(guard.clone())).route("/", web::get().to(|| async { "hi" })))
//!     .on_connect(tls.actix_on_connect())
//!     .bind_rustls_0_23("127.0.0.1:8443", tls.actix_config())?
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The config shares the rotating material of the [`ServerTls`]: a reload
//! reaches actix-web's listener too.
//!
//! actix-web listens with TLS or without it per port, so PERMISSIVE
//! (plaintext and mutual TLS on one port) takes [`server`]: an actix-server
//! listener that peeks at each connection's first byte and hands it to a TLS
//! or a plaintext HTTP service, each built from the same `App` factory. It
//! serves plaintext alone too (`server(listener, None, …)`), where
//! `HttpServer::bind_auto_h2c` would wait for a silent caller's first byte
//! without end. [`HttpSettings::from_limits`] gives it the
//! [`ServerLimits`]' timeouts (the default):
//!
//! ```no_run
//! use actix_web::{App, web};
//! use palisade_mtls::actix::HttpSettings;
//! use palisade_mtls::{MtlsMode, ServerTls};
//! # async fn run(guard: palisade_core::Guard) -> Result<(), Box<dyn std::error::Error>> {
//! let tls = ServerTls::builder("server.crt", "server.key").client_ca("mesh-ca.pem").mode(MtlsMode::Permissive).build()?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:8080")?;
//! palisade_mtls::actix::server(listener, tls, HttpSettings::default(), move || {
//!     App::new().wrap(palisade_actix::Palisade::new(guard.clone())).route("/", web::get().to(|| async { "hi" }))
//! })?
//! .workers(2)
//! .run()
//! .await?;
//! # Ok(()) }
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::body::MessageBody;
use actix_http::{HttpServiceBuilder, Request, Response, TlsAcceptorConfig};
use actix_server::GracefulShutdownSignal;
use actix_service::{
    IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt as _, fn_factory, map_config,
};
use actix_tls::accept::TlsError;
use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::{AppConfig, Extensions};
use actix_web::http::KeepAlive;
use actix_web::rt::net::TcpStream;
use palisade_core::authn::ConnectionInfo;

use crate::identity::fill_from_session;

use palisade_core::limits::ServerLimits;

use crate::server::{LOG_TARGET, ServerTls, handshake_failed, starts_with_tls};
/// actix-server's builder, which [`server`] returns.
pub use actix_server::ServerBuilder;

/// What a connection's `on_connect` records: its [`ConnectionInfo`]
/// (addresses, and for a TLS connection of `tls` the SNI and the verified
/// peer identity, parsed once, with its check at every request), in the
/// connection data where Palisade's middleware finds it, with the watch
/// `palisade_actix::BodyLimit` times later request heads by (as
/// `palisade_actix::on_connect` does for plaintext connections).
/// `plaintext_of`: the server whose plaintext side this is ([`server`]'s,
/// which serves plaintext while the mode in force is PERMISSIVE).
fn connected(
    conn: &dyn Any,
    data: &mut Extensions,
    tls: Option<&ServerTls>,
    plaintext_of: Option<&ServerTls>,
) {
    let (Some(stream), Some(tls)) = (conn.downcast_ref::<TlsStream<TcpStream>>(), tls) else {
        // Plaintext: its addresses and the watch; on the plaintext side
        // of a listener with TLS, served while the mode stays PERMISSIVE.
        palisade_actix::on_connect(conn, data);
        if let Some(tls) = plaintext_of
            && let Some(info) = data.get_mut::<ConnectionInfo>()
        {
            info.peer_recheck = tls.mode_recheck(true);
        }
        return;
    };
    let (tcp, session) = stream.get_ref();
    // The TCP facts and the watch, then what the TLS session adds.
    palisade_actix::on_connect(tcp, data);
    if session.alpn_protocol() == Some(b"h2") {
        palisade_actix::speaks_http2(data);
    }
    if let Some(info) = data.get_mut::<ConnectionInfo>() {
        fill_from_session(info, session, tls);
    }
}

/// The HTTP settings of [`server`], as actix-web's `HttpServer` has
/// them; the defaults are [`ServerLimits`]'s (not `HttpServer`'s), as
/// [`HttpSettings::from_limits`] makes them.
///
/// ```
/// use actix_web::http::KeepAlive;
/// use palisade_mtls::actix::HttpSettings;
/// let settings = HttpSettings::default()
///     .keep_alive(KeepAlive::Timeout(std::time::Duration::from_secs(30)))
///     .host("reviews.default.svc:9080");
/// # let _ = settings;
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct HttpSettings {
    keep_alive: KeepAlive,
    client_request_timeout: Duration,
    client_disconnect_timeout: Duration,
    host: Option<String>,
    handshake_timeout: Duration,
    max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self::from_limits(&ServerLimits::default())
    }
}

impl HttpSettings {
    /// The settings that enforce `limits`' timeouts (their body limit is the
    /// app's: `palisade_actix::BodyLimit`): `client_request_timeout` is the
    /// header-read timeout, keep-alive the idle timeout, the TLS handshake
    /// and PERMISSIVE's first byte get the handshake timeout, and each
    /// worker takes at most the limit's connections at once; a client has
    /// 1 s to close after the server did.
    pub fn from_limits(limits: &ServerLimits) -> Self {
        HttpSettings {
            keep_alive: KeepAlive::Timeout(limits.idle()),
            client_request_timeout: limits.header_read(),
            client_disconnect_timeout: Duration::from_secs(1),
            host: None,
            handshake_timeout: limits.handshake(),
            max_connections: limits.connections(),
        }
    }

    /// How many connections each worker takes at once (default 25,000, the
    /// limit's [`max_connections`](ServerLimits::max_connections); at least
    /// 1), those in their TLS handshake included, as
    /// `HttpServer::max_connections`: past it, new ones wait in the
    /// listener's backlog.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// Keep-alive (default 75 s, the idle timeout), as `HttpServer::keep_alive`.
    pub fn keep_alive(mut self, keep_alive: impl Into<KeepAlive>) -> Self {
        self.keep_alive = match keep_alive.into() {
            KeepAlive::Timeout(d) => KeepAlive::Timeout(at_most_longest(d)),
            other => other,
        };
        self
    }

    /// How long a client has to send its first request's head (default
    /// 10 s, the header-read timeout), as `HttpServer::client_request_timeout`.
    pub fn client_request_timeout(mut self, timeout: Duration) -> Self {
        self.client_request_timeout = at_most_longest(timeout);
        self
    }

    /// How long a client has to close after the server did (default 1 s),
    /// as `HttpServer::client_disconnect_timeout`.
    pub fn client_disconnect_timeout(mut self, timeout: Duration) -> Self {
        self.client_disconnect_timeout = at_most_longest(timeout);
        self
    }

    /// The host name for URL generation and requests without a `Host`
    /// header (default the listener's address), as
    /// `HttpServer::server_hostname`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// How long a client has for the TLS handshake and, before it where
    /// the first byte tells TLS from plaintext (the mode in force is
    /// PERMISSIVE), for its first byte (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = at_most_longest(timeout);
        self
    }
}

/// A timeout of [`HttpSettings`]: at most ten years
/// ([`LONGEST_DURATION`](palisade_core::syntax::LONGEST_DURATION)), as
/// [`ServerLimits`] takes them. A longer one (`Duration::MAX` for "no
/// limit") overflows where actix-http adds it to the current instant, and
/// panics there at the first connection rather than at start-up.
fn at_most_longest(timeout: Duration) -> Duration {
    timeout.min(palisade_core::syntax::LONGEST_DURATION)
}

/// An actix-web server for the `App`s `factory` makes, on `listener`, with
/// `tls` in any mode, PERMISSIVE included, or without TLS (`None`): in
/// PERMISSIVE the first byte of each connection tells TLS (a handshake
/// record, `0x16`) from plaintext HTTP, as Istio's sidecar does, and
/// plaintext callers have no peer identity. A server with a client CA
/// keeps its plaintext side in every mode, since its mode may change
/// ([`ServerTls::set_mode`]): the first byte is looked at while the mode in
/// force is PERMISSIVE (in the others every caller goes to TLS at once),
/// and a plaintext connection is refused at its next request once the mode
/// is not. Every request finds its
/// [`ConnectionInfo`] where [`ServerTls::actix_on_connect`] would put it. `settings` are
/// `HttpServer`'s HTTP settings ([`HttpSettings::from_limits`]; the default
/// is [`ServerLimits`]'s).
///
/// Plaintext is HTTP/1.1 or h2c with prior knowledge, as
/// `HttpServer::bind_auto_h2c` serves it, except that a caller's first byte
/// is waited for up to the `client_request_timeout` (the handshake timeout
/// with TLS): `bind_auto_h2c` waits for it without end.
///
/// The result is actix-server's builder: set workers, the shutdown timeout
/// or signal handling there, then `run()` it. Requests over TLS see the
/// `https` scheme in `HttpRequest::connection_info`, plaintext ones `http`.
/// The factory runs once per worker for TLS and once for plaintext: state
/// to share between them is made outside it, as with `HttpServer`. The
/// listen backlog is the listener's (`std`'s `bind` asks for 128;
/// `HttpServer::bind` for 1,024).
///
/// # Errors
/// When the listener's local address cannot be read or it cannot be made
/// non-blocking.
pub fn server<F, I, S, B>(
    listener: std::net::TcpListener,
    tls: impl Into<Option<ServerTls>>,
    settings: HttpSettings,
    factory: F,
) -> std::io::Result<ServerBuilder>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let tls: Option<ServerTls> = tls.into();
    let builder = ServerBuilder::default().max_concurrent_connections(settings.max_connections);
    let shutdown = builder.graceful_shutdown_signal();
    let addr = listener.local_addr()?;
    let host = settings.host.clone().unwrap_or_else(|| addr.to_string());
    // Plaintext is served without TLS, and with it while the mode in force
    // is PERMISSIVE: a server with a client CA may be put in that mode
    // later ([`ServerTls::set_mode`]), so it has the plaintext service too.
    // (PERMISSIVE needs a client CA, so such a server is one.)
    let with_plain = tls.as_ref().is_none_or(ServerTls::takes_client_certificates);
    // Before a plaintext caller's first byte: the handshake timeout where
    // it may be TLS, the request timeout where it is HTTP.
    let first_byte_timeout = if tls.is_some() {
        settings.handshake_timeout
    } else {
        settings.client_request_timeout
    };
    builder.listen(format!("palisade-{addr}"), listener, move || {
        let secure = tls.as_ref().map(|tls| {
            http(&shutdown, addr, &settings, Some(tls.clone()), None)
                .finish(app(&factory, true, &host, addr))
                .rustls_0_23_with_config(
                    tls.actix_config(),
                    TlsAcceptorConfig::default().handshake_timeout(settings.handshake_timeout),
                )
        });
        let plain = with_plain.then(|| {
            http(&shutdown, addr, &settings, None, tls.clone())
                .finish(app(&factory, false, &host, addr))
                .tcp_auto_h2c()
        });
        let shutdown = shutdown.clone();
        let mode = tls.clone();
        fn_factory(move || {
            let secure = secure.as_ref().map(|s| s.new_service(()));
            let plain = plain.as_ref().map(|p| p.new_service(()));
            let shutdown = shutdown.clone();
            let mode = mode.clone();
            async move {
                let secure = match secure {
                    Some(secure) => Some(Rc::new(secure.await?)),
                    None => None,
                };
                let plain = match plain {
                    Some(plain) => Some(Rc::new(plain.await?)),
                    None => None,
                };
                Ok::<_, ()>(FirstByte {
                    secure,
                    plain,
                    mode,
                    shutdown,
                    first_byte_timeout,
                    lifetime: PhantomData,
                })
            }
        })
    })
}

/// One worker's connection service: the first byte awaited where there is
/// plaintext and the mode is PERMISSIVE (telling TLS from plaintext), then the TLS or
/// the plaintext HTTP service. Its readiness is theirs, so a worker at
/// actix-tls's limit of concurrent handshakes stops accepting (connections
/// wait in the listen backlog), as under `HttpServer`.
///
/// (`'a` is how long the inner services' types live: actix-http's are
/// opaque, so not known to be `'static`.)
struct FirstByte<'a, T, P> {
    /// The TLS service, unless the listener is plaintext only.
    secure: Option<Rc<T>>,
    /// The plaintext service, without TLS and where the mode may be
    /// PERMISSIVE.
    plain: Option<Rc<P>>,
    /// The server whose mode in force says whether a plaintext caller is
    /// served (PERMISSIVE); `None` without TLS.
    mode: Option<ServerTls>,
    shutdown: GracefulShutdownSignal,
    first_byte_timeout: Duration,
    lifetime: PhantomData<&'a ()>,
}

impl<'a, T, P, TlsE, HttpE> Service<TcpStream> for FirstByte<'a, T, P>
where
    T: Service<TcpStream, Response = (), Error = TlsError<TlsE, HttpE>> + 'a,
    TlsE: std::error::Error + 'static,
    P: Service<TcpStream, Response = ()> + 'a,
{
    type Response = ();
    type Error = ();
    type Future = Pin<Box<dyn Future<Output = Result<(), ()>> + 'a>>;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let secure = self
            .secure
            .as_ref()
            .map_or(Poll::Ready(Ok(())), |s| s.poll_ready(cx).map_err(drop));
        let plain = self
            .plain
            .as_ref()
            .map_or(Poll::Ready(Ok(())), |p| p.poll_ready(cx).map_err(drop));
        match (secure, plain) {
            (Poll::Ready(Err(())), _) | (_, Poll::Ready(Err(()))) => Poll::Ready(Err(())),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }

    fn call(&self, tcp: TcpStream) -> Self::Future {
        let (secure, plain) = (self.secure.clone(), self.plain.clone());
        // The mode in force when the connection is accepted.
        let permissive = self.mode.as_ref().is_none_or(ServerTls::serves_plaintext);
        let shutdown = self.shutdown.clone();
        let first_byte_timeout = self.first_byte_timeout;
        Box::pin(async move {
            let remote = tcp.peer_addr().ok();
            // `Ok(Some(plain))`: a plaintext caller; `Ok(None)`: TLS.
            let plain = match plain {
                // Outside PERMISSIVE every caller goes to TLS, whatever its
                // first byte (plaintext fails the handshake as it would
                // without the plaintext service beside it): nothing to wait
                // for, so the handshake's timeout and actix-tls's cap on
                // concurrent handshakes hold from the start.
                Some(_) if secure.is_some() && !permissive => Ok(None),
                // A caller that sends nothing is let go after the timeout,
                // or at shutdown.
                Some(plain) => tokio::select! {
                    first = tokio::time::timeout(first_byte_timeout, starts_with_tls(&tcp)) => match first {
                        Ok(Ok(true)) if secure.is_some() => Ok(None),
                        Ok(Ok(_)) => Ok(Some(plain)),
                        Ok(Err(reason)) => Err(reason),
                        Err(_) => Err("no first byte in time"),
                    },
                    () = shutdown.notified() => Err("server shutting down"),
                },
                None => Ok(None),
            };
            let outcome = match (plain, secure) {
                (Ok(None), Some(secure)) => match secure.call(tcp).await {
                    Err(TlsError::Timeout) => Err("TLS handshake timed out"),
                    Err(TlsError::Tls(e)) => Err(handshake_failed(&e)),
                    Err(TlsError::Service(_)) => Err("HTTP connection error"),
                    Ok(()) => Ok(()),
                },
                (Ok(Some(plain)), _) => plain.call(tcp).await.map_err(|_| "HTTP connection error"),
                (Ok(None), None) => Err("no service"),
                (Err(reason), _) => Err(reason),
            };
            if let Err(reason) = outcome {
                tracing::debug!(target: LOG_TARGET, ?remote, reason, "connection closed");
            }
            Ok(())
        })
    }
}

/// actix-http's service builder with what `HttpServer` sets on it.
fn http<T: 'static, S>(
    shutdown: &GracefulShutdownSignal,
    addr: SocketAddr,
    settings: &HttpSettings,
    tls: Option<ServerTls>,
    plaintext_of: Option<ServerTls>,
) -> HttpServiceBuilder<T, S>
where
    S: ServiceFactory<Request, Config = ()>,
    S::Error: Into<Response<actix_http::body::BoxBody>> + 'static,
    S::InitError: fmt::Debug,
    <S::Service as Service<Request>>::Future: 'static,
{
    let shutdown = shutdown.clone();
    HttpServiceBuilder::default()
        .graceful_shutdown_signal(move || {
            let shutdown = shutdown.clone();
            async move { shutdown.notified().await }
        })
        .keep_alive(settings.keep_alive)
        .client_request_timeout(settings.client_request_timeout)
        .client_disconnect_timeout(settings.client_disconnect_timeout)
        .local_addr(addr)
        .on_connect_ext(move |io: &T, data: &mut Extensions| {
            connected(io, data, tls.as_ref(), plaintext_of.as_ref())
        })
}

/// The application for one listener flavour: `secure` and `host` are what
/// `connection_info()` falls back to for the scheme and host.
fn app<F, I, S, B>(
    factory: &F,
    secure: bool,
    host: &str,
    addr: SocketAddr,
) -> impl ServiceFactory<
    Request,
    Config = (),
    Response = S::Response,
    Error = Response<actix_http::body::BoxBody>,
    InitError = S::InitError,
> + use<F, I, S, B>
where
    F: Fn() -> I,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::Response: Into<Response<B>> + 'static,
{
    let app = factory()
        .into_factory()
        .map_err(|err| err.into().error_response().into());
    let host = host.to_owned();
    // actix-web builds this value for its own listeners with a crate-private
    // constructor; `__priv_test_new` is the public one actix-test uses (kept
    // for it, "semver exempt"). The scheme test in this crate's tests notices
    // if its meaning changes; a removal fails the build.
    map_config(app, move |()| {
        AppConfig::__priv_test_new(secure, host.clone(), addr)
    })
}

impl ServerTls {
    /// The `on_connect` callback of an `HttpServer` listening with
    /// [`actix_config`](Self::actix_config): the connection's
    /// [`ConnectionInfo`] (addresses, SNI, and for a client certificate
    /// the verified peer identity, parsed once) in the connection data,
    /// where Palisade's middleware finds it, with the check of the peer at
    /// every request against this server's material (a CRL reloaded since
    /// the handshake refuses the connection's later requests, as does the
    /// certificate's expiry). Plaintext connections get what
    /// `palisade_actix::on_connect` records. An `HttpServer` has one
    /// `on_connect` for all its listeners: give each `ServerTls` its own
    /// `HttpServer` (or [`server`]), or its peers are checked against the
    /// other's material.
    pub fn actix_on_connect(&self) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync + 'static {
        let tls = self.clone();
        move |conn, data| connected(conn, data, Some(&tls), None)
    }

    /// The rustls configuration by value, as `HttpServer::bind_rustls_0_23`
    /// takes it; it shares this server's rotating material. Its ALPN list is
    /// empty: actix-http offers `h2` (with its `http2` feature, which
    /// Palisade turns on) and `http/1.1` itself.
    #[must_use]
    pub fn actix_config(&self) -> rustls::ServerConfig {
        let mut config = (*self.server_config()).clone();
        // actix-http offers its own protocols (h2 and http/1.1) first.
        config.alpn_protocols.clear();
        config
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::path::PathBuf;

    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use actix_web::{App, HttpRequest, web};
    use palisade_testkit::TestPki;

    use super::*;
    use crate::ClientTls;
    use crate::server::MtlsMode;

    /// What a handler sees of its connection: scheme and peer principal.
    async fn seen(req: HttpRequest) -> String {
        let peer = req
            .conn_data::<ConnectionInfo>()
            .and_then(|c| c.peer.as_ref()?.peer()?.spiffe_id.clone())
            .unwrap_or_else(|| "-".to_owned());
        format!("{} {peer}", req.connection_info().scheme())
    }

    /// A PERMISSIVE server (one worker) for `seen`, and an mTLS client for
    /// it; the files are removed on drop.
    struct Fixture {
        dir: PathBuf,
        port: u16,
        tls: ServerTls,
        handle: actix_web::dev::ServerHandle,
        mtls: reqwest::Client,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Fixture {
        fn start(name: &str, settings: HttpSettings) -> Fixture {
            let dir = std::env::temp_dir().join(format!("palisade-mtls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let pki = TestPki::new();
            let ca = dir.join("ca.pem");
            std::fs::write(&ca, pki.ca_pem()).unwrap();
            let (cert, key) = pki.server(&["localhost"]).write_to(&dir, "server").unwrap();
            let (client_cert, client_key) = pki
                .workload("default", "productpage")
                .write_to(&dir, "productpage")
                .unwrap();
            let tls = ServerTls::builder(&cert, &key)
                .client_ca(&ca)
                .mode(MtlsMode::Permissive)
                .build()
                .unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let app = || {
                App::new().route("/", web::get().to(seen)).route(
                    "/host",
                    web::get().to(|req: HttpRequest| async move { req.connection_info().host().to_owned() }),
                )
            };
            let server = server(listener, tls.clone(), settings, app)
                .unwrap()
                .workers(1)
                .disable_signals()
                .run();
            let handle = server.handle();
            actix_web::rt::spawn(server);
            let client = ClientTls::builder(&client_cert, &client_key, &ca)
                .build()
                .unwrap();
            let mtls = reqwest::Client::builder()
                .use_preconfigured_tls((*client.client_config()).clone())
                .build()
                .unwrap();
            Fixture {
                dir,
                port,
                tls,
                handle,
                mtls,
            }
        }

        /// A plaintext caller is served without a peer, an mTLS one as
        /// its workload.
        async fn serves_plaintext_and_mtls(&self) {
            let plain = reqwest::get(format!("http://127.0.0.1:{}/", self.port))
                .await
                .unwrap();
            assert_eq!(plain.text().await.unwrap(), "http -");
            assert_eq!(
                self.mtls_get().await.unwrap(),
                "https spiffe://cluster.local/ns/default/sa/productpage"
            );
        }

        async fn mtls_get(&self) -> reqwest::Result<String> {
            let url = format!("https://localhost:{}/", self.port);
            self.mtls.get(url).send().await?.text().await
        }
    }

    #[actix_web::test]
    async fn permissive_listener_serves_plaintext_and_mtls_on_one_port_from_one_app() {
        let f = Fixture::start("permissive", HttpSettings::default());
        f.serves_plaintext_and_mtls().await;
        f.handle.stop(true).await;
    }

    /// A plain listener beside a STRICT server's `actix_on_connect` (one
    /// `HttpServer`, a health port) is no plaintext side of it: its
    /// connections carry no check of the mode, which would refuse them;
    /// [`server`]'s plaintext side does.
    #[actix_web::test]
    async fn only_the_plaintext_side_of_a_tls_listener_is_checked_against_the_mode() {
        let dir = std::env::temp_dir().join(format!("palisade-mtls-plain-beside-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = TestPki::new();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let (cert, key) = pki.server(&["localhost"]).write_to(&dir, "server").unwrap();
        let tls = ServerTls::builder(&cert, &key).client_ca(&ca).build().unwrap();
        let checked = |req: HttpRequest| async move {
            let info = req.conn_data::<ConnectionInfo>();
            format!("{}", info.is_some_and(|c| c.peer_recheck.is_some()))
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let beside = actix_web::HttpServer::new(move || App::new().route("/", web::get().to(checked)))
            .workers(1)
            .disable_signals()
            .on_connect(tls.actix_on_connect())
            .listen(listener)
            .unwrap()
            .run();
        let handle = beside.handle();
        actix_web::rt::spawn(beside);
        let beside = reqwest::get(format!("http://127.0.0.1:{port}/")).await.unwrap();
        assert_eq!(beside.text().await.unwrap(), "false");
        handle.stop(true).await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        tls.set_mode(MtlsMode::Permissive).unwrap();
        let own = server(listener, tls, HttpSettings::default(), move || {
            App::new().route("/", web::get().to(checked))
        })
        .unwrap()
        .workers(1)
        .disable_signals()
        .run();
        let handle = own.handle();
        actix_web::rt::spawn(own);
        let side = reqwest::get(format!("http://127.0.0.1:{port}/")).await.unwrap();
        assert_eq!(side.text().await.unwrap(), "true");
        handle.stop(true).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Callers stalled in their handshakes hold actix-tls's handshake slots;
    /// the others wait to be accepted and are served once a slot frees, none
    /// left behind (the worker stops accepting instead of parking
    /// connections on a limit that wakes one waiter).
    #[actix_web::test]
    async fn callers_beyond_the_handshake_limit_wait_and_are_served() {
        actix_tls::accept::max_concurrent_tls_connect(1);
        let f = Fixture::start("limit", HttpSettings::default());
        let stall = || {
            let mut tcp = std::net::TcpStream::connect(("127.0.0.1", f.port)).unwrap();
            // A handshake record's first byte, and nothing more.
            tcp.write_all(&[0x16]).unwrap();
            tcp
        };
        let first = stall();
        // A second between the callers, so that even a loaded machine has
        // them in this order.
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        let waiting = {
            let url = format!("https://localhost:{}/", f.port);
            let mtls = f.mtls.clone();
            actix_web::rt::spawn(async move { mtls.get(url).send().await?.text().await })
        };
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        let _second = stall();
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        // The first stalled caller leaves: its slot goes to the next in line.
        drop(first);
        let served = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting caller was left behind")
            .unwrap()
            .unwrap();
        assert_eq!(served, "https spiffe://cluster.local/ns/default/sa/productpage");
        f.handle.stop(false).await;
    }

    /// Outside PERMISSIVE a caller is handed to TLS at once, its first
    /// byte not awaited: one that sends a byte just before the handshake
    /// timeout and then nothing is let go after that timeout, not after
    /// the first byte's wait and a whole handshake timeout more.
    #[actix_web::test]
    async fn outside_permissive_a_slow_caller_has_one_handshake_timeout() {
        let timeout = Duration::from_secs(4);
        let f = Fixture::start("strict-slow", HttpSettings::default().handshake_timeout(timeout));
        f.tls.set_mode(MtlsMode::Strict).unwrap();
        let started = std::time::Instant::now();
        let mut tcp = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
        actix_web::rt::time::sleep(Duration::from_secs(2)).await;
        // A handshake record's first byte, and nothing more.
        tcp.write_all(&[0x16]).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "never closed");
        let waited = started.elapsed();
        // Closed by the handshake's timeout (4 s after the connection),
        // not 6 s (2 s to the first byte, then 4 s of handshake).
        assert!(
            waited >= timeout - Duration::from_millis(500) && waited < Duration::from_millis(5300),
            "closed after {waited:?}"
        );
        f.handle.stop(false).await;
    }

    #[actix_web::test]
    async fn http_settings_reach_the_tls_and_the_plaintext_service() {
        let settings = HttpSettings::default()
            .keep_alive(KeepAlive::Disabled)
            .host("reviews.example:9081");
        let f = Fixture::start("settings", settings);
        // HTTP/1.0 without a Host header: the configured host stands in.
        // (Async IO: the server starts on this thread's runtime.)
        let mut tcp = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
        tcp.write_all(b"GET /host HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        let read = tcp.read_to_string(&mut answer);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the server did not close the connection")
            .unwrap();
        assert!(answer.ends_with("reviews.example:9081"), "{answer}");
        // Over mutual TLS: no keep-alive.
        let url = format!("https://localhost:{}/", f.port);
        let res = f.mtls.get(url).send().await.unwrap();
        assert_eq!(res.headers()["connection"], "close");
        f.handle.stop(true).await;
    }

    /// At the limit of connections (from the limits, as `with_limits`
    /// gives an `HttpServer`), a new connection waits in the backlog until
    /// one closes, then is served.
    #[actix_web::test]
    async fn at_the_connection_limit_new_connections_wait_for_one_to_close() {
        let settings = HttpSettings::from_limits(&ServerLimits::default().max_connections(1));
        let f = Fixture::start("connection-limit", settings);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], f.port));
        let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        palisade_testkit::past_the_connection_limit_a_connection_waits(addr, vec![idle], "/host").await;
        f.handle.stop(false).await;
    }

    /// Timeouts of `Duration::MAX` ("no limit") serve requests, over TLS
    /// and in plaintext, as ten years: actix-http adds them to the current
    /// instant.
    #[actix_web::test]
    async fn timeouts_without_a_limit_serve_requests() {
        let settings = HttpSettings::default()
            .keep_alive(Duration::MAX)
            .client_request_timeout(Duration::MAX)
            .client_disconnect_timeout(Duration::MAX)
            .handshake_timeout(Duration::MAX);
        let f = Fixture::start("unlimited", settings);
        f.serves_plaintext_and_mtls().await;
        f.handle.stop(false).await;
    }
}
