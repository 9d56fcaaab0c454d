//! Hand-rolled argument parsing for `cargo xtask bench`.

use conv::{BackendKind, DType, FftSize};

pub const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  bench           forward-convolution benchmark sweep (causal, K = L = N/2 for FFT size N)
  device-bundle   build tests, fftconv and xtask with every backend into .device/ with a
                  run.sh that checks and times everything on the GPU machine in one command
  help            this message

bench options:
  --sizes LIST     FFT sizes N: a list `256,4K,1M` or a range `256..1M` (every power of two
                   in it); suffixes K = 2^10, M = 2^20. Default 256..1M.
  --dtype LIST     I/O dtypes, from f32, f16, bf16. Default f32.
  --backend LIST   backends, from cpu, cuda, vulkan, or `all` (default): unavailable ones are
                   skipped with the reason. The CPU realfft baseline always runs too.
  --gated          gated problems (pre- and post-gate, both [B, H, L]).
  --circular       circular problems with L = K = N (ThunderKittens' case: `--circular
                   --dtype bf16 --sizes 4K --shape 16x1024`) instead of causal L = K = N/2.
  --backward       also time the backward pass (du, dk and, gated, the gate gradients) on
                   backends that have one: rows `<backend>:bw`, whose `vs base` column is
                   that backend's forward time / its backward time (0.40x: backward costs
                   2.5x the forward; a sparse row against the forward of the same fraction);
                   du is checked on sampled rows.
  --filter         also time the filter preparation from a k already on the backend
                   (`prepare_filter_device`: what a training loop that updates k every step
                   pays): rows `<backend>:filter`, bytes = k read + the half spectrum written;
                   the forward with that spectrum is checked on sampled rows.
  --keep-frequencies LIST
                   frequency-sparse problems: fractions F in (0, 1] of the filter's real-FFT
                   bins to keep (ConvSpec::builder(..).keep_frequencies(F): ceil(F * N/2) bins
                   rounded up to a multiple of N/16; all N/2 + 1 when that reaches N/2).
                   Default 1 (dense only). Every backend row runs once per fraction, e.g.
                   `1,0.25` to measure the speed-up at 75% sparsity; columns `keep` (F) and
                   `bins` (the bins kept). The baselines (realfft, cufft) always run dense, so
                   the `vs base` of a sparse row is the dense baseline time / the sparse time;
                   `vs dense` is the same backend's dense (F = 1) time of that size and dtype /
                   the sparse time (rows `<backend>:bw` against the dense backward), when
                   that F = 1 row is in the same run.
  --mb MB          bytes each case moves (u read + y written + gates), in MB (10^6 bytes);
                   sets B*H. Default 256 (the default sweep takes about 30 s on 2 cores).
  --anchors        the shapes of ../shared/ANCHORS.md (FlashFFTConv's benchmark: B x H =
                   64x768 at 256..4K, 32x768 at 16K, 8x768 at 64K, 8x192 at 256K, 8x48 at 1M,
                   8x16 at 4M; sizes default to those eight), so times compare with its table
                   directly; sizes outside the table keep the --mb shape.
  --shape BxH      this B x H at every size (overrides --mb and --anchors).
  --reps N         timed runs per case after one warm-up; the median is reported. Default 5
                   (3 when the warm-up alone takes over a second).
  --quick          a quick sweep: sizes 256..64K, --mb 16, --reps 3 (explicit options win).

Shapes: rows = B*H = MB / (streams * L * dtype bytes), H = min(768, rows / min(8, rows)), B = rows / H
(FlashFFTConv's shapes: long sizes shrink H, not B).
Every result is checked against an f64 direct convolution on a few sampled rows (sparse
problems: the f64 band-limited reference with exactly the kept bins, as conv::reference
defines it); an error above the dtype tolerance (f32 1e-5, f16 2e-3, bf16 1.5e-2) or a NaN
is marked FAIL and makes the command exit non-zero. Results also go to
target/bench/latest.json (fields keep_frequencies, bins_kept, speedup_vs_dense included).
GPU backends: cargo run --release -p xtask --features cuda,vulkan -- bench ...
";

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub sizes: Vec<usize>,
    pub dtypes: Vec<DType>,
    pub backends: Vec<BackendKind>,
    pub gated: bool,
    /// Circular problems, `L = K = N`.
    pub circular: bool,
    /// Also time the backward pass.
    pub backward: bool,
    /// Also time the filter preparation from a backend-resident `k`.
    pub filter: bool,
    pub mb: f64,
    /// Fractions of the filter's frequency bins to keep (1: dense), each in `(0, 1]`.
    pub keep_frequencies: Vec<f64>,
    /// `None`: 5, or 3 for cases whose warm-up takes over a second.
    pub reps: Option<usize>,
    /// How B and H are chosen per size.
    pub shape: ShapeRule,
}

/// How a case's `B x H` is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeRule {
    /// About `--mb` MB per call ([`crate::bench::shape`]).
    Budget,
    /// `../shared/ANCHORS.md`'s shapes where it lists the size ([`anchor_shape`]).
    Anchors,
    /// The same `B x H` at every size.
    Fixed(usize, usize),
}

/// FlashFFTConv's benchmark shapes (`../shared/ANCHORS.md`): `(N, B, H)`, causal, L = N/2.
pub const ANCHOR_SHAPES: [(usize, usize, usize); 8] = [
    (256, 64, 768),
    (1 << 10, 64, 768),
    (1 << 12, 64, 768),
    (1 << 14, 32, 768),
    (1 << 16, 8, 768),
    (1 << 18, 8, 192),
    (1 << 20, 8, 48),
    (1 << 22, 8, 16),
];

/// `B, H` of FFT size `n` in [`ANCHOR_SHAPES`].
pub fn anchor_shape(n: usize) -> Option<(usize, usize)> {
    ANCHOR_SHAPES
        .iter()
        .find(|(size, _, _)| *size == n)
        .map(|&(_, b, h)| (b, h))
}

pub const DEFAULT_MB: f64 = 256.0;
pub const QUICK_MB: f64 = 16.0;
pub const DEFAULT_REPS: usize = 5;
pub const REDUCED_REPS: usize = 3;

impl BenchOptions {
    /// Parses the options after `bench`; `Ok(None)` for `--help`.
    pub fn parse(args: &[String]) -> Result<Option<Self>, String> {
        let mut sizes = None;
        let mut dtypes = None;
        let mut backends = None;
        let mut gated = false;
        let mut circular = false;
        let mut backward = false;
        let mut filter = false;
        let mut mb = None;
        let mut reps = None;
        let mut keep_frequencies = None;
        let mut quick = false;
        let mut anchors = false;
        let mut fixed = None;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            // Accept both `--opt value` and `--opt=value`.
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{name} needs a value")),
                }
            };
            match name {
                "--sizes" | "--size" => sizes = Some(parse_sizes(&value(name)?)?),
                "--dtype" | "--dtypes" => dtypes = Some(parse_list(&value(name)?, "dtype")?),
                "--backend" | "--backends" => backends = Some(parse_backends(&value(name)?)?),
                "--gated" => gated = true,
                "--circular" => circular = true,
                "--backward" => backward = true,
                "--filter" => filter = true,
                "--mb" => {
                    let v = value(name)?;
                    let x: f64 = v.parse().map_err(|_| format!("--mb: bad number `{v}`"))?;
                    if !(x > 0.0 && x.is_finite()) {
                        return Err(format!("--mb must be positive, got {v}"));
                    }
                    mb = Some(x);
                }
                "--reps" => {
                    let v = value(name)?;
                    let n: usize = v.parse().map_err(|_| format!("--reps: bad count `{v}`"))?;
                    if n == 0 {
                        return Err("--reps must be at least 1".into());
                    }
                    reps = Some(n);
                }
                "--keep-frequencies" | "--keep-frequency" => {
                    keep_frequencies = Some(parse_fractions(&value(name)?)?)
                }
                "--quick" => quick = true,
                "--anchors" => anchors = true,
                "--shape" => {
                    let v = value(name)?;
                    let parsed = v.split_once(['x', 'X']).and_then(|(b, h)| {
                        Some((
                            b.trim().parse::<usize>().ok()?,
                            h.trim().parse::<usize>().ok()?,
                        ))
                    });
                    match parsed {
                        Some((b, h)) if b > 0 && h > 0 => fixed = Some((b, h)),
                        _ => {
                            return Err(format!("--shape: expected BxH such as 16x1024, got `{v}`"))
                        }
                    }
                }
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown option `{other}`")),
            }
        }
        let default_sizes = if quick { "256..64K" } else { "256..1M" };
        let shape = match (fixed, anchors) {
            (Some((b, h)), _) => ShapeRule::Fixed(b, h),
            (None, true) => ShapeRule::Anchors,
            (None, false) => ShapeRule::Budget,
        };
        Ok(Some(BenchOptions {
            sizes: match sizes {
                Some(s) => s,
                None if anchors => ANCHOR_SHAPES.iter().map(|&(n, _, _)| n).collect(),
                None => parse_sizes(default_sizes)?,
            },
            dtypes: dtypes.unwrap_or_else(|| vec![DType::F32]),
            backends: backends.unwrap_or_else(|| all_backends().to_vec()),
            gated,
            circular,
            backward,
            filter,
            mb: mb.unwrap_or(if quick { QUICK_MB } else { DEFAULT_MB }),
            keep_frequencies: keep_frequencies.unwrap_or_else(|| vec![1.0]),
            reps: reps.or(if quick { Some(REDUCED_REPS) } else { None }),
            shape,
        }))
    }
}

/// Backends in the order the table lists them.
pub fn all_backends() -> [BackendKind; 3] {
    [BackendKind::Cpu, BackendKind::Cuda, BackendKind::Vulkan]
}

/// A comma-separated list, duplicates dropped (first occurrence kept).
fn parse_list<T>(s: &str, what: &str) -> Result<Vec<T>, String>
where
    T: std::str::FromStr<Err = String> + PartialEq,
{
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let x: T = part.to_ascii_lowercase().parse()?;
        if !out.contains(&x) {
            out.push(x);
        }
    }
    if out.is_empty() {
        return Err(format!("empty {what} list"));
    }
    Ok(out)
}

fn parse_backends(s: &str) -> Result<Vec<BackendKind>, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(all_backends().to_vec());
    }
    parse_list(s, "backend")
}

/// `--keep-frequencies`: comma-separated fractions in `(0, 1]`, duplicates dropped (first
/// occurrence kept), e.g. `1,0.25`.
pub fn parse_fractions(s: &str) -> Result<Vec<f64>, String> {
    let mut out: Vec<f64> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let f: f64 = part
            .parse()
            .map_err(|_| format!("--keep-frequencies: bad fraction `{part}`"))?;
        // NaN compares false: rejected here too.
        if !(f > 0.0 && f <= 1.0) {
            return Err(format!(
                "--keep-frequencies: `{part}` is not a fraction F with 0 < F <= 1"
            ));
        }
        if !out.contains(&f) {
            out.push(f);
        }
    }
    if out.is_empty() {
        return Err("empty --keep-frequencies list".into());
    }
    Ok(out)
}

/// `4096`, `4K`, `4k`, `1M`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1usize << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1usize << 20),
        _ => (s, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("bad size `{s}` (expected e.g. 4096, 4K or 1M)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// FFT sizes: `a,b,c` or `lo..hi` (powers of two from `lo` to `hi`, inclusive).
pub fn parse_sizes(s: &str) -> Result<Vec<usize>, String> {
    let sizes = if let Some((lo, hi)) = s.split_once("..") {
        let (lo, hi) = (parse_size(lo)?, parse_size(hi.trim_start_matches('='))?);
        if lo > hi {
            return Err(format!("empty size range `{s}`"));
        }
        let mut n = lo.max(1).next_power_of_two();
        let mut v = Vec::new();
        while n <= hi {
            v.push(n);
            n *= 2;
        }
        v
    } else {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_size)
            .collect::<Result<Vec<_>, _>>()?
    };
    if sizes.is_empty() {
        return Err(format!("no FFT sizes in `{s}`"));
    }
    for &n in &sizes {
        FftSize::new(n).map_err(|e| format!("FFT size {n}: {e}"))?;
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sizes_parse_lists_ranges_and_suffixes() {
        assert_eq!(parse_sizes("256,4K,1M").unwrap(), vec![256, 4096, 1 << 20]);
        assert_eq!(parse_sizes("256..2k").unwrap(), vec![256, 512, 1024, 2048]);
        assert_eq!(parse_sizes("256..1M").unwrap().len(), 13);
        assert!(parse_sizes("1000").is_err());
        assert!(parse_sizes("4K..1K").is_err());
        assert!(parse_sizes("x").is_err());
    }

    #[test]
    fn options_parse() {
        let o = BenchOptions::parse(&strings(&[
            "--sizes",
            "4K",
            "--dtype=f16,bf16",
            "--backend",
            "all",
            "--gated",
            "--reps",
            "2",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(o.sizes, vec![4096]);
        assert_eq!(o.dtypes, vec![DType::F16, DType::Bf16]);
        assert_eq!(o.backends.len(), 3);
        assert!(o.gated);
        assert!(!o.filter);
        assert_eq!(o.reps, Some(2));
        assert_eq!(o.mb, DEFAULT_MB);
        assert_eq!(o.keep_frequencies, vec![1.0]);
        let q = BenchOptions::parse(&strings(&["--quick"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (q.mb, q.reps, q.sizes.len()),
            (QUICK_MB, Some(REDUCED_REPS), 9)
        );
        assert_eq!(o.shape, ShapeRule::Budget);
        assert!(!o.circular);
        let c = BenchOptions::parse(&strings(&["--circular"]))
            .unwrap()
            .unwrap();
        assert!(c.circular);
        let f = BenchOptions::parse(&strings(&["--filter"]))
            .unwrap()
            .unwrap();
        assert!(f.filter);
        let a = BenchOptions::parse(&strings(&["--anchors"]))
            .unwrap()
            .unwrap();
        assert_eq!((a.shape, a.sizes.len()), (ShapeRule::Anchors, 8));
        assert_eq!(anchor_shape(1 << 14), Some((32, 768)));
        assert_eq!(anchor_shape(512), None);
        let f = BenchOptions::parse(&strings(&["--anchors", "--shape=16x1024"]))
            .unwrap()
            .unwrap();
        assert_eq!(f.shape, ShapeRule::Fixed(16, 1024));
        assert!(BenchOptions::parse(&strings(&["--shape", "16"])).is_err());
        assert!(BenchOptions::parse(&strings(&["--shape", "0x4"])).is_err());
        assert!(BenchOptions::parse(&strings(&["--bogus"])).is_err());
        assert!(BenchOptions::parse(&strings(&["--mb"])).is_err());
        assert!(BenchOptions::parse(&strings(&["--dtype", "f64"])).is_err());
        assert!(BenchOptions::parse(&strings(&["--help"]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn keep_frequencies_parse() {
        assert_eq!(parse_fractions("1,0.25").unwrap(), vec![1.0, 0.25]);
        assert_eq!(parse_fractions(" 0.5 ").unwrap(), vec![0.5]);
        // Duplicates dropped (also when spelled differently), first occurrence kept.
        assert_eq!(
            parse_fractions("0.25,1,.25,1.0,0.250").unwrap(),
            vec![0.25, 1.0]
        );
        assert_eq!(parse_fractions("1e-3").unwrap(), vec![0.001]);
        for bad in [
            "0", "0.0", "-0.25", "1.5", "NaN", "nan", "inf", "", " , ", "x", "0.25,0",
        ] {
            assert!(parse_fractions(bad).is_err(), "`{bad}` accepted");
        }
        let o = BenchOptions::parse(&strings(&["--keep-frequencies", "1,0.25,1"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.keep_frequencies, vec![1.0, 0.25]);
        let o = BenchOptions::parse(&strings(&["--keep-frequencies=0.5", "--quick"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.keep_frequencies, vec![0.5]);
        for bad in ["0", "1.5", "NaN", ""] {
            let r = BenchOptions::parse(&strings(&["--keep-frequencies", bad]));
            assert!(r.is_err(), "--keep-frequencies `{bad}` accepted");
        }
        assert!(BenchOptions::parse(&strings(&["--keep-frequencies"])).is_err());
    }
}
