//! Simulator configuration: the served model, engine capacity, the latency model and fault rates.
//!
//! All fields are public so callers (the CLI, `fairgate demo`, tests) can use struct-update
//! syntax on top of [`SimConfig::default`] or [`SimConfig::instant`].

use std::time::Duration;

/// vLLM's `--scheduling-policy`: the order of the waiting queue and the choice of the request
/// to preempt when the KV cache runs out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SchedulingPolicy {
    /// Waiting queue in arrival order; a preempted request goes back to its front; the
    /// last-admitted running request is preempted. Requests with a non-zero `priority` are
    /// rejected (400), as in vLLM.
    #[default]
    Fcfs,
    /// Waiting queue ordered by `(priority, arrival)`, lower value first; the running request
    /// with the largest `(priority, arrival)` is preempted.
    Priority,
}

impl SchedulingPolicy {
    /// The flag value, as vLLM spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulingPolicy::Fcfs => "fcfs",
            SchedulingPolicy::Priority => "priority",
        }
    }
}

impl std::fmt::Display for SchedulingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SchedulingPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fcfs" => Ok(SchedulingPolicy::Fcfs),
            "priority" => Ok(SchedulingPolicy::Priority),
            other => Err(format!(
                "unknown scheduling policy `{other}` (expected `fcfs` or `priority`)"
            )),
        }
    }
}

/// Everything that shapes one simulated vLLM instance.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Served model name (`--served-model-name`); requests naming another model (and no LoRA
    /// adapter) get 404.
    pub model: String,
    /// LoRA adapter names served on top of the base model (vLLM `--enable-lora
    /// --lora-modules name=path ...`; here the name is also the adapter's "path", its `root` in
    /// `/v1/models`). A request whose `model` is one of them is served, and its response echoes
    /// the adapter name. A name equal to [`SimConfig::model`] means the base model. Empty: LoRA
    /// is off.
    pub lora_modules: Vec<String>,
    /// Distinct adapters that may be in the running batch at once (vLLM `--max-loras`, default
    /// 1); a request for another adapter waits. Also the number of adapter slots kept loaded
    /// (least recently used slot evicted). Only meaningful with [`SimConfig::lora_modules`];
    /// 0 is treated as 1. The fast path ([`SimConfig::is_instant`]) does not enforce it.
    pub max_loras: usize,
    /// Added to an engine step once for each adapter that step loads into a slot (an adapter
    /// scheduled while not among the `max_loras` most recently used ones). Ignored by the fast
    /// path.
    pub lora_load: Duration,
    /// Running batch size limit (vLLM `--max-num-seqs`).
    pub max_num_seqs: usize,
    /// KV-cache capacity in tokens: `kv_cache_tokens / block_size` blocks. A running request
    /// holds the blocks of its prompt and the tokens it has generated so far, one more block
    /// whenever it crosses a block boundary (running out of blocks preempts a request).
    pub kv_cache_tokens: u64,
    /// KV and prefix-cache block size in tokens (vLLM `--block-size`).
    pub block_size: u64,
    /// vLLM's `--scheduling-policy` (default `fcfs`).
    pub scheduling_policy: SchedulingPolicy,
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
    /// vLLM's `--api-key`: when set, every `/v1/*` request needs `Authorization: Bearer
    /// <key>` or gets 401 `{"error":"Unauthorized"}`; `/health`, `/metrics` and the rest stay
    /// open, as in vLLM.
    pub api_key: Option<String>,
    /// Paced fast path: when non-zero (and the config [`SimConfig::is_instant`]), each sequence
    /// emits one token every `token_interval`, its first after a random delay in
    /// `[0, token_interval)` (its own phase, drawn from `seed`), so token times are spread
    /// across sequences as over a fleet of many replicas rather than in lock-step batches.
    /// Zero (the default): tokens come as fast as they are read. Ignored by the engine path.
    pub token_interval: Duration,
}

impl Default for SimConfig {
    /// A rough 8B-model-on-one-H100 profile (see llm-d-inference-sim's latency docs).
    fn default() -> Self {
        Self {
            model: "sim-model".to_owned(),
            lora_modules: Vec::new(),
            max_loras: 1,
            lora_load: Duration::from_millis(5),
            max_num_seqs: 16,
            kv_cache_tokens: 65_536,
            block_size: 16,
            scheduling_policy: SchedulingPolicy::Fcfs,
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
            api_key: None,
            token_interval: Duration::ZERO,
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
            lora_load: Duration::ZERO,
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

    /// Adapter limit actually used: at least one, as vLLM requires.
    pub(crate) fn effective_max_loras(&self) -> usize {
        self.max_loras.max(1)
    }

    /// Index in [`SimConfig::lora_modules`] of the adapter `model` names; `None` for the base
    /// model (which wins over an adapter of the same name) and for unknown names.
    pub(crate) fn lora_index(&self, model: &str) -> Option<usize> {
        if model == self.model {
            return None;
        }
        self.lora_modules.iter().position(|m| m == model)
    }

    /// The model name a request for adapter `lora` (or the base model) is answered under.
    pub(crate) fn served_name(&self, lora: Option<usize>) -> &str {
        lora.and_then(|i| self.lora_modules.get(i))
            .unwrap_or(&self.model)
    }

    /// Block size actually used: at least one token, so block arithmetic never divides by 0.
    pub(crate) fn effective_block_size(&self) -> u64 {
        self.block_size.max(1)
    }

    /// Number of KV blocks, reported as `num_gpu_blocks` and used as the prefix-cache bound.
    pub(crate) fn num_blocks(&self) -> u64 {
        self.kv_cache_tokens / self.effective_block_size()
    }

    /// Blocks that hold `tokens` tokens of KV.
    pub(crate) fn blocks_for(&self, tokens: u64) -> u64 {
        tokens.div_ceil(self.effective_block_size())
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
        assert_eq!(
            SimConfig {
                max_loras: 0,
                ..SimConfig::default()
            }
            .effective_max_loras(),
            1
        );
    }

    #[test]
    fn scheduling_policy_parses_vllm_names() {
        assert_eq!(
            SimConfig::default().scheduling_policy,
            SchedulingPolicy::Fcfs
        );
        for p in [SchedulingPolicy::Fcfs, SchedulingPolicy::Priority] {
            assert_eq!(p.as_str().parse::<SchedulingPolicy>(), Ok(p));
        }
        assert!("lifo".parse::<SchedulingPolicy>().is_err());
    }

    #[test]
    fn lora_names_resolve_and_the_base_model_wins() {
        let c = SimConfig {
            lora_modules: vec!["a".into(), "m".into(), "b".into()],
            ..SimConfig::instant("m")
        };
        assert_eq!(SimConfig::default().max_loras, 1);
        assert!(SimConfig::default().lora_modules.is_empty());
        assert_eq!(c.lora_index("a"), Some(0));
        assert_eq!(c.lora_index("b"), Some(2));
        assert_eq!(c.lora_index("m"), None);
        assert_eq!(c.lora_index("zz"), None);
        assert_eq!(c.served_name(Some(2)), "b");
        assert_eq!(c.served_name(None), "m");
    }
}
