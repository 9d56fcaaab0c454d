//! A CPU interpreter that runs a [`MonarchPlan`] stage by stage, in f64 or f32, exactly as the
//! stage model prescribes (batches of small dense DFT-matrix products plus twiddles), so GPU
//! kernels can be checked stage by stage against it.

use std::sync::Arc;

use num_complex::Complex;

use crate::error::CoreError;
use crate::plan::MonarchPlan;
use crate::twiddle::{dft_matrix_f64, round_all, stage_twiddles_f64};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A float type the interpreter computes in (`f64` or `f32`): all arithmetic is done in this
/// precision, and tables are generated in f64 and rounded once to it.
pub trait InterpreterFloat:
    sealed::Sealed
    + Copy
    + Default
    + Send
    + Sync
    + PartialEq
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
{
    /// Rounds an f64 to this type (once).
    fn from_f64(x: f64) -> Self;
    /// Widens to f64 (exact).
    fn to_f64(self) -> f64;
}

impl InterpreterFloat for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}

impl InterpreterFloat for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

/// Columns processed together by one small matrix product (the "batch" of a GPU tile).
const TILE: usize = 64;

/// Precomputed tables of one stage.
#[derive(Debug, Clone)]
struct StageTables<T> {
    /// Forward `N_s x N_s` DFT matrix, row-major, split into real and imaginary parts.
    dft_re: Vec<T>,
    dft_im: Vec<T>,
    /// Forward twiddles of length `M_s` (the inverse uses their conjugates).
    twiddles: Vec<Complex<T>>,
    /// Whether every twiddle is one (the last stage), so the multiply is skipped.
    unit_twiddles: bool,
}

/// Runs a plan on the CPU: one stage at a time, the full transform, or a circular convolution.
///
/// Tables (DFT matrices and per-stage twiddles, `~N` complex values in all) are built once in
/// [`PlanInterpreter::new`].
#[derive(Debug, Clone)]
pub struct PlanInterpreter<T> {
    plan: Arc<MonarchPlan>,
    stages: Vec<StageTables<T>>,
}

#[inline(always)]
fn cmul<T: InterpreterFloat>(a: Complex<T>, b: Complex<T>) -> Complex<T> {
    Complex::new(a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re)
}

#[inline(always)]
fn cmul_conj<T: InterpreterFloat>(a: Complex<T>, b: Complex<T>) -> Complex<T> {
    // a * conj(b)
    Complex::new(a.re * b.re + a.im * b.im, a.im * b.re - a.re * b.im)
}

impl<T: InterpreterFloat> PlanInterpreter<T> {
    /// Builds the interpreter and its tables for `plan`.
    pub fn new(plan: Arc<MonarchPlan>) -> Self {
        let stages = (0..plan.order())
            .map(|s| {
                let n = plan.factors()[s];
                let dft = dft_matrix_f64(n, false);
                let twiddles = round_all(&stage_twiddles_f64(&plan, s, false), T::from_f64);
                StageTables {
                    dft_re: dft.iter().map(|z| T::from_f64(z.re)).collect(),
                    dft_im: dft.iter().map(|z| T::from_f64(z.im)).collect(),
                    twiddles,
                    unit_twiddles: plan.stride(s) == 1,
                }
            })
            .collect();
        PlanInterpreter { plan, stages }
    }

    /// The plan being interpreted.
    pub fn plan(&self) -> &Arc<MonarchPlan> {
        &self.plan
    }

    fn check_len(&self, arg: &'static str, len: usize) -> Result<(), CoreError> {
        let n = self.plan.size().len();
        if len != n {
            return Err(CoreError::invalid(
                arg,
                format!("length {len}, expected the FFT size {n}"),
            ));
        }
        Ok(())
    }

    /// Runs stage `stage` in place on the whole length-`N` buffer.
    ///
    /// Forward: every column (length `N_s`, stride `M_{s+1}`) of every block of length `M_s` is
    /// multiplied by the DFT matrix, then element `[k, j]` by its twiddle. Inverse: the conjugated
    /// twiddle first, then the conjugated DFT matrix. The columns are processed in tiles of up to
    /// 64: gather an `N_s x 64` tile, one dense `N_s x N_s` by `N_s x 64` product, scatter.
    pub fn run_stage(
        &self,
        stage: usize,
        data: &mut [Complex<T>],
        inverse: bool,
    ) -> Result<(), CoreError> {
        let tables = self.stages.get(stage).ok_or_else(|| {
            CoreError::invalid(
                "stage",
                format!(
                    "{stage} out of range for a plan of order {}",
                    self.plan.order()
                ),
            )
        })?;
        self.check_len("data", data.len())?;

        let rows = self.plan.factors()[stage];
        let cols = self.plan.stride(stage);
        let block = rows * cols;
        let columns = data.len() / rows;
        let conj = if inverse {
            T::from_f64(-1.0)
        } else {
            T::from_f64(1.0)
        };

        // Scratch tiles, structure of arrays: in/out[r * TILE + t].
        let mut in_re = vec![T::default(); rows * TILE];
        let mut in_im = vec![T::default(); rows * TILE];
        let mut out_re = vec![T::default(); rows * TILE];
        let mut out_im = vec![T::default(); rows * TILE];
        // Offsets of each tile column: block start + column index j.
        let mut base = [0usize; TILE];
        let mut col_j = [0usize; TILE];

        let mut c0 = 0;
        while c0 < columns {
            let width = TILE.min(columns - c0);
            for t in 0..width {
                let c = c0 + t;
                col_j[t] = c % cols;
                base[t] = (c / cols) * block + col_j[t];
            }

            // Gather (inverse: multiply by the conjugated twiddle on the way in).
            for r in 0..rows {
                for t in 0..width {
                    let mut z = data[base[t] + r * cols];
                    if inverse && !tables.unit_twiddles {
                        z = cmul_conj(z, tables.twiddles[r * cols + col_j[t]]);
                    }
                    in_re[r * TILE + t] = z.re;
                    in_im[r * TILE + t] = z.im;
                }
            }

            // out = F * in (F conjugated for the inverse): N_s x N_s times N_s x width.
            for k in 0..rows {
                let (ore, oim) = (
                    &mut out_re[k * TILE..k * TILE + width],
                    &mut out_im[k * TILE..k * TILE + width],
                );
                ore.fill(T::default());
                oim.fill(T::default());
                for r in 0..rows {
                    let fre = tables.dft_re[k * rows + r];
                    let fim = conj * tables.dft_im[k * rows + r];
                    let ire = &in_re[r * TILE..r * TILE + width];
                    let iim = &in_im[r * TILE..r * TILE + width];
                    for t in 0..width {
                        ore[t] = ore[t] + (fre * ire[t] - fim * iim[t]);
                        oim[t] = oim[t] + (fre * iim[t] + fim * ire[t]);
                    }
                }
            }

            // Scatter (forward: multiply by the twiddle on the way out).
            for k in 0..rows {
                for t in 0..width {
                    let mut z = Complex::new(out_re[k * TILE + t], out_im[k * TILE + t]);
                    if !inverse && !tables.unit_twiddles {
                        z = cmul(z, tables.twiddles[k * cols + col_j[t]]);
                    }
                    data[base[t] + k * cols] = z;
                }
            }
            c0 += width;
        }
        Ok(())
    }

    /// The forward transform in place: all stages in order. The result is in the plan's permuted
    /// order (position `P` holds frequency `plan.frequency_at(P)`).
    pub fn forward(&self, data: &mut [Complex<T>]) -> Result<(), CoreError> {
        self.check_len("data", data.len())?;
        for s in 0..self.plan.order() {
            self.run_stage(s, data, false)?;
        }
        Ok(())
    }

    /// The inverse transform in place, from the permuted order: all stages in reverse order,
    /// unnormalised (`inverse(forward(x)) = N * x`).
    pub fn inverse(&self, data: &mut [Complex<T>]) -> Result<(), CoreError> {
        self.check_len("data", data.len())?;
        for s in (0..self.plan.order()).rev() {
            self.run_stage(s, data, true)?;
        }
        Ok(())
    }

    /// The circular convolution of `data` with the filter whose spectrum is
    /// `spectrum_permuted` (length `N`, in the plan's permuted order), in place:
    /// forward, pointwise product, inverse, scale by `1 / N`.
    pub fn convolve_circular(
        &self,
        data: &mut [Complex<T>],
        spectrum_permuted: &[Complex<T>],
    ) -> Result<(), CoreError> {
        self.check_len("data", data.len())?;
        self.check_len("spectrum_permuted", spectrum_permuted.len())?;
        self.forward(data)?;
        for (x, h) in data.iter_mut().zip(spectrum_permuted) {
            *x = cmul(*x, *h);
        }
        self.inverse(data)?;
        let scale = T::from_f64(1.0 / self.plan.size().len() as f64);
        for x in data.iter_mut() {
            *x = Complex::new(x.re * scale, x.im * scale);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanLimits;
    use crate::size::FftSize;
    use crate::twiddle::root_of_unity;
    use num_complex::Complex64;
    use rand::Rng;

    fn random_signal(n: usize) -> Vec<Complex64> {
        let mut rng = rand::rng();
        (0..n)
            .map(|_| Complex64::new(rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)))
            .collect()
    }

    fn rel_l2(a: &[Complex64], b: &[Complex64]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).norm_sqr()).sum();
        let den: f64 = b.iter().map(|y| y.norm_sqr()).sum();
        (num / den).sqrt()
    }

    /// `W_N^m` for `m` in `0..N`, independent of the plan.
    fn roots(n: usize) -> Vec<Complex64> {
        (0..n).map(|m| root_of_unity(m as u64, n as u64)).collect()
    }

    /// The DFT of `x` at frequency `k`, directly (O(N)).
    fn dft_at(x: &[Complex64], w: &[Complex64], k: usize) -> Complex64 {
        let n = x.len();
        let mut idx = 0usize;
        let mut acc = Complex64::new(0.0, 0.0);
        for v in x {
            acc += v * w[idx];
            idx += k;
            if idx >= n {
                idx -= n;
            }
        }
        acc
    }

    fn distinct_plans(n: usize) -> Vec<Arc<MonarchPlan>> {
        let size = FftSize::new(n).unwrap();
        let mut plans: Vec<Arc<MonarchPlan>> = Vec::new();
        for limits in [
            PlanLimits::cuda_sm90(),
            PlanLimits::vulkan(49152),
            PlanLimits::cpu(),
        ] {
            let p = MonarchPlan::cached(size, &limits).unwrap();
            if !plans.iter().any(|q| q.factors() == p.factors()) {
                plans.push(p);
            }
        }
        plans
    }

    #[test]
    fn forward_matches_the_dft_for_every_size() {
        let mut rng = rand::rng();
        for size in FftSize::range(16, 1 << 22) {
            let n = size.len();
            let w = roots(n);
            for plan in distinct_plans(n) {
                let x = random_signal(n);
                let interp = PlanInterpreter::<f64>::new(Arc::clone(&plan));
                let mut y = x.clone();
                interp.forward(&mut y).unwrap();
                let freqs: Vec<usize> = if n <= 4096 {
                    (0..n).collect()
                } else {
                    (0..64)
                        .map(|_| rng.random_range(0..n))
                        .chain([0, 1, n / 2, n - 1])
                        .collect()
                };
                let want: Vec<Complex64> = freqs.iter().map(|&k| dft_at(&x, &w, k)).collect();
                let got: Vec<Complex64> = freqs.iter().map(|&k| y[plan.position_of(k)]).collect();
                let err = rel_l2(&got, &want);
                assert!(
                    err < 1e-12,
                    "N={n} factors={:?} err={err:e}",
                    plan.factors()
                );
            }
        }
    }

    #[test]
    fn inverse_undoes_forward_times_n() {
        for size in FftSize::range(16, 1 << 20) {
            let n = size.len();
            for plan in distinct_plans(n) {
                let x = random_signal(n);
                let interp = PlanInterpreter::<f64>::new(plan);
                let mut y = x.clone();
                interp.forward(&mut y).unwrap();
                interp.inverse(&mut y).unwrap();
                let scaled: Vec<Complex64> = y.iter().map(|z| z / n as f64).collect();
                assert!(rel_l2(&scaled, &x) < 1e-13, "N={n}");
            }
        }
    }

    #[test]
    fn f32_tracks_f64() {
        for size in FftSize::range(16, 1 << 20) {
            let n = size.len();
            let plan = MonarchPlan::cached(size, &PlanLimits::cuda_sm90()).unwrap();
            let x = random_signal(n);
            let i64 = PlanInterpreter::<f64>::new(Arc::clone(&plan));
            let i32 = PlanInterpreter::<f32>::new(plan);
            let mut y = x.clone();
            i64.forward(&mut y).unwrap();
            let mut y32: Vec<Complex<f32>> = x
                .iter()
                .map(|z| Complex::new(z.re as f32, z.im as f32))
                .collect();
            i32.forward(&mut y32).unwrap();
            let back: Vec<Complex64> = y32
                .iter()
                .map(|z| Complex64::new(z.re.into(), z.im.into()))
                .collect();
            let err = rel_l2(&back, &y);
            assert!(err < 1e-5, "N={n} err={err:e}");
            i32.inverse(&mut y32).unwrap();
            let round: Vec<Complex64> = y32
                .iter()
                .map(|z| Complex64::new(z.re as f64 / n as f64, z.im as f64 / n as f64))
                .collect();
            assert!(rel_l2(&round, &x) < 1e-5, "N={n}");
        }
    }

    #[test]
    fn stages_are_the_documented_matrix_products() {
        // Stage 0 of an N = 256 = 16 x 16 plan, written out naively from the stage model.
        let plan =
            MonarchPlan::cached(FftSize::new(256).unwrap(), &PlanLimits::cuda_sm90()).unwrap();
        assert_eq!(plan.factors(), &[16, 16]);
        let x = random_signal(256);
        let mut y = x.clone();
        let interp = PlanInterpreter::<f64>::new(Arc::clone(&plan));
        interp.run_stage(0, &mut y, false).unwrap();
        for k in 0..16 {
            for j in 0..16 {
                let mut acc = Complex64::new(0.0, 0.0);
                for r in 0..16 {
                    acc += root_of_unity((k * r) as u64, 16) * x[16 * r + j];
                }
                acc *= root_of_unity((j * k) as u64, 256);
                assert!((y[16 * k + j] - acc).norm() < 1e-13);
            }
        }
        // The inverse stage undoes it (times N_s).
        interp.run_stage(0, &mut y, true).unwrap();
        for (a, b) in y.iter().zip(&x) {
            assert!((a / 16.0 - b).norm() < 1e-13);
        }
    }

    #[test]
    fn wrong_lengths_and_stages_are_errors() {
        let plan = MonarchPlan::cached(FftSize::new(64).unwrap(), &PlanLimits::cpu()).unwrap();
        let interp = PlanInterpreter::<f32>::new(plan);
        let mut short = vec![Complex::new(0.0f32, 0.0); 63];
        assert!(matches!(
            interp.forward(&mut short),
            Err(CoreError::InvalidArgument { arg: "data", .. })
        ));
        assert!(interp.inverse(&mut short).is_err());
        let mut ok = vec![Complex::new(0.0f32, 0.0); 64];
        assert!(matches!(
            interp.run_stage(9, &mut ok, false),
            Err(CoreError::InvalidArgument { arg: "stage", .. })
        ));
        assert!(matches!(
            interp.convolve_circular(&mut ok, &short),
            Err(CoreError::InvalidArgument {
                arg: "spectrum_permuted",
                ..
            })
        ));
    }
}
