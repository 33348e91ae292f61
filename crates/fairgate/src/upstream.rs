//! Backends and their capacity: which backend serves a model, and how many requests each may
//! have in flight.
//!
//! Each model has a [`ModelPool`] whose admission pool ([`fairgate_admission::pool::Pool`])
//! holds the sum of its backends' `max_in_flight`. A request is admitted (at once while there
//! is room, by weighted fair share when there is not), then takes the least-loaded backend with
//! room. The [`Lease`] gives both back when dropped, so every exit path (error, cancel, panic)
//! frees capacity.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fairgate_admission::fair::Mode;
use fairgate_admission::pool::{AdmitError, AdmitRequest, CostWeights, Permit, Pool, PoolConfig};
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::config::{AdmissionConfig, Config, ModelConfig, SchedulerMode};

/// Request body type sent upstream.
pub type UpBody = BoxBody<Bytes, std::convert::Infallible>;
pub type HttpClient = Client<HttpConnector, UpBody>;

pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_connect_timeout(Some(connect_timeout));
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(conn)
}

/// One backend server (a vLLM instance or the simulator).
#[derive(Debug)]
pub struct Backend {
    /// Server root without a trailing slash.
    pub url: String,
    pub max_in_flight: usize,
    /// Requests currently holding a lease on this backend.
    in_flight: AtomicUsize,
}

impl Backend {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Claims a slot if one is free; lock-free so concurrent picks never overshoot.
    fn try_claim(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_in_flight).then_some(n + 1)
            })
            .is_ok()
    }
}

/// All backends of one model and the fair-share pool that bounds their total load.
pub struct ModelPool {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
    /// Admission: capacity = the sum of the backends' slots (and token bounds, if all set).
    pub fair: Arc<Pool>,
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
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The admission pool settings a model's config and the admission section imply.
pub fn pool_config(cfg: &ModelConfig, adm: &AdmissionConfig) -> PoolConfig {
    let max_in_flight = cfg.backends.iter().map(|b| b.max_in_flight).sum();
    // A token bound holds only if every backend declares one.
    let max_tokens_in_flight = cfg
        .backends
        .iter()
        .map(|b| b.max_tokens_in_flight)
        .sum::<Option<u64>>();
    PoolConfig {
        max_in_flight,
        max_tokens_in_flight,
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
    pub fn new(cfg: &ModelConfig, adm: &AdmissionConfig) -> ModelPool {
        let backends: Vec<Arc<Backend>> = cfg
            .backends
            .iter()
            .map(|b| {
                Arc::new(Backend {
                    url: b.url.trim_end_matches('/').to_owned(),
                    max_in_flight: b.max_in_flight,
                    in_flight: AtomicUsize::new(0),
                })
            })
            .collect();
        ModelPool {
            name: cfg.name.clone(),
            backends,
            fair: Pool::new(cfg.name.clone(), pool_config(cfg, adm)),
        }
    }

    pub fn queued(&self) -> usize {
        self.fair.queued()
    }

    pub fn in_flight(&self) -> usize {
        self.backends.iter().map(|b| b.in_flight()).sum()
    }

    /// Waits for admission, then claims the least-loaded backend. Cancel-safe: a caller that
    /// is dropped while waiting leaves the queue at once.
    pub async fn acquire(&self, req: AdmitRequest<'_>) -> Result<Lease, AdmitError> {
        let permit = self.fair.admit(req).await?;
        Ok(Lease {
            backend: self.pick(),
            permit,
        })
    }

    /// The least-loaded backend with a free slot. A permit guarantees one exists.
    fn pick(&self) -> Arc<Backend> {
        loop {
            let mut order: Vec<&Arc<Backend>> = self.backends.iter().collect();
            order.sort_by_key(|b| b.in_flight() * 1024 / b.max_in_flight.max(1));
            for b in order {
                if b.try_claim() {
                    return b.clone();
                }
            }
            // Only reachable in a race between permit release and slot release; retry.
            std::hint::spin_loop();
        }
    }
}

/// Every model's pool, as declared in the config.
#[derive(Debug, Default)]
pub struct Upstreams {
    pub pools: Vec<Arc<ModelPool>>,
}

impl Upstreams {
    pub fn from_config(cfg: &Config) -> Upstreams {
        Upstreams {
            pools: cfg
                .models
                .iter()
                .map(|m| Arc::new(ModelPool::new(m, &cfg.admission)))
                .collect(),
        }
    }

    pub fn get(&self, model: &str) -> Option<&Arc<ModelPool>> {
        self.pools.iter().find(|p| p.name == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;
    use fairgate_types::Priority;
    use std::time::Duration;

    fn pool(caps: &[usize]) -> ModelPool {
        ModelPool::new(
            &ModelConfig {
                name: "m".into(),
                backends: caps
                    .iter()
                    .enumerate()
                    .map(|(i, c)| BackendConfig {
                        url: format!("http://127.0.0.1:{}", 9000 + i),
                        max_in_flight: *c,
                        max_tokens_in_flight: None,
                    })
                    .collect(),
                price: Default::default(),
                cache: false,
            },
            &AdmissionConfig::default(),
        )
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

    #[tokio::test(start_paused = true)]
    async fn leases_spread_and_respect_capacity() {
        let p = pool(&[2, 1]);
        let s = Duration::from_secs(1);
        let a = p.acquire(req(s)).await.unwrap();
        let b = p.acquire(req(s)).await.unwrap();
        let c = p.acquire(req(s)).await.unwrap();
        assert_eq!(p.backends[0].in_flight(), 2);
        assert_eq!(p.backends[1].in_flight(), 1);
        assert!(p.acquire(req(Duration::from_millis(50))).await.is_err());
        assert_eq!(p.queued(), 0);
        drop((a, b, c));
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.fair.in_flight(), 0);
    }
}
