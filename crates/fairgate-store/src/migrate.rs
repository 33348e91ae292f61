//! A tiny migration runner: an ordered list of SQL files embedded at build time, applied once
//! each, recorded in `fairgate_migrations(version, applied_at)`.
//!
//! Why not sqlx's migrator: it keeps backend-specific bookkeeping and checksums, while fairgate
//! wants one set of portable files and one table that looks the same on SQLite and PostgreSQL.
//!
//! Concurrency: several gateway replicas (or parallel tests) may start at once.
//! - On PostgreSQL the whole run holds a session advisory lock, so only one process migrates at
//!   a time (this also makes `CREATE TABLE IF NOT EXISTS` safe, which alone is not under races).
//! - On both backends each migration's transaction *starts* by claiming its version with
//!   `INSERT ... ON CONFLICT DO NOTHING`; a process that claims nothing skips the migration.
//!   On SQLite that first write also takes the database write lock, so two processes cannot
//!   both apply a migration. A failed migration rolls back its claim with it.

use crate::StoreError;
use fairgate_types::now_millis;
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

/// One schema step. Versions are increasing and never reused; files are never edited once
/// released, because a database that already applied one never runs it again.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "policy",
        sql: include_str!("../migrations/0002_policy.sql"),
    },
    Migration {
        version: 3,
        name: "portal",
        sql: include_str!("../migrations/0003_portal.sql"),
    },
    Migration {
        version: 4,
        name: "routing",
        sql: include_str!("../migrations/0004_routing.sql"),
    },
    Migration {
        version: 5,
        name: "ledger_daily",
        sql: include_str!("../migrations/0005_ledger_daily.sql"),
    },
    Migration {
        version: 6,
        name: "runtime_backends",
        sql: include_str!("../migrations/0006_runtime_backends.sql"),
    },
    Migration {
        version: 7,
        name: "slurm_jobs",
        sql: include_str!("../migrations/0007_slurm_jobs.sql"),
    },
    Migration {
        version: 8,
        name: "ledger_units",
        sql: include_str!("../migrations/0008_ledger_units.sql"),
    },
];

/// Advisory lock key: "fairgate" in ASCII, so it is recognisable in `pg_locks`.
const PG_LOCK_KEY: i64 = 0x6661_6972_6761_7465;

/// Applies every migration the database does not have yet.
pub(crate) async fn run(pool: &AnyPool, postgres: bool) -> Result<(), StoreError> {
    // One connection for the whole run: a session advisory lock belongs to a connection.
    let mut conn = pool.acquire().await?;
    if postgres {
        // pg_advisory_lock returns `void`, which the Any driver cannot decode; cast it away.
        sqlx::query("SELECT CAST(pg_advisory_lock($1) AS TEXT)")
            .bind(PG_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
    }
    let result = apply_pending(&mut conn).await;
    if postgres {
        let unlocked = sqlx::query("SELECT CAST(pg_advisory_unlock($1) AS TEXT)")
            .bind(PG_LOCK_KEY)
            .execute(&mut *conn)
            .await;
        if let Err(e) = unlocked {
            // Closing the session is the other way to release a session lock; never return a
            // connection that might still hold it to the pool.
            tracing::warn!(error = %e, "could not release the migration lock; closing connection");
            let _ = conn.detach().close().await;
        }
    }
    result
}

async fn apply_pending(conn: &mut AnyConnection) -> Result<(), StoreError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS fairgate_migrations \
         (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM fairgate_migrations")
        .fetch_all(&mut *conn)
        .await?;
    let newest_known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(v) = applied.iter().copied().filter(|v| *v > newest_known).max() {
        // A newer fairgate migrated this database; this binary's queries may not match it.
        tracing::warn!(
            database_version = v,
            binary_version = newest_known,
            "database schema is newer than this fairgate"
        );
    }
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        let failed = |source: sqlx::Error| StoreError::Migration {
            version: m.version,
            source,
        };
        let mut tx = conn.begin().await.map_err(failed)?;
        let claimed = sqlx::query(
            "INSERT INTO fairgate_migrations (version, applied_at) VALUES ($1, $2) \
             ON CONFLICT (version) DO NOTHING",
        )
        .bind(m.version)
        .bind(now_millis())
        .execute(&mut *tx)
        .await
        .map_err(failed)?
        .rows_affected();
        if claimed == 0 {
            // Another process applied it after we listed versions.
            tx.rollback().await.map_err(failed)?;
            continue;
        }
        // A plain &str runs without bind parameters, i.e. through PostgreSQL's simple-query
        // protocol, which (unlike a prepared statement) accepts several statements at once.
        (&mut *tx).execute(m.sql).await.map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
        assert!(versions.first().is_some_and(|v| *v >= 1));
    }

    /// A file added to `migrations/` but not to `MIGRATIONS` would silently never run.
    #[test]
    fn every_migration_file_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(files, listed);
        for m in MIGRATIONS {
            let text =
                std::fs::read_to_string(dir.join(format!("{:04}_{}.sql", m.version, m.name)))
                    .unwrap();
            assert_eq!(text, m.sql, "migration {} embeds another file", m.version);
        }
    }
}
