//! A throw-away Kerberos realm on loopback for tests: MIT `krb5kdc` with a
//! fresh database in a temporary directory, principals, keytabs and user
//! tickets in private credential caches. Everything is removed on drop.
//!
//! ```no_run
//! use palisade_testkit::KerberosRealm;
//! let realm = KerberosRealm::start()?;
//! realm.add_user("alice", "alice-password")?;
//! let keytab = realm.add_service("HTTP/localhost")?;
//! let ccache = realm.kinit("alice", "alice-password")?;
//! // Give a server `KRB5_CONFIG` and `KRB5_KTNAME`, and a client
//! // `KRB5_CONFIG` and `KRB5CCNAME`: `realm.client_env(&ccache)`.
//! # let _ = keytab;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The Kerberos library reads its configuration from the environment,
//! which is process-global: run the programs that use the realm as child
//! processes with [`KerberosRealm::client_env`] / [`KerberosRealm::server_env`],
//! or run such tests in their own test binary, one at a time.
//!
//! Needs the system's MIT Kerberos programs (`krb5kdc`, `kdb5_util`,
//! `kadmin.local`, `kinit`): Debian's `krb5-kdc`, `krb5-admin-server` and
//! `krb5-user`. When one is missing, [`KerberosRealm::start`] fails with a
//! line saying which packages to install.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The realm every harness creates.
pub const TEST_REALM: &str = "EXAMPLE.TEST";

/// A running test realm; see the module docs.
#[derive(Debug)]
pub struct KerberosRealm {
    dir: PathBuf,
    kdc: Child,
    port: u16,
}

fn tool(name: &str) -> io::Result<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "`{name}` is missing: install the MIT Kerberos programs with `apt-get install krb5-kdc krb5-admin-server krb5-user` (./scripts/test does)"
        ),
    ))
}

impl KerberosRealm {
    /// Creates the realm `EXAMPLE.TEST` with a KDC on a free loopback port.
    ///
    /// # Errors
    /// A missing program (the message says which packages to install), or a
    /// KDC that does not start within 30 s.
    pub fn start() -> io::Result<KerberosRealm> {
        let krb5kdc = tool("krb5kdc")?;
        let kdb5_util = tool("kdb5_util")?;
        tool("kadmin.local")?;
        tool("kinit")?;
        let dir = crate::scratch_dir("palisade-krb5");
        std::fs::create_dir_all(dir.join("rcache"))?;
        let port = crate::free_port()?;
        let d = dir.display();
        std::fs::write(
            dir.join("krb5.conf"),
            format!(
                "[libdefaults]\n  default_realm = {TEST_REALM}\n  dns_lookup_kdc = false\n  dns_lookup_realm = false\n  rdns = false\n  dns_canonicalize_hostname = false\n  forwardable = true\n  udp_preference_limit = 1\n  default_ccache_name = FILE:{d}/default.cc\n\n[realms]\n  {TEST_REALM} = {{\n    kdc = 127.0.0.1:{port}\n  }}\n\n[domain_realm]\n  localhost = {TEST_REALM}\n  .localhost = {TEST_REALM}\n"
            ),
        )?;
        std::fs::write(
            dir.join("kdc.conf"),
            format!(
                "[kdcdefaults]\n  kdc_ports = {port}\n  kdc_tcp_ports = {port}\n\n[realms]\n  {TEST_REALM} = {{\n    database_name = {d}/principal\n    key_stash_file = {d}/stash\n    acl_file = {d}/kadm5.acl\n    max_life = 10h\n    max_renewable_life = 7d\n    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n  }}\n\n[logging]\n  kdc = FILE:{d}/kdc.log\n"
            ),
        )?;
        std::fs::write(dir.join("kadm5.acl"), "")?;
        let realm_for_drop = |kdc: Child| KerberosRealm {
            dir: dir.clone(),
            kdc,
            port,
        };
        let status = Command::new(&kdb5_util)
            .args(["-r", TEST_REALM, "create", "-s", "-P", "palisade-test-master"])
            .envs(Self::base_env(&dir))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !status.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(io::Error::other(format!(
                "kdb5_util create failed: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            )));
        }
        let kdc = Command::new(&krb5kdc)
            .args(["-n", "-r", TEST_REALM])
            .envs(Self::base_env(&dir))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut realm = realm_for_drop(kdc);
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Its own listener, not another process's that took the port in
        // between (the KDC then exits, unable to bind it).
        let exited = |realm: &mut KerberosRealm| -> io::Result<()> {
            match realm.kdc.try_wait()? {
                Some(status) => Err(io::Error::other(format!(
                    "krb5kdc exited ({status}) before it answered: {}",
                    std::fs::read_to_string(realm.dir.join("kdc.log"))
                        .unwrap_or_default()
                        .trim()
                ))),
                None => Ok(()),
            }
        };
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            exited(&mut realm)?;
            if Instant::now() > deadline {
                return Err(io::Error::other("the KDC did not start listening within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(20));
        exited(&mut realm)?;
        Ok(realm)
    }

    fn base_env(dir: &Path) -> Vec<(String, String)> {
        vec![
            ("KRB5_CONFIG".into(), dir.join("krb5.conf").display().to_string()),
            (
                "KRB5_KDC_PROFILE".into(),
                dir.join("kdc.conf").display().to_string(),
            ),
        ]
    }

    fn kadmin(&self, query: &str) -> io::Result<()> {
        let out = Command::new(tool("kadmin.local")?)
            .args(["-r", TEST_REALM, "-q", query])
            .envs(Self::base_env(&self.dir))
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || err.contains("error") || err.contains("failed") {
            return Err(io::Error::other(format!(
                "kadmin.local `{query}` failed: {}",
                err.trim()
            )));
        }
        Ok(())
    }

    /// The realm name, `EXAMPLE.TEST`.
    #[must_use]
    pub fn realm(&self) -> &str {
        TEST_REALM
    }

    /// The KDC's port on 127.0.0.1.
    #[must_use]
    pub fn kdc_port(&self) -> u16 {
        self.port
    }

    /// The `krb5.conf` clients and servers should use (`KRB5_CONFIG`).
    #[must_use]
    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.join("krb5.conf")
    }

    /// The realm's scratch directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a user principal with a password.
    ///
    /// # Errors
    /// When `kadmin.local` fails.
    pub fn add_user(&self, name: &str, password: &str) -> io::Result<()> {
        self.kadmin(&format!("addprinc -pw {password} {name}"))
    }

    /// Adds a service principal with a random key (`HTTP/localhost`) and
    /// writes its keys to a new keytab, whose path is returned.
    ///
    /// # Errors
    /// When `kadmin.local` fails.
    pub fn add_service(&self, principal: &str) -> io::Result<PathBuf> {
        self.kadmin(&format!("addprinc -randkey {principal}"))?;
        let keytab = self
            .dir
            .join(format!("{}.keytab", principal.replace(['/', '@'], "_")));
        self.kadmin(&format!("ktadd -k {} {principal}", keytab.display()))?;
        Ok(keytab)
    }

    /// Adds a service principal with a random key and writes its keys to
    /// `keytab` too (a keytab holding several services' keys, as a host's
    /// often does).
    ///
    /// # Errors
    /// When `kadmin.local` fails.
    pub fn add_service_to(&self, principal: &str, keytab: &Path) -> io::Result<()> {
        self.kadmin(&format!("addprinc -randkey {principal}"))?;
        self.kadmin(&format!("ktadd -k {} {principal}", keytab.display()))
    }

    /// Adds `principal` (`HTTP/localhost`) with the key of `password` and
    /// writes a new keytab, whose path is returned, in which each of
    /// `aliases` (`host/localhost`) comes first with that same key, then
    /// `principal`: a computer account's keytab as Active Directory's tools
    /// write it, where `HOST$`, `host/…` and `HTTP/…` share one key. The
    /// aliases need not exist in the realm.
    ///
    /// # Errors
    /// When `kadmin.local` or `ktutil` fails.
    pub fn add_service_sharing_key(
        &self,
        principal: &str,
        password: &str,
        aliases: &[&str],
    ) -> io::Result<PathBuf> {
        self.kadmin(&format!("addprinc -pw {password} {principal}"))?;
        // The realm's default salt: the realm, then the name's components.
        let salt = format!("{TEST_REALM}{}", principal.replace('/', ""));
        let keytab = self
            .dir
            .join(format!("{}-shared.keytab", principal.replace(['/', '@'], "_")));
        let mut script = String::new();
        for name in aliases.iter().chain([&principal]) {
            for enctype in ["aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96"] {
                script.push_str(&format!(
                    "addent -password -p {name}@{TEST_REALM} -k 1 -e {enctype} -s {salt}\n{password}\n"
                ));
            }
        }
        script.push_str(&format!("wkt {}\nquit\n", keytab.display()));
        let out = self.run_with_input("ktutil", &[], &script)?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !err.trim().is_empty() || !keytab.is_file() {
            return Err(io::Error::other(format!("ktutil failed: {}", err.trim())));
        }
        Ok(keytab)
    }

    /// Gives `principal` a new random key (its key version goes up), as a
    /// password reset of a service's account does: a keytab written before
    /// holds only the old version, and tickets issued from now on name the
    /// new one.
    ///
    /// # Errors
    /// When `kadmin.local` fails.
    pub fn rekey_service(&self, principal: &str) -> io::Result<()> {
        self.kadmin(&format!("cpw -randkey {principal}"))
    }

    /// Appends `principal`'s current keys to `keytab`, as they are (no new
    /// key: `ktadd -norandkey`), as an administrator exports a service's
    /// keys after a change of its password.
    ///
    /// # Errors
    /// When `kadmin.local` fails.
    pub fn export_keys(&self, principal: &str, keytab: &Path) -> io::Result<()> {
        self.kadmin(&format!("ktadd -norandkey -k {} {principal}", keytab.display()))
    }

    /// Lets `principal` obtain tickets to itself on behalf of any user
    /// (S4U2Self, protocol transition): the `ok_to_auth_as_delegate` flag.
    ///
    /// # Errors
    /// When `kadmin.local` fails.
    pub fn allow_protocol_transition(&self, principal: &str) -> io::Result<()> {
        self.kadmin(&format!("modprinc +ok_to_auth_as_delegate {principal}"))
    }

    /// Gets a forwardable ticket-granting ticket for `user` into a private
    /// credential cache, whose path is returned.
    ///
    /// # Errors
    /// When `kinit` fails (a wrong password, say).
    pub fn kinit(&self, user: &str, password: &str) -> io::Result<PathBuf> {
        let cc = self.dir.join(format!("{user}.cc"));
        let ccache = format!("FILE:{}", cc.display());
        let out = self.run_with_input("kinit", &["-f", "-c", &ccache, user], &format!("{password}\n"))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "kinit {user} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(cc)
    }

    /// A copy of the realm's `krb5.conf` whose KDC is an address that takes
    /// requests (UDP datagrams, TCP connections into the backlog) and never
    /// answers, for tests of a KDC outage: its path, and the sockets, which
    /// stay silent while the [`SilentKdc`] lives.
    ///
    /// # Errors
    /// When the file cannot be read or written.
    pub fn silent_krb5_conf(&self) -> io::Result<(PathBuf, SilentKdc)> {
        let silent = loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let port = udp.local_addr()?.port();
            if let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                break SilentKdc {
                    port,
                    _udp: udp,
                    _tcp: tcp,
                };
            }
        };
        let path = self.krb5_conf_with_kdc(silent.port)?;
        Ok((path, silent))
    }

    /// A copy of the realm's `krb5.conf` whose KDC is `127.0.0.1:port`
    /// (which the test keeps silent, closed, or answering as it likes): its
    /// path.
    ///
    /// # Errors
    /// When the file cannot be read or written.
    pub fn krb5_conf_with_kdc(&self, port: u16) -> io::Result<PathBuf> {
        let conf = std::fs::read_to_string(self.krb5_conf())?
            .lines()
            .map(|l| match l.trim_start().strip_prefix("kdc") {
                Some(rest) if rest.trim_start().starts_with('=') => format!("    kdc = 127.0.0.1:{port}"),
                _ => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = self.dir.join(format!("kdc-{port}-krb5.conf"));
        std::fs::write(&path, conf)?;
        Ok(path)
    }

    /// Runs the realm's tool `name` with `args`, `input` on its standard
    /// input, in the realm's environment.
    fn run_with_input(&self, name: &str, args: &[&str], input: &str) -> io::Result<std::process::Output> {
        let mut child = Command::new(tool(name)?)
            .args(args)
            .envs(Self::base_env(&self.dir))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            // A tool that stops reading early (a refused password) is
            // judged by its status, not by this write.
            let _ = stdin.write_all(input.as_bytes());
        }
        child.wait_with_output()
    }

    /// The environment of a client using the ticket cache `ccache`.
    #[must_use]
    pub fn client_env(&self, ccache: &Path) -> Vec<(String, String)> {
        let mut env = Self::base_env(&self.dir);
        env.push(("KRB5CCNAME".into(), format!("FILE:{}", ccache.display())));
        env
    }

    /// The environment of a server accepting with `keytab`, with its own
    /// replay cache directory.
    #[must_use]
    pub fn server_env(&self, keytab: &Path) -> Vec<(String, String)> {
        let mut env = Self::base_env(&self.dir);
        env.push(("KRB5_KTNAME".into(), format!("FILE:{}", keytab.display())));
        env.push((
            "KRB5RCACHEDIR".into(),
            self.dir.join("rcache").display().to_string(),
        ));
        env
    }

    /// The environment of a service that impersonates its users (S4U) with
    /// the key of `keytab`, its client keytab, under the Kerberos
    /// configuration `krb5_conf` (the realm's, or a copy naming another
    /// KDC: [`krb5_conf_with_kdc`](Self::krb5_conf_with_kdc)), its own
    /// ticket cache in the realm's directory.
    #[must_use]
    pub fn impersonating_env(&self, keytab: &Path, krb5_conf: &Path) -> Vec<(String, String)> {
        let mut env = self.server_env(keytab);
        for (k, v) in &mut env {
            if k == "KRB5_CONFIG" {
                *v = krb5_conf.display().to_string();
            }
        }
        env.push(("KRB5_CLIENT_KTNAME".into(), format!("FILE:{}", keytab.display())));
        env.push((
            "KRB5CCNAME".into(),
            format!("FILE:{}", self.dir.join("service.cc").display()),
        ));
        env
    }

    /// The environment of one process that both accepts with `keytab` and
    /// initiates with the ticket cache `ccache` (a test or bench that
    /// makes its own Negotiate tokens): [`server_env`](Self::server_env)
    /// and the cache.
    #[must_use]
    pub fn server_and_client_env(&self, keytab: &Path, ccache: &Path) -> Vec<(String, String)> {
        let mut env = self.server_env(keytab);
        env.extend(
            self.client_env(ccache)
                .into_iter()
                .filter(|(k, _)| k == "KRB5CCNAME"),
        );
        env
    }
}

/// A KDC address that never answers ([`KerberosRealm::silent_krb5_conf`]);
/// silent while it lives.
#[derive(Debug)]
pub struct SilentKdc {
    port: u16,
    _udp: std::net::UdpSocket,
    _tcp: std::net::TcpListener,
}

impl SilentKdc {
    /// Its port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for KerberosRealm {
    fn drop(&mut self) {
        let _ = self.kdc.kill();
        let _ = self.kdc.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_realm_issues_tickets_and_keytabs_and_cleans_up() {
        let realm = KerberosRealm::start().unwrap_or_else(|e| panic!("{e}"));
        realm.add_user("alice", "alice-pw").unwrap();
        let keytab = realm.add_service("HTTP/localhost").unwrap();
        assert!(keytab.is_file());
        let cc = realm.kinit("alice", "alice-pw").unwrap();
        let out = Command::new(tool("klist").unwrap())
            .envs(realm.client_env(&cc))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("alice@EXAMPLE.TEST"), "{text}");
        assert!(realm.kinit("alice", "wrong").is_err());
        let dir = realm.dir().to_owned();
        drop(realm);
        assert!(!dir.exists());
    }
}
