//! [`VulkanConvolution`] (a problem prepared on the Vulkan device: pass schedule, twiddles,
//! buffers) and [`VulkanFilterSpectrum`] (a filter's spectrum in device memory).

use std::sync::{Arc, Mutex};

use ash::vk;
use monarch_core::schedule::{
    Chunk, PassKind, PassParams, PassSchedule, DEFAULT_CHUNK_ELEMS, FLAG_DST_OUTPUT, FLAG_GATED,
    FLAG_SRC_INPUT, FLAG_WRAPS,
};
use monarch_core::twiddle::root_of_unity;
use monarch_core::{ConvGeometry, ConvSpec, DType, Element, MonarchPlan, PlanLimits};

use crate::context::{
    context, download, host_read_barrier, memory_barrier, upload, zeroed, Buffer, Commands,
    MemoryKind, VulkanContext,
};
use crate::error::check;
use crate::pipelines::{exchange_rounds_from_env, half_spectra_from_env, register_fft_from_env};
use crate::pipelines::{
    Pipelines, Shader, BINDINGS, BINDING_DY, BINDING_OTHER, BINDING_POST, BINDING_PRE,
    BINDING_SPECTRUM, BINDING_TAPS, BINDING_TAPS_SUM, BINDING_TMP, BINDING_TWIDDLES, BINDING_U,
    BINDING_Y, BINDING_Y2, BINDING_Y3,
};
use crate::VulkanError;

mod backward;

pub use backward::{VulkanGradients, VulkanTensorGradients};

/// A filter `k: [H, K]` transformed for one [`VulkanConvolution`]: per channel the Hermitian half
/// spectrum of the zero-padded filter (natural order, scaled by `1/N`), kept bins only, as
/// complex f32 in device memory.
#[derive(Clone)]
pub struct VulkanFilterSpectrum {
    geometry: ConvGeometry,
    channels: usize,
    filter_len: usize,
    buffer: Arc<Buffer>,
}

impl std::fmt::Debug for VulkanFilterSpectrum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanFilterSpectrum")
            .field("geometry", &self.geometry)
            .field("channels", &self.channels)
            .field("bytes", &self.buffer.size)
            .finish()
    }
}

impl VulkanFilterSpectrum {
    /// Bytes of device memory the spectrum holds.
    pub fn size_bytes(&self) -> usize {
        self.buffer.size as usize
    }
}

/// Tuning knobs of a [`VulkanConvolution`] (the defaults are what the device allows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VulkanOptions {
    /// Use at most this many complex points of shared memory per workgroup (rounded down to a
    /// power of two). Smaller values give plans with more global-memory passes for the same
    /// FFT size: tests use them to check multi-pass plans on small problems.
    pub max_shared_points: Option<u32>,
    /// Elements of `u` per chunk (rounded up to whole rows); `None`: 2^24. Smaller chunks
    /// bound device memory; tests use them to check chunking.
    pub chunk_elems: Option<usize>,
    /// Whether the FFTs run as register-radix passes (the forward's fused block and the column
    /// passes; `Some(false)`: radix-2 rounds in shared memory); `None`: yes unless
    /// [`REGISTER_FFT_ENV`](crate::REGISTER_FFT_ENV) is `0`. Tests compare both.
    pub register_fft: Option<bool>,
    /// The most shared-memory rounds per exchange of the register-radix forward where it holds
    /// one line longer than the shared memory per workgroup (the whole FFT of N points, up to
    /// 16 x the device's workgroup limit: 16K points on 4096 shared points and 1024 invocations,
    /// where the plan would run column passes through device memory). `None`:
    /// [`EXCHANGE_ROUNDS_ENV`](crate::EXCHANGE_ROUNDS_ENV) or 4; `Some(1)`: every line fits
    /// the shared memory.
    pub max_exchange_rounds: Option<u32>,
    /// Whether the forward keeps its intermediate spectra in f16 (scaled per tile by a power of
    /// two from the tile's maximum, so no range of data overflows them): half the
    /// intermediates' bytes through device memory. Only for 16-bit I/O on plans of one global
    /// stage whose fused block runs the register-radix pass (see
    /// [`VulkanConvolution::half_spectra`]); `None`: yes unless
    /// [`HALF_SPECTRA_ENV`](crate::HALF_SPECTRA_ENV) is `0`. The error is then relative to the
    /// input's spectral energy (as on CUDA's f16 passes): where the filter removes most of it
    /// (`|y| << |u|`), f32 spectra are about `|u| / |y|` times more precise.
    pub half_spectra: Option<bool>,
}

/// A convolution problem prepared on the Vulkan device. `Send + Sync`; calls on one instance are
/// serialised (they share its device buffers).
pub struct VulkanConvolution {
    ctx: Arc<VulkanContext>,
    spec: ConvSpec,
    pipelines: Arc<Pipelines>,
    plan: Arc<MonarchPlan>,
    /// The plan's passes as the shaders run them, and the chunks of rows (a chunk is a set of
    /// batch rows and channels whose inputs, gates, outputs and intermediate spectra are on the
    /// device at once).
    schedule: PassSchedule,
    twiddles: Buffer,
    /// log2 of the lines per workgroup of the register-radix pass, where it runs this problem's
    /// fused block (its lines fit the pass; [`REGISTER_FFT_ENV`](crate::REGISTER_FFT_ENV) not
    /// `0`).
    register_lines_log2: Option<u32>,
    /// The forward as one pass of [`Shader::RegisterFusedLong`] (its schedule: the whole FFT as
    /// one line per workgroup), where the plan has column passes but that pass holds the FFT
    /// ([`VulkanOptions::max_exchange_rounds`]). The backward keeps `schedule`.
    long_forward: Option<PassSchedule>,
    /// Whether the forward's intermediate spectra are f16 ([`VulkanOptions::half_spectra`]).
    half_spectra: bool,
    exec: Mutex<Option<Execution>>,
    backward_exec: Mutex<Option<backward::BackwardExecution>>,
}

impl std::fmt::Debug for VulkanConvolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanConvolution")
            .field("spec", &self.spec)
            .field("factors", &self.plan.factors())
            .finish_non_exhaustive()
    }
}

/// Descriptor set, command buffer and intermediate buffer of one convolution, made on first use.
struct Execution {
    ctx: Arc<VulkanContext>,
    pool: vk::DescriptorPool,
    set: vk::DescriptorSet,
    commands: Commands,
    tmp: Buffer,
    /// Buffers for host slices, made on the first host call.
    host: Option<HostIo>,
}

/// Device buffers of one chunk's streams and the staging buffer between them and the host.
struct HostIo {
    u: Buffer,
    pre: Option<Buffer>,
    post: Option<Buffer>,
    y: Buffer,
    /// Uploads `[u | pre | post]`, then receives `y` in the first region.
    staging: Buffer,
    /// Bytes of one stream of one full chunk.
    stream_bytes: usize,
}

/// Where the passes read `u` and the gates and write `y`.
#[derive(Clone, Copy)]
enum Io<'a> {
    /// The execution's own chunk buffers, filled from and read back to the host.
    Host,
    /// Device-resident tensors of the whole problem.
    Device {
        u: &'a VulkanTensor,
        gates: Option<(&'a VulkanTensor, &'a VulkanTensor)>,
        y: &'a VulkanTensor,
    },
}

/// A `[B, H, L]` tensor of one dtype in device memory, for calls without host copies
/// ([`VulkanConvolution::forward_device`]).
pub struct VulkanTensor {
    buffer: Buffer,
    dtype: DType,
    len: usize,
}

impl std::fmt::Debug for VulkanTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanTensor")
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .finish()
    }
}

impl VulkanTensor {
    /// A zeroed tensor of `len` elements of `dtype` in device memory.
    pub fn zeros(dtype: DType, len: usize) -> Result<VulkanTensor, VulkanError> {
        let bytes = len
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| VulkanError::invalid("len", "tensor size overflows"))?;
        Ok(VulkanTensor {
            buffer: zeroed(&context()?, bytes as u64)?,
            dtype,
            len,
        })
    }

    /// Copies `data` to a new device tensor.
    pub fn from_host<T: Element>(data: &[T]) -> Result<VulkanTensor, VulkanError> {
        let mut bytes = vec![0u8; std::mem::size_of_val(data)];
        copy_to_bytes(data, &mut bytes);
        Ok(VulkanTensor {
            buffer: upload(&context()?, &bytes)?,
            dtype: T::DTYPE,
            len: data.len(),
        })
    }

    /// Copies the tensor into `out` (same dtype and length).
    pub fn to_host<T: Element>(&self, out: &mut [T]) -> Result<(), VulkanError> {
        if T::DTYPE != self.dtype || out.len() != self.len {
            return Err(VulkanError::invalid(
                "out",
                format!(
                    "the tensor holds {} {} elements; got {} {}",
                    self.len,
                    self.dtype,
                    out.len(),
                    T::DTYPE
                ),
            ));
        }
        let bytes = download(&context()?, &self.buffer, std::mem::size_of_val(out))?;
        copy_from_bytes(&bytes, out);
        Ok(())
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        if self.ctx.is_lost() {
            return;
        }
        // SAFETY: no submission using the set is pending (waited for, or the execution leaked).
        unsafe { self.ctx.device.destroy_descriptor_pool(self.pool, None) };
    }
}

impl VulkanConvolution {
    /// Prepares `spec` on the process's Vulkan device: the plan for this device's shared memory,
    /// the pipelines for the dtype, and the twiddle table.
    pub fn new(spec: &ConvSpec) -> Result<VulkanConvolution, VulkanError> {
        Self::with_options(spec, VulkanOptions::default())
    }

    /// Like [`new`](Self::new) with [`VulkanOptions`].
    pub fn with_options(
        spec: &ConvSpec,
        options: VulkanOptions,
    ) -> Result<VulkanConvolution, VulkanError> {
        let ctx = context()?;
        ctx.check_alive()?;
        let pipelines = Pipelines::get(
            &ctx,
            spec.dtype(),
            options.max_shared_points,
            options.register_fft,
        )?;
        let geometry = spec.geometry();
        let n = geometry.n();
        let shared_points = pipelines.shared_points as usize;
        // The portable path runs radix-2 FFTs of whole lines in shared memory, so a stage may be
        // as large as the shared memory holds.
        let limits = PlanLimits {
            max_factor: shared_points,
            preferred_factor: shared_points,
            on_chip_bytes: shared_points * 8,
            bytes_per_element: 8,
        };
        let plan = MonarchPlan::cached(geometry.fft_size, &limits)?;
        let chunk_elems = options.chunk_elems.unwrap_or(DEFAULT_CHUNK_ELEMS);
        let schedule =
            PassSchedule::new(spec, &plan, shared_points, chunk_elems).map_err(|_| {
                VulkanError::unsupported(format!(
                    "no Vulkan plan for N = {n} with {shared_points} shared points"
                ))
            })?;

        let table: Vec<u8> = (0..n as u64)
            .flat_map(|e| {
                let w = root_of_unity(e, n as u64);
                let (re, im) = (w.re as f32, w.im as f32);
                re.to_ne_bytes().into_iter().chain(im.to_ne_bytes())
            })
            .collect();
        let limit = ctx.capabilities().max_storage_buffer_range as usize;
        if table.len() > limit {
            return Err(VulkanError::unsupported(format!(
                "the twiddle table of N = {n} needs {} bytes; maxStorageBufferRange = {limit}",
                table.len()
            )));
        }
        let twiddles = upload(&ctx, &table)?;
        let register_allowed = options.register_fft.unwrap_or_else(register_fft_from_env);
        // The fused block's lines: N points for a one-pass plan, else those after the global
        // stages.
        let register_lines_log2 = schedule
            .passes()
            .last()
            .filter(|_| register_allowed)
            .and_then(|fused| pipelines.register_lines_log2(fused.line_log2));
        let max_rounds = options
            .max_exchange_rounds
            .unwrap_or_else(exchange_rounds_from_env);
        let long_line = register_allowed
            && plan.global_passes() > 0
            && pipelines.holds_long_line(n.ilog2(), max_rounds);
        // Half spectra: the shaders' tiles are the column pass's workgroups (each invocation
        // holds at most 16 of its points for the tile's maximum) and the fused pass's lines;
        // the shaders know one global stage (its inverse writes the outputs).
        let half_spectra = options.half_spectra.unwrap_or_else(half_spectra_from_env)
            && spec.dtype() != DType::F32
            && register_lines_log2.is_some()
            && !long_line
            && schedule.passes().len() == 2
            && pipelines.shared_points <= 16 * pipelines.workgroup;

        let mut conv = VulkanConvolution {
            ctx,
            spec: spec.clone(),
            pipelines,
            plan,
            schedule,
            twiddles,
            register_lines_log2,
            long_forward: None,
            half_spectra,
            exec: Mutex::new(None),
            backward_exec: Mutex::new(None),
        };
        // Smaller chunks until every per-chunk buffer fits the device's storage-buffer range (or
        // they cannot shrink further).
        while conv.check_buffer_ranges().is_err() {
            let shape = conv.schedule.chunk_shape();
            if !conv.schedule.shrink_chunks() || conv.schedule.chunk_shape() == shape {
                break;
            }
        }
        conv.check_buffer_ranges()?;
        // After the chunks' last change: the long-line forward runs the same chunks.
        if long_line {
            conv.long_forward = Some(conv.schedule.one_pass());
        }
        // The forward's pipelines now (the others on first use), so that a shader the driver
        // rejects fails here and the first call does not pay the compile.
        if let Some(chunk) = conv.schedule.chunks().next() {
            conv.forward_passes(chunk, Io::Host)?;
        }
        Ok(conv)
    }

    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    /// The factors of the plan this convolution runs.
    pub fn factors(&self) -> &[usize] {
        self.plan.factors()
    }

    /// The cooperative-matrix tile T (`T x T x T` f16 products) of this convolution's FFT
    /// passes, or `None` where they run the portable f32 rounds (a device without the
    /// cooperative-matrix path, `FFTCONV_VULKAN_PORTABLE=1`, or f32 I/O). The register-radix
    /// forward ([`register_pass`](Self::register_pass)) has no matrix rounds.
    pub fn cooperative_tile(&self) -> Option<u32> {
        self.pipelines.cooperative_tile
    }

    /// Whether the forward's fused block (the whole FFT of a one-pass plan, or the lines after
    /// the global stages) runs the register-radix pass (Stockham radix-16 FFTs in registers, one
    /// shared-memory exchange per pass) rather than the radix-2 fused pass.
    pub fn register_pass(&self) -> bool {
        self.register_lines_log2.is_some() || self.long_forward.is_some()
    }

    /// Whether the forward keeps its intermediate spectra in f16 ([`VulkanOptions::half_spectra`]:
    /// 16-bit I/O, a plan of one global stage, the register-radix fused pass, and the shared
    /// points at most 16 x the workgroup): 4 bytes per point and pass instead of 8.
    pub fn half_spectra(&self) -> bool {
        self.half_spectra
    }

    /// Passes over global memory per direction of the forward (0: the whole FFT is one fused
    /// on-chip pass: a one-pass plan, or the register-radix pass holding lines longer than the
    /// shared memory).
    pub fn global_passes(&self) -> usize {
        if self.long_forward.is_some() {
            return 0;
        }
        self.plan.global_passes()
    }

    /// Bytes of the forward's intermediate buffer per chunk of rows (allocated on the first
    /// forward; 4 when the forward is one on-chip pass and needs none).
    pub fn intermediate_bytes(&self) -> usize {
        if self.global_passes() == 0 {
            return 4;
        }
        if self.half_spectra {
            return self.half_spectra_bytes();
        }
        self.schedule.spectra_bytes()
    }

    /// Bytes of one full chunk's half spectra (the shader's `tmp16`; `TMP_F16`): per pair, N
    /// packed f16 words, then one unscale factor per tile, after all the pairs' data: the pair's
    /// N / shared points column-pass workgroups (region A) and its M_0 = N / M fused lines
    /// (region B). About half of `spectra_bytes`.
    fn half_spectra_bytes(&self) -> usize {
        let (nb, nh) = self.schedule.chunk_shape();
        let n = self.spec.geometry().n();
        let fused_line_log2 = self.schedule.passes().last().map_or(0, |p| p.line_log2);
        let words_per_pair = n + n / self.pipelines.shared_points as usize + (n >> fused_line_log2);
        nh * self.schedule.pairs(nb) * words_per_pair * 4
    }

    fn check_buffer_ranges(&self) -> Result<(), VulkanError> {
        let (nb, nh) = self.schedule.chunk_shape();
        let stream = self.schedule.stream_bytes();
        let limit = self.ctx.capabilities().max_storage_buffer_range as usize;
        // The backward keeps whole spectra even when the forward needs none.
        let biggest = stream.max(self.schedule.spectra_bytes());
        // Shader indices are 32-bit: every bound buffer must have fewer than 2^32 elements.
        if biggest > limit || nb * nh * self.spec.length() >= 1 << 32 {
            return Err(VulkanError::unsupported(format!(
                "a chunk needs a {biggest}-byte storage buffer; the device allows {limit}"
            )));
        }
        Ok(())
    }

    /// Computes the filter spectrum of `k: [H, K]` (f32) on the host and uploads it.
    pub fn prepare_filter(&self, k: &[f32]) -> Result<VulkanFilterSpectrum, VulkanError> {
        let (h_count, klen) = (self.spec.channels(), self.spec.filter_len());
        self.spec.check_filter_len(k.len()).map_err(core_invalid)?;
        let geometry = *self.spec.geometry();
        let n = geometry.n();
        let kept = geometry.kept_bins.min(n / 2 + 1);
        let fft = realfft::RealFftPlanner::<f32>::new().plan_fft_forward(n);
        let mut signal = fft.make_input_vec();
        let mut spectrum = fft.make_output_vec();
        let mut scratch = fft.make_scratch_vec();
        let scale = 1.0 / n as f32;
        let limit = self.ctx.capabilities().max_storage_buffer_range as usize;
        let total = h_count.saturating_mul(kept).saturating_mul(8);
        // The shader indexes the spectrum with 32-bit complex indices, and binds it whole.
        if total > limit || h_count.saturating_mul(kept) >= 1 << 32 {
            return Err(VulkanError::unsupported(format!(
                "the filter spectrum needs {total} bytes; maxStorageBufferRange = {limit}"
            )));
        }
        let mut bytes = Vec::with_capacity(total);
        for row in k.chunks_exact(klen) {
            signal.fill(0.0);
            signal[..klen].copy_from_slice(row);
            fft.process_with_scratch(&mut signal, &mut spectrum, &mut scratch)
                .map_err(|e| VulkanError::invalid("k", e.to_string()))?;
            for c in &spectrum[..kept] {
                bytes.extend_from_slice(&(c.re * scale).to_ne_bytes());
                bytes.extend_from_slice(&(c.im * scale).to_ne_bytes());
            }
        }
        Ok(VulkanFilterSpectrum {
            geometry,
            channels: h_count,
            filter_len: klen,
            buffer: Arc::new(upload(&self.ctx, &bytes)?),
        })
    }

    /// `y = postgate * conv(pregate * u, k)`; `u`, `y` and the gates are `[B, H, L]` of the
    /// problem's dtype. Every argument is checked before anything is written.
    pub fn forward<T: Element>(
        &self,
        filter: &VulkanFilterSpectrum,
        u: &[T],
        gates: Option<(&[T], &[T])>,
        y: &mut [T],
    ) -> Result<(), VulkanError> {
        self.check_inputs(
            filter,
            T::DTYPE,
            u.len(),
            gates.map(|(p, q)| (p.len(), q.len())),
            y.len(),
        )?;
        self.run(filter, Io::Host, |conv, exec, chunk, stage| {
            let host = exec.host.as_mut().expect("made for host calls");
            if stage == Stage::Upload {
                conv.stage_inputs(host, chunk, u, gates);
            } else {
                conv.read_outputs(host, chunk, y);
            }
        })
    }

    /// Like [`forward`](Self::forward) on device-resident tensors: no host copies, `y` is
    /// overwritten in device memory.
    pub fn forward_device(
        &self,
        filter: &VulkanFilterSpectrum,
        u: &VulkanTensor,
        gates: Option<(&VulkanTensor, &VulkanTensor)>,
        y: &mut VulkanTensor,
    ) -> Result<(), VulkanError> {
        let mut dtypes = vec![("u", u.dtype), ("y", y.dtype)];
        if let Some((p, q)) = gates {
            dtypes.extend([("pregate", p.dtype), ("postgate", q.dtype)]);
        }
        self.spec.check_dtypes(&dtypes).map_err(core_invalid)?;
        self.check_inputs(
            filter,
            u.dtype,
            u.len,
            gates.map(|(p, q)| (p.len, q.len)),
            y.len,
        )?;
        let limit = u64::from(self.ctx.capabilities().max_storage_buffer_range);
        if self.spec.io_len() >= 1 << 32 || u.buffer.size > limit {
            return Err(VulkanError::unsupported(format!(
                "device tensors of {} bytes exceed maxStorageBufferRange = {limit} \
                 (host slices run in chunks that fit)",
                u.buffer.size
            )));
        }
        let y = &*y;
        self.run(filter, Io::Device { u, gates, y }, |_, _, _, _| {})
    }

    /// Runs every chunk: `host` copies a chunk's inputs in before and its outputs out after.
    fn run(
        &self,
        filter: &VulkanFilterSpectrum,
        io: Io<'_>,
        mut host: impl FnMut(&Self, &mut Execution, Chunk, Stage),
    ) -> Result<(), VulkanError> {
        let mut guard = self.exec.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(self.execution()?);
        }
        let exec = guard.as_mut().expect("just made");
        if matches!(io, Io::Host) && exec.host.is_none() {
            exec.host = Some(self.host_io()?);
        }
        exec.bind(BINDING_SPECTRUM, &filter.buffer);
        exec.bind_io(io);
        let result = (|| {
            if matches!(io, Io::Device { .. }) {
                // Device tensors hold every chunk at once: one submission for all of them (one
                // wait instead of one per chunk).
                let chunks: Vec<Chunk> = self.schedule.chunks().collect();
                self.record(exec, &chunks, io)?;
                return exec.commands.run();
            }
            for chunk in self.schedule.chunks() {
                host(self, exec, chunk, Stage::Upload);
                self.record(exec, &[chunk], io)?;
                exec.commands.run()?;
                host(self, exec, chunk, Stage::Download);
            }
            Ok(())
        })();
        if let Err(VulkanError::Timeout { .. }) = &result {
            // The GPU may still use these resources: leak them rather than free them under it.
            std::mem::forget(guard.take());
        }
        result
    }

    fn check_inputs(
        &self,
        filter: &VulkanFilterSpectrum,
        dtype: DType,
        u_len: usize,
        gates: Option<(usize, usize)>,
        y_len: usize,
    ) -> Result<(), VulkanError> {
        let spec = &self.spec;
        spec.check_io(dtype, u_len, gates, y_len)
            .map_err(core_invalid)?;
        if filter.geometry != *spec.geometry()
            || filter.channels != spec.channels()
            || filter.filter_len != spec.filter_len()
        {
            return Err(VulkanError::invalid(
                "filter",
                "prepared for a different problem",
            ));
        }
        Ok(())
    }

    fn execution(&self) -> Result<Execution, VulkanError> {
        let ctx = &self.ctx;
        // Fallible parts first, so an error leaves nothing behind.
        let commands = Commands::new(ctx)?;
        let tmp = Buffer::new(ctx, self.intermediate_bytes() as u64, MemoryKind::Device)?;
        let (pool, sets) = descriptor_sets(ctx, self.pipelines.set_layout, 1)?;
        let set = sets[0];
        let exec = Execution {
            ctx: Arc::clone(ctx),
            pool,
            set,
            commands,
            tmp,
            host: None,
        };
        exec.bind(BINDING_TMP, &exec.tmp);
        exec.bind(BINDING_TWIDDLES, &self.twiddles);
        // Bindings only the backward reads or writes: valid but unused buffers.
        for binding in [
            BINDING_OTHER,
            BINDING_TAPS,
            BINDING_Y2,
            BINDING_TAPS_SUM,
            BINDING_DY,
            BINDING_Y3,
        ] {
            exec.bind(binding, &exec.tmp);
        }
        Ok(exec)
    }

    fn host_io(&self) -> Result<HostIo, VulkanError> {
        let ctx = &self.ctx;
        let stream_bytes = self.schedule.stream_bytes();
        let gated = self.spec.gated();
        let device = |bytes: usize| Buffer::new(ctx, bytes as u64, MemoryKind::Device);
        let streams = if gated { 3 } else { 1 };
        Ok(HostIo {
            u: device(stream_bytes)?,
            pre: if gated {
                Some(device(stream_bytes)?)
            } else {
                None
            },
            post: if gated {
                Some(device(stream_bytes)?)
            } else {
                None
            },
            y: device(stream_bytes)?,
            staging: Buffer::new(ctx, (streams * stream_bytes) as u64, MemoryKind::Staging)?,
            stream_bytes,
        })
    }

    /// Copies the chunk's rows of `u` (and gates) into the staging buffer, compactly
    /// `[nb, nh, L]` per stream.
    fn stage_inputs<T: Element>(
        &self,
        exec: &mut HostIo,
        chunk: Chunk,
        u: &[T],
        gates: Option<(&[T], &[T])>,
    ) {
        let stream_bytes = exec.stream_bytes;
        let staging = exec.staging.bytes_mut();
        let mut streams: Vec<&[T]> = vec![u];
        if let Some((pre, post)) = gates {
            streams.push(pre);
            streams.push(post);
        }
        for (i, src) in streams.into_iter().enumerate() {
            let region = &mut staging[i * stream_bytes..(i + 1) * stream_bytes];
            for (dst_rows, src_rows) in self.schedule.chunk_rows(chunk) {
                copy_to_bytes(
                    &src[src_rows],
                    &mut region[dst_rows.start * size_of::<T>()..],
                );
            }
        }
    }

    fn read_outputs<T: Element>(&self, exec: &mut HostIo, chunk: Chunk, y: &mut [T]) {
        let staging = exec.staging.bytes_mut();
        for (src_rows, dst_rows) in self.schedule.chunk_rows(chunk) {
            copy_from_bytes(
                &staging[src_rows.start * size_of::<T>()..],
                &mut y[dst_rows],
            );
        }
    }

    /// Records, for each of `chunks` in turn, the upload, the passes of the plan (forward stages,
    /// fused block, inverse stages) and the readback, into one submission.
    fn record(&self, exec: &Execution, chunks: &[Chunk], io: Io<'_>) -> Result<(), VulkanError> {
        // Each chunk's bytes per stream, passes and grids (the fallible part, before recording).
        let plans = chunks
            .iter()
            .map(|&chunk| {
                let bytes = self.chunk_bytes(chunk);
                let steps = self.forward_passes(chunk, io)?;
                let dispatches = steps
                    .iter()
                    .map(|(_, p)| self.workgroups(p))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((bytes, steps, dispatches))
            })
            .collect::<Result<Vec<_>, VulkanError>>()?;
        let host = match io {
            Io::Host => exec.host.as_ref(),
            Io::Device { .. } => None,
        };
        exec.commands.record(|device, cmd| {
            // SAFETY: `cmd` is recording; every buffer, pipeline and set is alive and sized for
            // these chunks; barriers order transfer -> compute -> compute -> transfer, and each
            // pass's barrier orders one chunk's use of the intermediate buffer before the next.
            unsafe {
                device.cmd_bind_descriptor_sets(
                    cmd,
                    vk::PipelineBindPoint::COMPUTE,
                    self.pipelines.layout,
                    0,
                    &[exec.set],
                    &[],
                );
                for (bytes, steps, dispatches) in &plans {
                    if let Some(host) = host {
                        let streams = [Some(&host.u), host.pre.as_ref(), host.post.as_ref()];
                        for (i, dst) in streams.into_iter().flatten().enumerate() {
                            let region = [vk::BufferCopy::default()
                                .src_offset((i * host.stream_bytes) as u64)
                                .dst_offset(0)
                                .size(*bytes)];
                            device.cmd_copy_buffer(cmd, host.staging.buffer, dst.buffer, &region);
                        }
                    }
                    memory_barrier(device, cmd);
                    for ((pipeline, params), groups) in steps.iter().zip(dispatches) {
                        self.record_pass(device, cmd, *pipeline, params, *groups);
                    }
                    if let Some(host) = host {
                        let region = [vk::BufferCopy::default().size(*bytes)];
                        device.cmd_copy_buffer(cmd, host.y.buffer, host.staging.buffer, &region);
                        host_read_barrier(device, cmd);
                    }
                }
            }
        })
    }

    /// Bytes of one stream (`u`, a gate, `y`) of `chunk`.
    fn chunk_bytes(&self, chunk: Chunk) -> u64 {
        (chunk.nb * chunk.nh * self.spec.length() * self.spec.dtype().size_bytes()) as u64
    }

    /// The forward's passes of one chunk: pipelines and parameters (the fused block on the
    /// register-radix pass where it runs, with its own lines per workgroup).
    fn forward_passes(
        &self,
        chunk: Chunk,
        io: Io<'_>,
    ) -> Result<Vec<(vk::Pipeline, PassParams)>, VulkanError> {
        const FORWARD_FLAGS: u32 = FLAG_SRC_INPUT | FLAG_DST_OUTPUT | FLAG_GATED | FLAG_WRAPS;
        if let Some(long) = &self.long_forward {
            return long
                .forward_steps(chunk, matches!(io, Io::Host))
                .into_iter()
                .map(|(_, params)| {
                    let shader = Shader::RegisterFusedLong {
                        log2n: params.line_log2,
                    };
                    Ok((self.pipelines.pipeline(shader)?, params))
                })
                .collect();
        }
        self.schedule
            .forward_steps(chunk, matches!(io, Io::Host))
            .into_iter()
            .map(|(kind, mut params)| {
                let register = self
                    .register_lines_log2
                    .filter(|_| kind == PassKind::Fused && params.flags & !FORWARD_FLAGS == 0);
                let shader = match (register, self.half_spectra) {
                    (Some(lines_log2), half) => {
                        params.lines_log2 = lines_log2;
                        if half {
                            Shader::HalfSpectra(kind)
                        } else {
                            Shader::RegisterFused
                        }
                    }
                    // Half spectra: the column passes too (their f16 words are what the
                    // register pass reads and writes).
                    (None, true) if kind != PassKind::Fused => Shader::HalfSpectra(kind),
                    (None, true) => {
                        return Err(VulkanError::unsupported(format!(
                            "half spectra need the register-radix fused pass (flags {:#x})",
                            params.flags
                        )))
                    }
                    (None, false) => Shader::Pass(kind),
                };
                Ok((self.pipelines.pipeline(shader)?, params))
            })
            .collect()
    }

    /// Records one pass: its pipeline (of a [`PassKind`](monarch_core::schedule::PassKind), or the
    /// taps sum), push constants, dispatch, and a barrier after it (the set is bound by the
    /// caller).
    pub(crate) fn record_pass(
        &self,
        device: &ash::Device,
        cmd: vk::CommandBuffer,
        pipeline: vk::Pipeline,
        params: &PassParams,
        (x, y): (u32, u32),
    ) {
        // SAFETY: `cmd` is recording; the pipeline and layout are alive and match the bound set.
        unsafe {
            device.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, pipeline);
            device.cmd_push_constants(
                cmd,
                self.pipelines.layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &params.bytes(),
            );
            device.cmd_dispatch(cmd, x, y, 1);
        }
        memory_barrier(device, cmd);
    }

    /// The 2-D workgroup grid covering a pass's lines.
    fn workgroups(&self, params: &PassParams) -> Result<(u32, u32), VulkanError> {
        let groups = (params.total_lines as u64).div_ceil(1 << params.lines_log2);
        let max = self.ctx.capabilities().max_workgroup_count;
        let x = groups.min(u64::from(max[0])).max(1);
        let y = groups.div_ceil(x);
        if y > u64::from(max[1]) {
            return Err(VulkanError::unsupported(format!(
                "{groups} workgroups exceed the device's grid {max:?}"
            )));
        }
        Ok((x as u32, y as u32))
    }
}

/// Before or after a chunk's submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Upload,
    Download,
}

impl Execution {
    /// Binds the streams `io` names (an ungated problem binds `u` in the unread gate slots).
    fn bind_io(&self, io: Io<'_>) {
        let (u, pre, post, y) = match io {
            Io::Host => {
                let host = self.host.as_ref().expect("made for host calls");
                (&host.u, host.pre.as_ref(), host.post.as_ref(), &host.y)
            }
            Io::Device { u, gates, y } => (
                &u.buffer,
                gates.map(|g| &g.0.buffer),
                gates.map(|g| &g.1.buffer),
                &y.buffer,
            ),
        };
        self.bind(BINDING_U, u);
        self.bind(BINDING_PRE, pre.unwrap_or(u));
        self.bind(BINDING_POST, post.unwrap_or(u));
        self.bind(BINDING_Y, y);
    }

    fn bind(&self, binding: u32, buffer: &Buffer) {
        self.bind_info(binding, buffer.descriptor());
    }

    fn bind_info(&self, binding: u32, info: vk::DescriptorBufferInfo) {
        let infos = [info];
        let write = [vk::WriteDescriptorSet::default()
            .dst_set(self.set)
            .dst_binding(binding)
            .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
            .buffer_info(&infos)];
        // SAFETY: the set is not in use by pending work (every submission is waited for).
        unsafe { self.ctx.device.update_descriptor_sets(&write, &[]) };
    }
}

/// A descriptor pool holding `count` sets of `layout` (storage buffers only), and the sets; the
/// pool is destroyed again if allocating the sets fails.
pub(crate) fn descriptor_sets(
    ctx: &VulkanContext,
    layout: vk::DescriptorSetLayout,
    count: u32,
) -> Result<(vk::DescriptorPool, Vec<vk::DescriptorSet>), VulkanError> {
    let pool_sizes = [vk::DescriptorPoolSize::default()
        .ty(vk::DescriptorType::STORAGE_BUFFER)
        .descriptor_count(BINDINGS * count)];
    // SAFETY: valid create info on a live device.
    let pool = unsafe {
        ctx.device.create_descriptor_pool(
            &vk::DescriptorPoolCreateInfo::default()
                .max_sets(count)
                .pool_sizes(&pool_sizes),
            None,
        )
    }
    .map_err(|r| check("vkCreateDescriptorPool", r))?;
    let layouts = vec![layout; count as usize];
    // SAFETY: the pool has room for `count` sets of this layout.
    let sets = unsafe {
        ctx.device.allocate_descriptor_sets(
            &vk::DescriptorSetAllocateInfo::default()
                .descriptor_pool(pool)
                .set_layouts(&layouts),
        )
    };
    match sets {
        Ok(sets) => Ok((pool, sets)),
        Err(r) => {
            // SAFETY: the pool is unused.
            unsafe { ctx.device.destroy_descriptor_pool(pool, None) };
            Err(check("vkAllocateDescriptorSets", r))
        }
    }
}

/// An argument error of the problem's checks as this backend's [`VulkanError::InvalidArgument`].
pub(crate) fn core_invalid(e: monarch_core::CoreError) -> VulkanError {
    match e {
        monarch_core::CoreError::InvalidArgument { arg, reason } => {
            VulkanError::invalid(arg, reason)
        }
        other => VulkanError::from(other),
    }
}

fn copy_to_bytes<T: Element>(src: &[T], dst: &mut [u8]) {
    let n = std::mem::size_of_val(src);
    // SAFETY: f32, f16 and bf16 (the only `Element`s) are plain data without padding.
    let bytes = unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<u8>(), n) };
    dst[..n].copy_from_slice(bytes);
}

fn copy_from_bytes<T: Element>(src: &[u8], dst: &mut [T]) {
    let n = std::mem::size_of_val(dst);
    // SAFETY: as above; every bit pattern is a valid f32, f16 or bf16.
    let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), n) };
    bytes.copy_from_slice(&src[..n]);
}
