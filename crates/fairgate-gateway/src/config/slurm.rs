//! `[slurm]` and `[models.slurm]`: models served from Slurm jobs that the gateway submits,
//! renews and scales itself (the provisioner is `crates/fairgate-slurm`). Only the settings and
//! the derivation of each job's API key live here, because every replica needs them: the
//! leader submits jobs, and every replica sends their keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// How the provisioner talks to Slurm.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SlurmApi {
    /// slurmrestd when `rest_url` is set, else the `sbatch`/`squeue`/`scancel` commands.
    #[default]
    Auto,
    Rest,
    Cli,
}

/// `[slurm]`: where Slurm is and how the provisioner runs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    pub api: SlurmApi,
    /// slurmrestd: `unix:/path/to/slurmrestd.sock` (local auth) or `http(s)://host:6820`
    /// (JWT: `rest_user` and the token in `rest_token_env`). The REST API version is
    /// discovered from the server (v0.0.38 of Slurm 22.05 up to v0.0.44 of 25.11).
    pub rest_url: Option<String>,
    /// `X-SLURM-USER-NAME` for JWT auth.
    pub rest_user: Option<String>,
    /// Environment variable holding the JWT (`scontrol token`), read at every call so a
    /// renewed token is picked up.
    pub rest_token_env: String,
    /// Where `sbatch`, `squeue` and `scancel` are; `PATH` when absent.
    pub bin_dir: Option<PathBuf>,
    /// A directory the compute nodes and the gateway both see (a shared file system): each job
    /// writes where it listens there (`<job name>.json`, see `deploy/slurm/README.md`).
    pub endpoints_dir: PathBuf,
    /// How often the provisioner looks at jobs, probes and demand.
    pub poll_interval_ms: u64,
    /// Timeout of one health probe of a job's node.
    pub probe_timeout_ms: u64,
    /// Environment variable holding the secret each job's vLLM `--api-key` is derived from.
    /// Every replica needs the same one; absent, a secret is generated once into
    /// `<data_dir>/slurm-key-secret` (fine for a single gateway).
    pub key_secret_env: String,
    /// With `[cluster]`: how long the provisioner's lease lasts without renewal; another
    /// replica takes over within about this long when the leader dies.
    pub leader_ttl_ms: u64,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            api: SlurmApi::Auto,
            rest_url: None,
            rest_user: None,
            rest_token_env: "SLURM_JWT".into(),
            bin_dir: None,
            endpoints_dir: PathBuf::from("./fairgate-data/slurm-endpoints"),
            poll_interval_ms: 2_000,
            probe_timeout_ms: 2_000,
            key_secret_env: "FAIRGATE_SLURM_KEY_SECRET".into(),
            leader_ttl_ms: 10_000,
        }
    }
}

/// `[models.slurm]`: this model's backends are Slurm jobs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmModelConfig {
    /// The job script (`deploy/slurm/vllm.sbatch`, `deploy/slurm/vllm-multinode.sbatch`, or
    /// yours): submitted as is, parameters in its environment.
    pub template: PathBuf,
    #[serde(default)]
    pub min_replicas: u32,
    #[serde(default = "one")]
    pub max_replicas: u32,
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub qos: Option<String>,
    /// The job's wall-time limit (Slurm counts whole minutes).
    #[serde(default = "sixty")]
    pub time_limit_min: u32,
    #[serde(default = "one")]
    pub nodes: u32,
    #[serde(default = "one")]
    pub gpus_per_node: u32,
    /// GRES per node; default `gpu:<gpus_per_node>` (`gpu:a100:4` names a type).
    #[serde(default)]
    pub gres: Option<String>,
    /// For SU reports: the GPU type and the SUs one GPU-hour of it costs (CURC: A100 108.6).
    #[serde(default)]
    pub gpu_type: Option<String>,
    #[serde(default = "one_f")]
    pub su_per_gpu_hour: f64,
    /// `VLLM_MODEL` (Hugging Face id or path); the model's name when absent.
    #[serde(default)]
    pub model_path: Option<String>,
    /// `VLLM_EXTRA_ARGS`.
    #[serde(default)]
    pub extra_args: Option<String>,
    /// `SERVER_CMD`: replaces the server command (tests run `fairgate sim`).
    #[serde(default)]
    pub server_cmd: Option<String>,
    /// More environment for the job.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Requests one job's server may have in flight through this gateway.
    #[serde(default = "sixteen")]
    pub max_in_flight: usize,
    /// A job's replacement is submitted this long before its time limit, and the job is
    /// drained once the replacement answers.
    #[serde(default = "renew_before")]
    pub renew_before_s: u64,
    /// A job that runs but does not answer its probes within this long is cancelled and
    /// replaced.
    #[serde(default = "start_timeout")]
    pub start_timeout_s: u64,
    /// Scale up by one when this many requests (or more) stay queued for the model ...
    #[serde(default = "four")]
    pub scale_up_queued: u64,
    /// ... for this long. From zero replicas, any queued request starts one at once.
    #[serde(default = "thirty")]
    pub scale_up_after_s: u64,
    /// Scale down by one (to `min_replicas`) after this long with nothing queued or in flight.
    #[serde(default = "idle")]
    pub scale_down_idle_s: u64,
    /// At most this many submissions for the model per rolling hour (a burst cannot flood the
    /// Slurm queue).
    #[serde(default = "twelve")]
    pub max_submits_per_hour: u32,
    /// After a job fails to come up, the next submission waits this long, doubling with each
    /// failure in a row up to 15 minutes.
    #[serde(default = "thirty")]
    pub retry_backoff_s: u64,
}

fn one() -> u32 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn sixty() -> u32 {
    60
}
fn sixteen() -> usize {
    16
}
fn renew_before() -> u64 {
    600
}
fn start_timeout() -> u64 {
    1_800
}
fn four() -> u64 {
    4
}
fn thirty() -> u64 {
    30
}
fn idle() -> u64 {
    900
}
fn twelve() -> u32 {
    12
}

impl SlurmModelConfig {
    pub fn gres(&self) -> String {
        self.gres
            .clone()
            .unwrap_or_else(|| format!("gpu:{}", self.gpus_per_node))
    }

    /// What is wrong with it, as (field, message).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_replicas == 0 || self.min_replicas > self.max_replicas {
            return Err((
                "max_replicas",
                "must be at least 1 and at least min_replicas".into(),
            ));
        }
        if self.time_limit_min == 0 {
            return Err(("time_limit_min", "must be at least 1".into()));
        }
        if self.renew_before_s >= u64::from(self.time_limit_min) * 60 {
            return Err((
                "renew_before_s",
                "must be shorter than the time limit (a job would be replaced as soon as it starts)"
                    .into(),
            ));
        }
        if self.nodes == 0 || self.gpus_per_node == 0 || self.max_in_flight == 0 {
            return Err((
                "nodes",
                "nodes, gpus_per_node and max_in_flight must be at least 1".into(),
            ));
        }
        if !(self.su_per_gpu_hour.is_finite() && self.su_per_gpu_hour >= 0.0) {
            return Err(("su_per_gpu_hour", "must be a number ≥ 0".into()));
        }
        if self.max_submits_per_hour == 0 {
            return Err(("max_submits_per_hour", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// The secret job keys are derived from, set once at start by whoever knows it (the binary).
static KEY_SECRET: OnceLock<Vec<u8>> = OnceLock::new();

/// Sets the secret job keys are derived from (the first call wins).
pub fn set_job_key_secret(secret: Vec<u8>) {
    let _ = KEY_SECRET.set(secret);
}

/// The API key of the job labelled `label`: HMAC-SHA256(secret, label) in hex. Every replica
/// with the same secret derives the same key, so none has to be stored or sent.
pub fn job_key(label: &str) -> Result<String, String> {
    let secret = KEY_SECRET
        .get()
        .ok_or("no [slurm] key secret is set on this gateway")?;
    Ok(derive_key(secret, label))
}

pub fn derive_key(secret: &[u8], label: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&k, format!("fairgate-slurm-job:{label}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_secret_and_label() {
        let a = derive_key(b"s1", "job-a");
        assert_eq!(a.len(), 64);
        assert_eq!(a, derive_key(b"s1", "job-a"));
        assert_ne!(a, derive_key(b"s2", "job-a"));
        assert_ne!(a, derive_key(b"s1", "job-b"));
    }

    #[test]
    fn model_settings_are_checked() {
        let mut m: SlurmModelConfig = toml::from_str("template = \"x.sbatch\"").unwrap();
        assert!(m.validate().is_ok());
        assert_eq!(m.gres(), "gpu:1");
        m.renew_before_s = 3_600;
        assert_eq!(m.validate().unwrap_err().0, "renew_before_s");
        m.renew_before_s = 30;
        m.min_replicas = 2;
        assert_eq!(m.validate().unwrap_err().0, "max_replicas");
    }
}
