//! Two replicas sharing one PostgreSQL database and one Redis (issue 13): they see each other,
//! and a change made through one (a new key, a weight, a revocation, a disabled user) applies
//! on the other through the change bus, not only at its periodic refresh.

mod common;

use std::time::Duration;

use common::*;
use fairgate::config::{ClusterSection, Secret};
use fairgate_sim::SimConfig;
use reqwest::Method;
use serde_json::{json, Value};

const MODEL: &str = "m";

fn setup(sim: &str, redis: &str, prefix: &str, replica: &str) -> Setup {
    let (redis, prefix, replica) = (redis.to_owned(), prefix.to_owned(), replica.to_owned());
    Setup::one(MODEL, sim, 8).with(move |c| {
        c.cluster = Some(ClusterSection {
            redis_url: Secret::new(redis.clone()),
            replica_id: Some(replica.clone()),
            key_prefix: prefix.clone(),
            heartbeat_ms: 100,
            member_ttl_ms: 500,
            redis_timeout_ms: 500,
        });
    })
}

/// Polls `check` every 50 ms for up to 15 s (generous: this waits for an effect, it does not
/// time it; the propagation time is the benchmark's business).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not seen within 15 s");
}

async fn status(gw: &TestGateway, key: &str) -> u16 {
    gw.post(key, "/v1/chat/completions", chat(MODEL, 4, false))
        .await
        .status()
        .as_u16()
}

async fn metric(gw: &TestGateway, name: &str) -> f64 {
    let text = gw
        .http
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn changes_made_on_one_replica_apply_on_the_other() {
    let Some(db) = fresh_db(Db::Postgres).await else {
        return;
    };
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let sim = Sim::start(SimConfig::instant(MODEL)).await;
    let prefix = format!("fgtest:replicas:{}", std::process::id());
    let a = TestGateway::start(setup(&sim.url, &redis, &prefix, "a"), &db.url).await;
    let b = TestGateway::start(setup(&sim.url, &redis, &prefix, "b"), &db.url).await;

    // Each sees both members.
    for gw in [&a, &b] {
        eventually("two members", || async {
            let (s, v) = gw.admin(Method::GET, "/cluster", None).await;
            s == 200 && v["enabled"] == true && v["members"].as_array().map(Vec::len) == Some(2)
        })
        .await;
    }
    let (_, v) = a.admin(Method::GET, "/cluster", None).await;
    assert!(v["member"].as_str().unwrap().starts_with("a#"), "{v}");
    assert_eq!(v["redis_up"], true);

    // A tenant and key made on a work on b.
    a.tenant("t", 1).await;
    let (key_id, key) = a.key("t", None).await;
    eventually("b knows the new key", || async {
        status(&b, &key).await == 200
    })
    .await;

    // A weight change on a reaches b's scheduler.
    let (s, v) = a
        .admin(Method::PATCH, "/tenants/t", Some(json!({"weight": 5})))
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("b has the new weight", || async {
        let (_, v) = b.admin(Method::GET, "/scheduler", None).await;
        v["models"][0]["tenants"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t: &Value| t["tenant"] == "t" && t["weight"] == 5)
    })
    .await;

    // A key revoked on a stops working on b.
    let (s, _) = a
        .admin(Method::DELETE, &format!("/keys/{key_id}"), None)
        .await;
    assert_eq!(s, 200);
    eventually("b refuses the revoked key", || async {
        status(&b, &key).await == 401
    })
    .await;

    // A user disabled on a: their key stops working on b.
    let (s, user) = a
        .admin(
            Method::POST,
            "/users",
            Some(json!({"email": "u@example.org", "role": "user", "tenant": "t"})),
        )
        .await;
    assert_eq!(s, 201, "{user}");
    let (s, v) = a
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"tenant": "t", "name": "u", "user": "u@example.org"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let user_key = v["key"].as_str().unwrap().to_owned();
    eventually("b knows the user's key", || async {
        status(&b, &user_key).await == 200
    })
    .await;
    let (s, v) = a
        .admin(
            Method::PATCH,
            &format!("/users/{}", user["id"].as_str().unwrap()),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("b refuses the disabled user's key", || async {
        status(&b, &user_key).await == 401
    })
    .await;

    // b applied what a announced (the bus, not only b's own periodic refresh), and a heard
    // nothing from b, which changed nothing.
    assert!(metric(&b, "fairgate_cluster_changes_received_total").await >= 1.0);
    assert!(metric(&a, "fairgate_cluster_changes_published_total").await >= 4.0);
    assert_eq!(
        metric(&a, "fairgate_cluster_changes_received_total").await,
        0.0
    );
    assert_eq!(metric(&b, "fairgate_cluster_redis_up").await, 1.0);

    // A clean stop leaves the membership at once.
    b.shutdown().await;
    eventually("a sees b gone", || async {
        let (_, v) = a.admin(Method::GET, "/cluster", None).await;
        v["members"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    a.shutdown().await;
    db.cleanup().await;
}

#[test]
fn a_cluster_needs_a_shared_database() {
    let err = fairgate::config::Config::from_toml_str(
        "database = \"sqlite://x.db\"\n[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n",
        std::path::Path::new("t.toml"),
        Vec::<(String, String)>::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cluster") && err.contains("postgres://"),
        "{err}"
    );
    // The environment can turn it on, like any field.
    let c = fairgate::config::Config::from_toml_str(
        "database = \"postgres://u@h/db\"\n",
        std::path::Path::new("t.toml"),
        vec![(
            "FAIRGATE_CLUSTER__REDIS_URL".to_owned(),
            "redis://127.0.0.1:6379".to_owned(),
        )],
    )
    .unwrap();
    let cluster = c.cluster.expect("[cluster] from the environment");
    assert_eq!(cluster.heartbeat_ms, 1_000);
    assert_eq!(cluster.replica_id(8080).rsplit(':').next(), Some("8080"));
    let bad = fairgate::config::Config::from_toml_str(
        "database = \"postgres://u@h/db\"\n[cluster]\nredis_url = \"http://x\"\n",
        std::path::Path::new("t.toml"),
        Vec::<(String, String)>::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("cluster.redis_url"), "{bad}");
}
