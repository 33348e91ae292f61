//! Persistence for fairgate: tenants, groups, API keys, the request ledger and the portal's
//! users, sessions and audit log, on SQLite (the default) or PostgreSQL (chosen by URL), with
//! the same code, the same SQL and the same migrations.
//!
//! Everything goes through sqlx's `Any` driver with runtime (non-macro) queries, so one
//! statement text serves both databases. That limits column types to what `Any` reads back
//! identically everywhere: times are BIGINT unix milliseconds, booleans BIGINT 0/1, model lists
//! and policies JSON text, money BIGINT micros, token counts BIGINT (`u64` in Rust; values above `i64::MAX` are clamped on write,
//! which no real token count reaches). Placeholders are `$1, $2, ...` in increasing order, which
//! both SQLite and PostgreSQL accept.
//!
//! Per-backend differences are few and deliberate, none in the migrations:
//! - ORDER BY on text: PostgreSQL sorts by the database's locale, SQLite by bytes, so PostgreSQL
//!   queries add `COLLATE "C"` and both backends return rows in the same (byte) order.
//! - Rows per multi-row INSERT (see `rows`): SQLite's cost per statement grows with the square
//!   of its parameter count, PostgreSQL's with round trips.
//! - Setup: SQLite gets WAL and a busy timeout; PostgreSQL migrations hold an advisory lock.
//!
//! Ledger strings come from clients (a model name is whatever the request said), so before
//! writing a ledger row NUL characters are replaced by U+FFFD on both backends: PostgreSQL
//! rejects NUL in text, and one such row would otherwise fail its whole batch forever.
//!
//! # Layout
//! - [`db`]: URL parsing, connecting (pool sizing, SQLite file/WAL setup), [`Store`] itself.
//! - [`migrate`]: the tiny migration runner over `migrations/NNNN_name.sql`.
//! - `admin`: tenant, key and group CRUD (policies included).
//! - `portal`: portal users (emails stored lower-cased), browser sessions and the audit log.
//! - `rows`: ledger SQL: chunked idempotent inserts, usage and spend sums, request listings.
//! - [`ledger`]: the batched writer task that keeps ledger writes off the request path, spills
//!   rows to disk while the database is down and replays them when it returns.
//! - [`spill`]: the append-only spill files.
//! - `retention`: rolls old ledger rows into daily aggregates (`ledger_daily`).
//! - `slurm`: Slurm jobs that serve models, and the SU report that splits their cost among
//!   tenants by the tokens each job served them.

pub mod db;
pub mod ledger;
pub mod migrate;
pub mod retention;
pub mod spill;

mod admin;
mod backends;
mod portal;
mod rows;
mod slurm;

pub use backends::RuntimeBackend;
pub use db::Store;
pub use ledger::{
    import_spill, spawn_ledger, spill_file_rows, LedgerConfig, LedgerError, LedgerHandle,
    LedgerWriter, SHUTDOWN_TIMEOUT,
};
pub use retention::spawn_retention;
pub use rows::{Spend, SpendScope, UserUsage};
pub use spill::is_spill_file;

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

#[cfg(test)]
mod tests {
    use super::*;
    use fairgate_types::{AuditEntry, Group, KeyId, KeyRecord, LedgerRow, Session, Tenant, User};

    fn is_send<T: Send>(_: T) {}

    /// The server spawns tasks around these calls; a future that is not `Send` (easy to cause
    /// by accident with sqlx executors, see `migrate`) would only fail to compile over there.
    #[tokio::test]
    async fn store_futures_are_send() {
        is_send(Store::connect("sqlite::memory:"));
        let s = Store::connect("sqlite::memory:").await.unwrap();
        let t: Option<Tenant> = None;
        let k: Option<KeyRecord> = None;
        let g: Option<Group> = None;
        let rows: Vec<LedgerRow> = Vec::new();
        let u: Option<User> = None;
        let sess: Option<Session> = None;
        let a: Option<AuditEntry> = None;
        if let (Some(u), Some(sess), Some(a)) = (&u, &sess, &a) {
            is_send(s.create_user(u));
            is_send(s.update_user(u));
            is_send(s.create_session(sess));
            is_send(s.insert_audit(a));
        }
        is_send(s.get_user("x"));
        is_send(s.get_user_by_email("x"));
        is_send(s.get_user_by_subject("x"));
        is_send(s.list_users(None));
        is_send(s.count_users());
        is_send(s.get_session("x"));
        is_send(s.delete_session("x"));
        is_send(s.delete_user_sessions("x"));
        is_send(s.delete_expired_sessions(0));
        is_send(s.list_audit(1, None));
        if let (Some(t), Some(k), Some(g)) = (&t, &k, &g) {
            is_send(s.create_tenant(t));
            is_send(s.update_tenant(t));
            is_send(s.upsert_tenant(t));
            is_send(s.upsert_group(g));
            is_send(s.insert_key(k));
            is_send(s.update_key(k));
        }
        is_send(s.ping());
        is_send(s.close());
        is_send(s.get_tenant("x"));
        is_send(s.list_tenants());
        is_send(s.delete_tenant("x"));
        is_send(s.get_key(&KeyId::from("x")));
        is_send(s.list_keys(None));
        is_send(s.get_group("x"));
        is_send(s.list_groups());
        is_send(s.delete_group("x"));
        is_send(s.spend(SpendScope::Tenant("x"), 0));
        is_send(s.insert_ledger_rows(&rows));
        is_send(s.usage(None, None, None));
        is_send(s.requests(None, 1));
        is_send(s.ledger_count());
        is_send(s.slurm_jobs(0, 1));
        is_send(s.su_report(0, 1, 1));
        let j: Option<fairgate_types::SlurmJobRow> = None;
        if let Some(j) = &j {
            is_send(s.upsert_slurm_job(j));
        }
        is_send(import_spill(&s, "x"));
        let registry = prometheus::Registry::new();
        let (h, w) = spawn_ledger(s.clone(), LedgerConfig::default(), &registry).unwrap();
        is_send(h.flush());
        h.record(LedgerRow::new(
            fairgate_types::RequestId::from("x"),
            0,
            String::new(),
        ));
        w.shutdown().await.unwrap();
    }
}
