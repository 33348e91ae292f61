//! The data plane's HTTP surface: which path goes to which handler of [`crate::proxy`], and the
//! small operational endpoints (`/metrics`, `/healthz`, `/readyz`).

use std::sync::Arc;

use axum::routing::{any, get, post};
use axum::Router;

use crate::config::Config;
use crate::proxy;
use crate::state::AppState;

/// The data plane's routes with their state: `/v1`, vLLM's root paths, `/metrics`, `/healthz`,
/// `/readyz`, and the OpenAI-shaped 404 for everything else. The binary nests the admin API and
/// the portal beside them.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/completions", post(proxy::completions))
        .route("/v1/embeddings", post(proxy::embeddings))
        .route("/v1/models", get(proxy::list_models))
        .route("/v1/models/{*model}", get(proxy::retrieve_model))
        .route("/v1/{*rest}", any(proxy::generic))
        // vLLM serves these at the root as well.
        .route("/tokenize", post(proxy::generic))
        .route("/detokenize", post(proxy::generic))
        .route("/rerank", post(proxy::generic))
        .route("/score", post(proxy::generic))
        .route("/pooling", post(proxy::generic))
        .route("/classify", post(proxy::generic))
        // POST, GET and DELETE; any other method gets its 404 there, with its ledger row.
        .route("/mcp/{server}", any(crate::mcp::handle))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(proxy::not_found)
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
    if let Some(c) = &st.cluster {
        st.metrics.observe_cluster(c);
    }
    if let Some(q) = &st.admission.fleet {
        st.metrics.observe_quota(q);
    }
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

/// The largest body any route accepts: axum's own limit, which only backs up the per-route
/// limits (the /v1 handlers read under `max_body_bytes` to answer with an OpenAI-shaped 413 and
/// a ledger row; /portal and /admin have their limit layers).
pub fn largest_body(c: &Config) -> usize {
    c.max_body_bytes
        .max(c.limits.admin_body_bytes)
        .max(c.limits.portal_body_bytes)
}
