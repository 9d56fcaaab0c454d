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
//!   pair replaces two real FFTs and their pre/post-processing passes. A segment with no partner
//!   in its channel (an odd number of segments, e.g. B = 1 with one block) runs through a real
//!   FFT instead. Pairs of small FFTs are batched into one rustfft call.
//! - **fusion**: gathering (dtype widening, pre-gate, history), the pointwise product with the
//!   prepared spectrum (already scaled by `1/N`), and the scatter (post-gate, rounding) happen
//!   in the passes that load and store the working buffer; nothing else touches memory.
//! - **half spectra**: a real filter's spectrum is Hermitian, so `N/2 + 1` bins per channel are
//!   stored (as a real FFT would) and each is applied to its mirror conjugated.
//! - **frequency sparsity**: the prepared spectrum stores only the kept bins; dropped bins are
//!   cleared rather than multiplied (the FFTs stay full size).
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
