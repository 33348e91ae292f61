//! Engine behaviour on paused (virtual) time, driving the router in-process: batching limits,
//! KV waits, prefix-cache TTFT, batch-dependent step time, disconnects, delays, LoRA residency,
//! the `fcfs` / `priority` scheduling policies and KV preemption.

mod common;

use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::Response;
use common::{call, chat_body, get, sse, text};
use fairgate_sim::{SchedulingPolicy, SimConfig, Simulator, FAULT_HEADER};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::time::{sleep, sleep_until, Instant};

const MS: Duration = Duration::from_millis(1);

/// Whole-millisecond latencies, so virtual timings come out exact.
fn cfg() -> SimConfig {
    SimConfig {
        model: "sim".into(),
        prefill_overhead: 20 * MS,
        prefill_per_token: MS,
        decode_step_base: 10 * MS,
        decode_step_per_seq: 2 * MS,
        ..SimConfig::default()
    }
}

/// What one streamed request saw, in virtual time since `t0`.
#[derive(Debug, Clone)]
struct Seen {
    first_token: Duration,
    done: Duration,
    token_times: Vec<Duration>,
    events: Vec<Value>,
}

fn body_stream(resp: Response<Body>) -> BodyDataStream {
    assert_eq!(resp.status(), 200);
    resp.into_body().into_data_stream()
}

async fn next_frame(s: &mut BodyDataStream) -> Option<Bytes> {
    s.next().await.map(|r| r.unwrap())
}

/// Streams a chat request to the end, timestamping each token chunk.
async fn stream_chat(sim: Simulator, t0: Instant, content: String, max_tokens: u64) -> Seen {
    stream_chat_as(sim, t0, "sim", content, max_tokens).await
}

/// [`stream_chat`] for the model (or LoRA adapter) `model`.
async fn stream_chat_as(
    sim: Simulator,
    t0: Instant,
    model: &'static str,
    content: String,
    max_tokens: u64,
) -> Seen {
    let mut body = chat_body(&content, max_tokens, true);
    body["model"] = json!(model);
    body["stream_options"] = json!({"include_usage": true});
    let mut s = body_stream(call(&sim, "/v1/chat/completions", &[], &body).await);
    let mut raw = Vec::new();
    let mut token_times = Vec::new();
    while let Some(b) = next_frame(&mut s).await {
        if std::str::from_utf8(&b).unwrap().contains("\"content\":\"") {
            token_times.push(t0.elapsed());
        }
        raw.extend_from_slice(&b);
    }
    let (events, done) = sse(std::str::from_utf8(&raw).unwrap());
    assert!(done);
    // The role chunk also matches `"content":""`; it arrives with the first token.
    token_times.remove(0);
    assert_eq!(token_times.len() as u64, max_tokens);
    Seen {
        first_token: token_times[0],
        done: *token_times.last().unwrap(),
        token_times,
        events,
    }
}

fn usage(seen: &Seen) -> &Value {
    &seen.events.last().unwrap()["usage"]
}

#[tokio::test(start_paused = true)]
async fn max_num_seqs_bounds_the_batch_and_the_rest_wait_in_order() {
    let sim = Simulator::new(SimConfig {
        max_num_seqs: 2,
        ..cfg()
    });
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|i| tokio::spawn(stream_chat(sim.clone(), t0, format!("request {i}"), 5)))
        .collect();
    sleep(MS).await;
    let st = sim.stats();
    assert_eq!((st.running, st.waiting), (2, 2));
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    let first_batch_done = seen[0].done.min(seen[1].done);
    for late in &seen[2..] {
        assert!(late.first_token > first_batch_done, "{seen:?}");
    }
    assert_eq!(
        seen[0].first_token, seen[1].first_token,
        "admitted in the same step"
    );
    let st = sim.stats();
    assert_eq!((st.running, st.waiting, st.requests_total), (0, 0, 4));
    assert_eq!(st.generation_tokens_total, 20);
}

/// One completion request with an exact prompt of `prompt` token ids, distinct per `id` (so no
/// prefix-cache hits), and vLLM's `priority` field.
#[derive(Debug, Clone, Copy)]
struct Req {
    id: u32,
    prompt: u32,
    max_tokens: u64,
    priority: i64,
}

fn req(id: u32, prompt: u32, max_tokens: u64, priority: i64) -> Req {
    Req {
        id,
        prompt,
        max_tokens,
        priority,
    }
}

/// Streams a completion to the end, timestamping each token chunk; checks that it got every
/// token once and ended with `finish_reason` "length".
async fn stream_completion(sim: Simulator, t0: Instant, r: Req) -> Seen {
    let ids: Vec<u32> = (0..r.prompt).map(|k| r.id * 10_000 + k).collect();
    let body = json!({
        "model": "sim",
        "prompt": ids,
        "max_tokens": r.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
        "priority": r.priority,
    });
    let mut s = body_stream(call(&sim, "/v1/completions", &[], &body).await);
    let mut raw = Vec::new();
    let mut token_times = Vec::new();
    while let Some(b) = next_frame(&mut s).await {
        if std::str::from_utf8(&b).unwrap().contains("\"text\":\"") {
            token_times.push(t0.elapsed());
        }
        raw.extend_from_slice(&b);
    }
    let (events, done) = sse(std::str::from_utf8(&raw).unwrap());
    assert!(done);
    assert_eq!(token_times.len() as u64, r.max_tokens, "{r:?}");
    let reasons: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"].get(0))
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(reasons, [&json!("length")], "{r:?}");
    let seen = Seen {
        first_token: token_times[0],
        done: *token_times.last().unwrap(),
        token_times,
        events,
    };
    assert_eq!(usage(&seen)["completion_tokens"], r.max_tokens);
    assert_eq!(usage(&seen)["prompt_tokens"], r.prompt);
    seen
}

fn spawn_req(sim: &Simulator, t0: Instant, r: Req) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(stream_completion(sim.clone(), t0, r))
}

/// Tokens `s` had received by `t`.
fn tokens_by(s: &Seen, t: Duration) -> usize {
    s.token_times.iter().filter(|&&x| x <= t).count()
}

/// Blocks of 4 tokens, `blocks` of them, under `policy`.
fn kv_cfg(policy: SchedulingPolicy, blocks: u64) -> SimConfig {
    SimConfig {
        block_size: 4,
        kv_cache_tokens: 4 * blocks,
        scheduling_policy: policy,
        ..cfg()
    }
}

/// A series of the simulator's `/metrics`, by name (the labels are always the same two).
async fn series(sim: &Simulator, name: &str) -> f64 {
    let m = text(get(sim, "/metrics").await).await;
    let prefix = format!("{name}{{engine=\"0\",model_name=\"sim\"}} ");
    m.lines()
        .find_map(|x| x.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} in {m}"))
        .parse()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn kv_blocks_make_requests_wait_head_of_line() {
    let sim = Simulator::new(kv_cfg(SchedulingPolicy::Fcfs, 6));
    let t0 = Instant::now();
    // A's prompt takes 4 of the 6 blocks; B's (3 blocks) does not fit next to it, C's (1) would.
    let a = spawn_req(&sim, t0, req(1, 16, 4, 0));
    let b = spawn_req(&sim, t0, req(2, 12, 2, 0));
    let c = spawn_req(&sim, t0, req(3, 4, 2, 0));
    sleep(MS).await;
    let st = sim.stats();
    assert_eq!((st.running, st.waiting, st.kv_tokens_used), (1, 2, 16));
    // Step 1 (prefill 36 ms + step 12 ms) is over: A's next token needs a fifth block.
    sleep_until(t0 + 49 * MS).await;
    assert_eq!(sim.stats().kv_tokens_used, 20);
    let (a, b, c) = (a.await.unwrap(), b.await.unwrap(), c.await.unwrap());
    assert!(b.first_token > a.done);
    // C would fit next to A, but admission does not let it pass B; both go in together.
    assert_eq!(c.first_token, b.first_token);
    let st = sim.stats();
    assert_eq!((st.kv_tokens_used, st.num_preemptions_total), (0, 0));
}

/// Runs A alone first (one slot), then queues B..F behind it with the given priorities;
/// returns the first-token times of A, B, C, D, F.
async fn admission_order(policy: SchedulingPolicy, prio: [i64; 4]) -> Vec<Duration> {
    let sim = Simulator::new(SimConfig {
        max_num_seqs: 1,
        scheduling_policy: policy,
        ..cfg()
    });
    let t0 = Instant::now();
    let mut tasks = vec![spawn_req(&sim, t0, req(1, 4, 3, 0))];
    sleep(MS).await;
    // B at 1 ms; C and D at 2 ms; F at 3 ms.
    tasks.push(spawn_req(&sim, t0, req(2, 4, 3, prio[0])));
    sleep(MS).await;
    tasks.push(spawn_req(&sim, t0, req(3, 4, 3, prio[1])));
    tasks.push(spawn_req(&sim, t0, req(4, 4, 3, prio[2])));
    sleep(MS).await;
    tasks.push(spawn_req(&sim, t0, req(5, 4, 3, prio[3])));
    sleep(MS).await;
    assert_eq!((sim.stats().running, sim.stats().waiting), (1, 4));
    let mut first = Vec::new();
    for t in tasks {
        first.push(t.await.unwrap().first_token);
    }
    assert_eq!(sim.stats().num_preemptions_total, 0);
    first
}

#[tokio::test(start_paused = true)]
async fn waiting_order_is_arrival_under_fcfs_and_priority_then_arrival_under_priority() {
    let fcfs = admission_order(SchedulingPolicy::Fcfs, [0; 4]).await;
    assert!(fcfs.windows(2).all(|w| w[0] < w[1]), "{fcfs:?}");
    // B(5) at 1 ms, C(1) and D(5) at 2 ms, F(1) at 3 ms: C, F (lower value, in arrival order)
    // pass B, which still goes before D (same value, earlier).
    let p = admission_order(SchedulingPolicy::Priority, [5, 1, 5, 1]).await;
    let (a, b, c, d, f) = (p[0], p[1], p[2], p[3], p[4]);
    assert!(a < c && c < f && f < b && b < d, "{p:?}");
}

#[tokio::test(start_paused = true)]
async fn full_batch_makes_a_high_priority_arrival_wait_without_preemption() {
    let sim = Simulator::new(SimConfig {
        max_num_seqs: 2,
        scheduling_policy: SchedulingPolicy::Priority,
        ..cfg()
    });
    let t0 = Instant::now();
    let l1 = spawn_req(&sim, t0, req(1, 4, 5, 10));
    let l2 = spawn_req(&sim, t0, req(2, 4, 20, 10));
    let l3 = spawn_req(&sim, t0, req(3, 4, 3, 10));
    sleep(MS).await;
    let h = spawn_req(&sim, t0, req(4, 4, 3, 0));
    sleep(MS).await;
    let st = sim.stats();
    assert_eq!(
        (st.running, st.waiting, st.num_preemptions_total),
        (2, 2, 0)
    );
    let (l1, l2, l3, h) = (
        l1.await.unwrap(),
        l2.await.unwrap(),
        l3.await.unwrap(),
        h.await.unwrap(),
    );
    // H takes the first free slot, in the step right after L1's last token, ahead of L3 which
    // arrived before it; L2 kept running throughout.
    assert!(h.first_token > l1.done);
    let next_step = l2.token_times.iter().find(|&&t| t > l1.done).unwrap();
    assert_eq!(h.first_token, *next_step);
    assert!(l3.first_token > h.done);
    assert_eq!(sim.stats().num_preemptions_total, 0);
}

/// A(prio a) and B(prio b) at t0, C(prio c) at 1 ms, each a 1-block prompt and 8 tokens,
/// in 6 blocks of 4: once A needs its third block (its 6th step), the cache is full.
async fn kv_preemption(policy: SchedulingPolicy, [pa, pb, pc]: [i64; 3]) -> (Simulator, [Seen; 3]) {
    let sim = Simulator::new(kv_cfg(policy, 6));
    let t0 = Instant::now();
    let a = spawn_req(&sim, t0, req(1, 4, 8, pa));
    let b = spawn_req(&sim, t0, req(2, 4, 8, pb));
    sleep(MS).await;
    let c = spawn_req(&sim, t0, req(3, 4, 8, pc));
    let seen = [a.await.unwrap(), b.await.unwrap(), c.await.unwrap()];
    let st = sim.stats();
    assert_eq!(st.num_preemptions_total, 1, "{policy:?}");
    assert_eq!((st.running, st.waiting, st.kv_tokens_used), (0, 0, 0));
    assert_eq!(st.generation_tokens_total, 24, "no token twice");
    assert_eq!(st.requests_total, 3);
    assert_eq!(series(&sim, "vllm:num_preemptions_total").await, 1.0);
    // TTFT once per request, every later token an inter-token latency (the pause included).
    assert_eq!(
        series(&sim, "vllm:time_to_first_token_seconds_count").await,
        3.0
    );
    assert_eq!(
        series(&sim, "vllm:inter_token_latency_seconds_count").await,
        21.0
    );
    (sim, seen)
}

#[tokio::test(start_paused = true)]
async fn full_kv_under_priority_preempts_the_largest_priority_and_arrival() {
    // Running order A(0), B(5), C(1): B is the victim although C was admitted last.
    let (_, [a, b, c]) = kv_preemption(SchedulingPolicy::Priority, [0, 5, 1]).await;
    assert_eq!(tokens_by(&b, a.done), 5, "B paused after 5 tokens");
    assert_eq!(tokens_by(&c, a.done), 7, "C kept running");
    assert!(a.done < c.done && c.done < b.done);
    // B resumed once A freed its blocks and finished with all its tokens.
    assert!(b.token_times[5] > a.done);
}

#[tokio::test(start_paused = true)]
async fn full_kv_under_fcfs_preempts_the_last_admitted() {
    let (_, [a, b, c]) = kv_preemption(SchedulingPolicy::Fcfs, [0, 0, 0]).await;
    assert_eq!(tokens_by(&c, a.done), 4, "C paused after 4 tokens");
    assert_eq!(b.done, a.done, "B kept running");
    assert!(c.token_times[4] > a.done);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_admitted_in_a_step_that_preempted() {
    let sim = Simulator::new(SimConfig {
        max_num_seqs: 2,
        ..kv_cfg(SchedulingPolicy::Priority, 6)
    });
    let t0 = Instant::now();
    // A holds 2 blocks and B 4 by A's 6th step, where A needs a third: B is preempted, which
    // frees a slot and 3 blocks. D waits for the slot and would fit, yet it only goes in the
    // next step.
    let a = spawn_req(&sim, t0, req(1, 4, 12, 0));
    let b = spawn_req(&sim, t0, req(2, 12, 8, 5));
    sleep(MS).await;
    let d = spawn_req(&sim, t0, req(3, 4, 2, 1));
    sleep(MS).await;
    assert_eq!((sim.stats().running, sim.stats().waiting), (2, 1));
    let (a, b, d) = (a.await.unwrap(), b.await.unwrap(), d.await.unwrap());
    assert_eq!(
        tokens_by(&b, a.token_times[5]),
        5,
        "B preempted in A's 6th step"
    );
    assert_ne!(
        d.first_token, a.token_times[5],
        "not admitted in the preempting step"
    );
    assert_eq!(
        d.first_token, a.token_times[6],
        "admitted in the step after it"
    );
    assert!(b.done > d.done);
    assert_eq!(sim.stats().num_preemptions_total, 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_with_the_lowest_priority_preempts_itself() {
    let sim = Simulator::new(kv_cfg(SchedulingPolicy::Priority, 6));
    let t0 = Instant::now();
    // A (priority 5) runs first; B (priority 0) joins a step later. In A's 10th step its
    // fourth block is not free, and A itself is the largest (priority, arrival).
    let a = spawn_req(&sim, t0, req(1, 4, 12, 5));
    sleep(MS).await;
    let b = spawn_req(&sim, t0, req(2, 4, 12, 0));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(tokens_by(&a, b.done), 9, "A stopped after 9 tokens");
    assert!(a.token_times[9] > b.done);
    // B never paused: its gaps are all single steps (10 ms + 2 ms per scheduled sequence).
    for w in b.token_times.windows(2) {
        assert!(w[1] - w[0] <= 14 * MS, "{:?}", b.token_times);
    }
    assert_eq!(sim.stats().num_preemptions_total, 1);
}

#[tokio::test(start_paused = true)]
async fn prefix_cache_hit_shortens_ttft() {
    let sim = Simulator::new(SimConfig {
        decode_step_per_seq: Duration::ZERO,
        ..cfg()
    });
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(30);
    let t0 = Instant::now();
    let first = stream_chat(sim.clone(), t0, long.clone(), 2).await;
    let t1 = Instant::now();
    let second = stream_chat(sim.clone(), t1, long.clone(), 2).await;

    let prompt = usage(&first)["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage(&first)["prompt_tokens_details"]["cached_tokens"], 0);
    let cached = usage(&second)["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        cached,
        (prompt - 1) / 16 * 16,
        "every full block before the last token"
    );
    // TTFT = prefill (20 ms + 1 ms per uncached token) + one 10 ms decode step.
    let ttft = |uncached: u64| (30 + uncached as u32) * MS;
    assert_eq!(first.first_token, ttft(prompt));
    assert_eq!(second.first_token, ttft(prompt - cached));
    assert!(second.first_token < first.first_token);
    let st = sim.stats();
    assert_eq!(st.prefix_cache_queries_total, 2 * prompt);
    assert_eq!(st.prefix_cache_hits_total, cached);
}

#[tokio::test(start_paused = true)]
async fn an_idle_engine_starts_a_full_step_when_work_arrives() {
    let sim = Simulator::new(SimConfig {
        decode_step_per_seq: Duration::ZERO,
        ..cfg()
    });
    let t0 = Instant::now();
    let first = stream_chat(sim.clone(), t0, "one".into(), 2).await;
    // Idle for less than a step: the next request's first step still lasts a whole step from
    // its arrival (a busy engine catches up on late wake-ups; an idle one has nothing to
    // catch up on).
    sleep(3 * MS).await;
    let t1 = Instant::now();
    let second = stream_chat(sim.clone(), t1, "two".into(), 2).await;
    assert_eq!(second.first_token, first.first_token);
    // TTFT = prefill (20 ms + 1 ms per token) + one 10 ms decode step.
    let prompt = usage(&second)["prompt_tokens"].as_u64().unwrap();
    assert_eq!(second.first_token, (30 + prompt as u32) * MS);
}

#[tokio::test(start_paused = true)]
async fn decode_step_time_grows_with_batch_size() {
    let sim = Simulator::new(cfg());
    // One sequence alone: 10 steps of 10 ms + 2 ms × 1 between first and last token.
    let t0 = Instant::now();
    let alone = stream_chat(sim.clone(), t0, "solo".into(), 11).await;
    assert_eq!(alone.done - alone.first_token, 10 * 12 * MS);
    // Eight together: each step is 10 ms + 2 ms × 8.
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|i| tokio::spawn(stream_chat(sim.clone(), t0, format!("batch {i}"), 11)))
        .collect();
    for t in tasks {
        let s = t.await.unwrap();
        assert_eq!(s.done - s.first_token, 10 * 26 * MS);
        for w in s.token_times.windows(2) {
            assert_eq!(w[1] - w[0], 26 * MS);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_frees_the_slot_and_counts_produced_tokens() {
    let sim = Simulator::new(SimConfig {
        max_num_seqs: 1,
        ..cfg()
    });
    let a_body = chat_body("first", 100, true);
    let mut a = body_stream(call(&sim, "/v1/chat/completions", &[], &a_body).await);
    let t0 = Instant::now();
    let b = tokio::spawn(stream_chat(sim.clone(), t0, "second".into(), 3));
    let c_body = chat_body("third", 3, true);
    let c = body_stream(call(&sim, "/v1/chat/completions", &[], &c_body).await);
    // Role chunk + 5 tokens of A.
    for _ in 0..6 {
        next_frame(&mut a).await.unwrap();
    }
    let st = sim.stats();
    assert_eq!((st.running, st.waiting), (1, 2));
    assert_eq!(st.generation_tokens_total, 5);
    // C leaves while waiting, A while running.
    drop(c);
    drop(a);
    let b = b.await.unwrap();
    // B ran as soon as A's slot was freed, long before A's 100 tokens would have finished.
    assert!(b.first_token < 100 * 12 * MS);
    let st = sim.stats();
    assert_eq!((st.running, st.waiting, st.kv_tokens_used), (0, 0, 0));
    assert_eq!(st.generation_tokens_total, 5 + 3);
    assert_eq!(st.requests_total, 3);
    // Prompts: first = 2 tokens, second = 2 ("seco" "nd"), third = 2 ("thir" "d"), each + 7.
    assert_eq!(st.prompt_tokens_total, 3 * 9);
    let metrics = text(get(&sim, "/metrics").await).await;
    assert!(metrics.contains(
        "vllm:request_success_total{engine=\"0\",finished_reason=\"abort\",model_name=\"sim\"} 2"
    ));
    assert!(metrics.contains(
        "vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"sim\"} 1"
    ));
}

#[tokio::test(start_paused = true)]
async fn fast_path_respects_max_num_seqs() {
    let sim = Simulator::new(SimConfig {
        max_num_seqs: 1,
        ..SimConfig::instant("sim")
    });
    // A holds the only slot while its body is not read.
    let a = call(&sim, "/v1/chat/completions", &[], &chat_body("a", 4, true)).await;
    let sim2 = sim.clone();
    let b = tokio::spawn(async move {
        text(
            call(
                &sim2,
                "/v1/chat/completions",
                &[],
                &chat_body("b", 4, false),
            )
            .await,
        )
        .await
    });
    sleep(MS).await;
    let st = sim.stats();
    assert_eq!((st.running, st.waiting), (1, 1));
    drop(a);
    let b: Value = serde_json::from_str(&b.await.unwrap()).unwrap();
    assert_eq!(b["usage"]["completion_tokens"], 4);
    let st = sim.stats();
    assert_eq!((st.running, st.waiting, st.requests_total), (0, 0, 2));
    assert_eq!(
        st.generation_tokens_total, 4,
        "A produced nothing before it was dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn fast_path_disconnect_counts_the_sent_tokens_once() {
    let sim = Simulator::new(SimConfig::instant("sim"));
    let mut body = chat_body("leave early", 100, true);
    body["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": true});
    // In-process, the body produces a chunk only when it is read: role + 5 tokens.
    let mut s = body_stream(call(&sim, "/v1/chat/completions", &[], &body).await);
    let mut raw = Vec::new();
    for _ in 0..6 {
        raw.extend_from_slice(&next_frame(&mut s).await.unwrap());
    }
    let (events, done) = sse(std::str::from_utf8(&raw).unwrap());
    assert!(!done);
    let seen = events.last().unwrap()["usage"]["completion_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(seen, 5);
    assert_eq!(sim.stats().running, 1);
    drop(s);
    let st = sim.stats();
    assert_eq!(st.generation_tokens_total, seen, "what the client saw");
    assert_eq!(
        (st.running, st.kv_tokens_used, st.requests_total),
        (0, 0, 1)
    );
    let m = text(get(&sim, "/metrics").await).await;
    let l = "{engine=\"0\",model_name=\"sim\"}";
    for series in [
        "vllm:request_success_total{engine=\"0\",finished_reason=\"abort\",model_name=\"sim\"} 1"
            .to_owned(),
        format!("vllm:request_generation_tokens_sum{l} 5"),
        format!("vllm:request_generation_tokens_count{l} 1"),
    ] {
        assert!(m.lines().any(|x| x == series), "{series}");
    }
    // A later request adds only its own tokens: the dropped one is not counted again.
    let done = call(
        &sim,
        "/v1/completions",
        &[],
        &json!({"prompt":"x","max_tokens":4}),
    )
    .await;
    text(done).await;
    let st = sim.stats();
    assert_eq!((st.generation_tokens_total, st.requests_total), (5 + 4, 2));
}

#[tokio::test(start_paused = true)]
async fn slow_fault_and_slow_start_delay_the_first_byte() {
    let sim = Simulator::new(SimConfig {
        slow_start: 100 * MS,
        ..SimConfig::instant("sim")
    });
    let t0 = Instant::now();
    let resp = call(
        &sim,
        "/v1/completions",
        &[(FAULT_HEADER, "slow=400")],
        &json!({"prompt":"x","max_tokens":1}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(t0.elapsed(), 500 * MS);
}

#[tokio::test(start_paused = true)]
async fn health_is_503_during_startup() {
    let sim = Simulator::new(SimConfig {
        startup_delay: Duration::from_secs(2),
        ..SimConfig::instant("sim")
    });
    assert_eq!(get(&sim, "/health").await.status(), 503);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(get(&sim, "/health").await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn engine_histograms_use_virtual_time() {
    let sim = Simulator::new(cfg());
    let t0 = Instant::now();
    let s = stream_chat(sim.clone(), t0, "hi".into(), 3).await;
    // 8 prompt tokens: prefill 28 ms + step 12 ms; then two more 12 ms steps.
    assert_eq!(s.first_token, 40 * MS);
    assert_eq!(s.done, 64 * MS);
    let m = text(get(&sim, "/metrics").await).await;
    let l = "{engine=\"0\",model_name=\"sim\"}";
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{l} ");
        m.lines()
            .find_map(|x| x.strip_prefix(&prefix))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!((value("vllm:time_to_first_token_seconds_sum") - 0.040).abs() < 1e-9);
    assert!((value("vllm:inter_token_latency_seconds_sum") - 0.024).abs() < 1e-9);
    assert!((value("vllm:e2e_request_latency_seconds_sum") - 0.064).abs() < 1e-9);
    assert_eq!(value("vllm:request_queue_time_seconds_sum"), 0.0);
}

/// Two adapters `a` and `b` on top of `sim`, no load cost unless a test sets one.
fn lora_cfg(max_loras: usize) -> SimConfig {
    SimConfig {
        lora_modules: vec!["a".into(), "b".into()],
        max_loras,
        lora_load: Duration::ZERO,
        ..cfg()
    }
}

/// Every `vllm:lora_requests_info` series of a scrape.
async fn lora_info(sim: &Simulator) -> Vec<String> {
    text(get(sim, "/metrics").await)
        .await
        .lines()
        .filter(|l| l.starts_with("vllm:lora_requests_info{"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn max_loras_keeps_another_adapter_waiting_while_base_requests_run() {
    let sim = Simulator::new(lora_cfg(1));
    let t0 = Instant::now();
    let spawn = |model: &'static str, max_tokens: u64| {
        tokio::spawn(stream_chat_as(
            sim.clone(),
            t0,
            model,
            "hi".into(),
            max_tokens,
        ))
    };
    // Queue order: a, b, a again, the base model.
    let a = spawn("a", 20);
    let b = spawn("b", 5);
    let a2 = spawn("a", 5);
    let base = spawn("sim", 5);
    sleep(MS).await;
    let st = sim.stats();
    assert_eq!(
        (st.running, st.waiting),
        (3, 1),
        "b waits; a's second request and the base request pass it"
    );
    let lora = sim.lora_stats();
    assert_eq!(lora.running_adapters, vec!["a"]);
    assert_eq!(lora.waiting_adapters, vec!["b"]);
    let info = lora_info(&sim).await;
    assert_eq!(info.len(), 1, "only the live label set: {info:?}");
    for label in [
        "max_lora=\"1\"",
        "running_lora_adapters=\"a\"",
        "waiting_lora_adapters=\"b\"",
        "model_name=\"sim\"",
    ] {
        assert!(info[0].contains(label), "{label} in {info:?}");
    }

    let (a, b, a2, base) = (
        a.await.unwrap(),
        b.await.unwrap(),
        a2.await.unwrap(),
        base.await.unwrap(),
    );
    assert_eq!(a2.first_token, a.first_token, "admitted in the same step");
    assert_eq!(base.first_token, a.first_token, "admitted in the same step");
    assert!(base.done < a.done);
    assert!(
        b.first_token > a.done,
        "b waits until a has no running request"
    );
    for (seen, model) in [(&a, "a"), (&b, "b"), (&a2, "a"), (&base, "sim")] {
        assert!(seen.events.iter().all(|e| e["model"] == model), "{model}");
        assert_eq!(usage(seen)["completion_tokens"], seen.token_times.len());
    }

    let st = sim.stats();
    assert_eq!((st.running, st.waiting, st.requests_total), (0, 0, 4));
    assert_eq!(sim.lora_stats(), fairgate_sim::LoraStats::default());
    let info = lora_info(&sim).await;
    assert_eq!(info.len(), 1, "the stale series is gone: {info:?}");
    assert!(info[0].contains("running_lora_adapters=\"\""), "{info:?}");
    assert!(info[0].contains("waiting_lora_adapters=\"\""), "{info:?}");
}

#[tokio::test(start_paused = true)]
async fn max_loras_two_runs_two_adapters_together() {
    let sim = Simulator::new(lora_cfg(2));
    let t0 = Instant::now();
    let a = tokio::spawn(stream_chat_as(sim.clone(), t0, "a", "hi".into(), 5));
    let b = tokio::spawn(stream_chat_as(sim.clone(), t0, "b", "hi".into(), 5));
    sleep(MS).await;
    assert_eq!(sim.lora_stats().running_adapters, vec!["a", "b"]);
    assert!(lora_info(&sim).await[0].contains("running_lora_adapters=\"a,b\""));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a.first_token, b.first_token);
}

#[tokio::test(start_paused = true)]
async fn adapter_load_cost_is_paid_when_an_adapter_takes_a_slot() {
    for max_loras in [1, 2] {
        let sim = Simulator::new(SimConfig {
            lora_load: 7 * MS,
            ..lora_cfg(max_loras)
        });
        // "hi" is 8 prompt tokens: prefill 28 ms + a 12 ms step, plus 7 ms per adapter load.
        let mut ttft = Vec::new();
        for model in ["sim", "a", "a", "b", "a"] {
            let t0 = Instant::now();
            ttft.push(
                stream_chat_as(sim.clone(), t0, model, "hi".into(), 2)
                    .await
                    .first_token,
            );
        }
        // With one slot, b evicts a and a must load again; with two, both stay loaded.
        let last_a = if max_loras == 1 { 47 } else { 40 };
        assert_eq!(
            ttft,
            [40, 47, 40, 47, last_a].map(|ms| ms * MS),
            "max_loras {max_loras}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn fast_path_serves_adapters_without_residency_limit() {
    let sim = Simulator::new(SimConfig {
        lora_modules: vec!["a".into(), "b".into()],
        ..SimConfig::instant("sim")
    });
    // Both bodies unread: both sequences hold a slot at once despite max_loras = 1.
    let mut a = chat_body("a", 4, true);
    a["model"] = json!("a");
    let mut b = chat_body("b", 4, true);
    b["model"] = json!("b");
    let ra = call(&sim, "/v1/chat/completions", &[], &a).await;
    let rb = call(&sim, "/v1/chat/completions", &[], &b).await;
    assert_eq!(sim.lora_stats().running_adapters, vec!["a", "b"]);
    let (ea, _) = sse(&text(ra).await);
    let (eb, _) = sse(&text(rb).await);
    assert!(ea.iter().all(|e| e["model"] == "a"));
    assert!(eb.iter().all(|e| e["model"] == "b"));
    assert!(sim.lora_stats().running_adapters.is_empty());
}
