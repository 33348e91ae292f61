//! fairgate's data plane: the OpenAI-compatible request path and everything it reads.
//!
//! A request crosses these modules in order (ARCHITECTURE.md lists the hops):
//! [`routes`] → [`proxy`] (resolve the key with [`identity`], the model with [`upstream`],
//! answer from [`cache`], queue for a slot in [`admission`], send and fail over, relay the
//! answer, settle the ledger row) → [`error`] maps every refusal to one OpenAI-shaped body.
//! [`state`] holds what all handlers share; [`config`] is the file and its environment
//! overrides; [`metrics`] serves Prometheus numbers; [`telemetry`] keeps the last hour in
//! rolling windows for the portal; [`router`] picks a backend (pure);
//! [`mcp`] relays MCP tool servers' sessions under tenants' allowlists and limits;
//! [`limits`] and [`proxy_limits`] bound what hostile input may cost; [`serving`] is the HTTP
//! server with graceful shutdown.
//!
//! Nothing here imports the admin API, the portal or the control plane: they build on this
//! crate, never the other way round.

pub mod admission;
pub mod cache;
pub mod client_addr;
pub mod config;
pub mod context;
pub mod discovery;
pub mod error;
pub mod extract;
pub mod fleet;
pub mod identity;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod proxy;
pub mod proxy_limits;
pub mod quota;
pub mod router;
pub mod routes;
pub mod serving;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
