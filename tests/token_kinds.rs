//! Kinds of token beyond a bearer JWT, against a real issuer: panva's
//! `oidc-provider` (tests/oidc-provider/server.mjs with `INTROSPECTION=1`),
//! which issues opaque tokens for the resource `api://palisade-opaque`,
//! introspects and revokes them and counts the introspection requests it
//! receives, and issues DPoP-bound tokens to a client that sends a proof.
//! Opaque tokens by introspection (RFC 7662), DPoP (RFC 9449) and
//! protected-resource metadata (RFC 9728), configured from the policy file,
//! served by both frameworks.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpResponse, web};
use axum::body::Body;
use palisade::core::Identity;
use palisade::core::policy::{FromPolicy, PolicySet, Workload};
use palisade::jwt::dpop::DpopKey;
use palisade::jwt::{JwtAuthenticator, JwtError, Provider};
use palisade::testkit::TestIssuer;
use serde_json::Value;
use tower::ServiceExt as _;

mod common;

use common::oidc_provider::{self, OidcProvider, free_port};

const OPAQUE: &str = "api://palisade-opaque";
const JWT_AUDIENCE: &str = "api://palisade-test";

fn start() -> OidcProvider {
    let keys = std::env::temp_dir().join(format!("palisade-introspection-{}.json", std::process::id()));
    oidc_provider::start_anywhere(&[("INTROSPECTION", "1"), ("KEYS_FILE", keys.to_str().unwrap())])
}

/// A token for `resource` by client credentials.
async fn token(op: &OidcProvider, resource: &str) -> String {
    let form = format!(
        "grant_type=client_credentials&client_id=palisade-test&client_secret=palisade-secret&scope=read&resource={}",
        palisade::core::form::encode(resource)
    );
    common::access_token(&format!("{}/token", op.issuer), &form).await
}

async fn introspections(op: &OidcProvider) -> u64 {
    op.counted("introspections").await["count"].as_u64().unwrap()
}

async fn revoke(op: &OidcProvider, token: &str) {
    let res = reqwest::Client::new()
        .post(format!("{}/token/revocation", op.issuer))
        .basic_auth("palisade-test", Some("palisade-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", palisade::core::form::encode(token)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// The policy: tokens of the issuer for `audience`, introspected with
/// `settings` (extra lines of `spec.introspection`), and every path needs a
/// request principal.
fn guard(op: &OidcProvider, audience: &str, settings: &str) -> palisade::prelude::Guard {
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: {issuer}
    audiences: [{audience}]
---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: introspection, namespace: default}}
spec:
  issuer: {issuer}
  introspection:
    clientId: palisade-rs
    clientSecret: palisade-rs-secret
{settings}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: signed-in, namespace: default}}
spec:
  rules:
  - from:
    - source: {{requestPrincipals: ['*']}}
",
        issuer = op.issuer
    );
    let set = PolicySet::from_yaml_str(&yaml, "introspection.yaml").unwrap();
    palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap()
}

struct Answer {
    status: u16,
    /// Every `WWW-Authenticate`, joined with ` | `.
    challenge: String,
    nonce: Option<String>,
    body: Value,
}

async fn whoami_axum(id: Option<Identity>) -> axum::Json<Value> {
    axum::Json(palisade::core::whoami(id.as_ref()))
}

async fn call_axum(guard: &palisade::prelude::Guard, token: &str) -> Answer {
    request_axum(guard, "/whoami", Some(token)).await
}

async fn request_axum(guard: &palisade::prelude::Guard, path: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send_axum(guard, path, &headers).await
}

async fn send_axum(guard: &palisade::prelude::Guard, path: &str, headers: &[(&str, &str)]) -> Answer {
    let app = axum::Router::new()
        .route("/whoami", axum::routing::get(whoami_axum))
        .layer(palisade::axum::PalisadeLayer::new(guard.clone()));
    let mut req = http::Request::get(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Body::empty()).unwrap();
    let res = app.oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(" | ");
    let nonce = res
        .headers()
        .get("dpop-nonce")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    Answer {
        status,
        challenge,
        nonce,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

async fn call_actix(guard: &palisade::prelude::Guard, token: &str) -> Answer {
    request_actix(guard, "/whoami", Some(token)).await
}

async fn request_actix(guard: &palisade::prelude::Guard, path: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send_actix(guard, path, &headers).await
}

async fn send_actix(guard: &palisade::prelude::Guard, path: &str, headers: &[(&str, &str)]) -> Answer {
    let app = actix_web::test::init_service(
        App::new()
            .wrap(palisade::actix::Palisade::new(guard.clone()))
            .route(
                "/whoami",
                web::get().to(|id: Option<Identity>| async move {
                    HttpResponse::Ok().json(palisade::core::whoami(id.as_ref()))
                }),
            ),
    )
    .await;
    let mut req = actix_web::test::TestRequest::get().uri(path);
    for (name, value) in headers {
        req = req.append_header((*name, *value));
    }
    let req = req.to_request();
    let res = actix_web::test::call_service(&app, req).await;
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get_all("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(" | ");
    let nonce = res
        .headers()
        .get("dpop-nonce")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = actix_web::test::read_body(res).await;
    Answer {
        status,
        challenge,
        nonce,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

#[actix_web::test]
async fn opaque_tokens_are_introspected_once_cached_and_refused_after_revocation() {
    let op = start();
    let guard = guard(&op, OPAQUE, "    cacheTime: 1s\n    negativeCacheTime: 30s");
    let t = token(&op, OPAQUE).await;
    assert!(
        !t.contains('.'),
        "oidc-provider should issue an opaque token: {t}"
    );

    // The answer becomes the same identity as a JWT's, on both frameworks.
    for answer in [call_axum(&guard, &t).await, call_actix(&guard, &t).await] {
        assert_eq!(answer.status, 200);
        let body = answer.body;
        assert_eq!(body["issuer"], op.issuer.as_str());
        assert_eq!(
            body["subject"], "palisade-test",
            "client_id stands in for sub: {body}"
        );
        assert_eq!(body["audiences"], serde_json::json!([OPAQUE]));
        assert_eq!(body["scopes"], serde_json::json!(["read"]));
        assert!(body["claims"].get("active").is_none(), "{body}");
    }
    let after_first = introspections(&op).await;
    assert!(after_first >= 1);

    // Many requests at once with a new token make one call.
    let fresh = token(&op, OPAQUE).await;
    let before = introspections(&op).await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (guard, fresh) = (guard.clone(), fresh.clone());
        calls.spawn(async move { call_axum(&guard, &fresh).await.status });
    }
    for status in calls.join_all().await {
        assert_eq!(status, 200);
    }
    assert_eq!(
        introspections(&op).await,
        before + 1,
        "concurrent requests share one call"
    );

    // A request that missed the cache while a call was out, run only after
    // that call ended, takes its answer: no second call.
    let later = token(&op, OPAQUE).await;
    let before = introspections(&op).await;
    let req = palisade::core::authn::OwnedRequest::get("/whoami")
        .header("authorization", format!("Bearer {later}"));
    let (palisade::core::Check::Pending(first), palisade::core::Check::Pending(second)) =
        (guard.check(&req), guard.check(&req))
    else {
        panic!("a new opaque token is not in the cache")
    };
    for decision in [first.await, second.await] {
        assert!(
            matches!(decision, palisade::core::adapter::Decision::Allow(_)),
            "{decision:?}"
        );
    }
    assert_eq!(
        introspections(&op).await,
        before + 1,
        "a request that missed the cache before the call ended makes no second call"
    );

    // An unknown token: 401 with the bearer challenge, remembered (one call for two requests).
    let before = introspections(&op).await;
    for framework in 0..2 {
        let answer = if framework == 0 {
            call_axum(&guard, "not-a-token-the-issuer-knows").await
        } else {
            call_actix(&guard, "not-a-token-the-issuer-knows").await
        };
        assert_eq!(answer.status, 401);
        assert!(
            answer.challenge.starts_with("Bearer realm="),
            "{}",
            answer.challenge
        );
        assert!(
            answer.challenge.contains("error=\"invalid_token\""),
            "{}",
            answer.challenge
        );
        assert!(answer.challenge.contains("not active"), "{}", answer.challenge);
    }
    assert_eq!(introspections(&op).await, before + 1, "the refusal is cached");

    // Revoked at the issuer: refused once the cache time has passed.
    revoke(&op, &t).await;
    common::wait_until("the revoked token to be refused", async || {
        call_axum(&guard, &t).await.status == 401
    })
    .await;
    assert_eq!(call_actix(&guard, &t).await.status, 401);
    // The other token is still good.
    assert_eq!(call_axum(&guard, &fresh).await.status, 200);
}

#[actix_web::test]
async fn an_unreachable_endpoint_refuses_with_a_clear_reason_unless_stale_answers_are_allowed() {
    let op = start();
    let strict = guard(&op, OPAQUE, "    cacheTime: 1s");
    let lenient = guard(&op, OPAQUE, "    cacheTime: 1s\n    serveStaleFor: 5m");
    // Refusals kept for no time: the endpoint's refusal still replaces
    // the token's last (active) answer.
    let forgetful = guard(
        &op,
        OPAQUE,
        "    cacheTime: 1s\n    serveStaleFor: 5m\n    negativeCacheTime: 0s",
    );
    let t = token(&op, OPAQUE).await;
    let revoked = token(&op, OPAQUE).await;
    assert_eq!(call_axum(&strict, &t).await.status, 200);
    assert_eq!(call_axum(&lenient, &t).await.status, 200);
    assert_eq!(call_axum(&forgetful, &revoked).await.status, 200);
    revoke(&op, &revoked).await;

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        call_axum(&forgetful, &revoked).await.status,
        401,
        "refused by the endpoint"
    );
    drop(op);
    for answer in [call_axum(&strict, &t).await, call_actix(&strict, &t).await] {
        assert_eq!(answer.status, 401);
        assert!(
            answer.challenge.contains("introspection endpoint is unavailable"),
            "{}",
            answer.challenge
        );
    }
    // Served stale: known to be active a moment ago.
    assert_eq!(call_axum(&lenient, &t).await.status, 200);
    assert_eq!(call_actix(&lenient, &t).await.status, 200);
    // But a token never seen is not, nor one the endpoint has refused
    // since it was last found active.
    assert_eq!(call_axum(&lenient, "never-seen-before").await.status, 401);
    for answer in [
        call_axum(&forgetful, &revoked).await,
        call_actix(&forgetful, &revoked).await,
    ] {
        assert_eq!(answer.status, 401, "{}", answer.challenge);
    }
}

/// With `jwts: true` the issuer's JWTs go to the endpoint instead of being
/// checked by signature. oidc-provider refuses to introspect its own JWTs
/// (`unsupported_token_type`), so here the token is refused for want of an
/// answer: proof that it was not accepted on its signature alone.
#[actix_web::test]
async fn an_issuers_jwts_go_to_the_endpoint_when_configured() {
    let op = start();
    let jwt = token(&op, JWT_AUDIENCE).await;
    assert_eq!(jwt.split('.').count(), 3);

    let by_signature = guard(&op, JWT_AUDIENCE, "    cacheTime: 1s");
    let before = introspections(&op).await;
    let answer = call_axum(&by_signature, &jwt).await;
    assert_eq!(answer.status, 200, "{}", answer.challenge);
    assert_eq!(answer.body["audiences"], serde_json::json!([JWT_AUDIENCE]));
    assert_eq!(
        introspections(&op).await,
        before,
        "a JWT is verified by its signature"
    );

    let introspected = guard(&op, JWT_AUDIENCE, "    jwts: true");
    let answer = call_axum(&introspected, &jwt).await;
    assert_eq!(
        introspections(&op).await,
        before + 1,
        "the JWT went to the endpoint"
    );
    assert_eq!(answer.status, 401);
    assert!(
        answer.challenge.contains("introspection endpoint is unavailable"),
        "{}",
        answer.challenge
    );
}

/// RFC 9728, as an MCP client uses it: a request without a token gets a
/// challenge naming the metadata; the metadata names the issuer; the
/// issuer's discovery names its token endpoint; the token it grants is
/// accepted. Both frameworks serve the same document.
#[actix_web::test]
async fn a_client_finds_the_issuer_from_the_protected_resource_metadata() {
    let op = start();
    let settings = "---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {name: metadata, namespace: default}
spec:
  resourceMetadata:
    resource: https://shop.example/details
    scopes: [read]
    resourceName: Details";
    let guard = guard(&op, OPAQUE, &format!("    cacheTime: 1s\n{settings}"));
    let url = "https://shop.example/.well-known/oauth-protected-resource/details";
    for answer in [
        request_axum(&guard, "/whoami", None).await,
        request_actix(&guard, "/whoami", None).await,
    ] {
        assert_eq!(answer.status, 401);
        assert!(
            answer.challenge.contains(&format!("resource_metadata=\"{url}\"")),
            "{}",
            answer.challenge
        );
    }
    let refused = request_axum(&guard, "/whoami", Some("unknown")).await;
    assert!(
        refused.challenge.contains("error=\"invalid_token\""),
        "{}",
        refused.challenge
    );
    assert!(
        refused.challenge.contains("resource_metadata="),
        "{}",
        refused.challenge
    );

    let path = "/.well-known/oauth-protected-resource/details";
    let (a, b) = (
        request_axum(&guard, path, None).await,
        request_actix(&guard, path, None).await,
    );
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.body, b.body);
    let meta = a.body;
    assert_eq!(meta["resource"], "https://shop.example/details");
    assert_eq!(meta["scopes_supported"], serde_json::json!(["read"]));
    assert_eq!(meta["resource_name"], "Details");
    assert_eq!(
        meta["bearer_methods_supported"],
        serde_json::json!(["header", "query"])
    );
    let issuer = meta["authorization_servers"][0].as_str().unwrap();
    assert_eq!(issuer, op.issuer);

    let disco: Value = reqwest::get(format!("{issuer}/.well-known/openid-configuration"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let form = format!(
        "grant_type=client_credentials&client_id=palisade-test&client_secret=palisade-secret&scope=read&resource={}",
        palisade::core::form::encode(OPAQUE)
    );
    let t = common::access_token(disco["token_endpoint"].as_str().unwrap(), &form).await;
    assert_eq!(call_axum(&guard, &t).await.status, 200);
}

/// A DPoP-bound token from the issuer: the client credentials grant with
/// a proof of `key` (RFC 9449 §5).
async fn dpop_token(op: &OidcProvider, key: &DpopKey, resource: &str) -> String {
    let endpoint = format!("{}/token", op.issuer);
    let form = format!(
        "grant_type=client_credentials&client_id=palisade-test&client_secret=palisade-secret&scope=read&resource={}",
        palisade::core::form::encode(resource)
    );
    let res: Value = reqwest::Client::new()
        .post(&endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("dpop", key.proof("POST", &endpoint, None, None))
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(res["token_type"], "DPoP", "{res}");
    res["access_token"].as_str().unwrap().to_owned()
}

const HOST: &str = "details.test";

/// `Authorization: DPoP` and a fresh proof of `key` for GET `path`.
fn dpop_headers(key: &DpopKey, token: &str, path: &str) -> Vec<(String, String)> {
    vec![
        ("host".into(), HOST.into()),
        ("authorization".into(), format!("DPoP {token}")),
        (
            "dpop".into(),
            key.proof("GET", &format!("http://{HOST}{path}"), Some(token), None),
        ),
    ]
}

fn refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

#[actix_web::test]
async fn dpop_bound_tokens_are_accepted_only_with_a_fresh_proof_of_their_key() {
    let op = start();
    let dpop = "---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {name: dpop, namespace: default}
spec:
  dpop: {}";
    let guard = guard(
        &op,
        &format!("{JWT_AUDIENCE}, {OPAQUE}"),
        &format!("    cacheTime: 1s\n{dpop}"),
    );
    let key = DpopKey::generate().unwrap();
    for resource in [JWT_AUDIENCE, OPAQUE] {
        let token = dpop_token(&op, &key, resource).await;
        // Accepted with a proof, on both frameworks.
        let h = dpop_headers(&key, &token, "/whoami");
        let a = send_axum(&guard, "/whoami", &refs(&h)).await;
        assert_eq!(a.status, 200, "{resource}: {}", a.challenge);
        assert_eq!(a.body["claims"]["cnf"]["jkt"], key.thumbprint());
        let h2 = dpop_headers(&key, &token, "/whoami");
        assert_eq!(
            send_actix(&guard, "/whoami", &refs(&h2)).await.status,
            200,
            "{resource}"
        );

        // The same proof again: a replay.
        let replay = send_axum(&guard, "/whoami", &refs(&h)).await;
        assert_eq!(replay.status, 401);
        assert!(replay.challenge.starts_with("DPoP algs="), "{}", replay.challenge);
        assert!(
            replay.challenge.contains("error=\"invalid_dpop_proof\""),
            "{}",
            replay.challenge
        );
        assert!(
            replay.challenge.contains("already been used"),
            "{}",
            replay.challenge
        );
        assert!(
            replay.challenge.contains(" | Bearer realm="),
            "the bearer challenge stays: {}",
            replay.challenge
        );

        // No proof.
        let no_proof = [("host", HOST), ("authorization", &format!("DPoP {token}"))];
        let a = send_axum(&guard, "/whoami", &no_proof).await;
        assert_eq!(a.status, 401);
        assert!(a.challenge.contains("invalid_dpop_proof"), "{}", a.challenge);

        // As a bearer token: told to use DPoP.
        let a = request_axum(&guard, "/whoami", Some(&token)).await;
        assert_eq!(a.status, 401);
        assert!(a.challenge.contains("bound to a DPoP key"), "{}", a.challenge);
        let challenges: Vec<&str> = a.challenge.split(" | ").collect();
        assert!(
            challenges[0].starts_with("Bearer realm=") && challenges[0].contains("error=\"invalid_token\""),
            "the Bearer challenge first, with its error: {}",
            a.challenge
        );
        assert!(
            challenges
                .iter()
                .any(|c| c.starts_with("DPoP algs=") && c.contains("error=\"invalid_token\"")),
            "{}",
            a.challenge
        );

        // A proof of another key, refused before it is recorded (sent
        // again, it is no replay): a thief of the token, signing with keys
        // of their own, cannot fill the replay store.
        let other = DpopKey::generate().unwrap();
        let h = dpop_headers(&other, &token, "/whoami");
        for _ in 0..2 {
            let a = send_axum(&guard, "/whoami", &refs(&h)).await;
            assert_eq!(a.status, 401);
            assert!(a.challenge.contains("error=\"invalid_token\""), "{}", a.challenge);
            assert!(
                a.challenge.contains("not bound to the DPoP proof"),
                "{}",
                a.challenge
            );
        }

        // A proof for another URI.
        let wrong = dpop_headers(&key, &token, "/elsewhere");
        let a = send_axum(&guard, "/whoami", &refs(&wrong)).await;
        assert_eq!(a.status, 401);
        assert!(a.challenge.contains("another URI"), "{}", a.challenge);

        // A Host that is no plain `host[:port]` (here with a path) does
        // not move the URI a proof is compared with.
        let moved = [
            ("host", "details.test/api"),
            ("authorization", &format!("DPoP {token}")),
            (
                "dpop",
                &key.proof("GET", "http://details.test/api/whoami", Some(&token), None),
            ),
        ];
        let a = send_axum(&guard, "/whoami", &moved).await;
        assert_eq!(a.status, 401);
        assert!(a.challenge.contains("another URI"), "{}", a.challenge);

        // A token that fails, with a proof made for it: refused for the
        // token, its proof never recorded (sent again, it is no replay),
        // so a caller without a token cannot fill the replay store.
        let mut forged = token.clone().into_bytes();
        let i = forged.len() - 10;
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let h = dpop_headers(&key, &forged, "/whoami");
        for _ in 0..2 {
            let a = send_axum(&guard, "/whoami", &refs(&h)).await;
            assert_eq!(a.status, 401);
            assert!(a.challenge.contains("error=\"invalid_token\""), "{}", a.challenge);
        }

        // A valid token bound to no DPoP key, on the DPoP scheme with a
        // proof made for it: refused for the binding before the proof is
        // read, so the proof is never recorded either.
        let bearer = crate::token(&op, resource).await;
        let h = dpop_headers(&key, &bearer, "/whoami");
        for _ in 0..2 {
            let a = send_axum(&guard, "/whoami", &refs(&h)).await;
            assert_eq!(a.status, 401);
            assert!(
                a.challenge.contains("error=\"invalid_token\"")
                    && a.challenge.contains("not bound to the DPoP proof"),
                "{}",
                a.challenge
            );
        }
    }

    // Outside HTTP (`verify`, for gRPC metadata or a WebSocket message)
    // there is no proof: a bound token is refused there too.
    let jwt = palisade::jwt::JwtAuthenticator::builder()
        .provider(
            palisade::jwt::Provider::builder(op.issuer.clone())
                .audience(JWT_AUDIENCE)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let bound = dpop_token(&op, &key, JWT_AUDIENCE).await;
    assert_eq!(
        jwt.verify(&bound).await.unwrap_err(),
        palisade::jwt::JwtError::DpopBound
    );

    // A plain bearer token without a binding is still a bearer token, and
    // the challenge for a missing credential offers both schemes.
    let bearer = token(&op, JWT_AUDIENCE).await;
    assert_eq!(request_axum(&guard, "/whoami", Some(&bearer)).await.status, 200);
    let a = request_axum(&guard, "/whoami", None).await;
    assert_eq!(a.status, 401);
    assert!(
        a.challenge.contains("Bearer realm=") && a.challenge.contains("DPoP algs=\""),
        "{}",
        a.challenge
    );
    // But not with `Authorization: DPoP` and a proof: it is not bound.
    let a = send_axum(&guard, "/whoami", &refs(&dpop_headers(&key, &bearer, "/whoami"))).await;
    assert_eq!(a.status, 401);
}

/// A service on loopback that takes `op`'s tokens, DPoP-bound ones with
/// the `JwtSettings.spec.dpop` given: the URL of its `/whoami`.
async fn dpop_upstream(op: &OidcProvider, dpop: &str) -> String {
    let dpop = format!(
        "---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: dpop, namespace: default}}
spec:
  dpop: {dpop}"
    );
    let guard = guard(op, JWT_AUDIENCE, &format!("    cacheTime: 1s\n{dpop}"));
    let app = axum::Router::new()
        .route("/whoami", axum::routing::get(whoami_axum))
        .layer(palisade::axum::PalisadeLayer::new(guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/whoami", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The workload's own credential at `op`, its tokens bound to `key`.
fn dpop_workload(op: &OidcProvider, key: DpopKey) -> palisade::client::ClientCredentials {
    palisade::client::ClientCredentials::builder(op.issuer.clone(), "palisade-test")
        .client_secret("palisade-secret")
        .audience(JWT_AUDIENCE)
        .scopes(["read"])
        .dpop(key)
        .build()
        .unwrap()
}

/// The client side: the workload's own token, asked for DPoP-bound from
/// the issuer, proved on each call it makes (a real server on loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workloads_dpop_bound_token_is_proved_on_every_call() {
    use palisade::client::{Credentials, Upstreams};
    let op = start();
    let url = dpop_upstream(&op, "{}").await;
    let key = DpopKey::generate().unwrap();
    let thumbprint = key.thumbprint().to_owned();
    let own = dpop_workload(&op, key);
    assert!(own.authorization().await.unwrap().starts_with("DPoP "));
    let upstreams = Upstreams::builder()
        .host("127.0.0.1", Credentials::ClientCredentials(own.clone()))
        .build();
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let mut req = http.get(format!("{url}?call=1")).build().unwrap();
        let sent = upstreams.apply(&mut req, None).await.unwrap();
        assert!(req.headers().contains_key("dpop"));
        let res = http.execute(req).await.unwrap();
        sent.answered_by(&res).unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["claims"]["cnf"]["jkt"], thumbprint.as_str());
    }
    // Headers alone cannot carry a proof of the call: refused, not sent bare.
    let mut headers = http::HeaderMap::new();
    let own = Credentials::ClientCredentials(own);
    let err = own
        .apply(&mut headers, Some("127.0.0.1"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("DPoP"), "{err}");
    // A client that chose the credential itself, for an upstream known by
    // another name than its URL's host (the examples' way): the request
    // gives the proof its method and URI.
    let mut req = http.get(format!("{url}?call=2")).build().unwrap();
    let sent = own
        .apply_request(&mut req, Some("details.default.svc.cluster.local"), None)
        .await
        .unwrap();
    let res = http.execute(req).await.unwrap();
    sent.answered_by(&res).unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    // A tower client whose requests carry a path only (a tonic channel's),
    // told where they go: the proof names that origin and the path.
    let origin = url.trim_end_matches("/whoami").to_owned();
    let forward = {
        let (http, origin) = (http.clone(), origin.clone());
        tower::service_fn(move |req: http::Request<()>| {
            let (http, origin) = (http.clone(), origin.clone());
            async move {
                let mut out = http.get(format!("{origin}{}", req.uri())).build()?;
                *out.headers_mut() = req.headers().clone();
                let status = http.execute(out).await?.status();
                let mut res = http::Response::new(());
                *res.status_mut() = status;
                Ok::<_, reqwest::Error>(res)
            }
        })
    };
    let layered = tower::ServiceBuilder::new()
        .layer(palisade::client::CredentialsLayer::fixed_at(own.clone(), &origin).unwrap())
        .service(forward);
    let req = http::Request::get("/whoami?call=3").body(()).unwrap();
    assert_eq!(layered.oneshot(req).await.unwrap().status(), 200);
    // Without the origin the proof cannot be made: refused, not sent bare.
    let bare = tower::ServiceBuilder::new()
        .layer(palisade::client::CredentialsLayer::fixed(own))
        .service(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::io::Error>(http::Response::new(()))
        }));
    let err = bare
        .oneshot(http::Request::get("/whoami").body(()).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("DPoP"), "{err}");
    for origin in [
        "ratings:9080",
        "http://ratings:9080/path",
        "ftp://ratings",
        "http://user:s3cret@ratings:9080",
    ] {
        let err = palisade::client::CredentialsLayer::fixed_at(Credentials::None, origin)
            .map(drop)
            .unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{origin}: {err}");
    }
}

/// The client side against an upstream that requires DPoP nonces (RFC
/// 9449 §9): the first call, without one, is refused with
/// `use_dpop_nonce` and the upstream's nonce; told the answer, the
/// credential puts that nonce in its next proofs to it, which pass, and
/// keeps the token (a nonce refusal is no refusal of the token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workloads_proofs_carry_the_upstreams_nonce_once_it_gave_one() {
    use palisade::client::{Credentials, Upstreams};
    let op = start();
    let url = dpop_upstream(&op, "{requireNonce: true}").await;
    let own = dpop_workload(&op, DpopKey::generate().unwrap());
    let upstreams = Upstreams::builder()
        .host("127.0.0.1", Credentials::ClientCredentials(own.clone()))
        .build();
    let http = reqwest::Client::new();
    let mut answers = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let mut req = http.get(&url).build().unwrap();
        let sent = upstreams.apply(&mut req, None).await.unwrap();
        tokens.push(req.headers()["authorization"].clone());
        let res = http.execute(req).await.unwrap();
        sent.answered_by(&res).unwrap();
        let challenge = res
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        answers.push((res.status().as_u16(), challenge));
    }
    assert_eq!(answers[0].0, 401, "{answers:?}");
    assert!(answers[0].1.contains("use_dpop_nonce"), "{answers:?}");
    assert_eq!((answers[1].0, answers[2].0), (200, 200), "{answers:?}");
    assert!(tokens.windows(2).all(|t| t[0] == t[1]), "the token was kept");
}

#[actix_web::test]
async fn a_dpop_nonce_is_asked_for_when_required() {
    let op = start();
    let dpop = "---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {name: dpop, namespace: default}
spec:
  dpop: {requireNonce: true, origin: 'https://shop.example'}";
    let guard = guard(&op, JWT_AUDIENCE, &format!("    cacheTime: 1s\n{dpop}"));
    let key = DpopKey::generate().unwrap();
    let token = dpop_token(&op, &key, JWT_AUDIENCE).await;
    let auth = format!("DPoP {token}");
    let htu = "https://shop.example/whoami";
    let first = key.proof("GET", htu, Some(&token), None);
    for answer in [
        send_axum(&guard, "/whoami", &[("authorization", &auth), ("dpop", &first)]).await,
        send_actix(&guard, "/whoami", &[("authorization", &auth), ("dpop", &first)]).await,
    ] {
        assert_eq!(answer.status, 401);
        assert!(
            answer.challenge.contains("error=\"use_dpop_nonce\""),
            "{}",
            answer.challenge
        );
        let nonce = answer.nonce.expect("a DPoP-Nonce header");
        let retry = key.proof("GET", htu, Some(&token), Some(&nonce));
        let a = send_axum(&guard, "/whoami", &[("authorization", &auth), ("dpop", &retry)]).await;
        assert_eq!(a.status, 200, "{}", a.challenge);
    }
}

/// Issuers per tenant with keys shared by every tenant (as Entra ID's
/// common key set): the policy file's pattern, allow-list and policies on
/// the tenant's own issuer.
#[actix_web::test]
async fn tenants_of_an_issuer_pattern_are_accepted_from_the_allow_list_only() {
    let idp = TestIssuer::builder()
        .realm("t1")
        .default_audience("details")
        .start()
        .unwrap();
    let base = idp.base_url().to_owned();
    let pattern = format!("{base}/realms/{{tenant}}");
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: {pattern}
    jwksUri: {jwks}
    audiences: [details]
---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: tenants, namespace: default}}
spec:
  issuer: {pattern}
  tenants: [t1, t2]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: t1-only, namespace: default}}
spec:
  rules:
  - from:
    - source: {{requestPrincipals: ['{base}/realms/t1/*']}}
",
        jwks = idp.jwks_uri()
    );
    let set = PolicySet::from_yaml_str(&yaml, "tenants.yaml").unwrap();
    let guard = palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap();
    let token = |tenant: &str| {
        idp.token()
            .issuer(&format!("{base}/realms/{tenant}"))
            .subject("alice")
            .sign()
    };

    let t1 = call_axum(&guard, &token("t1")).await;
    assert_eq!(t1.status, 200, "{}", t1.challenge);
    assert_eq!(t1.body["issuer"], format!("{base}/realms/t1"));
    assert_eq!(t1.body["request_principal"], format!("{base}/realms/t1/alice"));
    let t1_actix = call_actix(&guard, &token("t1")).await;
    assert_eq!(t1_actix.status, 200);
    // t2 is a tenant, authenticated, but the policy admits t1's users only.
    let t2 = call_axum(&guard, &token("t2")).await;
    assert_eq!(t2.status, 403);
    // t3 is not on the list; a name that is no tenant neither, nor the
    // pattern itself (the keys are shared: its signature is good).
    for other in ["t3", "t1/../t2", "", "{tenant}"] {
        let a = call_axum(&guard, &token(other)).await;
        assert_eq!(a.status, 401, "{other}");
        assert!(a.challenge.contains("issuer is not accepted"), "{}", a.challenge);
    }
    assert_eq!(idp.jwks_fetches(), 1, "every tenant shares the one key set");

    // The same by the tenant itself: `request.auth.tenant`.
    let by_tenant = yaml.replace(
        &format!("  - from:\n    - source: {{requestPrincipals: ['{base}/realms/t1/*']}}\n"),
        "  - when:\n    - {key: request.auth.tenant, values: [t2]}\n",
    );
    assert_ne!(by_tenant, yaml);
    let set = PolicySet::from_yaml_str(&by_tenant, "tenants.yaml").unwrap();
    let t2_only = palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap();
    assert_eq!(call_actix(&t2_only, &token("t2")).await.status, 200);
    assert_eq!(call_axum(&t2_only, &token("t2")).await.status, 200);
    assert_eq!(call_axum(&t2_only, &token("t1")).await.status, 403);

    // In code: a resolver, and the tenant on the identity. It is asked
    // once per name while its answer is kept, not for every token: names
    // come from tokens not yet verified.
    let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let jwt = JwtAuthenticator::builder()
        .provider(
            Provider::builder(pattern.clone())
                .audience("details")
                .jwks_uri(idp.jwks_uri())
                .tenant_resolver({
                    let asked = Arc::clone(&asked);
                    move |t| {
                        asked.lock().unwrap().push(t.to_owned());
                        t.starts_with("team-")
                    }
                })
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let id = jwt.verify(&token("team-red")).await.unwrap();
    assert_eq!(id.token().unwrap().tenant.as_deref(), Some("team-red"));
    for _ in 0..3 {
        assert_eq!(
            jwt.verify(&token("red")).await.unwrap_err(),
            JwtError::UnknownIssuer
        );
        // Another token (a new random `jti`), verified in full.
        assert!(jwt.verify(&token("team-red")).await.is_ok());
    }
    assert_eq!(
        *asked.lock().unwrap(),
        ["team-red", "red"],
        "each name asked once"
    );
}

/// Issuers per tenant with keys of their own, discovered per tenant: a
/// tenant's key never verifies another tenant's tokens. (The two issuers
/// differ by their port, which stands for the tenant here.)
#[tokio::test]
async fn each_tenant_has_its_own_keys_fetched_on_first_use() {
    let a = TestIssuer::builder()
        .realm("shop")
        .default_audience("details")
        .start()
        .unwrap();
    let b = TestIssuer::builder()
        .realm("shop")
        .default_audience("details")
        .start()
        .unwrap();
    let port = |i: &TestIssuer| i.base_url().rsplit(':').next().unwrap().to_owned();
    let jwt = JwtAuthenticator::builder()
        .provider(
            Provider::builder("http://127.0.0.1:{tenant}/realms/shop")
                .audience("details")
                .tenants([port(&a), port(&b)])
                .max_tenants(1)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(
        (a.jwks_fetches(), b.jwks_fetches()),
        (0, 0),
        "nothing fetched before a token"
    );
    let id = jwt.verify(&a.token().subject("alice").sign()).await.unwrap();
    assert_eq!(id.issuer(), Some(a.issuer()));
    assert_eq!(id.token().unwrap().tenant, Some(port(&a)));
    assert_eq!(
        jwt.verify(&b.token().subject("bob").sign())
            .await
            .unwrap()
            .issuer(),
        Some(b.issuer())
    );
    // Signed with a's key, claiming b's issuer: b's keys do not have it.
    let forged = a.token().issuer(b.issuer()).subject("mallory").sign();
    let refused = jwt.verify(&forged).await.unwrap_err();
    assert!(
        matches!(refused, JwtError::UnknownKey | JwtError::KeysUnavailable),
        "{refused:?}"
    );
    assert_eq!(a.discovery_fetches(), 1);
    assert!(b.discovery_fetches() >= 1);
}

/// With more tenants than `max_tenants`, the tenant dropped is the one
/// least recently used, not the one met first: a busy tenant stays while
/// others come and go. (What is dropped is seen by the resolver, asked
/// again for a tenant only once it was dropped; its tokens in the
/// verified-token cache keep their keys until its allowance is a minute
/// old, then are verified again.)
#[tokio::test]
async fn the_least_recently_used_tenant_gives_way() {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let issuers = shop_issuers(3);
    let port = |i: &TestIssuer| i.base_url().rsplit(':').next().unwrap().to_owned();
    let ports: Vec<String> = issuers.iter().map(port).collect();
    let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // A tenant's first token has twice the fetch timeout to verify before
    // its tenant may go as unproven.
    let mut fetch = palisade::jwt::FetchSettings::default();
    fetch.timeout = Duration::from_millis(300);
    let jwt = JwtAuthenticator::builder()
        .provider(
            Provider::builder("http://127.0.0.1:{tenant}/realms/shop")
                .audience("details")
                .fetch_settings(fetch)
                .tenant_resolver({
                    let asked = Arc::clone(&asked);
                    let ports = ports.clone();
                    move |t| {
                        asked.lock().unwrap().push(t.to_owned());
                        ports.iter().any(|p| p == t)
                    }
                })
                .max_tenants(2)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let [a, b, c] = [&issuers[0], &issuers[1], &issuers[2]];
    for i in [a, b, a, c, a] {
        jwt.verify(&i.token().sign()).await.unwrap();
    }
    assert_eq!(
        *asked.lock().unwrap(),
        ports,
        "a, used again before c came, was kept; b gave way"
    );
    jwt.verify(&b.token().sign()).await.unwrap();
    assert_eq!(asked.lock().unwrap().len(), 4, "b was dropped, so asked again");
    // Tokens that name a tenant without its signature (here c's issuer,
    // a's key) set up a tenant no token has verified for: the first to go.
    let forged = a.token().issuer(c.issuer()).sign();
    for _ in 0..3 {
        assert!(jwt.verify(&forged).await.is_err());
    }
    assert_eq!(asked.lock().unwrap().len(), 5, "c set up again, once");
    tokio::time::sleep(Duration::from_millis(700)).await;
    jwt.verify(&a.token().sign()).await.unwrap();
    assert_eq!(asked.lock().unwrap().len(), 6, "a gave way to the forged c");
    jwt.verify(&b.token().sign()).await.unwrap();
    assert_eq!(
        asked.lock().unwrap().len(),
        6,
        "b stayed: a came back in place of the unproven c"
    );
    // Tenants come and go; the fetch metrics' series do not grow with them.
    let shown = metrics.render();
    let fetches: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with("palisade_jwks_fetches_total{"))
        .collect();
    assert!(
        fetches
            .iter()
            .any(|l| l.contains(r#"issuer="http://127.0.0.1:{tenant}/realms/shop""#)),
        "{shown}"
    );
    assert!(
        !fetches
            .iter()
            .any(|l| ports.iter().any(|p| l.contains(&format!(":{p}/")))),
        "a series per tenant: {fetches:?}"
    );
    // An issuer written with credentials (it can match no real token): the
    // series a scrape shows leave them out.
    let _written_so = JwtAuthenticator::builder()
        .provider(
            Provider::builder("http://user:s3cret@127.0.0.1:9/realms/x")
                .audience("details")
                .jwks_uri(a.jwks_uri())
                .introspection(palisade::jwt::Introspection::client_secret_basic("rs", "pw"))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let shown = metrics.render();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains(
            r#"palisade_jwks_fetches_total{issuer="http://***@127.0.0.1:9/realms/x",result="failure"} 0"#
        ),
        "{shown}"
    );
}

/// `n` issuers of realm `shop`, each a tenant of
/// `http://127.0.0.1:{tenant}/realms/shop` by its port.
fn shop_issuers(n: usize) -> Vec<TestIssuer> {
    (0..n)
        .map(|_| {
            TestIssuer::builder()
                .realm("shop")
                .default_audience("details")
                .start()
                .unwrap()
        })
        .collect()
}

/// Forged tokens naming many tenants, faster than a tenant's first token
/// needs to verify: they push out one tenant in use at most, each newcomer
/// then taking the place of the last unproven one.
#[tokio::test]
async fn a_flood_of_forged_tenants_pushes_out_one_tenant_in_use_at_most() {
    let issuers = shop_issuers(2);
    let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let jwt = JwtAuthenticator::builder()
        .provider(
            Provider::builder("http://127.0.0.1:{tenant}/realms/shop")
                .audience("details")
                // Any port is a tenant: the flood names ports nobody serves.
                .tenant_resolver({
                    let asked = Arc::clone(&asked);
                    move |t| {
                        asked.lock().unwrap().push(t.to_owned());
                        t.parse::<u16>().is_ok()
                    }
                })
                .max_tenants(2)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let [a, b] = [&issuers[0], &issuers[1]];
    jwt.verify(&a.token().sign()).await.unwrap();
    jwt.verify(&b.token().sign()).await.unwrap();
    // a's key, other tenants' names (ports below 1024 serve nothing here).
    for port in 1..=5 {
        let forged = a
            .token()
            .issuer(&format!("http://127.0.0.1:{port}/realms/shop"))
            .sign();
        assert!(jwt.verify(&forged).await.is_err());
    }
    let asks = |i: &TestIssuer| {
        let port = i.base_url().rsplit(':').next().unwrap().to_owned();
        asked.lock().unwrap().iter().filter(|t| **t == port).count()
    };
    // a, the least recently used, gave way to the first; b stayed.
    jwt.verify(&b.token().sign()).await.unwrap();
    assert_eq!(asks(b), 1, "b was kept through the flood");
    jwt.verify(&a.token().sign()).await.unwrap();
    assert_eq!(asks(a), 2, "a was pushed out by the first forged tenant");
}

/// Tenants' key stores start at a bounded rate (twenty at once, then ten
/// a second, per issuer pattern): tokens naming a new tenant each, which a
/// rule allowing every name lets through, cannot have the service call
/// the issuer once per token. A new tenant met meanwhile is refused (its
/// keys cannot be had yet); a tenant a token has verified for starts
/// whatever the rate, so the flood keeps no tenant in use out.
#[tokio::test]
async fn tenants_key_stores_start_at_a_bounded_rate() {
    let issuers = shop_issuers(3);
    let jwt = JwtAuthenticator::builder()
        .provider(
            Provider::builder("http://127.0.0.1:{tenant}/realms/shop")
                .audience("details")
                // Any port is a tenant: the flood names ports nobody serves.
                .tenant_resolver(|t| t.parse::<u16>().is_ok())
                .max_tenants(1)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let [a, c, d] = [&issuers[0], &issuers[1], &issuers[2]];
    // Signed before the flood: nothing slow between it and the check.
    let (a_token, c_token) = (a.token().sign(), c.token().sign());
    // c and d are proven; d took c's place.
    jwt.verify(&c.token().sign()).await.unwrap();
    jwt.verify(&d.token().sign()).await.unwrap();
    // a's key, thirty other tenants' names (ports below 1024 serve
    // nothing here), all at once.
    let flood: Vec<_> = (1..=30)
        .map(|port| {
            let forged = a
                .token()
                .issuer(&format!("http://127.0.0.1:{port}/realms/shop"))
                .sign();
            let jwt = jwt.clone();
            tokio::spawn(async move { jwt.verify(&forged).await.is_err() })
        })
        .collect();
    // Each meets its tenant (their first polls run now).
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        jwt.verify(&a_token).await.unwrap_err(),
        JwtError::KeysUnavailable,
        "no start left for a new tenant"
    );
    assert_eq!(a.discovery_fetches(), 0);
    jwt.verify(&c_token)
        .await
        .expect("a proven tenant's keys are fetched again at once");
    for forged in flood {
        assert!(forged.await.unwrap(), "a forged token was refused");
    }
}

#[test]
fn introspection_settings_are_checked_when_the_file_loads() {
    let bad = |spec: &str| {
        let yaml = format!(
            "apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: introspection, namespace: default}}
spec:
{spec}"
        );
        PolicySet::from_yaml_str(&yaml, "bad.yaml")
            .unwrap_err()
            .to_string()
    };
    let e = bad("  introspection: {clientId: rs, clientSecret: x}\n");
    assert!(
        e.contains("bad.yaml") && e.contains("spec.introspection") && e.contains("spec.issuer"),
        "{e}"
    );
    let e = bad("  issuer: https://i\n  introspection: {clientId: rs}\n");
    assert!(e.contains("clientSecretFile"), "{e}");
    let e = bad(
        "  issuer: https://i\n  introspection: {clientId: rs, clientSecret: x, clientAuthMethod: private_key_jwt}\n",
    );
    assert!(e.contains("spec.introspection.clientAuthMethod"), "{e}");
    let e = bad("  issuer: https://i\n  introspection: {clientId: rs, clientSecret: x, cacheTime: soon}\n");
    assert!(e.contains("cacheTime") || e.contains("duration"), "{e}");
    let e = bad("  tenants: [t1]\n");
    assert!(e.contains("spec.tenants"), "{e}");
    let e = bad("  issuer: 'https://login.example/{tenant}/v2.0'\n  tenants: ['a/b']\n");
    assert!(e.contains("spec.tenants[0]"), "{e}");
    let e = bad("  dpop: {algorithms: [HS256]}\n");
    assert!(e.contains("spec.dpop.algorithms[0]"), "{e}");
    let e = bad("  dpop: {origin: 'https://shop.example/path'}\n");
    assert!(e.contains("spec.dpop.origin"), "{e}");
    let e = bad("  dpop: {maxAge: 1h}\n");
    assert!(e.contains("spec.dpop.maxAge"), "{e}");
    let e = bad("  resourceMetadata: {resource: 'shop.example/details'}\n");
    assert!(e.contains("spec.resourceMetadata.resource"), "{e}");
    assert!(e.contains("is not an http(s) URL"), "{e}");
    let e = bad("  resourceMetadata: {resource: 'https://shop.example/?v=1'}\n");
    assert!(e.contains("must have no query or fragment"), "{e}");
    let e = bad("  issuer: https://i\n  resourceMetadata: {resource: 'https://shop.example'}\n");
    assert!(e.contains("spec.resourceMetadata"), "{e}");
    // A secret file that cannot be read: named when the guard is built.
    let yaml = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules:
  - issuer: https://idp.example
    audiences: [details]
---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {name: introspection, namespace: default}
spec:
  issuer: https://idp.example
  introspection: {clientId: rs, clientSecretFile: /nonexistent/palisade.secret}
";
    let set = PolicySet::from_yaml_str(yaml, "secret.yaml").unwrap();
    let e = palisade::guard_from_policy(&set, &Workload::new("details", "default"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("secret.yaml")
            && e.contains("spec.introspection.clientSecretFile")
            && e.contains("/nonexistent"),
        "{e}"
    );
}

/// Two issuers introspecting tokens read from the same header: an opaque
/// token there names no issuer, so it is refused, not sent to both
/// endpoints (each would see the other's users' tokens). From headers of
/// their own, each gets its own. Their JWTs name their issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_token_two_issuers_could_own_is_sent_to_neither() {
    let a = start();
    let b = start();
    let yaml = |b_from: &str| {
        let mut yaml = format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: {}
    audiences: ['{OPAQUE}']
  - issuer: {}
    audiences: ['{OPAQUE}']
{b_from}",
            a.issuer, b.issuer
        );
        for (name, op) in [("a", &a), ("b", &b)] {
            yaml.push_str(&format!(
                "---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: introspection-{name}, namespace: default}}
spec:
  issuer: {}
  introspection: {{clientId: palisade-rs, clientSecret: palisade-rs-secret}}
",
                op.issuer
            ));
        }
        let set = PolicySet::from_yaml_str(&yaml, "two.yaml").unwrap();
        JwtAuthenticator::from_policy(&set.for_workload(&Workload::new("details", "default")))
            .unwrap()
            .unwrap()
    };
    let shared = yaml("");
    let opaque = token(&a, OPAQUE).await;
    let before = (introspections(&a).await, introspections(&b).await);
    assert_eq!(shared.verify(&opaque).await.unwrap_err(), JwtError::UnknownIssuer);
    assert_eq!(
        (introspections(&a).await, introspections(&b).await),
        before,
        "no endpoint was asked"
    );
    // Read from a header of b's own, a's opaque tokens go to a alone.
    let apart = yaml("    fromHeaders: [{name: x-b-token}]\n");
    assert_eq!(
        apart.verify(&opaque).await.unwrap().issuer(),
        Some(a.issuer.as_str())
    );
    assert_eq!(introspections(&a).await, before.0 + 1);
    assert_eq!(introspections(&b).await, before.1);
}

/// A policy file trusting `idp` (its keys inline) with `spec.dpop` as given.
fn dpop_policy(idp: &TestIssuer, audiences: &str, dpop: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: {issuer}
    jwks: '{jwks}'
    audiences: [{audiences}]
---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: dpop, namespace: default}}
spec:
  dpop: {dpop}
",
        issuer = idp.issuer(),
        jwks = idp.jwks()
    )
}

/// An issuer for `details`, a DPoP key, and alice's token bound to it.
fn alice_bound_for_details() -> (TestIssuer, DpopKey, String) {
    let idp = TestIssuer::builder().default_audience("details").start().unwrap();
    let key = DpopKey::generate().unwrap();
    let token = idp
        .token()
        .subject("alice")
        .claim("cnf", serde_json::json!({"jkt": key.thumbprint()}))
        .sign();
    (idp, key, token)
}

/// Two replicas (two guards from one policy file, as two processes would
/// build them) that share a Redis replay store: a proof used at one is
/// refused at the other, on both frameworks; a Redis that stops answering
/// refuses proofs with a clear reason within the command timeout.
#[actix_web::test]
async fn replicas_sharing_a_redis_replay_store_refuse_each_others_used_proofs() {
    let mut redis = palisade::testkit::redis::RedisServer::start().unwrap();
    let (idp, key, token) = alice_bound_for_details();
    let yaml = dpop_policy(&idp, "details", &format!("{{replayStore: '{}'}}", redis.url()));
    let replica = || {
        let set = PolicySet::from_yaml_str(&yaml, "replicas.yaml").unwrap();
        palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap()
    };
    let (one, two) = (replica(), replica());
    let h = dpop_headers(&key, &token, "/whoami");
    let first = send_axum(&one, "/whoami", &refs(&h)).await;
    assert_eq!(first.status, 200, "{}", first.challenge);
    assert_eq!(first.body["subject"], "alice");
    for replayed in [
        send_actix(&two, "/whoami", &refs(&h)).await,
        send_axum(&two, "/whoami", &refs(&h)).await,
        send_actix(&one, "/whoami", &refs(&h)).await,
    ] {
        assert_eq!(replayed.status, 401);
        assert!(
            replayed.challenge.contains("already been used"),
            "{}",
            replayed.challenge
        );
    }
    let fresh = dpop_headers(&key, &token, "/whoami");
    assert_eq!(send_actix(&two, "/whoami", &refs(&fresh)).await.status, 200);

    // Frozen Redis: refused, with the reason, in about the 1 s timeout.
    redis.pause().unwrap();
    for frozen in [true, false] {
        let h = dpop_headers(&key, &token, "/whoami");
        let started = std::time::Instant::now();
        let answer = if frozen {
            send_axum(&one, "/whoami", &refs(&h)).await
        } else {
            send_actix(&two, "/whoami", &refs(&h)).await
        };
        assert_eq!(answer.status, 401);
        assert!(
            answer.challenge.contains("the replay store is unavailable"),
            "{}",
            answer.challenge
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    redis.resume().unwrap();
    let h = dpop_headers(&key, &token, "/whoami");
    assert_eq!(send_axum(&two, "/whoami", &refs(&h)).await.status, 200);
}

/// Replicas given one `nonceSecretFile` accept each other's DPoP nonces
/// (a client a load balancer sends to each in turn is not asked for a new
/// nonce at every other request); a replica with another secret does not.
/// A proof whose nonce is of the window before gets the current one with
/// its answer; a secret that is short, missing or without `requireNonce`
/// stops the start-up naming the field.
#[actix_web::test]
async fn replicas_given_one_nonce_secret_file_accept_each_others_nonces() {
    use palisade::jwt::dpop::NonceSource;
    let dir = std::env::temp_dir().join(format!("palisade-nonce-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, secret: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        path.display().to_string()
    };
    let (secret_a, secret_b) = ("a".repeat(48), "b".repeat(48));
    let (a, b, short) = (
        file("a", &secret_a),
        file("b", &secret_b),
        file("short", &"c".repeat(31)),
    );
    let (idp, key, token) = alice_bound_for_details();
    let yaml = |dpop: &str| dpop_policy(&idp, "details", dpop);
    let replica = |secret_file: &str| {
        let yaml = yaml(&format!(
            "{{requireNonce: true, nonceSecretFile: '{secret_file}'}}"
        ));
        let set = PolicySet::from_yaml_str(&yaml, "replicas.yaml").unwrap();
        palisade::guard_from_policy(&set, &Workload::new("details", "default"))
    };
    let (one, two, other) = (replica(&a).unwrap(), replica(&a).unwrap(), replica(&b).unwrap());
    let with_nonce = |nonce: &str| {
        let htu = format!("http://{HOST}/whoami");
        vec![
            ("host".to_owned(), HOST.to_owned()),
            ("authorization".to_owned(), format!("DPoP {token}")),
            (
                "dpop".to_owned(),
                key.proof("GET", &htu, Some(&token), Some(nonce)),
            ),
        ]
    };

    let asked = send_axum(&one, "/whoami", &refs(&dpop_headers(&key, &token, "/whoami"))).await;
    assert!(asked.challenge.contains("use_dpop_nonce"), "{}", asked.challenge);
    let nonce = asked.nonce.expect("a DPoP-Nonce header");
    for answer in [
        send_axum(&two, "/whoami", &refs(&with_nonce(&nonce))).await,
        send_actix(&two, "/whoami", &refs(&with_nonce(&nonce))).await,
    ] {
        assert_eq!(answer.status, 200, "{}", answer.challenge);
        assert_eq!(answer.nonce, None, "a current nonce is not replaced");
    }
    let refused = send_actix(&other, "/whoami", &refs(&with_nonce(&nonce))).await;
    assert!(
        refused.challenge.contains("use_dpop_nonce"),
        "{}",
        refused.challenge
    );
    assert_ne!(refused.nonce.as_deref(), Some(nonce.as_str()));

    // A nonce of the window before: accepted, the current one handed out.
    let source = NonceSource::from_secret(secret_a.as_bytes(), NonceSource::DEFAULT_WINDOW).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = source.current_at(now - NonceSource::DEFAULT_WINDOW.as_secs());
    for answer in [
        send_axum(&one, "/whoami", &refs(&with_nonce(&old))).await,
        send_actix(&two, "/whoami", &refs(&with_nonce(&old))).await,
    ] {
        assert_eq!(answer.status, 200, "{}", answer.challenge);
        let next = answer.nonce.expect("the next nonce with the answer");
        assert!(next != old && source.check(&next), "{next}");
    }

    let err = replica(&short).unwrap_err().to_string();
    assert!(
        err.contains("spec.dpop.nonceSecretFile") && err.contains("32 bytes"),
        "{err}"
    );
    let missing = dir.join("missing").display().to_string();
    let err = replica(&missing).unwrap_err().to_string();
    assert!(
        err.contains("spec.dpop.nonceSecretFile") && err.contains("cannot read") && err.contains(&missing),
        "{err}"
    );
    // The secret itself where its file's path goes: not echoed.
    let refused = replica("Zq8vS3cretPastedHere0").unwrap_err();
    let err = refused.to_string();
    assert!(
        err.contains("spec.dpop.nonceSecretFile")
            && err.contains("not shown")
            && !err.contains("S3cretPasted"),
        "{err}"
    );
    // Nor in its Debug, which `fn main() -> Result<…>` prints.
    let debug = format!("{refused:?}");
    assert!(!debug.contains("S3cretPasted"), "{debug}");
    let err = PolicySet::from_yaml_str(&yaml(&format!("{{nonceSecretFile: '{a}'}}")), "alone.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("alone.yaml") && err.contains("spec.dpop.nonceSecretFile"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_replay_store_that_is_not_a_store_url_is_refused_when_the_file_loads() {
    let yaml = "apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {name: dpop, namespace: default}
spec:
  dpop:
    replayStore: memcached://cache:11211
";
    let err = PolicySet::from_yaml_str(yaml, "store.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("store.yaml"), "{err}");
    assert!(err.contains("spec.dpop.replayStore"), "{err}");
}

#[test]
fn an_unreachable_redis_replay_store_stops_the_start_up_but_not_an_offline_check() {
    let port = free_port();
    let idp = TestIssuer::builder().start().unwrap();
    let yaml = dpop_policy(
        &idp,
        "details",
        &format!("{{replayStore: 'redis://:hunter2@127.0.0.1:{port}/0'}}"),
    );
    let set = PolicySet::from_yaml_str(&yaml, "store.yaml").unwrap();
    let policy = set.for_workload(&Workload::new("details", "default"));
    assert!(JwtAuthenticator::from_policy_offline(&policy).unwrap().is_some());
    let err = palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap_err();
    // Not reached, which may change by itself: a hot reload tries again.
    assert_eq!(
        err.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::NotConnected),
        "{err}"
    );
    let err = err.to_string();
    for part in [
        "store.yaml",
        "spec.dpop.replayStore",
        &format!("127.0.0.1:{port}"),
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert!(!err.contains("hunter2"), "{err}");
}

/// A reload that changes nothing keeps the authenticator (and its verified
/// tokens) with DPoP on too; a change of the DPoP settings makes a new one.
#[test]
fn a_reload_keeps_a_dpop_authenticator_configured_the_same() {
    use palisade::core::authn::Authenticator as _;
    use palisade::core::policy::FromPolicy as _;
    let idp = TestIssuer::builder().start().unwrap();
    let build = |dpop: &str| {
        let yaml = dpop_policy(&idp, "details", dpop);
        let set = PolicySet::from_yaml_str(&yaml, "reload.yaml").unwrap();
        JwtAuthenticator::from_policy(&set.for_workload(&Workload::new("details", "default")))
            .unwrap()
            .unwrap()
    };
    let before = build("{maxAge: 30s}");
    assert!(build("{maxAge: 30s}").take_over(&before).is_some());
    assert!(
        build("{maxAge: 30s, requireNonce: true}")
            .take_over(&before)
            .is_none()
    );
    assert!(build("{maxAge: 20s}").take_over(&before).is_none());
    // Nonces keyed by a file: the same secret (read again) keeps them, another does not.
    let dir = std::env::temp_dir().join(format!("palisade-nonce-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keyed = |secret: &str| {
        let file = dir.join("secret");
        std::fs::write(&file, secret).unwrap();
        build(&format!(
            "{{maxAge: 30s, requireNonce: true, nonceSecretFile: '{}'}}",
            file.display()
        ))
    };
    let before_keyed = keyed(&"s".repeat(32));
    assert!(keyed(&"s".repeat(32)).take_over(&before_keyed).is_some());
    assert!(keyed(&"t".repeat(32)).take_over(&before_keyed).is_none());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        build("{maxAge: 30s, origin: 'https://shop.example'}")
            .take_over(&before)
            .is_none()
    );
}

/// A problem that only compiling a workload's documents shows (here an
/// inline key set in shape whose key does not build) is found by the whole-file check
/// for every workload, while a service compiles its own part only (a file
/// shared by services that each have only their own secrets must not stop
/// the others).
#[test]
fn the_whole_file_check_finds_what_breaks_another_workload() {
    let idp = TestIssuer::builder().start().unwrap();
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: details-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  jwtRules:
  - issuer: {issuer}
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {issuer}
    jwks: '{{\"keys\": [{{\"kty\": \"nope\"}}]}}'
",
        issuer = idp.issuer(),
        jwks = idp.jwks()
    );
    let set = PolicySet::from_yaml_str(&yaml, "shop.yaml").expect("each document is valid on its own");
    let err = palisade::check_policy(&set).unwrap_err().to_string();
    assert!(
        err.starts_with("shop.yaml: document 2 (RequestAuthentication default/reviews-jwt)"),
        "{err}"
    );
    assert!(err.contains("(for default/reviews)"), "{err}");
    palisade::guard_from_policy(&set, &Workload::new("details", "default"))
        .expect("details' own part is sound");
    let own = palisade::guard_from_policy(&set, &Workload::new("reviews", "default"))
        .unwrap_err()
        .to_string();
    assert!(
        own.starts_with("shop.yaml: document 2 (RequestAuthentication default/reviews-jwt)"),
        "{own}"
    );

    let fixed = yaml.replace(
        "'{\"keys\": [{\"kty\": \"nope\"}]}'",
        &format!("'{}'", idp.jwks()),
    );
    assert_ne!(fixed, yaml);
    let set = PolicySet::from_yaml_str(&fixed, "shop.yaml").unwrap();
    palisade::check_policy(&set).unwrap();
    palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap();
}
