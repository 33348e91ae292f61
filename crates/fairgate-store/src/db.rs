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
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
                .fetch_one(&store.pool)
                .await?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(journal_mode = %mode, "SQLite did not switch to WAL");
            }
        }
        migrate::run(&store.pool, store.backend).await?;
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
}
