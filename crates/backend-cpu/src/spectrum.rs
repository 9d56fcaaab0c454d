//! [`CpuFilterSpectrum`]: filter spectra in the split transform's order, kept bins only, and
//! the pointwise products the engine applies to one group of sub-blocks.

use crate::split::SplitFft;
use monarch_core::{Complex32, ConvGeometry};

/// The filter spectrum of every channel, prepared for one [`CpuConvolution`]'s geometry.
///
/// A real filter's spectrum is Hermitian (`K[-f] = conj(K[f])`), so only one bin of each
/// mirror pair is stored: per channel, for each sub-block of the engine's split FFT (see
/// [`SplitFft`]), the kept positions `k2` that are not past their mirror, scaled by `1/N`.
/// That is `N/2 + 1` values per channel for a dense problem (what a real FFT stores), and only
/// the kept ones for a frequency-sparse problem.
///
/// [`CpuConvolution`]: crate::CpuConvolution
#[derive(Debug, Clone, PartialEq)]
pub struct CpuFilterSpectrum {
    pub(crate) geometry: ConvGeometry,
    pub(crate) channels: usize,
    pub(crate) filter_len: usize,
    /// Kept positions of every sub-block.
    ranges: Vec<KeptRange>,
    /// Offset of every sub-block's stored bins within a channel.
    offsets: Vec<usize>,
    per_channel: usize,
    pub(crate) bins: Vec<Complex32>,
}

/// The kept positions `[0, prefix) ∪ [suffix_start, S)` of one sub-block, of which the first
/// `stored` (those not past their mirror) are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeptRange {
    prefix: usize,
    suffix_start: usize,
    stored: usize,
}

impl KeptRange {
    fn new(geometry: &ConvGeometry, split: &SplitFft, b: usize) -> KeptRange {
        let (n1, len) = (split.sub_blocks(), split.sub_len());
        let kept = |k2: usize| geometry.keeps_bin(split.residue(b) + n1 * k2);
        let prefix = (0..len).take_while(|&k2| kept(k2)).count();
        let suffix = (prefix..len).rev().take_while(|&k2| kept(k2)).count();
        debug_assert!((prefix..len - suffix).all(|k2| !kept(k2)));
        // Positions not past their mirror: [0, S/2] for residue 0, [0, S/2) otherwise. Kept sets
        // are mirror symmetric, so the kept ones among them are a prefix.
        let canonical = if split.residue(b) == 0 {
            len / 2 + 1
        } else {
            len / 2
        };
        KeptRange {
            prefix,
            suffix_start: len - suffix,
            stored: prefix.min(canonical),
        }
    }
}

/// `W = A*Ka + i*B*Kb` at a bin and its mirror, from `Z = A + iB` at both:
/// `W[p] = Z[p] (Ka+Kb)/2 + conj(Z[q]) (Ka-Kb)/2`, and at `q` the same with `Ka[q] =
/// conj(Ka[p])`, `Kb[q] = conj(Kb[p])`.
#[inline]
fn separate(zp: Complex32, zq: Complex32, ka: Complex32, kb: Complex32) -> [Complex32; 2] {
    let (plus, minus) = ((ka + kb) * 0.5, (ka - kb) * 0.5);
    [
        zp * plus + zq.conj() * minus,
        zq * plus.conj() + zp.conj() * minus.conj(),
    ]
}

impl CpuFilterSpectrum {
    /// The layout (ranges and offsets) for a geometry, with `bins` filled in by the caller.
    pub(crate) fn build(
        geometry: ConvGeometry,
        channels: usize,
        filter_len: usize,
        split: &SplitFft,
        bins: Vec<Complex32>,
    ) -> Self {
        let layout = Self::layout(geometry, channels, filter_len, split);
        CpuFilterSpectrum { bins, ..layout }
    }

    /// The empty layout (ranges and offsets) for a geometry; `bins` is empty.
    pub(crate) fn layout(
        geometry: ConvGeometry,
        channels: usize,
        filter_len: usize,
        split: &SplitFft,
    ) -> Self {
        let ranges: Vec<KeptRange> = (0..split.sub_blocks())
            .map(|b| KeptRange::new(&geometry, split, b))
            .collect();
        let mut offsets = Vec::with_capacity(ranges.len());
        let mut per_channel = 0;
        for r in &ranges {
            offsets.push(per_channel);
            per_channel += r.stored;
        }
        CpuFilterSpectrum {
            geometry,
            channels,
            filter_len,
            ranges,
            offsets,
            per_channel,
            bins: Vec::new(),
        }
    }

    /// Stored complex values per channel.
    pub fn bins_per_channel(&self) -> usize {
        self.per_channel
    }

    /// Bytes of spectrum memory held.
    pub fn size_bytes(&self) -> usize {
        self.bins.len() * std::mem::size_of::<Complex32>()
    }

    /// Copies the stored bins of a full split spectrum (`N` values), scaled, into `dst`.
    pub(crate) fn keep(&self, full: &[Complex32], scale: f32, dst: &mut [Complex32]) {
        let s = full.len() / self.ranges.len();
        let kept = full
            .chunks_exact(s)
            .zip(&self.ranges)
            .flat_map(|(c, r)| &c[..r.stored]);
        for (d, &v) in dst.iter_mut().zip(kept) {
            *d = v * scale;
        }
    }

    pub(crate) fn channel(&self, h: usize) -> &[Complex32] {
        &self.bins[h * self.per_channel..(h + 1) * self.per_channel]
    }

    fn stored<'a>(&self, channel: &'a [Complex32], b: usize) -> &'a [Complex32] {
        &channel[self.offsets[b]..self.offsets[b] + self.ranges[b].stored]
    }

    /// Multiplies sub-block `b` (both lanes of one channel) by `channel`'s bins: each stored
    /// bin and, conjugated, its mirror; dropped bins are cleared.
    pub(crate) fn multiply(
        &self,
        split: &SplitFft,
        channel: &[Complex32],
        b: usize,
        block: &mut [Complex32],
    ) {
        let range = self.ranges[b];
        let k = self.stored(channel, b);
        let s = block.len();
        let half = s / 2;
        // Mirror of p is S - shift - p: shift 0 for residue 0 (where p = 0 and p = S/2 are
        // their own mirrors), 1 otherwise. Stored bins go forwards, their mirrors backwards.
        let (first, end, shift) = if split.residue(b) == 0 {
            block[0] *= k[0];
            if k.len() > half {
                block[half] *= k[half];
            }
            (1, k.len().min(half), 0)
        } else {
            (0, k.len(), 1)
        };
        let (lo, hi) = block.split_at_mut(half);
        let mirrors = s + 1 - shift - end.max(first)..s + 1 - shift - first;
        let hi = &mut hi[mirrors.start - half..mirrors.end - half];
        let lo = &mut lo[first..end.max(first)];
        for ((x, y), &kp) in lo.iter_mut().zip(hi.iter_mut().rev()).zip(&k[first..]) {
            *x *= kp;
            *y *= kp.conj();
        }
        block[range.prefix..range.suffix_start].fill(Complex32::default());
    }

    /// Multiplies sub-block `b` whose two lanes belong to two channels (see [`separate`]):
    /// each stored bin is processed together with its mirror, which is in the same sub-block.
    pub(crate) fn multiply_two(
        &self,
        split: &SplitFft,
        (ka, kb): (&[Complex32], &[Complex32]),
        b: usize,
        block: &mut [Complex32],
    ) {
        let range = self.ranges[b];
        let (sa, sb) = (self.stored(ka, b), self.stored(kb, b));
        for p in 0..range.stored {
            let q = split.mirror_k2(b, p);
            let [wp, wq] = separate(block[p], block[q], sa[p], sb[p]);
            block[p] = wp;
            if q != p {
                block[q] = wq;
            }
        }
        block[range.prefix..range.suffix_start].fill(Complex32::default());
    }
}
