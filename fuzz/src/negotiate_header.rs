//! `Authorization` and `Cookie` headers as a client sends them, through the
//! SPNEGO authenticator (`SpnegoAuthenticator::authenticate`): the header
//! scheme and base64, one token per request, the token inspection before
//! GSSAPI, and the Kerberos session cookie. GSSAPI itself is not called:
//! a token that would reach it makes the check answer later, and the
//! target does not wait for that answer.
//!
//! Input: the first byte picks the mode; the rest is lines, each an
//! `Authorization` value, or a `Cookie` value when it starts with
//! `cookie `. With bit 0 of the mode, the last line is instead a session
//! (JSON) that the target seals as the authenticator does (bit 1: under
//! another cookie name, which must not open) and sends as the cookie.
//!
//! The oracle:
//! - no `Negotiate` header: the answer is the session cookie's, and a
//!   session is accepted only when it is ours (sealed under this cookie
//!   name), unexpired, of an allowed realm, and names that principal;
//! - two or more `Negotiate` headers: refused (401 with a bare
//!   `Negotiate` challenge), never handed to GSSAPI;
//! - GSSAPI is only reached with one header, within the size limit, whose
//!   token (standard base64) the public inspection calls Kerberos;
//! - a token refused for what it is (NTLM, NegoEx, anything but Kerberos)
//!   stays refused however it is written: another case of the scheme,
//!   white space around it, without padding, the URL-safe alphabet.
//!
//! The authenticator needs acceptor credentials: the target writes a
//! keytab with one key (for a principal no client has) and points
//! `KRB5_KTNAME` at it, once, before the first check.

use std::sync::OnceLock;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use palisade_core::Check;
use palisade_core::authn::{AuthOutcome, Authenticator, OwnedRequest};
use palisade_spnego::{DEFAULT_MAX_HEADER, SessionCookie, SpnegoAuthenticator, TokenKind, inspect_token};
use serde_json::Value;

const COOKIE: &str = "krb_session";
const REALM: &str = "FUZZ.TEST";
const KEY: [u8; 32] = [9; 32];
const KEY_ID: u8 = 1;

/// A keytab (MIT format 0x502) with one aes256-cts-hmac-sha1-96 key for
/// `HTTP/fuzz.test@FUZZ.TEST`.
fn keytab() -> Vec<u8> {
    fn counted(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut entry = Vec::new();
    entry.extend_from_slice(&2u16.to_be_bytes());
    counted(&mut entry, REALM.as_bytes());
    counted(&mut entry, b"HTTP");
    counted(&mut entry, b"fuzz.test");
    entry.extend_from_slice(&3u32.to_be_bytes()); // KRB5_NT_SRV_HST
    entry.extend_from_slice(&0u32.to_be_bytes()); // timestamp
    entry.push(1); // key version
    entry.extend_from_slice(&18u16.to_be_bytes()); // aes256-cts-hmac-sha1-96
    counted(&mut entry, &[7; 32]);
    entry.extend_from_slice(&1u32.to_be_bytes());
    let mut out = vec![0x05, 0x02];
    out.extend_from_slice(&i32::try_from(entry.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&entry);
    out
}

fn spnego() -> &'static SpnegoAuthenticator {
    static S: OnceLock<SpnegoAuthenticator> = OnceLock::new();
    S.get_or_init(|| {
        // One file for every process (the same bytes), replaced atomically.
        let path = std::env::temp_dir().join("palisade-fuzz.keytab");
        let fresh = path.with_extension(format!("{}", std::process::id()));
        std::fs::write(&fresh, keytab()).unwrap();
        std::fs::rename(&fresh, &path).unwrap();
        // SAFETY: set once, before any other thread of the process starts
        // (which could read the environment meanwhile): a libFuzzer binary
        // runs this target alone, on one thread, and the replay test
        // prepares it first (`prepare`).
        unsafe { std::env::set_var("KRB5_KTNAME", format!("FILE:{}", path.display())) };
        let cookie = SessionCookie::new(COOKIE).key(KEY_ID, &KEY).unwrap();
        SpnegoAuthenticator::builder()
            .allowed_realm(REALM)
            .session_cookie(cookie)
            .build()
            .unwrap_or_else(|e| panic!("the SPNEGO authenticator with {}: {e}", path.display()))
    })
}

/// Builds the authenticator (and sets `KRB5_KTNAME`): call it before the
/// process starts other threads.
#[cfg(test)]
pub(crate) fn prepare() {
    let _ = spnego();
}

/// A session cookie value as the authenticator seals one, for `aad`.
fn seal(plaintext: &[u8], aad: &str) -> String {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).unwrap());
    let nonce = [3u8; 12];
    let mut data = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad.as_bytes()),
        &mut data,
    )
    .unwrap();
    let mut raw = vec![KEY_ID];
    raw.extend_from_slice(&nonce);
    raw.extend_from_slice(&data);
    URL_SAFE_NO_PAD.encode(raw)
}

/// What the authenticator answered, without waiting for GSSAPI.
#[derive(Debug)]
enum Answer {
    Gssapi,
    Outcome(AuthOutcome),
}

fn answer(headers: &[(&str, Vec<u8>)]) -> Answer {
    let mut req = OwnedRequest::get("/");
    for (name, value) in headers {
        req = req.header(name, value.clone());
    }
    match spnego().authenticate(&req) {
        Check::Ready(o) => Answer::Outcome(o),
        Check::Pending(_) => Answer::Gssapi,
    }
}

fn assert_refused(a: &Answer, what: &str) {
    match a {
        Answer::Outcome(AuthOutcome::Rejected(r)) => {
            assert_eq!(r.status(), 401, "{what}");
            assert_eq!(r.challenges(), ["Negotiate"], "{what}");
        }
        other => panic!("{what}: {other:?}, expected a refusal"),
    }
}

/// The Negotiate headers' tokens, as the oracle reads them: a header
/// value is text; the scheme is case-insensitive and followed by one space
/// (RFC 7235), the token is standard base64 with white space around it.
fn negotiate_tokens(authorizations: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
    authorizations
        .iter()
        .filter_map(|v| {
            let text = std::str::from_utf8(v).ok()?;
            let scheme = text.get(..10)?;
            scheme
                .eq_ignore_ascii_case("negotiate ")
                .then(|| STANDARD.decode(text[10..].trim()).ok())
        })
        .collect()
}

/// Whether a session cookie's plaintext is one the authenticator may
/// accept: `p` a principal of the allowed realm, `e` a time to come (at
/// least `margin` seconds from now).
fn acceptable_session(plaintext: &[u8], margin: i64) -> Option<String> {
    let v: Value = serde_json::from_slice(plaintext).ok()?;
    let principal = v.get("p")?.as_str()?;
    let expires = v.get("e")?.as_u64()?;
    let (_, realm) = principal.rsplit_once('@').unwrap_or((principal, ""));
    let now = i128::from(crate::common::now());
    (realm == REALM && i128::from(expires) > now + i128::from(margin)).then(|| principal.to_owned())
}

/// One input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut lines: Vec<&[u8]> = rest.split(|b| *b == b'\n').collect();
    let session = (mode & 1 == 1).then(|| lines.pop()).flatten();
    let mut headers: Vec<(&str, Vec<u8>)> = lines
        .iter()
        .map(|l| match l.strip_prefix(b"cookie ") {
            Some(c) => ("cookie", c.to_vec()),
            None => ("authorization", l.to_vec()),
        })
        .collect();
    let ours = mode & 2 == 0;
    if let Some(plaintext) = session {
        let aad = if ours { COOKIE } else { "other_cookie" };
        headers.push((
            "cookie",
            format!("{COOKIE}={}", seal(plaintext, aad)).into_bytes(),
        ));
    }
    let got = answer(&headers);
    let what = format!("{:?}", String::from_utf8_lossy(rest));
    let authorizations: Vec<&[u8]> = headers
        .iter()
        .filter(|(n, _)| *n == "authorization")
        .map(|(_, v)| v.as_slice())
        .collect();
    let oversized = authorizations.iter().any(|v| v.len() > DEFAULT_MAX_HEADER);
    let tokens = negotiate_tokens(&authorizations);

    if tokens.is_empty() && !oversized {
        let only_ours = ours && lines.iter().all(|l| !l.starts_with(b"cookie "));
        match &got {
            Answer::Outcome(AuthOutcome::NoCredential) => {
                if let Some(plaintext) = session.filter(|_| only_ours) {
                    assert!(
                        acceptable_session(plaintext, 2).is_none(),
                        "{what}: an acceptable session was not accepted"
                    );
                }
            }
            Answer::Outcome(AuthOutcome::Authenticated(a)) => {
                let plaintext = session.filter(|_| ours).unwrap_or_else(|| {
                    panic!("{what}: a session accepted from a cookie the target did not seal")
                });
                let principal = acceptable_session(plaintext, -2)
                    .unwrap_or_else(|| panic!("{what}: a session that is not acceptable was accepted"));
                let kerberos = a.identity.kerberos().expect("a Kerberos identity");
                assert_eq!(kerberos.principal, principal, "{what}");
                assert_eq!(kerberos.realm, REALM, "{what}");
            }
            other => panic!("{what}: no Negotiate header, answered {other:?}"),
        }
        return;
    }
    if tokens.len() > 1 {
        assert_refused(&got, &what);
        return;
    }
    if let Answer::Gssapi = got {
        assert!(!oversized, "{what}: an oversized header reached GSSAPI");
        let [Some(token)] = tokens.as_slice() else {
            panic!("{what}: GSSAPI reached without one well-formed token")
        };
        let kind = inspect_token(token);
        assert!(
            matches!(kind, TokenKind::SpnegoKerberos | TokenKind::Kerberos),
            "{what}: {kind:?}"
        );
        assert_eq!(token.first(), Some(&0x60), "{what}");
        return;
    }
    assert_refused(&got, &what);
    // Refused for what it is: refused however it is written.
    let [Some(token)] = tokens.as_slice() else { return };
    if oversized || token.len() > DEFAULT_MAX_HEADER / 2 {
        return;
    }
    let others: Vec<(&str, Vec<u8>)> = headers
        .iter()
        .filter(|(n, _)| *n != "authorization")
        .cloned()
        .collect();
    for written in [
        format!("negotiate {}", STANDARD.encode(token)),
        format!("NEGOTIATE  {}\t", STANDARD.encode(token)),
        format!("Negotiate {}", STANDARD_NO_PAD.encode(token)),
        format!("Negotiate {}", URL_SAFE.encode(token)),
        format!("Negotiate {}", URL_SAFE_NO_PAD.encode(token)),
    ] {
        let mut again = others.clone();
        again.push(("authorization", written.clone().into_bytes()));
        let got = answer(&again);
        assert!(
            !matches!(
                got,
                Answer::Gssapi | Answer::Outcome(AuthOutcome::Authenticated(_))
            ),
            "{what}: refused, but {written:?} was not ({got:?})"
        );
    }
}
