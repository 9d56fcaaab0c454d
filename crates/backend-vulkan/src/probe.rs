//! Run-time Vulkan device discovery: loader, instance (RAII), physical devices and their properties.

use std::ffi::CStr;
use std::fmt;

use ash::vk;

use crate::error::check;
use crate::VulkanError;

/// What the Vulkan driver reports about one physical device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VulkanDeviceInfo {
    /// Index in `vkEnumeratePhysicalDevices` order.
    pub index: usize,
    /// `deviceName`, e.g. `"llvmpipe (LLVM 15.0.6, 256 bits)"`.
    pub name: String,
    /// `"discrete GPU"`, `"integrated GPU"`, `"virtual GPU"`, `"CPU"` or `"other"`.
    pub device_type: String,
    /// `(major, minor, patch)` of the device's supported Vulkan API version.
    pub api_version: (u32, u32, u32),
    /// `maxComputeSharedMemorySize` in bytes.
    pub max_compute_shared_memory_size: u32,
    /// `VkPhysicalDeviceSubgroupProperties::subgroupSize` (0 for a Vulkan 1.0 device).
    pub subgroup_size: u32,
    /// Whether the device lists the `VK_KHR_cooperative_matrix` extension.
    pub has_cooperative_matrix: bool,
    /// Whether the `shaderFloat16` feature is supported.
    pub has_shader_float16: bool,
}

impl fmt::Display for VulkanDeviceInfo {
    /// One line, e.g.
    /// `llvmpipe (LLVM 15.0.6, 256 bits) (CPU, Vulkan 1.3.230, subgroup 8, 32 KiB shared)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor, patch) = self.api_version;
        write!(
            f,
            "{} ({}, Vulkan {major}.{minor}.{patch}, subgroup {}, {} KiB shared",
            self.name,
            self.device_type,
            self.subgroup_size,
            self.max_compute_shared_memory_size / 1024
        )?;
        if self.has_shader_float16 {
            f.write_str(", fp16")?;
        }
        if self.has_cooperative_matrix {
            f.write_str(", cooperative matrix")?;
        }
        f.write_str(")")
    }
}

/// Lists the Vulkan physical devices.
///
/// Opens the loader at run time, creates a Vulkan 1.1+ instance without
/// layers, reads each physical device's properties, extensions and features,
/// then destroys the instance (also on error). Returns
/// [`VulkanError::Unavailable`] when the loader or a driver is missing or
/// there is no physical device.
pub fn probe() -> Result<Vec<VulkanDeviceInfo>, VulkanError> {
    // SAFETY: loading the system Vulkan loader runs its initialisers; that is
    // the documented way to use Vulkan and there is no way to make it safer.
    let entry = unsafe { ash::Entry::load() }.map_err(|e| match e {
        ash::LoadingError::LibraryLoadFailure(err) => {
            VulkanError::unavailable(format!("Vulkan loader (libvulkan.so.1) not found: {err}"))
        }
        ash::LoadingError::MissingEntryPoint(err) => {
            VulkanError::unavailable(format!("Vulkan loader is unusable: {err}"))
        }
    })?;

    // SAFETY: `entry` holds a loaded loader.
    let loader_version = unsafe { entry.try_enumerate_instance_version() }
        .map_err(|r| check("vkEnumerateInstanceVersion", r))?
        .unwrap_or(vk::API_VERSION_1_0);
    if loader_version < vk::API_VERSION_1_1 {
        return Err(VulkanError::unavailable(format!(
            "Vulkan loader supports only API {}; 1.1 is required",
            version_string(loader_version)
        )));
    }
    let instance_version = loader_version.min(vk::API_VERSION_1_3);

    let app_info = vk::ApplicationInfo::default()
        .application_name(c"flashfftconv-probe")
        .engine_name(c"flashfftconv")
        .api_version(instance_version);
    let create_info = vk::InstanceCreateInfo::default().application_info(&app_info);
    // SAFETY: `create_info` is valid and outlives the call; no layers or
    // extensions are requested.
    let instance = unsafe { entry.create_instance(&create_info, None) }
        .map_err(|r| check("vkCreateInstance", r))?;
    let instance = InstanceGuard(instance);

    // SAFETY: the instance is alive for the guard's lifetime.
    let physical_devices = unsafe { instance.0.enumerate_physical_devices() }
        .map_err(|r| check("vkEnumeratePhysicalDevices", r))?;
    if physical_devices.is_empty() {
        return Err(VulkanError::unavailable("no Vulkan physical device"));
    }

    physical_devices
        .into_iter()
        .enumerate()
        .map(|(index, pdev)| device_info(&instance.0, instance_version, index, pdev))
        .collect()
}

/// One line describing every Vulkan physical device (see
/// [`VulkanDeviceInfo`]'s `Display`); several devices are joined with `"; "`.
pub fn describe() -> Result<String, VulkanError> {
    let devices = probe()?;
    Ok(devices
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; "))
}

/// Destroys the instance when dropped, so early returns do not leak it.
struct InstanceGuard(ash::Instance);

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        // SAFETY: the instance was created by `probe`, no child objects exist,
        // and it is destroyed exactly once here.
        unsafe { self.0.destroy_instance(None) };
    }
}

fn device_info(
    instance: &ash::Instance,
    instance_version: u32,
    index: usize,
    pdev: vk::PhysicalDevice,
) -> Result<VulkanDeviceInfo, VulkanError> {
    // SAFETY: `pdev` was enumerated from `instance`, which is alive.
    let base = unsafe { instance.get_physical_device_properties(pdev) };
    let device_version = base.api_version;
    // The version usable with this instance is the smaller of the two.
    let effective = device_version.min(instance_version);

    // SAFETY: as above.
    let extensions = unsafe { instance.enumerate_device_extension_properties(pdev) }
        .map_err(|r| check("vkEnumerateDeviceExtensionProperties", r))?;
    let has_extension = |wanted: &CStr| {
        extensions
            .iter()
            .any(|e| e.extension_name_as_c_str() == Ok(wanted))
    };

    let subgroup_size = if effective >= vk::API_VERSION_1_1 {
        let mut subgroup = vk::PhysicalDeviceSubgroupProperties::default();
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut subgroup);
        // SAFETY: core 1.1 query on a 1.1+ instance and device; the chained
        // structure lives until the call returns.
        unsafe { instance.get_physical_device_properties2(pdev, &mut props2) };
        subgroup.subgroup_size
    } else {
        0
    };

    let has_f16_struct =
        effective >= vk::API_VERSION_1_2 || has_extension(ash::khr::shader_float16_int8::NAME);
    let has_shader_float16 = if has_f16_struct && effective >= vk::API_VERSION_1_1 {
        let mut f16 = vk::PhysicalDeviceShaderFloat16Int8Features::default();
        let mut features2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut f16);
        // SAFETY: the chained structure is core 1.2 or exposed by the listed
        // extension; it lives until the call returns.
        unsafe { instance.get_physical_device_features2(pdev, &mut features2) };
        f16.shader_float16 == vk::TRUE
    } else {
        false
    };

    let name = base
        .device_name_as_c_str()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "<unnamed Vulkan device>".to_owned());

    Ok(VulkanDeviceInfo {
        index,
        name,
        device_type: device_type_name(base.device_type).to_owned(),
        api_version: (
            vk::api_version_major(device_version),
            vk::api_version_minor(device_version),
            vk::api_version_patch(device_version),
        ),
        max_compute_shared_memory_size: base.limits.max_compute_shared_memory_size,
        subgroup_size,
        has_cooperative_matrix: has_extension(ash::khr::cooperative_matrix::NAME),
        has_shader_float16,
    })
}

fn device_type_name(t: vk::PhysicalDeviceType) -> &'static str {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => "discrete GPU",
        vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated GPU",
        vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual GPU",
        vk::PhysicalDeviceType::CPU => "CPU",
        _ => "other",
    }
}

fn version_string(v: u32) -> String {
    format!(
        "{}.{}.{}",
        vk::api_version_major(v),
        vk::api_version_minor(v),
        vk::api_version_patch(v)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line() {
        let d = VulkanDeviceInfo {
            index: 0,
            name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
            device_type: device_type_name(vk::PhysicalDeviceType::CPU).into(),
            api_version: (1, 3, 230),
            max_compute_shared_memory_size: 32768,
            subgroup_size: 8,
            has_cooperative_matrix: false,
            has_shader_float16: true,
        };
        assert_eq!(
            d.to_string(),
            "llvmpipe (LLVM 15.0.6, 256 bits) (CPU, Vulkan 1.3.230, subgroup 8, 32 KiB shared, fp16)"
        );
    }

    #[test]
    fn versions() {
        assert_eq!(version_string(vk::make_api_version(0, 1, 2, 3)), "1.2.3");
    }
}
