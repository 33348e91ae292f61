//! Admission: who goes next when a model's backends are full, and what each request may spend.
//!
//! - [`fair`]: the two-level weighted virtual-token-counter queue (VTC, Sheng et al. OSDI '24),
//!   pure data structure, no time, no IO.
//! - [`pool`]: one model pool's capacity and waiters around a [`fair::FairQueue`]; the async
//!   `admit` a request awaits and the [`pool::Permit`] that charges served tokens and frees
//!   capacity when dropped.
//! - [`limits`]: token buckets (TPM, RPM) and concurrency caps per key and per tenant.
//! - [`budget`]: spending caps per period, in tokens or money, reserved and settled.
//!
//! Counters, buckets and budgets sit behind traits with in-process implementations; a
//! replicated deployment swaps in shared ones without touching the request path.

pub mod budget;
pub mod fair;
pub mod limits;
pub mod pool;
