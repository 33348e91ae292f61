//! Groups (operators): a new group, or a group's weight. Contended capacity is shared between
//! groups first, then between a group's tenants; the forms live on the tenants page.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use fairgate_control::groups;
use fairgate_control::validate::valid_name;
use fairgate_types::Group;

use super::tenants::{finish, Place};
use super::{weight_field, Fail, Submitted};
use crate::session::{CsrfForm, Operator, Signed};
use crate::{PortalState, Refusal};

/// Creates or re-weighs a group through the control plane, as the admin API's
/// `PUT /groups/{name}` does.
async fn set_group(st: &PortalState, s: &Signed, g: &Group) -> Result<(), Fail> {
    groups::set_group(st, &s.user().email, &g.name, g.weight).await?;
    Ok(())
}

/// `POST /portal/operator/groups`: a new group (name, weight).
pub(crate) async fn create_group(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let outcome = async {
        let name = f.get("name");
        valid_name("group", name)?;
        let weight = weight_field(f.get("weight"))?;
        // Creating must not silently re-weigh a group that exists: that is the table's job.
        if st.store.get_group(name).await?.is_some() {
            return Err(Fail::Invalid(format!(
                "group `{name}` already exists; change its weight in the table"
            )));
        }
        set_group(
            &st,
            &s,
            &Group {
                name: name.to_owned(),
                weight,
            },
        )
        .await
    }
    .await;
    finish(&st, &s, Place::Tenants, ("new-group", ""), f, outcome).await
}

/// `POST /portal/operator/groups/{name}/weight`.
pub(crate) async fn set_group_weight(
    State(st): State<Arc<PortalState>>,
    s: Operator,
    Path(name): Path<String>,
    CsrfForm(f): CsrfForm<Submitted>,
) -> Result<Response, Refusal> {
    let outcome = async {
        valid_name("group", &name)?;
        let weight = weight_field(f.get("weight"))?;
        let g = Group {
            name: name.clone(),
            weight,
        };
        set_group(&st, &s, &g).await
    }
    .await;
    finish(&st, &s, Place::Tenants, ("group-weight", &name), f, outcome).await
}
