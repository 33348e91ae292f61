//! fairgate: a self-hosted, OpenAI-compatible gateway that shares a fleet of model servers
//! (vLLM and friends) among many tenants, and accounts for every token.
//!
//! This crate is the thin binary: [`cli`] (the `fairgate` command line), [`demo`] (the gateway
//! plus two simulated models on embedded defaults) and [`server`] (the composition root that
//! builds the state, assembles the routes and serves them). The work lives in sibling crates,
//! one per thing owned (ARCHITECTURE.md has the map):
//! - `fairgate-gateway`: the data plane (request path, admission, routing, metrics, state);
//! - `fairgate-control`: the control plane (every administrative operation, audited);
//! - `fairgate-admin`: the `/admin/v1` JSON API; `fairgate-portal`: the browser portal;
//! - `fairgate-bench`: the end-to-end benchmark harnesses;
//! - `fairgate-types`, `fairgate-relay`, `fairgate-store`, `fairgate-admission`: records, the
//!   pure request/stream relay, storage and the batched ledger, fair-share queues;
//! - `fairgate-sim`: the vLLM-compatible simulator (`fairgate sim`, `fairgate demo`, benches).
//!
//! The data plane's modules are re-exported under their old paths (`fairgate::config`, ...)
//! so embedders and tests keep one import root.

pub mod cli;
pub mod demo;
pub mod server;

pub use fairgate_admin as admin;
pub use fairgate_bench::{bench, fairbench, routebench, soakbench};
pub use fairgate_control as control;
pub use fairgate_gateway::{
    admission, cache, config, context, error, extract, identity, limits, metrics, proxy,
    proxy_limits, router, routes, serving, state, tls, upstream,
};
pub use fairgate_portal as portal;

/// The client's address: the pure rule and its extractor, under one path.
pub mod client_addr {
    pub use fairgate_gateway::client_addr::*;
    pub use fairgate_gateway::extract::ClientAddr;
}
