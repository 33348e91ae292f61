//! Re-reading the config file and applying its live parts (SIGHUP and `POST /admin/v1/reload`).

use std::sync::Arc;

use fairgate_gateway::config::Config;
use fairgate_gateway::state::{directory_changed, AppState};
use fairgate_store::Store;

/// Upserts the groups and tenants the config file declares.
pub async fn apply_declared(
    store: &Store,
    config: &Config,
) -> Result<(), fairgate_store::StoreError> {
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

/// Re-reads the config file and applies its live parts, audited as `actor`: admission settings (mode, queue
/// bounds, token costs), routing, backends, model prices and cache opt-ins, declared groups and
/// tenants. Requests
/// in flight and queued are kept; the next dispatch uses the new settings.
pub async fn reload_config(st: &Arc<AppState>, actor: &str) -> anyhow::Result<ReloadReport> {
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
    st.watch_backends();
    let report = ReloadReport {
        path: st.config_path.as_ref().map(|p| p.display().to_string()),
        tenants_declared: new.tenants.len(),
        groups_declared: new.groups.len(),
        needs_restart,
    };
    st.live.store(Arc::new(new));
    directory_changed(st).await?;
    if !report.needs_restart.is_empty() {
        tracing::warn!(fields = ?report.needs_restart, "config reloaded; these changes need a restart to apply");
    }
    crate::audit::record_audit(
        st,
        actor,
        "config.reload",
        "config".into(),
        None,
        crate::audit::json_of(&report),
    )
    .await;
    tracing::info!(?report, actor, "config reloaded");
    Ok(report)
}
