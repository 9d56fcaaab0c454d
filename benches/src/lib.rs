//! Benchmarks support crate (empty; benchmarks live in benches/).
