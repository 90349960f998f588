//! Token introspection answers (RFC 7662): any bytes as the body of the
//! endpoint's 200, through what the JWT authenticator makes of it
//! (`JwtAuthenticator::introspection_answer`, a hidden entry point: the
//! public path goes through an HTTP call and a cache). `@now` stands for
//! the current time, `@iss` for the issuer.
//!
//! The oracle:
//! - an accepted answer is a JSON object with `active` exactly `true`, an
//!   `iss` that is the issuer or none, a `token_type` and `typ` that are
//!   `Bearer` or `DPoP` or none, an `exp` not past and an `nbf` reached
//!   (or none), a string `sub` or `client_id`, and an `aud` naming this
//!   service; the identity has that issuer and subject;
//! - an accepted answer turns into a refusal when `active` is `false`, a
//!   string, `1` or absent, when `iss` names another issuer, when `exp` has
//!   passed, or when `aud` names another service;
//! - an answer is read as its canonical re-encoding is.

use std::sync::OnceLock;

use palisade_jwt::{Introspection, JwtAuthenticator, JwtError, Provider};
use serde_json::{Map, Value};

use crate::common::{now, same_claims};

const ISSUER: &str = "https://issuer.example";

fn jwt() -> &'static JwtAuthenticator {
    static J: OnceLock<JwtAuthenticator> = OnceLock::new();
    J.get_or_init(|| {
        JwtAuthenticator::builder()
            .provider(
                Provider::builder(ISSUER)
                    .audience("api")
                    .introspection(
                        Introspection::client_secret_basic("rs", "secret")
                            .endpoint("http://127.0.0.1:9/introspect"),
                    )
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    })
}

fn answer(body: &[u8]) -> Result<palisade_core::Identity, JwtError> {
    jwt().introspection_answer(ISSUER, body)
}

fn assert_acceptable(m: &Map<String, Value>, before: f64, after: f64, what: &str) {
    assert_eq!(m.get("active"), Some(&Value::Bool(true)), "{what}");
    assert!(m.get("iss").is_none_or(|i| i == ISSUER), "{what}");
    for member in ["token_type", "typ"] {
        assert!(
            m.get(member).is_none_or(|t| t
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("bearer") || t.eq_ignore_ascii_case("dpop"))),
            "{what}: {member}"
        );
    }
    assert!(
        m.get("exp")
            .is_none_or(|e| e.as_f64().is_some_and(|e| before <= e + 60.0)),
        "{what}: exp"
    );
    assert!(
        m.get("nbf")
            .is_none_or(|n| n.as_f64().is_some_and(|n| n <= after + 60.0)),
        "{what}: nbf"
    );
    assert!(
        m.get("sub").is_some_and(Value::is_string)
            || (m.get("sub").is_none() && m.get("client_id").is_some_and(Value::is_string)),
        "{what}: sub"
    );
    let audience = match m.get("aud") {
        Some(Value::String(a)) => a == "api",
        Some(Value::Array(items)) => items.iter().all(Value::is_string) && items.iter().any(|a| a == "api"),
        _ => false,
    };
    assert!(audience, "{what}: aud");
}

/// Whether a time member is within a few seconds of a limit.
fn near_edge(m: &Map<String, Value>, now: f64) -> bool {
    ["exp", "nbf"]
        .iter()
        .filter_map(|c| m.get(*c).and_then(Value::as_f64))
        .any(|t| (t - (now - 60.0)).abs() < 5.0 || (t - (now + 60.0)).abs() < 5.0)
}

/// One input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let body = text.replace("@now", &now().to_string()).replace("@iss", ISSUER);
    let before = now() as f64;
    let verdict = answer(body.as_bytes());
    let after = now() as f64 + 1.0;
    let parsed: Option<Map<String, Value>> = serde_json::from_str(&body).ok();
    let Some(members) = parsed else {
        assert_eq!(verdict.err(), Some(JwtError::IntrospectionUnavailable), "{body}");
        return;
    };
    if near_edge(&members, before) {
        return;
    }
    let canonical = Value::Object(members.clone()).to_string();
    let again = answer(canonical.as_bytes());
    match (&verdict, &again) {
        (Ok(a), Ok(b)) => assert!(same_claims(a, b), "{body}: {:?} and {:?}", a.claims(), b.claims()),
        (Err(a), Err(b)) => assert_eq!(a, b, "{body} and {canonical} refused apart"),
        _ => panic!("{body} ({verdict:?}) and {canonical} ({again:?}) read apart"),
    }
    let Ok(identity) = verdict else { return };
    assert_acceptable(&members, before, after, &body);
    assert_eq!(identity.issuer(), Some(ISSUER));
    if let Some(Value::String(sub)) = members.get("sub") {
        assert_eq!(identity.subject(), Some(sub.as_str()), "{body}");
    }
    let refused = |change: &dyn Fn(&mut Map<String, Value>), what: &str| {
        let mut m = members.clone();
        change(&mut m);
        let changed = Value::Object(m).to_string();
        assert!(
            answer(changed.as_bytes()).is_err(),
            "{body}: accepted with {what}: {changed}"
        );
    };
    for active in [Value::Bool(false), "true".into(), 1.into(), Value::Null] {
        refused(
            &|m| drop(m.insert("active".into(), active.clone())),
            "another active",
        );
    }
    refused(&|m| drop(m.remove("active")), "no active");
    refused(
        &|m| drop(m.insert("iss".into(), "https://other.example".into())),
        "another iss",
    );
    refused(
        &|m| drop(m.insert("exp".into(), (now() - 3600).into())),
        "an expired exp",
    );
    refused(&|m| drop(m.insert("aud".into(), "other".into())), "another aud");
}
