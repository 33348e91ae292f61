//! `GET /v1/models`: the models (and adapters, and aliases) a key may use; `GET
//! /v1/models/{model}`: one of them (the SDKs' `models.retrieve`).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use fairgate_types::Outcome;
use http::header;

use super::edge::authenticate;
use super::settle::Tracker;
use crate::extract::ClientAddr;
use crate::state::AppState;

/// `GET /v1/models`: the models this key may use.
pub async fn list_models(
    State(st): State<Arc<AppState>>,
    addr: ClientAddr,
    req: Request,
) -> Response {
    let mut t = Tracker::start(&st, req.uri().path());
    let principal = match authenticate(&st, &mut t, req.headers(), addr) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    #[derive(serde::Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: i64,
        owned_by: &'static str,
    }
    #[derive(serde::Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Model<'a>>,
    }
    let live = st.live.load();
    let data = st
        .upstreams
        .names()
        .chain(live.aliases.iter().map(|a| a.name.as_str()))
        .filter(|name| principal.may_use(name))
        .map(|id| Model {
            id,
            object: "model",
            created: st.started_at,
            owned_by: "fairgate",
        })
        .collect();
    let body = serde_json::to_vec(&List {
        object: "list",
        data,
    })
    .unwrap_or_default();
    t.row.status = 200;
    t.row.outcome = Outcome::Ok;
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    t.decorate(resp.headers_mut());
    t.record();
    resp
}

/// `GET /v1/models/{model}`: the model as `/v1/models` lists it, or a 404 `model_not_found`
/// when it does not exist or the key may not use it (the same answer, so a key cannot probe
/// for models it is not allowed).
pub async fn retrieve_model(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    addr: ClientAddr,
    req: Request,
) -> Response {
    let mut t = Tracker::start(&st, req.uri().path());
    let principal = match authenticate(&st, &mut t, req.headers(), addr) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let live = st.live.load();
    let exists = st.upstreams.names().any(|n| n == id) || live.aliases.iter().any(|a| a.name == id);
    if !exists || !principal.may_use(&id) {
        return t.fail(crate::error::ApiError::ModelNotFound(id));
    }
    let body = serde_json::json!({
        "id": id,
        "object": "model",
        "created": st.started_at,
        "owned_by": "fairgate",
    });
    t.row.model = Some(id);
    t.row.status = 200;
    t.row.outcome = Outcome::Ok;
    let mut resp = (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    t.decorate(resp.headers_mut());
    t.record();
    resp
}
