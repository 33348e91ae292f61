//! Shared harness for the gateway's end-to-end tests: real simulators and a real gateway on
//! port 0, a real database (a temp SQLite file, or PostgreSQL in its own schema), HTTP only.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use fairgate::config::{BackendConfig, Config, ModelConfig};
use fairgate::server::Gateway;
use fairgate_sim::{SimConfig, Simulator};
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub mod cluster;
pub mod portal;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub struct Sim {
    pub sim: Simulator,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Sim {
    pub async fn start(cfg: SimConfig) -> Sim {
        Sim::start_at("127.0.0.1:0", cfg).await
    }

    /// A simulator on a given address: a stopped one can come back where it was.
    pub async fn start_at(addr: &str, cfg: SimConfig) -> Sim {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sim = Simulator::new(cfg);
        let (tx, rx) = oneshot::channel::<()>();
        let s = sim.clone();
        tokio::spawn(async move {
            let _ = fairgate_sim::serve(listener, s, async move {
                let _ = rx.await;
            })
            .await;
        });
        Sim {
            sim,
            url,
            stop: Some(tx),
        }
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Paths the simulator received (scrapes and probes excluded).
pub fn seen_paths(sim: &Sim) -> Vec<String> {
    sim.sim
        .recent_requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect()
}

/// Which database a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct DbHandle {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

/// The PostgreSQL the tests use: `FAIRGATE_TEST_POSTGRES_URL`, else a private instance for this
/// test binary (`fairgate_testkit::postgres_url`); `None` when neither is available outside CI.
pub fn pg_base_url() -> Option<String> {
    fairgate_testkit::postgres_url()
}

/// A fresh database; `None` if PostgreSQL is unavailable outside CI (under CI,
/// `fairgate_testkit::require` panics, so a skipped infrastructure test never passes there).
pub async fn fresh_db(db: Db) -> Option<DbHandle> {
    match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("t.db").display());
            Some(DbHandle {
                url,
                _dir: Some(dir),
                pg_schema: None,
            })
        }
        Db::Postgres => {
            let base = pg_base_url()?;
            use sqlx::Connection;
            let connect = sqlx::PgConnection::connect(&base);
            let mut admin = match tokio::time::timeout(Duration::from_secs(30), connect).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    fairgate_testkit::require("PostgreSQL", &format!("connect to {base}: {e}"));
                    return None;
                }
                Err(_) => {
                    fairgate_testkit::require(
                        "PostgreSQL",
                        &format!("connect to {base}: no answer in 30 s"),
                    );
                    return None;
                }
            };
            let schema = format!("fg_e2e_{}", uuid_like());
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&mut admin)
                .await
                .unwrap();
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
            Some(DbHandle {
                url,
                _dir: None,
                pg_schema: Some((base, schema)),
            })
        }
    }
}

impl DbHandle {
    pub async fn cleanup(&self) {
        if let Some((base, schema)) = &self.pg_schema {
            use sqlx::Connection;
            if let Ok(mut c) = sqlx::PgConnection::connect(base).await {
                let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                    .execute(&mut c)
                    .await;
            }
        }
    }
}

fn uuid_like() -> String {
    use rand::Rng;
    let mut r = rand::thread_rng();
    (0..12)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[r.gen_range(0..36)]))
        .collect()
}

pub struct TestGateway {
    pub base: String,
    pub http: reqwest::Client,
    pub db_url: String,
    stop: Option<oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A config change applied just before the gateway starts.
pub type Tweak = Box<dyn Fn(&mut Config) + Send + Sync>;

impl Setup {
    /// One model served by several backends, each with `max_in_flight` slots.
    pub fn many(model: &str, urls: &[&str], max_in_flight: usize) -> Setup {
        Setup {
            models: vec![(
                model.to_owned(),
                urls.iter()
                    .map(|u| ((*u).to_owned(), max_in_flight))
                    .collect(),
            )],
            ..Setup::one(model, urls[0], max_in_flight)
        }
    }
}

pub struct Setup {
    pub models: Vec<(String, Vec<(String, usize)>)>,
    pub queue_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub max_body_bytes: usize,
    /// Last-minute config changes (admission mode, prices, declared tenants, ...).
    pub tweak: Option<Tweak>,
    /// Slurm as the provisioner sees it, instead of the configured one (a test's fake).
    pub slurm: Option<Arc<dyn fairgate_slurm::api::Slurm>>,
}

impl Setup {
    /// Adds a config change, after any made before.
    pub fn with(mut self, f: impl Fn(&mut Config) + Send + Sync + 'static) -> Setup {
        let before = self.tweak.take();
        self.tweak = Some(Box::new(move |c: &mut Config| {
            if let Some(b) = &before {
                b(c);
            }
            f(c);
        }));
        self
    }

    pub fn one(model: &str, url: &str, max_in_flight: usize) -> Setup {
        Setup {
            models: vec![(model.to_owned(), vec![(url.to_owned(), max_in_flight)])],
            queue_timeout_ms: 5_000,
            first_byte_timeout_ms: 10_000,
            max_body_bytes: 1024 * 1024,
            tweak: None,
            slurm: None,
        }
    }
}

impl TestGateway {
    pub async fn start(setup: Setup, db_url: &str) -> TestGateway {
        Self::start_resolving(setup, db_url, None).await
    }

    /// Like [`TestGateway::start`], resolving `discover` entries with `resolver`.
    pub async fn start_resolving(
        setup: Setup,
        db_url: &str,
        resolver: Option<Arc<dyn fairgate_gateway::discovery::Resolve>>,
    ) -> TestGateway {
        let mut config = Config::load(None, Vec::<(String, String)>::new()).unwrap();
        config.listen = "127.0.0.1:0".into();
        config.database = db_url.to_owned();
        config.admin_token = Some(ADMIN.to_owned());
        config.admission.queue_timeout_ms = setup.queue_timeout_ms;
        config.upstream.first_byte_timeout_ms = setup.first_byte_timeout_ms;
        config.upstream.idle_timeout_ms = setup.first_byte_timeout_ms;
        config.max_body_bytes = setup.max_body_bytes;
        config.data_dir = std::env::temp_dir();
        config.models = setup
            .models
            .iter()
            .map(|(name, backends)| {
                ModelConfig::new(
                    name.clone(),
                    backends
                        .iter()
                        .map(|(url, n)| BackendConfig::new(url.clone(), *n))
                        .collect(),
                )
            })
            .collect();
        if let Some(f) = &setup.tweak {
            f(&mut config);
        }
        config.validate().unwrap();
        let mut gw = Gateway::build(config).await.unwrap();
        if let Some(r) = resolver {
            gw = gw.with_resolver(r);
        }
        if let Some(s) = &setup.slurm {
            gw = gw.with_slurm(s.clone());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(gw.serve(listener, async move {
            let _ = rx.await;
        }));
        TestGateway {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            db_url: db_url.to_owned(),
            stop: Some(tx),
            join: Some(join),
        }
    }

    /// Graceful shutdown; returns once the ledger is flushed.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await.unwrap().unwrap();
        }
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/admin/v1{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn tenant(&self, name: &str, weight: u32) {
        let (s, v) = self
            .admin(
                reqwest::Method::POST,
                "/tenants",
                Some(json!({"name": name, "weight": weight})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }

    /// Creates a key and returns (id, secret).
    pub async fn key(&self, tenant: &str, models: Option<Vec<&str>>) -> (String, String) {
        let (s, v) = self
            .admin(
                reqwest::Method::POST,
                "/keys",
                Some(json!({"tenant": tenant, "name": "test", "user": "u1", "models": models})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn post(&self, key: &str, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn usage(&self, tenant: &str) -> Vec<Value> {
        let (s, v) = self
            .admin(
                reqwest::Method::GET,
                &format!("/usage?tenant={tenant}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["data"].as_array().unwrap().clone()
    }

    pub async fn requests(&self, tenant: Option<&str>) -> Vec<Value> {
        let path = match tenant {
            Some(t) => format!("/requests?tenant={t}&limit=10000"),
            None => "/requests?limit=10000".to_owned(),
        };
        let (s, v) = self.admin(reqwest::Method::GET, &path, None).await;
        assert_eq!(s, 200, "{v}");
        v["data"].as_array().unwrap().clone()
    }

    /// Polls until `n` ledger rows exist for `tenant` (rows of cancelled requests are recorded
    /// when the server notices the disconnect, which is after the client's last call returns).
    pub async fn wait_rows(&self, tenant: Option<&str>, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            let rows = self.requests(tenant).await;
            if rows.len() >= n {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let rows = self.requests(tenant).await;
        panic!("expected {n} ledger rows, found {}: {rows:#?}", rows.len());
    }
}

pub fn chat(model: &str, max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about fair queueing in one line."}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// Reads an SSE body and returns the JSON payloads of its data events (without `[DONE]`) and
/// whether `[DONE]` arrived.
pub async fn sse_events(resp: reqwest::Response) -> (Vec<Value>, bool) {
    let text = resp.text().await.unwrap();
    let mut out = Vec::new();
    let mut done = false;
    for block in text.split("\n\n") {
        for line in block.lines() {
            if let Some(data) = line.strip_prefix("data: ") {
                if data == "[DONE]" {
                    done = true;
                } else {
                    out.push(serde_json::from_str(data).unwrap());
                }
            }
        }
    }
    (out, done)
}

pub fn sum(rows: &[Value], field: &str) -> u64 {
    rows.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum()
}

/// Runs `fairgate admin ARGS` against the gateway; returns (success, stdout, stderr).
pub async fn cli(gw: &TestGateway, args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fairgate"));
    cmd.arg("admin")
        .args(["--url", &gw.base, "--token", ADMIN])
        .args(args)
        .env_remove("FAIRGATE_URL")
        .env_remove("FAIRGATE_ADMIN_TOKEN");
    let out = cmd.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn json_out(ok: bool, out: &str, err: &str) -> Value {
    assert!(ok, "stderr: {err}\nstdout: {out}");
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}
