//! Vulkan-specific forward and backward checks against the f64 oracles: plans with several
//! global-memory passes (forced by a small shared-memory budget), chunked execution, the
//! backward's taps sum over pairs, the fused backward (several rows per workgroup, gated,
//! channels of very different magnitudes), and the shader path chosen on lavapipe. Skips
//! (saying why) where no Vulkan device is present.

use backend_vulkan::{context, VulkanConvolution, VulkanError, VulkanOptions};
use half::{bf16, f16};
use monarch_core::reference::{reference_forward, relative_l2_error};
use monarch_core::{ConvSpec, ConvSpecBuilder, DType, Element};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// The Vulkan device, or `false` after printing why the test is skipped (a failure when
/// `FFTCONV_REQUIRE_BACKENDS` names `vulkan`).
fn vulkan_present(test: &str) -> bool {
    match context() {
        Ok(_) => true,
        Err(e) => {
            let required = std::env::var("FFTCONV_REQUIRE_BACKENDS").unwrap_or_default();
            assert!(
                !required.split(',').any(|b| b.trim() == "vulkan"),
                "{test}: Vulkan is required but: {e}"
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
fn check_typed<T: Element>(spec: &ConvSpec, options: VulkanOptions) -> VulkanConvolution {
    check_typed_scaled::<T>(spec, options, &[1.0])
}

/// [`check_typed`] with `u` of channel h scaled by `scales[h % len]`, compared channel by
/// channel (each channel keeps its own relative precision).
fn check_typed_scaled<T: Element>(
    spec: &ConvSpec,
    options: VulkanOptions,
    scales: &[f64],
) -> VulkanConvolution {
    check_typed_filter::<T>(spec, options, scales, None)
}

/// [`check_typed_scaled`] with, where `decay` is given, a smooth filter: tap t of each channel
/// `exp(-t / decay) (1 + 0.05 r)` with r uniform in [-1, 1) (a low-pass spectrum, as Hyena's
/// decaying filters have: its bins differ by orders of magnitude along the frequency).
fn check_typed_filter<T: Element>(
    spec: &ConvSpec,
    options: VulkanOptions,
    scales: &[f64],
    decay: Option<f64>,
) -> VulkanConvolution {
    let seed: u64 = rand::rng().random();
    let mut rng = StdRng::seed_from_u64(seed);
    let dtype = spec.dtype();
    let (l, h_count) = (spec.length(), spec.channels());
    let mut random = |n: usize, scaled: bool| -> Vec<f64> {
        (0..n)
            .map(|i| {
                let scale = if scaled {
                    scales[(i / l % h_count) % scales.len()]
                } else {
                    1.0
                };
                dtype.round_f64(scale * rng.random_range(-1.0..1.0))
            })
            .collect()
    };
    let u = random(spec.io_len(), true);
    let gates = spec
        .gated()
        .then(|| (random(spec.io_len(), false), random(spec.io_len(), false)));
    let k: Vec<f32> = random(spec.filter_elems(), false)
        .iter()
        .enumerate()
        .map(|(i, &v)| match decay {
            Some(tau) => {
                ((-((i % spec.filter_len()) as f64) / tau).exp() * (1.0 + 0.05 * v)) as f32
            }
            None => v as f32,
        })
        .collect();
    let gates = gates.as_ref().map(|(p, q)| (p.as_slice(), q.as_slice()));
    let context = format!("u scaled by {scales:?}, seed {seed}");
    forward_against_oracle::<T>(spec, options, &u, gates, &k, &context)
}

/// Runs the forward on `u`, `gates` (values of `T`, as f64) and `k` into an output poisoned with
/// NaN, and checks that every element was written and each channel is within the dtype's
/// tolerance of the f64 oracle (`context` goes into the failure message).
fn forward_against_oracle<T: Element>(
    spec: &ConvSpec,
    options: VulkanOptions,
    u: &[f64],
    gates: Option<(&[f64], &[f64])>,
    k: &[f32],
    context: &str,
) -> VulkanConvolution {
    let (l, h_count) = (spec.length(), spec.channels());
    let conv = VulkanConvolution::with_options(spec, options).expect("convolution");
    let filter = conv.prepare_filter(k).expect("filter");
    let to_t = |x: &[f64]| x.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>();
    let u_t = to_t(u);
    let gates_t = gates.map(|(p, q)| (to_t(p), to_t(q)));
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
        panic!("element {i} not written ({spec:?}, {options:?}, {context})");
    }
    let k64: Vec<f64> = k.iter().map(|&v| f64::from(v)).collect();
    let want = reference_forward(spec, u, &k64, gates);
    for h in 0..h_count {
        let channel = |x: &[f64]| channel_rows(x, l, h_count, h);
        let err = relative_l2_error(&channel(&got), &channel(&want));
        assert!(
            err <= tolerance(spec.dtype()),
            "channel {h}: relative error {err:.2e} for {spec:?} with {options:?} ({context}; \
             factors {:?}, cooperative tile {:?})",
            conv.factors(),
            conv.cooperative_tile()
        );
    }
    conv
}

/// Channel h's rows of `x`, rows of `run` elements cycling through `channels` channels
/// (`[B, H, L]` tensors, or `[H, K]` with one batch).
fn channel_rows(x: &[f64], run: usize, channels: usize, h: usize) -> Vec<f64> {
    x.chunks(run)
        .enumerate()
        .filter(|(row, _)| row % channels == h)
        .flat_map(|(_, r)| r.iter().copied())
        .collect()
}

fn check(builder: ConvSpecBuilder, options: VulkanOptions) -> VulkanConvolution {
    let spec = builder.build().expect("spec");
    match spec.dtype() {
        DType::F32 => check_typed::<f32>(&spec, options),
        DType::F16 => check_typed::<f16>(&spec, options),
        DType::Bf16 => check_typed::<bf16>(&spec, options),
    }
}

#[test]
fn plans_with_several_global_passes() {
    if !vulkan_present("plans_with_several_global_passes") {
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
        let options = VulkanOptions {
            max_shared_points: Some(points),
            ..VulkanOptions::default()
        };
        let conv = check(ConvSpec::builder(3, 2, l, l), options);
        assert_eq!(
            conv.global_passes(),
            want_global,
            "{points} points, L = {l}: factors {:?}",
            conv.factors()
        );
        check_every_variant(l, options);
    }
}

/// Every variant at length `l` with `options` (meant for multi-pass plans): gated bf16 with
/// K = L / 3, circular f16, 75% sparse, and overlap-save blocks of a short filter.
fn check_every_variant(l: usize, options: VulkanOptions) {
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

#[test]
fn register_pass_every_radix_and_variant() {
    if !vulkan_present("register_pass_every_radix_and_variant") {
        return;
    }
    // N = 16 .. 4096: every first radix (2^(log2 N mod 4)) and pass count, several lines per
    // workgroup below 4096; then the fused block of multi-pass plans; both passes, so the
    // radix-2 one stays checked too.
    for register in [true, false] {
        let options = VulkanOptions {
            register_fft: Some(register),
            ..VulkanOptions::default()
        };
        for log2n in 4..=12u32 {
            let n = 1usize << log2n;
            let conv = check(ConvSpec::builder(3, 5, n / 2, n / 2), options);
            if conv.global_passes() > 0 {
                continue; // a device with less shared memory: no one-pass plan at this N
            }
            assert_eq!(conv.register_pass(), register, "N = {n}");
            check(
                ConvSpec::builder(2, 3, n / 2, n / 3 + 1)
                    .gated(true)
                    .dtype(DType::Bf16),
                options,
            );
            check(
                ConvSpec::builder(1, 3, n, n).circular().dtype(DType::F16),
                options,
            );
            check(
                ConvSpec::builder(3, 2, n / 2, n / 2).keep_frequencies(0.25),
                options,
            );
            // Overlap-save blocks: several segments per row, an odd count per channel.
            check(ConvSpec::builder(1, 2, 5 * n / 2 + 3, n / 4), options);
        }
        // The fused block after global stages (lines of 16 .. 256 points, several per pair).
        for (points, l) in [(16, 2048), (256, 20000)] {
            let options = VulkanOptions {
                max_shared_points: Some(points),
                register_fft: Some(register),
                ..VulkanOptions::default()
            };
            let conv = check(ConvSpec::builder(2, 3, l, l), options);
            assert!(conv.global_passes() > 0, "{points} points, L = {l}");
            assert_eq!(conv.register_pass(), register, "{points} points, L = {l}");
            check_every_variant(l, options);
        }
    }
}

/// The register-radix forward holding one line longer than the shared memory per workgroup
/// (the whole FFT, exchanged through the shared memory in 2 or 4 rounds): first radices 8, 16
/// and 4 with 2 and 3 passes on small shared memories, every variant at 2 rounds, and the sizes
/// this is for (8K and 16K points: first radix 2 and 4, 4 passes, on 4096 shared points). Where
/// rounds are capped at 1, or 8 would be needed, the plan's column passes run. (Each line length
/// is a pipeline of its own, ~12 s of lavapipe's compiler: hence few of them.)
#[test]
fn register_pass_lines_longer_than_shared_memory() {
    if !vulkan_present("register_pass_lines_longer_than_shared_memory") {
        return;
    }
    // Explicit options, so that the environment's switches do not change the plans.
    let with = |points: Option<u32>, rounds: u32| VulkanOptions {
        max_shared_points: points,
        max_exchange_rounds: Some(rounds),
        register_fft: Some(true),
        ..VulkanOptions::default()
    };
    // (shared points, N)
    for (points, n) in [(64, 128), (64, 256), (256, 1024)] {
        let conv = check(ConvSpec::builder(3, 5, n / 2, n / 2), with(Some(points), 4));
        assert_eq!(
            (conv.global_passes(), conv.register_pass()),
            (0, true),
            "{points} points, N = {n}: factors {:?}",
            conv.factors()
        );
    }
    // Capped at 1 round, or too long for 4: the column passes.
    let capped = check(ConvSpec::builder(2, 3, 512, 512), with(Some(256), 1));
    assert!(capped.global_passes() > 0);
    let eight = check(ConvSpec::builder(1, 3, 1024, 1024), with(Some(256), 4));
    assert!(eight.global_passes() > 0);
    check_every_variant(64, with(Some(64), 4));
    // 8K and 16K points (512 and 1024 invocations) on the device's own shared memory: one pass
    // where it holds 4096 points (f32 I/O: no cooperative-matrix slots share it) and allows
    // workgroups of that many invocations.
    let caps = context().unwrap().capabilities().clone();
    let invocations = caps.max_invocations.min(caps.max_workgroup_size_x) as usize;
    for l in [4096, 8192] {
        let conv = check(ConvSpec::builder(1, 3, l, l), with(None, 4));
        if caps.shared_memory_bytes >= 32768 && invocations >= l / 8 {
            assert_eq!(
                (conv.global_passes(), conv.register_pass()),
                (0, true),
                "L = {l}: factors {:?}",
                conv.factors()
            );
        }
        check(
            ConvSpec::builder(2, 2, l, l / 3)
                .gated(true)
                .keep_frequencies(0.25),
            with(None, 4),
        );
    }
}

/// Half spectra (the forward's intermediates in f16, scaled per tile): on plans of one global
/// stage with 16-bit I/O they are on by default (so the multi-pass cases of the tests above run
/// them for every variant), and hold channels 2^120 apart in magnitude (bf16; f16: 2^14), a NaN
/// filter channel beside clean ones, a decaying filter, a sinusoid input, and the device's own
/// shared memory at N = 32K; f32 I/O and plans of two global stages keep f32 spectra. (Few pipelines: each
/// shared-memory size and dtype compiles its own, seconds each on lavapipe.)
#[test]
fn half_spectra_every_range() {
    if !vulkan_present("half_spectra_every_range") {
        return;
    }
    let with = |points: Option<u32>, half: bool| VulkanOptions {
        max_shared_points: points,
        register_fft: Some(true),
        half_spectra: Some(half),
        ..VulkanOptions::default()
    };
    // (shared points, L): N = 2048 (two overlap-save blocks per row) as 64 x 32 on 64 points
    // (one column per column-pass workgroup, more invocations than points; 2 fused lines per
    // workgroup) and on 256 (4 columns per column-pass tile, 8 fused lines per workgroup), and
    // N = 32K as 256 x 128.
    for (points, l) in [(64, 2048), (256, 2048), (256, 20000)] {
        let options = with(Some(points), true);
        let spec = |dtype| {
            ConvSpec::builder(2, 3, l, l / 2)
                .gated(true)
                .dtype(dtype)
                .build()
                .unwrap()
        };
        // Per-channel scales far outside f16's range (bf16) and across it (f16).
        let conv = check_typed_scaled::<bf16>(
            &spec(DType::Bf16),
            options,
            &[1.0, 2f64.powi(60), 2f64.powi(-60)],
        );
        assert_eq!(
            (conv.global_passes(), conv.half_spectra()),
            (1, true),
            "{points} points, L = {l}: factors {:?}",
            conv.factors()
        );
        check_typed_scaled::<f16>(&spec(DType::F16), options, &[2f64.powi(-10), 1.0, 16.0]);
        nan_filter_channel_stays_apart::<f16>(&spec(DType::F16), options);
        // A decaying (low-pass) filter: the fused pass's lines of a pair (each a residue class
        // of frequencies mod M_0) then differ by orders of magnitude, and so do their tiles.
        check_typed_filter::<f16>(&spec(DType::F16), options, &[1.0], Some(l as f64 / 8.0));
        let ungated = ConvSpec::builder(2, 3, l, l / 2)
            .dtype(DType::F16)
            .build()
            .unwrap();
        sinusoid_input_keeps_its_range::<f16>(&ungated, options);
    }
    // Switched off; f32 I/O; two global stages: f32 spectra.
    let off = check(
        ConvSpec::builder(2, 3, 2048, 1024)
            .gated(true)
            .dtype(DType::F16),
        with(Some(64), false),
    );
    assert!(!off.half_spectra());
    // The intermediate buffer holds 4 bytes a point with half spectra (8 without), plus the
    // tiles' factors: N / 64 = 32 column-pass tiles and M_0 = N / 32 = 64 fused lines per pair;
    // 6 pairs a chunk (two overlap-save blocks of two batch rows, three channels).
    let on = check(
        ConvSpec::builder(2, 3, 2048, 1024)
            .gated(true)
            .dtype(DType::F16),
        with(Some(64), true),
    );
    assert!(on.half_spectra());
    assert_eq!(off.intermediate_bytes(), 6 * 2048 * 8);
    assert_eq!(on.intermediate_bytes(), 6 * (2048 + 32 + 64) * 4);
    let f32_conv = check(ConvSpec::builder(1, 2, 2048, 2048), with(Some(64), true));
    assert!(!f32_conv.half_spectra());
    let two = check(
        ConvSpec::builder(1, 2, 2048, 2048).dtype(DType::F16),
        with(Some(16), true),
    );
    assert_eq!((two.global_passes(), two.half_spectra()), (2, false));
    // The device's own shared memory: N = 32K (256 x 128 on 4096 points).
    let conv = check(
        ConvSpec::builder(1, 2, 16384, 16384).dtype(DType::F16),
        with(None, true),
    );
    assert_eq!(
        conv.half_spectra(),
        conv.global_passes() == 1,
        "factors {:?}",
        conv.factors()
    );
}

/// A NaN in channel 1's filter makes exactly channel 1's outputs NaN: no tile of the half
/// spectra (or any other shared value) mixes channels.
fn nan_filter_channel_stays_apart<T: Element>(spec: &ConvSpec, options: VulkanOptions) {
    let (l, h_count) = (spec.length(), spec.channels());
    let mut rng = StdRng::seed_from_u64(rand::rng().random());
    let mut random = |n: usize| -> Vec<T> {
        (0..n)
            .map(|_| T::from_f64(spec.dtype().round_f64(rng.random_range(-1.0..1.0))))
            .collect()
    };
    let (u, p, q) = (
        random(spec.io_len()),
        random(spec.io_len()),
        random(spec.io_len()),
    );
    let mut k: Vec<f32> = random(spec.filter_elems())
        .iter()
        .map(|v| v.to_f64() as f32)
        .collect();
    k[spec.filter_len() + 3] = f32::NAN;
    let conv = VulkanConvolution::with_options(spec, options).expect("convolution");
    let filter = conv.prepare_filter(&k).expect("filter");
    let mut y = vec![T::from_f64(0.0); spec.io_len()];
    let gates = spec.gated().then_some((p.as_slice(), q.as_slice()));
    conv.forward(&filter, &u, gates, &mut y).expect("forward");
    for (row, out) in y.chunks(l).enumerate() {
        let nan = row % h_count == 1;
        assert!(
            out.iter().all(|v| v.to_f64().is_nan() == nan),
            "row {row} (channel {}): NaN expected {nan} ({spec:?}, {options:?})",
            row % h_count
        );
    }
}

/// Inputs `cos(2 pi 5 t / N)` (plus 1% noise): every column of the column pass then peaks at
/// its frequency 5, which its workgroup holds at position bitrev(5), i.e. in an invocation far
/// from the first 16 (the first level of the maximum's tree), while the positions those hold
/// (frequencies that are multiples of M_0 / 16) are small: on 256-point columns a tile maximum
/// that missed a level would scale the peak past f16's range.
fn sinusoid_input_keeps_its_range<T: Element>(spec: &ConvSpec, options: VulkanOptions) {
    let n = spec.geometry().n() as f64;
    let l = spec.length();
    let seed: u64 = rand::rng().random();
    let mut rng = StdRng::seed_from_u64(seed);
    let dtype = spec.dtype();
    let u: Vec<f64> = (0..spec.io_len())
        .map(|i| {
            let t = (i % l) as f64;
            let wave = (2.0 * std::f64::consts::PI * 5.0 * t / n).cos();
            dtype.round_f64(wave + 0.01 * rng.random_range(-1.0..1.0))
        })
        .collect();
    let k: Vec<f32> = (0..spec.filter_elems())
        .map(|_| dtype.round_f64(rng.random_range(-1.0..1.0)) as f32)
        .collect();
    let context = format!("sinusoid input, seed {seed}");
    forward_against_oracle::<T>(spec, options, &u, None, &k, &context);
}

#[test]
fn chunks_cover_every_row() {
    if !vulkan_present("chunks_cover_every_row") {
        return;
    }
    for chunk_elems in [1, 2000, 5000] {
        let options = VulkanOptions {
            chunk_elems: Some(chunk_elems),
            max_shared_points: Some(64),
            ..VulkanOptions::default()
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
fn lavapipe_selects_the_path_its_mesa_offers() {
    if !vulkan_present("lavapipe_selects_the_path_its_mesa_offers") {
        return;
    }
    let ctx = context().unwrap();
    let caps = ctx.capabilities();
    println!("{}", ctx.description());
    // Mesa 25.0's lavapipe (CI's system one) has no cooperative matrices; Mesa 26's lists
    // 8x8x8 f16 -> f32 and f16 and has every feature the path needs.
    if caps.name.contains("llvmpipe") {
        let forced = std::env::var(backend_vulkan::PORTABLE_ENV).is_ok_and(|v| v == "1");
        if caps.cooperative_matrix.extension && !forced {
            assert!(
                caps.path.is_cooperative(),
                "{:?}: {:?}",
                caps.path,
                caps.cooperative_matrix
            );
        } else {
            assert!(
                !caps.path.is_cooperative(),
                "lavapipe must not select the cooperative-matrix path: {:?}",
                caps.path
            );
        }
    }
    // Without the shapes it needs, no device selects the cooperative-matrix path.
    if !caps.cooperative_matrix.has_f16() {
        assert!(!caps.path.is_cooperative());
    }
}

/// The cooperative-matrix rounds (where the device has them): every size class (fused with and
/// without matrix rounds, several global passes), f16 and bf16, causal, circular and gated, and
/// channels of very different sizes: each tile's f16 staging is scaled to its own magnitude, so
/// bf16 channels of 2^-40 and 2^40 (which f16 unscaled flushes to zero and overflows) keep their
/// precision, and so do f16 channels of 2^-12 and 2^8 (the most f16 outputs allow here).
/// f32 I/O keeps the f32 rounds.
#[test]
fn cooperative_matrix_rounds() {
    if !vulkan_present("cooperative_matrix_rounds") {
        return;
    }
    let ctx = context().unwrap();
    let Some(tile) = ctx.capabilities().path.cooperative_tile() else {
        // CI runs this on a lavapipe that has cooperative matrices: there it must not skip.
        assert!(
            std::env::var("FFTCONV_REQUIRE_COOPERATIVE_MATRIX").map_or(true, |v| v != "1"),
            "FFTCONV_REQUIRE_COOPERATIVE_MATRIX=1 but {}",
            ctx.description()
        );
        println!(
            "skipped cooperative_matrix_rounds: {} ({})",
            ctx.capabilities().path.name(),
            ctx.capabilities().path.reason()
        );
        return;
    };
    let f32_conv =
        VulkanConvolution::new(&ConvSpec::builder(1, 1, 100, 10).build().unwrap()).unwrap();
    assert_eq!(
        f32_conv.cooperative_tile(),
        None,
        "f32 I/O keeps f32 rounds"
    );
    for dtype in [DType::F16, DType::Bf16] {
        for (builder, max_shared_points) in [
            // One fused pass; lines of 2^6 .. 2^12 points (matrix rounds from T^2 points).
            (ConvSpec::builder(2, 3, 16, 16), None),
            (ConvSpec::builder(2, 3, 100, 100), None),
            (ConvSpec::builder(1, 3, 1000, 300).gated(true), None),
            (ConvSpec::builder(1, 3, 2048, 2048).circular(), None),
            (ConvSpec::builder(1, 3, 3000, 3000), None),
            // Several global passes: column passes with matrix rounds too.
            (ConvSpec::builder(1, 3, 20000, 5000).gated(true), Some(256)),
            (ConvSpec::builder(1, 3, 4096, 4096).circular(), Some(64)),
        ] {
            let spec = builder.dtype(dtype).build().unwrap();
            // The one-pass plans' matrix rounds are in the radix-2 fused pass (the register-radix
            // pass, the default there, has none).
            let options = VulkanOptions {
                max_shared_points,
                register_fft: Some(false),
                ..VulkanOptions::default()
            };
            let conv = match dtype {
                DType::F16 => {
                    check_typed_scaled::<f16>(&spec, options, &[0.5f64.powi(12), 1.0, 256.0])
                }
                _ => check_typed_scaled::<bf16>(
                    &spec,
                    options,
                    &[0.5f64.powi(40), 1.0, 2f64.powi(40)],
                ),
            };
            assert_eq!(conv.cooperative_tile(), Some(tile), "{spec:?}");
        }
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    if !vulkan_present("bad_arguments_are_typed_errors") {
        return;
    }
    let spec = ConvSpec::builder(2, 3, 100, 10).build().unwrap();
    let conv = VulkanConvolution::new(&spec).unwrap();
    let arg = |e: VulkanError| match e {
        VulkanError::InvalidArgument { arg, .. } => arg,
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
    let other = VulkanConvolution::new(&ConvSpec::builder(2, 3, 100, 20).build().unwrap())
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
    if !vulkan_present("device_tensors_give_the_host_result") {
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
        let options = VulkanOptions {
            chunk_elems,
            max_shared_points: Some(256),
            ..VulkanOptions::default()
        };
        let conv = VulkanConvolution::with_options(&spec, options).unwrap();
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
                let du = backend_vulkan::VulkanTensor::from_host(&u).unwrap();
                let dpre = backend_vulkan::VulkanTensor::from_host(&pre).unwrap();
                let dpost = backend_vulkan::VulkanTensor::from_host(&post).unwrap();
                let mut dy = backend_vulkan::VulkanTensor::zeros(spec.dtype(), n).unwrap();
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
    if !vulkan_present("odd_length_16_bit_tensors_round_trip") {
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
        let ta = backend_vulkan::VulkanTensor::from_host(&a).unwrap();
        let _tb = backend_vulkan::VulkanTensor::from_host(&b).unwrap();
        let mut back = vec![f16::NAN; a.len()];
        ta.to_host(&mut back).unwrap();
        assert_eq!(back, a);
        let zeros = backend_vulkan::VulkanTensor::zeros(DType::Bf16, 5).unwrap();
        let mut z = vec![bf16::NAN; 5];
        zeros.to_host(&mut z).unwrap();
        assert!(z.iter().all(|v| v.to_f32() == 0.0), "{z:?}");
    }
}

/// Backward on random inputs against the f64 adjoint oracle, f32 I/O.
fn check_backward(spec: &ConvSpec, options: VulkanOptions) {
    check_backward_scaled(spec, options, &[1.0]);
}

/// Magnitudes of `u` by channel for [`check_backward_scaled`]: rows of one channel share a
/// pair (step schedule) or a workgroup (fused backward) with rows of other channels, and `dy`
/// is about 1, so a transform that packs two signals without scaling them loses 12 bits.
const CHANNEL_SCALES: [f64; 3] = [1.0 / 4096.0, 1.0, 4096.0];

/// [`check_backward`] with `u` of channel h scaled by `scales[h % len]` (powers of two, so the
/// f32 inputs stay exact); every gradient is compared channel by channel, so each channel keeps
/// its own relative precision.
fn check_backward_scaled(spec: &ConvSpec, options: VulkanOptions, scales: &[f64]) {
    use monarch_core::reference_backward::reference_backward;
    let seed: u64 = rand::rng().random();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut random = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| f64::from(rng.random_range(-1.0f32..1.0)))
            .collect()
    };
    let n = spec.io_len();
    let (l, h_count) = (spec.length(), spec.channels());
    let u: Vec<f64> = random(n)
        .into_iter()
        .enumerate()
        .map(|(i, v)| v * scales[(i / l % h_count) % scales.len()])
        .collect();
    let dy = random(n);
    let gates = spec.gated().then(|| (random(n), random(n)));
    let k = random(spec.filter_elems());
    let conv = VulkanConvolution::with_options(spec, options).expect("convolution");
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
        backend_vulkan::VulkanGradients {
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
        // Channel h: elements [b][h][..] of the [B, H, L] gradients, row h of dk ([H, K]).
        let run = if name == "dk" { spec.filter_len() } else { l };
        for h in 0..h_count {
            let channel = |x: &[f64]| channel_rows(x, run, h_count, h);
            let err = relative_l2_error(&channel(&got), &channel(&want));
            assert!(
                err <= 1e-5,
                "{name} of channel {h}: relative error {err:.2e} for {spec:?} with {options:?} \
                 (u scaled by {scales:?}; factors {:?}, seed {seed})",
                conv.factors()
            );
        }
    }

    // The same call on device tensors runs the same passes in the same order, and the filter
    // gradient (accumulated over chunks on the device) starts from zero on every call: the
    // second call's gradients equal the first's bit for bit.
    use backend_vulkan::{VulkanTensor, VulkanTensorGradients};
    let tensor = |x: &[f32]| VulkanTensor::from_host(x).unwrap();
    let (tu, tdy) = (tensor(&u32s), tensor(&dy32));
    let tgates = gates32.as_ref().map(|(p, q)| (tensor(p), tensor(q)));
    let nan = vec![f32::NAN; n];
    let (mut tdu, mut tdpre, mut tdpost) = (tensor(&nan), tensor(&nan), tensor(&nan));
    let mut tdk = tensor(&vec![f32::NAN; spec.filter_elems()]);
    conv.backward_device(
        &filter,
        VulkanTensorGradients {
            u: &tu,
            gates: tgates.as_ref().map(|(p, q)| (p, q)),
            dy: &tdy,
            du: &mut tdu,
            gate_grads: gated.then_some((&mut tdpre, &mut tdpost)),
        },
        &mut tdk,
    )
    .expect("backward_device");
    let mut dk2 = vec![f32::NAN; spec.filter_elems()];
    tdk.to_host(&mut dk2).unwrap();
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let mut host = vec![f32::NAN; n];
    let mut same = vec![("dk", bits(&dk2) == bits(&dk))];
    tdu.to_host(&mut host).unwrap();
    same.push(("du", bits(&host) == bits(&du)));
    if gated {
        tdpre.to_host(&mut host).unwrap();
        same.push(("dpregate", bits(&host) == bits(&dpre)));
        tdpost.to_host(&mut host).unwrap();
        same.push(("dpostgate", bits(&host) == bits(&dpost)));
    }
    for (name, same) in same {
        assert!(
            same,
            "{name}: device tensors differ from host slices for {spec:?} with {options:?} (seed {seed})"
        );
    }
}

#[test]
fn backward_on_multi_pass_plans_and_chunks() {
    if !vulkan_present("backward_on_multi_pass_plans_and_chunks") {
        return;
    }
    // The fused and column passes on the register-radix line DFTs (the default), and once on
    // the radix-2 rounds (`register_fft: Some(false)`).
    for (points, chunk_elems, register_fft) in [
        (16, None, None),
        (64, Some(700), None),
        (64, None, Some(false)),
        (4096, Some(1), None),
    ] {
        let options = VulkanOptions {
            max_shared_points: Some(points),
            chunk_elems,
            register_fft,
            ..VulkanOptions::default()
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

/// The fused backward (one pass per chunk where the FFT fits a workgroup and rows are one
/// overlap-save block): many rows per workgroup (small N) with a partial last workgroup, an odd
/// batch (a row without a partner segment), gated (two lines per row), circular wrap-around,
/// frequency sparsity, chunks (the filter gradient summed over them), and the largest sizes
/// it takes (N = 4K ungated and 2K gated with 48 KiB of shared memory; 2K and 1K with
/// lavapipe's 32 KiB, where the larger ones run the step schedule); `u`'s channels 2^-12, 1 and
/// 2^12 the size of `dy`. The row FFTs run on the register-radix line DFTs (the default) and,
/// in three cases, on the radix-2 rounds.
#[test]
fn fused_backward_rows_scales_and_gates() {
    if !vulkan_present("fused_backward_rows_scales_and_gates") {
        return;
    }
    let chunked = VulkanOptions {
        chunk_elems: Some(900),
        ..VulkanOptions::default()
    };
    let radix2 = VulkanOptions {
        register_fft: Some(false),
        ..VulkanOptions::default()
    };
    for (builder, options) in [
        (ConvSpec::builder(3, 5, 100, 100), VulkanOptions::default()),
        (
            ConvSpec::builder(3, 3, 100, 60).gated(true),
            VulkanOptions::default(),
        ),
        (
            ConvSpec::builder(2, 3, 300, 300).circular().gated(true),
            chunked,
        ),
        (
            ConvSpec::builder(1, 3, 7, 7).circular(),
            VulkanOptions::default(),
        ),
        (
            ConvSpec::builder(2, 3, 500, 500)
                .keep_frequencies(0.25)
                .gated(true),
            VulkanOptions::default(),
        ),
        (
            ConvSpec::builder(2, 3, 1024, 1024),
            VulkanOptions::default(),
        ),
        (
            ConvSpec::builder(2, 3, 2048, 2048),
            VulkanOptions::default(),
        ),
        (
            ConvSpec::builder(1, 3, 1024, 1024).gated(true),
            VulkanOptions::default(),
        ),
        (ConvSpec::builder(3, 3, 100, 60).gated(true), radix2),
        (ConvSpec::builder(2, 3, 300, 300).circular(), radix2),
        (ConvSpec::builder(2, 3, 1024, 1024), radix2),
    ] {
        let spec = builder.build().unwrap();
        check_backward_scaled(&spec, options, &CHANNEL_SCALES);
    }
}

/// The backward's taps sum over pairs at its extremes: one output per invocation
/// (`nh * K >= 2^17`, no shared-memory tree), a short filter with thousands of pairs per channel
/// (the tree over a whole workgroup), and chunks of one channel (sums land at `h0`).
#[test]
fn backward_taps_sum_shapes() {
    if !vulkan_present("backward_taps_sum_shapes") {
        return;
    }
    let chunked = VulkanOptions {
        chunk_elems: Some(4000),
        ..VulkanOptions::default()
    };
    for (builder, options) in [
        (
            ConvSpec::builder(2, 256, 512, 512),
            VulkanOptions::default(),
        ),
        (
            ConvSpec::builder(3, 1, 20000, 5).circular(),
            VulkanOptions::default(),
        ),
        (ConvSpec::builder(2, 5, 3000, 7).gated(true), chunked),
    ] {
        check_backward(&builder.build().unwrap(), options);
    }
}

#[test]
fn copy_bandwidth_is_measured() {
    if !vulkan_present("copy_bandwidth_is_measured") {
        return;
    }
    let (transfer, compute) = backend_vulkan::copy_bandwidths(4 << 20, 1).unwrap();
    let compute = compute.expect("4 MiB holds 16-byte elements");
    for bw in [transfer, compute] {
        assert!(bw.is_finite() && bw > 1e6, "{bw} bytes/s");
    }
    // The floor's unit is the faster of the two (measured again: only its range is checked).
    let bw = backend_vulkan::copy_bandwidth(4 << 20, 1).unwrap();
    assert!(bw.is_finite() && bw > 1e6, "{bw} bytes/s");
    println!("vkCmdCopyBuffer {transfer:.3e} B/s, compute copy {compute:.3e} B/s, floor {bw:.3e}");
}
