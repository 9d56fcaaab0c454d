//! [`Pipelines`]: the compute pipelines of one I/O dtype on one device (the schedule's passes,
//! the register-radix fused block, the backward's taps sum and fused pass; shared memory and
//! workgroup size as specialization constants), each made on first use, and their layouts,
//! cached per device, dtype and shared memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use ash::vk;
use monarch_core::schedule::{PassKind, PassParams};
use monarch_core::DType;

use crate::context::VulkanContext;
use crate::error::check;
use crate::VulkanError;

mod spirv {
    include!(concat!(env!("OUT_DIR"), "/shaders.rs"));
}

/// Storage-buffer bindings of the shaders (see `shaders/fftconv.comp`).
pub(crate) const BINDINGS: u32 = 13;
pub(crate) const BINDING_U: u32 = 0;
pub(crate) const BINDING_PRE: u32 = 1;
pub(crate) const BINDING_POST: u32 = 2;
pub(crate) const BINDING_Y: u32 = 3;
pub(crate) const BINDING_SPECTRUM: u32 = 4;
pub(crate) const BINDING_TWIDDLES: u32 = 5;
pub(crate) const BINDING_TMP: u32 = 6;
pub(crate) const BINDING_OTHER: u32 = 7;
pub(crate) const BINDING_TAPS: u32 = 8;
pub(crate) const BINDING_Y2: u32 = 9;
pub(crate) const BINDING_TAPS_SUM: u32 = 10;
/// The fused backward's `dy` (read) and third output (the post-gate gradient).
pub(crate) const BINDING_DY: u32 = 11;
pub(crate) const BINDING_Y3: u32 = 12;

/// Environment variable: `1` switches off the shared-memory padding against bank conflicts (for
/// comparing both on a GPU).
pub const NO_PAD_ENV: &str = "FFTCONV_VULKAN_NO_PAD";
/// Environment variable: `0` makes the fused pass run the forward's finest FFT round, the
/// pointwise product and the inverse's finest round as three passes instead of one register
/// round (the default; CUDA's `FFTCONV_CUDA_MIDDLE_ROUND`). Measured on lavapipe (f32, 16 MB):
/// the middle round takes 11-19% off at N = 256 .. 4K and 6% at 16K, 64K; not yet on a GPU.
pub const MIDDLE_ROUND_ENV: &str = "FFTCONV_VULKAN_MIDDLE_ROUND";
/// Environment variable: `1` computes the shader's per-point divisions through a corrected float
/// division; an experiment for timing on a GPU (3-7% slower on lavapipe).
pub const FAST_DIV_ENV: &str = "FFTCONV_VULKAN_FAST_DIV";
/// Environment variable: `1` makes the FFT rounds load one twiddle per stage and apply constant
/// W_8 factors (CUDA's scheme) instead of a load per butterfly; an experiment for timing on a GPU
/// (25-40% slower on lavapipe, whose compiler keeps the butterfly loops).
pub const CONST_TWIDDLES_ENV: &str = "FFTCONV_VULKAN_CONST_TWIDDLES";
/// Environment variable: `1` makes the cooperative-matrix rounds store their products in f16
/// over the staged operand (a third of the shared memory per product slot, so a slot for every
/// subgroup on NVIDIA's 48 KiB instead of 3 of 8; one more f16 rounding, and four barriers per
/// batch of tiles instead of two); an experiment for timing on a GPU.
pub const COOP_F16_PRODUCTS_ENV: &str = "FFTCONV_VULKAN_COOP_F16_PRODUCTS";
/// Environment variable: `0` makes the backward run its step schedule (forward transforms of
/// `pre * u` and `dy * post` through device memory, then one inverse per product and the gather)
/// even where the fused backward applies (one pass per chunk: a shared-memory line per row,
/// rows of one overlap-save block whose FFT fits one workgroup; CUDA's
/// `fftconv_backward_fused`), for comparing both. Read on every backward call.
pub const FUSED_BACKWARD_ENV: &str = "FFTCONV_VULKAN_FUSED_BACKWARD";

/// Environment variable: `0` switches off the register-radix passes (the default; Stockham
/// radix-16 passes with 16 points per invocation in registers): the forward's fused block runs
/// the radix-2 fused pass (`PASS_FUSED`) instead of `PASS_REGISTER_FUSED`, and the passes that
/// transform lines in place in shared memory (the column passes, the backward's fused passes)
/// their radix-2 rounds (specialization constant 8), for comparing both.
/// Read when a convolution is made.
pub const REGISTER_FFT_ENV: &str = "FFTCONV_VULKAN_REGISTER_FFT";

/// Whether [`REGISTER_FFT_ENV`] leaves the register-radix passes on (it is not `0`).
pub(crate) fn register_fft_from_env() -> bool {
    std::env::var(REGISTER_FFT_ENV).map_or(true, |v| v.trim() != "0")
}

/// Environment variable: `0` keeps the forward's intermediate spectra in f32 where they would
/// be f16 ([`VulkanOptions::half_spectra`](crate::VulkanOptions::half_spectra)), for comparing
/// both. Read when a convolution is made.
pub const HALF_SPECTRA_ENV: &str = "FFTCONV_VULKAN_HALF_SPECTRA";

/// Whether [`HALF_SPECTRA_ENV`] leaves half spectra on (it is not `0`).
pub(crate) fn half_spectra_from_env() -> bool {
    std::env::var(HALF_SPECTRA_ENV).map_or(true, |v| v.trim() != "0")
}

/// Environment variable: the most shared-memory rounds per exchange of the register-radix
/// forward holding one line longer than the shared memory per workgroup
/// ([`VulkanOptions::max_exchange_rounds`](crate::VulkanOptions::max_exchange_rounds); default
/// [`DEFAULT_EXCHANGE_ROUNDS`]). `1` keeps every line within the shared memory (the plan's
/// column passes then run FFTs longer than it), for comparing both. Read when a convolution is
/// made.
pub const EXCHANGE_ROUNDS_ENV: &str = "FFTCONV_VULKAN_EXCHANGE_ROUNDS";

/// Rounds per exchange allowed by default: 4, so 16K points on 4096 shared points (and 1024
/// invocations) are one pass.
pub const DEFAULT_EXCHANGE_ROUNDS: u32 = 4;

/// [`EXCHANGE_ROUNDS_ENV`] where it is a positive number, else [`DEFAULT_EXCHANGE_ROUNDS`].
pub(crate) fn exchange_rounds_from_env() -> u32 {
    std::env::var(EXCHANGE_ROUNDS_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(DEFAULT_EXCHANGE_ROUNDS)
}

/// The I/O part of a shader's name.
fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::Bf16 => "BF16",
    }
}

/// The embedded SPIR-V of `pass` (`FUSED`, `COLUMNS_FORWARD`, ..., as `build.rs` names them) for
/// I/O `io`, with the cooperative-matrix rounds of tile `coop` where given, with f16
/// intermediates where `half` (the `_TMP16` variants), and the specialization constants it reads
/// (bit i: `constant_id` i; found by `build.rs`).
fn shader(
    pass: &str,
    io: &str,
    coop: Option<u32>,
    half: bool,
) -> Result<(&'static [u8], u32), VulkanError> {
    let mut name = match coop {
        Some(t) => format!("{pass}_{io}_COOP{t}"),
        None => format!("{pass}_{io}"),
    };
    if half {
        name.push_str("_TMP16");
    }
    spirv::SHADERS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, code, read)| (*code, *read))
        .ok_or_else(|| VulkanError::unsupported(format!("no embedded shader {name}")))
}

/// A pipeline [`Pipelines`] makes: a pass of the schedule, or one it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Shader {
    /// A [`PassKind`] of the schedule (`PASS_FUSED`, the column passes, the gather).
    Pass(PassKind),
    /// The forward's fused block with register-radix FFTs (`PASS_REGISTER_FUSED`; the
    /// convolution swaps it in for the fused step, see
    /// [`register_lines_log2`](Pipelines::register_lines_log2)).
    RegisterFused,
    /// The forward's whole FFT as one line of 2^`log2n` points per workgroup of 2^`log2n` / 16
    /// invocations, more points than the shared memory holds (`PASS_REGISTER_FUSED` with
    /// `LONG_LINES`: each exchange between its passes goes through the shared memory in rounds;
    /// see [`long_line_rounds`](Pipelines::long_line_rounds)).
    RegisterFusedLong { log2n: u32 },
    /// The backward's taps sum (`PASS_TAPS_SUM`): sums the taps over each channel's pairs and
    /// adds the sums into the filter gradient (the backward records it after each chunk's
    /// steps).
    TapsSum,
    /// The fused backward (`PASS_BACKWARD_FUSED`) with `shared_points` complex points of shared
    /// memory (padded when `pad`) besides its 256 bytes of row maxima (its shared memory depends
    /// on the problem's FFT size and gating). The caller checks that it fits the device
    /// (`PassSchedule::fused_backward_shared_bytes`).
    BackwardFused { shared_points: u32, pad: bool },
    /// The forward's pass of this kind with half spectra (the `_TMP16` variants: intermediates
    /// in f16, scaled per tile, for 16-bit I/O on plans of one global stage): the column passes,
    /// and for [`PassKind::Fused`] the register-radix fused pass (`PASS_REGISTER_FUSED`).
    HalfSpectra(PassKind),
    /// The memory floor's compute copy (`shaders/copy.comp`, one build for every dtype): 16-byte
    /// elements from binding [`BINDING_U`] to [`BINDING_Y`], the count as the first
    /// push-constant word.
    Copy,
}

impl Shader {
    /// The pass's name in `build.rs`, and whether it has cooperative-matrix variants.
    fn pass_name(self) -> (&'static str, bool) {
        match self {
            Shader::Pass(PassKind::Fused) => ("FUSED", true),
            Shader::Pass(PassKind::ColumnsForward) => ("COLUMNS_FORWARD", true),
            Shader::Pass(PassKind::ColumnsInverse) => ("COLUMNS_INVERSE", true),
            Shader::Pass(PassKind::Gather) => ("GATHER", false),
            Shader::HalfSpectra(PassKind::ColumnsForward) => ("COLUMNS_FORWARD", true),
            Shader::HalfSpectra(PassKind::ColumnsInverse) => ("COLUMNS_INVERSE", true),
            Shader::HalfSpectra(PassKind::Fused) => ("REGISTER_FUSED", false),
            // No half-spectra variant: the lookup of `GATHER_<IO>_TMP16` fails, typed.
            Shader::HalfSpectra(PassKind::Gather) => ("GATHER", false),
            Shader::RegisterFused | Shader::RegisterFusedLong { .. } => ("REGISTER_FUSED", false),
            Shader::TapsSum => ("TAPS_SUM", false),
            Shader::BackwardFused { .. } => ("BACKWARD_FUSED", false),
            Shader::Copy => ("COPY", false),
        }
    }
}

/// Whether shared memory may be padded against bank conflicts ([`NO_PAD_ENV`] is not `1`).
pub(crate) fn padding_allowed() -> bool {
    std::env::var(NO_PAD_ENV).map_or(true, |v| v != "1")
}

/// Shader variants chosen by environment variables (specialization constants 3 .. 5, 7, 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ShaderOptions {
    /// The register-radix line DFTs of the passes that hold their lines in shared memory
    /// (specialization constant 8).
    register_lines: bool,
    middle: bool,
    fast_div: bool,
    const_twiddles: bool,
    coop_f16_products: bool,
}

impl ShaderOptions {
    /// The options the environment asks for; `register_fft` overrides [`REGISTER_FFT_ENV`].
    fn from_env(register_fft: Option<bool>) -> ShaderOptions {
        let on = |name: &str| std::env::var(name).is_ok_and(|v| v.trim() == "1");
        ShaderOptions {
            register_lines: register_fft.unwrap_or_else(register_fft_from_env),
            middle: std::env::var(MIDDLE_ROUND_ENV).map_or(true, |v| v.trim() != "0"),
            fast_div: on(FAST_DIV_ENV),
            const_twiddles: on(CONST_TWIDDLES_ENV),
            coop_f16_products: on(COOP_F16_PRODUCTS_ENV),
        }
    }
}

/// Largest number of complex points a workgroup keeps in shared memory (the shader's FFT lines).
const MAX_SHARED_POINTS: u32 = 4096;
/// Invocations per workgroup (fewer where the device allows fewer).
const WORKGROUP_SIZE: u32 = 256;

/// Invocations per workgroup on this device: [`WORKGROUP_SIZE`] or the largest power of two
/// its limits allow.
fn workgroup_size(caps: &crate::DeviceCapabilities) -> u32 {
    1u32 << WORKGROUP_SIZE
        .min(caps.max_invocations)
        .min(caps.max_workgroup_size_x)
        .max(1)
        .ilog2()
}

/// What the cooperative-matrix rounds need to size their product slots.
#[derive(Debug, Clone, Copy)]
struct CooperativeSlots {
    tile: u32,
    f16_products: bool,
    /// Subgroups per workgroup (as reported; the shader caps the slots it uses by the real
    /// count).
    subgroups: u32,
}

/// A workgroup's shared memory: FFT data points, padding, product slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SharedLayout {
    /// Complex data points (a power of two, at least 16).
    points: u32,
    /// One padding point per 16.
    pad: bool,
    /// Product slots of the cooperative-matrix rounds (1 without them: the constant's default).
    slots: u32,
}

impl SharedLayout {
    /// The largest power of two of points (at most 4096, and `max_points` when given) that
    /// leaves room for one product slot; padding where it still fits (and is allowed); then as
    /// many slots as the rest holds, up to one per subgroup.
    fn new(
        shared_bytes: u32,
        max_points: Option<u32>,
        coop: Option<CooperativeSlots>,
        padding_allowed: bool,
    ) -> SharedLayout {
        let extra =
            |slots: u32| coop.map_or(0, |c| cooperative_bytes(c.tile, slots, c.f16_products));
        let mut points = (shared_bytes / 8).min(MAX_SHARED_POINTS);
        if let Some(limit) = max_points {
            // At least 16 points (the smallest FFT size), so every line has 4+ points.
            points = points.min(limit.max(16));
        }
        let mut points = 1 << points.max(1).ilog2();
        while points > 16 && points * 8 + extra(1) > shared_bytes {
            points /= 2;
        }
        let data_bytes = |pad: bool| (points + if pad { points / 16 } else { 0 }) * 8;
        // Bank-conflict padding (one point per 16) where it still fits, unless switched off.
        let pad = data_bytes(true) + extra(1) <= shared_bytes && padding_allowed;
        let slots = coop.map_or(1, |c| {
            let room = shared_bytes
                .saturating_sub(data_bytes(pad) + cooperative_bytes(c.tile, 0, c.f16_products));
            (room / cooperative_bytes_per_slot(c.tile, c.f16_products)).clamp(1, c.subgroups)
        });
        SharedLayout { points, pad, slots }
    }

    /// Bytes the shader declares with this layout (the FFT passes).
    #[cfg(test)]
    fn bytes(&self, coop: Option<CooperativeSlots>) -> u32 {
        let data = (self.points + if self.pad { self.points / 16 } else { 0 }) * 8;
        data + coop.map_or(0, |c| cooperative_bytes(c.tile, self.slots, c.f16_products))
    }
}

/// Shared-memory bytes of one product slot of the cooperative-matrix rounds with tile T: the B
/// operand (re, im; f16) and the products (re, im; f32, or none when they are stored in f16
/// over the operand), T x T each.
fn cooperative_bytes_per_slot(t: u32, f16_products: bool) -> u32 {
    if f16_products {
        4 * t * t
    } else {
        12 * t * t
    }
}

/// Shared-memory bytes the cooperative-matrix rounds add with `slots` slots: the six f16 DFT
/// matrices (forward and inverse; re, im, -im), the slots, and (f16 products) the one-float
/// placeholder of the f32 product array.
fn cooperative_bytes(t: u32, slots: u32, f16_products: bool) -> u32 {
    12 * t * t + slots * cooperative_bytes_per_slot(t, f16_products) + u32::from(f16_products) * 4
}

/// The per-pipeline specialization constants (the rest are the [`ShaderOptions`]).
#[derive(Debug, Clone, Copy)]
struct Specialization {
    /// Invocations per workgroup (constant 0).
    workgroup: u32,
    /// Complex points of shared memory, and whether they are padded (constants 1, 2).
    shared_points: u32,
    pad: bool,
    /// `LONG_LINES` (constant 9): the shared-memory rounds per exchange of the register-radix
    /// pass's one line per workgroup (0: lines that fit the shared memory).
    long_line_rounds: u32,
}

/// The pipelines of one dtype on one device (their push constants are [`PassParams`]), each
/// made on first use ([`pipeline`](Self::pipeline)): a convolution compiles only the shaders it
/// runs (a one-pass forward on the register-radix pass: one).
pub(crate) struct Pipelines {
    ctx: Arc<VulkanContext>,
    pub(crate) set_layout: vk::DescriptorSetLayout,
    pub(crate) layout: vk::PipelineLayout,
    /// The pipelines made so far.
    made: Mutex<HashMap<Shader, vk::Pipeline>>,
    /// Invocations per workgroup.
    pub(crate) workgroup: u32,
    /// Complex points of shared memory per workgroup (a power of two).
    pub(crate) shared_points: u32,
    /// Whether the FFT passes' shared memory is padded (one point per 16).
    pad: bool,
    dtype: DType,
    options: ShaderOptions,
    /// The cooperative-matrix tile T of the FFT passes (`None`: the portable f32 rounds).
    pub(crate) cooperative_tile: Option<u32>,
    /// Subgroups per workgroup that run matrix products (specialization constant 6).
    cooperative_slots: u32,
}

impl std::fmt::Debug for Pipelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipelines")
            .field("shared_points", &self.shared_points)
            .finish_non_exhaustive()
    }
}

impl Pipelines {
    /// The pipeline of `shader`, made on first use (its shader compiled by the driver: on
    /// lavapipe, seconds).
    pub(crate) fn pipeline(&self, shader: Shader) -> Result<vk::Pipeline, VulkanError> {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&p) = made.get(&shader) {
            return Ok(p);
        }
        let (pass, has_coop) = shader.pass_name();
        // The cooperative-matrix variants exist for the FFT passes (16-bit I/O only).
        let coop = self.cooperative_tile.filter(|_| has_coop);
        let io = match shader {
            Shader::Copy => "F32",
            _ => dtype_name(self.dtype),
        };
        let half = matches!(shader, Shader::HalfSpectra(_));
        let (code, read) = self::shader(pass, io, coop, half)?;
        let mut shape = Specialization {
            workgroup: self.workgroup,
            shared_points: self.shared_points,
            pad: self.pad,
            long_line_rounds: 0,
        };
        match shader {
            Shader::BackwardFused { shared_points, pad } => {
                (shape.shared_points, shape.pad) = (shared_points, pad);
            }
            Shader::RegisterFusedLong { log2n } => {
                shape.workgroup = 1 << (log2n - 4);
                shape.long_line_rounds = self.long_line_rounds(log2n);
            }
            _ => {}
        }
        let p = self.create_pipeline(code, read, shape)?;
        made.insert(shader, p);
        Ok(p)
    }

    /// log2 of the lines of M = 2^log2n points (a pair's whole FFT, or the fused block's lines
    /// after global stages) per workgroup of the register-radix pass, or `None` where it cannot
    /// run them: each line needs M / 16 invocations and M points of shared memory, so
    /// 16 <= M <= both 16 x the workgroup and the shared points.
    pub(crate) fn register_lines_log2(&self, log2n: u32) -> Option<u32> {
        let fits = (4..32).contains(&log2n)
            && (1u64 << log2n) <= u64::from(self.shared_points)
            && (1u64 << (log2n - 4)) <= u64::from(self.workgroup);
        fits.then(|| {
            let by_memory = self.shared_points.ilog2() - log2n;
            let by_invocations = self.workgroup.ilog2() + 4 - log2n;
            by_memory.min(by_invocations)
        })
    }

    /// Whether [`Shader::RegisterFusedLong`] runs lines of 2^`log2n` points: they are longer
    /// than the shared memory, need at most `max_rounds` rounds
    /// ([`long_line_rounds`](Self::long_line_rounds)), and their 2^`log2n` / 16 invocations fit
    /// one workgroup on this device.
    pub(crate) fn holds_long_line(&self, log2n: u32, max_rounds: u32) -> bool {
        let caps = self.ctx.capabilities();
        let invocations = caps.max_invocations.min(caps.max_workgroup_size_x);
        (5..32).contains(&log2n)
            && 1 << log2n > self.shared_points
            && self.long_line_rounds(log2n) <= max_rounds
            && 1 << (log2n - 4) <= invocations
    }

    /// Shared-memory rounds per exchange of a line of 2^`log2n` points longer than the shared
    /// memory (both powers of two).
    fn long_line_rounds(&self, log2n: u32) -> u32 {
        (1 << log2n) / self.shared_points
    }

    /// A compute pipeline of `code` in this layout, with this `shape` and the shader options as
    /// its specialization constants: those of them the module reads (bit i of `read`:
    /// `constant_id` i), so that pipelines differing only in constants their shader ignores are
    /// the same to the driver's shader cache.
    fn create_pipeline(
        &self,
        code: &[u8],
        read: u32,
        shape: Specialization,
    ) -> Result<vk::Pipeline, VulkanError> {
        let device = &self.ctx.device;
        let options = self.options;
        let spec_words = [
            shape.workgroup,
            shape.shared_points,
            u32::from(shape.pad),
            u32::from(options.middle),
            u32::from(options.fast_div),
            u32::from(options.const_twiddles),
            self.cooperative_slots,
            u32::from(options.coop_f16_products),
            u32::from(options.register_lines),
            shape.long_line_rounds,
        ];
        let ids: Vec<u32> = (0..spec_words.len() as u32)
            .filter(|id| read & (1 << id) != 0)
            .collect();
        let spec_data: Vec<u8> = ids
            .iter()
            .flat_map(|&id| spec_words[id as usize].to_ne_bytes())
            .collect();
        let entries: Vec<vk::SpecializationMapEntry> = ids
            .iter()
            .enumerate()
            .map(|(at, &id)| {
                vk::SpecializationMapEntry::default()
                    .constant_id(id)
                    .offset(4 * at as u32)
                    .size(4)
            })
            .collect();
        let spec = vk::SpecializationInfo::default()
            .map_entries(&entries)
            .data(&spec_data);
        let words = ash::util::read_spv(&mut std::io::Cursor::new(code))
            .map_err(|e| VulkanError::unsupported(format!("embedded SPIR-V unreadable: {e}")))?;
        // SAFETY: valid SPIR-V produced by glslang at build time.
        let module = unsafe {
            device.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&words), None)
        }
        .map_err(|r| check("vkCreateShaderModule", r))?;
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(c"main")
            .specialization_info(&spec);
        let info = [vk::ComputePipelineCreateInfo::default()
            .stage(stage)
            .layout(self.layout)];
        // SAFETY: the module and layout are alive; the module is destroyed after creation.
        let created = unsafe {
            let r = device.create_compute_pipelines(vk::PipelineCache::null(), &info, None);
            device.destroy_shader_module(module, None);
            r
        };
        Ok(created.map_err(|(_, r)| check("vkCreateComputePipelines", r))?[0])
    }

    /// The cached pipelines for `dtype` on the context's device, using at most
    /// `max_shared_points` complex points of shared memory (`None`: as many as the device has,
    /// up to 4096).
    ///
    /// On the cooperative-matrix path with 16-bit I/O, the FFT passes also hold the DFT matrices
    /// and each product slot's staging tiles ([`cooperative_bytes`]): the data gets the largest
    /// power of two of points that leaves room for one slot, and the rest makes more slots, up
    /// to one per subgroup.
    pub(crate) fn get(
        ctx: &Arc<VulkanContext>,
        dtype: DType,
        max_shared_points: Option<u32>,
        register_fft: Option<bool>,
    ) -> Result<Arc<Pipelines>, VulkanError> {
        type Cache = Mutex<HashMap<(DType, u32, bool, ShaderOptions), Arc<Pipelines>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let caps = ctx.capabilities();
        let cooperative_tile = caps.path.cooperative_tile().filter(|_| dtype != DType::F32);
        let options = ShaderOptions::from_env(register_fft);
        let layout = SharedLayout::new(
            caps.shared_memory_bytes,
            max_shared_points,
            cooperative_tile.map(|t| CooperativeSlots {
                tile: t,
                f16_products: options.coop_f16_products,
                subgroups: (workgroup_size(caps) / caps.subgroup_size.max(1)).max(1),
            }),
            padding_allowed(),
        );
        let (shared_points, pad, cooperative_slots) = (layout.points, layout.pad, layout.slots);
        let key = (dtype, shared_points, pad, options);
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(&key) {
            return Ok(Arc::clone(p));
        }
        let p = Arc::new(Pipelines::new(
            ctx,
            dtype,
            shared_points,
            pad,
            options,
            (cooperative_tile, cooperative_slots),
        )?);
        map.insert(key, Arc::clone(&p));
        Ok(p)
    }

    fn new(
        ctx: &Arc<VulkanContext>,
        dtype: DType,
        shared_points: u32,
        pad: bool,
        options: ShaderOptions,
        (cooperative_tile, cooperative_slots): (Option<u32>, u32),
    ) -> Result<Pipelines, VulkanError> {
        let caps = ctx.capabilities();
        if dtype != DType::F32 && !caps.storage_16bit {
            return Err(VulkanError::unsupported(format!(
                "{dtype} I/O needs storageBuffer16BitAccess, which {} lacks",
                caps.name
            )));
        }
        let device = &ctx.device;
        let workgroup = workgroup_size(caps);

        let bindings: Vec<_> = (0..BINDINGS)
            .map(|b| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let mut this = Pipelines {
            ctx: Arc::clone(ctx),
            set_layout: vk::DescriptorSetLayout::null(),
            layout: vk::PipelineLayout::null(),
            made: Mutex::new(HashMap::new()),
            workgroup,
            shared_points,
            pad,
            dtype,
            options,
            cooperative_tile,
            cooperative_slots,
        };
        // SAFETY: valid create infos on a live device; every handle is stored in `this` at once,
        // so an early return destroys what exists.
        unsafe {
            this.set_layout = device
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
                    None,
                )
                .map_err(|r| check("vkCreateDescriptorSetLayout", r))?;
            let set_layouts = [this.set_layout];
            let push = [vk::PushConstantRange::default()
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
                .offset(0)
                .size(std::mem::size_of::<PassParams>() as u32)];
            this.layout = device
                .create_pipeline_layout(
                    &vk::PipelineLayoutCreateInfo::default()
                        .set_layouts(&set_layouts)
                        .push_constant_ranges(&push),
                    None,
                )
                .map_err(|r| check("vkCreatePipelineLayout", r))?;
        }
        Ok(this)
    }
}

impl Drop for Pipelines {
    fn drop(&mut self) {
        let device = &self.ctx.device;
        // SAFETY: destroyed once; null handles are ignored by Vulkan.
        unsafe {
            let made = self.made.get_mut().unwrap_or_else(|e| e.into_inner());
            for (_, p) in made.drain() {
                device.destroy_pipeline(p, None);
            }
            device.destroy_pipeline_layout(self.layout, None);
            device.destroy_descriptor_set_layout(self.set_layout, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::COOPERATIVE_TILES;

    #[test]
    fn every_pass_dtype_and_tile_has_its_shader() {
        for io in ["F32", "F16", "BF16"] {
            for pass in [
                "FUSED",
                "REGISTER_FUSED",
                "COLUMNS_FORWARD",
                "COLUMNS_INVERSE",
                "GATHER",
                "TAPS_SUM",
                "BACKWARD_FUSED",
            ] {
                assert!(
                    shader(pass, io, None, false).is_ok_and(|(c, _)| c.len() > 20),
                    "{pass}_{io}"
                );
                // Half spectra: the forward's passes (the register-radix fused pass and the
                // column passes) with 16-bit I/O.
                let half = io != "F32"
                    && matches!(
                        pass,
                        "REGISTER_FUSED" | "COLUMNS_FORWARD" | "COLUMNS_INVERSE"
                    );
                assert_eq!(
                    shader(pass, io, None, true).is_ok(),
                    half,
                    "{pass}_{io}_TMP16"
                );
            }
            for pass in ["FUSED", "COLUMNS_FORWARD", "COLUMNS_INVERSE"] {
                for t in COOPERATIVE_TILES {
                    // f32 I/O has no cooperative-matrix variant (the host never asks for one).
                    assert_eq!(
                        shader(pass, io, Some(t), false).is_ok(),
                        io != "F32",
                        "{pass}_{io}_{t}"
                    );
                    assert_eq!(
                        shader(pass, io, Some(t), true).is_ok(),
                        io != "F32" && pass != "FUSED",
                        "{pass}_{io}_{t}_TMP16"
                    );
                }
            }
        }
        assert!(shader("FUSED", "F16", Some(32), false).is_err());
        assert!(shader("COPY", "F32", None, false).is_ok_and(|(c, _)| c.len() > 20));
    }

    #[test]
    fn each_shader_reads_the_constants_of_its_pass() {
        // build.rs finds them in the SPIR-V; the host passes only those. Every shader reads
        // the workgroup size (0); the FFT passes the shared memory (1, 2); the middle round (3)
        // is the radix-2 fused pass's; the matrix rounds' slots (6, 7) are the cooperative
        // variants'; the register-radix lines in shared memory (8) those of the column passes,
        // the radix-2 fused pass and the fused backward; the long lines (9) the register-radix
        // fused pass's.
        for (name, _, read) in spirv::SHADERS {
            let reads = |id: u32| read & (1 << id) != 0;
            assert!(reads(0), "{name}: {read:#x}");
            let base = name.strip_suffix("_TMP16").unwrap_or(name);
            let pass = base.rsplit_once('_').map_or(base, |(p, last)| {
                if last.starts_with("COOP") {
                    p.rsplit_once('_').map_or(p, |(p, _)| p)
                } else {
                    p
                }
            });
            let coop = name.contains("_COOP");
            let fft = !matches!(pass, "GATHER" | "TAPS_SUM" | "COPY");
            assert!(!fft || reads(1) && reads(2), "{name}: {read:#x}");
            assert_eq!(reads(3), pass == "FUSED", "{name}: {read:#x}");
            assert_eq!(reads(6) && reads(7), coop, "{name}: {read:#x}");
            assert_eq!(reads(6) || reads(7), coop, "{name}: {read:#x}");
            let in_shared =
                pass.starts_with("COLUMNS") || pass == "FUSED" || pass == "BACKWARD_FUSED";
            assert_eq!(reads(8), in_shared, "{name}: {read:#x}");
            assert_eq!(reads(9), pass == "REGISTER_FUSED", "{name}: {read:#x}");
        }
    }

    #[test]
    fn shared_layouts_fit_and_use_the_room() {
        let nvidia = |f16_products| CooperativeSlots {
            tile: 16,
            f16_products,
            subgroups: 8,
        };
        // NVIDIA's 48 KiB, T = 16, 8 warps: 4096 padded points, 3 slots (f32 products) or 8.
        let l = SharedLayout::new(49152, None, Some(nvidia(false)), true);
        assert_eq!(
            l,
            SharedLayout {
                points: 4096,
                pad: true,
                slots: 3
            }
        );
        assert_eq!(l.bytes(Some(nvidia(false))), 47104);
        let l = SharedLayout::new(49152, None, Some(nvidia(true)), true);
        assert_eq!((l.points, l.pad, l.slots), (4096, true, 8));
        assert_eq!(l.bytes(Some(nvidia(true))), 46084);
        // Portable: the whole 32 KiB of data, no room for padding at 4096 points.
        let l = SharedLayout::new(49152, None, None, true);
        assert_eq!((l.points, l.pad, l.slots), (4096, true, 1));
        let l = SharedLayout::new(32768, None, None, true);
        assert_eq!((l.points, l.pad), (4096, false));
        // lavapipe's 32 KiB, T = 8, 32 subgroups of 8: 2048 padded points and 19 slots.
        let lvp = CooperativeSlots {
            tile: 8,
            f16_products: false,
            subgroups: 32,
        };
        let l = SharedLayout::new(32768, None, Some(lvp), true);
        assert_eq!((l.points, l.pad, l.slots), (2048, true, 19));
        // Every layout fits, has a slot, and never more slots than subgroups.
        for shared in [16384u32, 32768, 49152, 65536, 232_448] {
            for max in [None, Some(16), Some(64), Some(256), Some(4096)] {
                for coop in [None, Some(nvidia(false)), Some(nvidia(true)), Some(lvp)] {
                    for pad in [false, true] {
                        let l = SharedLayout::new(shared, max, coop, pad);
                        assert!(l.points.is_power_of_two() && l.points >= 16, "{l:?}");
                        assert!(l.bytes(coop) <= shared, "{shared} {max:?} {coop:?}: {l:?}");
                        assert!(l.slots >= 1 && l.slots <= coop.map_or(1, |c| c.subgroups));
                        assert!(!l.pad || pad);
                    }
                }
            }
        }
    }
}
