//! Run-time CUDA device discovery: driver/NVRTC loading, device enumeration and attributes.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use cudarc::driver::result as drv;
use cudarc::driver::sys::{CUdevice_attribute, CUresult};

use crate::CudaError;

/// Library base names cudarc tries for the driver API (`libcuda*`, `nvcuda*`).
const DRIVER_LIB_NAMES: [&str; 2] = ["cuda", "nvcuda"];
/// Library base name cudarc tries for NVRTC (`libnvrtc*`).
const NVRTC_LIB_NAMES: [&str; 1] = ["nvrtc"];

/// What the CUDA driver reports about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    /// Device ordinal as used by `cuDeviceGet`.
    pub ordinal: usize,
    /// Marketing name, e.g. `"NVIDIA H100 80GB HBM3"`.
    pub name: String,
    /// `(major, minor)` compute capability, e.g. `(9, 0)` for sm_90.
    pub compute_capability: (i32, i32),
    /// Total device memory in bytes.
    pub total_memory_bytes: usize,
    /// Maximum shared memory per block a kernel may opt in to, in bytes.
    pub shared_memory_per_block_optin: usize,
}

impl fmt::Display for CudaDeviceInfo {
    /// One line, e.g. `NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor) = self.compute_capability;
        let gib = self.total_memory_bytes as f64 / (1u64 << 30) as f64;
        write!(f, "{} (sm_{major}{minor}, {gib:.1} GiB)", self.name)
    }
}

/// Lists the CUDA devices visible to the driver.
///
/// Opens the driver library at run time, calls `cuInit`, enumerates devices
/// and reads their attributes, then checks that NVRTC can be loaded (kernels
/// will be compiled with it). Returns [`CudaError::Unavailable`] when the
/// driver or NVRTC library is missing or there is no device; never panics.
pub fn probe() -> Result<Vec<CudaDeviceInfo>, CudaError> {
    guarded(probe_unguarded)
}

/// One line describing every CUDA device, e.g.
/// `NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)`; several devices are joined
/// with `"; "`.
pub fn describe() -> Result<String, CudaError> {
    let devices = probe()?;
    Ok(devices
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; "))
}

/// Runs `f`, turning a panic from inside cudarc (e.g. a missing symbol in an
/// unexpected driver build) into [`CudaError::Unavailable`]. The libraries'
/// presence is checked before any cudarc call, so this is a last resort.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(CudaError::unavailable(format!(
                "CUDA library call panicked: {msg}"
            )))
        }
    }
}

/// The file names cudarc tries for the given library base names, deduplicated.
fn candidates(lib_names: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in lib_names {
        for c in cudarc::get_lib_name_candidates(name) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// `"<call> failed: CUDA_ERROR_..."`.
fn driver_error_message(call: &str, e: drv::DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    format!("{call} failed: {name}")
}

fn driver_error(call: &str, e: drv::DriverError) -> CudaError {
    CudaError::Driver(driver_error_message(call, e))
}

fn attribute(dev: i32, attr: CUdevice_attribute, call: &str) -> Result<i32, CudaError> {
    // SAFETY: `dev` comes from `cuDeviceGet` and the driver is initialised.
    unsafe { drv::device::get_attribute(dev, attr) }.map_err(|e| driver_error(call, e))
}

fn probe_unguarded() -> Result<Vec<CudaDeviceInfo>, CudaError> {
    // SAFETY: only tries to `dlopen` the candidate names; nothing is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::unavailable(format!(
            "CUDA driver library not found (looked for {})",
            candidates(&DRIVER_LIB_NAMES).join(", ")
        )));
    }

    match drv::init() {
        Ok(()) => {}
        Err(e) if e.0 == CUresult::CUDA_ERROR_NO_DEVICE => {
            return Err(CudaError::unavailable("no CUDA device"));
        }
        // The driver is installed but cannot drive a GPU here (driver/kernel
        // module mismatch, forward-compat package on an unsupported GPU, ...).
        Err(e)
            if matches!(
                e.0,
                CUresult::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
                    | CUresult::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
                    | CUresult::CUDA_ERROR_SYSTEM_NOT_READY
            ) =>
        {
            return Err(CudaError::unavailable(driver_error_message("cuInit", e)));
        }
        Err(e) => return Err(driver_error("cuInit", e)),
    }

    let count = drv::device::get_count().map_err(|e| driver_error("cuDeviceGetCount", e))?;
    if count <= 0 {
        return Err(CudaError::unavailable("no CUDA device"));
    }

    let mut devices = Vec::with_capacity(count as usize);
    for ordinal in 0..count {
        let dev = drv::device::get(ordinal).map_err(|e| driver_error("cuDeviceGet", e))?;
        let name = drv::device::get_name(dev).map_err(|e| driver_error("cuDeviceGetName", e))?;
        // SAFETY: `dev` comes from `cuDeviceGet`.
        let total_memory_bytes = unsafe { drv::device::total_mem(dev) }
            .map_err(|e| driver_error("cuDeviceTotalMem", e))?;
        let major = attribute(
            dev,
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MAJOR)",
        )?;
        let minor = attribute(
            dev,
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MINOR)",
        )?;
        let smem_optin = attribute(
            dev,
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            "cuDeviceGetAttribute(MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)",
        )?;
        devices.push(CudaDeviceInfo {
            ordinal: ordinal as usize,
            name,
            compute_capability: (major, minor),
            total_memory_bytes,
            shared_memory_per_block_optin: usize::try_from(smem_optin).unwrap_or(0),
        });
    }

    check_nvrtc()?;
    Ok(devices)
}

/// Checks that NVRTC can be opened and answers `nvrtcVersion`.
pub(crate) fn check_nvrtc() -> Result<(), CudaError> {
    // SAFETY: only tries to `dlopen` the candidate names; nothing is called.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::unavailable(format!(
            "NVRTC library not found (looked for {})",
            candidates(&NVRTC_LIB_NAMES).join(", ")
        )));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both pointers are valid for writes.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Nvrtc(format!("nvrtcVersion failed: {r:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_turns_panic_into_unavailable() {
        let r: Result<(), CudaError> = guarded(|| panic!("Missing symbol cuFoo"));
        match r {
            Err(CudaError::Unavailable { reason }) => {
                assert!(reason.contains("Missing symbol cuFoo"), "{reason}");
            }
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn candidates_name_the_usual_driver_library() {
        let c = candidates(&DRIVER_LIB_NAMES);
        if cfg!(target_os = "linux") {
            assert!(c.iter().any(|n| n == "libcuda.so.1"), "{c:?}");
            assert!(c.iter().any(|n| n == "libcuda.so"), "{c:?}");
        }
        let mut dedup = c.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), c.len());
    }

    #[test]
    fn display_matches_documented_format() {
        let d = CudaDeviceInfo {
            ordinal: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: (9, 0),
            total_memory_bytes: 85_031_714_816,
            shared_memory_per_block_optin: 232_448,
        };
        assert_eq!(d.to_string(), "NVIDIA H100 80GB HBM3 (sm_90, 79.2 GiB)");
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            CudaError::unavailable("no CUDA device").to_string(),
            "CUDA unavailable: no CUDA device"
        );
        assert_eq!(
            CudaError::Driver("cuInit failed: CUDA_ERROR_UNKNOWN".into()).to_string(),
            "CUDA driver error: cuInit failed: CUDA_ERROR_UNKNOWN"
        );
    }
}
