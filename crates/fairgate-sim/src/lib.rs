//! fairgate-sim: a stand-in for a vLLM OpenAI-compatible server, with no GPU.
//!
//! It serves one model like `vllm serve` does, speaks vLLM's HTTP API (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`, `/v1/models`, `/tokenize`, `/health`, `/version`,
//! `/metrics`) with vLLM's JSON shapes and metric names, and models what a gateway's scheduler
//! cares about: continuous batching under `max_num_seqs`, a block-allocated KV cache that makes
//! requests wait and preempts running ones when full, vLLM's `fcfs` / `priority` scheduling
//! policies, a block-hash prefix cache, and step times that grow with the batch.
//!
//! LoRA adapters ([`SimConfig::lora_modules`], like `vllm serve --enable-lora --lora-modules`)
//! are served under their own model names, listed in `/v1/models` with the base model as
//! `parent`, limited to [`SimConfig::max_loras`] distinct adapters in the running batch, and
//! reported live in `vllm:lora_requests_info`.
//!
//! [`Simulator::set_healthy`] switches the instance to the state of a vLLM whose engine died:
//! `/health` and `/ping` answer 503, and so does every inference route, before any byte.
//!
//! It is used in-process by `fairgate demo` and integration tests, standalone through
//! `fairgate sim`, and (with [`SimConfig::instant`]) as the zero-latency backend of the gateway
//! overhead benchmark.
//!
//! Token accounting rule: every request that passes validation counts its prompt tokens and
//! the output tokens actually produced in `vllm:prompt_tokens_total` /
//! `vllm:generation_tokens_total`, including requests aborted by a client disconnect; the usage
//! a response reports equals what that request added. Injected failures (`error`, `hang`)
//! count nothing. Embeddings count prompt tokens only.
//!
//! # Layout
//! - [`config`]: [`SimConfig`], its defaults and the zero-latency profile.
//! - [`tokenizer`]: the deterministic stand-in tokenizer and chat-template framing.
//! - [`fault`]: the `x-sim-fault` header syntax and the random error/hang rates.
//! - `engine`: the continuous-batching step loop (`fcfs` / `priority` scheduling, KV blocks
//!   allocated as sequences grow, preemption, `max_loras` residency and adapter slots, step
//!   timing).
//! - `prefix_cache`: vLLM-style chained block hashes with LRU eviction.
//! - `fast`: the zero-latency path that answers without the step loop (no LoRA residency limit).
//! - `metrics`: vLLM's Prometheus metrics in a per-simulator registry, with the per-adapter
//!   running/waiting counts behind `vllm:lora_requests_info`.
//! - `textgen`: deterministic output words and embedding vectors.
//! - `api`: the axum routes and handlers (model and adapter resolution, the health switch);
//!   `api::wire` parses requests and builds vLLM error bodies; `api::render` builds response
//!   bodies and SSE chunks.

pub mod config;
pub mod fault;
pub mod tokenizer;

mod api;
mod engine;
mod fast;
mod metrics;
mod prefix_cache;
mod textgen;

use axum::serve::ListenerExt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{SchedulingPolicy, SimConfig};
pub use fault::FAULT_HEADER;
pub use tokenizer::{count_tokens, tokenize};

use engine::{EngineHandle, SeqEvent, SeqRequest};
use fast::{FastPath, FastSeq};
use metrics::Metrics;

/// A snapshot of the simulator's counters and load, for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Prompt tokens of every validated request (see the crate doc's accounting rule).
    pub prompt_tokens_total: u64,
    /// Output tokens actually produced.
    pub generation_tokens_total: u64,
    /// Requests finished for any reason (length, stop, abort).
    pub requests_total: u64,
    /// Sequences in the running batch.
    pub running: usize,
    /// Requests queued for admission.
    pub waiting: usize,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries_total: u64,
    /// Prompt tokens served from the prefix cache.
    pub prefix_cache_hits_total: u64,
    /// KV tokens held by running sequences: their blocks × `block_size` (the engine); the
    /// fast path reports prompt + max_tokens per running request.
    pub kv_tokens_used: u64,
    /// Running requests preempted for lack of KV blocks (`vllm:num_preemptions_total`).
    pub num_preemptions_total: u64,
}

/// Which LoRA adapters have requests in the running batch and in the waiting queue right now:
/// the names `vllm:lora_requests_info` reports, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraStats {
    /// Adapters with at least one running request.
    pub running_adapters: Vec<String>,
    /// Adapters with at least one waiting request.
    pub waiting_adapters: Vec<String>,
}

/// A simulated vLLM instance. Cheap to clone: all clones share one engine and one registry.
#[derive(Clone, Debug)]
pub struct Simulator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: SimConfig,
    metrics: Arc<Metrics>,
    backend: Backend,
    sampler: fault::Sampler,
    started: Instant,
    /// Unique-per-instance salt and counter for response ids.
    id_salt: u64,
    next_id: AtomicU64,
    /// Cleared by [`Simulator::set_healthy`] to play a dead engine.
    healthy: AtomicBool,
    /// The last requests received, for tests (see [`Simulator::recent_requests`]).
    seen: std::sync::Mutex<std::collections::VecDeque<SeenRequest>>,
}

/// One request as the simulator received it: what a gateway passed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    pub path_and_query: String,
    /// Header names (lowercase) and values, in arrival order.
    pub headers: Vec<(String, String)>,
}

/// Requests remembered at most.
const SEEN_MAX: usize = 256;

#[derive(Debug)]
enum Backend {
    Engine(EngineHandle),
    Fast(FastPath),
}

/// The running sequence behind one response, whichever path serves it.
#[derive(Debug)]
pub(crate) enum Generation {
    Engine(tokio::sync::mpsc::UnboundedReceiver<SeqEvent>),
    Fast(FastSeq),
}

impl Generation {
    /// Next event; `None` when the sequence is over (or the engine dropped it).
    pub(crate) async fn next(&mut self) -> Option<SeqEvent> {
        match self {
            Generation::Engine(rx) => rx.recv().await,
            Generation::Fast(seq) => seq.next().await,
        }
    }
}

impl Simulator {
    /// Builds a simulator; with non-zero latencies it spawns its engine task.
    ///
    /// # Panics
    /// When called outside a tokio runtime and the configuration needs the engine task.
    pub fn new(cfg: SimConfig) -> Self {
        // Metric names and label names are fixed and covered by tests; the only free-form
        // input (the model name) is a label value, which the registry accepts as any string.
        let metrics =
            Arc::new(Metrics::new(&cfg).expect("static vLLM metric definitions are always valid"));
        let backend = if cfg.is_instant() {
            Backend::Fast(FastPath::new(&cfg, metrics.clone()))
        } else {
            Backend::Engine(EngineHandle::spawn(&cfg, metrics.clone()))
        };
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let id_salt = prefix_cache::mix64(nanos ^ INSTANCES.fetch_add(1, Ordering::Relaxed));
        Self {
            inner: Arc::new(Inner {
                sampler: fault::Sampler::new(cfg.seed),
                cfg,
                metrics,
                backend,
                started: Instant::now(),
                id_salt,
                next_id: AtomicU64::new(0),
                healthy: AtomicBool::new(true),
                seen: std::sync::Mutex::new(std::collections::VecDeque::new()),
            }),
        }
    }

    /// Every route of the vLLM OpenAI server that the simulator implements.
    pub fn router(&self) -> axum::Router {
        api::router(self.clone(), CancellationToken::new())
    }

    /// The configuration this simulator runs with.
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// Counters and load right now.
    pub fn stats(&self) -> SimStats {
        let m = &self.inner.metrics;
        SimStats {
            prompt_tokens_total: m.prompt_tokens.get(),
            generation_tokens_total: m.generation_tokens.get(),
            requests_total: m.requests_total(),
            running: m.load.running.load(Ordering::Relaxed),
            waiting: m.load.waiting.load(Ordering::Relaxed),
            prefix_cache_queries_total: m.prefix_queries.get(),
            prefix_cache_hits_total: m.prefix_hits.get(),
            kv_tokens_used: m.load.kv_tokens_used.load(Ordering::Relaxed),
            num_preemptions_total: m.preemptions.get(),
        }
    }

    /// Running and waiting LoRA adapters right now.
    pub fn lora_stats(&self) -> LoraStats {
        let lora = &self.inner.metrics.lora;
        LoraStats {
            running_adapters: lora.running_names(),
            waiting_adapters: lora.waiting_names(),
        }
    }

    /// Switches the instance between healthy (the default) and the state of a vLLM whose engine
    /// died: while unhealthy, `/health` and `/ping` answer 503 with an empty body, and
    /// `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings` answer 503 with a
    /// vLLM-shaped error body before doing anything else. Requests already running go on.
    /// Other routes (`/v1/models`, `/tokenize`, `/metrics`, `/version`) keep answering.
    pub fn set_healthy(&self, healthy: bool) {
        self.inner.healthy.store(healthy, Ordering::Relaxed);
    }

    /// The state last set by [`Simulator::set_healthy`] (`true` by default). The startup delay
    /// ([`SimConfig::startup_delay`]) is separate: `/health` answers 503 during it either way.
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// The last requests received (up to 256, oldest first), except `/metrics` scrapes and
    /// `/health` probes: a debugging aid for tests of what a gateway forwards.
    #[doc(hidden)]
    pub fn recent_requests(&self) -> Vec<SeenRequest> {
        let seen = self.inner.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().cloned().collect()
    }

    pub(crate) fn remember(&self, r: SeenRequest) {
        let mut seen = self.inner.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= SEEN_MAX {
            seen.pop_front();
        }
        seen.push_back(r);
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn sampler(&self) -> &fault::Sampler {
        &self.inner.sampler
    }

    pub(crate) fn started(&self) -> Instant {
        self.inner.started
    }

    /// A fresh 32-hex-digit response id suffix.
    pub(crate) fn next_id(&self) -> u128 {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let hi = prefix_cache::mix64(self.inner.id_salt ^ n);
        let lo = prefix_cache::mix64(hi ^ n.rotate_left(32));
        (u128::from(hi) << 64) | u128::from(lo)
    }

    /// Schedules a validated request on the engine or the fast path.
    pub(crate) async fn start(&self, req: SeqRequest) -> Generation {
        match &self.inner.backend {
            Backend::Engine(e) => Generation::Engine(e.submit(req)),
            Backend::Fast(f) => Generation::Fast(f.start(req).await),
        }
    }
}

/// Serves `sim` on `listener` until `shutdown` resolves, then shuts down gracefully: in-flight
/// responses finish, and requests hung by fault injection are cut.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sim: Simulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let app = api::router(sim, stop.clone());
    axum::serve(listener.tap_io(no_delay), app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await
}

/// Streams are many small writes; without `TCP_NODELAY`, Nagle's algorithm meets the peer's
/// delayed ACK and each stream stalls ~40 ms.
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}
