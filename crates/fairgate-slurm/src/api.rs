//! What the provisioner needs from Slurm, whichever way it is reached: submit a job, list
//! the gateway's jobs, cancel one ([`Slurm`]). Two implementations: slurmrestd
//! ([`crate::rest`]) and the `sbatch`/`squeue`/`scancel` commands ([`crate::cli`]).

use futures_util::future::BoxFuture;

/// A job to submit: the script and its settings. The script's parameters travel in `env`
/// (the templates read them from their environment).
#[derive(Clone, Debug, PartialEq)]
pub struct Submission {
    pub name: String,
    pub script: String,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub time_limit_min: u32,
    pub nodes: u32,
    /// Per node, e.g. `gpu:4`.
    pub gres: String,
    pub env: Vec<(String, String)>,
    /// Working directory and where the job's output goes (`%j` is the job id).
    pub workdir: String,
    pub output: String,
}

/// A job's state, reduced to what the provisioner acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for resources (PENDING, CONFIGURING, REQUEUED...).
    Pending,
    Running,
    /// Ended: by itself, by `scancel`, at its time limit, by preemption or by a failure.
    Ended,
}

impl JobState {
    /// Slurm's state names (`squeue %T`, REST `job_state`) to ours.
    pub fn from_slurm(s: &str) -> JobState {
        match s.trim().to_ascii_uppercase().as_str() {
            "RUNNING" | "SUSPENDED" | "STOPPED" | "SIGNALING" | "STAGE_OUT" => JobState::Running,
            "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
            | "RESV_DEL_HOLD" | "RESIZING" => JobState::Pending,
            _ => JobState::Ended,
        }
    }
}

/// One of the gateway's jobs as Slurm reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobInfo {
    pub id: String,
    pub name: String,
    pub state: JobState,
    /// Slurm's own word for it (`RUNNING`, `TIMEOUT`, `CANCELLED`...), for status and logs.
    pub slurm_state: String,
    /// The nodes (as Slurm writes the list, maybe compressed: `node[1-2]`).
    pub nodes: String,
    /// Unix seconds; 0 when unknown or not started.
    pub start_time: i64,
    /// Unix seconds: when the time limit ends it (for a running job).
    pub end_time: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// Slurm answered and refused (bad partition, over a QOS limit, ...): the message is
    /// Slurm's own.
    #[error("Slurm refused: {0}")]
    Refused(String),
    /// Could not reach or run it.
    #[error("cannot reach Slurm: {0}")]
    Unreachable(String),
    /// It answered something this version does not understand.
    #[error("unexpected answer from Slurm: {0}")]
    Protocol(String),
}

/// Slurm, reached one way or another.
pub trait Slurm: Send + Sync + 'static {
    /// Submits; returns the job id.
    fn submit<'a>(&'a self, job: &'a Submission) -> BoxFuture<'a, Result<String, SlurmError>>;
    /// The jobs whose names start with `prefix` that Slurm still lists.
    fn jobs<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<JobInfo>, SlurmError>>;
    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SlurmError>>;
    /// How it is reached, for status pages: `slurmrestd v0.0.38`, `sbatch`.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_what_the_provisioner_does() {
        assert_eq!(JobState::from_slurm("RUNNING"), JobState::Running);
        assert_eq!(JobState::from_slurm("pending"), JobState::Pending);
        assert_eq!(JobState::from_slurm("CONFIGURING"), JobState::Pending);
        for s in [
            "COMPLETED",
            "COMPLETING",
            "CANCELLED",
            "TIMEOUT",
            "FAILED",
            "PREEMPTED",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "BOOT_FAIL",
            "DEADLINE",
        ] {
            assert_eq!(JobState::from_slurm(s), JobState::Ended, "{s}");
        }
    }
}
