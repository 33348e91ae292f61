//! The per-backend watcher: probes `/health` and scrapes `/metrics` on the live config's
//! intervals. It holds only what it reads ([`WatchContext`]), not the gateway's state.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::router::scrape::{self};

use super::backend::*;
use super::client::*;
use super::{ModelPool, Upstreams};

/// What a backend watcher reads on each round, and nothing more: the HTTP client and the live
/// config (probe and scrape intervals). It holds the config weakly, so watchers end when the
/// gateway that started them is dropped.
#[derive(Clone)]
pub struct WatchContext {
    pub client: HttpClient,
    pub live: Weak<ArcSwap<Config>>,
}

impl WatchContext {
    /// Starts the health prober and metrics scraper of every backend of `upstreams` not yet
    /// watched. Each watcher ends when its backend leaves the pool, the gateway is dropped or
    /// `stop` fires.
    pub fn watch_all(&self, upstreams: &Upstreams, stop: &CancellationToken) {
        for pool in &upstreams.pools {
            for b in pool.backends().iter() {
                self.watch(pool, b, stop);
            }
        }
    }

    /// Starts one backend's watcher (once).
    pub fn watch(&self, pool: &Arc<ModelPool>, b: &Arc<Backend>, stop: &CancellationToken) {
        if b.watched.swap(true, Ordering::AcqRel) {
            return;
        }
        let cx = self.clone();
        let pool = Arc::downgrade(pool);
        let b = b.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = watcher(cx, pool, b) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

pub(crate) async fn watcher(cx: WatchContext, pool: Weak<ModelPool>, b: Arc<Backend>) {
    let mut next_probe = Instant::now();
    loop {
        let Some(live) = cx.live.upgrade() else {
            return;
        };
        let routing = live.load().routing.clone();
        drop(live);
        let client = &cx.client;
        let Some(pool) = pool.upgrade() else { return };
        if b.removing.load(Ordering::Relaxed) && !pool.backends().iter().any(|x| Arc::ptr_eq(x, &b))
        {
            return;
        }
        let timeout = Duration::from_millis(routing.probe_timeout_ms);
        let client = b.client(client);
        match get(client, &b, "/metrics", timeout).await {
            Ok((200, body)) => match std::str::from_utf8(&body).ok().and_then(scrape::parse) {
                Some(scraped) => {
                    if let Some(kv) = scraped.kv_tokens {
                        // One index block ≈ 16 tokens (64 bytes).
                        lock(&b.prefix).set_capacity((kv / 16) as usize);
                    }
                    *lock(&b.load) = Some(Load {
                        at: Instant::now(),
                        scraped,
                        own_at_scrape: b.in_flight(),
                    });
                }
                None => {
                    b.stats.scrape_errors.fetch_add(1, Ordering::Relaxed);
                }
            },
            _ => {
                b.stats.scrape_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if Instant::now() >= next_probe {
            let before = b.routable(Instant::now());
            match get(client, &b, "/health", timeout).await {
                Ok((s, _)) if (200..300).contains(&s) => {
                    lock(&b.health).on_probe_ok(Instant::now())
                }
                Ok((s, _)) => {
                    b.failed(format!("health probe answered HTTP {s}"));
                }
                Err(e) => {
                    b.failed(format!("health probe failed: {e}"));
                }
            }
            if b.routable(Instant::now()) != before {
                tracing::info!(model = %pool.name, backend = %b.url, state = b.status().state, "backend health changed");
            }
            pool.refresh();
            next_probe = Instant::now() + Duration::from_millis(routing.probe_interval_ms);
        }
        drop(pool);
        tokio::time::sleep(Duration::from_millis(routing.scrape_interval_ms)).await;
    }
}

/// A small GET of `path` on backend `b` (with its credential) with a deadline: status and body.
pub(crate) async fn get(
    client: &HttpClient,
    b: &Backend,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    let mut req = http::Request::get(format!("{}{path}", b.url))
        .body(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
        .map_err(|e| e.to_string())?;
    b.authorize(req.headers_mut());
    let fut = async {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                "connection refused or unreachable".to_owned()
            } else {
                e.to_string()
            }
        })?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), 4 * 1024 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}
