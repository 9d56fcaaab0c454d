//! The `conv`, `grad` and `devices` commands, and the error type that maps to exit codes.

use crate::args::{self, Command, ConvArgs, GradArgs};
use crate::{atomic, npy};
use conv::{
    backend_statuses, bf16, f16, BackendKind, ConvMode, ConvSpec, Convolution, DType, Element,
    FilterSpectrum, Gates, Gradients,
};
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

/// A failed command: a usage error (exit code 2) or a runtime error (exit code 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    Usage(String),
    Runtime(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }

    /// The message on one line.
    pub fn message(&self) -> String {
        let (CliError::Usage(m) | CliError::Runtime(m)) = self;
        one_line(m)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl From<args::UsageError> for CliError {
    fn from(e: args::UsageError) -> Self {
        CliError::Usage(e.0)
    }
}

fn runtime(msg: impl Into<String>) -> CliError {
    CliError::Runtime(msg.into())
}

/// Collapses newlines (and runs of whitespace around them) so a message stays on one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses the arguments after the program name and runs the command.
pub fn run<I: IntoIterator<Item = OsString>>(args: I) -> Result<(), CliError> {
    match args::parse(args)? {
        Command::Help(text) => print_stdout(text),
        Command::Version => print_stdout(&format!("fftconv {}\n", env!("CARGO_PKG_VERSION"))),
        Command::Devices => devices(),
        Command::Conv(a) => conv(&a),
        Command::Grad(a) => grad(&a),
    }
}

/// Writes to stdout; a closed pipe (`fftconv devices | head -1`) is not an error.
fn print_stdout(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(runtime(format!("writing to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// `fftconv devices`: one line per backend.
fn devices() -> Result<(), CliError> {
    let mut text = String::new();
    for s in backend_statuses() {
        let compiled = if s.compiled {
            "compiled"
        } else {
            "not-compiled"
        };
        let status = match &s.available {
            Ok(device) => format!("available: {}", one_line(device)),
            Err(reason) => format!("unavailable: {}", one_line(reason)),
        };
        text.push_str(&format!("{:<7} {compiled:<12}  {status}\n", s.kind.name()));
    }
    print_stdout(&text)
}

/// An input array, read and checked.
fn load(flag: &str, path: &Path) -> Result<npy::NpyArray, CliError> {
    npy::read(path).map_err(|e| runtime(format!("{flag} {}: {e}", path.display())))
}

fn shape_error(flag: &str, path: &Path, msg: String) -> CliError {
    runtime(format!("{flag} {}: {msg}", path.display()))
}

/// The inputs every convolution command reads, checked against each other, and the problem.
struct Loaded {
    u: npy::NpyArray,
    k: npy::NpyArray,
    /// `(pregate, postgate)` data.
    gates: Option<(Vec<f32>, Vec<f32>)>,
    spec: ConvSpec,
}

/// Reads `u`, `k` and the gates, checks their shapes and builds the problem.
fn load_problem(
    u_path: &Path,
    k_path: &Path,
    gate_paths: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    circular: bool,
    keep_frequencies: Option<f64>,
    dtype: DType,
) -> Result<Loaded, CliError> {
    let u = load("--u", u_path)?;
    let [b, h, l] = u.shape[..] else {
        return Err(shape_error(
            "--u",
            u_path,
            format!(
                "expected a 3-D array [B, H, L], got shape {}",
                npy::py_shape(&u.shape)
            ),
        ));
    };
    let k = load("--k", k_path)?;
    let filter_len = match k.shape[..] {
        [hk, kl] if hk == h => kl,
        [kl] if h == 1 => kl,
        _ => {
            return Err(shape_error(
                "--k",
                k_path,
                format!(
                    "expected shape [H, K] = [{h}, K] to match u's H = {h}, got {}",
                    npy::py_shape(&k.shape)
                ),
            ))
        }
    };
    let gates = match gate_paths {
        None => None,
        Some((pre_path, post_path)) => {
            let pre = load("--pregate", pre_path)?;
            let post = load("--postgate", post_path)?;
            for (flag, path, g) in [
                ("--pregate", pre_path, &pre),
                ("--postgate", post_path, &post),
            ] {
                check_like_u(flag, path, &g.shape, &u.shape)?;
            }
            Some((pre.data, post.data))
        }
    };
    let mode = if circular {
        ConvMode::Circular
    } else {
        ConvMode::Causal
    };
    let mut builder = ConvSpec::builder(b, h, l, filter_len)
        .dtype(dtype)
        .mode(mode)
        .gated(gates.is_some());
    if let Some(f) = keep_frequencies {
        builder = builder.keep_frequencies(f);
    }
    let spec = builder.build().map_err(|e| {
        runtime(format!(
            "cannot convolve u {} with k {}: {e}",
            npy::py_shape(&u.shape),
            npy::py_shape(&k.shape)
        ))
    })?;
    Ok(Loaded { u, k, gates, spec })
}

/// Checks that an input read from `path` for `flag` is shaped like `u`.
fn check_like_u(flag: &str, path: &Path, shape: &[usize], u: &[usize]) -> Result<(), CliError> {
    if shape == u {
        return Ok(());
    }
    Err(shape_error(
        flag,
        path,
        format!(
            "shape {} differs from u's shape {}",
            npy::py_shape(shape),
            npy::py_shape(u)
        ),
    ))
}

/// The backend a command runs on, and the convolution prepared on it with its filter; returns
/// the seconds preparation took as well.
fn prepare(
    spec: &ConvSpec,
    backend: Option<BackendKind>,
    k: &[f32],
) -> Result<(BackendKind, Convolution, FilterSpectrum, f64), CliError> {
    let backend = match backend {
        Some(kind) => kind,
        None => BackendKind::best_available().map_err(|e| runtime(e.to_string()))?,
    };
    let started = Instant::now();
    let convolution =
        Convolution::new(spec.clone(), backend).map_err(|e| runtime(e.to_string()))?;
    let filter = convolution
        .prepare_filter(k)
        .map_err(|e| runtime(e.to_string()))?;
    Ok((
        backend,
        convolution,
        filter,
        started.elapsed().as_secs_f64(),
    ))
}

/// The fields of the JSON report both commands print.
fn report(
    spec: &ConvSpec,
    backend: BackendKind,
    keep_frequencies: Option<f64>,
    seconds: f64,
    prepare_seconds: f64,
) -> serde_json::Map<String, serde_json::Value> {
    let g = spec.geometry();
    let value = serde_json::json!({
        "fft_size": g.n(),
        "bins_kept": g.kept_bins,
        "bins_total": g.n() / 2 + 1,
        "blocks": g.blocks,
        "block_len": g.block_len,
        "backend": backend.name(),
        "dtype": spec.dtype().name(),
        "mode": match spec.mode() { ConvMode::Causal => "causal", ConvMode::Circular => "circular" },
        "gated": spec.gated(),
        "keep_frequencies": keep_frequencies,
        "shape": [spec.batch(), spec.channels(), spec.length()],
        "filter_len": spec.filter_len(),
        "seconds": seconds,
        "prepare_seconds": prepare_seconds,
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// `fftconv conv`.
fn conv(a: &ConvArgs) -> Result<(), CliError> {
    atomic::check_target(&a.out).map_err(|e| runtime(format!("--out {}: {e}", a.out.display())))?;
    let Loaded { u, k, gates, spec } = load_problem(
        &a.u,
        &a.k,
        a.gates.as_ref(),
        a.circular,
        a.keep_frequencies,
        a.dtype,
    )?;
    let (backend, convolution, filter, prepare_seconds) = prepare(&spec, a.backend, &k.data)?;
    let gate_refs = gates.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice()));
    let (y, seconds) = match a.dtype {
        DType::F32 => forward::<f32>(&convolution, &filter, &u.data, gate_refs),
        DType::F16 => forward::<f16>(&convolution, &filter, &u.data, gate_refs),
        DType::Bf16 => forward::<bf16>(&convolution, &filter, &u.data, gate_refs),
    }
    .map_err(|e| runtime(e.to_string()))?;

    let bytes = npy::encode_f32(&u.shape, &y).map_err(|e| runtime(e.to_string()))?;
    atomic::write(&a.out, &bytes)
        .map_err(|e| runtime(format!("writing --out {}: {e}", a.out.display())))?;

    let mut fields = report(&spec, backend, a.keep_frequencies, seconds, prepare_seconds);
    fields.insert("out".into(), a.out.display().to_string().into());
    let _ = writeln!(io::stderr().lock(), "{}", serde_json::Value::Object(fields));
    Ok(())
}

/// `fftconv grad`.
fn grad(a: &GradArgs) -> Result<(), CliError> {
    let dir = &a.out_dir;
    if dir.exists() && !dir.is_dir() {
        return Err(runtime(format!(
            "--out-dir {}: exists and is not a directory",
            dir.display()
        )));
    }
    let Loaded { u, k, gates, spec } = load_problem(
        &a.u,
        &a.k,
        a.gates.as_ref(),
        a.circular,
        a.keep_frequencies,
        a.dtype,
    )?;
    let dy = load("--dy", &a.dy)?;
    check_like_u("--dy", &a.dy, &dy.shape, &u.shape)?;
    let (backend, convolution, filter, prepare_seconds) = prepare(&spec, a.backend, &k.data)?;
    let gate_refs = gates.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice()));
    let (grads, seconds) = match a.dtype {
        DType::F32 => backward::<f32>(&convolution, &filter, &u.data, gate_refs, &dy.data),
        DType::F16 => backward::<f16>(&convolution, &filter, &u.data, gate_refs, &dy.data),
        DType::Bf16 => backward::<bf16>(&convolution, &filter, &u.data, gate_refs, &dy.data),
    }
    .map_err(|e| runtime(e.to_string()))?;

    // Encode everything before touching the directory.
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("du.npy", npy::encode_f32(&u.shape, &grads.du)),
        ("dk.npy", npy::encode_f32(&k.shape, &grads.dk)),
    ]
    .into_iter()
    .map(|(name, r)| r.map(|b| (name, b)))
    .collect::<Result<_, _>>()
    .map_err(|e| runtime(e.to_string()))?;
    if let Some((dpre, dpost)) = &grads.gates {
        for (name, data) in [("dpregate.npy", dpre), ("dpostgate.npy", dpost)] {
            let bytes = npy::encode_f32(&u.shape, data).map_err(|e| runtime(e.to_string()))?;
            files.push((name, bytes));
        }
    }
    // Every target can be written (none is a directory) before the first one is: an error
    // midway would leave the earlier gradients written.
    if dir.is_dir() {
        for (name, _) in &files {
            let path = dir.join(name);
            atomic::check_target(&path)
                .map_err(|e| runtime(format!("writing {}: {e}", path.display())))?;
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| runtime(format!("creating --out-dir {}: {e}", dir.display())))?;
    for (name, bytes) in &files {
        let path = dir.join(name);
        atomic::write(&path, bytes)
            .map_err(|e| runtime(format!("writing {}: {e}", path.display())))?;
    }

    let mut fields = report(&spec, backend, a.keep_frequencies, seconds, prepare_seconds);
    fields.insert("out_dir".into(), dir.display().to_string().into());
    fields.insert(
        "outputs".into(),
        files
            .iter()
            .map(|(name, _)| serde_json::Value::from(*name))
            .collect(),
    );
    let _ = writeln!(io::stderr().lock(), "{}", serde_json::Value::Object(fields));
    Ok(())
}

/// Gradients widened to f32: `du`, `dk` and, when gated, `(dpregate, dpostgate)`.
struct GradOutputs {
    du: Vec<f32>,
    dk: Vec<f32>,
    gates: Option<(Vec<f32>, Vec<f32>)>,
}

/// Rounds f32 values to `T`.
fn narrow<T: Element>(x: &[f32]) -> Vec<T> {
    let mut v = vec![T::default(); x.len()];
    T::store_f32(x, &mut v);
    v
}

/// Widens `T` values to f32.
fn widen<T: Element>(x: &[T]) -> Vec<f32> {
    let mut v = vec![0.0f32; x.len()];
    T::load_f32(x, &mut v);
    v
}

/// Converts the f32 inputs to `T`, runs the backward pass and widens the gradients back to
/// f32. Returns them and the seconds the backward call took.
fn backward<T: Element>(
    convolution: &Convolution,
    filter: &FilterSpectrum,
    u: &[f32],
    gates: Option<(&[f32], &[f32])>,
    dy: &[f32],
) -> Result<(GradOutputs, f64), conv::ConvError> {
    let u_t: Vec<T> = narrow(u);
    let dy_t: Vec<T> = narrow(dy);
    let gates_t = gates.map(|(p, q)| (narrow::<T>(p), narrow::<T>(q)));
    let mut du = vec![T::default(); u.len()];
    let mut dk = vec![0.0f32; convolution.spec().filter_elems()];
    let (mut dpre, mut dpost) = match gates {
        Some(_) => (vec![T::default(); u.len()], vec![T::default(); u.len()]),
        None => (Vec::new(), Vec::new()),
    };
    let started = Instant::now();
    convolution.backward(
        filter,
        &u_t,
        gates_t.as_ref().map(|(p, q)| Gates { pre: p, post: q }),
        &dy_t,
        Gradients {
            du: &mut du,
            dk: &mut dk,
            dpregate: gates.map(|_| dpre.as_mut_slice()),
            dpostgate: gates.map(|_| dpost.as_mut_slice()),
        },
    )?;
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        GradOutputs {
            du: widen(&du),
            dk,
            gates: gates.map(|_| (widen(&dpre), widen(&dpost))),
        },
        seconds,
    ))
}

/// Converts the f32 inputs to `T`, runs the forward pass and widens `y` back to f32. Returns
/// `y` and the seconds the forward call took.
fn forward<T: Element>(
    convolution: &Convolution,
    filter: &FilterSpectrum,
    u: &[f32],
    gates: Option<(&[f32], &[f32])>,
) -> Result<(Vec<f32>, f64), conv::ConvError> {
    let narrow = |x: &[f32]| {
        let mut v = vec![T::default(); x.len()];
        T::store_f32(x, &mut v);
        v
    };
    let u_t = narrow(u);
    let gates_t = gates.map(|(p, q)| (narrow(p), narrow(q)));
    let mut y_t = vec![T::default(); u.len()];
    let started = Instant::now();
    convolution.forward(
        filter,
        &u_t,
        gates_t.as_ref().map(|(p, q)| Gates { pre: p, post: q }),
        &mut y_t,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let mut y = vec![0.0f32; y_t.len()];
    T::load_f32(&y_t, &mut y);
    Ok((y, seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_with_exit_codes() {
        let e = CliError::Runtime("first\n  second\n\nthird".into());
        assert_eq!(e.message(), "first; second; third");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
    }
}
