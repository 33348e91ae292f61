//! Models served from Slurm allocations (issue 15): the gateway submits vLLM jobs from
//! templates (`deploy/slurm/`), registers each as a backend once every node of it answers,
//! renews jobs before their time limit, replaces jobs that fail or are cancelled from outside,
//! and scales each model between `min_replicas` and `max_replicas` on its own fair queue.
//!
//! - [`api`]: what is needed from Slurm; [`rest`] (slurmrestd, version discovered) and [`cli`]
//!   (`sbatch`/`squeue`/`scancel`) provide it.
//! - [`provisioner`]: one model's jobs, round by round.
//! - This file: the task that runs the rounds, only on the replica holding the provisioner's
//!   lease under `[cluster]`, publishes the status and stores job records for SU reports.

pub mod api;
pub mod cli;
pub mod provisioner;
pub mod rest;

use std::sync::Arc;
use std::time::Duration;

use fairgate_gateway::config::slurm::SlurmApi;
use fairgate_gateway::config::{Config, SlurmConfig};
use fairgate_gateway::state::AppState;
use tokio::task::JoinHandle;

use crate::api::Slurm;
use crate::provisioner::{Ctx, ModelRun, ModelStatus};

/// Whether any model's backends are Slurm jobs.
pub fn wanted(cfg: &Config) -> bool {
    cfg.models.iter().any(|m| m.slurm.is_some())
}

/// Sets the secret job keys are derived from: `[slurm] key_secret_env`, or (single gateway)
/// a secret generated once into `<data_dir>/slurm-key-secret`. Under `[cluster]` the variable
/// is required: every replica must derive the same keys.
pub fn init_key_secret(cfg: &Config) -> Result<(), String> {
    let var = &cfg.slurm.key_secret_env;
    if let Ok(v) = std::env::var(var) {
        if v.trim().len() >= 16 {
            fairgate_gateway::config::slurm::set_job_key_secret(v.trim().as_bytes().to_vec());
            return Ok(());
        }
        return Err(format!("{var} must hold at least 16 characters"));
    }
    if cfg.cluster.is_some() {
        return Err(format!(
            "[slurm] with [cluster]: set {var} to the same secret on every replica (each job's \
             API key is derived from it)"
        ));
    }
    let path = cfg.data_dir.join("slurm-key-secret");
    let secret = match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 16 => s.trim().to_owned(),
        _ => {
            use rand::Rng;
            let bytes: [u8; 32] = rand::thread_rng().gen();
            let s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::create_dir_all(&cfg.data_dir).map_err(|e| e.to_string())?;
            write_private(&path, &s).map_err(|e| format!("{}: {e}", path.display()))?;
            s
        }
    };
    fairgate_gateway::config::slurm::set_job_key_secret(secret.into_bytes());
    Ok(())
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    o.open(path)?.write_all(text.as_bytes())
}

/// The Slurm client the config asks for.
pub fn client(cfg: &SlurmConfig) -> Result<Arc<dyn Slurm>, String> {
    let rest = || -> Result<Arc<dyn Slurm>, String> {
        let url = cfg
            .rest_url
            .as_deref()
            .ok_or("[slurm] api = \"rest\" needs rest_url")?;
        Ok(Arc::new(rest::Rest::new(
            url,
            cfg.rest_user.clone(),
            cfg.rest_token_env.clone(),
        )?))
    };
    match cfg.api {
        SlurmApi::Rest => rest(),
        SlurmApi::Cli => Ok(Arc::new(cli::Cli::new(cfg.bin_dir.clone()))),
        SlurmApi::Auto if cfg.rest_url.is_some() => rest(),
        SlurmApi::Auto => Ok(Arc::new(cli::Cli::new(cfg.bin_dir.clone()))),
    }
}

/// Where the provisioner's status is published under `[cluster]` (read by every replica's
/// admin API).
pub const STATUS_KEY: &str = "slurm:status";
const LEASE_KEY: &str = "slurm:leader";

/// Takes the lease, or keeps it: `SET NX PX`, or extends it when already ours.
const LEASE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1} end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
return {0}
";

/// Gives the lease up (only if still ours).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return {1}
";

/// Starts the provisioner when a model asks for it. The task ends with `st.shutdown`.
pub fn start(st: &Arc<AppState>, slurm: Arc<dyn Slurm>) -> Option<JoinHandle<()>> {
    if !wanted(&st.config) {
        return None;
    }
    let st = st.clone();
    Some(tokio::spawn(async move { run(st, slurm).await }))
}

async fn run(st: Arc<AppState>, slurm: Arc<dyn Slurm>) {
    let global = st.config.slurm.clone();
    if let Err(e) = std::fs::create_dir_all(&global.endpoints_dir) {
        tracing::error!(dir = %global.endpoints_dir.display(), error = %e, "cannot create [slurm] endpoints_dir");
    }
    let mut runs: Vec<ModelRun> = st
        .config
        .models
        .iter()
        .filter_map(|m| m.slurm.clone().map(|s| ModelRun::new(&m.name, s)))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(global.probe_timeout_ms.max(1)))
        .build()
        .unwrap_or_default();
    let every = Duration::from_millis(global.poll_interval_ms.max(100));
    let mut leader = st.cluster.is_none();
    tracing::info!(api = %slurm.describe(), models = runs.len(), "Slurm provisioner started");
    loop {
        if let Some(c) = &st.cluster {
            let ttl = global.leader_ttl_ms.max(1_000).to_string();
            let held = c
                .run_script(
                    LEASE,
                    &[LEASE_KEY.to_owned()],
                    &[c.member_id().to_owned(), ttl],
                )
                .await
                .map(|v| v.first().map(String::as_str) == Some("1"))
                .unwrap_or(false);
            if held != leader {
                tracing::info!(member = %c.member_id(), leader = held, "Slurm provisioner lease {}", if held { "taken" } else { "lost" });
                if held {
                    // Start from what Slurm says, not from what an older term remembered.
                    runs = st
                        .config
                        .models
                        .iter()
                        .filter_map(|m| m.slurm.clone().map(|s| ModelRun::new(&m.name, s)))
                        .collect();
                }
                leader = held;
            }
        }
        if leader {
            let mut status = Vec::new();
            for run in &mut runs {
                let (queued, in_flight) = demand(&st, &run.model).await;
                let cx = Ctx {
                    st: &st,
                    slurm: slurm.as_ref(),
                    global: &global,
                    http: &http,
                    queued,
                    in_flight,
                };
                run.round(&cx).await;
                for r in std::mem::take(&mut run.records) {
                    store_record(&st, r).await;
                }
                status.push(run.status(queued, in_flight));
            }
            publish(&st, &slurm.describe(), status, every).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = st.shutdown.cancelled() => break,
        }
    }
    // Jobs keep running across a restart (the next leader adopts them); only the lease goes.
    if let (true, Some(c)) = (leader, &st.cluster) {
        let _ = c
            .run_script(
                RELEASE,
                &[LEASE_KEY.to_owned()],
                &[c.member_id().to_owned()],
            )
            .await;
    }
}

/// The model's queued and in-flight requests: this replica's, plus the others' under
/// `[cluster]`.
async fn demand(st: &AppState, model: &str) -> (u64, u64) {
    let Some(pool) = st.upstreams.get(model) else {
        return (0, 0);
    };
    let local = (pool.fair.queued() as u64, pool.fair.in_flight() as u64);
    let Some(c) = &st.cluster else {
        return local;
    };
    match fairgate_gateway::fleet::fleet_state(model, c).await {
        Ok(fleet) if !fleet.is_empty() => fleet.iter().fold((0, 0), |(q, f), r| {
            (q + r.queued as u64, f + r.in_flight as u64)
        }),
        _ => local,
    }
}

async fn publish(st: &AppState, api: &str, models: Vec<ModelStatus>, every: Duration) {
    let v = serde_json::json!({
        "api": api,
        "member": st.cluster.as_ref().map(|c| c.member_id().to_owned()),
        "updated_ms": fairgate_types::now_millis(),
        "models": models,
    });
    if let Some(c) = &st.cluster {
        let _ = c.put(STATUS_KEY, &v.to_string(), every * 5).await;
    }
    st.provisioner.store(Some(Arc::new(v)));
}

async fn store_record(st: &AppState, row: fairgate_types::SlurmJobRow) {
    if let Err(e) = st.store.upsert_slurm_job(&row).await {
        tracing::warn!(job = %row.job_id, error = %e, "cannot store a Slurm job record (SU reports will miss it)");
    }
}

/// The provisioner's last status as this replica can see it: its own when it leads, else
/// what the leader published.
pub async fn status(st: &AppState) -> Option<serde_json::Value> {
    if let Some(v) = st.provisioner.load_full() {
        if st.cluster.is_none()
            || v["updated_ms"].as_i64().unwrap_or(0)
                > fairgate_types::now_millis() - 3 * st.config.slurm.poll_interval_ms as i64
        {
            return Some((*v).clone());
        }
    }
    let c = st.cluster.as_ref()?;
    let got = c.get_many(&[STATUS_KEY.to_owned()]).await.ok()?;
    got.into_iter()
        .next()
        .flatten()
        .and_then(|s| serde_json::from_str(&s).ok())
}
