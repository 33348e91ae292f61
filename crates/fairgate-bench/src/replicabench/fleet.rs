//! The replicas benchmark's processes: a private Redis, two throwaway PostgreSQL schemas, the
//! timed and the instant simulator, three `fairgate serve` replicas joined by `[cluster]`, and
//! one gateway without `[cluster]` for the latency baseline. All are children of this binary
//! (Redis aside, which is `redis-server` from `PATH`), stopped and removed at the end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::Rng;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::fairbench::driver::sim_flags;
use crate::fairbench::scenarios::SLOTS;
use crate::fairbench::Engine;
use crate::harness::process::{
    free_port, scratch_dir, spawn_gateway, spawn_sim, wait_http, ADMIN_TOKEN, MODEL,
};

/// The model of the latency phase, served by a zero-latency simulator.
pub(crate) const INSTANT_MODEL: &str = "instant";
/// `max_in_flight` of the instant backend (room for every request of the latency phase).
pub(crate) const INSTANT_SLOTS: usize = 256;
/// Replica names (`replica_id`); the first is where the admin changes are made.
pub(crate) const REPLICAS: [&str; 3] = ["a", "b", "c"];

/// The `[cluster]` timings the replicas ran with: the config file leaves them out, so these
/// are the gateway's defaults or what `FAIRGATE_CLUSTER__*` set, as the gateway reads them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timings {
    pub(crate) heartbeat_ms: u64,
    pub(crate) member_ttl_ms: u64,
    pub(crate) lease_interval_ms: u64,
    pub(crate) redis_timeout_ms: u64,
}

pub(crate) struct Replica {
    pub(crate) name: &'static str,
    pub(crate) url: String,
    /// `replica#epoch`, as `/admin/v1/cluster` names it.
    pub(crate) member: String,
    /// `None` once killed.
    pub(crate) child: Option<Child>,
}

/// Two schemas in the PostgreSQL at `base`: the fleet's and the single gateway's.
struct Schemas {
    base: String,
    names: Vec<String>,
}

impl Schemas {
    async fn create(base: &str) -> anyhow::Result<Schemas> {
        use sqlx::Connection;
        let stem = format!(
            "fgbench_{}_{:08x}",
            std::process::id(),
            rand::thread_rng().gen::<u32>()
        );
        let shown = without_password(base);
        let mut c =
            tokio::time::timeout(Duration::from_secs(15), sqlx::PgConnection::connect(base))
                .await
                .with_context(|| format!("connecting to {shown}: no answer in 15 s"))?
                .with_context(|| {
                    format!(
                        "connecting to {shown} (set --postgres-url or FAIRGATE_BENCH_POSTGRES_URL)"
                    )
                })?;
        let names = vec![format!("{stem}_fleet"), format!("{stem}_single")];
        for n in &names {
            sqlx::query(&format!("CREATE SCHEMA {n}"))
                .execute(&mut c)
                .await
                .with_context(|| format!("creating schema {n}"))?;
        }
        Ok(Schemas {
            base: base.to_owned(),
            names,
        })
    }

    /// The database URL of schema `i` (its `search_path`, as the tests isolate themselves).
    fn url(&self, i: usize) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}options=-c%20search_path%3D{}",
            self.base, self.names[i]
        )
    }

    async fn drop_all(&self) {
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::PgConnection::connect(&self.base).await {
            // Not the "drop cascades to N other objects" notices.
            let _ = sqlx::query("SET client_min_messages = warning")
                .execute(&mut c)
                .await;
            for n in &self.names {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {n} CASCADE"))
                    .execute(&mut c)
                    .await;
            }
        }
    }
}

/// `url` without what its user part may hold (a password), for messages.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        _ => url.to_owned(),
    }
}

/// Everything the benchmark started.
pub(crate) struct Fleet {
    pub(crate) replicas: Vec<Replica>,
    /// The gateway without `[cluster]` (same database kind, own schema).
    pub(crate) single: String,
    pub(crate) timed_sim: String,
    pub(crate) instant_sim: String,
    pub(crate) timings: Timings,
    /// Redis, the simulators and the single gateway.
    others: Vec<Child>,
    schemas: Option<Schemas>,
    dir: PathBuf,
}

fn redis_server() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .context("redis-server not found on PATH (Debian/Ubuntu: apt-get install redis-server)")
}

/// PING over RESP; true on `+PONG`.
async fn redis_ping(port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await?;
        std::io::Result::Ok(buf.starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}

/// A private Redis without persistence on a free port, in `dir`.
async fn start_redis(dir: &Path) -> anyhow::Result<(Child, u16)> {
    let bin = redis_server()?;
    let port = free_port()?;
    let mut child = Command::new(&bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    for _ in 0..200 {
        if redis_ping(port).await {
            return Ok((child, port));
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("redis-server exited while starting on port {port}: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.start_kill();
    bail!("redis-server on port {port} did not answer PING in 10 s")
}

/// A replica's (or the single gateway's) config: the timed model `bench` (replicas only) and
/// the instant model, fair admission that never sheds, `cluster` appended as is.
fn gateway_config(
    port: u16,
    db: &str,
    dir: &Path,
    timed_sim: Option<&str>,
    instant_sim: &str,
    cluster: &str,
) -> String {
    let mut c = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{db}\"\ndata_dir = \"{d}\"\n\
         admin_token = \"{ADMIN_TOKEN}\"\n\
         [admission]\nmode = \"fair\"\nqueue_timeout_ms = 600000\n{cluster}",
        d = dir.display(),
    );
    if let Some(sim) = timed_sim {
        c.push_str(&format!(
            "[[models]]\nname = \"{MODEL}\"\n[[models.backends]]\nurl = \"{sim}\"\nmax_in_flight = {SLOTS}\n"
        ));
    }
    c.push_str(&format!(
        "[[models]]\nname = \"{INSTANT_MODEL}\"\n[[models.backends]]\nurl = \"{instant_sim}\"\nmax_in_flight = {INSTANT_SLOTS}\n"
    ));
    c
}

/// `GET {base}/admin/v1{path}` as JSON (`Null` on any failure), bounded by 2 s.
pub(crate) async fn admin_get(client: &reqwest::Client, base: &str, path: &str) -> Value {
    let r = client
        .get(format!("{base}/admin/v1{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    match r {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// The member ids `base` sees (empty when it does not answer).
pub(crate) async fn members(client: &reqwest::Client, base: &str) -> Vec<String> {
    admin_get(client, base, "/cluster").await["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

impl Fleet {
    /// Starts everything; on failure whatever was started is stopped and removed.
    pub(crate) async fn start(
        client: &reqwest::Client,
        postgres: &str,
        seed: u64,
    ) -> anyhow::Result<Fleet> {
        let dir = scratch_dir("replicas")?;
        let mut fleet = Fleet {
            replicas: Vec::new(),
            single: String::new(),
            timed_sim: String::new(),
            instant_sim: String::new(),
            timings: Timings {
                heartbeat_ms: 0,
                member_ttl_ms: 0,
                lease_interval_ms: 0,
                redis_timeout_ms: 0,
            },
            others: Vec::new(),
            schemas: None,
            dir,
        };
        match fleet.start_all(client, postgres, seed).await {
            Ok(()) => Ok(fleet),
            Err(e) => {
                fleet.stop().await;
                Err(e)
            }
        }
    }

    async fn start_all(
        &mut self,
        client: &reqwest::Client,
        postgres: &str,
        seed: u64,
    ) -> anyhow::Result<()> {
        self.schemas = Some(Schemas::create(postgres).await?);
        let (redis, redis_port) = start_redis(&self.dir).await?;
        self.others.push(redis);
        for (model, args) in [
            (MODEL, sim_flags(seed, Engine::default())),
            (INSTANT_MODEL, vec!["--instant".to_owned()]),
        ] {
            let port = free_port()?;
            self.others.push(spawn_sim(model, port, &args)?);
            let url = format!("http://127.0.0.1:{port}");
            wait_http(client, &format!("{url}/health")).await?;
            if model == MODEL {
                self.timed_sim = url;
            } else {
                self.instant_sim = url;
            }
        }
        let fleet_db = self.schemas.as_ref().map(|s| s.url(0)).unwrap_or_default();
        let cluster = format!(
            "[cluster]\nredis_url = \"redis://127.0.0.1:{redis_port}\"\nkey_prefix = \"fgbench\"\n"
        );
        // One after the other: the first one migrates the schema.
        for name in REPLICAS {
            let rdir = self.dir.join(format!("replica-{name}"));
            std::fs::create_dir_all(&rdir)?;
            let port = free_port()?;
            let config = gateway_config(
                port,
                &fleet_db,
                &rdir,
                Some(&self.timed_sim),
                &self.instant_sim,
                &format!("{cluster}replica_id = \"{name}\"\n"),
            );
            let child = spawn_gateway(&rdir, &config, Some(&format!("replica {name}")))?;
            let url = format!("http://127.0.0.1:{port}");
            self.replicas.push(Replica {
                name,
                url: url.clone(),
                member: String::new(),
                child: Some(child),
            });
            wait_http(client, &format!("{url}/healthz")).await?;
        }
        let sdir = self.dir.join("single");
        std::fs::create_dir_all(&sdir)?;
        let port = free_port()?;
        let single_db = self.schemas.as_ref().map(|s| s.url(1)).unwrap_or_default();
        let config = gateway_config(port, &single_db, &sdir, None, &self.instant_sim, "");
        self.others
            .push(spawn_gateway(&sdir, &config, Some("single"))?);
        self.single = format!("http://127.0.0.1:{port}");
        wait_http(client, &format!("{}/healthz", self.single)).await?;
        self.timings = effective_timings(&self.dir.join("replica-a").join("gateway.toml"))?;
        // Every replica sees all three before anything is measured.
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..self.replicas.len() {
            loop {
                let v = admin_get(client, &self.replicas[i].url, "/cluster").await;
                let n = v["members"].as_array().map_or(0, Vec::len);
                if n == REPLICAS.len() && v["redis_up"] == true {
                    self.replicas[i].member = v["member"].as_str().unwrap_or_default().to_owned();
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "replica {} sees {n} members after 30 s: {v}",
                        self.replicas[i].name
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Root URLs of the replicas, in order.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.url.clone()).collect()
    }

    /// Stops every process (replicas first), drops the schemas, removes the scratch dir.
    pub(crate) async fn stop(mut self) {
        for r in &mut self.replicas {
            if let Some(c) = &mut r.child {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
        // The single gateway before the simulators, Redis last.
        for c in self.others.iter_mut().rev() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        if let Some(s) = &self.schemas {
            s.drop_all().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `[cluster]` timings of the replica config at `path`, read the way `fairgate serve`
/// reads them (file, then `FAIRGATE_*` overrides from this process's environment, which the
/// replicas inherit).
fn effective_timings(path: &Path) -> anyhow::Result<Timings> {
    let cfg = fairgate_gateway::config::Config::load(Some(path), std::env::vars())
        .map_err(|e| anyhow::anyhow!("reading back {}: {e}", path.display()))?;
    let c = cfg.cluster.context("the replica config has no [cluster]")?;
    Ok(Timings {
        heartbeat_ms: c.heartbeat_ms,
        member_ttl_ms: c.member_ttl_ms,
        lease_interval_ms: c.lease_interval_ms,
        redis_timeout_ms: c.redis_timeout_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairgate_gateway::config::Config;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            without_password("postgres://u:secret@db:5432/x"),
            "postgres://…@db:5432/x"
        );
        assert_eq!(
            without_password("postgres://127.0.0.1:5432/test"),
            "postgres://127.0.0.1:5432/test"
        );
    }

    /// What the benchmark writes is a config the gateway accepts: the replicas' with
    /// `[cluster]` on PostgreSQL and both models, the single gateway's with the instant one.
    #[test]
    fn replica_and_single_configs_are_valid() {
        let db = "postgres://127.0.0.1:5432/test?options=-c%20search_path%3Dfgbench_1_fleet";
        let replica = gateway_config(
            4000,
            db,
            Path::new("/tmp/x"),
            Some("http://127.0.0.1:4001"),
            "http://127.0.0.1:4002",
            "[cluster]\nredis_url = \"redis://127.0.0.1:4003\"\nkey_prefix = \"fgbench\"\nreplica_id = \"a\"\n",
        );
        let c = Config::from_toml_str(&replica, Path::new("replica"), Vec::new()).unwrap();
        let cluster = c.cluster.expect("[cluster]");
        assert_eq!(cluster.replica_id.as_deref(), Some("a"));
        let models: Vec<&str> = c.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(models, [MODEL, INSTANT_MODEL]);
        assert_eq!(c.models[0].backends[0].max_in_flight, SLOTS);
        assert_eq!(c.database, db);
        let single = gateway_config(
            4000,
            db,
            Path::new("/tmp/x"),
            None,
            "http://127.0.0.1:4002",
            "",
        );
        let c = Config::from_toml_str(&single, Path::new("single"), Vec::new()).unwrap();
        assert!(c.cluster.is_none());
        assert_eq!(c.models.len(), 1);
    }
}
