//! The CUDA kernels' algorithm checked without a GPU: `kernels/fftconv.cu` is compiled as host
//! C++ (`tests/emulation/shim.h` supplies the CUDA vocabulary, `tests/emulation/harness.cpp` runs
//! the launches block after block), driven by the pass schedule, parameters, grid and buffer
//! bindings the backend uses (`src/convolution.rs`, `src/convolution/backward.rs`: host I/O
//! through compact chunk buffers; the Monarch pass's launches, parameters and shared memory from
//! the backend's own planning, `backend_cuda::launch_plan`), and compared with the f64 oracles.
//! I/O in f32, and in f16 and bf16 (`-DIO_F16`, `-DIO_BF16`: 16-byte vectors of 8 elements; the
//! Monarch kernels run only for those on a GPU), the oracle fed the inputs as rounded to the I/O
//! type.
//!
//! Each test covers one shared-memory size (4096, 64 and 16 points: plans with 0, 1 and 2
//! global column passes) and one block size (`THREADS`) with fixed cases (causal, circular,
//! gated, partial with several overlap-save blocks, frequency-sparse, chunked rows) and a few
//! random ones: the forward, the backward's step schedule (`du`, `dk`, gate gradients), and
//! where the backend runs it on an sm_90 device (one-pass plans, one block per row) the fused
//! backward kernel. Block sizes: one thread (each block one call, barriers no-ops: the algorithm
//! alone), and real ones (each thread a fiber, POSIX ucontext, scheduled cooperatively at
//! `__syncthreads()` and `__syncwarp()`: the work split between threads, missing or misplaced
//! barriers, divergent barriers). Races within a round (between two barriers) stay out of reach: a fiber runs from
//! one barrier to the next without interruption.
//!
//! Beyond the results, the harness fails a run when a kernel writes outside a buffer or beyond
//! its launch's dynamic shared memory, or when the threads of a block (or warp) do not all reach
//! the same barriers; buffers the kernels should write before reading (outputs, intermediate
//! spectra, dynamic shared memory per block) start as NaN, so reading them early shows.
//!
//! Environment:
//! - `CXX`: the C++ compiler (otherwise the first of `c++`, `g++`, `clang++` that runs); without
//!   one the tests print why and pass, unless `FFTCONV_REQUIRE_EMULATION=1`.
//! - `FFTCONV_EMULATION_SEED`: the seed (printed by every test) to reproduce a run.
//! - `FFTCONV_EMULATION_KERNEL`: another kernel file to check instead of `kernels/fftconv.cu`.
//! - `FFTCONV_EMULATION_CXXFLAGS`: extra compiler flags (e.g. `-fsanitize=address,undefined`).
//! - `FFTCONV_EMULATION_PRINT_BIAS`: set, every compared output's `rounding_bias` is printed.
//! - `FFTCONV_EMULATION_KEEP_INPUTS`: set, the harness's input files stay (their paths are
//!   printed), so a launch sequence can be rerun alone, e.g. under `valgrind --tool=callgrind`
//!   to count instructions per kernel function.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use backend_cuda::launch_plan::{self, MonarchBackwardKernel, MonarchKernel};
use monarch_core::reference::{reference_forward, relative_l2_error};
use monarch_core::reference_backward::reference_backward;
use monarch_core::schedule::{BackwardBinding, Chunk, PassKind, PassParams, PassSchedule};
use monarch_core::twiddle::root_of_unity;
use monarch_core::{ConvSpec, ConvSpecBuilder, DType, MonarchPlan, PlanLimits};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Relative L2 error allowed against the f64 oracle (f32 I/O and compute).
const TOLERANCE: f64 = 1e-5;
/// The tolerance of the tensor-core variant (`-DTENSOR_CORES=1`): its radix-16 rounds multiply
/// f16 operands (about 2^-11 relative per round), so the f16 conformance tolerance; a wrong
/// fragment layout or twiddle gives errors of order one.
const TENSOR_CORE_TOLERANCE: f64 = 2e-3;

/// The emulated device's opt-in shared memory per block (sm_90: 227 KiB), which sizes the fused
/// backward's blocks.
const SHARED_LIMIT_BYTES: usize = 232_448;

// ---- the compiled harness ------------------------------------------------------------------------

/// The C++ compiler and its leading arguments: `CXX`, or the first of `c++`, `g++`, `clang++`
/// that runs.
fn compiler() -> Option<Vec<String>> {
    if let Ok(cxx) = std::env::var("CXX") {
        let words: Vec<String> = cxx.split_whitespace().map(String::from).collect();
        if !words.is_empty() {
            return Some(words);
        }
    }
    ["c++", "g++", "clang++"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|c| vec![c.to_owned()])
}

fn kernel_path() -> PathBuf {
    std::env::var_os("FFTCONV_EMULATION_KERNEL").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/fftconv.cu"),
        PathBuf::from,
    )
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Compiles the harness for `points` shared points and `threads` threads per block (cached in the
/// target's temporary directory, keyed by the compiler, the flags and the sources); `None`
/// without a C++ compiler.
fn build_harness(points: usize, threads: usize, defines: &str) -> Option<PathBuf> {
    let Some(cxx) = compiler() else {
        assert!(
            std::env::var("FFTCONV_REQUIRE_EMULATION").as_deref() != Ok("1"),
            "FFTCONV_REQUIRE_EMULATION=1 but no C++ compiler was found (set CXX)"
        );
        return None;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emulation");
    let (shim, source, kernel) = (dir.join("shim.h"), dir.join("harness.cpp"), kernel_path());
    let kernel_str = kernel.to_str().expect("the kernel path is UTF-8");
    assert!(
        !kernel_str.contains(['"', '\\']),
        "the kernel path {kernel_str} cannot be quoted for the preprocessor"
    );
    let mut flags: Vec<String> = ["-std=c++17", "-O1", "-Wno-unknown-pragmas", "-DPAD=1"]
        .map(String::from)
        .to_vec();
    // f32 I/O unless the defines choose another (`-DIO_F16`, `-DIO_BF16`).
    if !defines.contains("-DIO_") {
        flags.push("-DIO_F32".to_owned());
    }
    flags.push(format!("-DSHARED_POINTS={points}"));
    flags.push(format!("-DTHREADS={threads}"));
    flags.push(format!("-DSHARED_LIMIT_BYTES={SHARED_LIMIT_BYTES}"));
    flags.push(format!("-DFFTCONV_KERNEL=\"{kernel_str}\""));
    flags.extend(defines.split_whitespace().map(String::from));
    if let Ok(extra) = std::env::var("FFTCONV_EMULATION_CXXFLAGS") {
        flags.extend(extra.split_whitespace().map(String::from));
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&cxx, &flags, read(&shim), read(&source), read(&kernel)).hash(&mut hasher);
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulation");
    std::fs::create_dir_all(&out_dir).expect("create the harness directory");
    let exe = out_dir.join(format!(
        "harness-{points}-{threads}-{:016x}{}",
        hasher.finish(),
        std::env::consts::EXE_SUFFIX
    ));
    if exe.exists() {
        return Some(exe);
    }
    let partial = exe.with_extension(format!("{}.partial", std::process::id()));
    let start = Instant::now();
    let output = Command::new(&cxx[0])
        .args(&cxx[1..])
        .args(&flags)
        .arg("-include")
        .arg(&shim)
        .arg(&source)
        .arg("-o")
        .arg(&partial)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler {cxx:?}: {e}"));
    assert!(
        output.status.success(),
        "the kernels do not build as host C++ ({cxx:?} {flags:?}):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &exe).expect("move the harness into place");
    println!(
        "built the {points}-point {threads}-thread harness with {} in {:.2?}",
        cxx.join(" "),
        start.elapsed()
    );
    Some(exe)
}

/// The harness for `points`, `threads` and extra `defines` (e.g. `-DTENSOR_CORES=1`), built
/// once per process.
fn harness(points: usize, threads: usize, defines: &'static str) -> Option<PathBuf> {
    type Cell = Arc<OnceLock<Option<PathBuf>>>;
    type Builds = Mutex<HashMap<(usize, usize, &'static str), Cell>>;
    static BUILDS: OnceLock<Builds> = OnceLock::new();
    let cell = Arc::clone(
        BUILDS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((points, threads, defines))
            .or_default(),
    );
    cell.get_or_init(|| build_harness(points, threads, defines))
        .clone()
}

// ---- programs for the harness (see the format in harness.cpp) ------------------------------------

/// A buffer of the program (f32 words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Buf(u32);

/// The kernels' `Buffers` argument: which program buffer each pointer is (`None`: null).
#[derive(Debug, Clone, Copy, Default)]
struct Bindings {
    u: Option<Buf>,
    pre: Option<Buf>,
    post: Option<Buf>,
    y: Option<Buf>,
    spectrum: Option<Buf>,
    twiddles: Option<Buf>,
    tmp: Option<Buf>,
    other: Option<Buf>,
    taps: Option<Buf>,
    y2: Option<Buf>,
    taps_sum: Option<Buf>,
    u2: Option<Buf>,
    y3: Option<Buf>,
}

/// Kernel ids of the harness.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Fused = 0,
    ColumnsForward = 1,
    ColumnsInverse = 2,
    Gather = 3,
    TapsSum = 4,
    BackwardFused = 5,
    MonarchFilter = 6,
    Monarch = 7,
    MonarchWide = 8,
    MonarchScales = 9,
    MonarchColumnsForward = 10,
    MonarchMiddle = 11,
    MonarchColumnsInverse = 12,
    MonarchBackward = 13,
    MonarchBackwardWide = 14,
    MonarchBackwardScales = 15,
    MonarchBackwardColumnsForward = 16,
    MonarchBackwardMiddle = 17,
    MonarchBackwardColumnsInverse = 18,
    MonarchTileColumnsForward = 19,
    MonarchTileColumnsInverse = 20,
    MonarchCluster2 = 21,
    MonarchCluster4 = 22,
    MonarchCluster8 = 23,
    MonarchBackwardTileColumnsForward = 24,
    MonarchBackwardTileColumnsInverse = 25,
    MonarchScalesFinish = 26,
    MonarchBackwardScalesFinish = 27,
    MonarchFilterMax = 28,
    MonarchBackwardWide8k = 29,
    MonarchBackwardTaps = 30,
    MonarchBackwardTapsWide = 31,
    MonarchPrefetch = 32,
    MonarchBackwardTapsPrefetch = 33,
}

impl From<PassKind> for Kernel {
    fn from(kind: PassKind) -> Kernel {
        match kind {
            PassKind::Fused => Kernel::Fused,
            PassKind::ColumnsForward => Kernel::ColumnsForward,
            PassKind::ColumnsInverse => Kernel::ColumnsInverse,
            PassKind::Gather => Kernel::Gather,
        }
    }
}

const NAN_BITS: u32 = 0x7fc0_0000;

fn words(n: usize) -> u32 {
    u32::try_from(n).expect("a buffer of the emulation fits u32 words")
}

/// A script for the harness: buffers, then launches, copies and fills.
#[derive(Default)]
struct Program {
    /// Per buffer: words, init (0 zeros, 1 NaN, 2 data) and data.
    buffers: Vec<(u32, u32, Vec<u32>)>,
    /// Per buffer: its element type and elements (f32 words, or 16-bit I/O elements two to a
    /// word, an odd count's last word half padding).
    elements: Vec<(DType, usize)>,
    commands: Vec<u32>,
    count: u32,
    launches: usize,
}

/// The bits of a 16-bit buffer's NaN fill: a NaN in f16 and in bf16.
const NAN16: u16 = 0x7fc0;
/// The bits of a 16-bit buffer's padding half (an odd count's last word): another NaN, which no
/// kernel or copy writes (checked after every run).
const PAD16: u16 = 0x7fc1;

/// 16-bit values packed into native-endian words as the harness reads them, an odd count's
/// last word padded with PAD16.
fn pack16(halves: impl IntoIterator<Item = u16>) -> Vec<u32> {
    let mut bytes: Vec<u8> = halves.into_iter().flat_map(u16::to_ne_bytes).collect();
    if bytes.len() % 4 != 0 {
        bytes.extend(PAD16.to_ne_bytes());
    }
    bytes
        .chunks_exact(4)
        .map(|w| u32::from_ne_bytes(w.try_into().unwrap()))
        .collect()
}

impl Program {
    fn buffer(&mut self, dtype: DType, len: usize, init: u32, data: Vec<u32>) -> Buf {
        let words_len = (len * dtype.size_bytes()).div_ceil(4);
        self.buffers.push((words(words_len), init, data));
        self.elements.push((dtype, len));
        Buf(self.buffers.len() as u32 - 1)
    }

    fn zeros(&mut self, len: usize) -> Buf {
        self.buffer(DType::F32, len, 0, Vec::new())
    }

    /// Starts as NaN, so whatever is read before it is written shows in the results.
    fn nans(&mut self, len: usize) -> Buf {
        self.buffer(DType::F32, len, 1, Vec::new())
    }

    fn data(&mut self, data: &[f32]) -> Buf {
        self.buffer(
            DType::F32,
            data.len(),
            2,
            data.iter().map(|v| v.to_bits()).collect(),
        )
    }

    /// An I/O buffer (`u`, gates, `y` and their gradients) of `dtype`, starting as NaN.
    fn io_nans(&mut self, dtype: DType, len: usize) -> Buf {
        if dtype == DType::F32 {
            return self.nans(len);
        }
        self.buffer(dtype, len, 2, pack16(std::iter::repeat_n(NAN16, len)))
    }

    /// An I/O buffer of `dtype` holding `data` (rounded to it: `Inputs` already are).
    fn io_data(&mut self, dtype: DType, data: &[f32]) -> Buf {
        if dtype == DType::F32 {
            return self.data(data);
        }
        let packed = pack16(data.iter().map(|&v| match dtype {
            DType::F16 => half::f16::from_f32(v).to_bits(),
            _ => half::bf16::from_f32(v).to_bits(),
        }));
        self.buffer(dtype, data.len(), 2, packed)
    }

    fn dtype(&self, buf: Buf) -> DType {
        self.elements[buf.0 as usize].0
    }

    fn command(&mut self, words: &[u32]) {
        self.commands.extend_from_slice(words);
        self.count += 1;
    }

    /// A launch with `shared_bytes` of dynamic shared memory (as the backend asks for).
    fn launch(&mut self, kernel: Kernel, shared_bytes: usize, params: &PassParams, b: &Bindings) {
        self.launch_grid(kernel, shared_bytes, params, b, None);
    }

    /// `launch` with a grid of `blocks` blocks where given (`launch_kernel_grid`), otherwise
    /// `ceil(total_lines / 2^lines_log2)`.
    fn launch_grid(
        &mut self,
        kernel: Kernel,
        shared_bytes: usize,
        params: &PassParams,
        b: &Bindings,
        blocks: Option<u32>,
    ) {
        let mut cmd = match blocks {
            Some(blocks) => vec![5, blocks, kernel as u32, words(shared_bytes)],
            None => vec![1, kernel as u32, words(shared_bytes)],
        };
        cmd.extend(
            params
                .bytes()
                .chunks_exact(4)
                .map(|w| u32::from_ne_bytes(w.try_into().unwrap())),
        );
        cmd.extend(
            [
                b.u, b.pre, b.post, b.y, b.spectrum, b.twiddles, b.tmp, b.other, b.taps, b.y2,
                b.taps_sum, b.u2, b.y3,
            ]
            .map(|x| x.map_or(u32::MAX, |b| b.0)),
        );
        self.command(&cmd);
        self.launches += 1;
    }

    /// Elements `src_at .. src_at + len` of `src` to `dst_at ..` of `dst` (one element type).
    fn copy(&mut self, dst: Buf, dst_at: usize, src: Buf, src_at: usize, len: usize) {
        let dtype = self.dtype(dst);
        assert_eq!(dtype, self.dtype(src), "a copy between element types");
        if dtype == DType::F32 {
            self.command(&[2, dst.0, words(dst_at), src.0, words(src_at), words(len)]);
        } else {
            let size = dtype.size_bytes();
            self.command(&[
                4,
                dst.0,
                words(dst_at * size),
                src.0,
                words(src_at * size),
                words(len * size),
            ]);
        }
    }

    fn fill_nan(&mut self, buf: Buf) {
        let (dtype, len) = self.elements[buf.0 as usize];
        if dtype == DType::F32 {
            self.command(&[3, buf.0, 0, words(len), NAN_BITS]);
        } else {
            // Its elements only, not the padding.
            self.command(&[6, buf.0, 0, words(len), u32::from(NAN16)]);
        }
    }

    /// Words `at .. at + len` of `buf` (f32) set to `bits`.
    fn fill(&mut self, buf: Buf, at: usize, len: usize, bits: u32) {
        assert_eq!(
            self.dtype(buf),
            DType::F32,
            "a word fill of a 16-bit buffer"
        );
        self.command(&[3, buf.0, words(at), words(len), bits]);
    }

    /// Runs the program with the harness of `points` shared points; the contents of `outputs`.
    fn run(
        &self,
        harness: &Path,
        points: usize,
        name: &str,
        outputs: &[Buf],
    ) -> Result<Vec<Vec<f32>>, String> {
        let mut w = vec![0x554d_4546, 2, words(points), self.buffers.len() as u32];
        for (len, init, data) in &self.buffers {
            w.extend([*len, *init]);
            w.extend_from_slice(data);
        }
        w.push(self.count);
        w.extend_from_slice(&self.commands);
        // Every 16-bit buffer with a padding half comes back too, for its check below.
        let padded: Vec<Buf> = (0..self.buffers.len() as u32)
            .map(Buf)
            .filter(|b| {
                let (dtype, len) = self.elements[b.0 as usize];
                dtype != DType::F32 && len % 2 == 1
            })
            .collect();
        let all: Vec<Buf> = outputs.iter().chain(&padded).copied().collect();
        w.push(all.len() as u32);
        w.extend(all.iter().map(|b| b.0));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulation");
        let stem = format!("{name}-{}", std::process::id());
        let (input, output) = (
            dir.join(format!("{stem}.in")),
            dir.join(format!("{stem}.out")),
        );
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_ne_bytes()).collect();
        std::fs::write(&input, bytes).map_err(|e| format!("writing {}: {e}", input.display()))?;
        let result = Command::new(harness)
            .arg(&input)
            .arg(&output)
            .output()
            .map_err(|e| format!("running {}: {e}", harness.display()))?;
        if !result.status.success() {
            return Err(format!(
                "the harness failed ({}) on {}:\n{}",
                result.status,
                input.display(),
                String::from_utf8_lossy(&result.stderr)
            ));
        }
        let bytes = std::fs::read(&output).map_err(|e| format!("reading the outputs: {e}"))?;
        if std::env::var_os("FFTCONV_EMULATION_KEEP_INPUTS").is_some() {
            println!(
                "kept {} (the harness's input: run it again, e.g. under callgrind)",
                input.display()
            );
        } else {
            let _ = std::fs::remove_file(&input);
        }
        let _ = std::fs::remove_file(&output);
        // Per output its words, decoded by its element type; a 16-bit buffer's padding half
        // (odd counts) must still be PAD16 (written by nothing).
        let mut at = 0;
        let mut got = Vec::with_capacity(all.len());
        for &b in &all {
            let (dtype, len) = self.elements[b.0 as usize];
            let size = self.buffers[b.0 as usize].0 as usize * 4;
            let Some(raw) = bytes.get(at..at + size) else {
                return Err(format!("{} bytes of outputs do not fit", bytes.len()));
            };
            at += size;
            let half = |i: usize| u16::from_ne_bytes([raw[2 * i], raw[2 * i + 1]]);
            got.push(match dtype {
                DType::F32 => raw
                    .chunks_exact(4)
                    .map(|w| f32::from_ne_bytes(w.try_into().unwrap()))
                    .collect(),
                DType::F16 => (0..len)
                    .map(|i| half::f16::from_bits(half(i)).to_f32())
                    .collect(),
                DType::Bf16 => (0..len)
                    .map(|i| half::bf16::from_bits(half(i)).to_f32())
                    .collect(),
            });
            if dtype != DType::F32 && len % 2 == 1 && half(len) != PAD16 {
                return Err(format!(
                    "buffer {}: the padding after its {len} elements was written",
                    b.0
                ));
            }
        }
        if at != bytes.len() {
            return Err(format!("{} bytes of outputs do not fit", bytes.len()));
        }
        got.truncate(outputs.len());
        Ok(got)
    }
}

// ---- the backend's setup, on the host --------------------------------------------------------------

/// `twiddle_tables` of src/convolution.rs: `W_M^e` at entry `M + e` for every power of two `M <= n`.
fn twiddle_tables(n: usize) -> Vec<f32> {
    let mut table = vec![0.0f32; 2 * n * 2];
    let mut m = 1;
    while m <= n {
        for e in 0..m {
            let w = root_of_unity(e as u64, m as u64);
            table[2 * (m + e)] = w.re as f32;
            table[2 * (m + e) + 1] = w.im as f32;
        }
        m *= 2;
    }
    table
}

/// `prepare_filter` of src/convolution.rs: per channel the kept bins of the zero-padded filter's
/// half spectrum, scaled by `1/N`, as interleaved complex f32.
fn filter_spectrum(spec: &ConvSpec, k: &[f32]) -> Vec<f32> {
    let geometry = spec.geometry();
    let n = geometry.n();
    let kept = geometry.kept_bins.min(n / 2 + 1);
    let fft = realfft::RealFftPlanner::<f32>::new().plan_fft_forward(n);
    let (mut signal, mut spectrum) = (fft.make_input_vec(), fft.make_output_vec());
    let scale = 1.0 / n as f32;
    let mut out = Vec::with_capacity(spec.channels() * kept * 2);
    for row in k.chunks_exact(spec.filter_len()) {
        signal.fill(0.0);
        signal[..row.len()].copy_from_slice(row);
        fft.process(&mut signal, &mut spectrum).expect("filter FFT");
        for c in &spectrum[..kept] {
            out.extend([c.re * scale, c.im * scale]);
        }
    }
    out
}

/// A problem as the backend prepares it for `points` shared points.
struct Prepared {
    spec: ConvSpec,
    plan: Arc<MonarchPlan>,
    schedule: PassSchedule,
    points: usize,
    /// The relative L2 error results may have (the test variant's).
    tolerance: f64,
}

impl Prepared {
    fn new(spec: &ConvSpec, points: usize, chunk_elems: usize, tolerance: f64) -> Prepared {
        let limits = PlanLimits {
            max_factor: points,
            preferred_factor: points,
            on_chip_bytes: points * 8,
            bytes_per_element: 8,
        };
        let plan = MonarchPlan::cached(spec.geometry().fft_size, &limits).expect("plan");
        let schedule = PassSchedule::new(spec, &plan, points, chunk_elems).expect("schedule");
        Prepared {
            spec: spec.clone(),
            plan,
            schedule,
            points,
            tolerance,
        }
    }

    /// log2 of the gather and taps-sum kernels' block size (the backend's default threads).
    fn threads_log2(&self) -> u32 {
        (self.points / 16).clamp(256, 1024).ilog2()
    }

    /// Dynamic shared memory of a pass (`shared_bytes` of src/device.rs, with padding).
    fn pass_shared_bytes(&self, kind: PassKind) -> usize {
        match kind {
            PassKind::Gather => 0,
            _ => (self.points + self.points / 16) * 8,
        }
    }

    /// log2 of the fused backward's rows per block where the backend runs it
    /// (`fused_backward_rows` of src/convolution/backward.rs, with the harness's shared memory).
    fn fused_backward_rows(&self) -> Option<u32> {
        self.schedule
            .fused_backward_rows_log2(SHARED_LIMIT_BYTES, true)
    }

    /// A compact chunk buffer of one stream (`stream_bytes`, of the problem's element type),
    /// starting as NaN.
    fn chunk_buffer(&self, program: &mut Program) -> Buf {
        let dtype = self.spec.dtype();
        program.io_nans(dtype, self.schedule.stream_bytes() / dtype.size_bytes())
    }

    fn copy_rows_in(&self, p: &mut Program, chunk: Chunk, full: Buf, c: Buf) {
        for (compact, rows) in self.schedule.chunk_rows(chunk) {
            p.copy(c, compact.start, full, rows.start, rows.len());
        }
    }

    fn copy_rows_out(&self, p: &mut Program, chunk: Chunk, c: Buf, full: Buf) {
        for (compact, rows) in self.schedule.chunk_rows(chunk) {
            p.copy(full, rows.start, c, compact.start, rows.len());
        }
    }
}

/// Magnitudes of `u` by channel (see `Inputs::new`).
const CHANNEL_SCALES: [f32; 3] = [1.0 / 4096.0, 1.0, 4096.0];
/// The same for f16 I/O, within its range: outputs of the loudest channel stay far below
/// 65504 and those of the quietest far above the subnormals (6.1e-5) at the cases' lengths.
const F16_CHANNEL_SCALES: [f32; 3] = [1.0 / 256.0, 1.0, 1.0 / 16.0];

/// Random inputs of one problem, f32 in [-1, 1) (`u` scaled by channel).
struct Inputs {
    u: Vec<f32>,
    k: Vec<f32>,
    gates: Option<(Vec<f32>, Vec<f32>)>,
    dy: Vec<f32>,
}

impl Inputs {
    fn new(spec: &ConvSpec, rng: &mut StdRng) -> Inputs {
        let mut random =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let n = spec.io_len();
        // Channels of very different magnitudes (2^-12, 1, 2^12 by channel): rows of one channel
        // share pairs, rows of different channels share blocks and tensor-core tiles, whose
        // scaling must keep each channel's own precision (checked per row in `forward`).
        let (l, h_count) = (spec.length(), spec.channels());
        let scales = if spec.dtype() == DType::F16 {
            F16_CHANNEL_SCALES
        } else {
            CHANNEL_SCALES
        };
        let u: Vec<f32> = random(n)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v * scales[(i / l % h_count) % scales.len()])
            .collect();
        Inputs {
            u,
            k: random(spec.filter_elems()),
            gates: spec.gated().then(|| (random(n), random(n))),
            dy: random(n),
        }
    }
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// `x` as an I/O buffer of `dtype` holds it (`Program::io_data`), in f64.
fn rounded(dtype: DType, x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| dtype.round_f64(f64::from(v))).collect()
}

/// The f64 oracle of dense circular problems whose rows are one power-of-two FFT (N = L) and
/// whose direct sums would be slow (L K >= 2^28): `IDFT(DFT(x) DFT(k)) / L` through monarch-core's
/// textbook `fft_f64`, gated like `reference_forward` (which it equals to f64 rounding, see
/// `circular_fft_reference_is_the_direct_one`). `None` for every other problem.
fn circular_fft_reference(
    spec: &ConvSpec,
    u: &[f64],
    k: &[f64],
    gates: Option<(&[f64], &[f64])>,
) -> Option<Vec<f64>> {
    use monarch_core::reference::fft_f64;
    use monarch_core::{Complex64, ConvMode};
    let (l, kl, h_count) = (spec.length(), spec.filter_len(), spec.channels());
    let g = spec.geometry();
    if spec.mode() != ConvMode::Circular || g.is_sparse() || g.n() != l || (l * kl) >> 28 == 0 {
        return None;
    }
    let spectra: Vec<Vec<Complex64>> = k
        .chunks(kl)
        .map(|row| {
            let mut x = vec![Complex64::new(0.0, 0.0); l];
            for (d, &v) in x.iter_mut().zip(row) {
                d.re = v;
            }
            fft_f64(&mut x, false);
            x
        })
        .collect();
    let mut y = vec![0.0; u.len()];
    for (row, out) in y.chunks_mut(l).enumerate() {
        let span = row * l..(row + 1) * l;
        let mut x: Vec<Complex64> = u[span.clone()]
            .iter()
            .enumerate()
            .map(|(i, &v)| Complex64::new(gates.map_or(v, |(pre, _)| v * pre[span.start + i]), 0.0))
            .collect();
        fft_f64(&mut x, false);
        for (a, b) in x.iter_mut().zip(&spectra[row % h_count]) {
            *a *= *b;
        }
        fft_f64(&mut x, true);
        for (i, (o, v)) in out.iter_mut().zip(&x).enumerate() {
            *o = v.re / l as f64 * gates.map_or(1.0, |(_, post)| post[span.start + i]);
        }
    }
    Some(y)
}

/// `reference_backward` of dense circular problems whose rows are one power-of-two FFT (N = L)
/// and whose direct sums would be slow (L K >= 2^28), through `fft_f64`: with z = post dy and
/// x = pre u, dx = IDFT(Z conj K) / L, dk = the first K of sum over batch rows IDFT(Z conj X) /
/// L, du = pre dx, dpre = u dx, dpost = dy IDFT(X K) / L. `None` for every other problem.
fn circular_fft_backward(
    spec: &ConvSpec,
    u: &[f64],
    k: &[f64],
    gates: Option<(&[f64], &[f64])>,
    dy: &[f64],
) -> Option<monarch_core::reference_backward::ReferenceGradients> {
    use monarch_core::reference::fft_f64;
    use monarch_core::{Complex64, ConvMode};
    let (l, kl, h_count) = (spec.length(), spec.filter_len(), spec.channels());
    let g = spec.geometry();
    if spec.mode() != ConvMode::Circular || g.is_sparse() || g.n() != l || (l * kl) >> 28 == 0 {
        return None;
    }
    let transform = |values: &mut dyn Iterator<Item = f64>| {
        let mut x: Vec<Complex64> = values.map(|v| Complex64::new(v, 0.0)).collect();
        x.resize(l, Complex64::new(0.0, 0.0));
        fft_f64(&mut x, false);
        x
    };
    let inverse = |mut x: Vec<Complex64>| {
        fft_f64(&mut x, true);
        x.iter().map(|v| v.re / l as f64).collect::<Vec<f64>>()
    };
    let spectra: Vec<Vec<Complex64>> = k
        .chunks(kl)
        .map(|row| transform(&mut row.iter().copied()))
        .collect();
    let mut du = vec![0.0; u.len()];
    let mut dk_sum = vec![vec![Complex64::new(0.0, 0.0); l]; h_count];
    let mut dpre = gates.map(|_| vec![0.0; u.len()]);
    let mut dpost = gates.map(|_| vec![0.0; u.len()]);
    for row in 0..u.len() / l {
        let span = row * l..(row + 1) * l;
        let kf = &spectra[row % h_count];
        let xs = transform(
            &mut span
                .clone()
                .map(|i| gates.map_or(u[i], |(pre, _)| u[i] * pre[i])),
        );
        let zs = transform(
            &mut span
                .clone()
                .map(|i| gates.map_or(dy[i], |(_, post)| dy[i] * post[i])),
        );
        let dx = inverse(zs.iter().zip(kf).map(|(z, kk)| z * kk.conj()).collect());
        for (a, b) in dk_sum[row % h_count].iter_mut().zip(zs.iter().zip(&xs)) {
            *a += b.0 * b.1.conj();
        }
        for (j, i) in span.clone().enumerate() {
            du[i] = gates.map_or(dx[j], |(pre, _)| dx[j] * pre[i]);
        }
        if let (Some((_, _)), Some(dpre), Some(dpost)) = (gates, dpre.as_mut(), dpost.as_mut()) {
            let y = inverse(xs.iter().zip(kf).map(|(x, kk)| x * kk).collect());
            for (j, i) in span.enumerate() {
                dpre[i] = dx[j] * u[i];
                dpost[i] = y[j] * dy[i];
            }
        }
    }
    let dk = dk_sum
        .into_iter()
        .flat_map(|spec_sum| inverse(spec_sum).into_iter().take(kl))
        .collect();
    Some(monarch_core::reference_backward::ReferenceGradients {
        du,
        dk,
        dpregate: dpre,
        dpostgate: dpost,
    })
}

/// The FFT backward oracle of long circular problems equals the direct one (where both run).
#[test]
fn circular_fft_backward_is_the_direct_one() {
    let spec = ConvSpec::builder(3, 2, 1 << 15, 1 << 13)
        .circular()
        .gated(true)
        .build()
        .expect("spec");
    let mut rng = StdRng::seed_from_u64(11);
    let inputs = Inputs::new(&spec, &mut rng);
    let (a, b) = inputs.gates.as_ref().expect("gated");
    let (a, b) = (f64s(a), f64s(b));
    let gates = Some((a.as_slice(), b.as_slice()));
    let (u, k, dy) = (f64s(&inputs.u), f64s(&inputs.k), f64s(&inputs.dy));
    let fft = circular_fft_backward(&spec, &u, &k, gates, &dy).expect("a long circular problem");
    let direct = reference_backward(&spec, &u, &k, gates, &dy);
    for (what, x, y) in [
        ("du", &fft.du, &direct.du),
        ("dk", &fft.dk, &direct.dk),
        (
            "dpre",
            fft.dpregate.as_ref().unwrap(),
            direct.dpregate.as_ref().unwrap(),
        ),
        (
            "dpost",
            fft.dpostgate.as_ref().unwrap(),
            direct.dpostgate.as_ref().unwrap(),
        ),
    ] {
        let err = relative_l2_error(x, y);
        assert!(err < 1e-11, "{what}: relative error {err:e}");
    }
}

/// The FFT oracle of long circular problems equals the direct one (on a size where both run).
#[test]
fn circular_fft_reference_is_the_direct_one() {
    let spec = ConvSpec::builder(2, 3, 1 << 15, 1 << 13)
        .circular()
        .gated(true)
        .build()
        .expect("spec");
    let mut rng = StdRng::seed_from_u64(7);
    let inputs = Inputs::new(&spec, &mut rng);
    let (a, b) = inputs.gates.as_ref().expect("gated");
    let (a, b) = (f64s(a), f64s(b));
    let gates = Some((a.as_slice(), b.as_slice()));
    let (u, k) = (f64s(&inputs.u), f64s(&inputs.k));
    let fft = circular_fft_reference(&spec, &u, &k, gates).expect("a long circular problem");
    let direct = reference_forward(&spec, &u, &k, gates);
    let err = relative_l2_error(&fft, &direct);
    assert!(err < 1e-12, "relative error {err:e}");
}

/// Compares `got` with `want`: the relative L2 error, or why it fails.
fn compare(what: &str, got: &[f32], want: &[f64], tolerance: f64) -> Result<f64, String> {
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{what}: element {i} of {} is {} (not written, or read unwritten data)",
            got.len(),
            got[i]
        ));
    }
    let err = relative_l2_error(&f64s(got), want);
    if err <= tolerance {
        Ok(err)
    } else {
        Err(format!(
            "{what}: relative L2 error {err:.2e} > {tolerance:.0e}"
        ))
    }
}

/// The bias of `got` against `want`, as a fraction of `want`'s magnitude: sum of
/// sign(want) (got - want) over sum of |want|. Rounding to nearest (even) leaves it near 0 (the
/// f32 passes: within 6e-5 at 4096 values or more); the Monarch pass's f16 DFT matrices, whose
/// rounded entries are a little shorter than 1 (cos pi/8, sin pi/8 and cos pi/4 all round down),
/// shrink its outputs by 1.5-3.5e-4. Outputs truncated toward zero add about -2.8e-3 (bf16)
/// or -3.5e-4 (f16) times their share: half of the bf16 ones truncated measured -1.1 to
/// -1.8e-3.
fn rounding_bias(got: &[f32], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (&g, &w) in got.iter().zip(want) {
        num += w.signum() * (f64::from(g) - w);
        den += w.abs();
    }
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// `compare` for an output of the I/O type `dtype`, and with 16-bit I/O its `rounding_bias`
/// within `BIAS_TOLERANCE` (the relative L2 error alone lets through a conversion that
/// truncates some values: bf16's own rounding is most of the tolerance).
fn compare_io(
    what: &str,
    got: &[f32],
    want: &[f64],
    tolerance: f64,
    dtype: DType,
) -> Result<f64, String> {
    let err = compare(what, got, want, tolerance)?;
    let bias = rounding_bias(got, want);
    if std::env::var_os("FFTCONV_EMULATION_PRINT_BIAS").is_some() {
        println!("bias {what} {dtype:?} {bias:.2e} ({} values)", got.len());
    }
    if dtype != DType::F32 && got.len() >= 4096 && bias.abs() > BIAS_TOLERANCE {
        return Err(format!(
            "{what}: biased by {bias:.2e} of its magnitude (> {BIAS_TOLERANCE:.0e}): rounded \
             toward zero?"
        ));
    }
    Ok(err)
}

/// The largest `rounding_bias` allowed for 16-bit outputs of 4096 values or more (fewer: the
/// bias's own noise, up to 6e-4 for bf16's 36 values, would need more): twice the Monarch pass's
/// own, catching a bf16 conversion that truncates a third of its values or more (f16's
/// truncation is within the Monarch pass's bias).
const BIAS_TOLERANCE: f64 = 7e-4;

/// The Monarch pass's filter (`fftconv_monarch_filter`, as `monarch_filter` of
/// src/convolution.rs launches it) from the half spectrum `spectrum`: a new buffer.
fn monarch_filter_layout(p: &mut Program, spec: &ConvSpec, spectrum: Buf, twiddles: Buf) -> Buf {
    let n = spec.geometry().n();
    let layout = p.nans(spec.channels() * (n + 2) * 2);
    // Each channel's second value zero (the host's buffer is zeroed): the maxima go there.
    for h in 0..spec.channels() {
        p.fill(layout, (h * (n + 2) + 1) * 2, 2, 0);
    }
    let filter_params = launch_plan::monarch_filter_params(spec);
    let filter_bindings = Bindings {
        spectrum: Some(spectrum),
        twiddles: Some(twiddles),
        tmp: Some(layout),
        ..Bindings::default()
    };
    p.launch(
        Kernel::MonarchFilterMax,
        0,
        &filter_params,
        &filter_bindings,
    );
    p.launch(Kernel::MonarchFilter, 0, &filter_params, &filter_bindings);
    layout
}

/// Which of the backend's forward paths `forward` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForwardPath {
    /// The schedule's steps.
    Steps,
    /// The Monarch pass as `launch_forward` runs it without clusters (before sm_90).
    Monarch,
    /// The Monarch pass with its cluster kernels (sm_90) where they apply (32K .. 128K).
    MonarchCluster,
    /// The Monarch pass with `fftconv_monarch_prefetch` for N = 256 .. 4096, its grid sized for
    /// this many resident blocks (`FFTCONV_CUDA_MONARCH_PREFETCH`).
    MonarchPrefetch(u32),
}

/// The forward through the backend's steps (host I/O: compact chunk buffers), or as
/// `launch_forward` runs the Monarch pass (`path`): the filter-layout kernel once, then its
/// launches per chunk.
fn forward(
    harness: &Path,
    prep: &Prepared,
    inputs: &Inputs,
    name: &str,
    path: ForwardPath,
) -> Result<String, String> {
    let monarch = path != ForwardPath::Steps;
    let spec = &prep.spec;
    let n = spec.geometry().n();
    let mut p = Program::default();
    let twiddles = p.data(&twiddle_tables(n));
    let mut spectrum = p.data(&filter_spectrum(spec, &inputs.k));
    if monarch {
        spectrum = monarch_filter_layout(&mut p, spec, spectrum, twiddles);
    }
    let io = spec.dtype();
    let u = p.io_data(io, &inputs.u);
    let gates = inputs
        .gates
        .as_ref()
        .map(|(a, b)| (p.io_data(io, a), p.io_data(io, b)));
    let y = p.io_nans(io, spec.io_len());
    let uc = prep.chunk_buffer(&mut p);
    let gates_c = gates.map(|_| (prep.chunk_buffer(&mut p), prep.chunk_buffer(&mut p)));
    let yc = prep.chunk_buffer(&mut p);
    let tmp = p.nans(prep.schedule.spectra_bytes() / 4);
    let bindings = Bindings {
        u: Some(uc),
        pre: Some(gates_c.map_or(uc, |g| g.0)),
        post: Some(gates_c.map_or(uc, |g| g.1)),
        y: Some(yc),
        spectrum: Some(spectrum),
        twiddles: Some(twiddles),
        tmp: Some(tmp),
        ..Bindings::default()
    };
    for chunk in prep.schedule.chunks() {
        prep.copy_rows_in(&mut p, chunk, u, uc);
        if let (Some((pre, post)), Some((pre_c, post_c))) = (gates, gates_c) {
            prep.copy_rows_in(&mut p, chunk, pre, pre_c);
            prep.copy_rows_in(&mut p, chunk, post, post_c);
        }
        p.fill_nan(yc);
        let steps = prep.schedule.forward_steps(chunk, true);
        if monarch {
            let prefetch = match path {
                ForwardPath::MonarchPrefetch(slots) => Some(slots),
                _ => None,
            };
            // `launch_forward` of src/convolution.rs: the backend's own planning.
            let launches = launch_plan::monarch_launches(
                &steps,
                launch_plan::monarch_vec_elems(io),
                path == ForwardPath::MonarchCluster,
                prefetch,
            )
            .ok_or_else(|| format!("not a Monarch problem: steps {steps:?}"))?;
            for (kernel, params) in launches {
                let grid = kernel.grid_blocks();
                let (kernel, shared) = monarch_kernel(kernel, params.log2n, io);
                p.launch_grid(kernel, shared, &params, &bindings, grid);
            }
        } else {
            for (kind, params) in steps {
                p.launch(
                    kind.into(),
                    prep.pass_shared_bytes(kind),
                    &params,
                    &bindings,
                );
            }
        }
        prep.copy_rows_out(&mut p, chunk, yc, y);
    }
    let got = p.run(harness, prep.points, &format!("{name}-forward"), &[y])?;
    // The oracle's inputs as the kernels read them (rounded to the I/O type).
    let gates64 = inputs
        .gates
        .as_ref()
        .map(|(a, b)| (rounded(io, a), rounded(io, b)));
    let gates64 = gates64.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice()));
    let (u64s, k64s) = (rounded(io, &inputs.u), f64s(&inputs.k));
    let want = circular_fft_reference(spec, &u64s, &k64s, gates64)
        .unwrap_or_else(|| reference_forward(spec, &u64s, &k64s, gates64));
    // Channels whose filter has a non-finite tap: their rows must be NaN throughout and are left
    // out of the comparison (the direct oracle's NaN pattern follows the taps, a transform's
    // covers the row); every other row must match, unharmed by them.
    let l = spec.length();
    let bad_channel: Vec<bool> = inputs
        .k
        .chunks(spec.filter_len())
        .map(|taps| taps.iter().any(|v| !v.is_finite()))
        .collect();
    let bad_row = |r: usize| bad_channel[r % spec.channels()];
    let mut kept = (Vec::new(), Vec::new());
    for (r, (g, w)) in got[0].chunks(l).zip(want.chunks(l)).enumerate() {
        if !bad_row(r) {
            kept.0.extend_from_slice(g);
            kept.1.extend_from_slice(w);
        } else if !g.iter().all(|v| v.is_nan()) {
            return Err(format!(
                "y row {r}: a NaN filter's row is not NaN throughout"
            ));
        }
    }
    let err = compare_io("y", &kept.0, &kept.1, prep.tolerance, io)?;
    // Each row on its own too: a small-magnitude channel must not lose precision to a large one
    // it shares a block or a tile with.
    let mut worst = 0.0f64;
    for (r, (g, w)) in got[0].chunks(l).zip(want.chunks(l)).enumerate() {
        if bad_row(r) {
            continue;
        }
        let e = compare(&format!("y row {r}"), g, w, prep.tolerance)?;
        worst = worst.max(e);
    }
    Ok(format!(
        "forward {err:.1e}, worst row {worst:.1e} ({} launches)",
        p.launches
    ))
}

/// The backward through the backend's launches and bindings (`launch_backward`, host I/O):
/// `fused_lines: Some(log2 rows per block)` runs the fused backward kernel per chunk, `None`
/// the schedule's backward steps; then the taps sum.
/// Which of the backend's backward paths `backward` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackwardPath {
    /// The schedule's steps (transforms through global spectra).
    Steps,
    /// `fftconv_backward_fused` with 2^l rows per block.
    Fused(u32),
    /// `fftconv_monarch_backward` (after the Monarch filter layout), as `launch_backward` runs
    /// it with the Monarch pass on.
    Monarch,
    /// The split Monarch backward (the default; `FFTCONV_CUDA_MONARCH_SPLIT_BACKWARD=0` is off) where it applies:
    /// du through `fftconv_monarch` with the filter conjugated, the taps through
    /// `fftconv_monarch_backward_taps` aiming at this many blocks (1: one group per channel);
    /// with `Some(slots)` (`FFTCONV_CUDA_MONARCH_PREFETCH=1`; N <= 4K) du through
    /// `fftconv_monarch_prefetch` with its grid for that many resident blocks and the taps
    /// through `fftconv_monarch_backward_taps_prefetch`.
    MonarchSplit(u32, Option<u32>),
}

fn backward(
    harness: &Path,
    prep: &Prepared,
    inputs: &Inputs,
    name: &str,
    path: BackwardPath,
) -> Result<String, String> {
    let spec = &prep.spec;
    let schedule = &prep.schedule;
    let per_row = matches!(path, BackwardPath::Monarch | BackwardPath::MonarchSplit(..));
    let mut p = Program::default();
    let n = spec.geometry().n();
    let twiddles = p.data(&twiddle_tables(n));
    let half_spectrum = p.data(&filter_spectrum(spec, &inputs.k));
    let spectrum = if per_row {
        monarch_filter_layout(&mut p, spec, half_spectrum, twiddles)
    } else {
        half_spectrum
    };
    let gated = spec.gated();
    // Whole-problem arrays: inputs u, dy (pre, post); outputs du (dpre, dpost), dk.
    let io = spec.dtype();
    let mut full_in = vec![p.io_data(io, &inputs.u), p.io_data(io, &inputs.dy)];
    if let Some((pre, post)) = &inputs.gates {
        full_in.extend([p.io_data(io, pre), p.io_data(io, post)]);
    }
    let full_out: Vec<Buf> = (0..if gated { 3 } else { 1 })
        .map(|_| p.io_nans(io, spec.io_len()))
        .collect();
    let dk = p.zeros(spec.filter_elems());
    // The chunk's streams, as in `backward`: u, dy (pre, post), du (dpre, dpost).
    let chunk_in: Vec<Buf> = full_in.iter().map(|_| prep.chunk_buffer(&mut p)).collect();
    let chunk_out: Vec<Buf> = full_out.iter().map(|_| prep.chunk_buffer(&mut p)).collect();
    let (su, sdy) = (chunk_in[0], chunk_in[1]);
    let (spre, spost) = if gated {
        (chunk_in[2], chunk_in[3])
    } else {
        (su, su)
    };
    let sdu = chunk_out[0];
    let (sdpre, sdpost) = if gated {
        (chunk_out[1], chunk_out[2])
    } else {
        (sdu, sdu)
    };
    let tmp_v = p.nans(schedule.spectra_bytes() / 4);
    let tmp_d = p.nans(schedule.spectra_bytes() / 4);
    let taps = p.nans(schedule.backward_taps_len());
    let base = Bindings {
        u: Some(su),
        pre: Some(spre),
        post: Some(spost),
        y: Some(sdu),
        spectrum: Some(spectrum),
        twiddles: Some(twiddles),
        tmp: Some(tmp_v),
        other: Some(tmp_v),
        taps: Some(taps),
        y2: Some(sdpre),
        taps_sum: Some(dk),
        u2: Some(sdy),
        y3: Some(sdpost),
    };
    let threads_log2 = prep.threads_log2();
    for chunk in schedule.chunks() {
        for (&full, &c) in full_in.iter().zip(&chunk_in) {
            prep.copy_rows_in(&mut p, chunk, full, c);
        }
        for &c in &chunk_out {
            p.fill_nan(c);
        }
        if let BackwardPath::Fused(rows_log2) = path {
            let (params, sum_params) =
                schedule.fused_backward_params(chunk, true, rows_log2, threads_log2);
            let shared = schedule.fused_backward_shared_bytes(params.lines_log2, true);
            p.launch(Kernel::BackwardFused, shared, &params, &base);
            p.launch(Kernel::TapsSum, 0, &sum_params, &base);
            for (&c, &full) in chunk_out.iter().zip(&full_out) {
                prep.copy_rows_out(&mut p, chunk, c, full);
            }
            continue;
        }
        if let BackwardPath::MonarchSplit(target_blocks, du_slots) = path {
            // `launch_backward`'s split branch (src/convolution/backward.rs).
            let (params, sum_params) = schedule.fused_backward_params(chunk, true, 0, threads_log2);
            let (taps_params, groups) =
                launch_plan::monarch_split_taps_params(&params, target_blocks)
                    .ok_or_else(|| format!("not a split Monarch backward: {params:?}"))?;
            let forward = launch_plan::monarch_launches(
                &schedule.forward_steps(chunk, true),
                launch_plan::monarch_vec_elems(io),
                false,
                du_slots,
            )
            .ok_or("no Monarch forward for the split backward's du")?;
            let b = Bindings {
                tmp: Some(tmp_v),
                other: Some(tmp_d),
                ..base
            };
            for (kernel, fp) in forward {
                let grid = kernel.grid_blocks();
                let (kernel, shared) = monarch_kernel(kernel, fp.log2n, io);
                let fp = PassParams {
                    flags: fp.flags | monarch_core::schedule::FLAG_CONJ_FILTER,
                    ..fp
                };
                let du = Bindings {
                    u: Some(sdy),
                    y: Some(sdu),
                    ..b
                };
                p.launch_grid(kernel, shared, &fp, &du, grid);
            }
            // `taps_function`: up to 4K `_taps_prefetch` with the prefetch, 8K and 16K
            // `_taps_wide`.
            let taps_kernel = if params.log2n > 12 {
                Kernel::MonarchBackwardTapsWide
            } else if du_slots.is_some() {
                Kernel::MonarchBackwardTapsPrefetch
            } else {
                Kernel::MonarchBackwardTaps
            };
            let shared = launch_plan::monarch_taps_kernel_bytes(
                params.log2n,
                du_slots.is_some(),
                io.size_bytes() as u32,
            );
            p.launch(taps_kernel, shared as usize, &taps_params, &b);
            let sum_params = PassParams {
                pairs: groups,
                ..sum_params
            };
            p.launch(Kernel::TapsSum, 0, &sum_params, &base);
            for (&c, &full) in chunk_out.iter().zip(&full_out) {
                prep.copy_rows_out(&mut p, chunk, c, full);
            }
            continue;
        }
        if path == BackwardPath::Monarch {
            let (params, sum_params) = schedule.fused_backward_params(chunk, true, 0, threads_log2);
            let launches =
                launch_plan::monarch_backward_launches(&params, launch_plan::monarch_vec_elems(io))
                    .ok_or_else(|| format!("not a Monarch backward: {params:?}"))?;
            // From 32K: x (then T) and gated x' in tmp_v, d (then G) and the scales in tmp_d.
            let b = Bindings {
                tmp: Some(tmp_v),
                other: Some(tmp_d),
                ..base
            };
            for (kernel, params) in launches {
                let (kernel, shared) = monarch_backward_kernel(kernel, params.log2n, gated);
                p.launch(kernel, shared, &params, &b);
            }
            // The Monarch kernels write one taps row per pair (src/convolution/backward.rs).
            let sum_params = PassParams {
                pairs: params.pairs,
                ..sum_params
            };
            p.launch(Kernel::TapsSum, 0, &sum_params, &base);
            for (&c, &full) in chunk_out.iter().zip(&full_out) {
                prep.copy_rows_out(&mut p, chunk, c, full);
            }
            continue;
        }
        // Mirrored taps where the backend uses them (ungated multi-pass plans).
        let steps = schedule.backward_steps(chunk, true, threads_log2);
        let taps_params = steps
            .iter()
            .find(|(b, _, _)| *b == BackwardBinding::Taps)
            .map(|(_, _, params)| *params)
            .expect("the backward has a taps step");
        let mirrored = schedule.mirrors_taps();
        for (binding, kind, params) in steps {
            let b = match binding {
                BackwardBinding::Input => base,
                BackwardBinding::OutputGradient => Bindings {
                    u: Some(sdy),
                    pre: Some(spost),
                    tmp: Some(tmp_d),
                    ..base
                },
                BackwardBinding::Taps if mirrored => Bindings {
                    tmp: Some(tmp_v),
                    other: Some(tmp_d),
                    ..base
                },
                BackwardBinding::Taps => Bindings {
                    tmp: Some(tmp_d),
                    other: Some(tmp_v),
                    ..base
                },
                BackwardBinding::PostGate => Bindings {
                    y: Some(sdpost),
                    post: Some(sdy),
                    ..base
                },
                BackwardBinding::Adjoint | BackwardBinding::Gather => Bindings {
                    tmp: Some(tmp_d),
                    ..base
                },
            };
            p.launch(kind.into(), prep.pass_shared_bytes(kind), &params, &b);
        }
        let sum_params = PassParams {
            total_lines: (chunk.nh * spec.filter_len()) as u32,
            lines_log2: threads_log2,
            ..taps_params
        };
        p.launch(Kernel::TapsSum, 0, &sum_params, &base);
        for (&c, &full) in chunk_out.iter().zip(&full_out) {
            prep.copy_rows_out(&mut p, chunk, c, full);
        }
    }
    let mut outputs = full_out.clone();
    outputs.push(dk);
    let (path, file) = match path {
        BackwardPath::Fused(l) => (
            format!("fused backward (2^{l} rows per block)"),
            "fused-backward",
        ),
        BackwardPath::Monarch => ("Monarch backward".to_owned(), "monarch-backward"),
        BackwardPath::MonarchSplit(t, du_slots) => (
            format!(
                "split Monarch backward ({t} blocks aimed at{})",
                if du_slots.is_some() {
                    ", prefetched"
                } else {
                    ""
                }
            ),
            "monarch-split-backward",
        ),
        BackwardPath::Steps => ("backward".to_owned(), "backward"),
    };
    let got = p.run(harness, prep.points, &format!("{name}-{file}"), &outputs)?;
    let gates64 = inputs
        .gates
        .as_ref()
        .map(|(a, b)| (rounded(io, a), rounded(io, b)));
    let gates64 = gates64.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice()));
    let (u64s, k64s, dy64s) = (
        rounded(io, &inputs.u),
        f64s(&inputs.k),
        rounded(io, &inputs.dy),
    );
    let want = circular_fft_backward(spec, &u64s, &k64s, gates64, &dy64s)
        .unwrap_or_else(|| reference_backward(spec, &u64s, &k64s, gates64, &dy64s));
    let mut checks = vec![
        ("du", &got[0], &want.du),
        ("dk", &got[got.len() - 1], &want.dk),
    ];
    if gated {
        checks.push(("dpregate", &got[1], want.dpregate.as_ref().unwrap()));
        checks.push(("dpostgate", &got[2], want.dpostgate.as_ref().unwrap()));
    }
    // Channels whose filter has a non-finite tap: their du (and dpre, dpost) rows must be NaN
    // throughout and are left out of the comparison (the direct oracle's NaN pattern follows the
    // taps, a transform's covers the row); dk does not depend on the filter and is compared.
    let l = spec.length();
    let bad_channel: Vec<bool> = inputs
        .k
        .chunks(spec.filter_len())
        .map(|taps| taps.iter().any(|v| !v.is_finite()))
        .collect();
    let bad_row = |r: usize| bad_channel[r % spec.channels()];
    if bad_channel.iter().any(|&b| b) {
        for (what, got, _) in &checks {
            for (r, row) in got.chunks(l).enumerate() {
                if *what != "dk" && bad_row(r) && !row.iter().all(|v| v.is_nan()) {
                    return Err(format!(
                        "{what} row {r}: a NaN filter's row is not NaN throughout"
                    ));
                }
            }
        }
    }
    let masked: Vec<(Vec<f32>, Vec<f64>)> = checks
        .iter()
        .map(|(what, got, want)| {
            let keep = |r: usize| *what == "dk" || !bad_row(r);
            let g = got.chunks(l).enumerate().filter(|(r, _)| keep(*r));
            let w = want.chunks(l).enumerate().filter(|(r, _)| keep(*r));
            (
                g.flat_map(|(_, c)| c.iter().copied()).collect(),
                w.flat_map(|(_, c)| c.iter().copied()).collect(),
            )
        })
        .collect();
    for (check, (g, w)) in checks.iter_mut().zip(&masked) {
        check.1 = g;
        check.2 = w;
    }
    let mut errs = Vec::new();
    for (what, got, want) in checks {
        let dtype = if what == "dk" { DType::F32 } else { io };
        errs.push(format!(
            "{what} {:.1e}",
            compare_io(what, got, want, prep.tolerance, dtype)?
        ));
        // The Monarch backward's scales are per row (coupled for the taps only): each row of
        // du and the gate gradients on its own too.
        if per_row && what != "dk" {
            let l = spec.length();
            for (r, (g, w)) in got.chunks(l).zip(want.chunks(l)).enumerate() {
                compare(&format!("{what} row {r}"), g, w, prep.tolerance)?;
            }
        }
    }
    Ok(format!(
        "{path} {} ({} launches)",
        errs.join(" "),
        p.launches
    ))
}

// ---- cases -----------------------------------------------------------------------------------------

struct Case {
    name: String,
    spec: ConvSpec,
    chunk_elems: usize,
    /// Global column passes the plan must have (checked: the coverage the test claims).
    want_passes: Option<usize>,
}

fn case(name: &str, builder: ConvSpecBuilder, chunk_elems: usize) -> Case {
    Case {
        name: name.to_owned(),
        spec: builder.build().expect("spec"),
        chunk_elems,
        want_passes: None,
    }
}

const WHOLE: usize = monarch_core::schedule::DEFAULT_CHUNK_ELEMS;

/// The fixed cases at `points` shared points (`want_passes` for the dense causal one, L = 2048,
/// N = 4096) and `random` random ones, with `dtype` I/O.
fn cases(want_passes: usize, random: usize, dtype: DType, rng: &mut StdRng) -> Vec<Case> {
    let b = |bn, hn, l, k| ConvSpec::builder(bn, hn, l, k).dtype(dtype);
    let mut cases = vec![
        Case {
            want_passes: Some(want_passes),
            ..case("causal", b(3, 2, 2048, 2048), WHOLE)
        },
        case(
            "circular-power-of-two",
            b(1, 2, 2048, 2048).circular(),
            WHOLE,
        ),
        case(
            "circular-wrapped-history",
            b(2, 1, 1500, 1200).circular(),
            WHOLE,
        ),
        case("gated-two-blocks", b(2, 3, 2048, 682).gated(true), WHOLE),
        case("sparse", b(2, 2, 2048, 2048).keep_frequencies(0.3), WHOLE),
        case(
            "sparse-circular-gated",
            b(1, 2, 1000, 300)
                .circular()
                .gated(true)
                .keep_frequencies(0.3),
            WHOLE,
        ),
        case("many-blocks", b(2, 1, 3001, 40), WHOLE),
        case(
            "tiny-gated-circular",
            b(3, 3, 12, 5).circular().gated(true),
            WHOLE,
        ),
        case("chunks-of-one-row", b(3, 3, 700, 700), 1),
        case("chunks-of-two-rows", b(3, 3, 700, 350).gated(true), 2000),
        case("chunks-of-2x3-rows", b(3, 3, 700, 700).circular(), 5000),
        case(
            "chunks-partial-gated-circular",
            b(3, 2, 1500, 100).circular().gated(true),
            1,
        ),
        case(
            "chunks-sparse",
            b(3, 2, 900, 900).keep_frequencies(0.3),
            1800,
        ),
    ];
    for i in 0..random {
        let l = rng.random_range(1..=3000usize);
        let k = if rng.random_bool(0.5) {
            rng.random_range(1..=l)
        } else {
            rng.random_range(1..=l.min(64))
        };
        let (bn, hn) = (rng.random_range(1..=3usize), rng.random_range(1..=3usize));
        let mut builder = b(bn, hn, l, k).gated(rng.random_bool(0.5));
        if rng.random_bool(0.5) {
            builder = builder.circular();
        }
        if rng.random_bool(0.3) {
            builder = builder.keep_frequencies(rng.random_range(0.05..=1.0));
        }
        let chunk_elems = match rng.random_range(0..3) {
            0 => WHOLE,
            1 => 1,
            _ => rng.random_range(1..=bn * hn * l),
        };
        cases.push(case(&format!("random-{i}"), builder, chunk_elems));
    }
    cases
}

/// Runs every case at `points` shared points with `threads` threads per block, forward and
/// backward; panics listing the failures.
/// The cases of one test: its seed (`FFTCONV_EMULATION_SEED` or random, printed), each case's
/// line, and at the end its time and a panic listing the failures.
struct Outcomes {
    test: String,
    seed: u64,
    start: Instant,
    failures: Vec<String>,
}

impl Outcomes {
    fn new(test: &str) -> Outcomes {
        let seed = std::env::var("FFTCONV_EMULATION_SEED")
            .ok()
            .map(|s| s.parse::<u64>().expect("FFTCONV_EMULATION_SEED is a u64"))
            .unwrap_or_else(|| rand::rng().random());
        println!("{test}: seed {seed} (FFTCONV_EMULATION_SEED={seed} reproduces it)");
        Outcomes {
            test: test.to_owned(),
            seed,
            start: Instant::now(),
            failures: Vec::new(),
        }
    }

    fn record(&mut self, what: &str, result: Result<String, String>) {
        match result {
            Ok(summary) => println!("ok   {what}: {summary}"),
            Err(e) => {
                println!("FAIL {what}: {e}");
                self.failures.push(format!("{what}: {e}"));
            }
        }
    }

    fn finish(self) {
        println!("{}: {:.2?}", self.test, self.start.elapsed());
        assert!(
            self.failures.is_empty(),
            "{} case(s) failed (seed {}):\n{}",
            self.failures.len(),
            self.seed,
            self.failures.join("\n")
        );
    }
}

fn check_all(test: &str, points: usize, threads: usize, want_passes: usize) {
    check_variant(test, points, threads, "", TOLERANCE, want_passes);
}

/// `check_all` for kernels built with extra `defines`, compared with `tolerance`.
fn check_variant(
    test: &str,
    points: usize,
    threads: usize,
    defines: &'static str,
    tolerance: f64,
    want_passes: usize,
) {
    let Some(harness) = harness(points, threads, defines) else {
        println!("skipped {test}: no C++ compiler");
        return;
    };
    let mut outcomes = Outcomes::new(test);
    let seed = outcomes.seed;
    let mut rng = StdRng::seed_from_u64(seed ^ points as u64 ^ ((threads as u64 - 1) << 32));
    // The I/O type the defines choose (f32 unless `-DIO_F16` or `-DIO_BF16`).
    let dtype = if defines.contains("-DIO_F16") {
        DType::F16
    } else if defines.contains("-DIO_BF16") {
        DType::Bf16
    } else {
        DType::F32
    };
    for (i, c) in cases(want_passes, 4, dtype, &mut rng)
        .into_iter()
        .enumerate()
    {
        let prep = Prepared::new(&c.spec, points, c.chunk_elems, tolerance);
        let inputs = Inputs::new(&c.spec, &mut rng);
        let g = c.spec.geometry();
        let what = format!(
            "{test}/{}: B={} H={} L={} K={} {:?}{}{} N={} blocks={} kept={} factors {:?} \
             ({} global passes), chunks of {:?} ({})",
            c.name,
            c.spec.batch(),
            c.spec.channels(),
            c.spec.length(),
            c.spec.filter_len(),
            c.spec.mode(),
            if c.spec.gated() { " gated" } else { "" },
            if g.is_sparse() { " sparse" } else { "" },
            g.n(),
            g.blocks,
            g.kept_bins,
            prep.plan.factors(),
            prep.plan.global_passes(),
            prep.schedule.chunk_shape(),
            prep.schedule.chunks().count(),
        );
        if let Some(want) = c.want_passes {
            assert_eq!(
                prep.plan.global_passes(),
                want,
                "{what}: the plan does not have the passes this test is meant to cover"
            );
        }
        let name = format!("{test}-{i}");
        // The backward's step schedule always (the path of devices whose shared memory does
        // not hold the fused backward), and the fused backward kernel where the backend runs it.
        let result = forward(&harness, &prep, &inputs, &name, ForwardPath::Steps).and_then(|f| {
            let steps = backward(&harness, &prep, &inputs, &name, BackwardPath::Steps)?;
            Ok(match prep.fused_backward_rows() {
                Some(l) => {
                    let fused = backward(&harness, &prep, &inputs, &name, BackwardPath::Fused(l))?;
                    format!("{f}, {steps}, {fused}")
                }
                None => format!("{f}, {steps}"),
            })
        });
        outcomes.record(&what, result);
    }
    outcomes.finish();
}

// One thread per block (THREADS=1): every round's items run in turn, barriers are no-ops.

#[test]
fn one_fused_pass_4096_points() {
    check_all("one_fused_pass_4096_points", 4096, 1, 0);
}

#[test]
fn one_column_pass_64_points() {
    check_all("one_column_pass_64_points", 64, 1, 1);
}

#[test]
fn two_column_passes_16_points() {
    check_all("two_column_passes_16_points", 16, 1, 2);
}

// Real block sizes: each thread a fiber, barriers waiting for the block (or warp). 4096 points
// run the backend's default (a sixteenth of the points, 256 .. 1024); the small sizes, whose
// blocks hold 16 or 64 points, run a warp or two (the backend's 256 would leave most threads
// idle), and 48 threads (not a multiple of 32: a partial last warp, rounds whose items do not
// divide evenly).

#[test]
fn one_fused_pass_4096_points_256_threads() {
    check_all("one_fused_pass_4096_points_256_threads", 4096, 256, 0);
}

#[test]
fn one_column_pass_64_points_64_threads() {
    check_all("one_column_pass_64_points_64_threads", 64, 64, 1);
}

#[test]
fn one_column_pass_64_points_48_threads() {
    check_all("one_column_pass_64_points_48_threads", 64, 48, 1);
}

#[test]
fn two_column_passes_16_points_32_threads() {
    check_all("two_column_passes_16_points_32_threads", 16, 32, 2);
}

// 16-bit I/O through the same kernels (the path of f16 and bf16 problems the Monarch pass does
// not take: rows of no multiple of 8 elements, GPUs before sm_80, `FFTCONV_CUDA_MONARCH=0`):
// f32 compute, so the tolerance is the outputs' rounding (f16 about 2e-4 RMS, bf16 about
// 1.5e-3) with a margin.

#[test]
fn f16_io_one_fused_pass_4096_points_256_threads() {
    check_variant(
        "f16_io_one_fused_pass_4096_points_256_threads",
        4096,
        256,
        "-DIO_F16",
        1e-3,
        0,
    );
}

#[test]
fn bf16_io_one_column_pass_64_points_64_threads() {
    check_variant(
        "bf16_io_one_column_pass_64_points_64_threads",
        64,
        64,
        "-DIO_BF16",
        3e-3,
        1,
    );
}

// The tensor-core rounds (`-DTENSOR_CORES=1`, f16 operands, warp-wide mma emulated on the
// fibers). They need tiles of eight 16-point items, so blocks of at least 128 points: fused
// 4096-point blocks (three radix-16 rounds each way), and one column pass at 256 and 128 points
// (16- and 32-point column lines, 256- and 128-point fused blocks).

#[test]
fn tensor_cores_one_fused_pass_4096_points_256_threads() {
    check_variant(
        "tensor_cores_one_fused_pass_4096_points_256_threads",
        4096,
        256,
        "-DTENSOR_CORES=1",
        TENSOR_CORE_TOLERANCE,
        0,
    );
}

#[test]
fn tensor_cores_one_column_pass_256_points_64_threads() {
    check_variant(
        "tensor_cores_one_column_pass_256_points_64_threads",
        256,
        64,
        "-DTENSOR_CORES=1",
        TENSOR_CORE_TOLERANCE,
        1,
    );
}

#[test]
fn tensor_cores_one_column_pass_128_points_32_threads() {
    check_variant(
        "tensor_cores_one_column_pass_128_points_32_threads",
        128,
        32,
        "-DTENSOR_CORES=1",
        TENSOR_CORE_TOLERANCE,
        1,
    );
}

// Per-plan specialization (`-DSPEC_*`: the fused pass with one plan's sizes as compile-time
// constants): the causal case's fused pass matches (N = 4096 in one pass; N = 4096 as 64 x 64
// with 4 lines per 256-point block), every other case takes the generic copy.

// Vector I/O (`FFTCONV_CUDA_VECTOR_IO`): the one-pass plans' loads and stores of whole-row
// segments 16 bytes at a time (4 f32 here; the cases with L a multiple of 4 take it, ragged
// chunks and the others the scalar path), with one thread per block and with 256.

#[test]
fn vector_io_one_fused_pass_4096_points() {
    check_variant(
        "vector_io_one_fused_pass_4096_points",
        4096,
        1,
        "-DVECTOR_IO=1",
        TOLERANCE,
        0,
    );
}

#[test]
fn vector_io_one_fused_pass_4096_points_256_threads() {
    check_variant(
        "vector_io_one_fused_pass_4096_points_256_threads",
        4096,
        256,
        "-DVECTOR_IO=1",
        TOLERANCE,
        0,
    );
}

#[test]
fn specialized_one_fused_pass_4096_points_256_threads() {
    check_variant(
        "specialized_one_fused_pass_4096_points_256_threads",
        4096,
        256,
        "-DSPEC_LOG2N=12 -DSPEC_LINE_LOG2=12 -DSPEC_LINES_LOG2=0 -DSPEC_STAGE_COUNT=0 \
         -DSPEC_STAGE_BITS=0",
        TOLERANCE,
        0,
    );
}

#[test]
fn specialized_one_column_pass_256_points_64_threads() {
    check_variant(
        "specialized_one_column_pass_256_points_64_threads",
        256,
        64,
        "-DSPEC_LOG2N=12 -DSPEC_LINE_LOG2=6 -DSPEC_LINES_LOG2=2 -DSPEC_STAGE_COUNT=1 \
         -DSPEC_STAGE_BITS=6",
        TOLERANCE,
        1,
    );
}

#[test]
fn tensor_cores_middle_round_one_fused_pass_4096_points_256_threads() {
    check_variant(
        "tensor_cores_middle_round_one_fused_pass_4096_points_256_threads",
        4096,
        256,
        "-DTENSOR_CORES=1 -DMIDDLE_ROUND=1",
        TENSOR_CORE_TOLERANCE,
        0,
    );
}

#[test]
fn tensor_cores_middle_round_one_column_pass_256_points_64_threads() {
    check_variant(
        "tensor_cores_middle_round_one_column_pass_256_points_64_threads",
        256,
        64,
        "-DTENSOR_CORES=1 -DMIDDLE_ROUND=1",
        TENSOR_CORE_TOLERANCE,
        1,
    );
}

/// A NaN tap in one channel's filter: that channel's du (and gate gradients) come out NaN
/// throughout, every other channel's match the oracle, and dk (which does not depend on the
/// filter) stays finite and exact: through the backward's steps and the fused backward, whose
/// one inverse transform carries the taps and du together (T + i σ G).
#[test]
fn backward_nan_filter_256_threads() {
    let test = "backward_nan_filter_256_threads";
    let Some(harness) = harness(4096, 256, "") else {
        println!("skipped {test}: no C++ compiler");
        return;
    };
    let mut outcomes = Outcomes::new(test);
    let mut rng = StdRng::seed_from_u64(outcomes.seed);
    let cases = [
        ("one block", ConvSpec::builder(2, 3, 600, 600)),
        (
            "one block gated",
            ConvSpec::builder(3, 3, 600, 400).gated(true),
        ),
        ("several blocks", ConvSpec::builder(2, 3, 3000, 100)),
    ];
    for (i, (label, builder)) in cases.into_iter().enumerate() {
        let spec = builder.build().expect("spec");
        let prep = Prepared::new(&spec, 4096, 1 << 30, TOLERANCE);
        let mut inputs = Inputs::new(&spec, &mut rng);
        inputs.k[spec.filter_len() + 4] = f32::NAN;
        let name = format!("{test}-{i}");
        let result = backward(&harness, &prep, &inputs, &name, BackwardPath::Steps).and_then(|s| {
            Ok(match prep.fused_backward_rows() {
                Some(l) => {
                    let f = backward(&harness, &prep, &inputs, &name, BackwardPath::Fused(l))?;
                    format!("{s}, {f}")
                }
                None => s,
            })
        });
        let what = format!(
            "{test}/{label}: B={} H={} L={} K={} blocks={}",
            spec.batch(),
            spec.channels(),
            spec.length(),
            spec.filter_len(),
            spec.geometry().blocks
        );
        outcomes.record(&what, result);
    }
    outcomes.finish();
}

// ---- the Monarch tensor-core pass (`-DMONARCH_TC=1`, `FFTCONV_CUDA_MONARCH`) ---------------------

/// Shared points of the Monarch test's plans and harness: 16K, as the backend's on a GPU with
/// 227 KiB per block, so that every size the pass takes is one fused step.
const MONARCH_POINTS: usize = 16384;

/// The harness's kernel for the backend's Monarch forward kernel at N = 2^log2n
/// (`MonarchKernels::function` of src/device.rs), and its dynamic shared memory with `dtype` I/O.
fn monarch_kernel(kernel: MonarchKernel, log2n: u32, dtype: DType) -> (Kernel, usize) {
    let id = match kernel {
        MonarchKernel::Forward => Kernel::Monarch,
        MonarchKernel::Prefetch { .. } => Kernel::MonarchPrefetch,
        MonarchKernel::Wide => Kernel::MonarchWide,
        MonarchKernel::Scales => Kernel::MonarchScales,
        MonarchKernel::ScalesFinish => Kernel::MonarchScalesFinish,
        MonarchKernel::ColumnsForward if log2n > 18 => Kernel::MonarchTileColumnsForward,
        MonarchKernel::ColumnsForward => Kernel::MonarchColumnsForward,
        MonarchKernel::Middle => Kernel::MonarchMiddle,
        MonarchKernel::ColumnsInverse if log2n > 18 => Kernel::MonarchTileColumnsInverse,
        MonarchKernel::ColumnsInverse => Kernel::MonarchColumnsInverse,
        MonarchKernel::Cluster => [
            Kernel::MonarchCluster2,
            Kernel::MonarchCluster4,
            Kernel::MonarchCluster8,
        ][log2n.clamp(15, 17) as usize - 15],
    };
    let bytes = launch_plan::monarch_forward_kernel_bytes(kernel, log2n, dtype.size_bytes() as u32);
    (id, bytes as usize)
}

/// The same for a Monarch backward kernel (`MonarchKernels::backward_function`).
fn monarch_backward_kernel(
    kernel: MonarchBackwardKernel,
    log2n: u32,
    gated: bool,
) -> (Kernel, usize) {
    let id = match kernel {
        MonarchBackwardKernel::Narrow => Kernel::MonarchBackward,
        MonarchBackwardKernel::Wide if log2n == 13 => Kernel::MonarchBackwardWide8k,
        MonarchBackwardKernel::Wide => Kernel::MonarchBackwardWide,
        MonarchBackwardKernel::Scales => Kernel::MonarchBackwardScales,
        MonarchBackwardKernel::ScalesFinish => Kernel::MonarchBackwardScalesFinish,
        MonarchBackwardKernel::ColumnsForward if log2n > 18 => {
            Kernel::MonarchBackwardTileColumnsForward
        }
        MonarchBackwardKernel::ColumnsForward => Kernel::MonarchBackwardColumnsForward,
        MonarchBackwardKernel::Middle => Kernel::MonarchBackwardMiddle,
        MonarchBackwardKernel::ColumnsInverse if log2n > 18 => {
            Kernel::MonarchBackwardTileColumnsInverse
        }
        MonarchBackwardKernel::ColumnsInverse => Kernel::MonarchBackwardColumnsInverse,
    };
    let bytes = launch_plan::monarch_backward_kernel_bytes(kernel, log2n, gated);
    (id, bytes as usize)
}

/// The Monarch tests' line for a case: its label and shape.
fn monarch_case_line(test: &str, label: &str, spec: &ConvSpec, prep: &Prepared) -> String {
    format!(
        "{test}/{label}: B={} H={} L={} K={} N={} kept={} chunks {}",
        spec.batch(),
        spec.channels(),
        spec.length(),
        spec.filter_len(),
        spec.geometry().n(),
        spec.geometry().kept_bins,
        prep.schedule.chunks().count()
    )
}

/// Zeros all but about `per_row` values of each row of `values` (`[B, H, L]`), chosen by a
/// multiplicative hash of the index (with `salt`): few impulses, a flat spectrum.
fn keep_impulses(values: &mut [f32], spec: &ConvSpec, per_row: usize, salt: usize) {
    let period = spec.length() / per_row;
    for (i, v) in values.iter_mut().enumerate() {
        if (i.wrapping_mul(2_654_435_761) ^ salt) % period != 0 {
            *v = 0.0;
        }
    }
}

/// Tap `t` of a smooth filter (e^(-t/64)) modulated to a quarter of the sampling rate: its
/// spectrum peaks at N/4, far from the first 16K bins.
fn quarter_rate_tap(t: usize) -> f32 {
    (-(t as f32) / 64.0).exp() * [1.0, 0.0, -1.0, 0.0][t % 4]
}

/// Multiplies the last quarter of every row of `values` (`[B, H, L]`) by `factor`: the rows'
/// largest values far from their first 16K-point slice (the long path's scales merge slices).
fn boost_row_tails(values: &mut [f32], spec: &ConvSpec, factor: f32) {
    let len = spec.length();
    for row in values.chunks_mut(len) {
        row[len - len / 4..].iter_mut().for_each(|v| *v *= factor);
    }
}

/// Multiplies the odd batch rows of `values` (`[B, H, L]`) by `factor`: each pair's second
/// row far smaller than its first.
fn scale_odd_batch_rows(values: &mut [f32], spec: &ConvSpec, factor: f32) {
    let row = spec.channels() * spec.length();
    for (b, rows) in values.chunks_mut(row).enumerate() {
        if b % 2 == 1 {
            rows.iter_mut().for_each(|v| *v *= factor);
        }
    }
}

/// The Monarch filter layout (`fftconv_monarch_filter_max`, then `fftconv_monarch_filter`, a
/// block per channel and 16K bins): each channel's s_k is the power of two above its largest
/// |Re| + |Im| over all slices (channel 0's spectrum peaks at N/4, far from the first slice;
/// channel 1 is random, channel 2 zero), and every bin is written and within [-1, 1].
#[test]
fn monarch_filter_layout_256_threads() {
    let test = "monarch_filter_layout_256_threads";
    let Some(harness) = harness(MONARCH_POINTS, 256, "-DMONARCH_TC=1") else {
        println!("skipped {test}: no C++ compiler");
        return;
    };
    let mut outcomes = Outcomes::new(test);
    let mut rng = StdRng::seed_from_u64(outcomes.seed);
    for (i, log2n) in [12u32, 17, 20].into_iter().enumerate() {
        let n = 1usize << log2n;
        let spec = ConvSpec::builder(1, 3, n / 2, n / 2).build().expect("spec");
        let klen = spec.filter_len();
        let mut k = vec![0.0f32; 3 * klen];
        for (t, v) in k[..klen].iter_mut().enumerate() {
            *v = quarter_rate_tap(t);
        }
        k[klen..2 * klen]
            .iter_mut()
            .for_each(|v| *v = rng.random_range(-1.0..1.0));
        let half = filter_spectrum(&spec, &k);
        let kept = half.len() / 6;
        let mut p = Program::default();
        let twiddles = p.data(&twiddle_tables(n));
        let spectrum = p.data(&half);
        let layout = monarch_filter_layout(&mut p, &spec, spectrum, twiddles);
        let what = format!("{test}/N = 2^{log2n}");
        let result = p
            .run(&harness, MONARCH_POINTS, &format!("{test}-{i}"), &[layout])
            .and_then(|out| {
                let out = &out[0];
                for h in 0..3 {
                    let bins = &half[h * kept * 2..(h + 1) * kept * 2];
                    let max = bins
                        .chunks_exact(2)
                        .map(|c| c[0].abs() + c[1].abs())
                        .fold(0.0f32, f32::max);
                    let e = if max == 0.0 {
                        127
                    } else {
                        (max.to_bits() >> 23) + 1
                    };
                    let s_k = f32::from_bits(e.min(253) << 23);
                    let channel = &out[h * (n + 2) * 2..(h + 1) * (n + 2) * 2];
                    if channel[0] != s_k {
                        return Err(format!("channel {h}: s_k {} instead of {s_k}", channel[0]));
                    }
                    if let Some(j) = channel[4..]
                        .iter()
                        .position(|v| v.is_nan() || v.abs() > 1.0)
                    {
                        return Err(format!(
                            "channel {h}: bin value {j} is {} (unwritten or above 1)",
                            channel[4 + j]
                        ));
                    }
                }
                Ok("s_k and bins".to_string())
            });
        outcomes.record(&what, result);
    }
    outcomes.finish();
}

/// The Monarch pass (f16 operands, so the f16 tolerance) on every size it takes (N = 256 ..
/// 16384: N1 = 1 .. 64 rows per pair, `fftconv_monarch_wide` from 8K; 32K .. 1M of 4M: column
/// passes around 16K-point rows), causal and circular,
/// gated, frequency-sparse, odd batch (a pair with one row), several chunks, rows of 2^-12, 1
/// and 2^12 (and a channel of filter 2^40 / 2^-40), and a length that is no multiple of the
/// vector width. The harness and plans have 16K shared points, so that 8K and 16K are one pass.
#[test]
fn monarch_tensor_core_pass_256_threads() {
    let test = "monarch_tensor_core_pass_256_threads";
    let Some(harness) = harness(MONARCH_POINTS, 256, "-DMONARCH_TC=1") else {
        println!("skipped {test}: no C++ compiler");
        return;
    };
    let mut outcomes = Outcomes::new(test);
    let seed = outcomes.seed;
    let mut rng = StdRng::seed_from_u64(seed);
    let causal = ConvSpec::builder;
    let cases: Vec<MonarchCase> = vec![
        ("n256 causal", causal(4, 3, 128, 128), 1 << 30, 1.0),
        (
            "n512 causal odd batch",
            causal(3, 3, 256, 256),
            1 << 30,
            1.0,
        ),
        (
            "n1k gated",
            causal(2, 3, 512, 512).gated(true),
            1 << 30,
            1.0,
        ),
        (
            "n2k circular",
            causal(2, 2, 2048, 2048).circular(),
            1 << 30,
            1.0,
        ),
        ("n4k causal", causal(2, 3, 2048, 2048), 1 << 30, 1.0),
        (
            "n4k sparse chunked",
            causal(4, 3, 2048, 2048).keep_frequencies(0.25),
            8192,
            1.0,
        ),
        // Frequency sparsity keeping at most half the spectrum runs S2's compact rows (`mt_compact`):
        // N1 = 1 (no column DFTs), 0.5 (every compact column kept), and 0.6 (the full rows with
        // zero filter bins).
        (
            "n256 sparse",
            causal(4, 3, 128, 128).keep_frequencies(0.25),
            1 << 30,
            1.0,
        ),
        (
            "n1k circular gated sparse 0.5",
            causal(3, 2, 1024, 1024)
                .circular()
                .gated(true)
                .keep_frequencies(0.5),
            1 << 30,
            1.0,
        ),
        (
            "n2k sparse 0.6",
            causal(2, 3, 1024, 1024).keep_frequencies(0.6),
            1 << 30,
            1.0,
        ),
        // L and K no multiples of the vector width (the rows' I/O is 16-byte vectors: L must be
        // a multiple of VEC, which the backend checks before it runs the Monarch pass).
        ("n256 ragged L", causal(5, 2, 204, 53), 1 << 30, 1.0),
        (
            "n1k filter 2^40",
            causal(2, 3, 500, 300),
            1 << 30,
            1.099_511_6e12,
        ),
        (
            "n4k filter 2^-40",
            causal(2, 1, 2048, 2048),
            1 << 30,
            9.094_947e-13,
        ),
        // A NaN tap in channel 1: its rows NaN, channels 0 and 2 (sharing its blocks below 4K)
        // exact.
        ("n512 NaN filter", causal(3, 3, 256, 256), 1 << 30, 1.0),
        ("n16k NaN filter", causal(2, 3, 8192, 8192), 1 << 30, 1.0),
        ("n8k causal", causal(2, 3, 4096, 4096), 1 << 30, 1.0),
        ("n16k impulses", causal(2, 2, 8192, 8192), 1 << 30, 1.0),
        ("n1k impulses", causal(2, 2, 512, 512), 1 << 30, 1.0),
        (
            "n8k gated sparse chunked",
            causal(4, 2, 4096, 3000).gated(true).keep_frequencies(0.25),
            16384,
            1.0,
        ),
        (
            "n16k circular odd batch",
            causal(3, 2, 16384, 16384).circular(),
            1 << 30,
            1.0,
        ),
        (
            "n16k sparse odd batch",
            causal(3, 2, 8192, 8192).keep_frequencies(0.125),
            1 << 30,
            1.0,
        ),
        (
            "n16k filter 2^40",
            causal(2, 3, 8192, 8192),
            1 << 30,
            1.099_511_6e12,
        ),
        // From 32K the direct f64 oracle (O(L K) per row) would dominate the time: the long
        // rows are circular ones of power-of-two length (`circular_fft_reference`).
        (
            "n32k causal sparse",
            causal(2, 2, 16384, 16384).keep_frequencies(0.25),
            1 << 30,
            1.0,
        ),
        (
            "n64k gated odd batch",
            causal(3, 1, 32768, 20000).gated(true),
            1 << 30,
            1.0,
        ),
        (
            "n128k circular, rows 2^-20",
            causal(2, 2, 131_072, 131_072).circular(),
            1 << 30,
            1.0,
        ),
        (
            "n256k circular filter 2^-40",
            causal(2, 1, 262_144, 200_000).circular(),
            1 << 30,
            9.094_947e-13,
        ),
        (
            "n64k circular impulses",
            causal(2, 1, 65_536, 65_536).circular(),
            1 << 30,
            1.0,
        ),
        (
            "n128k causal, filter peak at N/4",
            causal(2, 2, 65_536, 65_536),
            1 << 30,
            1.0,
        ),
        (
            "n256k causal, tails 2^12",
            causal(2, 1, 131_072, 131_072),
            1 << 30,
            1.0,
        ),
        // From 512K the column passes run through shared tiles (N_o = 16 x 2, 4 x 16).
        (
            "n512k circular gated",
            causal(2, 1, 524_288, 300_000).circular().gated(true),
            1 << 30,
            1.0,
        ),
        (
            "n1m circular, rows 2^-20",
            causal(2, 1, 1 << 20, 600_000).circular(),
            1 << 30,
            1.0,
        ),
        (
            "n1m circular impulses",
            causal(2, 1, 1 << 20, 1 << 20).circular(),
            1 << 30,
            1.0,
        ),
    ];
    monarch_forward_cases(
        &harness,
        &mut outcomes,
        &mut rng,
        cases,
        ForwardPath::Monarch,
    );
    outcomes.finish();
}

/// `fftconv_monarch_prefetch` (N = 256 .. 4096): a block runs several of `fftconv_monarch`'s
/// tiles, the next one's rows staged by cp.async while it transforms the current one (the
/// harness writes a copy to shared memory only at the thread's wait, and fails a block that
/// ends with copies it never waited for). Grids of 1 to 3 blocks (one per resident slot), each
/// block running every grid-th tile: up to 8 tiles a block, counts differing between blocks,
/// the launch's last tile partial; causal and circular, gated,
/// frequency-sparse, odd batch, chunked, a ragged L (its rows' last vectors not staged), a NaN
/// filter (also where a block's later tiles reuse its tile's flags), a filter of 2^40, rows
/// 2^-20, and channels loud and quiet by twos (row maxima left from the tile two before, in the
/// same set, would flush the quiet ones).
#[test]
fn monarch_prefetch_256_threads() {
    let test = "monarch_prefetch_256_threads";
    let Some(harness) = harness(MONARCH_POINTS, 256, "-DMONARCH_TC=1") else {
        println!("skipped {test}: no C++ compiler");
        return;
    };
    let mut outcomes = Outcomes::new(test);
    let mut rng = StdRng::seed_from_u64(outcomes.seed);
    let causal = ConvSpec::builder;
    // Per number of resident blocks the grid is sized for, its cases.
    let groups: [(u32, Vec<MonarchCase>); 3] = [
        (
            1,
            vec![
                // 24 pairs: tiles of 16 and 8 pairs in one block.
                ("n256 causal", causal(8, 6, 128, 128), 1 << 30, 1.0),
                ("n1k ragged L", causal(4, 3, 1020, 333), 1 << 30, 1.0),
                // A pair per tile and a tile per channel: 8 tiles in one block, loud and quiet
                // by twos (each tile's row maxima in the set the tile two before used).
                (
                    "n4k quiet channel pairs",
                    causal(2, 8, 2048, 2048),
                    1 << 30,
                    1.0,
                ),
                // Channel 1's NaN taps: its tile's outputs NaN, not those of tiles 3 and 5 (the
                // same set of flags).
                ("n4k NaN filter", causal(2, 6, 2048, 2048), 1 << 30, 1.0),
            ],
        ),
        (
            2,
            vec![
                (
                    "n256 gated sparse odd batch",
                    causal(7, 5, 128, 100).gated(true).keep_frequencies(0.25),
                    1 << 30,
                    1.0,
                ),
                // 9 pairs: tiles of 4, 4 and 1 pairs, the first and the last in block 0.
                ("n1k causal odd batch", causal(5, 3, 512, 512), 1 << 30, 1.0),
                (
                    "n1k circular gated",
                    causal(4, 5, 1024, 1024).circular().gated(true),
                    1 << 30,
                    1.099_511_6e12,
                ),
                // A pair per tile: 7 tiles, 4 and 3 over two blocks (every other tile each).
                (
                    "n4k circular",
                    causal(2, 7, 4096, 4096).circular(),
                    1 << 30,
                    1.0,
                ),
                ("n512 NaN filter", causal(6, 3, 256, 256), 1 << 30, 1.0),
            ],
        ),
        (
            3,
            vec![
                // 15 pairs: tiles of 4, 4, 4 and 3 over three blocks, block 0 the first and the
                // partial last.
                ("n1k odd tiles", causal(10, 3, 512, 512), 1 << 30, 1.0),
                (
                    "n4k causal sparse chunked",
                    causal(6, 3, 2048, 2048).keep_frequencies(0.25),
                    8192,
                    1.0,
                ),
                (
                    "n2k causal, rows 2^-20",
                    causal(3, 5, 2048, 700),
                    1 << 30,
                    1.0,
                ),
            ],
        ),
    ];
    for (slots, cases) in groups {
        monarch_forward_cases(
            &harness,
            &mut outcomes,
            &mut rng,
            cases,
            ForwardPath::MonarchPrefetch(slots),
        );
    }
    outcomes.finish();
}

/// A Monarch forward case: label, problem, chunk elements, filter factor.
type MonarchCase = (&'static str, ConvSpecBuilder, usize, f32);

/// Runs the Monarch forward `cases` along `path`: random inputs (impulse rows where the label
/// says "impulses", odd batch rows of 2^-20 where it says "rows 2^-20"), each case recorded.
fn monarch_forward_cases(
    harness: &Path,
    outcomes: &mut Outcomes,
    rng: &mut StdRng,
    cases: Vec<MonarchCase>,
    path: ForwardPath,
) {
    let test = outcomes.test.clone();
    let test = test.as_str();
    for (i, (label, builder, chunk_elems, k_scale)) in cases.into_iter().enumerate() {
        let spec = builder.build().expect("spec");
        let prep = Prepared::new(
            &spec,
            MONARCH_POINTS,
            chunk_elems,
            monarch_tolerance(spec.dtype()),
        );
        let mut inputs = Inputs::new(&spec, rng);
        for v in &mut inputs.k {
            *v *= k_scale;
        }
        if label.contains("impulses") {
            // Flat, small spectra (no coherent sums to keep the f16 planes high in their range).
            keep_impulses(&mut inputs.u, &spec, 8, 0);
        }
        if label.contains("rows 2^-20") {
            // Each row must keep its own precision (checked per row) although the column DFTs
            // of the long sizes mix a pair's two rows.
            scale_odd_batch_rows(&mut inputs.u, &spec, 9.536_743e-7);
        }
        if label.contains("quiet channel pairs") {
            // Channels 2, 3, 6, 7, ... at 2^-40 of the others: a tile that kept a louder
            // one's row scales would flush a quiet row's values to f16 subnormals or zero.
            let (l, h) = (spec.length(), spec.channels());
            for (r, row) in inputs.u.chunks_mut(l).enumerate() {
                if (r % h / 2) % 2 == 1 {
                    row.iter_mut().for_each(|v| *v *= 9.094_947e-13);
                }
            }
        }
        if label.contains("tails 2^12") {
            // The rows' scales must come from every slice, not only the first.
            boost_row_tails(&mut inputs.u, &spec, 4096.0);
        }
        if label.contains("filter peak at N/4") {
            // A smooth filter modulated to a quarter of the sampling rate: its spectrum peaks
            // far from the first 16K bins (the filter's scale must come from every slice).
            for (j, v) in inputs.k.iter_mut().enumerate() {
                *v = quarter_rate_tap(j % spec.filter_len());
            }
        }
        if label.contains("NaN filter") {
            inputs.k[spec.filter_len() + 4] = f32::NAN;
        }
        let what = monarch_case_line(test, label, &spec, &prep);
        outcomes.record(
            &what,
            forward(harness, &prep, &inputs, &format!("{test}-{i}"), path),
        );
    }
}

/// The Monarch pass's cluster kernels (sm_90: `fftconv_monarch_cluster2/4/8`, one launch for
/// N = 32K .. 128K, the rows exchanged through distributed shared memory): the harness runs a
/// cluster's blocks side by side as fibers, each with its own shared memory, `mapa` as the same
/// offset in another block's, and the cluster barrier across all of them. Causal, circular,
/// gated, frequency-sparse, odd batch, several chunks, impulses, a filter of 2^-40 and rows
/// 2^20 apart.
#[test]
fn monarch_cluster_256_threads() {
    let test = "monarch_cluster_256_threads";
    let Some(harness) = harness(MONARCH_POINTS, 256, "-DMONARCH_TC=1") else {
        println!("skipped {test}: no C++ compiler");
        return;
    };
    let mut outcomes = Outcomes::new(test);
    let mut rng = StdRng::seed_from_u64(outcomes.seed);
    let causal = ConvSpec::builder;
    let cases: Vec<MonarchCase> = vec![
        (
            "n32k causal sparse chunked",
            causal(4, 1, 16384, 9000).keep_frequencies(0.25),
            2 * 16384,
            1.0,
        ),
        (
            "n32k circular filter 2^-40, rows 2^-20",
            causal(2, 2, 32768, 32768).circular(),
            1 << 30,
            9.094_947e-13,
        ),
        (
            "n64k gated odd batch",
            causal(3, 1, 32768, 20000).gated(true),
            1 << 30,
            1.0,
        ),
        (
            "n64k circular impulses",
            causal(2, 1, 65_536, 65_536).circular(),
            1 << 30,
            1.0,
        ),
        (
            "n128k circular gated, rows 2^-20",
            causal(2, 1, 131_072, 131_072).circular().gated(true),
            1 << 30,
            1.0,
        ),
    ];
    monarch_forward_cases(
        &harness,
        &mut outcomes,
        &mut rng,
        cases,
        ForwardPath::MonarchCluster,
    );
    outcomes.finish();
}

/// The Monarch pass on partial convolutions (K << L: several overlap-save blocks per row, each
/// a multiple of monarch-core's `BLOCK_ALIGN` elements, so its rows move as 16-byte vectors):
/// the segments of a channel pair up across rows and blocks. Fused sizes, then the long path
/// (N = 64K, four blocks a row) with and without clusters; causal and circular, gated,
/// frequency-sparse, K no multiple of the vector width.
#[test]
fn monarch_partial_256_threads() {
    let test = "monarch_partial_256_threads";
    let Some(harness) = harness(MONARCH_POINTS, 256, "-DMONARCH_TC=1") else {
        println!("skipped {test}: no C++ compiler");
        return;
    };
    let mut outcomes = Outcomes::new(test);
    let mut rng = StdRng::seed_from_u64(outcomes.seed);
    let causal = ConvSpec::builder;
    let cases: Vec<MonarchCase> = vec![
        ("n512 partial", causal(3, 2, 3000, 61), 1 << 30, 1.0),
        (
            "n2k partial gated",
            causal(2, 3, 5000, 250).gated(true),
            1 << 30,
            1.0,
        ),
        (
            "n4k partial sparse chunked",
            causal(2, 2, 20000, 1000).keep_frequencies(0.25),
            40000,
            1.0,
        ),
        (
            "n8k partial circular",
            causal(3, 1, 30000, 3001).circular(),
            1 << 30,
            1.0,
        ),
    ];
    monarch_forward_cases(
        &harness,
        &mut outcomes,
        &mut rng,
        cases,
        ForwardPath::Monarch,
    );
    let long = || -> Vec<MonarchCase> {
        vec![(
            "n64k partial gated, rows 2^-20",
            causal(2, 1, 200_000, 9000).gated(true),
            1 << 30,
            1.0,
        )]
    };
    monarch_forward_cases(
        &harness,
        &mut outcomes,
        &mut rng,
        long(),
        ForwardPath::Monarch,
    );
    monarch_forward_cases(
        &harness,
        &mut outcomes,
        &mut rng,
        long(),
        ForwardPath::MonarchCluster,
    );
    outcomes.finish();
}

/// The split backward at 256 .. 16K (ungated, causal or circular with L = N): du from
/// fftconv_monarch (8K, 16K fftconv_monarch_wide) with conj(K), the taps from
/// fftconv_monarch_backward_taps (8K, 16K `_taps_wide`), with one group per channel (all its pairs in
/// one block: the running sum and its rescaling), with one pair per group, and below 4K with
/// several pairs side by side.
#[test]
fn monarch_split_backward() {
    let test = "monarch_split_backward";
    let Some(harness) = harness(MONARCH_POINTS, 256, "-DMONARCH_TC=1") else {
        println!("skipped {test}: no C++ compiler");
        return;
    };
    let mut outcomes = Outcomes::new(test);
    let mut rng = StdRng::seed_from_u64(outcomes.seed);
    let causal = ConvSpec::builder;
    let cases: Vec<(&str, ConvSpecBuilder, usize, u32)> = vec![
        ("n4k, one group", causal(6, 2, 2048, 2048), 1 << 30, 1),
        (
            "n4k, a pair per group",
            causal(4, 3, 2048, 2048),
            1 << 30,
            1 << 20,
        ),
        (
            "n4k odd batch ragged K, one group",
            causal(5, 2, 2048, 1500),
            1 << 30,
            1,
        ),
        (
            "n4k odd batch, batches 0, 1, 4 at 2^-16, one group",
            causal(5, 2, 2048, 2048),
            1 << 30,
            1,
        ),
        (
            "n4k chunked, two groups",
            causal(8, 2, 2048, 2048),
            16384,
            4,
        ),
        (
            "n4k circular odd batch, one group",
            causal(3, 2, 4096, 4096).circular(),
            1 << 30,
            1,
        ),
        (
            "n4k sparse, one group",
            causal(4, 2, 2048, 2048).keep_frequencies(0.25),
            1 << 30,
            1,
        ),
        (
            "n4k NaN filter, one group",
            causal(4, 2, 2048, 2048),
            1 << 30,
            1,
        ),
        // Below 4K: 16 / N1 pairs side by side per step, each slot its own reference, the
        // slots added at the end; a group's last step with slots past the group.
        (
            "n256, one group of 5 pairs",
            causal(9, 2, 128, 128),
            1 << 30,
            1,
        ),
        (
            "n256 ragged K, two groups",
            causal(40, 2, 128, 99),
            1 << 30,
            4,
        ),
        (
            "n512 odd batch ragged K, batches 0, 1, 4 at 2^-16, one group",
            causal(7, 2, 256, 200),
            1 << 30,
            1,
        ),
        (
            "n1k circular odd batch, one group",
            causal(5, 2, 1024, 1024).circular(),
            1 << 30,
            1,
        ),
        (
            "n2k sparse, two pairs per group",
            causal(6, 2, 1024, 1024).keep_frequencies(0.25),
            1 << 30,
            1 << 20,
        ),
        (
            "n2k chunked, two groups",
            causal(12, 2, 1024, 1024),
            8192,
            4,
        ),
        (
            "n1k, dy of batches 0, 1 zero, one group",
            causal(5, 2, 512, 512),
            1 << 30,
            1,
        ),
        // 8K: fftconv_monarch_wide for du, fftconv_monarch_backward_taps_wide (512 threads, one
        // pair per step, the sum of 32 rows).
        (
            "n8k odd batch, batches 0, 1, 4 at 2^-16, one group",
            causal(5, 1, 4096, 4096),
            1 << 30,
            1,
        ),
        (
            "n8k sparse ragged K, a pair per group",
            causal(3, 2, 4096, 3001).keep_frequencies(0.25),
            1 << 30,
            1 << 20,
        ),
        (
            "n8k circular, one group",
            causal(4, 1, 8192, 8192).circular(),
            1 << 30,
            1,
        ),
        (
            "n8k chunked, dy of batches 0, 1 zero, two groups",
            causal(6, 2, 4096, 4096),
            3 * 8192,
            2,
        ),
        (
            "n8k NaN filter, one group",
            causal(4, 2, 4096, 4096),
            1 << 30,
            1,
        ),
        // 16K: the sum's last 17 rows in the intermediate buffer (one slice per block).
        (
            "n16k odd batch, batches 0, 1, 4 at 2^-16, one group",
            causal(5, 1, 8192, 8192),
            1 << 30,
            1,
        ),
        (
            "n16k sparse ragged K, two groups",
            causal(4, 2, 8192, 5000).keep_frequencies(0.25),
            1 << 30,
            4,
        ),
        (
            "n16k circular, one group",
            causal(3, 1, 16384, 16384).circular(),
            1 << 30,
            1,
        ),
    ];
    for (i, (label, builder, chunk_elems, target_blocks)) in cases.into_iter().enumerate() {
        let spec = builder.build().expect("spec");
        let prep = Prepared::new(&spec, MONARCH_POINTS, chunk_elems, TENSOR_CORE_TOLERANCE);
        let mut inputs = Inputs::new(&spec, &mut rng);
        if label.contains("batches 0, 1, 4 at 2^-16") {
            // Pairs of very different loudness in one group: quiet (batches 0, 1), loud (2, 3),
            // quiet (4). The sum's reference moves to the loud pair and rescales what it holds;
            // the last pair enters with its weight 2^-32.
            let run = spec.channels() * spec.length();
            for b in [0, 1, 4] {
                let rows = b * run..(b + 1) * run;
                for v in inputs.u[rows.clone()]
                    .iter_mut()
                    .chain(&mut inputs.dy[rows])
                {
                    *v *= 1.525_878_9e-5;
                }
            }
        }
        if label.contains("NaN filter") {
            inputs.k[spec.filter_len() + 4] = f32::NAN;
        }
        if label.contains("dy of batches 0, 1 zero") {
            // A pair with zero d (no product of scales: T skipped) beside pairs with one.
            let run = spec.channels() * spec.length();
            inputs.dy[..2 * run].fill(0.0);
        }
        let what = monarch_case_line(test, label, &spec, &prep);
        outcomes.record(
            &what,
            backward(
                &harness,
                &prep,
                &inputs,
                &format!("{test}-{i}"),
                // The prefetching kernels in every other case up to 4K (du: one resident block,
                // all of a chunk's tiles in one block).
                BackwardPath::MonarchSplit(
                    target_blocks,
                    (i % 2 == 0 && spec.geometry().n() <= 4096).then_some(1),
                ),
            ),
        );
    }
    outcomes.finish();
}

/// The Monarch backward (f16 operands: the f16 tolerance) on N = 256 .. 1M: causal and
/// circular, gated, frequency-sparse, odd batch, several chunks, channels of 2^-12 .. 2^12, a
/// pair whose rows are 2^16 apart, dy much smaller than u.
#[test]
fn monarch_backward_256_threads() {
    let test = "monarch_backward_256_threads";
    let Some(harness) = harness(MONARCH_POINTS, 256, "-DMONARCH_TC=1") else {
        println!("skipped {test}: no C++ compiler");
        return;
    };
    let mut outcomes = Outcomes::new(test);
    let mut rng = StdRng::seed_from_u64(outcomes.seed);
    let causal = ConvSpec::builder;
    let cases: Vec<(&str, ConvSpecBuilder, usize)> = vec![
        ("n256 causal", causal(4, 3, 128, 128), 1 << 30),
        (
            "n512 gated odd batch",
            causal(3, 2, 256, 200).gated(true),
            1 << 30,
        ),
        ("n1k circular", causal(2, 3, 1024, 1024).circular(), 1 << 30),
        (
            "n2k circular gated sparse",
            causal(2, 2, 2048, 2048)
                .circular()
                .gated(true)
                .keep_frequencies(0.25),
            1 << 30,
        ),
        (
            "n4k gated chunked, rows 2^-16",
            causal(4, 2, 2048, 2048).gated(true),
            8192,
        ),
        (
            "n4k gated, dy 2^-20",
            causal(2, 1, 2048, 1500).gated(true),
            1 << 30,
        ),
        ("n256 ragged K", causal(3, 2, 204, 53), 1 << 30),
        // 8K and 16K: fftconv_monarch_backward_wide (radix-2 and radix-4 row steps).
        (
            "n8k circular gated odd batch",
            causal(3, 1, 8192, 8192).circular().gated(true),
            1 << 30,
        ),
        (
            "n16k sparse, rows 2^-16",
            causal(2, 2, 8192, 8192).keep_frequencies(0.25),
            1 << 30,
        ),
        ("n16k gated", causal(2, 1, 8192, 6000).gated(true), 1 << 30),
        // Few nonzero inputs: the spectra are flat and small, the taps' product far below its
        // worst-case bound (a fixed scale for it left ~5 bits at 16K).
        ("n16k impulses", causal(2, 1, 8192, 8192), 1 << 30),
        ("n1k impulses", causal(2, 2, 512, 512), 1 << 30),
        // Below 4K a block holds several pairs: channels 0 and 1 share one.
        ("n512 NaN filter", causal(2, 2, 256, 256), 1 << 30),
        (
            "n2k gated NaN filter",
            causal(3, 2, 1024, 1024).gated(true),
            1 << 30,
        ),
        (
            "n64k gated NaN filter",
            causal(2, 2, 32768, 32768).gated(true),
            1 << 30,
        ),
        // From 32K: the column passes around 16K-point rows.
        ("n32k causal", causal(2, 2, 16384, 16384), 1 << 30),
        (
            "n64k gated odd batch, rows 2^-16",
            causal(3, 1, 32768, 20000).gated(true),
            1 << 30,
        ),
        (
            "n32k sparse",
            causal(2, 1, 16384, 16384).keep_frequencies(0.25),
            1 << 30,
        ),
        (
            "n128k circular gated",
            causal(2, 1, 131_072, 131_072).circular().gated(true),
            1 << 30,
        ),
        (
            "n256k circular impulses",
            causal(2, 1, 262_144, 262_144).circular(),
            1 << 30,
        ),
        (
            "n256k circular",
            causal(2, 1, 262_144, 262_144).circular(),
            1 << 30,
        ),
        (
            "n256k circular gated, tails 2^12",
            causal(2, 1, 262_144, 262_144).circular().gated(true),
            1 << 30,
        ),
        // From 512K the column passes run through shared tiles (N_o = 16 x 2, 4 x 16).
        (
            "n512k circular gated, rows 2^-16",
            causal(2, 1, 524_288, 300_000).circular().gated(true),
            1 << 30,
        ),
        // Sparse rows at 1M: G's and P's products need their own scales (du 2.1e-3 without).
        (
            "n1m circular gated impulses",
            causal(2, 1, 1 << 20, 1 << 20).circular().gated(true),
            1 << 30,
        ),
    ];
    for (i, (label, builder, chunk_elems)) in cases.into_iter().enumerate() {
        let spec = builder.build().expect("spec");
        let prep = Prepared::new(&spec, MONARCH_POINTS, chunk_elems, TENSOR_CORE_TOLERANCE);
        let mut inputs = Inputs::new(&spec, &mut rng);
        if label.contains("rows 2^-16") {
            // u and dy: each row's du, dpre and dpost keep their precision (checked per row).
            scale_odd_batch_rows(&mut inputs.u, &spec, 1.525_878_9e-5);
            scale_odd_batch_rows(&mut inputs.dy, &spec, 1.525_878_9e-5);
        }
        if label.contains("dy 2^-20") {
            inputs.dy.iter_mut().for_each(|v| *v *= 9.536_743e-7);
        }
        if label.contains("tails 2^12") {
            boost_row_tails(&mut inputs.u, &spec, 4096.0);
            boost_row_tails(&mut inputs.dy, &spec, 4096.0);
        }
        if label.contains("impulses") {
            keep_impulses(&mut inputs.u, &spec, 16, 0);
            keep_impulses(&mut inputs.dy, &spec, 16, 12_345);
        }
        if label.contains("NaN filter") {
            // Channel 1's du NaN throughout, dk finite and exact (T has its own transform).
            inputs.k[spec.filter_len() + 4] = f32::NAN;
        }
        let what = monarch_case_line(test, label, &spec, &prep);
        outcomes.record(
            &what,
            backward(
                &harness,
                &prep,
                &inputs,
                &format!("{test}-{i}"),
                BackwardPath::Monarch,
            ),
        );
    }
    outcomes.finish();
}

// ---- 16-bit I/O (`-DIO_F16`, `-DIO_BF16`): the layouts the GPU benchmarks run --------------------

/// The relative L2 error allowed with `dtype` I/O through the Monarch kernels (f16 operands):
/// the f16 tolerance, and for bf16 outputs their own rounding on top (at most 2^-9 relative,
/// 1.8-2.1e-3 measured in all; outputs truncated instead of rounded give 3.3e-3 and more).
fn monarch_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::Bf16 => 3e-3,
        _ => TENSOR_CORE_TOLERANCE,
    }
}

/// The Monarch kernels with 16-bit I/O (`dtype`; the harness built for it): 16-byte vectors of 8
/// elements, the prefetch's 4 staging slots per thread, the paired conversions' fallback. The
/// forward through `fftconv_monarch` (256 .. 4K), `_wide` (8K, 16K) and the column passes (32K,
/// 64K, and through shared tiles at 512K); `fftconv_monarch_prefetch` with grids for 1 to 3
/// resident blocks; the split backward (with and without the prefetching kernels; 8K, 16K) and
/// the Monarch backward kernels (gated); partial problems (overlap-save blocks). Ragged L (a
/// multiple of the 8-element vector only), ragged K, odd batch, chunked, sparse, NaN filters.
/// Magnitudes within f16's range (`F16_CHANNEL_SCALES`); with bf16 (f32's exponent range) also
/// channels 2^-40 apart, rows 2^-20 and a filter of 2^40.
fn monarch_16bit_io(test: &str, dtype: DType, defines: &'static str) {
    let Some(harness) = harness(MONARCH_POINTS, 256, defines) else {
        println!("skipped {test}: no C++ compiler");
        return;
    };
    let mut outcomes = Outcomes::new(test);
    let mut rng = StdRng::seed_from_u64(outcomes.seed);
    let causal = |b, h, l, k| ConvSpec::builder(b, h, l, k).dtype(dtype);
    let wide_range = dtype == DType::Bf16;
    let mut forward_cases: Vec<MonarchCase> = vec![
        ("n256 causal", causal(4, 3, 128, 128), 1 << 30, 1.0),
        (
            "n256 gated ragged L",
            causal(3, 3, 200, 57).gated(true),
            1 << 30,
            1.0,
        ),
        (
            "n1k circular gated",
            causal(2, 3, 1024, 1024).circular().gated(true),
            1 << 30,
            1.0,
        ),
        (
            "n2k sparse 0.6",
            causal(2, 3, 1024, 1024).keep_frequencies(0.6),
            1 << 30,
            1.0,
        ),
        (
            "n4k sparse chunked",
            causal(4, 3, 2048, 2048).keep_frequencies(0.25),
            8192,
            1.0,
        ),
        ("n4k NaN filter", causal(2, 3, 2048, 2048), 1 << 30, 1.0),
        (
            "n8k gated ragged L",
            causal(2, 2, 4040, 3000).gated(true),
            1 << 30,
            1.0,
        ),
        (
            "n16k circular odd batch",
            causal(3, 2, 16384, 16384).circular(),
            1 << 30,
            1.0,
        ),
        (
            "n32k circular impulses",
            causal(2, 2, 32768, 32768).circular(),
            1 << 30,
            1.0,
        ),
        (
            "n64k circular gated",
            causal(2, 1, 65536, 65536).circular().gated(true),
            1 << 30,
            1.0,
        ),
        (
            "n512k circular",
            causal(2, 1, 524_288, 524_288).circular(),
            1 << 30,
            1.0,
        ),
        // Partial (K << L): overlap-save blocks of BLOCK_ALIGN (8) elements, whole vectors.
        ("n512 partial", causal(3, 2, 3000, 61), 1 << 30, 1.0),
        (
            "n2k partial gated sparse",
            causal(2, 3, 5000, 250).gated(true).keep_frequencies(0.5),
            1 << 30,
            1.0,
        ),
        (
            "n64k partial gated",
            causal(2, 1, 200_000, 9000).gated(true),
            1 << 30,
            1.0,
        ),
    ];
    if wide_range {
        forward_cases.extend([
            (
                "n1k filter 2^40",
                causal(2, 3, 504, 304),
                1 << 30,
                1.099_511_6e12,
            ),
            (
                "n128k circular, rows 2^-20",
                causal(2, 2, 131_072, 131_072).circular(),
                1 << 30,
                1.0,
            ),
        ]);
    }
    monarch_forward_cases(
        &harness,
        &mut outcomes,
        &mut rng,
        forward_cases,
        ForwardPath::Monarch,
    );
    let mut prefetch_groups: Vec<(u32, Vec<MonarchCase>)> = vec![
        (
            1,
            vec![
                ("n256 causal", causal(8, 6, 128, 128), 1 << 30, 1.0),
                ("n2k ragged L", causal(4, 3, 1016, 1000), 1 << 30, 1.0),
                ("n4k NaN filter", causal(2, 6, 2048, 2048), 1 << 30, 1.0),
            ],
        ),
        (
            2,
            vec![
                (
                    "n256 gated sparse odd batch",
                    causal(7, 5, 128, 100).gated(true).keep_frequencies(0.25),
                    1 << 30,
                    1.0,
                ),
                (
                    "n1k circular gated",
                    causal(4, 5, 1024, 1024).circular().gated(true),
                    1 << 30,
                    1.0,
                ),
                (
                    "n4k circular",
                    causal(2, 7, 4096, 4096).circular(),
                    1 << 30,
                    1.0,
                ),
            ],
        ),
        (
            3,
            vec![(
                "n4k causal sparse chunked",
                causal(6, 3, 2048, 2048).keep_frequencies(0.25),
                8192,
                1.0,
            )],
        ),
    ];
    if wide_range {
        prefetch_groups[0].1.push((
            "n4k quiet channel pairs",
            causal(2, 8, 2048, 2048),
            1 << 30,
            1.0,
        ));
        prefetch_groups[2].1.push((
            "n2k causal two blocks, rows 2^-20",
            causal(3, 5, 2048, 704),
            1 << 30,
            1.0,
        ));
    }
    for (slots, cases) in prefetch_groups {
        monarch_forward_cases(
            &harness,
            &mut outcomes,
            &mut rng,
            cases,
            ForwardPath::MonarchPrefetch(slots),
        );
    }
    // The backward: label, problem, chunk elements, path.
    let split = BackwardPath::MonarchSplit;
    let backward_cases: Vec<(&str, ConvSpecBuilder, usize, BackwardPath)> = vec![
        (
            "split n4k, one group, prefetched",
            causal(6, 2, 2048, 2048),
            1 << 30,
            split(1, Some(1)),
        ),
        (
            "split n4k odd batch ragged K, one group",
            causal(5, 2, 2048, 1500),
            1 << 30,
            split(1, None),
        ),
        (
            "split n256 ragged K, two groups, prefetched",
            causal(40, 2, 128, 99),
            1 << 30,
            split(4, Some(2)),
        ),
        (
            "split n2k odd batch ragged L, one group",
            causal(5, 2, 1016, 700),
            1 << 30,
            split(1, None),
        ),
        (
            "split n2k chunked NaN filter, two groups, prefetched",
            causal(12, 2, 1024, 1024),
            8192,
            split(4, Some(1)),
        ),
        (
            "split n8k sparse ragged K, a pair per group",
            causal(3, 2, 4096, 3001).keep_frequencies(0.25),
            1 << 30,
            split(1 << 20, None),
        ),
        (
            "split n16k circular, one group",
            causal(3, 1, 16384, 16384).circular(),
            1 << 30,
            split(1, None),
        ),
        (
            "n512 gated odd batch ragged L",
            causal(3, 2, 248, 200).gated(true),
            1 << 30,
            BackwardPath::Monarch,
        ),
        (
            "n4k circular gated sparse",
            causal(2, 2, 4096, 4096)
                .circular()
                .gated(true)
                .keep_frequencies(0.25),
            1 << 30,
            BackwardPath::Monarch,
        ),
        (
            "n8k gated chunked NaN filter",
            causal(4, 2, 4096, 3000).gated(true),
            2 * 4096,
            BackwardPath::Monarch,
        ),
        (
            "n16k gated",
            causal(2, 1, 8192, 6000).gated(true),
            1 << 30,
            BackwardPath::Monarch,
        ),
        (
            "n64k circular gated",
            causal(2, 1, 65536, 65536).circular().gated(true),
            1 << 30,
            BackwardPath::Monarch,
        ),
    ];
    for (i, (label, builder, chunk_elems, path)) in backward_cases.into_iter().enumerate() {
        let spec = builder.build().expect("spec");
        let prep = Prepared::new(&spec, MONARCH_POINTS, chunk_elems, monarch_tolerance(dtype));
        let mut inputs = Inputs::new(&spec, &mut rng);
        if label.contains("NaN filter") {
            inputs.k[spec.filter_len() + 4] = f32::NAN;
        }
        let what = monarch_case_line(test, label, &spec, &prep);
        outcomes.record(
            &what,
            backward(
                &harness,
                &prep,
                &inputs,
                &format!("{test}-backward-{i}"),
                path,
            ),
        );
    }
    outcomes.finish();
}

#[test]
fn monarch_f16_io_256_threads() {
    monarch_16bit_io(
        "monarch_f16_io_256_threads",
        DType::F16,
        "-DMONARCH_TC=1 -DIO_F16",
    );
}

#[test]
fn monarch_bf16_io_256_threads() {
    monarch_16bit_io(
        "monarch_bf16_io_256_threads",
        DType::Bf16,
        "-DMONARCH_TC=1 -DIO_BF16",
    );
}
