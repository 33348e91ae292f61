//! vLLM's Prometheus metrics under their exact names, in a per-simulator registry (several
//! simulators share one process in tests and `fairgate demo`, so the global registry is no use).
//!
//! Every series carries `model_name="<model>"` and `engine="0"`. Load gauges are read from
//! atomics at scrape time. `vllm:num_preemptions_total` counts the engine's preemptions: KV is
//! allocated block by block as sequences grow (as in vLLM v1), so a full cache preempts a running
//! request (see `engine`). The fast path never preempts (its cache is never full).
//! `vllm:kv_cache_usage_perc` is the share of the blocks held by running requests.
//!
//! `vllm:lora_requests_info` is vLLM v1's info gauge: labels `max_lora` (the `--max-loras`
//! value; `"0"` here when LoRA is off, where vLLM would not export the metric),
//! `running_lora_adapters` and `waiting_lora_adapters` (comma-separated adapter names with
//! running / waiting requests; sorted here), and as value the Unix time in seconds of the last
//! change of those counts (of the simulator's start before any). vLLM keeps every label set it
//! ever exported; here only the current one is, the stale series is removed when it changes.
//! Like every series here it also carries `model_name` and `engine` (vLLM's has only the three).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
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

fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Running and waiting requests per LoRA adapter (indexes into `SimConfig::lora_modules`),
/// shared by the request path and the engine like [`Load`].
#[derive(Debug)]
pub struct LoraLoad {
    names: Vec<String>,
    /// Adapter indexes in name order, for the label values.
    sorted: Vec<usize>,
    running: Vec<AtomicUsize>,
    waiting: Vec<AtomicUsize>,
    /// `f64` bits of the Unix time of the last change.
    updated: AtomicU64,
}

impl LoraLoad {
    fn new(names: &[String]) -> Self {
        let mut sorted: Vec<usize> = (0..names.len()).collect();
        sorted.sort_by(|&a, &b| names[a].cmp(&names[b]));
        Self {
            names: names.to_vec(),
            sorted,
            running: names.iter().map(|_| AtomicUsize::new(0)).collect(),
            waiting: names.iter().map(|_| AtomicUsize::new(0)).collect(),
            updated: AtomicU64::new(unix_now_f64().to_bits()),
        }
    }

    fn add(counts: &[AtomicUsize], lora: Option<usize>, up: bool) -> Option<()> {
        let c = counts.get(lora?)?;
        if up {
            c.fetch_add(1, Ordering::Relaxed);
        } else {
            c.fetch_sub(1, Ordering::Relaxed);
        }
        Some(())
    }

    fn touch(&self, changed: Option<()>) {
        if changed.is_some() {
            self.updated
                .store(unix_now_f64().to_bits(), Ordering::Relaxed);
        }
    }

    /// One more (`up`) or one less request of adapter `lora` waiting; no-op for the base model.
    pub fn waiting(&self, lora: Option<usize>, up: bool) {
        self.touch(Self::add(&self.waiting, lora, up));
    }

    /// One more (`up`) or one less request of adapter `lora` running; no-op for the base model.
    pub fn running(&self, lora: Option<usize>, up: bool) {
        self.touch(Self::add(&self.running, lora, up));
    }

    /// Requests of adapter `lora` running now.
    pub fn running_count(&self, lora: usize) -> usize {
        self.running
            .get(lora)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn names_with(&self, counts: &[AtomicUsize]) -> Vec<String> {
        self.sorted
            .iter()
            .filter(|&&i| counts[i].load(Ordering::Relaxed) > 0)
            .map(|&i| self.names[i].clone())
            .collect()
    }

    /// Sorted names of the adapters with running requests.
    pub fn running_names(&self) -> Vec<String> {
        self.names_with(&self.running)
    }

    /// Sorted names of the adapters with waiting requests.
    pub fn waiting_names(&self) -> Vec<String> {
        self.names_with(&self.waiting)
    }
}

/// The `vllm:lora_requests_info` family and the label values it currently exports.
struct LoraInfo {
    gauge: GaugeVec,
    max_lora: String,
    /// `[max_lora, waiting, running]` of the exported series.
    current: Mutex<Option<[String; 3]>>,
}

impl LoraInfo {
    /// Exports the live label set only, valued with the time of the last change.
    fn refresh(&self, lora: &LoraLoad) {
        let labels = [
            self.max_lora.clone(),
            lora.waiting_names().join(","),
            lora.running_names().join(","),
        ];
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = current.as_ref().filter(|old| **old != labels) {
            let old: Vec<&str> = old.iter().map(String::as_str).collect();
            // Only fails if the series is already gone, which is what we want anyway.
            let _ = self.gauge.remove_label_values(&old);
        }
        let values: Vec<&str> = labels.iter().map(String::as_str).collect();
        self.gauge
            .with_label_values(&values)
            .set(f64::from_bits(lora.updated.load(Ordering::Relaxed)));
        *current = Some(labels);
    }
}

/// All metric handles of one simulator.
pub struct Metrics {
    registry: Registry,
    kv_capacity: u64,
    pub load: Load,
    pub lora: LoraLoad,
    lora_info: LoraInfo,
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
    pub preemptions: IntCounter,
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

        let lora_gauge = GaugeVec::new(
            opts("vllm:lora_requests_info", "Running stats on lora requests."),
            &["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
        )?;
        registry.register(Box::new(lora_gauge.clone()))?;
        let lora = LoraLoad::new(&cfg.lora_modules);
        let lora_info = LoraInfo {
            gauge: lora_gauge,
            max_lora: if cfg.lora_modules.is_empty() {
                "0".to_owned()
            } else {
                cfg.effective_max_loras().to_string()
            },
            current: Mutex::new(None),
        };
        lora_info.refresh(&lora);

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
        let preemptions = counter(
            "vllm:num_preemptions_total",
            "Cumulative number of preemption from the engine.",
        )?;

        let token_buckets = buckets_1_2_5(cfg.max_model_len);
        Ok(Self {
            kv_capacity: cfg.kv_cache_tokens,
            load: Load::default(),
            lora,
            lora_info,
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
            preemptions,
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
        self.lora_info.refresh(&self.lora);
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

    fn lora_lines(m: &Metrics) -> Vec<String> {
        String::from_utf8(m.render())
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("vllm:lora_requests_info{"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn lora_info_exports_only_the_live_label_set() {
        let off = Metrics::new(&SimConfig::default()).unwrap();
        let lines = lora_lines(&off);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("max_lora=\"0\""), "{lines:?}");

        let m = Metrics::new(&SimConfig {
            lora_modules: vec!["b".into(), "a".into()],
            max_loras: 2,
            ..SimConfig::default()
        })
        .unwrap();
        let lines = lora_lines(&m);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("max_lora=\"2\""));
        assert!(lines[0].contains("running_lora_adapters=\"\""));
        assert!(lines[0].contains("waiting_lora_adapters=\"\""));

        m.lora.waiting(Some(0), true);
        m.lora.waiting(None, true); // the base model is not an adapter
        let lines = lora_lines(&m);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("running_lora_adapters=\"\""), "{lines:?}");
        assert!(
            lines[0].contains("waiting_lora_adapters=\"b\""),
            "{lines:?}"
        );

        m.lora.waiting(Some(0), false);
        m.lora.running(Some(0), true);
        m.lora.running(Some(1), true);
        let lines = lora_lines(&m);
        assert_eq!(lines.len(), 1, "stale series removed: {lines:?}");
        assert!(
            lines[0].contains("running_lora_adapters=\"a,b\""),
            "{lines:?}"
        );
        assert!(lines[0].contains("waiting_lora_adapters=\"\""), "{lines:?}");
        assert!(lines[0].contains("model_name=\"sim-model\""), "{lines:?}");
        let ts: f64 = lines[0].rsplit(' ').next().unwrap().parse().unwrap();
        assert!(ts > 1.6e9, "a Unix timestamp: {ts}");
        assert_eq!(m.lora.running_names(), vec!["a", "b"]);
        assert!(m.lora.waiting_names().is_empty());
    }
}
