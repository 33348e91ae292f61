//! Composition root: builds the gateway's state from a [`Config`], the router, and runs it
//! with graceful shutdown.
//!
//! Shutdown order matters for "no lost data": stop accepting connections and let in-flight
//! requests finish for up to `shutdown_grace_ms` ([`crate::serving`]; requests still open then
//! are dropped and recorded as cancelled), then drain the ledger writer's queue: committed if
//! the database answers within `[ledger] shutdown_flush_ms`, else spilled to `data_dir`
//! (replayed at the next start). Recording a row never spawns a task, so nothing else waits.

use arc_swap::ArcSwap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::{any, get, post};
use axum::Router;
use fairgate_store::{LedgerConfig, LedgerHandle, LedgerWriter, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::config::Config;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::upstream::{http_client, HttpClient, Upstreams};
use crate::{admin, proxy};

/// Everything a request handler needs; shared read-only behind one `Arc`.
pub struct AppState {
    /// The config the gateway started with: listen address, database, models and backends.
    pub config: Arc<Config>,
    /// The reloadable view of the config (admission settings, prices, cache opt-ins,
    /// file-declared tenants): swapped whole on SIGHUP or `POST /admin/v1/reload`.
    pub live: ArcSwap<Config>,
    /// Where `live` is re-read from; `None` when started without a file.
    pub config_path: Option<PathBuf>,
    pub admission: Admission,
    pub portal: crate::portal::Portal,
    pub store: Store,
    pub identity: Identity,
    pub upstreams: Upstreams,
    pub client: HttpClient,
    pub ledger: LedgerHandle,
    pub metrics: Metrics,
    /// Unix seconds when the gateway started (the `created` of `/v1/models` entries).
    pub started_at: i64,
    /// Fired when serving ends: stops the backend watchers.
    pub shutdown: CancellationToken,
    /// Request-path bounds: memory for backend answers, anonymous ledger rows.
    pub proxy_limits: crate::proxy_limits::ProxyLimits,
    /// Fired when shutdown begins (SIGTERM): `/readyz` answers 503 and connections drain.
    pub stopping: CancellationToken,
}

/// A built gateway, not yet serving.
pub struct Gateway {
    state: Arc<AppState>,
    ledger_writer: LedgerWriter,
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
        apply_declared(&store, &config)
            .await
            .context("applying tenants and groups declared in the config file")?;
        let proxy_limits = crate::proxy_limits::ProxyLimits::new(&config, &metrics.registry)
            .context("registering request-path metrics")?;
        let identity = Identity::load(store.clone())
            .await
            .context("loading tenants and keys")?;
        let state = Arc::new(AppState {
            live: ArcSwap::from_pointee(config.clone()),
            config_path: path,
            admission: Admission::new(&config),
            portal: crate::portal::Portal::new(&config.portal),
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
        });
        sync_directory(&state).await;
        Ok(Gateway {
            state,
            ledger_writer,
        })
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    pub fn router(&self) -> Router {
        router(self.state.clone())
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
                }
            })
        };
        let hangup = {
            // Registered before serving: SIGHUP's default action would end the process.
            let signals = hangup_signals();
            let state = state.clone();
            tokio::spawn(async move { reload_on_hangup(state, signals).await })
        };
        crate::upstream::watch_all(&state, &state.shutdown);
        // Rolls ledger rows past `[ledger] retention_days` into daily aggregates (hourly).
        let retention = fairgate_store::spawn_retention(
            state.store.clone(),
            state.config.ledger.retention_days,
        );
        crate::proxy_limits::AnonymousFailures::start_summaries(&state);
        let app = self.router();
        let result = crate::serving::serve(listener, app, state.clone(), shutdown)
            .await
            .context("serving HTTP");
        state.shutdown.cancel();
        refresh.abort();
        hangup.abort();
        // Counts of suppressed anonymous failures not yet summarized.
        crate::proxy_limits::write_summary(&state);
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

/// Gives a key a new secret: stored, live at once (the old one stops working before this
/// returns), audited under `actor` without any secret (the record never serializes its hash).
/// Admin API and portal both rotate through here; they differ only in checks and answers.
pub async fn rotate_key_secret(
    st: &AppState,
    actor: &str,
    k: &mut fairgate_types::KeyRecord,
) -> Result<crate::identity::NewKey, fairgate_store::StoreError> {
    let minted = crate::identity::mint_secret_for(k.id.clone());
    k.secret_hash = minted.secret_hash.clone();
    st.store.update_key(k).await?;
    refresh_directory(st).await?;
    record_audit(
        st,
        actor,
        "key.rotate",
        format!("key:{}", k.id),
        None,
        serde_json::to_string(&*k).ok(),
    )
    .await;
    tracing::info!(key_id = %k.id, actor, "key rotated");
    Ok(minted)
}

/// Writes one entry of the audit log; a failure is logged, never fails the change itself
/// (which has already happened).
pub async fn record_audit(
    st: &AppState,
    actor: &str,
    action: &str,
    target: String,
    before: Option<String>,
    after: Option<String>,
) {
    let e = fairgate_types::AuditEntry {
        id: uuid::Uuid::now_v7().to_string(),
        ts: fairgate_types::now_millis(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target,
        before,
        after,
    };
    if let Err(err) = st.store.insert_audit(&e).await {
        tracing::error!(error = %err, action, "could not write the audit log");
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
async fn sync_directory(st: &AppState) {
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

/// Upserts the groups and tenants the config file declares.
async fn apply_declared(store: &Store, config: &Config) -> Result<(), fairgate_store::StoreError> {
    for g in &config.groups {
        store.upsert_group(g).await?;
    }
    for t in &config.tenants {
        let created_at = store
            .get_tenant(&t.name)
            .await?
            .map_or_else(fairgate_types::now_millis, |old| old.created_at);
        store
            .upsert_tenant(&fairgate_types::Tenant {
                name: t.name.clone(),
                weight: t.weight,
                group: t.group.clone(),
                created_at,
                policy: t.policy.clone(),
            })
            .await?;
    }
    Ok(())
}

/// What a reload changed, for the admin API and logs.
#[derive(Debug, serde::Serialize)]
pub struct ReloadReport {
    pub path: Option<String>,
    pub tenants_declared: usize,
    pub groups_declared: usize,
    /// Settings that changed in the file but need a restart (listen address, database, the
    /// set of models; backends and everything else apply live).
    pub needs_restart: Vec<&'static str>,
}

/// Re-reads the config file and applies its live parts: admission settings (mode, queue
/// bounds, token costs), routing, backends, model prices and cache opt-ins, declared groups and
/// tenants. Requests
/// in flight and queued are kept; the next dispatch uses the new settings.
pub async fn reload_config(st: &Arc<AppState>) -> anyhow::Result<ReloadReport> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let new = Config::load(st.config_path.as_deref(), env)?;
    let old = st.config.as_ref();
    let mut needs_restart = Vec::new();
    if new.listen != old.listen {
        needs_restart.push("listen");
    }
    if new.database != old.database {
        needs_restart.push("database");
    }
    if new.shutdown_grace_ms != old.shutdown_grace_ms {
        needs_restart.push("shutdown_grace_ms");
    }
    if new.limits != old.limits {
        // The HTTP server and the router are built with these.
        needs_restart.push("limits");
    }
    let names = |c: &Config| -> Vec<String> { c.models.iter().map(|m| m.name.clone()).collect() };
    if names(&new) != names(old) {
        needs_restart.push("models");
    }
    apply_declared(&st.store, &new).await?;
    for pool in &st.upstreams.pools {
        if let Some(m) = new.model(&pool.name) {
            // Backends declared in the file follow it; admin-API ones stay.
            pool.reconcile(m, &new.routing);
        }
        pool.apply_admission(&new.admission);
    }
    crate::upstream::watch_all(st, &st.shutdown);
    let report = ReloadReport {
        path: st.config_path.as_ref().map(|p| p.display().to_string()),
        tenants_declared: new.tenants.len(),
        groups_declared: new.groups.len(),
        needs_restart,
    };
    st.live.store(Arc::new(new));
    refresh_directory(st).await?;
    if !report.needs_restart.is_empty() {
        tracing::warn!(fields = ?report.needs_restart, "config reloaded; these changes need a restart to apply");
    }
    tracing::info!(?report, "config reloaded");
    Ok(report)
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
        match reload_config(&st).await {
            Ok(report) => {
                let after = serde_json::to_string(&report).ok();
                record_audit(&st, "SIGHUP", "config.reload", "config".into(), None, after).await;
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "config reload failed; keeping the running config");
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_st: Arc<AppState>, _signals: Hangups) {}

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/completions", post(proxy::completions))
        .route("/v1/embeddings", post(proxy::embeddings))
        .route("/v1/models", get(proxy::list_models))
        .route("/v1/{*rest}", any(proxy::generic))
        // vLLM serves these at the root as well.
        .route("/tokenize", post(proxy::generic))
        .route("/detokenize", post(proxy::generic))
        .route("/rerank", post(proxy::generic))
        .route("/score", post(proxy::generic))
        .route("/pooling", post(proxy::generic))
        .route("/classify", post(proxy::generic));
    Router::new()
        .merge(v1)
        .nest("/admin/v1", admin::router(state.clone()))
        // The portal's forms are read (under its small limit) before any extractor runs.
        .nest(
            "/portal",
            crate::portal::router()
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    crate::limits::portal_body,
                ))
                // Outermost, so the body limit's refusals carry the portal's headers too.
                .layer(axum::middleware::map_response(
                    crate::portal::security_headers,
                )),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(proxy::not_found)
        // Bodies are bounded per route: /v1 handlers read theirs under `max_body_bytes` (to
        // answer with an OpenAI-shaped 413 and a ledger row), /portal and /admin through their
        // limit layers. axum's own limit only backs those up for any extractor added later.
        .layer(axum::extract::DefaultBodyLimit::max(largest_body(
            &state.config,
        )))
        .with_state(state)
}

/// `GET /metrics`: open, or behind `metrics_token` (a bearer token, compared in constant time)
/// when one is configured.
async fn metrics(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
    headers: http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let live = st.live.load();
    if let Some(want) = &live.metrics_token {
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool =
            subtle::ConstantTimeEq::ct_eq(given.as_bytes(), want.expose().as_bytes()).into();
        if !ok {
            return (
                http::StatusCode::UNAUTHORIZED,
                [(http::header::WWW_AUTHENTICATE, "Bearer")],
                "metrics token required\n",
            )
                .into_response();
        }
    }
    drop(live);
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(&st.upstreams),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Whether this replica can take requests: its config is loaded (it is running) and it is not
/// shutting down. Deliberately not the database (the request path never waits on it; the
/// ledger queues and spills) nor backend health (a model scaled to zero still accepts and
/// queues work): either would take every replica out of rotation at once.
async fn readyz(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
) -> (http::StatusCode, &'static str) {
    if st.stopping.is_cancelled() {
        (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
    } else {
        (http::StatusCode::OK, "ready\n")
    }
}

/// The largest body any route accepts.
fn largest_body(c: &Config) -> usize {
    c.max_body_bytes
        .max(c.limits.admin_body_bytes)
        .max(c.limits.portal_body_bytes)
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
