//! fairgate's end-to-end benchmarks, each a `fairgate <name>` subcommand that starts the
//! simulator and the gateway as child processes of the same binary and drives real HTTP load:
//! - [`bench`]: what the gateway adds over calling the model server directly;
//! - [`fairbench`]: fair-share scenarios (weights, floods, interactive tenants);
//! - [`routebench`]: routing scenarios (prefix affinity, LoRA placement, failover);
//! - [`replicabench`]: three replicas sharing one backend (shares, over-admission, reclaim,
//!   propagation, added latency);
//! - [`soakbench`]: a long run that watches memory and the ledger;
//! - [`openstreams`]: thousands of slow streams held open at once (memory, fds, added
//!   inter-token latency).
//!
//! What they share (processes, readiness, tenants, streamed requests, statistics, output) is
//! in one private `harness` module, so the benchmarks differ only in what they measure.
//! Results print as Markdown tables for BENCHMARKS.md.

pub mod bench;
pub mod fairbench;
mod harness;
pub mod openstreams;
pub use harness::fixed::serve as serve_fixed_backend;
pub mod replicabench;
pub mod routebench;
pub mod soakbench;
