//! What the sign-in tests share: a browser played by an HTTP client with
//! its own cookie jar, and one application served on both frameworks.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{App, HttpResponse, web};
use palisade::core::policy::{PolicySet, Workload};
use palisade::prelude::Identity;
use serde_json::Value;

/// A session key, as a key file holds it (hex).
pub(crate) const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// A browser's cookie jar, by name (one origin).
#[derive(Clone, Debug, Default)]
pub(crate) struct Jar(pub(crate) BTreeMap<String, String>);

impl Jar {
    pub(crate) fn header(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| {
            self.0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    pub(crate) fn take(&mut self, res: &Answer) {
        for c in &res.set_cookies {
            let first = c.split(';').next().unwrap_or_default();
            let (name, value) = first.split_once('=').unwrap();
            let gone = c.to_ascii_lowercase().contains("max-age=0") || value.is_empty();
            if gone {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    pub(crate) fn session(&self) -> Option<&String> {
        self.0.get("palisade_session")
    }
}

#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) location: Option<String>,
    pub(crate) set_cookies: Vec<String>,
    pub(crate) www_authenticate: Vec<String>,
    pub(crate) cache_control: Vec<String>,
    pub(crate) referrer_policy: Vec<String>,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// One request as a browser (navigation) or an API client sends it.
pub(crate) async fn get(url: &str, jar: &Jar, navigation: bool) -> Answer {
    let mut req = client().get(url);
    req = if navigation {
        req.header("accept", "text/html,application/xhtml+xml")
            .header("sec-fetch-mode", "navigate")
    } else {
        req.header("accept", "application/json")
    };
    if let Some(c) = jar.header() {
        req = req.header("cookie", c);
    }
    answer(req.send().await.unwrap()).await
}

pub(crate) async fn answer(res: reqwest::Response) -> Answer {
    let all = |name: &str| {
        res.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let location = all("location").into_iter().next();
    let set_cookies = all("set-cookie");
    let www_authenticate = all("www-authenticate");
    let cache_control = all("cache-control");
    let referrer_policy = all("referrer-policy");
    let status = res.status().as_u16();
    let body = res.text().await.unwrap();
    Answer {
        status,
        location,
        set_cookies,
        www_authenticate,
        cache_control,
        referrer_policy,
        body,
    }
}

pub(crate) fn query_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| urlencoding_decode(v))
    })
}

pub(crate) fn urlencoding_decode(v: &str) -> String {
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The policy file of the tests: bearer tokens and sign-in for
/// `productpage`; every route but `/public` needs a user.
pub(crate) fn policy(issuer: &palisade::testkit::TestIssuer, key_file: &str, extra: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: {iss}
    audiences: [productpage]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: default}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
  - to: [{{operation: {{paths: [/public]}}}}]
---
apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {{name: login, namespace: default}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  issuer: {iss}
  clientId: productpage
  session:
    keys: [{{id: k1, keyFile: {key_file}}}]
{extra}",
        iss = issuer.issuer(),
    )
}

pub(crate) fn guard_from(yaml: &str) -> palisade::prelude::Guard {
    let set = PolicySet::from_yaml_str(yaml, "signin test policy").unwrap();
    palisade::guard_from_policy(&set, &Workload::new("productpage", "default")).unwrap()
}

pub(crate) async fn whoami_axum(id: Option<Identity>) -> axum::Json<Value> {
    axum::Json(palisade::core::whoami(id.as_ref()))
}

/// The same application on axum and on actix-web, each with its own guard
/// made by `guard`; answers their base URLs.
pub(crate) fn serve_both(guard: impl Fn() -> palisade::prelude::Guard) -> (String, String) {
    let actix_guard = guard();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let actix_addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            actix_web::HttpServer::new(move || {
                App::new()
                    .wrap(palisade::actix::Palisade::new(actix_guard.clone()))
                    .route(
                        "/whoami",
                        web::get().to(|id: Option<Identity>| async move {
                            HttpResponse::Ok().json(palisade::core::whoami(id.as_ref()))
                        }),
                    )
                    .route("/public", web::get().to(|| async { "public" }))
                    .route("/page", web::get().to(|| async { "page" }))
            })
            .workers(1)
            .on_connect(palisade::actix::on_connect)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap();
        });
    });
    let axum_guard = guard();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let axum_addr: SocketAddr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let router = axum::Router::new()
                .route("/whoami", axum::routing::get(whoami_axum))
                .route("/public", axum::routing::get(|| async { "public" }))
                .route("/page", axum::routing::get(|| async { "page" }));
            let app = palisade::axum::PalisadeLayer::new(axum_guard).wrap(router);
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<palisade::axum::ConnectAddrs>(),
            )
            .await
            .unwrap();
        });
    });
    (format!("http://{axum_addr}"), format!("http://{actix_addr}"))
}

/// Waits until the service answers a navigation with its sign-in redirect
/// (the issuer's discovery document has loaded).
pub(crate) async fn ready(base: &str) {
    for _ in 0..100 {
        if let Ok(res) = client()
            .get(format!("{base}/page"))
            .header("accept", "text/html")
            .send()
            .await
            && res.status() == 302
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} never sent a navigation to sign in");
}
