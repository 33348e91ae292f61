//! Membership and the change bus against a real Redis (a private instance, or
//! `FAIRGATE_TEST_REDIS_URL`). Each test uses its own key prefix, so tests share one server.

use std::sync::Arc;
use std::time::Duration;

use fairgate_cluster::{Change, Cluster, ClusterConfig};
use tokio_util::sync::CancellationToken;

fn config(redis: &str, prefix: &str, replica: &str) -> ClusterConfig {
    ClusterConfig {
        redis_url: redis.to_owned(),
        replica_id: replica.to_owned(),
        key_prefix: format!("fgtest:{prefix}:{}", std::process::id()),
        heartbeat: Duration::from_millis(100),
        member_ttl: Duration::from_millis(400),
        op_timeout: Duration::from_millis(500),
    }
}

fn ids(c: &Cluster) -> Vec<String> {
    let mut v: Vec<String> = c.members().into_iter().map(|m| m.id).collect();
    v.sort();
    v
}

/// Waits (up to 10 s, generous: this checks behaviour, not speed) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: never happened");
}

#[tokio::test]
async fn replicas_see_each_other_and_a_dead_one_leaves() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let a = Cluster::new(config(&redis, "members", "host-a:8080")).unwrap();
    let b = Cluster::new(config(&redis, "members", "host-b:8080")).unwrap();
    a.heartbeat().await.unwrap();
    b.heartbeat().await.unwrap();
    a.heartbeat().await.unwrap();
    let mut both = vec![a.member_id().to_owned(), b.member_id().to_owned()];
    both.sort();
    assert_eq!(ids(&a), both);
    assert!(a.redis_up());
    let me: Vec<_> = a.members().into_iter().filter(|m| m.this).collect();
    assert_eq!(me.len(), 1);
    assert_eq!(me[0].replica, "host-a:8080");

    // b stops beating (killed): a forgets it once the TTL has passed.
    let mut gone = false;
    for _ in 0..200 {
        if a.heartbeat().await.unwrap().len() == 1 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "b never expired");
    assert_eq!(ids(&a), vec![a.member_id().to_owned()]);

    // A restart on the same host and port is a new member, not the old one back.
    let b2 = Cluster::new(config(&redis, "members", "host-b:8080")).unwrap();
    assert_ne!(b2.member_id(), b.member_id());
    b2.heartbeat().await.unwrap();
    let live = a.heartbeat().await.unwrap();
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|m| m.id != b.member_id()));

    // A clean stop leaves at once.
    b2.leave().await.unwrap();
    let live = a.heartbeat().await.unwrap();
    assert_eq!(live.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_the_other_replicas_but_not_its_sender() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let stop = CancellationToken::new();
    let a = Cluster::new(config(&redis, "bus", "a")).unwrap();
    let b = Cluster::new(config(&redis, "bus", "b")).unwrap();
    let mut from_a = a.start(stop.clone());
    let mut from_b = b.start(stop.clone());
    // Subscriptions are asynchronous: publish until b has heard one.
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            a.publish(Change::Directory).await.unwrap();
            if let Ok(Some(c)) =
                tokio::time::timeout(Duration::from_millis(100), from_b.recv()).await
            {
                return c;
            }
        }
    })
    .await
    .expect("b hears a's change");
    assert_eq!(heard, Change::Directory);
    assert!(b.stats().changes_received >= 1);
    assert!(a.stats().changes_published >= 1);
    // a does not hear itself.
    assert!(from_a.try_recv().is_err());
    // Both beat: each sees the other.
    let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
    eventually("both members", move || {
        a2.members().len() == 2 && b2.members().len() == 2
    })
    .await;
    stop.cancel();
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_within_the_timeout_not_a_hang() {
    // A port nobody listens on (reserved, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(&format!("redis://127.0.0.1:{port}"), "down", "x");
    cfg.op_timeout = Duration::from_millis(200);
    let c = Cluster::new(cfg).unwrap();
    // Each call gives up by itself (the outer timeout only guards the test against a hang).
    let calls = async {
        assert!(c.heartbeat().await.is_err());
        assert!(c.publish(Change::Directory).await.is_err());
    };
    tokio::time::timeout(Duration::from_secs(30), calls)
        .await
        .expect("calls to an unreachable redis must fail, not hang");
    assert!(!c.redis_up());
    assert_eq!(c.stats().errors, 2);
}
