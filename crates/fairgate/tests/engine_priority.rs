//! Engine cooperation (issue 12, part 2): what reaches a backend's `priority` field. An engine
//! that runs vLLM's priority policy gets each request's fair-share position (or, when the key
//! may set it, the client's own value); any other engine never sees the field. Checked twice:
//! with a recording backend that shows the exact body, and with the real simulator, which
//! refuses a non-zero priority under FCFS exactly as vLLM does.

mod common;

use std::sync::{Arc, Mutex};

use axum::routing::post;
use axum::Json;
use common::*;
use fairgate::config::SchedulingPolicy;
use fairgate_sim::SimConfig;
use reqwest::Method;
use serde_json::{json, Value};

/// A backend that records every body it is sent and answers a fixed chat completion.
async fn recorder() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let log = log.clone();
            async move {
                let model = body["model"].clone();
                log.lock().unwrap().push(body);
                Json(json!({
                    "id": "x", "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "ok"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn body(model: &str, priority: Option<Value>) -> Value {
    let mut b = json!({"model": model, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hi"}]});
    if let Some(p) = priority {
        b["priority"] = p;
    }
    b
}

async fn key_with(gw: &TestGateway, policy: Value) -> String {
    let (s, v) = gw
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"tenant": "t", "name": "k", "policy": policy})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["key"].as_str().unwrap().to_owned()
}

async fn send(gw: &TestGateway, key: &str, b: Value, class: Option<&str>) -> (u16, Value) {
    let mut req = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(key)
        .json(&b);
    if let Some(c) = class {
        req = req.header("x-fairgate-priority", c);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The last body a recorder got, and its `priority` member (`None`: absent).
fn last_priority(seen: &Arc<Mutex<Vec<Value>>>) -> Option<Value> {
    let seen = seen.lock().unwrap();
    let last = seen.last().expect("the backend got the request");
    last.get("priority").cloned()
}

#[tokio::test]
async fn the_priority_field_follows_the_backend_policy_and_the_key() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let (fcfs_url, fcfs_seen) = recorder().await;
    let (prio_url, prio_seen) = recorder().await;
    let setup = Setup {
        models: vec![
            ("fcfs".into(), vec![(fcfs_url, 4)]),
            ("prio".into(), vec![(prio_url, 4)]),
        ],
        ..Setup::one("fcfs", "http://unused", 4)
    }
    .with(|c| {
        let prio = c.models.iter_mut().find(|m| m.name == "prio").unwrap();
        prio.backends[0].scheduling_policy = SchedulingPolicy::Priority;
    });
    let gw = TestGateway::start(setup, &db.url).await;
    gw.tenant("t", 1).await;
    let plain = key_with(&gw, json!({})).await;
    let trusted = key_with(&gw, json!({"engine_priority": true})).await;

    // An FCFS engine never sees the field, whoever sends it.
    for key in [&plain, &trusted] {
        let (s, v) = send(&gw, key, body("fcfs", Some(json!(5))), None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(last_priority(&fcfs_seen), None);
    }
    let (s, _) = send(&gw, &plain, body("fcfs", None), None).await;
    assert_eq!(s, 200);
    assert_eq!(last_priority(&fcfs_seen), None);

    // A priority engine gets the fair-share position: a tenant alone, with nothing else in
    // flight, is below its share (0); the client's own value is replaced...
    let (s, v) = send(&gw, &plain, body("prio", Some(json!(-100))), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(last_priority(&prio_seen), Some(json!(0)));
    let (s, _) = send(&gw, &plain, body("prio", None), None).await;
    assert_eq!(s, 200);
    assert_eq!(last_priority(&prio_seen), Some(json!(0)));
    // ...batch-class work comes after every interactive position...
    let (s, _) = send(&gw, &plain, body("prio", None), Some("batch")).await;
    assert_eq!(s, 200);
    assert_eq!(last_priority(&prio_seen), Some(json!(10)));
    // ...and a key allowed to set it passes the client's value through.
    let (s, _) = send(&gw, &trusted, body("prio", Some(json!(-100))), None).await;
    assert_eq!(s, 200);
    assert_eq!(last_priority(&prio_seen), Some(json!(-100)));
    let (s, _) = send(&gw, &trusted, body("prio", None), None).await;
    assert_eq!(s, 200);
    assert_eq!(last_priority(&prio_seen), Some(json!(0)));

    // A priority that is not an integer is the client's error, recorded like every request.
    let before = prio_seen.lock().unwrap().len();
    let (s, v) = send(&gw, &trusted, body("prio", Some(json!("high"))), None).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "priority", "{v}");
    assert_eq!(
        prio_seen.lock().unwrap().len(),
        before,
        "never sent upstream"
    );
    let rows = gw.wait_rows(Some("t"), 9).await;
    assert!(
        rows.iter().any(|r| r["error_class"] == "invalid_type"),
        "{rows:?}"
    );
    gw.shutdown().await;
    db.cleanup().await;
}

/// The simulator refuses a non-zero priority under FCFS, as vLLM does: through the gateway the
/// client's field never reaches it. Under the priority policy it takes the gateway's value.
#[tokio::test]
async fn real_engines_accept_what_the_gateway_sends() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let fcfs = Sim::start(SimConfig::instant("fcfs")).await;
    let prio = Sim::start(SimConfig {
        scheduling_policy: fairgate_sim::SchedulingPolicy::Priority,
        ..SimConfig::instant("prio")
    })
    .await;
    // Directly, the FCFS engine refuses the field.
    let direct = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", fcfs.url))
        .json(&body("fcfs", Some(json!(5))))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status().as_u16(), 400);
    let setup = Setup {
        models: vec![
            ("fcfs".into(), vec![(fcfs.url.clone(), 4)]),
            ("prio".into(), vec![(prio.url.clone(), 4)]),
        ],
        ..Setup::one("fcfs", &fcfs.url, 4)
    }
    .with(|c| {
        let prio = c.models.iter_mut().find(|m| m.name == "prio").unwrap();
        prio.backends[0].scheduling_policy = SchedulingPolicy::Priority;
    });
    let gw = TestGateway::start(setup, &db.url).await;
    gw.tenant("t", 1).await;
    let trusted = key_with(&gw, json!({"engine_priority": true})).await;
    for model in ["fcfs", "prio"] {
        let (s, v) = send(&gw, &trusted, body(model, Some(json!(5))), None).await;
        assert_eq!(s, 200, "{model}: {v}");
        let (s, v) = send(&gw, &trusted, body(model, None), Some("batch")).await;
        assert_eq!(s, 200, "{model}: {v}");
    }
    gw.shutdown().await;
    db.cleanup().await;
}

/// `engine_max_seqs` is refused where it would mean nothing or less than `max_in_flight`.
#[tokio::test]
async fn engine_max_seqs_needs_the_priority_policy() {
    let mut b = fairgate::config::BackendConfig::new("http://127.0.0.1:1", 8);
    b.engine_max_seqs = Some(12);
    let (field, msg) = b.validate_engine().unwrap_err();
    assert_eq!(field, "engine_max_seqs");
    assert!(msg.contains("priority"), "{msg}");
    b.scheduling_policy = SchedulingPolicy::Priority;
    assert!(b.validate_engine().is_ok());
    assert_eq!(b.engine_extra(), 4);
    b.engine_max_seqs = Some(4);
    assert!(b.validate_engine().unwrap_err().1.contains("max_in_flight"));
}
