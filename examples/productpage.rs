//! The `productpage` service (axum), as docs/examples.md describes it: the
//! bookinfo front-end, where people sign in (an `OidcLogin` document, or a
//! `KeycloakAdapter` that is not bearer-only, turns browser sign-in on).
//!
//! ```text
//! cargo run --release --features full --example productpage -- [--listen 127.0.0.1:9082] [--config policy.yaml]
//! ```

#[path = "common/axum_service.rs"]
mod axum_service;
mod common;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use palisade::prelude::Identity;

/// Text for HTML.
fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// `GET /productpage`: the product, with who is signed in and the links to
/// sign in or out.
async fn productpage(id: Option<Identity>) -> Html<String> {
    let name = id.as_ref().and_then(|id| {
        let t = id.token()?;
        t.claims
            .get("name")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .or_else(|| t.preferred_username.clone())
            .or_else(|| Some(t.subject.clone()))
    });
    let account = match &name {
        Some(name) => format!(
            r#"Signed in as <span id="user">{}</span> · <a id="sign-out" href="/logout">Sign out</a>"#,
            escape(name)
        ),
        None => r#"<a id="sign-in" href="/login?return_to=/productpage">Sign in</a>"#.to_owned(),
    };
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bookinfo: The Comedy of Errors</title></head>
<body>
<header id="account">{account}</header>
<h1>The Comedy of Errors</h1>
<p>Wikipedia Summary: The Comedy of Errors is one of William Shakespeare's early plays.</p>
<section id="details"><h2>Details</h2><p>Paperback, 200 pages, English.</p></section>
<section id="reviews"><h2>Reviews</h2><p>An extremely entertaining play by Shakespeare.</p></section>
</body></html>
"#
    ))
}

fn pages() -> Router {
    Router::new().route("/productpage", get(productpage))
}

#[tokio::main]
async fn main() {
    axum_service::run_with("productpage", 9082, pages()).await;
}
