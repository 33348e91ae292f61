-- Slurm jobs that serve a model (the provisioner in `crates/fairgate-slurm`), kept for SU
-- (service unit) accounting. Portable DDL only, like 0001. `backend` is the name the job's
-- backend carries in the ledger (`slurm-<jobid>`); `nodes` the job's hostnames,
-- comma-separated; `gpus` all the job's GPUs (nodes x GPUs per node); `su_per_gpu_hour` the
-- charge in micro-SUs per GPU-hour (108.6 SU is 108600000), an integer like money, so sums
-- stay exact. Times are unix ms; `started_at` and `ended_at` are NULL until they happen.
-- `state` is Slurm's (PENDING, RUNNING, COMPLETED, FAILED, ...); `reason` why it ended or failed.
CREATE TABLE slurm_jobs (
    job_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    backend TEXT NOT NULL,
    nodes TEXT NOT NULL,
    gpus BIGINT NOT NULL,
    gpu_type TEXT NULL,
    su_per_gpu_hour BIGINT NOT NULL,
    submitted_at BIGINT NOT NULL,
    started_at BIGINT NULL,
    ended_at BIGINT NULL,
    state TEXT NOT NULL,
    reason TEXT NULL
);

-- The SU report joins ledger rows to their job by backend name; listings go by time.
CREATE INDEX slurm_jobs_backend_idx ON slurm_jobs (backend);
CREATE INDEX slurm_jobs_started_idx ON slurm_jobs (started_at);
CREATE INDEX slurm_jobs_submitted_idx ON slurm_jobs (submitted_at);
