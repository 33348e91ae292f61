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
//!   64/512 (3× the 16 slots). The light tenant's TTFT is first measured alone. Pass:
//!   fifo p99 / fair p99 ≥ 10.
//! - `asymmetry`: A 32 streams of 512/32 vs B 24 streams of 32/512. Pass (fair): max
//!   difference ≤ 2·U_gw and |slope| × window ≤ U_gw (no trend). (Under `fair` A's streams come back
//!   together, so the difference is a sawtooth of about A's streams × its request cost.)
//! - `throughput`: the `weighted` load; pass: fair/fifo tokens/s within 3 %.
//!
//! The process, HTTP, SSE and percentile helpers here (`spawn_sim`, `spawn_gateway`,
//! `stream_one`, `percentile`, …) are shared with the routing benchmark (`routebench`).
//!
//! Identical simulated requests started together finish on the same step forever, so slots
//! would free in lockstep waves (a sim artefact that makes a newcomer wait a whole wave); the
//! first 16 streams of `weighted` and `interactive` therefore start one service time / 16
//! apart, and the rest after them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which scenario to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Weighted,
    Interactive,
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
}

/// Simulator timing shared by every scenario.
const SLOTS: usize = 16;
const DECODE_STEP_MS: f64 = 5.0;
const DECODE_PER_SEQ_US: f64 = 50.0;
const PREFILL_OVERHEAD_MS: f64 = 2.0;
const PREFILL_PER_TOKEN_US: f64 = 20.0;
pub(crate) const ADMIN_TOKEN: &str = "fairbench-admin-token-0123456789";
pub(crate) const MODEL: &str = "bench";

/// Seconds a full batch needs to produce `out` tokens.
fn service_time(out: u64) -> f64 {
    out as f64 * (DECODE_STEP_MS + DECODE_PER_SEQ_US * SLOTS as f64 / 1e3) / 1e3
}

#[derive(Debug, Clone)]
struct TenantSpec {
    name: &'static str,
    weight: u32,
    streams: usize,
    prompt: u64,
    out: u64,
    /// Counted in the accumulated-difference metric.
    backlogged: bool,
    /// Part of the start ramp.
    ramped: bool,
}

#[derive(Debug, Clone)]
struct Load {
    tenants: Vec<TenantSpec>,
    seconds: f64,
    /// Interval between the first `SLOTS` ramped streams (0: all start at once).
    ramp_step: f64,
    /// Measure this tenant alone for this long before the loaded run.
    probe: Option<(usize, f64)>,
}

impl Load {
    fn ramp_end(&self) -> f64 {
        self.ramp_step * SLOTS as f64
    }

    fn window(&self) -> (f64, f64) {
        let start = (0.2 * self.seconds)
            .max(self.ramp_end())
            .min(0.5 * self.seconds);
        (start, self.seconds)
    }

    /// VTC's U for this gateway: max(L_in, w_q · M_gw), M_gw = slots × largest request.
    fn u_gw(&self) -> f64 {
        let l_in = self.tenants.iter().map(|t| t.prompt).max().unwrap_or(0) as f64;
        let m = SLOTS as f64
            * self
                .tenants
                .iter()
                .map(|t| t.prompt + t.out)
                .max()
                .unwrap_or(0) as f64;
        l_in.max(2.0 * m)
    }
}

/// One request as the client saw it; times in seconds since the run's start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rec {
    pub(crate) tenant: usize,
    pub(crate) sent: f64,
    /// First content chunk.
    pub(crate) first: Option<f64>,
    pub(crate) end: f64,
    pub(crate) prompt: u64,
    pub(crate) completion: u64,
    pub(crate) chunks: u64,
    pub(crate) expected_prompt: u64,
    /// Usage chunk and `[DONE]` seen.
    pub(crate) complete: bool,
    pub(crate) cut: bool,
    pub(crate) error: Option<String>,
}

impl Rec {
    /// (in, out) tokens served: usage when complete, else the prompt estimate and chunks.
    pub(crate) fn tokens(&self) -> (f64, f64) {
        if self.first.is_none() {
            return (0.0, 0.0);
        }
        if self.complete {
            (self.prompt as f64, self.completion as f64)
        } else {
            (self.expected_prompt as f64, self.chunks as f64)
        }
    }
}

// ---------- pure metric functions ----------

/// Part of `amount` served by `t` when it is spread uniformly over [first, end].
fn spread(amount: f64, first: f64, end: f64, t: f64) -> f64 {
    if t <= first {
        0.0
    } else if t >= end {
        amount
    } else {
        amount * (t - first) / (end - first)
    }
}

/// Sum of the spread `(amount, first, end)` items served by `t`.
pub(crate) fn service_at(items: &[(f64, f64, f64)], t: f64) -> f64 {
    items.iter().map(|&(a, f, e)| spread(a, f, e, t)).sum()
}

/// max − min (0 for fewer than two values).
pub(crate) fn max_min_diff(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    max - min
}

/// Least-squares slope of y over x (0 when x has no spread).
fn lsq_slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len().min(ys.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Nearest-rank percentile of sorted values (NaN when empty).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------- processes ----------

/// Child processes of one run, stopped in order (the gateway first, then the simulators).
pub(crate) struct Procs {
    pub(crate) children: Vec<Child>,
}

impl Procs {
    pub(crate) async fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub(crate) async fn wait_http(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not come up")
}

/// The load generator's HTTP client.
pub(crate) fn bench_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(512)
        .build()?)
}

/// A fresh scratch directory for one run (SQLite file, config), removed by the caller.
pub(crate) fn run_dir(kind: &str, label: &str, seed: u64) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "fairgate-{kind}-{}-{label}-{seed}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Starts `fairgate sim` serving [`MODEL`] on `port` with extra flags `args`.
pub(crate) fn spawn_sim(port: u16, args: &[String]) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating the fairgate binary")?;
    Command::new(&exe)
        .args(["sim", "--model", MODEL, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .env("FAIRGATE_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the simulator")
}

/// The config header every bench gateway shares: `listen`, SQLite in `dir`, the admin token.
pub(crate) fn gateway_config_head(dir: &Path, port: u16) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"sqlite://{db}\"\ndata_dir = \"{d}\"\n\
         admin_token = \"{ADMIN_TOKEN}\"\n",
        db = dir.join("bench.db").display(),
        d = dir.display(),
    )
}

/// Writes `config` into `dir` and starts `fairgate serve` on it; its log lines (warnings and
/// up) are copied to stderr.
pub(crate) fn spawn_gateway(dir: &Path, config: &str) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating the fairgate binary")?;
    let cfg_path = dir.join("gateway.toml");
    std::fs::write(&cfg_path, config)?;
    let mut gateway = Command::new(&exe)
        .arg("serve")
        .arg("--config")
        .arg(&cfg_path)
        .env("FAIRGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the gateway")?;
    if let Some(err) = gateway.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                eprintln!("[gateway] {l}");
            }
        });
    }
    Ok(gateway)
}

/// Starts the simulator and a gateway in `mode`; returns them and the gateway's and the
/// simulator's root URLs.
async fn start(
    dir: &Path,
    mode: &str,
    seed: u64,
    client: &reqwest::Client,
) -> anyhow::Result<(Procs, String, String)> {
    let (sim_port, gw_port) = (free_port()?, free_port()?);
    let sim_args: Vec<String> = [
        ("--max-num-seqs", SLOTS.to_string()),
        ("--decode-step-ms", DECODE_STEP_MS.to_string()),
        ("--decode-step-per-seq-us", DECODE_PER_SEQ_US.to_string()),
        ("--prefill-overhead-ms", PREFILL_OVERHEAD_MS.to_string()),
        ("--prefill-per-token-us", PREFILL_PER_TOKEN_US.to_string()),
        ("--seed", seed.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .collect();
    let sim = spawn_sim(sim_port, &sim_args)?;
    let config = format!(
        "{head}[admission]\nmode = \"{mode}\"\nqueue_timeout_ms = 600000\n\
         [[models]]\nname = \"{MODEL}\"\n[[models.backends]]\n\
         url = \"http://127.0.0.1:{sim_port}\"\nmax_in_flight = {SLOTS}\n",
        head = gateway_config_head(dir, gw_port),
    );
    // Stopped gateway first, so it does not see its backend vanish.
    let mut procs = Procs {
        children: vec![sim],
    };
    match spawn_gateway(dir, &config) {
        Ok(g) => procs.children.insert(0, g),
        Err(e) => {
            procs.stop().await;
            return Err(e);
        }
    }
    let gw = format!("http://127.0.0.1:{gw_port}");
    let sim = format!("http://127.0.0.1:{sim_port}");
    let up = async {
        wait_http(client, &format!("{sim}/health")).await?;
        wait_http(client, &format!("{gw}/healthz")).await
    }
    .await;
    if let Err(e) = up {
        procs.stop().await;
        return Err(e);
    }
    Ok((procs, gw, sim))
}

/// Creates a tenant and one key through the admin API; returns the key.
pub(crate) async fn tenant_key(
    client: &reqwest::Client,
    gw: &str,
    name: &str,
    weight: u32,
) -> anyhow::Result<String> {
    let base = format!("{gw}/admin/v1");
    client
        .post(format!("{base}/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": name, "weight": weight}))
        .send()
        .await?
        .error_for_status()
        .with_context(|| format!("creating tenant {name}"))?;
    let v: Value = client
        .post(format!("{base}/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"tenant": name, "name": "bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["key"].as_str().context("no key in response")?.to_owned())
}

// ---------- load ----------

/// What every request of a run shares: the client, the chat URL, the run's start and its
/// deadline (every request still open then is cut).
pub(crate) struct Ctx {
    pub(crate) client: reqwest::Client,
    pub(crate) url: String,
    pub(crate) t0: Instant,
    pub(crate) deadline: Instant,
}

/// `words` seeded random words of 1–4 lowercase letters, space-separated: exactly `words`
/// simulator tokens (each word is one token, its leading space included).
pub(crate) fn random_words(rng: &mut StdRng, words: u64) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let mut text = String::with_capacity(words as usize * 4);
    for i in 0..words {
        if i > 0 {
            text.push(' ');
        }
        for _ in 0..rng.gen_range(1..=4) {
            text.push(LETTERS[rng.gen_range(0..LETTERS.len())] as char);
        }
    }
    text
}

/// Chat body with a prompt of exactly `prompt` simulator tokens (≥ 8).
fn body(rng: &mut StdRng, prompt: u64, out: u64) -> (String, u64) {
    let text = random_words(rng, prompt.saturating_sub(7).max(1));
    let expected = fairgate_sim::count_tokens(&text) as u64 + 7;
    let b = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": out,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    (b.to_string(), expected)
}

/// Reads SSE events out of `buf` into `rec`; returns true at `[DONE]`.
pub(crate) fn take_events(buf: &mut Vec<u8>, rec: &mut Rec, now: f64) -> bool {
    let mut done = false;
    while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
        let event: Vec<u8> = buf.drain(..pos + 2).collect();
        for line in event.split(|&b| b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.trim_ascii();
            if data == b"[DONE]" {
                done = true;
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(data) else {
                continue;
            };
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
            {
                rec.chunks += 1;
                rec.first.get_or_insert(now);
            }
            if let Some(u) = v["usage"].as_object() {
                rec.prompt = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
                rec.completion = u
                    .get("completion_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
            }
            if v.get("error").is_some() {
                rec.error = Some(format!("error event: {v}"));
            }
        }
    }
    done
}

/// One streamed request, cut at the deadline.
pub(crate) async fn stream_one(ctx: &Ctx, key: &str, body: String, mut rec: Rec) -> Rec {
    let now = |c: &Ctx| c.t0.elapsed().as_secs_f64();
    rec.sent = now(ctx);
    let send = ctx
        .client
        .post(&ctx.url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send();
    let resp = tokio::select! {
        r = send => r,
        _ = tokio::time::sleep_until(ctx.deadline.into()) => {
            rec.cut = true;
            rec.end = now(ctx);
            return rec;
        }
    };
    let resp = match resp {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            rec.error = Some(format!("HTTP {status}: {}", text.trim()));
            rec.end = now(ctx);
            return rec;
        }
        Err(e) => {
            rec.error = Some(format!("request failed: {e}"));
            rec.end = now(ctx);
            return rec;
        }
    };
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut done = false;
    loop {
        let next = tokio::select! {
            c = stream.next() => c,
            _ = tokio::time::sleep_until(ctx.deadline.into()) => {
                rec.cut = true;
                break;
            }
        };
        let t = now(ctx);
        match next {
            None => break,
            Some(Err(e)) => {
                rec.error = Some(format!("stream broke: {e}"));
                break;
            }
            Some(Ok(b)) => {
                buf.extend_from_slice(&b);
                rec.end = t;
                done |= take_events(&mut buf, &mut rec, t);
            }
        }
    }
    if rec.end == 0.0 {
        rec.end = now(ctx);
    }
    rec.complete = done && rec.error.is_none() && !rec.cut;
    if !done && !rec.cut && rec.error.is_none() {
        rec.error = Some("stream ended without [DONE]".into());
    }
    rec
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
        let (b, expected) = body(&mut rng, spec.prompt, spec.out);
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
    let t0 = Instant::now();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        url: format!("{gw}/v1/chat/completions"),
        t0,
        deadline: t0 + Duration::from_secs_f64(seconds),
    });
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
        handles.push(tokio::spawn(worker(
            ctx.clone(),
            i,
            spec,
            keys[i].clone(),
            start_at,
            wseed,
        )));
    }
    let mut recs = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            recs.extend(v);
        }
    }
    recs
}

struct RunOut {
    mode: &'static str,
    probe: Vec<Rec>,
    recs: Vec<Rec>,
    /// Mean (running, waiting) of the simulator over the steady window.
    sim_load: (f64, f64),
}

/// Value of an unlabelled-by-us gauge in a Prometheus text page.
pub(crate) fn gauge(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sum of every series of metric `name` whose labels contain `label` (e.g. `reason="cold"`;
/// "" for all) in a Prometheus text page; `None` when there is none.
pub(crate) fn metric_sum(page: &str, name: &str, label: &str) -> Option<f64> {
    let mut sum = None;
    for l in page.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        let labels = match rest.strip_prefix('{') {
            Some(r) => r.split_once('}').map_or("", |(labels, _)| labels),
            None if rest.starts_with(' ') => "",
            None => continue,
        };
        if !labels.contains(label) {
            continue;
        }
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// Polls the simulator's running/waiting gauges between `from` and `to` seconds.
async fn sample_sim(client: reqwest::Client, sim: String, from: f64, to: f64) -> (f64, f64) {
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(from)).await;
    let (mut run, mut wait, mut n) = (0.0, 0.0, 0.0);
    while t0.elapsed().as_secs_f64() < to {
        if let Ok(r) = client.get(format!("{sim}/metrics")).send().await {
            if let Ok(page) = r.text().await {
                if let (Some(r), Some(w)) = (
                    gauge(&page, "vllm:num_requests_running"),
                    gauge(&page, "vllm:num_requests_waiting"),
                ) {
                    run += r;
                    wait += w;
                    n += 1.0;
                }
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

async fn run_load(load: &Load, mode: &'static str, seed: u64) -> anyhow::Result<RunOut> {
    let dir = run_dir("fairbench", mode, seed)?;
    let client = bench_client()?;
    let (procs, gw, sim) = start(&dir, mode, seed, &client).await?;
    let result = async {
        let mut keys = Vec::new();
        for t in &load.tenants {
            keys.push(tenant_key(&client, &gw, t.name, t.weight).await?);
        }
        let probe = match load.probe {
            Some((i, secs)) => drive(&client, &gw, load, &keys, &[i], secs, seed ^ 0xABCD).await,
            None => Vec::new(),
        };
        let all: Vec<usize> = (0..load.tenants.len()).collect();
        let (w0, w1) = load.window();
        let sampler = tokio::spawn(sample_sim(client.clone(), sim, w0, w1));
        let recs = drive(&client, &gw, load, &keys, &all, load.seconds, seed).await;
        let sim_load = sampler.await.unwrap_or((f64::NAN, f64::NAN));
        anyhow::Ok(RunOut {
            mode,
            probe,
            recs,
            sim_load,
        })
    }
    .await;
    procs.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

// ---------- analysis ----------

#[derive(Debug, Clone)]
struct TenantReport {
    name: &'static str,
    weight: u32,
    completed: usize,
    cut: usize,
    /// Cut before the first token.
    queued_at_end: usize,
    errors: usize,
    tokens_in: f64,
    tokens_out: f64,
    cost: f64,
    share: f64,
    weight_share: f64,
    share_err: f64,
    ttft_p50: f64,
    ttft_p99: f64,
    ttft_n: usize,
}

#[derive(Debug, Clone)]
struct RunReport {
    mode: &'static str,
    window: (f64, f64),
    tenants: Vec<TenantReport>,
    throughput: f64,
    out_throughput: f64,
    ticks: Vec<(f64, f64)>,
    /// (t, normalised service of each tenant) every 0.5 s, for plots.
    series: Vec<(f64, Vec<f64>)>,
    diff_max: f64,
    slope: f64,
    probe_ttft: Option<(f64, f64, usize)>,
    sim_load: (f64, f64),
    warnings: Vec<String>,
}

fn ttft_ms(recs: &[&Rec]) -> (f64, f64, usize) {
    let mut v: Vec<f64> = recs
        .iter()
        .filter_map(|r| r.first.map(|f| (f - r.sent) * 1e3))
        .collect();
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.50), percentile(&v, 0.99), v.len())
}

fn analyse(load: &Load, run: &RunOut) -> RunReport {
    let (w0, w1) = load.window();
    let ramp_end = load.ramp_end();
    let n = load.tenants.len();
    let wsum: f64 = load.tenants.iter().map(|t| f64::from(t.weight)).sum();
    // Per tenant: (amount, first, end) items for in, out and cost.
    let mut ins = vec![Vec::new(); n];
    let mut outs = vec![Vec::new(); n];
    let mut costs = vec![Vec::new(); n];
    let mut warnings = Vec::new();
    let mut bad_usage = 0;
    for r in &run.recs {
        let Some(first) = r.first else { continue };
        let (i, o) = r.tokens();
        ins[r.tenant].push((i, first, r.end));
        outs[r.tenant].push((o, first, r.end));
        costs[r.tenant].push((i + 2.0 * o, first, r.end));
        if r.complete && (r.completion != r.chunks || r.prompt != r.expected_prompt) {
            bad_usage += 1;
        }
    }
    if bad_usage > 0 {
        warnings.push(format!(
            "{bad_usage} completed requests whose usage differs from the chunks seen or the expected prompt"
        ));
    }
    let in_window = |items: &[(f64, f64, f64)]| service_at(items, w1) - service_at(items, w0);
    let cost_w: Vec<f64> = costs.iter().map(|c| in_window(c)).collect();
    let cost_total: f64 = cost_w.iter().sum();
    let mut tenants = Vec::new();
    let mut tok_total = 0.0;
    let mut out_total = 0.0;
    for (i, spec) in load.tenants.iter().enumerate() {
        let mine: Vec<&Rec> = run.recs.iter().filter(|r| r.tenant == i).collect();
        let errors: Vec<&&Rec> = mine.iter().filter(|r| r.error.is_some()).collect();
        if let Some(e) = errors.first() {
            warnings.push(format!(
                "{}: {} errors, first: {}",
                spec.name,
                errors.len(),
                e.error.as_deref().unwrap_or("")
            ));
        }
        let steady: Vec<&Rec> = mine
            .iter()
            .copied()
            .filter(|r| r.sent >= ramp_end && r.first.is_some_and(|f| f >= w0))
            .collect();
        let (p50, p99, nt) = ttft_ms(&steady);
        let (tin, tout) = (in_window(&ins[i]), in_window(&outs[i]));
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
            errors: errors.len(),
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

// ---------- output ----------

pub(crate) fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn print_runs(title: &str, load: &Load, runs: &[RunReport]) {
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

fn run_json(r: &RunReport) -> Value {
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

fn find<'a>(runs: &'a [RunReport], mode: &str) -> Option<&'a RunReport> {
    runs.iter().find(|r| r.mode == mode)
}

/// A criterion line, printed and kept for the JSON.
pub(crate) fn criterion(out: &mut Vec<Value>, name: &str, ok: bool, detail: String) {
    println!("criterion: {name}: {} ({detail})", pass(ok));
    out.push(json!({"criterion": name, "pass": ok, "detail": detail}));
}

// ---------- scenarios ----------

fn weighted_load(seconds: f64) -> Load {
    let t = |name, weight| TenantSpec {
        name,
        weight,
        streams: 24,
        prompt: 128,
        out: 128,
        backlogged: true,
        ramped: true,
    };
    Load {
        tenants: vec![t("w1", 1), t("w2", 2), t("w4", 4)],
        seconds,
        ramp_step: service_time(128) / SLOTS as f64,
        probe: None,
    }
}

fn interactive_load(seconds: f64) -> Load {
    Load {
        tenants: vec![
            TenantSpec {
                name: "light",
                weight: 1,
                streams: 1,
                prompt: 32,
                out: 32,
                backlogged: false,
                ramped: false,
            },
            TenantSpec {
                name: "heavy",
                weight: 1,
                streams: 3 * SLOTS,
                prompt: 64,
                out: 512,
                backlogged: true,
                ramped: true,
            },
        ],
        seconds,
        ramp_step: service_time(512) / SLOTS as f64,
        probe: Some((0, (seconds / 8.0).max(2.0))),
    }
}

fn asymmetry_load(seconds: f64) -> Load {
    Load {
        tenants: vec![
            TenantSpec {
                name: "a-short",
                weight: 1,
                streams: 32,
                prompt: 512,
                out: 32,
                backlogged: true,
                ramped: false,
            },
            TenantSpec {
                name: "b-long",
                weight: 1,
                streams: 24,
                prompt: 32,
                out: 512,
                backlogged: true,
                ramped: false,
            },
        ],
        seconds,
        ramp_step: 0.0,
        probe: None,
    }
}

async fn run_modes(
    load: &Load,
    modes: &[&'static str],
    seed: u64,
) -> anyhow::Result<Vec<RunReport>> {
    let mut out = Vec::new();
    for &m in modes {
        eprintln!("fairbench: running {} s in {m} mode…", load.seconds);
        let run = run_load(load, m, seed).await?;
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

pub async fn run(a: FairBenchArgs) -> anyhow::Result<()> {
    let seconds = a.seconds.max(5) as f64;
    let modes: &[&'static str] = match a.mode {
        ModeSel::Fair => &["fair"],
        ModeSel::Fifo => &["fifo"],
        ModeSel::Both => &["fair", "fifo"],
    };
    let want = |s: Scenario| a.scenario == s || a.scenario == Scenario::All;
    println!(
        "# fairgate fair-share bench (seed {}, sim: {SLOTS} seqs, decode {DECODE_STEP_MS} ms + {DECODE_PER_SEQ_US} µs/seq, prefill {PREFILL_OVERHEAD_MS} ms + {PREFILL_PER_TOKEN_US} µs/token)",
        a.seed
    );
    let mut results = serde_json::Map::new();
    let mut weighted_runs: Option<Vec<RunReport>> = None;

    if want(Scenario::Weighted) {
        let load = weighted_load(seconds);
        let runs = run_modes(&load, modes, a.seed).await?;
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

    if want(Scenario::Interactive) {
        let load = interactive_load(seconds);
        let runs = run_modes(&load, modes, a.seed).await?;
        print_runs(
            "interactive: one sequential light tenant beside a 3× flood",
            &load,
            &runs,
        );
        let mut crit = Vec::new();
        for r in &runs {
            if let Some((p50, p99, n)) = r.probe_ttft {
                println!(
                    "{}: light tenant alone: TTFT p50 {p50:.1} ms, p99 {p99:.1} ms ({n} requests); under load: p50 {:.1} ms, p99 {:.1} ms ({} requests)",
                    r.mode, r.tenants[0].ttft_p50, r.tenants[0].ttft_p99, r.tenants[0].ttft_n
                );
            }
        }
        if let (Some(f), Some(q)) = (find(&runs, "fair"), find(&runs, "fifo")) {
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
        results.insert(
            "interactive".into(),
            json!({"runs": runs.iter().map(run_json).collect::<Vec<_>>(), "criteria": crit}),
        );
    }

    if want(Scenario::Asymmetry) {
        let load = asymmetry_load(seconds);
        let runs = run_modes(&load, modes, a.seed).await?;
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
                let runs = run_modes(&load, modes, a.seed).await?;
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
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nresults written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_uniform_over_first_to_end() {
        assert_eq!(spread(30.0, 1.0, 4.0, 0.5), 0.0);
        assert_eq!(spread(30.0, 1.0, 4.0, 2.0), 10.0);
        assert_eq!(spread(30.0, 1.0, 4.0, 9.0), 30.0);
        // A zero-length request is served at once.
        assert_eq!(spread(5.0, 2.0, 2.0, 2.0), 0.0);
        assert_eq!(spread(5.0, 2.0, 2.0, 2.1), 5.0);
    }

    #[test]
    fn accumulated_difference() {
        // Tenant a: 10 over [0,1] and 20 over [1,3]; tenant b: 40 over [0,4].
        let a = [(10.0, 0.0, 1.0), (20.0, 1.0, 3.0)];
        let b = [(40.0, 0.0, 4.0)];
        let at = |t| max_min_diff(&[service_at(&a, t), service_at(&b, t)]);
        assert_eq!(at(1.0), 0.0); // 10 vs 10
        assert_eq!(at(2.0), 0.0); // 20 vs 20
        assert_eq!(at(3.0), 0.0); // 30 vs 30
        assert_eq!(at(4.0), 10.0); // 30 vs 40
        assert_eq!(max_min_diff(&[3.0]), 0.0);
        assert_eq!(max_min_diff(&[3.0, 7.0, 5.0]), 4.0);
    }

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let xs = [0.0, 1.0, 2.0, 3.0];
        assert!((lsq_slope(&xs, &[1.0, 3.0, 5.0, 7.0]) - 2.0).abs() < 1e-12);
        // y = 0, 1, 0, 1: mean x 1.5, Σ(dx·dy) = 1, Σdx² = 5 → 0.2.
        assert!((lsq_slope(&xs, &[0.0, 1.0, 0.0, 1.0]) - 0.2).abs() < 1e-12);
        assert_eq!(lsq_slope(&[1.0, 1.0], &[0.0, 5.0]), 0.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..10], 0.99), 10.0);
        assert_eq!(percentile(&[7.0], 0.0), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn metric_sums_over_series() {
        let page = "# HELP x\nvllm:request_success_total{finished_reason=\"length\"} 3\n\
            vllm:request_success_total{finished_reason=\"abort\"} 2\n\
            vllm:request_success_totalx 9\nplain 4.5\n";
        assert_eq!(
            metric_sum(page, "vllm:request_success_total", ""),
            Some(5.0)
        );
        assert_eq!(
            metric_sum(
                page,
                "vllm:request_success_total",
                "finished_reason=\"abort\""
            ),
            Some(2.0)
        );
        assert_eq!(metric_sum(page, "plain", ""), Some(4.5));
        assert_eq!(metric_sum(page, "missing", ""), None);
        assert_eq!(gauge(page, "plain"), Some(4.5));
    }

    #[test]
    fn sse_parsing_counts_content_and_usage() {
        let mut rec = Rec::default();
        let mut buf = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"hi \"}}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1}}\n\ndata: [DO"
            .to_vec();
        assert!(!take_events(&mut buf, &mut rec, 1.5));
        assert_eq!((rec.chunks, rec.prompt, rec.completion), (1, 9, 1));
        assert_eq!(rec.first, Some(1.5));
        buf.extend_from_slice(b"NE]\n\n");
        assert!(take_events(&mut buf, &mut rec, 2.0));
        assert!(buf.is_empty());
    }

    #[test]
    fn prompts_have_the_requested_size() {
        let mut rng = StdRng::seed_from_u64(1);
        for p in [32, 128, 512] {
            let (_, expected) = body(&mut rng, p, 8);
            assert_eq!(expected, p);
        }
    }
}
