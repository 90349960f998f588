//! Instructions per request under `valgrind --tool=callgrind`: a repeatable
//! companion to the timed benches on a noisy shared machine. Runs one
//! scenario N times; `benches/instructions.sh` counts only the request loop
//! (`--toggle-collect` on [`requests`]), at two counts, and divides the
//! difference, which cancels what the first request does once (verifying
//! the token, lazy set-up).
//!
//! `instructions SCENARIO N`, SCENARIO one of `axum-baseline`,
//! `axum-cached` (the layer added with `Router::layer`),
//! `axum-service-cached` (the layer around the router, as
//! `palisade::axum::serve` is given it), `axum-wrap-cached`
//! (`PalisadeLayer::wrap`), `axum-floor`, `axum-service-refused` (a bearer
//! that is no JWT, answered 401), `actix-baseline`, `actix-cached`,
//! `actix-floor`, `actix-refused`.
//!
//! The floors make only the edits a guard makes by default to a request it
//! lets through, with nothing checked: drop the token's header (Istio's
//! `forwardOriginalToken: false`) and hand the handler a record of the
//! caller ([`Floor`]). A floor is a lower bound: it cannot refuse, so its
//! future and body are the app's own.
//!
//! Before the loop, each scenario's app is asked what it was handed
//! (`/probe`), so a floor or a guard that made no edit stops the bench; and
//! the loop's request is sent once and its answer checked (200 without a
//! challenge, or 401 with `error="invalid_token"`), so a scenario measures
//! the path it names.

use std::hint::black_box;

use actix_web::{App, HttpMessage, HttpResponse, web};
use axum::body::Body;
use axum::routing::get;
use palisade::jwt::{JwtAuthenticator, Provider};
use palisade::testkit::{SigningAlgorithm, TestIssuer};
use tower::ServiceExt;

#[path = "../../examples/common/floor.rs"]
mod floor;
use floor::Floor;

fn guard(issuer: &TestIssuer) -> palisade::core::Guard {
    let jwt = JwtAuthenticator::builder()
        .realm("bench")
        .provider(
            Provider::builder(issuer.issuer())
                .audience("bench")
                .jwks_inline(issuer.jwks().to_string())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    palisade::core::Guard::builder()
        .authenticator(jwt)
        .build()
        .unwrap()
}

/// The measured loop: `n` requests, each made by `request` and answered
/// `want` (200, or 401 for a refused token). The only function the
/// script counts.
#[inline(never)]
fn requests(n: u32, want: u16, mut request: impl FnMut() -> u16) {
    for _ in 0..n {
        assert_eq!(black_box(request()), want);
    }
}

/// What the loop sends: the issuer's cached token, answered 200, or a
/// bearer that is no JWT, which Palisade refuses with 401 and its
/// challenge (a flood of bad tokens).
#[derive(Clone, Copy)]
enum Sent {
    Cached,
    Refused,
}

impl Sent {
    fn bearer(self, token: &str) -> &str {
        match self {
            Sent::Cached => token,
            Sent::Refused => "not-a-jwt",
        }
    }

    fn status(self) -> u16 {
        match self {
            Sent::Cached => 200,
            Sent::Refused => 401,
        }
    }
}

/// An axum app (any tower service of the router) under `n` requests,
/// `edited` by Palisade, a floor or nothing; the probe is sent the cached
/// token, the loop what `sent` says.
fn axum_requests<S, B>(app: S, edited: Edits, token: &str, sent: Sent, n: u32)
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = std::convert::Infallible>
        + Clone,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let send = |path: &str, token: &str| {
        let req = http::Request::get(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        rt.block_on(app.clone().oneshot(req)).unwrap()
    };
    check_edits(send("/probe", token).status().as_u16(), edited);
    let bearer = sent.bearer(token);
    let first = send("/", bearer);
    check_answer(
        sent,
        first.status().as_u16(),
        first
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
    );
    requests(n, sent.status(), || send("/", bearer).status().as_u16());
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(scenario), Some(n)) = (args.next(), args.next().and_then(|n| n.parse::<u32>().ok())) else {
        eprintln!("usage: instructions SCENARIO N");
        std::process::exit(2);
    };
    // EdDSA: the cheapest key to make under valgrind; a cached token never
    // reaches the signature check anyway.
    let issuer = TestIssuer::builder()
        .algorithm(SigningAlgorithm::EdDsa)
        .default_audience("bench")
        .start()
        .unwrap();
    let token = issuer.token().sign();
    let router = || {
        axum::Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/probe", get(axum_probe))
    };
    let layer = || palisade::axum::PalisadeLayer::new(guard(&issuer));
    // Routers are bound to their state once, as `axum::serve` does, not per
    // request.
    match scenario.as_str() {
        "axum-baseline" => axum_requests(router().with_state(()), Edits::None, &token, Sent::Cached, n),
        "axum-cached" => axum_requests(
            router().layer(layer()).with_state(()),
            Edits::Palisade,
            &token,
            Sent::Cached,
            n,
        ),
        "axum-service-cached" | "axum-service-refused" => axum_requests(
            tower::Layer::layer(&layer(), router().with_state(())),
            Edits::Palisade,
            &token,
            if scenario.ends_with("refused") {
                Sent::Refused
            } else {
                Sent::Cached
            },
            n,
        ),
        "axum-wrap-cached" => axum_requests(layer().wrap(router()), Edits::Palisade, &token, Sent::Cached, n),
        "axum-floor" => axum_requests(
            Floor::new().around(router().with_state(())),
            Edits::Floor,
            &token,
            Sent::Cached,
            n,
        ),
        "actix-baseline" => actix_requests(Edits::None, &issuer, &token, Sent::Cached, n),
        "actix-cached" => actix_requests(Edits::Palisade, &issuer, &token, Sent::Cached, n),
        "actix-refused" => actix_requests(Edits::Palisade, &issuer, &token, Sent::Refused, n),
        "actix-floor" => actix_requests(Edits::Floor, &issuer, &token, Sent::Cached, n),
        other => panic!("unknown scenario {other}"),
    }
}

/// An actix-web app under `n` requests, `edited` by Palisade (guarding
/// with `issuer`'s tokens), a floor or nothing. Both wrappers are always
/// there, in actix-web's `Condition`, switched on as `edited` says. The
/// probe is sent the cached token, the loop what `sent` says.
fn actix_requests(edited: Edits, issuer: &TestIssuer, token: &str, sent: Sent, n: u32) {
    let system = actix_web::rt::System::new();
    let route = || web::get().to(|| async { HttpResponse::Ok().body("ok") });
    let palisade = match edited {
        Edits::Palisade => guard(issuer),
        Edits::None | Edits::Floor => palisade::core::Guard::builder()
            .access_policy(palisade::core::authz::AccessPolicy::allow_all())
            .build()
            .unwrap(),
    };
    let app = system.block_on(actix_web::test::init_service(
        App::new()
            .wrap(actix_web::middleware::Condition::new(
                matches!(edited, Edits::Palisade),
                palisade::actix::Palisade::new(palisade),
            ))
            .wrap(actix_web::middleware::Condition::new(
                matches!(edited, Edits::Floor),
                Floor::new(),
            ))
            .route("/", route())
            .route("/probe", web::get().to(actix_probe)),
    ));
    let send = |path: &str, token: &str| {
        let req = actix_web::test::TestRequest::get()
            .uri(path)
            .append_header(("authorization", format!("Bearer {token}")))
            .to_request();
        system.block_on(actix_web::test::call_service(&app, req))
    };
    check_edits(send("/probe", token).status().as_u16(), edited);
    let bearer = sent.bearer(token);
    let first = send("/", bearer);
    check_answer(
        sent,
        first.status().as_u16(),
        first
            .headers()
            .get(actix_web::http::header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
    );
    requests(n, sent.status(), || send("/", bearer).status().as_u16());
}

/// Stops the bench unless the loop's request is answered as `sent` means:
/// 200 without a challenge for the cached token; for the bearer that is no
/// JWT, 401 with the challenge of a token refused as invalid (RFC 6750's
/// `error="invalid_token"`), so the refused scenarios cannot measure
/// another refusal (a missing credential's, which has no `error`).
fn check_answer(sent: Sent, status: u16, challenge: Option<&[u8]>) {
    let challenge = challenge.map(String::from_utf8_lossy);
    match sent {
        Sent::Cached => assert!(
            status == 200 && challenge.is_none(),
            "the cached token was answered {status}, challenge {challenge:?}"
        ),
        Sent::Refused => assert!(
            status == 401
                && challenge
                    .as_deref()
                    .is_some_and(|c| c.starts_with("Bearer ") && c.contains(r#"error="invalid_token""#)),
            "the bearer that is no JWT was answered {status}, challenge {challenge:?}: not the refusal the scenario measures"
        ),
    }
}

/// Who edits a scenario's requests.
#[derive(Clone, Copy)]
enum Edits {
    None,
    Palisade,
    Floor,
}

/// What `/probe` answers: 200, plus 1 when the token's header reached
/// the app, 2 when Palisade's record did, 4 when a floor's did.
fn probe_status(header: bool, palisade: bool, floor: bool) -> u16 {
    200 + u16::from(header) + 2 * u16::from(palisade) + 4 * u16::from(floor)
}

/// Stops the bench unless the probe saw what the scenario's editor does:
/// the header kept and no record without one, else the header gone and
/// that editor's record there.
fn check_edits(status: u16, edited: Edits) {
    let want = match edited {
        Edits::None => probe_status(true, false, false),
        Edits::Palisade => probe_status(false, true, false),
        Edits::Floor => probe_status(false, false, true),
    };
    assert_eq!(
        status, want,
        "/probe: the app was not handed what the scenario says (200, + 1 for the header, + 2 for Palisade's record, + 4 for a floor's)"
    );
}

async fn axum_probe(req: http::Request<Body>) -> http::StatusCode {
    let ext = req.extensions();
    let status = probe_status(
        req.headers().contains_key(http::header::AUTHORIZATION),
        ext.get::<palisade::core::RequestAuth>().is_some(),
        ext.get::<Floor>().is_some(),
    );
    http::StatusCode::from_u16(status).unwrap()
}

async fn actix_probe(req: actix_web::HttpRequest) -> HttpResponse {
    let ext = req.extensions();
    let status = probe_status(
        req.headers().contains_key(actix_web::http::header::AUTHORIZATION),
        ext.get::<palisade::core::RequestAuth>().is_some(),
        ext.get::<Floor>().is_some(),
    );
    HttpResponse::new(actix_web::http::StatusCode::from_u16(status).unwrap())
}
