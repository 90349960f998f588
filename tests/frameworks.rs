//! One table of requests and expected answers, run through axum (tower) and
//! actix-web: same status, same challenges, same problem body.

use std::time::Duration;

use actix_web::{App, HttpResponse, web};
use axum::body::Body;
use axum::routing::{get, post};
use palisade::core::policy::{PolicySet, Workload};
use palisade::prelude::Identity;
use palisade::testkit::TestIssuer;
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    challenges: Vec<String>,
    content_type: Option<String>,
    body: Value,
    /// The response headers marked sensitive (kept out of `Debug` output
    /// and of HTTP/2's header index), by name.
    sensitive: Vec<String>,
}

fn policy(issuer: &TestIssuer) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  jwtRules:
  - issuer: {iss}
    jwksUri: {jwks}
    audiences: [details]
    fromHeaders: [{{name: Authorization, prefix: \"Bearer \"}}]
---
apiVersion: palisade.dev/v1alpha1
kind: JwtSettings
metadata: {{name: tuning}}
spec: {{unknownKidWait: 300ms, minRefreshInterval: 100ms}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
  - to: [{{operation: {{paths: [/healthz]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: [\"/admin*\"]}}}}]}}]
",
        iss = issuer.issuer(),
        jwks = issuer.jwks_uri()
    )
}

fn guard(issuer: &TestIssuer) -> palisade::prelude::Guard {
    let set = PolicySet::from_yaml_str(&policy(issuer), "frameworks.yaml").unwrap();
    palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap()
}

async fn whoami_axum(id: Option<Identity>) -> axum::Json<Value> {
    axum::Json(palisade::core::whoami(id.as_ref()))
}

/// The names of the headers marked sensitive, sorted: (name, sensitive)
/// pairs of either framework's header map.
fn sensitive_names<'h>(headers: impl Iterator<Item = (&'h str, bool)>) -> Vec<String> {
    let mut names: Vec<String> = headers
        .filter(|(_, sensitive)| *sensitive)
        .map(|(n, _)| n.to_owned())
        .collect();
    names.sort();
    names
}

async fn call_axum(guard: &palisade::prelude::Guard, headers: &[(&str, String)], path: &str) -> Answer {
    let app = axum::Router::new()
        .route("/whoami", get(whoami_axum))
        .route("/healthz", get(|| async { axum::Json(json!("ok")) }))
        .route("/admin", get(|| async { axum::Json(json!("admin")) }))
        .layer(palisade::axum::PalisadeLayer::new(guard.clone()));
    let mut req = http::Request::builder().uri(path);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let challenges = res
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let sensitive = sensitive_names(res.headers().iter().map(|(n, v)| (n.as_str(), v.is_sensitive())));
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    Answer {
        status,
        challenges,
        content_type,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        sensitive,
    }
}

async fn call_actix(guard: &palisade::prelude::Guard, headers: &[(&str, String)], path: &str) -> Answer {
    let app = actix_web::test::init_service(
        App::new()
            .wrap(palisade::actix::Palisade::new(guard.clone()))
            .route(
                "/whoami",
                web::get().to(|id: Option<Identity>| async move {
                    HttpResponse::Ok().json(palisade::core::whoami(id.as_ref()))
                }),
            )
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().json("ok") }),
            )
            .route(
                "/admin",
                web::get().to(|| async { HttpResponse::Ok().json("admin") }),
            ),
    )
    .await;
    let mut req = actix_web::test::TestRequest::get().uri(path);
    for (k, v) in headers {
        req = req.append_header((*k, v.as_str()));
    }
    let res = actix_web::test::call_service(&app, req.to_request()).await;
    let status = res.status().as_u16();
    let challenges = res
        .headers()
        .get_all("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let sensitive = sensitive_names(res.headers().iter().map(|(n, v)| (n.as_str(), v.is_sensitive())));
    let bytes = actix_web::test::read_body(res).await;
    Answer {
        status,
        challenges,
        content_type,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        sensitive,
    }
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

/// Request headers of a case.
type Headers<'a> = Vec<(&'a str, String)>;

/// Status, `WWW-Authenticate` values and problem detail of an expected answer.
type Expected<'a> = (u16, Vec<String>, Option<&'a str>);

/// A named request (headers, path) and its expected answer.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, Expected<'a>);

fn invalid(detail: &str) -> Expected<'_> {
    (
        401,
        vec![format!(
            "Bearer realm=\"details\", error=\"invalid_token\", error_description=\"{detail}\""
        )],
        Some(detail),
    )
}

#[actix_web::test]
async fn both_frameworks_answer_the_contract_table_identically() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let guard = guard(&issuer);
    let good = issuer.token().subject("alice").realm_roles(&["admin"]).sign();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let challenge = vec!["Bearer realm=\"details\"".to_owned()];
    let missing = (
        401,
        challenge.clone(),
        Some("this resource needs an authenticated caller"),
    );
    let cases: Vec<Case<'_>> = vec![
        ("no token", vec![], "/whoami", missing.clone()),
        ("valid token", bearer(&good), "/whoami", (200, vec![], None)),
        ("scheme is case-insensitive", vec![("authorization", format!("bEaReR {good}"))], "/whoami", (200, vec![], None)),
        ("healthz is open", vec![], "/healthz", (200, vec![], None)),
        ("basic credentials are not a bearer token", vec![("authorization", "Basic YTpi".into())], "/whoami", missing.clone()),
        ("expired", bearer(&issuer.token().expires_in(-3600).sign()), "/whoami", invalid("the token has expired")),
        ("not yet valid", bearer(&issuer.token().not_before(3600).sign()), "/whoami", invalid("the token is not valid yet")),
        ("issued in the future", bearer(&issuer.token().issued_at(3600).sign()), "/whoami", invalid("the token was issued in the future")),
        ("wrong audience", bearer(&issuer.token().audience("reviews").sign()), "/whoami", invalid("the token is not meant for this service")),
        ("no audience", bearer(&issuer.token().no_audience().sign()), "/whoami", invalid("the token has no `aud` claim")),
        ("numeric audience", bearer(&issuer.token().claim("aud", json!(5)).sign()), "/whoami", invalid("the token's `aud` claim is not valid")),
        ("unknown issuer", bearer(&issuer.token().issuer("https://evil.example").sign()), "/whoami", invalid("the token's issuer is not accepted")),
        ("no issuer", bearer(&issuer.token().no_issuer().sign()), "/whoami", invalid("the token has no `iss` claim")),
        ("alg none", bearer(&issuer.token().header("alg", json!("none")).unsigned()), "/whoami", invalid("unsigned tokens are not accepted")),
        ("alg NoNe signed", bearer(&issuer.token().header("alg", json!("NoNe")).sign()), "/whoami", invalid("unsigned tokens are not accepted")),
        ("HS256 confusion", bearer(&issuer.token().header("alg", json!("HS256")).sign()), "/whoami", invalid("the token's algorithm is not accepted")),
        ("crit header", bearer(&issuer.token().header("crit", json!(["exp"])).sign()), "/whoami", invalid("the token uses a header extension that is not supported")),
        ("b64 false", bearer(&issuer.token().header("b64", json!(false)).sign()), "/whoami", invalid("the token uses a header extension that is not supported")),
        ("nested", bearer(&issuer.token().header("cty", json!("JWT")).sign()), "/whoami", invalid("nested tokens are not accepted")),
        ("unknown kid", bearer(&issuer.token().kid(Some("no-such-key")).sign()), "/whoami", invalid("the token's signing key is not known")),
        ("duplicate claim", bearer(&issuer.token().raw_payload(&format!("{{\"iss\":\"{}\",\"sub\":\"a\",\"aud\":\"details\",\"exp\":9999999999,\"role\":\"admin\",\"role\":\"user\"}}", issuer.issuer())).sign()), "/whoami", invalid("the token has a duplicate claim")),
        ("tampered payload", bearer(&{
            let parts: Vec<&str> = good.split('.').collect();
            format!("{}.{}.{}", parts[0], b64(&format!("{{\"iss\":\"{}\",\"sub\":\"mallory\",\"aud\":\"details\",\"exp\":9999999999}}", issuer.issuer())), parts[2])
        }), "/whoami", invalid("the token's signature is not valid")),
        ("garbage", bearer("not-a-jwt"), "/whoami", invalid("the token is malformed")),
        ("JWE", bearer("a.b.c.d.e"), "/whoami", invalid("encrypted tokens are not accepted")),
        ("oversized", bearer(&"a".repeat(9000)), "/whoami", invalid("the token is too large")),
        ("two tokens", vec![("authorization", format!("Bearer {good}")), ("authorization", format!("Bearer {good}"))], "/whoami", (
            400,
            vec!["Bearer realm=\"details\", error=\"invalid_request\", error_description=\"the request carries more than one token\"".into()],
            Some("the request carries more than one token"),
        )),
        ("denied by policy", bearer(&good), "/admin", (403, vec![], Some("access denied by policy"))),
        // A DENY rule on the path refuses everyone: a token would not help, so 403 (as Istio).
        ("denied and anonymous", vec![], "/admin", (403, vec![], Some("access denied by policy"))),
        // No ALLOW rule matched and the rules need an end user: ask for a token.
        ("anonymous where a token is needed", vec![], "/whoami", missing.clone()),
    ];
    for (name, headers, path, (status, challenges, detail)) in cases {
        let a = call_axum(&guard, &headers, path).await;
        let b = call_actix(&guard, &headers, path).await;
        assert_eq!(a, b, "{name}: axum and actix differ");
        assert_eq!(a.status, status, "{name}: {a:?}");
        assert_eq!(a.challenges, challenges, "{name}");
        match detail {
            Some(d) => {
                assert_eq!(
                    a.content_type.as_deref(),
                    Some("application/problem+json"),
                    "{name}"
                );
                assert_eq!(a.body["detail"], d, "{name}");
                assert_eq!(a.body["status"], status, "{name}");
                // A refusal never echoes the token.
                let text = a.body.to_string();
                assert!(!text.contains(&good[..40]), "{name}: body echoes the token");
            }
            None if path == "/whoami" => {
                assert_eq!(a.body["authenticated"], true, "{name}");
                assert_eq!(a.body["subject"], "alice", "{name}");
                assert_eq!(a.body["realm_roles"], json!(["admin"]), "{name}");
                assert_eq!(
                    a.body["request_principal"],
                    format!("{}/alice", issuer.issuer()),
                    "{name}"
                );
            }
            None => {}
        }
    }
}

#[actix_web::test]
async fn the_token_is_removed_before_the_handler_unless_forwarded() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    for (forward, expect_header) in [(false, false), (true, true)] {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  jwtRules:\n  - issuer: {}\n    jwksUri: {}\n    audiences: [details]\n    forwardOriginalToken: {forward}\n    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]\n",
            issuer.issuer(),
            issuer.jwks_uri()
        );
        let set = PolicySet::from_yaml_str(&yaml, "t.yaml").unwrap();
        let guard = palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap();
        let token = issuer.token().subject("bob").sign();
        let seen = |h: &http::HeaderMap| {
            (
                h.contains_key("authorization"),
                h.get("x-sub").map(|v| v.to_str().unwrap().to_owned()),
            )
        };
        let app = axum::Router::new()
            .route(
                "/",
                get(move |headers: http::HeaderMap| async move { format!("{:?}", seen(&headers)) }),
            )
            .layer(palisade::axum::PalisadeLayer::new(guard.clone()));
        let req = http::Request::get("/")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            format!("({expect_header}, Some(\"bob\"))")
        );

        let actix =
            actix_web::test::init_service(App::new().wrap(palisade::actix::Palisade::new(guard)).route(
                "/",
                web::get().to(|req: actix_web::HttpRequest| async move {
                    let h = req.headers();
                    format!(
                        "({}, {:?})",
                        h.contains_key("authorization"),
                        h.get("x-sub").map(|v| v.to_str().unwrap().to_owned())
                    )
                }),
            ))
            .await;
        let req = actix_web::test::TestRequest::get()
            .uri("/")
            .append_header(("authorization", format!("Bearer {token}")))
            .to_request();
        let body = actix_web::test::call_and_read_body(&actix, req).await;
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            format!("({expect_header}, Some(\"bob\"))")
        );
    }
}

/// A client cannot supply the headers the JWT authenticator sets from a
/// verified token (`outputClaimToHeaders`, `outputPayloadToHeader`): they
/// are removed from every request, as Envoy does, whether it has no token
/// (and the policy lets it in) or a token of another issuer, which sets
/// none.
#[actix_web::test]
async fn output_headers_a_client_sends_never_reach_the_handler() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let other = TestIssuer::builder().default_audience("details").start().unwrap();
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  jwtRules:\n  - issuer: {}\n    jwksUri: {}\n    audiences: [details]\n    outputClaimToHeaders: [{{header: x-user, claim: sub}}]\n    outputPayloadToHeader: x-jwt-payload\n  - issuer: {}\n    jwksUri: {}\n    audiences: [details]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin}}\nspec:\n  action: DENY\n  rules: [{{when: [{{key: \"request.headers[x-user]\", values: [admin]}}]}}]\n",
        issuer.issuer(),
        issuer.jwks_uri(),
        other.issuer(),
        other.jwks_uri()
    );
    let set = PolicySet::from_yaml_str(&yaml, "t.yaml").unwrap();
    let guard = palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap();
    // The policy reads the request as the handler gets it: the client's
    // `x-user: admin` is not there (it would be denied), a verified one is.
    let seen = |h: &http::HeaderMap| {
        format!(
            "{:?} {}",
            h.get("x-user").map(|v| v.to_str().unwrap().to_owned()),
            h.contains_key("x-jwt-payload")
        )
    };
    let axum_app = axum::Router::new()
        .route(
            "/",
            get(move |headers: http::HeaderMap| async move { seen(&headers) }),
        )
        .layer(palisade::axum::PalisadeLayer::new(guard.clone()));
    let actix = actix_web::test::init_service(App::new().wrap(palisade::actix::Palisade::new(guard)).route(
        "/",
        web::get().to(|req: actix_web::HttpRequest| async move {
            let h = req.headers();
            format!(
                "{:?} {}",
                h.get("x-user").map(|v| v.to_str().unwrap().to_owned()),
                h.contains_key("x-jwt-payload")
            )
        }),
    ))
    .await;
    let bob = issuer.token().subject("bob").sign();
    let mallory = other.token().subject("mallory").sign();
    let admin = issuer.token().subject("admin").sign();
    for (token, want) in [
        (None, "None false"),
        (Some(&mallory), "None false"),
        (Some(&bob), "Some(\"bob\") true"),
        (Some(&admin), "403"),
    ] {
        let mut headers = token.map(|t| bearer(t)).unwrap_or_default();
        headers.push(("x-user", "admin".to_owned()));
        headers.push(("x-jwt-payload", "eyJzdWIiOiJhZG1pbiJ9".to_owned()));
        let (req, actix_req) = both_requests("GET", "/", &headers);
        let res = axum_app.clone().oneshot(req).await.unwrap();
        if want == "403" {
            assert_eq!(res.status(), 403, "axum");
            let res = actix_web::test::call_service(&actix, actix_req.to_request()).await;
            assert_eq!(res.status(), 403, "actix-web");
            continue;
        }
        assert_eq!(res.status(), 200);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(std::str::from_utf8(&body).unwrap(), want, "axum");
        let body = actix_web::test::call_and_read_body(&actix, actix_req.to_request()).await;
        assert_eq!(std::str::from_utf8(&body).unwrap(), want, "actix-web");
    }
}

/// Who the guard's record of a request names.
fn recorded(auth: &palisade::core::RequestAuth) -> String {
    auth.identity()
        .and_then(Identity::subject)
        .unwrap_or("anonymous")
        .to_owned()
}

#[actix_web::test]
async fn extractors_agree_on_identity_and_claims() {
    #[derive(serde::Deserialize)]
    struct Mine {
        sub: String,
        tenant: String,
    }
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let jwt = palisade::jwt::JwtAuthenticator::builder()
        .realm("details")
        .provider(
            palisade::jwt::Provider::builder(issuer.issuer())
                .audience("details")
                .jwks_uri(issuer.jwks_uri())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let guard = palisade::prelude::Guard::builder()
        .authenticator(jwt)
        .allow_unauthenticated()
        .build()
        .unwrap();
    let with_tenant = issuer
        .token()
        .subject("carol")
        .claim("tenant", json!("acme"))
        .sign();
    let without = issuer.token().subject("dave").sign();

    let app = axum::Router::new()
        .route(
            "/id",
            get(|id: Identity| async move { id.subject().unwrap_or_default().to_owned() }),
        )
        .route(
            "/claims",
            get(
                |palisade::prelude::Claims(c): palisade::prelude::Claims<Mine>| async move {
                    format!("{}@{}", c.sub, c.tenant)
                },
            ),
        )
        .route(
            "/record",
            get(|auth: palisade::core::RequestAuth| async move { recorded(&auth) }),
        )
        .route(
            "/any",
            axum::routing::any(|id: Identity| async move { id.subject().unwrap_or_default().to_owned() }),
        )
        .route(
            "/any-claims",
            axum::routing::any(
                |palisade::prelude::Claims(c): palisade::prelude::Claims<Mine>| async move { c.sub },
            ),
        )
        .layer(palisade::axum::PalisadeLayer::new(guard.clone()));
    let actix = actix_web::test::init_service(
        App::new()
            .wrap(palisade::actix::Palisade::new(guard))
            .route(
                "/id",
                web::get().to(|id: Identity| async move { id.subject().unwrap_or_default().to_owned() }),
            )
            .route(
                "/claims",
                web::get().to(
                    |palisade::prelude::Claims(c): palisade::prelude::Claims<Mine>| async move {
                        format!("{}@{}", c.sub, c.tenant)
                    },
                ),
            )
            .route(
                "/record",
                web::get().to(|auth: palisade::core::RequestAuth| async move { recorded(&auth) }),
            )
            .route(
                "/any",
                web::route().to(|id: Identity| async move { id.subject().unwrap_or_default().to_owned() }),
            )
            .route(
                "/any-claims",
                web::route()
                    .to(|palisade::prelude::Claims(c): palisade::prelude::Claims<Mine>| async move { c.sub }),
            ),
    )
    .await;
    let cases = [
        ("/record", None, 200, "anonymous"),
        ("/record", Some(&with_tenant), 200, "carol"),
        ("/id", None, 401, ""),
        ("/id", Some(&with_tenant), 200, "carol"),
        ("/claims", Some(&with_tenant), 200, "carol@acme"),
        ("/claims", Some(&without), 403, ""),
        ("/claims", None, 401, ""),
    ];
    for (path, token, status, body) in cases {
        let (req, areq) = both_requests("GET", path, &token.map(|t| bearer(t)).unwrap_or_default());
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status().as_u16(), status, "axum {path} {token:?}");
        let ares = actix_web::test::call_service(&actix, areq.to_request()).await;
        assert_eq!(ares.status().as_u16(), status, "actix {path}");
        if status == 401 {
            assert_eq!(
                res.headers().get("www-authenticate").unwrap(),
                "Bearer realm=\"details\""
            );
            assert_eq!(
                ares.headers().get("www-authenticate").unwrap(),
                "Bearer realm=\"details\""
            );
        }
        if status == 200 {
            let b = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
            assert_eq!(b, body);
            let b = actix_web::test::read_body(ares).await;
            assert_eq!(b, body);
        }
    }
    // An extractor's refusal is rendered as its request asks, as the
    // guard's own are: a gRPC call's as a trailers-only answer with its
    // `grpc-status`, a HEAD request's without a body.
    let grpc = "application/grpc+proto";
    let cases = [
        // (method, path, content-type, token, status, grpc-status, body's start)
        ("POST", "/any", grpc, None, 200, Some("16"), ""),
        ("POST", "/any-claims", grpc, Some(&without), 200, Some("7"), ""),
        (
            "POST",
            "/any-claims",
            grpc,
            Some(&with_tenant),
            200,
            None,
            "carol",
        ),
        ("HEAD", "/any", "", None, 401, None, ""),
        ("POST", "/any", "application/json", None, 401, None, "{"),
        // grpc-web: the same status, in grpc-web's content type (as
        // Envoy's grpc_web filter answers), the text form too.
        (
            "POST",
            "/any-claims",
            "application/grpc-web",
            Some(&without),
            200,
            Some("7"),
            "",
        ),
        (
            "POST",
            "/any",
            "application/grpc-web-text+proto",
            None,
            200,
            Some("16"),
            "",
        ),
    ];
    for (method, path, content_type, token, status, grpc_status, body) in cases {
        let what = format!("{method} {path} {content_type}");
        let mut headers = token.map(|t| bearer(t)).unwrap_or_default();
        if !content_type.is_empty() {
            headers.push(("content-type", content_type.to_owned()));
        }
        let (req, areq) = both_requests(method, path, &headers);
        let res = app.clone().oneshot(req).await.unwrap();
        let ares = actix_web::test::call_service(&actix, areq.to_request()).await;
        let aheaders = http_headers(ares.headers());
        for (who, got, headers) in [
            ("axum", res.status().as_u16(), res.headers()),
            ("actix-web", ares.status().as_u16(), &aheaders),
        ] {
            assert_eq!(got, status, "{who} {what}");
            assert_eq!(
                header_of(headers, "grpc-status").as_deref(),
                grpc_status,
                "{who} {what}"
            );
            if grpc_status.is_some() {
                let expected = if content_type.starts_with("application/grpc-web-text") {
                    "application/grpc-web-text+proto"
                } else if content_type.starts_with("application/grpc-web") {
                    "application/grpc-web+proto"
                } else {
                    "application/grpc"
                };
                let answered = header_of(headers, "content-type");
                assert_eq!(answered.as_deref(), Some(expected), "{who} {what}");
            }
        }
        let b = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        let ab = actix_web::test::read_body(ares).await;
        // actix-http drops a HEAD answer's body itself, on the wire
        // (keeping the length a GET would get): its test service has it,
        // so actix-web's HEAD refusals are checked on the wire (`send_as`,
        // "A refusal to HEAD" below), not here.
        let mut bodies = vec![("axum", &b[..])];
        if method != "HEAD" {
            bodies.push(("actix-web", &ab[..]));
        }
        for (who, b) in bodies {
            let text = std::str::from_utf8(b).unwrap();
            assert!(
                text.starts_with(body) && (body.is_empty() == text.is_empty()),
                "{who} {what}: {text}"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[actix_web::test]
async fn istio_token_locations_and_payload_output_work_in_both_frameworks() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  jwtRules:\n  - issuer: {}\n    jwksUri: {}\n    audiences: [details]\n    fromCookies: [session]\n    fromParams: [token]\n    fromHeaders: [{{name: x-jwt}}]\n    outputPayloadToHeader: x-jwt-payload\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: require}}\nspec:\n  rules: [{{from: [{{source: {{requestPrincipals: [\"*\"]}}}}]}}]\n",
        issuer.issuer(),
        issuer.jwks_uri()
    );
    let set = PolicySet::from_yaml_str(&yaml, "t.yaml").unwrap();
    let guard = palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap();
    let token = issuer.token().subject("erin").sign();
    let payload = token.split('.').nth(1).unwrap().to_owned();
    let with_param = format!("/whoami?a=1&token={token}");
    let cases: Vec<(&str, Headers<'_>, u16)> = vec![
        (
            "/whoami",
            vec![("cookie", format!("theme=dark; session={token}"))],
            200,
        ),
        (&with_param, vec![], 200),
        ("/whoami", vec![("x-jwt", token.clone())], 200),
        // Authorization is not a configured location for this rule.
        ("/whoami", vec![("authorization", format!("Bearer {token}"))], 401),
        // Two locations at once.
        (
            "/whoami",
            vec![("x-jwt", token.clone()), ("cookie", format!("session={token}"))],
            400,
        ),
    ];
    for (path, headers, status) in cases {
        let a = call_axum(&guard, &headers, path).await;
        let b = call_actix(&guard, &headers, path).await;
        assert_eq!(a, b, "{path} {headers:?}");
        assert_eq!(a.status, status, "{path} {headers:?}: {a:?}");
        if status == 200 {
            assert_eq!(a.body["subject"], "erin");
        }
    }
    let app = axum::Router::new()
        .route(
            "/",
            get(|h: http::HeaderMap| async move {
                h.get("x-jwt-payload")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            }),
        )
        .layer(palisade::axum::PalisadeLayer::new(guard));
    let req = http::Request::get("/")
        .header("x-jwt", token.as_str())
        .body(Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(
        axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap(),
        payload
    );
}

/// One answer read off the wire.
#[derive(Debug, PartialEq)]
struct Wire {
    status: u16,
    /// The headers both adapters must agree on, lower-case names, sorted by
    /// name (values of one name in order).
    headers: Vec<(String, String)>,
    body: Value,
}

/// Sends one HTTP/1.1 request as written (no client normalises the path)
/// and reads the answer.
async fn send(addr: std::net::SocketAddr, target: &str, headers: &[(&str, String)]) -> Wire {
    send_as(addr, "GET", target, headers).await.0
}

/// [`send`] with `method`; also the `content-length` sent and the length
/// of the body that came.
async fn send_as(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, String)],
) -> (Wire, Option<usize>, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(k, _)| *k == "host") {
        req.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let mut all: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let chunked = all
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size, 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    let content_length = all
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap());
    let came = body.len();
    all.retain(|(k, _)| {
        matches!(
            k.as_str(),
            "www-authenticate" | "content-type" | "x-palisade-authz"
        )
    });
    // The order of different names carries no meaning (actix-web's map
    // does not keep it); the order of one name's values does.
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let wire = Wire {
        status,
        headers: all,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    };
    (wire, content_length, came)
}

/// What the handler saw: the path the router routed, the query, whether
/// the token reached it, and the identity.
fn seen(path: &str, query: Option<&str>, authorization: bool, id: Option<&Identity>) -> Value {
    json!({
        "path": path,
        "query": query,
        "authorization": authorization,
        "subject": id.and_then(Identity::subject),
    })
}

/// `seen`, plus the claim headers the handler was given.
fn seen_with(v: Value, sub: Option<&str>, tenant: Option<&str>) -> Value {
    let mut v = v;
    v["x-sub"] = json!(sub);
    v["x-tenant"] = json!(tenant);
    v
}

/// Both adapters on real sockets (axum under plain `axum::serve` with
/// `ConnectAddrs`, actix-web under `HttpServer`), one table of requests:
/// connection facts (ports, addresses), path rewrites, response headers and
/// refusals must come out byte-for-byte the same.
#[test]
fn both_frameworks_agree_on_the_wire() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    // Wildcard binds: the local address must come from the connection
    // (`ConnectAddrs`, `on_connect`), not the listener's `0.0.0.0`.
    let axum_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let actix_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let loopback = |l: &std::net::TcpListener| {
        std::net::SocketAddr::from(([127, 0, 0, 1], l.local_addr().unwrap().port()))
    };
    let axum_addr = loopback(&axum_listener);
    let actix_addr = loopback(&actix_listener);
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  jwtRules:
  - issuer: {iss}
    jwksUri: {jwks}
    audiences: [details]
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}, {{header: x-tenant, claim: tenant}}]
---
apiVersion: palisade.dev/v1alpha1
kind: AuthorizationSettings
metadata: {{name: debug}}
spec: {{explainHeader: true}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: [\"/admin*\", \"*:delete\", /public/privé/*, \"/public/secr%C3%A8t/*\", \"/public/[draft]/*\", /public/a+b]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: open}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
  - to: [{{operation: {{paths: [/public/*]}}}}]
  - to: [{{operation: {{ports: [\"{p1}\", \"{p2}\"], paths: [/by-port/*]}}}}]
  - from: [{{source: {{ipBlocks: [127.0.0.1/32]}}}}]
    to: [{{operation: {{paths: [/loopback/*]}}}}]
  - to: [{{operation: {{paths: [/elsewhere/*]}}}}]
    when: [{{key: destination.port, values: [\"1\"]}}]
  - to: [{{operation: {{paths: [/dest/*]}}}}]
    when: [{{key: destination.ip, values: [127.0.0.1]}}]
  - to: [{{operation: {{hosts: [public.example], paths: [/hosted/*]}}}}]
",
        iss = issuer.issuer(),
        jwks = issuer.jwks_uri(),
        p1 = axum_addr.port(),
        p2 = actix_addr.port(),
    );
    let set = PolicySet::from_yaml_str(&yaml, "wire.yaml").unwrap();
    // One guard each, so each verifies the token itself (its own cache).
    let make_guard = || palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap();
    let guard = make_guard();

    // actix-web on its own system thread.
    let actix_guard = make_guard();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = actix_web::HttpServer::new(move || {
                App::new()
                    .wrap(palisade::actix::Palisade::new(actix_guard.clone()))
                    .default_service(web::to(
                        |req: actix_web::HttpRequest, id: Option<Identity>| async move {
                            let h = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            HttpResponse::Ok().json(seen_with(
                                seen(
                                    req.path(),
                                    req.uri().query(),
                                    req.headers().contains_key("authorization"),
                                    id.as_ref(),
                                ),
                                h("x-sub").as_deref(),
                                h("x-tenant").as_deref(),
                            ))
                        },
                    ))
            })
            .workers(1)
            .on_connect(palisade::actix::on_connect)
            .listen(actix_listener)
            .unwrap()
            .run();
            tx.send(server.handle()).unwrap();
            server.await.unwrap();
        });
    });
    let actix_handle = rx.recv().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let router = axum::Router::new().fallback(
            |uri: http::Uri, headers: http::HeaderMap, id: Option<Identity>| async move {
                let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
                axum::Json(seen_with(
                    seen(
                        uri.path(),
                        uri.query(),
                        headers.contains_key("authorization"),
                        id.as_ref(),
                    ),
                    h("x-sub").as_deref(),
                    h("x-tenant").as_deref(),
                ))
            },
        );
        let app = palisade::axum::PalisadeLayer::new(guard).wrap(router);
        axum_listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(axum_listener).unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<palisade::axum::ConnectAddrs>(),
            )
            .await
            .unwrap();
        });

        let token = issuer.token().subject("alice").sign();
        let auth = || vec![("authorization", format!("Bearer {token}"))];
        let explain = |w: &Wire| {
            w.headers
                .iter()
                .find(|(k, _)| k == "x-palisade-authz")
                .map(|(_, v)| v.clone())
        };
        // (name, target, headers, status, what the handler saw)
        let cases: Vec<(&str, &str, Headers<'_>, u16, Option<Value>)> = vec![
            (
                "token",
                "/whoami",
                auth(),
                200,
                Some(seen("/whoami", None, false, None)),
            ),
            ("no token", "/whoami", vec![], 401, None),
            (
                "bad token",
                "/whoami",
                vec![("authorization", "Bearer x.y.z".into())],
                401,
                None,
            ),
            ("two tokens", "/whoami", [auth(), auth()].concat(), 400, None),
            ("denied path", "/admin", auth(), 403, None),
            (
                "dot segments reach the denied path",
                "/public/../admin",
                auth(),
                403,
                None,
            ),
            (
                "escaped dot segments too",
                "/public/%2e%2e/admin?x=1",
                auth(),
                403,
                None,
            ),
            ("malformed escape", "/public/%zz", vec![], 400, None),
            // actix-web decodes `%3A` before routing: so does the policy.
            ("an escaped colon", "/public/7%3Adelete", vec![], 403, None),
            // A path written raw and escaped reaches one handler (actix-web
            // decodes escapes before routing, axum's captures do): a rule
            // written raw sees the escapes (and raw requests, below).
            (
                "escapes of a path denied raw",
                "/public/priv%C3%A9/x",
                vec![],
                403,
                None,
            ),
            ("in lower case", "/public/priv%c3%a9/x", vec![], 403, None),
            ("brackets raw", "/public/[draft]/x", vec![], 403, None),
            ("brackets escaped", "/public/%5Bdraft%5d/x", vec![], 403, None),
            // axum's captures decode `%2B`, as they decode every escape.
            ("a plus escaped", "/public/a%2Bb", vec![], 403, None),
            (
                "rewritten, non-ASCII escaped",
                "/public/./caf%c3%a9",
                vec![],
                200,
                Some(seen("/public/caf%C3%A9", None, false, None)),
            ),
            // Bytes a URI holds only escaped, sent raw, are handed on raw
            // (both frameworks take `[`, `]`, `|` raw).
            (
                "rewritten, brackets kept raw",
                "/public/x/../[note]|a",
                vec![],
                200,
                Some(seen("/public/[note]|a", None, false, None)),
            ),
            (
                "rewritten for the router",
                "/public/./a//b?q=1&r",
                vec![],
                200,
                Some(seen("/public/a/b", Some("q=1&r"), false, None)),
            ),
            (
                "rewritten escapes",
                "/public/%61",
                vec![],
                200,
                Some(seen("/public/a", None, false, None)),
            ),
            (
                "the listening port",
                "/by-port/x",
                vec![],
                200,
                Some(seen("/by-port/x", None, false, None)),
            ),
            ("another port", "/elsewhere/x", vec![], 401, None),
            (
                "the remote address",
                "/loopback/x",
                vec![],
                200,
                Some(seen("/loopback/x", None, false, None)),
            ),
            (
                "the host",
                "/hosted/x",
                vec![("host", "Public.Example".into())],
                200,
                Some(seen("/hosted/x", None, false, None)),
            ),
            ("another host", "/hosted/x", vec![], 401, None),
            (
                "the host in the target too",
                "http://public.example/hosted/x",
                vec![("host", "public.example".into())],
                200,
                Some(seen("/hosted/x", None, false, None)),
            ),
            // The router and the policy could each take another host.
            (
                "the host in the target, another in Host",
                "http://public.example/hosted/x",
                vec![],
                400,
                None,
            ),
            (
                "another host in the target, the host in Host",
                "http://127.0.0.1/hosted/x",
                vec![("host", "public.example".into())],
                400,
                None,
            ),
            // An escaped slash where rules read the path: a router's
            // capture would decode it into a segment no rule saw.
            ("an escaped slash", "/public/a%2Fb", vec![], 400, None),
            ("an escaped slash in lower case", "/admin%2fx", auth(), 400, None),
            ("an escaped backslash", "/public/a%5Cb", vec![], 400, None),
        ];
        for (name, target, headers, status, handler_saw) in cases {
            let a = send(axum_addr, target, &headers).await;
            let b = send(actix_addr, target, &headers).await;
            assert_eq!(a, b, "{name}: axum and actix-web differ");
            assert_eq!(a.status, status, "{name}: {a:?}");
            match &handler_saw {
                Some(v) => {
                    let with_token = matches!(name, "token" | "client claim headers");
                    let mut want = seen_with(v.clone(), with_token.then_some("alice"), None);
                    if with_token {
                        want["subject"] = json!("alice");
                    }
                    assert_eq!(a.body, want, "{name}");
                }
                None => {
                    assert_eq!(a.body["status"], status, "{name}: a problem document");
                    assert!(
                        a.headers
                            .iter()
                            .any(|(k, v)| k == "content-type" && v == "application/problem+json"),
                        "{name}"
                    );
                }
            }
            // Every decision the policy made is explained (the debug switch
            // is on); refusals before the policy ran (a bad token, two
            // tokens, a bad path, two hosts) have no decision to explain.
            let decided = !matches!(
                name,
                "bad token"
                    | "two tokens"
                    | "malformed escape"
                    | "the host in the target, another in Host"
                    | "another host in the target, the host in Host"
                    | "an escaped slash"
                    | "an escaped slash in lower case"
                    | "an escaped backslash"
            );
            assert_eq!(explain(&a).is_some(), decided, "{name}: {a:?}");
            if status == 401 {
                assert!(
                    a.headers
                        .iter()
                        .any(|(k, v)| k == "www-authenticate" && v.starts_with("Bearer realm=\"details\"")),
                    "{name}: {a:?}"
                );
            }
        }
        // Raw non-ASCII bytes in the target: hyper takes them, actix-web's
        // parser refuses them (400) before any middleware. Through axum, a
        // rule written either way sees them, and an allowed path is routed
        // as sent (axum's literal routes match only the raw form).
        for (name, target, status, handler_saw) in [
            ("a path denied raw", "/public/privé/x", 403, None),
            ("a path denied escaped", "/public/secrèt/x", 403, None),
            (
                "an allowed path",
                "/public/café",
                200,
                Some(seen("/public/café", None, false, None)),
            ),
            // Rewritten, it is handed on as it was sent, raw, and so
            // reaches the literal route it would have without the dots.
            (
                "an allowed path rewritten",
                "/public/x/../café",
                200,
                Some(seen("/public/café", None, false, None)),
            ),
        ] {
            let a = send(axum_addr, target, &[]).await;
            assert_eq!(a.status, status, "{name}: {a:?}");
            if let Some(v) = handler_saw {
                assert_eq!(a.body, seen_with(v, None, None), "{name}");
            }
            // actix-web's parser: a 400 without a body, which Palisade's
            // refusals (problem documents) never are.
            let b = send(actix_addr, target, &[]).await;
            assert!(b.status == 400 && b.body.is_null(), "{name}: actix-web: {b:?}");
        }
        // Two `Host` lines (RFC 9112 §3.2: a 400), whichever comes first:
        // the policy and the router could each read another. actix-web's
        // parser refuses them itself (a 400 without a body), before any
        // middleware; through axum, Palisade does.
        for (name, hosts) in [
            ("the allowed host first", ["public.example", "127.0.0.1"]),
            ("the allowed host last", ["127.0.0.1", "public.example"]),
        ] {
            let headers: Vec<(&str, String)> = hosts.iter().map(|h| ("host", (*h).to_owned())).collect();
            let a = send(axum_addr, "/hosted/x", &headers).await;
            assert_eq!(a.status, 400, "{name}: {a:?}");
            assert_eq!(a.body["status"], 400, "{name}: a problem document: {a:?}");
            let b = send(actix_addr, "/hosted/x", &headers).await;
            assert!(
                b.status == 400 && b.body.is_null(),
                "{name}: actix-web's parser: {b:?}"
            );
        }
        // A refusal to HEAD: the GET's status and headers, no body, and no
        // `content-length` but the GET's (RFC 9110 §8.6).
        for (name, target, headers) in [
            ("no token", "/whoami", vec![]),
            (
                "bad token",
                "/whoami",
                vec![("authorization", "Bearer x.y.z".to_owned())],
            ),
            ("denied path", "/admin", auth()),
            ("malformed escape", "/public/%zz", vec![]),
        ] {
            for (framework, addr) in [("axum", axum_addr), ("actix-web", actix_addr)] {
                let (get, get_length, get_came) = send_as(addr, "GET", target, &headers).await;
                let (head, head_length, head_came) = send_as(addr, "HEAD", target, &headers).await;
                assert!(get_came > 0, "{name}: {framework}: a GET is told why");
                assert_eq!(head_came, 0, "{name}: {framework}: HEAD has a body");
                assert_eq!(head.status, get.status, "{name}: {framework}");
                assert_eq!(head.headers, get.headers, "{name}: {framework}");
                if let Some(n) = head_length {
                    assert_eq!(Some(n), get_length, "{name}: {framework}: content-length of HEAD");
                }
            }
        }
    });
    rt.block_on(actix_handle.stop(false));
}

/// A layer inside `Router::nest("/api", …)` sees the path without its
/// prefix; policies match the full path, as under an actix-web scope.
#[actix_web::test]
async fn a_nested_axum_layer_and_an_actix_scope_check_the_full_path() {
    let yaml = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-api-admin}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [\"/api/admin*\", /api/]}}]}]
";
    let set = PolicySet::from_yaml_str(yaml, "nested.yaml").unwrap();
    let guard = palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap();
    let nested = axum::Router::new()
        .fallback(|| async { "ok" })
        .layer(palisade::axum::PalisadeLayer::new(guard.clone()));
    let app = axum::Router::new().nest("/api", nested);
    let actix = actix_web::test::init_service(
        App::new().service(
            web::scope("/api")
                .wrap(palisade::actix::Palisade::new(guard.clone()))
                .default_service(web::to(|| async { HttpResponse::Ok().body("ok") })),
        ),
    )
    .await;
    // Under `nest_service`, `/api/` and `/api` (both handed on as `/`)
    // are told apart, as an actix-web scope tells them.
    let service = axum::Router::new().nest_service(
        "/api",
        tower::Layer::layer(
            &palisade::axum::PalisadeLayer::new(guard.clone()),
            tower::service_fn(|_req: http::Request<Body>| async {
                Ok::<_, std::convert::Infallible>(axum::response::IntoResponse::into_response("ok"))
            }),
        ),
    );
    for (path, status) in [("/api/", 403), ("/api", 200), ("/api/admin", 403)] {
        let req = http::Request::get(path).body(Body::empty()).unwrap();
        let res = service.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status().as_u16(), status, "axum nest_service {path}");
        let req = actix_web::test::TestRequest::get().uri(path).to_request();
        let res = actix_web::test::call_service(&actix, req).await;
        assert_eq!(res.status().as_u16(), status, "actix-web {path}");
    }
    for (path, status) in [("/api/admin", 403), ("/api/admin/x", 403), ("/api/list", 200)] {
        let req = http::Request::get(path).body(Body::empty()).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status().as_u16(), status, "axum {path}");
        let req = actix_web::test::TestRequest::get().uri(path).to_request();
        let res = actix_web::test::call_service(&actix, req).await;
        assert_eq!(res.status().as_u16(), status, "actix-web {path}");
    }
}

/// The core renders its refusals to a HEAD request without a body: hyper's
/// HTTP/2 server would send one. Asked of the layer around the router (a
/// layer inside axum's router is covered by axum's own HEAD rule); actix-web
/// and axum on the wire in `both_frameworks_agree_on_the_wire`.
#[tokio::test]
async fn the_layer_around_the_router_answers_head_without_a_body() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let guard = guard(&issuer);
    let good = issuer.token().subject("alice").sign();
    let expired = issuer.token().subject("alice").expires_in(-3600).sign();
    for (name, token, path, status) in [
        ("no token", None, "/whoami", 401),
        ("expired", Some(&expired), "/whoami", 401),
        ("denied by policy", Some(&good), "/admin", 403),
    ] {
        let mut answers = Vec::new();
        for method in ["GET", "HEAD"] {
            let router = axum::Router::new()
                .route("/whoami", get(whoami_axum))
                .route("/admin", get(|| async { "admin" }))
                .with_state(());
            let svc = tower::Layer::layer(&palisade::axum::PalisadeLayer::new(guard.clone()), router);
            let mut req = http::Request::builder().method(method).uri(path);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let res = svc.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            let challenges: Vec<String> = res
                .headers()
                .get_all("www-authenticate")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            let status = res.status().as_u16();
            let body = axum::body::to_bytes(axum::body::Body::new(res.into_body()), 1 << 20)
                .await
                .unwrap();
            answers.push((status, challenges, body));
        }
        let [
            (get_status, get_challenges, get_body),
            (head_status, head_challenges, head_body),
        ] = &answers[..]
        else {
            unreachable!()
        };
        assert_eq!(*get_status, status, "{name}");
        assert!(!get_body.is_empty(), "{name}: a GET is told why");
        assert_eq!(head_status, get_status, "{name}");
        assert_eq!(head_challenges, get_challenges, "{name}");
        assert!(
            head_body.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(head_body)
        );
    }
}

/// What a browser on another origin gets: `(status, access-control-allow-origin,
/// www-authenticate)` for a preflight, a call without a token and one with.
type CorsAnswers = [(u16, Option<String>, Option<String>); 3];

/// The three requests of [`CorsAnswers`] to `/whoami` from `https://app.example`.
fn cors_requests(token: &str) -> [Vec<(&'static str, String)>; 3] {
    let origin = ("origin", "https://app.example".to_owned());
    [
        vec![
            origin.clone(),
            ("access-control-request-method", "GET".to_owned()),
            ("access-control-request-headers", "authorization".to_owned()),
        ],
        vec![origin.clone()],
        vec![origin, ("authorization", format!("Bearer {token}"))],
    ]
}

fn header_of(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

/// One request for both frameworks: axum's and actix-web's test request.
fn both_requests(
    method: &str,
    path: &str,
    headers: &[(&str, String)],
) -> (http::Request<Body>, actix_web::test::TestRequest) {
    let mut req = http::Request::builder().method(method).uri(path);
    let mut areq = actix_web::test::TestRequest::default()
        .method(method.parse().unwrap())
        .uri(path);
    for (name, value) in headers {
        req = req.header(*name, value);
        areq = areq.append_header((*name, value.as_str()));
    }
    (req.body(Body::empty()).unwrap(), areq)
}

/// actix-web's response headers as an `http::HeaderMap`, as axum's.
fn http_headers(headers: &actix_web::http::header::HeaderMap) -> http::HeaderMap {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().parse().unwrap(), v.as_bytes().try_into().unwrap()))
        .collect()
}

async fn cors_axum<S, B>(app: S, token: &str) -> CorsAnswers
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut answers = Vec::new();
    for (i, headers) in cors_requests(token).into_iter().enumerate() {
        let method = if i == 0 {
            http::Method::OPTIONS
        } else {
            http::Method::GET
        };
        let mut req = http::Request::builder().method(method).uri("/whoami");
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let h = res.headers();
        answers.push((
            res.status().as_u16(),
            header_of(h, "access-control-allow-origin"),
            header_of(h, "www-authenticate"),
        ));
    }
    answers.try_into().unwrap()
}

/// The CORS layer in front of the guard answers preflights (which carry
/// no credential) itself, as Envoy's CORS filter runs before `jwt_authn`,
/// and puts its headers on every answer, refusals included (a browser
/// shows a script a 401 only with them). Behind the guard, a preflight
/// meets a policy that requires a user, and the browser gives up.
#[actix_web::test]
async fn a_cors_layer_in_front_of_the_guard_answers_preflights_on_both_frameworks() {
    use tower_layer::Layer as _;
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let guard = guard(&issuer);
    let token = issuer.token().subject("alice").sign();
    let app_origin = Some("https://app.example".to_owned());
    // What each framework answers with the CORS layer in front: the
    // preflight by the layer, the refusal and the admission with its
    // headers, the refusal with its challenge.
    let in_front = |answers: CorsAnswers, framework: &str| {
        let [preflight, anonymous, user] = answers;
        assert_eq!(
            (preflight.0, &preflight.1),
            (200, &app_origin),
            "{framework}: {preflight:?}"
        );
        assert_eq!(
            (anonymous.0, &anonymous.1),
            (401, &app_origin),
            "{framework}: {anonymous:?}"
        );
        assert!(
            anonymous.2.as_deref().is_some_and(|c| c.starts_with("Bearer")),
            "{framework}: {anonymous:?}"
        );
        assert_eq!((user.0, &user.1), (200, &app_origin), "{framework}: {user:?}");
    };
    let router = || axum::Router::new().route("/whoami", get(whoami_axum));
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(http::HeaderValue::from_static("https://app.example"))
        .allow_methods([http::Method::GET])
        .allow_headers([http::header::AUTHORIZATION])
        .expose_headers([http::header::WWW_AUTHENTICATE]);
    let app = cors
        .clone()
        .layer(palisade::axum::PalisadeLayer::new(guard.clone()).layer(router()));
    in_front(cors_axum(app, &token).await, "axum");
    // The wrong way round: the guard refuses the preflight.
    let behind = router()
        .layer(cors.clone())
        .layer(palisade::axum::PalisadeLayer::new(guard.clone()));
    let [preflight, ..] = cors_axum(behind, &token).await;
    assert_eq!(
        (preflight.0, preflight.1),
        (401, None),
        "axum, CORS behind the guard"
    );

    let app = actix_web::test::init_service(
        App::new()
            .wrap(palisade::actix::Palisade::new(guard.clone()))
            // The last `wrap` is the outermost.
            .wrap(
                actix_cors::Cors::default()
                    .allowed_origin("https://app.example")
                    .allowed_methods(["GET"])
                    .allowed_header(actix_web::http::header::AUTHORIZATION)
                    .expose_headers([actix_web::http::header::WWW_AUTHENTICATE]),
            )
            .route(
                "/whoami",
                web::get().to(|id: Option<Identity>| async move {
                    HttpResponse::Ok().json(palisade::core::whoami(id.as_ref()))
                }),
            ),
    )
    .await;
    let mut answers = Vec::new();
    for (i, headers) in cors_requests(&token).into_iter().enumerate() {
        let mut req = actix_web::test::TestRequest::get().uri("/whoami");
        if i == 0 {
            req = req.method(actix_web::http::Method::OPTIONS);
        }
        for (k, v) in &headers {
            req = req.insert_header((*k, v.as_str()));
        }
        let res = actix_web::test::call_service(&app, req.to_request()).await;
        let h = res.headers();
        let get = |name: &str| h.get(name).map(|v| v.to_str().unwrap().to_owned());
        answers.push((
            res.status().as_u16(),
            get("access-control-allow-origin"),
            get("www-authenticate"),
        ));
    }
    in_front(answers.try_into().unwrap(), "actix-web");
}

/// A `CUSTOM` policy whose authorizer hangs or panics denies the request
/// with 403 on both frameworks, once the authorizer's timeout has passed
/// (or at once, for the panic), and the next request is served: a broken
/// authorizer neither holds requests nor drops connections.
#[tokio::test]
async fn a_hanging_or_panicking_external_authorizer_denies_on_both_frameworks() {
    use palisade::core::authn::RequestHead as _;
    use palisade::core::authz::{AccessPolicy, CheckRequest, ExternalAuthorizers, ExternalDecision};
    let yaml = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec:
  action: CUSTOM
  provider: {name: ext}
  rules: [{to: [{operation: {paths: [/whoami]}}]}]
";
    let set = PolicySet::from_yaml_str(yaml, "custom.yaml").unwrap();
    let authorizers = ExternalAuthorizers::new()
        .timeout(Duration::from_millis(300))
        .register("ext", ["x-ext-authz"], |c: CheckRequest| async move {
            match c.request.header_str("x-ext-authz") {
                Some("allow") => ExternalDecision::Allow,
                Some("hang") => std::future::pending().await,
                Some("panic") => panic!("the authorizer's own bug"),
                _ => ExternalDecision::Deny,
            }
        });
    let access = AccessPolicy::compile_with(
        &set.for_workload(&Workload::new("details", "default")),
        &authorizers,
    )
    .unwrap();
    let guard = palisade::prelude::Guard::builder()
        .access_policy(access)
        .build()
        .unwrap();
    let asked = |v: &str| vec![("x-ext-authz", v.to_owned())];
    for (name, headers, status) in [
        ("allowed", asked("allow"), 200),
        ("denied", asked("deny"), 403),
        ("hangs", asked("hang"), 403),
        ("panics", asked("panic"), 403),
        ("allowed after", asked("allow"), 200),
    ] {
        let started = std::time::Instant::now();
        let axum = tokio::time::timeout(Duration::from_secs(10), call_axum(&guard, &headers, "/whoami"))
            .await
            .unwrap_or_else(|_| panic!("{name}: axum did not answer"));
        let actix = tokio::time::timeout(Duration::from_secs(10), call_actix(&guard, &headers, "/whoami"))
            .await
            .unwrap_or_else(|_| panic!("{name}: actix-web did not answer"));
        assert_eq!(axum.status, status, "{name}: axum");
        assert_eq!(axum, actix, "{name}: the frameworks differ");
        if name == "hangs" {
            assert!(
                started.elapsed() >= Duration::from_millis(600),
                "{name}: waited for the timeout"
            );
        }
    }
}

/// Answers `method path` with `headers` through axum and actix-web: the
/// status, and the subject `/whoami` saw.
async fn whoami_both(
    guard: &palisade::prelude::Guard,
    method: &str,
    headers: &[(&str, String)],
) -> [(u16, Value); 2] {
    let router = axum::Router::new()
        .route("/whoami", get(whoami_axum).post(whoami_axum))
        .layer(palisade::axum::PalisadeLayer::new(guard.clone()));
    let mut req = http::Request::builder().method(method).uri("/whoami");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let res = router.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    let axum = (
        status,
        serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)["subject"].clone(),
    );
    let app = actix_web::test::init_service(
        App::new()
            .wrap(palisade::actix::Palisade::new(guard.clone()))
            .route(
                "/whoami",
                web::route().to(|id: Option<Identity>| async move {
                    HttpResponse::Ok().json(palisade::core::whoami(id.as_ref()))
                }),
            ),
    )
    .await;
    let mut req = actix_web::test::TestRequest::default()
        .method(actix_web::http::Method::from_bytes(method.as_bytes()).unwrap())
        .uri("/whoami");
    for (k, v) in headers {
        req = req.append_header((*k, v.as_str()));
    }
    let res = actix_web::test::call_service(&app, req.to_request()).await;
    let status = res.status().as_u16();
    let body = actix_web::test::read_body(res).await;
    let actix = (
        status,
        serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)["subject"].clone(),
    );
    [axum, actix]
}

/// A cookie authenticates a request that may change state only when the
/// browser says this origin started it (`Sec-Fetch-Site`, else `Origin`
/// against `Host`, else `Referer`), or a trusted origin did; otherwise
/// the request is decided as though it carried no cookie, and refused with
/// 403 (not a 401 that reads "signed out") where the policy needs a user. A credential the request
/// carries itself (a header) is not affected, nor are `GET` and `HEAD`,
/// but for the `GET` that opens a WebSocket.
#[actix_web::test]
async fn a_cookie_does_not_authenticate_a_state_changing_request_another_origin_started() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let yaml = |trusted: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  jwtRules:\n  - issuer: {}\n    jwksUri: {}\n    audiences: [details]\n    fromCookies: [session]\n    fromHeaders: [{{name: x-jwt}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: require}}\nspec:\n  rules: [{{from: [{{source: {{requestPrincipals: [\"*\"]}}}}]}}]\n---\napiVersion: palisade.dev/v1alpha1\nkind: AuthorizationSettings\nmetadata: {{name: settings}}\nspec: {{trustedOrigins: [{trusted}]}}\n",
            issuer.issuer(),
            issuer.jwks_uri()
        )
    };
    let guard_of = |trusted: &str| {
        let set = PolicySet::from_yaml_str(&yaml(trusted), "t.yaml").unwrap();
        palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap()
    };
    let guard = guard_of("");
    let trusting = guard_of("'https://app.shop.example'");
    let token = issuer.token().subject("erin").sign();
    let cookie = ("cookie", format!("session={token}"));
    let host = ("host", "details.shop.example".to_owned());
    let with = |more: &[(&'static str, &str)]| {
        let mut h = vec![cookie.clone(), host.clone()];
        h.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
        h
    };
    let erin = Value::from("erin");
    let cases: Vec<(&str, Headers<'_>, u16)> = vec![
        ("POST", with(&[]), 200),
        ("POST", with(&[("sec-fetch-site", "same-origin")]), 200),
        ("POST", with(&[("sec-fetch-site", "none")]), 200),
        ("POST", with(&[("sec-fetch-site", "same-site")]), 403),
        ("DELETE", with(&[("sec-fetch-site", "cross-site")]), 403),
        ("POST", with(&[("origin", "https://evil.example")]), 403),
        ("POST", with(&[("origin", "null")]), 403),
        // Without `Sec-Fetch-Site` and `Origin`, the `Referer` says.
        ("POST", with(&[("referer", "https://evil.example/page")]), 403),
        (
            "POST",
            with(&[("referer", "https://details.shop.example/cart")]),
            200,
        ),
        ("POST", with(&[("origin", "https://details.shop.example")]), 200),
        // As Go reads them: an empty `Sec-Fetch-Site` is none (`Origin`
        // decides), a value other than `same-origin` and `none` another
        // origin's.
        (
            "POST",
            with(&[("sec-fetch-site", ""), ("origin", "https://evil.example")]),
            403,
        ),
        ("POST", with(&[("sec-fetch-site", "")]), 200),
        ("POST", with(&[("sec-fetch-site", "some-future-value")]), 403),
        ("GET", with(&[("sec-fetch-site", "cross-site")]), 200),
        // A WebSocket's opening GET: its socket carries what the page
        // that opened it sends (cross-site WebSocket hijacking).
        (
            "GET",
            with(&[
                ("connection", "Upgrade"),
                ("upgrade", "WebSocket"),
                ("origin", "https://evil.example"),
            ]),
            403,
        ),
        (
            "GET",
            with(&[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-fetch-site", "same-site"),
            ]),
            403,
        ),
        (
            "GET",
            with(&[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("origin", "https://details.shop.example"),
            ]),
            200,
        ),
        (
            "POST",
            vec![("x-jwt", token.clone()), ("sec-fetch-site", "cross-site".into())],
            200,
        ),
    ];
    for (method, headers, status) in &cases {
        let [a, b] = whoami_both(&guard, method, headers).await;
        assert_eq!(a, b, "{method} {headers:?}: the frameworks differ");
        assert_eq!(a.0, *status, "{method} {headers:?}");
        if *status == 200 {
            assert_eq!(a.1, erin, "{method} {headers:?}");
        }
    }
    // A trusted origin's requests use the cookie; another's still do not.
    let trusted = with(&[
        ("sec-fetch-site", "same-site"),
        ("origin", "https://app.shop.example"),
    ]);
    let [a, b] = whoami_both(&trusting, "POST", &trusted).await;
    assert_eq!((a.0, &a.1), (200, &erin));
    assert_eq!(a, b);
    let other = with(&[
        ("sec-fetch-site", "same-site"),
        ("origin", "https://blog.shop.example"),
    ]);
    assert_eq!(whoami_both(&trusting, "POST", &other).await[0].0, 403);
    // Set in code, with the default port written out (which browsers
    // leave out of `Origin`); and the file's, on a guard whose access
    // policy was compiled apart from the builder.
    let set = PolicySet::from_yaml_str(&yaml(""), "t.yaml").unwrap();
    let workload = Workload::new("details", "default");
    let in_code = palisade::guard_builder_from_policy(&set, &workload, &Default::default())
        .unwrap()
        .trusted_origin("https://APP.shop.example:443/")
        .build()
        .unwrap();
    assert_eq!(
        whoami_both(&in_code, "POST", &trusted).await[0],
        (200, erin.clone())
    );
    assert_eq!(whoami_both(&in_code, "POST", &other).await[0].0, 403);
    let set = PolicySet::from_yaml_str(&yaml("'https://app.shop.example'"), "t.yaml").unwrap();
    let compiled_apart = palisade::guard_builder_from_policy(&set, &workload, &Default::default())
        .unwrap()
        .access_policy(palisade::core::authz::AccessPolicy::compile(&set.for_workload(&workload)).unwrap())
        .build()
        .unwrap();
    assert_eq!(
        whoami_both(&compiled_apart, "POST", &trusted).await[0],
        (200, erin.clone())
    );
    // An origin that is not one is refused when the file loads.
    let e = PolicySet::from_yaml_str(&yaml("'https://app.shop.example/path'"), "t.yaml").unwrap_err();
    assert!(e.to_string().contains("spec.trustedOrigins[0]"), "{e}");
}

/// An HTTP/2 WebSocket's extended `CONNECT` (RFC 8441) is decided as the
/// HTTP/1.1 upgrade it stands for, as Envoy hands it to Istio's filters:
/// `GET`, `Upgrade: websocket`, `Connection: upgrade`. A rule on `GET`
/// holds over HTTP/2 (a DENY is not passed by), and so does the
/// cross-origin check of a cookie on a WebSocket's opening request.
#[tokio::test]
async fn an_http2_websocket_is_decided_as_the_get_that_opens_one_over_http1() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  jwtRules:\n  - issuer: {}\n    jwksUri: {}\n    audiences: [details]\n    fromCookies: [session]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-socket}}\nspec:\n  action: DENY\n  rules:\n  - to: [{{operation: {{methods: [GET], paths: [/ws]}}}}]\n  - to: [{{operation: {{paths: [/chat]}}}}]\n    when: [{{key: 'request.headers[upgrade]', values: [websocket]}}]\n  - to: [{{operation: {{paths: [/plain]}}}}]\n    when: [{{key: 'request.headers[connection]', values: [upgrade]}}]\n",
        issuer.issuer(),
        issuer.jwks_uri()
    );
    let set = PolicySet::from_yaml_str(&yaml, "t.yaml").unwrap();
    let guard = palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap();
    let app = axum::Router::new()
        // A header, not a body: a 2xx answer to `CONNECT` has none.
        .route(
            "/whoami",
            axum::routing::any(|id: Option<Identity>| async move {
                let subject = id.as_ref().and_then(Identity::subject).unwrap_or("nobody");
                [("x-subject", subject.to_owned())]
            }),
        )
        .fallback(|| async { "reached" })
        .layer(palisade::axum::PalisadeLayer::new(guard));
    let cookie = format!("session={}", issuer.token().subject("erin").sign());
    let call =
        |method: http::Method, path: &str, protocol: Option<&'static str>, headers: &[(&str, &str)]| {
            let mut req = http::Request::builder()
                .method(method)
                .version(http::Version::HTTP_2)
                .uri(format!("https://details.shop.example{path}"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let mut req = req.body(Body::empty()).unwrap();
            if let Some(p) = protocol {
                req.extensions_mut().insert(hyper::ext::Protocol::from_static(p));
            }
            let app = app.clone();
            async move {
                let res = app.oneshot(req).await.unwrap();
                let subject = res
                    .headers()
                    .get("x-subject")
                    .map(|v| v.to_str().unwrap().to_owned());
                (res.status().as_u16(), subject)
            }
        };
    let connect = http::Method::CONNECT;
    // The method and the upgrade's headers, as Envoy rewrites them.
    assert_eq!(call(connect.clone(), "/ws", Some("websocket"), &[]).await.0, 403);
    assert_eq!(call(http::Method::GET, "/ws", None, &[]).await.0, 403);
    assert_eq!(
        call(connect.clone(), "/chat", Some("websocket"), &[]).await.0,
        403
    );
    assert_eq!(
        call(connect.clone(), "/plain", Some("websocket"), &[]).await.0,
        403
    );
    // Not an upgrade: a `CONNECT` without a protocol, or with Envoy's
    // `bytestream`, is a `CONNECT`; another protocol is its own upgrade.
    assert_eq!(call(connect.clone(), "/ws", None, &[]).await.0, 200);
    assert_eq!(call(connect.clone(), "/ws", Some("bytestream"), &[]).await.0, 200);
    assert_eq!(
        call(connect.clone(), "/chat", Some("connect-udp"), &[]).await.0,
        200
    );
    assert_eq!(call(http::Method::GET, "/chat", None, &[]).await.0, 200);
    // A cookie opens another origin's socket no more over HTTP/2 than
    // over HTTP/1.1 (cross-site WebSocket hijacking)...
    let evil = [("cookie", cookie.as_str()), ("origin", "https://evil.example")];
    let answer = call(connect.clone(), "/whoami", Some("websocket"), &evil).await;
    assert_eq!(answer, (200, Some("nobody".to_owned())));
    // (whatever the protocol: it becomes a connection the page drives)
    let answer = call(connect.clone(), "/whoami", Some("connect-udp"), &evil).await;
    assert_eq!(answer, (200, Some("nobody".to_owned())));
    let h2c = [
        ("cookie", cookie.as_str()),
        ("origin", "https://evil.example"),
        ("upgrade", "h2c"),
    ];
    let answer = call(http::Method::GET, "/whoami", None, &h2c).await;
    assert_eq!(answer, (200, Some("nobody".to_owned())));
    // ...and opens this origin's.
    let same = [
        ("cookie", cookie.as_str()),
        ("origin", "https://details.shop.example"),
    ];
    let answer = call(connect, "/whoami", Some("websocket"), &same).await;
    assert_eq!(answer, (200, Some("erin".to_owned())));
}

/// The testkit's users stand in for an issuer: the request names its user,
/// the guard's policy and the handlers' extractors answer that user as in
/// production, on both frameworks.
#[tokio::test]
async fn test_users_stand_in_for_an_issuer_on_both_frameworks() {
    use palisade::core::authn::TestUsers;
    use palisade::core::authz::{AccessPolicy, Rule};
    let users = TestUsers::new()
        .with_realm_roles("alice", &["admin"])
        .with_claims(
            "bob",
            json!({"iss": "https://issuer.test", "sub": "b-1", "scope": "read"}),
        );
    let policy = AccessPolicy::builder()
        .allow(
            "readers",
            [Rule::new().request_principals(["https://issuer.test/*"])],
        )
        .build()
        .unwrap();
    let guard = palisade::prelude::Guard::builder()
        .authenticator(users)
        .access_policy(policy)
        .build()
        .unwrap();
    let named = |user: &str| vec![("authorization", format!("Test {user}"))];
    let cases: [(Headers<'_>, (u16, Value)); 4] = [
        (named("alice"), (200, json!("alice"))),
        (named("bob"), (200, json!("b-1"))),
        (named("mallory"), (401, Value::Null)),
        (vec![], (401, Value::Null)),
    ];
    for (headers, expected) in cases {
        let [a, b] = whoami_both(&guard, "GET", &headers).await;
        assert_eq!(a, expected, "{headers:?}");
        assert_eq!(a, b, "{headers:?}: the frameworks differ");
    }
}

/// A session whose every use renews its cookie, as a sign-in's refresh
/// does: `session=alice` is alice.
struct Renewing;

impl palisade::core::authn::Authenticator for Renewing {
    fn challenge(&self) -> Option<String> {
        Some("Session".into())
    }
    fn authenticate(
        &self,
        req: &dyn palisade::core::authn::RequestHead,
    ) -> palisade::core::Check<palisade::core::authn::AuthOutcome> {
        use palisade::core::authn::{AuthOutcome, Authenticated};
        use palisade::core::{TokenClaims, Verification};
        palisade::core::Check::Ready(match req.header_str("cookie") {
            Some("session=alice") => AuthOutcome::Authenticated(
                Authenticated::new(Identity::from_token(
                    {
                        let mut claims = TokenClaims::default();
                        claims.issuer = "https://idp.example".into();
                        claims.subject = "alice".into();
                        claims
                    },
                    Verification::assertion(),
                ))
                .with_response_header("set-cookie", "session=alice; renewed".to_owned())
                .with_response_header("cache-control", "private".to_owned()),
            ),
            _ => AuthOutcome::NoCredential,
        })
    }
}

/// The response headers Palisade sets that may carry a credential (a
/// session cookie, a challenge that may hold a Negotiate token, a
/// redirect's target) are marked sensitive, kept out of `Debug` output and
/// of HTTP/2's header index, on both frameworks: on an admission's edits,
/// on a refusal, and on a refusal that carries a renewal.
#[actix_web::test]
async fn headers_that_may_carry_a_credential_are_marked_sensitive_on_both_frameworks() {
    let allow_all = palisade::prelude::Guard::builder()
        .authenticator(Renewing)
        .access_policy(palisade::core::authz::AccessPolicy::allow_all())
        .build()
        .unwrap();
    let set = PolicySet::from_yaml_str(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no, namespace: default}\nspec: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}\n",
        "t.yaml",
    )
    .unwrap();
    let deny_admin = palisade::prelude::Guard::builder()
        .authenticator(Renewing)
        .access_policy(
            palisade::core::authz::AccessPolicy::compile(
                &set.for_workload(&Workload::new("details", "default")),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let required = palisade::prelude::Guard::builder()
        .authenticator(Renewing)
        .build()
        .unwrap();
    let alice = vec![("cookie", "session=alice".to_owned())];
    // (guard, path, request headers, status, the headers marked sensitive)
    let cases = [
        (&allow_all, "/whoami", alice.clone(), 200, "set-cookie"),
        (&deny_admin, "/admin", alice, 403, "set-cookie"),
        (&required, "/whoami", Vec::new(), 401, "www-authenticate"),
    ];
    for (guard, path, headers, status, sensitive) in cases {
        let axum = call_axum(guard, &headers, path).await;
        assert_eq!(
            (axum.status, axum.sensitive.clone()),
            (status, vec![sensitive.to_owned()]),
            "axum {path}"
        );
        let actix = call_actix(guard, &headers, path).await;
        assert_eq!(axum, actix, "{path}");
    }
}

/// A renewal's `Cache-Control: private` is merged into the application's
/// own directives on both frameworks: a `public` is dropped (a response
/// with a user's cookie must not be stored by a shared cache), the rest
/// kept, and a response that already says `no-store` keeps its own.
#[actix_web::test]
async fn a_renewal_makes_the_applications_cache_control_private_on_both_frameworks() {
    let guard = palisade::prelude::Guard::builder()
        .authenticator(Renewing)
        .access_policy(palisade::core::authz::AccessPolicy::allow_all())
        .build()
        .unwrap();
    // (path, the application's Cache-Control lines, what the client gets)
    let cases: [(&str, &[&str], &[&str]); 5] = [
        ("/public", &["public, max-age=600"], &["private, max-age=600"]),
        ("/split", &["Public", "max-age=5"], &["private, max-age=5"]),
        (
            "/fields",
            &["private=\"x-user\", s-maxage=60"],
            &["private, s-maxage=60"],
        ),
        ("/no-store", &["no-store, public"], &["no-store, public"]),
        ("/none", &[], &["private"]),
    ];
    let mut axum_app = axum::Router::new();
    let mut actix_app = App::new();
    for (path, lines, _) in cases {
        let lines: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        let theirs = lines.clone();
        axum_app = axum_app.route(
            path,
            get(move || {
                let lines = theirs.clone();
                async move {
                    let mut res = axum::response::Response::new(Body::from("ok"));
                    for l in lines {
                        res.headers_mut().append("cache-control", l.parse().unwrap());
                    }
                    res
                }
            }),
        );
        actix_app = actix_app.route(
            path,
            web::get().to(move || {
                let lines = lines.clone();
                async move {
                    let mut res = HttpResponse::Ok();
                    for l in lines {
                        res.append_header(("cache-control", l));
                    }
                    res.body("ok")
                }
            }),
        );
    }
    let axum_app = axum_app.layer(palisade::axum::PalisadeLayer::new(guard.clone()));
    let actix = actix_web::test::init_service(actix_app.wrap(palisade::actix::Palisade::new(guard))).await;
    for (path, _, want) in cases {
        let (req, areq) = both_requests("GET", path, &[("cookie", "session=alice".to_owned())]);
        let res = axum_app.clone().oneshot(req).await.unwrap();
        let ares = actix_web::test::call_service(&actix, areq.to_request()).await;
        let aheaders = http_headers(ares.headers());
        for (who, got, headers) in [
            ("axum", res.status().as_u16(), res.headers()),
            ("actix-web", ares.status().as_u16(), &aheaders),
        ] {
            assert_eq!(got, 200, "{who} {path}");
            let values: Vec<_> = headers
                .get_all("cache-control")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(values, want, "{who} {path}");
            assert_eq!(headers["set-cookie"], "session=alice; renewed", "{who} {path}");
        }
    }
}

/// An application middleware inside Palisade that answers `Err` (a
/// validator, a rate limiter): the response actix-web makes of the error
/// still carries Palisade's response edits (here the explain header; a
/// renewed session cookie or a Negotiate token the same way).
#[actix_web::test]
async fn an_inner_error_keeps_palisades_response_edits_on_actix() {
    use actix_web::dev::Service as _;
    let guard = palisade::prelude::Guard::builder()
        .allow_unauthenticated()
        .explain_decisions_in_header()
        .build()
        .unwrap();
    let app = actix_web::test::init_service(
        App::new()
            .route("/", web::get().to(|| async { HttpResponse::Ok().finish() }))
            .wrap_fn(|req, srv| {
                let refused = req.path() == "/";
                let answer = srv.call(req);
                async move {
                    if refused {
                        drop(answer);
                        return Err(actix_web::error::ErrorTooManyRequests("slow down"));
                    }
                    answer.await
                }
            })
            .wrap(palisade::actix::Palisade::new(guard)),
    )
    .await;
    // Still an `Err` to the middlewares outside; its response, as actix-web
    // sends it, carries the edits.
    let err = app
        .call(actix_web::test::TestRequest::get().uri("/").to_request())
        .await
        .map(drop)
        .unwrap_err();
    let res = err.error_response();
    assert_eq!(res.status().as_u16(), 429);
    assert!(
        res.headers().contains_key("x-palisade-authz"),
        "{:?}",
        res.headers()
    );
}

/// actix-web: a refused request whose body is left unread closes its
/// connection once answered, as hyper does (actix-http would read a
/// dropped chunked body to its end, past every limit); one without a body
/// keeps it.
#[actix_web::test]
async fn a_refused_body_is_not_read_on_actix() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let app = actix_web::test::init_service(
        App::new()
            .wrap(palisade::actix::Palisade::new(guard(&issuer)))
            .route(
                "/whoami",
                web::post().to(|| async { HttpResponse::Ok().finish() }),
            )
            .route("/whoami", web::get().to(|| async { HttpResponse::Ok().finish() })),
    )
    .await;
    let answer = |req: actix_web::test::TestRequest| {
        let app = &app;
        async move {
            let res = actix_web::test::call_service(app, req.uri("/whoami").to_request()).await;
            (res.status().as_u16(), res.response().head().connection_type())
        }
    };
    let close = actix_web::http::ConnectionType::Close;
    for req in [
        actix_web::test::TestRequest::post().insert_header(("transfer-encoding", "chunked")),
        actix_web::test::TestRequest::post().set_payload("a body not read"),
    ] {
        let (status, connection) = answer(req).await;
        assert_eq!((status, connection), (401, close));
    }
    let (status, connection) = answer(actix_web::test::TestRequest::get()).await;
    assert_eq!(status, 401);
    assert_ne!(connection, close, "no body: the connection is kept");
}

/// Where the guard lets anyone in and a route policy or a handler asks for
/// a user, a cross-origin write whose cookie the guard set aside is
/// refused as the guard would refuse it: 403, problem type `cross-origin`,
/// not the 401 a page's script reads as "signed out"; the same write from
/// this origin is the user's. Both frameworks alike.
#[actix_web::test]
async fn a_route_policy_or_handler_refuses_a_cross_origin_write_whose_cookie_was_set_aside_with_403() {
    use palisade::core::authz::authenticated;
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  jwtRules:\n  - issuer: {}\n    jwksUri: {}\n    audiences: [details]\n    fromCookies: [session]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: open}}\nspec:\n  rules: [{{}}]\n",
        issuer.issuer(),
        issuer.jwks_uri()
    );
    let set = PolicySet::from_yaml_str(&yaml, "t.yaml").unwrap();
    let guard = palisade::guard_from_policy(&set, &Workload::new("details", "default")).unwrap();
    let router = axum::Router::new()
        .route(
            "/required",
            post(|| async { "served" }).route_layer(palisade::axum::require(authenticated())),
        )
        .route("/identity", post(|_: Identity| async { "served" }))
        .layer(palisade::axum::PalisadeLayer::new(guard.clone()));
    let app = actix_web::test::init_service(
        App::new()
            .wrap(palisade::actix::Palisade::new(guard.clone()))
            .service(
                web::resource("/required")
                    .wrap(palisade::actix::Require::new(authenticated()))
                    .route(web::post().to(|| async { "served" })),
            )
            .route("/identity", web::post().to(|_: Identity| async { "served" })),
    )
    .await;
    let token = issuer.token().subject("erin").sign();
    for path in ["/required", "/identity"] {
        for (origin, status) in [
            ("https://evil.example", 403),
            ("https://details.shop.example", 200),
        ] {
            let headers = [
                ("cookie", format!("session={token}")),
                ("host", "details.shop.example".to_owned()),
                ("origin", origin.to_owned()),
            ];
            let mut req = http::Request::post(path);
            for (k, v) in &headers {
                req = req.header(*k, v.as_str());
            }
            let res = router
                .clone()
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let axum_status = res.status().as_u16();
            let axum_body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
            let mut req = actix_web::test::TestRequest::post().uri(path);
            for (k, v) in &headers {
                req = req.append_header((*k, v.as_str()));
            }
            let res = actix_web::test::call_service(&app, req.to_request()).await;
            let actix_status = res.status().as_u16();
            let actix_body = actix_web::test::read_body(res).await;
            assert_eq!(
                (axum_status, actix_status),
                (status, status),
                "{path} from {origin}"
            );
            assert_eq!(
                axum_body, actix_body,
                "{path} from {origin}: the frameworks differ"
            );
            if status == 403 {
                let body = String::from_utf8_lossy(&axum_body);
                assert!(
                    body.contains("urn:palisade:problem:cross-origin"),
                    "{path}: {body}"
                );
            }
        }
    }
}

/// A route no Palisade middleware guards (a wiring mistake) answers 500
/// where a handler or a route policy asks what the guard decided, on both
/// frameworks alike: refused rather than served unchecked, and not a 401
/// without a challenge, which would send a client looking for a
/// credential. `Option<Identity>` is `None`.
#[actix_web::test]
async fn a_route_no_middleware_guards_answers_500_where_it_asks_for_the_caller() {
    use palisade::core::RequestAuth;
    use palisade::core::authz::realm_role;
    let router = axum::Router::new()
        .route("/identity", get(|_: Identity| async { "served" }))
        .route("/auth", get(|_: RequestAuth| async { "served" }))
        .route("/optional", get(whoami_axum))
        .route(
            "/required",
            get(|| async { "served" }).route_layer(palisade::axum::require(realm_role("admin"))),
        );
    let app = actix_web::test::init_service(
        App::new()
            .route("/identity", web::get().to(|_: Identity| async { "served" }))
            .route("/auth", web::get().to(|_: RequestAuth| async { "served" }))
            .route(
                "/optional",
                web::get().to(|id: Option<Identity>| async move {
                    HttpResponse::Ok().json(palisade::core::whoami(id.as_ref()))
                }),
            )
            .service(
                web::resource("/required")
                    .wrap(palisade::actix::Require::new(realm_role("admin")))
                    .route(web::get().to(|| async { "served" })),
            ),
    )
    .await;
    for (path, status) in [
        ("/identity", 500),
        ("/auth", 500),
        ("/required", 500),
        ("/optional", 200),
    ] {
        let res = router
            .clone()
            .oneshot(http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let axum_status = res.status().as_u16();
        let axum_challenge = res.headers().get("www-authenticate").is_some();
        let axum_body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let res =
            actix_web::test::call_service(&app, actix_web::test::TestRequest::get().uri(path).to_request())
                .await;
        let actix_status = res.status().as_u16();
        let actix_challenge = res.headers().get("www-authenticate").is_some();
        let actix_body = actix_web::test::read_body(res).await;
        assert_eq!((axum_status, actix_status), (status, status), "{path}");
        assert!(!axum_challenge && !actix_challenge, "{path}");
        assert_eq!(axum_body, actix_body, "{path}: the frameworks differ");
        let body = String::from_utf8_lossy(&axum_body);
        if status == 500 {
            assert!(body.contains("urn:palisade:problem:unguarded"), "{path}: {body}");
        } else {
            assert!(body.contains("\"authenticated\":false"), "{path}: {body}");
        }
    }
}

/// A body limit's answer as both frameworks give it: status, gRPC status
/// and the cookies the application set.
#[derive(Debug, PartialEq)]
struct LimitAnswer {
    status: u16,
    grpc_status: Option<String>,
    /// The gRPC message a client shows (the same generic one for every
    /// 413: the problem's detail is not sent to gRPC).
    grpc_message: Option<String>,
    cookie: Option<String>,
    /// Whether the connection is closed once this is sent, so that the
    /// rest of a body is not read (`None`: not compared, for an answer
    /// axum leaves to hyper, which closes a connection whose request body
    /// was left unread, where actix-web says it).
    closes: Option<bool>,
}

impl LimitAnswer {
    /// An answer as a framework gave it: its status, its headers by name,
    /// and whether it closes the connection (compared where `expected`
    /// compares it).
    fn read(status: u16, header: impl Fn(&str) -> Option<String>, closes: bool, expected: &Self) -> Self {
        LimitAnswer {
            status,
            grpc_status: header("grpc-status"),
            grpc_message: header("grpc-message"),
            cookie: header("set-cookie"),
            closes: expected.closes.and(Some(closes)),
        }
    }
}

/// What a body limit of 100 bytes answers in place of the application's,
/// decided once in the core: the same on both frameworks, for HTTP and
/// gRPC calls, whether the application read the stream itself (and
/// answered 500 on its error), used its framework's extractor (413), or
/// refused the body by a lower limit of its own (413).
#[actix_web::test]
async fn a_body_limits_answer_is_the_same_on_both_frameworks() {
    use axum::routing::any;
    use http_body_util::BodyExt as _;
    use palisade::core::limits::ServerLimits;

    let limits = ServerLimits::default().body_limit(100);
    const COOKIE: &str = "session=renewed";
    let axum_app = tower::Layer::layer(
        &palisade::axum::BodyLimitLayer::new(limits),
        axum::Router::new()
            .route(
                "/reads",
                any(|body: Body| async move {
                    let status = match body.collect().await {
                        Ok(_) => http::StatusCode::OK,
                        Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    (status, [("set-cookie", COOKIE)])
                }),
            )
            .route(
                "/extracts",
                any(|body: axum::body::Bytes| async move { body.len().to_string() }),
            )
            .route(
                "/refuses",
                any(|| async { (http::StatusCode::PAYLOAD_TOO_LARGE, [("set-cookie", COOKIE)]) }),
            ),
    );
    let actix_app = actix_web::test::init_service(
        App::new()
            .route(
                "/reads",
                web::post().to(|body: web::Payload| async move {
                    match body.to_bytes().await {
                        Ok(_) => HttpResponse::Ok(),
                        Err(_) => HttpResponse::InternalServerError(),
                    }
                    .insert_header(("set-cookie", COOKIE))
                    .finish()
                }),
            )
            .route(
                "/extracts",
                web::post().to(|body: web::Bytes| async move { body.len().to_string() }),
            )
            .route(
                "/refuses",
                web::post().to(|| async {
                    HttpResponse::PayloadTooLarge()
                        .insert_header(("set-cookie", COOKIE))
                        .finish()
                }),
            )
            .wrap(palisade::actix::BodyLimit::new(limits)),
    )
    .await;
    let grpc = |code: &str| LimitAnswer {
        status: 200,
        grpc_status: Some(code.to_owned()),
        grpc_message: Some("refused with HTTP status 413".to_owned()),
        cookie: Some(COOKIE.to_owned()),
        closes: Some(true),
    };
    let http = |status, cookie: bool, closes| LimitAnswer {
        status,
        grpc_status: None,
        grpc_message: None,
        cookie: cookie.then(|| COOKIE.to_owned()),
        closes,
    };
    // (path, content type, bytes sent without a declared length, answer)
    let cases = [
        // Over the limit, the stream's error answered 500: 413 instead,
        // with the renewal's cookie.
        ("/reads", "text/plain", 101, http(413, true, Some(true))),
        ("/reads", "text/plain", 100, http(200, true, Some(false))),
        // Over the limit, the extractor's own 413: sent as it is.
        ("/extracts", "text/plain", 101, http(413, false, None)),
        ("/extracts", "text/plain", 100, http(200, false, Some(false))),
        // The application's own lower limit: its 413.
        ("/refuses", "text/plain", 50, http(413, true, Some(false))),
        // A gRPC call: RESOURCE_EXHAUSTED, whatever became of the error,
        // and for the application's 413 too (a 413 reaches a gRPC client
        // as UNKNOWN), the connection not kept for the rest of the body.
        ("/reads", "application/grpc", 101, grpc("8")),
        (
            "/extracts",
            "application/grpc",
            101,
            LimitAnswer {
                cookie: None,
                ..grpc("8")
            },
        ),
        ("/refuses", "application/grpc", 50, grpc("8")),
        ("/reads", "application/grpc-web", 101, grpc("8")),
    ];
    for (path, content_type, size, expected) in cases {
        let req = http::Request::post(path)
            .header("content-type", content_type)
            // No declared length: the limit is met as the body is read.
            .body(Body::from(vec![b'a'; size]))
            .unwrap();
        let res = axum_app.clone().oneshot(req).await.unwrap();
        let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        let closes = header("connection").is_some_and(|v| v.contains("close"));
        let on_axum = LimitAnswer::read(res.status().as_u16(), header, closes, &expected);
        let mut req = actix_web::test::TestRequest::post()
            .uri(path)
            .insert_header(("content-type", content_type))
            .set_payload(vec![b'a'; size])
            .to_request();
        req.headers_mut().remove("content-length");
        let res = actix_web::test::call_service(&actix_app, req).await;
        let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        let closes = res.response().head().connection_type() == actix_web::http::ConnectionType::Close;
        let on_actix = LimitAnswer::read(res.status().as_u16(), header, closes, &expected);
        assert_eq!(on_axum, expected, "axum: {path} {content_type} {size}");
        assert_eq!(on_actix, expected, "actix-web: {path} {content_type} {size}");
    }
}

/// A test that calls an axum router in process stands for a connection
/// with `ConnectInfo(ConnectAddrs::new(..))`: rules on the caller's
/// address and the local port see it, as under `axum::serve`.
#[tokio::test]
async fn an_in_process_axum_call_stands_for_a_connection_with_connect_addrs() {
    use palisade::axum::ConnectAddrs;
    use palisade::core::authz::AccessPolicy;
    let set = PolicySet::from_yaml_str(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: inside, namespace: default}
spec:
  rules:
  - from: [{source: {ipBlocks: [10.0.0.0/8]}}]
    to: [{operation: {ports: ['8080']}}]
",
        "policy.yaml",
    )
    .unwrap();
    let access = AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default"))).unwrap();
    let guard = palisade::prelude::Guard::builder()
        .access_policy(access)
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/", get(|| async { "in" }))
        .layer(palisade::prelude::PalisadeLayer::new(guard));
    let status = |remote: &str, local: &str| {
        let mut req = http::Request::get("/").body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(ConnectAddrs::new(
                remote.parse().unwrap(),
                Some(local.parse().unwrap()),
            )));
        let app = app.clone();
        async move { app.oneshot(req).await.unwrap().status().as_u16() }
    };
    assert_eq!(status("10.1.2.3:40000", "10.9.9.9:8080").await, 200);
    assert_eq!(status("192.168.1.1:40000", "10.9.9.9:8080").await, 403);
    assert_eq!(status("10.1.2.3:40000", "10.9.9.9:9090").await, 403);
}
