//! Buffers over 2^31 elements (64-bit indexing), and a filter spectrum larger than memory (an
//! error, not an abort): ignored by default, they need ~9 GB of memory and a minute on two
//! cores. Run with `cargo test --release -p conv --test large_buffers -- --ignored`.

use conv::{f16, BackendKind, ConvSpec, Convolution, DType};

#[test]
#[ignore = "needs ~9 GB of memory; run by hand"]
fn more_than_two_to_the_31_elements() {
    // B * H * L = 2^31 + 2^20 f16 elements, K = 3.
    let (b, h, l) = (1usize, 2049usize, 1usize << 20);
    let spec = ConvSpec::builder(b, h, l, 3)
        .dtype(DType::F16)
        .build()
        .unwrap();
    assert!(spec.io_len() > 1 << 31);
    let conv = Convolution::new(spec.clone(), BackendKind::Cpu).unwrap();
    let k: Vec<f32> = (0..h * 3).map(|i| [0.5, 0.25, -1.0][i % 3]).collect();
    let filter = conv.prepare_filter(&k).unwrap();
    // u[row, t] = (row + t) mod 7 - 3: exact in f16, and so is every output.
    let u: Vec<f16> = (0..spec.io_len())
        .map(|i| f16::from_f32(((i / l + i % l) % 7) as f32 - 3.0))
        .collect();
    let mut y = vec![f16::NAN; spec.io_len()];
    conv.forward(&filter, &u, None, &mut y).unwrap();
    // Check rows at the start, across 2^31, and at the end.
    for row in [0, 1, 2047, 2048] {
        for t in [0, 1, 2, l / 2, l - 1] {
            let x = |s: usize| ((row + t - s) % 7) as f32 - 3.0;
            let want: f32 = (0..3.min(t + 1)).map(|s| k[s] * x(s)).sum();
            let got = y[row * l + t].to_f32();
            assert!(
                (got - want).abs() <= 1e-2,
                "row {row} t {t}: {got} vs {want}"
            );
        }
    }
}

#[test]
#[ignore = "reserves 8 GiB of untouched address space for k and needs the kernel to refuse a \
            144 GiB allocation (overcommit_memory = 0, under ~144 GiB of memory); run by hand"]
fn filter_spectrum_beyond_memory_is_an_error() {
    // K = 1 at L = 1: N = 16, 9 complex bins (72 bytes) per 4-byte filter tap. 2^31 channels
    // of k fit in 8 GiB (calloc'd, never touched), their spectrum would need 144 GiB.
    let h = 1usize << 31;
    let spec = ConvSpec::builder(1, h, 1, 1).build().unwrap();
    let conv = Convolution::new(spec, BackendKind::Cpu).unwrap();
    let k = vec![0.0f32; h];
    let err = conv.prepare_filter(&k).expect_err("a 144 GiB spectrum");
    assert!(err.to_string().contains("cannot allocate"), "{err}");
}
