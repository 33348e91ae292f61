//! Prometheus metrics of the gateway, all in one registry served at `GET /metrics`.
//!
//! Names start with `fairgate_`. Load gauges (in flight, queued) are read from the pools at
//! scrape time rather than updated per request, so the hot path only touches counters and
//! histograms.
//!
//! Series are bounded (issue 10): every family is a [`Family`], whose `with_label_values`
//! passes each label through [`Labels`] first. Models and tenants the gateway does not know
//! (a client's made-up `model`, a deleted tenant) become `_unknown`, requests without a tenant
//! `_anonymous`, status and reason labels come from fixed shapes, backends are labelled by
//! their name (never their URL), and a family holding `metrics.max_series` label sets sends
//! new ones to `_overflow`, counted in `fairgate_metrics_series_dropped_total`. Per-user figures
//! are never labels: they come from the ledger.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::router::Reason;

use crate::upstream::Upstreams;

/// Label value of a model or tenant the gateway does not know.
pub const UNKNOWN: &str = "_unknown";
/// Tenant label of a request no key was found for.
pub const ANONYMOUS: &str = "_anonymous";
/// Every label of a series that would exceed its family's cap.
pub const OVERFLOW: &str = "_overflow";
/// A status or reason label of an unexpected shape.
pub const OTHER: &str = "_other";

/// What a label holds, which decides the values it may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A configured model, adapter or alias; else `_unknown` (empty stays empty: no model yet).
    Model,
    /// A tenant of the directory; else `_unknown`; empty is `_anonymous`.
    Tenant,
    /// A backend's name (validated at config load / admin add).
    Backend,
    /// An HTTP status code.
    Status,
    /// A code-chosen word (`admitted`, an error class, a routing reason).
    Code,
}

/// The known label values, refreshed from the config and the tenant directory.
pub struct Labels {
    models: ArcSwap<HashSet<String>>,
    tenants: ArcSwap<HashSet<String>>,
    max_series: AtomicUsize,
}

impl Default for Labels {
    fn default() -> Self {
        Labels {
            models: ArcSwap::from_pointee(HashSet::new()),
            tenants: ArcSwap::from_pointee(HashSet::new()),
            max_series: AtomicUsize::new(10_000),
        }
    }
}

fn word(v: &str, extra: &[u8]) -> bool {
    v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || extra.contains(&b))
}

impl Labels {
    /// The value a label of `kind` may carry for `v`.
    pub fn clean<'a>(&self, kind: Kind, v: &'a str) -> &'a str {
        match kind {
            Kind::Model if v.is_empty() => "",
            Kind::Model if self.models.load().contains(v) => v,
            Kind::Model => UNKNOWN,
            Kind::Tenant if v.is_empty() => ANONYMOUS,
            Kind::Tenant if self.tenants.load().contains(v) => v,
            Kind::Tenant => UNKNOWN,
            Kind::Backend if !v.is_empty() && word(v, b".:@") => v,
            Kind::Backend => OTHER,
            Kind::Status if v.len() == 3 && v.parse::<u16>().is_ok_and(|s| s >= 100) => v,
            Kind::Status => OTHER,
            Kind::Code if word(v, b".") => v,
            Kind::Code => OTHER,
        }
    }

    pub fn set_models<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let set: HashSet<String> = names.into_iter().map(str::to_owned).collect();
        if **self.models.load() != set {
            self.models.store(Arc::new(set));
        }
    }

    pub fn set_tenants<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let set: HashSet<String> = names.into_iter().map(str::to_owned).collect();
        if **self.tenants.load() != set {
            self.tenants.store(Arc::new(set));
        }
    }

    pub fn set_max_series(&self, n: usize) {
        self.max_series.store(n.max(1), Ordering::Relaxed);
    }

    pub fn max_series(&self) -> usize {
        self.max_series.load(Ordering::Relaxed)
    }
}

/// What the families share: the known values and the counter of diverted label sets.
struct Shared {
    labels: Labels,
    dropped: IntCounterVec,
}

/// A metric family whose label values are bounded (see the module docs); same call shape as
/// the prometheus vector it wraps.
pub struct Family<T: MetricVecBuilder> {
    name: &'static str,
    vec: MetricVec<T>,
    kinds: Vec<Kind>,
    shared: Arc<Shared>,
    /// The label sets this family holds, by hash, with their values and series (bounded by
    /// `max_series`): a hit hands out the series without prometheus's own lookup; the values
    /// are compared, so two label sets with one hash never share a series.
    seen: Mutex<HashMap<u64, Held<T::M>>>,
}

/// Label values of one call, cleaned, without a heap allocation (families have at most
/// this many labels; more would spill into a `Vec`).
const INLINE_LABELS: usize = 4;

fn family<T: MetricVecBuilder>(
    shared: &Arc<Shared>,
    name: &'static str,
    vec: MetricVec<T>,
    labels: &[&str],
) -> Family<T> {
    Family {
        name,
        vec,
        kinds: labels
            .iter()
            .map(|l| match *l {
                "model" => Kind::Model,
                "tenant" => Kind::Tenant,
                "backend" => Kind::Backend,
                "status" => Kind::Status,
                _ => Kind::Code,
            })
            .collect(),
        shared: shared.clone(),
        seen: Mutex::new(HashMap::new()),
    }
}

/// One label set a family holds: its cleaned values and its series.
struct Held<M> {
    values: Box<[Box<str>]>,
    series: M,
}

impl<M: Clone> Held<M> {
    /// The series, if these are its values.
    fn series_for(&self, values: &[&str]) -> Option<M> {
        let same = self.values.len() == values.len()
            && self.values.iter().zip(values).all(|(a, b)| &**a == *b);
        same.then(|| self.series.clone())
    }
}

/// Up to [`INLINE_LABELS`] label values on the stack, more in a `Vec`.
#[derive(Default)]
struct Cleaned<'a> {
    inline: [&'a str; INLINE_LABELS],
    len: usize,
    spill: Vec<&'a str>,
}

impl<'a> Cleaned<'a> {
    fn push(&mut self, v: &'a str) {
        match self.inline.get_mut(self.len) {
            Some(slot) if self.spill.is_empty() => {
                *slot = v;
                self.len += 1;
            }
            _ => {
                if self.spill.is_empty() {
                    self.spill.extend_from_slice(&self.inline);
                }
                self.spill.push(v);
            }
        }
    }

    fn as_slice(&self) -> &[&'a str] {
        if self.spill.is_empty() {
            self.inline.get(..self.len).unwrap_or_default()
        } else {
            &self.spill
        }
    }
}

fn hash_of(vals: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for v in vals {
        v.hash(&mut h);
    }
    h.finish()
}

impl<T: MetricVecBuilder> Family<T>
where
    T::M: Clone,
{
    fn cleaned<'a>(&self, vals: &[&'a str]) -> Cleaned<'a> {
        let mut out = Cleaned::default();
        for (v, k) in vals
            .iter()
            .zip(self.kinds.iter().chain(std::iter::repeat(&Kind::Code)))
        {
            out.push(self.shared.labels.clean(*k, v));
        }
        out
    }

    /// The series for these labels, bounded: unknown values mapped, a full family diverted
    /// to `_overflow`.
    pub fn with_label_values(&self, vals: &[&str]) -> T::M {
        let clean = self.cleaned(vals);
        let clean = clean.as_slice();
        let h = hash_of(clean);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(&h) {
            Some(held) => {
                // Another label set with this hash (never seen in practice) still gets its
                // own series, from prometheus's lookup.
                return held
                    .series_for(clean)
                    .unwrap_or_else(|| self.vec.with_label_values(clean));
            }
            None if seen.len() < self.shared.labels.max_series() => {
                let series = self.vec.with_label_values(clean);
                let values = clean.iter().map(|v| Box::from(*v)).collect();
                seen.insert(
                    h,
                    Held {
                        values,
                        series: series.clone(),
                    },
                );
                return series;
            }
            None => {}
        }
        drop(seen);
        self.shared.dropped.with_label_values(&[self.name]).inc();
        let overflow = vec![OVERFLOW; clean.len()];
        self.vec.with_label_values(&overflow)
    }

    /// Removes a series (a backend that left); absent ones are ignored.
    pub fn remove_label_values(&self, vals: &[&str]) {
        let clean = self.cleaned(vals);
        let clean = clean.as_slice();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if self.vec.remove_label_values(clean).is_ok() {
            let h = hash_of(clean);
            if seen
                .get(&h)
                .is_some_and(|held| held.series_for(clean).is_some())
            {
                seen.remove(&h);
            }
        }
    }

    /// The series for these labels if it exists; never creates one.
    pub fn existing(&self, vals: &[&str]) -> Option<T::M> {
        let clean = self.cleaned(vals);
        let clean = clean.as_slice();
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash_of(clean))?
            .series_for(clean)
    }

    /// Label sets held now (for tests and the cap).
    pub fn series(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

pub type CounterB = <IntCounterVec as VecOf>::B;
pub type HistB = <HistogramVec as VecOf>::B;
pub type IGaugeB = <IntGaugeVec as VecOf>::B;
pub type FGaugeB = <GaugeVec as VecOf>::B;

/// Names the builder type of a prometheus vector.
pub trait VecOf {
    type B: MetricVecBuilder;
}
impl<T: MetricVecBuilder> VecOf for MetricVec<T> {
    type B = T;
}

pub struct Metrics {
    pub registry: Registry,
    /// Requests by tenant, model and HTTP status the client received.
    pub requests: Family<CounterB>,
    pub prompt_tokens: Family<CounterB>,
    pub completion_tokens: Family<CounterB>,
    /// What requests cost at the models' prices, in micros (spend per tenant).
    pub cost_micros: Family<CounterB>,
    /// Guardrail findings by guardrail (`pii`, `injection`, `pii_output`, `external`), tenant
    /// and action (`logged`, `redacted`, `blocked`; the hook's `failed_open`,
    /// `failed_closed`): one per request and guardrail that had any.
    pub guardrail_findings: Family<CounterB>,
    pub ttft: Family<HistB>,
    /// TTFT per tenant: what fair share and the headroom do for each tenant's latency.
    pub tenant_ttft: Family<HistB>,
    pub inter_token: Family<HistB>,
    pub e2e: Family<HistB>,
    pub queue_wait: Family<HistB>,
    /// Time spent inside the gateway itself (request path before the upstream call plus
    /// response handling), excluding queue wait and upstream time.
    pub overhead: Family<HistB>,
    /// Admission decisions by model, tenant, result (`admitted`, `rejected`, `cache_hit`) and
    /// rejection reason.
    pub admissions: Family<CounterB>,
    /// MCP tool calls by server, tenant and outcome (`ok`, `denied`, `rate_limited`,
    /// `upstream_error`).
    pub mcp_calls: Family<CounterB>,
    /// Uploads spooled to a temporary file instead of memory, by the endpoint's unit.
    pub uploads_spooled: Family<CounterB>,
    in_flight: Family<IGaugeB>,
    queued: Family<IGaugeB>,
    tenant_queued: Family<IGaugeB>,
    tenant_in_flight: Family<IGaugeB>,
    tenant_service: Family<CounterB>,
    tenant_weight: Family<IGaugeB>,
    backend_in_flight: Family<IGaugeB>,
    backend_capacity: Family<IGaugeB>,
    backend_up: Family<IGaugeB>,
    backend_waiting: Family<FGaugeB>,
    backend_kv: Family<FGaugeB>,
    backend_attempts: Family<CounterB>,
    backend_failures: Family<CounterB>,
    backend_retries: Family<CounterB>,
    backend_ejections: Family<CounterB>,
    backend_picks: Family<CounterB>,
    shared: Arc<Shared>,
    /// (model, backend name) pairs exported at the last scrape, to remove those that left.
    exported_backends: Mutex<HashSet<(String, String)>>,
    cluster: ClusterMetrics,
}

/// The replica's view of the fleet (`[cluster]` only; zero otherwise).
struct ClusterMetrics {
    up: prometheus::IntGauge,
    members: prometheus::IntGauge,
    round_trips: prometheus::IntCounter,
    round_trip_micros: prometheus::IntCounter,
    errors: prometheus::IntCounter,
    published: prometheus::IntCounter,
    received: prometheus::IntCounter,
    quota_fleet: prometheus::IntCounter,
    quota_local: prometheus::IntCounter,
    quota_pending: prometheus::IntGauge,
}

impl ClusterMetrics {
    fn new(registry: &Registry) -> Result<ClusterMetrics, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<prometheus::IntGauge, prometheus::Error> {
            let g = prometheus::IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter =
            |name: &str, help: &str| -> Result<prometheus::IntCounter, prometheus::Error> {
                let c = prometheus::IntCounter::new(name, help)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        Ok(ClusterMetrics {
            up: gauge(
                "fairgate_cluster_redis_up",
                "1 while Redis answers (the replica is in the fleet), 0 in local mode",
            )?,
            members: gauge(
                "fairgate_cluster_members",
                "Live replicas as of this replica's last heartbeat",
            )?,
            round_trips: counter(
                "fairgate_cluster_redis_round_trips_total",
                "Redis calls that succeeded",
            )?,
            round_trip_micros: counter(
                "fairgate_cluster_redis_round_trip_microseconds_total",
                "Time those calls took, summed (divide by the round trips for the mean)",
            )?,
            errors: counter(
                "fairgate_cluster_redis_errors_total",
                "Redis calls that failed or exceeded cluster.redis_timeout_ms",
            )?,
            published: counter(
                "fairgate_cluster_changes_published_total",
                "Changes this replica announced to the others",
            )?,
            received: counter(
                "fairgate_cluster_changes_received_total",
                "Changes other replicas announced that this one applied",
            )?,
            quota_fleet: counter(
                "fairgate_cluster_quota_fleet_total",
                "Requests with limits or budgets checked against the fleet's state in Redis",
            )?,
            quota_local: counter(
                "fairgate_cluster_quota_local_total",
                "Requests with limits or budgets checked locally because Redis did not answer",
            )?,
            quota_pending: gauge(
                "fairgate_cluster_quota_settlements_pending",
                "Settlements of limits and budgets waiting for Redis",
            )?,
        })
    }
}

/// Moves a counter up to `total` (counters published from running totals kept elsewhere).
fn follow(c: &prometheus::IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5,
];
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05,
];

/// Quantile `q` of a histogram, estimated from its buckets (linear within the bucket that
/// holds it, as Prometheus' `histogram_quantile` does); `None` while it is empty.
pub fn histogram_quantile(h: &prometheus::Histogram, q: f64) -> Option<f64> {
    use prometheus::core::Metric;
    let m = h.metric();
    let hist = m.get_histogram();
    let count = hist.get_sample_count();
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for b in hist.get_bucket() {
        let (upper, cum) = (b.get_upper_bound(), b.get_cumulative_count());
        if cum as f64 >= rank {
            let inside = (cum - below).max(1) as f64;
            return Some(lower + (upper - lower) * (rank - below as f64) / inside);
        }
        (lower, below) = (upper, cum);
    }
    // Beyond the last finite bucket: its bound is the best estimate there is.
    Some(lower)
}

impl Metrics {
    /// A tenant's TTFT p50 and p99 on `model` since start, in milliseconds (the live
    /// fair-share view); `None` before its first token.
    pub fn tenant_ttft_ms(&self, model: &str, tenant: &str) -> Option<(f64, f64)> {
        let h = self.tenant_ttft.existing(&[model, tenant])?;
        Some((
            histogram_quantile(&h, 0.5)? * 1000.0,
            histogram_quantile(&h, 0.99)? * 1000.0,
        ))
    }

    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let dropped = IntCounterVec::new(
            Opts::new(
                "fairgate_metrics_series_dropped_total",
                "Updates sent to the `_overflow` series because their family already held metrics.max_series label sets",
            ),
            &["metric"],
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let shared = Arc::new(Shared {
            labels: Labels::default(),
            dropped,
        });
        let counter = |name: &'static str,
                       help: &str,
                       labels: &[&str]|
         -> Result<Family<CounterB>, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(family(&shared, name, c, labels))
        };
        let hist = |name: &'static str,
                    help: &str,
                    buckets: &[f64],
                    labels: &[&str]|
         -> Result<Family<HistB>, prometheus::Error> {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(family(&shared, name, h, labels))
        };
        let gauge = |name: &'static str,
                     help: &str,
                     labels: &[&str]|
         -> Result<Family<IGaugeB>, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(family(&shared, name, g, labels))
        };
        let fgauge = |name: &'static str,
                      help: &str,
                      labels: &[&str]|
         -> Result<Family<FGaugeB>, prometheus::Error> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(family(&shared, name, g, labels))
        };
        let mb = &["model", "backend"];
        Ok(Metrics {
            backend_up: gauge(
                "fairgate_backend_up",
                "1 when the backend takes new requests (healthy or on trial, not draining), else 0",
                mb,
            )?,
            backend_waiting: fgauge(
                "fairgate_backend_waiting_requests",
                "The backend's own queue (vllm:num_requests_waiting) as last scraped",
                mb,
            )?,
            backend_kv: fgauge(
                "fairgate_backend_kv_cache_usage",
                "The backend's KV-cache use (vllm:kv_cache_usage_perc, 0-1) as last scraped",
                mb,
            )?,
            backend_attempts: counter(
                "fairgate_backend_requests_total",
                "Requests sent to the backend (every attempt)",
                mb,
            )?,
            backend_failures: counter(
                "fairgate_backend_errors_total",
                "Attempts that failed before the first byte (refused, timeout, 5xx)",
                mb,
            )?,
            backend_retries: counter(
                "fairgate_backend_retries_total",
                "Attempts that were a failover from another backend",
                mb,
            )?,
            backend_ejections: counter(
                "fairgate_backend_ejections_total",
                "Times the backend's circuit breaker opened",
                mb,
            )?,
            backend_picks: counter(
                "fairgate_backend_picks_total",
                "Routing decisions by backend and reason (round_robin, least_loaded, prefix_hit, spill, cold)",
                &["model", "backend", "reason"],
            )?,
            mcp_calls: counter(
                "fairgate_mcp_calls_total",
                "MCP tool calls (tools/call) by server, tenant and outcome",
                &["server", "tenant", "outcome"],
            )?,
            uploads_spooled: counter(
                "fairgate_uploads_spooled_total",
                "Multipart uploads over 1 MiB read to a temporary file instead of memory, by the endpoint's unit (audio_seconds, images, ...)",
                &["unit"],
            )?,
            requests: counter(
                "fairgate_requests_total",
                "Requests by tenant, model and HTTP status returned",
                &["tenant", "model", "status"],
            )?,
            prompt_tokens: counter(
                "fairgate_prompt_tokens_total",
                "Prompt tokens served, by tenant and model",
                &["tenant", "model"],
            )?,
            completion_tokens: counter(
                "fairgate_completion_tokens_total",
                "Completion tokens served, by tenant and model",
                &["tenant", "model"],
            )?,
            cost_micros: counter(
                "fairgate_cost_micros_total",
                "What the served tokens cost at the models' prices, in micros (1e-6 of the currency), by tenant and model",
                &["tenant", "model"],
            )?,
            guardrail_findings: counter(
                "fairgate_guardrail_findings_total",
                "Requests a guardrail flagged, by guardrail (pii, injection, pii_output, external), tenant and action (logged, redacted, blocked, failed_open, failed_closed)",
                &["guardrail", "tenant", "action"],
            )?,
            ttft: hist(
                "fairgate_time_to_first_token_seconds",
                "Time from request arrival to the first content token (streams) or response headers",
                LATENCY_BUCKETS,
                &["model"],
            )?,
            tenant_ttft: hist(
                "fairgate_tenant_time_to_first_token_seconds",
                "Time from request arrival to the first content token (streams) or response headers, per model and tenant",
                LATENCY_BUCKETS,
                &["model", "tenant"],
            )?,
            inter_token: hist(
                "fairgate_inter_token_latency_seconds",
                "Time between consecutive content chunks of a stream",
                ITL_BUCKETS,
                &["model"],
            )?,
            e2e: hist(
                "fairgate_request_duration_seconds",
                "End-to-end request duration as seen by the gateway",
                LATENCY_BUCKETS,
                &["model"],
            )?,
            queue_wait: hist(
                "fairgate_queue_wait_seconds",
                "Time spent waiting for admission (limits and fair-share queue), per model and tenant",
                LATENCY_BUCKETS,
                &["model", "tenant"],
            )?,
            admissions: counter(
                "fairgate_admission_decisions_total",
                "Admission decisions by model, tenant, result and rejection reason",
                &["model", "tenant", "result", "reason"],
            )?,
            tenant_queued: gauge(
                "fairgate_tenant_queued_requests",
                "Requests queued for fair-share admission, per model and tenant",
                &["model", "tenant"],
            )?,
            tenant_in_flight: gauge(
                "fairgate_tenant_in_flight_requests",
                "Admitted requests in flight, per model and tenant",
                &["model", "tenant"],
            )?,
            tenant_service: counter(
                "fairgate_tenant_weighted_service_total",
                "Weighted token service received (input_token_cost x prompt + output_token_cost x completion tokens), per model and tenant",
                &["model", "tenant"],
            )?,
            tenant_weight: gauge(
                "fairgate_tenant_weight",
                "Fair-share weight in effect, per model and tenant",
                &["model", "tenant"],
            )?,
            overhead: hist(
                "fairgate_gateway_overhead_seconds",
                "Time spent in the gateway itself, excluding queue wait and upstream time",
                OVERHEAD_BUCKETS,
                &["model"],
            )?,
            in_flight: gauge(
                "fairgate_in_flight_requests",
                "Requests holding a backend slot, per model",
                &["model"],
            )?,
            queued: gauge(
                "fairgate_queued_requests",
                "Requests waiting for backend capacity, per model (autoscale on this)",
                &["model"],
            )?,
            backend_in_flight: gauge(
                "fairgate_backend_in_flight_requests",
                "Requests in flight per backend",
                &["model", "backend"],
            )?,
            backend_capacity: gauge(
                "fairgate_backend_max_in_flight",
                "Configured in-flight capacity per backend",
                &["model", "backend"],
            )?,
            shared: shared.clone(),
            exported_backends: Mutex::new(HashSet::new()),
            cluster: ClusterMetrics::new(&registry)?,
            registry,
        })
    }

    /// Copies the cluster's state into its series (at scrape time).
    pub fn observe_cluster(&self, c: &fairgate_cluster::Cluster) {
        let m = &self.cluster;
        let s = c.stats();
        m.up.set(i64::from(c.redis_up()));
        m.members.set(c.members().len() as i64);
        follow(&m.round_trips, s.round_trips);
        follow(&m.round_trip_micros, s.round_trip_micros);
        follow(&m.errors, s.errors);
        follow(&m.published, s.changes_published);
        follow(&m.received, s.changes_received);
    }

    /// Copies the fleet quota's counters into their series (at scrape time).
    pub fn observe_quota(&self, q: &crate::quota::FleetQuota) {
        let m = &self.cluster;
        let (fleet, local) = q.checks();
        follow(&m.quota_fleet, fleet);
        follow(&m.quota_local, local);
        m.quota_pending.set(q.pending() as i64);
    }

    /// The known label values and the series cap.
    pub fn labels(&self) -> &Labels {
        &self.shared.labels
    }

    /// Brings the known models (with adapters and aliases), tenants and the series cap up to
    /// date; called at start, on every directory refresh and on config reload.
    pub fn learn<'a>(
        &self,
        config: &crate::config::Config,
        upstreams: &Upstreams,
        tenants: impl IntoIterator<Item = &'a str>,
    ) {
        let l = self.labels();
        // MCP servers' rows carry `mcp:{server}` as their model.
        let mcp_models: Vec<String> = config
            .mcp
            .servers
            .iter()
            .map(|s| format!("mcp:{}", s.name))
            .collect();
        l.set_models(
            upstreams
                .names()
                .chain(config.models.iter().map(|m| m.name.as_str()))
                .chain(
                    config
                        .models
                        .iter()
                        .flat_map(|m| m.adapters.iter().map(String::as_str)),
                )
                .chain(config.aliases.iter().map(|a| a.name.as_str()))
                .chain(mcp_models.iter().map(String::as_str)),
        );
        l.set_tenants(tenants);
        l.set_max_series(config.metrics.max_series);
    }

    /// Every backend family, with its label set for (model, backend).
    fn remove_backend(&self, model: &str, backend: &str) {
        let mb = [model, backend];
        for f in [
            &self.backend_in_flight,
            &self.backend_capacity,
            &self.backend_up,
        ] {
            f.remove_label_values(&mb);
        }
        for f in [&self.backend_waiting, &self.backend_kv] {
            f.remove_label_values(&mb);
        }
        for f in [
            &self.backend_attempts,
            &self.backend_failures,
            &self.backend_retries,
            &self.backend_ejections,
        ] {
            f.remove_label_values(&mb);
        }
        for r in Reason::ALL {
            self.backend_picks
                .remove_label_values(&[model, backend, r.as_str()]);
        }
    }

    /// Renders the registry, refreshing load gauges from the pools first.
    pub fn render(&self, upstreams: &Upstreams) -> Vec<u8> {
        let mut exported = HashSet::new();
        for pool in &upstreams.pools {
            self.in_flight
                .with_label_values(&[&pool.name])
                .set(pool.in_flight() as i64);
            self.queued
                .with_label_values(&[&pool.name])
                .set(pool.queued() as i64);
            for t in pool.fair.state().tenants {
                let labels = [pool.name.as_str(), &t.view.name];
                self.tenant_queued
                    .with_label_values(&labels)
                    .set(t.view.queued as i64);
                self.tenant_in_flight
                    .with_label_values(&labels)
                    .set(t.view.in_flight as i64);
                self.tenant_weight
                    .with_label_values(&labels)
                    .set(t.view.weight as i64);
                // The pool keeps the running total; the counter follows it upwards (a refund
                // of an over-estimated prompt can lower the total slightly; counters may not).
                follow(
                    &self.tenant_service.with_label_values(&labels),
                    t.view.service,
                );
            }
            for b in pool.backends().iter() {
                exported.insert((pool.name.clone(), b.name.clone()));
                let labels = [pool.name.as_str(), &b.name];
                let s = b.status();
                self.backend_in_flight
                    .with_label_values(&labels)
                    .set(s.in_flight as i64);
                self.backend_capacity
                    .with_label_values(&labels)
                    .set(s.max_in_flight as i64);
                self.backend_up
                    .with_label_values(&labels)
                    .set(i64::from(s.state != "ejected" && !s.draining));
                if let Some(w) = s.waiting {
                    self.backend_waiting.with_label_values(&labels).set(w);
                }
                if let Some(k) = s.kv_cache_usage {
                    self.backend_kv.with_label_values(&labels).set(k);
                }
                follow(
                    &self.backend_attempts.with_label_values(&labels),
                    s.attempts,
                );
                follow(
                    &self.backend_failures.with_label_values(&labels),
                    s.failures,
                );
                follow(&self.backend_retries.with_label_values(&labels), s.retries);
                follow(
                    &self.backend_ejections.with_label_values(&labels),
                    s.ejections,
                );
                for r in Reason::ALL {
                    let n = b.stats.picks[r.index()].load(std::sync::atomic::Ordering::Relaxed);
                    if n > 0 {
                        follow(
                            &self.backend_picks.with_label_values(&[
                                &pool.name,
                                &b.name,
                                r.as_str(),
                            ]),
                            n,
                        );
                    }
                }
            }
        }
        // Backends that left (removed live, reconciled away on reload) take their series along.
        {
            let mut last = self
                .exported_backends
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (model, backend) in last.difference(&exported) {
                self.remove_backend(model, backend);
            }
            *last = exported;
        }
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(max: usize) -> Metrics {
        let m = Metrics::new().unwrap();
        m.labels().set_models(["m", "alias"]);
        m.labels().set_tenants(["t", "u"]);
        m.labels().set_max_series(max);
        m
    }

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.render(&Upstreams::default())).unwrap()
    }

    #[test]
    fn a_held_series_is_handed_out_only_for_its_own_values() {
        let held = Held {
            values: vec![Box::from("m"), Box::from("b")].into_boxed_slice(),
            series: 7,
        };
        assert_eq!(held.series_for(&["m", "b"]), Some(7));
        assert_eq!(
            held.series_for(&["m", "c"]),
            None,
            "same hash, other values"
        );
        assert_eq!(held.series_for(&["m"]), None);
        assert_eq!(held.series_for(&["m", "b", "x"]), None);
    }

    #[test]
    fn labels_take_only_known_or_fixed_values() {
        let l = metrics(100);
        let l = l.labels();
        assert_eq!(l.clean(Kind::Model, "m"), "m");
        assert_eq!(l.clean(Kind::Model, "made-up"), UNKNOWN);
        assert_eq!(l.clean(Kind::Model, ""), "");
        assert_eq!(l.clean(Kind::Tenant, "t"), "t");
        assert_eq!(l.clean(Kind::Tenant, "gone"), UNKNOWN);
        assert_eq!(l.clean(Kind::Tenant, ""), ANONYMOUS);
        assert_eq!(l.clean(Kind::Status, "404"), "404");
        assert_eq!(l.clean(Kind::Status, "4040"), OTHER);
        assert_eq!(l.clean(Kind::Status, "abc"), OTHER);
        assert_eq!(l.clean(Kind::Code, "rate_limited"), "rate_limited");
        assert_eq!(l.clean(Kind::Code, "a b\n"), OTHER);
        assert_eq!(l.clean(Kind::Backend, "gpu-1"), "gpu-1");
        assert_eq!(l.clean(Kind::Backend, "http://x/"), OTHER);
    }

    #[test]
    fn a_full_family_diverts_new_label_sets_to_overflow() {
        let m = metrics(2);
        m.requests.with_label_values(&["t", "m", "200"]).inc();
        m.requests.with_label_values(&["u", "m", "200"]).inc();
        // Known label sets keep counting; a third one overflows.
        m.requests.with_label_values(&["t", "m", "200"]).inc();
        m.requests.with_label_values(&["t", "m", "500"]).inc();
        m.requests.with_label_values(&["u", "alias", "429"]).inc();
        assert_eq!(m.requests.series(), 2);
        let t = text(&m);
        assert!(
            t.contains(r#"fairgate_requests_total{model="m",status="200",tenant="t"} 2"#),
            "{t}"
        );
        assert!(t.contains(r#"fairgate_requests_total{model="_overflow",status="_overflow",tenant="_overflow"} 2"#), "{t}");
        assert!(
            t.contains(
                r#"fairgate_metrics_series_dropped_total{metric="fairgate_requests_total"} 2"#
            ),
            "{t}"
        );
        // Unknown values collapse before the cap is consulted: no new series.
        let m = metrics(100);
        for i in 0..50 {
            m.requests
                .with_label_values(&[&format!("x{i}"), &format!("y{i}"), "404"])
                .inc();
        }
        assert_eq!(m.requests.series(), 1);
    }

    #[test]
    fn removing_a_series_frees_its_place_under_the_cap() {
        let m = metrics(1);
        m.backend_up.with_label_values(&["m", "a"]).set(1);
        m.backend_up.remove_label_values(&["m", "a"]);
        assert_eq!(m.backend_up.series(), 0);
        m.backend_up.with_label_values(&["m", "b"]).set(1);
        let t = text(&m);
        assert!(
            t.contains(r#"fairgate_backend_up{backend="b",model="m"} 1"#),
            "{t}"
        );
        assert!(!t.contains(r#"backend="a""#), "{t}");
    }
}

#[cfg(test)]
mod quantile_tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let h = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("h", "h").buckets(vec![0.01, 0.1, 1.0]),
        )
        .unwrap();
        assert_eq!(histogram_quantile(&h, 0.5), None);
        for _ in 0..90 {
            h.observe(0.005);
        }
        for _ in 0..10 {
            h.observe(0.5);
        }
        // Rank 50 of 100 lies in the first bucket (90 observations up to 10 ms).
        let p50 = histogram_quantile(&h, 0.5).unwrap();
        assert!((p50 - 0.01 * 50.0 / 90.0).abs() < 1e-9, "{p50}");
        // Rank 99 lies in (0.1, 1.0], which holds the last 10.
        let p99 = histogram_quantile(&h, 0.99).unwrap();
        assert!((p99 - (0.1 + 0.9 * 9.0 / 10.0)).abs() < 1e-9, "{p99}");
    }
}
