//! [`PairFft`]: the length-`N` complex FFT a packed pair of real segments goes through, with
//! tiled loading and storing so that zero padding is never read and unused outputs never formed.
//!
//! Two forms:
//! - **whole**: one rustfft FFT of length `N`; the spectrum comes out in natural order.
//! - **split** (large `N`): one radix-2 Monarch step, decimation in frequency, fused into the
//!   tiled loads and stores. With the data as two rows of `S = N/2`,
//!   `lo[n] = x[n] + x[S+n]`, `hi[n] = (x[n] - x[S+n]) * W_N^n`, then two FFTs of length `S`:
//!   `lo` holds the even frequencies `X[2k]`, `hi` the odd ones `X[2k+1]`. A row known to be
//!   zero (causal padding) is not read; a row of outputs nobody needs is not formed. Twiddles
//!   are generated in f64 with the index reduced mod `N`, rounded once.
//!
//! Measured on the 2-core EPYC this backend was first tuned on, one rustfft FFT of the whole
//! length per pair beat a Monarch-style split built from rustfft passes (radix-2 or tiled
//! radix-`N1` outer stage plus cache-sized sub-FFTs) at every size from 256 to 1M. Dense
//! problems from 128K now use [`FourStep`](crate::four_step::FourStep) instead, whose outer
//! stage is a SIMD column DFT of our own; `docs/perf.md` has the numbers.

use crate::planner::{complex_ffts, half_twiddles};
use monarch_core::Complex32;
use rustfft::Fft;
use std::sync::Arc;

/// Positions loaded or stored per step: small enough that the staging stays in L1.
const TILE: usize = 1024;

/// Forward and inverse FFTs of one size `N` with the tile size used around them (immutable,
/// shared between threads).
pub(crate) struct PairFft {
    n: usize,
    /// Positions per tile `T` (divides the FFT length).
    tile: usize,
    /// FFTs of length `N` (whole) or `N/2` (split: applied to both halves).
    fft: Arc<dyn Fft<f32>>,
    ifft: Arc<dyn Fft<f32>>,
    scratch_len: usize,
    /// Split form only: `W_N^n` for `n < N/2` (shared per `N` across the process).
    twiddles: Option<Arc<[Complex32]>>,
}

impl PairFft {
    /// The whole form: one FFT of length `n`, natural order.
    pub(crate) fn new(n: usize) -> Self {
        Self::build(n, false)
    }

    /// The split form (see the module docs).
    pub(crate) fn split(n: usize) -> Self {
        Self::build(n, true)
    }

    fn build(n: usize, split: bool) -> Self {
        let len = if split { n / 2 } else { n };
        let (fft, ifft) = complex_ffts(len);
        let scratch_len = fft
            .get_inplace_scratch_len()
            .max(ifft.get_inplace_scratch_len());
        let twiddles = split.then(|| half_twiddles(n));
        PairFft {
            n,
            tile: TILE.min(len),
            fft,
            ifft,
            scratch_len,
            twiddles,
        }
    }

    /// Whether this is the split form (spectrum as even then odd frequencies).
    pub(crate) fn is_split(&self) -> bool {
        self.twiddles.is_some()
    }

    pub(crate) fn n(&self) -> usize {
        self.n
    }
    pub(crate) fn tile_len(&self) -> usize {
        self.tile
    }
    pub(crate) fn scratch_len(&self) -> usize {
        self.scratch_len
    }

    /// Fills `buf` (length `N`) a tile at a time: `load(p0, tile)` writes input positions
    /// `[p0, p0 + T)` and returns `true`, or returns `false` when they are all zero (nothing is
    /// read then). The split form applies its first stage on the way; `staging` holds `2 * T`.
    pub(crate) fn load_tiles(
        &self,
        buf: &mut [Complex32],
        staging: &mut [Complex32],
        mut load: impl FnMut(usize, &mut [Complex32]) -> bool,
    ) {
        let t_len = self.tile;
        let Some(tw) = &self.twiddles else {
            for (t, dst) in buf.chunks_exact_mut(t_len).enumerate() {
                if !load(t * t_len, dst) {
                    dst.fill(Complex32::default());
                }
            }
            return;
        };
        let s = self.n / 2;
        let (lo, hi) = buf.split_at_mut(s);
        let (r0, r1) = staging[..2 * t_len].split_at_mut(t_len);
        for c0 in (0..s).step_by(t_len) {
            let w = &tw[c0..c0 + t_len];
            let (lo, hi) = (&mut lo[c0..c0 + t_len], &mut hi[c0..c0 + t_len]);
            if !load(c0, r0) {
                r0.fill(Complex32::default());
            }
            if load(s + c0, r1) {
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

    /// Hands the result at positions `[0, needed)` (rounded up to whole tiles) to
    /// `store(p0, tile)`, a tile at a time. The split form undoes its first stage on the way
    /// (`staging` holds `2 * T`).
    pub(crate) fn store_tiles(
        &self,
        buf: &[Complex32],
        staging: &mut [Complex32],
        needed: usize,
        mut store: impl FnMut(usize, &[Complex32]),
    ) {
        let t_len = self.tile;
        let Some(tw) = &self.twiddles else {
            for (t, src) in buf
                .chunks_exact(t_len)
                .take(needed.div_ceil(t_len))
                .enumerate()
            {
                store(t * t_len, src);
            }
            return;
        };
        let s = self.n / 2;
        let (lo, hi) = buf.split_at(s);
        let (r0, r1) = staging[..2 * t_len].split_at_mut(t_len);
        for c0 in (0..s.min(needed)).step_by(t_len) {
            let w = &tw[c0..c0 + t_len];
            let (lo, hi) = (&lo[c0..c0 + t_len], &hi[c0..c0 + t_len]);
            for i in 0..t_len {
                let o = hi[i] * w[i].conj();
                r0[i] = lo[i] + o;
                r1[i] = lo[i] - o;
            }
            store(c0, r0);
            if s + c0 < needed {
                store(s + c0, r1);
            }
        }
    }

    /// Forward FFT in place.
    pub(crate) fn forward(&self, buf: &mut [Complex32], scratch: &mut [Complex32]) {
        self.fft.process_with_scratch(buf, scratch);
    }

    /// Inverse FFT in place (unnormalised: `N` times the inverse).
    pub(crate) fn inverse(&self, buf: &mut [Complex32], scratch: &mut [Complex32]) {
        self.ifft.process_with_scratch(buf, scratch);
    }
}
