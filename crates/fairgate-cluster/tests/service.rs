//! The fleet's per-tenant service totals against a real Redis: each exchange adds this
//! replica's deltas and returns only the tenants changed since the caller's last version.

use std::time::Duration;

use fairgate_cluster::{Cluster, ClusterConfig};

fn member(redis: &str, replica: &str) -> std::sync::Arc<Cluster> {
    Cluster::new(ClusterConfig {
        redis_url: redis.to_owned(),
        replica_id: replica.to_owned(),
        key_prefix: format!("fgtest:service:{}", std::process::id()),
        heartbeat: Duration::from_millis(100),
        member_ttl: Duration::from_millis(300),
        op_timeout: Duration::from_millis(500),
    })
    .unwrap()
}

#[tokio::test]
async fn exchanges_return_only_what_changed_since() {
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let (a, b) = (member(&redis, "a"), member(&redis, "b"));
    let (va, _) = a
        .exchange_service("m", 0, &[("t1".into(), 100), ("t2".into(), 40)])
        .await
        .unwrap();
    // b has seen nothing yet: it gets every total.
    let (vb, mut totals) = b
        .exchange_service("m", 0, &[("t1".into(), 5)])
        .await
        .unwrap();
    totals.sort();
    assert_eq!(totals, [("t1".to_owned(), 105), ("t2".to_owned(), 40)]);
    assert!(vb > va);
    // Nothing moved since: nothing comes back.
    let (vb2, totals) = b.exchange_service("m", vb, &[]).await.unwrap();
    assert_eq!((vb2, totals.len()), (vb, 0));
    // Only the tenant a served since comes back, refunds included.
    let _ = a
        .exchange_service("m", va, &[("t2".into(), -10)])
        .await
        .unwrap();
    let (_, totals) = b.exchange_service("m", vb, &[]).await.unwrap();
    assert_eq!(totals, [("t2".to_owned(), 30)]);
}
