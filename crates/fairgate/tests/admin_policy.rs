//! End-to-end tests of the policy side of the admin API: tenant and key policies (limits,
//! budgets, queueing, priority) and their validation, groups, the live scheduler view, budget
//! status, config reload, and the `fairgate admin` subcommands that drive them. Real gateway on
//! port 0, real simulators, SQLite, HTTP only.

// The shared harness's `Setup::tweak` trips `clippy::type_complexity`; not this file's to change.
mod common;

use std::time::Duration;

use common::*;
use fairgate_sim::SimConfig;
use reqwest::Method;
use serde_json::{json, Value};

async fn start(models: &[&str]) -> (Vec<Sim>, TestGateway, DbHandle) {
    let mut sims = Vec::new();
    for m in models {
        sims.push(Sim::start(SimConfig::instant(m)).await);
    }
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let mut setup = Setup::one(models[0], &sims[0].url, 4);
    for (m, s) in models.iter().zip(&sims).skip(1) {
        setup.models.push((m.to_string(), vec![(s.url.clone(), 2)]));
    }
    let gw = TestGateway::start(setup, &db.url).await;
    (sims, gw, db)
}

/// Asserts an OpenAI-shaped 400 whose message mentions `needle`.
fn assert_bad(status: u16, v: &Value, needle: &str) {
    assert_eq!(status, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "expected `{needle}` in: {v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
}

#[tokio::test]
async fn tenant_policy_create_patch_reset_and_validation() {
    let (_sims, gw, _db) = start(&["m"]).await;
    let policy = json!({
        "limits": {"rpm": 600, "tpm": 100000, "max_concurrent": 4},
        "budgets": [{"period": "day", "tokens": 50000, "cost": 2000000}],
        "max_queue": 9,
        "max_wait_ms": 1500,
        "on_limit": "reject",
        "hard_cap": true,
    });
    let (s, v) = gw
        .admin(
            Method::POST,
            "/tenants",
            Some(json!({"name": "lab", "weight": 2, "policy": policy})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["policy"], policy);
    let (s, v) = gw.admin(Method::GET, "/tenants/lab", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["policy"], policy);
    assert_eq!(v["weight"], 2);

    // PATCH replaces the policy whole, and leaves the other fields alone.
    let replaced = json!({"budgets": [{"period": "month", "cost": 1000}], "on_limit": "queue"});
    let (s, v) = gw
        .admin(
            Method::PATCH,
            "/tenants/lab",
            Some(json!({"policy": replaced})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["policy"], replaced);
    assert_eq!(v["weight"], 2);
    let (_, v) = gw.admin(Method::GET, "/tenants/lab", None).await;
    assert_eq!(v["policy"], replaced);

    // A patch without `policy` keeps it.
    let (s, v) = gw
        .admin(Method::PATCH, "/tenants/lab", Some(json!({"weight": 3})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["policy"], replaced);

    // `null` resets to the default.
    let (s, v) = gw
        .admin(Method::PATCH, "/tenants/lab", Some(json!({"policy": null})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["policy"], json!({}));
    let (_, v) = gw.admin(Method::GET, "/tenants/lab", None).await;
    assert_eq!(v["policy"], json!({}));

    let invalid = [
        (
            json!({"budgets": [{"period": "day"}]}),
            "policy.budgets[0]: set `tokens` or `cost`",
        ),
        (
            json!({"budgets": [{"period": "day", "tokens": 10}, {"period": "month", "tokens": 0}]}),
            "policy.budgets[1].tokens",
        ),
        (
            json!({"budgets": [{"period": "day", "cost": 0}]}),
            "policy.budgets[0].cost",
        ),
        (
            json!({"budgets": [{"period": "day", "tokens": 1}, {"period": "day", "cost": 5}]}),
            "policy.budgets[1].period",
        ),
        (
            json!({"budgets": [{"period": "week", "tokens": 1}]}),
            "policy.budgets[0].period",
        ),
        (json!({"limits": {"rpm": 0}}), "policy.limits.rpm"),
        (json!({"limits": {"tpm": 0}}), "policy.limits.tpm"),
        (
            json!({"limits": {"max_concurrent": 0}}),
            "policy.limits.max_concurrent",
        ),
        (json!({"max_queue": 0}), "policy.max_queue"),
        (json!({"max_wait_ms": 3_600_001u64}), "policy.max_wait_ms"),
        (json!({"on_limit": "maybe"}), "policy.on_limit"),
        (json!({"bogus": 1}), "bogus"),
    ];
    for (p, needle) in &invalid {
        let (s, v) = gw
            .admin(
                Method::POST,
                "/tenants",
                Some(json!({"name": "bad", "policy": p})),
            )
            .await;
        assert_bad(s, &v, needle);
        let (s, v) = gw
            .admin(Method::PATCH, "/tenants/lab", Some(json!({"policy": p})))
            .await;
        assert_bad(s, &v, needle);
    }
    // Nothing was created or changed by the refused requests.
    let (s, _) = gw.admin(Method::GET, "/tenants/bad", None).await;
    assert_eq!(s, 404);
    let (_, v) = gw.admin(Method::GET, "/tenants/lab", None).await;
    assert_eq!(v["policy"], json!({}));
    // The limits of the cap-free boundary are accepted.
    let (s, v) = gw
        .admin(
            Method::PATCH,
            "/tenants/lab",
            Some(json!({"policy": {"max_wait_ms": 3_600_000u64, "max_queue": 1, "limits": {"rpm": 1}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // A patched policy applies to the next request: one request a minute, refused at once.
    let (_, key) = gw.key("lab", None).await;
    let (s, v) = gw
        .admin(
            Method::PATCH,
            "/tenants/lab",
            Some(json!({"policy": {"limits": {"rpm": 1}, "on_limit": "reject"}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 2, false))
        .await;
    assert_eq!(r.status(), 200);
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 2, false))
        .await;
    assert_eq!(r.status(), 429);
    gw.shutdown().await;
}

#[tokio::test]
async fn groups_crud_and_weights_reach_the_scheduler() {
    let (_sims, gw, _db) = start(&["m"]).await;
    let (s, v) = gw.admin(Method::GET, "/groups", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"], json!([]));

    let (s, v) = gw
        .admin(Method::PUT, "/groups/physics", Some(json!({"weight": 3})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"name": "physics", "weight": 3}));
    let (s, v) = gw
        .admin(Method::PUT, "/groups/chem", Some(json!({"weight": 1})))
        .await;
    assert_eq!(s, 200, "{v}");
    // PUT again updates.
    let (s, v) = gw
        .admin(Method::PUT, "/groups/physics", Some(json!({"weight": 5})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["weight"], 5);
    let (s, v) = gw.admin(Method::GET, "/groups/physics", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"name": "physics", "weight": 5}));
    let (_, v) = gw.admin(Method::GET, "/groups", None).await;
    let names: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chem", "physics"]);

    // Validation.
    let (s, v) = gw
        .admin(Method::PUT, "/groups/physics", Some(json!({"weight": 0})))
        .await;
    assert_bad(s, &v, "weight");
    let (s, v) = gw
        .admin(
            Method::PUT,
            "/groups/physics",
            Some(json!({"weight": 1_000_001})),
        )
        .await;
    assert_bad(s, &v, "weight");
    let (s, v) = gw
        .admin(Method::PUT, "/groups/physics", Some(json!({})))
        .await;
    assert_bad(s, &v, "weight");
    let (s, v) = gw
        .admin(
            Method::PUT,
            "/groups/physics",
            Some(json!({"weight": 2, "x": 1})),
        )
        .await;
    assert_bad(s, &v, "x");
    let (s, v) = gw
        .admin(
            Method::PUT,
            "/groups/bad%20name",
            Some(json!({"weight": 2})),
        )
        .await;
    assert_bad(s, &v, "group");
    let (_, v) = gw.admin(Method::GET, "/groups/physics", None).await;
    assert_eq!(v["weight"], 5);

    // A tenant in the group carries the group's weight in the scheduler.
    let (s, v) = gw
        .admin(
            Method::POST,
            "/tenants",
            Some(json!({"name": "lab", "weight": 2, "group": "physics"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let lab = |v: &Value| {
        v["models"][0]["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant"] == "lab")
            .cloned()
            .unwrap()
    };
    let (_, v) = gw.admin(Method::GET, "/scheduler", None).await;
    let t = lab(&v);
    assert_eq!(t["group"], "physics");
    assert_eq!(t["weight"], 2);
    assert_eq!(t["group_weight"], 5, "{v}");

    // Deleting the group: the tenant keeps its group name, which now weighs 1.
    let (s, _) = gw.admin(Method::DELETE, "/groups/physics", None).await;
    assert_eq!(s, 204);
    let (s, v) = gw.admin(Method::GET, "/groups/physics", None).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "not_found");
    let (s, _) = gw.admin(Method::DELETE, "/groups/physics", None).await;
    assert_eq!(s, 404);
    let (_, v) = gw.admin(Method::GET, "/scheduler", None).await;
    let t = lab(&v);
    assert_eq!(t["group"], "physics");
    assert_eq!(t["group_weight"], 1, "{v}");
    let (_, v) = gw.admin(Method::GET, "/tenants/lab", None).await;
    assert_eq!(v["group"], "physics");
    gw.shutdown().await;
}

#[tokio::test]
async fn key_policy_round_trip() {
    let (_sims, gw, _db) = start(&["m"]).await;
    gw.tenant("t", 1).await;
    let policy = json!({
        "limits": {"max_concurrent": 2},
        "budgets": [{"period": "month", "cost": 5000000}],
        "priority": "batch",
    });
    let (s, v) = gw
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"tenant": "t", "name": "batch-jobs", "policy": policy})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["policy"], policy);
    let id = v["id"].as_str().unwrap().to_owned();
    let secret = v["key"].as_str().unwrap().to_owned();
    let (_, v) = gw.admin(Method::GET, &format!("/keys/{id}"), None).await;
    assert_eq!(v["policy"], policy);
    let (_, v) = gw.admin(Method::GET, "/keys?tenant=t", None).await;
    assert_eq!(v["data"][0]["policy"], policy);

    // The key's priority is its requests' default.
    let r = gw
        .post(&secret, "/v1/chat/completions", chat("m", 2, false))
        .await;
    assert_eq!(r.status(), 200);
    let rows = gw.wait_rows(Some("t"), 1).await;
    assert_eq!(rows[0]["priority"], "batch", "{rows:#?}");

    // A key without a policy shows the default.
    let (plain, _) = gw.key("t", None).await;
    let (_, v) = gw.admin(Method::GET, &format!("/keys/{plain}"), None).await;
    assert_eq!(v["policy"], json!({}));

    // PATCH replaces, leaves the rest; `null` resets.
    let (s, v) = gw
        .admin(
            Method::PATCH,
            &format!("/keys/{id}"),
            Some(json!({"policy": {"priority": "interactive"}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["policy"], json!({"priority": "interactive"}));
    assert_eq!(v["name"], "batch-jobs");
    let (s, v) = gw
        .admin(
            Method::PATCH,
            &format!("/keys/{id}"),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["policy"], json!({"priority": "interactive"}));
    let (s, v) = gw
        .admin(
            Method::PATCH,
            &format!("/keys/{id}"),
            Some(json!({"policy": null})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["policy"], json!({}));
    let (_, v) = gw.admin(Method::GET, &format!("/keys/{id}"), None).await;
    assert_eq!(v["policy"], json!({}));

    // Validation, on create and on patch; refused patches change nothing.
    let invalid = [
        (json!({"priority": "urgent"}), "policy.priority"),
        (
            json!({"budgets": [{"period": "day"}]}),
            "policy.budgets[0]: set `tokens` or `cost`",
        ),
        (json!({"limits": {"rpm": 0}}), "policy.limits.rpm"),
        (json!({"max_queue": 3}), "max_queue"),
    ];
    for (p, needle) in &invalid {
        let (s, v) = gw
            .admin(
                Method::POST,
                "/keys",
                Some(json!({"tenant": "t", "name": "x", "policy": p})),
            )
            .await;
        assert_bad(s, &v, needle);
        let (s, v) = gw
            .admin(
                Method::PATCH,
                &format!("/keys/{id}"),
                Some(json!({"policy": p})),
            )
            .await;
        assert_bad(s, &v, needle);
    }
    let (_, v) = gw.admin(Method::GET, "/keys?tenant=t", None).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 2, "{v}");
    gw.shutdown().await;
}

/// Polls `/scheduler` until `done` holds for the view of `model`.
async fn scheduler_until(gw: &TestGateway, model: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (s, v) = gw
            .admin(Method::GET, &format!("/scheduler?model={model}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        let m = v["models"][0].clone();
        if done(&m) {
            return m;
        }
        last = m;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("scheduler never reached the expected state: {last:#}");
}

#[tokio::test]
async fn scheduler_shows_every_pool_and_live_shares() {
    let (_sims, gw, _db) = start(&["m", "m2"]).await;
    gw.tenant("a", 1).await;
    gw.tenant("b", 3).await;
    let (_, ka) = gw.key("a", None).await;
    let (_, kb) = gw.key("b", None).await;

    let (s, v) = gw.admin(Method::GET, "/scheduler", None).await;
    assert_eq!(s, 200, "{v}");
    let models = v["models"].as_array().unwrap();
    let names: Vec<&str> = models
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m", "m2"]);
    assert_eq!(models[0]["mode"], "fair");
    assert_eq!(models[0]["max_in_flight"], 4);
    assert_eq!(models[1]["max_in_flight"], 2);
    assert_eq!(models[0]["max_tokens_in_flight"], Value::Null);

    for _ in 0..3 {
        for key in [&ka, &kb] {
            let r = gw
                .post(key, "/v1/chat/completions", chat("m", 8, false))
                .await;
            assert_eq!(r.status(), 200);
        }
    }
    let m = scheduler_until(&gw, "m", |m| {
        m["in_flight"] == 0
            && m["tenants"]
                .as_array()
                .is_some_and(|ts| ts.iter().all(|t| t["in_flight"] == 0))
    })
    .await;
    assert_eq!(m["model"], "m");
    assert_eq!(m["queued"], 0);
    assert_eq!(m["tokens_in_flight"], 0);
    let tenants = m["tenants"].as_array().unwrap();
    let names: Vec<&str> = tenants
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"], "{m:#}");
    let mut share = 0.0;
    for t in tenants {
        assert_eq!(t["in_flight"], 0, "{t}");
        assert_eq!(t["queued"], 0, "{t}");
        assert!(t["service_total"].as_u64().unwrap() > 0, "{t}");
        assert!(t["service_last_minute"].as_u64().unwrap() > 0, "{t}");
        assert!(t["counter"].as_f64().is_some(), "{t}");
        assert_eq!(t["group"], Value::Null);
        share += t["share_last_minute"].as_f64().unwrap();
    }
    assert!((share - 1.0).abs() < 0.01, "shares sum to {share}: {m:#}");
    assert_eq!(tenants[0]["weight"], 1);
    assert_eq!(tenants[1]["weight"], 3);

    // The other pool knows the tenants but served nothing.
    let m2 = scheduler_until(&gw, "m2", |_| true).await;
    assert_eq!(m2["model"], "m2");
    for t in m2["tenants"].as_array().unwrap() {
        assert_eq!(t["service_total"], 0, "{t}");
        assert_eq!(t["share_last_minute"], 0.0, "{t}");
    }
    let (s, v) = gw.admin(Method::GET, "/scheduler?model=m2", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["models"].as_array().unwrap().len(), 1);

    let (s, v) = gw.admin(Method::GET, "/scheduler?model=nope", None).await;
    assert_eq!(s, 404, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    gw.shutdown().await;
}

#[tokio::test]
async fn budgets_show_spend_of_tenant_and_keys() {
    let (_sims, gw, _db) = start(&["m"]).await;
    let (s, v) = gw
        .admin(
            Method::POST,
            "/tenants",
            Some(
                json!({"name": "t", "policy": {"budgets": [{"period": "day", "tokens": 100000}]}}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = gw
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"tenant": "t", "name": "budgeted",
                "policy": {"budgets": [{"period": "month", "tokens": 50000, "cost": 1000000}]}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let kid = v["id"].as_str().unwrap().to_owned();
    let key = v["key"].as_str().unwrap().to_owned();
    let (plain_id, _) = gw.key("t", None).await;

    // Before any request: the lines exist, nothing spent.
    let (s, v) = gw.admin(Method::GET, "/tenants/t/budgets", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tenant"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["tenant"][0]["spent_tokens"], 0);

    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 7, false))
        .await;
    assert_eq!(r.status(), 200);
    let mut v = Value::Null;
    for _ in 0..200 {
        let (s, got) = gw.admin(Method::GET, "/tenants/t/budgets", None).await;
        assert_eq!(s, 200, "{got}");
        v = got;
        if v["tenant"][0]["spent_tokens"].as_u64().unwrap_or(0) > 0
            && v["tenant"][0]["reserved_tokens"] == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = chrono::Utc::now().timestamp_millis();
    let line = &v["tenant"][0];
    assert_eq!(line["period"], "day", "{v:#}");
    assert_eq!(line["tokens_cap"], 100000);
    assert_eq!(line["cost_cap"], Value::Null);
    let spent = line["spent_tokens"].as_u64().unwrap();
    assert!(spent > 7, "prompt + 7 completion tokens: {v:#}");
    assert_eq!(line["reserved_tokens"], 0, "{v:#}");
    assert_eq!(line["spent_cost"], 0);
    assert_eq!(line["reserved_cost"], 0);
    let start = line["period_start"].as_i64().unwrap();
    let resets = line["resets_at"].as_i64().unwrap();
    assert!(start <= now && now < resets, "{v:#}");
    assert_eq!(resets - start, 86_400_000);

    let keys = v["keys"].as_object().unwrap();
    assert_eq!(keys.len(), 1, "only keys with budgets: {v:#}");
    assert!(!keys.contains_key(&plain_id));
    let kline = &keys[&kid][0];
    assert_eq!(kline["period"], "month");
    assert_eq!(kline["tokens_cap"], 50000);
    assert_eq!(kline["cost_cap"], 1000000);
    assert_eq!(kline["spent_tokens"].as_u64().unwrap(), spent, "{v:#}");
    assert!(kline["period_start"].as_i64().unwrap() <= now);
    assert!(kline["resets_at"].as_i64().unwrap() > now);

    let (s, v) = gw.admin(Method::GET, "/tenants/nope/budgets", None).await;
    assert_eq!(s, 404, "{v}");
    gw.shutdown().await;
}

#[tokio::test]
async fn reload_without_a_file_reloads_defaults() {
    let (_sims, gw, _db) = start(&["m"]).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    let (s, v) = gw.admin(Method::POST, "/reload", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["path"], Value::Null, "{v}");
    assert!(v["tenants_declared"].is_u64(), "{v}");
    assert!(v["groups_declared"].is_u64(), "{v}");
    assert!(v["needs_restart"].is_array(), "{v}");
    // The running gateway keeps its models and tenants.
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 2, false))
        .await;
    assert_eq!(r.status(), 200);
    let (s, _) = gw.admin(Method::GET, "/tenants/t", None).await;
    assert_eq!(s, 200);
    gw.shutdown().await;
}

fn config_text(dir: &std::path::Path, sim: &str, weight: u32, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
database = "sqlite://{db}"
data_dir = "{data}"
admin_token = "{ADMIN}"
{extra}

[[models]]
name = "m"
[[models.backends]]
url = "{sim}"
max_in_flight = 4

[[groups]]
name = "physics"
weight = 3

[[tenants]]
name = "lab"
weight = {weight}
group = "physics"
"#,
        db = dir.join("fg.db").display(),
        data = dir.display(),
    )
}

/// `POST /reload` on a gateway started from a file; a file that does not load is a 400 and
/// changes nothing.
#[tokio::test]
async fn reload_from_a_file_applies_it_and_refuses_a_broken_one() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fairgate.toml");
    std::fs::write(&path, config_text(dir.path(), &sim.url, 2, "")).unwrap();
    let config =
        fairgate::config::Config::load(Some(&path), Vec::<(String, String)>::new()).unwrap();
    let gw = fairgate::server::Gateway::build_with_path(config, Some(path.clone()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/admin/v1", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(gw.serve(listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let call = |method: Method, p: &str| {
        let req = http
            .request(method, format!("{base}{p}"))
            .bearer_auth(ADMIN);
        async move {
            let r = req.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) = call(Method::GET, "/tenants/lab").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["weight"], 2);

    // A valid change applies.
    std::fs::write(
        &path,
        config_text(dir.path(), &sim.url, 5, "[admission]\nmode = \"fifo\"\n"),
    )
    .unwrap();
    let (s, v) = call(Method::POST, "/reload").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["path"], path.display().to_string());
    assert_eq!(v["tenants_declared"], 1);
    assert_eq!(v["groups_declared"], 1);
    assert_eq!(v["needs_restart"], json!([]), "{v}");
    let (_, v) = call(Method::GET, "/tenants/lab").await;
    assert_eq!(v["weight"], 5);
    let (_, v) = call(Method::GET, "/scheduler").await;
    assert_eq!(v["models"][0]["mode"], "fifo", "{v}");

    // A file that does not parse, and one that does not validate: 400, nothing changes.
    std::fs::write(&path, "listen = ").unwrap();
    let (s, v) = call(Method::POST, "/reload").await;
    assert_bad(s, &v, "config reload failed");
    std::fs::write(
        &path,
        config_text(dir.path(), &sim.url, 7, "[admission]\nmax_queued = 0\n"),
    )
    .unwrap();
    let (s, v) = call(Method::POST, "/reload").await;
    assert_bad(s, &v, "admission.max_queued");
    std::fs::remove_file(&path).unwrap();
    let (s, v) = call(Method::POST, "/reload").await;
    assert_bad(s, &v, "config reload failed");
    let (_, v) = call(Method::GET, "/tenants/lab").await;
    assert_eq!(v["weight"], 5);
    let (_, v) = call(Method::GET, "/scheduler").await;
    assert_eq!(v["models"][0]["mode"], "fifo", "{v}");

    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn new_routes_require_the_admin_token() {
    let (_sims, gw, _db) = start(&["m"]).await;
    gw.tenant("t", 1).await;
    let routes = [
        (Method::GET, "/scheduler"),
        (Method::GET, "/scheduler?model=m"),
        (Method::GET, "/groups"),
        (Method::GET, "/groups/g"),
        (Method::PUT, "/groups/g"),
        (Method::DELETE, "/groups/g"),
        (Method::GET, "/tenants/t/budgets"),
        (Method::POST, "/reload"),
        (Method::PATCH, "/tenants/t"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong-token-wrong-token")] {
            let mut req = gw
                .http
                .request(method.clone(), format!("{}/admin/v1{path}", gw.base))
                .json(&json!({"weight": 9, "policy": null}));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {token:?}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["type"], "authentication_error", "{v}");
        }
    }
    // Nothing happened.
    let (_, v) = gw.admin(Method::GET, "/groups", None).await;
    assert_eq!(v["data"], json!([]));
    let (_, v) = gw.admin(Method::GET, "/tenants/t", None).await;
    assert_eq!(v["weight"], 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_cli_drives_groups_policies_scheduler_and_reload() {
    let (_sims, gw, _db) = start(&["m", "m2"]).await;

    let (ok, out, err) = cli(&gw, &["group", "set", "physics", "--weight", "4"]).await;
    assert_eq!(
        json_out(ok, &out, &err),
        json!({"name": "physics", "weight": 4})
    );
    let (ok, out, err) = cli(&gw, &["group", "list"]).await;
    assert_eq!(json_out(ok, &out, &err)["data"][0]["weight"], 4);

    // The existing subcommands keep working, under `tenants` and the `tenant` alias.
    let (ok, out, err) = cli(
        &gw,
        &[
            "tenants", "create", "lab", "--weight", "2", "--group", "physics",
        ],
    )
    .await;
    assert_eq!(json_out(ok, &out, &err)["name"], "lab");
    let policy = r#"{"limits":{"rpm":60},"budgets":[{"period":"day","tokens":1000}]}"#;
    let (ok, out, err) = cli(&gw, &["tenant", "policy", "lab", "--json", policy]).await;
    let v = json_out(ok, &out, &err);
    assert_eq!(
        v["policy"],
        serde_json::from_str::<Value>(policy).unwrap(),
        "{v}"
    );
    assert_eq!(v["weight"], 2);
    let (ok, out, err) = cli(&gw, &["tenant", "budgets", "lab"]).await;
    assert_eq!(json_out(ok, &out, &err)["tenant"][0]["tokens_cap"], 1000);
    // A refused policy: non-zero exit with the API's message.
    let (ok, _, err) = cli(
        &gw,
        &["tenant", "policy", "lab", "--json", r#"{"max_queue":0}"#],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("policy.max_queue"), "{err}");
    let (ok, _, err) = cli(&gw, &["tenant", "policy", "lab", "--json", "{nope"]).await;
    assert!(!ok);
    assert!(err.contains("--json"), "{err}");
    let (ok, out, err) = cli(&gw, &["tenant", "policy", "lab", "--json", "null"]).await;
    assert_eq!(json_out(ok, &out, &err)["policy"], json!({}));

    let (ok, out, err) = cli(&gw, &["keys", "create", "--tenant", "lab", "--name", "k"]).await;
    let id = json_out(ok, &out, &err)["id"].as_str().unwrap().to_owned();
    let (ok, out, err) = cli(
        &gw,
        &["key", "policy", &id, "--json", r#"{"priority":"batch"}"#],
    )
    .await;
    assert_eq!(json_out(ok, &out, &err)["policy"]["priority"], "batch");

    let (ok, out, err) = cli(&gw, &["scheduler"]).await;
    let v = json_out(ok, &out, &err);
    assert_eq!(v["models"].as_array().unwrap().len(), 2);
    assert_eq!(v["models"][0]["tenants"][0]["group_weight"], 4, "{v}");
    let (ok, out, err) = cli(&gw, &["scheduler", "--model", "m2"]).await;
    let v = json_out(ok, &out, &err);
    assert_eq!(v["models"].as_array().unwrap().len(), 1);
    assert_eq!(v["models"][0]["model"], "m2");
    let (ok, _, err) = cli(&gw, &["scheduler", "--model", "a&b"]).await;
    assert!(!ok);
    assert!(err.contains("404") && err.contains("a&b"), "{err}");

    let (ok, out, err) = cli(&gw, &["reload"]).await;
    assert_eq!(json_out(ok, &out, &err)["path"], Value::Null);

    let (ok, out, err) = cli(&gw, &["group", "delete", "physics"]).await;
    json_out(ok, &out, &err);
    let (ok, _, err) = cli(&gw, &["group", "show", "physics"]).await;
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
    gw.shutdown().await;
}

#[tokio::test]
async fn every_admin_change_lands_in_the_audit_log_without_secrets() {
    let (_sims, gw, _db) = start(&["m"]).await;
    gw.tenant("lab", 1).await;
    let (s, _) = gw
        .admin(Method::PATCH, "/tenants/lab", Some(json!({"weight": 4})))
        .await;
    assert_eq!(s, 200);
    let (key_id, secret) = gw.key("lab", None).await;
    let (s, _) = gw
        .admin(Method::PUT, "/groups/science", Some(json!({"weight": 2})))
        .await;
    assert_eq!(s, 200);
    let (s, _) = gw
        .admin(Method::DELETE, &format!("/keys/{key_id}"), None)
        .await;
    assert_eq!(s, 200);

    let (s, v) = gw.admin(Method::GET, "/audit?limit=50", None).await;
    assert_eq!(s, 200, "{v}");
    let entries = v["data"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // Newest first.
    assert_eq!(
        actions,
        [
            "key.revoke",
            "group.set",
            "key.create",
            "tenant.update",
            "tenant.create"
        ],
        "{v}"
    );
    let update = &entries[3];
    assert_eq!(update["actor"], "admin-token");
    assert_eq!(update["target"], "tenant:lab");
    let before: Value = serde_json::from_str(update["before"].as_str().unwrap()).unwrap();
    let after: Value = serde_json::from_str(update["after"].as_str().unwrap()).unwrap();
    assert_eq!(
        (before["weight"].clone(), after["weight"].clone()),
        (json!(1), json!(4))
    );
    let text = v.to_string();
    assert!(
        !text.contains(&secret),
        "a key secret reached the audit log"
    );
    assert!(!text.contains("secret_hash"), "{text}");
    gw.shutdown().await;
}
