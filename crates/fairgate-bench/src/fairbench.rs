//! `fairgate bench --scenario …`: fair-share admission measured end to end, `fair` vs `fifo`.
//!
//! # Method
//! Each run starts, as child processes of this binary, a simulator with real (non-instant)
//! timing (`fairgate sim`: 16 sequences, 5 ms + 50 µs/sequence decode steps, 2 ms + 20 µs/token
//! prefill, fixed seed) and a gateway (`fairgate serve`, SQLite in a temp dir) whose one backend
//! has `max_in_flight` = the simulator's `max_num_seqs`, so the queue forms in the gateway and
//! `admission.mode` decides who runs next (`queue_timeout_ms` is 10 minutes, so nothing is
//! shed). Tenants and keys are made through the admin API. Every tenant runs a closed loop of
//! streaming chat requests (`stream_options.include_usage`) for `--seconds`; at the deadline
//! every request still open is cut and keeps what it was served so far (prompt + content chunks
//! seen), so there is no drain tail. Prompts are seeded random short words, one simulator token
//! each (a chat prompt is content + 7 framing tokens), unique per request so the prefix cache
//! does not help anyone.
//!
//! Per request the client logs tenant, send time, first content chunk, last chunk (finish), and
//! prompt/completion tokens (the final usage chunk; chunk count for cut requests).
//!
//! # Metrics (VTC, Sheng et al. OSDI '24; research notes §1 and §7)
//! - cost of a request = in + 2·out, spread uniformly over [first token, finish];
//! - service of a tenant at t = the sum of that spread up to t, divided by the tenant's weight
//!   (“normalised”; weights are 1 except in `weighted`);
//! - accumulated service difference at t = max − min of service since 0 over the backlogged
//!   tenants; reported at 20/40/60/80/100 % of the run, with its least-squares slope (cost/s)
//!   over the steady window. Bounded (slope ≈ 0) under a fair scheduler, growing under FIFO;
//! - steady window = [max(20 % of the run, end of the start ramp), end of the run]: shares,
//!   throughput use service inside it, TTFT percentiles the requests sent after the ramp
//!   whose first token came inside it (a request still queued at the end has no TTFT; the
//!   tables count those as "queued");
//! - shares: a tenant's cost in the window over everyone's; share error = |share − w/Σw| /
//!   (w/Σw); throughput = (in + out) tokens served in the window per second;
//! - U_gw = max(longest prompt, 2 · slots · longest prompt+output): the VTC bound is 2·U_gw.
//!
//! # Scenarios
//! - `weighted`: weights 1:2:4, 24 streams each, 128 in / 128 out. Pass: share error ≤ 5 %.
//! - `interactive`: `light` sends one 32/32 request at a time beside `heavy`'s 48 streams of
//!   64/512 (3× the 16 slots), pausing 0–`light_think_ms` before each. The light tenant's
//!   TTFT is first measured alone. Pass (fair): beside the flood ≤ 1.5× alone at p50 and
//!   ≤ 3× at p99; with both modes, fifo p99 / fair p99 ≥ 10.
//! - `asymmetry`: A 32 streams of 512/32 vs B 24 streams of 32/512. Pass (fair): max
//!   difference ≤ 2·U_gw and |slope| × window ≤ U_gw (no trend). (Under `fair` A's streams come back
//!   together, so the difference is a sawtooth of about A's streams × its request cost.)
//! - `throughput`: the `weighted` load; pass: fair/fifo tokens/s within 3 %.
//!
//! The benchmark is split by what each part owns: `scenarios` (the loads), `driver` (the
//! processes and the closed-loop streams), `report` (metrics, tables, JSON); the process,
//! HTTP, SSE and statistics helpers it shares with the other benchmarks are in
//! [`crate::harness`].
//!
//! Identical simulated requests started together finish on the same step forever, so slots
//! would free in lockstep waves (a sim artefact that makes a newcomer wait a whole wave); the
//! first 16 streams of `weighted` and `interactive` therefore start one service time / 16
//! apart, and the rest after them.

pub(crate) mod driver;
pub(crate) mod report;
pub(crate) mod scenarios;

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::harness::report::{criterion, write_json};
use driver::run_load;
pub use driver::Engine;
use report::{analyse, find, print_runs, run_json, RunReport};
use scenarios::{
    asymmetry_load, interactive_load, interactive_varied_load, weighted_load, Load,
    DECODE_PER_SEQ_US, DECODE_STEP_MS, PREFILL_OVERHEAD_MS, PREFILL_PER_TOKEN_US, SLOTS,
};

/// Which scenario to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Weighted,
    Interactive,
    /// `interactive` with heavy streams of 50–500 output tokens (finishes not in waves).
    InteractiveVaried,
    Asymmetry,
    Throughput,
    All,
}

/// Which admission modes to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeSel {
    Fair,
    Fifo,
    Both,
}

#[derive(Debug, Clone)]
pub struct FairBenchArgs {
    pub scenario: Scenario,
    pub mode: ModeSel,
    /// Seconds of load per run.
    pub seconds: u64,
    pub seed: u64,
    pub json: Option<PathBuf>,
    pub engine: Engine,
    /// Interactive scenarios: the light tenant's pause before each request, uniform in
    /// `0..light_think_ms` (0: back to back).
    pub light_think_ms: f64,
}

async fn run_modes(
    load: &Load,
    modes: &[&'static str],
    seed: u64,
    engine: Engine,
) -> anyhow::Result<Vec<RunReport>> {
    let mut out = Vec::new();
    for &m in modes {
        eprintln!("fairbench: running {} s in {m} mode…", load.seconds);
        let run = run_load(load, m, seed, engine).await?;
        out.push(analyse(load, &run));
    }
    Ok(out)
}

fn throughput_criteria(runs: &[RunReport], crit: &mut Vec<Value>) {
    if let (Some(f), Some(q)) = (find(runs, "fair"), find(runs, "fifo")) {
        let ratio = f.throughput / q.throughput;
        criterion(
            crit,
            "throughput fair/fifo within 3%",
            (ratio - 1.0).abs() <= 0.03,
            format!(
                "fair {:.0} tok/s, fifo {:.0} tok/s, ratio {ratio:.3}",
                f.throughput, q.throughput
            ),
        );
    }
}

/// The light tenant's TTFT beside the flood against its TTFT alone (same run), and fifo
/// against fair when both ran.
fn interactive_criteria(runs: &[RunReport]) -> Vec<Value> {
    let mut crit = Vec::new();
    for r in runs {
        if let Some((p50, p99, n)) = r.probe_ttft {
            let light = &r.tenants[0];
            println!(
                "{}: light tenant alone: TTFT p50 {p50:.1} ms, p99 {p99:.1} ms ({n} requests); under load: p50 {:.1} ms, p99 {:.1} ms ({} requests)",
                r.mode, light.ttft_p50, light.ttft_p99, light.ttft_n
            );
            if r.mode == "fair" {
                let (r50, r99) = (light.ttft_p50 / p50, light.ttft_p99 / p99);
                criterion(
                    &mut crit,
                    "fair: light TTFT beside the flood ≤ 3× alone (p99) and ≤ 1.5× (p50)",
                    r99 <= 3.0 && r50 <= 1.5,
                    format!("p50 {r50:.2}×, p99 {r99:.2}×"),
                );
            }
        }
    }
    if let (Some(f), Some(q)) = (find(runs, "fair"), find(runs, "fifo")) {
        let ratio = q.tenants[0].ttft_p99 / f.tenants[0].ttft_p99;
        criterion(
            &mut crit,
            "light TTFT p99 fifo / fair ≥ 10×",
            ratio >= 10.0,
            format!(
                "fifo {:.1} ms / fair {:.1} ms = {ratio:.1}×",
                q.tenants[0].ttft_p99, f.tenants[0].ttft_p99
            ),
        );
    }
    crit
}

pub async fn run(a: FairBenchArgs) -> anyhow::Result<()> {
    let seconds = a.seconds.max(5) as f64;
    let modes: &[&'static str] = match a.mode {
        ModeSel::Fair => &["fair"],
        ModeSel::Fifo => &["fifo"],
        ModeSel::Both => &["fair", "fifo"],
    };
    let want = |s: Scenario| a.scenario == s || a.scenario == Scenario::All;
    println!(
        "# fairgate fair-share bench (seed {}, sim: {SLOTS} seqs, decode {DECODE_STEP_MS} ms + {DECODE_PER_SEQ_US} µs/seq, prefill {PREFILL_OVERHEAD_MS} ms + {PREFILL_PER_TOKEN_US} µs/token; interactive light tenant pauses 0–{} ms before each request)",
        a.seed, a.light_think_ms
    );
    let mut results = serde_json::Map::new();
    let mut weighted_runs: Option<Vec<RunReport>> = None;

    if want(Scenario::Weighted) {
        let load = weighted_load(seconds);
        let runs = run_modes(&load, modes, a.seed, a.engine).await?;
        print_runs("weighted: 1:2:4, all backlogged", &load, &runs);
        let mut crit = Vec::new();
        for r in &runs {
            let worst = r.tenants.iter().map(|t| t.share_err).fold(0.0, f64::max);
            criterion(
                &mut crit,
                &format!(
                    "{}: every |share − weight share| / weight share ≤ 5%",
                    r.mode
                ),
                worst <= 0.05,
                format!("worst {:.1}%", 100.0 * worst),
            );
        }
        results.insert(
            "weighted".into(),
            json!({"runs": runs.iter().map(run_json).collect::<Vec<_>>(), "criteria": crit}),
        );
        weighted_runs = Some(runs);
    }

    for (scenario, key, title, load) in [
        (
            Scenario::Interactive,
            "interactive",
            "interactive: one sequential light tenant beside a 3× flood",
            interactive_load(seconds, a.light_think_ms),
        ),
        (
            Scenario::InteractiveVaried,
            "interactive_varied",
            "interactive, varied: the flood's streams are 50–500 tokens long",
            interactive_varied_load(seconds, a.light_think_ms),
        ),
    ] {
        // `all` runs the original scenario; the varied one on request.
        if a.scenario != scenario
            && !(a.scenario == Scenario::All && scenario == Scenario::Interactive)
        {
            continue;
        }
        let runs = run_modes(&load, modes, a.seed, a.engine).await?;
        print_runs(title, &load, &runs);
        let crit = interactive_criteria(&runs);
        results.insert(
            key.into(),
            json!({"runs": runs.iter().map(run_json).collect::<Vec<_>>(), "criteria": crit}),
        );
    }

    if want(Scenario::Asymmetry) {
        let load = asymmetry_load(seconds);
        let runs = run_modes(&load, modes, a.seed, a.engine).await?;
        print_runs(
            "asymmetry: short-output A vs long-output B, both backlogged",
            &load,
            &runs,
        );
        let mut crit = Vec::new();
        if let Some(f) = find(&runs, "fair") {
            let bound = 2.0 * load.u_gw();
            criterion(
                &mut crit,
                "fair: accumulated difference ≤ 2·U_gw at every t",
                f.diff_max <= bound,
                format!("max {:.0} vs 2·U_gw {bound:.0}", f.diff_max),
            );
            // Flat: the trend over the whole window moves the difference by less than one U
            // (the saw-tooth of returning bursts is bounded above; this checks for growth).
            let span = f.window.1 - f.window.0;
            let drift = f.slope.abs() * span;
            let q_slope = find(&runs, "fifo").map_or(f64::NAN, |q| q.slope);
            criterion(
                &mut crit,
                "fair: |slope| × window ≤ U_gw (no growth)",
                drift <= load.u_gw(),
                format!(
                    "fair {:.1}/s × {span:.0} s = {drift:.0} vs U_gw {:.0}; fifo slope {q_slope:.1}/s",
                    f.slope,
                    load.u_gw()
                ),
            );
        }
        results.insert(
            "asymmetry".into(),
            json!({"runs": runs.iter().map(run_json).collect::<Vec<_>>(), "criteria": crit}),
        );
    }

    if want(Scenario::Throughput) {
        let runs = match weighted_runs.take() {
            Some(r) => r,
            None => {
                let load = weighted_load(seconds);
                let runs = run_modes(&load, modes, a.seed, a.engine).await?;
                print_runs("throughput (the weighted load)", &load, &runs);
                runs
            }
        };
        println!("\n## throughput: saturated mix (the weighted load)\n");
        for r in &runs {
            println!(
                "{}: {:.0} tokens/s (in+out), {:.0} output tokens/s",
                r.mode, r.throughput, r.out_throughput
            );
        }
        let mut crit = Vec::new();
        throughput_criteria(&runs, &mut crit);
        results.insert(
            "throughput".into(),
            json!({
                "runs": runs.iter().map(|r| json!({"mode": r.mode, "throughput_tok_s": r.throughput, "output_tok_s": r.out_throughput})).collect::<Vec<_>>(),
                "criteria": crit,
            }),
        );
    }

    if let Some(path) = &a.json {
        let doc = json!({
            "seed": a.seed,
            "seconds": seconds,
            "sim": {
                "max_num_seqs": SLOTS, "decode_step_ms": DECODE_STEP_MS,
                "decode_step_per_seq_us": DECODE_PER_SEQ_US,
                "prefill_overhead_ms": PREFILL_OVERHEAD_MS,
                "prefill_per_token_us": PREFILL_PER_TOKEN_US,
            },
            "scenarios": results,
        });
        write_json(path, &doc)?;
    }
    Ok(())
}
