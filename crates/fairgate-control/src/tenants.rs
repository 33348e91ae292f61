//! Tenants: create, change (weight, group, policy: its limits and budgets), delete. Each change
//! is live (the directory and every pool's weights) before the function returns, and audited.

use fairgate_gateway::state::{directory_changed, AppState};
use fairgate_types::{now_millis, GroupName, Tenant, TenantName, TenantPolicy};

use crate::audit::{json_of, record_audit};
use crate::validate::{check_tenant_policy, valid_weight};
use crate::ControlError;

/// A tenant to create.
#[derive(Clone, Debug)]
pub struct NewTenant {
    pub name: String,
    pub weight: u32,
    pub group: Option<String>,
    pub policy: TenantPolicy,
}

/// A change to a tenant: `None` leaves a field as it is; `group: Some(None)` clears the group.
#[derive(Clone, Debug, Default)]
pub struct TenantChange {
    pub weight: Option<u32>,
    pub group: Option<Option<String>>,
    pub policy: Option<TenantPolicy>,
}

fn not_found(name: &str) -> ControlError {
    ControlError::NotFound(format!("tenant `{name}`"))
}

pub async fn create_tenant(
    st: &AppState,
    actor: &str,
    req: NewTenant,
) -> Result<Tenant, ControlError> {
    TenantName::parse(&req.name)?;
    if let Some(g) = &req.group {
        GroupName::parse(g)?;
    }
    check_tenant_policy(&req.policy)?;
    let tenant = Tenant {
        name: req.name,
        weight: valid_weight(req.weight)?,
        group: req.group,
        created_at: now_millis(),
        policy: req.policy,
    };
    st.store.create_tenant(&tenant).await?;
    directory_changed(st).await?;
    record_audit(
        st,
        actor,
        "tenant.create",
        format!("tenant:{}", tenant.name),
        None,
        json_of(&tenant),
    )
    .await;
    tracing::info!(tenant = %tenant.name, weight = tenant.weight, actor, "tenant created");
    Ok(tenant)
}

pub async fn update_tenant(
    st: &AppState,
    actor: &str,
    name: &str,
    change: TenantChange,
) -> Result<Tenant, ControlError> {
    let mut t = st
        .store
        .get_tenant(name)
        .await?
        .ok_or_else(|| not_found(name))?;
    let old = t.clone();
    let before = (t.weight, t.group.clone());
    if let Some(w) = change.weight {
        t.weight = valid_weight(w)?;
    }
    if let Some(g) = change.group {
        if let Some(g) = &g {
            GroupName::parse(g)?;
        }
        t.group = g;
    }
    let policy_changed = change.policy.is_some();
    if let Some(p) = change.policy {
        check_tenant_policy(&p)?;
        t.policy = p;
    }
    if !st.store.update_tenant(&t).await? {
        return Err(not_found(name));
    }
    directory_changed(st).await?;
    // A change of the guardrail modes alone is the portal's guardrails form's operation too:
    // one entry of the same shape, whichever surface made it.
    if !crate::guardrails::audit_tenant_if_only_modes(st, actor, &old, &t).await {
        record_audit(
            st,
            actor,
            "tenant.update",
            format!("tenant:{name}"),
            json_of(&old),
            json_of(&t),
        )
        .await;
    }
    tracing::info!(tenant = %name, ?before, after = ?(t.weight, &t.group), policy_changed, actor, "tenant updated");
    Ok(t)
}

/// Deletes a tenant; its keys stop working at once.
pub async fn delete_tenant(st: &AppState, actor: &str, name: &str) -> Result<(), ControlError> {
    let before = st.store.get_tenant(name).await?.and_then(|t| json_of(&t));
    if !st.store.delete_tenant(name).await? {
        return Err(not_found(name));
    }
    directory_changed(st).await?;
    record_audit(
        st,
        actor,
        "tenant.delete",
        format!("tenant:{name}"),
        before,
        None,
    )
    .await;
    tracing::info!(tenant = %name, actor, "tenant deleted; its keys are revoked");
    Ok(())
}
