//! Backends found by DNS (issue 14): a `discover = "dns://name:port"` entry follows the
//! addresses the name resolves to. A test resolver moves the records; the simulators listen on
//! 127.0.0.1 and 127.0.0.2 on one port, as two pods behind a headless Service would.

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::eventually;
use common::*;
use fairgate::config::BackendConfig;
use fairgate_gateway::discovery::Resolve;
use fairgate_sim::SimConfig;
use futures_util::future::BoxFuture;
use reqwest::Method;

/// A name whose records the test sets; an empty list is an unknown name (NXDOMAIN).
#[derive(Default)]
struct Records(Mutex<Vec<IpAddr>>);

impl Records {
    fn set(&self, ips: &[&str]) {
        *self.0.lock().unwrap() = ips.iter().map(|s| s.parse().unwrap()).collect();
    }
}

impl Resolve for Records {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            assert_eq!(host, "vllm.test");
            let ips = self.0.lock().unwrap().clone();
            if ips.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such name",
                ));
            }
            Ok(ips)
        })
    }
}

async fn backend_urls(gw: &TestGateway) -> Vec<String> {
    let (_, v) = gw.admin(Method::GET, "/models/m/backends", None).await;
    v["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["url"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backends_follow_the_names_records_from_zero_and_leave_without_cutting_a_stream() {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    // Two "pods" on one port: 127.0.0.1 and 127.0.0.2.
    let slow = || SimConfig {
        decode_step_base: Duration::from_millis(4),
        ..SimConfig::instant("m")
    };
    let one = Sim::start_at("127.0.0.1:0", slow()).await;
    let port = one.url.rsplit(':').next().unwrap().to_owned();
    let two = Sim::start_at(&format!("127.0.0.2:{port}"), slow()).await;
    let records = Arc::new(Records::default());
    let setup = Setup::one("m", &one.url, 4).with(move |c| {
        c.routing.discover_interval_ms = 100;
        c.models[0].backends = vec![BackendConfig {
            url: String::new(),
            discover: Some(format!("dns://vllm.test:{port}")),
            ..BackendConfig::new("", 4)
        }];
    });
    let gw = TestGateway::start_resolving(setup, &db.url, Some(records.clone())).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;

    // Scaled to zero: no record, no backend; a request queues instead of failing...
    assert!(backend_urls(&gw).await.is_empty());
    let queued = {
        let (base, key) = (gw.base.clone(), key.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&chat("m", 4, false))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !queued.is_finished(),
        "the request did not wait for a backend"
    );
    let (_, m) = gw.admin(Method::GET, "/scheduler", None).await;
    assert_eq!(m["models"][0]["queued"], 1, "{m}");
    // ... and is served once the first pod appears.
    records.set(&["127.0.0.1"]);
    assert_eq!(queued.await.unwrap(), 200);

    // A long stream starts on the first pod (the only one); a second pod joins and gets
    // traffic; then the first goes away while still streaming: its stream finishes whole,
    // and no client request fails at any point.
    let long = gw
        .post(&key, "/v1/chat/completions", chat("m", 400, true))
        .await;
    assert_eq!(long.status(), 200);
    records.set(&["127.0.0.1", "127.0.0.2"]);
    eventually("two backends", || async {
        backend_urls(&gw).await.len() == 2
    })
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (base, key, stop) = (gw.base.clone(), key.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = http
                        .post(format!("{base}/v1/chat/completions"))
                        .bearer_auth(&key)
                        .json(&chat("m", 8, false))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    records.set(&["127.0.0.2"]);
    eventually("the first pod is drained away", || async {
        backend_urls(&gw).await
            == vec![format!(
                "http://127.0.0.2:{}",
                two.url.rsplit(':').next().unwrap()
            )]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    assert!(ok > 0);
    assert_eq!(failed, 0, "a client request failed while the pods changed");
    let (events, done) = sse_events(long).await;
    assert!(done, "the stream on the pod that left was cut");
    assert!(events.iter().all(|e| e.get("error").is_none()));
    let content = events
        .iter()
        .filter(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count();
    assert_eq!(content, 400, "the stream on the pod that left lost tokens");
    assert!(
        two.sim.stats().requests_total > 0,
        "the second pod got no traffic"
    );
    gw.shutdown().await;
}
