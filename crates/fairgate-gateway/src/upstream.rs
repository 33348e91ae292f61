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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use fairgate_admission::fair::Mode;
use fairgate_admission::pool::{AdmitError, AdmitRequest, CostWeights, Permit, Pool, PoolConfig};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{
    AdmissionConfig, BackendConfig, Config, ModelConfig, RoutingConfig, SchedulerMode, Secret,
};
use crate::router::health::{Breaker, Routable, State};
use crate::router::prefix::PrefixIndex;
use crate::router::scrape::{self, Scraped};
use crate::router::{self, LoraFit, Reason, Strategy, Thresholds, View};

/// Request body type sent upstream.
pub type UpBody = BoxBody<Bytes, std::convert::Infallible>;
/// Speaks `http://` and `https://` (rustls); which one follows the backend's URL.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, UpBody>;

/// Connect timeout of the clients built for backends with their own CA (set with the shared
/// client, which comes first).
static CONNECT_TIMEOUT_MS: AtomicU64 = AtomicU64::new(2_000);

/// The client for backends: plain HTTP, or TLS trusting the system roots plus
/// `upstream.ca_file`.
pub fn http_client(cfg: &crate::config::UpstreamConfig) -> HttpClient {
    CONNECT_TIMEOUT_MS.store(cfg.connect_timeout_ms, Ordering::Relaxed);
    tls_client(
        Duration::from_millis(cfg.connect_timeout_ms),
        roots(true, cfg.ca_file.as_deref()),
    )
}

/// A client trusting exactly `roots` for `https://`.
fn tls_client(connect_timeout: Duration, roots: rustls::RootCertStore) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_connect_timeout(Some(connect_timeout));
    conn.set_nodelay(true);
    conn.enforce_http(false);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let tls = match tls {
        Ok(t) => t,
        Err(e) => {
            // Cannot happen with ring's defaults; fail closed (no roots) rather than panic.
            tracing::error!(error = %e, "TLS setup failed; https backends will not connect");
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(conn);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(https)
}

/// The key a backend config gives. Validation checked it; a variable unset since then sends
/// no key (the backend refuses, which shows in its health) rather than stopping the gateway.
fn key_of(cfg: &BackendConfig) -> Option<Secret> {
    cfg.resolve_api_key().unwrap_or_else(|e| {
        tracing::error!(backend = %cfg.display_name(), error = %e, "backend API key unavailable");
        None
    })
}

/// An error with its causes, for logs and operator views (never for clients).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Trust anchors: the system's (when `system`) plus those of `extra`. A CA file that became
/// unreadable since validation adds nothing: TLS then fails closed.
fn roots(system: bool, extra: Option<&std::path::Path>) -> rustls::RootCertStore {
    let mut store = rustls::RootCertStore::empty();
    if system {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = store.add(c);
        }
    }
    if let Some(f) = extra {
        match crate::tls::read_ca_file(f) {
            Ok(certs) => {
                for c in certs {
                    let _ = store.add(c);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "CA file unusable; its backends will not connect")
            }
        }
    }
    store
}

/// Where a backend came from: reloading the config file only touches its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Config,
    Api,
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
struct Load {
    at: Instant,
    scraped: Scraped,
    /// This gateway's in-flight requests there when the scrape returned.
    own_at_scrape: usize,
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
    api_key: arc_swap::ArcSwapOption<Secret>,
    /// Its own client when it trusts its own CA (`ca_file`); else the gateway's.
    client: Option<HttpClient>,
    pub origin: Origin,
    max_in_flight: AtomicUsize,
    max_tokens_in_flight: Option<u64>,
    /// Adapters this backend serves; `None`: all of its model's.
    adapters: Option<Vec<String>>,
    /// Requests currently holding a lease on this backend.
    in_flight: AtomicUsize,
    draining: AtomicBool,
    /// Leaves the pool once drained.
    removing: AtomicBool,
    watched: AtomicBool,
    health: Mutex<Breaker>,
    load: Mutex<Option<Load>>,
    prefix: Mutex<PrefixIndex>,
    pub stats: BackendStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few field updates; a panic inside one leaves data
    // that is still safe to route by.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backend {
    fn new(cfg: &BackendConfig, origin: Origin, routing: &RoutingConfig) -> Backend {
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
            max_tokens_in_flight: cfg.max_tokens_in_flight,
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

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn routable(&self, now: Instant) -> Routable {
        if self.is_draining() {
            return Routable::No;
        }
        lock(&self.health).routable(now)
    }

    /// Slots this backend contributes to its pool's capacity.
    fn capacity_share(&self, now: Instant) -> usize {
        match self.routable(now) {
            Routable::Full => self.max_in_flight(),
            Routable::Trial => self.in_flight().max(1),
            Routable::No => self.in_flight(),
        }
    }

    fn serves(&self, adapter: Option<&str>) -> bool {
        match (adapter, &self.adapters) {
            (None, _) | (Some(_), None) => true,
            (Some(a), Some(list)) => list.iter().any(|x| x == a),
        }
    }

    /// Claims a slot below `limit`; lock-free so concurrent picks never overshoot.
    fn try_claim(&self, limit: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn view(&self, now: Instant, ctx: &Route<'_>, trial: bool) -> View {
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
            max_in_flight: if trial { 1 } else { self.max_in_flight() },
            foreign,
            waiting,
            kv_usage,
            prefix_match,
            lora,
        }
    }

    /// A request got its response head from this backend; true when that closed its breaker.
    fn succeeded(&self) -> bool {
        let mut h = lock(&self.health);
        let was = h.state(Instant::now());
        h.on_success();
        was != State::Healthy
    }

    /// A request or probe failed here; true when that ejected the backend.
    fn failed(&self, why: String) -> bool {
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

fn lora_fit(s: &Scraped, adapter: Option<&str>) -> LoraFit {
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
    backends: ArcSwap<Vec<Arc<Backend>>>,
    /// Admission: capacity follows the usable backends (see the module docs).
    pub fair: Arc<Pool>,
    /// Round-robin position and tie-breaker.
    rotation: AtomicUsize,
    /// Serializes changes to the backend list.
    edit: Mutex<()>,
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
    pool: Arc<ModelPool>,
    /// Backends this request was sent to, in order.
    tried: Vec<Arc<Backend>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::AcqRel);
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
            .pick(route, &exclude)
            .or_else(|| self.pool.overcommit(route, &exclude));
        let Some(next) = next else {
            return false;
        };
        next.stats.retries.fetch_add(1, Ordering::Relaxed);
        let prev = std::mem::replace(&mut self.backend, next);
        prev.in_flight.fetch_sub(1, Ordering::AcqRel);
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
    }
}

impl ModelPool {
    pub fn new(cfg: &ModelConfig, adm: &AdmissionConfig, routing: &RoutingConfig) -> ModelPool {
        let backends: Vec<Arc<Backend>> = cfg
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b, Origin::Config, routing)))
            .collect();
        let (cap, tokens) = capacity(&backends, Instant::now());
        ModelPool {
            name: cfg.name.clone(),
            adapters: cfg.adapters.clone(),
            backends: ArcSwap::from_pointee(backends),
            fair: Pool::new(cfg.name.clone(), pool_config(cap, tokens, adm)),
            rotation: AtomicUsize::new(0),
            edit: Mutex::new(()),
        }
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
    }

    /// Waits for admission, then picks the backend. Cancel-safe: a caller that is dropped
    /// while waiting leaves the queue at once.
    pub async fn acquire(
        self: &Arc<Self>,
        req: AdmitRequest<'_>,
        route: &Route<'_>,
    ) -> Result<Lease, AcquireError> {
        if !self.has_usable(route.adapter) {
            return Err(AcquireError::NoBackend {
                retry_after: self.next_recovery(),
            });
        }
        let permit = self.fair.admit(req).await.map_err(AcquireError::Admit)?;
        // A permit means a slot exists, unless usability changed in between: then the least
        // loaded usable backend takes one more than its share for a moment.
        let backend = self
            .pick(route, &[])
            .or_else(|| self.overcommit(route, &[]))
            .ok_or_else(|| AcquireError::NoBackend {
                retry_after: self.next_recovery(),
            })?;
        Ok(Lease {
            backend,
            permit,
            pool: self.clone(),
            tried: Vec::new(),
        })
    }

    /// Chooses and claims a backend with a free slot by the request's strategy.
    fn pick(&self, route: &Route<'_>, exclude: &[&Arc<Backend>]) -> Option<Arc<Backend>> {
        let list = self.backends.load();
        for _ in 0..4 {
            let now = Instant::now();
            let mut cands: Vec<(&Arc<Backend>, bool)> = Vec::with_capacity(list.len());
            for b in list.iter() {
                if exclude.iter().any(|x| Arc::ptr_eq(x, b)) || !b.serves(route.adapter) {
                    continue;
                }
                match b.routable(now) {
                    Routable::Full => cands.push((b, false)),
                    Routable::Trial => cands.push((b, true)),
                    Routable::No => {}
                }
            }
            let views: Vec<View> = cands
                .iter()
                .map(|(b, trial)| b.view(now, route, *trial))
                .collect();
            let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
            let (i, reason) = router::choose(route.strategy, &views, rotation, &route.thresholds)?;
            let (b, trial) = cands[i];
            let limit = if trial { 1 } else { b.max_in_flight() };
            if b.try_claim(limit) {
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
    fn overcommit(&self, route: &Route<'_>, exclude: &[&Arc<Backend>]) -> Option<Arc<Backend>> {
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
        self.fair.reconfigure(pool_config(cap, tokens, adm));
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
        for bc in &cfg.backends {
            match self.backend(&bc.url) {
                Some(b) => {
                    b.max_in_flight.store(bc.max_in_flight, Ordering::Relaxed);
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

/// Slots (and, when every usable backend declares one, the token bound) of a backend list.
fn capacity(list: &[Arc<Backend>], now: Instant) -> (usize, Option<u64>) {
    let slots = list.iter().map(|b| b.capacity_share(now)).sum();
    let tokens = list
        .iter()
        .filter(|b| b.routable(now) == Routable::Full)
        .map(|b| b.max_tokens_in_flight)
        .sum::<Option<u64>>();
    (slots, tokens)
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

/// What a backend watcher reads on each round, and nothing more: the HTTP client and the live
/// config (probe and scrape intervals). It holds the config weakly, so watchers end when the
/// gateway that started them is dropped.
#[derive(Clone)]
pub struct WatchContext {
    pub client: HttpClient,
    pub live: Weak<ArcSwap<Config>>,
}

impl WatchContext {
    /// Starts the health prober and metrics scraper of every backend of `upstreams` not yet
    /// watched. Each watcher ends when its backend leaves the pool, the gateway is dropped or
    /// `stop` fires.
    pub fn watch_all(&self, upstreams: &Upstreams, stop: &CancellationToken) {
        for pool in &upstreams.pools {
            for b in pool.backends().iter() {
                self.watch(pool, b, stop);
            }
        }
    }

    /// Starts one backend's watcher (once).
    pub fn watch(&self, pool: &Arc<ModelPool>, b: &Arc<Backend>, stop: &CancellationToken) {
        if b.watched.swap(true, Ordering::AcqRel) {
            return;
        }
        let cx = self.clone();
        let pool = Arc::downgrade(pool);
        let b = b.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = watcher(cx, pool, b) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn watcher(cx: WatchContext, pool: Weak<ModelPool>, b: Arc<Backend>) {
    let mut next_probe = Instant::now();
    loop {
        let Some(live) = cx.live.upgrade() else {
            return;
        };
        let routing = live.load().routing.clone();
        drop(live);
        let client = &cx.client;
        let Some(pool) = pool.upgrade() else { return };
        if b.removing.load(Ordering::Relaxed) && !pool.backends().iter().any(|x| Arc::ptr_eq(x, &b))
        {
            return;
        }
        let timeout = Duration::from_millis(routing.probe_timeout_ms);
        let client = b.client(client);
        match get(client, &b, "/metrics", timeout).await {
            Ok((200, body)) => match std::str::from_utf8(&body).ok().and_then(scrape::parse) {
                Some(scraped) => {
                    if let Some(kv) = scraped.kv_tokens {
                        // One index block ≈ 16 tokens (64 bytes).
                        lock(&b.prefix).set_capacity((kv / 16) as usize);
                    }
                    *lock(&b.load) = Some(Load {
                        at: Instant::now(),
                        scraped,
                        own_at_scrape: b.in_flight(),
                    });
                }
                None => {
                    b.stats.scrape_errors.fetch_add(1, Ordering::Relaxed);
                }
            },
            _ => {
                b.stats.scrape_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if Instant::now() >= next_probe {
            let before = b.routable(Instant::now());
            match get(client, &b, "/health", timeout).await {
                Ok((s, _)) if (200..300).contains(&s) => {
                    lock(&b.health).on_probe_ok(Instant::now())
                }
                Ok((s, _)) => {
                    b.failed(format!("health probe answered HTTP {s}"));
                }
                Err(e) => {
                    b.failed(format!("health probe failed: {e}"));
                }
            }
            if b.routable(Instant::now()) != before {
                tracing::info!(model = %pool.name, backend = %b.url, state = b.status().state, "backend health changed");
            }
            pool.refresh();
            next_probe = Instant::now() + Duration::from_millis(routing.probe_interval_ms);
        }
        drop(pool);
        tokio::time::sleep(Duration::from_millis(routing.scrape_interval_ms)).await;
    }
}

/// A small GET of `path` on backend `b` (with its credential) with a deadline: status and body.
async fn get(
    client: &HttpClient,
    b: &Backend,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    let mut req = http::Request::get(format!("{}{path}", b.url))
        .body(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
        .map_err(|e| e.to_string())?;
    b.authorize(req.headers_mut());
    let fut = async {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                "connection refused or unreachable".to_owned()
            } else {
                e.to_string()
            }
        })?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), 4 * 1024 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[tokio::test(start_paused = true)]
    async fn leases_spread_and_respect_capacity() {
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
    async fn draining_takes_capacity_away_but_keeps_running_requests() {
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
    async fn ejected_backend_gets_nothing_and_failover_moves_the_lease() {
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
