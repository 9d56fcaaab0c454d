// shim.h: the CUDA vocabulary `kernels/fftconv.cu` uses, for compiling it as host C++ (included
// first, with `-include`). Each block runs on one host thread: the kernels are built with
// THREADS=1, so every `for (i = threadIdx.x; i < n; i += THREADS)` loop runs all of a round's
// work items in turn, and `__syncthreads()` has nothing to wait for (the items of one round
// between two barriers are independent). The harness sets blockIdx/gridDim (and threadIdx for
// the one-thread-per-element kernels) before each call.
//
// FFTCONV_HOST_EMULATION makes the kernel file use portable code instead of its PTX `asm`
// (bit casts, bit reversal, multiply-high, read-only loads). The f16 conversions stay PTX, so
// only IO_F32 builds on the host.
#pragma once

#define FFTCONV_HOST_EMULATION 1

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __shared__

struct EmuDim3 {
    unsigned x, y, z;
};
inline EmuDim3 threadIdx{0, 0, 0};
inline EmuDim3 blockIdx{0, 0, 0};
inline EmuDim3 blockDim{1, 1, 1};
inline EmuDim3 gridDim{1, 1, 1};

inline void __syncthreads() {}
