//! [`PairFft`]: the length-`N` complex FFT a packed pair of real segments goes through, with
//! tiled loading and storing so that zero padding is never read and unused outputs never formed.
//!
//! Measured on the 2-core EPYC this backend was tuned on, one rustfft FFT of the whole length
//! per pair beat a Monarch-style split (radix-2 or tiled radix-`N1` outer stage plus cache-sized
//! sub-FFTs) at every size from 256 to 1M; `docs/perf.md` has the numbers.

use crate::planner::complex_ffts;
use monarch_core::Complex32;
use rustfft::Fft;
use std::sync::Arc;

/// Positions loaded or stored per step: small enough that the staging stays in L1.
const TILE: usize = 1024;

/// Forward and inverse FFTs of one size `N` with the tile size used around them (immutable,
/// shared between threads).
pub(crate) struct PairFft {
    n: usize,
    /// Positions per tile `T` (divides `N`).
    tile: usize,
    fft: Arc<dyn Fft<f32>>,
    ifft: Arc<dyn Fft<f32>>,
    scratch_len: usize,
}

impl PairFft {
    pub(crate) fn new(n: usize) -> Self {
        let (fft, ifft) = complex_ffts(n);
        let scratch_len = fft
            .get_inplace_scratch_len()
            .max(ifft.get_inplace_scratch_len());
        PairFft {
            n,
            tile: TILE.min(n),
            fft,
            ifft,
            scratch_len,
        }
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

    /// Fills `buf` a tile at a time: `load(p0, tile)` writes positions `[p0, p0 + T)` and
    /// returns `true`, or returns `false` when they are all zero (the tile is then cleared
    /// without reading any input).
    pub(crate) fn load_tiles(
        &self,
        buf: &mut [Complex32],
        mut load: impl FnMut(usize, &mut [Complex32]) -> bool,
    ) {
        for (t, dst) in buf.chunks_exact_mut(self.tile).enumerate() {
            if !load(t * self.tile, dst) {
                dst.fill(Complex32::default());
            }
        }
    }

    /// Hands positions `[0, needed)` of `buf` (rounded up to whole tiles) to
    /// `store(p0, tile)`, a tile at a time.
    pub(crate) fn store_tiles(
        &self,
        buf: &[Complex32],
        needed: usize,
        mut store: impl FnMut(usize, &[Complex32]),
    ) {
        for (t, src) in buf
            .chunks_exact(self.tile)
            .take(needed.div_ceil(self.tile))
            .enumerate()
        {
            store(t * self.tile, src);
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
