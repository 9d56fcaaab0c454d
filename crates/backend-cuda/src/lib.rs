//! CUDA backend crate root: run-time CUDA device discovery (kernels arrive in later issues).
//!
//! # backend-cuda
//!
//! This crate will host the CUDA implementation of the long-convolution
//! kernels. **Kernels arrive in later issues; for now the crate provides
//! device discovery only**: [`probe`] lists the CUDA devices visible to the
//! driver and [`describe`] renders them as one human-readable line.
//!
//! Everything is loaded at *run time*: the driver library (`libcuda.so.1`)
//! and NVRTC (`libnvrtc.so.*`) are opened with `dlopen` through `cudarc`'s
//! `dynamic-loading` feature, so building this crate needs neither the CUDA
//! toolkit nor a driver. On a machine without CUDA every entry point returns
//! [`CudaError::Unavailable`] with a reason; none of them panics.
//!
//! ```
//! match backend_cuda::probe() {
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

pub use error::CudaError;
pub use probe::{describe, probe, CudaDeviceInfo};
