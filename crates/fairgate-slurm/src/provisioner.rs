//! One model's jobs: the state machine the provisioner runs every `poll_interval_ms`.
//!
//! Each round: list the model's jobs in Slurm (`fg-<model>-<label>`), read the endpoint file
//! of each running one and probe every URL in it, register a job as a backend once all its
//! probes answer, then decide how many jobs the model should have from its queue and reconcile:
//!
//! - **Starting** (pending, or running but not yet answering): counts toward the replicas; one
//!   that does not answer within `start_timeout_s` is cancelled and counts as a failure;
//! - **Serving**: a backend of the model (`slurm-<id>@<node>`, its key derived from the job's
//!   label); three failed probe rounds in a row retire it at once;
//! - **Renewing**: within `renew_before_s` of its time limit, or retired for a scale-down: it
//!   serves on but no longer counts, so a replacement is submitted; once enough others serve it
//!   goes to **Draining**: removed from the pool (no new requests; those in flight finish),
//!   then cancelled when idle. A job that ends on its own while renewing is no failure.
//!
//! A job that ends while Starting or Serving, not by the provisioner's hand (failed,
//! preempted, `scancel` from outside, a node lost), is replaced at the next round; one that
//! never served counts as a failure, and failures in a row back off the next submission
//! (`retry_backoff_s`, doubling to 15 minutes). At most `max_submits_per_hour` submissions
//! per model per rolling hour.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fairgate_gateway::config::{BackendConfig, SlurmConfig, SlurmModelConfig};
use fairgate_gateway::state::AppState;
use serde::{Deserialize, Serialize};

use crate::api::{JobInfo, JobState, Slurm, Submission};

/// Who the audit log names for the provisioner's backend changes.
pub const ACTOR: &str = "slurm-provisioner";
/// Failed probe rounds in a row that retire a serving job.
const PROBE_FAILURES: u32 = 3;
/// The longest back-off between submissions after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(900);
/// How long a draining job may take to finish its requests before it is cancelled anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

/// Where a job listens, as its script writes it (`deploy/slurm/README.md`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Endpoint {
    #[serde(default)]
    pub job_id: String,
    pub url: String,
    /// Every URL that must answer 2xx for the job to be healthy: the server's `/health` and,
    /// for a multi-node job, each node's (Ray's `/api/local_raylet_healthz`).
    #[serde(default)]
    pub probes: Vec<String>,
    #[serde(default)]
    pub nodes: Vec<String>,
}

impl Endpoint {
    /// Reads `path`; `None` while it is not there (or half-written: the templates write it
    /// atomically, but a hand-written one might not be).
    pub fn read(path: &Path) -> Option<Endpoint> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut e: Endpoint = serde_json::from_str(&text).ok()?;
        if fairgate_gateway::config::validate_backend_url(&e.url).is_err() {
            return None;
        }
        if e.probes.is_empty() {
            e.probes
                .push(format!("{}/health", e.url.trim_end_matches('/')));
        }
        Some(e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    Serving,
    Renewing,
    Draining,
    Cancelled,
}

#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: String,
    pub name: String,
    /// The random part of the name; the job's API key is derived from it.
    #[serde(skip)]
    pub label: String,
    pub phase: Phase,
    pub slurm_state: String,
    pub nodes: String,
    /// Unix seconds.
    pub start_time: i64,
    pub end_time: i64,
    pub url: Option<String>,
    pub backend: Option<String>,
    pub probe_nodes: Vec<String>,
    #[serde(skip)]
    pub endpoint: Option<Endpoint>,
    #[serde(skip)]
    seen_running: Option<Instant>,
    #[serde(skip)]
    probe_failures: u32,
    #[serde(skip)]
    draining_since: Option<Instant>,
    /// Why the provisioner retired it (`renewal`, `scale-down`, `unhealthy`, `start timeout`).
    pub retired: Option<String>,
    #[serde(skip)]
    submitted_ms: i64,
    #[serde(skip)]
    started_ms: Option<i64>,
}

impl Job {
    fn new(id: String, name: String, label: String, slurm_state: &str) -> Job {
        Job {
            id,
            name,
            label,
            phase: Phase::Starting,
            slurm_state: slurm_state.to_owned(),
            nodes: String::new(),
            start_time: 0,
            end_time: 0,
            url: None,
            backend: None,
            probe_nodes: Vec::new(),
            endpoint: None,
            seen_running: None,
            probe_failures: 0,
            draining_since: None,
            retired: None,
            submitted_ms: fairgate_types::now_millis(),
            started_ms: None,
        }
    }
}

/// What the admin API and the operator pages show of a model.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ModelStatus {
    pub model: String,
    pub desired: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub queued: u64,
    pub in_flight: u64,
    pub failures_in_row: u32,
    pub submits_last_hour: usize,
    pub last_error: Option<String>,
    pub jobs: Vec<Job>,
}

pub struct ModelRun {
    pub model: String,
    pub cfg: SlurmModelConfig,
    prefix: String,
    jobs: BTreeMap<String, Job>,
    desired: u32,
    demand_since: Option<Instant>,
    idle_since: Option<Instant>,
    submits: VecDeque<Instant>,
    failures_in_row: u32,
    next_submit: Option<Instant>,
    last_error: Option<String>,
    /// Job records to store (drained by the caller after each round).
    pub records: Vec<fairgate_types::SlurmJobRow>,
}

/// What a round needs from outside: Slurm, the gateway, and the time.
pub struct Ctx<'a> {
    pub st: &'a Arc<AppState>,
    pub slurm: &'a dyn Slurm,
    pub global: &'a SlurmConfig,
    pub http: &'a reqwest::Client,
    /// Queued and in-flight requests for the model (the fleet's, under `[cluster]`).
    pub queued: u64,
    pub in_flight: u64,
}

/// The job-name prefix of `model`'s jobs: `fg-<model>-` with anything but letters, digits,
/// `.` and `_` replaced, so it is a safe Slurm job name.
pub fn prefix_of(model: &str) -> String {
    let clean: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("fg-{clean}-")
}

fn new_label() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

fn now_s() -> i64 {
    fairgate_types::now_millis() / 1000
}

impl ModelRun {
    pub fn new(model: &str, cfg: SlurmModelConfig) -> ModelRun {
        ModelRun {
            model: model.to_owned(),
            prefix: prefix_of(model),
            desired: cfg.min_replicas,
            cfg,
            jobs: BTreeMap::new(),
            demand_since: None,
            idle_since: None,
            submits: VecDeque::new(),
            failures_in_row: 0,
            next_submit: None,
            last_error: None,
            records: Vec::new(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn status(&self, queued: u64, in_flight: u64) -> ModelStatus {
        ModelStatus {
            model: self.model.clone(),
            desired: self.desired,
            min_replicas: self.cfg.min_replicas,
            max_replicas: self.cfg.max_replicas,
            queued,
            in_flight,
            failures_in_row: self.failures_in_row,
            submits_last_hour: self.submits.len(),
            last_error: self.last_error.clone(),
            jobs: self.jobs.values().cloned().collect(),
        }
    }

    fn endpoint_file(&self, global: &SlurmConfig, name: &str) -> PathBuf {
        global.endpoints_dir.join(format!("{name}.json"))
    }

    fn record(&mut self, j: &Job, ended: Option<(i64, String)>) {
        let gpus = u64::from(self.cfg.nodes) * u64::from(self.cfg.gpus_per_node);
        self.records.push(fairgate_types::SlurmJobRow {
            job_id: j.id.clone(),
            model: self.model.clone(),
            backend: j
                .backend
                .clone()
                .unwrap_or_else(|| format!("slurm-{}", j.id)),
            nodes: j.nodes.clone(),
            gpus,
            gpu_type: self.cfg.gpu_type.clone(),
            su_per_gpu_hour_micros: fairgate_types::micro_sus(self.cfg.su_per_gpu_hour),
            submitted_at: j.submitted_ms,
            started_at: j.started_ms,
            ended_at: ended.as_ref().map(|e| e.0),
            state: j.slurm_state.clone(),
            reason: ended.map(|e| e.1).or_else(|| j.retired.clone()),
        });
    }

    /// One round. Errors from Slurm are kept as the model's `last_error`; the round then acts
    /// only on what it knows.
    pub async fn round(&mut self, cx: &Ctx<'_>) {
        let listed = match cx.slurm.jobs(&self.prefix).await {
            Ok(l) => l,
            Err(e) => {
                self.last_error = Some(e.to_string());
                tracing::warn!(model = %self.model, error = %e, "cannot list the model's Slurm jobs");
                return;
            }
        };
        self.merge(cx, listed).await;
        self.probe_and_register(cx).await;
        self.scale(cx);
        self.reconcile(cx).await;
    }

    /// Brings the known jobs up to date with Slurm's list; handles the ones that ended.
    async fn merge(&mut self, cx: &Ctx<'_>, listed: Vec<JobInfo>) {
        let now = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for info in listed {
            seen.insert(info.id.clone());
            let label = info
                .name
                .strip_prefix(&self.prefix)
                .unwrap_or("")
                .to_owned();
            let j = self.jobs.entry(info.id.clone()).or_insert_with(|| {
                // A job this gateway did not submit in this run: one from before a restart or
                // from the previous leader. Adopted as it is.
                tracing::info!(model = %self.model, job = %info.id, "adopting a running Slurm job");
                Job::new(info.id.clone(), info.name.clone(), label, &info.slurm_state)
            });
            j.slurm_state = info.slurm_state.clone();
            j.nodes = info.nodes.clone();
            j.start_time = info.start_time;
            j.end_time = info.end_time;
            if info.state == JobState::Running && j.seen_running.is_none() {
                j.seen_running = Some(now);
                j.started_ms = Some(if info.start_time > 0 {
                    info.start_time * 1000
                } else {
                    fairgate_types::now_millis()
                });
                let j = j.clone();
                self.record(&j, None);
            }
            if info.state == JobState::Ended {
                seen.remove(&info.id);
            }
        }
        let gone: Vec<String> = self
            .jobs
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            let Some(j) = self.jobs.remove(&id) else {
                continue;
            };
            self.ended(cx, j).await;
        }
    }

    /// A job Slurm no longer runs.
    async fn ended(&mut self, cx: &Ctx<'_>, j: Job) {
        let by_us = matches!(
            j.phase,
            Phase::Renewing | Phase::Draining | Phase::Cancelled
        );
        let reason = if by_us {
            j.retired.clone().unwrap_or_else(|| "retired".into())
        } else {
            format!("ended by Slurm ({})", j.slurm_state)
        };
        if let Some(url) = &j.url {
            remove_backend(cx, &self.model, url).await;
        }
        let _ = std::fs::remove_file(self.endpoint_file(cx.global, &j.name));
        if !by_us {
            if j.phase == Phase::Starting {
                self.failed(format!(
                    "job {} ended before it served: {}",
                    j.id, j.slurm_state
                ));
            } else {
                tracing::warn!(model = %self.model, job = %j.id, state = %j.slurm_state, "a serving Slurm job ended; replacing it");
            }
        } else {
            tracing::info!(model = %self.model, job = %j.id, reason = %reason, "Slurm job ended");
        }
        let mut j = j;
        if !matches!(JobState::from_slurm(&j.slurm_state), JobState::Ended) {
            // Gone from the listing without a last word: say what is known.
            j.slurm_state = if by_us { "CANCELLED" } else { "ENDED" }.into();
        }
        let now = fairgate_types::now_millis();
        self.record(&j, Some((now, reason)));
    }

    fn failed(&mut self, why: String) {
        self.failures_in_row += 1;
        let backoff = Duration::from_secs(self.cfg.retry_backoff_s)
            .saturating_mul(1 << (self.failures_in_row - 1).min(10))
            .min(MAX_BACKOFF);
        self.next_submit = Some(Instant::now() + backoff);
        tracing::warn!(model = %self.model, failures_in_row = self.failures_in_row, backoff_s = backoff.as_secs(), "{why}");
        self.last_error = Some(why);
    }

    async fn probe_and_register(&mut self, cx: &Ctx<'_>) {
        let ids: Vec<String> = self.jobs.keys().cloned().collect();
        for id in ids {
            let (phase, running) = {
                let j = &self.jobs[&id];
                (j.phase, j.seen_running.is_some())
            };
            if !running || phase == Phase::Cancelled {
                continue;
            }
            if self.jobs[&id].endpoint.is_none() {
                let file = self.endpoint_file(cx.global, &self.jobs[&id].name);
                if let Some(e) = Endpoint::read(&file) {
                    let j = self.jobs.get_mut(&id).expect("listed");
                    j.probe_nodes = e.nodes.clone();
                    j.endpoint = Some(e);
                }
            }
            let healthy = match &self.jobs[&id].endpoint {
                Some(e) => probe_all(cx.http, &e.probes, cx.global.probe_timeout_ms).await,
                None => false,
            };
            match phase {
                Phase::Starting if healthy => self.register(cx, &id).await,
                Phase::Starting => {
                    let since = self.jobs[&id].seen_running.expect("running");
                    if since.elapsed() > Duration::from_secs(self.cfg.start_timeout_s) {
                        let j = self.jobs.get_mut(&id).expect("listed");
                        j.retired = Some("start timeout".into());
                        j.phase = Phase::Cancelled;
                        let _ = cx.slurm.cancel(&id).await;
                        self.failed(format!(
                            "job {id} did not answer its probes within {} s; cancelled",
                            self.cfg.start_timeout_s
                        ));
                    }
                }
                Phase::Serving | Phase::Renewing => {
                    let j = self.jobs.get_mut(&id).expect("listed");
                    if healthy {
                        j.probe_failures = 0;
                    } else {
                        j.probe_failures += 1;
                        if j.probe_failures >= PROBE_FAILURES {
                            tracing::warn!(model = %self.model, job = %id, "a Slurm job stopped answering its probes; retiring it");
                            j.retired = Some("unhealthy".into());
                            self.retire_now(cx, &id).await;
                        }
                    }
                }
                _ => {}
            }
        }
        // Renewal: near the time limit, a serving job stops counting (its replacement is
        // submitted in this round's reconcile) but serves on until the replacement does.
        let lead = self.cfg.renew_before_s as i64;
        let now = now_s();
        for j in self.jobs.values_mut() {
            if j.phase == Phase::Serving && j.end_time > 0 && now >= j.end_time - lead {
                tracing::info!(model = %self.model, job = %j.id, ends_in_s = j.end_time - now, "renewing a Slurm job before its time limit");
                j.phase = Phase::Renewing;
                j.retired = Some("renewal".into());
            }
        }
    }

    async fn register(&mut self, cx: &Ctx<'_>, id: &str) {
        let j = self.jobs.get_mut(id).expect("listed");
        let Some(e) = j.endpoint.clone() else { return };
        let head = e
            .nodes
            .first()
            .cloned()
            .unwrap_or_else(|| j.nodes.split(',').next().unwrap_or("").to_owned());
        let clean: String = head
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(40)
            .collect();
        let name = if clean.is_empty() {
            format!("slurm-{id}")
        } else {
            format!("slurm-{id}@{clean}")
        };
        // An adopted job (from before a restart, or a previous leader's) may already be a
        // backend here: another replica added it, and it reached this one from the database.
        let present = fairgate_control::backends::pool(cx.st, &self.model)
            .ok()
            .and_then(|p| p.backend(&e.url))
            .is_some_and(|b| !b.status().removing);
        if present {
            tracing::info!(model = %self.model, job = %id, url = %e.url, "adopted Slurm job already serves");
            j.phase = Phase::Serving;
            j.url = Some(e.url);
            j.backend = Some(name);
            return;
        }
        let cfg = BackendConfig {
            name: Some(name.clone()),
            api_key_label: Some(j.label.clone()),
            ..BackendConfig::new(e.url.clone(), self.cfg.max_in_flight)
        };
        match fairgate_control::backends::add_backend(cx.st, ACTOR, &self.model, cfg).await {
            Ok(_) => {
                tracing::info!(model = %self.model, job = %id, url = %e.url, "Slurm job serves; added as a backend");
                j.phase = Phase::Serving;
                j.url = Some(e.url);
                j.backend = Some(name);
                // The record carries the backend's name from now on (SU reports join on it).
                let j = j.clone();
                self.record(&j, None);
                self.failures_in_row = 0;
                self.next_submit = None;
                self.last_error = None;
            }
            Err(err) => {
                self.last_error = Some(format!("job {id}: cannot add its backend: {err}"));
                tracing::warn!(model = %self.model, job = %id, error = %err, "cannot add a Slurm job as a backend");
            }
        }
    }

    /// Out of the pool now and cancelled (a broken job: no point waiting for it).
    async fn retire_now(&mut self, cx: &Ctx<'_>, id: &str) {
        let Some(j) = self.jobs.get_mut(id) else {
            return;
        };
        if let Some(url) = &j.url {
            remove_backend(cx, &self.model, url).await;
        }
        j.phase = Phase::Cancelled;
        if let Err(e) = cx.slurm.cancel(id).await {
            tracing::warn!(model = %self.model, job = %id, error = %e, "scancel failed");
        }
    }

    /// How many jobs the model should have, from its queue.
    fn scale(&mut self, cx: &Ctx<'_>) {
        let now = Instant::now();
        let active = self.count(|p| matches!(p, Phase::Starting | Phase::Serving)) as u32;
        let starting = self.count(|p| p == Phase::Starting);
        if cx.queued > 0 && self.desired == 0 {
            // From zero: the first queued request starts a job at once.
            tracing::info!(model = %self.model, queued = cx.queued, "scaling up from zero");
            self.desired = 1;
            self.demand_since = None;
        } else if cx.queued >= self.cfg.scale_up_queued && self.desired < self.cfg.max_replicas {
            let since = *self.demand_since.get_or_insert(now);
            // One step at a time: not while a job is still starting.
            if now.duration_since(since) >= Duration::from_secs(self.cfg.scale_up_after_s)
                && starting == 0
                && active >= self.desired
            {
                self.desired += 1;
                self.demand_since = Some(now);
                tracing::info!(model = %self.model, queued = cx.queued, desired = self.desired, "scaling up");
            }
        } else {
            self.demand_since = None;
        }
        if cx.queued == 0 && cx.in_flight == 0 {
            let since = *self.idle_since.get_or_insert(now);
            if now.duration_since(since) >= Duration::from_secs(self.cfg.scale_down_idle_s)
                && self.desired > self.cfg.min_replicas
            {
                self.desired -= 1;
                self.idle_since = Some(now);
                tracing::info!(model = %self.model, desired = self.desired, "scaling down after idle time");
            }
        } else {
            self.idle_since = None;
        }
        self.desired = self
            .desired
            .clamp(self.cfg.min_replicas, self.cfg.max_replicas);
    }

    fn count(&self, f: impl Fn(Phase) -> bool) -> usize {
        self.jobs.values().filter(|j| f(j.phase)).count()
    }

    async fn reconcile(&mut self, cx: &Ctx<'_>) {
        let active = self.count(|p| matches!(p, Phase::Starting | Phase::Serving)) as u32;
        if active < self.desired {
            for _ in active..self.desired {
                if !self.may_submit() {
                    break;
                }
                self.submit(cx).await;
            }
        } else if active > self.desired {
            self.shrink(cx, active - self.desired).await;
        }
        // Renewing jobs leave once enough others serve.
        let serving = self.count(|p| p == Phase::Serving) as u32;
        if serving >= self.desired.max(1) || self.desired == 0 {
            let renewing: Vec<String> = self
                .jobs
                .values()
                .filter(|j| j.phase == Phase::Renewing)
                .map(|j| j.id.clone())
                .collect();
            for id in renewing {
                self.start_drain(cx, &id).await;
            }
        }
        // Draining jobs are cancelled once their backend has left the pool.
        let pool = fairgate_control::backends::pool(cx.st, &self.model)
            .ok()
            .cloned();
        let draining: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.phase == Phase::Draining)
            .map(|j| j.id.clone())
            .collect();
        for id in draining {
            let j = &self.jobs[&id];
            let gone = match (&pool, &j.url) {
                (Some(p), Some(url)) => p.backend(url).is_none(),
                _ => true,
            };
            let overdue = j.draining_since.is_some_and(|t| t.elapsed() > DRAIN_LIMIT);
            if gone || overdue {
                tracing::info!(model = %self.model, job = %id, "drained; cancelling the Slurm job");
                if let Err(e) = cx.slurm.cancel(&id).await {
                    tracing::warn!(model = %self.model, job = %id, error = %e, "scancel failed");
                }
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.phase = Phase::Cancelled;
                }
            }
        }
    }

    fn may_submit(&mut self) -> bool {
        let now = Instant::now();
        while self
            .submits
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(3600))
        {
            self.submits.pop_front();
        }
        if self.submits.len() >= self.cfg.max_submits_per_hour as usize {
            let msg = format!(
                "{} submissions in the last hour (max_submits_per_hour); waiting",
                self.submits.len()
            );
            if !self
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with(&msg))
            {
                tracing::warn!(model = %self.model, "{msg}");
                // Keep the reason the earlier ones failed beside it.
                self.last_error = Some(match self.last_error.take() {
                    Some(before) => format!("{msg}; before: {before}"),
                    None => msg,
                });
            }
            return false;
        }
        self.next_submit.is_none_or(|t| now >= t)
    }

    async fn submit(&mut self, cx: &Ctx<'_>) {
        let script = match std::fs::read_to_string(&self.cfg.template) {
            Ok(s) => s,
            Err(e) => {
                self.failed(format!(
                    "cannot read the job template {}: {e}",
                    self.cfg.template.display()
                ));
                return;
            }
        };
        let label = new_label();
        let name = format!("{}{label}", self.prefix);
        let key = match fairgate_gateway::config::slurm::job_key(&label) {
            Ok(k) => k,
            Err(e) => {
                self.last_error = Some(e);
                return;
            }
        };
        let endpoint = self.endpoint_file(cx.global, &name);
        let dir = cx.global.endpoints_dir.display().to_string();
        let mut env: Vec<(String, String)> = Vec::new();
        for var in ["PATH", "LANG", "LC_ALL"] {
            if let Ok(v) = std::env::var(var) {
                env.push((var.into(), v));
            }
        }
        env.push(("FAIRGATE_MODEL".into(), self.model.clone()));
        env.push((
            "VLLM_MODEL".into(),
            self.cfg
                .model_path
                .clone()
                .unwrap_or_else(|| self.model.clone()),
        ));
        env.push(("GPUS_PER_NODE".into(), self.cfg.gpus_per_node.to_string()));
        env.push(("VLLM_API_KEY".into(), key));
        env.push((
            "FAIRGATE_ENDPOINT_FILE".into(),
            endpoint.display().to_string(),
        ));
        if let Some(a) = &self.cfg.extra_args {
            env.push(("VLLM_EXTRA_ARGS".into(), a.clone()));
        }
        if let Some(c) = &self.cfg.server_cmd {
            env.push(("SERVER_CMD".into(), c.clone()));
        }
        for (k, v) in &self.cfg.env {
            env.push((k.clone(), v.clone()));
        }
        let sub = Submission {
            name: name.clone(),
            script,
            partition: self.cfg.partition.clone(),
            account: self.cfg.account.clone(),
            qos: self.cfg.qos.clone(),
            time_limit_min: self.cfg.time_limit_min,
            nodes: self.cfg.nodes,
            gres: self.cfg.gres(),
            env,
            workdir: dir.clone(),
            output: format!("{dir}/{name}-%j.out"),
        };
        self.submits.push_back(Instant::now());
        match cx.slurm.submit(&sub).await {
            Ok(id) => {
                tracing::info!(model = %self.model, job = %id, name = %name, "submitted a Slurm job");
                let j = Job::new(id.clone(), name, label, "PENDING");
                self.record(&j, None);
                self.jobs.insert(id, j);
            }
            Err(e) => self.failed(format!("submitting a job: {e}")),
        }
    }

    /// Retires `n` jobs: those still starting first (cancelled at once), then serving ones
    /// with the least time left (drained first).
    async fn shrink(&mut self, cx: &Ctx<'_>, n: u32) {
        let mut order: Vec<(u8, i64, String)> = self
            .jobs
            .values()
            .filter_map(|j| match j.phase {
                Phase::Starting => Some((0, j.end_time, j.id.clone())),
                Phase::Serving => Some((1, j.end_time, j.id.clone())),
                _ => None,
            })
            .collect();
        order.sort();
        for (rank, _, id) in order.into_iter().take(n as usize) {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.retired = Some("scale-down".into());
            }
            if rank == 0 {
                tracing::info!(model = %self.model, job = %id, "scaling down: cancelling a job that has not started serving");
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.phase = Phase::Cancelled;
                }
                let _ = cx.slurm.cancel(&id).await;
            } else {
                self.start_drain(cx, &id).await;
            }
        }
    }

    async fn start_drain(&mut self, cx: &Ctx<'_>, id: &str) {
        let Some(j) = self.jobs.get_mut(id) else {
            return;
        };
        tracing::info!(model = %self.model, job = %id, reason = ?j.retired, "draining a Slurm job");
        j.phase = Phase::Draining;
        j.draining_since = Some(Instant::now());
        if let Some(url) = j.url.clone() {
            remove_backend(cx, &self.model, &url).await;
        }
    }
}

/// Takes a job's backend out of the pool (draining: requests in flight finish), through the
/// control plane so every replica follows; one already gone is fine.
async fn remove_backend(cx: &Ctx<'_>, model: &str, url: &str) {
    use fairgate_control::{backends, ControlError};
    match backends::change_backend(cx.st, ACTOR, model, url, backends::Change::Remove).await {
        Ok(_) | Err(ControlError::NotFound(_)) => {}
        Err(e) => {
            tracing::warn!(model = %model, backend = %url, error = %e, "could not remove a Slurm job's backend")
        }
    }
}

/// Every probe answers 2xx within the timeout.
pub async fn probe_all(http: &reqwest::Client, probes: &[String], timeout_ms: u64) -> bool {
    if probes.is_empty() {
        return false;
    }
    let t = Duration::from_millis(timeout_ms.max(1));
    let checks = probes.iter().map(|u| async move {
        matches!(
            tokio::time::timeout(t, http.get(u).send()).await,
            Ok(Ok(r)) if r.status().is_success()
        )
    });
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .all(|ok| ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_safe_job_names() {
        assert_eq!(prefix_of("llama-3.1/70b"), "fg-llama_3.1_70b-");
    }

    #[test]
    fn endpoint_files_parse_and_default_their_probe() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.json");
        assert!(Endpoint::read(&p).is_none());
        std::fs::write(
            &p,
            r#"{"job_id":"7","url":"http://127.0.0.1:8000","nodes":["n1"]}"#,
        )
        .unwrap();
        let e = Endpoint::read(&p).unwrap();
        assert_eq!(e.probes, vec!["http://127.0.0.1:8000/health".to_owned()]);
        std::fs::write(&p, r#"{"url":"ftp://x"}"#).unwrap();
        assert!(Endpoint::read(&p).is_none());
        std::fs::write(&p, "{half").unwrap();
        assert!(Endpoint::read(&p).is_none());
    }
}
