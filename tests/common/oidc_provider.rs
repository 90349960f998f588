//! panva's `oidc-provider` (tests/oidc-provider/server.mjs, installed by
//! `scripts/test` from its package-lock.json) on loopback, for the tests
//! that need a real, OpenID-certified provider.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The browser client server.mjs registers when `BROWSER_REDIRECT_URIS` is set.
pub(crate) const BROWSER_CLIENT_ID: &str = "palisade-browser";
/// Its secret (`client_secret_basic`).
pub(crate) const BROWSER_CLIENT_SECRET: &str = "palisade-browser-secret";

/// A running oidc-provider, killed and reaped on drop.
pub(crate) struct OidcProvider {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) issuer: String,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    /// What server.mjs has counted (`GET /test/WHAT`: `introspections`
    /// with `INTROSPECTION`, `refreshes` with
    /// `BROWSER_SESSION_REFRESH_TOKENS`).
    pub(crate) async fn counted(&self, what: &str) -> serde_json::Value {
        reqwest::get(format!("{}/test/{what}", self.issuer))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    palisade::testkit::free_port().expect("a free port on 127.0.0.1")
}

/// tests/oidc-provider, where server.mjs and its `node_modules` live.
pub(crate) fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider")
}

/// Node.js: the machine's when it is 20 or newer (oidc-provider 9 needs
/// it), else the one ./scripts/test then installed from the npm registry
/// (scripts/node), else the machine's, whose failure says what is wrong.
pub(crate) fn node() -> Option<PathBuf> {
    let major = |node: &Path| {
        let out = Command::new(node)
            .args(["-p", "process.versions.node.split('.')[0]"])
            .output()
            .ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse::<u32>().ok()
    };
    let machines = which("node");
    if machines.as_deref().and_then(major).is_some_and(|m| m >= 20) {
        return machines;
    }
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/node/node_modules/.bin/node");
    if ours.is_file() { Some(ours) } else { machines }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// Starts server.mjs on `127.0.0.1:port` with `env` (see server.mjs for the
/// variables; `PORT` and `ISSUER` are set here) and waits for its
/// `listening on` line. Its later output goes to stderr, prefixed.
///
/// # Panics
/// When node or oidc-provider is not installed (with the line that installs
/// them), or the provider exits before listening.
pub(crate) fn start(port: u16, env: &[(&str, &str)]) -> OidcProvider {
    try_start(port, env).unwrap_or_else(|e| panic!("{e}"))
}

/// [`start`] on a free port: another, up to five times, when the provider
/// exits before it is ready (a port [`free_port`] found free was taken
/// before the provider bound it: another test's server, or a connection's
/// local port).
pub(crate) fn start_anywhere(env: &[(&str, &str)]) -> OidcProvider {
    let mut tries = 0;
    loop {
        match try_start(free_port(), env) {
            Ok(op) => return op,
            Err(e) if tries < 4 && e.contains("exited before it was ready") => tries += 1,
            Err(e) => panic!("{e}"),
        }
    }
}

/// [`start`], its failure to become ready an error.
fn try_start(port: u16, env: &[(&str, &str)]) -> Result<OidcProvider, String> {
    let node = node().unwrap_or_else(|| {
        panic!("node is missing: run ./scripts/test (it installs nodejs with apt) or `apt-get install nodejs npm`")
    });
    assert!(
        dir().join("node_modules/oidc-provider").is_dir(),
        "oidc-provider is not installed: run ./scripts/test, or `npm ci` in {}",
        dir().display()
    );
    let issuer = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(node)
        .arg("server.mjs")
        .current_dir(dir())
        .env("PORT", port.to_string())
        .env("ISSUER", &issuer)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start oidc-provider");
    let stdout = child.stdout.take().unwrap();
    // From here on, Drop kills the provider whatever happens.
    let op = OidcProvider { child, issuer };
    // The provider logs to stdout later too (a first login's warning,
    // back-channel deliveries): `Output` keeps reading and passes it on.
    super::Output::read(stdout, "oidc-provider: ")
        .until("oidc-provider", |l| l.starts_with("listening on"))?;
    Ok(op)
}
