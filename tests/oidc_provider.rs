//! Interop with a real, OpenID-certified provider: panva's `oidc-provider`
//! (npm, installed by `scripts/test` from tests/oidc-provider/package-lock.json),
//! started on loopback, issuing JWT access tokens by client_credentials.
//! Includes a key rotation on the provider.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use palisade::jwt::{FetchSettings, JwtAuthenticator, JwtError, Provider};
use serde_json::Value;

mod common;

use common::oidc_provider::{self, OidcProvider, free_port};

const AUDIENCE: &str = "api://palisade-test";

/// Starts the provider on `port` with the signing keys of `keys`.
fn start(port: u16, keys: &Path) -> OidcProvider {
    oidc_provider::start(
        port,
        &[("AUDIENCE", AUDIENCE), ("KEYS_FILE", keys.to_str().unwrap())],
    )
}

fn new_key() -> Value {
    let out = Command::new(oidc_provider::node().expect("node is missing: run ./scripts/test"))
        .arg("gen-key.mjs")
        .current_dir(oidc_provider::dir())
        .output()
        .expect("node gen-key.mjs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn token(op: &OidcProvider) -> String {
    let http = reqwest::Client::new();
    let disco: Value = http
        .get(format!("{}/.well-known/openid-configuration", op.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint = disco["token_endpoint"].as_str().unwrap();
    let form = format!(
        "grant_type=client_credentials&client_id=palisade-test&client_secret=palisade-secret&resource={}&scope=read",
        AUDIENCE.replace(':', "%3A").replace('/', "%2F")
    );
    common::access_token(endpoint, &form).await
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_oidc_provider_verify_across_a_key_rotation() {
    let tmp = std::env::temp_dir().join(format!("palisade-op-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let keys = tmp.join("keys.json");
    let first = new_key();
    std::fs::write(&keys, serde_json::json!({"keys": [first.clone()]}).to_string()).unwrap();
    let port = free_port();
    let op = start(port, &keys);

    let mut fetch = FetchSettings::default();
    fetch.min_refresh_interval = Duration::from_millis(200);
    // A new key is fetched from a provider that was just restarted (node);
    // the wait ends as soon as that fetch does.
    fetch.unknown_kid_wait = Duration::from_secs(10);
    let jwt = JwtAuthenticator::builder()
        .realm("interop")
        .provider(
            Provider::builder(op.issuer.clone())
                .audience(AUDIENCE)
                .fetch_settings(fetch)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    let t1 = token(&op).await;
    assert_eq!(kid_of(&t1), first["kid"].as_str().unwrap());
    let id = jwt.verify(&t1).await.unwrap();
    assert_eq!(id.issuer(), Some(op.issuer.as_str()));
    assert!(id.token().unwrap().audiences.iter().any(|a| a == AUDIENCE));
    assert!(id.has_scope("read"));

    // oidc-provider marks access tokens `typ: at+jwt` (RFC 9068): a provider that requires it accepts.
    let typed = JwtAuthenticator::builder()
        .provider(
            Provider::builder(op.issuer.clone())
                .audience(AUDIENCE)
                .required_type("at+jwt")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert!(typed.verify(&t1).await.is_ok());
    let wrong_type = JwtAuthenticator::builder()
        .provider(
            Provider::builder(op.issuer.clone())
                .audience(AUDIENCE)
                .required_type("JWT")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(wrong_type.verify(&t1).await.unwrap_err(), JwtError::WrongType);

    // A token for another audience is refused.
    let strict = JwtAuthenticator::builder()
        .provider(
            Provider::builder(op.issuer.clone())
                .audience("someone-else")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(strict.verify(&t1).await.unwrap_err(), JwtError::InvalidAudience);

    // Rotate: restart the provider with a new first (signing) key, the old one still published.
    drop(op);
    let second = new_key();
    std::fs::write(
        &keys,
        serde_json::json!({"keys": [second.clone(), first]}).to_string(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let op = start(port, &keys);
    let t2 = token(&op).await;
    assert_eq!(kid_of(&t2), second["kid"].as_str().unwrap());
    assert!(
        jwt.verify(&t2).await.is_ok(),
        "the new key is fetched on first sight"
    );
    assert!(jwt.verify(&t1).await.is_ok(), "the old key still verifies");
    drop(op);
    std::fs::remove_dir_all(&tmp).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workloads_own_token_comes_from_oidc_providers_client_credentials_grant() {
    use palisade::client::ClientCredentials;
    use palisade::core::policy::ClientAuthMethod;

    let tmp = std::env::temp_dir().join(format!("palisade-op-cc-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let keys = tmp.join("keys.json");
    let op = start(free_port(), &keys);
    // The provider's client sends its secret in the form, and a resource
    // indicator (the audience, an absolute URI) makes its token a JWT.
    let own = ClientCredentials::builder(op.issuer.clone(), "palisade-test")
        .client_secret("palisade-secret")
        .client_auth_method(ClientAuthMethod::ClientSecretPost)
        .audience(AUDIENCE)
        .scopes(["read"])
        .build()
        .unwrap();
    let header = own.authorization().await.unwrap();
    assert_eq!(own.authorization().await.unwrap(), header, "cached");
    let jwt = JwtAuthenticator::builder()
        .provider(
            Provider::builder(op.issuer.clone())
                .audience(AUDIENCE)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let id = jwt.verify(header.strip_prefix("Bearer ").unwrap()).await.unwrap();
    assert!(id.has_scope("read"));
    assert_eq!(id.subject(), Some("palisade-test"));
    // A wrong secret: the provider's refusal, by its error code.
    let wrong = ClientCredentials::builder(op.issuer.clone(), "palisade-test")
        .client_secret("not-the-secret")
        .client_auth_method(ClientAuthMethod::ClientSecretPost)
        .audience(AUDIENCE)
        .build()
        .unwrap();
    match wrong.authorization().await {
        Err(palisade::client::ClientError::Refused(code)) => assert_eq!(code, "invalid_client"),
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
