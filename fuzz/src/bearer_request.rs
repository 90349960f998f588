//! Request heads (target, `Authorization`, `Cookie`) through the JWT
//! authenticator's token extraction and verification, which reads tokens
//! from `Authorization: Bearer`, the cookie `session` and the query
//! parameter `access_token`.
//!
//! The first byte picks the mode. Odd: free text, `target` NEWLINE
//! `authorization` NEWLINE `cookie` NEWLINE `authorization`; the answer
//! must be an outcome, a refusal 400 or 401, never a panic. Even: the next
//! bytes are pairs (place, content) placing a credential: a valid token
//! (signed by the fuzzing key), the same with white space around it, an
//! empty one or a string of token characters from the rest of the input,
//! in one of the places a token is read from or a place it is not (another
//! scheme, another cookie, another parameter, `Bearer` without its space).
//! The oracle, RFC 6750 and Istio's rules: no token is no credential; two
//! or more are a 400 (`invalid_request`) whatever they are; one is the
//! caller when it is valid, else a 401.

use std::sync::OnceLock;

use palisade_core::authn::{AuthOutcome, Authenticator, OwnedRequest};
use palisade_jwt::{JwtAuthenticator, Provider, TokenSource};

use crate::common::{signer, wait};

const ISSUER: &str = "https://issuer.example";

fn jwt() -> &'static JwtAuthenticator {
    static J: OnceLock<JwtAuthenticator> = OnceLock::new();
    J.get_or_init(|| {
        JwtAuthenticator::builder()
            .provider(
                Provider::builder(ISSUER)
                    .audience("api")
                    .jwks_inline(format!(r#"{{"keys":[{}]}}"#, signer().jwk))
                    .source(TokenSource::authorization_bearer())
                    .source(TokenSource::Cookie("session".into()))
                    .source(TokenSource::Query("access_token".into()))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    })
}

fn valid_token() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| {
        signer().sign(
            "",
            &format!(r#"{{"iss":"{ISSUER}","aud":"api","sub":"alice","exp":4102444800}}"#),
        )
    })
}

/// A place a credential can be put, and whether tokens are read there.
#[derive(Clone, Copy, Debug)]
enum Place {
    Bearer,
    BearerUpperCase,
    BearerNoSpace,
    Basic,
    SessionCookie,
    OtherCookie,
    AccessTokenParameter,
    OtherParameter,
}

impl Place {
    const ALL: [Place; 8] = [
        Place::Bearer,
        Place::BearerUpperCase,
        Place::BearerNoSpace,
        Place::Basic,
        Place::SessionCookie,
        Place::OtherCookie,
        Place::AccessTokenParameter,
        Place::OtherParameter,
    ];

    fn read(self) -> bool {
        matches!(
            self,
            Place::Bearer | Place::BearerUpperCase | Place::SessionCookie | Place::AccessTokenParameter
        )
    }
}

fn raw(text: &str) {
    let mut parts = text.splitn(4, '\n');
    let target = parts.next().unwrap_or("/");
    let mut req = OwnedRequest::get(target);
    for (name, value) in [
        ("authorization", parts.next()),
        ("cookie", parts.next()),
        ("authorization", parts.next()),
    ] {
        if let Some(v) = value {
            req = req.header(name, v.as_bytes().to_vec());
        }
    }
    match wait(jwt().authenticate(&req)) {
        AuthOutcome::Rejected(r) => assert!(matches!(r.status(), 400 | 401), "{r:?}"),
        AuthOutcome::Authenticated(a) => assert_eq!(a.identity.subject(), Some("alice")),
        AuthOutcome::NoCredential => {}
        other => panic!("{other:?}"),
    }
}

fn placed(pairs: &[u8], garbage: &str) {
    let mut query = Vec::new();
    let mut req_headers: Vec<(&str, String)> = Vec::new();
    let mut read = Vec::new();
    for pair in pairs.chunks_exact(2).take(4) {
        let place = Place::ALL[usize::from(pair[0]) % Place::ALL.len()];
        let (content, valid) = match pair[1] % 4 {
            0 => (valid_token().to_owned(), true),
            1 => (format!(" {} ", valid_token()), true),
            2 => (String::new(), false),
            _ => (garbage.to_owned(), false),
        };
        match place {
            Place::Bearer => req_headers.push(("authorization", format!("Bearer {content}"))),
            Place::BearerUpperCase => req_headers.push(("authorization", format!("BEARER {content}"))),
            Place::BearerNoSpace => {
                req_headers.push(("authorization", format!("Bearer{}", content.trim_start())))
            }
            Place::Basic => req_headers.push(("authorization", format!("Basic {content}"))),
            Place::SessionCookie => req_headers.push(("cookie", format!("theme=dark; session={content}"))),
            Place::OtherCookie => req_headers.push(("cookie", format!("sessions={content}"))),
            Place::AccessTokenParameter => query.push(format!("access_token={content}")),
            Place::OtherParameter => query.push(format!("token={content}")),
        }
        if place.read() {
            read.push(valid);
        }
    }
    let target = if query.is_empty() {
        "/items".to_owned()
    } else {
        format!("/items?{}", query.join("&"))
    };
    let mut req = OwnedRequest::get(&target);
    for (name, value) in &req_headers {
        req = req.header(name, value.clone().into_bytes());
    }
    let outcome = wait(jwt().authenticate(&req));
    let what = format!("{target} {req_headers:?}");
    match (read.as_slice(), outcome) {
        ([], AuthOutcome::NoCredential) => {}
        ([true], AuthOutcome::Authenticated(a)) => assert_eq!(a.identity.subject(), Some("alice"), "{what}"),
        ([false], AuthOutcome::Rejected(r)) => assert_eq!(r.status(), 401, "{what}: {r:?}"),
        ([_, _, ..], AuthOutcome::Rejected(r)) => assert_eq!(r.status(), 400, "{what}: {r:?}"),
        (read, outcome) => panic!("{what}: tokens read {read:?}, answered {outcome:?}"),
    }
}

/// One input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        raw(&String::from_utf8_lossy(rest));
        return;
    }
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(n % 5) * 2;
    let (pairs, rest) = rest.split_at(n.min(rest.len()));
    // Token characters only: the garbage stays one value in each place.
    let garbage: String = String::from_utf8_lossy(rest)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(512)
        .collect();
    placed(pairs, &garbage);
}
