//! Naive f64 oracles: the DFT, the direct O(L*K) convolution, and the whole-problem reference;
//! for long frequency-sparse checks, a textbook f64 radix-2 FFT for the band-limited filter and
//! the band-limited definition at sampled positions.
//!
//! These share no code with any fast path; tests compare every backend against them.

use crate::{problem::ConvGeometry, Complex64, ConvMode, ConvSpec};

/// `exp(sign * 2*pi*i * num / den)` with `num` reduced mod `den` in integers first.
fn unit(num: u128, den: u128, sign: f64) -> Complex64 {
    let r = (num % den) as f64 / den as f64;
    let a = sign * 2.0 * std::f64::consts::PI * r;
    Complex64::new(a.cos(), a.sin())
}

/// Naive DFT: `X[k] = sum_n x[n] exp(-2 pi i n k / N)` (or `+` and unnormalised for `inverse`).
pub fn naive_dft(x: &[Complex64], inverse: bool) -> Vec<Complex64> {
    let n = x.len() as u128;
    let sign = if inverse { 1.0 } else { -1.0 };
    (0..n)
        .map(|k| {
            x.iter()
                .enumerate()
                .map(|(j, &v)| v * unit(j as u128 * k, n, sign))
                .sum()
        })
        .collect()
}

/// Direct causal convolution of one row: `y[t] = sum_{s<=min(t,K-1)} k[s] u[t-s]`, `t < L`.
pub fn direct_causal(u: &[f64], k: &[f64]) -> Vec<f64> {
    (0..u.len())
        .map(|t| {
            k.iter()
                .take(t + 1)
                .enumerate()
                .map(|(s, &ks)| ks * u[t - s])
                .sum()
        })
        .collect()
}

/// Direct circular convolution of one row: `y[t] = sum_{s<K} k[s] u[(t-s) mod L]`.
pub fn direct_circular(u: &[f64], k: &[f64]) -> Vec<f64> {
    let l = u.len();
    (0..l)
        .map(|t| {
            k.iter()
                .enumerate()
                .map(|(s, &ks)| ks * u[(t + l - s % l) % l])
                .sum()
        })
        .collect()
}

/// The periodic time-domain filter of length `N` whose spectrum is the DFT of `k` (zero padded to
/// `N`) with every bin the geometry drops set to zero. Costs `O(K*m + N*m)`.
pub fn band_limited_filter(k: &[f64], geometry: &ConvGeometry) -> Vec<f64> {
    let n = geometry.n();
    let kept: Vec<usize> = (0..n).filter(|&b| geometry.keeps_bin(b)).collect();
    let spectrum: Vec<Complex64> = kept
        .iter()
        .map(|&b| {
            k.iter()
                .enumerate()
                .map(|(s, &v)| unit(s as u128 * b as u128, n as u128, -1.0) * v)
                .sum()
        })
        .collect();
    (0..n)
        .map(|t| {
            let acc: Complex64 = kept
                .iter()
                .zip(&spectrum)
                .map(|(&b, &x)| x * unit(t as u128 * b as u128, n as u128, 1.0))
                .sum();
            acc.re / n as f64
        })
        .collect()
}

/// One row through the blocked frequency-sparse definition (see [`crate::problem`]): each
/// overlap-save block is a length-`N` circular convolution with the band-limited filter.
pub fn direct_band_limited(u: &[f64], k_periodic: &[f64], geometry: &ConvGeometry) -> Vec<f64> {
    let l = u.len();
    let n = geometry.n();
    let mut y = vec![0.0; l];
    let mut segment = vec![0.0; n];
    for j in 0..geometry.blocks {
        let (start, outputs) = geometry.block_range(j, l);
        for (p, x) in segment.iter_mut().enumerate() {
            *x = geometry
                .segment_source(start, outputs, p, l)
                .map_or(0.0, |i| u[i]);
        }
        for p in 0..outputs {
            // y[p] = sum_{s < N} kp[s] segment[(p - s) mod N], split at the wrap.
            let head: f64 = (0..=p).map(|s| k_periodic[s] * segment[p - s]).sum();
            let tail: f64 = (p + 1..n).map(|s| k_periodic[s] * segment[p + n - s]).sum();
            y[start + p] = head + tail;
        }
    }
    y
}

/// [`band_limited_filter`] through an f64 FFT ([`fft_f64`]): `Re(IDFT(mask * DFT(k padded to
/// N))) / N`, in `O(N log N)` (the direct sums cost `K` times the kept bins).
pub fn band_limited_filter_fft(k: &[f64], g: &ConvGeometry) -> Vec<f64> {
    let n = g.n();
    let mut x = vec![Complex64::new(0.0, 0.0); n];
    for (d, &v) in x.iter_mut().zip(k) {
        d.re = v;
    }
    fft_f64(&mut x, false);
    for (b, v) in x.iter_mut().enumerate() {
        if !g.keeps_bin(b) {
            *v = Complex64::new(0.0, 0.0);
        }
    }
    fft_f64(&mut x, true);
    x.iter().map(|v| v.re / n as f64).collect()
}

/// In-place iterative radix-2 DFT of a power-of-two length (`exp(-2 pi i ...)`, or `+` and
/// unnormalised for `inverse`); every twiddle computed directly from its exact angle in f64. A
/// textbook transform of its own, sharing nothing with the plans or the backends' FFTs.
pub fn fft_f64(x: &mut [Complex64], inverse: bool) {
    let n = x.len();
    assert!(
        n.is_power_of_two(),
        "fft_f64: length {n} is not a power of two"
    );
    if n < 2 {
        return;
    }
    let bits = n.trailing_zeros();
    for i in 0..n {
        let j = i.reverse_bits() >> (usize::BITS - bits);
        if j > i {
            x.swap(i, j);
        }
    }
    let sign = if inverse { 1.0 } else { -1.0 };
    let twiddles: Vec<Complex64> = (0..n / 2)
        .map(|j| {
            let a = sign * 2.0 * std::f64::consts::PI * (j as f64 / n as f64);
            Complex64::new(a.cos(), a.sin())
        })
        .collect();
    let mut len = 2;
    while len <= n {
        let (half, stride) = (len / 2, n / len);
        for block in x.chunks_exact_mut(len) {
            let (lo, hi) = block.split_at_mut(half);
            for (j, (a, b)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                let t = *b * twiddles[j * stride];
                *b = *a - t;
                *a += t;
            }
        }
        len *= 2;
    }
}

/// Outputs `positions` of one row through the blocked band-limited definition
/// ([`direct_band_limited`] evaluated at those positions only).
pub fn direct_band_limited_at(
    x: &[f64],
    k_periodic: &[f64],
    g: &ConvGeometry,
    positions: &[usize],
) -> Vec<f64> {
    let (l, n) = (x.len(), g.n());
    let mut segment = vec![0.0; n];
    let mut current = None;
    positions
        .iter()
        .map(|&t| {
            let j = t / g.block_len;
            let (start, outputs) = g.block_range(j, l);
            if current != Some(j) {
                for (p, v) in segment.iter_mut().enumerate() {
                    *v = g.segment_source(start, outputs, p, l).map_or(0.0, |i| x[i]);
                }
                current = Some(j);
            }
            // y[p] = sum_{s < N} kp[s] segment[(p - s) mod N], split at the wrap.
            let p = t - start;
            let head: f64 = (0..=p).map(|s| k_periodic[s] * segment[p - s]).sum();
            let tail: f64 = (p + 1..n).map(|s| k_periodic[s] * segment[p + n - s]).sum();
            head + tail
        })
        .collect()
}

/// Gates for the reference: `(pregate, postgate)`, each `[B, H, L]`.
pub type ReferenceGates<'a> = (&'a [f64], &'a [f64]);

/// The whole problem in f64: `u` is `[B, H, L]`, `k` is `[H, K]`, result `[B, H, L]`.
///
/// Dense problems use the direct convolution; frequency-sparse ones the blocked band-limited
/// definition, with the band-limited filter through the f64 FFT ([`band_limited_filter_fft`],
/// checked against the direct sums of [`band_limited_filter`] by this module's tests; the
/// direct sums cost a minute at N = 64K). Inputs are taken as given (round them to the
/// problem's dtype first).
pub fn reference_forward(
    spec: &ConvSpec,
    u: &[f64],
    k: &[f64],
    gates: Option<ReferenceGates<'_>>,
) -> Vec<f64> {
    let (h_count, l, kl) = (spec.channels(), spec.length(), spec.filter_len());
    let g = spec.geometry();
    let periodic: Option<Vec<Vec<f64>>> = g.is_sparse().then(|| {
        (0..h_count)
            .map(|h| band_limited_filter_fft(&k[h * kl..(h + 1) * kl], g))
            .collect()
    });
    let mut y = vec![0.0; spec.io_len()];
    for row in 0..spec.rows() {
        let h = row % h_count;
        let span = row * l..(row + 1) * l;
        let x: Vec<f64> = match gates {
            Some((pre, _)) => u[span.clone()]
                .iter()
                .zip(&pre[span.clone()])
                .map(|(a, b)| a * b)
                .collect(),
            None => u[span.clone()].to_vec(),
        };
        let kh = &k[h * kl..(h + 1) * kl];
        let out = match (&periodic, spec.mode()) {
            (Some(p), _) => direct_band_limited(&x, &p[h], g),
            (None, ConvMode::Causal) => direct_causal(&x, kh),
            (None, ConvMode::Circular) => direct_circular(&x, kh),
        };
        let dst = &mut y[span.clone()];
        match gates {
            Some((_, post)) => {
                for ((d, o), q) in dst.iter_mut().zip(out).zip(&post[span]) {
                    *d = o * q;
                }
            }
            None => dst.copy_from_slice(&out),
        }
    }
    y
}

/// Relative L2 error `||got - want|| / ||want||` (absolute when `want` is zero). NaN anywhere
/// in `got` gives NaN, so a NaN never passes a `<=` check.
pub fn relative_l2_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "relative_l2_error: length mismatch");
    let mut num = 0.0;
    let mut den = 0.0;
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::NAN;
        }
        num += (g - w) * (g - w);
        den += w * w;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConvSpec;

    #[test]
    fn naive_dft_round_trips() {
        let x: Vec<Complex64> = (0..12)
            .map(|i| Complex64::new(i as f64, -(i as f64) * 0.5))
            .collect();
        let back = naive_dft(&naive_dft(&x, false), true);
        for (a, b) in x.iter().zip(back) {
            assert!((a * 12.0 - b).norm() < 1e-9);
        }
    }

    #[test]
    fn direct_convolutions_match_definitions() {
        let u = [1.0, 2.0, 3.0, 4.0];
        let k = [1.0, -1.0];
        assert_eq!(direct_causal(&u, &k), vec![1.0, 1.0, 1.0, 1.0]);
        assert_eq!(direct_circular(&u, &k), vec![-3.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn band_limited_with_all_bins_is_the_direct_convolution() {
        // A dense geometry passed through the band-limited path must equal direct_causal.
        let spec = ConvSpec::builder(1, 1, 50, 7).build().unwrap();
        let g = spec.geometry();
        let u: Vec<f64> = (0..50).map(|i| ((i * 37 % 11) as f64) - 5.0).collect();
        let k: Vec<f64> = (0..7).map(|i| 1.0 / (1.0 + i as f64)).collect();
        let periodic = band_limited_filter(&k, g);
        let got = direct_band_limited(&u, &periodic, g);
        assert!(relative_l2_error(&got, &direct_causal(&u, &k)) < 1e-12);
        let spec = ConvSpec::builder(1, 1, 50, 7).circular().build().unwrap();
        let got = direct_band_limited(&u, &periodic, spec.geometry());
        assert!(relative_l2_error(&got, &direct_circular(&u, &k)) < 1e-12);
    }

    #[test]
    fn band_limited_filter_through_the_fft_is_the_direct_sums() {
        // Every N from 16 to 2048, kept fractions from one bin group to all, K from 1 to N;
        // causal and circular geometries.
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        for log2n in 3..=10u32 {
            let l = 1usize << log2n;
            for keep in [0.01, 0.25, 0.5, 0.9] {
                for (kl, circular) in [(1, false), (l / 3 + 1, false), (l, false), (l, true)] {
                    let mut b = ConvSpec::builder(1, 1, l, kl).keep_frequencies(keep);
                    if circular {
                        b = b.circular();
                    }
                    let spec = b.build().unwrap();
                    let g = spec.geometry();
                    assert!(g.is_sparse() || keep == 0.9, "{g:?}");
                    let k: Vec<f64> = (0..kl).map(|_| next()).collect();
                    let direct = band_limited_filter(&k, g);
                    let fft = band_limited_filter_fft(&k, g);
                    let err = relative_l2_error(&fft, &direct);
                    assert!(err < 1e-12, "N = {}, keep {keep}, K = {kl}: {err:e}", g.n());
                }
            }
        }
    }

    #[test]
    fn nan_never_passes() {
        assert!(relative_l2_error(&[f64::NAN], &[1.0]).is_nan());
    }
}
