//! [`BackendKind`]: which backends are compiled in, which can run here, and why not.

use crate::ConvError;

/// A compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Cpu,
    Cuda,
    Vulkan,
}

/// What one backend can do on this machine.
#[derive(Debug, Clone)]
pub struct BackendStatus {
    pub kind: BackendKind,
    /// Whether its cargo feature was enabled at build time.
    pub compiled: bool,
    /// `Ok(device description)` when it runs convolutions here, `Err(reason)` otherwise.
    pub available: Result<String, String>,
}

impl BackendKind {
    /// Every backend, in order of preference for [`best_available`](Self::best_available).
    pub const ALL: [BackendKind; 3] = [BackendKind::Cuda, BackendKind::Vulkan, BackendKind::Cpu];

    /// Lower-case name (`cpu`, `cuda`, `vulkan`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Vulkan => "vulkan",
        }
    }

    /// Whether this backend's cargo feature was enabled.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Cpu => cfg!(feature = "cpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
            BackendKind::Vulkan => cfg!(feature = "vulkan"),
        }
    }

    /// Whether [`Convolution::backward`](crate::Convolution::backward) runs on this backend
    /// (others return [`ConvError::Unsupported`]).
    pub fn supports_backward(self) -> bool {
        matches!(
            self,
            BackendKind::Cpu | BackendKind::Cuda | BackendKind::Vulkan
        )
    }

    /// The device this backend runs on, or why it cannot run convolutions here.
    pub fn probe(self) -> Result<String, ConvError> {
        let unavailable = |reason: String| ConvError::BackendUnavailable {
            backend: self,
            reason,
        };
        if !self.is_compiled() {
            return Err(unavailable(format!(
                "not compiled in (enable the `{}` cargo feature)",
                self.name()
            )));
        }
        match self {
            BackendKind::Cpu => Ok(cpu_description()),
            BackendKind::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    backend_cuda::active_device().map_err(|e| unavailable(e.to_string()))
                }
                #[cfg(not(feature = "cuda"))]
                unreachable!("checked by is_compiled")
            }
            BackendKind::Vulkan => {
                #[cfg(feature = "vulkan")]
                {
                    backend_vulkan::active_device().map_err(|e| unavailable(e.to_string()))
                }
                #[cfg(not(feature = "vulkan"))]
                unreachable!("checked by is_compiled")
            }
        }
    }

    /// The measured copy bandwidth of this backend's memory (bytes read plus written per
    /// second, copying `bytes` between two buffers): the denominator of the memory floor that
    /// timings are quoted against.
    pub fn copy_bandwidth(self, bytes: usize) -> Result<f64, ConvError> {
        self.probe()?;
        match self {
            #[cfg(feature = "cpu")]
            BackendKind::Cpu => Ok(backend_cpu::copy_bandwidth(bytes, 3)),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => Ok(backend_cuda::copy_bandwidth(bytes as u64, 3)?),
            #[cfg(feature = "vulkan")]
            BackendKind::Vulkan => Ok(backend_vulkan::copy_bandwidth(bytes as u64, 3)?),
            #[allow(unreachable_patterns)]
            other => Err(ConvError::Unsupported {
                backend: other,
                what: "a copy-bandwidth measurement",
            }),
        }
    }

    /// The first backend (CUDA, then Vulkan, then CPU) that can run convolutions here.
    pub fn best_available() -> Result<BackendKind, ConvError> {
        let mut reasons = Vec::new();
        for kind in BackendKind::ALL {
            match kind.probe() {
                Ok(_) => return Ok(kind),
                Err(e) => reasons.push(e.to_string()),
            }
        }
        Err(ConvError::BackendUnavailable {
            backend: BackendKind::Cpu,
            reason: format!("no backend can run here: {}", reasons.join("; ")),
        })
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "cuda" => Ok(BackendKind::Cuda),
            "vulkan" => Ok(BackendKind::Vulkan),
            other => Err(format!(
                "unknown backend `{other}` (expected cpu, cuda or vulkan)"
            )),
        }
    }
}

/// Every backend with whether it is compiled in and can run here.
pub fn backend_statuses() -> Vec<BackendStatus> {
    BackendKind::ALL
        .into_iter()
        .map(|kind| BackendStatus {
            kind,
            compiled: kind.is_compiled(),
            available: kind.probe().map_err(|e| match e {
                ConvError::BackendUnavailable { reason, .. } => reason,
                other => other.to_string(),
            }),
        })
        .collect()
}

fn cpu_description() -> String {
    #[cfg(feature = "cpu")]
    {
        format!(
            "CPU, {} worker threads (rustfft, {})",
            backend_cpu::threads(),
            std::env::consts::ARCH
        )
    }
    #[cfg(not(feature = "cpu"))]
    {
        String::new()
    }
}
