// harness.cpp: runs the kernels of `kernels/fftconv.cu` on the host, block after block, for
// `tests/emulation.rs`. Build (the test does it):
//
//   c++ -std=c++17 -O1 -Wno-unknown-pragmas -include shim.h -DIO_F32 -DPAD=1
//       -DSHARED_POINTS=<p> -DTHREADS=1 -DSHARED_LIMIT_BYTES=<opt-in shared memory per block>
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
//   output count, buffer indices
//
// Kernel ids: 0 fused, 1 columns forward, 2 columns inverse, 3 gather, 4 taps sum, 5 fused
// backward. The grid is the backend's (`launch_function` in src/convolution.rs):
// ceil(total_lines / 2^lines_log2) blocks. The block-wide kernels (0-2, 5) run one thread per
// block (THREADS=1); gather and taps sum (one thread per element, no barriers) run their
// 2^lines_log2 threads one after another.
//
// Checks beyond the results: every buffer has guard words on both sides, checked after each
// command (a kernel writing outside its buffers fails the run); shared memory is NaN before each
// block (a read of anything the block did not write shows up as NaN), and guard points after the
// launch's dynamic shared bytes are checked after each block. Exit status: 0 ok, 2 bad program
// or I/O, 3 guard damaged.

#include <cinttypes>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#ifndef FFTCONV_KERNEL
#error "define FFTCONV_KERNEL as the quoted path of kernels/fftconv.cu"
#endif
#include FFTCONV_KERNEL

#if !defined(SHARED_POINTS) || !defined(PAD) || !defined(THREADS) || !defined(SHARED_LIMIT_BYTES)
#error "define SHARED_POINTS, PAD and THREADS as for the device build, and SHARED_LIMIT_BYTES"
#endif
static_assert(THREADS == 1, "the host emulation runs one thread per block (THREADS=1)");
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
cpx smem[SMEM_POINTS + SMEM_GUARD];

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
                          fftconv_gather, fftconv_taps_sum,        fftconv_backward_fused};
const char* const NAMES[] = {"fused",  "columns_forward", "columns_inverse",
                             "gather", "taps_sum",        "backward_fused"};
const bool PER_THREAD[] = {false, false, false, true, true, false};
const size_t KERNEL_COUNT = sizeof(KERNELS) / sizeof(KERNELS[0]);

void launch(u32 kernel, u32 shared_bytes, const Params& pc, const Buffers& bf, size_t command) {
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
    u64 groups = ((u64)pc.total_lines + per_block - 1u) / per_block;
    if (groups == 0u) {
        groups = 1u;
    }
    u64 x = groups < (u64)INT_MAX ? groups : (u64)INT_MAX;
    u64 y = (groups + x - 1u) / x;
    gridDim = EmuDim3{(unsigned)x, (unsigned)y, 1u};
    u32 threads = PER_THREAD[kernel] ? (u32)per_block : 1u;
    blockDim = EmuDim3{threads, 1u, 1u};
    for (u64 by = 0; by < y; by++) {
        for (u64 bx = 0; bx < x; bx++) {
            blockIdx = EmuDim3{(unsigned)bx, (unsigned)by, 0u};
            for (size_t i = 0; i < shared + SMEM_GUARD; i++) {
                smem[i] = i < shared ? mk(NAN, NAN) : mk(canary, canary);
            }
            for (u32 t = 0; t < threads; t++) {
                threadIdx = EmuDim3{t, 0u, 0u};
                KERNELS[kernel](pc, bf, dv);
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
        if (op == 1u) {
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
            launch(kernel, shared_bytes, pc, bf, c);
        } else if (op == 2u) {
            uint32_t dst = in.next(), dst_off = in.next(), src = in.next(), src_off = in.next();
            uint32_t words = in.next();
            uint32_t* to = span(dst, dst_off, words);
            const uint32_t* from = span(src, src_off, words);
            std::memmove(to, from, (size_t)words * 4);
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
