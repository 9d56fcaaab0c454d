//! [`SplitFft`]: the CPU's length-`N` FFT as one radix-2 Monarch split, `N = 2 * S`.
//!
//! Viewing the data as two rows of `S` (`x[n1*S + n2]`), decimation in frequency gives
//!
//! ```text
//! A_k1[n2]      = W_N^{n2*k1} * (x[n2] + (-1)^k1 x[S + n2])     (outer stage, k1 in {0, 1})
//! X[k1 + 2*k2]  = FFT_S(A_k1)[k2]                              (sub-block k1)
//! ```
//!
//! - The **outer stage** is fused into loading the inputs (a row known to be zero, such as the
//!   causal padding, is never read) and, inverted, into storing the outputs (a row nobody
//!   needs is never formed).
//! - **Sub-block** `k1` holds the frequencies `k1 + 2*k2` in natural order of `k2`: the even
//!   ones, then the odd ones. The filter spectrum is stored in that order. The mirror `-f mod N`
//!   of a frequency in sub-block `k1` is in the same sub-block, at `k2' = (S - k2) mod S` when
//!   `k1 = 0` and `S - 1 - k2` when `k1 = 1`.
//! - The sub-FFTs are rustfft's. A finer split (more, cache-sized sub-blocks with a tiled
//!   outer DFT) was measured slower on the 2-core EPYC this was tuned on (see `docs/perf.md`).
//!
//! Twiddles `W_N^{n2}` are generated in f64 with the index reduced mod `N`, rounded once.

use crate::planner::complex_ffts;
use monarch_core::{twiddle::root_of_unity, Complex32};
use rustfft::Fft;
use std::sync::Arc;

/// Columns loaded or stored per step: small enough that the staging stays in L1.
const TILE: usize = 1024;

/// The split transform of one size `N` (immutable, shared).
pub(crate) struct SplitFft {
    /// Sub-block length `S = N/2`.
    sub: usize,
    /// Columns per tile `T` (divides `S`).
    tile: usize,
    sub_fft: Arc<dyn Fft<f32>>,
    sub_ifft: Arc<dyn Fft<f32>>,
    scratch_len: usize,
    /// `W_N^{n2}`, `n2 < S`.
    twiddles: Vec<Complex32>,
}

impl SplitFft {
    pub(crate) fn new(n: usize) -> Self {
        let sub = n / 2;
        let (sub_fft, sub_ifft) = complex_ffts(sub);
        let scratch_len = sub_fft
            .get_inplace_scratch_len()
            .max(sub_ifft.get_inplace_scratch_len());
        let twiddles = (0..sub)
            .map(|m| {
                let w = root_of_unity(m as u64, n as u64);
                Complex32::new(w.re as f32, w.im as f32)
            })
            .collect();
        SplitFft {
            sub,
            tile: TILE.min(sub),
            sub_fft,
            sub_ifft,
            scratch_len,
            twiddles,
        }
    }

    pub(crate) fn n(&self) -> usize {
        2 * self.sub
    }
    pub(crate) fn sub_len(&self) -> usize {
        self.sub
    }
    pub(crate) fn sub_blocks(&self) -> usize {
        2
    }
    pub(crate) fn tile_len(&self) -> usize {
        self.tile
    }
    pub(crate) fn scratch_len(&self) -> usize {
        self.scratch_len
    }
    /// Frequency residue (mod `N1`) of sub-block `b`: `b` itself.
    pub(crate) fn residue(&self, b: usize) -> usize {
        b
    }
    /// Position within the mirror sub-block of position `k2` of sub-block `b`.
    pub(crate) fn mirror_k2(&self, b: usize, k2: usize) -> usize {
        if b == 0 {
            (self.sub - k2) % self.sub
        } else {
            self.sub - 1 - k2
        }
    }

    /// Outer stage, forward: `load(n1, c0, row)` fills `row` (length `T`) with positions
    /// `[n1*S + c0, n1*S + c0 + T)` of the input and returns `true`, or returns `false` when
    /// they are all zero (then `row` is ignored). Writes both sub-blocks into `buf`.
    /// `tile` holds at least `2 * T` values.
    pub(crate) fn forward_outer(
        &self,
        buf: &mut [Complex32],
        tile: &mut [Complex32],
        mut load: impl FnMut(usize, usize, &mut [Complex32]) -> bool,
    ) {
        let (t_len, s) = (self.tile, self.sub);
        let (lo, hi) = buf.split_at_mut(s);
        let (r0, r1) = tile[..2 * t_len].split_at_mut(t_len);
        for c0 in (0..s).step_by(t_len) {
            let w = &self.twiddles[c0..c0 + t_len];
            let (lo, hi) = (&mut lo[c0..c0 + t_len], &mut hi[c0..c0 + t_len]);
            if !load(0, c0, r0) {
                r0.fill(Complex32::default());
            }
            if load(1, c0, r1) {
                for i in 0..t_len {
                    lo[i] = r0[i] + r1[i];
                    hi[i] = (r0[i] - r1[i]) * w[i];
                }
            } else {
                for i in 0..t_len {
                    lo[i] = r0[i];
                    hi[i] = r0[i] * w[i];
                }
            }
        }
    }

    /// Outer stage, inverse (unnormalised): forms rows `n1 < rows` (1 or 2) of the result a
    /// tile at a time and hands each to `store(n1, c0, row)`.
    pub(crate) fn inverse_outer(
        &self,
        buf: &[Complex32],
        tile: &mut [Complex32],
        rows: usize,
        mut store: impl FnMut(usize, usize, &[Complex32]),
    ) {
        let (t_len, s) = (self.tile, self.sub);
        let (lo, hi) = buf.split_at(s);
        let (r0, r1) = tile[..2 * t_len].split_at_mut(t_len);
        for c0 in (0..s).step_by(t_len) {
            let w = &self.twiddles[c0..c0 + t_len];
            let (lo, hi) = (&lo[c0..c0 + t_len], &hi[c0..c0 + t_len]);
            for i in 0..t_len {
                let o = hi[i] * w[i].conj();
                r0[i] = lo[i] + o;
                r1[i] = lo[i] - o;
            }
            store(0, c0, r0);
            if rows > 1 {
                store(1, c0, r1);
            }
        }
    }

    /// Forward sub-FFT of every sub-block in `blocks` (a multiple of `S` long).
    pub(crate) fn sub_forward(&self, blocks: &mut [Complex32], scratch: &mut [Complex32]) {
        self.sub_fft.process_with_scratch(blocks, scratch);
    }

    /// Inverse sub-FFT (unnormalised) of every sub-block in `blocks`.
    pub(crate) fn sub_inverse(&self, blocks: &mut [Complex32], scratch: &mut [Complex32]) {
        self.sub_ifft.process_with_scratch(blocks, scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_core::Complex64;

    /// Forward outer stage + sub-FFTs equal the DFT in the documented order, mirrors are
    /// bookkept right, and the inverse path restores the input.
    #[test]
    fn layout_matches_the_dft() {
        for n in [16usize, 64, 4096, 1 << 17] {
            let split = SplitFft::new(n);
            let (s, n1, t) = (split.sub_len(), split.sub_blocks(), split.tile_len());
            assert_eq!(n1 * s, n);
            let x: Vec<Complex32> = (0..n)
                .map(|i| Complex32::new(((i * 7) % 13) as f32 - 6.0, ((i * 5) % 11) as f32 - 5.0))
                .collect();
            let mut buf = vec![Complex32::default(); n];
            let mut tile = vec![Complex32::default(); 2 * t];
            let mut scratch = vec![Complex32::default(); split.scratch_len()];
            split.forward_outer(&mut buf, &mut tile, |r, c0, dst| {
                dst.copy_from_slice(&x[r * s + c0..r * s + c0 + dst.len()]);
                true
            });
            split.sub_forward(&mut buf, &mut scratch);
            for f in (0..n).step_by((n / 64).max(1)).chain([1, n - 1]) {
                let (b, k2) = (f % n1, f / n1);
                assert_eq!(split.residue(b), b);
                let got = buf[b * s + k2];
                let want: Complex64 = x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        Complex64::new(v.re as f64, v.im as f64)
                            * root_of_unity((i * f) as u64, n as u64)
                    })
                    .sum();
                let err = (Complex64::new(got.re as f64, got.im as f64) - want).norm();
                assert!(err <= 1e-5 * n as f64, "n={n} f={f}: {got} vs {want}");
                let fm = split.residue(b) + n1 * split.mirror_k2(b, k2);
                assert_eq!((f + fm) % n, 0, "mirror of {f}");
            }
            split.sub_inverse(&mut buf, &mut scratch);
            let mut back = vec![Complex32::default(); n];
            split.inverse_outer(&buf, &mut tile, n1, |r, c0, vals| {
                back[r * s + c0..r * s + c0 + vals.len()].copy_from_slice(vals);
            });
            for (i, (b, a)) in back.iter().zip(&x).enumerate() {
                assert!((b / n as f32 - a).norm() < 1e-3, "n={n} i={i}: {b} vs {a}");
            }
        }
    }
}
