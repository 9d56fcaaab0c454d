//! The convolution problem ([`ConvSpec`]) and the geometry every backend follows ([`ConvGeometry`]).
//!
//! One call convolves `u: [B, H, L]` with one filter per channel `k: [H, K]`:
//!
//! ```text
//! causal:   y[b,h,t] = post[b,h,t] * sum_{s=0..=min(t,K-1)} k[h,s] * (pre*u)[b,h,t-s]
//! circular: y[b,h,t] = post[b,h,t] * sum_{s=0..K-1}          k[h,s] * (pre*u)[b,h,(t-s) mod L]
//! ```
//!
//! Every backend computes it the same way, by *overlap-save blocks* of one FFT size `N`
//! ([`ConvGeometry`]): block `j` produces outputs `[j*Lb, min((j+1)*Lb, L))` from a length-`N`
//! circular convolution of a segment that holds the block's `Lb` inputs at positions `[0, Lb)` and
//! the `K-1` inputs before them (its history) at positions `[N-(K-1), N)`, zeros in between.
//! History before `t = 0` is zero for a causal convolution and wraps around (index mod `L`) for a
//! circular one. When `K` is much shorter than `L`, `N` is chosen near `2K`, so the filter
//! spectrum and the work per output scale with `K`, not `L`. A circular convolution whose `L` is a
//! power of two uses `N = L` directly when that is cheapest (no history region).
//!
//! **Frequency-sparse convolution** keeps only the lowest real-FFT bins of the length-`N`
//! filter spectrum: `keep_frequencies(F)` keeps `m = ceil(F * N/2)` bins rounded *up* to a multiple
//! of the block granularity `N/16` (the full spectrum in [`FREQUENCY_BLOCKS`] blocks, so the half
//! spectrum `[0, N/2)` in 8). Bins `k < m` and
//! their mirrors `k > N - m` are kept, all others are zeroed; if `m >= N/2` nothing is dropped
//! (all `N/2 + 1` bins kept). The result is exactly the blocked circular convolution above with
//! that masked spectrum.

use crate::{error::CoreError, size::FftSize, DType};

/// Causal (linear, zero history) or circular (period `L`) convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvMode {
    Causal,
    Circular,
}

/// Number of blocks the full spectrum `[0, N)` is split into for frequency sparsity (8 per
/// half spectrum): the kept-bin count is rounded up to a multiple of `N / FREQUENCY_BLOCKS`.
pub const FREQUENCY_BLOCKS: usize = 16;

/// Which filter-spectrum bins a convolution keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FrequencyKeep {
    /// Every bin (a dense convolution).
    All,
    /// The lowest fraction `F` (in `(0, 1]`) of the real-FFT bins, rounded up to the block granularity.
    LowestFraction(f64),
}

/// A validated convolution problem: shapes, dtype, mode, gating and frequency sparsity.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvSpec {
    batch: usize,
    channels: usize,
    length: usize,
    filter_len: usize,
    dtype: DType,
    mode: ConvMode,
    gated: bool,
    keep: FrequencyKeep,
    geometry: ConvGeometry,
}

/// Builder for [`ConvSpec`]; `build` validates every argument.
#[derive(Debug, Clone)]
pub struct ConvSpecBuilder {
    batch: usize,
    channels: usize,
    length: usize,
    filter_len: usize,
    dtype: DType,
    mode: ConvMode,
    gated: bool,
    keep: FrequencyKeep,
}

impl ConvSpec {
    /// Starts a problem with `u: [batch, channels, length]` and `k: [channels, filter_len]`,
    /// causal, f32, ungated, dense.
    pub fn builder(
        batch: usize,
        channels: usize,
        length: usize,
        filter_len: usize,
    ) -> ConvSpecBuilder {
        ConvSpecBuilder {
            batch,
            channels,
            length,
            filter_len,
            dtype: DType::F32,
            mode: ConvMode::Causal,
            gated: false,
            keep: FrequencyKeep::All,
        }
    }

    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn channels(&self) -> usize {
        self.channels
    }
    /// Sequence length `L`.
    pub fn length(&self) -> usize {
        self.length
    }
    /// Filter length `K`.
    pub fn filter_len(&self) -> usize {
        self.filter_len
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn mode(&self) -> ConvMode {
        self.mode
    }
    /// Whether pre- and post-gates are part of the problem.
    pub fn gated(&self) -> bool {
        self.gated
    }
    pub fn keep(&self) -> FrequencyKeep {
        self.keep
    }
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }
    /// Rows of `u` (`B * H`).
    pub fn rows(&self) -> usize {
        self.batch * self.channels
    }
    /// Elements of `u`, `y` and each gate (`B * H * L`).
    pub fn io_len(&self) -> usize {
        self.rows() * self.length
    }
    /// Elements of `k` (`H * K`).
    pub fn filter_elems(&self) -> usize {
        self.channels * self.filter_len
    }
    /// Bytes one forward call must move at least: read `u` (and gates), write `y`.
    pub fn io_bytes(&self) -> usize {
        let streams = if self.gated { 4 } else { 2 };
        streams * self.io_len() * self.dtype.size_bytes()
    }

    /// Checks that every named buffer (`(argument, its dtype)`) holds the problem's dtype.
    pub fn check_dtypes(&self, buffers: &[(&'static str, DType)]) -> Result<(), CoreError> {
        match buffers.iter().find(|(_, d)| *d != self.dtype) {
            Some(&(arg, dtype)) => Err(CoreError::InvalidArgument {
                arg,
                reason: format!("dtype {dtype} given, the problem is {}", self.dtype),
            }),
            None => Ok(()),
        }
    }

    /// Checks the outputs of a backward call: `dk` holds `[H, K]` elements; the gate gradients
    /// (`[dpregate, dpostgate]` lengths) are given, `[B, H, L]`, exactly when the problem is gated.
    pub fn check_gradients(
        &self,
        dk_len: usize,
        gate_grads: [Option<usize>; 2],
    ) -> Result<(), CoreError> {
        let invalid =
            |arg: &'static str, reason: String| CoreError::InvalidArgument { arg, reason };
        if dk_len != self.filter_elems() {
            return Err(invalid(
                "dk",
                format!(
                    "expected [H, K] = {} elements, got {dk_len}",
                    self.filter_elems()
                ),
            ));
        }
        let want = self.io_len();
        for (arg, g) in ["dpregate", "dpostgate"].into_iter().zip(gate_grads) {
            match (self.gated, g) {
                (true, Some(len)) if len == want => {}
                (true, Some(len)) => {
                    return Err(invalid(
                        arg,
                        format!("expected [B, H, L] = {want} elements, got {len}"),
                    ))
                }
                (true, None) => return Err(invalid(arg, "the problem is gated".into())),
                (false, Some(_)) => return Err(invalid(arg, "the problem is not gated".into())),
                (false, None) => {}
            }
        }
        Ok(())
    }

    /// Checks that `k` holds `[H, K]` elements.
    pub fn check_filter_len(&self, k_len: usize) -> Result<(), CoreError> {
        if k_len == self.filter_elems() {
            return Ok(());
        }
        Err(CoreError::InvalidArgument {
            arg: "k",
            reason: format!(
                "expected [H={}, K={}] = {} elements, got {k_len}",
                self.channels,
                self.filter_len,
                self.filter_elems()
            ),
        })
    }

    /// Checks the buffers of one call: `dtype` is the problem's, `u`, `y` and the gates (given
    /// exactly when the problem is gated, as `(pregate, postgate)` lengths) are `[B, H, L]`.
    pub fn check_io(
        &self,
        dtype: DType,
        u_len: usize,
        gates: Option<(usize, usize)>,
        y_len: usize,
    ) -> Result<(), CoreError> {
        let invalid =
            |arg: &'static str, reason: String| CoreError::InvalidArgument { arg, reason };
        if dtype != self.dtype {
            return Err(invalid(
                "u",
                format!("dtype {dtype} given, the problem is {}", self.dtype),
            ));
        }
        let want = self.io_len();
        let mut io: Vec<(&'static str, usize)> = vec![("u", u_len), ("y", y_len)];
        match (self.gated, gates) {
            (true, Some((pre, post))) => {
                io.push(("pregate", pre));
                io.push(("postgate", post));
            }
            (true, None) => return Err(invalid("gates", "the problem is gated".into())),
            (false, Some(_)) => return Err(invalid("gates", "the problem is not gated".into())),
            (false, None) => {}
        }
        for (arg, len) in io {
            if len != want {
                return Err(invalid(
                    arg,
                    format!("expected [B, H, L] = {want} elements, got {len}"),
                ));
            }
        }
        Ok(())
    }
}

impl ConvSpecBuilder {
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }
    pub fn mode(mut self, mode: ConvMode) -> Self {
        self.mode = mode;
        self
    }
    pub fn circular(self) -> Self {
        self.mode(ConvMode::Circular)
    }
    pub fn gated(mut self, gated: bool) -> Self {
        self.gated = gated;
        self
    }
    /// Keeps the lowest fraction `f` of the filter's real-FFT bins (see the module docs).
    pub fn keep_frequencies(mut self, f: f64) -> Self {
        self.keep = FrequencyKeep::LowestFraction(f);
        self
    }
    pub fn keep(mut self, keep: FrequencyKeep) -> Self {
        self.keep = keep;
        self
    }

    /// Validates the arguments and chooses the geometry.
    pub fn build(self) -> Result<ConvSpec, CoreError> {
        let ConvSpecBuilder {
            batch,
            channels,
            length,
            filter_len,
            dtype,
            mode,
            gated,
            keep,
        } = self;
        if batch == 0 {
            return Err(CoreError::invalid("batch", "must be at least 1"));
        }
        if channels == 0 {
            return Err(CoreError::invalid("channels", "must be at least 1"));
        }
        if length == 0 {
            return Err(CoreError::invalid("length", "L must be at least 1"));
        }
        if filter_len == 0 {
            return Err(CoreError::invalid("filter_len", "K must be at least 1"));
        }
        if filter_len > length {
            return Err(CoreError::invalid(
                "filter_len",
                format!("K = {filter_len} exceeds L = {length}"),
            ));
        }
        batch
            .checked_mul(channels)
            .and_then(|r| r.checked_mul(length))
            .and_then(|n| n.checked_mul(4 * dtype.size_bytes()))
            .ok_or_else(|| CoreError::invalid("batch", "B * H * L elements overflow usize"))?;
        channels
            .checked_mul(filter_len)
            .ok_or_else(|| CoreError::invalid("filter_len", "H * K overflows usize"))?;
        if let FrequencyKeep::LowestFraction(f) = keep {
            if !(f > 0.0 && f <= 1.0) {
                return Err(CoreError::invalid(
                    "keep_frequencies",
                    format!("fraction must be in (0, 1], got {f}"),
                ));
            }
        }
        let geometry = ConvGeometry::choose(length, filter_len, mode, keep)?;
        Ok(ConvSpec {
            batch,
            channels,
            length,
            filter_len,
            dtype,
            mode,
            gated,
            keep,
            geometry,
        })
    }
}

/// Overlap-save blocks of a row that runs in several are a multiple of this many elements long
/// (the last may be shorter), so that every block starts on a 16-byte boundary of a row for any
/// element type the library stores (2 or 4 bytes): the GPU kernels move such rows 16 bytes at a
/// time. It costs at most 7 outputs per block.
pub const BLOCK_ALIGN: usize = 8;

/// How a problem is cut into overlap-save blocks of one FFT size, and which bins are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    /// FFT size `N` of every block.
    pub fft_size: FftSize,
    /// Outputs per block `Lb` (the last block may be shorter).
    pub block_len: usize,
    /// Number of blocks `ceil(L / Lb)`.
    pub blocks: usize,
    /// Inputs before a block that it reads (`K - 1`, or 0 when `N == L` circular).
    pub history: usize,
    /// History before `t = 0` wraps around (circular) instead of being zero (causal).
    pub wraps: bool,
    /// Kept real-FFT bins `m`: bins `k < m` and `k > N - m` are kept. `N/2 + 1` means all.
    pub kept_bins: usize,
}

impl ConvGeometry {
    /// Chooses `N` and the blocking for a problem (deterministic: every backend gets the same).
    ///
    /// Cost model: `blocks * N * (log2 N + 2)`; among the FFT sizes from the smallest that holds
    /// the filter to the smallest that holds the whole sequence, the cheapest wins (ties go to
    /// the larger `N`, i.e. fewer blocks).
    pub fn choose(
        length: usize,
        filter_len: usize,
        mode: ConvMode,
        keep: FrequencyKeep,
    ) -> Result<ConvGeometry, CoreError> {
        if length == 0 || filter_len == 0 || filter_len > length {
            return Err(CoreError::invalid(
                "filter_len",
                "need 1 <= K <= L for a geometry",
            ));
        }
        let history = filter_len - 1;
        let wraps = mode == ConvMode::Circular;
        let cost = |n: usize, blocks: usize| blocks as f64 * n as f64 * (n.ilog2() as f64 + 2.0);
        // The largest useful N holds the whole sequence; longer sequences than the largest FFT
        // size simply run in blocks. The smallest holds twice the filter.
        let single = FftSize::at_least(length.saturating_add(history))
            .unwrap_or(FftSize::new(FftSize::MAX)?);
        let smallest = FftSize::at_least(filter_len.saturating_mul(2))
            .map_err(|_| {
                CoreError::invalid(
                    "filter_len",
                    format!("K = {filter_len} needs an FFT larger than {}", FftSize::MAX),
                )
            })?
            .min(single);
        let mut best: Option<(f64, ConvGeometry)> = None;
        for n in FftSize::range(smallest.len(), single.len()) {
            let mut block_len = n.len() - history;
            if block_len < length && block_len >= BLOCK_ALIGN {
                // Several blocks: each starts at a multiple of BLOCK_ALIGN elements.
                block_len -= block_len % BLOCK_ALIGN;
            }
            let block_len = block_len.min(length);
            let blocks = length.div_ceil(block_len);
            let c = cost(n.len(), blocks);
            if best.as_ref().is_none_or(|(bc, _)| c <= *bc) {
                best = Some((
                    c,
                    ConvGeometry {
                        fft_size: n,
                        block_len,
                        blocks,
                        history,
                        wraps,
                        kept_bins: 0,
                    },
                ));
            }
        }
        // One block of N = L: only where L itself is a supported FFT size (a longer circular
        // sequence runs in blocks like any other).
        if wraps && length.is_power_of_two() && (FftSize::MIN..=FftSize::MAX).contains(&length) {
            let n = FftSize::new(length)?;
            let c = cost(length, 1);
            if best.as_ref().is_none_or(|(bc, _)| c <= *bc) {
                best = Some((
                    c,
                    ConvGeometry {
                        fft_size: n,
                        block_len: length,
                        blocks: 1,
                        history: 0,
                        wraps,
                        kept_bins: 0,
                    },
                ));
            }
        }
        let (_, mut g) = best.ok_or_else(|| CoreError::invalid("length", "no FFT size fits"))?;
        g.kept_bins = kept_bins(g.fft_size.len(), keep);
        Ok(g)
    }

    /// `N`.
    pub fn n(&self) -> usize {
        self.fft_size.len()
    }

    /// Whether some bins are dropped.
    pub fn is_sparse(&self) -> bool {
        self.kept_bins <= self.n() / 2
    }

    /// Whether full-spectrum bin `k` (`0 <= k < N`) is kept.
    pub fn keeps_bin(&self, k: usize) -> bool {
        !self.is_sparse() || k < self.kept_bins || k > self.n() - self.kept_bins
    }

    /// `(first output, outputs)` of block `j`.
    pub fn block_range(&self, j: usize, length: usize) -> (usize, usize) {
        let start = j * self.block_len;
        (start, self.block_len.min(length - start))
    }

    /// Input index that segment position `p` of the block starting at `start` reads, or `None`
    /// where the segment is zero. `length` is `L`.
    pub fn segment_source(
        &self,
        start: usize,
        outputs: usize,
        p: usize,
        length: usize,
    ) -> Option<usize> {
        let n = self.n();
        if p < outputs {
            Some(start + p)
        } else if p >= n - self.history {
            // History: input index start - (n - p), wrapped or zero before 0.
            let back = n - p;
            if back <= start {
                Some(start - back)
            } else if self.wraps {
                Some((start + length - back % length) % length)
            } else {
                None
            }
        } else {
            None
        }
    }
}

/// Kept real bins for `keep` at FFT size `n` (see the module docs); `n/2 + 1` means all.
pub fn kept_bins(n: usize, keep: FrequencyKeep) -> usize {
    match keep {
        FrequencyKeep::All => n / 2 + 1,
        FrequencyKeep::LowestFraction(f) => {
            let half = n / 2;
            let granule = (n / FREQUENCY_BLOCKS).max(1);
            let m = (f * half as f64).ceil() as usize;
            let m = m.max(1).div_ceil(granule) * granule;
            if m >= half {
                half + 1
            } else {
                m
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_block_for_full_filters() {
        let s = ConvSpec::builder(1, 1, 2048, 2048).build().unwrap();
        let g = s.geometry();
        assert_eq!(
            (g.n(), g.blocks, g.block_len, g.history),
            (4096, 1, 2048, 2047)
        );
        let s = ConvSpec::builder(1, 1, 14113, 14113).build().unwrap();
        assert_eq!(s.geometry().n(), 32768);
        assert_eq!(s.geometry().blocks, 1);
    }

    #[test]
    fn short_filters_get_small_blocks() {
        let s = ConvSpec::builder(1, 1, 1 << 20, 100).build().unwrap();
        let g = s.geometry();
        assert!(g.n() <= 4096, "N = {} should scale with K", g.n());
        assert_eq!(g.blocks, (1usize << 20).div_ceil(g.block_len));
        assert!(g.block_len + g.history <= g.n());
        // Blocks of whole 16-byte vectors, at most BLOCK_ALIGN - 1 outputs short of N - (K - 1).
        for k in [2, 61, 100, 128, 1000, 4097] {
            let g = *ConvSpec::builder(1, 1, 1 << 20, k)
                .build()
                .unwrap()
                .geometry();
            assert!(g.blocks > 1, "K = {k}");
            assert_eq!(g.block_len % BLOCK_ALIGN, 0, "K = {k}: {g:?}");
            assert!(g.block_len + g.history <= g.n() && g.n() - g.history - g.block_len < 8);
        }
    }

    #[test]
    fn sequences_longer_than_the_largest_fft_run_in_blocks() {
        let s = ConvSpec::builder(1, 1, 1 << 28, 100).build().unwrap();
        assert!(s.geometry().n() <= 4096 && s.geometry().blocks > 1);
        let err = ConvSpec::builder(1, 1, usize::MAX / 2 + 2, usize::MAX / 2 + 2).build();
        assert!(matches!(err, Err(CoreError::InvalidArgument { .. })));
        // Circular sequences of a power-of-two length beyond the largest FFT size, too.
        for l in [FftSize::MAX * 2, 1 << 40] {
            let s = ConvSpec::builder(1, 1, l, 100).circular().build().unwrap();
            let g = s.geometry();
            assert!(g.n() <= 4096 && g.blocks > 1 && g.wraps, "L = {l}: {g:?}");
        }
        let err = ConvSpec::builder(1, 1, 1 << 40, (1 << 27) + 1).build();
        assert!(matches!(
            err,
            Err(CoreError::InvalidArgument {
                arg: "filter_len",
                ..
            })
        ));
    }

    #[test]
    fn circular_power_of_two_uses_n_equal_l() {
        let s = ConvSpec::builder(1, 1, 4096, 4096)
            .circular()
            .build()
            .unwrap();
        let g = s.geometry();
        assert_eq!((g.n(), g.history, g.blocks), (4096, 0, 1));
        let s = ConvSpec::builder(1, 1, 1000, 1000)
            .circular()
            .build()
            .unwrap();
        assert_eq!(s.geometry().n(), 2048);
        assert!(s.geometry().wraps);
    }

    #[test]
    fn kept_bins_round_up_to_granularity() {
        assert_eq!(kept_bins(4096, FrequencyKeep::LowestFraction(0.25)), 512);
        assert_eq!(kept_bins(4096, FrequencyKeep::LowestFraction(0.26)), 768);
        assert_eq!(kept_bins(4096, FrequencyKeep::LowestFraction(1.0)), 2049);
        assert_eq!(kept_bins(16, FrequencyKeep::LowestFraction(0.01)), 1);
        assert_eq!(kept_bins(4096, FrequencyKeep::All), 2049);
    }

    #[test]
    fn rejects_bad_arguments_by_name() {
        let err = |b: ConvSpecBuilder| match b.build() {
            Err(CoreError::InvalidArgument { arg, .. }) => arg,
            other => panic!("expected error, got {other:?}"),
        };
        assert_eq!(err(ConvSpec::builder(0, 1, 8, 8)), "batch");
        assert_eq!(err(ConvSpec::builder(1, 0, 8, 8)), "channels");
        assert_eq!(err(ConvSpec::builder(1, 1, 0, 1)), "length");
        assert_eq!(err(ConvSpec::builder(1, 1, 8, 0)), "filter_len");
        assert_eq!(err(ConvSpec::builder(1, 1, 8, 9)), "filter_len");
        assert_eq!(
            err(ConvSpec::builder(1, 1, 8, 8).keep_frequencies(0.0)),
            "keep_frequencies"
        );
        assert_eq!(
            err(ConvSpec::builder(1, 1, 8, 8).keep_frequencies(f64::NAN)),
            "keep_frequencies"
        );
    }

    #[test]
    fn segment_sources_cover_history() {
        let g = ConvGeometry::choose(100, 10, ConvMode::Circular, FrequencyKeep::All).unwrap();
        let n = g.n();
        // First block: history wraps to the end of the sequence.
        assert_eq!(g.segment_source(0, g.block_len, n - 1, 100), Some(99));
        assert_eq!(g.segment_source(0, g.block_len, n - 9, 100), Some(91));
        let c = ConvGeometry::choose(100, 10, ConvMode::Causal, FrequencyKeep::All).unwrap();
        assert_eq!(c.segment_source(0, c.block_len, n - 1, 100), None);
    }
}
