//! Persistence for fairgate: tenants, API keys and the request ledger, on SQLite (the default)
//! or PostgreSQL (chosen by URL), with the same code, the same SQL and the same migrations.
//!
//! Everything goes through sqlx's `Any` driver with runtime (non-macro) queries, so one
//! statement text serves both databases. That limits column types to what `Any` reads back
//! identically everywhere: times are BIGINT unix milliseconds, booleans BIGINT 0/1, model lists
//! JSON text, token counts BIGINT (`u64` in Rust; values above `i64::MAX` are clamped on write,
//! which no real token count reaches). Placeholders are `$1, $2, ...` in increasing order, which
//! both SQLite and PostgreSQL accept.
//!
//! The one per-backend difference in query text is the collation used for ORDER BY on text
//! columns: PostgreSQL sorts with the database's locale, SQLite by bytes, so PostgreSQL queries
//! add `COLLATE "C"` and both backends return rows in the same (byte) order.
//!
//! Ledger strings come from clients (a model name is whatever the request said), so before
//! writing a ledger row NUL characters are replaced by U+FFFD on both backends: PostgreSQL
//! rejects NUL in text, and one such row would otherwise fail its whole batch forever.
//!
//! # Layout
//! - [`db`]: URL parsing, connecting (pool sizing, SQLite file/WAL setup), [`Store`] itself.
//! - [`migrate`]: the tiny migration runner over `migrations/NNNN_name.sql`.
//! - `admin`: tenant and key CRUD.
//! - `rows`: ledger SQL: chunked idempotent inserts, usage sums, request listings.
//! - [`ledger`]: the batched writer task that keeps ledger writes off the request path, and
//!   spill-file replay.

pub mod db;
pub mod ledger;
pub mod migrate;

mod admin;
mod rows;

pub use db::Store;
pub use ledger::{
    import_spill, spawn_ledger, spill_file_rows, LedgerConfig, LedgerError, LedgerHandle,
    LedgerWriter,
};

/// Everything the store can fail with. `Conflict` and `NotFound` are the caller's fault and map
/// to 409/404 in the admin API; the rest are operational.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid database url: {0}")]
    BadUrl(String),
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}
