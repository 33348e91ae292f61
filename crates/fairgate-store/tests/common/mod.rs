//! Harness for the conformance suite: runs one scenario against SQLite and against PostgreSQL.
//!
//! SQLite: a fresh database file in a temp directory (in a nested, not-yet-existing directory,
//! so every test also exercises directory creation).
//!
//! PostgreSQL: `FAIRGATE_TEST_POSTGRES_URL`, else a private server started for this test binary
//! by `fairgate_testkit::postgres_url` (initdb in a temp directory). Each test creates its own schema `fg_t_<uuid>` and connects with
//! `?options=-c search_path=<schema>` on the URL, so parallel tests never see each other's
//! tables; the schema is dropped afterwards, also when the scenario panics. If no server is
//! available the test prints a loud SKIP line and passes, except under CI
//! (`fairgate_testkit::in_ci`), where it fails: CI must not go green without having tested
//! PostgreSQL.

#![allow(dead_code)] // each test binary uses a different part of the harness

use fairgate_store::Store;
use sqlx::{Connection, Executor, PgConnection};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a scenario gets: a migrated store plus what it needs to open more of the same kind.
pub struct Db {
    pub store: Store,
    /// URL of `store`: connecting to it again reaches the same database (same schema).
    pub url: String,
    /// Scratch directory for spill files and extra SQLite databases; removed afterwards.
    pub dir: PathBuf,
    /// `"sqlite"` or `"postgres"`.
    pub backend: &'static str,
    fresh: Fresh,
}

enum Fresh {
    Sqlite,
    Postgres {
        base: String,
        schemas: Arc<Mutex<Vec<String>>>,
    },
}

impl Db {
    /// URL of another, empty (unmigrated) database of the same backend, cleaned up with this one.
    pub async fn fresh_url(&self) -> String {
        match &self.fresh {
            Fresh::Sqlite => format!(
                "sqlite://{}/fresh-{}/x.db",
                self.dir.display(),
                uuid::Uuid::now_v7().simple()
            ),
            Fresh::Postgres { base, schemas } => {
                let schema = new_schema_name();
                let mut admin = PgConnection::connect(base).await.expect("admin connection");
                admin
                    .execute(format!("CREATE SCHEMA {schema}").as_str())
                    .await
                    .expect("create schema");
                admin.close().await.expect("close admin connection");
                schemas.lock().expect("schema list").push(schema.clone());
                with_search_path(base, &schema)
            }
        }
    }
}

fn new_schema_name() -> String {
    format!("fg_t_{}", uuid::Uuid::now_v7().simple())
}

/// Adds `options=-c search_path=<schema>` (percent-encoded) to a PostgreSQL URL.
pub fn with_search_path(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

pub async fn on_sqlite<F, Fut>(scenario: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let tmp = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/nested/dir/fairgate.db", tmp.path().display());
    let store = Store::connect(&url).await.expect("connect sqlite");
    assert_eq!(store.backend(), "sqlite");
    let dir = tmp.path().join("scratch");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    scenario(Db {
        store,
        url,
        dir,
        backend: "sqlite",
        fresh: Fresh::Sqlite,
    })
    .await;
}

pub async fn on_postgres<F, Fut>(name: &str, scenario: F)
where
    F: FnOnce(Db) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(base) = fairgate_testkit::postgres_url() else {
        return; // require() has printed the SKIP line (or panicked under CI)
    };
    let admin = tokio::time::timeout(Duration::from_secs(30), PgConnection::connect(&base)).await;
    let mut admin = match admin {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return unavailable(name, &base, &e.to_string()),
        Err(_) => return unavailable(name, &base, "connect timed out after 30s"),
    };
    let schema = new_schema_name();
    admin
        .execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .expect("create test schema");
    let schemas = Arc::new(Mutex::new(vec![schema.clone()]));
    let url = with_search_path(&base, &schema);
    let tmp = tempfile::tempdir().expect("temp dir");

    let run = {
        let url = url.clone();
        let dir = tmp.path().to_owned();
        let fresh = Fresh::Postgres {
            base: base.clone(),
            schemas: schemas.clone(),
        };
        async move {
            let store = Store::connect(&url).await.expect("connect postgres");
            assert_eq!(store.backend(), "postgres");
            scenario(Db {
                store,
                url,
                dir,
                backend: "postgres",
                fresh,
            })
            .await;
        }
    };
    // Spawned so a panicking scenario still lets us drop its schemas before re-raising.
    let outcome = tokio::spawn(run).await;

    if outcome.is_ok() {
        // Isolation check: the tables went into the test's schema, not `public`.
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name IN ('tenants', 'keys', 'ledger')",
        )
        .bind(&schema)
        .fetch_one(&mut admin)
        .await
        .expect("inspect schema");
        assert_eq!(n, 3, "tables must be created in the test schema {schema}");
    }
    let to_drop = schemas.lock().expect("schema list").clone();
    for s in to_drop {
        admin
            .execute(format!("DROP SCHEMA IF EXISTS {s} CASCADE").as_str())
            .await
            .expect("drop test schema");
    }
    let _ = admin.close().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("scenario task failed: {e}"),
        }
    }
}

fn unavailable(name: &str, url: &str, error: &str) {
    fairgate_testkit::require(
        "PostgreSQL",
        &format!("{url} unreachable ({error}); {name} did not run on postgres"),
    );
}

/// Waits until `check` holds, polling; fails after a generous bound so a broken writer fails
/// the test instead of hanging it. This bounds waiting, it does not assert speed.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Declares each scenario as `sqlite::<name>` and `postgres::<name>` tests.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::on_sqlite($crate::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::on_postgres(stringify!($name), $crate::$name).await;
                }
            )*
        }
    };
}
