//! `GET /v1/models`: the models (and adapters, and aliases) a key may use.

use std::sync::Arc;

use axum::extract::{Request, State};
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
