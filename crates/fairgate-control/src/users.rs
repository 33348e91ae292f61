//! Portal accounts: create and change (role, tenant, password, disabled). Passwords follow the
//! one policy ([`crate::passwords`]) and are hashed on the blocking pool, never on an async
//! worker that carries streams.

use fairgate_gateway::state::{directory_changed, AppState};
use fairgate_types::{now_millis, Role, Secret, User};

use crate::audit::{json_of, record_audit};
use crate::validate::valid_email;
use crate::ControlError;

/// An account to create.
#[derive(Clone, Debug, Default)]
pub struct NewUser {
    pub email: String,
    pub name: Option<String>,
    /// Local password; `None` for accounts that only sign in through SSO.
    pub password: Option<Secret>,
    pub role: Role,
    pub tenant: Option<String>,
}

/// A change to an account: `None` leaves a field as it is; `tenant: Some(None)` clears it.
#[derive(Clone, Debug, Default)]
pub struct UserChange {
    pub role: Option<Role>,
    pub tenant: Option<Option<String>>,
    pub password: Option<Secret>,
    pub disabled: Option<bool>,
}

impl UserChange {
    /// Only `disabled`: off-boarding or its undoing, audited as such.
    fn only_disabled(&self) -> Option<bool> {
        match self {
            UserChange {
                role: None,
                tenant: None,
                password: None,
                disabled: Some(d),
            } => Some(*d),
            _ => None,
        }
    }
}

/// Checks and hashes a new password (argon2id: tens of milliseconds of CPU and 19 MiB).
async fn hashed_password(password: &Secret) -> Result<String, ControlError> {
    if let Some(why) = crate::passwords::password_problem(password.expose()) {
        return Err(ControlError::Invalid(format!("password: {why}")));
    }
    let password = password.clone();
    tokio::task::spawn_blocking(move || crate::passwords::hash_password(password.expose()))
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?
        .map_err(|e| ControlError::Internal(e.to_string()))
}

async fn tenant_exists(st: &AppState, t: &str) -> Result<(), ControlError> {
    match st.store.get_tenant(t).await? {
        Some(_) => Ok(()),
        None => Err(ControlError::NotFound(format!("tenant `{t}`"))),
    }
}

pub async fn create_user(st: &AppState, actor: &str, req: NewUser) -> Result<User, ControlError> {
    let email = valid_email(&req.email)?;
    if let Some(t) = &req.tenant {
        tenant_exists(st, t).await?;
    }
    let password_hash = match &req.password {
        Some(p) => Some(hashed_password(p).await?),
        None => None,
    };
    let user = User {
        id: uuid::Uuid::now_v7().to_string(),
        email,
        name: req.name,
        password_hash,
        role: req.role,
        tenant: req.tenant,
        oidc_subject: None,
        disabled: false,
        created_at: now_millis(),
    };
    st.store.create_user(&user).await?;
    record_audit(
        st,
        actor,
        "user.create",
        format!("user:{}", user.email),
        None,
        json_of(&user),
    )
    .await;
    tracing::info!(email = %user.email, role = user.role.as_str(), actor, "portal user created");
    Ok(user)
}

/// Changes an account. Any change but re-enabling ends the sessions it had (a new role,
/// tenant or password, or a disabled account, must not ride on an old session); a disabled
/// person's API keys stop at once here (other replicas follow at their next directory
/// refresh), and re-enabling restores exactly what was there.
pub async fn update_user(
    st: &AppState,
    actor: &str,
    id: &str,
    change: UserChange,
) -> Result<User, ControlError> {
    let not_found = || ControlError::NotFound(format!("user `{id}`"));
    let mut u = st.store.get_user(id).await?.ok_or_else(not_found)?;
    let before = json_of(&u);
    let only_disabled = change.only_disabled();
    if let Some(r) = change.role {
        u.role = r;
    }
    if let Some(t) = change.tenant {
        if let Some(t) = &t {
            tenant_exists(st, t).await?;
        }
        u.tenant = t;
    }
    if let Some(p) = &change.password {
        u.password_hash = Some(hashed_password(p).await?);
    }
    if let Some(d) = change.disabled {
        u.disabled = d;
    }
    if !st.store.update_user(&u).await? {
        return Err(not_found());
    }
    if only_disabled != Some(false) {
        st.store.delete_user_sessions(&u.id).await?;
    }
    directory_changed(st).await?;
    let action = match only_disabled {
        Some(true) => "user.disable",
        Some(false) => "user.enable",
        None => "user.update",
    };
    record_audit(
        st,
        actor,
        action,
        format!("user:{}", u.email),
        before,
        json_of(&u),
    )
    .await;
    tracing::info!(email = %u.email, action, actor, "portal user changed");
    Ok(u)
}
