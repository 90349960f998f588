//! Outbound credentials against the testkit issuer over real HTTP: the
//! client-credentials token shared, renewed and kept through an outage;
//! the tower layer and the reqwest helper attaching what each host gets;
//! the policy file's `UpstreamCredentials` documents.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_client::{
    CallerToken, ClientCredentials, ClientError, Credentials, CredentialsLayer, TokenExchange, Upstreams,
};
use palisade_core::policy::{FromPolicy, PolicySet, Workload};
use palisade_testkit::TestIssuer;
use tower::{Layer, Service, ServiceExt};

const SECRET: &str = "productpage-secret";

fn issuer(lifetime: Duration) -> TestIssuer {
    TestIssuer::builder()
        .client("productpage", SECRET)
        .token_lifetime(lifetime)
        .start()
        .unwrap()
}

fn grant(issuer: &TestIssuer, renew_before: Duration) -> ClientCredentials {
    ClientCredentials::builder(issuer.issuer(), "productpage")
        .client_secret(SECRET)
        .audience("details")
        .renew_before(renew_before)
        .build()
        .unwrap()
}

/// The claims of a `Bearer <jwt>` header value.
fn claims(header: &str) -> serde_json::Value {
    use base64::Engine as _;
    let jwt = header.strip_prefix("Bearer ").unwrap();
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_grant_serves_concurrent_calls_and_names_the_audience() {
    let issuer = issuer(Duration::from_secs(300));
    let own = grant(&issuer, Duration::from_secs(30));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let own = own.clone();
        tasks.push(tokio::spawn(async move { own.authorization().await.unwrap() }));
    }
    let mut headers = Vec::new();
    for t in tasks {
        headers.push(t.await.unwrap());
    }
    assert!(headers.windows(2).all(|w| w[0] == w[1]), "one token for all");
    assert_eq!(
        issuer.client_credentials_grants(),
        1,
        "one grant for sixteen calls"
    );
    let c = claims(&headers[0]);
    assert_eq!(c["sub"], "productpage");
    assert_eq!(c["aud"], "details");
    assert!(!format!("{own:?}").contains(SECRET), "{own:?}");
}

/// The request that started the grant goes away before the issuer answers
/// (a client hanging up, a deadline above the layer): the grant goes on,
/// the request that waited gets its token, and it is kept for the next,
/// rather than asked for again by each request in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_outlives_the_request_that_started_it() {
    let issuer = issuer(Duration::from_secs(300));
    issuer.delay_client_credentials_answers(Duration::from_millis(400));
    let own = grant(&issuer, Duration::from_secs(30));
    let ask = || {
        let own = own.clone();
        tokio::spawn(async move { own.authorization().await })
    };
    let first = ask();
    // The first request has reached the issuer (which answers 400 ms
    // later) before it is abandoned: the grant under way is its.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while issuer.client_credentials_grants() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first grant was never asked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = ask();
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.abort();
    let second = second.await.unwrap().unwrap();
    assert!(second.starts_with("Bearer "), "{second}");
    assert_eq!(
        issuer.client_credentials_grants(),
        1,
        "one grant for both requests"
    );
    // Kept: the next request uses it without asking.
    assert_eq!(own.authorization().await.unwrap(), second);
    assert_eq!(issuer.client_credentials_grants(), 1);
}

/// An issuer that grants tokens for less time than it takes to answer:
/// each token is due for renewal as it arrives. The calls that waited for
/// it still share it, rather than each asking for one more in turn, one
/// round trip after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_a_token_due_on_arrival_share_it() {
    let issuer = issuer(Duration::from_secs(1));
    issuer.delay_client_credentials_answers(Duration::from_millis(600));
    let own = grant(&issuer, Duration::from_secs(30));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let own = own.clone();
            tokio::spawn(async move { own.authorization().await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap().starts_with("Bearer "));
    }
    // One grant, or two when a call arrived after the first was sent.
    let grants = issuer.client_credentials_grants();
    assert!(grants <= 2, "{grants} grants for eight calls waiting together");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_renewed_before_it_expires_and_kept_while_the_issuer_is_down() {
    // Tokens live 8 s and are renewed when less than 4 s are left: seconds
    // of margin on each side of every step, for a loaded machine.
    let issuer = issuer(Duration::from_secs(8));
    let own = grant(&issuer, Duration::from_secs(4));
    let first = own.authorization().await.unwrap();
    assert_eq!(own.authorization().await.unwrap(), first, "still fresh");
    tokio::time::sleep(Duration::from_millis(4_600)).await;
    // Due: answered at once with the token at hand, renewed meanwhile.
    assert_eq!(own.authorization().await.unwrap(), first, "no call waits");
    let mut second = first.clone();
    for _ in 0..100 {
        second = own.authorization().await.unwrap();
        if second != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(second, first, "renewed in the background");
    // The second token ends at most 8 s from here.
    let granted = std::time::Instant::now();
    assert_eq!(issuer.client_credentials_grants(), 2, "renewed when due, once");
    // The issuer goes away: the current token is used while it is valid.
    drop(issuer);
    tokio::time::sleep(Duration::from_millis(4_600)).await;
    assert_eq!(
        own.authorization().await.unwrap(),
        second,
        "the issuer is down: the valid token is kept"
    );
    tokio::time::sleep(Duration::from_millis(8_500).saturating_sub(granted.elapsed())).await;
    assert!(
        matches!(own.authorization().await, Err(ClientError::Unavailable(_))),
        "expired and nothing to renew it with"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_by_the_issuer() {
    let issuer = issuer(Duration::from_secs(300));
    let own = ClientCredentials::builder(issuer.issuer(), "productpage")
        .client_secret("wrong")
        .build()
        .unwrap();
    for _ in 0..5 {
        match own.authorization().await {
            Err(ClientError::Refused(code)) => assert_eq!(code, "invalid_client"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        issuer.token_requests(),
        1,
        "a refusal is every call's answer for a second, not asked again"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(matches!(own.authorization().await, Err(ClientError::Refused(_))));
    assert_eq!(issuer.token_requests(), 2, "asked again after a second");
    assert!(
        ClientCredentials::builder(issuer.issuer(), "productpage")
            .build()
            .is_err(),
        "no secret"
    );
}

/// What a recorder saw: each request's `Authorization` header.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// A client service that records the `Authorization` header it is sent
/// and answers 200.
fn recorder() -> (
    impl Service<http::Request<()>, Response = http::Response<()>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Seen,
) {
    let (svc, seen, _) = refusing_upstream();
    (svc, seen)
}

/// The inner service is asked to be ready once the call's token is had,
/// not while it is being granted: a call waiting for the issuer holds no
/// place in the inner service (a tonic channel's buffer, a concurrency
/// limit) that other calls need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inner_service_is_made_ready_once_the_token_is_had() {
    #[derive(Clone)]
    struct Inner {
        issuer: Arc<TestIssuer>,
        grants_when_ready: Arc<Mutex<Vec<usize>>>,
    }
    impl Service<http::Request<()>> for Inner {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<()>, Infallible>>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
            self.grants_when_ready
                .lock()
                .unwrap()
                .push(self.issuer.client_credentials_grants());
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(())))
        }
    }
    let issuer = Arc::new(issuer(Duration::from_secs(300)));
    let grants_when_ready = Arc::new(Mutex::new(Vec::new()));
    let inner = Inner {
        issuer: Arc::clone(&issuer),
        grants_when_ready: Arc::clone(&grants_when_ready),
    };
    let own = Credentials::ClientCredentials(grant(&issuer, Duration::from_secs(30)));
    let svc = CredentialsLayer::fixed(own).layer(inner);
    let res = svc
        .oneshot(http::Request::get("http://details:9080/").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        *grants_when_ready.lock().unwrap(),
        [1],
        "asked once, after the grant"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_attaches_what_each_host_gets_and_sends_nothing_without_a_needed_token() {
    let issuer = issuer(Duration::from_secs(300));
    let upstreams = Upstreams::builder()
        .host(
            "details",
            Credentials::ClientCredentials(grant(&issuer, Duration::from_secs(30))),
        )
        .host("Reviews", Credentials::Caller)
        .build();
    let (inner, seen) = recorder();
    let svc = CredentialsLayer::new(upstreams).layer(inner);
    let req = |uri: &str| http::Request::get(uri).body(()).unwrap();

    svc.clone()
        .oneshot(req("http://details:9080/details/0"))
        .await
        .unwrap();
    let mut with_caller = req("http://reviews:9080/reviews/0");
    with_caller
        .extensions_mut()
        .insert(CallerToken::new("the-users-token"));
    svc.clone().oneshot(with_caller).await.unwrap();
    // A host no entry names: nothing, and an Authorization the request
    // carried (forwarded from the inbound one, say) is removed.
    let mut forwarded = req("http://ratings:9080/ratings/0");
    forwarded
        .headers_mut()
        .insert(http::header::AUTHORIZATION, "Bearer inbound".parse().unwrap());
    svc.clone().oneshot(forwarded).await.unwrap();
    // An origin-form URI names no host; its Host header is not trusted.
    let mut origin_form = req("/details/0");
    origin_form
        .headers_mut()
        .insert(http::header::HOST, "details:9080".parse().unwrap());
    assert!(
        svc.clone().oneshot(origin_form).await.is_err(),
        "no host, no call"
    );
    // A caller token is needed and there is none: an error, nothing sent.
    let err = svc
        .clone()
        .oneshot(req("http://reviews:9080/reviews/0"))
        .await
        .unwrap_err();
    assert!(
        matches!(ClientError::of(&*err), Some(ClientError::NoCallerToken)),
        "{err}"
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "the refused call was never sent: {seen:?}");
    assert_eq!(claims(seen[0].as_deref().unwrap())["sub"], "productpage");
    assert_eq!(seen[1].as_deref(), Some("Bearer the-users-token"));
    assert_eq!(seen[2], None, "a host no entry names gets nothing");

    // A client bound to one upstream (a tonic channel): path-only URIs.
    let (inner, seen) = recorder();
    let fixed = CredentialsLayer::fixed(Credentials::Caller).layer(inner);
    let mut path_only = req("/ratings.Ratings/Get");
    path_only
        .extensions_mut()
        .insert(CallerToken::new("the-users-token"));
    fixed.oneshot(path_only).await.unwrap();
    assert_eq!(seen.lock().unwrap()[0].as_deref(), Some("Bearer the-users-token"));
}

/// What a refusing upstream answers: 401 with this challenge, or (`None`)
/// 200.
type Answer = Arc<Mutex<Option<&'static str>>>;

/// An upstream that answers as its [`Answer`] says, and records each
/// call's `Authorization`.
fn refusing_upstream() -> (
    impl Service<http::Request<()>, Response = http::Response<()>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Seen,
    Answer,
) {
    let (seen, answer) = (Seen::default(), Answer::default());
    let (log, says) = (Arc::clone(&seen), Arc::clone(&answer));
    let svc = tower::service_fn(move |req: http::Request<()>| {
        let (log, says) = (Arc::clone(&log), Arc::clone(&says));
        async move {
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            log.lock().unwrap().push(auth);
            let mut res = http::Response::new(());
            if let Some(challenge) = *says.lock().unwrap() {
                *res.status_mut() = http::StatusCode::UNAUTHORIZED;
                res.headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, challenge.parse().unwrap());
            }
            Ok::<_, Infallible>(res)
        }
    });
    (svc, seen, answer)
}

/// Spring Security's answer to an upstream that refuses the workload's
/// token (revoked, signed with a retired key): the layer has it renewed,
/// in the background, and calls soon carry the new one; not a fresh one,
/// which a new token would not mend, and not for a refusal that blames
/// something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_upstream_refuses_is_renewed_once_past_its_first_quarter() {
    // Tokens that live 8 s: fresh for their first 2 s.
    let issuer = issuer(Duration::from_secs(8));
    let own = Credentials::ClientCredentials(grant(&issuer, Duration::from_secs(1)));
    let (upstream, seen, answer) = refusing_upstream();
    let svc = CredentialsLayer::new(Upstreams::builder().host("details", own).build()).layer(upstream);
    let call = || {
        svc.clone().oneshot(
            http::Request::get("http://details:9080/details/0")
                .body(())
                .unwrap(),
        )
    };
    let answers = |challenge: Option<&'static str>| *answer.lock().unwrap() = challenge;
    answers(Some("Bearer error=\"invalid_token\""));
    call().await.unwrap();
    call().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    answers(Some("Bearer realm=\"details\", error=\"invalid_request\""));
    call().await.unwrap();
    call().await.unwrap();
    answers(Some(
        "Bearer realm=\"details\", error=\"invalid_token\", error_description=\"revoked\"",
    ));
    call().await.unwrap();
    let first = seen.lock().unwrap()[0].clone();
    assert!(
        seen.lock().unwrap().iter().all(|t| *t == first),
        "a fresh token, or one refused for the call's fault, is kept"
    );
    // Renewed in the background: the refused one meanwhile, then the new.
    answers(None);
    let renewed = async {
        loop {
            call().await.unwrap();
            let last = seen.lock().unwrap().last().cloned().unwrap();
            if last != first {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let new = tokio::time::timeout(Duration::from_secs(5), renewed)
        .await
        .expect("the refused token is still sent");
    call().await.unwrap();
    assert_eq!(seen.lock().unwrap().last(), Some(&new), "the new one is kept");
    assert_eq!(issuer.client_credentials_grants(), 2);
}

/// The same for a token exchanged for the caller's, told by hand (as a
/// `reqwest` client does): only that caller's exchange is renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_token_the_upstream_refuses_is_exchanged_again() {
    let (issuer, exchange) = short_exchange();
    let upstreams = Upstreams::builder()
        .host("reviews", Credentials::TokenExchange(exchange.clone()))
        .build();
    let alice = CallerToken::new(&issuer.token().subject("alice").audience("productpage").sign());
    let bob = CallerToken::new(&issuer.token().subject("bob").audience("productpage").sign());
    let client = reqwest::Client::new();
    let apply = async |caller: &CallerToken| {
        let mut req = client.get("http://reviews:9080/reviews/0").build().unwrap();
        let sent = upstreams.apply(&mut req, Some(caller)).await.unwrap();
        (req.headers()[http::header::AUTHORIZATION].clone(), sent)
    };
    let (alices, sent) = apply(&alice).await;
    let (bobs, _) = apply(&bob).await;
    let refused = http::StatusCode::UNAUTHORIZED;
    sent.answered(refused, &http::HeaderMap::new()).unwrap();
    assert_eq!(apply(&alice).await.0, alices, "fresh: kept");
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    sent.answered(http::StatusCode::FORBIDDEN, &http::HeaderMap::new())
        .unwrap();
    assert_eq!(apply(&alice).await.0, alices, "403 is no refusal of the token");
    sent.answered(refused, &http::HeaderMap::new()).unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let now = apply(&alice).await.0;
            if now != alices {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("not exchanged again");
    assert_eq!(apply(&alice).await.0, again, "the new exchange is kept");
    assert_eq!(apply(&bob).await.0, bobs, "another caller's exchange is kept");
    assert_eq!(issuer.token_exchanges(), 3);
    assert!(!format!("{sent:?}").contains("Bearer"), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_on_a_failing_issuer_share_its_failure_and_a_call_a_second_later_retries() {
    let issuer = issuer(Duration::from_secs(300));
    let own = grant(&issuer, Duration::from_secs(30));
    issuer.set_fault(palisade_testkit::Fault::Unavailable);
    // The failure comes after 500 ms, so all eight calls are waiting for it.
    issuer.set_latency(Duration::from_millis(500));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let own = own.clone();
        tasks.push(tokio::spawn(async move { own.authorization().await }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(ClientError::Unavailable(_))));
    }
    assert_eq!(
        issuer.discovery_fetches(),
        1,
        "one request to the failing issuer for eight waiting calls"
    );
    issuer.set_fault(palisade_testkit::Fault::None);
    issuer.set_latency(Duration::ZERO);
    assert!(
        matches!(own.authorization().await, Err(ClientError::Unavailable(_))),
        "within a second of the failure, it is the answer"
    );
    assert_eq!(issuer.discovery_fetches(), 1, "without asking the issuer");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(own.authorization().await.is_ok(), "a later call tries again");
    assert_eq!(issuer.client_credentials_grants(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reqwest_request_gets_its_hosts_credentials() {
    let upstreams = Upstreams::builder().host("*", Credentials::Caller).build();
    let client = reqwest::Client::new();
    let mut req = client.get("http://[::1]:9080/x").build().unwrap();
    req.headers_mut()
        .insert(http::header::AUTHORIZATION, "Bearer stale".parse().unwrap());
    let caller = CallerToken::from_headers(&{
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Bearer inbound".parse().unwrap());
        h
    });
    let _sent = upstreams.apply(&mut req, caller.as_ref()).await.unwrap();
    assert_eq!(req.headers()[http::header::AUTHORIZATION], "Bearer inbound");
    let mut req = client.get("http://details/x").build().unwrap();
    assert!(matches!(
        upstreams.apply(&mut req, None).await,
        Err(ClientError::NoCallerToken)
    ));
}

/// productpage's exchange of its callers' tokens for reviews at `issuer`.
fn exchange_for_reviews(issuer: &str) -> TokenExchange {
    TokenExchange::builder(issuer, "productpage")
        .client_secret(SECRET)
        .audience("reviews")
        .build()
        .unwrap()
}

/// A `500` answer without a body, closing the connection.
const SERVER_ERROR: &str =
    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// A `200` answer of `body` as JSON, closing the connection.
fn json_answer(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A loopback server answering every request with `answer` (a whole
/// HTTP/1.1 response); its origin.
async fn answering(answer: impl Fn(u16) -> String + Send + 'static) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut request = [0u8; 8192];
            let _ = conn.read(&mut request).await;
            let _ = conn.write_all(answer(port).as_bytes()).await;
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// A token endpoint's error answer is the issuer's refusal only with the
/// statuses RFC 6749 §5.2 gives one (`400`, `401`; Keycloak refuses a
/// token exchange with `403`): a `429` or a `404` with an `error` member
/// (Auth0's throttling, Keycloak's unknown realm) is an issuer that cannot
/// grant now, whose token endpoint is looked up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_oauth_error_status_is_the_issuers_refusal() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (status, refused) in [
        ("400 Bad Request", true),
        ("401 Unauthorized", true),
        ("403 Forbidden", true),
        ("404 Not Found", false),
        ("429 Too Many Requests", false),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut request = [0u8; 8192];
                let n = conn.read(&mut request).await.unwrap_or(0);
                let answer = if request[..n].starts_with(b"GET ") {
                    json_answer(&format!(
                        r#"{{"issuer":"http://127.0.0.1:{port}","token_endpoint":"http://127.0.0.1:{port}/token"}}"#
                    ))
                } else {
                    let body = r#"{"error":"too_many_requests"}"#;
                    format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        let own = ClientCredentials::builder(format!("http://127.0.0.1:{port}"), "productpage")
            .client_secret(SECRET)
            .build()
            .unwrap();
        match own.authorization().await {
            Err(ClientError::Refused(code)) if refused => assert_eq!(code, "too_many_requests"),
            Err(ClientError::Unavailable(why)) if !refused => assert!(why.contains(status), "{why}"),
            other => panic!("{status}: {other:?}"),
        }
    }
}

/// A 401 from where a redirect led (another origin) says nothing of the
/// token sent to the first; one from the request's own origin does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_from_where_a_redirect_led_keeps_the_token() {
    let issuer = issuer(Duration::from_secs(8));
    let upstreams = Upstreams::builder()
        .host(
            "*",
            Credentials::ClientCredentials(grant(&issuer, Duration::from_secs(1))),
        )
        .build();
    let refusing = answering(|_| {
        "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer error=\"invalid_token\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
    })
    .await;
    let to = format!("{refusing}/x");
    let redirecting = answering(move |_| {
        format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    })
    .await;
    // A client that follows redirects (the docs advise against it).
    let client = reqwest::Client::new();
    let call = |origin: &str| {
        let (client, upstreams, url) = (client.clone(), upstreams.clone(), format!("{origin}/x"));
        async move {
            let mut req = client.get(url).build().unwrap();
            let sent = upstreams.apply(&mut req, None).await.unwrap();
            let res = client.execute(req).await.unwrap();
            sent.answered_by(&res).unwrap();
            res.status().as_u16()
        }
    };
    // Past the token's first quarter, when a refusal renews it.
    call(&redirecting).await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(call(&redirecting).await, 401, "the redirect was followed");
    // A refused token is renewed when the next call finds it so.
    call(&redirecting).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        issuer.client_credentials_grants(),
        1,
        "kept: another origin refused"
    );
    let renewed = async {
        while issuer.client_credentials_grants() < 2 {
            assert_eq!(call(&refusing).await, 401);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), renewed)
        .await
        .expect("its own origin's refusal renews it");
}

fn policy(yaml: &str) -> Result<Option<Upstreams>, palisade_core::policy::PolicyError> {
    let set = PolicySet::from_yaml_str(yaml, "upstreams.yaml")?;
    let workload = Workload::new("productpage", "default");
    Upstreams::from_policy(&set.for_workload(&workload))
}

fn check(yaml: &str) -> Result<(), palisade_core::policy::PolicyError> {
    let set = PolicySet::from_yaml_str(yaml, "upstreams.yaml")?;
    Upstreams::check_policy(&set.for_workload(&Workload::new("productpage", "default")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_come_from_the_policy_file() {
    let issuer = issuer(Duration::from_secs(300));
    let dir = std::env::temp_dir().join(format!("palisade-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let doc = |name: &str, hosts: &str, token: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: UpstreamCredentials\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: productpage}}}}\n  hosts: [{hosts}]\n  token:\n{token}---\n"
        )
    };
    let own = format!(
        "    from: clientCredentials\n    issuer: {}\n    clientId: productpage\n    clientSecretFile: {}\n    audience: details\n",
        issuer.issuer(),
        secret.display()
    );
    let yaml = doc("to-details", "details.default.svc.cluster.local", &own)
        + &doc(
            "to-reviews",
            "reviews.default.svc.cluster.local",
            "    from: caller\n",
        );
    let exchange = own
        .replace("clientCredentials", "tokenExchange")
        .replace("details", "ratings");
    let yaml = yaml + &doc("to-ratings", "ratings", &exchange);
    let upstreams = policy(&yaml).unwrap().expect("documents apply");
    let user = CallerToken::new(&issuer.token().subject("alice").audience("productpage").sign());
    let ratings = upstreams
        .authorization(&"http://ratings:9080/".parse().unwrap(), Some(&user))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claims(&ratings)["aud"], "ratings");
    assert_eq!(claims(&ratings)["act"]["sub"], "productpage");
    let details = upstreams
        .authorization(
            &"http://details.default.svc.cluster.local:9080/".parse().unwrap(),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claims(&details)["aud"], "details");
    assert!(matches!(
        upstreams.for_host("REVIEWS.default.svc.cluster.local"),
        Ok(Credentials::Caller)
    ));
    assert!(matches!(upstreams.for_host("reviews"), Ok(Credentials::None)));
    assert!(
        policy("apiVersion: palisade.dev/v1alpha1\nkind: JwtSettings\nmetadata: {name: j}\nspec: {}\n")
            .unwrap()
            .is_none()
    );

    for (yaml, field) in [
        (
            doc("a", "x", "    from: caller\n") + &doc("b", "x", "    from: none\n"),
            "spec.hosts[0]",
        ),
        // One host, written two ways.
        (
            doc("a", "Reviews", "    from: caller\n") + &doc("b", "reviews.", "    from: none\n"),
            "spec.hosts[0]",
        ),
        (
            doc(
                "a",
                "x",
                &(own.clone() + "    clientAuthMethod: private_key_jwt\n"),
            ),
            "spec.token.clientAuthMethod",
        ),
        (
            doc(
                "a",
                "x",
                &own.replace(&secret.display().to_string(), "/nonexistent/secret"),
            ),
            "spec.token.clientSecretFile",
        ),
        (
            doc(
                "a",
                "x",
                "    from: clientCredentials\n    issuer: https://i\n    clientId: c\n",
            ),
            "spec.token.clientSecretFile",
        ),
        // Twice in one document's list.
        (
            doc("a", "Reviews, reviews.", "    from: caller\n"),
            "spec.hosts[1]",
        ),
        (doc("a", "x y", "    from: caller\n"), "spec.hosts[0]"),
        (doc("a", "reviews:9080", "    from: caller\n"), "spec.hosts[0]"),
    ] {
        let err = policy(&yaml).map(|_| ()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert!(err.to_string().contains("upstreams.yaml"), "{err}");
        // A reload's check finds what building finds.
        assert_eq!(check(&yaml).unwrap_err().to_string(), err.to_string());
    }
    let twice = policy(&doc("a", "Reviews, reviews.", "    from: caller\n"))
        .map(|_| ())
        .unwrap_err();
    assert!(
        twice.to_string().contains("spec.hosts[0] of this document"),
        "{twice}"
    );
    let elsewhere = policy(&(doc("a", "x", "    from: caller\n") + &doc("b", "x", "    from: none\n")))
        .map(|_| ())
        .unwrap_err();
    assert!(
        elsewhere
            .to_string()
            .contains("another UpstreamCredentials document"),
        "{elsewhere}"
    );
    check(&yaml).expect("the file that built checks");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An issuer of tokens that live 8 s, and exchanges for `reviews` renewed
/// when less than 4 s are left.
fn short_exchange() -> (TestIssuer, TokenExchange) {
    let issuer = TestIssuer::builder()
        .client("productpage", SECRET)
        .token_lifetime(Duration::from_secs(8))
        .start()
        .unwrap();
    let exchange = TokenExchange::builder(issuer.issuer(), "productpage")
        .client_secret(SECRET)
        .audience("reviews")
        .renew_before(Duration::from_secs(4))
        .build()
        .unwrap();
    (issuer, exchange)
}

/// As the workload's own token: an exchanged token due for renewal is
/// used while it is valid when the issuer cannot renew it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_token_is_kept_while_the_issuer_is_down_until_it_expires() {
    let (issuer, exchange) = short_exchange();
    let alice = CallerToken::new(&issuer.token().subject("alice").audience("productpage").sign());
    let first = exchange.authorization(&alice).await.unwrap();
    let granted = std::time::Instant::now();
    drop(issuer);
    // Due for renewal, and the issuer is gone: twice, the second within
    // the failure's second.
    tokio::time::sleep(Duration::from_millis(4_600)).await;
    for _ in 0..2 {
        assert_eq!(
            exchange.authorization(&alice).await.unwrap(),
            first,
            "the issuer is down: the valid token is kept"
        );
    }
    tokio::time::sleep(Duration::from_millis(8_500).saturating_sub(granted.elapsed())).await;
    assert!(
        matches!(
            exchange.authorization(&alice).await,
            Err(ClientError::Unavailable(_))
        ),
        "expired and nothing to renew it with"
    );
}

/// A renewal the issuer refuses (here, the caller's token has expired
/// since) ends the exchanged token: it is not used to its end, as it is
/// when the issuer cannot be reached. The renewal keeps no call waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_renewal_ends_the_exchanged_token() {
    let (issuer, exchange) = short_exchange();
    let alice = CallerToken::new(
        &issuer
            .token()
            .subject("alice")
            .audience("productpage")
            .expires_in(3)
            .sign(),
    );
    let first = exchange.authorization(&alice).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4_600)).await;
    // Due: answered at once with the token it has, renewed meanwhile.
    assert_eq!(exchange.authorization(&alice).await.unwrap(), first);
    let refused = async {
        loop {
            match exchange.authorization(&alice).await {
                Err(ClientError::Refused(code)) => return code,
                Ok(t) => assert_eq!(t, first),
                Err(e) => panic!("{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let code = tokio::time::timeout(Duration::from_secs(2), refused)
        .await
        .expect("the refused renewal still hands out the old token");
    assert_eq!(code, "invalid_grant");
    assert_eq!(issuer.token_exchanges(), 1, "the refusal is no exchange");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_token_is_exchanged_once_for_the_upstreams_audience() {
    let issuer = TestIssuer::builder()
        .client("productpage", SECRET)
        .user("alice", "alice-password", &["reader"])
        .start()
        .unwrap();
    let exchange = exchange_for_reviews(issuer.issuer());
    let alice = CallerToken::new(
        &issuer
            .token()
            .subject("alice")
            .audience("productpage")
            .realm_roles(&["reader"])
            .sign(),
    );
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (exchange, alice) = (exchange.clone(), alice.clone());
        tasks.push(tokio::spawn(async move {
            exchange.authorization(&alice).await.unwrap()
        }));
    }
    let mut headers = Vec::new();
    for t in tasks {
        headers.push(t.await.unwrap());
    }
    assert!(headers.windows(2).all(|w| w[0] == w[1]), "one token for all");
    assert_eq!(
        issuer.token_exchanges(),
        1,
        "one exchange for eight concurrent calls"
    );
    let c = claims(&headers[0]);
    assert_eq!(c["sub"], "alice", "on behalf of the caller");
    assert_eq!(c["aud"], "reviews");
    assert_eq!(c["azp"], "productpage");
    assert_eq!(c["act"]["sub"], "productpage", "the actor is the workload");
    assert_eq!(c["realm_access"]["roles"][0], "reader");
    assert_eq!(
        exchange.authorization(&alice).await.unwrap(),
        headers[0],
        "cached"
    );
    assert_eq!(issuer.token_exchanges(), 1);

    // Another caller, another exchange.
    let bob = CallerToken::new(&issuer.token().subject("bob").audience("productpage").sign());
    let not_for_us = CallerToken::new(&issuer.token().subject("bob").audience("reviews").sign());
    assert_eq!(claims(&exchange.authorization(&bob).await.unwrap())["sub"], "bob");
    assert_eq!(issuer.token_exchanges(), 2);

    // Tokens the issuer will not exchange: expired, or not its own.
    let expired = CallerToken::new(
        &issuer
            .token()
            .subject("alice")
            .audience("productpage")
            .expires_in(-120)
            .sign(),
    );
    let foreign = TestIssuer::start().unwrap();
    let stranger = CallerToken::new(&foreign.token().subject("alice").sign());
    let asked = issuer.token_requests();
    for (token, why) in [
        (&expired, "invalid_grant"),
        (&stranger, "invalid_grant"),
        (&not_for_us, "access_denied"),
    ] {
        // Asked once; the second call has the first one's answer.
        for _ in 0..2 {
            match exchange.authorization(token).await {
                Err(ClientError::Refused(code)) => assert_eq!(code, why),
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(
        issuer.token_requests(),
        asked + 3,
        "one request per refused caller token"
    );
    // Without a caller token, nothing is asked.
    let upstreams = Upstreams::builder()
        .host("reviews", Credentials::TokenExchange(exchange))
        .build();
    assert!(matches!(
        upstreams
            .authorization(&"http://reviews/".parse().unwrap(), None)
            .await,
        Err(ClientError::NoCallerToken)
    ));
    // A URI without a host gets nothing (not the `*` entry's).
    assert!(matches!(
        upstreams
            .authorization(&"/reviews/0".parse().unwrap(), Some(&alice))
            .await,
        Err(ClientError::Config(_))
    ));
    assert_eq!(issuer.token_exchanges(), 2);
}

/// An issuer whose discovery document names a token endpoint that does
/// not answer as one (a wrong path, a port since closed), then the right
/// one: the grant fails, and a later one finds the endpoint again
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_fails_is_discovered_again() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let real = issuer(Duration::from_secs(300));
    let fixed = Arc::new(AtomicBool::new(false));
    let token_endpoint = real.token_endpoint();
    let switch = Arc::clone(&fixed);
    let origin = answering(move |port| {
        let endpoint = if switch.load(Ordering::SeqCst) {
            token_endpoint.clone()
        } else {
            format!("http://127.0.0.1:{port}/no-such-endpoint")
        };
        // Discovery is the one GET; the wrong endpoint's POST gets the
        // same document, which no token response is.
        let body = format!(r#"{{"issuer":"http://127.0.0.1:{port}","token_endpoint":"{endpoint}"}}"#);
        json_answer(&body)
    })
    .await;
    let own = ClientCredentials::builder(origin, "productpage")
        .client_secret(SECRET)
        .build()
        .unwrap();
    assert!(matches!(
        own.authorization().await,
        Err(ClientError::Unavailable(_))
    ));
    fixed.store(true, Ordering::SeqCst);
    // Past the wait after a failed grant.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let header = own.authorization().await.expect("the endpoint found again");
    assert!(header.starts_with("Bearer "), "{header}");
    assert_eq!(real.client_credentials_grants(), 1);
}

/// A token endpoint that failed once (503), then answers while discovery
/// fails: it is trusted again from its first answer, not discovered again
/// by every call once a failed discovery's second is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_endpoint_is_trusted_again_once_it_answers() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let posts = Arc::new(AtomicUsize::new(0));
    let answered = Arc::clone(&posts);
    let endpoint = answering(move |_| {
        if answered.fetch_add(1, Ordering::SeqCst) == 0 {
            return "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .to_owned();
        }
        let body = r#"{"access_token":"exchanged","token_type":"Bearer","expires_in":300}"#;
        json_answer(body)
    })
    .await;
    let discoveries = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&discoveries);
    let origin = answering(move |port| {
        if count.fetch_add(1, Ordering::SeqCst) > 0 {
            return SERVER_ERROR.to_owned();
        }
        let body = format!(r#"{{"issuer":"http://127.0.0.1:{port}","token_endpoint":"{endpoint}/token"}}"#);
        json_answer(&body)
    })
    .await;
    let exchange = exchange_for_reviews(&origin);
    let call = |user: &str| {
        let (exchange, caller) = (exchange.clone(), CallerToken::new(&format!("token-of-{user}")));
        async move { exchange.authorization(&caller).await }
    };
    // Discovered, then the endpoint fails: stale.
    assert!(matches!(call("alice").await, Err(ClientError::Unavailable(_))));
    // Discovered again, which fails: the stale endpoint is used, and answers.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(&*call("bob").await.unwrap(), "Bearer exchanged");
    assert_eq!(discoveries.load(Ordering::SeqCst), 2);
    // Past the failed discovery's second: the endpoint is trusted as it is.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(&*call("carol").await.unwrap(), "Bearer exchanged");
    assert_eq!(
        discoveries.load(Ordering::SeqCst),
        2,
        "an endpoint that answered is not discovered again"
    );
    assert_eq!(posts.load(Ordering::SeqCst), 3);
}

/// An issuer whose discovery document cannot be had (500): token
/// exchanges for several callers at once share one failed discovery,
/// rather than each discovering in turn, one round trip (or timeout)
/// after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_at_once_share_a_failed_discovery() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let asked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    let origin = answering(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        SERVER_ERROR.to_owned()
    })
    .await;
    let exchange = exchange_for_reviews(&origin);
    let calls: Vec<_> = ["alice", "bob", "carol", "dave"]
        .into_iter()
        .map(|user| {
            let exchange = exchange.clone();
            tokio::spawn(async move {
                exchange
                    .authorization(&CallerToken::new(&format!("token-of-{user}")))
                    .await
            })
        })
        .collect();
    for call in calls {
        assert!(matches!(call.await.unwrap(), Err(ClientError::Unavailable(_))));
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "one discovery for four calls at once"
    );
}
