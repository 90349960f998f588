//! Headless Chromium driven over WebDriver (W3C), for tests that sign in as
//! a browser does: follow redirects, fill forms, keep cookies.
//!
//! ```no_run
//! use std::time::Duration;
//! use palisade_testkit::browser::Browser;
//! let browser = Browser::start()?;
//! browser.goto("http://127.0.0.1:8080/login")?;
//! browser.find("input[name=login]")?.send_keys("alice")?;
//! browser.find("button[type=submit]")?.click()?;
//! let url = browser.wait_for_url(|u| u.contains("code="), Duration::from_secs(10))?;
//! browser.screenshot_to_test_dir("after-login")?;
//! assert!(browser.cookies()?.iter().any(|c| c.name == "session" && c.http_only));
//! # let _ = url;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! [`Browser::start`] runs `chromedriver` on a free loopback port and opens
//! one session with Debian's Chromium (`/usr/bin/chromium`, or the binary
//! named by `PALISADE_CHROMIUM`), headless, with a fresh profile in a
//! temporary directory. Dropping the [`Browser`] ends the session, kills
//! chromedriver (and, on Unix, every process of its process group: the
//! browser it started) and removes the directory.
//!
//! The API is blocking: it talks HTTP/1.1 to chromedriver over
//! [`std::net::TcpStream`], one connection per command. Call it from plain
//! `#[test]`s, from actix-web's test runtimes, or from a tokio test inside
//! [`tokio::task::spawn_blocking`] (a server under test running on the same
//! runtime keeps serving meanwhile). Every command has a deadline (30 s,
//! page loads 20 s, the browser's start 90 s), so a hung browser fails the
//! test instead of hanging it. The browsers of one process start one at a
//! time: two cold starts at once take longer than one after the other.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`./scripts/test`
//! installs them); chromedriver is looked up as `PALISADE_CHROMEDRIVER`, on
//! `PATH`, then as `/usr/bin/chromedriver`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// The error for a missing browser or driver, word for word.
const NOT_INSTALLED: &str =
    "chromium/chromedriver not found: install them with `sudo apt-get install chromium chromium-driver`";
/// Debian's Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver (package `chromium-driver`).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key of a web element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// The longest any one command to chromedriver may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a navigation (or a script) may take inside the browser; below
/// [`COMMAND_TIMEOUT`] so chromedriver reports it before the socket gives up.
const PAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(20);
/// How long chromedriver may take to be ready.
const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long opening a session (starting Chromium) may take. A cold start
/// reads the whole browser from disk: 16 s was seen on a 2-core guest with
/// empty caches, over 30 s on a CI machine. A browser that never comes up
/// still fails the test, after this.
const SESSION_START_TIMEOUT: Duration = Duration::from_secs(90);
/// How many lines of chromedriver's log an error message holds.
const LOG_LINES: usize = 12;
/// How long ending the session may take on drop.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the `wait_for*` methods look again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The Chromium flags of every session (before the profile directory and
/// the builder's extra arguments).
const CHROMIUM_ARGS: [&str; 11] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
    // No desktop keyring to ask for the password store's key.
    "--password-store=basic",
];

/// A headless Chromium session; see the module docs. Ends the session and
/// stops the browser on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    dir: PathBuf,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("chromedriver_port", &self.port)
            .field("session", &self.session)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Browser`]. The defaults: Chromium from `PALISADE_CHROMIUM`
/// or `/usr/bin/chromium`, certificates checked.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct BrowserBuilder {
    accept_insecure_certs: bool,
    chromium: Option<PathBuf>,
    args: Vec<String>,
}

impl BrowserBuilder {
    /// Accepts any TLS certificate (WebDriver's `acceptInsecureCerts`), for
    /// HTTPS tests against servers with certificates from a test CA.
    pub fn accept_insecure_certs(mut self, accept: bool) -> Self {
        self.accept_insecure_certs = accept;
        self
    }

    /// The Chromium binary, over `PALISADE_CHROMIUM` and `/usr/bin/chromium`.
    pub fn chromium(mut self, path: impl Into<PathBuf>) -> Self {
        self.chromium = Some(path.into());
        self
    }

    /// One more Chromium command-line argument (after the defaults listed
    /// in the module docs), e.g. `--lang=de`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts chromedriver and opens the session.
    ///
    /// # Errors
    /// When Chromium or chromedriver is missing (the error says, word for
    /// word, `` chromium/chromedriver not found: install them with `sudo
    /// apt-get install chromium chromium-driver` ``), when chromedriver is
    /// not ready within 60 s, or when the session cannot be created within
    /// 90 s (the message holds the end of chromedriver's log). Browsers of
    /// one process start one at a time.
    pub fn start(self) -> io::Result<Browser> {
        let chromium = self
            .chromium
            .clone()
            .or_else(|| std::env::var_os("PALISADE_CHROMIUM").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(CHROMIUM));
        let driver = chromedriver();
        let (Some(driver), true) = (driver, chromium.is_file()) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, NOT_INSTALLED));
        };
        // One browser starts at a time in this process: two cold starts at
        // once compete for the disk and the cores, each then taking longer
        // than both one after the other.
        let _one_at_a_time = STARTING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = crate::scratch_dir("palisade-browser");
        std::fs::create_dir_all(dir.join("profile"))
            .map_err(|e| context(e, &format!("cannot create {}", dir.display())))?;
        let port = crate::free_port()?;
        let log = dir.join("chromedriver.log");
        let mut command = Command::new(&driver);
        command
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so drop can stop the browser with it.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(context(e, &format!("cannot start {}", driver.display())));
            }
        };
        // From here on, Drop stops chromedriver and removes the directory.
        let mut browser = Browser {
            driver: child,
            port,
            session: String::new(),
            dir,
        };
        browser.wait_ready()?;
        let session = browser
            .command_with_timeout(
                "POST",
                "/session",
                Some(&self.capabilities(&chromium, &browser.dir)),
                SESSION_START_TIMEOUT,
            )
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open a Chromium session: {e}\n{}", browser.log()),
                )
            })?;
        browser.session = session["sessionId"]
            .as_str()
            .ok_or_else(|| protocol_error("POST /session", &session))?
            .to_owned();
        Ok(browser)
    }

    /// The `capabilities` of the new-session request.
    fn capabilities(&self, chromium: &Path, dir: &Path) -> Value {
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", dir.join("profile").display()));
        args.extend(self.args.iter().cloned());
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": self.accept_insecure_certs,
                    "pageLoadStrategy": "normal",
                    "timeouts": {
                        "implicit": 0,
                        "pageLoad": ms(PAGE_LOAD_TIMEOUT),
                        "script": ms(PAGE_LOAD_TIMEOUT),
                    },
                    "goog:chromeOptions": {
                        "binary": chromium.to_string_lossy(),
                        "args": args,
                    },
                }
            }
        })
    }
}

/// chromedriver: `PALISADE_CHROMEDRIVER`, else on `PATH`, else Debian's.
fn chromedriver() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_CHROMEDRIVER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("chromedriver"))
        .chain(std::iter::once(PathBuf::from(CHROMEDRIVER)))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts a browser with the defaults; see [`BrowserBuilder::start`].
    ///
    /// # Errors
    /// As [`BrowserBuilder::start`].
    pub fn start() -> io::Result<Browser> {
        Browser::builder().start()
    }

    /// A builder, to accept insecure certificates or pass more flags.
    pub fn builder() -> BrowserBuilder {
        BrowserBuilder::default()
    }

    /// Opens `url` and waits for the page to load (at most 20 s).
    ///
    /// # Errors
    /// When the page does not load (chromedriver's `unknown error:
    /// net::ERR_…`, or a timeout) or chromedriver fails.
    pub fn goto(&self, url: &str) -> io::Result<()> {
        self.session_command("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// The URL of the current page.
    ///
    /// # Errors
    /// When chromedriver fails.
    pub fn current_url(&self) -> io::Result<String> {
        self.string("GET", "/url")
    }

    /// The title of the current page.
    ///
    /// # Errors
    /// When chromedriver fails.
    pub fn title(&self) -> io::Result<String> {
        self.string("GET", "/title")
    }

    /// The current page's DOM, serialized as HTML.
    ///
    /// # Errors
    /// When chromedriver fails.
    pub fn page_source(&self) -> io::Result<String> {
        self.string("GET", "/source")
    }

    /// The first element matching the CSS selector `css`.
    ///
    /// # Errors
    /// [`io::ErrorKind::NotFound`] when none matches (the message names the
    /// selector and the page), or when chromedriver fails (an invalid
    /// selector, for one).
    pub fn find(&self, css: &str) -> io::Result<Element<'_>> {
        let found = self
            .session_command("POST", "/element", Some(&locator(css)))
            .map_err(|e| self.not_found(e, css))?;
        Element::from_reference(self, &found)
    }

    /// Every element matching the CSS selector `css`, in document order
    /// (empty when none does).
    ///
    /// # Errors
    /// When chromedriver fails (an invalid selector, for one).
    pub fn find_all(&self, css: &str) -> io::Result<Vec<Element<'_>>> {
        let found = self.session_command("POST", "/elements", Some(&locator(css)))?;
        found
            .as_array()
            .ok_or_else(|| protocol_error("POST /elements", &found))?
            .iter()
            .map(|r| Element::from_reference(self, r))
            .collect()
    }

    /// The first element matching `css`, looking again every 100 ms until
    /// one appears or `timeout` passes.
    ///
    /// # Errors
    /// [`io::ErrorKind::TimedOut`] when none appeared (the message names the
    /// selector and the page), or when chromedriver fails.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> io::Result<Element<'_>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(css) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && Instant::now() < deadline => {
                    std::thread::sleep(POLL_INTERVAL);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no element matched `{css}` within {timeout:?} (at {})",
                            self.url_or_unknown()
                        ),
                    ));
                }
                other => return other,
            }
        }
    }

    /// Waits until the current URL satisfies `done`, looking every 100 ms,
    /// and returns it.
    ///
    /// # Errors
    /// [`io::ErrorKind::TimedOut`] when it did not within `timeout` (the
    /// message holds the last URL), or when chromedriver fails.
    pub fn wait_for_url(&self, mut done: impl FnMut(&str) -> bool, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let url = self.current_url()?;
            if done(&url) {
                return Ok(url);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the URL did not change as expected within {timeout:?}: still {url}"),
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The cookies the browser would send to the current page.
    ///
    /// # Errors
    /// When chromedriver fails or answers something that is not a cookie
    /// list.
    pub fn cookies(&self) -> io::Result<Vec<Cookie>> {
        let found = self.session_command("GET", "/cookie", None)?;
        found
            .as_array()
            .ok_or_else(|| protocol_error("GET /cookie", &found))?
            .iter()
            .map(|c| Cookie::from_json(c).ok_or_else(|| protocol_error("GET /cookie", c)))
            .collect()
    }

    /// Sets a cookie for the current page's domain (the page must be open:
    /// WebDriver sets cookies on the current document).
    ///
    /// # Errors
    /// When chromedriver refuses the cookie (`invalid cookie domain`, for
    /// one) or fails.
    pub fn add_cookie(&self, cookie: &Cookie) -> io::Result<()> {
        self.session_command("POST", "/cookie", Some(&json!({ "cookie": cookie.to_json() })))
            .map(drop)
    }

    /// Deletes every cookie visible to the current page.
    ///
    /// # Errors
    /// When chromedriver fails.
    pub fn delete_all_cookies(&self) -> io::Result<()> {
        self.session_command("DELETE", "/cookie", None).map(drop)
    }

    /// Runs `script` as the body of a JavaScript function in the page, with
    /// `args` as `arguments` (pass an element with [`Element::reference`]),
    /// and returns what it `return`s.
    ///
    /// # Errors
    /// When the script throws (`javascript error`) or chromedriver fails.
    pub fn execute(&self, script: &str, args: &[Value]) -> io::Result<Value> {
        self.session_command(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Saves a PNG screenshot of the viewport to `path`.
    ///
    /// # Errors
    /// When chromedriver fails, its answer is not base64, or the file
    /// cannot be written.
    pub fn screenshot(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        let encoded = self.string("GET", "/screenshot")?;
        let png = STANDARD.decode(encoded.trim()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("screenshot is not base64: {e}"),
            )
        })?;
        std::fs::write(path, png).map_err(|e| context(e, &format!("cannot write {}", path.display())))
    }

    /// Saves a PNG screenshot named `name` (`.png` added, characters other
    /// than letters, digits, `-`, `_` and `.` replaced by `_`) to the
    /// screenshot directory, for debugging, and returns its path. The
    /// directory is `PALISADE_SCREENSHOT_DIR` when set, otherwise
    /// `test-screenshots` in cargo's target directory (found from the test
    /// binary's path), created when missing.
    ///
    /// # Errors
    /// As [`screenshot`](Self::screenshot), or when the directory cannot be
    /// created.
    pub fn screenshot_to_test_dir(&self, name: &str) -> io::Result<PathBuf> {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).map_err(|e| context(e, &format!("cannot create {}", dir.display())))?;
        let mut file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if !file.ends_with(".png") {
            file.push_str(".png");
        }
        let path = dir.join(file);
        self.screenshot(&path)?;
        Ok(path)
    }

    /// Polls chromedriver's `/status` until it is ready.
    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + DRIVER_START_TIMEOUT;
        loop {
            if let Ok(status) = self.command_with_timeout("GET", "/status", None, Duration::from_secs(2))
                && status["ready"] == json!(true)
            {
                return Ok(());
            }
            if let Some(status) = self.driver.try_wait()? {
                return Err(io::Error::other(format!(
                    "chromedriver exited ({status}) before it was ready\n{}",
                    self.log()
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "chromedriver was not ready within {} s\n{}",
                        DRIVER_START_TIMEOUT.as_secs(),
                        self.log()
                    ),
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The end of chromedriver's log, for error messages.
    ///
    /// Only the log's own lines (`[time][LEVEL]: …`): the JSON documents it
    /// dumps over many lines (Chromium's preferences) would push out what
    /// matters.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default();
        format!("chromedriver log (last entries):\n{}", log_tail(&text, LOG_LINES))
    }

    fn url_or_unknown(&self) -> String {
        self.current_url().unwrap_or_else(|_| "an unknown URL".to_owned())
    }

    /// Adds the selector and the page to a `no such element` error.
    fn not_found(&self, e: io::Error, css: &str) -> io::Error {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no element matches `{css}` (at {})", self.url_or_unknown()),
            )
        } else {
            e
        }
    }

    /// A command answering a string.
    fn string(&self, method: &str, path: &str) -> io::Result<String> {
        let value = self.session_command(method, path, None)?;
        match value {
            Value::String(s) => Ok(s),
            other => Err(protocol_error(path, &other)),
        }
    }

    /// A command on the session: `path` is below `/session/{id}`.
    fn session_command(&self, method: &str, path: &str, body: Option<&Value>) -> io::Result<Value> {
        self.command(method, &format!("/session/{}{path}", self.session), body)
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> io::Result<Value> {
        self.command_with_timeout(method, path, body, COMMAND_TIMEOUT)
    }

    /// One WebDriver command: a request on a new connection, its answer's
    /// `value`, or the WebDriver error as an [`io::Error`].
    fn command_with_timeout(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> io::Result<Value> {
        let what = format!("{method} {path}");
        let (status, body) = http(self.port, method, path, body, timeout)
            .map_err(|e| context(e, &format!("chromedriver {what}")))?;
        let answer: Value = serde_json::from_slice(&body).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "chromedriver {what}: HTTP {status} with a body that is not JSON ({e}): {}",
                    String::from_utf8_lossy(&body)
                ),
            )
        })?;
        let mut value = answer.get("value").cloned().unwrap_or(Value::Null);
        match value.get("error").and_then(Value::as_str) {
            Some(error) => Err(webdriver_error(&what, error, &value)),
            None if status == 200 => Ok(value.take()),
            None => Err(protocol_error(&what, &answer)),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = self.command_with_timeout("DELETE", &path, None, QUIT_TIMEOUT);
        }
        #[cfg(unix)]
        {
            // chromedriver and the browser it started share its process group.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.driver.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A browser still exiting may write into its profile meanwhile.
        for _ in 0..10 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// An element of the page the [`Browser`] showed when it was found. After
/// the page changes, its methods fail with `stale element reference`.
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

impl fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Element")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<'b> Element<'b> {
    fn from_reference(browser: &'b Browser, reference: &Value) -> io::Result<Self> {
        let id = reference[ELEMENT_KEY]
            .as_str()
            .ok_or_else(|| protocol_error("element reference", reference))?;
        Ok(Element {
            browser,
            id: id.to_owned(),
        })
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> io::Result<Value> {
        self.browser
            .session_command(method, &format!("/element/{}{path}", self.id), body)
    }

    /// Clicks the element (scrolling it into view), and waits for a
    /// navigation it starts.
    ///
    /// # Errors
    /// When the element is hidden or covered (`element not interactable`,
    /// `element click intercepted`), stale, or chromedriver fails.
    pub fn click(&self) -> io::Result<()> {
        self.command("POST", "/click", Some(&json!({}))).map(drop)
    }

    /// Types `text` into the element (appending to what it holds).
    ///
    /// # Errors
    /// When the element takes no input, is stale, or chromedriver fails.
    pub fn send_keys(&self, text: &str) -> io::Result<()> {
        self.command("POST", "/value", Some(&json!({ "text": text })))
            .map(drop)
    }

    /// The element's rendered text.
    ///
    /// # Errors
    /// When the element is stale or chromedriver fails.
    pub fn text(&self) -> io::Result<String> {
        match self.command("GET", "/text", None)? {
            Value::String(s) => Ok(s),
            other => Err(protocol_error("element text", &other)),
        }
    }

    /// The element's HTML attribute `name` as the markup (or a script) set
    /// it, `None` when it has none. What a user typed into an input is its
    /// [`property`](Self::property) `value`, not its attribute.
    ///
    /// # Errors
    /// When the element is stale or chromedriver fails.
    pub fn attribute(&self, name: &str) -> io::Result<Option<String>> {
        match self.command("GET", &format!("/attribute/{name}"), None)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Ok(Some(other.to_string())),
        }
    }

    /// The element's DOM property `name` (`value`, `checked`, …), `null`
    /// when it has none.
    ///
    /// # Errors
    /// When the element is stale or chromedriver fails.
    pub fn property(&self, name: &str) -> io::Result<Value> {
        self.command("GET", &format!("/property/{name}"), None)
    }

    /// The element as a WebDriver reference, to pass to
    /// [`Browser::execute`] (it arrives there as the DOM element).
    pub fn reference(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }
}

/// A browser cookie, as WebDriver describes it. `Debug` never shows the
/// value.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cookie {
    /// The name.
    pub name: String,
    /// The value (a secret, often).
    pub value: String,
    /// `HttpOnly`: hidden from scripts.
    pub http_only: bool,
    /// `Secure`: sent over HTTPS only.
    pub secure: bool,
    /// `SameSite`: `Strict`, `Lax` or `None`, when known.
    pub same_site: Option<String>,
    /// The path, when known.
    pub path: Option<String>,
    /// The domain, when known (a leading `.` for a domain cookie).
    pub domain: Option<String>,
    /// The expiry in seconds since the Unix epoch; `None` for a session
    /// cookie.
    pub expiry: Option<u64>,
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cookie")
            .field("name", &self.name)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("http_only", &self.http_only)
            .field("secure", &self.secure)
            .field("same_site", &self.same_site)
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl Cookie {
    /// A session cookie for the current page's host and path `/`, neither
    /// `HttpOnly` nor `Secure`; change the fields for more.
    pub fn new(name: &str, value: &str) -> Self {
        Cookie {
            name: name.to_owned(),
            value: value.to_owned(),
            http_only: false,
            secure: false,
            same_site: None,
            path: Some("/".to_owned()),
            domain: None,
            expiry: None,
        }
    }

    fn from_json(c: &Value) -> Option<Self> {
        let text = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Cookie {
            name: text("name")?,
            value: text("value")?,
            http_only: c.get("httpOnly").and_then(Value::as_bool).unwrap_or(false),
            secure: c.get("secure").and_then(Value::as_bool).unwrap_or(false),
            same_site: text("sameSite"),
            path: text("path"),
            domain: text("domain"),
            expiry: c.get("expiry").and_then(Value::as_u64),
        })
    }

    fn to_json(&self) -> Value {
        let mut c = json!({
            "name": self.name,
            "value": self.value,
            "httpOnly": self.http_only,
            "secure": self.secure,
        });
        for (key, v) in [
            ("sameSite", &self.same_site),
            ("path", &self.path),
            ("domain", &self.domain),
        ] {
            if let Some(v) = v {
                c[key] = json!(v);
            }
        }
        if let Some(expiry) = self.expiry {
            c["expiry"] = json!(expiry);
        }
        c
    }
}

fn locator(css: &str) -> Value {
    json!({ "using": "css selector", "value": css })
}

/// `PALISADE_SCREENSHOT_DIR`, or `<target dir>/test-screenshots`: the test
/// binary is `<target dir>/<profile>/deps/<name>` (examples one level less
/// deep, which lands in the profile directory: still under the target).
fn screenshot_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PALISADE_SCREENSHOT_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let up = if exe.parent()?.ends_with("deps") { 3 } else { 2 };
            exe.ancestors().nth(up).map(Path::to_owned)
        })
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("test-screenshots")
}

/// Held while a browser starts; see [`BrowserBuilder::start`].
static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The last `n` lines of a chromedriver log that begin one of its entries
/// (`[`).
fn log_tail(log: &str, n: usize) -> String {
    let entries: Vec<&str> = log.lines().filter(|l| l.starts_with('[')).collect();
    entries[entries.len().saturating_sub(n)..].join("\n")
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn protocol_error(what: &str, got: &Value) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("chromedriver {what}: unexpected answer {got}"),
    )
}

/// A WebDriver error (`{"error", "message", "stacktrace"}`) as an
/// [`io::Error`] of a fitting kind, without the stack trace.
fn webdriver_error(what: &str, error: &str, value: &Value) -> io::Error {
    let kind = match error {
        "no such element" | "no such window" | "no such cookie" => io::ErrorKind::NotFound,
        "timeout" | "script timeout" => io::ErrorKind::TimedOut,
        "invalid argument" | "invalid selector" | "invalid cookie domain" => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    let message = value.get("message").and_then(Value::as_str).unwrap_or("");
    // chromedriver appends the browser's version and more on later lines.
    let message = message.lines().next().unwrap_or("");
    io::Error::new(kind, format!("chromedriver {what}: {error}: {message}"))
}

/// One HTTP/1.1 exchange with chromedriver on `127.0.0.1:port`
/// (`Connection: close`), all of it within `timeout`: the status code and
/// the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if method != "GET" {
        request.push_str(&format!(
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes())?;

    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(complete) = complete_length(&answer)
            && answer.len() >= complete
        {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(timeout));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(timed_out(timeout));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    parse_response(&answer)
}

fn timed_out(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no complete answer within {} s", timeout.as_secs()),
    )
}

/// The full length of a response with `Content-Length`, once its head is in.
fn complete_length(answer: &[u8]) -> Option<usize> {
    let end = find(answer, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&answer[..end]).ok()?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    })?;
    Some(end + length)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status code and body of a complete HTTP/1.1 response (chunked or
/// not).
fn parse_response(answer: &[u8]) -> io::Result<(u16, Vec<u8>)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad HTTP answer: {what}"));
    let end = find(answer, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&answer[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let body = &answer[end + 4..];
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Ok((status, dechunk(body).ok_or_else(|| bad("broken chunked body"))?));
    }
    match header("content-length").map(|v| v.parse::<usize>()) {
        Some(Ok(n)) if n <= body.len() => Ok((status, body[..n].to_vec())),
        Some(_) => Err(bad("body shorter than its Content-Length")),
        None => Ok((status, body.to_vec())),
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    use super::*;

    const PAGE: &str = r#"<!doctype html>
<html><head><title>Form test</title></head>
<body>
  <form id="f" onsubmit="return false">
    <input id="name" name="name" type="text">
    <button id="go" type="button">Greet</button>
  </form>
  <p id="out"></p>
  <script>
    document.getElementById('go').addEventListener('click', () => {
      const name = document.getElementById('name').value;
      setTimeout(() => {
        const done = document.createElement('p');
        done.id = 'greeting';
        done.textContent = 'Hello, ' + name + '!';
        document.body.appendChild(done);
        document.cookie = 'from_js=' + encodeURIComponent(name) + '; path=/';
      }, 200);
    });
  </script>
</body></html>"#;

    #[test]
    fn an_error_shows_the_last_log_entries_not_the_documents_they_dump() {
        let log = "[1.0][INFO]: Starting ChromeDriver\n\
                   [1.1][INFO]: Populating Preferences file: {\n   \"a\": 1,\n   \"b\": 2\n}\n\
                   [1.2][INFO]: Launching chrome: /usr/bin/chromium --headless=new\n\
                   [31.2][SEVERE]: Timed out\n";
        assert_eq!(
            log_tail(log, 2),
            "[1.2][INFO]: Launching chrome: /usr/bin/chromium --headless=new\n[31.2][SEVERE]: Timed out"
        );
        assert_eq!(log_tail(log, 12).lines().count(), 4);
        assert_eq!(log_tail("", 12), "");
    }

    /// Serves `PAGE` with a `Set-Cookie` to every request, on a thread.
    fn serve_page() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                // One thread a connection: Chromium opens spare ones it may never use.
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    // The request head; no request here has a body.
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Set-Cookie: from_server=s3cr3t-value; HttpOnly; SameSite=Strict; Path=/\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                        PAGE.len()
                    );
                });
            }
        });
        format!("http://{addr}/form")
    }

    #[test]
    fn drives_a_form_page_with_scripts_cookies_and_screenshots() {
        let url = serve_page();
        let browser = Browser::start().unwrap();
        browser.goto(&url).unwrap();
        assert_eq!(browser.current_url().unwrap(), url);
        assert_eq!(browser.title().unwrap(), "Form test");

        let input = browser.find("input[name=name]").unwrap();
        input.send_keys("Ada Lovelace").unwrap();
        assert_eq!(input.property("value").unwrap(), json!("Ada Lovelace"));
        assert_eq!(input.attribute("type").unwrap().as_deref(), Some("text"));
        assert_eq!(input.attribute("data-missing").unwrap(), None);
        assert!(browser.find("#greeting").unwrap_err().kind() == io::ErrorKind::NotFound);
        browser.find("#go").unwrap().click().unwrap();
        let greeting = browser.wait_for("#greeting", Duration::from_secs(5)).unwrap();
        assert_eq!(greeting.text().unwrap(), "Hello, Ada Lovelace!");
        assert!(browser.page_source().unwrap().contains("Hello, Ada Lovelace!"));
        assert_eq!(browser.find_all("p").unwrap().len(), 2);
        assert!(browser.find_all("table").unwrap().is_empty());

        let sum = browser.execute("return arguments[0] + arguments[1];", &[json!(2), json!(3)]);
        assert_eq!(sum.unwrap(), json!(5));
        let id = browser.execute("return arguments[0].id;", &[greeting.reference()]);
        assert_eq!(id.unwrap(), json!("greeting"));
        let thrown = browser.execute("throw new Error('boom');", &[]).unwrap_err();
        assert!(thrown.to_string().contains("javascript error"), "{thrown}");

        let cookies = browser.cookies().unwrap();
        let server = cookies.iter().find(|c| c.name == "from_server").unwrap();
        assert_eq!(server.value, "s3cr3t-value");
        assert!(server.http_only && !server.secure);
        assert_eq!(server.same_site.as_deref(), Some("Strict"));
        assert_eq!(server.path.as_deref(), Some("/"));
        assert_eq!(server.domain.as_deref(), Some("127.0.0.1"));
        assert_eq!(server.expiry, None);
        assert!(!format!("{server:?}").contains("s3cr3t"), "{server:?}");
        let js = cookies.iter().find(|c| c.name == "from_js").unwrap();
        assert_eq!(js.value, "Ada%20Lovelace");
        assert!(!js.http_only);

        browser.add_cookie(&Cookie::new("added", "by-test")).unwrap();
        let seen = browser.execute("return document.cookie;", &[]).unwrap();
        assert!(seen.as_str().unwrap().contains("added=by-test"), "{seen}");
        browser.delete_all_cookies().unwrap();
        assert!(browser.cookies().unwrap().is_empty());

        let path = browser
            .screenshot_to_test_dir("testkit browser/form page")
            .unwrap();
        assert!(
            path.ends_with("testkit_browser_form_page.png"),
            "{}",
            path.display()
        );
        let png = std::fs::read(&path).unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "not a PNG: {}",
            path.display()
        );
    }

    #[test]
    fn waiting_for_what_never_comes_times_out() {
        let url = serve_page();
        let browser = Browser::start().unwrap();
        browser.goto(&url).unwrap();
        let short = Duration::from_millis(300);
        let e = browser.wait_for("#never", short).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            e.to_string().contains("#never") && e.to_string().contains(&url),
            "{e}"
        );
        let e = browser
            .wait_for_url(|u| u.ends_with("/elsewhere"), short)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            browser.wait_for_url(|u| u.ends_with("/form"), short).unwrap(),
            url
        );
    }

    #[test]
    fn a_missing_browser_says_what_to_install() {
        let e = Browser::builder()
            .chromium("/nonexistent/chromium")
            .start()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "chromium/chromedriver not found: install them with `sudo apt-get install chromium chromium-driver`"
        );
    }

    #[test]
    fn cookie_debug_hides_the_value() {
        let mut c = Cookie::new("session", "very-secret");
        c.http_only = true;
        let dbg = format!("{c:?}");
        assert!(
            dbg.contains("session") && dbg.contains("http_only: true"),
            "{dbg}"
        );
        assert!(!dbg.contains("very-secret"), "{dbg}");
    }

    #[test]
    fn responses_parse_with_content_length_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).unwrap(), (200, b"hello".to_vec()));
        assert_eq!(complete_length(plain), Some(plain.len()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (404, b"abcde".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
