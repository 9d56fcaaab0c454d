//! Vulkan backend crate root: FFT convolution compute shaders on `ash`, device selection and
//! cooperative-matrix detection.
//!
//! # backend-vulkan
//!
//! [`VulkanConvolution`] runs every variant of the design (causal and circular, gated, partial by
//! overlap-save blocks, frequency-sparse; forward and backward) for f32, f16 and bf16 I/O on a
//! Vulkan 1.1 device, following the [`monarch_core::ConvGeometry`] of its problem so that it
//! computes exactly what every other backend computes.
//!
//! - **Shaders**: `shaders/fftconv.comp`, compiled to SPIR-V at build time by `build.rs` with the
//!   `glslang` crate (no SDK, no committed SPIR-V); variants by defines (pass, I/O type), the
//!   workgroup size and shared-memory size as specialization constants.
//! - **Plan**: a [`monarch_core::MonarchPlan`] for this device's shared memory. Sizes whose
//!   transform fits one workgroup run as one fused pass (load `u`, FFT, product with the filter
//!   spectrum, inverse FFT, gates, store `y`); larger ones run each global stage of the plan as a
//!   column pass through device memory, forward and inverse, around the fused block. The line
//!   DFTs run as register-radix passes: M / 16 invocations per line of M points hold 16 points
//!   each and run Stockham radix-16 passes in registers (one pass of radix 2, 4 or 8 where
//!   log2 M is not a multiple of 4) with one shared-memory exchange between passes; in the
//!   forward's fused block the product and the inverse's first pass work on the registers the
//!   forward's last pass leaves ([`REGISTER_FFT_ENV`]`=0`: the radix-2 rounds instead). Where the
//!   whole FFT is longer than the shared memory but its N / 16 invocations fit one workgroup
//!   (8K and 16K points on 4096 shared points), the forward is still one pass: each exchange
//!   goes through the shared memory in rounds, real parts then imaginary parts
//!   ([`EXCHANGE_ROUNDS_ENV`]`=1`: the plan's column passes instead).
//! - **Backward**: where the plan is one fused pass and rows are one overlap-save block each,
//!   one fused dispatch per chunk computes every row's filter taps, `du` and the gate gradients
//!   in shared memory (CUDA's fused backward); elsewhere a schedule of forward, product-inverse
//!   and gather passes. Environment variables for A/B comparisons: [`FUSED_BACKWARD_ENV`]
//!   (`FFTCONV_VULKAN_FUSED_BACKWARD=0`: the step schedule everywhere), [`NO_PAD_ENV`]
//!   (`FFTCONV_VULKAN_NO_PAD=1`), and `FFTCONV_VULKAN_MIDDLE_ROUND`, `FFTCONV_VULKAN_FAST_DIV`,
//!   `FFTCONV_VULKAN_CONST_TWIDDLES` (see `src/pipelines.rs`).
//! - **Paths**: the portable path (scalar f32 radix-2 FFTs in shared memory, barriers only, no
//!   subgroup-size assumption) runs everywhere. Where the device has `VK_KHR_cooperative_matrix`
//!   with a listed `T x T x T` f16 -> f32 shape (T = 16 on NVIDIA, 8 on lavapipe from Mesa 25.1;
//!   [`CooperativeMatrixSupport`], never assumed), the FFT passes of f16 and bf16 convolutions
//!   run their coarse FFT rounds as f16 DFT-matrix products with f32 accumulation, each tile
//!   scaled by its own power of two (the `COOP` shader variants); f32 I/O keeps f32 rounds.
//!   `FFTCONV_VULKAN_PORTABLE=1` forces the portable path.
//! - **Errors**: no loader, driver or device is [`VulkanError::Unavailable`]; a lost device,
//!   out-of-memory or a missing feature is a typed error; every wait has a timeout.
//!
//! The Vulkan loader (`libvulkan.so.1`) is opened at *run time* through `ash`'s `loaded`
//! feature, so building needs no Vulkan SDK. [`probe`] lists every physical device.
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

mod bandwidth;
mod capabilities;
mod context;
mod convolution;
mod error;
mod pipelines;
mod probe;

pub use bandwidth::{copy_bandwidth, copy_bandwidths};
pub use capabilities::{
    select_shader_path, CooperativeMatrixSupport, CooperativeShape, ShaderPath, COOPERATIVE_TILES,
    PORTABLE_ENV,
};
pub use context::{context, DeviceCapabilities, VulkanContext, DEVICE_ENV, VALIDATION_ENV};
pub use convolution::{
    VulkanConvolution, VulkanFilterSpectrum, VulkanGradients, VulkanOptions, VulkanTensor,
    VulkanTensorGradients,
};
pub use error::VulkanError;
pub use pipelines::{
    COOP_F16_PRODUCTS_ENV, DEFAULT_EXCHANGE_ROUNDS, EXCHANGE_ROUNDS_ENV, FUSED_BACKWARD_ENV,
    HALF_SPECTRA_ENV, NO_PAD_ENV, REGISTER_FFT_ENV,
};
pub use probe::{describe, probe, VulkanDeviceInfo};

/// The device convolutions run on, with its shader path, as one line; or why there is none.
pub fn active_device() -> Result<String, VulkanError> {
    Ok(context()?.description().to_owned())
}
