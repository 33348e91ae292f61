//! Two replicas sharing one PostgreSQL database and one Redis (issue 13): they see each other,
//! and a change made through one (a new key, a weight, a revocation, a disabled user) applies
//! on the other through the change bus, not only at its periodic refresh.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use fairgate_sim::SimConfig;
use reqwest::Method;
use serde_json::{json, Value};

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

/// Three replicas in front of one backend of 16 slots (the engine itself would take 64, so
/// any over-admission would show): alone, one replica borrows what the idle ones do not use;
/// all loaded, the backend never holds more than 16 from the fleet and every replica is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_backends_slots() {
    let Some(db) = fresh_db(Db::Postgres).await else {
        return;
    };
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let (sim, gws) = start_fleet(&db.url, &redis, "share", &["a", "b", "c"], 16).await;
    gws[0].tenant("t", 1).await;
    let (_, key) = gws[0].key("t", None).await;
    for gw in &gws {
        eventually("the key everywhere", || async {
            status(gw, &key).await == 200
        })
        .await;
    }

    // One replica loaded, two idle: it may fill all but the idle ones' spare slot each.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let watch = watch_backend(&sim, until);
    let done = successes(load(&gws[0], &key, 32, until)).await;
    let max = watch.await.unwrap();
    assert!(done > 0);
    assert!(max <= 16, "the backend held {max} > 16 from the fleet");
    assert!(max >= 14, "the idle replicas' slots were not lent ({max})");

    // All three loaded.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let watch = watch_backend(&sim, until);
    let runs: Vec<_> = gws.iter().map(|gw| load(gw, &key, 16, until)).collect();
    // Any replica shows the whole fleet: three parts, each busy for `t`, within 16 together.
    eventually("the fleet-wide view", || async {
        let (_, v) = gws[0].admin(Method::GET, "/scheduler", None).await;
        let Some(fleet) = v["models"][0]["fleet"].as_array().cloned() else {
            return false;
        };
        let leases: u64 = fleet
            .iter()
            .filter_map(|r| r["max_in_flight"].as_u64())
            .sum();
        fleet.len() == 3
            && leases <= 16
            && fleet
                .iter()
                .all(|r| r["tenants"]["t"][1].as_u64().is_some_and(|n| n > 0))
    })
    .await;
    // The portal's live view shows the same fleet, on another replica than the one where the
    // operator account was made (sessions are in the shared database).
    let (s, v) = gws[0]
        .admin(
            Method::POST,
            "/users",
            Some(json!({"email": "op@example.org", "password": "operator-password-1", "role": "operator"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let portal = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed = portal
        .post(format!("{}/portal/login", gws[1].base))
        .form(&[
            ("email", "op@example.org"),
            ("password", "operator-password-1"),
        ])
        .send()
        .await
        .unwrap();
    let cookie = signed.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = portal
        .get(format!("{}/portal/operator", gws[1].base))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<h2>Replicas</h2>"), "{page}");
    for r in ["a#", "b#", "c#"] {
        assert!(page.contains(r), "replica {r} missing from the live view");
    }
    let live: Value = portal
        .get(format!("{}/portal/api/scheduler", gws[2].base))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        live["models"][0]["fleet"].as_array().map(Vec::len),
        Some(3),
        "{live}"
    );
    let mut per_replica = Vec::new();
    for r in runs {
        per_replica.push(successes(r).await);
    }
    let max = watch.await.unwrap();
    assert!(max <= 16, "the backend held {max} > 16 from the fleet");
    assert!(
        per_replica.iter().all(|&n| n > 0),
        "every replica is served: {per_replica:?}"
    );
    for gw in gws {
        gw.shutdown().await;
    }
    db.cleanup().await;
}

/// Redis stopped for 10 s under load, then started again empty: the replicas keep serving on
/// their last leases (no request fails), the backend is never overfilled, and both return to
/// the fleet by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_keeps_the_last_leases_and_recovers() {
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
    let (sim, gws) = start_fleet(&db.url, &redis.url(), "outage", &["a", "b"], 16).await;
    gws[0].tenant("t", 1).await;
    let (_, key) = gws[0].key("t", None).await;
    for gw in &gws {
        eventually("the key everywhere", || async {
            status(gw, &key).await == 200
        })
        .await;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(16);
    let watch = watch_backend(&sim, until);
    let runs: Vec<_> = gws
        .iter()
        .map(|gw| load_timed(&gw.base, &key, 12, until))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.stop();
    let down = tokio::time::Instant::now();
    for gw in &gws {
        eventually("the replica notices", || async {
            let (_, v) = gw.admin(Method::GET, "/cluster", None).await;
            v["redis_up"] == false
        })
        .await;
    }
    tokio::time::sleep_until(down + Duration::from_secs(10)).await;
    redis.start_again().unwrap();
    let up = tokio::time::Instant::now();
    for gw in &gws {
        eventually("back in the fleet", || async {
            let (_, v) = gw.admin(Method::GET, "/cluster", None).await;
            v["redis_up"] == true && v["members"].as_array().map(Vec::len) == Some(2)
        })
        .await;
    }
    let mut served_during = Vec::new();
    for r in runs {
        let (ok, failed) = collect(r).await;
        assert_eq!(failed, 0, "no request fails because Redis is down");
        served_during.push(ok.iter().filter(|t| **t > down && **t < up).count());
    }
    let max = watch.await.unwrap();
    assert!(max <= 16, "the backend held {max} > 16 from the fleet");
    assert!(
        served_during.iter().all(|&n| n > 0),
        "both replicas served during the outage: {served_during:?}"
    );
    for gw in gws {
        gw.shutdown().await;
    }
    db.cleanup().await;
}

/// Three replica processes under load; one is killed with SIGKILL. The others keep serving
/// without a failed request, the backend is never overfilled, and the dead replica's slots
/// come back to the survivors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replicas_slots_come_back_to_the_others() {
    let Some(db) = fresh_db(Db::Postgres).await else {
        return;
    };
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let sim = Sim::start(timed_sim_config()).await;
    let prefix = format!("fgtest:kill:{}", std::process::id());
    let mut replicas = Vec::new();
    for name in ["a", "b", "c"] {
        replicas.push(spawn_replica(&db.url, &redis, &prefix, name, &sim.url).await);
    }
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/admin/v1/tenants", replicas[0].base))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "t", "weight": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let key: Value = http
        .post(format!("{}/admin/v1/keys", replicas[0].base))
        .bearer_auth(ADMIN)
        .json(&json!({"tenant": "t", "name": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    for r in &replicas {
        eventually("the key everywhere", || async {
            http.post(format!("{}/v1/chat/completions", r.base))
                .bearer_auth(&key)
                .json(&chat(MODEL, 4, false))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    let watch = watch_backend(&sim, until);
    let survivors: Vec<_> = replicas[..2]
        .iter()
        .map(|r| load_timed(&r.base, &key, 16, until))
        .collect();
    let doomed = load_timed(&replicas[2].base, &key, 16, until);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut dead = replicas.pop().unwrap();
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    // The survivors take over the dead one's slots: together they may fill all but their
    // spare, which needs c's lease reclaimed.
    eventually("the dead replica's slots come back", || async {
        let mut cap = 0;
        for r in &replicas {
            cap += admin_get(&r.base, "/scheduler").await["models"][0]["max_in_flight"]
                .as_u64()
                .unwrap_or(0);
        }
        cap >= 15
    })
    .await;
    for r in &replicas {
        eventually("the survivors see two members", || async {
            admin_get(&r.base, "/cluster").await["members"]
                .as_array()
                .map(Vec::len)
                == Some(2)
        })
        .await;
    }
    for run in survivors {
        let (ok, failed) = collect(run).await;
        assert!(!ok.is_empty());
        assert_eq!(failed, 0, "a survivor's request failed");
    }
    // The killed replica's own clients lose their connections; nobody else's do.
    drop(collect(doomed).await);
    let max = watch.await.unwrap();
    assert!(max <= 16, "the backend held {max} > 16 from the fleet");
    drop(replicas);
    drop(dead);
    db.cleanup().await;
}

/// The backends of `model` as replica `gw` has them: (url, draining).
async fn backends_of(gw: &TestGateway) -> Vec<(String, bool)> {
    let (_, v) = gw
        .admin(Method::GET, &format!("/models/{MODEL}/backends"), None)
        .await;
    v["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["url"].as_str().unwrap_or_default().to_owned(),
                b["draining"] == true,
            )
        })
        .collect()
}

#[tokio::test]
async fn a_backend_changed_at_run_time_on_one_replica_changes_on_all() {
    let Some(db) = fresh_db(Db::Postgres).await else {
        return;
    };
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let sim = Sim::start(SimConfig::instant(MODEL)).await;
    let extra = Sim::start(SimConfig::instant(MODEL)).await;
    let prefix = format!("fgtest:backends:{}", std::process::id());
    let a = TestGateway::start(setup(&sim.url, &redis, &prefix, "a"), &db.url).await;
    let b = TestGateway::start(setup(&sim.url, &redis, &prefix, "b"), &db.url).await;
    let url = extra.url.trim_end_matches('/').to_owned();

    // An inline key is refused under [cluster]: it would be stored and sent to the others.
    let (s, v) = a
        .admin(
            Method::POST,
            &format!("/models/{MODEL}/backends"),
            Some(json!({"url": url, "max_in_flight": 4, "api_key": "sk-inline"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api_key_env"),
        "{v}"
    );

    let (s, v) = a
        .admin(
            Method::POST,
            &format!("/models/{MODEL}/backends"),
            Some(json!({"url": url, "max_in_flight": 4})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    eventually("b has the added backend", || async {
        backends_of(&b).await.iter().any(|(u, _)| *u == url)
    })
    .await;

    // Drained on a: drained on b.
    let (s, v) = a
        .admin(
            Method::POST,
            &format!("/models/{MODEL}/backends/drain"),
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("b drains it", || async {
        backends_of(&b).await.iter().any(|(u, d)| *u == url && *d)
    })
    .await;

    // A replica that starts later gets it too, in its stored state.
    let c = TestGateway::start(setup(&sim.url, &redis, &prefix, "c"), &db.url).await;
    assert!(
        backends_of(&c).await.iter().any(|(u, d)| *u == url && *d),
        "{:?}",
        backends_of(&c).await
    );

    // Removed on b: gone from a and c.
    let (s, v) = b
        .admin(
            Method::POST,
            &format!("/models/{MODEL}/backends/remove"),
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for gw in [&a, &c] {
        eventually("the backend is removed everywhere", || async {
            !backends_of(gw).await.iter().any(|(u, _)| *u == url)
        })
        .await;
    }
    for gw in [a, b, c] {
        gw.shutdown().await;
    }
    db.cleanup().await;
}

/// Engine slots under `[cluster]`: a priority engine with `max_in_flight = 4` and
/// `engine_max_seqs = 6` behind two replicas never sees more than 6 from the fleet, and the
/// two slots beyond 4 are used (by the tenant below its share) rather than left idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_slots_are_leased_across_replicas() {
    let Some(db) = fresh_db(Db::Postgres).await else {
        return;
    };
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let sim = Sim::start(SimConfig {
        scheduling_policy: fairgate_sim::SchedulingPolicy::Priority,
        ..timed_sim_config()
    })
    .await;
    let prefix = format!("fgtest:engine-slots:{}", std::process::id());
    let mut gws = Vec::new();
    for r in ["a", "b"] {
        let s = setup_n(&sim.url, &redis, &prefix, r, 4).with(|c| {
            let b = &mut c.models[0].backends[0];
            b.scheduling_policy = fairgate::config::SchedulingPolicy::Priority;
            b.engine_max_seqs = Some(6);
        });
        gws.push(TestGateway::start(s, &db.url).await);
    }
    gws[0].tenant("heavy", 1).await;
    gws[0].tenant("light", 1).await;
    let (_, heavy) = gws[0].key("heavy", None).await;
    let (_, light) = gws[0].key("light", None).await;
    for gw in &gws {
        for key in [&heavy, &light] {
            eventually("the keys everywhere", || async {
                status(gw, key).await == 200
            })
            .await;
        }
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let watch = watch_backend(&sim, until);
    let mut runs = Vec::new();
    for gw in &gws {
        runs.extend(load(gw, &heavy, 8, until));
        runs.extend(load(gw, &light, 2, until));
    }
    assert!(successes(runs).await > 0);
    let max = watch.await.unwrap();
    assert!(
        max <= 6,
        "the engine held {max} > engine_max_seqs 6 from the fleet"
    );
    assert!(
        max > 4,
        "the engine slots beyond max_in_flight were never used ({max})"
    );
    for gw in gws {
        gw.shutdown().await;
    }
    db.cleanup().await;
}

/// The headroom for tenants below their share holds in a fleet: with a heavy tenant flooding
/// both replicas (a queue on each), a light tenant's requests on one of them are admitted
/// ahead of the queued heavy work rather than behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_light_tenant_skips_the_heavy_queue_on_a_replica() {
    let Some(db) = fresh_db(Db::Postgres).await else {
        return;
    };
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let (_sim, gws) = start_fleet(&db.url, &redis, "headroom", &["a", "b"], 8).await;
    gws[0].tenant("heavy", 1).await;
    gws[0].tenant("light", 1).await;
    let (_, heavy) = gws[0].key("heavy", None).await;
    let (_, light) = gws[0].key("light", None).await;
    for gw in &gws {
        for key in [&heavy, &light] {
            eventually("the keys everywhere", || async {
                status(gw, key).await == 200
            })
            .await;
        }
    }
    // Heavy: 12 closed loops of long answers on each replica, for 8 slots in all.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = gws
        .iter()
        .flat_map(|gw| (0..12).map(move |_| gw.base.clone()))
        .map(|base| {
            let (key, stop) = (heavy.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = http
                        .post(format!("{base}/v1/chat/completions"))
                        .bearer_auth(&key)
                        .json(&chat(MODEL, 60, false))
                        .send()
                        .await;
                }
            })
        })
        .collect();
    // Let the queues form, then the light tenant sends one short request at a time to a.
    eventually("heavy work queues on a", || async {
        let (_, v) = gws[0].admin(Method::GET, "/scheduler", None).await;
        v["models"][0]["queued"].as_u64().unwrap_or(0) >= 4
    })
    .await;
    // How each tenant's requests on a were admitted: at once (a slot, here a headroom slot,
    // was free) or after queueing.
    let admitted = |tenant: &'static str, how: &'static str| {
        let gw = &gws[0];
        async move {
            metric(
                gw,
                &format!(
                    "fairgate_admission_decisions_total{{model=\"{MODEL}\",reason=\"{how}\",result=\"admitted\",tenant=\"{tenant}\"}}"
                ),
            )
            .await as usize
        }
    };
    let light_before = admitted("light", "at_once").await;
    let heavy_before = admitted("heavy", "at_once").await;
    for _ in 0..30 {
        assert_eq!(status(&gws[0], &light).await, 200);
    }
    let light_at_once = admitted("light", "at_once").await - light_before;
    let heavy_at_once = admitted("heavy", "at_once").await - heavy_before;
    let heavy_queued = admitted("heavy", "queued").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flood {
        let _ = f.await;
    }
    // While the flood queues, nothing is admitted at once but through the headroom, which
    // only a tenant below its share may use: heavy work never, the light tenant's often (this
    // machine measured 20% of its requests under the whole suite's load, 50–100% alone).
    // Without the headroom none of the light tenant's requests is, each waits for a heavy
    // answer to end, fair order or not.
    eprintln!(
        "during the flood, admitted at once: light {light_at_once} of 30, heavy {heavy_at_once}; heavy after queueing {heavy_queued}"
    );
    assert!(
        heavy_queued > 10,
        "the heavy tenant never queued: no contention"
    );
    assert!(
        light_at_once >= 1,
        "none of the light tenant's 30 requests was admitted at once beside the flood"
    );
    for gw in gws {
        gw.shutdown().await;
    }
    db.cleanup().await;
}
