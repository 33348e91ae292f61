//! The ledger through infrastructure faults, against the real `fairgate` binary and a private
//! PostgreSQL of the test's own (stopped and started here; the shared one is never touched):
//!
//! - PostgreSQL stopped mid-load: streamed requests keep succeeding; once it is back, the
//!   ledger holds exactly the requests and tokens the clients saw.
//! - SIGTERM with PostgreSQL down: the process exits within its bound, every row not in the
//!   database is in a spill file, and the next start replays them.
//! - SIGKILL mid-load: what is lost is at most what was in memory (queue plus batches), and
//!   the test prints the measured loss (README, "The ledger").
//!
//! Without PostgreSQL server binaries these tests SKIP loudly (and fail under CI).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Sim, ADMIN};
use fairgate_sim::SimConfig;
use fairgate_testkit::PrivatePostgres;
use serde_json::{json, Value};

/// `[ledger] shutdown_flush_ms` in these tests.
const SHUTDOWN_FLUSH_MS: u64 = 1_000;
const BATCH_SIZE: usize = 32;
const QUEUE_CAPACITY: usize = 128;

struct Gw {
    child: Option<Child>,
    base: String,
    log: PathBuf,
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, port: u16, db: &str, sim: &str) -> PathBuf {
    let path = dir.join("fairgate.toml");
    let text = format!(
        r#"
listen = "127.0.0.1:{port}"
database = "{db}"
data_dir = "{data}"
admin_token = "{ADMIN}"

[ledger]
batch_size = {BATCH_SIZE}
queue_capacity = {QUEUE_CAPACITY}
shutdown_flush_ms = {SHUTDOWN_FLUSH_MS}

[[models]]
name = "m"
[[models.backends]]
url = "{sim}"
max_in_flight = 64

[[tenants]]
name = "lab"
weight = 1
"#,
        data = dir.join("data").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Gw {
    async fn start(dir: &Path, config: &Path) -> Gw {
        let text = std::fs::read_to_string(config).unwrap();
        let port: u16 = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
            .and_then(|p| p.trim_end_matches('"').parse().ok())
            .unwrap();
        let log = dir.join(format!("gateway-{}.log", fairgate_types::now_millis()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fairgate"))
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("FAIRGATE_ADMIN_TOKEN")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let gw = Gw {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::Client::new();
        for _ in 0..1_500 {
            if let Ok(r) = http
                .get(format!("{}/admin/v1/tenants/lab", gw.base))
                .bearer_auth(ADMIN)
                .send()
                .await
            {
                if r.status() == 200 {
                    return gw;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fairgate did not come up:\n{}", gw.log_tail());
    }

    fn log_tail(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = bytes.len().saturating_sub(4_000);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    async fn key(&self) -> String {
        let r = reqwest::Client::new()
            .post(format!("{}/admin/v1/keys", self.base))
            .bearer_auth(ADMIN)
            .json(&json!({"tenant": "lab", "name": "load", "user": "u1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        v["key"].as_str().unwrap().to_owned()
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let ok = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Polls for the exit for at most `limit`; the exit status if it exited.
    fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the clients saw: request id -> prompt + completion tokens, for every streamed request
/// answered 200 and read to `[DONE]`; and anything else that happened.
#[derive(Default)]
struct Seen {
    ok: BTreeMap<String, u64>,
    failures: Vec<String>,
}

struct Load {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(base: &str, key: &str, workers: usize) -> Load {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (seen, stop) = (seen.clone(), stop.clone());
                let url = format!("{base}/v1/chat/completions");
                let key = key.to_owned();
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = one_stream(&http, &url, &key).await;
                        let mut s = seen.lock().unwrap();
                        match outcome {
                            Ok((id, tokens)) => {
                                s.ok.insert(id, tokens);
                            }
                            Err(e) => s.failures.push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            seen,
            stop,
            workers,
            started: Instant::now(),
        }
    }

    fn done(&self) -> usize {
        self.seen.lock().unwrap().ok.len()
    }

    /// Waits until `n` more requests completed (bounded, so a stuck gateway fails the test).
    async fn wait_more(&self, n: usize) {
        let target = self.done() + n;
        for _ in 0..3_000 {
            if self.done() >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = self.seen.lock().unwrap();
        panic!(
            "load stalled at {} requests; failures: {:?}",
            s.ok.len(),
            &s.failures[..s.failures.len().min(5)]
        );
    }

    async fn stop(self) -> (Seen, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.unwrap();
        }
        let elapsed = self.started.elapsed();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        (seen, elapsed)
    }
}

async fn one_stream(http: &reqwest::Client, url: &str, key: &str) -> Result<(String, u64), String> {
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "Count the ledger rows, one by one."}],
        "max_tokens": 12,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let resp = http
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status();
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.map_err(|e| format!("read: {e}"))?;
    if status != 200 {
        return Err(format!("status {status}: {text}"));
    }
    let id = id.ok_or("no x-request-id")?;
    let mut tokens = None;
    let mut done = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            tokens = Some(
                u["prompt_tokens"].as_u64().unwrap_or(0)
                    + u["completion_tokens"].as_u64().unwrap_or(0),
            );
        }
    }
    if !done {
        return Err("stream ended without [DONE]".into());
    }
    Ok((id, tokens.ok_or("no usage chunk")?))
}

/// Ledger rows in the database: id -> prompt + completion tokens.
async fn db_rows(url: &str) -> BTreeMap<String, u64> {
    use sqlx::{Connection, Row};
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let rows = sqlx::query("SELECT id, prompt_tokens + completion_tokens AS t FROM ledger")
        .fetch_all(&mut c)
        .await
        .unwrap();
    let _ = c.close().await;
    rows.iter()
        .map(|r| {
            let t: i64 = r.get("t");
            (r.get::<String, _>("id"), u64::try_from(t).unwrap())
        })
        .collect()
}

fn spill_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| fairgate_store::is_spill_file(p))
        .collect();
    files.sort();
    files
}

/// Rows in the spill files: id -> prompt + completion tokens (a torn last line is ignored).
fn spilled(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for f in spill_files(dir) {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            if let Ok(r) = serde_json::from_str::<fairgate_types::LedgerRow>(line) {
                out.insert(r.id.0, r.prompt_tokens + r.completion_tokens);
            }
        }
    }
    out
}

fn private_postgres() -> Option<PrivatePostgres> {
    match PrivatePostgres::start() {
        Ok(pg) => Some(pg),
        Err(e) => {
            fairgate_testkit::require("PostgreSQL server binaries (initdb, postgres)", &e);
            None
        }
    }
}

async fn eventually_db_equals(url: &str, expected: &BTreeMap<String, u64>, gw: &Gw) {
    let mut last = BTreeMap::new();
    for _ in 0..600 {
        last = db_rows(url).await;
        if &last == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = expected.keys().filter(|k| !last.contains_key(*k)).count();
    let extra = last.keys().filter(|k| !expected.contains_key(*k)).count();
    panic!(
        "ledger never matched what clients saw: {} expected, {} stored, {missing} missing, \
         {extra} extra\n{}",
        expected.len(),
        last.len(),
        gw.log_tail()
    );
}

fn sim_config() -> SimConfig {
    SimConfig {
        // Streams take a little while, so a fault lands in the middle of some.
        decode_step_base: Duration::from_millis(2),
        ..SimConfig::instant("m")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_mid_load_loses_nothing() {
    let Some(mut pg) = private_postgres() else {
        return;
    };
    let sim = Sim::start(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), &pg.url(), &sim.url);
    let mut gw = Gw::start(dir.path(), &config).await;
    let key = gw.key().await;

    let load = Load::start(&gw.base, &key, 4);
    load.wait_more(30).await;
    tokio::task::block_in_place(|| pg.stop());
    // The request path never needs the database: the load goes on.
    load.wait_more(60).await;
    for _ in 0..300 {
        if gw.metric("fairgate_database_up").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.metric("fairgate_database_up").await, 0.0);
    assert!(gw.metric("fairgate_ledger_rows_spilled_total").await > 0.0);
    tokio::task::block_in_place(|| pg.start_again()).unwrap();
    load.wait_more(30).await;
    let (seen, _) = load.stop().await;
    assert!(
        seen.failures.is_empty(),
        "every request must succeed: {:?}",
        &seen.failures[..seen.failures.len().min(5)]
    );

    // Once the database is back the spilled rows are replayed: the ledger is exactly what the
    // clients were served, row for row and token for token.
    eventually_db_equals(&pg.url(), &seen.ok, &gw).await;
    let total: u64 = seen.ok.values().sum();
    let stored: u64 = db_rows(&pg.url()).await.values().sum();
    assert_eq!(stored, total);
    assert!(gw.metric("fairgate_ledger_rows_replayed_total").await > 0.0);
    assert_eq!(gw.metric("fairgate_database_up").await, 1.0);
    for _ in 0..300 {
        if spill_files(&dir.path().join("data")).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spill_files(&dir.path().join("data")).is_empty());
    assert_eq!(gw.metric("fairgate_ledger_spill_pending_rows").await, 0.0);

    gw.signal("TERM");
    let status = gw.exited_within(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_postgres_down_spills_everything_and_replays_at_next_start() {
    let Some(mut pg) = private_postgres() else {
        return;
    };
    let sim = Sim::start(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), free_port(), &pg.url(), &sim.url);
    let mut gw = Gw::start(dir.path(), &config).await;
    let key = gw.key().await;

    let load = Load::start(&gw.base, &key, 4);
    load.wait_more(20).await;
    tokio::task::block_in_place(|| pg.stop());
    load.wait_more(40).await;
    let (seen, _) = load.stop().await;
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);

    let signalled = Instant::now();
    gw.signal("TERM");
    // The bound is `shutdown_flush_ms` for the ledger after the HTTP side drained; the slack
    // only absorbs a slow, shared machine. Exiting at all (not hanging on the database) is
    // the behaviour under test.
    let status = tokio::task::block_in_place(|| {
        gw.exited_within(Duration::from_millis(SHUTDOWN_FLUSH_MS) + Duration::from_secs(20))
    });
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}\n{}",
        gw.log_tail()
    );
    // Reported, not asserted (README, "The ledger").
    eprintln!(
        "SIGTERM with PostgreSQL down: exited after {:?}",
        signalled.elapsed()
    );

    // Every served request is in the database (committed before the outage) or in a spill file.
    tokio::task::block_in_place(|| pg.start_again()).unwrap();
    let in_db = db_rows(&pg.url()).await;
    let in_spill = spilled(&data);
    assert!(!in_spill.is_empty(), "the outage must have spilled rows");
    let mut union = in_db.clone();
    union.extend(in_spill.clone());
    let served: BTreeSet<&String> = seen.ok.keys().collect();
    let accounted: BTreeSet<&String> = union.keys().collect();
    assert_eq!(accounted, served, "every row in the database or the spill");
    for (id, t) in &in_spill {
        assert_eq!(seen.ok.get(id), Some(t), "spilled row {id}");
    }

    // The next start replays the spill files: the ledger is complete, the files are gone.
    let gw = Gw::start(dir.path(), &config).await;
    eventually_db_equals(&pg.url(), &seen.ok, &gw).await;
    for _ in 0..300 {
        if spill_files(&data).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spill_files(&data).is_empty(), "replayed files are removed");
    assert!(gw.metric("fairgate_ledger_rows_replayed_total").await >= in_spill.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_load_loses_at_most_what_was_in_memory() {
    let Some(pg) = private_postgres() else {
        return;
    };
    let sim = Sim::start(sim_config()).await;
    let mut worst = 0usize;
    for run in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // A fresh database per run: the ledger holds only this run's rows.
        let db = format!("run{run}");
        {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&mut c)
                .await
                .unwrap();
        }
        let url = pg.url_for(&db);
        let config = write_config(dir.path(), free_port(), &url, &sim.url);
        let mut gw = Gw::start(dir.path(), &config).await;
        let key = gw.key().await;
        let load = Load::start(&gw.base, &key, 8);
        load.wait_more(150).await;
        gw.child.as_mut().unwrap().kill().unwrap();
        gw.child.take().unwrap().wait().unwrap();
        let (seen, elapsed) = load.stop().await;

        let in_db = db_rows(&url).await;
        let in_spill = spilled(&data);
        let lost: Vec<&String> = seen
            .ok
            .keys()
            .filter(|id| !in_db.contains_key(*id) && !in_spill.contains_key(*id))
            .collect();
        let rate = seen.ok.len() as f64 / elapsed.as_secs_f64();
        eprintln!(
            "kill -9 run {run}: {} requests served in {:.1} s ({rate:.0}/s), {} in the database, \
             {} spilled, {} lost (~{:.0} ms of traffic)",
            seen.ok.len(),
            elapsed.as_secs_f64(),
            in_db.len(),
            in_spill.len(),
            lost.len(),
            lost.len() as f64 / rate * 1000.0
        );
        // What a kill can lose is what was in memory: the queue plus at most two batches.
        assert!(
            lost.len() <= QUEUE_CAPACITY + 2 * BATCH_SIZE,
            "{} rows lost",
            lost.len()
        );
        worst = worst.max(lost.len());
    }
    eprintln!("kill -9: worst loss over 3 runs: {worst} rows");
}
