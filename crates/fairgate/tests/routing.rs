//! Routing across replicas, end to end: several real simulators behind a real gateway on
//! port 0. Health (active probes, passive ejection, recovery), failover before the first
//! byte, draining, load-aware and prefix-aware placement, live backend changes, aliases and
//! fallbacks. Tests wait for conditions with deadlines; they never assert on speed.

mod common;

use std::time::Duration;

use common::*;
use fairgate_sim::SimConfig;
use reqwest::Method;
use serde_json::{json, Value};

const MODEL: &str = "m";

/// Fast health checks so ejection and recovery happen within a test.
fn quick_health(c: &mut fairgate::config::Config) {
    c.routing.probe_interval_ms = 50;
    c.routing.probe_timeout_ms = 500;
    c.routing.scrape_interval_ms = 50;
    c.routing.eject_after_failures = 2;
    c.routing.eject_ms = 200;
    c.upstream.connect_timeout_ms = 500;
}

async fn sims(n: usize, cfg: SimConfig) -> Vec<Sim> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Sim::start(cfg.clone()).await);
    }
    v
}

fn urls(sims: &[Sim]) -> Vec<&str> {
    sims.iter().map(|s| s.url.as_str()).collect()
}

async fn gateway(db: &DbHandle, setup: Setup) -> (TestGateway, String) {
    let gw = TestGateway::start(setup, &db.url).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    (gw, key)
}

/// `GET /admin/v1/models/m/backends`, by URL.
async fn backends(gw: &TestGateway) -> Vec<Value> {
    let (s, v) = gw
        .admin(Method::GET, &format!("/models/{MODEL}/backends"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["backends"].as_array().unwrap().clone()
}

async fn backend(gw: &TestGateway, url: &str) -> Value {
    backends(gw)
        .await
        .into_iter()
        .find(|b| b["url"] == url)
        .unwrap_or(Value::Null)
}

/// Polls until `f` holds for the backend at `url`, or panics after 10 s.
async fn wait_backend(gw: &TestGateway, url: &str, what: &str, f: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let b = backend(gw, url).await;
        if f(&b) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend {url} never became {what}: {b}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ok_chat(gw: &TestGateway, key: &str, body: Value) -> Value {
    let r = gw.post(key, "/v1/chat/completions", body).await;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn killed_replica_is_ejected_without_failed_requests_then_recovers() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let mut s = sims(3, SimConfig::instant(MODEL)).await;
    let dead_url = s[1].url.clone();
    let setup = Setup::many(MODEL, &urls(&s), 8).with(|c| {
        quick_health(c);
        c.routing.strategy = fairgate::router::Strategy::RoundRobin;
    });
    let (gw, key) = gateway(&db, setup).await;
    for _ in 0..6 {
        ok_chat(&gw, &key, chat(MODEL, 4, false)).await;
    }
    assert!(
        s[1].sim.stats().requests_total > 0,
        "round robin reached every replica"
    );

    // Kill one replica: every client request still succeeds (failover before the first byte).
    s[1].stop();
    for _ in 0..30 {
        ok_chat(&gw, &key, chat(MODEL, 4, false)).await;
    }
    wait_backend(&gw, &dead_url, "ejected", |b| b["state"] == "ejected").await;
    let rows = gw.wait_rows(Some("t"), 36).await;
    assert!(
        rows.iter().all(|r| r["status"] == 200),
        "no request failed: {rows:?}"
    );
    let failed_over: Vec<&Value> = rows.iter().filter(|r| r["attempts"] == 2).collect();
    assert!(
        !failed_over.is_empty(),
        "some requests were retried elsewhere"
    );
    assert!(
        failed_over
            .iter()
            .all(|r| r["backend"] != dead_url.as_str()),
        "the ledger names the backend that served the retry"
    );
    let b = backend(&gw, &dead_url).await;
    assert!(b["ejections"].as_u64().unwrap() >= 1, "{b}");
    let attempts_when_ejected = b["attempts"].as_u64().unwrap();
    for _ in 0..10 {
        ok_chat(&gw, &key, chat(MODEL, 4, false)).await;
    }
    let b = backend(&gw, &dead_url).await;
    assert_eq!(
        b["attempts"].as_u64().unwrap(),
        attempts_when_ejected,
        "an ejected replica gets no traffic: {b}"
    );

    // Bring it back on the same address: probes see it healthy and traffic returns.
    let back = Sim::start_at(
        dead_url.trim_start_matches("http://"),
        SimConfig::instant(MODEL),
    )
    .await;
    wait_backend(&gw, &dead_url, "healthy", |b| b["state"] == "healthy").await;
    for _ in 0..9 {
        ok_chat(&gw, &key, chat(MODEL, 4, false)).await;
    }
    assert!(
        back.sim.stats().requests_total >= 2,
        "the recovered replica serves again"
    );
    let text = gw
        .http
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("fairgate_backend_ejections_total{"), "{text}");
    assert!(text.contains("fairgate_backend_retries_total{"));
    assert!(text.contains("fairgate_backend_up{"));
    gw.shutdown().await;
}

#[tokio::test]
async fn errors_fail_over_within_the_attempt_budget() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let s = sims(3, SimConfig::instant(MODEL)).await;
    let setup = Setup::many(MODEL, &urls(&s), 8).with(|c| {
        c.routing.max_attempts = 2;
        c.routing.eject_after_failures = 100;
    });
    let (gw, key) = gateway(&db, setup).await;
    // Every backend answers 500 to this request: two attempts, then the client gets the error.
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&key)
        .header("x-sim-fault", "error")
        .json(&chat(MODEL, 4, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_status", "{v}");
    let rows = gw.wait_rows(Some("t"), 1).await;
    assert_eq!(rows.len(), 1, "one request, one ledger row");
    assert_eq!(rows[0]["attempts"], 2);
    assert_eq!(rows[0]["outcome"], "upstream_error");
    let errors: u64 = backends(&gw)
        .await
        .iter()
        .map(|b| b["failures"].as_u64().unwrap())
        .sum();
    assert_eq!(errors, 2);

    // Bytes reached the client: a stream broken mid-way is not retried.
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&key)
        .header("x-sim-fault", "abort-after=3")
        .json(&chat(MODEL, 20, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_events, done) = sse_events(r).await;
    assert!(!done, "the broken stream is not papered over");
    let rows = gw.wait_rows(Some("t"), 2).await;
    let streamed = rows.iter().find(|r| r["stream"] == true).unwrap();
    assert_eq!(streamed["attempts"], 1, "{streamed}");
    gw.shutdown().await;
}

#[tokio::test]
async fn draining_replica_finishes_its_stream_and_gets_nothing_new() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let slow = SimConfig {
        decode_step_base: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let s = sims(
        2,
        SimConfig {
            model: MODEL.into(),
            ..slow
        },
    )
    .await;
    let (gw, key) = gateway(&db, Setup::many(MODEL, &urls(&s), 8)).await;
    let stream = gw
        .post(&key, "/v1/chat/completions", chat(MODEL, 40, true))
        .await;
    assert_eq!(stream.status().as_u16(), 200);
    let busy = if s[0].sim.stats().running + s[0].sim.stats().waiting > 0 {
        0
    } else {
        1
    };
    let busy_url = s[busy].url.clone();
    let (st, v) = gw
        .admin(
            Method::POST,
            &format!("/models/{MODEL}/backends/drain"),
            Some(json!({"url": busy_url})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["draining"], true);
    let served_before = s[busy].sim.stats().requests_total;
    for _ in 0..4 {
        ok_chat(&gw, &key, chat(MODEL, 2, false)).await;
    }
    // The drained replica's stream completes in full.
    let (events, done) = sse_events(stream).await;
    assert!(done, "the stream on the drained replica finished");
    let tokens: usize = events
        .iter()
        .filter(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count();
    assert_eq!(tokens, 40);
    assert_eq!(
        s[busy].sim.stats().requests_total,
        served_before + 1,
        "only the old stream finished there; nothing new was sent"
    );
    // Removal waits for in-flight work, then the backend is gone.
    let (st, _) = gw
        .admin(
            Method::POST,
            &format!("/models/{MODEL}/backends/remove"),
            Some(json!({"url": busy_url})),
        )
        .await;
    assert_eq!(st, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while backend(&gw, &busy_url).await != Value::Null {
        assert!(tokio::time::Instant::now() < deadline, "never removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, audit) = gw.admin(Method::GET, "/audit", None).await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"backend.drain") && actions.contains(&"backend.remove"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_replica_receives_less_traffic() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let fast = Sim::start(SimConfig::instant(MODEL)).await;
    let slow = Sim::start(SimConfig {
        slow_start: Duration::from_millis(150),
        ..SimConfig::instant(MODEL)
    })
    .await;
    let setup = Setup::many(MODEL, &[&fast.url, &slow.url], 16)
        .with(|c| c.routing.strategy = fairgate::router::Strategy::LeastLoaded);
    let (gw, key) = gateway(&db, setup).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, base, key) = (gw.http.clone(), gw.base.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..6 {
                let r = http
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&chat(MODEL, 2, false))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let (f, s) = (
        fast.sim.stats().requests_total,
        slow.sim.stats().requests_total,
    );
    assert_eq!(f + s, 48);
    assert!(f >= 2 * s, "fast {f} vs slow {s}");
    gw.shutdown().await;
}

/// Chat requests of one "customer": a long shared system prompt and a distinct question.
fn customer_chat(customer: usize, question: usize) -> Value {
    let system = format!(
        "You are the assistant of customer {customer}. {}",
        "Answer from the product manual, politely and briefly. ".repeat(40)
    );
    json!({
        "model": MODEL,
        "max_tokens": 2,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": format!("question {question}: how do I reset the device?")},
        ],
    })
}

async fn backends_per_customer(strategy: fairgate::router::Strategy) -> (Vec<usize>, f64) {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let s = sims(4, SimConfig::instant(MODEL)).await;
    let setup = Setup::many(MODEL, &urls(&s), 8).with(move |c| c.routing.strategy = strategy);
    let gw = TestGateway::start(setup, &db.url).await;
    gw.tenant("t", 1).await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(gw.key("t", None).await);
    }
    for q in 0..8 {
        for (c, (_, key)) in keys.iter().enumerate() {
            ok_chat(&gw, key, customer_chat(c, q)).await;
        }
    }
    let rows = gw.wait_rows(Some("t"), 24).await;
    let spread = keys
        .iter()
        .map(|(id, _)| {
            let mut b: Vec<&str> = rows
                .iter()
                .filter(|r| r["key_id"] == id.as_str())
                .filter_map(|r| r["backend"].as_str())
                .collect();
            b.sort();
            b.dedup();
            b.len()
        })
        .collect();
    let (hits, queries) = s.iter().fold((0, 0), |(h, q), x| {
        let st = x.sim.stats();
        (
            h + st.prefix_cache_hits_total,
            q + st.prefix_cache_queries_total,
        )
    });
    gw.shutdown().await;
    (spread, hits as f64 / queries.max(1) as f64)
}

#[tokio::test]
async fn requests_sharing_a_prefix_stick_to_one_replica() {
    let (spread, hit_rate) = backends_per_customer(fairgate::router::Strategy::PrefixAware).await;
    assert_eq!(
        spread,
        vec![1, 1, 1],
        "each customer's requests on one replica"
    );
    let (rr_spread, rr_hit_rate) =
        backends_per_customer(fairgate::router::Strategy::RoundRobin).await;
    assert!(
        rr_spread.iter().all(|&n| n >= 3),
        "round robin scatters them: {rr_spread:?}"
    );
    assert!(
        hit_rate > rr_hit_rate,
        "prefix-aware hit rate {hit_rate:.2} vs round robin {rr_hit_rate:.2}"
    );
}

#[tokio::test]
async fn backends_added_live_take_traffic() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let a = Sim::start(SimConfig::instant(MODEL)).await;
    let b = Sim::start(SimConfig::instant(MODEL)).await;
    let setup = Setup::many(MODEL, &[&a.url], 8)
        .with(|c| c.routing.strategy = fairgate::router::Strategy::RoundRobin);
    let (gw, key) = gateway(&db, setup).await;
    let (st, v) = gw
        .admin(
            Method::POST,
            &format!("/models/{MODEL}/backends"),
            Some(json!({"url": b.url, "max_in_flight": 4})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = gw
        .admin(
            Method::POST,
            &format!("/models/{MODEL}/backends"),
            Some(json!({"url": b.url})),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    let (st, v) = gw
        .admin(
            Method::POST,
            &format!("/models/{MODEL}/backends"),
            Some(json!({"url": "ftp://x"})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    for _ in 0..6 {
        ok_chat(&gw, &key, chat(MODEL, 2, false)).await;
    }
    assert_eq!(
        b.sim.stats().requests_total,
        3,
        "{:#}",
        Value::Array(backends(&gw).await)
    );
    let (st, v) = gw.admin(Method::GET, "/backends", None).await;
    assert_eq!(st, 200);
    assert_eq!(v["data"][0]["capacity"], 12, "{v}");
    assert_eq!(v["strategy"], "round_robin");
    gw.shutdown().await;
}

#[tokio::test]
async fn aliases_and_fallbacks() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let big = Sim::start(SimConfig::instant("big")).await;
    let small = Sim::start(SimConfig::instant("small")).await;
    let mut setup = Setup::one("big", &big.url, 8);
    setup
        .models
        .push(("small".into(), vec![(small.url.clone(), 8)]));
    let setup = setup.with(|c| {
        c.models[0].fallbacks = vec!["small".into()];
        c.aliases = vec![fairgate::config::AliasConfig {
            name: "chat".into(),
            models: vec!["big".into(), "small".into()],
        }];
    });
    let gw = TestGateway::start(setup, &db.url).await;
    gw.tenant("t", 1).await;
    gw.tenant("strict", 1).await;
    let (_, key) = gw.key("t", None).await;
    let (_, strict) = gw.key("strict", None).await;
    let (st, v) = gw
        .admin(
            Method::PATCH,
            "/tenants/strict",
            Some(json!({"policy": {"fallbacks": {"big": []}}})),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    // The alias resolves to its first model; the body names the real one upstream.
    let v = ok_chat(&gw, &key, chat("chat", 2, false)).await;
    assert_eq!(v["model"], "big");
    let models: Value = gw
        .http
        .get(format!("{}/v1/models", gw.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["big", "small", "chat"]);

    // `big` has no usable backend: its fallback serves, and the alias moves on too.
    let (st, _) = gw
        .admin(
            Method::POST,
            "/models/big/backends/drain",
            Some(json!({"url": big.url})),
        )
        .await;
    assert_eq!(st, 200);
    let v = ok_chat(&gw, &key, chat("big", 2, false)).await;
    assert_eq!(v["model"], "small");
    let v = ok_chat(&gw, &key, chat("chat", 2, false)).await;
    assert_eq!(v["model"], "small");
    // A tenant whose policy turns fallbacks off gets a clear 503.
    let r = gw
        .post(&strict, "/v1/chat/completions", chat("big", 2, false))
        .await;
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_healthy_backend", "{v}");
    let rows = gw.wait_rows(None, 4).await;
    let models: Vec<&str> = rows.iter().filter_map(|r| r["model"].as_str()).collect();
    assert!(
        models.contains(&"small"),
        "the ledger records the model that served: {models:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn lora_requests_prefer_the_replica_where_the_adapter_runs() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let lora = SimConfig {
        model: MODEL.into(),
        lora_modules: vec!["sql".into(), "poetry".into()],
        max_loras: 1,
        decode_step_base: Duration::from_millis(10),
        ..SimConfig::default()
    };
    let s = sims(3, lora).await;
    let setup = Setup::many(MODEL, &urls(&s), 8).with(|c| {
        quick_health(c);
        c.routing.strategy = fairgate::router::Strategy::RoundRobin;
        c.models[0].adapters = vec!["sql".into(), "poetry".into()];
        // The third replica does not serve `poetry`.
        c.models[0].backends[2].adapters = Some(vec!["sql".into()]);
    });
    let (gw, key) = gateway(&db, setup).await;

    // A long `sql` stream makes that adapter resident on one replica.
    let long = gw
        .post(&key, "/v1/chat/completions", chat("sql", 200, true))
        .await;
    assert_eq!(long.status().as_u16(), 200);
    let hot = s
        .iter()
        .position(|x| x.sim.lora_stats().running_adapters == ["sql"])
        .expect("one replica runs the adapter");
    let hot_url = s[hot].url.clone();
    wait_backend(&gw, &hot_url, "running sql", |b| {
        b["running_adapters"] == json!(["sql"])
    })
    .await;
    // Round robin would spread these; adapter affinity sends them where `sql` is loaded.
    for _ in 0..4 {
        let v = ok_chat(&gw, &key, chat("sql", 2, false)).await;
        assert_eq!(
            v["model"], "sql",
            "the adapter's name reaches the backend unchanged"
        );
    }
    assert_eq!(
        s[hot].sim.stats().requests_total,
        4,
        "all went to the warm replica"
    );
    drop(long);

    // `poetry` never reaches the replica that does not serve it.
    for _ in 0..6 {
        ok_chat(&gw, &key, chat("poetry", 2, false)).await;
    }
    let rows = gw.wait_rows(Some("t"), 11).await;
    assert!(rows
        .iter()
        .filter(|r| r["model"] == "poetry")
        .all(|r| r["backend"] != s[2].url.as_str()));
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_cli_manages_backends() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let a = Sim::start(SimConfig::instant(MODEL)).await;
    let b = Sim::start(SimConfig::instant(MODEL)).await;
    let (gw, _key) = gateway(&db, Setup::many(MODEL, &[&a.url], 8)).await;
    let (ok, out, err) = cli(
        &gw,
        &["backend", "add", MODEL, &b.url, "--max-in-flight", "3"],
    )
    .await;
    assert_eq!(json_out(ok, &out, &err)["max_in_flight"], 3);
    let (ok, out, err) = cli(&gw, &["backend", "drain", MODEL, &b.url]).await;
    assert_eq!(json_out(ok, &out, &err)["draining"], true);
    let (ok, out, err) = cli(&gw, &["backends", "list", "--model", MODEL]).await;
    let v = json_out(ok, &out, &err);
    assert_eq!(
        v["capacity"], 8,
        "a drained backend's slots are not offered: {v}"
    );
    let (ok, out, err) = cli(&gw, &["backend", "resume", MODEL, &b.url]).await;
    assert_eq!(json_out(ok, &out, &err)["draining"], false);
    let (ok, out, err) = cli(&gw, &["backend", "remove", MODEL, &b.url]).await;
    assert_eq!(json_out(ok, &out, &err)["removing"], true);
    let (ok, out, err) = cli(&gw, &["backend", "list"]).await;
    let v = json_out(ok, &out, &err);
    assert_eq!(v["data"][0]["backends"].as_array().unwrap().len(), 1, "{v}");
    let (ok, _, err) = cli(&gw, &["backend", "drain", MODEL, "http://nowhere:1"]).await;
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");
    gw.shutdown().await;
}

/// A front for `target` that closes the connection without an answer under the first
/// `resets` chat requests it sees, and relays everything else: a backend refusing work during a ramp.
async fn resetting_front(target: &str, resets: usize) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let target = target.trim_start_matches("http://").to_owned();
    let left = Arc::new(AtomicUsize::new(resets));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (target, left) = (target.clone(), left.clone());
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let (mut up_r, mut up_w) = up.into_split();
                let (mut cl_r, mut cl_w) = client.into_split();
                let back = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut up_r, &mut cl_w).await;
                    cl_w
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cl_r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let chat = buf[..n].starts_with(b"POST /v1/chat/completions");
                    if chat
                        && left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                            .is_ok()
                    {
                        // Closing without an answer: hyper sees the connection end before
                        // any response head.
                        back.abort();
                        return;
                    }
                    if up_w.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn a_reset_connection_is_retried_on_the_only_backend() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let sim = Sim::start(SimConfig::instant(MODEL)).await;
    let front = resetting_front(&sim.url, 2).await;
    let setup = Setup::one(MODEL, &front, 8).with(|c| {
        // Probes would use up the resets; this test is about the request path alone.
        c.routing.probe_interval_ms = 60_000;
        c.routing.eject_after_failures = 100;
    });
    let (gw, key) = gateway(&db, setup).await;
    let r = gw
        .post(&key, "/v1/chat/completions", chat(MODEL, 3, false))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let rows = gw.wait_rows(Some("t"), 1).await;
    assert_eq!(rows[0]["outcome"], "ok", "{}", rows[0]);
    assert_eq!(
        rows[0]["attempts"], 3,
        "two resets, then the answer: {}",
        rows[0]
    );
    let chats = |sim: &Sim| {
        seen_paths(sim)
            .iter()
            .filter(|p| *p == "/v1/chat/completions")
            .count()
    };
    assert_eq!(chats(&sim), 1, "the backend saw the request once");

    // A backend that answers 500 is not asked again when it is the only one.
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&key)
        .header("x-sim-fault", "error")
        .json(&chat(MODEL, 3, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let rows = gw.wait_rows(Some("t"), 2).await;
    let failed = rows.iter().find(|r| r["status"] == 502).unwrap();
    assert_eq!(failed["attempts"], 1, "{failed}");
    gw.shutdown().await;
}

/// A relaying front for `target` that counts the connections open through it.
async fn counting_front(target: &str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let target = target.trim_start_matches("http://").to_owned();
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (target, open) = (target.clone(), open.clone());
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn idle_backend_connections_are_closed_after_the_pool_timeout() {
    use std::sync::atomic::Ordering;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let sim = Sim::start(SimConfig::instant(MODEL)).await;
    let (front, open) = counting_front(&sim.url).await;
    let setup = Setup::one(MODEL, &front, 8).with(|c| {
        // Only the requests below open connections to the backend.
        c.routing.probe_interval_ms = 600_000;
        c.routing.scrape_interval_ms = 600_000;
        c.upstream.pool_idle_timeout_ms = 300;
    });
    let (gw, key) = gateway(&db, setup).await;
    // Concurrent streams, so the pool ends up with several idle connections.
    let calls = (0..4).map(|_| gw.post(&key, "/v1/chat/completions", chat(MODEL, 3, true)));
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert!(
        open.load(Ordering::SeqCst) >= 1,
        "the requests went through the front"
    );
    // Kept for reuse at first, then closed once idle for the pool timeout.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while open.load(Ordering::SeqCst) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} idle backend connections still open after 10 s",
            open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    gw.shutdown().await;
}
