//! `fairgate bench --scenario open-streams`: many slow streams held open at once.
//!
//! Starts a paced simulator (`fairgate sim --instant --token-interval-ms N`: each sequence
//! emits one token every N ms, its first after a random phase, so token times are spread
//! across sequences as over a fleet of many replicas) and a gateway whose backend admits
//! every stream, then opens `--streams` streams (default 8,000), ramped at `--rate` per
//! second (default 2,000, well inside the listen backlog), each asking for enough tokens to
//! last `--seconds` (default 60), first straight to the simulator, then through the gateway.
//!
//! Per phase: errors (a non-2xx answer, a broken stream, a stream without `[DONE]` or with
//! fewer tokens than asked; a refused or reset connection before the response head is retried
//! and counted apart) and the gaps between a stream's tokens as the client sees them. The
//! added inter-token latency is the through-gateway gap p99 minus the direct one. For the
//! gateway phase, from `/proc/<pid>`: its RSS and open file descriptors before, each second
//! (peak), after the streams end (5 s settle), and once its idle upstream connections have
//! expired (up to 130 s); its in-flight gauges afterwards; its CPU time per token relayed.
//!
//! Each process has its own open-file limit: the bench holds the client sockets, the gateway
//! two per stream, the simulator one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::harness::http::{bench_client, request, scrape, tenant_key, Target};
use crate::harness::metrics::metric_sum;
use crate::harness::process::{
    self, cpu_seconds, flags, open_fds, proc_status, status_number, StackSpec, MODEL,
};
use crate::harness::report::{criterion, write_json};
use crate::harness::stats::percentile;
use crate::harness::stream::{chat_body, take_events, Rec};

/// What one run is told.
pub struct OpenStreamsArgs {
    /// Streams held open at once.
    pub streams: usize,
    /// How long each stream lasts (its token count is `seconds` × 1000 / interval).
    pub seconds: u64,
    /// The simulator's token interval per sequence, ms.
    pub token_interval_ms: u64,
    /// Streams opened per second while ramping up.
    pub ramp: u64,
    /// Only the gateway phase (memory investigations).
    pub skip_direct: bool,
    pub seed: u64,
    pub json: Option<PathBuf>,
}

/// Targets of the issue: gateway RSS, added inter-token latency p99.
const MAX_RSS_MB: f64 = 250.0;
const MAX_ADDED_ITL_P99_MS: f64 = 2.0;
/// Retries of a request refused or reset before its response head.
const MAX_RETRIES: u32 = 5;
/// How long the streams' ends are given to settle before the "after" sample.
const SETTLE: Duration = Duration::from_secs(5);
/// Longest wait for the gateway's idle upstream connections to expire (its pool keeps up to
/// 1,024 for 60 s; hyper checks every idle-timeout, so up to twice that).
const RELEASE_WAIT: Duration = Duration::from_secs(130);
/// Open fds above the baseline still counted as "released".
const FD_SLACK: usize = 8;

type LoadClient = Client<HttpConnector, Full<Bytes>>;

/// One stream as the client saw it.
#[derive(Default)]
struct Outcome {
    /// Gaps between consecutive tokens: (arrival of the later token, ms since the phase's
    /// start; the gap, µs).
    gaps: Vec<(u32, u32)>,
    /// Arrival of the last token, ms since the phase's start.
    last_token_ms: u32,
    tokens: u64,
    retries: u32,
    error: Option<String>,
}

/// One sample of the gateway process.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    t: f64,
    rss_mib: f64,
    anon_mib: f64,
    fds: usize,
    threads: usize,
    /// utime + stime so far, s.
    cpu_s: f64,
    /// Streams open at the client then (response head in, body not yet ended).
    open: usize,
}

fn sample(pid: u32, t: f64, open: usize) -> Option<ProcSample> {
    let status = proc_status(pid)?;
    Some(ProcSample {
        t,
        rss_mib: status_number(&status, "VmRSS")? / 1024.0,
        anon_mib: status_number(&status, "RssAnon").map_or(f64::NAN, |kb| kb / 1024.0),
        fds: open_fds(pid)?,
        threads: status_number(&status, "Threads").map_or(0, |n| n as usize),
        cpu_s: cpu_seconds(pid).unwrap_or(f64::NAN),
        open,
    })
}

fn sample_json(s: &ProcSample) -> Value {
    json!({"t_s": s.t, "rss_mib": s.rss_mib, "anon_mib": s.anon_mib, "fds": s.fds,
           "threads": s.threads, "cpu_s": s.cpu_s, "open_streams": s.open})
}

/// A paced simulator with a batch above the stream count, behind a gateway whose backend
/// admits every stream at once.
fn stack(a: &OpenStreamsArgs) -> StackSpec<'static> {
    StackSpec {
        backend_extra: String::new(),
        model: MODEL,
        sims: vec![{
            let mut v = vec!["--instant".to_owned()];
            v.extend(flags(&[
                ("--token-interval-ms", a.token_interval_ms.to_string()),
                ("--max-num-seqs", (a.streams + 64).to_string()),
                ("--seed", a.seed.to_string()),
            ]));
            v
        }],
        config: String::new(),
        max_in_flight: a.streams + 64,
        gateway_log: true,
    }
}

/// Counts a stream as open while it lives.
struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One stream: its request (retried when refused or reset before the response head), then
/// its tokens, each timed at arrival.
async fn one_stream(
    client: &LoadClient,
    t: &Target,
    body: &Bytes,
    expected: u64,
    open: &AtomicUsize,
    t0: Instant,
) -> Outcome {
    let mut out = Outcome {
        gaps: Vec::with_capacity(expected as usize),
        ..Outcome::default()
    };
    let resp = loop {
        let req = match request(t, body) {
            Ok(r) => r,
            Err(e) => {
                out.error = Some(format!("building the request: {e}"));
                return out;
            }
        };
        match client.request(req).await {
            Ok(r) => break r,
            Err(e) if out.retries < MAX_RETRIES => {
                out.retries += 1;
                tracing::debug!(error = %e, "retrying a stream");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(out.retries))).await;
            }
            Err(e) => {
                out.error = Some(format!("request failed after {MAX_RETRIES} retries: {e:?}"));
                return out;
            }
        }
    };
    if !resp.status().is_success() {
        let status = resp.status();
        let text = Limited::new(resp.into_body(), 4096)
            .collect()
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
            .unwrap_or_default();
        out.error = Some(format!("HTTP {status}: {}", text.trim()));
        return out;
    }
    open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(open);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut rec = Rec::default();
    let mut last: Option<Instant> = None;
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let now = Instant::now();
        match frame {
            Err(e) => {
                out.error = Some(format!("stream broke: {e}"));
                break;
            }
            Ok(f) => {
                let Some(data) = f.data_ref() else { continue };
                buf.extend_from_slice(data);
                let before = rec.chunks;
                done |= take_events(&mut buf, &mut rec, 0.0);
                let at_ms = u32::try_from(now.duration_since(t0).as_millis()).unwrap_or(u32::MAX);
                for _ in before..rec.chunks {
                    if let Some(l) = last {
                        let us = now.duration_since(l).as_micros();
                        out.gaps
                            .push((at_ms, u32::try_from(us).unwrap_or(u32::MAX)));
                    }
                    last = Some(now);
                    out.last_token_ms = at_ms;
                }
            }
        }
    }
    out.tokens = rec.chunks;
    if out.error.is_none() {
        out.error = if let Some(e) = rec.error {
            Some(e)
        } else if !done {
            Some("stream ended without [DONE]".into())
        } else if rec.chunks != expected {
            Some(format!("{} tokens of {expected}", rec.chunks))
        } else {
            None
        };
    }
    out
}

/// What one phase saw.
struct Phase {
    name: &'static str,
    streams: usize,
    errors: usize,
    first_error: Option<String>,
    retries: u64,
    tokens: u64,
    /// Sorted gaps, ms.
    gaps_ms: Vec<f64>,
    /// Sorted gaps of tokens that arrived while every stream was open (after the ramp and
    /// one interval, before the first stream ended), ms.
    steady_gaps_ms: Vec<f64>,
    /// That window, s since the phase's start.
    steady_window: (f64, f64),
    /// Per second of the phase: (second, gaps, p99 ms, max ms).
    per_second: Vec<(u32, usize, f64, f64)>,
    wall_s: f64,
    gateway: Option<GatewayUse>,
}

/// The gateway process during and after the phase.
struct GatewayUse {
    before: ProcSample,
    peak_rss: ProcSample,
    peak_fds: usize,
    peak_threads: usize,
    after: ProcSample,
    /// The first sample with fds back near the baseline, or the last one tried.
    released: ProcSample,
    released_ok: bool,
    /// In-flight and queued gauges summed over series, after the settle.
    in_flight_after: f64,
    queued_after: f64,
    backend_in_flight_after: f64,
    cpu_s: f64,
    samples: Vec<ProcSample>,
}

impl Phase {
    fn gap(&self, p: f64) -> f64 {
        percentile(&self.gaps_ms, p)
    }

    fn steady_gap(&self, p: f64) -> f64 {
        percentile(&self.steady_gaps_ms, p)
    }

    fn max_gap(&self) -> f64 {
        self.gaps_ms.last().copied().unwrap_or(f64::NAN)
    }
}

/// Opens `a.streams` streams at `target`, ramped at `a.ramp` per second, and waits for all.
/// With `pid`, samples that process each second and accounts its CPU.
async fn run_phase(
    name: &'static str,
    target: Target,
    a: &OpenStreamsArgs,
    pid: Option<u32>,
    admin: &reqwest::Client,
    gateway: &str,
) -> anyhow::Result<Phase> {
    let expected = (a.seconds * 1000 / a.token_interval_ms.max(1)).max(1);
    let body = Bytes::from(chat_body(
        json!([{"role": "user", "content": "Tell me a long story, slowly."}]),
        expected,
    ));
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    let client: LoadClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(a.streams)
        .build(conn);
    let target = Arc::new(target);
    let open = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let before = match pid {
        Some(p) => sample(p, 0.0, 0),
        None => None,
    };
    let cpu0 = pid.and_then(cpu_seconds);
    // The sampler runs on its own thread until told to stop: listing 16,000 fds takes a
    // while, and must not delay the streams' reads on the runtime's workers.
    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = pid.map(|p| {
        let (samples, open, stop) = (samples.clone(), open.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next = t0;
            while !stop.load(Ordering::Relaxed) {
                next += Duration::from_secs(1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                let t = t0.elapsed().as_secs_f64();
                if let Some(s) = sample(p, t, open.load(Ordering::Relaxed)) {
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                }
            }
        })
    });
    // Every stream must be over by then, whatever happens.
    let limit = Duration::from_secs(a.seconds + 60)
        + Duration::from_secs_f64(a.streams as f64 / a.ramp.max(1) as f64);
    let interval = Duration::from_secs_f64(1.0 / a.ramp.max(1) as f64);
    let mut handles = Vec::with_capacity(a.streams);
    for i in 0..a.streams {
        tokio::time::sleep_until((t0 + interval.mul_f64(i as f64)).into()).await;
        let (client, target, body, open) =
            (client.clone(), target.clone(), body.clone(), open.clone());
        handles.push(tokio::spawn(async move {
            let run = one_stream(&client, &target, &body, expected, &open, t0);
            match tokio::time::timeout(limit, run).await {
                Ok(o) => o,
                Err(_) => Outcome {
                    error: Some(format!("not over after {} s", limit.as_secs())),
                    ..Outcome::default()
                },
            }
        }));
    }
    let ramp_s = t0.elapsed().as_secs_f64();
    let mut outcomes = Vec::with_capacity(handles.len());
    for h in handles {
        outcomes.push(h.await.unwrap_or_else(|e| Outcome {
            error: Some(format!("stream task failed: {e}")),
            ..Outcome::default()
        }));
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(cpu_seconds);
    // The client's idle connections close with it.
    drop(client);
    println!(
        "{name}: {} streams opened in {ramp_s:.1} s, all over after {wall_s:.1} s",
        a.streams
    );
    let gaps = || outcomes.iter().flat_map(|o| o.gaps.iter().copied());
    let ms = |us: u32| f64::from(us) / 1000.0;
    let mut gaps_ms: Vec<f64> = gaps().map(|(_, us)| ms(us)).collect();
    gaps_ms.sort_by(f64::total_cmp);
    let steady_from = ramp_s + a.token_interval_ms as f64 / 1000.0;
    let steady_to = outcomes
        .iter()
        .filter(|o| o.error.is_none())
        .map(|o| f64::from(o.last_token_ms) / 1000.0)
        .fold(f64::INFINITY, f64::min);
    let mut steady_gaps_ms: Vec<f64> = gaps()
        .filter(|&(at, _)| (steady_from..steady_to).contains(&(f64::from(at) / 1000.0)))
        .map(|(_, us)| ms(us))
        .collect();
    steady_gaps_ms.sort_by(f64::total_cmp);
    let mut by_second: std::collections::BTreeMap<u32, Vec<f64>> = Default::default();
    for (at, us) in gaps() {
        by_second.entry(at / 1000).or_default().push(ms(us));
    }
    let per_second = by_second
        .into_iter()
        .map(|(sec, mut v)| {
            v.sort_by(f64::total_cmp);
            let max = v.last().copied().unwrap_or(f64::NAN);
            (sec, v.len(), percentile(&v, 0.99), max)
        })
        .collect();
    let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    let tokens = outcomes.iter().map(|o| o.tokens).sum();
    let mut phase = Phase {
        name,
        streams: a.streams,
        errors: errors.len(),
        first_error: errors.first().map(|e| (*e).clone()),
        retries: outcomes.iter().map(|o| u64::from(o.retries)).sum(),
        tokens,
        gaps_ms,
        steady_gaps_ms,
        steady_window: (steady_from, steady_to),
        per_second,
        wall_s,
        gateway: None,
    };
    drop(outcomes);
    let (Some(pid), Some(before)) = (pid, before) else {
        return Ok(phase);
    };
    tokio::time::sleep(SETTLE).await;
    let after = sample(pid, t0.elapsed().as_secs_f64(), 0).unwrap_or_default();
    let page = scrape(admin, gateway).await.unwrap_or_default();
    let in_flight_after = metric_sum(&page, "fairgate_in_flight_requests", "").unwrap_or(0.0);
    let queued_after = metric_sum(&page, "fairgate_queued_requests", "").unwrap_or(0.0);
    let backend_in_flight_after =
        metric_sum(&page, "fairgate_backend_in_flight_requests", "").unwrap_or(0.0);
    // The gateway keeps idle upstream connections for a while: wait for them to expire.
    let waited = Instant::now();
    let mut released = after;
    let mut released_ok = after.fds <= before.fds + FD_SLACK;
    while !released_ok && waited.elapsed() < RELEASE_WAIT {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(s) = sample(pid, t0.elapsed().as_secs_f64(), 0) {
            released = s;
            released_ok = s.fds <= before.fds + FD_SLACK;
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = tokio::task::spawn_blocking(move || s.join()).await;
    }
    let samples: Vec<ProcSample> = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let all = || samples.iter().chain([&before, &after, &released]);
    let peak_rss = *all()
        .max_by(|x, y| x.rss_mib.total_cmp(&y.rss_mib))
        .unwrap_or(&before);
    phase.gateway = Some(GatewayUse {
        before,
        peak_rss,
        peak_fds: all().map(|s| s.fds).max().unwrap_or(0),
        peak_threads: all().map(|s| s.threads).max().unwrap_or(0),
        after,
        released,
        released_ok,
        in_flight_after,
        queued_after,
        backend_in_flight_after,
        cpu_s: match (cpu0, cpu1) {
            (Some(c0), Some(c1)) => c1 - c0,
            _ => f64::NAN,
        },
        samples,
    });
    Ok(phase)
}

/// The gateway's CPU µs per token while every stream is open (no stream starting or ending),
/// and the length of that window in s; `None` without two such samples.
fn steady_cpu_us_per_token(
    samples: &[ProcSample],
    streams: usize,
    interval_ms: u64,
) -> Option<(f64, f64)> {
    let mut all_open = samples.iter().filter(|s| s.open == streams);
    let first = all_open.next()?;
    let last = all_open.next_back()?;
    let window = last.t - first.t;
    let tokens = window * streams as f64 * 1000.0 / interval_ms.max(1) as f64;
    (window > 0.0).then(|| (1e6 * (last.cpu_s - first.cpu_s) / tokens, window))
}

fn mb(mib: f64) -> f64 {
    mib * 1024.0 * 1024.0 / 1e6
}

fn phase_json(p: &Phase, a: &OpenStreamsArgs) -> Value {
    let nominal_ms = a.token_interval_ms as f64;
    let mut v = json!({
        "path": p.name, "streams": p.streams, "errors": p.errors, "first_error": p.first_error,
        "retries": p.retries, "tokens": p.tokens, "wall_s": p.wall_s,
        "gap_ms": {"p50": p.gap(0.50), "p99": p.gap(0.99), "p999": p.gap(0.999), "max": p.max_gap(),
                   "p99_minus_nominal": p.gap(0.99) - nominal_ms},
        "steady_gap_ms": {"window_s": [p.steady_window.0, p.steady_window.1], "gaps": p.steady_gaps_ms.len(),
                          "p50": p.steady_gap(0.50), "p99": p.steady_gap(0.99), "p999": p.steady_gap(0.999)},
        "per_second": p.per_second.iter().map(|&(sec, n, p99, max)| json!({"s": sec, "gaps": n, "p99_ms": p99, "max_ms": max})).collect::<Vec<_>>(),
    });
    if let Some(g) = &p.gateway {
        let steady = steady_cpu_us_per_token(&g.samples, p.streams, a.token_interval_ms);
        v["gateway"] = json!({
            "before": sample_json(&g.before), "peak_rss": sample_json(&g.peak_rss),
            "peak_fds": g.peak_fds, "peak_threads": g.peak_threads,
            "after_settle": sample_json(&g.after), "after_release": sample_json(&g.released),
            "fds_released": g.released_ok,
            "in_flight_after": g.in_flight_after, "queued_after": g.queued_after,
            "backend_in_flight_after": g.backend_in_flight_after,
            "cpu_s": g.cpu_s, "cpu_us_per_token": 1e6 * g.cpu_s / p.tokens.max(1) as f64,
            "steady_cpu_us_per_token": steady.map(|s| s.0),
            "samples": g.samples.iter().map(sample_json).collect::<Vec<_>>(),
        });
    }
    v
}

pub async fn run(a: OpenStreamsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.streams > 0, "--streams must be at least 1");
    let admin = bench_client()?;
    let stack = process::start("openstreams", stack(&a), &admin).await?;
    let result = async {
        let key = tenant_key(&admin, &stack.gateway, "open", 1).await?;
        let pid = stack.procs.gateway_pid();
        println!(
            "open-streams: {} streams × {} s at one token per {} ms, ramped at {}/s; gateway pid {}",
            a.streams,
            a.seconds,
            a.token_interval_ms,
            a.ramp,
            pid.map_or("?".into(), |p| p.to_string())
        );
        // The admin client's connection to the gateway stays open throughout, so it is in
        // every fd count alike.
        let _ = scrape(&admin, &stack.gateway).await;
        let mut phases = Vec::new();
        if !a.skip_direct {
            let direct = Target {
                url: stack.sims[0].clone(),
                auth: None,
            };
            phases.push(run_phase("direct", direct, &a, None, &admin, &stack.gateway).await?);
            // Let the simulator see the direct phase's connections close.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let through = Target {
            url: stack.gateway.clone(),
            auth: Some(format!("Bearer {key}")),
        };
        phases.push(run_phase("fairgate", through, &a, pid, &admin, &stack.gateway).await?);
        anyhow::Ok(phases)
    }
    .await;
    stack.stop().await;
    let phases = result?;
    report(&a, &phases)
}

fn report(a: &OpenStreamsArgs, phases: &[Phase]) -> anyhow::Result<()> {
    let nominal = a.token_interval_ms as f64;
    println!();
    println!("| path | streams | errors | retries | tokens | gap p50 ms | gap p99 ms | gap p99.9 ms | gap max ms | p99 − nominal ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for p in phases {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            p.name,
            p.streams,
            p.errors,
            p.retries,
            p.tokens,
            p.gap(0.50),
            p.gap(0.99),
            p.gap(0.999),
            p.max_gap(),
            p.gap(0.99) - nominal
        );
    }
    println!();
    println!("Every stream open (after the ramp and one interval, until the first stream ends):");
    println!();
    println!("| path | window s | gaps | gap p50 ms | gap p99 ms | gap p99.9 ms |");
    println!("|---|---|---|---|---|---|");
    for p in phases {
        println!(
            "| {} | {:.1}–{:.1} | {} | {:.2} | {:.2} | {:.2} |",
            p.name,
            p.steady_window.0,
            p.steady_window.1,
            p.steady_gaps_ms.len(),
            p.steady_gap(0.50),
            p.steady_gap(0.99),
            p.steady_gap(0.999)
        );
    }
    for p in phases {
        if let Some(e) = &p.first_error {
            println!("{}: {} errors, first: {e}", p.name, p.errors);
        }
    }
    let through = phases.iter().find(|p| p.gateway.is_some());
    let direct = phases.iter().find(|p| p.gateway.is_none());
    let mut crit = Vec::new();
    if let Some(g) = through.and_then(|p| p.gateway.as_ref().map(|g| (p, g))) {
        let (p, g) = g;
        println!();
        println!("| gateway | before | peak | after (5 s settle) | after idle upstreams expire |");
        println!("|---|---|---|---|---|");
        println!(
            "| RSS MiB (anon) | {:.1} ({:.1}) | {:.1} ({:.1}) at {:.0} s, {} streams open | {:.1} ({:.1}) | {:.1} ({:.1}) |",
            g.before.rss_mib,
            g.before.anon_mib,
            g.peak_rss.rss_mib,
            g.peak_rss.anon_mib,
            g.peak_rss.t,
            g.peak_rss.open,
            g.after.rss_mib,
            g.after.anon_mib,
            g.released.rss_mib,
            g.released.anon_mib
        );
        println!(
            "| open fds | {} | {} | {} | {} (at {:.0} s) |",
            g.before.fds, g.peak_fds, g.after.fds, g.released.fds, g.released.t
        );
        println!(
            "| threads | {} | {} | {} | {} |",
            g.before.threads, g.peak_threads, g.after.threads, g.released.threads
        );
        println!(
            "| in-flight / queued / backend in-flight | – | – | {} / {} / {} | – |",
            g.in_flight_after, g.queued_after, g.backend_in_flight_after
        );
        // At the sample with the most streams open.
        let busiest = g
            .samples
            .iter()
            .max_by_key(|s| s.open)
            .unwrap_or(&g.peak_rss);
        let per_stream_kib =
            (busiest.rss_mib - g.before.rss_mib) * 1024.0 / busiest.open.max(1) as f64;
        let us_per_token = 1e6 * g.cpu_s / p.tokens.max(1) as f64;
        println!();
        println!(
            "gateway CPU: {:.1} s over the phase ({:.1} s), {us_per_token:.1} µs per token relayed \
             (connections and requests included)",
            g.cpu_s, p.wall_s
        );
        if let Some((us, window)) =
            steady_cpu_us_per_token(&g.samples, p.streams, a.token_interval_ms)
        {
            println!(
                "gateway CPU with every stream open: {us:.1} µs per token ({window:.0} s window)"
            );
        }
        println!(
            "gateway RSS growth per open stream: {per_stream_kib:.1} KiB ({} open at {:.0} s)",
            busiest.open, busiest.t
        );
        let peak_mb = mb(g.peak_rss.rss_mib);
        criterion(
            &mut crit,
            "gateway RSS ≤ 250 MB",
            peak_mb <= MAX_RSS_MB,
            format!("peak {peak_mb:.1} MB ({:.1} MiB)", g.peak_rss.rss_mib),
        );
        criterion(
            &mut crit,
            "nothing in flight afterwards",
            g.in_flight_after == 0.0 && g.queued_after == 0.0 && g.backend_in_flight_after == 0.0,
            format!(
                "in flight {}, queued {}, backend in flight {}",
                g.in_flight_after, g.queued_after, g.backend_in_flight_after
            ),
        );
        criterion(
            &mut crit,
            "file descriptors released",
            g.released_ok,
            format!(
                "before {}, peak {}, after settle {}, finally {} at {:.0} s",
                g.before.fds, g.peak_fds, g.after.fds, g.released.fds, g.released.t
            ),
        );
        let growth = g.peak_rss.rss_mib - g.before.rss_mib;
        let kept = g.released.rss_mib - g.before.rss_mib;
        criterion(
            &mut crit,
            "memory released (kept ≤ 25% of the growth, or ≤ 16 MiB)",
            kept <= 16.0 || kept <= 0.25 * growth,
            format!("grew {growth:.1} MiB, kept {kept:.1} MiB"),
        );
    }
    let errors: usize = phases.iter().map(|p| p.errors).sum();
    criterion(
        &mut crit,
        "no errors",
        errors == 0,
        phases
            .iter()
            .map(|p| format!("{} {} ({} retried)", p.name, p.errors, p.retries))
            .collect::<Vec<_>>()
            .join(", "),
    );
    if let (Some(d), Some(t)) = (direct, through) {
        let added = t.gap(0.99) - d.gap(0.99);
        criterion(
            &mut crit,
            "added inter-token latency p99 ≤ 2 ms",
            added <= MAX_ADDED_ITL_P99_MS,
            format!(
                "through p99 {:.2} ms − direct p99 {:.2} ms = {added:.2} ms",
                t.gap(0.99),
                d.gap(0.99)
            ),
        );
        println!(
            "added inter-token latency p99 with every stream open: {:.2} ms ({:.2} − {:.2})",
            t.steady_gap(0.99) - d.steady_gap(0.99),
            t.steady_gap(0.99),
            d.steady_gap(0.99)
        );
    }
    if let Some(path) = &a.json {
        let doc = json!({
            "scenario": "open-streams",
            "streams": a.streams, "seconds": a.seconds, "token_interval_ms": a.token_interval_ms,
            "ramp_per_s": a.ramp,
            "phases": phases.iter().map(|p| phase_json(p, a)).collect::<Vec<_>>(),
            "criteria": crit,
        });
        write_json(path, &doc)?;
    }
    Ok(())
}
