//! `RedisReplayStore` against a real `redis-server`: shared by replicas,
//! records that expire, and a Redis that stops answering refused within the
//! timeout, then used again.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_core::Check;
use palisade_jwt::dpop::{RedisReplayStore, ReplayStore, ReplayStoreError};
use palisade_testkit::redis::RedisServer;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn first_use(store: &RedisReplayStore, key: u8, expires_at: u64) -> Result<bool, ReplayStoreError> {
    match store.first_use(&[key; 32], expires_at) {
        Check::Ready(r) => r,
        Check::Pending(f) => f.await,
    }
}

fn store(redis: &RedisServer) -> RedisReplayStore {
    RedisReplayStore::builder(&redis.url())
        .command_timeout(Duration::from_millis(500))
        .connect_blocking()
        .unwrap()
}

#[tokio::test]
async fn a_proof_used_at_one_replica_is_refused_at_another() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = (store(&redis), store(&redis));
    let until = now() + 60;
    assert_eq!(first_use(&a, 1, until).await, Ok(true));
    assert_eq!(
        first_use(&b, 1, until).await,
        Ok(false),
        "the other replica sees the use"
    );
    assert_eq!(first_use(&a, 1, until).await, Ok(false));
    assert_eq!(first_use(&b, 2, until).await, Ok(true), "another proof is new");
    // Another prefix is another store.
    let other = RedisReplayStore::builder(&redis.url())
        .prefix("other:")
        .connect_blocking()
        .unwrap();
    assert_eq!(first_use(&other, 1, until).await, Ok(true));
}

#[tokio::test]
async fn records_expire_by_themselves() {
    let redis = RedisServer::start().unwrap();
    let a = store(&redis);
    // Kept to the end of the second `until`: at most 4 s from the uses.
    let until = now() + 3;
    assert_eq!(first_use(&a, 3, until).await, Ok(true));
    assert_eq!(first_use(&a, 3, until).await, Ok(false));
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert_eq!(first_use(&a, 3, now() + 60).await, Ok(true), "expired at {until}");
}

/// A proof is accepted to the end of its last second (`expires_at` is
/// inclusive), so its record lasts as long: a replay in that second is
/// refused.
#[tokio::test]
async fn a_record_lasts_to_the_end_of_its_last_second() {
    let redis = RedisServer::start().unwrap();
    let a = store(&redis);
    let until = now();
    assert_eq!(first_use(&a, 7, until).await, Ok(true));
    assert_eq!(
        first_use(&a, 7, until).await,
        Ok(false),
        "replayed in its last second"
    );
}

#[tokio::test]
async fn a_redis_that_stops_answering_is_refused_in_time_then_used_again() {
    let mut redis = RedisServer::start().unwrap();
    let a = store(&redis);
    assert_eq!(first_use(&a, 4, now() + 60).await, Ok(true));
    // Frozen: the connection is open, nothing answers.
    redis.pause().unwrap();
    let started = Instant::now();
    assert_eq!(
        first_use(&a, 5, now() + 60).await,
        Err(ReplayStoreError::Unavailable)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    redis.resume().unwrap();
    // Gone: connections are refused.
    redis.kill().unwrap();
    let started = Instant::now();
    assert_eq!(
        first_use(&a, 6, now() + 60).await,
        Err(ReplayStoreError::Unavailable)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match first_use(&a, 7, now() + 60).await {
            Ok(first) => {
                assert!(first);
                break;
            }
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("Redis is back but the store says {e}"),
        }
    }
}

#[test]
fn connecting_at_start_up_fails_clearly_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisReplayStore::builder(&format!("redis://:hunter2@127.0.0.1:{port}/0"))
        .connect_blocking()
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
