//! Criterion benchmarks of the forward convolution: the CPU backend against the realfft baseline.
//!
//! Causal, `K = L = N/2` for FFT sizes `N` in [`SIZES`], f32 and f16 I/O, about [`ELEMS`]
//! elements of `u` per call (`B = 1`, `H = ELEMS / L`). Throughput is the bytes one call moves
//! (`u` read + `y` written). Sample counts are small so `cargo bench -p fftconv-benches` takes a
//! few minutes; `cargo xtask bench` is the full sweep with accuracy checks.

use backend_cpu::RealFftBaseline;
use conv::{f16, BackendKind, ConvSpec, Convolution, DType, Element};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Duration;

/// FFT sizes benchmarked.
const SIZES: [usize; 3] = [1 << 10, 1 << 14, 1 << 18];
/// Elements of `u` per call (4 Mi: 16 MiB of f32).
const ELEMS: usize = 1 << 22;

struct Case<T> {
    spec: ConvSpec,
    u: Vec<T>,
    k: Vec<f32>,
}

fn case<T: Element>(n: usize) -> Case<T> {
    let l = n / 2;
    let h = (ELEMS / l).max(1);
    let spec = ConvSpec::builder(1, h, l, l)
        .dtype(T::DTYPE)
        .build()
        .expect("valid benchmark problem");
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    let u = (0..spec.io_len())
        .map(|_| T::from_f32(rng.random_range(-1.0f32..1.0)))
        .collect();
    let k = (0..spec.filter_elems())
        .map(|i| rng.random_range(-1.0f32..1.0) * (-4.0 * (i % l) as f32 / l as f32).exp())
        .collect();
    Case { spec, u, k }
}

fn bench_dtype<T: Element>(c: &mut Criterion) {
    let dtype: DType = T::DTYPE;
    let mut group = c.benchmark_group(format!("forward/{dtype}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(SamplingMode::Flat);
    for n in SIZES {
        let Case { spec, u, k } = case::<T>(n);
        group.throughput(Throughput::Bytes(spec.io_bytes() as u64));
        let mut y = vec![T::default(); spec.io_len()];

        let conv = Convolution::new(spec.clone(), BackendKind::Cpu).expect("CPU backend");
        let filter = conv.prepare_filter(&k).expect("filter");
        group.bench_function(BenchmarkId::new("cpu", n), |b| {
            b.iter(|| {
                conv.forward(&filter, black_box(&u), None, black_box(&mut y))
                    .expect("forward")
            })
        });

        let base = RealFftBaseline::new(&spec).expect("baseline covers dense causal problems");
        let spectrum = base.prepare_filter(&k).expect("filter");
        group.bench_function(BenchmarkId::new("baseline", n), |b| {
            b.iter(|| {
                base.forward(&spectrum, black_box(&u), black_box(&mut y))
                    .expect("forward")
            })
        });
    }
    group.finish();
}

fn forward(c: &mut Criterion) {
    bench_dtype::<f32>(c);
    bench_dtype::<f16>(c);
}

criterion_group!(benches, forward);
criterion_main!(benches);
