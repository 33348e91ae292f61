//! Rate limits per key and per tenant: token buckets for requests and tokens per minute, and
//! caps on requests in flight.
//!
//! The state lives behind the [`RateLimiter`] trait so a replicated deployment can swap in a
//! shared implementation; [`InProcessLimiter`] is the default. [`Limits`] is the async front the
//! gateway awaits: it waits (within a deadline) for buckets to refill or for a concurrency slot
//! to free up, and returns a [`LimitGuard`] that gives the slots back when dropped.
//!
//! Time is always passed in, so the arithmetic is testable without sleeping; the async front
//! reads tokio's clock so paused-time tests drive it too.

use fairgate_types::{OnLimit, RateLimits};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Buckets refill their whole capacity over this period.
const PERIOD: Duration = Duration::from_secs(60);
const PERIOD_NS: u128 = PERIOD.as_nanos();

/// How long a concurrency waiter sleeps before polling again when no release wakes it. Local
/// releases always notify; the poll only matters for a shared limiter released elsewhere.
pub const CONCURRENCY_POLL: Duration = Duration::from_millis(250);

/// `retry_after` reported for a limit that can never pass (a limit set to 0): the operator has
/// to raise it, so retrying soon is pointless.
pub const NEVER_RETRY_AFTER: Duration = PERIOD;

/// Scopes below this many entries are never swept on the request path.
const MIN_SWEEP_LEN: usize = 1024;

/// A token bucket of capacity C that refills continuously at C per minute.
///
/// State is integer: whole units plus the fraction of the next unit accumulated so far (in
/// units of 1/60e9 of a unit per nanosecond-of-capacity), so refill over many small steps loses
/// nothing to rounding. The level is always within `[0, C]`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: u64,
    level: u64,
    /// Refill numerator not yet worth a whole unit; always `< PERIOD_NS`.
    frac: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(capacity: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity,
            level: capacity,
            frac: 0,
            last: now,
        }
    }

    /// The bucket's capacity (its limit per minute).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Level and fraction after refilling up to `now`, without changing the bucket.
    fn peek(&self, now: Instant) -> (u64, u128) {
        if self.level >= self.capacity {
            return (self.capacity, 0);
        }
        // From any level, a whole period fills the bucket; capping here keeps the product small.
        let elapsed = now.saturating_duration_since(self.last).min(PERIOD);
        let num = self.frac + elapsed.as_nanos() * self.capacity as u128;
        let gained = num / PERIOD_NS;
        let level = (self.level as u128 + gained).min(self.capacity as u128) as u64;
        if level >= self.capacity {
            (self.capacity, 0)
        } else {
            (level, num % PERIOD_NS)
        }
    }

    /// Refill up to `now`. A `now` earlier than the last update (threads racing to the lock
    /// with slightly older clocks) refills nothing and does not move time backwards.
    pub fn refill(&mut self, now: Instant) {
        let (level, frac) = self.peek(now);
        self.level = level;
        self.frac = frac;
        if now > self.last {
            self.last = now;
        }
    }

    /// Whole units available at `now`.
    pub fn level(&self, now: Instant) -> u64 {
        self.peek(now).0
    }

    /// Whether the bucket is full at `now` (its state then carries no information).
    pub fn is_full(&self, now: Instant) -> bool {
        self.level(now) >= self.capacity
    }

    /// Time from the last refill until `n` units are available; zero if they already are.
    /// `n` must not exceed the capacity, and the capacity must not be 0.
    fn time_until(&self, n: u64) -> Duration {
        if self.level >= n || self.capacity == 0 {
            return Duration::ZERO;
        }
        let missing = (n - self.level) as u128 * PERIOD_NS - self.frac;
        let ns = missing.div_ceil(self.capacity as u128);
        Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
    }

    /// Take `n` units if the bucket holds them (after refilling to `now`); otherwise take
    /// nothing and return how long until it would.
    pub fn try_take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= n {
            self.level -= n;
            Ok(())
        } else {
            Err(self.time_until(n))
        }
    }

    /// Take `n` units, stopping at empty (used to charge actual usage that already happened).
    pub fn charge(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.level = self.level.saturating_sub(n);
    }

    /// Give `n` units back, stopping at full.
    pub fn refund(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.level = self.level.saturating_add(n).min(self.capacity);
        if self.level == self.capacity {
            self.frac = 0;
        }
    }

    /// Change the capacity live: the level is kept, clamped to the new capacity, so a raised
    /// limit does not hand out a free burst and a lowered one takes effect at once.
    pub fn set_capacity(&mut self, capacity: u64, now: Instant) {
        if capacity == self.capacity {
            return;
        }
        self.refill(now);
        self.capacity = capacity;
        if self.level >= capacity {
            self.level = capacity;
            self.frac = 0;
        }
    }
}

/// Who a limit applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitScope {
    Tenant(String),
    Key(String),
}

impl fmt::Display for LimitScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitScope::Tenant(name) => write!(f, "tenant `{name}`"),
            LimitScope::Key(id) => write!(f, "key `{id}`"),
        }
    }
}

/// Which limit stopped a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    Rpm,
    Tpm,
    Concurrency,
}

impl LimitKind {
    /// The policy field name: `rpm`, `tpm` or `max_concurrent`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Rpm => "rpm",
            LimitKind::Tpm => "tpm",
            LimitKind::Concurrency => "max_concurrent",
        }
    }
}

/// One request's demand: the limits of every scope it counts against (current values, so
/// policy changes apply on the next request) and its token estimate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitRequest {
    pub scopes: Vec<(LimitScope, RateLimits)>,
    /// Estimated tokens (prompt + completion) reserved from each TPM bucket.
    pub tokens: u64,
}

impl LimitRequest {
    /// True when no scope has any limit: nothing to take, nothing to track.
    pub fn is_unlimited(&self) -> bool {
        self.scopes.iter().all(|(_, limits)| limits.is_empty())
    }
}

/// Tokens taken from one scope's TPM bucket, to be reconciled with actual usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmHold {
    pub scope: LimitScope,
    /// The bucket's capacity when taken; recreates the bucket if it was evicted meanwhile.
    pub capacity: u64,
    /// Tokens currently charged for this request.
    pub charged: u64,
}

/// What a successful [`RateLimiter::try_acquire`] took. Fields are public so other
/// implementations can build one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// TPM buckets charged, with the amount.
    pub tpm: Vec<TpmHold>,
    /// Scopes a concurrency slot was taken from.
    pub slots: Vec<LimitScope>,
}

impl Grant {
    /// Nothing to reconcile and nothing to release.
    pub fn is_empty(&self) -> bool {
        self.tpm.is_empty() && self.slots.is_empty()
    }
}

/// Why a request cannot pass now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub limit: LimitKind,
    pub scope: LimitScope,
    /// The configured value of the limit.
    pub value: u64,
    /// Best estimate of how long until the request could pass; never zero.
    pub retry_after: Duration,
}

/// Outcome of one [`RateLimiter::try_acquire`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Granted(Grant),
    /// Over a limit now; waiting `retry_after` may help (for concurrency it is a poll interval:
    /// a release usually comes sooner and wakes waiters).
    Wait(Denied),
    /// A limit is 0: the request can never pass under the current policy.
    Never(Denied),
}

/// Rate-limit state, swappable for a shared implementation.
pub trait RateLimiter: Send + Sync + 'static {
    /// All-or-nothing over every scope: takes 1 request from each RPM bucket,
    /// `min(tokens, capacity)` from each TPM bucket and a concurrency slot from each capped
    /// scope, or takes nothing.
    ///
    /// Reserving at most the capacity lets a request bigger than a whole minute's allowance
    /// pass once the bucket is full, rather than never; reconciliation then charges the
    /// actual usage, emptying the bucket.
    fn try_acquire(&self, req: &LimitRequest, now: Instant) -> Verdict;

    /// Move each TPM bucket from the tokens charged so far to `actual_tokens` (refund or
    /// charge, clamped into `[0, capacity]`) and record the new charge in the grant, so a
    /// second call adjusts from the last value.
    fn reconcile(&self, grant: &mut Grant, actual_tokens: u64, now: Instant);

    /// Give back the grant's concurrency slots; called exactly once per grant.
    fn release(&self, grant: &Grant);

    /// Drop idle state (full buckets, no request in flight). Optional.
    fn sweep(&self, _now: Instant) {}
}

/// One scope's state. Buckets exist only for the limits the scope currently has.
#[derive(Debug)]
struct ScopeState {
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
    max_concurrent: Option<u32>,
    /// Slots held, counted even if the cap was removed meanwhile so releases stay balanced.
    in_use: u32,
}

impl ScopeState {
    fn new(limits: &RateLimits, now: Instant) -> ScopeState {
        ScopeState {
            rpm: limits.rpm.map(|c| TokenBucket::full(c, now)),
            tpm: limits.tpm.map(|c| TokenBucket::full(c, now)),
            max_concurrent: limits.max_concurrent,
            in_use: 0,
        }
    }

    /// Apply the current limits: buckets for removed limits go, new ones start full, changed
    /// ones keep their level (clamped).
    fn configure(&mut self, limits: &RateLimits, now: Instant) {
        fn apply(bucket: &mut Option<TokenBucket>, cap: Option<u64>, now: Instant) {
            match (bucket.as_mut(), cap) {
                (_, None) => *bucket = None,
                (Some(b), Some(c)) => b.set_capacity(c, now),
                (None, Some(c)) => *bucket = Some(TokenBucket::full(c, now)),
            }
        }
        apply(&mut self.rpm, limits.rpm, now);
        apply(&mut self.tpm, limits.tpm, now);
        self.max_concurrent = limits.max_concurrent;
    }

    fn is_idle(&self, now: Instant) -> bool {
        self.in_use == 0
            && self.rpm.as_ref().is_none_or(|b| b.is_full(now))
            && self.tpm.as_ref().is_none_or(|b| b.is_full(now))
    }

    /// Check every limit of this scope, and take from all of them only if all pass. With
    /// `take == false` only checks (used after another scope already failed, to find the
    /// longest wait).
    fn acquire(
        &mut self,
        scope: &LimitScope,
        tokens: u64,
        now: Instant,
        take: bool,
    ) -> Result<(), (Denied, bool)> {
        let mut worst: Option<(Denied, bool)> = None;
        let mut deny = |limit, value, retry_after: Option<Duration>| {
            // `None` marks a limit of 0: it never passes.
            let never = retry_after.is_none();
            let d = Denied {
                limit,
                scope: scope.clone(),
                value,
                retry_after: retry_after
                    .unwrap_or(NEVER_RETRY_AFTER)
                    .max(Duration::from_nanos(1)),
            };
            keep_worst(&mut worst, d, never);
        };
        if let Some(b) = self.rpm.as_mut() {
            b.refill(now);
            if b.capacity() == 0 {
                deny(LimitKind::Rpm, 0, None);
            } else if b.level(now) < 1 {
                deny(LimitKind::Rpm, b.capacity(), Some(b.time_until(1)));
            }
        }
        if let Some(b) = self.tpm.as_mut() {
            b.refill(now);
            let want = tokens.min(b.capacity());
            if b.capacity() == 0 {
                deny(LimitKind::Tpm, 0, None);
            } else if b.level(now) < want {
                deny(LimitKind::Tpm, b.capacity(), Some(b.time_until(want)));
            }
        }
        if let Some(cap) = self.max_concurrent {
            if cap == 0 {
                deny(LimitKind::Concurrency, 0, None);
            } else if self.in_use >= cap {
                deny(LimitKind::Concurrency, cap as u64, Some(CONCURRENCY_POLL));
            }
        }
        if let Some(w) = worst {
            return Err(w);
        }
        if take {
            // Checked above at the same `now`, so these cannot fail.
            if let Some(b) = self.rpm.as_mut() {
                b.charge(1, now);
            }
            if let Some(b) = self.tpm.as_mut() {
                let want = tokens.min(b.capacity());
                b.charge(want, now);
            }
            if self.max_concurrent.is_some() {
                self.in_use += 1;
            }
        }
        Ok(())
    }

    /// Undo a successful `acquire(.., take = true)` at the same `now`.
    fn undo(&mut self, tokens: u64, now: Instant) {
        if let Some(b) = self.rpm.as_mut() {
            b.refund(1, now);
        }
        if let Some(b) = self.tpm.as_mut() {
            let want = tokens.min(b.capacity());
            b.refund(want, now);
        }
        if self.max_concurrent.is_some() {
            self.in_use = self.in_use.saturating_sub(1);
        }
    }
}

#[derive(Debug)]
struct Table {
    scopes: HashMap<LimitScope, ScopeState>,
    /// Sweep on the request path when the table grows past this, so idle scopes cannot pile
    /// up without a background task; doubles with the live size to keep the cost amortized.
    sweep_at: usize,
}

/// The default [`RateLimiter`]: all state in one process, behind one mutex that is never held
/// across an await.
#[derive(Debug)]
pub struct InProcessLimiter {
    table: Mutex<Table>,
}

impl Default for InProcessLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessLimiter {
    pub fn new() -> InProcessLimiter {
        InProcessLimiter {
            table: Mutex::new(Table {
                scopes: HashMap::new(),
                sweep_at: MIN_SWEEP_LEN,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The state stays consistent under panic (every mutation is a few integer updates),
        // so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For inspection and tests: the units left in a scope's RPM/TPM bucket at `now`, or the
    /// concurrency slots in use; `None` when the scope has no such state.
    pub fn level(&self, scope: &LimitScope, kind: LimitKind, now: Instant) -> Option<u64> {
        let table = self.lock();
        let state = table.scopes.get(scope)?;
        match kind {
            LimitKind::Rpm => state.rpm.as_ref().map(|b| b.level(now)),
            LimitKind::Tpm => state.tpm.as_ref().map(|b| b.level(now)),
            LimitKind::Concurrency => Some(state.in_use as u64),
        }
    }

    /// Number of scopes with state.
    pub fn len(&self) -> usize {
        self.lock().scopes.len()
    }

    /// True when no scope has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep_table(table: &mut Table, now: Instant) {
        table.scopes.retain(|_, s| !s.is_idle(now));
        table.sweep_at = (table.scopes.len() * 2).max(MIN_SWEEP_LEN);
    }
}

impl RateLimiter for InProcessLimiter {
    fn try_acquire(&self, req: &LimitRequest, now: Instant) -> Verdict {
        let mut table = self.lock();
        let table = &mut *table;
        if table.scopes.len() >= table.sweep_at {
            Self::sweep_table(table, now);
        }
        // Take scope by scope; on the first failure keep checking the rest (to report the
        // longest wait) and then undo what was taken. Taking as we go keeps a scope listed
        // twice exact.
        let mut failed: Option<(Denied, bool)> = None;
        let mut taken = 0;
        for (scope, limits) in &req.scopes {
            if limits.is_empty() {
                continue;
            }
            let state = match table.scopes.get_mut(scope) {
                Some(s) => {
                    s.configure(limits, now);
                    s
                }
                None => table
                    .scopes
                    .entry(scope.clone())
                    .or_insert_with(|| ScopeState::new(limits, now)),
            };
            match state.acquire(scope, req.tokens, now, failed.is_none()) {
                Ok(()) if failed.is_none() => taken += 1,
                Ok(()) => {}
                Err((d, never)) => keep_worst(&mut failed, d, never),
            }
        }
        if let Some((denied, never)) = failed {
            // Taking stopped at the first failure, so exactly the first `taken` limited scopes
            // were taken from, under the limits `configure` just applied.
            let limited = req.scopes.iter().filter(|(_, l)| !l.is_empty());
            for (scope, _) in limited.take(taken) {
                if let Some(state) = table.scopes.get_mut(scope) {
                    state.undo(req.tokens, now);
                }
            }
            return if never {
                Verdict::Never(denied)
            } else {
                Verdict::Wait(denied)
            };
        }
        let mut grant = Grant::default();
        for (scope, limits) in &req.scopes {
            if let Some(cap) = limits.tpm {
                grant.tpm.push(TpmHold {
                    scope: scope.clone(),
                    capacity: cap,
                    charged: req.tokens.min(cap),
                });
            }
            if limits.max_concurrent.is_some() {
                grant.slots.push(scope.clone());
            }
        }
        Verdict::Granted(grant)
    }

    fn reconcile(&self, grant: &mut Grant, actual_tokens: u64, now: Instant) {
        if grant.tpm.is_empty() {
            return;
        }
        let mut table = self.lock();
        for hold in &mut grant.tpm {
            if actual_tokens == hold.charged {
                continue;
            }
            match table.scopes.get_mut(&hold.scope) {
                Some(ScopeState { tpm: Some(b), .. }) => {
                    if actual_tokens < hold.charged {
                        b.refund(hold.charged - actual_tokens, now);
                    } else {
                        b.charge(actual_tokens - hold.charged, now);
                    }
                }
                // The TPM limit was removed since: nothing to charge.
                Some(ScopeState { tpm: None, .. }) => {}
                // The scope was evicted (its buckets had refilled completely). A refund into a
                // full bucket is a no-op; a charge recreates it full first.
                None => {
                    if actual_tokens > hold.charged {
                        let mut b = TokenBucket::full(hold.capacity, now);
                        b.charge(actual_tokens - hold.charged, now);
                        table.scopes.insert(
                            hold.scope.clone(),
                            ScopeState {
                                rpm: None,
                                tpm: Some(b),
                                max_concurrent: None,
                                in_use: 0,
                            },
                        );
                    }
                }
            }
            hold.charged = actual_tokens;
        }
    }

    fn release(&self, grant: &Grant) {
        if grant.slots.is_empty() {
            return;
        }
        let mut table = self.lock();
        for scope in &grant.slots {
            if let Some(state) = table.scopes.get_mut(scope) {
                state.in_use = state.in_use.saturating_sub(1);
                // A scope with only a concurrency cap carries nothing once its slots are back.
                if state.in_use == 0 && state.rpm.is_none() && state.tpm.is_none() {
                    table.scopes.remove(scope);
                }
            }
        }
    }

    fn sweep(&self, now: Instant) {
        Self::sweep_table(&mut self.lock(), now);
    }
}

/// Keep the worse of two denials: a limit that never passes beats any wait, otherwise the
/// longer wait wins (the request cannot pass before it).
fn keep_worst(worst: &mut Option<(Denied, bool)>, d: Denied, never: bool) {
    let replace = match worst {
        None => true,
        Some((w, w_never)) => {
            (never && !*w_never) || (never == *w_never && d.retry_after > w.retry_after)
        }
    };
    if replace {
        *worst = Some((d, never));
    }
}

/// Why [`Limits::acquire`] refused a request; maps to HTTP 429 with `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{scope} is {} ({} = {value})", phrase(*.limit), .limit.as_str())]
pub struct LimitError {
    pub limit: LimitKind,
    pub scope: LimitScope,
    /// The configured value of the limit.
    pub value: u64,
    /// Best estimate of when a retry could pass; never zero.
    pub retry_after: Duration,
    /// Whether the request waited before giving up.
    pub waited: bool,
}

fn phrase(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::Rpm => "over its requests-per-minute limit",
        LimitKind::Tpm => "over its tokens-per-minute limit",
        LimitKind::Concurrency => "at its limit of requests in flight",
    }
}

impl LimitError {
    /// The error for a denial, after waiting or not.
    pub fn new(d: Denied, waited: bool) -> LimitError {
        LimitError {
            limit: d.limit,
            scope: d.scope,
            value: d.value,
            retry_after: d.retry_after,
            waited,
        }
    }
}

struct Shared {
    limiter: Arc<dyn RateLimiter>,
    /// Wakes waiters when slots are released or tokens refunded.
    notify: Notify,
}

/// The async front the gateway uses: waits for limits within a deadline. Cheap to clone.
#[derive(Clone)]
pub struct Limits {
    shared: Arc<Shared>,
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits").finish_non_exhaustive()
    }
}

impl Limits {
    /// Limits kept in this process.
    pub fn in_process() -> Limits {
        Limits::new(Arc::new(InProcessLimiter::new()))
    }

    /// Limits backed by any [`RateLimiter`].
    pub fn new(limiter: Arc<dyn RateLimiter>) -> Limits {
        Limits {
            shared: Arc::new(Shared {
                limiter,
                notify: Notify::new(),
            }),
        }
    }

    /// The limiter behind this front.
    pub fn limiter(&self) -> &Arc<dyn RateLimiter> {
        &self.shared.limiter
    }

    /// Drop idle scope state; for a periodic housekeeping task.
    pub fn sweep(&self) {
        self.shared
            .limiter
            .sweep(tokio::time::Instant::now().into_std());
    }

    /// Waits for the limits to allow the request, up to `deadline`; with [`OnLimit::Reject`]
    /// returns the error at once instead of waiting. A limit of 0 fails at once either way.
    ///
    /// Cancel-safe: nothing is held across an await, so dropping the future takes nothing.
    /// After the deadline the error carries the last estimate of when a retry could pass.
    pub async fn acquire(
        &self,
        req: LimitRequest,
        deadline: tokio::time::Instant,
        on_limit: OnLimit,
    ) -> Result<LimitGuard, LimitError> {
        if req.is_unlimited() {
            // Fast path: no lock, no allocation.
            return Ok(self.guard(Grant::default()));
        }
        let mut waited = false;
        loop {
            // Register for release notifications before checking, so a release between the
            // check and the wait is not missed.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = tokio::time::Instant::now();
            let denied = match self.shared.limiter.try_acquire(&req, now.into_std()) {
                Verdict::Granted(grant) => return Ok(self.guard(grant)),
                Verdict::Never(d) => return Err(LimitError::new(d, waited)),
                Verdict::Wait(d) => d,
            };
            if on_limit == OnLimit::Reject || now >= deadline {
                return Err(LimitError::new(denied, waited));
            }
            waited = true;
            let wake = now
                .checked_add(denied.retry_after)
                .map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn guard(&self, grant: Grant) -> LimitGuard {
        LimitGuard {
            shared: self.shared.clone(),
            grant,
        }
    }
}

/// Rate-limit slots held by one admitted request. Call [`LimitGuard::reconcile`] with the
/// actual tokens when they are known; dropping the guard releases concurrency slots.
pub struct LimitGuard {
    shared: Arc<Shared>,
    grant: Grant,
}

impl fmt::Debug for LimitGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitGuard")
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

impl LimitGuard {
    /// Charge the TPM buckets the actual tokens instead of the estimate. Calling it again
    /// adjusts from the last value.
    pub fn reconcile(&mut self, actual_tokens: u64) {
        if self.grant.tpm.is_empty() {
            return;
        }
        let refund = self.grant.tpm.iter().any(|h| actual_tokens < h.charged);
        self.shared.limiter.reconcile(
            &mut self.grant,
            actual_tokens,
            tokio::time::Instant::now().into_std(),
        );
        if refund {
            // Waiters estimated their wait without these tokens; let them re-check.
            self.shared.notify.notify_waiters();
        }
    }

    /// What was taken.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        if self.grant.is_empty() {
            return;
        }
        self.shared.limiter.release(&self.grant);
        if !self.grant.slots.is_empty() {
            self.shared.notify.notify_waiters();
        }
    }
}
