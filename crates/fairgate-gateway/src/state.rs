//! The state every handler shares ([`AppState`]), and the background work that keeps it
//! current: the key directory pushed into the pools, backend watchers, context lengths, and
//! anonymous-failure summaries. Built by the binary's composition root; read by the data plane,
//! the admin API, the portal and the control plane.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use fairgate_store::{LedgerHandle, Store};
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::config::Config;
use crate::context::ContextLengths;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::proxy_limits::ProxyLimits;
use crate::upstream::watch::WatchContext;
use crate::upstream::{Backend, HttpClient, ModelPool, Upstreams};

/// Everything a request handler needs; shared read-only behind one `Arc`.
pub struct AppState {
    /// The config the gateway started with: listen address, database, models and backends.
    pub config: Arc<Config>,
    /// The reloadable view of the config (admission settings, prices, cache opt-ins,
    /// file-declared tenants): swapped whole on SIGHUP or `POST /admin/v1/reload`. Behind its
    /// own `Arc` so backend watchers can hold it (weakly) without the whole state.
    pub live: Arc<ArcSwap<Config>>,
    /// Where `live` is re-read from; `None` when started without a file.
    pub config_path: Option<PathBuf>,
    pub admission: Admission,
    pub store: Store,
    pub identity: Identity,
    pub upstreams: Upstreams,
    pub client: HttpClient,
    pub ledger: LedgerHandle,
    pub metrics: Metrics,
    /// Models' context lengths as their backends report them (portal pages, reservations).
    pub context: ContextLengths,
    /// Unix seconds when the gateway started (the `created` of `/v1/models` entries).
    pub started_at: i64,
    /// Fired when serving ends: stops the backend watchers.
    pub shutdown: CancellationToken,
    /// Request-path bounds: memory for backend answers, anonymous ledger rows.
    pub proxy_limits: ProxyLimits,
    /// Fired when shutdown begins (SIGTERM): `/readyz` answers 503 and connections drain.
    pub stopping: CancellationToken,
    /// The other replicas, with `[cluster]`; `None` for a single process.
    pub cluster: Option<Arc<fairgate_cluster::Cluster>>,
    /// The last hour of this replica's traffic, for the portal's telemetry pages.
    pub telemetry: crate::telemetry::Telemetry,
    /// What the Slurm provisioner last reported (its models and jobs), when this replica runs
    /// it; read by the admin API and the operator pages.
    pub provisioner: arc_swap::ArcSwapOption<serde_json::Value>,
    /// The guardrail detectors (`[guardrails] detect`), compiled once at start.
    pub guard: fairgate_guard::Guard,
}

impl AppState {
    /// What backend watchers need: the client and the live config, held weakly.
    fn watch_context(&self) -> WatchContext {
        WatchContext {
            client: self.client.clone(),
            live: Arc::downgrade(&self.live),
        }
    }

    /// Starts the watcher of every backend not yet watched (at start and after a reload).
    pub fn watch_backends(&self) {
        self.watch_context()
            .watch_all(&self.upstreams, &self.shutdown);
    }

    /// Starts the watcher of one backend added at run time.
    pub fn watch_backend(&self, pool: &Arc<ModelPool>, b: &Arc<Backend>) {
        self.watch_context().watch(pool, b, &self.shutdown);
    }

    /// The request path's read of `model`'s context length: never waits on a backend; when
    /// the length is unknown or old, one background refresh starts.
    pub fn context_length(self: &Arc<Self>, model: &str) -> Option<u64> {
        let (value, refresh) = self.context.known_or_due(model);
        if refresh {
            let st = self.clone();
            tokio::spawn(async move {
                st.context.all(&st.upstreams, &st.client).await;
                st.context.refreshed();
            });
        }
        value
    }

    /// Every model's known context length, asking backends not asked recently (portal pages).
    pub async fn context_lengths(&self) -> std::collections::HashMap<String, u64> {
        self.context.all(&self.upstreams, &self.client).await
    }
}

/// A change to tenants, groups, keys, users or policies was stored: applies it here, then
/// tells the other replicas (which re-read the store). What the control plane calls.
pub async fn directory_changed(st: &AppState) -> Result<(), fairgate_store::StoreError> {
    refresh_directory(st).await?;
    announce(st, fairgate_cluster::Change::Directory).await;
    Ok(())
}

/// Tells the other replicas about `change`. Bounded by `[cluster] redis_timeout_ms`; a failure
/// is logged, not returned: the change is stored, and the others' periodic refresh picks it up.
pub async fn announce(st: &AppState, change: fairgate_cluster::Change) {
    if let Some(c) = &st.cluster {
        if let Err(e) = c.publish(change).await {
            tracing::warn!(error = %e, "could not announce a change to the other replicas; they will see it at their next refresh");
        }
    }
}

/// Re-reads tenants, keys and groups, then brings the pools and budgets up to date.
pub async fn refresh_directory(st: &AppState) -> Result<(), fairgate_store::StoreError> {
    st.identity.reload().await?;
    sync_directory(st).await;
    Ok(())
}

/// Pushes weights and groups to every pool (so queued requests are ordered by the new
/// weights at the next dispatch) and seeds budget accounts from the ledger.
pub async fn sync_directory(st: &AppState) {
    let dir = st.identity.snapshot_arc();
    // Metric labels accept only known models and tenants (issue 10).
    st.metrics.learn(
        &st.live.load(),
        &st.upstreams,
        dir.tenants().map(|t| t.name.as_str()),
    );
    for pool in &st.upstreams.pools {
        for t in dir.tenants() {
            let gw = t.group.as_deref().map_or(t.weight, |g| dir.group_weight(g));
            pool.fair
                .set_tenant(&t.name, t.weight, t.group.as_deref(), gw);
        }
    }
    st.admission.seed_budgets(&st.store, &dir).await;
}

/// Starts the task writing anonymous-failure summary rows every
/// `relay.anonymous_summary_s` (once).
pub fn start_anonymous_summaries(st: &Arc<AppState>) {
    if !st.proxy_limits.anonymous.start_summarizer() {
        return;
    }
    let weak: Weak<AppState> = Arc::downgrade(st);
    let stop = st.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let every = match weak.upgrade() {
                Some(st) => st.live.load().relay.anonymous_summary_s.max(1),
                None => return,
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(every)) => {}
                _ = stop.cancelled() => return,
            }
            let Some(st) = weak.upgrade() else { return };
            write_anonymous_summary(&st);
        }
    });
}

/// Starts the task that samples every model's fair-queue depth into the telemetry windows once
/// a second (queue depth is a level, not an event, so it is sampled rather than recorded).
pub fn start_telemetry_sampler(st: &Arc<AppState>) {
    let weak: Weak<AppState> = Arc::downgrade(st);
    let stop = st.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let Some(st) = weak.upgrade() else { return };
            let now = fairgate_types::now_millis();
            for pool in &st.upstreams.pools {
                st.telemetry
                    .sample_queue(now, &pool.name, pool.fair.queued() as u64);
            }
        }
    });
}

/// Writes the anonymous-failure summary rows now (also called at shutdown, so no count is
/// lost).
pub fn write_anonymous_summary(st: &AppState) {
    for row in st.proxy_limits.anonymous.take_summary() {
        // Never dropped: onto the queue, or into the spill file when it is full or closed.
        st.ledger.record(row);
    }
}
