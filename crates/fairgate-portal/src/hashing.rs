//! Password hashing off the async workers, bounded.
//!
//! One argon2id hash or verify (19 MiB, t=2, p=1) keeps a core busy for tens of milliseconds
//! and touches 19 MiB. Run on the async workers, a burst of sign-ins stalls every stream on
//! the box; run on an unbounded blocking pool, it eats every core and memory. So hashing runs
//! on `spawn_blocking` behind a semaphore:
//!
//! - **size** `max(1, cores / 2)` (or `portal.password_hash_workers`): half the cores stay
//!   free for the async workers that carry streams, and memory stays under `size × 19 MiB`.
//!   At ~30 ms a hash that is still dozens of sign-ins a second, far more than people type.
//! - **bounded wait**: at most `size × 8` callers wait, each at most 2 s; anyone beyond gets
//!   [`HashPoolError::Busy`] at once (the portal answers 503 with `Retry-After`), so a flood
//!   costs a counter increment, not a queue.
//!
//! The permit moves into the blocking task, so a client that disconnects mid-hash does not
//! free a slot while its hash still runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::auth;

/// Callers allowed to wait for a slot, per slot.
const WAITERS_PER_SLOT: usize = 8;
/// Longest a caller waits for a slot before being told the portal is busy.
const MAX_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashPoolError {
    /// Every slot is taken and the waiting room is full (or the wait ran out).
    #[error("password hashing is busy")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// The bounded pool; cheap to share (`&self` methods).
pub struct HashPool {
    permits: Arc<Semaphore>,
    size: usize,
    max_waiters: usize,
    max_wait: Duration,
    waiting: AtomicUsize,
    /// Hashes running now and the most ever seen at once (for tests and metrics).
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

/// Decrements the waiting count however the wait ends (done, timed out, cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HashPool {
    /// `size` 0 picks `max(1, cores / 2)`.
    pub fn new(size: usize) -> HashPool {
        let size = if size == 0 { Self::auto_size() } else { size };
        Self::with_limits(size, size * WAITERS_PER_SLOT, MAX_WAIT)
    }

    pub fn with_limits(size: usize, max_waiters: usize, max_wait: Duration) -> HashPool {
        let size = size.max(1);
        HashPool {
            permits: Arc::new(Semaphore::new(size)),
            size,
            max_waiters,
            max_wait,
            waiting: AtomicUsize::new(0),
            running: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn auto_size() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get() / 2)
            .unwrap_or(1)
            .max(1)
    }

    /// Hashes that may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The most hashes ever seen running at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Test hook: takes every slot until the permit is dropped, to show what a saturated pool
    /// answers.
    #[doc(hidden)]
    pub async fn occupy_all(&self) -> tokio::sync::OwnedSemaphorePermit {
        let n = u32::try_from(self.size).unwrap_or(u32::MAX);
        self.permits
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the semaphore is never closed")
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashPoolError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiters {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(HashPoolError::Busy);
                }
                let _w = Waiting(&self.waiting);
                match tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(p)) => p,
                    _ => return Err(HashPoolError::Busy),
                }
            }
        };
        let (running, peak) = (self.running.clone(), self.peak.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let out = work();
            running.fetch_sub(1, Ordering::SeqCst);
            out
        })
        .await
        .map_err(|e| HashPoolError::Failed(e.to_string()))
    }

    /// argon2id hash of a new password.
    pub async fn hash(&self, password: String) -> Result<String, HashPoolError> {
        self.run(move || auth::hash_password(&password))
            .await?
            .map_err(|e| HashPoolError::Failed(e.to_string()))
    }

    /// Verifies `password` against `phc`; with no hash (unknown or password-less account) it
    /// verifies against a dummy so the answer takes as long, and is `false`. Both go through
    /// the pool, so probing unknown e-mails is bounded like everything else.
    pub async fn verify(
        &self,
        password: String,
        phc: Option<String>,
    ) -> Result<bool, HashPoolError> {
        self.run(move || match phc {
            Some(h) => auth::verify_password(&password, &h),
            None => {
                auth::dummy_verify(&password);
                false
            }
        })
        .await
    }

    #[cfg(test)]
    async fn run_for_test<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashPoolError> {
        self.run(work).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn never_more_than_size_at_once() {
        let pool = Arc::new(HashPool::with_limits(2, 64, Duration::from_secs(60)));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.verify(format!("password number {i}"), None).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(false));
        }
        assert!(pool.peak() >= 1);
        assert!(pool.peak() <= 2, "peak {}", pool.peak());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn saturated_pool_refuses_at_once_instead_of_queueing() {
        let pool = Arc::new(HashPool::with_limits(1, 1, Duration::from_secs(60)));
        // Hold the only slot until told to let go.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let holder = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run_for_test(move || {
                    let _ = started_tx.send(());
                    let _ = rx.recv();
                })
                .await
            })
        };
        started_rx.await.unwrap();
        // One may wait...
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.verify("x".repeat(12), None).await })
        };
        while pool.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // ...the next is refused without waiting.
        assert_eq!(
            pool.verify("y".repeat(12), None).await,
            Err(HashPoolError::Busy)
        );
        tx.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert_eq!(waiter.await.unwrap(), Ok(false));
        assert_eq!(pool.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(pool.peak(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded() {
        let pool = Arc::new(HashPool::with_limits(1, 4, Duration::from_secs(2)));
        let held = pool.permits.clone().acquire_owned().await.unwrap();
        let r = pool.verify("z".repeat(12), None).await;
        assert_eq!(r, Err(HashPoolError::Busy));
        drop(held);
        assert_eq!(pool.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn hash_and_verify_round_trip() {
        let pool = HashPool::new(0);
        assert!(pool.size() >= 1);
        let h = pool.hash("correct horse battery".into()).await.unwrap();
        assert!(pool
            .verify("correct horse battery".into(), Some(h.clone()))
            .await
            .unwrap());
        assert!(!pool
            .verify("wrong horse battery".into(), Some(h))
            .await
            .unwrap());
    }
}
