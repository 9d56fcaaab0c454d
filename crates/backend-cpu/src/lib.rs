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
//!   in its channel (an odd number of segments, e.g. B = 1 with one block) pairs with the
//!   leftover of the neighbouring channel below 1M: the two are separated in the frequency
//!   domain, `Z = A k_a + B k_b` with `A`, `B` from `X[f]` and `conj X[N-f]`, still two complex
//!   products per bin pair. Otherwise (the four-step and split forms, or an odd channel out) it
//!   runs through a real FFT. Pairs of small FFTs are batched into one rustfft call.
//! - **fusion**: gathering (dtype widening, pre-gate, history), the pointwise product with the
//!   prepared spectrum (already scaled by `1/N`), and the scatter (post-gate, rounding) happen
//!   in the passes that load and store the working buffer; nothing else touches memory.
//! - **half spectra**: a real filter's spectrum is Hermitian, so `N/2 + 1` bins per channel are
//!   stored (as a real FFT would) and each is applied to its mirror conjugated.
//! - **four-step at large sizes**: dense problems from `N = 2^17` run each pair's FFT as a
//!   radix-16 column DFT (eight columns per SIMD step, AVX2 + FMA where present, zero rows
//!   never read, unneeded output rows never formed) around 16 rustfft sub-FFTs of `N/16` that
//!   stay in L2, each multiplied by its part of the spectrum and inverted while cached.
//! - **frequency sparsity**: the prepared spectrum stores only the kept bins; dropped bins are
//!   cleared rather than multiplied (the FFTs stay full size).
//!
//! [`RealFftBaseline`] is the straightforward realfft convolution a user would write, kept here
//! as the benchmark baseline.

mod backward;
mod baseline;
mod engine;
mod error;
mod four_step;
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

/// Bytes read plus bytes written per second by a copy between two buffers of `bytes` each,
/// split over the worker threads (the best of `reps` after one warm-up): the CPU's memory floor.
pub fn copy_bandwidth(bytes: usize, reps: usize) -> f64 {
    use rayon::prelude::*;
    let src = vec![1u8; bytes.max(1)];
    let mut dst = vec![0u8; bytes.max(1)];
    let chunk = bytes.div_ceil(threads().max(1)).max(1);
    let mut best = f64::INFINITY;
    for rep in 0..=reps.max(1) {
        let t = std::time::Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        if rep > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&dst);
    2.0 * src.len() as f64 / best
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_bandwidth_is_positive() {
        let bw = super::copy_bandwidth(1 << 20, 1);
        assert!(bw.is_finite() && bw > 1e6, "{bw} bytes/s");
    }
}
