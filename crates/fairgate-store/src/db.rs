//! Connecting: which backend a URL names, how its pool is sized, and SQLite file setup.
//!
//! URL forms:
//! - `sqlite://relative/path.db`, `sqlite:///absolute/path.db` (also `sqlite:path.db`): a file;
//!   its parent directory and the file are created if missing (`mode=rwc` is added unless the
//!   URL sets a `mode`), the journal is switched to WAL so readers never block the writer.
//! - `sqlite::memory:`: a private in-memory database on a single, never-recycled connection
//!   (more connections, or recycling, would each see a different or empty database).
//! - `postgres://user:pass@host:port/db` or `postgresql://...`, with any query parameters sqlx
//!   accepts, for example `?options=-c%20search_path%3Dmyschema` to pick a schema.

use crate::{migrate, StoreError};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::AnyPool;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Suffix for ORDER BY on text columns so both backends sort by bytes (see the crate docs).
    pub(crate) fn text_order(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " COLLATE \"C\"",
        }
    }
}

/// SQLite waits this long for another writer instead of failing with SQLITE_BUSY: writes are
/// serialized by SQLite, and ledger batches, admin writes and other replicas' writes queue up.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;
/// SQLite allows one writer at a time, so a few connections serve concurrent readers (WAL lets
/// them run beside the writer) without piling up writers that would only wait on each other.
const SQLITE_MAX_CONNECTIONS: u32 = 4;
const POSTGRES_MAX_CONNECTIONS: u32 = 10;
/// Bounds how long a caller waits for a connection when the database is down or saturated.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `connect` keeps retrying SQLite locks held by other processes starting on the same
/// file. Switching to WAL needs an exclusive lock that `busy_timeout` does not wait for, and a
/// loaded machine can hold the migration lock longer than the busy timeout, so both are retried
/// with back-off; this bounds a stuck start, it is not expected to be reached.
const SQLITE_START_RETRY: Duration = Duration::from_secs(60);
const SQLITE_START_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// A handle to the database: a connection pool plus which backend it is. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
}

impl fmt::Debug for Store {
    // The URL may hold a password, so only the backend is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

/// A URL after classification: what to hand sqlx, and what to prepare first.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParsedUrl {
    pub(crate) backend: Backend,
    /// The URL given to sqlx (for SQLite files, with `mode=rwc` added when no mode was given).
    pub(crate) url: String,
    /// For SQLite files that may be created: the file, whose parent directory must exist.
    pub(crate) create_file: Option<PathBuf>,
    pub(crate) in_memory: bool,
}

pub(crate) fn parse_url(url: &str) -> Result<ParsedUrl, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // Validate now so a typo is reported as a bad URL, not as a connection failure.
        sqlx::postgres::PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::BadUrl(format!("{}: {e}", redact(url))))?;
        return Ok(ParsedUrl {
            backend: Backend::Postgres,
            url: url.to_owned(),
            create_file: None,
            in_memory: false,
        });
    }
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| {
            StoreError::BadUrl(format!(
                "{}: expected sqlite://PATH, sqlite::memory: or postgres://...",
                redact(url)
            ))
        })?;
    let (path, params) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let params: Vec<(&str, &str)> = params
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let mode = params.iter().find(|(k, _)| *k == "mode").map(|(_, v)| *v);
    let in_memory = path == ":memory:" || mode == Some("memory");
    if path.is_empty() && !in_memory {
        return Err(StoreError::BadUrl(format!("{url}: no database file path")));
    }
    let mut final_url = url.to_owned();
    let mut create_file = None;
    if !in_memory && mode.is_none() {
        final_url.push(if params.is_empty() && !url.contains('?') {
            '?'
        } else {
            '&'
        });
        final_url.push_str("mode=rwc");
    }
    if !in_memory && matches!(mode, None | Some("rwc")) {
        create_file = Some(PathBuf::from(percent_decode(path)));
    }
    sqlx::sqlite::SqliteConnectOptions::from_str(&final_url)
        .map_err(|e| StoreError::BadUrl(format!("{url}: {e}")))?;
    Ok(ParsedUrl {
        backend: Backend::Sqlite,
        url: final_url,
        create_file,
        in_memory,
    })
}

/// Hides a password in a URL before it goes into an error message.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Decodes `%XX` escapes the way sqlx does for SQLite paths, so the directory we create is the
/// one sqlx opens. Invalid escapes are kept as written.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl Store {
    /// Connects to the database the URL names (see the module docs for the forms) and brings its
    /// schema up to date.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let parsed = parse_url(url)?;
        if let Some(file) = &parsed.create_file {
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::BadUrl(format!("cannot create directory {}: {e}", dir.display()))
                })?;
            }
        }
        let options = AnyConnectOptions::from_str(&parsed.url)
            .map_err(|e| StoreError::BadUrl(format!("{}: {e}", redact(url))))?;
        let pool_options = match (parsed.backend, parsed.in_memory) {
            // One connection that is never closed: it *is* the database.
            (Backend::Sqlite, true) => AnyPoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None),
            (Backend::Sqlite, false) => AnyPoolOptions::new()
                .max_connections(SQLITE_MAX_CONNECTIONS)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        use sqlx::Executor;
                        conn.execute(
                            format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str(),
                        )
                        .await?;
                        Ok(())
                    })
                }),
            (Backend::Postgres, _) => {
                AnyPoolOptions::new().max_connections(POSTGRES_MAX_CONNECTIONS)
            }
        }
        .acquire_timeout(ACQUIRE_TIMEOUT);
        let pool = pool_options.connect_with(options).await?;
        let store = Store {
            pool,
            backend: parsed.backend,
        };
        if parsed.backend == Backend::Sqlite && !parsed.in_memory {
            // WAL is a property of the file, so setting it once here covers every connection
            // (and every other process). It lets readers run while a ledger batch commits.
            let mode: String = retry_while_locked("switch to WAL", || async {
                Ok(sqlx::query_scalar("PRAGMA journal_mode = WAL")
                    .fetch_one(&store.pool)
                    .await?)
            })
            .await?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(journal_mode = %mode, "SQLite did not switch to WAL");
            }
            // Migrations are idempotent (each claims its version in its own transaction), so a
            // run that lost a lock race can simply run again.
            retry_while_locked("migrate", || {
                migrate::run(&store.pool, store.backend == Backend::Postgres)
            })
            .await?;
        } else {
            migrate::run(&store.pool, store.backend == Backend::Postgres).await?;
        }
        Ok(store)
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Round-trips a trivial query, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection; later calls on this store (and its clones) fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether an error is SQLite's "database is locked" (SQLITE_BUSY, any extended code) or
/// "database table is locked" (SQLITE_LOCKED): another connection holds a lock for now.
pub(crate) fn is_sqlite_locked(e: &sqlx::Error) -> bool {
    let Some(d) = e.as_database_error() else {
        return false;
    };
    let primary = d
        .code()
        .and_then(|c| c.parse::<i32>().ok())
        .map(|c| c & 0xff);
    matches!(primary, Some(5) | Some(6))
        || d.message().contains("database is locked")
        || d.message().contains("database table is locked")
}

fn store_error_is_locked(e: &StoreError) -> bool {
    match e {
        StoreError::Db(e) | StoreError::Migration { source: e, .. } => is_sqlite_locked(e),
        _ => false,
    }
}

/// Runs `op` until it succeeds, fails otherwise than with a lock held by someone else, or
/// [`SQLITE_START_RETRY`] has passed; waits with jittered exponential back-off in between (the
/// jitter keeps processes that collided once from colliding again in lock-step).
async fn retry_while_locked<T, F, Fut>(what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + SQLITE_START_RETRY;
    let mut backoff = Duration::from_millis(5);
    let mut attempts = 0u32;
    loop {
        match op().await {
            Err(e) if store_error_is_locked(&e) && tokio::time::Instant::now() < deadline => {
                attempts += 1;
                tracing::debug!(attempts, error = %e, "SQLite {what}: database locked, retrying");
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(SQLITE_START_BACKOFF_MAX);
            }
            Err(e) => {
                if attempts > 0 {
                    tracing::warn!(attempts, error = %e, "SQLite {what} failed after retries");
                }
                return Err(e);
            }
            Ok(v) => return Ok(v),
        }
    }
}

/// A duration between half and all of `d`, from the std hasher's per-instance random keys
/// (no RNG dependency needed for this).
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = d / 2;
    half + Duration::from_nanos(r % (half.as_nanos().max(1) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_file_urls_get_rwc_and_a_file_to_create() {
        let p = parse_url("sqlite://data/dir/f.db").unwrap();
        assert_eq!(p.backend, Backend::Sqlite);
        assert_eq!(p.url, "sqlite://data/dir/f.db?mode=rwc");
        assert_eq!(p.create_file, Some(PathBuf::from("data/dir/f.db")));
        assert!(!p.in_memory);

        let p = parse_url("sqlite:///abs/f%20x.db?cache=shared").unwrap();
        assert_eq!(p.url, "sqlite:///abs/f%20x.db?cache=shared&mode=rwc");
        assert_eq!(p.create_file, Some(PathBuf::from("/abs/f x.db")));
    }

    #[test]
    fn explicit_modes_are_respected() {
        let p = parse_url("sqlite://f.db?mode=ro").unwrap();
        assert_eq!(p.url, "sqlite://f.db?mode=ro");
        assert_eq!(p.create_file, None);
    }

    #[test]
    fn memory_urls() {
        let p = parse_url("sqlite::memory:").unwrap();
        assert!(p.in_memory);
        assert_eq!(p.url, "sqlite::memory:");
        assert_eq!(p.create_file, None);
    }

    #[test]
    fn postgres_urls() {
        let p = parse_url("postgres://u@localhost:5432/db?options=-c%20search_path%3Dx").unwrap();
        assert_eq!(p.backend, Backend::Postgres);
        assert!(parse_url("postgresql://u:p@h/db").is_ok());
    }

    #[test]
    fn bad_urls() {
        for url in ["mysql://x/y", "", "sqlite://", "sqlite://f.db?mode=bogus"] {
            assert!(
                matches!(parse_url(url), Err(StoreError::BadUrl(_))),
                "{url} should be rejected"
            );
        }
    }

    #[tokio::test]
    async fn memory_store_is_one_database_and_each_is_private() {
        let a = Store::connect("sqlite::memory:").await.unwrap();
        let b = Store::connect("sqlite::memory:").await.unwrap();
        assert_eq!(a.backend(), "sqlite");
        let t = fairgate_types::Tenant {
            name: "t".into(),
            weight: 1,
            group: None,
            created_at: 0,
            policy: Default::default(),
        };
        a.create_tenant(&t).await.unwrap();
        // Many calls, one connection, one database.
        for _ in 0..3 {
            assert_eq!(a.list_tenants().await.unwrap(), vec![t.clone()]);
        }
        assert!(b.list_tenants().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn connect_reports_bad_urls_before_touching_anything() {
        assert!(matches!(
            Store::connect("mysql://localhost/x").await,
            Err(StoreError::BadUrl(_))
        ));
        assert!(matches!(
            Store::connect("postgres://u:pw@host:notaport/db").await,
            Err(StoreError::BadUrl(msg)) if !msg.contains("pw")
        ));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:1/db"),
            "postgres://u:***@h:1/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(
                j >= Duration::from_millis(50) && j <= Duration::from_millis(100),
                "{j:?}"
            );
        }
    }

    /// Another process writing to the file while it is still in rollback-journal mode (for
    /// example one that is itself switching it to WAL or migrating) holds a RESERVED lock.
    /// Switching to WAL reads first and then asks for the write lock, and SQLite does not call
    /// the busy handler for that upgrade (it could deadlock), so it fails at once with "database
    /// is locked". `connect` must wait and retry instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_waits_for_a_writer_blocking_the_switch_to_wal() {
        use sqlx::{Connection, Executor};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let url = format!("sqlite://{}", path.display());
        let mut writer = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        writer
            .execute("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut writer)
            .await
            .unwrap();
        assert_eq!(mode, "delete", "the file starts in rollback-journal mode");
        // An open write transaction: a RESERVED lock on the file until it ends.
        writer.execute("BEGIN IMMEDIATE").await.unwrap();
        writer.execute("INSERT INTO t VALUES (2)").await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut writer)
            .await
            .unwrap();
        assert_eq!(n, 2);

        let connecting = tokio::spawn({
            let url = url.clone();
            async move { Store::connect(&url).await }
        });
        // While the writer holds its lock the switch cannot happen; a connect that gave up
        // would finish (with an error) during this time.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !connecting.is_finished(),
            "connect finished while another connection blocked the WAL switch: {:?}",
            connecting.await.unwrap().err()
        );
        writer.execute("COMMIT").await.unwrap();
        let store = connecting
            .await
            .unwrap()
            .expect("connect after the lock is released");
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        writer.close().await.unwrap();
        store.close().await;
    }

    #[test]
    fn locked_errors_are_recognised() {
        assert!(!store_error_is_locked(&StoreError::BadUrl("x".into())));
        assert!(!is_sqlite_locked(&sqlx::Error::PoolTimedOut));
    }
}
