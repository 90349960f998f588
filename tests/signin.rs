//! Browser sign-in end to end, through both frameworks, against the
//! testkit issuer over real HTTP: the code flow with PKCE, sessions,
//! refresh, logout (here and back-channel) and every refusal the issue
//! lists. A browser is played by an HTTP client with its own cookie jar
//! (redirects followed by hand, so each step can be checked); the real
//! browser runs in `tests/browser.rs`.

use std::time::Duration;

use palisade::signin::SignIn;
use palisade::signin::cookie::CookieKey;
use palisade::testkit::TestIssuer;
use serde_json::Value;

mod signin_common;
use signin_common::*;

struct Fixture {
    issuer: TestIssuer,
    _dir: palisade::testkit::TempDir,
    key_file: String,
}

fn fixture(lifetime: Duration) -> Fixture {
    fixture_with(lifetime, &[])
}

/// [`fixture`] whose client may be sent back only to `redirect_uris`
/// (with none: any loopback address).
fn fixture_with(lifetime: Duration, redirect_uris: &[&str]) -> Fixture {
    let mut builder = TestIssuer::builder()
        .default_audience("productpage")
        .public_client("productpage")
        .user("alice", "alice-password", &["reader"])
        .token_lifetime(lifetime);
    if !redirect_uris.is_empty() {
        builder = builder.redirect_uris("productpage", redirect_uris);
    }
    let issuer = builder.start().unwrap();
    issuer.sign_in_as(Some("alice"));
    let dir = palisade::testkit::TempDir::new("palisade-signin");
    let key_file = dir.path().join("session.key");
    std::fs::write(&key_file, format!("{KEY_HEX}\n")).unwrap();
    Fixture {
        issuer,
        key_file: key_file.display().to_string(),
        _dir: dir,
    }
}

/// A Redis for replicas to share sessions in.
fn redis() -> palisade::testkit::redis::RedisServer {
    palisade::testkit::redis::RedisServer::start().expect("redis-server (sudo apt-get install redis-server)")
}

/// Two replicas, one per framework, keeping their sessions in `redis`,
/// ready; `extra` adds lines to the `OidcLogin` document's `session`.
async fn replicas(
    f: &Fixture,
    redis: &palisade::testkit::redis::RedisServer,
    extra: &str,
) -> (String, String) {
    let yaml = policy(
        &f.issuer,
        &f.key_file,
        &format!("    store: {}\n{extra}", redis.url()),
    );
    let (a, b) = serve_both(|| guard_from(&yaml));
    ready(&a).await;
    ready(&b).await;
    (a, b)
}

/// A logout form posted to `base` with the session of `jar`, the browser
/// saying where it comes from with the header `(name, value)` (`origin`,
/// or `sec-fetch-site`).
async fn post_logout(base: &str, jar: &Jar, (name, value): (&str, &str)) -> Answer {
    answer(
        client()
            .post(format!("{base}/logout"))
            .header(name, value)
            .header("cookie", jar.header().unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Signs in through `base` as the issuer's chosen user; answers the jar.
async fn sign_in(base: &str) -> Jar {
    let (jar, to_issuer) = start_sign_in(base).await;
    finish_sign_in(base, jar, &to_issuer).await
}

/// A navigation to `/page?x=1` without a session: the jar with the login
/// state, and where the browser is sent to sign in.
async fn start_sign_in(base: &str) -> (Jar, String) {
    let mut jar = Jar::default();
    let first = get(&format!("{base}/page?x=1"), &jar, true).await;
    assert_eq!(first.status, 302, "{first:?}");
    jar.take(&first);
    (jar, first.location.unwrap())
}

/// The sign-in [`start_sign_in`] began, through the issuer and back to
/// `/page?x=1` with a session.
async fn finish_sign_in(base: &str, mut jar: Jar, to_issuer: &str) -> Jar {
    let at_issuer = get(to_issuer, &Jar::default(), true).await;
    assert_eq!(
        at_issuer.status, 302,
        "the issuer signs the chosen user in: {at_issuer:?}"
    );
    let callback = at_issuer.location.unwrap();
    assert!(
        callback.starts_with(&format!("{base}/oauth2/callback?")),
        "{callback}"
    );
    let back = get(&callback, &jar, true).await;
    assert_eq!(back.status, 302, "{back:?}");
    assert_eq!(
        back.location.as_deref(),
        Some("/page?x=1"),
        "back to the original URL"
    );
    jar.take(&back);
    assert!(jar.session().is_some(), "a session cookie: {back:?}");
    assert!(
        !jar.0.keys().any(|k| k.starts_with("palisade_session_login")),
        "the login state is cleared"
    );
    jar
}

/// The way docs/signin.md gives to test an application's signed-in pages
/// without a browser: a `SignIn` made from the same policy file as the
/// guard (the same keys, issuer and client) makes a session cookie that
/// the guard opens, on both frameworks; the user is the access token's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cookie_made_for_a_test_opens_in_the_guard_of_the_same_file() {
    use palisade::core::policy::{FromPolicy as _, PolicySet, Workload};
    let f = fixture(Duration::from_secs(300));
    let yaml = policy(&f.issuer, &f.key_file, "");
    let (a, b) = serve_both(|| guard_from(&yaml));
    ready(&a).await;
    ready(&b).await;
    let set = PolicySet::from_yaml_str(&yaml, "signin test policy").unwrap();
    let workload = Workload::new("productpage", "default");
    let sign_in = SignIn::from_policy(&set.for_workload(&workload))
        .unwrap()
        .unwrap();
    let token = f.issuer.token().subject("erin").audience("productpage").sign();
    let cookie = sign_in
        .session_cookie_for("erin", &token, Duration::from_secs(60))
        .unwrap();
    let mut jar = Jar::default();
    for pair in cookie.split("; ") {
        let (k, v) = pair.split_once('=').unwrap();
        jar.0.insert(k.into(), v.into());
    }
    for base in [&a, &b] {
        let me = get(&format!("{base}/whoami"), &jar, false).await;
        assert_eq!(me.status, 200, "{base}: {me:?}");
        assert_eq!(me.json()["subject"], "erin", "{base}");
        assert_eq!(me.json()["methods"], serde_json::json!(["session"]), "{base}");
        // Without it, the page is the sign-in's.
        let page = get(&format!("{base}/page"), &Jar::default(), true).await;
        assert_eq!(page.status, 302, "{base}: {page:?}");
    }
}

/// A page that warns its user before the session ends polls
/// `sessionPath` (docs/signin.md, single-page applications): after a real
/// sign-in it gets the session's deadlines, on both frameworks, whatever
/// the policy (`/oauth2/session` is not public); the poll renews nothing,
/// and after a logout it is a 401 saying where to sign in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_route_tells_a_page_when_its_session_ends() {
    let f = fixture(Duration::from_secs(300));
    let yaml = policy(&f.issuer, &f.key_file, "    idleTimeout: 20m\n").replace(
        "  clientId: productpage\n",
        "  clientId: productpage\n  sessionPath: /oauth2/session\n",
    );
    let (a, b) = serve_both(|| guard_from(&yaml));
    for base in [&a, &b] {
        ready(base).await;
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let jar = sign_in(base).await;
        let s = get(&format!("{base}/oauth2/session"), &jar, false).await;
        assert_eq!(s.status, 200, "{base}: {s:?}");
        assert!(s.set_cookies.is_empty(), "{base}: renewed: {s:?}");
        assert_eq!(s.cache_control, ["no-store"], "{base}");
        let body = s.json();
        assert_eq!(body["subject"], "alice", "{base}: {body}");
        let at = |k: &str| {
            body[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{base}: {k} in {body}"))
        };
        let signed_in = at("signed_in_at");
        assert!((before..before + 60).contains(&signed_in), "{base}: {body}");
        assert_eq!(at("ends_at"), signed_in + 8 * 3600, "{base}: {body}");
        assert!(
            (signed_in + 20 * 60..signed_in + 21 * 60).contains(&at("idle_ends_at")),
            "{base}: {body}"
        );
        assert!(!s.body.contains('.'), "{base}: a token in {}", s.body);
        let ended = post_logout(base, &jar, ("sec-fetch-site", "same-origin")).await;
        assert_eq!(ended.status, 302, "{base}: {ended:?}");
        let s = get(&format!("{base}/oauth2/session"), &jar, true).await;
        assert_eq!(s.status, 401, "{base}: not redirected: {s:?}");
        assert!(
            s.www_authenticate
                .iter()
                .any(|c| c.contains("form-action=\"/login\"")),
            "{base}: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_sessions_and_sign_ins_in_progress() {
    let f = fixture(Duration::from_secs(300));
    // No session keys: sessions live as long as the process, not the
    // configuration.
    let with_keys = policy(&f.issuer, &f.key_file, "");
    let keyless = with_keys.replace(
        &format!("  session:\n    keys: [{{id: k1, keyFile: {}}}]\n", f.key_file),
        "",
    );
    assert_ne!(keyless, with_keys);
    let rescoped = keyless.replace(
        "  clientId: productpage\n",
        "  clientId: productpage\n  scopes: [openid, email]\n",
    );
    assert_ne!(rescoped, keyless);
    let guards = std::sync::Mutex::new(Vec::new());
    let (axum_base, actix_base) = serve_both(|| {
        let guard = guard_from(&keyless);
        guards.lock().unwrap().push(guard.clone());
        guard
    });
    let guards = guards.into_inner().unwrap();
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        let session = sign_in(base).await;
        let (pending, to_issuer) = start_sign_in(base).await;
        // The same file again (a SIGHUP for a new certificate), then a
        // changed sign-in document, while the issuer's discovery is down.
        f.issuer.set_fault(palisade::testkit::Fault::Unavailable);
        for (what, yaml) in [("the same file", &keyless), ("another scope", &rescoped)] {
            for guard in &guards {
                guard.replace(guard_from(yaml));
            }
            let who = get(&format!("{base}/whoami"), &session, false).await;
            assert_eq!(
                who.status, 200,
                "{base}, {what}: the session still opens: {who:?}"
            );
            // Sign-in is still ready: the issuer's discovery document is
            // not loaded again.
            let nav = get(&format!("{base}/page"), &Jar::default(), true).await;
            assert_eq!(nav.status, 302, "{base}, {what}: {nav:?}");
        }
        f.issuer.set_fault(palisade::testkit::Fault::None);
        // Begun before both reloads, finished after them.
        let finished = finish_sign_in(base, pending, &to_issuer).await;
        assert_eq!(get(&format!("{base}/whoami"), &finished, false).await.status, 200);
        // Logged out, then sign-in turned off and on by two reloads: the
        // store that knew of the logout went with the relying party, and
        // so did its key, so the saved cookie does not open again.
        let out = post_logout(base, &finished, ("origin", base)).await;
        assert_eq!(out.status, 302, "{base}: {out:?}");
        assert_eq!(get(&format!("{base}/whoami"), &finished, false).await.status, 401);
        let (without, _) = keyless
            .split_once("---\napiVersion: palisade.dev/v1alpha1\nkind: OidcLogin")
            .unwrap();
        for yaml in [without, keyless.as_str()] {
            for guard in &guards {
                guard.replace(guard_from(yaml));
            }
        }
        ready(base).await;
        let saved = get(&format!("{base}/whoami"), &finished, false).await;
        assert_eq!(
            saved.status, 401,
            "{base}: a logged-out session opened again: {saved:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_uses_the_session_and_logs_out_on_both_frameworks() {
    let f = fixture(Duration::from_secs(300));
    let yaml = policy(&f.issuer, &f.key_file, "");
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        // A navigation without a credential goes to the issuer with PKCE,
        // state and nonce; an API call gets the 401 challenge.
        let nav = get(&format!("{base}/page"), &Jar::default(), true).await;
        assert_eq!(nav.status, 302, "{base}: {nav:?}");
        let loc = nav.location.clone().unwrap();
        assert!(
            loc.starts_with(&format!("{}/protocol/openid-connect/auth?", f.issuer.issuer())),
            "{loc}"
        );
        for p in [
            "state",
            "nonce",
            "code_challenge",
            "redirect_uri",
            "client_id",
            "scope",
        ] {
            assert!(
                query_param(&loc, p).is_some_and(|v| !v.is_empty()),
                "{p} in {loc}"
            );
        }
        assert_eq!(
            query_param(&loc, "code_challenge_method").as_deref(),
            Some("S256")
        );
        assert_eq!(query_param(&loc, "response_type").as_deref(), Some("code"));
        let state_cookie = nav
            .set_cookies
            .iter()
            .find(|c| c.starts_with("palisade_session_login_"))
            .unwrap();
        assert!(
            state_cookie.contains("HttpOnly") && state_cookie.contains("SameSite=Lax"),
            "{state_cookie}"
        );
        assert!(
            !state_cookie.contains("Secure"),
            "no Secure over plain HTTP: {state_cookie}"
        );
        let api = get(&format!("{base}/page"), &Jar::default(), false).await;
        assert_eq!(api.status, 401, "{base}: {api:?}");
        assert!(
            api.www_authenticate.iter().any(|c| c.starts_with("Bearer ")),
            "{api:?}"
        );

        // Sign in; the session speaks for alice with her roles.
        let jar = sign_in(base).await;
        let who = get(&format!("{base}/whoami"), &jar, false).await;
        assert_eq!(who.status, 200, "{base}: {who:?}");
        let who = who.json();
        assert_eq!(who["methods"], serde_json::json!(["session"]), "{who}");
        assert_eq!(who["request_principal"], format!("{}/alice", f.issuer.issuer()));
        assert_eq!(who["realm_roles"], serde_json::json!(["reader"]));
        assert_eq!(get(&format!("{base}/page"), &jar, true).await.status, 200);

        // A bearer token of another user, sent with alice's cookie: the
        // request's own credential speaks, the cookie's session is left
        // aside whole (not merged into one identity of two users).
        let bob = f.issuer.token().subject("bob").sign();
        let mut req = client()
            .get(format!("{base}/whoami"))
            .header("accept", "application/json")
            .header("authorization", format!("Bearer {bob}"));
        if let Some(c) = jar.header() {
            req = req.header("cookie", c);
        }
        let both = answer(req.send().await.unwrap()).await;
        assert_eq!(both.status, 200, "{base}: {both:?}");
        let both = both.json();
        assert_eq!(both["methods"], serde_json::json!(["jwt"]), "{both}");
        assert_eq!(both["request_principal"], format!("{}/bob", f.issuer.issuer()));

        // A logout another site starts (logout CSRF: a link, an image, a
        // form) is asked to be confirmed, and ends nothing; the page's form
        // posts from this origin.
        // A browser without Fetch Metadata is judged by its Origin, and
        // without that either (a top-level GET) by its Referer.
        for (method, header, value) in [
            ("GET", "sec-fetch-site", "cross-site"),
            ("GET", "sec-fetch-site", "same-site"),
            ("POST", "sec-fetch-site", "cross-site"),
            ("POST", "origin", "https://elsewhere.example"),
            ("POST", "origin", "null"),
            ("GET", "referer", "https://elsewhere.example/page"),
        ] {
            let mut req = client()
                .request(method.parse().unwrap(), format!("{base}/logout"))
                .header(header, value)
                .header("sec-fetch-mode", "navigate");
            req = req.header("cookie", jar.header().unwrap());
            let page = answer(req.send().await.unwrap()).await;
            assert_eq!(page.status, 200, "{base} {method} {header}: {value}: {page:?}");
            assert!(
                page.body.contains("<form method=\"post\" action=\"/logout\">"),
                "{page:?}"
            );
            assert!(page.set_cookies.is_empty(), "{page:?}");
            assert_eq!(get(&format!("{base}/whoami"), &jar, false).await.status, 200);
        }
        // The confirmation's own post; an old browser's same-origin post
        // (its Origin names this host, over whichever scheme) logs out too.
        let own = post_logout(base, &jar, ("origin", &base.replacen("http://", "https://", 1))).await;
        assert_eq!(own.status, 302, "{base}: {own:?}");
        assert_eq!(get(&format!("{base}/whoami"), &jar, false).await.status, 401);
        let jar = sign_in(base).await;
        let confirmed = post_logout(base, &jar, ("sec-fetch-site", "same-origin")).await;
        assert_eq!(confirmed.status, 302, "{base}: {confirmed:?}");
        assert_eq!(get(&format!("{base}/whoami"), &jar, false).await.status, 401);
        // A link on one of this origin's own pages, from such a browser.
        let jar = sign_in(base).await;
        let mut req = client()
            .get(format!("{base}/logout"))
            .header("referer", format!("{base}/productpage"))
            .header("cookie", jar.header().unwrap());
        req = req.header("accept", "text/html");
        let linked = answer(req.send().await.unwrap()).await;
        assert_eq!(linked.status, 302, "{base}: {linked:?}");
        assert_eq!(get(&format!("{base}/whoami"), &jar, false).await.status, 401);

        // Logout: here, then at the issuer with the hint and an absolute return.
        let jar = sign_in(base).await;
        let out = get(&format!("{base}/logout"), &jar, true).await;
        assert_eq!(out.status, 302, "{out:?}");
        let end = out.location.clone().unwrap();
        assert!(
            end.starts_with(&format!("{}/protocol/openid-connect/logout?", f.issuer.issuer())),
            "{end}"
        );
        assert!(query_param(&end, "id_token_hint").is_some(), "{end}");
        assert_eq!(out.referrer_policy, ["no-referrer"], "the hint is not sent on");
        assert_eq!(
            query_param(&end, "post_logout_redirect_uri"),
            Some(format!("{base}/"))
        );
        assert!(
            out.set_cookies
                .iter()
                .any(|c| c.starts_with("palisade_session=") && c.contains("Max-Age=0")),
            "{out:?}"
        );
        // A saved copy of the ended session's cookie no longer works.
        assert_eq!(get(&format!("{base}/whoami"), &jar, false).await.status, 401);
        assert_eq!(get(&format!("{base}/page"), &jar, true).await.status, 302);
    }
}

/// The policy of [`policy`] with `revokeOnLogout: true`.
fn revoking_policy(f: &Fixture) -> String {
    policy(&f.issuer, &f.key_file, "").replacen(
        "  clientId: productpage\n",
        "  clientId: productpage\n  revokeOnLogout: true\n",
        1,
    )
}

/// A navigation to `base`'s logout with `jar` (the issuer's logout page it
/// is sent to is not visited: the session there lives), answered 302; how
/// many refresh tokens the issuer revoked meanwhile.
async fn revoked_by_logout(f: &Fixture, base: &str, jar: &Jar) -> usize {
    let before = f.issuer.revoked_refresh_tokens();
    let out = get(&format!("{base}/logout"), jar, true).await;
    assert_eq!(out.status, 302, "{base}: {out:?}");
    f.issuer.revoked_refresh_tokens() - before
}

/// With `revokeOnLogout`, a logout revokes the session's refresh token at
/// the issuer (RFC 7009) when the browser never finishes the issuer's
/// logout: after a restart, whose in-memory store forgot the ending, a
/// saved copy of the cookie (sealed with the configured key) is refreshed
/// before it is taken, and the issuer refuses. Without the revocation the
/// refresh succeeds and the ended session lives again. Off by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_revokes_the_refresh_token_so_a_restart_does_not_bring_the_session_back() {
    let f = fixture(Duration::from_secs(300));
    let (default, _) = serve_both(|| guard_from(&policy(&f.issuer, &f.key_file, "")));
    ready(&default).await;
    let jar = sign_in(&default).await;
    assert_eq!(revoked_by_logout(&f, &default, &jar).await, 0, "off by default");
    let yaml = revoking_policy(&f);
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    let mut saved = Vec::new();
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        let jar = sign_in(base).await;
        assert_eq!(get(&format!("{base}/whoami"), &jar, false).await.status, 200);
        assert_eq!(
            revoked_by_logout(&f, base, &jar).await,
            1,
            "{base}: the session's refresh token is revoked"
        );
        assert_eq!(
            revoked_by_logout(&f, base, &jar).await,
            0,
            "{base}: a saved copy logged out again revokes nothing more"
        );
        saved.push((base.clone(), jar));
    }
    // Both restarted, in a later second than the sign-ins (a session's
    // tokens are dated to the second): the same key, a new store each (in
    // one process, the policy's memory store is shared while a relying
    // party of the client lives, as a reload needs).
    let signed_in = now_secs();
    while now_secs() <= signed_in {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key_file = f.key_file.clone();
    let (axum_after, actix_after) = serve_both(|| {
        let sign_in = SignIn::builder(f.issuer.issuer(), "productpage")
            .keys(vec![
                CookieKey::from_file("k1", std::path::Path::new(&key_file)).unwrap(),
            ])
            .store(std::sync::Arc::new(palisade::signin::store::MemoryStore::new()))
            .build()
            .unwrap();
        palisade::prelude::Guard::builder()
            .authenticator(sign_in)
            .build()
            .unwrap()
    });
    for after in [&axum_after, &actix_after] {
        ready(after).await;
        for (base, jar) in &saved {
            let who = get(&format!("{after}/whoami"), jar, false).await;
            assert_eq!(who.status, 401, "logged out at {base}, then {after}: {who:?}");
        }
    }
}

/// A logout with a cookie older than the session's last refresh (a tab
/// that never got the renewed cookie) revokes the refresh token that
/// refresh brought, the live one, not the spent one its cookie holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_with_an_older_cookie_revokes_the_refreshed_token() {
    // Tokens live 35 s and are refreshed when less than 30 s are left.
    let f = fixture(Duration::from_secs(35));
    let yaml = revoking_policy(&f);
    let (base, _) = serve_both(|| guard_from(&yaml));
    ready(&base).await;
    let old = sign_in(&base).await;
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    let refreshes = f.issuer.refreshes();
    let renewed = get(&format!("{base}/whoami"), &old, false).await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    assert_eq!(f.issuer.refreshes(), refreshes + 1, "refreshed");
    assert_eq!(
        revoked_by_logout(&f, &base, &old).await,
        1,
        "the live refresh token is revoked (the spent one would revoke nothing)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_400_without_a_session() {
    let f = fixture(Duration::from_secs(300));
    let yaml = policy(&f.issuer, &f.key_file, "");
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        let start = || async {
            let mut jar = Jar::default();
            let nav = get(&format!("{base}/page"), &jar, true).await;
            jar.take(&nav);
            let at_issuer = get(nav.location.as_deref().unwrap(), &Jar::default(), true).await;
            (jar, at_issuer.location.unwrap())
        };
        let refused = |a: &Answer, what: &str| {
            // docs/signin.md: what the browser brought is refused with a 400.
            assert_eq!(a.status, 400, "{base} {what}: {a:?}");
            assert!(
                !a.set_cookies
                    .iter()
                    .any(|c| c.starts_with("palisade_session=") && !c.contains("Max-Age=0")),
                "{base} {what}: no session: {a:?}"
            );
        };
        // No state cookie.
        let (_, callback) = start().await;
        refused(&get(&callback, &Jar::default(), true).await, "no state cookie");
        // A forged state.
        let (jar, callback) = start().await;
        let forged = callback.replace("state=", "state=x");
        refused(&get(&forged, &jar, true).await, "forged state");
        // A replayed code: the first use signs in, the second is refused.
        let (jar, callback) = start().await;
        let ok = get(&callback, &jar, true).await;
        assert_eq!(ok.status, 302, "{ok:?}");
        refused(&get(&callback, &jar, true).await, "replayed code");
        // An authorization response from another issuer.
        let (jar, callback) = start().await;
        let mixed = callback.replace("iss=", "iss=https%3A%2F%2Fevil.example");
        refused(&get(&mixed, &jar, true).await, "another issuer");
        // A return URL to another origin.
        for target in ["https://evil.example/", "//evil.example/x", "/\\evil.example"] {
            let url = format!(
                "{base}/login?return_to={}",
                target
                    .replace('/', "%2F")
                    .replace('\\', "%5C")
                    .replace(':', "%3A")
            );
            refused(&get(&url, &Jar::default(), true).await, target);
        }
        assert_eq!(
            get(&format!("{base}/login?return_to=%2Fpage"), &Jar::default(), true)
                .await
                .status,
            302
        );
        // A `Host` that is no host name gives no callback address: the
        // client's mistake (400), not an unready service (503).
        let odd_host = reqwest::Client::new()
            .get(format!("{base}/login?return_to=%2Fpage"))
            .header("host", "app_1")
            .send()
            .await
            .unwrap();
        assert_eq!(odd_host.status(), 400, "{base}");

        // Tampered, foreign-key and oversized session cookies are no session.
        let jar = sign_in(base).await;
        let value = jar.session().unwrap().clone();
        let mut bytes = value.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let mut tampered = jar.clone();
        tampered
            .0
            .insert("palisade_session".into(), String::from_utf8(bytes).unwrap());
        let other_key = SignIn::builder(f.issuer.issuer(), "productpage")
            .keys(vec![CookieKey::new("k1", &[9u8; 32]).unwrap()])
            .build()
            .unwrap()
            .session_cookie_for(
                "alice",
                &f.issuer.token().subject("alice").sign(),
                Duration::from_secs(60),
            )
            .unwrap();
        let mut foreign = Jar::default();
        for pair in other_key.split("; ") {
            let (k, v) = pair.split_once('=').unwrap();
            foreign.0.insert(k.into(), v.into());
        }
        let mut huge = Jar::default();
        huge.0.insert(
            "palisade_session".into(),
            format!("v1.1.k1.{}", "A".repeat(60_000)),
        );
        // Only the oversized cookie may be refused by the server's header
        // limit (431) before Palisade reads it.
        for (what, jar, too_large) in [
            ("tampered", &tampered, false),
            ("unknown key", &foreign, false),
            ("oversized", &huge, true),
        ] {
            let api = get(&format!("{base}/whoami"), jar, false).await;
            assert!(
                api.status == 401 || too_large && api.status == 431,
                "{base} {what}: {api:?}"
            );
            let nav = get(&format!("{base}/page"), jar, true).await;
            assert!(
                nav.status == 302 || too_large && nav.status == 431,
                "{base} {what}: {nav:?}"
            );
        }
    }
}

/// A `__Host-` session cookie name (a browser then refuses the cookie
/// from another subdomain, or without `Secure`, `Path=/` and no `Domain`):
/// every cookie of the sign-in is `Secure`, over plain HTTP too (browsers
/// take `Secure` cookies from `localhost`), and the sign-in works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_prefixed_cookie_name_makes_every_cookie_secure() {
    let f = fixture(Duration::from_secs(300));
    let yaml = policy(&f.issuer, &f.key_file, "    cookieName: __Host-sid\n");
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        let mut jar = Jar::default();
        let first = get(&format!("{base}/page"), &jar, true).await;
        assert_eq!(first.status, 302, "{first:?}");
        let state = first
            .set_cookies
            .iter()
            .find(|c| c.starts_with("__Host-sid_login_"))
            .unwrap_or_else(|| panic!("{base}: no login state: {first:?}"));
        assert!(
            state.contains("; Secure") && state.contains("; Path=/"),
            "{state}"
        );
        jar.take(&first);
        let at_issuer = get(first.location.as_deref().unwrap(), &Jar::default(), true).await;
        let back = get(at_issuer.location.as_deref().unwrap(), &jar, true).await;
        assert_eq!(back.status, 302, "{base}: {back:?}");
        let session = back
            .set_cookies
            .iter()
            .find(|c| c.starts_with("__Host-sid="))
            .unwrap_or_else(|| panic!("{base}: no session cookie: {back:?}"));
        for attribute in ["; Secure", "; HttpOnly", "; Path=/"] {
            assert!(session.contains(attribute), "{base}: {attribute}: {session}");
        }
        assert!(!session.contains("Domain"), "{session}");
        jar.take(&back);
        let who = get(&format!("{base}/whoami"), &jar, false).await;
        assert_eq!(who.status, 200, "{base}: {who:?}");
    }
}

/// Behind a proxy that ends TLS: the configured external origin, not the
/// request's `Host` and plain connection, makes the callback address, the
/// cookies `Secure`, the logout's return and the logout form's origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_origin_stands_for_the_proxy_in_front() {
    let shop = "https://shop.example";
    let f = fixture_with(
        Duration::from_secs(300),
        &["https://shop.example/oauth2/callback"],
    );
    // Written as a browser never sends it: made so.
    let yaml = policy(
        &f.issuer,
        &f.key_file,
        "  externalOrigin: https://Shop.Example:443/\n",
    );
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        let mut jar = Jar::default();
        let first = get(&format!("{base}/page"), &jar, true).await;
        assert_eq!(first.status, 302, "{first:?}");
        let loc = first.location.clone().unwrap();
        assert_eq!(
            query_param(&loc, "redirect_uri").as_deref(),
            Some("https://shop.example/oauth2/callback"),
            "{base}: {loc}"
        );
        let state = first
            .set_cookies
            .iter()
            .find(|c| c.starts_with("palisade_session_login_"))
            .unwrap();
        assert!(state.contains("; Secure"), "{base}: {state}");
        // The proxy would pass the callback on: here, by hand.
        jar.take(&first);
        let at_issuer = get(&loc, &Jar::default(), true).await;
        let callback = at_issuer
            .location
            .clone()
            .unwrap_or_else(|| panic!("{base}: the issuer: {at_issuer:?}"));
        assert!(callback.starts_with(shop), "{callback}");
        let back = get(&callback.replacen(shop, base, 1), &jar, true).await;
        assert_eq!(back.status, 302, "{base}: {back:?}");
        let session = back
            .set_cookies
            .iter()
            .find(|c| c.starts_with("palisade_session="))
            .unwrap_or_else(|| panic!("{base}: no session cookie: {back:?}"));
        assert!(session.contains("; Secure"), "{base}: {session}");
        jar.take(&back);
        assert_eq!(get(&format!("{base}/whoami"), &jar, false).await.status, 200);
        // A form of this service's own address (not the proxy's) is another
        // origin; the proxy's logs out and returns to the proxy's address.
        for (origin, status) in [(base.as_str(), 200), (shop, 302)] {
            let out = post_logout(base, &jar, ("origin", origin)).await;
            assert_eq!(out.status, status, "{base}: Origin {origin}: {out:?}");
            if status == 302 {
                let end = out.location.unwrap();
                assert_eq!(
                    query_param(&end, "post_logout_redirect_uri").as_deref(),
                    Some("https://shop.example/"),
                    "{end}"
                );
            }
        }
        assert_eq!(get(&format!("{base}/whoami"), &jar, false).await.status, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_once_per_session_and_a_refused_refresh_ends_it() {
    // Tokens live 35 s and are refreshed when less than 30 s are left: at once.
    let f = fixture(Duration::from_secs(35));
    let yaml = policy(&f.issuer, &f.key_file, "");
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        let mut jar = sign_in(base).await;
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        let before = f.issuer.refreshes();
        let answers = futures_join(base, &jar, 8).await;
        for a in &answers {
            assert_eq!(a.status, 200, "{a:?}");
        }
        assert_eq!(
            f.issuer.refreshes(),
            before + 1,
            "{base}: one refresh for eight concurrent requests"
        );
        let renewed = answers
            .iter()
            .find(|a| a.set_cookies.iter().any(|c| c.starts_with("palisade_session=")))
            .unwrap();
        // A response that renews the session cookie is no shared cache's.
        assert!(
            renewed.cache_control.iter().any(|v| v == "private"),
            "{base}: {renewed:?}"
        );
        jar.take(renewed);
        // A refused refresh ends the session.
        f.issuer.refuse_refresh(true);
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        assert_eq!(
            get(&format!("{base}/whoami"), &jar, false).await.status,
            401,
            "{base}"
        );
        f.issuer.refuse_refresh(false);
    }
}

/// The issuer spends the refresh token and then answers slowly; the one
/// request waiting for the refresh gives up first. The refresh goes on
/// without it: the next request finds the new tokens, rather than send
/// the spent refresh token again (refused, which would end the session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_outlives_the_requests_that_waited_for_it() {
    let f = fixture(Duration::from_secs(35));
    let yaml = policy(&f.issuer, &f.key_file, "");
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        let jar = sign_in(base).await;
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        let before = f.issuer.refreshes();
        f.issuer.delay_refresh_answers(Duration::from_millis(1_500));
        let whoami = format!("{base}/whoami");
        let gave_up = tokio::time::timeout(Duration::from_millis(500), get(&whoami, &jar, false)).await;
        assert!(
            gave_up.is_err(),
            "{base}: answered before the refresh: {gave_up:?}"
        );
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        f.issuer.delay_refresh_answers(Duration::ZERO);
        let after = get(&whoami, &jar, false).await;
        assert_eq!(after.status, 200, "{base}: {after:?}");
        assert_eq!(
            f.issuer.refreshes(),
            before + 1,
            "{base}: one refresh, and no second one with the spent token"
        );
    }
}

/// What [`at_once_on_both`] leaves.
struct AtOnce {
    f: Fixture,
    /// The two replicas' base URLs.
    replicas: [String; 2],
    /// The cookies signed in with.
    jar: Jar,
    /// Every answer to the requests sent at once.
    answers: Vec<Answer>,
    /// The issuer's refreshes before them.
    before: usize,
    _redis: palisade::testkit::redis::RedisServer,
}

/// Two replicas (axum and actix-web) sharing a Redis, with tokens that
/// live `lifetime`: signs in at the first, waits `wait` (then has the
/// issuer pad access tokens with `pad` bytes, when not 0), then sends four
/// requests of the session to each replica at once while the issuer
/// answers refreshes 300 ms late, so that they overlap the refresh. Each
/// answer is 200: no replica sent a spent refresh token, which the issuer
/// refuses, ending the session.
async fn at_once_on_both(lifetime: Duration, wait: Duration, pad: usize) -> AtOnce {
    let redis = redis();
    let f = fixture(lifetime);
    let (a, b) = replicas(&f, &redis, "").await;
    let jar = sign_in(&a).await;
    tokio::time::sleep(wait).await;
    if pad > 0 {
        f.issuer.pad_access_tokens(pad);
    }
    let before = f.issuer.refreshes();
    f.issuer.delay_refresh_answers(Duration::from_millis(300));
    let (on_a, on_b) = tokio::join!(futures_join(&a, &jar, 4), futures_join(&b, &jar, 4));
    f.issuer.delay_refresh_answers(Duration::ZERO);
    let answers: Vec<Answer> = on_a.into_iter().chain(on_b).collect();
    for answer in &answers {
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    assert!(f.issuer.refreshes() > before, "no refresh");
    AtOnce {
        f,
        replicas: [a, b],
        jar,
        answers,
        before,
        _redis: redis,
    }
}

/// Two replicas sharing Redis refresh one session at once (a page whose
/// requests a load balancer spreads over both): the issuer is asked once,
/// since its refresh token works once, and the session goes on at both,
/// with the old cookie and with the renewed one. Before, each replica
/// refreshed on its own, the second with the spent token; the issuer
/// refused it and that replica ended the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_refresh_a_session_once() {
    // Tokens live 35 s and are refreshed when less than 30 s are left:
    // after 5 s, the old ones are still valid.
    let AtOnce {
        f,
        replicas,
        jar,
        answers,
        before,
        _redis,
    } = at_once_on_both(Duration::from_secs(35), Duration::from_millis(5_100), 0).await;
    assert_eq!(f.issuer.refreshes(), before + 1, "one refresh for both replicas");
    let renewed = answers
        .iter()
        .find(|x| x.set_cookies.iter().any(|c| c.starts_with("palisade_session=")))
        .expect("the replica that refreshed renews the cookie");
    let mut new_jar = jar.clone();
    new_jar.take(renewed);
    for base in &replicas {
        for (cookie, j) in [("old", &jar), ("renewed", &new_jar)] {
            let answer = get(&format!("{base}/whoami"), j, false).await;
            assert_eq!(answer.status, 200, "{base}, the {cookie} cookie: {answer:?}");
            // Both replicas know the new tokens: the one that refreshed,
            // and the other from the store.
            if cookie == "old" {
                assert!(
                    answer
                        .set_cookies
                        .iter()
                        .any(|c| c.starts_with("palisade_session=")),
                    "{base} answers the old cookie with the refreshed session: {answer:?}"
                );
            }
        }
    }
    assert_eq!(
        f.issuer.refreshes(),
        before + 1,
        "no replica sent the spent refresh token"
    );
}

/// As above, once the old tokens have expired: the replica that did not
/// claim the refresh cannot use them, and waits for the tokens the other
/// hands on through the store. (Tokens that live 2 s are due for a refresh
/// as soon as they are made, so a request that comes after its replica's
/// refresh makes the next one: one refresh or more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_waits_for_the_refresh_another_makes_once_the_old_tokens_expired() {
    // Tokens live 2 s: expired before the requests.
    let at_once = at_once_on_both(Duration::from_secs(2), Duration::from_millis(2_100), 0).await;
    for answer in &at_once.answers {
        assert!(
            answer
                .set_cookies
                .iter()
                .any(|c| c.starts_with("palisade_session=")),
            "each replica's answer carries the refreshed session: {answer:?}"
        );
    }
}

/// As above, with a refreshed session too large for cookies, kept in the
/// store: the replica that did not refresh writes it under the key the
/// other chose (it travels with the session), so every cookie either
/// replica issues opens it on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_write_a_refreshed_session_too_large_for_cookies_under_one_key() {
    let at_once = at_once_on_both(Duration::from_secs(35), Duration::from_millis(5_100), 40_000).await;
    let mut cookies = Vec::new();
    for answer in &at_once.answers {
        if answer
            .set_cookies
            .iter()
            .any(|c| c.starts_with("palisade_session="))
        {
            let mut jar = at_once.jar.clone();
            jar.take(answer);
            cookies.push(jar);
        }
    }
    // The replica that did not refresh renews the old cookie from the store.
    // (A store that answers late, on a loaded machine, is answered with the
    // old tokens, which are valid, and no new cookie: asked again.)
    for base in &at_once.replicas {
        let mut renewed = None;
        for _ in 0..5 {
            let answer = get(&format!("{base}/whoami"), &at_once.jar, false).await;
            assert_eq!(answer.status, 200, "{base}: {answer:?}");
            if answer
                .set_cookies
                .iter()
                .any(|c| c.starts_with("palisade_session="))
            {
                renewed = Some(answer);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let answer = renewed.unwrap_or_else(|| panic!("{base} never renewed the old cookie"));
        let mut jar = at_once.jar.clone();
        jar.take(&answer);
        cookies.push(jar);
    }
    for jar in &cookies {
        assert!(
            jar.session().is_some_and(|c| c.len() < 1_000),
            "a reference to the stored session: {jar:?}"
        );
        for base in &at_once.replicas {
            let who = get(&format!("{base}/whoami"), jar, false).await;
            assert_eq!(
                who.status, 200,
                "{base}: every cookie opens the stored session: {who:?}"
            );
        }
    }
    assert_eq!(at_once.f.issuer.refreshes(), at_once.before + 1);
}

async fn futures_join(base: &str, jar: &Jar, n: usize) -> Vec<Answer> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (url, jar) = (format!("{base}/whoami"), jar.clone());
        tasks.push(tokio::spawn(async move { get(&url, &jar, false).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_channel_logout_ends_every_session_of_the_sid_and_refuses_bad_tokens() {
    let f = fixture(Duration::from_secs(300));
    let yaml = policy(&f.issuer, &f.key_file, "");
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        let jar = sign_in(base).await;
        let who = get(&format!("{base}/whoami"), &jar, false).await.json();
        let sid = who["claims"]["sid"]
            .as_str()
            .expect("the access token carries the sid")
            .to_owned();
        let post = |body: String| {
            let url = format!("{base}/oauth2/backchannel-logout");
            async move {
                answer(
                    client()
                        .post(url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(body)
                        .send()
                        .await
                        .unwrap(),
                )
                .await
            }
        };
        let token = |b: palisade::testkit::TokenBuilder<'_>| format!("logout_token={}", b.sign());
        let lt_for = |aud: &str| {
            f.issuer
                .logout_token()
                .audience(aud)
                .subject("alice")
                .claim("sid", Value::from(sid.clone()))
        };
        let lt = || lt_for("productpage");
        for (what, body) in [
            ("a nonce", token(lt().claim("nonce", Value::from("n")))),
            ("no events", token(lt().without_claim("events"))),
            ("another audience", token(lt_for("reviews"))),
            ("expired", token(lt().expires_in(-120))),
            // Older than its `jti` is remembered (valid for another hour).
            (
                "issued 11 minutes ago",
                token(lt().claim("iat", Value::from(now_secs() - 660)).expires_in(3600)),
            ),
            ("no iat", token(lt().without_claim("iat"))),
            ("unsigned", format!("logout_token={}", lt().unsigned())),
            ("no token", String::new()),
            ("two tokens", format!("{}&{}", token(lt()), token(lt()))),
        ] {
            let a = post(body).await;
            assert_eq!(a.status, 400, "{base} {what}: {a:?}");
            assert_eq!(
                get(&format!("{base}/whoami"), &jar, false).await.status,
                200,
                "{base}: {what} ends nothing"
            );
        }
        // Over the form's 64 KiB (under actix-web's own payload limit):
        // 413 on both frameworks. (That reading stops at the limit is the
        // core's unit test `a_body_is_read_to_its_limit_and_within_the_read_time`.)
        let big = post(format!("logout_token={}", "a".repeat(100 * 1024))).await;
        assert_eq!(big.status, 413, "{base}: {big:?}");
        let good = token(lt());
        assert_eq!(post(good.clone()).await.status, 200);
        assert_eq!(
            get(&format!("{base}/whoami"), &jar, false).await.status,
            401,
            "{base}: the session ended"
        );
        assert_eq!(post(good).await.status, 400, "{base}: a replayed logout token");

        // A token naming only the user ends every session the user had,
        // and none begun after it, even within the same second.
        let before = sign_in(base).await;
        let by_sub = f.issuer.logout_token().audience("productpage").subject("alice");
        assert_eq!(post(token(by_sub)).await.status, 200);
        assert_eq!(
            get(&format!("{base}/whoami"), &before, false).await.status,
            401,
            "{base}: the logout by sub ended the session"
        );
        let after = sign_in(base).await;
        assert_eq!(
            get(&format!("{base}/whoami"), &after, false).await.status,
            200,
            "{base}: a sign-in right after a logout by sub is not ended by it"
        );

        // A token naming only the issuer's session (no `sub`: Back-Channel
        // Logout 1.0, 2.4) ends the sessions of that `sid`.
        let who = get(&format!("{base}/whoami"), &after, false).await.json();
        let sid = who["claims"]["sid"].as_str().unwrap().to_owned();
        let by_sid = f
            .issuer
            .logout_token()
            .audience("productpage")
            .claim("sid", Value::from(sid));
        assert_eq!(post(token(by_sid)).await.status, 200, "{base}: sid only");
        assert_eq!(
            get(&format!("{base}/whoami"), &after, false).await.status,
            401,
            "{base}: the logout by sid ended the session"
        );
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The login-state cookies in a jar.
fn login_states(jar: &Jar) -> usize {
    jar.0
        .keys()
        .filter(|k| k.starts_with("palisade_session_login_"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_started_in_several_tabs_each_finish_and_at_most_four_are_kept() {
    let f = fixture(Duration::from_secs(300));
    let yaml = policy(&f.issuer, &f.key_file, "");
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        // Five tabs opened without a session (a browser restoring them):
        // each starts a sign-in before any returns.
        let mut jar = Jar::default();
        let mut callbacks = Vec::new();
        for tab in 0..5 {
            let nav = get(&format!("{base}/page?tab={tab}"), &jar, true).await;
            assert_eq!(nav.status, 302, "{base} tab {tab}: {nav:?}");
            jar.take(&nav);
            let at_issuer = get(nav.location.as_deref().unwrap(), &Jar::default(), true).await;
            callbacks.push(at_issuer.location.expect("the issuer sends the browser back"));
        }
        assert_eq!(
            login_states(&jar),
            4,
            "{base}: the oldest sign-in's state went: {jar:?}"
        );
        let oldest = get(&callbacks[0], &jar, true).await;
        assert_eq!(oldest.status, 400, "{base}: {oldest:?}");
        assert!(
            oldest.set_cookies.is_empty(),
            "{base}: a refused callback leaves the other sign-ins' state: {oldest:?}"
        );
        // The others finish, newest first, each back to its own tab.
        for tab in (1..5).rev() {
            let back = get(&callbacks[tab], &jar, true).await;
            assert_eq!(back.status, 302, "{base} tab {tab}: {back:?}");
            assert_eq!(back.location, Some(format!("/page?tab={tab}")));
            jar.take(&back);
            assert_eq!(login_states(&jar), tab - 1, "{base}: its state is cleared");
            assert_eq!(get(&format!("{base}/whoami"), &jar, false).await.status, 200);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends() {
    let f = fixture(Duration::from_secs(300));
    let yaml = policy(&f.issuer, &f.key_file, "    idleTimeout: 2s\n");
    let (axum_base, _) = serve_both(|| guard_from(&yaml));
    ready(&axum_base).await;
    let jar = sign_in(&axum_base).await;
    assert_eq!(get(&format!("{axum_base}/whoami"), &jar, false).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(get(&format!("{axum_base}/whoami"), &jar, false).await.status, 401);
}

/// Two replicas (the axum and the actix-web app, each with its own guard
/// and its own connection to one real Redis) share sessions: the session
/// keys open the cookie on both, an ended session ends on both within a
/// second, a logout token is used once across both, and a Redis that is
/// gone fails closed for sessions (503 with `Retry-After`, for an API call
/// as for a navigation, which keeps its cookie rather than be sent round
/// to sign in, nor a script's user sent there by a 401) while bearer
/// tokens keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_end_sessions_together_and_fail_closed_without_it() {
    let mut redis = redis();
    let f = fixture(Duration::from_secs(300));
    let (a, b) = replicas(&f, &redis, "").await;
    let within_a_second = |base: String, jar: Jar| async move {
        for _ in 0..20 {
            if get(&format!("{base}/whoami"), &jar, false).await.status == 401 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };

    // Logout on one replica ends the session on the other.
    let jar = sign_in(&a).await;
    assert_eq!(
        get(&format!("{b}/whoami"), &jar, false).await.status,
        200,
        "the other replica opens the session"
    );
    assert_eq!(get(&format!("{a}/logout"), &jar, true).await.status, 302);
    assert!(
        within_a_second(b.clone(), jar.clone()).await,
        "the logout reached the other replica"
    );

    // A back-channel logout at one replica ends the session on both; its
    // token cannot be used again at the other.
    let jar = sign_in(&a).await;
    let sid = get(&format!("{a}/whoami"), &jar, false).await.json()["claims"]["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = f
        .issuer
        .logout_token()
        .audience("productpage")
        .subject("alice")
        .claim("sid", Value::from(sid))
        .sign();
    let post = |base: String, token: String| async move {
        client()
            .post(format!("{base}/oauth2/backchannel-logout"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("logout_token={token}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post(b.clone(), token.clone()).await, 200);
    assert!(
        within_a_second(a.clone(), jar.clone()).await,
        "the back-channel logout reached the other replica"
    );
    assert_eq!(
        post(a.clone(), token).await,
        400,
        "a logout token is used once across replicas"
    );

    // Redis gone: sessions fail closed once the mirrors are stale; bearer
    // tokens are not affected; API calls and navigations are asked to come
    // back.
    let jar = sign_in(&a).await;
    let bearer = f.issuer.token().subject("bob").sign();
    redis.kill().unwrap();
    let mut closed = [false, false];
    let mut come_back = [false, false];
    for _ in 0..80 {
        for (i, base) in [&a, &b].into_iter().enumerate() {
            let s = get(&format!("{base}/whoami"), &jar, false).await.status;
            assert!(s == 200 || s == 503, "{base}: {s} while Redis is down");
            closed[i] |= s == 503;
            let nav = get(&format!("{base}/page"), &jar, true).await.status;
            assert!(
                nav == 200 || nav == 503,
                "{base}: {nav} for a navigation while Redis is down"
            );
            come_back[i] |= nav == 503;
        }
        if closed == [true, true] && come_back == [true, true] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(closed, [true, true], "sessions fail closed on both replicas");
    assert_eq!(come_back, [true, true], "navigations are asked to come back");
    for base in [&a, &b] {
        let res = client()
            .get(format!("{base}/whoami"))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{base}: bearer tokens work without Redis");
    }
    // Redis back: the mirrors resync and sessions work again.
    redis.restart().unwrap();
    let mut back = false;
    for _ in 0..60 {
        if get(&format!("{a}/whoami"), &jar, false).await.status == 200
            && get(&format!("{b}/whoami"), &jar, false).await.status == 200
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "sessions work again once Redis is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_authenticating_with_private_key_jwt_signs_in_and_refreshes_on_both_frameworks() {
    // Tokens live 30 s, the refresh margin: every request refreshes, so
    // each one authenticates the client at the token endpoint again.
    let issuer = TestIssuer::builder()
        .default_audience("productpage")
        .private_key_jwt_client("productpage")
        .user("alice", "alice-password", &["reader"])
        .token_lifetime(Duration::from_secs(30))
        .start()
        .unwrap();
    issuer.sign_in_as(Some("alice"));
    let pair = issuer.client_key_pair("productpage").unwrap();
    let (alg, pem) = (pair.algorithm, pair.private_key_pem);
    let dir = palisade::testkit::TempDir::new("palisade-signin");
    let key_file = dir.path().join("session.key");
    std::fs::write(&key_file, format!("{KEY_HEX}\n")).unwrap();
    let client_key = dir.path().join("client-key.pem");
    std::fs::write(&client_key, pem).unwrap();
    let with_key = |file: &std::path::Path| {
        policy(
            &issuer,
            &key_file.display().to_string(),
            &format!("  clientKey: {{keyFile: {}, algorithm: {alg}}}\n", file.display()),
        )
    };
    let yaml = with_key(&client_key);
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        let jar = sign_in(base).await;
        let refreshes = issuer.refreshes();
        assert_eq!(get(&format!("{base}/whoami"), &jar, false).await.status, 200);
        assert!(
            issuer.refreshes() > refreshes,
            "{base}: refreshed with a new assertion"
        );
    }

    // A key the issuer does not know: the code exchange is refused.
    let other = TestIssuer::builder()
        .private_key_jwt_client("productpage")
        .start()
        .unwrap();
    let stranger = dir.path().join("stranger.pem");
    let stranger_key = other.client_key_pair("productpage").unwrap().private_key_pem;
    std::fs::write(&stranger, stranger_key).unwrap();
    let yaml = with_key(&stranger);
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        let mut jar = Jar::default();
        let nav = get(&format!("{base}/page"), &jar, true).await;
        jar.take(&nav);
        let at_issuer = get(nav.location.as_deref().unwrap(), &Jar::default(), true).await;
        let back = get(at_issuer.location.as_deref().unwrap(), &jar, true).await;
        assert_eq!(back.status, 400, "{base}: {back:?}");
        jar.take(&back);
        assert!(jar.session().is_none(), "{base}: no session");
    }
}

/// A session too large for cookies (here a user with thousands of realm
/// roles in the access token) is kept in the store, sealed with a key that
/// only its cookie holds: what Redis holds shows no token and no claim,
/// both replicas open the session from it, and a renewal (a new cookie, the
/// session written again) leaves the cookie issued before it working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_too_large_for_cookies_is_stored_sealed() {
    let redis = redis();
    let roles: Vec<String> = (0..3000).map(|i| format!("role-{i:05}")).collect();
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    let mut f = fixture(Duration::from_secs(300));
    f.issuer = TestIssuer::builder()
        .default_audience("productpage")
        .public_client("productpage")
        .user("alice", "alice-password", &roles)
        .token_lifetime(Duration::from_secs(300))
        .start()
        .unwrap();
    f.issuer.sign_in_as(Some("alice"));
    let (a, b) = replicas(&f, &redis, "    idleTimeout: 4s\n").await;
    let first = sign_in(&a).await;
    assert!(
        first.session().is_some_and(|c| c.len() < 1_000),
        "the cookie holds a reference: {:?}",
        first.session().map(String::len)
    );
    assert_eq!(get(&format!("{a}/whoami"), &first, false).await.status, 200);
    // A quarter of the idle timeout on, a request renews the cookie, and
    // the session is written to the store again; the cookie issued before
    // still opens it, on the replica that never saw it too.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let renewed = get(&format!("{a}/whoami"), &first, false).await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    assert!(
        renewed
            .set_cookies
            .iter()
            .any(|c| c.starts_with("palisade_session=")),
        "renewed: {renewed:?}"
    );
    let mut jar = first.clone();
    jar.take(&renewed);
    assert_ne!(jar.session(), first.session());
    for (base, cookie) in [(&b, &first), (&b, &jar), (&a, &jar)] {
        let who = get(&format!("{base}/whoami"), cookie, false).await;
        assert_eq!(who.status, 200, "{base}: {who:?}");
        assert_eq!(who.json()["subject"], "alice", "{base}");
    }
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli (sudo apt-get install redis-tools)");
        assert!(out.status.success(), "redis-cli {args:?}");
        out.stdout
    };
    let keys = String::from_utf8(cli(&["--scan"])).unwrap();
    let mut sessions = 0;
    for key in keys.lines().filter(|k| k.contains("session:")) {
        // Raw bytes (redis-cli writes them as they are to a pipe); needles
        // long enough that random ciphertext cannot hold them by chance.
        let value = cli(&["GET", key]);
        let holds = |needle: &[u8]| value.windows(needle.len()).any(|w| w == needle);
        assert!(value.len() > 30_000, "{key}: {} bytes", value.len());
        for needle in [&b"\"at\":\"eyJ"[..], b"eyJhbGci", b"\"sub\":\"alice\""] {
            assert!(!holds(needle), "{key} holds {}", String::from_utf8_lossy(needle));
        }
        sessions += 1;
    }
    assert_eq!(sessions, 1, "one stored session among {keys:?}");
}

/// A session that outgrows its cookies at a refresh (here the refreshed
/// access token carries a large claim) is stored under one key, whichever of the
/// requests that waited for the refresh writes it: each of their cookies
/// opens it on the other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_outgrows_its_cookies_at_a_refresh_is_stored_under_one_key() {
    let redis = redis();
    // Tokens live 30 s, the refresh margin: every request refreshes.
    let f = fixture(Duration::from_secs(30));
    let (a, b) = replicas(&f, &redis, "").await;
    let small = sign_in(&a).await;
    assert!(
        small.session().is_some_and(|c| c.len() > 1_000),
        "inline at first"
    );
    f.issuer.pad_access_tokens(40_000);
    // Two requests of the session at once: one refresh, two writes.
    let whoami = format!("{a}/whoami");
    let (one, two) = tokio::join!(get(&whoami, &small, false), get(&whoami, &small, false));
    let mut cookies = Vec::new();
    for answer in [&one, &two] {
        assert_eq!(answer.status, 200, "{answer:?}");
        let mut jar = small.clone();
        jar.take(answer);
        assert!(
            jar.session().is_some_and(|c| c.len() < 1_000),
            "stored: {answer:?}"
        );
        cookies.push(jar);
    }
    for jar in &cookies {
        let who = get(&format!("{b}/whoami"), jar, false).await;
        assert_eq!(who.status, 200, "each cookie opens the stored session: {who:?}");
    }
}

/// `SignInBuilder::timeout` bounds every call to the issuer, the fetch of
/// its keys included: a callback whose ID token names a key not yet known,
/// while the issuer's keys answer slowly, fails within the timeout (and
/// signs nobody in) rather than waiting for the fetch's own default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_of_calls_to_the_issuer_bounds_the_fetch_of_its_keys() {
    let f = fixture(Duration::from_secs(300));
    let issuer = f.issuer.issuer().to_owned();
    let (base, _) = serve_both(|| {
        let sign_in = SignIn::builder(issuer.clone(), "productpage")
            .keys(vec![CookieKey::new("k1", &[9u8; 32]).unwrap()])
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        palisade::prelude::Guard::builder()
            .authenticator(sign_in)
            .build()
            .unwrap()
    });
    ready(&base).await;
    let mut jar = Jar::default();
    let nav = get(&format!("{base}/page"), &jar, true).await;
    assert_eq!(nav.status, 302, "{nav:?}");
    jar.take(&nav);
    let at_issuer = get(nav.location.as_deref().unwrap(), &Jar::default(), true).await;
    let callback = at_issuer.location.unwrap();
    // The ID token will be signed with a key the relying party has not
    // fetched, once a new fetch is allowed (10 s after the first, the
    // default `minRefreshInterval`), and the issuer's keys now take 3 s to
    // answer. A request waits up to 2 s (`unknown_kid_wait`) for such a
    // fetch: without the timeout, the callback would answer after that.
    f.issuer.rotate_key();
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    f.issuer.set_latency(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let back = get(&callback, &jar, true).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_500),
        "answered after {took:?}: {back:?}"
    );
    assert_ne!(back.status, 302, "nobody is signed in without the key: {back:?}");
    assert!(
        !back
            .set_cookies
            .iter()
            .any(|c| c.starts_with("palisade_session=") && !c.contains("Max-Age=0")),
        "{back:?}"
    );
}

/// Sign-in alone (no `RequestAuthentication`): an API call without a
/// session is docs/examples.md's 401, its `Bearer` challenge first, then where
/// to sign in; on both frameworks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_alone_answers_an_api_call_with_the_bearer_challenge_first() {
    let f = fixture(Duration::from_secs(300));
    let with_jwt = policy(&f.issuer, &f.key_file, "");
    let (_, alone) = with_jwt
        .split_once("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy")
        .unwrap();
    let alone = format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy{alone}");
    let (a, b) = serve_both(|| guard_from(&alone));
    for base in [&a, &b] {
        ready(base).await;
        let res = client()
            .get(format!("{base}/whoami"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{base}");
        let challenges: Vec<&str> = res
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            challenges,
            [
                r#"Bearer realm="productpage", Cookie realm="productpage", form-action="/login", cookie-name="palisade_session""#
            ],
            "{base}"
        );
    }
}
