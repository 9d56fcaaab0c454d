//! [`copy_bandwidth`]: the device's measured copy bandwidth, the denominator of the memory floor
//! every GPU timing is quoted against.

use std::time::Instant;

use ash::vk;

use crate::context::{context, memory_barrier, Buffer, Commands, MemoryKind};
use crate::VulkanError;

/// Copies per submission, so that submission overhead is negligible.
const COPIES: usize = 8;

/// Bytes read plus bytes written per second by `vkCmdCopyBuffer` between two device-local
/// buffers of `bytes` each: the best of `reps` timed submissions (after one warm-up) of
/// [`COPIES`] back-to-back copies.
pub fn copy_bandwidth(bytes: u64, reps: usize) -> Result<f64, VulkanError> {
    let ctx = context()?;
    let src = Buffer::new(&ctx, bytes, MemoryKind::Device)?;
    let dst = Buffer::new(&ctx, bytes, MemoryKind::Device)?;
    let commands = Commands::new(&ctx)?;
    let region = [vk::BufferCopy::default().size(src.size.min(dst.size))];
    let mut best = f64::INFINITY;
    for rep in 0..=reps.max(1) {
        // Recorded afresh for every submission (a one-time-submit command buffer).
        commands.record(|device, cmd| {
            for _ in 0..COPIES {
                // SAFETY: both buffers are alive and large enough; `cmd` is recording.
                unsafe { device.cmd_copy_buffer(cmd, src.buffer, dst.buffer, &region) };
                memory_barrier(device, cmd);
            }
        })?;
        let t = Instant::now();
        if let Err(e) = commands.run() {
            if matches!(e, VulkanError::Timeout { .. }) {
                std::mem::forget(src);
                std::mem::forget(dst);
                std::mem::forget(commands);
            }
            return Err(e);
        }
        if rep > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * region[0].size as f64 * COPIES as f64 / best)
}
