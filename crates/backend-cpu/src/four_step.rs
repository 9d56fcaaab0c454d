//! [`FourStep`]: the length-`N` complex FFT of a packed pair as one radix-16 Monarch step around
//! 16 cache-sized sub-FFTs, for large `N` (the pointwise product runs per sub-FFT, in L2).
//!
//! With `M = N/16` and the sequence as 16 rows of `M` (`x[n + q M]`, `q < 16`):
//!
//! ```text
//! t_r[n] = W_N^{n r} * sum_q x[n + q M] W_16^{q r}     (stage 1: DFT-16 down each column)
//! X[16 k + r] = FFT_M(t_r)[k]                          (sub-FFT r, rustfft)
//! ```
//!
//! and the inverse mirrors it: inverse sub-FFTs, then `y[n + q M] = sum_r W_16^{-q r}
//! W_N^{-n r} s_r[n]` for the output rows needed. The column DFTs run 8 columns at a time in
//! SIMD lanes with real and imaginary parts apart (the two packed rows are exactly the real and
//! imaginary parts, so no shuffles on the way in), as two DFT-8s: rows 8..16 known to be zero
//! (the causal padding) are never loaded, and output rows past the needed ones are never formed.
//! Twiddles `W_N^{n r}` are powers of a table `W_N^n` (f64, rounded once), at most four
//! products deep.
//!
//! Why: rustfft's transforms of 2^17 points and more leave L2; those of 2^19 and 2^20 cost
//! 1.3-1.8x more per point than 16 transforms of 2^15 or 2^16 (measured on the 2-core EPYC,
//! `docs/perf.md`). Sub-arrays are `M + 16` values apart so the 16 streams of a column pass do
//! not share cache sets.

use crate::planner::complex_ffts;
use crate::spectrum::{cross_bins, cross_own};
use monarch_core::{twiddle::root_of_unity, Complex32, Complex64};
use rustfft::Fft;
use std::sync::Arc;

/// Radix of the outer step (sub-FFTs per pair).
pub(crate) const RADIX: usize = 16;
/// Columns per stage step: 16 rows of re and im stay in L1 (16 KiB of staging).
const TILE: usize = 128;
/// Complex values between consecutive sub-arrays beyond `M`.
const PAD: usize = 16;

/// `W_16^q` for `q < 8`: `(cos, -sin)` of `2 pi q / 16`.
const W16: [(f32, f32); 8] = [
    (1.0, 0.0),
    (0.923_879_5, -0.382_683_43),
    (
        std::f32::consts::FRAC_1_SQRT_2,
        -std::f32::consts::FRAC_1_SQRT_2,
    ),
    (0.382_683_43, -0.923_879_5),
    (0.0, -1.0),
    (-0.382_683_43, -0.923_879_5),
    (
        -std::f32::consts::FRAC_1_SQRT_2,
        -std::f32::consts::FRAC_1_SQRT_2,
    ),
    (-0.923_879_5, -0.382_683_43),
];

/// Frequency `f` (in `[0, N)`) of one channel's spectrum `k` in the layout of
/// [`FourStep::keep`] with sub-FFTs of length `m`.
pub(crate) fn layout_bin(k: &[Complex32], m: usize, f: usize) -> Complex32 {
    let (j, r) = (f / RADIX, f % RADIX);
    if r <= RADIX / 2 {
        k[r * m + j]
    } else {
        // Frequency 16 j + r mirrors 16 (M - 1 - j) + (16 - r).
        k[(RADIX - r) * m + m - 1 - j].conj()
    }
}

/// The four-step form of one size `N` (immutable, shared between threads).
pub(crate) struct FourStep {
    n: usize,
    /// Sub-FFT length `M = N/16`.
    m: usize,
    /// Distance between sub-arrays in the working buffer.
    stride: usize,
    fft: Arc<dyn Fft<f32>>,
    ifft: Arc<dyn Fft<f32>>,
    scratch_len: usize,
    /// `W_N^n` for `n < M`, real and imaginary parts apart.
    tw_re: Vec<f32>,
    tw_im: Vec<f32>,
}

impl FourStep {
    /// The form for size `n` (a power of two with `n / 16` a multiple of [`TILE`]).
    pub(crate) fn new(n: usize) -> Self {
        let m = n / RADIX;
        assert!(
            n.is_power_of_two() && m % TILE == 0,
            "four-step size {n} unsupported"
        );
        let (fft, ifft) = complex_ffts(m);
        let scratch_len = fft
            .get_inplace_scratch_len()
            .max(ifft.get_inplace_scratch_len());
        let (tw_re, tw_im) = (0..m)
            .map(|i| {
                let w = root_of_unity(i as u64, n as u64);
                (w.re as f32, w.im as f32)
            })
            .unzip();
        FourStep {
            n,
            m,
            stride: m + PAD,
            fft,
            ifft,
            scratch_len,
            tw_re,
            tw_im,
        }
    }

    /// Sub-FFT length `M`.
    pub(crate) fn sub_len(&self) -> usize {
        self.m
    }
    /// Complex values of one pair's working buffer.
    pub(crate) fn buf_len(&self) -> usize {
        RADIX * self.stride
    }
    pub(crate) fn scratch_len(&self) -> usize {
        self.scratch_len
    }
    /// f32 values of the staging a stage step needs (16 rows of re and im).
    pub(crate) fn staging_len() -> usize {
        2 * RADIX * TILE
    }
    /// Positions per load or store call.
    pub(crate) fn tile_len() -> usize {
        TILE
    }

    fn sub<'b>(&self, buf: &'b mut [Complex32], r: usize) -> &'b mut [Complex32] {
        &mut buf[r * self.stride..r * self.stride + self.m]
    }

    /// Stage 1: fills the 16 sub-arrays of `buf` from the sequence, read a tile at a time by
    /// `load(p0, re, im)`, which writes positions `[p0, p0 + T)` and returns `true`, or returns
    /// `false` when they are all zero (nothing is read then).
    pub(crate) fn load(
        &self,
        buf: &mut [Complex32],
        staging: &mut [f32],
        mut load: impl FnMut(usize, &mut [f32], &mut [f32]) -> bool,
    ) {
        let (re, im) = staging[..2 * RADIX * TILE].split_at_mut(RADIX * TILE);
        for c0 in (0..self.m).step_by(TILE) {
            let mut loaded = 0u32;
            for q in 0..RADIX {
                let (r, i) = (
                    &mut re[q * TILE..(q + 1) * TILE],
                    &mut im[q * TILE..(q + 1) * TILE],
                );
                if load(q * self.m + c0, r, i) {
                    loaded |= 1 << q;
                }
            }
            // Rows the kernel reads (all 16 when any upper one holds data) and were not
            // loaded are zeros.
            let upper = loaded >> (RADIX / 2) != 0;
            let rows = if upper { RADIX } else { RADIX / 2 };
            for q in (0..rows).filter(|q| loaded & (1 << q) == 0) {
                re[q * TILE..(q + 1) * TILE].fill(0.0);
                im[q * TILE..(q + 1) * TILE].fill(0.0);
            }
            let tw = (&self.tw_re[c0..c0 + TILE], &self.tw_im[c0..c0 + TILE]);
            let out = &mut buf[c0..];
            kernels::columns_forward(re, im, tw, out, self.stride, upper);
        }
    }

    /// The forward sub-FFTs alone (filter preparation).
    pub(crate) fn forward(&self, buf: &mut [Complex32], scratch: &mut [Complex32]) {
        for r in 0..RADIX {
            self.fft.process_with_scratch(self.sub(buf, r), scratch);
        }
    }

    /// The inverse sub-FFTs alone (the backward: before [`store`](Self::store)).
    pub(crate) fn inverse(&self, buf: &mut [Complex32], scratch: &mut [Complex32]) {
        for r in 0..RADIX {
            self.ifft.process_with_scratch(self.sub(buf, r), scratch);
        }
    }

    /// Multiplies a forward-transformed buffer by the filter spectrum `k` (the layout of
    /// [`keep`](Self::keep)), or by its conjugate (`conjugate`: the adjoint), bin by bin.
    pub(crate) fn multiply(&self, buf: &mut [Complex32], k: &[Complex32], conjugate: bool) {
        for r in 0..RADIX {
            self.multiply_sub(self.sub(buf, r), r, k, conjugate);
        }
    }

    /// [`multiply`](Self::multiply) on sub-array `r` alone.
    #[inline(always)]
    fn multiply_sub(&self, sub: &mut [Complex32], r: usize, k: &[Complex32], conjugate: bool) {
        let m = self.m;
        if r <= RADIX / 2 {
            for (x, &kp) in sub.iter_mut().zip(&k[r * m..(r + 1) * m]) {
                *x *= if conjugate { kp.conj() } else { kp };
            }
        } else {
            // Frequency 16 j + r mirrors 16 (M - 1 - j) + (16 - r): conjugated, reversed.
            let mirror = &k[(RADIX - r) * m..(RADIX - r + 1) * m];
            for (x, &kp) in sub.iter_mut().zip(mirror.iter().rev()) {
                *x *= if conjugate { kp } else { kp.conj() };
            }
        }
    }

    /// `acc += d * conj(z)` bin by bin over the sub-arrays of three buffers of this layout
    /// (the backward's filter correlation; `acc` in f64).
    pub(crate) fn accumulate_correlation(
        &self,
        acc: &mut [Complex64],
        d: &[Complex32],
        z: &[Complex32],
    ) {
        for r in 0..RADIX {
            let range = r * self.stride..r * self.stride + self.m;
            for ((a, &dv), &zv) in acc[range.clone()]
                .iter_mut()
                .zip(&d[range.clone()])
                .zip(&z[range])
            {
                let p = dv * zv.conj();
                *a += Complex64::new(p.re as f64, p.im as f64);
            }
        }
    }

    /// Per sub-FFT, while it is in cache: forward, product with the filter spectrum `k` (the
    /// layout of [`keep`](Self::keep)), inverse.
    pub(crate) fn convolve(
        &self,
        buf: &mut [Complex32],
        scratch: &mut [Complex32],
        k: &[Complex32],
    ) {
        for r in 0..RADIX {
            let sub = self.sub(buf, r);
            self.fft.process_with_scratch(sub, scratch);
            self.multiply_sub(sub, r, k, false);
            self.ifft.process_with_scratch(sub, scratch);
        }
    }

    /// [`convolve`](Self::convolve) for a cross-channel pair `a + i*b` (segments of two
    /// channels, filter spectra `ka` and `kb` in this layout), separated in the frequency domain
    /// as `CpuFilterSpectrum::multiply_cross` does. Frequency `16 j + r` mirrors
    /// `16 (M - 1 - j) + (16 - r)` for `r` in `1..16` and `16 ((M - j) mod M)` for `r = 0`, so
    /// sub-arrays `r` and `16 - r` are transformed, multiplied and inverted together (both in
    /// L2); 0 and 8 hold their own mirrors.
    pub(crate) fn convolve_cross(
        &self,
        buf: &mut [Complex32],
        scratch: &mut [Complex32],
        ka: &[Complex32],
        kb: &[Complex32],
    ) {
        let (m, half) = (self.m, self.m / 2);
        for r in 0..=RADIX / 2 {
            let (ka, kb) = (&ka[r * m..(r + 1) * m], &kb[r * m..(r + 1) * m]);
            if r == 0 || r == RADIX / 2 {
                let sub = self.sub(buf, r);
                self.fft.process_with_scratch(sub, scratch);
                if r == 0 {
                    // j pairs with M - j; 0 and M/2 (frequencies 0 and N/2) are their own.
                    sub[0] = cross_own(sub[0], ka[0], kb[0]);
                    sub[half] = cross_own(sub[half], ka[half], kb[half]);
                    let (lower, upper) = sub.split_at_mut(half);
                    cross_bins(&mut lower[1..], &mut upper[1..], &ka[1..half], &kb[1..half]);
                } else {
                    // j pairs with M - 1 - j.
                    let (lower, upper) = sub.split_at_mut(half);
                    cross_bins(lower, upper, &ka[..half], &kb[..half]);
                }
                self.ifft.process_with_scratch(sub, scratch);
            } else {
                let (lo, hi) = buf.split_at_mut((RADIX - r) * self.stride);
                let x = &mut lo[r * self.stride..r * self.stride + m];
                let mirror = &mut hi[..m];
                self.fft.process_with_scratch(x, scratch);
                self.fft.process_with_scratch(mirror, scratch);
                // j pairs with M - 1 - j of sub-array 16 - r.
                cross_bins(x, mirror, ka, kb);
                self.ifft.process_with_scratch(x, scratch);
                self.ifft.process_with_scratch(mirror, scratch);
            }
        }
    }

    /// Stage 3: the inverse column DFTs, handing output positions `[0, needed)` (whole tiles)
    /// to `store(p0, re, im)`, a tile at a time. Values are unnormalised (`N` times the
    /// inverse) unless the spectrum was scaled.
    pub(crate) fn store(
        &self,
        buf: &[Complex32],
        staging: &mut [f32],
        needed: usize,
        mut store: impl FnMut(usize, &mut [f32], &mut [f32]),
    ) {
        let rows = needed.div_ceil(self.m).min(RADIX);
        let (re, im) = staging[..2 * RADIX * TILE].split_at_mut(RADIX * TILE);
        for c0 in (0..self.m).step_by(TILE) {
            if c0 >= needed {
                break;
            }
            let tw = (&self.tw_re[c0..c0 + TILE], &self.tw_im[c0..c0 + TILE]);
            kernels::columns_inverse(&buf[c0..], self.stride, tw, re, im, rows > RADIX / 2);
            for q in 0..rows {
                let p0 = q * self.m + c0;
                if p0 < needed {
                    store(
                        p0,
                        &mut re[q * TILE..(q + 1) * TILE],
                        &mut im[q * TILE..(q + 1) * TILE],
                    );
                }
            }
        }
    }

    /// Copies sub-arrays `0..=8` of a forward-transformed buffer, scaled, into `dst`: value
    /// `r M + j` is frequency `16 j + r`; the others are mirrors of these.
    pub(crate) fn keep(&self, buf: &mut [Complex32], scale: f32, dst: &mut [Complex32]) {
        for r in 0..=RADIX / 2 {
            let sub = self.sub(buf, r);
            for (d, &v) in dst[r * self.m..(r + 1) * self.m].iter_mut().zip(sub.iter()) {
                *d = v * scale;
            }
        }
    }

    pub(crate) fn n(&self) -> usize {
        self.n
    }
}

/// The column passes, eight columns per step in SIMD lanes: AVX2 + FMA where the CPU has them
/// (checked once), portable lanes otherwise (the same arithmetic).
mod kernels {
    use super::{Complex32, RADIX, TILE, W16};

    /// Eight f32 lanes and the operations the column DFTs use.
    pub(super) trait Lanes: Copy {
        /// # Safety
        /// `p` is valid for reading 8 values.
        unsafe fn load(p: *const f32) -> Self;
        /// # Safety
        /// `p` is valid for writing 8 values.
        unsafe fn store(self, p: *mut f32);
        fn splat(v: f32) -> Self;
        fn add(self, o: Self) -> Self;
        fn sub(self, o: Self) -> Self;
        fn mul(self, o: Self) -> Self;
        /// `self * a - b`
        fn mul_sub(self, a: Self, b: Self) -> Self;
        /// `self * a + b`
        fn mul_add(self, a: Self, b: Self) -> Self;
        /// Stores `(re, im)` interleaved as 8 complex values.
        /// # Safety
        /// `p` is valid for writing 16 values.
        unsafe fn store_complex(re: Self, im: Self, p: *mut f32);
        /// Loads 8 interleaved complex values as `(re, im)`.
        /// # Safety
        /// `p` is valid for reading 16 values.
        unsafe fn load_complex(p: *const f32) -> (Self, Self);
    }

    /// Eight complex values, parts apart.
    #[derive(Clone, Copy)]
    struct Cv<V> {
        re: V,
        im: V,
    }

    impl<V: Lanes> Cv<V> {
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Cv {
                re: self.re.add(o.re),
                im: self.im.add(o.im),
            }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Cv {
                re: self.re.sub(o.re),
                im: self.im.sub(o.im),
            }
        }
        /// `self * (-i)`.
        #[inline(always)]
        fn mul_neg_i(self) -> Self {
            Cv {
                re: self.im,
                im: V::splat(0.0).sub(self.re),
            }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            Cv {
                re: self.re.mul_sub(o.re, self.im.mul(o.im)),
                im: self.re.mul_add(o.im, self.im.mul(o.re)),
            }
        }
        #[inline(always)]
        fn mul_const(self, (re, im): (f32, f32)) -> Self {
            self.mul(Cv {
                re: V::splat(re),
                im: V::splat(im),
            })
        }
        /// Real and imaginary parts exchanged: `DFT^-1(x) = swap(DFT(swap(x)))`.
        #[inline(always)]
        fn swap(self) -> Self {
            Cv {
                re: self.im,
                im: self.re,
            }
        }
    }

    /// Forward DFT-8 (`W_8 = exp(-2 pi i / 8)`).
    #[inline(always)]
    fn dft8<V: Lanes>(x: [Cv<V>; 8]) -> [Cv<V>; 8] {
        let s = V::splat(std::f32::consts::FRAC_1_SQRT_2);
        let (a0, a1) = (x[0].add(x[4]), x[0].sub(x[4]));
        let (a2, a3) = (x[2].add(x[6]), x[2].sub(x[6]).mul_neg_i());
        let (b0, b1) = (x[1].add(x[5]), x[1].sub(x[5]));
        let (b2, b3) = (x[3].add(x[7]), x[3].sub(x[7]).mul_neg_i());
        let (e0, e1, e2, e3) = (a0.add(a2), a1.add(a3), a0.sub(a2), a1.sub(a3));
        let (o0, o1, o2, o3) = (b0.add(b2), b1.add(b3), b0.sub(b2), b1.sub(b3));
        // o1 * W_8 = s (re + im, im - re); o3 * W_8^3 = s (im - re, -(re + im)).
        let w1 = Cv {
            re: s.mul(o1.re.add(o1.im)),
            im: s.mul(o1.im.sub(o1.re)),
        };
        let w2 = o2.mul_neg_i();
        let w3 = Cv {
            re: s.mul(o3.im.sub(o3.re)),
            im: V::splat(0.0).sub(s.mul(o3.re.add(o3.im))),
        };
        [
            e0.add(o0),
            e1.add(w1),
            e2.add(w2),
            e3.add(w3),
            e0.sub(o0),
            e1.sub(w1),
            e2.sub(w2),
            e3.sub(w3),
        ]
    }

    #[inline(always)]
    fn idft8<V: Lanes>(x: [Cv<V>; 8]) -> [Cv<V>; 8] {
        dft8(x.map(Cv::swap)).map(Cv::swap)
    }

    /// `w^0 .. w^15`, each at most four products from `w`.
    #[inline(always)]
    fn powers<V: Lanes>(w: Cv<V>) -> [Cv<V>; 16] {
        let one = Cv {
            re: V::splat(1.0),
            im: V::splat(0.0),
        };
        let w2 = w.mul(w);
        let w3 = w2.mul(w);
        let w4 = w2.mul(w2);
        let w8 = w4.mul(w4);
        let low = [one, w, w2, w3, w4, w4.mul(w), w4.mul(w2), w4.mul(w3)];
        let mut all = [one; 16];
        for (i, &v) in low.iter().enumerate() {
            all[i] = v;
            all[i + 8] = w8.mul(v);
        }
        all
    }

    /// Stage 1 over one tile of columns: `re`, `im` hold 16 rows of [`TILE`]; `out` starts at
    /// the tile's first column of sub-array 0 (sub-array `r` at `r * stride`). `upper`: rows
    /// 8..16 hold data (otherwise they are zero and not read).
    #[inline(always)]
    pub(super) fn forward_tile<V: Lanes>(
        re: &[f32],
        im: &[f32],
        tw: (&[f32], &[f32]),
        out: &mut [Complex32],
        stride: usize,
        upper: bool,
    ) {
        if upper {
            forward_columns::<V, true>(re, im, tw, out, stride)
        } else {
            forward_columns::<V, false>(re, im, tw, out, stride)
        }
    }

    #[inline(always)]
    fn forward_columns<V: Lanes, const UPPER: bool>(
        re: &[f32],
        im: &[f32],
        (tw_re, tw_im): (&[f32], &[f32]),
        out: &mut [Complex32],
        stride: usize,
    ) {
        assert!(re.len() >= RADIX * TILE && im.len() >= RADIX * TILE);
        assert!(tw_re.len() >= TILE && tw_im.len() >= TILE);
        assert!(out.len() >= (RADIX - 1) * stride + TILE);
        let o = out.as_mut_ptr().cast::<f32>();
        for c in (0..TILE).step_by(8) {
            // SAFETY: every index is below the lengths asserted above (c + 8 <= TILE).
            unsafe {
                let row = |q: usize| Cv {
                    re: V::load(re.as_ptr().add(q * TILE + c)),
                    im: V::load(im.as_ptr().add(q * TILE + c)),
                };
                // X[2s] = DFT8(x_q + x_{q+8}), X[2s+1] = DFT8((x_q - x_{q+8}) W_16^q).
                let mut even = [row(0); 8];
                let mut odd = [row(0); 8];
                for q in 0..8 {
                    let lo = row(q);
                    let (e, d) = if UPPER {
                        let hi = row(q + 8);
                        (lo.add(hi), lo.sub(hi))
                    } else {
                        (lo, lo)
                    };
                    even[q] = e;
                    odd[q] = if q == 0 { d } else { d.mul_const(W16[q]) };
                }
                let (e, od) = (dft8(even), dft8(odd));
                let w = Cv {
                    re: V::load(tw_re.as_ptr().add(c)),
                    im: V::load(tw_im.as_ptr().add(c)),
                };
                let p = powers(w);
                for s in 0..8 {
                    let ev = if s == 0 { e[0] } else { e[s].mul(p[2 * s]) };
                    let ov = od[s].mul(p[2 * s + 1]);
                    V::store_complex(ev.re, ev.im, o.add(2 * (2 * s * stride + c)));
                    V::store_complex(ov.re, ov.im, o.add(2 * ((2 * s + 1) * stride + c)));
                }
            }
        }
    }

    /// Stage 3 over one tile of columns: reads the 16 sub-arrays (`inp` starts at the tile's
    /// first column of sub-array 0), writes output rows `0..8` (and `8..16` when `upper`) into
    /// `re`, `im` (16 rows of [`TILE`]).
    #[inline(always)]
    pub(super) fn inverse_tile<V: Lanes>(
        inp: &[Complex32],
        stride: usize,
        tw: (&[f32], &[f32]),
        re: &mut [f32],
        im: &mut [f32],
        upper: bool,
    ) {
        if upper {
            inverse_columns::<V, true>(inp, stride, tw, re, im)
        } else {
            inverse_columns::<V, false>(inp, stride, tw, re, im)
        }
    }

    #[inline(always)]
    fn inverse_columns<V: Lanes, const UPPER: bool>(
        inp: &[Complex32],
        stride: usize,
        (tw_re, tw_im): (&[f32], &[f32]),
        re: &mut [f32],
        im: &mut [f32],
    ) {
        assert!(re.len() >= RADIX * TILE && im.len() >= RADIX * TILE);
        assert!(tw_re.len() >= TILE && tw_im.len() >= TILE);
        assert!(inp.len() >= (RADIX - 1) * stride + TILE);
        let ip = inp.as_ptr().cast::<f32>();
        for c in (0..TILE).step_by(8) {
            // SAFETY: every index is below the lengths asserted above (c + 8 <= TILE).
            unsafe {
                let w = Cv {
                    re: V::load(tw_re.as_ptr().add(c)),
                    im: V::splat(0.0).sub(V::load(tw_im.as_ptr().add(c))),
                };
                let p = powers(w);
                let sub = |r: usize| {
                    let (re, im) = V::load_complex(ip.add(2 * (r * stride + c)));
                    Cv { re, im }
                };
                let mut ze = [p[0]; 8];
                let mut zo = [p[0]; 8];
                for s in 0..8 {
                    ze[s] = if s == 0 {
                        sub(0)
                    } else {
                        sub(2 * s).mul(p[2 * s])
                    };
                    zo[s] = sub(2 * s + 1).mul(p[2 * s + 1]);
                }
                let (e, od) = (idft8(ze), idft8(zo));
                for q in 0..8 {
                    let t = if q == 0 {
                        od[0]
                    } else {
                        od[q].mul_const((W16[q].0, -W16[q].1))
                    };
                    let lo = e[q].add(t);
                    lo.re.store(re.as_mut_ptr().add(q * TILE + c));
                    lo.im.store(im.as_mut_ptr().add(q * TILE + c));
                    if UPPER {
                        let hi = e[q].sub(t);
                        hi.re.store(re.as_mut_ptr().add((q + 8) * TILE + c));
                        hi.im.store(im.as_mut_ptr().add((q + 8) * TILE + c));
                    }
                }
            }
        }
    }

    /// Portable lanes.
    #[derive(Clone, Copy)]
    pub(super) struct Portable([f32; 8]);

    impl Portable {
        #[inline(always)]
        fn zip(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
            Portable(std::array::from_fn(|i| f(self.0[i], o.0[i])))
        }
    }

    impl Lanes for Portable {
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller guarantees 8 readable values.
            Portable(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller guarantees 8 writable values.
            unsafe { p.cast::<[f32; 8]>().write_unaligned(self.0) }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            Portable([v; 8])
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            self.zip(o, |a, b| a + b)
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            self.zip(o, |a, b| a - b)
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            self.zip(o, |a, b| a * b)
        }
        #[inline(always)]
        fn mul_sub(self, a: Self, b: Self) -> Self {
            self.mul(a).sub(b)
        }
        #[inline(always)]
        fn mul_add(self, a: Self, b: Self) -> Self {
            self.mul(a).add(b)
        }
        #[inline(always)]
        unsafe fn store_complex(re: Self, im: Self, p: *mut f32) {
            let mut v = [0.0f32; 16];
            for i in 0..8 {
                v[2 * i] = re.0[i];
                v[2 * i + 1] = im.0[i];
            }
            // SAFETY: the caller guarantees 16 writable values.
            unsafe { p.cast::<[f32; 16]>().write_unaligned(v) }
        }
        #[inline(always)]
        unsafe fn load_complex(p: *const f32) -> (Self, Self) {
            // SAFETY: the caller guarantees 16 readable values.
            let v = unsafe { p.cast::<[f32; 16]>().read_unaligned() };
            (
                Portable(std::array::from_fn(|i| v[2 * i])),
                Portable(std::array::from_fn(|i| v[2 * i + 1])),
            )
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod avx {
        use super::Lanes;
        use std::arch::x86_64::*;

        /// Eight lanes in one AVX register (only used inside `avx2,fma` functions).
        #[derive(Clone, Copy)]
        pub(super) struct Avx(__m256);

        // SAFETY (all methods): only called from functions compiled with `avx2,fma` enabled,
        // which run only after `is_x86_feature_detected!` confirmed both.
        impl Lanes for Avx {
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                // SAFETY: 8 readable values (caller); AVX present (module contract).
                Avx(unsafe { _mm256_loadu_ps(p) })
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                // SAFETY: 8 writable values (caller); AVX present (module contract).
                unsafe { _mm256_storeu_ps(p, self.0) }
            }
            #[inline(always)]
            fn splat(v: f32) -> Self {
                // SAFETY: AVX present (module contract).
                Avx(unsafe { _mm256_set1_ps(v) })
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                // SAFETY: AVX present (module contract).
                Avx(unsafe { _mm256_add_ps(self.0, o.0) })
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                // SAFETY: AVX present (module contract).
                Avx(unsafe { _mm256_sub_ps(self.0, o.0) })
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                // SAFETY: AVX present (module contract).
                Avx(unsafe { _mm256_mul_ps(self.0, o.0) })
            }
            #[inline(always)]
            fn mul_sub(self, a: Self, b: Self) -> Self {
                // SAFETY: FMA present (module contract).
                Avx(unsafe { _mm256_fmsub_ps(self.0, a.0, b.0) })
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                // SAFETY: FMA present (module contract).
                Avx(unsafe { _mm256_fmadd_ps(self.0, a.0, b.0) })
            }
            #[inline(always)]
            unsafe fn store_complex(re: Self, im: Self, p: *mut f32) {
                // SAFETY: 16 writable values (caller); AVX present (module contract).
                unsafe {
                    let lo = _mm256_unpacklo_ps(re.0, im.0);
                    let hi = _mm256_unpackhi_ps(re.0, im.0);
                    _mm256_storeu_ps(p, _mm256_permute2f128_ps(lo, hi, 0x20));
                    _mm256_storeu_ps(p.add(8), _mm256_permute2f128_ps(lo, hi, 0x31));
                }
            }
            #[inline(always)]
            unsafe fn load_complex(p: *const f32) -> (Self, Self) {
                // SAFETY: 16 readable values (caller); AVX present (module contract).
                unsafe {
                    let a = _mm256_loadu_ps(p);
                    let b = _mm256_loadu_ps(p.add(8));
                    let lo = _mm256_permute2f128_ps(a, b, 0x20);
                    let hi = _mm256_permute2f128_ps(a, b, 0x31);
                    (
                        Avx(_mm256_shuffle_ps(lo, hi, 0b10_00_10_00)),
                        Avx(_mm256_shuffle_ps(lo, hi, 0b11_01_11_01)),
                    )
                }
            }
        }

        /// # Safety
        /// The CPU has AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn forward_tile(
            re: &[f32],
            im: &[f32],
            tw: (&[f32], &[f32]),
            out: &mut [super::Complex32],
            stride: usize,
            upper: bool,
        ) {
            super::forward_tile::<Avx>(re, im, tw, out, stride, upper)
        }

        /// # Safety
        /// The CPU has AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn inverse_tile(
            inp: &[super::Complex32],
            stride: usize,
            tw: (&[f32], &[f32]),
            re: &mut [f32],
            im: &mut [f32],
            upper: bool,
        ) {
            super::inverse_tile::<Avx>(inp, stride, tw, re, im, upper)
        }
    }

    /// Whether the AVX2 + FMA kernels run here (checked once per process; `FFTCONV_CPU_SIMD=0`
    /// forces the portable lanes).
    pub(super) fn use_avx() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::sync::OnceLock;
            static AVX: OnceLock<bool> = OnceLock::new();
            *AVX.get_or_init(|| {
                std::env::var("FFTCONV_CPU_SIMD").map_or(true, |v| v != "0")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    pub(super) fn columns_forward(
        re: &[f32],
        im: &[f32],
        tw: (&[f32], &[f32]),
        out: &mut [Complex32],
        stride: usize,
        upper: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if use_avx() {
            // SAFETY: AVX2 and FMA were detected.
            return unsafe { avx::forward_tile(re, im, tw, out, stride, upper) };
        }
        forward_tile::<Portable>(re, im, tw, out, stride, upper)
    }

    pub(super) fn columns_inverse(
        inp: &[Complex32],
        stride: usize,
        tw: (&[f32], &[f32]),
        re: &mut [f32],
        im: &mut [f32],
        upper: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if use_avx() {
            // SAFETY: AVX2 and FMA were detected.
            return unsafe { avx::inverse_tile(inp, stride, tw, re, im, upper) };
        }
        inverse_tile::<Portable>(inp, stride, tw, re, im, upper)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustfft::FftPlanner;

    /// Deterministic values in [-1, 1) (also the backward's tests' inputs).
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn rel_err(a: &[Complex32], b: &[Complex32]) -> f64 {
        let num: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).norm_sqr() as f64)
            .sum();
        let den: f64 = b.iter().map(|y| y.norm_sqr() as f64).sum();
        (num / den).sqrt()
    }

    /// Stage 1 plus the sub-FFTs equal a length-`N` FFT, with and without the upper rows.
    #[test]
    fn forward_matches_a_whole_fft() {
        for (n, filled) in [(1 << 11, 1 << 11), (1 << 11, 1 << 10), (1 << 13, 3000)] {
            let fs = FourStep::new(n);
            let (re, im) = (noise(filled, 1), noise(filled, 2));
            let mut buf = vec![Complex32::default(); fs.buf_len()];
            let mut staging = vec![0.0; FourStep::staging_len()];
            let mut scratch = vec![Complex32::default(); fs.scratch_len()];
            fs.load(&mut buf, &mut staging, |p0, r, i| {
                if p0 >= filled {
                    return false;
                }
                for j in 0..r.len() {
                    r[j] = re.get(p0 + j).copied().unwrap_or(0.0);
                    i[j] = im.get(p0 + j).copied().unwrap_or(0.0);
                }
                true
            });
            fs.forward(&mut buf, &mut scratch);
            let mut want: Vec<Complex32> = (0..n)
                .map(|j| Complex32::new(*re.get(j).unwrap_or(&0.0), *im.get(j).unwrap_or(&0.0)))
                .collect();
            FftPlanner::new().plan_fft_forward(n).process(&mut want);
            let got: Vec<Complex32> = (0..n)
                .map(|f| buf[(f % RADIX) * fs.stride + f / RADIX])
                .collect();
            let err = rel_err(&got, &want);
            assert!(err < 2e-6, "n {n} filled {filled}: {err:e}");
        }
    }

    /// Stage 3 equals a length-`N` inverse FFT on every position it hands out, for all rows
    /// and for the lower half only.
    #[test]
    fn store_matches_a_whole_inverse() {
        let n = 1 << 12;
        let fs = FourStep::new(n);
        let vals = noise(2 * n, 3);
        let spectrum: Vec<Complex32> = vals.chunks(2).map(|c| Complex32::new(c[0], c[1])).collect();
        let mut buf = vec![Complex32::default(); fs.buf_len()];
        for (f, &v) in spectrum.iter().enumerate() {
            buf[(f % RADIX) * fs.stride + f / RADIX] = v;
        }
        let mut scratch = vec![Complex32::default(); fs.scratch_len()];
        for r in 0..RADIX {
            fs.ifft
                .process_with_scratch(fs.sub(&mut buf, r), &mut scratch);
        }
        let mut want = spectrum.clone();
        FftPlanner::new().plan_fft_inverse(n).process(&mut want);
        for needed in [n, n / 2, 1000] {
            let mut got = vec![Complex32::new(f32::NAN, f32::NAN); n];
            let mut staging = vec![0.0; FourStep::staging_len()];
            fs.store(&buf, &mut staging, needed, |p0, r, i| {
                for j in 0..r.len() {
                    got[p0 + j] = Complex32::new(r[j], i[j]);
                }
            });
            let err = rel_err(&got[..needed], &want[..needed]);
            assert!(err < 2e-6, "needed {needed}: {err:e}");
        }
    }

    /// `keep`, `bin` and `convolve`: a real filter's spectrum applied to a packed pair is the
    /// circular convolution of both rows.
    #[test]
    fn convolve_matches_direct_circular_convolution() {
        let n = 1 << 11;
        let fs = FourStep::new(n);
        let (a, b, k) = (noise(n, 4), noise(n, 5), noise(n, 6));
        let mut staging = vec![0.0; FourStep::staging_len()];
        let mut scratch = vec![Complex32::default(); fs.scratch_len()];
        let mut buf = vec![Complex32::default(); fs.buf_len()];
        fs.load(&mut buf, &mut staging, |p0, r, i| {
            r.copy_from_slice(&k[p0..p0 + r.len()]);
            i.fill(0.0);
            true
        });
        fs.forward(&mut buf, &mut scratch);
        let mut kept = vec![Complex32::default(); (RADIX / 2 + 1) * fs.m];
        fs.keep(&mut buf, 1.0 / n as f32, &mut kept);
        let mut full = k
            .iter()
            .map(|&v| Complex32::new(v, 0.0))
            .collect::<Vec<_>>();
        FftPlanner::new().plan_fft_forward(n).process(&mut full);
        for f in [0, 1, 15, 16, 17, n / 2, n / 2 + 1, n - 17, n - 1] {
            let got = layout_bin(&kept, fs.m, f) * n as f32;
            assert!(
                (got - full[f]).norm() < 1e-3 * full[f].norm().max(1.0),
                "bin {f}"
            );
        }
        fs.load(&mut buf, &mut staging, |p0, r, i| {
            r.copy_from_slice(&a[p0..p0 + r.len()]);
            i.copy_from_slice(&b[p0..p0 + r.len()]);
            true
        });
        fs.convolve(&mut buf, &mut scratch, &kept);
        let mut got = vec![Complex32::default(); n];
        fs.store(&buf, &mut staging, n, |p0, r, i| {
            for j in 0..r.len() {
                got[p0 + j] = Complex32::new(r[j], i[j]);
            }
        });
        let want: Vec<Complex32> = (0..n)
            .map(|t| {
                let (mut ya, mut yb) = (0.0f64, 0.0f64);
                for s in 0..n {
                    let kv = k[(t + n - s) % n] as f64;
                    ya += a[s] as f64 * kv;
                    yb += b[s] as f64 * kv;
                }
                Complex32::new(ya as f32, yb as f32)
            })
            .collect();
        let err = rel_err(&got, &want);
        assert!(err < 2e-6, "{err:e}");
    }

    /// The dispatched column kernels (AVX2 where present) and the portable lanes agree.
    #[test]
    fn simd_and_portable_kernels_agree() {
        let stride = TILE + PAD;
        let (re, im) = (noise(RADIX * TILE, 7), noise(RADIX * TILE, 8));
        let fs = FourStep::new(RADIX * TILE);
        let (tw_re, tw_im) = (&fs.tw_re[..], &fs.tw_im[..]);
        for upper in [false, true] {
            let mut a = vec![Complex32::default(); RADIX * stride];
            let mut b = a.clone();
            kernels::columns_forward(&re, &im, (tw_re, tw_im), &mut a, stride, upper);
            kernels::forward_tile::<kernels::Portable>(
                &re,
                &im,
                (tw_re, tw_im),
                &mut b,
                stride,
                upper,
            );
            assert!(rel_err(&a, &b) < 1e-6, "forward, upper {upper}");
            let (mut r1, mut i1) = (vec![0.0; RADIX * TILE], vec![0.0; RADIX * TILE]);
            let (mut r2, mut i2) = (r1.clone(), i1.clone());
            kernels::columns_inverse(&a, stride, (tw_re, tw_im), &mut r1, &mut i1, upper);
            kernels::inverse_tile::<kernels::Portable>(
                &a,
                stride,
                (tw_re, tw_im),
                &mut r2,
                &mut i2,
                upper,
            );
            let pairs = r1.iter().chain(&i1).zip(r2.iter().chain(&i2));
            let diff = pairs.map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            let scale = r2.iter().chain(&i2).fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(
                diff <= 1e-6 * scale,
                "inverse, upper {upper}: {diff} of {scale}"
            );
        }
    }
}
