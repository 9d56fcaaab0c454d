//! Process-wide caches of rustfft/realfft plans and twiddle tables, shared per size.

use monarch_core::{twiddle::root_of_unity, Complex32};
use rustfft::{Fft, FftPlanner};
use std::collections::HashMap;
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

/// `W_N^n = exp(-2 pi i n / N)` for `n < N/2`, generated in f64 (index reduced mod `N`) and
/// rounded once; one table per `N` for the whole process.
pub(crate) fn half_twiddles(n: usize) -> Arc<[Complex32]> {
    type Tables = Mutex<HashMap<usize, Arc<[Complex32]>>>;
    static TABLES: OnceLock<Tables> = OnceLock::new();
    let mut tables = TABLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tables
        .entry(n)
        .or_insert_with(|| {
            (0..n / 2)
                .map(|i| {
                    let w = root_of_unity(i as u64, n as u64);
                    Complex32::new(w.re as f32, w.im as f32)
                })
                .collect()
        })
        .clone()
}
