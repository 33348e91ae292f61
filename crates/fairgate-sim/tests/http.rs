//! HTTP-level tests over real sockets with reqwest: vLLM wire shapes, errors, fault injection,
//! determinism, the metrics exposition, LoRA adapters and the health switch.

mod common;

use std::time::Duration;

use common::{chat_body, serve, sse, streamed_text};
use fairgate_sim::{SchedulingPolicy, SimConfig, FAULT_HEADER};
use serde_json::{json, Value};

fn instant() -> SimConfig {
    SimConfig::instant("sim")
}

/// Small real latencies, so the engine path runs over HTTP without slowing the suite.
fn engine() -> SimConfig {
    SimConfig {
        model: "sim".into(),
        prefill_overhead: Duration::from_millis(1),
        prefill_per_token: Duration::from_micros(1),
        decode_step_base: Duration::from_micros(500),
        decode_step_per_seq: Duration::from_micros(10),
        ..SimConfig::default()
    }
}

async fn post(url: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn models_list_has_vllm_shape() {
    let s = serve(SimConfig {
        max_model_len: 4096,
        ..instant()
    })
    .await;
    let v: Value = reqwest::get(s.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let m = &v["data"][0];
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(m["id"], "sim");
    assert_eq!(m["object"], "model");
    assert_eq!(m["owned_by"], "vllm");
    assert_eq!(m["root"], "sim");
    assert_eq!(m["parent"], Value::Null);
    assert_eq!(m["max_model_len"], 4096);
    assert!(m["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(m["permission"][0]["object"], "model_permission");
}

#[tokio::test]
async fn chat_non_stream_shape_and_usage() {
    for cfg in [instant(), engine()] {
        let s = serve(cfg).await;
        let resp = post(
            &s.url("/v1/chat/completions"),
            &chat_body("Hello there, simulator!", 7, false),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v: Value = resp.json().await.unwrap();
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "sim");
        assert!(v["created"].is_u64());
        let c = &v["choices"][0];
        assert_eq!(c["index"], 0);
        assert_eq!(c["message"]["role"], "assistant");
        assert_eq!(c["logprobs"], Value::Null);
        assert_eq!(c["finish_reason"], "length");
        assert_eq!(c["stop_reason"], Value::Null);
        let text = c["message"]["content"].as_str().unwrap();
        assert_eq!(text.split_whitespace().count(), 7);
        assert!(text.ends_with(' '));
        // "Hello there, simulator!" = Hell o " ther" e , " simu" lato r ! = 9 tokens,
        // role "user" = 1, framing 3, assistant prompt 3.
        let u = &v["usage"];
        assert_eq!(u["prompt_tokens"], 16);
        assert_eq!(u["completion_tokens"], 7);
        assert_eq!(u["total_tokens"], 23);
        assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
        let st = s.sim.stats();
        assert_eq!(st.prompt_tokens_total, 16);
        assert_eq!(st.generation_tokens_total, 7);
        assert_eq!(st.requests_total, 1);
        assert_eq!((st.running, st.waiting, st.kv_tokens_used), (0, 0, 0));
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn chat_stream_with_and_without_include_usage() {
    for cfg in [instant(), engine()] {
        let s = serve(cfg).await;
        // Without include_usage: no usage field anywhere, no usage chunk.
        let resp = post(&s.url("/v1/chat/completions"), &chat_body("hi", 4, true)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let body = resp.text().await.unwrap();
        for ev in body.split("\n\n").filter(|e| !e.is_empty()) {
            let json = ev.strip_prefix("data: ").unwrap();
            assert!(
                !json.contains("\": ") && !json.contains(", \""),
                "compact JSON: {json}"
            );
        }
        let (events, done) = sse(&body);
        assert!(done);
        assert_eq!(events.len(), 5, "role chunk + 4 token chunks");
        assert_eq!(
            events[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        for e in &events {
            assert!(e.get("usage").is_none());
            assert_eq!(e["object"], "chat.completion.chunk");
            assert_eq!(e["id"], events[0]["id"]);
        }
        for e in &events[1..4] {
            assert_eq!(e["choices"][0]["finish_reason"], Value::Null);
            let w = e["choices"][0]["delta"]["content"].as_str().unwrap();
            assert!(w.ends_with(' ') && w.trim().len() == w.len() - 1);
        }
        assert_eq!(events[4]["choices"][0]["finish_reason"], "length");

        // With include_usage: `usage: null` on every chunk, then a choices-less usage chunk.
        let mut body = chat_body("hi", 4, true);
        body["stream_options"] = json!({"include_usage": true});
        let text = post(&s.url("/v1/chat/completions"), &body)
            .await
            .text()
            .await
            .unwrap();
        let (events, done) = sse(&text);
        assert!(done);
        assert_eq!(events.len(), 6);
        for e in &events[..5] {
            assert_eq!(e["usage"], Value::Null);
            assert!(e.get("usage").is_some());
        }
        let last = &events[5];
        assert_eq!(last["choices"], json!([]));
        assert_eq!(
            last["usage"],
            json!({"prompt_tokens":8,"total_tokens":12,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":0}})
        );
        assert_eq!(streamed_text(&events).split_whitespace().count(), 4);
        let st = s.sim.stats();
        assert_eq!(st.prompt_tokens_total, 16);
        assert_eq!(st.generation_tokens_total, 8);
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn completions_stream_and_non_stream() {
    for cfg in [instant(), engine()] {
        let s = serve(cfg).await;
        let body = json!({"model":"sim","prompt":"Once upon a time","max_tokens":3,"stream":true,
                          "stream_options":{"include_usage":true}});
        let text = post(&s.url("/v1/completions"), &body)
            .await
            .text()
            .await
            .unwrap();
        let (events, done) = sse(&text);
        assert!(done);
        assert_eq!(events.len(), 4);
        for e in &events[..3] {
            assert_eq!(e["object"], "text_completion");
            assert!(e["id"].as_str().unwrap().starts_with("cmpl-"));
            assert!(e["choices"][0]["text"].as_str().unwrap().ends_with(' '));
            assert_eq!(e["usage"], Value::Null);
        }
        assert_eq!(events[2]["choices"][0]["finish_reason"], "length");
        // "Once upon a time" = Once, " upon", " a", " time"
        assert_eq!(events[3]["usage"]["prompt_tokens"], 4);
        assert_eq!(events[3]["usage"]["completion_tokens"], 3);

        let v: Value = post(
            &s.url("/v1/completions"),
            &json!({"model":"sim","prompt":[1,2,3,4,5],"max_tokens":2}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(
            v["choices"][0]["text"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .count(),
            2
        );
        assert_eq!(v["usage"]["prompt_tokens"], 5);
        s.shutdown().await.unwrap();
    }
}

fn continuous(mut body: Value) -> Value {
    body["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": true});
    body
}

/// `"usage":{...}` as the simulator writes it (vLLM's field order).
fn usage_json(prompt: u64, completion: u64) -> String {
    format!(
        r#""usage":{{"prompt_tokens":{prompt},"total_tokens":{},"completion_tokens":{completion},"prompt_tokens_details":{{"cached_tokens":0}}}}"#,
        prompt + completion
    )
}

#[tokio::test]
async fn continuous_usage_stats_exact_bytes() {
    for cfg in [instant(), engine()] {
        let s = serve(cfg).await;
        // Chat: "hi" is an 8-token prompt. The role chunk counts 0 completion tokens.
        let body = continuous(chat_body("hi", 2, true));
        let text = post(&s.url("/v1/chat/completions"), &body)
            .await
            .text()
            .await
            .unwrap();
        let (events, done) = sse(&text);
        assert!(done);
        let id = events[0]["id"].as_str().unwrap();
        let created = events[0]["created"].as_u64().unwrap();
        let word = |i: usize| {
            events[i]["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
        };
        let env = format!(
            r#"{{"id":"{id}","object":"chat.completion.chunk","created":{created},"model":"sim","choices":"#
        );
        let expected = [
            format!(
                r#"{env}[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],{}}}"#,
                usage_json(8, 0)
            ),
            format!(
                r#"{env}[{{"index":0,"delta":{{"content":"{}"}},"logprobs":null,"finish_reason":null}}],{}}}"#,
                word(1),
                usage_json(8, 1)
            ),
            format!(
                r#"{env}[{{"index":0,"delta":{{"content":"{}"}},"logprobs":null,"finish_reason":"length","stop_reason":null}}],{}}}"#,
                word(2),
                usage_json(8, 2)
            ),
            format!(r#"{env}[],{}}}"#, usage_json(8, 2)),
            "[DONE]".to_owned(),
        ]
        .map(|e| format!("data: {e}\n\n"))
        .concat();
        assert_eq!(text, expected);

        // Completions: "Once upon a time" is a 4-token prompt.
        let body = continuous(
            json!({"model":"sim","prompt":"Once upon a time","max_tokens":2,"stream":true}),
        );
        let text = post(&s.url("/v1/completions"), &body)
            .await
            .text()
            .await
            .unwrap();
        let (events, _) = sse(&text);
        let id = events[0]["id"].as_str().unwrap();
        let created = events[0]["created"].as_u64().unwrap();
        let word = |i: usize| events[i]["choices"][0]["text"].as_str().unwrap();
        let env = format!(
            r#"{{"id":"{id}","object":"text_completion","created":{created},"model":"sim","choices":"#
        );
        let expected = [
            format!(
                r#"{env}[{{"index":0,"text":"{}","logprobs":null,"finish_reason":null,"stop_reason":null}}],{}}}"#,
                word(0),
                usage_json(4, 1)
            ),
            format!(
                r#"{env}[{{"index":0,"text":"{}","logprobs":null,"finish_reason":"length","stop_reason":null}}],{}}}"#,
                word(1),
                usage_json(4, 2)
            ),
            format!(r#"{env}[],{}}}"#, usage_json(4, 2)),
            "[DONE]".to_owned(),
        ]
        .map(|e| format!("data: {e}\n\n"))
        .concat();
        assert_eq!(text, expected);
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn continuous_usage_counts_up_to_max_tokens_and_matches_the_counters() {
    for cfg in [instant(), engine()] {
        let s = serve(cfg).await;
        let text = post(
            &s.url("/v1/chat/completions"),
            &continuous(chat_body("count with me", 7, true)),
        )
        .await
        .text()
        .await
        .unwrap();
        let (events, done) = sse(&text);
        assert!(done);
        assert_eq!(events.len(), 1 + 7 + 1, "role, 7 tokens, usage");
        for (k, e) in events[..8].iter().enumerate() {
            assert_eq!(e["usage"]["completion_tokens"], k as u64, "chunk {k}");
            assert_eq!(
                e["usage"]["prompt_tokens"],
                events[8]["usage"]["prompt_tokens"]
            );
        }
        let last_token = &events[7];
        assert_eq!(last_token["choices"][0]["finish_reason"], "length");
        assert_eq!(last_token["usage"], events[8]["usage"]);
        assert_eq!(events[8]["choices"], json!([]));
        let st = s.sim.stats();
        assert_eq!(st.generation_tokens_total, 7);
        assert_eq!(
            st.prompt_tokens_total,
            events[8]["usage"]["prompt_tokens"].as_u64().unwrap()
        );

        // Without include_usage, continuous_usage_stats does nothing (as in vLLM).
        for opts in [
            json!({"continuous_usage_stats": true}),
            json!({"include_usage": false, "continuous_usage_stats": true}),
        ] {
            let mut body = chat_body("hi", 3, true);
            body["stream_options"] = opts;
            let text = post(&s.url("/v1/chat/completions"), &body)
                .await
                .text()
                .await
                .unwrap();
            let (events, done) = sse(&text);
            assert!(done);
            assert_eq!(events.len(), 4, "role + 3 tokens, no usage chunk");
            assert!(events.iter().all(|e| e.get("usage").is_none()), "{text}");
        }
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn embeddings_are_deterministic_unit_vectors() {
    let s = serve(SimConfig {
        embedding_dim: 8,
        ..instant()
    })
    .await;
    let body = json!({"model":"sim","input":["hello world","hello world","other"]});
    let v: Value = post(&s.url("/v1/embeddings"), &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "sim");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let vecs: Vec<Vec<f64>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    for e in &vecs {
        assert_eq!(e.len(), 8);
        let norm: f64 = e.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-3);
    }
    assert_eq!(vecs[0], vecs[1]);
    assert_ne!(vecs[0], vecs[2]);
    // "hello world" = hell o " worl" d (twice), "other" = othe r.
    assert_eq!(v["usage"]["prompt_tokens"], 10);
    assert_eq!(v["usage"]["total_tokens"], 10);

    let b64: Value = post(
        &s.url("/v1/embeddings"),
        &json!({"model":"sim","input":"hello world","encoding_format":"base64"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(b64["data"][0]["embedding"].as_str().unwrap().len(), 44); // 32 bytes
    let st = s.sim.stats();
    assert_eq!(st.prompt_tokens_total, 14);
    assert_eq!(st.generation_tokens_total, 0);
    assert_eq!(st.requests_total, 2);
}

async fn error_of(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], status);
    assert_eq!(v["error"]["param"], Value::Null);
    assert!(v["error"]["message"].is_string());
    v
}

#[tokio::test]
async fn error_shapes() {
    let s = serve(SimConfig {
        max_model_len: 64,
        ..instant()
    })
    .await;
    let client = reqwest::Client::new();
    let chat = s.url("/v1/chat/completions");

    let malformed = client
        .post(&chat)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let v = error_of(malformed, 400).await;
    assert_eq!(v["error"]["type"], "BadRequestError");

    for bad in [
        json!({"model":"sim"}),
        json!({"model":"sim","messages":"hi"}),
        json!({"model":"sim","messages":[{"role":"user","content":"x"}],"max_tokens":"ten"}),
        json!({"model":"sim","messages":[{"role":"user","content":"x"}],"n":2}),
        json!({"model":"sim","messages":[{"role":"user","content":"x"}],"max_tokens":0}),
        json!({"model":"sim","messages":[{"role":"user","content":"x"}],"max_tokens":100}),
        json!({"model":"sim","messages":[{"role":"user","content":"x ".repeat(100)}]}),
        json!({"model":"sim","messages":[{"role":"user","content":"x"}],"stream":true,
               "stream_options":{"include_usage":true,"continuous_usage_stats":"yes"}}),
        json!({"model":"sim","messages":[{"role":"user","content":"x"}],
               "stream_options":{"continuous_usage_stats":true}}),
    ] {
        let v = error_of(post(&chat, &bad).await, 400).await;
        assert_eq!(v["error"]["type"], "BadRequestError", "{bad}");
    }
    let v = error_of(
        post(&s.url("/v1/completions"), &json!({"model":"sim"})).await,
        400,
    )
    .await;
    assert!(v["error"]["message"].as_str().unwrap().contains("prompt"));

    let v = error_of(
        post(&chat, &json!({"model":"nope","messages":[]})).await,
        400,
    )
    .await;
    assert_eq!(v["error"]["type"], "BadRequestError", "empty messages");
    let v = error_of(
        post(
            &chat,
            &json!({"model":"nope","messages":[{"role":"user","content":"x"}]}),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(v["error"]["type"], "NotFoundError");
    assert_eq!(v["error"]["message"], "The model `nope` does not exist.");

    let v = error_of(
        client.get(s.url("/no/such/path")).send().await.unwrap(),
        404,
    )
    .await;
    assert_eq!(v["error"]["type"], "NotFoundError");

    let bad_fault = client
        .post(&chat)
        .header(FAULT_HEADER, "explode")
        .json(&chat_body("x", 1, false))
        .send()
        .await
        .unwrap();
    error_of(bad_fault, 400).await;

    let st = s.sim.stats();
    assert_eq!(st.requests_total, 0, "rejected requests count nothing");
    assert_eq!(st.prompt_tokens_total, 0);
}

#[tokio::test]
async fn priority_field_is_validated_like_vllm() {
    let chat = |priority: Value| {
        let mut b = chat_body("x", 2, false);
        b["priority"] = priority;
        b
    };
    let completion =
        |priority: Value| json!({"model":"sim","prompt":"x","max_tokens":2,"priority":priority});
    // Engine (fcfs, the default) and fast path validate alike.
    for cfg in [engine(), instant()] {
        let s = serve(cfg).await;
        for (path, body) in [
            ("/v1/chat/completions", chat(json!(3))),
            ("/v1/completions", completion(json!(-2))),
        ] {
            let v = error_of(post(&s.url(path), &body).await, 400).await;
            assert_eq!(v["error"]["type"], "BadRequestError");
            let n = body["priority"].as_i64().unwrap();
            assert_eq!(
                v["error"]["message"],
                format!("Got priority {n} but Priority scheduling is not enabled."),
                "{path}"
            );
        }
        let v = error_of(
            post(&s.url("/v1/chat/completions"), &chat(json!("high"))).await,
            400,
        )
        .await;
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid request: invalid type"));
        // An explicit 0 is the default and accepted under fcfs.
        let ok = post(&s.url("/v1/chat/completions"), &chat(json!(0))).await;
        assert_eq!(ok.status(), 200);
        assert_eq!(
            s.sim.stats().requests_total,
            1,
            "rejected ones count nothing"
        );
        s.shutdown().await.unwrap();
    }
    for cfg in [engine(), instant()] {
        let s = serve(SimConfig {
            scheduling_policy: SchedulingPolicy::Priority,
            ..cfg
        })
        .await;
        for (path, body) in [
            ("/v1/chat/completions", chat(json!(3))),
            ("/v1/completions", completion(json!(-2))),
        ] {
            let resp = post(&s.url(path), &body).await;
            assert_eq!(resp.status(), 200, "{path}");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["usage"]["completion_tokens"], 2, "{path}");
        }
        // Not an integer: a 400 in the parse error style, under either policy.
        for bad in [json!("high"), json!(1.5), json!(null)] {
            for (path, body) in [
                ("/v1/chat/completions", chat(bad.clone())),
                ("/v1/completions", completion(bad.clone())),
            ] {
                let v = error_of(post(&s.url(path), &body).await, 400).await;
                assert_eq!(v["error"]["type"], "BadRequestError", "{path} {bad}");
                let msg = v["error"]["message"].as_str().unwrap();
                assert!(msg.starts_with("Invalid request: invalid type"), "{msg}");
            }
        }
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn same_seed_same_output() {
    let a = serve(SimConfig {
        seed: 42,
        ..instant()
    })
    .await;
    let b = serve(SimConfig {
        seed: 42,
        ..engine()
    })
    .await;
    let c = serve(SimConfig {
        seed: 43,
        ..instant()
    })
    .await;
    let body = chat_body("determinism please", 12, false);
    let mut texts = Vec::new();
    for s in [&a, &b, &c, &a] {
        let v: Value = post(&s.url("/v1/chat/completions"), &body)
            .await
            .json()
            .await
            .unwrap();
        texts.push(
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        texts[0], texts[1],
        "same seed and body, engine or fast path"
    );
    assert_eq!(texts[0], texts[3]);
    assert_ne!(texts[0], texts[2], "another seed");
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let text = post(&a.url("/v1/chat/completions"), &stream_body)
        .await
        .text()
        .await
        .unwrap();
    let other = post(&a.url("/v1/chat/completions"), &stream_body)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(streamed_text(&sse(&text).0), streamed_text(&sse(&other).0));
    let other_body = chat_body("something else", 12, false);
    let v: Value = post(&a.url("/v1/chat/completions"), &other_body)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(
        v["choices"][0]["message"]["content"].as_str().unwrap(),
        texts[0]
    );
}

#[tokio::test]
async fn fault_error_is_a_vllm_500_and_counts_nothing() {
    for cfg in [instant(), engine()] {
        let s = serve(cfg).await;
        let resp = reqwest::Client::new()
            .post(s.url("/v1/chat/completions"))
            .header(FAULT_HEADER, "error")
            .json(&chat_body("x", 3, true))
            .send()
            .await
            .unwrap();
        let v = error_of(resp, 500).await;
        assert_eq!(
            v,
            json!({"error":{"message":"simulated engine failure","type":"InternalServerError","param":null,"code":500}})
        );
        assert_eq!(s.sim.stats(), fairgate_sim::SimStats::default());
    }
}

#[tokio::test]
async fn error_rate_one_fails_everything() {
    let s = serve(SimConfig {
        error_rate: 1.0,
        ..instant()
    })
    .await;
    for _ in 0..3 {
        let r = post(
            &s.url("/v1/completions"),
            &json!({"prompt":"x","max_tokens":1}),
        )
        .await;
        assert_eq!(r.status(), 500);
    }
    assert_eq!(s.sim.stats().requests_total, 0);
}

#[tokio::test]
async fn fault_abort_after_breaks_the_stream_and_counts_the_sent_tokens() {
    for cfg in [instant(), engine()] {
        let s = serve(cfg).await;
        let mut body = chat_body("abort me", 20, true);
        body["stream_options"] = json!({"include_usage": true});
        let mut resp = reqwest::Client::new()
            .post(s.url("/v1/chat/completions"))
            .header(FAULT_HEADER, "abort-after=3")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut received = Vec::new();
        let err = loop {
            match resp.chunk().await {
                Ok(Some(c)) => received.extend_from_slice(&c),
                Ok(None) => panic!("the stream must break, not end"),
                Err(e) => break e,
            }
        };
        assert!(
            err.is_body() || err.is_decode() || err.is_request(),
            "{err:?}"
        );
        let text = String::from_utf8(received).unwrap();
        assert!(!text.contains("[DONE]"));
        let (events, _) = sse(&text);
        assert_eq!(events.len(), 4, "role + 3 tokens");
        let st = s.sim.stats();
        // "abort me" = abor t " me" → 3, + user 1 + 3 + 3
        assert_eq!(st.prompt_tokens_total, 10);
        assert_eq!(st.generation_tokens_total, 3);
        assert_eq!(st.requests_total, 1);
        let metrics = reqwest::get(s.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains(
            "vllm:request_success_total{engine=\"0\",finished_reason=\"abort\",model_name=\"sim\"} 1"
        ));

        // Non-streaming: a 200 head and then a broken body.
        let r = reqwest::Client::new()
            .post(s.url("/v1/chat/completions"))
            .header(FAULT_HEADER, "abort-after=2")
            .json(&chat_body("abort me", 20, false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.is_err());
        assert_eq!(s.sim.stats().generation_tokens_total, 5);
    }
}

/// Reads a body until it breaks; panics if it ends cleanly instead.
async fn read_until_break(mut resp: reqwest::Response) -> Vec<u8> {
    assert_eq!(resp.status(), 200);
    let mut received = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => received.extend_from_slice(&c),
            Ok(None) => panic!("the body must break, not end"),
            Err(_) => return received,
        }
    }
}

/// `abort-after=N` must deliver all N tokens before the break, or a gateway's ledger cannot be
/// checked against the simulator. Breaking the body right after the last chunk lost chunks
/// (over HTTP/2 even whole responses), so this runs 20 aborts at once over HTTP/1.1 and h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_after_delivers_every_token_before_the_break() {
    const N: u64 = 3;
    const ROUNDS: usize = 20;
    for cfg in [instant(), engine()] {
        let s = serve(cfg).await;
        for h2 in [false, true] {
            let builder = reqwest::Client::builder();
            let builder = if h2 {
                builder.http2_prior_knowledge()
            } else {
                builder
            };
            let client = builder.build().unwrap();
            let send = |body: Value| {
                let req = client
                    .post(s.url("/v1/chat/completions"))
                    .header(FAULT_HEADER, format!("abort-after={N}"))
                    .json(&body);
                async move {
                    let resp = req.send().await.expect("the response head must arrive");
                    read_until_break(resp).await
                }
            };
            let streams = (0..ROUNDS).map(|_| send(continuous(chat_body("race me", 20, true))));
            for (round, raw) in futures_util::future::join_all(streams)
                .await
                .into_iter()
                .enumerate()
            {
                let text = String::from_utf8(raw).unwrap();
                let (events, done) = sse(&text);
                assert!(!done);
                assert_eq!(
                    events.len() as u64,
                    1 + N,
                    "h2 {h2} round {round}: {text:?}"
                );
                assert_eq!(streamed_text(&events).split_whitespace().count() as u64, N);
                let last = events.last().unwrap();
                assert_eq!(
                    last["usage"]["completion_tokens"], N,
                    "h2 {h2} round {round}"
                );
            }
            // Non-streaming: the first half of the body arrives before the break.
            let bodies = (0..ROUNDS).map(|_| send(chat_body("race me", 20, false)));
            for raw in futures_util::future::join_all(bodies).await {
                let text = String::from_utf8(raw).unwrap();
                assert!(text.starts_with(r#"{"id":"chatcmpl-"#), "h2 {h2}: {text:?}");
            }
        }
        let st = s.sim.stats();
        assert_eq!(st.generation_tokens_total, 2 * 2 * ROUNDS as u64 * N);
        assert_eq!(st.requests_total, 2 * 2 * ROUNDS as u64);
        assert_eq!((st.running, st.waiting, st.kv_tokens_used), (0, 0, 0));
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn hang_answers_nothing_and_shutdown_still_completes() {
    let s = serve(instant()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = client
        .post(s.url("/v1/chat/completions"))
        .header(FAULT_HEADER, "hang")
        .json(&chat_body("x", 3, false))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    // A second hung request that is still open when the server shuts down.
    let url = s.url("/v1/chat/completions");
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header(FAULT_HEADER, "hang")
            .json(&chat_body("x", 3, false))
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sim = s.sim.clone();
    s.shutdown().await.unwrap();
    let outcome = pending.await.unwrap();
    assert!(outcome.is_err() || outcome.is_ok_and(|st| st == 200));
    assert_eq!(sim.stats().requests_total, 0);
}

#[tokio::test]
async fn tokenize_health_version() {
    let s = serve(instant()).await;
    let v: Value = post(
        &s.url("/tokenize"),
        &json!({"model":"sim","prompt":"abcdefgh!"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["count"], 3);
    assert_eq!(v["max_model_len"], 8192);
    assert_eq!(v["tokens"], json!(fairgate_sim::tokenize("abcdefgh!")));
    let v: Value = post(
        &s.url("/tokenize"),
        &json!({"messages":[{"role":"user","content":"Hello there, simulator!"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["count"], 16, "same count the chat endpoint reports");
    let h = reqwest::get(s.url("/health")).await.unwrap();
    assert_eq!(h.status(), 200);
    assert!(h.bytes().await.unwrap().is_empty());
    let v: Value = reqwest::get(s.url("/version"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"version":"0.0.0-fairgate-sim"}));
}

/// Value of the series whose line starts with `prefix` (name plus labels).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no series {prefix}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_have_vllm_names_and_match_reported_usage() {
    for cfg in [instant(), engine()] {
        let s = serve(cfg).await;
        let shared = "You are a helpful assistant. ".repeat(20);
        let (mut prompt, mut completion, mut cached) = (0u64, 0u64, 0u64);
        for (i, stream) in [false, true, false, true].into_iter().enumerate() {
            let mut body = chat_body(&format!("{shared} question {i}"), 5 + i as u64, stream);
            if stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            let text = post(&s.url("/v1/chat/completions"), &body)
                .await
                .text()
                .await
                .unwrap();
            let usage = if stream {
                sse(&text).0.last().unwrap()["usage"].clone()
            } else {
                serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
            };
            prompt += usage["prompt_tokens"].as_u64().unwrap();
            completion += usage["completion_tokens"].as_u64().unwrap();
            cached += usage["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap();
        }
        assert!(
            cached > 0,
            "the shared system text is served from the prefix cache"
        );
        let text = reqwest::get(s.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for name in [
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:cache_config_info",
            "vllm:lora_requests_info",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
            "vllm:request_success_total",
            "vllm:prefix_cache_queries_total",
            "vllm:prefix_cache_hits_total",
            "vllm:num_preemptions_total",
            "vllm:time_to_first_token_seconds_bucket",
            "vllm:inter_token_latency_seconds_bucket",
            "vllm:e2e_request_latency_seconds_bucket",
            "vllm:request_queue_time_seconds_bucket",
            "vllm:request_prompt_tokens_bucket",
            "vllm:request_generation_tokens_bucket",
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name}{{")))
                .unwrap_or_else(|| panic!("missing {name}"));
            assert!(
                line.contains("model_name=\"sim\"") && line.contains("engine=\"0\""),
                "{line}"
            );
        }
        let l = "{engine=\"0\",model_name=\"sim\"}";
        assert_eq!(
            metric(&text, &format!("vllm:prompt_tokens_total{l}")),
            prompt as f64
        );
        assert_eq!(
            metric(&text, &format!("vllm:generation_tokens_total{l}")),
            completion as f64
        );
        assert_eq!(
            metric(&text, &format!("vllm:prefix_cache_hits_total{l}")),
            cached as f64
        );
        assert_eq!(
            metric(&text, &format!("vllm:prefix_cache_queries_total{l}")),
            prompt as f64
        );
        assert_eq!(metric(&text, &format!("vllm:num_requests_running{l}")), 0.0);
        assert_eq!(metric(&text, &format!("vllm:num_requests_waiting{l}")), 0.0);
        assert_eq!(metric(&text, &format!("vllm:kv_cache_usage_perc{l}")), 0.0);
        assert_eq!(
            metric(&text, &format!("vllm:num_preemptions_total{l}")),
            0.0
        );
        assert_eq!(
            metric(
                &text,
                "vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"sim\"}"
            ),
            4.0
        );
        assert_eq!(
            metric(&text, &format!("vllm:time_to_first_token_seconds_count{l}")),
            4.0
        );
        assert_eq!(
            metric(&text, &format!("vllm:inter_token_latency_seconds_count{l}")),
            (completion - 4) as f64
        );
        assert_eq!(
            metric(&text, &format!("vllm:e2e_request_latency_seconds_count{l}")),
            4.0
        );
        assert_eq!(
            metric(&text, &format!("vllm:request_queue_time_seconds_count{l}")),
            4.0
        );
        assert_eq!(
            metric(&text, &format!("vllm:request_prompt_tokens_sum{l}")),
            prompt as f64
        );
        assert_eq!(
            metric(&text, &format!("vllm:request_generation_tokens_sum{l}")),
            completion as f64
        );
        let info = text
            .lines()
            .find(|l| l.starts_with("vllm:cache_config_info{"))
            .unwrap();
        for label in [
            "block_size=\"16\"",
            "cache_dtype=\"auto\"",
            "enable_prefix_caching=\"True\"",
            "gpu_memory_utilization=\"0.9\"",
        ] {
            assert!(info.contains(label), "{info}");
        }
        assert!(info.ends_with(" 1"));
        let st = s.sim.stats();
        assert_eq!(st.prompt_tokens_total, prompt);
        assert_eq!(st.generation_tokens_total, completion);
        assert_eq!(st.prefix_cache_hits_total, cached);
        assert_eq!(st.requests_total, 4);
    }
}

#[tokio::test]
async fn many_concurrent_fast_requests_account_exactly() {
    let s = serve(SimConfig {
        max_num_seqs: 4,
        ..instant()
    })
    .await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let client = client.clone();
        let url = s.url("/v1/completions");
        tasks.push(tokio::spawn(async move {
            let body = json!({"model":"sim","prompt":format!("request number {i}"),"max_tokens":1 + i % 5,
                              "stream": i % 2 == 0, "stream_options": if i % 2 == 0 { json!({"include_usage":true}) } else { Value::Null }});
            let text = client.post(url).json(&body).send().await.unwrap().text().await.unwrap();
            let usage = if i % 2 == 0 {
                sse(&text).0.last().unwrap()["usage"].clone()
            } else {
                serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
            };
            (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap())
        }));
    }
    let (mut p, mut c) = (0, 0);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        p += a;
        c += b;
    }
    let st = s.sim.stats();
    assert_eq!((st.prompt_tokens_total, st.generation_tokens_total), (p, c));
    assert_eq!(st.requests_total, 40);
    assert_eq!((st.running, st.waiting, st.kv_tokens_used), (0, 0, 0));
}

/// `instant()` or `engine()` with two LoRA adapters.
fn with_adapters(cfg: SimConfig) -> SimConfig {
    SimConfig {
        lora_modules: vec!["sql-lora".into(), "chat-lora".into()],
        ..cfg
    }
}

#[tokio::test]
async fn lora_adapter_is_accepted_and_echoed_and_unknown_models_still_404() {
    for cfg in [instant(), engine()] {
        let s = serve(with_adapters(cfg)).await;
        let mut body = chat_body("Hello there, simulator!", 3, false);
        body["model"] = json!("sql-lora");
        let resp = post(&s.url("/v1/chat/completions"), &body).await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["model"], "sql-lora");
        assert_eq!(v["usage"]["completion_tokens"], 3);

        body["model"] = json!("chat-lora");
        body["stream"] = json!(true);
        let text = post(&s.url("/v1/chat/completions"), &body)
            .await
            .text()
            .await
            .unwrap();
        let (events, done) = sse(&text);
        assert!(done);
        assert!(events.iter().all(|e| e["model"] == "chat-lora"), "{text}");
        assert_eq!(streamed_text(&events).split_whitespace().count(), 3);

        let v: Value = post(
            &s.url("/v1/completions"),
            &json!({"model":"sql-lora","prompt":"abc","max_tokens":2}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(v["model"], "sql-lora");
        let v: Value = post(
            &s.url("/v1/embeddings"),
            &json!({"model":"chat-lora","input":"abc"}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(v["model"], "chat-lora");
        let v: Value = post(&s.url("/v1/chat/completions"), &chat_body("x", 1, false))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["model"], "sim", "the base model is still served");

        for (path, req) in [
            (
                "/v1/chat/completions",
                json!({"model":"other-lora","messages":[{"role":"user","content":"x"}]}),
            ),
            (
                "/v1/completions",
                json!({"model":"other-lora","prompt":"x"}),
            ),
            ("/v1/embeddings", json!({"model":"other-lora","input":"x"})),
        ] {
            let v = error_of(post(&s.url(path), &req).await, 404).await;
            assert_eq!(
                v["error"]["message"], "The model `other-lora` does not exist.",
                "{path}"
            );
        }
        assert_eq!(s.sim.stats().requests_total, 5);
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn models_list_shows_adapters_with_their_parent() {
    let s = serve(with_adapters(instant())).await;
    let v: Value = reqwest::get(s.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = v["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["sim", "sql-lora", "chat-lora"]);
    assert_eq!(data[0]["root"], "sim");
    assert_eq!(data[0]["parent"], Value::Null);
    assert_eq!(data[0]["max_model_len"], 8192);
    for m in &data[1..] {
        assert_eq!(m["object"], "model");
        assert_eq!(m["owned_by"], "vllm");
        assert_eq!(m["root"], m["id"]);
        assert_eq!(m["parent"], "sim");
        // vLLM's adapter cards carry no max_model_len.
        assert_eq!(m["max_model_len"], Value::Null);
        assert_eq!(m["permission"][0]["object"], "model_permission");
    }
    let metrics = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let info: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("vllm:lora_requests_info{"))
        .collect();
    assert_eq!(info.len(), 1, "{info:?}");
    assert!(info[0].contains("max_lora=\"1\""), "{info:?}");
}

#[tokio::test]
async fn health_switch_fails_health_and_inference_until_restored() {
    for cfg in [instant(), engine()] {
        let s = serve(cfg).await;
        let client = reqwest::Client::new();
        assert!(s.sim.is_healthy());
        s.sim.set_healthy(false);
        assert!(!s.sim.is_healthy());
        let h = reqwest::get(s.url("/health")).await.unwrap();
        assert_eq!(h.status(), 503);
        assert!(h.bytes().await.unwrap().is_empty());
        let ping = client.post(s.url("/ping")).send().await.unwrap();
        assert_eq!(ping.status(), 503);
        for (path, req) in [
            ("/v1/chat/completions", chat_body("x", 2, false)),
            ("/v1/chat/completions", chat_body("x", 2, true)),
            ("/v1/completions", json!({"model":"sim","prompt":"x"})),
            ("/v1/embeddings", json!({"model":"sim","input":"x"})),
        ] {
            let v = error_of(post(&s.url(path), &req).await, 503).await;
            assert_eq!(v["error"]["type"], "ServiceUnavailableError", "{path}");
        }
        // Routes that need no engine keep answering.
        let models = reqwest::get(s.url("/v1/models")).await.unwrap();
        assert_eq!(models.status(), 200);
        let st = s.sim.stats();
        assert_eq!((st.requests_total, st.prompt_tokens_total), (0, 0));

        s.sim.set_healthy(true);
        assert!(s.sim.is_healthy());
        let h = reqwest::get(s.url("/health")).await.unwrap();
        assert_eq!(h.status(), 200);
        let ping = reqwest::get(s.url("/ping")).await.unwrap();
        assert_eq!(ping.status(), 200);
        let resp = post(&s.url("/v1/chat/completions"), &chat_body("x", 2, false)).await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 2);
        s.shutdown().await.unwrap();
    }
}
