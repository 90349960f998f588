//! Browser sign-in refuses bad ID tokens at the callback, through both
//! frameworks, against the testkit issuer made to misbehave with
//! `TestIssuer::tamper_id_tokens`: each refusal is a 4xx after the code was
//! exchanged, sets no session cookie and leaves the browser without a
//! session. A control sign-in without tampering proves the harness can
//! sign in at all. The harness is the one of `tests/signin.rs`, cut down.

use std::time::Duration;

use palisade::testkit::{IdTokenTamper, TestIssuer};
use serde_json::{Value, json};

mod signin_common;
use signin_common::*;
const CLIENT_SECRET: &str = "productpage-secret";

/// Any cookie of a session: `palisade_session` or one of its chunks
/// (`palisade_session_1`, …); the login state does not count.
fn has_session(jar: &Jar) -> bool {
    jar.0.keys().any(|name| is_session_cookie(name))
}

fn is_session_cookie(name: &str) -> bool {
    name == "palisade_session"
        || name
            .strip_prefix("palisade_session_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A `Set-Cookie` that gives the browser a session cookie (not one that
/// clears it).
fn sets_session(set_cookie: &str) -> bool {
    let first = set_cookie.split(';').next().unwrap_or_default();
    let Some((name, value)) = first.split_once('=') else {
        return false;
    };
    is_session_cookie(name.trim())
        && !value.trim().is_empty()
        && !set_cookie.to_ascii_lowercase().contains("max-age=0")
}

struct Fixture {
    issuer: TestIssuer,
    yaml: String,
    _dir: palisade::testkit::TempDir,
}

/// The issuer with `productpage` as a public client (PKCE alone) or a
/// confidential one (`clientSecretFile`), alice signed in at once, tokens
/// living `lifetime`, and the policy file for it.
fn fixture(confidential: bool, lifetime: Duration) -> Fixture {
    let builder = TestIssuer::builder()
        .default_audience("productpage")
        .user("alice", "alice-password", &["reader"])
        .token_lifetime(lifetime);
    let builder = if confidential {
        builder.client("productpage", CLIENT_SECRET)
    } else {
        builder.public_client("productpage")
    };
    let issuer = builder.start().unwrap();
    issuer.sign_in_as(Some("alice"));
    let dir = palisade::testkit::TempDir::new("palisade-signin");
    let key_file = dir.path().join("session.key");
    std::fs::write(&key_file, format!("{KEY_HEX}\n")).unwrap();
    let extra = if confidential {
        let secret_file = dir.path().join("client.secret");
        std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
        format!("  clientSecretFile: {}\n", secret_file.display())
    } else {
        String::new()
    };
    let yaml = policy(&issuer, &key_file.display().to_string(), &extra);
    Fixture {
        issuer,
        yaml,
        _dir: dir,
    }
}

/// Goes to the issuer from `/page` and back to the callback, which
/// exchanges the code (once, checked) for whatever tokens the issuer sends
/// now; answers the jar and the callback's answer.
async fn through_the_callback(base: &str, issuer: &TestIssuer, what: &str) -> (Jar, Answer) {
    let mut jar = Jar::default();
    let nav = get(&format!("{base}/page"), &jar, true).await;
    assert_eq!(nav.status, 302, "{base} {what}: {nav:?}");
    jar.take(&nav);
    let at_issuer = get(nav.location.as_deref().unwrap(), &Jar::default(), true).await;
    assert_eq!(at_issuer.status, 302, "{base} {what}: {at_issuer:?}");
    let callback = at_issuer.location.unwrap();
    assert!(
        callback.starts_with(&format!("{base}/oauth2/callback?")),
        "{base} {what}: {callback}"
    );
    let exchanges = issuer.code_exchanges();
    let back = get(&callback, &jar, true).await;
    assert_eq!(
        issuer.code_exchanges(),
        exchanges + 1,
        "{base} {what}: the code was exchanged, so the ID token is what decides: {back:?}"
    );
    (jar, back)
}

/// A sign-in without tampering succeeds: back to `/page` with a session
/// that speaks for alice. Answers the browser's jar.
async fn signs_in(base: &str, issuer: &TestIssuer, what: &str) -> Jar {
    let (mut jar, back) = through_the_callback(base, issuer, what).await;
    assert_eq!(back.status, 302, "{base} {what}: {back:?}");
    assert_eq!(back.location.as_deref(), Some("/page"), "{base} {what}");
    assert!(
        back.set_cookies.iter().any(|c| sets_session(c)),
        "{base} {what}: a session cookie: {back:?}"
    );
    jar.take(&back);
    let who = get(&format!("{base}/whoami"), &jar, false).await;
    assert_eq!(who.status, 200, "{base} {what}: {who:?}");
    let who: Value = serde_json::from_str(&who.body).unwrap();
    assert_eq!(
        who["request_principal"],
        format!("{}/alice", issuer.issuer()),
        "{base} {what}"
    );
    jar
}

/// The callback refuses what the issuer sends now: a 400, no session
/// cookie, and the next requests are still without a session.
async fn refused(base: &str, issuer: &TestIssuer, what: &str) {
    refused_with(base, issuer, what, 400).await;
}

/// [`refused`] with `status`: a 400 for a bad ID token, a 502 for one
/// whose key the issuer's key set lacks (the issuer's failure: a key it
/// rotated to and does not publish yet, or does not publish at all).
async fn refused_with(base: &str, issuer: &TestIssuer, what: &str, status: u16) {
    let (mut jar, back) = through_the_callback(base, issuer, what).await;
    assert_eq!(
        back.status, status,
        "{base} {what}: a {status} (docs/signin.md), never a sign-in: {back:?}"
    );
    assert!(
        !back.set_cookies.iter().any(|c| sets_session(c)),
        "{base} {what}: no session cookie: {back:?}"
    );
    jar.take(&back);
    assert!(!has_session(&jar), "{base} {what}: {jar:?}");
    let who = get(&format!("{base}/whoami"), &jar, false).await;
    assert_eq!(who.status, 401, "{base} {what}: still no session: {who:?}");
    let nav = get(&format!("{base}/page"), &jar, true).await;
    assert_eq!(nav.status, 302, "{base} {what}: sent to sign in again: {nav:?}");
    assert!(
        nav.location
            .as_deref()
            .is_some_and(|l| l.starts_with(&issuer.authorization_endpoint())),
        "{base} {what}: {nav:?}"
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every bad ID token the callback must refuse, by name.
fn bad_id_tokens(issuer: &TestIssuer) -> Vec<(&'static str, IdTokenTamper)> {
    let t = IdTokenTamper::new;
    vec![
        ("a wrong nonce", t().claim("nonce", json!("not-this-sign-in"))),
        ("no nonce", t().without_claim("nonce")),
        (
            "another iss",
            t().claim("iss", json!("https://evil.example/realms/demo")),
        ),
        (
            "an iss extending the issuer's",
            t().claim("iss", json!(format!("{}x", issuer.issuer()))),
        ),
        ("no iss", t().without_claim("iss")),
        ("another aud", t().claim("aud", json!("reviews"))),
        (
            "another client's token (aud and azp)",
            t().claim("aud", json!("reviews")).claim("azp", json!("reviews")),
        ),
        ("no aud", t().without_claim("aud")),
        ("azp of another client", t().claim("azp", json!("reviews"))),
        (
            "azp of another client, as an array",
            t().claim("azp", json!(["reviews"])),
        ),
        ("azp not a string", t().claim("azp", json!(42))),
        (
            "two audiences and no azp",
            t().claim("aud", json!(["productpage", "reviews"]))
                .without_claim("azp"),
        ),
        ("exp in the past", t().expires_in(-600)),
        ("no exp", t().without_claim("exp")),
        ("iat far in the past", t().issued_at(-3600)),
        ("iat in the future", t().issued_at(3600)),
        ("no iat", t().without_claim("iat")),
        ("nbf in the future", t().claim("nbf", json!(unix_now() + 3600))),
        ("no sub", t().without_claim("sub")),
        ("an empty sub", t().claim("sub", json!(""))),
        ("alg none (unsigned)", t().unsigned()),
        (
            "alg none under the published kid",
            t().unsigned().header("kid", json!(issuer.current_kid())),
        ),
        ("an unknown critical header", t().header("crit", json!(["exp"]))),
        ("HS256 with the client secret", t().hmac_with_client_secret()),
        (
            "a published kid on another key's signature",
            t().unpublished_key().header("kid", json!(issuer.current_kid())),
        ),
        ("no id_token", t().omit()),
    ]
}

async fn bad_id_tokens_are_refused(confidential: bool) {
    let f = fixture(confidential, Duration::from_secs(300));
    let (axum_base, actix_base) = serve_both(|| guard_from(&f.yaml));
    let cases = bad_id_tokens(&f.issuer);
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        f.issuer.tamper_id_tokens(None);
        signs_in(base, &f.issuer, "control, before").await;
        for (what, tamper) in &cases {
            f.issuer.tamper_id_tokens(Some(tamper.clone()));
            refused(base, &f.issuer, what).await;
        }
        f.issuer
            .tamper_id_tokens(Some(IdTokenTamper::new().unpublished_key()));
        refused_with(base, &f.issuer, "signed by a key not in the JWKS", 502).await;
        f.issuer.tamper_id_tokens(None);
        signs_in(base, &f.issuer, "control, after").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_client_refuses_bad_id_tokens_on_both_frameworks() {
    bad_id_tokens_are_refused(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confidential_client_refuses_bad_id_tokens_on_both_frameworks() {
    bad_id_tokens_are_refused(true).await;
}

/// The ID token a refresh returns is checked as OpenID Connect Core 12.2
/// says: as at sign-in, for the same user, with the first token's `nonce`
/// and an `auth_time` no earlier than the last one's (nor in the future).
/// A bad one ends the session; one whose key cannot be had does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_returns_a_bad_id_token_ends_the_session_on_both_frameworks() {
    // Tokens live 30 s, the refresh margin: every request refreshes.
    let f = fixture(false, Duration::from_secs(30));
    let (axum_base, actix_base) = serve_both(|| guard_from(&f.yaml));
    let t = IdTokenTamper::new;
    let cases = [
        ("another user", t().claim("sub", json!("mallory"))),
        ("another nonce", t().claim("nonce", json!("not-the-first"))),
        ("an earlier auth_time", t().claim("auth_time", json!(1))),
        (
            "an auth_time to come",
            t().claim("auth_time", json!(4_102_444_800_u64)),
        ),
        ("another audience", t().claim("aud", json!("reviews"))),
        ("another client's azp", t().claim("azp", json!("reviews"))),
        ("HS256 with the client secret", t().hmac_with_client_secret()),
        ("expired", t().expires_in(-600).issued_at(-900)),
    ];
    for base in [&axum_base, &actix_base] {
        ready(base).await;
        f.issuer.tamper_id_tokens(None);
        // Control: a refresh with a good ID token keeps the session.
        let mut jar = signs_in(base, &f.issuer, "control").await;
        let refreshes = f.issuer.refreshes();
        let who = get(&format!("{base}/whoami"), &jar, false).await;
        assert_eq!(who.status, 200, "{base} control: {who:?}");
        assert!(
            f.issuer.refreshes() > refreshes,
            "{base}: the request refreshed the session"
        );
        jar.take(&who);
        assert_eq!(get(&format!("{base}/whoami"), &jar, false).await.status, 200);
        // A later auth_time keeps the session: Keycloak reports the user's latest
        // authentication at the issuer (signed in again elsewhere with
        // `prompt=login`).
        // (Half a minute ahead, within the clock skew allowed: surely later
        // than the sign-in's, even within its second.)
        let later = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30;
        f.issuer
            .tamper_id_tokens(Some(IdTokenTamper::new().claim("auth_time", json!(later))));
        let who = get(&format!("{base}/whoami"), &jar, false).await;
        assert_eq!(who.status, 200, "{base} a later auth_time: {who:?}");
        jar.take(&who);
        // An ID token without auth_time is fine: OpenID Connect Core 12.2
        // compares it only when there is one.
        f.issuer
            .tamper_id_tokens(Some(IdTokenTamper::new().without_claim("auth_time")));
        let who = get(&format!("{base}/whoami"), &jar, false).await;
        assert_eq!(who.status, 200, "{base} no auth_time: {who:?}");
        // Nor does one signed by a key the issuer's key set lacks end the
        // session: a key it rotated to, which this relying party has not
        // fetched yet (it fetches at most once per interval). The refresh's
        // tokens are kept with the first ID token.
        jar.take(&who);
        f.issuer
            .tamper_id_tokens(Some(IdTokenTamper::new().unpublished_key()));
        let refreshes = f.issuer.refreshes();
        let who = get(&format!("{base}/whoami"), &jar, false).await;
        assert_eq!(who.status, 200, "{base} a key not fetched yet: {who:?}");
        assert_eq!(f.issuer.refreshes(), refreshes + 1, "{base}: refreshed");
        f.issuer.tamper_id_tokens(None);
        for (what, tamper) in &cases {
            f.issuer.tamper_id_tokens(None);
            let jar = signs_in(base, &f.issuer, what).await;
            f.issuer.tamper_id_tokens(Some(tamper.clone()));
            let refreshes = f.issuer.refreshes();
            let who = get(&format!("{base}/whoami"), &jar, false).await;
            assert_eq!(
                f.issuer.refreshes(),
                refreshes + 1,
                "{base} {what}: the session was refreshed"
            );
            assert_eq!(who.status, 401, "{base} {what}: the session ends: {who:?}");
            f.issuer.tamper_id_tokens(None);
            let again = get(&format!("{base}/whoami"), &jar, false).await;
            assert_eq!(again.status, 401, "{base} {what}: and stays ended: {again:?}");
        }
    }
}
