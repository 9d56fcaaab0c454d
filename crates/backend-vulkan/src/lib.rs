//! Vulkan backend crate root: run-time Vulkan device discovery (kernels arrive in later issues).
//!
//! # backend-vulkan
//!
//! This crate will host the Vulkan compute implementation of the
//! long-convolution kernels. **Kernels arrive in later issues; for now the
//! crate provides device discovery only**: [`probe`] lists the Vulkan physical
//! devices with the properties the kernels will care about (shared memory,
//! subgroup size, cooperative matrices, `shaderFloat16`) and [`describe`]
//! renders them as one human-readable line.
//!
//! The Vulkan loader (`libvulkan.so.1`) is opened at *run time* through
//! `ash`'s `loaded` feature, so building needs no Vulkan SDK. Without a loader
//! or a driver every entry point returns [`VulkanError::Unavailable`] with a
//! reason; none of them panics.
//!
//! ```
//! match backend_vulkan::probe() {
//!     Ok(devices) => {
//!         for d in &devices {
//!             println!("{d}");
//!         }
//!     }
//!     Err(e) => println!("skipped: {e}"),
//! }
//! ```

mod error;
mod probe;

pub use error::VulkanError;
pub use probe::{describe, probe, VulkanDeviceInfo};
