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

/// A tenant: the unit of fair share, budgets and accounting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    /// Relative share of contended capacity; at least 1.
    pub weight: u32,
    /// Optional group (for example a department) for two-level fair share.
    pub group: Option<String>,
    pub created_at: UnixMillis,
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
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Upstream => "upstream",
            UsageSource::Counted => "counted",
            UsageSource::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "upstream" => UsageSource::Upstream,
            "counted" => UsageSource::Counted,
            "none" => UsageSource::None,
            _ => return None,
        })
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
