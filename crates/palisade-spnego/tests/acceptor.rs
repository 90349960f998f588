//! Which tickets the acceptor takes from a keytab that holds more than the
//! web service's key (`HTTP/localhost` and `host/localhost`, as a host's
//! keytab often does): with no service named, tickets for `HTTP/…`
//! principals only; with one named, tickets for it. And which headers its
//! size limit applies to, when a forwarded ticket is kept, and what a
//! ticket that finds no permit in time gets.
//!
//! GSSAPI reads its environment (the realm's configuration, the keytab,
//! alice's credential cache) when first used, so the test starts a real
//! MIT KDC and runs itself again with that environment.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libgssapi::context::{ClientCtx, CtxFlags};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE};
use palisade_core::authn::{AuthOutcome, Authenticator as _, OwnedRequest};
use palisade_core::policy::{PolicySet, Workload};
use palisade_spnego::{DelegatedCredential, SpnegoAuthenticator};
use palisade_testkit::KerberosRealm;

/// Set in the run with the realm's environment.
const CHILD: &str = "PALISADE_SPNEGO_ACCEPTOR_CHILD";

#[test]
fn a_ticket_for_another_service_in_the_keytab_is_refused_unless_that_service_is_named() {
    if std::env::var_os(CHILD).is_some() {
        decide();
        return;
    }
    let realm = KerberosRealm::start().unwrap_or_else(|e| panic!("{e}"));
    realm.add_user("alice", "alice-password").unwrap();
    let keytab = realm.add_service("HTTP/localhost").unwrap();
    realm.add_service_to("host/localhost", &keytab).unwrap();
    let ccache = realm.kinit("alice", "alice-password").unwrap();
    palisade_testkit::run_test_again(
        "a_ticket_for_another_service_in_the_keytab_is_refused_unless_that_service_is_named",
        CHILD,
        &realm.server_and_client_env(&keytab, &ccache),
    );
}

#[test]
fn a_keytab_whose_services_share_one_key_accepts_http_tickets_whatever_its_order() {
    if std::env::var_os(CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let auth = SpnegoAuthenticator::builder().build().unwrap();
        let req = OwnedRequest::get("/").header(
            "authorization",
            format!("Negotiate {}", STANDARD.encode(token_for("HTTP@localhost"))),
        );
        match runtime.block_on(async { auth.authenticate(&req).await }) {
            AuthOutcome::Authenticated(a) => {
                assert_eq!(a.identity.kerberos().unwrap().principal, "alice@EXAMPLE.TEST");
            }
            other => panic!("an HTTP ticket was refused: {other:?}"),
        }
        return;
    }
    let realm = KerberosRealm::start().unwrap_or_else(|e| panic!("{e}"));
    realm.add_user("alice", "alice-password").unwrap();
    // As Active Directory's tools write a computer account's keytab: the
    // other services first, all with the one key.
    let keytab = realm
        .add_service_sharing_key(
            "HTTP/localhost",
            "service-password",
            &["host/localhost", "cifs/localhost"],
        )
        .unwrap();
    let ccache = realm.kinit("alice", "alice-password").unwrap();
    palisade_testkit::run_test_again(
        "a_keytab_whose_services_share_one_key_accepts_http_tickets_whatever_its_order",
        CHILD,
        &realm.server_and_client_env(&keytab, &ccache),
    );
}

/// In the run with the realm's environment.
fn decide() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let principal = |auth: &SpnegoAuthenticator, service: &str| {
        let req = OwnedRequest::get("/").header(
            "authorization",
            format!("Negotiate {}", STANDARD.encode(token_for(service))),
        );
        match runtime.block_on(async { auth.authenticate(&req).await }) {
            AuthOutcome::Authenticated(a) => Some(a.identity.kerberos().unwrap().principal.clone()),
            AuthOutcome::Rejected(r) => {
                assert_eq!(r.status(), 401, "{r:?}");
                assert_eq!(r.challenges(), ["Negotiate"], "{r:?}");
                None
            }
            other => panic!("neither accepted nor refused: {other:?}"),
        }
    };
    let any_http = SpnegoAuthenticator::builder().build().unwrap();
    assert_eq!(
        principal(&any_http, "HTTP@localhost").as_deref(),
        Some("alice@EXAMPLE.TEST")
    );
    assert_eq!(
        principal(&any_http, "host@localhost"),
        None,
        "a host/ ticket was accepted"
    );
    assert_eq!(any_http.stats().failures, 1);
    let host = SpnegoAuthenticator::builder()
        .service("host@localhost")
        .build()
        .unwrap();
    assert_eq!(
        principal(&host, "host@localhost").as_deref(),
        Some("alice@EXAMPLE.TEST")
    );
    assert_eq!(
        principal(&host, "HTTP@localhost"),
        None,
        "the named service is the only one"
    );
    // A forwarded ticket-granting ticket is kept only when asked for.
    let delegating = |auth: &SpnegoAuthenticator| {
        let req = OwnedRequest::get("/").header(
            "authorization",
            format!(
                "Negotiate {}",
                STANDARD.encode(token_with(
                    "HTTP@localhost",
                    CtxFlags::GSS_C_MUTUAL_FLAG | CtxFlags::GSS_C_DELEG_FLAG,
                ))
            ),
        );
        match runtime.block_on(async { auth.authenticate(&req).await }) {
            AuthOutcome::Authenticated(a) => a.attachments.get::<DelegatedCredential>().is_some(),
            other => panic!("a delegating client was refused: {other:?}"),
        }
    };
    assert!(
        !delegating(&any_http),
        "a forwarded ticket was kept without accept_delegation"
    );
    let keeps = SpnegoAuthenticator::builder()
        .accept_delegation()
        .build()
        .unwrap();
    assert!(delegating(&keeps), "accept_delegation kept no forwarded ticket");
    let file = "apiVersion: palisade.dev/v1alpha1\nkind: SpnegoSettings\nmetadata: {name: k}\nspec: {acceptDelegation: true}\n";
    let set = PolicySet::from_yaml_str(file, "spnego.yaml").unwrap();
    let from_file = SpnegoAuthenticator::builder()
        .settings_from(&set.for_workload(&Workload::new("details", "default")))
        .unwrap()
        .build()
        .unwrap();
    assert!(
        delegating(&from_file),
        "acceptDelegation: true kept no forwarded ticket"
    );
    // A ticket that finds no permit within the queue timeout is answered
    // 503 with Retry-After, not held: one permit, a millisecond to wait,
    // and a crowd whose accepts (on the blocking pool: a current-thread
    // runtime checks every ticket there) take far longer one after another.
    // Four hundred: on a fast guest forty accepts (some 50 µs each) all
    // fitted in the timer's first tick, and none was shed.
    let one = SpnegoAuthenticator::builder()
        .concurrency(1)
        .queue_timeout(std::time::Duration::from_millis(1))
        .build()
        .unwrap();
    let ticket = || {
        OwnedRequest::get("/").header(
            "authorization",
            format!("Negotiate {}", STANDARD.encode(token_for("HTTP@localhost"))),
        )
    };
    let crowd: Vec<OwnedRequest> = (0..400).map(|_| ticket()).collect();
    let outcomes = runtime.block_on(async {
        let mut checks = tokio::task::JoinSet::new();
        for req in &crowd {
            checks.spawn(one.authenticate(req).into_future());
        }
        checks.join_all().await
    });
    let (mut checked, mut shed) = (0, 0);
    for outcome in outcomes {
        match outcome {
            AuthOutcome::Authenticated(_) => checked += 1,
            AuthOutcome::Respond(reply) => {
                assert_eq!(reply.status(), 503, "{reply:?}");
                assert!(format!("{reply:?}").contains("retry-after"), "{reply:?}");
                shed += 1;
            }
            other => panic!("neither checked nor shed: {other:?}"),
        }
    }
    assert!(checked >= 1 && shed >= 1, "{checked} checked, {shed} shed");
    // The permit came back: the next ticket is checked.
    let third = ticket();
    assert!(matches!(
        runtime.block_on(async { one.authenticate(&third).await }),
        AuthOutcome::Authenticated(_)
    ));
    // The header limit is for Negotiate headers: a long bearer token is
    // the JWT authenticator's to judge, not refused as a Negotiate one.
    let small = SpnegoAuthenticator::builder().max_header(200).build().unwrap();
    let outcome = |value: String| {
        let req = OwnedRequest::get("/").header("authorization", value);
        runtime.block_on(async { small.authenticate(&req).await })
    };
    let long = "a".repeat(300);
    assert!(matches!(
        outcome(format!("Bearer {long}")),
        AuthOutcome::NoCredential
    ));
    match outcome(format!("Negotiate {long}")) {
        AuthOutcome::Rejected(r) => assert!(r.detail().contains("too large"), "{r:?}"),
        other => panic!("a long Negotiate header was not refused: {other:?}"),
    }
    let lower = format!("negotiate {}", STANDARD.encode(token_for("HTTP@localhost")));
    let req = OwnedRequest::get("/").header("authorization", lower);
    match runtime.block_on(async { any_http.authenticate(&req).await }) {
        AuthOutcome::Authenticated(_) => {}
        other => panic!("the scheme's case mattered: {other:?}"),
    }
}

/// A Negotiate token for the host-based `service` from alice's credential
/// cache.
fn token_for(service: &str) -> Vec<u8> {
    token_with(service, CtxFlags::GSS_C_MUTUAL_FLAG)
}

/// The same, asking for `flags` (delegation, say).
fn token_with(service: &str, flags: CtxFlags) -> Vec<u8> {
    let target = Name::new(service.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE))
        .and_then(|n| n.canonicalize(Some(GSS_MECH_KRB5)))
        .unwrap();
    let mut ctx = ClientCtx::new(None, target, flags, Some(GSS_MECH_SPNEGO));
    ctx.step(None, None).unwrap().expect("an initial token").to_vec()
}
