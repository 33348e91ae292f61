//! vLLM's Prometheus metrics under their exact names, in a per-simulator registry (several
//! simulators share one process in tests and `fairgate demo`, so the global registry is no use).
//!
//! Every series carries `model_name="<model>"` and `engine="0"`. Load gauges are read from
//! atomics at scrape time. `vllm:num_preemptions_total` stays 0: the engine reserves a request's
//! whole KV need at admission, so it never has to preempt.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::config::SimConfig;

/// Why a request finished, as the `finished_reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Hit a stop condition (used for embeddings, which finish after their single step).
    Stop,
    /// Produced `max_tokens` tokens.
    Length,
    /// Client disconnected, or an `abort-after` fault cut the stream.
    Abort,
}

/// vLLM's TTFT buckets (seconds).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's inter-token latency buckets (seconds).
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's request latency buckets (seconds), used for e2e and queue time.
const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// 1-2-5 buckets up to `max` (vLLM's `build_1_2_5_buckets` for token-count histograms).
fn buckets_1_2_5(max: u64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut exp = 1u64;
    'outer: loop {
        for m in [1u64, 2, 5] {
            let v = m.saturating_mul(exp);
            if v > max {
                break 'outer;
            }
            out.push(v as f64);
        }
        match exp.checked_mul(10) {
            Some(e) => exp = e,
            None => break,
        }
    }
    if out.is_empty() {
        out.push(1.0);
    }
    out
}

/// Load numbers shared between the request path and the engine; gauges read them at scrape.
#[derive(Debug, Default)]
pub struct Load {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_tokens_used: AtomicU64,
}

/// All metric handles of one simulator.
pub struct Metrics {
    registry: Registry,
    kv_capacity: u64,
    pub load: Load,
    running: IntGauge,
    waiting: IntGauge,
    kv_usage: Gauge,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    success_stop: IntCounter,
    success_length: IntCounter,
    success_abort: IntCounter,
    pub prefix_queries: IntCounter,
    pub prefix_hits: IntCounter,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue_time: Histogram,
    pub request_prompt_tokens: Histogram,
    pub request_generation_tokens: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Builds and registers every metric for `cfg`.
    pub fn new(cfg: &SimConfig) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let model = cfg.model.as_str();
        let opts = |name: &str, help: &str| {
            Opts::new(name, help)
                .const_label("model_name", model)
                .const_label("engine", "0")
        };
        let hist = |name: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, _> {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .const_label("model_name", model)
                    .const_label("engine", "0")
                    .buckets(buckets),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let int_gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::with_opts(opts(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::with_opts(opts(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };

        let running = int_gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
        )?;
        let waiting = int_gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
        )?;
        let kv_usage = Gauge::with_opts(opts(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
        ))?;
        registry.register(Box::new(kv_usage.clone()))?;

        // vLLM exports every cache-config field as a label of an info gauge with value 1.
        let cache_info = Gauge::with_opts(
            opts(
                "vllm:cache_config_info",
                "Information of the LLMEngine CacheConfig",
            )
            .const_label("block_size", cfg.effective_block_size().to_string())
            .const_label("num_gpu_blocks", cfg.num_blocks().to_string())
            .const_label("num_cpu_blocks", "0")
            .const_label("cache_dtype", "auto")
            .const_label("enable_prefix_caching", "True")
            .const_label("gpu_memory_utilization", "0.9")
            .const_label("swap_space", "4")
            .const_label("sliding_window", "None"),
        )?;
        cache_info.set(1.0);
        registry.register(Box::new(cache_info))?;

        let lora_info = Gauge::with_opts(
            opts("vllm:lora_requests_info", "Running stats on lora requests.")
                .const_label("max_lora", "0")
                .const_label("running_lora_adapters", "")
                .const_label("waiting_lora_adapters", ""),
        )?;
        registry.register(Box::new(lora_info))?;

        let prompt_tokens = counter(
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
        )?;
        let generation_tokens = counter(
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
        )?;
        let success = IntCounterVec::new(
            opts(
                "vllm:request_success_total",
                "Count of successfully processed requests.",
            ),
            &["finished_reason"],
        )?;
        registry.register(Box::new(success.clone()))?;
        let prefix_queries = counter(
            "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
        )?;
        let prefix_hits = counter(
            "vllm:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.",
        )?;
        counter(
            "vllm:num_preemptions_total",
            "Cumulative number of preemption from the engine.",
        )?;

        let token_buckets = buckets_1_2_5(cfg.max_model_len);
        Ok(Self {
            kv_capacity: cfg.kv_cache_tokens,
            load: Load::default(),
            running,
            waiting,
            kv_usage,
            prompt_tokens,
            generation_tokens,
            success_stop: success.with_label_values(&["stop"]),
            success_length: success.with_label_values(&["length"]),
            success_abort: success.with_label_values(&["abort"]),
            prefix_queries,
            prefix_hits,
            ttft: hist(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                TTFT_BUCKETS.to_vec(),
            )?,
            itl: hist(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                ITL_BUCKETS.to_vec(),
            )?,
            e2e: hist(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                REQUEST_LATENCY_BUCKETS.to_vec(),
            )?,
            queue_time: hist(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                REQUEST_LATENCY_BUCKETS.to_vec(),
            )?,
            request_prompt_tokens: hist(
                "vllm:request_prompt_tokens",
                "Number of prefill tokens processed.",
                token_buckets.clone(),
            )?,
            request_generation_tokens: hist(
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
                token_buckets,
            )?,
            registry,
        })
    }

    /// Counts one finished request (any reason) and its size histograms.
    pub fn finish(&self, reason: FinishReason, prompt_tokens: u64, generated: u64, e2e_s: f64) {
        match reason {
            FinishReason::Stop => self.success_stop.inc(),
            FinishReason::Length => self.success_length.inc(),
            FinishReason::Abort => self.success_abort.inc(),
        }
        self.request_prompt_tokens.observe(prompt_tokens as f64);
        self.request_generation_tokens.observe(generated as f64);
        self.e2e.observe(e2e_s);
    }

    /// Requests finished for any reason.
    pub fn requests_total(&self) -> u64 {
        self.success_stop.get() + self.success_length.get() + self.success_abort.get()
    }

    /// Prometheus text exposition of every metric, gauges refreshed from the load atomics.
    pub fn render(&self) -> Vec<u8> {
        let running = self.load.running.load(Ordering::Relaxed);
        let waiting = self.load.waiting.load(Ordering::Relaxed);
        let kv = self.load.kv_tokens_used.load(Ordering::Relaxed);
        self.running.set(i64::try_from(running).unwrap_or(i64::MAX));
        self.waiting.set(i64::try_from(waiting).unwrap_or(i64::MAX));
        let perc = if self.kv_capacity == 0 {
            0.0
        } else {
            (kv as f64 / self.kv_capacity as f64).min(1.0)
        };
        self.kv_usage.set(perc);
        let mut buf = Vec::with_capacity(8192);
        // Encoding into a Vec only fails on inconsistent metric families, which we never build;
        // a partial body is still better than none for a scrape.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding simulator metrics");
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_two_five_buckets() {
        assert_eq!(
            buckets_1_2_5(1000),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
        assert_eq!(buckets_1_2_5(0), vec![1.0]);
        assert!(!buckets_1_2_5(u64::MAX).is_empty());
    }

    #[test]
    fn registry_accepts_vllm_names_and_renders_labels() {
        let m = Metrics::new(&SimConfig::default()).unwrap();
        m.prompt_tokens.inc_by(7);
        m.finish(FinishReason::Length, 7, 3, 0.5);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("vllm:prompt_tokens_total{engine=\"0\",model_name=\"sim-model\"} 7"));
        assert!(text.contains("finished_reason=\"length\""));
        assert!(text.contains("enable_prefix_caching=\"True\""));
        assert_eq!(m.requests_total(), 1);
    }
}
