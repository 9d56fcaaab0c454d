//! The error type of monarch-core: invalid sizes, limits and problem descriptions.

use thiserror::Error;

/// Errors raised while describing a problem or building a plan.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// A size that is not a supported FFT size (power of two in range).
    #[error("unsupported FFT size {size}: {reason}")]
    UnsupportedFftSize { size: usize, reason: String },
    /// Backend limits under which no plan exists.
    #[error("no Monarch plan for N = {size} under these limits: {reason}")]
    NoPlan { size: usize, reason: String },
    /// A problem description argument is invalid; `arg` names it.
    #[error("invalid argument `{arg}`: {reason}")]
    InvalidArgument { arg: &'static str, reason: String },
}

impl CoreError {
    pub(crate) fn invalid(arg: &'static str, reason: impl Into<String>) -> Self {
        CoreError::InvalidArgument {
            arg,
            reason: reason.into(),
        }
    }
}
