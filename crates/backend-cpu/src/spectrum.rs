//! [`CpuFilterSpectrum`]: Hermitian-half filter spectra (kept bins only) and the pointwise
//! products the engine applies to a packed pair's spectrum.

use crate::four_step::{layout_bin, RADIX};
use monarch_core::{Complex32, ConvGeometry};

/// The filter spectrum of every channel, prepared for one [`CpuConvolution`]'s geometry.
///
/// A real filter's spectrum is Hermitian (`K[N - f] = conj(K[f])`), so only bins
/// `f <= N/2` are stored, scaled by `1/N`: `N/2 + 1` values per channel for a dense problem
/// (what a real FFT stores) and only the kept ones, `f < m`, for a frequency-sparse one.
///
/// Dense problems whose pairs run through the four-step form store its layout instead:
/// `9 M` values per channel (`M = N/16`), value `r M + j` holding frequency `16 j + r` for
/// `r <= 8`; the other frequencies are their mirrors.
///
/// [`CpuConvolution`]: crate::CpuConvolution
#[derive(Debug, Clone, PartialEq)]
pub struct CpuFilterSpectrum {
    pub(crate) geometry: ConvGeometry,
    pub(crate) channels: usize,
    pub(crate) filter_len: usize,
    /// Stored bins per channel: `[0, stored)`.
    stored: usize,
    /// `Some(M)` when the bins are in the four-step layout.
    four_step: Option<usize>,
    pub(crate) bins: Vec<Complex32>,
}

impl CpuFilterSpectrum {
    /// An empty spectrum (no bins yet) for a geometry.
    pub(crate) fn layout(geometry: ConvGeometry, channels: usize, filter_len: usize) -> Self {
        let n = geometry.n();
        CpuFilterSpectrum {
            geometry,
            channels,
            filter_len,
            stored: geometry.kept_bins.min(n / 2 + 1),
            four_step: None,
            bins: Vec::new(),
        }
    }

    /// An empty spectrum in the four-step layout with sub-FFTs of length `m` (dense problems).
    pub(crate) fn layout_four_step(
        geometry: ConvGeometry,
        channels: usize,
        filter_len: usize,
        m: usize,
    ) -> Self {
        CpuFilterSpectrum {
            stored: (RADIX / 2 + 1) * m,
            four_step: Some(m),
            ..Self::layout(geometry, channels, filter_len)
        }
    }

    /// Whether the bins are in natural order (not the four-step layout).
    pub(crate) fn is_natural(&self) -> bool {
        self.four_step.is_none()
    }

    /// Channel `h`'s bins `f <= N/2` in natural order, into `dst` (four-step layout only).
    pub(crate) fn natural_channel(&self, h: usize, dst: &mut Vec<Complex32>) {
        let m = self.four_step.expect("four-step layout");
        let k = self.channel(h);
        let half = self.geometry.n() / 2;
        dst.clear();
        dst.resize(half + 1, Complex32::default());
        // Blocks of 64 columns: 16 short runs of the sub-arrays into 1024 consecutive bins
        // (one bin at a time would walk 16 streams `M` apart, which share cache sets).
        const COLS: usize = 64;
        for (b, block) in dst.chunks_mut(RADIX * COLS).enumerate() {
            let f0 = b * RADIX * COLS;
            for r in 0..RADIX {
                for (i, d) in block.iter_mut().skip(r).step_by(RADIX).enumerate() {
                    *d = layout_bin(k, m, f0 + r + i * RADIX);
                }
            }
        }
    }

    /// This layout holding `bins` (`channels * bins_per_channel()` values).
    pub(crate) fn with_bins(self, bins: Vec<Complex32>) -> Self {
        CpuFilterSpectrum { bins, ..self }
    }

    /// Stored complex values per channel.
    pub fn bins_per_channel(&self) -> usize {
        self.stored
    }

    /// Bytes of spectrum memory held.
    pub fn size_bytes(&self) -> usize {
        self.bins.len() * std::mem::size_of::<Complex32>()
    }

    /// Copies the stored bins of a full spectrum (`N` values), scaled, into `dst`.
    pub(crate) fn keep(&self, full: &[Complex32], scale: f32, dst: &mut [Complex32]) {
        for (d, &v) in dst.iter_mut().zip(&full[..self.stored]) {
            *d = v * scale;
        }
    }

    pub(crate) fn channel(&self, h: usize) -> &[Complex32] {
        &self.bins[h * self.stored..(h + 1) * self.stored]
    }

    /// Clears the dropped bins `[m, N - m]` of a frequency-sparse problem.
    fn clear_dropped(&self, buf: &mut [Complex32]) {
        let n = buf.len();
        if self.stored <= n / 2 {
            buf[self.stored..=n - self.stored].fill(Complex32::default());
        }
    }

    /// Multiplies a pair's spectrum (both lanes of one channel) by `k`: each stored bin `p`
    /// and, conjugated, its mirror `N - p`; dropped bins are cleared.
    pub(crate) fn multiply(&self, k: &[Complex32], buf: &mut [Complex32]) {
        let n = buf.len();
        let half = n / 2;
        // Bins 0 and N/2 are their own mirrors; p in [1, end) pairs with N - p.
        buf[0] *= k[0];
        if k.len() > half {
            buf[half] *= k[half];
        }
        // k is never empty (at least bin 0 is kept) and N >= 16. Two streaming loops (the
        // lower bins forwards, their mirrors with the bins reversed) vectorize better than
        // one loop touching both ends.
        let end = k.len().min(half);
        for (x, &kp) in buf[1..end].iter_mut().zip(&k[1..end]) {
            *x *= kp;
        }
        for (x, &kp) in buf[n + 1 - end..].iter_mut().zip(k[1..end].iter().rev()) {
            *x *= kp.conj();
        }
        self.clear_dropped(buf);
    }

    /// Multiplies the spectrum `X` of a cross-channel pair `a + i*b` (two real segments of
    /// different channels, whole-length natural order) so its inverse is
    /// `conv(a, k_a) + i * conv(b, k_b)`. With `A = (X[f] + conj X[N-f]) / 2` and
    /// `B = (X[f] - conj X[N-f]) / 2` (the spectra of `a` and `i*b`):
    /// `Z[f] = A k_a[f] + B k_b[f]` and `Z[N-f] = conj(A k_a[f] - B k_b[f])`, since both filters
    /// are real (Hermitian spectra). Two complex products per bin pair, as [`multiply`]; dropped
    /// bins are cleared.
    ///
    /// [`multiply`]: Self::multiply
    pub(crate) fn multiply_cross(&self, ka: &[Complex32], kb: &[Complex32], buf: &mut [Complex32]) {
        let n = buf.len();
        let half = n / 2;
        // Bins 0 and N/2 are their own mirrors.
        buf[0] = cross_own(buf[0], ka[0], kb[0]);
        if ka.len() > half {
            buf[half] = cross_own(buf[half], ka[half], kb[half]);
        }
        let end = ka.len().min(half);
        let (lower, upper) = buf.split_at_mut(half);
        // Bin f in [1, end) of `lower`; its mirror N - f is `upper[half - f]`.
        cross_bins(
            &mut lower[1..end],
            &mut upper[half + 1 - end..],
            &ka[1..end],
            &kb[1..end],
        );
        self.clear_dropped(buf);
    }

    /// Copies a split spectrum (even frequencies in `buf[..N/2]`, odd ones in `buf[N/2..]`),
    /// scaled, into natural order `dst[f]` for the stored bins.
    pub(crate) fn keep_split(&self, buf: &[Complex32], scale: f32, dst: &mut [Complex32]) {
        let s = buf.len() / 2;
        for (f, d) in dst.iter_mut().enumerate().take(self.stored) {
            *d = buf[split_index(f, s)] * scale;
        }
    }

    /// [`multiply`](Self::multiply) for a split spectrum (even frequencies then odd ones, see
    /// `PairFft`); `k` is in natural order.
    pub(crate) fn multiply_split(&self, k: &[Complex32], buf: &mut [Complex32]) {
        let s = buf.len() / 2;
        if k.len() <= s {
            return Self::multiply_split_sparse(k, buf);
        }
        let q = s / 2;
        let (lo, hi) = buf.split_at_mut(s);
        // Even frequency 2j sits at lo[j], its mirror N - 2j at lo[S - j]; odd frequency 2j+1
        // at hi[j], its mirror N - 2j - 1 at hi[S - 1 - j]. One pass over k, in order.
        lo[0] *= k[0];
        lo[q] *= k[s];
        hi[0] *= k[1];
        hi[s - 1] *= k[1].conj();
        let (lo_head, lo_tail) = lo.split_at_mut(q + 1);
        let (hi_head, hi_tail) = hi.split_at_mut(q);
        let pairs = k[2..s].chunks_exact(2);
        let heads = lo_head[1..q].iter_mut().zip(hi_head[1..].iter_mut());
        let tails = lo_tail
            .iter_mut()
            .rev()
            .zip(hi_tail[..q - 1].iter_mut().rev());
        for (((le, ho), (lm, hm)), kp) in heads.zip(tails).zip(pairs) {
            let (ke, ko) = (kp[0], kp[1]);
            *le *= ke;
            *ho *= ko;
            *lm *= ke.conj();
            *hm *= ko.conj();
        }
    }

    /// [`multiply_split`](Self::multiply_split) for a frequency-sparse problem: `k` holds the
    /// kept bins `f < m` (m <= N/2); bins `f` and `N - f` for `f < m` are multiplied, every other
    /// bin is cleared (positions from [`split_index`]).
    fn multiply_split_sparse(k: &[Complex32], buf: &mut [Complex32]) {
        let n = buf.len();
        let s = n / 2;
        let m = k.len();
        // Dropped: f in [m, N - m]. Even ones: j in [ceil(m/2), (N - m)/2]; odd ones:
        // j in [ceil((m - 1)/2), (N - m - 1)/2].
        buf[m.div_ceil(2)..=(n - m) / 2].fill(Complex32::default());
        buf[s + m / 2..=s + (n - m - 1) / 2].fill(Complex32::default());
        buf[0] *= k[0];
        for (f, &kf) in k.iter().enumerate().skip(1) {
            buf[split_index(f, s)] *= kf;
            buf[split_index(n - f, s)] *= kf.conj();
        }
    }
}

/// Where frequency `f` of a split spectrum sits: even `2j` at `j`, odd `2j + 1` at `S + j`.
fn split_index(f: usize, s: usize) -> usize {
    f / 2 + (f & 1) * s
}

/// The cross-channel product of a bin that is its own mirror (`f = 0`, `N/2`): `A = Re X`,
/// `B = i Im X`.
pub(crate) fn cross_own(x: Complex32, ka: Complex32, kb: Complex32) -> Complex32 {
    ka * x.re + kb * Complex32::new(0.0, x.im)
}

/// The cross-channel product ([`CpuFilterSpectrum::multiply_cross`]) of bins `x[i]` whose
/// mirrors are `mirrors[len - 1 - i]` (the mirrors in reverse order), with filter bins
/// `ka[i]`, `kb[i]`: `x[i] = A ka + B kb`, mirror `= conj(A ka - B kb)`. In blocks: the mirrors
/// of a block are copied out reversed and conjugated, so the products run as straight streams
/// that vectorize, then copied back.
pub(crate) fn cross_bins(
    x: &mut [Complex32],
    mirrors: &mut [Complex32],
    ka: &[Complex32],
    kb: &[Complex32],
) {
    const BLOCK: usize = 64;
    let len = x.len();
    assert!(mirrors.len() == len && ka.len() >= len && kb.len() >= len);
    let mut block = [Complex32::default(); BLOCK];
    let mut i0 = 0;
    while i0 < len {
        let b = BLOCK.min(len - i0);
        let src = &mut mirrors[len - i0 - b..len - i0];
        for (m, s) in block[..b].iter_mut().zip(src.iter().rev()) {
            *m = s.conj();
        }
        for (((x, m), &ka), &kb) in x[i0..i0 + b]
            .iter_mut()
            .zip(&mut block[..b])
            .zip(&ka[i0..i0 + b])
            .zip(&kb[i0..i0 + b])
        {
            let (xf, xm) = (*x, *m);
            let p = (xf + xm) * ka;
            let q = (xf - xm) * kb;
            *x = (p + q) * 0.5;
            *m = (p - q) * 0.5;
        }
        for (s, m) in src.iter_mut().rev().zip(&block[..b]) {
            *s = m.conj();
        }
        i0 += b;
    }
}

#[cfg(test)]
mod tests {
    use crate::CpuConvolution;
    use monarch_core::{Complex32, ConvSpec};
    use rustfft::FftPlanner;

    /// The layout depends on whether the problem has pairs (B * blocks >= 2): a filter prepared
    /// in the other one is a typed error, and the output is left untouched.
    #[test]
    fn a_filter_of_the_other_layout_is_a_typed_error() {
        let l = 1 << 18;
        let one = CpuConvolution::new(&ConvSpec::builder(1, 1, l, l).build().unwrap()).unwrap();
        let two = CpuConvolution::new(&ConvSpec::builder(2, 1, l, l).build().unwrap()).unwrap();
        let k = vec![0.5f32; l];
        let (natural, four_step) = (
            one.prepare_filter(&k).unwrap(),
            two.prepare_filter(&k).unwrap(),
        );
        assert!(natural.is_natural() && !four_step.is_natural());
        let u = vec![1.0f32; 2 * l];
        let mut y = vec![7.0f32; 2 * l];
        let err = two.forward(&natural, &u, None, &mut y).unwrap_err();
        assert!(err.to_string().contains("layout"), "{err}");
        assert!(y.iter().all(|&v| v == 7.0), "y written on error");
        let err = one
            .forward(&four_step, &u[..l], None, &mut y[..l])
            .unwrap_err();
        assert!(err.to_string().contains("layout"), "{err}");
        assert!(y.iter().all(|&v| v == 7.0), "y written on error");
    }

    /// A dense 2^19 problem stores the four-step layout; read in natural order (as the backward
    /// pass and lone segments do) it equals the scaled FFT of the filter.
    #[test]
    fn four_step_spectrum_reads_back_in_natural_order() {
        let (h, l) = (2, 1 << 18);
        let spec = ConvSpec::builder(2, h, l, l).build().unwrap();
        let n = spec.geometry().n();
        assert_eq!(n, 1 << 19);
        let k: Vec<f32> = (0..h * l)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) / 512.0)
            .collect();
        let filter = CpuConvolution::new(&spec)
            .unwrap()
            .prepare_filter(&k)
            .unwrap();
        assert!(
            !filter.is_natural(),
            "2^19 dense should use the four-step layout"
        );
        let fft = FftPlanner::new().plan_fft_forward(n);
        for c in 0..h {
            let mut want: Vec<Complex32> = (0..n)
                .map(|i| Complex32::new(if i < l { k[c * l + i] } else { 0.0 }, 0.0))
                .collect();
            fft.process(&mut want);
            let mut got = Vec::new();
            filter.natural_channel(c, &mut got);
            assert_eq!(got.len(), n / 2 + 1);
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (f, g) in got.iter().enumerate() {
                num += (g * n as f32 - want[f]).norm_sqr() as f64;
                den += want[f].norm_sqr() as f64;
            }
            let err = (num / den).sqrt();
            assert!(err < 1e-6, "channel {c}: {err:e}");
        }
    }
}
