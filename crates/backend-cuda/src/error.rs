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
    /// NVRTC rejected a kernel source; `log` is its compilation log.
    #[error("NVRTC could not compile {kernel}: {log}")]
    Compile { kernel: String, log: String },
    /// An argument has the wrong shape, length or dtype; `arg` names it.
    #[error("invalid argument `{arg}`: {reason}")]
    InvalidArgument { arg: &'static str, reason: String },
    /// The device cannot run this problem (too large for its limits, ...).
    #[error("unsupported on this device: {what}")]
    Unsupported { what: String },
}

impl CudaError {
    /// Shorthand for [`CudaError::Unavailable`].
    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(arg: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            arg,
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Self::Unsupported { what: what.into() }
    }

    /// A failed driver call as [`CudaError::Driver`], naming the call.
    pub(crate) fn driver(call: &str, e: cudarc::driver::DriverError) -> Self {
        let name = e
            .error_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{:?}", e.0));
        Self::Driver(format!("{call} failed: {name}"))
    }

    /// Whether this error only says that CUDA is not usable on this machine.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
