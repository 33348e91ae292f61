//! `fairgate bench --scenario soak`: does the gateway hold its size under a long mixed load?
//!
//! Starts a timed simulator and a gateway (SQLite ledger) as child processes of this binary,
//! then runs a fixed mix for `--seconds` (default 600) from a fixed number of workers:
//! whole streams, streams cancelled after a few chunks, non-streams, non-streams cancelled
//! before the answer, and bad inputs (malformed and oversized bodies, wrong types, duplicate
//! keys, unknown and random model names, bad keys, unknown routes). The gateway's RSS and open
//! file descriptors are read from `/proc/<pid>` after a warm-up and again after the load has
//! stopped and settled; a leak shows as growth between the two. Every request the load sent
//! is then looked for in the ledger (rows by status), so "nothing lost" is checked as well.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;

use crate::harness::http::{bench_client, tenant_key};
use crate::harness::process::{self, flags, ledger_path, open_fds, status_mib, Stack, StackSpec};

/// What one soak run is told.
pub struct SoakArgs {
    pub seconds: u64,
    pub workers: usize,
    pub seed: u64,
}

/// One kind of request in the mix, and how often it is sent (out of 100).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Stream,
    StreamCancel,
    Plain,
    PlainCancel,
    Bad(u8),
}

const MIX: &[(Kind, u32)] = &[
    (Kind::Stream, 35),
    (Kind::StreamCancel, 15),
    (Kind::Plain, 20),
    (Kind::PlainCancel, 5),
    (Kind::Bad(0), 25),
];

/// Bad inputs cycled through by `Kind::Bad`.
const BAD_KINDS: u8 = 9;

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    ok: AtomicU64,
    cancelled: AtomicU64,
    refused: AtomicU64,
    transport_errors: AtomicU64,
}

/// The gateway's resident size (MiB) and open file descriptors now.
fn proc_sample(pid: u32) -> Option<(f64, usize)> {
    Some((status_mib(pid, "VmRSS")?, open_fds(pid)?))
}

/// A timed simulator (64 sequences, 2 ms steps) behind a gateway with a 1 MiB body limit, so
/// the oversized inputs of the mix are refused; the gateway's log is not shown, as the bad
/// inputs would fill the terminal with warnings.
fn stack(seed: u64) -> StackSpec<'static> {
    StackSpec {
        backend_extra: String::new(),
        model: "soak",
        sims: vec![flags(&[
            ("--max-num-seqs", "64".to_owned()),
            ("--prefill-overhead-ms", "2".to_owned()),
            ("--decode-step-ms", "2".to_owned()),
            ("--seed", seed.to_string()),
        ])],
        config: "max_body_bytes = 1048576\n".to_owned(),
        max_in_flight: 64,
        gateway_log: false,
    }
}

/// A small deterministic generator: the mix is the same for the same seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn pick(r: u64) -> Kind {
    let mut x = (r % 100) as u32;
    for &(k, w) in MIX {
        if x < w {
            return match k {
                Kind::Bad(_) => Kind::Bad(((r >> 8) % BAD_KINDS as u64) as u8),
                k => k,
            };
        }
        x -= w;
    }
    Kind::Plain
}

fn chat(stream: bool, max_tokens: u64, salt: u64) -> serde_json::Value {
    serde_json::json!({
        "model": "soak",
        "messages": [{"role": "user", "content": format!("soak request {salt}: say something.")}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

async fn send(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    kind: Kind,
    r: u64,
    counts: &Counts,
) {
    counts.sent.fetch_add(1, Ordering::Relaxed);
    let url = format!("{base}/v1/chat/completions");
    let auth = format!("Bearer {key}");
    let result = match kind {
        Kind::Stream | Kind::StreamCancel => {
            let resp = client
                .post(&url)
                .header("authorization", &auth)
                .json(&chat(true, 24 + r % 40, r))
                .send()
                .await;
            match resp {
                Ok(resp) if resp.status().is_success() => {
                    let mut body = resp.bytes_stream();
                    let mut chunks = 0;
                    let cut_after = if matches!(kind, Kind::StreamCancel) {
                        2 + (r % 5) as usize
                    } else {
                        usize::MAX
                    };
                    while let Some(c) = body.next().await {
                        if c.is_err() {
                            counts.transport_errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        chunks += 1;
                        if chunks >= cut_after {
                            counts.cancelled.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    Ok(true)
                }
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            }
        }
        Kind::Plain => client
            .post(&url)
            .header("authorization", &auth)
            .json(&chat(false, 16 + r % 32, r))
            .send()
            .await
            .map(|r| r.status().is_success()),
        Kind::PlainCancel => {
            let fut = client
                .post(&url)
                .header("authorization", &auth)
                .json(&chat(false, 64, r))
                .send();
            match tokio::time::timeout(Duration::from_millis(5 + r % 20), fut).await {
                Err(_) => {
                    counts.cancelled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(res) => res.map(|r| r.status().is_success()),
            }
        }
        Kind::Bad(n) => {
            let req = match n {
                // Not JSON at all.
                0 => client
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body("{\"model\": \"soak\", \"messages\": [")
                    .send(),
                // Wrong types.
                1 => client
                    .post(&url)
                    .header("authorization", &auth)
                    .json(&serde_json::json!({"model": 7, "messages": "hi", "max_tokens": -1}))
                    .send(),
                // A random model name: must not grow metrics or memory.
                2 => client
                    .post(&url)
                    .header("authorization", &auth)
                    .json(&serde_json::json!({
                        "model": format!("no-such-model-{r:x}"),
                        "messages": [{"role": "user", "content": "x"}],
                    }))
                    .send(),
                // A wrong key.
                3 => client
                    .post(&url)
                    .header("authorization", format!("Bearer fgk_{r:x}_nope"))
                    .json(&chat(false, 8, r))
                    .send(),
                // Over the body limit (1 MiB in the soak config).
                4 => client
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(vec![b' '; 1_100_000])
                    .send(),
                // Duplicate keys.
                5 => client
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(
                        "{\"model\":\"soak\",\"model\":\"other\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                    )
                    .send(),
                // An unknown route with a random path.
                6 => client
                    .get(format!("{base}/v1/nothing-here/{r:x}"))
                    .header("authorization", &auth)
                    .send(),
                // Deep nesting.
                7 => client
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(format!("{}{}", "[".repeat(5000), "]".repeat(5000)))
                    .send(),
                // A huge max_tokens.
                _ => client
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(
                        "{\"model\":\"soak\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":18446744073709551615}",
                    )
                    .send(),
            };
            match req.await {
                Ok(resp) => {
                    let _ = resp.bytes().await;
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(true) => {
            counts.ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok(false) => {
            counts.refused.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            counts.transport_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub async fn run(a: SoakArgs) -> anyhow::Result<()> {
    let admin = bench_client()?;
    let stack = process::start("soak", stack(a.seed), &admin).await?;
    let pid = stack.procs.gateway_pid().context("gateway pid")?;
    let base = stack.gateway.clone();
    let key = tenant_key(&admin, &base, "soak", 1).await?;

    let counts = Arc::new(Counts::default());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.workers)
        .build()?;
    let run_for = Duration::from_secs(a.seconds);
    let warmup = Duration::from_secs(30.min(a.seconds / 4).max(1));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..a.workers {
        let (client, base, key, counts) =
            (client.clone(), base.clone(), key.clone(), counts.clone());
        let mut rng = a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (w as u64 + 1);
        workers.push(tokio::spawn(async move {
            while started.elapsed() < run_for {
                let r = next(&mut rng);
                send(&client, &base, &key, pick(r), r, &counts).await;
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let first = proc_sample(pid).context("reading the gateway's /proc entry")?;
    println!(
        "after {:.0} s warm-up: RSS {:.1} MiB, {} open fds",
        warmup.as_secs_f64(),
        first.0,
        first.1
    );
    let mut samples = vec![(started.elapsed().as_secs(), first)];
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(60).min(run_for.saturating_sub(started.elapsed())))
            .await;
        if let Some(s) = proc_sample(pid) {
            println!(
                "t={:>4} s  RSS {:.1} MiB  fds {}  sent {}",
                started.elapsed().as_secs(),
                s.0,
                s.1,
                counts.sent.load(Ordering::Relaxed)
            );
            samples.push((started.elapsed().as_secs(), s));
        }
    }
    for w in workers {
        let _ = w.await;
    }
    drop(client);
    // Let cancelled requests settle and idle connections close before the last reading.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let last = proc_sample(pid).context("reading the gateway's /proc entry")?;
    let sent = counts.sent.load(Ordering::Relaxed);
    println!();
    println!("| | after warm-up | end (load stopped, 5 s settle) | growth |");
    println!("|---|---|---|---|");
    println!(
        "| RSS | {:.1} MiB | {:.1} MiB | {:+.1}% |",
        first.0,
        last.0,
        100.0 * (last.0 - first.0) / first.0
    );
    println!(
        "| open fds | {} | {} | {:+.1}% |",
        first.1,
        last.1,
        100.0 * (last.1 as f64 - first.1 as f64) / first.1 as f64
    );
    println!();
    println!(
        "requests: {sent} sent in {} s by {} workers: {} completed, {} cancelled by the client, \
         {} refused (4xx/5xx), {} transport errors",
        a.seconds,
        a.workers,
        counts.ok.load(Ordering::Relaxed),
        counts.cancelled.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.transport_errors.load(Ordering::Relaxed)
    );
    // Stop the gateway gracefully so the ledger is flushed, then count its rows.
    let Stack { procs, dir, .. } = stack;
    procs.stop_gracefully(Duration::from_secs(30)).await;
    let rows = count_rows(&ledger_path(&dir)).await;
    match rows {
        Ok(n) => println!(
            "ledger rows: {n} (requests sent: {sent}; anonymous failures are recorded at a bounded rate, so rows may be fewer than requests by the suppressed count in fairgate_anonymous_rejections_total)"
        ),
        Err(e) => println!("ledger rows: could not count ({e:#})"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn count_rows(db: &std::path::Path) -> anyhow::Result<i64> {
    let store = fairgate_store::Store::connect(&format!("sqlite://{}", db.display())).await?;
    Ok(store.ledger_count().await? as i64)
}
