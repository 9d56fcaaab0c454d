//! The Monarch pass's launch planning (which kernels, their parameters and dynamic shared memory
//! for a chunk's steps), exported for `tests/emulation.rs`: it runs the kernels on the host with
//! exactly the launches the backend makes, so a change here is checked without a GPU. Not a
//! stable API.

#[doc(inline)]
pub use crate::convolution::{
    monarch_backward_launches, monarch_filter_params, monarch_launches, monarch_split_taps_params,
    monarch_vec_elems, MonarchBackwardKernel, MonarchKernel,
};
#[doc(inline)]
pub use crate::device::{
    monarch_backward_kernel_bytes, monarch_forward_kernel_bytes, monarch_taps_kernel_bytes,
};
