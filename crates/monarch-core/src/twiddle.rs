//! DFT matrices and per-stage twiddle tables, generated in f64 and rounded once to the target type.
//!
//! Every entry is `exp(-2 pi i m / n)` with the index product `m` reduced mod `n` in integers
//! (u128, no overflow) before the angle is formed, so large `N` keeps full accuracy; values are
//! never produced by repeated multiplication. Multiples of a quarter turn are exact.

use num_complex::{Complex, Complex64};

use crate::element::Element;
use crate::plan::MonarchPlan;

/// `exp(-2 pi i num / den)` in f64, with `num` reduced mod `den` first (`den = 0` gives `1`).
///
/// Angles that are multiples of a quarter turn give exact `1, -i, -1, i`; others are computed as
/// `sin_cos` of an angle reduced to `[-pi, pi]`.
pub fn root_of_unity(num: u64, den: u64) -> Complex64 {
    if den == 0 {
        return Complex64::new(1.0, 0.0);
    }
    let r = num % den;
    // Exact quarter turns: 4 r / den in {0, 1, 2, 3}.
    let four_r = u128::from(r) * 4;
    if four_r % u128::from(den) == 0 {
        return match four_r / u128::from(den) {
            0 => Complex64::new(1.0, 0.0),
            1 => Complex64::new(0.0, -1.0),
            2 => Complex64::new(-1.0, 0.0),
            _ => Complex64::new(0.0, 1.0),
        };
    }
    // Signed residue in (-den/2, den/2] keeps the angle small.
    let signed = if r > den / 2 {
        -((den - r) as f64)
    } else {
        r as f64
    };
    let angle = -2.0 * std::f64::consts::PI * signed / den as f64;
    let (s, c) = angle.sin_cos();
    Complex64::new(c, s)
}

/// `W_n^m` conjugated when `inverse` (`m` reduced mod `n`).
fn root(m: u128, n: u128, inverse: bool) -> Complex64 {
    // m mod n < n <= u64::MAX because n comes from a usize.
    let w = root_of_unity((m % n) as u64, n as u64);
    if inverse {
        w.conj()
    } else {
        w
    }
}

/// The `n x n` DFT matrix in f64, row-major: entry `[k, r]` is `exp(-2 pi i ((k r) mod n) / n)`,
/// or its conjugate when `inverse`.
pub fn dft_matrix_f64(n: usize, inverse: bool) -> Vec<Complex64> {
    let nn = n as u128;
    (0..n)
        .flat_map(|k| (0..n).map(move |r| root(k as u128 * r as u128, nn, inverse)))
        .collect()
}

/// The `n x n` DFT matrix rounded once to `T` (see [`dft_matrix_f64`]).
pub fn dft_matrix<T: Element>(n: usize, inverse: bool) -> Vec<Complex<T>> {
    round_all(&dft_matrix_f64(n, inverse), T::from_f64)
}

/// The twiddles of `stage` in f64: length `M_s`, element `[k, j]` (at `k * M_{s+1} + j`) is
/// `W_{M_s}^{(j k) mod M_s}`, conjugated when `inverse`. Empty when `stage >= plan.order()`.
/// For the last stage (`M_{s+1} = 1`) all entries are `1`.
pub fn stage_twiddles_f64(plan: &MonarchPlan, stage: usize, inverse: bool) -> Vec<Complex64> {
    if stage >= plan.order() {
        return Vec::new();
    }
    let m = plan.block_len(stage);
    let cols = plan.stride(stage);
    let mm = m as u128;
    (0..m)
        .map(|idx| {
            let (k, j) = (idx / cols, idx % cols);
            root(k as u128 * j as u128, mm, inverse)
        })
        .collect()
}

/// The twiddles of `stage` rounded once to `T` (see [`stage_twiddles_f64`]).
pub fn stage_twiddles<T: Element>(
    plan: &MonarchPlan,
    stage: usize,
    inverse: bool,
) -> Vec<Complex<T>> {
    round_all(&stage_twiddles_f64(plan, stage, inverse), T::from_f64)
}

/// Rounds every component of `values` once with `round`.
pub(crate) fn round_all<T>(values: &[Complex64], round: impl Fn(f64) -> T) -> Vec<Complex<T>> {
    values
        .iter()
        .map(|z| Complex::new(round(z.re), round(z.im)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanLimits;
    use crate::size::FftSize;
    use half::{bf16, f16};

    /// Independent angle: `2 pi m / n` formed from the integer residue only (not reduced to
    /// `[-pi, pi]`, so this reference itself is off by a few f64 ulps: compare with 4e-15).
    fn exact(m: u128, n: u128, inverse: bool) -> Complex64 {
        let a = 2.0 * std::f64::consts::PI * ((m % n) as f64) / n as f64;
        let s = if inverse { 1.0 } else { -1.0 };
        Complex64::new(a.cos(), s * a.sin())
    }

    const F64_TOL: f64 = 4e-15;

    fn check<T: Copy + std::fmt::Debug>(
        got: &[Complex<T>],
        want: &[Complex64],
        tol: f64,
        widen: impl Fn(T) -> f64,
    ) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((widen(g.re) - w.re).abs() <= tol, "{g:?} vs {w}");
            assert!((widen(g.im) - w.im).abs() <= tol, "{g:?} vs {w}");
        }
    }

    fn check_rounded_once<T: Element>(got: &[Complex<T>], f64s: &[Complex64]) {
        for (g, w) in got.iter().zip(f64s) {
            assert_eq!(g.re, T::from_f64(w.re));
            assert_eq!(g.im, T::from_f64(w.im));
        }
    }

    #[test]
    fn root_of_unity_reduces_and_is_exact_on_quarters() {
        assert_eq!(root_of_unity(0, 8), Complex64::new(1.0, 0.0));
        assert_eq!(root_of_unity(2, 8), Complex64::new(0.0, -1.0));
        assert_eq!(root_of_unity(4, 8), Complex64::new(-1.0, 0.0));
        assert_eq!(root_of_unity(6 + 8 * 1000, 8), Complex64::new(0.0, 1.0));
        let big = 1u64 << 27;
        let z = root_of_unity(u64::MAX, big);
        let w = exact(u128::from(u64::MAX), u128::from(big), false);
        assert!((z - w).norm() < F64_TOL);
        for m in 0..1000u64 {
            let z = root_of_unity(m * 7919, 1000);
            let e = exact(u128::from(m * 7919), 1000, false);
            assert!((z - e).norm() < F64_TOL, "{m} {z} {e}");
        }
    }

    #[test]
    fn dft_matrices_round_once_within_dtype_precision() {
        for n in [2usize, 4, 8, 16, 32, 64] {
            for inverse in [false, true] {
                let want: Vec<Complex64> = (0..n * n)
                    .map(|i| exact((i / n * (i % n)) as u128, n as u128, inverse))
                    .collect();
                let f64s = dft_matrix_f64(n, inverse);
                check(&f64s, &want, F64_TOL, |x| x);
                let a = dft_matrix::<f32>(n, inverse);
                check(&a, &want, 6e-8, Element::to_f64);
                check_rounded_once(&a, &f64s);
                let b = dft_matrix::<f16>(n, inverse);
                check(&b, &want, 4.9e-4, Element::to_f64);
                check_rounded_once(&b, &f64s);
                let c = dft_matrix::<bf16>(n, inverse);
                check(&c, &want, 3.9e-3, Element::to_f64);
                check_rounded_once(&c, &f64s);
            }
        }
    }

    #[test]
    fn stage_twiddles_follow_the_stage_model() {
        for n in [16usize, 1 << 10, 1 << 16] {
            let plan = MonarchPlan::new(FftSize::new(n).unwrap(), &PlanLimits::cpu()).unwrap();
            for s in 0..plan.order() {
                let m = plan.block_len(s);
                let cols = plan.stride(s);
                for inverse in [false, true] {
                    let want: Vec<Complex64> = (0..m)
                        .map(|i| exact(((i / cols) * (i % cols)) as u128, m as u128, inverse))
                        .collect();
                    let f64s = stage_twiddles_f64(&plan, s, inverse);
                    check(&f64s, &want, F64_TOL, |x| x);
                    let a = stage_twiddles::<f32>(&plan, s, inverse);
                    check(&a, &want, 6e-8, Element::to_f64);
                    check_rounded_once(&a, &f64s);
                    let b = stage_twiddles::<f16>(&plan, s, inverse);
                    check(&b, &want, 4.9e-4, Element::to_f64);
                    check_rounded_once(&b, &f64s);
                    let c = stage_twiddles::<bf16>(&plan, s, inverse);
                    check(&c, &want, 3.9e-3, Element::to_f64);
                    check_rounded_once(&c, &f64s);
                }
            }
            let last = stage_twiddles_f64(&plan, plan.order() - 1, false);
            assert!(last.iter().all(|z| *z == Complex64::new(1.0, 0.0)));
            assert!(stage_twiddles_f64(&plan, plan.order(), false).is_empty());
        }
    }
}
