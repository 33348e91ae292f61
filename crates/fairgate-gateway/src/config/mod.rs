//! Configuration: a TOML file plus `FAIRGATE_*` environment overrides, validated once at start.
//!
//! The flow is raw → overlay → typed → validated (`load` returns a [`Config`] whose invariants
//! hold, so the rest of the gateway never re-checks them). Every error names the field it is
//! about, with its path (`models[0].backends[1].url`), because a config that fails to load is
//! the first thing a new operator meets.

use fairgate_types::{Group, OnLimit, Price, TenantPolicy};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod oidc;
pub use oidc::OidcConfig;

/// The whole configuration, as written in `fairgate.toml`. Unknown keys are errors.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gateway listens on.
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// `sqlite://path`, `sqlite::memory:` or `postgres://user@host/db`.
    #[serde(default = "defaults::database")]
    pub database: String,
    /// Directory for the SQLite file default, ledger spill files and demo state.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    /// Bearer token for `/admin/v1`; `FAIRGATE_ADMIN_TOKEN` overrides. Admin API is disabled without one.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Output tokens reserved for a request that sets no `max_tokens`.
    #[serde(default = "defaults::default_max_tokens")]
    pub default_max_tokens: u64,
    /// `text` (default) or `json` log lines.
    #[serde(default = "defaults::log_format")]
    pub log_format: String,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub admission: AdmissionConfig,
    #[serde(default)]
    pub ledger: LedgerSettings,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub portal: PortalConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    // --- relayed paths (helper proxypath) ---
    /// Which model-server paths beyond the typed ones are relayed, and which need the admin
    /// token; plus the rate at which anonymous failures are written to the ledger.
    #[serde(default)]
    pub relay: RelayConfig,
    // --- end relayed paths ---
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Other names for models: `[[aliases]] name = "chat", models = ["big", "small"]` sends
    /// `chat` to the first listed model that has a healthy backend.
    #[serde(default)]
    pub aliases: Vec<AliasConfig>,
    /// Groups declared in the file; upserted into the database at start and on reload.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Tenants declared in the file; upserted at start and on reload (the file wins over
    /// admin-API changes to the same tenant at the next reload).
    #[serde(default)]
    pub tenants: Vec<TenantDecl>,
    // --- Edge hardening (issue 10): client address, request limits, bounded shutdown. ---
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` names the client; empty: the TCP peer
    /// is the client. Live on reload.
    #[serde(default)]
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    /// On SIGTERM, how long open requests and streams may run before their connections are
    /// closed (their ledger rows are then recorded as cancelled).
    #[serde(default = "defaults::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// `[limits]`: request size and time bounds for every route.
    #[serde(default)]
    pub limits: LimitsConfig,
    // --- Metrics exposure (issue 10, bounded observability) ---
    /// Bearer token `GET /metrics` requires; `FAIRGATE_METRICS_TOKEN` overrides. Without one
    /// `/metrics` is open: set it, or keep the port away from untrusted networks.
    #[serde(default)]
    pub metrics_token: Option<Secret>,
    /// `[metrics]`: bounds on the gateway's own metric series.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

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

/// A secret from the config (a token, a backend's API key): its `Debug` never shows it, and
/// nothing serializes it, so config dumps and logs cannot leak it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends or compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
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
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Server root; fairgate calls `{url}/v1/...` and `{url}/metrics`.
    pub url: String,
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
    /// backend. Prefer `api_key_env`.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Name of an environment variable holding the API key, read at start and on reload.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// PEM file of CA certificates that sign this `https://` backend's certificate (instead of
    /// `upstream.ca_file` and the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl ModelConfig {
    /// A model with these backends and every other setting at its default.
    pub fn new(name: impl Into<String>, backends: Vec<BackendConfig>) -> ModelConfig {
        ModelConfig {
            name: name.into(),
            backends,
            price: Price::default(),
            cache: false,
            fallbacks: Vec::new(),
            adapters: Vec::new(),
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
            max_in_flight,
            max_tokens_in_flight: None,
            adapters: None,
            name: None,
            api_key: None,
            api_key_env: None,
            ca_file: None,
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
        match (&self.api_key, &self.api_key_env) {
            (Some(_), Some(_)) => Err("set either api_key or api_key_env, not both".into()),
            (Some(k), None) => Ok(Some(k.clone())),
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(Secret(v.trim().to_owned()))),
                _ => Err(format!("environment variable `{var}` is not set or empty")),
            },
            (None, None) => Ok(None),
        }
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

mod defaults {
    use std::path::PathBuf;
    pub fn listen() -> String {
        "127.0.0.1:8080".into()
    }
    pub fn database() -> String {
        "sqlite://fairgate-data/fairgate.db".into()
    }
    pub fn data_dir() -> PathBuf {
        PathBuf::from("fairgate-data")
    }
    pub fn max_body_bytes() -> usize {
        8 * 1024 * 1024
    }
    pub fn default_max_tokens() -> u64 {
        1024
    }
    pub fn log_format() -> String {
        "text".into()
    }
    pub fn max_in_flight() -> usize {
        32
    }
    pub fn connect_timeout_ms() -> u64 {
        2_000
    }
    pub fn first_byte_timeout_ms() -> u64 {
        300_000
    }
    pub fn idle_timeout_ms() -> u64 {
        120_000
    }
    pub fn yes() -> bool {
        true
    }
    pub fn queue_timeout_ms() -> u64 {
        30_000
    }
    pub fn max_queue_per_tenant() -> usize {
        1_000
    }
    pub fn max_queued() -> usize {
        10_000
    }
    pub fn one() -> u32 {
        1
    }
    pub fn one_u64() -> u64 {
        1
    }
    pub fn two_u64() -> u64 {
        2
    }
    pub fn session_ttl_s() -> u64 {
        12 * 3600
    }
    pub fn cache_ttl_s() -> u64 {
        300
    }
    pub fn cache_max_entries() -> usize {
        10_000
    }
    pub fn cache_max_bytes() -> usize {
        64 * 1024 * 1024
    }
    pub fn ledger_batch_size() -> usize {
        256
    }
    pub fn ledger_flush_interval_ms() -> u64 {
        100
    }
    pub fn ledger_queue_capacity() -> usize {
        65_536
    }
    pub fn ledger_shutdown_flush_ms() -> u64 {
        3_000
    }
    pub fn ledger_retention_days() -> u32 {
        90
    }
    pub fn probe_interval_ms() -> u64 {
        2_000
    }
    pub fn probe_timeout_ms() -> u64 {
        1_000
    }
    pub fn scrape_interval_ms() -> u64 {
        100
    }
    pub fn max_series() -> usize {
        10_000
    }
    pub fn metrics_stale_ms() -> u64 {
        2_000
    }
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn eject_after_failures() -> u32 {
        3
    }
    pub fn eject_ms() -> u64 {
        5_000
    }
    pub fn saturation_waiting() -> f64 {
        5.0
    }
    pub fn saturation_kv_usage() -> f64 {
        0.9
    }
    // --- relayed paths and backend answers (helper proxypath) ---
    pub fn max_response_bytes() -> usize {
        32 * 1024 * 1024
    }
    pub fn response_memory_bytes() -> usize {
        256 * 1024 * 1024
    }
    pub fn anonymous_rows_per_minute() -> u32 {
        60
    }
    pub fn anonymous_summary_s() -> u64 {
        60
    }
    /// vLLM's tenant-facing endpoints beyond chat, completions and embeddings. Not
    /// `/v1/responses/{id}`: the gateway cannot tell whose stored response an id is.
    pub fn relay_allowed_paths() -> Vec<String> {
        [
            "/v1/responses",
            "/v1/audio/transcriptions",
            "/v1/audio/translations",
            "/v1/audio/speech",
            "/v1/rerank",
            "/v2/rerank",
            "/v1/score",
            "/v1/classify",
            "/v1/pooling",
            "/v1/tokenize",
            "/v1/detokenize",
            "/tokenize",
            "/detokenize",
            "/rerank",
            "/score",
            "/pooling",
            "/classify",
        ]
        .map(String::from)
        .to_vec()
    }
    /// vLLM's endpoints that change or inspect the server itself.
    pub fn relay_operator_paths() -> Vec<String> {
        [
            "/v1/load_lora_adapter",
            "/v1/unload_lora_adapter",
            "/reset_prefix_cache",
            "/reset_mm_cache",
            "/sleep",
            "/wake_up",
            "/is_sleeping",
            "/start_profile",
            "/stop_profile",
            "/collective_rpc",
            "/scale_elastic_ep",
            "/is_scaling_elastic_ep",
            "/pause",
            "/resume",
            "/is_paused",
            "/server_info",
        ]
        .map(String::from)
        .to_vec()
    }
    // Edge hardening (issue 10).
    pub fn shutdown_grace_ms() -> u64 {
        10_000
    }
    pub fn portal_body_bytes() -> usize {
        64 * 1024
    }
    pub fn admin_body_bytes() -> usize {
        1024 * 1024
    }
    pub fn max_header_bytes() -> usize {
        64 * 1024
    }
    pub fn max_uri_bytes() -> usize {
        8 * 1024
    }
    pub fn header_read_timeout_ms() -> u64 {
        10_000
    }
    pub fn body_read_timeout_ms() -> u64 {
        30_000
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: defaults::connect_timeout_ms(),
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

/// A config that could not be loaded; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Field { field: String, message: String },
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// Prefix of environment variables that override config fields. `FAIRGATE_LISTEN` sets `listen`,
/// `FAIRGATE_UPSTREAM__CONNECT_TIMEOUT_MS` sets `upstream.connect_timeout_ms`.
pub const ENV_PREFIX: &str = "FAIRGATE_";

/// Top-level config fields that `FAIRGATE_*` variables may set. Other variables with the
/// prefix (`FAIRGATE_URL` for the admin CLI, `FAIRGATE_LOG`, test settings) are not config.
const ENV_FIELDS: &[&str] = &[
    "listen",
    "database",
    "data_dir",
    "admin_token",
    "max_body_bytes",
    "default_max_tokens",
    "log_format",
    "upstream",
    "admission",
    "ledger",
    "cache",
    "portal",
    "routing",
    "relay",
    // Edge hardening (issue 10).
    "trusted_proxies",
    "shutdown_grace_ms",
    "limits",
    "metrics_token",
    "metrics",
];

impl Config {
    /// Loads `path` (if given), overlays `FAIRGATE_*` variables from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
                p.to_owned(),
            ),
            None => (String::new(), PathBuf::from("<defaults>")),
        };
        Self::from_toml_str(&text, &origin, env)
    }

    /// Like [`Config::load`] but from TOML text; `origin` only labels errors.
    pub fn from_toml_str(
        text: &str,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_owned(),
                    message: e.to_string(),
                })?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if !path
                .first()
                .is_some_and(|f| ENV_FIELDS.contains(&f.as_str()))
            {
                continue;
            }
            overlay(&mut table, &path, &value);
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let field = e.path().to_string();
                field_err(field, e.into_inner().to_string())
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the invariants the rest of the gateway relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if !(self.database.starts_with("sqlite:")
            || self.database.starts_with("postgres://")
            || self.database.starts_with("postgresql://"))
        {
            return Err(field_err(
                "database",
                format!(
                    "`{}` is not a database URL: use sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DB",
                    self.database
                ),
            ));
        }
        if let Some(t) = &self.admin_token {
            if t.len() < 16 {
                return Err(field_err(
                    "admin_token",
                    "must be at least 16 characters (it guards every administrative action)",
                ));
            }
        }
        if self.max_body_bytes < 1024 {
            return Err(field_err("max_body_bytes", "must be at least 1024"));
        }
        // --- relayed paths and backend answers (helper proxypath) ---
        if self.upstream.max_response_bytes < 1024 {
            return Err(field_err(
                "upstream.max_response_bytes",
                "must be at least 1024",
            ));
        }
        if self.upstream.response_memory_bytes < self.upstream.max_response_bytes {
            return Err(field_err(
                "upstream.response_memory_bytes",
                "must be at least upstream.max_response_bytes (one answer must fit)",
            ));
        }
        for (i, p) in self.relay.allowed_paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(field_err(
                    format!("relay.allowed_paths[{i}]"),
                    "must start with `/`",
                ));
            }
            if self.relay.is_operator(p) {
                return Err(field_err(
                    format!("relay.allowed_paths[{i}]"),
                    format!("`{p}` is an operator path (relay.operator_paths); it needs the admin token"),
                ));
            }
        }
        for (i, p) in self.relay.operator_paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(field_err(
                    format!("relay.operator_paths[{i}]"),
                    "must start with `/`",
                ));
            }
        }
        // --- end relayed paths ---
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(field_err("log_format", "must be \"text\" or \"json\""));
        }
        if self.ledger.batch_size == 0 {
            return Err(field_err("ledger.batch_size", "must be at least 1"));
        }
        if self.ledger.queue_capacity < self.ledger.batch_size {
            return Err(field_err(
                "ledger.queue_capacity",
                "must be at least ledger.batch_size",
            ));
        }
        if self.ledger.shutdown_flush_ms > 60_000 {
            return Err(field_err(
                "ledger.shutdown_flush_ms",
                "must be at most 60000 (rows not committed by then are spilled, not lost)",
            ));
        }
        if self.ledger.retention_days > 36_500 {
            return Err(field_err(
                "ledger.retention_days",
                "must be at most 36500 (use 0 to keep rows forever)",
            ));
        }
        let a = &self.admission;
        if a.max_queue_per_tenant == 0 || a.max_queued == 0 {
            return Err(field_err(
                "admission.max_queued",
                "queue bounds must be at least 1",
            ));
        }
        if a.input_token_cost == 0 && a.output_token_cost == 0 {
            return Err(field_err(
                "admission.output_token_cost",
                "at least one token cost must be positive, or fair share has nothing to measure",
            ));
        }
        let mut seen_groups = std::collections::HashSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            if !valid_name(&g.name) || !seen_groups.insert(g.name.as_str()) {
                return Err(field_err(
                    format!("groups[{i}].name"),
                    format!("`{}` is invalid (1-64 characters from A-Z a-z 0-9 - _ . @) or declared twice", g.name),
                ));
            }
            if !(1..=MAX_WEIGHT).contains(&g.weight) {
                return Err(field_err(
                    format!("groups[{i}].weight"),
                    format!("must be between 1 and {MAX_WEIGHT}"),
                ));
            }
        }
        let mut seen_tenants = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if !valid_name(&t.name) || !seen_tenants.insert(t.name.as_str()) {
                return Err(field_err(
                    format!("tenants[{i}].name"),
                    format!("`{}` is invalid (1-64 characters from A-Z a-z 0-9 - _ . @) or declared twice", t.name),
                ));
            }
            if !(1..=MAX_WEIGHT).contains(&t.weight) {
                return Err(field_err(
                    format!("tenants[{i}].weight"),
                    format!("must be between 1 and {MAX_WEIGHT}"),
                ));
            }
            if t.group.as_deref().is_some_and(|g| !valid_name(g)) {
                return Err(field_err(
                    format!("tenants[{i}].group"),
                    "must be 1-64 characters from A-Z a-z 0-9 - _ . @",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if m.name.is_empty() || m.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(field_err(
                    format!("models[{i}].name"),
                    "must be a non-empty name without whitespace",
                ));
            }
            if !seen.insert(m.name.as_str()) {
                return Err(field_err(
                    format!("models[{i}].name"),
                    format!("model `{}` is declared twice", m.name),
                ));
            }
            if m.backends.is_empty() {
                return Err(field_err(
                    format!("models[{i}].backends"),
                    format!("model `{}` needs at least one backend", m.name),
                ));
            }
            let mut backend_names = std::collections::HashSet::new();
            for (j, b) in m.backends.iter().enumerate() {
                let at = format!("models[{i}].backends[{j}]");
                validate_backend_url(&b.url).map_err(|msg| field_err(format!("{at}.url"), msg))?;
                b.validate_access()
                    .map_err(|(f, msg)| field_err(format!("{at}.{f}"), msg))?;
                if !backend_names.insert(b.display_name()) {
                    return Err(field_err(
                        format!("{at}.name"),
                        format!(
                            "`{}` names another backend of model `{}` too (names are unique per model)",
                            b.display_name(),
                            m.name
                        ),
                    ));
                }
                if b.max_tokens_in_flight == Some(0) {
                    return Err(field_err(
                        format!("{at}.max_tokens_in_flight"),
                        "must be at least 1 (leave it out for no token bound)",
                    ));
                }
                if b.max_in_flight == 0 {
                    return Err(field_err(
                        format!("{at}.max_in_flight"),
                        "must be at least 1",
                    ));
                }
                for a in b.adapters.iter().flatten() {
                    if !m.adapters.contains(a) {
                        return Err(field_err(
                            format!("{at}.adapters"),
                            format!("`{a}` is not one of model `{}`'s adapters", m.name),
                        ));
                    }
                }
            }
        }
        // One namespace for models, adapters and aliases: a name must mean one thing.
        let mut names = std::collections::HashMap::new();
        for (i, m) in self.models.iter().enumerate() {
            names.insert(m.name.as_str(), format!("models[{i}]"));
        }
        for (i, m) in self.models.iter().enumerate() {
            for (j, a) in m.adapters.iter().enumerate() {
                if let Some(prev) = names.insert(a.as_str(), format!("models[{i}].adapters[{j}]")) {
                    return Err(field_err(
                        format!("models[{i}].adapters[{j}]"),
                        format!("`{a}` is already declared at {prev}"),
                    ));
                }
            }
        }
        for (i, a) in self.aliases.iter().enumerate() {
            if let Some(prev) = names.insert(a.name.as_str(), format!("aliases[{i}]")) {
                return Err(field_err(
                    format!("aliases[{i}].name"),
                    format!("`{}` is already declared at {prev}", a.name),
                ));
            }
            if a.models.is_empty() {
                return Err(field_err(
                    format!("aliases[{i}].models"),
                    "must list at least one model",
                ));
            }
            for m in &a.models {
                if self.model(m).is_none() {
                    return Err(field_err(
                        format!("aliases[{i}].models"),
                        format!("`{m}` is not a declared model"),
                    ));
                }
            }
        }
        for (i, m) in self.models.iter().enumerate() {
            for f in &m.fallbacks {
                if self.model(f).is_none() || *f == m.name {
                    return Err(field_err(
                        format!("models[{i}].fallbacks"),
                        format!("`{f}` is not another declared model"),
                    ));
                }
            }
        }
        if let Some(t) = &self.metrics_token {
            if t.expose().len() < 16 {
                return Err(field_err("metrics_token", "must be at least 16 characters"));
            }
        }
        if self.metrics.max_series < 10 {
            return Err(field_err("metrics.max_series", "must be at least 10"));
        }
        if let Some(f) = &self.upstream.ca_file {
            crate::tls::read_ca_file(f).map_err(|m| field_err("upstream.ca_file", m))?;
        }
        let r = &self.routing;
        for (field, v) in [
            ("routing.probe_interval_ms", r.probe_interval_ms),
            ("routing.probe_timeout_ms", r.probe_timeout_ms),
            ("routing.scrape_interval_ms", r.scrape_interval_ms),
            ("routing.metrics_stale_ms", r.metrics_stale_ms),
            ("routing.eject_ms", r.eject_ms),
            ("routing.max_attempts", u64::from(r.max_attempts)),
            (
                "routing.eject_after_failures",
                u64::from(r.eject_after_failures),
            ),
        ] {
            if v == 0 {
                return Err(field_err(field, "must be at least 1"));
            }
        }
        if !(r.saturation_kv_usage > 0.0 && r.saturation_kv_usage <= 1.0) {
            return Err(field_err(
                "routing.saturation_kv_usage",
                "must be in (0, 1]",
            ));
        }
        if !(r.saturation_waiting >= 0.0 && r.saturation_waiting.is_finite()) {
            return Err(field_err(
                "routing.saturation_waiting",
                "must be a non-negative number",
            ));
        }
        // Edge hardening (issue 10). `trusted_proxies` is validated as it is parsed.
        let l = &self.limits;
        for (field, v, min) in [
            ("limits.portal_body_bytes", l.portal_body_bytes, 1024),
            ("limits.admin_body_bytes", l.admin_body_bytes, 1024),
            // hyper's read buffer cannot be smaller.
            ("limits.max_header_bytes", l.max_header_bytes, 8192),
            ("limits.max_uri_bytes", l.max_uri_bytes, 256),
        ] {
            if v < min {
                return Err(field_err(field, format!("must be at least {min}")));
            }
        }
        if l.max_uri_bytes > l.max_header_bytes {
            return Err(field_err(
                "limits.max_uri_bytes",
                "must not exceed limits.max_header_bytes (the URL is part of the request head)",
            ));
        }
        for (field, v) in [
            ("limits.header_read_timeout_ms", l.header_read_timeout_ms),
            ("limits.body_read_timeout_ms", l.body_read_timeout_ms),
        ] {
            if v == 0 {
                return Err(field_err(field, "must be at least 1"));
            }
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            field_err(
                "listen",
                format!("`{}` is not an address like 127.0.0.1:8080", self.listen),
            )
        })
    }

    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.admission.queue_timeout_ms)
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn alias(&self, name: &str) -> Option<&AliasConfig> {
        self.aliases.iter().find(|a| a.name == name)
    }
}

/// Largest tenant or group weight; keeps counter arithmetic far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Tenant and group names: the same rule as the admin API's.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

pub fn validate_backend_url(url: &str) -> Result<(), String> {
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
    if rest.trim_end_matches('/').contains('/') {
        return Err(format!(
            "`{url}` must be the server root (fairgate appends /v1/...), without a path"
        ));
    }
    Ok(())
}

/// Sets `path` in `table` to `raw`, typed as TOML would read it (number, bool), else a string.
fn overlay(table: &mut toml::Table, path: &[String], raw: &str) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => cur = t,
            _ => return,
        }
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table() && !v.is_array())
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    cur.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            text,
            Path::new("test.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    const SAMPLE: &str = r#"
listen = "127.0.0.1:8080"
database = "sqlite://fairgate.db"
[[models]]
name = "llama"
[[models.backends]]
url = "http://127.0.0.1:8000"
max_in_flight = 32
"#;

    #[test]
    fn contract_sample_loads() {
        let c = load(SAMPLE, &[]).unwrap();
        assert_eq!(c.models[0].backends[0].max_in_flight, 32);
        assert_eq!(c.listen_addr().unwrap().port(), 8080);
    }

    #[test]
    fn env_overrides_file_and_nested_fields() {
        let c = load(
            SAMPLE,
            &[
                ("FAIRGATE_LISTEN", "0.0.0.0:9000"),
                ("FAIRGATE_ADMIN_TOKEN", "0123456789abcdef0123"),
                ("FAIRGATE_UPSTREAM__CONNECT_TIMEOUT_MS", "1500"),
                ("FAIRGATE_TEST_POSTGRES_URL", "ignored"),
                ("FAIRGATE_URL", "http://elsewhere"),
                ("FAIRGATE_BIN", "ignored"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.admin_token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(c.upstream.connect_timeout_ms, 1500);
    }

    #[test]
    fn errors_name_the_field() {
        let bad_url = SAMPLE.replace("http://127.0.0.1:8000", "ftp://x");
        let e = load(&bad_url, &[]).unwrap_err().to_string();
        assert!(e.contains("models[0].backends[0].url"), "{e}");

        let bad_type = SAMPLE.replace("max_in_flight = 32", "max_in_flight = \"lots\"");
        let e = load(&bad_type, &[]).unwrap_err().to_string();
        assert!(e.contains("models[0].backends[0].max_in_flight"), "{e}");

        let unknown = format!("{SAMPLE}\nlisten_port = 3\n");
        let e = load(&unknown, &[]).unwrap_err().to_string();
        assert!(e.contains("listen_port"), "{e}");

        let e = load(SAMPLE, &[("FAIRGATE_LISTEN", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listen`"), "{e}");

        let e = load(SAMPLE, &[("FAIRGATE_DATABASE", "mysql://x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`database`"), "{e}");

        let e = load("[[models]]\nname = \"a\"\nbackends = []\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("models[0].backends"), "{e}");
    }

    /// The policy example in README.md, verbatim in shape.
    #[test]
    fn readme_policy_example_loads() {
        let text = format!(
            "{SAMPLE}{}",
            r#"
[admission]
mode = "fifo"
[[groups]]
name = "physics"
weight = 3

[[tenants]]
name = "lab-a"
weight = 2
group = "physics"
[tenants.policy]
max_queue = 200
max_wait_ms = 20000
on_limit = "queue"
hard_cap = true
limits = { rpm = 600, tpm = 200000, max_concurrent = 32 }
budgets = [ { period = "day", tokens = 5000000 }, { period = "month", cost = 250000000 } ]
"#
        );
        let c = load(&text, &[]).unwrap();
        assert_eq!(c.admission.mode, SchedulerMode::Fifo);
        let t = &c.tenants[0];
        assert_eq!(t.policy.limits.tpm, Some(200_000));
        assert_eq!(t.policy.budgets.len(), 2);
        assert!(t.policy.hard_cap);
        assert_eq!(c.groups[0].weight, 3);
        let bad = text.replace("weight = 3", "weight = 0");
        let e = load(&bad, &[]).unwrap_err().to_string();
        assert!(e.contains("groups[0].weight"), "{e}");
        let bad = text.replace("tpm = 200000", "tpn = 200000");
        let e = load(&bad, &[]).unwrap_err().to_string();
        assert!(e.contains("tenants[0].policy.limits"), "{e}");
    }

    #[test]
    fn syntax_error_names_file() {
        let e = load("listen = ", &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn edge_limits_and_trusted_proxies_load_and_validate() {
        let c = load("", &[]).unwrap();
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.limits.portal_body_bytes, 64 * 1024);
        assert_eq!(c.limits.admin_body_bytes, 1024 * 1024);
        assert_eq!(c.shutdown_grace_ms, 10_000);
        let c = load(
            "trusted_proxies = [\"10.0.0.0/8\"]\n[limits]\nbody_read_timeout_ms = 500\n",
            &[("FAIRGATE_LIMITS__PORTAL_BODY_BYTES", "4096")],
        )
        .unwrap();
        assert!(c.trusted_proxies.contains("10.9.8.7".parse().unwrap()));
        assert_eq!(c.limits.body_read_timeout_ms, 500);
        assert_eq!(c.limits.portal_body_bytes, 4096);
        let c = load("", &[("FAIRGATE_TRUSTED_PROXIES", "10.0.0.1, ::1")]).unwrap();
        assert!(c.trusted_proxies.contains("::1".parse().unwrap()));
        let e = load("trusted_proxies = [\"10.0.0.0/40\"]", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("trusted_proxies") && e.contains("10.0.0.0/40"),
            "{e}"
        );
        let e = load("[limits]\nmax_header_bytes = 100\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_header_bytes"), "{e}");
        let e = load("[limits]\nbody_read_timeout_ms = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.body_read_timeout_ms"), "{e}");
    }

    #[test]
    fn defaults_without_file() {
        let c = load("", &[]).unwrap();
        assert!(c.database.starts_with("sqlite://"));
        assert!(c.models.is_empty());
        assert_eq!(c.admission.queue_timeout_ms, 30_000);
    }
}
