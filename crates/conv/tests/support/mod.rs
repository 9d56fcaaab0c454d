//! Helpers shared by the conformance suites (forward and backward): tolerances, backend skips,
//! seeded random inputs, conversions, and the macro that instantiates a suite per backend.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use conv::{BackendKind, DType, Element};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::cell::RefCell;

/// Every I/O dtype.
pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::Bf16];

/// Tolerance on the relative L2 error per dtype (inputs rounded to the dtype before the oracle).
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::Bf16 => 1.5e-2,
    }
}

/// The backend, or `None` after printing why it is skipped. Backends named in
/// `FFTCONV_REQUIRE_BACKENDS` (comma-separated, e.g. `vulkan` in CI, where lavapipe is
/// installed) must be available: their absence fails the test instead of skipping it.
pub fn backend_or_skip(kind: BackendKind, test: &str) -> Option<BackendKind> {
    match kind.probe() {
        Ok(_) => Some(kind),
        Err(e) => {
            let required = std::env::var("FFTCONV_REQUIRE_BACKENDS").unwrap_or_default();
            if required.split(',').any(|name| name.trim() == kind.name()) {
                panic!("{test}: backend {kind} is required (FFTCONV_REQUIRE_BACKENDS) but: {e}");
            }
            eprintln!("skipped {test} on {kind}: {e}");
            None
        }
    }
}

/// Like [`backend_or_skip`], and also skips (saying so) a backend without a backward pass.
pub fn backward_or_skip(kind: BackendKind, test: &str) -> Option<BackendKind> {
    let kind = backend_or_skip(kind, test)?;
    if !kind.supports_backward() {
        eprintln!("skipped {test} on {kind}: no backward pass on this backend yet");
        return None;
    }
    Some(kind)
}

thread_local! {
    /// This thread's generator: freshly seeded per case by [`fresh_inputs`], seed printed, so a
    /// failure can be replayed with `CONFORMANCE_SEED`.
    static RNG: RefCell<StdRng> = RefCell::new(StdRng::seed_from_u64(0));
}

/// Seeds this thread's generator for a new case (from `CONFORMANCE_SEED` if set, otherwise
/// at random) and returns the seed.
pub fn fresh_inputs() -> u64 {
    let seed = std::env::var("CONFORMANCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    RNG.with(|r| *r.borrow_mut() = StdRng::seed_from_u64(seed));
    LAST_SEED.with(|s| s.set(seed));
    seed
}

thread_local! {
    static LAST_SEED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The seed of this thread's current case (for failure messages).
pub fn current_seed() -> u64 {
    LAST_SEED.with(|s| s.get())
}

/// A uniform value in `[lo, hi)` from this thread's generator.
pub fn uniform(lo: f64, hi: f64) -> f64 {
    RNG.with(|r| r.borrow_mut().random_range(lo..hi))
}

/// Random values in [-1, 1] rounded to `dtype`.
pub fn random_rounded(n: usize, dtype: DType) -> Vec<f64> {
    (0..n)
        .map(|_| dtype.round_f64(uniform(-1.0, 1.0)))
        .collect()
}

/// A random decaying filter `[H, K]` in f32.
pub fn random_filter(h: usize, k: usize) -> Vec<f32> {
    (0..h * k)
        .map(|i| {
            let s = (i % k) as f32;
            uniform(-1.0, 1.0) as f32 * (-s / (1.0 + k as f32 / 4.0)).exp() / (k as f32).sqrt()
        })
        .collect()
}

/// A random problem for shape fuzzing (sizes log-uniform, every mode, gating, sparsity and dtype),
/// drawn from this thread's generator: call [`fresh_inputs`] first and print its seed.
pub fn random_spec() -> conv::ConvSpecBuilder {
    let log_uniform = |lo: f64, hi: f64| {
        if hi <= lo {
            return lo as usize;
        }
        (uniform(lo.ln(), hi.ln()).exp().round() as usize).max(1)
    };
    let b = log_uniform(1.0, 4.0);
    let h = log_uniform(1.0, 5.0);
    let l = log_uniform(1.0, 5000.0);
    let k = log_uniform(1.0, l as f64).min(l);
    let mut builder = conv::ConvSpec::builder(b, h, l, k)
        .dtype(DTYPES[(uniform(0.0, 3.0) as usize).min(2)])
        .gated(uniform(0.0, 1.0) < 0.5);
    if uniform(0.0, 1.0) < 0.3 {
        builder = builder.circular();
    }
    if uniform(0.0, 1.0) < 0.3 {
        builder = builder.keep_frequencies(uniform(0.05, 1.0));
    }
    builder
}

pub fn to_elements<T: Element>(x: &[f64]) -> Vec<T> {
    x.iter().map(|&v| T::from_f64(v)).collect()
}

pub fn to_f64<T: Element>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

/// Instantiates a suite once per backend: `backend_suites!([case, case, ...])` makes modules
/// `cpu`, `cuda` and `vulkan`, each with one `#[test]` per case that runs `case(kind)` or
/// prints why the backend is skipped.
///
/// `backend_suites!(backward: [...])` also skips backends without a backward pass.
macro_rules! backend_suites {
    ([$($case:ident),* $(,)?]) => {
        backend_suites!(@all backend_or_skip, [$($case),*]);
    };
    (backward: [$($case:ident),* $(,)?]) => {
        backend_suites!(@all backward_or_skip, [$($case),*]);
    };
    (@all $gate:ident, [$($case:ident),*]) => {
        backend_suites!(@one $gate, cpu, conv::BackendKind::Cpu, [$($case),*]);
        backend_suites!(@one $gate, cuda, conv::BackendKind::Cuda, [$($case),*]);
        backend_suites!(@one $gate, vulkan, conv::BackendKind::Vulkan, [$($case),*]);
    };
    (@one $gate:ident, $backend:ident, $kind:expr, [$($case:ident),*]) => {
        mod $backend {
            $(
                #[test]
                fn $case() {
                    if let Some(kind) = crate::support::$gate($kind, stringify!($case)) {
                        super::$case(kind);
                    }
                }
            )*
        }
    };
}
