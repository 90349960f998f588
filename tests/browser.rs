//! Real browser tests: headless Chromium ([`palisade::testkit::browser`],
//! over WebDriver) clicking through the pages a person would see.
//!
//! - The `productpage` example (run as a process, its policy file in a
//!   temporary directory, an `OidcLogin` document turning sign-in on) signs
//!   a browser in and out, at the testkit's issuer (its HTML login form) and
//!   at panva's `oidc-provider` (its development login, consent and logout
//!   pages; tests/oidc-provider/server.mjs with `BROWSER_REDIRECT_URIS` set
//!   to productpage's callback), there as a client authenticating with
//!   `private_key_jwt`.
//! - A session outlives its access token by refreshing it at oidc-provider
//!   (refresh tokens bound to the provider's session and rotated at every
//!   use, `BROWSER_SESSION_REFRESH_TOKENS`), until alice signs out there and
//!   the refused refresh sends her browser to sign in again; a logout at
//!   productpage revokes the refresh token at the provider.
//! - oidc-provider's own login and consent pages take a browser to a
//!   loopback redirect URI with `code` and `state`.
//! - The whole bookinfo system (`examples/bookinfo.rs`): signed in, alice's
//!   page shows what details, reviews and ratings answered for her.
//!
//! Screenshots of every step go to `<target>/test-screenshots/` (or
//! `PALISADE_SCREENSHOT_DIR`), named `<test>-<step>-<what>.png`; a failure
//! adds `<test>-failure.png` and the page source, `<test>-failure.html`.
//!
//! The example binaries are built by `cargo test --features full`; when
//! only this test is selected (`--test browser`), build them first with
//! `cargo build --features full --examples`.

use std::cell::Cell;
use std::fmt::Display;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use palisade::testkit::browser::{Browser, Cookie, Element};
use palisade::testkit::{ClientKeyPair, SigningAlgorithm, TestIssuer};
use reqwest::Url;
use serde_json::{Value, json};

mod common;

use common::oidc_provider::{
    self, BROWSER_CLIENT_ID as CLIENT_ID, BROWSER_CLIENT_SECRET as CLIENT_SECRET, free_port,
};

/// How long any one page may take to appear.
const PAGE: Duration = Duration::from_secs(15);
/// productpage's session cookie (the `OidcLogin` default).
const SESSION_COOKIE: &str = "palisade_session";
/// A session key: 32 bytes, hex.
const SESSION_KEY_HEX: &str = "7f3a91c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f";
/// The `aud` of oidc-provider's JWT access tokens (server.mjs's default
/// `AUDIENCE`).
const OIDC_PROVIDER_AUDIENCE: &str = "api://palisade-test";

/// One browser session of a test: numbered screenshots, and on failure a
/// screenshot, the page source and a panic that says where it stopped.
struct Run {
    browser: Browser,
    /// The file name prefix of its screenshots.
    name: &'static str,
    step: Cell<u32>,
}

impl Run {
    fn start(name: &'static str) -> Self {
        Run {
            browser: Browser::start().unwrap_or_else(|e| panic!("{e}")),
            name,
            step: Cell::new(0),
        }
    }

    /// Saves the next numbered screenshot, `NAME-N-what.png`.
    fn shot(&self, what: &str) {
        let n = self.step.get() + 1;
        self.step.set(n);
        match self
            .browser
            .screenshot_to_test_dir(&format!("{}-{n}-{what}", self.name))
        {
            Ok(path) => eprintln!("screenshot: {}", path.display()),
            Err(e) => eprintln!("screenshot {what}: {e}"),
        }
    }

    /// Saves a screenshot and the page source, then panics with `what`,
    /// `detail` and the page.
    fn fail(&self, what: &str, detail: &dyn Display) -> ! {
        let url = self.browser.current_url().unwrap_or_default();
        let source = self.browser.page_source().unwrap_or_default();
        let shot = self
            .browser
            .screenshot_to_test_dir(&format!("{}-failure", self.name));
        let saved = shot.as_ref().ok().map(|png| {
            let html = png.with_extension("html");
            let _ = std::fs::write(&html, &source);
            html
        });
        panic!("{what}: {detail}\nat {url}\nscreenshot {shot:?}, page source {saved:?}:\n{source}");
    }

    fn ok<T, E: Display>(&self, result: Result<T, E>, what: &str) -> T {
        result.unwrap_or_else(|e| self.fail(what, &e))
    }

    fn check(&self, condition: bool, what: impl FnOnce() -> String) {
        if !condition {
            self.fail("check failed", &what());
        }
    }

    fn goto(&self, url: &str) {
        self.ok(self.browser.goto(url), &format!("open {url}"));
    }

    fn wait_for(&self, css: &str) -> Element<'_> {
        self.ok(self.browser.wait_for(css, PAGE), &format!("wait for `{css}`"))
    }

    fn click(&self, css: &str) {
        let element = self.wait_for(css);
        self.ok(element.click(), &format!("click `{css}`"));
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.wait_for(css);
        self.ok(element.send_keys(text), &format!("type into `{css}`"));
    }

    fn text(&self, css: &str) -> String {
        let element = self.wait_for(css);
        self.ok(element.text(), &format!("text of `{css}`"))
    }

    fn wait_for_url(&self, what: &str, done: impl FnMut(&str) -> bool) -> String {
        self.ok(self.browser.wait_for_url(done, PAGE), what)
    }

    fn cookies(&self) -> Vec<Cookie> {
        self.ok(self.browser.cookies(), "read cookies")
    }

    /// The JSON document the browser shows (Chromium puts it in a `pre`).
    fn json(&self) -> Value {
        let text = self.text("pre");
        serde_json::from_str(&text).unwrap_or_else(|e| self.fail("not a JSON page", &e))
    }
}

/// A test's files (`palisade::testkit::TempDir`), written as text.
struct TempDir(palisade::testkit::TempDir);

impl TempDir {
    fn new(what: &str) -> Self {
        TempDir(palisade::testkit::TempDir::new(&format!(
            "palisade-browser-{what}"
        )))
    }

    /// Writes `name` here and returns its path as text.
    fn write(&self, name: &str, content: &str) -> String {
        let path = self.0.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

/// productpage's policy file: bearer tokens of `issuer` for `audience`, a
/// user needed everywhere but `GET /productpage` and `/healthz`, and
/// sign-in at `issuer` as `client_id` (more `OidcLogin` fields in `login`,
/// indented for `spec`). Writes the session key next to it.
fn write_policy(dir: &TempDir, issuer: &str, audience: &str, client_id: &str, login: &str) -> String {
    let key_file = dir.write("session.key", SESSION_KEY_HEX);
    let policy = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  jwtRules:
  - issuer: {issuer}
    audiences: [{audience}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: default}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
  - to: [{{operation: {{methods: [GET], paths: [/productpage, /healthz]}}}}]
---
apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {{name: login, namespace: default}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  issuer: {issuer}
  clientId: {client_id}
  session:
    keys: [{{id: k1, keyFile: {key_file}}}]
{login}"
    );
    dir.write("policy.yaml", &policy)
}

/// Waits until productpage has loaded its issuer's discovery document:
/// until then `/login` answers `503`, not the redirect.
async fn wait_for_sign_in(base: &str) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("{base}/login?return_to=/productpage");
    let deadline = Instant::now() + PAGE;
    loop {
        let status = client.get(&url).send().await.map(|r| r.status().as_u16());
        if status.as_ref().is_ok_and(|s| *s == 302) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "productpage's sign-in did not become ready: GET {url} answered {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The signed-out product page: a sign-in link and nobody named.
fn expect_signed_out_page(run: &Run) {
    run.wait_for("#sign-in");
    let users = run.ok(run.browser.find_all("#user"), "look for #user");
    run.check(users.is_empty(), || "a user is shown before sign-in".into());
}

/// The session cookie, `HttpOnly` and `SameSite=Lax`; the login-state
/// cookie gone.
fn expect_session_cookie(run: &Run) {
    let cookies = run.cookies();
    let session = cookies
        .iter()
        .find(|c| c.name == SESSION_COOKIE)
        .unwrap_or_else(|| run.fail("no session cookie", &format!("{cookies:?}")));
    run.check(session.http_only, || {
        format!("the session cookie is not HttpOnly: {session:?}")
    });
    run.check(session.same_site.as_deref() == Some("Lax"), || {
        format!("the session cookie is not SameSite=Lax: {session:?}")
    });
    run.check(session.path.as_deref() == Some("/"), || {
        format!("the session cookie's path is not /: {session:?}")
    });
    let login = format!("{SESSION_COOKIE}_login_");
    run.check(!cookies.iter().any(|c| c.name.starts_with(&login)), || {
        format!("the login-state cookie outlived the sign-in: {cookies:?}")
    });
}

fn expect_no_session_cookie(run: &Run) {
    let cookies = run.cookies();
    run.check(!cookies.iter().any(|c| c.name == SESSION_COOKIE), || {
        format!("the session cookie outlived the logout: {cookies:?}")
    });
}

/// Whether `url` is `base` + `/` (with a query at most).
fn is_root_of(url: &str, base: &str) -> bool {
    url.strip_prefix(base)
        .is_some_and(|rest| rest == "/" || rest.starts_with("/?"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_at_the_testkit_issuer_and_out_again() {
    let issuer = TestIssuer::builder()
        .default_audience("productpage")
        .public_client("productpage")
        .user("alice", "alice-pw", &["reader"])
        .start()
        .unwrap();
    // The login form, not an instant sign-in.
    issuer.sign_in_as(None);
    let dir = TempDir::new("testkit");
    let config = write_policy(&dir, issuer.issuer(), "productpage", "productpage", "");
    let svc = common::start("productpage", &["--config", &config]);
    let base = format!("http://{}", svc.addr);
    wait_for_sign_in(&base).await;
    let authorize = issuer.authorization_endpoint();

    tokio::task::block_in_place(|| {
        let run = Run::start("productpage-testkit");

        // Signed out: the product, with a sign-in link.
        run.goto(&format!("{base}/productpage"));
        expect_signed_out_page(&run);
        run.shot("before-sign-in");

        // The link goes to the issuer's login form.
        run.click("#sign-in");
        run.wait_for_url("the issuer's login form", |u| u.starts_with(&authorize));
        run.type_into("#username", "alice");
        run.type_into("#password", "alice-pw");
        run.shot("login-form");
        run.click("#kc-login");

        // Back on the product page, signed in.
        run.wait_for_url("back at /productpage", |u| u == format!("{base}/productpage"));
        let user = run.text("#user");
        run.check(user == "alice", || format!("#user shows {user:?}"));
        run.wait_for("#sign-out");
        run.shot("signed-in");
        expect_session_cookie(&run);

        // The session speaks for alice, with her realm role.
        run.goto(&format!("{base}/whoami"));
        let me = run.json();
        run.shot("whoami");
        run.check(me["methods"] == json!(["session"]), || format!("{me}"));
        run.check(me["subject"] == "alice", || format!("{me}"));
        run.check(
            me["request_principal"] == format!("{}/alice", issuer.issuer()),
            || format!("{me}"),
        );
        run.check(
            me["realm_roles"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("reader"))),
            || format!("{me}"),
        );

        // A logout another site starts (here a page of an opaque origin
        // with a link to it: Sec-Fetch-Site cross-site) ends nothing and
        // asks to confirm.
        run.goto(&format!(
            "data:text/html;charset=utf-8,%3Ca%20id%3D%22elsewhere%22%20href%3D%22{base}/logout%22%3Eout%3C/a%3E"
        ));
        run.click("#elsewhere");
        run.wait_for_url("the logout confirmation", |u| u == format!("{base}/logout"));
        run.wait_for("form[method=post] #sign-out");
        run.shot("logout-confirmation");
        expect_session_cookie(&run);

        // Confirmed: the form posts from this origin and the session ends
        // here, then at the issuer, which sends the browser to
        // productpage's post-logout URI, `/` (the page's policy lets the
        // post's redirect to the issuer through). That page needs a user,
        // so productpage sends the browser on to sign in (one more
        // authorization request); either is where a logout may end.
        let authorizations = issuer.authorization_requests();
        run.click("#sign-out");
        let after = run.wait_for_url("productpage's / after logout", |u| {
            is_root_of(u, &base) || u.starts_with(&authorize)
        });
        run.shot("after-logout");
        if after.starts_with(&authorize) {
            run.wait_for("#username");
            run.check(issuer.authorization_requests() == authorizations + 1, || {
                "the login form after logout does not come from productpage's /".into()
            });
        }
        expect_no_session_cookie(&run);
        let ends = issuer.end_session_requests();
        let end = ends
            .last()
            .unwrap_or_else(|| run.fail("logout", &"the issuer's end-session endpoint was not called"));
        run.check(
            end.post_logout_redirect_uri.as_deref() == Some(&format!("{base}/")),
            || format!("{end:?}"),
        );
        run.check(end.id_token_hint.is_some(), || format!("{end:?}"));
        run.check(end.client_id.as_deref() == Some("productpage"), || {
            format!("{end:?}")
        });

        // The session is gone: a page that needs a user starts a sign-in.
        run.goto(&format!("{base}/whoami"));
        run.wait_for_url("the issuer's login form again", |u| u.starts_with(&authorize));
        run.wait_for("#username");
        run.shot("login-form-again");
    });
    drop(svc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_at_oidc_provider() {
    // The provider must know productpage's callback before it starts, and
    // productpage needs the provider's address: take productpage's port first.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // productpage authenticates with `private_key_jwt`: the provider has
    // its public key, productpage signs its client assertions.
    let key = ClientKeyPair::generate(SigningAlgorithm::Es256).unwrap();
    let client = json!({
        "post_logout_redirect_uris": [format!("{base}/")],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [key.public_jwk]},
    })
    .to_string();
    let op = oidc_provider::start_anywhere(&[
        ("BROWSER_REDIRECT_URIS", &format!("{base}/oauth2/callback")),
        ("BROWSER_CLIENT", &client),
        ("BROWSER_OPAQUE_ACCESS_TOKENS", "1"),
    ]);
    let dir = TempDir::new("oidc-provider");
    let key_file = dir.write("client-key.pem", &key.private_key_pem);
    let config = write_policy(
        &dir,
        &op.issuer,
        OIDC_PROVIDER_AUDIENCE,
        CLIENT_ID,
        &format!(
            "  clientKey: {{keyFile: {key_file}, algorithm: {}, keyId: {}}}\n  scopes: [openid]\n",
            key.algorithm, key.public_jwk["kid"]
        ),
    );
    let listen = format!("127.0.0.1:{port}");
    let svc = common::start("productpage", &["--config", &config, "--listen", &listen]);
    assert_eq!(svc.port, port);
    wait_for_sign_in(&base).await;
    let issuer = op.issuer.clone();

    tokio::task::block_in_place(|| {
        let run = Run::start("productpage-oidc-provider");

        run.goto(&format!("{base}/productpage"));
        expect_signed_out_page(&run);
        run.shot("before-sign-in");

        sign_in_at_oidc_provider(&run, &issuer, &base);
        // As alice: the ID token's subject (the access token is opaque).
        let user = run.text("#user");
        run.check(user == "alice", || format!("#user shows {user:?}"));
        run.shot("signed-in");
        expect_session_cookie(&run);

        run.goto(&format!("{base}/whoami"));
        let me = run.json();
        run.shot("whoami");
        run.check(me["methods"] == json!(["session"]), || format!("{me}"));
        run.check(me["request_principal"] == format!("{issuer}/alice"), || {
            format!("{me}")
        });
        // The ID token's claims: its audience is the client.
        run.check(me["audiences"] == json!([CLIENT_ID]), || format!("{me}"));

        // Sign out: oidc-provider asks to confirm.
        run.goto(&format!("{base}/productpage"));
        run.click("#sign-out");
        run.wait_for("button[name=logout][value=yes]");
        run.shot("logout-confirmation");
        run.click("button[name=logout][value=yes]");
        // To productpage's `/`, which needs a user: on to sign in again,
        // at the provider's login page (its logout refuses a
        // post-logout URI the client did not register).
        let after = run.wait_for_url("productpage's / after logout", |u| {
            is_root_of(u, &base) || u.starts_with(&format!("{issuer}/interaction/"))
        });
        if !is_root_of(&after, &base) {
            run.wait_for("input[name=login]");
        }
        run.shot("after-logout");
        expect_no_session_cookie(&run);

        // Gone here and at the provider: a sign-in starts from its login page.
        run.goto(&format!("{base}/whoami"));
        run.wait_for_url("oidc-provider's login page again", |u| u.starts_with(&issuer));
        run.wait_for("input[name=login]");
        run.shot("login-again");
    });
    drop(svc);
    drop(op);
}

/// From productpage's sign-in link, alice signs in at oidc-provider's
/// development login page (any login and password) and its consent page,
/// and is back on the product page.
fn sign_in_at_oidc_provider(run: &Run, issuer: &str, base: &str) {
    run.click("#sign-in");
    run.wait_for_url("oidc-provider's login page", |u| u.starts_with(issuer));
    run.type_into("input[name=login]", "alice");
    run.type_into("input[name=password]", "any password");
    run.shot("login");
    run.click("button[type=submit]");
    run.wait_for("input[name=prompt][value=consent]");
    run.shot("consent");
    run.click("button[type=submit]");
    run.wait_for_url("back at /productpage", |u| u == format!("{base}/productpage"));
}

/// A session outlives its access token by refreshing it at oidc-provider,
/// whose refresh tokens are bound to the user's session there and rotated
/// at every use (as Keycloak's with "Revoke Refresh Token"): each refresh
/// must use the token the last one returned, or the provider refuses it
/// and ends the grant. Once the user's session at the provider ends, the
/// next refresh is refused and the browser is sent to sign in again. A
/// logout at the service revokes the session's refresh token at the
/// provider (RFC 7009, `revokeOnLogout`), whether or not the user
/// confirms the provider's own logout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_refreshed_at_oidc_provider_until_the_provider_ends_it() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // Access tokens for 8 s: sign-in refreshes a token granted for less
    // than its lead (30 s) once half its lifetime has passed.
    let op = oidc_provider::start_anywhere(&[
        ("BROWSER_REDIRECT_URIS", &format!("{base}/oauth2/callback")),
        ("BROWSER_SESSION_REFRESH_TOKENS", "1"),
        ("ACCESS_TOKEN_TTL", "8"),
    ]);
    let dir = TempDir::new("oidc-provider-refresh");
    let secret = dir.write("client-secret", CLIENT_SECRET);
    let config = write_policy(
        &dir,
        &op.issuer,
        OIDC_PROVIDER_AUDIENCE,
        CLIENT_ID,
        &format!("  clientSecretFile: {secret}\n  scopes: [openid]\n  revokeOnLogout: true\n"),
    );
    let listen = format!("127.0.0.1:{port}");
    let svc = common::start("productpage", &["--config", &config, "--listen", &listen]);
    assert_eq!(svc.port, port);
    wait_for_sign_in(&base).await;
    let issuer = op.issuer.clone();
    let rt = tokio::runtime::Handle::current();
    // (succeeded, failed) refresh_token grants at the provider.
    let refreshes = || {
        let v = rt.block_on(op.counted("refreshes"));
        (v["succeeded"].as_u64().unwrap(), v["failed"].as_u64().unwrap())
    };
    let half_a_token = || std::thread::sleep(Duration::from_secs(5));
    // Refresh tokens the provider's revocation endpoint ended.
    let revoked = || {
        rt.block_on(op.counted("revocations"))["refresh_tokens"]
            .as_u64()
            .unwrap()
    };

    tokio::task::block_in_place(|| {
        let run = Run::start("productpage-oidc-provider-refresh");
        run.goto(&format!("{base}/productpage"));
        sign_in_at_oidc_provider(&run, &issuer, &base);
        run.check(run.text("#user") == "alice", || "alice is not shown".into());
        run.shot("signed-in");
        assert_eq!(refreshes(), (0, 0), "nothing to refresh yet");

        // Past half the access token's life: the next request refreshes it,
        // then again with the token that refresh returned.
        for n in 1..=2 {
            half_a_token();
            run.goto(&format!("{base}/whoami"));
            let me = run.json();
            run.check(me["methods"] == json!(["session"]), || {
                format!("refresh {n}: {me}")
            });
            run.check(me["request_principal"] == format!("{issuer}/alice"), || {
                format!("refresh {n}: {me}")
            });
            assert_eq!(refreshes(), (n, 0), "refresh {n}");
        }
        run.shot("refreshed");

        // alice signs out at the provider alone: the refresh token ends
        // with her session there.
        run.goto(&format!("{issuer}/session/end"));
        run.click("button[name=logout][value=yes]");
        run.wait_for_url("the provider's signed-out page", |u| {
            u.ends_with("/session/end/success")
        });
        run.shot("signed-out-at-the-provider");
        half_a_token();
        run.goto(&format!("{base}/whoami"));
        run.wait_for_url("oidc-provider's login page again", |u| u.starts_with(&issuer));
        run.wait_for("input[name=login]");
        run.shot("sign-in-again");
        assert_eq!(
            refreshes(),
            (2, 1),
            "the refresh after the provider's logout is refused"
        );
        expect_no_session_cookie(&run);

        // Signed in again, alice signs out at productpage, and her logout
        // at the provider does not happen (this client registered no
        // post-logout URI: the provider's error page): productpage revoked
        // the session's refresh token at the provider all the same.
        run.goto(&format!("{base}/productpage"));
        sign_in_at_oidc_provider(&run, &issuer, &base);
        assert_eq!(revoked(), 0, "nothing revoked yet");
        run.click("#sign-out");
        run.wait_for_url("the provider's logout", |u| {
            u.starts_with(&format!("{issuer}/session/end"))
        });
        run.shot("at-the-providers-logout");
        assert_eq!(revoked(), 1, "the refresh token is revoked at the provider");
    });
    drop(svc);
    drop(op);
}

/// The redirect target: a loopback server answering every request with a
/// small page, and sending each request target (path and query) on a
/// channel.
fn serve_callback() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}/callback", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let tx = tx.clone();
            // One thread a connection: Chromium opens spare ones it may never use.
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                if let Some(target) = line.split(' ').nth(1) {
                    let _ = tx.send(target.to_owned());
                }
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let page = "<!doctype html><title>Callback</title><p id=done>back at the client</p>";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
            });
        }
    });
    (uri, rx)
}

/// Drives the browser from the authorization request to the redirect URI:
/// the final URL, and the provider's session cookie's `HttpOnly`.
fn sign_in(authorize: &str, redirect_uri: &str) -> (String, bool) {
    let run = Run::start("oidc-provider");

    // The provider redirects to its login page (devInteractions).
    run.goto(authorize);
    run.wait_for("input[name=login]");
    let title = run.text(".login-card h1");
    run.check(title == "Sign-in", || format!("login page title {title:?}"));
    run.shot("login");
    run.type_into("input[name=login]", "alice");
    run.type_into("input[name=password]", "any password");
    run.click("button[type=submit]");

    // Then asks to consent to the client's access.
    run.wait_for("input[name=prompt][value=consent]");
    let title = run.text(".login-card h1");
    run.check(title == "Authorize", || format!("consent page title {title:?}"));
    run.shot("consent");
    run.click("button[type=submit]");

    // And sends the browser back to the client with the code.
    let url = run.wait_for_url("redirect to the client", |u| u.starts_with(redirect_uri));
    run.wait_for("#done");
    run.shot("callback");

    // Cookies ignore ports: the provider's session on 127.0.0.1 is visible here.
    let cookies = run.cookies();
    let session = cookies
        .iter()
        .find(|c| c.name == "_session")
        .unwrap_or_else(|| run.fail("no oidc-provider session cookie", &format!("{cookies:?}")));
    (url, session.http_only)
}

fn query(url: &str) -> Vec<(String, String)> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'q>(query: &'q [(String, String)], name: &str) -> Option<&'q str> {
    query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_in_through_oidc_provider_login_and_consent_pages() {
    let (redirect_uri, requests) = serve_callback();
    let op = oidc_provider::start_anywhere(&[("BROWSER_REDIRECT_URIS", &redirect_uri)]);
    let state = format!("st{}", std::process::id());
    let mut authorize = Url::parse(&format!("{}/auth", op.issuer)).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid")
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("state", &state)
        .append_pair("nonce", "n-0S6_WzA2Mj");
    let (url, session_http_only) = tokio::task::block_in_place(|| sign_in(authorize.as_str(), &redirect_uri));

    let q = query(&url);
    let code = param(&q, "code").unwrap_or_else(|| panic!("no code in {url}"));
    assert!(!code.is_empty());
    assert_eq!(param(&q, "state"), Some(state.as_str()), "{url}");
    // RFC 9207: the provider names itself in the response.
    assert_eq!(param(&q, "iss"), Some(op.issuer.as_str()), "{url}");
    assert!(session_http_only, "oidc-provider's session cookie is HttpOnly");
    // The client's server saw the same request.
    let seen: Vec<String> = requests.try_iter().collect();
    assert!(
        seen.iter().any(|t| t.starts_with("/callback?")
            && query(&format!("http://x{t}")).contains(&("code".into(), code.into()))),
        "{seen:?}"
    );

    // The code is good at the token endpoint: the client really is usable
    // by a relying party.
    let tokens: Value = reqwest::Client::new()
        .post(format!("{}/token", op.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            Url::parse("http://x/")
                .unwrap()
                .query_pairs_mut()
                .append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", &redirect_uri)
                .finish()
                .query()
                .unwrap_or_default()
                .to_owned(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id_token = tokens["id_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no id_token: {tokens}"));
    assert_eq!(id_token.split('.').count(), 3);
    assert!(tokens["access_token"].is_string(), "{tokens}");
}

/// The bookinfo system (`examples/bookinfo.rs`) as a person uses it: alice
/// signs in at productpage, whose page then shows the details and the
/// reviews with their stars, fetched on her behalf from details, reviews
/// and, through reviews, ratings, over mutual TLS with her token relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_to_bookinfo_and_sees_every_service_answer_for_alice() {
    let (_launcher, base, _) = common::start_bookinfo();
    let pp = format!("http://127.0.0.1:{}", base + 2);
    tokio::task::block_in_place(|| {
        let run = Run::start("bookinfo");
        run.goto(&format!("{pp}/productpage"));
        expect_signed_out_page(&run);
        // Signed out, the back-ends are not called for anyone: no token.
        let reviews = run.text("#reviews p");
        run.check(reviews.contains("401"), || format!("#reviews shows {reviews:?}"));
        run.shot("signed-out");

        run.click("#sign-in");
        run.wait_for("#username");
        run.type_into("#username", "alice");
        run.type_into("#password", "alice");
        run.shot("login-form");
        run.click("#kc-login");

        run.wait_for_url("back at /productpage", |u| u == format!("{pp}/productpage"));
        let user = run.text("#user");
        run.check(user == "alice", || format!("#user shows {user:?}"));
        let details = run.text("#details p");
        run.check(!details.contains("unavailable"), || {
            format!("#details shows {details:?}")
        });
        let reviews = run.text("#reviews p");
        run.check(reviews.contains("Reviewer1: ★★★★★"), || {
            format!("#reviews shows {reviews:?}")
        });
        run.shot("signed-in");
    });
}
