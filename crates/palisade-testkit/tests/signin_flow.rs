//! The browser sign-in endpoints of `TestIssuer`, driven over real HTTP by a
//! plain client that does not follow redirects, as a relying party would.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_testkit::TestIssuer;
use reqwest::redirect::Policy;
use serde_json::{Value, json};

const CALLBACK: &str = "http://127.0.0.1:8080/callback";
/// RFC 7636, appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn decode(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(if b[i] == b'+' { b' ' } else { b[i] });
                    i += 1;
                }
            }
            (k.to_owned(), String::from_utf8(out).unwrap())
        })
        .collect()
}

/// The standard authorization request of a public client with PKCE.
fn pkce_request(client_id: &str) -> Vec<(&str, String)> {
    vec![
        ("response_type", "code".into()),
        ("client_id", client_id.into()),
        ("redirect_uri", CALLBACK.into()),
        ("scope", "openid profile".into()),
        ("state", "st-123".into()),
        ("nonce", "n-456".into()),
        ("code_challenge", CHALLENGE.into()),
        ("code_challenge_method", "S256".into()),
    ]
}

async fn authorize(issuer: &TestIssuer, params: &[(&str, String)]) -> reqwest::Response {
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http()
        .get(format!("{}?{}", issuer.authorization_endpoint(), encode(&pairs)))
        .send()
        .await
        .unwrap()
}

/// The redirect target of a `302` and its query parameters.
fn redirected(res: &reqwest::Response) -> (String, HashMap<String, String>) {
    assert_eq!(res.status(), 302, "expected a redirect");
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let (target, query) = location.split_once('?').unwrap_or((&location, ""));
    (target.to_owned(), decode(query))
}

async fn token_request(
    issuer: &TestIssuer,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut req = http()
        .post(issuer.token_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(form));
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

async fn exchange(issuer: &TestIssuer, client_id: &str, code: &str, verifier: &str) -> (u16, Value) {
    token_request(
        issuer,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", client_id),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
        ],
        None,
    )
    .await
}

async fn refresh(issuer: &TestIssuer, client_id: &str, token: &str) -> (u16, Value) {
    token_request(
        issuer,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("refresh_token", token),
        ],
        None,
    )
    .await
}

fn part(token: &str, i: usize) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(i).unwrap()).unwrap()).unwrap()
}

fn claims(token: &Value) -> Value {
    part(token.as_str().unwrap(), 1)
}

fn web_issuer() -> TestIssuer {
    TestIssuer::builder()
        .public_client("web")
        .user("alice", "wonderland", &["reader", "writer"])
        .start()
        .unwrap()
}

/// Signs alice in at once and answers the code.
async fn code_for_alice(issuer: &TestIssuer) -> String {
    issuer.sign_in_as(Some("alice"));
    let res = authorize(issuer, &pkce_request("web")).await;
    redirected(&res).1["code"].clone()
}

/// A one-connection-at-a-time HTTP listener that answers `status` and hands
/// each request body to the test.
fn listener(status: u16) -> (String, mpsc::Receiver<String>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}/backchannel-logout", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { return };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break String::new();
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break format!("{head}\r\n\r\n{body}");
                    }
                }
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status} Whatever\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            if tx.send(body).is_err() {
                return;
            }
        }
    });
    (uri, rx)
}

#[tokio::test]
async fn discovery_announces_the_sign_in_endpoints() {
    let issuer = web_issuer();
    let doc: Value = http()
        .get(format!("{}/.well-known/openid-configuration", issuer.issuer()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["authorization_endpoint"], issuer.authorization_endpoint());
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{}/protocol/openid-connect/auth", issuer.issuer())
    );
    assert_eq!(
        doc["end_session_endpoint"],
        format!("{}/protocol/openid-connect/logout", issuer.issuer())
    );
    assert_eq!(doc["userinfo_endpoint"], issuer.userinfo_endpoint());
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    let grants = doc["grant_types_supported"].as_array().unwrap();
    assert!(grants.contains(&json!("authorization_code")) && grants.contains(&json!("refresh_token")));
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post", "none"])
    );
    assert_eq!(doc["backchannel_logout_supported"], true);
    assert_eq!(doc["backchannel_logout_session_supported"], true);
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
}

#[tokio::test]
async fn instant_sign_in_then_code_exchange_with_pkce() {
    let issuer = TestIssuer::builder()
        .public_client("web")
        .user("alice", "wonderland", &["reader", "writer"])
        .default_audience("details")
        .start()
        .unwrap();
    issuer.sign_in_as(Some("alice"));
    let res = authorize(&issuer, &pkce_request("web")).await;
    let (target, params) = redirected(&res);
    assert_eq!(target, CALLBACK);
    assert_eq!(params["state"], "st-123");
    assert_eq!(params["iss"], issuer.issuer());
    assert!(params["code"].len() >= 40, "{}", params["code"]);
    assert_eq!(issuer.authorization_requests(), 1);

    let (status, body) = exchange(&issuer, "web", &params["code"], VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "openid profile");
    assert!(body["refresh_expires_in"].as_i64().unwrap() > 0);
    assert!(body["refresh_token"].as_str().unwrap().len() >= 40);

    let id = claims(&body["id_token"]);
    assert_eq!(id["iss"], issuer.issuer());
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["aud"], "web");
    assert_eq!(id["azp"], "web");
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["preferred_username"], "alice");
    assert_eq!(id["name"], "alice");
    assert_eq!(id["email"], "alice@example.test");
    let sid = id["sid"].as_str().unwrap().to_owned();
    assert!(!sid.is_empty());
    assert!(id["exp"].as_i64().unwrap() > id["iat"].as_i64().unwrap());
    assert!(id["auth_time"].as_i64().unwrap() <= id["iat"].as_i64().unwrap());

    let access = claims(&body["access_token"]);
    assert_eq!(access["realm_access"]["roles"], json!(["reader", "writer"]));
    assert_eq!(access["azp"], "web");
    assert_eq!(access["sid"], sid);
    assert_eq!(access["typ"], "Bearer");
    assert_eq!(access["aud"], "details");
    assert_eq!(access["scope"], "openid profile");
    assert_eq!(issuer.code_exchanges(), 1);

    let info: Value = http()
        .get(issuer.userinfo_endpoint())
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], "alice");
    let res = http()
        .get(issuer.userinfo_endpoint())
        .bearer_auth(body["id_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "an ID token is no access token");
}

#[tokio::test]
async fn wrong_or_missing_verifier_is_refused_and_spends_the_code() {
    let issuer = web_issuer();
    let code = code_for_alice(&issuer).await;
    let wrong = VERIFIER.replace('d', "e");
    let (status, body) = exchange(&issuer, "web", &code, &wrong).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    let (status, _) = exchange(&issuer, "web", &code, VERIFIER).await;
    assert_eq!(status, 400, "a code is spent by its first presentation");

    let code = code_for_alice(&issuer).await;
    let (status, body) = token_request(
        &issuer,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "web"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
        ],
        None,
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(issuer.code_exchanges(), 0);
}

#[tokio::test]
async fn replayed_code_is_refused_with_invalid_grant() {
    let issuer = web_issuer();
    let code = code_for_alice(&issuer).await;
    assert_eq!(exchange(&issuer, "web", &code, VERIFIER).await.0, 200);
    let (status, body) = exchange(&issuer, "web", &code, VERIFIER).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    let (status, body) = exchange(&issuer, "web", "made-up", VERIFIER).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(issuer.code_exchanges(), 1);
}

#[tokio::test]
async fn code_is_bound_to_its_redirect_uri_and_client() {
    let issuer = TestIssuer::builder()
        .public_client("web")
        .public_client("other")
        .start()
        .unwrap();
    let code = code_for_alice(&issuer).await;
    let (status, _) = token_request(
        &issuer,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "web"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:8080/elsewhere"),
            ("code_verifier", VERIFIER),
        ],
        None,
    )
    .await;
    assert_eq!(status, 400);
    let code = code_for_alice(&issuer).await;
    let (status, body) = exchange(&issuer, "other", &code, VERIFIER).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn confidential_client_authenticates_by_basic_or_post() {
    let issuer = TestIssuer::builder()
        .client("app", "app-secret")
        .user("alice", "wonderland", &[])
        .start()
        .unwrap();
    issuer.sign_in_as(Some("alice"));
    // PKCE is optional for a confidential client.
    let no_pkce: Vec<(&str, String)> = pkce_request("app").into_iter().take(6).collect();
    for (basic, post, expected) in [
        (Some(("app", "wrong")), None, 401),
        (None, Some("wrong"), 401),
        (Some(("app", "app-secret")), None, 200),
        (None, Some("app-secret"), 200),
    ] {
        let code = redirected(&authorize(&issuer, &no_pkce).await).1["code"].clone();
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", CALLBACK),
        ];
        if let Some(secret) = post {
            form.extend([("client_id", "app"), ("client_secret", secret)]);
        }
        let (status, body) = token_request(&issuer, &form, basic).await;
        assert_eq!(status, expected, "{basic:?} {post:?}: {body}");
        if expected == 401 {
            assert_eq!(body["error"], "invalid_client");
        } else {
            // Without its secret, the confidential client cannot refresh.
            let (status, _) = refresh(&issuer, "app", body["refresh_token"].as_str().unwrap()).await;
            assert_eq!(status, 401);
        }
    }
    assert_eq!(issuer.code_exchanges(), 2);
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_is_refused() {
    let issuer = web_issuer();
    let code = code_for_alice(&issuer).await;
    let (_, first) = exchange(&issuer, "web", &code, VERIFIER).await;
    let first_rt = first["refresh_token"].as_str().unwrap();
    let (status, second) = refresh(&issuer, "web", first_rt).await;
    assert_eq!(status, 200, "{second}");
    let second_rt = second["refresh_token"].as_str().unwrap();
    assert_ne!(second_rt, first_rt);
    assert_eq!(
        claims(&second["id_token"])["sid"],
        claims(&first["id_token"])["sid"]
    );
    assert_eq!(claims(&second["id_token"])["nonce"], "n-456");

    let (status, body) = refresh(&issuer, "web", first_rt).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(refresh(&issuer, "web", second_rt).await.0, 200);
    assert_eq!(issuer.refreshes(), 2);
}

#[tokio::test]
async fn refuse_refresh_answers_invalid_grant_until_switched_off() {
    let issuer = web_issuer();
    let code = code_for_alice(&issuer).await;
    let (_, tokens) = exchange(&issuer, "web", &code, VERIFIER).await;
    let rt = tokens["refresh_token"].as_str().unwrap();
    issuer.refuse_refresh(true);
    let (status, body) = refresh(&issuer, "web", rt).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(issuer.refreshes(), 0);
    issuer.refuse_refresh(false);
    assert_eq!(refresh(&issuer, "web", rt).await.0, 200);
    assert_eq!(issuer.refreshes(), 1);
}

/// The hidden inputs of the login form.
fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        s.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    html.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|rest| {
            let (name, rest) = rest.split_once("\" value=\"").unwrap();
            let value = rest.split_once('"').unwrap().0;
            (unescape(name), unescape(value))
        })
        .collect()
}

#[tokio::test]
async fn login_form_checks_the_password() {
    let issuer = web_issuer();
    let mut request = pkce_request("web");
    request[4].1 = "a \"quoted\" <state> & more".into();
    let res = authorize(&issuer, &request).await;
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(html.contains("<form method=\"post\">"), "{html}");
    assert!(html.contains("name=\"username\"") && html.contains("name=\"password\""));
    assert!(html.contains("id=\"kc-login\""));
    let hidden = hidden_inputs(&html);
    assert!(
        hidden.contains(&("state".into(), "a \"quoted\" <state> & more".into())),
        "{hidden:?}"
    );
    assert!(hidden.contains(&("code_challenge".into(), CHALLENGE.into())));

    let submit = |password: &str| {
        let mut form = hidden.clone();
        form.push(("username".into(), "alice".into()));
        form.push(("password".into(), password.into()));
        form.push(("login".into(), "Sign In".into()));
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        http()
            .post(issuer.authorization_endpoint())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(&pairs))
            .send()
    };
    let res = submit("guess").await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("location").is_none());
    let html = res.text().await.unwrap();
    assert!(html.contains("Invalid username or password."), "{html}");
    assert!(html.contains("id=\"kc-login\""));

    let res = submit("wonderland").await.unwrap();
    let (target, params) = redirected(&res);
    assert_eq!(target, CALLBACK);
    assert_eq!(params["state"], "a \"quoted\" <state> & more");
    let (status, body) = exchange(&issuer, "web", &params["code"], VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims(&body["id_token"])["sub"], "alice");
    assert_eq!(
        issuer.authorization_requests(),
        1,
        "form submissions are not counted"
    );
}

#[tokio::test]
async fn login_hint_of_a_known_user_signs_in_at_once() {
    let issuer = web_issuer();
    let mut request = pkce_request("web");
    request.push(("login_hint", "alice".into()));
    assert_eq!(redirected(&authorize(&issuer, &request).await).0, CALLBACK);
    let mut request = pkce_request("web");
    request.push(("login_hint", "bob".into()));
    assert_eq!(authorize(&issuer, &request).await.status(), 200);
    let mut request = pkce_request("web");
    request.push(("prompt", "none".into()));
    let (_, params) = redirected(&authorize(&issuer, &request).await);
    assert_eq!(params["error"], "login_required");
}

#[tokio::test]
async fn a_redirect_uri_not_allowed_gets_a_400_page_never_a_redirect() {
    let issuer = TestIssuer::builder()
        .public_client("web")
        .public_client("registered")
        .redirect_uris("registered", &["https://app.example/cb"])
        .start()
        .unwrap();
    issuer.sign_in_as(Some("alice"));
    for (client, uri) in [
        ("web", "https://evil.example/cb"),
        ("web", "http://127.0.0.1:8080@evil.example/cb"),
        ("web", "http://localhost:8080/cb#fragment"),
        ("registered", "https://app.example/cb/more"),
        ("registered", CALLBACK),
        ("nobody", CALLBACK),
    ] {
        let mut request = pkce_request(client);
        request[2].1 = uri.into();
        let res = authorize(&issuer, &request).await;
        assert_eq!(res.status(), 400, "{client} {uri}");
        assert!(res.headers().get("location").is_none());
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }
    let mut request = pkce_request("registered");
    request[2].1 = "https://app.example/cb".into();
    assert_eq!(
        redirected(&authorize(&issuer, &request).await).0,
        "https://app.example/cb"
    );
}

#[tokio::test]
async fn request_errors_are_redirected_with_state_and_iss() {
    let issuer = web_issuer();
    issuer.sign_in_as(Some("alice"));
    let cases: [(usize, &str, &str); 4] = [
        (0, "token", "unsupported_response_type"),
        (3, "profile email", "invalid_scope"),
        (7, "plain", "invalid_request"),
        (6, "", "invalid_request"),
    ];
    for (index, value, error) in cases {
        let mut request = pkce_request("web");
        request[index].1 = value.into();
        if value.is_empty() {
            // A public client without PKCE.
            request.truncate(6);
        }
        let (target, params) = redirected(&authorize(&issuer, &request).await);
        assert_eq!(target, CALLBACK);
        assert_eq!(params.get("error").map(String::as_str), Some(error), "{value}");
        assert_eq!(params["state"], "st-123");
        assert_eq!(params["iss"], issuer.issuer());
        assert!(!params.contains_key("code"));
    }
}

#[tokio::test]
async fn iss_parameter_can_be_switched_off() {
    let issuer = TestIssuer::builder()
        .public_client("web")
        .iss_response_parameter(false)
        .start()
        .unwrap();
    let doc: Value = http()
        .get(format!("{}/.well-known/openid-configuration", issuer.issuer()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["authorization_response_iss_parameter_supported"], false);
    let code = code_for_alice(&issuer).await;
    assert!(!code.is_empty());
    let (_, params) = redirected(&authorize(&issuer, &pkce_request("web")).await);
    assert!(
        params.contains_key("code") && !params.contains_key("iss"),
        "{params:?}"
    );
}

#[tokio::test]
async fn end_session_redirects_records_and_delivers_a_logout_token() {
    let (backchannel, received) = listener(200);
    let issuer = TestIssuer::builder()
        .public_client("web")
        .backchannel_logout_uri("web", &backchannel)
        .start()
        .unwrap();
    let code = code_for_alice(&issuer).await;
    let (_, tokens) = exchange(&issuer, "web", &code, VERIFIER).await;
    let id_token = tokens["id_token"].as_str().unwrap();
    let sid = claims(&tokens["id_token"])["sid"].clone();

    let res = http()
        .get(format!(
            "{}?{}",
            issuer.end_session_endpoint(),
            encode(&[
                ("id_token_hint", id_token),
                ("post_logout_redirect_uri", "http://localhost:8080/bye"),
                ("state", "out-1"),
            ])
        ))
        .send()
        .await
        .unwrap();
    let (target, params) = redirected(&res);
    assert_eq!(target, "http://localhost:8080/bye");
    assert_eq!(params["state"], "out-1");

    let requests = issuer.end_session_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].id_token_hint.as_deref(), Some(id_token));
    assert_eq!(
        requests[0].post_logout_redirect_uri.as_deref(),
        Some("http://localhost:8080/bye")
    );
    assert_eq!(requests[0].state.as_deref(), Some("out-1"));

    let deliveries = issuer.backchannel_deliveries();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, Some(200));
    assert_eq!(deliveries[0].uri, backchannel);
    let request = received.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        request.starts_with("POST /backchannel-logout HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(request.contains("content-type: application/x-www-form-urlencoded"));
    let body = request.split_once("\r\n\r\n").unwrap().1;
    let token = decode(body)["logout_token"].clone();
    assert_eq!(token, deliveries[0].logout_token);
    assert_eq!(part(&token, 0)["typ"], "logout+jwt");
    let logout = part(&token, 1);
    assert_eq!(logout["sid"], sid);
    assert_eq!(logout["sub"], "alice");
    assert_eq!(logout["aud"], "web");
    assert_eq!(logout["iss"], issuer.issuer());
    assert_eq!(
        logout["events"],
        json!({"http://schemas.openid.net/event/backchannel-logout": {}})
    );
    assert!(logout.get("nonce").is_none());

    // The IdP session is over: no refresh, no userinfo.
    let (status, body) = refresh(&issuer, "web", tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    let res = http()
        .get(issuer.userinfo_endpoint())
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn end_session_without_a_redirect_answers_a_page_and_refuses_foreign_uris() {
    let issuer = web_issuer();
    let code = code_for_alice(&issuer).await;
    let (_, tokens) = exchange(&issuer, "web", &code, VERIFIER).await;
    let id_token = tokens["id_token"].as_str().unwrap();

    let res = http()
        .post(issuer.end_session_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[
            ("id_token_hint", id_token),
            ("post_logout_redirect_uri", "https://evil.example/"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.headers().get("location").is_none());
    // Refused before the session ended.
    assert_eq!(
        refresh(&issuer, "web", tokens["refresh_token"].as_str().unwrap())
            .await
            .0,
        200
    );

    let res = http()
        .post(issuer.end_session_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("id_token_hint", id_token)]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("You are signed out"));
    assert_eq!(issuer.end_session_requests().len(), 2);
    assert!(issuer.backchannel_deliveries().is_empty(), "no URI registered");
}

#[tokio::test]
async fn logout_token_preset_and_async_delivery() {
    let (uri, received) = listener(400);
    let issuer = TestIssuer::builder().default_audience("web").start().unwrap();
    let token = issuer
        .logout_token()
        .subject("alice")
        .claim("sid", json!("s-1"))
        .sign();
    let header = part(&token, 0);
    assert_eq!(header["typ"], "logout+jwt");
    let c = part(&token, 1);
    assert_eq!(c["aud"], "web");
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["sid"], "s-1");
    assert!(c.get("preferred_username").is_none());
    assert!(c.get("nonce").is_none());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);
    assert!(c["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());
    assert_ne!(
        part(&issuer.logout_token().sign(), 1)["jti"],
        c["jti"],
        "jti is random"
    );

    let broken = issuer
        .logout_token()
        .without_claim("events")
        .audience("app")
        .sign();
    let b = part(&broken, 1);
    assert!(b.get("events").is_none());
    assert_eq!(b["aud"], "app");

    assert_eq!(issuer.deliver_logout_async(&uri, &token).await, Some(400));
    let body = received.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        decode(body.split_once("\r\n\r\n").unwrap().1)["logout_token"],
        token
    );
    assert_eq!(
        issuer
            .deliver_logout_async("http://127.0.0.1:1/nobody", &token)
            .await,
        None
    );
}

#[test]
fn blocking_delivery_answers_the_status() {
    let (uri, received) = listener(200);
    let issuer = TestIssuer::start().unwrap();
    let token = issuer.logout_token().claim("sid", json!("s-2")).sign();
    assert_eq!(issuer.deliver_logout(&uri, &token), Some(200));
    assert!(
        received
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .contains("logout_token=")
    );
}

#[test]
fn uris_for_an_unregistered_client_are_a_configuration_error() {
    let err = TestIssuer::builder()
        .redirect_uris("ghost", &[CALLBACK])
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    // S256 of the RFC 7636 verifier, to keep the constants honest.
    assert_eq!(
        URL_SAFE_NO_PAD.encode(digest(&SHA256, VERIFIER.as_bytes())),
        CHALLENGE
    );
}
