//! API keys: create, change, revoke, rotate. The secret is minted here and returned once; only
//! its hash is stored, and audit entries never carry it (the record does not serialize it).

use fairgate_gateway::identity::{mint_key, mint_secret_for, NewKey as Minted};
use fairgate_gateway::state::{directory_changed, AppState};
use fairgate_types::{now_millis, KeyPolicy, KeyRecord, UnixMillis};

use crate::audit::{json_of, record_audit};
use crate::validate::{check_key_policy, check_models, valid_email, valid_name};
use crate::ControlError;

/// A key to create.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    pub tenant: String,
    pub name: String,
    pub user: Option<String>,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<UnixMillis>,
    pub policy: KeyPolicy,
}

/// A change to a key: `None` leaves a field as it is; `Some(None)` clears an optional one.
#[derive(Clone, Debug, Default)]
pub struct KeyChange {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub models: Option<Option<Vec<String>>>,
    pub expires_at: Option<Option<UnixMillis>>,
    pub policy: Option<KeyPolicy>,
}

pub use crate::lookup::load_key;

/// Creates a key; the minted secret is in the returned [`Minted`], shown once.
pub async fn create_key(
    st: &AppState,
    actor: &str,
    req: NewKey,
) -> Result<(KeyRecord, Minted), ControlError> {
    if req.name.is_empty() || req.name.len() > 128 {
        return Err(ControlError::Invalid(
            "key name must be 1-128 characters".into(),
        ));
    }
    if let Some(u) = &req.user {
        // A label by the name rule, or the email of the person it belongs to (the portal's).
        if valid_email(u).is_err() {
            valid_name("user", u)?;
        }
    }
    check_models(st, &req.models)?;
    check_key_policy(&req.policy)?;
    if st.store.get_tenant(&req.tenant).await?.is_none() {
        return Err(ControlError::NotFound(format!("tenant `{}`", req.tenant)));
    }
    let minted = mint_key();
    let rec = KeyRecord {
        id: minted.id.clone(),
        tenant: req.tenant,
        user: req.user,
        name: req.name,
        models: req.models,
        secret_hash: minted.secret_hash.clone(),
        expires_at: req.expires_at,
        enabled: true,
        created_at: now_millis(),
        revoked_at: None,
        policy: req.policy,
    };
    st.store.insert_key(&rec).await?;
    directory_changed(st).await?;
    record_audit(
        st,
        actor,
        "key.create",
        format!("key:{}", rec.id),
        None,
        json_of(&rec),
    )
    .await;
    tracing::info!(key_id = %rec.id, tenant = %rec.tenant, actor, "key created");
    Ok((rec, minted))
}

pub async fn update_key(
    st: &AppState,
    actor: &str,
    id: &str,
    change: KeyChange,
) -> Result<KeyRecord, ControlError> {
    let mut k = load_key(st, id).await?;
    let old = k.clone();
    if let Some(n) = change.name {
        k.name = n;
    }
    if let Some(e) = change.enabled {
        if e && k.revoked_at.is_some() {
            return Err(ControlError::Invalid(
                "a revoked key cannot be enabled again; create a new key".into(),
            ));
        }
        k.enabled = e;
    }
    if let Some(m) = change.models {
        check_models(st, &m)?;
        k.models = m;
    }
    if let Some(e) = change.expires_at {
        k.expires_at = e;
    }
    if let Some(p) = change.policy {
        check_key_policy(&p)?;
        k.policy = p;
    }
    st.store.update_key(&k).await?;
    directory_changed(st).await?;
    // A change of the guardrail modes alone is audited as the portal's key form does it.
    if !crate::guardrails::audit_key_if_only_modes(st, actor, &old, &k).await {
        record_audit(
            st,
            actor,
            "key.update",
            format!("key:{}", k.id),
            json_of(&old),
            json_of(&k),
        )
        .await;
    }
    Ok(k)
}

/// Revokes a key for good (idempotent: a second revoke keeps the first time).
pub async fn revoke_key(st: &AppState, actor: &str, id: &str) -> Result<KeyRecord, ControlError> {
    let mut k = load_key(st, id).await?;
    let before = json_of(&k);
    if k.revoked_at.is_none() {
        k.revoked_at = Some(now_millis());
    }
    k.enabled = false;
    st.store.update_key(&k).await?;
    directory_changed(st).await?;
    record_audit(
        st,
        actor,
        "key.revoke",
        format!("key:{}", k.id),
        before,
        json_of(&k),
    )
    .await;
    tracing::info!(key_id = %k.id, actor, "key revoked");
    Ok(k)
}

/// Gives a key a new secret: stored, live at once (the old one stops working before this
/// returns), audited without any secret. A revoked key cannot be rotated.
pub async fn rotate_key(
    st: &AppState,
    actor: &str,
    id: &str,
) -> Result<(KeyRecord, Minted), ControlError> {
    let mut k = load_key(st, id).await?;
    if k.revoked_at.is_some() {
        return Err(ControlError::Conflict(format!(
            "key `{id}` is revoked and cannot be rotated; a revoked key"
        )));
    }
    let minted = rotate_key_secret(st, actor, &mut k).await?;
    Ok((k, minted))
}

/// [`rotate_key`] for a key the caller has loaded and checked (the portal checks ownership
/// and refuses revoked keys in its own words first).
pub async fn rotate_key_secret(
    st: &AppState,
    actor: &str,
    k: &mut KeyRecord,
) -> Result<Minted, fairgate_store::StoreError> {
    let minted = mint_secret_for(k.id.clone());
    k.secret_hash = minted.secret_hash.clone();
    st.store.update_key(k).await?;
    directory_changed(st).await?;
    record_audit(
        st,
        actor,
        "key.rotate",
        format!("key:{}", k.id),
        None,
        json_of(&*k),
    )
    .await;
    tracing::info!(key_id = %k.id, actor, "key rotated");
    Ok(minted)
}
