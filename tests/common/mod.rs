//! Helpers shared by the integration tests.

#![allow(dead_code, reason = "each test binary uses a part")]

use serde_json::Value;

/// POSTs a form to a token endpoint and returns the `access_token`.
pub(crate) async fn access_token(endpoint: &str, form: &str) -> String {
    let res: Value = reqwest::Client::new()
        .post(endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    res["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token from {endpoint}: {res}"))
        .to_owned()
}
