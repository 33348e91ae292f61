//! The fair-share load: starts the simulator and a gateway in one admission mode, makes the
//! tenants, and runs every tenant's streams as closed loops (ramped, cut at the deadline)
//! while sampling the simulator's batch, so the report can say what the backend was doing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

use super::scenarios::{
    Load, TenantSpec, DECODE_PER_SEQ_US, DECODE_STEP_MS, PREFILL_OVERHEAD_MS, PREFILL_PER_TOKEN_US,
    SLOTS,
};
use crate::harness::http::{bench_client, scrape, tenant_key};
use crate::harness::metrics::gauge;
use crate::harness::process::{self, flags, StackSpec, MODEL};
use crate::harness::stream::{chat_body, random_words, stream_one, Ctx, Rec};

/// How the simulated engine schedules: vLLM's FCFS default, or its priority policy (the
/// gateway then sends fair-share positions), optionally with `--max-num-seqs` above the
/// gateway's `max_in_flight` (declared to the gateway as `engine_max_seqs`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Engine {
    pub priority: bool,
    pub max_seqs: Option<usize>,
}

/// Everything one run in one mode recorded.
pub(crate) struct RunOut {
    pub(crate) mode: &'static str,
    pub(crate) probe: Vec<Rec>,
    pub(crate) recs: Vec<Rec>,
    /// Mean (running, waiting) of the simulator over the steady window.
    pub(crate) sim_load: (f64, f64),
}

/// The flags of the timed simulator every fair-share run uses (also the replicas benchmark's).
pub(crate) fn sim_flags(seed: u64, engine: Engine) -> Vec<String> {
    let policy = if engine.priority { "priority" } else { "fcfs" };
    flags(&[
        (
            "--max-num-seqs",
            engine.max_seqs.unwrap_or(SLOTS).to_string(),
        ),
        ("--scheduling-policy", policy.to_owned()),
        ("--decode-step-ms", DECODE_STEP_MS.to_string()),
        ("--decode-step-per-seq-us", DECODE_PER_SEQ_US.to_string()),
        ("--prefill-overhead-ms", PREFILL_OVERHEAD_MS.to_string()),
        ("--prefill-per-token-us", PREFILL_PER_TOKEN_US.to_string()),
        ("--seed", seed.to_string()),
    ])
}

/// The simulator and a gateway in `mode` with one backend of [`SLOTS`] slots, so the queue
/// forms in the gateway and the admission mode decides who runs next.
fn stack(mode: &str, seed: u64, engine: Engine) -> StackSpec<'static> {
    let mut extra = String::new();
    if engine.priority {
        extra.push_str("scheduling_policy = \"priority\"\n");
        if let Some(n) = engine.max_seqs {
            extra.push_str(&format!("engine_max_seqs = {n}\n"));
        }
    }
    StackSpec {
        model: MODEL,
        sims: vec![sim_flags(seed, engine)],
        config: format!("[admission]\nmode = \"{mode}\"\nqueue_timeout_ms = 600000\n"),
        max_in_flight: SLOTS,
        backend_extra: extra,
        gateway_log: true,
    }
}

/// Chat body with a prompt of exactly `prompt` simulator tokens (≥ 8).
fn body(rng: &mut StdRng, prompt: u64, out: u64) -> (String, u64) {
    let text = random_words(rng, prompt.saturating_sub(7).max(1));
    let expected = fairgate_sim::count_tokens(&text) as u64 + 7;
    let b = chat_body(json!([{"role": "user", "content": text}]), out);
    (b, expected)
}

/// Closed loop of one stream: request after request from `start_at` until the deadline.
async fn worker(
    ctx: Arc<Ctx>,
    tenant: usize,
    spec: TenantSpec,
    key: String,
    start_at: f64,
    seed: u64,
) -> Vec<Rec> {
    tokio::time::sleep_until((ctx.t0 + Duration::from_secs_f64(start_at)).into()).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    while Instant::now() < ctx.deadline {
        if spec.think_ms > 0.0 {
            let pause = rng.gen_range(0.0..spec.think_ms);
            tokio::time::sleep(Duration::from_secs_f64(pause / 1e3)).await;
            if Instant::now() >= ctx.deadline {
                break;
            }
        }
        let out_tokens = match spec.out_min {
            Some(lo) => rng.gen_range(lo..=spec.out.max(lo)),
            None => spec.out,
        };
        let (b, expected) = body(&mut rng, spec.prompt, out_tokens);
        let rec = Rec {
            tenant,
            expected_prompt: expected,
            ..Rec::default()
        };
        let rec = stream_one(&ctx, &key, b, rec).await;
        if rec.error.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out.push(rec);
    }
    out
}

/// Runs `tenants` (indexes into `load.tenants`) for `seconds`; returns every request.
async fn drive(
    client: &reqwest::Client,
    gw: &str,
    load: &Load,
    keys: &[String],
    tenants: &[usize],
    seconds: f64,
    seed: u64,
) -> Vec<Rec> {
    let ctx = Arc::new(Ctx::new(client, gw, seconds));
    drive_routed(&[ctx], |_, _| 0, load, keys, tenants, seed).await
}

/// [`drive`] against several gateways that share one start and deadline: stream `s` of
/// tenant `i` sends every request to `ctxs[route(i, s)]`.
pub(crate) async fn drive_routed(
    ctxs: &[Arc<Ctx>],
    route: impl Fn(usize, usize) -> usize,
    load: &Load,
    keys: &[String],
    tenants: &[usize],
    seed: u64,
) -> Vec<Rec> {
    // Streams in round-robin order over tenants, so the ramp mixes them.
    let mut order = Vec::new();
    let most = tenants
        .iter()
        .map(|&i| load.tenants[i].streams)
        .max()
        .unwrap_or(0);
    for s in 0..most {
        for &i in tenants {
            if s < load.tenants[i].streams {
                order.push((i, s));
            }
        }
    }
    let mut handles = Vec::new();
    let mut ramped = 0usize;
    for (i, s) in order {
        let spec = load.tenants[i].clone();
        let start_at = if spec.ramped {
            ramped += 1;
            (ramped - 1).min(SLOTS) as f64 * load.ramp_step
        } else {
            0.0
        };
        let wseed = seed ^ ((i as u64) << 32) ^ (s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let gateway = route(i, s) % ctxs.len();
        let run = tokio::spawn(worker(
            ctxs[gateway].clone(),
            i,
            spec,
            keys[i].clone(),
            start_at,
            wseed,
        ));
        handles.push((gateway, run));
    }
    let mut recs = Vec::new();
    for (gateway, h) in handles {
        if let Ok(v) = h.await {
            recs.extend(v.into_iter().map(|r| Rec { gateway, ..r }));
        }
    }
    recs
}

/// Polls the simulator's running/waiting gauges between `from` and `to` seconds.
async fn sample_sim(client: reqwest::Client, sim: String, from: f64, to: f64) -> (f64, f64) {
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(from)).await;
    let (mut run, mut wait, mut n) = (0.0, 0.0, 0.0);
    while t0.elapsed().as_secs_f64() < to {
        if let Some(page) = scrape(&client, &sim).await {
            if let (Some(r), Some(w)) = (
                gauge(&page, "vllm:num_requests_running"),
                gauge(&page, "vllm:num_requests_waiting"),
            ) {
                run += r;
                wait += w;
                n += 1.0;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if n == 0.0 {
        (f64::NAN, f64::NAN)
    } else {
        (run / n, wait / n)
    }
}

/// One run of `load` in admission `mode`: a fresh simulator and gateway, the unloaded probe
/// if the load has one, then the load itself.
pub(super) async fn run_load(
    load: &Load,
    mode: &'static str,
    seed: u64,
    engine: Engine,
) -> anyhow::Result<RunOut> {
    let client = bench_client()?;
    let name = format!("fairbench-{mode}-{seed}");
    let stack = process::start(&name, stack(mode, seed, engine), &client).await?;
    let gw = &stack.gateway;
    let result = async {
        let mut keys = Vec::new();
        for t in &load.tenants {
            keys.push(tenant_key(&client, gw, t.name, t.weight).await?);
        }
        let probe = match load.probe {
            Some((i, secs)) => drive(&client, gw, load, &keys, &[i], secs, seed ^ 0xABCD).await,
            None => Vec::new(),
        };
        let all: Vec<usize> = (0..load.tenants.len()).collect();
        let (w0, w1) = load.window();
        let sampler = tokio::spawn(sample_sim(client.clone(), stack.sims[0].clone(), w0, w1));
        let recs = drive(&client, gw, load, &keys, &all, load.seconds, seed).await;
        let sim_load = sampler.await.unwrap_or((f64::NAN, f64::NAN));
        anyhow::Ok(RunOut {
            mode,
            probe,
            recs,
            sim_load,
        })
    }
    .await;
    stack.stop().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_have_the_requested_size() {
        let mut rng = StdRng::seed_from_u64(1);
        for p in [32, 128, 512] {
            let (_, expected) = body(&mut rng, p, 8);
            assert_eq!(expected, p);
        }
    }
}
