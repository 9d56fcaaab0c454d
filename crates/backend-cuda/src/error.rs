//! Typed errors of the CUDA backend.

/// Errors reported by the CUDA backend.
///
/// [`CudaError::Unavailable`] means "CUDA cannot be used on this machine"
/// (missing driver or NVRTC library, no device, ...): callers should fall back
/// to another backend. The other variants are genuine failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    /// CUDA cannot be used here; `reason` says why.
    #[error("CUDA unavailable: {reason}")]
    Unavailable {
        /// Human-readable reason, e.g. `"no CUDA device"`.
        reason: String,
    },
    /// A CUDA driver API call failed (message names the call and the error).
    #[error("CUDA driver error: {0}")]
    Driver(String),
    /// An NVRTC call failed (message names the call and the error).
    #[error("NVRTC error: {0}")]
    Nvrtc(String),
}

impl CudaError {
    /// Shorthand for [`CudaError::Unavailable`].
    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
        }
    }

    /// Whether this error only says that CUDA is not usable on this machine.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
