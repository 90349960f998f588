//! Interop with a real, OpenID-certified provider: panva's `oidc-provider`
//! (npm, installed by `scripts/test` from tests/oidc-provider/package-lock.json),
//! started on loopback, issuing JWT access tokens by client_credentials.
//! Includes a key rotation on the provider.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use palisade::jwt::{FetchSettings, JwtAuthenticator, JwtError, Provider};
use serde_json::Value;

mod common;

const AUDIENCE: &str = "api://palisade-test";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider")
}

struct Op {
    child: Child,
    issuer: String,
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(port: u16, keys: &Path) -> Op {
    let node = which("node").unwrap_or_else(|| panic!("node is missing: run ./scripts/test (it installs nodejs with apt) or `apt-get install nodejs npm`"));
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
        .env("AUDIENCE", AUDIENCE)
        .env("KEYS_FILE", keys)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start oidc-provider");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("oidc-provider exited before listening")
            .unwrap();
        if line.starts_with("listening on") {
            break;
        }
    }
    Op { child, issuer }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

fn new_key() -> Value {
    let out = Command::new("node")
        .arg("gen-key.mjs")
        .current_dir(dir())
        .output()
        .expect("node gen-key.mjs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn token(op: &Op) -> String {
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
