//! Several fairgate processes (replicas, a restart racing a CLI call) starting at once on one
//! SQLite file must all succeed: the switch to WAL and the migrations take locks that SQLite's
//! busy timeout does not always wait for, so `Store::connect` retries them with back-off.
//!
//! Separate pools in one process lock the file exactly as separate processes do (no shared
//! cache); the process test re-runs this test binary as children, for the real thing.

use fairgate_store::migrate::MIGRATIONS;
use fairgate_store::Store;
use std::sync::Arc;
use tokio::sync::Barrier;

const CHILD_ENV: &str = "FAIRGATE_STORE_CHILD_DB";

async fn migration_count(url: &str) -> i64 {
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM fairgate_migrations")
        .fetch_one(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_pools_start_at_once_on_one_new_file() {
    const ROUNDS: usize = 15;
    const N: usize = 8;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db/fairgate.db", dir.path().display());
        let barrier = Arc::new(Barrier::new(N));
        let tasks: Vec<_> = (0..N)
            .map(|_| {
                let (url, barrier) = (url.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let store = Store::connect(&url).await?;
                    // Each one can also write at once.
                    store.list_tenants().await?;
                    Ok::<_, fairgate_store::StoreError>(store)
                })
            })
            .collect();
        let mut stores = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(s) => stores.push(s),
                Err(e) => panic!("round {round}: connect {i} of {N} failed: {e}"),
            }
        }
        assert_eq!(migration_count(&url).await, MIGRATIONS.len() as i64);
        for s in stores {
            s.close().await;
        }
    }
}

/// Not a test of its own: the body of one child process of the test below.
#[tokio::test]
#[ignore = "helper: run as a child process by processes_start_at_once_on_one_new_file"]
async fn child_connect() {
    let url = std::env::var(CHILD_ENV).expect("run by processes_start_at_once_on_one_new_file");
    let store = Store::connect(&url).await.expect("child connect");
    store.list_tenants().await.expect("child query");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_start_at_once_on_one_new_file() {
    const ROUNDS: usize = 5;
    const N: usize = 6;
    let exe = std::env::current_exe().unwrap();
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/fairgate.db", dir.path().display());
        let children: Vec<_> = (0..N)
            .map(|_| {
                tokio::process::Command::new(&exe)
                    .args(["--exact", "child_connect", "--ignored", "--nocapture"])
                    .args(["--test-threads", "1"])
                    .env(CHILD_ENV, &url)
                    .kill_on_drop(true)
                    .output()
            })
            .collect();
        for (i, c) in futures_join(children).await.into_iter().enumerate() {
            let out = c.unwrap();
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                "round {round}: child {i} failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(migration_count(&url).await, MIGRATIONS.len() as i64);
    }
}

/// Awaits all futures concurrently (they are already running as child processes).
async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output>
where
    F: Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
