//! The `conv` and `devices` commands, and the error type that maps to exit codes.

use crate::args::{self, Command, ConvArgs};
use crate::{atomic, npy};
use conv::{
    backend_statuses, bf16, f16, BackendKind, ConvMode, ConvSpec, Convolution, DType, Element,
    FilterSpectrum, Gates,
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

/// `fftconv conv`.
fn conv(a: &ConvArgs) -> Result<(), CliError> {
    atomic::check_target(&a.out).map_err(|e| runtime(format!("--out {}: {e}", a.out.display())))?;

    let u = load("--u", &a.u)?;
    let [b, h, l] = u.shape[..] else {
        return Err(shape_error(
            "--u",
            &a.u,
            format!(
                "expected a 3-D array [B, H, L], got shape {}",
                npy::py_shape(&u.shape)
            ),
        ));
    };
    let k = load("--k", &a.k)?;
    let filter_len = match k.shape[..] {
        [hk, kl] if hk == h => kl,
        [kl] if h == 1 => kl,
        _ => {
            return Err(shape_error(
                "--k",
                &a.k,
                format!(
                    "expected shape [H, K] = [{h}, K] to match u's H = {h}, got {}",
                    npy::py_shape(&k.shape)
                ),
            ))
        }
    };
    let gates = match &a.gates {
        None => None,
        Some((pre_path, post_path)) => {
            let pre = load("--pregate", pre_path)?;
            let post = load("--postgate", post_path)?;
            for (flag, path, g) in [
                ("--pregate", pre_path, &pre),
                ("--postgate", post_path, &post),
            ] {
                if g.shape != u.shape {
                    return Err(shape_error(
                        flag,
                        path,
                        format!(
                            "shape {} differs from u's shape {}",
                            npy::py_shape(&g.shape),
                            npy::py_shape(&u.shape)
                        ),
                    ));
                }
            }
            Some((pre.data, post.data))
        }
    };

    let mode = if a.circular {
        ConvMode::Circular
    } else {
        ConvMode::Causal
    };
    let mut builder = ConvSpec::builder(b, h, l, filter_len)
        .dtype(a.dtype)
        .mode(mode)
        .gated(gates.is_some());
    if let Some(f) = a.keep_frequencies {
        builder = builder.keep_frequencies(f);
    }
    let spec = builder.build().map_err(|e| {
        runtime(format!(
            "cannot convolve u {} with k {}: {e}",
            npy::py_shape(&u.shape),
            npy::py_shape(&k.shape)
        ))
    })?;

    let backend = match a.backend {
        Some(kind) => kind,
        None => BackendKind::best_available().map_err(|e| runtime(e.to_string()))?,
    };
    let started = Instant::now();
    let convolution =
        Convolution::new(spec.clone(), backend).map_err(|e| runtime(e.to_string()))?;
    let filter = convolution
        .prepare_filter(&k.data)
        .map_err(|e| runtime(e.to_string()))?;
    let prepare_seconds = started.elapsed().as_secs_f64();
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

    let g = spec.geometry();
    let report = serde_json::json!({
        "fft_size": g.n(),
        "bins_kept": g.kept_bins,
        "bins_total": g.n() / 2 + 1,
        "blocks": g.blocks,
        "block_len": g.block_len,
        "backend": backend.name(),
        "dtype": a.dtype.name(),
        "mode": match mode { ConvMode::Causal => "causal", ConvMode::Circular => "circular" },
        "gated": spec.gated(),
        "keep_frequencies": a.keep_frequencies,
        "shape": [b, h, l],
        "filter_len": filter_len,
        "seconds": seconds,
        "prepare_seconds": prepare_seconds,
        "out": a.out.display().to_string(),
    });
    let _ = writeln!(io::stderr().lock(), "{report}");
    Ok(())
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
