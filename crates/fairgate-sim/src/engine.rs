//! The continuous-batching engine: one task owns the waiting queue, the running batch, the KV
//! budget and the prefix cache, and advances them one step at a time (vLLM's scheduler loop).
//!
//! Each step:
//! 1. requests that arrived on the channel join the FCFS waiting queue; requests whose client
//!    went away are dropped from both queues (their KV is freed, their produced tokens counted);
//! 2. waiting requests are admitted in order while `running < max_num_seqs` and the free KV
//!    covers `prompt + max_tokens`; the first one that does not fit blocks the rest
//!    (head-of-line, like vLLM); admission looks up and fills the prefix cache. A LoRA request
//!    whose adapter is not in the batch while `max_loras` distinct adapters already are is
//!    skipped and keeps its place, and admission goes on with the requests behind it (vLLM's
//!    scheduler does the same); base-model requests are never limited by adapters. As in vLLM,
//!    a resident adapter keeps admitting its new requests, so a skipped adapter waits until
//!    the resident ones have no running request left;
//! 3. the step lasts `lora loads + max(prefill of the requests admitted in it) +
//!    decode_step_base + decode_step_per_seq × running` (a mixed prefill+decode batch slows
//!    every sequence), where prefill = `prefill_overhead + uncached_prompt_tokens ×
//!    prefill_per_token` and each adapter admitted while not in one of the `max_loras` slots
//!    (least recently used slot evicted) costs `lora_load`;
//! 4. at the end of the step every running sequence emits one token; finished ones free KV.
//!
//! So a request's TTFT = queueing + the step it was admitted in. Durations use
//! `tokio::time::sleep`, so tests can run the engine on paused (virtual) time.
//! Accounting for a finished request happens before its last event is sent, so a client that
//! has seen the end of a response also sees it in the counters.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::SimConfig;
use crate::metrics::{FinishReason, Metrics};
use crate::prefix_cache::PrefixCache;

/// What a request's handler hears about its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEvent {
    /// The sequence was scheduled; this many prompt tokens came from the prefix cache.
    Started { cached_tokens: u64 },
    /// One output token; `last` means the sequence finished with `finish_reason="length"`.
    Token { last: bool },
    /// An `abort-after` fault ended the sequence: the response must break.
    Aborted,
}

/// A validated request handed to the engine (or the fast path).
#[derive(Debug)]
pub struct SeqRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: u64,
    pub abort_after: Option<u64>,
    /// LoRA adapter (index into `SimConfig::lora_modules`); `None` for the base model.
    pub lora: Option<usize>,
    /// When the HTTP request arrived; TTFT, queue time and e2e are measured from here.
    pub arrival: Instant,
}

impl SeqRequest {
    fn prompt_tokens(&self) -> u64 {
        self.prompt_ids.len() as u64
    }

    /// KV tokens reserved while running.
    pub fn kv_need(&self) -> u64 {
        self.prompt_tokens().saturating_add(self.max_tokens)
    }
}

/// Latency observations for one sequence (TTFT for the first token, ITL after).
#[derive(Debug, Clone, Copy)]
pub struct SeqClock {
    pub arrival: Instant,
    last_token: Option<Instant>,
}

impl SeqClock {
    pub fn new(arrival: Instant) -> Self {
        Self {
            arrival,
            last_token: None,
        }
    }

    /// Records one output token produced at `now`.
    pub fn on_token(&mut self, m: &Metrics, now: Instant) {
        match self.last_token {
            None => m.ttft.observe((now - self.arrival).as_secs_f64()),
            Some(t) => m.itl.observe((now - t).as_secs_f64()),
        }
        self.last_token = Some(now);
    }

    pub fn e2e(&self, now: Instant) -> f64 {
        (now - self.arrival).as_secs_f64()
    }
}

/// Latency parameters and limits the step loop needs.
#[derive(Debug, Clone)]
struct Params {
    max_num_seqs: usize,
    kv_capacity: u64,
    prefill_overhead: Duration,
    prefill_per_token: Duration,
    decode_step_base: Duration,
    decode_step_per_seq: Duration,
    max_loras: usize,
    lora_load: Duration,
}

impl Params {
    fn prefill(&self, uncached_tokens: u64) -> Duration {
        let per = self
            .prefill_per_token
            .saturating_mul(u32::try_from(uncached_tokens).unwrap_or(u32::MAX));
        self.prefill_overhead.saturating_add(per)
    }

    fn decode_step(&self, running: usize) -> Duration {
        let per = self
            .decode_step_per_seq
            .saturating_mul(u32::try_from(running).unwrap_or(u32::MAX));
        self.decode_step_base.saturating_add(per)
    }
}

/// A request in the engine's queues, with the channel back to its handler.
struct Entry {
    req: SeqRequest,
    events: mpsc::UnboundedSender<SeqEvent>,
}

/// A sequence in the running batch.
struct Running {
    events: mpsc::UnboundedSender<SeqEvent>,
    prompt_tokens: u64,
    max_tokens: u64,
    abort_after: Option<u64>,
    kv_need: u64,
    generated: u64,
    clock: SeqClock,
    lora: Option<usize>,
}

/// Cheap handle that submits requests to the engine task.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Entry>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("req", &self.req).finish()
    }
}

impl EngineHandle {
    /// Spawns the engine task on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(cfg: &SimConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Engine {
            params: Params {
                max_num_seqs: cfg.effective_max_num_seqs(),
                kv_capacity: cfg.kv_cache_tokens,
                prefill_overhead: cfg.prefill_overhead,
                prefill_per_token: cfg.prefill_per_token,
                decode_step_base: cfg.decode_step_base,
                decode_step_per_seq: cfg.decode_step_per_seq,
                max_loras: cfg.effective_max_loras(),
                lora_load: cfg.lora_load,
            },
            rx,
            metrics: metrics.clone(),
            cache: PrefixCache::new(cfg.effective_block_size(), cfg.num_blocks()),
            waiting: VecDeque::new(),
            running: Vec::new(),
            kv_used: 0,
            lora_slots: VecDeque::new(),
        };
        tokio::spawn(engine.run());
        Self { tx, metrics }
    }

    /// Queues `req`; its events arrive on the returned receiver. Dropping the receiver aborts
    /// the sequence at the engine's next step.
    pub fn submit(&self, req: SeqRequest) -> mpsc::UnboundedReceiver<SeqEvent> {
        let (events, rx) = mpsc::unbounded_channel();
        // Counted as waiting from submission, so the gauge is right even mid-step.
        let lora = req.lora;
        self.metrics.load.waiting.fetch_add(1, Ordering::Relaxed);
        self.metrics.lora.waiting(lora, true);
        if self.tx.send(Entry { req, events }).is_err() {
            // The engine is gone (simulator shutting down): the closed receiver tells the caller.
            self.metrics.load.waiting.fetch_sub(1, Ordering::Relaxed);
            self.metrics.lora.waiting(lora, false);
        }
        rx
    }
}

struct Engine {
    params: Params,
    rx: mpsc::UnboundedReceiver<Entry>,
    metrics: Arc<Metrics>,
    cache: PrefixCache,
    waiting: VecDeque<Entry>,
    running: Vec<Running>,
    kv_used: u64,
    /// Adapters loaded in the `max_loras` slots, least recently scheduled first.
    lora_slots: VecDeque<usize>,
}

impl Engine {
    async fn run(mut self) {
        // End of the previous step. Steps are scheduled back to back from it rather than from
        // "now", so timer granularity (about 1 ms) does not add up over a long generation.
        let mut step_end: Option<tokio::time::Instant> = None;
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                // Idle: block until work arrives, or stop when every handle is gone.
                match self.rx.recv().await {
                    Some(e) => self.waiting.push_back(e),
                    None => return,
                }
            }
            while let Ok(e) = self.rx.try_recv() {
                self.waiting.push_back(e);
            }
            self.reap_disconnected(Instant::now());
            let admission = self.admit(Instant::now());
            self.publish();
            if self.running.is_empty() {
                step_end = None;
                continue;
            }
            let step = admission.saturating_add(self.params.decode_step(self.running.len()));
            if step.is_zero() {
                // A zero-length step must still let other tasks (handlers) run.
                tokio::task::yield_now().await;
            } else {
                let now = tokio::time::Instant::now();
                // Catch up on a late wake-up, but never by more than one step (no bursts).
                let start = match step_end {
                    Some(end) if end + step >= now => end,
                    _ => now,
                };
                let end = start + step;
                step_end = Some(end);
                tokio::time::sleep_until(end).await;
            }
            self.decode(Instant::now());
            self.publish();
        }
    }

    fn publish(&self) {
        let load = &self.metrics.load;
        load.running.store(self.running.len(), Ordering::Relaxed);
        load.kv_tokens_used.store(self.kv_used, Ordering::Relaxed);
    }

    /// Drops requests whose client disconnected: waiting ones count only their prompt,
    /// running ones their prompt and the tokens produced so far.
    fn reap_disconnected(&mut self, now: Instant) {
        let m = &self.metrics;
        self.waiting.retain(|e| {
            if !e.events.is_closed() {
                return true;
            }
            m.load.waiting.fetch_sub(1, Ordering::Relaxed);
            m.lora.waiting(e.req.lora, false);
            let prompt = e.req.prompt_tokens();
            m.prompt_tokens.inc_by(prompt);
            m.finish(
                FinishReason::Abort,
                prompt,
                0,
                SeqClock::new(e.req.arrival).e2e(now),
            );
            false
        });
        let mut freed = 0;
        self.running.retain(|r| {
            if !r.events.is_closed() {
                return true;
            }
            freed += r.kv_need;
            m.lora.running(r.lora, false);
            m.finish(
                FinishReason::Abort,
                r.prompt_tokens,
                r.generated,
                r.clock.e2e(now),
            );
            false
        });
        self.kv_used -= freed;
    }

    /// Distinct adapters with a request in the running batch.
    fn running_adapters(&self) -> usize {
        self.lora_slots
            .iter()
            .filter(|&&a| self.metrics.lora.running_count(a) > 0)
            .count()
    }

    /// Whether a request for `lora` may join the batch under `max_loras`.
    fn lora_admissible(&self, lora: Option<usize>) -> bool {
        let Some(a) = lora else {
            return true;
        };
        self.metrics.lora.running_count(a) > 0 || self.running_adapters() < self.params.max_loras
    }

    /// Marks `lora` as the most recently used slot; returns the load cost if it was not loaded.
    fn use_adapter(&mut self, lora: usize) -> Duration {
        if let Some(pos) = self.lora_slots.iter().position(|&a| a == lora) {
            self.lora_slots.remove(pos);
            self.lora_slots.push_back(lora);
            return Duration::ZERO;
        }
        if self.lora_slots.len() >= self.params.max_loras {
            // Evict the least recently used adapter without running requests; one exists,
            // since `lora` passed `lora_admissible` while not running.
            let m = &self.metrics;
            if let Some(pos) = self
                .lora_slots
                .iter()
                .position(|&a| m.lora.running_count(a) == 0)
            {
                self.lora_slots.remove(pos);
            }
        }
        self.lora_slots.push_back(lora);
        self.params.lora_load
    }

    /// Admits waiting requests FCFS (LoRA requests over `max_loras` are skipped); returns the
    /// step's admission cost: adapter loads plus the longest prefill.
    fn admit(&mut self, now: Instant) -> Duration {
        let mut prefill = Duration::ZERO;
        let mut loads = Duration::ZERO;
        // Index of the next candidate; the ones before it were skipped for `max_loras`.
        let mut i = 0;
        while let Some(head) = self.waiting.get(i) {
            if self.running.len() >= self.params.max_num_seqs {
                break;
            }
            if !self.lora_admissible(head.req.lora) {
                i += 1;
                continue;
            }
            let need = head.req.kv_need();
            let fits = self.kv_used.saturating_add(need) <= self.params.kv_capacity;
            if !fits && !self.running.is_empty() {
                break; // head-of-line: wait for running sequences to free KV
            }
            let Some(Entry { req, events }) = self.waiting.remove(i) else {
                break;
            };
            let m = &self.metrics;
            m.load.waiting.fetch_sub(1, Ordering::Relaxed);
            m.lora.waiting(req.lora, false);
            if !fits {
                // Larger than the whole cache; validation rejects these, so this only guards
                // against a stall. Dropping `events` makes the handler answer with an error.
                tracing::warn!(need, "request can never fit the simulated KV cache");
                continue;
            }
            let prompt = req.prompt_tokens();
            let cached = self.cache.lookup_and_insert(&req.prompt_ids);
            m.prompt_tokens.inc_by(prompt);
            m.prefix_queries.inc_by(prompt);
            m.prefix_hits.inc_by(cached);
            m.queue_time.observe((now - req.arrival).as_secs_f64());
            prefill = prefill.max(self.params.prefill(prompt - cached));
            let clock = SeqClock::new(req.arrival);
            let _ = events.send(SeqEvent::Started {
                cached_tokens: cached,
            });
            if req.abort_after == Some(0) {
                m.finish(FinishReason::Abort, prompt, 0, clock.e2e(now));
                let _ = events.send(SeqEvent::Aborted);
                continue;
            }
            if let Some(a) = req.lora {
                loads = loads.saturating_add(self.use_adapter(a));
            }
            self.metrics.lora.running(req.lora, true);
            self.kv_used += need;
            self.running.push(Running {
                events,
                prompt_tokens: prompt,
                max_tokens: req.max_tokens,
                abort_after: req.abort_after,
                kv_need: need,
                generated: 0,
                clock,
                lora: req.lora,
            });
        }
        loads.saturating_add(prefill)
    }

    /// Every running sequence emits one token; finished or disconnected ones leave the batch.
    fn decode(&mut self, now: Instant) {
        let m = &self.metrics;
        let mut freed = 0;
        self.running.retain_mut(|r| {
            let last = r.generated + 1 >= r.max_tokens;
            if r.events.is_closed() {
                freed += r.kv_need;
                m.lora.running(r.lora, false);
                m.finish(
                    FinishReason::Abort,
                    r.prompt_tokens,
                    r.generated,
                    r.clock.e2e(now),
                );
                return false;
            }
            r.generated += 1;
            m.generation_tokens.inc();
            r.clock.on_token(m, now);
            let cut = !last && r.abort_after == Some(r.generated);
            if last || cut {
                let reason = if last {
                    FinishReason::Length
                } else {
                    FinishReason::Abort
                };
                m.finish(reason, r.prompt_tokens, r.generated, r.clock.e2e(now));
                m.lora.running(r.lora, false);
                freed += r.kv_need;
                let _ = r.events.send(SeqEvent::Token { last });
                if cut {
                    let _ = r.events.send(SeqEvent::Aborted);
                }
                return false;
            }
            // The receiver may have closed since the check above; then the token is still
            // produced (vLLM would have computed it too) and the abort is seen next step.
            let _ = r.events.send(SeqEvent::Token { last: false });
            true
        });
        self.kv_used -= freed;
    }
}
