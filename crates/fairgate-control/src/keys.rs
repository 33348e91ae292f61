//! API keys: rotating a key's secret.

use fairgate_gateway::state::{refresh_directory, AppState};

/// Gives a key a new secret: stored, live at once (the old one stops working before this
/// returns), audited under `actor` without any secret (the record never serializes its hash).
/// Admin API and portal both rotate through here; they differ only in checks and answers.
pub async fn rotate_key_secret(
    st: &AppState,
    actor: &str,
    k: &mut fairgate_types::KeyRecord,
) -> Result<fairgate_gateway::identity::NewKey, fairgate_store::StoreError> {
    let minted = fairgate_gateway::identity::mint_secret_for(k.id.clone());
    k.secret_hash = minted.secret_hash.clone();
    st.store.update_key(k).await?;
    refresh_directory(st).await?;
    crate::audit::record_audit(
        st,
        actor,
        "key.rotate",
        format!("key:{}", k.id),
        None,
        serde_json::to_string(&*k).ok(),
    )
    .await;
    tracing::info!(key_id = %k.id, actor, "key rotated");
    Ok(minted)
}
