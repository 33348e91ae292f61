//! The signed-in person's own pages: usage, request history and the playground.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use fairgate_types::Role;

use crate::html::{self, esc, page, table};
use crate::session::{Signed, SignedIn};
use crate::{fmt_time, reports, PortalState, Refusal};

/// The signed-in person's ledger rows (their keys' requests), newest first.
async fn my_rows(
    st: &PortalState,
    s: &Signed,
    limit: u32,
) -> Result<Vec<fairgate_types::LedgerRow>, Refusal> {
    let Some(tenant) = &s.user().tenant else {
        return Ok(Vec::new());
    };
    // Make just-finished requests visible.
    let _ = st.ledger.flush().await;
    Ok(st
        .store
        .requests(Some(tenant), limit)
        .await?
        .into_iter()
        .filter(|r| r.user.as_deref() == Some(s.user().email.as_str()))
        .collect())
}

/// `GET /portal/usage`: the person's tokens per day and per model.
pub(crate) async fn usage_page(
    State(st): State<Arc<PortalState>>,
    s: SignedIn,
) -> Result<Html<String>, Refusal> {
    let rows = my_rows(&st, &s, 10_000).await?;
    let mut by_day: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_model: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for r in &rows {
        let day = chrono::DateTime::from_timestamp_millis(r.ts)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let tokens = r.prompt_tokens + r.completion_tokens;
        *by_day.entry(day).or_default() += tokens;
        let m = by_model
            .entry(r.model.clone().unwrap_or_default())
            .or_default();
        m.0 += 1;
        m.1 += r.prompt_tokens;
        m.2 += r.completion_tokens;
    }
    let days: Vec<(String, u64)> = by_day.into_iter().rev().take(14).rev().collect();
    let models: Vec<(String, u64)> = by_model
        .iter()
        .map(|(m, v)| (m.clone(), v.1 + v.2))
        .collect();
    let mut body = String::new();
    body.push_str(&html::bar_chart(
        "Tokens per day (UTC, last 14 days with use)",
        &days,
    ));
    body.push_str(&html::bar_chart("Tokens per model", &models));
    let table_rows: Vec<Vec<String>> = by_model
        .iter()
        .map(|(m, v)| vec![esc(m), v.0.to_string(), v.1.to_string(), v.2.to_string()])
        .collect();
    body.push_str(&table(
        &["Model", "Requests", "Prompt tokens", "Completion tokens"],
        &table_rows,
    ));
    body.push_str(&crate::telemetry::my_section(&st, &s));
    if s.user().role >= Role::TenantAdmin {
        body.push_str(&reports::export_form(None));
    }
    if s.user().role == Role::Operator {
        body.push_str(&reports::su_export_form());
    }
    Ok(Html(page("Your usage", Some(&s.viewer()), &body)))
}

/// `GET /portal/history`: the person's last 100 requests.
pub(crate) async fn history_page(
    State(st): State<Arc<PortalState>>,
    s: SignedIn,
) -> Result<Html<String>, Refusal> {
    let rows = my_rows(&st, &s, 2_000).await?;
    let out: Vec<Vec<String>> = rows
        .iter()
        .take(100)
        .map(|r| {
            vec![
                fmt_time(r.ts),
                esc(r.model.as_deref().unwrap_or("")),
                (r.prompt_tokens + r.completion_tokens).to_string(),
                format!("{} {}", r.status, r.outcome.as_str()),
                r.queue_ms.to_string(),
                r.ttft_ms.map(|t| t.to_string()).unwrap_or_default(),
                r.duration_ms.to_string(),
            ]
        })
        .collect();
    let body = table(
        &[
            "Time",
            "Model",
            "Tokens",
            "Status",
            "Queue ms",
            "TTFT ms",
            "Duration ms",
        ],
        &out,
    );
    Ok(Html(page("Your requests", Some(&s.viewer()), &body)))
}

/// A chat box that streams a reply through the OpenAI API with a key the user pastes: the
/// portal never has the secret (it is shown once at creation), and going through `/v1` means
/// the call is admitted, limited and recorded like any other.
pub(crate) async fn playground_page(
    State(st): State<Arc<PortalState>>,
    s: SignedIn,
) -> Result<Html<String>, Refusal> {
    let options: String = st
        .upstreams
        .pools
        .iter()
        .map(|p| format!("<option>{}</option>", esc(&p.name)))
        .collect();
    let body = format!(
        "<form id=\"play\"><div class=\"grid\">\
         <label>API key <input id=\"key\" type=\"password\" autocomplete=\"off\" required placeholder=\"fgk_...\"></label>\
         <label>Model <select id=\"model\">{options}</select></label></div>\
         <label>Message <textarea id=\"prompt\" class=\"full\" rows=\"3\" required>Hello!</textarea></label>\
         <button class=\"primary\" type=\"submit\">Send</button></form>\
         <h2>Reply</h2><pre id=\"reply\" class=\"wrap\" aria-live=\"polite\"></pre><p id=\"meta\" class=\"muted\"></p>"
    );
    Ok(Html(page("Playground", Some(&s.viewer()), &body)))
}
