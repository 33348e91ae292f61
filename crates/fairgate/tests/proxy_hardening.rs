//! Issue 10, request path: one way to read a request's model, the relay allowlist and
//! admin-only operator endpoints, header hygiene towards backends, reservations and token
//! math, usage shapes, bounded backend answers, and anonymous failures at a bounded rate.
//! Real gateway on port 0, real simulators, SQLite, HTTP only.

mod common;

use std::time::Duration;

use common::*;
use fairgate_sim::SimConfig;
use serde_json::{json, Value};

async fn start(setup: Setup) -> (TestGateway, DbHandle) {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(setup, &db.url).await;
    (gw, db)
}

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
}

/// Two models on two simulators; tenant `t` has a key scoped to model `a` only.
async fn two_models() -> (TestGateway, DbHandle, Sim, Sim, String) {
    let sa = Sim::start(SimConfig::instant("a")).await;
    let sb = Sim::start(SimConfig::instant("b")).await;
    let (ua, ub) = (sa.url.clone(), sb.url.clone());
    let mut setup = Setup::one("a", &ua, 8);
    setup.models.push(("b".into(), vec![(ub, 8)]));
    let (gw, db) = start(setup).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", Some(vec!["a"])).await;
    (gw, db, sa, sb, key)
}

#[tokio::test]
async fn scope_bypass_through_query_and_body_is_ambiguous() {
    let (gw, _db, sa, sb, key) = two_models().await;
    // The reported attempts: `?model=a` for the scope check, `{"model":"b"}` for the backend.
    for path in ["/v1/score", "/v1/rerank", "/v1/audio/speech"] {
        let resp = gw
            .http
            .post(format!("{}{path}?model=a", gw.base))
            .bearer_auth(&key)
            .json(&json!({"model": "b", "text_1": "x", "text_2": "y", "query": "q", "documents": ["d"], "input": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (400, "ambiguous_model".into()),
            "{path}"
        );
    }
    let rows = gw.wait_rows(Some("t"), 3).await;
    assert_eq!(rows.len(), 3, "one row per refused request: {rows:#?}");
    for r in &rows {
        assert_eq!(r["status"], 400);
        assert_eq!(r["error_class"], "ambiguous_model");
    }

    // Other ways to say two things at once.
    let post = |path: &str, ctype: &str, body: Vec<u8>| {
        gw.http
            .post(format!("{}{path}", gw.base))
            .bearer_auth(&key)
            .header("content-type", ctype.to_owned())
            .body(body)
    };
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("/v1/score", "application/json", br#"{"model":"a","model":"b"}"#.to_vec()),
        ("/v1/score", "application/json", br#"{"model":"a","mod\u0065l":"b"}"#.to_vec()),
        ("/v1/score?model=a&model=a", "application/json", br#"{"text_1":"x"}"#.to_vec()),
        ("/v1/score", "text/plain", br#"  {"model":"b"}"#.to_vec()),
        (
            "/v1/audio/transcriptions",
            "multipart/form-data; boundary=XX",
            b"--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nb\r\n--XX--\r\n".to_vec(),
        ),
        (
            "/v1/audio/transcriptions?model=a",
            "multipart/form-data; boundary=XX",
            b"--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nb\r\n--XX--\r\n".to_vec(),
        ),
        (
            "/v1/chat/completions",
            "application/json",
            br#"{"model":"a","messages":[{"role":"user","content":"x"}],"model":"b"}"#.to_vec(),
        ),
        (
            "/v1/chat/completions?model=b",
            "application/json",
            br#"{"model":"a","messages":[{"role":"user","content":"x"}]}"#.to_vec(),
        ),
    ];
    for (path, ctype, body) in cases {
        let resp = post(path, ctype, body).send().await.unwrap();
        assert_eq!(
            error_code(resp).await,
            (400, "ambiguous_model".into()),
            "{path} {ctype}"
        );
    }
    // A byte-order mark before JSON is refused, as the backend's parser refuses it.
    let resp = post(
        "/v1/score",
        "application/json",
        b"\xEF\xBB\xBF{\"model\":\"a\"}".to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(error_code(resp).await, (400, "invalid_json".into()));
    assert!(
        seen_paths(&sa).is_empty() && seen_paths(&sb).is_empty(),
        "nothing reached a backend"
    );

    // The query alone names the model: allowed, and the body sent on carries it.
    let resp = post(
        "/v1/score?model=a",
        "application/json",
        br#"{"text_1":"x","text_2":"y"}"#.to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "a", "the body sent on names the model: {v}");
    assert_eq!(seen_paths(&sa), vec!["/v1/score?model=a".to_owned()]);
    // And the scope still holds for the body's model.
    let resp = post(
        "/v1/score",
        "application/json",
        br#"{"model":"b"}"#.to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(error_code(resp).await, (403, "model_not_allowed".into()));
    assert!(seen_paths(&sb).is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn relayed_paths_follow_the_allowlist_and_operator_paths_need_the_admin_token() {
    let s1 = Sim::start(SimConfig::instant("m")).await;
    let s2 = Sim::start(SimConfig::instant("m")).await;
    let (gw, _db) = start(Setup::many("m", &[&s1.url, &s2.url], 8)).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;

    for path in [
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
        "/reset_prefix_cache",
        "/sleep",
    ] {
        let resp = gw
            .http
            .post(format!("{}{path}", gw.base))
            .bearer_auth(&key)
            .json(&json!({"lora_name": "x", "lora_path": "/tmp/x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(resp).await, (403, "admin_only".into()), "{path}");
    }
    // Not on the allowlist: 404, never relayed.
    let resp = gw
        .post(&key, "/v1/fine_tuning/jobs", json!({"model": "m"}))
        .await;
    assert_eq!(error_code(resp).await, (404, "unknown_url".into()));
    let resp = gw.post(&key, "/v1/responses/resp_123", json!({})).await;
    assert_eq!(error_code(resp).await, (404, "unknown_url".into()));
    assert!(seen_paths(&s1).is_empty() && seen_paths(&s2).is_empty());
    let rows = gw.wait_rows(Some("t"), 6).await;
    assert_eq!(rows.len(), 6);

    // With the admin token: relayed to every backend of the model, without the token.
    let resp = gw
        .http
        .post(format!("{}/v1/load_lora_adapter?model=m", gw.base))
        .bearer_auth(ADMIN)
        .json(&json!({"lora_name": "x", "lora_path": "/tmp/x"}))
        .send()
        .await
        .unwrap();
    // The simulator has no such endpoint: its own 404, from the first backend.
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-fairgate-backends"], "0/1");
    let resp = gw
        .http
        .post(format!("{}/reset_prefix_cache", gw.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let seen: Vec<_> = [&s1, &s2]
        .iter()
        .flat_map(|s| s.sim.recent_requests())
        .collect();
    assert!(seen
        .iter()
        .any(|r| r.path_and_query == "/v1/load_lora_adapter?model=m"));
    assert!(seen
        .iter()
        .any(|r| r.path_and_query == "/reset_prefix_cache"));
    for r in &seen {
        assert!(
            !r.headers.iter().any(|(k, _)| k == "authorization"),
            "the admin token must not reach a backend: {r:?}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn operator_calls_reach_every_backend_of_the_model() {
    // Backends that answer 200 for the operator path: the simulator's `/ping` accepts POST.
    let s1 = Sim::start(SimConfig::instant("m")).await;
    let s2 = Sim::start(SimConfig::instant("m")).await;
    let (gw, _db) = start(
        Setup::many("m", &[&s1.url, &s2.url], 8)
            .with(|c| c.relay.operator_paths.push("/ping".into())),
    )
    .await;
    let resp = gw
        .http
        .post(format!("{}/ping", gw.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-fairgate-backends"], "2/2");
    assert_eq!(seen_paths(&s1), vec!["/ping".to_owned()]);
    assert_eq!(seen_paths(&s2), vec!["/ping".to_owned()]);
    let rows = gw.wait_rows(None, 1).await;
    let row = rows.iter().find(|r| r["endpoint"] == "/ping").unwrap();
    assert_eq!(row["status"], 200);
    assert_eq!(row["attempts"], 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn client_credentials_never_reach_the_backend() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let (gw, _db) = start(Setup::one("m", &sim.url, 8)).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    let resp = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&key)
        .header("cookie", "fg_session=secret-session; other=1")
        .header("x-api-key", "another-secret")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-fairgate-priority", "batch")
        .header("x-trace", "kept")
        .json(&chat("m", 4, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("set-cookie").is_none());
    let seen = sim.sim.recent_requests();
    let r = seen
        .iter()
        .find(|r| r.path_and_query == "/v1/chat/completions")
        .unwrap();
    let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
    for banned in [
        "cookie",
        "authorization",
        "x-api-key",
        "proxy-authorization",
        "x-fairgate-priority",
    ] {
        assert!(
            !names.contains(&banned),
            "{banned} reached the backend: {names:?}"
        );
    }
    assert!(names.contains(&"x-trace"), "other headers pass: {names:?}");
    assert!(names.contains(&"x-request-id"));
    assert!(!r.headers.iter().any(|(_, v)| v.contains("secret")));
    gw.shutdown().await;
}

#[tokio::test]
async fn reservations_count_n_and_clamp_to_the_context_and_never_overflow() {
    let sim = Sim::start(SimConfig {
        max_model_len: 4096,
        ..SimConfig::instant("m")
    })
    .await;
    let (gw, _db) = start(Setup::one("m", &sim.url, 8)).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;

    // n = 4: four sequences of up to 100 tokens (the simulator refuses n > 1; the reservation
    // is what is checked).
    let mut body = chat("m", 100, false);
    body["n"] = json!(4);
    gw.post(&key, "/v1/chat/completions", body).await;
    let rows = gw.wait_rows(Some("t"), 1).await;
    let prompt_estimate = rows[0]["reserved_tokens"].as_u64().unwrap() - 400;
    assert!(prompt_estimate > 0 && prompt_estimate < 100, "{rows:#?}");

    // max_tokens = u64::MAX from two clients at once, streamed and not: no overflow (this test
    // runs a debug build, where overflow panics and the connection would drop).
    for stream in [false, true] {
        let huge = chat("m", u64::MAX, stream);
        let (a, b) = tokio::join!(
            gw.post(&key, "/v1/chat/completions", huge.clone()),
            gw.post(&key, "/v1/chat/completions", huge.clone()),
        );
        assert_eq!(
            a.status(),
            400,
            "the backend refuses what does not fit its context"
        );
        assert_eq!(b.status(), 400);
    }
    // Once the context length is learnt (in the background), reservations are clamped to it:
    // prompt estimate + (4096 - prompt estimate).
    let mut clamped = false;
    for _ in 0..100 {
        gw.post(&key, "/v1/chat/completions", chat("m", u64::MAX, false))
            .await;
        let rows = gw.requests(Some("t")).await;
        if rows.iter().any(|r| r["reserved_tokens"] == 4096) {
            clamped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(clamped, "{:#?}", gw.requests(Some("t")).await);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_non_stream_request_is_charged_its_prompt() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let (gw, _db) = start(Setup::one("m", &sim.url, 8)).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    let short = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let err = short
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&key)
        .header("x-sim-fault", "hang")
        .json(&chat("m", 16, false))
        .send()
        .await;
    assert!(err.is_err(), "the backend hangs; the client gives up");
    let rows = gw.wait_rows(Some("t"), 1).await;
    let r = &rows[0];
    assert_eq!(r["outcome"], "cancelled");
    assert_eq!(r["usage_source"], "estimated");
    let prompt = r["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    assert_eq!(r["reserved_tokens"].as_u64().unwrap(), prompt + 16);
    // Fair share kept the prompt's charge: the tenant's service is not zero.
    let metrics = gw
        .http
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let service: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("fairgate_tenant_weighted_service_total") && l.contains("tenant=\"t\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(service > 0.0, "{metrics}");
    gw.shutdown().await;
}

#[tokio::test]
async fn responses_api_usage_is_accounted_streamed_and_not() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let (gw, _db) = start(Setup::one("m", &sim.url, 8)).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    let input = "Tell me about fair queueing in one line.";
    let expected_input = fairgate_sim::count_tokens(input) as u64;
    let resp = gw
        .post(
            &key,
            "/v1/responses",
            json!({"model": "m", "input": input, "max_output_tokens": 5}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["usage"]["output_tokens"], 5);
    let resp = gw
        .post(
            &key,
            "/v1/responses",
            json!({"model": "m", "input": input, "max_output_tokens": 7, "stream": true}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("response.completed"));
    let rows = gw.wait_rows(Some("t"), 2).await;
    let mut got: Vec<(bool, u64, u64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["stream"].as_bool().unwrap(),
                r["prompt_tokens"].as_u64().unwrap(),
                r["completion_tokens"].as_u64().unwrap(),
                r["usage_source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (false, expected_input, 5, "upstream".into()),
            (true, expected_input, 7, "upstream".into()),
        ],
        "both carry the backend's usage"
    );
    assert!(rows.iter().all(|r| r["outcome"] == "ok"), "{rows:#?}");
    // A relayed JSON body reserves a rough prompt estimate (bytes / 4).
    assert!(rows
        .iter()
        .all(|r| r["reserved_tokens"].as_u64().unwrap() > 0));
    gw.shutdown().await;
}

#[tokio::test]
async fn an_oversized_backend_answer_is_a_502() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let (gw, _db) = start(Setup::one("m", &sim.url, 8).with(|c| {
        c.upstream.max_response_bytes = 1024;
        c.upstream.response_memory_bytes = 4096;
    }))
    .await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    let small = gw
        .post(&key, "/v1/chat/completions", chat("m", 2, false))
        .await;
    assert_eq!(small.status(), 200);
    let big = gw
        .post(&key, "/v1/chat/completions", chat("m", 600, false))
        .await;
    assert_eq!(
        error_code(big).await,
        (502, "upstream_response_too_large".into())
    );
    let rows = gw.wait_rows(Some("t"), 2).await;
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .any(|r| r["error_class"] == "upstream_response_too_large"));
    // The budget was given back: many small answers in a row still fit in 4 KiB.
    for _ in 0..20 {
        let r = gw
            .post(&key, "/v1/chat/completions", chat("m", 2, false))
            .await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn anonymous_failures_are_rows_at_a_bounded_rate() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let (gw, _db) = start(Setup::one("m", &sim.url, 8).with(|c| {
        c.relay.anonymous_rows_per_minute = 5;
        c.relay.anonymous_summary_s = 1;
    }))
    .await;
    // A long path is stored cut short.
    let long = format!("/{}", "é".repeat(600));
    let resp = gw
        .http
        .get(format!("{}{long}", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (404, "unknown_url".into()));
    for i in 0..30 {
        let resp = gw
            .http
            .get(format!("{}/nope/{i}", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let resp = gw
            .http
            .post(format!("{}/v1/chat/completions", gw.base))
            .bearer_auth("sk-not-a-key")
            .json(&chat("m", 1, false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // 5 rows for the address (the long path, then 404 and 401 in turn), then summary rows
    // per status with the number of requests each stands for.
    let summed = |rows: &[Value], status: u64| -> u64 {
        rows.iter()
            .filter(|r| r["endpoint"] == "anonymous:suppressed" && r["status"] == status)
            .map(|r| r["attempts"].as_u64().unwrap())
            .sum()
    };
    let mut rows = Vec::new();
    for _ in 0..200 {
        rows = gw.requests(None).await;
        if summed(&rows, 404) + summed(&rows, 401) >= 56 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let own = |status: u64| {
        rows.iter()
            .filter(|r| r["status"] == status && r["endpoint"] != "anonymous:suppressed")
            .count()
    };
    assert_eq!(own(404), 3, "{rows:#?}");
    assert_eq!(own(401), 2);
    assert_eq!(summed(&rows, 404), 28);
    assert_eq!(summed(&rows, 401), 28);
    for r in rows
        .iter()
        .filter(|r| r["endpoint"] == "anonymous:suppressed")
    {
        assert_eq!(r["error_class"], "suppressed");
    }
    let longest = rows
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap().len())
        .max()
        .unwrap();
    assert!(longest <= 256, "{longest}");
    let metrics = gw
        .http
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("fairgate_anonymous_rejections_total{reason=\"unknown_route\"} 28"),
        "{metrics}"
    );
    assert!(metrics.contains("fairgate_anonymous_rejections_total{reason=\"unauthenticated\"} 28"));
    gw.shutdown().await;
}
