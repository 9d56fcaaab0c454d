//! Naive f64 backward oracle: the exact adjoint of [`reference::reference_forward`] for
//! `y = postgate * conv(pregate * u, k)`.
//!
//! Given `dy` (the gradient of a scalar loss with respect to `y`), [`reference_backward`] returns
//! `du`, `dk` (summed over the batch) and, when gated, `dpregate` and `dpostgate`:
//!
//! ```text
//! c  = conv(x, k), x = pre * u           (the forward before the post-gate)
//! dc = dy * post                          dpostgate = dy * c
//! dx = conv^T(dc, k)                      du = dx * pre,  dpregate = dx * u
//! dk[h, s] = sum_b sum_t dc[b,h,t] * x[b,h,t-s]   (t-s mod L when circular)
//! ```
//!
//! Dense problems use the direct `O(L*K)` sums. Frequency-sparse ones follow the blocked
//! definition of [`crate::problem`]: per overlap-save block `c[p] = sum_s kper[s] seg[(p-s) mod N]`
//! for `p < outputs`, with `kper = IDFT(mask * DFT(k zero padded to N))`. Its adjoint scatters
//! `dseg[q] = sum_p dc[p] kper[(p-q) mod N]` back to the inputs each segment position reads
//! ([`ConvGeometry::segment_source`]), and, since `kper[s] = sum_j k[j] kmask[(s-j) mod N]`
//! with `kmask[r] = (1/N) sum_{kept f} cos(2 pi r f / N)`, gives
//! `dk[j] = sum_s G[s] kmask[(s-j) mod N]` where `G[s] = sum_blocks sum_p dc[p] seg[(p-s) mod N]`.
//!
//! Slow on purpose and sharing no code with any fast path.
//!
//! [`reference::reference_forward`]: crate::reference::reference_forward

use crate::problem::ConvGeometry;
use crate::reference::{
    band_limited_filter_fft, direct_band_limited, direct_causal, direct_circular, ReferenceGates,
};
use crate::{ConvMode, ConvSpec};

/// Gradients of one backward call, in f64. Shapes: `du`, `dpregate`, `dpostgate` are
/// `[B, H, L]`, `dk` is `[H, K]` (summed over the batch).
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceGradients {
    pub du: Vec<f64>,
    pub dk: Vec<f64>,
    /// `Some` exactly when gates were given.
    pub dpregate: Option<Vec<f64>>,
    /// `Some` exactly when gates were given.
    pub dpostgate: Option<Vec<f64>>,
}

/// Adjoint of [`direct_causal`] for one row: `(dx, dk)` with
/// `dx[i] = sum_{s<K, i+s<L} k[s] dc[i+s]` and `dk[s] = sum_{t>=s} dc[t] x[t-s]`.
pub fn direct_causal_adjoint(dc: &[f64], x: &[f64], k: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let l = dc.len();
    let dx = (0..l)
        .map(|i| {
            k.iter()
                .enumerate()
                .take(l - i)
                .map(|(s, &ks)| ks * dc[i + s])
                .sum()
        })
        .collect();
    let dk = (0..k.len())
        .map(|s| (s..l).map(|t| dc[t] * x[t - s]).sum())
        .collect();
    (dx, dk)
}

/// Adjoint of [`direct_circular`] for one row: `(dx, dk)` with
/// `dx[i] = sum_{s<K} k[s] dc[(i+s) mod L]` and `dk[s] = sum_t dc[t] x[(t-s) mod L]`.
pub fn direct_circular_adjoint(dc: &[f64], x: &[f64], k: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let l = dc.len();
    let dx = (0..l)
        .map(|i| {
            k.iter()
                .enumerate()
                .map(|(s, &ks)| ks * dc[(i + s) % l])
                .sum()
        })
        .collect();
    let dk = (0..k.len())
        .map(|s| (0..l).map(|t| dc[t] * x[(t + l - s % l) % l]).sum())
        .collect();
    (dx, dk)
}

/// Adjoint of [`direct_band_limited`] for one row: returns `dx` (length `L`) and adds
/// `G[s] = sum_blocks sum_{p < outputs} dc[p] seg[(p-s) mod N]` into `g` (length `N`), the
/// gradient with respect to the periodic filter `k_periodic`.
pub fn direct_band_limited_adjoint(
    dc: &[f64],
    x: &[f64],
    k_periodic: &[f64],
    geometry: &ConvGeometry,
    g: &mut [f64],
) -> Vec<f64> {
    let l = x.len();
    let n = geometry.n();
    let mut dx = vec![0.0; l];
    let mut segment = vec![0.0; n];
    for j in 0..geometry.blocks {
        let (start, outputs) = geometry.block_range(j, l);
        let sources: Vec<Option<usize>> = (0..n)
            .map(|p| geometry.segment_source(start, outputs, p, l))
            .collect();
        for (x_p, src) in segment.iter_mut().zip(&sources) {
            *x_p = src.map_or(0.0, |i| x[i]);
        }
        let dcb = &dc[start..start + outputs];
        for (q, src) in sources.iter().enumerate() {
            if let Some(i) = *src {
                dx[i] += dcb
                    .iter()
                    .enumerate()
                    .map(|(p, &d)| d * k_periodic[(p + n - q) % n])
                    .sum::<f64>();
            }
        }
        for (s, gs) in g.iter_mut().enumerate() {
            *gs += dcb
                .iter()
                .enumerate()
                .map(|(p, &d)| d * segment[(p + n - s) % n])
                .sum::<f64>();
        }
    }
    dx
}

/// `kmask[r] = (1/N) sum_{kept f} cos(2 pi r f / N)`, `r < N`: the periodic impulse response
/// of the geometry's frequency mask (real, since the kept set is symmetric).
pub fn mask_response(geometry: &ConvGeometry) -> Vec<f64> {
    let n = geometry.n();
    let kept: Vec<usize> = (0..n).filter(|&f| geometry.keeps_bin(f)).collect();
    (0..n)
        .map(|r| {
            kept.iter()
                .map(|&f| {
                    let a = 2.0 * std::f64::consts::PI * ((r * f) % n) as f64 / n as f64;
                    a.cos()
                })
                .sum::<f64>()
                / n as f64
        })
        .collect()
}

/// The whole backward problem in f64: `u`, `dy` (and the gates) are `[B, H, L]`, `k` is `[H, K]`.
///
/// The exact adjoint of [`crate::reference::reference_forward`] with the same arguments.
/// Inputs are taken as given (round them to the problem's dtype first).
pub fn reference_backward(
    spec: &ConvSpec,
    u: &[f64],
    k: &[f64],
    gates: Option<ReferenceGates<'_>>,
    dy: &[f64],
) -> ReferenceGradients {
    let (h_count, l, kl) = (spec.channels(), spec.length(), spec.filter_len());
    let geometry = spec.geometry();
    let n = geometry.n();
    let sparse = geometry.is_sparse();
    let periodic: Option<Vec<Vec<f64>>> = sparse.then(|| {
        (0..h_count)
            .map(|h| band_limited_filter_fft(&k[h * kl..(h + 1) * kl], geometry))
            .collect()
    });
    let mut du = vec![0.0; spec.io_len()];
    let mut dk = vec![0.0; spec.filter_elems()];
    let mut dpre = gates.map(|_| vec![0.0; spec.io_len()]);
    let mut dpost = gates.map(|_| vec![0.0; spec.io_len()]);
    // Sparse only: per-channel gradient with respect to the periodic filter.
    let mut g_periodic = vec![vec![0.0; if sparse { n } else { 0 }]; h_count];
    for row in 0..spec.rows() {
        let h = row % h_count;
        let span = row * l..(row + 1) * l;
        let u_row = &u[span.clone()];
        let dy_row = &dy[span.clone()];
        let kh = &k[h * kl..(h + 1) * kl];
        let x: Vec<f64> = match gates {
            Some((pre, _)) => u_row
                .iter()
                .zip(&pre[span.clone()])
                .map(|(a, b)| a * b)
                .collect(),
            None => u_row.to_vec(),
        };
        let dc: Vec<f64> = match gates {
            Some((_, post)) => dy_row
                .iter()
                .zip(&post[span.clone()])
                .map(|(a, b)| a * b)
                .collect(),
            None => dy_row.to_vec(),
        };
        let dx = match (&periodic, spec.mode()) {
            (Some(p), _) => {
                direct_band_limited_adjoint(&dc, &x, &p[h], geometry, &mut g_periodic[h])
            }
            (None, mode) => {
                let (dx, dk_row) = match mode {
                    ConvMode::Causal => direct_causal_adjoint(&dc, &x, kh),
                    ConvMode::Circular => direct_circular_adjoint(&dc, &x, kh),
                };
                for (d, v) in dk[h * kl..(h + 1) * kl].iter_mut().zip(dk_row) {
                    *d += v;
                }
                dx
            }
        };
        match gates {
            Some((pre, _)) => {
                let pre = &pre[span.clone()];
                for (i, &d) in dx.iter().enumerate() {
                    du[span.start + i] = d * pre[i];
                }
                if let Some(dp) = dpre.as_mut() {
                    for (i, &d) in dx.iter().enumerate() {
                        dp[span.start + i] = d * u_row[i];
                    }
                }
                let c = match (&periodic, spec.mode()) {
                    (Some(p), _) => direct_band_limited(&x, &p[h], geometry),
                    (None, ConvMode::Causal) => direct_causal(&x, kh),
                    (None, ConvMode::Circular) => direct_circular(&x, kh),
                };
                if let Some(dq) = dpost.as_mut() {
                    for (i, &cv) in c.iter().enumerate() {
                        dq[span.start + i] = dy_row[i] * cv;
                    }
                }
            }
            None => du[span].copy_from_slice(&dx),
        }
    }
    if sparse {
        let kmask = mask_response(geometry);
        for (h, g) in g_periodic.iter().enumerate() {
            for j in 0..kl {
                dk[h * kl + j] = g
                    .iter()
                    .enumerate()
                    .map(|(s, &gs)| gs * kmask[(s + n - j % n) % n])
                    .sum();
            }
        }
    }
    ReferenceGradients {
        du,
        dk,
        dpregate: dpre,
        dpostgate: dpost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{band_limited_filter, reference_forward, relative_l2_error};
    use crate::ConvSpecBuilder;

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    /// `sum(dy * y)` for the given inputs.
    fn loss(spec: &ConvSpec, u: &[f64], k: &[f64], g: Option<(&[f64], &[f64])>, dy: &[f64]) -> f64 {
        reference_forward(spec, u, k, g)
            .iter()
            .zip(dy)
            .map(|(a, b)| a * b)
            .sum()
    }

    /// Central differences of the loss with respect to every element of every input, compared
    /// with the oracle. The loss is linear in each input, so differences are exact up to rounding.
    fn check(builder: ConvSpecBuilder) {
        let spec = builder.build().unwrap();
        let io = spec.io_len();
        let u = values(io, 1);
        let k = values(spec.filter_elems(), 2);
        let dy = values(io, 3);
        let pre = values(io, 4);
        let post = values(io, 5);
        let gates = spec.gated().then_some((pre.as_slice(), post.as_slice()));
        let grads = reference_backward(&spec, &u, &k, gates, &dy);
        let eps = 1e-3;
        let numeric = |which: usize, len: usize| -> Vec<f64> {
            (0..len)
                .map(|i| {
                    let mut plus = [u.clone(), k.clone(), pre.clone(), post.clone()];
                    let mut minus = plus.clone();
                    plus[which][i] += eps;
                    minus[which][i] -= eps;
                    let f = |a: &[Vec<f64>; 4]| {
                        let g = spec.gated().then_some((a[2].as_slice(), a[3].as_slice()));
                        loss(&spec, &a[0], &a[1], g, &dy)
                    };
                    (f(&plus) - f(&minus)) / (2.0 * eps)
                })
                .collect()
        };
        let mut pairs = vec![("du", numeric(0, io), grads.du.clone())];
        pairs.push(("dk", numeric(1, spec.filter_elems()), grads.dk.clone()));
        if spec.gated() {
            pairs.push(("dpregate", numeric(2, io), grads.dpregate.clone().unwrap()));
            pairs.push((
                "dpostgate",
                numeric(3, io),
                grads.dpostgate.clone().unwrap(),
            ));
        } else {
            assert!(grads.dpregate.is_none() && grads.dpostgate.is_none());
        }
        for (name, want, got) in pairs {
            let err = relative_l2_error(&got, &want);
            assert!(err < 1e-9, "{name}: relative error {err:e} for {spec:?}");
        }
    }

    #[test]
    fn finite_differences_causal_and_circular() {
        check(ConvSpec::builder(2, 2, 13, 5));
        check(ConvSpec::builder(1, 2, 11, 11));
        check(ConvSpec::builder(2, 1, 13, 4).circular());
        check(ConvSpec::builder(1, 1, 16, 16).circular());
        check(ConvSpec::builder(1, 2, 9, 9).circular());
    }

    #[test]
    fn finite_differences_gated() {
        check(ConvSpec::builder(2, 2, 12, 6).gated(true));
        check(ConvSpec::builder(1, 2, 10, 3).circular().gated(true));
    }

    #[test]
    fn finite_differences_blocked() {
        // K << L: several overlap-save blocks (checked below).
        let b = ConvSpec::builder(1, 2, 90, 3);
        assert!(b.clone().build().unwrap().geometry().blocks > 1);
        check(b);
        let b = ConvSpec::builder(2, 1, 70, 4).circular().gated(true);
        assert!(b.clone().build().unwrap().geometry().blocks > 1);
        check(b);
    }

    #[test]
    fn finite_differences_frequency_sparse() {
        let b = ConvSpec::builder(2, 2, 20, 20).keep_frequencies(0.25);
        assert!(b.clone().build().unwrap().geometry().is_sparse());
        check(b);
        check(
            ConvSpec::builder(1, 2, 16, 16)
                .circular()
                .keep_frequencies(0.3),
        );
        check(
            ConvSpec::builder(1, 1, 19, 7)
                .circular()
                .keep_frequencies(0.2)
                .gated(true),
        );
        // Blocked and sparse.
        let b = ConvSpec::builder(1, 2, 90, 3)
            .keep_frequencies(0.4)
            .gated(true);
        let g = *b.clone().build().unwrap().geometry();
        assert!(g.blocks > 1 && g.is_sparse(), "{g:?}");
        check(b);
    }

    #[test]
    fn dense_geometry_through_the_band_limited_adjoint_matches_the_direct_one() {
        let spec = ConvSpec::builder(1, 1, 50, 7).build().unwrap();
        let g = spec.geometry();
        let x = values(50, 7);
        let dc = values(50, 8);
        let k = values(7, 9);
        let periodic = band_limited_filter(&k, g);
        let mut gp = vec![0.0; g.n()];
        let dx = direct_band_limited_adjoint(&dc, &x, &periodic, g, &mut gp);
        let (dx_direct, dk_direct) = direct_causal_adjoint(&dc, &x, &k);
        assert!(relative_l2_error(&dx, &dx_direct) < 1e-12);
        // All bins kept: the mask response is a unit impulse, so dk is G's first K taps.
        assert!(relative_l2_error(&gp[..7], &dk_direct) < 1e-12);
    }
}
