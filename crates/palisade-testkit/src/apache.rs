//! Apache httpd with mod_auth_gssapi, the reference `Negotiate` server, on
//! loopback for tests and benchmarks: `apache2 -X` (one process, in the
//! foreground, serving one connection at a time) with a generated minimal
//! configuration in a temporary directory, accepting with a copy of a
//! [`KerberosRealm`](crate::KerberosRealm) keytab. The process is killed and
//! the directory removed on drop.
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

use std::fmt::Display;
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
/// The modules the generated configuration loads, as `(name, file in
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

/// How long Apache may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Apache httpd with mod_auth_gssapi; see the module docs.
#[derive(Debug)]
pub struct ApacheGssapi {
    child: Child,
    dir: PathBuf,
    port: u16,
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
    /// written, or when Apache exits or does not listen within 10 s (the
    /// message holds its error log).
    pub fn start(&self, keytab: &Path, env: &[(String, String)]) -> io::Result<ApacheGssapi> {
        ApacheGssapi::check_installed()?;
        let dir = crate::scratch_dir("palisade-apache");
        let (child, port) = match self.spawn(&dir, keytab, env) {
            Ok(spawned) => spawned,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // From here on, Drop kills Apache and removes the directory.
        let mut apache = ApacheGssapi { child, dir, port };
        apache.wait_listening()?;
        Ok(apache)
    }

    /// Writes the directory and the configuration and starts `apache2 -X`.
    fn spawn(&self, dir: &Path, keytab: &Path, env: &[(String, String)]) -> io::Result<(Child, u16)> {
        for sub in ["", "run", "htdocs"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).context(|| format!("cannot create {}", d.display()))?;
            set_mode(&d, 0o755)?;
        }
        // The resource: a static file; the authenticated user comes back in
        // a response header (mod_headers evaluates REMOTE_USER, which
        // mod_auth_gssapi sets to the client principal).
        let whoami = dir.join("htdocs/whoami");
        std::fs::write(&whoami, "ok\n").context(|| format!("cannot write {}", whoami.display()))?;
        set_mode(&whoami, 0o644)?;
        let kt = dir.join("http.keytab");
        std::fs::copy(keytab, &kt)
            .context(|| format!("cannot copy the keytab {} to {}", keytab.display(), kt.display()))?;
        set_mode(&kt, 0o400)?;

        let user = if id(&["-u"]) == Some(0) {
            let (uid, gid) = match (id(&["-u", "www-data"]), id(&["-g", "www-data"])) {
                (Some(u), Some(g)) => (u, g),
                _ => (65534, 65534),
            };
            give_to_worker(&kt, env, uid, gid)?;
            format!("User #{uid}\nGroup #{gid}\n")
        } else {
            String::new()
        };

        let port = crate::free_port()?;
        let conf_path = dir.join("httpd.conf");
        std::fs::write(&conf_path, self.config(dir, port, &kt, &user))
            .context(|| format!("cannot write {}", conf_path.display()))?;
        let stderr_path = dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path)
            .context(|| format!("cannot create {}", stderr_path.display()))?;
        let child = Command::new(APACHE)
            .arg("-X")
            .arg("-d")
            .arg(dir)
            .arg("-f")
            .arg(&conf_path)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(
                env.iter()
                    .filter(|(k, _)| k != "KRB5_KTNAME")
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env("KRB5_KTNAME", format!("FILE:{}", kt.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context(|| format!("cannot start {APACHE}"))?;
        Ok((child, port))
    }

    /// The `httpd.conf` for a server in `dir` on `port`, accepting with
    /// `keytab`; `user` is the `User`/`Group` lines (empty unless root).
    fn config(&self, dir: &Path, port: u16, keytab: &Path, user: &str) -> String {
        let d = dir.display();
        let modules: String = APACHE_MODULES
            .iter()
            .map(|(name, file)| format!("LoadModule {name} {MODULES}/{file}\n"))
            .collect();
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
            r#"ServerRoot "{d}"
ServerName localhost
PidFile "{d}/run/httpd.pid"
DefaultRuntimeDir "{d}/run"
Mutex file:{d}/run default
ErrorLog "{d}/error.log"
LogLevel {level}
{access_log}{keep_alive}Listen 127.0.0.1:{port}
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
            level = self.log_level,
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
        check_installed_in(Path::new(APACHE), Path::new(MODULES))
    }

    /// The port Apache listens on, on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory: `httpd.conf`, `error.log`, `access.log`
    /// (when kept), `stderr.log`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What Apache wrote to stderr (configuration errors) and its error log,
    /// for assertion messages; empty when it wrote nothing.
    #[must_use]
    pub fn error_log(&self) -> String {
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
                    self.error_log()
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "apache2 did not listen within {} s:\n{}",
                        START_TIMEOUT.as_secs(),
                        self.error_log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for ApacheGssapi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn check_installed_in(apache: &Path, modules: &Path) -> io::Result<()> {
    let missing = std::iter::once(apache.to_owned())
        .chain(APACHE_MODULES.iter().map(|(_, f)| modules.join(f)))
        .find(|p| !p.is_file());
    match missing {
        Some(p) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is missing: apt-get install apache2 libapache2-mod-auth-gssapi",
                p.display()
            ),
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
        let e = check_installed_in(Path::new("/bin/sh"), Path::new("/nonexistent")).unwrap_err();
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
