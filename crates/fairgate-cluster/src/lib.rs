//! What fairgate replicas share through Redis: who is alive (membership) and a bus on which a
//! change made on one replica reaches the others at once.
//!
//! **Membership.** Every replica is the member `replica_id#epoch`, the epoch drawn at boot, so
//! a replica restarted on the same host and port is a new member and nothing the old one held
//! is mistaken for the new one's. Each heartbeat is one Lua script (one round trip): it stamps
//! this member with Redis's own clock (replica clocks may disagree), drops members not seen
//! for `member_ttl` and returns the live ones. A replica killed with `-9` leaves every view
//! within `member_ttl` plus one heartbeat; one stopped cleanly leaves at once ([`Cluster::leave`]).
//!
//! **The change bus.** A Redis pub/sub channel. A change is announced after it is stored, so a
//! replica that hears it re-reads the store and sees it. Pub/sub delivers at most once: after a
//! lost subscription the subscriber reports one [`Change::Directory`] of its own (it may have
//! missed some), and the periodic refresh of the directory stays as the backstop.
//!
//! Nothing here is on the request path. Every Redis call is bounded by `op_timeout`; a failure
//! marks the cluster down ([`Cluster::redis_up`]) until a call succeeds, and is never fatal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a replica joins the fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub redis_url: String,
    /// This replica's name (default in the gateway: hostname and listen port).
    pub replica_id: String,
    /// Prefix of every Redis key and channel, so several fleets (or tests) share one Redis.
    pub key_prefix: String,
    pub heartbeat: Duration,
    /// A member not heard from for this long is gone.
    pub member_ttl: Duration,
    /// The longest any Redis call may take before it counts as failed.
    pub op_timeout: Duration,
}

/// Why a Redis call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer from redis: {0}")]
    Protocol(String),
}

/// A change other replicas must apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// Tenants, groups, keys, users or their policies changed in the shared store.
    Directory,
    /// A backend was added, drained, resumed or removed at run time (stored in the database).
    Backends,
}

/// What travels on the channel: the change and who sent it (a replica ignores its own).
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    change: Change,
}

/// What [`Cluster::lease`] granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Slots this replica may fill now.
    pub grant: u64,
    /// Its share is larger, but other replicas still hold the difference until some of their
    /// requests end: ask again soon.
    pub owed: bool,
}

/// One live replica, as the last heartbeat saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// `replica#epoch`.
    pub id: String,
    pub replica: String,
    pub epoch: String,
    /// When it last beat, in Redis's clock (ms since the Unix epoch).
    pub last_seen_ms: u64,
    /// This process.
    pub this: bool,
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub round_trips: u64,
    pub round_trip_micros: u64,
    pub errors: u64,
    pub changes_published: u64,
    pub changes_received: u64,
}

/// Stamps a member, drops the ones not seen for TTL ms, returns `[now, m1, t1, m2, t2, ...]`.
/// KEYS[2] records since when each member has been present without a gap (see [`LEASE`]).
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not last) or tonumber(last) < now - tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], ARGV[1], now)
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])))
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
table.insert(live, 1, tostring(now))
return live
"#;

/// Sets one member's lease of a pool's slots; see [`Cluster::lease`]. KEYS: the lease hash
/// (member -> slots it may have in flight), the wants hash (member -> slots it would like),
/// the members zset, the pool's birth key, the presence hash. ARGV: member, capacity, want,
/// holding, ttl ms, weight, head counter (or empty), counter step (or empty). Returns
/// `{grant, field, entitled}`.
///
/// Reclaiming a silent member's slots needs the caller to have been present, without a gap,
/// for a whole TTL: after an outage of Redis every member looks silent, and the first one back
/// must not take the slots of the others before they have had a TTL to come back too.
const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, cap, want, holding, ttl, weight = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5]), math.max(1, tonumber(ARGV[6]))
-- How far behind this member's next waiting work is (a global VTC counter); none waiting: last.
local head = ARGV[7]
local since = tonumber(redis.call('HGET', KEYS[5], me) or now)
local may_reclaim = now - since >= ttl
-- Reclaim: a member not seen for ttl holds nothing and wants nothing.
local others, wants = 0, {}
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  local m = held[i]
  if m ~= me then
    local seen = redis.call('ZSCORE', KEYS[3], m)
    if may_reclaim and ((not seen) or tonumber(seen) < now - ttl) then
      redis.call('HDEL', KEYS[1], m)
      redis.call('HDEL', KEYS[2], m)
    else
      others = others + tonumber(held[i + 1])
      local w = redis.call('HGET', KEYS[2], m)
      local want_m, weight_m, head_m, step_m = tonumber(held[i + 1]), 1, '', ''
      if w then
        local a = string.find(w, ':')
        local b = string.find(w, ':', a + 1)
        local c = string.find(w, ':', b + 1)
        want_m = tonumber(string.sub(w, 1, a - 1))
        weight_m = tonumber(string.sub(w, a + 1, b - 1))
        if c then
          head_m = string.sub(w, b + 1, c - 1)
          step_m = string.sub(w, c + 1)
        else
          head_m = string.sub(w, b + 1)
        end
      end
      wants[#wants + 1] = {want_m, weight_m, m, head_m, step_m}
    end
  end
end
local step = ARGV[8] or ''
redis.call('HSET', KEYS[2], me, want .. ':' .. weight .. ':' .. head .. ':' .. step)
wants[#wants + 1] = {want, weight, me, head, step}
-- Entitlement: the capacity split weighted max-min fair over what the members want
-- (water-filling by want/weight). Slots the rounding leaves go one each to the capped members
-- whose waiting work is furthest behind (smallest head counter), so over time each gets its
-- exact share rather than a rounded one.
table.sort(wants, function(a, b)
  local x, y = a[1] * b[2], b[1] * a[2]
  if x ~= y then return x < y end
  return a[3] < b[3]
end)
local left, wsum, n, i = cap, 0, #wants, 1
for j = 1, n do wsum = wsum + wants[j][2] end
while i <= n and wants[i][1] * wsum <= left * wants[i][2] do
  left = left - wants[i][1]
  wsum = wsum - wants[i][2]
  i = i + 1
end
local mine = 0
for j = 1, n do
  if wants[j][3] == me then mine = j end
end
local entitled = want
if i <= n and mine >= i then
  local given, behind, floors = 0, {}, {}
  for j = i, n do
    local e = math.floor(left * wants[j][2] / wsum)
    floors[j] = e
    given = given + e
    behind[#behind + 1] = {wants[j][4], wants[j][3]}
    if j == mine then entitled = e end
  end
  -- Catch-up: a member whose waiting work is ahead of the furthest-behind member's by k of
  -- its own requests (k = lead / its step) gives up k of its slots (at most all) to that
  -- member. A lead (a burst that filled the fleet before the others arrived) is then repaid
  -- in whole slots, as one fair queue would repay it, not only through the rounding slot;
  -- within one request of each other nothing moves, so slots do not shuttle.
  local minh, minm = nil, nil
  for j = i, n do
    local h = tonumber(wants[j][4])
    if h and (minh == nil or h < minh or (h == minh and wants[j][3] < minm)) then
      minh, minm = h, wants[j][3]
    end
  end
  if minh then
    local moved = 0
    for j = i, n do
      local h, st = tonumber(wants[j][4]), tonumber(wants[j][5])
      if h and st and st > 0 and wants[j][3] ~= minm then
        local k = math.min(floors[j], math.floor((h - minh) / st))
        if k > 0 then
          moved = moved + k
          if j == mine then entitled = entitled - k end
        end
      end
    end
    if me == minm then entitled = entitled + moved end
  end
  -- Counters are compared as numbers; none waiting sorts last.
  table.sort(behind, function(x, y)
    local a, b = tonumber(x[1]), tonumber(y[1])
    if a and b and a ~= b then return a < b end
    if a and not b then return true end
    if b and not a then return false end
    return x[2] < y[2]
  end)
  for j = 1, left - given do
    if behind[j][2] == me then entitled = entitled + 1 end
  end
  entitled = math.min(entitled, want)
end
-- A store that lost its data (restart) does not know what the others hold: for one ttl after
-- it is first seen, nobody grows beyond what it already may have in flight.
local born = redis.call('GET', KEYS[4])
if not born then
  redis.call('SET', KEYS[4], now)
  born = now
end
local grant = math.max(0, math.min(want, entitled, cap - others))
if now - tonumber(born) < ttl then
  grant = math.min(grant, holding)
end
-- The field never drops below what this member may still have in flight.
local field = math.max(grant, holding)
redis.call('HSET', KEYS[1], me, field)
return {grant, field, entitled}
"#;

/// Adds `(tenant, delta)` pairs (ARGV[2..]) to a pool's service totals (KEYS[1]), stamping
/// each tenant with a new version (KEYS[2] zset, KEYS[3] counter); returns the current version
/// and the totals of the tenants changed since version ARGV[1] (only those: a fleet with
/// thousands of tenants exchanges what moved, not everything, every round).
const EXCHANGE: &str = r#"
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[i])
end
local out = {redis.call('GET', KEYS[3]) or '0'}
for _, t in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')) do
  out[#out + 1] = t
  out[#out + 1] = redis.call('HGET', KEYS[1], t) or '0'
end
return out
"#;

/// Where a member's waiting work stands in the fleet's fair order, for [`Cluster::lease`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The fair-share counter of the work it would serve next (smaller: further behind).
    pub counter: u64,
    /// How far one of its requests moves such a counter (0: not known yet): the unit in which
    /// a lead over another member counts.
    pub step: u64,
}

/// One replica's handle on the fleet. Cheap to share: `Arc<Cluster>`.
pub struct Cluster {
    cfg: ClusterConfig,
    member: String,
    client: redis::Client,
    heartbeat: redis::Script,
    lease: redis::Script,
    exchange: redis::Script,
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    members: Mutex<Vec<Member>>,
    /// Scripts of [`Cluster::run_script`], by the address of their (static) text.
    scripts: Mutex<std::collections::HashMap<usize, Arc<redis::Script>>>,
    round_trips: AtomicU64,
    round_trip_micros: AtomicU64,
    errors: AtomicU64,
    published: AtomicU64,
    received: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("Cluster")
            .field("member", &self.member)
            .field("key_prefix", &self.cfg.key_prefix)
            .finish()
    }
}

impl Cluster {
    /// Checks the URL and draws this boot's epoch; no IO (Redis may be down at start: the
    /// replica then serves in its local mode and joins once Redis answers).
    pub fn new(cfg: ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis::Client::open(cfg.redis_url.as_str())?;
        let epoch = format!("{:016x}", rand::random::<u64>());
        Ok(Arc::new(Cluster {
            member: format!("{}#{epoch}", cfg.replica_id),
            cfg,
            client,
            heartbeat: redis::Script::new(HEARTBEAT),
            lease: redis::Script::new(LEASE),
            exchange: redis::Script::new(EXCHANGE),
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            members: Mutex::new(Vec::new()),
            scripts: Mutex::new(std::collections::HashMap::new()),
            round_trips: AtomicU64::new(0),
            round_trip_micros: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }))
    }

    /// `replica_id#epoch`.
    pub fn member_id(&self) -> &str {
        &self.member
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// Whether the last Redis call succeeded.
    pub fn redis_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The live members as of the last heartbeat (this one included once it has beaten).
    pub fn members(&self) -> Vec<Member> {
        lock(&self.members).clone()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            round_trips: self.round_trips.load(Ordering::Relaxed),
            round_trip_micros: self.round_trip_micros.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            changes_published: self.published.load(Ordering::Relaxed),
            changes_received: self.received.load(Ordering::Relaxed),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.cfg.key_prefix)
    }

    fn channel(&self) -> String {
        self.key("changes")
    }

    /// Runs one Redis call on the shared connection within `op_timeout`, reconnecting first
    /// if the last call broke it; records the outcome.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClusterError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let limit = self.cfg.op_timeout;
        let started = Instant::now();
        let result = tokio::time::timeout(limit, async {
            let cached = lock(&self.conn).clone();
            let conn = match cached {
                Some(c) => c,
                None => {
                    let c = self.client.get_multiplexed_async_connection().await?;
                    *lock(&self.conn) = Some(c.clone());
                    c
                }
            };
            f(conn).await
        })
        .await;
        let result = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ClusterError::Redis(e)),
            Err(_) => Err(ClusterError::Timeout(limit)),
        };
        match &result {
            Ok(_) => {
                self.round_trips.fetch_add(1, Ordering::Relaxed);
                self.round_trip_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(member = %self.member, "redis reachable: in the cluster");
                }
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                // A broken or stuck connection is not reused; the next call dials again.
                *lock(&self.conn) = None;
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(member = %self.member, error = %e, "redis unreachable: serving on local state");
                }
            }
        }
        result
    }

    /// One heartbeat: stamps this member, forgets the dead, and returns the live members.
    pub async fn heartbeat(&self) -> Result<Vec<Member>, ClusterError> {
        let key = self.key("members");
        let present = self.key("present");
        let ttl = self.cfg.member_ttl.as_millis() as u64;
        let script = &self.heartbeat;
        let member = self.member.clone();
        let raw: Vec<String> = self
            .call(|mut c| async move {
                script
                    .key(key)
                    .key(present)
                    .arg(member)
                    .arg(ttl)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let members = parse_members(&raw, &self.member)?;
        *lock(&self.members) = members.clone();
        Ok(members)
    }

    /// Asks for this replica's share of a pool's `capacity` (slots in flight across the fleet),
    /// wanting `want` of them while it `holding` may already be in flight (its in-flight count
    /// or its current local capacity, whichever is larger). Returns the slots this replica may
    /// now fill. Atomic in Redis, so the leases of all replicas never add up to more than
    /// `capacity`: a replica's lease field never drops below what it may still have in flight,
    /// and a grant only takes capacity no live member holds. Among members that want more
    /// than there is, capacity is split max-min fair in proportion to `weight` (the summed
    /// weights of the tenants with work on that replica, at least 1), so tenants pinned to
    /// different replicas get slots by their weights; a member past its share gets a smaller
    /// grant, and its field follows as its requests end. `head` places the member's waiting
    /// work in the fleet's fair order: the slot the weighted split leaves over goes to the
    /// member furthest behind, and a member ahead of it by k of its own requests gives it k
    /// slots, so a lead is repaid in whole slots. The leases of a member not seen for
    /// `member_ttl` are reclaimed here.
    pub async fn lease(
        &self,
        pool: &str,
        capacity: u64,
        want: u64,
        holding: u64,
        weight: u64,
        head: Option<Head>,
    ) -> Result<Lease, ClusterError> {
        let keys = [
            self.key(&format!("lease:{pool}")),
            self.key(&format!("want:{pool}")),
            self.key("members"),
            self.key(&format!("born:{pool}")),
            self.key("present"),
        ];
        let ttl = self.cfg.member_ttl.as_millis() as u64;
        let member = self.member.clone();
        let script = &self.lease;
        let (grant, _field, entitled): (u64, u64, u64) = self
            .call(|mut c| async move {
                let mut inv = script.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                inv.arg(member)
                    .arg(capacity)
                    .arg(want)
                    .arg(holding)
                    .arg(ttl)
                    .arg(weight)
                    .arg(head.map(|h| h.counter.to_string()).unwrap_or_default())
                    .arg(head.map(|h| h.step.to_string()).unwrap_or_default())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(Lease {
            grant,
            owed: grant < entitled.min(want),
        })
    }

    /// Adds this replica's service per tenant since the last exchange (raw cost units; negative
    /// for refunds) to the fleet's totals for `pool`, and returns the totals of the tenants
    /// changed since version `since` with the current version, so each replica's fair-share
    /// counters follow what the whole fleet served. One round trip. A version below `since`
    /// means the store lost its data: ask again from 0.
    pub async fn exchange_service(
        &self,
        pool: &str,
        since: u64,
        deltas: &[(String, i64)],
    ) -> Result<(u64, Vec<(String, i64)>), ClusterError> {
        let keys = [
            self.key(&format!("service:{pool}")),
            self.key(&format!("service-version:{pool}")),
            self.key(&format!("service-counter:{pool}")),
        ];
        let script = &self.exchange;
        let raw: Vec<String> = self
            .call(|mut c| async move {
                let mut inv = script.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                inv.arg(since);
                for (t, d) in deltas {
                    inv.arg(t).arg(*d);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        let bad = |what: &str| ClusterError::Protocol(format!("service exchange: {what}"));
        let (version, pairs) = raw.split_first().ok_or_else(|| bad("empty answer"))?;
        let version = version.parse().map_err(|_| bad("version"))?;
        let totals = pairs
            .chunks(2)
            .map(|p| match p {
                [t, v] => v.parse().map(|v| (t.clone(), v)).map_err(|_| bad("total")),
                _ => Err(bad("odd answer")),
            })
            .collect::<Result<_, _>>()?;
        Ok((version, totals))
    }

    /// Runs a Lua script on keys named within this fleet's prefix; the script answers with an
    /// array of strings or integers (read as strings). For shared state whose rules live with
    /// their owner (the portal's sign-in throttle), so this crate need not know them.
    ///
    /// The script's hash is computed once per text (scripts are `'static`), not per call: the
    /// fleet's limits run one on the request path.
    pub async fn run_script(
        &self,
        lua: &'static str,
        keys: &[String],
        args: &[String],
    ) -> Result<Vec<String>, ClusterError> {
        let script = lock(&self.scripts)
            .entry(lua.as_ptr() as usize)
            .or_insert_with(|| Arc::new(redis::Script::new(lua)))
            .clone();
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.call(|mut c| async move {
            let mut inv = script.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            for a in args {
                inv.arg(a);
            }
            let v: Vec<redis::Value> = inv.invoke_async(&mut c).await?;
            Ok(v.into_iter()
                .map(|x| match x {
                    redis::Value::Int(i) => i.to_string(),
                    other => redis::from_redis_value::<String>(other).unwrap_or_default(),
                })
                .collect())
        })
        .await
    }

    /// Stores `value` under `name` (within this fleet's prefix) for `ttl`: state one replica
    /// makes and another may need, such as a sign-in in progress.
    pub async fn put(&self, name: &str, value: &str, ttl: Duration) -> Result<(), ClusterError> {
        let key = self.key(name);
        let ms = ttl.as_millis().max(1) as u64;
        let value = value.to_owned();
        let _: () = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Reads what [`Cluster::put`] stored under each of `names` (`None` where nothing is).
    pub async fn get_many(&self, names: &[String]) -> Result<Vec<Option<String>>, ClusterError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|n| self.key(n)).collect();
        self.call(|mut c| async move { redis::cmd("MGET").arg(keys).query_async(&mut c).await })
            .await
    }

    /// Takes what [`Cluster::put`] stored under `name`, once: a second take finds nothing.
    pub async fn take(&self, name: &str) -> Result<Option<String>, ClusterError> {
        let key = self.key(name);
        self.call(|mut c| async move { redis::cmd("GETDEL").arg(key).query_async(&mut c).await })
            .await
    }

    /// Announces `change` to the other replicas (call it after the change is stored).
    pub async fn publish(&self, change: Change) -> Result<(), ClusterError> {
        let payload = serde_json::to_string(&Envelope {
            from: self.member.clone(),
            change,
        })
        .map_err(|e| ClusterError::Protocol(e.to_string()))?;
        let channel = self.channel();
        let _: i64 = self
            .call(|mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Leaves the membership at once (a clean stop), so nobody waits `member_ttl` for it.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let key = self.key("members");
        let member = self.member.clone();
        let _: i64 = self
            .call(|mut c| async move {
                redis::cmd("ZREM")
                    .arg(key)
                    .arg(member)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        lock(&self.members).retain(|m| !m.this);
        Ok(())
    }

    /// Starts the heartbeat and the subscriber until `shutdown`; changes other replicas
    /// announce come out of the returned receiver.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.cfg.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = me.heartbeat().await {
                            tracing::debug!(error = %e, "heartbeat failed");
                        }
                    }
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move { me.subscribe(tx, shutdown).await });
        rx
    }

    /// Keeps a subscription to the change channel, re-subscribing after a lost connection.
    async fn subscribe(self: Arc<Self>, tx: mpsc::Sender<Change>, shutdown: CancellationToken) {
        let mut lost = false;
        loop {
            let connected = tokio::time::timeout(self.cfg.op_timeout, async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(self.channel()).await?;
                redis::RedisResult::Ok(ps)
            })
            .await;
            match connected {
                Ok(Ok(ps)) => {
                    if lost {
                        // Messages sent while we were away are gone: re-read everything.
                        let _ = tx.try_send(Change::Directory);
                    }
                    let mut messages = ps.into_on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            msg = messages.next() => {
                                let Some(msg) = msg else { break };
                                let Ok(text) = msg.get_payload::<String>() else { continue };
                                match serde_json::from_str::<Envelope>(&text) {
                                    Ok(env) if env.from != self.member => {
                                        self.received.fetch_add(1, Ordering::Relaxed);
                                        let _ = tx.try_send(env.change);
                                    }
                                    Ok(_) => {}
                                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed cluster message"),
                                }
                            }
                        }
                    }
                    tracing::warn!("lost the cluster change subscription; re-subscribing");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cluster subscription failed"),
                Err(_) => tracing::debug!("cluster subscription timed out"),
            }
            lost = true;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.heartbeat) => {}
            }
        }
    }
}

/// `[now, m1, t1, m2, t2, ...]` from the heartbeat script, into members.
fn parse_members(raw: &[String], me: &str) -> Result<Vec<Member>, ClusterError> {
    let bad = || ClusterError::Protocol(format!("heartbeat answer {raw:?}"));
    let pairs = raw.get(1..).ok_or_else(bad)?;
    if pairs.len() % 2 != 0 {
        return Err(bad());
    }
    pairs
        .chunks(2)
        .map(|p| {
            let id = p[0].clone();
            let last_seen_ms = p[1].parse::<f64>().map_err(|_| bad())? as u64;
            let (replica, epoch) = id.rsplit_once('#').unwrap_or((id.as_str(), ""));
            Ok(Member {
                replica: replica.to_owned(),
                epoch: epoch.to_owned(),
                this: id == me,
                last_seen_ms,
                id,
            })
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one assignment or clone: a panic inside leaves valid data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_answers_parse() {
        let raw: Vec<String> = ["1000", "a:1#e1", "990", "b:2#e2", "1000"]
            .map(String::from)
            .to_vec();
        let m = parse_members(&raw, "b:2#e2").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].replica.as_str(), m[0].epoch.as_str(), m[0].this),
            ("a:1", "e1", false)
        );
        assert!(m[1].this);
        assert_eq!(m[1].last_seen_ms, 1000);
        assert!(parse_members(&["1".into(), "x".into()], "x").is_err());
        assert!(parse_members(&[], "x").is_err());
    }

    #[test]
    fn changes_travel_as_tagged_json() {
        let text = serde_json::to_string(&Envelope {
            from: "r#1".into(),
            change: Change::Directory,
        })
        .unwrap();
        assert_eq!(text, r##"{"from":"r#1","kind":"directory"}"##);
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back.change, Change::Directory);
    }
}
