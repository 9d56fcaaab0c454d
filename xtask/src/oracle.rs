//! The f64 oracle on sampled rows: direct causal convolution of the dtype-rounded inputs, or for
//! a frequency-sparse problem the band-limited reference the conformance tests use.
//!
//! Dense: a row whose direct convolution costs at most [`FULL_ROW_MACS`] multiply-adds is
//! computed whole with `conv::reference::direct_causal`. Longer rows (K = L = N/2 makes the
//! direct convolution quadratic: 1.4e11 multiply-adds per row at N = 1M) are checked at
//! [`SAMPLED_POSITIONS`] evenly spread output positions (the first and last included), each the
//! same direct sum `y[t] = sum_{s <= min(t, K-1)} k[s] x[t-s]` in f64.
//!
//! Sparse (`spec.geometry().is_sparse()`): the definition of `conv::reference::reference_forward`
//! for sparse problems, i.e. exactly the kept bins: each overlap-save block is a length-`N`
//! circular convolution with the channel's band-limited periodic filter (the DFT of `k` with the
//! dropped bins zeroed, transformed back). That filter comes from
//! `conv::reference::band_limited_filter` itself while its naive DFT costs at most
//! [`EXACT_BAND_LIMITED_TERMS`] terms, and otherwise from the same definition evaluated with the
//! reference's own f64 radix-2 FFT (`conv::reference::band_limited_filter_fft`, sharing no code
//! with any backend; the unit tests check it against `band_limited_filter`). Rows are then
//! computed whole with `conv::reference::direct_band_limited` while that costs at most
//! [`FULL_ROW_MACS`] (`L * N`), otherwise at the sampled positions
//! (`conv::reference::direct_band_limited_at`).

use conv::reference::{
    band_limited_filter, band_limited_filter_fft, direct_band_limited, direct_band_limited_at,
    direct_causal, direct_circular, relative_l2_error,
};
use conv::{ConvGeometry, ConvSpec, Element};
use rand::Rng;

/// Rows up to this many multiply-adds are checked whole.
pub const FULL_ROW_MACS: usize = 1 << 26;
/// Output positions checked per row beyond that.
pub const SAMPLED_POSITIONS: usize = 256;
/// Rows checked per case (first, last and random ones; fewer when there are fewer rows).
pub const SAMPLED_ROWS: usize = 4;
/// Sparse problems: `(K + N) * kept full-spectrum bins` up to which the band-limited filter is
/// computed with the naive DFT of `conv::reference::band_limited_filter` (beyond: an f64 FFT).
pub const EXACT_BAND_LIMITED_TERMS: usize = 1 << 24;

/// The expected outputs of one sampled row.
#[derive(Debug, Clone)]
pub struct RowCheck {
    pub row: usize,
    /// `None`: the whole row; otherwise the output positions `want` holds.
    pub positions: Option<Vec<usize>>,
    pub want: Vec<f64>,
}

/// Up to [`SAMPLED_ROWS`] distinct row indices: the first, the last and random ones.
pub fn sample_rows(rows: usize, rng: &mut impl Rng) -> Vec<usize> {
    let want = SAMPLED_ROWS.min(rows);
    let mut picked = vec![0];
    if rows > 1 {
        picked.push(rows - 1);
    }
    while picked.len() < want {
        let r = rng.random_range(0..rows);
        if !picked.contains(&r) {
            picked.push(r);
        }
    }
    picked.sort_unstable();
    picked
}

/// Multiply-adds of the direct causal convolution of one row.
fn row_macs(l: usize, k: usize) -> usize {
    // sum_{t < L} min(t + 1, K)
    let ramp = k.min(l);
    ramp * (ramp + 1) / 2 + (l - ramp) * k
}

/// Output positions checked for rows of length `l` with filters of length `k` (a circular
/// convolution costs `l * k` multiply-adds per row).
pub fn positions(l: usize, k: usize, circular: bool) -> Option<Vec<usize>> {
    let macs = if circular {
        l.saturating_mul(k)
    } else {
        row_macs(l, k)
    };
    (macs > FULL_ROW_MACS).then(|| spread(l))
}

/// Output positions checked for rows of length `l` of a sparse problem with geometry `g`
/// (`direct_band_limited` costs `N` multiply-adds per output).
pub fn sparse_positions(l: usize, g: &ConvGeometry) -> Option<Vec<usize>> {
    (l.saturating_mul(g.n()) > FULL_ROW_MACS).then(|| spread(l))
}

/// [`SAMPLED_POSITIONS`] positions evenly spread over `[0, l)`, both ends included.
fn spread(l: usize) -> Vec<usize> {
    let p = SAMPLED_POSITIONS.min(l);
    let mut v: Vec<usize> = (0..p).map(|i| i * (l - 1) / (p - 1).max(1)).collect();
    v.dedup();
    v
}

/// The band-limited periodic filter of one channel (`conv::reference::band_limited_filter`'s
/// definition): the naive DFT while it is cheap, the f64 FFT beyond.
pub fn periodic_filter(k: &[f64], g: &ConvGeometry) -> Vec<f64> {
    let kept = (0..g.n()).filter(|&b| g.keeps_bin(b)).count();
    if (k.len() + g.n()).saturating_mul(kept) <= EXACT_BAND_LIMITED_TERMS {
        band_limited_filter(k, g)
    } else {
        band_limited_filter_fft(k, g)
    }
}

/// The reference outputs of `rows` (row indices into `[B*H, L]`), computed in parallel: the
/// dense direct convolution, or the band-limited one for a frequency-sparse `spec` (module
/// docs). Causal problems, and dense circular ones with `N = L` (`--circular`).
pub fn reference_rows<T: Element>(
    spec: &ConvSpec,
    u: &[T],
    k: &[f32],
    gates: Option<(&[T], &[T])>,
    rows: &[usize],
) -> Vec<RowCheck> {
    let (l, kl, h_count) = (spec.length(), spec.filter_len(), spec.channels());
    let g = spec.geometry();
    let sparse = g.is_sparse();
    let circular = spec.mode() == conv::ConvMode::Circular;
    let positions = if sparse {
        sparse_positions(l, g)
    } else {
        positions(l, kl, circular)
    };
    let one = |row: usize| -> RowCheck {
        let span = row * l..(row + 1) * l;
        let h = row % h_count;
        let kh: Vec<f64> = k[h * kl..(h + 1) * kl].iter().map(|&x| x as f64).collect();
        let x: Vec<f64> = match gates {
            Some((pre, _)) => u[span.clone()]
                .iter()
                .zip(&pre[span.clone()])
                .map(|(a, b)| a.to_f64() * b.to_f64())
                .collect(),
            None => u[span.clone()].iter().map(|a| a.to_f64()).collect(),
        };
        let post = |t: usize| gates.map_or(1.0, |(_, post)| post[row * l + t].to_f64());
        // The convolution at the checked outputs (the whole row or `positions`), then post-gated.
        let y: Vec<f64> = match (&positions, sparse) {
            (None, true) => direct_band_limited(&x, &periodic_filter(&kh, g), g),
            (Some(ps), true) => direct_band_limited_at(&x, &periodic_filter(&kh, g), g, ps),
            (None, false) if circular => direct_circular(&x, &kh),
            (Some(ps), false) if circular => ps
                .iter()
                .map(|&t| {
                    kh.iter()
                        .enumerate()
                        .map(|(s, &ks)| ks * x[(t + l - s % l) % l])
                        .sum()
                })
                .collect(),
            (None, false) => direct_causal(&x, &kh),
            (Some(ps), false) => ps
                .iter()
                .map(|&t| {
                    kh.iter()
                        .take(t + 1)
                        .enumerate()
                        .map(|(s, &ks)| ks * x[t - s])
                        .sum()
                })
                .collect(),
        };
        let want = match &positions {
            None => y
                .into_iter()
                .enumerate()
                .map(|(t, y)| y * post(t))
                .collect(),
            Some(ps) => y.into_iter().zip(ps).map(|(y, &t)| y * post(t)).collect(),
        };
        RowCheck {
            row,
            positions: positions.clone(),
            want,
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .iter()
            .map(|&row| scope.spawn(move || one(row)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("oracle thread panicked"))
            .collect()
    })
}

/// Max over the sampled rows of the relative L2 error of `y` (`[B*H, L]`); NaN if any is NaN.
pub fn max_rel_error<T: Element>(y: &[T], l: usize, checks: &[RowCheck]) -> f64 {
    let mut worst = 0.0f64;
    for c in checks {
        let row = &y[c.row * l..(c.row + 1) * l];
        let got: Vec<f64> = match &c.positions {
            None => row.iter().map(|v| v.to_f64()).collect(),
            Some(ps) => ps.iter().map(|&t| row[t].to_f64()).collect(),
        };
        let e = relative_l2_error(&got, &c.want);
        if e.is_nan() {
            return f64::NAN;
        }
        worst = worst.max(e);
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_core::Complex64;
    use rand::SeedableRng;

    #[test]
    fn rows_are_distinct_and_include_ends() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(sample_rows(1, &mut rng), vec![0]);
        assert_eq!(sample_rows(2, &mut rng), vec![0, 1]);
        let r = sample_rows(1000, &mut rng);
        assert_eq!(r.len(), SAMPLED_ROWS);
        assert_eq!((r[0], r[SAMPLED_ROWS - 1]), (0, 999));
    }

    #[test]
    fn sampled_positions_match_the_full_row() {
        assert!(positions(128, 128, false).is_none());
        // 10^4 x 10^4: 5e7 multiply-adds causal (whole row), 1e8 circular (sampled).
        assert!(positions(10_000, 10_000, false).is_none());
        assert!(positions(10_000, 10_000, true).is_some());
        let ps = positions(1 << 19, 1 << 19, false).unwrap();
        assert_eq!((ps[0], *ps.last().unwrap()), (0, (1 << 19) - 1));
        assert_eq!(row_macs(4, 2), 1 + 2 + 2 + 2);
        // A small row through both paths agrees.
        let spec = ConvSpec::builder(1, 1, 64, 64).build().unwrap();
        let u: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let k: Vec<f32> = (0..64).map(|i| 0.9f32.powi(i)).collect();
        let checks = reference_rows(&spec, &u, &k, None, &[0]);
        let want = direct_causal(
            &u.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &k.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        );
        assert_eq!(checks[0].want, want);
        let y: Vec<f32> = want.iter().map(|&x| x as f32).collect();
        assert!(max_rel_error(&y, 64, &checks) < 1e-7);
        // Circular rows take the circular sum.
        let spec = ConvSpec::builder(1, 1, 64, 64).circular().build().unwrap();
        let checks = reference_rows(&spec, &u, &k, None, &[0]);
        let want = direct_circular(
            &u.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &k.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        );
        assert_eq!(checks[0].want, want);
    }

    /// Deterministic test values in [-1, 1] (f32-representable).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn to_f64(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| v as f64).collect()
    }

    fn reversed(x: &[f32], l: usize) -> Vec<f32> {
        x.chunks_exact(l)
            .flat_map(|row| row.iter().rev().copied())
            .collect()
    }

    #[test]
    fn fft_band_limited_filter_matches_the_naive_dft() {
        for builder in [
            ConvSpec::builder(1, 1, 128, 128).keep_frequencies(0.25),
            ConvSpec::builder(1, 1, 1000, 1000).keep_frequencies(0.6),
            // Several overlap-save blocks.
            ConvSpec::builder(1, 1, 3000, 100).keep_frequencies(0.1),
        ] {
            let spec = builder.build().unwrap();
            let g = spec.geometry();
            assert!(g.is_sparse(), "{g:?}");
            let k = to_f64(&values(spec.filter_len(), 7));
            let want = band_limited_filter(&k, g);
            let got = band_limited_filter_fft(&k, g);
            let err = relative_l2_error(&got, &want);
            assert!(err < 1e-13, "{g:?}: {err:e}");
        }
        // Round trip of the FFT itself.
        let x: Vec<Complex64> = (0..64)
            .map(|i| Complex64::new((i as f64 * 0.3).sin(), i as f64 * 0.01))
            .collect();
        let mut y = x.clone();
        conv::reference::fft_f64(&mut y, false);
        conv::reference::fft_f64(&mut y, true);
        for (a, b) in x.iter().zip(&y) {
            assert!((a * 64.0 - b).norm() < 1e-12);
        }
    }

    #[test]
    fn sparse_rows_match_the_reference_forward() {
        use conv::reference::reference_forward;
        // Whole rows, gated and not, against the conformance tests' oracle.
        for gated in [false, true] {
            let spec = ConvSpec::builder(2, 3, 256, 256)
                .keep_frequencies(0.25)
                .gated(gated)
                .build()
                .unwrap();
            assert!(spec.geometry().is_sparse());
            let (u, pre, post) = (
                values(spec.io_len(), 1),
                values(spec.io_len(), 2),
                values(spec.io_len(), 3),
            );
            let k = values(spec.filter_elems(), 4);
            let gates = gated.then_some((pre.as_slice(), post.as_slice()));
            let rows = [0, 3, 5];
            let checks = reference_rows(&spec, &u, &k, gates, &rows);
            let (pre64, post64) = (to_f64(&pre), to_f64(&post));
            let want = reference_forward(
                &spec,
                &to_f64(&u),
                &to_f64(&k),
                gated.then_some((pre64.as_slice(), post64.as_slice())),
            );
            for c in &checks {
                assert!(c.positions.is_none());
                let row = &want[c.row * 256..(c.row + 1) * 256];
                assert!(relative_l2_error(&c.want, row) < 1e-13);
            }
            // The dense oracle differs: a sparse row is not checked against it.
            let dense = ConvSpec::builder(2, 3, 256, 256)
                .gated(gated)
                .build()
                .unwrap();
            let dense_checks = reference_rows(&dense, &u, &k, gates, &rows);
            assert!(relative_l2_error(&checks[0].want, &dense_checks[0].want) > 1e-3);
        }
        // Sampled positions agree with the whole row (several blocks, so the segments change).
        let spec = ConvSpec::builder(1, 1, 3000, 100)
            .keep_frequencies(0.1)
            .build()
            .unwrap();
        let g = spec.geometry();
        assert!(g.blocks > 1);
        let x = to_f64(&values(3000, 5));
        let kp = periodic_filter(&to_f64(&values(100, 6)), g);
        let full = direct_band_limited(&x, &kp, g);
        let ps = [0, 1, g.block_len - 1, g.block_len, 1500, 2999];
        let at = direct_band_limited_at(&x, &kp, g, &ps);
        for (&t, y) in ps.iter().zip(at) {
            assert!(
                (y - full[t]).abs() <= 1e-12 * (1.0 + full[t].abs()),
                "t = {t}"
            );
        }
        // Long rows are sampled.
        let big = ConvSpec::builder(1, 1, 1 << 15, 1 << 15)
            .keep_frequencies(0.25)
            .build()
            .unwrap();
        assert!(sparse_positions(1 << 15, big.geometry()).is_some());
    }

    /// The bench checks the backward's `du` with the forward oracle on reversed rows (gates
    /// swapped and reversed); for the swept shapes (causal, K = L, one block) that is exactly the
    /// adjoint for sparse problems too.
    #[test]
    fn reversed_sparse_forward_is_the_backward_du() {
        use monarch_core::reference_backward::reference_backward;
        let l = 200;
        let spec = ConvSpec::builder(2, 2, l, l)
            .keep_frequencies(0.3)
            .gated(true)
            .build()
            .unwrap();
        assert!(spec.geometry().is_sparse() && spec.geometry().blocks == 1);
        let (u, pre, post, dy) = (
            values(spec.io_len(), 11),
            values(spec.io_len(), 12),
            values(spec.io_len(), 13),
            values(spec.io_len(), 14),
        );
        let k = values(spec.filter_elems(), 15);
        let (pre64, post64) = (to_f64(&pre), to_f64(&post));
        let want = reference_backward(
            &spec,
            &to_f64(&u),
            &to_f64(&k),
            Some((pre64.as_slice(), post64.as_slice())),
            &to_f64(&dy),
        );
        let (post_rev, pre_rev) = (reversed(&post, l), reversed(&pre, l));
        let rows: Vec<usize> = (0..spec.rows()).collect();
        let checks = reference_rows(
            &spec,
            &reversed(&dy, l),
            &k,
            Some((post_rev.as_slice(), pre_rev.as_slice())),
            &rows,
        );
        for c in &checks {
            let du_rev: Vec<f64> = want.du[c.row * l..(c.row + 1) * l]
                .iter()
                .rev()
                .copied()
                .collect();
            assert!(relative_l2_error(&c.want, &du_rev) < 1e-12, "row {}", c.row);
        }
    }
}
