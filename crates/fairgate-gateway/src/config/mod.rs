//! Configuration: a TOML file plus `FAIRGATE_*` environment overrides, validated once at start.
//!
//! The flow is raw → overlay → typed → validated (`load` returns a [`Config`] whose invariants
//! hold, so the rest of the gateway never re-checks them). Every error names the field it is
//! about, with its path (`models[0].backends[1].url`), because a config that fails to load is
//! the first thing a new operator meets.

use fairgate_types::{is_valid_name, Group, Weight};

/// Secrets in the config (tokens, backends' API keys) never show in `Debug` or serialize.
pub use fairgate_types::Secret;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod defaults;
mod sections;
pub use sections::*;

mod oidc;
pub use oidc::OidcConfig;
pub mod slurm;
pub use slurm::{SlurmConfig, SlurmModelConfig};
mod guardrails;
pub use guardrails::{
    validate_policy as validate_guardrails, ExternalGuardConfig, GuardrailsConfig, OnHookError,
};
pub mod mcp;
pub use mcp::{McpConfig, McpServerConfig};

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
    /// Where Slurm is, for models whose backends are Slurm jobs (`[models.slurm]`).
    #[serde(default)]
    pub slurm: SlurmConfig,
    /// PII and prompt-injection guardrails: default modes and the detectors.
    #[serde(default)]
    pub guardrails: GuardrailsConfig,
    /// `[mcp]`: MCP tool servers tenants reach at `/mcp/{name}` (live on reload).
    #[serde(default)]
    pub mcp: McpConfig,
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
    // --- Several replicas (issue 13) ---
    /// `[cluster]`: join the other replicas through Redis. Absent: one process, as always.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
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
    "cluster",
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
        guardrails::validate_policy(&self.guardrails.defaults())
            .map_err(|(f, msg)| field_err(format!("guardrails.{f}"), msg))?;
        fairgate_guard::Guard::new(&self.guardrails.detect)
            .map_err(|e| field_err("guardrails.detect", e.to_string()))?;
        if let Some(ext) = &self.guardrails.external {
            ext.validate()
                .map_err(|(f, msg)| field_err(format!("guardrails.external.{f}"), msg))?;
        }
        self.mcp
            .validate()
            .map_err(|(f, msg)| field_err(format!("mcp.{f}"), msg))?;
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
        if let Some(c) = &self.cluster {
            if self.database.starts_with("sqlite:") {
                return Err(field_err(
                    "cluster",
                    "needs a database every replica shares (postgres://...): with SQLite each replica would keep its own keys, ledger and budgets",
                ));
            }
            c.validate()?;
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
            if !is_valid_name(&g.name) || !seen_groups.insert(g.name.as_str()) {
                return Err(field_err(
                    format!("groups[{i}].name"),
                    format!("`{}` is invalid (1-64 characters from A-Z a-z 0-9 - _ . @) or declared twice", g.name),
                ));
            }
            if !(Weight::MIN..=Weight::MAX).contains(&g.weight) {
                return Err(field_err(
                    format!("groups[{i}].weight"),
                    format!("must be between 1 and {}", Weight::MAX),
                ));
            }
        }
        let mut seen_tenants = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if !is_valid_name(&t.name) || !seen_tenants.insert(t.name.as_str()) {
                return Err(field_err(
                    format!("tenants[{i}].name"),
                    format!("`{}` is invalid (1-64 characters from A-Z a-z 0-9 - _ . @) or declared twice", t.name),
                ));
            }
            if !(Weight::MIN..=Weight::MAX).contains(&t.weight) {
                return Err(field_err(
                    format!("tenants[{i}].weight"),
                    format!("must be between 1 and {}", Weight::MAX),
                ));
            }
            if t.group.as_deref().is_some_and(|g| !is_valid_name(g)) {
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
            guardrails::validate_policy(&m.guardrails)
                .map_err(|(f, msg)| field_err(format!("models[{i}].guardrails.{f}"), msg))?;
            if let Some(sl) = &m.slurm {
                sl.validate()
                    .map_err(|(f, msg)| field_err(format!("models[{i}].slurm.{f}"), msg))?;
            } else if m.backends.is_empty() {
                return Err(field_err(
                    format!("models[{i}].backends"),
                    format!(
                        "model `{}` needs at least one backend (or `[models.slurm]`)",
                        m.name
                    ),
                ));
            }
            let mut backend_names = std::collections::HashSet::new();
            for (j, b) in m.backends.iter().enumerate() {
                let at = format!("models[{i}].backends[{j}]");
                match &b.discover {
                    Some(d) => {
                        if !b.url.is_empty() {
                            return Err(field_err(
                                format!("{at}.url"),
                                "give either `url` or `discover`, not both",
                            ));
                        }
                        if b.name.is_some() {
                            return Err(field_err(
                                format!("{at}.name"),
                                "a `discover` entry makes one backend per address, each named by it",
                            ));
                        }
                        sections::parse_discover(d)
                            .map_err(|msg| field_err(format!("{at}.discover"), msg))?;
                    }
                    None => validate_backend_url(&b.url)
                        .map_err(|msg| field_err(format!("{at}.url"), msg))?,
                }
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
                if let Err((field, msg)) = b.validate_engine() {
                    return Err(field_err(format!("{at}.{field}"), msg));
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

    #[test]
    fn discover_entries_are_checked() {
        let m = |b: &str| format!("[[models]]\nname = \"a\"\n[[models.backends]]\n{b}\n");
        let c = load(
            &m("discover = \"dns://vllm.ns.svc:8000\"\nmax_in_flight = 8"),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.models[0].backends[0].discover.as_deref(),
            Some("dns://vllm.ns.svc:8000")
        );
        assert_eq!(c.routing.discover_interval_ms, 5000);
        for (bad, field) in [
            ("discover = \"vllm:8000\"", "discover"),
            ("discover = \"dns://vllm\"", "discover"),
            ("discover = \"dns://vllm:http\"", "discover"),
            (
                "discover = \"dns://vllm:8000\"\nurl = \"http://x:1\"",
                "url",
            ),
            ("discover = \"dns://vllm:8000\"\nname = \"gpu\"", "name"),
            ("max_in_flight = 8", "url"),
        ] {
            let e = load(&m(bad), &[]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("models[0].backends[0].{field}")),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            sections::parse_discover("dns://[::1]:9000").unwrap(),
            ("::1".to_owned(), 9000)
        );
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
