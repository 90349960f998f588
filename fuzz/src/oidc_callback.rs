//! The redirect query strings of browser sign-in: the callback's
//! (`code`, `state`, `error`, `iss`, RFC 6749 4.1.2 and RFC 9207) with the
//! login-state cookie, the login's `return_to`, and a navigation's own
//! target, against a relying party whose issuer (a loopback stub) has
//! published its discovery document.
//!
//! The first byte picks the mode (low two bits):
//!
//! 0. callback, with the login-state cookie of a sign-in under way (state
//!    `S`); bit 2: that sign-in started 11 minutes ago (too long); bit 3:
//!    the first line of the rest is the cookie's sealed content instead;
//! 1. callback, without the cookie;
//! 2. login (`/login?` + the rest's first line; the next lines are `Cookie`
//!    values);
//! 3. a navigation to `/` + the rest, which is sent to sign in.
//!
//! In the query, `@state` stands for `S`, `@iss` for the issuer
//! (form-encoded) and `@code` for a code.
//!
//! The oracle for a callback is a model of the checks, in their order,
//! with its own strict form decoding (`%` and two hex digits): a repeated
//! `state`, `code`, `iss` or `error` is a 400; a state that names no
//! login-state cookie of this browser a 400; then (the cookie cleared) a
//! state other than the cookie's, a sign-in older than 10 minutes, an
//! `iss` other than the issuer or none, a 400; an `error` a 403; no
//! `code` a 400; else the code is exchanged (the check answers later).
//! For a login or a navigation: the redirect goes to the issuer's
//! authorization endpoint with a new state, whose login-state cookie holds
//! a `return_to` that is a path of this origin (`/`, not `//` nor `/\`, no
//! control character or space): the `return_to` asked for, or `/` when
//! none is asked for, when a navigation's own target is not such a path,
//! or when the page is too long to keep (over 1 kB).

use palisade_core::Check;
use palisade_core::adapter::Reply;
use palisade_core::authn::{AuthOutcome, Authenticator, OwnedRequest};
use palisade_core::form;
use palisade_signin::cookie::Opened;
use serde_json::Value;

use crate::common::{strict_json, strict_params};
use crate::signin::{STATE_PREFIX, cookie_header, online, state_sealer};

const STATE: &str = "fuzzstate000-0123456789abcdefghijklmnopqrstu";
const HOST: &str = "app.test";
const ORIGIN: &str = "http://app.test";

/// What the model expects of a callback.
#[derive(Debug, PartialEq)]
enum Expect {
    /// A refusal with this status; `true` when it clears the cookie.
    Refused(u16, bool),
    /// The code goes to the token endpoint.
    Exchange,
    /// The model cannot tell (a duplicate member in the cookie's JSON).
    Either,
}

fn login_state(state: &str, created_us: u64) -> String {
    serde_json::json!({
        "state": state,
        "nonce": "n",
        "verifier": "v",
        "return_to": "/after",
        "redirect_uri": format!("{ORIGIN}/oauth2/callback"),
        "created_us": created_us,
    })
    .to_string()
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The state a sealed login-state content holds, and when it started;
/// `Err(true)` when the model cannot tell.
fn sealed_state(content: &[u8]) -> Result<(String, u64), bool> {
    let Some(v) = strict_json(content) else {
        return Err(serde_json::from_slice::<Value>(content).is_ok());
    };
    let s = |name: &str| v.get(name).and_then(Value::as_str);
    match (
        s("state"),
        s("nonce"),
        s("verifier"),
        s("return_to"),
        s("redirect_uri"),
    ) {
        (Some(state), Some(_), Some(_), Some(_), Some(_)) => {
            let created = v.get("created_us").and_then(Value::as_u64).ok_or(false)?;
            Ok((state.to_owned(), created))
        }
        _ => Err(false),
    }
}

fn model(query: &str, cookie: Option<&[u8]>, issuer: &str) -> Expect {
    if ["state", "code", "iss", "error"].iter().any(|p| {
        query
            .split('&')
            .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) == *p)
            .count()
            > 1
    }) {
        return Expect::Refused(400, false);
    }
    let one = |name: &str| strict_params(query, name).into_iter().next().flatten();
    let given = one("state").unwrap_or_default();
    let tag_ok = given.get(..12).is_some_and(|t| {
        t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    });
    if !tag_ok {
        return Expect::Refused(400, false);
    }
    // The browser's cookie is the sign-in of STATE: another tag names a
    // cookie it does not have.
    let Some(content) = cookie.filter(|_| given.get(..12) == STATE.get(..12)) else {
        return Expect::Refused(400, false);
    };
    let (state, created_us) = match sealed_state(content) {
        Ok(s) => s,
        Err(true) => return Expect::Either,
        Err(false) => return Expect::Refused(400, true),
    };
    if given != state {
        return Expect::Refused(400, true);
    }
    let age = now_us().saturating_sub(created_us);
    if age.abs_diff(600_000_000) < 5_000_000 {
        return Expect::Either;
    }
    if age > 600_000_000 {
        return Expect::Refused(400, true);
    }
    if one("iss").as_deref() != Some(issuer) {
        return Expect::Refused(400, true);
    }
    if one("error").is_some() {
        return Expect::Refused(403, true);
    }
    if one("code").is_none_or(|c| c.is_empty()) {
        return Expect::Refused(400, true);
    }
    Expect::Exchange
}

fn set_cookies(reply: &Reply) -> Vec<String> {
    reply
        .headers()
        .filter(|(n, _)| *n == "set-cookie")
        .map(|(_, v)| v.to_owned())
        .collect()
}

fn callback(rest: &[u8], mode: u8) {
    let rp = online();
    let text = String::from_utf8_lossy(rest);
    let (content, query) = if mode & 8 != 0 {
        let (c, q) = text.split_once('\n').unwrap_or((&text, ""));
        (Some(c.as_bytes().to_vec()), q.to_owned())
    } else {
        let created = if mode & 4 != 0 {
            now_us() - 660_000_000
        } else {
            now_us()
        };
        (Some(login_state(STATE, created).into_bytes()), text.into_owned())
    };
    let content = content.filter(|_| mode & 3 == 0);
    let query = query
        .replace("@state", STATE)
        .replace("@iss", &form::encode(&rp.issuer))
        .replace("@code", "c0de");
    let mut req = OwnedRequest::get(&format!("/oauth2/callback?{query}")).header("host", HOST);
    if let Some(content) = &content {
        let Ok(set) = state_sealer(&STATE[..12]).seal(content, None, 0) else {
            return;
        };
        req = req.header("cookie", cookie_header(&set));
    }
    let expect = model(&query, content.as_deref(), &rp.issuer);
    let got = match rp.sign_in.authenticate(&req) {
        Check::Pending(_) => Expect::Exchange,
        Check::Ready(AuthOutcome::Respond(reply)) => {
            let clears = set_cookies(&reply)
                .iter()
                .any(|c| c.starts_with(STATE_PREFIX) && c.contains("Max-Age=0"));
            Expect::Refused(reply.status(), clears)
        }
        Check::Ready(other) => panic!("{query:?}: the callback answered {other:?}"),
    };
    if expect != Expect::Either {
        assert_eq!(got, expect, "{query:?}");
    }
}

/// A path of this origin.
fn local(target: &str) -> bool {
    target.starts_with('/')
        && !target.starts_with("//")
        && !target.starts_with("/\\")
        && !target.bytes().any(|b| b.is_ascii_control() || b == b' ')
}

/// The `return_to` of the sign-in a redirect starts.
fn started(reply: &Reply, rp_issuer: &str) -> String {
    assert_eq!(reply.status(), 302);
    let location = reply
        .headers()
        .find(|(n, _)| *n == "location")
        .map(|(_, v)| v.to_owned())
        .expect("a redirect has a location");
    assert!(
        location.starts_with(&format!("{rp_issuer}/authorize?")),
        "{location}"
    );
    let query = location.split_once('?').map_or("", |(_, q)| q);
    let state = strict_params(query, "state")
        .into_iter()
        .next()
        .flatten()
        .expect("a state");
    assert_eq!(
        strict_params(query, "redirect_uri")
            .into_iter()
            .next()
            .flatten()
            .as_deref(),
        Some(format!("{ORIGIN}/oauth2/callback").as_str())
    );
    let tag = &state[..12];
    let set = set_cookies(reply);
    let mine: Vec<String> = set
        .iter()
        .filter(|c| c.starts_with(&format!("{STATE_PREFIX}{tag}=")) && !c.contains("Max-Age=0;"))
        .cloned()
        .collect();
    assert_eq!(mine.len(), 1, "{set:?}");
    for c in &set {
        assert!(
            c.starts_with(STATE_PREFIX) || c.starts_with("palisade_session"),
            "{c}"
        );
    }
    let req = OwnedRequest::get("/").header("cookie", cookie_header(&mine));
    let Opened::Valid { plaintext, .. } = state_sealer(tag).open(&req) else {
        panic!("the login-state cookie does not open")
    };
    let v: Value = serde_json::from_slice(&plaintext).unwrap();
    assert_eq!(v["state"], state.as_str());
    let return_to = v["return_to"].as_str().unwrap().to_owned();
    assert!(local(&return_to), "{return_to:?}: not a path of this origin");
    return_to
}

/// A sign-in returns to the page asked for, or to `/` when that page is
/// too long to keep in the login-state cookie (which holds about 2.7 kB:
/// any page under 1 kB fits, even with every character escaped in JSON).
fn assert_returns_to(returns_to: &str, asked: &str) {
    assert!(
        returns_to == asked || (returns_to == "/" && asked.len() > 1024),
        "{asked:?} returns to {returns_to:?}"
    );
}

fn login(rest: &[u8]) {
    let rp = online();
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let query = lines.next().unwrap_or_default();
    let req = lines.fold(
        OwnedRequest::get(&format!("/login?{query}")).header("host", HOST),
        |r, c| r.header("cookie", c.as_bytes().to_vec()),
    );
    let Check::Ready(AuthOutcome::Respond(reply)) = rp.sign_in.authenticate(&req) else {
        panic!("{query:?}: the login answered later or not at all")
    };
    let asked = strict_params(query, "return_to")
        .into_iter()
        .find(Option::is_some)
        .flatten()
        .unwrap_or_else(|| "/".into());
    let asked = match asked.strip_prefix(ORIGIN) {
        Some(rest) if rest.starts_with('/') => rest.to_owned(),
        _ => asked,
    };
    if reply.status() == 400 {
        assert!(!local(&asked), "{query:?}: {asked:?} refused");
        return;
    }
    assert_returns_to(&started(&reply, &rp.issuer), &asked);
}

fn navigation(rest: &[u8]) {
    let rp = online();
    let target = format!("/{}", String::from_utf8_lossy(rest));
    let req = OwnedRequest::get(&target)
        .header("host", HOST)
        .header("accept", "text/html");
    let reply = rp.sign_in.sign_in(&req).expect("a navigation is sent to sign in");
    let expected = if local(&target) { target.as_str() } else { "/" };
    assert_returns_to(&started(&reply, &rp.issuer), expected);
}

/// One input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode & 3 {
        0 | 1 => callback(rest, mode),
        2 => login(rest),
        _ => navigation(rest),
    }
}
