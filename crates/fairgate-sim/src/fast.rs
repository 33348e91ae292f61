//! The fast path for zero-latency configurations ([`crate::SimConfig::instant`]): each request
//! produces its tokens directly in its own handler, with no engine task and no per-token
//! channel hop, so one core can serve tens of thousands of small requests per second.
//!
//! It keeps the observable behaviour of the engine: the same events, the same counters and
//! histograms, the prefix cache (behind a mutex), and `max_num_seqs` as a concurrency limit
//! (a semaphore; requests queue for a permit and show up in `num_requests_waiting`).
//! KV capacity is not modelled here beyond the `kv_tokens_used` figure: instant configs have
//! a huge cache, so a KV wait (or a preemption) would never happen. A request's `priority` is
//! validated as on the engine path but orders nothing: permits are handed out in arrival order.
//! LoRA requests are served without the `max_loras` residency limit (and with no load cost);
//! they are still counted per adapter for `vllm:lora_requests_info`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::SimConfig;
use crate::engine::{SeqClock, SeqEvent, SeqRequest};
use crate::metrics::{FinishReason, Metrics};
use crate::prefix_cache::PrefixCache;

/// Shared state of the fast path.
#[derive(Debug)]
pub struct FastPath {
    slots: Arc<Semaphore>,
    cache: Mutex<PrefixCache>,
    metrics: Arc<Metrics>,
}

impl FastPath {
    pub fn new(cfg: &SimConfig, metrics: Arc<Metrics>) -> Self {
        let permits = cfg.effective_max_num_seqs().min(Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(permits)),
            cache: Mutex::new(PrefixCache::new(
                cfg.effective_block_size(),
                cfg.num_blocks(),
            )),
            metrics,
        }
    }

    /// Waits for a batch slot, then schedules `req` like an engine admission would.
    pub async fn start(&self, req: SeqRequest) -> FastSeq {
        let load = &self.metrics.load;
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                // Full batch: wait, counted as waiting (the guard undoes it if we are dropped).
                load.waiting.fetch_add(1, Ordering::Relaxed);
                self.metrics.lora.waiting(req.lora, true);
                let _waiting = WaitingGuard(&self.metrics, req.lora);
                // The semaphore is never closed, so an error cannot happen; without a permit
                // the request still runs rather than failing.
                self.slots.clone().acquire_owned().await.ok()
            }
        };
        load.running.fetch_add(1, Ordering::Relaxed);
        self.metrics.lora.running(req.lora, true);
        let prompt = req.prompt_ids.len() as u64;
        let cached = match self.cache.lock() {
            Ok(mut c) => c.lookup_and_insert(&req.prompt_ids),
            // A panic while holding the lock cannot leave the cache inconsistent in a way that
            // matters for a simulator; keep serving with it.
            Err(poisoned) => poisoned.into_inner().lookup_and_insert(&req.prompt_ids),
        };
        let m = &self.metrics;
        m.prompt_tokens.inc_by(prompt);
        m.prefix_queries.inc_by(prompt);
        m.prefix_hits.inc_by(cached);
        let now = Instant::now();
        m.queue_time.observe((now - req.arrival).as_secs_f64());
        let kv_need = req.kv_need();
        load.kv_tokens_used.fetch_add(kv_need, Ordering::Relaxed);
        FastSeq {
            metrics: self.metrics.clone(),
            permit,
            prompt_tokens: prompt,
            cached_tokens: cached,
            max_tokens: req.max_tokens,
            abort_after: req.abort_after,
            kv_need,
            generated: 0,
            lora: req.lora,
            started: false,
            finished: false,
            clock: SeqClock::new(req.arrival),
        }
    }
}

/// Undoes the waiting counts of a request when it stops waiting (admitted or dropped).
struct WaitingGuard<'a>(&'a Metrics, Option<usize>);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.load.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.lora.waiting(self.1, false);
    }
}

/// One running fast-path sequence; yields its events synchronously. Dropping it before the
/// end counts it as aborted with the tokens produced so far.
#[derive(Debug)]
pub struct FastSeq {
    metrics: Arc<Metrics>,
    permit: Option<OwnedSemaphorePermit>,
    prompt_tokens: u64,
    cached_tokens: u64,
    max_tokens: u64,
    abort_after: Option<u64>,
    kv_need: u64,
    generated: u64,
    lora: Option<usize>,
    started: bool,
    finished: bool,
    clock: SeqClock,
}

impl FastSeq {
    /// Next event, or `None` after the sequence ended.
    pub fn next_event(&mut self) -> Option<SeqEvent> {
        if self.finished {
            return None;
        }
        if !self.started {
            self.started = true;
            return Some(SeqEvent::Started {
                cached_tokens: self.cached_tokens,
            });
        }
        if self.abort_after == Some(self.generated) {
            self.finish(FinishReason::Abort);
            return Some(SeqEvent::Aborted);
        }
        self.generated += 1;
        self.clock.on_token(&self.metrics, Instant::now());
        let last = self.generated >= self.max_tokens;
        if last {
            self.finish(FinishReason::Length);
        }
        Some(SeqEvent::Token { last })
    }

    /// Accounts the sequence once, before its last event is handed out.
    fn finish(&mut self, reason: FinishReason) {
        if self.finished {
            return;
        }
        self.finished = true;
        let m = &self.metrics;
        m.generation_tokens.inc_by(self.generated);
        m.finish(
            reason,
            self.prompt_tokens,
            self.generated,
            self.clock.e2e(Instant::now()),
        );
        m.load.running.fetch_sub(1, Ordering::Relaxed);
        m.lora.running(self.lora, false);
        m.load
            .kv_tokens_used
            .fetch_sub(self.kv_need, Ordering::Relaxed);
        self.permit = None;
    }
}

impl Drop for FastSeq {
    fn drop(&mut self) {
        self.finish(FinishReason::Abort);
    }
}
