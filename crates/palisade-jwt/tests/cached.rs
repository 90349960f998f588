//! The verified-token cache's answers: a token seen before is answered
//! without being verified again, and still under every rule a fresh one
//! meets (its lifetime, where it may come from).

use std::time::Duration;

use palisade_core::authn::{AuthOutcome, Authenticator, OwnedRequest};
use palisade_core::{Check, ErrorKind};
use palisade_jwt::{JwtAuthenticator, Provider, TokenSource};
use palisade_testkit::TestIssuer;

fn authenticator(
    issuer: &TestIssuer,
    provider: impl FnOnce(palisade_jwt::ProviderBuilder) -> palisade_jwt::ProviderBuilder,
) -> JwtAuthenticator {
    let p = provider(
        Provider::builder(issuer.issuer())
            .audience("api")
            .jwks_inline(issuer.jwks().to_string()),
    );
    JwtAuthenticator::builder()
        .provider(p.build().unwrap())
        .build()
        .unwrap()
}

/// The outcome of `req`, which must be decided without waiting.
fn outcome(jwt: &JwtAuthenticator, req: &OwnedRequest) -> AuthOutcome {
    match jwt.authenticate(req) {
        Check::Ready(o) => o,
        Check::Pending(_) => panic!("a token with an inline key set waited"),
    }
}

fn bearer(token: &str) -> OwnedRequest {
    OwnedRequest::get("/").header("authorization", format!("Bearer {token}"))
}

fn refusal(o: &AuthOutcome) -> Option<(ErrorKind, String)> {
    match o {
        AuthOutcome::Rejected(r) => Some((r.kind(), r.detail().to_owned())),
        _ => None,
    }
}

#[test]
fn a_cached_token_is_refused_once_it_expires() {
    let issuer = TestIssuer::builder().default_audience("api").start().unwrap();
    let jwt = authenticator(&issuer, |p| p.leeway(Duration::ZERO));
    let token = issuer.token().expires_in(2).sign();
    // Verified, then answered from the cache (from this thread's own copy
    // after the third request).
    for _ in 0..4 {
        assert!(matches!(
            outcome(&jwt, &bearer(&token)),
            AuthOutcome::Authenticated(_)
        ));
    }
    std::thread::sleep(Duration::from_millis(2100));
    let o = outcome(&jwt, &bearer(&token));
    assert_eq!(
        refusal(&o),
        Some((ErrorKind::InvalidToken, "the token has expired".to_owned())),
        "{o:?}"
    );
}

#[test]
fn a_cached_token_padded_with_spaces_is_the_same_token() {
    let issuer = TestIssuer::builder().default_audience("api").start().unwrap();
    let jwt = authenticator(&issuer, |p| p);
    let token = issuer.token().subject("alice").sign();
    for req in [bearer(&token), bearer(&format!("  {token} ")), bearer(&token)] {
        match outcome(&jwt, &req) {
            AuthOutcome::Authenticated(a) => assert_eq!(a.identity.subject(), Some("alice")),
            o => panic!("{o:?}"),
        }
    }
}

#[test]
fn a_cached_token_is_refused_where_its_issuer_does_not_accept_it() {
    let issuer = TestIssuer::builder().default_audience("api").start().unwrap();
    let other = TestIssuer::builder().default_audience("api").start().unwrap();
    // `issuer` reads only `x-token`; `other` only `Authorization: Bearer`.
    let jwt = JwtAuthenticator::builder()
        .provider(
            Provider::builder(issuer.issuer())
                .audience("api")
                .jwks_inline(issuer.jwks().to_string())
                .source(TokenSource::Header {
                    name: "x-token".into(),
                    prefix: None,
                })
                .build()
                .unwrap(),
        )
        .provider(
            Provider::builder(other.issuer())
                .audience("api")
                .jwks_inline(other.jwks().to_string())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let token = issuer.token().sign();
    let right = OwnedRequest::get("/").header("x-token", token.clone());
    // Cached from the right place (and copied to this thread's front on
    // the third request, its second cache hit), then sent in the wrong one.
    for _ in 0..4 {
        assert!(matches!(outcome(&jwt, &right), AuthOutcome::Authenticated(_)));
    }
    let o = outcome(&jwt, &bearer(&token));
    assert!(refusal(&o).is_some(), "{o:?}");
    assert!(matches!(outcome(&jwt, &right), AuthOutcome::Authenticated(_)));
}
