//! fairgate: a self-hosted, OpenAI-compatible gateway that shares a fleet of model servers
//! (vLLM and friends) among many tenants, and accounts for every token.
//!
//! # Layout
//! - [`config`]: the TOML file plus `FAIRGATE_*` overrides, validated into [`config::Config`].
//! - [`identity`]: API key format and hashing; the in-memory key directory the hot path reads.
//! - [`upstream`]: model pools, backends and their in-flight capacity (admission seam).
//! - [`proxy`]: the OpenAI request path, from arrival to the settled ledger row.
//! - [`admin`]: the `/admin/v1` JSON API.
//! - [`metrics`]: Prometheus metrics served at `/metrics`.
//! - [`error`]: the one error enum of the HTTP boundary and its mapping to OpenAI bodies.
//! - [`server`]: composition root: state, router, graceful shutdown.
//! - [`demo`]: `fairgate demo`, the gateway plus two simulated models on embedded defaults.
//! - [`cli`]: the `fairgate` command line, including the `fairgate admin` client.
//! - [`bench`]: `fairgate bench`, the gateway overhead benchmark; [`fairbench`] its fair-share
//!   scenarios and [`routebench`] its routing scenarios.
//!
//! Sibling crates: `fairgate-types` (records), `fairgate-relay` (request parsing and the SSE
//! relay, pure), `fairgate-store` (SQLite/Postgres and the batched ledger writer),
//! `fairgate-sim` (the vLLM-compatible simulator).

pub mod admin;
pub mod admission;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod client_addr;
pub mod config;
pub mod demo;
pub mod error;
pub mod fairbench;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod portal;
pub mod proxy;
pub mod routebench;
pub mod router;
pub mod server;
pub mod serving;
pub mod upstream;
