//! The sections of the config file (`[limits]`, `[routing]`, `[[models]]`, `[portal]`, ...):
//! their fields, defaults and the checks that belong to one section alone.

use fairgate_types::{OnLimit, Price, TenantPolicy};
use serde::Deserialize;
use std::path::PathBuf;

use super::defaults;
use super::oidc::OidcConfig;
use fairgate_types::Secret;

/// Bounds on what a client may send and how slowly (`[limits]`). Applied at start (a reload
/// reports a change as needing a restart).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest body of a portal form or sign-in.
    #[serde(default = "defaults::portal_body_bytes")]
    pub portal_body_bytes: usize,
    /// Largest admin API JSON body.
    #[serde(default = "defaults::admin_body_bytes")]
    pub admin_body_bytes: usize,
    /// Largest request head (request line and headers); more gets 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Longest request URL (path and query); more gets 414.
    #[serde(default = "defaults::max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Time allowed for a request's head to arrive (also how long an idle keep-alive
    /// connection stays open).
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Time allowed to read a whole request body; a trickled body gets 408.
    #[serde(default = "defaults::body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            portal_body_bytes: defaults::portal_body_bytes(),
            admin_body_bytes: defaults::admin_body_bytes(),
            max_header_bytes: defaults::max_header_bytes(),
            max_uri_bytes: defaults::max_uri_bytes(),
            header_read_timeout_ms: defaults::header_read_timeout_ms(),
            body_read_timeout_ms: defaults::body_read_timeout_ms(),
        }
    }
}

// --- Metrics and backend secrets (issue 10) ---

/// `[metrics]`: how many series the gateway's own metrics may have.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Label sets one metric family may hold; new ones beyond it are counted under the
    /// `_overflow` label value (and in `fairgate_metrics_series_dropped_total`).
    #[serde(default = "defaults::max_series")]
    pub max_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_series: defaults::max_series(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantDecl {
    pub name: String,
    #[serde(default = "defaults::one")]
    pub weight: u32,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub policy: TenantPolicy,
}

/// How requests are spread over a model's backends (`[routing]`); live on reload.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// `prefix_aware` (default), `least_loaded` or `round_robin`.
    #[serde(default)]
    pub strategy: crate::router::Strategy,
    /// How often each backend's `/health` is probed.
    #[serde(default = "defaults::probe_interval_ms")]
    pub probe_interval_ms: u64,
    #[serde(default = "defaults::probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// How often each backend's `/metrics` is scraped for queue and KV-cache use.
    #[serde(default = "defaults::scrape_interval_ms")]
    pub scrape_interval_ms: u64,
    /// Scraped numbers older than this are ignored (the gateway's own counts remain).
    #[serde(default = "defaults::metrics_stale_ms")]
    pub metrics_stale_ms: u64,
    /// Backends one request may be sent to before its error is returned (1 = no failover).
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Consecutive failures that eject a backend.
    #[serde(default = "defaults::eject_after_failures")]
    pub eject_after_failures: u32,
    /// First ejection length; doubles on each repeated ejection, up to a minute.
    #[serde(default = "defaults::eject_ms")]
    pub eject_ms: u64,
    /// `prefix_aware` spills away from a backend whose scraped queue reaches this.
    #[serde(default = "defaults::saturation_waiting")]
    pub saturation_waiting: f64,
    /// ... or whose scraped KV-cache use reaches this (0-1).
    #[serde(default = "defaults::saturation_kv_usage")]
    pub saturation_kv_usage: f64,
    /// How often `discover` entries are resolved again.
    #[serde(default = "defaults::discover_interval_ms")]
    pub discover_interval_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            strategy: Default::default(),
            probe_interval_ms: defaults::probe_interval_ms(),
            probe_timeout_ms: defaults::probe_timeout_ms(),
            scrape_interval_ms: defaults::scrape_interval_ms(),
            metrics_stale_ms: defaults::metrics_stale_ms(),
            max_attempts: defaults::max_attempts(),
            eject_after_failures: defaults::eject_after_failures(),
            eject_ms: defaults::eject_ms(),
            saturation_waiting: defaults::saturation_waiting(),
            saturation_kv_usage: defaults::saturation_kv_usage(),
            discover_interval_ms: defaults::discover_interval_ms(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AliasConfig {
    pub name: String,
    /// In order of preference.
    pub models: Vec<String>,
}

/// The browser portal at `/portal`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    /// Mark cookies `Secure` (and write https links): `"auto"` (default) does unless the
    /// gateway listens on a loopback address and the request did not come through a trusted
    /// proxy saying `X-Forwarded-Proto: https`; `true` always; `false` never (plain-HTTP
    /// deployments on a network address).
    #[serde(default)]
    pub secure_cookies: SecureCookies,
    /// How long a sign-in lasts.
    #[serde(default = "defaults::session_ttl_s")]
    pub session_ttl_s: u64,
    /// `[portal.oidc]`: OpenID Connect sign-in; absent, only passwords.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    // ---- sign-in hardening (issue 10) ----
    /// Password hashes (argon2id, 19 MiB each) that may run at once, on blocking threads;
    /// 0 picks half the cores (at least 1).
    #[serde(default)]
    pub password_hash_workers: usize,
}

/// `portal.secure_cookies`: `"auto"`, `true` or `false`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecureCookies {
    #[default]
    Auto,
    Always,
    Never,
}

impl<'de> Deserialize<'de> for SecureCookies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(SecureCookies::Always),
            Raw::Bool(false) => Ok(SecureCookies::Never),
            Raw::Text(t) if t == "auto" => Ok(SecureCookies::Auto),
            Raw::Text(t) if t == "true" => Ok(SecureCookies::Always),
            Raw::Text(t) if t == "false" => Ok(SecureCookies::Never),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "`{t}` is not one of \"auto\", true, false"
            ))),
        }
    }
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self {
            secure_cookies: SecureCookies::Auto,
            session_ttl_s: defaults::session_ttl_s(),
            oidc: None,
            password_hash_workers: 0,
        }
    }
}

/// The response cache's size; models opt in with `cache = true`, requests with the
/// `x-fairgate-cache: on` header.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "defaults::cache_ttl_s")]
    pub ttl_s: u64,
    #[serde(default = "defaults::cache_max_entries")]
    pub max_entries: usize,
    #[serde(default = "defaults::cache_max_bytes")]
    pub max_bytes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub backends: Vec<BackendConfig>,
    /// Prices for cost accounting and money budgets (micros per million tokens).
    #[serde(default)]
    pub price: Price,
    /// What one image, second of audio or spoken characters weigh in tokens for fair share,
    /// rate limits and budgets' token side (`[models.unit_tokens]`).
    #[serde(default)]
    pub unit_tokens: fairgate_types::UnitTokens,
    /// Serve repeated deterministic requests (temperature 0) from the response cache.
    #[serde(default)]
    pub cache: bool,
    /// Models to use, in order, when this one has no healthy backend (a tenant's
    /// `policy.fallbacks` overrides it).
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// LoRA adapters served on top of this model (vLLM `--lora-modules`); a request naming
    /// one goes to this model's backends, preferring those where it is already loaded.
    #[serde(default)]
    pub adapters: Vec<String>,
    /// Backends from Slurm jobs the gateway submits and scales (`backends` may then be empty).
    #[serde(default)]
    pub slurm: Option<super::slurm::SlurmModelConfig>,
    /// Guardrail modes for this model's requests, over `[guardrails]` (tenants' and keys'
    /// policies go over these).
    #[serde(
        default,
        skip_serializing_if = "fairgate_types::GuardrailPolicy::is_empty"
    )]
    pub guardrails: fairgate_types::GuardrailPolicy,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Server root; fairgate calls `{url}/v1/...` and `{url}/metrics`. Left out with
    /// `discover`.
    #[serde(default)]
    pub url: String,
    /// `dns://host:port` instead of `url`: every A/AAAA record of `host` is a backend at
    /// `http://address:port` with this entry's other settings, re-resolved every
    /// `routing.discover_interval_ms` (pods behind a headless Service join and leave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discover: Option<String>,
    /// Requests this backend may have in flight through this gateway.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Reserved tokens (prompt estimate + max output) this backend may hold at once; bounds
    /// KV-cache pressure. Unbounded when absent.
    #[serde(default)]
    pub max_tokens_in_flight: Option<u64>,
    /// Which of the model's adapters this backend serves; all of them when absent.
    #[serde(default)]
    pub adapters: Option<Vec<String>>,
    // --- Backend identity, credentials and TLS (issue 10) ---
    /// Name used in metric labels, the ledger and operator pages (never the URL); unique per
    /// model. Default: the URL's `host:port`.
    #[serde(default)]
    pub name: Option<String>,
    /// Sent as `Authorization: Bearer <key>` (vLLM's `--api-key`) on every request to this
    /// backend. Prefer `api_key_env`. Never serialized (a backend's stored form leaves it out).
    #[serde(default, skip_serializing)]
    pub api_key: Option<Secret>,
    /// Name of an environment variable holding the API key, read at start and on reload.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// PEM file of CA certificates that sign this `https://` backend's certificate (instead of
    /// `upstream.ca_file` and the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    // --- Engine cooperation (issue 12) ---
    /// How the engine orders the requests it holds: vLLM's `--scheduling-policy`. With
    /// `priority`, each request carries its fair-share position as vLLM's `priority` (lower
    /// runs first; tenants below their share get 0).
    #[serde(default)]
    pub scheduling_policy: SchedulingPolicy,
    /// The engine's own sequence limit (vLLM's `--max-num-seqs`) when it is above
    /// `max_in_flight`; priority policy only. The slots in between are taken only by tenants
    /// below their fair share, whose requests the engine then schedules first.
    #[serde(default)]
    pub engine_max_seqs: Option<usize>,
    /// The key is derived from the Slurm provisioner's secret and this label (a job's
    /// generated vLLM `--api-key`, see `config::slurm::job_key`): set by the provisioner on
    /// the backends it registers, so every replica can send the key without storing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_label: Option<String>,
}

/// `[cluster]`: how this replica finds the others (issue 13).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `redis://[:password@]host:port[/db]`; `FAIRGATE_CLUSTER__REDIS_URL` overrides.
    pub redis_url: Secret,
    /// This replica's name in the fleet. Default: the host name and the listen port.
    #[serde(default)]
    pub replica_id: Option<String>,
    /// Prefix of every Redis key and channel (several fleets may share one Redis).
    #[serde(default = "defaults::cluster_prefix")]
    pub key_prefix: String,
    /// How often a replica says it is alive.
    #[serde(default = "defaults::heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A replica not heard from for this long is gone (what it held is reclaimed).
    #[serde(default = "defaults::member_ttl_ms")]
    pub member_ttl_ms: u64,
    /// The longest one Redis call may take; a slower one counts as failed.
    #[serde(default = "defaults::redis_timeout_ms")]
    pub redis_timeout_ms: u64,
    /// How often each model's lease of the fleet's slots is renewed when nothing queues (a
    /// request that queues renews it at once).
    #[serde(default = "defaults::lease_interval_ms")]
    pub lease_interval_ms: u64,
}

impl ClusterSection {
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        let err = |f: &str, m: &str| super::field_err(format!("cluster.{f}"), m);
        let url = self.redis_url.expose();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(err("redis_url", "must be a redis:// or rediss:// URL"));
        }
        if self.heartbeat_ms < 10 {
            return Err(err("heartbeat_ms", "must be at least 10"));
        }
        if self.member_ttl_ms < 2 * self.heartbeat_ms {
            return Err(err(
                "member_ttl_ms",
                "must be at least twice heartbeat_ms (one late heartbeat must not look like a death)",
            ));
        }
        if self.lease_interval_ms < 10 {
            return Err(err("lease_interval_ms", "must be at least 10"));
        }
        if self.redis_timeout_ms == 0 {
            return Err(err("redis_timeout_ms", "must be at least 1"));
        }
        if self
            .replica_id
            .as_deref()
            .is_some_and(|r| r.is_empty() || r.contains('#') || r.len() > 128)
        {
            return Err(err(
                "replica_id",
                "must be 1 to 128 characters, without `#`",
            ));
        }
        if self.key_prefix.is_empty() {
            return Err(err("key_prefix", "must not be empty"));
        }
        Ok(())
    }

    /// `replica_id`, or the host name and `port`.
    pub fn replica_id(&self, port: u16) -> String {
        if let Some(r) = &self.replica_id {
            return r.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "fairgate".into());
        format!("{host}:{port}")
    }
}

/// How an engine orders the requests it holds (vLLM's `--scheduling-policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulingPolicy {
    /// First come, first served (vLLM's default): the gateway never sends `priority`.
    #[default]
    Fcfs,
    /// By `(priority, arrival)`; under KV-cache pressure vLLM preempts the running request
    /// with the largest priority value first.
    Priority,
}

impl ModelConfig {
    /// A model with these backends and every other setting at its default.
    pub fn new(name: impl Into<String>, backends: Vec<BackendConfig>) -> ModelConfig {
        ModelConfig {
            name: name.into(),
            backends,
            price: Price::default(),
            unit_tokens: Default::default(),
            cache: false,
            fallbacks: Vec::new(),
            adapters: Vec::new(),
            slurm: None,
            guardrails: Default::default(),
        }
    }
}

/// Backend names: what metric labels and operator pages may carry.
fn valid_backend_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

impl BackendConfig {
    pub fn new(url: impl Into<String>, max_in_flight: usize) -> BackendConfig {
        BackendConfig {
            url: url.into(),
            discover: None,
            max_in_flight,
            max_tokens_in_flight: None,
            adapters: None,
            name: None,
            api_key: None,
            api_key_env: None,
            ca_file: None,
            scheduling_policy: SchedulingPolicy::Fcfs,
            engine_max_seqs: None,
            api_key_label: None,
        }
    }

    /// The engine settings agree with each other: `engine_max_seqs` needs the priority policy
    /// (an FCFS engine would run the extra work in arrival order) and is at least
    /// `max_in_flight`. `Err` names the field.
    pub fn validate_engine(&self) -> Result<(), (&'static str, String)> {
        let Some(n) = self.engine_max_seqs else {
            return Ok(());
        };
        if self.scheduling_policy != SchedulingPolicy::Priority {
            return Err((
                "engine_max_seqs",
                "needs scheduling_policy = \"priority\": an FCFS engine would run the extra requests in arrival order".into(),
            ));
        }
        if n < self.max_in_flight {
            return Err((
                "engine_max_seqs",
                format!(
                    "must be at least max_in_flight ({}); it is the engine's --max-num-seqs",
                    self.max_in_flight
                ),
            ));
        }
        Ok(())
    }

    /// Engine slots beyond `max_in_flight` that only tenants below their share may take.
    pub fn engine_extra(&self) -> usize {
        match (self.scheduling_policy, self.engine_max_seqs) {
            (SchedulingPolicy::Priority, Some(n)) => n.saturating_sub(self.max_in_flight),
            _ => 0,
        }
    }

    /// The backend's name: the configured one, else the URL's `host:port`.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let rest = self
            .url
            .strip_prefix("https://")
            .or_else(|| self.url.strip_prefix("http://"))
            .unwrap_or(&self.url);
        let host = rest.split('/').next().unwrap_or(rest);
        // Userinfo is refused by validation; strip it anyway so it can never reach a label.
        host.rsplit('@').next().unwrap_or(host).to_owned()
    }

    /// The API key to send: `api_key`, or the variable `api_key_env` names (read now).
    pub fn resolve_api_key(&self) -> Result<Option<Secret>, String> {
        if let Some(label) = &self.api_key_label {
            if self.api_key.is_some() || self.api_key_env.is_some() {
                return Err("a backend with a derived key takes no api_key or api_key_env".into());
            }
            return super::slurm::job_key(label).map(|k| Some(Secret::new(k)));
        }
        key_from(&self.api_key, &self.api_key_env)
    }

    /// Checks the fields added for identity, credentials and TLS; `Err` is (field, message).
    pub fn validate_access(&self) -> Result<(), (&'static str, String)> {
        if let Some(n) = &self.name {
            if !valid_backend_name(n) {
                return Err((
                    "name",
                    format!("`{n}` is invalid (1-64 characters from A-Z a-z 0-9 - _ . : @)"),
                ));
            }
        }
        if let Some(k) = &self.api_key {
            if k.expose().trim().is_empty()
                || k.expose()
                    .bytes()
                    .any(|b| b.is_ascii_control() || b == b' ')
            {
                return Err(("api_key", "must be non-empty, without spaces".into()));
            }
        }
        self.resolve_api_key().map_err(|m| {
            (
                if self.api_key_env.is_some() {
                    "api_key_env"
                } else {
                    "api_key"
                },
                m,
            )
        })?;
        if let Some(f) = &self.ca_file {
            if !self.url.starts_with("https://") {
                return Err(("ca_file", "only applies to https:// backends".into()));
            }
            crate::tls::read_ca_file(f).map_err(|m| ("ca_file", m))?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// TCP connect timeout to a backend.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed until the backend's response headers arrive (covers its queue and prefill).
    #[serde(default = "defaults::first_byte_timeout_ms")]
    pub first_byte_timeout_ms: u64,
    /// Longest gap between two body chunks from a backend before the request is failed.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// How long an idle connection to a backend is kept for reuse before it is closed (a burst
    /// of streams leaves as many idle connections, each holding a socket and its buffers).
    #[serde(default = "defaults::pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
    /// Ask streaming backends for cumulative usage on every chunk
    /// (`stream_options.continuous_usage_stats`, a vLLM feature), so a stream that ends early
    /// is still charged exactly. Turn off for backends that reject unknown stream options;
    /// early-ended streams are then charged an estimated prompt plus counted chunks.
    #[serde(default = "defaults::yes")]
    pub continuous_usage: bool,
    // --- TLS to backends (issue 10) ---
    /// PEM file of extra CA certificates trusted for `https://` backends, besides the system
    /// roots (a backend's own `ca_file` replaces both).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    // --- bounded backend answers (helper proxypath) ---
    /// Largest backend answer read whole (non-stream answers, error bodies); a larger one is
    /// answered 502 `upstream_response_too_large`.
    #[serde(default = "defaults::max_response_bytes")]
    pub max_response_bytes: usize,
    /// Memory all answers being read whole may hold together. A read waits up to
    /// `first_byte_timeout_ms` for room, then fails 503 `upstream_memory_exhausted`.
    #[serde(default = "defaults::response_memory_bytes")]
    pub response_memory_bytes: usize,
    // --- end bounded backend answers ---
}

/// `[relay]`: model-server paths the gateway relays as-is (beyond chat, completions,
/// embeddings and models).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Paths tenants may call; a trailing `*` matches any rest (`/v1/audio/*`). Others are
    /// 404 `unknown_url`.
    #[serde(default = "defaults::relay_allowed_paths")]
    pub allowed_paths: Vec<String>,
    /// vLLM's operator endpoints (adapters, cache, sleep, profiling): relayed only with the
    /// admin token, to every backend of the model, and 403 `admin_only` with a tenant key.
    #[serde(default = "defaults::relay_operator_paths")]
    pub operator_paths: Vec<String>,
    /// Ledger rows per client address and minute for anonymous failures (401 without a valid
    /// key, 404 unknown route); the rest are counted in
    /// `fairgate_anonymous_rejections_total` and one `anonymous:suppressed` row a minute.
    #[serde(default = "defaults::anonymous_rows_per_minute")]
    pub anonymous_rows_per_minute: u32,
    /// Seconds between the `anonymous:suppressed` summary rows.
    #[serde(default = "defaults::anonymous_summary_s")]
    pub anonymous_summary_s: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            allowed_paths: defaults::relay_allowed_paths(),
            operator_paths: defaults::relay_operator_paths(),
            anonymous_rows_per_minute: defaults::anonymous_rows_per_minute(),
            anonymous_summary_s: defaults::anonymous_summary_s(),
        }
    }
}

impl RelayConfig {
    fn matches(patterns: &[String], path: &str) -> bool {
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => p == path,
        })
    }

    /// A tenant may call `path` (a relayed, non-operator path).
    pub fn allows(&self, path: &str) -> bool {
        Self::matches(&self.allowed_paths, path)
    }

    /// `path` is an operator endpoint (admin token only).
    pub fn is_operator(&self, path: &str) -> bool {
        Self::matches(&self.operator_paths, path)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// `fair` (default): weighted token fair share between tenants. `fifo`: first come, first
    /// served, as a plain proxy does (for comparison).
    #[serde(default)]
    pub mode: SchedulerMode,
    /// How long a request may wait for a free backend slot before a 429/503 (a tenant's
    /// `max_wait_ms` overrides it).
    #[serde(default = "defaults::queue_timeout_ms")]
    pub queue_timeout_ms: u64,
    /// Requests one tenant may have queued per model (a tenant's `max_queue` overrides it).
    #[serde(default = "defaults::max_queue_per_tenant")]
    pub max_queue_per_tenant: usize,
    /// Requests queued per model across all tenants before new ones get 503.
    #[serde(default = "defaults::max_queued")]
    pub max_queued: usize,
    /// Fair-share cost of a prompt token (VTC's w_in).
    #[serde(default = "defaults::one_u64")]
    pub input_token_cost: u64,
    /// Fair-share cost of a completion token (VTC's w_out); decode is dearer than prefill.
    #[serde(default = "defaults::two_u64")]
    pub output_token_cost: u64,
    /// What a request over its rate limit does, unless its tenant says otherwise.
    #[serde(default)]
    pub on_limit: OnLimit,
    /// Slots per model that only tenants below their fair share may take, so an interactive
    /// user beside a flood finds one at once. Left out: sized automatically (none while one
    /// tenant has the model to itself; otherwise one per recent light tenant, no more than
    /// such tenants are likely to have in flight at once, at least one and at most half of the
    /// model's slots). `0` turns it off. Fair mode only.
    #[serde(default)]
    pub headroom: Option<usize>,
    /// When a slot frees, a queued request expected to be short (its `max_tokens`, or its
    /// tenant's recent answer length when smaller) goes ahead of a longer one whose tenant is
    /// at most one average request's service behind. Fair mode only; the fairness bound
    /// between two backlogged tenants grows from 2 to at most 3 requests' worth of service.
    #[serde(default = "defaults::yes")]
    pub length_aware: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerMode {
    #[default]
    Fair,
    Fifo,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSettings {
    #[serde(default = "defaults::ledger_batch_size")]
    pub batch_size: usize,
    #[serde(default = "defaults::ledger_flush_interval_ms")]
    pub flush_interval_ms: u64,
    #[serde(default = "defaults::ledger_queue_capacity")]
    pub queue_capacity: usize,
    // --- fault tolerance and retention (issue 10, helper `ledger`) ---
    /// At shutdown, longest the ledger tries the database before spilling what it holds
    /// (skipped when the database already failed its last attempt).
    #[serde(default = "defaults::ledger_shutdown_flush_ms")]
    pub shutdown_flush_ms: u64,
    /// Rows older than this many days are rolled into daily aggregates and deleted;
    /// 0 keeps every row forever.
    #[serde(default = "defaults::ledger_retention_days")]
    pub retention_days: u32,
    // --- end ledger fault tolerance ---
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: defaults::connect_timeout_ms(),
            pool_idle_timeout_ms: defaults::pool_idle_timeout_ms(),
            first_byte_timeout_ms: defaults::first_byte_timeout_ms(),
            idle_timeout_ms: defaults::idle_timeout_ms(),
            continuous_usage: defaults::yes(),
            ca_file: None,
            max_response_bytes: defaults::max_response_bytes(),
            response_memory_bytes: defaults::response_memory_bytes(),
        }
    }
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            mode: SchedulerMode::Fair,
            queue_timeout_ms: defaults::queue_timeout_ms(),
            max_queue_per_tenant: defaults::max_queue_per_tenant(),
            max_queued: defaults::max_queued(),
            input_token_cost: 1,
            output_token_cost: 2,
            on_limit: OnLimit::Queue,
            headroom: None,
            length_aware: true,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_s: defaults::cache_ttl_s(),
            max_entries: defaults::cache_max_entries(),
            max_bytes: defaults::cache_max_bytes(),
        }
    }
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            batch_size: defaults::ledger_batch_size(),
            flush_interval_ms: defaults::ledger_flush_interval_ms(),
            queue_capacity: defaults::ledger_queue_capacity(),
            shutdown_flush_ms: defaults::ledger_shutdown_flush_ms(),
            retention_days: defaults::ledger_retention_days(),
        }
    }
}

/// `dns://host:port` of a `discover` entry, as (host, port).
pub fn parse_discover(spec: &str) -> Result<(String, u16), String> {
    let rest = spec
        .strip_prefix("dns://")
        .ok_or_else(|| format!("`{spec}` must start with dns://"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("`{spec}` needs a port (dns://host:port)"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{spec}`: `{port}` is not a port"))?;
    if host.is_empty() || host.contains('/') || host.contains('@') || port == 0 {
        return Err(format!("`{spec}` must be dns://host:port"));
    }
    Ok((host.trim_matches(|c| c == '[' || c == ']').to_owned(), port))
}

/// A secret given directly or by the name of an environment variable holding it (read now):
/// backends, MCP servers and the guardrail hook take their keys the same way.
pub(crate) fn key_from(
    api_key: &Option<Secret>,
    api_key_env: &Option<String>,
) -> Result<Option<Secret>, String> {
    match (api_key, api_key_env) {
        (Some(_), Some(_)) => Err("set either api_key or api_key_env, not both".into()),
        (Some(k), None) => Ok(Some(k.clone())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(Secret::new(v.trim()))),
            _ => Err(format!("environment variable `{var}` is not set or empty")),
        },
        (None, None) => Ok(None),
    }
}

/// An `http://` or `https://` URL with a host and no credentials in it.
pub(crate) fn validate_http_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("`{url}` must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("`{url}` has no host"));
    }
    if rest.split('/').next().is_some_and(|h| h.contains('@')) {
        // Credentials in the URL would end up in logs; use api_key / api_key_env.
        return Err("must not contain credentials (use api_key or api_key_env)".into());
    }
    if url.parse::<http::Uri>().is_err() {
        return Err(format!("`{url}` is not a valid URL"));
    }
    Ok(())
}

pub fn validate_backend_url(url: &str) -> Result<(), String> {
    validate_http_url(url)?;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    if rest.trim_end_matches('/').contains('/') {
        return Err(format!(
            "`{url}` must be the server root (fairgate appends /v1/...), without a path"
        ));
    }
    Ok(())
}
