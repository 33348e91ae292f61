//! `fairgate bench`: what the gateway adds, measured end to end.
//!
//! It starts a zero-latency simulator (`fairgate sim --instant`) and a gateway (`fairgate serve`,
//! SQLite ledger, auth and metrics on) as child processes of the same binary, then drives the
//! same load at both, in the same run:
//! 1. closed loop (fixed concurrency, as fast as possible) → requests/s direct vs through;
//! 2. open loop at a fixed rate (default 2,000 req/s) → latency p50/p99 direct vs through,
//!    measured from each request's scheduled start, so a stall is not hidden by the generator
//!    slowing down (coordinated omission).
//!
//! Added latency is the through-gateway percentile minus the direct one. The gateway's peak RSS
//! comes from `/proc/<pid>/status`. Results print as a Markdown table for BENCHMARKS.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::harness::http::{bench_client, request, tenant_key, Target};
use crate::harness::process::{self, cpu_seconds, status_mib, StackSpec, FIXED_BACKEND, MODEL};
use crate::harness::stats::rounded_index_ms;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Seconds per closed-loop phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent connections in the closed-loop phase.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Request rate of the open-loop latency phase.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// `max_tokens` of each request (the simulator answers with exactly this many tokens).
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u64,
    /// Also measure streamed requests.
    #[arg(long)]
    pub stream: bool,
    /// The completion guardrail mode for every request (`off`, `log`, `block`): its cost on
    /// the relay, streamed and not.
    #[arg(long, default_value = "off")]
    pub output_guard: String,
    /// The backend: `sim` (the zero-latency simulator) or `fixed` (a minimal server with
    /// pre-built answers, faster than the simulator, so the ratio measures the gateway).
    pub backend: String,
}

type LoadClient = Client<HttpConnector, Full<Bytes>>;

/// A zero-latency simulator behind a gateway with room for every request at once, so what
/// is measured is the gateway's own work; its warnings are shown.
fn stack(output_guard: &str, backend: &str) -> StackSpec<'static> {
    let flag = if backend == "fixed" {
        FIXED_BACKEND
    } else {
        "--instant"
    };
    StackSpec {
        backend_extra: String::new(),
        model: MODEL,
        sims: vec![vec![flag.to_owned()]],
        config: format!("[guardrails]\noutput = \"{output_guard}\"\n"),
        max_in_flight: 4096,
        gateway_log: true,
    }
}

async fn one(client: &LoadClient, t: &Target, body: &Bytes) -> bool {
    let Ok(req) = request(t, body) else {
        return false;
    };
    match client.request(req).await {
        Ok(resp) => {
            let ok = resp.status().is_success();
            ok && resp.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// Closed loop: `concurrency` workers for `seconds`; returns (ok requests, seconds, errors).
async fn closed_loop(
    client: &LoadClient,
    t: Arc<Target>,
    body: Bytes,
    a: &BenchArgs,
) -> (u64, f64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let err = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let (client, t, body, ok, err) = (
            client.clone(),
            t.clone(),
            body.clone(),
            ok.clone(),
            err.clone(),
        );
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if one(&client, &t, &body).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    err.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    (
        ok.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        err.load(Ordering::Relaxed),
    )
}

/// Open loop at `rate` for `seconds`; returns sorted latencies (µs) and errors.
async fn open_loop(
    client: &LoadClient,
    t: Arc<Target>,
    body: Bytes,
    a: &BenchArgs,
) -> (Vec<u64>, u64) {
    let total = a.rate * a.seconds;
    let interval = Duration::from_secs_f64(1.0 / a.rate as f64);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, t, body) = (client.clone(), t.clone(), body.clone());
        handles.push(tokio::spawn(async move {
            let ok = one(&client, &t, &body).await;
            (ok, scheduled.elapsed().as_micros() as u64)
        }));
    }
    let mut lat = Vec::with_capacity(handles.len());
    let mut errors = 0;
    for h in handles {
        match h.await {
            Ok((true, us)) => lat.push(us),
            _ => errors += 1,
        }
    }
    lat.sort_unstable();
    (lat, errors)
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let admin = bench_client()?;
    if !matches!(a.backend.as_str(), "sim" | "fixed") {
        anyhow::bail!("--backend is `sim` or `fixed`");
    }
    let stack = process::start("bench", stack(&a.output_guard, &a.backend), &admin).await?;
    let (gw_pid, be_pid) = (stack.procs.gateway_pid(), stack.procs.backend_pid());
    let cpu = |pid: Option<u32>| pid.and_then(cpu_seconds).unwrap_or(0.0);
    let key = tenant_key(&admin, &stack.gateway, "bench", 1).await?;
    // Only the load's own connections stay open while it is measured.
    drop(admin);
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    let client: LoadClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(conn);
    let direct = Arc::new(Target {
        url: stack.sims[0].clone(),
        auth: None,
    });
    let through = Arc::new(Target {
        url: stack.gateway.clone(),
        auth: Some(format!("Bearer {key}")),
    });
    let modes: &[bool] = if a.stream { &[false, true] } else { &[false] };
    println!(
        "| mode | path | closed-loop req/s | errors | gateway CPU µs/req | backend CPU µs/req | open-loop rate | p50 ms | p99 ms | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for &stream in modes {
        let body = Bytes::from(
            serde_json::json!({
                "model": MODEL,
                "messages": [{"role": "user", "content": "Say something short."}],
                "max_tokens": a.max_tokens,
                "stream": stream,
            })
            .to_string(),
        );
        // Warm up connections and caches on both paths.
        for t in [&direct, &through] {
            for _ in 0..200 {
                one(&client, t, &body).await;
            }
        }
        let mut rows = Vec::new();
        for (name, t) in [("direct", &direct), ("fairgate", &through)] {
            let (gw0, be0) = (cpu(gw_pid), cpu(be_pid));
            let (n, secs, cerr) = closed_loop(&client, t.clone(), body.clone(), &a).await;
            let per_req = |c0: f64, pid| 1e6 * (cpu(pid) - c0) / n.max(1) as f64;
            let (gw_us, be_us) = (per_req(gw0, gw_pid), per_req(be0, be_pid));
            let rps = n as f64 / secs;
            let (lat, oerr) = open_loop(&client, t.clone(), body.clone(), &a).await;
            let (p50, p99) = (rounded_index_ms(&lat, 0.50), rounded_index_ms(&lat, 0.99));
            println!(
                "| {} | {name} | {rps:.0} | {cerr} | {gw_us:.1} | {be_us:.1} | {} | {p50:.3} | {p99:.3} | {oerr} |",
                if stream { "stream" } else { "non-stream" },
                a.rate
            );
            rows.push((rps, p50, p99, gw_us));
        }
        let (d, g) = (rows[0], rows[1]);
        // Content chunks per streamed answer: the backend sends `max_tokens` of them.
        let per_chunk = if stream {
            format!(
                ", gateway CPU {:.2} µs per content chunk",
                g.3 / a.max_tokens.max(1) as f64
            )
        } else {
            String::new()
        };
        summary.push(format!(
            "{}: through/direct throughput {:.1}%, added latency p50 {:.3} ms, p99 {:.3} ms, gateway CPU {:.1} µs per request{per_chunk}",
            if stream { "stream" } else { "non-stream" },
            100.0 * g.0 / d.0,
            g.1 - d.1,
            g.2 - d.2,
            g.3,
        ));
    }
    println!();
    for s in summary {
        println!("{s}");
    }
    if let Some(rss) = stack
        .procs
        .gateway_pid()
        .and_then(|pid| status_mib(pid, "VmHWM"))
    {
        println!("gateway peak RSS: {rss:.1} MiB");
    }
    stack.stop().await;
    Ok(())
}
