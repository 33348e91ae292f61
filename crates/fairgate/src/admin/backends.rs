//! `/admin/v1/backends` and `/admin/v1/models/{model}/backends`: see every backend's health
//! and load; add, drain, resume and remove backends live.
//!
//! Backends added here live until restart (or until removed); put them in the config file to
//! keep them. A config reload only touches the backends the file declares.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{json_of, parse};
use crate::config::BackendConfig;
use crate::error::ApiError;
use crate::server::AppState;
use crate::upstream::{BackendStatus, ModelPool, Origin};

#[derive(Serialize)]
pub(super) struct ModelBackends {
    model: String,
    adapters: Vec<String>,
    /// Requests the pool admits at once now (usable backends' slots + requests still running
    /// on the others).
    capacity: usize,
    queued: usize,
    backends: Vec<BackendStatus>,
}

fn model_view(p: &ModelPool) -> ModelBackends {
    ModelBackends {
        model: p.name.clone(),
        adapters: p.adapters.clone(),
        capacity: p.fair.capacity(),
        queued: p.queued(),
        backends: p.backends().iter().map(|b| b.status()).collect(),
    }
}

#[derive(Serialize)]
pub(super) struct AllBackends {
    strategy: &'static str,
    data: Vec<ModelBackends>,
}

pub(super) async fn list_all(State(st): State<Arc<AppState>>) -> Json<AllBackends> {
    Json(AllBackends {
        strategy: st.live.load().routing.strategy.as_str(),
        data: st.upstreams.pools.iter().map(|p| model_view(p)).collect(),
    })
}

fn pool<'a>(st: &'a AppState, model: &str) -> Result<&'a Arc<ModelPool>, ApiError> {
    st.upstreams
        .get(model)
        .ok_or_else(|| ApiError::AdminNotFound(format!("model `{model}`")))
}

pub(super) async fn list(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<ModelBackends>, ApiError> {
    Ok(Json(model_view(pool(&st, &model)?)))
}

/// A backend to add: the admin API's JSON body, and what the portal's form fills in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewBackend {
    pub(crate) url: String,
    #[serde(default = "default_max_in_flight")]
    pub(crate) max_in_flight: usize,
    #[serde(default)]
    pub(crate) max_tokens_in_flight: Option<u64>,
    #[serde(default)]
    pub(crate) adapters: Option<Vec<String>>,
    /// Label and display name; default `host:port`.
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// The backend's API key (write-only: never returned, audited or logged).
    #[serde(default)]
    pub(crate) api_key: Option<crate::config::Secret>,
    /// Environment variable of the gateway holding the key.
    #[serde(default)]
    pub(crate) api_key_env: Option<String>,
    /// CA certificates (PEM file on the gateway's host) for an https:// backend.
    #[serde(default)]
    pub(crate) ca_file: Option<std::path::PathBuf>,
}

pub(crate) fn default_max_in_flight() -> usize {
    32
}

pub(super) async fn add(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<(http::StatusCode, Json<BackendStatus>), ApiError> {
    pool(&st, &model)?;
    let req: NewBackend = parse(&body)?;
    let status = add_backend(&st, super::ADMIN_ACTOR, &model, req).await?;
    Ok((http::StatusCode::CREATED, Json(status)))
}

/// Validates and adds a backend, starts its watcher and audits `backend.add` as `actor`: the
/// one way the admin API and the portal add a backend.
pub(crate) async fn add_backend(
    st: &Arc<AppState>,
    actor: &str,
    model: &str,
    req: NewBackend,
) -> Result<BackendStatus, ApiError> {
    let p = pool(st, model)?.clone();
    crate::config::validate_backend_url(&req.url)
        .map_err(|m| ApiError::AdminBadRequest(format!("url: {m}")))?;
    if req.max_in_flight == 0 {
        return Err(ApiError::AdminBadRequest(
            "max_in_flight: must be at least 1".into(),
        ));
    }
    if req.max_tokens_in_flight == Some(0) {
        return Err(ApiError::AdminBadRequest(
            "max_tokens_in_flight: must be at least 1 (leave it out for no token bound)".into(),
        ));
    }
    for a in req.adapters.iter().flatten() {
        if !p.adapters.contains(a) {
            return Err(ApiError::AdminBadRequest(format!(
                "adapters: `{a}` is not one of model `{model}`'s adapters"
            )));
        }
    }
    let cfg = BackendConfig {
        url: req.url,
        max_in_flight: req.max_in_flight,
        max_tokens_in_flight: req.max_tokens_in_flight,
        adapters: req.adapters,
        name: req.name,
        api_key: req.api_key,
        api_key_env: req.api_key_env,
        ca_file: req.ca_file,
    };
    cfg.validate_access()
        .map_err(|(f, m)| ApiError::AdminBadRequest(format!("{f}: {m}")))?;
    let routing = st.live.load().routing.clone();
    let b = p
        .add(&cfg, Origin::Api, &routing)
        .map_err(ApiError::AdminConflict)?;
    crate::upstream::watch(st, &p, &b, &st.shutdown);
    let status = b.status();
    crate::server::record_audit(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendRef {
    url: String,
}

/// A change to one backend of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// No new requests; those in flight finish.
    Drain,
    /// Takes requests again (also calls off a removal that has not finished).
    Resume,
    /// Drains, then leaves the pool once idle.
    Remove,
}

impl Change {
    /// The audit log's name for it.
    pub(crate) fn action(self) -> &'static str {
        match self {
            Change::Drain => "backend.drain",
            Change::Resume => "backend.resume",
            Change::Remove => "backend.remove",
        }
    }

    fn apply(self, p: &ModelPool, url: &str) -> Option<Arc<crate::upstream::Backend>> {
        match self {
            Change::Drain => p.set_draining(url, true),
            Change::Resume => p.set_draining(url, false),
            Change::Remove => p.remove(url),
        }
    }
}

/// Drains, resumes or removes a backend and audits it as `actor`: the one way the admin API and
/// the portal change a backend.
pub(crate) async fn change_backend(
    st: &AppState,
    actor: &str,
    model: &str,
    url: &str,
    change: Change,
) -> Result<BackendStatus, ApiError> {
    let p = pool(st, model)?;
    let before = p.backend(url).map(|b| b.status());
    let b = change
        .apply(p, url)
        .ok_or_else(|| ApiError::AdminNotFound(format!("backend `{url}` of model `{model}`")))?;
    let after = b.status();
    crate::server::record_audit(
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

/// The admin API's handlers: the model must exist before the body is read.
async fn change(
    st: &AppState,
    model: &str,
    body: &Bytes,
    change: Change,
) -> Result<Json<BackendStatus>, ApiError> {
    pool(st, model)?;
    let req: BackendRef = parse(body)?;
    Ok(Json(
        change_backend(st, super::ADMIN_ACTOR, model, &req.url, change).await?,
    ))
}

/// The part of a status an audit entry needs.
fn state_of(s: &BackendStatus) -> serde_json::Value {
    serde_json::json!({"state": s.state, "draining": s.draining, "removing": s.removing})
}

pub(super) async fn drain(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<BackendStatus>, ApiError> {
    change(&st, &model, &body, Change::Drain).await
}

pub(super) async fn resume(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<BackendStatus>, ApiError> {
    change(&st, &model, &body, Change::Resume).await
}

pub(super) async fn remove(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<BackendStatus>, ApiError> {
    change(&st, &model, &body, Change::Remove).await
}
