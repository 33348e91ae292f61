//! Backends and their capacity: which backend serves a model, and how many requests each may
//! have in flight.
//!
//! Each model has a [`ModelPool`] whose semaphore holds the sum of its backends' `max_in_flight`.
//! A request takes a permit (waiting in FIFO order when the pool is full: this is the seam the
//! fair-share admitter replaces), then the least-loaded backend with room. The [`Lease`] gives
//! both back when dropped, so every exit path (error, cancel, panic) frees capacity.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, ModelConfig};

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

/// All backends of one model and the permits that bound their total load.
#[derive(Debug)]
pub struct ModelPool {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
    permits: Arc<Semaphore>,
    /// Requests waiting for a permit right now.
    queued: AtomicUsize,
}

/// A granted slot on one backend; dropping it frees the slot.
#[derive(Debug)]
pub struct Lease {
    pub backend: Arc<Backend>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why no lease was granted.
#[derive(Debug, PartialEq, Eq)]
pub enum AcquireError {
    Timeout,
}

impl ModelPool {
    pub fn new(cfg: &ModelConfig) -> ModelPool {
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
        let total = backends.iter().map(|b| b.max_in_flight).sum();
        ModelPool {
            name: cfg.name.clone(),
            backends,
            permits: Arc::new(Semaphore::new(total)),
            queued: AtomicUsize::new(0),
        }
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.backends.iter().map(|b| b.in_flight()).sum()
    }

    /// Waits (FIFO) up to `timeout` for a slot. Cancel-safe: a caller that is dropped while
    /// waiting leaves the queue at once.
    pub async fn acquire(&self, timeout: Duration) -> Result<Lease, AcquireError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
                let _unqueue = Unqueue(&self.queued);
                match tokio::time::timeout(timeout, self.permits.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    // The semaphore is never closed; treat it like a timeout all the same.
                    Ok(Err(_)) | Err(_) => return Err(AcquireError::Timeout),
                }
            }
        };
        Ok(Lease {
            backend: self.pick(),
            _permit: permit,
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

struct Unqueue<'a>(&'a AtomicUsize);

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
                .map(|m| Arc::new(ModelPool::new(m)))
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

    fn pool(caps: &[usize]) -> ModelPool {
        ModelPool::new(&ModelConfig {
            name: "m".into(),
            backends: caps
                .iter()
                .enumerate()
                .map(|(i, c)| BackendConfig {
                    url: format!("http://127.0.0.1:{}", 9000 + i),
                    max_in_flight: *c,
                })
                .collect(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn leases_spread_and_respect_capacity() {
        let p = pool(&[2, 1]);
        let a = p.acquire(Duration::from_secs(1)).await.unwrap();
        let b = p.acquire(Duration::from_secs(1)).await.unwrap();
        let c = p.acquire(Duration::from_secs(1)).await.unwrap();
        assert_eq!(p.backends[0].in_flight(), 2);
        assert_eq!(p.backends[1].in_flight(), 1);
        assert_eq!(
            p.acquire(Duration::from_millis(50)).await.unwrap_err(),
            AcquireError::Timeout
        );
        assert_eq!(p.queued(), 0);
        drop((a, b, c));
        assert_eq!(p.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_gets_slot_when_freed_and_cancel_leaves_queue() {
        let p = Arc::new(pool(&[1]));
        let held = p.acquire(Duration::from_secs(1)).await.unwrap();
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.acquire(Duration::from_secs(10)).await.is_ok() });
        tokio::task::yield_now().await;
        assert_eq!(p.queued(), 1);
        drop(held);
        assert!(waiter.await.unwrap());

        let held = p.acquire(Duration::from_secs(1)).await.unwrap();
        let p3 = p.clone();
        let cancelled =
            tokio::spawn(async move { p3.acquire(Duration::from_secs(10)).await.is_ok() });
        tokio::task::yield_now().await;
        assert_eq!(p.queued(), 1);
        cancelled.abort();
        let _ = cancelled.await;
        assert_eq!(p.queued(), 0);
        drop(held);
    }
}
