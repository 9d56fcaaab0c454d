//! CUDA backend crate root: FFT convolution kernels compiled at run time by NVRTC, run through
//! the CUDA driver API (`cudarc`, loaded at run time).
//!
//! # backend-cuda
//!
//! [`CudaConvolution`] runs every variant of the design (causal and circular, gated, partial by
//! overlap-save blocks, frequency-sparse; forward and backward) for f32, f16 and bf16 I/O, following the
//! [`monarch_core::ConvGeometry`] of its problem and the pass schedule of
//! [`monarch_core::schedule`], so that it computes exactly what every other backend computes.
//!
//! - **Kernels**: `kernels/fftconv.cu` (CUDA C, no headers), compiled by NVRTC for the device's
//!   own architecture on first use, cached in memory and on disk ([`CACHE_ENV`]); the dtype,
//!   shared-memory size and block size are compile-time defines. The FFTs run in f32 on the CUDA
//!   cores (radix-2^3 rounds in registers, shared memory between rounds); tensor-core `mma`
//!   kernels are not written yet.
//! - **Plan**: a [`monarch_core::MonarchPlan`] for this device's shared memory (up to 2^14
//!   complex points per block with the opt-in limit of Hopper): sizes whose transform fits one
//!   block run as one fused pass (load `u`, FFT, product with the filter spectrum, inverse FFT,
//!   gates, store `y`); larger ones run each global stage as a column pass, forward and inverse,
//!   around the fused block.
//! - **Memory**: host slices are copied through chunk buffers (2^24 elements of `u` at a time, or
//!   the one or two rows a chunk holds at least); [`CudaTensor`]s stay in device memory.
//! - **Errors**: no driver, no NVRTC or no device is [`CudaError::Unavailable`]; nothing panics
//!   on a machine without CUDA.
//!
//! Everything is loaded at *run time*: the driver library (`libcuda.so.1`) and NVRTC
//! (`libnvrtc.so*`) are opened with `dlopen` through `cudarc`'s `dynamic-loading` feature, so
//! building this crate needs neither the CUDA toolkit nor a driver.
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

mod bandwidth;
mod baseline;
mod convolution;
mod device;
mod error;
#[doc(hidden)]
pub mod launch_plan;
mod probe;

pub use bandwidth::copy_bandwidth;
pub use baseline::{CufftBaseline, CufftFilter};
pub use convolution::{
    CudaConvolution, CudaFilterSpectrum, CudaGradients, CudaOptions, CudaTensor,
    CudaTensorGradients,
};
pub use cudarc::driver::CudaStream;
pub use device::{
    cache_file_of, cache_image, compile_variant, device, module_variants, CudaDevice,
    ModuleVariant, CACHE_ENV, DEVICE_ENV, LINEINFO_ENV, MONARCH_CLUSTER_ENV, MONARCH_ENV,
    MONARCH_SPLIT_BACKWARD_ENV, NO_PAD_ENV, POOL_KEEP_ENV, RADIX_ENV, SEGMENT_TABLE_ENV,
    THREADS_ENV,
};
pub use error::CudaError;
pub use probe::{describe, probe, CudaDeviceInfo};

/// The device convolutions run on, as one line; or why there is none. The kernels are compiled
/// for it here (once per process, or read from the disk cache), so an NVRTC that cannot target
/// the device reports CUDA unavailable instead of failing later.
pub fn active_device() -> Result<String, CudaError> {
    let dev = device()?;
    dev.kernels(monarch_core::DType::F32, dev.max_shared_points().min(4096))?;
    Ok(dev.description().to_owned())
}
