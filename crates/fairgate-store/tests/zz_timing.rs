use fairgate_store::Store;
use fairgate_types::*;
fn row(i: u64) -> LedgerRow {
    LedgerRow { id: RequestId(format!("r{i}")), ts: i as i64, tenant: Some("t".into()), user: None, key_id: None, model: Some("m".into()), backend: None, endpoint: "/x".into(), stream: false, prompt_tokens: i, completion_tokens: 1, cached_tokens: 0, reserved_tokens: 0, usage_source: UsageSource::None, status: 200, outcome: Outcome::Ok, error_class: None, queue_ms: 0, ttft_ms: None, duration_ms: 0 }
}
#[tokio::test]
async fn timing() {
    let d = tempfile::tempdir().unwrap();
    for url in [format!("sqlite://{}/a{}.db", d.path().display(), std::env::var("FG_CHUNK").unwrap_or_default())] {
    let s = Store::connect(&url).await.unwrap();
    for n in [256u64, 256, 1000, 5000, 5000] {
        let rows: Vec<_> = (0..n).map(|i| row(i + n * 100000 + rand_off())).collect();
        let t = std::time::Instant::now();
        s.insert_ledger_rows(&rows).await.unwrap();
        eprintln!("{url} n={n} {:?}", t.elapsed());
    }
    }
}
fn rand_off() -> u64 { use std::sync::atomic::*; static C: AtomicU64 = AtomicU64::new(0); C.fetch_add(1_000_000_000, Ordering::Relaxed) }
