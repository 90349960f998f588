//! Palisade's browser sign-in next to the reference OpenID Connect relying
//! party: the same requests to Apache httpd with mod_auth_openidc
//! ([`ApacheOpenidc`]) and to Palisade (`palisade-signin` in an in-process
//! axum app, configured by a policy file), each signing in at a real
//! provider: panva's `oidc-provider` (tests/oidc-provider/server.mjs, with
//! `BROWSER_REDIRECT_URIS` set to the relying party's redirect URI, client
//! `palisade-browser` with a secret, the development login and consent
//! pages, and `BROWSER_BACKCHANNEL_LOGOUT=1` with the relying party's
//! post-logout and back-channel logout URIs registered for the client).
//!
//! The provider runs twice, once for each relying party: redirect and
//! post-logout URIs are lists, but a client has one `backchannel_logout_uri`
//! (OpenID Connect Back-Channel Logout 1.0, section 2.2), so one client
//! cannot send logout tokens to both.
//!
//! Cases: (a) a navigation and (b) an API call without a session; the
//! callback (c) with a wrong state and (d) without the state cookie; (e) a
//! sign-in; (f) requests with the session; (g) a tampered session cookie;
//! (h) logout; (i) the old session cookie after logout; (j) return URLs to
//! another origin (mod_auth_openidc's `target_link_uri` and `logout=`,
//! Palisade's `/login?return_to=`); (k) a bad back-channel logout token; (l)
//! a back-channel logout from the provider, and a new sign-in right after
//! it; (m) two sign-ins at once in one browser (two tabs).
//!
//! A plain HTTP client plays the browser: no redirect is followed and
//! cookies are kept by hand, so every answer can be recorded. The test
//! asserts what each server must do and prints the two answers side by
//! side as a Markdown table (run with `--nocapture`), for
//! docs/signin-vs-mod-auth-openidc.md. Some expectations are checked
//! after the table is printed, so a failing run still shows every answer.
//!
//! Apache, mod_auth_openidc, node and oidc-provider are required: when one
//! is missing the test fails with the line to install it, it is never
//! skipped. Palisade's side needs the `signin` feature (`--features full`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Html;
use palisade::axum::{ConnectAddrs, PalisadeLayer};
use palisade::core::policy::{PolicySet, Workload};
use palisade::prelude::Identity;
use palisade::testkit::apache::ApacheOpenidc;
use reqwest::redirect::Policy;
use reqwest::{Method, Url};
use serde_json::{Value, json};

mod common;

use common::oidc_provider::{self, OidcProvider, free_port};

/// The browser client server.mjs registers when `BROWSER_REDIRECT_URIS` is set.
const CLIENT_ID: &str = oidc_provider::BROWSER_CLIENT_ID;
const CLIENT_SECRET: &str = oidc_provider::BROWSER_CLIENT_SECRET;
/// The `aud` of server.mjs's JWT access tokens (its default `AUDIENCE`).
const AUDIENCE: &str = "api://palisade-test";
/// mod_auth_openidc's cookie names (its defaults).
const APACHE_SESSION: &str = "mod_auth_openidc_session";
const APACHE_STATE_PREFIX: &str = "mod_auth_openidc_state_";
/// Palisade's cookie names (the `OidcLogin` defaults).
const PALISADE_SESSION: &str = "palisade_session";
/// Palisade's login-state cookies: one per sign-in, named after the first
/// characters of its `state`.
const PALISADE_LOGIN_PREFIX: &str = "palisade_session_login_";
/// Both servers' callback path (Apache's `OIDCRedirectURI`, Palisade's
/// default `callbackPath`).
const CALLBACK_PATH: &str = "/oauth2/callback";
/// Palisade's default `backchannelLogoutPath`.
const BACKCHANNEL_PATH: &str = "/oauth2/backchannel-logout";
/// Palisade's session key (32 bytes, hex).
const SESSION_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Sent on every request: mod_auth_openidc binds the state to it.
const USER_AGENT: &str = "palisade-signin-apache-test";
const NAVIGATION: &str = "text/html,application/xhtml+xml";
const API: &str = "application/json";

/// One row of the comparison: what is asked, and why the answers differ.
struct Step {
    id: &'static str,
    case: &'static str,
    request: &'static str,
    why: &'static str,
}

/// The rows of the table, in order. Each server's part of the test records
/// its answer to every step under the step's `id`.
const STEPS: &[Step] = &[
    Step {
        id: "a",
        case: "a",
        request: "`GET /productpage`, Accept: text/html, no session",
        why: "Same flow. Both name a cookie after each state (several sign-ins can run, see m); mod_auth_openidc sets no `SameSite` (`OIDCCookieSameSite` is off by default in 2.4.12); Palisade's login-state cookie, also one per sign-in, is sealed with AES-256-GCM, `SameSite=Lax`, 10 minutes.",
    },
    Step {
        id: "b1",
        case: "b",
        request: "`GET /api/x`, Accept: application/json, no session",
        why: "mod_auth_openidc's `OIDCUnAuthAction 401` sends no challenge (RFC 9110 requires one with 401); Palisade answers with the guard's 401, the `Bearer` challenge of the `RequestAuthentication` and a problem body.",
    },
    Step {
        id: "b2",
        case: "b",
        request: "`GET /productpage`, Accept: application/json, no session",
        why: "Both tell an API call from a navigation by its headers (mod_auth_openidc by its XHR guess, Palisade by `Sec-Fetch-Mode: navigate` or a `GET` accepting `text/html`); the challenge differs as in b.",
    },
    Step {
        id: "c",
        case: "c",
        request: "callback `GET /oauth2/callback?code&state&iss` with this browser's state cookie, a `state` that is not its",
        why: "Same status. A `state` names its own login-state cookie in both (mod_auth_openidc `mod_auth_openidc_state_<state>`, Palisade `NAME_login_<first 12 characters of state>`), so a `state` that is not this browser's finds no cookie: both refuse and leave the browser's other sign-ins alone. mod_auth_openidc shows its Apache error page, Palisade a problem body.",
    },
    Step {
        id: "d",
        case: "d",
        request: "callback `GET /oauth2/callback?code&state&iss` with the right `state`, no state cookie",
        why: "Same status; error page vs problem body. Nothing is cleared: the cookie that `state` names is not there.",
    },
    Step {
        id: "e",
        case: "e",
        request: "callback `GET /oauth2/callback?code&state&iss` from the provider after login and consent, with the state cookie",
        why: "Same outcome. mod_auth_openidc's session cookie (`OIDCSessionType server-cache`) holds a session id, the session is in Apache's shared memory; Palisade's holds the whole session sealed with AES-256-GCM, `SameSite=Lax`. Apache redirects to an absolute URL, Palisade to the path.",
    },
    Step {
        id: "f1",
        case: "f",
        request: "`GET /whoami` with the session cookie",
        why: "The user's name: mod_auth_openidc's `REMOTE_USER` is `sub@issuer` (`OIDCRemoteUserClaim sub@`); Palisade's identity is Istio's request principal `issuer/sub`, as for a bearer token, so one `requestPrincipals` rule covers both.",
    },
    Step {
        id: "f2",
        case: "f",
        request: "`GET /api/x`, Accept: application/json, with the session cookie",
        why: "As above.",
    },
    Step {
        id: "f3",
        case: "f",
        request: "`GET /productpage` with the session cookie",
        why: "As above.",
    },
    Step {
        id: "g1",
        case: "g",
        request: "`GET /whoami`, the session cookie's last character changed",
        why: "Same: no session, the stale cookie is cleared, a new sign-in starts (no cached session with that id; a seal that does not authenticate).",
    },
    Step {
        id: "g2",
        case: "g",
        request: "`GET /api/x`, Accept: application/json, the tampered session cookie",
        why: "Palisade clears a stale cookie when it starts a new sign-in, not on an API call's 401 (which carries the challenge as in b); mod_auth_openidc clears it on any request.",
    },
    Step {
        id: "h1",
        case: "h",
        request: "`GET /logout` with the session cookie",
        why: "mod_auth_openidc has no logout path: its logout is the redirect URI with `?logout=<url>` (here Apache's `/logout` redirects there). Palisade's `logoutPath` ends the session and redirects to the provider in one step, with `client_id` too.",
    },
    Step {
        id: "h2",
        case: "h",
        request: "`GET /oauth2/callback?logout=<…/loggedout>` with the session cookie (where Apache's `/logout` points)",
        why: "Palisade's logout takes no return URL from the request: `postLogoutRedirectUri` is fixed in the policy (nothing to validate, see j).",
    },
    Step {
        id: "h3",
        case: "h",
        request: "where the provider sends the browser after its logout: Apache `GET /loggedout`, Palisade `GET /` (its default `postLogoutRedirectUri`)",
        why: "Configuration: Apache's test server has a public `/loggedout`; Palisade's default `postLogoutRedirectUri` is `/`, which needs a user here, so the browser goes straight back to the provider's login page.",
    },
    Step {
        id: "i1",
        case: "i",
        request: "`GET /whoami` with the session cookie saved from before logout",
        why: "Same: the saved cookie is refused. mod_auth_openidc deleted the session from its cache; Palisade's cookie still opens, so Palisade recorded the session id as ended in its `SessionStore` (until the absolute timeout).",
    },
    Step {
        id: "i2",
        case: "i",
        request: "`GET /api/x`, Accept: application/json, the saved session cookie",
        why: "As g.",
    },
    Step {
        id: "j1",
        case: "j",
        request: "a return URL on another host, `http://evil.example/`: Apache `GET /oauth2/callback?iss&target_link_uri=…` (a third-party-initiated login), Palisade `GET /login?return_to=…`",
        why: "Both refuse. mod_auth_openidc sends its error pages with status 200 (the status it means is only in the access log); Palisade answers 400. Its return URL is `/login?return_to=`, a path of this origin, or a page of a `trustedOrigins` origin (none here).",
    },
    Step {
        id: "j2",
        case: "j",
        request: "the same, on another port of this host: `http://127.0.0.1:1/`",
        why: "Both refuse (mod_auth_openidc only because `OIDCRedirectURLsAllowed` is set to Apache's origin: its default accepts any port of the same host name); Palisade compares whole origins.",
    },
    Step {
        id: "j3",
        case: "j",
        request: "the same, on this server: `<origin>/productpage`",
        why: "Same: a URL on this server is accepted (Palisade takes it as its path).",
    },
    Step {
        id: "j4",
        case: "j",
        request: "the same, scheme-relative: `//evil.example/`",
        why: "Both refuse; status 200 error page vs 400.",
    },
    Step {
        id: "j5",
        case: "j",
        request: "a logout return URL on another host, no session: Apache `GET /oauth2/callback?logout=http://evil.example/`, Palisade `GET /logout?return_to=http://evil.example/`",
        why: "Palisade has no logout return URL to refuse: it ignores the parameter and goes to its `postLogoutRedirectUri`. mod_auth_openidc checks `logout=` against `OIDCRedirectURLsAllowed` and shows an error page with status 200.",
    },
    Step {
        id: "k",
        case: "k",
        request: "back-channel logout, `logout_token=not-a-jwt`: Apache `POST /oauth2/callback?logout=backchannel`, Palisade `POST /oauth2/backchannel-logout`",
        why: "Same status (Back-Channel Logout 1.0, 2.8); Apache's error page vs the OAuth error JSON.",
    },
    Step {
        id: "l1",
        case: "l",
        request: "the provider's back-channel logout `POST` (a logout token) after the user logged out at the provider, as the server's access log has it",
        why: "Same. oidc-provider's logout tokens here carry `sub` only (no `backchannel_logout_session_required`), so both end every session of the user.",
    },
    Step {
        id: "l2",
        case: "l",
        request: "`GET /whoami` with the session cookie, after the back-channel logout",
        why: "Same: mod_auth_openidc deleted the session from its cache; Palisade recorded a revocation of the user's sessions in its `SessionStore`.",
    },
    Step {
        id: "l3",
        case: "l",
        request: "a new sign-in right after the back-channel logout, in the same wall-clock second, then `GET /whoami` with its session cookie",
        why: "Same: a `sub`-only logout token ends the sessions that existed when it came (Palisade compares creation times in milliseconds), not a sign-in that follows it.",
    },
    Step {
        id: "m1",
        case: "m",
        request: "two sign-ins in one browser (two tabs opened without a session): `GET /productpage`, then `GET /whoami`; the provider's callback for the first",
        why: "Same: each sign-in has its own state cookie, so every tab signs in and returns to its own page. mod_auth_openidc caps them with `OIDCStateMaxNumberOfCookies` (7, none deleted by default); Palisade keeps at most four and drops the oldest when a fifth starts.",
    },
    Step {
        id: "m2",
        case: "m",
        request: "then the provider's callback for the second",
        why: "Same, and each callback clears only its own state cookie.",
    },
];

/// Starts oidc-provider on `port` with the browser client registered for
/// `redirect_uri`, its metadata merged with `client` (post-logout and
/// back-channel logout URIs), back-channel logout on.
fn start_provider(port: u16, redirect_uri: &str, client: &Value) -> OidcProvider {
    oidc_provider::start(
        port,
        &[
            ("BROWSER_REDIRECT_URIS", redirect_uri),
            ("BROWSER_CLIENT", &client.to_string()),
            ("BROWSER_BACKCHANNEL_LOGOUT", "1"),
        ],
    )
}

/// One answer, as recorded.
struct Answer {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    remote_user: Option<String>,
    www_authenticate: Option<String>,
    body: String,
}

impl Answer {
    /// The `Set-Cookie` of the cookie `name`.
    fn cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies
            .iter()
            .map(String::as_str)
            .find(|c| c.split('=').next() == Some(name))
    }

    /// The first `Set-Cookie` whose name starts with `prefix` (a state
    /// cookie of either server).
    fn cookie_starting(&self, prefix: &str) -> Option<&str> {
        self.set_cookies
            .iter()
            .map(String::as_str)
            .find(|c| c.split('=').next().is_some_and(|n| n.starts_with(prefix)))
    }

    /// Whether this answer removes the cookie `name` from the browser.
    fn clears(&self, name: &str) -> bool {
        let mut jar = Jar::default().with(name, "x");
        jar.store(self);
        jar.get(name).is_none()
    }
}

/// Cookies by name, as a browser would keep them for one host (paths are
/// ignored: every cookie goes with every request).
#[derive(Clone, Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn store(&mut self, answer: &Answer) {
        for c in &answer.set_cookies {
            let pair = c.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let lower = c.to_ascii_lowercase();
            if value.is_empty() || lower.contains("max-age=0") || lower.contains("expires=thu, 01 jan 1970") {
                self.0.remove(name.trim());
            } else {
                self.0.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }

    fn header(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| {
            self.0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn with(&self, name: &str, value: &str) -> Jar {
        let mut jar = self.clone();
        jar.0.insert(name.to_owned(), value.to_owned());
        jar
    }
}

/// Sends one request; never follows a redirect.
async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    accept: &str,
    jar: &Jar,
    form: Option<String>,
) -> Answer {
    let mut req = client.request(method, url).header("accept", accept);
    if let Some(cookies) = jar.header() {
        req = req.header("cookie", cookies);
    }
    if let Some(body) = form {
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
    }
    let res = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    let location = header("location");
    let remote_user = header("x-remote-user");
    let www_authenticate = header("www-authenticate");
    let set_cookies = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect();
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    Answer {
        status,
        location,
        set_cookies,
        remote_user,
        www_authenticate,
        body,
    }
}

fn encode_form(pairs: &[(&str, &str)]) -> String {
    let mut url = Url::parse("http://x/").unwrap();
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_owned()
}

fn query(url: &Url) -> Vec<(String, String)> {
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The value of `attr="…"` in an HTML tag, `&amp;` decoded.
fn attr(tag: &str, attr: &str) -> Option<String> {
    let start = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].replace("&amp;", "&"))
}

/// Submits the provider's page: the login form (as `alice`), the consent
/// form, or the logout confirmation. Returns the answer to the `POST`.
async fn submit(op: &reqwest::Client, page_url: &Url, page: &str, jar: &Jar) -> Answer {
    let form_start = page
        .find("<form")
        .unwrap_or_else(|| panic!("no form on {page_url}:\n{page}"));
    let form_tag = &page[form_start..page[form_start..].find('>').unwrap() + form_start];
    let action = page_url
        .join(&attr(form_tag, "action").unwrap_or_default())
        .unwrap();
    let mut fields: Vec<(String, String)> = Vec::new();
    for input in page.split("<input").skip(1) {
        let tag = &input[..input.find('>').unwrap_or(input.len())];
        let Some(name) = attr(tag, "name") else { continue };
        let value = match name.as_str() {
            "login" => "alice".to_owned(),
            "password" => "any password".to_owned(),
            _ => attr(tag, "value").unwrap_or_default(),
        };
        fields.push((name, value));
    }
    // oidc-provider's logout confirmation: the button names the choice.
    if page.contains("name=\"logout\"") {
        fields.push(("logout".to_owned(), "yes".to_owned()));
    }
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    send(
        op,
        Method::POST,
        action.as_str(),
        NAVIGATION,
        jar,
        Some(encode_form(&pairs)),
    )
    .await
}

/// Goes through the provider from `url` (an authorization or end-session
/// request) as a user would, signing in and consenting, until the provider
/// redirects to a URL starting with `until`; returns that URL.
async fn through_provider(op: &reqwest::Client, jar: &mut Jar, url: &str, until: &str) -> Url {
    let mut url = Url::parse(url).unwrap();
    let mut answer = send(op, Method::GET, url.as_str(), NAVIGATION, jar, None).await;
    for _ in 0..20 {
        jar.store(&answer);
        match answer.status {
            302 | 303 => {
                let next = url.join(answer.location.as_deref().unwrap()).unwrap();
                if next.as_str().starts_with(until) {
                    return next;
                }
                url = next;
                answer = send(op, Method::GET, url.as_str(), NAVIGATION, jar, None).await;
            }
            200 => answer = submit(op, &url, &answer.body, jar).await,
            other => panic!("the provider answered {other} at {url}:\n{}", answer.body),
        }
    }
    panic!("the provider did not send the browser to {until}");
}

/// Signs in as a browser would from a navigation to `base/productpage`: to
/// the provider, through its login and consent pages, back to `callback`
/// with the cookies the first answer set (the state cookie). Returns the
/// relying party's answer to the callback.
async fn sign_in(
    client: &reqwest::Client,
    op: &reqwest::Client,
    op_jar: &mut Jar,
    base: &str,
    callback: &str,
) -> Answer {
    let mut jar = Jar::default();
    let url = format!("{base}/productpage");
    let start = send(client, Method::GET, &url, NAVIGATION, &jar, None).await;
    assert!(!start.set_cookies.is_empty(), "no state cookie from {url}");
    jar.store(&start);
    let authorize = start.location.as_deref().unwrap_or_else(|| {
        panic!(
            "no redirect to the provider from {url}: {} {}",
            start.status, start.body
        )
    });
    let back = through_provider(op, op_jar, authorize, callback).await;
    assert!(param(&back, "code").is_some(), "{back}");
    send(client, Method::GET, back.as_str(), NAVIGATION, &jar, None).await
}

/// Two sign-ins started in one browser, as two tabs opened without a
/// session (a browser restoring its tabs) start them: navigations to
/// `/productpage` and to `/whoami`, then each through the provider and back
/// to `callback`, in the order they started. Returns the answers to the two
/// callbacks.
async fn two_tabs(
    client: &reqwest::Client,
    op: &reqwest::Client,
    op_jar: &mut Jar,
    base: &str,
    callback: &str,
) -> (Answer, Answer) {
    let mut jar = Jar::default();
    let mut starts = Vec::new();
    for path in ["/productpage", "/whoami"] {
        let start = send(
            client,
            Method::GET,
            &format!("{base}{path}"),
            NAVIGATION,
            &jar,
            None,
        )
        .await;
        assert_eq!(start.status, 302, "{path}: {}", start.body);
        jar.store(&start);
        starts.push(start.location.unwrap());
    }
    let mut answers = Vec::new();
    for authorize in &starts {
        let back = through_provider(op, op_jar, authorize, callback).await;
        let answer = send(client, Method::GET, back.as_str(), NAVIGATION, &jar, None).await;
        jar.store(&answer);
        answers.push(answer);
    }
    let second = answers.pop().unwrap();
    (answers.pop().unwrap(), second)
}

/// One server's answer to a step: the status line part, then the details.
struct Cell {
    answer: String,
    details: String,
}

/// One server's answers, by step id.
struct Observations {
    /// How an absolute URL on the server itself is shown: `Apache`, `Palisade`.
    label: &'static str,
    base: String,
    issuer: String,
    cells: BTreeMap<&'static str, Cell>,
    last: Option<&'static str>,
    /// Expectations that did not hold, reported after the table is printed
    /// so that a failing run still shows every answer.
    failures: Vec<String>,
}

impl Observations {
    fn new(label: &'static str, base: &str, issuer: &str) -> Self {
        Self {
            label,
            base: base.to_owned(),
            issuer: issuer.to_owned(),
            cells: BTreeMap::new(),
            last: None,
            failures: Vec::new(),
        }
    }

    /// Records a failure `what` unless `ok`; the test fails at the end.
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(format!("{}: {}", self.label, what()));
        }
    }

    /// Records `a` as the answer to step `id`: status, user, challenge,
    /// what the body says, then `Location` and `Set-Cookie` without values.
    fn record(&mut self, id: &'static str, a: &Answer) {
        let mut answer = format!("**{}**", a.status);
        if let Some(user) = a.remote_user.as_deref().filter(|u| !u.is_empty()) {
            let user = user.replace(&self.issuer, "<issuer>");
            let _ = write!(answer, ", X-Remote-User `{user}`");
        }
        if let Some(challenge) = &a.www_authenticate {
            let _ = write!(answer, ", WWW-Authenticate `{challenge}`");
        }
        if a.status >= 400 || a.status == 200 {
            let text = summary(&a.body);
            if !text.is_empty() {
                let _ = write!(answer, ": “{text}”");
            }
        }
        let mut details = String::new();
        if let Some(l) = &a.location {
            let _ = write!(details, "<br>Location: {}", self.describe_location(l));
        }
        for c in &a.set_cookies {
            let _ = write!(details, "<br>Set-Cookie: {}", describe_cookie(c));
        }
        self.put(id, answer, details);
    }

    /// Records a text as the answer to step `id`.
    fn put(&mut self, id: &'static str, answer: String, details: String) {
        assert!(STEPS.iter().any(|s| s.id == id), "no step {id}");
        let old = self.cells.insert(id, Cell { answer, details });
        assert!(old.is_none(), "{}: step {id} recorded twice", self.label);
        self.last = Some(id);
    }

    /// Adds `text` to the last answer recorded, before its details.
    fn note(&mut self, text: &str) {
        if let Some(cell) = self.last.and_then(|id| self.cells.get_mut(id)) {
            cell.answer.push_str(text);
        }
    }

    fn cell(&self, id: &str) -> String {
        self.cells
            .get(id)
            .map_or_else(|| "–".to_owned(), |c| format!("{}{}", c.answer, c.details))
    }

    /// `IdP /auth?name&name…`, `Apache /path?name…` (an absolute URL on the
    /// server itself), `/path?name…` (a relative one), or the full origin
    /// of anything else: paths and parameter names, no values.
    fn describe_location(&self, location: &str) -> String {
        let url = Url::parse(&self.base).unwrap().join(location).unwrap();
        let origin = url.origin().ascii_serialization();
        let mut out = if location.starts_with('/') {
            String::new()
        } else if origin == self.base {
            format!("{} ", self.label)
        } else if origin == self.issuer {
            "IdP ".to_owned()
        } else {
            origin + " "
        };
        out.push_str(url.path());
        let names: Vec<String> = query(&url).into_iter().map(|(k, _)| k).collect();
        if !names.is_empty() {
            out.push('?');
            out.push_str(&names.join("&"));
        }
        format!("`{out}`")
    }
}

/// The comparison as a Markdown table, one row per step.
fn table(apache: &Observations, palisade: &Observations) -> String {
    let mut out = String::from(
        "| case | request | mod_auth_openidc | Palisade | why they differ |\n|---|---|---|---|---|\n",
    );
    for s in STEPS {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            s.case,
            s.request,
            apache.cell(s.id),
            palisade.cell(s.id),
            s.why
        );
    }
    out
}

/// A cookie's name (the state in Apache's state cookie's name as
/// `<state>`) and attributes, without its value.
fn describe_cookie(set_cookie: &str) -> String {
    let mut parts = set_cookie.split(';').map(str::trim);
    let first = parts.next().unwrap_or_default();
    let (name, value) = first.split_once('=').unwrap_or((first, ""));
    let name = if name.starts_with(APACHE_STATE_PREFIX) {
        format!("{APACHE_STATE_PREFIX}<state>")
    } else if name.starts_with(PALISADE_LOGIN_PREFIX) {
        format!("{PALISADE_LOGIN_PREFIX}<state…>")
    } else {
        name.to_owned()
    };
    let mut out = format!("`{name}=");
    out.push_str(if value.is_empty() { "(empty)" } else { "…" });
    for a in parts.filter(|a| !a.is_empty()) {
        out.push_str("; ");
        match a.split_once('=') {
            Some((k, v)) if k.eq_ignore_ascii_case("expires") && !v.contains("1970") => {
                let _ = write!(out, "{k}=…");
            }
            _ => out.push_str(a),
        }
    }
    out.push('`');
    out
}

/// What an answer's body says, on one line, at most 170 characters, without
/// `|`: the `detail` of a problem body or the `error_description` of an
/// OAuth error, the title of Apache's own pages (`400 Bad Request`), else
/// the text after the title.
fn summary(body: &str) -> String {
    if let Ok(Value::Object(json)) = serde_json::from_str::<Value>(body) {
        let text = |k: &str| json.get(k).and_then(Value::as_str);
        if let Some(detail) = text("detail") {
            return detail.to_owned();
        }
        if let (Some(error), Some(description)) = (text("error"), text("error_description")) {
            return format!("{error}: {description}");
        }
    }
    let title = body
        .split_once("<title>")
        .and_then(|(_, rest)| rest.split_once("</title>"))
        .map(|(t, _)| t.trim().to_owned())
        .unwrap_or_default();
    if title.starts_with(|c: char| c.is_ascii_digit()) {
        return title;
    }
    let body = body.split_once("</title>").map_or(body, |(_, rest)| rest);
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut line = words
        .join(" ")
        .replace('|', "/")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    if line.chars().count() > 170 {
        line = line.chars().take(169).collect::<String>() + "…";
    }
    line
}

fn has_attr(set_cookie: &str, attr: &str) -> bool {
    set_cookie
        .split(';')
        .skip(1)
        .any(|a| a.trim().eq_ignore_ascii_case(attr))
}

/// Checks a redirect to the provider that starts a sign-in: the
/// authorization endpoint, the code flow with PKCE S256, a state, a nonce,
/// this client and `redirect_uri`.
fn assert_sign_in_redirect(a: &Answer, issuer: &str, redirect_uri: &str) -> Url {
    assert_eq!(a.status, 302, "{}", a.body);
    let authorize = Url::parse(a.location.as_deref().unwrap()).unwrap();
    assert!(
        authorize.as_str().starts_with(&format!("{issuer}/auth?")),
        "{authorize}"
    );
    assert_eq!(param(&authorize, "response_type").as_deref(), Some("code"));
    assert_eq!(
        param(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    for name in ["code_challenge", "state", "nonce", "scope"] {
        assert!(
            param(&authorize, name).is_some_and(|v| !v.is_empty()),
            "no {name} in {authorize}"
        );
    }
    assert_eq!(param(&authorize, "client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(param(&authorize, "redirect_uri").as_deref(), Some(redirect_uri));
    authorize
}

/// The lines of an access log, `client user "request line" status`.
type AccessLog = Arc<Mutex<Vec<String>>>;

/// The status answered to the first request after the first `seen` lines
/// of an access log whose request line starts with `request`, waiting up
/// to 5 s for it; `None` when there was none.
async fn wait_for_request(log: impl Fn() -> Vec<String>, seen: usize, request: &str) -> Option<String> {
    let needle = format!("\"{request}");
    for _ in 0..50 {
        let found = log()
            .into_iter()
            .skip(seen)
            .find(|l| l.contains(&needle))
            .and_then(|l| l.rsplit(' ').next().map(str::to_owned));
        if found.is_some() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Apache's access log.
fn access_log(apache: &ApacheOpenidc) -> Vec<String> {
    std::fs::read_to_string(apache.dir().join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// mod_auth_openidc's version, from the module's `init` log line format
/// (`mod_auth_openidc-2.4.12.3`) read out of the module file itself.
fn module_version() -> String {
    let module = std::fs::read("/usr/lib/apache2/modules/mod_auth_openidc.so").unwrap_or_default();
    let needle = b"mod_auth_openidc-";
    module
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| {
            let rest = &module[i..];
            let end = rest
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || b"-._".contains(b)))
                .unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        })
        .unwrap_or_else(|| "mod_auth_openidc, version unknown".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mod_auth_openidc_and_palisade_answer_the_same_requests() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    ApacheOpenidc::check_installed().unwrap_or_else(|e| panic!("{e}"));
    // Cargo.toml's required-features for this test do not name `signin`.
    if !cfg!(feature = "signin") {
        panic!("Palisade's side needs the `signin` feature: run with --features full");
    }
    // Apache -X serves one connection at a time: no idle kept-alive
    // connection may hold it.
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .pool_max_idle_per_host(0)
        .user_agent(USER_AGENT)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let op_client = reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let apache = observe_apache(&client, &op_client).await;
    let palisade = observe_palisade(&client, &op_client).await;
    for (obs, s) in [&apache, &palisade]
        .into_iter()
        .flat_map(|o| STEPS.iter().map(move |s| (o, s)))
    {
        assert!(
            obs.cells.contains_key(s.id),
            "{} did not answer step {}",
            obs.label,
            s.id
        );
    }
    println!(
        "\n{} and Palisade, each at its own oidc-provider:\n\n{}",
        module_version(),
        table(&apache, &palisade)
    );
    let failures: Vec<&str> = apache
        .failures
        .iter()
        .chain(&palisade.failures)
        .map(String::as_str)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// mod_auth_openidc's answers (see [`ApacheOpenidc`] for its configuration).
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
async fn observe_apache(client: &reqwest::Client, op_client: &reqwest::Client) -> Observations {
    let op_port = free_port();
    let issuer = format!("http://127.0.0.1:{op_port}");
    // mod_auth_openidc reads the discovery document on the first sign-in,
    // so Apache starts first and the provider learns its redirect URI.
    let apache = ApacheOpenidc::builder(&format!("{issuer}/.well-known/openid-configuration"), CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .scopes("openid")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let op = start_provider(
        op_port,
        &apache.redirect_uri(),
        &json!({
            "post_logout_redirect_uris": [apache.logged_out_url()],
            "backchannel_logout_uri": apache.backchannel_logout_uri(),
        }),
    );
    assert_eq!(op.issuer, issuer);
    let base = apache.url();
    let log = || apache.log();
    let mut obs = Observations::new("Apache", &base, &issuer);
    let get = |url: String, accept: &'static str, jar: Jar| {
        let client = client.clone();
        async move { send(&client, Method::GET, &url, accept, &jar, None).await }
    };
    let no_cookies = Jar::default();
    let callback = apache.redirect_uri();

    // (a) A navigation without a session: off to the provider, PKCE S256.
    let a = get(format!("{base}/productpage"), NAVIGATION, no_cookies.clone()).await;
    obs.record("a", &a);
    assert_eq!(a.status, 302, "{}", log());
    let authorize = assert_sign_in_redirect(&a, &issuer, &callback);
    let state_set = a
        .cookie_starting(APACHE_STATE_PREFIX)
        .unwrap_or_else(|| panic!("no state cookie in {:?}", a.set_cookies));
    let (state_name, state_value) = state_set.split(';').next().unwrap().split_once('=').unwrap();
    let state = param(&authorize, "state").unwrap();
    assert_eq!(state_name, format!("{APACHE_STATE_PREFIX}{state}"));
    assert!(has_attr(state_set, "HttpOnly"));
    assert!(a.cookie(APACHE_SESSION).is_none());

    // (b) An API call without a session: 401, no redirect.
    let b = get(format!("{base}/api/x"), API, no_cookies.clone()).await;
    obs.record("b1", &b);
    assert_eq!(b.status, 401, "{}", log());
    assert!(b.location.is_none());
    // mod_auth_openidc's own guess (no OIDCUnAuthAction on /productpage):
    // a request that does not accept HTML is not a navigation.
    let b2 = get(format!("{base}/productpage"), API, no_cookies.clone()).await;
    obs.record("b2", &b2);
    assert_eq!(b2.status, 401, "{}", log());

    // (c) The callback with a state that is not the state cookie's.
    let state_jar = no_cookies.with(state_name, state_value);
    let c = get(
        format!(
            "{callback}?{}",
            encode_form(&[("code", "bogus"), ("state", "not-the-state"), ("iss", &issuer)])
        ),
        NAVIGATION,
        state_jar.clone(),
    )
    .await;
    obs.record("c", &c);
    assert!(c.cookie(APACHE_SESSION).is_none());
    assert!(
        c.location.as_deref().is_none_or(|l| !l.contains("/productpage")),
        "{:?}",
        c.location
    );

    // (d) The callback with the right state but no state cookie.
    let d = get(
        format!(
            "{callback}?{}",
            encode_form(&[("code", "bogus"), ("state", &state), ("iss", &issuer)])
        ),
        NAVIGATION,
        no_cookies.clone(),
    )
    .await;
    obs.record("d", &d);
    assert!(d.cookie(APACHE_SESSION).is_none());

    // (e) A sign-in: a fresh start, the provider's login and consent pages,
    // then the callback with the state cookie.
    let mut op_jar = Jar::default();
    let e = sign_in(client, op_client, &mut op_jar, &base, &callback).await;
    obs.record("e", &e);
    assert_eq!(e.status, 302, "{}\n{}", e.body, log());
    assert_eq!(
        e.location
            .as_deref()
            .map(|l| Url::parse(&base).unwrap().join(l).unwrap().to_string()),
        Some(format!("{base}/productpage")),
    );
    let session = e
        .cookie(APACHE_SESSION)
        .unwrap_or_else(|| panic!("no session cookie in {:?}", e.set_cookies));
    assert!(has_attr(session, "HttpOnly"), "{session}");
    let mut jar = Jar::default();
    jar.store(&e);
    let session_value = jar.get(APACHE_SESSION).unwrap().to_owned();

    // (f) Requests with the session.
    let f = get(format!("{base}/whoami"), NAVIGATION, jar.clone()).await;
    obs.record("f1", &f);
    assert_eq!(f.status, 200, "{}", log());
    assert_eq!(f.body, "ok\n");
    assert!(
        f.remote_user.as_deref().is_some_and(|u| u.starts_with("alice@")),
        "{:?}",
        f.remote_user
    );
    let f2 = get(format!("{base}/api/x"), API, jar.clone()).await;
    obs.record("f2", &f2);
    assert_eq!(f2.status, 200, "{}", log());
    let f3 = get(format!("{base}/productpage"), NAVIGATION, jar.clone()).await;
    obs.record("f3", &f3);
    assert_eq!(f3.status, 200, "{}", log());

    // (g) A tampered session cookie: no session.
    let tampered = jar.with(APACHE_SESSION, &tamper(&session_value));
    let g = get(format!("{base}/whoami"), NAVIGATION, tampered.clone()).await;
    obs.record("g1", &g);
    assert_sign_in_redirect(&g, &issuer, &callback);
    let g2 = get(format!("{base}/api/x"), API, tampered).await;
    obs.record("g2", &g2);
    assert_eq!(g2.status, 401, "{}", log());

    // (h) Logout: /logout is a redirect to mod_auth_openidc's logout.
    let h = get(apache.logout_url(), NAVIGATION, jar.clone()).await;
    obs.record("h1", &h);
    assert_eq!(h.status, 302);
    let logout = Url::parse(&base)
        .unwrap()
        .join(h.location.as_deref().unwrap())
        .unwrap();
    assert_eq!(param(&logout, "logout"), Some(apache.logged_out_url()));
    let h2 = get(logout.to_string(), NAVIGATION, jar.clone()).await;
    obs.record("h2", &h2);
    assert_eq!(h2.status, 302, "{}", log());
    let end_session = Url::parse(h2.location.as_deref().unwrap()).unwrap();
    assert!(
        end_session
            .as_str()
            .starts_with(&format!("{issuer}/session/end?")),
        "{end_session}"
    );
    assert_eq!(
        param(&end_session, "post_logout_redirect_uri"),
        Some(apache.logged_out_url())
    );
    assert!(param(&end_session, "id_token_hint").is_some(), "{end_session}");
    assert!(h2.clears(APACHE_SESSION), "{:?}", h2.set_cookies);
    // The provider's end-session confirmation ends on /loggedout.
    let landed = through_provider(
        op_client,
        &mut op_jar,
        end_session.as_str(),
        &apache.logged_out_url(),
    )
    .await;
    let h3 = get(landed.to_string(), NAVIGATION, no_cookies.clone()).await;
    obs.record("h3", &h3);
    assert_eq!(h3.status, 200);

    // (i) The old session cookie after logout: the session is gone.
    let i = get(format!("{base}/whoami"), NAVIGATION, jar.clone()).await;
    obs.record("i1", &i);
    assert_sign_in_redirect(&i, &issuer, &callback);
    let i2 = get(format!("{base}/api/x"), API, jar.clone()).await;
    obs.record("i2", &i2);
    assert_eq!(i2.status, 401, "{}", log());

    // (j) Return URLs to another origin: a third-party-initiated login's
    // `target_link_uri`, and logout's URL.
    let this_server = format!("{base}/productpage");
    let cases: [(&str, &str, &str); 5] = [
        ("j1", "target_link_uri", "http://evil.example/"),
        ("j2", "target_link_uri", "http://127.0.0.1:1/"),
        ("j3", "target_link_uri", &this_server),
        ("j4", "target_link_uri", "//evil.example/"),
        ("j5", "logout", "http://evil.example/"),
    ];
    for (id, name, target) in cases {
        let seen = access_log(&apache).len();
        let pairs: Vec<(&str, &str)> = if name == "logout" {
            vec![(name, target)]
        } else {
            vec![("iss", &issuer), (name, target)]
        };
        let url = Url::parse(&format!("{callback}?{}", encode_form(&pairs))).unwrap();
        let j = get(url.to_string(), NAVIGATION, no_cookies.clone()).await;
        obs.record(id, &j);
        if target.starts_with(&base) {
            assert_sign_in_redirect(&j, &issuer, &callback);
        } else {
            assert_eq!(j.location, None, "{}", log());
            assert!(j.cookie(APACHE_SESSION).is_none());
        }
        // mod_auth_openidc sends its error pages with 200 but logs the
        // error status.
        if j.status == 200 {
            let line = format!("GET {}?{} ", url.path(), url.query().unwrap_or_default());
            let logged = wait_for_request(|| access_log(&apache), seen, &line).await;
            obs.note(&format!(
                " (an error page; the access log says {})",
                logged.unwrap_or_default()
            ));
        }
    }

    // (k) Back-channel logout: what a `logout_token` that is not a JWT gets.
    let k = send(
        client,
        Method::POST,
        &apache.backchannel_logout_uri(),
        API,
        &no_cookies,
        Some(encode_form(&[("logout_token", "not-a-jwt")])),
    )
    .await;
    obs.record("k", &k);
    assert!(k.status >= 400, "{}", k.status);

    // (l) Back-channel logout: sign in again, log out at the provider only;
    // it POSTs a logout token to Apache, and the session is gone.
    let signed_in = sign_in(client, op_client, &mut op_jar, &base, &callback).await;
    assert_eq!(signed_in.status, 302, "{}", log());
    let mut jar = Jar::default();
    jar.store(&signed_in);
    assert_eq!(
        get(format!("{base}/whoami"), NAVIGATION, jar.clone())
            .await
            .status,
        200
    );
    let seen = access_log(&apache).len();
    // From the start of a second, so that l3's sign-in ends in the same one.
    start_of_second().await;
    let logout_second = unix_second();
    log_out_at_provider(op_client, &mut op_jar, &issuer).await;
    let delivered = wait_for_request(
        || access_log(&apache),
        seen,
        "POST /oauth2/callback?logout=backchannel",
    )
    .await;
    obs.put(
        "l1",
        format!(
            "**{}**",
            delivered.clone().unwrap_or_else(|| "not sent".to_owned())
        ),
        " (`POST /oauth2/callback?logout=backchannel`)".to_owned(),
    );
    assert_eq!(
        delivered.as_deref(),
        Some("200"),
        "{}\n{}",
        access_log(&apache).join("\n"),
        log()
    );
    let l = get(format!("{base}/whoami"), NAVIGATION, jar.clone()).await;
    obs.record("l2", &l);
    assert_sign_in_redirect(&l, &issuer, &callback);
    // A new sign-in right after it is a new session.
    let again = sign_in(client, op_client, &mut op_jar, &base, &callback).await;
    let same_second = unix_second() == logout_second;
    assert_eq!(again.status, 302, "{}", log());
    let mut jar = Jar::default();
    jar.store(&again);
    let l3 = get(format!("{base}/whoami"), NAVIGATION, jar).await;
    obs.record("l3", &l3);
    if !same_second {
        obs.note(" (the sign-in ended a second later)");
    }
    assert_eq!(l3.status, 200, "{}", log());

    // (m) Two sign-ins in one browser: a state cookie for each state.
    let (m1, m2) = two_tabs(client, op_client, &mut op_jar, &base, &callback).await;
    obs.record("m1", &m1);
    obs.record("m2", &m2);
    for (m, page) in [(&m1, "/productpage"), (&m2, "/whoami")] {
        assert_eq!(m.status, 302, "{}\n{}", m.body, log());
        assert_eq!(m.location, Some(format!("{base}{page}")));
        assert!(m.cookie(APACHE_SESSION).is_some(), "{:?}", m.set_cookies);
    }

    assert!(
        !apache.log().contains(CLIENT_SECRET),
        "the client secret is in Apache's log"
    );
    obs
}

/// A session cookie value with its last character changed.
fn tamper(value: &str) -> String {
    let mut tampered = value.to_owned().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    String::from_utf8(tampered).unwrap()
}

/// The current second since the Unix epoch.
fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits for the start of the next wall-clock second.
async fn start_of_second() {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    tokio::time::sleep(Duration::from_nanos(u64::from(1_000_000_000 - into))).await;
}

/// Logs the user out at the provider only, through its end-session
/// confirmation page: the provider then sends its back-channel logout.
async fn log_out_at_provider(op_client: &reqwest::Client, op_jar: &mut Jar, issuer: &str) {
    let end = Url::parse(&format!("{issuer}/session/end")).unwrap();
    let confirm = send(op_client, Method::GET, end.as_str(), NAVIGATION, op_jar, None).await;
    op_jar.store(&confirm);
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let done = submit(op_client, &end, &confirm.body, op_jar).await;
    assert!(matches!(done.status, 302 | 303), "{}", done.body);
}

/// Palisade's policy file: bearer tokens of the provider, sign-in with its
/// `palisade-browser` client, and every path needs a user.
fn palisade_policy(issuer: &str, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: oidc-provider, namespace: default}}
spec:
  jwtRules:
  - issuer: {issuer}
    audiences: [{AUDIENCE}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: default}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
---
apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {{name: productpage-login, namespace: default}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  issuer: {issuer}
  clientId: {CLIENT_ID}
  clientSecretFile: {d}/client-secret
  scopes: [openid]
  session:
    keys: [{{id: k1, keyFile: {d}/session.key}}]
"
    )
}

/// The signed-in user as Apache's `X-Remote-User` carries it: here the
/// request principal, `ISSUER/SUBJECT`.
fn remote_user(id: Option<&Identity>) -> [(&'static str, String); 1] {
    [(
        "x-remote-user",
        id.and_then(Identity::request_principal).unwrap_or_default(),
    )]
}

async fn productpage(id: Option<Identity>) -> impl axum::response::IntoResponse {
    (
        remote_user(id.as_ref()),
        Html("<!doctype html>\n<title>Product page</title>\n<p>productpage</p>\n"),
    )
}

async fn whoami(id: Option<Identity>) -> impl axum::response::IntoResponse {
    (remote_user(id.as_ref()), "ok\n")
}

async fn api(id: Option<Identity>) -> impl axum::response::IntoResponse {
    (
        remote_user(id.as_ref()),
        [("content-type", "application/json")],
        "{\"ok\":true}\n",
    )
}

/// Palisade in an axum app on `listener`, the same pages as Apache's, every
/// request logged like Apache's access log; stopped on drop.
struct PalisadeApp {
    access: AccessLog,
    server: tokio::task::JoinHandle<()>,
    _dir: palisade::testkit::TempDir,
}

impl Drop for PalisadeApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl PalisadeApp {
    fn start(listener: TcpListener, issuer: &str) -> Self {
        let dir = palisade::testkit::TempDir::new("palisade-signin-apache");
        std::fs::write(dir.path().join("client-secret"), format!("{CLIENT_SECRET}\n")).unwrap();
        std::fs::write(dir.path().join("session.key"), format!("{SESSION_KEY_HEX}\n")).unwrap();
        let yaml = palisade_policy(issuer, dir.path());
        let set = PolicySet::from_yaml_str(&yaml, "signin-vs-mod-auth-openidc.yaml")
            .unwrap_or_else(|e| panic!("{e}"));
        let guard = palisade::guard_from_policy(&set, &Workload::new("productpage", "default"))
            .unwrap_or_else(|e| panic!("{e}"));
        let router = axum::Router::new()
            .route("/productpage", axum::routing::get(productpage))
            .route("/whoami", axum::routing::get(whoami))
            .route("/api/{*rest}", axum::routing::get(api));
        let access = AccessLog::default();
        let log = Arc::clone(&access);
        let app = PalisadeLayer::new(guard)
            .wrap(router)
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let log = Arc::clone(&log);
                    async move {
                        let line = format!(
                            "{} {}",
                            req.method(),
                            req.uri().path_and_query().map_or("/", |p| p.as_str())
                        );
                        let res = next.run(req).await;
                        log.lock().unwrap().push(format!(
                            "127.0.0.1 - \"{line} HTTP/1.1\" {}",
                            res.status().as_u16()
                        ));
                        res
                    }
                },
            ));
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<ConnectAddrs>(),
            )
            .await
            .unwrap();
        });
        Self {
            access,
            server,
            _dir: dir,
        }
    }

    fn access_log(&self) -> Vec<String> {
        self.access.lock().unwrap().clone()
    }
}

/// Waits until `base` answers a navigation with its sign-in redirect (the
/// provider's discovery document has loaded).
async fn ready(client: &reqwest::Client, base: &str) {
    for _ in 0..100 {
        if let Ok(res) = client
            .get(format!("{base}/productpage"))
            .header("accept", NAVIGATION)
            .send()
            .await
            && res.status() == 302
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} never sent a navigation to sign in");
}

/// Checks Palisade's refusal of an API call: 401 with the bearer challenge,
/// no redirect.
fn assert_challenge(a: &Answer) {
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.location.is_none(), "{:?}", a.location);
    assert!(
        a.www_authenticate
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer ")),
        "{:?}",
        a.www_authenticate
    );
}

/// Palisade's answers: an axum app built from a policy file with an
/// `OidcLogin` document for the provider's `palisade-browser` client.
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
async fn observe_palisade(client: &reqwest::Client, op_client: &reqwest::Client) -> Observations {
    // The provider must know Palisade's URIs: take its port first.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let callback = format!("{base}{CALLBACK_PATH}");
    let after_logout = format!("{base}/");
    let op = start_provider(
        free_port(),
        &callback,
        &json!({
            "post_logout_redirect_uris": [after_logout],
            "backchannel_logout_uri": format!("{base}{BACKCHANNEL_PATH}"),
        }),
    );
    let issuer = op.issuer.clone();
    let app = PalisadeApp::start(listener, &issuer);
    ready(client, &base).await;
    let mut obs = Observations::new("Palisade", &base, &issuer);
    let get = |url: String, accept: &'static str, jar: Jar| {
        let client = client.clone();
        async move { send(&client, Method::GET, &url, accept, &jar, None).await }
    };
    let no_cookies = Jar::default();

    // (a) A navigation without a session: off to the provider, PKCE S256,
    // state and nonce in a sealed login-state cookie.
    let a = get(format!("{base}/productpage"), NAVIGATION, no_cookies.clone()).await;
    obs.record("a", &a);
    let authorize = assert_sign_in_redirect(&a, &issuer, &callback);
    let login = a
        .cookie_starting(PALISADE_LOGIN_PREFIX)
        .unwrap_or_else(|| panic!("no login-state cookie in {:?}", a.set_cookies));
    assert!(
        has_attr(login, "HttpOnly") && has_attr(login, "SameSite=Lax"),
        "{login}"
    );
    assert!(a.cookie(PALISADE_SESSION).is_none());
    let mut state_jar = Jar::default();
    state_jar.store(&a);
    let state = param(&authorize, "state").unwrap();

    // (b) No session and not a navigation: the guard's 401 and challenge.
    let b = get(format!("{base}/api/x"), API, no_cookies.clone()).await;
    obs.record("b1", &b);
    assert_challenge(&b);
    let b2 = get(format!("{base}/productpage"), API, no_cookies.clone()).await;
    obs.record("b2", &b2);
    assert_challenge(&b2);

    // (c) The callback with a state that is not the login cookie's: 400,
    // no session.
    let c = get(
        format!(
            "{callback}?{}",
            encode_form(&[("code", "bogus"), ("state", "not-the-state"), ("iss", &issuer)])
        ),
        NAVIGATION,
        state_jar.clone(),
    )
    .await;
    obs.record("c", &c);
    assert_eq!(c.status, 400, "{}", c.body);
    assert_eq!(c.location, None);
    assert!(c.cookie(PALISADE_SESSION).is_none());

    // (d) The right state without the login-state cookie: 400.
    let d = get(
        format!(
            "{callback}?{}",
            encode_form(&[("code", "bogus"), ("state", &state), ("iss", &issuer)])
        ),
        NAVIGATION,
        no_cookies.clone(),
    )
    .await;
    obs.record("d", &d);
    assert_eq!(d.status, 400, "{}", d.body);
    assert!(d.cookie(PALISADE_SESSION).is_none());

    // (e) A sign-in: back to the page with a new session cookie.
    let mut op_jar = Jar::default();
    let e = sign_in(client, op_client, &mut op_jar, &base, &callback).await;
    obs.record("e", &e);
    assert_eq!(e.status, 302, "{}", e.body);
    assert_eq!(e.location.as_deref(), Some("/productpage"));
    let session = e
        .cookie(PALISADE_SESSION)
        .unwrap_or_else(|| panic!("no session cookie in {:?}", e.set_cookies));
    assert!(
        has_attr(session, "HttpOnly") && has_attr(session, "SameSite=Lax"),
        "{session}"
    );
    // The sign-in's own login-state cookie goes.
    let login_name = e
        .cookie_starting(PALISADE_LOGIN_PREFIX)
        .and_then(|c| c.split('=').next())
        .unwrap_or_else(|| panic!("no login-state cookie in {:?}", e.set_cookies));
    assert!(e.clears(login_name), "{:?}", e.set_cookies);
    let mut jar = Jar::default();
    jar.store(&e);
    let session_value = jar.get(PALISADE_SESSION).unwrap().to_owned();

    // (f) Requests with the session: the user is the request principal.
    let f = get(format!("{base}/whoami"), NAVIGATION, jar.clone()).await;
    obs.record("f1", &f);
    assert_eq!(f.status, 200, "{}", f.body);
    assert_eq!(f.body, "ok\n");
    assert_eq!(f.remote_user, Some(format!("{issuer}/alice")));
    let f2 = get(format!("{base}/api/x"), API, jar.clone()).await;
    obs.record("f2", &f2);
    assert_eq!(f2.status, 200, "{}", f2.body);
    let f3 = get(format!("{base}/productpage"), NAVIGATION, jar.clone()).await;
    obs.record("f3", &f3);
    assert_eq!(f3.status, 200, "{}", f3.body);

    // (g) A tampered session cookie is no session: a navigation signs in
    // again (the stale cookie is cleared), an API call gets the 401.
    let tampered = jar.with(PALISADE_SESSION, &tamper(&session_value));
    let g = get(format!("{base}/whoami"), NAVIGATION, tampered.clone()).await;
    obs.record("g1", &g);
    assert_sign_in_redirect(&g, &issuer, &callback);
    assert!(g.clears(PALISADE_SESSION), "{:?}", g.set_cookies);
    let g2 = get(format!("{base}/api/x"), API, tampered).await;
    obs.record("g2", &g2);
    assert_challenge(&g2);

    // (h) Logout: the session ends here, and the browser goes to the
    // provider's end-session endpoint with the ID token as hint.
    let h = get(format!("{base}/logout"), NAVIGATION, jar.clone()).await;
    obs.record("h1", &h);
    assert_eq!(h.status, 302, "{}", h.body);
    let end_session = Url::parse(h.location.as_deref().unwrap()).unwrap();
    assert!(
        end_session
            .as_str()
            .starts_with(&format!("{issuer}/session/end?")),
        "{end_session}"
    );
    assert_eq!(
        param(&end_session, "post_logout_redirect_uri").as_deref(),
        Some(after_logout.as_str())
    );
    assert_eq!(param(&end_session, "client_id").as_deref(), Some(CLIENT_ID));
    assert!(param(&end_session, "id_token_hint").is_some(), "{end_session}");
    assert!(h.clears(PALISADE_SESSION), "{:?}", h.set_cookies);
    let mut after = jar.clone();
    after.store(&h);
    obs.put(
        "h2",
        "(none)".to_owned(),
        ": `/logout` itself ends the session and redirects to the provider".to_owned(),
    );
    let landed = through_provider(op_client, &mut op_jar, end_session.as_str(), &after_logout).await;
    let h3 = get(landed.to_string(), NAVIGATION, after).await;
    obs.record("h3", &h3);
    // `/` needs a user like every path here: a new sign-in.
    assert_sign_in_redirect(&h3, &issuer, &callback);

    // (i) A saved copy of the ended session's cookie is refused.
    let i = get(format!("{base}/whoami"), NAVIGATION, jar.clone()).await;
    obs.record("i1", &i);
    assert_sign_in_redirect(&i, &issuer, &callback);
    assert!(i.clears(PALISADE_SESSION), "{:?}", i.set_cookies);
    let i2 = get(format!("{base}/api/x"), API, jar.clone()).await;
    obs.record("i2", &i2);
    assert_challenge(&i2);

    // (j) Return URLs: only paths of this origin (an absolute URL of this
    // origin counts as its path); logout takes no return URL at all.
    let this_server = format!("{base}/productpage");
    let cases: [(&str, &str); 4] = [
        ("j1", "http://evil.example/"),
        ("j2", "http://127.0.0.1:1/"),
        ("j3", &this_server),
        ("j4", "//evil.example/"),
    ];
    for (id, target) in cases {
        let url = format!("{base}/login?{}", encode_form(&[("return_to", target)]));
        let j = get(url, NAVIGATION, no_cookies.clone()).await;
        obs.record(id, &j);
        if target.starts_with(&base) {
            assert_sign_in_redirect(&j, &issuer, &callback);
            assert!(
                j.cookie_starting(PALISADE_LOGIN_PREFIX).is_some(),
                "{:?}",
                j.set_cookies
            );
        } else {
            assert_eq!(j.status, 400, "{target}: {}", j.body);
            assert_eq!(j.location, None);
            assert!(j.set_cookies.is_empty(), "{:?}", j.set_cookies);
        }
    }
    let j5 = get(
        format!(
            "{base}/logout?{}",
            encode_form(&[("return_to", "http://evil.example/")])
        ),
        NAVIGATION,
        no_cookies.clone(),
    )
    .await;
    obs.record("j5", &j5);
    assert_eq!(j5.status, 302, "{}", j5.body);
    assert_eq!(j5.location.as_deref(), Some(after_logout.as_str()));

    // (k) A logout token that is not a JWT: 400 with an OAuth error.
    let backchannel = format!("{base}{BACKCHANNEL_PATH}");
    let k = send(
        client,
        Method::POST,
        &backchannel,
        API,
        &no_cookies,
        Some(encode_form(&[("logout_token", "not-a-jwt")])),
    )
    .await;
    obs.record("k", &k);
    assert_eq!(k.status, 400, "{}", k.body);

    // (l) Back-channel logout: sign in again, log out at the provider only;
    // it POSTs a logout token here, and the session is gone.
    let signed_in = sign_in(client, op_client, &mut op_jar, &base, &callback).await;
    assert_eq!(signed_in.status, 302, "{}", signed_in.body);
    let mut jar = Jar::default();
    jar.store(&signed_in);
    // The provider sent a sub-only logout token in (h) too, perhaps in this
    // very second: it must not end this session (see l3).
    let whoami = get(format!("{base}/whoami"), NAVIGATION, jar.clone()).await;
    obs.check(whoami.status == 200, || {
        format!(
            "(l) a sign-in after the back-channel logout of (h) does not work: {} to `GET /whoami`",
            whoami.status
        )
    });
    let seen = app.access_log().len();
    // From the start of a second, so that l3's sign-in ends in the same one.
    start_of_second().await;
    let logout_second = unix_second();
    log_out_at_provider(op_client, &mut op_jar, &issuer).await;
    let delivered = wait_for_request(|| app.access_log(), seen, &format!("POST {BACKCHANNEL_PATH}")).await;
    obs.put(
        "l1",
        format!(
            "**{}**",
            delivered.clone().unwrap_or_else(|| "not sent".to_owned())
        ),
        format!(" (`POST {BACKCHANNEL_PATH}`)"),
    );
    assert_eq!(
        delivered.as_deref(),
        Some("200"),
        "{}",
        app.access_log().join("\n")
    );
    let l = get(format!("{base}/whoami"), NAVIGATION, jar.clone()).await;
    obs.record("l2", &l);
    assert_sign_in_redirect(&l, &issuer, &callback);
    assert_challenge(&get(format!("{base}/api/x"), API, jar).await);
    // A new sign-in right after it is a new session: the logout token
    // ended the sessions that existed when it came, not later ones.
    let again = sign_in(client, op_client, &mut op_jar, &base, &callback).await;
    let same_second = unix_second() == logout_second;
    assert_eq!(again.status, 302, "{}", again.body);
    let mut jar = Jar::default();
    jar.store(&again);
    let l3 = get(format!("{base}/whoami"), NAVIGATION, jar).await;
    obs.record("l3", &l3);
    if !same_second {
        obs.note(" (the sign-in ended a second later)");
    }
    obs.check(l3.status == 200, || {
        format!(
            "(l3) a sign-in right after a back-channel logout is ended by it: {} to `GET /whoami`",
            l3.status
        )
    });

    // (m) Two sign-ins in one browser: each has its own login-state
    // cookie, so both complete, each back to its own page.
    let (m1, m2) = two_tabs(client, op_client, &mut op_jar, &base, &callback).await;
    obs.record("m1", &m1);
    obs.record("m2", &m2);
    for (m, page) in [(&m1, "/productpage"), (&m2, "/whoami")] {
        obs.check(
            m.status == 302 && m.location.as_deref() == Some(page) && m.cookie(PALISADE_SESSION).is_some(),
            || {
                format!(
                    "(m) the sign-in of the tab of {page} does not complete: {} “{}”",
                    m.status,
                    summary(&m.body)
                )
            },
        );
    }
    obs
}
