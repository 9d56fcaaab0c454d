// shim.h: the CUDA vocabulary `kernels/fftconv.cu` uses, for compiling it as host C++ (included
// first, with `-include`), and the hooks by which the harness (`harness.cpp`) runs a block's
// threads.
//
// THREADS is the block size the kernels are built for (as on the device, 1..1024):
// - THREADS=1: each block runs on one host thread, no fibers. Every
//   `for (i = threadIdx.x; i < n; i += THREADS)` loop runs all of a round's work items in turn,
//   and the barriers have nothing to wait for (the items of one round between two barriers are
//   independent).
// - THREADS>1: each CUDA thread of a block is a fiber, scheduled cooperatively on one host thread
//   by the harness. `__syncthreads()` and `__syncwarp()` are the only points where a fiber hands
//   over; the harness sets `threadIdx` each time it switches into a fiber (one runs at a time).
// The harness sets blockIdx/gridDim/blockDim (and threadIdx for the one-thread-per-element
// kernels, which run as a plain loop) before each call.
//
// `__shared__` is `thread_local`: a `__shared__` variable declared in a kernel (such as the fused
// pass's `segment_table`) then has one instance for all the fibers of the block (block-scope
// `thread_local` has static storage, one per host thread), and `extern __shared__ cpx smem[]`
// (the dynamic shared memory) stays a declaration, defined by the harness (as `thread_local`
// too). Plain `static` would do for the first but not for `extern __shared__` ("conflicting
// specifiers").
//
// FFTCONV_HOST_EMULATION makes the kernel file use portable code instead of its PTX `asm`
// (bit casts, bit reversal, multiply-high, read-only loads), and the compiler's `_Float16` for
// the f16 conversions (IO_F16; GCC 12 and Clang 15 have it on x86-64 and AArch64).
#pragma once

#if !defined(THREADS) || THREADS < 1 || THREADS > 1024
#error "define THREADS (threads per block, 1..1024) as for the device build"
#endif

#define FFTCONV_HOST_EMULATION 1

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __cluster_dims__(...)
#define __shared__ thread_local

struct EmuDim3 {
    unsigned x, y, z;
};
inline EmuDim3 threadIdx{0, 0, 0};
inline EmuDim3 blockIdx{0, 0, 0};
inline EmuDim3 blockDim{1, 1, 1};
inline EmuDim3 gridDim{1, 1, 1};

// Thread-block clusters (`__cluster_dims__` kernels, fibers only): the harness runs the fibers of
// all the cluster's blocks side by side and sets `emu_rank` (the block's rank in its cluster, 0
// outside cluster launches) with threadIdx and blockIdx. Each block has its own dynamic shared
// memory (`emu_block_smem()`; `smem` is only the non-cluster launches'); `emu_map_shared` is
// `mapa` (the same offset in block `rank`'s shared memory, which must be in the launch's bytes)
// and `emu_cluster_sync` the cluster barrier (every thread of every block of the cluster).
#define EMU_MAX_CLUSTER 8u
// Kernels may run more threads per block than THREADS (the harness's BLOCK_THREADS: the Monarch
// kernels with MT_WIDE_THREADS), up to this many; cluster launches run THREADS.
#define EMU_MAX_BLOCK_THREADS 512u
#define EMU_SLOT_STRIDE (THREADS < EMU_MAX_BLOCK_THREADS ? EMU_MAX_BLOCK_THREADS : THREADS)
#define EMU_SLOTS (EMU_SLOT_STRIDE * EMU_MAX_CLUSTER)
inline unsigned emu_rank = 0;
// A slot per fiber for the warp-level emulation's exchange arrays.
inline unsigned emu_slot() { return emu_rank * EMU_SLOT_STRIDE + threadIdx.x; }
void* emu_block_smem();
void* emu_map_shared(const void* p, unsigned rank);
void emu_cluster_sync();

#if THREADS == 1
inline void __syncthreads() {}
inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)mask; }
#else
// Defined by the harness: the calling fiber waits until every thread of the block (emu_syncthreads)
// or of its warp (emu_syncwarp: threads 32w .. min(32w + 31, blockDim.x - 1)) has arrived.
void emu_syncthreads();
void emu_syncwarp();

inline void __syncthreads() { emu_syncthreads(); }
// All lanes of the warp take part; `mask` is not checked (the kernels pass the full mask).
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    emu_syncwarp();
}
#endif

// cp.async (the prefetching Monarch kernels' staging of the next tile's rows): a fiber's copies
// are read from global memory when started, their destination is NaN (all ones) from then on (on
// a GPU its contents are undefined until the wait), and the data lands only at the fiber's next
// wait (`cp.async.wait_all`): a read of a slot after its copy was started and before the wait,
// by this thread or another, reads NaN. The harness fails a block that ends with copies it never
// waited for.
#define EMU_MAX_ASYNC 32u
struct EmuAsyncCopy {
    void* dst;
    unsigned char bytes[16];
};
inline EmuAsyncCopy emu_async[EMU_SLOTS][EMU_MAX_ASYNC];
inline unsigned emu_async_count[EMU_SLOTS];
inline void emu_copy_async16(void* dst, const void* src) {
    unsigned s = emu_slot();
    if (emu_async_count[s] >= EMU_MAX_ASYNC) {
        __builtin_trap(); // more copies in flight than any kernel starts between its waits
    }
    EmuAsyncCopy& c = emu_async[s][emu_async_count[s]++];
    c.dst = dst;
    __builtin_memcpy(c.bytes, src, 16);
    __builtin_memset(dst, 0xff, 16);
}
inline void emu_copy_async_wait() {
    unsigned s = emu_slot();
    for (unsigned i = 0; i < emu_async_count[s]; i++) {
        __builtin_memcpy(emu_async[s][i].dst, emu_async[s][i].bytes, 16);
    }
    emu_async_count[s] = 0;
}
// Copies started and not waited for, over all fibers (0 at the end of every block).
inline unsigned emu_async_pending() {
    unsigned n = 0;
    for (unsigned s = 0; s < EMU_SLOTS; s++) {
        n += emu_async_count[s];
    }
    return n;
}
