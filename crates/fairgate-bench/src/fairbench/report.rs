//! From one run's requests to what the fair-share benchmark reports: per-tenant shares,
//! throughput and TTFT in the steady window, the accumulated service difference over time,
//! and the Markdown tables and JSON that carry them.

use serde_json::{json, Value};

use super::driver::RunOut;
use super::scenarios::{Load, SLOTS};
use crate::harness::stats::{lsq_slope, max_min_diff, percentile, served_between, service_at};
use crate::harness::stream::{errors_warning, usage_warning, Rec};

#[derive(Debug, Clone)]
pub(crate) struct TenantReport {
    pub(crate) name: &'static str,
    pub(crate) weight: u32,
    pub(crate) completed: usize,
    pub(crate) cut: usize,
    /// Cut before the first token.
    pub(crate) queued_at_end: usize,
    pub(crate) errors: usize,
    pub(crate) tokens_in: f64,
    pub(crate) tokens_out: f64,
    pub(crate) cost: f64,
    pub(crate) share: f64,
    pub(crate) weight_share: f64,
    pub(crate) share_err: f64,
    pub(crate) ttft_p50: f64,
    pub(crate) ttft_p99: f64,
    pub(crate) ttft_n: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct RunReport {
    pub(crate) mode: &'static str,
    pub(crate) window: (f64, f64),
    pub(crate) tenants: Vec<TenantReport>,
    pub(crate) throughput: f64,
    pub(crate) out_throughput: f64,
    pub(crate) ticks: Vec<(f64, f64)>,
    /// (t, normalised service of each tenant) every 0.5 s, for plots.
    pub(crate) series: Vec<(f64, Vec<f64>)>,
    pub(crate) diff_max: f64,
    pub(crate) slope: f64,
    pub(crate) probe_ttft: Option<(f64, f64, usize)>,
    pub(crate) sim_load: (f64, f64),
    pub(crate) warnings: Vec<String>,
}

fn ttft_ms(recs: &[&Rec]) -> (f64, f64, usize) {
    let mut v: Vec<f64> = recs
        .iter()
        .filter_map(|r| r.first.map(|f| (f - r.sent) * 1e3))
        .collect();
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.50), percentile(&v, 0.99), v.len())
}

pub(crate) fn analyse(load: &Load, run: &RunOut) -> RunReport {
    let (w0, w1) = load.window();
    let ramp_end = load.ramp_end();
    let n = load.tenants.len();
    let wsum: f64 = load.tenants.iter().map(|t| f64::from(t.weight)).sum();
    // Per tenant: (amount, first, end) items for in, out and cost.
    let mut ins = vec![Vec::new(); n];
    let mut outs = vec![Vec::new(); n];
    let mut costs = vec![Vec::new(); n];
    let mut warnings = Vec::new();
    for r in &run.recs {
        let Some(first) = r.first else { continue };
        let (i, o) = r.tokens();
        ins[r.tenant].push((i, first, r.end));
        outs[r.tenant].push((o, first, r.end));
        costs[r.tenant].push((i + 2.0 * o, first, r.end));
    }
    warnings.extend(usage_warning(&run.recs));
    let cost_w: Vec<f64> = costs.iter().map(|c| served_between(c, w0, w1)).collect();
    let cost_total: f64 = cost_w.iter().sum();
    let mut tenants = Vec::new();
    let mut tok_total = 0.0;
    let mut out_total = 0.0;
    for (i, spec) in load.tenants.iter().enumerate() {
        let mine: Vec<&Rec> = run.recs.iter().filter(|r| r.tenant == i).collect();
        if let Some(w) = errors_warning(mine.iter().copied()) {
            warnings.push(format!("{}: {w}", spec.name));
        }
        let steady: Vec<&Rec> = mine
            .iter()
            .copied()
            .filter(|r| r.sent >= ramp_end && r.first.is_some_and(|f| f >= w0))
            .collect();
        let (p50, p99, nt) = ttft_ms(&steady);
        let (tin, tout) = (
            served_between(&ins[i], w0, w1),
            served_between(&outs[i], w0, w1),
        );
        tok_total += tin + tout;
        out_total += tout;
        let share = if cost_total > 0.0 {
            cost_w[i] / cost_total
        } else {
            0.0
        };
        let weight_share = f64::from(spec.weight) / wsum;
        tenants.push(TenantReport {
            name: spec.name,
            weight: spec.weight,
            completed: mine.iter().filter(|r| r.complete).count(),
            cut: mine.iter().filter(|r| r.cut).count(),
            queued_at_end: mine.iter().filter(|r| r.cut && r.first.is_none()).count(),
            errors: mine.iter().filter(|r| r.error.is_some()).count(),
            tokens_in: tin,
            tokens_out: tout,
            cost: cost_w[i],
            share,
            weight_share,
            share_err: (share - weight_share).abs() / weight_share,
            ttft_p50: p50,
            ttft_p99: p99,
            ttft_n: nt,
        });
    }
    // Accumulated normalised service difference over the backlogged tenants.
    let backlogged: Vec<usize> = (0..n).filter(|&i| load.tenants[i].backlogged).collect();
    let diff_at = |t: f64| {
        let v: Vec<f64> = backlogged
            .iter()
            .map(|&i| service_at(&costs[i], t) / f64::from(load.tenants[i].weight))
            .collect();
        max_min_diff(&v)
    };
    let ticks: Vec<(f64, f64)> = [0.2, 0.4, 0.6, 0.8, 1.0]
        .iter()
        .map(|f| (f * load.seconds, diff_at(f * load.seconds)))
        .collect();
    let samples = 100;
    let xs: Vec<f64> = (0..=samples)
        .map(|k| w0 + (w1 - w0) * k as f64 / samples as f64)
        .collect();
    let ys: Vec<f64> = xs.iter().map(|&t| diff_at(t)).collect();
    let all_xs: Vec<f64> = (0..=samples)
        .map(|k| load.seconds * k as f64 / samples as f64)
        .collect();
    let diff_max = all_xs.iter().map(|&t| diff_at(t)).fold(0.0, f64::max);
    let series = (0..=(load.seconds * 2.0) as usize)
        .map(|k| {
            let t = k as f64 * 0.5;
            let v = (0..n)
                .map(|i| service_at(&costs[i], t) / f64::from(load.tenants[i].weight))
                .collect();
            (t, v)
        })
        .collect();
    let probe_ttft = load.probe.map(|_| {
        let v: Vec<&Rec> = run.probe.iter().collect();
        ttft_ms(&v)
    });
    RunReport {
        mode: run.mode,
        window: (w0, w1),
        tenants,
        throughput: tok_total / (w1 - w0),
        out_throughput: out_total / (w1 - w0),
        ticks,
        series,
        diff_max,
        slope: lsq_slope(&xs, &ys),
        probe_ttft,
        sim_load: run.sim_load,
        warnings,
    }
}

pub(crate) fn print_runs(title: &str, load: &Load, runs: &[RunReport]) {
    println!("\n## {title}\n");
    let (w0, w1) = runs.first().map(|r| r.window).unwrap_or_default();
    println!(
        "{} s of load per mode, {SLOTS} backend slots, steady window {w0:.1}–{w1:.1} s, \
         U_gw = {:.0} cost units",
        load.seconds,
        load.u_gw()
    );
    for t in &load.tenants {
        println!(
            "- {}: weight {}, {} stream(s), {} in / {} out tokens per request",
            t.name, t.weight, t.streams, t.prompt, t.out
        );
    }
    println!();
    // Weight shares only mean something when every tenant is backlogged.
    let all_backlogged = load.tenants.iter().all(|t| t.backlogged);
    let pct = |v: f64| {
        if all_backlogged {
            format!("{:.1}%", 100.0 * v)
        } else {
            "–".to_owned()
        }
    };
    println!("| mode | tenant | w | done | cut (queued) | err | in tok | out tok | cost (in+2out) | cost share | weight share | share err | TTFT p50 ms | TTFT p99 ms | TTFT n |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        for t in &r.tenants {
            println!(
                "| {} | {} | {} | {} | {} ({}) | {} | {:.0} | {:.0} | {:.0} | {:.1}% | {} | {} | {:.1} | {:.1} | {} |",
                r.mode,
                t.name,
                t.weight,
                t.completed,
                t.cut,
                t.queued_at_end,
                t.errors,
                t.tokens_in,
                t.tokens_out,
                t.cost,
                100.0 * t.share,
                pct(t.weight_share),
                pct(t.share_err),
                t.ttft_p50,
                t.ttft_p99,
                t.ttft_n
            );
        }
    }
    println!();
    // The difference needs two backlogged tenants.
    let diff_cols = load.tenants.iter().filter(|t| t.backlogged).count() >= 2;
    let tick_head: Vec<String> = match runs.first() {
        Some(r) if diff_cols => r
            .ticks
            .iter()
            .map(|(t, _)| format!("diff@{t:.0}s"))
            .collect(),
        _ => Vec::new(),
    };
    if diff_cols {
        println!(
            "| mode | tokens/s (in+out) | out tokens/s | sim running / waiting | {} | max diff | slope cost/s |",
            tick_head.join(" | ")
        );
        println!("|---|---|---|---|{}", "---|".repeat(tick_head.len() + 2));
    } else {
        println!("| mode | tokens/s (in+out) | out tokens/s | sim running / waiting |");
        println!("|---|---|---|---|");
    }
    for r in runs {
        let diffs = if diff_cols {
            let ticks: Vec<String> = r.ticks.iter().map(|(_, d)| format!("{d:.0}")).collect();
            format!(
                " {} | {:.0} | {:.1} |",
                ticks.join(" | "),
                r.diff_max,
                r.slope
            )
        } else {
            String::new()
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.1} / {:.1} |{diffs}",
            r.mode, r.throughput, r.out_throughput, r.sim_load.0, r.sim_load.1,
        );
    }
    for r in runs {
        for w in &r.warnings {
            println!("warning ({}): {w}", r.mode);
        }
    }
}

pub(crate) fn run_json(r: &RunReport) -> Value {
    json!({
        "mode": r.mode,
        "window_s": [r.window.0, r.window.1],
        "throughput_tok_s": r.throughput,
        "output_tok_s": r.out_throughput,
        "sim_mean_running": r.sim_load.0,
        "sim_mean_waiting": r.sim_load.1,
        "diff_ticks": r.ticks.iter().map(|(t, d)| json!({"t_s": t, "diff": d})).collect::<Vec<_>>(),
        "diff_max": r.diff_max,
        "normalised_service_series": r.series.iter().map(|(t, v)| json!({"t_s": t, "service": v})).collect::<Vec<_>>(),
        "diff_slope_per_s": r.slope,
        "unloaded_ttft_ms": r.probe_ttft.map(|(p50, p99, n)| json!({"p50": p50, "p99": p99, "n": n})),
        "warnings": r.warnings,
        "tenants": r.tenants.iter().map(|t| json!({
            "name": t.name, "weight": t.weight, "completed": t.completed, "cut": t.cut,
            "queued_at_end": t.queued_at_end,
            "errors": t.errors, "prompt_tokens": t.tokens_in, "completion_tokens": t.tokens_out,
            "service_tokens": t.tokens_in + t.tokens_out, "cost": t.cost,
            "cost_share": t.share, "weight_share": t.weight_share,
            "share_error_rel": t.share_err, "normalised_cost": t.cost / f64::from(t.weight),
            "ttft_p50_ms": t.ttft_p50, "ttft_p99_ms": t.ttft_p99, "ttft_n": t.ttft_n,
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn find<'a>(runs: &'a [RunReport], mode: &str) -> Option<&'a RunReport> {
    runs.iter().find(|r| r.mode == mode)
}
