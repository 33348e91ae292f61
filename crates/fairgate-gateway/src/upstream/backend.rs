//! One backend of a model: its slots in flight, health (circuit breaker), scraped load,
//! prefix index and credentials, and the [`Route`] a request asks it to fit.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{BackendConfig, RoutingConfig, SchedulingPolicy, Secret};
use crate::router::health::{Breaker, Routable, State};
use crate::router::prefix::PrefixIndex;
use crate::router::scrape::Scraped;
use crate::router::{LoraFit, Reason, Strategy, Thresholds, View};

use super::client::*;

/// Where a backend came from: reloading the config file only touches its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Config,
    Api,
    /// Found by resolving a `discover` entry of the config.
    Discovered,
}

/// Counters per backend, published as metrics at scrape time.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Requests sent (every attempt).
    pub attempts: AtomicU64,
    /// Attempts that failed before the first byte.
    pub failures: AtomicU64,
    /// Attempts that were a retry of a request that failed elsewhere.
    pub retries: AtomicU64,
    /// Picks by [`Reason`].
    pub picks: [AtomicU64; Reason::ALL.len()],
    pub scrape_errors: AtomicU64,
}

/// The last scrape of a backend's `/metrics`.
#[derive(Clone, Debug)]
pub(crate) struct Load {
    pub(crate) at: Instant,
    pub(crate) scraped: Scraped,
    /// This gateway's in-flight requests there when the scrape returned.
    pub(crate) own_at_scrape: usize,
}

/// One backend server (a vLLM instance or the simulator).
#[derive(Debug)]
pub struct Backend {
    /// Server root without a trailing slash. Operator-only: never in client bodies or metrics.
    pub url: String,
    /// What metrics, the ledger and operator pages call it (unique within its model).
    pub name: String,
    /// Sent as `Authorization: Bearer` (vLLM's `--api-key`); redacted in `Debug`; replaced
    /// on reload (a rotated key in the environment takes effect without a restart).
    pub(crate) api_key: arc_swap::ArcSwapOption<Secret>,
    /// Its own client when it trusts its own CA (`ca_file`); else the gateway's.
    pub(crate) client: Option<HttpClient>,
    pub origin: Origin,
    pub(crate) max_in_flight: AtomicUsize,
    /// This replica's part of `max_in_flight` under `[cluster]` (its lease); `usize::MAX`
    /// for a single process.
    pub(crate) fleet_limit: AtomicUsize,
    pub(crate) max_tokens_in_flight: Option<u64>,
    /// The engine runs vLLM's priority policy: requests carry their fair-share position.
    pub(crate) priority_policy: AtomicBool,
    /// The engine's `--max-num-seqs` when above `max_in_flight` (0: not declared).
    pub(crate) engine_max_seqs: AtomicUsize,
    /// Of `in_flight`, requests in engine slots beyond `max_in_flight`.
    pub(crate) engine_in_flight: AtomicUsize,
    /// This replica's part of the engine slots under `[cluster]` (its engine lease);
    /// `usize::MAX` for a single process.
    pub(crate) fleet_engine: AtomicUsize,
    /// Adapters this backend serves; `None`: all of its model's.
    pub(crate) adapters: Option<Vec<String>>,
    /// Requests currently holding a lease on this backend.
    pub(crate) in_flight: AtomicUsize,
    pub(crate) draining: AtomicBool,
    /// Leaves the pool once drained.
    pub(crate) removing: AtomicBool,
    pub(crate) watched: AtomicBool,
    pub(crate) health: Mutex<Breaker>,
    pub(crate) load: Mutex<Option<Load>>,
    pub(crate) prefix: Mutex<PrefixIndex>,
    pub stats: BackendStats,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few field updates; a panic inside one leaves data
    // that is still safe to route by.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backend {
    pub(crate) fn new(cfg: &BackendConfig, origin: Origin, routing: &RoutingConfig) -> Backend {
        Backend {
            url: cfg.url.trim_end_matches('/').to_owned(),
            name: cfg.display_name(),
            api_key: arc_swap::ArcSwapOption::new(key_of(cfg).map(Arc::new)),
            client: cfg.ca_file.as_deref().map(|f| {
                tls_client(
                    Duration::from_millis(CONNECT_TIMEOUT_MS.load(Ordering::Relaxed)),
                    roots(false, Some(f)),
                )
            }),
            origin,
            max_in_flight: AtomicUsize::new(cfg.max_in_flight),
            fleet_limit: AtomicUsize::new(usize::MAX),
            max_tokens_in_flight: cfg.max_tokens_in_flight,
            priority_policy: AtomicBool::new(cfg.scheduling_policy == SchedulingPolicy::Priority),
            engine_max_seqs: AtomicUsize::new(cfg.engine_max_seqs.unwrap_or(0)),
            engine_in_flight: AtomicUsize::new(0),
            fleet_engine: AtomicUsize::new(usize::MAX),
            adapters: cfg.adapters.clone(),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            removing: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            health: Mutex::new(Breaker::new(
                routing.eject_after_failures,
                Duration::from_millis(routing.eject_ms),
            )),
            load: Mutex::new(None),
            prefix: Mutex::new(PrefixIndex::default()),
            stats: BackendStats::default(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The client to reach this backend with: its own (own CA) or `shared`.
    pub fn client<'a>(&'a self, shared: &'a HttpClient) -> &'a HttpClient {
        self.client.as_ref().unwrap_or(shared)
    }

    /// Adds this backend's credential to an upstream request's headers (after the client's
    /// own credentials were stripped).
    pub fn authorize(&self, headers: &mut http::HeaderMap) {
        if let Some(k) = self.api_key.load().as_deref() {
            if let Ok(mut v) = http::HeaderValue::from_str(&format!("Bearer {}", k.expose())) {
                v.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, v);
            }
        }
    }

    /// What this replica may send here: the configured `max_in_flight`, or less when the
    /// fleet's lease gives this replica less.
    pub fn max_in_flight(&self) -> usize {
        self.configured_max_in_flight()
            .min(self.fleet_limit.load(Ordering::Relaxed))
    }

    /// `max_in_flight` as configured: what the whole fleet may send here.
    pub fn configured_max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    /// This replica's part of `max_tokens_in_flight`: all of it for a single process, under
    /// `[cluster]` the same fraction as its part of the slots, so the replicas' parts of one
    /// backend's token bound never add up to more than the bound.
    pub(crate) fn token_bound(&self) -> Option<u64> {
        let fleet = self.fleet_limit.load(Ordering::Relaxed);
        self.max_tokens_in_flight.map(|t| {
            if fleet == usize::MAX {
                return t;
            }
            let m = self.configured_max_in_flight().max(1);
            (t as u128 * fleet.min(m) as u128 / m as u128) as u64
        })
    }

    /// Whether the engine schedules by vLLM's `priority` field.
    pub fn priority_policy(&self) -> bool {
        self.priority_policy.load(Ordering::Relaxed)
    }

    /// Engine slots beyond `max_in_flight` (for tenants below their share); under
    /// `[cluster]` this replica's leased part of them.
    pub(crate) fn engine_extra(&self) -> usize {
        self.configured_engine_extra()
            .min(self.fleet_engine.load(Ordering::Relaxed))
    }

    /// Engine slots beyond `max_in_flight` as configured: what the whole fleet may use.
    pub(crate) fn configured_engine_extra(&self) -> usize {
        if !self.priority_policy() {
            return 0;
        }
        self.engine_max_seqs
            .load(Ordering::Relaxed)
            .saturating_sub(self.configured_max_in_flight())
    }

    /// Requests of this replica in engine slots here.
    pub fn engine_in_flight(&self) -> usize {
        self.engine_in_flight.load(Ordering::Relaxed)
    }

    /// How many requests may be in flight here when claiming a slot of this kind: an ordinary
    /// slot does not count the engine slots in use; an engine slot needs one of them free.
    pub(crate) fn claim_limit(&self, engine_slot: bool) -> usize {
        let engine = self.engine_in_flight.load(Ordering::Relaxed);
        if engine_slot {
            let extra = self.engine_extra();
            if engine >= extra {
                return 0;
            }
            self.max_in_flight() + extra
        } else {
            self.max_in_flight() + engine
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn routable(&self, now: Instant) -> Routable {
        if self.is_draining() {
            return Routable::No;
        }
        lock(&self.health).routable(now)
    }

    /// Slots this backend contributes to its pool's capacity.
    pub(crate) fn capacity_share(&self, now: Instant) -> usize {
        match self.routable(now) {
            Routable::Full => self.max_in_flight(),
            Routable::Trial => self.in_flight().max(1),
            Routable::No => self.in_flight(),
        }
    }

    pub(crate) fn serves(&self, adapter: Option<&str>) -> bool {
        match (adapter, &self.adapters) {
            (None, _) | (Some(_), None) => true,
            (Some(a), Some(list)) => list.iter().any(|x| x == a),
        }
    }

    /// Claims a slot below `limit`; lock-free so concurrent picks never overshoot.
    pub(crate) fn try_claim(&self, limit: usize, engine_slot: bool) -> bool {
        let claimed = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if claimed && engine_slot {
            self.engine_in_flight.fetch_add(1, Ordering::AcqRel);
        }
        claimed
    }

    /// Gives back a slot claimed with [`Backend::try_claim`] (or taken over the limit).
    pub(crate) fn unclaim(&self, engine_slot: bool) {
        if engine_slot {
            self.engine_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn view(&self, now: Instant, ctx: &Route<'_>, limit: usize) -> View {
        let in_flight = self.in_flight();
        // Read in place: this runs for every candidate of every request.
        let load = lock(&self.load);
        let fresh = load
            .as_ref()
            .filter(|l| now.saturating_duration_since(l.at) <= ctx.stale);
        let (foreign, waiting, kv_usage, lora) = match fresh {
            Some(l) => {
                let s = &l.scraped;
                let foreign = (s.waiting + s.running - l.own_at_scrape as f64).max(0.0);
                (
                    foreign,
                    Some(s.waiting),
                    s.kv_usage,
                    lora_fit(s, ctx.adapter),
                )
            }
            None => (
                0.0,
                None,
                None,
                if ctx.adapter.is_some() {
                    LoraFit::Unknown
                } else {
                    LoraFit::Base
                },
            ),
        };
        drop(load);
        let prefix_match = if ctx.blocks.is_empty() {
            0
        } else {
            lock(&self.prefix).matched(ctx.blocks)
        };
        View {
            in_flight,
            max_in_flight: limit,
            foreign,
            waiting,
            kv_usage,
            prefix_match,
            lora,
        }
    }

    /// A request got its response head from this backend; true when that closed its breaker.
    pub(crate) fn succeeded(&self) -> bool {
        let mut h = lock(&self.health);
        let was = h.state(Instant::now());
        h.on_success();
        was != State::Healthy
    }

    /// A request or probe failed here; true when that ejected the backend.
    pub(crate) fn failed(&self, why: String) -> bool {
        let ejected = lock(&self.health).on_failure(Instant::now(), why.clone());
        if ejected {
            tracing::warn!(backend = %self.name, url = %self.url, reason = %why, "backend ejected");
        }
        ejected
    }

    /// What an operator sees about this backend.
    pub fn status(&self) -> BackendStatus {
        let now = Instant::now();
        let (state, consecutive_failures, ejections, last_error) = {
            let mut h = lock(&self.health);
            let state = match h.state(now) {
                State::Healthy => "healthy",
                State::HalfOpen => "half_open",
                State::Ejected { .. } => "ejected",
            };
            (
                state,
                h.consecutive_failures(),
                h.ejections,
                h.last_error.clone(),
            )
        };
        let load = lock(&self.load).clone();
        let pick = |r: Reason| self.stats.picks[r.index()].load(Ordering::Relaxed);
        BackendStatus {
            url: self.url.clone(),
            name: self.name.clone(),
            origin: self.origin,
            state,
            draining: self.is_draining(),
            removing: self.removing.load(Ordering::Relaxed),
            in_flight: self.in_flight(),
            max_in_flight: self.max_in_flight(),
            waiting: load.as_ref().map(|l| l.scraped.waiting),
            running: load.as_ref().map(|l| l.scraped.running),
            kv_cache_usage: load.as_ref().and_then(|l| l.scraped.kv_usage),
            running_adapters: load
                .as_ref()
                .map(|l| l.scraped.running_adapters.clone())
                .unwrap_or_default(),
            metrics_age_ms: load
                .as_ref()
                .map(|l| now.duration_since(l.at).as_millis() as u64),
            consecutive_failures,
            ejections,
            last_error,
            attempts: self.stats.attempts.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed),
            retries: self.stats.retries.load(Ordering::Relaxed),
            prefix_hits: pick(Reason::PrefixHit),
            prefix_index_blocks: lock(&self.prefix).len(),
        }
    }
}

pub(crate) fn lora_fit(s: &Scraped, adapter: Option<&str>) -> LoraFit {
    let Some(a) = adapter else {
        return LoraFit::Base;
    };
    if s.running_adapters.iter().any(|x| x == a) {
        LoraFit::Running
    } else if s.waiting_adapters.iter().any(|x| x == a) {
        LoraFit::Waiting
    } else if s
        .max_lora
        .is_some_and(|m| (s.running_adapters.len() as u32) < m)
    {
        LoraFit::FreeSlot
    } else {
        LoraFit::Unknown
    }
}

/// A backend as the admin API and the portal show it.
#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
    pub url: String,
    pub name: String,
    pub origin: Origin,
    /// `healthy`, `half_open` (one trial request) or `ejected`.
    pub state: &'static str,
    pub draining: bool,
    /// Leaves the pool once its in-flight requests finish.
    pub removing: bool,
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// From the backend's last `/metrics` scrape.
    pub waiting: Option<f64>,
    pub running: Option<f64>,
    pub kv_cache_usage: Option<f64>,
    pub running_adapters: Vec<String>,
    pub metrics_age_ms: Option<u64>,
    pub consecutive_failures: u32,
    pub ejections: u64,
    pub last_error: Option<String>,
    pub attempts: u64,
    pub failures: u64,
    pub retries: u64,
    pub prefix_hits: u64,
    pub prefix_index_blocks: usize,
}

/// What the router needs to know about one request.
#[derive(Clone, Copy, Debug)]
pub struct Route<'a> {
    pub strategy: Strategy,
    /// Prompt prefix block hashes (empty unless `prefix_aware`).
    pub blocks: &'a [u64],
    /// The LoRA adapter asked for, if any.
    pub adapter: Option<&'a str>,
    pub thresholds: Thresholds,
    pub stale: Duration,
}

impl Route<'_> {
    pub fn new<'a>(cfg: &RoutingConfig, blocks: &'a [u64], adapter: Option<&'a str>) -> Route<'a> {
        Route {
            strategy: cfg.strategy,
            blocks,
            adapter,
            thresholds: Thresholds {
                waiting: cfg.saturation_waiting,
                kv_usage: cfg.saturation_kv_usage,
            },
            stale: Duration::from_millis(cfg.metrics_stale_ms),
        }
    }
}
