//! The benchmarks' own HTTP calls: the load generator's client, tenants and keys through the
//! admin API, and metric pages.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};

use super::process::ADMIN_TOKEN;

/// Where a load goes: the simulator directly, or the gateway with a tenant's key.
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) auth: Option<String>,
}

/// A chat completion POST of `body` to `t`, as the hyper load clients send it.
pub(crate) fn request(t: &Target, body: &Bytes) -> anyhow::Result<http::Request<Full<Bytes>>> {
    let mut b = http::Request::post(format!("{}/v1/chat/completions", t.url))
        .header("content-type", "application/json");
    if let Some(a) = &t.auth {
        b = b.header("authorization", a);
    }
    Ok(b.body(Full::new(body.clone()))?)
}

/// The load generator's HTTP client: no Nagle delay, and enough idle connections that a
/// closed loop of hundreds of streams does not reconnect.
pub(crate) fn bench_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(512)
        .build()?)
}

/// Creates a tenant and one key through the admin API; returns the key.
pub(crate) async fn tenant_key(
    client: &reqwest::Client,
    gw: &str,
    name: &str,
    weight: u32,
) -> anyhow::Result<String> {
    let base = format!("{gw}/admin/v1");
    client
        .post(format!("{base}/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": name, "weight": weight}))
        .send()
        .await?
        .error_for_status()
        .with_context(|| format!("creating tenant {name}"))?;
    let v: Value = client
        .post(format!("{base}/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"tenant": name, "name": "bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["key"].as_str().context("no key in response")?.to_owned())
}

/// The Prometheus page at `{url}/metrics`; `None` when it does not come within 2 s, so a
/// stuck process does not stall the sampling.
pub(crate) async fn scrape(client: &reqwest::Client, url: &str) -> Option<String> {
    client
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}
