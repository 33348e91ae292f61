//! Simulator configuration: the served model, engine capacity, the latency model and fault rates.
//!
//! All fields are public so callers (the CLI, `fairgate demo`, tests) can use struct-update
//! syntax on top of [`SimConfig::default`] or [`SimConfig::instant`].

use std::time::Duration;

/// Everything that shapes one simulated vLLM instance.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Served model name (`--served-model-name`); requests naming another model get 404.
    pub model: String,
    /// Running batch size limit (vLLM `--max-num-seqs`).
    pub max_num_seqs: usize,
    /// KV-cache capacity in tokens. A running request reserves prompt + max output tokens.
    pub kv_cache_tokens: u64,
    /// Prefix-cache block size in tokens (vLLM `--block-size`).
    pub block_size: u64,
    /// Longest prompt + max_tokens a request may ask for; beyond it the request gets 400.
    pub max_model_len: u64,
    /// Fixed cost of a prefill.
    pub prefill_overhead: Duration,
    /// Cost per prompt token that is not served from the prefix cache.
    pub prefill_per_token: Duration,
    /// One decode step with a batch of one.
    pub decode_step_base: Duration,
    /// Added to a decode step per running sequence, so steps slow down as the batch grows.
    pub decode_step_per_seq: Duration,
    /// Output length when a request gives no `max_tokens` / `max_completion_tokens`.
    pub default_max_tokens: u64,
    /// Seed for output text, embeddings and fault sampling.
    pub seed: u64,
    /// Fraction of requests answered with a simulated HTTP 500 before any byte.
    pub error_rate: f64,
    /// Fraction of requests that never answer (until the client disconnects).
    pub hang_rate: f64,
    /// Extra delay before the first byte of every inference response.
    pub slow_start: Duration,
    /// `/health` answers 503 until this much time has passed since [`crate::Simulator::new`].
    pub startup_delay: Duration,
    /// Length of the vectors `/v1/embeddings` returns.
    pub embedding_dim: usize,
}

impl Default for SimConfig {
    /// A rough 8B-model-on-one-H100 profile (see llm-d-inference-sim's latency docs).
    fn default() -> Self {
        Self {
            model: "sim-model".to_owned(),
            max_num_seqs: 16,
            kv_cache_tokens: 65_536,
            block_size: 16,
            max_model_len: 8192,
            prefill_overhead: Duration::from_millis(20),
            prefill_per_token: Duration::from_micros(100),
            decode_step_base: Duration::from_millis(10),
            decode_step_per_seq: Duration::from_micros(250),
            default_max_tokens: 64,
            seed: 0,
            error_rate: 0.0,
            hang_rate: 0.0,
            slow_start: Duration::ZERO,
            startup_delay: Duration::ZERO,
            embedding_dim: 64,
        }
    }
}

impl SimConfig {
    /// Zero latencies and a large capacity: requests are answered directly, without the engine
    /// step loop. Used by tests and as the "direct" baseline of the gateway overhead benchmark.
    pub fn instant(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            max_num_seqs: 4096,
            // Never a constraint (the fast path does not wait for KV), yet it bounds the
            // prefix cache to about 1M blocks so a long benchmark cannot grow it without limit.
            kv_cache_tokens: 1 << 24,
            prefill_overhead: Duration::ZERO,
            prefill_per_token: Duration::ZERO,
            decode_step_base: Duration::ZERO,
            decode_step_per_seq: Duration::ZERO,
            ..Self::default()
        }
    }

    /// True when every engine latency is zero, which selects the fast path.
    pub fn is_instant(&self) -> bool {
        self.prefill_overhead.is_zero()
            && self.prefill_per_token.is_zero()
            && self.decode_step_base.is_zero()
            && self.decode_step_per_seq.is_zero()
    }

    /// Batch limit actually used: at least one, or nothing could ever run.
    pub(crate) fn effective_max_num_seqs(&self) -> usize {
        self.max_num_seqs.max(1)
    }

    /// Block size actually used: at least one token, so block arithmetic never divides by 0.
    pub(crate) fn effective_block_size(&self) -> u64 {
        self.block_size.max(1)
    }

    /// Number of KV blocks, reported as `num_gpu_blocks` and used as the prefix-cache bound.
    pub(crate) fn num_blocks(&self) -> u64 {
        self.kv_cache_tokens / self.effective_block_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_not_instant_and_instant_is() {
        assert!(!SimConfig::default().is_instant());
        let c = SimConfig::instant("m");
        assert!(c.is_instant());
        assert_eq!(c.model, "m");
        assert!(c.max_num_seqs >= 1024);
    }

    #[test]
    fn zero_limits_are_clamped() {
        let c = SimConfig {
            max_num_seqs: 0,
            block_size: 0,
            ..SimConfig::default()
        };
        assert_eq!(c.effective_max_num_seqs(), 1);
        assert_eq!(c.effective_block_size(), 1);
        assert_eq!(c.num_blocks(), c.kv_cache_tokens);
    }
}
