//! [`CufftBaseline`]: the straightforward cuFFT convolution (R2C, product with a precomputed
//! filter spectrum, C2R, f32) that the benchmark quotes the CUDA backend against.

use std::sync::Arc;

use cudarc::cufft::sys::{cufftType, float2};
use cudarc::cufft::CudaFft;
use cudarc::driver::{CudaSlice, CudaStream};
use monarch_core::schedule::PassParams;
use monarch_core::ConvSpec;

use crate::convolution::{
    address, host_filter_spectrum, launch_kernel, sync, CudaTensor, KernelBuffers,
};
use crate::device::{device, Kernels};
use crate::probe::guarded;
use crate::CudaError;

/// Real points per cuFFT batch (rows x N), bounding the f32 and complex work buffers.
const CHUNK_POINTS: usize = 1 << 25;

/// A plain (ungated, dense, one overlap-save block per row) convolution problem prepared for
/// cuFFT: per chunk of rows, u is zero-padded to N in f32, transformed (R2C), multiplied by the
/// filter's `N/2 + 1` bins, transformed back (C2R) and cropped to y.
pub struct CufftBaseline {
    spec: ConvSpec,
    kernels: Arc<Kernels>,
    stream: Arc<CudaStream>,
    rows_per_chunk: usize,
    /// Plans by batch size (the last chunk may be shorter).
    plans: Vec<(usize, CudaFft, CudaFft)>,
    real: CudaSlice<f32>,
    complex: CudaSlice<float2>,
}

impl std::fmt::Debug for CufftBaseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CufftBaseline")
            .field("spec", &self.spec)
            .field("rows_per_chunk", &self.rows_per_chunk)
            .finish_non_exhaustive()
    }
}

/// A filter's `N/2 + 1` spectrum bins per channel (scaled by `1/N`) in device memory.
#[derive(Debug)]
pub struct CufftFilter {
    buffer: CudaSlice<u8>,
    /// The problem it was prepared for.
    spec: ConvSpec,
}

impl CufftBaseline {
    /// Prepares `spec` (ungated, no frequency sparsity, one block per row: `N >= L + K - 1`, or
    /// circular with `N = L`); other problems are [`CudaError::Unsupported`].
    pub fn new(spec: &ConvSpec) -> Result<CufftBaseline, CudaError> {
        let g = spec.geometry();
        let n = g.n();
        if spec.io_len() >= 1 << 32 || spec.rows() * n >= 1 << 32 {
            return Err(CudaError::unsupported(
                "the cuFFT baseline indexes rows with 32-bit offsets",
            ));
        }
        if spec.gated() || g.blocks != 1 || g.kept_bins < n / 2 + 1 || (g.wraps && g.history > 0) {
            return Err(CudaError::unsupported(
                "the cuFFT baseline runs ungated, dense problems of one block per row only",
            ));
        }
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::cufft::sys::is_culib_present() } {
            return Err(CudaError::unavailable("cuFFT library (libcufft) not found"));
        }
        let dev = device()?;
        let kernels = dev.kernels(spec.dtype(), dev.max_shared_points().min(4096))?;
        let stream = dev
            .ctx
            .new_stream()
            .map_err(|e| CudaError::driver("cuStreamCreate", e))?;
        let rows_per_chunk = (CHUNK_POINTS / n).clamp(1, spec.rows());
        let alloc_err = |e| CudaError::driver("cuMemAlloc", e);
        let real = stream
            .alloc_zeros::<f32>(rows_per_chunk * n)
            .map_err(alloc_err)?;
        let complex = stream
            .alloc_zeros::<float2>(rows_per_chunk * (n / 2 + 1))
            .map_err(alloc_err)?;
        let mut plans = Vec::new();
        let full = rows_per_chunk;
        let last = spec.rows() - (spec.rows() - 1) / full * full;
        for batch in [full, last] {
            if plans.iter().any(|(b, _, _)| *b == batch) {
                continue;
            }
            let plan = |kind| {
                guarded(|| {
                    CudaFft::plan_1d(n as i32, kind, batch as i32, Arc::clone(&stream))
                        .map_err(|e| CudaError::Driver(format!("cufftPlan1d failed: {e:?}")))
                })
            };
            plans.push((
                batch,
                plan(cufftType::CUFFT_R2C)?,
                plan(cufftType::CUFFT_C2R)?,
            ));
        }
        sync(&stream)?;
        Ok(CufftBaseline {
            spec: spec.clone(),
            kernels,
            stream,
            rows_per_chunk,
            plans,
            real,
            complex,
        })
    }

    /// The filter's `N/2 + 1` bins per channel, scaled by `1/N` (computed on the host, like the
    /// CUDA backend's filter spectrum without dropped bins).
    pub fn prepare_filter(&self, k: &[f32]) -> Result<CufftFilter, CudaError> {
        self.spec
            .check_filter_len(k.len())
            .map_err(crate::convolution::core_invalid)?;
        let bytes = host_filter_spectrum(&self.spec, k)?;
        let buffer = crate::convolution::upload(&self.stream, &bytes)?;
        Ok(CufftFilter {
            buffer,
            spec: self.spec.clone(),
        })
    }

    /// `y = conv(u, k)` on device tensors of the problem's dtype.
    pub fn forward(
        &mut self,
        filter: &CufftFilter,
        u: &CudaTensor,
        y: &mut CudaTensor,
    ) -> Result<(), CudaError> {
        let spec = &self.spec;
        if filter.spec.geometry() != spec.geometry() || filter.spec.channels() != spec.channels() {
            return Err(CudaError::invalid(
                "filter",
                "prepared for a different problem",
            ));
        }
        for (arg, t) in [("u", u), ("y", &*y)] {
            if t.dtype() != spec.dtype() || t.len() != spec.io_len() {
                return Err(CudaError::invalid(
                    arg,
                    "not a [B, H, L] tensor of the problem's dtype",
                ));
            }
        }
        let n = spec.geometry().n();
        let (l, rows) = (spec.length(), spec.rows());
        let bins = n / 2 + 1;
        let CufftBaseline {
            stream,
            kernels,
            plans,
            real,
            complex,
            rows_per_chunk,
            ..
        } = self;
        let buffers = KernelBuffers {
            u: address(&u.buffer, stream),
            y: address(&y.buffer, stream),
            spectrum: address(&filter.buffer, stream),
            tmp: address(real, stream),
            other: address(complex, stream),
            ..KernelBuffers::default()
        };
        let threads = kernels.threads;
        let mut row0 = 0;
        while row0 < rows {
            let batch = (*rows_per_chunk).min(rows - row0);
            let (_, r2c, c2r) = plans
                .iter()
                .find(|(b, _, _)| *b == batch)
                .expect("a plan per chunk size");
            let params = |total: usize| PassParams {
                log2n: n.ilog2(),
                seq_len: l as u32,
                channels: spec.channels() as u32,
                element_offset: (row0 * l) as u32,
                taps_len: bins as u32,
                total_lines: total as u32,
                lines_log2: threads.ilog2(),
                blocks: 1,
                pairs: 1,
                block_len: 1,
                ..PassParams::default()
            };
            let launch = |func, total: usize| {
                launch_kernel(stream, func, threads, 0, &params(total), &buffers)
            };
            launch(&kernels.baseline_pad, batch * n)?;
            r2c.exec_r2c(real, complex)
                .map_err(|e| CudaError::Driver(format!("cufftExecR2C failed: {e:?}")))?;
            launch(&kernels.baseline_product, batch * bins)?;
            c2r.exec_c2r(complex, real)
                .map_err(|e| CudaError::Driver(format!("cufftExecC2R failed: {e:?}")))?;
            launch(&kernels.baseline_crop, batch * l)?;
            row0 += batch;
        }
        sync(stream)
    }
}
