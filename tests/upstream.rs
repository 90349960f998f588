//! Outbound credentials end to end: a back-end guarded by Palisade (bearer
//! tokens for the `details` audience, on axum and on actix-web) called
//! over real HTTP with what `palisade::client` attaches: the workload's own
//! client-credentials token, the caller's token relayed or exchanged
//! (RFC 8693, the upstream's policy reading the `act` claim), and nothing.

use std::time::Duration;

use palisade::client::{CallerToken, ClientCredentials, Credentials, TokenExchange, Upstreams};
use palisade::testkit::TestIssuer;
use serde_json::Value;

mod signin_common;
use signin_common::{client, guard_from, serve_both};

const SECRET: &str = "productpage-secret";

fn details_policy(issuer: &TestIssuer) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: {}
    audiences: [details]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: callers, namespace: default}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
",
        issuer.issuer()
    )
}

/// `GET base/whoami` with what `upstreams` attaches for the caller.
async fn call(upstreams: &Upstreams, base: &str, caller: Option<&CallerToken>) -> (u16, Value) {
    let mut req = client().get(format!("{base}/whoami")).build().unwrap();
    let sent = upstreams.apply(&mut req, caller).await.unwrap();
    let res = client().execute(req).await.unwrap();
    sent.answered_by(&res).unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_upstream_sees_the_workload_or_the_relayed_user() {
    let issuer = TestIssuer::builder()
        .client("productpage", SECRET)
        .token_lifetime(Duration::from_secs(300))
        .start()
        .unwrap();
    let yaml = details_policy(&issuer);
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    let own = ClientCredentials::builder(issuer.issuer(), "productpage")
        .client_secret(SECRET)
        .audience("details")
        .build()
        .unwrap();
    let as_workload = Upstreams::builder()
        .host("127.0.0.1", Credentials::ClientCredentials(own))
        .build();
    let relay = Upstreams::builder()
        .host("127.0.0.1", Credentials::Caller)
        .build();
    let nothing = Upstreams::builder().build();
    let user = CallerToken::new(&issuer.token().subject("alice").audience("details").sign());
    let other_audience = CallerToken::new(&issuer.token().subject("alice").sign());
    for base in [&axum_base, &actix_base] {
        for _ in 0..100 {
            if client().get(format!("{base}/whoami")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, who) = call(&as_workload, base, None).await;
        assert_eq!(status, 200, "{base}: {who}");
        assert_eq!(
            who["request_principal"],
            format!("{}/productpage", issuer.issuer()),
            "{base}: the workload's own token"
        );
        let (status, who) = call(&relay, base, Some(&user)).await;
        assert_eq!(status, 200, "{base}: {who}");
        assert_eq!(
            who["request_principal"],
            format!("{}/alice", issuer.issuer()),
            "{base}"
        );
        // Relayed as it is: a token for another audience is refused there.
        assert_eq!(call(&relay, base, Some(&other_audience)).await.0, 401, "{base}");
        assert_eq!(
            call(&nothing, base, None).await.0,
            401,
            "{base}: nothing attached"
        );
    }
    assert_eq!(
        issuer.client_credentials_grants(),
        1,
        "one grant for both back-ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_token_reaches_an_upstream_whose_policy_reads_the_actor() {
    let issuer = TestIssuer::builder()
        .client("productpage", SECRET)
        .token_lifetime(Duration::from_secs(300))
        .start()
        .unwrap();
    // Only users acting through productpage: the exchanged token's `act`.
    let yaml = details_policy(&issuer).replace(
        "  - from: [{source: {requestPrincipals: [\"*\"]}}]\n",
        "  - from: [{source: {requestPrincipals: [\"*\"]}}]\n    when:\n    - key: request.auth.claims[act][sub]\n      values: [productpage]\n",
    );
    assert!(yaml.contains("[act][sub]"), "{yaml}");
    let (axum_base, actix_base) = serve_both(|| guard_from(&yaml));
    let exchange = TokenExchange::builder(issuer.issuer(), "productpage")
        .client_secret(SECRET)
        .audience("details")
        .build()
        .unwrap();
    let exchanged = Upstreams::builder()
        .host("127.0.0.1", Credentials::TokenExchange(exchange))
        .build();
    let relay = Upstreams::builder()
        .host("127.0.0.1", Credentials::Caller)
        .build();
    // The user's own token, for productpage.
    let user = CallerToken::new(&issuer.token().subject("alice").audience("productpage").sign());
    let direct = CallerToken::new(&issuer.token().subject("alice").audience("details").sign());
    for base in [&axum_base, &actix_base] {
        for _ in 0..100 {
            if client().get(format!("{base}/whoami")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, who) = call(&exchanged, base, Some(&user)).await;
        assert_eq!(status, 200, "{base}: {who}");
        assert_eq!(
            who["request_principal"],
            format!("{}/alice", issuer.issuer()),
            "{base}"
        );
        assert_eq!(
            who["claims"]["act"]["sub"], "productpage",
            "{base}: the actor is visible"
        );
        // The user's token for productpage is not one for details; and one
        // for details without an actor fails the policy.
        assert_eq!(call(&relay, base, Some(&user)).await.0, 401, "{base}");
        assert_eq!(call(&relay, base, Some(&direct)).await.0, 403, "{base}");
    }
    assert_eq!(issuer.token_exchanges(), 1, "one exchange for both back-ends");
}

/// What a service relays is the token the guard checked: read from where
/// the rule reads tokens (here `x-token`), never an unchecked
/// `Authorization` header beside it, and there whether or not the header
/// was kept for the handler.
#[tokio::test]
async fn the_caller_token_is_the_one_the_guard_verified() {
    use tower::ServiceExt as _;
    let issuer = TestIssuer::start().unwrap();
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: {}
    jwks: '{}'
    audiences: [details]
    fromHeaders: [{{name: x-token}}]
",
        issuer.issuer(),
        issuer.jwks()
    );
    let guard = guard_from(&yaml);
    let app = palisade::axum::PalisadeLayer::new(guard).wrap(axum::Router::new().route(
        "/",
        axum::routing::get(
            |axum::Extension(auth): axum::Extension<palisade::core::RequestAuth>| async move {
                CallerToken::from_request(&auth)
                    .and_then(|t| t.bearer().map(str::to_owned))
                    .unwrap_or_default()
            },
        ),
    ));
    let token = issuer.token().subject("alice").audience("details").sign();
    let req = http::Request::get("/")
        .header("x-token", &token)
        .header("authorization", "Bearer forged.unchecked.token")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
    assert_eq!(std::str::from_utf8(&body).unwrap(), token);
}

/// A caller token bound to its holder's key (`cnf`: a DPoP key, a client
/// certificate) is not relayed: without the key's proof an upstream that
/// checks would refuse it, and one that does not would take a copy anyone
/// could send. A token without `cnf` is relayed as ever.
#[tokio::test]
async fn a_sender_bound_caller_token_is_not_relayed() {
    use palisade::core::authn::{AuthOutcome, Authenticated, Authenticator, BearerToken, RequestHead};
    use palisade::core::{Check, Identity, TokenClaims, Verification};
    use tower::ServiceExt as _;
    /// `x-token: T` is a verified token; `x-cnf` gives it a `cnf` claim.
    struct Given;
    impl Authenticator for Given {
        fn challenge(&self) -> Option<String> {
            None
        }
        fn authenticate(&self, req: &dyn RequestHead) -> Check<AuthOutcome> {
            let Some(token) = req.header_str("x-token") else {
                return Check::Ready(AuthOutcome::NoCredential);
            };
            let mut claims = TokenClaims::default();
            claims.issuer = "https://idp.example".into();
            claims.subject = "alice".into();
            if let Some(jkt) = req.header_str("x-cnf") {
                claims
                    .claims
                    .insert("cnf".into(), serde_json::json!({"jkt": jkt}));
            }
            Check::Ready(AuthOutcome::Authenticated(
                Authenticated::new(Identity::from_token(claims, Verification::assertion()))
                    .with_attachment(BearerToken::new(token)),
            ))
        }
    }
    let guard = palisade::prelude::Guard::builder()
        .authenticator(Given)
        .access_policy(palisade::core::authz::AccessPolicy::allow_all())
        .build()
        .unwrap();
    let app = palisade::axum::PalisadeLayer::new(guard).wrap(axum::Router::new().route(
        "/",
        axum::routing::get(
            |axum::Extension(auth): axum::Extension<palisade::core::RequestAuth>| async move {
                let caller = CallerToken::from_request(&auth);
                let mut headers = http::HeaderMap::new();
                match Credentials::Caller
                    .apply(&mut headers, Some("details"), caller.as_ref())
                    .await
                {
                    Ok(_) => headers["authorization"].to_str().unwrap().to_owned(),
                    Err(e) => format!("{e:?}"),
                }
            },
        ),
    ));
    for (cnf, want) in [
        (None, "Bearer plain.token.here"),
        (
            Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"),
            "CallerTokenBound",
        ),
    ] {
        let mut req = http::Request::get("/").header("x-token", "plain.token.here");
        if let Some(jkt) = cnf {
            req = req.header("x-cnf", jkt);
        }
        let res = app
            .clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
        assert_eq!(std::str::from_utf8(&body).unwrap(), want, "{cnf:?}");
    }
}

/// One exchange per caller token, even when the request that started it
/// goes away before the issuer answers (a client hanging up, a timeout
/// layer): the others waiting keep it, and a request that comes meanwhile
/// joins it rather than starting another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_outlives_the_request_that_started_it() {
    let issuer = TestIssuer::builder()
        .client("productpage", SECRET)
        .token_lifetime(Duration::from_secs(300))
        .start()
        .unwrap();
    issuer.delay_exchange_answers(Duration::from_millis(400));
    let exchange = TokenExchange::builder(issuer.issuer(), "productpage")
        .client_secret(SECRET)
        .audience("details")
        .build()
        .unwrap();
    let user = CallerToken::new(&issuer.token().subject("alice").audience("productpage").sign());
    let ask = || {
        let (exchange, user) = (exchange.clone(), user.clone());
        tokio::spawn(async move { exchange.authorization(&user).await })
    };
    let first = ask();
    // The first request has reached the issuer (which answers 400 ms
    // later) before it is abandoned: the exchange under way is its.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while issuer.token_exchanges() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first exchange was never asked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = ask();
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = ask();
    let (second, third) = (second.await.unwrap().unwrap(), third.await.unwrap().unwrap());
    assert_eq!(second, third);
    assert!(second.starts_with("Bearer "), "{second}");
    assert_eq!(issuer.token_exchanges(), 1, "one exchange for the three requests");
    // Kept: the next request uses it without asking.
    assert_eq!(exchange.authorization(&user).await.unwrap(), second);
    assert_eq!(issuer.token_exchanges(), 1);
}
