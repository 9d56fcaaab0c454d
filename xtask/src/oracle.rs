//! The f64 oracle on sampled rows: direct causal convolution of the dtype-rounded inputs.
//!
//! A row whose direct convolution costs at most [`FULL_ROW_MACS`] multiply-adds is computed
//! whole with `conv::reference::direct_causal`. Longer rows (K = L = N/2 makes the direct
//! convolution quadratic: 1.4e11 multiply-adds per row at N = 1M) are checked at
//! [`SAMPLED_POSITIONS`] evenly spread output positions (the first and last included), each the
//! same direct sum `y[t] = sum_{s <= min(t, K-1)} k[s] x[t-s]` in f64.

use conv::reference::{direct_causal, relative_l2_error};
use conv::{ConvSpec, Element};
use rand::Rng;

/// Rows up to this many multiply-adds are checked whole.
pub const FULL_ROW_MACS: usize = 1 << 26;
/// Output positions checked per row beyond that.
pub const SAMPLED_POSITIONS: usize = 256;
/// Rows checked per case (first, last and random ones; fewer when there are fewer rows).
pub const SAMPLED_ROWS: usize = 4;

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

/// Output positions checked for rows of length `l` with filters of length `k`.
pub fn positions(l: usize, k: usize) -> Option<Vec<usize>> {
    if row_macs(l, k) <= FULL_ROW_MACS {
        return None;
    }
    let p = SAMPLED_POSITIONS.min(l);
    let mut v: Vec<usize> = (0..p).map(|i| i * (l - 1) / (p - 1).max(1)).collect();
    v.dedup();
    Some(v)
}

/// The reference outputs of `rows` (row indices into `[B*H, L]`), computed in parallel.
pub fn reference_rows<T: Element>(
    spec: &ConvSpec,
    u: &[T],
    k: &[f32],
    gates: Option<(&[T], &[T])>,
    rows: &[usize],
) -> Vec<RowCheck> {
    let (l, kl, h_count) = (spec.length(), spec.filter_len(), spec.channels());
    let positions = positions(l, kl);
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
        let want = match &positions {
            None => direct_causal(&x, &kh)
                .into_iter()
                .enumerate()
                .map(|(t, y)| y * post(t))
                .collect(),
            Some(ps) => ps
                .iter()
                .map(|&t| {
                    let y: f64 = kh
                        .iter()
                        .take(t + 1)
                        .enumerate()
                        .map(|(s, &ks)| ks * x[t - s])
                        .sum();
                    y * post(t)
                })
                .collect(),
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
        assert!(positions(128, 128).is_none());
        let ps = positions(1 << 19, 1 << 19).unwrap();
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
    }
}
