//! The Istio conformance table (`tests/authz/istio_conformance.yaml`: each
//! example of Istio's AuthorizationPolicy reference and tasks, the requests
//! it is about, the decision Istio makes), run through the framework-free
//! guard, axum (tower) and actix-web, with real tokens from the testkit
//! issuer. All three must give the expected decision and the same status.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use actix_web::{App, HttpResponse, web};
use axum::body::Body;
use palisade::core::adapter::Decision;
use palisade::core::authn::{
    AuthOutcome, Authenticated, Authenticator, ConnectionInfo, OwnedRequest, RequestHead,
};
use palisade::core::authz::{
    AccessDecision, AccessPolicy, CheckRequest, ExternalAuthorizers, ExternalDecision,
};
use palisade::core::policy::{PolicySet, Spec, Workload};
use palisade::core::{Check, Guard, Identity};
use palisade::core::{PeerIdentity, Verification};
use palisade::jwt::{JwtAuthenticator, Provider};
use palisade::testkit::TestIssuer;
use serde::Deserialize;
use serde_json::Value;
use tower::ServiceExt;
use tower_layer::Layer;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(rename = "doc")]
    _doc: Option<String>,
    workload: Option<WorkloadSpec>,
    #[serde(default)]
    trusted_proxies: usize,
    policy: String,
    requests: Vec<Req>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadSpec {
    service: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Req {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    jwt: Option<Jwt>,
    peer: Option<String>,
    source_ip: Option<IpAddr>,
    forwarded_for: Option<String>,
    port: Option<u16>,
    sni: Option<String>,
    expect: String,
    why: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Jwt {
    iss: String,
    sub: String,
    #[serde(default)]
    aud: Vec<String>,
    azp: Option<String>,
    #[serde(default)]
    claims: serde_json::Map<String, Value>,
}

/// The mTLS peer of a request, as a test stand-in for the TLS acceptor:
/// it turns the `x-test-peer` header into a verified peer identity, so the
/// engine sees the peer exactly as it will see one from a client
/// certificate (`source.principal`, `source.namespace`).
struct TestPeer;

impl Authenticator for TestPeer {
    fn challenge(&self) -> Option<String> {
        None
    }

    fn authenticate(&self, req: &dyn RequestHead) -> Check<AuthOutcome> {
        let Some(principal) = req.header_str("x-test-peer") else {
            return Check::Ready(AuthOutcome::NoCredential);
        };
        let mut peer = PeerIdentity::default();
        peer.principal = Some(principal.to_owned());
        peer.spiffe_id = Some(format!("spiffe://{principal}"));
        peer.namespace = principal
            .split("/ns/")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .map(str::to_owned);
        Check::Ready(AuthOutcome::Authenticated(Authenticated::new(
            Identity::from_peer(peer, Verification::assertion()),
        )))
    }
}

fn table() -> Vec<Case> {
    let text = include_str!("authz/istio_conformance.yaml");
    serde_saphyr::from_str(text).expect("the conformance table parses")
}

struct Setup {
    guard: Guard,
    tokens: Vec<Option<String>>,
    dry_run: bool,
}

fn setup(case: &Case, issuer: &TestIssuer) -> Setup {
    let ws = case.workload.as_ref();
    let service = ws
        .and_then(|w| w.service.clone())
        .unwrap_or_else(|| "httpbin".into());
    let namespace = ws
        .and_then(|w| w.namespace.clone())
        .unwrap_or_else(|| "foo".into());
    let mut workload = Workload::new(&service, &namespace);
    for (k, v) in ws.map(|w| w.labels.clone()).unwrap_or_default() {
        workload = workload.label(&k, &v);
    }
    let mut yaml = case.policy.clone();
    if case.trusted_proxies > 0 {
        yaml.push_str(&format!(
            "\n---\napiVersion: palisade.dev/v1alpha1\nkind: AuthorizationSettings\nmetadata: {{name: topology, namespace: {namespace}}}\nspec: {{numTrustedProxies: {}}}\n",
            case.trusted_proxies
        ));
    }
    let set = PolicySet::from_yaml_str(&yaml, &case.name).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut authorizers = ExternalAuthorizers::new();
    for d in set.documents() {
        if let Spec::AuthorizationPolicy(p) = &d.spec
            && let Some(provider) = &p.provider
        {
            // Istio's sample ext-authz server: allow iff `x-ext-authz: allow`.
            authorizers =
                authorizers.register(&provider.name, ["x-ext-authz"], |c: CheckRequest| async move {
                    if c.request.header_str("x-ext-authz") == Some("allow") {
                        ExternalDecision::Allow
                    } else {
                        ExternalDecision::Deny
                    }
                });
        }
    }
    let access = AccessPolicy::compile_with(&set.for_workload(&workload), &authorizers)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut jwt = JwtAuthenticator::builder().realm(service.clone());
    let mut issuers: Vec<&str> = case
        .requests
        .iter()
        .filter_map(|r| r.jwt.as_ref())
        .map(|j| j.iss.as_str())
        .collect();
    issuers.sort_unstable();
    issuers.dedup();
    let jwks = issuer.jwks().to_string();
    for iss in &issuers {
        let provider = Provider::builder(*iss)
            .jwks_inline(jwks.clone())
            .dangerous()
            .accept_any_audience()
            .build()
            .unwrap();
        jwt = jwt.provider(provider);
    }
    let mut builder = Guard::builder().authenticator(TestPeer).access_policy(access);
    if !issuers.is_empty() {
        builder = builder.authenticator(jwt.build().unwrap());
    }
    let tokens = case
        .requests
        .iter()
        .map(|r| {
            r.jwt.as_ref().map(|j| {
                let mut t = issuer.token().issuer(&j.iss).subject(&j.sub);
                if !j.aud.is_empty() {
                    t = t.claim("aud", Value::from(j.aud.clone()));
                }
                if let Some(azp) = &j.azp {
                    t = t.claim("azp", Value::from(azp.clone()));
                }
                for (k, v) in &j.claims {
                    t = t.claim(k, v.clone());
                }
                t.sign()
            })
        })
        .collect();
    Setup {
        guard: builder.build().unwrap(),
        tokens,
        dry_run: case.policy.contains("istio.io/dry-run: \"true\"")
            || case.policy.contains("istio.io/dry-run: 'true'"),
    }
}

fn headers(r: &Req, token: Option<&String>) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if let Some(host) = &r.host {
        h.push(("host".into(), host.clone()));
    }
    if let Some(t) = token {
        h.push(("authorization".into(), format!("Bearer {t}")));
    }
    if let Some(p) = &r.peer {
        h.push(("x-test-peer".into(), p.clone()));
    }
    if let Some(x) = &r.forwarded_for {
        h.push(("x-forwarded-for".into(), x.clone()));
    }
    h
}

fn connection(r: &Req) -> ConnectionInfo {
    let mut c = ConnectionInfo::default();
    c.remote_addr = Some(SocketAddr::new(
        r.source_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        40000,
    ));
    c.local_addr = Some(SocketAddr::new(
        IpAddr::from([127, 0, 0, 1]),
        r.port.unwrap_or(80),
    ));
    c.sni = r.sni.clone();
    c
}

async fn core_status(guard: &Guard, r: &Req, token: Option<&String>) -> (u16, AccessDecision) {
    let mut req = OwnedRequest::new(
        r.method.as_deref().unwrap_or("GET"),
        r.path.as_deref().unwrap_or("/"),
    );
    for (k, v) in headers(r, token) {
        req = req.header(&k, v);
    }
    let req = req.connection(connection(r));
    match guard.check(&req).await {
        Decision::Allow(a) => (200, a.auth().access().clone()),
        Decision::Deny(r) => (
            r.status(),
            r.access().cloned().expect("a policy denial carries its decision"),
        ),
        // A refusal rendered for HEAD or gRPC keeps its rejection, and
        // the rejection its status (a gRPC answer's HTTP status is 200).
        Decision::Reply(reply) => {
            let r = reply
                .rejection()
                .expect("no authenticator here answers itself: a reply is a rendered refusal");
            (
                r.status(),
                r.access().cloned().expect("a policy denial carries its decision"),
            )
        }
        other => panic!("a decision this runner does not know: {other:?}"),
    }
}

async fn axum_status(guard: &Guard, r: &Req, token: Option<&String>) -> (u16, Option<AccessDecision>) {
    // An allowed request's decision is in its `RequestAuth`; the handler
    // hands it out the way a refusal carries its own.
    let router = axum::Router::new().fallback(
        |axum::Extension(auth): axum::Extension<palisade::core::RequestAuth>| async move {
            let mut res = axum::response::IntoResponse::into_response("ok");
            res.extensions_mut().insert(auth.access().clone());
            res
        },
    );
    let app = palisade::axum::PalisadeLayer::new(guard.clone()).layer(router);
    let mut req = http::Request::builder()
        .method(r.method.as_deref().unwrap_or("GET"))
        .uri(r.path.as_deref().unwrap_or("/"));
    for (k, v) in headers(r, token) {
        req = req.header(k, v);
    }
    let mut req = req.body(Body::empty()).unwrap();
    req.extensions_mut().insert(connection(r));
    let res = app.oneshot(req).await.unwrap();
    (
        res.status().as_u16(),
        res.extensions().get::<AccessDecision>().cloned(),
    )
}

async fn actix_status(guard: &Guard, r: &Req, token: Option<&String>) -> u16 {
    let app = actix_web::test::init_service(
        App::new()
            .wrap(palisade::actix::Palisade::new(guard.clone()))
            .default_service(web::to(HttpResponse::Ok)),
    )
    .await;
    let method =
        actix_web::http::Method::from_bytes(r.method.as_deref().unwrap_or("GET").as_bytes()).unwrap();
    let mut req = actix_web::test::TestRequest::default()
        .method(method)
        .uri(r.path.as_deref().unwrap_or("/"))
        .peer_addr(connection(r).remote_addr.unwrap());
    for (k, v) in headers(r, token) {
        req = req.insert_header((k, v));
    }
    actix_web::test::call_service(&app, req.to_request())
        .await
        .status()
        .as_u16()
}

#[actix_web::test]
async fn istio_conformance_table_through_core_axum_and_actix() {
    let issuer = TestIssuer::builder().default_audience("httpbin").start().unwrap();
    let cases = table();
    assert!(cases.len() >= 40, "the table has {} cases", cases.len());
    let (mut total, mut actix_runs) = (0, 0);
    let mut failures = Vec::new();
    for case in &cases {
        let s = setup(case, &issuer);
        for (i, (r, token)) in case.requests.iter().zip(&s.tokens).enumerate() {
            total += 1;
            let want_allow = match r.expect.as_str() {
                "allow" => true,
                "deny" => false,
                other => panic!("{}: expect `{other}`", case.name),
            };
            let (core, decision) = core_status(&s.guard, r, token.as_ref()).await;
            let (axum, ext) = axum_status(&s.guard, r, token.as_ref()).await;
            let label = format!(
                "{} request {i} ({} {})",
                case.name,
                r.method.as_deref().unwrap_or("GET"),
                r.path.as_deref().unwrap_or("/")
            );
            let ok_status = |st: u16| {
                if want_allow {
                    st == 200
                } else if r.jwt.is_some() {
                    st == 403
                } else {
                    // 401 exactly when a credential could change the answer.
                    st == if decision.end_user_could_help()
                        && decision.action() != Some(palisade::core::authz::Action::Custom)
                    {
                        401
                    } else {
                        403
                    }
                }
            };
            if !ok_status(core) {
                failures.push(format!(
                    "{label}: core answered {core} ({decision}), expected {}: {}",
                    r.expect,
                    r.why.as_deref().unwrap_or("")
                ));
                continue;
            }
            if axum != core {
                failures.push(format!("{label}: axum answered {axum}, core {core}"));
            }
            let Some(ext) = ext else {
                failures.push(format!(
                    "{label}: no AccessDecision in the axum response extensions"
                ));
                continue;
            };
            if s.dry_run && ext.dry_run().is_none() {
                failures.push(format!(
                    "{label}: a dry-run policy applies but the decision has no dry-run report"
                ));
            }
            // TestRequest cannot set the local port or SNI of a connection;
            // those requests run through the core and axum only.
            if r.port.is_none() && r.sni.is_none() {
                actix_runs += 1;
                let actix = actix_status(&s.guard, r, token.as_ref()).await;
                if actix != core {
                    failures.push(format!("{label}: actix-web answered {actix}, core {core}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("{total} requests through core and axum, {actix_runs} of them through actix-web too");
    assert!(
        actix_runs * 10 >= total * 8,
        "actix-web ran only {actix_runs} of {total}"
    );
}

// Route-level requirements, extractors, path normalisation reaching the
// router, and the explain switch: one table through both frameworks.

use palisade::core::Authorized;
use palisade::core::authz::{Requirement, Requires, client_role, realm_role};

struct Admins;

impl Requires for Admins {
    fn requirement() -> Requirement {
        realm_role("admin")
    }
}

const ROUTES_POLICY: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-secret, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/secret, /secret/*]}}]}]
";

fn routes_guard(issuer: &TestIssuer, explain: bool) -> Guard {
    let set = PolicySet::from_yaml_str(ROUTES_POLICY, "routes.yaml").unwrap();
    let access = AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default"))).unwrap();
    let jwt = JwtAuthenticator::builder()
        .realm("details")
        .provider(
            Provider::builder(issuer.issuer())
                .audience("details")
                .jwks_inline(issuer.jwks().to_string())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let b = Guard::builder().authenticator(jwt).access_policy(access);
    let b = if explain {
        b.explain_decisions_in_header()
    } else {
        b
    };
    b.build().unwrap()
}

async fn echo_path_axum(uri: http::Uri) -> String {
    uri.to_string()
}

fn axum_app(guard: &Guard) -> palisade::axum::Palisade<axum::Router> {
    use axum::routing::{get, post};
    let admin = axum::Router::new()
        .route("/admin", post(|| async { "admin" }))
        .route_layer(palisade::axum::require(
            realm_role("admin").or(client_role("reviews", "editor")),
        ));
    let router = axum::Router::new()
        .route("/public/{*rest}", get(echo_path_axum))
        .route("/secret", get(|| async { "secret" }))
        .route("/list", get(echo_path_axum))
        .route(
            "/admins-only",
            get(|Authorized(id, _): Authorized<Admins>| async move { id.subject().unwrap_or("").to_owned() }),
        )
        .merge(admin);
    palisade::axum::PalisadeLayer::new(guard.clone()).layer(router)
}

async fn call_axum<S, B>(
    app: S,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> (u16, Option<String>, String)
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = std::convert::Infallible>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let mut req = http::Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let explain = res
        .headers()
        .get("x-palisade-authz")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(Body::new(res.into_body()), 1 << 20)
        .await
        .unwrap();
    (status, explain, String::from_utf8_lossy(&body).into_owned())
}

async fn call_actix(
    guard: &Guard,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> (u16, Option<String>, String) {
    use palisade::actix::Require;
    let app = actix_web::test::init_service(
        App::new()
            .wrap(palisade::actix::Palisade::new(guard.clone()))
            .route(
                "/public/{rest:.*}",
                web::get().to(|req: actix_web::HttpRequest| async move { req.uri().to_string() }),
            )
            .route("/secret", web::get().to(|| async { "secret" }))
            .route(
                "/list",
                web::get().to(|req: actix_web::HttpRequest| async move { req.uri().to_string() }),
            )
            .route(
                "/admins-only",
                web::get().to(|Authorized(id, _): Authorized<Admins>| async move {
                    id.subject().unwrap_or("").to_owned()
                }),
            )
            .service(
                web::resource("/admin")
                    .wrap(Require::new(
                        realm_role("admin").or(client_role("reviews", "editor")),
                    ))
                    .route(web::post().to(|| async { "admin" })),
            ),
    )
    .await;
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = actix_web::test::TestRequest::default().method(method).uri(uri);
    if let Some(t) = token {
        req = req.insert_header(("authorization", format!("Bearer {t}")));
    }
    let res = actix_web::test::call_service(&app, req.to_request()).await;
    let status = res.status().as_u16();
    let explain = res
        .headers()
        .get("x-palisade-authz")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = actix_web::test::read_body(res).await;
    (status, explain, String::from_utf8_lossy(&body).into_owned())
}

#[actix_web::test]
async fn requirements_extractors_and_normalised_paths_behave_alike_in_both_frameworks() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let guard = routes_guard(&issuer, false);
    let admin = issuer.token().subject("ada").realm_roles(&["admin"]).sign();
    let editor = issuer
        .token()
        .subject("ed")
        .client_roles("reviews", &["editor"])
        .sign();
    let plain = issuer.token().subject("bob").realm_roles(&["user"]).sign();
    let table: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        // Path normalisation: the DENY rule cannot be dodged, and the router
        // routes the path the policy matched.
        ("GET", "/secret", Some(&plain), 403, ""),
        ("GET", "//secret", Some(&plain), 403, ""),
        ("GET", "/%73ecret", Some(&plain), 403, ""),
        ("GET", "/public/../secret", Some(&plain), 403, ""),
        ("GET", "/public/%2e%2e/secret", Some(&plain), 403, ""),
        ("GET", "/public/../list?x=1", Some(&plain), 200, "/list?x=1"),
        ("GET", "/public/a//b/./c", Some(&plain), 200, "/public/a/b/c"),
        ("GET", "/public/a%zz", Some(&plain), 400, ""),
        // Route-level requirement: 401 without a token, 403 short of the role.
        ("POST", "/admin", None, 401, ""),
        ("POST", "/admin", Some(&plain), 403, ""),
        ("POST", "/admin", Some(&admin), 200, "admin"),
        ("POST", "/admin", Some(&editor), 200, "admin"),
        // Extractor with a requirement.
        ("GET", "/admins-only", None, 401, ""),
        ("GET", "/admins-only", Some(&plain), 403, ""),
        ("GET", "/admins-only", Some(&admin), 200, "ada"),
    ];
    for (method, uri, token, status, body) in table {
        let a = call_axum(axum_app(&guard), method, uri, token).await;
        let b = call_actix(&guard, method, uri, token).await;
        assert_eq!(a.0, status, "axum {method} {uri}: {}", a.2);
        assert_eq!(b.0, status, "actix-web {method} {uri}: {}", b.2);
        if status == 200 {
            assert_eq!(a.2, body, "axum {method} {uri}");
            assert_eq!(b.2, body, "actix-web {method} {uri}");
        } else {
            assert_eq!(a.2, b.2, "same problem body for {method} {uri}");
            assert!(!a.2.contains("admin\""), "no claims echoed");
        }
        assert_eq!((a.1, b.1), (None, None), "no explain header unless switched on");
    }
}

/// Inside a router nested at a templated path, the full path cannot be
/// known: a route policy that reads no path (a role) decides as anywhere,
/// one that reads paths refuses with 400 rather than guess.
#[tokio::test]
async fn a_route_role_check_inside_a_templated_nest_decides() {
    use palisade::core::authz::Rule;
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let guard = routes_guard(&issuer, false);
    let admin = issuer.token().subject("ada").realm_roles(&["admin"]).sign();
    let plain = issuer.token().subject("bob").realm_roles(&["user"]).sign();
    let by_path = AccessPolicy::builder()
        .allow("paths", [Rule::new().paths(["/t/*"])])
        .build()
        .unwrap();
    let tenant = axum::Router::new()
        .route(
            "/admin",
            axum::routing::post(|| async { "admin" })
                .route_layer(palisade::axum::require(realm_role("admin"))),
        )
        .route(
            "/by-path",
            axum::routing::get(|| async { "path" }).route_layer(palisade::axum::require(by_path)),
        );
    let app = palisade::axum::PalisadeLayer::new(guard.clone())
        .layer(axum::Router::new().nest("/t/{tenant}", tenant));
    assert_eq!(
        call_axum(app.clone(), "POST", "/t/acme/admin", Some(&admin))
            .await
            .0,
        200
    );
    assert_eq!(
        call_axum(app.clone(), "POST", "/t/acme/admin", Some(&plain))
            .await
            .0,
        403
    );
    assert_eq!(call_axum(app.clone(), "POST", "/t/acme/admin", None).await.0, 401);
    assert_eq!(
        call_axum(app, "GET", "/t/acme/by-path", Some(&plain)).await.0,
        400
    );
}

/// A route policy on hosts, behind a guard whose policy reads none: a
/// request whose target names another host than its `Host` is refused
/// with 400 by the route, in both frameworks, whichever host is allowed.
#[actix_web::test]
async fn a_route_policy_on_hosts_refuses_an_ambiguous_host_in_both_frameworks() {
    use palisade::core::authz::Rule;
    let guard = Guard::builder()
        .access_policy(AccessPolicy::allow_all())
        .build()
        .unwrap();
    let shop = || {
        AccessPolicy::builder()
            .allow("shop", [Rule::new().hosts(["shop.example"])])
            .build()
            .unwrap()
    };
    let axum_app = palisade::axum::PalisadeLayer::new(guard.clone()).layer(
        axum::Router::new()
            .route("/p", axum::routing::get(|| async { "ok" }))
            .route_layer(palisade::axum::require(shop())),
    );
    let actix_app = actix_web::test::init_service(
        App::new()
            .wrap(palisade::actix::Palisade::new(guard.clone()))
            .service(
                web::resource("/p")
                    .wrap(palisade::actix::Require::new(shop()))
                    .route(web::get().to(|| async { "ok" })),
            ),
    )
    .await;
    for (target, host, status) in [
        ("/p", "shop.example", 200),
        ("/p", "admin.example", 403),
        ("http://shop.example/p", "shop.example", 200),
        ("http://admin.example/p", "shop.example", 400),
        ("http://shop.example/p", "admin.example", 400),
    ] {
        let req = http::Request::get(target)
            .header("host", host)
            .body(Body::empty())
            .unwrap();
        let a = axum_app.clone().oneshot(req).await.unwrap().status().as_u16();
        let req = actix_web::test::TestRequest::get()
            .uri(target)
            .insert_header(("host", host))
            .to_request();
        let b = actix_web::test::call_service(&actix_app, req)
            .await
            .status()
            .as_u16();
        assert_eq!((a, b), (status, status), "{target} with Host {host}");
    }
}

#[actix_web::test]
async fn explain_header_only_with_the_debug_switch() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let guard = routes_guard(&issuer, true);
    let t = issuer.token().subject("bob").sign();
    let denied = call_axum(axum_app(&guard), "GET", "/secret", Some(&t)).await;
    assert_eq!(
        denied.1.as_deref(),
        Some("denied by DENY policy default/no-secret rule 0")
    );
    let actix = call_actix(&guard, "GET", "/secret", Some(&t)).await;
    assert_eq!(actix.1, denied.1);
    let allowed = call_axum(axum_app(&guard), "GET", "/list", Some(&t)).await;
    assert_eq!(allowed.1.as_deref(), Some("allowed: no ALLOW policy applies"));
}

#[actix_web::test]
async fn a_layer_after_routing_refuses_paths_it_cannot_hand_to_the_router() {
    let issuer = TestIssuer::builder().default_audience("details").start().unwrap();
    let guard = routes_guard(&issuer, false);
    let t = issuer.token().subject("bob").sign();
    // axum: Router::layer runs after routing.
    let app = axum::Router::new()
        .route("/public/{*rest}", axum::routing::get(echo_path_axum))
        .layer(palisade::axum::PalisadeLayer::new(guard.clone()));
    assert_eq!(call_axum(app.clone(), "GET", "/public/x", Some(&t)).await.0, 200);
    // Denied whatever the router would do: the policy saw `/secret`.
    assert_eq!(
        call_axum(app.clone(), "GET", "/public/../secret", Some(&t))
            .await
            .0,
        403
    );
    // Allowed as `/list`, but the router already chose `/public/{*rest}`: refused.
    let (status, _, body) = call_axum(app.clone(), "GET", "/public/../list", Some(&t)).await;
    assert_eq!(status, 400, "{body}");
    // A segment's own escapes (an email address) are matched decoded and
    // need no rewrite: taken after routing too.
    let (status, _, body) = call_axum(app, "GET", "/public/a%40b.example%3A1", Some(&t)).await;
    assert_eq!((status, body.as_str()), (200, "/public/a%40b.example%3A1"));
    // actix-web: middleware on a scope runs after the scope's prefix matched.
    let app = actix_web::test::init_service(
        App::new().service(
            web::scope("/public")
                .wrap(palisade::actix::Palisade::new(guard.clone()))
                .default_service(web::to(HttpResponse::Ok)),
        ),
    )
    .await;
    let req = |uri: &str| {
        actix_web::test::TestRequest::get()
            .uri(uri)
            .insert_header(("authorization", format!("Bearer {t}")))
            .to_request()
    };
    assert_eq!(
        actix_web::test::call_service(&app, req("/public/x"))
            .await
            .status(),
        200
    );
    assert_eq!(
        actix_web::test::call_service(&app, req("/public/a%40b.example"))
            .await
            .status(),
        200
    );
    assert_eq!(
        actix_web::test::call_service(&app, req("/public/a/../../secret"))
            .await
            .status(),
        403
    );
    assert_eq!(
        actix_web::test::call_service(&app, req("/public/a/../b"))
            .await
            .status(),
        400
    );
}
