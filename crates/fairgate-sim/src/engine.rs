//! The continuous-batching engine: one task owns the waiting queue, the running batch, the KV
//! blocks and the prefix cache, and advances them one step at a time, mirroring vLLM v1's
//! `Scheduler.schedule()` (no chunked prefill, no token budget).
//!
//! KV is allocated in blocks of `block_size` tokens (`kv_cache_tokens / block_size` blocks),
//! incrementally as in vLLM: the step that produces a sequence's next token needs blocks for
//! its prompt plus every token generated so far (that step computes the KV of the last one).
//!
//! Each step:
//! 1. requests that arrived on the channel join the waiting queue: under `fcfs` at its back
//!    (arrival order), under `priority` by `(priority, arrival)`, lower first, ties in arrival
//!    order. Requests whose client went away are dropped from both queues (their KV is freed,
//!    their produced tokens counted);
//! 2. the RUNNING requests are scheduled in running order (the order they were admitted), each
//!    taking the block its next token may need. When none is free, a running request is
//!    preempted: under `priority` the one with the largest `(priority, arrival)`, under `fcfs`
//!    the last one in the running list. It frees all its blocks, keeps its generated tokens
//!    and goes back to the waiting queue (`fcfs`: at the front; `priority`: at its own place),
//!    `vllm:num_preemptions_total` counts it, and the allocation is retried. If the request
//!    preempted itself, no further running request is scheduled in this step (those not
//!    scheduled emit no token in it). Its client stream only pauses;
//! 3. only if nothing was preempted in this step, WAITING requests are admitted in queue order
//!    while `running < max_num_seqs` and the free blocks cover the request's prompt (a
//!    preempted one: prompt + generated tokens, all recomputed); the first one that does not fit
//!    blocks the rest (head-of-line, like vLLM). Waiting requests never preempt running ones.
//!    Admission looks up and fills the prefix cache. A LoRA request whose adapter is not in the
//!    batch while `max_loras` distinct adapters already are is skipped and keeps its place, and
//!    admission goes on with the requests behind it (vLLM's scheduler does the same);
//!    base-model requests are never limited by adapters. As in vLLM, a resident adapter keeps
//!    admitting its new requests, so a skipped adapter waits until the resident ones have no
//!    running request left;
//! 4. the step lasts `lora loads + max(prefill of the requests admitted in it) +
//!    decode_step_base + decode_step_per_seq × scheduled` (a mixed prefill+decode batch slows
//!    every sequence), where prefill = `prefill_overhead + uncached_tokens × prefill_per_token`
//!    (uncached: the prompt not served by the prefix cache, plus, for a resumed request, its
//!    generated tokens) and each adapter admitted while not in one of the `max_loras` slots
//!    (least recently used slot evicted) costs `lora_load`;
//! 5. at the end of the step every scheduled sequence emits one token; finished ones free
//!    their blocks.
//!
//! So a request's TTFT = queueing + the step it was admitted in; it is observed once, and a
//! preempted request's pause shows in its inter-token latency, as in vLLM. Its prompt tokens,
//! prefix-cache lookup, queue time and `Started` event are counted at its first admission only.
//! Durations use `tokio::time::sleep`, so tests can run the engine on paused (virtual) time.
//! Accounting for a finished request happens before its last event is sent, so a client that
//! has seen the end of a response also sees it in the counters.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{SchedulingPolicy, SimConfig};
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
    /// vLLM's request `priority`: lower is scheduled first under the `priority` policy.
    pub priority: i64,
    /// When the HTTP request arrived; TTFT, queue time and e2e are measured from here.
    pub arrival: Instant,
}

impl SeqRequest {
    fn prompt_tokens(&self) -> u64 {
        self.prompt_ids.len() as u64
    }

    /// KV tokens the fast path reports for a running request (it allocates no blocks).
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
    num_blocks: u64,
    block_size: u64,
    policy: SchedulingPolicy,
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

    fn blocks_for(&self, tokens: u64) -> u64 {
        tokens.div_ceil(self.block_size)
    }
}

/// A request as submitted, with the channel back to its handler.
struct Entry {
    req: SeqRequest,
    events: mpsc::UnboundedSender<SeqEvent>,
}

/// A request inside the engine, waiting or running; it keeps its generated tokens across
/// preemptions.
struct Seq {
    events: mpsc::UnboundedSender<SeqEvent>,
    prompt_ids: Vec<u32>,
    max_tokens: u64,
    abort_after: Option<u64>,
    lora: Option<usize>,
    priority: i64,
    /// Submission order: breaks ties between requests that arrived at the same instant.
    order: u64,
    generated: u64,
    /// KV blocks held (0 while waiting).
    blocks: u64,
    clock: SeqClock,
    /// Admitted at least once: prompt tokens, prefix lookup, queue time and `Started` are done.
    started: bool,
    /// Scheduled in the current step, so it emits a token at the step's end.
    scheduled: bool,
}

impl Seq {
    fn prompt_tokens(&self) -> u64 {
        self.prompt_ids.len() as u64
    }

    /// KV tokens the step producing the next token needs: the prompt and every token so far.
    fn tokens(&self) -> u64 {
        self.prompt_tokens().saturating_add(self.generated)
    }

    /// vLLM's priority-policy order, `(priority, arrival_time)`; lower is served first and the
    /// largest is preempted first.
    fn key(&self) -> (i64, Instant, u64) {
        (self.priority, self.clock.arrival, self.order)
    }
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
                num_blocks: cfg.num_blocks(),
                block_size: cfg.effective_block_size(),
                policy: cfg.scheduling_policy,
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
            blocks_used: 0,
            next_order: 0,
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
    /// In scheduling order (see the module doc, step 1).
    waiting: VecDeque<Seq>,
    /// In admission order.
    running: Vec<Seq>,
    blocks_used: u64,
    next_order: u64,
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
                // Idle: block until work arrives, or stop when every handle is gone. The
                // next step starts when the work arrives: the catch-up below is for a busy
                // engine's late wake-ups, not credit for the time it sat idle.
                step_end = None;
                match self.rx.recv().await {
                    Some(e) => self.receive(e),
                    None => return,
                }
            }
            while let Ok(e) = self.rx.try_recv() {
                self.receive(e);
            }
            self.reap_disconnected(Instant::now());
            let admission = self.schedule(Instant::now());
            self.publish();
            let scheduled = self.running.iter().filter(|r| r.scheduled).count();
            if scheduled == 0 {
                // Idle, or a step that only preempted (a request preempted itself before anyone
                // was scheduled): schedule again at once, the freed blocks let the rest run.
                step_end = None;
                if !self.running.is_empty() {
                    tokio::task::yield_now().await;
                }
                continue;
            }
            let step = admission.saturating_add(self.params.decode_step(scheduled));
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
        load.kv_tokens_used.store(
            self.blocks_used.saturating_mul(self.params.block_size),
            Ordering::Relaxed,
        );
    }

    /// A newly submitted request joins the waiting queue.
    fn receive(&mut self, e: Entry) {
        let Entry { req, events } = e;
        let seq = Seq {
            events,
            prompt_ids: req.prompt_ids,
            max_tokens: req.max_tokens,
            abort_after: req.abort_after,
            lora: req.lora,
            priority: req.priority,
            order: self.next_order,
            generated: 0,
            blocks: 0,
            clock: SeqClock::new(req.arrival),
            started: false,
            scheduled: false,
        };
        self.next_order += 1;
        self.enqueue(seq, false);
    }

    /// Puts `seq` in the waiting queue where the policy says (vLLM's `add_request` /
    /// `prepend_request`).
    fn enqueue(&mut self, seq: Seq, preempted: bool) {
        match self.params.policy {
            SchedulingPolicy::Fcfs if preempted => self.waiting.push_front(seq),
            SchedulingPolicy::Fcfs => self.waiting.push_back(seq),
            SchedulingPolicy::Priority => {
                let key = seq.key();
                let at = self.waiting.partition_point(|w| w.key() < key);
                self.waiting.insert(at, seq);
            }
        }
    }

    /// Accounts a waiting request that leaves without running again: its prompt unless it was
    /// admitted before, and the tokens it produced before a preemption.
    fn drop_waiting(&self, seq: &Seq, now: Instant) {
        let m = &self.metrics;
        m.load.waiting.fetch_sub(1, Ordering::Relaxed);
        m.lora.waiting(seq.lora, false);
        let prompt = seq.prompt_tokens();
        if !seq.started {
            m.prompt_tokens.inc_by(prompt);
        }
        m.finish(
            FinishReason::Abort,
            prompt,
            seq.generated,
            seq.clock.e2e(now),
        );
    }

    /// Drops requests whose client disconnected: waiting ones count only their prompt (and
    /// what they produced before a preemption), running ones their prompt and the tokens
    /// produced so far.
    fn reap_disconnected(&mut self, now: Instant) {
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.retain(|s| {
            if !s.events.is_closed() {
                return true;
            }
            self.drop_waiting(s, now);
            false
        });
        self.waiting = waiting;
        let m = &self.metrics;
        let mut freed = 0;
        self.running.retain(|r| {
            if !r.events.is_closed() {
                return true;
            }
            freed += r.blocks;
            m.lora.running(r.lora, false);
            m.finish(
                FinishReason::Abort,
                r.prompt_tokens(),
                r.generated,
                r.clock.e2e(now),
            );
            false
        });
        self.blocks_used -= freed;
    }

    /// One scheduling pass: the running requests first, then, if nothing was preempted, the
    /// waiting ones. Returns the step's admission cost: adapter loads plus the longest prefill.
    fn schedule(&mut self, now: Instant) -> Duration {
        for r in &mut self.running {
            r.scheduled = false;
        }
        if self.schedule_running() {
            // vLLM admits nothing in a step that preempted.
            return Duration::ZERO;
        }
        self.admit(now)
    }

    /// Gives every running request, in running order, the blocks its next token needs,
    /// preempting as the policy says when none are free. Returns whether it preempted.
    fn schedule_running(&mut self) -> bool {
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() {
            let want = self.params.blocks_for(self.running[i].tokens());
            loop {
                let extra = want.saturating_sub(self.running[i].blocks);
                if self.blocks_used + extra <= self.params.num_blocks {
                    self.blocks_used += extra;
                    let r = &mut self.running[i];
                    r.blocks += extra;
                    r.scheduled = true;
                    i += 1;
                    break;
                }
                let victim = match self.params.policy {
                    SchedulingPolicy::Priority => self
                        .running
                        .iter()
                        .enumerate()
                        .max_by_key(|(_, r)| r.key())
                        .map_or(i, |(j, _)| j),
                    SchedulingPolicy::Fcfs => self.running.len() - 1,
                };
                self.preempt(victim);
                preempted = true;
                if victim == i {
                    // It preempted itself: no more running requests in this step.
                    return true;
                }
                if victim < i {
                    // An already scheduled request gave its blocks back; `i` moved down.
                    i -= 1;
                }
            }
        }
        preempted
    }

    /// Moves running request `idx` back to the waiting queue, freeing all its blocks.
    fn preempt(&mut self, idx: usize) {
        let mut seq = self.running.remove(idx);
        self.blocks_used -= seq.blocks;
        seq.blocks = 0;
        seq.scheduled = false;
        let m = &self.metrics;
        m.preemptions.inc();
        m.lora.running(seq.lora, false);
        m.load.waiting.fetch_add(1, Ordering::Relaxed);
        m.lora.waiting(seq.lora, true);
        self.enqueue(seq, true);
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

    /// Admits waiting requests in queue order (LoRA requests over `max_loras` are skipped);
    /// returns the admission cost: adapter loads plus the longest prefill.
    fn admit(&mut self, now: Instant) -> Duration {
        let mut prefill = Duration::ZERO;
        let mut loads = Duration::ZERO;
        // Index of the next candidate; the ones before it were skipped for `max_loras`.
        let mut i = 0;
        while let Some(head) = self.waiting.get(i) {
            if self.running.len() >= self.params.max_num_seqs {
                break;
            }
            if !self.lora_admissible(head.lora) {
                i += 1;
                continue;
            }
            let want = self.params.blocks_for(head.tokens());
            let fits = self.blocks_used.saturating_add(want) <= self.params.num_blocks;
            if !fits && !self.running.is_empty() {
                break; // head-of-line: wait for running sequences to free blocks
            }
            let Some(mut seq) = self.waiting.remove(i) else {
                break;
            };
            if !fits {
                // Larger than the whole cache; validation rejects these, so this only guards
                // against a stall. Dropping `events` makes the handler answer with an error.
                tracing::warn!(want, "request can never fit the simulated KV cache");
                self.drop_waiting(&seq, now);
                continue;
            }
            let m = &self.metrics;
            m.load.waiting.fetch_sub(1, Ordering::Relaxed);
            m.lora.waiting(seq.lora, false);
            let prompt = seq.prompt_tokens();
            let cached = self.cache.lookup_and_insert(&seq.prompt_ids);
            if !seq.started {
                seq.started = true;
                m.prompt_tokens.inc_by(prompt);
                m.prefix_queries.inc_by(prompt);
                m.prefix_hits.inc_by(cached);
                m.queue_time
                    .observe((now - seq.clock.arrival).as_secs_f64());
                let _ = seq.events.send(SeqEvent::Started {
                    cached_tokens: cached,
                });
                if seq.abort_after == Some(0) {
                    m.finish(FinishReason::Abort, prompt, 0, seq.clock.e2e(now));
                    let _ = seq.events.send(SeqEvent::Aborted);
                    continue;
                }
            }
            // A resumed request recomputes its generated tokens too (only prompt blocks are in
            // the prefix cache).
            prefill = prefill.max(self.params.prefill(seq.tokens() - cached));
            if let Some(a) = seq.lora {
                loads = loads.saturating_add(self.use_adapter(a));
            }
            self.metrics.lora.running(seq.lora, true);
            self.blocks_used += want;
            seq.blocks = want;
            seq.scheduled = true;
            self.running.push(seq);
        }
        loads.saturating_add(prefill)
    }

    /// Every scheduled sequence emits one token; finished or disconnected ones leave the
    /// batch. Running sequences not scheduled in this step wait for the next one.
    fn decode(&mut self, now: Instant) {
        let m = &self.metrics;
        let mut freed = 0;
        self.running.retain_mut(|r| {
            if !r.scheduled {
                return true;
            }
            let last = r.generated + 1 >= r.max_tokens;
            if r.events.is_closed() {
                freed += r.blocks;
                m.lora.running(r.lora, false);
                m.finish(
                    FinishReason::Abort,
                    r.prompt_tokens(),
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
                m.finish(reason, r.prompt_tokens(), r.generated, r.clock.e2e(now));
                m.lora.running(r.lora, false);
                freed += r.blocks;
                // Out of the running gauge before its client hears the end: a client that
                // sends its next request at once must not see both counted (the gauge is
                // otherwise published once per step).
                m.load.running.fetch_sub(1, Ordering::Relaxed);
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
        self.blocks_used -= freed;
    }
}
