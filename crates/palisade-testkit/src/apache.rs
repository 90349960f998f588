//! Apache httpd as a reference server on loopback, for tests and benchmarks:
//! `apache2 -X` (one process, in the foreground, serving one connection at a
//! time) with a generated minimal configuration in a temporary directory.
//! The process is killed and the directory removed on drop.
//!
//! - [`ApacheGssapi`]: mod_auth_gssapi, the reference `Negotiate` server,
//!   accepting with a copy of a [`KerberosRealm`](crate::KerberosRealm)
//!   keytab.
//! - [`ApacheOpenidc`]: mod_auth_openidc, the reference OpenID Connect
//!   relying party (browser sign-in: authorization code with PKCE, session
//!   cookie, logout), signing in at any provider named by its discovery URL.
//!
//! ```no_run
//! use palisade_testkit::{ApacheGssapi, KerberosRealm};
//! let realm = KerberosRealm::start()?;
//! let keytab = realm.add_service("HTTP/localhost")?;
//! let apache = ApacheGssapi::start(&keytab, &realm.server_env(&keytab))?;
//! let url = format!("http://127.0.0.1:{}/whoami", apache.port());
//! // A request with alice's Negotiate token gets `ok` and the header
//! // `X-Remote-User: alice@EXAMPLE.TEST`; without one, a 401.
//! # let _ = url;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # mod_auth_gssapi
//!
//! Every path under `/` needs `Negotiate` (`AuthType GSSAPI`, Kerberos only,
//! no Basic fallback, `Require valid-user`); `/whoami` is a static file
//! (`ok`), and a successful response carries the authenticated principal in
//! `X-Remote-User`. The modules loaded are mpm_prefork, authn_core,
//! authz_core, authz_user, headers and auth_gssapi.
//!
//! Apache refuses to serve as root: when the caller is root, the worker runs
//! as `www-data` (`nobody` when there is none), and [`ApacheGssapi`] gives
//! that user the keytab copy and the realm's replay cache directory
//! (`KRB5RCACHEDIR`, chowned) and lets it read the realm's `krb5.conf`
//! (`KRB5_CONFIG`, made world-readable along with its directory's search
//! bit). MIT names the replay cache file after the effective uid, so a
//! server running as root in the same realm keeps its own file.
//!
//! Needs Debian's `apache2` and `libapache2-mod-auth-gssapi`: when the
//! server or a module is missing, [`ApacheGssapiBuilder::start`] fails with
//! a line saying what to install.
//!
//! # mod_auth_openidc
//!
//! See [`ApacheOpenidc`] for the paths it serves and how they map to
//! mod_auth_openidc's. Needs Debian's `apache2` and
//! `libapache2-mod-auth-openidc` (2.4.12 in Debian 12); as root, the worker
//! runs as `www-data` as above.

use std::fmt::{self, Display};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Apache httpd binary (Debian's `apache2`).
const APACHE: &str = "/usr/sbin/apache2";
/// Where Debian installs Apache's modules.
const MODULES: &str = "/usr/lib/apache2/modules";
/// The modules the mod_auth_gssapi configuration loads, as `(name, file in
/// MODULES)` (`log_config` is built into Debian's `apache2`).
const APACHE_MODULES: [(&str, &str); 6] = [
    ("mpm_prefork_module", "mod_mpm_prefork.so"),
    ("authn_core_module", "mod_authn_core.so"),
    ("authz_core_module", "mod_authz_core.so"),
    // `Require valid-user`
    ("authz_user_module", "mod_authz_user.so"),
    ("headers_module", "mod_headers.so"),
    ("auth_gssapi_module", "mod_auth_gssapi.so"),
];
/// What to install when a mod_auth_gssapi server's file is missing.
const GSSAPI_PACKAGES: &str = "apt-get install apache2 libapache2-mod-auth-gssapi";

/// The modules the mod_auth_openidc configuration loads, as `(name, file in
/// MODULES)`.
const OPENIDC_MODULES: [(&str, &str); 7] = [
    ("mpm_prefork_module", "mod_mpm_prefork.so"),
    ("authn_core_module", "mod_authn_core.so"),
    ("authz_core_module", "mod_authz_core.so"),
    // `Require valid-user`
    ("authz_user_module", "mod_authz_user.so"),
    ("headers_module", "mod_headers.so"),
    // `Alias` for the pages, `RedirectMatch` for `/logout`
    ("alias_module", "mod_alias.so"),
    ("auth_openidc_module", "mod_auth_openidc.so"),
];
/// What to install when a mod_auth_openidc server's file is missing.
const OPENIDC_PACKAGES: &str = "install it with `sudo apt-get install apache2 libapache2-mod-auth-openidc`";
/// The redirect URI's path (`OIDCRedirectURI`), which mod_auth_openidc
/// serves itself: the callback, `?logout=`, `?logout=backchannel`,
/// `?iss=&target_link_uri=`.
const CALLBACK_PATH: &str = "/oauth2/callback";
/// A public page, where logout ends.
const LOGGED_OUT_PATH: &str = "/loggedout";

/// How long Apache may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Apache httpd with mod_auth_gssapi; see the module docs.
#[derive(Debug)]
pub struct ApacheGssapi {
    server: Server,
}

/// Configures an [`ApacheGssapi`]. The defaults suit behaviour tests: an
/// access log, `LogLevel info auth_gssapi:debug`, Apache's default
/// keep-alive limits.
#[derive(Clone, Debug)]
#[must_use]
pub struct ApacheGssapiBuilder {
    access_log: bool,
    log_level: String,
    unlimited_keep_alive: bool,
}

impl ApacheGssapiBuilder {
    /// Whether to log each request to `access.log` in [`ApacheGssapi::dir`]
    /// as `client user "request line" status` (default on). Off for load
    /// tests: Palisade logs nothing per request either.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// The `LogLevel` directive (default `info auth_gssapi:debug`, which
    /// logs why mod_auth_gssapi refused a token); `warn` for load tests.
    pub fn log_level(mut self, level: &str) -> Self {
        level.clone_into(&mut self.log_level);
        self
    }

    /// Any number of requests per kept-alive connection
    /// (`MaxKeepAliveRequests 0`, `KeepAliveTimeout 300`), for load tests
    /// that send every request on one connection. By default Apache closes a
    /// connection after 100 requests or 5 s idle.
    pub fn unlimited_keep_alive(mut self) -> Self {
        self.unlimited_keep_alive = true;
        self
    }

    /// Starts Apache on a free port on 127.0.0.1, accepting with a copy of
    /// `keytab`.
    ///
    /// `env` is the server environment, as
    /// [`KerberosRealm::server_env`](crate::KerberosRealm::server_env) gives
    /// it. Apache's environment is `env` (`KRB5_CONFIG`, `KRB5RCACHEDIR`,
    /// …) and nothing of the caller's: a fixed `PATH`, and `KRB5_KTNAME`
    /// naming the keytab copy. As root, `env` must hold `KRB5_CONFIG` and
    /// `KRB5RCACHEDIR` (see the module docs).
    ///
    /// # Errors
    /// When `apache2` or a module is missing (the message says which
    /// packages to install), when the keytab cannot be copied or a file
    /// written, or when Apache exits or does not listen within 30 s (the
    /// message holds its error log).
    pub fn start(&self, keytab: &Path, env: &[(String, String)]) -> io::Result<ApacheGssapi> {
        ApacheGssapi::check_installed()?;
        let server = Server::launch(|dir| self.prepare(dir, keytab, env))?;
        Ok(ApacheGssapi { server })
    }

    /// Fills `dir`: the page, the keytab copy and `httpd.conf`; returns the
    /// port and Apache's environment.
    fn prepare(&self, dir: &Path, keytab: &Path, env: &[(String, String)]) -> io::Result<Prepared> {
        make_dirs(dir)?;
        // The resource: a static file; the authenticated user comes back in
        // a response header (mod_headers evaluates REMOTE_USER, which
        // mod_auth_gssapi sets to the client principal).
        write_file(&dir.join("htdocs/whoami"), "ok\n", 0o644)?;
        let kt = dir.join("http.keytab");
        std::fs::copy(keytab, &kt)
            .context(|| format!("cannot copy the keytab {} to {}", keytab.display(), kt.display()))?;
        set_mode(&kt, 0o400)?;

        let worker = worker_ids();
        if let Some((uid, gid)) = worker {
            give_to_worker(&kt, env, uid, gid)?;
        }
        let port = crate::free_port()?;
        write_file(
            &dir.join("httpd.conf"),
            &self.config(dir, port, &kt, &user_lines(worker)),
            0o644,
        )?;
        let mut env: Vec<(String, String)> =
            env.iter().filter(|(k, _)| k != "KRB5_KTNAME").cloned().collect();
        env.push(("KRB5_KTNAME".to_owned(), format!("FILE:{}", kt.display())));
        Ok(Prepared {
            port,
            env,
            workers: false,
        })
    }

    /// The `httpd.conf` for a server in `dir` on `port`, accepting with
    /// `keytab`; `user` is the `User`/`Group` lines (empty unless root).
    fn config(&self, dir: &Path, port: u16, keytab: &Path, user: &str) -> String {
        let d = dir.display();
        let access_log = if self.access_log {
            format!("LogFormat \"%h %u \\\"%r\\\" %>s\" brief\nCustomLog \"{d}/access.log\" brief\n")
        } else {
            String::new()
        };
        let keep_alive = if self.unlimited_keep_alive {
            "KeepAlive On\nMaxKeepAliveRequests 0\nKeepAliveTimeout 300\n"
        } else {
            ""
        };
        format!(
            r#"{preamble}{access_log}{keep_alive}Listen 127.0.0.1:{port}
{modules}{user}DocumentRoot "{d}/htdocs"
<Location />
    AuthType GSSAPI
    AuthName "GSSAPI"
    GssapiCredStore keytab:{kt}
    GssapiAllowedMech krb5
    GssapiBasicAuth Off
    Require valid-user
    Header set X-Remote-User "expr=%{{REMOTE_USER}}"
</Location>
"#,
            preamble = preamble(dir, &self.log_level),
            modules = load_modules(&APACHE_MODULES),
            kt = keytab.display(),
        )
    }
}

impl ApacheGssapi {
    /// A builder, to leave out the access log or change the log level or
    /// keep-alive limits.
    pub fn builder() -> ApacheGssapiBuilder {
        ApacheGssapiBuilder {
            access_log: true,
            log_level: "info auth_gssapi:debug".to_owned(),
            unlimited_keep_alive: false,
        }
    }

    /// Starts Apache with the defaults; see [`ApacheGssapiBuilder::start`].
    ///
    /// # Errors
    /// As [`ApacheGssapiBuilder::start`].
    pub fn start(keytab: &Path, env: &[(String, String)]) -> io::Result<ApacheGssapi> {
        Self::builder().start(keytab, env)
    }

    /// Checks that `apache2` and every module the configuration loads are
    /// installed, so that a test can fail before it starts anything else.
    ///
    /// # Errors
    /// `NotFound`, with one line naming the missing file and the packages to
    /// install.
    pub fn check_installed() -> io::Result<()> {
        check_installed_in(
            Path::new(APACHE),
            Path::new(MODULES),
            &APACHE_MODULES,
            GSSAPI_PACKAGES,
        )
    }

    /// The port Apache listens on, on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The server's directory: `httpd.conf`, `error.log`, `access.log`
    /// (when kept), `stderr.log`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.server.dir
    }

    /// What Apache wrote to stderr (configuration errors) and its error log,
    /// for assertion messages; empty when it wrote nothing.
    #[must_use]
    pub fn error_log(&self) -> String {
        self.server.log()
    }
}

/// A running Apache httpd with mod_auth_openidc, the reference OpenID
/// Connect relying party, on a free port on 127.0.0.1.
///
/// ```no_run
/// use palisade_testkit::apache::ApacheOpenidc;
/// let apache = ApacheOpenidc::builder(
///     "http://127.0.0.1:4000/.well-known/openid-configuration",
///     "palisade-browser",
/// )
/// .client_secret("palisade-browser-secret")
/// .scopes("openid")
/// .start()?;
/// // Register `apache.redirect_uri()` (and `apache.logged_out_url()` as a
/// // post-logout redirect URI) for the client at the provider, then browse
/// // to `apache.url() + "/productpage"`.
/// assert!(apache.redirect_uri().ends_with("/oauth2/callback"));
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # What it serves
///
/// | path | what | mod_auth_openidc |
/// |---|---|---|
/// | `/productpage` | an HTML page | `AuthType openid-connect`, `Require valid-user`: without a session, a browser is redirected to the provider (an XHR-looking request, by the module's own test of `Accept`, `Sec-Fetch-*` and `X-Requested-With`, gets 401) |
/// | `/whoami` | `ok` (text) | the same |
/// | `/api/…` | `{"ok":true}` (any path under `/api/`) | the same with `OIDCUnAuthAction 401`: 401 without a session, never a redirect |
/// | `/oauth2/callback` | [`redirect_uri`](Self::redirect_uri) | `OIDCRedirectURI`: the authorization response; with `?logout=<url>` a logout; `POST ?logout=backchannel` back-channel logout; `?iss=&target_link_uri=` a third-party-initiated login |
/// | `/logout` | a 302 to `/oauth2/callback?logout=<`[`logged_out_url`](Self::logged_out_url)`>` | mod_auth_openidc has no logout path of its own: its logout is the redirect URI with `logout=` and the URL to end on; it removes the session, then redirects to the provider's `end_session_endpoint` (when the discovery document has one) with `id_token_hint` and `post_logout_redirect_uri`, else straight to the URL |
/// | `/loggedout` | an HTML page, no sign-in | where logout ends |
///
/// A successful response from a protected path carries the user
/// (`REMOTE_USER`, mod_auth_openidc's default `sub@` plus the issuer) in
/// the header `X-Remote-User`. Everything else is a 404.
///
/// The rest is mod_auth_openidc's default: `OIDCSessionType server-cache`
/// (the cookie `mod_auth_openidc_session` holds a session id; the session
/// sits in Apache's shared memory cache, so back-channel logout, which
/// 2.4.12 supports at the redirect URI, can find and remove it; register
/// [`backchannel_logout_uri`](Self::backchannel_logout_uri) at the
/// provider), state cookies `mod_auth_openidc_state_<state>`,
/// `OIDCPKCEMethod S256`, a random `OIDCCryptoPassphrase`, and
/// `OIDCRedirectURLsAllowed` set to this server's origin, so that logout
/// and `target_link_uri` URLs may only point back here (the module's own
/// default accepts any URL on the same host name, whatever the port).
/// The token endpoint authentication is `client_secret_basic` with a
/// [`client_secret`](ApacheOpenidcBuilder::client_secret), `none` (a public
/// client) without.
#[derive(Debug)]
pub struct ApacheOpenidc {
    server: Server,
}

/// Configures an [`ApacheOpenidc`]: the provider, the client and the
/// scopes. Its `Debug` shows whether a client secret is set, never the
/// secret.
#[derive(Clone)]
#[must_use]
pub struct ApacheOpenidcBuilder {
    metadata_url: String,
    client_id: String,
    client_secret: Option<String>,
    scopes: String,
    ca_file: Option<PathBuf>,
    log_level: String,
    /// `Some(n)`: prefork with `n` processes, keep-alive, no access log.
    workers: Option<usize>,
}

impl fmt::Debug for ApacheOpenidcBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApacheOpenidcBuilder")
            .field("metadata_url", &self.metadata_url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("scopes", &self.scopes)
            .field("ca_file", &self.ca_file)
            .field("log_level", &self.log_level)
            .field("workers", &self.workers)
            .finish()
    }
}

impl ApacheOpenidcBuilder {
    /// The client secret (`OIDCClientSecret`), sent with
    /// `client_secret_basic`. Without one the client is public: no
    /// `OIDCClientSecret` and token endpoint authentication `none`.
    pub fn client_secret(mut self, secret: &str) -> Self {
        self.client_secret = Some(secret.to_owned());
        self
    }

    /// The scopes to ask for (`OIDCScope`), space-separated (default
    /// `openid`).
    pub fn scopes(mut self, scopes: &str) -> Self {
        scopes.clone_into(&mut self.scopes);
        self
    }

    /// The CA certificates (PEM) to trust for an HTTPS provider
    /// (`OIDCCABundlePath`, on a copy in the server's directory); by
    /// default, the system's. The provider's certificate is always checked
    /// (`OIDCSSLValidateServer On`, the module's default).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The `LogLevel` directive (default `info auth_openidc:debug`, which
    /// logs each step of a sign-in and why one failed; the debug lines hold
    /// codes, tokens and session ids, never the client secret or the
    /// passphrase).
    pub fn log_level(mut self, level: &str) -> Self {
        level.clone_into(&mut self.log_level);
        self
    }

    /// Serves as a tuned production server would, for throughput
    /// comparisons: `workers` prefork processes (`StartServers`,
    /// `MaxRequestWorkers` and the spare counts all `workers`, started up
    /// front) under `apache2 -DFOREGROUND` instead of `-X`, HTTP keep-alive
    /// on, and no `access.log` in [`ApacheOpenidc::dir`] (Palisade logs nothing
    /// per request either).
    /// Set [`log_level`](Self::log_level) to `warn` too: the default logs
    /// every request. Stopped with `SIGTERM` on drop, so the parent takes
    /// its workers down.
    pub fn concurrent(mut self, workers: usize) -> Self {
        self.workers = Some(workers.max(1));
        self
    }

    /// Starts Apache on a free port on 127.0.0.1.
    ///
    /// mod_auth_openidc reads the discovery document on the first request
    /// that needs it, not at start: the provider may start afterwards, for
    /// instance once it knows [`ApacheOpenidc::redirect_uri`].
    ///
    /// # Errors
    /// `InvalidInput` when the metadata URL is not `http(s)://…` or a value
    /// is empty or holds a quote, a backslash or a control character (it
    /// would not survive `httpd.conf`); `NotFound` when `apache2` or a
    /// module is missing (the message says what to install); when the CA
    /// file cannot be copied or a file written, or when Apache exits or does
    /// not listen within 30 s (the message holds its error log).
    pub fn start(&self) -> io::Result<ApacheOpenidc> {
        self.validate()?;
        ApacheOpenidc::check_installed()?;
        let server = Server::launch(|dir| self.prepare(dir))?;
        Ok(ApacheOpenidc { server })
    }

    fn validate(&self) -> io::Result<()> {
        let invalid = |what: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ApacheOpenidc: {what}"),
            ))
        };
        if !(self.metadata_url.starts_with("http://") || self.metadata_url.starts_with("https://")) {
            return invalid("the provider metadata URL must be http:// or https://");
        }
        let values = [
            ("the provider metadata URL", Some(self.metadata_url.as_str())),
            ("the client id", Some(self.client_id.as_str())),
            ("the client secret", self.client_secret.as_deref()),
            ("the scopes", Some(self.scopes.as_str())),
            ("the log level", Some(self.log_level.as_str())),
        ];
        for (what, value) in values {
            if let Some(v) = value
                && !conf_safe(v)
            {
                return invalid(&format!(
                    "{what} is empty or holds a quote, a backslash or a control character"
                ));
            }
        }
        Ok(())
    }

    /// Fills `dir`: the pages, the CA copy and `httpd.conf`; returns the
    /// port and Apache's environment.
    fn prepare(&self, dir: &Path) -> io::Result<Prepared> {
        make_dirs(dir)?;
        let htdocs = dir.join("htdocs");
        write_file(
            &htdocs.join("productpage.html"),
            "<!doctype html>\n<title>Product page</title>\n<p>productpage</p>\n",
            0o644,
        )?;
        write_file(&htdocs.join("whoami.txt"), "ok\n", 0o644)?;
        write_file(&htdocs.join("api.json"), "{\"ok\":true}\n", 0o644)?;
        write_file(
            &htdocs.join("loggedout.html"),
            "<!doctype html>\n<title>Signed out</title>\n<p>signed out</p>\n",
            0o644,
        )?;
        let ca = match &self.ca_file {
            Some(src) => {
                let ca = dir.join("ca.pem");
                std::fs::copy(src, &ca)
                    .context(|| format!("cannot copy the CA file {} to {}", src.display(), ca.display()))?;
                set_mode(&ca, 0o644)?;
                Some(ca)
            }
            None => None,
        };
        let port = crate::free_port()?;
        let passphrase = crate::random_hex(32);
        // The configuration holds the client secret and the passphrase: only
        // the parent (root, or the caller) reads it.
        write_file(
            &dir.join("httpd.conf"),
            &self.config(dir, port, &passphrase, ca.as_deref(), &user_lines(worker_ids())),
            0o600,
        )?;
        Ok(Prepared {
            port,
            env: Vec::new(),
            workers: self.workers.is_some(),
        })
    }

    /// The `httpd.conf` for a server in `dir` on `port`; `user` is the
    /// `User`/`Group` lines (empty unless root).
    fn config(&self, dir: &Path, port: u16, passphrase: &str, ca: Option<&Path>, user: &str) -> String {
        let d = dir.display();
        let origin = format!("http://127.0.0.1:{port}");
        let secret = match &self.client_secret {
            Some(s) => {
                format!("OIDCClientSecret \"{s}\"\nOIDCProviderTokenEndpointAuth client_secret_basic\n")
            }
            None => "OIDCProviderTokenEndpointAuth none\n".to_owned(),
        };
        let ca = ca.map_or_else(String::new, |p| format!("OIDCCABundlePath \"{}\"\n", p.display()));
        let logout = format!(
            "{origin}{CALLBACK_PATH}?logout={}",
            percent_encode(&format!("{origin}{LOGGED_OUT_PATH}"))
        );
        let protect = "    AuthType openid-connect\n    Require valid-user\n    Header set X-Remote-User \"expr=%{REMOTE_USER}\"\n";
        let serving = match self.workers {
            None => format!("CustomLog \"{d}/access.log\" brief\nKeepAlive Off\n"),
            Some(n) => format!(
                "KeepAlive On\nMaxKeepAliveRequests 0\nStartServers {n}\nMinSpareServers {n}\nMaxSpareServers {n}\nServerLimit {n}\nMaxRequestWorkers {n}\n"
            ),
        };
        format!(
            r#"{preamble}LogFormat "%h %u \"%r\" %>s" brief
{serving}Listen 127.0.0.1:{port}
{modules}{user}DocumentRoot "{d}/htdocs"

OIDCProviderMetadataURL "{metadata}"
{ca}OIDCClientID "{client_id}"
{secret}OIDCScope "{scopes}"
OIDCRedirectURI {origin}{CALLBACK_PATH}
OIDCCryptoPassphrase "{passphrase}"
OIDCPKCEMethod S256
OIDCSessionType server-cache
OIDCRedirectURLsAllowed ^{origin_re}/

Alias /productpage "{d}/htdocs/productpage.html"
Alias /whoami "{d}/htdocs/whoami.txt"
AliasMatch ^/api/ "{d}/htdocs/api.json"
Alias {LOGGED_OUT_PATH} "{d}/htdocs/loggedout.html"
RedirectMatch 302 ^/logout$ "{logout}"

<Location {CALLBACK_PATH}>
    AuthType openid-connect
    Require valid-user
</Location>
<Location /productpage>
{protect}    ForceType text/html
</Location>
<Location /whoami>
{protect}    ForceType text/plain
</Location>
<Location /api/>
{protect}    OIDCUnAuthAction 401
    ForceType application/json
</Location>
<Location {LOGGED_OUT_PATH}>
    ForceType text/html
</Location>
"#,
            preamble = preamble(dir, &self.log_level),
            modules = load_modules(&OPENIDC_MODULES),
            metadata = self.metadata_url,
            client_id = self.client_id,
            scopes = self.scopes,
            origin_re = origin.replace('.', "\\."),
        )
    }
}

impl ApacheOpenidc {
    /// A builder for a client `client_id` of the provider whose discovery
    /// document is at `provider_metadata_url` (the issuer's
    /// `/.well-known/openid-configuration`).
    pub fn builder(provider_metadata_url: &str, client_id: &str) -> ApacheOpenidcBuilder {
        ApacheOpenidcBuilder {
            metadata_url: provider_metadata_url.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: None,
            scopes: "openid".to_owned(),
            ca_file: None,
            log_level: "info auth_openidc:debug".to_owned(),
            workers: None,
        }
    }

    /// Checks that `apache2` and every module the configuration loads are
    /// installed, so that a test can fail before it starts anything else.
    ///
    /// # Errors
    /// `NotFound`, with one line naming the missing file and the packages to
    /// install.
    pub fn check_installed() -> io::Result<()> {
        check_installed_in(
            Path::new(APACHE),
            Path::new(MODULES),
            &OPENIDC_MODULES,
            OPENIDC_PACKAGES,
        )
    }

    /// The port Apache listens on, on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The server's origin, `http://127.0.0.1:PORT` (no trailing slash).
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    /// The redirect URI to register at the provider,
    /// `http://127.0.0.1:PORT/oauth2/callback`.
    #[must_use]
    pub fn redirect_uri(&self) -> String {
        format!("{}{CALLBACK_PATH}", self.url())
    }

    /// `http://127.0.0.1:PORT/logout`: a 302 to mod_auth_openidc's logout
    /// (see the type's docs).
    #[must_use]
    pub fn logout_url(&self) -> String {
        format!("{}/logout", self.url())
    }

    /// Where logout ends, `http://127.0.0.1:PORT/loggedout`: register it at
    /// the provider as a `post_logout_redirect_uri`.
    #[must_use]
    pub fn logged_out_url(&self) -> String {
        format!("{}{LOGGED_OUT_PATH}", self.url())
    }

    /// The back-channel logout URI to register at the provider
    /// (`backchannel_logout_uri`): the redirect URI with
    /// `?logout=backchannel`, where mod_auth_openidc takes the provider's
    /// `POST` of a `logout_token`.
    #[must_use]
    pub fn backchannel_logout_uri(&self) -> String {
        format!("{}?logout=backchannel", self.redirect_uri())
    }

    /// The server's directory: `httpd.conf` (readable only by its owner: it
    /// holds the client secret and the passphrase), `error.log`,
    /// `access.log`, `stderr.log`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.server.dir
    }

    /// What Apache wrote to stderr (configuration errors) and its error log,
    /// for assertion messages and debugging; empty when it wrote nothing.
    #[must_use]
    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// What a builder's `prepare` leaves for [`Server::launch`].
struct Prepared {
    port: u16,
    /// Apache's environment, besides `PATH`.
    env: Vec<(String, String)>,
    /// Worker processes under a foreground parent (`-DFOREGROUND`), not
    /// `-X`.
    workers: bool,
}

/// A running `apache2 -X` (or `-DFOREGROUND` with workers) on
/// `dir/httpd.conf`: stopped and `dir` removed on drop.
#[derive(Debug)]
struct Server {
    child: Child,
    dir: PathBuf,
    port: u16,
    /// The parent has worker processes: stop it with `SIGTERM`.
    workers: bool,
}

impl Server {
    /// Makes a scratch directory, lets `prepare` fill it (`httpd.conf`
    /// included), starts Apache on it and waits until it listens. On an
    /// error, Apache is stopped and the directory removed.
    fn launch(prepare: impl FnOnce(&Path) -> io::Result<Prepared>) -> io::Result<Server> {
        let dir = crate::scratch_dir("palisade-apache");
        let spawned = prepare(&dir).and_then(|p| Ok((spawn(&dir, &p.env, p.workers)?, p.port, p.workers)));
        let (child, port, workers) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // From here on, Drop kills Apache and removes the directory.
        let mut server = Server {
            child,
            dir,
            port,
            workers,
        };
        server.wait_listening()?;
        Ok(server)
    }

    /// `stderr.log` and `error.log`.
    fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        read("stderr.log") + &read("error.log")
    }

    fn wait_listening(&mut self) -> io::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(io::Error::other(format!(
                    "apache2 exited ({status}) before listening:\n{}",
                    self.log()
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "apache2 did not listen within {} s:\n{}",
                        START_TIMEOUT.as_secs(),
                        self.log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.workers {
            // SIGTERM: the parent stops its workers, then itself.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `apache2 -X` (`-DFOREGROUND` with `workers`) on
/// `dir/httpd.conf`, with `env` and a fixed `PATH` as its whole environment
/// and its stderr in `dir/stderr.log`.
fn spawn(dir: &Path, env: &[(String, String)], workers: bool) -> io::Result<Child> {
    let stderr_path = dir.join("stderr.log");
    let stderr =
        std::fs::File::create(&stderr_path).context(|| format!("cannot create {}", stderr_path.display()))?;
    Command::new(APACHE)
        .arg(if workers { "-DFOREGROUND" } else { "-X" })
        .arg("-d")
        .arg(dir)
        .arg("-f")
        .arg(dir.join("httpd.conf"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context(|| format!("cannot start {APACHE}"))
}

/// The start of every `httpd.conf`: paths under `dir`, the error log.
fn preamble(dir: &Path, log_level: &str) -> String {
    let d = dir.display();
    format!(
        r#"ServerRoot "{d}"
ServerName localhost
PidFile "{d}/run/httpd.pid"
DefaultRuntimeDir "{d}/run"
Mutex file:{d}/run default
ErrorLog "{d}/error.log"
LogLevel {log_level}
"#
    )
}

fn load_modules(modules: &[(&str, &str)]) -> String {
    modules
        .iter()
        .map(|(name, file)| format!("LoadModule {name} {MODULES}/{file}\n"))
        .collect()
}

/// Creates `dir`, `dir/run` and `dir/htdocs`, searchable by the worker.
fn make_dirs(dir: &Path) -> io::Result<()> {
    for sub in ["", "run", "htdocs"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).context(|| format!("cannot create {}", d.display()))?;
        set_mode(&d, 0o755)?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32) -> io::Result<()> {
    std::fs::write(path, text).context(|| format!("cannot write {}", path.display()))?;
    set_mode(path, mode)
}

/// Apache refuses to serve as root: when the caller is root, the worker's
/// uid and gid (`www-data`, else `nobody`); `None` otherwise.
fn worker_ids() -> Option<(u32, u32)> {
    if id(&["-u"]) != Some(0) {
        return None;
    }
    Some(match (id(&["-u", "www-data"]), id(&["-g", "www-data"])) {
        (Some(u), Some(g)) => (u, g),
        _ => (65534, 65534),
    })
}

/// The `User`/`Group` lines for [`worker_ids`].
fn user_lines(worker: Option<(u32, u32)>) -> String {
    worker.map_or_else(String::new, |(uid, gid)| format!("User #{uid}\nGroup #{gid}\n"))
}

/// Whether `value` can sit between double quotes in `httpd.conf` as it is.
fn conf_safe(value: &str) -> bool {
    !value.is_empty() && !value.chars().any(|c| c == '"' || c == '\\' || c.is_control())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn check_installed_in(
    apache: &Path,
    modules: &Path,
    files: &[(&str, &str)],
    install: &str,
) -> io::Result<()> {
    let missing = std::iter::once(apache.to_owned())
        .chain(files.iter().map(|(_, f)| modules.join(f)))
        .find(|p| !p.is_file());
    match missing {
        Some(p) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is missing: {install}", p.display()),
        )),
        None => Ok(()),
    }
}

/// Lets the worker (`uid`:`gid`) read the keytab copy `kt` and the realm's
/// `krb5.conf` and write its replay cache directory, both named in `env`.
fn give_to_worker(kt: &Path, env: &[(String, String)], uid: u32, gid: u32) -> io::Result<()> {
    let var = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| PathBuf::from(v))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name} is not in the server environment"),
                )
            })
    };
    let rcache = var("KRB5RCACHEDIR")?;
    let conf = var("KRB5_CONFIG")?;
    chown(kt, uid, gid)?;
    chown(&rcache, uid, gid)?;
    if let Some(d) = conf.parent() {
        add_mode(d, 0o011)?;
    }
    add_mode(&conf, 0o044)
}

/// The numeric id `id` prints (`id -u`, `id -g www-data`, …).
fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .context(|| format!("cannot give {} to {uid}:{gid}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .context(|| format!("cannot chmod {mode:o} {}", path.display()))
}

fn add_mode(path: &Path, bits: u32) -> io::Result<()> {
    let mode = std::fs::metadata(path)
        .context(|| format!("cannot read {}", path.display()))?
        .permissions()
        .mode();
    set_mode(path, mode | bits)
}

/// Puts what was being done in front of an I/O error's message.
trait Context<T> {
    fn context<D: Display>(self, what: impl FnOnce() -> D) -> io::Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn context<D: Display>(self, what: impl FnOnce() -> D) -> io::Result<T> {
        self.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", what())))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::KerberosRealm;

    #[test]
    fn a_missing_module_names_the_packages_in_one_line() {
        let e = check_installed_in(
            Path::new("/bin/sh"),
            Path::new("/nonexistent"),
            &APACHE_MODULES,
            GSSAPI_PACKAGES,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "/nonexistent/mod_mpm_prefork.so is missing: apt-get install apache2 libapache2-mod-auth-gssapi"
        );
    }

    #[test]
    fn the_options_change_only_logging_and_keep_alive() {
        let (dir, kt) = (Path::new("/d"), Path::new("/d/http.keytab"));
        let default = ApacheGssapi::builder().config(dir, 8080, kt, "");
        assert!(default.contains("LogLevel info auth_gssapi:debug\n"), "{default}");
        assert!(
            default.contains("LogFormat \"%h %u \\\"%r\\\" %>s\" brief\nCustomLog \"/d/access.log\" brief\nListen 127.0.0.1:8080\n"),
            "{default}"
        );
        assert!(!default.contains("KeepAlive"), "{default}");
        assert!(
            default.contains("GssapiCredStore keytab:/d/http.keytab\n"),
            "{default}"
        );
        assert!(
            default.contains("Header set X-Remote-User \"expr=%{REMOTE_USER}\"\n"),
            "{default}"
        );

        let load = ApacheGssapi::builder()
            .access_log(false)
            .log_level("warn")
            .unlimited_keep_alive()
            .config(dir, 8080, kt, "User #33\nGroup #33\n");
        assert!(
            !load.contains("access.log") && !load.contains("LogFormat"),
            "{load}"
        );
        assert!(
            load.contains("LogLevel warn\nKeepAlive On\nMaxKeepAliveRequests 0\nKeepAliveTimeout 300\nListen 127.0.0.1:8080\n"),
            "{load}"
        );
        assert!(
            load.contains("mod_auth_gssapi.so\nUser #33\nGroup #33\nDocumentRoot \"/d/htdocs\"\n"),
            "{load}"
        );
    }

    #[test]
    fn apache_asks_for_negotiate_and_cleans_up() {
        ApacheGssapi::check_installed().unwrap_or_else(|e| panic!("{e}"));
        let realm = KerberosRealm::start().unwrap_or_else(|e| panic!("{e}"));
        let keytab = realm.add_service("HTTP/localhost").unwrap();
        let apache =
            ApacheGssapi::start(&keytab, &realm.server_env(&keytab)).unwrap_or_else(|e| panic!("{e}"));
        let mut s = TcpStream::connect(("127.0.0.1", apache.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(
            reply.starts_with("HTTP/1.1 401"),
            "{reply}\n{}",
            apache.error_log()
        );
        assert!(reply.contains("WWW-Authenticate: Negotiate\r\n"), "{reply}");
        assert!(apache.dir().join("access.log").is_file());
        let dir = apache.dir().to_owned();
        drop(apache);
        assert!(!dir.exists());
    }

    /// A `GET` on a fresh connection: the whole answer as text.
    fn http_get(port: u16, path: &str, accept: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    }

    #[test]
    fn a_missing_openidc_module_names_the_install_line() {
        let e = check_installed_in(
            Path::new("/bin/sh"),
            Path::new("/nonexistent"),
            &OPENIDC_MODULES,
            OPENIDC_PACKAGES,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "/nonexistent/mod_mpm_prefork.so is missing: install it with `sudo apt-get install apache2 libapache2-mod-auth-openidc`"
        );
    }

    #[test]
    fn openidc_config_names_the_provider_the_client_and_the_protected_paths() {
        let dir = Path::new("/d");
        let conf = ApacheOpenidc::builder("https://idp.test/.well-known/openid-configuration", "web")
            .client_secret("s3cret")
            .scopes("openid profile email")
            .config(
                dir,
                8080,
                "passphrase",
                Some(Path::new("/d/ca.pem")),
                "User #33\nGroup #33\n",
            );
        for line in [
            "OIDCProviderMetadataURL \"https://idp.test/.well-known/openid-configuration\"\n",
            "OIDCCABundlePath \"/d/ca.pem\"\n",
            "OIDCClientID \"web\"\n",
            "OIDCClientSecret \"s3cret\"\nOIDCProviderTokenEndpointAuth client_secret_basic\n",
            "OIDCScope \"openid profile email\"\n",
            "OIDCRedirectURI http://127.0.0.1:8080/oauth2/callback\n",
            "OIDCCryptoPassphrase \"passphrase\"\n",
            "OIDCPKCEMethod S256\n",
            "OIDCSessionType server-cache\n",
            "OIDCRedirectURLsAllowed ^http://127\\.0\\.0\\.1:8080/\n",
            "RedirectMatch 302 ^/logout$ \"http://127.0.0.1:8080/oauth2/callback?logout=http%3A%2F%2F127.0.0.1%3A8080%2Floggedout\"\n",
            "<Location /api/>\n    AuthType openid-connect\n    Require valid-user\n    Header set X-Remote-User \"expr=%{REMOTE_USER}\"\n    OIDCUnAuthAction 401\n",
            "<Location /productpage>\n    AuthType openid-connect\n    Require valid-user\n",
            "<Location /whoami>\n    AuthType openid-connect\n    Require valid-user\n",
            "mod_auth_openidc.so\nUser #33\nGroup #33\nDocumentRoot \"/d/htdocs\"\n",
            "LogLevel info auth_openidc:debug\n",
        ] {
            assert!(conf.contains(line), "{line}\nnot in\n{conf}");
        }

        let public = ApacheOpenidc::builder("http://idp.test/.well-known/openid-configuration", "spa")
            .config(dir, 8080, "p", None, "");
        assert!(
            public.contains("OIDCProviderTokenEndpointAuth none\n"),
            "{public}"
        );
        assert!(public.contains("OIDCScope \"openid\"\n"), "{public}");
        assert!(
            !public.contains("OIDCClientSecret")
                && !public.contains("OIDCCABundlePath")
                && !public.contains("User #"),
            "{public}"
        );
    }

    #[test]
    fn openidc_builder_debug_hides_the_client_secret() {
        let b = ApacheOpenidc::builder("http://idp.test/.well-known/openid-configuration", "web")
            .client_secret("top-secret");
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("top-secret"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
    }

    #[test]
    fn openidc_values_that_would_break_httpd_conf_are_refused() {
        let url = "http://idp.test/.well-known/openid-configuration";
        for builder in [
            ApacheOpenidc::builder("ftp://idp.test/", "web"),
            ApacheOpenidc::builder(url, ""),
            ApacheOpenidc::builder(url, "we\"b"),
            ApacheOpenidc::builder(url, "web").client_secret("a\nOIDCSSLValidateServer Off"),
            ApacheOpenidc::builder(url, "web").scopes("openid\\"),
        ] {
            let e = builder.start().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
    }

    #[test]
    fn openidc_apache_serves_logout_and_401_and_cleans_up() {
        ApacheOpenidc::check_installed().unwrap_or_else(|e| panic!("{e}"));
        // No provider: nothing here needs its discovery document.
        let closed = crate::free_port().unwrap();
        let apache = ApacheOpenidc::builder(
            &format!("http://127.0.0.1:{closed}/.well-known/openid-configuration"),
            "web",
        )
        .client_secret("s3cret")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
        let port = apache.port();
        assert_eq!(apache.url(), format!("http://127.0.0.1:{port}"));
        assert_eq!(
            apache.backchannel_logout_uri(),
            format!("http://127.0.0.1:{port}/oauth2/callback?logout=backchannel")
        );

        let page = http_get(port, "/loggedout", "text/html");
        assert!(page.starts_with("HTTP/1.1 200"), "{page}\n{}", apache.log());
        assert!(page.contains("signed out"), "{page}");
        let logout = http_get(port, "/logout", "text/html");
        assert!(logout.starts_with("HTTP/1.1 302"), "{logout}");
        assert!(
            logout.contains(&format!(
                "Location: http://127.0.0.1:{port}/oauth2/callback?logout=http%3A%2F%2F127.0.0.1%3A{port}%2Floggedout\r\n"
            )),
            "{logout}"
        );
        let api = http_get(port, "/api/x", "application/json");
        assert!(api.starts_with("HTTP/1.1 401"), "{api}\n{}", apache.log());

        let conf = apache.dir().join("httpd.conf");
        assert_eq!(
            std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let passphrase = std::fs::read_to_string(&conf)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("OIDCCryptoPassphrase "))
            .unwrap()
            .trim_matches('"')
            .to_owned();
        assert_eq!(passphrase.len(), 64);
        assert!(!apache.log().contains(&passphrase) && !apache.log().contains("s3cret"));
        assert!(!format!("{apache:?}").contains(&passphrase));

        let dir = apache.dir().to_owned();
        drop(apache);
        assert!(!dir.exists());
    }

    #[test]
    fn an_unreadable_keytab_is_an_error_naming_it() {
        let e = ApacheGssapi::start(Path::new("/nonexistent/http.keytab"), &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot copy the keytab /nonexistent/http.keytab"),
            "{e}"
        );
    }
}
