//! Process-wide cache of rustfft plans, so every convolution of one size shares its FFTs.

use rustfft::{Fft, FftPlanner};
use std::sync::{Arc, Mutex, OnceLock};

/// Forward and inverse complex FFTs of size `n`, planned once per process.
pub(crate) fn complex_ffts(n: usize) -> (Arc<dyn Fft<f32>>, Arc<dyn Fft<f32>>) {
    static PLANNER: OnceLock<Mutex<FftPlanner<f32>>> = OnceLock::new();
    let mut planner = PLANNER
        .get_or_init(|| Mutex::new(FftPlanner::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    (planner.plan_fft_forward(n), planner.plan_fft_inverse(n))
}

/// Forward and inverse real FFTs of size `n` (for the baseline), planned once per process.
pub(crate) fn real_ffts(
    n: usize,
) -> (
    Arc<dyn realfft::RealToComplex<f32>>,
    Arc<dyn realfft::ComplexToReal<f32>>,
) {
    static PLANNER: OnceLock<Mutex<realfft::RealFftPlanner<f32>>> = OnceLock::new();
    let mut planner = PLANNER
        .get_or_init(|| Mutex::new(realfft::RealFftPlanner::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    (planner.plan_fft_forward(n), planner.plan_fft_inverse(n))
}
