//! Backward conformance suite: gradients on every backend against the f64 adjoint oracle.
//!
//! Written once, generic over the backend; `backward_suite!` instantiates it per backend. A
//! backend that cannot run here prints why and skips. Every gradient buffer is poisoned with NaN
//! before each run, so an element that was not written fails the comparison (NaN never passes).

use conv::reference::relative_l2_error;
use conv::{
    bf16, f16, BackendKind, ConvError, ConvSpec, ConvSpecBuilder, Convolution, DType,
    DeviceGradients, Element, Gates, Gradients,
};
use monarch_core::reference_backward::reference_backward;
#[macro_use]
mod support;

use support::*;

/// Checks one gradient: every element written and finite, relative L2 error within `tol`.
fn compare(kind: BackendKind, spec: &ConvSpec, name: &str, got: &[f64], want: &[f64]) {
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!(
            "{kind}: {name} element {i} not written or not finite ({spec:?}, seed {})",
            current_seed()
        );
    }
    let err = relative_l2_error(got, want);
    let tol = tolerance(spec.dtype());
    assert!(
        err <= tol,
        "{kind}: {name} relative L2 error {err:.3e} > {tol:.1e} for {spec:?} (seed {}; replay with CONFORMANCE_SEED)",
        current_seed()
    );
}

fn l2(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// [`compare`] with the error relative to `max(|want|, floor)` (L2 norms).
fn compare_with_floor(
    kind: BackendKind,
    spec: &ConvSpec,
    name: &str,
    got: &[f64],
    want: &[f64],
    floor: f64,
) {
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!(
            "{kind}: {name} element {i} not written or not finite ({spec:?}, seed {})",
            current_seed()
        );
    }
    let diff: Vec<f64> = got.iter().zip(want).map(|(g, w)| g - w).collect();
    let err = l2(&diff) / l2(want).max(floor);
    let tol = tolerance(spec.dtype());
    assert!(
        err <= tol,
        "{kind}: {name} error {err:.3e} (relative to max(|want|, {floor:.3e})) > {tol:.1e} for \
         {spec:?} (seed {}; replay with CONFORMANCE_SEED)",
        current_seed()
    );
}

/// Runs one case on `kind`: fresh random inputs, poisoned gradients, compare with the oracle.
fn run_case_typed<T: Element>(kind: BackendKind, spec: ConvSpec) {
    let seed = fresh_inputs();
    eprintln!("{kind}: seed {seed} for {spec:?}");
    let dtype = spec.dtype();
    let io = spec.io_len();
    let u = random_rounded(io, dtype);
    let dy = random_rounded(io, dtype);
    let k = random_filter(spec.channels(), spec.filter_len());
    let gates = spec
        .gated()
        .then(|| (random_rounded(io, dtype), random_rounded(io, dtype)));
    let conv = Convolution::new(spec.clone(), kind).expect("backend available");
    let filter = conv.prepare_filter(&k).expect("filter");
    let (u_t, dy_t): (Vec<T>, Vec<T>) = (to_elements(&u), to_elements(&dy));
    let gates_t: Option<(Vec<T>, Vec<T>)> = gates
        .as_ref()
        .map(|(p, q)| (to_elements(p), to_elements(q)));
    let nan = T::from_f64(f64::NAN);
    let mut du = vec![nan; io];
    let mut dk = vec![f32::NAN; spec.filter_elems()];
    let mut dpre = vec![nan; if spec.gated() { io } else { 0 }];
    let mut dpost = dpre.clone();
    conv.backward(
        &filter,
        &u_t,
        gates_t.as_ref().map(|(p, q)| Gates { pre: p, post: q }),
        &dy_t,
        Gradients {
            du: &mut du,
            dk: &mut dk,
            dpregate: spec.gated().then_some(dpre.as_mut_slice()),
            dpostgate: spec.gated().then_some(dpost.as_mut_slice()),
        },
    )
    .expect("backward");
    let k64: Vec<f64> = k.iter().map(|&v| v as f64).collect();
    let want = reference_backward(
        &spec,
        &u,
        &k64,
        gates.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice())),
        &dy,
    );
    compare(kind, &spec, "du", &to_f64(&du), &want.du);
    let dk64: Vec<f64> = dk.iter().map(|&v| v as f64).collect();
    // dk is a sum over the batch and time whose terms can cancel (K = 1, L = 17: one sum of 17
    // products failed 1 run in ~40): its error is relative to the size such a sum has without
    // cancellation, |dk| of |u|, |dy| (and |gates|) over sqrt(terms), when that is larger.
    let abs = |x: &[f64]| x.iter().map(|v| v.abs()).collect::<Vec<f64>>();
    let magnitude = reference_backward(
        &spec,
        &abs(&u),
        &abs(&k64),
        gates
            .as_ref()
            .map(|(p, q)| (abs(p), abs(q)))
            .as_ref()
            .map(|(p, q)| (p.as_slice(), q.as_slice())),
        &abs(&dy),
    );
    let terms = (spec.batch() * spec.length()) as f64;
    let floor = l2(&magnitude.dk) / terms.sqrt();
    compare_with_floor(kind, &spec, "dk", &dk64, &want.dk, floor);
    if spec.gated() {
        let (wp, wq) = (want.dpregate.unwrap(), want.dpostgate.unwrap());
        compare(kind, &spec, "dpregate", &to_f64(&dpre), &wp);
        compare(kind, &spec, "dpostgate", &to_f64(&dpost), &wq);
    }
}

fn run_case(kind: BackendKind, builder: ConvSpecBuilder) {
    let spec = builder.build().expect("valid spec");
    match spec.dtype() {
        DType::F32 => run_case_typed::<f32>(kind, spec),
        DType::F16 => run_case_typed::<f16>(kind, spec),
        DType::Bf16 => run_case_typed::<bf16>(kind, spec),
    }
}

fn causal(kind: BackendKind) {
    for dtype in DTYPES {
        run_case(kind, ConvSpec::builder(2, 3, 1000, 1000).dtype(dtype));
        run_case(kind, ConvSpec::builder(3, 2, 512, 300).dtype(dtype));
    }
}

fn circular(kind: BackendKind) {
    for dtype in DTYPES {
        // Power-of-two L: N = L, no history region.
        let b = ConvSpec::builder(2, 2, 1024, 1024).circular().dtype(dtype);
        assert_eq!(b.clone().build().unwrap().geometry().history, 0);
        run_case(kind, b);
        // Other L: wrap-around history.
        run_case(
            kind,
            ConvSpec::builder(3, 2, 1000, 1000).circular().dtype(dtype),
        );
        run_case(
            kind,
            ConvSpec::builder(1, 2, 777, 50).circular().dtype(dtype),
        );
    }
}

fn gated(kind: BackendKind) {
    for dtype in DTYPES {
        run_case(
            kind,
            ConvSpec::builder(2, 3, 700, 700).gated(true).dtype(dtype),
        );
        run_case(
            kind,
            ConvSpec::builder(3, 2, 512, 512)
                .gated(true)
                .circular()
                .dtype(dtype),
        );
    }
}

fn partial(kind: BackendKind) {
    for dtype in DTYPES {
        // K << L: several overlap-save blocks; B = 3 pairs rows and leaves one row whose
        // blocks are paired with each other.
        let b = ConvSpec::builder(3, 2, 6000, 33).dtype(dtype);
        assert!(b.clone().build().unwrap().geometry().blocks > 1);
        run_case(kind, b);
        let b = ConvSpec::builder(1, 3, 3000, 100).circular().dtype(dtype);
        assert!(b.clone().build().unwrap().geometry().blocks > 1);
        run_case(kind, b);
        run_case(
            kind,
            ConvSpec::builder(2, 1, 4000, 200).gated(true).dtype(dtype),
        );
    }
}

fn frequency_sparse(kind: BackendKind) {
    for dtype in DTYPES {
        run_case(
            kind,
            ConvSpec::builder(2, 3, 1024, 1024)
                .keep_frequencies(0.25)
                .dtype(dtype),
        );
        run_case(
            kind,
            ConvSpec::builder(1, 2, 1024, 1024)
                .circular()
                .keep_frequencies(0.5)
                .dtype(dtype),
        );
        // Blocked, sparse and gated.
        let b = ConvSpec::builder(3, 2, 3000, 100)
            .keep_frequencies(0.1)
            .gated(true)
            .dtype(dtype);
        let g = *b.clone().build().unwrap().geometry();
        assert!(g.blocks > 1 && g.is_sparse(), "{g:?}");
        run_case(kind, b);
    }
}

fn odd_shapes(kind: BackendKind) {
    run_case(kind, ConvSpec::builder(1, 1, 1, 1));
    run_case(kind, ConvSpec::builder(1, 1, 17, 1));
    run_case(kind, ConvSpec::builder(3, 111, 300, 300));
    run_case(kind, ConvSpec::builder(3, 111, 300, 1).dtype(DType::F16));
    run_case(kind, ConvSpec::builder(1, 1, 1413, 1413));
    run_case(kind, ConvSpec::builder(3, 1, 1413, 1413).dtype(DType::Bf16));
    run_case(kind, ConvSpec::builder(1, 2, 1413, 129).circular());
    run_case(kind, ConvSpec::builder(1, 3, 5, 5).circular());
    run_case(kind, ConvSpec::builder(5, 1, 64, 64).circular().gated(true));
}

fn nan_in_filter_propagates(kind: BackendKind) {
    fresh_inputs();
    // A NaN tap of channel 1 reaches that channel's du and dk, and no other channel's. L = 100
    // runs one block a row (where a backend may share one inverse transform between the taps
    // and du), L = 1000 several.
    for len in [100usize, 1000] {
        let spec = ConvSpec::builder(2, 3, len, 10).build().unwrap();
        let blocks = spec.geometry().blocks;
        let conv = Convolution::new(spec, kind).unwrap();
        let mut k = random_filter(3, 10);
        k[10 + 4] = f32::NAN;
        let filter = conv.prepare_filter(&k).unwrap();
        let ones = vec![0.5f32; 6 * len];
        let (mut du, mut dk) = (vec![0.0f32; 6 * len], vec![0.0f32; 30]);
        conv.backward(
            &filter,
            &ones,
            None,
            &ones,
            Gradients {
                du: &mut du,
                dk: &mut dk,
                dpregate: None,
                dpostgate: None,
            },
        )
        .unwrap();
        for (row, out) in du.chunks(len).enumerate() {
            let nan_row = row % 3 == 1;
            assert!(
                out.iter().all(|v| v.is_nan() == nan_row),
                "{kind}: L = {len} ({blocks} blocks): du row {row}"
            );
        }
        assert!(
            dk.iter().all(|v| v.is_finite()),
            "{kind}: L = {len} ({blocks} blocks): dk needs no k"
        );
    }
}

fn bad_input_is_a_typed_error(kind: BackendKind) {
    fresh_inputs();
    let spec = ConvSpec::builder(2, 3, 100, 10)
        .gated(true)
        .build()
        .unwrap();
    let conv = Convolution::new(spec, kind).unwrap();
    let ok = vec![0.5f32; 600];
    let short = vec![0.5f32; 599];
    let filter = conv.prepare_filter(&random_filter(3, 10)).unwrap();
    let sentinel = 7.0f32;
    let mut du = vec![sentinel; 600];
    let mut dk = vec![sentinel; 30];
    let mut dpre = vec![sentinel; 600];
    let mut dpost = vec![sentinel; 600];
    let gates = |pre, post| Some(Gates { pre, post });
    macro_rules! call {
        ($u:expr, $g:expr, $dy:expr, $du:expr, $dk:expr, $dp:expr, $dq:expr) => {
            conv.backward(
                &filter,
                $u,
                $g,
                $dy,
                Gradients {
                    du: $du,
                    dk: $dk,
                    dpregate: $dp,
                    dpostgate: $dq,
                },
            )
        };
    }
    let cases: Vec<(&str, Result<(), ConvError>)> = vec![
        (
            "u",
            call!(
                &short,
                gates(&ok, &ok),
                &ok,
                &mut du,
                &mut dk,
                Some(&mut dpre),
                Some(&mut dpost)
            ),
        ),
        (
            "dy",
            call!(
                &ok,
                gates(&ok, &ok),
                &short,
                &mut du,
                &mut dk,
                Some(&mut dpre),
                Some(&mut dpost)
            ),
        ),
        (
            "pregate",
            call!(
                &ok,
                gates(&short, &ok),
                &ok,
                &mut du,
                &mut dk,
                Some(&mut dpre),
                Some(&mut dpost)
            ),
        ),
        (
            "postgate",
            call!(
                &ok,
                gates(&ok, &short),
                &ok,
                &mut du,
                &mut dk,
                Some(&mut dpre),
                Some(&mut dpost)
            ),
        ),
        (
            "gates",
            call!(
                &ok,
                None,
                &ok,
                &mut du,
                &mut dk,
                Some(&mut dpre),
                Some(&mut dpost)
            ),
        ),
        (
            "du",
            call!(
                &ok,
                gates(&ok, &ok),
                &ok,
                &mut du[..599],
                &mut dk,
                Some(&mut dpre),
                Some(&mut dpost)
            ),
        ),
        (
            "dk",
            call!(
                &ok,
                gates(&ok, &ok),
                &ok,
                &mut du,
                &mut dk[..29],
                Some(&mut dpre),
                Some(&mut dpost)
            ),
        ),
        (
            "dpregate",
            call!(
                &ok,
                gates(&ok, &ok),
                &ok,
                &mut du,
                &mut dk,
                Some(&mut dpre[..599]),
                Some(&mut dpost)
            ),
        ),
        (
            "dpostgate",
            call!(
                &ok,
                gates(&ok, &ok),
                &ok,
                &mut du,
                &mut dk,
                Some(&mut dpre),
                None
            ),
        ),
    ];
    for (arg, result) in cases {
        let err = result.expect_err(arg);
        assert_eq!(err.argument(), Some(arg), "{kind}: {err}");
    }
    for (name, buf) in [("du", &du), ("dk", &dk), ("dpre", &dpre), ("dpost", &dpost)] {
        assert!(
            buf.iter().all(|&v| v == sentinel),
            "{kind}: {name} touched on error"
        );
    }

    // dtype mismatch.
    let half = vec![f16::from_f32(0.5); 600];
    let mut half_du = vec![f16::ZERO; 600];
    let err = conv
        .backward(
            &filter,
            &half,
            None,
            &half,
            Gradients {
                du: &mut half_du,
                dk: &mut dk,
                dpregate: None,
                dpostgate: None,
            },
        )
        .expect_err("dtype mismatch");
    assert!(
        matches!(err, ConvError::DTypeMismatch { arg: "u", .. }),
        "{err}"
    );
    assert!(half_du.iter().all(|v| *v == f16::ZERO));
    assert!(dk.iter().all(|&v| v == sentinel));

    // A filter prepared for another problem.
    let other = Convolution::new(
        ConvSpec::builder(2, 3, 100, 20)
            .gated(true)
            .build()
            .unwrap(),
        kind,
    )
    .unwrap()
    .prepare_filter(&random_filter(3, 20))
    .unwrap();
    let err = conv
        .backward(
            &other,
            &ok,
            gates(&ok, &ok),
            &ok,
            Gradients {
                du: &mut du,
                dk: &mut dk,
                dpregate: Some(&mut dpre),
                dpostgate: Some(&mut dpost),
            },
        )
        .expect_err("foreign filter");
    assert!(format!("{err}").contains("filter"), "{err}");
    assert!(du.iter().chain(&dk).all(|&v| v == sentinel));

    // Ungated problem given gate gradients.
    let plain = Convolution::new(ConvSpec::builder(2, 3, 100, 10).build().unwrap(), kind).unwrap();
    let f = plain.prepare_filter(&random_filter(3, 10)).unwrap();
    let err = plain
        .backward(
            &f,
            &ok,
            None,
            &ok,
            Gradients {
                du: &mut du,
                dk: &mut dk,
                dpregate: Some(&mut dpre),
                dpostgate: None,
            },
        )
        .expect_err("gate gradients");
    assert_eq!(err.argument(), Some("dpregate"));
    assert!(du.iter().chain(&dk).all(|&v| v == sentinel));
}

fn concurrent_calls_agree(kind: BackendKind) {
    fresh_inputs();
    let spec = ConvSpec::builder(2, 4, 3000, 500).build().unwrap();
    let conv = Convolution::new(spec, kind).unwrap();
    let filter = conv.prepare_filter(&random_filter(4, 500)).unwrap();
    let f32s = |n| -> Vec<f32> {
        random_rounded(n, DType::F32)
            .iter()
            .map(|&v| v as f32)
            .collect()
    };
    let inputs: Vec<(Vec<f32>, Vec<f32>)> = (0..3).map(|_| (f32s(24000), f32s(24000))).collect();
    let run = |u: &[f32], dy: &[f32]| {
        let (mut du, mut dk) = (vec![0.0f32; u.len()], vec![0.0f32; 2000]);
        conv.backward(
            &filter,
            u,
            None,
            dy,
            Gradients {
                du: &mut du,
                dk: &mut dk,
                dpregate: None,
                dpostgate: None,
            },
        )
        .unwrap();
        (du, dk)
    };
    let serial: Vec<_> = inputs.iter().map(|(u, dy)| run(u, dy)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|(u, dy)| s.spawn(|| run(u, dy)))
            .collect();
        for (h, want) in handles.into_iter().zip(&serial) {
            assert_eq!(
                &h.join().unwrap(),
                want,
                "{kind}: concurrent result differs"
            );
        }
    });
}

/// Backward on device-resident tensors gives exactly the host-slice result; misuse is a typed
/// error.
fn device_tensors(kind: BackendKind) {
    fn typed<T: Element + 'static>(kind: BackendKind, spec: ConvSpec) {
        let seed = fresh_inputs();
        let (dtype, n) = (spec.dtype(), spec.io_len());
        let conv = Convolution::new(spec.clone(), kind).unwrap();
        let filter = conv
            .prepare_filter(&random_filter(spec.channels(), spec.filter_len()))
            .unwrap();
        let random = || -> Vec<T> { to_elements(&random_rounded(n, dtype)) };
        let (u, dy, pre, post) = (random(), random(), random(), random());
        let gated = spec.gated();
        let nan = T::from_f64(f64::NAN);
        let (mut du, mut dpre, mut dpost) = (vec![nan; n], vec![nan; n], vec![nan; n]);
        let mut dk = vec![f32::NAN; spec.filter_elems()];
        conv.backward(
            &filter,
            &u,
            gated.then_some(Gates {
                pre: &pre,
                post: &post,
            }),
            &dy,
            Gradients {
                du: &mut du,
                dk: &mut dk,
                dpregate: gated.then_some(&mut dpre[..]),
                dpostgate: gated.then_some(&mut dpost[..]),
            },
        )
        .unwrap();
        let t = |x: &[T]| conv.tensor_from_host(x).unwrap();
        let (tu, tdy, tpre, tpost) = (t(&u), t(&dy), t(&pre), t(&post));
        let (mut tdu, mut tdpre, mut tdpost) = (
            conv.tensor_zeros().unwrap(),
            conv.tensor_zeros().unwrap(),
            conv.tensor_zeros().unwrap(),
        );
        // dk on the device too, poisoned so that an unwritten element fails.
        let mut dk_dev = conv
            .filter_tensor_from_host(&vec![f32::NAN; spec.filter_elems()])
            .unwrap();
        conv.backward_device(
            &filter,
            &tu,
            gated.then_some((&tpre, &tpost)),
            &tdy,
            DeviceGradients {
                du: &mut tdu,
                dk: &mut dk_dev,
                dpregate: gated.then_some(&mut tdpre),
                dpostgate: gated.then_some(&mut tdpost),
            },
        )
        .unwrap();
        let same = |a: &[T], b: &[T]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits())
        };
        let back = |x: &conv::DeviceTensor| {
            let mut out = vec![nan; n];
            conv.tensor_to_host(x, &mut out).unwrap();
            out
        };
        let msg = format!("{kind}: device tensors differ from host slices ({spec:?}, seed {seed})");
        assert!(same(&back(&tdu), &du), "du: {msg}");
        let mut dk_back = vec![f32::NAN; spec.filter_elems()];
        conv.filter_tensor_to_host(&dk_dev, &mut dk_back).unwrap();
        assert!(
            dk.iter()
                .zip(&dk_back)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "dk: {msg}"
        );
        if gated {
            assert!(same(&back(&tdpre), &dpre), "dpregate: {msg}");
            assert!(same(&back(&tdpost), &dpost), "dpostgate: {msg}");
        }
        // Misuse: a dk that is no filter tensor (the problem's [B, H, L]), and gate gradients
        // that do not match the problem.
        let mut not_filter = conv.tensor_zeros().unwrap();
        let err = conv
            .backward_device(
                &filter,
                &tu,
                gated.then_some((&tpre, &tpost)),
                &tdy,
                DeviceGradients {
                    du: &mut tdu,
                    dk: &mut not_filter,
                    dpregate: None,
                    dpostgate: None,
                },
            )
            .unwrap_err();
        let want = if gated { "dpregate" } else { "dk" };
        assert_eq!(err.argument(), Some(want), "{err}");
    }
    for builder in [
        ConvSpec::builder(2, 3, 300, 300),
        ConvSpec::builder(3, 2, 1000, 50)
            .gated(true)
            .dtype(DType::F16),
        ConvSpec::builder(1, 2, 4096, 4096)
            .circular()
            .dtype(DType::Bf16),
    ] {
        let spec = builder.build().unwrap();
        match spec.dtype() {
            DType::F32 => typed::<f32>(kind, spec),
            DType::F16 => typed::<f16>(kind, spec),
            DType::Bf16 => typed::<bf16>(kind, spec),
        }
    }
}

/// Random shapes, modes, gating, sparsity and dtypes (small sizes), each against the oracle.
fn random_shapes(kind: BackendKind) {
    for _ in 0..24 {
        let seed = fresh_inputs();
        let builder = random_spec();
        eprintln!("{kind}: random shape (CONFORMANCE_SEED={seed}): {builder:?}");
        run_case(kind, builder);
    }
}

backend_suites!(backward: [
    random_shapes,
    device_tensors,
    causal,
    circular,
    gated,
    partial,
    frequency_sparse,
    odd_shapes,
    nan_in_filter_propagates,
    bad_input_is_a_typed_error,
    concurrent_calls_agree,
]);
