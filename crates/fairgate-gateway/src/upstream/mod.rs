//! Backends, their health and capacity, and the lease a request holds on one.
//!
//! Each model has a [`ModelPool`]: its backends (from the config and the admin API, changed
//! live) and an admission pool ([`fairgate_admission::pool::Pool`]) whose capacity is what the
//! usable backends can take. A request is admitted (at once while there is room, by weighted
//! fair share when there is not); only then does [`crate::router::choose`] pick its backend
//! (late binding). The [`Lease`] gives both back when dropped, so every exit path (error,
//! cancel, panic) frees capacity.
//!
//! A backend is usable when it is neither draining nor ejected by its circuit breaker
//! ([`crate::router::health`]). A background watcher per backend probes `/health` and scrapes
//! `/metrics` ([`crate::router::scrape`]).
//!
//! Pool capacity = the slots of usable backends + the requests still running on unusable
//! ones (a drained backend finishes its streams while holding their slots, and nobody else
//! loses theirs). It is recomputed on every change of usability.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use fairgate_admission::fair::Mode;
use fairgate_admission::pool::{
    AdmitError, AdmitRequest, CostWeights, Headroom, Permit, Pool, PoolConfig,
};

use crate::config::{
    AdmissionConfig, BackendConfig, Config, ModelConfig, RoutingConfig, SchedulerMode,
};
use crate::router::health::{Routable, State};
use crate::router::{self, Reason, View};

mod backend;
mod client;
pub mod watch;

pub use backend::*;
pub use client::*;

/// Why no backend could be had.
#[derive(Debug)]
pub enum AcquireError {
    Admit(AdmitError),
    /// Every backend is ejected, draining or does not serve the adapter.
    NoBackend {
        retry_after: Duration,
    },
}

/// All backends of one model and the fair-share pool that bounds their total load.
pub struct ModelPool {
    pub name: String,
    /// LoRA adapters served on top of this model.
    pub adapters: Vec<String>,
    pub(crate) backends: ArcSwap<Vec<Arc<Backend>>>,
    /// Admission: capacity follows the usable backends (see the module docs).
    pub fair: Arc<Pool>,
    /// Round-robin position and tie-breaker.
    pub(crate) rotation: AtomicUsize,
    /// Serializes changes to the backend list.
    pub(crate) edit: Mutex<()>,
    /// Capacity is leased from the fleet (`[cluster]`), see [`ModelPool::set_fleet_share`].
    pub(crate) fleet: std::sync::atomic::AtomicBool,
    /// The config's `discover` entries: templates of the backends DNS finds
    /// ([`crate::discovery`]).
    pub(crate) discover: ArcSwap<Vec<BackendConfig>>,
    /// The backends are Slurm jobs the gateway starts (`[models.slurm]`): none at the moment
    /// (scaled to zero, or a job starting) queues requests too.
    pub provisioned: bool,
}

impl std::fmt::Debug for ModelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelPool")
            .field("name", &self.name)
            .finish()
    }
}

/// A granted slot on one backend; dropping it frees the slot and admits the next waiter.
#[derive(Debug)]
pub struct Lease {
    pub backend: Arc<Backend>,
    pub permit: Permit,
    pub(crate) pool: Arc<ModelPool>,
    /// Backends this request was sent to, in order.
    pub(crate) tried: Vec<Arc<Backend>>,
    /// The permit is an engine slot beyond `max_in_flight` (see [`Backend::claim_limit`]).
    pub(crate) engine_slot: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.unclaim(self.engine_slot);
        if self.backend.routable(Instant::now()) != Routable::Full
            || self.backend.removing.load(Ordering::Relaxed)
        {
            // Its slot was part of the capacity only while this request ran.
            self.pool.refresh();
        }
    }
}

impl Lease {
    /// Backends tried so far, this one included.
    pub fn attempts(&self) -> u32 {
        self.tried.len() as u32 + 1
    }

    /// The response head arrived: the backend is fine.
    pub fn succeeded(&self) {
        if self.backend.succeeded() {
            tracing::info!(backend = %self.backend.url, "backend recovered");
            self.pool.refresh();
        }
    }

    /// The attempt failed before the first byte: feeds the backend's circuit breaker.
    pub fn failed(&self, why: String) {
        self.backend.stats.failures.fetch_add(1, Ordering::Relaxed);
        if self.backend.failed(why) {
            self.pool.refresh();
        }
    }

    /// Moves the lease to a backend this request has not tried; `false` when there is none.
    pub fn move_on(&mut self, route: &Route<'_>) -> bool {
        let mut exclude: Vec<&Arc<Backend>> = self.tried.iter().collect();
        exclude.push(&self.backend);
        let next = self
            .pool
            .pick(route, &exclude, self.engine_slot)
            .or_else(|| self.pool.overcommit(route, &exclude, self.engine_slot));
        let Some(next) = next else {
            return false;
        };
        next.stats.retries.fetch_add(1, Ordering::Relaxed);
        let prev = std::mem::replace(&mut self.backend, next);
        prev.unclaim(self.engine_slot);
        if prev.routable(Instant::now()) != Routable::Full {
            self.pool.refresh();
        }
        self.tried.push(prev);
        true
    }
}

/// The admission pool settings a model's backends and the admission section imply.
pub fn pool_config(max_in_flight: usize, tokens: Option<u64>, adm: &AdmissionConfig) -> PoolConfig {
    PoolConfig {
        max_in_flight,
        max_tokens_in_flight: tokens,
        max_queued: adm.max_queued,
        mode: match adm.mode {
            SchedulerMode::Fair => Mode::Fair,
            SchedulerMode::Fifo => Mode::Fifo,
        },
        cost: CostWeights {
            input: adm.input_token_cost,
            output: adm.output_token_cost,
        },
        headroom: adm.headroom.map_or(Headroom::Auto, Headroom::Slots),
        engine_extra: 0,
        engine_priority: false,
        length_aware: adm.length_aware,
    }
}

impl ModelPool {
    pub fn new(cfg: &ModelConfig, adm: &AdmissionConfig, routing: &RoutingConfig) -> ModelPool {
        let backends: Vec<Arc<Backend>> = cfg
            .backends
            .iter()
            .filter(|b| b.discover.is_none())
            .map(|b| Arc::new(Backend::new(b, Origin::Config, routing)))
            .collect();
        let discover = cfg
            .backends
            .iter()
            .filter(|b| b.discover.is_some())
            .cloned()
            .collect();
        let (cap, tokens) = capacity(&backends, Instant::now());
        let (extra, priority) = engine_capacity(&backends, Instant::now());
        ModelPool {
            name: cfg.name.clone(),
            adapters: cfg.adapters.clone(),
            backends: ArcSwap::from_pointee(backends),
            fair: Pool::new(
                cfg.name.clone(),
                PoolConfig {
                    engine_extra: extra,
                    engine_priority: priority,
                    ..pool_config(cap, tokens, adm)
                },
            ),
            rotation: AtomicUsize::new(0),
            edit: Mutex::new(()),
            fleet: std::sync::atomic::AtomicBool::new(false),
            discover: ArcSwap::from_pointee(discover),
            provisioned: cfg.slurm.is_some(),
        }
    }

    /// Whether backends may come later (from DNS, or as Slurm jobs): then having none at the
    /// moment (scaled to zero) queues requests instead of refusing them.
    pub fn discovers(&self) -> bool {
        self.provisioned || !self.discover.load().is_empty()
    }

    /// The current backend list.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    pub fn backend(&self, url: &str) -> Option<Arc<Backend>> {
        let url = url.trim_end_matches('/');
        self.backends.load().iter().find(|b| b.url == url).cloned()
    }

    pub fn queued(&self) -> usize {
        self.fair.queued()
    }

    pub fn in_flight(&self) -> usize {
        self.backends.load().iter().map(|b| b.in_flight()).sum()
    }

    /// Whether any backend can take a request now (for `adapter`, one that serves it).
    pub fn has_usable(&self, adapter: Option<&str>) -> bool {
        let now = Instant::now();
        self.backends
            .load()
            .iter()
            .any(|b| b.serves(adapter) && b.routable(now) != Routable::No)
    }

    /// How long until an ejected backend gets its trial, for Retry-After.
    pub fn next_recovery(&self) -> Duration {
        let now = Instant::now();
        self.backends
            .load()
            .iter()
            .filter(|b| !b.is_draining())
            .filter_map(|b| match lock(&b.health).state(now) {
                State::Ejected { until } => Some(until.saturating_duration_since(now)),
                _ => None,
            })
            .min()
            .unwrap_or(Duration::from_secs(5))
    }

    /// The fleet's capacity for this model as configured: the configured `max_in_flight` of
    /// the backends that take requests now (what all replicas together may send).
    pub fn configured_capacity(&self) -> usize {
        let now = Instant::now();
        self.backends
            .load()
            .iter()
            .filter(|b| b.routable(now) == Routable::Full)
            .map(|b| b.configured_max_in_flight())
            .sum()
    }

    /// The fleet's engine slots for this model as configured (beyond `max_in_flight`, on the
    /// usable backends running the priority policy), and how many of them this replica uses.
    pub fn engine_slots(&self) -> (usize, usize) {
        let now = Instant::now();
        let list = self.backends.load();
        let configured = list
            .iter()
            .filter(|b| b.routable(now) == Routable::Full)
            .map(|b| b.configured_engine_extra())
            .sum();
        (configured, list.iter().map(|b| b.engine_in_flight()).sum())
    }

    /// Applies this replica's lease of `granted` engine slots out of `capacity`, split over
    /// the backends as [`ModelPool::set_fleet_share`] splits ordinary slots.
    pub fn set_fleet_engine_share(&self, granted: usize, capacity: usize) {
        for b in self.backends.load().iter() {
            let share = part_of(b.configured_engine_extra(), granted, capacity);
            b.fleet_engine.store(share, Ordering::Relaxed);
        }
        self.refresh();
    }

    /// Applies this replica's lease of `granted` slots out of `capacity` (see
    /// [`crate::fleet`]): each backend gets `floor(max_in_flight × granted / capacity)`, so the
    /// replicas' shares of one backend never add up to more than its `max_in_flight`.
    pub fn set_fleet_share(&self, granted: usize, capacity: usize) {
        self.fleet.store(true, Ordering::Relaxed);
        for b in self.backends.load().iter() {
            let share = part_of(b.configured_max_in_flight(), granted, capacity);
            b.fleet_limit.store(share, Ordering::Relaxed);
        }
        self.refresh();
    }

    /// Recomputes capacity from backend usability, and drops removed backends once idle.
    pub fn refresh(&self) {
        let now = Instant::now();
        let gone = |b: &Arc<Backend>| b.removing.load(Ordering::Relaxed) && b.in_flight() == 0;
        if self.backends.load().iter().any(gone) {
            let _g = lock(&self.edit);
            let (dropped, kept): (Vec<_>, Vec<_>) =
                self.backends.load().iter().cloned().partition(gone);
            for b in &dropped {
                tracing::info!(model = %self.name, backend = %b.url, "backend removed");
            }
            self.backends.store(Arc::new(kept));
        }
        let (cap, tokens) = capacity(&self.backends.load(), now);
        self.fair.set_capacity(cap, tokens);
        let (extra, priority) = engine_capacity(&self.backends.load(), now);
        self.fair.set_engine(extra, priority);
    }

    /// Waits for admission, then picks the backend. Cancel-safe: a caller that is dropped
    /// while waiting leaves the queue at once.
    pub async fn acquire(
        self: &Arc<Self>,
        req: AdmitRequest<'_>,
        route: &Route<'_>,
    ) -> Result<Lease, AcquireError> {
        // A model whose backends come from DNS may have none for a while (scaled to zero):
        // its requests queue, fairly, until one appears or their wait runs out.
        if !self.has_usable(route.adapter) && !self.discovers() {
            return Err(AcquireError::NoBackend {
                retry_after: self.next_recovery(),
            });
        }
        let permit = self.fair.admit(req).await.map_err(AcquireError::Admit)?;
        let engine_slot = permit.engine_slot();
        // A permit means a slot exists, unless usability changed in between: then the least
        // loaded usable backend takes one more than its share for a moment.
        let backend = self
            .pick(route, &[], engine_slot)
            .or_else(|| self.overcommit(route, &[], engine_slot))
            .ok_or_else(|| AcquireError::NoBackend {
                retry_after: self.next_recovery(),
            })?;
        Ok(Lease {
            backend,
            permit,
            pool: self.clone(),
            tried: Vec::new(),
            engine_slot,
        })
    }

    /// Chooses and claims a backend with a free slot by the request's strategy.
    pub(crate) fn pick(
        &self,
        route: &Route<'_>,
        exclude: &[&Arc<Backend>],
        engine_slot: bool,
    ) -> Option<Arc<Backend>> {
        let list = self.backends.load();
        for _ in 0..4 {
            let now = Instant::now();
            let mut cands: Vec<(&Arc<Backend>, usize)> = Vec::with_capacity(list.len());
            for b in list.iter() {
                if exclude.iter().any(|x| Arc::ptr_eq(x, b)) || !b.serves(route.adapter) {
                    continue;
                }
                match b.routable(now) {
                    Routable::Full => cands.push((b, b.claim_limit(engine_slot))),
                    // A half-open trial is one ordinary request.
                    Routable::Trial if !engine_slot => cands.push((b, 1)),
                    Routable::Trial | Routable::No => {}
                }
            }
            let views: Vec<View> = cands
                .iter()
                .map(|&(b, limit)| b.view(now, route, limit))
                .collect();
            let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
            let (i, reason) = router::choose(route.strategy, &views, rotation, &route.thresholds)?;
            let (b, limit) = cands[i];
            if b.try_claim(limit, engine_slot) {
                b.stats.picks[reason.index()].fetch_add(1, Ordering::Relaxed);
                b.stats.attempts.fetch_add(1, Ordering::Relaxed);
                if !route.blocks.is_empty() {
                    lock(&b.prefix).insert(route.blocks);
                }
                return Some(b.clone());
            }
            // Lost a race for the last slot; look again.
        }
        None
    }

    /// The least loaded usable backend, over its slot count (used only when a permit is held
    /// but every slot is momentarily taken).
    pub(crate) fn overcommit(
        &self,
        route: &Route<'_>,
        exclude: &[&Arc<Backend>],
        engine_slot: bool,
    ) -> Option<Arc<Backend>> {
        let now = Instant::now();
        let list = self.backends.load();
        let b = list
            .iter()
            .filter(|b| !exclude.iter().any(|x| Arc::ptr_eq(x, b)) && b.serves(route.adapter))
            .filter(|b| b.routable(now) == Routable::Full)
            .min_by(|a, b| {
                let la = a.in_flight() as f64 / a.max_in_flight().max(1) as f64;
                let lb = b.in_flight() as f64 / b.max_in_flight().max(1) as f64;
                la.total_cmp(&lb)
            })?;
        b.in_flight.fetch_add(1, Ordering::AcqRel);
        if engine_slot {
            b.engine_in_flight.fetch_add(1, Ordering::AcqRel);
        }
        b.stats.attempts.fetch_add(1, Ordering::Relaxed);
        b.stats.picks[Reason::LeastLoaded.index()].fetch_add(1, Ordering::Relaxed);
        if !route.blocks.is_empty() {
            lock(&b.prefix).insert(route.blocks);
        }
        Some(b.clone())
    }

    /// Applies new admission settings (mode, queue bound, token costs), keeping the capacity
    /// the backends give.
    pub fn apply_admission(&self, adm: &AdmissionConfig) {
        let (cap, tokens) = capacity(&self.backends.load(), Instant::now());
        let (engine_extra, engine_priority) =
            engine_capacity(&self.backends.load(), Instant::now());
        self.fair.reconfigure(PoolConfig {
            engine_extra,
            engine_priority,
            ..pool_config(cap, tokens, adm)
        });
    }

    /// Adds a backend; `Err` if one with this URL is already there.
    pub fn add(
        &self,
        cfg: &BackendConfig,
        origin: Origin,
        routing: &RoutingConfig,
    ) -> Result<Arc<Backend>, String> {
        let b = {
            let _g = lock(&self.edit);
            let url = cfg.url.trim_end_matches('/');
            let name = cfg.display_name();
            if let Some(other) = self
                .backends
                .load()
                .iter()
                .find(|b| b.name == name && b.url != url)
            {
                return Err(format!(
                    "backend named `{name}` of model `{}` (at {})",
                    self.name, other.url
                ));
            }
            if let Some(existing) = self.backends.load().iter().find(|b| b.url == url) {
                if existing.removing.load(Ordering::Relaxed) {
                    return Err(format!(
                        "backend `{url}` (still being removed; retry when its requests finish)"
                    ));
                }
                // Worded to be followed by "already exists" (the admin API's conflict error).
                return Err(format!("backend `{url}` of model `{}`", self.name));
            }
            let b = Arc::new(Backend::new(cfg, origin, routing));
            if self.fleet.load(Ordering::Relaxed) {
                // Under a fleet lease a new backend starts with no share until the next grant.
                b.fleet_limit.store(0, Ordering::Relaxed);
            }
            let mut list = self.backends.load().as_ref().clone();
            list.push(b.clone());
            self.backends.store(Arc::new(list));
            b
        };
        tracing::info!(model = %self.name, backend = %b.url, "backend added");
        self.refresh();
        Ok(b)
    }

    /// Stops (or resumes) sending new requests to a backend; requests in flight finish.
    pub fn set_draining(&self, url: &str, draining: bool) -> Option<Arc<Backend>> {
        let b = self.backend(url)?;
        b.draining.store(draining, Ordering::Relaxed);
        if !draining {
            b.removing.store(false, Ordering::Relaxed);
        }
        tracing::info!(model = %self.name, backend = %b.url, draining, "backend drain state changed");
        self.refresh();
        Some(b)
    }

    /// Drains a backend and removes it once its requests have finished.
    pub fn remove(&self, url: &str) -> Option<Arc<Backend>> {
        let b = self.backend(url)?;
        b.removing.store(true, Ordering::Relaxed);
        b.draining.store(true, Ordering::Relaxed);
        self.refresh();
        Some(b)
    }

    /// Makes the config-file backends match `cfg` (new ones added, missing ones removed,
    /// capacities updated); backends added through the admin API are left alone.
    pub fn reconcile(&self, cfg: &ModelConfig, routing: &RoutingConfig) -> Vec<Arc<Backend>> {
        let mut added = Vec::new();
        // `discover` entries are templates: the discovery task applies them at its next round.
        self.discover.store(Arc::new(
            cfg.backends
                .iter()
                .filter(|b| b.discover.is_some())
                .cloned()
                .collect(),
        ));
        for bc in cfg.backends.iter().filter(|b| b.discover.is_none()) {
            match self.backend(&bc.url) {
                Some(b) => {
                    b.max_in_flight.store(bc.max_in_flight, Ordering::Relaxed);
                    b.priority_policy.store(
                        bc.scheduling_policy == crate::config::SchedulingPolicy::Priority,
                        Ordering::Relaxed,
                    );
                    b.engine_max_seqs
                        .store(bc.engine_max_seqs.unwrap_or(0), Ordering::Relaxed);
                    b.api_key.store(key_of(bc).map(Arc::new));
                }
                None => {
                    if let Ok(b) = self.add(bc, Origin::Config, routing) {
                        added.push(b);
                    }
                }
            }
        }
        for b in self.backends.load().iter() {
            let declared = cfg
                .backends
                .iter()
                .any(|bc| bc.url.trim_end_matches('/') == b.url);
            if b.origin == Origin::Config && !declared {
                self.remove(&b.url);
            }
        }
        self.refresh();
        added
    }
}

/// A backend's part of a lease: `floor(m × granted / capacity)`, so the parts of all
/// replicas never add up to more than `m`.
fn part_of(m: usize, granted: usize, capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    (m as u128 * granted.min(capacity) as u128 / capacity as u128) as usize
}

/// Slots (and, when every usable backend declares one, the token bound) of a backend list.
pub(crate) fn capacity(list: &[Arc<Backend>], now: Instant) -> (usize, Option<u64>) {
    let slots = list.iter().map(|b| b.capacity_share(now)).sum();
    let tokens = list
        .iter()
        .filter(|b| b.routable(now) == Routable::Full)
        .map(|b| b.token_bound())
        .sum::<Option<u64>>();
    (slots, tokens)
}

/// Engine slots beyond the pool's capacity (usable backends running the priority policy with
/// `engine_max_seqs` above `max_in_flight`), and whether any backend takes a priority at all.
pub(crate) fn engine_capacity(list: &[Arc<Backend>], now: Instant) -> (usize, bool) {
    let extra = list
        .iter()
        .filter(|b| b.routable(now) == Routable::Full)
        .map(|b| b.engine_extra())
        .sum();
    (extra, list.iter().any(|b| b.priority_policy()))
}

/// Every model's pool, as declared in the config.
#[derive(Debug, Default)]
pub struct Upstreams {
    pub pools: Vec<Arc<ModelPool>>,
}

/// Where a request's model name leads.
#[derive(Clone, Debug)]
pub struct Target {
    pub pool: Arc<ModelPool>,
    /// A LoRA adapter of the pool's model.
    pub adapter: Option<String>,
}

impl Upstreams {
    pub fn from_config(cfg: &Config) -> Upstreams {
        Upstreams {
            pools: cfg
                .models
                .iter()
                .map(|m| Arc::new(ModelPool::new(m, &cfg.admission, &cfg.routing)))
                .collect(),
        }
    }

    pub fn get(&self, model: &str) -> Option<&Arc<ModelPool>> {
        self.pools.iter().find(|p| p.name == model)
    }

    /// The pool serving `name` directly, or as one of its adapters.
    pub fn target(&self, name: &str) -> Option<Target> {
        if let Some(p) = self.get(name) {
            return Some(Target {
                pool: p.clone(),
                adapter: None,
            });
        }
        self.pools
            .iter()
            .find(|p| p.adapters.iter().any(|a| a == name))
            .map(|p| Target {
                pool: p.clone(),
                adapter: Some(name.to_owned()),
            })
    }

    /// Every model name clients may use: models, adapters.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pools.iter().flat_map(|p| {
            std::iter::once(p.name.as_str()).chain(p.adapters.iter().map(String::as_str))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Strategy;
    use fairgate_types::Priority;

    fn pool(caps: &[usize]) -> Arc<ModelPool> {
        let cfg = ModelConfig::new(
            "m",
            caps.iter()
                .enumerate()
                .map(|(i, c)| BackendConfig::new(format!("http://127.0.0.1:{}", 9000 + i), *c))
                .collect(),
        );
        Arc::new(ModelPool::new(
            &cfg,
            &AdmissionConfig::default(),
            &RoutingConfig::default(),
        ))
    }

    fn req(wait: Duration) -> AdmitRequest<'static> {
        AdmitRequest {
            tenant: "t",
            weight: 1,
            group: None,
            group_weight: 1,
            priority: Priority::Interactive,
            tokens: 1,
            prompt_estimate: 1,
            max_queued: 10,
            deadline: tokio::time::Instant::now() + wait,
        }
    }

    fn route(strategy: Strategy) -> Route<'static> {
        Route::new(
            &RoutingConfig {
                strategy,
                ..RoutingConfig::default()
            },
            &[],
            None,
        )
    }

    #[test]
    fn a_fleet_share_splits_the_token_bound_with_the_slots() {
        let cfg = ModelConfig::new(
            "m",
            vec![BackendConfig {
                max_tokens_in_flight: Some(1600),
                ..BackendConfig::new("http://127.0.0.1:9000", 16)
            }],
        );
        let p = Arc::new(ModelPool::new(
            &cfg,
            &AdmissionConfig::default(),
            &RoutingConfig::default(),
        ));
        assert_eq!(p.fair.state().max_tokens_in_flight, Some(1600));
        // A lease of 4 of the fleet's 16 slots: a quarter of the tokens too.
        p.set_fleet_share(4, 16);
        assert_eq!(p.fair.state().max_in_flight, 4);
        assert_eq!(p.fair.state().max_tokens_in_flight, Some(400));
        p.set_fleet_share(0, 16);
        assert_eq!(p.fair.state().max_tokens_in_flight, Some(0));
    }

    #[tokio::test(start_paused = true)]
    pub(crate) async fn leases_spread_and_respect_capacity() {
        let p = pool(&[2, 1]);
        let s = Duration::from_secs(1);
        let r = route(Strategy::LeastLoaded);
        let a = p.acquire(req(s), &r).await.unwrap();
        let b = p.acquire(req(s), &r).await.unwrap();
        let c = p.acquire(req(s), &r).await.unwrap();
        let list = p.backends();
        assert_eq!(list[0].in_flight(), 2);
        assert_eq!(list[1].in_flight(), 1);
        assert!(p.acquire(req(Duration::from_millis(50)), &r).await.is_err());
        assert_eq!(p.queued(), 0);
        drop((a, b, c));
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.fair.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    pub(crate) async fn draining_takes_capacity_away_but_keeps_running_requests() {
        let p = pool(&[2, 2]);
        let r = route(Strategy::RoundRobin);
        let s = Duration::from_secs(1);
        let leases: Vec<Lease> = [
            p.acquire(req(s), &r).await.unwrap(),
            p.acquire(req(s), &r).await.unwrap(),
        ]
        .into();
        let drained = leases[0].backend.url.clone();
        p.set_draining(&drained, true);
        // Capacity: the other backend's 2 slots + the 1 request still on the drained one.
        assert_eq!(p.fair.capacity(), 3);
        let third = p.acquire(req(s), &r).await.unwrap();
        assert_ne!(third.backend.url, drained);
        drop(leases);
        assert_eq!(p.fair.capacity(), 2);
        drop(third);
        // Removing: gone from the list once idle.
        p.remove(&drained);
        assert!(p.backend(&drained).is_none());
    }

    #[tokio::test(start_paused = true)]
    pub(crate) async fn ejected_backend_gets_nothing_and_failover_moves_the_lease() {
        let p = pool(&[4, 4]);
        let r = route(Strategy::RoundRobin);
        let s = Duration::from_secs(1);
        let mut l = p.acquire(req(s), &r).await.unwrap();
        let first = l.backend.url.clone();
        l.failed("refused".into());
        assert!(l.move_on(&r));
        assert_ne!(l.backend.url, first);
        assert_eq!(l.attempts(), 2);
        assert_eq!(p.backend(&first).unwrap().in_flight(), 0);
        // Both tried: no third backend.
        l.failed("refused".into());
        assert!(!l.move_on(&r));
        drop(l);
        // Three consecutive failures eject (the default), then it gets no traffic.
        let b = p.backend(&first).unwrap();
        b.failed("x".into());
        b.failed("x".into());
        p.refresh();
        assert_eq!(p.fair.capacity(), 4);
        for _ in 0..3 {
            let l = p.acquire(req(s), &r).await.unwrap();
            assert_ne!(l.backend.url, first);
        }
        assert!(p.has_usable(None));
    }
}
