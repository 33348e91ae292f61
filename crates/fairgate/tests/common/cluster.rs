//! Helpers of the several-replicas tests (`tests/cluster.rs`, `tests/cluster_share.rs`):
//! gateways joined through Redis, closed-loop load, and a watch on the backend's occupancy.

use std::time::Duration;

use fairgate::config::{ClusterSection, Secret};
use fairgate_sim::SimConfig;
use serde_json::Value;

use super::*;

pub const MODEL: &str = "m";

pub fn setup(sim: &str, redis: &str, prefix: &str, replica: &str) -> Setup {
    setup_n(sim, redis, prefix, replica, 8)
}

pub fn setup_n(sim: &str, redis: &str, prefix: &str, replica: &str, slots: usize) -> Setup {
    let (redis, prefix, replica) = (redis.to_owned(), prefix.to_owned(), replica.to_owned());
    let mut s = Setup::one(MODEL, sim, slots).with(move |c| {
        c.cluster = Some(ClusterSection {
            redis_url: Secret::new(redis.clone()),
            replica_id: Some(replica.clone()),
            key_prefix: prefix.clone(),
            heartbeat_ms: 100,
            member_ttl_ms: 500,
            redis_timeout_ms: 500,
            lease_interval_ms: 50,
        });
    });
    s.queue_timeout_ms = 60_000;
    s
}

/// Polls `check` every 50 ms for up to 15 s (generous: this waits for an effect, it does not
/// time it; the propagation time is the benchmark's business).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not seen within 15 s");
}

pub async fn status(gw: &TestGateway, key: &str) -> u16 {
    gw.post(key, "/v1/chat/completions", chat(MODEL, 4, false))
        .await
        .status()
        .as_u16()
}

/// `gw`'s `/metrics` text.
pub async fn metrics_text(gw: &TestGateway) -> String {
    gw.http
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn metric(gw: &TestGateway, name: &str) -> f64 {
    metrics_text(gw)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs `clients` closed loops of non-streamed requests against `gw` until `until`; each task
/// returns how many succeeded.
pub fn load(
    gw: &TestGateway,
    key: &str,
    clients: usize,
    until: tokio::time::Instant,
) -> Vec<tokio::task::JoinHandle<usize>> {
    load_timed(&gw.base, key, clients, until)
        .into_iter()
        .map(|run| tokio::spawn(async move { run.await.unwrap().0.len() }))
        .collect()
}

/// Samples the backend's running + waiting count until `until`; returns the largest seen.
pub fn watch_backend(sim: &Sim, until: tokio::time::Instant) -> tokio::task::JoinHandle<usize> {
    let sim = sim.sim.clone();
    tokio::spawn(async move {
        let mut max = 0;
        while tokio::time::Instant::now() < until {
            let s = sim.stats();
            max = max.max(s.running + s.waiting);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        max
    })
}

/// Closed loops like [`load`], recording when each success ended and counting failures.
pub fn load_timed(
    base: &str,
    key: &str,
    clients: usize,
    until: tokio::time::Instant,
) -> Vec<tokio::task::JoinHandle<(Vec<tokio::time::Instant>, usize)>> {
    (0..clients)
        .map(|_| {
            let (base, key) = (base.to_owned(), key.to_owned());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let (mut ok, mut failed) = (Vec::new(), 0);
                while tokio::time::Instant::now() < until {
                    let r = http
                        .post(format!("{base}/v1/chat/completions"))
                        .bearer_auth(&key)
                        .json(&chat(MODEL, 30, false))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => ok.push(tokio::time::Instant::now()),
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

pub async fn collect(
    runs: Vec<tokio::task::JoinHandle<(Vec<tokio::time::Instant>, usize)>>,
) -> (Vec<tokio::time::Instant>, usize) {
    let mut all = (Vec::new(), 0);
    for r in futures_util::future::join_all(runs).await {
        let (ok, failed) = r.unwrap();
        all.0.extend(ok);
        all.1 += failed;
    }
    all
}

pub fn timed_sim_config() -> SimConfig {
    SimConfig {
        model: MODEL.into(),
        max_num_seqs: 64,
        prefill_overhead: Duration::from_millis(1),
        prefill_per_token: Duration::ZERO,
        decode_step_base: Duration::from_millis(4),
        decode_step_per_seq: Duration::ZERO,
        ..SimConfig::default()
    }
}

/// A replica as its own process (`fairgate serve`), so it can be killed with SIGKILL.
pub struct Replica {
    pub child: std::process::Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn spawn_replica(db: &str, redis: &str, prefix: &str, name: &str, sim: &str) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{db}\"\nadmin_token = \"{ADMIN}\"\n\
         data_dir = \"{d}\"\n\
         [admission]\nqueue_timeout_ms = 60000\n\
         [cluster]\nredis_url = \"{redis}\"\nreplica_id = \"{name}\"\nkey_prefix = \"{prefix}\"\n\
         heartbeat_ms = 100\nmember_ttl_ms = 500\nredis_timeout_ms = 500\nlease_interval_ms = 50\n\
         [[models]]\nname = \"{MODEL}\"\n[[models.backends]]\nurl = \"{sim}\"\nmax_in_flight = 16\n",
        d = dir.path().display(),
    );
    let path = dir.path().join("fairgate.toml");
    std::fs::write(&path, config).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fairgate"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("FAIRGATE_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually("the replica answers", || async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    Replica {
        child,
        base,
        _dir: dir,
    }
}

pub async fn admin_get(base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/admin/v1{path}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

/// A simulator with real step timing (4 ms a token) and room for 64 sequences, so any
/// over-admission by the fleet would show in its occupancy, and `names` replicas in front of
/// it, each declaring `slots` for its one backend.
pub async fn start_fleet(
    db: &str,
    redis: &str,
    test: &str,
    names: &[&str],
    slots: usize,
) -> (Sim, Vec<TestGateway>) {
    let sim = Sim::start(timed_sim_config()).await;
    let prefix = format!("fgtest:{test}:{}", std::process::id());
    let mut gws = Vec::new();
    for r in names {
        gws.push(TestGateway::start(setup_n(&sim.url, redis, &prefix, r, slots), db).await);
    }
    (sim, gws)
}

/// Waits for load tasks started by [`load`] and adds up their successes.
pub async fn successes(runs: Vec<tokio::task::JoinHandle<usize>>) -> usize {
    futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum()
}
