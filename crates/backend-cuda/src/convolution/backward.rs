//! [`CudaConvolution::backward`]: gradients of `y = post * conv(pre * u, k)` on the CUDA device,
//! the exact adjoint of the forward, with the same steps as the Vulkan backend
//! ([`PassSchedule::backward_steps`](monarch_core::schedule::PassSchedule::backward_steps)):
//!
//! ```text
//! V = FFT(pre * u)   D = FFT(dy * post)          (spectra kept in two buffers)
//! taps = Re IFFT(D * conj(V) * mask / N)[0, K)  -> dk: summed over each channel's pairs and
//!                                                 over chunks on the GPU (f32), read once
//! c    = IFFT(V * K)                            -> dpostgate = dy * c        (gated only)
//! dseg = IFFT(D * conj(K));  dx = gather(dseg); du = pre * dx, dpregate = u * dx
//! ```

use cudarc::driver::CudaSlice;
use monarch_core::schedule::{BackwardBinding, Chunk, PassParams, FLAG_CONJ_FILTER};
use monarch_core::{DType, Element};

use super::{
    address, copy_from_bytes, copy_to_bytes, launch_kernel, launch_kernel_grid, sync,
    CudaConvolution, CudaFilterSpectrum, CudaTensor, KernelBuffers, SettleOnExit,
};
use crate::CudaError;

/// Blocks the split backward's taps launch aims at (`monarch_split_taps_params`) up to 4K: about
/// four waves of two blocks per SM on a 132-SM card, so that a channel's pairs are summed in few
/// groups.
const SPLIT_TARGET_BLOCKS: u32 = 1024;
/// The same at 8K and 16K, whose taps kernel runs one block per SM: about four waves.
const SPLIT_TARGET_BLOCKS_WIDE: u32 = 512;

/// Output buffers of one backward call; every one is overwritten.
///
/// `du`, `dpregate`, `dpostgate` are `[B, H, L]` of the problem's dtype; `dk` is `[H, K]` in f32
/// (summed over the batch in f32 on the device). The gate gradients are given exactly when the problem is gated.
#[derive(Debug)]
pub struct CudaGradients<'a, T> {
    pub du: &'a mut [T],
    pub dk: &'a mut [f32],
    pub dpregate: Option<&'a mut [T]>,
    pub dpostgate: Option<&'a mut [T]>,
}

/// Device-resident inputs and gradients of [`CudaConvolution::backward_device`].
#[derive(Debug)]
pub struct CudaTensorGradients<'a> {
    pub u: &'a CudaTensor,
    /// `(pregate, postgate)`, exactly when the problem is gated.
    pub gates: Option<(&'a CudaTensor, &'a CudaTensor)>,
    pub dy: &'a CudaTensor,
    pub du: &'a mut CudaTensor,
    /// `(dpregate, dpostgate)`, exactly when the problem is gated.
    pub gate_grads: Option<(&'a mut CudaTensor, &'a mut CudaTensor)>,
}

/// The backward's device buffers, made on first use.
pub(super) struct BackwardExecution {
    tmp_v: CudaSlice<u8>,
    tmp_d: CudaSlice<u8>,
    taps: CudaSlice<u8>,
    /// The filter gradient `[H, K]` f32, accumulated over chunks.
    dk: CudaSlice<u8>,
    /// `u, dy, pre, post` then `du, dpregate, dpostgate` of one chunk (host I/O only).
    host: Option<(Vec<CudaSlice<u8>>, Vec<u8>)>,
}

/// The seven streams of one chunk: device addresses.
#[derive(Clone, Copy)]
struct Streams {
    u: u64,
    dy: u64,
    pre: u64,
    post: u64,
    du: u64,
    dpre: u64,
    dpost: u64,
}

impl CudaConvolution {
    /// Gradients of [`forward`](Self::forward) given `dy` (see [`CudaGradients`]). Every
    /// argument is checked before anything is written.
    pub fn backward<T: Element>(
        &self,
        filter: &CudaFilterSpectrum,
        u: &[T],
        gates: Option<(&[T], &[T])>,
        dy: &[T],
        grads: CudaGradients<'_, T>,
    ) -> Result<(), CudaError> {
        let want = self.spec.io_len();
        self.check_inputs(
            filter,
            T::DTYPE,
            u.len(),
            gates.map(|(p, q)| (p.len(), q.len())),
            want,
        )?;
        for (arg, len) in [("dy", dy.len()), ("du", grads.du.len())] {
            if len != want {
                return Err(CudaError::invalid(
                    arg,
                    format!("expected [B, H, L] = {want} elements, got {len}"),
                ));
            }
        }
        self.check_gradients(
            grads.dk.len(),
            [
                grads.dpregate.as_ref().map(|g| g.len()),
                grads.dpostgate.as_ref().map(|g| g.len()),
            ],
        )?;
        let CudaGradients {
            du,
            dk,
            mut dpregate,
            mut dpostgate,
        } = grads;
        let mut guard = self.backward_execution()?;
        let bexec = guard.as_mut().expect("made");
        let mut exec_guard = self.execution()?;
        let stream = std::sync::Arc::clone(&exec_guard.as_mut().expect("made").stream);
        let _settle = SettleOnExit(std::sync::Arc::clone(&stream));
        stream
            .memset_zeros(&mut bexec.dk)
            .map_err(|e| CudaError::driver("cuMemsetD8", e))?;
        if bexec.host.is_none() {
            let bytes = self.schedule.stream_bytes().max(4);
            let n = if self.spec.gated() { 7 } else { 3 };
            let mut bufs = Vec::with_capacity(n);
            for _ in 0..n {
                bufs.push(
                    stream
                        .alloc_zeros::<u8>(bytes)
                        .map_err(|e| CudaError::driver("cuMemAlloc", e))?,
                );
            }
            bexec.host = Some((bufs, vec![0u8; bytes]));
        }
        let gated = self.spec.gated();
        for chunk in self.schedule.chunks().collect::<Vec<_>>() {
            let bytes = chunk.nb * chunk.nh * self.spec.length() * self.spec.dtype().size_bytes();
            let (bufs, staging) = bexec.host.as_mut().expect("made above");
            let mut inputs: Vec<&[T]> = vec![u, dy];
            if let Some((pre, post)) = gates {
                inputs.push(pre);
                inputs.push(post);
            }
            for (i, src) in inputs.into_iter().enumerate() {
                for (dst_rows, src_rows) in self.schedule.chunk_rows(chunk) {
                    copy_to_bytes(
                        &src[src_rows],
                        &mut staging[dst_rows.start * size_of::<T>()..],
                    );
                }
                stream
                    .memcpy_htod(&staging[..bytes], &mut bufs[i].slice_mut(..bytes))
                    .map_err(|e| CudaError::driver("cuMemcpyHtoD", e))?;
                sync(&stream)?;
            }
            let a = |i: usize| address(&bufs[i], &stream);
            let streams = if gated {
                Streams {
                    u: a(0),
                    dy: a(1),
                    pre: a(2),
                    post: a(3),
                    du: a(4),
                    dpre: a(5),
                    dpost: a(6),
                }
            } else {
                Streams {
                    u: a(0),
                    dy: a(1),
                    pre: a(0),
                    post: a(0),
                    du: a(2),
                    dpre: a(2),
                    dpost: a(2),
                }
            };
            self.launch_backward(&stream, bexec, filter, chunk, streams, true)?;
            let outputs: Vec<(usize, &mut [T])> = if gated {
                vec![
                    (4, &mut *du),
                    (5, dpregate.as_deref_mut().expect("checked")),
                    (6, dpostgate.as_deref_mut().expect("checked")),
                ]
            } else {
                vec![(2, &mut *du)]
            };
            let (bufs, staging) = bexec.host.as_mut().expect("made above");
            for (i, out) in outputs {
                stream
                    .memcpy_dtoh(&bufs[i].slice(..bytes), &mut staging[..bytes])
                    .map_err(|e| CudaError::driver("cuMemcpyDtoH", e))?;
                sync(&stream)?;
                for (src_rows, dst_rows) in self.schedule.chunk_rows(chunk) {
                    copy_from_bytes(
                        &staging[src_rows.start * size_of::<T>()..],
                        &mut out[dst_rows],
                    );
                }
            }
        }
        read_dk(&stream, bexec, dk)?;
        drop(exec_guard);
        Ok(())
    }

    /// Like [`backward`](Self::backward) on device-resident tensors: `du`, (gated) the gate
    /// gradients and `dk` (an f32 tensor of `[H, K]`) are overwritten in device memory, so a
    /// training step keeps its filter gradient on the GPU (until session 16 every call downloaded
    /// it to the host: 25-32 MB at the backward sweep's shapes from 16K, 100 MB at FlashFFTConv's
    /// 64K shape).
    pub fn backward_device(
        &self,
        filter: &CudaFilterSpectrum,
        tensors: CudaTensorGradients<'_>,
        dk: &mut CudaTensor,
    ) -> Result<(), CudaError> {
        if dk.dtype != DType::F32 {
            return Err(CudaError::invalid(
                "dk",
                format!("expected an f32 tensor, got {}", dk.dtype),
            ));
        }
        let want = self.spec.io_len();
        self.check_inputs(
            filter,
            tensors.u.dtype(),
            tensors.u.len(),
            tensors.gates.map(|(p, q)| (p.len(), q.len())),
            want,
        )?;
        let mut named = vec![("dy", tensors.dy), ("du", &*tensors.du), ("u", tensors.u)];
        if let Some((p, q)) = tensors.gates {
            named.extend([("pregate", p), ("postgate", q)]);
        }
        if let Some((p, q)) = &tensors.gate_grads {
            named.extend([("dpregate", &**p), ("dpostgate", &**q)]);
        }
        for (arg, t) in named {
            if t.dtype() != self.spec.dtype() || t.len() != want {
                return Err(CudaError::invalid(
                    arg,
                    format!(
                        "expected {want} {} elements, got {} {}",
                        self.spec.dtype(),
                        t.len(),
                        t.dtype()
                    ),
                ));
            }
        }
        self.check_gradients(
            dk.len(),
            [
                tensors.gate_grads.as_ref().map(|g| g.0.len()),
                tensors.gate_grads.as_ref().map(|g| g.1.len()),
            ],
        )?;
        if want >= 1 << 32 {
            return Err(CudaError::unsupported(format!(
                "device tensors of {want} elements exceed 32-bit kernel indices"
            )));
        }
        let mut guard = self.backward_execution()?;
        let bexec = guard.as_mut().expect("made");
        let mut exec_guard = self.execution()?;
        let stream = std::sync::Arc::clone(&exec_guard.as_mut().expect("made").stream);
        let _settle = SettleOnExit(std::sync::Arc::clone(&stream));
        stream
            .memset_zeros(&mut bexec.dk)
            .map_err(|e| CudaError::driver("cuMemsetD8", e))?;
        let a = |t: &CudaTensor| address(&t.buffer, &stream);
        let u = a(tensors.u);
        let du = a(tensors.du);
        let streams = Streams {
            u,
            dy: a(tensors.dy),
            pre: tensors.gates.map_or(u, |g| a(g.0)),
            post: tensors.gates.map_or(u, |g| a(g.1)),
            du,
            dpre: tensors.gate_grads.as_ref().map_or(du, |g| a(g.0)),
            dpost: tensors.gate_grads.as_ref().map_or(du, |g| a(g.1)),
        };
        for chunk in self.schedule.chunks().collect::<Vec<_>>() {
            self.launch_backward(&stream, bexec, filter, chunk, streams, false)?;
        }
        let bytes = dk.len() * 4;
        stream
            .memcpy_dtod(&bexec.dk.slice(..bytes), &mut dk.buffer.slice_mut(..bytes))
            .map_err(|e| CudaError::driver("cuMemcpyDtoD", e))?;
        drop(exec_guard);
        Ok(())
    }

    /// `dk` is `[H, K]`; the gate gradients' lengths are given exactly when the problem is gated.
    fn check_gradients(
        &self,
        dk_len: usize,
        gate_grads: [Option<usize>; 2],
    ) -> Result<(), CudaError> {
        self.spec
            .check_gradients(dk_len, gate_grads)
            .map_err(super::core_invalid)
    }

    fn backward_execution(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, Option<BackwardExecution>>, CudaError> {
        let mut guard = self.backward_exec.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let stream = &self.device.stream;
            let taps_bytes = (self.schedule.backward_taps_len() * 4).max(4);
            let dk_bytes = (self.spec.filter_elems() * 4).max(4);
            let alloc = |bytes: usize| {
                stream
                    .alloc_zeros::<u8>(bytes.max(4))
                    .map_err(|e| CudaError::driver("cuMemAlloc", e))
            };
            let exec = BackwardExecution {
                tmp_v: alloc(self.schedule.spectra_bytes())?,
                tmp_d: alloc(self.schedule.spectra_bytes())?,
                taps: alloc(taps_bytes)?,
                dk: alloc(dk_bytes)?,
                host: None,
            };
            sync(stream)?;
            *guard = Some(exec);
        }
        Ok(guard)
    }

    /// log2 of the rows per block of the fused backward kernel, when this problem can use it
    /// (`PassSchedule::fused_backward_rows_log2` with this device's shared memory).
    fn fused_backward_rows(&self) -> Option<u32> {
        let limit = self.device.info().shared_memory_per_block_optin;
        self.schedule
            .fused_backward_rows_log2(limit, self.kernels.pad)
    }

    /// Launches the backward steps of one chunk.
    fn launch_backward(
        &self,
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
        bexec: &BackwardExecution,
        filter: &CudaFilterSpectrum,
        chunk: Chunk,
        s: Streams,
        compact: bool,
    ) -> Result<(), CudaError> {
        let tmp_v = address(&bexec.tmp_v, stream);
        let tmp_d = address(&bexec.tmp_d, stream);
        let base = KernelBuffers {
            u: s.u,
            pre: s.pre,
            post: s.post,
            y: s.du,
            spectrum: address(&filter.buffer, stream),
            twiddles: address(&self.twiddles, stream),
            tmp: tmp_v,
            other: tmp_v,
            taps: address(&bexec.taps, stream),
            y2: s.dpre,
            taps_sum: address(&bexec.dk, stream),
            u2: s.dy,
            y3: s.dpost,
        };
        // The Monarch backward where this convolution runs the Monarch pass, the problem is
        // one it takes (`monarch_backward_launches`: 256 .. 4M), its shared memory fits this
        // device and the rows allow its 16-byte I/O: one kernel (four from 32K), then the taps
        // summed.
        let vec = super::monarch_vec_elems(self.spec.dtype());
        let streams = [s.u, s.dy, s.pre, s.post, s.du, s.dpre, s.dpost];
        let threads_log2 = self.kernels.threads.ilog2();
        let shared_limit =
            crate::device::monarch_shared_limit(self.device.info().shared_memory_per_block_optin);
        let fits = crate::device::monarch_backward_shared_bytes(
            self.spec
                .geometry()
                .n()
                .ilog2()
                .min(super::MONARCH_INNER_LOG2),
            self.spec.gated(),
        ) <= shared_limit;
        if let (Some(kernels), Some(layout), true) = (
            self.kernels.monarch.as_ref().filter(|_| self.monarch),
            filter.monarch.as_ref(),
            fits && super::monarch_rows_aligned(&streams),
        ) {
            let (params, sum_params) =
                self.schedule
                    .fused_backward_params(chunk, compact, 0, threads_log2);
            if let Some(launches) = super::monarch_backward_launches(&params, vec) {
                // From 32K the intermediates: x (then T) and gated x' in tmp_v, d (then G) and
                // the pairs' scales in tmp_d.
                let buffers = KernelBuffers {
                    spectrum: address(layout, stream),
                    tmp: tmp_v,
                    other: tmp_d,
                    ..base
                };
                // The split backward (by default at 256 .. 4K, 8K and 16K by the environment;
                // ungated, causal or L = N circular): du as the forward of dy with conj(K), then
                // the taps per group of pairs. (The forward's steps only where the split is on
                // and takes the problem.)
                let taps_kernel = kernels
                    .taps_function(params.log2n)
                    .filter(|&(_, shared, _)| {
                        crate::device::monarch_split_backward(params.log2n)
                            && shared <= shared_limit
                    });
                let target = if params.log2n > 12 {
                    SPLIT_TARGET_BLOCKS_WIDE
                } else {
                    SPLIT_TARGET_BLOCKS
                };
                let split = taps_kernel
                    .and_then(|taps_kernel| {
                        Some((
                            taps_kernel,
                            super::monarch_split_taps_params(&params, target)?,
                        ))
                    })
                    // At 16K part of the taps sum lives in tmp_v (one slice per block).
                    .filter(|(_, (taps_params, _))| {
                        crate::device::monarch_taps_scratch_bytes(
                            params.log2n,
                            taps_params.total_lines,
                        ) <= bexec.tmp_v.len()
                    })
                    .and_then(|(taps_kernel, taps)| {
                        let steps = self.schedule.forward_steps(chunk, compact);
                        Some((
                            taps_kernel,
                            taps,
                            // With FFTCONV_CUDA_MONARCH_PREFETCH=1 du too through
                            // fftconv_monarch_prefetch (256 .. 4K).
                            super::monarch_launches(&steps, vec, false, kernels.prefetch_slots)?,
                        ))
                    });
                if let Some((
                    (taps_func, taps_shared, taps_threads),
                    (taps_params, groups),
                    forward,
                )) = split
                {
                    let du_buffers = KernelBuffers {
                        u: s.dy,
                        y: s.du,
                        ..buffers
                    };
                    for (kernel, p) in forward {
                        let p = PassParams {
                            flags: p.flags | FLAG_CONJ_FILTER,
                            ..p
                        };
                        let (func, shared) =
                            kernels.function(kernel, p.log2n).ok_or_else(|| {
                                CudaError::unsupported(
                                    "a Monarch forward kernel that is not loaded",
                                )
                            })?;
                        let grid = kernel.grid_blocks();
                        launch_kernel_grid(stream, func, 256, shared, &p, &du_buffers, grid)?;
                    }
                    launch_kernel(
                        stream,
                        taps_func,
                        taps_threads,
                        taps_shared,
                        &taps_params,
                        &buffers,
                    )?;
                    let sum_params = PassParams {
                        pairs: groups,
                        ..sum_params
                    };
                    return self.launch_function(
                        stream,
                        &self.kernels.taps_sum,
                        0,
                        &sum_params,
                        &base,
                    );
                }
                for (kernel, p) in launches {
                    let (func, shared, threads) =
                        kernels.backward_function(kernel, p.log2n, self.spec.gated());
                    launch_kernel(stream, func, threads, shared, &p, &buffers)?;
                }
                // The Monarch kernels write one taps row per pair (the sum of its two rows'
                // correlations), not one per segment as the fused backward: the sum reads
                // `pairs` rows per channel.
                let sum_params = PassParams {
                    pairs: params.pairs,
                    ..sum_params
                };
                return self.launch_function(stream, &self.kernels.taps_sum, 0, &sum_params, &base);
            }
        }
        if let Some(rows_log2) = self.fused_backward_rows() {
            // One kernel per chunk: the transform, taps, gate gradients and du in shared memory
            // (one line per row), then the taps summed over each channel's rows.
            let (params, sum_params) =
                self.schedule
                    .fused_backward_params(chunk, compact, rows_log2, threads_log2);
            let shared = self
                .schedule
                .fused_backward_shared_bytes(params.lines_log2, self.kernels.pad);
            let shared = u32::try_from(shared).unwrap_or(u32::MAX);
            self.launch_function(stream, &self.kernels.backward_fused, shared, &params, &base)?;
            return self.launch_function(stream, &self.kernels.taps_sum, 0, &sum_params, &base);
        }
        let steps = self
            .schedule
            .backward_steps(chunk, compact, self.kernels.threads.ilog2());
        let taps_params = steps
            .iter()
            .find(|(b, _, _)| *b == BackwardBinding::Taps)
            .map(|(_, _, p)| *p)
            .expect("the backward has a taps step");
        let mirrored = self.schedule.mirrors_taps();
        for (binding, kind, params) in steps {
            let buffers = match binding {
                BackwardBinding::Input => base,
                BackwardBinding::OutputGradient => KernelBuffers {
                    u: s.dy,
                    pre: s.post,
                    tmp: tmp_d,
                    ..base
                },
                // Mirrored taps: the correlation V conj(D) in V's buffer (D stays for the adjoint).
                BackwardBinding::Taps if mirrored => KernelBuffers {
                    tmp: tmp_v,
                    other: tmp_d,
                    ..base
                },
                BackwardBinding::Taps => KernelBuffers {
                    tmp: tmp_d,
                    other: tmp_v,
                    ..base
                },
                BackwardBinding::PostGate => KernelBuffers {
                    y: s.dpost,
                    post: s.dy,
                    ..base
                },
                BackwardBinding::Adjoint | BackwardBinding::Gather => {
                    KernelBuffers { tmp: tmp_d, ..base }
                }
            };
            self.launch(stream, kind, &params, &buffers)?;
        }
        // Sum the taps over each channel's pairs: nh * K threads.
        let sum_params = PassParams {
            total_lines: (chunk.nh * self.spec.filter_len()) as u32,
            lines_log2: self.kernels.threads.ilog2(),
            ..taps_params
        };
        self.launch_function(stream, &self.kernels.taps_sum, 0, &sum_params, &base)
    }
}

/// Waits for the stream and copies the accumulated filter gradient into `dk` (`[H, K]`).
fn read_dk(
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    bexec: &BackwardExecution,
    dk: &mut [f32],
) -> Result<(), CudaError> {
    let host = super::download(stream, &bexec.dk, std::mem::size_of_val(dk))?;
    copy_from_bytes(&host, dk);
    Ok(())
}
