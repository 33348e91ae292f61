//! Loading what a change is about, or `NotFound` naming it: shared by the operations on it
//! and by those (guardrail modes) that change one part of it.

use fairgate_gateway::state::AppState;
use fairgate_types::{KeyId, KeyRecord};

use crate::ControlError;

/// The key, or `NotFound` naming it.
pub async fn load_key(st: &AppState, id: &str) -> Result<KeyRecord, ControlError> {
    st.store
        .get_key(&KeyId(id.to_owned()))
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("key `{id}`")))
}
