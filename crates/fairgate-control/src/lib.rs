//! fairgate's control plane: every administrative change goes through one function here that
//! validates it, persists it, makes it live (the key directory, the pools' weights, budgets,
//! backends) and writes the audit entry. The admin API (`fairgate-admin`) and the portal
//! (`fairgate-portal`) only parse, call and render; when changes must reach other replicas,
//! that will happen here and only here.
//!
//! Depends on the data plane (`fairgate-gateway`) for the shared state it changes; nothing in
//! the data plane depends on it.

pub mod audit;
pub mod backends;
mod error;
pub mod groups;
pub mod guardrails;
pub mod keys;
mod lookup;
pub mod passwords;
pub mod reload;
pub mod tenants;
pub mod users;
pub mod validate;

pub use error::ControlError;
