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
//!
//! With [`SimConfig::token_interval`] set, the fast path is paced: each sequence emits one
//! token every interval on its own schedule (first token after a random phase in
//! `[0, interval)`), a timer per token per sequence and no shared lock, so thousands of slow
//! streams have token times spread out as over a fleet rather than in lock-step batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::SimConfig;
use crate::engine::{SeqClock, SeqEvent, SeqRequest};
use crate::metrics::{FinishReason, Metrics};
use crate::prefix_cache::{mix64, PrefixCache};

/// Shared state of the fast path.
#[derive(Debug)]
pub struct FastPath {
    slots: Arc<Semaphore>,
    cache: Mutex<PrefixCache>,
    metrics: Arc<Metrics>,
    /// [`SimConfig::token_interval`]; zero: not paced.
    token_interval: Duration,
    /// Seed of the sequences' phases, and how many have been drawn.
    seed: u64,
    sequences: AtomicU64,
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
            token_interval: cfg.token_interval,
            seed: cfg.seed,
            sequences: AtomicU64::new(0),
        }
    }

    /// The schedule of a paced sequence starting `now`: its first token after a phase drawn
    /// uniformly from `[0, interval)`; `None` when not paced.
    fn pace(&self, now: Instant) -> Option<Pace> {
        if self.token_interval.is_zero() {
            return None;
        }
        let n = self.sequences.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(self.token_interval.as_nanos()).unwrap_or(u64::MAX);
        let phase = Duration::from_nanos(mix64(self.seed ^ mix64(n)) % nanos);
        Some(Pace {
            interval: self.token_interval,
            due: now + phase,
        })
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
            pace: self.pace(now),
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

/// When a paced sequence's next token is due.
#[derive(Debug, Clone, Copy)]
struct Pace {
    interval: Duration,
    due: Instant,
}

/// One running fast-path sequence; yields its events synchronously (or, paced, each token at
/// its time). Dropping it before the end counts it as aborted with the tokens produced so far.
#[derive(Debug)]
pub struct FastSeq {
    pace: Option<Pace>,
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
    /// Next event, or `None` after the sequence ended; a paced sequence's tokens wait for
    /// their time. Cancel-safe: dropped while waiting, the token is simply not produced yet.
    pub async fn next(&mut self) -> Option<SeqEvent> {
        if let Some(due) = self.token_due() {
            tokio::time::sleep_until(due).await;
        }
        self.next_event()
    }

    /// When the next event is a paced token, the time it is due.
    fn token_due(&self) -> Option<Instant> {
        let pace = self.pace?;
        let token_next = self.started && !self.finished && self.abort_after != Some(self.generated);
        token_next.then_some(pace.due)
    }

    /// Next event without waiting, or `None` after the sequence ended.
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
        if let Some(p) = &mut self.pace {
            // A fixed schedule: a token read late does not push the later ones back.
            p.due += p.interval;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(max_tokens: u64) -> SeqRequest {
        SeqRequest {
            prompt_ids: vec![1, 2, 3],
            max_tokens,
            abort_after: None,
            lora: None,
            priority: 0,
            arrival: Instant::now(),
        }
    }

    /// Times (since the call) of the token events of one sequence of `max_tokens` tokens.
    async fn token_times(fast: &FastPath, max_tokens: u64) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut seq = fast.start(request(max_tokens)).await;
        let mut times = Vec::new();
        while let Some(ev) = seq.next().await {
            if let SeqEvent::Token { .. } = ev {
                times.push(t0.elapsed());
            }
        }
        times
    }

    #[tokio::test(start_paused = true)]
    async fn paced_tokens_are_spaced_with_their_own_phase() {
        let interval = Duration::from_millis(100);
        let cfg = SimConfig {
            token_interval: interval,
            ..SimConfig::instant("m")
        };
        let fast = FastPath::new(&cfg, Arc::new(Metrics::new(&cfg).unwrap()));
        let mut phases = Vec::new();
        for _ in 0..8 {
            let times = token_times(&fast, 5).await;
            assert_eq!(times.len(), 5);
            // The timer wheel has 1 ms ticks: allow one either way.
            let tick = Duration::from_millis(1);
            assert!(times[0] <= interval + tick, "phase {:?}", times[0]);
            for w in times.windows(2) {
                let gap = w[1] - w[0];
                assert!(
                    gap + tick >= interval && gap <= interval + tick,
                    "gap {gap:?}"
                );
            }
            phases.push(times[0]);
        }
        phases.sort();
        phases.dedup();
        assert!(phases.len() >= 4, "phases not spread: {phases:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unpaced_tokens_come_at_once() {
        let cfg = SimConfig::instant("m");
        let fast = FastPath::new(&cfg, Arc::new(Metrics::new(&cfg).unwrap()));
        let times = token_times(&fast, 5).await;
        assert_eq!(times, vec![Duration::ZERO; 5]);
    }
}
