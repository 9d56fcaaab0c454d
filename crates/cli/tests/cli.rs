//! End-to-end tests of the `fftconv` binary against the f64 oracle.

use cli::npy;
use conv::reference::{reference_forward, relative_l2_error};
use conv::{ConvSpec, DType};
use rand::SeedableRng;
use std::path::PathBuf;

mod support;

use support::*;

struct Case {
    b: usize,
    h: usize,
    l: usize,
    k: usize,
    gated: bool,
    circular: bool,
    dtype: DType,
    keep: Option<f64>,
}

impl Case {
    fn new() -> Case {
        Case {
            b: 2,
            h: 3,
            l: 100,
            k: 40,
            gated: false,
            circular: false,
            dtype: DType::F32,
            keep: None,
        }
    }

    fn spec(&self) -> ConvSpec {
        let mut b = ConvSpec::builder(self.b, self.h, self.l, self.k)
            .dtype(self.dtype)
            .gated(self.gated);
        if self.circular {
            b = b.circular();
        }
        if let Some(f) = self.keep {
            b = b.keep_frequencies(f);
        }
        b.build().unwrap()
    }

    /// Runs the binary on random inputs; returns the relative L2 error against the oracle and
    /// the parsed JSON report.
    fn run(&self, seed: u64) -> (f64, serde_json::Value) {
        let dir = TempDir::new("roundtrip");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let io_shape = [self.b, self.h, self.l];
        let n = self.b * self.h * self.l;
        let u = random(&mut rng, n, 1.0);
        let k = random(&mut rng, self.h * self.k, 1.0 / (self.k as f32).sqrt());
        save(&dir.path("u.npy"), &io_shape, &u);
        save(&dir.path("k.npy"), &[self.h, self.k], &k);
        let (u_path, k_path, y_path) = (dir.path("u.npy"), dir.path("k.npy"), dir.path("y.npy"));
        let (p_path, q_path) = (dir.path("p.npy"), dir.path("q.npy"));
        let dtype = self.dtype.name();
        let keep = self.keep.map(|f| f.to_string());
        let mut args: Vec<Arg> = vec![
            &"conv",
            &"--u",
            &u_path,
            &"--k",
            &k_path,
            &"--out",
            &y_path,
            &"--dtype",
            &dtype,
            &"--backend",
            &"cpu",
        ];
        let gates = self.gated.then(|| {
            let p = random(&mut rng, n, 1.0);
            let q = random(&mut rng, n, 1.0);
            save(&p_path, &io_shape, &p);
            save(&q_path, &io_shape, &q);
            (p, q)
        });
        if self.gated {
            args.extend([&"--pregate" as Arg, &p_path, &"--postgate", &q_path]);
        }
        if self.circular {
            args.push(&"--circular");
        }
        if let Some(f) = &keep {
            args.extend([&"--keep-frequencies" as Arg, f]);
        }
        let out = fftconv(&args);
        let lines = stderr_lines(&out);
        assert!(out.status.success(), "fftconv failed: {lines:?}");
        assert_eq!(lines.len(), 1, "exactly one JSON line on stderr: {lines:?}");
        let report: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(dir.listing(), {
            let mut v = vec!["k.npy", "u.npy", "y.npy"];
            if self.gated {
                v.extend(["p.npy", "q.npy"]);
            }
            v.sort();
            v
        });

        let y = npy::read(&y_path).unwrap();
        assert_eq!(y.shape, io_shape);
        assert_eq!(y.dtype, npy::NpyDType::F32);

        let spec = self.spec();
        let round =
            |x: &[f32]| -> Vec<f64> { x.iter().map(|&v| self.dtype.round_f64(v as f64)).collect() };
        let k64: Vec<f64> = k.iter().map(|&v| v as f64).collect();
        let gates64 = gates.as_ref().map(|(p, q)| (round(p), round(q)));
        let want = reference_forward(
            &spec,
            &round(&u),
            &k64,
            gates64.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice())),
        );
        let got: Vec<f64> = y.data.iter().map(|&v| v as f64).collect();

        let g = spec.geometry();
        assert_eq!(report["fft_size"], g.n());
        assert_eq!(report["bins_kept"], g.kept_bins);
        assert_eq!(report["bins_total"], g.n() / 2 + 1);
        assert_eq!(report["blocks"], g.blocks);
        assert_eq!(report["backend"], "cpu");
        assert_eq!(report["dtype"], dtype);
        assert_eq!(report["shape"], serde_json::json!(io_shape));
        assert_eq!(report["filter_len"], self.k);
        assert!(report["seconds"].as_f64().is_some_and(|s| s >= 0.0));
        (relative_l2_error(&got, &want), report)
    }
}

#[test]
fn round_trip_f32_causal() {
    let (err, _) = Case::new().run(1);
    assert!(err < 1e-5, "relative L2 error {err}");
}

#[test]
fn round_trip_gated() {
    let (err, _) = Case {
        gated: true,
        ..Case::new()
    }
    .run(2);
    assert!(err < 1e-5, "relative L2 error {err}");
}

#[test]
fn round_trip_circular() {
    let (err, report) = Case {
        circular: true,
        ..Case::new()
    }
    .run(3);
    assert!(err < 1e-5, "relative L2 error {err}");
    assert_eq!(report["mode"], "circular");
}

#[test]
fn round_trip_f16_sparse() {
    let case = Case {
        dtype: DType::F16,
        keep: Some(0.25),
        ..Case::new()
    };
    let spec = case.spec();
    let g = spec.geometry();
    assert!(g.is_sparse(), "the test wants a frequency-sparse problem");
    let (err, report) = case.run(4);
    assert!(err < 2e-3, "relative L2 error {err}");
    assert_eq!(report["bins_kept"], g.kept_bins);
    assert!(report["bins_kept"].as_u64().unwrap() < report["bins_total"].as_u64().unwrap());
}

#[test]
fn round_trip_bf16_gated_circular() {
    let (err, _) = Case {
        dtype: DType::Bf16,
        gated: true,
        circular: true,
        ..Case::new()
    }
    .run(5);
    assert!(err < 1.5e-2, "relative L2 error {err}");
}

#[test]
fn accepts_f64_input_and_1d_filter() {
    let dir = TempDir::new("f64");
    // u: [1, 1, 4] as little-endian f64, written by hand (numpy's layout, version 1.0).
    let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1, 4), }";
    let mut header = dict.to_string();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for x in [1.0f64, 2.0, 3.0, 4.0] {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dir.path("u.npy"), bytes).unwrap();
    save(&dir.path("k.npy"), &[2], &[1.0, 1.0]);
    let out = fftconv(&[
        &"conv",
        &"--u",
        &dir.path("u.npy"),
        &"--k",
        &dir.path("k.npy"),
        &"--out",
        &dir.path("y.npy"),
    ]);
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    let y = npy::read(&dir.path("y.npy")).unwrap();
    let close = y
        .data
        .iter()
        .zip([1.0f32, 3.0, 5.0, 7.0])
        .all(|(a, b)| (a - b).abs() < 1e-5);
    assert!(close, "{:?}", y.data);
}

/// Runs a failing command: non-zero `code`, exactly one `fftconv: error: ` line that contains
/// `needle`, and no new files in `dir`.
fn assert_fails(dir: &TempDir, args: &[Arg<'_>], code: i32, needle: &str) {
    let before = dir.listing();
    let out = fftconv(args);
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(code), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "one error line: {lines:?}");
    assert!(
        lines[0].starts_with("fftconv: error: "),
        "prefix: {}",
        lines[0]
    );
    assert!(lines[0].contains(needle), "`{needle}` in: {}", lines[0]);
    assert!(out.stdout.is_empty());
    assert_eq!(dir.listing(), before, "no file created or left behind");
}

struct Inputs {
    dir: TempDir,
    u: PathBuf,
    k: PathBuf,
    p: PathBuf,
    y: PathBuf,
}

fn inputs(tag: &str) -> Inputs {
    let dir = TempDir::new(tag);
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let (u, k, p) = (dir.path("u.npy"), dir.path("k.npy"), dir.path("p.npy"));
    save(&u, &[2, 3, 100], &random(&mut rng, 600, 1.0));
    save(&k, &[3, 40], &random(&mut rng, 120, 0.1));
    save(&p, &[2, 3, 100], &random(&mut rng, 600, 1.0));
    let y = dir.path("y.npy");
    Inputs { dir, u, k, p, y }
}

#[test]
fn pregate_without_postgate_is_a_usage_error() {
    let t = inputs("gate");
    assert_fails(
        &t.dir,
        &[
            &"conv",
            &"--u",
            &t.u,
            &"--k",
            &t.k,
            &"--pregate",
            &t.p,
            &"--out",
            &t.y,
        ],
        2,
        "--postgate",
    );
    assert!(!t.y.exists());
}

#[test]
fn filter_longer_than_sequence_fails() {
    let t = inputs("klong");
    let long_k = t.dir.path("klong.npy");
    save(&long_k, &[3, 101], &vec![0.5; 303]);
    assert_fails(
        &t.dir,
        &[&"conv", &"--u", &t.u, &"--k", &long_k, &"--out", &t.y],
        1,
        "exceeds L = 100",
    );
}

#[test]
fn shape_mismatches_fail() {
    let t = inputs("shape");
    // k with the wrong H.
    let k4 = t.dir.path("k4.npy");
    save(&k4, &[4, 40], &vec![0.5; 160]);
    assert_fails(
        &t.dir,
        &[&"conv", &"--u", &t.u, &"--k", &k4, &"--out", &t.y],
        1,
        "--k",
    );
    // u that is not 3-D.
    let u2 = t.dir.path("u2.npy");
    save(&u2, &[6, 100], &vec![0.5; 600]);
    assert_fails(
        &t.dir,
        &[&"conv", &"--u", &u2, &"--k", &t.k, &"--out", &t.y],
        1,
        "3-D",
    );
    // A gate of another shape.
    let q = t.dir.path("q.npy");
    save(&q, &[2, 3, 99], &vec![0.5; 594]);
    assert_fails(
        &t.dir,
        &[
            &"conv",
            &"--u",
            &t.u,
            &"--k",
            &t.k,
            &"--pregate",
            &t.p,
            &"--postgate",
            &q,
            &"--out",
            &t.y,
        ],
        1,
        "--postgate",
    );
}

#[test]
fn malformed_and_missing_files_fail() {
    let t = inputs("malformed");
    let bad = t.dir.path("bad.npy");
    std::fs::write(&bad, b"PK\x03\x04 this is a zip, not an npy file").unwrap();
    assert_fails(
        &t.dir,
        &[&"conv", &"--u", &bad, &"--k", &t.k, &"--out", &t.y],
        1,
        "bad magic",
    );
    let truncated = t.dir.path("trunc.npy");
    let full = std::fs::read(&t.u).unwrap();
    std::fs::write(&truncated, &full[..full.len() - 10]).unwrap();
    assert_fails(
        &t.dir,
        &[&"conv", &"--u", &truncated, &"--k", &t.k, &"--out", &t.y],
        1,
        "truncated",
    );
    let missing = t.dir.path("does-not-exist.npy");
    assert_fails(
        &t.dir,
        &[&"conv", &"--u", &t.u, &"--k", &missing, &"--out", &t.y],
        1,
        "does-not-exist.npy",
    );
    let nodir = t.dir.path("no-such-dir").join("y.npy");
    assert_fails(
        &t.dir,
        &[&"conv", &"--u", &t.u, &"--k", &t.k, &"--out", &nodir],
        1,
        "--out",
    );
}

#[test]
fn existing_output_is_untouched_on_failure() {
    let t = inputs("keep");
    std::fs::write(&t.y, b"precious").unwrap();
    let bad = t.dir.path("bad.npy");
    std::fs::write(&bad, b"garbage").unwrap();
    assert_fails(
        &t.dir,
        &[&"conv", &"--u", &t.u, &"--k", &bad, &"--out", &t.y],
        1,
        "bad magic",
    );
    assert_fails(
        &t.dir,
        &[
            &"conv",
            &"--u",
            &t.u,
            &"--k",
            &t.k,
            &"--pregate",
            &t.p,
            &"--out",
            &t.y,
        ],
        2,
        "--postgate",
    );
    assert_eq!(std::fs::read(&t.y).unwrap(), b"precious");
    // A successful run replaces it.
    let out = fftconv(&[&"conv", &"--u", &t.u, &"--k", &t.k, &"--out", &t.y]);
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    assert_eq!(npy::read(&t.y).unwrap().shape, [2, 3, 100]);
}

#[test]
fn usage_errors_exit_2() {
    let t = inputs("usage");
    for (args, needle) in [
        (vec!["conv", "--bogus"], "unknown flag"),
        (vec!["conv", "--u"], "missing value for --u"),
        (
            vec!["conv", "--keep-frequencies", "lots"],
            "--keep-frequencies",
        ),
        (vec!["frobnicate"], "unknown command"),
        (vec![], "missing command"),
    ] {
        let args: Vec<Arg> = args.iter().map(|a| a as Arg).collect();
        assert_fails(&t.dir, &args, 2, needle);
    }
}

#[test]
fn devices_lists_cpu_as_available() {
    let out = fftconv(&[&"devices"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    let cpu = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .expect("a cpu line");
    assert!(cpu.contains(" compiled "), "{cpu}");
    assert!(cpu.contains("available: "), "{cpu}");
    assert!(!cpu.contains("unavailable"), "{cpu}");
}

#[test]
fn help_texts() {
    let out = fftconv(&[&"--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("fftconv conv") && text.contains("fftconv devices"));
    let out = fftconv(&[&"conv", &"--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--u",
        "--k",
        "--pregate",
        "--postgate",
        "--circular",
        "--keep-frequencies",
        "--backend",
        "--dtype",
        "--out",
        "N/16",
    ] {
        assert!(text.contains(flag), "{flag} in conv --help");
    }
}
