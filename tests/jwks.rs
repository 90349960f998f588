//! JWKS behaviour against the real in-process issuer over HTTP: rotation,
//! outages, refetch limits, lenient key sets, the verified-token cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod common;

use common::wait_until;
use palisade::core::policy::FromPolicy;
use palisade::jwt::{FetchSettings, JwtAuthenticator, JwtError, Provider};
use palisade::testkit::{Fault, TestIssuer};
use serde_json::json;

fn settings(min_interval_ms: u64) -> FetchSettings {
    let mut f = FetchSettings::default();
    f.min_refresh_interval = Duration::from_millis(min_interval_ms);
    f.unknown_kid_wait = Duration::from_secs(2);
    f.timeout = Duration::from_millis(500);
    f
}

fn authenticator(issuer: &TestIssuer, fetch: FetchSettings) -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .realm("test")
        .provider(
            Provider::builder(issuer.issuer())
                .audience("account")
                .fetch_settings(fetch)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_jwks_and_a_good_token_verifies() {
    let issuer = TestIssuer::start().unwrap();
    let jwt = authenticator(&issuer, settings(100));
    let id = jwt.verify(&issuer.token().subject("alice").sign()).await.unwrap();
    assert_eq!(id.subject(), Some("alice"));
    assert_eq!(issuer.discovery_fetches(), 1);
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_concurrent_load_fails_no_request() {
    let issuer = Arc::new(TestIssuer::start().unwrap());
    // Four busy loops fill both cores: the refetch the new key asks for
    // gets time to finish (the other tests' 500 ms is for faults).
    let mut f = settings(200);
    f.timeout = Duration::from_secs(3);
    f.unknown_kid_wait = Duration::from_secs(5);
    let jwt = authenticator(&issuer, f);
    jwt.verify(&issuer.token().sign()).await.unwrap();
    let failures = Arc::new(AtomicUsize::new(0));
    let new_kid_ok = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first_kid = issuer.current_kid();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (issuer, jwt, failures, new_kid_ok, done, first_kid) = (
            issuer.clone(),
            jwt.clone(),
            failures.clone(),
            new_kid_ok.clone(),
            done.clone(),
            first_kid.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let kid = issuer.current_kid();
                let token = issuer.token().sign();
                match jwt.verify(&token).await {
                    Ok(_) if kid != first_kid => {
                        new_kid_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rotating = issuer.clone();
    tokio::task::spawn_blocking(move || rotating.rotate_key())
        .await
        .unwrap();
    wait_until("tokens of the new key", async || {
        new_kid_ok.load(Ordering::Relaxed) >= 20
    })
    .await;
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(
        new_kid_ok.load(Ordering::Relaxed) > 0,
        "no token of the new key was verified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_keys_keep_working_while_the_issuer_is_down() {
    let issuer = TestIssuer::start().unwrap();
    let mut f = settings(100);
    f.min_ttl = Duration::from_millis(100);
    f.default_ttl = Duration::from_millis(200);
    let jwt = authenticator(&issuer, f);
    jwt.verify(&issuer.token().sign()).await.unwrap();
    // A failed fetch of the discovered key set sends the next to the
    // discovery document: either counts as a refresh tried.
    let tried = || issuer.jwks_fetches() + issuer.discovery_fetches();
    for fault in [Fault::Unavailable, Fault::Garbage, Fault::Hang, Fault::Reset] {
        issuer.set_fault(fault.clone());
        let before = tried();
        wait_until("a failed background refresh", async || tried() > before).await;
        // A fresh token (not cached) signed by the known key still verifies.
        let id = jwt.verify(&issuer.token().subject("during-outage").sign()).await;
        assert!(id.is_ok(), "{fault:?}: {id:?}");
    }
    issuer.set_fault(Fault::None);
}

/// A token naming a key not yet known waits for the fetch it asks for,
/// and no longer: when that fetch ends without the key (not published) or
/// fails, the token is refused then, not after the rest of
/// `unknown_kid_wait` (2 s here); once the issuer answers again, the new
/// key's tokens verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_is_refused_as_soon_as_its_fetch_fails() {
    let issuer = TestIssuer::start().unwrap();
    let jwt = authenticator(&issuer, settings(100));
    jwt.verify(&issuer.token().sign()).await.unwrap();
    let refused_soon = async |token: &str, why: &str| {
        // The next fetch is allowed 100 ms after the last.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let before = issuer.jwks_fetches();
        let started = std::time::Instant::now();
        let refused = jwt.verify(token).await;
        let took = started.elapsed();
        assert_eq!(refused.unwrap_err(), JwtError::UnknownKey, "{why}");
        assert!(issuer.jwks_fetches() > before, "{why}: a fetch was asked for");
        assert!(
            took < Duration::from_millis(1_000),
            "{why}: refused after {took:?}"
        );
    };
    let unpublished = issuer.token().kid(Some("never-published")).sign();
    refused_soon(&unpublished, "the fetch ends without the key").await;
    issuer.rotate_key();
    issuer.set_fault(Fault::Unavailable);
    let rotated = issuer.token().sign();
    refused_soon(&rotated, "the fetch fails").await;
    issuer.set_fault(Fault::None);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        jwt.verify(&rotated).await.is_ok(),
        "the issuer back, the new key is fetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_with_the_issuer_down_fails_closed_then_recovers() {
    let issuer = TestIssuer::start().unwrap();
    issuer.set_fault(Fault::Unavailable);
    let jwt = authenticator(&issuer, settings(100));
    let token = issuer.token().sign();
    assert_eq!(jwt.verify(&token).await.unwrap_err(), JwtError::KeysUnavailable);
    issuer.set_fault(Fault::None);
    wait_until("recovery", async || jwt.verify(&token).await.is_ok()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_unknown_kids_cause_one_fetch_per_interval() {
    let issuer = TestIssuer::start().unwrap();
    // Interval 6 s, wait 2 s: a burst 4.5 s after the first fetch waits for
    // the one fetch allowed at 6 s; the check after it has 4 s of slack
    // before a further fetch would be due within its wait (with 3 s it had
    // 1 s, which 1,000 refusals on a loaded 2-core CI machine outlasted).
    let mut f = settings(6000);
    f.unknown_kid_wait = Duration::from_secs(2);
    let jwt = authenticator(&issuer, f);
    let started = std::time::Instant::now();
    jwt.verify(&issuer.token().sign()).await.unwrap();
    let after_start = issuer.jwks_fetches();
    assert_eq!(after_start, 1);
    // Mint first (RSA signing is slow), then send the burst at once.
    let tokens: Vec<String> = (0..1000)
        .map(|i| issuer.token().kid(Some(&format!("random-{i}"))).sign())
        .collect();
    // And the one sent right after the burst: signed now, so that the time
    // from the burst's refetch to its check is not spent signing (RSA in a
    // debug build on a loaded machine): past 1 s, a refetch would be due
    // within the 2 s wait, and the check would rightly wait for it.
    let token = issuer.token().kid(Some("yet-another")).sign();
    tokio::time::sleep(Duration::from_millis(4500).saturating_sub(started.elapsed())).await;
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens {
        let jwt = jwt.clone();
        tasks.spawn(async move { jwt.verify(&token).await });
    }
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().unwrap_err(), JwtError::UnknownKey);
        refused += 1;
    }
    assert_eq!(refused, 1000);
    assert_eq!(
        issuer.jwks_fetches(),
        after_start + 1,
        "exactly one refetch for the burst"
    );
    // Now no fetch is allowed within the wait: refusal is immediate, nothing fetched.
    let t = std::time::Instant::now();
    assert_eq!(jwt.verify(&token).await.unwrap_err(), JwtError::UnknownKey);
    // The wait it must not do is `unknown_kid_wait`, 2 s: well under
    // that, with room for a loaded 2-core CI machine (500 ms flaked there).
    assert!(
        t.elapsed() < Duration::from_millis(1_500),
        "should not wait for a fetch that cannot happen: {:?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(issuer.jwks_fetches(), after_start + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oaep_and_unknown_keys_in_the_jwks_do_not_break_good_tokens() {
    let issuer = TestIssuer::start().unwrap();
    let n = issuer.jwks()["keys"][0]["n"].clone();
    issuer.add_jwk(
        json!({"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc-key", "n": n, "e": "AQAB"}),
    );
    issuer.add_jwk(json!({"kty": "XYZ", "kid": "from-the-future", "x": "abc"}));
    issuer.add_jwk(json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"}));
    let jwt = authenticator(&issuer, settings(100));
    assert!(jwt.verify(&issuer.token().sign()).await.is_ok());
    // The encryption key is never used to verify, even when a token names it.
    let forged = issuer.token().kid(Some("enc-key")).sign();
    assert_eq!(jwt.verify(&forged).await.unwrap_err(), JwtError::UnknownKey);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_of_a_retired_key_are_refused() {
    let issuer = TestIssuer::start().unwrap();
    let jwt = authenticator(&issuer, settings(100));
    let old_kid = issuer.current_kid();
    let token = issuer.token().sign();
    // Verified, then answered from the shared cache, then from this
    // thread's own copy (made on its second hit there, the third call).
    for _ in 0..4 {
        jwt.verify(&token).await.unwrap();
    }
    issuer.rotate_key();
    issuer.retire_key(&old_kid);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // A token of the new key triggers the refetch that drops the old key.
    jwt.verify(&issuer.token().sign()).await.unwrap();
    assert_eq!(jwt.verify(&token).await.unwrap_err(), JwtError::UnknownKey);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_missed_a_new_key_before_its_fetch_ended_takes_it() {
    use palisade::core::Check;
    use palisade::core::authn::{AuthOutcome, Authenticator, OwnedRequest};
    let issuer = TestIssuer::start().unwrap();
    // A refetch at most every 3 s, unknown kids wait 2 s: a request that
    // waited for the fetch after the one that brought its key is refused.
    let mut f = settings(3_000);
    f.unknown_kid_wait = Duration::from_secs(2);
    let jwt = authenticator(&issuer, f);
    jwt.verify(&issuer.token().sign()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    issuer.rotate_key();
    let request = |t: String| OwnedRequest::get("/").header("authorization", format!("Bearer {t}"));
    let (a, b) = (
        request(issuer.token().subject("a").sign()),
        request(issuer.token().subject("b").sign()),
    );
    // Both miss the new key now; the second runs only after the first's
    // fetch has brought it.
    let (Check::Pending(first), Check::Pending(second)) = (jwt.authenticate(&a), jwt.authenticate(&b)) else {
        panic!("a token of a key not fetched yet was decided at once")
    };
    let before = issuer.jwks_fetches();
    for outcome in [first.await, second.await] {
        assert!(matches!(outcome, AuthOutcome::Authenticated(_)), "{outcome:?}");
    }
    assert_eq!(issuer.jwks_fetches(), before + 1, "one fetch for both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_eddsa_issuers_verify() {
    use palisade::testkit::SigningAlgorithm;
    for alg in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
        let issuer = TestIssuer::builder().algorithm(alg).start().unwrap();
        let jwt = authenticator(&issuer, settings(100));
        assert!(jwt.verify(&issuer.token().sign()).await.is_ok(), "{alg:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_jwks_is_refused_and_old_keys_kept() {
    let issuer = TestIssuer::start().unwrap();
    let mut f = settings(100);
    f.max_body = 4096;
    let jwt = authenticator(&issuer, f);
    jwt.verify(&issuer.token().sign()).await.unwrap();
    for i in 0..40 {
        issuer.add_jwk(json!({"kty": "XYZ", "kid": format!("padding-{i}"), "x": "a".repeat(100)}));
    }
    let old_key_fresh_token = issuer.token().subject("minted-before-rotation").sign();
    issuer.rotate_key();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let before = issuer.jwks_fetches();
    let new = issuer.token().sign();
    assert_eq!(jwt.verify(&new).await.unwrap_err(), JwtError::UnknownKey);
    assert!(
        issuer.jwks_fetches() > before,
        "the refetch happened and was refused"
    );
    // The last good key set is still in use.
    let id = jwt.verify(&old_key_fresh_token).await.unwrap();
    assert_eq!(id.subject(), Some("minted-before-rotation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_max_age_sets_the_refresh_interval() {
    let issuer = TestIssuer::start().unwrap();
    issuer.set_cache_control(Some("public, max-age=1"));
    let mut f = settings(100);
    f.min_ttl = Duration::from_millis(100);
    f.default_ttl = Duration::from_secs(3600);
    let jwt = authenticator(&issuer, f);
    jwt.verify(&issuer.token().sign()).await.unwrap();
    let first = issuer.jwks_fetches();
    // Refreshed at three quarters of max-age, well before the one-hour default.
    wait_until("a refresh driven by max-age", async || {
        issuer.jwks_fetches() >= first + 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_older_than_max_stale_are_dropped_during_an_outage() {
    let issuer = TestIssuer::start().unwrap();
    let mut f = settings(100);
    f.min_ttl = Duration::from_millis(100);
    f.default_ttl = Duration::from_millis(100);
    f.max_stale = Duration::from_millis(600);
    let jwt = authenticator(&issuer, f);
    jwt.verify(&issuer.token().sign()).await.unwrap();
    issuer.set_fault(Fault::Unavailable);
    wait_until("the stale keys to be dropped", async || {
        jwt.verify(&issuer.token().sign()).await.err() == Some(JwtError::KeysUnavailable)
    })
    .await;
    issuer.set_fault(Fault::None);
    wait_until("recovery", async || {
        jwt.verify(&issuer.token().sign()).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_issuers_each_verify_their_own_tokens() {
    let a = TestIssuer::builder().realm("a").start().unwrap();
    let b = TestIssuer::builder()
        .realm("b")
        .algorithm(palisade::testkit::SigningAlgorithm::Es256)
        .start()
        .unwrap();
    let jwt = JwtAuthenticator::builder()
        .provider(Provider::builder(a.issuer()).audience("account").build().unwrap())
        .provider(Provider::builder(b.issuer()).audience("account").build().unwrap())
        .build()
        .unwrap();
    assert_eq!(
        jwt.verify(&a.token().subject("from-a").sign())
            .await
            .unwrap()
            .issuer(),
        Some(a.issuer())
    );
    assert_eq!(
        jwt.verify(&b.token().subject("from-b").sign())
            .await
            .unwrap()
            .issuer(),
        Some(b.issuer())
    );
    // B's key cannot vouch for a token that claims to come from A.
    let forged = b.token().issuer(a.issuer()).sign();
    assert!(jwt.verify(&forged).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keycloak_json_file_configures_the_authenticator() {
    let issuer = TestIssuer::builder().default_audience("reviews").start().unwrap();
    let dir = std::env::temp_dir().join(format!("palisade-kc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keycloak.json");
    std::fs::write(
        &file,
        json!({
            "realm": "demo",
            "auth-server-url": format!("{}/", issuer.base_url()),
            "resource": "reviews",
            "bearer-only": true,
            "ssl-required": "external",
            "verify-token-audience": true,
            "use-resource-role-mappings": true,
            "principal-attribute": "preferred_username",
            "min-time-between-jwks-requests": 10,
            "public-key-cache-ttl": 86400,
            "credentials": {"secret": "not-used"}
        })
        .to_string(),
    )
    .unwrap();
    let jwt = JwtAuthenticator::from_keycloak_json(&file).unwrap();
    assert_eq!(jwt.realm(), "demo");
    let id = jwt
        .verify(
            &issuer
                .token()
                .subject("kc-user")
                .client_roles("reviews", &["editor"])
                .sign(),
        )
        .await
        .unwrap();
    assert!(id.has_client_role("reviews", "editor"));
    assert_eq!(
        jwt.verify(&issuer.token().audience("details").sign())
            .await
            .unwrap_err(),
        JwtError::InvalidAudience
    );
    assert!(!format!("{jwt:?}").contains("not-used"));
    std::fs::write(
        &file,
        "{\"realm\": \"demo\", \"auth-server-url\": \"x\", \"bearer-onli\": true}",
    )
    .unwrap();
    let err = JwtAuthenticator::from_keycloak_json(&file).unwrap_err();
    assert!(
        err.to_string().contains("keycloak.json") && err.to_string().contains("bearer-onli"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_issuer_over_https_needs_its_ca() {
    let issuer = TestIssuer::builder().tls().start().unwrap();
    assert!(issuer.issuer().starts_with("https://127.0.0.1:"));
    let token = issuer.token().sign();
    // Without the private CA the TLS handshake fails: fail closed.
    let untrusting = authenticator(&issuer, settings(100));
    assert_eq!(
        untrusting.verify(&token).await.unwrap_err(),
        JwtError::KeysUnavailable
    );
    assert_eq!(issuer.discovery_fetches(), 0, "no request got through TLS");
    // With it (JwtSettings.caFile in a policy file), discovery and JWKS work.
    let mut f = settings(100);
    f.extra_ca_pem = Some(issuer.ca_pem().unwrap().as_bytes().to_vec());
    let trusting = authenticator(&issuer, f);
    assert_eq!(
        trusting.verify(&token).await.unwrap().issuer(),
        Some(issuer.issuer())
    );
}

/// Keys fetched over TLS stay on TLS: an https issuer's discovery document
/// that names a plain-http `jwks_uri` is refused, and so is a redirect from
/// https to plain http (one from https to https is followed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_an_https_issuer_are_never_fetched_over_plain_http() {
    let plain = TestIssuer::start().unwrap();
    let tls = TestIssuer::builder()
        .tls()
        .advertised_jwks_uri(plain.jwks_uri())
        .start()
        .unwrap();
    let mut f = settings(100);
    f.extra_ca_pem = Some(tls.ca_pem().unwrap().as_bytes().to_vec());
    let discovered = authenticator(&tls, f.clone());
    assert_eq!(
        discovered.verify(&tls.token().sign()).await.unwrap_err(),
        JwtError::KeysUnavailable
    );
    assert!(tls.discovery_fetches() > 0, "the document was read");
    let via = |issuer: &str, to: &str| {
        JwtAuthenticator::builder()
            .provider(
                Provider::builder(issuer)
                    .audience("account")
                    .jwks_uri(format!("{}/redirect?to={to}", tls.issuer()))
                    .fetch_settings(f.clone())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    let downgraded = via(plain.issuer(), &plain.jwks_uri());
    assert_eq!(
        downgraded.verify(&plain.token().sign()).await.unwrap_err(),
        JwtError::KeysUnavailable
    );
    assert_eq!(plain.jwks_fetches(), 0, "no request reached the plain-http keys");
    // The same redirect to https is followed (the TLS issuer's own keys,
    // served whatever its discovery document says).
    let secure = TestIssuer::builder().tls().start().unwrap();
    let mut g = settings(100);
    g.extra_ca_pem = Some(secure.ca_pem().unwrap().as_bytes().to_vec());
    let followed = JwtAuthenticator::builder()
        .provider(
            Provider::builder(secure.issuer())
                .audience("account")
                .jwks_uri(format!("{}/redirect?to={}", secure.issuer(), secure.jwks_uri()))
                .fetch_settings(g)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert!(followed.verify(&secure.token().sign()).await.is_ok());
    assert_eq!(secure.jwks_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_specific_jwt_settings_win_over_global_ones_whatever_the_order() {
    let issuer = TestIssuer::start().unwrap();
    // The issuer's own document requires `typ: at+jwt`; a later global one asks for `JWT`.
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  jwtRules: [{{issuer: {iss}, audiences: [account]}}]\n---\napiVersion: palisade.dev/v1alpha1\nkind: JwtSettings\nmetadata: {{name: mine}}\nspec: {{issuer: {iss}, requiredType: at+jwt}}\n---\napiVersion: palisade.dev/v1alpha1\nkind: JwtSettings\nmetadata: {{name: everyone}}\nspec: {{requiredType: JWT}}\n",
        iss = issuer.issuer()
    );
    let set = palisade::core::policy::PolicySet::from_yaml_str(&yaml, "order.yaml").unwrap();
    let w = palisade::core::policy::Workload::new("details", "default");
    let jwt = JwtAuthenticator::from_policy(&set.for_workload(&w))
        .unwrap()
        .unwrap();
    let at_jwt = issuer.token().header("typ", json!("at+jwt")).sign();
    let plain = issuer.token().sign();
    assert!(jwt.verify(&at_jwt).await.is_ok());
    assert_eq!(jwt.verify(&plain).await.unwrap_err(), JwtError::WrongType);
}

/// An ID token, a logout token or a DPoP proof signed by the issuer is no
/// access token (RFC 8725 §3.11): Keycloak signs its ID tokens with the
/// same key and header as its access tokens, and only their payload `typ`
/// tells them apart. A `typ` that is not a string-boundary-safe media type
/// is refused, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_another_kind_are_not_access_tokens() {
    let issuer = TestIssuer::start().unwrap();
    let jwt = authenticator(&issuer, settings(100));
    let keycloak_access = issuer.token().claim("typ", json!("Bearer")).sign();
    assert!(jwt.verify(&keycloak_access).await.is_ok());
    let at_jwt = issuer.token().header("typ", json!("application/at+jwt")).sign();
    assert!(jwt.verify(&at_jwt).await.is_ok());
    for payload_typ in ["ID", "id", "Refresh", "Offline", "Logout", "Serialized-ID"] {
        let token = issuer.token().claim("typ", json!(payload_typ)).sign();
        assert_eq!(
            jwt.verify(&token).await.unwrap_err(),
            JwtError::WrongType,
            "payload typ {payload_typ}"
        );
    }
    for header_typ in ["logout+jwt", "application/logout+jwt", "secevent+jwt", "DPoP+JWT"] {
        let token = issuer.token().header("typ", json!(header_typ)).sign();
        assert_eq!(
            jwt.verify(&token).await.unwrap_err(),
            JwtError::WrongType,
            "header typ {header_typ}"
        );
    }
    // A logout token whose issuer sets no `typ` is known by its event.
    let logout = issuer
        .token()
        .claim(
            "events",
            json!({"http://schemas.openid.net/event/backchannel-logout": {}}),
        )
        .sign();
    assert_eq!(jwt.verify(&logout).await.unwrap_err(), JwtError::WrongType);
    // A multibyte character across the `application/` prefix's length.
    let odd = issuer.token().header("typ", json!("aaaaaaaaaaa\u{20ac}")).sign();
    assert!(jwt.verify(&odd).await.is_ok());
    let required = JwtAuthenticator::builder()
        .provider(
            Provider::builder(issuer.issuer())
                .audience("account")
                .required_type("at+jwt")
                .fetch_settings(settings(100))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(required.verify(&odd).await.unwrap_err(), JwtError::WrongType);
    // A verifier of ID and logout tokens says so.
    let any_kind = JwtAuthenticator::builder()
        .provider(
            Provider::builder(issuer.issuer())
                .audience("account")
                .fetch_settings(settings(100))
                .dangerous()
                .any_token_kind()
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let id_token = issuer.token().claim("typ", json!("ID")).sign();
    assert!(any_kind.verify(&id_token).await.is_ok());
}

/// A token bound to its holder by a method Palisade cannot check (RFC
/// 7800 `cnf` with only `jwk`, `kid` or `jku`) is not taken as a bearer
/// token; one without `cnf` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bound_by_an_unknown_method_is_refused() {
    let issuer = TestIssuer::start().unwrap();
    let jwt = authenticator(&issuer, settings(100));
    for cnf in [
        json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}}),
        json!({"kid": "k1"}),
        json!({}),
        json!("bound"),
    ] {
        let token = issuer.token().claim("cnf", cnf.clone()).sign();
        assert_eq!(
            jwt.verify(&token).await.unwrap_err(),
            JwtError::InvalidClaim("cnf"),
            "{cnf}"
        );
    }
    assert!(jwt.verify(&issuer.token().sign()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_must_name_its_subject_unless_told_otherwise() {
    let issuer = TestIssuer::start().unwrap();
    let anonymous = issuer.token().without_claim("sub").sign();
    let jwt = authenticator(&issuer, settings(100));
    assert!(
        matches!(jwt.verify(&anonymous).await, Err(JwtError::MissingClaim("sub"))),
        "no sub and no client_id: refused"
    );
    let lenient = JwtAuthenticator::builder()
        .provider(
            Provider::builder(issuer.issuer())
                .audience("account")
                .fetch_settings(settings(100))
                .dangerous()
                .subject_optional()
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let id = lenient.verify(&anonymous).await.unwrap();
    assert!(
        id.subject().unwrap_or_default().is_empty(),
        "no subject to show: {:?}",
        id.subject()
    );
}

/// Checks `token` through `guard` as a request; true when allowed.
async fn allowed(guard: &palisade::core::Guard, token: &str) -> bool {
    use palisade::core::Check;
    use palisade::core::adapter::Decision;
    use palisade::core::authn::OwnedRequest;
    let req = OwnedRequest::get("/").header("authorization", format!("Bearer {token}"));
    let decision = match guard.check(&req) {
        Check::Ready(d) => d,
        Check::Pending(f) => f.await,
    };
    matches!(decision, Decision::Allow(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_keys_of_issuers_still_trusted_the_same_way() {
    use palisade::core::Guard;
    let a = TestIssuer::builder().realm("a").start().unwrap();
    let b = TestIssuer::builder().realm("b").start().unwrap();
    let provider = |i: &TestIssuer, aud: &str| {
        Provider::builder(i.issuer())
            .audience(aud)
            .fetch_settings(settings(100))
            .build()
            .unwrap()
    };
    let guard_for = |providers: Vec<Provider>| {
        let jwt = providers
            .into_iter()
            .fold(JwtAuthenticator::builder(), |b, p| b.provider(p))
            .build()
            .unwrap();
        Guard::builder().authenticator(jwt).build().unwrap()
    };
    let guard = guard_for(vec![provider(&a, "account")]);
    let token_a = a.token().sign();
    assert!(allowed(&guard, &token_a).await);
    assert_eq!(a.jwks_fetches(), 1);

    // The same configuration again: the old authenticator stays, with its keys.
    guard.replace(guard_for(vec![provider(&a, "account")]));
    // Another audience for A and a new issuer B: A's keys are still good
    // (fetched the same way), its verified tokens are not.
    guard.replace(guard_for(vec![provider(&a, "other"), provider(&b, "account")]));
    let token_b = b.token().sign();
    assert!(
        !allowed(&guard, &token_a).await,
        "audience `account` is no longer accepted"
    );
    assert!(allowed(&guard, &a.token().audience("other").sign()).await);
    assert!(allowed(&guard, &token_b).await);
    // A replaced authenticator would have fetched A's keys on its own; give
    // any such fetch time to land before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a.jwks_fetches(),
        1,
        "A's keys were carried over, not fetched again"
    );
    assert_eq!(b.jwks_fetches(), 1);
}

/// Polls a future to its end on this thread, with no Tokio runtime: as a
/// `futures` executor or a synchronous caller's `block_on` does.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// `verify` polled outside any Tokio runtime waits for keys on the
/// `palisade-jwks` thread's timer; Tokio's own timer would panic there
/// ("must be called from the context of a Tokio 1.x runtime").
#[test]
fn verify_waits_for_keys_outside_a_tokio_runtime() {
    let issuer = TestIssuer::start().unwrap();
    let jwt = authenticator(&issuer, settings(100));
    assert!(tokio::runtime::Handle::try_current().is_err());
    let id = block_on(jwt.verify(&issuer.token().subject("alice").sign())).unwrap();
    assert_eq!(id.subject(), Some("alice"));
    // A kid the issuer never publishes: a fetch is asked for and waited
    // for, up to `unknown_kid_wait`, then the token is refused.
    std::thread::sleep(Duration::from_millis(150));
    let fetches = issuer.jwks_fetches();
    let stranger = issuer.token().kid(Some("never-published")).sign();
    assert!(matches!(
        block_on(jwt.verify(&stranger)),
        Err(JwtError::UnknownKey)
    ));
    assert!(issuer.jwks_fetches() > fetches, "the wait asked for a fetch");
}

/// A production policy file run against a stand-in issuer: the keys of the
/// file's issuer come from the `TestIssuer` (`PolicySet::jwks_uri_override`),
/// every other setting is the file's, and the relaxation is said aloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_policy_file_runs_against_a_test_issuer_whose_keys_stand_in() {
    use palisade::core::policy::{PolicySet, Workload};
    common::logs::capture("palisade=warn");
    const PRODUCTION: &str = "https://keycloak.example.com/realms/shop";
    let stand_in = TestIssuer::start().unwrap();
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: {PRODUCTION}
    jwksUri: {PRODUCTION}/protocol/openid-connect/certs
    audiences: [details]
"
    );
    let set = PolicySet::from_yaml_str(&yaml, "policy.yaml")
        .unwrap()
        .jwks_uri_override(PRODUCTION, stand_in.jwks_uri());
    let jwt = JwtAuthenticator::from_policy(&set.for_workload(&Workload::new("details", "shop")))
        .unwrap()
        .unwrap();
    let token = |aud: &str| stand_in.token().issuer(PRODUCTION).audience(aud).sign();
    let id = jwt.verify(&token("details")).await.unwrap();
    assert_eq!(id.issuer(), Some(PRODUCTION));
    assert_eq!(stand_in.jwks_fetches(), 1);
    // The file's audiences still hold, and the stand-in's own name is no
    // issuer of the file.
    assert_eq!(
        jwt.verify(&token("reviews")).await.unwrap_err(),
        JwtError::InvalidAudience
    );
    assert!(
        jwt.verify(&stand_in.token().audience("details").sign())
            .await
            .is_err()
    );
    // Another issuer's key cannot sign for it.
    let other = TestIssuer::start().unwrap();
    assert!(
        jwt.verify(&other.token().issuer(PRODUCTION).audience("details").sign())
            .await
            .is_err()
    );
    let warned = common::logs::lines("jwks_uri_override");
    assert!(
        warned
            .iter()
            .any(|l| l.contains(PRODUCTION) && l.contains(&stand_in.jwks_uri()) && l.contains("policy.yaml")),
        "{warned:?}"
    );
    // The guard built from the set holds that authenticator, for what a
    // handler asks of it (a token in a WebSocket message); a reload to a
    // guard without one leaves none.
    let guard = palisade::guard_from_policy(&set, &Workload::new("details", "shop")).unwrap();
    let held = guard.authenticator::<JwtAuthenticator>().unwrap();
    assert_eq!(
        held.verify(&token("details")).await.unwrap().issuer(),
        Some(PRODUCTION)
    );
    guard.replace(
        palisade::prelude::Guard::builder()
            .allow_unauthenticated()
            .build()
            .unwrap(),
    );
    assert!(guard.authenticator::<JwtAuthenticator>().is_none());
    // Without it, the file's own location: nothing asks the stand-in.
    let as_written = PolicySet::from_yaml_str(&yaml, "policy.yaml").unwrap();
    let policy = as_written.for_workload(&Workload::new("details", "shop"));
    assert_eq!(policy.jwks_uri_override(PRODUCTION), None);
}

/// The override stands in for inline keys and a Keycloak adapter's realm
/// key as for a `jwksUri`; one whose issuer the workload does not
/// configure is said to override nothing, and one that is no URL is
/// refused as the override's, not as the file's field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_override_stands_in_for_inline_and_realm_keys_and_says_what_it_cannot_do() {
    use palisade::core::policy::{PolicySet, Workload};
    common::logs::capture("palisade=warn");
    let stand_in = TestIssuer::start().unwrap();
    // The keys the file holds inline, and the tokens they sign.
    let written = TestIssuer::start().unwrap();
    const INLINE: &str = "https://inline.example.com/realms/shop";
    const KEYCLOAK: &str = "https://kc.example.com/realms/shop";
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: {INLINE}
    jwks: '{jwks}'
    audiences: [details]
---
apiVersion: palisade.dev/v1alpha1
kind: KeycloakAdapter
metadata: {{name: kc, namespace: shop}}
spec: {{realm: shop, auth-server-url: 'https://kc.example.com/', resource: details, bearer-only: true, verify-token-audience: true, realm-public-key: \"{pem}\"}}
",
        jwks = written.jwks(),
        pem = written.public_key_pem().replace('\n', "\\n"),
    );
    let details = Workload::new("details", "shop");
    let set = PolicySet::from_yaml_str(&yaml, "policy.yaml").unwrap();
    let token = |by: &TestIssuer, iss: &str| by.token().issuer(iss).audience("details").sign();
    // As written: the file's keys.
    let as_written = JwtAuthenticator::from_policy(&set.for_workload(&details))
        .unwrap()
        .unwrap();
    for iss in [INLINE, KEYCLOAK] {
        assert!(as_written.verify(&token(&written, iss)).await.is_ok(), "{iss}");
        assert!(as_written.verify(&token(&stand_in, iss)).await.is_err(), "{iss}");
    }
    // Overridden: the stand-in's keys, and no longer the file's.
    let overridden = set
        .clone()
        .jwks_uri_override(INLINE, stand_in.jwks_uri())
        .jwks_uri_override(KEYCLOAK, stand_in.jwks_uri())
        .jwks_uri_override("https://nobody.example.com/realms/shop", stand_in.jwks_uri());
    let jwt = JwtAuthenticator::from_policy(&overridden.for_workload(&details))
        .unwrap()
        .unwrap();
    for iss in [INLINE, KEYCLOAK] {
        assert!(jwt.verify(&token(&stand_in, iss)).await.is_ok(), "{iss}");
        assert!(jwt.verify(&token(&written, iss)).await.is_err(), "{iss}");
    }
    // Said at once of the one no document configures, of no other.
    let nothing = common::logs::lines("overrides nothing");
    assert!(
        nothing.iter().any(|l| l.contains("nobody.example.com")),
        "{nothing:?}"
    );
    assert!(
        nothing
            .iter()
            .all(|l| !l.contains(INLINE) && !l.contains(KEYCLOAK)),
        "{nothing:?}"
    );
    // An override that is no URL: refused, naming the override.
    let err =
        JwtAuthenticator::from_policy(&set.jwks_uri_override(INLINE, "keys.json").for_workload(&details))
            .unwrap_err();
    assert!(
        err.to_string().contains("PolicySet::jwks_uri_override") && err.field.is_none(),
        "{err}"
    );
}
