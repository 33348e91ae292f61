//! Composition root: builds the shared state from a [`Config`], assembles the routes of the
//! data plane, the admin API and the portal, and serves them with graceful shutdown. No
//! business rule lives here: operations are the control plane's (`fairgate-control`), request
//! handling the data plane's (`fairgate-gateway`).
//!
//! Shutdown order matters for "no lost data": stop accepting connections and let in-flight
//! requests finish for up to `shutdown_grace_ms` ([`fairgate_gateway::serving`]; requests still open then
//! are dropped and recorded as cancelled), then drain the ledger writer's queue: committed if
//! the database answers within `[ledger] shutdown_flush_ms`, else spilled to `data_dir`
//! (replayed at the next start). Recording a row never spawns a task, so nothing else waits.

use arc_swap::ArcSwap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use fairgate_control::reload::reload_config;
use fairgate_gateway::admission::Admission;
use fairgate_gateway::config::Config;
use fairgate_gateway::context::ContextLengths;
use fairgate_gateway::identity::Identity;
use fairgate_gateway::metrics::Metrics;
use fairgate_gateway::proxy_limits::ProxyLimits;
use fairgate_gateway::routes::largest_body;
use fairgate_gateway::state::{
    refresh_directory, start_anonymous_summaries, start_telemetry_sampler, sync_directory,
    write_anonymous_summary,
};
use fairgate_gateway::upstream::{http_client, Upstreams};
use fairgate_portal::PortalState;
use fairgate_store::{LedgerConfig, LedgerWriter, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use fairgate_gateway::state::AppState;

/// A built gateway, not yet serving.
pub struct Gateway {
    state: Arc<AppState>,
    portal: Arc<PortalState>,
    ledger_writer: LedgerWriter,
    /// How `discover` entries are resolved (the system's resolver unless a test sets one).
    resolver: Arc<dyn fairgate_gateway::discovery::Resolve>,
    /// Slurm, when a model's backends are Slurm jobs (`[models.slurm]`).
    slurm: Option<Arc<dyn fairgate_slurm::api::Slurm>>,
}

/// How often the key/tenant directory is re-read, so changes made on other replicas arrive.
const DIRECTORY_REFRESH: Duration = Duration::from_secs(5);

impl Gateway {
    pub async fn build(config: Config) -> anyhow::Result<Gateway> {
        Self::build_with_path(config, None).await
    }

    /// Like [`Gateway::build`]; `path` is the file SIGHUP re-reads.
    pub async fn build_with_path(config: Config, path: Option<PathBuf>) -> anyhow::Result<Gateway> {
        if config.database.starts_with("sqlite://") {
            // Make a relative SQLite path's directory exist, as a first run expects.
            let path = config.database.trim_start_matches("sqlite://");
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
            }
        }
        let store = Store::connect(&config.database)
            .await
            .with_context(|| format!("opening database {}", redact_url(&config.database)))?;
        let metrics = Metrics::new().context("registering metrics")?;
        let ledger_cfg = LedgerConfig {
            batch_size: config.ledger.batch_size,
            flush_interval: Duration::from_millis(config.ledger.flush_interval_ms),
            queue_capacity: config.ledger.queue_capacity,
            spill_dir: Some(config.data_dir.clone()),
            ..LedgerConfig::default()
        };
        // The writer replays spill files an earlier run left in `data_dir` as soon as the
        // database answers (it pings at once).
        let (ledger, ledger_writer) =
            fairgate_store::spawn_ledger(store.clone(), ledger_cfg, &metrics.registry)
                .context("starting the ledger writer")?;
        fairgate_control::reload::apply_declared(&store, &config)
            .await
            .context("applying tenants and groups declared in the config file")?;
        let proxy_limits = ProxyLimits::new(&config, &metrics.registry)
            .context("registering request-path metrics")?;
        let identity = Identity::load(store.clone())
            .await
            .context("loading tenants and keys")?;
        let cluster = match &config.cluster {
            Some(c) => {
                let port = config.listen_addr().map(|a| a.port()).unwrap_or(0);
                let cluster = fairgate_cluster::Cluster::new(fairgate_cluster::ClusterConfig {
                    redis_url: c.redis_url.expose().to_owned(),
                    replica_id: c.replica_id(port),
                    key_prefix: c.key_prefix.clone(),
                    heartbeat: Duration::from_millis(c.heartbeat_ms),
                    member_ttl: Duration::from_millis(c.member_ttl_ms),
                    op_timeout: Duration::from_millis(c.redis_timeout_ms),
                })
                .context("[cluster] redis_url")?;
                tracing::info!(member = %cluster.member_id(), "joining the cluster");
                Some(cluster)
            }
            None => None,
        };
        let admission = Admission::new(&config).with_fleet(cluster.as_ref());
        let guard = fairgate_guard::Guard::new(&config.guardrails.detect)
            .map_err(|e| anyhow::anyhow!("[guardrails] detect: {e}"))?;
        let state = Arc::new(AppState {
            guard,
            cluster,
            live: Arc::new(ArcSwap::from_pointee(config.clone())),
            config_path: path,
            admission,
            context: ContextLengths::default(),
            upstreams: Upstreams::from_config(&config),
            client: http_client(&config.upstream),
            config: Arc::new(config),
            store,
            identity,
            ledger,
            metrics,
            started_at: chrono::Utc::now().timestamp(),
            shutdown: CancellationToken::new(),
            proxy_limits,
            stopping: CancellationToken::new(),
            telemetry: Default::default(),
            provisioner: Default::default(),
        });
        sync_directory(&state).await;
        let portal = Arc::new(PortalState::new(state.clone()));
        let slurm = if fairgate_slurm::wanted(&state.config) {
            // Before any backend of a job is added (here or from the database): their keys
            // are derived from this secret.
            fairgate_slurm::init_key_secret(&state.config)
                .map_err(|e| anyhow::anyhow!("[slurm]: {e}"))?;
            Some(
                fairgate_slurm::client(&state.config.slurm)
                    .map_err(|e| anyhow::anyhow!("[slurm]: {e}"))?,
            )
        } else {
            None
        };
        Ok(Gateway {
            state,
            portal,
            ledger_writer,
            resolver: Arc::new(fairgate_gateway::discovery::SystemResolver),
            slurm,
        })
    }

    /// Reaches Slurm through `slurm` instead of the configured way (tests use a fake).
    pub fn with_slurm(mut self, slurm: Arc<dyn fairgate_slurm::api::Slurm>) -> Self {
        self.slurm = Some(slurm);
        self
    }

    /// Resolves `discover` entries with `resolver` instead of the system's (tests move a
    /// name's records with it).
    pub fn with_resolver(
        mut self,
        resolver: Arc<dyn fairgate_gateway::discovery::Resolve>,
    ) -> Self {
        self.resolver = resolver;
        self
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The portal's state (the gateway's, plus sign-in throttle, hashing pool, OIDC).
    pub fn portal(&self) -> &Arc<PortalState> {
        &self.portal
    }

    pub fn router(&self) -> Router {
        app(&self.state, &self.portal)
    }

    /// Serves until `shutdown` resolves, then drains requests and flushes the ledger.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let refresh = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(DIRECTORY_REFRESH);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = refresh_directory(&state).await {
                        tracing::warn!(error = %e, "refreshing the key directory failed; keeping the last one");
                    }
                    if let Err(e) = fairgate_control::backends::sync_backends(&state).await {
                        tracing::warn!(error = %e, "reading the fleet's run-time backend changes failed; retrying at the next refresh");
                    }
                }
            })
        };
        let hangup = {
            // Registered before serving: SIGHUP's default action would end the process.
            let signals = hangup_signals();
            let state = state.clone();
            tokio::spawn(async move { reload_on_hangup(state, signals).await })
        };
        state.watch_backends();
        fairgate_gateway::discovery::start(&state, self.resolver.clone());
        let provisioner = self
            .slurm
            .clone()
            .and_then(|s| fairgate_slurm::start(&state, s));
        // Under [cluster]: the backends other replicas added or changed at run time.
        if let Err(e) = fairgate_control::backends::sync_backends(&state).await {
            tracing::warn!(error = %e, "reading the fleet's run-time backend changes failed; retrying at the next refresh");
        }
        let cluster = state.cluster.as_ref().map(|c| {
            let changes = c.start(state.shutdown.clone());
            if let Some(cc) = &state.config.cluster {
                fairgate_gateway::fleet::start(
                    &state.upstreams.pools,
                    c,
                    Duration::from_millis(cc.lease_interval_ms),
                    &state.shutdown,
                );
            }
            if let Some(q) = &state.admission.fleet {
                tokio::spawn(q.clone().run_retries(state.shutdown.clone()));
                tokio::spawn(reseed_after_outages(state.clone()));
            }
            tokio::spawn(apply_cluster_changes(state.clone(), changes))
        });
        // Rolls ledger rows past `[ledger] retention_days` into daily aggregates (hourly).
        let retention = fairgate_store::spawn_retention(
            state.store.clone(),
            state.config.ledger.retention_days,
        );
        start_anonymous_summaries(&state);
        start_telemetry_sampler(&state);
        let app = self.router();
        let result = fairgate_gateway::serving::serve(listener, app, state.clone(), shutdown)
            .await
            .context("serving HTTP");
        state.shutdown.cancel();
        refresh.abort();
        hangup.abort();
        if let Some(p) = provisioner {
            // It stops at `shutdown`; its lease is given back on the way out.
            let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
        }
        if let Some(task) = cluster {
            task.abort();
        }
        if let Some(q) = &state.admission.fleet {
            // Requests have ended: their settlements land before this member leaves.
            q.flush(Duration::from_secs(2)).await;
        }
        if let Some(c) = &state.cluster {
            // Leave at once rather than after the member TTL (bounded by the Redis timeout).
            if let Err(e) = c.leave().await {
                tracing::warn!(error = %e, "could not leave the cluster; the others drop this replica after its TTL");
            }
        }
        // Counts of suppressed anonymous failures not yet summarized.
        write_anonymous_summary(&state);
        if let Some(r) = retention {
            r.abort();
        }
        // Bounded: tries the database for at most `shutdown_flush_ms` (not at all if it is
        // known to be down), then spills. Spilled rows are safe on disk, so that is no error.
        let flush = Duration::from_millis(state.config.ledger.shutdown_flush_ms);
        match self.ledger_writer.shutdown_with_timeout(flush).await {
            Ok(()) => tracing::info!("ledger flushed; bye"),
            Err(fairgate_store::LedgerError::Spilled { path, rows }) => tracing::warn!(
                rows,
                path = %path.display(),
                "ledger rows spilled at shutdown; they are replayed at the next start"
            ),
            Err(e) => return Err(e).context("flushing the ledger at shutdown"),
        }
        result
    }
}

/// With `[cluster]`: once Redis answers again after an outage, budget floors are reloaded from
/// the ledger (after two ledger flushes, so the outage's last rows are in), so the fleet's
/// accounts include what every replica spent while they were checked locally.
async fn reseed_after_outages(state: Arc<AppState>) {
    let Some(c) = state.cluster.clone() else {
        return;
    };
    let every = c.config().heartbeat;
    let mut was_up = c.redis_up();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let up = c.redis_up();
        if up && !was_up {
            let flush = Duration::from_millis(2 * state.config.ledger.flush_interval_ms);
            tokio::time::sleep(flush).await;
            let dir = state.identity.snapshot_arc();
            state.admission.reseed_budgets(&state.store, &dir).await;
        }
        was_up = up;
    }
}

/// Applies what other replicas announce: a changed directory is re-read from the shared store.
/// A burst of announcements costs one re-read.
async fn apply_cluster_changes(
    state: Arc<AppState>,
    mut changes: tokio::sync::mpsc::Receiver<fairgate_cluster::Change>,
) {
    while let Some(change) = changes.recv().await {
        while changes.try_recv().is_ok() {}
        match change {
            fairgate_cluster::Change::Directory => {
                if let Err(e) = refresh_directory(&state).await {
                    tracing::warn!(error = %e, "re-reading the directory another replica changed failed; the periodic refresh retries");
                }
            }
            fairgate_cluster::Change::Backends => {
                if let Err(e) = fairgate_control::backends::sync_backends(&state).await {
                    tracing::warn!(error = %e, "reading the backends another replica changed failed; the periodic refresh retries");
                }
            }
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /admin/v1/reload");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signals() -> Hangups {
    None
}

#[cfg(unix)]
async fn reload_on_hangup(st: Arc<AppState>, signals: Hangups) {
    let Some(mut hup) = signals else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config file");
        if let Err(e) = reload_config(&st, "SIGHUP").await {
            tracing::error!(error = %format!("{e:#}"), "config reload failed; keeping the running config");
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_st: Arc<AppState>, _signals: Hangups) {}

/// The whole HTTP surface: the data plane, the admin API under `/admin/v1` and the portal
/// under `/portal`. Bodies are bounded per route (the /v1 handlers read theirs under
/// `max_body_bytes` to answer with an OpenAI-shaped 413 and a ledger row, /portal and /admin
/// through their limit layers); axum's own limit only backs those up for any extractor added
/// later.
pub fn app(state: &Arc<AppState>, portal: &Arc<PortalState>) -> Router {
    fairgate_gateway::routes::router(state.clone())
        .nest("/admin/v1", fairgate_admin::router(state.clone()))
        .nest("/portal", fairgate_portal::router(portal.clone()))
        .layer(axum::extract::DefaultBodyLimit::max(largest_body(
            &state.config,
        )))
}

/// [`app`] for a state built elsewhere (tests), with fresh portal parts.
pub fn router(state: Arc<AppState>) -> Router {
    let portal = Arc::new(PortalState::new(state.clone()));
    app(&state, &portal)
}

/// Hides a password in a database URL for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:*****{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url("postgres://u:secret@h/db"),
            "postgres://u:*****@h/db"
        );
        assert_eq!(super::redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
