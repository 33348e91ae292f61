//! The live fair-share view (operators): every tenant's weight with a form to change it, and
//! per model the share of service each tenant got in the last minute, queued and in flight;
//! `/portal/api/scheduler` is the same as JSON for the page's script.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use super::{alert, shown, tenant_url, Rejected};
use crate::html::{esc, form, page, table};
use crate::reports::urlencode;
use crate::session::{Operator, Signed};
use crate::{PortalState, Refusal};

/// `GET /portal/operator`.
pub(crate) async fn operator_page(
    State(st): State<Arc<PortalState>>,
    s: Operator,
) -> Result<Html<String>, Refusal> {
    Ok(Html(fair_share_html(&st, &s, None).await?))
}

pub(super) async fn fair_share_html(
    st: &PortalState,
    s: &Signed,
    rej: Option<&Rejected>,
) -> Result<String, Refusal> {
    let tenants = st.store.list_tenants().await?;
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            // Only the refused tenant's field shows what was typed.
            let typed = rej.filter(|r| r.subject == t.name);
            let field = format!(
                "<label class=\"inline\">Weight <input name=\"weight\" type=\"number\" min=\"1\" max=\"1000000\" value=\"{}\" aria-label=\"weight of {}\"></label>",
                shown(typed, "weight", "weight", t.weight),
                esc(&t.name),
            );
            vec![
                format!("<a href=\"{}\">{}</a>", esc(&tenant_url(&t.name)), esc(&t.name)),
                esc(t.group.as_deref().unwrap_or("")),
                format!("<span data-weight=\"{}\">{}</span>", esc(&t.name), t.weight),
                form(
                    &format!("/portal/operator/tenants/{}/weight", urlencode(&t.name)),
                    s.csrf(),
                    &field,
                    "Set",
                    false,
                ),
            ]
        })
        .collect();
    let mut body = alert(rej);
    body.push_str(
        "<h2>Tenants</h2><p class=\"muted\">Limits, budgets, groups and new tenants: \
         <a href=\"/portal/operator/tenants\">tenants and groups</a>.</p>",
    );
    body.push_str(&table(&["Tenant", "Group", "Weight", ""], &rows));
    body.push_str(
        "<h2>Fair share, live</h2><p class=\"muted\">Per model and tenant: weight, share of service in the last minute, queued and in-flight requests, time to first token since start. Updates every 2 s.</p>\
         <div id=\"live\">",
    );
    body.push_str(&live_table(st));
    body.push_str(
        // `/portal/static/app.js` keeps `#live` fresh.
        "</div>",
    );
    if st.cluster.is_some() {
        body.push_str(
            "<h2>Replicas</h2><p class=\"muted\">Every live replica's part of each model: its \
             lease of the backends' slots, what it has in flight and queued, per tenant \
             (queued / in flight). As of this page's load.</p>",
        );
        body.push_str(&fleet_tables(st).await);
    }
    Ok(page("Operator: fair share", Some(&s.viewer()), &body))
}

/// Per model, one row per live replica (`[cluster]` only).
async fn fleet_tables(st: &PortalState) -> String {
    let Some(c) = &st.cluster else {
        return String::new();
    };
    let mut out = String::new();
    for pool in &st.upstreams.pools {
        let fleet = fairgate_gateway::fleet::fleet_state(&pool.name, c)
            .await
            .unwrap_or_default();
        out.push_str(&format!("<h3>{}</h3>", esc(&pool.name)));
        let rows: Vec<Vec<String>> = fleet
            .iter()
            .map(|r| {
                let tenants: Vec<String> = r
                    .tenants
                    .iter()
                    .map(|(t, (q, f))| format!("{} {q}/{f}", esc(t)))
                    .collect();
                vec![
                    esc(&r.member),
                    r.max_in_flight.to_string(),
                    r.in_flight.to_string(),
                    r.queued.to_string(),
                    tenants.join(", "),
                ]
            })
            .collect();
        out.push_str(&table(
            &["Replica", "Lease", "In flight", "Queued", "Tenants"],
            &rows,
        ));
    }
    out
}

/// The live view as server-rendered HTML (the script replaces it with fresh data).
fn live_table(st: &PortalState) -> String {
    let mut out = String::new();
    for pool in &st.upstreams.pools {
        let state = pool.fair.state();
        out.push_str(&format!(
            "<h3>{} <span class=\"muted\">{}/{} in flight, {} queued, headroom {}</span></h3>",
            esc(&state.name),
            state.in_flight,
            state.max_in_flight,
            state.queued,
            state.headroom
        ));
        let mut tenants = state.tenants;
        tenants.sort_by(|a, b| a.view.name.cmp(&b.view.name));
        let rows: Vec<Vec<String>> = tenants
            .iter()
            .map(|t| {
                vec![
                    esc(&t.view.name),
                    t.view.weight.to_string(),
                    format!("{:.1}%", 100.0 * t.share_last_minute),
                    t.view.queued.to_string(),
                    t.view.in_flight.to_string(),
                    ttft_text(st.metrics.tenant_ttft_ms(&state.name, &t.view.name)),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "Tenant",
                "Weight",
                "Share (1 min)",
                "Queued",
                "In flight",
                "TTFT p50 / p99",
            ],
            &rows,
        ));
    }
    out
}

/// A tenant's time to first token since start, as the live view shows it.
fn ttft_text(ttft: Option<(f64, f64)>) -> String {
    match ttft {
        Some((p50, p99)) => format!("{p50:.0} / {p99:.0} ms"),
        None => "—".to_owned(),
    }
}

/// `GET /portal/api/scheduler`: the live view's numbers, polled by the page's script.
pub(crate) async fn scheduler_json(
    State(st): State<Arc<PortalState>>,
    _: Operator,
) -> Result<Response, Refusal> {
    let mut models: Vec<serde_json::Value> = st
        .upstreams
        .pools
        .iter()
        .map(|p| {
            let state = p.fair.state();
            let mut tenants = state.tenants;
            tenants.sort_by(|a, b| a.view.name.cmp(&b.view.name));
            serde_json::json!({
                "model": state.name,
                "mode": match state.mode { fairgate_admission::fair::Mode::Fair => "fair", fairgate_admission::fair::Mode::Fifo => "fifo" },
                "in_flight": state.in_flight,
                "max_in_flight": state.max_in_flight,
                "queued": state.queued,
                "headroom": state.headroom,
                "tenants": tenants.iter().map(|t| {
                    let ttft = st.metrics.tenant_ttft_ms(&state.name, &t.view.name);
                    serde_json::json!({
                        "tenant": &*t.view.name,
                        "weight": t.view.weight,
                        "share": t.share_last_minute,
                        "queued": t.view.queued,
                        "in_flight": t.view.in_flight,
                        "ttft_p50_ms": ttft.map(|x| x.0),
                        "ttft_p99_ms": ttft.map(|x| x.1),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    // With `[cluster]`, each model also carries every live replica's part of it.
    if let Some(c) = &st.cluster {
        for (m, pool) in models.iter_mut().zip(&st.upstreams.pools) {
            let fleet = fairgate_gateway::fleet::fleet_state(&pool.name, c)
                .await
                .unwrap_or_default();
            m["fleet"] = serde_json::to_value(fleet).unwrap_or_default();
        }
    }
    Ok(Json(serde_json::json!({ "models": models })).into_response())
}
