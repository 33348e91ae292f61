//! The one error type of this crate: everything that can be wrong with a [`crate::GuardConfig`].
//!
//! Scanning itself cannot fail; only building a [`crate::Guard`] can.

/// Why a [`crate::GuardConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GuardError {
    /// A custom pattern does not compile, or could match the empty string.
    #[error("custom pattern `{name}`: {message}")]
    BadPattern {
        /// The pattern's configured name.
        name: String,
        /// What is wrong, from the regex parser or our own checks.
        message: String,
    },
    /// A custom pattern's name is not usable as a kind (`[a-z0-9_]`, 1 to 40 characters), is
    /// taken by a builtin detector, or is given twice.
    #[error("custom pattern name `{name}`: {reason}")]
    BadName {
        /// The name as configured.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The injection threshold is not a number in `[0, 1]`.
    #[error("injection threshold {0} is outside [0, 1]")]
    BadThreshold(f32),
}
