//! [`Convolution`]: a problem prepared on one backend; [`FilterSpectrum`]: a prepared filter.

use crate::{BackendKind, ConvError};
use monarch_core::{ConvSpec, Element};

/// Pre- and post-gates of a gated problem, each `[B, H, L]` like `u`.
#[derive(Debug, Clone, Copy)]
pub struct Gates<'a, T> {
    pub pre: &'a [T],
    pub post: &'a [T],
}

/// Gradient buffers of [`Convolution::backward`]; every one is overwritten.
///
/// `du` and the gate gradients are `[B, H, L]` of the problem's dtype; `dk` is `[H, K]` in f32,
/// summed over the batch. `dpregate` and `dpostgate` are given exactly when the problem is gated.
#[derive(Debug)]
pub struct Gradients<'a, T> {
    pub du: &'a mut [T],
    pub dk: &'a mut [f32],
    pub dpregate: Option<&'a mut [T]>,
    pub dpostgate: Option<&'a mut [T]>,
}

/// A convolution problem prepared on one backend. Immutable; `Send + Sync`, so concurrent
/// `forward` calls from several threads are safe.
#[derive(Debug)]
pub struct Convolution {
    spec: ConvSpec,
    backend: BackendKind,
    engine: Engine,
}

#[derive(Debug)]
enum Engine {
    #[cfg(feature = "cpu")]
    Cpu(backend_cpu::CpuConvolution),
    #[cfg(feature = "cuda")]
    Cuda(Box<backend_cuda::CudaConvolution>),
    #[cfg(feature = "vulkan")]
    Vulkan(Box<backend_vulkan::VulkanConvolution>),
    #[allow(dead_code)]
    Absent(std::convert::Infallible),
}

/// A filter `k: [H, K]` transformed once for one [`Convolution`] and reusable across calls
/// (its spectrum, in the backend's layout, with dropped frequencies removed).
#[derive(Debug, Clone)]
pub struct FilterSpectrum {
    backend: BackendKind,
    inner: FilterInner,
}

#[derive(Debug, Clone)]
enum FilterInner {
    #[cfg(feature = "cpu")]
    Cpu(backend_cpu::CpuFilterSpectrum),
    #[cfg(feature = "cuda")]
    Cuda(backend_cuda::CudaFilterSpectrum),
    #[cfg(feature = "vulkan")]
    Vulkan(backend_vulkan::VulkanFilterSpectrum),
    #[allow(dead_code)]
    Absent(std::convert::Infallible),
}

impl FilterSpectrum {
    /// The backend it was prepared on.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Bytes of spectrum memory it holds.
    pub fn size_bytes(&self) -> usize {
        match &self.inner {
            #[cfg(feature = "cpu")]
            FilterInner::Cpu(f) => f.size_bytes(),
            #[cfg(feature = "cuda")]
            FilterInner::Cuda(f) => f.size_bytes(),
            #[cfg(feature = "vulkan")]
            FilterInner::Vulkan(f) => f.size_bytes(),
            FilterInner::Absent(never) => match *never {},
        }
    }
}

impl Convolution {
    /// Prepares `spec` on `backend`; a backend that cannot run here is a
    /// [`ConvError::BackendUnavailable`] with the reason.
    pub fn new(spec: ConvSpec, backend: BackendKind) -> Result<Self, ConvError> {
        backend.probe()?;
        let engine = match backend {
            #[cfg(feature = "cpu")]
            BackendKind::Cpu => Engine::Cpu(backend_cpu::CpuConvolution::new(&spec)?),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => Engine::Cuda(Box::new(backend_cuda::CudaConvolution::new(&spec)?)),
            #[cfg(feature = "vulkan")]
            BackendKind::Vulkan => {
                Engine::Vulkan(Box::new(backend_vulkan::VulkanConvolution::new(&spec)?))
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(ConvError::BackendUnavailable {
                    backend: other,
                    reason: "no convolution engine for this backend in this build".into(),
                })
            }
        };
        Ok(Convolution {
            spec,
            backend,
            engine,
        })
    }

    /// Prepares `spec` on [`BackendKind::best_available`].
    pub fn with_best_backend(spec: ConvSpec) -> Result<Self, ConvError> {
        let backend = BackendKind::best_available()?;
        Self::new(spec, backend)
    }

    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Transforms the filter `k: [H, K]` (f32, row-major) for this convolution.
    ///
    /// Non-finite values are accepted and propagate: every output of such a channel is then
    /// non-finite (NaN or infinite), never silently finite.
    pub fn prepare_filter(&self, k: &[f32]) -> Result<FilterSpectrum, ConvError> {
        let want = self.spec.filter_elems();
        if k.len() != want {
            return Err(ConvError::invalid(
                "k",
                format!(
                    "expected [H={}, K={}] = {want} elements, got {}",
                    self.spec.channels(),
                    self.spec.filter_len(),
                    k.len()
                ),
            ));
        }
        let inner = match &self.engine {
            #[cfg(feature = "cpu")]
            Engine::Cpu(cpu) => FilterInner::Cpu(cpu.prepare_filter(k)?),
            #[cfg(feature = "cuda")]
            Engine::Cuda(cu) => FilterInner::Cuda(cu.prepare_filter(k)?),
            #[cfg(feature = "vulkan")]
            Engine::Vulkan(vk) => FilterInner::Vulkan(vk.prepare_filter(k)?),
            Engine::Absent(never) => match *never {},
        };
        Ok(FilterSpectrum {
            backend: self.backend,
            inner,
        })
    }

    /// `y = postgate * conv(pregate * u, k)` (gates only when the problem is gated).
    ///
    /// `u` and `y` (and both gates) are `[B, H, L]` of the problem's dtype `T`. Every argument is
    /// checked before anything is written; on error `y` is untouched.
    pub fn forward<T: Element>(
        &self,
        filter: &FilterSpectrum,
        u: &[T],
        gates: Option<Gates<'_, T>>,
        y: &mut [T],
    ) -> Result<(), ConvError> {
        self.check_io("u", u)?;
        self.check_io("y", y)?;
        self.check_gates(gates)?;
        self.check_filter(filter)?;
        match (&self.engine, &filter.inner) {
            #[cfg(feature = "cpu")]
            (Engine::Cpu(cpu), FilterInner::Cpu(f)) => {
                cpu.forward(f, u, gates.map(|g| (g.pre, g.post)), y)?
            }
            #[cfg(feature = "cuda")]
            (Engine::Cuda(cu), FilterInner::Cuda(f)) => {
                cu.forward(f, u, gates.map(|g| (g.pre, g.post)), y)?
            }
            #[cfg(feature = "vulkan")]
            (Engine::Vulkan(vk), FilterInner::Vulkan(f)) => {
                vk.forward(f, u, gates.map(|g| (g.pre, g.post)), y)?
            }
            (Engine::Absent(never), _) => match *never {},
            #[allow(unreachable_patterns)]
            _ => unreachable!("check_filter matched the filter's backend"),
        }
        Ok(())
    }

    /// Backward pass of [`forward`](Self::forward): given `dy`, the gradient of a loss with
    /// respect to `y = postgate * conv(pregate * u, k)`, writes the gradients into `grads`.
    ///
    /// - `filter` is `k` as prepared by [`prepare_filter`](Self::prepare_filter); the gradients
    ///   need only its spectrum, not `k` itself.
    /// - `u`, `dy` (and both gates, given exactly when the problem is gated) are `[B, H, L]` of
    ///   the problem's dtype `T`, like in `forward`.
    /// - Every buffer in [`Gradients`] is overwritten: `du` (and, when gated, `dpregate` and
    ///   `dpostgate`) `[B, H, L]` of dtype `T`; `dk` `[H, K]` f32, summed over the batch
    ///   (accumulated in f64 on the CPU backend, in f32 on the GPU with CUDA and Vulkan).
    ///
    /// It is the exact adjoint of the forward: causal or circular, blocked (partial
    /// convolutions: `dk` has `K` taps), and for a frequency-sparse problem only the kept
    /// frequencies carry gradient, exactly as the forward masks them. Every argument is checked
    /// before anything is written; on error no output is touched. Non-finite inputs are not
    /// rejected; they propagate.
    pub fn backward<T: Element>(
        &self,
        filter: &FilterSpectrum,
        u: &[T],
        gates: Option<Gates<'_, T>>,
        dy: &[T],
        grads: Gradients<'_, T>,
    ) -> Result<(), ConvError> {
        self.check_io("u", u)?;
        self.check_io("dy", dy)?;
        self.check_io("du", grads.du)?;
        let want = self.spec.filter_elems();
        if grads.dk.len() != want {
            return Err(ConvError::invalid(
                "dk",
                format!(
                    "expected [H={}, K={}] = {want} elements, got {}",
                    self.spec.channels(),
                    self.spec.filter_len(),
                    grads.dk.len()
                ),
            ));
        }
        self.check_gates(gates)?;
        self.check_gate_gradients(
            [
                ("dpregate", grads.dpregate.as_deref()),
                ("dpostgate", grads.dpostgate.as_deref()),
            ],
            |arg, g| self.check_io(arg, g),
        )?;
        self.check_filter(filter)?;
        match (&self.engine, &filter.inner) {
            #[cfg(feature = "cpu")]
            (Engine::Cpu(cpu), FilterInner::Cpu(f)) => cpu
                .backward(
                    f,
                    u,
                    gates.map(|g| (g.pre, g.post)),
                    dy,
                    backend_cpu::CpuGradients {
                        du: grads.du,
                        dk: grads.dk,
                        dpregate: grads.dpregate,
                        dpostgate: grads.dpostgate,
                    },
                )
                .map_err(ConvError::from),
            #[cfg(feature = "vulkan")]
            (Engine::Vulkan(vk), FilterInner::Vulkan(f)) => vk
                .backward(
                    f,
                    u,
                    gates.map(|g| (g.pre, g.post)),
                    dy,
                    backend_vulkan::VulkanGradients {
                        du: grads.du,
                        dk: grads.dk,
                        dpregate: grads.dpregate,
                        dpostgate: grads.dpostgate,
                    },
                )
                .map_err(ConvError::from),
            #[cfg(feature = "cuda")]
            (Engine::Cuda(cu), FilterInner::Cuda(f)) => cu
                .backward(
                    f,
                    u,
                    gates.map(|g| (g.pre, g.post)),
                    dy,
                    backend_cuda::CudaGradients {
                        du: grads.du,
                        dk: grads.dk,
                        dpregate: grads.dpregate,
                        dpostgate: grads.dpostgate,
                    },
                )
                .map_err(ConvError::from),
            (Engine::Absent(never), _) => match *never {},
            #[allow(unreachable_patterns)]
            _ => unreachable!("check_filter matched the filter's backend"),
        }
    }

    /// The CUDA engine's filter spectrum from a device-resident `k` (checked by the caller).
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda_prepare_filter_device(
        &self,
        k: &backend_cuda::CudaTensor,
    ) -> Result<FilterSpectrum, ConvError> {
        match &self.engine {
            Engine::Cuda(cu) => Ok(FilterSpectrum {
                backend: self.backend,
                inner: FilterInner::Cuda(cu.prepare_filter_device(k)?),
            }),
            #[allow(unreachable_patterns)]
            _ => Err(ConvError::invalid(
                "k",
                "not a tensor of this convolution's backend",
            )),
        }
    }

    /// The CUDA engine's device-tensor backward (arguments checked by the caller).
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda_backward_device(
        &self,
        filter: &FilterSpectrum,
        tensors: backend_cuda::CudaTensorGradients<'_>,
        dk: &mut backend_cuda::CudaTensor,
    ) -> Result<(), ConvError> {
        match (&self.engine, &filter.inner) {
            (Engine::Cuda(cu), FilterInner::Cuda(f)) => Ok(cu.backward_device(f, tensors, dk)?),
            #[allow(unreachable_patterns)]
            _ => Err(ConvError::invalid(
                "filter",
                "not prepared on this convolution's backend",
            )),
        }
    }

    /// The CUDA engine's device-tensor forward (arguments checked by the caller).
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda_forward_device(
        &self,
        filter: &FilterSpectrum,
        u: &backend_cuda::CudaTensor,
        gates: Option<(&backend_cuda::CudaTensor, &backend_cuda::CudaTensor)>,
        y: &mut backend_cuda::CudaTensor,
    ) -> Result<(), ConvError> {
        match (&self.engine, &filter.inner) {
            (Engine::Cuda(cu), FilterInner::Cuda(f)) => Ok(cu.forward_device(f, u, gates, y)?),
            #[allow(unreachable_patterns)]
            _ => Err(ConvError::invalid(
                "filter",
                "not prepared on this convolution's backend",
            )),
        }
    }

    /// The Vulkan engine's device-tensor forward (arguments checked by the caller).
    #[cfg(feature = "vulkan")]
    pub(crate) fn vulkan_forward_device(
        &self,
        filter: &FilterSpectrum,
        u: &backend_vulkan::VulkanTensor,
        gates: Option<(&backend_vulkan::VulkanTensor, &backend_vulkan::VulkanTensor)>,
        y: &mut backend_vulkan::VulkanTensor,
    ) -> Result<(), ConvError> {
        match (&self.engine, &filter.inner) {
            (Engine::Vulkan(vk), FilterInner::Vulkan(f)) => Ok(vk.forward_device(f, u, gates, y)?),
            _ => Err(ConvError::invalid(
                "filter",
                "not prepared on this convolution's backend",
            )),
        }
    }

    /// The Vulkan engine's device-tensor backward (arguments checked by the caller).
    #[cfg(feature = "vulkan")]
    pub(crate) fn vulkan_backward_device(
        &self,
        filter: &FilterSpectrum,
        tensors: backend_vulkan::VulkanTensorGradients<'_>,
        dk: &mut backend_vulkan::VulkanTensor,
    ) -> Result<(), ConvError> {
        match (&self.engine, &filter.inner) {
            (Engine::Vulkan(vk), FilterInner::Vulkan(f)) => Ok(vk.backward_device(f, tensors, dk)?),
            _ => Err(ConvError::invalid(
                "filter",
                "not prepared on this convolution's backend",
            )),
        }
    }

    /// Gate gradients are given exactly when the problem is gated; `check` checks each one.
    pub(crate) fn check_gate_gradients<A>(
        &self,
        grads: [(&'static str, Option<A>); 2],
        mut check: impl FnMut(&'static str, A) -> Result<(), ConvError>,
    ) -> Result<(), ConvError> {
        for (arg, g) in grads {
            match (self.spec.gated(), g) {
                (true, Some(g)) => check(arg, g)?,
                (true, None) => {
                    return Err(ConvError::invalid(
                        arg,
                        "the problem is gated: pass both dpregate and dpostgate",
                    ))
                }
                (false, Some(_)) => {
                    return Err(ConvError::invalid(
                        arg,
                        "the problem is not gated: pass no gate gradients",
                    ))
                }
                (false, None) => {}
            }
        }
        Ok(())
    }

    /// The filter was prepared on this convolution's backend.
    pub(crate) fn check_filter(&self, filter: &FilterSpectrum) -> Result<(), ConvError> {
        if filter.backend == self.backend {
            return Ok(());
        }
        Err(ConvError::invalid(
            "filter",
            format!(
                "prepared on backend {}, this convolution runs on {}",
                filter.backend, self.backend
            ),
        ))
    }

    /// Gates are given exactly when the problem is gated, each shaped like `u`.
    fn check_gates<T: Element>(&self, gates: Option<Gates<'_, T>>) -> Result<(), ConvError> {
        match (self.spec.gated(), gates) {
            (true, Some(g)) => {
                self.check_io("pregate", g.pre)?;
                self.check_io("postgate", g.post)
            }
            (true, None) => Err(ConvError::invalid(
                "gates",
                "the problem is gated: pass both pregate and postgate",
            )),
            (false, Some(_)) => Err(ConvError::invalid(
                "gates",
                "the problem is not gated (build it with .gated(true))",
            )),
            (false, None) => Ok(()),
        }
    }

    pub(crate) fn check_io<T: Element>(&self, arg: &'static str, x: &[T]) -> Result<(), ConvError> {
        if T::DTYPE != self.spec.dtype() {
            return Err(ConvError::DTypeMismatch {
                arg,
                expected: self.spec.dtype(),
                got: T::DTYPE,
            });
        }
        let want = self.spec.io_len();
        if x.len() != want {
            return Err(ConvError::invalid(
                arg,
                format!(
                    "expected [B={}, H={}, L={}] = {want} elements, got {}",
                    self.spec.batch(),
                    self.spec.channels(),
                    self.spec.length(),
                    x.len()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn prepared_types_are_send_and_sync() {
        assert_send_sync::<Convolution>();
        assert_send_sync::<FilterSpectrum>();
    }
}
