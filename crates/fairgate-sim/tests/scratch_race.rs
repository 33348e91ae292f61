mod common;
use common::{chat_body, serve, sse};
use fairgate_sim::{SimConfig, FAULT_HEADER};

async fn go(h2: bool, cfg: SimConfig) -> std::collections::BTreeMap<i64, usize> {
    let s = serve(cfg).await;
    let b = reqwest::Client::builder();
    let client = if h2 { b.http2_prior_knowledge() } else { b }
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let c = client.clone();
        let url = s.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let Ok(mut resp) = c
                .post(url)
                .header(FAULT_HEADER, "abort-after=3")
                .json(&chat_body("race me", 20, true))
                .send()
                .await
            else {
                return -1;
            };
            let mut got = Vec::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(b)) => got.extend_from_slice(&b),
                    Ok(None) => return -2,
                    Err(_) => break,
                }
            }
            sse(std::str::from_utf8(&got).unwrap()).0.len() as i64
        }));
    }
    let mut m = std::collections::BTreeMap::new();
    for t in tasks {
        *m.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race() {
    let engine = SimConfig {
        decode_step_base: std::time::Duration::from_micros(500),
        ..SimConfig::instant("sim")
    };
    for h2 in [false, true] {
        println!(
            "h2={h2} instant {:?}",
            go(h2, SimConfig::instant("sim")).await
        );
        println!("h2={h2} engine {:?}", go(h2, engine.clone()).await);
    }
}
