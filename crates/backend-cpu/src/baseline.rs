//! [`RealFftBaseline`]: the straightforward realfft convolution, the CPU benchmark baseline.
//!
//! Per row: copy `u` into a zero-padded real buffer of size `N`, real FFT, multiply by the
//! precomputed filter spectrum, inverse real FFT, scale, copy out. Rows run in parallel on the
//! same rayon pool as the backend. Dense, ungated, single-block problems only (what a user would
//! write by hand for `L + K - 1 <= N`).

use crate::{error::CpuError, planner::real_ffts};
use monarch_core::{Complex32, ConvSpec, Element};
use rayon::prelude::*;
use realfft::{ComplexToReal, RealToComplex};
use std::sync::Arc;

/// The baseline convolution for one problem.
#[derive(Clone)]
pub struct RealFftBaseline {
    spec: ConvSpec,
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
}

impl std::fmt::Debug for RealFftBaseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealFftBaseline")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// The baseline's filter spectrum: `N/2 + 1` bins per channel, scaled by `1/N`.
#[derive(Debug, Clone)]
pub struct BaselineSpectrum {
    bins: Vec<Complex32>,
}

impl RealFftBaseline {
    /// Plans the baseline; errors for problems it does not cover (gated, sparse, blocked).
    pub fn new(spec: &ConvSpec) -> Result<Self, CpuError> {
        let g = spec.geometry();
        if spec.gated() || g.is_sparse() || g.blocks != 1 || (g.wraps && g.history != 0) {
            return Err(CpuError::Unsupported(
                "the realfft baseline covers dense, ungated, single-block problems only".into(),
            ));
        }
        let (r2c, c2r) = real_ffts(g.n());
        Ok(RealFftBaseline {
            spec: spec.clone(),
            r2c,
            c2r,
        })
    }

    /// Real FFT of every channel's filter, zero padded to `N`.
    pub fn prepare_filter(&self, k: &[f32]) -> Result<BaselineSpectrum, CpuError> {
        CpuError::check_len("k", k.len(), self.spec.filter_elems())?;
        let n = self.spec.geometry().n();
        let half = n / 2 + 1;
        let mut bins = vec![Complex32::default(); self.spec.channels() * half];
        let scale = 1.0 / n as f32;
        bins.par_chunks_mut(half)
            .zip(k.par_chunks(self.spec.filter_len()))
            .for_each_init(
                || (self.r2c.make_input_vec(), self.r2c.make_scratch_vec()),
                |(input, scratch), (dst, kh)| {
                    input.fill(0.0);
                    input[..kh.len()].copy_from_slice(kh);
                    // Lengths come from the same plan: this cannot fail.
                    let _ = self.r2c.process_with_scratch(input, dst, scratch);
                    for d in dst.iter_mut() {
                        *d *= scale;
                    }
                },
            );
        Ok(BaselineSpectrum { bins })
    }

    /// `y = conv(u, k)` row by row.
    pub fn forward<T: Element>(
        &self,
        spectrum: &BaselineSpectrum,
        u: &[T],
        y: &mut [T],
    ) -> Result<(), CpuError> {
        let spec = &self.spec;
        CpuError::check_len("u", u.len(), spec.io_len())?;
        CpuError::check_len("y", y.len(), spec.io_len())?;
        let (l, channels) = (spec.length(), spec.channels());
        let half = spec.geometry().n() / 2 + 1;
        CpuError::check_len("spectrum", spectrum.bins.len(), channels * half)?;
        y.par_chunks_mut(l)
            .zip(u.par_chunks(l))
            .enumerate()
            .for_each_init(
                || {
                    (
                        self.r2c.make_input_vec(),
                        self.r2c.make_output_vec(),
                        self.r2c
                            .make_scratch_vec()
                            .into_iter()
                            .chain(self.c2r.make_scratch_vec())
                            .collect::<Vec<_>>(),
                    )
                },
                |(real, freq, scratch), (row, (yr, ur))| {
                    let h = row % channels;
                    T::load_f32(ur, &mut real[..l]);
                    real[l..].fill(0.0);
                    let _ = self.r2c.process_with_scratch(real, freq, scratch);
                    for (x, s) in freq
                        .iter_mut()
                        .zip(&spectrum.bins[h * half..(h + 1) * half])
                    {
                        *x *= s;
                    }
                    // The C2R input's imaginary parts at DC and Nyquist are zero up to rounding.
                    freq[0].im = 0.0;
                    freq[half - 1].im = 0.0;
                    let _ = self.c2r.process_with_scratch(freq, real, scratch);
                    T::store_f32(&real[..l], yr);
                },
            );
        Ok(())
    }
}
