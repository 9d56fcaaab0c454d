//! [`DeviceTensor`]: a `[B, H, L]` tensor resident where a backend computes (device memory on a
//! GPU backend, host memory on the CPU), so repeated calls pay no host copies.

use std::any::Any;

use crate::{BackendKind, ConvError, Convolution, FilterSpectrum};
use half::{bf16, f16};
use monarch_core::{DType, Element};

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
            #[cfg(feature = "vulkan")]
            BackendKind::Vulkan => {
                TensorInner::Vulkan(backend_vulkan::VulkanTensor::from_host(data)?)
            }
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
                DType::F32 => HostTensor::F32(vec![0.0; len]),
                DType::F16 => HostTensor::F16(vec![f16::ZERO; len]),
                DType::Bf16 => HostTensor::Bf16(vec![bf16::ZERO; len]),
            }),
            #[cfg(feature = "vulkan")]
            BackendKind::Vulkan => {
                TensorInner::Vulkan(backend_vulkan::VulkanTensor::zeros(dtype, len)?)
            }
            other => return Err(no_tensors(other)),
        };
        Ok(self.tensor(inner))
    }

    /// Copies `tensor` into `out` (same dtype, `[B, H, L]`).
    pub fn tensor_to_host<T: Element + 'static>(
        &self,
        tensor: &DeviceTensor,
        out: &mut [T],
    ) -> Result<(), ConvError> {
        self.check_io("out", out)?;
        self.check_tensor("tensor", tensor)?;
        match &tensor.inner {
            #[cfg(feature = "cpu")]
            TensorInner::Host(h) => {
                out.copy_from_slice(h.as_slice::<T>().expect("dtype checked"));
                Ok(())
            }
            #[cfg(feature = "vulkan")]
            TensorInner::Vulkan(v) => Ok(v.to_host(out)?),
            TensorInner::Absent(never) => match *never {},
        }
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
        match (self.spec().gated(), gates) {
            (true, Some((pre, post))) => {
                self.check_tensor("pregate", pre)?;
                self.check_tensor("postgate", post)?;
            }
            (true, None) => {
                return Err(ConvError::invalid(
                    "gates",
                    "the problem is gated: pass both pregate and postgate",
                ))
            }
            (false, Some(_)) => {
                return Err(ConvError::invalid("gates", "the problem is not gated"))
            }
            (false, None) => {}
        }
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

    /// `t` lives on this backend and is `[B, H, L]` of the problem's dtype.
    fn check_tensor(&self, arg: &'static str, t: &DeviceTensor) -> Result<(), ConvError> {
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
