//! The CUDA kernels compiled for the DEVICE without a GPU: `kernels/fftconv.cu` goes through
//! clang's CUDA mode (`--cuda-device-only`, no CUDA toolkit: `-nocudainc -nocudalib`, with
//! `tests/device_compile/prelude.h` for what NVRTC predefines and clang then lacks) to PTX, for a
//! representative set of the variants `src/device.rs` (`build_kernels`) asks NVRTC for: every I/O
//! type, both paddings, small and the largest shared-memory sizes and block sizes, each
//! experiment (`MAX_RADIX_LOG2=4`, `SEGMENT_TABLE`, `TENSOR_CORES`, `MIDDLE_ROUND`, `VECTOR_IO`) on and off,
//! and an sm_70, an sm_80 and the newest target clang accepts (sm_90, else sm_80). The host
//! emulation (`tests/emulation.rs`) replaces every inline-PTX branch, so this is what compiles
//! the device-only code (f16 conversions, `mma.sync`, `shfl.sync`, `bar.warp.sync`, read-only
//! loads, multiply-high, bit reversal) before a GPU sees it.
//!
//! Per variant: clang exits 0 with `-Wall -Wextra` and no warning located in the kernel or the
//! prelude; the PTX targets the requested architecture, has every `extern "C"` kernel the backend
//! loads as an `.entry`, and holds the inline PTX the variant must use (and not `mma.sync` without
//! `TENSOR_CORES`, nor the f16 conversions of f16 I/O with f32 or bf16 I/O). clang checks
//! the C++ and the inline-asm operand constraints, not the PTX text inside `asm` strings (that is
//! ptxas's job, on the GPU machine through NVRTC). The PTX files are kept under the target's
//! temporary directory (`device_compile/`).
//!
//! Environment:
//! - `FFTCONV_CLANG_CUDA`: the clang to use (a path; it must work); otherwise the first of
//!   `clang++-15`, `clang++`, `clang` that compiles a probe kernel for the device (clang built with
//!   the NVPTX target). Without one the test prints `skipped: ...` and passes, unless
//!   `FFTCONV_REQUIRE_CLANG_CUDA=1`.
//! - `FFTCONV_DEVICE_COMPILE_KERNEL`: another kernel file to check instead of `kernels/fftconv.cu`.
//! - `FFTCONV_DEVICE_COMPILE_FLAGS`: extra clang flags (whitespace-separated), for every variant.
//! - `FFTCONV_PTXAS`: NVIDIA's PTX assembler (`ptxas`, e.g. from the `nvidia-cuda-nvcc-cu12`
//!   wheel, which runs without a GPU); otherwise `ptxas` on the PATH. With it, every PTX file is
//!   also assembled for sm_90 (what NVRTC does on the GPU machine): that checks the PTX text
//!   inside the `asm` strings too, and the fused kernel's registers and stack are printed. Without
//!   it that step is skipped with a message, unless `FFTCONV_REQUIRE_PTXAS=1`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The kernels `build_kernels` loads from every module (`src/device.rs`).
const ENTRIES: [&str; 10] = [
    "fftconv_fused",
    "fftconv_columns_forward",
    "fftconv_columns_inverse",
    "fftconv_gather",
    "fftconv_taps_sum",
    "fftconv_backward_fused",
    "fftconv_filter_unpack",
    "fftconv_baseline_pad",
    "fftconv_baseline_product",
    "fftconv_baseline_crop",
];

/// Inline PTX every variant uses (bit casts, bit reversal, the divisors' multiply-high, the
/// read-only loads of twiddles and filter spectra).
const ALWAYS: [&str; 4] = ["mov.b32", "brev.b32", "mul.hi.u32", "ld.global.nc.v2.f32"];

/// Inline PTX of the tensor-core rounds (`TENSOR_CORES=1`; the first, the `mma`, only there).
const TENSOR_CORE_PTX: [&str; 4] = [
    "mma.sync.aligned.m16n8k16",
    "shfl.sync.bfly.b32",
    "bar.warp.sync",
    "cvt.rn.f16x2.f32",
];

/// The kernels of the Monarch pass (`MONARCH_TC=1` only).
const MONARCH_ENTRIES: [&str; 25] = [
    "fftconv_monarch",
    "fftconv_monarch_prefetch",
    "fftconv_monarch_backward_taps",
    "fftconv_monarch_backward_taps_prefetch",
    "fftconv_monarch_backward_taps_wide",
    "fftconv_monarch_filter_max",
    "fftconv_monarch_scales_finish",
    "fftconv_monarch_backward_scales_finish",
    "fftconv_monarch_backward_tile_columns_forward",
    "fftconv_monarch_backward_tile_columns_inverse",
    "fftconv_monarch_tile_columns_forward",
    "fftconv_monarch_tile_columns_inverse",
    "fftconv_monarch_backward",
    "fftconv_monarch_backward_wide",
    "fftconv_monarch_backward_wide_8k",
    "fftconv_monarch_backward_scales",
    "fftconv_monarch_backward_columns_forward",
    "fftconv_monarch_backward_middle",
    "fftconv_monarch_backward_columns_inverse",
    "fftconv_monarch_wide",
    "fftconv_monarch_filter",
    "fftconv_monarch_scales",
    "fftconv_monarch_columns_forward",
    "fftconv_monarch_middle",
    "fftconv_monarch_columns_inverse",
];

/// The Monarch pass's cluster kernels: in Monarch modules for sm_90 and newer only.
const MONARCH_CLUSTER_ENTRIES: [&str; 3] = [
    "fftconv_monarch_cluster2",
    "fftconv_monarch_cluster4",
    "fftconv_monarch_cluster8",
];

/// Inline PTX of the cluster kernels (distributed shared memory and the cluster barrier).
const MONARCH_CLUSTER_PTX: [&str; 3] =
    ["mapa.u64", "barrier.cluster.arrive", "barrier.cluster.wait"];

/// Inline PTX of the Monarch pass.
const MONARCH_PTX: [&str; 7] = [
    "mma.sync.aligned.m16n8k16",
    "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
    "movmatrix.sync.aligned.m8n8.trans.b16",
    "red.shared.max.u32",
    // fftconv_monarch_prefetch's staging of the next tile's rows.
    "cp.async.cg.shared.global",
    "cp.async.commit_group",
    "cp.async.wait_all",
];

/// Inline PTX of f16 I/O.
const F16_PTX: [&str; 2] = ["cvt.rn.f16.f32", "cvt.f32.f16"];

/// A probe kernel: the prelude, a builtin variable and an `.entry` to look for.
const PROBE: &str =
    "extern \"C\" __global__ void fftconv_probe(float *p) { p[threadIdx.x] = 1.0f; }\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    F32,
    F16,
    Bf16,
}

/// The target: a fixed architecture, or the newest this clang accepts (sm_90, else sm_80).
#[derive(Debug, Clone, Copy)]
enum Arch {
    Sm70,
    Sm80,
    Newest,
}

/// One module as `build_kernels` would compile it.
#[derive(Debug, Clone, Copy)]
struct Variant {
    io: Io,
    shared_points: u32,
    pad: bool,
    threads: u32,
    radix_log2: u32,
    segment_table: bool,
    tensor_cores: bool,
    middle_round: bool,
    vector_io: bool,
    /// `MONARCH_TC=1`: the Monarch tensor-core pass and its filter kernel too.
    monarch: bool,
    arch: Arch,
}

/// The variants compiled: every I/O type; `SHARED_POINTS` 256 to 16384 (the largest, with
/// `THREADS=1024`); `THREADS` 64 to 1024; each experiment (`VECTOR_IO` too) and the (default)
/// middle round on and off; `TENSOR_CORES=1` (f16 and
/// bf16 only, sm_80 and newer, as the backend allows) for both types with and without
/// `MIDDLE_ROUND`; a pre-Ampere target for the paths without tensor cores.
fn variants() -> Vec<Variant> {
    let v = |io, shared_points, pad, threads, radix_log2, st, tc, mr, vio, arch| Variant {
        io,
        shared_points,
        pad,
        threads,
        radix_log2,
        segment_table: st,
        tensor_cores: tc,
        middle_round: mr,
        vector_io: vio,
        monarch: false,
        arch,
    };
    use Arch::*;
    use Io::*;
    vec![
        // The defaults (the middle round, no experiments) at the smallest and largest sizes, and
        // the middle round off.
        v(F32, 256, true, 64, 3, false, false, true, false, Sm70),
        v(F32, 16384, true, 1024, 3, false, false, true, true, Newest),
        v(F16, 4096, true, 256, 3, false, false, false, true, Sm70),
        v(Bf16, 1024, false, 512, 3, false, false, true, true, Sm80),
        // Every experiment but the tensor cores, and some mixes.
        v(F32, 4096, false, 256, 4, true, false, true, true, Sm80),
        v(F16, 16384, false, 1024, 4, true, false, true, false, Newest),
        v(Bf16, 256, true, 128, 4, false, false, true, true, Newest),
        // Tensor cores, with and without the middle round.
        v(F16, 4096, true, 256, 3, false, true, true, true, Newest),
        v(F16, 16384, true, 1024, 4, true, true, false, false, Sm80),
        v(Bf16, 4096, false, 256, 4, false, true, false, false, Newest),
        v(Bf16, 256, true, 64, 3, true, true, true, true, Sm80),
        // The Monarch pass (f16 and bf16, sm_80 and newer), in the default module and beside
        // the tensor-core rounds (and with MT_WIDE_THREADS=256: `defines`).
        Variant {
            monarch: true,
            ..v(F16, 4096, true, 256, 3, false, false, true, false, Newest)
        },
        Variant {
            monarch: true,
            ..v(Bf16, 4096, true, 256, 3, false, true, true, true, Sm80)
        },
    ]
}

impl Variant {
    /// Whether the module has the Monarch cluster kernels (`fftconv_monarch_cluster*`: the
    /// Monarch pass for sm_90 and newer).
    fn has_clusters(&self) -> bool {
        self.monarch && matches!(self.arch, Arch::Newest)
    }

    fn defines(&self, arch: &str) -> Vec<String> {
        let io = match self.io {
            Io::F32 => "IO_F32",
            Io::F16 => "IO_F16",
            Io::Bf16 => "IO_BF16",
        };
        vec![
            format!("--cuda-gpu-arch={arch}"),
            format!("-D{io}=1"),
            format!("-DSHARED_POINTS={}", self.shared_points),
            format!("-DPAD={}", u32::from(self.pad)),
            format!("-DTHREADS={}", self.threads),
            format!("-DMAX_RADIX_LOG2={}", self.radix_log2),
            format!("-DSEGMENT_TABLE={}", u32::from(self.segment_table)),
            format!("-DTENSOR_CORES={}", u32::from(self.tensor_cores)),
            format!("-DMIDDLE_ROUND={}", u32::from(self.middle_round)),
            format!("-DVECTOR_IO={}", u32::from(self.vector_io)),
            format!("-DMONARCH_TC={}", u32::from(self.monarch)),
        ]
        .into_iter()
        // The newest target's Monarch module has the cluster kernels (sm_90); a clang that stops
        // at sm_80 is told to compile them anyway (`assemble` then assembles them for sm_90).
        .chain((self.has_clusters() && arch != "sm_90").then(|| "-DMT_CLUSTERS=1".to_owned()))
        // The bf16 Monarch module with the 16K backward rows' old block size (the host's
        // FFTCONV_CUDA_MONARCH_WIDE_THREADS=256; the f16 one keeps the default 512).
        .chain(
            (self.monarch && matches!(self.io, Io::Bf16))
                .then(|| "-DMT_WIDE_THREADS=256u".to_owned()),
        )
        .chain(
            self.specialized()
                .then(|| {
                    // The fused pass also specialized for N = 4096 in one pass (both copies compile).
                    [
                        "-DSPEC_LOG2N=12",
                        "-DSPEC_LINE_LOG2=12",
                        "-DSPEC_LINES_LOG2=0",
                        "-DSPEC_STAGE_COUNT=0",
                        "-DSPEC_STAGE_BITS=0",
                        "-DMIN_BLOCKS=2",
                    ]
                    .map(String::from)
                })
                .into_iter()
                .flatten(),
        )
        .collect()
    }

    /// Variants with 4096 shared points also compile a specialized fused pass (and
    /// `MIN_BLOCKS=2`).
    fn specialized(&self) -> bool {
        self.shared_points == 4096
    }

    fn label(&self, arch: &str) -> String {
        let io = match self.io {
            Io::F32 => "f32",
            Io::F16 => "f16",
            Io::Bf16 => "bf16",
        };
        format!(
            "{io}-p{}-pad{}-t{}-r{}-st{}-tc{}-mr{}-vio{}-mt{}{}-{arch}",
            self.shared_points,
            u32::from(self.pad),
            self.threads,
            self.radix_log2,
            u32::from(self.segment_table),
            u32::from(self.tensor_cores),
            u32::from(self.middle_round),
            u32::from(self.vector_io),
            u32::from(self.monarch),
            if self.specialized() { "-spec" } else { "" },
        )
    }
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn prelude_path() -> PathBuf {
    manifest_dir().join("tests/device_compile/prelude.h")
}

fn kernel_path() -> PathBuf {
    std::env::var_os("FFTCONV_DEVICE_COMPILE_KERNEL")
        .map_or_else(|| manifest_dir().join("kernels/fftconv.cu"), PathBuf::from)
}

fn extra_flags() -> Vec<String> {
    std::env::var("FFTCONV_DEVICE_COMPILE_FLAGS")
        .map(|f| f.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// The flags every device compile shares (before the variant's and the input).
fn common_flags() -> Vec<String> {
    let mut flags: Vec<String> = [
        "-x",
        "cuda",
        "--cuda-device-only",
        "-nocudainc",
        "-nocudalib",
        "-std=c++17",
        "-O2",
        "-Wall",
        "-Wextra",
        "-S",
    ]
    .map(String::from)
    .to_vec();
    flags.push("-include".to_owned());
    flags.push(prelude_path().to_str().expect("UTF-8 path").to_owned());
    flags
}

/// Compiles the probe kernel for `arch` with `clang`; the error says why it failed.
fn probe(clang: &Path, arch: &str) -> Result<(), String> {
    let mut child = Command::new(clang)
        .args(common_flags())
        .arg(format!("--cuda-gpu-arch={arch}"))
        .args(["-o", "-", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", clang.display()))?;
    // The probe is far smaller than a pipe's buffer: write it all, then wait.
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(PROBE.as_bytes())
        .map_err(|e| format!("cannot write to {}: {e}", clang.display()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot wait for {}: {e}", clang.display()))?;
    let ptx = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && ptx.contains(".entry fftconv_probe(") {
        Ok(())
    } else {
        Err(format!(
            "{} cannot compile CUDA for {arch} ({}): {}",
            clang.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The clang to use: `FFTCONV_CLANG_CUDA` (which must work), or the first candidate on `PATH` that
/// compiles the probe for sm_80; `Err` says why none does.
fn find_clang() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("FFTCONV_CLANG_CUDA") {
        let path = PathBuf::from(path);
        if let Err(e) = probe(&path, "sm_80") {
            panic!("FFTCONV_CLANG_CUDA={}: {e}", path.display());
        }
        return Ok(path);
    }
    let mut why = Vec::new();
    for candidate in ["clang++-15", "clang++", "clang"] {
        match probe(Path::new(candidate), "sm_80") {
            Ok(()) => return Ok(PathBuf::from(candidate)),
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; "))
}

/// Whether a line of clang's output is a warning at a source location (`file:line:col: warning:`).
fn located_warning(line: &str) -> bool {
    line.split_once(": warning:").is_some_and(|(at, _)| {
        let mut parts = at.rsplitn(3, ':');
        let (col, row) = (parts.next(), parts.next());
        parts.next().is_some()
            && [col, row]
                .iter()
                .all(|p| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    })
}

/// Whether `ptx` defines the kernel `name` as an entry point.
fn has_entry(ptx: &str, name: &str) -> bool {
    ptx.lines().any(|l| {
        l.trim_start()
            .strip_prefix(".visible .entry ")
            .is_some_and(|rest| rest.strip_prefix(name).is_some_and(|r| r.starts_with('(')))
    })
}

/// What is wrong with `variant`'s PTX (empty when nothing).
fn check_ptx(variant: &Variant, arch: &str, ptx: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !ptx.lines().any(|l| l.trim() == format!(".target {arch}")) {
        problems.push(format!("no `.target {arch}` line"));
    }
    for name in ENTRIES {
        if !has_entry(ptx, name) {
            problems.push(format!("no `.entry {name}`"));
        }
    }
    let mut require = |needle: &str, present: bool, why: &str| {
        if ptx.contains(needle) != present {
            let verb = if present { "lacks" } else { "has" };
            problems.push(format!("{verb} `{needle}` ({why})"));
        }
    };
    for needle in ALWAYS {
        require(needle, true, "every variant");
    }
    if variant.tensor_cores {
        for needle in TENSOR_CORE_PTX {
            require(needle, true, "TENSOR_CORES=1");
        }
    } else {
        // Only the `mma` is theirs alone (a warp barrier or shuffle may serve other code).
        require(
            TENSOR_CORE_PTX[0],
            variant.monarch,
            "TENSOR_CORES=0 (mma only with MONARCH_TC=1)",
        );
    }
    for needle in F16_PTX {
        // The Monarch pass converts its f16 results back to f32 whatever the I/O type.
        if !(variant.monarch && needle == "cvt.f32.f16") {
            require(needle, variant.io == Io::F16, "f16 I/O");
        }
    }
    if variant.monarch {
        for needle in MONARCH_PTX {
            require(needle, true, "MONARCH_TC=1");
        }
    }
    for name in MONARCH_ENTRIES {
        if has_entry(ptx, name) != variant.monarch {
            problems.push(format!(
                "`.entry {name}` with MONARCH_TC={}",
                u32::from(variant.monarch)
            ));
        }
    }
    let clusters = variant.has_clusters();
    for name in MONARCH_CLUSTER_ENTRIES {
        if has_entry(ptx, name) != clusters {
            problems.push(format!(
                "`.entry {name}` with MONARCH_TC={} for {arch}",
                u32::from(variant.monarch)
            ));
        }
    }
    for needle in MONARCH_CLUSTER_PTX {
        if ptx.contains(needle) != clusters {
            problems.push(format!(
                "`{needle}` with MONARCH_TC={} for {arch}",
                u32::from(variant.monarch)
            ));
        }
    }
    problems
}

/// Compiles `variant` and checks the result; `Err` lists what is wrong.
fn compile_variant(
    clang: &Path,
    kernel: &Path,
    out_dir: &Path,
    variant: &Variant,
    arch: &str,
    ptxas: Option<&Path>,
) -> Result<f64, String> {
    let label = variant.label(arch);
    let ptx_path = out_dir.join(format!("{label}.ptx"));
    let _ = std::fs::remove_file(&ptx_path);
    let start = Instant::now();
    let out = Command::new(clang)
        .args(common_flags())
        .args(variant.defines(arch))
        .args(extra_flags())
        .arg("-o")
        .arg(&ptx_path)
        .arg(kernel)
        .output()
        .map_err(|e| format!("{label}: cannot run {}: {e}", clang.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{label}: clang failed ({}):\n{}",
            out.status,
            stderr.trim_end()
        ));
    }
    // Warnings with a source location (the kernel, the prelude, clang's headers they include)
    // matter; the driver's own (`clang: warning: ...`, e.g. about a CUDA installation it found)
    // are shown only.
    let warnings: Vec<&str> = stderr.lines().filter(|l| located_warning(l)).collect();
    if !stderr.trim().is_empty() {
        println!("{label}: clang said:\n{}", stderr.trim_end());
    }
    if !warnings.is_empty() {
        return Err(format!(
            "{label}: {} warning(s) in the kernel:\n{}",
            warnings.len(),
            stderr.trim_end()
        ));
    }
    let ptx = std::fs::read_to_string(&ptx_path)
        .map_err(|e| format!("{label}: cannot read {}: {e}", ptx_path.display()))?;
    let problems = check_ptx(variant, arch, &ptx);
    if problems.is_empty() {
        if let Some(ptxas) = ptxas {
            assemble(ptxas, &label, &ptx_path)?;
        }
        Ok(seconds)
    } else {
        Err(format!(
            "{label}: {} (PTX in {})",
            problems.join("; "),
            ptx_path.display()
        ))
    }
}

/// NVIDIA's PTX assembler: `FFTCONV_PTXAS` (it must run) or `ptxas` on the PATH.
fn find_ptxas() -> Result<PathBuf, String> {
    let candidate =
        std::env::var_os("FFTCONV_PTXAS").map_or_else(|| PathBuf::from("ptxas"), PathBuf::from);
    match Command::new(&candidate).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(candidate),
        Ok(out) => Err(format!(
            "{} --version failed ({})",
            candidate.display(),
            out.status
        )),
        Err(e) => Err(format!("cannot run {}: {e}", candidate.display())),
    }
}

/// Assembles a PTX file for sm_90 as NVRTC would on the GPU machine; prints the fused and
/// Monarch kernels' resource use (`ptxas -v`).
fn assemble(ptxas: &Path, label: &str, ptx_path: &Path) -> Result<(), String> {
    let cubin = ptx_path.with_extension("cubin");
    // `movmatrix` (the Monarch pass) needs PTX ISA 7.8, which NVRTC on the GPU machine emits
    // (CUDA 13: 9.0) but clang 15 does not declare (7.0): such files get the newer version line.
    // The cluster kernels (`mapa`) need an sm_90 target, which a clang that stops at sm_80
    // cannot write: their files get that target line.
    let text = std::fs::read_to_string(ptx_path).map_err(|e| format!("{label}: {e}"))?;
    let ptx_path = if text.contains("movmatrix") && text.contains(".version 7.0") {
        let newer = ptx_path.with_extension("isa78.ptx");
        let mut text = text.replacen(".version 7.0", ".version 7.8", 1);
        if text.contains("mapa.u64") {
            text = text.replacen(".target sm_80", ".target sm_90", 1);
        }
        std::fs::write(&newer, text).map_err(|e| format!("{label}: {e}"))?;
        newer
    } else {
        ptx_path.to_path_buf()
    };
    let out = Command::new(ptxas)
        .args(["-arch=sm_90", "-v"])
        .arg(&ptx_path)
        .arg("-o")
        .arg(&cubin)
        .output()
        .map_err(|e| format!("{label}: cannot run {}: {e}", ptxas.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{label}: ptxas rejects the PTX ({}):\n{}",
            out.status,
            stderr
                .lines()
                .filter(|l| !l.contains("ptxas info"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    // "Compiling entry function 'fftconv_fused'", then its properties and registers.
    let lines: Vec<&str> = stderr.lines().collect();
    for i in lines.iter().enumerate().filter_map(|(i, l)| {
        (l.contains("entry function 'fftconv_fused'")
            || (l.contains("entry function 'fftconv_monarch") && !l.contains("_filter'")))
        .then_some(i)
    }) {
        let usage: Vec<&str> = lines[i + 1..]
            .iter()
            .take(3)
            .filter(|l| l.contains("stack frame") || l.contains("registers"))
            .map(|l| l.trim().trim_start_matches("ptxas info    : "))
            .collect();
        let entry = lines[i].split('\'').nth(1).unwrap_or_default();
        println!("{label}: ptxas sm_90, {entry}: {}", usage.join("; "));
        if let Some((stack, spills)) = stack_and_spills(&usage.join(" ")) {
            if stack > spills + 8 {
                return Err(format!(
                    "{label}: {entry} has a {stack}-byte stack frame but only {spills} bytes of \
                     spill stores: local memory that is no spill (an array indexed at run time, \
                     or a select of addresses; session 14's compact rows first put a 160-byte \
                     copy of MtDft16 there)"
                ));
            }
        }
    }
    Ok(())
}

/// (stack frame bytes, spill-store bytes) from ptxas' "N bytes stack frame, M bytes spill
/// stores" line.
fn stack_and_spills(usage: &str) -> Option<(u32, u32)> {
    let number_before = |what: &str| -> Option<u32> {
        let head = &usage[..usage.find(what)?];
        head.split_whitespace().last()?.parse().ok()
    };
    Some((
        number_before(" bytes stack frame")?,
        number_before(" bytes spill stores")?,
    ))
}

#[test]
fn kernels_compile_for_the_device() {
    let clang = match find_clang() {
        Ok(c) => c,
        Err(why) => {
            assert!(
                std::env::var("FFTCONV_REQUIRE_CLANG_CUDA").as_deref() != Ok("1"),
                "FFTCONV_REQUIRE_CLANG_CUDA=1 but no clang with the NVPTX target was found \
                 (install clang-15 or set FFTCONV_CLANG_CUDA to one): {why}"
            );
            println!("skipped: no clang that compiles CUDA for the device ({why})");
            return;
        }
    };
    let newest = if probe(&clang, "sm_90").is_ok() {
        "sm_90"
    } else {
        "sm_80"
    };
    let ptxas = match find_ptxas() {
        Ok(p) => Some(p),
        Err(why) => {
            assert!(
                std::env::var("FFTCONV_REQUIRE_PTXAS").as_deref() != Ok("1"),
                "FFTCONV_REQUIRE_PTXAS=1 but no ptxas runs (set FFTCONV_PTXAS): {why}"
            );
            println!("PTX not assembled (no ptxas: {why})");
            None
        }
    };
    let kernel = kernel_path();
    assert!(kernel.is_file(), "no kernel file at {}", kernel.display());
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("device_compile");
    std::fs::create_dir_all(&out_dir).expect("create the PTX directory");
    println!(
        "{}: {} for sm_70, sm_80 and {newest} (the newest it accepts)",
        clang.display(),
        kernel.display()
    );

    let variants = variants();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .min(variants.len());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(variant) = variants.get(i) else {
                    break;
                };
                let arch = match variant.arch {
                    Arch::Sm70 => "sm_70",
                    Arch::Sm80 => "sm_80",
                    Arch::Newest => newest,
                };
                match compile_variant(&clang, &kernel, &out_dir, variant, arch, ptxas.as_deref()) {
                    Ok(seconds) => println!("ok {} ({seconds:.1} s)", variant.label(arch)),
                    Err(e) => failures.lock().unwrap_or_else(|e| e.into_inner()).push(e),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    println!(
        "{} variants, {workers} threads, {:.1} s",
        variants.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} variants failed:\n\n{}",
        failures.len(),
        variants.len(),
        failures.join("\n\n")
    );
}

#[test]
fn stack_and_spills_reads_ptxas_usage() {
    let usage =
        "160 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads Used 128 registers";
    assert_eq!(stack_and_spills(usage), Some((160, 12)));
    assert_eq!(stack_and_spills("Used 40 registers"), None);
}
