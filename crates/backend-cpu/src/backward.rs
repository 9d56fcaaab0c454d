//! [`CpuConvolution::backward`]: gradients of `y = post * conv(pre * u, k)` on the CPU, the exact
//! adjoint of the forward as the problem's [`ConvGeometry`] defines it.
//!
//! Per overlap-save segment (block `j` of a row, `N` positions, see [`monarch_core::problem`]),
//! with `x = pre * u` gathered into the segment `seg` and `dc = dy * post` placed at its output
//! positions `[0, outputs)` (zeros elsewhere):
//!
//! ```text
//! V  = FFT(seg)            DC = FFT(dc)            (K: the masked spectrum, scaled by 1/N)
//! c    = IFFT(V * K)          -> dpostgate = dy * c        (gated only)
//! dseg = IFFT(DC * conj(K))   -> scattered back to the inputs the segment read (body and
//!                                history; history wraps when circular), summed into dx
//! acc += mask * DC * conj(V)  -> dk = first K taps of IFFT(acc) / N (once per work item)
//! du = dx * pre, dpregate = dx * u
//! ```
//!
//! Like the forward, two real segments of one channel travel as one complex sequence `a + i*b`
//! (two rows of the channel, block by block; or two blocks of one row): the filter is real, so
//! `c` and `dseg` of the two come out as the real and imaginary parts, and
//! `Re(IFFT(DC * conj(V)))` of the packed pair is the sum of the two segments' filter gradients.
//! The forward spectrum of `pre * u` is recomputed, never stored. Each segment reads its inputs
//! (`u`, `pre`: body and history; `dy`, `post`: body) once; `dx` is accumulated per row in f32
//! and turned into `du` and `dpregate` in one final pass over the row (reading `u` and `pre`
//! again). Work items are rows of one channel (as many as leave at least four items per
//! thread, and for small FFTs at least as many pairs as cover about 2^14 points), threaded with
//! rayon; each accumulates its filter correlation over its rows, inverse-transforms it once and
//! returns its `dk` taps in f64, summed per channel in a fixed order (deterministic for a given
//! thread count: the items, which depend on it, set the f32 roundings of `dk`), stored in f32.
//!
//!
//! Workspaces are kept between calls in a small process-wide pool keyed by `(N, L)` (at most one
//! per rayon thread per key, a few keys), so steady-state calls do not allocate and page-fault
//! their FFT buffers afresh. Segments are gathered straight into the packed FFT buffers; the
//! positions no run reads (causal padding) are only cleared.
//!
//! Where the forward runs the four-step form (dense problems with pairs from 2^17), so does the
//! backward: its spectra and the correlation sum stay in that layout, the filter spectrum is
//! used as stored, and only the gathered segments and the inverse results pass through natural
//! order (`four_step_forward`, `four_step_inverse`).
//!
//! Not yet done as the forward does: the whole-length FFTs still run over zero tiles (no tiled
//! loads and stores), and a channel with a single row and a single block leaves the imaginary
//! lane empty (no pairing across channels).

use crate::four_step::FourStep;
use crate::{error::CpuError, pair_fft::PairFft, spectrum::CpuFilterSpectrum, CpuConvolution};
use monarch_core::{Complex32, Complex64, ConvGeometry, Element};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Output buffers of one backward call; every one is overwritten.
///
/// `du`, `dpregate`, `dpostgate` are `[B, H, L]` of the problem's dtype; `dk` is `[H, K]` in f32
/// (summed over the batch). The gate gradients are given exactly when the problem is gated.
#[derive(Debug)]
pub struct CpuGradients<'a, T> {
    pub du: &'a mut [T],
    pub dk: &'a mut [f32],
    pub dpregate: Option<&'a mut [T]>,
    pub dpostgate: Option<&'a mut [T]>,
}

/// The output rows one work item owns (one row of `[B, H, L]` in each buffer).
struct RowOut<'a, T> {
    /// Row index `b * H + h`.
    row: usize,
    du: &'a mut [T],
    dpre: Option<&'a mut [T]>,
    dpost: Option<&'a mut [T]>,
}

/// One overlap-save block of one of a work item's rows (`lane` indexes the item's rows).
#[derive(Debug, Clone, Copy)]
struct Seg {
    lane: usize,
    start: usize,
    outputs: usize,
}

/// A contiguous run of segment positions `[pos, pos + len)` reading inputs `[src, src + len)`.
#[derive(Debug, Clone, Copy)]
struct Run {
    pos: usize,
    src: usize,
    len: usize,
}

/// The runs of a segment that read inputs: its body, and its history (split where it wraps
/// around, or is zero, before `t = 0`). Positions not covered are zero.
fn segment_runs(g: &ConvGeometry, seg: Seg, l: usize) -> impl Iterator<Item = Run> {
    let (n, hist) = (g.n(), g.history);
    let body = Run {
        pos: 0,
        src: seg.start,
        len: seg.outputs,
    };
    // History position p reads start - (N - p): at or after t = 0 when p >= N - start.
    let split = n.saturating_sub(seg.start).max(n - hist);
    let wrapped = (g.wraps && split > n - hist).then(|| Run {
        pos: n - hist,
        src: l + seg.start + (n - hist) - n,
        len: split - (n - hist),
    });
    let direct = (n > split).then(|| Run {
        pos: split,
        src: seg.start + split - n,
        len: n - split,
    });
    [Some(body), wrapped, direct]
        .into_iter()
        .flatten()
        .filter(|r| r.len > 0)
}

/// Work items of small FFTs hold rows of one channel covering about this many FFT points.
const ITEM_POINTS: usize = 1 << 14;

/// Work items per thread, where the rows allow: enough for the threads to share the work evenly,
/// few enough that an item holds several of its channel's pairs.
const ITEMS_PER_THREAD: usize = 4;

/// Rows per work item (even, so that rows pair up within an item; only a channel's last item can
/// be odd): each item inverse-transforms its filter correlation once, so an item takes as many of
/// its channel's `batch` rows as leave `min_items` items over the `channels` (spread evenly over
/// that many items), and at small N at least as many as cover `ITEM_POINTS` FFT points.
fn rows_per_item(batch: usize, channels: usize, g: &ConvGeometry, min_items: usize) -> usize {
    let small = rows_covering_item_points(g);
    let items_per_channel = min_items.div_ceil(channels);
    let most = if items_per_channel <= 1 {
        batch.next_multiple_of(2)
    } else {
        // The most rows r with ceil(batch / r) >= items_per_channel: r < batch / (that - 1).
        (batch.div_ceil(items_per_channel - 1).saturating_sub(1) & !1).max(2)
    };
    // As many items as `most` rows make, each as large as the others (to an even count).
    let items = batch.div_ceil(most);
    small.max(batch.div_ceil(items).next_multiple_of(2))
}

/// Rows (even) whose segments cover about `ITEM_POINTS` FFT points: at least a pair.
fn rows_covering_item_points(g: &ConvGeometry) -> usize {
    2 * (ITEM_POINTS / (2 * g.n() * g.blocks)).max(1)
}

/// Per-work-item memory.
struct Workspace {
    /// Spectrum of the packed `pre * u` segments.
    z: Vec<Complex32>,
    /// Spectrum of the packed `dy * post` segments.
    d: Vec<Complex32>,
    /// `z * K` for the post-gate gradient.
    t: Vec<Complex32>,
    scratch: Vec<Complex32>,
    /// Real staging of one run (`N`), and of a gate (`max(N, L)`).
    stage: Vec<f32>,
    tmp: Vec<f32>,
    /// `dy` of each lane's segment (its first `outputs` positions are valid).
    dys: [Vec<f32>; 2],
    /// `dx` of the item's rows (`L` each).
    dx: [Vec<f32>; 2],
    /// Sum over the item's segments of `mask * DC * conj(V)`.
    acc: Vec<Complex64>,
    /// The four-step form's buffers (made on first use).
    four: Option<FourStepBuffers>,
}

/// Buffers of the four-step transforms: the spectra of `z`, `d` and `z * K` in that layout, the
/// correlation sum, the stage steps' staging and the sub-FFTs' scratch.
struct FourStepBuffers {
    z: Vec<Complex32>,
    d: Vec<Complex32>,
    t: Vec<Complex32>,
    acc: Vec<Complex64>,
    staging: Vec<f32>,
    scratch: Vec<Complex32>,
}

impl FourStepBuffers {
    fn new(fs: &FourStep) -> Self {
        let len = fs.buf_len();
        FourStepBuffers {
            z: vec![Complex32::default(); len],
            d: vec![Complex32::default(); len],
            t: vec![Complex32::default(); len],
            acc: vec![Complex64::default(); len],
            staging: vec![0.0; FourStep::staging_len()],
            scratch: vec![Complex32::default(); fs.scratch_len()],
        }
    }
}

/// Forward four-step transform of the natural-order sequence `src` into `buf`; positions from
/// `extent` on are known to be zero (not read).
fn four_step_forward(
    fs: &FourStep,
    src: &[Complex32],
    extent: usize,
    buf: &mut [Complex32],
    staging: &mut [f32],
    scratch: &mut [Complex32],
) {
    let tile = FourStep::tile_len();
    fs.load(buf, staging, |p0, re, im| {
        if p0 >= extent {
            return false;
        }
        for ((r, i), v) in re.iter_mut().zip(im.iter_mut()).zip(&src[p0..p0 + tile]) {
            *r = v.re;
            *i = v.im;
        }
        true
    });
    fs.forward(buf, scratch);
}

/// Inverse four-step transform of `buf` (unnormalised), positions `[0, needed)` (whole tiles)
/// into `dst` in natural order.
fn four_step_inverse(
    fs: &FourStep,
    buf: &mut [Complex32],
    needed: usize,
    dst: &mut [Complex32],
    staging: &mut [f32],
    scratch: &mut [Complex32],
) {
    fs.inverse(buf, scratch);
    fs.store(buf, staging, needed, |p0, re, im| {
        for ((d, &r), &i) in dst[p0..].iter_mut().zip(re.iter()).zip(im.iter()) {
            *d = Complex32::new(r, i);
        }
    });
}

impl Workspace {
    fn new(fft: &PairFft, l: usize) -> Self {
        let n = fft.n();
        Workspace {
            z: vec![Complex32::default(); n],
            d: vec![Complex32::default(); n],
            t: vec![Complex32::default(); n],
            scratch: vec![Complex32::default(); fft.scratch_len()],
            stage: vec![0.0; n],
            tmp: vec![0.0; n.max(l)],
            dys: [vec![0.0; n], vec![0.0; n]],
            dx: [vec![0.0; l], vec![0.0; l]],
            acc: vec![Complex64::default(); n],
            four: None,
        }
    }

    /// The four-step buffers for `fs`, made on first use.
    fn four_step(&mut self, fs: &FourStep) -> &mut FourStepBuffers {
        self.four.get_or_insert_with(|| FourStepBuffers::new(fs))
    }
}

/// Pool key: `(N, L, FFT scratch length)`, everything a [`Workspace`]'s sizes depend on.
type PoolKey = (usize, usize, usize);

/// At most this many `(N, L)` keys are pooled; a new key beyond it evicts the others.
const POOL_KEYS: usize = 4;

/// Idle workspaces, per key at most one per rayon thread.
fn pool() -> &'static Mutex<HashMap<PoolKey, Vec<Workspace>>> {
    static POOL: OnceLock<Mutex<HashMap<PoolKey, Vec<Workspace>>>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A workspace on loan from the pool; returned (if the pool has room) when dropped.
struct PooledWorkspace {
    key: PoolKey,
    ws: Option<Workspace>,
}

impl PooledWorkspace {
    fn take(fft: &PairFft, l: usize) -> Self {
        let key = (fft.n(), l, fft.scratch_len());
        let ws = pool()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_mut(&key)
            .and_then(Vec::pop)
            .unwrap_or_else(|| Workspace::new(fft, l));
        PooledWorkspace { key, ws: Some(ws) }
    }
}

impl std::ops::Deref for PooledWorkspace {
    type Target = Workspace;
    fn deref(&self) -> &Workspace {
        self.ws.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for PooledWorkspace {
    fn deref_mut(&mut self) -> &mut Workspace {
        self.ws.as_mut().expect("present until drop")
    }
}

impl Drop for PooledWorkspace {
    fn drop(&mut self) {
        let Some(ws) = self.ws.take() else { return };
        let mut pool = pool()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !pool.contains_key(&self.key) && pool.len() >= POOL_KEYS {
            pool.clear();
        }
        let free = pool.entry(self.key).or_default();
        if free.len() < rayon::current_num_threads() {
            free.push(ws);
        }
    }
}

/// Writes `src` into the real (`lane` 0) or imaginary (`lane` 1) parts of `dst`.
fn set_lane(dst: &mut [Complex32], lane: usize, src: &[f32]) {
    if lane == 0 {
        for (d, &v) in dst.iter_mut().zip(src) {
            d.re = v;
        }
    } else {
        for (d, &v) in dst.iter_mut().zip(src) {
            d.im = v;
        }
    }
}

/// `buf *= conj(K)` for a pair's spectrum, `k` a channel's stored bins: as
/// [`CpuFilterSpectrum::multiply`] with every bin conjugated (dropped bins cleared).
fn multiply_conj(k: &[Complex32], buf: &mut [Complex32]) {
    let n = buf.len();
    let half = n / 2;
    buf[0] *= k[0].conj();
    if k.len() > half {
        buf[half] *= k[half].conj();
    }
    let end = k.len().min(half);
    for (x, &kp) in buf[1..end].iter_mut().zip(&k[1..end]) {
        *x *= kp.conj();
    }
    for (x, &kp) in buf[n + 1 - end..].iter_mut().zip(k[1..end].iter().rev()) {
        *x *= kp;
    }
    if k.len() <= half {
        buf[k.len()..=n - k.len()].fill(Complex32::default());
    }
}

/// Read-only inputs of one call, as `[B, H, L]` tensors.
struct Inputs<'a, T> {
    u: &'a [T],
    pre: Option<&'a [T]>,
    post: Option<&'a [T]>,
    dy: &'a [T],
}

/// `dst = src` widened to f32, times `gate` when given (`tmp` holds the gate's widened values).
fn load_times<T: Element>(src: &[T], gate: Option<&[T]>, dst: &mut [f32], tmp: &mut [f32]) {
    T::load_f32(src, dst);
    if let Some(gate) = gate {
        let tmp = &mut tmp[..gate.len()];
        T::load_f32(gate, tmp);
        for (d, &g) in dst.iter_mut().zip(tmp.iter()) {
            *d *= g;
        }
    }
}

impl CpuConvolution {
    /// Backward pass: given `dy`, the gradient of a loss with respect to
    /// `y = post * conv(pre * u, k)`, writes `du`, `dk` (summed over the batch) and, for a gated
    /// problem, `dpregate` and `dpostgate` (see [`CpuGradients`]).
    ///
    /// `filter` is `k` prepared by [`prepare_filter`](Self::prepare_filter) (the gradients do
    /// not need `k` itself). `gates` is `(pregate, postgate)`, given exactly when the problem is
    /// gated. Everything is validated before any output is written. For a frequency-sparse
    /// problem the gradients are those of the masked forward: only kept frequencies contribute.
    pub fn backward<T: Element>(
        &self,
        filter: &CpuFilterSpectrum,
        u: &[T],
        gates: Option<(&[T], &[T])>,
        dy: &[T],
        grads: CpuGradients<'_, T>,
    ) -> Result<(), CpuError> {
        let spec = self.spec();
        self.check_inputs(filter, u, gates)?;
        let len = spec.io_len();
        CpuError::check_len("dy", dy.len(), len)?;
        CpuError::check_len("du", grads.du.len(), len)?;
        CpuError::check_len("dk", grads.dk.len(), spec.filter_elems())?;
        for (arg, g) in [
            ("dpregate", grads.dpregate.as_deref()),
            ("dpostgate", grads.dpostgate.as_deref()),
        ] {
            match (spec.gated(), g) {
                (true, Some(g)) => CpuError::check_len(arg, g.len(), len)?,
                (true, None) => {
                    return Err(CpuError::invalid(
                        arg,
                        "the problem is gated: pass both gate gradients",
                    ))
                }
                (false, Some(_)) => return Err(CpuError::invalid(arg, "the problem is not gated")),
                (false, None) => {}
            }
        }

        let (channels, l, kl) = (spec.channels(), spec.length(), spec.filter_len());
        let inputs = Inputs {
            u,
            pre: gates.map(|g| g.0),
            post: gates.map(|g| g.1),
            dy,
        };
        // Output rows, grouped by channel (row b*H + h belongs to channel h).
        let mut by_channel: Vec<Vec<RowOut<'_, T>>> = (0..channels).map(|_| Vec::new()).collect();
        let mut dpre_rows = grads.dpregate.map(|g| g.chunks_mut(l));
        let mut dpost_rows = grads.dpostgate.map(|g| g.chunks_mut(l));
        for (row, du) in grads.du.chunks_mut(l).enumerate() {
            by_channel[row % channels].push(RowOut {
                row,
                du,
                dpre: dpre_rows.as_mut().and_then(|it| it.next()),
                dpost: dpost_rows.as_mut().and_then(|it| it.next()),
            });
        }
        // Work items: rows of one channel, in (channel, batch) order, as many as keep at least
        // ITEMS_PER_THREAD items per thread where the rows allow (each item pays one
        // filter-gradient transform), and for small FFTs at least as many pairs as cover about
        // ITEM_POINTS FFT points. The items fix the order of dk's sums: the same thread count
        // gives the same bits.
        let min_items = ITEMS_PER_THREAD * rayon::current_num_threads();
        let rows_per_item = rows_per_item(spec.batch(), channels, spec.geometry(), min_items);
        let mut items: Vec<(usize, Vec<RowOut<'_, T>>)> = Vec::new();
        for (h, rows) in by_channel.into_iter().enumerate() {
            let mut rows = rows.into_iter().peekable();
            while rows.peek().is_some() {
                items.push((h, rows.by_ref().take(rows_per_item).collect()));
            }
        }
        let fft = PairFft::new(spec.geometry().n());
        // A four-step spectrum (where the forward runs the four-step form; `check_inputs` keeps a
        // filter's layout to its own problem's) is used as it is by the same form's transforms.
        let four = self.four_step();
        debug_assert_eq!(four.is_some(), !filter.is_natural(), "filter layout");
        let taps: Vec<(usize, Vec<f64>)> = items
            .into_par_iter()
            .map_init(
                || PooledWorkspace::take(&fft, l),
                |ws, (h, mut rows)| {
                    let k = filter.channel(h);
                    let taps = self.backward_rows(&fft, four, filter, k, &inputs, &mut rows, ws);
                    (h, taps)
                },
            )
            .collect();
        // Summed per channel in a fixed order (deterministic), in f64.
        let mut dk = vec![0.0f64; spec.filter_elems()];
        for (h, t) in taps {
            for (d, v) in dk[h * kl..(h + 1) * kl].iter_mut().zip(t) {
                *d += v;
            }
        }
        for (d, s) in grads.dk.iter_mut().zip(dk) {
            *d = s as f32;
        }
        Ok(())
    }

    /// One work item: rows of one channel, taken two at a time. Writes their `du` (and gate
    /// gradients) and returns their contribution to the channel's `dk` (`K` taps): the filter
    /// correlation is accumulated over every row of the item and inverse-transformed once.
    #[allow(clippy::too_many_arguments)]
    fn backward_rows<T: Element>(
        &self,
        fft: &PairFft,
        four: Option<&FourStep>,
        filter: &CpuFilterSpectrum,
        k: &[Complex32],
        inputs: &Inputs<'_, T>,
        rows: &mut [RowOut<'_, T>],
        ws: &mut Workspace,
    ) -> Vec<f64> {
        let spec = self.spec();
        let (n, kl) = (spec.geometry().n(), spec.filter_len());
        match four {
            Some(fs) => ws.four_step(fs).acc.fill(Complex64::default()),
            None => ws.acc.fill(Complex64::default()),
        }
        for pair in rows.chunks_mut(2) {
            self.backward_pair(fft, four, filter, k, inputs, pair, ws);
        }
        // dk: the first K taps of Re(IFFT(acc)) / N.
        if let Some(fs) = four {
            let b = ws.four.as_mut().expect("made above");
            for (t, a) in b.t.iter_mut().zip(&b.acc) {
                *t = Complex32::new(a.re as f32, a.im as f32);
            }
            four_step_inverse(fs, &mut b.t, kl, &mut ws.d, &mut b.staging, &mut b.scratch);
            return ws.d[..kl].iter().map(|v| v.re as f64 / n as f64).collect();
        }
        for (t, a) in ws.t.iter_mut().zip(&ws.acc) {
            *t = Complex32::new(a.re as f32, a.im as f32);
        }
        fft.inverse(&mut ws.t, &mut ws.scratch);
        ws.t[..kl].iter().map(|v| v.re as f64 / n as f64).collect()
    }

    /// One or two rows of one channel: writes their `du` (and gate gradients) and adds their
    /// filter correlation `mask * DC * conj(V)` into `ws.acc`.
    #[allow(clippy::too_many_arguments)]
    fn backward_pair<T: Element>(
        &self,
        fft: &PairFft,
        four: Option<&FourStep>,
        filter: &CpuFilterSpectrum,
        k: &[Complex32],
        inputs: &Inputs<'_, T>,
        rows: &mut [RowOut<'_, T>],
        ws: &mut Workspace,
    ) {
        let spec = self.spec();
        let g = *spec.geometry();
        let (n, l) = (g.n(), spec.length());
        let row_ids: [usize; 2] = [rows[0].row, rows.get(1).map_or(rows[0].row, |r| r.row)];
        for dx in &mut ws.dx {
            dx.fill(0.0);
        }
        let seg = |lane: usize, j: usize| {
            let (start, outputs) = g.block_range(j, l);
            Seg {
                lane,
                start,
                outputs,
            }
        };
        // Two rows: block j of both. One row: blocks j and j + 1.
        let pairs: Vec<(Seg, Option<Seg>)> = if rows.len() == 2 {
            (0..g.blocks)
                .map(|j| (seg(0, j), Some(seg(1, j))))
                .collect()
        } else {
            (0..g.blocks)
                .step_by(2)
                .map(|j| (seg(0, j), (j + 1 < g.blocks).then(|| seg(0, j + 1))))
                .collect()
        };
        // Kept bins: [0, m) and (N - m, N) when sparse, all otherwise.
        let kept = if g.is_sparse() {
            [0..g.kept_bins, n - g.kept_bins + 1..n]
        } else {
            [0..n, 0..0]
        };
        for (a, b) in pairs {
            let segs = [Some(a), b];
            // Gather x = pre * u into z and dc = dy * post into d, packed; positions no run
            // reads stay zero.
            ws.z.fill(Complex32::default());
            ws.d.fill(Complex32::default());
            for (i, s) in segs.iter().enumerate() {
                let Some(s) = s else { continue };
                let base = row_ids[s.lane] * l;
                for r in segment_runs(&g, *s, l) {
                    let src = base + r.src..base + r.src + r.len;
                    let stage = &mut ws.stage[..r.len];
                    load_times(
                        &inputs.u[src.clone()],
                        inputs.pre.map(|p| &p[src]),
                        stage,
                        &mut ws.tmp,
                    );
                    set_lane(&mut ws.z[r.pos..r.pos + r.len], i, stage);
                }
                let out = base + s.start..base + s.start + s.outputs;
                let dyl = &mut ws.dys[i][..s.outputs];
                T::load_f32(&inputs.dy[out.clone()], dyl);
                let dc = &mut ws.d[..s.outputs];
                if let Some(post) = inputs.post {
                    let stage = &mut ws.stage[..s.outputs];
                    T::load_f32(&post[out], stage);
                    for (q, &y) in stage.iter_mut().zip(dyl.iter()) {
                        *q *= y;
                    }
                    set_lane(dc, i, stage);
                } else {
                    set_lane(dc, i, dyl);
                }
            }
            let gated = inputs.post.is_some();
            if let Some(fs) = four {
                // The four-step form: the same products, bin by bin in its layout (a dense
                // spectrum: every bin kept), and the results back in natural order.
                let z_extent = segs
                    .iter()
                    .flatten()
                    .flat_map(|s| segment_runs(&g, *s, l))
                    .map(|r| r.pos + r.len)
                    .max()
                    .unwrap_or(0);
                let d_extent = segs.iter().flatten().map(|s| s.outputs).max().unwrap_or(0);
                let b = ws.four.as_mut().expect("made by backward_rows");
                let (staging, scratch) = (&mut b.staging, &mut b.scratch);
                four_step_forward(fs, &ws.z, z_extent, &mut b.z, staging, scratch);
                four_step_forward(fs, &ws.d, d_extent, &mut b.d, staging, scratch);
                fs.accumulate_correlation(&mut b.acc, &b.d, &b.z);
                if gated {
                    b.t.copy_from_slice(&b.z);
                    fs.multiply(&mut b.t, k, false);
                    four_step_inverse(fs, &mut b.t, d_extent, &mut ws.t, staging, scratch);
                }
                fs.multiply(&mut b.d, k, true);
                four_step_inverse(fs, &mut b.d, n, &mut ws.d, staging, scratch);
            } else {
                fft.forward(&mut ws.z, &mut ws.scratch);
                fft.forward(&mut ws.d, &mut ws.scratch);
                // Filter gradient: Re(IFFT(DC * conj(V))) sums both lanes' correlations.
                for range in &kept {
                    for f in range.clone() {
                        let p = ws.d[f] * ws.z[f].conj();
                        ws.acc[f] += Complex64::new(p.re as f64, p.im as f64);
                    }
                }
                if gated {
                    ws.t.copy_from_slice(&ws.z);
                    filter.multiply(k, &mut ws.t);
                    fft.inverse(&mut ws.t, &mut ws.scratch);
                }
                multiply_conj(k, &mut ws.d);
                fft.inverse(&mut ws.d, &mut ws.scratch);
            }
            // Post-gate gradient: dy * c with c = IFFT(V * K).
            if gated {
                for (i, s) in segs.iter().enumerate() {
                    let Some(s) = s else { continue };
                    let vals = &mut ws.tmp[..s.outputs];
                    for ((v, c), &dyv) in vals.iter_mut().zip(&ws.t).zip(ws.dys[i].iter()) {
                        *v = dyv * if i == 0 { c.re } else { c.im };
                    }
                    if let Some(dst) = rows[s.lane].dpost.as_deref_mut() {
                        T::store_f32(vals, &mut dst[s.start..s.start + s.outputs]);
                    }
                }
            }
            // Segment gradient: IFFT(DC * conj(K)), scattered back to the inputs it read.
            for (i, s) in segs.iter().enumerate() {
                let Some(s) = s else { continue };
                let dx = &mut ws.dx[s.lane];
                for r in segment_runs(&g, *s, l) {
                    let src = &ws.d[r.pos..r.pos + r.len];
                    for (x, v) in dx[r.src..r.src + r.len].iter_mut().zip(src) {
                        *x += if i == 0 { v.re } else { v.im };
                    }
                }
            }
        }
        // du = dx * pre, dpregate = dx * u.
        for (lane, out) in rows.iter_mut().enumerate() {
            let base = out.row * l;
            let dx = &mut ws.dx[lane][..l];
            let tmp = &mut ws.tmp[..l];
            if let Some(dpre) = out.dpre.as_deref_mut() {
                T::load_f32(&inputs.u[base..base + l], tmp);
                for (t, &x) in tmp.iter_mut().zip(dx.iter()) {
                    *t *= x;
                }
                T::store_f32(tmp, dpre);
            }
            if let Some(pre) = inputs.pre {
                T::load_f32(&pre[base..base + l], tmp);
                for (t, &x) in tmp.iter_mut().zip(dx.iter()) {
                    *t *= x;
                }
                T::store_f32(tmp, out.du);
            } else {
                T::store_f32(dx, out.du);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::four_step::tests::noise;
    use monarch_core::{ConvMode, ConvSpec, FrequencyKeep};

    #[test]
    fn segment_runs_match_segment_source() {
        for (l, k, mode) in [
            (100, 10, ConvMode::Circular),
            (100, 10, ConvMode::Causal),
            (1000, 1000, ConvMode::Circular),
            (1024, 1024, ConvMode::Circular),
            (90, 3, ConvMode::Causal),
            (19, 7, ConvMode::Circular),
        ] {
            let g = ConvGeometry::choose(l, k, mode, FrequencyKeep::All).unwrap();
            for j in 0..g.blocks {
                let (start, outputs) = g.block_range(j, l);
                let mut got = vec![None; g.n()];
                let seg = Seg {
                    lane: 0,
                    start,
                    outputs,
                };
                for r in segment_runs(&g, seg, l) {
                    for i in 0..r.len {
                        assert!(got[r.pos + i].is_none());
                        got[r.pos + i] = Some(r.src + i);
                    }
                }
                for (p, src) in got.iter().enumerate() {
                    assert_eq!(
                        *src,
                        g.segment_source(start, outputs, p, l),
                        "{g:?} {j} {p}"
                    );
                }
            }
        }
    }

    /// The four-step form's backward (`FourStep` transforms on its own spectrum layout) against
    /// the whole-length one on the same problems: gated, circular, and several overlap-save
    /// blocks with history.
    #[test]
    fn four_step_backward_matches_whole_length_transforms() {
        let cases = [
            ConvSpec::builder(2, 1, 1 << 16, 1 << 16).gated(true),
            ConvSpec::builder(1, 3, 1 << 17, 1 << 17).circular(),
            ConvSpec::builder(2, 1, 300_000, 70_000),
            ConvSpec::builder(1, 2, 250_000, 40_000)
                .circular()
                .gated(true),
        ];
        for (i, builder) in cases.into_iter().enumerate() {
            let spec = builder.build().unwrap();
            assert!(
                i < 2 || spec.geometry().blocks >= 2,
                "case {i}: several blocks"
            );
            let (b, h, l, kl) = (
                spec.batch(),
                spec.channels(),
                spec.length(),
                spec.filter_len(),
            );
            let seed = 10 * i as u64;
            let (u, dy) = (noise(b * h * l, seed + 1), noise(b * h * l, seed + 2));
            let k: Vec<f32> = noise(h * kl, seed + 3).iter().map(|v| v / 64.0).collect();
            let gates = spec
                .gated()
                .then(|| (noise(b * h * l, seed + 4), noise(b * h * l, seed + 5)));
            let run = |four_step: bool| {
                let conv = CpuConvolution::with_four_step(&spec, four_step).unwrap();
                let filter = conv.prepare_filter(&k).unwrap();
                assert_eq!(filter.is_natural(), !four_step, "case {i}: layout");
                let mut du = vec![f32::NAN; b * h * l];
                let mut dk = vec![f32::NAN; h * kl];
                let mut dpre = gates.as_ref().map(|_| vec![f32::NAN; b * h * l]);
                let mut dpost = gates.as_ref().map(|_| vec![f32::NAN; b * h * l]);
                let grads = CpuGradients {
                    du: &mut du,
                    dk: &mut dk,
                    dpregate: dpre.as_deref_mut(),
                    dpostgate: dpost.as_deref_mut(),
                };
                let g = gates.as_ref().map(|(p, q)| (&p[..], &q[..]));
                conv.backward(&filter, &u, g, &dy, grads).unwrap();
                (du, dk, dpre, dpost)
            };
            let (four, whole) = (run(true), run(false));
            assert!(rel_err(&four.0, &whole.0) < 1e-5, "case {i}: du");
            assert!(rel_err(&four.1, &whole.1) < 1e-5, "case {i}: dk");
            for (what, a, b) in [("dpre", &four.2, &whole.2), ("dpost", &four.3, &whole.3)] {
                if let (Some(a), Some(b)) = (a, b) {
                    assert!(rel_err(a, b) < 1e-5, "case {i}: {what}");
                }
            }
        }
    }

    /// A dense problem with pairs from 2^17 keeps its spectrum in the four-step layout, which
    /// the backward's four-step transforms use as it is. Its gradients equal those of
    /// each row of each channel run alone (one segment: natural layout, checked against the
    /// f64 oracle by the conformance suite): `du` row by row, `dk` as the sum over the batch.
    #[test]
    fn four_step_layout_backward_matches_rows_alone() {
        let spec = ConvSpec::builder(2, 3, 1 << 16, 1 << 16).build().unwrap();
        backward_matches_rows_alone(&spec, 0, true);
    }

    /// Work items of several pairs of rows (a large batch over few channels; on two threads
    /// `rows_per_item` gives an item 4 to 8 of its channel's rows, each item one filter-gradient
    /// transform): odd batches (a last item with a single row, in one case as two of its
    /// overlap-save blocks), gated, circular, and in the four-step form; the same gradients as
    /// each row run alone.
    #[test]
    fn items_of_several_pairs_match_rows_alone() {
        let cases = [
            (
                ConvSpec::builder(63, 1, 1 << 13, 1 << 13).gated(true),
                false,
            ),
            (ConvSpec::builder(30, 2, 1 << 12, 1 << 12).circular(), false),
            (ConvSpec::builder(14, 4, 1 << 16, 1 << 16), true),
            (ConvSpec::builder(33, 1, 1 << 15, 3000), false),
        ];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (i, (builder, four_step)) in cases.into_iter().enumerate() {
            let spec = builder.build().unwrap();
            let g = spec.geometry();
            let rows = rows_per_item(spec.batch(), spec.channels(), g, 2 * ITEMS_PER_THREAD);
            assert!(rows >= 4, "case {i}: {rows} rows per item");
            assert!(i < 3 || g.blocks > 1, "case {i}: several blocks");
            pool.install(|| backward_matches_rows_alone(&spec, 10 * i as u64, four_step));
        }
    }

    /// Rows per item: even, at least the small-FFT rule's, leaving at least `min_items` items
    /// wherever pairs of rows would, in as few items as reach that, and spread evenly over them
    /// (each item one filter-gradient transform: fewer, larger items where the batch allows).
    #[test]
    fn rows_per_item_leave_enough_items() {
        for n_log2 in [8, 12, 14, 16, 20] {
            let g = ConvGeometry::choose(
                1 << (n_log2 - 1),
                1 << (n_log2 - 1),
                ConvMode::Causal,
                FrequencyKeep::All,
            )
            .unwrap();
            let small = rows_covering_item_points(&g);
            for (batch, channels, min_items) in (0..9 * 6 * 3).map(|i| {
                (
                    [1, 2, 3, 8, 9, 15, 17, 40, 100][i % 9],
                    [1, 2, 5, 8, 30, 768][i / 9 % 6],
                    [8, 16, 256][i / 54],
                )
            }) {
                let case = format!("N 2^{n_log2}, B {batch}, H {channels}, {min_items} items");
                let rows = rows_per_item(batch, channels, &g, min_items);
                assert!(rows % 2 == 0 && rows >= small, "{case}: {rows} rows");
                if rows == small {
                    continue;
                }
                let per_channel = batch.div_ceil(rows);
                let (items, pair_items) = (channels * per_channel, channels * batch.div_ceil(2));
                assert!(
                    items >= min_items.min(pair_items),
                    "{case}: {rows} rows, {items} items"
                );
                // The fewest items per channel that an even row count gives and that reach the
                // target (every pair its own item where none does).
                let target = min_items.div_ceil(channels);
                let fewest = (2..=batch.next_multiple_of(2))
                    .step_by(2)
                    .map(|r| batch.div_ceil(r))
                    .filter(|&c| c >= target)
                    .min()
                    .unwrap_or(batch.div_ceil(2));
                assert_eq!(per_channel, fewest, "{case}: {rows} rows");
                // Evenly: no item more than one row (the even rounding) over the mean.
                assert!(
                    rows <= batch.div_ceil(per_channel) + 1,
                    "{case}: {rows} rows"
                );
            }
        }
    }

    /// `spec`'s backward against each of its rows run as a problem of one row (`du` and the
    /// gate gradients row by row, `dk` as the sum over the batch).
    /// `four_step`: the problem's filter spectrum is in the four-step layout (checked).
    fn backward_matches_rows_alone(spec: &ConvSpec, seed: u64, four_step: bool) {
        let (b, h, l, kl) = (
            spec.batch(),
            spec.channels(),
            spec.length(),
            spec.filter_len(),
        );
        let conv = CpuConvolution::new(spec).unwrap();
        let (u, dy, k) = (
            noise(b * h * l, seed + 1),
            noise(b * h * l, seed + 2),
            noise(h * kl, seed + 3),
        );
        let k: Vec<f32> = k.iter().map(|v| v / 256.0).collect();
        let gates = spec
            .gated()
            .then(|| (noise(b * h * l, seed + 4), noise(b * h * l, seed + 5)));
        let filter = conv.prepare_filter(&k).unwrap();
        assert_eq!(filter.is_natural(), !four_step, "spectrum layout");
        let mut du = vec![f32::NAN; b * h * l];
        let mut dk = vec![f32::NAN; h * kl];
        let mut dpre = gates.as_ref().map(|_| vec![f32::NAN; b * h * l]);
        let mut dpost = gates.as_ref().map(|_| vec![f32::NAN; b * h * l]);
        let grads = CpuGradients {
            du: &mut du,
            dk: &mut dk,
            dpregate: dpre.as_deref_mut(),
            dpostgate: dpost.as_deref_mut(),
        };
        let g = gates.as_ref().map(|(p, q)| (&p[..], &q[..]));
        conv.backward(&filter, &u, g, &dy, grads).unwrap();

        let mut one_spec = ConvSpec::builder(1, 1, l, kl).gated(spec.gated());
        if spec.geometry().wraps {
            one_spec = one_spec.circular();
        }
        let one = CpuConvolution::new(&one_spec.build().unwrap()).unwrap();
        for c in 0..h {
            let kc = &k[c * kl..(c + 1) * kl];
            let one_filter = one.prepare_filter(kc).unwrap();
            assert!(one_filter.is_natural());
            let mut dk_sum = vec![0.0f32; kl];
            for r in 0..b {
                let row = (r * h + c) * l..(r * h + c + 1) * l;
                let mut du_r = vec![f32::NAN; l];
                let mut dk_r = vec![f32::NAN; kl];
                let mut dpre_r = gates.as_ref().map(|_| vec![f32::NAN; l]);
                let mut dpost_r = gates.as_ref().map(|_| vec![f32::NAN; l]);
                let grads = CpuGradients {
                    du: &mut du_r,
                    dk: &mut dk_r,
                    dpregate: dpre_r.as_deref_mut(),
                    dpostgate: dpost_r.as_deref_mut(),
                };
                let g_r = gates
                    .as_ref()
                    .map(|(p, q)| (&p[row.clone()], &q[row.clone()]));
                let (u_r, dy_r) = (&u[row.clone()], &dy[row.clone()]);
                one.backward(&one_filter, u_r, g_r, dy_r, grads).unwrap();
                assert!(
                    rel_err(&du[row.clone()], &du_r) < 1e-5,
                    "du row {r} channel {c}"
                );
                for (what, all, alone) in [("dpre", &dpre, &dpre_r), ("dpost", &dpost, &dpost_r)] {
                    if let (Some(all), Some(alone)) = (all, alone) {
                        assert!(
                            rel_err(&all[row.clone()], alone) < 1e-5,
                            "{what} row {r} channel {c}"
                        );
                    }
                }
                for (s, v) in dk_sum.iter_mut().zip(&dk_r) {
                    *s += v;
                }
            }
            assert!(rel_err(&dk[c * kl..(c + 1) * kl], &dk_sum) < 1e-5, "dk {c}");
        }
    }

    fn rel_err(got: &[f32], want: &[f32]) -> f64 {
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (&g, &w) in got.iter().zip(want) {
            num += ((g - w) as f64).powi(2);
            den += (w as f64).powi(2);
        }
        let err = (num / den).sqrt();
        assert!(err.is_finite(), "NaN in the gradients");
        err
    }
}
