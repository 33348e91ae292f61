//! Admit: a slot in the model's pool under fair share, within the tenant's and key's rate
//! limits and budgets ([`crate::admission::Admission::admit`]); the backend is chosen only when
//! the slot is granted (late binding).

use std::time::{Duration, Instant};

use crate::admission::Ask;
use crate::config::Config;
use crate::error::ApiError;
use crate::identity::{Directory, Principal};
use crate::router::Strategy;
use crate::state::AppState;
use crate::upstream::Route;

use super::plan::Plan;
use super::resolve::Resolved;
use super::settle::Tracker;

/// The prompt's block hashes, for the prefix-aware router; hashing is a second pass over the
/// prompt, so only when that router has a choice to make.
pub(super) fn prompt_blocks(live: &Config, plan: &Plan, r: &Resolved) -> Vec<u64> {
    match plan.endpoint {
        Some(ep)
            if live.routing.strategy == Strategy::PrefixAware
                && r.target.pool.backends().len() > 1 =>
        {
            fairgate_relay::prefix::prompt_blocks(
                ep,
                &plan.body,
                fairgate_relay::prefix::MAX_BLOCKS,
            )
        }
        _ => Vec::new(),
    }
}

/// Phase 3, admit: waits for a slot (or is refused), counts it, and hands the admission to
/// the tracker, which settles it with the real usage. Returns how long the request queued.
#[expect(
    clippy::too_many_arguments,
    reason = "one phase of one request; each is read once"
)]
pub(super) async fn admit(
    st: &AppState,
    t: &mut Tracker,
    live: &Config,
    dir: &Directory,
    tenant: &fairgate_types::Tenant,
    principal: &Principal,
    plan: &Plan,
    r: &Resolved,
    route: &Route<'_>,
) -> Result<Duration, ApiError> {
    let pool = &r.target.pool;
    let model_cfg = live.model(&pool.name);
    let price = model_cfg.map(|m| m.price).unwrap_or_default();
    let unit_tokens = model_cfg.map(|m| m.unit_tokens).unwrap_or_default();
    let units = plan.units_estimate.unwrap_or(0);
    let policy = &tenant.policy;
    let wait = policy
        .max_wait_ms
        .unwrap_or(live.admission.queue_timeout_ms);
    let queued_at = Instant::now();
    let ask = Ask {
        principal,
        tenant,
        group_weight: tenant
            .group
            .as_deref()
            .map_or(tenant.weight, |g| dir.group_weight(g)),
        price,
        priority: r.priority,
        reservation: plan.reservation,
        prompt_estimate: plan.prompt_estimate,
        unit: plan.unit,
        units,
        unit_tokens,
        deadline: tokio::time::Instant::now() + Duration::from_millis(wait),
        on_limit: policy.on_limit.unwrap_or(live.admission.on_limit),
        max_queue: policy
            .max_queue
            .map_or(live.admission.max_queue_per_tenant, |q| q as usize),
    };
    let admitted = st.admission.admit(pool, ask, route).await;
    let waited = queued_at.elapsed();
    t.row.queue_ms = waited.as_millis() as u64;
    let admitted = match admitted {
        Ok(a) => a,
        Err(e) => {
            st.metrics
                .admissions
                .with_label_values(&[&pool.name, &tenant.name, "rejected", e.class()])
                .inc();
            return Err(e);
        }
    };
    st.metrics
        .admissions
        .with_label_values(&[
            &pool.name,
            &tenant.name,
            "admitted",
            // Whether a slot was free at once (or a headroom or engine slot was), or the
            // request queued for one: what the headroom does for light tenants.
            if admitted.lease.permit.queued() {
                "queued"
            } else {
                "at_once"
            },
        ])
        .inc();
    st.metrics
        .queue_wait
        .with_label_values(&[&pool.name, &tenant.name])
        .observe(waited.as_secs_f64());
    t.admitted = Some(admitted);
    Ok(waited)
}
