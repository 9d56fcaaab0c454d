//! [`VulkanContext`]: the process-wide Vulkan instance, chosen device, compute queue, and the
//! buffers, command submission and fence waits every convolution uses.

use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ash::vk;

use crate::capabilities::{select_shader_path, CooperativeMatrixSupport, ShaderPath};
use crate::error::check;
use crate::VulkanError;

/// Environment variable: index (in `vkEnumeratePhysicalDevices` order) of the device to use.
pub const DEVICE_ENV: &str = "FFTCONV_VULKAN_DEVICE";
/// Environment variable: `1` enables `VK_LAYER_KHRONOS_validation` (when installed); its errors
/// then fail the call that caused them with [`VulkanError::Validation`].
pub const VALIDATION_ENV: &str = "FFTCONV_VULKAN_VALIDATION";

/// How long one submission may run before the device is treated as lost.
pub(crate) const FENCE_TIMEOUT: Duration = Duration::from_secs(600);

/// What the backend needs to know about the chosen device.
#[derive(Debug, Clone)]
pub struct DeviceCapabilities {
    /// `deviceName`.
    pub name: String,
    /// `maxComputeSharedMemorySize` in bytes.
    pub shared_memory_bytes: u32,
    /// `maxComputeWorkGroupInvocations`.
    pub max_invocations: u32,
    /// `maxComputeWorkGroupSize[0]`.
    pub max_workgroup_size_x: u32,
    /// `maxComputeWorkGroupCount[0..2]`.
    pub max_workgroup_count: [u32; 3],
    /// `maxStorageBufferRange` in bytes.
    pub max_storage_buffer_range: u32,
    /// `subgroupSize`: sizes the cooperative-matrix product slots (one per subgroup at most);
    /// no shader relies on it (they cap the slots by the subgroups they run with).
    pub subgroup_size: u32,
    /// `storageBuffer16BitAccess`: needed for f16 and bf16 I/O.
    pub storage_16bit: bool,
    /// What the device offers for `VK_KHR_cooperative_matrix`.
    pub cooperative_matrix: CooperativeMatrixSupport,
    /// The shader path convolutions on this device use, and why.
    pub path: ShaderPath,
}

/// The Vulkan instance, the device chosen for convolutions and its compute queue.
///
/// One per process ([`context`]); everything created from it holds an `Arc` to it, so the
/// device outlives every buffer and pipeline.
pub struct VulkanContext {
    _entry: ash::Entry,
    instance: ash::Instance,
    debug: Option<DebugMessenger>,
    physical: vk::PhysicalDevice,
    pub(crate) device: ash::Device,
    queue: Mutex<vk::Queue>,
    pub(crate) queue_family: u32,
    memory: vk::PhysicalDeviceMemoryProperties,
    pub(crate) caps: DeviceCapabilities,
    description: String,
    /// Set after a lost device or a timed-out submission: no further work is submitted.
    lost: AtomicBool,
}

impl std::fmt::Debug for VulkanContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanContext")
            .field("device", &self.description)
            .finish_non_exhaustive()
    }
}

struct DebugMessenger {
    loader: ash::ext::debug_utils::Instance,
    messenger: vk::DebugUtilsMessengerEXT,
    /// Error messages since the last [`VulkanContext::take_validation_errors`]; boxed so the
    /// callback's user-data pointer stays valid.
    errors: Box<Mutex<Vec<String>>>,
}

/// The process-wide context: created on first use with the device [`DEVICE_ENV`] names, or the
/// most capable one (discrete, integrated, virtual, then CPU). The outcome, an error too, is kept.
pub fn context() -> Result<Arc<VulkanContext>, VulkanError> {
    static CONTEXT: OnceLock<Result<Arc<VulkanContext>, VulkanError>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| VulkanContext::create().map(Arc::new))
        .clone()
}

impl VulkanContext {
    /// One line: the device, its shader path and why.
    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn capabilities(&self) -> &DeviceCapabilities {
        &self.caps
    }

    fn create() -> Result<VulkanContext, VulkanError> {
        // SAFETY: loading the system Vulkan loader runs its initialisers; that is the documented
        // way to use Vulkan.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| {
            VulkanError::unavailable(format!("Vulkan loader (libvulkan.so.1) not usable: {e}"))
        })?;
        // SAFETY: `entry` holds a loaded loader.
        let loader_version = unsafe { entry.try_enumerate_instance_version() }
            .map_err(|r| check("vkEnumerateInstanceVersion", r))?
            .unwrap_or(vk::API_VERSION_1_0);
        if loader_version < vk::API_VERSION_1_1 {
            return Err(VulkanError::unavailable(
                "the Vulkan loader supports only API 1.0; 1.1 is required",
            ));
        }
        let api = loader_version.min(vk::API_VERSION_1_3);

        let want_validation = std::env::var(VALIDATION_ENV).is_ok_and(|v| v == "1");
        let validation_layer = c"VK_LAYER_KHRONOS_validation";
        // SAFETY: plain enumeration on a loaded entry.
        let layers = unsafe { entry.enumerate_instance_layer_properties() }
            .map_err(|r| check("vkEnumerateInstanceLayerProperties", r))?;
        let validation = want_validation
            && layers
                .iter()
                .any(|l| l.layer_name_as_c_str() == Ok(validation_layer));
        if want_validation && !validation {
            eprintln!("{VALIDATION_ENV}=1 but VK_LAYER_KHRONOS_validation is not installed");
        }
        let layer_names = [validation_layer.as_ptr()];
        let extension_names = [ash::ext::debug_utils::NAME.as_ptr()];
        let app_info = vk::ApplicationInfo::default()
            .application_name(c"fftconv")
            .engine_name(c"fftconv")
            .api_version(api);
        let mut create_info = vk::InstanceCreateInfo::default().application_info(&app_info);
        if validation {
            create_info = create_info
                .enabled_layer_names(&layer_names)
                .enabled_extension_names(&extension_names);
        }
        // SAFETY: every pointer in `create_info` outlives the call.
        let instance = unsafe { entry.create_instance(&create_info, None) }
            .map_err(|r| check("vkCreateInstance", r))?;
        let mut ctx = PartialContext {
            instance: Some(instance),
            debug: None,
            device: None,
        };
        if validation {
            ctx.debug = Some(create_messenger(&entry, ctx.instance())?);
        }

        let (physical, caps, queue_family) = choose_device(&entry, ctx.instance(), api)?;
        let priorities = [1.0f32];
        let queue_info = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(queue_family)
            .queue_priorities(&priorities)];
        let mut storage16 =
            vk::PhysicalDevice16BitStorageFeatures::default().storage_buffer16_bit_access(true);
        let mut device_info = vk::DeviceCreateInfo::default().queue_create_infos(&queue_info);
        if caps.storage_16bit {
            device_info = device_info.push_next(&mut storage16);
        }
        // The cooperative-matrix path: its extension and the features its shaders declare
        // (select_shader_path checked that the device has them all).
        let coop_extensions = [ash::khr::cooperative_matrix::NAME.as_ptr()];
        let mut coop =
            vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default().cooperative_matrix(true);
        let mut float16 =
            vk::PhysicalDeviceShaderFloat16Int8Features::default().shader_float16(true);
        let mut memory_model = vk::PhysicalDeviceVulkanMemoryModelFeatures::default()
            .vulkan_memory_model(true)
            .vulkan_memory_model_device_scope(true);
        if caps.path.is_cooperative() {
            device_info = device_info
                .enabled_extension_names(&coop_extensions)
                .push_next(&mut coop)
                .push_next(&mut float16)
                .push_next(&mut memory_model);
        }
        // SAFETY: `physical` comes from this instance; the create info's pointers outlive the call.
        let device = unsafe { ctx.instance().create_device(physical, &device_info, None) }
            .map_err(|r| check("vkCreateDevice", r))?;
        ctx.device = Some(device);
        // SAFETY: the queue family and index were requested at device creation.
        let queue = unsafe { ctx.device().get_device_queue(queue_family, 0) };
        // SAFETY: `physical` belongs to the instance.
        let memory = unsafe {
            ctx.instance()
                .get_physical_device_memory_properties(physical)
        };
        let description = format!(
            "{} (Vulkan, subgroup {}, {} KiB shared, {} path: {})",
            caps.name,
            caps.subgroup_size,
            caps.shared_memory_bytes / 1024,
            caps.path.name(),
            caps.path.reason()
        );
        let description = if validation {
            format!("{description}, validation layer on")
        } else {
            description
        };
        let (instance, debug, device) = ctx.into_parts();
        Ok(VulkanContext {
            _entry: entry,
            instance,
            debug,
            physical,
            device,
            queue: Mutex::new(queue),
            queue_family,
            memory,
            caps,
            description,
            lost: AtomicBool::new(false),
        })
    }

    /// The index of a memory type allowed by `type_bits` with all of `required` (and, among
    /// those, with `preferred` too when one exists).
    fn memory_type(
        &self,
        type_bits: u32,
        required: vk::MemoryPropertyFlags,
        preferred: vk::MemoryPropertyFlags,
    ) -> Option<u32> {
        let types = &self.memory.memory_types[..self.memory.memory_type_count as usize];
        let allowed = |i: usize, flags: vk::MemoryPropertyFlags| {
            type_bits & (1 << i) != 0 && types[i].property_flags.contains(flags)
        };
        (0..types.len())
            .find(|&i| allowed(i, required | preferred))
            .or_else(|| (0..types.len()).find(|&i| allowed(i, required)))
            .map(|i| i as u32)
    }

    /// Whether a submission was lost or timed out: objects are then leaked, not destroyed, as
    /// the GPU may still use them.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Fails with [`VulkanError::DeviceLost`] once a submission was lost or timed out.
    pub(crate) fn check_alive(&self) -> Result<(), VulkanError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(VulkanError::DeviceLost {
                call: "an earlier submission",
            });
        }
        Ok(())
    }

    /// Submits `cmd` and waits for `fence` (at most [`FENCE_TIMEOUT`]). On a timeout or a lost
    /// device the context is marked lost and the error returned; the caller must then leak
    /// every resource the command buffer uses (the GPU may still be using them).
    pub(crate) fn submit_and_wait(
        &self,
        cmd: vk::CommandBuffer,
        fence: vk::Fence,
    ) -> Result<(), VulkanError> {
        self.check_alive()?;
        let cmds = [cmd];
        let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
        {
            let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: the queue is externally synchronised by the mutex; `cmd` is recorded and
            // `fence` unsignalled, both from this device.
            unsafe { self.device.queue_submit(*queue, &submit, fence) }
                .map_err(|r| self.fail("vkQueueSubmit", r))?;
        }
        let timeout = u64::try_from(FENCE_TIMEOUT.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: the fence belongs to this device.
        match unsafe { self.device.wait_for_fences(&[fence], true, timeout) } {
            Ok(()) => {}
            Err(vk::Result::TIMEOUT) => {
                self.lost.store(true, Ordering::Release);
                return Err(VulkanError::Timeout {
                    seconds: FENCE_TIMEOUT.as_secs(),
                });
            }
            Err(r) => {
                // The submission's state is unknown: treat the device as lost so that nothing
                // it may still use is freed or reused.
                self.lost.store(true, Ordering::Release);
                return Err(self.fail("vkWaitForFences", r));
            }
        }
        // SAFETY: the fence is signalled and no longer in use.
        unsafe { self.device.reset_fences(&[fence]) }.map_err(|r| self.fail("vkResetFences", r))?;
        self.take_validation_errors()
    }

    fn fail(&self, call: &'static str, r: vk::Result) -> VulkanError {
        let e = check(call, r);
        if matches!(e, VulkanError::DeviceLost { .. }) {
            self.lost.store(true, Ordering::Release);
        }
        e
    }

    /// The validation layer's errors since the last call, as an error (none: `Ok`).
    pub(crate) fn take_validation_errors(&self) -> Result<(), VulkanError> {
        let Some(debug) = &self.debug else {
            return Ok(());
        };
        let messages = std::mem::take(&mut *debug.errors.lock().unwrap_or_else(|e| e.into_inner()));
        if messages.is_empty() {
            Ok(())
        } else {
            Err(VulkanError::Validation { messages })
        }
    }

    /// Whether the validation layer is active.
    pub fn validation_enabled(&self) -> bool {
        self.debug.is_some()
    }
}

impl Drop for VulkanContext {
    fn drop(&mut self) {
        // SAFETY: every child object holds an Arc to this context, so none is alive any more;
        // the device and instance are destroyed exactly once, children first.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_device(None);
            if let Some(d) = self.debug.take() {
                d.loader.destroy_debug_utils_messenger(d.messenger, None);
            }
            self.instance.destroy_instance(None);
        }
        let _ = self.physical;
    }
}

/// Owns what `create` has made so far, so that an early error destroys it.
struct PartialContext {
    instance: Option<ash::Instance>,
    debug: Option<DebugMessenger>,
    device: Option<ash::Device>,
}

impl PartialContext {
    fn instance(&self) -> &ash::Instance {
        self.instance.as_ref().expect("created first")
    }
    fn device(&self) -> &ash::Device {
        self.device.as_ref().expect("created before use")
    }
    fn into_parts(mut self) -> (ash::Instance, Option<DebugMessenger>, ash::Device) {
        let parts = (
            self.instance.take().expect("created"),
            self.debug.take(),
            self.device.take().expect("created"),
        );
        std::mem::forget(self);
        parts
    }
}

impl Drop for PartialContext {
    fn drop(&mut self) {
        // SAFETY: objects made by `create`, destroyed once, children first.
        unsafe {
            if let Some(d) = self.device.take() {
                d.destroy_device(None);
            }
            if let Some(d) = self.debug.take() {
                d.loader.destroy_debug_utils_messenger(d.messenger, None);
            }
            if let Some(i) = self.instance.take() {
                i.destroy_instance(None);
            }
        }
    }
}

unsafe extern "system" fn debug_callback(
    severity: vk::DebugUtilsMessageSeverityFlagsEXT,
    _types: vk::DebugUtilsMessageTypeFlagsEXT,
    data: *const vk::DebugUtilsMessengerCallbackDataEXT<'_>,
    user: *mut c_void,
) -> vk::Bool32 {
    if severity.contains(vk::DebugUtilsMessageSeverityFlagsEXT::ERROR)
        && !data.is_null()
        && !user.is_null()
    {
        // SAFETY: the layer passes valid callback data; `user` is the boxed mutex the messenger
        // was created with, alive until the messenger is destroyed.
        let (message, errors) = unsafe {
            let message = (*data)
                .message_as_c_str()
                .map(|m| m.to_string_lossy().into_owned())
                .unwrap_or_default();
            (message, &*(user as *const Mutex<Vec<String>>))
        };
        eprintln!("vulkan validation: {message}");
        errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message);
    }
    vk::FALSE
}

fn create_messenger(
    entry: &ash::Entry,
    instance: &ash::Instance,
) -> Result<DebugMessenger, VulkanError> {
    let loader = ash::ext::debug_utils::Instance::new(entry, instance);
    let errors: Box<Mutex<Vec<String>>> = Box::default();
    let info = vk::DebugUtilsMessengerCreateInfoEXT::default()
        .message_severity(
            vk::DebugUtilsMessageSeverityFlagsEXT::ERROR
                | vk::DebugUtilsMessageSeverityFlagsEXT::WARNING,
        )
        .message_type(
            vk::DebugUtilsMessageTypeFlagsEXT::GENERAL
                | vk::DebugUtilsMessageTypeFlagsEXT::VALIDATION
                | vk::DebugUtilsMessageTypeFlagsEXT::PERFORMANCE,
        )
        .pfn_user_callback(Some(debug_callback))
        .user_data(&*errors as *const Mutex<Vec<String>> as *mut c_void);
    // SAFETY: the instance was created with VK_EXT_debug_utils; `errors` outlives the messenger.
    let messenger = unsafe { loader.create_debug_utils_messenger(&info, None) }
        .map_err(|r| check("vkCreateDebugUtilsMessengerEXT", r))?;
    Ok(DebugMessenger {
        loader,
        messenger,
        errors,
    })
}

/// Chooses the device: [`DEVICE_ENV`] if set, else the best type. Returns it with its
/// capabilities and a compute queue family.
fn choose_device(
    entry: &ash::Entry,
    instance: &ash::Instance,
    api: u32,
) -> Result<(vk::PhysicalDevice, DeviceCapabilities, u32), VulkanError> {
    // SAFETY: the instance is alive.
    let devices = unsafe { instance.enumerate_physical_devices() }
        .map_err(|r| check("vkEnumeratePhysicalDevices", r))?;
    if devices.is_empty() {
        return Err(VulkanError::unavailable("no Vulkan physical device"));
    }
    let rank = |t: vk::PhysicalDeviceType| match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => 0,
        vk::PhysicalDeviceType::INTEGRATED_GPU => 1,
        vk::PhysicalDeviceType::VIRTUAL_GPU => 2,
        vk::PhysicalDeviceType::CPU => 3,
        _ => 4,
    };
    let requested = match std::env::var(DEVICE_ENV) {
        Ok(v) => Some(v.parse::<usize>().map_err(|_| {
            VulkanError::unavailable(format!("{DEVICE_ENV}={v} is not a device index"))
        })?),
        Err(_) => None,
    };
    let mut candidates = Vec::new();
    let mut reasons = Vec::new();
    for (index, &pdev) in devices.iter().enumerate() {
        if requested.is_some_and(|r| r != index) {
            continue;
        }
        match inspect(entry, instance, api, pdev) {
            Ok((caps, family, kind)) => candidates.push((rank(kind), index, pdev, caps, family)),
            Err(reason) => reasons.push(format!("device {index}: {reason}")),
        }
    }
    candidates.sort_by_key(|c| (c.0, c.1));
    match candidates.into_iter().next() {
        Some((_, _, pdev, caps, family)) => Ok((pdev, caps, family)),
        None if requested.is_some() && reasons.is_empty() => Err(VulkanError::unavailable(
            format!("{DEVICE_ENV} names no device ({} present)", devices.len()),
        )),
        None => Err(VulkanError::unavailable(format!(
            "no usable Vulkan device: {}",
            reasons.join("; ")
        ))),
    }
}

/// The capabilities of one device, or why it cannot run convolutions.
fn inspect(
    entry: &ash::Entry,
    instance: &ash::Instance,
    api: u32,
    pdev: vk::PhysicalDevice,
) -> Result<(DeviceCapabilities, u32, vk::PhysicalDeviceType), String> {
    // SAFETY: `pdev` was enumerated from the live instance; chained structures outlive calls.
    let props = unsafe { instance.get_physical_device_properties(pdev) };
    let name = props
        .device_name_as_c_str()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "<unnamed>".into());
    if props.api_version.min(api) < vk::API_VERSION_1_1 {
        return Err(format!("{name} supports only Vulkan 1.0"));
    }
    // SAFETY: as above.
    let families = unsafe { instance.get_physical_device_queue_family_properties(pdev) };
    let family = families
        .iter()
        .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
        .ok_or_else(|| format!("{name} has no compute queue"))? as u32;
    let mut subgroup = vk::PhysicalDeviceSubgroupProperties::default();
    let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut subgroup);
    // SAFETY: core 1.1 query; the chain outlives the call.
    unsafe { instance.get_physical_device_properties2(pdev, &mut props2) };
    let mut storage16 = vk::PhysicalDevice16BitStorageFeatures::default();
    let mut features2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut storage16);
    // SAFETY: core 1.1 query; the chain outlives the call.
    unsafe { instance.get_physical_device_features2(pdev, &mut features2) };
    // SAFETY: as above.
    let extensions = unsafe { instance.enumerate_device_extension_properties(pdev) }
        .map_err(|r| format!("{name}: vkEnumerateDeviceExtensionProperties: {r}"))?;
    let has_extension = |wanted: &CStr| {
        extensions
            .iter()
            .any(|e| e.extension_name_as_c_str() == Ok(wanted))
    };
    let cooperative_matrix = CooperativeMatrixSupport::query(
        entry,
        instance,
        pdev,
        has_extension(ash::khr::cooperative_matrix::NAME),
        props.api_version.min(api),
    );
    let limits = props.limits;
    let shared = limits.max_compute_shared_memory_size;
    if shared < 16 * 1024 {
        return Err(format!("{name} has only {shared} bytes of shared memory"));
    }
    let path = select_shader_path(&cooperative_matrix, std::env::var(crate::PORTABLE_ENV).ok());
    let caps = DeviceCapabilities {
        name,
        shared_memory_bytes: shared,
        max_invocations: limits.max_compute_work_group_invocations,
        max_workgroup_size_x: limits.max_compute_work_group_size[0],
        max_workgroup_count: limits.max_compute_work_group_count,
        max_storage_buffer_range: limits.max_storage_buffer_range,
        subgroup_size: subgroup.subgroup_size,
        storage_16bit: storage16.storage_buffer16_bit_access == vk::TRUE,
        cooperative_matrix,
        path,
    };
    Ok((caps, family, props.device_type))
}

/// A buffer with its own memory allocation; freed on drop.
pub(crate) struct Buffer {
    ctx: Arc<VulkanContext>,
    pub(crate) buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    pub(crate) size: u64,
    /// Host address of the whole buffer when it is host-visible (mapped for its lifetime).
    mapped: Option<*mut u8>,
}

// SAFETY: the handles are plain identifiers; the mapped pointer is only written through
// `&mut self` methods or while the owner holds its execution lock.
unsafe impl Send for Buffer {}
// SAFETY: as above; shared references never write through the mapping.
unsafe impl Sync for Buffer {}

/// Where a buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemoryKind {
    /// Device-local (GPU memory); filled and read back through staging buffers.
    Device,
    /// Host-visible and coherent, mapped: staging for uploads and readbacks.
    Staging,
}

impl Buffer {
    /// A buffer of `size` bytes (at least 4) of `kind`, usable as storage and transfer buffer.
    pub(crate) fn new(
        ctx: &Arc<VulkanContext>,
        size: u64,
        kind: MemoryKind,
    ) -> Result<Buffer, VulkanError> {
        let size = size.max(4).next_multiple_of(4);
        let device = &ctx.device;
        let usage = vk::BufferUsageFlags::STORAGE_BUFFER
            | vk::BufferUsageFlags::TRANSFER_SRC
            | vk::BufferUsageFlags::TRANSFER_DST;
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: valid create info on a live device.
        let buffer =
            unsafe { device.create_buffer(&info, None) }.map_err(|r| check("vkCreateBuffer", r))?;
        let mut this = Buffer {
            ctx: Arc::clone(ctx),
            buffer,
            memory: vk::DeviceMemory::null(),
            size,
            mapped: None,
        };
        // SAFETY: the buffer was just created on this device.
        let req = unsafe { device.get_buffer_memory_requirements(buffer) };
        let (required, preferred) = match kind {
            MemoryKind::Device => (
                vk::MemoryPropertyFlags::empty(),
                vk::MemoryPropertyFlags::DEVICE_LOCAL,
            ),
            MemoryKind::Staging => (
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
                vk::MemoryPropertyFlags::HOST_CACHED,
            ),
        };
        let type_index = ctx
            .memory_type(req.memory_type_bits, required, preferred)
            .ok_or_else(|| {
                VulkanError::unsupported(format!("no memory type for {kind:?} buffers"))
            })?;
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(type_index);
        // SAFETY: valid allocate info on a live device.
        this.memory = unsafe { device.allocate_memory(&alloc, None) }
            .map_err(|r| check("vkAllocateMemory", r))?;
        // SAFETY: fresh buffer and memory of a suitable type and size.
        unsafe { device.bind_buffer_memory(buffer, this.memory, 0) }
            .map_err(|r| check("vkBindBufferMemory", r))?;
        if kind == MemoryKind::Staging {
            // SAFETY: host-visible memory, mapped once for the buffer's lifetime.
            let ptr = unsafe {
                device.map_memory(this.memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
            }
            .map_err(|r| check("vkMapMemory", r))?;
            this.mapped = Some(ptr.cast::<u8>());
        }
        Ok(this)
    }

    /// The mapped bytes of a staging buffer.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let ptr = self.mapped.expect("staging buffers are mapped");
        // SAFETY: the mapping covers `size` bytes and lives as long as `self`; `&mut self`
        // guarantees no other host access, and callers only touch it while no GPU work on it runs.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.size as usize) }
    }

    /// Descriptor for the whole buffer.
    pub(crate) fn descriptor(&self) -> vk::DescriptorBufferInfo {
        vk::DescriptorBufferInfo::default()
            .buffer(self.buffer)
            .offset(0)
            .range(vk::WHOLE_SIZE)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.ctx.is_lost() {
            return; // the GPU may still use it: leak rather than free under it
        }
        // SAFETY: the owner only drops a buffer when no submitted work uses it (resources of a
        // timed-out submission are leaked instead).
        unsafe {
            self.ctx.device.destroy_buffer(self.buffer, None);
            if self.memory != vk::DeviceMemory::null() {
                self.ctx.device.free_memory(self.memory, None);
            }
        }
    }
}

/// Copies `data` into a new device-local buffer through a staging buffer (a blocking upload).
pub(crate) fn upload(ctx: &Arc<VulkanContext>, data: &[u8]) -> Result<Buffer, VulkanError> {
    let size = data.len() as u64;
    let device_buffer = Buffer::new(ctx, size, MemoryKind::Device)?;
    let mut staging = Buffer::new(ctx, size, MemoryKind::Staging)?;
    staging.bytes_mut()[..data.len()].copy_from_slice(data);
    let commands = Commands::new(ctx)?;
    let region = [vk::BufferCopy::default().size(device_buffer.size.min(staging.size))];
    commands.record(|device, cmd| {
        // SAFETY: both buffers are alive and large enough; recording state is managed by `record`.
        unsafe { device.cmd_copy_buffer(cmd, staging.buffer, device_buffer.buffer, &region) };
    })?;
    match commands.run() {
        Ok(()) => Ok(device_buffer),
        Err(e) => {
            if matches!(e, VulkanError::Timeout { .. }) {
                std::mem::forget(staging);
                std::mem::forget(device_buffer);
                std::mem::forget(commands);
            }
            Err(e)
        }
    }
}

/// A new device-local buffer of `size` bytes, zero-filled on the device (no host traffic).
pub(crate) fn zeroed(ctx: &Arc<VulkanContext>, size: u64) -> Result<Buffer, VulkanError> {
    let buffer = Buffer::new(ctx, size, MemoryKind::Device)?;
    let commands = Commands::new(ctx)?;
    commands.record(|device, cmd| {
        // SAFETY: the buffer is alive; its size is a multiple of 4 (`Buffer::new` rounds up).
        unsafe { device.cmd_fill_buffer(cmd, buffer.buffer, 0, vk::WHOLE_SIZE, 0) };
    })?;
    if let Err(e) = commands.run() {
        if matches!(e, VulkanError::Timeout { .. }) {
            std::mem::forget(buffer);
            std::mem::forget(commands);
        }
        return Err(e);
    }
    Ok(buffer)
}

/// Copies the first `len` bytes of a device buffer to the host through a staging buffer.
pub(crate) fn download(
    ctx: &Arc<VulkanContext>,
    src: &Buffer,
    len: usize,
) -> Result<Vec<u8>, VulkanError> {
    let mut staging = Buffer::new(ctx, len as u64, MemoryKind::Staging)?;
    let commands = Commands::new(ctx)?;
    // Both buffers are rounded up to whole 4-byte words, so the copy may round up too.
    let region = [vk::BufferCopy::default().size((len.max(4) as u64).next_multiple_of(4))];
    commands.record(|device, cmd| {
        // SAFETY: both buffers are alive and hold at least `len` bytes (rounded to 4).
        unsafe {
            device.cmd_copy_buffer(cmd, src.buffer, staging.buffer, &region);
        }
        host_read_barrier(device, cmd);
    })?;
    if let Err(e) = commands.run() {
        if matches!(e, VulkanError::Timeout { .. }) {
            std::mem::forget(staging);
            std::mem::forget(commands);
        }
        return Err(e);
    }
    Ok(staging.bytes_mut()[..len].to_vec())
}

/// A command pool with one command buffer and a fence.
pub(crate) struct Commands {
    ctx: Arc<VulkanContext>,
    pool: vk::CommandPool,
    pub(crate) cmd: vk::CommandBuffer,
    fence: vk::Fence,
}

impl Commands {
    pub(crate) fn new(ctx: &Arc<VulkanContext>) -> Result<Commands, VulkanError> {
        let device = &ctx.device;
        let info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(ctx.queue_family)
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
        // SAFETY: valid create info on a live device.
        let pool = unsafe { device.create_command_pool(&info, None) }
            .map_err(|r| check("vkCreateCommandPool", r))?;
        let mut this = Commands {
            ctx: Arc::clone(ctx),
            pool,
            cmd: vk::CommandBuffer::null(),
            fence: vk::Fence::null(),
        };
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool is alive.
        this.cmd = unsafe { device.allocate_command_buffers(&alloc) }
            .map_err(|r| check("vkAllocateCommandBuffers", r))?[0];
        // SAFETY: valid create info.
        this.fence = unsafe { device.create_fence(&vk::FenceCreateInfo::default(), None) }
            .map_err(|r| check("vkCreateFence", r))?;
        Ok(this)
    }

    /// Resets the command buffer and records `f` into it.
    pub(crate) fn record(
        &self,
        f: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<(), VulkanError> {
        let device = &self.ctx.device;
        // SAFETY: the command buffer is not pending (every submission is waited for).
        unsafe {
            device
                .reset_command_buffer(self.cmd, vk::CommandBufferResetFlags::empty())
                .map_err(|r| check("vkResetCommandBuffer", r))?;
            device
                .begin_command_buffer(
                    self.cmd,
                    &vk::CommandBufferBeginInfo::default()
                        .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
                )
                .map_err(|r| check("vkBeginCommandBuffer", r))?;
        }
        f(device, self.cmd);
        // SAFETY: the command buffer is recording.
        unsafe { device.end_command_buffer(self.cmd) }.map_err(|r| check("vkEndCommandBuffer", r))
    }

    /// Submits the recorded commands and waits for them.
    pub(crate) fn run(&self) -> Result<(), VulkanError> {
        self.ctx.submit_and_wait(self.cmd, self.fence)
    }
}

impl Drop for Commands {
    fn drop(&mut self) {
        if self.ctx.is_lost() {
            return;
        }
        // SAFETY: no submission is pending (waited for, or the whole object was leaked).
        unsafe {
            if self.fence != vk::Fence::null() {
                self.ctx.device.destroy_fence(self.fence, None);
            }
            self.ctx.device.destroy_command_pool(self.pool, None);
        }
    }
}

/// Makes transfer writes of the command buffer visible to host reads after the fence.
pub(crate) fn host_read_barrier(device: &ash::Device, cmd: vk::CommandBuffer) {
    let to_host = [vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(vk::AccessFlags::HOST_READ)];
    // SAFETY: `cmd` is recording (called inside `Commands::record`).
    unsafe {
        device.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::HOST,
            vk::DependencyFlags::empty(),
            &to_host,
            &[],
            &[],
        )
    };
}

/// A full memory barrier between transfer and compute work in one command buffer.
pub(crate) fn memory_barrier(device: &ash::Device, cmd: vk::CommandBuffer) {
    let barrier = [vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(
            vk::AccessFlags::SHADER_READ
                | vk::AccessFlags::SHADER_WRITE
                | vk::AccessFlags::TRANSFER_READ,
        )];
    let stages = vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER;
    // SAFETY: `cmd` is recording (called inside `Commands::record`).
    unsafe {
        device.cmd_pipeline_barrier(
            cmd,
            stages,
            stages,
            vk::DependencyFlags::empty(),
            &barrier,
            &[],
            &[],
        )
    };
}
