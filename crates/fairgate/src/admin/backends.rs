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

use super::{audit, json_of, parse};
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewBackend {
    url: String,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: usize,
    #[serde(default)]
    max_tokens_in_flight: Option<u64>,
    #[serde(default)]
    adapters: Option<Vec<String>>,
}

fn default_max_in_flight() -> usize {
    32
}

pub(super) async fn add(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<(http::StatusCode, Json<BackendStatus>), ApiError> {
    let p = pool(&st, &model)?.clone();
    let req: NewBackend = parse(&body)?;
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
    };
    let routing = st.live.load().routing.clone();
    let b = p
        .add(&cfg, Origin::Api, &routing)
        .map_err(ApiError::AdminConflict)?;
    crate::upstream::watch(&st, &p, &b, &st.shutdown);
    let status = b.status();
    audit(
        &st,
        "backend.add",
        format!("model:{model} backend:{}", b.url),
        None,
        json_of(&serde_json::json!({"url": b.url, "max_in_flight": cfg.max_in_flight})),
    )
    .await;
    Ok((http::StatusCode::CREATED, Json(status)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendRef {
    url: String,
}

async fn change(
    st: &AppState,
    model: &str,
    body: &Bytes,
    action: &'static str,
    apply: impl FnOnce(&ModelPool, &str) -> Option<Arc<crate::upstream::Backend>>,
) -> Result<Json<BackendStatus>, ApiError> {
    let p = pool(st, model)?;
    let req: BackendRef = parse(body)?;
    let before = p.backend(&req.url).map(|b| b.status());
    let b = apply(p, &req.url).ok_or_else(|| {
        ApiError::AdminNotFound(format!("backend `{}` of model `{model}`", req.url))
    })?;
    let after = b.status();
    audit(
        st,
        action,
        format!("model:{model} backend:{}", b.url),
        before.as_ref().and_then(|s| json_of(&state_of(s))),
        json_of(&state_of(&after)),
    )
    .await;
    Ok(Json(after))
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
    change(&st, &model, &body, "backend.drain", |p, u| {
        p.set_draining(u, true)
    })
    .await
}

pub(super) async fn resume(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<BackendStatus>, ApiError> {
    change(&st, &model, &body, "backend.resume", |p, u| {
        p.set_draining(u, false)
    })
    .await
}

pub(super) async fn remove(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<BackendStatus>, ApiError> {
    change(&st, &model, &body, "backend.remove", |p, u| p.remove(u)).await
}
