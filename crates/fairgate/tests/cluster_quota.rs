//! Rate limits and budgets held across replicas (issue 13, part 3): a tenant's RPM limit,
//! token budget and concurrency cap are the fleet's, not each replica's; a replica killed with
//! `kill -9` has its slots reclaimed; with Redis down each replica keeps its part and the
//! usage reaches the fleet's accounts once Redis is back.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use fairgate_sim::SimConfig;
use reqwest::Method;
use serde_json::{json, Value};

async fn post_status(base: &str, key: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// A tenant `name` with `policy` made on `gws[0]`, and a key every replica knows (each probe
/// that gets through is one request against the limits: the callers count them).
async fn tenant_with_policy(gws: &[&TestGateway], name: &str, policy: Value) -> (String, usize) {
    let (s, v) = gws[0]
        .admin(
            Method::POST,
            "/tenants",
            Some(json!({"name": name, "weight": 1, "policy": policy})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (_, key) = gws[0].key(name, None).await;
    for gw in gws {
        eventually("every replica knows the key", || async {
            status(gw, &key).await != 401
        })
        .await;
    }
    (key, gws.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_rpm_limit_and_a_token_budget_hold_across_three_replicas() {
    let Some(db) = fresh_db(Db::Postgres).await else {
        return;
    };
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let sim = Sim::start(SimConfig::instant(MODEL)).await;
    let prefix = format!("fgtest:quota:{}", std::process::id());
    let mut gws = Vec::new();
    for r in ["a", "b", "c"] {
        gws.push(TestGateway::start(setup(&sim.url, &redis, &prefix, r), &db.url).await);
    }
    let refs: Vec<&TestGateway> = gws.iter().collect();

    // RPM 12, refused rather than queued: 12 requests pass in the whole fleet per minute (plus
    // what refills while the test runs), not 12 per replica.
    let started = std::time::Instant::now();
    let (key, probes) = tenant_with_policy(
        &refs,
        "rpm",
        json!({"limits": {"rpm": 12}, "on_limit": "reject"}),
    )
    .await;
    let mut ok = probes;
    let mut refused_on = std::collections::BTreeSet::new();
    for i in 0..30 {
        let gw = &gws[i % 3];
        let (s, v) = post_status(&gw.base, &key, chat(MODEL, 4, false)).await;
        match s {
            200 => ok += 1,
            429 => {
                assert_eq!(v["error"]["code"], "rpm_limit_exceeded", "{v}");
                assert!(
                    v["error"]["message"].as_str().unwrap().contains("rpm = 12"),
                    "{v}"
                );
                refused_on.insert(i % 3);
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let refill = (started.elapsed().as_secs_f64() * 12.0 / 60.0).ceil() as usize;
    assert!(
        ok >= 12 && ok <= 12 + refill,
        "{ok} requests passed an RPM limit of 12 across 3 replicas (refill allowance {refill})"
    );
    assert_eq!(
        refused_on.len(),
        3,
        "every replica refuses once the fleet's limit is used"
    );

    // A daily budget of 600 tokens, requests in parallel on all three replicas until each is
    // refused (a refusal may come while others' reservations are still in flight), then one at
    // a time until no replica takes another: what the ledger charged stays within the cap
    // plus one request's reservation.
    let (key, _) = tenant_with_policy(
        &refs,
        "budget",
        json!({"budgets": [{"period": "day", "tokens": 600}]}),
    )
    .await;
    let runs: Vec<_> = (0..9)
        .map(|i| {
            let (base, key) = (gws[i % 3].base.clone(), key.clone());
            tokio::spawn(async move {
                let mut n = 0;
                loop {
                    let (s, v) = post_status(&base, &key, chat(MODEL, 30, false)).await;
                    match s {
                        200 => n += 1,
                        402 => {
                            assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
                            return n;
                        }
                        other => panic!("unexpected {other}: {v}"),
                    }
                }
            })
        })
        .collect();
    let mut passed: usize = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    let mut refused = 0;
    for i in 0.. {
        match post_status(&gws[i % 3].base, &key, chat(MODEL, 30, false)).await {
            (200, _) => {
                passed += 1;
                refused = 0;
            }
            (402, _) => {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            (other, v) => panic!("unexpected {other}: {v}"),
        }
    }
    // Every answered request (and the three probes) is in the ledger: refusals are ledgered
    // too, so count the answered ones.
    let mut rows = Vec::new();
    for _ in 0..300 {
        rows = gws[0].requests(Some("budget")).await;
        if rows.iter().filter(|r| r["outcome"] == "ok").count() >= passed + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tokens: u64 = rows
        .iter()
        .filter(|r| r["outcome"] == "ok")
        .map(|r| r["prompt_tokens"].as_u64().unwrap() + r["completion_tokens"].as_u64().unwrap())
        .sum();
    let one = rows
        .iter()
        .filter(|r| r["outcome"] == "ok")
        .map(|r| r["prompt_tokens"].as_u64().unwrap() + 30)
        .max()
        .unwrap();
    let (_, status) = gws[2]
        .admin(Method::GET, "/tenants/budget/budgets", None)
        .await;
    assert!(
        tokens >= 600 - one && tokens <= 600 + one,
        "budget of 600 tokens across 3 replicas charged {tokens} (one request reserves {one}); \
         the fleet's account: {status}"
    );
    // Every replica refuses the next one, whichever served the last.
    for gw in &gws {
        let (s, _) = post_status(&gw.base, &key, chat(MODEL, 30, false)).await;
        assert_eq!(s, 402);
    }
    // The admin view of the budget on another replica follows the fleet's account.
    let (s, v) = gws[2]
        .admin(Method::GET, "/tenants/budget/budgets", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tenant"][0]["spent_tokens"].as_u64(), Some(tokens), "{v}");
    assert_eq!(v["tenant"][0]["reserved_tokens"].as_u64(), Some(0), "{v}");
    for gw in gws {
        gw.shutdown().await;
    }
    db.cleanup().await;
}

/// A simulator slow enough that a long answer holds its slot for seconds.
fn slow_sim() -> SimConfig {
    SimConfig {
        model: MODEL.into(),
        max_num_seqs: 64,
        prefill_overhead: Duration::from_millis(1),
        prefill_per_token: Duration::ZERO,
        decode_step_base: Duration::from_millis(5),
        decode_step_per_seq: Duration::ZERO,
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrency_cap_holds_across_replicas_and_a_killed_replicas_slot_comes_back() {
    let Some(db) = fresh_db(Db::Postgres).await else {
        return;
    };
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let sim = Sim::start(slow_sim()).await;
    let prefix = format!("fgtest:quota-conc:{}", std::process::id());
    let a = TestGateway::start(setup(&sim.url, &redis, &prefix, "a"), &db.url).await;
    let b = TestGateway::start(setup(&sim.url, &redis, &prefix, "b"), &db.url).await;
    let (key, _) = tenant_with_policy(
        &[&a, &b],
        "c",
        json!({"limits": {"max_concurrent": 2}, "on_limit": "reject"}),
    )
    .await;

    // Six long requests at once, three through each replica: two run, four are refused.
    let runs: Vec<_> = (0..6)
        .map(|i| {
            let (base, key) = (
                if i % 2 == 0 { &a.base } else { &b.base }.clone(),
                key.clone(),
            );
            tokio::spawn(async move { post_status(&base, &key, chat(MODEL, 300, false)).await })
        })
        .collect();
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    let watch = watch_backend(&sim, until);
    let codes: Vec<u16> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap().0)
        .collect();
    assert!(watch.await.unwrap() <= 2, "the backend saw more than 2");
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 429).count(), 4, "{codes:?}");
    // Settled: both slots are free again, on either replica.
    eventually("slots released", || async {
        let (s1, _) = post_status(&a.base, &key, chat(MODEL, 2, false)).await;
        let (s2, _) = post_status(&b.base, &key, chat(MODEL, 2, false)).await;
        s1 == 200 && s2 == 200
    })
    .await;

    // A replica process holding both slots dies with SIGKILL: once it is gone from the
    // membership, the others have the slots back.
    let mut victim = spawn_replica(&db.url, &redis, &prefix, "victim", &sim.url).await;
    eventually("the victim knows the key", || async {
        let (s, _) = post_status(&victim.base, &key, chat(MODEL, 1, false)).await;
        s == 200
    })
    .await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (base, key) = (victim.base.clone(), key.clone());
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&chat(MODEL, 4000, true))
                    .send()
                    .await
            })
        })
        .collect();
    // Both streams are open (their heads came back) and kept open until the kill.
    let mut open = Vec::new();
    for h in held {
        let r = h.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    eventually("the victim holds both slots", || async {
        post_status(&a.base, &key, chat(MODEL, 1, false)).await.0 == 429
    })
    .await;
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    eventually("the killed replica's slots come back", || async {
        post_status(&a.base, &key, chat(MODEL, 1, false)).await.0 == 200
    })
    .await;
    drop(open);
    a.shutdown().await;
    b.shutdown().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_each_replica_keeps_its_part_and_usage_reaches_the_fleet_after() {
    let Some(db) = fresh_db(Db::Postgres).await else {
        return;
    };
    let mut redis = match fairgate_testkit::PrivateRedis::start() {
        Ok(r) => r,
        Err(e) => {
            fairgate_testkit::require("Redis", &e);
            return;
        }
    };
    let sim = Sim::start(SimConfig::instant(MODEL)).await;
    let prefix = format!("fgtest:quota-outage:{}", std::process::id());
    let a = TestGateway::start(setup(&sim.url, &redis.url(), &prefix, "a"), &db.url).await;
    let b = TestGateway::start(setup(&sim.url, &redis.url(), &prefix, "b"), &db.url).await;
    for gw in [&a, &b] {
        eventually("two members", || async {
            let (_, v) = gw.admin(Method::GET, "/cluster", None).await;
            v["members"].as_array().map(Vec::len) == Some(2)
        })
        .await;
    }
    let (key, _) = tenant_with_policy(
        &[&a, &b],
        "o",
        json!({"limits": {"rpm": 600}, "budgets": [{"period": "day", "tokens": 100000}], "on_limit": "reject"}),
    )
    .await;
    // Charge a known amount in global mode first.
    for _ in 0..4 {
        assert_eq!(
            post_status(&a.base, &key, chat(MODEL, 10, false)).await.0,
            200
        );
    }

    redis.stop();
    for gw in [&a, &b] {
        eventually("the replica notices", || async {
            let (_, v) = gw.admin(Method::GET, "/cluster", None).await;
            v["redis_up"] == false
        })
        .await;
    }
    // Local mode: each of the 2 replicas keeps half of the 600 a minute, so a replica refuses
    // after about 300 requests in the minute, never more. Requests never fail for the outage.
    let mut ok = 0;
    let local_started = std::time::Instant::now();
    for _ in 0..400 {
        match post_status(&b.base, &key, chat(MODEL, 1, false)).await.0 {
            200 => ok += 1,
            429 => break,
            other => panic!("unexpected {other} while Redis is down"),
        }
    }
    // 300 at once, plus what refills at 300 a minute while the loop runs.
    let refill = (local_started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        ok >= 300 && ok <= 300 + refill,
        "with Redis down replica b passed {ok} of an RPM limit of 600 shared by 2 replicas \
         (refill allowance {refill})"
    );

    assert!(metric(&b, "fairgate_cluster_quota_local_total").await >= ok as f64);
    assert!(metric(&a, "fairgate_cluster_quota_fleet_total").await >= 4.0);
    // The ledger (PostgreSQL stayed up) has every request b served meanwhile.
    let rows = b.wait_rows(Some("o"), 4 + 2 + ok).await;
    let ledger: u64 = rows
        .iter()
        .filter(|r| r["outcome"] == "ok")
        .map(|r| r["prompt_tokens"].as_u64().unwrap() + r["completion_tokens"].as_u64().unwrap())
        .sum();

    // The private Redis keeps nothing on disk: it comes back empty, and the fleet's account
    // is rebuilt from the ledger, outage included.
    redis.start_again().unwrap();
    for gw in [&a, &b] {
        eventually("the replica is back in the fleet", || async {
            let (_, v) = gw.admin(Method::GET, "/cluster", None).await;
            v["redis_up"] == true
        })
        .await;
    }
    eventually("the fleet's account has the outage's usage", || async {
        let (s, _) = post_status(&a.base, &key, chat(MODEL, 1, false)).await;
        let (_, v) = a.admin(Method::GET, "/tenants/o/budgets", None).await;
        s == 200
            && v["tenant"][0]["spent_tokens"]
                .as_u64()
                .is_some_and(|s| s >= ledger)
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    db.cleanup().await;
}
