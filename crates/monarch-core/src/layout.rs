//! The permuted filter-spectrum layout that matches a plan, and conversions between the natural
//! (frequency) order and a plan's permuted order.
//!
//! Position `P` of a permuted buffer holds frequency `plan.frequency_at(P)`: exactly where the
//! plan's forward stages leave that frequency, so a convolution multiplies pointwise without any
//! reordering.

use std::sync::Arc;

use num_complex::Complex64;

use crate::error::CoreError;
use crate::interpret::PlanInterpreter;
use crate::plan::MonarchPlan;

fn check_len(plan: &MonarchPlan, arg: &'static str, len: usize) -> Result<(), CoreError> {
    let n = plan.size().len();
    if len != n {
        return Err(CoreError::invalid(
            arg,
            format!("length {len}, expected the FFT size {n}"),
        ));
    }
    Ok(())
}

/// The length-`N` DFT of the real filter `k` zero-padded to `N` (`k.len() <= N`, finite values),
/// in the plan's permuted order.
///
/// Computed in f64 by the plan interpreter's forward transform (`O(N * sum of factors)`), so it is
/// exact to about f64 rounding; meant for tests and for preparing filters once.
pub fn permuted_filter_spectrum(
    plan: &MonarchPlan,
    k: &[f64],
) -> Result<Vec<Complex64>, CoreError> {
    let n = plan.size().len();
    if k.len() > n {
        return Err(CoreError::invalid(
            "k",
            format!("filter length {} exceeds the FFT size {n}", k.len()),
        ));
    }
    if let Some(i) = k.iter().position(|v| !v.is_finite()) {
        return Err(CoreError::invalid(
            "k",
            format!("filter tap {i} is not finite ({})", k[i]),
        ));
    }
    let mut data = vec![Complex64::new(0.0, 0.0); n];
    for (d, &v) in data.iter_mut().zip(k) {
        d.re = v;
    }
    PlanInterpreter::<f64>::new(Arc::new(plan.clone())).forward(&mut data)?;
    Ok(data)
}

/// Reorders a permuted buffer (length `N`) into natural frequency order:
/// `out[k] = permuted[plan.position_of(k)]`.
pub fn to_natural_order<T: Clone>(plan: &MonarchPlan, permuted: &[T]) -> Result<Vec<T>, CoreError> {
    check_len(plan, "permuted", permuted.len())?;
    Ok((0..permuted.len())
        .map(|k| permuted[plan.position_of(k)].clone())
        .collect())
}

/// Reorders a natural-order buffer (length `N`) into the plan's permuted order:
/// `out[P] = natural[plan.frequency_at(P)]`.
pub fn to_permuted_order<T: Clone>(plan: &MonarchPlan, natural: &[T]) -> Result<Vec<T>, CoreError> {
    check_len(plan, "natural", natural.len())?;
    Ok((0..natural.len())
        .map(|p| natural[plan.frequency_at(p)].clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanLimits;
    use crate::size::FftSize;
    use crate::twiddle::root_of_unity;
    use num_complex::Complex;
    use rand::Rng;

    fn plans(n: usize) -> Vec<MonarchPlan> {
        let size = FftSize::new(n).unwrap();
        [
            PlanLimits::cuda_sm90(),
            PlanLimits::vulkan(49152),
            PlanLimits::cpu(),
        ]
        .iter()
        .map(|l| MonarchPlan::new(size, l).unwrap())
        .collect()
    }

    #[test]
    fn spectrum_is_the_dft_of_the_padded_filter() {
        let mut rng = rand::rng();
        for n in [16usize, 128, 1024] {
            for plan in plans(n) {
                let k: Vec<f64> = (0..n / 2 + 3)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let spec = permuted_filter_spectrum(&plan, &k).unwrap();
                let natural = to_natural_order(&plan, &spec).unwrap();
                for (f, z) in natural.iter().enumerate() {
                    let want: Complex64 = k
                        .iter()
                        .enumerate()
                        .map(|(t, &v)| v * root_of_unity((t * f) as u64, n as u64))
                        .sum();
                    assert!((z - want).norm() < 1e-12, "N={n} f={f}");
                }
                assert_eq!(to_permuted_order(&plan, &natural).unwrap(), spec);
            }
        }
    }

    #[test]
    fn convolution_matches_direct_circular_convolution() {
        let mut rng = rand::rng();
        for n in [16usize, 64, 512, 4096, 1 << 14] {
            for plan in plans(n) {
                let taps = (n / 3).max(1);
                let k: Vec<f64> = (0..taps).map(|_| rng.random_range(-1.0..1.0)).collect();
                let u: Vec<Complex64> = (0..n)
                    .map(|_| {
                        Complex64::new(rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0))
                    })
                    .collect();
                // Direct O(N * K) circular convolution.
                let mut want = vec![Complex64::new(0.0, 0.0); n];
                for (t, w) in want.iter_mut().enumerate() {
                    for (j, &kj) in k.iter().enumerate() {
                        *w += u[(t + n - j) % n] * kj;
                    }
                }
                let spec = permuted_filter_spectrum(&plan, &k).unwrap();
                let interp = PlanInterpreter::<f64>::new(Arc::new(plan.clone()));
                let mut y = u.clone();
                interp.convolve_circular(&mut y, &spec).unwrap();
                let err: f64 = y.iter().zip(&want).map(|(a, b)| (a - b).norm_sqr()).sum();
                let den: f64 = want.iter().map(|b| b.norm_sqr()).sum();
                assert!((err / den).sqrt() < 1e-12, "N={n}");

                // f32 interpreter with an f32-rounded spectrum.
                let spec32: Vec<Complex<f32>> = spec
                    .iter()
                    .map(|z| Complex::new(z.re as f32, z.im as f32))
                    .collect();
                let mut y32: Vec<Complex<f32>> = u
                    .iter()
                    .map(|z| Complex::new(z.re as f32, z.im as f32))
                    .collect();
                PlanInterpreter::<f32>::new(Arc::new(plan))
                    .convolve_circular(&mut y32, &spec32)
                    .unwrap();
                let err: f64 = y32
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (Complex64::new(a.re.into(), a.im.into()) - b).norm_sqr())
                    .sum();
                assert!((err / den).sqrt() < 1e-5, "N={n} (f32)");
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let plan = MonarchPlan::new(FftSize::new(16).unwrap(), &PlanLimits::cpu()).unwrap();
        assert!(matches!(
            permuted_filter_spectrum(&plan, &[0.0; 17]),
            Err(CoreError::InvalidArgument { arg: "k", .. })
        ));
        assert!(permuted_filter_spectrum(&plan, &[f64::NAN]).is_err());
        assert!(permuted_filter_spectrum(&plan, &[])
            .unwrap()
            .iter()
            .all(|z| z.norm() == 0.0));
        assert!(to_natural_order(&plan, &[0u8; 15]).is_err());
        assert!(to_permuted_order(&plan, &[0u8; 32]).is_err());
    }
}
