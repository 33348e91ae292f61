//! What every end-to-end benchmark shares, kept once so that each benchmark file holds only
//! what it measures:
//! - [`process`]: the simulator and gateway child processes, ports, readiness, scratch dirs;
//! - [`fixed`]: a minimal fixed-answer backend, the ceiling for the overhead benchmark;
//! - [`http`]: the load generator's client, tenants and keys, metric pages;
//! - [`stream`]: streamed chat requests as the client sees them (SSE, cut at a deadline);
//! - [`metrics`]: reading Prometheus text pages;
//! - [`stats`]: percentiles and the service-over-time arithmetic;
//! - [`report`]: pass/fail criteria and the JSON results file.

pub(crate) mod fixed;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod process;
pub(crate) mod report;
pub(crate) mod stats;
pub(crate) mod stream;
