//! The pass schedule the GPU backends run ([`PassSchedule`]): a plan turned into launches of
//! four kernels (fused block, column stage forward and inverse, gather), their parameters
//! ([`PassParams`], the kernels' shared ABI), and the split of a problem into chunks of rows.
//!
//! The CUDA kernels (`backend-cuda/kernels/fftconv.cu`) and the Vulkan shaders
//! (`backend-vulkan/shaders/fftconv.comp`) implement the same passes with the same parameters,
//! so both backends take their schedules from here.
//!
//! Work unit: a *pair* of real overlap-save segments of one channel packed as one complex
//! sequence of `N` points. A pass works on *lines* of `2^line_log2` points; a block (workgroup)
//! holds `2^lines_log2` lines on chip.

use crate::{ConvSpec, CoreError, MonarchPlan};

/// Read `u` (and the pre-gate) instead of the intermediate spectra.
pub const FLAG_SRC_INPUT: u32 = 1;
/// Write `y` (and apply the post-gate) instead of the intermediate spectra.
pub const FLAG_DST_OUTPUT: u32 = 2;
pub const FLAG_GATED: u32 = 4;
/// Circular: history before `t = 0` wraps around.
pub const FLAG_WRAPS: u32 = 8;
/// Loads read a segment's outputs only (no history): `dy * post` in the backward.
pub const FLAG_BODY_ONLY: u32 = 16;
/// Fused: store the spectrum after the forward FFT.
pub const FLAG_NO_INVERSE: u32 = 32;
/// Fused: load a spectrum, start at the product.
pub const FLAG_NO_FORWARD: u32 = 64;
/// Product with `conj(K)` (the adjoint).
pub const FLAG_CONJ_FILTER: u32 = 128;
/// Product with `conj(other) / N` on kept bins (the filter gradient).
pub const FLAG_CORRELATE: u32 = 256;
/// Store `Re` of positions `< taps_len` as filter-gradient taps.
pub const FLAG_DST_TAPS: u32 = 512;
/// Every FFT round in f32 (CUDA: no tensor-core rounds, whose operands are f16). Set on every
/// backward step: the filter gradient is a sum whose terms can cancel, so its error must stay
/// relative to f32, not to f16 times the terms' size. Shaders without such rounds ignore it.
pub const FLAG_F32_ROUNDS: u32 = 1024;

/// With [`FLAG_DST_TAPS`]: the pass holds `IFFT(V conj(D))`, whose position `N - t` (mod `N`) is
/// tap `t`, so tap `t` is stored from there (the backward's correlation computed in `V`'s buffer,
/// which keeps `D` intact for the adjoint: [`PassSchedule::backward_steps`]).
pub const FLAG_TAPS_MIRRORED: u32 = 2048;

/// Elements of `u` one chunk holds by default.
pub const DEFAULT_CHUNK_ELEMS: usize = 1 << 24;

/// The parameters of one pass: the kernels' ABI (twenty `u32`, in this order, in the CUDA
/// kernels' `Params` and the Vulkan shaders' push constants).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassParams {
    /// `N = 2^log2n`.
    pub log2n: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// Length of this pass's lines (`N_s`, or `M_j` for the fused block).
    pub line_log2: u32,
    /// Column stages: log2 `M_{s+1}` (stride between a line's elements); fused: 0.
    pub stride_log2: u32,
    /// Lines per block.
    pub lines_log2: u32,
    /// Lines in this launch (gather: elements).
    pub total_lines: u32,
    /// Fused: log2 of each global stage's factor, 5 bits per stage.
    pub stage_bits: u32,
    /// Fused: number of global stages before the fused block.
    pub stage_count: u32,
    /// `L`.
    pub seq_len: u32,
    /// Channels in this chunk.
    pub channels: u32,
    /// First channel of this chunk (into the filter spectrum).
    pub channel_offset: u32,
    /// Overlap-save blocks per row.
    pub blocks: u32,
    /// Outputs per block.
    pub block_len: u32,
    /// Inputs before a block that it reads.
    pub history: u32,
    /// Stored (kept) half-spectrum bins per channel.
    pub kept_bins: u32,
    /// Segments per channel in this chunk (rows of the chunk x blocks).
    pub segments: u32,
    /// Pairs per channel: `ceil(segments / 2)`.
    pub pairs: u32,
    /// Channels between consecutive batch rows in the bound buffers.
    pub batch_stride: u32,
    /// Element of the bound buffers where this chunk's first row starts.
    pub element_offset: u32,
    /// Backward: filter taps `K` stored per pair.
    pub taps_len: u32,
}

impl PassParams {
    /// The parameters as bytes in native order (push constants).
    pub fn bytes(&self) -> [u8; std::mem::size_of::<PassParams>()] {
        let mut out = [0u8; std::mem::size_of::<PassParams>()];
        let words = [
            self.log2n,
            self.flags,
            self.line_log2,
            self.stride_log2,
            self.lines_log2,
            self.total_lines,
            self.stage_bits,
            self.stage_count,
            self.seq_len,
            self.channels,
            self.channel_offset,
            self.blocks,
            self.block_len,
            self.history,
            self.kept_bins,
            self.segments,
            self.pairs,
            self.batch_stride,
            self.element_offset,
            self.taps_len,
        ];
        for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        out
    }
}

/// Which kernel a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PassKind {
    Fused,
    ColumnsForward,
    ColumnsInverse,
    /// Backward: sums the input gradients.
    Gather,
}

/// One pass of the plan as the kernels run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassShape {
    pub kind: PassKind,
    /// log2 of the line length (`N_s` for a column stage, `M_j` for the fused block).
    pub line_log2: u32,
    /// Column stages: log2 `M_{s+1}`.
    pub stride_log2: u32,
}

/// Which rows one chunk covers: batches `[b0, b0 + nb)` x channels `[h0, h0 + nh)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub b0: usize,
    pub nb: usize,
    pub h0: usize,
    pub nh: usize,
}

/// The buffers a backward step binds (the backend maps each to its buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackwardBinding {
    /// Forward transform of `pre * u` into the spectrum `V`.
    Input = 0,
    /// Forward transform of `dy * post` into the spectrum `D`.
    OutputGradient,
    /// Correlation `D conj(V)` in `D`'s buffer, taps out.
    Taps,
    /// `IFFT(V K)` in `V`'s buffer, `dpostgate = dy * c` out.
    PostGate,
    /// `IFFT(D conj(K))` in `D`'s buffer.
    Adjoint,
    /// Gather of `D`'s buffer into `du` and `dpregate`.
    Gather,
}

impl BackwardBinding {
    /// Number of variants.
    pub const COUNT: usize = 6;
}

/// A problem's pass schedule on one device: the plan's passes (global column stages, then the
/// fused block), how many points a block holds, and how rows are chunked.
#[derive(Debug, Clone)]
pub struct PassSchedule {
    spec: ConvSpec,
    passes: Vec<PassShape>,
    shared_points: usize,
    chunk_shape: (usize, usize),
}

impl PassSchedule {
    /// The schedule of `plan` for `spec`, with blocks of `shared_points` complex points and
    /// chunks of at most `chunk_elems` elements of `u` (at least one row).
    pub fn new(
        spec: &ConvSpec,
        plan: &MonarchPlan,
        shared_points: usize,
        chunk_elems: usize,
    ) -> Result<PassSchedule, CoreError> {
        let mut passes = Vec::new();
        for pass in plan.passes() {
            let s = pass.stages.start;
            if pass.on_chip {
                passes.push(PassShape {
                    kind: PassKind::Fused,
                    line_log2: plan.block_len(s).ilog2(),
                    stride_log2: 0,
                });
            } else {
                passes.push(PassShape {
                    kind: PassKind::ColumnsForward,
                    line_log2: plan.factors()[s].ilog2(),
                    stride_log2: plan.stride(s).ilog2(),
                });
            }
        }
        let n = spec.geometry().n();
        // The fused pass packs 5 bits per global stage into one u32.
        if passes.last().map(|p| p.kind) != Some(PassKind::Fused) || passes.len() > 7 {
            return Err(CoreError::NoPlan {
                size: n,
                reason: format!("no pass schedule with {shared_points} points per block"),
            });
        }
        if passes.iter().any(|p| 1usize << p.line_log2 > shared_points) {
            return Err(CoreError::NoPlan {
                size: n,
                reason: format!("a stage is longer than the {shared_points} points of a block"),
            });
        }
        Ok(PassSchedule {
            spec: spec.clone(),
            passes,
            shared_points,
            chunk_shape: chunk_shape(spec, chunk_elems),
        })
    }

    /// This schedule with the whole FFT as one fused pass (one line of `N` points per block,
    /// the block taken as `N` points), the chunks unchanged: for a backend whose fused pass can
    /// hold a line longer than the blocks this schedule was made for (Vulkan's register-radix
    /// pass exchanges it through shared memory in rounds).
    pub fn one_pass(&self) -> PassSchedule {
        let n = self.spec.geometry().n();
        PassSchedule {
            spec: self.spec.clone(),
            passes: vec![PassShape {
                kind: PassKind::Fused,
                line_log2: n.ilog2(),
                stride_log2: 0,
            }],
            shared_points: n,
            chunk_shape: self.chunk_shape,
        }
    }

    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    /// Forward order: global column stages, then the fused block.
    pub fn passes(&self) -> &[PassShape] {
        &self.passes
    }

    /// Complex points a block holds.
    pub fn shared_points(&self) -> usize {
        self.shared_points
    }

    /// Rows per chunk: `(batches, channels)`.
    pub fn chunk_shape(&self) -> (usize, usize) {
        self.chunk_shape
    }

    /// Halves the chunks' rows; `false` when they cannot get smaller (one row, or the two
    /// batch rows whose segments pair up).
    pub fn shrink_chunks(&mut self) -> bool {
        let before = self.chunk_shape;
        let elems = before.0 * before.1 * self.spec.length();
        self.chunk_shape = chunk_shape(&self.spec, elems / 2);
        self.chunk_shape != before
    }

    /// Pairs of segments per channel in a chunk of `nb` batch rows.
    pub fn pairs(&self, nb: usize) -> usize {
        (nb * self.spec.geometry().blocks).div_ceil(2)
    }

    /// Bytes of the spectra of every pair of one full chunk (`N` complex f32 per pair).
    pub fn spectra_bytes(&self) -> usize {
        let (nb, nh) = self.chunk_shape;
        nh * self.pairs(nb) * self.spec.geometry().n() * 8
    }

    /// Bytes of one stream (`u`, a gate or `y`) of one full chunk.
    pub fn stream_bytes(&self) -> usize {
        let (nb, nh) = self.chunk_shape;
        nb * nh * self.spec.length() * self.spec.dtype().size_bytes()
    }

    /// The chunks covering the problem, batch-major.
    pub fn chunks(&self) -> impl Iterator<Item = Chunk> + '_ {
        let (nb, nh) = self.chunk_shape;
        let (b_count, h_count) = (self.spec.batch(), self.spec.channels());
        (0..b_count).step_by(nb).flat_map(move |b0| {
            (0..h_count).step_by(nh).map(move |h0| Chunk {
                b0,
                nb: nb.min(b_count - b0),
                h0,
                nh: nh.min(h_count - h0),
            })
        })
    }

    /// For each batch row of `chunk`: (element range in the compact chunk, range in `[B, H, L]`).
    pub fn chunk_rows(
        &self,
        chunk: Chunk,
    ) -> impl Iterator<Item = (std::ops::Range<usize>, std::ops::Range<usize>)> {
        let l = self.spec.length();
        let h_count = self.spec.channels();
        let run = chunk.nh * l;
        (0..chunk.nb).map(move |i| {
            let src = ((chunk.b0 + i) * h_count + chunk.h0) * l;
            (i * run..(i + 1) * run, src..src + run)
        })
    }

    /// [`chunk_params`](Self::chunk_params) for the backward's launches: with
    /// [`FLAG_F32_ROUNDS`].
    pub fn backward_chunk_params(&self, chunk: Chunk, compact: bool) -> PassParams {
        let mut base = self.chunk_params(chunk, compact);
        base.flags |= FLAG_F32_ROUNDS;
        base
    }

    /// Parameters shared by every pass of one chunk. `compact`: the chunk's rows sit compactly
    /// in the bound buffers (host I/O); otherwise they sit in whole `[B, H, L]` tensors.
    pub fn chunk_params(&self, chunk: Chunk, compact: bool) -> PassParams {
        let geometry = self.spec.geometry();
        let n = geometry.n();
        let mut base = PassParams {
            log2n: n.ilog2(),
            seq_len: self.spec.length() as u32,
            channels: chunk.nh as u32,
            channel_offset: chunk.h0 as u32,
            blocks: geometry.blocks as u32,
            block_len: geometry.block_len as u32,
            history: geometry.history as u32,
            kept_bins: geometry.kept_bins.min(n / 2 + 1) as u32,
            segments: (chunk.nb * geometry.blocks) as u32,
            pairs: self.pairs(chunk.nb) as u32,
            taps_len: self.spec.filter_len() as u32,
            ..PassParams::default()
        };
        if compact {
            base.batch_stride = chunk.nh as u32;
        } else {
            let h_count = self.spec.channels();
            base.batch_stride = h_count as u32;
            base.element_offset = ((chunk.b0 * h_count + chunk.h0) * self.spec.length()) as u32;
        }
        if self.spec.gated() {
            base.flags |= FLAG_GATED;
        }
        if geometry.wraps {
            base.flags |= FLAG_WRAPS;
        }
        base
    }

    /// Parameters of one pass over `total_pairs` pairs (lines and lines per block).
    pub fn pass_params(&self, base: PassParams, pass: PassShape, total_pairs: usize) -> PassParams {
        let n = self.spec.geometry().n();
        let line = 1usize << pass.line_log2;
        let total_lines = total_pairs * (n / line);
        let per_group = (self.shared_points / line)
            .min(total_lines.next_power_of_two())
            .max(1);
        PassParams {
            line_log2: pass.line_log2,
            stride_log2: pass.stride_log2,
            lines_log2: per_group.ilog2(),
            total_lines: total_lines as u32,
            ..base
        }
    }

    /// The forward of one chunk: forward column stages, the fused block, inverse column stages.
    pub fn forward_steps(&self, chunk: Chunk, compact: bool) -> Vec<(PassKind, PassParams)> {
        let total_pairs = chunk.nh * self.pairs(chunk.nb);
        let base = self.chunk_params(chunk, compact);
        let globals = &self.passes[..self.passes.len() - 1];
        let fused = self.passes[self.passes.len() - 1];
        let mut steps = Vec::new();
        for (s, p) in globals.iter().enumerate() {
            let mut params = self.pass_params(base, *p, total_pairs);
            if s == 0 {
                params.flags |= FLAG_SRC_INPUT;
            }
            steps.push((PassKind::ColumnsForward, params));
        }
        let mut fused_params = self.pass_params(base, fused, total_pairs);
        fused_params.stage_bits = self.stage_bits();
        fused_params.stage_count = globals.len() as u32;
        if globals.is_empty() {
            fused_params.flags |= FLAG_SRC_INPUT | FLAG_DST_OUTPUT;
        }
        steps.push((PassKind::Fused, fused_params));
        for (s, p) in globals.iter().enumerate().rev() {
            let inverse = PassShape {
                kind: PassKind::ColumnsInverse,
                ..*p
            };
            let mut params = self.pass_params(base, inverse, total_pairs);
            if s == 0 {
                params.flags |= FLAG_DST_OUTPUT;
            }
            steps.push((PassKind::ColumnsInverse, params));
        }
        steps
    }

    /// log2 of each global stage's factor, 5 bits per stage.
    fn stage_bits(&self) -> u32 {
        let globals = &self.passes[..self.passes.len() - 1];
        globals
            .iter()
            .enumerate()
            .fold(0u32, |acc, (s, p)| acc | p.line_log2 << (5 * s))
    }

    /// Whether [`backward_steps`](Self::backward_steps) mirrors the taps: where that saves the
    /// second transform of dy, i.e. the plan has global stages (a one-pass plan only reads D).
    /// Its [`BackwardBinding::Taps`] steps then bind `V`'s buffer as the spectrum, `D`'s as the
    /// other one.
    pub fn mirrors_taps(&self) -> bool {
        self.passes.len() > 1
    }

    /// The backward of one chunk: (buffers bound, kernel, parameters) per step. The gather
    /// kernel runs `2^gather_lines_log2` elements per block (its block size).
    ///
    /// A plan of one fused pass computes the filter gradient's correlation `D conj(V)` in `D`'s
    /// buffer (the fused pass only reads D, so it stays for the adjoint). A plan with global
    /// stages ([`mirrors_taps`](Self::mirrors_taps)) computes `V conj(D)` in `V`'s buffer
    /// instead, its taps store carrying [`FLAG_TAPS_MIRRORED`], because the inverse column
    /// passes work in place and `D` must survive for the adjoint: dy is transformed once (four
    /// transforms, not five). Gated, `V` is then gone by the post-gate's turn, so its
    /// `conv(pre u, k)` is a whole forward convolution (the forward's steps with `dy` as the
    /// post-gate and `dpost` as the output, in `V`'s buffer: three passes instead of the four of
    /// the post-gate's inverse and a second transform of dy).
    pub fn backward_steps(
        &self,
        chunk: Chunk,
        compact: bool,
        gather_lines_log2: u32,
    ) -> Vec<(BackwardBinding, PassKind, PassParams)> {
        let total_pairs = chunk.nh * self.pairs(chunk.nb);
        let base = self.backward_chunk_params(chunk, compact);
        let globals: Vec<PassShape> = self.passes[..self.passes.len() - 1].to_vec();
        let fused = self.passes[self.passes.len() - 1];
        let stage_bits = self.stage_bits();
        let fused_params = |flags: u32| {
            let mut p = self.pass_params(base, fused, total_pairs);
            p.stage_bits = stage_bits;
            p.stage_count = globals.len() as u32;
            p.flags |= flags;
            p
        };
        let mut steps = Vec::new();
        // Forward transform of the input (SRC_INPUT on the first pass), spectrum in tmp.
        let forward = |steps: &mut Vec<_>, set: BackwardBinding, load: u32| {
            for (s, p) in globals.iter().enumerate() {
                let mut params = self.pass_params(base, *p, total_pairs);
                if s == 0 {
                    params.flags |= FLAG_SRC_INPUT | load;
                }
                steps.push((set, PassKind::ColumnsForward, params));
            }
            let first = if globals.is_empty() {
                FLAG_SRC_INPUT | load
            } else {
                0
            };
            steps.push((set, PassKind::Fused, fused_params(FLAG_NO_INVERSE | first)));
        };
        // Product and inverse transform of the spectrum in tmp; `store` on the last pass.
        let inverse = |steps: &mut Vec<_>, set: BackwardBinding, product: u32, store: u32| {
            let last = if globals.is_empty() { store } else { 0 };
            steps.push((
                set,
                PassKind::Fused,
                fused_params(FLAG_NO_FORWARD | product | last),
            ));
            for (s, p) in globals.iter().enumerate().rev() {
                let inv = PassShape {
                    kind: PassKind::ColumnsInverse,
                    ..*p
                };
                let mut params = self.pass_params(base, inv, total_pairs);
                if s == 0 {
                    params.flags |= store;
                }
                steps.push((set, PassKind::ColumnsInverse, params));
            }
        };
        use BackwardBinding as B;
        let mirrored = self.mirrors_taps();
        forward(&mut steps, B::Input, 0);
        forward(&mut steps, B::OutputGradient, FLAG_BODY_ONLY);
        let taps_store = if mirrored {
            FLAG_DST_TAPS | FLAG_TAPS_MIRRORED
        } else {
            FLAG_DST_TAPS
        };
        inverse(&mut steps, B::Taps, FLAG_CORRELATE, taps_store);
        if self.spec.gated() && mirrored {
            for (kind, mut params) in self.forward_steps(chunk, compact) {
                params.flags |= FLAG_F32_ROUNDS;
                steps.push((B::PostGate, kind, params));
            }
        } else if self.spec.gated() {
            inverse(&mut steps, B::PostGate, 0, FLAG_DST_OUTPUT);
        }
        inverse(&mut steps, B::Adjoint, FLAG_CONJ_FILTER, 0);
        let elements = chunk.nb * chunk.nh * self.spec.length();
        steps.push((
            B::Gather,
            PassKind::Gather,
            PassParams {
                total_lines: elements as u32,
                lines_log2: gather_lines_log2,
                ..base
            },
        ));
        steps
    }
}

/// Rows per block of the fused backward at most (log2): its kernel keeps four maxima and a
/// located segment per possible row.
pub const FUSED_BACKWARD_MAX_ROWS_LOG2: u32 = 4;

impl PassSchedule {
    /// log2 of the rows per block of the fused backward kernel (one shared-memory line of `N`
    /// points per row, two when gated), or `None` where it does not apply: plans of more than one
    /// pass, rows of several overlap-save blocks, or lines that do not fit `shared_limit` bytes.
    /// Blocks get about 2K points per line (four blocks per SM at small N on Hopper; filling the
    /// shared memory with rows measured slower), at most 2^[`FUSED_BACKWARD_MAX_ROWS_LOG2`] rows.
    pub fn fused_backward_rows_log2(&self, shared_limit: usize, pad: bool) -> Option<u32> {
        if self.passes.len() != 1 || self.spec.geometry().blocks != 1 {
            return None;
        }
        let n = self.spec.geometry().n();
        let rows_log2 = (2048 / n).max(1).ilog2().min(FUSED_BACKWARD_MAX_ROWS_LOG2);
        (self.fused_backward_shared_bytes(rows_log2, pad) <= shared_limit).then_some(rows_log2)
    }

    /// [`fused_backward_rows_log2`](Self::fused_backward_rows_log2), or where its rows do not fit
    /// `shared_limit` bytes, the most rows that do (at least one): for devices with less shared
    /// memory than the rule was made for (Vulkan: 32 KiB on some drivers, which a gated block of
    /// 2K points per line would overflow).
    pub fn fused_backward_rows_log2_within(&self, shared_limit: usize, pad: bool) -> Option<u32> {
        let preferred = self.fused_backward_rows_log2(usize::MAX, pad)?;
        (0..=preferred)
            .rev()
            .find(|&r| self.fused_backward_shared_bytes(r, pad) <= shared_limit)
    }

    /// Dynamic shared memory of the fused backward with `2^rows_log2` rows per block: the
    /// lines (padded by one point in 16 when `pad`), then per possible row four u32 maxima and
    /// (CUDA) its channel and located segment, 40 bytes in all.
    pub fn fused_backward_shared_bytes(&self, rows_log2: u32, pad: bool) -> usize {
        let lines = if self.spec.gated() { 2 } else { 1 };
        let points = (lines * self.spec.geometry().n()) << rows_log2;
        let padded = if pad { points + points / 16 } else { points };
        padded * 8 + (40 << FUSED_BACKWARD_MAX_ROWS_LOG2)
    }

    /// f32 elements of the backward's per-row filter taps for one full chunk (`K` per row of
    /// every pair, also the missing partner of an odd batch: the taps sum reads them all; the
    /// CUDA backend's Monarch kernels use the first half, one row per pair).
    pub fn backward_taps_len(&self) -> usize {
        let (nb, nh) = self.chunk_shape;
        nh * 2 * self.pairs(nb) * self.spec.filter_len()
    }

    /// The fused backward's launch for one chunk with up to `2^rows_log2` rows per block, and the
    /// taps sum's after it (`2^sum_lines_log2` threads per block; it adds each channel's rows).
    pub fn fused_backward_params(
        &self,
        chunk: Chunk,
        compact: bool,
        rows_log2: u32,
        sum_lines_log2: u32,
    ) -> (PassParams, PassParams) {
        let base = self.backward_chunk_params(chunk, compact);
        let rows = 2 * chunk.nh * self.pairs(chunk.nb);
        let kernel = PassParams {
            line_log2: base.log2n,
            lines_log2: rows_log2.min(rows.next_power_of_two().ilog2()),
            total_lines: rows as u32,
            ..base
        };
        let sum = PassParams {
            total_lines: (chunk.nh * self.spec.filter_len()) as u32,
            lines_log2: sum_lines_log2,
            pairs: 2 * base.pairs,
            ..base
        };
        (kernel, sum)
    }
}

/// Batch rows and channels per chunk: at most `chunk_elems` elements (but at least one row),
/// keeping two batch rows together where possible so their segments pair up.
pub fn chunk_shape(spec: &ConvSpec, chunk_elems: usize) -> (usize, usize) {
    let rows = (chunk_elems / spec.length()).max(1);
    let (b_count, h_count) = (spec.batch(), spec.channels());
    let min_nb = if spec.geometry().blocks == 1 {
        b_count.min(2)
    } else {
        1
    };
    let nh = (rows / min_nb).clamp(1, h_count);
    let nb = if nh == h_count {
        (rows / h_count).clamp(min_nb, b_count)
    } else {
        min_nb
    };
    (nb, nh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConvMode, DType, PlanLimits};

    fn schedule(n_len: usize, shared: usize) -> PassSchedule {
        let spec = ConvSpec::builder(3, 5, n_len, n_len)
            .mode(ConvMode::Causal)
            .dtype(DType::F32)
            .build()
            .unwrap();
        let limits = PlanLimits {
            max_factor: shared,
            preferred_factor: shared,
            on_chip_bytes: shared * 8,
            bytes_per_element: 8,
        };
        let plan = MonarchPlan::cached(spec.geometry().fft_size, &limits).unwrap();
        PassSchedule::new(&spec, &plan, shared, 1 << 12).unwrap()
    }

    #[test]
    fn forward_steps_mirror_the_global_stages_around_the_fused_block() {
        let s = schedule(2048, 64); // N = 4096 = 64 x 64: one global stage
        let chunk = s.chunks().next().unwrap();
        let steps = s.forward_steps(chunk, true);
        let kinds: Vec<PassKind> = steps.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                PassKind::ColumnsForward,
                PassKind::Fused,
                PassKind::ColumnsInverse
            ]
        );
        assert_eq!(steps[0].1.flags & FLAG_SRC_INPUT, FLAG_SRC_INPUT);
        assert_eq!(steps[2].1.flags & FLAG_DST_OUTPUT, FLAG_DST_OUTPUT);
        assert_eq!(steps[1].1.flags & (FLAG_SRC_INPUT | FLAG_DST_OUTPUT), 0);
        assert_eq!(steps[1].1.stage_count, 1);
        assert_eq!(steps[1].1.stage_bits, 6);
        for (_, p) in &steps {
            assert!((1usize << (p.line_log2 + p.lines_log2)) <= 64);
        }
    }

    #[test]
    fn one_pass_is_the_whole_fft_as_one_line_per_block() {
        let s = schedule(2048, 64);
        let one = s.one_pass();
        assert_eq!(one.chunk_shape(), s.chunk_shape());
        let chunk = one.chunks().next().unwrap();
        let steps = one.forward_steps(chunk, true);
        assert_eq!(steps.len(), 1);
        let (kind, p) = steps[0];
        assert_eq!(kind, PassKind::Fused);
        assert_eq!((p.line_log2, p.lines_log2, p.stage_count), (12, 0, 0));
        let both = FLAG_SRC_INPUT | FLAG_DST_OUTPUT;
        assert_eq!(p.flags & both, both);
        // One line per pair of segments.
        assert_eq!(p.total_lines as usize, chunk.nh * s.pairs(chunk.nb));
    }

    #[test]
    fn chunks_cover_every_row_once() {
        let s = schedule(2048, 4096);
        let mut seen = vec![0u32; 3 * 5];
        for c in s.chunks() {
            for b in c.b0..c.b0 + c.nb {
                for h in c.h0..c.h0 + c.nh {
                    seen[b * 5 + h] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&x| x == 1), "{seen:?}");
        assert!(
            s.chunk_shape().0 * s.chunk_shape().1 * 2048 <= 1 << 12 || s.chunk_shape() == (2, 1)
        );
    }

    #[test]
    fn params_are_twenty_words_in_order() {
        let p = PassParams {
            log2n: 1,
            taps_len: 20,
            ..PassParams::default()
        };
        let b = p.bytes();
        assert_eq!(b.len(), 80);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(b[76..80].try_into().unwrap()), 20);
    }

    #[test]
    fn mirrored_taps_save_the_second_transform_of_dy() {
        let s = schedule(2048, 64); // N = 4096 = 64 x 64: one global stage
        let chunk = s.chunks().next().unwrap();
        let steps = s.backward_steps(chunk, true, 8);
        // Forward V, forward D, taps, adjoint (two passes each), gather: dy transformed once.
        assert!(s.mirrors_taps());
        assert_eq!(steps.len(), 9);
        let count = |b: BackwardBinding| steps.iter().filter(|(x, _, _)| *x == b).count();
        assert_eq!(count(BackwardBinding::OutputGradient), 2);
        let taps: Vec<_> = steps
            .iter()
            .filter(|(b, _, _)| *b == BackwardBinding::Taps)
            .collect();
        assert_eq!(taps.len(), 2);
        // The store (the last inverse column pass) carries the mirror; nothing else does.
        let flagged = |f: u32| steps.iter().filter(|(_, _, p)| p.flags & f == f).count();
        assert_eq!(flagged(FLAG_DST_TAPS | FLAG_TAPS_MIRRORED), 1);
        assert_eq!(flagged(FLAG_TAPS_MIRRORED), 1);
        assert_eq!(taps[1].2.flags & FLAG_TAPS_MIRRORED, FLAG_TAPS_MIRRORED);
        // A one-pass plan only reads D for the taps: nothing mirrored, dy transformed once.
        let one_pass = schedule(2048, 4096);
        let c = one_pass.chunks().next().unwrap();
        assert!(!one_pass.mirrors_taps());
        let steps = one_pass.backward_steps(c, true, 8);
        assert!(steps
            .iter()
            .all(|(_, _, p)| p.flags & FLAG_TAPS_MIRRORED == 0));
        assert_eq!(steps.len(), 5);
    }

    #[test]
    fn gated_mirrored_taps_take_the_post_gate_from_a_forward_convolution() {
        let spec = ConvSpec::builder(3, 5, 2048, 2048)
            .gated(true)
            .dtype(DType::F32)
            .build()
            .unwrap();
        let limits = PlanLimits {
            max_factor: 64,
            preferred_factor: 64,
            on_chip_bytes: 64 * 8,
            bytes_per_element: 8,
        };
        let plan = MonarchPlan::cached(spec.geometry().fft_size, &limits).unwrap();
        let s = PassSchedule::new(&spec, &plan, 64, 1 << 12).unwrap();
        assert!(s.mirrors_taps());
        let chunk = s.chunks().next().unwrap();
        let mirrored = s.backward_steps(chunk, true, 8);
        // V, D, taps, post-gate as a forward convolution, adjoint, gather: 2 + 2 + 2 + 3 + 2 + 1
        // (without the mirror: the post-gate's inverse and dy's second transform, 2 + 2).
        assert_eq!(mirrored.len(), 12);
        let post: Vec<_> = mirrored
            .iter()
            .filter(|(b, _, _)| *b == BackwardBinding::PostGate)
            .map(|(_, k, p)| (*k, p.flags))
            .collect();
        let forward = s.forward_steps(chunk, true);
        assert_eq!(post.len(), forward.len());
        for ((kind, flags), (want_kind, want)) in post.iter().zip(&forward) {
            assert_eq!(*kind, *want_kind);
            assert_eq!(*flags, want.flags | FLAG_F32_ROUNDS);
            assert_ne!(flags & FLAG_GATED, 0);
        }
    }

    #[test]
    fn fused_backward_takes_one_line_per_row_and_sums_every_row() {
        // 3 x 5 rows, L = K = 2048, N = 4096 in one pass (4096 shared points): one row per block.
        let s = schedule(2048, 4096);
        assert_eq!(s.passes().len(), 1);
        let bytes = s.fused_backward_shared_bytes(0, true);
        assert_eq!(bytes, (4096 + 256) * 8 + 640);
        assert_eq!(s.fused_backward_rows_log2(bytes, true), Some(0));
        assert_eq!(s.fused_backward_rows_log2(bytes - 1, true), None);
        // One global stage (64 x 64): the fused backward does not apply.
        assert_eq!(
            schedule(2048, 64).fused_backward_rows_log2(usize::MAX, true),
            None
        );
        let chunk = s.chunks().next().unwrap();
        let (kernel, sum) = s.fused_backward_params(chunk, true, 0, 8);
        let rows = 2 * chunk.nh * s.pairs(chunk.nb);
        assert_eq!(kernel.total_lines as usize, rows);
        assert_eq!(kernel.flags & FLAG_F32_ROUNDS, FLAG_F32_ROUNDS);
        assert_eq!(sum.pairs, 2 * kernel.pairs);
        assert_eq!(sum.total_lines as usize, chunk.nh * 2048);
        assert!(s.backward_taps_len() >= rows * 2048);
        // Small N: ~2K points per block, at most 2^4 rows.
        let small = schedule(8, 4096);
        assert_eq!(
            small.fused_backward_rows_log2(usize::MAX, true),
            Some(FUSED_BACKWARD_MAX_ROWS_LOG2)
        );
    }

    #[test]
    fn fused_backward_takes_fewer_rows_where_the_preferred_do_not_fit() {
        // N = 256: 8 rows preferred (2K points); 4 rows where only those fit.
        let s = schedule(100, 4096);
        assert_eq!(s.spec.geometry().n(), 256);
        assert_eq!(s.fused_backward_rows_log2(usize::MAX, false), Some(3));
        let four = s.fused_backward_shared_bytes(2, false);
        assert_eq!(four, 1024 * 8 + 640);
        assert_eq!(s.fused_backward_rows_log2(four, false), None);
        assert_eq!(s.fused_backward_rows_log2_within(four, false), Some(2));
        assert_eq!(
            s.fused_backward_rows_log2_within(usize::MAX, false),
            Some(3)
        );
        // Not even one row: none.
        let one = s.fused_backward_shared_bytes(0, false);
        assert_eq!(s.fused_backward_rows_log2_within(one - 1, false), None);
        // Where the fused backward does not apply at all, neither.
        assert_eq!(
            schedule(2048, 64).fused_backward_rows_log2_within(usize::MAX, true),
            None
        );
    }
}
