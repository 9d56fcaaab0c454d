//! Long FFT convolutions (FlashFFTConv-style) behind one API, with CPU, CUDA and Vulkan backends.
//!
//! ```
//! use conv::{BackendKind, ConvSpec, Convolution};
//!
//! // u: [B=2, H=3, L=1000], k: [H=3, K=1000], causal, f32.
//! let spec = ConvSpec::builder(2, 3, 1000, 1000).build()?;
//! let conv = Convolution::new(spec, BackendKind::Cpu)?;
//! let k = vec![0.01f32; 3 * 1000];
//! let filter = conv.prepare_filter(&k)?; // reusable across calls
//! let u = vec![1.0f32; 2 * 3 * 1000];
//! let mut y = vec![0.0f32; u.len()];
//! conv.forward(&filter, &u, None, &mut y)?;
//! assert!((y[999] - 10.0).abs() < 1e-3);
//! # Ok::<(), conv::ConvError>(())
//! ```
//!
//! - [`ConvSpec`] describes the problem (shapes, dtype, causal/circular, gating, frequency
//!   sparsity) and fixes the geometry (FFT size, overlap-save blocks) every backend follows.
//! - [`Convolution`] is a problem prepared on one backend ([`BackendKind`]); it is `Send + Sync`.
//! - [`FilterSpectrum`] is a filter prepared once for a convolution and reused across calls.
//! - [`Convolution::backward`] gives `du`, `dk` and the gate gradients (every backend;
//!   [`BackendKind::supports_backward`] says where).
//! - [`DeviceTensor`]s keep inputs and outputs resident on the backend (device memory on a GPU)
//!   between calls: [`Convolution::forward_device`], [`Convolution::backward_device`].
//! - Backends are compiled in by cargo features (`cpu` (default), `cuda`, `vulkan`) and chosen at
//!   run time ([`BackendKind::best_available`], or explicitly).

mod backend;
mod convolution;
mod error;
mod tensor;

pub use backend::{backend_statuses, BackendKind, BackendStatus};
pub use convolution::Gradients;
pub use convolution::{Convolution, FilterSpectrum, Gates};
pub use error::ConvError;
pub use half::{bf16, f16};
pub use monarch_core::{
    reference, ConvGeometry, ConvMode, ConvSpec, ConvSpecBuilder, DType, Element, FftSize,
    FrequencyKeep,
};
pub use tensor::{DeviceGradients, DeviceTensor};
