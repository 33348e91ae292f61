//! Newtypes and plain records shared by every crate: ids, token counts, tenants, keys and ledger rows.
//!
//! Nothing here does IO. Records are what the store persists and what the admin API returns,
//! so their serde field names are part of the external contract.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

string_id!(
    /// Public id of an API key; the part of the key string that is safe to log and to look up by.
    KeyId
);
string_id!(
    /// One request's id (UUIDv7, so ids sort by time); returned to clients as `x-request-id`.
    RequestId
);

impl RequestId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

/// Milliseconds since the Unix epoch. All stored times use this, so SQLite and Postgres agree.
pub type UnixMillis = i64;

pub fn now_millis() -> UnixMillis {
    chrono::Utc::now().timestamp_millis()
}

/// The one rule for tenant and group names, wherever they are written (config file, admin
/// API, portal): 1-64 characters from `A-Z a-z 0-9 - _ . @`. Names end up in URLs, metric
/// labels and CSV exports, so nothing else is allowed.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// What [`is_valid_name`] asks for, worded for an error message.
pub const NAME_RULE: &str = "use 1-64 characters from A-Z a-z 0-9 - _ . @";

/// A name that broke [`is_valid_name`]; says which kind of name and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidName {
    pub kind: &'static str,
    pub name: String,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}` is invalid: {NAME_RULE}", self.kind, self.name)
    }
}

impl std::error::Error for InvalidName {}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            /// Checks `raw` against the name rule.
            pub fn parse(raw: &str) -> Result<$ty, InvalidName> {
                if is_valid_name(raw) {
                    Ok($ty(raw.to_owned()))
                } else {
                    Err(InvalidName {
                        kind: $kind,
                        name: raw.to_owned(),
                    })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                $ty::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A tenant's name, checked against the one name rule.
    TenantName,
    "tenant name"
);
name_type!(
    /// A group's name, checked against the one name rule.
    GroupName,
    "group"
);

/// A fair-share weight: a tenant's or group's share is proportional to it. Bounded so the
/// weighted counters stay far from overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Weight(u32);

impl Weight {
    /// The smallest weight.
    pub const MIN: u32 = 1;
    /// The largest weight.
    pub const MAX: u32 = 1_000_000;

    /// `Err` says the bounds.
    pub fn new(w: u32) -> Result<Weight, String> {
        if (Self::MIN..=Self::MAX).contains(&w) {
            Ok(Weight(w))
        } else {
            Err(format!(
                "weight must be between {} and {}, got {w}",
                Self::MIN,
                Self::MAX
            ))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Weight {
    type Error = String;
    fn try_from(w: u32) -> Result<Weight, String> {
        Weight::new(w)
    }
}

impl From<Weight> for u32 {
    fn from(w: Weight) -> u32 {
        w.0
    }
}

/// A secret (a token, a password, a backend's API key): its `Debug` never shows it, and
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

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A tenant: the unit of fair share, budgets and accounting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    /// Relative share of contended capacity; at least 1.
    pub weight: u32,
    /// Optional group (for example a department) for two-level fair share.
    pub group: Option<String>,
    pub created_at: UnixMillis,
    /// Limits, budgets and queueing settings; the default is "no limits, gateway defaults".
    #[serde(default)]
    pub policy: TenantPolicy,
}

/// An API key as stored: never the secret itself, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: KeyId,
    pub tenant: String,
    /// The user the key belongs to, if any; ledger rows carry it.
    pub user: Option<String>,
    pub name: String,
    /// Models this key may use; `None` means every model.
    pub models: Option<Vec<String>>,
    /// Hex SHA-256 of the secret part of the key.
    #[serde(skip_serializing)]
    pub secret_hash: String,
    pub expires_at: Option<UnixMillis>,
    pub enabled: bool,
    pub created_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
    /// Per-key limits, budgets and default priority class.
    #[serde(default)]
    pub policy: KeyPolicy,
}

/// How a request ended, one per ledger row. Stored as its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered and the client received the whole answer.
    Ok,
    /// The client went away before the answer was complete.
    Cancelled,
    /// The upstream failed (refused, timed out, 5xx, broken stream).
    UpstreamError,
    /// The upstream answered with a 4xx that was relayed to the client.
    UpstreamRejected,
    /// The gateway refused the request (bad input, scope, capacity, limits).
    Rejected,
    /// The gateway ended an answer early because a hard budget ran out mid-stream.
    CutOff,
    /// Authentication failed (unknown, revoked, expired or disabled key).
    AuthFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Cancelled => "cancelled",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamRejected => "upstream_rejected",
            Outcome::Rejected => "rejected",
            Outcome::CutOff => "cut_off",
            Outcome::AuthFailed => "auth_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => Outcome::Ok,
            "cancelled" => Outcome::Cancelled,
            "upstream_error" => Outcome::UpstreamError,
            "upstream_rejected" => Outcome::UpstreamRejected,
            "rejected" => Outcome::Rejected,
            "cut_off" => Outcome::CutOff,
            "auth_failed" => Outcome::AuthFailed,
            _ => return None,
        })
    }
}

/// Where a row's token counts came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The upstream reported usage (response body or final stream chunk).
    Upstream,
    /// No usage from upstream: completion tokens counted from stream chunks, prompt estimated.
    Counted,
    /// Nothing reached the upstream or nothing came back: the gateway's estimate or zero.
    None,
    /// The upstream worked on the request but reported nothing (a non-stream request the
    /// client cancelled): the prompt is the gateway's estimate, charged so that GPU time spent
    /// is never free.
    Estimated,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Upstream => "upstream",
            UsageSource::Counted => "counted",
            UsageSource::None => "none",
            UsageSource::Estimated => "estimated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "upstream" => UsageSource::Upstream,
            "counted" => UsageSource::Counted,
            "none" => UsageSource::None,
            "estimated" => UsageSource::Estimated,
            _ => return None,
        })
    }
}

/// What a request's `units` count: tokens for text surfaces, and each other surface's own
/// measure (OpenAI prices images per image, transcription per second of audio, speech per
/// character; an MCP tool call is one call).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    #[default]
    Tokens,
    Images,
    AudioSeconds,
    Characters,
    Calls,
}

impl Unit {
    pub const ALL: [Unit; 5] = [
        Unit::Tokens,
        Unit::Images,
        Unit::AudioSeconds,
        Unit::Characters,
        Unit::Calls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Tokens => "tokens",
            Unit::Images => "images",
            Unit::AudioSeconds => "audio_seconds",
            Unit::Characters => "characters",
            Unit::Calls => "calls",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Unit::ALL.into_iter().find(|u| u.as_str() == s)
    }
}

/// Token usage of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens served from the backend's prefix cache, when it says so.
    pub cached_tokens: u64,
}

/// One row of the ledger: exactly one per request that reached the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    pub id: RequestId,
    /// When the request arrived.
    pub ts: UnixMillis,
    pub tenant: Option<String>,
    pub user: Option<String>,
    pub key_id: Option<KeyId>,
    pub model: Option<String>,
    /// Base URL of the backend that served it, if one was chosen.
    pub backend: Option<String>,
    /// Request path, for example `/v1/chat/completions`.
    pub endpoint: String,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// Tokens reserved at admission (estimate); kept to audit estimate quality.
    pub reserved_tokens: u64,
    pub usage_source: UsageSource,
    /// HTTP status the client received (0 when the client left before any status was sent).
    pub status: u16,
    pub outcome: Outcome,
    /// Low-cardinality error class (`invalid_json`, `upstream_timeout`, ...) when not ok.
    pub error_class: Option<String>,
    pub queue_ms: u64,
    pub ttft_ms: Option<u64>,
    pub duration_ms: u64,
    /// Price of the tokens served, from the model's prices at the time (0 without prices).
    #[serde(default)]
    pub cost: Micros,
    /// Answered from the response cache: no backend work, not charged to fair share.
    #[serde(default)]
    pub cache_hit: bool,
    /// Priority class the request was admitted under.
    #[serde(default)]
    pub priority: Priority,
    /// Upstream attempts: 0 when no backend was called, more than 1 when it failed over.
    #[serde(default)]
    pub attempts: u32,
    /// What `units` counts (tokens unless the surface has its own unit).
    #[serde(default)]
    pub unit: Unit,
    /// The request's amount in its unit: images made, seconds of audio transcribed,
    /// characters spoken, tool calls. For token surfaces, prompt plus completion tokens.
    #[serde(default)]
    pub units: u64,
}

impl LedgerRow {
    /// A row for a request that has just arrived: nothing known yet, and `cancelled` until
    /// something better is recorded (a request that vanishes without a word was cancelled).
    pub fn new(id: RequestId, ts: UnixMillis, endpoint: String) -> LedgerRow {
        LedgerRow {
            id,
            ts,
            tenant: None,
            user: None,
            key_id: None,
            model: None,
            backend: None,
            endpoint,
            stream: false,
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: 0,
            reserved_tokens: 0,
            usage_source: UsageSource::None,
            status: 0,
            outcome: Outcome::Cancelled,
            error_class: None,
            queue_ms: 0,
            ttft_ms: None,
            duration_ms: 0,
            cost: Micros(0),
            cache_hit: false,
            priority: Priority::Interactive,
            attempts: 0,
            unit: Unit::Tokens,
            units: 0,
        }
    }
}

/// Per-tenant, per-model token sums, as returned by `GET /admin/v1/usage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub tenant: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub total_tokens: u64,
}

/// A Slurm job that serves a model (one backend, named `slurm-<jobid>`), as the SU (service
/// unit) report accounts for it. Stored in `slurm_jobs`, one row per job, written again at every
/// change of state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmJobRow {
    pub job_id: String,
    pub model: String,
    /// The job's backend name, as ledger rows it served carry it: `slurm-<jobid>`.
    pub backend: String,
    /// The job's hostnames, comma-separated.
    pub nodes: String,
    /// All the job's GPUs: nodes × GPUs per node.
    pub gpus: u64,
    /// For example `a100`.
    pub gpu_type: Option<String>,
    /// The charge in micro-SUs per GPU-hour (108.6 SU is 108 600 000; see [`micro_sus`]):
    /// integers, like money, so sums stay exact.
    pub su_per_gpu_hour_micros: u64,
    pub submitted_at: UnixMillis,
    /// When it began to run; `None` while pending (and for a job that never ran).
    pub started_at: Option<UnixMillis>,
    /// When it stopped; `None` while pending or running.
    pub ended_at: Option<UnixMillis>,
    /// Slurm's state: `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, ...
    pub state: String,
    /// Why it ended or failed.
    pub reason: Option<String>,
}

/// SUs as micro-SUs, rounded to the nearest (`108.6` → `108_600_000`); negative or not a
/// number → 0.
pub fn micro_sus(sus: f64) -> u64 {
    let v = (sus * 1e6).round();
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v as u64
    }
}

/// The tenant an SU report charges a job-day to when nobody sent the job a token that day:
/// the allocation was paid for but unused. Parentheses are not allowed in tenant names, so it
/// cannot be one.
pub const IDLE_TENANT: &str = "(idle)";

/// One line of the SU report: a tenant's part of one Slurm job on one UTC day.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuLine {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// The tenant, or [`IDLE_TENANT`].
    pub tenant: String,
    pub model: String,
    pub job_id: String,
    /// The tenant's share of the job's GPU-hours that day.
    pub gpu_hours: f64,
    /// The tenant's share of the job's SUs that day.
    pub sus: f64,
    /// Prompt plus completion tokens the job served the tenant that day.
    pub tokens: u64,
    /// `tokens` over all the job's tokens that day (1 for the idle line).
    pub share: f64,
}

/// An SU report's sums per tenant ([`IDLE_TENANT`] included).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuTotal {
    pub tenant: String,
    pub gpu_hours: f64,
    pub sus: f64,
}

/// Sums of `lines` per tenant, ordered by tenant (byte order).
pub fn su_totals(lines: &[SuLine]) -> Vec<SuTotal> {
    let mut by: std::collections::BTreeMap<&str, (f64, f64)> = std::collections::BTreeMap::new();
    for l in lines {
        let e = by.entry(l.tenant.as_str()).or_default();
        e.0 += l.gpu_hours;
        e.1 += l.sus;
    }
    by.into_iter()
        .map(|(tenant, (gpu_hours, sus))| SuTotal {
            tenant: tenant.to_owned(),
            gpu_hours,
            sus,
        })
        .collect()
}

/// The UTC date of `ms` as `YYYY-MM-DD` (empty beyond chrono's range, ±262 000 years).
pub fn utc_day(ms: UnixMillis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Money as integer micro-units of the operator's currency (1 USD = 1 000 000 micros).
/// Integers only: sums over millions of requests must add up exactly.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micros(pub u64);

/// Per-model prices: tokens in micros per million, and the other surfaces' units (OpenAI
/// prices images per image, transcription per minute of audio, speech per million characters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input_per_mtok: u64,
    #[serde(default)]
    pub output_per_mtok: u64,
    /// Micros per image made (`/v1/images/*`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_image: u64,
    /// Micros per minute of audio transcribed or translated, charged by the second.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_audio_minute: u64,
    /// Micros per million characters spoken (`/v1/audio/speech`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_mchar: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Price {
    /// Per-token prices only.
    pub const fn tokens(input_per_mtok: u64, output_per_mtok: u64) -> Price {
        Price {
            input_per_mtok,
            output_per_mtok,
            per_image: 0,
            per_audio_minute: 0,
            per_mchar: 0,
        }
    }

    /// Cost of one request, rounded up to a whole micro (never undercharges).
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> Micros {
        let n = prompt_tokens as u128 * self.input_per_mtok as u128
            + completion_tokens as u128 * self.output_per_mtok as u128;
        Micros(n.div_ceil(1_000_000).min(u64::MAX as u128) as u64)
    }

    /// Cost of a request's amount in a non-token unit, rounded up (tokens and calls: 0; they
    /// are priced by [`Price::cost`] or not at all).
    pub fn unit_cost(&self, unit: Unit, units: u64) -> Micros {
        let units = units as u128;
        let n = match unit {
            Unit::Images => units * self.per_image as u128,
            Unit::AudioSeconds => (units * self.per_audio_minute as u128).div_ceil(60),
            Unit::Characters => (units * self.per_mchar as u128).div_ceil(1_000_000),
            Unit::Tokens | Unit::Calls => 0,
        };
        Micros(n.min(u64::MAX as u128) as u64)
    }
}

/// What one unit of a non-token surface weighs in tokens, for fair share, rate limits and the
/// token side of budgets: so an image, a minute of audio or a spoken paragraph queues and is
/// charged beside text on the same model's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnitTokens {
    /// Tokens per image made.
    pub image: u64,
    /// Tokens per second of audio (Whisper's encoder reads 1500 frames per 30 s).
    pub audio_second: u64,
    /// Characters spoken per token.
    pub characters_per_token: u64,
}

impl Default for UnitTokens {
    fn default() -> Self {
        UnitTokens {
            image: 1000,
            audio_second: 50,
            characters_per_token: 4,
        }
    }
}

impl UnitTokens {
    /// The token weight of `units` of `unit` (0 for tokens themselves and for calls).
    pub fn tokens(&self, unit: Unit, units: u64) -> u64 {
        match unit {
            Unit::Images => units.saturating_mul(self.image),
            Unit::AudioSeconds => units.saturating_mul(self.audio_second),
            Unit::Characters => units.div_ceil(self.characters_per_token.max(1)),
            Unit::Tokens | Unit::Calls => 0,
        }
    }
}

/// Priority class inside a tenant: `interactive` requests of a tenant go before its `batch`
/// requests, but never ahead of other tenants' turns.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    #[default]
    Interactive,
    Batch,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::Interactive, Priority::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "interactive" => Some(Priority::Interactive),
            "batch" => Some(Priority::Batch),
            _ => None,
        }
    }

    /// Queue index: lower is served first.
    pub fn rank(self) -> usize {
        self as usize
    }
}

/// Rate and concurrency limits; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests past the rate limits at once: waiting for a fair-share slot or running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

impl RateLimits {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_concurrent.is_none()
    }
}

/// The period a budget covers; periods start at 00:00 UTC (day) or on the 1st (month).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    Month,
}

impl BudgetPeriod {
    /// The period's name as the config, the API and messages spell it: `day`, `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }
}

/// A spending cap over a period, in tokens, money, or both (whichever runs out first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub period: BudgetPeriod,
    /// Prompt + completion tokens allowed per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Money allowed per period, in micros, priced with the models' prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Micros>,
}

/// What to do with a request over its rate limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Wait for the bucket to refill, within the request's wait budget (default).
    #[default]
    Queue,
    /// Refuse at once with 429 and `Retry-After`.
    Reject,
}

/// A tenant's admission settings. Every field is optional: absent means the gateway default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicy {
    #[serde(default, skip_serializing_if = "RateLimits::is_empty")]
    pub limits: RateLimits,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
    /// Most requests this tenant may have queued per model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
    /// Longest a request may wait for admission, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_limit: Option<OnLimit>,
    /// Cut streams off when a budget runs out mid-answer (otherwise the answer completes and
    /// the overrun is charged).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hard_cap: bool,
    /// Per model, the models to fall back to when it has no healthy backend, overriding the
    /// model's own `fallbacks` (an empty list: never fall back for this tenant).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fallbacks: std::collections::BTreeMap<String, Vec<String>>,
    /// What to do with PII and prompt-injection findings in this tenant's prompts (over the
    /// model's and the gateway's defaults; a key's own policy goes over this).
    #[serde(default, skip_serializing_if = "GuardrailPolicy::is_empty")]
    pub guardrails: GuardrailPolicy,
    /// MCP servers (`[[mcp.servers]]`) this tenant may use, each with the tools it may call
    /// (`"*"`: every tool of the server). A server with no entry is refused.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub mcp: std::collections::BTreeMap<String, Vec<String>>,
}

/// What a guardrail does with its findings: `off`, `log`, `redact`, `block`.
pub use fairgate_guard::PolicyMode as GuardMode;

/// Guardrail modes for one scope (gateway, model, tenant or key): `None` leaves the decision to
/// the scope below (key → tenant → model → gateway).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailPolicy {
    /// E-mail, phone, card, IBAN, SSN, IP and configured patterns: `off`, `log`, `redact`
    /// (replaced before the backend sees them) or `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<GuardMode>,
    /// Prompt-injection heuristics on user messages: `off`, `log` or `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection: Option<GuardMode>,
    /// PII in completions (streamed or not): `off`, `log` or `block` (text already sent cannot
    /// be redacted, so `redact` is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<GuardMode>,
    /// The external guardrail hook (`[guardrails.external]`) on prompts: `off`, `log` (ask,
    /// count a `block` verdict, pass) or `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<GuardMode>,
}

impl GuardrailPolicy {
    pub fn is_empty(&self) -> bool {
        self.pii.is_none()
            && self.injection.is_none()
            && self.output.is_none()
            && self.external.is_none()
    }

    /// This scope's choices, falling back to `below`'s where this one has none.
    pub fn over(self, below: GuardrailPolicy) -> GuardrailPolicy {
        GuardrailPolicy {
            pii: self.pii.or(below.pii),
            injection: self.injection.or(below.injection),
            output: self.output.or(below.output),
            external: self.external.or(below.external),
        }
    }
}

/// A key's own settings, applied on top of its tenant's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicy {
    #[serde(default, skip_serializing_if = "RateLimits::is_empty")]
    pub limits: RateLimits,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
    /// Priority class for this key's requests unless a request header says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// The key may set vLLM's own `priority` field: its value then reaches engines that run the
    /// priority policy instead of the gateway's fair-share position. Without it the field is
    /// replaced (priority engines) or removed (others), so a client cannot jump the engine's
    /// queue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub engine_priority: bool,
    /// Guardrail modes for this key's requests, over its tenant's.
    #[serde(default, skip_serializing_if = "GuardrailPolicy::is_empty")]
    pub guardrails: GuardrailPolicy,
    /// Narrows the tenant's `mcp` allowlist for this key: only these servers, and of each only
    /// the tools listed here that the tenant may call too. `None`: the tenant's, unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

impl KeyPolicy {
    pub fn is_default(&self) -> bool {
        *self == KeyPolicy::default()
    }
}

/// A group of tenants (a department, a faculty) sharing capacity by group weight first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub weight: u32,
}

/// What a portal account may do. Checked on the server for every page and API.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Their own keys, usage and history.
    #[default]
    User,
    /// Also their tenant's members, keys, limits and budgets (read).
    TenantAdmin,
    /// Everything, including tenants, groups, weights and the audit log.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::TenantAdmin => "tenant_admin",
            Role::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Role::User),
            "tenant_admin" => Some(Role::TenantAdmin),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// A portal account: a person who signs in (local password or OpenID Connect).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// UUIDv7.
    pub id: String,
    /// Lower-cased; unique.
    pub email: String,
    pub name: Option<String>,
    /// PHC string of the password hash (argon2id); `None` for accounts that only use SSO.
    #[serde(skip_serializing, default)]
    pub password_hash: Option<String>,
    pub role: Role,
    /// The tenant the user's keys and usage belong to.
    pub tenant: Option<String>,
    /// `issuer|subject` of the OpenID Connect identity, unique when set.
    pub oidc_subject: Option<String>,
    pub disabled: bool,
    pub created_at: UnixMillis,
}

/// A signed-in browser session. Only the SHA-256 of the cookie value is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Hex SHA-256 of the session cookie value.
    pub id_hash: String,
    pub user_id: String,
    /// Anti-CSRF token embedded in this session's forms.
    pub csrf: String,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// One administrative change: who did what to which object, with before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// UUIDv7.
    pub id: String,
    pub ts: UnixMillis,
    /// `admin-token` for the admin API, else the user's email.
    pub actor: String,
    /// For example `tenant.update`, `key.create`, `group.delete`.
    pub action: String,
    /// The object: `tenant:physics`, `key:k3x9...`.
    pub target: String,
    /// JSON of the object before the change (`None` for creations).
    pub before: Option<String>,
    /// JSON of the object after the change (`None` for deletions).
    pub after: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_priced_and_weighed() {
        let p = Price {
            per_image: 40_000,
            per_audio_minute: 6_000,
            per_mchar: 15_000_000,
            ..Price::tokens(1, 2)
        };
        assert_eq!(p.unit_cost(Unit::Images, 3), Micros(120_000));
        // 61 s at 6000 per minute: 6100, by the second.
        assert_eq!(p.unit_cost(Unit::AudioSeconds, 61), Micros(6_100));
        // Rounded up, never down.
        assert_eq!(p.unit_cost(Unit::AudioSeconds, 1), Micros(100));
        assert_eq!(p.unit_cost(Unit::Characters, 1_000), Micros(15_000));
        assert_eq!(p.unit_cost(Unit::Characters, 1), Micros(15));
        assert_eq!(p.unit_cost(Unit::Tokens, 1_000), Micros(0));
        let w = UnitTokens::default();
        assert_eq!(w.tokens(Unit::Images, 2), 2_000);
        assert_eq!(w.tokens(Unit::AudioSeconds, 30), 1_500);
        assert_eq!(w.tokens(Unit::Characters, 9), 3);
        assert_eq!(w.tokens(Unit::Calls, 9), 0);
        for u in Unit::ALL {
            assert_eq!(Unit::parse(u.as_str()), Some(u));
        }
        // Old price tables (tokens only) still read; unknown fields do not.
        let old: Price =
            serde_json::from_str(r#"{"input_per_mtok":1,"output_per_mtok":2}"#).unwrap();
        assert_eq!(old, Price::tokens(1, 2));
        assert!(serde_json::from_str::<Price>(r#"{"per_imag":1}"#).is_err());
    }

    #[test]
    fn names_follow_one_rule() {
        assert!(TenantName::parse("team-a_1.x@y").is_ok());
        assert_eq!(
            GroupName::parse("bad name").unwrap_err().to_string(),
            "group `bad name` is invalid: use 1-64 characters from A-Z a-z 0-9 - _ . @"
        );
        assert!(TenantName::parse("").is_err());
        assert!(TenantName::parse(&"a".repeat(65)).is_err());
        assert!(TenantName::parse(&"a".repeat(64)).is_ok());
        let t: Result<TenantName, _> = serde_json::from_str("\"no/slash\"");
        assert!(t.is_err());
        let t: TenantName = serde_json::from_str("\"ok\"").unwrap();
        assert_eq!(t.as_str(), "ok");
    }

    #[test]
    fn weights_are_bounded_and_secrets_hidden() {
        assert!(Weight::new(0).is_err());
        assert_eq!(Weight::new(Weight::MAX).unwrap().get(), 1_000_000);
        assert_eq!(
            Weight::new(Weight::MAX + 1).unwrap_err(),
            "weight must be between 1 and 1000000, got 1000001"
        );
        let w: Result<Weight, _> = serde_json::from_str("0");
        assert!(w.is_err());
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn su_helpers() {
        assert_eq!(micro_sus(108.6), 108_600_000);
        assert_eq!(micro_sus(0.000_000_4), 0);
        assert_eq!(micro_sus(-1.0), 0);
        assert_eq!(micro_sus(f64::NAN), 0);
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(86_400_000 * 365 - 1), "1970-12-31");
        let line = |tenant: &str, gpu_hours: f64, sus: f64| SuLine {
            day: "2025-01-01".into(),
            tenant: tenant.into(),
            model: "m".into(),
            job_id: "1".into(),
            gpu_hours,
            sus,
            tokens: 0,
            share: 1.0,
        };
        let totals = su_totals(&[
            line("b", 1.0, 2.0),
            line(IDLE_TENANT, 4.0, 8.0),
            line("b", 0.5, 1.0),
        ]);
        assert_eq!(
            totals,
            vec![
                SuTotal {
                    tenant: IDLE_TENANT.into(),
                    gpu_hours: 4.0,
                    sus: 8.0
                },
                SuTotal {
                    tenant: "b".into(),
                    gpu_hours: 1.5,
                    sus: 3.0
                },
            ]
        );
        assert!(!is_valid_name(IDLE_TENANT));
    }

    #[test]
    fn budget_periods_are_spelled_once() {
        assert_eq!(BudgetPeriod::Day.as_str(), "day");
        assert_eq!(BudgetPeriod::Month.as_str(), "month");
    }
}
