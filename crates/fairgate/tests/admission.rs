//! Fair-share admission end to end: a real gateway on port 0 in front of a saturated
//! simulator. Weights are honoured and change live, queues time out with the right status,
//! priority classes order a tenant's own work, budgets and token-rate limits hold for streamed
//! requests, and the response cache answers without a backend.
//!
//! Assertions are about shares and statuses, never about how fast anything ran.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fairgate::config::{SchedulerMode, TenantDecl};
use fairgate_sim::SimConfig;
use fairgate_types::{Budget, BudgetPeriod, OnLimit, RateLimits, TenantPolicy};
use reqwest::Method;
use serde_json::{json, Value};

/// A simulator whose batch is `seqs` wide and whose tokens take real (small) time, so a
/// flood of requests keeps it saturated.
fn busy_sim(seqs: usize) -> SimConfig {
    SimConfig {
        model: "m".into(),
        max_num_seqs: seqs,
        prefill_overhead: Duration::from_millis(1),
        prefill_per_token: Duration::ZERO,
        decode_step_base: Duration::from_millis(2),
        decode_step_per_seq: Duration::ZERO,
        ..SimConfig::default()
    }
}

fn declared(name: &str, weight: u32, policy: TenantPolicy) -> TenantDecl {
    TenantDecl {
        name: name.into(),
        weight,
        group: None,
        policy,
    }
}

/// Completion times of one tenant's requests, and whether any failed.
#[derive(Default)]
struct Record {
    done: Vec<Instant>,
    failures: Vec<String>,
}

/// Runs `clients` closed-loop streaming clients for `key` until `stop` is set.
fn flood(
    gw: &TestGateway,
    key: &str,
    clients: usize,
    max_tokens: u64,
    stop: Arc<AtomicBool>,
    rec: Arc<Mutex<Record>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let http = gw.http.clone();
            let url = format!("{}/v1/chat/completions", gw.base);
            let key = key.to_owned();
            let stop = stop.clone();
            let rec = rec.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = http
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&chat("m", max_tokens, true))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            let body = r.text().await.unwrap_or_default();
                            let mut g = rec.lock().unwrap();
                            if body.contains("[DONE]") {
                                g.done.push(Instant::now());
                            } else {
                                g.failures.push(body);
                            }
                        }
                        Ok(r) => {
                            let s = r.status();
                            let t = r.text().await.unwrap_or_default();
                            rec.lock().unwrap().failures.push(format!("{s}: {t}"));
                        }
                        Err(e) => rec.lock().unwrap().failures.push(e.to_string()),
                    }
                }
            })
        })
        .collect()
}

fn count_between(rec: &Mutex<Record>, from: Instant, to: Instant) -> usize {
    rec.lock()
        .unwrap()
        .done
        .iter()
        .filter(|t| **t >= from && **t < to)
        .count()
}

/// Two tenants flood a 4-slot pool; returns the completions of each in two phases, with a
/// weight change (through the admin API, no restart) between them.
async fn two_phase_flood(mode: SchedulerMode) -> ((usize, usize), (usize, usize), Vec<String>) {
    let sim = Sim::start(busy_sim(4)).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let setup = Setup::one("m", &sim.url, 4).with(move |c| {
        c.admission.mode = mode;
        c.admission.queue_timeout_ms = 60_000;
    });
    let gw = TestGateway::start(setup, &db.url).await;
    gw.tenant("a", 1).await;
    gw.tenant("b", 3).await;
    let (_, ka) = gw.key("a", None).await;
    let (_, kb) = gw.key("b", None).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ra, rb) = (Arc::default(), Arc::default());
    let mut tasks = flood(&gw, &ka, 12, 16, stop.clone(), Arc::clone(&ra));
    tasks.extend(flood(&gw, &kb, 12, 16, stop.clone(), Arc::clone(&rb)));

    // Phase 1 (weights 1:3), measured after a warm-up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p1 = Instant::now();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let p1_end = Instant::now();
    let (s, v) = gw
        .admin(Method::PATCH, "/tenants/a", Some(json!({"weight": 3})))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = gw
        .admin(Method::PATCH, "/tenants/b", Some(json!({"weight": 1})))
        .await;
    assert_eq!(s, 200, "{v}");
    // Phase 2 (weights 3:1), after the requests admitted under the old weights drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p2 = Instant::now();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let p2_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let phase1 = (
        count_between(&ra, p1, p1_end),
        count_between(&rb, p1, p1_end),
    );
    let phase2 = (
        count_between(&ra, p2, p2_end),
        count_between(&rb, p2, p2_end),
    );
    let mut failures = std::mem::take(&mut ra.lock().unwrap().failures);
    failures.extend(std::mem::take(&mut rb.lock().unwrap().failures));
    gw.shutdown().await;
    (phase1, phase2, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_are_honoured_at_saturation_and_change_live() {
    let ((a1, b1), (a2, b2), failures) = two_phase_flood(SchedulerMode::Fair).await;
    assert!(failures.is_empty(), "no request may fail: {failures:?}");
    assert!(
        a1 > 10 && b1 > 10 && a2 > 10 && b2 > 10,
        "{a1} {b1} {a2} {b2}"
    );
    // Equal request shapes, so completions are proportional to weighted token service.
    let r1 = b1 as f64 / a1 as f64;
    let r2 = a2 as f64 / b2 as f64;
    assert!(
        (2.2..=4.0).contains(&r1),
        "phase 1 b/a = {r1} ({a1} vs {b1}), want ~3"
    );
    assert!(
        (2.2..=4.0).contains(&r2),
        "phase 2 a/b = {r2} ({a2} vs {b2}), want ~3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifo_mode_ignores_weights() {
    let ((a1, b1), _, failures) = two_phase_flood(SchedulerMode::Fifo).await;
    assert!(failures.is_empty(), "{failures:?}");
    // Same number of clients each: first come, first served splits ~1:1 whatever the weights.
    let r = b1 as f64 / a1 as f64;
    assert!((0.6..=1.6).contains(&r), "fifo b/a = {r} ({a1} vs {b1})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_held_back_by_fair_share_gets_429_with_retry_after() {
    let sim = Sim::start(busy_sim(1)).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let setup = Setup::one("m", &sim.url, 1).with(|c| {
        c.admission.queue_timeout_ms = 60_000;
        c.tenants = vec![
            declared("big", 20, TenantPolicy::default()),
            declared(
                "small",
                1,
                TenantPolicy {
                    max_wait_ms: Some(150),
                    ..TenantPolicy::default()
                },
            ),
        ];
    });
    let gw = TestGateway::start(setup, &db.url).await;
    let (_, kbig) = gw.key("big", None).await;
    let (_, ksmall) = gw.key("small", None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let rbig = Arc::default();
    let tasks = flood(&gw, &kbig, 4, 16, stop.clone(), Arc::clone(&rbig));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut held_back = None;
    for _ in 0..40 {
        let r = gw
            .post(&ksmall, "/v1/chat/completions", chat("m", 16, true))
            .await;
        if r.status() == 429 {
            held_back = Some(r);
            break;
        }
        let _ = r.text().await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let r = held_back.expect("the weight-1 tenant never timed out behind the weight-20 one");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let waited: u64 = r.headers()["x-fairgate-queue-wait-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(waited >= 100, "{waited}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "queue_timeout", "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fair share"),
        "{v}"
    );
    let rows = gw.requests(Some("small")).await;
    assert!(rows
        .iter()
        .any(|r| r["error_class"] == "queue_timeout" && r["status"] == 429));
    gw.shutdown().await;
}

#[tokio::test]
async fn tenant_queue_limit_refuses_at_once() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let setup = Setup::one("m", &sim.url, 1).with(|c| {
        c.tenants = vec![declared(
            "t",
            1,
            TenantPolicy {
                max_queue: Some(1),
                ..TenantPolicy::default()
            },
        )];
    });
    let gw = TestGateway::start(setup, &db.url).await;
    let (_, key) = gw.key("t", None).await;
    let send = |fault: Option<&'static str>| {
        let mut req = gw
            .http
            .post(format!("{}/v1/chat/completions", gw.base))
            .bearer_auth(&key)
            .json(&chat("m", 2, false));
        if let Some(f) = fault {
            req = req.header("x-sim-fault", f);
        }
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    let holder = send(Some("hang"));
    wait_metric(&gw, "fairgate_in_flight_requests{model=\"m\"} 1").await;
    let queued = send(Some("hang"));
    wait_metric(&gw, "fairgate_queued_requests{model=\"m\"} 1").await;
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 2, false))
        .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "tenant_queue_full", "{v}");
    holder.abort();
    queued.abort();
    gw.shutdown().await;
}

async fn metrics_text(gw: &TestGateway) -> String {
    gw.http
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn wait_metric(gw: &TestGateway, line: &str) {
    for _ in 0..200 {
        if metrics_text(gw).await.contains(line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "metric `{line}` never appeared:\n{}",
        metrics_text(gw).await
    );
}

#[tokio::test]
async fn interactive_goes_before_batch_within_a_tenant_and_disconnect_frees_the_queue() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 1), &db.url).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let send = |class: &'static str, fault: Option<&'static str>| {
        let mut req = gw
            .http
            .post(format!("{}/v1/chat/completions", gw.base))
            .bearer_auth(&key)
            .header("x-fairgate-priority", class)
            .json(&chat("m", 2, false));
        if let Some(f) = fault {
            req = req.header("x-sim-fault", f);
        }
        let order = order.clone();
        tokio::spawn(async move {
            let r = req.send().await;
            order.lock().unwrap().push(class);
            r.map(|r| r.status().as_u16())
        })
    };
    let holder = send("interactive", Some("hang"));
    wait_metric(&gw, "fairgate_in_flight_requests{model=\"m\"} 1").await;
    let batch = send("batch", None);
    wait_metric(&gw, "fairgate_queued_requests{model=\"m\"} 1").await;
    // A queued client that goes away leaves the queue at once.
    let quitter = send("batch", None);
    wait_metric(&gw, "fairgate_queued_requests{model=\"m\"} 2").await;
    quitter.abort();
    wait_metric(&gw, "fairgate_queued_requests{model=\"m\"} 1").await;
    let interactive = send("interactive", None);
    wait_metric(&gw, "fairgate_queued_requests{model=\"m\"} 2").await;
    holder.abort();
    assert_eq!(interactive.await.unwrap().unwrap(), 200);
    assert_eq!(batch.await.unwrap().unwrap(), 200);
    assert_eq!(*order.lock().unwrap(), vec!["interactive", "batch"]);

    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&key)
        .header("x-fairgate-priority", "urgent")
        .json(&chat("m", 2, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "x-fairgate-priority");
    let rows = gw.wait_rows(Some("t"), 5).await;
    assert!(rows
        .iter()
        .any(|r| r["priority"] == "batch" && r["outcome"] == "ok"));
    gw.shutdown().await;
}

/// Reads a stream to the end: (data payloads, saw [DONE]).
async fn stream_events(resp: reqwest::Response) -> (Vec<Value>, bool) {
    sse_events(resp).await
}

#[tokio::test]
async fn hard_budget_cuts_a_stream_at_the_limit_then_refuses() {
    let sim = Sim::start(busy_sim(8)).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let setup = Setup::one("m", &sim.url, 8).with(|c| {
        c.tenants = vec![declared(
            "t",
            1,
            TenantPolicy {
                budgets: vec![Budget {
                    period: BudgetPeriod::Day,
                    tokens: Some(120),
                    cost: None,
                }],
                hard_cap: true,
                ..TenantPolicy::default()
            },
        )];
    });
    let gw = TestGateway::start(setup, &db.url).await;
    let (_, key) = gw.key("t", None).await;
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 400, true))
        .await;
    assert_eq!(r.status(), 200);
    let (events, done) = stream_events(r).await;
    assert!(done, "a cut stream still ends with [DONE]");
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], "budget_exceeded", "{last}");
    let content_chunks = events
        .iter()
        .filter(|e| e["choices"][0]["delta"]["content"].is_string())
        .count();
    assert!(
        content_chunks > 10 && content_chunks < 400,
        "{content_chunks}"
    );

    let rows = gw.wait_rows(Some("t"), 1).await;
    let row = &rows[0];
    assert_eq!(row["outcome"], "cut_off", "{row}");
    let total = row["prompt_tokens"].as_u64().unwrap() + row["completion_tokens"].as_u64().unwrap();
    // Cut at the first chunk over the cap: at most one token past it.
    assert!((120..=122).contains(&total), "{row}");

    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 10, true))
        .await;
    assert_eq!(r.status(), 402);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "budget_exceeded");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tenant `t`"),
        "{v}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn soft_budget_lets_the_answer_finish_and_charges_it() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let setup = Setup::one("m", &sim.url, 8).with(|c| {
        c.models[0].price = fairgate_types::Price::tokens(1_000_000, 2_000_000);
        c.tenants = vec![declared(
            "t",
            1,
            TenantPolicy {
                budgets: vec![Budget {
                    period: BudgetPeriod::Month,
                    tokens: None,
                    cost: Some(fairgate_types::Micros(100)),
                }],
                ..TenantPolicy::default()
            },
        )];
    });
    let gw = TestGateway::start(setup, &db.url).await;
    let (_, key) = gw.key("t", None).await;
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 200, true))
        .await;
    let (events, done) = stream_events(r).await;
    assert!(done);
    assert!(events.iter().all(|e| e.get("error").is_none()));
    let rows = gw.wait_rows(Some("t"), 1).await;
    assert_eq!(rows[0]["outcome"], "ok");
    assert_eq!(rows[0]["completion_tokens"], 200);
    // 1 micro per prompt token, 2 per completion token.
    let prompt = rows[0]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(rows[0]["cost"].as_u64().unwrap(), prompt + 400);
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 5, false))
        .await;
    assert_eq!(r.status(), 402);
    gw.shutdown().await;
}

#[tokio::test]
async fn tpm_limit_rejects_or_waits_for_refill_with_streams() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let limits = RateLimits {
        tpm: Some(60_000),
        ..RateLimits::default()
    };
    let setup = Setup::one("m", &sim.url, 8).with(move |c| {
        c.tenants = vec![
            declared(
                "rej",
                1,
                TenantPolicy {
                    limits,
                    on_limit: Some(OnLimit::Reject),
                    ..TenantPolicy::default()
                },
            ),
            declared(
                "wait",
                1,
                TenantPolicy {
                    limits,
                    ..TenantPolicy::default()
                },
            ),
        ];
    });
    let gw = TestGateway::start(setup, &db.url).await;
    let (_, krej) = gw.key("rej", None).await;
    let (_, kwait) = gw.key("wait", None).await;

    // 60 000 tokens per minute, ~1 000 per request: about 60 pass, then the bucket is dry.
    let mut rejected = None;
    let started = Instant::now();
    for _ in 0..200 {
        let r = gw
            .post(&krej, "/v1/chat/completions", chat("m", 990, true))
            .await;
        if r.status() == 429 {
            rejected = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
        let (_, done) = stream_events(r).await;
        assert!(done);
    }
    let r = rejected.expect("the tpm limit never refused");
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "tpm_limit_exceeded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tpm = 60000"),
        "{v}"
    );
    let elapsed = started.elapsed().as_secs_f64();
    let usage = gw.usage("rej").await;
    let served = sum(&usage, "total_tokens");
    // The bucket's capacity, plus what it refilled (1 000 tokens/s) while the loop ran, plus
    // the one request an estimate may undershoot.
    let bound = 60_000.0 + 1_000.0 * elapsed + 1_000.0;
    assert!(
        served as f64 <= bound,
        "served {served} tokens under a 60k tpm limit in {elapsed:.2}s"
    );

    // The queueing tenant waits for the refill instead of failing.
    let mut waited_ms = 0;
    for _ in 0..200 {
        let r = gw
            .post(&kwait, "/v1/chat/completions", chat("m", 990, true))
            .await;
        assert_eq!(
            r.status(),
            200,
            "a queueing tenant is never refused within its wait"
        );
        waited_ms = r.headers()["x-fairgate-queue-wait-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let (_, done) = stream_events(r).await;
        assert!(done);
        if waited_ms >= 300 {
            break;
        }
    }
    assert!(
        waited_ms >= 300,
        "the tenant never had to wait for its bucket"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn response_cache_answers_deterministic_repeats_without_the_backend() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let setup = Setup::one("m", &sim.url, 8).with(|c| c.models[0].cache = true);
    let gw = TestGateway::start(setup, &db.url).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    let mut body = chat("m", 8, false);
    body["temperature"] = json!(0);

    let first = gw.post(&key, "/v1/chat/completions", body.clone()).await;
    assert_eq!(first.headers()["x-fairgate-cache"], "miss");
    let first_body = first.text().await.unwrap();
    let before = sim.sim.stats().requests_total;
    let second = gw.post(&key, "/v1/chat/completions", body.clone()).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-fairgate-cache"], "hit");
    assert_eq!(second.text().await.unwrap(), first_body);
    assert_eq!(
        sim.sim.stats().requests_total,
        before,
        "a hit must not reach the backend"
    );

    // Non-deterministic requests and opted-out requests are not cached.
    let hot = gw
        .post(&key, "/v1/chat/completions", chat("m", 8, false))
        .await;
    assert!(hot.headers().get("x-fairgate-cache").is_none());
    let off = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&key)
        .header("x-fairgate-cache", "off")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(off.headers().get("x-fairgate-cache").is_none());

    let rows = gw.wait_rows(Some("t"), 4).await;
    let hits: Vec<&Value> = rows.iter().filter(|r| r["cache_hit"] == true).collect();
    assert_eq!(hits.len(), 1, "{rows:#?}");
    assert_eq!(hits[0]["outcome"], "ok");
    assert_eq!(
        hits[0]["completion_tokens"], 0,
        "a hit used no backend tokens"
    );
    gw.shutdown().await;
}
