//! Backends changed at run time: add, drain, resume, remove. In a single process they live
//! until restart (or until removed); a config reload only touches the backends the file
//! declares. Under `[cluster]` every such change is also stored in the database and announced,
//! so it applies on every replica, including those that start later ([`sync_backends`]).

use std::sync::Arc;

use fairgate_gateway::config::BackendConfig;
use fairgate_gateway::state::{announce, AppState};
use fairgate_gateway::upstream::{BackendStatus, ModelPool, Origin};

use crate::audit::{json_of, record_audit};
use crate::ControlError;

pub fn pool<'a>(st: &'a AppState, model: &str) -> Result<&'a Arc<ModelPool>, ControlError> {
    st.upstreams
        .get(model)
        .ok_or_else(|| ControlError::NotFound(format!("model `{model}`")))
}

/// A backend to add: the admin API's JSON body and what the portal's form fills in are the
/// config file's `[[models.backends]]` entry, with the same fields and defaults.
pub type NewBackend = BackendConfig;

/// The default of `max_in_flight`, for forms that show it.
pub use fairgate_gateway::config::defaults::max_in_flight as default_max_in_flight;

/// Validates and adds a backend, starts its watcher and audits `backend.add` as `actor`: the
/// one way the admin API and the portal add a backend.
pub async fn add_backend(
    st: &Arc<AppState>,
    actor: &str,
    model: &str,
    req: NewBackend,
) -> Result<BackendStatus, ControlError> {
    let p = pool(st, model)?.clone();
    if req.discover.is_some() {
        return Err(ControlError::Invalid(
            "discover: backends found by DNS are declared in the config file".into(),
        ));
    }
    fairgate_gateway::config::validate_backend_url(&req.url)
        .map_err(|m| ControlError::Invalid(format!("url: {m}")))?;
    if req.max_in_flight == 0 {
        return Err(ControlError::Invalid(
            "max_in_flight: must be at least 1".into(),
        ));
    }
    if req.max_tokens_in_flight == Some(0) {
        return Err(ControlError::Invalid(
            "max_tokens_in_flight: must be at least 1 (leave it out for no token bound)".into(),
        ));
    }
    for a in req.adapters.iter().flatten() {
        if !p.adapters.contains(a) {
            return Err(ControlError::Invalid(format!(
                "adapters: `{a}` is not one of model `{model}`'s adapters"
            )));
        }
    }
    req.validate_engine()
        .map_err(|(f, m)| ControlError::Invalid(format!("{f}: {m}")))?;
    let cfg = req;
    cfg.validate_access()
        .map_err(|(f, m)| ControlError::Invalid(format!("{f}: {m}")))?;
    if st.cluster.is_some() && cfg.api_key.is_some() {
        return Err(ControlError::Invalid(
            "api_key: under [cluster] a backend added at run time names its key with `api_key_env`, \
             which every replica reads from its own environment; an inline key would have to be \
             stored in the database and sent to the other replicas"
                .into(),
        ));
    }
    let routing = st.live.load().routing.clone();
    let b = p
        .add(&cfg, Origin::Api, &routing)
        .map_err(ControlError::Conflict)?;
    st.watch_backend(&p, &b);
    if st.cluster.is_some() {
        let json = serde_json::to_string(&cfg)
            .map_err(|e| ControlError::Internal(format!("backend config as JSON: {e}")))?;
        if let Err(e) = st
            .store
            .put_runtime_backend(model, &b.url, Some(&json), ACTIVE)
            .await
        {
            // Not stored means the other replicas would never see it: undo here too.
            p.remove(&b.url);
            return Err(e.into());
        }
        announce(st, fairgate_cluster::Change::Backends).await;
    }
    let status = b.status();
    record_audit(
        st,
        actor,
        "backend.add",
        format!("model:{model} backend:{}", b.url),
        None,
        json_of(&serde_json::json!({
            "url": b.url,
            "name": b.name,
            "max_in_flight": cfg.max_in_flight,
            "api_key": cfg.api_key.is_some() || cfg.api_key_env.is_some(),
        })),
    )
    .await;
    Ok(status)
}

const ACTIVE: &str = "active";
const DRAINING: &str = "draining";
const REMOVED: &str = "removed";

/// Under `[cluster]`: brings this replica's backends in line with the run-time changes stored
/// in the database (by any replica): adds the backends added at run time that it lacks,
/// drains, resumes and removes as stored. Runs at start, when another replica announces a
/// change, and with every periodic directory refresh (the backstop for a missed message).
/// A stored backend that no longer validates (its model gone) is skipped with a warning.
pub async fn sync_backends(st: &Arc<AppState>) -> Result<(), fairgate_store::StoreError> {
    if st.cluster.is_none() {
        return Ok(());
    }
    let rows = st.store.list_runtime_backends().await?;
    let routing = st.live.load().routing.clone();
    for row in rows {
        let Some(p) = st.upstreams.get(&row.model).cloned() else {
            continue;
        };
        let present = p.backend(&row.url);
        match (row.state.as_str(), present) {
            (REMOVED, Some(b)) => {
                if !b.status().removing {
                    tracing::info!(model = %row.model, backend = %row.url, "removing a backend another replica removed");
                    p.remove(&row.url);
                }
            }
            (REMOVED, None) => {}
            (state, Some(b)) => {
                let draining = state == DRAINING;
                if b.is_draining() != draining {
                    p.set_draining(&row.url, draining);
                }
            }
            (state, None) => {
                if row.config.is_empty() {
                    continue;
                }
                let cfg: BackendConfig = match serde_json::from_str(&row.config) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(model = %row.model, backend = %row.url, error = %e, "a stored run-time backend does not parse; skipped");
                        continue;
                    }
                };
                match p.add(&cfg, Origin::Api, &routing) {
                    Ok(b) => {
                        tracing::info!(model = %row.model, backend = %row.url, "adding a backend another replica added");
                        st.watch_backend(&p, &b);
                        if state == DRAINING {
                            p.set_draining(&row.url, true);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(model = %row.model, backend = %row.url, error = %e, "a stored run-time backend cannot be added here; skipped");
                    }
                }
            }
        }
    }
    Ok(())
}

/// A change to one backend of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// No new requests; those in flight finish.
    Drain,
    /// Takes requests again (also calls off a removal that has not finished).
    Resume,
    /// Drains, then leaves the pool once idle.
    Remove,
}

impl Change {
    /// The audit log's name for it.
    pub fn action(self) -> &'static str {
        match self {
            Change::Drain => "backend.drain",
            Change::Resume => "backend.resume",
            Change::Remove => "backend.remove",
        }
    }

    /// The state a replica that applies this change from the database gives the backend.
    fn stored_state(self) -> &'static str {
        match self {
            Change::Drain => DRAINING,
            Change::Resume => ACTIVE,
            Change::Remove => REMOVED,
        }
    }

    fn apply(self, p: &ModelPool, url: &str) -> Option<Arc<fairgate_gateway::upstream::Backend>> {
        match self {
            Change::Drain => p.set_draining(url, true),
            Change::Resume => p.set_draining(url, false),
            Change::Remove => p.remove(url),
        }
    }
}

/// Drains, resumes or removes a backend and audits it as `actor`: the one way the admin API and
/// the portal change a backend.
pub async fn change_backend(
    st: &AppState,
    actor: &str,
    model: &str,
    url: &str,
    change: Change,
) -> Result<BackendStatus, ControlError> {
    let p = pool(st, model)?;
    let before = p.backend(url).map(|b| b.status());
    let b = change
        .apply(p, url)
        .ok_or_else(|| ControlError::NotFound(format!("backend `{url}` of model `{model}`")))?;
    let after = b.status();
    if st.cluster.is_some() {
        st.store
            .put_runtime_backend(model, &b.url, None, change.stored_state())
            .await?;
        announce(st, fairgate_cluster::Change::Backends).await;
    }
    record_audit(
        st,
        actor,
        change.action(),
        format!("model:{model} backend:{}", b.url),
        before.as_ref().and_then(|s| json_of(&state_of(s))),
        json_of(&state_of(&after)),
    )
    .await;
    Ok(after)
}

/// The part of a status an audit entry needs.
pub fn state_of(s: &BackendStatus) -> serde_json::Value {
    serde_json::json!({"state": s.state, "draining": s.draining, "removing": s.removing})
}
