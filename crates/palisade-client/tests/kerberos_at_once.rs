//! Outbound Kerberos calls for different users run at once: MIT Kerberos
//! holds a credential's lock for a whole impersonation, its requests to the
//! KDC included, so calls sharing the service's one credential would reach
//! the KDC one after the other (one slow realm holding up every user).
//!
//! The test starts a real MIT KDC behind a proxy that holds each
//! connection back until a second one is open (or five seconds have
//! passed), and makes two S4U calls at once in a run of itself whose
//! Kerberos configuration names the proxy: both reach the KDC together
//! only when each call has a credential of its own.

// Without the feature this test cannot run: listed as ignored with the
// reason (not skipped in silence, and not a failure of a build that did
// not ask for Kerberos); asked for anyway (`--include-ignored`), it fails
// saying why. CI runs every feature.
#[cfg(not(feature = "spnego"))]
#[test]
#[ignore = "outbound Kerberos needs palisade-client's `spnego` feature: run with --features spnego (or --all-features)"]
fn calls_for_two_users_reach_the_kdc_at_once() {
    panic!(
        "outbound Kerberos needs palisade-client's `spnego` feature: run with --features spnego (or --all-features)"
    );
}

#[cfg(feature = "spnego")]
mod with_spnego {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use palisade_client::{CallerToken, Credentials, Kerberos, KerberosCaller};
    use palisade_spnego::Impersonator;
    use palisade_testkit::KerberosRealm;

    const CHILD: &str = "PALISADE_CLIENT_KERBEROS_AT_ONCE_CHILD";
    const TEST: &str = "with_spnego::calls_for_two_users_reach_the_kdc_at_once";

    /// Connections through the proxy: open now, and the most open at once.
    #[derive(Default)]
    struct Seen {
        open: AtomicUsize,
        most: AtomicUsize,
    }

    /// A TCP proxy to the KDC at `kdc` that holds each connection back
    /// until a second one is open or five seconds have passed: its port.
    fn holding_proxy(kdc: u16, seen: Arc<Seen>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let now = seen.open.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.most.fetch_max(now, Ordering::SeqCst);
                    let until = Instant::now() + Duration::from_secs(5);
                    while seen.most.load(Ordering::SeqCst) < 2 && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", kdc)) {
                        let (mut c, mut s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let up = std::thread::spawn(move || pipe(&mut c, &mut s));
                        let (mut s, mut c) = (server, client);
                        pipe(&mut s, &mut c);
                        let _ = up.join();
                    }
                    seen.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        port
    }

    /// Copies `from` to `to` until `from` ends, then ends `to`'s writing.
    fn pipe(from: &mut TcpStream, to: &mut TcpStream) {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }

    #[test]
    fn calls_for_two_users_reach_the_kdc_at_once() {
        if std::env::var_os(CHILD).is_some() {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(two_at_once());
            return;
        }
        let realm = KerberosRealm::start().unwrap_or_else(|e| panic!("{e}"));
        let keytab = realm.add_service("HTTP/localhost").unwrap();
        realm.allow_protocol_transition("HTTP/localhost").unwrap();
        realm.add_user("alice", "alice-password").unwrap();
        realm.add_user("bob", "bob-password").unwrap();
        let seen = Arc::new(Seen::default());
        let proxy = holding_proxy(realm.kdc_port(), seen.clone());
        let conf = realm.krb5_conf_with_kdc(proxy).unwrap();
        let env = realm.impersonating_env(&keytab, &conf);
        palisade_testkit::run_test_again(TEST, CHILD, &env);
        assert!(
            seen.most.load(Ordering::SeqCst) >= 2,
            "the two calls reached the KDC one after the other"
        );
    }

    /// In the run whose KDC is behind the proxy: two calls at once, for two
    /// users, both given a ticket.
    async fn two_at_once() {
        let imp = Impersonator::new().expect("the service's own credentials from its client keytab");
        let kerberos = Credentials::Kerberos(Kerberos::s4u(imp).kdc_timeout(Duration::from_secs(30)));
        let call = |user: &'static str| {
            let kerberos = kerberos.clone();
            async move {
                let caller = CallerToken::from_kerberos(KerberosCaller::principal(user));
                let mut headers = http::HeaderMap::new();
                let _sent = kerberos
                    .apply(&mut headers, Some("localhost"), Some(&caller))
                    .await
                    .unwrap_or_else(|e| panic!("{user}: {e}"));
                let value = headers
                    .get(http::header::AUTHORIZATION)
                    .unwrap()
                    .to_str()
                    .unwrap();
                assert!(value.starts_with("Negotiate "), "{user}: {value}");
            }
        };
        tokio::join!(call("alice@EXAMPLE.TEST"), call("bob@EXAMPLE.TEST"));
    }
}
