//! Ledger accuracy end to end, on SQLite and on a real PostgreSQL: under concurrent mixed
//! load (plain, streamed, with and without include_usage, broken streams, rejected requests)
//! the ledger's token sums equal what the simulator says it served, every request has exactly
//! one row, and a graceful shutdown loses nothing.

mod common;

use std::time::Duration;

use common::*;
use fairgate_sim::SimConfig;
use serde_json::json;

async fn concurrent_mixed_load(db: Db) {
    let Some(dbh) = fresh_db(db).await else {
        return;
    };
    let sim = Sim::start(SimConfig {
        decode_step_base: Duration::from_millis(1),
        ..SimConfig::instant("m")
    })
    .await;
    let gw = TestGateway::start(Setup::one("m", &sim.url, 16), &dbh.url).await;
    gw.tenant("a", 1).await;
    gw.tenant("b", 3).await;
    let (_, ka) = gw.key("a", None).await;
    let (_, kb) = gw.key("b", None).await;

    const N: usize = 60;
    let mut tasks = Vec::new();
    for i in 0..N {
        let key = if i % 2 == 0 { ka.clone() } else { kb.clone() };
        let http = gw.http.clone();
        let base = gw.base.clone();
        tasks.push(tokio::spawn(async move {
            let max_tokens = 1 + (i as u64 % 7);
            let mut body = chat("m", max_tokens, i % 3 != 0);
            body["messages"][0]["content"] = json!(format!("request number {i} asks something"));
            if i % 5 == 0 {
                body["stream_options"] = json!({"include_usage": true});
            }
            let mut req = http
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&key);
            if i % 11 == 0 && i % 3 != 0 {
                // Streams only: a non-stream body that breaks half-way has no readable usage
                // and is recorded with zero tokens (README, "The ledger").
                req = req.header("x-sim-fault", "abort-after=1");
            }
            if i % 13 == 0 {
                // Rejected before reaching the backend: must still be one row, zero tokens.
                body["model"] = json!("ghost");
            }
            let resp = req.json(&body).send().await.unwrap();
            let _ = resp.bytes().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows_a = gw.wait_rows(Some("a"), N / 2).await;
    let rows_b = gw.wait_rows(Some("b"), N / 2).await;
    assert_eq!(rows_a.len() + rows_b.len(), N);
    let stats = sim.sim.stats();
    let usage: Vec<serde_json::Value> = [gw.usage("a").await, gw.usage("b").await].concat();
    assert_eq!(
        sum(&usage, "prompt_tokens"),
        stats.prompt_tokens_total,
        "{usage:#?}"
    );
    assert_eq!(
        sum(&usage, "completion_tokens"),
        stats.generation_tokens_total,
        "{usage:#?}"
    );
    let all = [rows_a, rows_b].concat();
    assert!(all.iter().any(|r| r["outcome"] == "upstream_error"));
    assert!(all.iter().any(|r| r["error_class"] == "model_not_found"));
    let ok = all.iter().filter(|r| r["outcome"] == "ok").count();
    assert_eq!(
        ok as u64
            + all
                .iter()
                .filter(|r| r["outcome"] == "upstream_error")
                .count() as u64,
        stats.requests_total,
        "every backend request is one ok or broken row"
    );
    gw.shutdown().await;
    dbh.cleanup().await;
}

#[tokio::test]
async fn concurrent_mixed_load_sqlite() {
    concurrent_mixed_load(Db::Sqlite).await;
}

#[tokio::test]
async fn concurrent_mixed_load_postgres() {
    concurrent_mixed_load(Db::Postgres).await;
}

async fn shutdown_flushes_every_row(db: Db) {
    let Some(dbh) = fresh_db(db).await else {
        return;
    };
    let sim = Sim::start(SimConfig::instant("m")).await;
    let gw = TestGateway::start(Setup::one("m", &sim.url, 64), &dbh.url).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    const N: usize = 200;
    let mut tasks = Vec::new();
    for i in 0..N {
        let (http, base, key) = (gw.http.clone(), gw.base.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&chat("m", 1 + (i as u64 % 3), i % 2 == 0))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let url = gw.db_url.clone();
    // No admin read first (it would flush): shutdown alone must commit everything.
    gw.shutdown().await;
    let store = fairgate_store::Store::connect(&url).await.unwrap();
    assert_eq!(store.ledger_count().await.unwrap(), N as u64);
    let usage = store.usage(Some("t"), None, None).await.unwrap();
    assert_eq!(
        usage[0].completion_tokens,
        sim.sim.stats().generation_tokens_total
    );
    store.close().await;
    dbh.cleanup().await;
}

#[tokio::test]
async fn shutdown_flushes_every_row_sqlite() {
    shutdown_flushes_every_row(Db::Sqlite).await;
}

#[tokio::test]
async fn shutdown_flushes_every_row_postgres() {
    shutdown_flushes_every_row(Db::Postgres).await;
}
