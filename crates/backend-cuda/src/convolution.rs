//! [`CudaConvolution`] (a problem prepared on the CUDA device: pass schedule, twiddles, kernels),
//! [`CudaFilterSpectrum`] (a filter's spectrum in device memory) and [`CudaTensor`].

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use monarch_core::schedule::{
    Chunk, PassKind, PassParams, PassSchedule, DEFAULT_CHUNK_ELEMS, FLAG_DST_OUTPUT,
    FLAG_F32_ROUNDS, FLAG_GATED, FLAG_NO_INVERSE, FLAG_SRC_INPUT, FLAG_WRAPS,
};
use monarch_core::twiddle::root_of_unity;
use monarch_core::{ConvGeometry, ConvSpec, DType, Element, MonarchPlan, PlanLimits};

use crate::device::{device, CudaDevice, Kernels};
use crate::CudaError;

mod backward;

pub use backward::{CudaGradients, CudaTensorGradients};

/// Environment variable: `1` computes filter spectra on the host (realfft) instead of the GPU.
pub const HOST_FILTER_ENV: &str = "FFTCONV_CUDA_HOST_FILTER";

/// A filter `k: [H, K]` transformed for one [`CudaConvolution`]: per channel the Hermitian half
/// spectrum of the zero-padded filter (natural order, scaled by `1/N`), kept bins only, as
/// complex f32 in device memory.
#[derive(Clone)]
pub struct CudaFilterSpectrum {
    geometry: ConvGeometry,
    channels: usize,
    filter_len: usize,
    pub(crate) buffer: Arc<CudaSlice<u8>>,
    /// The same spectrum in the Monarch pass's order (`fftconv_monarch_filter`), where the
    /// convolution runs that pass.
    pub(crate) monarch: Option<Arc<CudaSlice<u8>>>,
}

impl std::fmt::Debug for CudaFilterSpectrum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaFilterSpectrum")
            .field("geometry", &self.geometry)
            .field("channels", &self.channels)
            .field("bytes", &self.buffer.len())
            .finish()
    }
}

impl CudaFilterSpectrum {
    /// Bytes of device memory the spectrum holds.
    pub fn size_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// The spectrum as interleaved f32 (re, im) values, `[H, kept bins]` (for inspection).
    pub fn to_host(&self) -> Result<Vec<f32>, CudaError> {
        let bytes = self.channels * self.geometry.kept_bins.min(self.geometry.n() / 2 + 1) * 8;
        let host = download(&device()?.stream, &self.buffer, bytes)?;
        Ok(host
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

/// Tuning knobs of a [`CudaConvolution`] (the defaults are what the device allows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// Use at most this many complex points of shared memory per block (rounded down to a power
    /// of two, at least 16). Smaller values give plans with more global-memory passes for the
    /// same FFT size: tests use them to check multi-pass plans on small problems.
    pub max_shared_points: Option<u32>,
    /// Elements of `u` per chunk (rounded up to whole rows); `None`: 2^24. Smaller chunks bound
    /// device memory; tests use them to check chunking.
    pub chunk_elems: Option<usize>,
}

/// A `[B, H, L]` tensor of one dtype in device memory, for calls without host copies
/// ([`CudaConvolution::forward_device`]).
pub struct CudaTensor {
    pub(crate) buffer: CudaSlice<u8>,
    pub(crate) dtype: DType,
    len: usize,
}

impl std::fmt::Debug for CudaTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaTensor")
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .finish()
    }
}

impl CudaTensor {
    /// A zeroed tensor of `len` elements of `dtype` in device memory.
    pub fn zeros(dtype: DType, len: usize) -> Result<CudaTensor, CudaError> {
        let bytes = len
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| CudaError::invalid("len", "tensor size overflows"))?;
        let dev = device()?;
        let buffer = dev
            .stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| CudaError::driver("cuMemAlloc", e))?;
        sync(&dev.stream)?;
        Ok(CudaTensor { buffer, dtype, len })
    }

    /// Copies `data` to a new device tensor.
    pub fn from_host<T: Element>(data: &[T]) -> Result<CudaTensor, CudaError> {
        let dev = device()?;
        let mut bytes = vec![0u8; std::mem::size_of_val(data).max(1)];
        copy_to_bytes(data, &mut bytes);
        let buffer = upload(&dev.stream, &bytes)?;
        Ok(CudaTensor {
            buffer,
            dtype: T::DTYPE,
            len: data.len(),
        })
    }

    /// Copies the tensor into `out` (same dtype and length).
    pub fn to_host<T: Element>(&self, out: &mut [T]) -> Result<(), CudaError> {
        if T::DTYPE != self.dtype || out.len() != self.len {
            return Err(CudaError::invalid(
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
        let bytes = download(&device()?.stream, &self.buffer, std::mem::size_of_val(out))?;
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

/// The kernels' `Params` argument.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub(crate) struct KernelParams(pub(crate) PassParams);
// SAFETY: `PassParams` is `repr(C)` plain data with the layout of the kernels' `Params`.
unsafe impl DeviceRepr for KernelParams {}

/// The kernels' `Buffers` argument: device pointers in the kernels' order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KernelBuffers {
    pub(crate) u: u64,
    pub(crate) pre: u64,
    pub(crate) post: u64,
    pub(crate) y: u64,
    pub(crate) spectrum: u64,
    pub(crate) twiddles: u64,
    pub(crate) tmp: u64,
    pub(crate) other: u64,
    pub(crate) taps: u64,
    pub(crate) y2: u64,
    pub(crate) taps_sum: u64,
    pub(crate) u2: u64,
    pub(crate) y3: u64,
}
// SAFETY: `repr(C)` plain data with the layout of the kernels' `Buffers`.
unsafe impl DeviceRepr for KernelBuffers {}

/// Division by a run-time constant as the kernels do it (`udiv` in `kernels/fftconv.cu`):
/// `q = (t + ((n - t) >> s1)) >> s2` with `t = mulhi(n, m)`, exact for every 32-bit `n`
/// (Granlund and Montgomery, round-up variant).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Divisor {
    m: u32,
    s1: u32,
    s2: u32,
    d: u32,
}

impl Divisor {
    /// The constants for dividing by `d` (0 is treated as 1: the kernels never divide by it).
    pub(crate) fn new(d: u32) -> Divisor {
        if d <= 1 {
            return Divisor {
                m: 0,
                s1: 0,
                s2: 0,
                d: 1,
            };
        }
        let l = 32 - (d - 1).leading_zeros(); // ceil(log2 d), 1 ..= 32
        let m = ((1u64 << 32) * ((1u64 << l) - u64::from(d)) / u64::from(d) + 1) as u32;
        Divisor {
            m,
            s1: 1,
            s2: l - 1,
            d,
        }
    }

    /// `n / d` computed the kernels' way.
    #[cfg(test)]
    fn divide(&self, n: u32) -> u32 {
        let t = ((u64::from(n) * u64::from(self.m)) >> 32) as u32;
        (t + ((n - t) >> self.s1)) >> self.s2
    }
}

/// The kernels' `Divisors` argument: the parameters they divide by.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelDivisors {
    blocks: Divisor,
    pairs: Divisor,
    seq_len: Divisor,
    channels: Divisor,
    block_len: Divisor,
    taps_len: Divisor,
}
// SAFETY: `repr(C)` plain data with the layout of the kernels' `Divisors`.
unsafe impl DeviceRepr for KernelDivisors {}

impl KernelDivisors {
    fn new(p: &PassParams) -> KernelDivisors {
        KernelDivisors {
            blocks: Divisor::new(p.blocks),
            pairs: Divisor::new(p.pairs),
            seq_len: Divisor::new(p.seq_len),
            channels: Divisor::new(p.channels),
            block_len: Divisor::new(p.block_len),
            taps_len: Divisor::new(p.taps_len),
        }
    }
}

/// The device address of `buffer` (the context does not track events: callers order work by
/// using one stream and waiting for it).
pub(crate) fn address<T>(buffer: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (ptr, _sync) = buffer.device_ptr(stream);
    ptr
}

/// Waits for a stream when dropped: an error mid-call (`?`) must not leave work in flight on
/// buffers the caller may free next.
pub(crate) struct SettleOnExit(pub(crate) Arc<CudaStream>);

impl Drop for SettleOnExit {
    fn drop(&mut self) {
        let _ = self.0.synchronize();
    }
}

/// `data` copied to a new device buffer on `stream`, waited for.
pub(crate) fn upload<T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    data: &[T],
) -> Result<CudaSlice<T>, CudaError> {
    let buffer = stream
        .clone_htod(data)
        .map_err(|e| CudaError::driver("cuMemcpyHtoD", e))?;
    sync(stream)?;
    Ok(buffer)
}

/// The first `bytes` of `buffer`, copied to the host once `stream`'s earlier work is done.
pub(crate) fn download(
    stream: &Arc<CudaStream>,
    buffer: &CudaSlice<u8>,
    bytes: usize,
) -> Result<Vec<u8>, CudaError> {
    let mut host = vec![0u8; bytes];
    if bytes > 0 {
        stream
            .memcpy_dtoh(&buffer.slice(..bytes), &mut host)
            .map_err(|e| CudaError::driver("cuMemcpyDtoH", e))?;
    }
    sync(stream)?;
    Ok(host)
}

pub(crate) fn sync(stream: &CudaStream) -> Result<(), CudaError> {
    stream
        .synchronize()
        .map_err(|e| CudaError::driver("cuStreamSynchronize", e))
}

/// A convolution problem prepared on the CUDA device. `Send + Sync`; calls on one instance are
/// serialised (they share its intermediate buffers and stream).
pub struct CudaConvolution {
    device: Arc<CudaDevice>,
    spec: ConvSpec,
    kernels: Arc<Kernels>,
    plan: Arc<MonarchPlan>,
    schedule: PassSchedule,
    twiddles: CudaSlice<u8>,
    /// Whether every chunk's forward runs as the Monarch tensor-core pass.
    monarch: bool,
    exec: Mutex<Option<Execution>>,
    backward_exec: Mutex<Option<backward::BackwardExecution>>,
}

impl Drop for CudaConvolution {
    fn drop(&mut self) {
        // Work left on a caller's stream still uses the twiddles and the intermediate buffer.
        let exec = self.exec.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(event) = exec.as_mut().and_then(|e| e.pending.take()) {
            let _ = event.synchronize();
        }
    }
}

impl std::fmt::Debug for CudaConvolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaConvolution")
            .field("spec", &self.spec)
            .field("factors", &self.plan.factors())
            .finish_non_exhaustive()
    }
}

/// The stream and intermediate buffer of one convolution, made on first use.
struct Execution {
    stream: Arc<CudaStream>,
    tmp: CudaSlice<u8>,
    /// Buffers for host slices, made on the first host call.
    host: Option<HostIo>,
    /// Completion of the last call enqueued on a caller's stream, if not yet waited for.
    pending: Option<cudarc::driver::CudaEvent>,
}

/// Device buffers of one chunk's streams, and the host staging between them and the slices.
struct HostIo {
    u: CudaSlice<u8>,
    pre: Option<CudaSlice<u8>>,
    post: Option<CudaSlice<u8>>,
    y: CudaSlice<u8>,
    staging: Vec<u8>,
}

/// Where the passes read `u` and the gates and write `y`.
#[derive(Clone, Copy)]
enum Io<'a> {
    /// The execution's own chunk buffers, filled from and read back to the host.
    Host,
    /// Device-resident tensors of the whole problem.
    Device {
        u: &'a CudaTensor,
        gates: Option<(&'a CudaTensor, &'a CudaTensor)>,
        y: &'a CudaTensor,
    },
}

impl CudaConvolution {
    /// Prepares `spec` on the process's CUDA device: the plan for its shared memory, the kernels
    /// for the dtype (compiled by NVRTC on first use) and the twiddle table.
    pub fn new(spec: &ConvSpec) -> Result<CudaConvolution, CudaError> {
        Self::with_options(spec, CudaOptions::default())
    }

    /// Like [`new`](Self::new) with [`CudaOptions`].
    pub fn with_options(
        spec: &ConvSpec,
        options: CudaOptions,
    ) -> Result<CudaConvolution, CudaError> {
        let dev = device()?;
        let geometry = spec.geometry();
        let n = geometry.n();
        let mut max_points = dev.max_shared_points();
        if let Some(limit) = options.max_shared_points {
            max_points = max_points.min(1 << limit.max(16).ilog2());
        }
        // N <= 4K: blocks of 4K points (several lines each, 256 threads); larger N: the
        // largest block (one fused pass up to 16K; 8K with two lines per block measured faster
        // than one line in 8K-point blocks on the H200).
        let shared_points = if n <= 4096 {
            max_points.min(4096)
        } else {
            max_points
        };
        let shared = shared_points as usize;
        let limits = PlanLimits {
            max_factor: shared,
            preferred_factor: shared,
            on_chip_bytes: shared * 8,
            bytes_per_element: 8,
        };
        let plan = MonarchPlan::cached(geometry.fft_size, &limits)
            .map_err(|e| CudaError::unsupported(e.to_string()))?;
        let chunk_elems = options.chunk_elems.unwrap_or(DEFAULT_CHUNK_ELEMS);
        let schedule = PassSchedule::new(spec, &plan, shared, chunk_elems)
            .map_err(|e| CudaError::unsupported(e.to_string()))?;
        // The sizes of a full chunk's fused pass (the module compiles them in where the
        // FFTCONV_CUDA_SPECIALIZE experiment is on).
        let fused = schedule.chunks().next().and_then(|chunk| {
            schedule
                .forward_steps(chunk, true)
                .into_iter()
                .find(|(kind, _)| *kind == PassKind::Fused)
                .map(|(_, p)| crate::device::FusedSizes {
                    log2n: p.log2n,
                    line_log2: p.line_log2,
                    lines_log2: p.lines_log2,
                    stage_count: p.stage_count,
                    stage_bits: p.stage_bits,
                })
        });
        let kernels = dev.specialized_kernels(spec.dtype(), shared_points, fused)?;
        // Kernel indices of u, gates and y, and line counts, are 32-bit within a chunk.
        let (nb, nh) = schedule.chunk_shape();
        let total_pairs = nh * schedule.pairs(nb);
        let max_lines = schedule
            .passes()
            .iter()
            .map(|p| total_pairs * (n >> p.line_log2))
            .max()
            .unwrap_or(0);
        if nb * nh * spec.length() >= 1 << 32 || max_lines >= 1 << 31 {
            return Err(CudaError::unsupported(format!(
                "a chunk of L = {} elements per row is too large for 32-bit kernel indices",
                spec.length()
            )));
        }
        let table = twiddle_tables(n);
        let twiddles = upload(&dev.stream, &table)?;
        let vec = monarch_vec_elems(spec.dtype());
        let monarch = kernels.monarch.as_ref().is_some_and(|m| {
            schedule.chunks().all(|chunk| {
                [true, false].iter().all(|&host| {
                    let steps = schedule.forward_steps(chunk, host);
                    monarch_launches(&steps, vec, m.clusters.is_some(), None).is_some()
                })
            })
        });
        Ok(CudaConvolution {
            device: dev,
            spec: spec.clone(),
            monarch,
            kernels,
            plan,
            schedule,
            twiddles,
            exec: Mutex::new(None),
            backward_exec: Mutex::new(None),
        })
    }

    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    /// The factors of the plan this convolution runs.
    pub fn factors(&self) -> &[usize] {
        self.plan.factors()
    }

    /// Passes over global memory per direction (0: the whole FFT is one fused on-chip pass).
    pub fn global_passes(&self) -> usize {
        self.plan.global_passes()
    }

    /// The filter spectrum of `k: [H, K]` (f32, host), computed on the GPU
    /// ([`prepare_filter_device`](Self::prepare_filter_device)); on the host (realfft) when `k`
    /// holds a non-finite value (so that it poisons only its own channel, see
    /// `prepare_filter_device`) or with `FFTCONV_CUDA_HOST_FILTER=1`, for comparison.
    pub fn prepare_filter(&self, k: &[f32]) -> Result<CudaFilterSpectrum, CudaError> {
        if std::env::var(HOST_FILTER_ENV).is_ok_and(|v| v == "1")
            || k.iter().any(|v| !v.is_finite())
        {
            return self.prepare_filter_host(k);
        }
        self.spec.check_filter_len(k.len()).map_err(core_invalid)?;
        self.prepare_filter_device(&CudaTensor::from_host(k)?)
    }

    /// The filter spectrum of `k: [H, K]` held in device memory (an f32 tensor of `H * K`
    /// elements), computed on the GPU: a training loop that updates `k` on the device prepares
    /// it without a host round trip. The forward passes transform pairs of filter rows packed
    /// as one complex sequence; a kernel unpacks each pair into the two half spectra. Because
    /// rows `2i` and `2i + 1` share one transform, a non-finite value in one of them makes both
    /// channels' spectra non-finite (the host-slice [`prepare_filter`](Self::prepare_filter)
    /// keeps it to its own channel).
    pub fn prepare_filter_device(&self, k: &CudaTensor) -> Result<CudaFilterSpectrum, CudaError> {
        let (h_count, klen) = (self.spec.channels(), self.spec.filter_len());
        if k.dtype != DType::F32 || k.len != h_count * klen {
            return Err(CudaError::invalid(
                "k",
                format!(
                    "expected an f32 tensor of [H={h_count}, K={klen}] = {} elements, got {} {}",
                    h_count * klen,
                    k.len,
                    k.dtype
                ),
            ));
        }
        if h_count * klen >= 1 << 32 {
            return Err(CudaError::unsupported(format!(
                "a filter of {} elements exceeds 32-bit kernel indices",
                h_count * klen
            )));
        }
        let geometry = *self.spec.geometry();
        let n = geometry.n();
        let kept = geometry.kept_bins.min(n / 2 + 1);
        let kernels = self
            .device
            .kernels(DType::F32, self.kernels.shared_points)?;
        let mut guard = self.execution()?;
        let exec = guard.as_mut().expect("made by execution()");
        let _settle = SettleOnExit(Arc::clone(&exec.stream));
        let stream = &exec.stream;
        let buffer = stream
            .alloc_zeros::<u8>((h_count * kept * 8).max(4))
            .map_err(|e| CudaError::driver("cuMemAlloc", e))?;
        // Pairs of filter rows per round: as many spectra as the intermediate buffer holds.
        let group = (exec.tmp.len() / (n * 8)).max(1);
        let passes = self.schedule.passes();
        let (globals, fused) = passes.split_at(passes.len() - 1);
        let stage_bits = globals
            .iter()
            .enumerate()
            .fold(0u32, |acc, (s, p)| acc | p.line_log2 << (5 * s));
        let buffers = KernelBuffers {
            u: address(&k.buffer, stream),
            pre: address(&k.buffer, stream),
            tmp: address(&exec.tmp, stream),
            twiddles: address(&self.twiddles, stream),
            other: address(&buffer, stream),
            ..KernelBuffers::default()
        };
        let launch = |func, shared, params: &PassParams| {
            launch_kernel(stream, func, kernels.threads, shared, params, &buffers)
        };
        let mut row0 = 0;
        while row0 < h_count {
            let rows = (2 * group).min(h_count - row0);
            let pairs = rows.div_ceil(2);
            // The filter rows as a problem of `rows` segments of K inputs (no history).
            let base = PassParams {
                log2n: n.ilog2(),
                seq_len: klen as u32,
                channels: 1,
                blocks: 1,
                block_len: klen as u32,
                kept_bins: kept as u32,
                segments: rows as u32,
                pairs: pairs as u32,
                batch_stride: 1,
                element_offset: (row0 * klen) as u32,
                taps_len: klen as u32,
                ..PassParams::default()
            };
            for (s, shape) in globals.iter().enumerate() {
                let mut p = self.schedule.pass_params(base, *shape, pairs);
                if s == 0 {
                    p.flags |= FLAG_SRC_INPUT;
                }
                launch(&kernels.columns_forward, kernels.shared_bytes, &p)?;
            }
            let mut p = self.schedule.pass_params(base, fused[0], pairs);
            p.flags |= FLAG_NO_INVERSE
                | if globals.is_empty() {
                    FLAG_SRC_INPUT
                } else {
                    0
                };
            p.stage_bits = stage_bits;
            p.stage_count = globals.len() as u32;
            launch(&kernels.fused, kernels.shared_bytes, &p)?;
            let unpack = PassParams {
                total_lines: (rows * kept) as u32,
                lines_log2: kernels.threads.ilog2(),
                channel_offset: row0 as u32,
                ..p
            };
            launch(&kernels.filter_unpack, 0, &unpack)?;
            row0 += rows;
        }
        let monarch = self.monarch_filter(stream, &buffer)?;
        sync(stream)?;
        drop(guard);
        Ok(CudaFilterSpectrum {
            geometry,
            channels: h_count,
            filter_len: klen,
            buffer: Arc::new(buffer),
            monarch,
        })
    }

    /// Computes the filter spectrum of `k: [H, K]` (f32) on the host (realfft) and uploads it.
    pub fn prepare_filter_host(&self, k: &[f32]) -> Result<CudaFilterSpectrum, CudaError> {
        self.spec.check_filter_len(k.len()).map_err(core_invalid)?;
        let geometry = *self.spec.geometry();
        let bytes = host_filter_spectrum(&self.spec, k)?;
        let buffer = upload(&self.device.stream, &bytes)?;
        let monarch = self.monarch_filter(&self.device.stream, &buffer)?;
        sync(&self.device.stream)?;
        Ok(CudaFilterSpectrum {
            geometry,
            channels: self.spec.channels(),
            filter_len: self.spec.filter_len(),
            buffer: Arc::new(buffer),
            monarch,
        })
    }

    /// The Monarch pass's filter (`fftconv_monarch_filter`) from a half spectrum on `stream`,
    /// where this convolution runs that pass.
    fn monarch_filter(
        &self,
        stream: &Arc<CudaStream>,
        spectrum: &CudaSlice<u8>,
    ) -> Result<Option<Arc<CudaSlice<u8>>>, CudaError> {
        let Some(kernels) = self.kernels.monarch.as_ref().filter(|_| self.monarch) else {
            return Ok(None);
        };
        let n = self.spec.geometry().n();
        let out = stream
            .alloc_zeros::<u8>(self.spec.channels() * (n + 2) * 8)
            .map_err(|e| CudaError::driver("cuMemAlloc", e))?;
        let params = monarch_filter_params(&self.spec);
        let buffers = KernelBuffers {
            spectrum: address(spectrum, stream),
            twiddles: address(&self.twiddles, stream),
            tmp: address(&out, stream),
            ..KernelBuffers::default()
        };
        // The channels' maxima into their zeroed second values, then the bins.
        launch_kernel(stream, &kernels.filter_max, 256, 0, &params, &buffers)?;
        launch_kernel(stream, &kernels.filter, 256, 0, &params, &buffers)?;
        Ok(Some(Arc::new(out)))
    }

    /// `y = postgate * conv(pregate * u, k)`; `u`, `y` and the gates are `[B, H, L]` of the
    /// problem's dtype. Every argument is checked before anything is written.
    pub fn forward<T: Element>(
        &self,
        filter: &CudaFilterSpectrum,
        u: &[T],
        gates: Option<(&[T], &[T])>,
        y: &mut [T],
    ) -> Result<(), CudaError> {
        self.check_inputs(
            filter,
            T::DTYPE,
            u.len(),
            gates.map(|(p, q)| (p.len(), q.len())),
            y.len(),
        )?;
        let mut guard = self.execution()?;
        let exec = guard.as_mut().expect("made by execution()");
        let _settle = SettleOnExit(Arc::clone(&exec.stream));
        if exec.host.is_none() {
            exec.host = Some(self.host_io()?);
        }
        for chunk in self.schedule.chunks().collect::<Vec<_>>() {
            let bytes = chunk.nb * chunk.nh * self.spec.length() * self.spec.dtype().size_bytes();
            {
                let host = exec.host.as_mut().expect("made above");
                let mut streams: Vec<(&[T], &mut CudaSlice<u8>)> = vec![(u, &mut host.u)];
                if let (Some((pre, post)), Some(dpre), Some(dpost)) =
                    (gates, host.pre.as_mut(), host.post.as_mut())
                {
                    streams.push((pre, dpre));
                    streams.push((post, dpost));
                }
                for (src, dst) in streams {
                    for (dst_rows, src_rows) in self.schedule.chunk_rows(chunk) {
                        copy_to_bytes(
                            &src[src_rows],
                            &mut host.staging[dst_rows.start * size_of::<T>()..],
                        );
                    }
                    exec.stream
                        .memcpy_htod(&host.staging[..bytes], &mut dst.slice_mut(..bytes))
                        .map_err(|e| CudaError::driver("cuMemcpyHtoD", e))?;
                    // The staging buffer is reused for the next stream.
                    sync(&exec.stream)?;
                }
            }
            self.launch_forward(&exec.stream, exec, filter, chunk, Io::Host)?;
            let host = exec.host.as_mut().expect("made above");
            exec.stream
                .memcpy_dtoh(&host.y.slice(..bytes), &mut host.staging[..bytes])
                .map_err(|e| CudaError::driver("cuMemcpyDtoH", e))?;
            sync(&exec.stream)?;
            for (src_rows, dst_rows) in self.schedule.chunk_rows(chunk) {
                copy_from_bytes(
                    &host.staging[src_rows.start * size_of::<T>()..],
                    &mut y[dst_rows],
                );
            }
        }
        Ok(())
    }

    /// Like [`forward`](Self::forward) on device-resident tensors: no host copies, `y` is
    /// overwritten in device memory.
    pub fn forward_device(
        &self,
        filter: &CudaFilterSpectrum,
        u: &CudaTensor,
        gates: Option<(&CudaTensor, &CudaTensor)>,
        y: &mut CudaTensor,
    ) -> Result<(), CudaError> {
        self.check_device_forward(filter, u, gates, y)?;
        let mut guard = self.execution()?;
        let exec = guard.as_mut().expect("made by execution()");
        let _settle = SettleOnExit(Arc::clone(&exec.stream));
        let y = &*y;
        for chunk in self.schedule.chunks().collect::<Vec<_>>() {
            self.launch_forward(
                &exec.stream,
                exec,
                filter,
                chunk,
                Io::Device { u, gates, y },
            )?;
        }
        sync(&exec.stream)
    }

    /// Like [`forward_device`](Self::forward_device), enqueued on the caller's `stream` (of this
    /// device) without waiting: the result is in `y` once `stream` reaches this point. Calls on
    /// one convolution are ordered on the GPU: a call on another stream (or any blocking call)
    /// first waits for this one, since they share intermediate buffers; dropping the
    /// convolution waits for it too.
    ///
    /// # Safety
    /// The GPU reads `u`, the gates and the filter and writes `y` after this returns, while the
    /// caller still holds them: they must be ready on `stream` (written by work ordered before
    /// this call on it, or waited for), and none of them may be dropped, and `y` not read or
    /// written, until `stream` has completed this work (e.g. `stream.synchronize()`). Buffers are
    /// freed on the stream that allocated them, which is not ordered after `stream`.
    pub unsafe fn forward_device_on_stream(
        &self,
        stream: &Arc<CudaStream>,
        filter: &CudaFilterSpectrum,
        u: &CudaTensor,
        gates: Option<(&CudaTensor, &CudaTensor)>,
        y: &mut CudaTensor,
    ) -> Result<(), CudaError> {
        self.check_device_forward(filter, u, gates, y)?;
        if stream.context().cu_ctx() != self.device.ctx.cu_ctx() {
            return Err(CudaError::invalid(
                "stream",
                "not a stream of this convolution's device",
            ));
        }
        let mut guard = self.execution_unordered()?;
        let exec = guard.as_mut().expect("made by execution()");
        if let Some(event) = exec.pending.take() {
            stream
                .wait(&event)
                .map_err(|e| CudaError::driver("cuStreamWaitEvent", e))?;
        } else {
            // Work of blocking calls ran on the execution's stream and was waited for.
        }
        let y = &*y;
        for chunk in self.schedule.chunks().collect::<Vec<_>>() {
            self.launch_forward(stream, exec, filter, chunk, Io::Device { u, gates, y })?;
        }
        let done = stream
            .record_event(None)
            .map_err(|e| CudaError::driver("cuEventRecord", e))?;
        exec.pending = Some(done);
        Ok(())
    }

    /// The checks of a device-tensor forward: dtypes, lengths, filter, 32-bit indices.
    fn check_device_forward(
        &self,
        filter: &CudaFilterSpectrum,
        u: &CudaTensor,
        gates: Option<(&CudaTensor, &CudaTensor)>,
        y: &CudaTensor,
    ) -> Result<(), CudaError> {
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
        if self.spec.io_len() >= 1 << 32 {
            return Err(CudaError::unsupported(format!(
                "device tensors of {} elements exceed 32-bit kernel indices \
                 (host slices run in chunks that fit)",
                self.spec.io_len()
            )));
        }
        Ok(())
    }

    /// The execution (stream, intermediate buffer), made on first use; holds the lock. Work a
    /// [`forward_device_on_stream`](Self::forward_device_on_stream) call left pending is waited
    /// for first, so the caller may reuse the intermediate buffers at once.
    fn execution(&self) -> Result<std::sync::MutexGuard<'_, Option<Execution>>, CudaError> {
        let mut guard = self.execution_unordered()?;
        if let Some(event) = guard.as_mut().and_then(|e| e.pending.take()) {
            event
                .synchronize()
                .map_err(|e| CudaError::driver("cuEventSynchronize", e))?;
        }
        Ok(guard)
    }

    /// Like [`execution`](Self::execution) without waiting for pending work.
    fn execution_unordered(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, Option<Execution>>, CudaError> {
        let mut guard = self.exec.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let stream = self
                .device
                .ctx
                .new_stream()
                .map_err(|e| CudaError::driver("cuStreamCreate", e))?;
            // The backward keeps whole spectra even where the forward needs none.
            let tmp = stream
                .alloc_zeros::<u8>(self.schedule.spectra_bytes().max(4))
                .map_err(|e| CudaError::driver("cuMemAlloc", e))?;
            // The buffer is used from other streams too (caller streams): allocated and zeroed
            // before any of them sees it.
            sync(&stream)?;
            *guard = Some(Execution {
                stream,
                tmp,
                host: None,
                pending: None,
            });
        }
        Ok(guard)
    }

    fn host_io(&self) -> Result<HostIo, CudaError> {
        let stream = &self.device.stream;
        let bytes = self.schedule.stream_bytes().max(4);
        let alloc = || {
            stream
                .alloc_zeros::<u8>(bytes)
                .map_err(|e| CudaError::driver("cuMemAlloc", e))
        };
        let gated = self.spec.gated();
        let io = HostIo {
            u: alloc()?,
            pre: if gated { Some(alloc()?) } else { None },
            post: if gated { Some(alloc()?) } else { None },
            y: alloc()?,
            staging: vec![0u8; bytes],
        };
        sync(stream)?;
        Ok(io)
    }

    /// Launches the forward passes of one chunk on the execution's stream.
    fn launch_forward(
        &self,
        stream: &CudaStream,
        exec: &Execution,
        filter: &CudaFilterSpectrum,
        chunk: Chunk,
        io: Io<'_>,
    ) -> Result<(), CudaError> {
        let (u, pre, post, y) = match io {
            Io::Host => {
                let host = exec.host.as_ref().expect("made for host calls");
                (&host.u, host.pre.as_ref(), host.post.as_ref(), &host.y)
            }
            Io::Device { u, gates, y } => (
                &u.buffer,
                gates.map(|g| &g.0.buffer),
                gates.map(|g| &g.1.buffer),
                &y.buffer,
            ),
        };
        let u = address(u, stream);
        let buffers = KernelBuffers {
            u,
            pre: pre.map_or(u, |b| address(b, stream)),
            post: post.map_or(u, |b| address(b, stream)),
            y: address(y, stream),
            spectrum: address(&filter.buffer, stream),
            twiddles: address(&self.twiddles, stream),
            tmp: address(&exec.tmp, stream),
            other: 0,
            taps: 0,
            y2: 0,
            taps_sum: 0,
            u2: 0,
            y3: 0,
        };
        let steps = self.schedule.forward_steps(chunk, matches!(io, Io::Host));
        if let (Some(kernels), Some(layout), Some(launches)) = (
            self.kernels.monarch.as_ref().filter(|_| self.monarch),
            filter.monarch.as_ref(),
            self.kernels
                .monarch
                .as_ref()
                .and_then(|m| {
                    let vec = monarch_vec_elems(self.spec.dtype());
                    monarch_launches(&steps, vec, m.clusters.is_some(), m.prefetch_slots)
                })
                .filter(|_| monarch_rows_aligned(&[u, buffers.pre, buffers.post, buffers.y])),
        ) {
            let buffers = KernelBuffers {
                spectrum: address(layout, stream),
                ..buffers
            };
            for (kernel, params) in launches {
                let (func, shared) = kernels.function(kernel, params.log2n).ok_or_else(|| {
                    CudaError::unsupported("a Monarch cluster launch without the cluster kernels")
                })?;
                let grid = kernel.grid_blocks();
                launch_kernel_grid(stream, func, 256, shared, &params, &buffers, grid)?;
            }
            return Ok(());
        }
        for (kind, params) in steps {
            self.launch(stream, kind, &params, &buffers)?;
        }
        Ok(())
    }

    /// Launches one pass.
    pub(crate) fn launch(
        &self,
        stream: &CudaStream,
        kind: PassKind,
        params: &PassParams,
        buffers: &KernelBuffers,
    ) -> Result<(), CudaError> {
        let k = &self.kernels;
        let (func, shared) = match kind {
            PassKind::Fused => (&k.fused, k.shared_bytes),
            PassKind::ColumnsForward => (&k.columns_forward, k.shared_bytes),
            PassKind::ColumnsInverse => (&k.columns_inverse, k.shared_bytes),
            PassKind::Gather => (&k.gather, 0),
        };
        self.launch_function(stream, func, shared, params, buffers)
    }

    /// Launches `func` over `params.total_lines / 2^lines_log2` blocks of the kernels' block size.
    pub(crate) fn launch_function(
        &self,
        stream: &CudaStream,
        func: &cudarc::driver::CudaFunction,
        shared: u32,
        params: &PassParams,
        buffers: &KernelBuffers,
    ) -> Result<(), CudaError> {
        launch_kernel(stream, func, self.kernels.threads, shared, params, buffers)
    }

    fn check_inputs(
        &self,
        filter: &CudaFilterSpectrum,
        dtype: DType,
        u_len: usize,
        gates: Option<(usize, usize)>,
        y_len: usize,
    ) -> Result<(), CudaError> {
        self.spec
            .check_io(dtype, u_len, gates, y_len)
            .map_err(core_invalid)?;
        if filter.geometry != *self.spec.geometry()
            || filter.channels != self.spec.channels()
            || filter.filter_len != self.spec.filter_len()
        {
            return Err(CudaError::invalid(
                "filter",
                "prepared for a different problem",
            ));
        }
        Ok(())
    }
}

/// The parameters of the Monarch filter kernels (`fftconv_monarch_filter_max`, then
/// `fftconv_monarch_filter`; 256 threads) for `spec`'s filter: rows of N points up to 16K, then
/// of 16K (`fftconv_monarch_middle`'s); a block per channel and row.
pub fn monarch_filter_params(spec: &ConvSpec) -> PassParams {
    let geometry = spec.geometry();
    let n = geometry.n();
    let line_log2 = n.ilog2().min(MONARCH_INNER_LOG2);
    PassParams {
        log2n: n.ilog2(),
        line_log2,
        kept_bins: geometry.kept_bins.min(n / 2 + 1) as u32,
        channels: spec.channels() as u32,
        total_lines: (spec.channels() << (n.ilog2() - line_log2)) as u32,
        ..PassParams::default()
    }
}

/// Elements of `dtype` per 16-byte vector of the Monarch kernels' row I/O (`VEC` of the kernel
/// file): rows and offsets must be multiples of it (`monarch_launches`' `vec`).
pub fn monarch_vec_elems(dtype: DType) -> u32 {
    16 / dtype.size_bytes() as u32
}

/// Whether device addresses are 16-byte aligned, as the Monarch kernels' row I/O needs (with
/// `monarch_launches`' row checks: `vector_rows` of the kernel file).
pub(crate) fn monarch_rows_aligned(addresses: &[u64]) -> bool {
    addresses.iter().all(|a| a % 16 == 0)
}

/// A kernel of the Monarch backward (`kernels/fftconv.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonarchBackwardKernel {
    /// `fftconv_monarch_backward`: N = 256 .. 4096, 16 rows of 256 points per block.
    Narrow,
    /// `fftconv_monarch_backward_wide_8k` (8K) and `fftconv_monarch_backward_wide` (16K), one
    /// pair per block.
    Wide,
    /// From 32K: `fftconv_monarch_backward_scales` (a block per pair and 16K slice) and
    /// `_scales_finish` (a warp per pair), `_columns_forward` and `_columns_inverse` (256 columns
    /// per block; from 512K `_tile_columns_forward` and `_tile_columns_inverse`, 32 columns
    /// through a shared tile), `_middle` (a 16K row per block).
    Scales,
    ScalesFinish,
    ColumnsForward,
    Middle,
    ColumnsInverse,
}

/// The Monarch backward's launches from the fused backward's parameters
/// (`PassSchedule::fused_backward_params`, whatever the plan's passes): one segment per row,
/// rows of a multiple of `vec` elements, N = 256 .. 16384 in one launch (up to 4K 16 rows of
/// 256 points per block, 2^(13 - log2 N) rows of the chunk; then one pair) or 32K .. 4M in
/// four (not where circular history wraps: its dx needs another column's value).
pub fn monarch_backward_launches(
    p: &PassParams,
    vec: u32,
) -> Option<Vec<(MonarchBackwardKernel, PassParams)>> {
    let allowed = FLAG_GATED | FLAG_WRAPS | FLAG_F32_ROUNDS;
    let ok = (8..=MONARCH_INNER_LOG2 + 8).contains(&p.log2n)
        && p.blocks == 1
        && p.flags & !allowed == 0
        && p.seq_len % vec == 0
        && p.element_offset % vec == 0;
    if !ok {
        return None;
    }
    if p.log2n <= MONARCH_INNER_LOG2 {
        let kernel = if p.log2n > 12 {
            MonarchBackwardKernel::Wide
        } else {
            MonarchBackwardKernel::Narrow
        };
        let params = PassParams {
            lines_log2: 13u32.saturating_sub(p.log2n).max(1),
            ..*p
        };
        return Some(vec![(kernel, params)]);
    }
    if p.flags & FLAG_WRAPS != 0 && p.history != 0 {
        return None;
    }
    let pairs = p.channels.checked_mul(p.pairs)?;
    let with_lines = |total_lines: u32| PassParams {
        total_lines,
        line_log2: MONARCH_INNER_LOG2,
        lines_log2: 0,
        ..*p
    };
    let columns = monarch_column_blocks(pairs, p.log2n)?;
    let rows = pairs.checked_mul(1 << (p.log2n - MONARCH_INNER_LOG2))?;
    Some(vec![
        (MonarchBackwardKernel::Scales, with_lines(rows)),
        (
            MonarchBackwardKernel::ScalesFinish,
            PassParams {
                lines_log2: MONARCH_FINISH_PAIRS_LOG2,
                ..with_lines(pairs)
            },
        ),
        (MonarchBackwardKernel::ColumnsForward, with_lines(columns)),
        (MonarchBackwardKernel::Middle, with_lines(rows)),
        (MonarchBackwardKernel::ColumnsInverse, with_lines(columns)),
    ])
}

/// The split Monarch backward's filter-gradient launch (`fftconv_monarch_backward_taps`, 8K and
/// 16K `_taps_wide`) for the fused backward's parameters `p`, where it applies: N = 256 .. 16384, one block per row, ungated
/// and causal (du then comes from `fftconv_monarch` with the filter conjugated, which needs
/// the forward's own segment layout; circular where L = N). A block per channel and group of pairs, as many groups
/// per channel as reach `target_blocks` blocks in all (at most one per pair): the pairs per
/// group in `stage_count`, the groups per channel returned beside the parameters (the taps
/// sum's rows per channel).
pub fn monarch_split_taps_params(p: &PassParams, target_blocks: u32) -> Option<(PassParams, u32)> {
    // Circular without history (L = N) too: du is then the circular correlation, exactly what
    // the forward kernel computes with conj(K); the taps never wrap.
    let wraps_whole = p.flags & FLAG_WRAPS != 0 && p.history == 0;
    let ok = (8..=14).contains(&p.log2n)
        && p.blocks == 1
        && (p.flags & !FLAG_F32_ROUNDS == 0
            || (wraps_whole && p.flags & !(FLAG_F32_ROUNDS | FLAG_WRAPS) == 0))
        && p.pairs > 0
        && p.channels > 0;
    if !ok {
        return None;
    }
    // Below 4K a block holds 16 / N1 pairs side by side (N1 = N / 256 rows each): a group's
    // pairs as a whole number of such sets where the channel has that many.
    let side_by_side = 1u32 << 12u32.saturating_sub(p.log2n);
    let groups_wanted = target_blocks.div_ceil(p.channels).clamp(1, p.pairs);
    let per = p
        .pairs
        .div_ceil(groups_wanted)
        .next_multiple_of(side_by_side)
        .min(p.pairs);
    let groups = p.pairs.div_ceil(per);
    Some((
        PassParams {
            stage_count: per,
            total_lines: p.channels.checked_mul(groups)?,
            lines_log2: 0,
            ..*p
        },
        groups,
    ))
}

/// Blocks of the Monarch column passes (forward and backward) for `pairs` pairs at N = 2^log2n:
/// 256 columns per block (one per thread) up to N_o = 16, then 32 (a shared tile).
fn monarch_column_blocks(pairs: u32, log2n: u32) -> Option<u32> {
    let columns_log2 = if log2n - MONARCH_INNER_LOG2 > 4 { 5 } else { 8 };
    pairs.checked_mul(1 << (MONARCH_INNER_LOG2 - columns_log2))
}

/// A kernel of the Monarch tensor-core pass (`kernels/fftconv.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonarchKernel {
    /// `fftconv_monarch`: N = 256 .. 4096, 16 rows of 256 points per block.
    Forward,
    /// `fftconv_monarch_prefetch`: N = 256 .. 4096, `Forward`'s tiles one after another per
    /// block, every `blocks`-th tile of the launch (a grid of `blocks`, at most one per
    /// resident slot: [`MonarchKernel::grid_blocks`]), the next tile's input prefetched (its
    /// staging twice as large when `gated`).
    Prefetch { gated: bool, blocks: u32 },
    /// `fftconv_monarch_wide`: N = 8192, 16384, one pair per block.
    Wide,
    /// `fftconv_monarch_scales`: N = 32K .. 4M, each 16K slice's largest |value| and scaled sum
    /// of |value| per row (a block per pair and slice).
    Scales,
    /// `fftconv_monarch_scales_finish`: the slices merged into each row's scale and the pair's
    /// product scale (a warp per pair).
    ScalesFinish,
    /// `fftconv_monarch_columns_forward`: the N_o-point column DFTs (256 columns per block, 32
    /// through a shared tile from N_o = 32).
    ColumnsForward,
    /// `fftconv_monarch_middle`: one 16K-point row of the intermediate per block.
    Middle,
    /// `fftconv_monarch_columns_inverse`: the inverse column DFTs to `y`.
    ColumnsInverse,
    /// `fftconv_monarch_cluster2` / `4` / `8` (sm_90): the whole forward of N = 32K .. 128K,
    /// a cluster of N / 16K blocks per pair, each holding one 16K-point row.
    Cluster,
}

impl MonarchKernel {
    /// The launch's grid where the kernel sets it itself (`fftconv_monarch_prefetch`), rather
    /// than `ceil(total_lines / 2^lines_log2)` blocks.
    pub fn grid_blocks(self) -> Option<u32> {
        match self {
            MonarchKernel::Prefetch { blocks, .. } => Some(blocks),
            _ => None,
        }
    }
}

/// log2 of the Monarch pass's row length from 32K (`MT_INNER_LOG2` of the kernel file).
pub(crate) const MONARCH_INNER_LOG2: u32 = 14;

/// log2 of the pairs per block of the scales' second pass (a warp each, 256 threads).
const MONARCH_FINISH_PAIRS_LOG2: u32 = 3;

/// The launches of the Monarch tensor-core pass where it can run a chunk's forward (`steps`, the
/// schedule's): plain forward flags (gates and circular history allowed), rows and overlap-save
/// blocks of whole 16-byte vectors (partial convolutions too: each pair is two segments of a
/// channel), and either one fused step of N = 256 .. 16384 (one launch; up to 4096 its
/// blocks hold 16 rows of 256 points, 2^(12 - log2 N) pairs, beyond that one pair) or, for
/// N = 32K .. 4M, column passes around a fused step (four launches: row scales, forward
/// columns, the 16K-point rows, inverse columns; every block one pair, and 256 columns (32 from
/// 512K), or one row). With `clusters` (the device has the cluster kernels), N = 32K .. 128K
/// is one cluster launch instead (a block per 16K-point row, N / 16K blocks a cluster).
/// With `prefetch_slots` (the device holds that many blocks of `fftconv_monarch_prefetch` at
/// once), N = 256 .. 4096 runs that kernel instead, a grid of at most that many blocks
/// ([`MonarchKernel::grid_blocks`]).
pub fn monarch_launches(
    steps: &[(PassKind, PassParams)],
    vec: u32,
    clusters: bool,
    prefetch_slots: Option<u32>,
) -> Option<Vec<(MonarchKernel, PassParams)>> {
    let io = FLAG_SRC_INPUT | FLAG_DST_OUTPUT;
    let extra = FLAG_GATED | FLAG_WRAPS;
    // The kernels' 16-byte row I/O: rows of a multiple of `vec` elements from such an element,
    // and overlap-save blocks too (monarch-core's BLOCK_ALIGN makes them so).
    if !steps.iter().all(|(_, p)| {
        p.seq_len % vec == 0
            && p.element_offset % vec == 0
            && (p.blocks == 1 || p.block_len % vec == 0)
    }) {
        return None;
    }
    if let [(PassKind::Fused, p)] = steps {
        let ok = p.line_log2 == p.log2n
            && (8..=14).contains(&p.log2n)
            && p.stage_count == 0
            && p.flags & io == io
            && p.flags & !(io | extra) == 0;
        // A tile: 16 rows of 256 points, 2^tile_log2 pairs.
        let tile_log2 = 12u32.saturating_sub(p.log2n);
        // The prefetching kernel: a block per resident slot (every block resident from the
        // start, none waiting for another to finish), or per tile where there are fewer.
        let kernel = match prefetch_slots {
            _ if p.log2n > 12 => MonarchKernel::Wide,
            Some(slots) => MonarchKernel::Prefetch {
                gated: p.flags & FLAG_GATED != 0,
                blocks: p
                    .total_lines
                    .div_ceil(1 << tile_log2)
                    .clamp(1, slots.max(1)),
            },
            None => MonarchKernel::Forward,
        };
        let lines_log2 = tile_log2;
        return ok.then(|| vec![(kernel, PassParams { lines_log2, ..*p })]);
    }
    let [(PassKind::ColumnsForward, first), .., (PassKind::ColumnsInverse, last)] = steps else {
        return None;
    };
    let ok = (MONARCH_INNER_LOG2 + 1..=MONARCH_INNER_LOG2 + 8).contains(&first.log2n)
        && first.flags & FLAG_SRC_INPUT != 0
        && first.flags & !(FLAG_SRC_INPUT | extra) == 0
        && last.flags & FLAG_DST_OUTPUT != 0
        && last.flags & !(FLAG_DST_OUTPUT | extra) == 0;
    if !ok {
        return None;
    }
    let pairs = first.channels.checked_mul(first.pairs)?;
    let base = PassParams {
        flags: io | (first.flags & extra),
        line_log2: MONARCH_INNER_LOG2,
        stride_log2: 0,
        lines_log2: 0,
        stage_bits: 0,
        stage_count: 0,
        ..*first
    };
    let with_lines = |total_lines: u32| PassParams {
        total_lines,
        ..base
    };
    let rows = pairs.checked_mul(1 << (first.log2n - MONARCH_INNER_LOG2))?;
    // A 1-D grid of whole clusters (`launch_kernel`'s grid is 1-D up to i32::MAX blocks).
    if clusters && first.log2n <= MONARCH_INNER_LOG2 + 3 && rows <= i32::MAX as u32 {
        return Some(vec![(MonarchKernel::Cluster, with_lines(rows))]);
    }
    let columns = monarch_column_blocks(pairs, first.log2n)?;
    Some(vec![
        (MonarchKernel::Scales, with_lines(rows)),
        (
            MonarchKernel::ScalesFinish,
            PassParams {
                lines_log2: MONARCH_FINISH_PAIRS_LOG2,
                ..with_lines(pairs)
            },
        ),
        (MonarchKernel::ColumnsForward, with_lines(columns)),
        (MonarchKernel::Middle, with_lines(rows)),
        (MonarchKernel::ColumnsInverse, with_lines(columns)),
    ])
}

/// The filter spectrum of `k: [H, K]` computed on the host: per channel the first `kept_bins`
/// bins of the zero-padded filter's length-N real FFT, scaled by `1/N`, as complex f32 bytes.
pub(crate) fn host_filter_spectrum(spec: &ConvSpec, k: &[f32]) -> Result<Vec<u8>, CudaError> {
    let geometry = spec.geometry();
    let n = geometry.n();
    let klen = spec.filter_len();
    let kept = geometry.kept_bins.min(n / 2 + 1);
    let fft = realfft::RealFftPlanner::<f32>::new().plan_fft_forward(n);
    let mut signal = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    let scale = 1.0 / n as f32;
    let mut bytes = Vec::with_capacity(spec.channels() * kept * 8);
    for row in k.chunks_exact(klen) {
        signal.fill(0.0);
        signal[..klen].copy_from_slice(row);
        fft.process_with_scratch(&mut signal, &mut spectrum, &mut scratch)
            .map_err(|e| CudaError::invalid("k", e.to_string()))?;
        for c in &spectrum[..kept] {
            bytes.extend_from_slice(&(c.re * scale).to_ne_bytes());
            bytes.extend_from_slice(&(c.im * scale).to_ne_bytes());
        }
    }
    Ok(bytes)
}

/// Launches `func` over `params.total_lines / 2^lines_log2` blocks of `threads` threads with
/// the kernels' three arguments.
pub(crate) fn launch_kernel(
    stream: &CudaStream,
    func: &cudarc::driver::CudaFunction,
    threads: u32,
    shared: u32,
    params: &PassParams,
    buffers: &KernelBuffers,
) -> Result<(), CudaError> {
    launch_kernel_grid(stream, func, threads, shared, params, buffers, None)
}

/// [`launch_kernel`] with a grid of `blocks` blocks where given (kernels that stride over the
/// launch's lines by the grid, [`MonarchKernel::grid_blocks`]).
pub(crate) fn launch_kernel_grid(
    stream: &CudaStream,
    func: &cudarc::driver::CudaFunction,
    threads: u32,
    shared: u32,
    params: &PassParams,
    buffers: &KernelBuffers,
    blocks: Option<u32>,
) -> Result<(), CudaError> {
    let groups = blocks
        .map_or_else(
            || (params.total_lines as u64).div_ceil(1 << params.lines_log2),
            u64::from,
        )
        .max(1);
    let x = groups.min(i32::MAX as u64);
    let y = groups.div_ceil(x);
    if y > 65_535 {
        return Err(CudaError::unsupported(format!(
            "{groups} blocks exceed the grid"
        )));
    }
    let cfg = LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared,
    };
    let p = KernelParams(*params);
    let divisors = KernelDivisors::new(params);
    let mut launch = stream.launch_builder(func);
    launch.arg(&p).arg(buffers).arg(&divisors);
    // SAFETY: the kernel's parameters are (Params, Buffers, Divisors) by value, matching the
    // three arguments; every pointer in `buffers` is a live allocation sized for the launch (or
    // unused by the kernel with these flags); shared memory is within the function's attribute.
    unsafe { launch.launch(cfg) }.map_err(|e| CudaError::driver("cuLaunchKernel", e))?;
    Ok(())
}

/// The kernels' twiddle tables: for every power of two `M <= n`, `W_M^e` (`e < M`) at entry
/// `M + e` (entry 0 unused): `2n` complex f32, each computed in f64 and rounded once.
fn twiddle_tables(n: usize) -> Vec<u8> {
    let mut table = vec![0u8; 2 * n * 8];
    let mut m = 1usize;
    while m <= n {
        for e in 0..m {
            let w = root_of_unity(e as u64, m as u64);
            let at = (m + e) * 8;
            table[at..at + 4].copy_from_slice(&(w.re as f32).to_ne_bytes());
            table[at + 4..at + 8].copy_from_slice(&(w.im as f32).to_ne_bytes());
        }
        m *= 2;
    }
    table
}

/// An argument error of the problem's checks as this backend's [`CudaError::InvalidArgument`].
pub(crate) fn core_invalid(e: monarch_core::CoreError) -> CudaError {
    match e {
        monarch_core::CoreError::InvalidArgument { arg, reason } => CudaError::invalid(arg, reason),
        other => CudaError::unsupported(other.to_string()),
    }
}

pub(crate) fn copy_to_bytes<T: Element>(src: &[T], dst: &mut [u8]) {
    let n = std::mem::size_of_val(src);
    // SAFETY: f32, f16 and bf16 (the only `Element`s) are plain data without padding.
    let bytes = unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<u8>(), n) };
    dst[..n].copy_from_slice(bytes);
}

pub(crate) fn copy_from_bytes<T: Element>(src: &[u8], dst: &mut [T]) {
    let n = std::mem::size_of_val(dst);
    // SAFETY: as above; every bit pattern is a valid f32, f16 or bf16.
    let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), n) };
    bytes.copy_from_slice(&src[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_core::schedule::FLAG_CONJ_FILTER;

    /// The Monarch pass takes the forward of one-pass plans with N = 256 .. 16384 and of
    /// plans with column passes from 32K to 4M, with rows and blocks of whole vectors, and
    /// nothing else (longer N, ragged rows or blocks, backward flags).
    #[test]
    fn monarch_launches_take_only_what_the_pass_runs() {
        let fused = |log2n: u32, blocks: u32, flags: u32| {
            vec![(
                PassKind::Fused,
                PassParams {
                    log2n,
                    line_log2: log2n,
                    lines_log2: 0,
                    blocks,
                    flags,
                    ..PassParams::default()
                },
            )]
        };
        let io = FLAG_SRC_INPUT | FLAG_DST_OUTPUT;
        for log2n in 8..=14 {
            let launches = monarch_launches(
                &fused(log2n, 1, io | FLAG_GATED | FLAG_WRAPS),
                8,
                true,
                None,
            )
            .expect("a one-pass forward of N = 256 .. 16384");
            let [(kernel, p)] = launches[..] else {
                panic!("one launch: {launches:?}");
            };
            // 16 rows of 256 points per block (N / 256 rows per pair), or one pair from 8K.
            assert_eq!(p.lines_log2 + (log2n - 8).min(4), 4);
            let wide = log2n > 12;
            assert_eq!(
                kernel,
                if wide {
                    MonarchKernel::Wide
                } else {
                    MonarchKernel::Forward
                }
            );
        }
        assert!(monarch_launches(&fused(7, 1, io), 8, true, None).is_none());
        assert!(monarch_launches(&fused(15, 1, io), 8, true, None).is_none());
        // Overlap-save blocks (a partial convolution) of whole vectors only.
        let mut blocked = fused(12, 3, io);
        blocked[0].1.block_len = 4096 - 1000;
        assert!(monarch_launches(&blocked, 8, true, None).is_some());
        blocked[0].1.block_len = 4096 - 1003;
        assert!(monarch_launches(&blocked, 8, true, None).is_none());
        assert!(monarch_launches(&fused(12, 1, io | FLAG_CONJ_FILTER), 8, true, None).is_none());
        assert!(monarch_launches(
            &fused(12, 1, FLAG_SRC_INPUT | FLAG_NO_INVERSE),
            8,
            true,
            None
        )
        .is_none());
        let mut two = fused(12, 1, io);
        two.push(two[0]);
        assert!(monarch_launches(&two, 8, true, None).is_none());
        // Rows the kernels' 16-byte I/O cannot take.
        let mut ragged = fused(12, 1, io);
        ragged[0].1.seq_len = 203;
        assert!(monarch_launches(&ragged, 8, true, None).is_none());
        ragged[0].1.seq_len = 208;
        ragged[0].1.element_offset = 4;
        assert!(monarch_launches(&ragged, 8, true, None).is_none());

        // The prefetching forward: up to 4K only, a tile's lines per block, a grid of at most
        // one block per slot (every slot where there are as many tiles).
        for (log2n, pairs, slots, want_lines_log2, want_blocks) in [
            (8, 1536 * 16, 396, 4, 396), // ANCHORS' 256: 1536 tiles
            (12, 8192, 396, 0, 396),     // ThunderKittens' 4K: 8192 tiles
            (10, 9, 2, 2, 2),            // 3 tiles, the last partial
            (11, 2, 396, 1, 1),          // one tile: one block
            (9, 8 * 300, 396, 3, 300),   // 300 tiles: a block each
        ] {
            let mut steps = fused(log2n, 1, io | FLAG_GATED);
            steps[0].1.total_lines = pairs;
            let launches = monarch_launches(&steps, 8, false, Some(slots)).expect("prefetch");
            let [(kernel, p)] = launches[..] else {
                panic!("one launch: {launches:?}");
            };
            assert_eq!(
                kernel,
                MonarchKernel::Prefetch {
                    gated: true,
                    blocks: want_blocks
                }
            );
            assert_eq!(kernel.grid_blocks(), Some(want_blocks));
            assert_eq!(
                p.lines_log2, want_lines_log2,
                "N = 2^{log2n}, {pairs} pairs"
            );
        }
        let launches = monarch_launches(&fused(13, 1, io), 8, false, Some(396)).expect("8K");
        assert_eq!(launches[0].0, MonarchKernel::Wide);
        assert_eq!(launches[0].0.grid_blocks(), None);

        // Column passes around a fused step: the schedule's steps for 32K .. 4M.
        for (log2n, gated, circular) in [
            (15, false, false),
            (16, true, false),
            (17, false, true),
            (18, false, true),
            (19, false, false),
            (22, true, false),
        ] {
            let mut b = ConvSpec::builder(3, 5, 1 << (log2n - 1), 1 << (log2n - 1))
                .dtype(DType::F16)
                .gated(gated);
            if circular {
                b = ConvSpec::builder(3, 5, 1 << log2n, 1 << log2n)
                    .dtype(DType::F16)
                    .circular();
            }
            let spec = b.build().expect("spec");
            let limits = PlanLimits {
                max_factor: 16384,
                preferred_factor: 16384,
                on_chip_bytes: 16384 * 8,
                bytes_per_element: 8,
            };
            let plan = MonarchPlan::cached(spec.geometry().fft_size, &limits).expect("plan");
            let schedule = PassSchedule::new(&spec, &plan, 16384, 1 << 30).expect("schedule");
            let chunk = schedule.chunks().next().expect("a chunk");
            let steps = schedule.forward_steps(chunk, false);
            assert!(steps.len() >= 3, "{log2n}: {steps:?}");
            let launches = monarch_launches(&steps, 8, false, None).expect("a Monarch problem");
            let kernels: Vec<MonarchKernel> = launches.iter().map(|l| l.0).collect();
            assert_eq!(
                kernels,
                [
                    MonarchKernel::Scales,
                    MonarchKernel::ScalesFinish,
                    MonarchKernel::ColumnsForward,
                    MonarchKernel::Middle,
                    MonarchKernel::ColumnsInverse
                ]
            );
            let pairs = 5 * 2; // B = 3: two pairs per channel
            let lines: Vec<u32> = launches.iter().map(|l| l.1.total_lines).collect();
            let columns = if log2n > 18 { pairs * 512 } else { pairs * 64 };
            let rows = pairs << (log2n - 14);
            // The scales: a block per 16K slice, then a warp (8 a block) per pair.
            assert_eq!(lines, [rows, pairs, columns, rows, columns]);
            assert_eq!(launches[1].1.lines_log2, 3);
            // With the cluster kernels (sm_90): one launch of a block per 16K-point row up to
            // 128K, the four launches beyond.
            let clustered = monarch_launches(&steps, 8, true, None).expect("a Monarch problem");
            if log2n <= 17 {
                assert_eq!(clustered.len(), 1, "{log2n}: {clustered:?}");
                assert_eq!(clustered[0].0, MonarchKernel::Cluster);
                assert_eq!(clustered[0].1.total_lines, pairs << (log2n - 14));
            } else {
                assert_eq!(clustered, launches);
            }
            for (kernel, p) in launches.iter().chain(&clustered) {
                let lines_log2 = if *kernel == MonarchKernel::ScalesFinish {
                    3
                } else {
                    0
                };
                assert_eq!(
                    (p.log2n, p.line_log2, p.lines_log2),
                    (log2n, 14, lines_log2)
                );
                assert_eq!(p.flags & io, io);
                assert_eq!(p.flags & FLAG_GATED != 0, gated);
                assert_eq!(p.flags & FLAG_WRAPS != 0, circular);
            }
        }
    }

    /// The Monarch backward takes one-segment rows of whole vectors, N = 256 .. 4M (from 32K
    /// four launches, not where circular history wraps), and nothing else.
    #[test]
    fn monarch_split_taps_groups_cover_every_pair_once() {
        let params = |log2n: u32, flags: u32, channels: u32, pairs: u32| PassParams {
            log2n,
            flags: flags | FLAG_F32_ROUNDS,
            blocks: 1,
            seq_len: 1 << (log2n - 1),
            channels,
            pairs,
            ..PassParams::default()
        };
        // The anchors' 4K backward: 768 channels, 20 pairs each: two groups of 10 per channel.
        let (p, groups) = monarch_split_taps_params(&params(12, 0, 768, 20), 1024).expect("taken");
        assert_eq!(
            (p.stage_count, groups, p.total_lines, p.lines_log2),
            (10, 2, 1536, 0)
        );
        for (channels, pairs, target) in [(2, 3, 1), (3, 7, 1 << 20), (5, 9, 12), (1, 1, 1024)] {
            let (p, groups) =
                monarch_split_taps_params(&params(12, 0, channels, pairs), target).expect("taken");
            // Every pair in exactly one group, no empty group.
            assert!(groups * p.stage_count >= pairs && (groups - 1) * p.stage_count < pairs);
            assert_eq!(p.total_lines, channels * groups);
            if target == 1 {
                assert_eq!(groups, 1);
            }
        }
        // Below 4K a group's pairs are whole sets of 16 / N1 (side by side in a block), but
        // never more than the channel has.
        for (log2n, pairs, target, per, groups) in [
            (8, 326, 1024, 176, 2),
            (8, 5, 1024, 5, 1),
            (9, 20, 1 << 20, 8, 3),
            (11, 41, 1024, 22, 2),
            (11, 41, 1, 41, 1),
        ] {
            let (p, g) =
                monarch_split_taps_params(&params(log2n, 0, 768, pairs), target).expect("taken");
            assert_eq!(
                (p.stage_count, g),
                (per, groups),
                "{log2n} {pairs} {target}"
            );
            assert_eq!(p.total_lines, 768 * g);
        }
        // 8K (one pair per step of the wide taps kernel): the pairs split evenly, the anchors'
        // 768 channels of 10 pairs in one group each at the wide target.
        for (pairs, target, per, groups) in [(10, 512, 10, 1), (10, 1536, 5, 2), (7, 1 << 20, 1, 7)]
        {
            let (p, g) = monarch_split_taps_params(&params(13, 0, 768, pairs), target).expect("8K");
            assert_eq!((p.stage_count, g), (per, groups), "8K {pairs} {target}");
        }
        // Only N = 256 .. 16K, ungated, one-block problems, causal or circular without history.
        for (log2n, flags) in [
            (15, 0),
            (14, FLAG_GATED),
            (13, FLAG_GATED),
            (11, FLAG_GATED),
            (12, FLAG_GATED),
            (12, FLAG_GATED | FLAG_WRAPS),
        ] {
            assert!(monarch_split_taps_params(&params(log2n, flags, 2, 2), 1024).is_none());
        }
        assert!(monarch_split_taps_params(&params(12, FLAG_WRAPS, 2, 2), 1024).is_some());
        let mut p = params(12, FLAG_WRAPS, 2, 2);
        p.history = 100;
        assert!(monarch_split_taps_params(&p, 1024).is_none());
        let mut p = params(12, 0, 2, 2);
        p.blocks = 2;
        assert!(monarch_split_taps_params(&p, 1024).is_none());
    }

    #[test]
    fn monarch_backward_launches_take_only_what_the_kernels_run() {
        let params = |log2n: u32, flags: u32| PassParams {
            log2n,
            flags: flags | FLAG_F32_ROUNDS,
            blocks: 1,
            seq_len: 1 << (log2n - 1),
            channels: 3,
            pairs: 2,
            ..PassParams::default()
        };
        for log2n in 8..=22 {
            let launches = monarch_backward_launches(&params(log2n, FLAG_GATED), 8).expect("taken");
            let kernels: Vec<MonarchBackwardKernel> = launches.iter().map(|l| l.0).collect();
            match log2n {
                8..=12 => assert_eq!(kernels, [MonarchBackwardKernel::Narrow]),
                13 | 14 => assert_eq!(kernels, [MonarchBackwardKernel::Wide]),
                _ => {
                    assert_eq!(
                        kernels,
                        [
                            MonarchBackwardKernel::Scales,
                            MonarchBackwardKernel::ScalesFinish,
                            MonarchBackwardKernel::ColumnsForward,
                            MonarchBackwardKernel::Middle,
                            MonarchBackwardKernel::ColumnsInverse
                        ]
                    );
                    let lines: Vec<u32> = launches.iter().map(|l| l.1.total_lines).collect();
                    // 256 columns per block, 32 (a shared tile) from 512K.
                    let columns = if log2n > 18 { 6 * 512 } else { 6 * 64 };
                    let rows = 6 << (log2n - 14);
                    assert_eq!(lines, [rows, 6, columns, rows, columns]);
                    assert_eq!(launches[1].1.lines_log2, 3);
                }
            }
        }
        assert!(monarch_backward_launches(&params(7, 0), 8).is_none());
        assert!(monarch_backward_launches(&params(23, 0), 8).is_none());
        let mut p = params(12, 0);
        p.blocks = 2;
        assert!(monarch_backward_launches(&p, 8).is_none());
        let mut p = params(12, 0);
        p.seq_len = 203;
        assert!(monarch_backward_launches(&p, 8).is_none());
        let mut p = params(16, FLAG_WRAPS);
        assert!(monarch_backward_launches(&p, 8).is_some());
        p.history = 99;
        assert!(monarch_backward_launches(&p, 8).is_none());
        assert!(monarch_backward_launches(&params(12, FLAG_CONJ_FILTER), 8).is_none());
    }

    /// The Monarch backward's shared memory: 16K gated fits Hopper's 227 KiB per block only;
    /// every size fits an sm_86's 99 KiB ungated up to 8K (`launch_backward` checks).
    #[test]
    fn monarch_backward_shared_memory_fits_where_taken() {
        use crate::device::{monarch_backward_shared_bytes, monarch_shared_limit};
        let (hopper, ampere, ada) = (232_448, 166_912, 101_376);
        assert!(monarch_backward_shared_bytes(14, true) <= monarch_shared_limit(hopper));
        assert!(monarch_backward_shared_bytes(14, true) > monarch_shared_limit(ampere));
        assert!(monarch_backward_shared_bytes(14, false) <= monarch_shared_limit(ampere));
        assert!(monarch_backward_shared_bytes(13, false) <= monarch_shared_limit(ada));
        assert!(monarch_backward_shared_bytes(13, true) > monarch_shared_limit(ada));
        for log2n in 8..=12 {
            assert_eq!(
                monarch_backward_shared_bytes(log2n, true),
                3 * 2 * 16 * 264 * 2
            );
        }
    }

    #[test]
    fn divisors_divide_exactly() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut divisors: Vec<u32> = (0..=1000)
            .chain([u32::MAX, u32::MAX - 1, 1 << 31, (1 << 31) + 1, 3 << 30])
            .collect();
        divisors.extend((0..2000).map(|_| (next() >> (next() % 32)) as u32));
        for d in divisors {
            let v = Divisor::new(d);
            let d = d.max(1);
            let mut ns: Vec<u32> = vec![0, 1, d - 1, d, d.wrapping_add(1), u32::MAX, u32::MAX - 1];
            ns.extend((0..200).map(|_| (next() >> (next() % 32)) as u32));
            for n in ns {
                assert_eq!(v.divide(n), n / d, "{n} / {d}");
            }
        }
    }

    #[test]
    fn twiddle_tables_hold_every_size() {
        let t = twiddle_tables(16);
        let at = |i: usize| {
            let re = f32::from_ne_bytes(t[i * 8..i * 8 + 4].try_into().unwrap());
            let im = f32::from_ne_bytes(t[i * 8 + 4..i * 8 + 8].try_into().unwrap());
            (re, im)
        };
        assert_eq!(t.len(), 32 * 8);
        assert_eq!(at(1), (1.0, 0.0)); // W_1^0
        assert_eq!(at(2 + 1), (-1.0, 0.0)); // W_2^1
        assert_eq!(at(4 + 1), (0.0, -1.0)); // W_4^1
        let (re, im) = at(16 + 3); // W_16^3
        let angle = -2.0 * std::f64::consts::PI * 3.0 / 16.0;
        assert!(
            (f64::from(re) - angle.cos()).abs() < 1e-7
                && (f64::from(im) - angle.sin()).abs() < 1e-7
        );
    }
}
