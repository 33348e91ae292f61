//! Off-boarding (operators): disabling a person ends their sessions and stops their keys;
//! enabling them again restores exactly what was there.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use fairgate_control::{users, ControlError};

use crate::reports::urlencode;
use crate::session::{CsrfForm, CsrfOnly, Operator};
use crate::{redirect, PortalState, Refusal};

/// `POST /portal/operator/users/{id}/disable`.
pub(crate) async fn disable_user(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(id): Path<String>,
    CsrfForm(CsrfOnly): CsrfForm<CsrfOnly>,
) -> Result<Response, Refusal> {
    set_user_disabled(&st, &s, &id, true).await
}

/// `POST /portal/operator/users/{id}/enable`.
pub(crate) async fn enable_user(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(id): Path<String>,
    CsrfForm(CsrfOnly): CsrfForm<CsrfOnly>,
) -> Result<Response, Refusal> {
    set_user_disabled(&st, &s, &id, false).await
}

/// `POST /portal/operator/users/{id}/disable|enable` (operators): off-boarding. Disabling ends
/// the person's sessions and stops their API keys at once on this replica (the directory is
/// refreshed before the answer; other replicas follow at their next refresh). The keys
/// themselves are not changed, so enabling the person again restores exactly what was there.
///
/// Taking an [`Operator`] (and the caller's checked form) is what lets this run at all.
async fn set_user_disabled(
    st: &PortalState,
    s: &Operator,
    id: &str,
    disabled: bool,
) -> Result<Response, Refusal> {
    let Some(u) = st.store.get_user(id).await? else {
        return Err(Refusal::NotFound("There is no such user.".into()));
    };
    if u.id == s.user().id && disabled {
        return Err(Refusal::BadRequest(
            "you cannot disable your own account".into(),
        ));
    }
    let change = users::UserChange {
        disabled: Some(disabled),
        ..Default::default()
    };
    let u = match users::update_user(st, &s.user().email, &u.id, change).await {
        Ok(u) => u,
        Err(ControlError::NotFound(_)) => {
            return Err(Refusal::NotFound("There is no such user.".into()))
        }
        Err(e) => return Err(e.into()),
    };
    let back = match &u.tenant {
        Some(t) => format!("/portal/tenant?tenant={}", urlencode(t)),
        None => "/portal/tenant".to_owned(),
    };
    Ok(redirect(&back))
}
