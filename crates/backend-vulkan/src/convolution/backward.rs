//! [`VulkanConvolution::backward`]: gradients of `y = post * conv(pre * u, k)` on the Vulkan
//! device, the exact adjoint of the forward as the problem's geometry defines it.
//!
//! Per pair of overlap-save segments (packed `a + i*b` as in the forward), with `x = pre * u`
//! gathered like the forward and `dc = dy * post` placed at the segments' outputs:
//!
//! ```text
//! V = FFT(x)  D = FFT(dc)                       (forward passes, spectra kept in tmp buffers)
//! taps = Re IFFT(D * conj(V) * mask / N)[0, K)  -> dk (see below)
//! c    = IFFT(V * K)                            -> dpostgate = dy * c        (gated only)
//! dseg = IFFT(D * conj(K))
//! dx[t] = sum of dseg over every segment position that read input t (gather pass)
//! du = pre * dx, dpregate = u * dx
//! ```
//!
//! `Re IFFT(D conj(V))` of a packed pair is the sum of its two segments' filter gradients,
//! because the cross terms are imaginary. Plans with column passes (where the inverses run in
//! place through them) mirror the taps (`PassSchedule::backward_steps`, as on CUDA): the
//! correlation is `V conj(D)` in V's buffer, tap `t` read from position `N - t`
//! (`FLAG_TAPS_MIRRORED`), so D survives for the adjoint; gated, `c` then comes from a whole
//! forward convolution with `dy` as the post-gate (V is gone by then).
//!
//! The taps (`[nh][pairs][K]` f32 per chunk) stay on the device, and so does the filter
//! gradient: a persistent `[H][K]` f32 buffer (binding `TapsSum`), zeroed by `vkCmdFillBuffer`
//! at the start of the first chunk's command buffer. After each chunk's steps the taps-sum
//! pipeline (`PASS_TAPS_SUM`, no [`PassKind`](monarch_core::schedule::PassKind) of its own) sums
//! the taps over each channel's pairs in f32 and adds the sums into rows `h0..h0 + nh` (chunks
//! are submitted one after another and waited for, so the read-modify-write needs no atomics).
//! The last chunk's command buffer copies the `H * K` floats to staging once, and they become
//! `dk`: the batch is summed in f32 on the device, as on CUDA. Where `nh * K` alone would leave
//! the device idle, a workgroup splits each output's pairs over several rows and adds the rows
//! with a shared-memory tree ([`TAPS_SUM_INVOCATIONS`]).
//!
//! **Fused backward.** Where the plan is one fused pass and every row is one overlap-save block
//! (`PassSchedule::fused_backward_rows_log2_within` with the device's shared memory: N <= 4K
//! ungated, N <= 2K gated on a 48 KiB device; N <= 2K, 1K on lavapipe's 32 KiB), one dispatch per chunk (`PASS_BACKWARD_FUSED`, CUDA's
//! `fftconv_backward_fused`) does all of the above per ROW in shared memory: `z = x + i s dc`
//! (a per-row power of two `s`), one forward FFT, `T`, `G = D conj(K)` (and `P = X K` when
//! gated) from mirrored bins, one inverse FFT of `T + i sigma G` (plus one of `P`), then taps per
//! row (`[nh][2 pairs][K]`), `du`, `dpregate`, `dpostgate`; the taps sum then adds each
//! channel's rows (`PassSchedule::fused_backward_params`: pairs doubled).
//! [`FUSED_BACKWARD_ENV`]`=0` keeps the step schedule above for comparison.

use super::{
    copy_from_bytes, copy_to_bytes, descriptor_sets, Stage, VulkanConvolution,
    VulkanFilterSpectrum, VulkanTensor,
};
use crate::context::{
    host_read_barrier, memory_barrier, Buffer, Commands, MemoryKind, VulkanContext,
};
use crate::pipelines::{
    padding_allowed, Shader, BINDINGS, BINDING_OTHER, BINDING_POST, BINDING_PRE, BINDING_TMP,
    BINDING_U, BINDING_Y, FUSED_BACKWARD_ENV,
};
use crate::VulkanError;
use ash::vk;
use monarch_core::schedule::{BackwardBinding, Chunk, PassParams};
use monarch_core::{DType, Element};
use std::sync::Arc;

/// Output buffers of one backward call; every one is overwritten.
///
/// `du`, `dpregate`, `dpostgate` are `[B, H, L]` of the problem's dtype; `dk` is `[H, K]` in f32
/// (summed over the batch in f32 on the device). The gate gradients are given exactly when the
/// problem is gated.
#[derive(Debug)]
pub struct VulkanGradients<'a, T> {
    pub du: &'a mut [T],
    pub dk: &'a mut [f32],
    pub dpregate: Option<&'a mut [T]>,
    pub dpostgate: Option<&'a mut [T]>,
}

/// Descriptor sets of the backward: one per [`BackwardBinding`] (indexed `as usize`). `V` is
/// kept in `tmp_v`, `D` in `tmp_d`.
const SETS: usize = BackwardBinding::COUNT;

/// Invocations the taps sum aims for: while `nh * K` is fewer, each output's pairs are split
/// over more rows of a workgroup (up to its size, and no more rows than pairs), so short filters
/// with many pairs per channel still spread over the device.
const TAPS_SUM_INVOCATIONS: usize = 1 << 17;

/// The fused backward's launch shape on this device.
#[derive(Debug, Clone, Copy)]
struct FusedBackwardShape {
    /// log2 of the rows per workgroup at most.
    rows_log2: u32,
    /// Complex points of shared memory (the lines of `2^rows_log2` rows).
    shared_points: u32,
    /// Shared memory padded by one point in 16.
    pad: bool,
}

/// Spectra, taps and descriptor sets of the backward, made on first use.
pub(super) struct BackwardExecution {
    ctx: Arc<VulkanContext>,
    pool: vk::DescriptorPool,
    sets: [vk::DescriptorSet; SETS],
    commands: Commands,
    tmp_v: Buffer,
    tmp_d: Buffer,
    /// Per pair: `[nh][pairs][K]` f32; per row with the fused backward: `[nh][2 pairs][K]`
    /// (`PassSchedule::backward_taps_len`, the larger).
    taps: Buffer,
    /// The filter gradient `[H][K]` f32: each chunk adds its taps, summed over each channel's
    /// pairs, into its rows; zeroed at the start of every call.
    taps_sum: Buffer,
    /// Receives `taps_sum` once, after the last chunk.
    taps_sum_staging: Buffer,
    /// Buffers for host slices, made on the first host call.
    host: Option<BackwardHostIo>,
}

/// One chunk's streams on the device and the staging between them and the host.
struct BackwardHostIo {
    /// `u, dy, pre, post` (gates only when gated).
    inputs: Vec<Buffer>,
    /// `du, dpregate, dpostgate` (gate gradients only when gated).
    outputs: Vec<Buffer>,
    /// Uploads the inputs, one stream after another.
    upload: Buffer,
    /// Receives the outputs, one stream after another.
    download: Buffer,
    stream_bytes: usize,
}

/// Where the backward reads `u`, `dy` and the gates and writes the gradients.
/// Where the filter gradient goes after the last chunk.
enum FilterGradientOut<'a> {
    /// Through the execution's staging buffer to a host slice.
    Host(&'a mut [f32]),
    /// Copied on the device into an f32 tensor of `[H, K]`.
    Device(&'a VulkanTensor),
}

#[derive(Clone, Copy)]
enum BackwardIo<'a> {
    /// The execution's chunk buffers, filled from and read back to host slices.
    Host,
    /// Device-resident tensors of the whole problem.
    Device(&'a VulkanTensorGradients<'a>),
}

/// Device-resident inputs and gradients of [`VulkanConvolution::backward_device`].
#[derive(Debug)]
pub struct VulkanTensorGradients<'a> {
    pub u: &'a VulkanTensor,
    /// `(pregate, postgate)`, exactly when the problem is gated.
    pub gates: Option<(&'a VulkanTensor, &'a VulkanTensor)>,
    pub dy: &'a VulkanTensor,
    pub du: &'a mut VulkanTensor,
    /// `(dpregate, dpostgate)`, exactly when the problem is gated.
    pub gate_grads: Option<(&'a mut VulkanTensor, &'a mut VulkanTensor)>,
}

impl Drop for BackwardExecution {
    fn drop(&mut self) {
        if self.ctx.is_lost() {
            return;
        }
        // SAFETY: no submission using the sets is pending (every one is waited for).
        unsafe { self.ctx.device.destroy_descriptor_pool(self.pool, None) };
    }
}

impl BackwardExecution {
    fn new(conv: &VulkanConvolution) -> Result<BackwardExecution, VulkanError> {
        let ctx = &conv.ctx;
        // Per row (the fused backward's; twice the step schedule's per pair).
        let taps_bytes = conv.schedule.backward_taps_len() * 4;
        let device = |bytes: usize| Buffer::new(ctx, bytes as u64, MemoryKind::Device);
        let tmp_v = device(conv.schedule.spectra_bytes())?;
        let tmp_d = device(conv.schedule.spectra_bytes())?;
        let taps = device(taps_bytes)?;
        // The whole problem's filter gradient, bound whole (and indexed in 32 bits, which the
        // range implies: at most 2^32 - 1 bytes).
        let sum_bytes = conv.spec.filter_elems() * 4;
        let limit = ctx.capabilities().max_storage_buffer_range as usize;
        if sum_bytes > limit {
            return Err(VulkanError::unsupported(format!(
                "the filter gradient needs {sum_bytes} bytes; maxStorageBufferRange = {limit}"
            )));
        }
        let taps_sum = device(sum_bytes)?;
        let taps_sum_staging = Buffer::new(ctx, sum_bytes as u64, MemoryKind::Staging)?;
        let commands = Commands::new(ctx)?;
        let (pool, sets) = descriptor_sets(ctx, conv.pipelines.set_layout, SETS as u32)?;
        let exec = BackwardExecution {
            ctx: Arc::clone(ctx),
            pool,
            sets: [sets[0], sets[1], sets[2], sets[3], sets[4], sets[5]],
            commands,
            tmp_v,
            tmp_d,
            taps,
            taps_sum,
            taps_sum_staging,
            host: None,
        };
        Ok(exec)
    }

    fn host_io(conv: &VulkanConvolution) -> Result<BackwardHostIo, VulkanError> {
        let ctx = &conv.ctx;
        let stream_bytes = conv.schedule.stream_bytes();
        let (n_in, n_out) = if conv.spec.gated() { (4, 3) } else { (2, 1) };
        let device = |_| Buffer::new(ctx, stream_bytes as u64, MemoryKind::Device);
        Ok(BackwardHostIo {
            inputs: (0..n_in).map(device).collect::<Result<Vec<_>, _>>()?,
            outputs: (0..n_out).map(device).collect::<Result<Vec<_>, _>>()?,
            upload: Buffer::new(ctx, (n_in * stream_bytes) as u64, MemoryKind::Staging)?,
            download: Buffer::new(ctx, (n_out * stream_bytes) as u64, MemoryKind::Staging)?,
            stream_bytes,
        })
    }

    /// Writes every binding of every set for `io` (unused ones get a valid buffer) and the
    /// filter's spectrum. `mirrored_taps`: the taps' steps compute `V conj(D)` in `V`'s buffer
    /// (`PassSchedule::mirrors_taps`), so their set binds `V`'s buffer as the spectrum.
    fn bind_sets(
        &self,
        io: BackwardIo<'_>,
        twiddles: &Buffer,
        spectrum: &Buffer,
        mirrored_taps: bool,
    ) {
        let (u, dy, pre, post, du, dpre, dpost) = match io {
            BackwardIo::Host => {
                let host = self.host.as_ref().expect("made for host calls");
                let u = &host.inputs[0];
                let du = &host.outputs[0];
                (
                    u,
                    &host.inputs[1],
                    host.inputs.get(2).unwrap_or(u),
                    host.inputs.get(3).unwrap_or(u),
                    du,
                    host.outputs.get(1).unwrap_or(du),
                    host.outputs.get(2).unwrap_or(du),
                )
            }
            BackwardIo::Device(t) => (
                &t.u.buffer,
                &t.dy.buffer,
                t.gates.map_or(&t.u.buffer, |g| &g.0.buffer),
                t.gates.map_or(&t.u.buffer, |g| &g.1.buffer),
                &t.du.buffer,
                t.gate_grads.as_ref().map_or(&t.du.buffer, |g| &g.0.buffer),
                t.gate_grads.as_ref().map_or(&t.du.buffer, |g| &g.1.buffer),
            ),
        };
        for (i, &set) in self.sets.iter().enumerate() {
            let mut b: [&Buffer; BINDINGS as usize] = [
                u,
                pre,
                post,
                du,
                spectrum,
                twiddles,
                &self.tmp_v,
                &self.tmp_v,
                &self.taps,
                dpre,
                &self.taps_sum,
                dy,
                dpost,
            ];
            let kind = [
                BackwardBinding::Input,
                BackwardBinding::OutputGradient,
                BackwardBinding::Taps,
                BackwardBinding::PostGate,
                BackwardBinding::Adjoint,
                BackwardBinding::Gather,
            ][i];
            debug_assert_eq!(kind as usize, i);
            match kind {
                BackwardBinding::Input => {}
                BackwardBinding::OutputGradient => {
                    b[BINDING_U as usize] = dy;
                    b[BINDING_PRE as usize] = post;
                    b[BINDING_TMP as usize] = &self.tmp_d;
                }
                BackwardBinding::Taps if mirrored_taps => {
                    b[BINDING_TMP as usize] = &self.tmp_v;
                    b[BINDING_OTHER as usize] = &self.tmp_d;
                }
                BackwardBinding::Taps => {
                    b[BINDING_TMP as usize] = &self.tmp_d;
                    b[BINDING_OTHER as usize] = &self.tmp_v;
                }
                BackwardBinding::PostGate => {
                    b[BINDING_Y as usize] = dpost;
                    b[BINDING_POST as usize] = dy;
                }
                BackwardBinding::Adjoint | BackwardBinding::Gather => {
                    b[BINDING_TMP as usize] = &self.tmp_d
                }
            }
            for (binding, buffer) in b.iter().enumerate() {
                write_binding(&self.ctx, set, binding as u32, buffer);
            }
        }
    }
}

fn write_binding(ctx: &VulkanContext, set: vk::DescriptorSet, binding: u32, buffer: &Buffer) {
    let infos = [buffer.descriptor()];
    let write = [vk::WriteDescriptorSet::default()
        .dst_set(set)
        .dst_binding(binding)
        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
        .buffer_info(&infos)];
    // SAFETY: the set is not in use by pending work (every submission is waited for).
    unsafe { ctx.device.update_descriptor_sets(&write, &[]) };
}

impl VulkanConvolution {
    /// Gradients of [`forward`](Self::forward) given `dy` (see [`VulkanGradients`]): the exact
    /// adjoint of the forward (causal or circular, blocked, frequency-sparse). Every argument is
    /// checked before anything is written.
    pub fn backward<T: Element>(
        &self,
        filter: &VulkanFilterSpectrum,
        u: &[T],
        gates: Option<(&[T], &[T])>,
        dy: &[T],
        grads: VulkanGradients<'_, T>,
    ) -> Result<(), VulkanError> {
        let want = self.spec.io_len();
        // dtype, u, gates and filter as the forward checks them (no `y` here), then the rest.
        self.check_inputs(
            filter,
            T::DTYPE,
            u.len(),
            gates.map(|(p, q)| (p.len(), q.len())),
            want,
        )?;
        for (arg, len) in [("dy", dy.len()), ("du", grads.du.len())] {
            if len != want {
                return Err(VulkanError::invalid(
                    arg,
                    format!("expected [B, H, L] = {want} elements, got {len}"),
                ));
            }
        }
        self.spec
            .check_gradients(
                grads.dk.len(),
                [
                    grads.dpregate.as_ref().map(|g| g.len()),
                    grads.dpostgate.as_ref().map(|g| g.len()),
                ],
            )
            .map_err(super::core_invalid)?;
        let VulkanGradients {
            du,
            dk,
            mut dpregate,
            mut dpostgate,
        } = grads;
        let dk = FilterGradientOut::Host(dk);
        self.run_backward(filter, BackwardIo::Host, dk, |conv, host, chunk, stage| {
            let stream_bytes = host.stream_bytes;
            if stage == Stage::Upload {
                // Host -> staging: u, dy, pre, post.
                let mut streams: Vec<&[T]> = vec![u, dy];
                if let Some((pre, post)) = gates {
                    streams.push(pre);
                    streams.push(post);
                }
                let staging = host.upload.bytes_mut();
                for (i, src) in streams.iter().enumerate() {
                    let region = &mut staging[i * stream_bytes..(i + 1) * stream_bytes];
                    for (dst_rows, src_rows) in conv.schedule.chunk_rows(chunk) {
                        copy_to_bytes(
                            &src[src_rows],
                            &mut region[dst_rows.start * size_of::<T>()..],
                        );
                    }
                }
            } else {
                // Staging -> host: du, dpregate, dpostgate.
                let staging = host.download.bytes_mut();
                let mut outs: Vec<&mut [T]> = vec![&mut *du];
                if let (Some(p), Some(q)) = (dpregate.as_deref_mut(), dpostgate.as_deref_mut()) {
                    outs.push(p);
                    outs.push(q);
                }
                for (i, out) in outs.into_iter().enumerate() {
                    let region = &staging[i * stream_bytes..(i + 1) * stream_bytes];
                    for (src_rows, dst_rows) in conv.schedule.chunk_rows(chunk) {
                        copy_from_bytes(
                            &region[src_rows.start * size_of::<T>()..],
                            &mut out[dst_rows],
                        );
                    }
                }
            }
        })
    }

    /// Like [`backward`](Self::backward) on device-resident tensors: `du`, (gated) the gate
    /// gradients and `dk` (an f32 tensor of `[H, K]`) are overwritten in device memory.
    pub fn backward_device(
        &self,
        filter: &VulkanFilterSpectrum,
        tensors: VulkanTensorGradients<'_>,
        dk: &mut VulkanTensor,
    ) -> Result<(), VulkanError> {
        if dk.dtype != DType::F32 {
            return Err(VulkanError::invalid(
                "dk",
                format!("expected an f32 tensor, got {}", dk.dtype),
            ));
        }
        let want = self.spec.io_len();
        let gated = self.spec.gated();
        self.check_inputs(
            filter,
            tensors.u.dtype,
            tensors.u.len,
            tensors.gates.map(|(p, q)| (p.len, q.len)),
            want,
        )?;
        let mut named = vec![("dy", tensors.dy), ("du", &*tensors.du)];
        match (gated, &tensors.gate_grads) {
            (true, Some((p, q))) => named.extend([("dpregate", &**p), ("dpostgate", &**q)]),
            (true, None) => return Err(VulkanError::invalid("dpregate", "the problem is gated")),
            (false, Some(_)) => {
                return Err(VulkanError::invalid("dpregate", "the problem is not gated"))
            }
            (false, None) => {}
        }
        if let Some((p, q)) = tensors.gates {
            named.extend([("pregate", p), ("postgate", q)]);
        }
        named.push(("u", tensors.u));
        let limit = u64::from(self.ctx.capabilities().max_storage_buffer_range);
        for (arg, t) in named {
            if t.dtype != self.spec.dtype() || t.len != want {
                return Err(VulkanError::invalid(
                    arg,
                    format!(
                        "expected {want} {} elements, got {} {}",
                        self.spec.dtype(),
                        t.len,
                        t.dtype
                    ),
                ));
            }
            if want >= 1 << 32 || t.buffer.size > limit {
                return Err(VulkanError::unsupported(format!(
                    "device tensors of {} bytes exceed maxStorageBufferRange = {limit}",
                    t.buffer.size
                )));
            }
        }
        self.spec
            .check_gradients(
                dk.len,
                [
                    tensors.gate_grads.as_ref().map(|g| g.0.len),
                    tensors.gate_grads.as_ref().map(|g| g.1.len),
                ],
            )
            .map_err(super::core_invalid)?;
        let io = BackwardIo::Device(&tensors);
        self.run_backward(filter, io, FilterGradientOut::Device(dk), |_, _, _, _| {})
    }

    /// Runs every chunk; `host` moves a chunk's host data in before and out after (host I/O
    /// only). The chunks accumulate the filter gradient on the device; it is read back once,
    /// after the last, into `dk` (`[H, K]`), which is written only when every chunk succeeded.
    fn run_backward(
        &self,
        filter: &VulkanFilterSpectrum,
        io: BackwardIo<'_>,
        dk: FilterGradientOut<'_>,
        mut host: impl FnMut(&Self, &mut BackwardHostIo, Chunk, Stage),
    ) -> Result<(), VulkanError> {
        let mut guard = self.backward_exec.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(BackwardExecution::new(self)?);
        }
        let exec = guard.as_mut().expect("just made");
        let host_io = matches!(io, BackwardIo::Host);
        if host_io && exec.host.is_none() {
            exec.host = Some(BackwardExecution::host_io(self)?);
        }
        exec.bind_sets(
            io,
            &self.twiddles,
            &filter.buffer,
            self.schedule.mirrors_taps(),
        );
        let result = (|| {
            let chunks: Vec<Chunk> = self.schedule.chunks().collect();
            if !host_io {
                // Device tensors hold every chunk at once: one submission for all of them.
                let dk_to = match &dk {
                    FilterGradientOut::Device(t) => Some(&t.buffer),
                    FilterGradientOut::Host(_) => None,
                };
                self.record_backward(exec, &chunks, io, true, true, dk_to)?;
                exec.commands.run()?;
                if let FilterGradientOut::Host(dk) = dk {
                    copy_from_bytes(exec.taps_sum_staging.bytes_mut(), dk);
                }
                return Ok(());
            }
            for (i, &chunk) in chunks.iter().enumerate() {
                let (first, last) = (i == 0, i + 1 == chunks.len());
                if host_io {
                    host(
                        self,
                        exec.host.as_mut().expect("made"),
                        chunk,
                        Stage::Upload,
                    );
                }
                let dk_to = match (&dk, last) {
                    (FilterGradientOut::Device(t), true) => Some(&t.buffer),
                    _ => None,
                };
                self.record_backward(exec, &[chunk], io, first, last, dk_to)?;
                exec.commands.run()?;
                if host_io {
                    host(
                        self,
                        exec.host.as_mut().expect("made"),
                        chunk,
                        Stage::Download,
                    );
                }
            }
            // The filter gradient of every chunk (a spec has at least one), copied to staging
            // (or to the device tensor) by the last one.
            if let FilterGradientOut::Host(dk) = dk {
                copy_from_bytes(exec.taps_sum_staging.bytes_mut(), dk);
            }
            Ok(())
        })();
        if let Err(VulkanError::Timeout { .. }) = &result {
            std::mem::forget(guard.take());
        }
        result
    }

    /// Records `chunks` into one submission. `first`: zero the filter gradient before anything
    /// else; `last`: copy it after the last chunk's taps sum to `dk_to` (a device tensor's
    /// buffer) or else to staging.
    fn record_backward(
        &self,
        exec: &BackwardExecution,
        chunks: &[Chunk],
        io: BackwardIo<'_>,
        first: bool,
        last: bool,
        dk_to: Option<&Buffer>,
    ) -> Result<(), VulkanError> {
        let plans = chunks
            .iter()
            .map(|&chunk| self.backward_chunk_plan(chunk, io))
            .collect::<Result<Vec<_>, _>>()?;
        let host = match io {
            BackwardIo::Host => exec.host.as_ref(),
            BackwardIo::Device(_) => None,
        };
        exec.commands.record(|device, cmd| {
            // SAFETY: `cmd` is recording; every buffer, pipeline and set is alive and sized for
            // these chunks; barriers separate the copies and every pass.
            unsafe {
                for (i, plan) in plans.iter().enumerate() {
                    let bytes = plan.bytes;
                    if let Some(host) = host {
                        for (i, dst) in host.inputs.iter().enumerate() {
                            let region = [vk::BufferCopy::default()
                                .src_offset((i * host.stream_bytes) as u64)
                                .size(bytes)];
                            device.cmd_copy_buffer(cmd, host.upload.buffer, dst.buffer, &region);
                        }
                    }
                    if first && i == 0 {
                        // Every earlier use of it (the previous call's readback included)
                        // finished before its submission's fence, which was waited for.
                        let sum = exec.taps_sum.buffer;
                        device.cmd_fill_buffer(cmd, sum, 0, vk::WHOLE_SIZE, 0);
                    }
                    // (Also orders the previous chunk's taps sum before this one's.)
                    memory_barrier(device, cmd);
                    for ((set, pipeline, params), groups) in plan.steps.iter().zip(&plan.dispatches)
                    {
                        device.cmd_bind_descriptor_sets(
                            cmd,
                            vk::PipelineBindPoint::COMPUTE,
                            self.pipelines.layout,
                            0,
                            &[exec.sets[*set as usize]],
                            &[],
                        );
                        self.record_pass(device, cmd, *pipeline, params, *groups);
                    }
                    // Taps -> taps_sum, rows h0.. (every set binds both; the taps set for
                    // clarity).
                    device.cmd_bind_descriptor_sets(
                        cmd,
                        vk::PipelineBindPoint::COMPUTE,
                        self.pipelines.layout,
                        0,
                        &[exec.sets[BackwardBinding::Taps as usize]],
                        &[],
                    );
                    self.record_pass(
                        device,
                        cmd,
                        plan.sum_pipeline,
                        &plan.sum_params,
                        plan.sum_groups,
                    );
                    if let Some(host) = host {
                        for (i, src) in host.outputs.iter().enumerate() {
                            let region = [vk::BufferCopy::default()
                                .dst_offset((i * host.stream_bytes) as u64)
                                .size(bytes)];
                            device.cmd_copy_buffer(cmd, src.buffer, host.download.buffer, &region);
                        }
                    }
                }
                if last {
                    // (The taps sum's pass ended with a barrier.)
                    let (dst, size) = match dk_to {
                        Some(t) => (t.buffer, t.size.min(exec.taps_sum.size)),
                        None => (exec.taps_sum_staging.buffer, exec.taps_sum.size),
                    };
                    let region = [vk::BufferCopy::default().size(size)];
                    device.cmd_copy_buffer(cmd, exec.taps_sum.buffer, dst, &region);
                }
            }
            host_read_barrier(device, cmd);
        })
    }

    /// One chunk's backward: its passes (set, pipeline, push constants) and grids, the taps
    /// sum's parameters and grid, and its bytes per stream.
    fn backward_chunk_plan(
        &self,
        chunk: Chunk,
        io: BackwardIo<'_>,
    ) -> Result<BackwardChunkPlan, VulkanError> {
        let compact = matches!(io, BackwardIo::Host);
        // (descriptor set, pipeline, push constants) per step, and the taps sum's parameters.
        let (steps, sum_params) = if let Some(shape) = self.fused_backward_shape() {
            // One dispatch: every row's taps, du and the gate gradients; the taps sum then adds
            // each channel's rows (pairs doubled).
            let pipeline = self.pipelines.pipeline(Shader::BackwardFused {
                shared_points: shape.shared_points,
                pad: shape.pad,
            })?;
            let (params, sum) =
                self.schedule
                    .fused_backward_params(chunk, compact, shape.rows_log2, 0);
            let steps = vec![(BackwardBinding::Input, pipeline, params)];
            (steps, self.taps_sum_params(chunk, sum))
        } else {
            // The gather runs one element per invocation.
            let steps = self
                .schedule
                .backward_steps(chunk, compact, self.pipelines.workgroup.ilog2())
                .into_iter()
                .map(|(set, kind, params)| {
                    Ok((set, self.pipelines.pipeline(Shader::Pass(kind))?, params))
                })
                .collect::<Result<Vec<_>, VulkanError>>()?;
            let base = self.schedule.chunk_params(chunk, true);
            (steps, self.taps_sum_params(chunk, base))
        };
        let dispatches = steps
            .iter()
            .map(|(_, _, p)| self.workgroups(p))
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = self.chunk_bytes(chunk);
        let sum_groups = self.workgroups(&sum_params)?;
        Ok(BackwardChunkPlan {
            steps,
            dispatches,
            sum_pipeline: self.pipelines.pipeline(Shader::TapsSum)?,
            sum_params,
            sum_groups,
            bytes,
        })
    }

    /// The fused backward's shape for this problem on this device, or `None` where it does not
    /// apply (several passes or blocks, lines that do not fit the shared memory) or
    /// [`FUSED_BACKWARD_ENV`] is `0`. Padded against bank conflicts where that fits too.
    fn fused_backward_shape(&self) -> Option<FusedBackwardShape> {
        if std::env::var(FUSED_BACKWARD_ENV).is_ok_and(|v| v.trim() == "0") {
            return None;
        }
        // The shader declares the lines and the row maxima only: all of what
        // `fused_backward_shared_bytes` counts.
        let limit = self.ctx.capabilities().shared_memory_bytes as usize;
        let pads: &[bool] = if padding_allowed() {
            &[true, false]
        } else {
            &[false]
        };
        pads.iter().find_map(|&pad| {
            let rows_log2 = self.schedule.fused_backward_rows_log2_within(limit, pad)?;
            let lines = if self.spec.gated() { 2 } else { 1 };
            let points = (lines * self.spec.geometry().n()) << rows_log2;
            Some(FusedBackwardShape {
                rows_log2,
                shared_points: u32::try_from(points).ok()?,
                pad,
            })
        })
    }

    /// Push constants of the taps sum of `chunk` from `base` (whose `pairs` are the rows each
    /// output adds per channel: pairs, or twice them for the fused backward's rows): `nh * K`
    /// outputs, `2^lines_log2` per workgroup, so each output's rows are split over
    /// `workgroup / 2^lines_log2` invocation rows (see [`TAPS_SUM_INVOCATIONS`]).
    fn taps_sum_params(&self, chunk: Chunk, base: PassParams) -> PassParams {
        let outputs = chunk.nh * self.spec.filter_len();
        let workgroup_log2 = self.pipelines.workgroup.ilog2();
        let rows_log2 = (TAPS_SUM_INVOCATIONS / outputs.max(1))
            .max(1)
            .ilog2()
            .min((base.pairs as usize).next_power_of_two().ilog2())
            .min(workgroup_log2);
        PassParams {
            flags: 0,
            total_lines: outputs as u32,
            lines_log2: workgroup_log2 - rows_log2,
            ..base
        }
    }
}

/// One chunk's recorded backward (see `backward_chunk_plan`).
struct BackwardChunkPlan {
    steps: Vec<(BackwardBinding, vk::Pipeline, PassParams)>,
    dispatches: Vec<(u32, u32)>,
    sum_pipeline: vk::Pipeline,
    sum_params: PassParams,
    sum_groups: (u32, u32),
    bytes: u64,
}
