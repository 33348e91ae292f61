//! Resolve: which pool a requested name leads to (model, adapter, alias, fallbacks), whether
//! the key may use it, and the body and reservation the backend will get.

use std::sync::Arc;

use fairgate_types::Priority;

use super::plan::*;
use super::settle::Tracker;
use crate::config::Config;
use crate::error::ApiError;
use crate::identity::Principal;
use crate::state::AppState;
use crate::upstream::Target;

/// The pool a requested model name leads to: the model itself (or the model an adapter
/// belongs to), an alias's first model with a usable backend, or, when the model has none, its
/// first fallback (the tenant's list, else the model's) that has one. When nothing usable is
/// found the first candidate is returned, and admission answers 503 for it.
pub(super) fn pool_for(
    st: &AppState,
    live: &Config,
    policy: &fairgate_types::TenantPolicy,
    requested: &str,
) -> Option<Target> {
    let chain: Vec<&str> = match st.upstreams.target(requested) {
        Some(t) if t.adapter.is_some() => return Some(t),
        Some(_) => {
            let fallbacks = policy
                .fallbacks
                .get(requested)
                .or_else(|| live.model(requested).map(|m| &m.fallbacks));
            std::iter::once(requested)
                .chain(fallbacks.into_iter().flatten().map(String::as_str))
                .collect()
        }
        None => live
            .alias(requested)?
            .models
            .iter()
            .map(String::as_str)
            .collect(),
    };
    let mut first = None;
    for name in chain {
        let Some(t) = st.upstreams.target(name) else {
            continue;
        };
        if t.pool.has_usable(t.adapter.as_deref()) {
            return Some(t);
        }
        first.get_or_insert(t);
    }
    first
}

/// What the resolve phase settled for the later phases.
pub(super) struct Resolved {
    /// The pool (and adapter) the request goes to.
    pub(super) target: Target,
    /// The name the backend serves: the adapter's own, or the model an alias or fallback chose.
    pub(super) served: String,
    pub(super) priority: Priority,
}

/// Phase 1, resolve: the pool the requested name leads to, the key's scope, the body rewritten
/// for the serving model, the reservation clamped to the model's context, the priority class.
pub(super) fn resolve(
    st: &Arc<AppState>,
    t: &mut Tracker,
    live: &Config,
    tenant: &fairgate_types::Tenant,
    principal: &Principal,
    parts: &http::request::Parts,
    plan: &mut Plan,
) -> Result<Resolved, ApiError> {
    let Some(target) = pool_for(st, live, &tenant.policy, &plan.model) else {
        return Err(ApiError::ModelNotFound(plan.model.clone()));
    };
    if !principal.may_use(&plan.model) {
        return Err(ApiError::ModelNotAllowed(plan.model.clone()));
    }
    let pool = &target.pool;
    if plan.model_not_in_body && target.adapter.is_some() {
        // The backend would run its base model, not the adapter the key was checked for.
        return Err(ApiError::BadRequest(fairgate_relay::RequestError {
            message: format!(
                "`{}` is an adapter, and this request's body cannot carry the model name: send `model` in a JSON body or a form field",
                plan.model
            ),
            param: Some("model".into()),
            code: "ambiguous_model",
        }));
    }
    // The backend cannot produce more than fits in the model's context: reserve no more.
    if let Some(parsed) = &plan.parsed {
        if let Some(ctx) = st.context_length(&pool.name) {
            plan.reservation = fairgate_relay::reservation_tokens_within(
                parsed,
                st.config.default_max_tokens,
                Some(ctx),
            );
            t.row.reserved_tokens = plan.reservation;
        }
    }
    let served = target.adapter.clone().unwrap_or_else(|| pool.name.clone());
    if plan.model_not_in_body {
        // Nothing to rewrite: the backend runs the model of the pool it is sent to.
        t.row.model = Some(served.clone());
    } else if served != plan.model {
        plan.body =
            fairgate_relay::with_model(&plan.body, &served).map_err(ApiError::BadRequest)?;
        t.row.model = Some(served.clone());
    }
    let priority = match parts.headers.get(PRIORITY_HEADER) {
        None => principal.policy().priority.unwrap_or_default(),
        Some(v) => match v.to_str().ok().and_then(Priority::parse) {
            Some(p) => p,
            None => {
                return Err(ApiError::InvalidHeader {
                    message: format!("header `{PRIORITY_HEADER}` must be `interactive` or `batch`"),
                    header: PRIORITY_HEADER,
                })
            }
        },
    };
    t.row.priority = priority;
    Ok(Resolved {
        target,
        served,
        priority,
    })
}
