//! The sign-in throttle shared through a real Redis: the rules hold across replicas (two
//! throttles on one Redis count together), and a Redis outage falls back to local counting.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fairgate_cluster::{Cluster, ClusterConfig};
use fairgate_portal::throttle::{SharedThrottle, SignInThrottle, ThrottleReason, ThrottleRules};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn replica(redis: &str, test: &str) -> SharedThrottle {
    let cluster: Arc<Cluster> = Cluster::new(ClusterConfig {
        redis_url: redis.to_owned(),
        replica_id: "r".into(),
        key_prefix: format!("fgtest:throttle:{test}:{}", std::process::id()),
        heartbeat: Duration::from_millis(100),
        member_ttl: Duration::from_millis(500),
        op_timeout: Duration::from_millis(500),
    })
    .unwrap();
    SharedThrottle::new(ThrottleRules::default(), cluster)
}

async fn fail(t: &SharedThrottle, account: &str, addr: IpAddr) {
    t.check(account, addr).await.unwrap();
    t.record_failure(account, addr).await;
}

#[tokio::test]
async fn guesses_spread_over_replicas_count_together() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let (a, b) = (replica(&redis, "pair"), replica(&redis, "pair"));
    let x = ip("198.51.100.7");
    // Five failures for one account from one address, spread over two replicas.
    for i in 0..5 {
        fail(if i % 2 == 0 { &a } else { &b }, "alice@example.org", x).await;
    }
    for t in [&a, &b] {
        let e = t.check("alice@example.org", x).await.unwrap_err();
        assert_eq!(e.reason, ThrottleReason::AccountFromAddress);
        assert!(e.retry_after > Duration::ZERO && e.retry_after <= Duration::from_secs(900));
    }
    // Another address, and another account from that address, are untouched.
    assert!(a
        .check("alice@example.org", ip("203.0.113.9"))
        .await
        .is_ok());
    assert!(b.check("bob@example.org", x).await.is_ok());
}

#[tokio::test]
async fn an_address_guessing_many_accounts_is_refused_but_not_for_its_regulars() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let (a, b) = (replica(&redis, "addr"), replica(&redis, "addr"));
    let nat = ip("192.0.2.50");
    // A regular signs in from the shared address first (on a).
    a.record_success("carol@example.org", nat).await;
    for i in 0..20 {
        fail(
            if i % 2 == 0 { &a } else { &b },
            &format!("u{i}@example.org"),
            nat,
        )
        .await;
    }
    let e = b.check("dave@example.org", nat).await.unwrap_err();
    assert_eq!(e.reason, ThrottleReason::Address);
    // The regular still gets in, on either replica.
    assert!(b.check("carol@example.org", nat).await.is_ok());
}

#[tokio::test]
async fn an_account_guessed_from_everywhere_is_slowed_fleet_wide() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let (a, b) = (replica(&redis, "slow"), replica(&redis, "slow"));
    let owner = ip("192.0.2.1");
    a.record_success("erin@example.org", owner).await;
    for i in 0..10 {
        let t = if i % 2 == 0 { &a } else { &b };
        fail(t, "erin@example.org", ip(&format!("203.0.113.{}", i + 10))).await;
    }
    // One attempt per interval across the fleet: the first takes it, the next (on the other
    // replica) waits.
    assert!(a
        .check("erin@example.org", ip("198.51.100.1"))
        .await
        .is_ok());
    let e = b
        .check("erin@example.org", ip("198.51.100.2"))
        .await
        .unwrap_err();
    assert_eq!(e.reason, ThrottleReason::AccountSlowed);
    // The owner's usual address is not slowed.
    assert!(b.check("erin@example.org", owner).await.is_ok());
}

#[tokio::test]
async fn without_redis_each_replica_still_throttles_on_its_own() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = replica(&format!("redis://127.0.0.1:{port}"), "down");
    let x = ip("198.51.100.99");
    for _ in 0..5 {
        fail(&t, "frank@example.org", x).await;
    }
    let e = t.check("frank@example.org", x).await.unwrap_err();
    assert_eq!(e.reason, ThrottleReason::AccountFromAddress);
}
