//! Rate limits and budgets held across the fleet (issue 13, part 3): with `[cluster]`, a
//! tenant's or key's RPM/TPM buckets, concurrency cap and budget accounts live in Redis, so a
//! limit of 10 requests a minute is 10 for the whole fleet, not 10 per replica.
//!
//! - **One round trip, or none.** A request whose tenant and key have no limits and no budgets
//!   never touches Redis. Otherwise one Lua script ([`ACQUIRE`]) checks every budget line and
//!   every limit and takes from all of them or from none: budgets reserve the request's
//!   estimate, RPM takes 1, TPM the estimate, a concurrency cap one slot. Settling (actual
//!   usage, TPM reconciled, slot given back) is one more script, run off the request path.
//! - **Reservations belong to a member** (`replica#epoch`): budget reservations and
//!   concurrency slots are per-member hash fields, so a replica killed with `kill -9` has them
//!   reclaimed by the next request of any replica once the member is gone from the membership
//!   (`member_ttl_ms`), with the same rule as capacity leases: only a member itself present for
//!   a whole TTL may reclaim (after a Redis outage everyone looks silent at first).
//! - **Seeded from the ledger.** Each request passes the spend this replica last knew for each
//!   budget line (from PostgreSQL at start, then from Redis's replies); an account's spent never
//!   drops below it, so a Redis that lost its data comes back with the ledger's figure.
//! - **Redis down** (the cluster's last call failed, or this one did within
//!   `redis_timeout_ms`): the request is checked against this replica's own state, with each
//!   rate limit divided by the number of live replicas last seen (each replica keeps its part);
//!   budgets against the spend last seen from Redis plus what this replica settles meanwhile,
//!   so during an outage a budget can be overspent by what the *other* replicas spend. The
//!   next request after Redis answers again is global again, and every replica then reloads
//!   its floors from the ledger, which holds what was spent during the outage (and, if Redis
//!   lost its data, before it).
//! - **Hard caps mid-stream**: a stream that outgrows its reservation may grow into what its
//!   budget line had left when it was admitted (known from the reply), without another round
//!   trip; concurrent streams that all outgrow their reservations can together overshoot by
//!   what each of them outgrew, and what was used is charged in full at settlement.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fairgate_admission::budget::{
    merge_lines, next_period_start, period_start, BudgetExceeded, BudgetScope, CapKind, Spend,
};
use fairgate_admission::limits::{
    Denied, LimitError, LimitKind, LimitScope, CONCURRENCY_POLL, NEVER_RETRY_AFTER,
};
use fairgate_cluster::{Cluster, ClusterError};
use fairgate_types::{now_millis, Budget, BudgetPeriod, Micros, OnLimit, RateLimits};
use tokio::time::Instant;

/// How often settlements that failed (Redis down) are retried.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Settlements kept for Redis at most (about 100 bytes each).
const MAX_PENDING: usize = 100_000;

/// KEYS: members zset, presence hash, then one key per budget line, then a bucket key and a
/// slots key per limited scope. ARGV: member, ttl ms, lines, scopes, min tokens, min cost,
/// estimated tokens, estimated cost; then per line: tokens cap, cost cap (-1: none), the
/// spend this replica knows (tokens, cost), the account's expiry (unix ms); then per scope:
/// rpm, tpm, max concurrent (-1: none), tokens for TPM.
///
/// Returns `{'ok', per line: held tokens, held cost, spent tokens, spent cost, left tokens,
/// left cost (-1: unbounded)}`, `{'budget', line, 'tokens'|'cost', cap, spent, reserved}` or
/// `{'limit', scope, 'rpm'|'tpm'|'max_concurrent', value, retry ms, never}`.
///
/// Buckets refill their capacity over 60 s, as the in-process limiter's; a bucket key expires
/// when untouched for 120 s (it is full by then, which is what a missing key means), a slots
/// hash after an hour (any acquire or release refreshes it).
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, ttl = ARGV[1], tonumber(ARGV[2])
local nb, nl = tonumber(ARGV[3]), tonumber(ARGV[4])
local min_t, min_c = tonumber(ARGV[5]), tonumber(ARGV[6])
local want_t, want_c = math.max(tonumber(ARGV[7]), min_t), math.max(tonumber(ARGV[8]), min_c)
local since = tonumber(redis.call('HGET', KEYS[2], me) or now)
local may_reclaim = now - since >= ttl
local function live(m)
  if m == me or not may_reclaim then return true end
  local seen = redis.call('ZSCORE', KEYS[1], m)
  return seen ~= false and tonumber(seen) >= now - ttl
end
local lines, a = {}, 9
for i = 1, nb do
  local key = KEYS[2 + i]
  local tcap, ccap = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local floor_t, floor_c = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local exp = ARGV[a + 4]
  a = a + 5
  local st, sc, rt, rc = 0, 0, 0, 0
  local all = redis.call('HGETALL', key)
  for j = 1, #all, 2 do
    local f, v = all[j], tonumber(all[j + 1])
    if f == 'st' then st = v
    elseif f == 'sc' then sc = v
    elseif live(string.sub(f, 4)) then
      if string.sub(f, 1, 3) == 'rt:' then rt = rt + v else rc = rc + v end
    else
      redis.call('HDEL', key, f)
    end
  end
  if floor_t > st then st = floor_t; redis.call('HSET', key, 'st', st) end
  if floor_c > sc then sc = floor_c; redis.call('HSET', key, 'sc', sc) end
  if #all > 0 or floor_t > 0 or floor_c > 0 then redis.call('PEXPIREAT', key, exp) end
  local left_t, left_c = -1, -1
  if tcap >= 0 then
    left_t = math.max(0, tcap - st - rt)
    if left_t < min_t then return {'budget', i, 'tokens', tcap, st, rt} end
  end
  if ccap >= 0 then
    left_c = math.max(0, ccap - sc - rc)
    if left_c < min_c then return {'budget', i, 'cost', ccap, sc, rc} end
  end
  local take_t, take_c = want_t, want_c
  if left_t >= 0 then take_t = math.min(take_t, left_t) end
  if left_c >= 0 then take_c = math.min(take_c, left_c) end
  -- What the line has left after this reservation (-1: unbounded).
  if left_t >= 0 then left_t = left_t - take_t end
  if left_c >= 0 then left_c = left_c - take_c end
  lines[i] = {key, take_t, take_c, st, sc, left_t, left_c, exp}
end
-- Limits: all checked before any is taken; the longest wait is reported, a limit of 0 first.
local worst, buckets = nil, {}
local function deny(i, kind, value, retry, never)
  if worst == nil or (never == 1 and worst[6] == 0) or (never == worst[6] and retry > worst[5]) then
    worst = {'limit', i, kind, value, retry, never}
  end
end
local function level(key, lf, tf, cap)
  local l = tonumber(redis.call('HGET', key, lf) or cap)
  local ts = tonumber(redis.call('HGET', key, tf) or now)
  return math.min(cap, l + math.max(0, now - ts) * cap / 60000)
end
for i = 1, nl do
  local bkey, skey = KEYS[2 + nb + 2 * i - 1], KEYS[2 + nb + 2 * i]
  local rpm, tpm, conc, tokens = tonumber(ARGV[a]), tonumber(ARGV[a + 1]),
    tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  a = a + 4
  local b = {bkey, skey, nil, nil, 0, conc}
  if rpm >= 0 then
    local l = level(bkey, 'rl', 'rt', rpm)
    if rpm == 0 then deny(i, 'rpm', 0, 60000, 1)
    elseif l < 1 then deny(i, 'rpm', rpm, math.ceil((1 - l) * 60000 / rpm), 0) end
    b[3] = l - 1
  end
  if tpm >= 0 then
    local l = level(bkey, 'tl', 'tt', tpm)
    local want = math.min(tokens, tpm)
    if tpm == 0 then deny(i, 'tpm', 0, 60000, 1)
    elseif l < want then deny(i, 'tpm', tpm, math.ceil((want - l) * 60000 / tpm), 0) end
    b[4] = l - want
    b[5] = want
  end
  if conc >= 0 then
    local used = 0
    local all = redis.call('HGETALL', skey)
    for j = 1, #all, 2 do
      if live(all[j]) then used = used + tonumber(all[j + 1]) else redis.call('HDEL', skey, all[j]) end
    end
    if conc == 0 then deny(i, 'max_concurrent', 0, 60000, 1)
    elseif used >= conc then deny(i, 'max_concurrent', conc, 0, 0) end
  end
  buckets[i] = b
end
if worst then return worst end
local out = {'ok'}
for i = 1, nb do
  local l = lines[i]
  if l[2] > 0 then redis.call('HINCRBY', l[1], 'rt:' .. me, l[2]) end
  if l[3] > 0 then redis.call('HINCRBY', l[1], 'rc:' .. me, l[3]) end
  redis.call('PEXPIREAT', l[1], l[8])
  for k = 2, 7 do out[#out + 1] = l[k] end
end
for i = 1, nl do
  local b = buckets[i]
  if b[3] or b[4] then
    if b[3] then redis.call('HSET', b[1], 'rl', tostring(b[3]), 'rt', now) end
    if b[4] then redis.call('HSET', b[1], 'tl', tostring(b[4]), 'tt', now) end
    redis.call('PEXPIRE', b[1], 120000)
  end
  if b[6] >= 0 then
    redis.call('HINCRBY', b[2], me, 1)
    redis.call('PEXPIRE', b[2], 3600000)
  end
  out[#out + 1] = b[5]
end
return out
"#;

/// KEYS: per line the key it was held on and the current period's key; per scope its bucket
/// key and slots key. ARGV: member, lines, scopes, actual tokens, actual cost (-1: release
/// without charging); per line: held tokens, held cost, the current key's expiry; per scope:
/// tpm (-1: none), tokens charged, whether a slot is held (1/0).
const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, nb, nl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local act_t, act_c = tonumber(ARGV[4]), tonumber(ARGV[5])
local a = 6
for i = 1, nb do
  local hk, ck = KEYS[2 * i - 1], KEYS[2 * i]
  local ht, hc, exp = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2]
  a = a + 3
  if ht > 0 and redis.call('HINCRBY', hk, 'rt:' .. me, -ht) <= 0 then redis.call('HDEL', hk, 'rt:' .. me) end
  if hc > 0 and redis.call('HINCRBY', hk, 'rc:' .. me, -hc) <= 0 then redis.call('HDEL', hk, 'rc:' .. me) end
  if act_t >= 0 then
    redis.call('HINCRBY', ck, 'st', act_t)
    redis.call('HINCRBY', ck, 'sc', act_c)
    redis.call('PEXPIREAT', ck, exp)
  end
end
for i = 1, nl do
  local bkey, skey = KEYS[2 * nb + 2 * i - 1], KEYS[2 * nb + 2 * i]
  local tpm, charged, slot = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2]
  a = a + 3
  if tpm > 0 and act_t >= 0 and charged ~= act_t then
    local l = tonumber(redis.call('HGET', bkey, 'tl') or tpm)
    local ts = tonumber(redis.call('HGET', bkey, 'tt') or now)
    l = math.min(tpm, l + math.max(0, now - ts) * tpm / 60000)
    l = math.max(0, math.min(tpm, l + charged - act_t))
    redis.call('HSET', bkey, 'tl', tostring(l), 'tt', now)
    redis.call('PEXPIRE', bkey, 120000)
  end
  if slot == '1' and redis.call('HINCRBY', skey, me, -1) <= 0 then redis.call('HDEL', skey, me) end
end
return {'ok'}
"#;

/// KEYS: members zset, presence hash, one budget account. ARGV: member, ttl ms. Returns the
/// account's `{spent tokens, spent cost, reserved tokens, reserved cost}`, counting the
/// reservations of live members only (as [`ACQUIRE`] would).
const STATUS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, ttl = ARGV[1], tonumber(ARGV[2])
local since = tonumber(redis.call('HGET', KEYS[2], me) or now)
local may_reclaim = now - since >= ttl
local st, sc, rt, rc = 0, 0, 0, 0
local all = redis.call('HGETALL', KEYS[3])
for j = 1, #all, 2 do
  local f, v = all[j], tonumber(all[j + 1])
  if f == 'st' then st = v
  elseif f == 'sc' then sc = v
  else
    local m = string.sub(f, 4)
    local seen = redis.call('ZSCORE', KEYS[1], m)
    if m == me or not may_reclaim or (seen ~= false and tonumber(seen) >= now - ttl) then
      if string.sub(f, 1, 3) == 'rt:' then rt = rt + v else rc = rc + v end
    end
  end
end
return {st, sc, rt, rc}
"#;

/// Why the fleet refused a request, or could not be asked.
#[derive(Debug)]
pub enum QuotaError {
    Budget(BudgetExceeded),
    Limit(LimitError),
    /// Redis did not answer (or is known to be down): check locally instead.
    Unavailable,
}

/// One request's demand on the fleet's limits and budgets, for [`FleetQuota::acquire`].
pub struct QuotaAsk<'a> {
    pub budgets: &'a [(BudgetScope, Budget)],
    /// Per budget line, the spend this replica last knew (the account's floor).
    pub known: &'a (dyn Fn(&BudgetScope, BudgetPeriod) -> Spend + Sync),
    /// The least the request needs and its full estimate (see `BudgetStore::reserve`).
    pub min: Spend,
    pub est: Spend,
    pub limits: &'a [(LimitScope, RateLimits)],
    /// Tokens taken from each TPM bucket.
    pub tokens: u64,
    /// How long a limit may be waited for, when `on_limit` says wait.
    pub deadline: Instant,
    pub on_limit: OnLimit,
}

/// One budget line held in Redis.
#[derive(Clone, Debug)]
struct Line {
    scope: BudgetScope,
    period: BudgetPeriod,
    /// Key name (within the cluster prefix) it was reserved on.
    key: String,
    tokens_cap: Option<u64>,
    cost_cap: Option<Micros>,
    /// Held at admission; growth past it mid-stream is checked against `left`.
    reserved: Spend,
    /// Spent before this request, as Redis said at admission.
    spent: Spend,
    /// What the line had left after this request's reservation (`u64::MAX`: uncapped).
    left: Spend,
}

/// One limited scope held in Redis.
#[derive(Clone, Debug)]
struct Scope {
    bucket: String,
    slots: String,
    tpm: Option<u64>,
    charged: u64,
    slot: bool,
}

/// A settlement waiting for Redis.
#[derive(Clone, Debug)]
struct Settle {
    lines: Vec<Line>,
    scopes: Vec<Scope>,
    actual: Option<Spend>,
}

/// The fleet-wide limits and budgets of one replica.
pub struct FleetQuota {
    cluster: Arc<Cluster>,
    /// Settlements whose Redis call failed; retried until they land, since this member's
    /// reservations are never reclaimed while it lives.
    pending: Mutex<Vec<Settle>>,
    /// Settlements sent and not yet answered.
    inflight: AtomicUsize,
    /// Admission checks answered by Redis, and those made locally because it did not answer.
    fleet_checks: AtomicU64,
    local_checks: AtomicU64,
}

impl FleetQuota {
    pub fn new(cluster: Arc<Cluster>) -> Arc<FleetQuota> {
        Arc::new(FleetQuota {
            cluster,
            pending: Mutex::new(Vec::new()),
            inflight: AtomicUsize::new(0),
            fleet_checks: AtomicU64::new(0),
            local_checks: AtomicU64::new(0),
        })
    }

    /// Retries failed settlements until `shutdown`; spawn once per process.
    pub async fn run_retries(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY_EVERY) => {}
            }
            let todo = std::mem::take(&mut *self.pending_lock());
            for s in todo {
                if self.run_settle(&s).await.is_err() {
                    self.pending_lock().push(s);
                }
            }
        }
    }

    fn pending_lock(&self) -> std::sync::MutexGuard<'_, Vec<Settle>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admission checks so far: (answered by Redis, made locally).
    pub fn checks(&self) -> (u64, u64) {
        (
            self.fleet_checks.load(Ordering::Relaxed),
            self.local_checks.load(Ordering::Relaxed),
        )
    }

    /// Settlements not yet in Redis.
    pub fn pending(&self) -> usize {
        self.pending_lock().len()
    }

    /// How many replicas share a limit while Redis is down: the live members last seen.
    pub fn members(&self) -> u64 {
        (self.cluster.members().len() as u64).max(1)
    }

    /// Reserves budgets and takes limits for one request, fleet-wide, waiting for a limit up to
    /// `deadline` when `on_limit` says so. `known` gives, per budget line, the spend this
    /// replica last knew (the account's floor). Fails with [`QuotaError::Unavailable`] at once
    /// when Redis is known to be down, or when this call fails.
    pub async fn acquire(self: &Arc<Self>, ask: QuotaAsk<'_>) -> Result<FleetHold, QuotaError> {
        let r = self.acquire_inner(ask).await;
        let counter = match &r {
            Err(QuotaError::Unavailable) => &self.local_checks,
            _ => &self.fleet_checks,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        r
    }

    async fn acquire_inner(self: &Arc<Self>, ask: QuotaAsk<'_>) -> Result<FleetHold, QuotaError> {
        let QuotaAsk {
            budgets,
            known,
            min,
            est,
            limits,
            tokens,
            deadline,
            on_limit,
        } = ask;
        if !self.cluster.redis_up() {
            return Err(QuotaError::Unavailable);
        }
        let now_ms = now_millis();
        let held = merge_lines(budgets);
        let mut keys = vec!["members".to_owned(), "present".to_owned()];
        let mut args = vec![
            self.cluster.member_id().to_owned(),
            self.cluster.config().member_ttl.as_millis().to_string(),
            held.len().to_string(),
            limits.len().to_string(),
            min.tokens.to_string(),
            min.cost.0.to_string(),
            est.tokens.to_string(),
            est.cost.0.to_string(),
        ];
        let mut lines = Vec::with_capacity(held.len());
        for h in &held {
            let start = period_start(h.period, now_ms);
            let key = budget_key(&h.scope, h.period, start);
            let floor = known(&h.scope, h.period);
            keys.push(key.clone());
            args.push(h.tokens_cap.map_or(-1, |c| c as i64).to_string());
            args.push(h.cost_cap.map_or(-1, |c| c.0 as i64).to_string());
            args.push(floor.tokens.to_string());
            args.push(floor.cost.0.to_string());
            // Kept a day past the period's end, for the admin view of a period just ended.
            args.push((next_period_start(h.period, start).saturating_add(86_400_000)).to_string());
            lines.push(Line {
                scope: h.scope.clone(),
                period: h.period,
                key,
                tokens_cap: h.tokens_cap,
                cost_cap: h.cost_cap,
                reserved: Spend::ZERO,
                spent: Spend::ZERO,
                left: Spend::ZERO,
            });
        }
        let mut scopes = Vec::with_capacity(limits.len());
        for (scope, l) in limits {
            let (bucket, slots) = limit_keys(scope);
            keys.push(bucket.clone());
            keys.push(slots.clone());
            args.push(opt(l.rpm));
            args.push(opt(l.tpm));
            args.push(opt(l.max_concurrent.map(u64::from)));
            args.push(tokens.to_string());
            scopes.push(Scope {
                bucket,
                slots,
                tpm: l.tpm,
                charged: 0,
                slot: l.max_concurrent.is_some(),
            });
        }
        let mut waited = false;
        loop {
            let reply = self
                .cluster
                .run_script(ACQUIRE, &keys, &args)
                .await
                .map_err(|e: ClusterError| {
                    tracing::debug!(error = %e, "fleet quota: redis call failed, checking locally");
                    QuotaError::Unavailable
                })?;
            match reply.first().map(String::as_str) {
                Some("ok") => {
                    let n = |i: usize| reply.get(i).and_then(|v| v.parse::<i64>().ok());
                    for (i, line) in lines.iter_mut().enumerate() {
                        let at = 1 + 6 * i;
                        let get = |k: usize| n(at + k).unwrap_or(0).max(0) as u64;
                        let left = |k: usize| match n(at + k) {
                            Some(v) if v >= 0 => v as u64,
                            _ => u64::MAX,
                        };
                        line.reserved = Spend::new(get(0), Micros(get(1)));
                        line.spent = Spend::new(get(2), Micros(get(3)));
                        line.left = Spend::new(left(4), Micros(left(5)));
                    }
                    let at = 1 + 6 * lines.len();
                    for (i, s) in scopes.iter_mut().enumerate() {
                        s.charged = n(at + i).unwrap_or(0).max(0) as u64;
                    }
                    return Ok(FleetHold {
                        quota: self.clone(),
                        lines,
                        scopes,
                        done: false,
                    });
                }
                Some("budget") => {
                    let i = field(&reply, 1).saturating_sub(1) as usize;
                    let line = lines.get(i).ok_or(QuotaError::Unavailable)?;
                    let start = period_start(line.period, now_ms);
                    return Err(QuotaError::Budget(BudgetExceeded {
                        scope: line.scope.clone(),
                        period: line.period,
                        cap: if reply.get(2).map(String::as_str) == Some("cost") {
                            CapKind::Cost
                        } else {
                            CapKind::Tokens
                        },
                        limit: field(&reply, 3),
                        spent: field(&reply, 4),
                        reserved: field(&reply, 5),
                        resets_at: next_period_start(line.period, start),
                    }));
                }
                Some("limit") => {
                    let i = field(&reply, 1).saturating_sub(1) as usize;
                    let (scope, _) = limits.get(i).ok_or(QuotaError::Unavailable)?;
                    let limit = match reply.get(2).map(String::as_str) {
                        Some("rpm") => LimitKind::Rpm,
                        Some("tpm") => LimitKind::Tpm,
                        _ => LimitKind::Concurrency,
                    };
                    let never = field(&reply, 5) == 1;
                    let retry = match (never, limit) {
                        (true, _) => NEVER_RETRY_AFTER,
                        // A slot frees when a request anywhere in the fleet ends; poll.
                        (false, LimitKind::Concurrency) => CONCURRENCY_POLL,
                        (false, _) => Duration::from_millis(field(&reply, 4).max(1)),
                    };
                    let denied = Denied {
                        limit,
                        scope: scope.clone(),
                        value: field(&reply, 3),
                        retry_after: retry,
                    };
                    let now = Instant::now();
                    if never || on_limit == OnLimit::Reject || now >= deadline {
                        return Err(QuotaError::Limit(LimitError::new(denied, waited)));
                    }
                    waited = true;
                    let wake = now.checked_add(retry).map_or(deadline, |t| t.min(deadline));
                    tokio::time::sleep_until(wake).await;
                }
                _ => return Err(QuotaError::Unavailable),
            }
        }
    }

    /// A budget account as the fleet has it now: (spent, reserved) in the current period;
    /// `None` when Redis does not answer. For the admin view.
    pub async fn status(
        &self,
        scope: &BudgetScope,
        period: BudgetPeriod,
    ) -> Option<(Spend, Spend)> {
        if !self.cluster.redis_up() {
            return None;
        }
        let key = budget_key(scope, period, period_start(period, now_millis()));
        let keys = ["members".to_owned(), "present".to_owned(), key];
        let args = [
            self.cluster.member_id().to_owned(),
            self.cluster.config().member_ttl.as_millis().to_string(),
        ];
        let r = self.cluster.run_script(STATUS, &keys, &args).await.ok()?;
        let n = |i: usize| field(&r, i);
        Some((
            Spend::new(n(0), Micros(n(1))),
            Spend::new(n(2), Micros(n(3))),
        ))
    }

    async fn run_settle(&self, s: &Settle) -> Result<(), ClusterError> {
        let now_ms = now_millis();
        let mut keys = Vec::with_capacity(2 * (s.lines.len() + s.scopes.len()));
        let mut args = vec![
            self.cluster.member_id().to_owned(),
            s.lines.len().to_string(),
            s.scopes.len().to_string(),
            s.actual.map_or(-1, |a| a.tokens as i64).to_string(),
            s.actual.map_or(-1, |a| a.cost.0 as i64).to_string(),
        ];
        for l in &s.lines {
            // Usage counts in the period current when it settles (as in-process budgets do).
            let start = period_start(l.period, now_ms);
            keys.push(l.key.clone());
            keys.push(budget_key(&l.scope, l.period, start));
            args.push(l.reserved.tokens.to_string());
            args.push(l.reserved.cost.0.to_string());
            args.push((next_period_start(l.period, start).saturating_add(86_400_000)).to_string());
        }
        for sc in &s.scopes {
            keys.push(sc.bucket.clone());
            keys.push(sc.slots.clone());
            args.push(opt(sc.tpm));
            args.push(sc.charged.to_string());
            args.push(if sc.slot { "1" } else { "0" }.to_owned());
        }
        self.cluster
            .run_script(SETTLE, &keys, &args)
            .await
            .map(|_| ())
    }

    fn queue(&self, s: Settle) {
        let mut pending = self.pending_lock();
        if pending.len() >= MAX_PENDING {
            // A very long outage: the ledger in PostgreSQL still has every request, and seeds
            // the accounts again at the next period.
            tracing::warn!(
                "fleet quota: too many settlements waiting for Redis; dropping the oldest"
            );
            pending.remove(0);
        }
        pending.push(s);
    }

    fn submit(self: &Arc<Self>, s: Settle) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.queue(s);
            return;
        };
        let me = self.clone();
        self.inflight.fetch_add(1, Ordering::AcqRel);
        rt.spawn(async move {
            if me.run_settle(&s).await.is_err() {
                me.queue(s);
            }
            me.inflight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// At shutdown, after the last request ended: lands every settlement still on its way (or
    /// waiting for Redis) within `limit`, so a replica stopped with SIGTERM leaves nothing
    /// reserved behind. What cannot land is released by the others when this member is gone.
    pub async fn flush(&self, limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            let todo = std::mem::take(&mut *self.pending_lock());
            for s in todo {
                if self.run_settle(&s).await.is_err() {
                    self.pending_lock().push(s);
                }
            }
            if self.pending_lock().is_empty() && self.inflight.load(Ordering::Acquire) == 0 {
                return;
            }
            if Instant::now() >= until {
                tracing::warn!(
                    pending = self.pending(),
                    "fleet quota: settlements not landed at shutdown; the others release them once this replica is gone"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What one request holds in Redis. Settle it with the actual usage; dropping it unsettled
/// (a request refused later, or cancelled) releases the reservations and slots and charges
/// nothing.
pub struct FleetHold {
    quota: Arc<FleetQuota>,
    lines: Vec<Line>,
    scopes: Vec<Scope>,
    done: bool,
}

impl std::fmt::Debug for FleetHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetHold")
            .field("lines", &self.lines)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl FleetHold {
    /// Per budget line: scope, period, period start and the spend Redis reported (before this
    /// request), so the replica's local view follows the fleet's.
    pub fn seen(&self) -> impl Iterator<Item = (&BudgetScope, BudgetPeriod, Spend)> {
        self.lines.iter().map(|l| (&l.scope, l.period, l.spent))
    }

    /// Mid-stream, for hard caps: grow the hold to cover `so_far`, within what each line had
    /// left at admission. `Err` means the answer must stop here.
    pub fn extend(&self, so_far: Spend) -> Result<(), BudgetExceeded> {
        for l in &self.lines {
            let more = so_far.saturating_sub(l.reserved);
            let over_t = l.tokens_cap.is_some() && more.tokens > l.left.tokens;
            let over_c = l.cost_cap.is_some() && more.cost.0 > l.left.cost.0;
            if over_t || over_c {
                let (cap, limit, spent, reserved) = if over_t {
                    let c = l.tokens_cap.unwrap_or(u64::MAX);
                    (CapKind::Tokens, c, l.spent.tokens, so_far.tokens)
                } else {
                    let c = l.cost_cap.map_or(u64::MAX, |c| c.0);
                    (CapKind::Cost, c, l.spent.cost.0, so_far.cost.0)
                };
                return Err(BudgetExceeded {
                    scope: l.scope.clone(),
                    period: l.period,
                    cap,
                    limit,
                    spent,
                    reserved,
                    resets_at: next_period_start(l.period, period_start(l.period, now_millis())),
                });
            }
        }
        Ok(())
    }

    /// End of request: release what was held, charge `actual` to every budget line (even past
    /// its cap: the usage happened) and correct the TPM buckets to it. Off the request path.
    pub fn settle(mut self, actual: Spend) {
        self.done = true;
        if self.lines.is_empty() && self.scopes.is_empty() {
            return;
        }
        let s = Settle {
            lines: std::mem::take(&mut self.lines),
            scopes: std::mem::take(&mut self.scopes),
            actual: Some(actual),
        };
        self.quota.submit(s);
    }
}

impl Drop for FleetHold {
    fn drop(&mut self) {
        if self.done || (self.lines.is_empty() && self.scopes.is_empty()) {
            return;
        }
        let s = Settle {
            lines: std::mem::take(&mut self.lines),
            scopes: std::mem::take(&mut self.scopes),
            actual: None,
        };
        self.quota.submit(s);
    }
}

/// A rate limit divided among `n` replicas, for local checks while Redis is down: each keeps
/// its part (rounded up, so a limit of 1 stays usable).
pub fn local_part(l: RateLimits, n: u64) -> RateLimits {
    let part = |v: u64| if v == 0 { 0 } else { v.div_ceil(n.max(1)) };
    RateLimits {
        rpm: l.rpm.map(part),
        tpm: l.tpm.map(part),
        max_concurrent: l
            .max_concurrent
            .map(|c| part(u64::from(c)).min(u64::from(u32::MAX)) as u32),
    }
}

fn scope_name(scope_kind: &str, name: &str) -> String {
    format!("{scope_kind}:{name}")
}

fn budget_key(scope: &BudgetScope, period: BudgetPeriod, start: i64) -> String {
    let s = match scope {
        BudgetScope::Tenant(t) => scope_name("t", t),
        BudgetScope::Key(k) => scope_name("k", k),
    };
    let p = match period {
        BudgetPeriod::Day => "d",
        BudgetPeriod::Month => "m",
    };
    format!("quota:budget:{s}:{p}:{start}")
}

fn limit_keys(scope: &LimitScope) -> (String, String) {
    let s = match scope {
        LimitScope::Tenant(t) => scope_name("t", t),
        LimitScope::Key(k) => scope_name("k", k),
    };
    (format!("quota:bucket:{s}"), format!("quota:slots:{s}"))
}

fn opt(v: Option<u64>) -> String {
    v.map_or(-1, |v| v.min(i64::MAX as u64) as i64).to_string()
}

fn field(reply: &[String], i: usize) -> u64 {
    reply
        .get(i)
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v.max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_part_divides_rounding_up_and_keeps_zero() {
        let l = RateLimits {
            rpm: Some(10),
            tpm: Some(1000),
            max_concurrent: Some(1),
        };
        let p = local_part(l, 3);
        assert_eq!(p.rpm, Some(4));
        assert_eq!(p.tpm, Some(334));
        assert_eq!(p.max_concurrent, Some(1));
        let z = local_part(
            RateLimits {
                rpm: Some(0),
                tpm: None,
                max_concurrent: None,
            },
            3,
        );
        assert_eq!(z.rpm, Some(0));
        assert_eq!(z.tpm, None);
        assert_eq!(local_part(l, 0).rpm, Some(10));
    }

    #[test]
    fn keys_separate_tenants_keys_and_periods() {
        let t = budget_key(&BudgetScope::Tenant("a".into()), BudgetPeriod::Day, 5);
        let k = budget_key(&BudgetScope::Key("a".into()), BudgetPeriod::Day, 5);
        let m = budget_key(&BudgetScope::Tenant("a".into()), BudgetPeriod::Month, 5);
        assert_ne!(t, k);
        assert_ne!(t, m);
        let (b, s) = limit_keys(&LimitScope::Tenant("a".into()));
        assert_ne!(b, s);
        assert_ne!(b, limit_keys(&LimitScope::Key("a".into())).0);
    }
}
