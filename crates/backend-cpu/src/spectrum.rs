//! [`CpuFilterSpectrum`]: Hermitian-half filter spectra (kept bins only) and the pointwise
//! products the engine applies to a packed pair's spectrum.

use monarch_core::{Complex32, ConvGeometry};

/// The filter spectrum of every channel, prepared for one [`CpuConvolution`]'s geometry.
///
/// A real filter's spectrum is Hermitian (`K[N - f] = conj(K[f])`), so only bins
/// `f <= N/2` are stored, scaled by `1/N`: `N/2 + 1` values per channel for a dense problem
/// (what a real FFT stores) and only the kept ones, `f < m`, for a frequency-sparse one.
///
/// [`CpuConvolution`]: crate::CpuConvolution
#[derive(Debug, Clone, PartialEq)]
pub struct CpuFilterSpectrum {
    pub(crate) geometry: ConvGeometry,
    pub(crate) channels: usize,
    pub(crate) filter_len: usize,
    /// Stored bins per channel: `[0, stored)`.
    stored: usize,
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
            bins: Vec::new(),
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
}
