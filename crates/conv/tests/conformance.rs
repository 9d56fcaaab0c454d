//! Conformance suite: the same cases against every backend, compared with the f64 oracle.
//!
//! Written once, generic over the backend; `conformance_suite!` instantiates it per backend.
//! A backend that cannot run here prints why and skips. Outputs are poisoned with NaN before each
//! run, so an element that was not written fails the comparison (NaN never passes).

use conv::reference::{reference_forward, relative_l2_error};
use conv::{
    bf16, f16, BackendKind, ConvError, ConvSpec, ConvSpecBuilder, Convolution, DType, Element,
    Gates,
};
#[macro_use]
mod support;

use support::*;

/// Runs one case on `kind`: fresh random inputs, poisoned output, compare with the oracle.
fn run_case_typed<T: Element>(kind: BackendKind, spec: ConvSpec) {
    let seed = fresh_inputs();
    let dtype = spec.dtype();
    let u = random_rounded(spec.io_len(), dtype);
    let k = random_filter(spec.channels(), spec.filter_len());
    let gates = spec.gated().then(|| {
        (
            random_rounded(spec.io_len(), dtype),
            random_rounded(spec.io_len(), dtype),
        )
    });
    let conv = Convolution::new(spec.clone(), kind).expect("backend available");
    let filter = conv.prepare_filter(&k).expect("filter");
    let u_t: Vec<T> = to_elements(&u);
    let gates_t: Option<(Vec<T>, Vec<T>)> = gates
        .as_ref()
        .map(|(p, q)| (to_elements(p), to_elements(q)));
    let mut y: Vec<T> = vec![T::from_f64(f64::NAN); spec.io_len()];
    conv.forward(
        &filter,
        &u_t,
        gates_t.as_ref().map(|(p, q)| Gates { pre: p, post: q }),
        &mut y,
    )
    .expect("forward");
    let got: Vec<f64> = y.iter().map(|v| v.to_f64()).collect();
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{kind}: output element {i} not written or not finite ({spec:?}, seed {seed})");
    }
    let k64: Vec<f64> = k.iter().map(|&v| v as f64).collect();
    let want = reference_forward(
        &spec,
        &u,
        &k64,
        gates.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice())),
    );
    let err = relative_l2_error(&got, &want);
    let tol = tolerance(dtype);
    assert!(
        err <= tol,
        "{kind}: relative L2 error {err:.3e} > {tol:.1e} for {spec:?} (seed {seed})"
    );
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
        run_case(
            kind,
            ConvSpec::builder(2, 2, 1024, 1024).circular().dtype(dtype),
        );
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
            ConvSpec::builder(1, 2, 512, 512)
                .gated(true)
                .circular()
                .dtype(dtype),
        );
        // Circular with a wrapped history region: the pre-gate applies to it too.
        run_case(
            kind,
            ConvSpec::builder(2, 2, 1000, 300)
                .gated(true)
                .circular()
                .dtype(dtype),
        );
    }
}

fn partial(kind: BackendKind) {
    for dtype in DTYPES {
        // K << L: several overlap-save blocks.
        let b = ConvSpec::builder(3, 2, 20000, 33).dtype(dtype);
        assert!(b.clone().build().unwrap().geometry().blocks > 1);
        run_case(kind, b);
        run_case(
            kind,
            ConvSpec::builder(1, 3, 5000, 100).circular().dtype(dtype),
        );
        run_case(
            kind,
            ConvSpec::builder(2, 1, 9000, 200).gated(true).dtype(dtype),
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
        run_case(
            kind,
            ConvSpec::builder(2, 2, 3000, 100)
                .keep_frequencies(0.1)
                .gated(true)
                .dtype(dtype),
        );
        // Sparse and circular with wrapped history (L not a power of two).
        run_case(
            kind,
            ConvSpec::builder(1, 3, 3000, 200)
                .circular()
                .keep_frequencies(0.25)
                .dtype(dtype),
        );
    }
}

fn odd_shapes(kind: BackendKind) {
    run_case(kind, ConvSpec::builder(1, 1, 1, 1));
    run_case(kind, ConvSpec::builder(1, 1, 17, 1));
    run_case(kind, ConvSpec::builder(3, 111, 300, 300));
    run_case(kind, ConvSpec::builder(3, 111, 300, 1).dtype(DType::F16));
    run_case(kind, ConvSpec::builder(1, 1, 14113, 14113));
    run_case(
        kind,
        ConvSpec::builder(3, 1, 14113, 14113).dtype(DType::Bf16),
    );
    run_case(kind, ConvSpec::builder(1, 2, 14113, 129).circular());
    run_case(kind, ConvSpec::builder(1, 3, 5, 5).circular());
    run_case(kind, ConvSpec::builder(5, 1, 64, 64).circular().gated(true));
}

/// Long sequences (FFT sizes above 64K), checked at sampled output positions against the
/// direct f64 sum (a full oracle would cost `L*K` per row).
fn long_sequences(kind: BackendKind) {
    fn check<T: Element>(kind: BackendKind, spec: ConvSpec) {
        let seed = fresh_inputs();
        let dtype = spec.dtype();
        let (l, kl) = (spec.length(), spec.filter_len());
        let u = random_rounded(spec.io_len(), dtype);
        let k = random_filter(spec.channels(), kl);
        let gates = spec.gated().then(|| {
            (
                random_rounded(spec.io_len(), dtype),
                random_rounded(spec.io_len(), dtype),
            )
        });
        let conv = Convolution::new(spec.clone(), kind).expect("backend available");
        let filter = conv.prepare_filter(&k).expect("filter");
        let gates_t: Option<(Vec<T>, Vec<T>)> = gates
            .as_ref()
            .map(|(p, q)| (to_elements(p), to_elements(q)));
        let mut y: Vec<T> = vec![T::from_f64(f64::NAN); spec.io_len()];
        conv.forward(
            &filter,
            &to_elements::<T>(&u),
            gates_t.as_ref().map(|(p, q)| Gates { pre: p, post: q }),
            &mut y,
        )
        .expect("forward");
        if let Some(i) = y.iter().position(|v| !v.to_f64().is_finite()) {
            panic!("{kind}: output {i} not written or not finite ({spec:?}, seed {seed})");
        }
        let x = |i: usize| u[i] * gates.as_ref().map_or(1.0, |(p, _)| p[i]);
        let circular = spec.mode() == conv::ConvMode::Circular;
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for row in 0..spec.rows() {
            let h = row % spec.channels();
            let picks = (0..150)
                .map(|_| (uniform(0.0, 1.0) * l as f64) as usize % l)
                .chain([0, l / 2 - 1, l / 2, l - 1]);
            for t in picks {
                let taps = if circular { kl } else { t.min(kl - 1) + 1 };
                let direct: f64 = (0..taps)
                    .map(|s| k[h * kl + s] as f64 * x(row * l + (t + l - s) % l))
                    .sum();
                let post = gates.as_ref().map_or(1.0, |(_, q)| q[row * l + t]);
                got.push(y[row * l + t].to_f64());
                want.push(direct * post);
            }
        }
        let err = relative_l2_error(&got, &want);
        let tol = tolerance(dtype);
        assert!(
            err <= tol,
            "{kind}: relative L2 error {err:.3e} > {tol:.1e} for {spec:?} (seed {seed})"
        );
    }
    // N = 2^17 and 2^18 (the CPU's four-step form from 2^17): two rows of one channel; two
    // channels of one row (the CPU pairs them across channels); three channels of one row (a
    // cross-channel pair and a segment alone, through a real FFT).
    check::<f32>(
        kind,
        ConvSpec::builder(2, 1, 1 << 16, 1 << 16).build().unwrap(),
    );
    check::<f32>(
        kind,
        ConvSpec::builder(2, 1, 1 << 17, 1 << 17).build().unwrap(),
    );
    check::<f32>(
        kind,
        ConvSpec::builder(1, 2, 1 << 17, 1 << 17).build().unwrap(),
    );
    check::<f32>(
        kind,
        ConvSpec::builder(1, 3, 1 << 17, 1 << 17).build().unwrap(),
    );
    // N = 2^19: a pair and a lone segment in one channel (the lone
    // one reads the four-step spectrum in natural order), and bf16 pairs; then rows alone in
    // their channels (B = 1: the CPU pairs them across channels).
    check::<f32>(
        kind,
        ConvSpec::builder(3, 1, 1 << 18, 1 << 18).build().unwrap(),
    );
    check::<bf16>(
        kind,
        ConvSpec::builder(2, 1, 1 << 18, 1 << 18)
            .dtype(DType::Bf16)
            .build()
            .unwrap(),
    );
    check::<bf16>(
        kind,
        ConvSpec::builder(1, 2, 1 << 18, 1 << 18)
            .dtype(DType::Bf16)
            .build()
            .unwrap(),
    );
    // N = 2^20 (the CPU's four-step form): f32 causal with K = L, two blocks with outputs
    // past N/2 and a history region, circular with N = L, gated; f16 with B = 2.
    check::<f32>(
        kind,
        ConvSpec::builder(2, 1, 1 << 19, 1 << 19).build().unwrap(),
    );
    let blocked = ConvSpec::builder(2, 1, 700_000, 400_000).build().unwrap();
    assert!(blocked.geometry().block_len > blocked.geometry().n() / 2);
    check::<f32>(kind, blocked);
    check::<f32>(
        kind,
        ConvSpec::builder(2, 1, 1 << 20, 1 << 20)
            .circular()
            .build()
            .unwrap(),
    );
    check::<f32>(
        kind,
        ConvSpec::builder(2, 1, 1 << 19, 1 << 19)
            .gated(true)
            .build()
            .unwrap(),
    );
    check::<f16>(
        kind,
        ConvSpec::builder(2, 1, 1 << 19, 1 << 19)
            .dtype(DType::F16)
            .build()
            .unwrap(),
    );

    // Frequency-sparse at N = 2^20 (the CPU's split transform with a few bins kept), at sampled
    // outputs against the band-limited f64 definition (its filter through the reference's FFT).
    let seed = fresh_inputs();
    let spec = ConvSpec::builder(2, 1, 1 << 19, 1 << 19)
        .keep_frequencies(1e-4)
        .build()
        .unwrap();
    let g = spec.geometry();
    assert_eq!(g.n(), 1 << 20);
    assert!(g.is_sparse() && g.kept_bins < g.n() / 2, "{g:?}");
    let l = spec.length();
    let u = random_rounded(spec.io_len(), DType::F32);
    let k = random_filter(1, spec.filter_len());
    let conv = Convolution::new(spec.clone(), kind).expect("backend available");
    let filter = conv.prepare_filter(&k).expect("filter");
    let u32s: Vec<f32> = u.iter().map(|&v| v as f32).collect();
    let mut y = vec![f32::NAN; spec.io_len()];
    conv.forward(&filter, &u32s, None, &mut y).expect("forward");
    let k64: Vec<f64> = k.iter().map(|&v| f64::from(v)).collect();
    let kp = conv::reference::band_limited_filter_fft(&k64, g);
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for row in 0..spec.rows() {
        let picks: Vec<usize> = (0..60)
            .map(|_| (uniform(0.0, 1.0) * l as f64) as usize % l)
            .chain([0, l - 1])
            .collect();
        let x = &u[row * l..(row + 1) * l];
        want.extend(conv::reference::direct_band_limited_at(x, &kp, g, &picks));
        got.extend(picks.iter().map(|&t| f64::from(y[row * l + t])));
    }
    let err = relative_l2_error(&got, &want);
    assert!(
        err <= tolerance(DType::F32),
        "{kind}: sparse N = 2^20: relative L2 error {err:.3e} (kept {} bins, seed {seed})",
        g.kept_bins
    );
}

fn spectrum_memory_scales_with_filter(kind: BackendKind) {
    fresh_inputs();
    let (h, k) = (4, 64);
    let spec = ConvSpec::builder(1, h, 1 << 20, k).build().unwrap();
    let conv = Convolution::new(spec, kind).unwrap();
    let filter = conv.prepare_filter(&random_filter(h, k)).unwrap();
    // Complex f32 spectrum of an FFT size at most 32 * K per channel.
    assert!(
        filter.size_bytes() <= h * 32 * k * 8,
        "{kind}: {} bytes of spectrum for K = {k}",
        filter.size_bytes()
    );
    let dense = Convolution::new(ConvSpec::builder(1, h, 4096, 4096).build().unwrap(), kind)
        .unwrap()
        .prepare_filter(&random_filter(h, 4096))
        .unwrap();
    let sparse = Convolution::new(
        ConvSpec::builder(1, h, 4096, 4096)
            .keep_frequencies(0.25)
            .build()
            .unwrap(),
        kind,
    )
    .unwrap()
    .prepare_filter(&random_filter(h, 4096))
    .unwrap();
    assert!(
        sparse.size_bytes() * 3 < dense.size_bytes(),
        "{kind}: sparse spectrum {} bytes vs dense {}",
        sparse.size_bytes(),
        dense.size_bytes()
    );
}

fn nan_in_filter_propagates(kind: BackendKind) {
    fresh_inputs();
    let spec = ConvSpec::builder(2, 3, 100, 10).build().unwrap();
    let conv = Convolution::new(spec.clone(), kind).unwrap();
    let mut k = random_filter(3, 10);
    k[10 + 4] = f32::NAN; // channel 1
    let filter = conv.prepare_filter(&k).unwrap();
    let u: Vec<f32> = random_rounded(600, DType::F32)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let mut y = vec![0.0f32; 600];
    conv.forward(&filter, &u, None, &mut y).unwrap();
    for (row, out) in y.chunks(100).enumerate() {
        if row % 3 == 1 {
            assert!(
                out.iter().all(|v| v.is_nan()),
                "{kind}: NaN channel row {row}"
            );
        } else {
            assert!(
                out.iter().all(|v| v.is_finite()),
                "{kind}: clean channel row {row}"
            );
        }
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
    let mut y = vec![sentinel; 600];
    let gates = |pre, post| Some(Gates { pre, post });
    let cases: Vec<(&str, Result<(), ConvError>)> = vec![
        ("u", conv.forward(&filter, &short, gates(&ok, &ok), &mut y)),
        (
            "pregate",
            conv.forward(&filter, &ok, gates(&short, &ok), &mut y),
        ),
        (
            "postgate",
            conv.forward(&filter, &ok, gates(&ok, &short), &mut y),
        ),
        ("gates", conv.forward(&filter, &ok, None, &mut y)),
        (
            "y",
            conv.forward(&filter, &ok, gates(&ok, &ok), &mut y[..599]),
        ),
    ];
    for (arg, result) in cases {
        let err = result.expect_err(arg);
        assert_eq!(err.argument(), Some(arg), "{kind}: {err}");
    }
    assert!(
        y.iter().all(|&v| v == sentinel),
        "{kind}: output touched on error"
    );

    let half_u = vec![f16::from_f32(0.5); 600];
    let mut half_y = vec![f16::ZERO; 600];
    let err = conv
        .forward(&filter, &half_u, None, &mut half_y)
        .expect_err("dtype mismatch");
    assert!(
        matches!(err, ConvError::DTypeMismatch { arg: "u", .. }),
        "{err}"
    );
    assert!(half_y.iter().all(|v| *v == f16::ZERO));

    let err = conv.prepare_filter(&[0.0; 29]).expect_err("short k");
    assert_eq!(err.argument(), Some("k"));

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
        .forward(&other, &ok, gates(&ok, &ok), &mut y)
        .expect_err("foreign filter");
    assert_eq!(err.argument(), Some("filter"), "{err}");
    assert!(y.iter().all(|&v| v == sentinel));

    // Ungated problem given gates.
    let plain = Convolution::new(ConvSpec::builder(2, 3, 100, 10).build().unwrap(), kind).unwrap();
    let f = plain.prepare_filter(&random_filter(3, 10)).unwrap();
    let err = plain
        .forward(&f, &ok, gates(&ok, &ok), &mut y)
        .expect_err("gates");
    assert_eq!(err.argument(), Some("gates"));
}

/// Tensors the library allocates itself from the problem's shape alone (`tensor_zeros`,
/// `filter_tensor_zeros`) are an error, not an aborted process, when no memory can hold them:
/// `B * H * L` and `H * K` of 2^60 elements build as problems but are 2^62 bytes.
fn huge_tensors_are_a_typed_error(kind: BackendKind) {
    let huge = usize::MAX / 16;
    let host = kind == BackendKind::Cpu;
    // A GPU backend may refuse such a problem up front; the CPU backend prepares it.
    let prepared = |spec: ConvSpec| match Convolution::new(spec, kind) {
        Ok(conv) => Some(conv),
        Err(e) if !host => {
            println!("{kind}: {e}");
            None
        }
        Err(e) => panic!("{kind}: {e}"),
    };
    let long = ConvSpec::builder(1, 1, huge, 16).build().unwrap();
    if let Some(conv) = prepared(long) {
        let err = conv.tensor_zeros().expect_err("a 2^62-byte tensor");
        assert!(
            !host || matches!(err, ConvError::OutOfMemory { .. }),
            "{err}"
        );
    }
    let wide = ConvSpec::builder(1, huge, 1, 1).build().unwrap();
    if let Some(conv) = prepared(wide) {
        let err = conv
            .filter_tensor_zeros()
            .expect_err("a 2^62-byte filter tensor");
        assert!(
            !host || matches!(err, ConvError::OutOfMemory { .. }),
            "{err}"
        );
    }
}

fn concurrent_calls_agree(kind: BackendKind) {
    fresh_inputs();
    let spec = ConvSpec::builder(2, 4, 3000, 500).build().unwrap();
    let conv = Convolution::new(spec.clone(), kind).unwrap();
    let k = random_filter(4, 500);
    let filter = conv.prepare_filter(&k).unwrap();
    let inputs: Vec<Vec<f32>> = (0..4)
        .map(|_| {
            random_rounded(24000, DType::F32)
                .iter()
                .map(|&v| v as f32)
                .collect()
        })
        .collect();
    let serial: Vec<Vec<f32>> = inputs
        .iter()
        .map(|u| {
            let mut y = vec![f32::NAN; u.len()];
            conv.forward(&filter, u, None, &mut y).unwrap();
            let u64s: Vec<f64> = u.iter().map(|&v| v as f64).collect();
            let k64: Vec<f64> = k.iter().map(|&v| v as f64).collect();
            let want = reference_forward(&spec, &u64s, &k64, None);
            let got: Vec<f64> = y.iter().map(|&v| v as f64).collect();
            assert!(
                relative_l2_error(&got, &want) <= 1e-5,
                "{kind}: serial result"
            );
            y
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|u| {
                s.spawn(|| {
                    let mut y = vec![f32::NAN; u.len()];
                    conv.forward(&filter, u, None, &mut y).unwrap();
                    y
                })
            })
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

/// Device-resident tensors give exactly the result of host slices; misuse is a typed error.
/// A filter kept on the backend (`filter_tensor_from_host` + `prepare_filter_device`) gives the
/// same outputs as one prepared from a host slice; misuse is a typed error.
fn device_filter(kind: BackendKind) {
    let seed = fresh_inputs();
    for builder in [
        ConvSpec::builder(3, 5, 700, 700),
        ConvSpec::builder(2, 3, 5000, 60).keep_frequencies(0.4),
    ] {
        let spec = builder.build().unwrap();
        let n = spec.io_len();
        let conv = Convolution::new(spec.clone(), kind).unwrap();
        let k = random_filter(spec.channels(), spec.filter_len());
        let u: Vec<f32> = to_elements(&random_rounded(n, DType::F32));
        let mut want = vec![f32::NAN; n];
        conv.forward(&conv.prepare_filter(&k).unwrap(), &u, None, &mut want)
            .unwrap();
        let k_t = conv.filter_tensor_from_host(&k).unwrap();
        assert_eq!((k_t.backend(), k_t.len()), (kind, k.len()));
        let filter = conv.prepare_filter_device(&k_t).unwrap();
        let mut got = vec![f32::NAN; n];
        conv.forward(&filter, &u, None, &mut got).unwrap();
        let err = relative_l2_error(&to_f64(&got), &to_f64(&want));
        assert!(
            err <= 1e-6,
            "{kind}: device filter differs by {err:.2e} ({spec:?}, seed {seed})"
        );
        // Misuse: a short filter, an I/O tensor in place of a filter.
        assert_eq!(
            conv.filter_tensor_from_host(&k[1..])
                .unwrap_err()
                .argument(),
            Some("k")
        );
        let io = conv.tensor_from_host(&u).unwrap();
        assert!(conv.prepare_filter_device(&io).is_err());
    }
}

fn device_tensors(kind: BackendKind) {
    fn typed<T: Element + 'static>(kind: BackendKind, spec: ConvSpec) {
        let seed = fresh_inputs();
        let dtype = spec.dtype();
        let n = spec.io_len();
        let conv = Convolution::new(spec.clone(), kind).unwrap();
        let k = random_filter(spec.channels(), spec.filter_len());
        let filter = conv.prepare_filter(&k).unwrap();
        let u: Vec<T> = to_elements(&random_rounded(n, dtype));
        let pre: Vec<T> = to_elements(&random_rounded(n, dtype));
        let post: Vec<T> = to_elements(&random_rounded(n, dtype));
        let gated = spec.gated();
        let mut want = vec![T::from_f64(f64::NAN); n];
        let gates = gated.then_some(Gates {
            pre: &pre,
            post: &post,
        });
        conv.forward(&filter, &u, gates, &mut want).unwrap();
        let du = conv.tensor_from_host(&u).unwrap();
        let dpre = conv.tensor_from_host(&pre).unwrap();
        let dpost = conv.tensor_from_host(&post).unwrap();
        let mut dy = conv.tensor_zeros().unwrap();
        assert_eq!((dy.backend(), dy.dtype(), dy.len()), (kind, dtype, n));
        conv.forward_device(&filter, &du, gated.then_some((&dpre, &dpost)), &mut dy)
            .unwrap();
        let mut got = vec![T::from_f64(f64::NAN); n];
        conv.tensor_to_host(&dy, &mut got).unwrap();
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits());
        assert!(
            same,
            "{kind}: device tensors differ from host slices ({spec:?}, seed {seed})"
        );
        // Misuse: wrong gates, a tensor of another problem, a short host buffer.
        let err = conv
            .forward_device(&filter, &du, (!gated).then_some((&dpre, &dpost)), &mut dy)
            .unwrap_err();
        assert_eq!(err.argument(), Some("gates"), "{err}");
        let other_spec = ConvSpec::builder(1, 1, 64, 8).dtype(dtype).build().unwrap();
        let other = Convolution::new(other_spec, kind).unwrap();
        let small = other.tensor_zeros().unwrap();
        let err = conv
            .forward_device(&filter, &small, gated.then_some((&dpre, &dpost)), &mut dy)
            .unwrap_err();
        assert_eq!(err.argument(), Some("u"), "{err}");
        let mut short = vec![T::from_f64(0.0); n - 1];
        assert!(conv.tensor_to_host(&dy, &mut short).is_err());
    }
    let cases = [
        ConvSpec::builder(2, 3, 300, 300),
        ConvSpec::builder(3, 2, 1000, 50)
            .gated(true)
            .dtype(DType::F16),
        ConvSpec::builder(1, 2, 4096, 4096)
            .circular()
            .dtype(DType::Bf16),
    ];
    for builder in cases {
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

backend_suites!([
    random_shapes,
    device_tensors,
    device_filter,
    causal,
    circular,
    gated,
    partial,
    frequency_sparse,
    odd_shapes,
    long_sequences,
    spectrum_memory_scales_with_filter,
    nan_in_filter_propagates,
    bad_input_is_a_typed_error,
    huge_tensors_are_a_typed_error,
    concurrent_calls_agree,
]);

#[test]
fn invalid_problems_name_their_argument() {
    let arg = |b: ConvSpecBuilder| match b.build() {
        Err(e) => ConvError::from(e).argument(),
        Ok(s) => panic!("accepted {s:?}"),
    };
    assert_eq!(arg(ConvSpec::builder(1, 1, 10, 11)), Some("filter_len"));
    assert_eq!(arg(ConvSpec::builder(1, 1, 0, 1)), Some("length"));
    assert_eq!(arg(ConvSpec::builder(0, 1, 10, 1)), Some("batch"));
    assert_eq!(arg(ConvSpec::builder(1, 0, 10, 1)), Some("channels"));
}

#[test]
fn best_available_backend_runs() {
    let kind = BackendKind::best_available().expect("the CPU backend is always there");
    let spec = ConvSpec::builder(1, 1, 64, 64).build().unwrap();
    Convolution::with_best_backend(spec).unwrap();
    assert!(kind.probe().is_ok());
}
