//! The audit log: who changed what, before and after. Every operation of this crate writes one
//! entry after its change has happened.

use fairgate_gateway::state::AppState;
use serde::Serialize;

/// Writes one entry of the audit log; a failure is logged, never fails the change itself
/// (which has already happened).
pub async fn record_audit(
    st: &AppState,
    actor: &str,
    action: &str,
    target: String,
    before: Option<String>,
    after: Option<String>,
) {
    let e = fairgate_types::AuditEntry {
        id: uuid::Uuid::now_v7().to_string(),
        ts: fairgate_types::now_millis(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target,
        before,
        after,
    };
    if let Err(err) = st.store.insert_audit(&e).await {
        tracing::error!(error = %err, action, "could not write the audit log");
    }
}

/// JSON of a record for the audit log. Secrets are never in it: key and password hashes are
/// not serialized.
pub fn json_of<T: Serialize>(v: &T) -> Option<String> {
    serde_json::to_string(v).ok()
}
