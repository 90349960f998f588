//! OpenID Connect Back-Channel Logout: request bodies to the relying
//! party's back-channel logout endpoint, whose issuer (a loopback stub)
//! signs with the fuzzing key.
//!
//! The first byte picks the mode. Odd: the rest is the request body. Even:
//! the rest is `extra header members` NEWLINE `claims` [NEWLINE `body`]:
//! the claims signed by the issuer's key (`@now` is the current time,
//! `@iss` the issuer, `@aud` the client id), sent as the body, in which
//! `@token` stands for the token (default `logout_token=@token`).
//!
//! The oracle (Back-Channel Logout 1.0, 2.4 and 2.6):
//! - a logout is accepted (200) only from a body with exactly one
//!   `logout_token`, signed by the issuer, for this client, with `iss`,
//!   an `exp` not past, an `iat` not in the future, a non-empty `jti`, the
//!   back-channel logout event, no `nonce`, and a non-empty `sid` or
//!   `sub`;
//! - claims the model accepts (no extra header member, no time near a
//!   limit, a `jti` not used before) are accepted;
//! - an accepted token is refused the second time (a replay);
//! - after an accepted logout, a session of that `sid` (or of that `sub`,
//!   created before) is no longer accepted;
//! - a refusal is a 400 with an OAuth error body.

use std::collections::HashSet;
use std::sync::Mutex;

use palisade_core::adapter::Reply;
use palisade_core::authn::{AuthOutcome, Authenticator, OwnedRequest};
use serde_json::{Map, Value};

use crate::common::{now, payload, runtime, signer, strict_json, strict_params, wait};
use crate::signin::{CLIENT, cookie_header, online, session_sealer};

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
const PATH: &str = "/oauth2/backchannel-logout";
const BODY_LIMIT: usize = 64 * 1024;
const MAX_TOKEN: usize = 8 * 1024;

/// The `jti`s of the logouts accepted so far (forgotten with the store).
static USED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn post(body: &[u8]) -> Reply {
    let req = OwnedRequest::new("POST", PATH).header("host", "app.test");
    let AuthOutcome::Respond(reply) = wait(online().sign_in.authenticate(&req)) else {
        panic!("the back-channel logout endpoint did not answer")
    };
    assert_eq!(reply.body_wanted(), Some(BODY_LIMIT));
    // The body in one chunk, as a framework would hand it over.
    let mut chunk = Some(body.to_vec());
    let next = move |_: &mut std::task::Context<'_>| {
        std::task::Poll::Ready(chunk.take().map(|c| Ok::<_, ()>(Some(c))))
    };
    runtime().block_on(reply.finish_from_body(next))
}

/// Whether `claims` may be accepted: what the spec requires, checked by
/// the oracle's own reading. `now` is when the check started.
fn required(claims: &Map<String, Value>, issuer: &str, now: f64) -> bool {
    let s = |name: &str| claims.get(name).and_then(Value::as_str);
    let non_empty = |name: &str| s(name).is_some_and(|v| !v.is_empty());
    let audience = match claims.get("aud") {
        Some(Value::String(a)) => a == CLIENT,
        Some(Value::Array(items)) => items.iter().all(Value::is_string) && items.iter().any(|a| a == CLIENT),
        _ => false,
    };
    s("iss") == Some(issuer)
        && audience
        && claims
            .get("exp")
            .and_then(Value::as_f64)
            .is_some_and(|exp| exp + 60.0 >= now)
        && claims
            .get("iat")
            .and_then(Value::as_u64)
            .is_some_and(|iat| iat as f64 <= now + 61.0)
        && claims
            .get("nbf")
            .is_none_or(|nbf| nbf.as_f64().is_some_and(|nbf| nbf <= now + 61.0))
        && non_empty("jti")
        && claims
            .get("events")
            .and_then(|e| e.get(EVENT))
            .is_some_and(Value::is_object)
        && !claims.contains_key("nonce")
        && (non_empty("sid") || non_empty("sub"))
        && claims.get("sub").is_none_or(Value::is_string)
}

/// Whether a time claim is within a few seconds of a limit.
fn near_edge(claims: &Map<String, Value>, now: f64) -> bool {
    ["exp", "nbf", "iat"]
        .iter()
        .filter_map(|c| claims.get(*c).and_then(Value::as_f64))
        .any(|t| (t - (now - 60.0)).abs() < 5.0 || (t - (now + 60.0)).abs() < 5.0)
}

/// The one `logout_token` of a body, as the oracle decodes it.
fn the_token(body: &[u8]) -> Option<String> {
    let form = std::str::from_utf8(body).ok()?;
    match strict_params(form, "logout_token").as_slice() {
        [Some(token)] => Some(token.clone()),
        _ => None,
    }
}

/// A session of this relying party, created a second ago, with this `sid`
/// or `sub`: whether it is accepted.
fn session_accepted(sid: Option<&str>, sub: &str) -> bool {
    let t = now();
    let session = serde_json::json!({
        "t": "s", "v": 1, "id": "fuzz-session", "sub": sub, "sid": sid,
        "created_ms": (t - 1) * 1000, "seen": t, "at": "opaque", "at_exp": t + 3600,
    });
    let set = session_sealer()
        .seal(session.to_string().as_bytes(), None, 0)
        .unwrap();
    let req = OwnedRequest::get("/page").header("cookie", cookie_header(&set));
    matches!(
        wait(online().sign_in.authenticate(&req)),
        AuthOutcome::Authenticated(_)
    )
}

/// One input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let rp = online();
    let mut used = USED.lock().unwrap();
    let used = used.get_or_insert_with(HashSet::new);
    if rp.store.make_room() {
        used.clear();
    }
    let text = String::from_utf8_lossy(rest);
    // The token signed here, when its header has no extra member.
    let mut plain = None;
    let body = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        let mut lines = text.splitn(3, '\n');
        let extra = lines.next().unwrap_or_default();
        let claims = lines
            .next()
            .unwrap_or_default()
            .replace("@now", &now().to_string())
            .replace("@iss", &rp.issuer)
            .replace("@aud", CLIENT);
        let token = signer().sign(extra, &claims);
        plain = extra.is_empty().then(|| token.clone());
        lines
            .next()
            .unwrap_or("logout_token=@token")
            .replace("@token", &token)
            .into_bytes()
    };
    let start = now() as f64;
    let reply = post(&body);
    let what = String::from_utf8_lossy(&body).into_owned();
    if body.len() > BODY_LIMIT {
        assert_eq!(reply.status(), 413, "{what}");
        return;
    }
    let token = the_token(&body);
    let claims = token.as_deref().and_then(payload);
    if reply.status() == 400 {
        let answer: Value = serde_json::from_str(reply.body()).expect("a JSON error body");
        assert_eq!(answer["error"], "invalid_request", "{what}");
        // Claims the model accepts, in the plain token signed here, sent
        // as it is, are not refused.
        let (Some(token), Some(claims)) = (token, claims) else {
            return;
        };
        let modelled = plain.as_ref() == Some(&token)
            && token.len() <= MAX_TOKEN
            && strict_json(&base64_payload(&token)).is_some()
            && !claims.contains_key("cnf")
            && !near_edge(&claims, start)
            && required(&claims, &rp.issuer, start);
        let jti = claims.get("jti").and_then(Value::as_str).unwrap_or_default();
        assert!(
            !modelled || used.contains(jti),
            "{what}: refused ({}), but the model accepts it",
            reply.body()
        );
        return;
    }
    assert_eq!(reply.status(), 200, "{what}: {}", reply.body());
    let token = token.unwrap_or_else(|| panic!("{what}: accepted without exactly one logout_token"));
    assert!(
        signer().signed(&token),
        "{what}: accepted, not signed by the issuer"
    );
    let claims = claims.expect("an accepted token has claims");
    assert!(
        required(&claims, &rp.issuer, now() as f64),
        "{what}: accepted, but {claims:?}"
    );
    used.insert(claims["jti"].as_str().unwrap().to_owned());
    assert_eq!(
        post(&body).status(),
        400,
        "{what}: a replayed logout token was accepted"
    );
    // The sessions it names are over.
    let sid = claims
        .get("sid")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    match (sid, sub) {
        (Some(sid), _) => assert!(
            !session_accepted(Some(sid), "anyone"),
            "{what}: a session of sid {sid} lives on"
        ),
        (None, Some(sub)) => assert!(
            !session_accepted(None, sub),
            "{what}: a session of sub {sub} lives on"
        ),
        (None, None) => unreachable!("required() checked it"),
    }
}

/// A token's decoded payload bytes.
fn base64_payload(token: &str) -> Vec<u8> {
    use base64::Engine;
    token
        .split('.')
        .nth(1)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .unwrap_or_default()
}
