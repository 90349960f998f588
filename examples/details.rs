//! The `details` service (axum), as docs/examples.md describes it.
//!
//! ```text
//! cargo run --release --features full --example details -- [--listen 127.0.0.1:9080] [--config policy.yaml]
//! ```

#[path = "common/axum_service.rs"]
mod axum_service;
mod common;

#[tokio::main]
async fn main() {
    axum_service::run("details", 9080).await;
}
