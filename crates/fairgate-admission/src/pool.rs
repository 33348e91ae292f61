//! One model pool's capacity and its waiters: the async front of [`crate::fair::FairQueue`].
//!
//! A pool admits a request at once while it has room (max in-flight requests and, optionally,
//! max in-flight tokens), whoever sends it: that is what makes it work-conserving. When it is
//! full the request queues under its tenant and [`Pool::admit`] waits until the queue hands it
//! a slot, its deadline passes, or its caller goes away (the future is dropped and the entry
//! leaves the queue at once).
//!
//! The [`Permit`] a request gets carries the charge for its service: the prompt estimate is
//! charged when it is admitted (VTC charges prefill at admission), completion tokens are
//! charged as they stream through the relay, and the prompt is corrected to the real count at
//! the end. Dropping the permit frees the slot and dispatches the next waiter.
//!
//! The lock is a plain mutex held for a few microseconds and never across an `.await`;
//! grants are sent after it is released.
//!
//! Replicas: counters are local, but [`Pool::take_local_service`] and
//! [`Pool::absorb_remote_service`] let a background task exchange the service each replica
//! delivered, so dispatch order reflects global service without the request path waiting on
//! a shared store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fairgate_types::Priority;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::fair::{FairQueue, Mode, TenantId, TenantView, Ticket};

/// Costs per token class, in raw cost units (VTC uses 1 and 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostWeights {
    pub input: u64,
    pub output: u64,
}

impl Default for CostWeights {
    fn default() -> Self {
        CostWeights {
            input: 1,
            output: 2,
        }
    }
}

/// Slots kept free for tenants below their fair share, so that an interactive user beside a
/// flood finds a slot at once instead of waiting for the flood's next stream to end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Headroom {
    /// Sized from what arrives: none while one tenant has the pool to itself; with several
    /// tenants, one slot per light tenant of the recent past (one whose latest request found
    /// nothing else of its own in flight), but no more than such tenants are likely to have in
    /// flight at once (their average in flight over the last few seconds plus two standard
    /// deviations, and always one more than they hold now); at least one, at most half the
    /// pool (pools under 4 slots keep none).
    #[default]
    Auto,
    /// A fixed number of slots (0 turns headroom off).
    Slots(usize),
}

/// Capacity and queue bounds of one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Requests in flight at once (the sum of the backends' slots).
    pub max_in_flight: usize,
    /// Reserved tokens (prompt estimate + max output) in flight at once, if bounded.
    pub max_tokens_in_flight: Option<u64>,
    /// Requests queued across all tenants before new ones get 503.
    pub max_queued: usize,
    pub mode: Mode,
    pub cost: CostWeights,
    /// Slots only tenants below their fair share may take (fair mode only).
    pub headroom: Headroom,
    /// Slots beyond `max_in_flight` that engines running vLLM's priority policy offer (the sum
    /// of `engine_max_seqs - max_in_flight` over them): only a tenant below its share may take
    /// one, and its request reaches the engine with the best priority, so the engine runs it
    /// before the over-share work it already holds. They stand in for the automatic headroom.
    pub engine_extra: usize,
    /// Some backend schedules by priority: work out each admission's fair-share position.
    pub engine_priority: bool,
    /// Short first within a fairness band (fair mode): when a slot frees, a queued request
    /// expected to be short (its `max_tokens`, or less when its tenant's recent answers were
    /// shorter) goes ahead of a longer one whose tenant is at most one average request's
    /// service behind (see [`crate::fair::FairQueue::set_band`] for the bound).
    pub length_aware: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_in_flight: 32,
            max_tokens_in_flight: None,
            max_queued: 10_000,
            mode: Mode::Fair,
            cost: CostWeights::default(),
            headroom: Headroom::Auto,
            engine_extra: 0,
            engine_priority: false,
            length_aware: true,
        }
    }
}

/// What one request asks of the pool.
#[derive(Clone, Debug)]
pub struct AdmitRequest<'a> {
    pub tenant: &'a str,
    pub weight: u32,
    pub group: Option<&'a str>,
    pub group_weight: u32,
    pub priority: Priority,
    /// Tokens this request may occupy (prompt estimate + max output), for the token bound.
    pub tokens: u64,
    /// Prompt tokens as estimated, charged at admission and corrected at the end.
    pub prompt_estimate: u64,
    /// Most requests this tenant may have queued in this pool.
    pub max_queued: usize,
    pub deadline: Instant,
}

/// Why a request was not admitted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("tenant `{tenant}` already has {limit} requests queued for this model")]
    TenantQueueFull {
        tenant: String,
        limit: usize,
        retry_after: Duration,
    },
    #[error("the model's queue is full ({queued} requests waiting)")]
    PoolFull {
        queued: usize,
        retry_after: Duration,
    },
    /// Waited until the deadline. `overloaded` is true when the request was next in line the
    /// whole pool is short of capacity, false when other tenants' shares held it back.
    #[error("no capacity within {waited:?}")]
    Timeout {
        waited: Duration,
        overloaded: bool,
        retry_after: Duration,
    },
}

impl AdmitError {
    pub fn retry_after(&self) -> Duration {
        match self {
            AdmitError::TenantQueueFull { retry_after, .. }
            | AdmitError::PoolFull { retry_after, .. }
            | AdmitError::Timeout { retry_after, .. } => *retry_after,
        }
    }

    /// Low-cardinality reason, for metrics and the ledger.
    pub fn reason(&self) -> &'static str {
        match self {
            AdmitError::TenantQueueFull { .. } => "tenant_queue_full",
            AdmitError::PoolFull { .. } => "pool_queue_full",
            AdmitError::Timeout {
                overloaded: true, ..
            } => "pool_overloaded",
            AdmitError::Timeout { .. } => "queue_timeout",
        }
    }
}

struct Waiter {
    tx: oneshot::Sender<Grant>,
    tokens: u64,
    prompt_cost: u64,
}

/// A grant and the waiter it goes to.
type Dispatched = (oneshot::Sender<Grant>, Grant);

/// A slot handed to a waiter; becomes a [`Permit`] on the waiter's side.
struct Grant {
    tenant: TenantId,
    tokens: u64,
    prompt_cost: u64,
    rank: u8,
    engine_slot: bool,
}

/// Service delivered per tenant in the last minute, in one-second buckets.
struct Window {
    /// (second, cost) per bucket; index = second % 60.
    buckets: [(u64, u64); 60],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            buckets: [(u64::MAX, 0); 60],
        }
    }
}

impl Window {
    fn add(&mut self, sec: u64, cost: u64) {
        let b = &mut self.buckets[(sec % 60) as usize];
        if b.0 != sec {
            *b = (sec, 0);
        }
        b.1 = b.1.saturating_add(cost);
    }

    /// Removes up to `cost` from the newest buckets (a refund of recent service).
    fn remove(&mut self, mut cost: u64) {
        let mut order: Vec<usize> = (0..60).filter(|&i| self.buckets[i].0 != u64::MAX).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.buckets[i].0));
        for i in order {
            let take = cost.min(self.buckets[i].1);
            self.buckets[i].1 -= take;
            cost -= take;
            if cost == 0 {
                break;
            }
        }
    }

    fn sum(&self, now_sec: u64) -> u64 {
        self.buckets
            .iter()
            .filter(|(s, _)| *s != u64::MAX && s.saturating_add(60) > now_sec && *s <= now_sec)
            .fold(0u64, |acc, (_, c)| acc.saturating_add(*c))
    }
}

struct Inner {
    cfg: PoolConfig,
    queue: FairQueue<Waiter>,
    in_flight: usize,
    /// Of `in_flight`, those in engine slots beyond the capacity.
    engine_in_flight: usize,
    tokens_in_flight: u64,
    windows: HashMap<TenantId, Window>,
    /// Service delivered here and not yet published to other replicas; negative when a
    /// refund (an over-estimated prompt) follows a publish.
    unpublished: HashMap<TenantId, i64>,
    /// Moving average of how long a permit is held, for Retry-After.
    hold_ewma_ms: f64,
    /// How far one finished request moved its group's counter here, averaged (EWMA): the
    /// fleet's lease split uses it as the unit of "ahead" (see [`Pool::counter_step`]).
    step_ewma: u64,
    /// Start of the pool's clock, for the one-second service buckets.
    epoch: Instant,
    /// When each tenant was last admitted, and when, if its latest admission found nothing
    /// else of it in flight: the automatic headroom counts such light tenants of the recent
    /// past.
    last_admitted: HashMap<TenantId, (Instant, Option<Instant>)>,
    /// [`Headroom::Auto`]'s current size, recomputed as requests start and end.
    auto_headroom: usize,
    /// Requests of light tenants in flight at the last resize, and its time-weighted moving
    /// average (over two request lifetimes, at least a second) up to `light_at`.
    light_now: usize,
    light_avg: f64,
    light_at: Instant,
    /// Moving average of each tenant's completion tokens per request, for the expected
    /// length of its queued requests.
    out_ewma: HashMap<TenantId, f64>,
    /// Moving average of one request's raw cost: the short-first band's width.
    cost_ewma: f64,
}

/// One model pool. Cheap to share: `Arc<Pool>`.
pub struct Pool {
    name: String,
    inner: Mutex<Inner>,
    admitted: AtomicU64,
    /// Woken when a request queues (whoever sizes the pool, the fleet's leases, may grow it) and
    /// when a request ends while the pool is still over a lowered capacity (it may shrink).
    demand: tokio::sync::Notify,
}

/// Live state of one tenant in a pool, for the admin API and gauges.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantState {
    pub view: TenantView,
    /// Raw cost served in the last 60 s.
    pub service_last_minute: u64,
    /// Share of the pool's service in the last 60 s, 0..1.
    pub share_last_minute: f64,
}

/// Live state of a pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolState {
    pub name: String,
    pub mode: Mode,
    pub max_in_flight: usize,
    pub max_tokens_in_flight: Option<u64>,
    pub in_flight: usize,
    pub tokens_in_flight: u64,
    pub queued: usize,
    /// Slots kept for tenants below their share now (see [`Headroom`]).
    pub headroom: usize,
    pub tenants: Vec<TenantState>,
}

impl Pool {
    pub fn new(name: impl Into<String>, cfg: PoolConfig) -> Arc<Pool> {
        Arc::new(Pool {
            name: name.into(),
            inner: Mutex::new(Inner {
                queue: FairQueue::new(cfg.mode),
                cfg,
                in_flight: 0,
                engine_in_flight: 0,
                tokens_in_flight: 0,
                windows: HashMap::new(),
                unpublished: HashMap::new(),
                hold_ewma_ms: 1_000.0,
                step_ewma: 0,
                epoch: Instant::now(),
                last_admitted: HashMap::new(),
                auto_headroom: 0,
                light_now: 0,
                light_avg: 0.0,
                light_at: Instant::now(),
                out_ewma: HashMap::new(),
                cost_ewma: 0.0,
            }),
            admitted: AtomicU64::new(0),
            demand: tokio::sync::Notify::new(),
        })
    }

    /// Notified each time a request queues for want of a slot.
    pub fn demand(&self) -> &tokio::sync::Notify {
        &self.demand
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counts consistent enough to keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes capacity, queue bound, mode or costs live; waiters are dispatched if the
    /// pool grew.
    pub fn reconfigure(self: &Arc<Self>, cfg: PoolConfig) {
        let grants = {
            let mut g = self.lock();
            g.queue.set_mode(cfg.mode);
            g.cfg = cfg;
            g.set_band();
            g.dispatch()
        };
        self.send(grants);
    }

    /// Changes only the capacity (backends added, drained, ejected or back); waiters are
    /// dispatched if it grew. Requests already admitted keep their slots when it shrinks.
    pub fn set_capacity(self: &Arc<Self>, max_in_flight: usize, max_tokens_in_flight: Option<u64>) {
        let grants = {
            let mut g = self.lock();
            if g.cfg.max_in_flight == max_in_flight
                && g.cfg.max_tokens_in_flight == max_tokens_in_flight
            {
                return;
            }
            g.cfg.max_in_flight = max_in_flight;
            g.cfg.max_tokens_in_flight = max_tokens_in_flight;
            g.dispatch()
        };
        self.send(grants);
    }

    /// Changes the engines' extra slots and whether positions are worked out (backends that
    /// run the priority policy added, changed or gone); waiters are dispatched if it grew.
    pub fn set_engine(self: &Arc<Self>, engine_extra: usize, engine_priority: bool) {
        let grants = {
            let mut g = self.lock();
            if g.cfg.engine_extra == engine_extra && g.cfg.engine_priority == engine_priority {
                return;
            }
            g.cfg.engine_extra = engine_extra;
            g.cfg.engine_priority = engine_priority;
            g.dispatch()
        };
        self.send(grants);
    }

    /// Current capacity.
    pub fn capacity(&self) -> usize {
        self.lock().cfg.max_in_flight
    }

    /// Updates a tenant's weight and group (live: the next dispatch uses them).
    pub fn set_tenant(&self, name: &str, weight: u32, group: Option<&str>, group_weight: u32) {
        self.lock()
            .queue
            .set_tenant(name, weight, group, group_weight);
    }

    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// The summed weights of the tenants with something queued or in flight here: how much
    /// of a shared capacity this pool's demand stands for (the fleet's leases split by it).
    pub fn active_weight(&self) -> u64 {
        let g = self.lock();
        g.queue.active_tenants().map(|t| g.queue.weight(t)).sum()
    }

    /// The counter of the work this pool would serve next, if any is queued (see
    /// [`crate::fair::FairQueue::head_counter`]).
    pub fn head_counter(&self) -> Option<u64> {
        self.lock().queue.head_counter()
    }

    /// How far one request moves its group's counter here, on average (0 before the first
    /// finished request): the unit in which the fleet judges a replica's waiting work ahead of
    /// another's.
    pub fn counter_step(&self) -> u64 {
        self.lock().step_ewma
    }

    /// Requests admitted since start.
    pub fn admitted_total(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Waits for a slot. Cancel-safe: dropping the future leaves the queue at once.
    pub async fn admit(self: &Arc<Self>, req: AdmitRequest<'_>) -> Result<Permit, AdmitError> {
        let started = Instant::now();
        let (rx, ticket, tenant) = {
            let mut g = self.lock();
            let tenant = g
                .queue
                .set_tenant(req.tenant, req.weight, req.group, req.group_weight);
            let tokens = g.clamp_tokens(req.tokens);
            let prompt_cost = req.prompt_estimate.saturating_mul(g.cfg.cost.input);
            // Nobody waiting and room for this tenant; or others are waiting but this
            // tenant, with nothing queued and below its share, may take a headroom slot
            // ahead of them (the waiters are over their share, or the slot would be theirs).
            let direct = if g.queue.is_empty() {
                g.fits_for(tenant, tokens)
            } else {
                g.queue.queued(tenant) == 0 && g.fits(tokens) && g.headroom_for(tenant)
            };
            // Else an engine slot beyond the pool's capacity, for a tenant below its share.
            let engine_slot =
                !direct && g.queue.queued(tenant) == 0 && g.engine_room_for(tenant, tokens);
            if direct || engine_slot {
                let held = g.queue.in_flight(tenant);
                let grant = Grant {
                    tenant,
                    tokens,
                    prompt_cost,
                    rank: g.rank(tenant, held),
                    engine_slot,
                };
                g.take(tenant, &grant, held == 0);
                g.queue.start(tenant);
                drop(g);
                self.admitted.fetch_add(1, Ordering::Relaxed);
                return Ok(self.permit(grant, false));
            }
            if g.queue.queued(tenant) >= req.max_queued {
                return Err(AdmitError::TenantQueueFull {
                    tenant: req.tenant.to_owned(),
                    limit: req.max_queued,
                    retry_after: g.retry_after(),
                });
            }
            if g.queue.len() >= g.cfg.max_queued {
                return Err(AdmitError::PoolFull {
                    queued: g.queue.len(),
                    retry_after: g.retry_after(),
                });
            }
            let (tx, rx) = oneshot::channel();
            let hint = g.expected_output(tenant, req.tokens.saturating_sub(req.prompt_estimate));
            let ticket = g.queue.push_hinted(
                tenant,
                req.priority,
                hint,
                Waiter {
                    tx,
                    tokens,
                    prompt_cost,
                },
            );
            // Room may exist when only the token bound blocked someone else.
            let grants = g.dispatch();
            drop(g);
            self.send(grants);
            self.demand.notify_one();
            (rx, ticket, tenant)
        };
        let mut leave = LeaveQueue {
            pool: self,
            ticket,
            rx: Some(rx),
            armed: true,
        };
        let res = match leave.rx.as_mut() {
            Some(rx) => tokio::time::timeout_at(req.deadline, rx).await,
            None => unreachable!("receiver is set above"),
        };
        match res {
            Ok(Ok(grant)) => {
                leave.armed = false;
                Ok(self.permit(grant, true))
            }
            // The pool never drops a waiter's sender without sending; treat it like a timeout.
            Ok(Err(_)) | Err(_) => {
                leave.armed = false;
                let mut g = self.lock();
                // Judged while the entry is still queued: was this request at the front?
                let overloaded = g.queue.is_next_in_line(tenant);
                if g.queue.remove(ticket).is_none() {
                    // Dispatched in the same instant the deadline fired: take the slot.
                    drop(g);
                    if let Some(grant) = leave.rx.as_mut().and_then(close_and_take) {
                        return Ok(self.permit(grant, true));
                    }
                    g = self.lock();
                }
                Err(AdmitError::Timeout {
                    waited: started.elapsed(),
                    overloaded,
                    retry_after: g.retry_after(),
                })
            }
        }
    }

    fn permit(self: &Arc<Self>, grant: Grant, queued: bool) -> Permit {
        Permit {
            queued,
            pool: self.clone(),
            tenant: grant.tenant,
            tokens: grant.tokens,
            prompt_cost: grant.prompt_cost,
            completion_charged: 0,
            since: Instant::now(),
            rank: grant.rank,
            engine_slot: grant.engine_slot,
        }
    }

    /// Sends grants outside the lock; a waiter that vanished gives its slot straight back.
    fn send(self: &Arc<Self>, mut grants: Vec<Dispatched>) {
        while !grants.is_empty() {
            let mut returned = Vec::new();
            for (tx, grant) in grants.drain(..) {
                match tx.send(grant) {
                    Ok(()) => {
                        self.admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(grant) => returned.push(grant),
                }
            }
            if returned.is_empty() {
                return;
            }
            let mut g = self.lock();
            for r in returned {
                g.unaccount(r.tenant, r.prompt_cost);
                g.release(r.tenant, r.tokens, r.engine_slot);
            }
            grants = g.dispatch();
        }
    }

    /// Live state of the pool and every tenant it has seen.
    pub fn state(&self) -> PoolState {
        let g = self.lock();
        let now = g.now_sec();
        let views: Vec<TenantView> = g.queue.tenants().collect();
        let sums: Vec<u64> = views
            .iter()
            .map(|v| {
                g.queue
                    .tenant_id(&v.name)
                    .and_then(|t| g.windows.get(&t))
                    .map_or(0, |w| w.sum(now))
            })
            .collect();
        let total: u64 = sums.iter().sum();
        PoolState {
            name: self.name.clone(),
            mode: g.cfg.mode,
            max_in_flight: g.cfg.max_in_flight,
            max_tokens_in_flight: g.cfg.max_tokens_in_flight,
            in_flight: g.in_flight,
            tokens_in_flight: g.tokens_in_flight,
            queued: g.queue.len(),
            headroom: g.headroom(),
            tenants: views
                .into_iter()
                .zip(sums)
                .map(|(view, s)| TenantState {
                    view,
                    service_last_minute: s,
                    share_last_minute: if total == 0 {
                        0.0
                    } else {
                        s as f64 / total as f64
                    },
                })
                .collect(),
        }
    }

    /// Service delivered by this replica since the last call, per tenant, for publishing to
    /// the other replicas.
    pub fn take_local_service(&self) -> Vec<(Arc<str>, i64)> {
        let mut g = self.lock();
        let taken = std::mem::take(&mut g.unpublished);
        taken
            .into_iter()
            .filter(|(_, c)| *c != 0)
            .map(|(t, c)| (g.queue.name(t).clone(), c))
            .collect()
    }

    /// Charges service that other replicas delivered (negative: refunded), so local dispatch
    /// sees global service.
    pub fn absorb_remote_service(&self, tenant: &str, weight: u32, cost: i64) {
        let mut g = self.lock();
        let t = match g.queue.tenant_id(tenant) {
            Some(t) => t,
            None => g.queue.set_tenant(tenant, weight, None, weight),
        };
        if cost >= 0 {
            g.queue.charge(t, cost.unsigned_abs());
        } else {
            g.queue.refund(t, cost.unsigned_abs());
        }
    }
}

/// Takes a grant that may be in flight to a waiter that is leaving. Closing first makes the
/// outcome definite: a send racing with this either lands before the close (and is taken
/// here) or fails (and the sender gives the slot back).
fn close_and_take(rx: &mut oneshot::Receiver<Grant>) -> Option<Grant> {
    rx.close();
    rx.try_recv().ok()
}

/// Removes a waiter whose future was dropped while queued.
struct LeaveQueue<'a> {
    pool: &'a Arc<Pool>,
    ticket: Ticket,
    rx: Option<oneshot::Receiver<Grant>>,
    armed: bool,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // If it was granted just before the caller left, the grant sits in the receiver being
        // dropped with this future; the receiver's drop does not release it, so do it here.
        let removed = self.pool.lock().queue.remove(self.ticket);
        if removed.is_none() {
            if let Some(rx) = self.rx.as_mut() {
                if let Some(grant) = close_and_take(rx) {
                    drop(self.pool.permit(grant, true));
                }
            }
        }
    }
}

impl Inner {
    fn clamp_tokens(&self, tokens: u64) -> u64 {
        // A request larger than the whole token bound could never run; let it run alone.
        self.cfg
            .max_tokens_in_flight
            .map_or(tokens, |m| tokens.min(m))
    }

    /// Room for one more request of `tokens`. A request larger than the token bound (the
    /// bound may have shrunk since it queued) runs alone rather than blocking the queue.
    fn fits(&self, tokens: u64) -> bool {
        self.regular_in_flight() < self.cfg.max_in_flight
            && (self.in_flight == 0
                || self
                    .cfg
                    .max_tokens_in_flight
                    .is_none_or(|m| self.tokens_in_flight.saturating_add(tokens) <= m))
    }

    /// The output a queued request of `tenant` is expected to produce: its own limit, or the
    /// tenant's recent average when that is smaller (clients often ask for far more than they
    /// get).
    fn expected_output(&self, tenant: TenantId, max_output: u64) -> u64 {
        match self.out_ewma.get(&tenant) {
            Some(&avg) => max_output.min(avg.ceil() as u64),
            None => max_output,
        }
    }

    /// Folds a finished request into its tenant's output average and the pool's average cost,
    /// and re-sizes the short-first band.
    fn learn_length(&mut self, tenant: TenantId, output: u64, cost: u64) {
        let avg = self.out_ewma.entry(tenant).or_insert(output as f64);
        *avg = *avg * 0.8 + output as f64 * 0.2;
        self.cost_ewma = if self.cost_ewma == 0.0 {
            cost as f64
        } else {
            self.cost_ewma * 0.95 + cost as f64 * 0.05
        };
        self.set_band();
    }

    /// The short-first band: one average request's cost, in fair mode when enabled.
    fn set_band(&mut self) {
        let on = self.cfg.length_aware && self.cfg.mode == Mode::Fair;
        self.queue
            .set_band(if on { self.cost_ewma as u64 } else { 0 });
    }

    /// Requests in the pool's own slots (engine slots beyond the capacity not counted).
    fn regular_in_flight(&self) -> usize {
        self.in_flight.saturating_sub(self.engine_in_flight)
    }

    /// Slots kept for tenants below their share now (see [`Headroom`]).
    fn headroom(&self) -> usize {
        let cap = self.cfg.max_in_flight;
        if self.cfg.mode == Mode::Fifo {
            return 0;
        }
        match self.cfg.headroom {
            Headroom::Slots(n) => n.min(cap.saturating_sub(1)),
            // Engine slots beyond the capacity serve the same tenants, at no cost to the rest.
            Headroom::Auto => self.auto_headroom.saturating_sub(self.cfg.engine_extra),
        }
    }

    /// Whether `tenant`, below its fair share, may take one of the engines' slots beyond the
    /// pool's capacity (see [`PoolConfig::engine_extra`]); the token bound still holds.
    fn engine_room_for(&self, tenant: TenantId, tokens: u64) -> bool {
        let extra = self.cfg.engine_extra;
        extra > 0
            && self.cfg.mode == Mode::Fair
            && self.engine_in_flight < extra
            && self.cfg.max_tokens_in_flight.is_none_or(|m| {
                self.in_flight == 0 || self.tokens_in_flight.saturating_add(tokens) <= m
            })
            && self.below_share(tenant)
    }

    /// Whether `tenant` holds fewer slots than its fair share (see [`Inner::shares`]).
    fn below_share(&self, tenant: TenantId) -> bool {
        self.shares(tenant)
            .iter()
            .any(|&(t, share)| t == tenant && (self.queue.in_flight(t) as f64) < share)
    }

    /// The fair-share position of a request of `tenant`, which holds `held` slots besides it:
    /// how many whole fair shares of slots the tenant already holds (0: below its share),
    /// at most 9. Engines that schedule by priority run lower positions first.
    fn rank(&self, tenant: TenantId, held: usize) -> u8 {
        if !self.cfg.engine_priority || held == 0 {
            return 0;
        }
        let share = self
            .shares(tenant)
            .iter()
            .find(|x| x.0 == tenant)
            .map_or(0.0, |x| x.1);
        if share <= 0.0 {
            return 9;
        }
        (held as f64 / share).floor().min(9.0) as u8
    }

    /// Re-sizes [`Headroom::Auto`] from the tenants admitted recently, and forgets older ones.
    fn resize_headroom(&mut self) {
        let cap = self.cfg.max_in_flight;
        // "Recent" scales with how long requests hold a slot: a tenant that sends one stream
        // after another stays counted between its streams.
        let window =
            Duration::from_millis((self.hold_ewma_ms * 4.0) as u64).max(Duration::from_secs(10));
        let now = Instant::now();
        let recent = |t: Instant| now.saturating_duration_since(t) <= window;
        self.last_admitted.retain(|_, (t, _)| recent(*t));
        let (mut light, mut light_now) = (0, 0);
        for (&t, (_, b)) in &self.last_admitted {
            if b.is_some_and(recent) {
                light += 1;
                light_now += self.queue.in_flight(t);
            }
        }
        // Time-weighted average of the light tenants' requests in flight over a couple of
        // request lifetimes: many chat users who each send now and then need a few slots, not
        // one each; a group that just arrived is counted within a second or two.
        let dt = now.saturating_duration_since(self.light_at).as_secs_f64();
        let tau = (2.0 * self.hold_ewma_ms / 1e3).max(1.0);
        let a = 1.0 - (-dt / tau).exp();
        self.light_avg += a * (self.light_now as f64 - self.light_avg);
        self.light_at = now;
        self.light_now = light_now;
        let likely = (self.light_avg + 2.0 * self.light_avg.sqrt()).ceil() as usize;
        let need = likely.max(light_now + 1).min(light);
        self.auto_headroom = if cap < 4 || self.last_admitted.len() < 2 {
            0
        } else {
            need.clamp(1, (cap / 2).max(1))
        };
    }

    /// Room for one more request of `tenant`. With headroom `h`, tenants at or above their
    /// fair share together hold at most `capacity - h` slots; a tenant below its share may take
    /// any free slot. So the last `h` free slots wait for someone below their share, and a slot
    /// an interactive tenant holds counts as its own, not as headroom kept free.
    fn fits_for(&self, tenant: TenantId, tokens: u64) -> bool {
        if !self.fits(tokens) {
            return false;
        }
        let (cap, h) = (self.cfg.max_in_flight, self.headroom());
        if h == 0 || self.regular_in_flight() + h < cap {
            return true;
        }
        let shares = self.shares(tenant);
        let held = |t: TenantId| self.queue.in_flight(t);
        let at_or_over = |&(t, share): &(TenantId, f64)| held(t) as f64 >= share;
        if shares.iter().any(|x| x.0 == tenant && !at_or_over(x)) {
            return true;
        }
        let over: usize = shares
            .iter()
            .filter(|x| at_or_over(x))
            .map(|&(t, _)| held(t))
            .sum();
        over + 1 + h <= cap
    }

    /// Whether `tenant` may take a headroom slot now, ahead of queued work: there is headroom
    /// and the tenant holds less than its fair share.
    fn headroom_for(&self, tenant: TenantId) -> bool {
        self.headroom() > 0 && self.below_share(tenant)
    }

    /// Each present tenant's weighted share of the pool's slots. Present: active now, admitted
    /// within the headroom's window, or `asking`. Counting the recent ones matters: an
    /// interactive user is idle between its requests, and the flood beside it must not count
    /// as alone in that gap.
    fn shares(&self, asking: TenantId) -> Vec<(TenantId, f64)> {
        let mut present: Vec<TenantId> = self
            .last_admitted
            .keys()
            .copied()
            .chain(self.queue.active_tenants())
            .chain(std::iter::once(asking))
            .collect();
        present.sort_unstable();
        present.dedup();
        let total: u64 = present.iter().map(|&t| self.queue.weight(t)).sum();
        let cap = self.cfg.max_in_flight as f64;
        present
            .into_iter()
            .map(|t| (t, cap * self.queue.weight(t) as f64 / total.max(1) as f64))
            .collect()
    }

    /// Occupies a slot and charges the prompt estimate (VTC charges prefill at admission).
    /// `light`: the tenant had nothing else in flight, which is what an interactive user
    /// looks like; the automatic headroom counts such tenants.
    fn take(&mut self, tenant: TenantId, g: &Grant, light: bool) {
        let (tokens, prompt_cost) = (g.tokens, g.prompt_cost);
        if g.engine_slot {
            self.engine_in_flight += 1;
        }
        let now = Instant::now();
        let seen = self.last_admitted.entry(tenant).or_insert((now, None));
        seen.0 = now;
        // Only the latest admission says what the tenant looks like now: a flood's first
        // stream finds nothing in flight too, and must not keep a slot from the flood itself.
        seen.1 = light.then_some(now);
        self.resize_headroom();
        self.in_flight += 1;
        // Saturating: reservations come from client input (`max_tokens` up to u64::MAX).
        self.tokens_in_flight = self.tokens_in_flight.saturating_add(tokens);
        self.account(tenant, prompt_cost);
    }

    fn now_sec(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    fn account(&mut self, tenant: TenantId, cost: u64) {
        let sec = self.now_sec();
        self.queue.charge(tenant, cost);
        self.windows.entry(tenant).or_default().add(sec, cost);
        let u = self.unpublished.entry(tenant).or_default();
        *u = u.saturating_add(i64::try_from(cost).unwrap_or(i64::MAX));
    }

    /// Takes back service charged earlier, everywhere it was recorded.
    fn unaccount(&mut self, tenant: TenantId, cost: u64) {
        self.queue.refund(tenant, cost);
        if let Some(w) = self.windows.get_mut(&tenant) {
            w.remove(cost);
        }
        let u = self.unpublished.entry(tenant).or_default();
        *u = u.saturating_sub(i64::try_from(cost).unwrap_or(i64::MAX));
    }

    fn release(&mut self, tenant: TenantId, tokens: u64, engine_slot: bool) {
        if engine_slot {
            self.engine_in_flight = self.engine_in_flight.saturating_sub(1);
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.tokens_in_flight = self.tokens_in_flight.saturating_sub(tokens);
        self.queue.finish(tenant);
        self.resize_headroom();
    }

    /// Hands free slots to waiters in queue order. Head-of-line: when the next entry does not
    /// fit the token bound, nobody behind it jumps ahead (that would starve large requests).
    fn dispatch(&mut self) -> Vec<Dispatched> {
        let mut out = Vec::new();
        while let Some((tenant, w)) = self.queue.peek() {
            let engine_slot = if self.fits_for(tenant, w.tokens) {
                false
            } else if self.engine_room_for(tenant, w.tokens) {
                true
            } else {
                break;
            };
            let Some((tenant, w)) = self.queue.pop() else {
                break;
            };
            // `pop` already counts this request in flight.
            let held = self.queue.in_flight(tenant).saturating_sub(1);
            let grant = Grant {
                tenant,
                tokens: w.tokens,
                prompt_cost: w.prompt_cost,
                rank: self.rank(tenant, held),
                engine_slot,
            };
            self.take(tenant, &grant, held == 0);
            out.push((w.tx, grant));
        }
        out
    }

    fn retry_after(&self) -> Duration {
        let cap = self.cfg.max_in_flight.max(1) as f64;
        let rounds = (self.queue.len() as f64 / cap).ceil().max(1.0);
        let secs = (self.hold_ewma_ms * rounds / 1000.0).ceil();
        Duration::from_secs(secs.clamp(1.0, 60.0) as u64)
    }
}

/// A granted slot. Charges served tokens while held; frees the slot when dropped.
pub struct Permit {
    pool: Arc<Pool>,
    tenant: TenantId,
    tokens: u64,
    prompt_cost: u64,
    completion_charged: u64,
    since: Instant,
    rank: u8,
    engine_slot: bool,
    /// Waited in the queue (false: a slot was free, or a headroom or engine slot was, at once).
    queued: bool,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("pool", &self.pool.name)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl Permit {
    /// Whether the request waited in the queue for its slot (false: admitted at once).
    pub fn queued(&self) -> bool {
        self.queued
    }

    /// The request's fair-share position when admitted: how many whole fair shares of slots
    /// its tenant already held (0: below its share), at most 9; always 0 unless the pool's
    /// `engine_priority` is on.
    pub fn rank(&self) -> u8 {
        self.rank
    }

    /// Admitted into an engine slot beyond the pool's capacity: only a backend running the
    /// priority policy with room up to its `engine_max_seqs` may take it.
    pub fn engine_slot(&self) -> bool {
        self.engine_slot
    }

    /// Charges completion tokens as they are served (streams call this per chunk).
    pub fn add_completion_tokens(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        let mut g = self.pool.lock();
        let cost = n.saturating_mul(g.cfg.cost.output);
        g.account(self.tenant, cost);
        self.completion_charged = self.completion_charged.saturating_add(n);
    }

    /// Completion tokens charged so far.
    pub fn completion_tokens(&self) -> u64 {
        self.completion_charged
    }

    /// Corrects the charges to the real usage once it is known: the prompt estimate becomes
    /// the real prompt, and completion tokens not yet charged are charged.
    pub fn settle(&mut self, prompt_tokens: u64, completion_tokens: u64) {
        let mut g = self.pool.lock();
        let real_prompt = prompt_tokens.saturating_mul(g.cfg.cost.input);
        if real_prompt > self.prompt_cost {
            g.account(self.tenant, real_prompt - self.prompt_cost);
        } else {
            g.unaccount(self.tenant, self.prompt_cost - real_prompt);
        }
        self.prompt_cost = real_prompt;
        if completion_tokens > self.completion_charged {
            let cost =
                (completion_tokens - self.completion_charged).saturating_mul(g.cfg.cost.output);
            g.account(self.tenant, cost);
            self.completion_charged = completion_tokens;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let held_ms = self.since.elapsed().as_secs_f64() * 1000.0;
        let (grants, shrinking) = {
            let mut g = self.pool.lock();
            g.hold_ewma_ms = g.hold_ewma_ms * 0.9 + held_ms * 0.1;
            let cost = self
                .prompt_cost
                .saturating_add(self.completion_charged.saturating_mul(g.cfg.cost.output));
            g.learn_length(self.tenant, self.completion_charged, cost);
            let step = g.queue.group_delta(self.tenant, cost);
            g.step_ewma = if g.step_ewma == 0 {
                step
            } else {
                (g.step_ewma.saturating_mul(7).saturating_add(step)) / 8
            };
            g.release(self.tenant, self.tokens, self.engine_slot);
            // Still over a capacity that was lowered: whoever sizes the pool (the fleet's
            // lease) should hand the freed slot on now rather than at its next round.
            let shrinking = g.regular_in_flight() >= g.cfg.max_in_flight;
            (g.dispatch(), shrinking)
        };
        self.pool.send(grants);
        if shrinking {
            self.pool.demand.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(tenant: &str, secs: u64) -> AdmitRequest<'_> {
        AdmitRequest {
            tenant,
            weight: 1,
            group: None,
            group_weight: 1,
            priority: Priority::Interactive,
            tokens: 10,
            prompt_estimate: 5,
            max_queued: 100,
            deadline: Instant::now() + Duration::from_secs(secs),
        }
    }

    fn pool(n: usize) -> Arc<Pool> {
        Pool::new(
            "m",
            PoolConfig {
                max_in_flight: n,
                ..PoolConfig::default()
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn admits_at_once_while_there_is_room() {
        let p = pool(2);
        let a = p.admit(req("a", 1)).await.unwrap();
        let b = p.admit(req("a", 1)).await.unwrap();
        assert_eq!(p.in_flight(), 2);
        drop((a, b));
        assert_eq!(p.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_when_full_and_cancel_leaves_queue() {
        let p = pool(1);
        let held = p.admit(req("a", 1)).await.unwrap();
        let e = p.admit(req("b", 1)).await.unwrap_err();
        assert!(matches!(e, AdmitError::Timeout { .. }), "{e:?}");
        assert_eq!(p.queued(), 0);

        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.admit(req("b", 60)).await.map(drop) });
        tokio::task::yield_now().await;
        assert_eq!(p.queued(), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(p.queued(), 0);
        drop(held);
        assert_eq!(p.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn freed_slot_goes_to_the_tenant_behind_on_service() {
        let p = pool(1);
        let mut held = p.admit(req("heavy", 1)).await.unwrap();
        held.add_completion_tokens(1_000);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for name in ["heavy", "heavy", "light"] {
            let (p, order) = (p.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let permit = p.admit(req(name, 60)).await.unwrap();
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(permit);
            }));
            tokio::task::yield_now().await;
        }
        // The light tenant was lifted to heavy's counter on arrival (no banked credit), and
        // heavy's running stream keeps being charged while light waits.
        held.add_completion_tokens(1);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(order.lock().unwrap()[0], "light");
    }

    #[tokio::test(start_paused = true)]
    async fn tenant_queue_limit_and_pool_limit() {
        let p = Pool::new(
            "m",
            PoolConfig {
                max_in_flight: 1,
                max_queued: 2,
                ..PoolConfig::default()
            },
        );
        let _held = p.admit(req("a", 1)).await.unwrap();
        let mut r = req("a", 60);
        r.max_queued = 1;
        let p1 = p.clone();
        let r1 = r.clone();
        let _w = tokio::spawn(async move { p1.admit(r1).await.map(drop) });
        tokio::task::yield_now().await;
        let e = p.admit(r).await.unwrap_err();
        assert_eq!(e.reason(), "tenant_queue_full");
        let p2 = p.clone();
        let _w2 = tokio::spawn(async move { p2.admit(req("b", 60)).await.map(drop) });
        tokio::task::yield_now().await;
        let e = p.admit(req("c", 60)).await.unwrap_err();
        assert_eq!(e.reason(), "pool_queue_full");
    }

    #[tokio::test(start_paused = true)]
    async fn token_bound_limits_concurrency() {
        let p = Pool::new(
            "m",
            PoolConfig {
                max_in_flight: 10,
                max_tokens_in_flight: Some(25),
                ..PoolConfig::default()
            },
        );
        let a = p.admit(req("a", 1)).await.unwrap();
        let b = p.admit(req("a", 1)).await.unwrap();
        assert!(p.admit(req("a", 1)).await.is_err());
        drop(a);
        let c = p.admit(req("a", 1)).await.unwrap();
        drop((b, c));
    }

    /// `max_tokens = u64::MAX` from two clients at once: every token sum saturates instead of
    /// overflowing (which panics in debug builds, where this test runs).
    #[tokio::test(start_paused = true)]
    async fn huge_reservations_saturate() {
        for bound in [None, Some(u64::MAX), Some(1_000)] {
            let p = Pool::new(
                "m",
                PoolConfig {
                    max_in_flight: 4,
                    max_tokens_in_flight: bound,
                    ..PoolConfig::default()
                },
            );
            let mut r = req("a", 1);
            r.tokens = u64::MAX;
            r.prompt_estimate = u64::MAX;
            let mut a = p.admit(r.clone()).await.unwrap();
            let b = p.admit(r.clone()).await;
            a.add_completion_tokens(u64::MAX);
            a.add_completion_tokens(u64::MAX);
            a.settle(u64::MAX, u64::MAX);
            drop(b);
            drop(a);
            let b = p.admit(r).await.unwrap();
            drop(b);
            assert_eq!(p.in_flight(), 0);
        }
    }
}
