//! [`CpuConvolution`]: the paired complex-FFT overlap-save engine, and its prepared filter.

use crate::{error::CpuError, planner::complex_ffts};
use monarch_core::{Complex32, ConvGeometry, ConvSpec, Element};
use rayon::prelude::*;
use rustfft::Fft;
use std::sync::Arc;

/// A convolution problem prepared for the CPU: its geometry and shared FFT plans.
///
/// Immutable after construction; `Send + Sync`, so one instance serves concurrent calls.
#[derive(Clone)]
pub struct CpuConvolution {
    spec: ConvSpec,
    fft: Arc<dyn Fft<f32>>,
    ifft: Arc<dyn Fft<f32>>,
    scratch_len: usize,
}

impl std::fmt::Debug for CpuConvolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuConvolution")
            .field("spec", &self.spec)
            .field("scratch_len", &self.scratch_len)
            .finish_non_exhaustive()
    }
}

/// The filter spectrum of every channel, prepared for one [`CpuConvolution`]'s geometry.
///
/// Bins are in natural order, scaled by `1/N`. Only the kept bins are stored: `[0, low)` and
/// `[high, N)` of each channel (for a dense problem `low = high = N`).
#[derive(Debug, Clone, PartialEq)]
pub struct CpuFilterSpectrum {
    geometry: ConvGeometry,
    channels: usize,
    filter_len: usize,
    low: usize,
    high: usize,
    bins: Vec<Complex32>,
}

impl CpuFilterSpectrum {
    /// Stored complex values per channel.
    pub fn bins_per_channel(&self) -> usize {
        self.low + (self.geometry.n() - self.high)
    }

    /// Bytes of spectrum memory held.
    pub fn size_bytes(&self) -> usize {
        self.bins.len() * std::mem::size_of::<Complex32>()
    }

    fn channel(&self, h: usize) -> &[Complex32] {
        let per = self.bins_per_channel();
        &self.bins[h * per..(h + 1) * per]
    }
}

/// One overlap-save block of one row: outputs `[start, start + outputs)` of row `row`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    row: usize,
    start: usize,
    outputs: usize,
}

/// Per-thread working memory.
struct Workspace {
    buf: Vec<Complex32>,
    scratch: Vec<Complex32>,
    lane_a: Vec<f32>,
    lane_b: Vec<f32>,
    tmp: Vec<f32>,
}

/// The output buffer, written by several threads at disjoint ranges.
struct SharedOut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: `SharedOut` is only used to hand disjoint sub-slices of one `&mut [T]` to threads
// (each segment's output range is written by exactly one work item); `T: Send`.
unsafe impl<T: Send> Send for SharedOut<T> {}
// SAFETY: as above: no two threads ever obtain overlapping ranges.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// # Safety
    /// No other live slice obtained from `self` may overlap `[offset, offset + len)`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, offset: usize, len: usize) -> &mut [T] {
        assert!(offset + len <= self.len, "output range out of bounds");
        // SAFETY: in bounds (checked above) and disjoint by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }
}

/// Inputs of one forward call, as slices of `[B, H, L]` tensors.
struct Inputs<'a, T> {
    u: &'a [T],
    pre: Option<&'a [T]>,
    post: Option<&'a [T]>,
}

impl CpuConvolution {
    /// Prepares a problem: plans (or reuses) the complex FFTs of its block size.
    pub fn new(spec: &ConvSpec) -> Result<Self, CpuError> {
        let n = spec.geometry().n();
        let (fft, ifft) = complex_ffts(n);
        let scratch_len = fft
            .get_inplace_scratch_len()
            .max(ifft.get_inplace_scratch_len());
        Ok(CpuConvolution {
            spec: spec.clone(),
            fft,
            ifft,
            scratch_len,
        })
    }

    /// The problem this convolution was prepared for.
    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    /// Scratch memory one worker thread uses, in bytes.
    pub fn scratch_bytes_per_thread(&self) -> usize {
        let n = self.spec.geometry().n();
        (n + self.scratch_len) * 8 + 3 * n * 4
    }

    /// Computes every channel's filter spectrum from `k: [H, K]` (f32, row-major).
    ///
    /// Non-finite filter values are not rejected: they propagate, making every output of that
    /// channel non-finite.
    pub fn prepare_filter(&self, k: &[f32]) -> Result<CpuFilterSpectrum, CpuError> {
        let spec = &self.spec;
        let (channels, kl) = (spec.channels(), spec.filter_len());
        CpuError::check_len("k", k.len(), spec.filter_elems())?;
        let geometry = *spec.geometry();
        let n = geometry.n();
        let (low, high) = if geometry.is_sparse() {
            (geometry.kept_bins, n - geometry.kept_bins + 1)
        } else {
            (n, n)
        };
        let per = low + (n - high);
        let mut bins = vec![Complex32::default(); channels * per];
        let scale = 1.0 / n as f32;
        bins.par_chunks_mut(per)
            .zip(k.par_chunks(kl))
            .for_each_init(
                || {
                    (
                        vec![Complex32::default(); n],
                        vec![Complex32::default(); self.scratch_len],
                    )
                },
                |(buf, scratch), (dst, kh)| {
                    buf.fill(Complex32::default());
                    for (b, &v) in buf.iter_mut().zip(kh) {
                        b.re = v;
                    }
                    self.fft.process_with_scratch(buf, scratch);
                    let kept = buf[..low].iter().chain(&buf[high..]);
                    for (d, &s) in dst.iter_mut().zip(kept) {
                        *d = s * scale;
                    }
                },
            );
        Ok(CpuFilterSpectrum {
            geometry,
            channels,
            filter_len: kl,
            low,
            high,
            bins,
        })
    }

    /// Forward convolution: `y = post * conv(pre * u, k)`, all `[B, H, L]` of this problem's
    /// dtype. `gates` is `(pregate, postgate)` and must be given exactly when the problem is gated.
    /// Everything is validated before `y` is written.
    pub fn forward<T: Element>(
        &self,
        filter: &CpuFilterSpectrum,
        u: &[T],
        gates: Option<(&[T], &[T])>,
        y: &mut [T],
    ) -> Result<(), CpuError> {
        let spec = &self.spec;
        if T::DTYPE != spec.dtype() {
            return Err(CpuError::invalid(
                "u",
                format!(
                    "element type {} but the problem is {}",
                    T::DTYPE,
                    spec.dtype()
                ),
            ));
        }
        let len = spec.io_len();
        CpuError::check_len("u", u.len(), len)?;
        CpuError::check_len("y", y.len(), len)?;
        match (spec.gated(), gates) {
            (true, Some((pre, post))) => {
                CpuError::check_len("pregate", pre.len(), len)?;
                CpuError::check_len("postgate", post.len(), len)?;
            }
            (true, None) => {
                return Err(CpuError::invalid(
                    "gates",
                    "the problem is gated: pass both gates",
                ))
            }
            (false, Some(_)) => return Err(CpuError::invalid("gates", "the problem is not gated")),
            (false, None) => {}
        }
        if filter.geometry != *spec.geometry()
            || filter.channels != spec.channels()
            || filter.filter_len != spec.filter_len()
        {
            return Err(CpuError::invalid(
                "filter",
                "prepared for a different problem (channels, K or geometry differ)",
            ));
        }
        let inputs = Inputs {
            u,
            pre: gates.map(|g| g.0),
            post: gates.map(|g| g.1),
        };
        let out = SharedOut {
            ptr: y.as_mut_ptr(),
            len: y.len(),
        };
        let g = spec.geometry();
        let (channels, l) = (spec.channels(), spec.length());
        let units = spec.batch() * g.blocks;
        let pairs = units.div_ceil(2);
        let segment = |h: usize, q: usize| {
            let (b, j) = (q / g.blocks, q % g.blocks);
            let (start, outputs) = g.block_range(j, l);
            Segment {
                row: b * channels + h,
                start,
                outputs,
            }
        };
        let n = g.n();
        (0..channels * pairs).into_par_iter().for_each_init(
            || Workspace {
                buf: vec![Complex32::default(); n],
                scratch: vec![Complex32::default(); self.scratch_len],
                lane_a: vec![0.0; n],
                lane_b: vec![0.0; n],
                tmp: vec![0.0; n],
            },
            |ws, item| {
                let (h, pair) = (item / pairs, item % pairs);
                let first = segment(h, 2 * pair);
                let second = (2 * pair + 1 < units).then(|| segment(h, 2 * pair + 1));
                self.run_pair(ws, filter.channel(h), filter, &inputs, first, second, &out);
            },
        );
        Ok(())
    }

    /// Convolves one or two segments of one channel packed as one complex sequence.
    #[allow(clippy::too_many_arguments)]
    fn run_pair<T: Element>(
        &self,
        ws: &mut Workspace,
        spectrum: &[Complex32],
        filter: &CpuFilterSpectrum,
        inputs: &Inputs<'_, T>,
        a: Segment,
        b: Option<Segment>,
        out: &SharedOut<T>,
    ) {
        let g = self.spec.geometry();
        let n = g.n();
        let hist = g.history;
        // Lane layout: body values at [0, outputs), history values at [n - hist, n).
        self.gather(inputs, a, &mut ws.lane_a, &mut ws.tmp);
        let b_outputs = match b {
            Some(seg) => {
                self.gather(inputs, seg, &mut ws.lane_b, &mut ws.tmp);
                seg.outputs
            }
            None => 0,
        };
        let (la, lb) = (&ws.lane_a, &ws.lane_b);
        let buf = &mut ws.buf;
        let body = a.outputs.max(b_outputs);
        for (p, c) in buf[..body].iter_mut().enumerate() {
            let re = if p < a.outputs { la[p] } else { 0.0 };
            let im = if p < b_outputs { lb[p] } else { 0.0 };
            *c = Complex32::new(re, im);
        }
        buf[body..n - hist].fill(Complex32::default());
        if b.is_some() {
            for ((c, &re), &im) in buf[n - hist..]
                .iter_mut()
                .zip(&la[n - hist..])
                .zip(&lb[n - hist..])
            {
                *c = Complex32::new(re, im);
            }
        } else {
            for (c, &re) in buf[n - hist..].iter_mut().zip(&la[n - hist..]) {
                *c = Complex32::new(re, 0.0);
            }
        }

        self.fft.process_with_scratch(buf, &mut ws.scratch);
        let (low, high) = (filter.low, filter.high);
        for (x, &s) in buf[..low].iter_mut().zip(&spectrum[..low]) {
            *x *= s;
        }
        buf[low..high].fill(Complex32::default());
        for (x, &s) in buf[high..].iter_mut().zip(&spectrum[low..]) {
            *x *= s;
        }
        self.ifft.process_with_scratch(buf, &mut ws.scratch);

        self.scatter(
            inputs,
            a,
            |p| ws.buf[p].re,
            &mut ws.lane_a,
            &mut ws.tmp,
            out,
        );
        if let Some(seg) = b {
            self.scatter(
                inputs,
                seg,
                |p| ws.buf[p].im,
                &mut ws.lane_b,
                &mut ws.tmp,
                out,
            );
        }
    }

    /// Loads `src` (widened to f32, times the pre-gate when given) into `dst`.
    fn load<T: Element>(src: &[T], pre: Option<&[T]>, dst: &mut [f32], tmp: &mut [f32]) {
        T::load_f32(src, dst);
        if let Some(pre) = pre {
            let tmp = &mut tmp[..pre.len()];
            T::load_f32(pre, tmp);
            for (d, &g) in dst.iter_mut().zip(tmp.iter()) {
                *d *= g;
            }
        }
    }

    /// Fills a lane: the segment's inputs at `[0, outputs)` and its history at `[n - hist, n)`.
    fn gather<T: Element>(
        &self,
        inputs: &Inputs<'_, T>,
        seg: Segment,
        lane: &mut [f32],
        tmp: &mut [f32],
    ) {
        let g = self.spec.geometry();
        let (n, hist, l) = (g.n(), g.history, self.spec.length());
        let row = seg.row * l;
        let pre_of = |r: std::ops::Range<usize>| inputs.pre.map(|p| &p[r]);
        let body = row + seg.start..row + seg.start + seg.outputs;
        Self::load(
            &inputs.u[body.clone()],
            pre_of(body),
            &mut lane[..seg.outputs],
            tmp,
        );
        if hist == 0 {
            return;
        }
        let lane_hist = &mut lane[n - hist..];
        // History is u[start - hist .. start]; the part before t = 0 is zero or wraps.
        let before_zero = hist.saturating_sub(seg.start);
        if before_zero > 0 {
            let head = &mut lane_hist[..before_zero];
            if g.wraps {
                let tail = row + l - before_zero..row + l;
                Self::load(&inputs.u[tail.clone()], pre_of(tail), head, tmp);
            } else {
                head.fill(0.0);
            }
        }
        let recent = row + seg.start - (hist - before_zero)..row + seg.start;
        Self::load(
            &inputs.u[recent.clone()],
            pre_of(recent),
            &mut lane_hist[before_zero..],
            tmp,
        );
    }

    /// Writes one segment's outputs (times the post-gate when given) from the working buffer.
    fn scatter<T: Element>(
        &self,
        inputs: &Inputs<'_, T>,
        seg: Segment,
        value: impl Fn(usize) -> f32,
        lane: &mut [f32],
        tmp: &mut [f32],
        out: &SharedOut<T>,
    ) {
        let offset = seg.row * self.spec.length() + seg.start;
        let lane = &mut lane[..seg.outputs];
        for (p, v) in lane.iter_mut().enumerate() {
            *v = value(p);
        }
        if let Some(post) = inputs.post {
            let tmp = &mut tmp[..seg.outputs];
            T::load_f32(&post[offset..offset + seg.outputs], tmp);
            for (v, &q) in lane.iter_mut().zip(tmp.iter()) {
                *v *= q;
            }
        }
        // SAFETY: every (row, block) segment is handled by exactly one work item, so output
        // ranges of concurrent items never overlap.
        let dst = unsafe { out.range(offset, seg.outputs) };
        T::store_f32(lane, dst);
    }
}
