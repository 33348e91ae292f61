//! Backends found by DNS (issue 14): a `[[models.backends]]` entry with
//! `discover = "dns://host:port"` stands for every A/AAAA record of `host` (the pods behind a
//! Kubernetes headless Service, say), each a backend at `http://address:port` with the entry's
//! other settings. One task resolves every entry each `routing.discover_interval_ms`:
//!
//! - a new address joins as a backend (health probes, metric scrapes and prefix-aware routing
//!   start for it as for any other);
//! - an address that is gone is drained and then removed once its requests finish, so a pod
//!   that goes away never has a stream cut by the gateway;
//! - a failed lookup keeps the last set, except that a name that stays unresolvable for
//!   [`EMPTY_AFTER_FAILURES`] rounds in a row counts as empty (a headless Service scaled to zero
//!   has no records at all).
//!
//! A model with a `discover` entry and no backend at the moment queues its requests (fairly,
//! up to the usual wait) instead of refusing them, so an autoscaler watching the queue gauge
//! can bring a backend up (scale to zero).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::config::{parse_discover, BackendConfig};
use crate::state::AppState;
use crate::upstream::{ModelPool, Origin};

/// Failed lookups in a row after which a name counts as having no addresses.
pub const EMPTY_AFTER_FAILURES: u32 = 3;

/// Resolves a host name to addresses; swappable so tests can move a name's records.
pub trait Resolve: Send + Sync + 'static {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>>;
}

/// The system's resolver (`getaddrinfo`: `/etc/hosts`, then DNS as the host is set up).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// The backend URL of one address.
fn url_of(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{port}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
    }
}

/// Starts the discovery task when some model has a `discover` entry; runs until shutdown.
pub fn start(st: &Arc<AppState>, resolver: Arc<dyn Resolve>) {
    if !st.upstreams.pools.iter().any(|p| p.discovers()) {
        return;
    }
    let st = st.clone();
    tokio::spawn(async move {
        let mut failures: HashMap<String, u32> = HashMap::new();
        let mut last: HashMap<String, Vec<IpAddr>> = HashMap::new();
        loop {
            for pool in &st.upstreams.pools {
                round(&st, pool, resolver.as_ref(), &mut failures, &mut last).await;
            }
            let every = std::time::Duration::from_millis(
                st.live.load().routing.discover_interval_ms.max(100),
            );
            tokio::select! {
                _ = st.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}

/// One resolution of a pool's `discover` entries, applied.
async fn round(
    st: &Arc<AppState>,
    pool: &Arc<ModelPool>,
    resolver: &dyn Resolve,
    failures: &mut HashMap<String, u32>,
    last: &mut HashMap<String, Vec<IpAddr>>,
) {
    let templates = pool.discover.load_full();
    let mut wanted: Vec<(String, &BackendConfig)> = Vec::new();
    for t in templates.iter() {
        let Some(spec) = t.discover.as_deref() else {
            continue;
        };
        let Ok((host, port)) = parse_discover(spec) else {
            continue;
        };
        let addrs = match resolver.resolve(&host).await {
            Ok(a) => {
                failures.remove(spec);
                last.insert(spec.to_owned(), a.clone());
                a
            }
            Err(e) => {
                let n = failures.entry(spec.to_owned()).or_insert(0);
                *n += 1;
                if *n >= EMPTY_AFTER_FAILURES {
                    tracing::debug!(model = %pool.name, %spec, error = %e, "no addresses");
                    last.remove(spec);
                    Vec::new()
                } else {
                    tracing::warn!(model = %pool.name, %spec, error = %e, "lookup failed; keeping the last addresses");
                    last.get(spec).cloned().unwrap_or_default()
                }
            }
        };
        let unique: BTreeSet<IpAddr> = addrs.into_iter().collect();
        wanted.extend(unique.into_iter().map(|ip| (url_of(ip, port), t)));
    }
    let routing = st.live.load().routing.clone();
    for (url, t) in &wanted {
        match pool.backend(url) {
            // Back again while it was still draining away: take it back.
            Some(b) if b.origin == Origin::Discovered && b.status().removing => {
                pool.set_draining(url, false);
            }
            Some(_) => {}
            None => {
                let cfg = BackendConfig {
                    url: url.clone(),
                    discover: None,
                    ..(*t).clone()
                };
                match pool.add(&cfg, Origin::Discovered, &routing) {
                    Ok(b) => {
                        tracing::info!(model = %pool.name, backend = %url, "backend found by DNS");
                        st.watch_backend(pool, &b);
                    }
                    Err(e) => {
                        tracing::warn!(model = %pool.name, backend = %url, error = %e, "found by DNS but not added")
                    }
                }
            }
        }
    }
    for b in pool.backends().iter() {
        if b.origin == Origin::Discovered
            && !b.status().removing
            && !wanted.iter().any(|(u, _)| *u == b.url)
        {
            tracing::info!(model = %pool.name, backend = %b.url, "backend gone from DNS; draining it away");
            pool.remove(&b.url);
        }
    }
}
