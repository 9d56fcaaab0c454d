// prelude.h: the CUDA vocabulary for compiling kernels/fftconv.cu for the DEVICE with clang's CUDA
// mode and no CUDA toolkit (-nocudainc -nocudalib), as tests/device_compile.rs does: the
// attribute spellings NVRTC predefines, and threadIdx/blockIdx/... from clang's own resource
// header; __syncwarp as NVRTC declares it (clang's is in its CUDA wrapper headers, which need the
// toolkit; its builtin needs a PTX-version target feature clang sets only when it finds one). __syncthreads is a clang builtin (not defined here).
#define __device__ __attribute__((device))
#define __global__ __attribute__((global))
#define __shared__ __attribute__((shared))
#define __forceinline__ __inline__ __attribute__((always_inline))
#define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
// NVRTC's compile-time cluster size; clang 15 has no such attribute, and the PTX then lacks the
// `.reqnctapercluster` line NVRTC writes (ptxas takes the cluster instructions without it).
#define __cluster_dims__(...)
#include <__clang_cuda_builtin_vars.h>
__device__ __forceinline__ void __syncwarp(unsigned int mask = 0xffffffffu) {
    asm volatile("bar.warp.sync %0;" ::"r"(mask) : "memory");
}
