// harness.cpp: runs the kernels of `kernels/fftconv.cu` on the host, block after block, for
// `tests/emulation.rs`. Build (the test does it):
//
//   c++ -std=c++17 -O1 -Wno-unknown-pragmas -include shim.h -DIO_F32 (or IO_F16, IO_BF16) -DPAD=1
//       -DSHARED_POINTS=<p> -DTHREADS=<t> -DSHARED_LIMIT_BYTES=<opt-in shared memory per block>
//       -DFFTCONV_KERNEL='"<path>/fftconv.cu"' harness.cpp
//
// Usage: harness <program> <outputs>. The program (native-endian u32 words) is a tiny script
// written by the test: buffers with their initial contents, then commands (kernel launches,
// copies, fills), then the buffers to write back:
//
//   magic 0x554d4546, version 2, shared points, buffer count
//   per buffer:  words, init (0: zeros, 1: NaN, 2: data), [words of data]
//   command count
//   per command: 1 (launch) kernel, dynamic shared bytes, Params (20 words),
//                           Buffers (13 buffer indices, ~0: null)
//                2 (copy)   dst, dst offset, src, src offset, words
//                3 (fill)   buffer, offset, words, value
//                4 (copy)   dst, dst byte offset, src, src byte offset, bytes (16-bit I/O)
//                5 (launch) blocks, then as 1: a grid of that many blocks (`launch_kernel_grid`)
//                6 (fill)   buffer, offset, count, value: 16-bit elements (16-bit I/O)
//   output count, buffer indices
//
// Kernel ids: 0 fused, 1 columns forward, 2 columns inverse, 3 gather, 4 taps sum, 5 fused
// backward; with MONARCH_TC the Monarch kernels from 6 (KERNELS below). The grid is the
// backend's (`launch_function` in src/convolution.rs): ceil(total_lines / 2^lines_log2) blocks.
// Gather and taps sum (one thread per element, no barriers) run their 2^lines_log2 threads one
// after another. The block-wide kernels (0-2, 5) run THREADS threads per block (blockDim.x =
// THREADS; a Monarch kernel with its own block size, BLOCK_THREADS, runs that many as fibers:
// `bt` below stands for whichever the launch runs):
// - THREADS=1: one call per block (the barriers are no-ops, see shim.h);
// - THREADS>1: one fiber per thread (POSIX ucontext; a FIBER_STACK_BYTES stack each, 64 KiB
//   unless defined, above a guard page, allocated once and reused by every block), scheduled
//   cooperatively on this one host thread. A fiber runs until it reaches a barrier or finishes; then the next runnable one runs.
//   `__syncthreads()` waits for all `bt` threads, `__syncwarp()` for the lanes of the caller's
//   warp (the last warp may be partial), independently of each other. The fibers are scanned in
//   ascending thread order after even block barriers and descending after odd ones (the parity
//   flipped on odd blocks), so a round reading what a missing barrier leaves unfinished shows up
//   whichever side (lower or higher threads) it reads from.
//
// Cluster kernels (CLUSTER[kernel] > 1 blocks per cluster, `__cluster_dims__`; fibers only, a
// 1-D grid of whole clusters): the fibers of all the cluster's blocks run side by side (fiber f
// is thread f % THREADS of block rank f / THREADS; blockIdx, threadIdx and `emu_rank` are set as
// each is switched in), each block with its own dynamic shared memory (`cluster_smem`, NaN at
// the start, guard points checked after the cluster), `mapa` the same offset in another block's
// (`emu_map_shared`: an address outside the caller's launch bytes fails the run), and the
// cluster barrier waits for every fiber of the cluster (a fiber finishing while others wait at
// it, or reaching it after another finished, is a divergence).
//
// Checks beyond the results: every buffer has guard words on both sides, checked after each
// command (a kernel writing outside its buffers fails the run); shared memory is NaN before each
// block (a read of anything the block did not write shows up as NaN), and guard points after the
// launch's dynamic shared bytes are checked after each block; with fibers, a barrier some threads
// of the block (or warp) can never reach fails the run: a thread finishing while others wait at
// a barrier it did not pass, a thread reaching a barrier after another finished, or no runnable
// fiber left (threads waiting at different barriers). Exit status: 0 ok, 2 bad program or I/O,
// 3 guard damaged, 4 barrier divergence.

#include <cinttypes>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#if THREADS > 1
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#endif

#ifndef FFTCONV_KERNEL
#error "define FFTCONV_KERNEL as the quoted path of kernels/fftconv.cu"
#endif
#include FFTCONV_KERNEL

#if !defined(SHARED_POINTS) || !defined(PAD) || !defined(THREADS) || !defined(SHARED_LIMIT_BYTES)
#error "define SHARED_POINTS, PAD and THREADS as for the device build, and SHARED_LIMIT_BYTES"
#endif
static_assert(THREADS >= 1 && THREADS <= 1024, "THREADS is 1..1024 as on the device");
// The ABI the test writes; a change in the kernel file must be mirrored in tests/emulation.rs.
static_assert(sizeof(Params) == 20 * 4, "Params is twenty u32");
static_assert(sizeof(Buffers) == 13 * sizeof(void*), "Buffers is thirteen pointers");
static_assert(sizeof(Divisors) == 6 * sizeof(Divisor), "Divisors is six divisors");
static_assert(sizeof(cpx) == 8, "cpx is two f32");

// The kernels' dynamic shared memory: the most a launch may ask for (the passes' SHARED_POINTS
// points plus padding, or the device's opt-in limit for the fused backward), then guard points.
const size_t SMEM_POINTS = (SHARED_POINTS + (PAD ? SHARED_POINTS / 16 : 0)) > SHARED_LIMIT_BYTES / 8
                               ? (SHARED_POINTS + (PAD ? SHARED_POINTS / 16 : 0))
                               : SHARED_LIMIT_BYTES / 8;
const size_t SMEM_GUARD = 256;
alignas(16) thread_local cpx smem[SMEM_POINTS + SMEM_GUARD]; // `extern __shared__` is `thread_local` (shim.h)

namespace {

const uint32_t MAGIC = 0x554d4546u;
const uint32_t NONE = 0xffffffffu;
const size_t GUARD = 64;            // guard words on each side of a buffer (keeps 8-byte alignment)
const uint32_t CANARY = 0x7fc0beefu; // a NaN, so a stray read of it shows up too

[[noreturn]] void fail(int code, const char* what) {
    std::fprintf(stderr, "harness: %s\n", what);
    std::exit(code);
}

struct Buffer {
    std::vector<uint32_t> store; // GUARD + words + GUARD
    size_t words = 0;
    uint32_t* data() { return store.data() + GUARD; }
};

struct Reader {
    std::vector<uint32_t> words;
    size_t at = 0;
    uint32_t next() {
        if (at >= words.size()) {
            fail(2, "program ends early");
        }
        return words[at++];
    }
};

Divisor divisor(u32 d) {
    if (d <= 1u) {
        return Divisor{0u, 0u, 0u, 1u};
    }
    u32 l = 32u - (u32)__builtin_clz(d - 1u); // ceil(log2 d)
    u32 m = (u32)((((u64)1 << 32) * (((u64)1 << l) - d)) / d + 1u);
    return Divisor{m, 1u, l - 1u, d};
}

typedef void (*Kernel)(const Params, const Buffers, const Divisors);

const Kernel KERNELS[] = {fftconv_fused,  fftconv_columns_forward, fftconv_columns_inverse,
                          fftconv_gather, fftconv_taps_sum,        fftconv_backward_fused,
#if MONARCH_TC
                          fftconv_monarch_filter, fftconv_monarch, fftconv_monarch_wide,
                          fftconv_monarch_scales, fftconv_monarch_columns_forward,
                          fftconv_monarch_middle, fftconv_monarch_columns_inverse,
                          fftconv_monarch_backward, fftconv_monarch_backward_wide,
                          fftconv_monarch_backward_scales,
                          fftconv_monarch_backward_columns_forward,
                          fftconv_monarch_backward_middle,
                          fftconv_monarch_backward_columns_inverse,
                          fftconv_monarch_tile_columns_forward, fftconv_monarch_tile_columns_inverse,
                          fftconv_monarch_cluster2, fftconv_monarch_cluster4,
                          fftconv_monarch_cluster8, fftconv_monarch_backward_tile_columns_forward,
                          fftconv_monarch_backward_tile_columns_inverse,
                          fftconv_monarch_scales_finish, fftconv_monarch_backward_scales_finish,
                          fftconv_monarch_filter_max, fftconv_monarch_backward_wide_8k,
                          fftconv_monarch_backward_taps, fftconv_monarch_backward_taps_wide,
                          fftconv_monarch_prefetch, fftconv_monarch_backward_taps_prefetch,
#endif
};
const char* const NAMES[] = {"fused",  "columns_forward", "columns_inverse",
                             "gather", "taps_sum",        "backward_fused",
#if MONARCH_TC
                             "monarch_filter", "monarch", "monarch_wide", "monarch_scales",
                             "monarch_columns_forward", "monarch_middle",
                             "monarch_columns_inverse", "monarch_backward",
                             "monarch_backward_wide", "monarch_backward_scales",
                             "monarch_backward_columns_forward", "monarch_backward_middle",
                             "monarch_backward_columns_inverse", "monarch_tile_columns_forward",
                             "monarch_tile_columns_inverse", "monarch_cluster2",
                             "monarch_cluster4", "monarch_cluster8",
                             "monarch_backward_tile_columns_forward",
                             "monarch_backward_tile_columns_inverse",
                             "monarch_scales_finish", "monarch_backward_scales_finish",
                             "monarch_filter_max", "monarch_backward_wide_8k",
                             "monarch_backward_taps", "monarch_backward_taps_wide",
                             "monarch_prefetch", "monarch_backward_taps_prefetch",
#endif
};
const bool PER_THREAD[] = {false, false, false, true, true, false,
#if MONARCH_TC
                           false, false, false, false, false, false, false, false, false,
                           false, false, false, false, false, false, false, false, false,
                           false, false, false, false, false, false, false, false, false,
                           false,
#endif
};
// Threads per block where a kernel has its own (0: THREADS): the Monarch kernels that run one
// block per SM (MT_WIDE_THREADS).
const u32 BLOCK_THREADS[] = {0, 0, 0, 0, 0, 0,
#if MONARCH_TC
                             0, 0, 0, 0, 0, 0, 0, 0, MT_WIDE_THREADS, 0, 0, MT_WIDE_THREADS,
                             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, MT_WIDE_THREADS, 0, 0,
#endif
};
// Blocks per cluster (`__cluster_dims__`; 1: no cluster).
const u32 CLUSTER[] = {1, 1, 1, 1, 1, 1,
#if MONARCH_TC
                       1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 4, 8, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                       1,
#endif
};
const size_t KERNEL_COUNT = sizeof(KERNELS) / sizeof(KERNELS[0]);
static_assert(sizeof(NAMES) / sizeof(NAMES[0]) == KERNEL_COUNT &&
                  sizeof(PER_THREAD) / sizeof(PER_THREAD[0]) == KERNEL_COUNT &&
                  sizeof(CLUSTER) / sizeof(CLUSTER[0]) == KERNEL_COUNT &&
                  sizeof(BLOCK_THREADS) / sizeof(BLOCK_THREADS[0]) == KERNEL_COUNT,
              "one NAMES, PER_THREAD, CLUSTER and BLOCK_THREADS entry per kernel");

// The dynamic shared memory of each block of a cluster launch (`emu_block_smem`), as `smem`.
alignas(16) cpx cluster_smem[EMU_MAX_CLUSTER][SMEM_POINTS + SMEM_GUARD];
bool in_cluster = false;  // a cluster launch runs
u32 cluster_blocks = 1;   // its blocks per cluster
size_t launch_bytes = 0;  // its dynamic shared bytes per block

#if THREADS > 1
// ---- fibers: the THREADS threads of a block -----------------------------------------------------

#ifndef FIBER_STACK_BYTES
#define FIBER_STACK_BYTES (64 * 1024)
#endif

namespace fibers {

enum State : unsigned char { READY, AT_BLOCK, AT_WARP, AT_CLUSTER, DONE };
const u32 WARP = 32;
// Threads per block: THREADS, or a kernel's own (BLOCK_THREADS) for the launch (`bt`).
const u32 MAX_THREADS = THREADS < EMU_MAX_BLOCK_THREADS ? EMU_MAX_BLOCK_THREADS : THREADS;
const u32 WARPS = (MAX_THREADS + WARP - 1) / WARP;
// Fiber f is thread f % bt of the cluster's block f / bt (its rank).
const u32 FIBERS = MAX_THREADS * EMU_MAX_CLUSTER;
u32 bt = THREADS; // threads per block of the launch the fibers run

ucontext_t scheduler;        // the harness's own context (run_blocks)
ucontext_t context[FIBERS];  // per fiber: where it resumes
State state[FIBERS];
u32 started = 0;             // fibers with a stack and context
bool running = false;        // inside run_blocks (the per-thread kernels run without fibers)
u32 blocks = 1;              // blocks run side by side (a cluster's; 1 otherwise)
u32 current = 0;             // the fiber running
u32 at_block[EMU_MAX_CLUSTER];       // per block: threads waiting at __syncthreads
u32 at_warp[EMU_MAX_CLUSTER * WARPS]; // per block and warp: lanes waiting at __syncwarp
u32 at_cluster = 0;                  // fibers waiting at the cluster barrier
u32 done_in[EMU_MAX_CLUSTER];        // per block: threads finished
u32 done = 0;                        // fibers finished
u32 passed[EMU_MAX_CLUSTER];         // per block: block barriers passed
u32 cluster_passed = 0;              // cluster barriers passed
// The launch the fibers run, and where (for messages).
Kernel kernel = nullptr;
Params pc;
Buffers bf;
Divisors dv;
const char* name = "";
size_t command = 0;
u32 block = 0;       // the (first) block's index
EmuDim3 first{0, 0, 0}; // its blockIdx; block rank r has x + r

u32 lanes(u32 w) { return bt - w * WARP < WARP ? bt - w * WARP : WARP; }

[[noreturn]] void divergence(const char* what) {
    u32 rank = current / bt, waiting = 0, at = 0;
    for (u32 w = 0; w < WARPS; w++) {
        waiting += at_warp[rank * WARPS + w];
    }
    for (u32 r = 0; r < blocks; r++) {
        at += at_block[r];
    }
    std::fprintf(stderr,
                 "harness: command %zu (%s), block %u (%u threads): barrier divergence: %s "
                 "(after %u block barriers: %u threads at __syncthreads, %u at __syncwarp, %u "
                 "at the cluster barrier, %u finished)\n",
                 command, name, in_cluster ? first.x + rank : block, (unsigned)bt, what,
                 passed[rank], at, waiting,
                 at_cluster, done);
    std::exit(4);
}

// Back to the scheduler; the fiber resumes here when it is scheduled again.
void yield() {
    if (swapcontext(&context[current], &scheduler) != 0) {
        fail(2, "swapcontext failed");
    }
}

// A fiber's life: the block kernel for every block it is scheduled for.
void fiber_main() {
    for (;;) {
        kernel(pc, bf, dv);
        u32 f = current, rank = f / bt, t = f % bt;
        state[f] = DONE;
        done++;
        done_in[rank]++;
        char what[160];
        if (at_block[rank] > 0) {
            std::snprintf(what, sizeof what,
                          "thread %u finished while other threads wait at __syncthreads", t);
            divergence(what);
        }
        if (at_warp[rank * WARPS + t / WARP] > 0) {
            std::snprintf(what, sizeof what,
                          "thread %u finished while lanes of its warp %u wait at __syncwarp", t,
                          t / WARP);
            divergence(what);
        }
        if (at_cluster > 0) {
            std::snprintf(what, sizeof what,
                          "thread %u finished while threads wait at the cluster barrier", t);
            divergence(what);
        }
        yield();
    }
}

// Stacks (each above a guard page, so an overflow faults) and contexts for the first `count`
// fibers, once each per run.
void start(u32 count) {
    if (count <= started) {
        return;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t stack = ((size_t)FIBER_STACK_BYTES + page - 1) / page * page;
    size_t each = page + stack;
    u32 more = count - started;
    void* map = mmap(nullptr, each * more, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (map == MAP_FAILED) {
        fail(2, "cannot allocate the fiber stacks");
    }
    char* base = (char*)map;
    for (u32 i = 0; i < more; i++) {
        u32 f = started + i;
        char* low = base + i * each;
        if (mprotect(low, page, PROT_NONE) != 0 || getcontext(&context[f]) != 0) {
            fail(2, "cannot set up the fibers");
        }
        context[f].uc_stack.ss_sp = low + page;
        context[f].uc_stack.ss_size = stack;
        context[f].uc_link = nullptr; // fiber_main never returns
        makecontext(&context[f], fiber_main, 0);
    }
    started = count;
}

// Runs all bt threads of the current `blocks` blocks (one, or a cluster's) to their end.
void run_blocks() {
    const u32 count = blocks * bt;
    start(count);
    for (u32 f = 0; f < count; f++) {
        state[f] = READY;
    }
    for (u32 r = 0; r < blocks; r++) {
        at_block[r] = done_in[r] = passed[r] = 0;
        for (u32 w = 0; w < WARPS; w++) {
            at_warp[r * WARPS + w] = 0;
        }
    }
    at_cluster = cluster_passed = done = 0;
    running = true;
    while (done < count) {
        // A cluster's blocks are not run in step: each in turn runs as far as it can (to a
        // cluster barrier or its end; the ranks in ascending order after even cluster barriers,
        // descending after odd ones), so a block that reads another's shared memory without a
        // cluster barrier between the write and the read finds it unwritten (NaN) or stale.
        bool ran = false;
        for (u32 i = 0; i < blocks; i++) {
            u32 rank = (cluster_passed & 1u) != 0u ? blocks - 1u - i : i;
            for (bool progress = true; progress;) {
                progress = false;
                bool descending = ((passed[rank] + cluster_passed + block) & 1u) != 0u;
                for (u32 k = 0; k < bt; k++) {
                    u32 f = rank * bt + (descending ? bt - 1u - k : k);
                    if (state[f] != READY) {
                        continue;
                    }
                    current = f;
                    emu_rank = rank;
                    threadIdx = EmuDim3{f % bt, 0u, 0u};
                    blockIdx = EmuDim3{first.x + emu_rank, first.y, 0u};
                    if (swapcontext(&scheduler, &context[f]) != 0) {
                        fail(2, "swapcontext failed");
                    }
                    ran = progress = true;
                    if (in_cluster && done_in[rank] == bt) {
                        // A block that has left keeps no shared memory another may still read.
                        for (size_t j = 0; j < launch_bytes / 8u; j++) {
                            cluster_smem[rank][j] = mk(NAN, NAN);
                        }
                    }
                }
            }
        }
        if (!ran && done < count) {
            divergence("no thread can run (threads wait at barriers the others never reach)");
        }
    }
    running = false;
    emu_rank = 0;
    blockIdx = first;
}

// A barrier outside the fibers: in a kernel the harness runs as one call per thread.
void outside(const char* barrier) {
    if (!running) {
        std::fprintf(stderr,
                     "harness: command %zu (%s): %s in a kernel run one thread after another "
                     "(no fibers: see PER_THREAD)\n",
                     command, name, barrier);
        std::exit(4);
    }
}

void block_barrier() {
    outside("__syncthreads");
    u32 f = current, rank = f / bt;
    if (done_in[rank] > 0) {
        char what[160];
        std::snprintf(what, sizeof what,
                      "thread %u reached __syncthreads after %u threads of the block finished",
                      f % bt, done_in[rank]);
        divergence(what);
    }
    state[f] = AT_BLOCK;
    if (++at_block[rank] == bt) {
        for (u32 i = rank * bt; i < (rank + 1u) * bt; i++) {
            state[i] = READY;
        }
        at_block[rank] = 0;
        passed[rank]++;
    }
    yield();
}

void warp_barrier() {
    outside("__syncwarp");
    u32 f = current, rank = f / bt, t = f % bt;
    u32 w = t / WARP, first_lane = rank * bt + w * WARP;
    for (u32 i = first_lane; i < first_lane + lanes(w); i++) {
        if (state[i] == DONE) {
            char what[160];
            std::snprintf(what, sizeof what,
                          "thread %u reached __syncwarp after lane %u of its warp finished", t,
                          i - first_lane);
            divergence(what);
        }
    }
    state[f] = AT_WARP;
    if (++at_warp[rank * WARPS + w] == lanes(w)) {
        for (u32 i = first_lane; i < first_lane + lanes(w); i++) {
            state[i] = READY;
        }
        at_warp[rank * WARPS + w] = 0;
    }
    yield();
}

void cluster_barrier() {
    outside("the cluster barrier");
    const u32 count = blocks * bt;
    if (!in_cluster) {
        std::fprintf(stderr, "harness: command %zu (%s): a cluster barrier outside a cluster launch\n",
                     command, name);
        std::exit(4);
    }
    if (done > 0) {
        char what[160];
        std::snprintf(what, sizeof what,
                      "thread %u reached the cluster barrier after %u threads finished",
                      current % bt, done);
        divergence(what);
    }
    state[current] = AT_CLUSTER;
    if (++at_cluster == count) {
        for (u32 i = 0; i < count; i++) {
            state[i] = READY;
        }
        at_cluster = 0;
        cluster_passed++;
    }
    yield();
}

} // namespace fibers
#endif

// The grid: `blocks` where not 0, otherwise ceil(total_lines / 2^lines_log2).
void launch(u32 kernel, u32 shared_bytes, const Params& pc, const Buffers& bf, size_t command,
            u32 blocks) {
    if (shared_bytes % 8u != 0u || shared_bytes / 8u > SMEM_POINTS) {
        fail(2, "dynamic shared memory beyond SHARED_LIMIT_BYTES");
    }
    size_t shared = shared_bytes / 8u;
    const float canary = bits_float(CANARY);
    Divisors dv{divisor(pc.blocks),   divisor(pc.pairs),     divisor(pc.seq_len),
                divisor(pc.channels), divisor(pc.block_len), divisor(pc.taps_len)};
    if (pc.lines_log2 >= 31u) {
        fail(2, "lines_log2 out of range");
    }
    u64 per_block = (u64)1 << pc.lines_log2;
    u64 groups = blocks != 0u ? (u64)blocks : ((u64)pc.total_lines + per_block - 1u) / per_block;
    if (groups == 0u) {
        groups = 1u;
    }
    u64 x = groups < (u64)INT_MAX ? groups : (u64)INT_MAX;
    u64 y = (groups + x - 1u) / x;
    gridDim = EmuDim3{(unsigned)x, (unsigned)y, 1u};
    const u32 own = BLOCK_THREADS[kernel];
    if (own != 0u && (THREADS == 1 || own > EMU_MAX_BLOCK_THREADS || CLUSTER[kernel] > 1u)) {
        fail(2, "a kernel's own block size needs fibers (THREADS > 1), at most "
                "EMU_MAX_BLOCK_THREADS threads and no cluster");
    }
    u32 threads = PER_THREAD[kernel] ? (u32)per_block : own != 0u ? own : (u32)THREADS;
    blockDim = EmuDim3{threads, 1u, 1u};
    // Per block: one call per thread in turn (per-thread kernels, or THREADS=1), or the fibers.
    const bool as_fibers = !PER_THREAD[kernel] && THREADS > 1;
    const u32 calls = as_fibers ? 0u : PER_THREAD[kernel] ? threads : 1u;
#if THREADS > 1
    fibers::kernel = KERNELS[kernel];
    fibers::bt = threads;
    fibers::pc = pc;
    fibers::bf = bf;
    fibers::dv = dv;
    fibers::name = NAMES[kernel];
    fibers::command = command;
#endif
    const u32 cluster = CLUSTER[kernel];
    if (cluster > 1u) {
        // A cluster's blocks run side by side as fibers, each with its own shared memory.
        if (!as_fibers || cluster > EMU_MAX_CLUSTER || y != 1u || x % cluster != 0u) {
            fail(2, "a cluster launch needs fibers (THREADS > 1) and a 1-D grid of whole clusters");
        }
#if THREADS > 1
        in_cluster = true;
        cluster_blocks = cluster;
        launch_bytes = shared_bytes;
        for (u64 bx = 0; bx < x; bx += cluster) {
            for (u32 r = 0; r < cluster; r++) {
                for (size_t i = 0; i < shared + SMEM_GUARD; i++) {
                    cluster_smem[r][i] = i < shared ? mk(NAN, NAN) : mk(canary, canary);
                }
            }
            fibers::blocks = cluster;
            fibers::block = (u32)(bx / cluster); // the scan-order parity (shown as the block)
            fibers::first = EmuDim3{(unsigned)bx, 0u, 0u};
            fibers::run_blocks();
            for (u32 r = 0; r < cluster; r++) {
                for (size_t i = shared; i < shared + SMEM_GUARD; i++) {
                    if (float_bits(cluster_smem[r][i].x) != CANARY ||
                        float_bits(cluster_smem[r][i].y) != CANARY) {
                        std::fprintf(stderr,
                                     "harness: command %zu (%s) wrote shared point %zu of block "
                                     "%u, beyond the %u bytes it launches with\n",
                                     command, NAMES[kernel], i, (unsigned)(bx + r), shared_bytes);
                        std::exit(3);
                    }
                }
            }
        }
        fibers::blocks = 1;
        in_cluster = false;
        cluster_blocks = 1;
#endif
        threadIdx = EmuDim3{0u, 0u, 0u};
        return;
    }
    for (u64 by = 0; by < y; by++) {
        for (u64 bx = 0; bx < x; bx++) {
            blockIdx = EmuDim3{(unsigned)bx, (unsigned)by, 0u};
            for (size_t i = 0; i < shared + SMEM_GUARD; i++) {
                smem[i] = i < shared ? mk(NAN, NAN) : mk(canary, canary);
            }
            for (u32 t = 0; t < calls; t++) {
                threadIdx = EmuDim3{t, 0u, 0u};
                KERNELS[kernel](pc, bf, dv);
            }
#if THREADS > 1
            if (as_fibers) {
                fibers::block = (u32)(bx + by * x);
                fibers::first = blockIdx;
                fibers::run_blocks();
            }
#endif
            if (emu_async_pending() != 0u) {
                std::fprintf(stderr,
                             "harness: command %zu (%s): block %u ended with %u cp.async copies "
                             "it never waited for\n",
                             command, NAMES[kernel], (unsigned)(bx + by * x), emu_async_pending());
                std::exit(3);
            }
            for (size_t i = shared; i < shared + SMEM_GUARD; i++) {
                if (float_bits(smem[i].x) != CANARY || float_bits(smem[i].y) != CANARY) {
                    std::fprintf(stderr,
                                 "harness: command %zu (%s) wrote shared point %zu, beyond the "
                                 "%u bytes it launches with\n",
                                 command, NAMES[kernel], i, shared_bytes);
                    std::exit(3);
                }
            }
        }
    }
    threadIdx = EmuDim3{0u, 0u, 0u};
}

void check_guards(std::vector<Buffer>& buffers, size_t command) {
    for (size_t b = 0; b < buffers.size(); b++) {
        Buffer& buf = buffers[b];
        for (size_t i = 0; i < GUARD; i++) {
            if (buf.store[i] != CANARY || buf.store[GUARD + buf.words + i] != CANARY) {
                std::fprintf(stderr, "harness: command %zu wrote outside buffer %zu\n", command, b);
                std::exit(3);
            }
        }
    }
}

} // namespace

#if THREADS > 1
void emu_syncthreads() { fibers::block_barrier(); }
void emu_syncwarp() { fibers::warp_barrier(); }
void emu_cluster_sync() { fibers::cluster_barrier(); }
#else
void emu_cluster_sync() { fail(4, "a cluster barrier without fibers (THREADS=1)"); }
#endif

void* emu_block_smem() { return in_cluster ? (void*)cluster_smem[emu_rank] : (void*)smem; }

// `mapa`: the same offset in block `rank`'s shared memory; the address must lie in the calling
// block's dynamic shared memory of this launch.
void* emu_map_shared(const void* p, unsigned rank) {
    if (!in_cluster || rank >= cluster_blocks) {
        fail(4, "mapa outside a cluster launch, or to a rank beyond the cluster");
    }
    const char* own = (const char*)cluster_smem[emu_rank];
    if ((const char*)p < own || (size_t)((const char*)p - own) >= launch_bytes) {
        fail(3, "mapa of an address outside the block's dynamic shared memory");
    }
    return (char*)cluster_smem[rank] + ((const char*)p - own);
}

int main(int argc, char** argv) {
    if (argc != 3) {
        fail(2, "usage: harness <program> <outputs>");
    }
    Reader in;
    {
        FILE* f = std::fopen(argv[1], "rb");
        if (!f) {
            fail(2, "cannot open the program");
        }
        uint32_t chunk[4096];
        size_t got;
        while ((got = std::fread(chunk, 4, 4096, f)) > 0) {
            in.words.insert(in.words.end(), chunk, chunk + got);
        }
        std::fclose(f);
    }
    if (in.next() != MAGIC || in.next() != 2u) {
        fail(2, "not a version 2 program");
    }
    if (in.next() != (uint32_t)SHARED_POINTS) {
        fail(2, "the program is for another SHARED_POINTS");
    }
    std::vector<Buffer> buffers(in.next());
    for (Buffer& buf : buffers) {
        buf.words = in.next();
        buf.store.assign(buf.words + 2 * GUARD, CANARY);
        uint32_t init = in.next();
        for (size_t i = 0; i < buf.words; i++) {
            buf.data()[i] = init == 0u ? 0u : init == 1u ? 0x7fc00000u : in.next();
        }
        if (init > 2u) {
            fail(2, "unknown buffer init");
        }
    }
    auto buffer = [&](uint32_t index) -> Buffer& {
        if (index >= buffers.size()) {
            fail(2, "buffer index out of range");
        }
        return buffers[index];
    };
    auto span = [&](uint32_t index, uint32_t offset, uint32_t words) -> uint32_t* {
        Buffer& buf = buffer(index);
        if ((u64)offset + words > buf.words) {
            fail(2, "copy or fill outside a buffer");
        }
        return buf.data() + offset;
    };
    uint32_t commands = in.next();
    for (uint32_t c = 0; c < commands; c++) {
        uint32_t op = in.next();
        if (op == 1u || op == 5u) {
            uint32_t blocks = op == 5u ? in.next() : 0u;
            uint32_t kernel = in.next();
            if (kernel >= KERNEL_COUNT) {
                fail(2, "unknown kernel");
            }
            uint32_t shared_bytes = in.next();
            uint32_t words[20];
            for (uint32_t& w : words) {
                w = in.next();
            }
            Params pc;
            std::memcpy(&pc, words, sizeof pc);
            void* ptr[13];
            for (void*& p : ptr) {
                uint32_t index = in.next();
                p = index == NONE ? nullptr : (void*)buffer(index).data();
            }
            Buffers bf{};
            bf.u = (const elem_t*)ptr[0];
            bf.pre = (const elem_t*)ptr[1];
            bf.post = (const elem_t*)ptr[2];
            bf.y = (elem_t*)ptr[3];
            bf.spectrum = (const cpx*)ptr[4];
            bf.twiddles = (const cpx*)ptr[5];
            bf.tmp = (cpx*)ptr[6];
            bf.other = (const cpx*)ptr[7];
            bf.taps = (float*)ptr[8];
            bf.y2 = (elem_t*)ptr[9];
            bf.taps_sum = (float*)ptr[10];
            bf.u2 = (const elem_t*)ptr[11];
            bf.y3 = (elem_t*)ptr[12];
            if (std::getenv("FFTCONV_EMULATION_TRACE")) {
                std::fprintf(stderr,
                             "harness: %s total_lines %u lines_log2 %u flags %#x shared %u\n",
                             NAMES[kernel], pc.total_lines, pc.lines_log2, pc.flags,
                             shared_bytes);
            }
            launch(kernel, shared_bytes, pc, bf, c, blocks);
        } else if (op == 2u) {
            uint32_t dst = in.next(), dst_off = in.next(), src = in.next(), src_off = in.next();
            uint32_t words = in.next();
            uint32_t* to = span(dst, dst_off, words);
            const uint32_t* from = span(src, src_off, words);
            std::memmove(to, from, (size_t)words * 4);
        } else if (op == 4u) {
            uint32_t dst = in.next(), dst_off = in.next(), src = in.next(), src_off = in.next();
            uint32_t bytes = in.next();
            if (((dst_off | src_off | bytes) & 1u) != 0u) {
                fail(2, "a 16-bit copy of odd bytes");
            }
            // The words spanned, checked against the buffers; then the bytes alone.
            uint8_t* to = (uint8_t*)span(dst, dst_off / 4u, (dst_off % 4u + bytes + 3u) / 4u);
            const uint8_t* from =
                (const uint8_t*)span(src, src_off / 4u, (src_off % 4u + bytes + 3u) / 4u);
            std::memmove(to + dst_off % 4u, from + src_off % 4u, bytes);
        } else if (op == 6u) {
            uint32_t index = in.next(), offset = in.next(), count = in.next(), value = in.next();
            uint16_t* to = (uint16_t*)span(index, offset / 2u, (offset % 2u + count + 1u) / 2u);
            for (uint32_t i = 0; i < count; i++) {
                to[offset % 2u + i] = (uint16_t)value;
            }
        } else if (op == 3u) {
            uint32_t index = in.next(), offset = in.next(), words = in.next(), value = in.next();
            uint32_t* to = span(index, offset, words);
            for (uint32_t i = 0; i < words; i++) {
                to[i] = value;
            }
        } else {
            fail(2, "unknown command");
        }
        check_guards(buffers, c);
    }
    std::vector<Buffer*> outputs(in.next());
    for (Buffer*& o : outputs) {
        o = &buffer(in.next());
    }
    if (in.at != in.words.size()) {
        fail(2, "trailing words after the program");
    }
    FILE* out = std::fopen(argv[2], "wb");
    if (!out) {
        fail(2, "cannot create the outputs");
    }
    for (Buffer* o : outputs) {
        Buffer& buf = *o;
        if (std::fwrite(buf.data(), 4, buf.words, out) != buf.words) {
            fail(2, "cannot write the outputs");
        }
    }
    if (std::fclose(out) != 0) {
        fail(2, "cannot write the outputs");
    }
    return 0;
}
