//! Prometheus metrics of the gateway, all in one registry served at `GET /metrics`.
//!
//! Names start with `fairgate_`. Load gauges (in flight, queued) are read from the pools at
//! scrape time rather than updated per request, so the hot path only touches counters and
//! histograms.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::router::Reason;

use crate::upstream::Upstreams;

pub struct Metrics {
    pub registry: Registry,
    /// Requests by tenant, model and HTTP status the client received.
    pub requests: IntCounterVec,
    pub prompt_tokens: IntCounterVec,
    pub completion_tokens: IntCounterVec,
    pub ttft: HistogramVec,
    pub inter_token: HistogramVec,
    pub e2e: HistogramVec,
    pub queue_wait: HistogramVec,
    /// Time spent inside the gateway itself (request path before the upstream call plus
    /// response handling), excluding queue wait and upstream time.
    pub overhead: HistogramVec,
    /// Admission decisions by model, tenant, result (`admitted`, `rejected`, `cache_hit`) and
    /// rejection reason.
    pub admissions: IntCounterVec,
    in_flight: IntGaugeVec,
    queued: IntGaugeVec,
    tenant_queued: IntGaugeVec,
    tenant_in_flight: IntGaugeVec,
    tenant_service: IntCounterVec,
    tenant_weight: IntGaugeVec,
    backend_in_flight: IntGaugeVec,
    backend_capacity: IntGaugeVec,
    backend_up: IntGaugeVec,
    backend_waiting: GaugeVec,
    backend_kv: GaugeVec,
    backend_attempts: IntCounterVec,
    backend_failures: IntCounterVec,
    backend_retries: IntCounterVec,
    backend_ejections: IntCounterVec,
    backend_picks: IntCounterVec,
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

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let hist = |name: &str,
                    help: &str,
                    buckets: &[f64],
                    labels: &[&str]|
         -> Result<HistogramVec, prometheus::Error> {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let fgauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, prometheus::Error> {
                let g = GaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
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
            ttft: hist(
                "fairgate_time_to_first_token_seconds",
                "Time from request arrival to the first content token (streams) or response headers",
                LATENCY_BUCKETS,
                &["model"],
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
            registry,
        })
    }

    /// Renders the registry, refreshing load gauges from the pools first.
    pub fn render(&self, upstreams: &Upstreams) -> Vec<u8> {
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
                let labels = [pool.name.as_str(), &b.url];
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
                                &b.url,
                                r.as_str(),
                            ]),
                            n,
                        );
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}
