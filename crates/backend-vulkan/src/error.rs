//! Typed errors of the Vulkan backend and the `vk::Result` → error mapping.

use ash::vk;

/// Errors reported by the Vulkan backend.
///
/// [`VulkanError::Unavailable`] means "Vulkan cannot be used on this machine"
/// (no loader, no driver, no device, ...): callers should fall back to another
/// backend. The other variants are genuine failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VulkanError {
    /// Vulkan cannot be used here; `reason` says why.
    #[error("Vulkan unavailable: {reason}")]
    Unavailable {
        /// Human-readable reason, e.g. `"no Vulkan physical device"`.
        reason: String,
    },
    /// Host or device memory ran out inside `call`.
    #[error("Vulkan out of memory in {call}: {result}")]
    OutOfMemory {
        /// The Vulkan entry point that failed, e.g. `"vkCreateInstance"`.
        call: &'static str,
        /// `ERROR_OUT_OF_HOST_MEMORY` or `ERROR_OUT_OF_DEVICE_MEMORY`.
        result: vk::Result,
    },
    /// The device was lost during `call`.
    #[error("Vulkan device lost in {call}")]
    DeviceLost {
        /// The Vulkan entry point that failed.
        call: &'static str,
    },
    /// Any other failed Vulkan call.
    #[error("Vulkan call failed: {call}: {result}")]
    Call {
        /// The Vulkan entry point that failed.
        call: &'static str,
        /// The raw result code.
        result: vk::Result,
    },
    /// The GPU did not finish a submission within the timeout; the device is treated as lost.
    #[error("Vulkan work did not finish within {seconds} s (device treated as lost)")]
    Timeout {
        /// The fence wait's timeout in seconds.
        seconds: u64,
    },
    /// The device lacks something this problem needs (a feature, a limit, a size).
    #[error("Vulkan device cannot run this: {what}")]
    Unsupported {
        /// What is missing, e.g. `"storageBuffer16BitAccess (f16 I/O)"`.
        what: String,
    },
    /// An argument has the wrong shape or value; `arg` names it.
    #[error("invalid argument `{arg}`: {reason}")]
    InvalidArgument {
        /// The argument's name.
        arg: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The validation layer (enabled by `FFTCONV_VULKAN_VALIDATION=1`) reported errors.
    #[error("Vulkan validation errors: {}", messages.join(" | "))]
    Validation {
        /// The layer's error messages.
        messages: Vec<String>,
    },
    /// Invalid problem description or plan.
    #[error(transparent)]
    Core(#[from] monarch_core::CoreError),
}

impl VulkanError {
    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Self::Unsupported { what: what.into() }
    }

    pub(crate) fn invalid(arg: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            arg,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`VulkanError::Unavailable`].
    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
        }
    }

    /// Whether this error only says that Vulkan is not usable on this machine.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Maps the failing result `r` of the Vulkan entry point `call` to a
/// [`VulkanError`] (in the spirit of wgpu-hal's `map_err`).
///
/// `ERROR_INCOMPATIBLE_DRIVER` and `ERROR_INITIALIZATION_FAILED` mean that no
/// usable driver is installed, so they become [`VulkanError::Unavailable`].
pub(crate) fn check(call: &'static str, r: vk::Result) -> VulkanError {
    match r {
        vk::Result::ERROR_INCOMPATIBLE_DRIVER => VulkanError::unavailable(format!(
            "{call}: no compatible Vulkan driver (ICD) installed ({r})"
        )),
        vk::Result::ERROR_INITIALIZATION_FAILED => {
            VulkanError::unavailable(format!("{call}: Vulkan initialisation failed ({r})"))
        }
        vk::Result::ERROR_OUT_OF_HOST_MEMORY | vk::Result::ERROR_OUT_OF_DEVICE_MEMORY => {
            VulkanError::OutOfMemory { call, result: r }
        }
        vk::Result::ERROR_DEVICE_LOST => VulkanError::DeviceLost { call },
        result => VulkanError::Call { call, result },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_maps_results() {
        assert!(check("vkCreateInstance", vk::Result::ERROR_INCOMPATIBLE_DRIVER).is_unavailable());
        assert_eq!(
            check("vkCreateInstance", vk::Result::ERROR_OUT_OF_HOST_MEMORY),
            VulkanError::OutOfMemory {
                call: "vkCreateInstance",
                result: vk::Result::ERROR_OUT_OF_HOST_MEMORY
            }
        );
        assert_eq!(
            check("vkQueueSubmit", vk::Result::ERROR_DEVICE_LOST),
            VulkanError::DeviceLost {
                call: "vkQueueSubmit"
            }
        );
        let e = check("vkCreateInstance", vk::Result::ERROR_LAYER_NOT_PRESENT);
        assert_eq!(
            e,
            VulkanError::Call {
                call: "vkCreateInstance",
                result: vk::Result::ERROR_LAYER_NOT_PRESENT
            }
        );
        assert!(e
            .to_string()
            .starts_with("Vulkan call failed: vkCreateInstance: "));
    }

    #[test]
    fn unavailable_message() {
        assert_eq!(
            VulkanError::unavailable("no Vulkan physical device").to_string(),
            "Vulkan unavailable: no Vulkan physical device"
        );
    }
}
