//! Cache: answering a deterministic request from the exact-match cache, before admission, so
//! a hit touches neither fair share nor a backend.

use axum::body::Body;
use axum::response::Response;
use fairgate_types::Outcome;
use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::plan::*;
use super::resolve::Resolved;
use super::settle::Tracker;
use crate::cache::{CacheKey, CachedResponse};
use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;

/// Whether this request uses the response cache: the header `x-fairgate-cache: on|off`
/// overrides the model's setting.
pub(super) fn cache_wanted(headers: &HeaderMap, model_default: bool) -> Result<bool, ApiError> {
    match headers.get(&CACHE_HEADER) {
        None => Ok(model_default),
        Some(v) => match v.to_str().unwrap_or("") {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(ApiError::InvalidHeader {
                message: "header `x-fairgate-cache` must be `on` or `off`".into(),
                header: "x-fairgate-cache",
            }),
        },
    }
}

/// Answers from the cache: no backend, no fair-share charge, no tokens billed.
pub(super) fn answer(st: &AppState, mut t: Tracker, hit: CachedResponse) -> Response {
    t.row.cache_hit = true;
    t.row.status = hit.status;
    t.row.outcome = Outcome::Ok;
    t.mark_first_token();
    let model = t.row.model.clone().unwrap_or_default();
    let tenant = t.row.tenant.clone().unwrap_or_default();
    st.metrics
        .admissions
        .with_label_values(&[&model, &tenant, "cache_hit", ""])
        .inc();
    let mut out = Response::new(Body::from(hit.body));
    *out.status_mut() = StatusCode::from_u16(hit.status).unwrap_or(StatusCode::OK);
    if let Some(ct) = hit.content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    out.headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static("hit"));
    t.decorate(out.headers_mut());
    t.record();
    out
}

/// What the cache phase found.
pub(super) enum Lookup {
    Hit(CachedResponse),
    /// No hit; the key to store the answer under when the request is cacheable.
    Miss(Option<CacheKey>),
}

/// Phase 2, cache: whether the request opts in (the model's setting, the header) and is
/// deterministic, and whether its answer is stored.
pub(super) fn lookup(
    st: &AppState,
    live: &Config,
    parts: &http::request::Parts,
    plan: &Plan,
    r: &Resolved,
) -> Result<Lookup, ApiError> {
    let model_default = live.model(&r.target.pool.name).is_some_and(|m| m.cache);
    let key = match cache_wanted(&parts.headers, model_default)? {
        false => None,
        true if !plan.cache_candidate => None,
        true => match crate::cache::uncacheable_reason(&plan.body) {
            Some(_) => None,
            None => Some(crate::cache::cache_key(
                &r.served,
                parts.uri.path(),
                &plan.body,
            )),
        },
    };
    if let Some(k) = &key {
        if let Some(hit) = st.admission.cache.get(k, std::time::Instant::now()) {
            return Ok(Lookup::Hit(hit));
        }
    }
    Ok(Lookup::Miss(key))
}
