//! `cargo xtask bench`: times the forward convolution on every available backend and the
//! baseline over a size sweep, checks each result against the f64 oracle, reports.
//!
//! The baseline is [`backend_cpu::RealFftBaseline`] (the straightforward realfft convolution) on
//! the same rayon pool, with the same dtype I/O; for gated problems it runs as a user would write
//! it: a pre-gate pass, the baseline, a post-gate pass (each pass threaded over the same number of
//! workers). Ratios of every backend are against that CPU baseline, except the CUDA backend's:
//! with the `cuda` feature each ungated case also times `cufft` (cuFFT R2C, product with the
//! precomputed spectrum, C2R, f32, on resident tensors: `backend_cuda::CufftBaseline`) and the
//! `cuda` rows' ratio is against it.
//!
//! The baseline and the CPU backend's forward rows of a case are timed round-robin (one
//! repetition of each in turn), so a shared host's slow drift moves both columns alike: on a
//! noisy 2-core box the ratio's spread fell from 0.9-1.8x to a few percent. GPU rows are timed
//! alone, so the device is never idle between their repetitions.
//!
//! `--keep-frequencies` runs every backend row once per kept fraction (a frequency-sparse
//! problem built with `ConvSpec::builder(..).keep_frequencies(F)`, same inputs); the baselines
//! never skip bins and run once per case, dense, so a sparse row's ratio includes the skip's
//! speed-up, and [`report::fill_ratios`] also sets the speed-up over the same backend's dense
//! row. Sparse rows are checked against the band-limited oracle ([`oracle`]).

use crate::args::{anchor_shape, BenchOptions, ShapeRule, DEFAULT_REPS, REDUCED_REPS};
use crate::oracle::{self, RowCheck};
use crate::report::{self, Record};
use backend_cpu::RealFftBaseline;
use conv::{
    bf16, f16, BackendKind, ConvError, ConvSpec, Convolution, DType, DeviceTensor, Element,
    FilterSpectrum,
};
use rand::{Rng, SeedableRng};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Widest channel count of the swept shapes.
const MAX_CHANNELS: usize = 768;
/// A warm-up longer than this drops the default repetitions to [`REDUCED_REPS`].
const SLOW_WARMUP: Duration = Duration::from_secs(1);
/// Bytes each buffer of the copy-bandwidth measurement holds (the memory floor's denominator).
const FLOOR_COPY_BYTES: usize = 256 << 20;

/// Relative-L2 tolerance of a dtype's results.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::Bf16 => 1.5e-2,
    }
}

/// Smallest batch of the swept shapes (when there are that many rows): long sizes shrink `H`,
/// not `B`, as FlashFFTConv's own benchmark does (`../shared/ANCHORS.md`: B = 8 from 64K on).
const MIN_BATCH: usize = 8;

/// Row length `L` of the swept problems of FFT size `n`: `N/2` causal, `N` circular.
pub fn row_len(n: usize, circular: bool) -> usize {
    if circular {
        n
    } else {
        n / 2
    }
}

/// `B, H` for rows of length `l` so one call moves about `mb` MB: `H <= 768`, `B >= 8` where
/// the budget has 8 rows.
pub fn shape(l: usize, dtype: DType, gated: bool, mb: f64) -> (usize, usize) {
    let streams = if gated { 4 } else { 2 };
    let per_row = (streams * l * dtype.size_bytes()) as f64;
    let rows = ((mb * 1e6) / per_row).round().max(1.0) as usize;
    let h = (rows / rows.min(MIN_BATCH)).clamp(1, MAX_CHANNELS);
    (rows / h, h)
}

/// One kept fraction's problem and its oracle on the sampled rows, or why it could not be built.
type Problem = Result<(ConvSpec, Vec<RowCheck>), String>;

/// Prefix of an error message that says the backend does not implement the operation for the
/// problem (skipped with the reason, not a failure).
const UNSUPPORTED: &str = "unsupported: ";

/// A backend error as text, [`UNSUPPORTED`]-prefixed when the backend does not implement it.
fn message(e: ConvError) -> String {
    match e {
        ConvError::Unsupported { .. } => format!("{UNSUPPORTED}{e}"),
        e => e.to_string(),
    }
}

struct Sweep<'a> {
    opts: &'a BenchOptions,
    backends: Vec<BackendKind>,
    step: usize,
    steps: usize,
    records: Vec<Record>,
    /// Rows not run, with the reason (printed after the table).
    skipped: Vec<String>,
}

pub fn run(opts: &BenchOptions) -> ExitCode {
    let statuses = conv::backend_statuses();
    let mut backends = Vec::new();
    let mut lines = Vec::new();
    for &kind in &opts.backends {
        let status = statuses.iter().find(|s| s.kind == kind);
        match status.map(|s| &s.available) {
            Some(Ok(desc)) => {
                backends.push(kind);
                lines.push(format!("backend {kind}: {desc}"));
            }
            Some(Err(reason)) => {
                eprintln!("skipping backend {kind}: {reason}");
                lines.push(format!("backend {kind}: skipped ({reason})"));
            }
            None => lines.push(format!("backend {kind}: skipped (unknown)")),
        }
    }
    println!("{}", report::machine_header());
    for line in &lines {
        println!("{line}");
    }
    // The memory floor of each backend: its measured copy bandwidth (the baseline runs on the CPU).
    let mut bandwidth: Vec<(String, f64)> = Vec::new();
    for kind in std::iter::once(BackendKind::Cpu).chain(backends.iter().copied()) {
        if bandwidth.iter().any(|(name, _)| name == kind.name()) {
            continue;
        }
        match kind.copy_bandwidth(FLOOR_COPY_BYTES) {
            Ok(bw) => {
                println!("copy bandwidth {kind}: {:.1} GB/s (read + write)", bw / 1e9);
                bandwidth.push((kind.name().to_string(), bw));
            }
            Err(e) => println!("copy bandwidth {kind}: not measured ({e})"),
        }
    }
    println!(
        "baseline: realfft (RealFftBaseline, CPU, same threads and dtype I/O{})",
        if opts.gated {
            ", gates as separate passes"
        } else {
            "; cuda rows: vs cufft (cuFFT R2C -> product -> C2R, f32) in the same run"
        }
    );
    println!(
        "backends: timed on resident tensors (Convolution::forward_device / backward_device: \
         device memory on a GPU, so no host transfers are timed)"
    );
    println!(
        "sweep: {}, {}{}, reps {}, tolerance f32 {:.0e} / f16 {:.0e} / bf16 {:.1e}",
        if opts.circular {
            "circular, K = L = N"
        } else {
            "causal, K = L = N/2"
        },
        match opts.shape {
            ShapeRule::Budget => format!("{} MB per call", opts.mb),
            ShapeRule::Anchors => format!(
                "ANCHORS.md shapes (FlashFFTConv's benchmark; {} MB per call at other sizes)",
                opts.mb
            ),
            ShapeRule::Fixed(b, h) => format!("B x H = {b} x {h}"),
        },
        if opts.gated { ", gated" } else { "" },
        opts.reps.map_or_else(
            || format!("{DEFAULT_REPS} ({REDUCED_REPS} if warm-up > 1 s)"),
            |r| r.to_string()
        ),
        tolerance(DType::F32),
        tolerance(DType::F16),
        tolerance(DType::Bf16),
    );
    if opts.keep_frequencies.iter().any(|&f| f < 1.0) {
        let list: Vec<String> = opts
            .keep_frequencies
            .iter()
            .map(|&f| report::fraction(f))
            .collect();
        println!(
            "keep frequencies: {} (every backend row per fraction; baselines dense, so `vs base` \
             of a sparse row = dense baseline / sparse time; `vs dense` = the backend's keep-1 \
             time / sparse time; sparse rows checked against the f64 band-limited reference)",
            list.join(", ")
        );
    }
    println!();

    let mut sweep = Sweep {
        opts,
        backends,
        step: 0,
        steps: 0,
        records: Vec::new(),
        skipped: Vec::new(),
    };
    sweep.steps = opts.sizes.len() * opts.dtypes.len() * sweep.case_steps();
    let started = Instant::now();
    for &n in &opts.sizes {
        for &dtype in &opts.dtypes {
            match dtype {
                DType::F32 => sweep.case::<f32>(n),
                DType::F16 => sweep.case::<f16>(n),
                DType::Bf16 => sweep.case::<bf16>(n),
            }
        }
    }
    eprintln!("sweep done in {:.1} s", started.elapsed().as_secs_f64());
    let mut records = sweep.records;
    report::fill_ratios(&mut records);
    report::fill_floor_ratios(&mut records, &bandwidth);
    print!("{}", report::table(&records));
    if !sweep.skipped.is_empty() {
        println!("\nskipped:");
        for line in &sweep.skipped {
            println!("  {line}");
        }
    }
    match report::write_json(&records) {
        Ok((stamped, latest)) => eprintln!("wrote {} and {}", stamped.display(), latest.display()),
        Err(e) => eprintln!("warning: could not write the JSON results: {e}"),
    }
    let failed = records.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        println!(
            "\nFAIL: {failed} of {} results failed (see the status column)",
            records.len()
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

impl Sweep<'_> {
    /// Progress lines (rows) of one case: the baseline, every backend (and its backward) per
    /// kept fraction, cuFFT.
    fn case_steps(&self) -> usize {
        let per_fraction: usize = self
            .backends
            .iter()
            .map(|k| {
                1 + usize::from(self.opts.backward && k.supports_backward())
                    + usize::from(self.opts.filter)
            })
            .sum();
        let cufft = usize::from(self.backends.contains(&BackendKind::Cuda) && !self.opts.gated);
        1 + per_fraction * self.opts.keep_frequencies.len() + cufft
    }

    fn progress(&mut self, n: usize, who: &str, dtype: DType, keep: f64) {
        self.step += 1;
        eprint!(
            "[{}/{}] N={} {} {}{} ... ",
            self.step,
            self.steps,
            report::human(n),
            who,
            dtype,
            report::keep_suffix(keep)
        );
    }

    fn case<T: Element>(&mut self, n: usize) {
        let first_step = self.step;
        let gated = self.opts.gated;
        let dtype = T::DTYPE;
        let circular = self.opts.circular;
        let l = row_len(n, circular);
        let budget = || shape(l, dtype, gated, self.opts.mb);
        let (b, h) = match self.opts.shape {
            ShapeRule::Fixed(b, h) => (b, h),
            ShapeRule::Anchors => anchor_shape(n).unwrap_or_else(budget),
            ShapeRule::Budget => budget(),
        };
        // Keep 1 builds the dense problem exactly as without --keep-frequencies.
        let build = |gated: bool, keep: f64| {
            let builder = ConvSpec::builder(b, h, l, l).dtype(dtype).gated(gated);
            let builder = if circular {
                builder.circular()
            } else {
                builder
            };
            if keep < 1.0 {
                builder.keep_frequencies(keep)
            } else {
                builder
            }
            .build()
        };
        let spec = match build(gated, 1.0) {
            Ok(s) => s,
            Err(e) => return self.invalid_case(n, dtype, (b, h, l), &e.to_string(), first_step),
        };

        // Fresh inputs per case: u and gates uniform in [-1, 1], k decaying to e^-4 over K.
        // Every kept fraction of the case convolves the same inputs.
        let seed = ((n as u64) << 8) | dtype as u64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut random_io = |len: usize| -> Vec<T> {
            (0..len)
                .map(|_| T::from_f32(rng.random_range(-1.0f32..1.0)))
                .collect()
        };
        let u = random_io(spec.io_len());
        let gate_bufs = gated.then(|| (random_io(spec.io_len()), random_io(spec.io_len())));
        let scale = 1.0 / (l as f32).sqrt();
        let k: Vec<f32> = (0..spec.filter_elems())
            .map(|i| {
                let s = (i % l) as f32;
                rng.random_range(-1.0f32..1.0) * (-4.0 * s / l as f32).exp() * scale
            })
            .collect();
        let gates = gate_bufs
            .as_ref()
            .map(|(p, q)| (p.as_slice(), q.as_slice()));
        let sampled = oracle::sample_rows(spec.rows(), &mut rng);
        let checks = oracle::reference_rows(&spec, &u, &k, gates, &sampled);
        let mut y = vec![T::default(); spec.io_len()];

        // The problems of each kept fraction and their oracles: the dense one's for keep 1 (and
        // any fraction that keeps every bin), the band-limited reference for sparse ones.
        let problems: Vec<(f64, Problem)> = self
            .opts
            .keep_frequencies
            .iter()
            .map(|&keep| {
                let problem = build(gated, keep).map_err(|e| e.to_string()).map(|s| {
                    let c = if s.geometry().is_sparse() {
                        oracle::reference_rows(&s, &u, &k, gates, &sampled)
                    } else {
                        checks.clone()
                    };
                    (s, c)
                });
                (keep, problem)
            })
            .collect();

        // The baseline (dense: it never skips bins) and the CPU backend's forward rows are timed
        // together, round-robin, so the slow drift of a shared host moves them alike and their
        // ratios hold. Other backends (GPUs) are timed alone below: a CPU baseline between
        // their repetitions could let the device clock down.
        let cpu = self.backends.contains(&BackendKind::Cpu);
        let mut cpu_runs: Vec<Option<Result<ForwardRun, String>>> = problems
            .iter()
            .map(|(_, problem)| match problem {
                Ok((spec, _)) if cpu => {
                    Some(ForwardRun::new(spec, BackendKind::Cpu, &u, &k, gates))
                }
                _ => None,
            })
            .collect();
        let baseline = build(false, 1.0)
            .map_err(|e| e.to_string())
            .and_then(|plain| RealFftBaseline::new(&plain).map_err(|e| e.to_string()))
            .and_then(|base| {
                let spectrum = base.prepare_filter(&k).map_err(|e| e.to_string())?;
                Ok((base, spectrum))
            });
        let nan = T::from_f32(f32::NAN);
        y.iter_mut().for_each(|v| *v = nan);
        let mut gated_u = gates.map(|_| vec![T::default(); spec.io_len()]);
        let mut timed = {
            let mut runs: Vec<Box<dyn FnMut() -> Result<(), String> + '_>> = Vec::new();
            if let Ok((base, spectrum)) = &baseline {
                let y = &mut y;
                let gated_u = &mut gated_u;
                let u = &u;
                runs.push(Box::new(move || {
                    match (gates, gated_u.as_mut()) {
                        (Some((pre, post)), Some(tmp)) => {
                            par_product(u, pre, tmp);
                            base.forward(spectrum, tmp, y).map_err(|e| e.to_string())?;
                            par_scale(y, post);
                        }
                        _ => base.forward(spectrum, u, y).map_err(|e| e.to_string())?,
                    }
                    Ok(())
                }));
            }
            for run in cpu_runs.iter_mut().flatten().flatten() {
                runs.push(Box::new(move || run.run()));
            }
            if runs.len() > 1 {
                eprintln!(
                    "N={} {dtype}: baseline and cpu timed round-robin ({} rows) ...",
                    report::human(n),
                    runs.len()
                );
            }
            self.time_round_robin(&mut runs).into_iter()
        };
        self.progress(n, "baseline", dtype, 1.0);
        let result = baseline.and_then(|_| timed.next().ok_or("not timed".to_string())?);
        self.record(n, &spec, "baseline", result, &y, &checks);

        // Backends.
        for kind in self.backends.clone() {
            for ((keep, problem), cpu_run) in problems.iter().zip(&mut cpu_runs) {
                let (spec, checks) = match problem {
                    Ok((s, c)) => (s, c),
                    Err(e) => {
                        self.progress(n, kind.name(), dtype, *keep);
                        eprintln!("error: {e}  FAIL");
                        self.records.push(
                            Record::failed(n, b, h, l, kind.name(), dtype, gated, e.clone())
                                .with_keep(*keep, None),
                        );
                        continue;
                    }
                };
                self.progress(n, kind.name(), dtype, *keep);
                let timed_run = (kind == BackendKind::Cpu).then(|| cpu_run.take());
                let result = match timed_run.flatten() {
                    // Timed with the baseline above.
                    Some(run) => run.and_then(|run| {
                        let times = timed.next().ok_or("not timed")??;
                        run.read(&mut y)?;
                        Ok(times)
                    }),
                    None => self.forward_case(spec, kind, &u, &k, gates, &mut y),
                };
                self.record(n, spec, kind.name(), result, &y, checks);
                if self.opts.backward && kind.supports_backward() {
                    self.backward_case(n, spec, kind, &u, &k, gates);
                }
                if self.opts.filter {
                    let who = format!("{}:filter", kind.name());
                    self.progress(n, &who, dtype, *keep);
                    let result = self.filter_case(spec, kind, &u, &k, gates, &mut y);
                    self.record(n, spec, &who, result, &y, checks);
                    // Bytes of one preparation: k read (f32), the half spectrum written
                    // (complex f32): what any filter FFT moves.
                    if let Some(rec) = self.records.last_mut().filter(|r| r.median_ms.is_finite()) {
                        let geometry = spec.geometry();
                        let bins = geometry.kept_bins.min(geometry.n() / 2 + 1);
                        rec.bytes = spec.channels() * (spec.filter_len() * 4 + bins * 8);
                        rec.gb_per_s = rec.bytes as f64 / (rec.median_ms * 1e-3) / 1e9;
                    }
                }
            }
            #[cfg(feature = "cuda")]
            if kind == conv::BackendKind::Cuda && !gated {
                // Dense (cuFFT never skips bins): the reference of every kept fraction.
                self.progress(n, "cufft", dtype, 1.0);
                match self.cufft_case(&spec, &u, &k, &mut y) {
                    // No cuFFT library here: not a failure of anything measured.
                    Err(e) if e.starts_with("CUDA unavailable") => eprintln!("skipped: {e}"),
                    result => self.record(n, &spec, "cufft", result, &y, &checks),
                }
            }
        }
        self.step = first_step + self.case_steps();
    }

    /// A case whose problem cannot be built (invalid for every backend): one failed record for
    /// the baseline and per backend and kept fraction.
    fn invalid_case(
        &mut self,
        n: usize,
        dtype: DType,
        (b, h, l): (usize, usize, usize),
        error: &str,
        first_step: usize,
    ) {
        let mut who = vec![("baseline".to_string(), 1.0)];
        for &keep in &self.opts.keep_frequencies {
            who.extend(self.backends.iter().map(|k| (k.to_string(), keep)));
        }
        for (name, keep) in who {
            self.progress(n, &name, dtype, keep);
            eprintln!("error: {error}");
            let gated = self.opts.gated;
            self.records.push(
                Record::failed(n, b, h, l, &name, dtype, gated, error.to_string())
                    .with_keep(keep, None),
            );
        }
        self.step = first_step + self.case_steps();
    }

    /// Times the forward on `kind`. Inputs and output stay resident on the backend (device
    /// memory on a GPU), so the times exclude host transfers; the output starts as NaN and is
    /// read back once into `y`.
    fn forward_case<T: Element>(
        &self,
        spec: &ConvSpec,
        kind: BackendKind,
        u: &[T],
        k: &[f32],
        gates: Option<(&[T], &[T])>,
        y: &mut [T],
    ) -> Result<Vec<f64>, String> {
        let mut run = ForwardRun::new(spec, kind, u, k, gates)?;
        let times = self.time(y, |_| run.run())?;
        run.read(y)?;
        Ok(times)
    }

    /// Times the filter preparation on `kind` from a `k` resident there
    /// (`prepare_filter_device`), then runs the forward with the last spectrum it made into
    /// `y` (resident inputs, as `forward_case`), so the row is checked like a forward.
    fn filter_case<T: Element>(
        &self,
        spec: &ConvSpec,
        kind: BackendKind,
        u: &[T],
        k: &[f32],
        gates: Option<(&[T], &[T])>,
        y: &mut [T],
    ) -> Result<Vec<f64>, String> {
        let err = |e: ConvError| e.to_string();
        let conv = Convolution::new(spec.clone(), kind).map_err(err)?;
        let k_t = conv.filter_tensor_from_host(k).map_err(err)?;
        let mut filter = None;
        // Each preparation allocates its spectrum and drops the previous one, as a training
        // step that replaces its filter does.
        let times = self.time(y, |_| {
            filter = Some(conv.prepare_filter_device(&k_t).map_err(err)?);
            Ok(())
        })?;
        let filter = filter.ok_or("no filter prepared")?;
        let (u_t, gates_t, mut y_t) = resident_io(&conv, u, gates)?;
        let g = gates_t.as_ref().map(|(p, q)| (p, q));
        conv.forward_device(&filter, &u_t, g, &mut y_t)
            .map_err(err)?;
        conv.tensor_to_host(&y_t, y).map_err(err)?;
        Ok(times)
    }

    /// Times the cuFFT baseline (R2C, product, C2R in f32, filter spectrum precomputed) on
    /// device-resident tensors, like the CUDA backend's rows; `y` receives its result.
    #[cfg(feature = "cuda")]
    fn cufft_case<T: Element>(
        &self,
        spec: &ConvSpec,
        u: &[T],
        k: &[f32],
        y: &mut [T],
    ) -> Result<Vec<f64>, String> {
        use backend_cuda::{CudaTensor, CufftBaseline};
        let err = |e: backend_cuda::CudaError| e.to_string();
        let mut base = CufftBaseline::new(spec).map_err(err)?;
        let filter = base.prepare_filter(k).map_err(err)?;
        let u_t = CudaTensor::from_host(u).map_err(err)?;
        let mut y_t =
            CudaTensor::from_host(&vec![T::from_f32(f32::NAN); spec.io_len()]).map_err(err)?;
        let times = self.time(y, |_| base.forward(&filter, &u_t, &mut y_t).map_err(err))?;
        y_t.to_host(y).map_err(err)?;
        Ok(times)
    }

    /// Times the backward pass on `kind` (with a fresh random `dy`) and checks `du` on sampled
    /// rows: `du = pre * rev(conv(rev(post * dy), k))` per row, i.e. the forward oracle run on
    /// reversed rows with the gates swapped and reversed. That is the exact adjoint for the
    /// swept problems (causal, K = L, one overlap-save block), the frequency-sparse ones
    /// included (the band-limited oracle; `oracle`'s tests check it against
    /// `reference_backward`). A backend that does not implement the backward of the problem is
    /// skipped with the reason.
    fn backward_case<T: Element>(
        &mut self,
        n: usize,
        spec: &ConvSpec,
        kind: conv::BackendKind,
        u: &[T],
        k: &[f32],
        gates: Option<(&[T], &[T])>,
    ) {
        let who = format!("{}:bw", kind.name());
        let keep = report::keep_fraction(spec);
        self.progress(n, &who, T::DTYPE, keep);
        let l = spec.length();
        let mut rng = rand::rngs::StdRng::seed_from_u64(((n as u64) << 8) | 0x80);
        let dy: Vec<T> = (0..spec.io_len())
            .map(|_| T::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect();
        let reversed = |x: &[T]| -> Vec<T> {
            x.chunks_exact(l)
                .flat_map(|row| row.iter().rev().copied())
                .collect()
        };
        let dy_rev = reversed(&dy);
        let swapped = gates.map(|(pre, post)| (reversed(post), reversed(pre)));
        let sampled = oracle::sample_rows(spec.rows(), &mut rng);
        let checks = oracle::reference_rows(
            spec,
            &dy_rev,
            k,
            swapped.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice())),
            &sampled,
        );
        let io = spec.io_len();
        let mut du = vec![T::default(); io];
        let mut dk = vec![0.0f32; spec.filter_elems()];
        // Resident tensors, as for the forward: times exclude host transfers.
        let result = Convolution::new(spec.clone(), kind)
            .and_then(|c| c.prepare_filter(k).map(|f| (c, f)))
            .map_err(message)
            .and_then(|(conv, filter)| {
                let resident = |x: &[T]| conv.tensor_from_host(x).map_err(message);
                let (u_t, dy_t) = (resident(u)?, resident(&dy)?);
                let gates_t = match gates {
                    Some((pre, post)) => Some((resident(pre)?, resident(post)?)),
                    None => None,
                };
                let poison = vec![T::from_f32(f32::NAN); io];
                let mut du_t = resident(&poison)?;
                let mut gate_grads_t = match gates {
                    Some(_) => Some((resident(&poison)?, resident(&poison)?)),
                    None => None,
                };
                // dk stays on the device too, as in a training step.
                let mut dk_t = conv
                    .filter_tensor_from_host(&vec![f32::NAN; spec.filter_elems()])
                    .map_err(message)?;
                let times = self.time(&mut du, |_| {
                    let (dpregate, dpostgate) = match gate_grads_t.as_mut() {
                        Some((p, q)) => (Some(p), Some(q)),
                        None => (None, None),
                    };
                    conv.backward_device(
                        &filter,
                        &u_t,
                        gates_t.as_ref().map(|(p, q)| (p, q)),
                        &dy_t,
                        conv::DeviceGradients {
                            du: &mut du_t,
                            dk: &mut dk_t,
                            dpregate,
                            dpostgate,
                        },
                    )
                    .map_err(message)
                })?;
                conv.tensor_to_host(&du_t, &mut du).map_err(message)?;
                conv.filter_tensor_to_host(&dk_t, &mut dk)
                    .map_err(message)?;
                if let Some(i) = dk.iter().position(|v| !v.is_finite()) {
                    return Err(format!("dk[{i}] is {} (unwritten or overflowed)", dk[i]));
                }
                Ok(times)
            });
        if let Err(reason) = &result {
            if let Some(reason) = reason.strip_prefix(UNSUPPORTED) {
                eprintln!("skipped: {reason}");
                self.skipped.push(format!(
                    "N={} {who} {}{}: {reason}",
                    report::human(n),
                    T::DTYPE,
                    report::keep_suffix(keep)
                ));
                return;
            }
        }
        let du_rev = reversed(&du);
        self.record(n, spec, &who, result, &du_rev, &checks);
        // Bytes of one backward call: u, dy (and both gates) read; du (and both gate
        // gradients) written.
        if let Some(rec) = self.records.last_mut().filter(|r| r.median_ms.is_finite()) {
            let streams = if gates.is_some() { 6 } else { 3 };
            rec.bytes = streams * io * T::DTYPE.size_bytes();
            rec.gb_per_s = rec.bytes as f64 / (rec.median_ms * 1e-3) / 1e9;
        }
    }

    /// Fills `y` with NaN (so unwritten outputs fail the check), warms up once, then times the
    /// repetitions; returns the times in ms.
    fn time<T: Element>(
        &self,
        y: &mut [T],
        mut f: impl FnMut(&mut [T]) -> Result<(), String>,
    ) -> Result<Vec<f64>, String> {
        let nan = T::from_f32(f32::NAN);
        y.iter_mut().for_each(|v| *v = nan);
        let mut runs: [Box<dyn FnMut() -> Result<(), String> + '_>; 1] = [Box::new(|| f(y))];
        let mut results = self.time_round_robin(&mut runs);
        results.pop().expect("one run")
    }

    /// Warms each run up once, then times the repetitions round-robin: each repetition runs
    /// every run once, in turn. Returns each run's times in ms; an error ends only that run's
    /// timing. The repetitions are `--reps`, or the default (fewer when a warm-up is slow).
    fn time_round_robin(
        &self,
        runs: &mut [Box<dyn FnMut() -> Result<(), String> + '_>],
    ) -> Vec<Result<Vec<f64>, String>> {
        let mut slowest = Duration::ZERO;
        let mut results: Vec<Result<Vec<f64>, String>> = runs
            .iter_mut()
            .map(|run| {
                let t = Instant::now();
                let warm = run().map(|()| Vec::new());
                slowest = slowest.max(t.elapsed());
                warm
            })
            .collect();
        let reps = self.opts.reps.unwrap_or(if slowest > SLOW_WARMUP {
            REDUCED_REPS
        } else {
            DEFAULT_REPS
        });
        for _ in 0..reps {
            for (run, result) in runs.iter_mut().zip(&mut results) {
                if let Ok(times) = result {
                    let t = Instant::now();
                    match run() {
                        Ok(()) => times.push(t.elapsed().as_secs_f64() * 1e3),
                        Err(e) => *result = Err(e),
                    }
                }
            }
        }
        results
    }

    fn record<T: Element>(
        &mut self,
        n: usize,
        spec: &ConvSpec,
        who: &str,
        result: Result<Vec<f64>, String>,
        y: &[T],
        checks: &[RowCheck],
    ) {
        let (b, h, l) = (spec.batch(), spec.channels(), spec.length());
        let dtype = spec.dtype();
        let rec = match result {
            Ok(times) => {
                let err = oracle::max_rel_error(y, l, checks);
                let rec = Record::measured(n, spec, who, times, err, tolerance(dtype));
                eprintln!(
                    "{:.3} ms, {:.2} GB/s, err {:.2e}{}",
                    rec.median_ms,
                    rec.gb_per_s,
                    err,
                    if rec.ok { "" } else { "  FAIL" }
                );
                rec
            }
            Err(e) => {
                eprintln!("error: {e}  FAIL");
                Record::failed(n, b, h, l, who, dtype, spec.gated(), e)
                    .with_keep(report::keep_fraction(spec), Some(spec.geometry().kept_bins))
            }
        };
        self.records.push(rec);
    }
}

/// One backend's forward with its filter spectrum, inputs and output resident on the backend
/// (device memory on a GPU), so timing it excludes host transfers; the output starts as NaN.
struct ForwardRun {
    conv: Convolution,
    filter: FilterSpectrum,
    u: DeviceTensor,
    gates: Option<(DeviceTensor, DeviceTensor)>,
    y: DeviceTensor,
}

impl ForwardRun {
    fn new<T: Element>(
        spec: &ConvSpec,
        kind: BackendKind,
        u: &[T],
        k: &[f32],
        gates: Option<(&[T], &[T])>,
    ) -> Result<Self, String> {
        let err = |e: ConvError| e.to_string();
        let conv = Convolution::new(spec.clone(), kind).map_err(err)?;
        let filter = conv.prepare_filter(k).map_err(err)?;
        let (u, gates, y) = resident_io(&conv, u, gates)?;
        Ok(Self {
            conv,
            filter,
            u,
            gates,
            y,
        })
    }

    fn run(&mut self) -> Result<(), String> {
        let g = self.gates.as_ref().map(|(p, q)| (p, q));
        self.conv
            .forward_device(&self.filter, &self.u, g, &mut self.y)
            .map_err(|e| e.to_string())
    }

    /// Copies the output to the host.
    fn read<T: Element>(&self, y: &mut [T]) -> Result<(), String> {
        self.conv
            .tensor_to_host(&self.y, y)
            .map_err(|e| e.to_string())
    }
}

/// A forward's inputs resident on `conv`'s backend, and its output filled with NaN (so unwritten
/// outputs fail the check).
type ResidentIo = (
    DeviceTensor,
    Option<(DeviceTensor, DeviceTensor)>,
    DeviceTensor,
);

fn resident_io<T: Element>(
    conv: &Convolution,
    u: &[T],
    gates: Option<(&[T], &[T])>,
) -> Result<ResidentIo, String> {
    let resident = |x: &[T]| conv.tensor_from_host(x).map_err(|e| e.to_string());
    let gates_t = match gates {
        Some((pre, post)) => Some((resident(pre)?, resident(post)?)),
        None => None,
    };
    let y_t = resident(&vec![T::from_f32(f32::NAN); u.len()])?;
    Ok((resident(u)?, gates_t, y_t))
}

/// `out = a * b` elementwise (computed in f32, rounded to `T`), threaded.
fn par_product<T: Element>(a: &[T], b: &[T], out: &mut [T]) {
    let chunk = out.len().div_ceil(backend_cpu::threads().max(1)).max(1);
    std::thread::scope(|s| {
        for ((o, a), b) in out
            .chunks_mut(chunk)
            .zip(a.chunks(chunk))
            .zip(b.chunks(chunk))
        {
            s.spawn(move || {
                for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                    *o = T::from_f32(a.to_f32() * b.to_f32());
                }
            });
        }
    });
}

/// `y *= g` elementwise (computed in f32, rounded to `T`), threaded.
fn par_scale<T: Element>(y: &mut [T], g: &[T]) {
    let chunk = y.len().div_ceil(backend_cpu::threads().max(1)).max(1);
    std::thread::scope(|s| {
        for (y, g) in y.chunks_mut(chunk).zip(g.chunks(chunk)) {
            s.spawn(move || {
                for (y, g) in y.iter_mut().zip(g) {
                    *y = T::from_f32(y.to_f32() * g.to_f32());
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_byte_budget() {
        // 128 MB of f32 at L = 128: 125000 rows -> H = 768, B = 162.
        assert_eq!(shape(128, DType::F32, false, 128.0), (162, 768));
        // Huge rows: at least one.
        assert_eq!(shape(1 << 19, DType::F32, false, 1.0), (1, 1));
        // N = 1M, f32: 128e6 / (2 * 512Ki * 4) = 30.5 -> 31 rows: B = 10, H = 3.
        assert_eq!(shape(1 << 19, DType::F32, false, 128.0), (10, 3));
        let (b, h) = shape(2048, DType::F16, true, 128.0);
        assert_eq!((b, h), (10, 768));
    }

    #[test]
    fn threaded_passes() {
        let a = vec![2.0f32; 1001];
        let b = vec![3.0f32; 1001];
        let mut out = vec![0.0f32; 1001];
        par_product(&a, &b, &mut out);
        assert!(out.iter().all(|&x| x == 6.0));
        par_scale(&mut out, &a);
        assert!(out.iter().all(|&x| x == 12.0));
    }
}
