//! [`DeviceTensor`]: a `[B, H, L]` tensor resident where a backend computes (device memory on a
//! GPU backend, host memory on the CPU), so repeated calls pay no host copies.

use std::any::Any;

use crate::{BackendKind, ConvError, Convolution, FilterSpectrum};
use half::{bf16, f16};
use monarch_core::{CoreError, DType, Element};

/// Gradient outputs of [`Convolution::backward_device`]: tensors on the convolution's backend,
/// every one overwritten.
#[derive(Debug)]
pub struct DeviceGradients<'a> {
    pub du: &'a mut DeviceTensor,
    /// `[H, K]` f32, summed over the batch: a filter tensor
    /// ([`Convolution::filter_tensor_zeros`], [`Convolution::filter_tensor_from_host`]), so a
    /// training step keeps its filter gradient where its filter is.
    pub dk: &'a mut DeviceTensor,
    pub dpregate: Option<&'a mut DeviceTensor>,
    pub dpostgate: Option<&'a mut DeviceTensor>,
}

/// A tensor of one dtype held by one backend ([`Convolution::tensor_from_host`],
/// [`Convolution::tensor_zeros`]); used by [`Convolution::forward_device`].
#[derive(Debug)]
pub struct DeviceTensor {
    backend: BackendKind,
    len: usize,
    dtype: DType,
    inner: TensorInner,
}

#[derive(Debug)]
enum TensorInner {
    #[cfg(feature = "cpu")]
    Host(HostTensor),
    #[cfg(feature = "cuda")]
    Cuda(backend_cuda::CudaTensor),
    #[cfg(feature = "vulkan")]
    Vulkan(backend_vulkan::VulkanTensor),
    #[allow(dead_code)]
    Absent(std::convert::Infallible),
}

/// Host memory of the CPU backend, typed.
#[derive(Debug)]
#[cfg_attr(not(feature = "cpu"), allow(dead_code))]
enum HostTensor {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

#[cfg_attr(not(feature = "cpu"), allow(dead_code))]
impl HostTensor {
    fn from_vec<T: Element + 'static>(v: Vec<T>) -> HostTensor {
        let any: Box<dyn Any> = Box::new(v);
        let any = match any.downcast::<Vec<f32>>() {
            Ok(v) => return HostTensor::F32(*v),
            Err(other) => other,
        };
        let any = match any.downcast::<Vec<f16>>() {
            Ok(v) => return HostTensor::F16(*v),
            Err(other) => other,
        };
        match any.downcast::<Vec<bf16>>() {
            Ok(v) => HostTensor::Bf16(*v),
            Err(_) => unreachable!("Element is sealed: f32, f16 and bf16 only"),
        }
    }

    fn as_slice<T: Element + 'static>(&self) -> Option<&[T]> {
        let any: &dyn Any = match self {
            HostTensor::F32(v) => v,
            HostTensor::F16(v) => v,
            HostTensor::Bf16(v) => v,
        };
        any.downcast_ref::<Vec<T>>().map(Vec::as_slice)
    }

    fn as_mut_slice<T: Element + 'static>(&mut self) -> Option<&mut [T]> {
        let any: &mut dyn Any = match self {
            HostTensor::F32(v) => v,
            HostTensor::F16(v) => v,
            HostTensor::Bf16(v) => v,
        };
        any.downcast_mut::<Vec<T>>().map(Vec::as_mut_slice)
    }
}

impl DeviceTensor {
    pub fn backend(&self) -> BackendKind {
        self.backend
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Convolution {
    /// Copies `data` (`[B, H, L]` of the problem's dtype, like `u` or a gate) to this backend.
    pub fn tensor_from_host<T: Element + 'static>(
        &self,
        data: &[T],
    ) -> Result<DeviceTensor, ConvError> {
        self.check_io("data", data)?;
        let inner = match self.backend() {
            #[cfg(feature = "cpu")]
            BackendKind::Cpu => TensorInner::Host(HostTensor::from_vec(data.to_vec())),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => TensorInner::Cuda(backend_cuda::CudaTensor::from_host(data)?),
            #[cfg(feature = "vulkan")]
            BackendKind::Vulkan => {
                TensorInner::Vulkan(backend_vulkan::VulkanTensor::from_host(data)?)
            }
            #[allow(unreachable_patterns)]
            other => return Err(no_tensors(other)),
        };
        Ok(self.tensor(inner))
    }

    /// A zeroed `[B, H, L]` tensor of the problem's dtype on this backend (e.g. for `y`).
    pub fn tensor_zeros(&self) -> Result<DeviceTensor, ConvError> {
        let (dtype, len) = (self.spec().dtype(), self.spec().io_len());
        let inner = match self.backend() {
            #[cfg(feature = "cpu")]
            BackendKind::Cpu => TensorInner::Host(match dtype {
                DType::F32 => HostTensor::F32(host_zeros("tensor_zeros", len)?),
                DType::F16 => HostTensor::F16(host_zeros("tensor_zeros", len)?),
                DType::Bf16 => HostTensor::Bf16(host_zeros("tensor_zeros", len)?),
            }),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => TensorInner::Cuda(backend_cuda::CudaTensor::zeros(dtype, len)?),
            #[cfg(feature = "vulkan")]
            BackendKind::Vulkan => {
                TensorInner::Vulkan(backend_vulkan::VulkanTensor::zeros(dtype, len)?)
            }
            #[allow(unreachable_patterns)]
            other => return Err(no_tensors(other)),
        };
        Ok(self.tensor(inner))
    }

    /// Copies a filter `k: [H, K]` (f32) to this backend, for
    /// [`prepare_filter_device`](Self::prepare_filter_device) (a training loop keeps `k` there and
    /// updates it in place with its own kernels).
    pub fn filter_tensor_from_host(&self, k: &[f32]) -> Result<DeviceTensor, ConvError> {
        self.spec()
            .check_filter_len(k.len())
            .map_err(ConvError::from)?;
        let inner = match self.backend() {
            #[cfg(feature = "cpu")]
            BackendKind::Cpu => TensorInner::Host(HostTensor::F32(k.to_vec())),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => TensorInner::Cuda(backend_cuda::CudaTensor::from_host(k)?),
            #[cfg(feature = "vulkan")]
            BackendKind::Vulkan => TensorInner::Vulkan(backend_vulkan::VulkanTensor::from_host(k)?),
            #[allow(unreachable_patterns)]
            other => return Err(no_tensors(other)),
        };
        Ok(DeviceTensor {
            backend: self.backend(),
            len: k.len(),
            dtype: DType::F32,
            inner,
        })
    }

    /// A zeroed filter tensor (`[H, K]`, f32) on this backend, e.g. for the filter gradient of
    /// [`backward_device`](Self::backward_device).
    pub fn filter_tensor_zeros(&self) -> Result<DeviceTensor, ConvError> {
        let len = self.spec().filter_elems();
        let inner = match self.backend() {
            #[cfg(feature = "cpu")]
            BackendKind::Cpu => {
                TensorInner::Host(HostTensor::F32(host_zeros("filter_tensor_zeros", len)?))
            }
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => {
                TensorInner::Cuda(backend_cuda::CudaTensor::zeros(DType::F32, len)?)
            }
            #[cfg(feature = "vulkan")]
            BackendKind::Vulkan => {
                TensorInner::Vulkan(backend_vulkan::VulkanTensor::zeros(DType::F32, len)?)
            }
            #[allow(unreachable_patterns)]
            other => return Err(no_tensors(other)),
        };
        Ok(DeviceTensor {
            backend: self.backend(),
            len,
            dtype: DType::F32,
            inner,
        })
    }

    /// Copies a filter tensor (`[H, K]`, f32, such as `dk`) into `out`.
    pub fn filter_tensor_to_host(
        &self,
        tensor: &DeviceTensor,
        out: &mut [f32],
    ) -> Result<(), ConvError> {
        self.check_filter_tensor("tensor", tensor)?;
        if out.len() != tensor.len {
            return Err(ConvError::invalid(
                "out",
                format!("expected {} elements, got {}", tensor.len, out.len()),
            ));
        }
        copy_to_host(tensor, out)
    }

    /// `t` lives on this backend.
    fn check_backend(&self, arg: &'static str, t: &DeviceTensor) -> Result<(), ConvError> {
        if t.backend != self.backend() {
            return Err(ConvError::invalid(
                arg,
                format!(
                    "tensor of backend {}, this convolution runs on {}",
                    t.backend,
                    self.backend()
                ),
            ));
        }
        Ok(())
    }

    /// `t` lives on this backend and is an f32 tensor of `[H, K]`.
    fn check_filter_tensor(&self, arg: &'static str, t: &DeviceTensor) -> Result<(), ConvError> {
        self.check_backend(arg, t)?;
        if t.dtype != DType::F32 {
            return Err(ConvError::DTypeMismatch {
                arg,
                expected: DType::F32,
                got: t.dtype,
            });
        }
        // The length's error names `arg` (the core check names `k`).
        self.spec().check_filter_len(t.len).map_err(|e| match e {
            CoreError::InvalidArgument { reason, .. } => ConvError::invalid(arg, reason),
            other => other.into(),
        })
    }

    /// The filter spectrum of `k: [H, K]` (f32) held on this backend
    /// ([`filter_tensor_from_host`](Self::filter_tensor_from_host)): on CUDA computed on the GPU
    /// without a host round trip (two filter rows share one transform there, so a non-finite value
    /// makes its partner channel's spectrum non-finite too); on the CPU from host memory; on Vulkan
    /// `k` is read back and prepared like [`prepare_filter`](Self::prepare_filter).
    pub fn prepare_filter_device(&self, k: &DeviceTensor) -> Result<FilterSpectrum, ConvError> {
        self.check_filter_tensor("k", k)?;
        match &k.inner {
            #[cfg(feature = "cpu")]
            TensorInner::Host(h) => {
                self.prepare_filter(h.as_slice::<f32>().expect("dtype checked"))
            }
            #[cfg(feature = "cuda")]
            TensorInner::Cuda(c) => self.cuda_prepare_filter_device(c),
            #[cfg(feature = "vulkan")]
            TensorInner::Vulkan(v) => {
                let mut host = vec![0.0f32; k.len];
                v.to_host(&mut host)?;
                self.prepare_filter(&host)
            }
            TensorInner::Absent(never) => match *never {},
        }
    }

    /// Copies `tensor` into `out` (same dtype, `[B, H, L]`).
    pub fn tensor_to_host<T: Element + 'static>(
        &self,
        tensor: &DeviceTensor,
        out: &mut [T],
    ) -> Result<(), ConvError> {
        self.check_io("out", out)?;
        self.check_tensor("tensor", tensor)?;
        copy_to_host(tensor, out)
    }

    /// [`forward`](Self::forward) on tensors resident on this backend: no host copies; `y` is
    /// overwritten. Every argument is checked before anything is written.
    pub fn forward_device(
        &self,
        filter: &FilterSpectrum,
        u: &DeviceTensor,
        gates: Option<(&DeviceTensor, &DeviceTensor)>,
        y: &mut DeviceTensor,
    ) -> Result<(), ConvError> {
        self.check_tensor("u", u)?;
        self.check_tensor("y", y)?;
        self.check_tensor_gates(gates)?;
        self.check_filter(filter)?;
        match (&u.inner, &mut y.inner) {
            #[cfg(feature = "cpu")]
            (TensorInner::Host(u), TensorInner::Host(y)) => {
                let gates = gates.map(|(p, q)| match (&p.inner, &q.inner) {
                    (TensorInner::Host(p), TensorInner::Host(q)) => (p, q),
                    #[allow(unreachable_patterns)]
                    _ => unreachable!("backends checked"),
                });
                macro_rules! run {
                    ($t:ty) => {{
                        let g = gates.map(|(p, q)| crate::Gates {
                            pre: typed::<$t>(p),
                            post: typed::<$t>(q),
                        });
                        let y = y.as_mut_slice::<$t>().expect("dtype checked");
                        self.forward(filter, typed::<$t>(u), g, y)
                    }};
                }
                match self.spec().dtype() {
                    DType::F32 => run!(f32),
                    DType::F16 => run!(f16),
                    DType::Bf16 => run!(bf16),
                }
            }
            #[cfg(feature = "vulkan")]
            (TensorInner::Vulkan(u), TensorInner::Vulkan(y)) => {
                let gates = gates.map(|(p, q)| match (&p.inner, &q.inner) {
                    (TensorInner::Vulkan(p), TensorInner::Vulkan(q)) => (p, q),
                    #[allow(unreachable_patterns)]
                    _ => unreachable!("backends checked"),
                });
                Ok(self.vulkan_forward_device(filter, u, gates, y)?)
            }
            #[cfg(feature = "cuda")]
            (TensorInner::Cuda(u), TensorInner::Cuda(y)) => {
                let gates = gates.map(|(p, q)| match (&p.inner, &q.inner) {
                    (TensorInner::Cuda(p), TensorInner::Cuda(q)) => (p, q),
                    #[allow(unreachable_patterns)]
                    _ => unreachable!("backends checked"),
                });
                self.cuda_forward_device(filter, u, gates, y)
            }
            (TensorInner::Absent(never), _) => match *never {},
            #[allow(unreachable_patterns)]
            _ => unreachable!("backends checked"),
        }
    }

    /// [`backward`](Self::backward) on tensors resident on this backend: `dy`, `u` and the gates
    /// are read there, and the gradients in `grads` overwritten there (`dk` is a filter tensor:
    /// `[H, K]` f32). Every argument is checked before anything is written.
    pub fn backward_device(
        &self,
        filter: &FilterSpectrum,
        u: &DeviceTensor,
        gates: Option<(&DeviceTensor, &DeviceTensor)>,
        dy: &DeviceTensor,
        grads: DeviceGradients<'_>,
    ) -> Result<(), ConvError> {
        self.check_tensor("u", u)?;
        self.check_tensor("dy", dy)?;
        self.check_tensor("du", grads.du)?;
        self.check_tensor_gates(gates)?;
        self.check_gate_gradients(
            [
                ("dpregate", grads.dpregate.as_deref()),
                ("dpostgate", grads.dpostgate.as_deref()),
            ],
            |arg, t| self.check_tensor(arg, t),
        )?;
        self.check_filter_tensor("dk", grads.dk)?;
        self.check_filter(filter)?;
        let DeviceGradients {
            du,
            dk,
            dpregate,
            dpostgate,
        } = grads;
        match (&u.inner, &dy.inner) {
            #[cfg(feature = "cpu")]
            (TensorInner::Host(u), TensorInner::Host(dy)) => {
                let gates = gates.map(|(p, q)| match (&p.inner, &q.inner) {
                    (TensorInner::Host(p), TensorInner::Host(q)) => (p, q),
                    #[allow(unreachable_patterns)]
                    _ => unreachable!("backends checked"),
                });
                let du = host_mut(du);
                let dk = host_mut(dk).as_mut_slice::<f32>().expect("dtype checked");
                let dpre = dpregate.map(host_mut);
                let dpost = dpostgate.map(host_mut);
                macro_rules! run {
                    ($t:ty) => {{
                        let g = gates.map(|(p, q)| crate::Gates {
                            pre: typed::<$t>(p),
                            post: typed::<$t>(q),
                        });
                        self.backward(
                            filter,
                            typed::<$t>(u),
                            g,
                            typed::<$t>(dy),
                            crate::Gradients {
                                du: du.as_mut_slice::<$t>().expect("dtype checked"),
                                dk,
                                dpregate: dpre
                                    .map(|t| t.as_mut_slice::<$t>().expect("dtype checked")),
                                dpostgate: dpost
                                    .map(|t| t.as_mut_slice::<$t>().expect("dtype checked")),
                            },
                        )
                    }};
                }
                match self.spec().dtype() {
                    DType::F32 => run!(f32),
                    DType::F16 => run!(f16),
                    DType::Bf16 => run!(bf16),
                }
            }
            #[cfg(feature = "vulkan")]
            (TensorInner::Vulkan(u), TensorInner::Vulkan(dy)) => {
                // Exclusive access to the outputs is held by `grads` for the whole call.
                let du = vulkan_of_mut(du);
                let gate_grads = dpregate
                    .zip(dpostgate)
                    .map(|(p, q)| (vulkan_of_mut(p), vulkan_of_mut(q)));
                let tensors = backend_vulkan::VulkanTensorGradients {
                    u,
                    gates: gates.map(|(p, q)| (vulkan_of(p), vulkan_of(q))),
                    dy,
                    du,
                    gate_grads,
                };
                Ok(self.vulkan_backward_device(filter, tensors, vulkan_of_mut(dk))?)
            }
            #[cfg(feature = "cuda")]
            (TensorInner::Cuda(u), TensorInner::Cuda(dy)) => {
                let du = cuda_of_mut(du);
                let gate_grads = dpregate
                    .zip(dpostgate)
                    .map(|(p, q)| (cuda_of_mut(p), cuda_of_mut(q)));
                let tensors = backend_cuda::CudaTensorGradients {
                    u,
                    gates: gates.map(|(p, q)| (cuda_of(p), cuda_of(q))),
                    dy,
                    du,
                    gate_grads,
                };
                self.cuda_backward_device(filter, tensors, cuda_of_mut(dk))
            }
            (TensorInner::Absent(never), _) => match *never {},
            #[allow(unreachable_patterns)]
            _ => unreachable!("backends checked"),
        }
    }

    fn tensor(&self, inner: TensorInner) -> DeviceTensor {
        DeviceTensor {
            backend: self.backend(),
            len: self.spec().io_len(),
            dtype: self.spec().dtype(),
            inner,
        }
    }

    /// Gate tensors are given exactly when the problem is gated, each like `u`.
    fn check_tensor_gates(
        &self,
        gates: Option<(&DeviceTensor, &DeviceTensor)>,
    ) -> Result<(), ConvError> {
        match (self.spec().gated(), gates) {
            (true, Some((pre, post))) => {
                self.check_tensor("pregate", pre)?;
                self.check_tensor("postgate", post)
            }
            (true, None) => Err(ConvError::invalid(
                "gates",
                "the problem is gated: pass both pregate and postgate",
            )),
            (false, Some(_)) => Err(ConvError::invalid("gates", "the problem is not gated")),
            (false, None) => Ok(()),
        }
    }

    /// `t` lives on this backend and is `[B, H, L]` of the problem's dtype.
    fn check_tensor(&self, arg: &'static str, t: &DeviceTensor) -> Result<(), ConvError> {
        self.check_backend(arg, t)?;
        if t.dtype != self.spec().dtype() {
            return Err(ConvError::DTypeMismatch {
                arg,
                expected: self.spec().dtype(),
                got: t.dtype,
            });
        }
        if t.len != self.spec().io_len() {
            return Err(ConvError::invalid(
                arg,
                format!(
                    "tensor of {} elements, expected {}",
                    t.len,
                    self.spec().io_len()
                ),
            ));
        }
        Ok(())
    }
}

/// The host memory of a CPU-backend tensor (its backend was checked).
#[cfg(feature = "cpu")]
fn host_mut(t: &mut DeviceTensor) -> &mut HostTensor {
    match &mut t.inner {
        TensorInner::Host(h) => h,
        #[allow(unreachable_patterns)]
        _ => unreachable!("backends checked"),
    }
}

/// `len` zeros in host memory, or [`ConvError::OutOfMemory`] where the host cannot hold them
/// (the problem's shape alone sets `len`: `vec!` would abort the process on such a size).
#[cfg(feature = "cpu")]
fn host_zeros<T: Element>(what: &'static str, len: usize) -> Result<Vec<T>, ConvError> {
    monarch_core::memory::try_zeros(len).map_err(|_| ConvError::OutOfMemory {
        what,
        bytes: len.saturating_mul(std::mem::size_of::<T>()),
    })
}

/// Copies `tensor` into `out`, whose dtype and length were checked against it.
fn copy_to_host<T: Element + 'static>(
    tensor: &DeviceTensor,
    out: &mut [T],
) -> Result<(), ConvError> {
    match &tensor.inner {
        #[cfg(feature = "cpu")]
        TensorInner::Host(h) => {
            out.copy_from_slice(h.as_slice::<T>().expect("dtype checked"));
            Ok(())
        }
        #[cfg(feature = "cuda")]
        TensorInner::Cuda(c) => Ok(c.to_host(out)?),
        #[cfg(feature = "vulkan")]
        TensorInner::Vulkan(v) => Ok(v.to_host(out)?),
        TensorInner::Absent(never) => match *never {},
    }
}

/// The device tensor of a Vulkan-backend tensor (its backend was checked).
#[cfg(feature = "vulkan")]
fn vulkan_of(t: &DeviceTensor) -> &backend_vulkan::VulkanTensor {
    match &t.inner {
        TensorInner::Vulkan(v) => v,
        #[allow(unreachable_patterns)]
        _ => unreachable!("backends checked"),
    }
}

/// Like [`vulkan_of`], mutable.
#[cfg(feature = "vulkan")]
fn vulkan_of_mut(t: &mut DeviceTensor) -> &mut backend_vulkan::VulkanTensor {
    match &mut t.inner {
        TensorInner::Vulkan(v) => v,
        #[allow(unreachable_patterns)]
        _ => unreachable!("backends checked"),
    }
}

/// The device tensor of a CUDA-backend tensor (its backend was checked).
#[cfg(feature = "cuda")]
fn cuda_of(t: &DeviceTensor) -> &backend_cuda::CudaTensor {
    match &t.inner {
        TensorInner::Cuda(c) => c,
        #[allow(unreachable_patterns)]
        _ => unreachable!("backends checked"),
    }
}

/// Like [`cuda_of`], mutable.
#[cfg(feature = "cuda")]
fn cuda_of_mut(t: &mut DeviceTensor) -> &mut backend_cuda::CudaTensor {
    match &mut t.inner {
        TensorInner::Cuda(c) => c,
        #[allow(unreachable_patterns)]
        _ => unreachable!("backends checked"),
    }
}

/// The slice of a host tensor whose dtype was checked to be `T`.
#[cfg(feature = "cpu")]
fn typed<T: Element + 'static>(h: &HostTensor) -> &[T] {
    h.as_slice::<T>().expect("dtype checked")
}

fn no_tensors(backend: BackendKind) -> ConvError {
    ConvError::BackendUnavailable {
        backend,
        reason: "no convolution engine for this backend in this build".into(),
    }
}
