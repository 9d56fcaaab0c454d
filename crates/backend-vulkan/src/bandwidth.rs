//! [`copy_bandwidth`]: the device's measured copy bandwidth, the denominator of the memory floor
//! every GPU timing is quoted against.

use std::sync::Arc;
use std::time::Instant;

use ash::vk;
use monarch_core::DType;

use crate::context::{context, memory_barrier, Buffer, Commands, MemoryKind, VulkanContext};
use crate::convolution::descriptor_sets;
use crate::pipelines::{Pipelines, Shader, BINDING_U, BINDING_Y};
use crate::VulkanError;

/// Copies per submission, so that submission overhead is negligible.
const COPIES: usize = 8;

/// Workgroups of the compute copy at most (Vulkan's guaranteed `maxComputeWorkGroupCount[0]`;
/// its loop strides over the rest).
const COPY_GROUPS: u32 = 65535;

/// Bytes read plus bytes written per second copying between two device-local buffers of `bytes`
/// each: the faster of `vkCmdCopyBuffer` and a compute-shader copy (`shaders/copy.comp`; on
/// NVIDIA the former runs on a copy engine well below the memory bandwidth that shaders reach).
/// Each is the best of `reps` timed submissions (after one warm-up) of 8 back-to-back copies.
pub fn copy_bandwidth(bytes: u64, reps: usize) -> Result<f64, VulkanError> {
    let (transfer, compute) = copy_bandwidths(bytes, reps)?;
    Ok(transfer.max(compute.unwrap_or(0.0)))
}

/// [`copy_bandwidth`]'s two measurements: `vkCmdCopyBuffer`, and the compute copy (`None` where
/// the buffers are too small for one 16-byte element).
pub fn copy_bandwidths(bytes: u64, reps: usize) -> Result<(f64, Option<f64>), VulkanError> {
    let ctx = context()?;
    let src = Buffer::new(&ctx, bytes, MemoryKind::Device)?;
    let dst = Buffer::new(&ctx, bytes, MemoryKind::Device)?;
    let size = src.size.min(dst.size);
    let region = [vk::BufferCopy::default().size(size)];
    let measured = time_copies(&ctx, reps, |device, cmd| {
        // SAFETY: both buffers are alive and large enough; `cmd` is recording.
        unsafe { device.cmd_copy_buffer(cmd, src.buffer, dst.buffer, &region) };
    })
    .and_then(|transfer| {
        let compute = compute_copy_bandwidth(&ctx, &src, &dst, reps)?;
        Ok((2.0 * size as f64 / transfer, compute))
    });
    if matches!(measured, Err(VulkanError::Timeout { .. })) {
        // The device may still use them.
        std::mem::forget(src);
        std::mem::forget(dst);
    }
    measured
}

/// The compute copy's bandwidth (`None`: buffers under 16 bytes).
fn compute_copy_bandwidth(
    ctx: &Arc<VulkanContext>,
    src: &Buffer,
    dst: &Buffer,
    reps: usize,
) -> Result<Option<f64>, VulkanError> {
    let Some(copy) = ComputeCopy::new(ctx, src, dst, COPY_GROUPS)? else {
        return Ok(None);
    };
    let bytes = u64::from(copy.count) * 16;
    let timed = time_copies(ctx, reps, |device, cmd| copy.record(device, cmd));
    if matches!(timed, Err(VulkanError::Timeout { .. })) {
        std::mem::forget(copy); // its descriptor set may still be in use
    }
    Ok(Some(2.0 * bytes as f64 / timed?))
}

/// `shaders/copy.comp` set up to copy the first (up to `maxStorageBufferRange`) bytes of one
/// buffer into another, 16 bytes per element: its pipeline, a descriptor set binding both, the
/// element count and the grid (at most `max_groups` workgroups; the shader's loop strides over
/// the rest).
struct ComputeCopy {
    ctx: Arc<VulkanContext>,
    pipelines: Arc<Pipelines>,
    pipeline: vk::Pipeline,
    pool: vk::DescriptorPool,
    set: vk::DescriptorSet,
    count: u32,
    groups: u32,
}

impl ComputeCopy {
    /// `None` where the buffers hold less than one element.
    fn new(
        ctx: &Arc<VulkanContext>,
        src: &Buffer,
        dst: &Buffer,
        max_groups: u32,
    ) -> Result<Option<ComputeCopy>, VulkanError> {
        let limit = u64::from(ctx.capabilities().max_storage_buffer_range);
        let count = (src.size.min(dst.size).min(limit) / 16).min(u64::from(u32::MAX)) as u32;
        if count == 0 {
            return Ok(None);
        }
        let pipelines = Pipelines::get(ctx, DType::F32, None, None)?;
        let pipeline = pipelines.pipeline(Shader::Copy)?;
        let (pool, sets) = descriptor_sets(ctx, pipelines.set_layout, 1)?;
        let set = sets[0];
        let infos = [src, dst].map(|b| {
            [vk::DescriptorBufferInfo::default()
                .buffer(b.buffer)
                .offset(0)
                .range(u64::from(count) * 16)]
        });
        let writes = [(BINDING_U, &infos[0]), (BINDING_Y, &infos[1])].map(|(binding, info)| {
            vk::WriteDescriptorSet::default()
                .dst_set(set)
                .dst_binding(binding)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .buffer_info(info)
        });
        // SAFETY: the set is new and unused; both buffers are alive.
        unsafe { ctx.device.update_descriptor_sets(&writes, &[]) };
        let groups = count
            .div_ceil(pipelines.workgroup)
            .clamp(1, max_groups.max(1));
        Ok(Some(ComputeCopy {
            ctx: Arc::clone(ctx),
            pipelines,
            pipeline,
            pool,
            set,
            count,
            groups,
        }))
    }

    /// Records the copy (the caller adds the barrier after it).
    fn record(&self, device: &ash::Device, cmd: vk::CommandBuffer) {
        let layout = self.pipelines.layout;
        // SAFETY: `cmd` is recording; the pipeline, its layout and the set (both buffers bound;
        // the caller keeps them alive) match; the count is the first word of the layout's
        // push-constant range.
        unsafe {
            device.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, self.pipeline);
            device.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                layout,
                0,
                &[self.set],
                &[],
            );
            device.cmd_push_constants(
                cmd,
                layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &self.count.to_ne_bytes(),
            );
            device.cmd_dispatch(cmd, self.groups, 1, 1);
        }
    }
}

impl Drop for ComputeCopy {
    fn drop(&mut self) {
        // SAFETY: no submission using the set is pending (each was waited for; a timed-out one
        // leaks this object instead).
        unsafe { self.ctx.device.destroy_descriptor_pool(self.pool, None) };
    }
}

/// Seconds per copy: the best of `reps` timed submissions (after one warm-up) of [`COPIES`]
/// back-to-back copies recorded by `copy`, each followed by a barrier. On a timeout the
/// command buffer is leaked, as the device may still use it (the caller leaks its buffers).
fn time_copies(
    ctx: &Arc<VulkanContext>,
    reps: usize,
    copy: impl Fn(&ash::Device, vk::CommandBuffer),
) -> Result<f64, VulkanError> {
    let commands = Commands::new(ctx)?;
    let mut best = f64::INFINITY;
    for rep in 0..=reps.max(1) {
        // Recorded afresh for every submission (a one-time-submit command buffer).
        commands.record(|device, cmd| {
            for _ in 0..COPIES {
                copy(device, cmd);
                memory_barrier(device, cmd);
            }
        })?;
        let t = Instant::now();
        if let Err(e) = commands.run() {
            if matches!(e, VulkanError::Timeout { .. }) {
                std::mem::forget(commands);
            }
            return Err(e);
        }
        if rep > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(best / COPIES as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{download, upload};

    /// The compute copy moves every byte (a shader that skipped some would inflate the floor)
    /// and nothing past its elements.
    #[test]
    fn compute_copy_is_exact() {
        let ctx = match context() {
            Ok(ctx) => ctx,
            Err(e) => {
                let required = std::env::var("FFTCONV_REQUIRE_BACKENDS").unwrap_or_default();
                assert!(
                    !required.split(',').any(|b| b.trim() == "vulkan"),
                    "Vulkan is required but: {e}"
                );
                eprintln!("skipped compute_copy_is_exact: {e}");
                return;
            }
        };
        // (bytes, most workgroups): one element; a partial workgroup and a 4-byte tail; three
        // workgroups' worth through one workgroup and through two (the loop's strides).
        for (bytes, max_groups) in [
            (16, COPY_GROUPS),
            (4100, COPY_GROUPS),
            (49200, 1),
            (49200, 2),
        ] {
            let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 251) as u8).collect();
            let src = upload(&ctx, &data).unwrap();
            let dst = upload(&ctx, &vec![0xA5; bytes]).unwrap();
            let copy = ComputeCopy::new(&ctx, &src, &dst, max_groups)
                .unwrap()
                .unwrap();
            assert_eq!(copy.count as usize, bytes / 16);
            assert!(copy.groups <= max_groups);
            let commands = Commands::new(&ctx).unwrap();
            commands
                .record(|device, cmd| copy.record(device, cmd))
                .unwrap();
            commands.run().unwrap();
            let got = download(&ctx, &dst, bytes).unwrap();
            let whole = bytes / 16 * 16;
            assert!(got[..whole] == data[..whole], "{bytes} bytes: copy differs");
            assert!(
                got[whole..].iter().all(|&b| b == 0xA5),
                "{bytes} bytes: tail written"
            );
        }
    }
}
