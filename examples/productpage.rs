//! The `productpage` service (axum), as docs/examples.md describes it: the
//! bookinfo front-end, where people sign in (an `OidcLogin` document, or a
//! `KeycloakAdapter` that is not bearer-only, turns browser sign-in on), and
//! which calls its back-ends (`--upstream details=URL --upstream
//! reviews=URL`) with the credential and TLS its policy file gives each
//! (`UpstreamCredentials`, `DestinationRule`).
//!
//! ```text
//! cargo run --release --features full --example productpage -- [--listen 127.0.0.1:9082] [--config policy.yaml]
//! ```

#[path = "common/axum_service.rs"]
mod axum_service;
mod common;
#[path = "common/upstream.rs"]
mod upstream;

use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use axum::{Extension, Json, Router};
use palisade::core::RequestAuth;
use palisade::core::policy::{PolicyError, SignInDocument, SignInPaths, WorkloadPolicy};
use palisade::core::syntax::html_escape;
use palisade::prelude::Identity;
use serde_json::{Map, Value, json};
use upstream::{Answer, Backends};

/// A section of the page from an upstream's answer: its `title` when it
/// answered 200, else why not.
fn section(what: &str, answer: Option<&Answer>, fallback: &str) -> String {
    match answer {
        None => fallback.to_owned(),
        Some(a) if a.status == 200 => {
            let mut text = html_escape(a.body["title"].as_str().unwrap_or(fallback));
            // reviews' answer carries the ratings it got from ratings.
            let ratings = &a.body["ratings"];
            if let Some(stars) = ratings["body"].as_object().filter(|_| ratings["status"] == 200) {
                for (reviewer, n) in stars {
                    let n = n.as_u64().unwrap_or(0).min(5) as usize;
                    text.push_str(&format!(" · {}: {}", html_escape(reviewer), "★".repeat(n)));
                }
            } else if let Some(status) = ratings["status"].as_u64() {
                text.push_str(&format!(" · ratings unavailable ({status})"));
            }
            text
        }
        Some(a) => format!(
            r#"Sorry, {what} are unavailable: <span class="status">{}</span>."#,
            a.status
        ),
    }
}

/// What the pages read: the back-ends, and where the sign-in and sign-out
/// links go.
#[derive(Clone)]
struct Page {
    backends: Backends,
    /// `loginPath` and `logoutPath` of the policy file's sign-in document
    /// (the defaults without one), as reloaded.
    links: common::Reloaded<SignInLinks>,
}

/// The paths the page links to.
struct SignInLinks {
    login: String,
    logout: String,
}

impl SignInLinks {
    /// The sign-in document's paths (the defaults without one).
    fn of(policy: &WorkloadPolicy<'_>) -> Result<Self, PolicyError> {
        let paths = policy
            .sign_in()?
            .map_or(SignInPaths::DEFAULT, SignInDocument::paths);
        Ok(Self {
            login: paths.login.to_owned(),
            logout: paths.logout.to_owned(),
        })
    }
}

/// `GET /productpage`: the product, with who is signed in and the links to
/// sign in or out; with `--upstream details=… --upstream reviews=…`, their
/// sections come from those services.
async fn productpage(
    State(Page { backends, links }): State<Page>,
    id: Option<Identity>,
    auth: Option<Extension<RequestAuth>>,
) -> Html<String> {
    let auth = auth.map(|Extension(a)| a);
    let call = |name: &'static str, path: &'static str| {
        let (backends, auth) = (backends.clone(), auth.clone());
        async move {
            if backends.names().any(|n| n == name) {
                Some(backends.get(name, path, auth.as_ref()).await)
            } else {
                None
            }
        }
    };
    let (details, reviews) = tokio::join!(call("details", "details/0"), call("reviews", "reviews/0"));
    let details = section("details", details.as_ref(), "Paperback, 200 pages, English.");
    let reviews = section(
        "reviews",
        reviews.as_ref(),
        "An extremely entertaining play by Shakespeare.",
    );
    let name = id.as_ref().and_then(|id| {
        let t = id.token()?;
        t.claims
            .get("name")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .or_else(|| t.preferred_username.clone())
            .or_else(|| Some(t.subject.clone()))
    });
    let links = links.current();
    let account = match &name {
        Some(name) => format!(
            r#"Signed in as <span id="user">{}</span> · <a id="sign-out" href="{}">Sign out</a>"#,
            html_escape(name),
            html_escape(&links.logout)
        ),
        None => format!(
            r#"<a id="sign-in" href="{}?return_to=/productpage">Sign in</a>"#,
            html_escape(&links.login)
        ),
    };
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bookinfo: The Comedy of Errors</title></head>
<body>
<header id="account">{account}</header>
<h1>The Comedy of Errors</h1>
<p>Wikipedia Summary: The Comedy of Errors is one of William Shakespeare's early plays.</p>
<section id="details"><h2>Details</h2><p>{details}</p></section>
<section id="reviews"><h2>Reviews</h2><p>{reviews}</p></section>
</body></html>
"#
    ))
}

/// `GET /api/v1/products/{id}`: the product's details and reviews, each
/// as its upstream answered (or 401, 502, 504 for why it could not).
async fn product(
    State(Page { backends, .. }): State<Page>,
    Path(id): Path<u32>,
    auth: Option<Extension<RequestAuth>>,
) -> Json<Value> {
    let auth = auth.map(|Extension(a)| a);
    let (details_path, reviews_path) = (format!("details/{id}"), format!("reviews/{id}"));
    let (details, reviews) = tokio::join!(
        backends.get("details", &details_path, auth.as_ref()),
        backends.get("reviews", &reviews_path, auth.as_ref()),
    );
    Json(json!({"id": id, "details": details.to_json(), "reviews": reviews.to_json()}))
}

/// `GET /upstreams/whoami`: each upstream's `/whoami`, as it saw this call.
async fn upstreams_whoami(
    State(Page { backends, .. }): State<Page>,
    auth: Option<Extension<RequestAuth>>,
) -> Json<Value> {
    let auth = auth.map(|Extension(a)| a);
    // All at once: one task each, answers in `--upstream` order.
    let calls: Vec<_> = backends
        .names()
        .map(|name| {
            let (name, backends, auth) = (name.to_owned(), backends.clone(), auth.clone());
            tokio::spawn(async move {
                let answer = backends.get(&name, "whoami", auth.as_ref()).await;
                (name, answer.to_json())
            })
        })
        .collect();
    let mut all = Map::new();
    for call in calls {
        if let Ok((name, answer)) = call.await {
            all.insert(name, answer);
        }
    }
    Json(Value::Object(all))
}

fn pages(page: Page) -> Router {
    Router::new()
        .route("/productpage", get(productpage))
        .route("/api/v1/products/{id}", get(product))
        .route("/upstreams/whoami", get(upstreams_whoami))
        .with_state(page)
}

#[tokio::main]
async fn main() {
    axum_service::serve("productpage", 9082, |parts| {
        let page = Page {
            backends: Backends::new(parts.args, parts.setup),
            links: common::reloaded(parts.setup, SignInLinks::of),
        };
        axum_service::app(parts.service, parts.backend, pages(page))
    })
    .await;
}
