//! `fairgate bench --scenario prefix-shared|no-sharing|routing`: the routing strategies
//! (`round_robin`, `least_loaded`, `prefix_aware`) across simulator replicas that have a prefix
//! cache, after llm-d's "KV-cache wins you can see" benchmark (research notes §3, §7 R1/R2).
//!
//! # Setup
//! Each run starts, as child processes of this binary, [`REPLICAS`] simulators with real timing
//! (`fairgate sim`: [`MAX_NUM_SEQS`] sequences, decode step 10 ms + 250 µs per running sequence,
//! prefill 20 ms + 100 µs per uncached prompt token, so a 3,600-token prompt costs 380 ms
//! uncached and ~22 ms when cached; [`KV_CACHE_TOKENS`] of KV and prefix cache per replica,
//! blocks of 16 tokens) and one gateway (`fairgate serve`, SQLite in a temp dir, the four
//! simulators as backends of one model with `max_in_flight` = [`MAX_IN_FLIGHT`], a
//! 10-minute queue timeout, `[routing] strategy` set per run). One tenant, one key: fair share
//! is not what is measured.
//!
//! # Workloads (open loop, seeded Poisson arrivals, streamed chat requests)
//! - `prefix-shared` (llm-d's B2B-SaaS workload, scaled down): [`GROUPS`] groups, each with a
//!   system prompt of [`SYSTEM_TOKENS`] tokens and [`USERS`] users with a question of
//!   [`QUESTION_TOKENS`] tokens each (llm-d: 150 × 6,000-token prefixes × 5 users × 1,200-token
//!   questions on 8 pods). Each request picks one of the GROUPS × USERS prompts uniformly. The
//!   distinct prompt tokens (every group's prefix and every user's question) come to 73.6% of
//!   the cluster's KV, 2.9× one replica (llm-d: 73%, ~6× one of 8 pods): all of them cannot
//!   stay cached on one replica, a quarter of them can.
//! - `no-sharing`: the same shape (system + user message, same lengths) with unique text in
//!   every request, so nothing is ever cached.
//!
//! Output lengths are drawn uniformly from [`OUT_MIN`]..=[`OUT_MAX`] tokens (llm-d used 1,000;
//! scaled down with the run length). Fixed lengths would make requests admitted together
//! finish together forever, a simulator artefact that batches prefills in lockstep waves.
//!
//! Each run sends load for a warm-up (caches fill, queues reach their level) and then for
//! `--seconds`; only requests sent after the warm-up are measured, and every request still open
//! at the end is cut (no drain tail).
//!
//! # Metrics
//! - TTFT: from the request's scheduled arrival to its first content chunk. A request still
//!   waiting for its first token at the end counts with the time it had waited by then (a lower
//!   bound), so an overloaded strategy is not flattered by dropping its worst requests;
//! - throughput: output tokens, and prompt + output tokens, served in the measured window per
//!   second (each request's tokens spread uniformly over [first token, end], as in fairbench);
//! - prefix-cache hit rate: Δ`vllm:prefix_cache_hits_total` / Δ`vllm:prefix_cache_queries_total`
//!   summed over the replicas across the measured window (tokens, as vLLM counts them);
//! - queue imbalance: every 250 ms each replica's `vllm:num_requests_running` +
//!   `vllm:num_requests_waiting` is sampled; the imbalance is the mean over samples of
//!   max − min across replicas (in requests). Also the coefficient of variation (std / mean)
//!   of the requests each replica finished in the window, and the mean summed backend queue
//!   (`waiting`, llm-d's "vLLM wait");
//! - the gateway's routing decisions by reason (`fairgate_backend_picks_total`).
//!
//! # Targets (the issue)
//! - `prefix-shared`: `prefix_aware` TTFT p90 at least 5× lower than `round_robin`'s;
//! - `no-sharing`: `prefix_aware` no worse than `least_loaded`: TTFT p90 at most 10% higher
//!   and output tokens/s at least 95% of it (the slack is run-to-run noise on a shared machine).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::join_all;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

use crate::harness::http::{bench_client, scrape, tenant_key};
use crate::harness::metrics::{gauge, metric_sum};
use crate::harness::process::{self, flags, StackSpec, MODEL};
use crate::harness::report::{criterion, write_json};
use crate::harness::stats::{cv, mean, mean_spread, served_between, summary};
use crate::harness::stream::{
    chat_body, errors_warning, random_words, stream_one, usage_warning, Ctx, Rec,
};

/// Simulator replicas behind the gateway.
pub const REPLICAS: usize = 4;
/// Running batch limit of each replica (vLLM `--max-num-seqs`).
pub const MAX_NUM_SEQS: usize = 16;
/// The gateway's `max_in_flight` per backend: the batch plus a short backend queue.
pub const MAX_IN_FLIGHT: usize = 20;
/// KV-cache (and prefix-cache) capacity of each replica, in tokens.
pub const KV_CACHE_TOKENS: u64 = 81_920;
const BLOCK_SIZE: u64 = 16;
const PREFILL_OVERHEAD_MS: f64 = 20.0;
const PREFILL_PER_TOKEN_US: f64 = 100.0;
const DECODE_STEP_MS: f64 = 10.0;
const DECODE_PER_SEQ_US: f64 = 250.0;

/// Groups (llm-d's "customers") sharing a system prompt.
pub const GROUPS: usize = 40;
/// Users per group, each with a fixed question.
pub const USERS: usize = 5;
/// Tokens of a system prompt's text (llm-d: 6,000).
pub const SYSTEM_TOKENS: u64 = 3_000;
/// Tokens of a question's text (llm-d: 1,200).
pub const QUESTION_TOKENS: u64 = 600;
pub const OUT_MIN: u64 = 50;
pub const OUT_MAX: u64 = 150;
/// Default arrival rates (requests/s), found by running the benchmark: `round_robin` is
/// overloaded by recomputing prefixes on `prefix-shared`, `prefix_aware` is not; `no-sharing`
/// puts the replicas at ~80% of what they can prefill.
pub const SHARED_QPS: f64 = 16.0;
pub const NO_SHARING_QPS: f64 = 7.0;
/// How often the replicas' queues are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Which routing strategies to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategySel {
    RoundRobin,
    LeastLoaded,
    PrefixAware,
    All,
}

impl StrategySel {
    fn strategies(self) -> Vec<&'static str> {
        match self {
            StrategySel::RoundRobin => vec!["round_robin"],
            StrategySel::LeastLoaded => vec!["least_loaded"],
            StrategySel::PrefixAware => vec!["prefix_aware"],
            StrategySel::All => vec!["round_robin", "least_loaded", "prefix_aware"],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    PrefixShared,
    NoSharing,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::PrefixShared => "prefix-shared",
            Workload::NoSharing => "no-sharing",
        }
    }

    fn default_qps(self) -> f64 {
        match self {
            Workload::PrefixShared => SHARED_QPS,
            Workload::NoSharing => NO_SHARING_QPS,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteBenchArgs {
    pub workloads: Vec<Workload>,
    pub strategy: StrategySel,
    /// Measured seconds per run (after the warm-up).
    pub seconds: u64,
    pub seed: u64,
    /// Arrival rate for every workload run, instead of each workload's default.
    pub qps: Option<f64>,
    pub json: Option<PathBuf>,
}

/// Warm-up before the measured window: 40% of it, 3–15 s.
fn warmup_secs(seconds: f64) -> f64 {
    (0.4 * seconds).clamp(3.0, 15.0)
}

// ---------- workload ----------

/// Prompt tokens of a chat request with a system message and a user message of these text
/// lengths, by the simulator's chat framing.
fn prompt_tokens(system: u64, question: u64) -> u64 {
    use fairgate_sim::tokenizer::{ASSISTANT_PROMPT_TOKENS, MESSAGE_FRAMING_TOKENS};
    let framing = 2 * MESSAGE_FRAMING_TOKENS + ASSISTANT_PROMPT_TOKENS;
    system
        + question
        + (fairgate_sim::count_tokens("system") + fairgate_sim::count_tokens("user") + framing)
            as u64
}

/// Distinct prompt tokens of the shared workload: every group's prefix (up to the first token
/// of its question) once, and every question once.
fn shared_demand_tokens() -> u64 {
    let full = prompt_tokens(SYSTEM_TOKENS, QUESTION_TOKENS);
    // Per user: the question, its closing `<|im_end|>` and the assistant prompt; the rest (the
    // system message and the user message's opening) is the group's.
    let per_user = QUESTION_TOKENS + 1 + fairgate_sim::tokenizer::ASSISTANT_PROMPT_TOKENS as u64;
    let prefix = full - per_user;
    GROUPS as u64 * (prefix + USERS as u64 * per_user)
}

/// The texts of the shared workload: system prompts per group, questions per group and user.
struct SharedTexts {
    systems: Vec<String>,
    questions: Vec<Vec<String>>,
}

impl SharedTexts {
    fn new(seed: u64) -> SharedTexts {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_5A4E);
        let systems = (0..GROUPS)
            .map(|_| random_words(&mut rng, SYSTEM_TOKENS))
            .collect();
        let questions = (0..GROUPS)
            .map(|_| {
                (0..USERS)
                    .map(|_| random_words(&mut rng, QUESTION_TOKENS))
                    .collect()
            })
            .collect();
        SharedTexts { systems, questions }
    }
}

/// One scheduled request.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Arrival {
    /// Seconds since the run's start.
    at: f64,
    /// (group, user) for the shared workload; `None`: unique text.
    prompt: Option<(usize, usize)>,
    out: u64,
}

/// Seeded Poisson arrivals at `qps` over [0, `until`).
fn arrivals(workload: Workload, qps: f64, until: f64, seed: u64) -> Vec<Arrival> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xA111_CE00);
    let mut out = Vec::new();
    let mut t = 0.0;
    loop {
        // Exponential gap: −ln(U)/λ with U in (0, 1].
        let u: f64 = 1.0 - rng.gen::<f64>();
        t += -u.ln() / qps;
        if t >= until {
            return out;
        }
        let prompt = match workload {
            Workload::PrefixShared => Some((rng.gen_range(0..GROUPS), rng.gen_range(0..USERS))),
            Workload::NoSharing => None,
        };
        out.push(Arrival {
            at: t,
            prompt,
            out: rng.gen_range(OUT_MIN..=OUT_MAX),
        });
    }
}

fn system_user_body(system: &str, question: &str, out: u64) -> String {
    chat_body(
        json!([
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]),
        out,
    )
}

// ---------- pure analysis ----------

/// Σ Δhits / Σ Δqueries over replicas (NaN when nothing was queried).
fn hit_rate(before: &[Snapshot], after: &[Snapshot]) -> f64 {
    let d = |f: fn(&Snapshot) -> f64| -> f64 {
        before.iter().zip(after).map(|(b, a)| f(a) - f(b)).sum()
    };
    let queries = d(|s| s.queries);
    if queries <= 0.0 {
        f64::NAN
    } else {
        d(|s| s.hits) / queries
    }
}

// ---------- one run ----------

/// Counters of one replica at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    hits: f64,
    queries: f64,
    finished: f64,
}

async fn snapshots(client: &reqwest::Client, sims: &[String]) -> Vec<Snapshot> {
    join_all(sims.iter().map(|s| scrape(client, s)))
        .await
        .into_iter()
        .map(|page| {
            let page = page.unwrap_or_default();
            let m = |name| metric_sum(&page, name, "").unwrap_or(f64::NAN);
            Snapshot {
                hits: m("vllm:prefix_cache_hits_total"),
                queries: m("vllm:prefix_cache_queries_total"),
                finished: m("vllm:request_success_total"),
            }
        })
        .collect()
}

/// Routing decisions so far, by reason.
async fn picks(client: &reqwest::Client, gw: &str) -> Vec<(&'static str, f64)> {
    let page = scrape(client, gw).await.unwrap_or_default();
    fairgate_gateway::router::Reason::ALL
        .iter()
        .map(|r| {
            let label = format!("reason=\"{}\"", r.as_str());
            let n = metric_sum(&page, "fairgate_backend_picks_total", &label).unwrap_or(0.0);
            (r.as_str(), n)
        })
        .collect()
}

/// What the replicas looked like during the measured window.
#[derive(Debug, Default)]
struct Sampled {
    /// running + waiting of each replica, per sample.
    loads: Vec<Vec<f64>>,
    /// Σ waiting over replicas, per sample.
    waiting: Vec<f64>,
    before: Vec<Snapshot>,
    after: Vec<Snapshot>,
    picks_before: Vec<(&'static str, f64)>,
    picks_after: Vec<(&'static str, f64)>,
}

/// Snapshots at `from`, samples every [`SAMPLE_EVERY`] until `to`, snapshots at `to`.
async fn sample(
    client: reqwest::Client,
    sims: Vec<String>,
    gw: String,
    t0: Instant,
    from: f64,
    to: f64,
) -> Sampled {
    let at = |s: f64| tokio::time::Instant::from_std(t0 + Duration::from_secs_f64(s));
    tokio::time::sleep_until(at(from)).await;
    let mut out = Sampled {
        before: snapshots(&client, &sims).await,
        picks_before: picks(&client, &gw).await,
        ..Sampled::default()
    };
    let mut next = at(from);
    loop {
        next += SAMPLE_EVERY;
        if next >= at(to) {
            break;
        }
        tokio::time::sleep_until(next).await;
        let pages = join_all(sims.iter().map(|s| scrape(&client, s))).await;
        let mut loads = Vec::with_capacity(sims.len());
        let mut waiting = 0.0;
        for page in &pages {
            let Some(page) = page else { break };
            let r = gauge(page, "vllm:num_requests_running");
            let w = gauge(page, "vllm:num_requests_waiting");
            let (Some(r), Some(w)) = (r, w) else { break };
            loads.push(r + w);
            waiting += w;
        }
        if loads.len() == sims.len() {
            out.loads.push(loads);
            out.waiting.push(waiting);
        }
    }
    tokio::time::sleep_until(at(to)).await;
    out.after = snapshots(&client, &sims).await;
    out.picks_after = picks(&client, &gw).await;
    out
}

struct RunOut {
    strategy: &'static str,
    qps: f64,
    warmup: f64,
    end: f64,
    /// (scheduled arrival, record) of every request sent.
    recs: Vec<(f64, Rec)>,
    sampled: Sampled,
}

/// The replicas and a gateway routing by `strategy`; the admission limits are out of the way
/// (one tenant, open loop), so only routing decides where requests wait.
fn stack(strategy: &str, seed: u64) -> StackSpec<'static> {
    StackSpec {
        backend_extra: String::new(),
        model: MODEL,
        sims: (0..REPLICAS as u64)
            .map(|i| {
                flags(&[
                    ("--max-num-seqs", MAX_NUM_SEQS.to_string()),
                    ("--kv-cache-tokens", KV_CACHE_TOKENS.to_string()),
                    ("--block-size", BLOCK_SIZE.to_string()),
                    ("--prefill-overhead-ms", PREFILL_OVERHEAD_MS.to_string()),
                    ("--prefill-per-token-us", PREFILL_PER_TOKEN_US.to_string()),
                    ("--decode-step-ms", DECODE_STEP_MS.to_string()),
                    ("--decode-step-per-seq-us", DECODE_PER_SEQ_US.to_string()),
                    ("--seed", (seed + i).to_string()),
                ])
            })
            .collect(),
        config: format!(
            "[admission]\nqueue_timeout_ms = 600000\nmax_queue_per_tenant = 100000\n\
             max_queued = 100000\n[routing]\nstrategy = \"{strategy}\"\n"
        ),
        max_in_flight: MAX_IN_FLIGHT,
        gateway_log: true,
    }
}

async fn run_one(
    workload: Workload,
    strategy: &'static str,
    qps: f64,
    seconds: f64,
    seed: u64,
    texts: &Arc<SharedTexts>,
) -> anyhow::Result<RunOut> {
    let client = bench_client()?;
    let name = format!("routebench-{strategy}-{seed}");
    let stack = process::start(&name, stack(strategy, seed), &client).await?;
    let (gw, sims) = (&stack.gateway, &stack.sims);
    let warmup = warmup_secs(seconds);
    let end = warmup + seconds;
    let result = async {
        let key = tenant_key(&client, gw, "bench", 1).await?;
        // The gateway scrapes each backend's KV capacity (its prefix index size) and health
        // on its own schedule; give it one scrape interval before the load.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let schedule = arrivals(workload, qps, end, seed);
        let ctx = Arc::new(Ctx::new(&client, gw, end));
        let t0 = ctx.t0;
        let sampler = tokio::spawn(sample(
            client.clone(),
            sims.clone(),
            gw.clone(),
            t0,
            warmup,
            end,
        ));
        let key = Arc::new(key);
        let mut handles = Vec::with_capacity(schedule.len());
        for (i, a) in schedule.into_iter().enumerate() {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(a.at)).into()).await;
            let (ctx, key, texts) = (ctx.clone(), key.clone(), texts.clone());
            handles.push(tokio::spawn(async move {
                let body = match a.prompt {
                    Some((g, u)) => {
                        system_user_body(&texts.systems[g], &texts.questions[g][u], a.out)
                    }
                    None => {
                        let mut rng = StdRng::seed_from_u64(
                            seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        );
                        let system = random_words(&mut rng, SYSTEM_TOKENS);
                        let question = random_words(&mut rng, QUESTION_TOKENS);
                        system_user_body(&system, &question, a.out)
                    }
                };
                let rec = Rec {
                    tenant: a.prompt.map_or(0, |(g, _)| g),
                    expected_prompt: prompt_tokens(SYSTEM_TOKENS, QUESTION_TOKENS),
                    ..Rec::default()
                };
                let mut rec = stream_one(&ctx, &key, body, rec).await;
                // Open loop: latency counts from the scheduled arrival.
                rec.sent = a.at;
                (a.at, rec)
            }));
        }
        let mut recs = Vec::with_capacity(handles.len());
        for h in handles {
            if let Ok(r) = h.await {
                recs.push(r);
            }
        }
        let sampled = sampler.await.context("sampler")?;
        anyhow::Ok(RunOut {
            strategy,
            qps,
            warmup,
            end,
            recs,
            sampled,
        })
    }
    .await;
    stack.stop().await;
    result
}

// ---------- report ----------

#[derive(Debug, Clone)]
struct Report {
    strategy: &'static str,
    qps: f64,
    window: (f64, f64),
    sent: usize,
    completed: usize,
    /// Measured requests with no first token by the end.
    queued_at_end: usize,
    errors: usize,
    ttft_ms: (f64, f64, f64, f64),
    out_tok_s: f64,
    total_tok_s: f64,
    hit_rate: f64,
    imbalance: f64,
    served: Vec<f64>,
    served_cv: f64,
    mean_waiting: f64,
    mean_load: Vec<f64>,
    picks: Vec<(&'static str, f64)>,
    warnings: Vec<String>,
}

fn analyse(run: &RunOut) -> Report {
    let (w0, w1) = (run.warmup, run.end);
    let measured: Vec<&Rec> = run
        .recs
        .iter()
        .filter(|(at, _)| *at >= w0)
        .map(|(_, r)| r)
        .collect();
    let mut warnings: Vec<String> = errors_warning(measured.iter().copied())
        .into_iter()
        .collect();
    let ttfts: Vec<f64> = measured
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| match r.first {
            Some(f) => (f - r.sent) * 1e3,
            // Still waiting at the end: what it had waited (a lower bound).
            None => (w1 - r.sent).max(0.0) * 1e3,
        })
        .collect();
    warnings.extend(usage_warning(measured.iter().copied()));
    // Tokens served inside the window, by every request (warm-up ones too).
    let mut outs = Vec::new();
    let mut alls = Vec::new();
    for (_, r) in &run.recs {
        let Some(first) = r.first else { continue };
        let (i, o) = r.tokens();
        outs.push((o, first, r.end));
        alls.push((i + o, first, r.end));
    }
    let span = w1 - w0;
    let s = &run.sampled;
    let served: Vec<f64> = s
        .before
        .iter()
        .zip(&s.after)
        .map(|(b, a)| a.finished - b.finished)
        .collect();
    let mean_load = (0..REPLICAS)
        .map(|i| mean(&s.loads.iter().map(|l| l[i]).collect::<Vec<_>>()))
        .collect();
    let picks = s
        .picks_after
        .iter()
        .zip(&s.picks_before)
        .map(|((r, a), (_, b))| (*r, a - b))
        .filter(|(_, n)| *n > 0.0)
        .collect();
    Report {
        strategy: run.strategy,
        qps: run.qps,
        window: (w0, w1),
        sent: measured.len(),
        completed: measured.iter().filter(|r| r.complete).count(),
        queued_at_end: measured
            .iter()
            .filter(|r| r.error.is_none() && r.first.is_none())
            .count(),
        errors: measured.iter().filter(|r| r.error.is_some()).count(),
        ttft_ms: summary(&ttfts),
        out_tok_s: served_between(&outs, w0, w1) / span,
        total_tok_s: served_between(&alls, w0, w1) / span,
        hit_rate: hit_rate(&s.before, &s.after),
        imbalance: mean_spread(&s.loads),
        served_cv: cv(&served),
        served,
        mean_waiting: mean(&s.waiting),
        mean_load,
        picks,
        warnings,
    }
}

fn print_runs(workload: Workload, seconds: f64, reports: &[Report]) {
    let title = match workload {
        Workload::PrefixShared => format!(
            "prefix-shared: {GROUPS} groups × {SYSTEM_TOKENS}-token system prompt × {USERS} users × {QUESTION_TOKENS}-token question"
        ),
        Workload::NoSharing => format!(
            "no-sharing: unique {SYSTEM_TOKENS}-token system prompt + {QUESTION_TOKENS}-token question per request"
        ),
    };
    println!("\n## {title}\n");
    let (w0, w1) = reports.first().map(|r| r.window).unwrap_or_default();
    println!(
        "{REPLICAS} replicas, Poisson {} req/s, output {OUT_MIN}–{OUT_MAX} tokens, warm-up {w0:.0} s, measured {seconds:.0} s ({w0:.0}–{w1:.0} s)",
        reports.first().map_or(f64::NAN, |r| r.qps),
    );
    println!();
    println!("| strategy | sent | done | queued at end | err | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | TTFT mean ms | out tok/s | total tok/s | prefix hit rate | queue imbalance | served per replica (CV) | mean backend waiting |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let served: Vec<String> = r.served.iter().map(|v| format!("{v:.0}")).collect();
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}% | {:.2} | {} ({:.2}) | {:.2} |",
            r.strategy,
            r.sent,
            r.completed,
            r.queued_at_end,
            r.errors,
            r.ttft_ms.0,
            r.ttft_ms.1,
            r.ttft_ms.2,
            r.ttft_ms.3,
            r.out_tok_s,
            r.total_tok_s,
            100.0 * r.hit_rate,
            r.imbalance,
            served.join("/"),
            r.served_cv,
            r.mean_waiting,
        );
    }
    println!();
    println!("queue imbalance = mean over 250 ms samples of max − min across replicas of running + waiting requests; served = requests each replica finished in the window, CV = std/mean; TTFT of a request still waiting at the end = its wait so far (lower bound)");
    for r in reports {
        let picks: Vec<String> = r.picks.iter().map(|(k, n)| format!("{k} {n:.0}")).collect();
        let loads: Vec<String> = r.mean_load.iter().map(|v| format!("{v:.1}")).collect();
        println!(
            "{}: routing decisions in the window: {}; mean running+waiting per replica: {}",
            r.strategy,
            picks.join(", "),
            loads.join(" / ")
        );
        for w in &r.warnings {
            println!("warning ({}): {w}", r.strategy);
        }
    }
}

fn report_json(r: &Report) -> Value {
    json!({
        "strategy": r.strategy,
        "qps": r.qps,
        "window_s": [r.window.0, r.window.1],
        "sent": r.sent,
        "completed": r.completed,
        "queued_at_end": r.queued_at_end,
        "errors": r.errors,
        "ttft_ms": {"p50": r.ttft_ms.0, "p90": r.ttft_ms.1, "p99": r.ttft_ms.2, "mean": r.ttft_ms.3},
        "output_tok_s": r.out_tok_s,
        "total_tok_s": r.total_tok_s,
        "prefix_cache_hit_rate": r.hit_rate,
        "queue_imbalance_mean_max_minus_min": r.imbalance,
        "served_per_replica": r.served,
        "served_cv": r.served_cv,
        "mean_backend_waiting": r.mean_waiting,
        "mean_running_plus_waiting_per_replica": r.mean_load,
        "routing_decisions": r.picks.iter().map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "warnings": r.warnings,
    })
}

fn find<'a>(reports: &'a [Report], strategy: &str) -> Option<&'a Report> {
    reports.iter().find(|r| r.strategy == strategy)
}

fn criteria(workload: Workload, reports: &[Report]) -> Vec<Value> {
    let mut out = Vec::new();
    let pa = find(reports, "prefix_aware");
    match workload {
        Workload::PrefixShared => {
            if let (Some(pa), Some(rr)) = (pa, find(reports, "round_robin")) {
                let ratio = rr.ttft_ms.1 / pa.ttft_ms.1;
                criterion(
                    &mut out,
                    "prefix-shared: TTFT p90 round_robin / prefix_aware ≥ 5×",
                    ratio >= 5.0,
                    format!(
                        "round_robin {:.0} ms / prefix_aware {:.0} ms = {ratio:.1}×",
                        rr.ttft_ms.1, pa.ttft_ms.1
                    ),
                );
            }
        }
        Workload::NoSharing => {
            if let (Some(pa), Some(ll)) = (pa, find(reports, "least_loaded")) {
                let ttft = pa.ttft_ms.1 / ll.ttft_ms.1;
                let tput = pa.out_tok_s / ll.out_tok_s;
                criterion(
                    &mut out,
                    "no-sharing: prefix_aware no worse than least_loaded (TTFT p90 ≤ 1.1×, output tok/s ≥ 0.95×)",
                    ttft <= 1.1 && tput >= 0.95,
                    format!(
                        "TTFT p90 {:.0} vs {:.0} ms ({ttft:.2}×), output {:.0} vs {:.0} tok/s ({tput:.3}×)",
                        pa.ttft_ms.1, ll.ttft_ms.1, pa.out_tok_s, ll.out_tok_s
                    ),
                );
            }
        }
    }
    out
}

pub async fn run(a: RouteBenchArgs) -> anyhow::Result<()> {
    let seconds = a.seconds.max(5) as f64;
    let strategies = a.strategy.strategies();
    let demand = shared_demand_tokens();
    let cluster = REPLICAS as u64 * KV_CACHE_TOKENS;
    println!(
        "# fairgate routing bench (seed {}; {REPLICAS} sims: {MAX_NUM_SEQS} seqs, KV {KV_CACHE_TOKENS} tokens, blocks of {BLOCK_SIZE}, prefill {PREFILL_OVERHEAD_MS} ms + {PREFILL_PER_TOKEN_US} µs/uncached token, decode {DECODE_STEP_MS} ms + {DECODE_PER_SEQ_US} µs/seq; gateway max_in_flight {MAX_IN_FLIGHT} per backend)",
        a.seed
    );
    println!(
        "shared-prefix demand {demand} distinct prompt tokens = {:.1}% of cluster KV, {:.2}× one replica",
        100.0 * demand as f64 / cluster as f64,
        demand as f64 / KV_CACHE_TOKENS as f64
    );
    let texts = Arc::new(SharedTexts::new(a.seed));
    let mut results = serde_json::Map::new();
    for &w in &a.workloads {
        let qps = a.qps.unwrap_or(w.default_qps());
        let mut reports = Vec::new();
        for &s in &strategies {
            eprintln!(
                "routebench: {} with {s} at {qps} req/s: {:.0} s warm-up + {seconds} s…",
                w.name(),
                warmup_secs(seconds)
            );
            let run = run_one(w, s, qps, seconds, a.seed, &texts).await?;
            reports.push(analyse(&run));
        }
        print_runs(w, seconds, &reports);
        let crit = criteria(w, &reports);
        results.insert(
            w.name().into(),
            json!({
                "qps": qps,
                "runs": reports.iter().map(report_json).collect::<Vec<_>>(),
                "criteria": crit,
            }),
        );
    }
    if let Some(path) = &a.json {
        let doc = json!({
            "seed": a.seed,
            "seconds": seconds,
            "warmup_s": warmup_secs(seconds),
            "sim": {
                "replicas": REPLICAS, "max_num_seqs": MAX_NUM_SEQS,
                "kv_cache_tokens": KV_CACHE_TOKENS, "block_size": BLOCK_SIZE,
                "prefill_overhead_ms": PREFILL_OVERHEAD_MS,
                "prefill_per_token_us": PREFILL_PER_TOKEN_US,
                "decode_step_ms": DECODE_STEP_MS, "decode_step_per_seq_us": DECODE_PER_SEQ_US,
            },
            "gateway": {"max_in_flight_per_backend": MAX_IN_FLIGHT},
            "workload": {
                "groups": GROUPS, "users_per_group": USERS,
                "system_tokens": SYSTEM_TOKENS, "question_tokens": QUESTION_TOKENS,
                "prompt_tokens": prompt_tokens(SYSTEM_TOKENS, QUESTION_TOKENS),
                "output_tokens": [OUT_MIN, OUT_MAX],
                "shared_demand_tokens": demand,
                "shared_demand_of_cluster_kv": demand as f64 / cluster as f64,
            },
            "scenarios": results,
        });
        write_json(path, &doc)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate_sums_deltas_over_replicas() {
        let snap = |hits, queries| Snapshot {
            hits,
            queries,
            finished: 0.0,
        };
        let before = [snap(100.0, 1000.0), snap(0.0, 0.0)];
        let after = [snap(400.0, 1400.0), snap(100.0, 600.0)];
        assert!((hit_rate(&before, &after) - 0.4).abs() < 1e-12);
        assert!(hit_rate(&before, &before).is_nan());
    }

    #[test]
    fn arrivals_are_seeded_poisson() {
        let a = arrivals(Workload::PrefixShared, 20.0, 100.0, 7);
        assert_eq!(a, arrivals(Workload::PrefixShared, 20.0, 100.0, 7));
        // 2,000 expected; a Poisson count is within ±5 σ (±224).
        assert!((1_776..=2_224).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().all(|x| (OUT_MIN..=OUT_MAX).contains(&x.out)));
        assert!(a
            .iter()
            .all(|x| x.prompt.is_some_and(|(g, u)| g < GROUPS && u < USERS)));
        assert!(arrivals(Workload::NoSharing, 5.0, 10.0, 1)
            .iter()
            .all(|x| x.prompt.is_none()));
    }

    #[test]
    fn prompts_have_the_intended_token_counts() {
        let texts = SharedTexts::new(3);
        for t in &texts.systems {
            assert_eq!(fairgate_sim::count_tokens(t) as u64, SYSTEM_TOKENS);
        }
        assert_eq!(
            fairgate_sim::count_tokens(&texts.questions[1][2]) as u64,
            QUESTION_TOKENS
        );
        // system: 3 framing + "syst","em"; user: 3 + "user"; assistant prompt 3.
        assert_eq!(prompt_tokens(SYSTEM_TOKENS, QUESTION_TOKENS), 3_612);
        // The llm-d proportion: distinct prompt tokens ≈ 73% of the cluster's KV, several
        // times one replica, and a quarter of them fit on one.
        let demand = shared_demand_tokens() as f64;
        let frac = demand / (REPLICAS as u64 * KV_CACHE_TOKENS) as f64;
        assert!((0.70..=0.76).contains(&frac), "{frac}");
        assert!(demand / 4.0 < KV_CACHE_TOKENS as f64);
    }
}
