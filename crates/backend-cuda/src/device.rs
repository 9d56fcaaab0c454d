//! The process's CUDA device ([`CudaDevice`]: one context, its limits, its stream) and the
//! compiled kernel modules ([`Kernels`], NVRTC at run time, cached in memory and on disk).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::sys::{self as nvrtc_sys, nvrtcResult};
use monarch_core::DType;

use crate::convolution::{MonarchBackwardKernel, MonarchKernel};
use crate::probe::{guarded, probe, CudaDeviceInfo};
use crate::CudaError;

/// Environment variable: the ordinal of the CUDA device to use (default 0).
pub const DEVICE_ENV: &str = "FFTCONV_CUDA_DEVICE";
/// Environment variable: the folder of the on-disk kernel cache (default
/// `$XDG_CACHE_HOME/fftconv/cuda` or `~/.cache/fftconv/cuda`); `off` disables it.
pub const CACHE_ENV: &str = "FFTCONV_CUDA_CACHE";
/// Environment variable: `1` switches off the shared-memory padding against bank conflicts (for
/// comparing both on a GPU).
pub const NO_PAD_ENV: &str = "FFTCONV_CUDA_NO_PAD";
/// Environment variable: threads per block (a power of two, 64 .. 1024) instead of the default
/// (a sixteenth of the block's points, 256 .. 1024), for tuning on a GPU.
pub const THREADS_ENV: &str = "FFTCONV_CUDA_THREADS";
/// Environment variable: `4` runs four radix-2 stages per round (16 points per thread in
/// registers) instead of three; an experiment for timing on a GPU (unmeasured so far).
pub const RADIX_ENV: &str = "FFTCONV_CUDA_RADIX_LOG2";
/// Environment variable: `1` makes the fused pass locate each line's segments once per block (a
/// shared table) instead of once per point; an experiment for timing on a GPU (unmeasured so far).
pub const SEGMENT_TABLE_ENV: &str = "FFTCONV_CUDA_SEGMENT_TABLE";
/// Environment variable: `1` runs the radix-16 rounds of f16 and bf16 problems on the tensor
/// cores (`mma.sync` m16n8k16, f16 operands with a power-of-two scale per item, f32
/// accumulation; compute capability 8.0 or newer); an experiment, 1.6-1.8x slower on an H200
/// (docs/perf.md). f32 problems keep the f32 path.
pub const TENSOR_CORES_ENV: &str = "FFTCONV_CUDA_TENSOR_CORES";
/// Environment variable: `0` turns off the middle round (on by default since it measured faster):
/// the fused pass runs the forward's finest FFT round, the pointwise product and the inverse's
/// finest round as one register round (two shared-memory round trips and a barrier fewer; groups
/// whose bins frequency sparsity drops are skipped).
pub const MIDDLE_ROUND_ENV: &str = "FFTCONV_CUDA_MIDDLE_ROUND";
/// Environment variable: `1` makes the fused pass of one-pass plans read and write whole-row
/// segments 16 bytes per thread and row (one segment lookup per 8 f16 or 4 f32 points instead of
/// one per point); an experiment for timing on a GPU (unmeasured so far).
pub const VECTOR_IO_ENV: &str = "FFTCONV_CUDA_VECTOR_IO";
/// Environment variable: `1` compiles, per convolution, a module whose fused pass has the plan's
/// sizes (N, line length, lines per block, global stages) as compile-time constants (launches
/// that match run that copy; the others the generic one); an experiment for timing on a GPU
/// (unmeasured so far). Costs one more NVRTC compile per distinct plan (disk-cached).
pub const SPECIALIZE_ENV: &str = "FFTCONV_CUDA_SPECIALIZE";
/// Environment variable: blocks per SM the kernels leave registers for (1 .. 32, default 1:
/// `__launch_bounds__`'s second argument), for tuning occupancy against registers on a GPU.
pub const MIN_BLOCKS_ENV: &str = "FFTCONV_CUDA_MIN_BLOCKS";
/// Environment variable: `0` turns off the Monarch tensor-core pass, which by default runs the
/// forward and the backward of f16 and bf16 problems with N = 256 .. 4M (`fftconv_monarch`; for
/// 8K and 16K `fftconv_monarch_wide`; from 32K column passes around 16K-point rows with f16
/// intermediates; the backward's `fftconv_monarch_backward*` likewise, one segment per row: the
/// 256-point DFTs as chained 16 x 16 `mma.sync` products in registers, compute capability 8.0 or
/// newer). On the H200 it measured 1.2-2.2x faster than the default passes forward at every
/// size timed (256 .. 4M) and 1.1-1.8x backward (docs/perf.md); `0` is the A/B.
pub const MONARCH_ENV: &str = "FFTCONV_CUDA_MONARCH";
/// Environment variable: `1` runs the Monarch pass's forward of N = 32K .. 128K on compute
/// capability 9.0 and newer as one thread-block cluster per pair (`fftconv_monarch_cluster2/4/8`:
/// the 16K-point rows exchanged through distributed shared memory) instead of its four launches
/// through global memory. Off by default: on the H200 it measured 1.00x / 0.98x / 0.90x of the
/// four launches at 32K / 64K / 128K (docs/perf.md).
pub const MONARCH_CLUSTER_ENV: &str = "FFTCONV_CUDA_MONARCH_CLUSTER";
/// Environment variable: `1` runs the Monarch pass's one-launch forward of N = 256 .. 4096 as
/// `fftconv_monarch_prefetch`: a grid of at most one block per resident slot (SMs times the
/// blocks the occupancy calculator places per SM), each block running `fftconv_monarch`'s tiles
/// (16 rows of 256 points) one after another with the next tile's input rows copied into shared
/// memory (`cp.async`) while the current one is transformed, and its per-block constants built
/// once instead of per tile; the split backward's du (the forward of dy with the filter
/// conjugated) goes through it too, and its taps kernel (`fftconv_monarch_backward_taps_prefetch`)
/// stages each step's rows of x and dy during the step before. Off by default until a GPU has
/// timed it (docs/perf.md, session 24).
pub const MONARCH_PREFETCH_ENV: &str = "FFTCONV_CUDA_MONARCH_PREFETCH";

/// Dynamic shared memory of `fftconv_monarch_prefetch` for I/O elements of `elem_bytes` bytes:
/// `MT_STAGE_SLOTS` 16-byte vectors per thread (a thread's two chunks of 8 positions of both rows
/// of a pair) for 256 threads, twice that when gated (the pre-gate's rows too). f16: 16 KiB,
/// 32 KiB gated.
pub(crate) fn monarch_prefetch_bytes(elem_bytes: u32, gated: bool) -> u32 {
    let slots = 2 * 2 * 8 * elem_bytes / 16;
    slots * 16 * 256 * if gated { 2 } else { 1 }
}

/// Dynamic shared memory of `fftconv_monarch_backward_taps_prefetch` (N = 256 .. 4096): the taps
/// kernel's, then the staging of x's and dy's rows (the split backward is ungated).
pub(crate) fn monarch_backward_taps_prefetch_bytes(elem_bytes: u32) -> u32 {
    monarch_backward_taps_shared_bytes(12) + 2 * monarch_prefetch_bytes(elem_bytes, false)
}
/// Environment variable: blocks per SM (1 .. 4) that the Monarch pass's one-launch kernels up to
/// 8K (`fftconv_monarch`, `fftconv_monarch_backward`, `_backward_taps`, `_backward_wide_8k`)
/// leave registers for, all the same, for A/B runs. By default 3 for `fftconv_monarch` (3-8%
/// faster than 2 from 256 to 4K on the H200) and 2 for the backward kernels (the backward's 167
/// registers at 1 block ran 1.6-1.7x slower on the H200; at 3 they spill 500-700 B).
pub const MONARCH_MIN_BLOCKS_ENV: &str = "FFTCONV_CUDA_MONARCH_MIN_BLOCKS";

/// Environment variable: threads per block (`256` or `512`) of the Monarch kernels that hold a
/// 16K-point row's plane sets in one block per SM (`fftconv_monarch_backward_wide` at 16K and
/// `fftconv_monarch_backward_middle` from 32K: `MT_WIDE_THREADS`); default 512 (16 warps per SM
/// instead of 8), for A/B runs.
pub const MONARCH_WIDE_THREADS_ENV: &str = "FFTCONV_CUDA_MONARCH_WIDE_THREADS";

/// [`MONARCH_WIDE_THREADS_ENV`]'s value: 256 where it says so, 512 otherwise.
fn monarch_wide_threads() -> u32 {
    if std::env::var(MONARCH_WIDE_THREADS_ENV).is_ok_and(|v| v.trim() == "256") {
        256
    } else {
        512
    }
}

/// Environment variable: `0` leaves the device's memory pool at the driver's release threshold
/// (0: memory freed goes back to the system at every synchronization, so the next allocation
/// maps fresh pages), for A/B runs. By default the pool keeps what it has, as PyTorch's caching
/// allocator does: a training loop that prepares a filter spectrum per step (hundreds of MB at
/// 64K x 768 channels) then reuses the same memory instead of mapping it anew.
pub const POOL_KEEP_ENV: &str = "FFTCONV_CUDA_POOL_KEEP";

/// Sets the release threshold of `ctx`'s device memory pool (the one `cuMemAllocAsync` uses)
/// to the maximum, unless `FFTCONV_CUDA_POOL_KEEP=0` or the device has no memory pools. Best
/// effort: a driver without the calls leaves the default.
fn keep_pool_memory(ctx: &CudaContext) {
    use cudarc::driver::sys;
    if !ctx.has_async_alloc() || std::env::var(POOL_KEEP_ENV).is_ok_and(|v| v.trim() == "0") {
        return;
    }
    let _ = guarded(|| {
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: the context is alive and current for this device; `pool` is valid for writes.
        let r = unsafe { sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device()) };
        if r != sys::CUresult::CUDA_SUCCESS || pool.is_null() {
            return Err(CudaError::Driver(format!("cuDeviceGetMemPool: {r:?}")));
        }
        let mut threshold = u64::MAX;
        // SAFETY: the attribute takes a u64, which `threshold` is.
        let r = unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(CudaError::Driver(format!("cuMemPoolSetAttribute: {r:?}")));
        }
        Ok(())
    });
}

/// Environment variable: the split Monarch backward's largest FFT size: `0` turns it off,
/// `16384` (or `1`) takes it to every size it runs (256 .. 16K; 8K and 16K not yet measured on
/// a GPU, so not the default), unset it runs at 256 .. 4K (on since session 16's H200 run, 4K:
/// 3.85 -> 2.86 ms; 1.0-1.6x over the fused kernel from 256 to 4K in session 17's). Where it applies (ungated problems, causal, or circular with L = N) the backward runs in two
/// kernels: du through the forward kernel (`fftconv_monarch`, 8K and 16K
/// `fftconv_monarch_wide`) with the filter conjugated and dy as its input, and the filter
/// gradient through `fftconv_monarch_backward_taps` (8K and 16K `_taps_wide`), which sums a
/// channel's pairs in shared memory and runs one inverse per group of pairs instead of one per
/// pair.
pub const MONARCH_SPLIT_BACKWARD_ENV: &str = "FFTCONV_CUDA_MONARCH_SPLIT_BACKWARD";

/// Whether the split Monarch backward runs at N = 2^log2n by [`MONARCH_SPLIT_BACKWARD_ENV`].
pub(crate) fn monarch_split_backward(log2n: u32) -> bool {
    log2n <= split_backward_max_log2(std::env::var(MONARCH_SPLIT_BACKWARD_ENV).ok().as_deref())
}

/// log2 of the split backward's largest FFT size for [`MONARCH_SPLIT_BACKWARD_ENV`]'s value.
fn split_backward_max_log2(value: Option<&str>) -> u32 {
    /// The measured default: up to 4K.
    const DEFAULT_LOG2: u32 = 12;
    match value.map(|v| v.trim().parse::<u64>()) {
        None => DEFAULT_LOG2,
        Some(Ok(0)) => 0,
        Some(Ok(1)) => u32::MAX,
        Some(Ok(n)) => n.ilog2(),
        Some(Err(_)) => DEFAULT_LOG2,
    }
}

/// Environment variable: `1` compiles the kernels with line information (NVRTC `-lineinfo`), so
/// that `ncu`'s source view maps instructions to lines of `kernels/fftconv.cu` (profiling only;
/// the code is the same).
pub const LINEINFO_ENV: &str = "FFTCONV_CUDA_LINEINFO";

/// Whether the Monarch pass runs where it takes the problem ([`MONARCH_ENV`] not `0`).
pub(crate) fn monarch_enabled() -> bool {
    !std::env::var(MONARCH_ENV).is_ok_and(|v| v.trim() == "0")
}

/// The kernel source (see its header for the passes and defines).
const KERNEL_SOURCE: &str = include_str!("../kernels/fftconv.cu");

/// One CUDA device opened for convolutions: its context, properties and compiled kernels.
pub struct CudaDevice {
    pub(crate) ctx: Arc<CudaContext>,
    /// The stream device tensors are copied on.
    pub(crate) stream: Arc<CudaStream>,
    info: CudaDeviceInfo,
    description: String,
    kernels: Mutex<HashMap<KernelKey, Arc<Kernels>>>,
    /// The Monarch pass's modules, by I/O dtype and register cap (`MT_MIN_BLOCKS`): shared by
    /// every [`Kernels`] of that dtype, so a process compiles them once, not once per plan.
    monarch_kernels: Mutex<HashMap<MonarchKey, Arc<MonarchKernels>>>,
}

/// What a Monarch module is compiled for: the I/O dtype, `MT_MIN_BLOCKS` (`None`: the kernel
/// file's default) and `MT_WIDE_THREADS`.
type MonarchKey = (DType, Option<u32>, u32);

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

static DEVICE: OnceLock<Result<Arc<CudaDevice>, CudaError>> = OnceLock::new();

/// The process's CUDA device, opened on first use (`FFTCONV_CUDA_DEVICE` picks the ordinal).
pub fn device() -> Result<Arc<CudaDevice>, CudaError> {
    DEVICE
        .get_or_init(|| guarded(open_device).map(Arc::new))
        .clone()
}

fn open_device() -> Result<CudaDevice, CudaError> {
    let devices = probe()?;
    let ordinal = match std::env::var(DEVICE_ENV) {
        Ok(v) => v.trim().parse::<usize>().map_err(|_| {
            CudaError::unavailable(format!("{DEVICE_ENV}={v} is not a device ordinal"))
        })?,
        Err(_) => 0,
    };
    let info = devices.get(ordinal).cloned().ok_or_else(|| {
        CudaError::unavailable(format!(
            "{DEVICE_ENV}={ordinal}, but there are {} devices",
            devices.len()
        ))
    })?;
    let ctx =
        CudaContext::new(ordinal).map_err(|e| CudaError::driver("cuDevicePrimaryCtxRetain", e))?;
    // Every call orders its own work on its own stream and waits for it before returning, so
    // cudarc's per-buffer event tracking is not needed.
    // SAFETY: no buffer or stream of this context exists yet.
    unsafe { ctx.disable_event_tracking() };
    keep_pool_memory(&ctx);
    let stream = ctx
        .new_stream()
        .map_err(|e| CudaError::driver("cuStreamCreate", e))?;
    let description = format!(
        "{info}, {} KiB shared memory per block",
        info.shared_memory_per_block_optin / 1024
    );
    Ok(CudaDevice {
        ctx,
        stream,
        info,
        description,
        kernels: Mutex::new(HashMap::new()),
        monarch_kernels: Mutex::new(HashMap::new()),
    })
}

impl CudaDevice {
    /// What the driver reports about this device.
    pub fn info(&self) -> &CudaDeviceInfo {
        &self.info
    }

    /// A new stream on this device (for
    /// [`CudaConvolution::forward_device_on_stream`](crate::CudaConvolution::forward_device_on_stream)).
    pub fn new_stream(&self) -> Result<Arc<CudaStream>, CudaError> {
        self.ctx
            .new_stream()
            .map_err(|e| CudaError::driver("cuStreamCreate", e))
    }

    /// One line: name, architecture, memory, shared memory per block.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Largest number of complex f32 points one block keeps in shared memory (a power of two,
    /// with room for one padding point per 16), at most 2^14.
    pub fn max_shared_points(&self) -> u32 {
        let bytes = self.info.shared_memory_per_block_optin.max(48 * 1024);
        let mut points = 1u32 << 14;
        while points > 256 && (points as usize) * 8 * 17 / 16 > bytes {
            points /= 2;
        }
        points
    }

    /// The kernels for `dtype` with `shared_points` of shared memory per block, compiled on first
    /// use.
    pub(crate) fn kernels(
        &self,
        dtype: DType,
        shared_points: u32,
    ) -> Result<Arc<Kernels>, CudaError> {
        self.specialized_kernels(dtype, shared_points, None)
    }

    /// [`kernels`](Self::kernels) with the fused pass also compiled for one plan's sizes where
    /// the `FFTCONV_CUDA_SPECIALIZE` experiment is on (`fused` is ignored otherwise).
    pub(crate) fn specialized_kernels(
        &self,
        dtype: DType,
        shared_points: u32,
        fused: Option<FusedSizes>,
    ) -> Result<Arc<Kernels>, CudaError> {
        let pad = std::env::var(NO_PAD_ENV).map_or(true, |v| v != "1");
        // One radix-2^3 group per thread and round at 16K points, two at 4K (measured on the
        // H200: 256 threads beat 512 at 4K points by ~6%, 1024 beat 512 at 16K by ~30%).
        let default_threads = (shared_points / 16).clamp(256, 1024);
        let threads = std::env::var(THREADS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|t| t.is_power_of_two() && (64..=1024).contains(t))
            .unwrap_or(default_threads);
        let radix_log2 = match std::env::var(RADIX_ENV).ok().as_deref().map(str::trim) {
            Some("4") => 4,
            _ => 3,
        };
        let segment_table = std::env::var(SEGMENT_TABLE_ENV).is_ok_and(|v| v.trim() == "1");
        let tensor_cores = std::env::var(TENSOR_CORES_ENV).is_ok_and(|v| v.trim() == "1")
            && dtype != DType::F32
            && self.info.compute_capability.0 >= 8;
        // Default on since the 2026-11-26 H200 sweep (faster at 14 of 15 dense sizes, every sparse one);
        // `FFTCONV_CUDA_MIDDLE_ROUND=0` restores the separate rounds for A/B runs.
        let middle_round = !std::env::var(MIDDLE_ROUND_ENV).is_ok_and(|v| v.trim() == "0");
        let vector_io = std::env::var(VECTOR_IO_ENV).is_ok_and(|v| v.trim() == "1");
        let monarch =
            monarch_enabled() && dtype != DType::F32 && self.info.compute_capability.0 >= 8;
        let fused = fused.filter(|_| std::env::var(SPECIALIZE_ENV).is_ok_and(|v| v.trim() == "1"));
        let min_blocks = std::env::var(MIN_BLOCKS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|b| (1..=32).contains(b))
            .unwrap_or(1);
        let monarch_min_blocks = std::env::var(MONARCH_MIN_BLOCKS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|b| (1..=4).contains(b))
            .filter(|_| monarch);
        let key = KernelKey {
            monarch_min_blocks,
            dtype,
            shared_points,
            threads,
            radix_log2,
            segment_table,
            tensor_cores,
            middle_round,
            vector_io,
            monarch,
            min_blocks,
            fused,
            pad: pad
                && (shared_points as usize) * 8 * 17 / 16
                    <= self.info.shared_memory_per_block_optin,
        };
        let mut cache = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = cache.get(&key) {
            return Ok(Arc::clone(k));
        }
        let kernels = Arc::new(guarded(|| self.build_kernels(key))?);
        cache.insert(key, Arc::clone(&kernels));
        Ok(kernels)
    }

    fn build_kernels(&self, key: KernelKey) -> Result<Kernels, CudaError> {
        let threads = key.threads;
        let options = base_module_options(self.info.compute_capability, &key);
        let module = self.module(&options)?;
        let shared_bytes =
            (key.shared_points + if key.pad { key.shared_points / 16 } else { 0 }) * 8;
        let load = |name: &str| -> Result<CudaFunction, CudaError> {
            let f = module
                .load_function(name)
                .map_err(|e| CudaError::driver("cuModuleGetFunction", e))?;
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared_bytes as i32,
            )
            .map_err(|e| {
                CudaError::driver("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)", e)
            })?;
            Ok(f)
        };
        Ok(Kernels {
            fused: load("fftconv_fused")?,
            columns_forward: load("fftconv_columns_forward")?,
            columns_inverse: load("fftconv_columns_inverse")?,
            gather: load("fftconv_gather")?,
            taps_sum: load("fftconv_taps_sum")?,
            backward_fused: {
                // Its shared memory (a line per row, two when gated) is sized per launch, up to the limit.
                let f = load("fftconv_backward_fused")?;
                f.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    self.info.shared_memory_per_block_optin as i32,
                )
                .map_err(|e| {
                    CudaError::driver("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)", e)
                })?;
                f
            },
            filter_unpack: load("fftconv_filter_unpack")?,
            baseline_pad: load("fftconv_baseline_pad")?,
            baseline_product: load("fftconv_baseline_product")?,
            baseline_crop: load("fftconv_baseline_crop")?,
            monarch: if key.monarch {
                Some(self.monarch_kernels(key.dtype, key.monarch_min_blocks)?)
            } else {
                None
            },
            pad: key.pad,
            shared_points: key.shared_points,
            shared_bytes,
            threads,
        })
    }

    /// Blocks of `fftconv_monarch_prefetch` (`prefetch`) this device holds at once with `bytes` of
    /// dynamic shared memory: SMs times the blocks per SM the occupancy calculator gives (`None`
    /// where it gives none or a query fails).
    fn monarch_prefetch_slots(&self, prefetch: &CudaFunction, bytes: u32) -> Option<u32> {
        let sms = self
            .ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .ok()?;
        let per_sm = prefetch
            .occupancy_max_active_blocks_per_multiprocessor(256, bytes as usize, None)
            .ok()?;
        let slots = u32::try_from(sms).ok()?.saturating_mul(per_sm);
        (slots > 0).then_some(slots)
    }

    /// The Monarch pass's kernels for `dtype` (NVRTC module with `MONARCH_TC=1`, the base
    /// passes' defines at fixed values the Monarch kernels do not read), built once per dtype and
    /// register cap.
    fn monarch_kernels(
        &self,
        dtype: DType,
        min_blocks: Option<u32>,
    ) -> Result<Arc<MonarchKernels>, CudaError> {
        let mut cache = self
            .monarch_kernels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let wide_threads = monarch_wide_threads();
        if let Some(k) = cache.get(&(dtype, min_blocks, wide_threads)) {
            return Ok(Arc::clone(k));
        }
        let options = monarch_module_options(
            self.info.compute_capability,
            dtype,
            min_blocks,
            wide_threads,
        );
        let module = self.module(&options)?;
        let get = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| CudaError::driver("cuModuleGetFunction", e))
        };
        // The kernels with dynamic shared memory beyond the default 48 KiB, capped at
        // this device's limit: the forward's wide rows and middle rows (66 KiB), the
        // column passes' tiles (N_o x 32 complex f32 from N_o = 32, up to 64 KiB), and the
        // backward's plane sets (two, three gated: 50 KiB; 198 KiB at 16K, which only
        // Hopper's 227 KiB per block holds; `launch_backward` checks that its size fits).
        let optin = monarch_shared_limit(self.info.shared_memory_per_block_optin);
        let with_shared = |name: &str, bytes: u32| {
            let f = get(name)?;
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes.min(optin) as i32,
            )
            .map_err(|e| {
                CudaError::driver("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)", e)
            })?;
            Ok::<_, CudaError>(f)
        };
        let kernels = MonarchKernels {
            backward: with_shared(
                "fftconv_monarch_backward",
                monarch_backward_shared_bytes(12, true),
            )?,
            backward_taps: with_shared(
                "fftconv_monarch_backward_taps",
                monarch_backward_taps_shared_bytes(12),
            )?,
            backward_taps_wide: with_shared(
                "fftconv_monarch_backward_taps_wide",
                monarch_backward_taps_shared_bytes(14),
            )?,
            backward_wide: with_shared(
                "fftconv_monarch_backward_wide",
                monarch_backward_shared_bytes(14, true),
            )?,
            backward_wide_8k: with_shared(
                "fftconv_monarch_backward_wide_8k",
                monarch_backward_shared_bytes(13, true),
            )?,
            backward_scales: get("fftconv_monarch_backward_scales")?,
            backward_scales_finish: get("fftconv_monarch_backward_scales_finish")?,
            backward_columns_forward: get("fftconv_monarch_backward_columns_forward")?,
            backward_middle: with_shared(
                "fftconv_monarch_backward_middle",
                monarch_backward_shared_bytes(14, true),
            )?,
            backward_columns_inverse: get("fftconv_monarch_backward_columns_inverse")?,
            backward_tile_columns_forward: with_shared(
                "fftconv_monarch_backward_tile_columns_forward",
                monarch_tile_bytes(22),
            )?,
            backward_tile_columns_inverse: with_shared(
                "fftconv_monarch_backward_tile_columns_inverse",
                monarch_tile_bytes(22),
            )?,
            filter_max: get("fftconv_monarch_filter_max")?,
            filter: get("fftconv_monarch_filter")?,
            wide_threads,
            forward: get("fftconv_monarch")?,
            prefetch: None,
            backward_taps_prefetch: None,
            elem_bytes: dtype.size_bytes() as u32,
            prefetch_slots: None,
            wide: with_shared("fftconv_monarch_wide", monarch_shared_bytes(14))?,
            scales: get("fftconv_monarch_scales")?,
            scales_finish: get("fftconv_monarch_scales_finish")?,
            columns_forward: get("fftconv_monarch_columns_forward")?,
            tile_columns_forward: with_shared(
                "fftconv_monarch_tile_columns_forward",
                monarch_tile_bytes(22),
            )?,
            middle: with_shared("fftconv_monarch_middle", monarch_shared_bytes(14))?,
            columns_inverse: get("fftconv_monarch_columns_inverse")?,
            tile_columns_inverse: with_shared(
                "fftconv_monarch_tile_columns_inverse",
                monarch_tile_bytes(22),
            )?,
            // In the module for sm_90 and newer only (`MT_CLUSTERS` of the kernel file),
            // and only where the device can place at least one cluster of each.
            clusters: if self.info.compute_capability.0 >= 9
                && std::env::var(MONARCH_CLUSTER_ENV).is_ok_and(|v| v.trim() == "1")
                && monarch_cluster_bytes() <= optin
            {
                let clusters = [
                    with_shared("fftconv_monarch_cluster2", monarch_cluster_bytes())?,
                    with_shared("fftconv_monarch_cluster4", monarch_cluster_bytes())?,
                    with_shared("fftconv_monarch_cluster8", monarch_cluster_bytes())?,
                ];
                let placeable = clusters.iter().zip([2u32, 4, 8]).all(|(f, blocks)| {
                    let cfg = cudarc::driver::LaunchConfig {
                        grid_dim: (blocks, 1, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: monarch_cluster_bytes(),
                    };
                    f.occupancy_max_active_clusters(cfg, &self.stream)
                        .is_ok_and(|n| n >= 1)
                });
                placeable.then_some(clusters)
            } else {
                None
            },
        };
        // The prefetching kernels only where the variable asks for them, and only where their
        // shared memory (static and the staging) fits this device's block; otherwise (an
        // occupancy query failing too) the plain kernels run.
        let kernels = if std::env::var(MONARCH_PREFETCH_ENV).is_ok_and(|v| v.trim() == "1") {
            let fitting = |name: &str, bytes: u32| {
                let f = get(name).ok()?;
                let own = f
                    .get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                    .ok()?;
                let total = u32::try_from(own).ok()?.checked_add(bytes)?;
                if total as usize > self.info.shared_memory_per_block_optin {
                    return None;
                }
                f.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .ok()?;
                Some(f)
            };
            let elem = dtype.size_bytes() as u32;
            // Sized for gated problems, the larger staging.
            let forward_bytes = monarch_prefetch_bytes(elem, true);
            let prefetch = fitting("fftconv_monarch_prefetch", forward_bytes);
            let prefetch_slots = prefetch
                .as_ref()
                .and_then(|f| self.monarch_prefetch_slots(f, forward_bytes));
            MonarchKernels {
                prefetch: prefetch.filter(|_| prefetch_slots.is_some()),
                backward_taps_prefetch: fitting(
                    "fftconv_monarch_backward_taps_prefetch",
                    monarch_backward_taps_prefetch_bytes(elem),
                )
                .filter(|_| prefetch_slots.is_some()),
                prefetch_slots,
                ..kernels
            }
        } else {
            kernels
        };
        let kernels = Arc::new(kernels);
        cache.insert((dtype, min_blocks, wide_threads), Arc::clone(&kernels));
        Ok(kernels)
    }

    /// The module of the kernel file compiled with `options` (NVRTC, through the disk cache).
    fn module(&self, options: &[String]) -> Result<Arc<cudarc::driver::CudaModule>, CudaError> {
        let mut options = options.to_vec();
        if std::env::var(LINEINFO_ENV).is_ok_and(|v| v.trim() == "1") {
            options.push("-lineinfo".to_owned());
        }
        let options = &options[..];
        let name = format!("fftconv.cu ({})", options[2..].join(" "));
        let (cubin, cached) =
            compile_cached(KERNEL_SOURCE, options, self.info.compute_capability, &name)?;
        let load = |cubin: Vec<u8>| self.ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin));
        match load(cubin) {
            Ok(m) => Ok(m),
            // A cached image the driver rejects (another driver, a damaged file): compile anew.
            Err(_) if cached => load(compile(KERNEL_SOURCE, options, &name)?)
                .map_err(|e| CudaError::driver("cuModuleLoadData", e)),
            Err(e) => Err(CudaError::driver("cuModuleLoadData", e)),
        }
    }
}

/// The kernel file's define for the I/O dtype.
/// NVRTC's options for the base passes' module (`MONARCH_TC=0`) of `key` on a device of
/// compute capability `cc`.
fn base_module_options(cc: (i32, i32), key: &KernelKey) -> Vec<String> {
    let (major, minor) = cc;
    let mut options = vec![
        format!("--gpu-architecture=sm_{major}{minor}"),
        "--std=c++17".to_owned(),
        format!("-D{}=1", io_define(key.dtype)),
        format!("-DSHARED_POINTS={}", key.shared_points),
        format!("-DPAD={}", u32::from(key.pad)),
        format!("-DTHREADS={}", key.threads),
        format!("-DMAX_RADIX_LOG2={}", key.radix_log2),
        format!("-DSEGMENT_TABLE={}", u32::from(key.segment_table)),
        format!("-DTENSOR_CORES={}", u32::from(key.tensor_cores)),
        format!("-DMIDDLE_ROUND={}", u32::from(key.middle_round)),
        format!("-DVECTOR_IO={}", u32::from(key.vector_io)),
        // The Monarch kernels are a module of their own (`monarch_module_options`).
        "-DMONARCH_TC=0".to_owned(),
        format!("-DMIN_BLOCKS={}", key.min_blocks),
    ];
    if let Some(f) = key.fused {
        options.extend([
            format!("-DSPEC_LOG2N={}", f.log2n),
            format!("-DSPEC_LINE_LOG2={}", f.line_log2),
            format!("-DSPEC_LINES_LOG2={}", f.lines_log2),
            format!("-DSPEC_STAGE_COUNT={}", f.stage_count),
            format!("-DSPEC_STAGE_BITS={}", f.stage_bits),
        ]);
    }
    options
}

/// NVRTC's options for the Monarch pass's module (`MONARCH_TC=1`; the base passes' defines at
/// fixed values the Monarch kernels do not read) for `dtype` on compute capability `cc`.
fn monarch_module_options(
    cc: (i32, i32),
    dtype: DType,
    min_blocks: Option<u32>,
    wide_threads: u32,
) -> Vec<String> {
    let (major, minor) = cc;
    let mut options = vec![
        format!("--gpu-architecture=sm_{major}{minor}"),
        "--std=c++17".to_owned(),
        format!("-D{}=1", io_define(dtype)),
        "-DMONARCH_TC=1".to_owned(),
        // The file's base passes (compiled alongside, unused here) need these.
        "-DSHARED_POINTS=4096".to_owned(),
        "-DPAD=1".to_owned(),
        "-DTHREADS=256".to_owned(),
    ];
    if let Some(b) = min_blocks {
        options.push(format!("-DMT_MIN_BLOCKS={b}"));
        options.push(format!("-DMT_FORWARD_MIN_BLOCKS={b}"));
    }
    options.push(format!("-DMT_WIDE_THREADS={wide_threads}u"));
    options
}

fn io_define(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "IO_F32",
        DType::F16 => "IO_F16",
        DType::Bf16 => "IO_BF16",
    }
}

/// The kernels of the Monarch tensor-core pass (256 threads per block).
pub(crate) struct MonarchKernels {
    /// The channels' largest |Re| + |Im| (a block per channel and 16K bins), before `filter`.
    pub(crate) filter_max: CudaFunction,
    /// The filter in the pass's fragment order, per channel scaled by a power of two.
    pub(crate) filter: CudaFunction,
    /// The whole forward of a chunk, N = 256 .. 4096 (static shared memory).
    pub(crate) forward: CudaFunction,
    /// The same, N = 256 .. 4096, as tiles one after another per block with the next tile's input
    /// prefetched ([`MONARCH_PREFETCH_ENV`]; `None` where it is off or does not fit the device).
    pub(crate) prefetch: Option<CudaFunction>,
    /// Bytes of one I/O element (`prefetch`'s staging: [`monarch_prefetch_bytes`]).
    pub(crate) elem_bytes: u32,
    /// Blocks of `prefetch` the device holds at once (SMs times blocks per SM, for its gated
    /// staging), where [`MONARCH_PREFETCH_ENV`] turns it on and it was loaded.
    pub(crate) prefetch_slots: Option<u32>,
    /// The same for N = 8192 and 16384 (one pair per block, dynamic shared memory).
    pub(crate) wide: CudaFunction,
    /// Threads per block of `backward_wide` and `backward_middle` (`MT_WIDE_THREADS`: 512, or
    /// 256 by [`MONARCH_WIDE_THREADS_ENV`]); the other Monarch kernels run 256.
    pub(crate) wide_threads: u32,
    /// The backward of N = 256 .. 4096 (du, taps, gate gradients; `fftconv_taps_sum` after it).
    pub(crate) backward: CudaFunction,
    /// The split backward's filter gradient at N = 256 .. 4096 (a block per channel and group of
    /// pairs; [`MONARCH_SPLIT_BACKWARD_ENV`]).
    pub(crate) backward_taps: CudaFunction,
    /// `backward_taps` with each step's rows of x and dy prefetched into shared memory
    /// ([`MONARCH_PREFETCH_ENV`]; `None` where it is off or does not fit the device).
    pub(crate) backward_taps_prefetch: Option<CudaFunction>,
    /// The same at N = 8192 and 16384 (`wide_threads` threads, one block per SM).
    pub(crate) backward_taps_wide: CudaFunction,
    /// The same for N = 16384 (one pair per block, one block per SM: registers uncapped).
    pub(crate) backward_wide: CudaFunction,
    /// The same for N = 8192, with the register cap of `backward` (two blocks per SM).
    pub(crate) backward_wide_8k: CudaFunction,
    /// The backward from 32K to 4M: scales, column passes (a thread per column up to 256K,
    /// shared tiles from 512K) and 16K-point rows.
    pub(crate) backward_scales: CudaFunction,
    pub(crate) backward_scales_finish: CudaFunction,
    pub(crate) backward_columns_forward: CudaFunction,
    pub(crate) backward_tile_columns_forward: CudaFunction,
    pub(crate) backward_middle: CudaFunction,
    pub(crate) backward_columns_inverse: CudaFunction,
    pub(crate) backward_tile_columns_inverse: CudaFunction,
    /// N = 32K .. 4M: the rows' scales, the column passes (a thread per column up to 256K,
    /// shared tiles from 512K) and the 16K-point rows.
    pub(crate) scales: CudaFunction,
    pub(crate) scales_finish: CudaFunction,
    pub(crate) columns_forward: CudaFunction,
    pub(crate) tile_columns_forward: CudaFunction,
    pub(crate) middle: CudaFunction,
    pub(crate) columns_inverse: CudaFunction,
    pub(crate) tile_columns_inverse: CudaFunction,
    /// N = 32K, 64K, 128K on sm_90 and newer: one launch, a cluster of N / 16K blocks per pair
    /// (`fftconv_monarch_cluster2`, `4`, `8`); `None` before sm_90 or when turned off
    /// ([`MONARCH_CLUSTER_ENV`]).
    pub(crate) clusters: Option<[CudaFunction; 3]>,
}

impl MonarchKernels {
    /// A backward kernel's function for N = 2^log2n, its dynamic shared memory and its threads
    /// per block.
    pub(crate) fn backward_function(
        &self,
        kernel: MonarchBackwardKernel,
        log2n: u32,
        gated: bool,
    ) -> (&CudaFunction, u32, u32) {
        let function = match kernel {
            MonarchBackwardKernel::Narrow => &self.backward,
            MonarchBackwardKernel::Wide if log2n == 13 => &self.backward_wide_8k,
            MonarchBackwardKernel::Wide => &self.backward_wide,
            MonarchBackwardKernel::Scales => &self.backward_scales,
            MonarchBackwardKernel::ScalesFinish => &self.backward_scales_finish,
            MonarchBackwardKernel::ColumnsForward if log2n > 18 => {
                &self.backward_tile_columns_forward
            }
            MonarchBackwardKernel::ColumnsForward => &self.backward_columns_forward,
            MonarchBackwardKernel::Middle => &self.backward_middle,
            MonarchBackwardKernel::ColumnsInverse if log2n > 18 => {
                &self.backward_tile_columns_inverse
            }
            MonarchBackwardKernel::ColumnsInverse => &self.backward_columns_inverse,
        };
        (
            function,
            monarch_backward_kernel_bytes(kernel, log2n, gated),
            monarch_backward_threads(kernel, log2n, self.wide_threads),
        )
    }

    /// The split backward's taps kernel for N = 2^log2n (256 .. 16384; up to 4K the prefetching
    /// one where [`MONARCH_PREFETCH_ENV`] is on), its dynamic shared memory and its threads per
    /// block (`None` at other sizes).
    pub(crate) fn taps_function(&self, log2n: u32) -> Option<(&CudaFunction, u32, u32)> {
        let prefetch = self.backward_taps_prefetch.as_ref();
        let shared = monarch_taps_kernel_bytes(log2n, prefetch.is_some(), self.elem_bytes);
        match log2n {
            8..=12 => Some((prefetch.unwrap_or(&self.backward_taps), shared, 256)),
            13 | 14 => Some((&self.backward_taps_wide, shared, self.wide_threads)),
            _ => None,
        }
    }

    /// `kernel`'s function for N = 2^log2n, and its dynamic shared memory (`None`: a cluster
    /// kernel where they are not loaded).
    pub(crate) fn function(
        &self,
        kernel: MonarchKernel,
        log2n: u32,
    ) -> Option<(&CudaFunction, u32)> {
        let function = match kernel {
            MonarchKernel::Forward => &self.forward,
            MonarchKernel::Prefetch { .. } => self.prefetch.as_ref()?,
            MonarchKernel::Wide => &self.wide,
            MonarchKernel::Scales => &self.scales,
            MonarchKernel::ScalesFinish => &self.scales_finish,
            MonarchKernel::ColumnsForward if log2n > 18 => &self.tile_columns_forward,
            MonarchKernel::ColumnsForward => &self.columns_forward,
            MonarchKernel::Middle => &self.middle,
            MonarchKernel::ColumnsInverse if log2n > 18 => &self.tile_columns_inverse,
            MonarchKernel::ColumnsInverse => &self.columns_inverse,
            MonarchKernel::Cluster => &self.clusters.as_ref()?[log2n.clamp(15, 17) as usize - 15],
        };
        Some((
            function,
            monarch_forward_kernel_bytes(kernel, log2n, self.elem_bytes),
        ))
    }
}

/// Dynamic shared memory of the Monarch forward kernel `kernel` at N = 2^log2n with
/// `elem_bytes`-byte I/O (what `MonarchKernels::function` launches it with; from 512K the
/// column passes are the `_tile_` entries).
pub fn monarch_forward_kernel_bytes(kernel: MonarchKernel, log2n: u32, elem_bytes: u32) -> u32 {
    match kernel {
        MonarchKernel::Forward | MonarchKernel::Scales | MonarchKernel::ScalesFinish => 0,
        MonarchKernel::Prefetch { gated, .. } => monarch_prefetch_bytes(elem_bytes, gated),
        MonarchKernel::Wide => monarch_shared_bytes(log2n),
        MonarchKernel::ColumnsForward | MonarchKernel::ColumnsInverse => monarch_tile_bytes(log2n),
        MonarchKernel::Middle => monarch_shared_bytes(14),
        MonarchKernel::Cluster => monarch_cluster_bytes(),
    }
}

/// Dynamic shared memory of the Monarch backward kernel `kernel` at N = 2^log2n (what
/// `MonarchKernels::backward_function` launches it with; 8K is `_backward_wide_8k`, from 512K
/// the column passes are the `_tile_` entries).
pub fn monarch_backward_kernel_bytes(
    kernel: MonarchBackwardKernel,
    log2n: u32,
    gated: bool,
) -> u32 {
    match kernel {
        MonarchBackwardKernel::Narrow | MonarchBackwardKernel::Wide => {
            monarch_backward_shared_bytes(log2n, gated)
        }
        MonarchBackwardKernel::Scales | MonarchBackwardKernel::ScalesFinish => 0,
        MonarchBackwardKernel::ColumnsForward | MonarchBackwardKernel::ColumnsInverse => {
            monarch_tile_bytes(log2n)
        }
        MonarchBackwardKernel::Middle => monarch_backward_shared_bytes(14, gated),
    }
}

/// Dynamic shared memory of the split backward's taps kernel at N = 2^log2n (what
/// `MonarchKernels::taps_function` launches it with): up to 4K the prefetching one's where
/// `prefetch` (its staging of x and dy for `elem_bytes`-byte I/O after the sums).
pub fn monarch_taps_kernel_bytes(log2n: u32, prefetch: bool, elem_bytes: u32) -> u32 {
    if prefetch && log2n <= 12 {
        monarch_backward_taps_prefetch_bytes(elem_bytes)
    } else {
        monarch_backward_taps_shared_bytes(log2n)
    }
}

/// Threads per block of a Monarch backward kernel at N = 2^log2n: `wide_threads` for the kernels
/// that hold a 16K-point row's plane sets (`fftconv_monarch_backward_wide` at 16K, `_middle`),
/// 256 for the others.
pub(crate) fn monarch_backward_threads(
    kernel: MonarchBackwardKernel,
    log2n: u32,
    wide_threads: u32,
) -> u32 {
    match kernel {
        // `backward_function`'s choice: 8K `fftconv_monarch_backward_wide_8k`, else the 16K one.
        MonarchBackwardKernel::Wide if log2n != 13 => wide_threads,
        MonarchBackwardKernel::Middle => wide_threads,
        _ => 256,
    }
}

/// The dynamic shared memory a Monarch kernel may ask for on a device with `optin` bytes per
/// block: 1 KiB is left for the static shared memory of the kernels whose dynamic memory can
/// come near the limit (at most 512 bytes). `fftconv_monarch_wide` and
/// `fftconv_monarch_backward` hold 8 KiB of static lane tables besides, but ask for at most 66
/// KiB and 51 KiB.
pub(crate) fn monarch_shared_limit(optin: usize) -> u32 {
    u32::try_from(optin.saturating_sub(1024)).unwrap_or(u32::MAX)
}

/// Dynamic shared memory of the split backward's taps kernel at N = 2^log2n: the ungated
/// backward's two plane sets and the rows of the running sum of T that it keeps in shared
/// memory ([`monarch_taps_shared_rows`], 256 complex f32 each): `fftconv_monarch_backward_taps`
/// up to 4K (65 KiB), `_taps_wide` at 8K (130 KiB) and 16K (226 KiB).
pub(crate) fn monarch_backward_taps_shared_bytes(log2n: u32) -> u32 {
    monarch_backward_shared_bytes(log2n, false) + monarch_taps_shared_rows(log2n) * 256 * 8
}

/// Bytes of the intermediate buffer (`tmp`) the split backward's taps launch of `blocks` blocks
/// at N = 2^log2n uses: the sum's rows beyond [`monarch_taps_shared_rows`], 256 complex f32
/// each, per block (16K: 17 rows, 34 KiB; none below).
pub(crate) fn monarch_taps_scratch_bytes(log2n: u32, blocks: u32) -> usize {
    let rows = 1usize << log2n.saturating_sub(8).max(4);
    let beyond = rows - monarch_taps_shared_rows(log2n) as usize;
    beyond * 256 * 8 * blocks as usize
}

/// Rows of the taps kernel's running sum in shared memory at N = 2^log2n: all of the planes'
/// rows (16 up to 4K, 32 at 8K), at 16K 47 of 64 (`MT_TAPS_SHARED_ROWS_16K` of the kernel file;
/// the other 17 in the block's slice of the intermediate buffer, L2-resident).
pub(crate) fn monarch_taps_shared_rows(log2n: u32) -> u32 {
    match log2n {
        14 => 47,
        _ => 1 << log2n.saturating_sub(8).max(4),
    }
}

/// Dynamic shared memory of the Monarch backward at N = 2^log2n: two plane sets (three gated) of
/// 16 rows of 264 halves up to 4K, of N / 256 rows for 8K and 16K (`fftconv_monarch_backward_wide`).
pub(crate) fn monarch_backward_shared_bytes(log2n: u32, gated: bool) -> u32 {
    let rows = 1 << log2n.saturating_sub(8).max(4);
    (if gated { 3 } else { 2 }) * 2 * rows * 264 * 2
}

/// Dynamic shared memory of the Monarch column passes at N = 2^log2n: none up to 256K, then a
/// tile of N / 16K rows of 32 complex f32.
pub(crate) fn monarch_tile_bytes(log2n: u32) -> u32 {
    if log2n > 18 {
        (1 << (log2n - 14)) * 32 * 8
    } else {
        0
    }
}

/// Dynamic shared memory of the Monarch cluster kernels (`MT_CLUSTER_BYTES` of the kernel file):
/// the 16K-point row's planes (66 KiB, the 64 KiB stage of f16 words under them), then the
/// block's two row maxima.
pub(crate) fn monarch_cluster_bytes() -> u32 {
    monarch_shared_bytes(14) + 16
}

/// Dynamic shared memory of `fftconv_monarch_wide` at N = 2^log2n (8K, 16K; 16K for
/// `fftconv_monarch_middle`'s rows): two f16 planes of N / 256 rows of 264 halves (256 points and
/// 8 of padding).
pub(crate) fn monarch_shared_bytes(log2n: u32) -> u32 {
    (1 << (log2n - 8)) * 264 * 2 * 2
}

/// What a kernel module is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KernelKey {
    dtype: DType,
    shared_points: u32,
    threads: u32,
    radix_log2: u32,
    segment_table: bool,
    tensor_cores: bool,
    middle_round: bool,
    vector_io: bool,
    monarch: bool,
    min_blocks: u32,
    monarch_min_blocks: Option<u32>,
    fused: Option<FusedSizes>,
    pad: bool,
}

/// The sizes of one plan's fused pass that a specialized module compiles in (`SPEC_*` defines of
/// the kernel file; launches with other values run the generic copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FusedSizes {
    pub(crate) log2n: u32,
    pub(crate) line_log2: u32,
    pub(crate) lines_log2: u32,
    pub(crate) stage_count: u32,
    pub(crate) stage_bits: u32,
}

/// The kernels of `kernels/fftconv.cu` for one dtype and shared-memory size.
pub(crate) struct Kernels {
    pub(crate) fused: CudaFunction,
    pub(crate) columns_forward: CudaFunction,
    pub(crate) columns_inverse: CudaFunction,
    pub(crate) gather: CudaFunction,
    pub(crate) taps_sum: CudaFunction,
    pub(crate) backward_fused: CudaFunction,
    /// Filter preparation: pairs of filter spectra unpacked into half spectra.
    pub(crate) filter_unpack: CudaFunction,
    /// The cuFFT baseline's elementwise kernels.
    pub(crate) baseline_pad: CudaFunction,
    pub(crate) baseline_product: CudaFunction,
    pub(crate) baseline_crop: CudaFunction,
    /// The Monarch tensor-core pass (f16 / bf16, sm_80 or newer; `FFTCONV_CUDA_MONARCH`).
    pub(crate) monarch: Option<Arc<MonarchKernels>>,
    /// Whether shared memory has one padding point per 16.
    pub(crate) pad: bool,
    /// Complex points of shared memory per block (the longest line a pass may have).
    pub(crate) shared_points: u32,
    /// Dynamic shared memory per block in bytes (with padding).
    pub(crate) shared_bytes: u32,
    /// Threads per block.
    pub(crate) threads: u32,
}

/// Marks a cache file: magic, then the image's length and hash (little-endian u64 each).
const CACHE_MAGIC: &[u8; 8] = b"FFTCUBN1";

/// The disk cache's file for `source` compiled with `options` for compute capability `cc` by
/// this NVRTC (`None` where the cache is off). The device's name is not in the key: the image
/// depends on the architecture only, so images compiled without a GPU (`cache_image`) serve
/// every device of that architecture.
fn cache_file(
    source: &str,
    options: &[String],
    cc: (i32, i32),
) -> Result<Option<PathBuf>, CudaError> {
    let version = nvrtc_version()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (source, options, cc, version, env!("CARGO_PKG_VERSION")).hash(&mut hasher);
    Ok(cache_dir().map(|d| d.join(format!("{:016x}.cubin", hasher.finish()))))
}

/// The compiled image of `source` with `options` for compute capability `cc`, and whether it
/// came from the disk cache (an earlier process compiled it; the file's length and hash are
/// checked) rather than from NVRTC (then stored).
fn compile_cached(
    source: &str,
    options: &[String],
    cc: (i32, i32),
    name: &str,
) -> Result<(Vec<u8>, bool), CudaError> {
    let file = cache_file(source, options, cc)?;
    if let Some(image) = file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|bytes| cache_payload(&bytes))
    {
        return Ok((image, true));
    }
    let cubin = compile(source, options, name)?;
    if let Some(file) = file {
        store_cached(&file, &cubin);
    }
    Ok((cubin, false))
}

/// Writes `cubin` to the cache file `file`, best effort: under a unique temporary name, then
/// renamed, so a reader never sees half a file; the temporary is removed on any failure.
fn store_cached(file: &Path, cubin: &[u8]) -> bool {
    let Some(dir) = file.parent() else {
        return false;
    };
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = file.with_extension(format!("tmp{}-{nanos}", std::process::id()));
    let mut contents = Vec::with_capacity(cubin.len() + 24);
    contents.extend_from_slice(CACHE_MAGIC);
    contents.extend_from_slice(&(cubin.len() as u64).to_le_bytes());
    contents.extend_from_slice(&payload_hash(cubin).to_le_bytes());
    contents.extend_from_slice(cubin);
    if std::fs::write(&tmp, &contents).is_err() || std::fs::rename(&tmp, file).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return false;
    }
    true
}

/// The image in a cache file, if its header (magic, length, hash) matches.
fn cache_payload(bytes: &[u8]) -> Option<Vec<u8>> {
    let header = bytes.get(..24)?;
    let len = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let hash = u64::from_le_bytes(header[16..24].try_into().ok()?);
    let image = &bytes[24..];
    (&header[..8] == CACHE_MAGIC
        && len == image.len() as u64
        && !image.is_empty()
        && hash == payload_hash(image))
    .then(|| image.to_vec())
}

fn payload_hash(image: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    image.hash(&mut hasher);
    hasher.finish()
}

fn cache_dir() -> Option<PathBuf> {
    match std::env::var(CACHE_ENV) {
        Ok(v) if v == "off" || v == "0" => None,
        Ok(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("fftconv").join("cuda")),
    }
}

fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC was found by the probe; both pointers are valid for writes.
    let r = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    nvrtc_check("nvrtcVersion", r)?;
    Ok((major, minor))
}

fn nvrtc_check(call: &str, r: nvrtcResult) -> Result<(), CudaError> {
    if r == nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Nvrtc(format!("{call} failed: {r:?}")))
    }
}

/// Compiles `source` to a CUBIN for the architecture named in `options`.
fn compile(source: &str, options: &[String], name: &str) -> Result<Vec<u8>, CudaError> {
    use std::ffi::{c_char, CString};
    let src = CString::new(source).map_err(|_| CudaError::Nvrtc("source holds a NUL".into()))?;
    let file = CString::new("fftconv.cu").expect("no NUL");
    let mut prog: nvrtc_sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings; no headers are passed.
    let r = unsafe {
        nvrtc_sys::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            file.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    nvrtc_check("nvrtcCreateProgram", r)?;
    let result = (|| {
        let c_options: Vec<CString> = options
            .iter()
            .map(|o| CString::new(o.as_str()).expect("options hold no NUL"))
            .collect();
        let ptrs: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();
        // SAFETY: `prog` is live; `ptrs` holds `ptrs.len()` valid C strings.
        let r = unsafe { nvrtc_sys::nvrtcCompileProgram(prog, ptrs.len() as i32, ptrs.as_ptr()) };
        if r != nvrtcResult::NVRTC_SUCCESS {
            let mut size = 0usize;
            // SAFETY: `prog` is live; the log buffer has the size NVRTC reported.
            let log = unsafe {
                if nvrtc_sys::nvrtcGetProgramLogSize(prog, &mut size) == nvrtcResult::NVRTC_SUCCESS
                {
                    let mut buf = vec![0u8; size.max(1)];
                    nvrtc_sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr().cast());
                    String::from_utf8_lossy(&buf)
                        .trim_end_matches('\0')
                        .to_owned()
                } else {
                    format!("{r:?}")
                }
            };
            // An NVRTC older than the GPU rejects its architecture: CUDA cannot run here (so
            // backend selection falls back), rather than a bug in the kernels.
            if r == nvrtcResult::NVRTC_ERROR_INVALID_OPTION && log.contains("gpu-architecture") {
                return Err(CudaError::unavailable(format!(
                    "this NVRTC cannot compile for the device ({}): {}",
                    options[0],
                    log.trim()
                )));
            }
            return Err(CudaError::Compile {
                kernel: name.to_owned(),
                log,
            });
        }
        let mut size = 0usize;
        // SAFETY: `prog` compiled; the buffer has the size NVRTC reported.
        unsafe {
            nvrtc_check(
                "nvrtcGetCUBINSize",
                nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size),
            )?;
            let mut cubin = vec![0u8; size];
            nvrtc_check(
                "nvrtcGetCUBIN",
                nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()),
            )?;
            Ok(cubin)
        }
    })();
    // SAFETY: `prog` was created above and is destroyed once.
    unsafe { nvrtc_sys::nvrtcDestroyProgram(&mut prog) };
    result
}

/// One NVRTC compilation of `kernels/fftconv.cu` that the host makes on some device: the
/// options [`CudaDevice`] passes for a module and dtype (see [`module_variants`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleVariant {
    /// What the module is, e.g. `monarch f16 sm_90`.
    pub label: String,
    /// NVRTC's options, exactly as the host passes them.
    pub options: Vec<String>,
    /// The compute capability the options compile for.
    pub compute_capability: (i32, i32),
}

/// The modules the host compiles on a device of compute capability `cc`, with the defaults and
/// with the experiments' environment variables set: every base-pass module per dtype at 4K and
/// 16K points of shared memory, and the Monarch module per tensor-core dtype (from sm_80) with
/// the default register cap and wide-row block size and with the alternatives. For checking
/// the kernels against NVRTC on a machine without a GPU ([`compile_variant`]).
pub fn module_variants(cc: (i32, i32)) -> Vec<ModuleVariant> {
    let arch = format!("sm_{}{}", cc.0, cc.1);
    let mut variants = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::Bf16] {
        for (shared_points, experiments) in [(4096, false), (16384, false), (4096, true)] {
            let key = KernelKey {
                dtype,
                shared_points,
                threads: (shared_points / 16).clamp(256, 1024),
                radix_log2: if experiments { 4 } else { 3 },
                segment_table: experiments,
                tensor_cores: experiments && dtype != DType::F32 && cc.0 >= 8,
                middle_round: !experiments,
                vector_io: experiments,
                monarch: false,
                min_blocks: 1,
                monarch_min_blocks: None,
                fused: None,
                pad: true,
            };
            let what = if experiments { " experiments" } else { "" };
            variants.push(ModuleVariant {
                label: format!("base {dtype:?} {shared_points} points{what} {arch}"),
                options: base_module_options(cc, &key),
                compute_capability: cc,
            });
        }
    }
    if cc.0 >= 8 {
        // The defaults per dtype, then the f16 A/Bs the GPU bundle runs
        // (`FFTCONV_CUDA_MONARCH_WIDE_THREADS=256`, `FFTCONV_CUDA_MONARCH_MIN_BLOCKS=1`).
        for (dtype, min_blocks, wide_threads) in [
            (DType::F16, None, 512),
            (DType::Bf16, None, 512),
            (DType::F16, None, 256),
            (DType::F16, Some(1), 512),
        ] {
            variants.push(ModuleVariant {
                label: format!(
                    "monarch {dtype:?} min blocks {min_blocks:?} wide {wide_threads} {arch}"
                ),
                options: monarch_module_options(cc, dtype, min_blocks, wide_threads),
                compute_capability: cc,
            });
        }
    }
    variants
}

/// Compiles `variant` with NVRTC (no device needed; NVRTC must be on the library path), never
/// from the disk cache, and returns the image. A compile error carries NVRTC's log.
pub fn compile_variant(variant: &ModuleVariant) -> Result<Vec<u8>, CudaError> {
    crate::probe::guarded(|| {
        crate::probe::check_nvrtc()?;
        let name = format!("fftconv.cu ({})", variant.label);
        compile(KERNEL_SOURCE, &variant.options, &name)
    })
}

/// The disk cache's file for `variant` (under `FFTCONV_CUDA_CACHE` or the default folder), the
/// one a process on a device of that architecture reads before it compiles; `None` where the
/// cache is off. Needs NVRTC (its version is in the key).
pub fn cache_file_of(variant: &ModuleVariant) -> Result<Option<PathBuf>, CudaError> {
    crate::probe::guarded(|| {
        crate::probe::check_nvrtc()?;
        cache_file(KERNEL_SOURCE, &variant.options, variant.compute_capability)
    })
}

/// Stores `image` (from [`compile_variant`]) in the disk cache as the host would, so a later
/// process on a GPU of that architecture loads it instead of compiling (the GPU bundle ships
/// such a cache). Returns the file written, `None` where the cache is off or writing failed.
pub fn cache_image(variant: &ModuleVariant, image: &[u8]) -> Result<Option<PathBuf>, CudaError> {
    Ok(cache_file_of(variant)?.filter(|file| store_cached(file, image)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_threads_only_where_a_16k_row_fills_the_block() {
        use MonarchBackwardKernel as K;
        for wide in [256, 512] {
            assert_eq!(monarch_backward_threads(K::Wide, 14, wide), wide);
            assert_eq!(monarch_backward_threads(K::Middle, 20, wide), wide);
            // 8K runs fftconv_monarch_backward_wide_8k (256 threads, two blocks per SM).
            assert_eq!(monarch_backward_threads(K::Wide, 13, wide), 256);
            for k in [
                K::Narrow,
                K::Scales,
                K::ScalesFinish,
                K::ColumnsForward,
                K::ColumnsInverse,
            ] {
                assert_eq!(monarch_backward_threads(k, 16, wide), 256);
            }
        }
        // Two blocks of the 8K plane sets fit the H100's 227 KiB, gated or not; 16K's one.
        let optin = monarch_shared_limit(232_448);
        assert!(2 * monarch_backward_shared_bytes(13, true) <= optin);
        assert!(monarch_backward_shared_bytes(14, true) <= optin);
        assert!(2 * monarch_backward_shared_bytes(14, false) > optin);
    }

    #[test]
    fn split_taps_kernels_fit_hoppers_shared_memory_and_the_intermediate_buffer() {
        let optin = monarch_shared_limit(232_448);
        // Sizes the kernels' layouts give (planes of 264 halves per row, sums of 2 KiB per row).
        assert_eq!(monarch_backward_taps_shared_bytes(12), 33_792 + 16 * 2048);
        assert_eq!(monarch_backward_taps_shared_bytes(13), 67_584 + 32 * 2048);
        assert_eq!(monarch_backward_taps_shared_bytes(14), 135_168 + 47 * 2048);
        for log2n in 8..=14 {
            let bytes = monarch_backward_taps_shared_bytes(log2n);
            assert!(bytes <= optin, "{log2n}: {bytes}");
            // Every row of the sum is somewhere: one more row in shared memory would not fit.
            let rows = 1u32 << log2n.saturating_sub(8).max(4);
            let shared_rows = monarch_taps_shared_rows(log2n);
            assert!(shared_rows <= rows);
            if shared_rows < rows {
                assert!(bytes + 2048 > optin, "{log2n}: a row more would fit");
            }
            // The rest per block is at most one pair's spectrum (N complex f32), so a launch of
            // at most one block per pair fits the backward's intermediate buffer.
            let n = 1usize << log2n;
            assert!(monarch_taps_scratch_bytes(log2n, 1) <= n * 8);
            assert_eq!(
                monarch_taps_scratch_bytes(log2n, 3),
                3 * monarch_taps_scratch_bytes(log2n, 1)
            );
        }
        assert_eq!(monarch_taps_scratch_bytes(13, 100), 0);
        assert_eq!(monarch_taps_scratch_bytes(14, 1), 17 * 2048);
    }

    #[test]
    fn split_backward_sizes_from_the_environment() {
        assert_eq!(split_backward_max_log2(None), 12);
        assert_eq!(split_backward_max_log2(Some("0")), 0);
        assert_eq!(split_backward_max_log2(Some("1")), u32::MAX);
        assert_eq!(split_backward_max_log2(Some(" 16384 ")), 14);
        assert_eq!(split_backward_max_log2(Some("8192")), 13);
        assert_eq!(split_backward_max_log2(Some("4096")), 12);
        assert_eq!(split_backward_max_log2(Some("yes")), 12);
    }

    #[test]
    fn cache_files_are_checked() {
        let image = vec![1u8, 2, 3, 4, 5];
        let mut file = CACHE_MAGIC.to_vec();
        file.extend_from_slice(&(image.len() as u64).to_le_bytes());
        file.extend_from_slice(&payload_hash(&image).to_le_bytes());
        file.extend_from_slice(&image);
        assert_eq!(cache_payload(&file), Some(image.clone()));
        let mut truncated = file.clone();
        truncated.pop();
        assert_eq!(cache_payload(&truncated), None);
        let mut damaged = file.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(cache_payload(&damaged), None);
        assert_eq!(cache_payload(&image), None);
        assert_eq!(cache_payload(b""), None);
    }
}
