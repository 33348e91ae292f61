//! Pool leases against a real Redis: the slots all replicas may fill never add up to more than
//! the capacity, idle capacity goes to whoever wants it, contended capacity is split max-min
//! fair, and a dead replica's slots come back.

use std::sync::Arc;
use std::time::Duration;

use fairgate_cluster::{Cluster, ClusterConfig};

const TTL: Duration = Duration::from_millis(300);

fn member(redis: &str, prefix: &str, replica: &str) -> Arc<Cluster> {
    Cluster::new(ClusterConfig {
        redis_url: redis.to_owned(),
        replica_id: replica.to_owned(),
        key_prefix: format!("fgtest:{prefix}:{}", std::process::id()),
        heartbeat: Duration::from_millis(100),
        member_ttl: TTL,
        op_timeout: Duration::from_millis(500),
    })
    .unwrap()
}

/// Heartbeats for every member, then waits out the grace a fresh pool starts with.
async fn join(members: &[&Arc<Cluster>], pool: &str) {
    for m in members {
        m.heartbeat().await.unwrap();
        m.lease(pool, 16, 0, 0, 1, None).await.unwrap();
    }
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    for m in members {
        m.heartbeat().await.unwrap();
    }
}

#[tokio::test]
async fn a_fresh_pool_grows_nobody_during_its_grace_then_lends_everything() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let a = member(&redis, "grace", "a");
    a.heartbeat().await.unwrap();
    // Right after the pool is first seen, only what is already in flight is granted.
    assert_eq!(a.lease("m", 16, 10, 0, 1, None).await.unwrap().grant, 0);
    assert_eq!(a.lease("m", 16, 10, 3, 1, None).await.unwrap().grant, 3);
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    a.heartbeat().await.unwrap();
    // Alone, a replica may have all it asks for, up to the capacity.
    assert_eq!(a.lease("m", 16, 10, 3, 1, None).await.unwrap().grant, 10);
    assert_eq!(a.lease("m", 16, 40, 10, 1, None).await.unwrap().grant, 16);
}

#[tokio::test]
async fn contended_capacity_is_split_fairly_without_ever_exceeding_it() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let (a, b) = (member(&redis, "split", "a"), member(&redis, "split", "b"));
    join(&[&a, &b], "m").await;
    // a takes everything while b is idle.
    assert_eq!(a.lease("m", 16, 40, 0, 1, None).await.unwrap().grant, 16);
    // b wants too: nothing is free until a's requests end.
    assert_eq!(b.lease("m", 16, 40, 0, 1, None).await.unwrap().grant, 0);
    // a is told to shrink to its share (8) but keeps its 16 in flight: b still gets 0.
    assert_eq!(a.lease("m", 16, 40, 16, 1, None).await.unwrap().grant, 8);
    assert_eq!(b.lease("m", 16, 40, 0, 1, None).await.unwrap().grant, 0);
    // As a's requests end its field follows; b grows into what is freed, up to its share.
    assert_eq!(a.lease("m", 16, 40, 12, 1, None).await.unwrap().grant, 8);
    assert_eq!(b.lease("m", 16, 40, 0, 1, None).await.unwrap().grant, 4);
    assert_eq!(a.lease("m", 16, 40, 8, 1, None).await.unwrap().grant, 8);
    assert_eq!(b.lease("m", 16, 40, 4, 1, None).await.unwrap().grant, 8);
    // A member wanting little leaves the rest to the other (max-min).
    assert_eq!(b.lease("m", 16, 2, 8, 1, None).await.unwrap().grant, 2);
    assert_eq!(b.lease("m", 16, 2, 2, 1, None).await.unwrap().grant, 2);
    assert_eq!(a.lease("m", 16, 40, 8, 1, None).await.unwrap().grant, 14);
}

/// Replicas with random demand lease, fill and drain for many rounds; at every moment the
/// requests in flight across all of them fit the capacity.
#[tokio::test]
async fn random_demand_never_over_admits() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let members: Vec<Arc<Cluster>> = ["a", "b", "c"]
        .iter()
        .map(|r| member(&redis, "random", r))
        .collect();
    join(&members.iter().collect::<Vec<_>>(), "m").await;
    const CAP: u64 = 16;
    // Per member: (in flight, local capacity).
    let mut state = [(0u64, 0u64); 3];
    let mut rng: u64 = 0x5eed;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut max_seen = 0;
    for round in 0..300 {
        let i = (next(3)) as usize;
        let (in_flight, cap) = state[i];
        // Requests end, new ones are admitted up to the local capacity.
        let ended = next(in_flight + 1);
        let arrived = next(10);
        let mut fl = in_flight - ended;
        fl = (fl + arrived).min(cap.max(fl));
        let want = fl + next(12);
        let holding = fl.max(cap);
        let grant = members[i]
            .lease("m", CAP, want, holding, 1, None)
            .await
            .unwrap()
            .grant;
        // What may be in flight from now on: at most the grant for new work.
        state[i] = (fl.min(grant.max(fl)), grant);
        let total: u64 = state.iter().map(|s| s.0.max(s.1)).sum();
        max_seen = max_seen.max(total);
        assert!(
            total <= CAP,
            "round {round}: replicas may fill {total} > {CAP}: {state:?}"
        );
        if round % 20 == 0 {
            for m in &members {
                m.heartbeat().await.unwrap();
            }
        }
    }
    assert!(max_seen >= CAP - 2, "capacity was used ({max_seen})");
}

#[tokio::test]
async fn a_dead_replicas_slots_come_back_after_its_ttl() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let (a, b) = (
        member(&redis, "reclaim", "a"),
        member(&redis, "reclaim", "b"),
    );
    join(&[&a, &b], "m").await;
    assert_eq!(a.lease("m", 16, 16, 0, 1, None).await.unwrap().grant, 16);
    assert_eq!(b.lease("m", 16, 16, 0, 1, None).await.unwrap().grant, 0);
    // a dies (no more heartbeats); b keeps beating and gets everything once a is gone.
    let mut got = 0;
    for _ in 0..100 {
        b.heartbeat().await.unwrap();
        got = b.lease("m", 16, 16, got, 1, None).await.unwrap().grant;
        if got == 16 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, 16, "a's slots were never reclaimed");
}

/// After Redis was unreachable for everyone (no heartbeats for longer than the TTL), the first
/// replica back does not take the others' slots: they get a TTL to come back first.
#[tokio::test]
async fn the_first_replica_back_after_an_outage_does_not_reclaim_the_others() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let (a, b) = (member(&redis, "outage", "a"), member(&redis, "outage", "b"));
    join(&[&a, &b], "m").await;
    assert_eq!(a.lease("m", 16, 8, 0, 1, None).await.unwrap().grant, 8);
    assert_eq!(b.lease("m", 16, 8, 0, 1, None).await.unwrap().grant, 8);
    // Nobody beats for longer than the TTL (as if Redis had been down).
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    a.heartbeat().await.unwrap();
    // a is back first and wants everything: b's 8 stay b's.
    assert_eq!(a.lease("m", 16, 16, 8, 1, None).await.unwrap().grant, 8);
    // b comes back within the TTL and keeps its slots.
    b.heartbeat().await.unwrap();
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    a.heartbeat().await.unwrap();
    b.heartbeat().await.unwrap();
    assert_eq!(a.lease("m", 16, 16, 8, 1, None).await.unwrap().grant, 8);
}

/// Replicas whose tenants weigh 1, 2 and 4 (each replica's tenants pinned to it) and that
/// all want more than there is converge on slots in those proportions as their requests end.
#[tokio::test]
async fn contended_capacity_follows_the_weights_of_the_tenants_behind_it() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let a = member(&redis, "weights", "a");
    let b = member(&redis, "weights", "b");
    let c = member(&redis, "weights", "c");
    join(&[&a, &b, &c], "m").await;
    let mut grants = [0u64; 3];
    for _ in 0..5 {
        // Each one's requests drain to its last grant between rounds.
        for (i, (m, w)) in [(&c, 4), (&b, 2), (&a, 1)].into_iter().enumerate() {
            grants[i] = m
                .lease("m", 14, 40, grants[i], w, None)
                .await
                .unwrap()
                .grant;
        }
    }
    assert_eq!(grants, [8, 4, 2], "c (4), b (2), a (1)");
}

/// Lease rounds until the split settles (each one's requests drain to its last grant between
/// rounds), with a's and b's heads as (counter, step); the grants after.
async fn settle(
    a: &Arc<Cluster>,
    b: &Arc<Cluster>,
    grants: &mut [u64; 2],
    ha: (u64, u64),
    hb: (u64, u64),
) -> [u64; 2] {
    for _ in 0..4 {
        for (i, (m, (counter, step))) in [(a, ha), (b, hb)].into_iter().enumerate() {
            let head = Some(fairgate_cluster::Head { counter, step });
            grants[i] = m
                .lease("m", 16, 40, grants[i], 1, head)
                .await
                .unwrap()
                .grant;
        }
    }
    *grants
}

/// A member whose waiting work is ahead of another's by k of its own requests gives k of its
/// slots to the one furthest behind (a lead is repaid in whole slots); within one request of
/// each other the split is the weighted one.
#[tokio::test]
async fn a_member_ahead_gives_slots_to_the_one_furthest_behind() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let a = member(&redis, "catchup", "a");
    let b = member(&redis, "catchup", "b");
    join(&[&a, &b], "m").await;
    let mut grants = [0u64; 2];
    // Half a request apart: the weighted split.
    assert_eq!(
        settle(&a, &b, &mut grants, (1_500, 1_000), (1_000, 1_000)).await,
        [8, 8]
    );
    // a three of its requests ahead: three of its slots go to b.
    assert_eq!(
        settle(&a, &b, &mut grants, (4_000, 1_000), (1_000, 1_000)).await,
        [5, 11]
    );
    // Far ahead: all of a's slots, never more.
    assert_eq!(
        settle(&a, &b, &mut grants, (90_000, 1_000), (1_000, 1_000)).await,
        [0, 16]
    );
    // b ahead now: the slots come back.
    assert_eq!(
        settle(&a, &b, &mut grants, (1_000, 1_000), (3_500, 500)).await,
        [13, 3]
    );
    // A member whose step is not known yet (no finished request) gives nothing.
    assert_eq!(
        settle(&a, &b, &mut grants, (90_000, 0), (1_000, 1_000)).await,
        [8, 8]
    );
}
