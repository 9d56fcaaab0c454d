//! Hand-rolled command-line parsing for `fftconv` and its usage texts.

use conv::{BackendKind, DType};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// Top-level usage text (`fftconv --help`).
pub const MAIN_HELP: &str = "\
fftconv: long FFT convolutions (FlashFFTConv-style) on .npy files

Usage:
  fftconv conv --u U.npy --k K.npy --out Y.npy [OPTIONS]
  fftconv grad --u U.npy --k K.npy --dy DY.npy --out-dir DIR [OPTIONS]
  fftconv devices
  fftconv help [COMMAND]
  fftconv --help | --version

Commands:
  conv      y = postgate * conv(pregate * u, k): convolve u [B, H, L] with one filter
            per channel k [H, K], write y [B, H, L] (see `fftconv conv --help`)
  grad      the backward pass of conv: given dy [B, H, L], write du, dk and, when
            gated, dpregate and dpostgate (see `fftconv grad --help`)
  devices   list the backends (cpu, cuda, vulkan): compiled in or not, and whether
            each can run here (its device) or why not

Exit status: 0 on success; 1 on runtime errors (unreadable or malformed input, shapes
that do not fit, backend unavailable, write failure); 2 on usage errors. Errors are one
line on stderr starting with `fftconv: error: `.
";

/// Usage text of `fftconv conv --help`.
pub const CONV_HELP: &str = "\
fftconv conv: y = postgate * conv(pregate * u, k), one filter per channel

Usage:
  fftconv conv --u U.npy --k K.npy --out Y.npy [--pregate P.npy --postgate Q.npy]
               [--circular] [--keep-frequencies F] [--backend cpu|cuda|vulkan]
               [--dtype f32|f16|bf16]

  causal:   y[b,h,t] = post[b,h,t] * sum_{s=0..=min(t,K-1)} k[h,s] * (pre*u)[b,h,t-s]
  circular: y[b,h,t] = post[b,h,t] * sum_{s=0..K-1} k[h,s] * (pre*u)[b,h,(t-s) mod L]

Inputs are .npy arrays in C order: float32 ('<f4'); float64 ('<f8') and float16 ('<f2')
are converted to f32 (big-endian variants too).

Required:
  --u PATH              input u, shape [B, H, L]
  --k PATH              filters k, shape [H, K] with 1 <= K <= L ([K] also works when H = 1)
  --out PATH            output y, shape [B, H, L], written as a float32 ('<f4') .npy file.
                        Written atomically (a temporary file in the same directory, synced,
                        then renamed over PATH): on any error PATH is left as it was.

Options:
  --pregate PATH        gate multiplied into u before the convolution, shaped like u
  --postgate PATH       gate multiplied into the result, shaped like u
                        (give both gates or neither)
  --circular            circular convolution with period L (default: causal, zero history)
  --keep-frequencies F  frequency-sparse convolution, 0 < F <= 1: keeps the lowest fraction
                        F of the non-Nyquist real-FFT bins [0, N/2) of the chosen FFT size N
                        (reported as fft_size), i.e. ceil(F * N/2) bins rounded up to a
                        multiple of N/16; when that reaches N/2, all N/2 + 1 bins are kept
                        (a dense convolution). Kept bins: bins_kept in the JSON report.
  --backend NAME        cpu, cuda or vulkan (default: the best available, in the order
                        cuda, vulkan, cpu; see `fftconv devices`)
  --dtype NAME          f32 (default), f16 or bf16: the element type u, the gates and y are
                        stored in during the run (inputs are rounded to it, y is widened back
                        to f32 for writing); k stays f32
  -h, --help            print this help

On success, prints one JSON line on stderr, e.g.
  {\"backend\":\"cpu\",\"bins_kept\":16,\"bins_total\":65,\"blocks\":2,\"dtype\":\"f32\",
   \"fft_size\":128,\"filter_len\":40,\"seconds\":0.0001,\"shape\":[2,3,100],...}
where fft_size is the FFT size N of each overlap-save block, blocks their number, bins_kept
the real-FFT bins kept (of bins_total = N/2 + 1) and seconds the time of the forward pass.
";

/// Usage text of `fftconv grad --help`.
pub const GRAD_HELP: &str = "\
fftconv grad: gradients of y = postgate * conv(pregate * u, k) (the backward pass)

Usage:
  fftconv grad --u U.npy --k K.npy --dy DY.npy --out-dir DIR
               [--pregate P.npy --postgate Q.npy] [--circular] [--keep-frequencies F]
               [--backend cpu|cuda|vulkan] [--dtype f32|f16|bf16]

Given dy, the gradient of a loss with respect to y (shaped like u), writes into DIR:
  du.npy          [B, H, L]   gradient with respect to u
  dk.npy          [H, K]      gradient with respect to k, summed over the batch (same shape
                              as the k file, so [K] when k was given as [K])
  dpregate.npy    [B, H, L]   gradient with respect to the pregate (gated runs only)
  dpostgate.npy   [B, H, L]   gradient with respect to the postgate (gated runs only)
all float32 ('<f4'). It is the exact adjoint of `fftconv conv` with the same options:
causal or circular, partial (K < L), and with --keep-frequencies only the kept frequencies
carry gradient, exactly as the forward masks them.

Inputs are .npy arrays in C order: float32 ('<f4'); float64 ('<f8') and float16 ('<f2')
are converted to f32 (big-endian variants too).

Required:
  --u PATH              input u, shape [B, H, L]
  --k PATH              filters k, shape [H, K] with 1 <= K <= L ([K] also works when H = 1)
  --dy PATH             gradient of the output, shape [B, H, L]
  --out-dir DIR         directory for the gradient files; created (with its parents) when
                        missing, after every input has been read and the gradients computed.
                        Each file is written atomically (a temporary file in DIR, synced, then
                        renamed): on an error before writing no file in DIR is touched.

Options:
  --pregate PATH        gate multiplied into u before the convolution, shaped like u
  --postgate PATH       gate multiplied into the result, shaped like u
                        (give both gates or neither)
  --circular            circular convolution with period L (default: causal, zero history)
  --keep-frequencies F  frequency-sparse convolution, 0 < F <= 1 (as for `fftconv conv`)
  --backend NAME        cpu, cuda or vulkan (default: the best available, in the order
                        cuda, vulkan, cpu; see `fftconv devices`)
  --dtype NAME          f32 (default), f16 or bf16: the element type u, the gates, dy and the
                        [B, H, L] gradients are stored in during the run (inputs are rounded
                        to it, results widened back to f32 for writing); k and dk stay f32
  -h, --help            print this help

On success, prints one JSON line on stderr like `fftconv conv`'s (fft_size, bins_kept,
blocks, backend, dtype, mode, gated, shape, filter_len, seconds: the time of the backward
pass, prepare_seconds) with out_dir and outputs (the files written) instead of out.
";

/// Usage text of `fftconv devices --help`.
pub const DEVICES_HELP: &str = "\
fftconv devices: list the compute backends

Usage:
  fftconv devices

Prints one line per backend (cuda, vulkan, cpu): its name, whether it was compiled in
(cargo features `cuda`, `vulkan`, `cpu`), and `available: DEVICE` or `unavailable: REASON`.
";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Print a usage text to stdout.
    Help(&'static str),
    Version,
    Devices,
    Conv(ConvArgs),
    Grad(GradArgs),
}

/// Arguments of `fftconv conv`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvArgs {
    pub u: PathBuf,
    pub k: PathBuf,
    /// `(pregate, postgate)`: both or neither.
    pub gates: Option<(PathBuf, PathBuf)>,
    pub circular: bool,
    pub keep_frequencies: Option<f64>,
    /// `None`: [`BackendKind::best_available`].
    pub backend: Option<BackendKind>,
    pub dtype: DType,
    pub out: PathBuf,
}

/// Arguments of `fftconv grad`.
#[derive(Debug, Clone, PartialEq)]
pub struct GradArgs {
    pub u: PathBuf,
    pub k: PathBuf,
    pub dy: PathBuf,
    /// `(pregate, postgate)`: both or neither.
    pub gates: Option<(PathBuf, PathBuf)>,
    pub circular: bool,
    pub keep_frequencies: Option<f64>,
    /// `None`: [`BackendKind::best_available`].
    pub backend: Option<BackendKind>,
    pub dtype: DType,
    pub out_dir: PathBuf,
}

/// A usage error: a one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, UsageError> {
    let args: Vec<OsString> = args.into_iter().collect();
    let Some(first) = args.first() else {
        return Err(usage(
            "missing command (expected `conv`, `grad` or `devices`; see `fftconv --help`)",
        ));
    };
    let rest = &args[1..];
    match first.to_str() {
        Some("-h" | "--help") => Ok(Command::Help(MAIN_HELP)),
        Some("-V" | "--version") => Ok(Command::Version),
        Some("help") => match rest.first().map(|a| a.to_str()) {
            None => Ok(Command::Help(MAIN_HELP)),
            Some(Some("conv")) => Ok(Command::Help(CONV_HELP)),
            Some(Some("grad")) => Ok(Command::Help(GRAD_HELP)),
            Some(Some("devices")) => Ok(Command::Help(DEVICES_HELP)),
            Some(other) => Err(usage(format!(
                "unknown command `{}` (expected conv, grad or devices)",
                lossy(other, &rest[0])
            ))),
        },
        Some("devices") => match rest.first() {
            None => Ok(Command::Devices),
            Some(a) if a == "-h" || a == "--help" => Ok(Command::Help(DEVICES_HELP)),
            Some(a) => Err(usage(format!(
                "unexpected argument `{}` for `fftconv devices` (it takes none)",
                a.to_string_lossy()
            ))),
        },
        Some("conv") => parse_conv(rest),
        Some("grad") => parse_grad(rest),
        _ => Err(usage(format!(
            "unknown command `{}` (expected conv, grad or devices; see `fftconv --help`)",
            first.to_string_lossy()
        ))),
    }
}

fn lossy(s: Option<&str>, raw: &OsStr) -> String {
    s.map(str::to_owned)
        .unwrap_or_else(|| raw.to_string_lossy().into_owned())
}

/// Flags of `conv` that take a value.
const VALUE_FLAGS: [&str; 8] = [
    "--u",
    "--k",
    "--pregate",
    "--postgate",
    "--keep-frequencies",
    "--backend",
    "--dtype",
    "--out",
];

/// Flags of `grad` that take a value.
const GRAD_VALUE_FLAGS: [&str; 9] = [
    "--u",
    "--k",
    "--dy",
    "--pregate",
    "--postgate",
    "--keep-frequencies",
    "--backend",
    "--dtype",
    "--out-dir",
];

/// The flags of one command line: values by flag, and `--circular`.
struct Flags {
    values: Vec<(&'static str, OsString)>,
    circular: bool,
    hint: &'static str,
}

/// Options both `conv` and `grad` take.
struct Common {
    circular: bool,
    keep_frequencies: Option<f64>,
    backend: Option<BackendKind>,
    dtype: DType,
}

/// Splits `args` into flag values (`value_flags` take one; `--circular` none). `Ok(None)` when
/// help was asked for.
fn collect_flags(
    args: &[OsString],
    value_flags: &[&'static str],
    hint: &'static str,
) -> Result<Option<Flags>, UsageError> {
    let mut values: Vec<(&'static str, OsString)> = Vec::new();
    let mut circular = false;
    let mut i = 0;
    while i < args.len() {
        let raw = &args[i];
        i += 1;
        let Some(arg) = raw.to_str() else {
            return Err(usage(format!(
                "unexpected argument `{}` ({hint})",
                raw.to_string_lossy()
            )));
        };
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg, None),
        };
        if name == "--circular" {
            if inline.is_some() {
                return Err(usage("--circular takes no value"));
            }
            if circular {
                return Err(usage("--circular given twice"));
            }
            circular = true;
            continue;
        }
        let Some(&flag) = value_flags.iter().find(|f| **f == name) else {
            return Err(if name.starts_with('-') {
                usage(format!("unknown flag `{name}` ({hint})"))
            } else {
                usage(format!("unexpected argument `{arg}` ({hint})"))
            });
        };
        let value = match inline {
            Some(v) => OsString::from(v),
            None => match args.get(i) {
                Some(v) if !v.to_string_lossy().starts_with("--") => {
                    i += 1;
                    v.clone()
                }
                _ => return Err(usage(format!("missing value for {flag}"))),
            },
        };
        if value.is_empty() {
            return Err(usage(format!("empty value for {flag}")));
        }
        if values.iter().any(|(f, _)| *f == flag) {
            return Err(usage(format!("{flag} given twice")));
        }
        values.push((flag, value));
    }
    Ok(Some(Flags {
        values,
        circular,
        hint,
    }))
}

impl Flags {
    fn take(&self, flag: &str) -> Option<OsString> {
        self.values
            .iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.clone())
    }

    fn text(&self, flag: &'static str) -> Result<Option<String>, UsageError> {
        match self.take(flag) {
            None => Ok(None),
            Some(v) => v.into_string().map(Some).map_err(|v| {
                usage(format!(
                    "invalid value for {flag}: `{}`",
                    v.to_string_lossy()
                ))
            }),
        }
    }

    fn required(&self, flag: &'static str) -> Result<PathBuf, UsageError> {
        self.take(flag)
            .map(PathBuf::from)
            .ok_or_else(|| usage(format!("missing required flag {flag} ({})", self.hint)))
    }

    /// Checks the values of the options (before the caller asks for the flags missing).
    fn common(&self) -> Result<Common, UsageError> {
        let keep_frequencies = match self.text("--keep-frequencies")? {
            None => None,
            Some(s) => match s.trim().parse::<f64>() {
                Ok(f) if f > 0.0 && f <= 1.0 => Some(f),
                _ => {
                    return Err(usage(format!(
                        "invalid value for --keep-frequencies: `{s}` (expected a fraction F with 0 < F <= 1)"
                    )))
                }
            },
        };
        let backend = match self.text("--backend")? {
            None => None,
            Some(s) => Some(
                s.parse::<BackendKind>()
                    .map_err(|e| usage(format!("invalid value for --backend: {e}")))?,
            ),
        };
        let dtype = match self.text("--dtype")? {
            None => DType::F32,
            Some(s) => s
                .parse::<DType>()
                .map_err(|e| usage(format!("invalid value for --dtype: {e}")))?,
        };
        Ok(Common {
            circular: self.circular,
            keep_frequencies,
            backend,
            dtype,
        })
    }

    /// Both gates or neither.
    fn gates(&self) -> Result<Option<(PathBuf, PathBuf)>, UsageError> {
        match (self.take("--pregate"), self.take("--postgate")) {
            (Some(p), Some(q)) => Ok(Some((PathBuf::from(p), PathBuf::from(q)))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(usage(
                "--pregate given without --postgate (a gated convolution needs both gates)",
            )),
            (None, Some(_)) => Err(usage(
                "--postgate given without --pregate (a gated convolution needs both gates)",
            )),
        }
    }
}

fn parse_conv(args: &[OsString]) -> Result<Command, UsageError> {
    let Some(flags) = collect_flags(args, &VALUE_FLAGS, "see `fftconv conv --help`")? else {
        return Ok(Command::Help(CONV_HELP));
    };
    let common = flags.common()?;
    let u = flags.required("--u")?;
    let k = flags.required("--k")?;
    let out = flags.required("--out")?;
    let gates = flags.gates()?;
    Ok(Command::Conv(ConvArgs {
        u,
        k,
        gates,
        circular: common.circular,
        keep_frequencies: common.keep_frequencies,
        backend: common.backend,
        dtype: common.dtype,
        out,
    }))
}

fn parse_grad(args: &[OsString]) -> Result<Command, UsageError> {
    let Some(flags) = collect_flags(args, &GRAD_VALUE_FLAGS, "see `fftconv grad --help`")? else {
        return Ok(Command::Help(GRAD_HELP));
    };
    let common = flags.common()?;
    let u = flags.required("--u")?;
    let k = flags.required("--k")?;
    let dy = flags.required("--dy")?;
    let out_dir = flags.required("--out-dir")?;
    let gates = flags.gates()?;
    Ok(Command::Grad(GradArgs {
        u,
        k,
        dy,
        gates,
        circular: common.circular,
        keep_frequencies: common.keep_frequencies,
        backend: common.backend,
        dtype: common.dtype,
        out_dir,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    fn conv(args: &[&str]) -> ConvArgs {
        match p(args) {
            Ok(Command::Conv(c)) => c,
            other => panic!("expected conv args, got {other:?}"),
        }
    }

    #[test]
    fn parses_conv_flags() {
        let c = conv(&["conv", "--u", "u.npy", "--k=k.npy", "--out", "y.npy"]);
        assert_eq!(c.u, PathBuf::from("u.npy"));
        assert_eq!(c.k, PathBuf::from("k.npy"));
        assert_eq!(c.out, PathBuf::from("y.npy"));
        assert_eq!(
            (c.gates, c.circular, c.keep_frequencies),
            (None, false, None)
        );
        assert_eq!((c.backend, c.dtype), (None, DType::F32));
        let c = conv(&[
            "conv",
            "--out",
            "y",
            "--u",
            "u",
            "--k",
            "k",
            "--pregate",
            "p",
            "--postgate",
            "q",
            "--circular",
            "--keep-frequencies",
            "0.25",
            "--backend",
            "cpu",
            "--dtype",
            "bf16",
        ]);
        assert_eq!(c.gates, Some((PathBuf::from("p"), PathBuf::from("q"))));
        assert!(c.circular);
        assert_eq!(c.keep_frequencies, Some(0.25));
        assert_eq!((c.backend, c.dtype), (Some(BackendKind::Cpu), DType::Bf16));
    }

    #[test]
    fn parses_grad_flags() {
        let g = match p(&[
            "grad",
            "--u",
            "u",
            "--k",
            "k",
            "--dy=dy",
            "--out-dir",
            "d",
            "--pregate",
            "p",
            "--postgate",
            "q",
            "--circular",
            "--keep-frequencies",
            "0.5",
            "--dtype",
            "f16",
        ]) {
            Ok(Command::Grad(g)) => g,
            other => panic!("expected grad args, got {other:?}"),
        };
        assert_eq!(
            (g.u, g.k, g.dy, g.out_dir),
            ["u", "k", "dy", "d"].map(PathBuf::from).into()
        );
        assert_eq!(g.gates, Some((PathBuf::from("p"), PathBuf::from("q"))));
        assert!(g.circular);
        assert_eq!((g.keep_frequencies, g.dtype), (Some(0.5), DType::F16));
        assert_eq!(p(&["grad", "-h"]), Ok(Command::Help(GRAD_HELP)));
        assert_eq!(p(&["help", "grad"]), Ok(Command::Help(GRAD_HELP)));
        let err = |args: &[&str]| p(args).unwrap_err().0;
        assert!(err(&["grad", "--u", "u", "--k", "k", "--out-dir", "d"])
            .contains("missing required flag --dy (see `fftconv grad --help`)"));
        assert!(err(&["grad", "--u", "u", "--k", "k", "--dy", "y"])
            .contains("missing required flag --out-dir"));
        assert!(err(&["grad", "--out", "y"]).contains("unknown flag `--out`"));
        assert!(err(&["conv", "--dy", "y"]).contains("unknown flag `--dy`"));
        assert!(err(&["grad", "--dy", "a", "--dy", "b"]).contains("--dy given twice"));
    }

    #[test]
    fn help_and_commands() {
        assert_eq!(p(&["--help"]), Ok(Command::Help(MAIN_HELP)));
        assert_eq!(p(&["help", "conv"]), Ok(Command::Help(CONV_HELP)));
        assert_eq!(p(&["conv", "--u", "u", "-h"]), Ok(Command::Help(CONV_HELP)));
        assert_eq!(p(&["devices"]), Ok(Command::Devices));
        assert_eq!(p(&["devices", "--help"]), Ok(Command::Help(DEVICES_HELP)));
        assert!(CONV_HELP.contains("N/16"));
    }

    #[test]
    fn usage_errors_are_one_line() {
        let base = ["conv", "--u", "u", "--k", "k", "--out", "y"];
        let with = |extra: &[&str]| {
            let mut v: Vec<&str> = base.to_vec();
            v.extend_from_slice(extra);
            p(&v).unwrap_err().0
        };
        assert!(p(&[]).unwrap_err().0.contains("missing command"));
        assert!(p(&["frobnicate"])
            .unwrap_err()
            .0
            .contains("unknown command"));
        assert!(p(&["devices", "x"]).is_err());
        assert!(with(&["--bogus"]).contains("unknown flag `--bogus`"));
        assert!(with(&["stray"]).contains("unexpected argument `stray`"));
        assert!(with(&["--pregate", "p"]).contains("without --postgate"));
        assert!(with(&["--postgate", "q"]).contains("without --pregate"));
        assert!(with(&["--keep-frequencies", "abc"]).contains("--keep-frequencies"));
        assert!(with(&["--keep-frequencies", "0"]).contains("0 < F <= 1"));
        assert!(with(&["--keep-frequencies", "1.5"]).contains("0 < F <= 1"));
        assert!(with(&["--keep-frequencies", "NaN"]).contains("0 < F <= 1"));
        assert!(with(&["--backend", "tpu"]).contains("unknown backend"));
        assert!(with(&["--dtype", "f64"]).contains("unknown dtype"));
        assert!(with(&["--u", "again"]).contains("--u given twice"));
        assert!(with(&["--circular", "--circular"]).contains("twice"));
        assert!(with(&["--circular=yes"]).contains("takes no value"));
        assert!(with(&["--dtype"]).contains("missing value for --dtype"));
        assert!(p(&["conv", "--u", "--k", "k", "--out", "y"])
            .unwrap_err()
            .0
            .contains("missing value for --u"));
        assert!(p(&["conv", "--u", "u", "--k", "k"])
            .unwrap_err()
            .0
            .contains("missing required flag --out"));
        assert!(with(&["--u="]).contains("empty value"));
        for msg in [with(&["--bogus"]), with(&["--pregate", "p"])] {
            assert!(!msg.contains('\n'));
        }
    }
}
