//! Sealed cookies (`palisade_signin::cookie`) and the session cookie of
//! browser sign-in (`SignIn::authenticate`).
//!
//! The first byte picks the mode (its low two bits):
//!
//! 0. The rest is `Cookie` header values, one a line, sent to the relying
//!    party. A session it accepts is one the sealer opens from the same
//!    request, whose value is written the one way the sealer writes it
//!    (`v1.<count>.<key id>.<base64url>`, canonical base64, the count of
//!    chunks it has), and whose content the session model accepts.
//! 1. The rest is a session's plaintext (JSON; `@now` is the current
//!    time in seconds, `@ms` in milliseconds), sealed as the relying
//!    party seals it and sent back: it is accepted exactly when the
//!    session model says so (a session `{"t":"s",…}` with the fields'
//!    types, within its absolute and idle timeouts, its access token not
//!    expired or, when it soon is, without a refresh token: the issuer of
//!    this relying party never answers; its ID token, when it has one,
//!    naming this issuer and this client), as the subject it names, with
//!    its access token attached. A stored-session reference is refused (the
//!    store holds none).
//! 2. The rest is any plaintext, sealed by a sealer that splits it over
//!    64-byte chunks: it opens to itself, as many chunks as were set, and
//!    the cookie is refused when moved to another name, relabelled with
//!    another key id, sealed by a key the sealer does not hold, or missing
//!    a chunk; a cookie of an older key opens and says so.
//! 3. As 0, with the headers sent to the sealer alone, which must answer.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_core::authn::{AuthOutcome, Authenticator, OwnedRequest};
use palisade_signin::SignedIn;
use palisade_signin::cookie::{CookieKey, CookieSealer, InvalidCookie, Opened, RawCookie};
use serde_json::Value;

use crate::common::{now, strict_json, wait};
use crate::signin::{CLIENT, OFFLINE_ISSUER, cookie_header, keys, offline, session_sealer};

/// The relying party's defaults.
const ABSOLUTE: u64 = 8 * 3600;
const IDLE: u64 = 30 * 60;
const REFRESH_BEFORE: u64 = 30;

/// What the model says of a session plaintext.
#[derive(Debug, PartialEq)]
enum Model {
    Accepted {
        sub: String,
        at: String,
    },
    Refused,
    /// Too close to a time limit, or a duplicate member: either answer.
    Either,
}

fn model(plaintext: &[u8]) -> Model {
    let Some(v) = strict_json(plaintext) else {
        return if serde_json::from_slice::<Value>(plaintext).is_ok() {
            Model::Either
        } else {
            Model::Refused
        };
    };
    let str_field = |name: &str| v.get(name).and_then(Value::as_str);
    let u64_field = |name: &str| v.get(name).and_then(Value::as_u64);
    let optional_str = |name: &str| v.get(name).is_none_or(|f| f.is_null() || f.is_string());
    if str_field("t") != Some("s") {
        return Model::Refused;
    }
    let (Some(version), Some(_), Some(sub), Some(created_ms), Some(seen), Some(at), Some(at_exp)) = (
        u64_field("v"),
        str_field("id"),
        str_field("sub"),
        u64_field("created_ms"),
        u64_field("seen"),
        str_field("at"),
        u64_field("at_exp"),
    ) else {
        return Model::Refused;
    };
    if version > 255 || !["sid", "rt", "it"].iter().all(|f| optional_str(f)) {
        return Model::Refused;
    }
    // A session of this relying party: its ID token names this issuer and
    // this client (read without its signature, as sealed at sign-in).
    if let Some(it) = str_field("it")
        && !names_this_relying_party(it)
    {
        return Model::Refused;
    }
    let has_refresh = v.get("rt").is_some_and(Value::is_string);
    let t = i128::from(now());
    let limits = [
        i128::from(created_ms / 1000) + i128::from(ABSOLUTE),
        i128::from(seen) + i128::from(IDLE),
        i128::from(at_exp) - i128::from(REFRESH_BEFORE),
        i128::from(at_exp),
    ];
    if limits.iter().any(|l| (l - t).abs() <= 3) {
        return Model::Either;
    }
    let usable = t < limits[0] && t < limits[1];
    let fresh = t < limits[2] || (!has_refresh && t < limits[3]);
    if usable && fresh {
        Model::Accepted {
            sub: sub.to_owned(),
            at: at.to_owned(),
        }
    } else {
        Model::Refused
    }
}

/// Whether a JWT's payload names [`OFFLINE_ISSUER`] as `iss` and
/// [`CLIENT`] among its `aud`.
fn names_this_relying_party(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    let [_, payload, _] = parts.as_slice() else {
        return false;
    };
    let Some(Value::Object(claims)) = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return false;
    };
    let audience = match claims.get("aud") {
        Some(Value::String(a)) => a == CLIENT,
        Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(CLIENT)),
        _ => false,
    };
    claims.get("iss").and_then(Value::as_str) == Some(OFFLINE_ISSUER) && audience
}

fn assert_outcome(outcome: &AuthOutcome, model: &Model, what: &str) {
    match (outcome, model) {
        (AuthOutcome::Authenticated(a), Model::Accepted { sub, at }) => {
            assert_eq!(a.identity.subject(), Some(sub.as_str()), "{what}");
            assert_eq!(a.identity.issuer(), Some(OFFLINE_ISSUER), "{what}");
            let signed_in = a.attachments.get::<SignedIn>().expect("the session's tokens");
            assert_eq!(signed_in.access_token(), at, "{what}");
        }
        (AuthOutcome::NoCredential, Model::Refused) | (_, Model::Either) => {}
        (outcome, model) => panic!("{what}: the model says {model:?}, the relying party {outcome:?}"),
    }
}

fn request(cookies: &[&[u8]]) -> OwnedRequest {
    cookies.iter().fold(OwnedRequest::get("/page"), |req, c| {
        req.header("cookie", c.to_vec())
    })
}

/// A value written as the sealer writes it, with `chunks` chunks.
fn assert_canonical(value: &str, chunks: usize) {
    let parts: Vec<&str> = value.splitn(4, '.').collect();
    let [version, count, _, body] = parts.as_slice() else {
        panic!("{value:?}: opened, but not four parts")
    };
    assert_eq!(*version, "v1", "{value:?}");
    assert_eq!(
        *count,
        chunks.to_string(),
        "{value:?}: opened, with another chunk count"
    );
    let bytes = URL_SAFE_NO_PAD.decode(body).expect("opened, so its body decodes");
    assert_eq!(
        URL_SAFE_NO_PAD.encode(bytes),
        *body,
        "{value:?}: opened, but not canonical base64"
    );
}

fn raw_headers(rest: &[u8], relying_party: bool) {
    let lines: Vec<&[u8]> = rest.split(|b| *b == b'\n').collect();
    let req = request(&lines);
    let sealer = session_sealer();
    let opened = sealer.open(&req);
    if let Opened::Valid { chunks, .. } = &opened {
        let RawCookie::Present { value, .. } = sealer.raw(&req) else {
            panic!("opened, but no raw value")
        };
        assert_canonical(&value, *chunks);
    }
    if !relying_party {
        return;
    }
    let outcome = wait(offline().sign_in.authenticate(&req));
    if let AuthOutcome::Authenticated(_) = &outcome {
        let Opened::Valid { plaintext, .. } = &opened else {
            panic!("a session accepted from a cookie the sealer does not open: {opened:?}")
        };
        assert_outcome(&outcome, &model(plaintext), "a raw cookie");
    }
}

fn sealed_session(plaintext: &[u8]) {
    let t = now();
    let plaintext = match std::str::from_utf8(plaintext) {
        Ok(text) => text
            .replace("@ms", &(t * 1000).to_string())
            .replace("@now", &t.to_string())
            .into_bytes(),
        Err(_) => plaintext.to_vec(),
    };
    let plaintext = plaintext.as_slice();
    let Ok(set) = session_sealer().seal(plaintext, None, 0) else {
        return;
    };
    let header = cookie_header(&set);
    let outcome = wait(offline().sign_in.authenticate(&request(&[header.as_bytes()])));
    assert_outcome(&outcome, &model(plaintext), &String::from_utf8_lossy(plaintext));
}

struct Sealers {
    small: CookieSealer,
    moved: CookieSealer,
    old: CookieSealer,
    newest_only: CookieSealer,
}

fn sealers() -> &'static Sealers {
    static S: OnceLock<Sealers> = OnceLock::new();
    S.get_or_init(|| {
        let small = |name: &str, keys: Vec<CookieKey>| {
            CookieSealer::builder(name, keys)
                .secure(false)
                .chunk_size(64)
                .max_chunks(64)
                .build()
                .unwrap()
        };
        let all = keys();
        Sealers {
            small: small("s", all.clone()),
            moved: small("t", all.clone()),
            old: small("s", vec![all[1].clone()]),
            newest_only: small("s", vec![all[0].clone()]),
        }
    })
}

fn round_trip(plaintext: &[u8], split_headers: bool) {
    let s = sealers();
    let Ok(set) = s.small.seal(plaintext, None, 0) else {
        return;
    };
    assert!(set.iter().all(|c| c.starts_with('s')), "{set:?}");
    let send = |set: &[String], rename: Option<&str>| {
        let pairs: Vec<String> = set
            .iter()
            .filter_map(|c| c.split(';').next())
            .map(|p| match rename {
                Some(to) => format!("{to}{}", &p[1..]),
                None => p.to_owned(),
            })
            .collect();
        if split_headers {
            pairs
                .iter()
                .fold(OwnedRequest::get("/"), |r, p| r.header("cookie", p.clone()))
        } else {
            OwnedRequest::get("/").header("cookie", pairs.join("; "))
        }
    };
    let chunks = set.len();
    match s.small.open(&send(&set, None)) {
        Opened::Valid {
            plaintext: p,
            chunks: c,
            current_key,
        } => {
            assert_eq!(p, plaintext, "round trip");
            assert_eq!(c, chunks);
            assert!(current_key);
        }
        other => panic!("a sealed value does not open: {other:?}"),
    }
    let refused = |opened: Opened, reason: InvalidCookie, what: &str| match opened {
        Opened::Invalid { reason: r, .. } => assert_eq!(r, reason, "{what}"),
        other => panic!("{what}: {other:?}"),
    };
    refused(
        s.moved.open(&send(&set, Some("t"))),
        InvalidCookie::Tampered,
        "moved to another name",
    );
    let relabelled: Vec<String> = set.iter().map(|c| c.replacen(".k1.", ".k0.", 1)).collect();
    refused(
        s.small.open(&send(&relabelled, None)),
        InvalidCookie::Tampered,
        "relabelled",
    );
    if chunks > 1 {
        refused(
            s.small.open(&send(&set[..chunks - 1], None)),
            InvalidCookie::MissingChunk,
            "a chunk missing",
        );
    }
    let Ok(old) = s.old.seal(plaintext, None, 0) else {
        return;
    };
    match s.small.open(&send(&old, None)) {
        Opened::Valid {
            plaintext: p,
            current_key,
            ..
        } => {
            assert_eq!(p, plaintext);
            assert!(!current_key, "an older key's cookie says it is current");
        }
        other => panic!("an older key's cookie does not open: {other:?}"),
    }
    refused(
        s.newest_only.open(&send(&old, None)),
        InvalidCookie::UnknownKey,
        "a key no longer held",
    );
}

/// One input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    offline().store.make_room();
    match mode & 3 {
        0 => raw_headers(rest, true),
        1 => sealed_session(rest),
        2 => round_trip(rest, mode & 4 != 0),
        _ => raw_headers(rest, false),
    }
}
