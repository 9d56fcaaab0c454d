//! [`copy_bandwidth`]: the measured device-to-device copy bandwidth (the memory floor's unit).

use std::time::Instant;

use crate::convolution::sync;
use crate::device::device;
use crate::CudaError;

/// Bytes read plus written per second copying `bytes` between two device buffers (best of
/// `reps` timed copies after one warm-up).
pub fn copy_bandwidth(bytes: u64, reps: usize) -> Result<f64, CudaError> {
    let dev = device()?;
    let stream = &dev.stream;
    let len = bytes.max(4) as usize;
    let src = stream
        .alloc_zeros::<u8>(len)
        .map_err(|e| CudaError::driver("cuMemAlloc", e))?;
    let mut dst = stream
        .alloc_zeros::<u8>(len)
        .map_err(|e| CudaError::driver("cuMemAlloc", e))?;
    let mut best = f64::INFINITY;
    for rep in 0..=reps.max(1) {
        sync(stream)?;
        let start = Instant::now();
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| CudaError::driver("cuMemcpyDtoD", e))?;
        sync(stream)?;
        if rep > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * len as f64 / best)
}
