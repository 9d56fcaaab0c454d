//! End-to-end tests of `fftconv grad` against the f64 adjoint oracle, and its error cases.

use cli::npy;
use conv::reference::relative_l2_error;
use conv::{ConvSpec, DType};
use monarch_core::reference_backward::reference_backward;
use rand::SeedableRng;
use std::path::Path;

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
    /// Write k as `[K]` (needs `h == 1`).
    flat_k: bool,
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
            flat_k: false,
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

    /// Runs `fftconv grad` on random inputs into `out_dir` (a path below a fresh directory,
    /// not created beforehand); checks the files and the report, and returns the worst relative
    /// L2 error over the gradients against the oracle.
    fn run(&self, seed: u64) -> f64 {
        let dir = TempDir::new("case");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let io_shape = [self.b, self.h, self.l];
        let k_shape = if self.flat_k {
            vec![self.k]
        } else {
            vec![self.h, self.k]
        };
        let n = self.b * self.h * self.l;
        let u = random(&mut rng, n, 1.0);
        let dy = random(&mut rng, n, 1.0);
        let k = random(&mut rng, self.h * self.k, 1.0 / (self.k as f32).sqrt());
        let paths = ["u", "k", "dy", "p", "q"].map(|s| dir.path(&format!("{s}.npy")));
        let out_dir = dir.path("grads").join("nested");
        save(&paths[0], &io_shape, &u);
        save(&paths[1], &k_shape, &k);
        save(&paths[2], &io_shape, &dy);
        let dtype = self.dtype.name();
        let keep = self.keep.map(|f| f.to_string());
        let mut args: Vec<Arg> = vec![
            &"grad",
            &"--u",
            &paths[0],
            &"--k",
            &paths[1],
            &"--dy",
            &paths[2],
            &"--out-dir",
            &out_dir,
            &"--dtype",
            &dtype,
            &"--backend",
            &"cpu",
        ];
        let gates = self.gated.then(|| {
            let p = random(&mut rng, n, 1.0);
            let q = random(&mut rng, n, 1.0);
            save(&paths[3], &io_shape, &p);
            save(&paths[4], &io_shape, &q);
            (p, q)
        });
        if self.gated {
            args.extend([&"--pregate" as Arg, &paths[3], &"--postgate", &paths[4]]);
        }
        if self.circular {
            args.push(&"--circular");
        }
        if let Some(f) = &keep {
            args.extend([&"--keep-frequencies" as Arg, f]);
        }
        let out = fftconv(&args);
        let lines = stderr_lines(&out);
        assert!(out.status.success(), "fftconv grad failed: {lines:?}");
        assert_eq!(lines.len(), 1, "exactly one JSON line on stderr: {lines:?}");
        let report: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        let mut names = vec!["dk.npy", "du.npy"];
        if self.gated {
            names.extend(["dpostgate.npy", "dpregate.npy"]);
        }
        names.sort();
        assert_eq!(listing(&out_dir), names, "files written");
        let spec = self.spec();
        let g = spec.geometry();
        assert_eq!(report["fft_size"], g.n());
        assert_eq!(report["bins_kept"], g.kept_bins);
        assert_eq!(report["blocks"], g.blocks);
        assert_eq!(report["backend"], "cpu");
        assert_eq!(report["dtype"], dtype);
        assert_eq!(report["gated"], self.gated);
        assert_eq!(report["shape"], serde_json::json!(io_shape));
        assert_eq!(report["out_dir"], out_dir.display().to_string());
        assert_eq!(
            report["outputs"].as_array().map(Vec::len),
            Some(names.len())
        );
        assert!(report["seconds"].as_f64().is_some_and(|s| s >= 0.0));

        let round =
            |x: &[f32]| -> Vec<f64> { x.iter().map(|&v| self.dtype.round_f64(v as f64)).collect() };
        let k64: Vec<f64> = k.iter().map(|&v| v as f64).collect();
        let gates64 = gates.as_ref().map(|(p, q)| (round(p), round(q)));
        let want = reference_backward(
            &spec,
            &round(&u),
            &k64,
            gates64.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice())),
            &round(&dy),
        );
        let mut checks = vec![
            ("du.npy", io_shape.to_vec(), want.du),
            ("dk.npy", k_shape, want.dk),
        ];
        if let (Some(p), Some(q)) = (want.dpregate, want.dpostgate) {
            checks.push(("dpregate.npy", io_shape.to_vec(), p));
            checks.push(("dpostgate.npy", io_shape.to_vec(), q));
        }
        let mut worst = 0.0f64;
        for (name, shape, want) in checks {
            let got = npy::read(&out_dir.join(name)).unwrap();
            assert_eq!(got.shape, shape, "{name}");
            assert_eq!(got.dtype, npy::NpyDType::F32, "{name}");
            let got: Vec<f64> = got.data.iter().map(|&v| v as f64).collect();
            let err = relative_l2_error(&got, &want);
            assert!(!err.is_nan(), "{name} not finite");
            worst = worst.max(err);
        }
        worst
    }
}

#[test]
fn grad_f32_causal() {
    let err = Case::new().run(1);
    assert!(err < 1e-5, "relative L2 error {err}");
}

#[test]
fn grad_gated_blocked() {
    let err = Case {
        l: 1000,
        k: 30,
        gated: true,
        ..Case::new()
    }
    .run(2);
    assert!(err < 1e-5, "relative L2 error {err}");
}

#[test]
fn grad_f16_circular_sparse_flat_filter() {
    let err = Case {
        b: 3,
        h: 1,
        l: 256,
        k: 256,
        circular: true,
        dtype: DType::F16,
        keep: Some(0.25),
        flat_k: true,
        ..Case::new()
    }
    .run(3);
    assert!(err < 2e-3, "relative L2 error {err}");
}

#[test]
fn grad_bf16_gated_sparse() {
    let err = Case {
        gated: true,
        dtype: DType::Bf16,
        keep: Some(0.3),
        ..Case::new()
    }
    .run(4);
    assert!(err < 1.5e-2, "relative L2 error {err}");
}

/// Runs a failing command: exit code `code`, exactly one `fftconv: error: ` line containing
/// `needle`, and nothing written to `out_dir` (not even created).
fn assert_fails(args: &[Arg<'_>], code: i32, needle: &str, out_dir: &Path) {
    let out = fftconv(args);
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(code), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "one error line: {lines:?}");
    assert!(lines[0].starts_with("fftconv: error: "), "{}", lines[0]);
    assert!(lines[0].contains(needle), "`{needle}` in: {}", lines[0]);
    assert!(!out_dir.exists(), "{} created on error", out_dir.display());
}

#[test]
fn errors_write_nothing() {
    let dir = TempDir::new("errors");
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let (u, k, dy, bad) = (
        dir.path("u.npy"),
        dir.path("k.npy"),
        dir.path("dy.npy"),
        dir.path("bad.npy"),
    );
    save(&u, &[2, 3, 100], &random(&mut rng, 600, 1.0));
    save(&k, &[3, 40], &random(&mut rng, 120, 0.1));
    save(&dy, &[2, 3, 100], &random(&mut rng, 600, 1.0));
    save(&bad, &[2, 3, 99], &random(&mut rng, 594, 1.0));
    let out = dir.path("out");
    // dy shaped differently from u: a runtime error naming --dy.
    assert_fails(
        &[
            &"grad",
            &"--u",
            &u,
            &"--k",
            &k,
            &"--dy",
            &bad,
            &"--out-dir",
            &out,
        ],
        1,
        "--dy",
        &out,
    );
    // A missing dy file.
    let missing = dir.path("missing.npy");
    assert_fails(
        &[
            &"grad",
            &"--u",
            &u,
            &"--k",
            &k,
            &"--dy",
            &missing,
            &"--out-dir",
            &out,
        ],
        1,
        "--dy",
        &out,
    );
    // Usage errors exit 2: no --dy, one gate only.
    assert_fails(
        &[&"grad", &"--u", &u, &"--k", &k, &"--out-dir", &out],
        2,
        "missing required flag --dy",
        &out,
    );
    assert_fails(
        &[
            &"grad",
            &"--u",
            &u,
            &"--k",
            &k,
            &"--dy",
            &dy,
            &"--out-dir",
            &out,
            &"--pregate",
            &u,
        ],
        2,
        "without --postgate",
        &out,
    );
    // --out-dir naming an existing file.
    assert_fails(
        &[
            &"grad",
            &"--u",
            &u,
            &"--k",
            &k,
            &"--dy",
            &dy,
            &"--out-dir",
            &dy,
        ],
        1,
        "not a directory",
        &out,
    );
    assert_eq!(listing(&dir.0), ["bad.npy", "dy.npy", "k.npy", "u.npy"]);
}

/// An output name taken by a directory in --out-dir fails the call before any gradient file
/// is written (before, du.npy and dk.npy were written and then dpostgate.npy failed).
#[test]
fn blocked_output_writes_no_gradient() {
    let dir = TempDir::new("blocked");
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    let (u, k, dy) = (dir.path("u.npy"), dir.path("k.npy"), dir.path("dy.npy"));
    save(&u, &[2, 3, 100], &random(&mut rng, 600, 1.0));
    save(&k, &[3, 40], &random(&mut rng, 120, 0.1));
    save(&dy, &[2, 3, 100], &random(&mut rng, 600, 1.0));
    let out = dir.path("out");
    std::fs::create_dir_all(out.join("dpostgate.npy")).unwrap();
    let run = fftconv(&[
        &"grad",
        &"--u",
        &u,
        &"--k",
        &k,
        &"--dy",
        &dy,
        &"--pregate",
        &u,
        &"--postgate",
        &u,
        &"--out-dir",
        &out,
    ]);
    let lines = stderr_lines(&run);
    assert_eq!(run.status.code(), Some(1), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "one error line: {lines:?}");
    assert!(lines[0].contains("dpostgate.npy"), "{}", lines[0]);
    assert_eq!(listing(&out), ["dpostgate.npy"]);
}

#[test]
fn help_mentions_grad() {
    let out = fftconv(&[&"--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fftconv grad"), "{text}");
    let out = fftconv(&[&"grad", &"--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--dy",
        "--out-dir",
        "du.npy",
        "dk.npy",
        "dpregate.npy",
        "dpostgate.npy",
    ] {
        assert!(text.contains(needle), "{needle} in grad help");
    }
}
