//! Helpers shared by the integration tests.

#![allow(dead_code, reason = "each test binary uses a part")]

use serde_json::Value;

#[cfg(all(feature = "spnego", feature = "testkit"))]
pub(crate) mod kerberos;
pub(crate) mod logs;
#[cfg(feature = "testkit")]
pub(crate) mod oidc_provider;

/// POSTs a form to a token endpoint and returns the `access_token`.
pub(crate) async fn access_token(endpoint: &str, form: &str) -> String {
    let res: Value = reqwest::Client::new()
        .post(endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    res["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token from {endpoint}: {res}"))
        .to_owned()
}

/// Waits until `f` holds, looking every 100 ms; panics naming `what`
/// after 10 s.
pub(crate) async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// How long a process started by a test may take to say it is ready: a
/// cold start on a fresh machine reads its binary from disk.
pub(crate) const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// What a process printed, read on a thread of its own: [`Output::until`]
/// waits, with a deadline, for a line; the later lines go on being read
/// (a closed pipe would kill a process that prints later, with `EPIPE`).
pub(crate) struct Output(std::sync::mpsc::Receiver<String>);

impl Output {
    /// Reads `out` (a child's stdout) line by line on a thread; lines the
    /// test does not wait for are passed on to stderr after `prefix`.
    pub(crate) fn read(out: impl std::io::Read + Send + 'static, prefix: &'static str) -> Self {
        use std::io::BufRead as _;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Err(unsent) = tx.send(line) {
                    // Nobody waits any more: keep the pipe drained.
                    eprintln!("{prefix}{}", unsent.0);
                }
            }
        });
        Output(rx)
    }

    /// The lines up to the first that `done` accepts, and that line; an
    /// error naming `what` (and holding the lines so far) when the output
    /// ends first or [`READY_WITHIN`] passes.
    pub(crate) fn until(
        &self,
        what: &str,
        mut done: impl FnMut(&str) -> bool,
    ) -> Result<(Vec<String>, String), String> {
        let deadline = std::time::Instant::now() + READY_WITHIN;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if done(&line) => return Ok((before, line)),
                Ok(line) => before.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{what} did not say it was ready within {} s; it printed:\n{}",
                        READY_WITHIN.as_secs(),
                        before.join("\n")
                    ));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{what} exited before it was ready; it printed:\n{}",
                        before.join("\n")
                    ));
                }
            }
        }
    }
}

/// The path of an example binary built by `cargo test`. A binary older
/// than a source file it is built from (as its dep-info file, `NAME.d`,
/// lists them) fails the test: `cargo test --test X` builds no example,
/// and a test would run the code of before.
pub(crate) fn example(name: &str) -> std::path::PathBuf {
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    let binary = p.join("examples").join(name);
    let built = std::fs::metadata(&binary).and_then(|m| m.modified());
    let deps = std::fs::read_to_string(p.join("examples").join(format!("{name}.d")));
    if let (Ok(built), Ok(deps)) = (built, deps) {
        let sources = deps.split_once(": ").map_or("", |(_, s)| s).replace("\\ ", "\0");
        for source in sources.split_whitespace().map(|s| s.replace('\0', " ")) {
            let changed = std::fs::metadata(&source).and_then(|m| m.modified());
            assert!(
                changed.is_ok_and(|t| t <= built),
                "the example {name} is older than {source} (or it is gone): build it first (`cargo build --examples --all-features`, or `cargo test --all-features`, which builds them)"
            );
        }
    }
    binary
}

/// An example service started as a process; killed and reaped on drop.
pub(crate) struct Service {
    pub(crate) child: std::process::Child,
    /// `127.0.0.1:PORT`, from its `listening on` line.
    pub(crate) addr: String,
    pub(crate) port: u16,
    /// The lines it printed before `listening on`.
    pub(crate) banner: Vec<String>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts an example on a free loopback port with `args`.
pub(crate) fn start(name: &str, args: &[&str]) -> Service {
    start_with_env(name, args, &[])
}

/// Starts an example with extra environment variables (`RUST_LOG` is
/// `warn`, or `TEST_RUST_LOG` when set).
pub(crate) fn start_with_env(name: &str, args: &[&str], env: &[(String, String)]) -> Service {
    spawn(name, args, env, std::process::Stdio::inherit())
}

/// [`start_with_env`] with its log (stderr) written to the file `log`.
pub(crate) fn start_logged(name: &str, args: &[&str], env: &[(String, String)], log: &str) -> Service {
    let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("{log}: {e}"));
    spawn(name, args, env, std::process::Stdio::from(file))
}

fn spawn(name: &str, args: &[&str], env: &[(String, String)], stderr: std::process::Stdio) -> Service {
    let child = std::process::Command::new(example(name))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(
            "RUST_LOG",
            std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start example {name} (built by cargo test): {e}"));
    // From here on, Drop kills and reaps the process whatever happens.
    let mut svc = Service {
        child,
        addr: String::new(),
        port: 0,
        banner: Vec::new(),
    };
    let output = Output::read(svc.child.stdout.take().unwrap(), "example: ");
    let (banner, line) = output
        .until(&format!("example {name}"), |l| l.starts_with("listening on "))
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = &line["listening on ".len()..];
    svc.addr = addr.to_owned();
    svc.port = addr.rsplit(':').next().unwrap().parse().unwrap();
    svc.banner = banner;
    svc
}

/// The `bookinfo` launcher as a process: SIGTERM on drop (it stops its
/// services), then reaped.
pub(crate) struct Launcher(std::process::Child);

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

/// Starts the `bookinfo` example (built by `cargo test --features full`)
/// and waits for `bookinfo ready`: the launcher, its base port (details;
/// productpage is `base + 2`) and what it printed before.
pub(crate) fn start_bookinfo() -> (Launcher, u32, String) {
    // Ports BASE to BASE+10 (in a stride of 20), below Linux's ephemeral range (32768 up), so
    // that no other test's port lands there; by process, so that two test
    // binaries do not meet.
    let base = 20_000 + (std::process::id() % 600) * 20;
    let mut child = std::process::Command::new(example("bookinfo"))
        .args(["--base-port", &base.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start the bookinfo example (built by cargo test --features full): {e}")
        });
    let stdout = child.stdout.take().unwrap();
    let launcher = Launcher(child);
    let (banner, _) = Output::read(stdout, "bookinfo: ")
        .until("bookinfo", |l| l == "bookinfo ready")
        .unwrap_or_else(|e| panic!("{e}"));
    (launcher, base, banner.join("\n"))
}

/// A scratch directory for a test's files (`palisade-TAG-PID` in the
/// system's temporary directory), removed on drop.
pub(crate) struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl ScratchDir {
    /// A new directory of its own: two tests of one process that ask for
    /// the same `tag` at once (each a service of the same name) get two,
    /// so that neither's end removes the other's files.
    pub(crate) fn new(tag: &str) -> Self {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("palisade-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    /// The path of `name` in it.
    pub(crate) fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }

    /// Writes `name` atomically (a rename), as a certificate manager would;
    /// its path.
    pub(crate) fn write(&self, name: &str, text: &str) -> String {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.0.join(name)).unwrap();
        self.path(name)
    }

    /// Writes `c` as `NAME.crt` and `NAME.key`; their paths.
    #[cfg(feature = "testkit")]
    pub(crate) fn cert(&self, name: &str, c: &palisade::testkit::TestCert) -> (String, String) {
        (
            self.write(&format!("{name}.crt"), &c.cert_pem()),
            self.write(&format!("{name}.key"), &c.key_pem()),
        )
    }
}
