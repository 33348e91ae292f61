//! Default values of config fields, one function each (serde's `default = "..."` needs a
//! path), so a default is written once and the docs can point at it.

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

pub fn pool_idle_timeout_ms() -> u64 {
    60_000
}

pub fn cluster_prefix() -> String {
    "fairgate".into()
}

pub fn heartbeat_ms() -> u64 {
    1_000
}

/// Three heartbeats: a replica killed with `-9` is reclaimed within 3–4 s.
pub fn member_ttl_ms() -> u64 {
    3_000
}

pub fn lease_interval_ms() -> u64 {
    100
}

pub fn redis_timeout_ms() -> u64 {
    200
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

pub fn discover_interval_ms() -> u64 {
    5_000
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
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
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
