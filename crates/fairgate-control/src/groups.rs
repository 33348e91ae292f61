//! Groups: set (create or re-weigh) and delete. Tenants name groups freely; a group without a
//! row weighs 1.

use fairgate_gateway::state::{directory_changed, AppState};
use fairgate_types::{Group, GroupName};

use crate::audit::{json_of, record_audit};
use crate::validate::valid_weight;
use crate::ControlError;

/// Creates the group or sets its weight.
pub async fn set_group(
    st: &AppState,
    actor: &str,
    name: &str,
    weight: u32,
) -> Result<Group, ControlError> {
    GroupName::parse(name)?;
    let g = Group {
        name: name.to_owned(),
        weight: valid_weight(weight)?,
    };
    let before = st.store.get_group(&g.name).await?.and_then(|g| json_of(&g));
    let created = st.store.upsert_group(&g).await?;
    directory_changed(st).await?;
    record_audit(
        st,
        actor,
        "group.set",
        format!("group:{}", g.name),
        before,
        json_of(&g),
    )
    .await;
    tracing::info!(group = %g.name, weight = g.weight, created, actor, "group set");
    Ok(g)
}

/// Deletes a group; its tenants then share weight 1.
pub async fn delete_group(st: &AppState, actor: &str, name: &str) -> Result<(), ControlError> {
    let before = st.store.get_group(name).await?.and_then(|g| json_of(&g));
    if !st.store.delete_group(name).await? {
        return Err(ControlError::NotFound(format!("group `{name}`")));
    }
    directory_changed(st).await?;
    record_audit(
        st,
        actor,
        "group.delete",
        format!("group:{name}"),
        before,
        None,
    )
    .await;
    tracing::info!(group = %name, actor, "group deleted; its tenants now share weight 1");
    Ok(())
}
