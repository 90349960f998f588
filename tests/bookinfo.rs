//! The bookinfo services calling each other as processes: productpage
//! (axum) calls details (axum) and reviews (actix-web) over mutual TLS
//! (`DestinationRule` `ISTIO_MUTUAL` with `subjectAltNames`), sending what
//! its `UpstreamCredentials` say: its own service-account token to details
//! (client credentials), a reviews-audience token on the user's behalf to
//! reviews (token exchange, `act` naming productpage), or the user's own
//! token to both (relay). One mesh file describes every workload; each
//! back-end sees who the user is and which workload calls.

use std::time::Duration;

use palisade::testkit::{TestIssuer, TestPki};
use serde_json::Value;

mod common;
use common::{ScratchDir, Service, start};

const SECRET: &str = "productpage-secret";

/// The realm: productpage and reviews are confidential clients.
fn issuer(token_lifetime: Duration) -> TestIssuer {
    TestIssuer::builder()
        .client("productpage", SECRET)
        .client("reviews", SECRET)
        .token_lifetime(token_lifetime)
        .start()
        .unwrap()
}

/// The mesh: STRICT mTLS (PERMISSIVE on productpage, the front door);
/// tokens of `iss` for each service's own audience; details only for
/// productpage's workload with some token; reviews only for productpage's
/// workload with a user's token, and never for mallory; productpage's
/// calls over ISTIO_MUTUAL checking each back-end's SPIFFE ID, with the
/// `UpstreamCredentials` given.
fn mesh(iss: &TestIssuer, credentials: &str) -> String {
    let iss_url = iss.issuer();
    let jwks = iss.jwks_uri();
    let mut yaml = String::from(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: productpage, namespace: default}
spec: {selector: {matchLabels: {app: productpage}}, mtls: {mode: PERMISSIVE}}
",
    );
    for (svc, caller) in [
        ("productpage", "productpage"),
        ("details", "productpage"),
        ("reviews", "productpage"),
        ("ratings", "reviews"),
    ] {
        yaml.push_str(&format!(
            "---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: {svc}, namespace: default}}
spec:
  selector: {{matchLabels: {{app: {svc}}}}}
  jwtRules: [{{issuer: {iss_url}, jwksUri: {jwks}, audiences: [{svc}]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {svc}, namespace: default}}
spec:
  host: {svc}
  workloadSelector: {{matchLabels: {{app: {caller}}}}}
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/{svc}]}}
"
        ));
    }
    yaml.push_str(&format!(
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: details, namespace: default}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/productpage], requestPrincipals: [\"*\"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/productpage], requestPrincipals: [\"*\"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-not-mallory, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: DENY
  rules:
  - from: [{{source: {{requestPrincipals: [{iss_url}/mallory]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ratings, namespace: default}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/reviews], requestPrincipals: [\"*\"]}}}}]
{credentials}"
    ));
    yaml
}

/// `UpstreamCredentials`: productpage's to details and reviews, and
/// reviews' to ratings, each `from` as given.
fn credentials(iss: &TestIssuer, details: &str, reviews: &str, ratings: &str) -> String {
    let mut yaml = String::new();
    for (caller, svc, from) in [
        ("productpage", "details", details),
        ("productpage", "reviews", reviews),
        ("reviews", "ratings", ratings),
    ] {
        let grant = if from == "caller" {
            String::new()
        } else {
            format!(
                "    issuer: {}\n    clientId: {caller}\n    clientSecret: {SECRET}\n    audience: {svc}\n",
                iss.issuer()
            )
        };
        yaml.push_str(&format!(
            "---
apiVersion: palisade.dev/v1alpha1
kind: UpstreamCredentials
metadata: {{name: {caller}-to-{svc}, namespace: default}}
spec:
  selector: {{matchLabels: {{app: {caller}}}}}
  hosts: [{svc}.default.svc.cluster.local]
  token:
    from: {from}
{grant}"
        ));
    }
    yaml
}

/// The four services over `mesh`, each with its workload certificate.
struct Bookinfo {
    productpage: Service,
    details: Service,
    reviews: Service,
    ratings: Service,
}

fn start_bookinfo(dir: &ScratchDir, pki: &TestPki, mesh: &str, extra: &[&str]) -> Bookinfo {
    start_bookinfo_with(dir, pki, mesh, extra, None, None)
}

/// [`start_bookinfo`], with reviews given `reviews_upstream` (`ratings=URL`
/// and more arguments) in place of the started ratings, and its log
/// (stderr) written to the file `reviews_log`.
fn start_bookinfo_with(
    dir: &ScratchDir,
    pki: &TestPki,
    mesh: &str,
    extra: &[&str],
    reviews_upstream: Option<&[&str]>,
    reviews_log: Option<&str>,
) -> Bookinfo {
    let file = dir.write("mesh.yaml", mesh);
    let ca = dir.write("ca.pem", &pki.ca_pem());
    let run = |name: &str, more: &[&str], log: Option<&str>| {
        let c = pki.workload("default", name);
        let (cert, key) = dir.cert(name, &c);
        let mut args = vec![
            "--config",
            &file,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--client-ca",
            &ca,
        ];
        args.extend(more);
        match log {
            Some(log) => common::start_logged(name, &args, &[], log),
            None => start(name, &args),
        }
    };
    let details = run("details", &[], None);
    let ratings = run("ratings", &[], None);
    let to_ratings = format!("ratings=https://127.0.0.1:{}", ratings.port);
    let reviews = run(
        "reviews",
        reviews_upstream.unwrap_or(&["--upstream", &to_ratings]),
        reviews_log,
    );
    let d = format!("details=https://127.0.0.1:{}", details.port);
    let r = format!("reviews=https://127.0.0.1:{}", reviews.port);
    let mut args = vec!["--upstream", d.as_str(), "--upstream", r.as_str()];
    args.extend(extra);
    let productpage = run("productpage", &args, None);
    Bookinfo {
        productpage,
        details,
        reviews,
        ratings,
    }
}

/// `user`'s token for every service of the mesh: one productpage may relay
/// to each back-end.
fn relayable(issuer: &TestIssuer, user: &str) -> String {
    issuer
        .token()
        .subject(user)
        .audience("productpage")
        .audience("details")
        .audience("reviews")
        .audience("ratings")
        .sign()
}

/// `GET path` on productpage in plaintext (PERMISSIVE), with `token`.
async fn get(pp: &Service, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("http://{}{path}", pp.addr));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn productpage_calls_with_its_own_token_and_exchanged_ones_over_istio_mutual() {
    let issuer = issuer(Duration::from_secs(300));
    let pki = TestPki::new();
    let dir = ScratchDir::new("bookinfo-exchange");
    // An upstream that accepts connections and never answers.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_url = format!("hang=http://{}", hang.local_addr().unwrap());
    let mesh = mesh(
        &issuer,
        &credentials(&issuer, "clientCredentials", "tokenExchange", "tokenExchange"),
    );
    let bookinfo = start_bookinfo(
        &dir,
        &pki,
        &mesh,
        &["--upstream", &hang_url, "--upstream-timeout", "5"],
    );
    let pp = &bookinfo.productpage;
    let iss = issuer.issuer();
    let alice = issuer.token().subject("alice").audience("productpage").sign();

    let (status, product) = get(pp, "/api/v1/products/0", Some(&alice)).await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["id"], 0);
    assert_eq!(product["details"]["status"], 200, "{product}");
    assert_eq!(product["details"]["body"]["service"], "details", "{product}");
    assert_eq!(product["reviews"]["status"], 200, "{product}");
    assert_eq!(product["reviews"]["body"]["service"], "reviews", "{product}");
    // reviews called ratings (gRPC, ISTIO_MUTUAL) with a ratings-audience
    // token it exchanged in turn; ratings lets only reviews' workload in.
    let ratings = &product["reviews"]["body"]["ratings"];
    assert_eq!(ratings["status"], 200, "{product}");
    assert_eq!(ratings["body"]["Reviewer1"], 5, "{product}");

    let (status, who) = get(pp, "/upstreams/whoami", Some(&alice)).await;
    assert_eq!(status, 200, "{who}");
    // details: productpage's workload, with its own service-account token.
    let details = &who["details"]["body"];
    assert_eq!(who["details"]["status"], 200, "{who}");
    assert_eq!(
        details["peer"]["principal"], "cluster.local/ns/default/sa/productpage",
        "{who}"
    );
    assert_eq!(
        details["request_principal"],
        format!("{iss}/productpage"),
        "{who}"
    );
    // reviews: the user, in a token exchanged for reviews, acted by productpage.
    let reviews = &who["reviews"]["body"];
    assert_eq!(
        reviews["peer"]["principal"], "cluster.local/ns/default/sa/productpage",
        "{who}"
    );
    assert_eq!(reviews["request_principal"], format!("{iss}/alice"), "{who}");
    assert_eq!(reviews["audiences"], serde_json::json!(["reviews"]), "{who}");
    assert_eq!(reviews["claims"]["act"]["sub"], "productpage", "{who}");
    assert_eq!(
        who["hang"]["status"], 504,
        "an upstream that does not answer in time: {who}"
    );
    // One grant serves every call; one exchange per user token and hop.
    assert_eq!(issuer.client_credentials_grants(), 1);
    assert_eq!(issuer.token_exchanges(), 2);

    // A reviews policy refusing the user: its section, in a 200.
    let mallory = issuer.token().subject("mallory").audience("productpage").sign();
    let (status, product) = get(pp, "/api/v1/products/0", Some(&mallory)).await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["reviews"]["status"], 403, "{product}");
    assert_eq!(product["details"]["status"], 200, "{product}");

    // No user: details still gets the workload's token; reviews needs the
    // user's, so it is not called.
    let (status, product) = get(pp, "/api/v1/products/0", None).await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["details"]["status"], 200, "{product}");
    assert_eq!(product["reviews"]["status"], 401, "{product}");

    // A stopped upstream: 502.
    let Bookinfo {
        productpage,
        details,
        reviews,
        ratings,
    } = bookinfo;
    drop((details, ratings));
    let (status, product) = get(&productpage, "/api/v1/products/0", Some(&alice)).await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["details"]["status"], 502, "{product}");
    assert_eq!(product["reviews"]["status"], 200, "{product}");
    assert_eq!(product["reviews"]["body"]["ratings"]["status"], 502, "{product}");
    drop((reviews, hang));
}

#[tokio::test]
async fn a_grpc_upstream_that_does_not_answer_in_time_is_504() {
    let issuer = issuer(Duration::from_secs(300));
    let pki = TestPki::new();
    let mesh = mesh(&issuer, &credentials(&issuer, "caller", "caller", "caller"));
    // reviews' ratings accepts connections and never answers: over
    // ISTIO_MUTUAL not even the TLS handshake; in plaintext (the rule
    // DISABLE) the call is sent, so tonic's channel times it too.
    let plaintext = mesh.replace(
        "mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/ratings]",
        "mode: DISABLE",
    );
    assert_ne!(plaintext, mesh);
    for (mesh, scheme) in [(&mesh, "https"), (&plaintext, "http")] {
        let dir = ScratchDir::new(&format!("bookinfo-grpc-hang-{scheme}"));
        let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to_hang = format!("ratings={scheme}://{}", hang.local_addr().unwrap());
        let reviews_args = ["--upstream", to_hang.as_str(), "--upstream-timeout", "2"];
        let bookinfo = start_bookinfo_with(&dir, &pki, mesh, &[], Some(&reviews_args), None);
        let alice = relayable(&issuer, "alice");
        let (status, product) = get(&bookinfo.productpage, "/api/v1/products/0", Some(&alice)).await;
        assert_eq!(status, 200, "{scheme}: {product}");
        assert_eq!(product["reviews"]["status"], 200, "{scheme}: {product}");
        assert_eq!(
            product["reviews"]["body"]["ratings"]["status"], 504,
            "{scheme}: tonic reads its own timeouts as CANCELLED or UNKNOWN: {product}"
        );
        let _ = (&bookinfo.details, &bookinfo.ratings, hang);
    }
}

#[tokio::test]
async fn productpage_relays_the_users_token_and_refuses_to_call_without_one() {
    let issuer = issuer(Duration::from_secs(300));
    let pki = TestPki::new();
    let dir = ScratchDir::new("bookinfo-relay");
    let mesh = mesh(&issuer, &credentials(&issuer, "caller", "caller", "caller"));
    let reviews_log = dir.path("reviews.log");
    let bookinfo = start_bookinfo_with(&dir, &pki, &mesh, &[], None, Some(&reviews_log));
    let pp = &bookinfo.productpage;
    let alice = relayable(&issuer, "alice");
    let (status, who) = get(pp, "/upstreams/whoami", Some(&alice)).await;
    assert_eq!(status, 200, "{who}");
    for svc in ["details", "reviews"] {
        assert_eq!(who[svc]["status"], 200, "{svc}: {who}");
        let body = &who[svc]["body"];
        assert_eq!(
            body["request_principal"],
            format!("{}/alice", issuer.issuer()),
            "{svc}: {who}"
        );
        assert_eq!(
            body["peer"]["principal"], "cluster.local/ns/default/sa/productpage",
            "{svc}: {who}"
        );
        assert!(
            body["claims"]["act"].is_null(),
            "{svc}: a relayed token is the user's own: {who}"
        );
    }
    let (_, product) = get(pp, "/api/v1/products/0", Some(&alice)).await;
    assert_eq!(product["reviews"]["body"]["ratings"]["status"], 200, "{product}");
    let (status, product) = get(pp, "/api/v1/products/0", None).await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["details"]["status"], 401, "{product}");
    assert_eq!(product["reviews"]["status"], 401, "{product}");
    assert_eq!(issuer.client_credentials_grants() + issuer.token_exchanges(), 0);

    // A token ratings refuses (not for its audience), relayed by reviews:
    // each call's 401 is the user's doing, not a line of reviews' log at
    // warn level; ratings gone, its failure is said once a minute.
    let said = || {
        std::fs::read_to_string(&reviews_log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("ratings"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let not_for_ratings = issuer
        .token()
        .subject("alice")
        .audience("productpage")
        .audience("reviews")
        .sign();
    for _ in 0..3 {
        let (_, product) = get(pp, "/api/v1/products/0", Some(&not_for_ratings)).await;
        assert_eq!(product["reviews"]["body"]["ratings"]["status"], 401, "{product}");
    }
    assert_eq!(said(), Vec::<String>::new(), "refusals a user earns");
    let Bookinfo {
        productpage,
        details,
        reviews,
        ratings,
    } = bookinfo;
    drop(ratings);
    for _ in 0..2 {
        let (_, product) = get(&productpage, "/api/v1/products/0", Some(&alice)).await;
        assert_eq!(product["reviews"]["body"]["ratings"]["status"], 502, "{product}");
    }
    assert_eq!(said().len(), 1, "once a minute: {:?}", said());
    drop((productpage, details, reviews));
}

#[tokio::test]
async fn an_upstream_failing_the_subject_alt_name_check_is_refused_at_the_handshake_as_502() {
    let issuer = issuer(Duration::from_secs(300));
    let pki = TestPki::new();
    let dir = ScratchDir::new("bookinfo-san");
    // reviews' rule expects details' identity: reviews' certificate fails it.
    let mesh = mesh(&issuer, &credentials(&issuer, "caller", "caller", "caller")).replace(
        "subjectAltNames: [spiffe://cluster.local/ns/default/sa/reviews]",
        "subjectAltNames: [spiffe://cluster.local/ns/default/sa/details]",
    );
    let bookinfo = start_bookinfo(&dir, &pki, &mesh, &[]);
    let alice = relayable(&issuer, "alice");
    let (status, product) = get(&bookinfo.productpage, "/api/v1/products/0", Some(&alice)).await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["details"]["status"], 200, "{product}");
    assert_eq!(product["reviews"]["status"], 502, "{product}");
    let _ = (&bookinfo.details, &bookinfo.reviews, &bookinfo.ratings);
}

#[tokio::test]
async fn a_cached_service_account_token_outlives_the_issuer_until_it_expires() {
    // Tokens of 8 s: renewal is due after 4 s, and a loaded machine's
    // requests still leave seconds between the renewal's failure and the
    // token's end.
    let issuer = issuer(Duration::from_secs(8));
    let pki = TestPki::new();
    let dir = ScratchDir::new("bookinfo-outage");
    let mesh = mesh(
        &issuer,
        &credentials(&issuer, "clientCredentials", "caller", "caller"),
    );
    let bookinfo = start_bookinfo(&dir, &pki, &mesh, &[]);
    let pp = &bookinfo.productpage;
    let (_, product) = get(pp, "/api/v1/products/0", None).await;
    assert_eq!(product["details"]["status"], 200, "{product}");
    assert_eq!(issuer.client_credentials_grants(), 1);
    let started = std::time::Instant::now();
    drop(issuer);
    // Past half its lifetime a renewal is due and fails: the token in hand
    // is still sent.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let (_, product) = get(pp, "/api/v1/products/0", None).await;
    assert_eq!(
        product["details"]["status"], 200,
        "the issuer is down, the token valid: {product}"
    );
    // Expired, and no new one: the section says so, productpage answers.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(started.elapsed()) + Duration::from_millis(500))
        .await;
    let (status, product) = get(pp, "/api/v1/products/0", None).await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["details"]["status"], 502, "{product}");
    let _ = (&bookinfo.details, &bookinfo.reviews, &bookinfo.ratings);
}

#[tokio::test]
async fn the_bookinfo_command_starts_the_whole_system_as_its_policy_file_says() {
    let (_launcher, base, banner) = common::start_bookinfo();
    let pp = format!("http://127.0.0.1:{}", base + 2);
    assert!(banner.contains(&format!("{pp}/productpage")), "{banner}");
    // The terminal recipe, as printed: a password-grant token, then the API.
    let token_url = banner
        .split_whitespace()
        .find(|w| w.ends_with("/protocol/openid-connect/token"))
        .unwrap_or_else(|| panic!("no token endpoint in {banner}"))
        .to_owned();
    let token = |user: &'static str| {
        let token_url = token_url.clone();
        async move {
            common::access_token(
                &token_url,
                &format!("grant_type=password&client_id=productpage&username={user}&password={user}"),
            )
            .await
        }
    };
    let get = |token: String, path: &'static str| {
        let url = format!("{pp}{path}");
        async move {
            let res = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let (status, product) = get(token("alice").await, "/api/v1/products/0").await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["details"]["status"], 200, "{product}");
    assert_eq!(
        product["reviews"]["status"], 200,
        "alice is a reviewer: {product}"
    );
    assert_eq!(product["reviews"]["body"]["ratings"]["status"], 200, "{product}");
    let (_, product) = get(token("bob").await, "/api/v1/products/0").await;
    assert_eq!(product["details"]["status"], 200, "{product}");
    assert_eq!(
        product["reviews"]["status"], 403,
        "bob is not a reviewer: {product}"
    );
    let (_, who) = get(token("alice").await, "/upstreams/whoami").await;
    for svc in ["details", "reviews"] {
        assert_eq!(
            who[svc]["body"]["peer"]["principal"], "cluster.local/ns/default/sa/productpage",
            "{who}"
        );
        assert!(
            who[svc]["body"]["request_principal"]
                .as_str()
                .is_some_and(|p| p.ends_with("/realms/istio/alice")),
            "{who}"
        );
    }
    // The page, for anyone, with a sign-in link.
    let page = reqwest::get(format!("{pp}/productpage")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("id=\"sign-in\""));
}

/// A reload of the mesh file puts what it says of the calls the services
/// make in force for the next calls (docs/examples.md: the file is loaded and
/// swapped in), as Istio applies a changed `DestinationRule` at once:
/// productpage's `UpstreamCredentials` (relay → its own token),
/// reviews' to ratings (relay → exchange), a `DestinationRule` (details'
/// identity no longer accepted: 502), and the sign-in document's paths in
/// the page's links. An upstream whose name does not resolve is that
/// section's 502, not a failed start-up.
#[tokio::test]
async fn a_reload_puts_the_calls_the_file_describes_in_force() {
    let issuer = issuer(Duration::from_secs(300));
    let pki = TestPki::new();
    let dir = ScratchDir::new("bookinfo-reload");
    let key = dir.write("session.key", &"ab".repeat(32));
    let login = |path: &str| {
        format!(
            "---
apiVersion: palisade.dev/v1alpha1
kind: OidcLogin
metadata: {{name: login, namespace: default}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  issuer: {}
  clientId: productpage
  loginPath: {path}
  session:
    keys: [{{id: k1, keyFile: {key}}}]
",
            issuer.issuer()
        )
    };
    let relay = mesh(&issuer, &credentials(&issuer, "caller", "caller", "caller"));
    let bookinfo = start_bookinfo(
        &dir,
        &pki,
        &format!("{relay}{}", login("/sign-in-here")),
        &["--upstream", "nowhere=http://nowhere.invalid:9080"],
    );
    let pp = &bookinfo.productpage;
    let iss = issuer.issuer();
    let alice = relayable(&issuer, "alice");
    let page = || async {
        reqwest::get(format!("http://{}/productpage", pp.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let (status, who) = get(pp, "/upstreams/whoami", Some(&alice)).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(
        who["details"]["body"]["request_principal"],
        format!("{iss}/alice"),
        "{who}"
    );
    assert_eq!(
        who["nowhere"]["status"], 502,
        "a name that does not resolve: {who}"
    );
    assert!(
        page()
            .await
            .contains("href=\"/sign-in-here?return_to=/productpage\"")
    );

    // productpage sends its own token to details; reviews exchanges the
    // user's for ratings; the page links to the new path.
    let changed = mesh(
        &issuer,
        &credentials(&issuer, "clientCredentials", "caller", "tokenExchange"),
    );
    dir.write("mesh.yaml", &format!("{changed}{}", login("/sign-in-there")));
    common::wait_until("productpage's reload", async || {
        let (_, who) = get(pp, "/upstreams/whoami", Some(&alice)).await;
        who["details"]["body"]["request_principal"] == format!("{iss}/productpage")
    })
    .await;
    let (_, who) = get(pp, "/upstreams/whoami", Some(&alice)).await;
    assert_eq!(
        who["reviews"]["body"]["request_principal"],
        format!("{iss}/alice"),
        "{who}"
    );
    assert!(
        page()
            .await
            .contains("href=\"/sign-in-there?return_to=/productpage\"")
    );
    common::wait_until("reviews' reload", async || {
        let (_, product) = get(pp, "/api/v1/products/0", Some(&alice)).await;
        product["reviews"]["body"]["ratings"]["status"] == 200 && issuer.token_exchanges() > 0
    })
    .await;

    // details' certificate no longer passes productpage's check: refused
    // at the handshake.
    let pinned = changed.replace(
        "subjectAltNames: [spiffe://cluster.local/ns/default/sa/details]",
        "subjectAltNames: [spiffe://cluster.local/ns/default/sa/reviews]",
    );
    assert_ne!(pinned, changed);
    dir.write("mesh.yaml", &format!("{pinned}{}", login("/sign-in-there")));
    common::wait_until("the DestinationRule's reload", async || {
        let (_, product) = get(pp, "/api/v1/products/0", Some(&alice)).await;
        product["details"]["status"] == 502
    })
    .await;
    let (_, product) = get(pp, "/api/v1/products/0", Some(&alice)).await;
    assert_eq!(product["reviews"]["status"], 200, "{product}");
    let _ = (&bookinfo.details, &bookinfo.reviews, &bookinfo.ratings);
}

/// A client secret rotated in the file the policy names is used for the
/// next grant: the file is watched with the policy file, and productpage's
/// calls are built again with it.
#[tokio::test]
async fn a_client_secret_rotated_in_its_file_reaches_the_next_grant() {
    let issuer = issuer(Duration::from_secs(300));
    let pki = TestPki::new();
    let dir = ScratchDir::new("bookinfo-secret");
    let secret = dir.write("details.secret", "not-the-secret\n");
    let inline = format!("clientId: productpage\n    clientSecret: {SECRET}\n    audience: details");
    let relay = mesh(
        &issuer,
        &credentials(&issuer, "clientCredentials", "caller", "caller"),
    );
    let mesh = relay.replace(
        &inline,
        &format!("clientId: productpage\n    clientSecretFile: {secret}\n    audience: details"),
    );
    assert_ne!(mesh, relay);
    let bookinfo = start_bookinfo(&dir, &pki, &mesh, &[]);
    let pp = &bookinfo.productpage;
    let (status, product) = get(pp, "/api/v1/products/0", None).await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(
        product["details"]["status"], 502,
        "the issuer refuses the secret: {product}"
    );
    dir.write("details.secret", &format!("{SECRET}\n"));
    common::wait_until("the rotated secret", async || {
        let (_, product) = get(pp, "/api/v1/products/0", None).await;
        product["details"]["status"] == 200
    })
    .await;
    let (_, who) = get(pp, "/upstreams/whoami", None).await;
    assert_eq!(
        who["details"]["body"]["request_principal"],
        format!("{}/productpage", issuer.issuer()),
        "{who}"
    );
    let _ = (&bookinfo.details, &bookinfo.reviews, &bookinfo.ratings);
}
