//! The Redis session store against a real `redis-server` on loopback: two
//! stores on one server play two replicas of a service.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use palisade_signin::store::{RedisStore, Revocation, SessionRef, SessionStore, StoreError};
use palisade_testkit::logs::Lines;
use palisade_testkit::redis::RedisServer;

const ISSUER: &str = "https://idp.example";
const HOUR: Duration = Duration::from_secs(3600);
/// How stale the revocation mirror may be before it refuses to answer:
/// long enough that a loaded machine's scheduling never makes a healthy
/// mirror look stale (its reads block a quarter of it, 250 ms).
const MAX_STALENESS: Duration = Duration::from_secs(1);
/// The default (1 s): a connection allows twice this, which a loaded
/// 2-core machine running the whole suite has exceeded at 300 ms.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Every log line of the process, captured once for all tests (the stores
/// log from their own threads, so the subscriber is global).
fn logs() -> Lines {
    Lines::of_process("debug")
}

/// The captured lines at `level` that mention `url`.
fn lines(level: &str, url: &str) -> Vec<String> {
    logs()
        .containing(url)
        .into_iter()
        .filter(|l| l.contains(level))
        .collect()
}

async fn replica(server: &RedisServer) -> RedisStore {
    replica_at(&server.url()).await
}

/// A replica connecting with `url`, with the tests' settings.
async fn replica_at(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .max_staleness(MAX_STALENESS)
        .command_timeout(COMMAND_TIMEOUT)
        .connect()
        .await
        .unwrap()
}

/// Gives the user `user` (password `pw`) every right, then applies `rule`
/// (`-xread` takes a command away, `+zadd` gives one back); the URL it
/// connects with.
async fn acl_user(server: &RedisServer, user: &str, rule: &str) -> String {
    let mut c = admin(server).await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", user, "on", ">pw", "~*", "&*", "+@all", rule][..])
        .query_async(&mut c)
        .await
        .unwrap();
    format!("redis://{user}:pw@127.0.0.1:{}/0", server.port())
}

/// A connection of the test's own to `server`, to write as another
/// release or replica would.
async fn admin(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    // The tests' own writes include transactions of 20,000 commands, which
    // a loaded machine takes longer than redis's default response timeout
    // to answer: a minute, so that a slow answer is not taken for a fault
    // of the store under test.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

/// An announcement's `until` an hour from now: Unix milliseconds, as text.
fn an_hour_hence_ms() -> String {
    (SystemTime::now() + HOUR)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string()
}

fn session<'a>(id: &'a str, subject: &'a str, sid: Option<&'a str>, created: SystemTime) -> SessionRef<'a> {
    let session = SessionRef::new(id, ISSUER, subject, created);
    match sid {
        Some(sid) => session.with_sid(sid),
        None => session,
    }
}

/// Polls `check` until it holds or `within` has passed; how long it took.
async fn eventually(within: Duration, check: impl Fn() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check() {
            return Some(started.elapsed());
        }
        if started.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs a scenario with a bound on its time: a hang fails the test.
async fn bounded<F: Future<Output = ()>>(scenario: F) {
    tokio::time::timeout(Duration::from_secs(30), scenario)
        .await
        .expect("the scenario hung");
}

/// Awaits a store call that must fail quickly: within the command timeout
/// and a margin.
async fn fails_quickly<T: std::fmt::Debug>(call: impl Future<Output = Result<T, StoreError>>) {
    let started = Instant::now();
    let result = call.await;
    let took = started.elapsed();
    assert!(matches!(result, Err(StoreError::Unavailable)), "{result:?}");
    assert!(
        took < COMMAND_TIMEOUT + Duration::from_millis(500),
        "took {took:?}"
    );
}

#[tokio::test]
async fn a_revocation_on_one_replica_is_seen_by_the_other_within_a_second() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let (a, b) = (replica(&server).await, replica(&server).await);
        let now = SystemTime::now();
        let s1 = session("s1", "alice", None, now);
        assert!(!b.is_revoked(&s1).unwrap());
        a.revoke(Revocation::Session {
            id: "s1".into(),
            until: now + HOUR,
        })
        .await
        .unwrap();
        assert!(a.is_revoked(&s1).unwrap(), "the revoking replica sees it at once");
        let took = eventually(Duration::from_secs(1), || b.is_revoked(&s1).unwrap()).await;
        assert!(
            took.is_some(),
            "the other replica did not see the revocation within 1 s"
        );
        assert!(!b.is_revoked(&session("s2", "alice", None, now)).unwrap());
    })
    .await;
}

#[tokio::test]
async fn sid_and_subject_revocations_match_the_right_sessions_only() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let (a, b) = (replica(&server).await, replica(&server).await);
        let now = SystemTime::now();
        let earlier = now - Duration::from_secs(60);
        let later = now + Duration::from_secs(1);
        a.revoke(Revocation::Sid {
            issuer: ISSUER.into(),
            sid: "idp-1".into(),
            before: now + Duration::from_millis(1),
            until: now + HOUR,
        })
        .await
        .unwrap();
        a.revoke(Revocation::Subject {
            issuer: ISSUER.into(),
            subject: "bob".into(),
            before: now,
            until: now + HOUR,
        })
        .await
        .unwrap();
        let marker = session("marker", "carol", None, now);
        a.revoke(Revocation::Session {
            id: "marker".into(),
            until: now + HOUR,
        })
        .await
        .unwrap();
        // The stream is read in order: once the last one is there, all are.
        assert!(
            eventually(Duration::from_secs(1), || b.is_revoked(&marker).unwrap())
                .await
                .is_some()
        );
        for store in [&a, &b] {
            assert!(
                store
                    .is_revoked(&session("x1", "alice", Some("idp-1"), now))
                    .unwrap()
            );
            assert!(
                !store
                    .is_revoked(&session("x2", "alice", Some("idp-2"), now))
                    .unwrap()
            );
            assert!(!store.is_revoked(&session("x3", "alice", None, now)).unwrap());
            let mut other_issuer = session("x4", "alice", Some("idp-1"), now);
            other_issuer.issuer = "https://other.example";
            assert!(!store.is_revoked(&other_issuer).unwrap());
            // A session the identity provider's session began after it.
            assert!(
                !store
                    .is_revoked(&session("x5", "alice", Some("idp-1"), later))
                    .unwrap()
            );
            assert!(store.is_revoked(&session("y1", "bob", None, earlier)).unwrap());
            assert!(!store.is_revoked(&session("y2", "bob", None, later)).unwrap());
            assert!(!store.is_revoked(&session("y3", "alice", None, earlier)).unwrap());
        }
    })
    .await;
}

#[tokio::test]
async fn a_replica_started_later_loads_the_live_revocations() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let a = replica(&server).await;
        let now = SystemTime::now();
        a.revoke(Revocation::Session {
            id: "live".into(),
            until: now + HOUR,
        })
        .await
        .unwrap();
        a.revoke(Revocation::Session {
            id: "short".into(),
            until: now + Duration::from_millis(200),
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let late = replica(&server).await;
        assert!(late.is_revoked(&session("live", "alice", None, now)).unwrap());
        // Past `until`: forgotten, not loaded.
        assert!(!late.is_revoked(&session("short", "alice", None, now)).unwrap());
        // Another prefix is another store.
        let other = RedisStore::builder(&server.url())
            .prefix("other:")
            .connect()
            .await
            .unwrap();
        assert!(!other.is_revoked(&session("live", "alice", None, now)).unwrap());
    })
    .await;
}

#[tokio::test]
async fn use_once_succeeds_once_across_replicas() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let (a, b) = (replica(&server).await, replica(&server).await);
        assert!(a.use_once("jti-1", HOUR).await.unwrap());
        assert!(!b.use_once("jti-1", HOUR).await.unwrap());
        assert!(!a.use_once("jti-1", HOUR).await.unwrap());
        assert!(b.use_once("jti-2", Duration::from_millis(100)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            a.use_once("jti-2", HOUR).await.unwrap(),
            "the mark outlived its ttl"
        );
        // Released (a use whose effect could not be recorded): usable
        // once more, from any replica, and then only once.
        b.release("jti-1").await.unwrap();
        assert!(a.use_once("jti-1", HOUR).await.unwrap(), "released");
        assert!(!b.use_once("jti-1", HOUR).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn session_data_is_shared_replaced_removed_and_expires() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let (a, b) = (replica(&server).await, replica(&server).await);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
        a.put("s1", big.clone(), HOUR).await.unwrap();
        assert_eq!(b.get("s1").await.unwrap(), Some(big));
        b.put("s1", b"replaced".to_vec(), HOUR).await.unwrap();
        assert_eq!(a.get("s1").await.unwrap().as_deref(), Some(&b"replaced"[..]));
        a.remove("s1").await.unwrap();
        assert_eq!(b.get("s1").await.unwrap(), None);
        // Long enough for the other replica to read it on a busy machine.
        a.put("s2", b"brief".to_vec(), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(b.get("s2").await.unwrap().as_deref(), Some(&b"brief"[..]));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(b.get("s2").await.unwrap(), None);
        b.remove("never-there").await.unwrap();
    })
    .await;
}

/// A session's data written with its generation is not replaced by an
/// older generation from another replica (which read it before a refresh);
/// the same or a later one replaces it; data an earlier release wrote
/// without a generation is replaced; a removal forgets the generation too.
#[tokio::test]
async fn a_stored_session_is_never_replaced_by_an_older_generation() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let (a, b) = (replica(&server).await, replica(&server).await);
        // An earlier release's write: no generation beside it.
        a.put("s1", b"release-before".to_vec(), HOUR).await.unwrap();
        assert!(b.put_session("s1", 1, b"gen-1".to_vec(), HOUR).await.unwrap());
        assert!(a.put_session("s1", 3, b"gen-3".to_vec(), HOUR).await.unwrap());
        assert!(!b.put_session("s1", 2, b"gen-2".to_vec(), HOUR).await.unwrap());
        assert_eq!(b.get("s1").await.unwrap().as_deref(), Some(&b"gen-3"[..]));
        assert!(
            b.put_session("s1", 3, b"gen-3-seen".to_vec(), HOUR)
                .await
                .unwrap()
        );
        assert_eq!(a.get("s1").await.unwrap().as_deref(), Some(&b"gen-3-seen"[..]));
        let mut c = admin(&server).await;
        let ttl: i64 = redis::cmd("PTTL")
            .arg("palisade:session-generation:s1")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 3_600_000, "expires with the data: {ttl}");
        a.remove("s1").await.unwrap();
        let left: i64 = redis::cmd("EXISTS")
            .arg("palisade:session:s1")
            .arg("palisade:session-generation:s1")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(left, 0);
        // A session begun again under the id starts from nothing.
        assert!(b.put_session("s1", 0, b"new".to_vec(), HOUR).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn an_outage_fails_closed_quickly_and_recovery_keeps_earlier_revocations() {
    logs();
    bounded(async {
        let mut server = RedisServer::start().unwrap();
        let (a, b) = (replica(&server).await, replica(&server).await);
        let now = SystemTime::now();
        let before_outage = session("before", "alice", None, now);
        a.revoke(Revocation::Session {
            id: "before".into(),
            until: now + HOUR,
        })
        .await
        .unwrap();
        assert!(
            eventually(Duration::from_secs(1), || b.is_revoked(&before_outage).unwrap())
                .await
                .is_some()
        );

        server.kill().unwrap();
        let unavailable =
            |s: &RedisStore| matches!(s.is_revoked(&before_outage), Err(StoreError::Unavailable));
        let took = eventually(MAX_STALENESS + Duration::from_millis(500), || {
            unavailable(&a) && unavailable(&b)
        })
        .await;
        assert!(took.is_some(), "is_revoked still answered from a stale mirror");
        assert!(unavailable(&a) && unavailable(&b));
        fails_quickly(a.use_once("jti", HOUR)).await;
        fails_quickly(b.get("s1")).await;
        fails_quickly(a.put("s1", vec![1], HOUR)).await;
        fails_quickly(a.revoke(Revocation::Session {
            id: "during".into(),
            until: now + HOUR,
        }))
        .await;
        // More than one transaction's worth (500) wait with it.
        for i in 0..700 {
            fails_quickly(a.revoke(Revocation::Session {
                id: format!("late-{i}"),
                until: now + HOUR,
            }))
            .await;
        }

        server.restart().unwrap();
        let back = eventually(Duration::from_secs(5), || {
            a.is_revoked(&before_outage).is_ok() && b.is_revoked(&before_outage).is_ok()
        })
        .await;
        assert!(back.is_some(), "the mirrors did not recover within 5 s");
        // The restarted Redis lost its data; the replicas did not forget.
        assert!(a.is_revoked(&before_outage).unwrap());
        assert!(b.is_revoked(&before_outage).unwrap());
        // The revocation Redis could not record during the outage: honoured
        // by its replica all along, written once Redis answered, and so
        // learnt by the other.
        let during = session("during", "alice", None, now);
        assert!(a.is_revoked(&during).unwrap());
        assert!(
            eventually(Duration::from_secs(2), || b.is_revoked(&during).unwrap())
                .await
                .is_some(),
            "the other replica never learnt the revocation made during the outage"
        );
        let late = session("late-699", "alice", None, now);
        assert!(
            eventually(Duration::from_secs(2), || b.is_revoked(&late).unwrap())
                .await
                .is_some(),
            "the last of the second transaction did not arrive"
        );
        let fresh = replica(&server).await;
        assert!(fresh.is_revoked(&during).unwrap(), "not in Redis");
        for i in [0, 499, 500, 699] {
            let id = format!("late-{i}");
            assert!(
                fresh.is_revoked(&session(&id, "alice", None, now)).unwrap(),
                "{id} not in Redis"
            );
        }
        assert!(a.use_once("jti", HOUR).await.unwrap());
        let after = session("after", "alice", None, now);
        b.revoke(Revocation::Session {
            id: "after".into(),
            until: now + HOUR,
        })
        .await
        .unwrap();
        assert!(
            eventually(Duration::from_secs(1), || a.is_revoked(&after).unwrap())
                .await
                .is_some()
        );

        // One warn line when each mirror went stale, one info line when it
        // came back, one when the late revocation was written; no session
        // id in any.
        let url = server.url();
        eventually(Duration::from_secs(1), || lines(" INFO ", &url).len() == 3).await;
        let (warns, infos) = (lines(" WARN ", &url), lines(" INFO ", &url));
        assert_eq!(warns.len(), 2, "{warns:#?}");
        assert_eq!(infos.len(), 3, "{infos:#?}");
        assert!(warns[0].contains("revocations not synced"), "{warns:#?}");
        let written: Vec<_> = infos.iter().filter(|l| l.contains("written now")).collect();
        assert_eq!(written.len(), 1, "{infos:#?}");
        assert!(written[0].contains("count=701"), "{written:#?}");
        for line in warns.iter().chain(&infos).chain(&lines("DEBUG", &url)) {
            assert!(
                !line.contains("before") && !line.contains("during") && !line.contains("late-"),
                "{line}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_hung_redis_times_commands_out_and_fails_closed_until_it_answers() {
    bounded(async {
        let mut server = RedisServer::start().unwrap();
        let a = replica(&server).await;
        let now = SystemTime::now();
        let s = session("s", "alice", None, now);
        assert!(a.use_once("warm-up", HOUR).await.unwrap());

        server.pause().unwrap();
        fails_quickly(a.use_once("jti", HOUR)).await;
        fails_quickly(a.get("s")).await;
        let stale = eventually(MAX_STALENESS + Duration::from_millis(500), || {
            a.is_revoked(&s).is_err()
        })
        .await;
        assert!(stale.is_some(), "is_revoked still answered while Redis hung");

        server.resume().unwrap();
        let back = eventually(Duration::from_secs(5), || a.is_revoked(&s).is_ok()).await;
        assert!(back.is_some(), "the mirror did not recover within 5 s");
        // (The `jti` command that timed out may have run once Redis
        // resumed: a timed-out command can still take effect.)
        assert!(a.use_once("jti-after", HOUR).await.unwrap());
        assert!(!a.use_once("jti-after", HOUR).await.unwrap());
    })
    .await;
}

#[test]
fn the_store_outlives_the_runtime_that_connected_it() {
    let server = RedisServer::start().unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // As actix-web does: one single-threaded runtime per worker.
    let store = runtime().block_on(replica(&server));
    let other = runtime();
    assert!(other.block_on(store.use_once("k", HOUR)).unwrap());
    assert!(!other.block_on(store.clone().use_once("k", HOUR)).unwrap());
    let debug = format!("{store:?}");
    assert!(debug.contains(&server.url()), "{debug}");
}

#[test]
fn connect_blocking_needs_no_runtime_and_works_inside_one() {
    let server = RedisServer::start().unwrap();
    let plain = RedisStore::connect_blocking(&server.url()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inside = runtime.block_on(async { RedisStore::connect_blocking(&server.url()).unwrap() });
    assert!(runtime.block_on(plain.use_once("k", HOUR)).unwrap());
    assert!(!runtime.block_on(inside.use_once("k", HOUR)).unwrap());
    let port = server.port();
    drop(server);
    let err = RedisStore::connect_blocking(&format!("redis://127.0.0.1:{port}/0")).unwrap_err();
    assert!(matches!(err, StoreError::Connect { .. }), "{err}");
}

/// How many times the server ran `command` (`INFO commandstats`).
async fn calls(server: &RedisServer, command: &str) -> u64 {
    command_stat(server, command, "calls").await
}

/// One figure of `INFO commandstats` for `command` (`calls`, or
/// `rejected_calls`: refused by an ACL, say), 0 when it never ran.
async fn command_stat(server: &RedisServer, command: &str, field: &str) -> u64 {
    let mut c = admin(server).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|stats| {
            stats
                .trim()
                .split(',')
                .find_map(|kv| kv.strip_prefix(field).and_then(|rest| rest.strip_prefix('=')))
        })
        .map_or(0, |n| n.parse().unwrap())
}

/// A mirror whose every read fails (here an ACL that refuses `XREAD`)
/// reloads the whole set of revocations after a growing pause, not in a
/// loop: a handful of reloads in two seconds, where a loop makes
/// thousands.
#[tokio::test]
async fn a_mirror_whose_reads_always_fail_reloads_with_backoff() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let store = replica_at(&acl_user(&server, "mirror", "-xread").await).await;
        // Everything else works for this user.
        assert!(store.use_once("jti", HOUR).await.unwrap());
        let before = calls(&server, "zrangebyscore").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let reloads = calls(&server, "zrangebyscore").await - before;
        // 50 ms, doubled each time up to 1 s: about five in two seconds.
        assert!((1..=12).contains(&reloads), "{reloads} reloads in 2 s");
        // Redis counts a command its ACL refuses as rejected, not called.
        let refused = command_stat(&server, "xread", "rejected_calls").await;
        assert!(
            (1..=13).contains(&refused),
            "{refused} refused reads: none tried, or retried in a loop"
        );
        drop(store);
    })
    .await;
}

/// Announcements this version cannot read (another release's kind of
/// revocation, a member that is not JSON, a missing field) are skipped,
/// and the mirror goes on: the revocations announced after them arrive,
/// and the mirror stays fresh.
#[tokio::test]
async fn unreadable_announcements_are_skipped_and_the_mirror_goes_on() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let store = replica(&server).await;
        let loads = calls(&server, "zrangebyscore").await;
        let mut c = admin(&server).await;
        let until = an_hour_hence_ms();
        let announcements: [&[&str]; 4] = [
            &["m", r#"["device","d1"]"#, "u", &until],
            &["m", "not json", "u", &until],
            &["m", r#"["session","s1"]"#],
            &["m", r#"["session","s1"]"#, "u", "soon"],
        ];
        for fields in announcements {
            let _: String = redis::cmd("XADD")
                .arg("palisade:revoked:stream")
                .arg("*")
                .arg(fields)
                .query_async(&mut c)
                .await
                .unwrap();
        }
        let now = SystemTime::now();
        let s1 = session("s1", "alice", None, now);
        // Then a good one, written by another replica.
        replica(&server)
            .await
            .revoke(Revocation::Session {
                id: "s2".into(),
                until: now + HOUR,
            })
            .await
            .unwrap();
        let s2 = session("s2", "alice", None, now);
        assert!(
            eventually(Duration::from_secs(1), || store.is_revoked(&s2).unwrap())
                .await
                .is_some(),
            "the announcement after the unreadable ones did not arrive"
        );
        assert!(
            !store.is_revoked(&s1).unwrap(),
            "an announcement without its time was applied"
        );
        // Unreadable ones last too: the mirror reads past them, not the
        // same ones again and again.
        for fields in &announcements[..2] {
            let _: String = redis::cmd("XADD")
                .arg("palisade:revoked:stream")
                .arg("*")
                .arg(*fields)
                .query_async(&mut c)
                .await
                .unwrap();
        }
        let reads = calls(&server, "xread").await;
        tokio::time::sleep(MAX_STALENESS + Duration::from_millis(100)).await;
        assert!(store.is_revoked(&s2).unwrap(), "the mirror went stale");
        // A read blocks 250 ms when nothing is new: about four a second.
        let reads = calls(&server, "xread").await - reads;
        assert!(reads <= 12, "{reads} reads in 1.1 s: the same entries read again");
        // Skipped in the stream, not by reconnecting and reloading: the one
        // load since is the other replica's, at its start.
        assert_eq!(calls(&server, "zrangebyscore").await - loads, 1);
    })
    .await;
}

/// A replica that falls further behind than the stream keeps notices and
/// reloads the set rather than skip what the trimming took: here one
/// transaction revokes 20,000 sessions, so by the mirror's next read the
/// stream (trimmed to about 10,000 entries) no longer holds the first
/// announcements. Without the check the first sessions stay valid on that
/// replica until it next reconnects. A replica behind by less than the
/// stream keeps reads on, without a reload.
#[tokio::test]
async fn a_mirror_that_falls_behind_the_trimmed_stream_reloads() {
    logs();
    bounded(async {
        let server = RedisServer::start().unwrap();
        let url = server.url();
        let mut c = admin(&server).await;
        let revoke = |range: std::ops::Range<u32>| {
            let mut tx = redis::pipe();
            tx.atomic();
            revoke_in(&mut tx, range);
            tx
        };
        // The mirror starts from an entry, not from an empty stream.
        let () = revoke(0..1).query_async(&mut c).await.unwrap();
        let store = replica(&server).await;
        let loads = calls(&server, "zrangebyscore").await;

        // Behind by 5,000: five full reads from entries still held.
        let () = revoke(1..5_001).query_async(&mut c).await.unwrap();
        assert!(
            eventually(Duration::from_secs(5), || revoked(&store, 5_000))
                .await
                .is_some(),
            "the revocations of the first transaction did not arrive"
        );
        assert!(revoked(&store, 1), "an announcement was skipped");
        assert_eq!(
            calls(&server, "zrangebyscore").await,
            loads,
            "reloaded while the stream held all"
        );

        // Behind by 20,000: the stream no longer holds the entry it read last.
        let () = revoke(5_001..25_001).query_async(&mut c).await.unwrap();
        let kept: usize = redis::cmd("XLEN")
            .arg("palisade:revoked:stream")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(kept < 15_000, "the stream kept {kept}: nothing to miss");
        assert!(
            eventually(Duration::from_secs(5), || revoked(&store, 25_000))
                .await
                .is_some(),
            "the last revocation did not arrive"
        );
        assert!(
            eventually(Duration::from_secs(5), || revoked(&store, 5_001))
                .await
                .is_some(),
            "the revocations trimmed from the stream before the mirror read them were skipped"
        );
        // One reload, not one per read.
        assert_eq!(calls(&server, "zrangebyscore").await - loads, 1);
        let warned = lines("WARN", &url);
        assert_eq!(
            warned
                .iter()
                .filter(|l| l.contains("fallen further behind"))
                .count(),
            1,
            "{warned:?}"
        );
    })
    .await;
}

/// A stream deleted and made again (an eviction, a `DEL`) while a replica
/// follows it loses the announcements the replica had not read: the
/// replica notices that the entry it read last is gone and reloads.
#[tokio::test]
async fn a_mirror_whose_stream_was_deleted_under_it_reloads() {
    logs();
    bounded(async {
        let server = RedisServer::start().unwrap();
        let mut c = admin(&server).await;
        // The mirror starts from an entry, not from an empty stream.
        let mut tx = redis::pipe();
        revoke_in(&mut tx, 0..1);
        let () = tx.query_async(&mut c).await.unwrap();
        let store = replica(&server).await;
        let loads = calls(&server, "zrangebyscore").await;
        // One transaction: revocations announced, the stream deleted, one
        // more announced on a stream of its own.
        let mut tx = redis::pipe();
        tx.atomic();
        revoke_in(&mut tx, 1..4);
        tx.cmd("DEL").arg("palisade:revoked:stream").ignore();
        revoke_in(&mut tx, 4..5);
        let () = tx.query_async(&mut c).await.unwrap();
        assert!(
            eventually(Duration::from_secs(5), || revoked(&store, 4))
                .await
                .is_some(),
            "the announcement after the deletion did not arrive"
        );
        assert!(
            eventually(Duration::from_secs(5), || revoked(&store, 2))
                .await
                .is_some(),
            "the announcements deleted before the mirror read them were skipped"
        );
        assert_eq!(calls(&server, "zrangebyscore").await - loads, 1);
    })
    .await;
}

/// Adds to `tx` the revocation of the sessions `bulk-N` for N in `range`,
/// as a replica writes it: into the set, announced on the stream.
fn revoke_in(tx: &mut redis::Pipeline, range: std::ops::Range<u32>) {
    let until = an_hour_hence_ms();
    for i in range {
        let member = format!(r#"["session","bulk-{i}"]"#);
        tx.cmd("ZADD")
            .arg("palisade:revoked")
            .arg(&until)
            .arg(&member)
            .ignore()
            .cmd("XADD")
            .arg("palisade:revoked:stream")
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("m")
            .arg(&member)
            .arg("u")
            .arg(&until)
            .ignore();
    }
}

/// Whether `store` knows the session `bulk-N` revoked (`false` while its
/// mirror refuses to answer).
fn revoked(store: &RedisStore, i: u32) -> bool {
    let id = format!("bulk-{i}");
    store
        .is_revoked(&session(&id, "alice", None, SystemTime::now()))
        .unwrap_or(false)
}

/// A command connection that died while idle (a proxy's idle timeout, a
/// NAT's, a Redis restarted or told to close it) fails the next command
/// on it; that command is sent again once on a new connection rather than
/// fail: the first back-channel logout after a quiet night would be lost.
#[tokio::test]
async fn a_command_on_a_connection_that_died_idle_is_sent_again_once() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let store = replica(&server).await;
        assert!(store.use_once("jti-1", HOUR).await.unwrap());
        let mut admin = admin(&server).await;
        let killed: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(killed >= 2, "the store's connections: {killed}");
        let sent = store.use_once("jti-2", HOUR).await;
        assert!(matches!(sent, Ok(true)), "{sent:?}");
        let again = store.use_once("jti-1", HOUR).await;
        assert!(matches!(again, Ok(false)), "remembered: {again:?}");
    })
    .await;
}

/// A TCP proxy on loopback to Redis on `port`: once `armed`, the client
/// bytes that contain `needle` reach Redis, and then that connection is
/// closed without Redis's answer (a reply lost in a connection that died).
async fn lossy_proxy(
    port: u16,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    needle: &'static [u8],
) -> u16 {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let (mut client_in, mut client_out) = client.into_split();
            let (mut server_in, mut server_out) = upstream.into_split();
            let armed = std::sync::Arc::clone(&armed);
            let answers = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_in, &mut client_out).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n) = client_in.read(&mut buf).await {
                    let hit = buf[..n].windows(needle.len()).any(|w| w == needle);
                    let lose = hit && armed.swap(false, Ordering::SeqCst);
                    if lose {
                        // No answer goes back from here on.
                        answers.abort();
                    }
                    if n == 0 || server_out.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if lose {
                        // Redis takes it; then the connection dies.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                }
            });
        }
    });
    proxy
}

/// A `use_once` whose answer was lost with its connection, sent again on
/// a new one, is still this call's first use (the key holds its own
/// mark), not a replay: else a back-channel logout would be refused as
/// one, and lost.
#[tokio::test]
async fn a_first_use_whose_answer_was_lost_is_still_the_first() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let proxy = lossy_proxy(server.port(), std::sync::Arc::clone(&armed), b"jti-lost").await;
        let store = replica_at(&format!("redis://127.0.0.1:{proxy}/0")).await;
        assert!(store.use_once("jti-warm", HOUR).await.unwrap());
        armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let first = store.use_once("jti-lost", HOUR).await;
        assert!(
            !armed.load(std::sync::atomic::Ordering::SeqCst),
            "the answer was lost"
        );
        assert!(matches!(first, Ok(true)), "{first:?}");
        let again = store.use_once("jti-lost", HOUR).await;
        assert!(matches!(again, Ok(false)), "{again:?}");
    })
    .await;
}

/// A Redis that answers reads and refuses every write (here
/// `min-replicas-to-write` unmet, as a read-only replica after a failover
/// or an out-of-memory Redis refuse them): a logout on one replica cannot
/// reach the others, so every replica refuses sessions once that has
/// lasted `max_staleness`, and takes them again, with the logout written,
/// once Redis takes writes.
#[tokio::test]
async fn a_redis_that_refuses_writes_fails_closed_on_every_replica() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let (a, b) = (replica(&server).await, replica(&server).await);
        let mut admin = admin(&server).await;
        let now = SystemTime::now();
        let alice = session("alice-1", "alice", None, now);
        assert!(!b.is_revoked(&alice).unwrap());
        let refuse = |n: u32| {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("min-replicas-to-write")
                .arg(n)
                .to_owned()
        };
        let _: () = refuse(1).query_async(&mut admin).await.unwrap();
        let revoked = a
            .revoke(Revocation::Session {
                id: "alice-1".into(),
                until: now + HOUR,
            })
            .await;
        assert!(matches!(revoked, Err(StoreError::Unavailable)), "{revoked:?}");
        for (name, store) in [("a", &a), ("b", &b)] {
            assert!(
                eventually(MAX_STALENESS * 3, || store.is_revoked(&alice).is_err())
                    .await
                    .is_some(),
                "{name} still answers while no logout can be recorded"
            );
        }
        assert!(
            lines("WARN", &server.url())
                .iter()
                .any(|l| l.contains("refuses writes")),
            "said"
        );
        let _: () = refuse(0).query_async(&mut admin).await.unwrap();
        assert!(
            eventually(MAX_STALENESS * 3, || matches!(b.is_revoked(&alice), Ok(true)))
                .await
                .is_some(),
            "b answers again, and knows the logout written late"
        );
        assert!(matches!(a.is_revoked(&alice), Ok(true)));
    })
    .await;
}

/// Redis refuses the revocation's write while it answers reads (here an
/// ACL that takes `ZADD` away from one replica's user): the revoking
/// replica honours it, keeps it, refuses sessions while writes are refused
/// (its mirror's write probe is), and writes it once writes work; the
/// other replica learns it from the stream, without a reload.
#[tokio::test]
async fn a_revocation_whose_write_is_refused_is_written_once_writes_work() {
    bounded(async {
        let server = RedisServer::start().unwrap();
        let a = replica_at(&acl_user(&server, "app", "+zadd").await).await;
        let b = replica(&server).await;
        let loads = calls(&server, "zrangebyscore").await;
        acl_user(&server, "app", "-zadd").await;
        let now = SystemTime::now();
        let refused = session("refused", "alice", None, now);
        let revoked = a
            .revoke(Revocation::Session {
                id: "refused".into(),
                until: now + HOUR,
            })
            .await;
        assert!(matches!(revoked, Err(StoreError::Unavailable)), "{revoked:?}");
        assert!(a.is_revoked(&refused).unwrap(), "the revoking replica honours it");
        let execs = calls(&server, "exec").await;
        let probes = command_stat(&server, "zadd", "rejected_calls").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Not written again while a write that changes nothing (the
        // mirror's probe, at most one per read: four a second here) is
        // refused too; that replica meanwhile refuses sessions.
        assert_eq!(
            calls(&server, "exec").await,
            execs,
            "tried while writes are refused"
        );
        let probed = command_stat(&server, "zadd", "rejected_calls").await - probes;
        assert!((4..=16).contains(&probed), "{probed} probes in 3 s");
        assert!(a.is_revoked(&refused).is_err(), "a fails closed");
        assert!(
            !b.is_revoked(&refused).unwrap(),
            "written while writes were refused"
        );

        acl_user(&server, "app", "+zadd").await;
        assert!(
            eventually(Duration::from_secs(3), || b.is_revoked(&refused).unwrap())
                .await
                .is_some(),
            "the other replica did not learn it once writes worked"
        );
        assert!(
            eventually(Duration::from_secs(3), || matches!(
                a.is_revoked(&refused),
                Ok(true)
            ))
            .await
            .is_some(),
            "a answers again"
        );
        // Neither mirror reloaded: b stayed fresh throughout, a followed
        // the stream while it refused sessions.
        assert_eq!(calls(&server, "zrangebyscore").await, loads);
    })
    .await;
}
