//! Monarch FFT plans, twiddles, filter-spectrum layout, a CPU plan interpreter and f64 oracles.
//!
//! This crate holds no GPU code. Backends take their plan maths from here:
//! - [`size`]: the FFT sizes the library supports ([`FftSize`]).
//! - [`element`]: the I/O element types (f32, f16, bf16) and their conversions ([`Element`], [`DType`]).
//! - [`problem`]: the convolution problem ([`ConvSpec`]) and the geometry every backend follows
//!   ([`ConvGeometry`]: FFT size, blocking for partial convolutions, kept frequencies).
//! - [`plan`]: Monarch factorisations of an FFT size under a backend's limits ([`MonarchPlan`]).
//! - [`twiddle`]: DFT matrices and twiddle tables generated in f64 and rounded once.
//! - [`layout`]: the permuted filter-spectrum layout that matches a plan.
//! - [`interpret`]: a CPU interpreter that runs a plan stage by stage (f64 and f32).
//! - [`reference`](mod@reference): naive DFT and direct convolution oracles in f64.
//! - [`reference_backward`]: the exact adjoint of the forward (gradients) in f64.
//! - [`schedule`]: the pass schedule and kernel parameters the GPU backends share.
//! - [`memory`]: host buffers sized by a problem's shape, allocated as an error, not an abort.

pub mod element;
pub mod error;
pub mod interpret;
pub mod layout;
pub mod memory;
pub mod plan;
pub mod problem;
pub mod reference;
pub mod reference_backward;
pub mod schedule;
pub mod size;
pub mod twiddle;

pub use element::{DType, Element};
pub use error::CoreError;
pub use plan::{MonarchPlan, PlanLimits};
pub use problem::{ConvGeometry, ConvMode, ConvSpec, ConvSpecBuilder, FrequencyKeep, BLOCK_ALIGN};
pub use size::FftSize;

/// Complex numbers used throughout (re-exported from `num-complex`).
pub use num_complex::{Complex, Complex32, Complex64};
