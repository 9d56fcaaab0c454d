//! [`ConvError`]: every error the public API returns, with `#[from]` conversions per backend.

use crate::BackendKind;
use monarch_core::{CoreError, DType};
use thiserror::Error;

/// Errors of the public API. Arguments are checked before anything runs, so on an argument or
/// backend-availability error no output buffer has been written. A device failure in the middle
/// of a call (a GPU backend runs large problems in chunks) can leave outputs partly written.
#[derive(Debug, Error)]
pub enum ConvError {
    /// An argument has the wrong shape or value; `arg` names it.
    #[error("invalid argument `{arg}`: {reason}")]
    InvalidArgument { arg: &'static str, reason: String },
    /// A buffer's element type differs from the problem's dtype.
    #[error("dtype mismatch for `{arg}`: got {got}, the problem is {expected}")]
    DTypeMismatch {
        arg: &'static str,
        expected: DType,
        got: DType,
    },
    /// The backend cannot run here (not compiled in, no driver, no device, ...).
    #[error("backend {backend} unavailable: {reason}")]
    BackendUnavailable {
        backend: BackendKind,
        reason: String,
    },
    /// The backend does not implement this operation yet.
    #[error("backend {backend} does not support {what}")]
    Unsupported {
        backend: BackendKind,
        what: &'static str,
    },
    /// Host memory for a tensor the library allocates itself (a zeroed tensor on the CPU
    /// backend) could not be reserved; `what` names the tensor. A backend's own allocations
    /// report through its variant (e.g. the CPU backend's filter spectrum as
    /// `CpuError::OutOfMemory`, Vulkan's device memory as `VulkanError::OutOfMemory`).
    #[error("cannot allocate {bytes} bytes of host memory for {what}")]
    OutOfMemory { what: &'static str, bytes: usize },
    /// Invalid problem description or plan.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Error from the CPU backend.
    #[cfg(feature = "cpu")]
    #[error("cpu backend: {0}")]
    Cpu(#[from] backend_cpu::CpuError),
    /// Error from the CUDA backend.
    #[cfg(feature = "cuda")]
    #[error("cuda backend: {0}")]
    Cuda(#[from] backend_cuda::CudaError),
    /// Error from the Vulkan backend.
    #[cfg(feature = "vulkan")]
    #[error("vulkan backend: {0}")]
    Vulkan(#[from] backend_vulkan::VulkanError),
}

impl ConvError {
    pub(crate) fn invalid(arg: &'static str, reason: impl Into<String>) -> Self {
        ConvError::InvalidArgument {
            arg,
            reason: reason.into(),
        }
    }

    /// The argument an [`InvalidArgument`](ConvError::InvalidArgument) or dtype error names.
    pub fn argument(&self) -> Option<&'static str> {
        match self {
            ConvError::InvalidArgument { arg, .. } | ConvError::DTypeMismatch { arg, .. } => {
                Some(arg)
            }
            ConvError::Core(CoreError::InvalidArgument { arg, .. }) => Some(arg),
            #[cfg(feature = "cpu")]
            ConvError::Cpu(backend_cpu::CpuError::InvalidArgument { arg, .. }) => Some(arg),
            #[cfg(feature = "vulkan")]
            ConvError::Vulkan(backend_vulkan::VulkanError::InvalidArgument { arg, .. }) => {
                Some(arg)
            }
            #[cfg(feature = "cuda")]
            ConvError::Cuda(backend_cuda::CudaError::InvalidArgument { arg, .. }) => Some(arg),
            _ => None,
        }
    }
}
