//! CUDA-specific forward checks against the f64 oracle: plans with several global-memory passes
//! (forced by a small shared-memory budget), chunked execution, device tensors, typed errors,
//! every FFT size 256 .. 4M, and the backward against the f64 adjoint. Skips (saying why) where no CUDA device is present.

use backend_cuda::{device, CudaConvolution, CudaError, CudaOptions, CudaTensor};
use half::{bf16, f16};
use monarch_core::reference::{reference_forward, relative_l2_error};
use monarch_core::{ConvSpec, ConvSpecBuilder, DType, Element};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// The CUDA device, or `false` after printing why the test is skipped (a failure when
/// `FFTCONV_REQUIRE_BACKENDS` names `cuda`).
fn cuda_present(test: &str) -> bool {
    match device() {
        Ok(_) => true,
        Err(e) => {
            let required = std::env::var("FFTCONV_REQUIRE_BACKENDS").unwrap_or_default();
            assert!(
                !required.split(',').any(|b| b.trim() == "cuda"),
                "{test}: CUDA is required but: {e}"
            );
            eprintln!("skipped {test}: {e}");
            false
        }
    }
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::Bf16 => 1.5e-2,
    }
}

/// Runs `spec` with `options` on random inputs (fresh seed, printed on failure) and compares
/// with the f64 oracle; the output starts as NaN so unwritten elements fail.
fn check_typed<T: Element>(spec: &ConvSpec, options: CudaOptions) -> CudaConvolution {
    let seed: u64 = rand::rng().random();
    let mut rng = StdRng::seed_from_u64(seed);
    let dtype = spec.dtype();
    let mut random = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| dtype.round_f64(rng.random_range(-1.0..1.0)))
            .collect()
    };
    let u = random(spec.io_len());
    let gates = spec
        .gated()
        .then(|| (random(spec.io_len()), random(spec.io_len())));
    let k: Vec<f32> = random(spec.filter_elems())
        .iter()
        .map(|&v| v as f32)
        .collect();
    let conv = CudaConvolution::with_options(spec, options).expect("convolution");
    let filter = conv.prepare_filter(&k).expect("filter");
    let to_t = |x: &[f64]| x.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>();
    let u_t = to_t(&u);
    let gates_t = gates.as_ref().map(|(p, q)| (to_t(p), to_t(q)));
    let mut y = vec![T::from_f64(f64::NAN); spec.io_len()];
    conv.forward(
        &filter,
        &u_t,
        gates_t.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice())),
        &mut y,
    )
    .expect("forward");
    let got: Vec<f64> = y.iter().map(|v| v.to_f64()).collect();
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("element {i} not written ({spec:?}, {options:?}, seed {seed})");
    }
    let k64: Vec<f64> = k.iter().map(|&v| f64::from(v)).collect();
    let want = reference_forward(
        spec,
        &u,
        &k64,
        gates.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice())),
    );
    let err = relative_l2_error(&got, &want);
    assert!(
        err <= tolerance(dtype),
        "relative error {err:.2e} for {spec:?} with {options:?} (factors {:?}, seed {seed})",
        conv.factors()
    );
    conv
}

fn check(builder: ConvSpecBuilder, options: CudaOptions) -> CudaConvolution {
    let spec = builder.build().expect("spec");
    match spec.dtype() {
        DType::F32 => check_typed::<f32>(&spec, options),
        DType::F16 => check_typed::<f16>(&spec, options),
        DType::Bf16 => check_typed::<bf16>(&spec, options),
    }
}

#[test]
fn plans_with_several_global_passes() {
    if !cuda_present("plans_with_several_global_passes") {
        return;
    }
    // 16 shared points: N = 4096 has three stages (two column passes), N = 8192 four.
    for (points, l, want_global) in [
        (16, 2048, 2),
        (16, 4096, 3),
        (64, 2048, 1),
        (64, 4096, 2),
        (256, 1000, 1),
        (4096, 2048, 0),
    ] {
        let options = CudaOptions {
            max_shared_points: Some(points),
            ..CudaOptions::default()
        };
        let conv = check(ConvSpec::builder(3, 2, l, l), options);
        assert_eq!(
            conv.global_passes(),
            want_global,
            "{points} points, L = {l}: factors {:?}",
            conv.factors()
        );
        // Every variant on a multi-pass plan.
        check(
            ConvSpec::builder(2, 3, l, l / 3)
                .gated(true)
                .dtype(DType::Bf16),
            options,
        );
        check(
            ConvSpec::builder(1, 2, l, l).circular().dtype(DType::F16),
            options,
        );
        check(
            ConvSpec::builder(2, 2, l, l).keep_frequencies(0.25),
            options,
        );
        check(ConvSpec::builder(2, 1, 3 * l + 5, 40), options);
    }
}

#[test]
fn chunks_cover_every_row() {
    if !cuda_present("chunks_cover_every_row") {
        return;
    }
    for chunk_elems in [1, 2000, 5000] {
        let options = CudaOptions {
            chunk_elems: Some(chunk_elems),
            max_shared_points: Some(64),
        };
        check(ConvSpec::builder(3, 5, 1000, 300), options);
        check(
            ConvSpec::builder(5, 3, 700, 700).gated(true).circular(),
            options,
        );
        check(ConvSpec::builder(1, 4, 1000, 10), options);
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    if !cuda_present("bad_arguments_are_typed_errors") {
        return;
    }
    let spec = ConvSpec::builder(2, 3, 100, 10).build().unwrap();
    let conv = CudaConvolution::new(&spec).unwrap();
    let arg = |e: CudaError| match e {
        CudaError::InvalidArgument { arg, .. } => arg,
        other => panic!("expected an invalid argument, got {other}"),
    };
    assert_eq!(arg(conv.prepare_filter(&[0.0; 29]).unwrap_err()), "k");
    let filter = conv.prepare_filter(&[0.5; 30]).unwrap();
    let u = vec![1.0f32; 600];
    let mut y = vec![7.0f32; 599];
    assert_eq!(
        arg(conv.forward(&filter, &u, None, &mut y).unwrap_err()),
        "y"
    );
    assert!(y.iter().all(|&v| v == 7.0), "y written on error");
    let mut y = vec![0.0f32; 600];
    assert_eq!(
        arg(conv
            .forward(&filter, &u, Some((&u, &u)), &mut y)
            .unwrap_err()),
        "gates"
    );
    let mut y16 = vec![f16::ZERO; 600];
    assert_eq!(
        arg(conv
            .forward(&filter, &vec![f16::ONE; 600], None, &mut y16)
            .unwrap_err()),
        "u"
    );
    let other = CudaConvolution::new(&ConvSpec::builder(2, 3, 100, 20).build().unwrap())
        .unwrap()
        .prepare_filter(&[0.5; 60])
        .unwrap();
    assert_eq!(
        arg(conv.forward(&other, &u, None, &mut y).unwrap_err()),
        "filter"
    );
}

#[test]
fn device_tensors_give_the_host_result() {
    if !cuda_present("device_tensors_give_the_host_result") {
        return;
    }
    let mut rng = StdRng::seed_from_u64(rand::rng().random());
    for (spec, chunk_elems) in [
        (
            ConvSpec::builder(3, 4, 500, 100)
                .gated(true)
                .build()
                .unwrap(),
            Some(1000),
        ),
        (
            ConvSpec::builder(2, 3, 256, 256)
                .circular()
                .build()
                .unwrap(),
            None,
        ),
        (
            ConvSpec::builder(4, 2, 3000, 3000)
                .dtype(DType::F16)
                .build()
                .unwrap(),
            Some(1),
        ),
    ] {
        let options = CudaOptions {
            chunk_elems,
            max_shared_points: Some(256),
        };
        let conv = CudaConvolution::with_options(&spec, options).unwrap();
        let n = spec.io_len();
        let mut random = |len: usize| -> Vec<f16> {
            (0..len)
                .map(|_| f16::from_f64(rng.random_range(-1.0..1.0)))
                .collect()
        };
        let k: Vec<f32> = random(spec.filter_elems())
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let filter = conv.prepare_filter(&k).unwrap();
        let (u, pre, post) = (random(n), random(n), random(n));
        let gated = spec.gated();
        macro_rules! compare {
            ($t:ty) => {{
                let cast = |x: &[f16]| {
                    x.iter()
                        .map(|v| <$t>::from_f32(v.to_f32()))
                        .collect::<Vec<$t>>()
                };
                let (u, pre, post) = (cast(&u), cast(&pre), cast(&post));
                let gates = gated.then_some((pre.as_slice(), post.as_slice()));
                let mut want = vec![<$t>::from_f32(f32::NAN); n];
                conv.forward(&filter, &u, gates, &mut want).unwrap();
                let du = CudaTensor::from_host(&u).unwrap();
                let dpre = CudaTensor::from_host(&pre).unwrap();
                let dpost = CudaTensor::from_host(&post).unwrap();
                let mut dy = CudaTensor::zeros(spec.dtype(), n).unwrap();
                conv.forward_device(&filter, &du, gated.then_some((&dpre, &dpost)), &mut dy)
                    .unwrap();
                let mut got = vec![<$t>::from_f32(f32::NAN); n];
                dy.to_host(&mut got).unwrap();
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "device and host results differ for {spec:?}"
                );
                let mut wrong = vec![0.0f32; n + 1];
                assert!(dy.to_host(&mut wrong).is_err());
            }};
        }
        match spec.dtype() {
            DType::F32 => compare!(f32),
            DType::F16 => compare!(f16),
            DType::Bf16 => compare!(bf16),
        }
    }
}

#[test]
fn odd_length_16_bit_tensors_round_trip() {
    if !cuda_present("odd_length_16_bit_tensors_round_trip") {
        return;
    }
    // Three f16 values are 6 bytes, not a whole number of 4-byte words: the readback must
    // still return the last one (it once returned stale staging memory there).
    for (a, b) in [
        (vec![1.0, 2.0, 3.0], vec![7.0, 8.0, 9.0]),
        (vec![5.0], vec![6.0]),
    ] {
        let a: Vec<f16> = a.into_iter().map(f16::from_f32).collect();
        let b: Vec<f16> = b.into_iter().map(f16::from_f32).collect();
        let ta = CudaTensor::from_host(&a).unwrap();
        let _tb = CudaTensor::from_host(&b).unwrap();
        let mut back = vec![f16::NAN; a.len()];
        ta.to_host(&mut back).unwrap();
        assert_eq!(back, a);
        let zeros = CudaTensor::zeros(DType::Bf16, 5).unwrap();
        let mut z = vec![bf16::NAN; 5];
        zeros.to_host(&mut z).unwrap();
        assert!(z.iter().all(|v| v.to_f32() == 0.0), "{z:?}");
    }
}

#[test]
fn every_fft_size_from_256_to_4m() {
    if !cuda_present("every_fft_size_from_256_to_4m") {
        return;
    }
    // Causal, L = N / 2: FFT size N. One row pair per size keeps the oracle (O(L K)) cheap for
    // the large sizes: K is small there (a partial convolution still uses the full N when
    // L + K - 1 needs it, so K = L for the small sizes and short filters for the large ones).
    for log2n in 8..=22u32 {
        let l = 1usize << (log2n - 1);
        let k = if log2n <= 14 { l } else { 64 };
        let dtype = [DType::F32, DType::F16, DType::Bf16][log2n as usize % 3];
        let conv = check(
            ConvSpec::builder(2, 1, l, k).dtype(dtype),
            CudaOptions::default(),
        );
        println!(
            "N = 2^{log2n} ({dtype}): factors {:?}, {} global passes",
            conv.factors(),
            conv.global_passes()
        );
    }
    // Circular at the largest sizes (N = L; the history wraps around).
    for log2n in [20u32, 22] {
        let l = 1usize << log2n;
        check(
            ConvSpec::builder(1, 2, l, 100).circular().dtype(DType::F16),
            CudaOptions::default(),
        );
    }
}

#[test]
fn padding_switch_and_kernel_cache_give_the_same_results() {
    if !cuda_present("padding_switch_and_kernel_cache_give_the_same_results") {
        return;
    }
    println!("{}", device().unwrap().description());
    // A second convolution of the same kind reuses the compiled kernels.
    for _ in 0..2 {
        check(
            ConvSpec::builder(2, 3, 4096, 4096).gated(true),
            CudaOptions::default(),
        );
    }
}

/// Backward on random inputs against the f64 adjoint oracle, f32 I/O.
fn check_backward(spec: &ConvSpec, options: CudaOptions) {
    use monarch_core::reference_backward::reference_backward;
    let seed: u64 = rand::rng().random();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut random = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| f64::from(rng.random_range(-1.0f32..1.0)))
            .collect()
    };
    let n = spec.io_len();
    let (u, dy) = (random(n), random(n));
    let gates = spec.gated().then(|| (random(n), random(n)));
    let k = random(spec.filter_elems());
    let conv = CudaConvolution::with_options(spec, options).expect("convolution");
    let k32: Vec<f32> = k.iter().map(|&v| v as f32).collect();
    let filter = conv.prepare_filter(&k32).unwrap();
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let (u32s, dy32) = (f32s(&u), f32s(&dy));
    let gates32 = gates.as_ref().map(|(p, q)| (f32s(p), f32s(q)));
    let mut du = vec![f32::NAN; n];
    let mut dk = vec![f32::NAN; spec.filter_elems()];
    let mut dpre = vec![f32::NAN; n];
    let mut dpost = vec![f32::NAN; n];
    let gated = spec.gated();
    conv.backward(
        &filter,
        &u32s,
        gates32.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice())),
        &dy32,
        backend_cuda::CudaGradients {
            du: &mut du,
            dk: &mut dk,
            dpregate: gated.then_some(&mut dpre[..]),
            dpostgate: gated.then_some(&mut dpost[..]),
        },
    )
    .expect("backward");
    let want = reference_backward(
        spec,
        &u,
        &k,
        gates.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice())),
        &dy,
    );
    let f64s = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
    let mut pairs = vec![
        ("du", f64s(&du), want.du.clone()),
        ("dk", f64s(&dk), want.dk.clone()),
    ];
    if gated {
        pairs.push(("dpregate", f64s(&dpre), want.dpregate.clone().unwrap()));
        pairs.push(("dpostgate", f64s(&dpost), want.dpostgate.clone().unwrap()));
    }
    for (name, got, want) in pairs {
        let err = relative_l2_error(&got, &want);
        assert!(
            err <= 1e-5,
            "{name}: relative error {err:.2e} for {spec:?} with {options:?} (factors {:?}, seed {seed})",
            conv.factors()
        );
    }
}

#[test]
fn backward_on_multi_pass_plans_and_chunks() {
    if !cuda_present("backward_on_multi_pass_plans_and_chunks") {
        return;
    }
    for (points, chunk_elems) in [(16, None), (64, Some(700)), (4096, Some(1))] {
        let options = CudaOptions {
            max_shared_points: Some(points),
            chunk_elems,
        };
        for builder in [
            ConvSpec::builder(2, 3, 1500, 1500),
            ConvSpec::builder(3, 2, 1000, 1000).gated(true).circular(),
            ConvSpec::builder(2, 2, 2500, 40).gated(true),
            ConvSpec::builder(1, 3, 3000, 100).circular(),
            ConvSpec::builder(2, 1, 1024, 1024).keep_frequencies(0.25),
            ConvSpec::builder(3, 1, 5000, 300)
                .keep_frequencies(0.3)
                .gated(true),
        ] {
            check_backward(&builder.build().unwrap(), options);
        }
    }
}

#[test]
fn filter_spectra_on_the_gpu_match_the_host() {
    if !cuda_present("filter_spectra_on_the_gpu_match_the_host") {
        return;
    }
    let mut rng = StdRng::seed_from_u64(rand::rng().random());
    // One fused pass, one and two column passes, odd H (an unpaired last row), sparsity,
    // small chunks (several rounds of filter pairs).
    for (points, chunk_elems, builder) in [
        (None, None, ConvSpec::builder(2, 5, 1000, 300)),
        (
            Some(64),
            None,
            ConvSpec::builder(1, 3, 2048, 2048).keep_frequencies(0.3),
        ),
        (
            Some(16),
            Some(1),
            ConvSpec::builder(2, 7, 4096, 50).circular(),
        ),
        (None, None, ConvSpec::builder(1, 2, 1 << 19, 1 << 19)),
    ] {
        let spec = builder.build().unwrap();
        let options = CudaOptions {
            max_shared_points: points,
            chunk_elems,
        };
        let conv = CudaConvolution::with_options(&spec, options).unwrap();
        let k: Vec<f32> = (0..spec.filter_elems())
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let gpu = conv.prepare_filter(&k).unwrap();
        let host = conv.prepare_filter_host(&k).unwrap();
        let read = |f: &backend_cuda::CudaFilterSpectrum| -> Vec<f64> {
            f.to_host().unwrap().iter().map(|&v| f64::from(v)).collect()
        };
        let (g, h) = (read(&gpu), read(&host));
        assert_eq!(g.len(), h.len());
        let err = relative_l2_error(&g, &h);
        assert!(err < 1e-5, "{spec:?} {options:?}: relative error {err:.2e}");
        // The device-tensor entry point gives the same spectrum.
        let kt = CudaTensor::from_host(&k).unwrap();
        let again = read(&conv.prepare_filter_device(&kt).unwrap());
        assert_eq!(again, g);
        let wrong = CudaTensor::from_host(&k[1..]).unwrap();
        assert!(conv.prepare_filter_device(&wrong).is_err());
    }
}

#[test]
fn caller_streams_give_the_blocking_result() {
    if !cuda_present("caller_streams_give_the_blocking_result") {
        return;
    }
    let mut rng = StdRng::seed_from_u64(rand::rng().random());
    for (builder, points) in [
        (ConvSpec::builder(3, 4, 3000, 3000), None),
        (ConvSpec::builder(2, 3, 1000, 200).gated(true), Some(64)),
    ] {
        let spec = builder.build().unwrap();
        let options = CudaOptions {
            max_shared_points: points,
            chunk_elems: Some(4000),
        };
        let conv = CudaConvolution::with_options(&spec, options).unwrap();
        let n = spec.io_len();
        let mut random =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let filter = conv.prepare_filter(&random(spec.filter_elems())).unwrap();
        let inputs: Vec<CudaTensor> = (0..3)
            .map(|_| CudaTensor::from_host(&random(n)).unwrap())
            .collect();
        let gates = spec.gated().then_some((&inputs[1], &inputs[2]));
        let mut want = CudaTensor::zeros(DType::F32, n).unwrap();
        conv.forward_device(&filter, &inputs[0], gates, &mut want)
            .unwrap();
        let mut want_host = vec![0.0f32; n];
        want.to_host(&mut want_host).unwrap();
        // Two streams, calls back to back without waiting in between.
        let dev = device().unwrap();
        let (s1, s2) = (dev.new_stream().unwrap(), dev.new_stream().unwrap());
        let mut y1 = CudaTensor::zeros(DType::F32, n).unwrap();
        let mut y2 = CudaTensor::zeros(DType::F32, n).unwrap();
        // SAFETY: inputs, filter and outputs live until both streams are synchronized below,
        // and nothing reads y1/y2 before that.
        unsafe {
            conv.forward_device_on_stream(&s1, &filter, &inputs[0], gates, &mut y1)
                .unwrap();
            conv.forward_device_on_stream(&s2, &filter, &inputs[0], gates, &mut y2)
                .unwrap();
        }
        s2.synchronize().unwrap();
        s1.synchronize().unwrap();
        for y in [&y1, &y2] {
            let mut got = vec![f32::NAN; n];
            y.to_host(&mut got).unwrap();
            assert!(
                got.iter()
                    .zip(&want_host)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "stream result differs for {spec:?}"
            );
        }
    }
}

#[test]
fn copy_bandwidth_is_measured() {
    if !cuda_present("copy_bandwidth_is_measured") {
        return;
    }
    let bw = backend_cuda::copy_bandwidth(64 << 20, 2).unwrap();
    println!("copy bandwidth {:.1} GB/s", bw / 1e9);
    assert!(bw.is_finite() && bw > 1e9, "{bw} bytes/s");
}
