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

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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
}

type LoadClient = Client<HttpConnector, Full<Bytes>>;

struct Target {
    url: String,
    auth: Option<String>,
}

struct Procs {
    children: Vec<Child>,
    gateway_pid: u32,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub(crate) async fn wait_http(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not come up")
}

async fn start(dir: &std::path::Path) -> anyhow::Result<(Procs, String, String, String)> {
    let exe = std::env::current_exe().context("locating the fairgate binary")?;
    let sim_port = free_port()?;
    let gw_port = free_port()?;
    let sim = Command::new(&exe)
        .args(["sim", "--instant", "--model", "bench", "--listen"])
        .arg(format!("127.0.0.1:{sim_port}"))
        .env("FAIRGATE_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the simulator")?;
    let token = "bench-admin-token-0123456789";
    let config = format!(
        "listen = \"127.0.0.1:{gw_port}\"\ndatabase = \"sqlite://{db}\"\ndata_dir = \"{dir}\"\nadmin_token = \"{token}\"\n\
         [[models]]\nname = \"bench\"\n[[models.backends]]\nurl = \"http://127.0.0.1:{sim_port}\"\nmax_in_flight = 4096\n",
        db = dir.join("bench.db").display(),
        dir = dir.display(),
    );
    let cfg_path = dir.join("bench.toml");
    std::fs::write(&cfg_path, config)?;
    let gw = Command::new(&exe)
        .arg("serve")
        .arg("--config")
        .arg(&cfg_path)
        .env("FAIRGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the gateway")?;
    let gateway_pid = gw.id().unwrap_or(0);
    let mut procs = Procs {
        children: vec![sim, gw],
        gateway_pid,
    };
    if let Some(err) = procs.children[1].stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                eprintln!("[gateway] {l}");
            }
        });
    }
    let direct = format!("http://127.0.0.1:{sim_port}");
    let through = format!("http://127.0.0.1:{gw_port}");
    wait_http(&format!("{direct}/health")).await?;
    wait_http(&format!("{through}/healthz")).await?;
    let key = tenant_key(&through, token, "bench").await?;
    Ok((procs, direct, through, key))
}

/// Creates tenant `name` and a key for it through the admin API; returns the key's secret.
pub(crate) async fn tenant_key(base: &str, token: &str, name: &str) -> anyhow::Result<String> {
    let admin = reqwest::Client::new();
    let base = format!("{base}/admin/v1");
    admin
        .post(format!("{base}/tenants"))
        .bearer_auth(token)
        .json(&serde_json::json!({"name": name, "weight": 1}))
        .send()
        .await?
        .error_for_status()?;
    let key: serde_json::Value = admin
        .post(format!("{base}/keys"))
        .bearer_auth(token)
        .json(&serde_json::json!({"tenant": name, "name": name}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(key["key"]
        .as_str()
        .context("no key in response")?
        .to_owned())
}

fn request(t: &Target, body: &Bytes) -> anyhow::Result<http::Request<Full<Bytes>>> {
    let mut b = http::Request::post(format!("{}/v1/chat/completions", t.url))
        .header("content-type", "application/json");
    if let Some(a) = &t.auth {
        b = b.header("authorization", a);
    }
    Ok(b.body(Full::new(body.clone()))?)
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

/// Closed loop: `concurrency` workers for `seconds`; returns (ok requests/s, errors).
async fn closed_loop(
    client: &LoadClient,
    t: Arc<Target>,
    body: Bytes,
    a: &BenchArgs,
) -> (f64, u64) {
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
    let secs = started.elapsed().as_secs_f64();
    (
        ok.load(Ordering::Relaxed) as f64 / secs,
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

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("fairgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (procs, direct, through, key) = start(&dir).await?;
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    let client: LoadClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(conn);
    let direct = Arc::new(Target {
        url: direct,
        auth: None,
    });
    let through = Arc::new(Target {
        url: through,
        auth: Some(format!("Bearer {key}")),
    });
    let modes: &[bool] = if a.stream { &[false, true] } else { &[false] };
    println!(
        "| mode | path | closed-loop req/s | errors | open-loop rate | p50 ms | p99 ms | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for &stream in modes {
        let body = Bytes::from(
            serde_json::json!({
                "model": "bench",
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
            let (rps, cerr) = closed_loop(&client, t.clone(), body.clone(), &a).await;
            let (lat, oerr) = open_loop(&client, t.clone(), body.clone(), &a).await;
            let (p50, p99) = (pct(&lat, 0.50), pct(&lat, 0.99));
            println!(
                "| {} | {name} | {rps:.0} | {cerr} | {} | {p50:.3} | {p99:.3} | {oerr} |",
                if stream { "stream" } else { "non-stream" },
                a.rate
            );
            rows.push((rps, p50, p99));
        }
        let (d, g) = (rows[0], rows[1]);
        summary.push(format!(
            "{}: through/direct throughput {:.1}%, added latency p50 {:.3} ms, p99 {:.3} ms",
            if stream { "stream" } else { "non-stream" },
            100.0 * g.0 / d.0,
            g.1 - d.1,
            g.2 - d.2
        ));
    }
    println!();
    for s in summary {
        println!("{s}");
    }
    if let Some(rss) = peak_rss_mib(procs.gateway_pid) {
        println!("gateway peak RSS: {rss:.1} MiB");
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
