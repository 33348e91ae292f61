//! How many ledger rows per second the batched writer commits, on SQLite and PostgreSQL, and
//! whether it keeps up with a steady offered load without its queue growing (issue 17).
//!
//! ```text
//! cargo bench -p fairgate-store --bench ledger            # both databases
//! FAIRGATE_BENCH_SECONDS=60 FAIRGATE_BENCH_RATE=20000 cargo bench -p fairgate-store --bench ledger
//! ```
//!
//! PostgreSQL: `FAIRGATE_BENCH_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//! in a schema of its own that is dropped afterwards. Skipped with a note when unreachable.
//! Rows go through [`spawn_ledger`] exactly as the gateway hands them over: `record`, which
//! never waits; the writer batches (256 rows or 100 ms) off-path.

use std::time::{Duration, Instant};

use fairgate_store::ledger::{spawn_ledger, LedgerConfig};
use fairgate_store::Store;
use fairgate_types::{now_millis, KeyId, LedgerRow, Outcome, RequestId, UsageSource};

fn row(i: u64) -> LedgerRow {
    let mut r = LedgerRow::new(
        RequestId::new(),
        now_millis(),
        "/v1/chat/completions".into(),
    );
    r.tenant = Some(format!("tenant-{}", i % 50));
    r.user = Some(format!("user-{}", i % 2000));
    r.key_id = Some(KeyId(format!("key{:08}", i % 3000)));
    r.model = Some("llama-70b".into());
    r.backend = Some("10.0.0.11:8000".into());
    r.prompt_tokens = 200 + i % 1000;
    r.completion_tokens = 100 + i % 300;
    r.units = r.prompt_tokens + r.completion_tokens;
    r.usage_source = UsageSource::Upstream;
    r.status = 200;
    r.outcome = Outcome::Ok;
    r.ttft_ms = Some(40);
    r.duration_ms = 900;
    r.attempts = 1;
    r
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn count(store: &Store) -> u64 {
    store
        .usage(None, None, None)
        .await
        .map(|rows| rows.iter().map(|r| r.requests).sum())
        .unwrap_or(0)
}

async fn run(name: &str, store: Store, spill: &std::path::Path) {
    let registry = prometheus::Registry::new();
    let cfg = LedgerConfig {
        spill_dir: Some(spill.to_path_buf()),
        ..LedgerConfig::default()
    };
    let (handle, writer) = spawn_ledger(store.clone(), cfg, &registry).expect("ledger");

    // 1. Burst: as fast as the writer takes them (waiting only when its queue is full).
    let n = env_u64("FAIRGATE_BENCH_ROWS", 200_000);
    let t0 = Instant::now();
    for i in 0..n {
        let mut r = row(i);
        loop {
            match handle.try_record(r) {
                Ok(()) => break,
                Err(back) => {
                    r = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    handle.flush().await.expect("flush");
    let burst = t0.elapsed();
    println!(
        "{name}: burst {n} rows committed in {:.2} s: {:.0} rows/s",
        burst.as_secs_f64(),
        n as f64 / burst.as_secs_f64()
    );

    // 2. Steady offered load: `rate` rows/s for `secs` s, handed over with `record` (which
    // spills rather than wait); the queue depth is sampled every second.
    let rate = env_u64("FAIRGATE_BENCH_RATE", 20_000);
    let secs = env_u64("FAIRGATE_BENCH_SECONDS", 20);
    let tick = Duration::from_millis(10);
    let per_tick = rate / 100;
    let mut depths = Vec::new();
    let start = Instant::now();
    let mut next = start;
    let mut i = n;
    let mut last_sample = start;
    while start.elapsed() < Duration::from_secs(secs) {
        for _ in 0..per_tick {
            handle.record(row(i));
            i += 1;
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            depths.push(handle.queued());
            last_sample = Instant::now();
        }
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
    let offered = i - n;
    let sent_for = start.elapsed();
    // Rows that did not fit the queue went to the spill file: the writer fell behind.
    let spilled = match handle.flush().await {
        Ok(()) => 0,
        Err(fairgate_store::ledger::LedgerError::Spilled { rows, .. }) => rows,
        Err(e) => panic!("flush: {e}"),
    };
    let drained = start.elapsed();
    println!(
        "{name}: steady {offered} rows over {:.1} s ({:.0} rows/s offered): queue depth each second {:?}, \
         max {}, spilled {spilled}, all committed {:.2} s after the last was handed over",
        sent_for.as_secs_f64(),
        offered as f64 / sent_for.as_secs_f64(),
        depths,
        depths.iter().max().copied().unwrap_or(0),
        (drained - sent_for).as_secs_f64()
    );
    writer.shutdown().await.expect("shutdown");
    let stored = count(&store).await;
    println!("{name}: {stored} rows stored, {spilled} in the spill file");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store = Store::connect(&sqlite).await.expect("sqlite");
        run("sqlite", store, &dir.path().join("spill-sqlite")).await;

        let base = std::env::var("FAIRGATE_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("fg_ledger_bench_{}", std::process::id());
        sqlx::any::install_default_drivers();
        let admin = match sqlx::AnyPool::connect(&base).await {
            Ok(p) => p,
            Err(e) => {
                println!("postgres: skipped ({e})");
                return;
            }
        };
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .expect("create schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let store = Store::connect(&url).await.expect("postgres");
        run("postgres", store, &dir.path().join("spill-pg")).await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await
            .expect("drop schema");
    });
}
