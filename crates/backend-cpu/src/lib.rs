//! CPU backend: FFT convolution on rustfft/realfft, threaded over rows with rayon.
//!
//! [`CpuConvolution`] runs every forward variant of the design (causal and circular, gated,
//! partial by overlap-save blocks, frequency-sparse) for f32, f16 and bf16 I/O with f32 compute.
//! It follows the [`monarch_core::ConvGeometry`] of its problem, so it computes exactly the
//! function every other backend computes.
//!
//! How it is fast:
//! - **pairing**: two real segments that share a filter (same channel: two batch rows, or two
//!   blocks of one row) travel as one complex sequence `a + i*b`; since the filter is real, the
//!   real and imaginary parts of the result are the two outputs. One complex FFT of size `N` per
//!   pair replaces two real FFTs and their pre/post-processing passes.
//! - **fusion**: gathering (dtype widening, pre-gate, history), the pointwise product with the
//!   prepared spectrum (already scaled by `1/N`), and the scatter (post-gate, rounding) happen
//!   in the passes that load and store the working buffer; nothing else touches memory.
//! - **frequency sparsity**: the prepared spectrum stores only the kept bins; dropped bins are
//!   cleared rather than multiplied.
//!
//! [`RealFftBaseline`] is the straightforward realfft convolution a user would write, kept here
//! as the benchmark baseline.

mod backward;
mod baseline;
mod engine;
mod error;
mod pair_fft;
mod planner;
mod spectrum;

pub use backward::CpuGradients;
pub use baseline::{BaselineSpectrum, RealFftBaseline};
pub use engine::CpuConvolution;
pub use error::CpuError;
pub use spectrum::CpuFilterSpectrum;

/// Number of worker threads the backend uses (rayon's global pool).
pub fn threads() -> usize {
    rayon::current_num_threads()
}
