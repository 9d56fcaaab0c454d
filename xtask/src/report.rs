//! Bench results: one [`Record`] per (case, kept-frequency fraction, backend), the stdout table,
//! the JSON files and the machine header.

use conv::{ConvSpec, DType, FrequencyKeep};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// One measured (or failed) backend on one case.
#[derive(Debug, Clone)]
pub struct Record {
    pub n: usize,
    pub b: usize,
    pub h: usize,
    pub l: usize,
    pub backend: String,
    pub dtype: DType,
    pub gated: bool,
    /// Fraction of the filter's frequency bins kept (`--keep-frequencies`): 1 for a dense
    /// problem (and always for the baselines, which never skip bins).
    pub keep: f64,
    /// Real-FFT bins kept (`ConvGeometry::kept_bins`: `N/2 + 1` when dense); `None` when the
    /// problem could not be built.
    pub bins_kept: Option<usize>,
    pub times_ms: Vec<f64>,
    /// NaN when the run failed.
    pub median_ms: f64,
    /// Bytes one call moves: u read + y written (+ both gates).
    pub bytes: usize,
    pub gb_per_s: f64,
    /// Baseline median / this median (> 1: faster than the baseline). The baselines are dense,
    /// so for a sparse row this includes the speed-up of the skipped bins.
    pub ratio: Option<f64>,
    /// Sparse rows: the same backend's dense (`keep == 1`) median of the same case / this
    /// median, when that dense row was measured in the same run.
    pub vs_dense: Option<f64>,
    /// This median / the memory floor (bytes over the backend's measured copy bandwidth).
    pub floor_ratio: Option<f64>,
    /// Max over sampled rows of the relative L2 error (NaN: NaN output or no result).
    pub max_rel_err: f64,
    pub tolerance: f64,
    pub ok: bool,
    pub error: Option<String>,
}

fn median(times: &[f64]) -> f64 {
    let mut v = times.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

impl Record {
    pub fn measured(
        n: usize,
        spec: &ConvSpec,
        backend: &str,
        times_ms: Vec<f64>,
        max_rel_err: f64,
        tolerance: f64,
    ) -> Self {
        let median_ms = median(&times_ms);
        let bytes = spec.io_bytes();
        let keep = keep_fraction(spec);
        Record {
            n,
            b: spec.batch(),
            h: spec.channels(),
            l: spec.length(),
            backend: backend.to_string(),
            dtype: spec.dtype(),
            gated: spec.gated(),
            keep,
            bins_kept: Some(spec.geometry().kept_bins),
            times_ms,
            median_ms,
            bytes,
            gb_per_s: bytes as f64 / (median_ms * 1e-3) / 1e9,
            ratio: None,
            vs_dense: None,
            floor_ratio: None,
            max_rel_err,
            tolerance,
            // NaN compares false: a NaN error fails.
            ok: max_rel_err <= tolerance,
            error: None,
        }
    }

    /// A failed run of a dense problem; [`Record::with_keep`] sets a sparse one's fraction.
    #[allow(clippy::too_many_arguments)]
    pub fn failed(
        n: usize,
        b: usize,
        h: usize,
        l: usize,
        backend: &str,
        dtype: DType,
        gated: bool,
        error: String,
    ) -> Self {
        Record {
            n,
            b,
            h,
            l,
            backend: backend.to_string(),
            dtype,
            gated,
            keep: 1.0,
            bins_kept: None,
            times_ms: Vec::new(),
            median_ms: f64::NAN,
            bytes: 0,
            gb_per_s: f64::NAN,
            ratio: None,
            vs_dense: None,
            floor_ratio: None,
            max_rel_err: f64::NAN,
            tolerance: crate::bench::tolerance(dtype),
            ok: false,
            error: Some(error),
        }
    }

    /// Sets the kept fraction and bins (of a failed record, whose problem may not exist).
    pub fn with_keep(mut self, keep: f64, bins_kept: Option<usize>) -> Self {
        self.keep = keep;
        self.bins_kept = bins_kept;
        self
    }

    /// Whether this row is a dense problem (`--keep-frequencies 1`).
    pub fn is_dense(&self) -> bool {
        self.keep == 1.0
    }

    fn to_json(&self) -> Value {
        let num = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
        json!({
            "n": self.n,
            "b": self.b,
            "h": self.h,
            "l": self.l,
            "k": self.l,
            "backend": self.backend,
            "dtype": self.dtype.name(),
            "gated": self.gated,
            "keep_frequencies": self.keep,
            "bins_kept": self.bins_kept,
            "bins_total": self.n / 2 + 1,
            "reps": self.times_ms.len(),
            "times_ms": self.times_ms,
            "median_ms": num(self.median_ms),
            "bytes": self.bytes,
            "gb_per_s": num(self.gb_per_s),
            "ratio_vs_baseline": self.ratio.map_or(Value::Null, num),
            "speedup_vs_dense": self.vs_dense.map_or(Value::Null, num),
            "ratio_to_floor": self.floor_ratio.map_or(Value::Null, num),
            "max_rel_err": num(self.max_rel_err),
            "tolerance": self.tolerance,
            "ok": self.ok,
            "error": self.error,
        })
    }
}

/// The kept fraction a problem was built with (1: dense).
pub fn keep_fraction(spec: &ConvSpec) -> f64 {
    match spec.keep() {
        FrequencyKeep::All => 1.0,
        FrequencyKeep::LowestFraction(f) => f,
    }
}

/// Sets every record's ratio to its case's baseline (same N, dtype, gating): the dense
/// baseline for every kept fraction, since the baselines never skip bins; and every sparse
/// row's [`Record::vs_dense`]: the same backend's dense median over its own.
///
/// A backward row (`<backend>:bw`) and a filter-preparation row (`<backend>:filter`) are
/// compared with that backend's forward of the same kept fraction instead.
pub fn fill_ratios(records: &mut [Record]) {
    let references: Vec<(usize, DType, bool, String, f64, f64)> = records
        .iter()
        .filter(|r| r.median_ms.is_finite())
        .map(|r| {
            (
                r.n,
                r.dtype,
                r.gated,
                r.backend.clone(),
                r.keep,
                r.median_ms,
            )
        })
        .collect();
    for r in records.iter_mut() {
        if !r.median_ms.is_finite() {
            continue;
        }
        // `<backend>:bw` and `:filter` rows: against that backend's forward; CUDA rows:
        // against cuFFT when the run has it; everything else: against the CPU baseline.
        let has_cufft = references.iter().any(|(n, d, g, who, ..)| {
            (*n, *d, *g, who.as_str()) == (r.n, r.dtype, r.gated, "cufft")
        });
        let (reference, keep) = match forward_of(&r.backend) {
            Some(fwd) => (fwd, r.keep),
            None if r.backend == "cuda" && has_cufft => ("cufft", 1.0),
            None => ("baseline", 1.0),
        };
        r.ratio = references
            .iter()
            .find(|(n, d, g, who, k, _)| {
                (*n, *d, *g, who.as_str(), *k) == (r.n, r.dtype, r.gated, reference, keep)
            })
            .map(|&(.., base)| base / r.median_ms);
        // Sparse rows also against the same backend's (forward or `:bw`) dense row.
        if !r.is_dense() {
            r.vs_dense = references
                .iter()
                .find(|(n, d, g, who, k, _)| {
                    (*n, *d, *g, who, *k) == (r.n, r.dtype, r.gated, &r.backend, 1.0)
                })
                .map(|&(.., base)| base / r.median_ms);
        }
    }
}

/// The backend of a backward (`<backend>:bw`) or filter-preparation (`<backend>:filter`) row.
fn forward_of(backend: &str) -> Option<&str> {
    backend
        .strip_suffix(":bw")
        .or_else(|| backend.strip_suffix(":filter"))
}

/// ` keep F` for a sparse fraction, empty for 1 (dense): progress and error lines.
pub fn keep_suffix(keep: f64) -> String {
    if keep < 1.0 {
        format!(" keep {}", fraction(keep))
    } else {
        String::new()
    }
}

/// A kept fraction for the table: `1`, `0.25`, at most 4 decimals.
pub fn fraction(f: f64) -> String {
    let s = format!("{f}");
    if s.len() <= 6 {
        s
    } else {
        let s = format!("{f:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Fills [`Record::floor_ratio`]: `bandwidth` maps a backend name (`cpu`, `vulkan`, ...) to its
/// copy bandwidth in bytes/s; the baseline runs on the CPU, `<backend>:bw` and `:filter` rows
/// on `<backend>`.
pub fn fill_floor_ratios(records: &mut [Record], bandwidth: &[(String, f64)]) {
    for r in records.iter_mut() {
        let name = match r.backend.as_str() {
            "baseline" => "cpu",
            "cufft" => "cuda",
            other => forward_of(other).unwrap_or(other),
        };
        let bw = bandwidth.iter().find(|(b, _)| b == name).map(|&(_, bw)| bw);
        r.floor_ratio = bw
            .filter(|_| r.median_ms.is_finite() && r.bytes > 0)
            .map(|bw| r.median_ms * 1e-3 / (r.bytes as f64 / bw));
    }
}

/// `1M`, `4K`, or the number.
pub fn human(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

/// The result table (fixed-width text), then any error messages.
pub fn table(records: &[Record]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>6} {:>5} {:>4} {:>6} {:>13} {:>5} {:>6} {:>7} {:>10} {:>7} {:>8} {:>8} {:>8} {:>11} {:>6}",
        "N",
        "B",
        "H",
        "L",
        "backend",
        "dtype",
        "keep",
        "bins",
        "median ms",
        "GB/s",
        "x floor",
        "vs base",
        "vs dense",
        "max rel err",
        "status"
    );
    let _ = writeln!(s, "{}", "-".repeat(125));
    let mut last_case = None;
    for r in records {
        let case = (r.n, r.dtype);
        if last_case.is_some_and(|c| c != case) {
            let _ = writeln!(s);
        }
        last_case = Some(case);
        let opt = |x: f64, prec: usize| {
            if x.is_finite() {
                format!("{x:.prec$}")
            } else {
                "-".into()
            }
        };
        let _ = writeln!(
            s,
            "{:>6} {:>5} {:>4} {:>6} {:>13} {:>5} {:>6} {:>7} {:>10} {:>7} {:>8} {:>8} {:>8} {:>11} {:>6}",
            human(r.n),
            r.b,
            r.h,
            human(r.l),
            r.backend,
            r.dtype.name(),
            fraction(r.keep),
            r.bins_kept.map_or("-".into(), |b| b.to_string()),
            opt(r.median_ms, 3),
            opt(r.gb_per_s, 2),
            r.floor_ratio.map_or("-".into(), |x| format!("{x:.1}x")),
            r.ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            r.vs_dense.map_or("-".into(), |x| format!("{x:.2}x")),
            if r.max_rel_err.is_nan() {
                "NaN".into()
            } else {
                format!("{:.2e}", r.max_rel_err)
            },
            if r.ok { "ok" } else { "FAIL" },
        );
    }
    let errors: Vec<&Record> = records.iter().filter(|r| r.error.is_some()).collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "\nerrors:");
        for r in errors {
            let _ = writeln!(
                s,
                "  N={} {} {}{}: {}",
                human(r.n),
                r.backend,
                r.dtype,
                keep_suffix(r.keep),
                r.error.as_deref().unwrap_or_default()
            );
        }
    }
    s
}

/// The workspace target directory: `CARGO_TARGET_DIR`, else `target` at the workspace root.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            manifest
                .parent()
                .map_or_else(|| manifest.join("target"), |root| root.join("target"))
        }
    }
}

/// Writes the records as one JSON array to `target/bench/bench-<unix-time>.json` and
/// `target/bench/latest.json`; returns both paths.
pub fn write_json(records: &[Record]) -> std::io::Result<(PathBuf, PathBuf)> {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let array = Value::Array(records.iter().map(Record::to_json).collect());
    let text = serde_json::to_string_pretty(&array).map_err(std::io::Error::other)?;
    let stamped = dir.join(format!("bench-{}.json", unix_time()));
    let latest = dir.join("latest.json");
    std::fs::write(&stamped, &text)?;
    std::fs::write(&latest, &text)?;
    Ok((stamped, latest))
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a unix time (proleptic Gregorian calendar).
pub fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            matches!(
                key.trim(),
                "model name" | "Model" | "Hardware" | "cpu model"
            )
            .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| format!("unknown CPU ({})", std::env::consts::ARCH))
}

/// Machine, thread count and date.
pub fn machine_header() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "cargo xtask bench\nmachine: {} ({} logical CPUs), {} rayon threads\ndate: {}",
        cpu_model(),
        cores,
        backend_cpu::threads(),
        utc_date(unix_time())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(human(1 << 20), "1M");
        assert_eq!(human(4096), "4K");
        assert_eq!(human(128), "128");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn failures_and_ratios() {
        let spec = ConvSpec::builder(2, 3, 64, 64).build().unwrap();
        let mut rs = vec![
            Record::measured(128, &spec, "baseline", vec![2.0], 1e-7, 1e-5),
            Record::measured(128, &spec, "cpu", vec![1.0], f64::NAN, 1e-5),
            Record::failed(128, 2, 3, 64, "cuda", DType::F32, false, "boom".into()),
        ];
        fill_ratios(&mut rs);
        assert_eq!(rs[1].ratio, Some(2.0));
        assert!(rs[0].ok && !rs[1].ok && !rs[2].ok);
        let t = table(&rs);
        assert!(t.contains("FAIL") && t.contains("NaN") && t.contains("boom"));
        assert_eq!(rs[1].to_json()["max_rel_err"], Value::Null);
    }

    #[test]
    fn sparse_rows_compare_with_the_dense_baseline_and_dense_row() {
        let dense = ConvSpec::builder(2, 3, 2048, 2048).build().unwrap();
        let sparse = ConvSpec::builder(2, 3, 2048, 2048)
            .keep_frequencies(0.25)
            .build()
            .unwrap();
        let mut rs = vec![
            Record::measured(4096, &dense, "baseline", vec![8.0], 1e-7, 1e-5),
            Record::measured(4096, &dense, "cpu", vec![4.0], 1e-7, 1e-5),
            Record::measured(4096, &dense, "cpu:bw", vec![10.0], 1e-7, 1e-5),
            Record::measured(4096, &sparse, "cpu", vec![2.0], 1e-7, 1e-5),
            Record::measured(4096, &sparse, "cpu:bw", vec![4.0], 1e-7, 1e-5),
            // A sparse row without its dense row in the run.
            Record::measured(4096, &sparse, "vulkan", vec![1.0], 1e-7, 1e-5),
            Record::failed(4096, 2, 3, 2048, "cuda", DType::F32, false, "boom".into())
                .with_keep(0.25, Some(512)),
            Record::measured(4096, &dense, "cpu:filter", vec![16.0], 1e-7, 1e-5),
        ];
        fill_ratios(&mut rs);
        // A filter-preparation row: against its backend's forward too.
        assert_eq!(rs[7].ratio, Some(0.25));
        assert_eq!((rs[1].keep, rs[1].bins_kept), (1.0, Some(2049)));
        assert_eq!((rs[3].keep, rs[3].bins_kept), (0.25, Some(512)));
        // vs base: the dense baseline for every fraction; `:bw` against the same fraction's forward.
        assert_eq!(rs[3].ratio, Some(4.0));
        assert_eq!(rs[4].ratio, Some(0.5));
        assert_eq!(rs[2].ratio, Some(0.4));
        // vs dense: the same backend's dense row, forward and backward.
        assert_eq!((rs[3].vs_dense, rs[4].vs_dense), (Some(2.0), Some(2.5)));
        assert_eq!(
            (rs[1].vs_dense, rs[5].vs_dense, rs[6].vs_dense),
            (None, None, None)
        );
        let t = table(&rs);
        assert!(t.contains("vs dense") && t.contains("0.25") && t.contains("keep 0.25: boom"));
        let j = rs[3].to_json();
        assert_eq!(
            (
                j["keep_frequencies"].as_f64(),
                j["bins_kept"].as_u64(),
                j["speedup_vs_dense"].as_f64()
            ),
            (Some(0.25), Some(512), Some(2.0))
        );
        assert_eq!(rs[1].to_json()["keep_frequencies"].as_f64(), Some(1.0));
        assert_eq!(fraction(1.0), "1");
        assert_eq!(fraction(1.0 / 3.0), "0.3333");
    }
}
