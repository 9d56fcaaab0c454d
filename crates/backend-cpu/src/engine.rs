//! [`CpuConvolution`]: the paired complex-FFT overlap-save engine (forward and filter
//! preparation; the backward pass is in `backward.rs`).

use crate::{
    error::CpuError, four_step::FourStep, pair_fft::PairFft, planner::real_ffts,
    spectrum::CpuFilterSpectrum,
};
use monarch_core::{Complex32, ConvSpec, DType, Element};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// A convolution problem prepared for the CPU: its geometry and shared FFT plans.
///
/// Immutable after construction; `Send + Sync`, so one instance serves concurrent calls.
#[derive(Clone)]
pub struct CpuConvolution {
    spec: ConvSpec,
    /// The length-`N` FFTs of a packed pair and their tiling.
    fft: Arc<PairTransform>,
    /// Real FFTs of length `N`, for segments without a partner in their channel.
    r2c: Arc<dyn realfft::RealToComplex<f32>>,
    c2r: Arc<dyn realfft::ComplexToReal<f32>>,
    workspaces: Arc<WorkspacePool>,
}

impl std::fmt::Debug for CpuConvolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuConvolution")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// How a packed pair's length-`N` FFT runs: rustfft whole or split ([`PairFft`]), or the
/// four-step form around cache-sized sub-FFTs ([`FourStep`], dense problems from
/// [`FOUR_STEP_FROM`] with two or more segments per channel; its filter spectra are in its
/// own layout).
enum PairTransform {
    Pair(PairFft),
    FourStep(FourStep),
}

impl PairTransform {
    fn n(&self) -> usize {
        match self {
            PairTransform::Pair(f) => f.n(),
            PairTransform::FourStep(f) => f.n(),
        }
    }
    /// Positions per tile handed to the load and store callbacks.
    fn tile_len(&self) -> usize {
        match self {
            PairTransform::Pair(f) => f.tile_len(),
            PairTransform::FourStep(_) => FourStep::tile_len(),
        }
    }
    fn scratch_len(&self) -> usize {
        match self {
            PairTransform::Pair(f) => f.scratch_len(),
            PairTransform::FourStep(f) => f.scratch_len(),
        }
    }
    /// Complex values of one pair's working buffer.
    fn slot_len(&self) -> usize {
        match self {
            PairTransform::Pair(f) => f.n(),
            PairTransform::FourStep(f) => f.buf_len(),
        }
    }
    /// Complex staging values (whole and split forms) and f32 ones (four-step).
    fn staging_lens(&self) -> (usize, usize) {
        match self {
            PairTransform::Pair(f) => (2 * f.tile_len(), 0),
            PairTransform::FourStep(_) => (0, FourStep::staging_len()),
        }
    }
}

impl CpuConvolution {
    /// The four-step form, where this problem's forward runs it (its filter spectra are then
    /// in that layout).
    pub(crate) fn four_step(&self) -> Option<&FourStep> {
        match &*self.fft {
            PairTransform::FourStep(f) => Some(f),
            PairTransform::Pair(_) => None,
        }
    }
}

/// Work for one batch slot: `(a, b, h, hb)`, segment `a` of channel `h` and `b` of channel
/// `hb`, packed as `a + i*b`. A pair of one channel (`hb == h`) shares its filter; a
/// cross-channel pair (`hb != h`, two lone segments) is separated in the frequency domain
/// ([`CpuFilterSpectrum::multiply_cross`]). `b = None`: `a` alone, run as a real FFT.
type PairJob = (Segment, Option<Segment>, usize, usize);

/// One overlap-save block of one row: outputs `[start, start + outputs)` of row `row`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    row: usize,
    start: usize,
    outputs: usize,
}

/// Work items are grouped so each rayon task covers at least about this many FFT points.
const PAIRS_PER_TASK_LEN: usize = 1 << 15;

/// FFT sizes from which problems use the split form of [`PairFft`] (measured on dense ones: it
/// helps f32 from 512K and f16 from 1M, and is within noise otherwise; see `docs/perf.md`).
const SPLIT_FROM: usize = 1 << 20;

/// FFT sizes from which dense problems use [`FourStep`] (measured: 5-11% faster than one
/// rustfft transform per pair at 2^17 and 2^18, within noise at 2^15 and 2^16; see `docs/perf.md`).
const FOUR_STEP_FROM: usize = 1 << 17;

/// Small FFTs are batched (several pairs per rustfft call) up to about this many points.
const BATCH_POINTS: usize = 1 << 14;

/// Per-thread working memory: the batch's length-`N` buffers, FFT scratch, and real staging for
/// one tile of each lane and of a gate.
struct Workspace {
    buf: Vec<Complex32>,
    scratch: Vec<Complex32>,
    /// Two tiles for the split form's first stage.
    staging: Vec<Complex32>,
    /// The four-step form's 16 rows of a tile (real and imaginary parts apart).
    staging_soa: Vec<f32>,
    /// Buffers of the real-FFT path for segments without a partner, made on first use (most
    /// problems pair every segment and never need them).
    real: Option<RealWorkspace>,
    lane_a: Vec<f32>,
    lane_b: Vec<f32>,
    tmp: Vec<f32>,
    jobs: Vec<PairJob>,
}

/// Real signal, half spectrum and scratch of one real FFT of size `N`.
struct RealWorkspace {
    signal: Vec<f32>,
    spectrum: Vec<Complex32>,
    scratch: Vec<Complex32>,
    /// The channel's filter spectrum in natural order, when it is stored in the four-step
    /// layout (empty otherwise).
    natural: Vec<Complex32>,
}

impl RealWorkspace {
    fn new(conv: &CpuConvolution) -> Self {
        let n = conv.fft.n();
        let real_scratch = conv.r2c.get_scratch_len().max(conv.c2r.get_scratch_len());
        RealWorkspace {
            signal: vec![0.0; n],
            spectrum: vec![Complex32::default(); n / 2 + 1],
            scratch: vec![Complex32::default(); real_scratch],
            natural: Vec::new(),
        }
    }
}

impl Workspace {
    fn new(conv: &CpuConvolution, buf_len: usize) -> Self {
        let fft = &*conv.fft;
        let t = fft.tile_len();
        let (staging, staging_soa) = fft.staging_lens();
        Workspace {
            real: None,
            buf: vec![Complex32::default(); buf_len],
            scratch: vec![Complex32::default(); fft.scratch_len()],
            staging: vec![Complex32::default(); staging],
            staging_soa: vec![0.0; staging_soa],
            lane_a: vec![0.0; t],
            lane_b: vec![0.0; t],
            tmp: vec![0.0; t],
            jobs: Vec::new(),
        }
    }
}

/// Workspaces kept between calls, so steady-state calls allocate (and page-fault) nothing.
/// Holds at most as many workspaces as threads ever ran one call concurrently.
#[derive(Default)]
struct WorkspacePool {
    free: Mutex<Vec<Workspace>>,
}

impl WorkspacePool {
    fn take(&self, conv: &CpuConvolution, buf_len: usize) -> PooledWorkspace<'_> {
        let ws = self
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
            .unwrap_or_else(|| Workspace::new(conv, buf_len));
        PooledWorkspace {
            ws: Some(ws),
            pool: self,
        }
    }
}

/// A workspace on loan from a [`WorkspacePool`]; returned when dropped.
struct PooledWorkspace<'a> {
    ws: Option<Workspace>,
    pool: &'a WorkspacePool,
}

impl std::ops::Deref for PooledWorkspace<'_> {
    type Target = Workspace;
    fn deref(&self) -> &Workspace {
        self.ws.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for PooledWorkspace<'_> {
    fn deref_mut(&mut self) -> &mut Workspace {
        self.ws.as_mut().expect("present until drop")
    }
}

impl Drop for PooledWorkspace<'_> {
    fn drop(&mut self) {
        if let Some(ws) = self.ws.take() {
            self.pool
                .free
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(ws);
        }
    }
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
        Self::with_four_step(spec, true)
    }

    /// [`new`](Self::new), with the four-step form only where `allowed` (tests compare the
    /// two forms on one problem).
    pub(crate) fn with_four_step(spec: &ConvSpec, allowed: bool) -> Result<Self, CpuError> {
        let n = spec.geometry().n();
        // Four-step needs pairs (of one channel or across two): a problem of one segment
        // (B = H = 1, one block) keeps the natural layout its real FFT reads directly.
        let g = spec.geometry();
        let pairs = spec.batch() * g.blocks * spec.channels() >= 2;
        let fft = if allowed && n >= FOUR_STEP_FROM && !g.is_sparse() && pairs {
            PairTransform::FourStep(FourStep::new(n))
        } else if n >= SPLIT_FROM {
            PairTransform::Pair(PairFft::split(n))
        } else {
            PairTransform::Pair(PairFft::new(n))
        };
        let (r2c, c2r) = real_ffts(n);
        Ok(CpuConvolution {
            spec: spec.clone(),
            fft: Arc::new(fft),
            r2c,
            c2r,
            workspaces: Arc::default(),
        })
    }

    /// The problem this convolution was prepared for.
    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    /// Scratch memory one worker thread uses at most, in bytes (the real-FFT buffers for
    /// segments without a partner are allocated only when such a segment comes up).
    pub fn scratch_bytes_per_thread(&self) -> usize {
        let (n, t) = (self.fft.n(), self.fft.tile_len());
        let real_scratch = self.r2c.get_scratch_len().max(self.c2r.get_scratch_len());
        let (staging, staging_soa) = self.fft.staging_lens();
        let natural = match &*self.fft {
            PairTransform::FourStep(_) => n / 2 + 1,
            PairTransform::Pair(_) => 0,
        };
        let complex =
            self.buf_len() + self.fft.scratch_len() + staging + n / 2 + 1 + natural + real_scratch;
        complex * std::mem::size_of::<Complex32>()
            + (n + 3 * t + staging_soa) * std::mem::size_of::<f32>()
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
        let fft = &*self.fft;
        let layout = match fft {
            PairTransform::FourStep(fs) => {
                CpuFilterSpectrum::layout_four_step(geometry, channels, kl, fs.sub_len())
            }
            PairTransform::Pair(_) => CpuFilterSpectrum::layout(geometry, channels, kl),
        };
        let per = layout.bins_per_channel();
        // Up to 18 times the bytes of `k` (N/2 + 1 complex bins for K = 1): a spectrum no
        // memory can hold is an error rather than an abort.
        let out_of_memory = CpuError::OutOfMemory {
            what: "the filter spectrum",
            bytes: channels
                .saturating_mul(per)
                .saturating_mul(std::mem::size_of::<Complex32>()),
        };
        let bins_len = channels
            .checked_mul(per)
            .ok_or_else(|| out_of_memory.clone())?;
        let mut bins: Vec<Complex32> =
            monarch_core::memory::try_zeros(bins_len).map_err(|_| out_of_memory)?;
        let scale = 1.0 / n as f32;
        bins.par_chunks_mut(per)
            .zip(k.par_chunks(kl))
            .for_each_init(
                || self.workspaces.take(self, self.buf_len()),
                |ws, (dst, kh)| {
                    let Workspace {
                        buf,
                        scratch,
                        staging,
                        staging_soa,
                        ..
                    } = &mut **ws;
                    let fft = match fft {
                        PairTransform::FourStep(fs) => {
                            fs.load(buf, staging_soa, |p0, re, im| {
                                if p0 >= kh.len() {
                                    return false;
                                }
                                for (i, d) in re.iter_mut().enumerate() {
                                    *d = kh.get(p0 + i).copied().unwrap_or(0.0);
                                }
                                im.fill(0.0);
                                true
                            });
                            fs.forward(buf, scratch);
                            fs.keep(buf, scale, dst);
                            return;
                        }
                        PairTransform::Pair(fft) => fft,
                    };
                    let buf = &mut buf[..n];
                    fft.load_tiles(buf, staging, |p0, tile| {
                        if p0 >= kh.len() {
                            return false;
                        }
                        for (i, d) in tile.iter_mut().enumerate() {
                            *d = Complex32::new(kh.get(p0 + i).copied().unwrap_or(0.0), 0.0);
                        }
                        true
                    });
                    fft.forward(buf, scratch);
                    if fft.is_split() {
                        layout.keep_split(buf, scale, dst);
                    } else {
                        layout.keep(buf, scale, dst);
                    }
                },
            );
        Ok(layout.with_bins(bins))
    }

    /// Checks what forward and backward share: `u`'s element type and length, gates given
    /// exactly when the problem is gated (each like `u`), and a filter prepared for this problem.
    pub(crate) fn check_inputs<T: Element>(
        &self,
        filter: &CpuFilterSpectrum,
        u: &[T],
        gates: Option<(&[T], &[T])>,
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
        let four_step = matches!(*self.fft, PairTransform::FourStep(_));
        if filter.is_natural() == four_step {
            return Err(CpuError::invalid(
                "filter",
                "prepared for a problem with another spectrum layout (dense N >= 2^17 with \
                 two or more segments, B * H * blocks >= 2, uses the four-step layout); \
                 prepare it with this convolution",
            ));
        }
        Ok(())
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
        self.check_inputs(filter, u, gates)?;
        CpuError::check_len("y", y.len(), spec.io_len())?;
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
        // Segments ordered by (channel, batch row, block); consecutive ones of one channel are
        // paired (they share a filter).
        let per_channel = spec.batch() * g.blocks;
        let segment = |index: usize| {
            let (h, q) = (index / per_channel, index % per_channel);
            let (b, j) = (q / g.blocks, q % g.blocks);
            let (start, outputs) = g.block_range(j, l);
            (
                h,
                Segment {
                    row: b * channels + h,
                    start,
                    outputs,
                },
            )
        };
        // Consecutive segments of one channel are paired. A channel with an odd number of
        // segments has one left over; the leftovers of channels 2c and 2c + 1 form a
        // cross-channel pair, except on the split form (its spectrum order has no cross
        // product), where each runs alone. Items enumerate, per group of channels (two when
        // crossing, else one), each channel's pairs and then the group's leftover(s), so a
        // worker's consecutive items share filter spectra.
        let same = per_channel / 2;
        let odd = per_channel % 2 == 1;
        let cross =
            odd && channels >= 2 && !matches!(&*self.fft, PairTransform::Pair(f) if f.is_split());
        let group = if cross { 2 } else { 1 };
        let per_group = group * same + usize::from(odd);
        let full_groups = channels / group;
        // A last group of one channel (odd channel count when crossing).
        let last_items = (channels % group) * (same + usize::from(odd));
        let pair = |item: usize| -> PairJob {
            let (gi, i) = (item / per_group, item % per_group);
            let (h0, in_group) = if gi < full_groups {
                (gi * group, group)
            } else {
                (full_groups * group, 1)
            };
            if i < in_group * same {
                let h = h0 + i / same;
                let q = h * per_channel + 2 * (i % same);
                (segment(q).1, Some(segment(q + 1).1), h, h)
            } else {
                let lone = |h: usize| segment(h * per_channel + per_channel - 1).1;
                match in_group {
                    2 => (lone(h0), Some(lone(h0 + 1)), h0, h0 + 1),
                    _ => (lone(h0), None, h0, h0),
                }
            }
        };
        let pairs = full_groups * per_group + last_items;
        let per_batch = self.pairs_per_batch();
        (0..pairs.div_ceil(per_batch))
            .into_par_iter()
            .with_min_len((PAIRS_PER_TASK_LEN / (g.n() * per_batch)).max(1))
            .for_each_init(
                || self.workspaces.take(self, self.buf_len()),
                |ws, batch| {
                    let jobs = (batch * per_batch..((batch + 1) * per_batch).min(pairs)).map(pair);
                    self.run_batch(ws, jobs, filter, &inputs, &out);
                },
            );
        Ok(())
    }

    /// Pairs convolved together (one rustfft call each way for all of them): small FFTs are
    /// batched so the per-call overhead is shared.
    fn pairs_per_batch(&self) -> usize {
        match &*self.fft {
            PairTransform::Pair(f) => (BATCH_POINTS / f.n()).max(1),
            PairTransform::FourStep(_) => 1,
        }
    }

    /// Complex values of a workspace's main buffer.
    fn buf_len(&self) -> usize {
        self.pairs_per_batch() * self.fft.slot_len()
    }

    /// Convolves a batch of pairs, each pair packed as one complex sequence `a + i*b`: load
    /// (tiles known to be zero are cleared without reading), FFT, product, inverse FFT, store
    /// (only the tiles holding outputs).
    fn run_batch<T: Element>(
        &self,
        ws: &mut Workspace,
        jobs: impl Iterator<Item = PairJob>,
        filter: &CpuFilterSpectrum,
        inputs: &Inputs<'_, T>,
        out: &SharedOut<T>,
    ) {
        let n = self.fft.n();
        let Workspace {
            buf,
            scratch,
            staging,
            staging_soa,
            lane_a,
            lane_b,
            tmp,
            jobs: batch,
            real,
        } = ws;
        batch.clear();
        for job in jobs {
            match job {
                (a, None, h, _) => {
                    let real = real.get_or_insert_with(|| RealWorkspace::new(self));
                    if filter.is_natural() {
                        self.run_single(real, a, filter.channel(h), inputs, lane_a, tmp, out)
                    } else {
                        let mut k = std::mem::take(&mut real.natural);
                        filter.natural_channel(h, &mut k);
                        self.run_single(real, a, &k, inputs, lane_a, tmp, out);
                        real.natural = k;
                    }
                }
                pair => batch.push(pair),
            }
        }
        let fft = match &*self.fft {
            PairTransform::FourStep(fs) => {
                for &(a, b, h, hb) in batch.iter() {
                    fs.load(buf, staging_soa, |p0, re, im| {
                        self.pair_lanes(inputs, a, b, p0, re, im, tmp)
                    });
                    if hb == h {
                        fs.convolve(buf, scratch, filter.channel(h));
                    } else {
                        fs.convolve_cross(buf, scratch, filter.channel(h), filter.channel(hb));
                    }
                    let outputs = a.outputs.max(b.map_or(0, |seg| seg.outputs));
                    fs.store(buf, staging_soa, outputs, |p0, re, im| {
                        self.store_pair(inputs, a, b, p0, re, im, tmp, out)
                    });
                }
                return;
            }
            PairTransform::Pair(fft) => fft,
        };
        let used = &mut buf[..batch.len() * n];
        for (slot, &(a, b, _, _)) in used.chunks_exact_mut(n).zip(batch.iter()) {
            fft.load_tiles(slot, staging, |p0, dst| {
                let len = dst.len();
                if let Some((ua, ub)) = self.plain_body(inputs, a, b, p0, len) {
                    // f32, ungated, tile inside both bodies: pack straight from `u`.
                    for ((d, x), y) in dst.iter_mut().zip(ua).zip(ub) {
                        *d = Complex32::new(x.to_f32(), y.to_f32());
                    }
                    return true;
                }
                let (re, im) = (&mut lane_a[..len], &mut lane_b[..len]);
                if !self.pair_lanes(inputs, a, b, p0, re, im, tmp) {
                    return false;
                }
                for ((d, &re), &im) in dst.iter_mut().zip(lane_a.iter()).zip(lane_b.iter()) {
                    *d = Complex32::new(re, im);
                }
                true
            });
        }
        fft.forward(used, scratch);
        for (slot, &(_, _, h, hb)) in used.chunks_exact_mut(n).zip(batch.iter()) {
            if hb != h {
                filter.multiply_cross(filter.channel(h), filter.channel(hb), slot);
            } else if fft.is_split() {
                filter.multiply_split(filter.channel(h), slot);
            } else {
                filter.multiply(filter.channel(h), slot);
            }
        }
        fft.inverse(used, scratch);
        for (slot, &(a, b, _, _)) in used.chunks_exact(n).zip(batch.iter()) {
            let outputs = a.outputs.max(b.map_or(0, |seg| seg.outputs));
            fft.store_tiles(slot, staging, outputs, |p0, vals| {
                let len = vals.len();
                if let (Some(seg_b), true) = (b, self.plain_output::<T>(inputs, a, b, p0, len)) {
                    // f32, ungated, tile inside both outputs: write straight into `y`.
                    let (ya, yb) = self.pair_outputs(out, a, seg_b, p0, len);
                    for ((v, da), db) in vals.iter().zip(ya).zip(yb) {
                        *da = T::from_f32(v.re);
                        *db = T::from_f32(v.im);
                    }
                    return;
                }
                for ((v, ya), yb) in vals.iter().zip(lane_a.iter_mut()).zip(lane_b.iter_mut()) {
                    *ya = v.re;
                    *yb = v.im;
                }
                let (re, im) = (&mut lane_a[..len], &mut lane_b[..len]);
                self.store_pair(inputs, a, b, p0, re, im, tmp, out);
            });
        }
    }

    /// Fills `re` and `im` with the lanes of a pair (`b` absent: zeros) at positions
    /// `[p0, p0 + re.len())`; returns `false`, reading nothing, when both are known zero there.
    #[allow(clippy::too_many_arguments)]
    fn pair_lanes<T: Element>(
        &self,
        inputs: &Inputs<'_, T>,
        a: Segment,
        b: Option<Segment>,
        p0: usize,
        re: &mut [f32],
        im: &mut [f32],
        tmp: &mut [f32],
    ) -> bool {
        let len = re.len();
        if let Some((ua, ub)) = self.plain_body(inputs, a, b, p0, len) {
            // The four-step form reads 16 rows a tile at a time; the hardware prefetcher does
            // not follow that many streams (measured: 4-6% at 512K).
            prefetch_next(ua, false);
            prefetch_next(ub, false);
            T::load_f32(ua, re);
            T::load_f32(ub, im);
            return true;
        }
        let zero_a = self.known_zero(a, p0, len);
        let zero_b = b.is_none_or(|seg| self.known_zero(seg, p0, len));
        if zero_a && zero_b {
            return false;
        }
        for (seg, lane, zero) in [(Some(a), re, zero_a), (b, im, zero_b)] {
            match seg {
                Some(seg) if !zero => self.lane_values(inputs, seg, p0, lane, tmp),
                _ => lane.fill(0.0),
            }
        }
        true
    }

    /// Writes a pair's outputs at positions `[p0, p0 + re.len())`: `re` to `a`, `im` to `b`.
    #[allow(clippy::too_many_arguments)]
    fn store_pair<T: Element>(
        &self,
        inputs: &Inputs<'_, T>,
        a: Segment,
        b: Option<Segment>,
        p0: usize,
        re: &mut [f32],
        im: &mut [f32],
        tmp: &mut [f32],
        out: &SharedOut<T>,
    ) {
        let len = re.len();
        if let (Some(seg_b), true) = (b, self.plain_output::<T>(inputs, a, b, p0, len)) {
            let (ya, yb) = self.pair_outputs(out, a, seg_b, p0, len);
            prefetch_next(ya, true);
            prefetch_next(yb, true);
            T::store_f32(re, ya);
            T::store_f32(im, yb);
            return;
        }
        self.store(inputs, a, p0, re, tmp, out);
        if let Some(seg) = b {
            self.store(inputs, seg, p0, im, tmp, out);
        }
    }

    /// The outputs `[p0, p0 + len)` of both segments of a pair, as slices of `y`.
    #[allow(clippy::mut_from_ref)]
    fn pair_outputs<'o, T>(
        &self,
        out: &'o SharedOut<T>,
        a: Segment,
        b: Segment,
        p0: usize,
        len: usize,
    ) -> (&'o mut [T], &'o mut [T]) {
        let l = self.spec.length();
        // SAFETY: as in `store`: each segment's outputs belong to one work item.
        let ya = unsafe { out.range(a.row * l + a.start + p0, len) };
        // SAFETY: as above; `b` is a different segment, so the ranges are disjoint.
        let yb = unsafe { out.range(b.row * l + b.start + p0, len) };
        (ya, yb)
    }

    /// For f32 ungated problems, the `u` slices of both segments of a pair at positions
    /// `[p0, p0 + len)` when that tile lies inside both segments' bodies (then no widening,
    /// gating, history or zero fill is needed).
    fn plain_body<'u, T: Element>(
        &self,
        inputs: &Inputs<'u, T>,
        a: Segment,
        b: Option<Segment>,
        p0: usize,
        len: usize,
    ) -> Option<(&'u [T], &'u [T])> {
        let b = b?;
        if T::DTYPE != DType::F32 || inputs.pre.is_some() || p0 + len > a.outputs.min(b.outputs) {
            return None;
        }
        let l = self.spec.length();
        let at = |seg: Segment| &inputs.u[seg.row * l + seg.start + p0..][..len];
        Some((at(a), at(b)))
    }

    /// Whether a pair's outputs at `[p0, p0 + len)` can be written straight into `y`: f32,
    /// no post-gate, and the tile inside both segments' outputs.
    fn plain_output<T: Element>(
        &self,
        inputs: &Inputs<'_, T>,
        a: Segment,
        b: Option<Segment>,
        p0: usize,
        len: usize,
    ) -> bool {
        T::DTYPE == DType::F32
            && inputs.post.is_none()
            && b.is_some_and(|b| p0 + len <= a.outputs.min(b.outputs))
    }

    /// Convolves a segment with no partner in its channel through a real FFT of size `N`
    /// (whose half spectrum is exactly the stored one): load, R2C, product, C2R, store.
    #[allow(clippy::too_many_arguments)]
    fn run_single<T: Element>(
        &self,
        real: &mut RealWorkspace,
        seg: Segment,
        k: &[Complex32],
        inputs: &Inputs<'_, T>,
        lane: &mut [f32],
        tmp: &mut [f32],
        out: &SharedOut<T>,
    ) {
        let t = lane.len();
        let RealWorkspace {
            signal,
            spectrum,
            scratch,
            ..
        } = real;
        for (p0, dst) in (0..signal.len()).step_by(t).zip(signal.chunks_mut(t)) {
            if self.known_zero(seg, p0, dst.len()) {
                dst.fill(0.0);
            } else {
                self.lane_values(inputs, seg, p0, dst, tmp);
            }
        }
        // Lengths come from the same plans: these cannot fail.
        let _ = self.r2c.process_with_scratch(signal, spectrum, scratch);
        for (x, &kp) in spectrum.iter_mut().zip(k) {
            *x *= kp;
        }
        spectrum[k.len()..].fill(Complex32::default());
        // DC and Nyquist are real for a real signal; clear the rounding residue C2R rejects.
        let last = spectrum.len() - 1;
        spectrum[0].im = 0.0;
        spectrum[last].im = 0.0;
        let _ = self.c2r.process_with_scratch(spectrum, signal, scratch);
        for (p0, vals) in (0..seg.outputs).step_by(t).zip(signal.chunks_mut(t)) {
            self.store(inputs, seg, p0, vals, tmp, out);
        }
    }

    /// Whether a segment's lane is known to be zero at positions `[p0, p0 + len)`: past its
    /// outputs and either before its history or where the history is all before `t = 0` of
    /// a causal convolution.
    fn known_zero(&self, seg: Segment, p0: usize, len: usize) -> bool {
        let g = self.spec.geometry();
        let history_zero = g.history == 0 || (!g.wraps && seg.start == 0);
        p0 >= seg.outputs && (history_zero || p0 + len <= g.n() - g.history)
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

    /// Fills `dst` with a segment's lane at positions `[p0, p0 + dst.len())`: its inputs at
    /// `[0, outputs)`, its history (the `hist` inputs before `start`) at `[N - hist, N)`, and
    /// zeros between. History before `t = 0` is zero (causal) or wraps around (circular).
    fn lane_values<T: Element>(
        &self,
        inputs: &Inputs<'_, T>,
        seg: Segment,
        p0: usize,
        dst: &mut [f32],
        tmp: &mut [f32],
    ) {
        let g = self.spec.geometry();
        let (n, hist, l) = (g.n(), g.history, self.spec.length());
        let row = seg.row * l;
        let p1 = p0 + dst.len();
        let load = |src: std::ops::Range<usize>, dst: &mut [f32], tmp: &mut [f32]| {
            let src = row + src.start..row + src.end;
            Self::load(
                &inputs.u[src.clone()],
                inputs.pre.map(|p| &p[src]),
                dst,
                tmp,
            );
        };
        // Body: positions [0, outputs) read u[start + p].
        let body_end = seg.outputs.clamp(p0, p1);
        if body_end > p0 {
            load(
                seg.start + p0..seg.start + body_end,
                &mut dst[..body_end - p0],
                tmp,
            );
        }
        // Zeros: positions [outputs, N - hist).
        let hist_start = (n - hist).clamp(p0, p1).max(body_end);
        dst[body_end - p0..hist_start - p0].fill(0.0);
        if hist_start == p1 {
            return;
        }
        // History: position p reads input start - (N - p); below t = 0 (p < N - start) it wraps
        // to L - (N - p) + start, or is zero.
        let split = (n - seg.start.min(n)).clamp(hist_start, p1);
        if split > hist_start {
            let head = &mut dst[hist_start - p0..split - p0];
            if g.wraps {
                let from = l + seg.start + hist_start - n;
                load(from..from + head.len(), head, tmp);
            } else {
                head.fill(0.0);
            }
        }
        if p1 > split {
            let from = seg.start + split - n;
            load(from..from + (p1 - split), &mut dst[split - p0..], tmp);
        }
    }

    /// Writes a segment's outputs at positions `[p0, p0 + values.len())` (those below its
    /// `outputs`), times the post-gate when given.
    fn store<T: Element>(
        &self,
        inputs: &Inputs<'_, T>,
        seg: Segment,
        p0: usize,
        values: &mut [f32],
        tmp: &mut [f32],
        out: &SharedOut<T>,
    ) {
        let len = seg.outputs.saturating_sub(p0).min(values.len());
        if len == 0 {
            return;
        }
        let offset = seg.row * self.spec.length() + seg.start + p0;
        let values = &mut values[..len];
        if let Some(post) = inputs.post {
            let tmp = &mut tmp[..len];
            T::load_f32(&post[offset..offset + len], tmp);
            for (v, &q) in values.iter_mut().zip(tmp.iter()) {
                *v *= q;
            }
        }
        // SAFETY: every (row, block) segment is handled by exactly one work item, so output
        // ranges of concurrent items never overlap.
        let dst = unsafe { out.range(offset, len) };
        T::store_f32(values, dst);
    }
}

/// Asks the cache for the `x.len()` values that follow `x` in memory (the next tile of the same
/// row), for writing when `write`. A prefetch never faults, so the range may pass the buffer's end.
#[inline]
fn prefetch_next<T>(x: &[T], write: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(x);
        let next = x.as_ptr().cast::<i8>().wrapping_add(bytes);
        for off in (0..bytes).step_by(64) {
            let p = next.wrapping_add(off);
            // SAFETY: prefetches have no architectural effect and never fault.
            unsafe {
                if write {
                    _mm_prefetch::<_MM_HINT_ET0>(p);
                } else {
                    _mm_prefetch::<_MM_HINT_T0>(p);
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, write);
}
