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

use fairgate_control::backends::{add_backend, change_backend, pool, Change, NewBackend};
use fairgate_gateway::error::ApiError;
use fairgate_gateway::state::AppState;
use fairgate_gateway::upstream::{BackendStatus, ModelPool};

use super::parse;

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

pub(super) async fn list(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<ModelBackends>, ApiError> {
    Ok(Json(model_view(pool(&st, &model).map_err(ApiError::from)?)))
}

pub(super) async fn add(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<(http::StatusCode, Json<BackendStatus>), ApiError> {
    pool(&st, &model).map_err(ApiError::from)?;
    let req: NewBackend = parse(&body)?;
    let status = add_backend(&st, super::ADMIN_ACTOR, &model, req).await?;
    Ok((http::StatusCode::CREATED, Json(status)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendRef {
    url: String,
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
