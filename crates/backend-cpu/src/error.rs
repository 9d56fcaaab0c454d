//! The CPU backend's error type.

use thiserror::Error;

/// Errors from the CPU backend. Inputs are validated before any output is written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CpuError {
    /// A buffer has the wrong length or does not belong to this problem; `arg` names it.
    #[error("invalid argument `{arg}`: {reason}")]
    InvalidArgument { arg: &'static str, reason: String },
    /// The problem uses a feature this entry point does not provide.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Host memory the problem's shape calls for (`what`) could not be reserved.
    #[error("cannot allocate {bytes} bytes of host memory for {what}")]
    OutOfMemory { what: &'static str, bytes: usize },
}

impl CpuError {
    pub(crate) fn invalid(arg: &'static str, reason: impl Into<String>) -> Self {
        CpuError::InvalidArgument {
            arg,
            reason: reason.into(),
        }
    }

    /// Checks that `arg` has `want` elements.
    pub(crate) fn check_len(arg: &'static str, got: usize, want: usize) -> Result<(), CpuError> {
        if got == want {
            Ok(())
        } else {
            Err(Self::invalid(
                arg,
                format!("expected {want} elements, got {got}"),
            ))
        }
    }
}
