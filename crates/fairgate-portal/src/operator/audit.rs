//! The audit log (operators): who changed what, with the object before and after.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;

use crate::html::{esc, page, table};
use crate::session::Operator;
use crate::{fmt_time, PortalState, Refusal};

/// `GET /portal/audit`: the last 200 changes, newest first.
pub(crate) async fn audit_page(
    State(st): State<Arc<PortalState>>,
    s: Operator,
) -> Result<Html<String>, Refusal> {
    let entries = st.store.list_audit(200, None).await?;
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                fmt_time(e.ts),
                esc(&e.actor),
                esc(&e.action),
                esc(&e.target),
                format!("<code>{}</code>", esc(e.before.as_deref().unwrap_or(""))),
                format!("<code>{}</code>", esc(e.after.as_deref().unwrap_or(""))),
            ]
        })
        .collect();
    let body = table(&["When", "Who", "What", "Object", "Before", "After"], &rows);
    Ok(Html(page("Audit log", Some(&s.viewer()), &body)))
}
