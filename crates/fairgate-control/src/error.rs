//! [`ControlError`]: why an administrative operation did not happen. Each surface renders it
//! its own way (the admin API as an OpenAI-shaped JSON error, the portal as a page), with the
//! same words.

use fairgate_gateway::error::ApiError;
use fairgate_store::StoreError;

/// A refusal naming the field and why.
pub fn bad(field: &str, msg: impl std::fmt::Display) -> ControlError {
    ControlError::Invalid(format!("{field}: {msg}"))
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request names a field or value the rules refuse; the text says which and why.
    #[error("{0}")]
    Invalid(String),
    /// The thing to change does not exist (the text names it).
    #[error("{0} not found")]
    NotFound(String),
    /// The change collides with what exists (a duplicate name, a backend already there).
    #[error("{0} already exists")]
    Conflict(String),
    /// The database refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something that should not fail did (a worker thread, a hash).
    #[error("{0}")]
    Internal(String),
}

impl From<fairgate_types::InvalidName> for ControlError {
    fn from(e: fairgate_types::InvalidName) -> Self {
        ControlError::Invalid(e.to_string())
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Invalid(m) => ApiError::AdminBadRequest(m),
            ControlError::NotFound(m) => ApiError::AdminNotFound(m),
            ControlError::Conflict(m) => ApiError::AdminConflict(m),
            ControlError::Store(e) => ApiError::from(e),
            ControlError::Internal(m) => ApiError::Internal(m),
        }
    }
}
