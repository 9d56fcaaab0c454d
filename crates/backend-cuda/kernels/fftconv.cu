// fftconv.cu: the CUDA FFT-convolution passes, compiled at run time by NVRTC (one source,
// variants by defines; no headers, so it builds with NVRTC alone).
//
// Defines (set by the host):
//   IO_F32 | IO_F16 | IO_BF16  element type of u, gates and y (f32 compute throughout)
//   SHARED_POINTS              complex points of (dynamic) shared memory per block
//   PAD                        1: one padding point after every 16 in shared memory
//   THREADS                    threads per block
//   MAX_RADIX_LOG2, SEGMENT_TABLE, TENSOR_CORES, VECTOR_IO  experiments (default 3, 0, 0, 0);
//   MIDDLE_ROUND (default 1)
//   MONARCH_TC                 1: also compile the fftconv_monarch* kernels (the Monarch
//                              tensor-core pass, sm_80 and newer; see its section)
//   MIN_BLOCKS                 blocks per SM to leave registers for (default 1)
//
// Kernels (extern "C"):
//   fftconv_fused            a whole on-chip block of the plan: load, forward FFT, pointwise
//                            product with the filter spectrum, inverse FFT, store; flags let it stop
//                            after the forward FFT or start at the product, and multiply by conj(K)
//                            or by a second spectrum (backward)
//   fftconv_columns_forward  one global-memory stage of the plan, forward (column DFTs + twiddle)
//   fftconv_columns_inverse  the same stage inverted (conjugate twiddle + inverse column DFTs)
//   fftconv_gather           backward: sums each input's gradient over the segments that read it
//   fftconv_taps_sum         backward: sums the filter-gradient taps over each channel's pairs
//   fftconv_backward_fused   the whole backward of a pair in one block (one-pass plans, one
//                            overlap-save block per row): taps, gate gradients and du
//
// Work unit: a *pair* of real overlap-save segments of one channel packed as one complex
// sequence a + i*b (the filter is real, so Re and Im of the result are the two outputs).
// A pass works on *lines*: length-M complex sequences. A block holds 2^lines_log2 lines in shared
// memory and runs radix-2 FFTs on them, three stages per barrier in registers (radix 2^3).
// Forward transforms are decimation in frequency (natural order in, bit-reversed out); inverse
// transforms are decimation in time (bit-reversed in, natural out), so no reordering pass runs.
// Twiddles come from per-size tables (W_M^e for e < M at offset M, for every power of two M <= N:
// 2N entries) generated in f64 on the host and rounded once to f32, so a length-M FFT reads only
// its own M-entry table; index products are reduced mod M in integers. Read-only data (twiddles,
// filter spectrum) is loaded through the non-coherent read-only cache.
//
// This is the same algorithm, pass for pass and flag for flag, as the Vulkan backend's
// shaders/fftconv.comp, so both backends run the schedules monarch-core's plans describe.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

struct alignas(8) cpx {
    float x;
    float y;
};

__device__ __forceinline__ cpx mk(float x, float y) {
    cpx c;
    c.x = x;
    c.y = y;
    return c;
}
__device__ __forceinline__ cpx cadd(cpx a, cpx b) { return mk(a.x + b.x, a.y + b.y); }
__device__ __forceinline__ cpx csub(cpx a, cpx b) { return mk(a.x - b.x, a.y - b.y); }
__device__ __forceinline__ cpx cmul(cpx a, cpx b) {
    return mk(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}
__device__ __forceinline__ cpx conj_c(cpx a) { return mk(a.x, -a.y); }
__device__ __forceinline__ cpx csq(cpx a) { return mk(a.x * a.x - a.y * a.y, 2.0f * a.x * a.y); }

#if defined(FFTCONV_HOST_EMULATION)
// Host builds of this file (a C++ compiler running one thread per block, for checking the
// algorithm without a GPU) replace the few PTX instructions by portable code.
__device__ __forceinline__ u32 float_bits(float f) {
    u32 u;
    __builtin_memcpy(&u, &f, 4);
    return u;
}
__device__ __forceinline__ float bits_float(u32 u) {
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}
__device__ __forceinline__ u32 bit_reverse(u32 x, u32 bits) {
    u32 r = 0;
    for (u32 i = 0; i < bits; i++) {
        r |= ((x >> i) & 1u) << (bits - 1u - i);
    }
    return r;
}
#else
__device__ __forceinline__ u32 float_bits(float f) {
    u32 u;
    asm("mov.b32 %0, %1;" : "=r"(u) : "f"(f));
    return u;
}
__device__ __forceinline__ float bits_float(u32 u) {
    float f;
    asm("mov.b32 %0, %1;" : "=f"(f) : "r"(u));
    return f;
}
__device__ __forceinline__ u32 bit_reverse(u32 x, u32 bits) {
    u32 r;
    asm("brev.b32 %0, %1;" : "=r"(r) : "r"(x));
    return bits == 0u ? 0u : r >> (32u - bits);
}
#endif

// ---- element I/O ------------------------------------------------------------------------------

#if defined(IO_F16) || defined(IO_BF16)
typedef u16 elem_t;
#else
typedef float elem_t;
#endif

__device__ __forceinline__ float to_float(elem_t e) {
#if defined(IO_F16) && defined(FFTCONV_HOST_EMULATION)
    _Float16 h; // the host compiler's IEEE half: conversions exact and to nearest even, as PTX's
    __builtin_memcpy(&h, &e, 2);
    return (float)h;
#elif defined(IO_F16)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(e));
    return f;
#elif defined(IO_BF16)
    return bits_float(((u32)e) << 16);
#else
    return e;
#endif
}

__device__ __forceinline__ elem_t from_float(float v) {
#if defined(IO_F16) && defined(FFTCONV_HOST_EMULATION)
    _Float16 f = (_Float16)v;
    u16 h;
    __builtin_memcpy(&h, &f, 2);
    return h;
#elif defined(IO_F16)
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
#elif defined(IO_BF16)
    // Rounded to nearest even; NaN stays NaN (quiet).
    u32 bits = float_bits(v);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return (u16)((bits >> 16) | 0x40u);
    }
    return (u16)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
#else
    return v;
#endif
}

// Magnitude bits of v's finite value (inf and NaN: 0), and the larger of two: maxima of these
// are exact and order-free (all threads agree), and a NaN or inf changes no scale taken from them.
__device__ __forceinline__ u32 finite_bits(float v) {
    u32 a = float_bits(v) & 0x7fffffffu;
    return a < 0x7f800000u ? a : 0u;
}
__device__ __forceinline__ u32 max_u(u32 a, u32 b) { return a > b ? a : b; }
__device__ __forceinline__ u32 min_u(u32 a, u32 b) { return a < b ? a : b; }
// The larger finite magnitude of a complex value's components (bits).
__device__ __forceinline__ u32 finite_magnitude(cpx v) {
    return max_u(finite_bits(v.x), finite_bits(v.y));
}
// Whether v is finite.
__device__ __forceinline__ bool finite_f(float v) {
    return (float_bits(v) & 0x7f800000u) != 0x7f800000u;
}
// Whether both components are finite.
__device__ __forceinline__ bool finite_c(cpx v) {
    return (float_bits(v.x) & 0x7f800000u) != 0x7f800000u &&
           (float_bits(v.y) & 0x7f800000u) != 0x7f800000u;
}

// ---- parameters -------------------------------------------------------------------------------

// Same order and meaning as the host's `PassParams` (and the Vulkan shader's push constants).
struct Params {
    u32 log2n;           // N = 2^log2n
    u32 flags;           // FLAG_*
    u32 line_log2;       // length of this pass's lines (N_s, or M_j for the fused block)
    u32 stride_log2;     // columns: log2 M_{s+1} (stride between a line's elements); fused: 0
    u32 lines_log2;      // lines per block
    u32 total_lines;     // lines in this launch
    u32 stage_bits;      // fused: log2 of each global stage's factor, 5 bits per stage
    u32 stage_count;     // fused: number of global stages before the fused block
    u32 seq_len;         // L
    u32 channels;        // channels in this chunk
    u32 channel_offset;  // first channel of this chunk (into the filter spectrum)
    u32 blocks;          // overlap-save blocks per row
    u32 block_len;       // outputs per block Lb
    u32 history;         // inputs before a block that it reads
    u32 kept_bins;       // stored (kept) half-spectrum bins per channel
    u32 segments;        // segments per channel in this chunk (rows of the chunk * blocks)
    u32 pairs;           // pairs per channel: ceil(segments / 2)
    u32 batch_stride;    // channels between consecutive batch rows in the buffers
    u32 element_offset;  // element of the buffers where this chunk's first row starts
    u32 taps_len;        // backward: filter taps K stored per pair
};

// Device pointers of one launch (same order as the host's `KernelBuffers`).
struct Buffers {
    const elem_t* u;     // input
    const elem_t* pre;   // pre-gate
    const elem_t* post;  // post-gate
    elem_t* y;           // output
    const cpx* spectrum; // Hermitian half spectrum per channel, kept bins, scaled by 1/N
    const cpx* twiddles; // W_M^e at offset M + e, for every power of two M <= N
    cpx* tmp;            // intermediate spectra: N complex values per pair
    const cpx* other;    // backward: the second spectrum of a correlation
    float* taps;         // backward: filter-gradient taps, taps_len per pair
    elem_t* y2;          // backward: the gather pass's second output (pre-gate gradient)
    float* taps_sum;     // backward: the filter gradient [H, taps_len], accumulated per chunk
    const elem_t* u2;    // fused backward: dy
    elem_t* y3;          // fused backward: the post-gate gradient
};

// Division by a run-time constant d as a multiply-high and shifts (Granlund-Montgomery): exact
// for every 32-bit n. Computed by the host (`Divisor::new`); d = 1 is m = s1 = s2 = 0.
struct Divisor {
    u32 m;
    u32 s1;
    u32 s2;
    u32 d;
};

// Divisors of the parameters the kernels divide by (host: `KernelDivisors`).
struct Divisors {
    Divisor blocks;
    Divisor pairs;
    Divisor seq_len;
    Divisor channels;
    Divisor block_len;
    Divisor taps_len;
};

__device__ __forceinline__ u32 udiv(u32 n, const Divisor& v) {
#if defined(FFTCONV_HOST_EMULATION)
    u32 t = (u32)(((u64)n * v.m) >> 32);
#else
    u32 t;
    asm("mul.hi.u32 %0, %1, %2;" : "=r"(t) : "r"(n), "r"(v.m));
#endif
    return (t + ((n - t) >> v.s1)) >> v.s2;
}
__device__ __forceinline__ u32 umod(u32 n, const Divisor& v) { return n - udiv(n, v) * v.d; }

#define FLAG_SRC_INPUT 1u
#define FLAG_DST_OUTPUT 2u
#define FLAG_GATED 4u
#define FLAG_WRAPS 8u
#define FLAG_BODY_ONLY 16u
#define FLAG_NO_INVERSE 32u
#define FLAG_NO_FORWARD 64u
#define FLAG_CONJ_FILTER 128u
#define FLAG_CORRELATE 256u
#define FLAG_DST_TAPS 512u
#define FLAG_F32_ROUNDS 1024u // every FFT round in f32: no tensor-core rounds (the backward)
#define FLAG_TAPS_MIRRORED 2048u // with FLAG_DST_TAPS: tap t from position N - t (mod N)

// 16-byte aligned: the Monarch kernels move 16-byte Quads through it.
alignas(16) extern __shared__ cpx smem[];
// Shared-memory slot of point i.
#define SIDX(i) ((i) + (PAD ? ((i) >> 4u) : 0u))

// A read-only complex value through the non-coherent cache.
__device__ __forceinline__ cpx load_ro(const cpx* p) {
#if defined(FFTCONV_HOST_EMULATION)
    return *p;
#else
    cpx c;
    asm("ld.global.nc.v2.f32 {%0, %1}, [%2];" : "=f"(c.x), "=f"(c.y) : "l"(p));
    return c;
#endif
}

// W_{2^m_log2}^e for any e (reduced mod 2^m_log2 here). One gather per call: where a thread
// needs W^(n k) for a run of k, the Monarch kernels take the powers of one gathered W^n
// instead (session 16's ncu run of the 4K forward: the per-element gathers,
// strided across a warp's lanes, were 80% of its L1 tag requests with the L1 79% busy). The
// f32 products drift by about one ulp per step, far below the f16 words they scale.
__device__ __forceinline__ cpx root(const Params& pc, const Buffers& b, u32 e, u32 m_log2) {
    (void)pc;
    u32 m = 1u << m_log2;
    return load_ro(b.twiddles + m + (e & (m - 1u)));
}

// ---- overlap-save segments --------------------------------------------------------------------

// Segment `seg` of channel `h` (chunk-local): its row and first output.
__device__ __forceinline__ bool segment_row(const Params& pc, const Divisors& dv, u32 seg, u32 h,
                                            u32& row_base, u32& start, u32& outputs) {
    if (seg >= pc.segments) {
        return false;
    }
    u32 b = udiv(seg, dv.blocks);
    u32 j = seg - b * pc.blocks;
    start = j * pc.block_len;
    u32 rest = pc.seq_len - start;
    outputs = pc.block_len < rest ? pc.block_len : rest;
    row_base = pc.element_offset + (b * pc.batch_stride + h) * pc.seq_len;
    return true;
}

// Pre-gated input at segment position `pos`, or 0 where the segment is zero: `src` times (gated)
// `gate`; `flags` may differ from the pass's (the fused backward reads dy * post body-only).
// Where one segment lies: `valid` 0 for a segment past the chunk's last (all zeros).
struct SegmentRow {
    u32 row_base;
    u32 start;
    u32 outputs;
    u32 valid;
};

__device__ __forceinline__ SegmentRow locate_segment(const Params& pc, const Divisors& dv, u32 seg,
                                                     u32 h) {
    SegmentRow r;
    r.valid = segment_row(pc, dv, seg, h, r.row_base, r.start, r.outputs) ? 1u : 0u;
    return r;
}

// segment_input for a located segment.
__device__ float segment_input_at(const Params& pc, const Divisors& dv, const elem_t* src,
                                  const elem_t* gate, u32 flags, SegmentRow r, u32 pos) {
    if (r.valid == 0u) {
        return 0.0f;
    }
    u32 row_base = r.row_base, start = r.start, outputs = r.outputs;
    u32 n = 1u << pc.log2n;
    u32 t;
    if (pos < outputs) {
        t = start + pos;
    } else if (pos >= n - pc.history && (flags & FLAG_BODY_ONLY) == 0u) {
        u32 back = n - pos;
        if (back <= start) {
            t = start - back;
        } else if ((flags & FLAG_WRAPS) != 0u) {
            t = umod(start + pc.seq_len - umod(back, dv.seq_len), dv.seq_len);
        } else {
            return 0.0f;
        }
    } else {
        return 0.0f;
    }
    u32 idx = row_base + t;
    float v = to_float(src[idx]);
    if ((flags & FLAG_GATED) != 0u) {
        v *= to_float(gate[idx]);
    }
    return v;
}

__device__ __forceinline__ float segment_input(const Params& pc, const Divisors& dv,
                                               const elem_t* src, const elem_t* gate, u32 flags,
                                               u32 seg, u32 h, u32 pos) {
    return segment_input_at(pc, dv, src, gate, flags, locate_segment(pc, dv, seg, h), pos);
}

// The pass's input at segment position `pos`: u (times the pre-gate when gated).
__device__ __forceinline__ float segment_value(const Params& pc, const Buffers& bf,
                                               const Divisors& dv, u32 seg, u32 h, u32 pos) {
    return segment_input(pc, dv, bf.u, bf.pre, pc.flags, seg, h, pos);
}

// Writes output `pos` of segment `seg` to `dst` (times `gate` when gated) when it is one of the
// segment's outputs.
// store_segment for a located segment.
__device__ __forceinline__ void store_segment_at(const Params& pc, elem_t* dst, const elem_t* gate,
                                                 SegmentRow r, u32 pos, float v) {
    if (r.valid == 0u || pos >= r.outputs) {
        return;
    }
    u32 idx = r.row_base + r.start + pos;
    if ((pc.flags & FLAG_GATED) != 0u) {
        v *= to_float(gate[idx]);
    }
    dst[idx] = from_float(v);
}

__device__ void store_segment(const Params& pc, const Divisors& dv, elem_t* dst,
                              const elem_t* gate, u32 seg, u32 h, u32 pos, float v) {
    u32 row_base, start, outputs;
    if (!segment_row(pc, dv, seg, h, row_base, start, outputs) || pos >= outputs) {
        return;
    }
    u32 idx = row_base + start + pos;
    if ((pc.flags & FLAG_GATED) != 0u) {
        v *= to_float(gate[idx]);
    }
    dst[idx] = from_float(v);
}

// Writes output `pos` of segment `seg` to y (post-gated).
__device__ __forceinline__ void store_output(const Params& pc, const Buffers& bf,
                                             const Divisors& dv, u32 seg, u32 h, u32 pos,
                                             float v) {
    store_segment(pc, dv, bf.y, bf.post, seg, h, pos, v);
}

// Whether full-spectrum frequency f is kept (frequency sparsity keeps the lowest bins).
__device__ __forceinline__ bool bin_kept(const Params& pc, u32 f) {
    u32 n = 1u << pc.log2n;
    return (f <= (n >> 1) ? f : n - f) < pc.kept_bins;
}

// Filter spectrum at full-spectrum frequency f of chunk channel h (0 where dropped).
__device__ __forceinline__ cpx filter_bin(const Params& pc, const Buffers& bf, u32 h, u32 f) {
    u32 n = 1u << pc.log2n;
    u32 mirrored = f <= (n >> 1) ? f : n - f;
    if (mirrored >= pc.kept_bins) {
        return mk(0.0f, 0.0f);
    }
    cpx k = load_ro(bf.spectrum + (u64)(pc.channel_offset + h) * pc.kept_bins + mirrored);
    return f <= (n >> 1) ? k : conj_c(k);
}

// Stores position `pos` of a pair's final result: taps (backward), outputs, or tmp.
__device__ void store_result(const Params& pc, const Buffers& bf, const Divisors& dv, u32 pair,
                             u32 pos, cpx v) {
    u32 n = 1u << pc.log2n;
    if ((pc.flags & FLAG_DST_TAPS) != 0u) {
        // FLAG_TAPS_MIRRORED: the pass holds IFFT(V conj D), whose position N - t is tap t.
        u32 t = (pc.flags & FLAG_TAPS_MIRRORED) != 0u ? (n - pos) & (n - 1u) : pos;
        if (t < pc.taps_len) {
            bf.taps[(u64)pair * pc.taps_len + t] = v.x;
        }
    } else if ((pc.flags & FLAG_DST_OUTPUT) != 0u) {
        u32 h = udiv(pair, dv.pairs);
        u32 q = pair - h * pc.pairs;
        store_output(pc, bf, dv, 2u * q, h, pos, v.x);
        store_output(pc, bf, dv, 2u * q + 1u, h, pos, v.y);
    } else {
        bf.tmp[(u64)pair * n + pos] = v;
    }
}

// ---- vectorized row I/O -------------------------------------------------------------------------
//
// The fused pass of a one-pass plan whose rows are one overlap-save segment each (blocks == 1:
// every dense problem up to N = 16K on CUDA) moves VEC consecutive elements (16 bytes) of each of a
// pair's two rows per thread: one vector load or store per row (and gate) and one segment lookup
// per VEC points, instead of VEC scalar accesses with their own segment arithmetic. A chunk that
// is not wholly among a row's outputs (the zero padding, circular history, a row's ragged end)
// takes the scalar path. Needs 16-byte aligned rows: L and the chunk's element offset multiples
// of VEC, and 16-byte aligned buffers (checked per launch, uniformly).
#define VEC (16u / (u32)sizeof(elem_t))
// 1: the fused pass uses it (an experiment, selected by the host with -DVECTOR_IO=1).
#ifndef VECTOR_IO
#define VECTOR_IO 0
#endif

union Vec16 {
    u32 w[4];
    elem_t e[16 / sizeof(elem_t)];
};

__device__ __forceinline__ Vec16 load_vec16(const elem_t* p) {
    Vec16 v;
#if defined(FFTCONV_HOST_EMULATION)
    if (((u64)p & 15u) != 0u) {
        __builtin_trap(); // ld.global.v4 faults on a GPU (misaligned address): so does the test
    }
    __builtin_memcpy(v.w, p, 16);
#else
    asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3])
                 : "l"(p));
#endif
    return v;
}

// Four words to 16-byte aligned global memory.
__device__ __forceinline__ void store_words16(void* p, const u32 w[4]) {
#if defined(FFTCONV_HOST_EMULATION)
    if (((u64)p & 15u) != 0u) {
        __builtin_trap(); // st.global.v4 faults on a GPU (misaligned address): so does the test
    }
    __builtin_memcpy(p, w, 16);
#else
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(w[0]), "r"(w[1]),
                 "r"(w[2]), "r"(w[3])
                 : "memory");
#endif
}

__device__ __forceinline__ void store_vec16(elem_t* p, const Vec16& v) { store_words16(p, v.w); }

__device__ __forceinline__ bool aligned16(const void* p) { return ((u64)p & 15u) == 0u; }

// Whether this launch's rows allow vector I/O for `data` (and `gate` when gated).
__device__ __forceinline__ bool vector_rows(const Params& pc, const void* data, const void* gate) {
    return pc.blocks == 1u && (pc.seq_len & (VEC - 1u)) == 0u &&
           (pc.element_offset & (VEC - 1u)) == 0u && aligned16(data) &&
           ((pc.flags & FLAG_GATED) == 0u || aligned16(gate));
}

// Whether segment_input_at is 0 at every position pos .. pos + VEC - 1 without reading: a
// segment past the chunk's last, or positions past the outputs that read no history (outside
// the history window, body-only loads, or a segment at the row's start that does not wrap: the
// causal zero padding). One test per chunk instead of VEC scalar lookups.
__device__ __forceinline__ bool segment_chunk_zero(const Params& pc, u32 flags, SegmentRow r,
                                                   u32 pos) {
    if (r.valid == 0u) {
        return true;
    }
    if (pos < r.outputs) {
        return false;
    }
    u32 n = 1u << pc.log2n;
    return pos + VEC <= n - pc.history || (flags & FLAG_BODY_ONLY) != 0u ||
           (r.start == 0u && (flags & FLAG_WRAPS) == 0u);
}

// VEC results as elements, converted in pairs where the device has a paired conversion (f16 and
// bf16 from sm_80: cvt.rn.{f16,bf16}x2.f32, one instruction per two elements instead of one or,
// for bf16, about six per element).
__device__ __forceinline__ Vec16 vec_from_float(const float v[VEC]) {
    Vec16 o;
#if !defined(FFTCONV_HOST_EMULATION) && (defined(IO_F16) || defined(IO_BF16)) &&                \
    defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#pragma unroll
    for (u32 k = 0u; k < VEC / 2u; k++) {
#if defined(IO_F16)
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(o.w[k]) : "f"(v[2u * k + 1u]), "f"(v[2u * k]));
#else
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(o.w[k]) : "f"(v[2u * k + 1u]), "f"(v[2u * k]));
#endif
    }
#else
#pragma unroll
    for (u32 k = 0u; k < VEC; k++) {
        o.e[k] = from_float(v[k]);
    }
#endif
    return o;
}

// segment_input_at (with `flags`) for positions pos .. pos + VEC - 1 (pos a multiple of VEC).
__device__ __forceinline__ void segment_input_vec(const Params& pc, const Divisors& dv,
                                                  const elem_t* src, const elem_t* gate,
                                                  u32 flags, SegmentRow r, u32 pos,
                                                  float v[VEC]) {
    if (r.valid != 0u && pos + VEC <= r.outputs) {
        u32 idx = r.row_base + r.start + pos;
        Vec16 a = load_vec16(src + idx);
        if ((flags & FLAG_GATED) != 0u) {
            Vec16 g = load_vec16(gate + idx);
#pragma unroll
            for (u32 k = 0u; k < VEC; k++) {
                v[k] = to_float(a.e[k]) * to_float(g.e[k]);
            }
        } else {
#pragma unroll
            for (u32 k = 0u; k < VEC; k++) {
                v[k] = to_float(a.e[k]);
            }
        }
    } else if (segment_chunk_zero(pc, flags, r, pos)) {
#pragma unroll
        for (u32 k = 0u; k < VEC; k++) {
            v[k] = 0.0f;
        }
    } else {
#pragma unroll
        for (u32 k = 0u; k < VEC; k++) {
            v[k] = segment_input_at(pc, dv, src, gate, flags, r, pos + k);
        }
    }
}

// store_segment_at for positions pos .. pos + VEC - 1 (pos a multiple of VEC).
__device__ __forceinline__ void store_segment_vec(const Params& pc, elem_t* dst, const elem_t* gate,
                                                  SegmentRow r, u32 pos, const float v[VEC]) {
    if (r.valid != 0u && pos + VEC <= r.outputs) {
        u32 idx = r.row_base + r.start + pos;
        Vec16 o;
        if ((pc.flags & FLAG_GATED) != 0u) {
            Vec16 g = load_vec16(gate + idx);
            float gv[VEC];
#pragma unroll
            for (u32 k = 0u; k < VEC; k++) {
                gv[k] = v[k] * to_float(g.e[k]);
            }
            o = vec_from_float(gv);
        } else {
            o = vec_from_float(v);
        }
        store_vec16(dst + idx, o);
    } else if (r.valid != 0u && pos < r.outputs) {
#pragma unroll
        for (u32 k = 0u; k < VEC; k++) {
            store_segment_at(pc, dst, gate, r, pos + k, v[k]);
        }
    }
}

// ---- radix-2 FFTs on the block's lines in shared memory -----------------------------------------
//
// Up to three radix-2 stages run per barrier ("radix 2^3"): each thread takes the eight points of
// one group, applies the stages in registers and writes them back in place. The result is
// exactly the radix-2 one (same twiddles, same bit-reversed order). A group of `R` stages covers
// group size 2^gl: its points sit at offsets k * q + j (k < 2^R, q = 2^(gl - R), j < q).

// Index of the first point of group-round item `item` (line, group, j) for stages (gl, r).
__device__ __forceinline__ u32 group_base(u32 item, u32 m_log2, u32 gl, u32 r) {
    u32 per_line_log2 = m_log2 - r;
    u32 line = item >> per_line_log2;
    u32 k = item & ((1u << per_line_log2) - 1u);
    u32 q_log2 = gl - r;
    u32 j = k & ((1u << q_log2) - 1u);
    return (line << m_log2) + ((k >> q_log2) << gl) + j;
}

// x * W_8^eighths (eighths in 0..7): the constant twiddles of a radix-2^3 group, folded at
// compile time once the loops are unrolled.
__device__ __forceinline__ cpx mul_w8(cpx x, int eighths) {
    const float r = 0.70710678118654752f; // sqrt(1/2)
    switch (eighths & 7) {
    case 0:
        return x;
    case 1:
        return mk((x.x + x.y) * r, (x.y - x.x) * r);
    case 2:
        return mk(x.y, -x.x);
    case 3:
        return mk((x.y - x.x) * r, -(x.x + x.y) * r);
    case 4:
        return mk(-x.x, -x.y);
    case 5:
        return mk(-(x.x + x.y) * r, (x.x - x.y) * r);
    case 6:
        return mk(-x.y, x.x);
    default:
        return mk((x.x - x.y) * r, (x.x + x.y) * r);
    }
}

// x * W_16^sixteenths (0..15): odd powers as a product with a constant (folded at compile time
// once the loops are unrolled), even ones as W_8.
__device__ __forceinline__ cpx mul_w16(cpx x, int sixteenths) {
    int e = sixteenths & 15;
    if ((e & 1) == 0) {
        return mul_w8(x, e >> 1);
    }
    const float c = 0.92387953251128674f; // cos(pi / 8)
    const float r = 0.38268343236508977f; // sin(pi / 8)
    switch (e) {
    case 1:
        return cmul(x, mk(c, -r));
    case 3:
        return cmul(x, mk(r, -c));
    case 5:
        return cmul(x, mk(-r, -c));
    case 7:
        return cmul(x, mk(-c, -r));
    case 9:
        return cmul(x, mk(-c, r));
    case 11:
        return cmul(x, mk(-r, c));
    case 13:
        return cmul(x, mk(r, c));
    default:
        return cmul(x, mk(c, r));
    }
}

// Blocks per SM the compiler leaves registers for (`__launch_bounds__`'s second argument): 1 by
// default; the host may raise it (-DMIN_BLOCKS=<n>) to trade registers for occupancy.
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 1
#endif

// Largest number of radix-2 stages one round runs in registers: 3 (8 points per thread and
// round) by default; 4 (16 points) is an experiment (fewer barriers and shared-memory round trips,
// more registers), selected by the host with -DMAX_RADIX_LOG2=4.
#ifndef MAX_RADIX_LOG2
#define MAX_RADIX_LOG2 3
#endif

// 1: the fused pass locates each line's segments once per block (an experiment, selected by the
// host with -DSEGMENT_TABLE=1) for blocks of at most SEGMENT_TABLE_LINES lines.
#ifndef SEGMENT_TABLE
#define SEGMENT_TABLE 0
#endif
#define SEGMENT_TABLE_LINES 64u

// The R radix-2 DIF stages of one group in registers. Stage t's twiddle at offset k is w[t] times
// the constant W_{2^(R-t)}^(k mod 2^(R-1-t)) = W_16^(c 2^(4-R+t)); TWIDDLED = false: w[t] = 1
// (the group's j is 0), skipped rather than multiplied (a product with (1, 0) would turn an
// infinite value into NaN).
template <int R, bool TWIDDLED>
__device__ __forceinline__ void dif_stages(cpx x[1 << R], const cpx w[R]) {
#pragma unroll
    for (int t = 0; t < R; t++) {
        const int half_k = 1 << (R - 1 - t);
#pragma unroll
        for (int k = 0; k < (1 << R); k++) {
            if ((k & half_k) == 0) {
                cpx a = x[k];
                cpx b = x[k + half_k];
                x[k] = cadd(a, b);
                cpx d = mul_w16(csub(a, b), (k & (half_k - 1)) << (4 - R + t));
                x[k + half_k] = TWIDDLED ? cmul(d, w[t]) : d;
            }
        }
    }
}

// The R radix-2 DIT stages of one group in registers. Stage t's twiddle at offset k is w[t]
// times conj(W_{2^(t+1)}^c) = W_16^(-c 2^(3-t)), c = k mod 2^t; TWIDDLED as in dif_stages.
template <int R, bool TWIDDLED>
__device__ __forceinline__ void dit_stages(cpx x[1 << R], const cpx w[R]) {
#pragma unroll
    for (int t = 0; t < R; t++) {
        const int half_k = 1 << t;
#pragma unroll
        for (int k = 0; k < (1 << R); k++) {
            if ((k & half_k) == 0) {
                int c = k & (half_k - 1);
                cpx v = TWIDDLED ? cmul(x[k + half_k], w[t]) : x[k + half_k];
                cpx cc = mul_w16(v, 16 - (c << (3 - t)));
                cpx a = x[k];
                x[k] = cadd(a, cc);
                x[k + half_k] = csub(a, cc);
            }
        }
    }
}

// Forward (DIF) stages with spans 2^(gl-1) .. 2^(gl-R) on every group. The twiddle of stage t at
// group offset k is W_{2^(gl-t)}^(j + (k mod 2^(R-1-t)) q) = W_{2^(gl-t)}^j * W_{2^(R-t)}^(k mod
// 2^(R-1-t)): one table load per stage (w[t]) and a constant.
template <int R>
__device__ __forceinline__ void dif_round(cpx* s, const Params& pc, const Buffers& bf, u32 m_log2,
                                          u32 gl) {
    u32 items = 1u << (m_log2 + pc.lines_log2 - R);
    u32 q_log2 = gl - R;
    for (u32 it = threadIdx.x; it < items; it += THREADS) {
        u32 i0 = group_base(it, m_log2, gl, R);
        u32 j = i0 & ((1u << q_log2) - 1u);
        cpx x[1 << R];
        cpx w[R];
#pragma unroll
        for (int t = 0; t < R; t++) {
            w[t] = root(pc, bf, j, gl - (u32)t);
        }
#pragma unroll
        for (int k = 0; k < (1 << R); k++) {
            x[k] = s[SIDX(i0 + ((u32)k << q_log2))];
        }
        dif_stages<R, true>(x, w);
#pragma unroll
        for (int k = 0; k < (1 << R); k++) {
            s[SIDX(i0 + ((u32)k << q_log2))] = x[k];
        }
    }
    __syncthreads();
}

// Inverse (DIT) stages with spans 2^g .. 2^(g+R-1) on every group (group size 2^(g+R)). The
// twiddle of stage t at offset k is conj(W_{2^(g+t+1)}^(j + (k mod 2^t) 2^g)) = conj(W_{2^(g+t+1)}^j
// * W_{2^(t+1)}^(k mod 2^t)).
template <int R>
__device__ __forceinline__ void dit_round(cpx* s, const Params& pc, const Buffers& bf, u32 m_log2,
                                          u32 g) {
    u32 gl = g + R;
    u32 items = 1u << (m_log2 + pc.lines_log2 - R);
    for (u32 it = threadIdx.x; it < items; it += THREADS) {
        u32 i0 = group_base(it, m_log2, gl, R);
        u32 j = i0 & ((1u << g) - 1u);
        cpx x[1 << R];
        cpx w[R];
#pragma unroll
        for (int t = 0; t < R; t++) {
            w[t] = conj_c(root(pc, bf, j, g + (u32)t + 1u));
        }
#pragma unroll
        for (int k = 0; k < (1 << R); k++) {
            x[k] = s[SIDX(i0 + ((u32)k << g))];
        }
        dit_stages<R, true>(x, w);
#pragma unroll
        for (int k = 0; k < (1 << R); k++) {
            s[SIDX(i0 + ((u32)k << g))] = x[k];
        }
    }
    __syncthreads();
}

// ---- radix-16 rounds on the tensor cores (TENSOR_CORES=1, an experiment) ----------------------
//
// A round of four radix-2 stages is one 16-point DFT per item (line, group, j), the same
// item a dif_round<4> / dit_round<4> thread takes. Here a warp takes eight items at once as a
// 16 x 8 complex matrix X (row k = the item's point k, column = the item) and multiplies it by the
// 16 x 16 DFT matrix on the tensor cores: mma.sync m16n8k16, f16 operands, f32 accumulation,
// four products per tile (Re and Im of A times Re and Im of X). The DFT matrix carries the
// digit reversal, so the result is exactly the radix-2 one up to rounding:
//   forward (DIF, group size G = 16 q): Y[k'] = W_G^(j r) sum_k W_16^(k r) x[k q + j], r = bitrev4(k')
//   inverse (DIT, span q = 2^g):        y[t q + j] = sum_k W_16^(-t r_k) W_G^(-j r_k) x[k q + j],
//                                                    r_k = bitrev4(k)
// Each item (a column of 16 points, a 256-point tile, a middle-round group) is scaled by a power
// of two before the f16 conversion (its largest finite |Re| or |Im| goes to [1, 2): block
// floating point, so the f16 operands keep f32's range and small items next to large ones keep
// their precision) and unscaled after.
// Only the products see f16 (~2^-11 relative per round); twiddles and accumulation stay f32, so
// the host enables it for f16 and bf16 I/O only.
#ifndef TENSOR_CORES
#define TENSOR_CORES 0
#endif
#ifndef MONARCH_TC
#define MONARCH_TC 0
#endif
#if TENSOR_CORES || MONARCH_TC
#if (THREADS % 32) != 0
#error "TENSOR_CORES needs whole warps: THREADS must be a multiple of 32"
#endif

#if defined(FFTCONV_HOST_EMULATION)
// Host builds: the warp-level instructions are emulated with an exchange through static arrays
// and __syncwarp (the harness runs each thread as a fiber), following the PTX ISA's fragment
// layouts for mma.m16n8k16 (.row.col, f16 x f16 + f32). The arrays have a slot per fiber
// (`emu_slot()` of shim.h: the blocks of a cluster run their fibers side by side).
__device__ __forceinline__ u32 pack_f16x2(float lo, float hi) {
    _Float16 l = (_Float16)lo;
    _Float16 h = (_Float16)hi;
    u16 lb, hb;
    __builtin_memcpy(&lb, &l, 2);
    __builtin_memcpy(&hb, &h, 2);
    return (u32)lb | ((u32)hb << 16);
}
__device__ __forceinline__ float f16_value(u32 bits) {
    u16 b = (u16)bits;
    _Float16 h;
    __builtin_memcpy(&h, &b, 2);
    return (float)h;
}
__device__ __forceinline__ void tc_syncwarp() { __syncwarp(); }
static u32 emu_warp_value[EMU_SLOTS];
// The value of `v` in lane `src` of the calling thread's warp (all lanes take part).
__device__ __forceinline__ u32 shfl_idx(u32 v, u32 src) {
    emu_warp_value[emu_slot()] = v;
    __syncwarp();
    u32 out = emu_warp_value[(emu_slot() & ~31u) + (src & 31u)];
    __syncwarp();
    return out;
}
// The value of `v` in lane `lane ^ mask` (all lanes take part).
__device__ __forceinline__ u32 shfl_xor(u32 v, u32 mask) {
    return shfl_idx(v, (threadIdx.x & 31u) ^ mask);
}
static u32 emu_mma_a[EMU_SLOTS][4];
static u32 emu_mma_b[EMU_SLOTS][2];
// d = A (16 x 16) * B (16 x 8) + c. Fragments (lane = 4 group + tig): A element i at row
// group + 8 ((i >> 1) & 1), column 2 tig + (i & 1) + 8 (i >> 2); B element i at row
// 2 tig + (i & 1) + 8 (i >> 1), column group; C/D element i at row group + 8 (i >> 1), column
// 2 tig + (i & 1). Element 2m is the low half of register m.
__device__ __forceinline__ void mma_16816(float d[4], const u32 a[4], const u32 b[2],
                                          const float c[4]) {
    u32 warp_first = emu_slot() & ~31u;
    for (int r = 0; r < 4; r++) {
        emu_mma_a[emu_slot()][r] = a[r];
    }
    emu_mma_b[emu_slot()][0] = b[0];
    emu_mma_b[emu_slot()][1] = b[1];
    __syncwarp();
    float A[16][16];
    float B[16][8];
    for (u32 l = 0; l < 32u; l++) {
        u32 grp = l >> 2;
        u32 tig = l & 3u;
        for (u32 i = 0; i < 8u; i++) {
            u32 word = emu_mma_a[warp_first + l][i >> 1];
            A[grp + 8u * ((i >> 1) & 1u)][2u * tig + (i & 1u) + 8u * (i >> 2)] =
                f16_value((i & 1u) != 0u ? word >> 16 : word & 0xffffu);
        }
        for (u32 i = 0; i < 4u; i++) {
            u32 word = emu_mma_b[warp_first + l][i >> 1];
            B[2u * tig + (i & 1u) + 8u * (i >> 1)][grp] =
                f16_value((i & 1u) != 0u ? word >> 16 : word & 0xffffu);
        }
    }
    __syncwarp();
    u32 lane = threadIdx.x & 31u;
    for (u32 i = 0; i < 4u; i++) {
        u32 row = (lane >> 2) + 8u * (i >> 1);
        u32 col = 2u * (lane & 3u) + (i & 1u);
        double acc = c[i];
        for (u32 k = 0; k < 16u; k++) {
            acc += (double)A[row][k] * (double)B[k][col];
        }
        d[i] = (float)acc;
    }
}
// d = A (16 x 8) * B (8 x 8) + c (mma.m16n8k8): the layouts of mma_16816's first halves (A
// registers 0 and 1, B register 0). Needs no __syncwarp of its own: mma_16816 exchanges.
__device__ __forceinline__ void mma_1688(float d[4], const u32 a[2], const u32 b, const float c[4]) {
    const u32 a4[4] = {a[0], a[1], 0u, 0u};
    const u32 b2[2] = {b, 0u};
    mma_16816(d, a4, b2, c);
}
#else
// Packs two f32 as f16 (rounded to nearest even): lo in bits 0..15, hi in 16..31.
__device__ __forceinline__ u32 pack_f16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ void tc_syncwarp() { asm volatile("bar.warp.sync 0xffffffff;" ::: "memory"); }
__device__ __forceinline__ u32 shfl_idx(u32 v, u32 src) {
    u32 o;
    asm volatile("shfl.sync.idx.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=r"(o) : "r"(v), "r"(src));
    return o;
}
__device__ __forceinline__ u32 shfl_xor(u32 v, u32 mask) {
    u32 o;
    asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=r"(o) : "r"(v), "r"(mask));
    return o;
}
__device__ __forceinline__ void mma_16816(float d[4], const u32 a[4], const u32 b[2],
                                          const float c[4]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
// d = A (16 x 8) * B (8 x 8) + c: A element i at row group + 8 (i >> 1), column 2 tig + (i & 1);
// B element i at row 2 tig + i, column group; C/D as for m16n8k16.
__device__ __forceinline__ void mma_1688(float d[4], const u32 a[2], const u32 b, const float c[4]) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5}, {%6}, {%7, %8, %9, %10};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
#endif

// A 16 x 16 complex DFT matrix as this lane's A fragments: Re, Im and -Im, f16.
struct TcMatrix {
    u32 re[4];
    u32 im[4];
    u32 neg_im[4];
};

// Forward: F[k', k] = W_16^(k bitrev4(k')); inverse: F[t, k] = W_16^(-t bitrev4(k)).
__device__ __forceinline__ TcMatrix tc_matrix(const Params& pc, const Buffers& bf, bool inverse) {
    u32 lane = threadIdx.x & 31u;
    TcMatrix a;
#pragma unroll
    for (u32 r = 0; r < 4u; r++) {
        float re[2], im[2];
#pragma unroll
        for (u32 h = 0; h < 2u; h++) {
            u32 i = 2u * r + h;
            u32 row = (lane >> 2) + 8u * ((i >> 1) & 1u);
            u32 col = 2u * (lane & 3u) + (i & 1u) + 8u * (i >> 2);
            u32 e = inverse ? 16u - ((row * bit_reverse(col, 4u)) & 15u)
                            : col * bit_reverse(row, 4u);
            cpx w = root(pc, bf, e, 4u);
            re[h] = w.x;
            im[h] = w.y;
        }
        a.re[r] = pack_f16x2(re[0], re[1]);
        a.im[r] = pack_f16x2(im[0], im[1]);
        a.neg_im[r] = pack_f16x2(-im[0], -im[1]);
    }
    return a;
}

// Block floating point for the f16 operands. A scale is a power of two that takes the largest
// finite |component| of what it covers into [1, 2) (exponent clamped to normal values, so zero
// and subnormal maxima scale up exactly and huge ones stay finite), and its inverse. Maxima are
// taken over the magnitude bits (inf and NaN count as 0): an unsigned max is commutative, so all
// lanes agree, and a NaN or inf changes no scale (it propagates through its own item only).
// (finite_magnitude and max_u are defined after the element I/O: the fused backward uses them too.)
// The max over the four lanes of a quad (lanes 4 g .. 4 g + 3: one fragment row or column).
__device__ __forceinline__ u32 quad_max(u32 m) {
    m = max_u(m, shfl_xor(m, 1u));
    return max_u(m, shfl_xor(m, 2u));
}
__device__ __forceinline__ u32 warp_max_u(u32 m) {
#pragma unroll
    for (u32 b = 1u; b < 32u; b <<= 1) {
        m = max_u(m, shfl_xor(m, b));
    }
    return m;
}
__device__ __forceinline__ void tc_scale(u32 magnitude, float& scale, float& unscale) {
    u32 e = magnitude >> 23;
    e = e < 1u ? 1u : (e > 253u ? 253u : e);
    scale = bits_float((254u - e) << 23);
    unscale = bits_float(e << 23);
}

// The complex product of one m16n8k16 tile as four real ones: d_re = a_re b_re + p q,
// d_im = a_re b_im + a_im b_re (callers pass (p, q) = (-Im a, b_im) or (a_im, -Im b)).
__device__ __forceinline__ void tc_cmma(float d_re[4], float d_im[4], const u32 a_re[4],
                                        const u32 a_im[4], const u32 b_re[2], const u32 b_im[2],
                                        const u32 p[4], const u32 q[2]) {
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_16816(d_re, a_re, b_re, zero);
    mma_16816(d_re, p, q, d_re);
    mma_16816(d_im, a_re, b_im, zero);
    mma_16816(d_im, a_im, b_re, d_im);
}

// tc_cmma for an m16n8k8 tile (A: two registers per part, B: one).
__device__ __forceinline__ void tc_cmma8(float d_re[4], float d_im[4], const u32 a_re[2],
                                         const u32 a_im[2], u32 b_re, u32 b_im, const u32 p[2],
                                         u32 q) {
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_1688(d_re, a_re, b_re, zero);
    mma_1688(d_re, p, q, d_re);
    mma_1688(d_im, a_re, b_im, zero);
    mma_1688(d_im, a_im, b_re, d_im);
}

// This lane's B fragment registers (Re and Im) of four complex points, times `scale`.
__device__ __forceinline__ void tc_pack_b(const cpx x[4], float scale, u32 b_re[2], u32 b_im[2]) {
    b_re[0] = pack_f16x2(x[0].x * scale, x[1].x * scale);
    b_re[1] = pack_f16x2(x[2].x * scale, x[3].x * scale);
    b_im[0] = pack_f16x2(x[0].y * scale, x[1].y * scale);
    b_im[1] = pack_f16x2(x[2].y * scale, x[3].y * scale);
}

// Y = F X for this lane's B fragment x (rows 2 tig, 2 tig + 1, 2 tig + 8, 2 tig + 9 of one
// column): d_re / d_im are its D fragment (rows group, group + 8; columns 2 tig, 2 tig + 1).
__device__ __forceinline__ void tc_product(const TcMatrix& a, const cpx x[4], float d_re[4],
                                           float d_im[4]) {
    // One scale per column (item): its 16 points sit in the four lanes of quad `group`.
    u32 m = 0u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m = max_u(m, finite_magnitude(x[i]));
    }
    float scale, unscale;
    tc_scale(quad_max(m), scale, unscale);
    u32 b_re[2], b_im[2];
    tc_pack_b(x, scale, b_re, b_im);
    tc_cmma(d_re, d_im, a.re, a.im, b_re, b_im, a.neg_im, b_im);
    // D columns 2 tig and 2 tig + 1 are the items of quads 2 tig and 2 tig + 1.
    u32 tig = threadIdx.x & 3u;
#pragma unroll
    for (u32 c = 0; c < 2u; c++) {
        float u = bits_float(shfl_idx(float_bits(unscale), 4u * (2u * tig + c)));
        d_re[c] *= u;
        d_im[c] *= u;
        d_re[2u + c] *= u;
        d_im[2u + c] *= u;
    }
    // Every lane has read its points (they fed the products) before any lane overwrites them.
    tc_syncwarp();
}

// Forward (DIF) stages with spans 2^(gl-1) .. 2^(gl-4) on every group, as dif_round<4>.
__device__ __forceinline__ void tc_dif_round(cpx* s, const Params& pc, const Buffers& bf, const TcMatrix& a,
                             u32 m_log2, u32 gl) {
    u32 tiles = 1u << (m_log2 + pc.lines_log2 - 7u); // eight items per tile
    u32 q_log2 = gl - 4u;
    u32 lane = threadIdx.x & 31u;
    u32 grp = lane >> 2;
    u32 tig = lane & 3u;
    for (u32 t = threadIdx.x >> 5; t < tiles; t += THREADS / 32) {
        u32 i0 = group_base(8u * t + grp, m_log2, gl, 4);
        cpx x[4];
#pragma unroll
        for (u32 i = 0; i < 4u; i++) {
            u32 k = 2u * tig + (i & 1u) + 8u * (i >> 1);
            x[i] = s[SIDX(i0 + (k << q_log2))];
        }
        float d_re[4], d_im[4];
        tc_product(a, x, d_re, d_im);
#pragma unroll
        for (u32 c = 0; c < 2u; c++) {
            u32 i0c = group_base(8u * t + 2u * tig + c, m_log2, gl, 4);
            u32 j = i0c & ((1u << q_log2) - 1u);
#pragma unroll
            for (u32 r = 0; r < 2u; r++) {
                u32 kk = grp + 8u * r;
                cpx w = root(pc, bf, j * bit_reverse(kk, 4u), gl);
                cpx v = mk(d_re[2u * r + c], d_im[2u * r + c]);
                s[SIDX(i0c + (kk << q_log2))] = cmul(v, w);
            }
        }
    }
    __syncthreads();
}

// Inverse (DIT) stages with spans 2^g .. 2^(g+3) on every group, as dit_round<4>.
__device__ __forceinline__ void tc_dit_round(cpx* s, const Params& pc, const Buffers& bf, const TcMatrix& a,
                             u32 m_log2, u32 g) {
    u32 gl = g + 4u;
    u32 tiles = 1u << (m_log2 + pc.lines_log2 - 7u);
    u32 lane = threadIdx.x & 31u;
    u32 grp = lane >> 2;
    u32 tig = lane & 3u;
    for (u32 t = threadIdx.x >> 5; t < tiles; t += THREADS / 32) {
        u32 i0 = group_base(8u * t + grp, m_log2, gl, 4);
        u32 j = i0 & ((1u << g) - 1u);
        cpx x[4];
#pragma unroll
        for (u32 i = 0; i < 4u; i++) {
            u32 k = 2u * tig + (i & 1u) + 8u * (i >> 1);
            cpx w = conj_c(root(pc, bf, j * bit_reverse(k, 4u), gl));
            x[i] = cmul(s[SIDX(i0 + (k << g))], w);
        }
        float d_re[4], d_im[4];
        tc_product(a, x, d_re, d_im);
#pragma unroll
        for (u32 c = 0; c < 2u; c++) {
            u32 i0c = group_base(8u * t + 2u * tig + c, m_log2, gl, 4);
#pragma unroll
            for (u32 r = 0; r < 2u; r++) {
                u32 tt = grp + 8u * r;
                s[SIDX(i0c + (tt << g))] = mk(d_re[2u * r + c], d_im[2u * r + c]);
            }
        }
    }
    __syncthreads();
}

// ---- radix-256 rounds: two radix-16 rounds chained in registers ----------------------------------
//
// Eight radix-2 stages on the 256 points {j + q (16 a + b)} (a, b < 16) of one item, one warp per
// item: the points as a 16 x 16 matrix Z[a][b]. The first product contracts one index with the
// DFT matrix; its D fragments (two 16 x 8 tiles) are, element for element in the same lane,
// the B fragments of their transpose, so the second product contracts the other index without
// going through shared memory. Per 256 points: one load and one store per point, 16 mma.

// This lane's share of a 16 x 16 complex product F Z (two 16 x 8 tiles n = 0, 1): b[n][i] is
// Z[2 tig + (i & 1) + 8 (i >> 1)][group + 8 n] (the B fragments); d[n][i] becomes
// (F Z)[group + 8 (i >> 1)][2 tig + (i & 1) + 8 n] (the D fragments). One scale for the tile.
__device__ __forceinline__ void tc_product16x16(const TcMatrix& a, const cpx b[2][4], cpx d[2][4]) {
    // One scale for the tile: all its 256 points are one item.
    u32 m = 0u;
#pragma unroll
    for (int n = 0; n < 2; n++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            m = max_u(m, finite_magnitude(b[n][i]));
        }
    }
    float scale, unscale;
    tc_scale(warp_max_u(m), scale, unscale);
#pragma unroll
    for (int n = 0; n < 2; n++) {
        u32 b_re[2], b_im[2];
        tc_pack_b(b[n], scale, b_re, b_im);
        float d_re[4], d_im[4];
        tc_cmma(d_re, d_im, a.re, a.im, b_re, b_im, a.neg_im, b_im);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            d[n][i] = mk(d_re[i] * unscale, d_im[i] * unscale);
        }
    }
    // Every lane has read its points (they fed the products) before any lane overwrites them.
    tc_syncwarp();
}

// The B fragments of D^T from the D fragments of D (same lane).
__device__ __forceinline__ void tc_transpose_fragments(const cpx d[2][4], cpx b[2][4]) {
#pragma unroll
    for (int n = 0; n < 2; n++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            b[n][i] = d[i >> 1][(i & 1) + 2 * n];
        }
    }
}

// Forward (DIF) stages with spans 2^(gl-1) .. 2^(gl-8) on every group: a radix-16 round at gl
// (contracting a, twiddle W_G^((16 q b... see tc_dif_round) then one at gl - 4 (contracting b).
__device__ __forceinline__ void tc_dif_round256(cpx* s, const Params& pc, const Buffers& bf, const TcMatrix& a,
                                u32 m_log2, u32 gl) {
    u32 items = 1u << (m_log2 + pc.lines_log2 - 8u);
    u32 q_log2 = gl - 8u;
    u32 lane = threadIdx.x & 31u;
    u32 grp = lane >> 2;
    u32 tig = lane & 3u;
    for (u32 it = threadIdx.x >> 5; it < items; it += THREADS / 32) {
        u32 i0 = group_base(it, m_log2, gl, 8);
        u32 j = i0 & ((1u << q_log2) - 1u);
        cpx x[2][4], d[2][4];
#pragma unroll
        for (u32 n = 0; n < 2u; n++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                u32 ra = 2u * tig + (i & 1u) + 8u * (i >> 1); // a (contracted first)
                u32 cb = grp + 8u * n;                         // b
                x[n][i] = s[SIDX(i0 + ((16u * ra + cb) << q_log2))];
            }
        }
        tc_product16x16(a, x, d);
        // d[n][i] = Y[a' = grp + 8 (i >> 1)][b = 2 tig + (i & 1) + 8 n], times W_G^((b q + j) r(a')).
#pragma unroll
        for (u32 n = 0; n < 2u; n++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                u32 ka = grp + 8u * (i >> 1);
                u32 cb = 2u * tig + (i & 1u) + 8u * n;
                d[n][i] = cmul(d[n][i],
                               root(pc, bf, ((cb << q_log2) + j) * bit_reverse(ka, 4u), gl));
            }
        }
        tc_transpose_fragments(d, x);
        tc_product16x16(a, x, d);
        // d[n][i] = Y'[b' = grp + 8 (i >> 1)][a' = 2 tig + (i & 1) + 8 n], times
        // W_{G/16}^(j r(b')), at j + q (16 a' + b').
#pragma unroll
        for (u32 n = 0; n < 2u; n++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                u32 kb = grp + 8u * (i >> 1);
                u32 ka = 2u * tig + (i & 1u) + 8u * n;
                cpx v = d[n][i];
                if (q_log2 != 0u) {
                    v = cmul(v, root(pc, bf, j * bit_reverse(kb, 4u), gl - 4u));
                }
                s[SIDX(i0 + ((16u * ka + kb) << q_log2))] = v;
            }
        }
    }
    __syncthreads();
}

// Inverse (DIT) stages with spans 2^g .. 2^(g+7) on every group: a radix-16 round at span g
// (contracting b) then one at span g + 4 (contracting a), twiddles on their inputs.
__device__ __forceinline__ void tc_dit_round256(cpx* s, const Params& pc, const Buffers& bf, const TcMatrix& a,
                                u32 m_log2, u32 g) {
    u32 gl = g + 8u;
    u32 items = 1u << (m_log2 + pc.lines_log2 - 8u);
    u32 lane = threadIdx.x & 31u;
    u32 grp = lane >> 2;
    u32 tig = lane & 3u;
    for (u32 it = threadIdx.x >> 5; it < items; it += THREADS / 32) {
        u32 i0 = group_base(it, m_log2, gl, 8);
        u32 j = i0 & ((1u << g) - 1u);
        cpx x[2][4], d[2][4];
#pragma unroll
        for (u32 n = 0; n < 2u; n++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                u32 kb = 2u * tig + (i & 1u) + 8u * (i >> 1); // b (contracted first)
                u32 ka = grp + 8u * n;                         // a
                cpx v = s[SIDX(i0 + ((16u * ka + kb) << g))];
                if (g != 0u) {
                    v = cmul(v, conj_c(root(pc, bf, j * bit_reverse(kb, 4u), g + 4u)));
                }
                x[n][i] = v;
            }
        }
        tc_product16x16(a, x, d);
        // d[n][i] = Z'[t_b = grp + 8 (i >> 1)][a = 2 tig + (i & 1) + 8 n], times
        // conj(W_{256 q}^((t_b q + j) r(a))).
#pragma unroll
        for (u32 n = 0; n < 2u; n++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                u32 tb = grp + 8u * (i >> 1);
                u32 ka = 2u * tig + (i & 1u) + 8u * n;
                d[n][i] = cmul(d[n][i],
                               conj_c(root(pc, bf, ((tb << g) + j) * bit_reverse(ka, 4u), gl)));
            }
        }
        tc_transpose_fragments(d, x);
        tc_product16x16(a, x, d);
        // d[n][i] = out[t_a = grp + 8 (i >> 1)][t_b = 2 tig + (i & 1) + 8 n], at j + q (16 t_a + t_b).
#pragma unroll
        for (u32 n = 0; n < 2u; n++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                u32 ta = grp + 8u * (i >> 1);
                u32 tb = 2u * tig + (i & 1u) + 8u * n;
                s[SIDX(i0 + ((16u * ta + tb) << g))] = d[n][i];
            }
        }
    }
    __syncthreads();
}

// Whether a transform of this block can run its radix-16 rounds on the tensor cores: lines of
// at least 16 points and whole tiles (items a multiple of eight). Uniform over the block.
__device__ __forceinline__ bool tc_usable(const Params& pc, u32 m_log2) {
    return (pc.flags & FLAG_F32_ROUNDS) == 0u && m_log2 >= 4u && m_log2 + pc.lines_log2 >= 7u;
}

// Whether the radix-16 middle round can run on the tensor cores: whole tiles of 16 groups of 16
// points (256 points). Uniform over the block.
__device__ __forceinline__ bool tc_middle_usable(const Params& pc, u32 m_log2) {
    return tc_usable(pc, m_log2) && m_log2 + pc.lines_log2 >= 8u;
}
#endif

// The group size (log2) of a transform's finest round: the forward's last round and the
// inverse's first (both combine points 1 .. 2^(R-1) apart), which the fused pass runs as one
// register round around the pointwise product (`middle_round`). 0 for lines of one point.
__device__ __forceinline__ u32 finest_round_log2(const Params& pc, u32 m_log2) {
    (void)pc;
    if (m_log2 == 0u) {
        return 0u;
    }
#if TENSOR_CORES
    if (tc_usable(pc, m_log2)) {
        return (m_log2 & 3u) == 0u ? 4u : (m_log2 & 3u);
    }
#endif
    u32 r = m_log2 % (u32)MAX_RADIX_LOG2;
    return r == 0u ? (u32)MAX_RADIX_LOG2 : r;
}

// Forward, decimation in frequency: line c at s[c * M ...], natural order in, bit-reversed out.
// Stops before the round with group size 2^stop_log2 when stop_log2 is finest_round_log2 (the
// caller runs it), or runs every round when it is 0.
__device__ __forceinline__ void fft_forward(cpx* s, const Params& pc, const Buffers& bf, u32 m_log2,
                            u32 stop_log2 = 0u) {
    u32 gl = m_log2; // log2 of the group size of the next round
#if TENSOR_CORES
    if (tc_usable(pc, m_log2)) {
        TcMatrix a = tc_matrix(pc, bf, false);
        for (; gl >= 8u && gl - 8u >= stop_log2; gl -= 8u) {
            tc_dif_round256(s, pc, bf, a, m_log2, gl);
        }
        for (; gl >= 4u && gl > stop_log2; gl -= 4u) {
            tc_dif_round(s, pc, bf, a, m_log2, gl);
        }
        if (gl > stop_log2) {
            if (gl == 3u) {
                dif_round<3>(s, pc, bf, m_log2, gl);
            } else if (gl == 2u) {
                dif_round<2>(s, pc, bf, m_log2, gl);
            } else if (gl == 1u) {
                dif_round<1>(s, pc, bf, m_log2, gl);
            }
        }
        return;
    }
#endif
#if MAX_RADIX_LOG2 >= 4
    for (; gl >= 4u && gl > stop_log2; gl -= 4u) {
        dif_round<4>(s, pc, bf, m_log2, gl);
    }
    if (gl == 3u && gl > stop_log2) {
        dif_round<3>(s, pc, bf, m_log2, gl);
        gl = 0u;
    }
#else
    for (; gl >= 3u && gl > stop_log2; gl -= 3u) {
        dif_round<3>(s, pc, bf, m_log2, gl);
    }
#endif
    if (gl == 2u && gl > stop_log2) {
        dif_round<2>(s, pc, bf, m_log2, gl);
    }
    if (gl == 1u && gl > stop_log2) {
        dif_round<1>(s, pc, bf, m_log2, gl);
    }
}

// Inverse (unscaled), decimation in time: bit-reversed order in, natural out. Starts at span
// 2^g0: g0 is 0 (every round) or finest_round_log2 (the caller ran the finest round).
__device__ __forceinline__ void fft_inverse(cpx* s, const Params& pc, const Buffers& bf, u32 m_log2,
                            u32 g0 = 0u) {
    u32 g = g0; // log2 of the span of the next stage
#if TENSOR_CORES
    if (tc_usable(pc, m_log2)) {
        if (g == 0u) {
            u32 first = m_log2 & 3u; // stages before the radix-16 rounds
            if (first == 3u) {
                dit_round<3>(s, pc, bf, m_log2, 0u);
            } else if (first == 2u) {
                dit_round<2>(s, pc, bf, m_log2, 0u);
            } else if (first == 1u) {
                dit_round<1>(s, pc, bf, m_log2, 0u);
            }
            g = first;
        }
        TcMatrix a = tc_matrix(pc, bf, true);
        for (; g + 8u <= m_log2; g += 8u) {
            tc_dit_round256(s, pc, bf, a, m_log2, g);
        }
        for (; g < m_log2; g += 4u) {
            tc_dit_round(s, pc, bf, a, m_log2, g);
        }
        return;
    }
#endif
    if (g == 0u) {
        u32 rest = m_log2 % (u32)MAX_RADIX_LOG2;
#if MAX_RADIX_LOG2 >= 4
        if (rest == 3u) {
            dit_round<3>(s, pc, bf, m_log2, g);
            g += 3u;
        }
#endif
        if (rest == 1u) {
            dit_round<1>(s, pc, bf, m_log2, g);
            g += 1u;
        }
        if (rest == 2u) {
            dit_round<2>(s, pc, bf, m_log2, g);
            g += 2u;
        }
    }
    while (g < m_log2) {
        dit_round<MAX_RADIX_LOG2>(s, pc, bf, m_log2, g);
        g += (u32)MAX_RADIX_LOG2;
    }
}

// Frequency held by position pos of a pair (point p of its line of 2^m_log2 points) after the
// forward transform: position pos = sum_s M_{s+1} p_s + p holds frequency
// f = sum_s (N_0 ... N_{s-1}) bitrev(p_s) + (N_0 ... N_{j-1}) bitrev(p).
__device__ __forceinline__ u32 position_frequency(const Params& pc, u32 pos, u32 p, u32 m_log2) {
    u32 f = 0u;
    u32 weight_log2 = 0u;
    u32 shift = pc.log2n;
    for (u32 st = 0u; st < pc.stage_count; st++) {
        u32 bits = (pc.stage_bits >> (5u * st)) & 31u;
        shift -= bits;
        u32 digit = (pos >> shift) & ((1u << bits) - 1u);
        f += bit_reverse(digit, bits) << weight_log2;
        weight_log2 += bits;
    }
    return f + (bit_reverse(p, m_log2) << weight_log2);
}

// The pointwise product's factor at frequency f of pair `pair` of channel h (position pos): the
// filter bin (conjugated for the adjoint), or for the filter gradient (FLAG_CORRELATE)
// conj(other) / N. `kept` is false, and the factor 0, where frequency sparsity drops the bin.
__device__ __forceinline__ cpx frequency_factor(const Params& pc, const Buffers& bf, u32 h,
                                                u32 pair, u32 pos, u32 f, bool& kept) {
    kept = bin_kept(pc, f);
    if (!kept) {
        return mk(0.0f, 0.0f);
    }
    if ((pc.flags & FLAG_CORRELATE) != 0u) {
        u32 n = 1u << pc.log2n;
        cpx o = conj_c(bf.other[(u64)pair * n + pos]);
        float inv_n = 1.0f / (float)n;
        return mk(o.x * inv_n, o.y * inv_n);
    }
    cpx factor = filter_bin(pc, bf, h, f);
    return (pc.flags & FLAG_CONJ_FILTER) != 0u ? conj_c(factor) : factor;
}

// The pointwise product's factor at position pos of pair `pair` (point p of its line).
__device__ __forceinline__ cpx product_factor(const Params& pc, const Buffers& bf,
                                              const Divisors& dv, u32 pair, u32 pos, u32 p,
                                              u32 m_log2, bool& kept) {
    return frequency_factor(pc, bf, udiv(pair, dv.pairs), pair, pos,
                            position_frequency(pc, pos, p, m_log2), kept);
}

// Where the middle round's group starting at block point i0 sits: its line (valid: not a padding
// line of the last block), pair, channel, position of its first point and that point's
// frequency. The group's point k (< 2^R) holds frequency f0 + bitrev_R(k) N / 2^R: the low R bits
// of a position are the top R bits of its frequency.
struct MiddleGroup {
    bool valid;
    u32 pair;
    u32 h;
    u32 pos0;
    u32 f0;
};
__device__ __forceinline__ MiddleGroup middle_group(const Params& pc, const Divisors& dv,
                                                    u32 first_line, u32 m_log2, u32 i0) {
    u32 pair_lines_log2 = pc.log2n - m_log2;
    u32 line = first_line + (i0 >> m_log2);
    MiddleGroup g;
    g.valid = line < pc.total_lines;
    g.pair = g.valid ? line >> pair_lines_log2 : 0u;
    u32 p0 = i0 & ((1u << m_log2) - 1u);
    g.pos0 = ((line & ((1u << pair_lines_log2) - 1u)) << m_log2) + p0;
    g.h = udiv(g.pair, dv.pairs);
    g.f0 = position_frequency(pc, g.pos0, p0, m_log2);
    return g;
}

// bitrev(k) on R bits, for compile-time k (folds once loops are unrolled).
__device__ __forceinline__ u32 reverse_small(u32 k, int r) {
    u32 out = 0u;
    for (int b = 0; b < r; b++) {
        out |= ((k >> b) & 1u) << (r - 1 - b);
    }
    return out;
}

// 1: the fused pass runs the forward's finest round, the pointwise product and the inverse's
// finest round as one register round (the default; the host passes -DMIDDLE_ROUND=0 for A/B runs).
#ifndef MIDDLE_ROUND
#define MIDDLE_ROUND 1
#endif

// The finest forward round (group size 2^R, twiddles all 1), the product and the finest inverse
// round on each group of 2^R consecutive points, in registers. A group whose bins frequency
// sparsity all drops is not loaded or transformed: its points are set to 0.
template <int R>
__device__ __forceinline__ void middle_round(cpx* s, const Params& pc, const Buffers& bf, const Divisors& dv,
                             u32 first_line, u32 m_log2) {
    u32 items = 1u << (m_log2 + pc.lines_log2 - R);
    for (u32 it = threadIdx.x; it < items; it += THREADS) {
        u32 i0 = it << R;
        MiddleGroup g = middle_group(pc, dv, first_line, m_log2, i0);
        if (!g.valid) {
            continue; // padding lines of the last block: never stored
        }
        cpx factor[1 << R];
        bool any = false;
#pragma unroll
        for (int k = 0; k < (1 << R); k++) {
            bool kept;
            u32 f = g.f0 + (reverse_small((u32)k, R) << (pc.log2n - (u32)R));
            factor[k] = frequency_factor(pc, bf, g.h, g.pair, g.pos0 + (u32)k, f, kept);
            any = any || kept;
        }
        cpx x[1 << R];
        if (!any) {
#pragma unroll
            for (int k = 0; k < (1 << R); k++) {
                s[SIDX(i0 + (u32)k)] = mk(0.0f, 0.0f);
            }
            continue;
        }
#pragma unroll
        for (int k = 0; k < (1 << R); k++) {
            x[k] = s[SIDX(i0 + (u32)k)];
        }
        // The finest DIF round (spans 2^(R-1) .. 1), the product, the finest DIT round, all with
        // j = 0 (twiddles 1).
        const cpx none[R] = {};
        dif_stages<R, false>(x, none);
#pragma unroll
        for (int k = 0; k < (1 << R); k++) {
            x[k] = cmul(x[k], factor[k]);
        }
        dit_stages<R, false>(x, none);
#pragma unroll
        for (int k = 0; k < (1 << R); k++) {
            s[SIDX(i0 + (u32)k)] = x[k];
        }
    }
    __syncthreads();
}

#if TENSOR_CORES
// The middle round on the tensor cores (radix 16): a warp takes 16 groups of 16 consecutive
// points as the A operand X^T (row = group, column = point), so Y^T = X^T F^T comes out as D
// fragments that are, lane for lane, the A fragments of the next product: the filter factors
// are applied to them in registers and Y^T Finv^T gives the inverse, with no shared-memory
// round trip between the two transforms.

// A 16 x 16 complex matrix as this lane's B fragments of its two 16 x 8 tiles.
struct TcMatrixB {
    u32 re[2][2];
    u32 im[2][2];
    u32 neg_im[2][2];
};

// Forward: B[k][k'] = F[k'][k] = W_16^(k bitrev4(k')); inverse: B[k'][t] = W_16^(-t bitrev4(k')).
__device__ __forceinline__ TcMatrixB tc_matrix_b(const Params& pc, const Buffers& bf,
                                                 bool inverse) {
    u32 lane = threadIdx.x & 31u;
    TcMatrixB b;
#pragma unroll
    for (u32 n = 0; n < 2u; n++) {
#pragma unroll
        for (u32 r = 0; r < 2u; r++) {
            float re[2], im[2];
#pragma unroll
            for (u32 h = 0; h < 2u; h++) {
                u32 row = 2u * (lane & 3u) + h + 8u * r;
                u32 col = (lane >> 2) + 8u * n;
                u32 e = inverse ? 16u - ((col * bit_reverse(row, 4u)) & 15u)
                                : row * bit_reverse(col, 4u);
                cpx w = root(pc, bf, e, 4u);
                re[h] = w.x;
                im[h] = w.y;
            }
            b.re[n][r] = pack_f16x2(re[0], re[1]);
            b.im[n][r] = pack_f16x2(im[0], im[1]);
            b.neg_im[n][r] = pack_f16x2(-im[0], -im[1]);
        }
    }
    return b;
}

// D = A B for complex A (this lane's A fragment values a[i], i < 8) and B (two tiles):
// d[n][i] = D[group + 8 (i >> 1)][2 tig + (i & 1) + 8 n]. One power-of-two scale for the tile.
__device__ __forceinline__ void tc_product_a(const cpx a[8], const TcMatrixB& b, cpx d[2][4]) {
    // One scale per row (group): rows group and group + 8 each sit in the four lanes of the
    // quad; element i is in row group + 8 ((i >> 1) & 1), D element i in row group + 8 (i >> 1).
    u32 m[2] = {0u, 0u};
#pragma unroll
    for (int i = 0; i < 8; i++) {
        m[(i >> 1) & 1] = max_u(m[(i >> 1) & 1], finite_magnitude(a[i]));
    }
    float scale[2], unscale[2];
    tc_scale(quad_max(m[0]), scale[0], unscale[0]);
    tc_scale(quad_max(m[1]), scale[1], unscale[1]);
    u32 a_re[4], a_im[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        float sc = scale[r & 1]; // elements 2r, 2r + 1 are in row group + 8 (r & 1)
        a_re[r] = pack_f16x2(a[2 * r].x * sc, a[2 * r + 1].x * sc);
        a_im[r] = pack_f16x2(a[2 * r].y * sc, a[2 * r + 1].y * sc);
    }
#pragma unroll
    for (int n = 0; n < 2; n++) {
        float d_re[4], d_im[4];
        tc_cmma(d_re, d_im, a_re, a_im, b.re[n], b.im[n], a_im, b.neg_im[n]);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            d[n][i] = mk(d_re[i] * unscale[i >> 1], d_im[i] * unscale[i >> 1]);
        }
    }
}

__device__ __forceinline__ void tc_middle_round(cpx* s, const Params& pc, const Buffers& bf, const Divisors& dv,
                                u32 first_line, u32 m_log2) {
    TcMatrixB forward = tc_matrix_b(pc, bf, false);
    TcMatrixB inverse = tc_matrix_b(pc, bf, true);
    u32 tiles = 1u << (m_log2 + pc.lines_log2 - 8u); // 16 groups of 16 points per tile
    u32 lane = threadIdx.x & 31u;
    u32 grp = lane >> 2;
    u32 tig = lane & 3u;
    for (u32 t = threadIdx.x >> 5; t < tiles; t += THREADS / 32) {
        // A = X^T: element i is point 2 tig + (i & 1) + 8 (i >> 2) of group grp + 8 ((i >> 1) & 1).
        cpx x[8];
#pragma unroll
        for (u32 i = 0; i < 8u; i++) {
            u32 g = grp + 8u * ((i >> 1) & 1u);
            u32 k = 2u * tig + (i & 1u) + 8u * (i >> 2);
            x[i] = s[SIDX((((t << 4) + g) << 4) + k)];
        }
        cpx d[2][4];
        tc_product_a(x, forward, d);
        // d[n][i] = Y[group grp + 8 (i >> 1)][k' = 2 tig + (i & 1) + 8 n]: times the factor of
        // frequency f0(group) + bitrev4(k') N / 16.
#pragma unroll
        for (u32 half = 0; half < 2u; half++) {
            MiddleGroup g =
                middle_group(pc, dv, first_line, m_log2, ((t << 4) + grp + 8u * half) << 4);
#pragma unroll
            for (u32 n = 0; n < 2u; n++) {
#pragma unroll
                for (u32 c = 0; c < 2u; c++) {
                    u32 kk = 2u * tig + c + 8u * n;
                    bool kept;
                    cpx factor = mk(0.0f, 0.0f);
                    if (g.valid) {
                        u32 f = g.f0 + (bit_reverse(kk, 4u) << (pc.log2n - 4u));
                        factor = frequency_factor(pc, bf, g.h, g.pair, g.pos0 + kk, f, kept);
                    }
                    d[n][2u * half + c] = cmul(d[n][2u * half + c], factor);
                }
            }
        }
        // The A fragments of Y^T from its D fragments (same lane).
#pragma unroll
        for (u32 i = 0; i < 8u; i++) {
            x[i] = d[i >> 2][(i & 1u) + 2u * ((i >> 1) & 1u)];
        }
        tc_product_a(x, inverse, d);
        // Every lane has read its points before any lane overwrites them.
        tc_syncwarp();
#pragma unroll
        for (u32 n = 0; n < 2u; n++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                u32 g = grp + 8u * (i >> 1);
                u32 tt = 2u * tig + (i & 1u) + 8u * n;
                s[SIDX((((t << 4) + g) << 4) + tt)] = d[n][i];
            }
        }
    }
    __syncthreads();
}
#endif

// The block's index in a 2-D grid.
__device__ __forceinline__ u32 block_index() { return blockIdx.x + blockIdx.y * gridDim.x; }

// ---- kernels ----------------------------------------------------------------------------------

// The fused pass (kernel fftconv_fused below), inlined into the kernel once per specialization.
__device__ __forceinline__ void fused_pass(const Params& pc, const Buffers& bf, const Divisors& dv) {
    cpx* s = smem;
    u32 first_line = block_index() << pc.lines_log2;
    if (first_line >= pc.total_lines) {
        return; // uniform over the block: no barrier is skipped by part of it
    }
    u32 m_log2 = pc.line_log2;
    u32 m = 1u << m_log2;
    u32 points = m << pc.lines_log2;
    u32 n = 1u << pc.log2n;
    u32 pair_lines_log2 = pc.log2n - m_log2; // lines per pair: N / M

#if SEGMENT_TABLE
    // Experiment: each line's two segments located once per block (a shared table) instead of
    // once per point in the loads and stores.
    __shared__ SegmentRow segment_table[SEGMENT_TABLE_LINES][2];
    bool table = (1u << pc.lines_log2) <= SEGMENT_TABLE_LINES &&
                 (pc.flags & (FLAG_SRC_INPUT | FLAG_DST_OUTPUT)) != 0u;
    if (table) {
        for (u32 c = threadIdx.x; c < (2u << pc.lines_log2); c += THREADS) {
            u32 line = first_line + (c >> 1u);
            SegmentRow r;
            r.valid = 0u;
            if (line < pc.total_lines) {
                u32 pair = line >> pair_lines_log2;
                u32 h = udiv(pair, dv.pairs);
                r = locate_segment(pc, dv, 2u * (pair - h * pc.pairs) + (c & 1u), h);
            }
            segment_table[c >> 1u][c & 1u] = r;
        }
        __syncthreads();
    }
#endif

    // Vector I/O (see vector_rows): lines are whole pairs (a one-pass plan), rows whole segments.
    bool vec_in = VECTOR_IO && pair_lines_log2 == 0u && (pc.flags & FLAG_SRC_INPUT) != 0u &&
                  vector_rows(pc, bf.u, bf.pre);
    bool vec_out = VECTOR_IO && pair_lines_log2 == 0u &&
                   (pc.flags & (FLAG_DST_OUTPUT | FLAG_DST_TAPS | FLAG_NO_INVERSE)) ==
                       FLAG_DST_OUTPUT &&
                   vector_rows(pc, bf.y, bf.post);
    if (vec_in) {
        for (u32 c = threadIdx.x; c < points / VEC; c += THREADS) {
            u32 i = c * VEC;
            u32 line = first_line + (i >> m_log2);
            float a[VEC], b[VEC];
            if (line < pc.total_lines) {
                u32 h = udiv(line, dv.pairs);
                u32 q = line - h * pc.pairs;
                u32 pos = i & (m - 1u);
                segment_input_vec(pc, dv, bf.u, bf.pre, pc.flags, locate_segment(pc, dv, 2u * q, h),
                                  pos, a);
                segment_input_vec(pc, dv, bf.u, bf.pre, pc.flags,
                                  locate_segment(pc, dv, 2u * q + 1u, h), pos, b);
            } else {
#pragma unroll
                for (u32 k = 0u; k < VEC; k++) {
                    a[k] = 0.0f;
                    b[k] = 0.0f;
                }
            }
#pragma unroll
            for (u32 k = 0u; k < VEC; k++) {
                s[SIDX(i + k)] = mk(a[k], b[k]);
            }
        }
    }
    // Lines are contiguous blocks of M points of a pair's N.
    for (u32 i = vec_in ? points : threadIdx.x; i < points; i += THREADS) {
        u32 line = first_line + (i >> m_log2);
        cpx v = mk(0.0f, 0.0f);
        if (line < pc.total_lines) {
            u32 pair = line >> pair_lines_log2;
            u32 pos = ((line & ((1u << pair_lines_log2) - 1u)) << m_log2) + (i & (m - 1u));
#if SEGMENT_TABLE
            if (table && (pc.flags & FLAG_SRC_INPUT) != 0u) {
                u32 c = i >> m_log2;
                v = mk(segment_input_at(pc, dv, bf.u, bf.pre, pc.flags, segment_table[c][0], pos),
                       segment_input_at(pc, dv, bf.u, bf.pre, pc.flags, segment_table[c][1], pos));
            } else
#endif
            if ((pc.flags & FLAG_SRC_INPUT) != 0u) {
                u32 h = udiv(pair, dv.pairs);
                u32 q = pair - h * pc.pairs;
                v = mk(segment_value(pc, bf, dv, 2u * q, h, pos),
                       segment_value(pc, bf, dv, 2u * q + 1u, h, pos));
            } else {
                v = bf.tmp[(u64)pair * n + pos];
            }
        }
        s[SIDX(i)] = v;
    }
    __syncthreads();
    // Forward only (FLAG_NO_INVERSE): the spectrum is stored as it is, for a later pass.
    bool forward_only = (pc.flags & FLAG_NO_INVERSE) != 0u;
    bool no_forward = (pc.flags & FLAG_NO_FORWARD) != 0u;
    // With MIDDLE_ROUND, the forward's finest round, the product and the inverse's finest round
    // run as one register round (no shared-memory round trip between them).
    u32 middle = MIDDLE_ROUND && !forward_only && !no_forward ? finest_round_log2(pc, m_log2) : 0u;
    if (!no_forward) {
        fft_forward(s, pc, bf, m_log2, middle);
    }
    if (!forward_only) {
        if (middle == 1u) {
            middle_round<1>(s, pc, bf, dv, first_line, m_log2);
        } else if (middle == 2u) {
            middle_round<2>(s, pc, bf, dv, first_line, m_log2);
        } else if (middle == 3u) {
            middle_round<3>(s, pc, bf, dv, first_line, m_log2);
        } else if (middle == 4u) {
#if TENSOR_CORES
            if (tc_middle_usable(pc, m_log2)) {
                tc_middle_round(s, pc, bf, dv, first_line, m_log2);
            } else {
                middle_round<4>(s, pc, bf, dv, first_line, m_log2);
            }
#else
            middle_round<4>(s, pc, bf, dv, first_line, m_log2);
#endif
        } else {
            for (u32 i = threadIdx.x; i < points; i += THREADS) {
                u32 line = first_line + (i >> m_log2);
                if (line < pc.total_lines) {
                    u32 pair = line >> pair_lines_log2;
                    u32 pos = ((line & ((1u << pair_lines_log2) - 1u)) << m_log2) + (i & (m - 1u));
                    bool kept;
                    cpx factor = product_factor(pc, bf, dv, pair, pos, i & (m - 1u), m_log2, kept);
                    s[SIDX(i)] = cmul(s[SIDX(i)], factor);
                }
            }
            __syncthreads();
        }
        fft_inverse(s, pc, bf, m_log2, middle);
    }

    if (vec_out) {
        for (u32 c = threadIdx.x; c < points / VEC; c += THREADS) {
            u32 i = c * VEC;
            u32 line = first_line + (i >> m_log2);
            if (line >= pc.total_lines) {
                continue;
            }
            float a[VEC], b[VEC];
#pragma unroll
            for (u32 k = 0u; k < VEC; k++) {
                cpx v = s[SIDX(i + k)];
                a[k] = v.x;
                b[k] = v.y;
            }
            u32 h = udiv(line, dv.pairs);
            u32 q = line - h * pc.pairs;
            u32 pos = i & (m - 1u);
            store_segment_vec(pc, bf.y, bf.post, locate_segment(pc, dv, 2u * q, h), pos, a);
            store_segment_vec(pc, bf.y, bf.post, locate_segment(pc, dv, 2u * q + 1u, h), pos, b);
        }
    }
    for (u32 i = vec_out ? points : threadIdx.x; i < points; i += THREADS) {
        u32 line = first_line + (i >> m_log2);
        if (line < pc.total_lines) {
            u32 pair = line >> pair_lines_log2;
            u32 pos = ((line & ((1u << pair_lines_log2) - 1u)) << m_log2) + (i & (m - 1u));
            if (forward_only) {
                bf.tmp[(u64)pair * n + pos] = s[SIDX(i)];
#if SEGMENT_TABLE
            } else if (table && (pc.flags & (FLAG_DST_OUTPUT | FLAG_DST_TAPS)) == FLAG_DST_OUTPUT) {
                u32 c = i >> m_log2;
                cpx v = s[SIDX(i)];
                store_segment_at(pc, bf.y, bf.post, segment_table[c][0], pos, v.x);
                store_segment_at(pc, bf.y, bf.post, segment_table[c][1], pos, v.y);
#endif
            } else {
                store_result(pc, bf, dv, pair, pos, s[SIDX(i)]);
            }
        }
    }
}

// Per-plan specialization (an experiment; the host defines SPEC_LOG2N, SPEC_LINE_LOG2,
// SPEC_LINES_LOG2, SPEC_STAGE_COUNT and SPEC_STAGE_BITS from one plan's fused pass): launches whose
// parameters match run a copy of the pass with those as compile-time constants (round loops,
// shifts, item counts and the frequency digits fold); any other launch runs the generic copy.
#ifndef SPEC_LINE_LOG2
#define SPEC_LINE_LOG2 -1
#endif

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    fftconv_fused(const Params pc, const Buffers bf, const Divisors dv) {
#if SPEC_LINE_LOG2 >= 0
    if (pc.log2n == (u32)SPEC_LOG2N && pc.line_log2 == (u32)SPEC_LINE_LOG2 &&
        pc.lines_log2 == (u32)SPEC_LINES_LOG2 && pc.stage_count == (u32)SPEC_STAGE_COUNT &&
        pc.stage_bits == (u32)SPEC_STAGE_BITS) {
        Params fixed = pc;
        fixed.log2n = (u32)SPEC_LOG2N;
        fixed.line_log2 = (u32)SPEC_LINE_LOG2;
        fixed.lines_log2 = (u32)SPEC_LINES_LOG2;
        fixed.stage_count = (u32)SPEC_STAGE_COUNT;
        fixed.stage_bits = (u32)SPEC_STAGE_BITS;
        fused_pass(fixed, bf, dv);
        return;
    }
#endif
    fused_pass(pc, bf, dv);
}

// Columns of a global stage s: a line is column r of block blk of one pair; its elements sit
// M_{s+1} apart. Consecutive lines are consecutive columns, so a block's memory accesses are
// contiguous runs; in shared memory line c holds points c * M ....
template <bool FORWARD>
__device__ __forceinline__ void columns(const Params& pc, const Buffers& bf, const Divisors& dv) {
    cpx* s = smem;
    u32 first_line = block_index() << pc.lines_log2;
    if (first_line >= pc.total_lines) {
        return;
    }
    u32 m_log2 = pc.line_log2;
    u32 m = 1u << m_log2;
    u32 points = m << pc.lines_log2;
    u32 n = 1u << pc.log2n;
    u32 pair_lines_log2 = pc.log2n - m_log2;
    u32 stride_log2 = pc.stride_log2;
    u32 block_log2 = m_log2 + stride_log2; // M_s
    u32 lines_mask = (1u << pc.lines_log2) - 1u;
    for (u32 i = threadIdx.x; i < points; i += THREADS) {
        u32 c = i & lines_mask;
        u32 e = i >> pc.lines_log2; // element index n_s (forward) or position p (inverse)
        u32 line = first_line + c;
        cpx v = mk(0.0f, 0.0f);
        if (line < pc.total_lines) {
            u32 pair = line >> pair_lines_log2;
            u32 within = line & ((1u << pair_lines_log2) - 1u);
            u32 r = within & ((1u << stride_log2) - 1u);
            u32 pos = ((within >> stride_log2) << block_log2) + (e << stride_log2) + r;
            if (FORWARD) {
                if ((pc.flags & FLAG_SRC_INPUT) != 0u) {
                    u32 h = udiv(pair, dv.pairs);
                    u32 q = pair - h * pc.pairs;
                    v = mk(segment_value(pc, bf, dv, 2u * q, h, pos),
                           segment_value(pc, bf, dv, 2u * q + 1u, h, pos));
                } else {
                    v = bf.tmp[(u64)pair * n + pos];
                }
            } else {
                // Position e holds k_s = bitrev(e); undo the twiddle W_{M_s}^{r k_s}.
                v = cmul(bf.tmp[(u64)pair * n + pos],
                         conj_c(root(pc, bf, r * bit_reverse(e, m_log2), block_log2)));
            }
        }
        s[SIDX((c << m_log2) + e)] = v;
    }
    __syncthreads();
    if (FORWARD) {
        fft_forward(s, pc, bf, m_log2);
    } else {
        fft_inverse(s, pc, bf, m_log2);
    }
    for (u32 i = threadIdx.x; i < points; i += THREADS) {
        u32 c = i & lines_mask;
        u32 e = i >> pc.lines_log2;
        u32 line = first_line + c;
        if (line < pc.total_lines) {
            u32 pair = line >> pair_lines_log2;
            u32 within = line & ((1u << pair_lines_log2) - 1u);
            u32 r = within & ((1u << stride_log2) - 1u);
            u32 pos = ((within >> stride_log2) << block_log2) + (e << stride_log2) + r;
            cpx v = s[SIDX((c << m_log2) + e)];
            if (FORWARD) {
                // Position e holds k_s = bitrev(e): apply the twiddle W_{M_s}^{r k_s}.
                bf.tmp[(u64)pair * n + pos] =
                    cmul(v, root(pc, bf, r * bit_reverse(e, m_log2), block_log2));
            } else {
                store_result(pc, bf, dv, pair, pos, v);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    fftconv_columns_forward(const Params pc, const Buffers bf, const Divisors dv) {
    columns<true>(pc, bf, dv);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    fftconv_columns_inverse(const Params pc, const Buffers bf, const Divisors dv) {
    columns<false>(pc, bf, dv);
}

// Backward: the adjoint result of segment (b, block j) of channel h at position p (from tmp).
__device__ __forceinline__ float segment_gradient(const Params& pc, const Buffers& bf, u32 b,
                                                  u32 h, u32 j, u32 p) {
    u32 seg = b * pc.blocks + j;
    cpx v = bf.tmp[((u64)h * pc.pairs + (seg >> 1)) * (1u << pc.log2n) + p];
    return (seg & 1u) == 0u ? v.x : v.y;
}

// One thread per element (b, h, t) of the chunk: the input gradient dx is the sum of the adjoint
// segment results (in tmp) at every position that read this input: its block's body, the
// history of later blocks, and (circular) the wrapped history of the first ones.
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    fftconv_gather(const Params pc, const Buffers bf, const Divisors dv) {
    u32 e = (block_index() << pc.lines_log2) + threadIdx.x;
    if (e >= pc.total_lines) {
        return;
    }
    u32 n = 1u << pc.log2n;
    u32 row = udiv(e, dv.seq_len);
    u32 t = e - row * pc.seq_len;
    u32 b = udiv(row, dv.channels);
    u32 h = row - b * pc.channels;
    u32 j = udiv(t, dv.block_len);
    float dx = segment_gradient(pc, bf, b, h, j, t - j * pc.block_len);
    for (u32 jj = j + 1u; jj < pc.blocks; jj++) {
        u32 back = jj * pc.block_len - t;
        if (back > pc.history) {
            break;
        }
        dx += segment_gradient(pc, bf, b, h, jj, n - back);
    }
    if ((pc.flags & FLAG_WRAPS) != 0u) {
        for (u32 jj = 0u; jj < pc.blocks; jj++) {
            u32 start = jj * pc.block_len;
            if (start >= pc.history) {
                break;
            }
            u32 back = start + pc.seq_len - t;
            if (back > start && back <= pc.history) {
                dx += segment_gradient(pc, bf, b, h, jj, n - back);
            }
        }
    }
    u32 idx = pc.element_offset + (b * pc.batch_stride + h) * pc.seq_len + t;
    if ((pc.flags & FLAG_GATED) != 0u) {
        bf.y[idx] = from_float(dx * to_float(bf.pre[idx]));
        bf.y2[idx] = from_float(dx * to_float(bf.u[idx]));
    } else {
        bf.y[idx] = from_float(dx);
    }
}

// One thread per (channel h, tap s) of the chunk: adds the sum over the channel's pairs of the
// taps (a pair's taps are the sum of its two segments' filter gradients) into the filter
// gradient dk[channel_offset + h][s], in f32 (chunks run one after another on one stream).
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    fftconv_taps_sum(const Params pc, const Buffers bf, const Divisors dv) {
    u32 e = (block_index() << pc.lines_log2) + threadIdx.x;
    if (e >= pc.total_lines) {
        return;
    }
    u32 h = udiv(e, dv.taps_len);
    u32 s = e - h * pc.taps_len;
    const float* src = bf.taps + (u64)h * pc.pairs * pc.taps_len + s;
    float sum = 0.0f;
    for (u32 p = 0u; p < pc.pairs; p++) {
        sum += src[(u64)p * pc.taps_len];
    }
    bf.taps_sum[(u64)(pc.channel_offset + h) * pc.taps_len + s] += sum;
}

// The whole backward per ROW, for rows that are one overlap-save segment each (blocks == 1) and
// whose FFT fits one block: one shared-memory line per row (two when gated), 2^lines_log2 rows
// per block (at most BACKWARD_ROWS). Row r of the chunk is segment 2q + (r & 1) of channel h,
// where r >> 1 = h pairs + q (the pairs' order). Per row:
//   z = x + i s d, with x = pre * u, d = dy * post;
//   Z = FFT(z); for each pair of frequencies f, g = N - f (g = f at 0 and N/2):
//     X(f) = (Z(f) + conj Z(g)) / 2,  D(f) = (Z(f) - conj Z(g)) / (2 i s),
//     T = D conj(X) kept / N (the taps' spectrum), G = D conj(K) (the adjoint's),
//     P = X K (gated: the post-gate's);
//   W(f) = T(f) + i σ G(f), W(g) = conj T(f) + i σ conj G(f) (T, G Hermitian: real signals);
//   IFFT(W) = taps + i σ dseg: taps[t < K] out (per row; fftconv_taps_sum adds the rows up),
//     dx[t] = dseg[t] (+ dseg[N - (L - t)] where circular history wraps), du = pre dx,
//     dpre = u dx (gated);  IFFT(P) = c: dpost = dy c (gated).
// s and σ are powers of two that bring d's largest finite magnitude in the row to x's and G's to
// T's: two real signals share one complex transform, whose rounding is relative to the larger,
// so without them a dy 2^-12 the size of u (or a u 2^-12 the size of dy) loses 12 bits.
// One forward and one inverse transform per row (two inverse when gated): the count of the
// pair-packed forward's two per pair, in a third of the old three-lines-per-pair memory.
// Dynamic shared memory: lines * 2^lines_log2 * N points (padded), then 4 * BACKWARD_ROWS u32
// (each row's largest |x|, |d|, |T|, |G| bits), then BACKWARD_ROWS BackwardRow (each row's
// channel and located segment, found once per block instead of once per point).
#define BACKWARD_ROWS 16u
// Slot 3's value for a row whose G has a non-finite bin (above every finite magnitude).
#define G_NONFINITE 0xffffffffu

struct BackwardRow {
    SegmentRow seg;
    u32 h;
    u32 unused;
};


// A thread's running maxima (float bits: an unsigned max is exact and order-free) of two
// quantities of the row it is working on, added to the block's `row_max[slot][row]` (slots
// `slot`, `slot + 1`) whenever it moves to another row, and at the end.
struct RowMaxima {
    u32 line;
    u32 a;
    u32 b;
};

// *p = max(*p, v) for a shared-memory word, atomically (PTX `red` on a generic address: NVRTC and
// clang's CUDA mode without CUDA's headers both take it).
__device__ __forceinline__ void atomic_max_u32(u32* p, u32 v) {
#if defined(FFTCONV_HOST_EMULATION)
    // Fibers hand over only at barriers: a plain read-modify-write is atomic there.
    if (v > *p) {
        *p = v;
    }
#else
    asm volatile("red.max.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
#endif
}

__device__ __forceinline__ void row_maxima_flush(RowMaxima& m, u32* row_max, u32 slot) {
    if (m.line != 0xffffffffu) {
        atomic_max_u32(&row_max[slot * BACKWARD_ROWS + m.line], m.a);
        atomic_max_u32(&row_max[(slot + 1u) * BACKWARD_ROWS + m.line], m.b);
    }
    m.a = 0u;
    m.b = 0u;
}

__device__ __forceinline__ void row_maxima_at(RowMaxima& m, u32* row_max, u32 slot, u32 line) {
    if (line != m.line) {
        row_maxima_flush(m, row_max, slot);
        m.line = line;
    }
}

// log2 of the power of two that brings slot + 1's maximum to slot's for row `line`: 0 where either
// is zero or subnormal throughout; clamped so that 2^k and 2^(-k-1) are normal floats.
__device__ __forceinline__ int row_scale_log2(const u32* row_max, u32 slot, u32 line) {
    int e0 = (int)(row_max[slot * BACKWARD_ROWS + line] >> 23);
    int e1 = (int)(row_max[(slot + 1u) * BACKWARD_ROWS + line] >> 23);
    int k = e0 == 0 || e1 == 0 ? 0 : e0 - e1;
    return k < -125 ? -125 : (k > 125 ? 125 : k);
}

__device__ __forceinline__ float pow2(int k) { return bits_float((u32)(127 + k) << 23); }

__device__ __forceinline__ void backward_row(const Params& pc, const Divisors& dv, u32 r, u32& h,
                                             u32& seg) {
    u32 pair = r >> 1;
    h = udiv(pair, dv.pairs);
    seg = 2u * (pair - h * pc.pairs) + (r & 1u);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    fftconv_backward_fused(const Params pc, const Buffers bf, const Divisors dv) {
    u32 first_row = block_index() << pc.lines_log2;
    if (first_row >= pc.total_lines || pc.lines_log2 > 4u) { // 2^4 = BACKWARD_ROWS
        return;
    }
    u32 m_log2 = pc.log2n;
    u32 n = 1u << m_log2;
    u32 points = n << pc.lines_log2;
    bool gated = (pc.flags & FLAG_GATED) != 0u;
    cpx* w = smem;
    cpx* p = smem + SIDX(points);
    u32* row_max = (u32*)(smem + SIDX(gated ? 2u * points : points)); // [4][BACKWARD_ROWS]
    BackwardRow* rows = (BackwardRow*)(row_max + 4u * BACKWARD_ROWS);
    for (u32 i = threadIdx.x; i < 4u * BACKWARD_ROWS; i += THREADS) {
        row_max[i] = 0u;
    }
    for (u32 line = threadIdx.x; line < (1u << pc.lines_log2); line += THREADS) {
        BackwardRow info;
        info.seg.valid = 0u;
        info.h = 0u;
        info.unused = 0u;
        u32 r = first_row + line;
        if (r < pc.total_lines) {
            u32 seg;
            backward_row(pc, dv, r, info.h, seg);
            info.seg = locate_segment(pc, dv, seg, info.h);
        }
        rows[line] = info;
    }
    __syncthreads();
    u32 dy_flags = pc.flags | FLAG_BODY_ONLY;
    // Load z = x + i d (unscaled) and each row's largest |x| and |d| (slots 0, 1). VECTOR_IO:
    // VEC points of a row per thread (see vector_rows), the rest below.
    RowMaxima m = {0xffffffffu, 0u, 0u};
    bool vec_in = VECTOR_IO && vector_rows(pc, bf.u, bf.pre) && vector_rows(pc, bf.u2, bf.post);
    if (vec_in) {
        for (u32 c = threadIdx.x; c < points / VEC; c += THREADS) {
            u32 i = c * VEC;
            u32 line = i >> m_log2;
            row_maxima_at(m, row_max, 0u, line);
            float a[VEC], b[VEC];
#pragma unroll
            for (u32 k = 0u; k < VEC; k++) {
                a[k] = 0.0f;
                b[k] = 0.0f;
            }
            if (first_row + line < pc.total_lines) {
                SegmentRow row = rows[line].seg;
                u32 pos = i & (n - 1u);
                segment_input_vec(pc, dv, bf.u, bf.pre, pc.flags, row, pos, a);
                segment_input_vec(pc, dv, bf.u2, bf.post, dy_flags, row, pos, b);
            }
#pragma unroll
            for (u32 k = 0u; k < VEC; k++) {
                m.a = max_u(m.a, finite_bits(a[k]));
                m.b = max_u(m.b, finite_bits(b[k]));
                w[SIDX(i + k)] = mk(a[k], b[k]);
            }
        }
    }
    for (u32 i = vec_in ? points : threadIdx.x; i < points; i += THREADS) {
        u32 line = i >> m_log2;
        row_maxima_at(m, row_max, 0u, line);
        cpx z = mk(0.0f, 0.0f);
        if (first_row + line < pc.total_lines) {
            SegmentRow row = rows[line].seg;
            u32 pos = i & (n - 1u);
            z = mk(segment_input_at(pc, dv, bf.u, bf.pre, pc.flags, row, pos),
                   segment_input_at(pc, dv, bf.u2, bf.post, dy_flags, row, pos));
        }
        m.a = max_u(m.a, finite_bits(z.x));
        m.b = max_u(m.b, finite_bits(z.y));
        w[SIDX(i)] = z;
    }
    row_maxima_flush(m, row_max, 0u);
    __syncthreads();
    for (u32 i = threadIdx.x; i < points; i += THREADS) {
        w[SIDX(i)].y *= pow2(row_scale_log2(row_max, 0u, i >> m_log2));
    }
    __syncthreads();
    fft_forward(w, pc, bf, m_log2);
    __syncthreads();
    // Split Z into X and D per pair of frequencies (f, N - f): item (line, f) for f < N/2, where
    // f = 0 also takes N/2 (both their own mirror). T(f) goes to f's position and G(f) to g's
    // (a self-mirrored bin holds the real T + i G); each row's largest |T|, |G| to slots 2, 3.
    float inv_n = 1.0f / (float)n;
    u32 half_log2 = m_log2 - 1u;
    m = {0xffffffffu, 0u, 0u};
    for (u32 i = threadIdx.x; i < (points >> 1); i += THREADS) {
        u32 line = i >> half_log2;
        row_maxima_at(m, row_max, 2u, line);
        u32 f0 = i & ((n >> 1) - 1u);
        u32 r = first_row + line;
        u32 h = rows[line].h;
        float half_inv_s = pow2(-1 - row_scale_log2(row_max, 0u, line)); // 1 / (2 s)
        u32 base = line << m_log2;
        for (u32 twice = 0u; twice < (f0 == 0u ? 2u : 1u); twice++) {
            u32 f = twice == 0u ? f0 : (n >> 1);
            u32 g = (n - f) & (n - 1u);
            u32 ip = base + bit_reverse(f, m_log2);
            u32 jp = base + bit_reverse(g, m_log2);
            cpx zf = w[SIDX(ip)];
            cpx zg = conj_c(w[SIDX(jp)]);
            cpx x = mk(0.5f * (zf.x + zg.x), 0.5f * (zf.y + zg.y));
            // (Z(f) - conj Z(g)) / (2 i s) = -i (Z(f) - conj Z(g)) / (2 s)
            cpx d = mk((zf.y - zg.y) * half_inv_s, -(zf.x - zg.x) * half_inv_s);
            cpx t = mk(0.0f, 0.0f);
            if (bin_kept(pc, f)) {
                t = cmul(d, mk(x.x * inv_n, -x.y * inv_n));
            }
            cpx kf = r < pc.total_lines ? filter_bin(pc, bf, h, f) : mk(0.0f, 0.0f);
            cpx gk = cmul(d, conj_c(kf));
            cpx pk = cmul(x, kf);
            // A non-finite G (a NaN or infinite filter) must not reach T through the shared
            // inverse transform: its bins go in as zeros, and slot 3 holds G_NONFINITE, so that
            // the row's dx comes out NaN (its taps do not depend on the filter).
            const bool g_finite = finite_c(gk);
            if (!g_finite) {
                gk = mk(0.0f, 0.0f);
            }
            if (ip == jp) {
                // Its own mirror: T, G and P are real there (up to rounding).
                t.y = 0.0f;
                gk.y = 0.0f;
                w[SIDX(ip)] = mk(t.x, gk.x);
                if (gated) {
                    p[SIDX(ip)] = mk(pk.x, 0.0f);
                }
            } else {
                w[SIDX(ip)] = t;
                w[SIDX(jp)] = gk;
                if (gated) {
                    p[SIDX(ip)] = pk;
                    p[SIDX(jp)] = conj_c(pk);
                }
            }
            m.a = max_u(m.a, finite_magnitude(t));
            m.b = max_u(m.b, g_finite ? finite_magnitude(gk) : G_NONFINITE);
        }
    }
    row_maxima_flush(m, row_max, 2u);
    __syncthreads();
    // W = T + i σ G, σ = 2^row_scale_log2(slots 2, 3).
    for (u32 i = threadIdx.x; i < (points >> 1); i += THREADS) {
        u32 line = i >> half_log2;
        u32 f = i & ((n >> 1) - 1u);
        float sigma = pow2(row_scale_log2(row_max, 2u, line));
        u32 base = line << m_log2;
        u32 ip = base + bit_reverse(f, m_log2);
        if (f == 0u) {
            u32 iq = base + bit_reverse(n >> 1, m_log2);
            w[SIDX(ip)].y *= sigma;
            w[SIDX(iq)].y *= sigma;
            continue;
        }
        u32 jp = base + bit_reverse(n - f, m_log2);
        cpx t = w[SIDX(ip)];
        cpx gk = w[SIDX(jp)];
        gk = mk(gk.x * sigma, gk.y * sigma);
        w[SIDX(ip)] = mk(t.x - gk.y, t.y + gk.x);
        w[SIDX(jp)] = mk(t.x + gk.y, gk.x - t.y);
    }
    __syncthreads();
    fft_inverse(w, pc, bf, m_log2);
    if (gated) {
        __syncthreads();
        fft_inverse(p, pc, bf, m_log2);
    }
    __syncthreads();
    bool vec_out = VECTOR_IO && vector_rows(pc, bf.y, bf.pre) &&
                   (!gated || (vector_rows(pc, bf.y2, bf.u) && vector_rows(pc, bf.y3, bf.u2)));
    if (vec_out) {
        for (u32 c = threadIdx.x; c < points / VEC; c += THREADS) {
            u32 i = c * VEC;
            u32 line = i >> m_log2;
            u32 r = first_row + line;
            u32 t0 = i & (n - 1u);
            if (r >= pc.total_lines) {
                continue;
            }
            float unscale = row_max[3u * BACKWARD_ROWS + line] == G_NONFINITE
                                ? bits_float(0x7fc00000u)
                                : pow2(-row_scale_log2(row_max, 2u, line));
            float dx[VEC], cg[VEC];
#pragma unroll
            for (u32 k = 0u; k < VEC; k++) {
                u32 t = t0 + k;
                cpx v = w[SIDX(i + k)];
                if (t < pc.taps_len) {
                    bf.taps[(u64)r * pc.taps_len + t] = v.x;
                }
                if ((pc.flags & FLAG_WRAPS) != 0u && t < pc.seq_len &&
                    pc.seq_len - t <= pc.history) {
                    v.y += w[SIDX((line << m_log2) + n - (pc.seq_len - t))].y;
                }
                dx[k] = v.y * unscale;
                cg[k] = gated ? p[SIDX(i + k)].x : 0.0f;
            }
            SegmentRow row = rows[line].seg;
            if (t0 >= pc.seq_len || row.valid == 0u) {
                continue;
            }
            store_segment_vec(pc, bf.y, bf.pre, row, t0, dx);
            if (gated) {
                store_segment_vec(pc, bf.y2, bf.u, row, t0, dx);
                store_segment_vec(pc, bf.y3, bf.u2, row, t0, cg);
            }
        }
    }
    for (u32 i = vec_out ? points : threadIdx.x; i < points; i += THREADS) {
        u32 line = i >> m_log2;
        u32 r = first_row + line;
        u32 t = i & (n - 1u);
        if (r >= pc.total_lines) {
            continue;
        }
        if (t < pc.taps_len) {
            bf.taps[(u64)r * pc.taps_len + t] = w[SIDX(i)].x;
        }
        if (t >= pc.seq_len) {
            continue;
        }
        SegmentRow row = rows[line].seg;
        if (row.valid == 0u) {
            continue;
        }
        float dx = w[SIDX(i)].y;
        if ((pc.flags & FLAG_WRAPS) != 0u && pc.seq_len - t <= pc.history) {
            dx += w[SIDX((line << m_log2) + n - (pc.seq_len - t))].y;
        }
        dx *= row_max[3u * BACKWARD_ROWS + line] == G_NONFINITE
                  ? bits_float(0x7fc00000u)
                  : pow2(-row_scale_log2(row_max, 2u, line));
        u32 idx = row.row_base + t;
        if (gated) {
            bf.y[idx] = from_float(dx * to_float(bf.pre[idx]));
            bf.y2[idx] = from_float(dx * to_float(bf.u[idx]));
            store_segment_at(pc, bf.y3, bf.u2, row, t, p[SIDX(i)].x);
        } else {
            bf.y[idx] = from_float(dx);
        }
    }
}

// ---- the cuFFT baseline's elementwise kernels (benchmark reference, not the library path) -----
//
// The baseline convolves rows with cuFFT R2C -> product -> C2R around these kernels, in chunks of
// `total_lines / N` rows starting at row `element_offset / seq_len`; `taps_len` holds the bins
// per row (N/2 + 1). Buffers: u, y as usual, `tmp` the real rows (f32, N per row), `other` the
// complex rows (bins per row), `spectrum` the filter's bins per channel (scaled by 1/N).

// Real rows: u zero-padded from L to N, as f32.
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    fftconv_baseline_pad(const Params pc, const Buffers bf, const Divisors dv) {
    (void)dv;
    u32 e = (block_index() << pc.lines_log2) + threadIdx.x;
    if (e >= pc.total_lines) {
        return;
    }
    u32 row = e >> pc.log2n;
    u32 t = e & ((1u << pc.log2n) - 1u);
    float v = t < pc.seq_len ? to_float(bf.u[pc.element_offset + row * pc.seq_len + t]) : 0.0f;
    ((float*)bf.tmp)[e] = v;
}

// Complex rows times the filter bins of each row's channel.
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    fftconv_baseline_product(const Params pc, const Buffers bf, const Divisors dv) {
    u32 e = (block_index() << pc.lines_log2) + threadIdx.x;
    if (e >= pc.total_lines) {
        return;
    }
    u32 row = udiv(e, dv.taps_len);
    u32 bin = e - row * pc.taps_len;
    u32 global_row = udiv(pc.element_offset, dv.seq_len) + row;
    u32 h = global_row - udiv(global_row, dv.channels) * pc.channels;
    cpx* rows = (cpx*)bf.other;
    rows[e] = cmul(rows[e], load_ro(bf.spectrum + (u64)h * pc.taps_len + bin));
}

// y: the first L of each real row, in the I/O type.
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    fftconv_baseline_crop(const Params pc, const Buffers bf, const Divisors dv) {
    u32 e = (block_index() << pc.lines_log2) + threadIdx.x;
    if (e >= pc.total_lines) {
        return;
    }
    u32 row = udiv(e, dv.seq_len);
    u32 t = e - row * pc.seq_len;
    bf.y[pc.element_offset + e] = from_float(((const float*)bf.tmp)[((u64)row << pc.log2n) + t]);
}

// ---- filter preparation on the GPU -----------------------------------------------------------
//
// The filter rows k[h] are transformed by the forward passes like a problem of `segments` rows of
// length taps_len (pairs of rows packed as a + i b; FLAG_NO_INVERSE leaves each pair's spectrum
// Z in tmp in the plan's permuted order). This kernel unpacks each pair into the Hermitian half
// spectra of its two rows, natural order, kept bins only, scaled by 1/N:
//   A(f) = (Z(f) + conj Z(N - f)) / 2,  B(f) = (Z(f) - conj Z(N - f)) / 2i.
// One thread per (row c < segments, bin f < kept_bins); row c goes to spectrum channel
// channel_offset + c. stage_bits / stage_count / line_log2 describe the permutation (as in the
// fused pass).

// Position in a pair's spectrum (permuted order) that holds frequency f.
__device__ __forceinline__ u32 frequency_position(const Params& pc, u32 f) {
    u32 pos = 0u;
    u32 shift = pc.log2n;
    for (u32 st = 0u; st < pc.stage_count; st++) {
        u32 bits = (pc.stage_bits >> (5u * st)) & 31u;
        shift -= bits;
        pos |= bit_reverse(f & ((1u << bits) - 1u), bits) << shift;
        f >>= bits;
    }
    return pos | bit_reverse(f, pc.line_log2);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    fftconv_filter_unpack(const Params pc, const Buffers bf, const Divisors dv) {
    (void)dv;
    u32 e = (block_index() << pc.lines_log2) + threadIdx.x;
    if (e >= pc.total_lines) {
        return;
    }
    u32 c = e / pc.kept_bins;
    u32 f = e - c * pc.kept_bins;
    u32 n = 1u << pc.log2n;
    const cpx* z = bf.tmp + (u64)(c >> 1) * n;
    cpx zf = z[frequency_position(pc, f)];
    cpx zm = conj_c(z[frequency_position(pc, (n - f) & (n - 1u))]);
    float scale = 0.5f / (float)n;
    cpx v;
    if ((c & 1u) == 0u) {
        v = mk((zf.x + zm.x) * scale, (zf.y + zm.y) * scale);
    } else {
        // (Z(f) - conj Z(-f)) / 2i = -i (Z(f) - conj Z(-f)) / 2
        cpx d = csub(zf, zm);
        v = mk(d.y * scale, -d.x * scale);
    }
    ((cpx*)bf.other)[(u64)(pc.channel_offset + c) * pc.kept_bins + f] = v;
}

// ---- the Monarch tensor-core pass (MONARCH_TC=1; compute capability >= 8.0) --------------------
//
// fftconv_monarch: the whole forward of one-pass plans with N = 256 .. 4096 (N = N1 * 256,
// N1 = 1 .. 16; fftconv_monarch_wide below takes 8192 and 16384) whose rows are one segment each, f16 / bf16 I/O, with the data in f16 tensor-core
// fragments instead of f32 points in shared memory. A block (256 threads, 8 warps) holds 16 rows
// of 256 points: P = 16 / N1 pairs, row R = p N1 + a holding positions 256 a + r of pair p, as
// two f16 planes (Re and Im) in static shared memory. With r = 16 b + c and frequencies
// k = k_a + N1 (k_b + 16 k_c):
//   load   u (pre-gated) in f32; each row scaled by a power of two taking its largest finite
//          |value| into [2^13, 2^14) (the pair's two rows separately: the filter is real, so
//          Re and Im stay the two rows' convolutions), stored as f16
//   S1     (N1 > 1) the DFT over a for every column r: one mma tile of 16 rows x 8 columns
//          with the block-diagonal matrix diag(F_N1, ...) / (2 N1), then W_N^(r k_a), in place
//   S2     per row (one warp): the 256-point DFT as two 16 x 16 products chained in registers
//          (P1: F16 Z contracts b; W_256^(c k_b); P2: (.) F16 contracts c: the D fragments of
//          P1 are the A fragments of P2), the product with the filter, the inverse (P3: (.) conj
//          F16 contracts k_c; conj W_256^(c k_b); movmatrix turns the A fragments into the B
//          fragments of P4 = conj F16 (.), contracting k_b), then conj W_N^(r k_a); in place
//          (launches keeping at most half the spectrum run compact rows: P2, the product and P3
//          on the 8 kept k_c only; see MtSpectrum)
//   S3     (N1 > 1) the inverse DFT over k_a, block-diagonal conj F_N1 / (2 N1)
//   store  y = (f16 result) * (2N)^2 (or 256^2 for N1 = 1) * s_k / s_row, post-gated
// Every DFT matrix carries 1/16 (1/(2 N1) for S1 and S3) and the filter is divided by a power
// of two s_k >= max |Re| + |Im| of its channel (fftconv_monarch_filter), so no f16 operand can
// exceed 2^14 sqrt(2) (1 + small): nothing overflows, whatever the row and filter scales.
#if MONARCH_TC
#define MT_THREADS 256u
// Threads per block of the kernels that hold a 16K-point row's plane sets in one block per SM
// (fftconv_monarch_backward_wide, fftconv_monarch_backward_middle): 16 warps per SM. The host's
// FFTCONV_CUDA_MONARCH_WIDE_THREADS=256 sets 256 (launching them with as many), for A/B runs.
#ifndef MT_WIDE_THREADS
#define MT_WIDE_THREADS 512u
#endif
// Blocks per SM that fftconv_monarch, fftconv_monarch_backward and _backward_wide_8k leave
// registers for (the host's FFTCONV_CUDA_MONARCH_MIN_BLOCKS sets MT_MIN_BLOCKS, for A/B runs).
// 2 for all: on the H200 the backward's 167 registers at 1 held it to 8 warps per SM, 1.6-1.7x
// slower.
#ifndef MT_MIN_BLOCKS
#define MT_MIN_BLOCKS 2
#endif
// The same for fftconv_monarch alone (the host's FFTCONV_CUDA_MONARCH_MIN_BLOCKS sets both): 3,
// 80 registers and 188 B of spills, 24 warps per SM instead of 16. On the H200 (session 17,
// one run) 3-8% faster from 256 to 4K than at 2; the backward kernels spill 500-700 B at 3.
#ifndef MT_FORWARD_MIN_BLOCKS
#define MT_FORWARD_MIN_BLOCKS 3
#endif
#define MT_ROW 264u // halves per shared row: 256 points and 8 of padding (ldmatrix bank spread)

#if defined(FFTCONV_HOST_EMULATION)
static const u16* emu_ldsm_row[EMU_SLOTS];
static u32 emu_movm[EMU_SLOTS];
// ldmatrix.x4.trans: matrix j's row i starts at lane 8 j + i's pointer; lane l receives
// (row 2 (l & 3), col l >> 2) and (row 2 (l & 3) + 1, col l >> 2) of each matrix.
__device__ __forceinline__ void ldsm_x4_trans(const u16* row, u32 r[4]) {
    emu_ldsm_row[emu_slot()] = row;
    __syncwarp();
    u32 w0 = emu_slot() & ~31u, l = threadIdx.x & 31u;
    for (u32 j = 0; j < 4u; j++) {
        const u16* r0 = emu_ldsm_row[w0 + 8u * j + 2u * (l & 3u)];
        const u16* r1 = emu_ldsm_row[w0 + 8u * j + 2u * (l & 3u) + 1u];
        r[j] = (u32)r0[l >> 2] | ((u32)r1[l >> 2] << 16);
    }
    __syncwarp();
}
// movmatrix.trans: lane L holds M[L >> 2][2 (L & 3) + h]; returns M^T in the same layout.
__device__ __forceinline__ u32 movm_trans(u32 v) {
    emu_movm[emu_slot()] = v;
    __syncwarp();
    u32 w0 = emu_slot() & ~31u, l = threadIdx.x & 31u;
    u32 out = 0u;
    for (u32 h = 0; h < 2u; h++) {
        u32 row = 2u * (l & 3u) + h, col = l >> 2;
        u32 w = emu_movm[w0 + 4u * row + (col >> 1)];
        out |= ((col & 1u) != 0u ? w >> 16 : w & 0xffffu) << (16u * h);
    }
    __syncwarp();
    return out;
}
__device__ __forceinline__ void shared_max(u32* p, u32 v) { *p = max_u(*p, v); }
__device__ __forceinline__ void warp_shared_max(u32* p, u32 v) { shared_max(p, v); }
__device__ __forceinline__ void shared_add(float* p, float v) { *p += v; }
__device__ __forceinline__ float half_float(u32 bits) { return f16_value(bits & 0xffffu); }
#else
__device__ __forceinline__ u32 shared_address(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ void ldsm_x4_trans(const u16* row, u32 r[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}
__device__ __forceinline__ u32 movm_trans(u32 v) {
    u32 d;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(d) : "r"(v));
    return d;
}
__device__ __forceinline__ void shared_max(u32* p, u32 v) {
    asm volatile("red.shared.max.u32 [%0], %1;" ::"r"(shared_address(p)), "r"(v) : "memory");
}
// shared_max of a word the whole warp targets, from all 32 lanes (converged): the warp's
// maximum first (redux.sync, sm_80), then one lane's red.shared (session 16's ncu run: 32
// lanes on one word were half of the 4K forward's excess shared wavefronts).
__device__ __forceinline__ void warp_shared_max(u32* p, u32 v) {
    u32 m;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(m) : "r"(v));
    if ((threadIdx.x & 31u) == 0u) {
        shared_max(p, m);
    }
}
__device__ __forceinline__ void shared_add(float* p, float v) {
    asm volatile("red.shared.add.f32 [%0], %1;" ::"r"(shared_address(p)), "f"(v) : "memory");
}
__device__ __forceinline__ float half_float(u32 bits) {
    float f;
    asm("{ .reg .b16 h; cvt.u16.u32 h, %1; cvt.f32.f16 %0, h; }" : "=f"(f) : "r"(bits));
    return f;
}
#endif

struct alignas(16) Quad {
    u32 w[4];
};

// segment_input_vec for positions pos .. pos + 7 (pos a multiple of 8). The Monarch kernels
// move rows 16 bytes at a time only: the host launches them where vector_rows holds for every
// stream (rows of a multiple of VEC elements from such an element, 16-byte aligned buffers;
// `monarch_launches` and `monarch_rows_aligned` of src/convolution.rs). A scalar fallback in
// the kernels cost fftconv_monarch_wide ~750 bytes of spills.
__device__ __forceinline__ void mt_input8(const Params& pc, const Divisors& dv, const elem_t* src,
                                          const elem_t* gate, u32 flags, SegmentRow r, u32 pos,
                                          float v[8]) {
#pragma unroll
    for (u32 o = 0; o < 8u; o += VEC) {
        segment_input_vec(pc, dv, src, gate, flags, r, pos + o, &v[o]);
    }
}

// store_segment_vec for positions pos .. pos + 7, as mt_input8.
__device__ __forceinline__ void mt_output8(const Params& pc, elem_t* dst, const elem_t* gate,
                                           SegmentRow r, u32 pos, const float v[8]) {
#pragma unroll
    for (u32 o = 0; o < 8u; o += VEC) {
        store_segment_vec(pc, dst, gate, r, pos + o, &v[o]);
    }
}

// ---- the prefetching forward's staging (fftconv_monarch_prefetch) ----------------------------
//
// A block of fftconv_monarch_prefetch runs several tiles (a tile: fftconv_monarch's 16 rows of
// 256 points) one after another, and copies the next tile's input rows into shared memory
// (cp.async, sm_80) while it transforms the current one, so the rows' global latency is hidden
// behind the tile's FFTs instead of stalling every warp of the block at its start. Each thread
// stages exactly the 16-byte vectors it will read itself (slot j of thread t at vector
// j * MT_THREADS + t: conflict-free), so its own cp.async.wait_all is the only synchronisation
// the staging needs; a vector that is not wholly among a row's outputs (the zero padding,
// circular history, a row's ragged end) is not staged and goes through segment_input_vec as in
// fftconv_monarch.

// Staged 16-byte vectors per thread and input stream: 2 chunks x 2 rows x 8 / VEC vectors.
#define MT_STAGE_SLOTS (2u * 2u * (8u / VEC))

// The first slot of this thread's chunk k, row s (mt_stage8, mt_staged_input8).
__device__ __forceinline__ u32 mt_stage_slot(u32 k, u32 s) { return (2u * k + s) * (8u / VEC); }

// Whether the VEC elements of segment `r` from position `pos` are staged (read wholly from the
// stream: segment_input_vec's vector branch).
__device__ __forceinline__ bool mt_vector_staged(SegmentRow r, u32 pos) {
    return r.valid != 0u && pos + VEC <= r.outputs;
}

#if defined(FFTCONV_HOST_EMULATION)
// The harness's cp.async (shim.h): the 16 bytes are read at the call, the destination reads NaN
// until the thread's next wait, which writes them.
__device__ __forceinline__ void mt_copy_async16(Quad* dst, const elem_t* src) {
    if (((u64)src & 15u) != 0u || ((u64)dst & 15u) != 0u) {
        __builtin_trap(); // cp.async of 16 bytes faults on a GPU (misaligned address)
    }
    emu_copy_async16(dst, src);
}
__device__ __forceinline__ void mt_copy_async_commit() {}
__device__ __forceinline__ void mt_copy_async_wait() { emu_copy_async_wait(); }
#else
__device__ __forceinline__ void mt_copy_async16(Quad* dst, const elem_t* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(shared_address(dst)),
                 "l"(src)
                 : "memory");
}
__device__ __forceinline__ void mt_copy_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
__device__ __forceinline__ void mt_copy_async_wait() {
    asm volatile("cp.async.wait_all;" ::: "memory");
}
#endif

// Starts the copies of this thread's staged vectors of chunk (k, s) (segment `r`, positions pos
// .. pos + 7) into its slots from `slot` (and the gate's MT_STAGE_SLOTS later where `flags` has
// FLAG_GATED).
__device__ __forceinline__ void mt_stage8(const elem_t* src, const elem_t* gate, u32 flags,
                                          SegmentRow r, u32 pos, Quad* stage, u32 slot) {
#pragma unroll
    for (u32 o = 0; o < 8u; o += VEC) {
        if (mt_vector_staged(r, pos + o)) {
            u32 idx = r.row_base + r.start + pos + o;
            u32 j = (slot + o / VEC) * MT_THREADS + threadIdx.x;
            mt_copy_async16(&stage[j], src + idx);
            if ((flags & FLAG_GATED) != 0u) {
                mt_copy_async16(&stage[j + MT_STAGE_SLOTS * MT_THREADS], gate + idx);
            }
        }
    }
}

// mt_input8 from the staging where mt_stage8 (with the same `flags`) staged the vectors (after
// mt_copy_async_wait), from `src` (segment_input_vec) where it did not.
__device__ __forceinline__ void mt_staged_input8(const Params& pc, const Divisors& dv,
                                                 const elem_t* src, const elem_t* gate, u32 flags,
                                                 SegmentRow r, u32 pos, const Quad* stage,
                                                 u32 slot, float v[8]) {
#pragma unroll
    for (u32 o = 0; o < 8u; o += VEC) {
        if (mt_vector_staged(r, pos + o)) {
            u32 j = (slot + o / VEC) * MT_THREADS + threadIdx.x;
            Vec16 a;
            Quad q = stage[j];
#pragma unroll
            for (u32 w = 0; w < 4u; w++) {
                a.w[w] = q.w[w];
            }
            if ((flags & FLAG_GATED) != 0u) {
                Quad gq = stage[j + MT_STAGE_SLOTS * MT_THREADS];
                Vec16 g;
#pragma unroll
                for (u32 w = 0; w < 4u; w++) {
                    g.w[w] = gq.w[w];
                }
#pragma unroll
                for (u32 e = 0u; e < VEC; e++) {
                    v[o + e] = to_float(a.e[e]) * to_float(g.e[e]);
                }
            } else {
#pragma unroll
                for (u32 e = 0u; e < VEC; e++) {
                    v[o + e] = to_float(a.e[e]);
                }
            }
        } else {
            segment_input_vec(pc, dv, src, gate, flags, r, pos + o, &v[o]);
        }
    }
}

// Folds v[0 .. 8) into mx (the largest finite magnitude, as finite_bits) and replaces any
// non-finite value by 0, returning whether there was one. Two instructions per value on the
// common path (the magnitudes' maximum; inf and NaN lie above every finite magnitude), the
// per-value tests only when the maximum says a value is not finite.
__device__ __forceinline__ bool mt_finite8(float v[8], u32& mx) {
    u32 a = 0u;
#pragma unroll
    for (u32 j = 0; j < 8u; j++) {
        a = max_u(a, float_bits(v[j]) & 0x7fffffffu);
    }
    if (a < 0x7f800000u) {
        mx = max_u(mx, a);
        return false;
    }
#pragma unroll
    for (u32 j = 0; j < 8u; j++) {
        mx = max_u(mx, finite_bits(v[j]));
        if (!finite_f(v[j])) {
            v[j] = 0.0f;
        }
    }
    return true;
}

// 0 where every value folded into it (mt_nonfinite_fold) was finite, NaN otherwise: v * 0
// is 0 for finite v and NaN for inf and NaN (IEEE; fast math would fold it to 0).
// NVRTC predefines __USE_FAST_MATH__ as 0 without --use_fast_math: test its value.
#if defined(__FAST_MATH__) || (defined(__USE_FAST_MATH__) && __USE_FAST_MATH__) ||             \
    (defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__)
#error "the Monarch kernels' non-finite checks need IEEE arithmetic: no fast math"
#endif
__device__ __forceinline__ float mt_nonfinite_fold(float acc, cpx v) {
    return acc + v.x * 0.0f + v.y * 0.0f;
}

// A fragments (this lane's 8 elements) of a 16 x 16 complex matrix given by `value(row, col)`.
template <typename F>
__device__ __forceinline__ void mt_a_fragments(F value, u32 re[4], u32 im[4], u32 neg_im[4]) {
    u32 lane = threadIdx.x & 31u, g = lane >> 2, t = lane & 3u;
#pragma unroll
    for (u32 j = 0; j < 4u; j++) {
        cpx v[2];
#pragma unroll
        for (u32 h = 0; h < 2u; h++) {
            u32 i = 2u * j + h;
            v[h] = value(g + 8u * ((i >> 1) & 1u), 2u * t + (i & 1u) + 8u * (i >> 2));
        }
        re[j] = pack_f16x2(v[0].x, v[1].x);
        im[j] = pack_f16x2(v[0].y, v[1].y);
        neg_im[j] = pack_f16x2(-v[0].y, -v[1].y);
    }
}

// B fragments of the 16 x 16 matrix F_16 / 16 (k x n; n-tiles 0 and 1).
__device__ __forceinline__ void mt_b_dft16(const Params& pc, const Buffers& bf, u32 re[2][2],
                                           u32 im[2][2], u32 neg_im[2][2]) {
    u32 lane = threadIdx.x & 31u, g = lane >> 2, t = lane & 3u;
#pragma unroll
    for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
        for (u32 j = 0; j < 2u; j++) {
            cpx v[2];
#pragma unroll
            for (u32 h = 0; h < 2u; h++) {
                u32 k = 2u * t + h + 8u * j, col = g + 8u * nt;
                cpx w = root(pc, bf, k * col, 4u);
                v[h] = mk(w.x * 0.0625f, w.y * 0.0625f);
            }
            re[nt][j] = pack_f16x2(v[0].x, v[1].x);
            im[nt][j] = pack_f16x2(v[0].y, v[1].y);
            neg_im[nt][j] = pack_f16x2(-v[0].y, -v[1].y);
        }
    }
}

// The A fragments (f16) of the 16 x 16 matrix whose two 16 x 8 D tiles are d[0], d[1].
__device__ __forceinline__ void mt_pack_a(const float d[2][4], u32 a[4]) {
    a[0] = pack_f16x2(d[0][0], d[0][1]);
    a[1] = pack_f16x2(d[0][2], d[0][3]);
    a[2] = pack_f16x2(d[1][0], d[1][1]);
    a[3] = pack_f16x2(d[1][2], d[1][3]);
}

// Power-of-two row scale taking the row's largest finite |value| (bits m) into [2^13, 2^14),
// as the biased exponent of the scale (1 .. 253, so its inverse is a normal float too).
__device__ __forceinline__ u32 mt_row_scale_exponent(u32 m) {
    u32 e = m >> 23;
    u32 s = 267u - (e < 14u ? 14u : e);
    return s > 253u ? 253u : s;
}

// The two f16 planes (Re, Im) of a Monarch block's rows in shared memory, MT_ROW halves a row.
struct MtPlanes {
    u16* p[2];
};

// This lane's A fragments of S1's (FORWARD) or S3's block-diagonal matrix
// diag(F_M, F_M, ...) / (2 M) (conjugated for S3), M = 2^mat_log2.
template <bool FORWARD>
__device__ __forceinline__ void mt_column_fragments(const Params& pc, const Buffers& bf,
                                                    u32 mat_log2, u32 a_re[4], u32 a_im[4],
                                                    u32 a_neg[4]) {
    u32 m = 1u << mat_log2;
    float scale = 0.5f / (float)m;
    mt_a_fragments(
        [&](u32 row, u32 col) {
            if ((row >> mat_log2) != (col >> mat_log2)) {
                return mk(0.0f, 0.0f);
            }
            cpx w = root(pc, bf, (row & (m - 1u)) * (col & (m - 1u)), mat_log2);
            return mk(w.x * scale, (FORWARD ? w.y : -w.y) * scale);
        },
        a_re, a_im, a_neg);
}

// mt_columns_with's forward twiddle steps of this thread for group `grp` (see there): W^(r_l k_a)
// and W^(k_a) of its rows g + 8 hr, gathered.
template <u32 BT = MT_THREADS>
__device__ __forceinline__ void mt_column_twiddles(const Params& pc, const Buffers& bf,
                                                   u32 mat_log2, u32 ka_mul, u32 grp,
                                                   cpx tw_l[2], cpx tw_1[2]) {
    constexpr u32 TILES = 16u / (BT / 32u);
    u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3u;
    u32 m = 1u << mat_log2;
#pragma unroll
    for (u32 hr = 0; hr < 2u; hr++) {
        u32 ka = ((g + 8u * hr) & (m - 1u)) * ka_mul + grp;
        tw_l[hr] = root(pc, bf, (16u * TILES * warp + 2u * t) * ka, pc.log2n);
        tw_1[hr] = root(pc, bf, ka, pc.log2n);
    }
}

// S1 (forward, twiddled by W_N^(r k_a)) or S3 (inverse) on the warp's 256 / (BT / 32) columns
// (BT threads per block: 32 columns a warp at 256, 16 at 512) of `groups` groups of 16 rows, in
// place: per group, the DFT over its rows as one mma tile with the block-diagonal matrix
// diag(F_M, F_M, ...) / (2 M), M = 2^mat_log2 <= 16, whose A fragments are given
// (mt_column_fragments). Row k1 of group g then holds frequency k_a = (k1 mod M) ka_mul + g.
// `tw_table` (groups == 1 only): mt_column_twiddles' values for group 0 from shared memory
// (fftconv_monarch_prefetch's, built once per block): tw_l[hr] at hr BT + thread, tw_1[hr] at
// (2 + hr) BT + thread; nullptr: gathered.
template <bool FORWARD, u32 BT = MT_THREADS>
__device__ __forceinline__ void mt_columns_with(MtPlanes pl, const Params& pc, const Buffers& bf,
                                                u32 mat_log2, u32 groups, u32 ka_mul,
                                                const u32 a_re[4], const u32 a_im[4],
                                                const u32 a_neg[4],
                                                const cpx* tw_table = nullptr) {
    static_assert(BT == 256u || BT == 512u, "16 or 32 columns of 16 per warp");
    constexpr u32 TILES = 16u / (BT / 32u); // 16-column tiles per warp
    u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3u;
    static_assert(TILES <= 2u, "the twiddle steps below cover d = 0, 1");
#pragma unroll 1
    for (u32 grp = 0; grp < groups; grp++) {
        u16* re = pl.p[0] + 16u * grp * MT_ROW;
        u16* im = pl.p[1] + 16u * grp * MT_ROW;
        // W_N^(r k_a) at this lane's r = r_l + 16 d + 8 nt + j (r_l = 16 TILES warp + 2 t,
        // j = 0, 1) for its rows rr = g + 8 hr: per row, W^(r_l k_a) and W^(k_a) gathered and
        // the steps W^(8 k_a), W^(16 k_a) by squaring, instead of one gather per element (see
        // root()).
        cpx tw_l[2], tw_1[2], tw_8[2], tw_16[2];
        if (FORWARD) {
            if (tw_table != nullptr) {
#pragma unroll
                for (u32 hr = 0; hr < 2u; hr++) {
                    tw_l[hr] = tw_table[hr * BT + threadIdx.x];
                    tw_1[hr] = tw_table[(2u + hr) * BT + threadIdx.x];
                }
            } else {
                mt_column_twiddles<BT>(pc, bf, mat_log2, ka_mul, grp, tw_l, tw_1);
            }
#pragma unroll
            for (u32 hr = 0; hr < 2u; hr++) {
                tw_8[hr] = csq(csq(csq(tw_1[hr])));
                tw_16[hr] = csq(tw_8[hr]);
            }
        }
#pragma unroll
        for (u32 d = 0; d < TILES; d++) {
            u32 r0 = 16u * (TILES * warp + d);
            u32 row = 8u * ((lane >> 3) & 1u) + (lane & 7u);
            u32 off = row * MT_ROW + r0 + 8u * (lane >> 4);
            u32 b_re[4], b_im[4];
            ldsm_x4_trans(&re[off], b_re);
            ldsm_x4_trans(&im[off], b_im);
#pragma unroll
            for (u32 nt = 0; nt < 2u; nt++) {
                float d_re[4], d_im[4];
                tc_cmma(d_re, d_im, a_re, a_im, &b_re[2u * nt], &b_im[2u * nt], a_neg,
                        &b_im[2u * nt]);
#pragma unroll
                for (u32 hr = 0; hr < 2u; hr++) {
                    u32 rr = g + 8u * hr;
                    u32 r = r0 + 8u * nt + 2u * t;
                    cpx v0 = mk(d_re[2u * hr], d_im[2u * hr]);
                    cpx v1 = mk(d_re[2u * hr + 1u], d_im[2u * hr + 1u]);
                    if (FORWARD) {
                        cpx w = tw_l[hr]; // W^(r k_a)
                        if (d != 0u) {
                            w = cmul(w, tw_16[hr]);
                        }
                        if (nt != 0u) {
                            w = cmul(w, tw_8[hr]);
                        }
                        v0 = cmul(v0, w);
                        v1 = cmul(v1, cmul(w, tw_1[hr]));
                    }
                    *(u32*)&re[rr * MT_ROW + r] = pack_f16x2(v0.x, v1.x);
                    *(u32*)&im[rr * MT_ROW + r] = pack_f16x2(v0.y, v1.y);
                }
            }
        }
    }
}

// mt_columns_with, the A fragments computed here.
template <bool FORWARD, u32 BT = MT_THREADS>
__device__ __forceinline__ void mt_columns(MtPlanes pl, const Params& pc, const Buffers& bf,
                                           u32 mat_log2, u32 groups, u32 ka_mul) {
    u32 a_re[4], a_im[4], a_neg[4];
    mt_column_fragments<FORWARD>(pc, bf, mat_log2, a_re, a_im, a_neg);
    mt_columns_with<FORWARD, BT>(pl, pc, bf, mat_log2, groups, ka_mul, a_re, a_im, a_neg);
}

// The constant operands of S2: F_16 / 16 as A and as B fragments, and W_256^(c k_b) at this
// lane's D elements (k_b = g + 8 (i >> 1), c = 2 t + (i & 1) + 8 nt).
struct MtDft16 {
    u32 fa_re[4], fa_im[4], fa_neg[4];
    u32 fb_re[2][2], fb_im[2][2], fb_neg[2][2];
    cpx w2[2][4];
};

// MtDft16's parts: F_16 / 16 as A fragments, and W_256^(c k_b) at this lane's D elements.
__device__ __forceinline__ void mt_dft16_a(const Params& pc, const Buffers& bf, u32 re[4],
                                           u32 im[4], u32 neg[4]) {
    mt_a_fragments(
        [&](u32 row, u32 col) {
            cpx w = root(pc, bf, row * col, 4u);
            return mk(w.x * 0.0625f, w.y * 0.0625f);
        },
        re, im, neg);
}

__device__ __forceinline__ void mt_dft16_w2(const Params& pc, const Buffers& bf, cpx w2[2][4]) {
    u32 lane = threadIdx.x & 31u, g = lane >> 2, t = lane & 3u;
#pragma unroll
    for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
        for (u32 i = 0; i < 4u; i++) {
            w2[nt][i] = root(pc, bf, (2u * t + (i & 1u) + 8u * nt) * (g + 8u * (i >> 1)), 8u);
        }
    }
}

__device__ __forceinline__ void mt_dft16(const Params& pc, const Buffers& bf, MtDft16& f) {
    mt_dft16_a(pc, bf, f.fa_re, f.fa_im, f.fa_neg);
    mt_b_dft16(pc, bf, f.fb_re, f.fb_im, f.fb_neg);
    mt_dft16_w2(pc, bf, f.w2);
}

// fftconv_monarch's per-lane constants, computed once per block (by five of its eight warps)
// rather than by every warp: MtDft16 (F_16 / 16 as A and B fragments, W_256^(c k_b)) and the A
// fragments of S1's and S3's column matrices. Quad q of lane l is q[q][l], so a warp's 16-byte
// reads of one quad are free of bank conflicts.
struct MtLaneTables {
    Quad q[16][32];
};
#define MT_Q_FA 0u     // fa_re, fa_im, fa_neg
#define MT_Q_FB 3u     // fb_re, fb_im, fb_neg ([nt][j] as words 2 nt + j)
#define MT_Q_W2 6u     // w2[nt][i] as (Re, Im) pairs: quad 6 + 2 nt + (i >> 1)
#define MT_Q_COL_F 10u // S1's column matrix (re, im, neg)
#define MT_Q_COL_I 13u // S3's

__device__ __forceinline__ void mt_put_quads(MtLaneTables& tb, u32 q0, const u32 a[4],
                                             const u32 b[4], const u32 c[4]) {
    u32 lane = threadIdx.x & 31u;
    const u32* src[3] = {a, b, c};
#pragma unroll
    for (u32 k = 0; k < 3u; k++) {
        Quad q;
#pragma unroll
        for (u32 j = 0; j < 4u; j++) {
            q.w[j] = src[k][j];
        }
        tb.q[q0 + k][lane] = q;
    }
}

__device__ __forceinline__ void mt_get_quads(const MtLaneTables& tb, u32 q0, u32 a[4], u32 b[4],
                                             u32 c[4]) {
    u32 lane = threadIdx.x & 31u;
    u32* dst[3] = {a, b, c};
#pragma unroll
    for (u32 k = 0; k < 3u; k++) {
        Quad q = tb.q[q0 + k][lane];
#pragma unroll
        for (u32 j = 0; j < 4u; j++) {
            dst[k][j] = q.w[j];
        }
    }
}

// Fills the tables (warps 0 .. 4; a barrier must follow before mt_dft16_from and
// mt_column_tables read them). col_log2: the column matrices' log2 M (0: no column passes).
__device__ __forceinline__ void mt_fill_lane_tables(MtLaneTables& tb, const Params& pc,
                                                    const Buffers& bf, u32 col_log2) {
    u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (warp == 0u) {
        u32 re[4], im[4], neg[4];
        mt_dft16_a(pc, bf, re, im, neg);
        mt_put_quads(tb, MT_Q_FA, re, im, neg);
    } else if (warp == 1u) {
        u32 re[2][2], im[2][2], neg[2][2];
        mt_b_dft16(pc, bf, re, im, neg);
        u32 w[3][4];
#pragma unroll
        for (u32 j = 0; j < 4u; j++) {
            w[0][j] = re[j >> 1][j & 1u];
            w[1][j] = im[j >> 1][j & 1u];
            w[2][j] = neg[j >> 1][j & 1u];
        }
        mt_put_quads(tb, MT_Q_FB, w[0], w[1], w[2]);
    } else if (warp == 2u) {
        cpx w2[2][4];
        mt_dft16_w2(pc, bf, w2);
#pragma unroll
        for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
            for (u32 h = 0; h < 2u; h++) {
                cpx v0 = w2[nt][2u * h], v1 = w2[nt][2u * h + 1u];
                tb.q[MT_Q_W2 + 2u * nt + h][lane] =
                    Quad{{float_bits(v0.x), float_bits(v0.y), float_bits(v1.x), float_bits(v1.y)}};
            }
        }
    } else if (warp < 5u && col_log2 > 0u) {
        u32 re[4], im[4], neg[4];
        if (warp == 3u) {
            mt_column_fragments<true>(pc, bf, col_log2, re, im, neg);
            mt_put_quads(tb, MT_Q_COL_F, re, im, neg);
        } else {
            mt_column_fragments<false>(pc, bf, col_log2, re, im, neg);
            mt_put_quads(tb, MT_Q_COL_I, re, im, neg);
        }
    }
}

// mt_dft16's result, read from the tables.
__device__ __forceinline__ void mt_dft16_from(const MtLaneTables& tb, MtDft16& f) {
    u32 lane = threadIdx.x & 31u;
    mt_get_quads(tb, MT_Q_FA, f.fa_re, f.fa_im, f.fa_neg);
    u32 w[3][4];
    mt_get_quads(tb, MT_Q_FB, w[0], w[1], w[2]);
#pragma unroll
    for (u32 j = 0; j < 4u; j++) {
        f.fb_re[j >> 1][j & 1u] = w[0][j];
        f.fb_im[j >> 1][j & 1u] = w[1][j];
        f.fb_neg[j >> 1][j & 1u] = w[2][j];
    }
#pragma unroll
    for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
        for (u32 h = 0; h < 2u; h++) {
            Quad q = tb.q[MT_Q_W2 + 2u * nt + h][lane];
            f.w2[nt][2u * h] = mk(bits_float(q.w[0]), bits_float(q.w[1]));
            f.w2[nt][2u * h + 1u] = mk(bits_float(q.w[2]), bits_float(q.w[3]));
        }
    }
}

// A row's spectrum in S2 as this lane's D fragments: element (nt, i) is frequency k_b = g + 8 (i
// >> 1), k_c = 2 t + (i & 1) + 8 nt of the row (f = k_a + N1 (k_b + 16 k_c) of the pair).
//
// Frequency sparsity: k_c is the top digit of the pair's frequency in every Monarch pass (N / 16
// = 16 N1 here, and the long path's f = k_o + N_o (k_a + 64 (k_b + 16 k_c))), so kept_bins <= N / 4
// keeps only k_c < 4 and k_c >= 12: 8 of the 16 columns of P2's result and 8 of the 16 rows P3
// contracts. The COMPACT rows compute just those: P2 as one n-tile whose column j is k_c = j (j <
// 4) or j + 8 (j >= 4), the product on its 4 elements per lane, and P3 as m16n8k8 products over
// those 8 columns. Half of P2's and P3's tensor work, of the product and of the filter reads; the
// dropped columns' filter bins are zero, so the result is the same. Both orders are F_16's own
// columns, so no new constants: column j of the compact tile is column j of n-tile 0 (j < 4) or
// 1 (j >= 4), and P3's k8 rows 2 t, 2 t + 1 are B register 0 (t < 2) or 1 of its n-tiles. In
// COMPACT rows only re[0] and im[0] hold values: element i of lane (g, t) is k_b = g + 8 (i >> 1),
// k_c = 2 t + (i & 1) + 8 [t >= 2], the same frequency as element (nt = [t >= 2], i) of the full
// layout (and of the filter's fragment order).
struct MtSpectrum {
    float re[2][4];
    float im[2][4];
};

// Whether S2 runs COMPACT rows: a uniform test per launch (the full N's kept bins).
__device__ __forceinline__ bool mt_compact(const Params& pc) {
    return pc.kept_bins <= (1u << (pc.log2n - 2u));
}

// The value of a[1] where `hi`, else a[0]. On the device a `selp` in inline PTX: clang turns a
// plain `hi ? a[1] : a[0]` into a load from a selected address, which kept MtDft16 out of
// registers (a 160-byte local-memory copy of it per thread).
#if defined(FFTCONV_HOST_EMULATION)
__device__ __forceinline__ u32 mt_pick(bool hi, const u32 a[2]) { return hi ? a[1] : a[0]; }
#else
__device__ __forceinline__ u32 mt_pick(bool hi, const u32 a[2]) {
    u32 r;
    asm("{ .reg .pred p; setp.ne.u32 p, %3, 0; selp.b32 %0, %1, %2, p; }"
        : "=r"(r)
        : "r"(a[1]), "r"(a[0]), "r"((u32)hi));
    return r;
}
#endif

// S2's forward half on one row (`re`, `im`: its planes): P1 = (F16 / 16) Z (B fragments by
// ldmatrix.trans), W_256^(c k_b), P2 = (.) (F16 / 16) contracting c (P1's D fragments are P2's A
// fragments).
template <bool COMPACT>
__device__ __forceinline__ void mt_row_forward(const MtDft16& f, const u16* re, const u16* im,
                                               MtSpectrum& out) {
    u32 lane = threadIdx.x & 31u;
    u32 zrow = 8u * ((lane >> 3) & 1u) + (lane & 7u);
    u32 off = 16u * zrow + 8u * (lane >> 4);
    u32 z_re[4], z_im[4];
    ldsm_x4_trans(&re[off], z_re);
    ldsm_x4_trans(&im[off], z_im);
    float d_re[2][4], d_im[2][4];
#pragma unroll
    for (u32 nt = 0; nt < 2u; nt++) {
        tc_cmma(d_re[nt], d_im[nt], f.fa_re, f.fa_im, &z_re[2u * nt], &z_im[2u * nt], f.fa_neg,
                &z_im[2u * nt]);
#pragma unroll
        for (u32 i = 0; i < 4u; i++) {
            cpx v = cmul(mk(d_re[nt][i], d_im[nt][i]), f.w2[nt][i]);
            d_re[nt][i] = v.x;
            d_im[nt][i] = v.y;
        }
    }
    u32 m_re[4], m_im[4];
    mt_pack_a(d_re, m_re);
    mt_pack_a(d_im, m_im);
    if (COMPACT) {
        // Compact column g (this lane's B column) is column g of n-tile [g >= 4].
        const bool hi = (lane >> 2) >= 4u;
        u32 b_re[2], b_im[2], b_neg[2];
#pragma unroll
        for (u32 j = 0; j < 2u; j++) {
            const u32 re2[2] = {f.fb_re[0][j], f.fb_re[1][j]};
            const u32 im2[2] = {f.fb_im[0][j], f.fb_im[1][j]};
            const u32 neg2[2] = {f.fb_neg[0][j], f.fb_neg[1][j]};
            b_re[j] = mt_pick(hi, re2);
            b_im[j] = mt_pick(hi, im2);
            b_neg[j] = mt_pick(hi, neg2);
        }
        tc_cmma(out.re[0], out.im[0], m_re, m_im, b_re, b_im, m_im, b_neg);
        return;
    }
#pragma unroll
    for (u32 nt = 0; nt < 2u; nt++) {
        tc_cmma(out.re[nt], out.im[nt], m_re, m_im, f.fb_re[nt], f.fb_im[nt], m_im, f.fb_neg[nt]);
    }
}

// mt_row_inverse's twiddle steps for row frequency k_a (see there): W^((16 g + 2 t) k_a) of
// this lane, W^(k_a), W^(8 k_a), W^(128 k_a), gathered.
__device__ __forceinline__ void mt_row_twiddles(const Params& pc, const Buffers& bf, u32 ka,
                                                cpx tw[4]) {
    u32 lane = threadIdx.x & 31u, g = lane >> 2, t = lane & 3u;
    tw[0] = root(pc, bf, (16u * g + 2u * t) * ka, pc.log2n);
    tw[1] = root(pc, bf, ka, pc.log2n);
    tw[2] = root(pc, bf, 8u * ka, pc.log2n);
    tw[3] = root(pc, bf, 128u * ka, pc.log2n);
}

// MT_ROW_TWIDDLES words of a row's table (fftconv_monarch_prefetch's, built once per block):
// mt_row_twiddles' first value per lane, then the three the lanes share.
#define MT_ROW_TWIDDLES 35u

// S2's inverse half on one row: P3 = (.) (conj F16 / 16) contracting k_c, conj W_256^(c k_b),
// movmatrix to P4's B fragments, P4 = (conj F16 / 16) (.) contracting k_b, then (`twiddle`) conj
// W_N^(r k_a) for S3; to the row's planes.
// `tw_row`: the row's twiddle table (MT_ROW_TWIDDLES values) in shared memory; nullptr:
// gathered.
template <bool COMPACT>
__device__ __forceinline__ void mt_row_inverse(const MtDft16& f, const MtSpectrum& in, u16* re,
                                               u16* im, const Params& pc, const Buffers& bf,
                                               u32 ka, bool twiddle,
                                               const cpx* tw_row = nullptr) {
    u32 lane = threadIdx.x & 31u, g = lane >> 2, t = lane & 3u;
    u32 m_re[4], m_im[4];
    float d_re[2][4], d_im[2][4];
    if (COMPACT) {
        // k8 rows 2 t, 2 t + 1 are k_c 2 t, 2 t + 1 (t < 2) or 2 t + 8, 2 t + 9: B register 0 or 1.
        const bool hi = t >= 2u;
        const u32 a_re[2] = {pack_f16x2(in.re[0][0], in.re[0][1]),
                             pack_f16x2(in.re[0][2], in.re[0][3])};
        const u32 a_im[2] = {pack_f16x2(in.im[0][0], in.im[0][1]),
                             pack_f16x2(in.im[0][2], in.im[0][3])};
#pragma unroll
        for (u32 nt = 0; nt < 2u; nt++) {
            tc_cmma8(d_re[nt], d_im[nt], a_re, a_im, mt_pick(hi, f.fb_re[nt]),
                     mt_pick(hi, f.fb_neg[nt]), a_im, mt_pick(hi, f.fb_im[nt]));
        }
    } else {
        mt_pack_a(in.re, m_re);
        mt_pack_a(in.im, m_im);
#pragma unroll
        for (u32 nt = 0; nt < 2u; nt++) {
            tc_cmma(d_re[nt], d_im[nt], m_re, m_im, f.fb_re[nt], f.fb_neg[nt], m_im, f.fb_im[nt]);
        }
    }
#pragma unroll
    for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
        for (u32 i = 0; i < 4u; i++) {
            cpx v = cmul(mk(d_re[nt][i], d_im[nt][i]), conj_c(f.w2[nt][i]));
            d_re[nt][i] = v.x;
            d_im[nt][i] = v.y;
        }
    }
    mt_pack_a(d_re, m_re);
    mt_pack_a(d_im, m_im);
    u32 b_re[4], b_im[4];
#pragma unroll
    for (u32 j = 0; j < 4u; j++) {
        // A register j is the 8 x 8 block (rows k_b 8 (j & 1) .., columns c 8 (j >> 1) ..);
        // transposed, it is B register j: tile nt = j >> 1, half j & 1.
        b_re[j] = movm_trans(m_re[j]);
        b_im[j] = movm_trans(m_im[j]);
    }
    // W_N^(r k_a) at this lane's r = 16 g + 2 t + 8 nt + 128 hb + j (j = 0, 1): one gathered
    // root for 16 g + 2 t, the steps W^(k_a), W^(8 k_a), W^(128 k_a) the same for the warp's
    // lanes (k_a is the row's), instead of one gather per element (see root()).
    cpx tw_l = mk(1.0f, 0.0f), tw_1 = tw_l, tw_8 = tw_l, tw_128 = tw_l;
    if (twiddle) {
        if (tw_row != nullptr) {
            tw_l = tw_row[lane];
            tw_1 = tw_row[32];
            tw_8 = tw_row[33];
            tw_128 = tw_row[34];
        } else {
            cpx tw[4];
            mt_row_twiddles(pc, bf, ka, tw);
            tw_l = tw[0];
            tw_1 = tw[1];
            tw_8 = tw[2];
            tw_128 = tw[3];
        }
    }
#pragma unroll
    for (u32 nt = 0; nt < 2u; nt++) {
        tc_cmma(d_re[nt], d_im[nt], f.fa_re, f.fa_neg, &b_re[2u * nt], &b_im[2u * nt], f.fa_im,
                &b_im[2u * nt]);
#pragma unroll
        for (u32 hb = 0; hb < 2u; hb++) {
            u32 r = 16u * (g + 8u * hb) + 2u * t + 8u * nt;
            cpx v0 = mk(d_re[nt][2u * hb], d_im[nt][2u * hb]);
            cpx v1 = mk(d_re[nt][2u * hb + 1u], d_im[nt][2u * hb + 1u]);
            if (twiddle) {
                cpx w = tw_l; // W^(r k_a)
                if (nt != 0u) {
                    w = cmul(w, tw_8);
                }
                if (hb != 0u) {
                    w = cmul(w, tw_128);
                }
                v0 = cmul(v0, conj_c(w));
                v1 = cmul(v1, conj_c(cmul(w, tw_1)));
            }
            *(u32*)&re[r] = pack_f16x2(v0.x, v1.x);
            *(u32*)&im[r] = pack_f16x2(v0.y, v1.y);
        }
    }
}

// S2 on one row (the warp's), in place: the forward half, the product with the filter bins of
// frequency k_a (`filt`: this lane's 8, in fragment order), the inverse half.
// With `nonfinite`, a non-finite product goes on as zero and sets *nonfinite (the blocks of
// fftconv_monarch that hold several pairs: the block-diagonal mma's zeros times one pair's NaN
// would reach the others).
template <bool COMPACT>
__device__ __forceinline__ void mt_row_with(const MtDft16& f, MtPlanes pl, const Params& pc,
                                            const Buffers& bf, u32 row, u32 ka, const cpx* filt,
                                            bool twiddle, float sigma, u32* nonfinite,
                                            const cpx* tw_row) {
    constexpr u32 TILES = COMPACT ? 1u : 2u;
    u16* re = pl.p[0] + row * MT_ROW;
    u16* im = pl.p[1] + row * MT_ROW;
    MtSpectrum sp;
    mt_row_forward<COMPACT>(f, re, im, sp);
    if (COMPACT) {
        // This lane's compact columns' n-tile: its bins start 4 bins on (lane-minor: 4 x 32).
        filt += ((threadIdx.x & 3u) >= 2u) ? 4u * 32u : 0u;
    }
    cpx v[2][4];
    float fold = 0.0f;
    // FLAG_CONJ_FILTER: the product with conj(K) (the split backward's du; uniform).
    const float conj_sign = (pc.flags & FLAG_CONJ_FILTER) != 0u ? -1.0f : 1.0f;
#pragma unroll
    for (u32 nt = 0; nt < TILES; nt++) {
#pragma unroll
        for (u32 i = 0; i < 4u; i++) {
            cpx kf = load_ro(filt + 32u * (4u * nt + i));
            kf.y *= conj_sign;
            v[nt][i] = cmul(mk(sp.re[nt][i], sp.im[nt][i]), kf);
            fold = mt_nonfinite_fold(fold, v[nt][i]);
        }
    }
    if (nonfinite != nullptr && !finite_f(fold)) { // rare: one test per lane on the common path
#pragma unroll
        for (u32 nt = 0; nt < TILES; nt++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                if (!finite_c(v[nt][i])) {
                    v[nt][i] = mk(0.0f, 0.0f);
                    *nonfinite = 1u;
                }
            }
        }
    }
#pragma unroll
    for (u32 nt = 0; nt < TILES; nt++) {
#pragma unroll
        for (u32 i = 0; i < 4u; i++) {
            sp.re[nt][i] = v[nt][i].x * sigma;
            sp.im[nt][i] = v[nt][i].y * sigma;
        }
    }
    mt_row_inverse<COMPACT>(f, sp, re, im, pc, bf, ka, twiddle, tw_row);
}

// mt_row_with for the launch's frequency sparsity (`compact`: mt_compact, uniform).
__device__ __forceinline__ void mt_row(const MtDft16& f, MtPlanes pl, const Params& pc,
                                       const Buffers& bf, u32 row, u32 ka, const cpx* filt,
                                       bool twiddle, bool compact, float sigma = 1.0f,
                                       u32* nonfinite = nullptr, const cpx* tw_row = nullptr) {
    if (compact) {
        mt_row_with<true>(f, pl, pc, bf, row, ka, filt, twiddle, sigma, nonfinite, tw_row);
    } else {
        mt_row_with<false>(f, pl, pc, bf, row, ka, filt, twiddle, sigma, nonfinite, tw_row);
    }
}

// Position, pair and row of this thread's chunk k (8 consecutive positions of one row).
struct MtChunk {
    u32 p;   // pair within the block
    u32 pos; // first position within the pair's N
    u32 row; // shared row (p N1 + a)
    u32 col; // first column r
};

__device__ __forceinline__ MtChunk mt_chunk(const Params& pc, u32 k) {
    u32 c = threadIdx.x + k * MT_THREADS;
    MtChunk m;
    m.p = c >> (pc.log2n - 3u);
    m.pos = (c << 3) & ((1u << pc.log2n) - 1u);
    m.row = (m.p << (pc.log2n - 8u)) + (m.pos >> 8);
    m.col = m.pos & 255u;
    return m;
}

// Row s of launch pair `pair` (of its channel's pairs) into `r`: its segment, or none past the
// launch. (Written in place: returned by value, fftconv_monarch's registers came out otherwise.)
__device__ __forceinline__ void mt_pair_segment(const Params& pc, const Divisors& dv, u32 pair,
                                                u32 s, SegmentRow& r) {
    r = SegmentRow{0u, 0u, 0u, 0u};
    if (pair < pc.total_lines) {
        u32 h = udiv(pair, dv.pairs);
        r = locate_segment(pc, dv, 2u * (pair - h * pc.pairs) + s, h);
    }
}

// Starts the copies of this thread's staged vectors of the tile from pair `at`, as one cp.async
// group.
__device__ __forceinline__ void mt_stage_tile(const Params& pc, const Buffers& bf,
                                              const Divisors& dv, u32 at, Quad* stage) {
#pragma unroll
    for (u32 k = 0; k < 2u; k++) {
        MtChunk m = mt_chunk(pc, k);
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            SegmentRow r;
            mt_pair_segment(pc, dv, at + m.p, s, r);
            mt_stage8(bf.u, bf.pre, pc.flags, r, m.pos, stage, mt_stage_slot(k, s));
        }
    }
    mt_copy_async_commit();
}

// fftconv_monarch's body: one tile of 16 rows of 256 points (16 / N1 pairs) per block, or
// (PREFETCH, fftconv_monarch_prefetch) tiles one after another, every grid-th tile of the
// launch from the block's own (the grid as many blocks as the device holds at once, whatever
// the tile count), the next tile's rows staged in `stage` (dynamic shared memory, mt_stage8)
// during the current one.
template <bool PREFETCH>
__device__ __forceinline__ void mt_forward_tiles(const Params& pc, const Buffers& bf,
                                                 const Divisors& dv, Quad* stage) {
    // Per tile parity (PREFETCH): a tile's row maxima and flags are zeroed during the tile
    // before it, after its first barrier (by when every thread has stored the tile before that).
    constexpr u32 SETS = PREFETCH ? 2u : 1u;
    alignas(16) __shared__ u16 planes[2][16 * MT_ROW];
    __shared__ u32 row_max[SETS][32];
    // Per pair: a non-finite input or product seen. Up to 2K a block holds several pairs, and
    // the block-diagonal column DFTs' zeros times one pair's NaN would reach the others: such
    // values go on as zeros and the pair's outputs are written as NaN.
    __shared__ u32 pair_nonfinite[SETS][16];
    __shared__ MtLaneTables lane_tables;
    // PREFETCH: the twiddles of S1 (mt_column_twiddles, per thread) and S3 (mt_row_twiddles, per
    // row), the same for every tile: built once per block instead of gathered per tile.
    __shared__ cpx tw_s1[PREFETCH ? 4u * MT_THREADS : 1u];
    __shared__ cpx tw_s3[PREFETCH ? 16u * MT_ROW_TWIDDLES : 1u];
    const u32 n1_log2 = pc.log2n - 8u;
    const u32 n1 = 1u << n1_log2;
    const u32 n = 1u << pc.log2n;
    const u32 tile_log2 = 4u - n1_log2; // pairs per tile
    const u32 first = block_index() << tile_log2;
    if (first >= pc.total_lines) {
        return; // uniform over the block
    }
    // The block's tiles: from `first` every `stride` pairs before `end` (PREFETCH: the grid's
    // tiles apart, up to the launch's end; otherwise the one tile, partial at the launch's end).
    const u32 span = 1u << tile_log2;
    const u32 stride = PREFETCH ? (gridDim.x * gridDim.y) << tile_log2 : span;
    const u32 end =
        PREFETCH ? pc.total_lines : (pc.total_lines - first > span ? first + span : pc.total_lines);
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (threadIdx.x < 32u * SETS) {
        row_max[threadIdx.x >> 5][lane] = 0u;
    }
    if (threadIdx.x < 16u * SETS) {
        pair_nonfinite[threadIdx.x >> 4][threadIdx.x & 15u] = 0u;
    }
    mt_fill_lane_tables(lane_tables, pc, bf, n1_log2);
    if (PREFETCH && n1 > 1u) {
        cpx tw_l[2], tw_1[2];
        mt_column_twiddles(pc, bf, n1_log2, 1u, 0u, tw_l, tw_1);
#pragma unroll
        for (u32 hr = 0; hr < 2u; hr++) {
            tw_s1[hr * MT_THREADS + threadIdx.x] = tw_l[hr];
            tw_s1[(2u + hr) * MT_THREADS + threadIdx.x] = tw_1[hr];
        }
#pragma unroll
        for (u32 rr = 0; rr < 2u; rr++) {
            const u32 row = 2u * warp + rr;
            cpx tw[4];
            mt_row_twiddles(pc, bf, row & (n1 - 1u), tw);
            cpx* t = &tw_s3[row * MT_ROW_TWIDDLES];
            t[lane] = tw[0];
            if (lane == 0u) {
                t[32] = tw[1];
                t[33] = tw[2];
                t[34] = tw[3];
            }
        }
    }
    if (PREFETCH) {
        mt_stage_tile(pc, bf, dv, first, stage);
    }
    __syncthreads();

    u32 set = 0u;
#pragma unroll 1
    for (u32 first_pair = first; first_pair < end; first_pair += stride) {
        // Load: two chunks of 8 positions per thread (16 rows x 256 points = 512 chunks).
        if (PREFETCH) {
            mt_copy_async_wait(); // this thread's staged vectors of the tile
        }
        float in[2][2][8];
        SegmentRow seg[2][2];
#pragma unroll
        for (u32 k = 0; k < 2u; k++) {
            MtChunk m = mt_chunk(pc, k);
            u32 pair = first_pair + m.p;
            u32 mx[2] = {0u, 0u};
#pragma unroll
            for (u32 s = 0; s < 2u; s++) {
                mt_pair_segment(pc, dv, pair, s, seg[k][s]);
                if (PREFETCH) {
                    mt_staged_input8(pc, dv, bf.u, bf.pre, pc.flags, seg[k][s], m.pos, stage,
                                     mt_stage_slot(k, s), in[k][s]);
                } else {
                    mt_input8(pc, dv, bf.u, bf.pre, pc.flags, seg[k][s], m.pos, in[k][s]);
                }
                const bool nonfinite = mt_finite8(in[k][s], mx[s]);
                // m.p is the warp's (N >= 256)
                warp_shared_max(&row_max[set][2u * m.p + s], mx[s]);
                if (nonfinite) {
                    pair_nonfinite[set][m.p] = 1u;
                }
            }
        }
        __syncthreads();
        if (PREFETCH) {
            // The other set was last read by the tile before this one's store, which every
            // thread has finished (the barrier above); the next tile writes it after this
            // tile's barriers.
            if (threadIdx.x < 32u) {
                row_max[set ^ 1u][threadIdx.x] = 0u;
            }
            if (threadIdx.x < 16u) {
                pair_nonfinite[set ^ 1u][threadIdx.x] = 0u;
            }
            // Every thread has read its staged vectors of this tile (the barrier above): the
            // next tile's copies may overwrite them, landing while this tile is transformed.
            const u32 next = first_pair + stride;
            if (next < end) {
                mt_stage_tile(pc, bf, dv, next, stage);
            }
        }
#pragma unroll
        for (u32 k = 0; k < 2u; k++) {
            MtChunk m = mt_chunk(pc, k);
#pragma unroll
            for (u32 s = 0; s < 2u; s++) {
                float sc = bits_float(mt_row_scale_exponent(row_max[set][2u * m.p + s]) << 23);
                Quad q;
#pragma unroll
                for (u32 j = 0; j < 4u; j++) {
                    q.w[j] = pack_f16x2(in[k][s][2u * j] * sc, in[k][s][2u * j + 1u] * sc);
                }
                *(Quad*)&planes[s][m.row * MT_ROW + m.col] = q;
            }
        }
        __syncthreads();

        MtPlanes pl = {{planes[0], planes[1]}};
        if (n1 > 1u) {
            u32 a_re[4], a_im[4], a_neg[4];
            mt_get_quads(lane_tables, MT_Q_COL_F, a_re, a_im, a_neg);
            mt_columns_with<true>(pl, pc, bf, n1_log2, 1u, 1u, a_re, a_im, a_neg,
                                  PREFETCH ? tw_s1 : nullptr);
            __syncthreads();
        }

        // S2: rows 2 warp and 2 warp + 1.
        {
            MtDft16 f;
            mt_dft16_from(lane_tables, f);
#pragma unroll 1
            for (u32 rr = 0; rr < 2u; rr++) {
                u32 row = 2u * warp + rr;
                u32 pair = first_pair + (row >> n1_log2);
                if (pair >= pc.total_lines) {
                    continue; // uniform over the warp; the row holds zeros
                }
                u32 ka = row & (n1 - 1u);
                u32 h = udiv(pair, dv.pairs);
                const cpx* filt = bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u) + 2u +
                                  ka * 256u + lane;
                mt_row(f, pl, pc, bf, row, ka, filt, n1 > 1u, mt_compact(pc), 1.0f,
                       &pair_nonfinite[set][row >> n1_log2],
                       PREFETCH ? &tw_s3[row * MT_ROW_TWIDDLES] : nullptr);
            }
        }
        __syncthreads();

        if (n1 > 1u) {
            u32 a_re[4], a_im[4], a_neg[4];
            mt_get_quads(lane_tables, MT_Q_COL_I, a_re, a_im, a_neg);
            mt_columns_with<false>(pl, pc, bf, n1_log2, 1u, 1u, a_re, a_im, a_neg);
            __syncthreads();
        }

        // Store: undo the scales, (2N)^2 or 256^2 of the DFT matrices, s_k of the filter and
        // s_row.
        float c = n1 > 1u ? 2.0f * (float)n : 256.0f;
#pragma unroll
        for (u32 k = 0; k < 2u; k++) {
            MtChunk m = mt_chunk(pc, k);
            u32 pair = first_pair + m.p;
            if (pair >= pc.total_lines) {
                continue;
            }
            u32 h = udiv(pair, dv.pairs);
            float sk = load_ro(bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u)).x;
            const bool nonfinite = pair_nonfinite[set][m.p] != 0u;
#pragma unroll
            for (u32 s = 0; s < 2u; s++) {
                float inv =
                    bits_float((254u - mt_row_scale_exponent(row_max[set][2u * m.p + s])) << 23);
                float f = sk * inv * c * c; // the row scales first: no overflow before them
                if (nonfinite) {
                    f = bits_float(0x7fc00000u);
                }
                Quad q = *(const Quad*)&planes[s][m.row * MT_ROW + m.col];
                float v[8];
#pragma unroll
                for (u32 j = 0; j < 4u; j++) {
                    v[2u * j] = half_float(q.w[j]) * f;
                    v[2u * j + 1u] = half_float(q.w[j] >> 16) * f;
                }
                mt_output8(pc, bf.y, bf.post, seg[k][s], m.pos, v);
            }
        }
        if (!PREFETCH) {
            break;
        }
        set ^= 1u;
    }
}

extern "C" __global__ void __launch_bounds__(MT_THREADS, MT_FORWARD_MIN_BLOCKS)
    fftconv_monarch(const Params pc, const Buffers bf, const Divisors dv) {
    mt_forward_tiles<false>(pc, bf, dv, nullptr);
}

// fftconv_monarch's tiles (lines_log2 as its, a tile of 16 rows) over a grid of one block per
// resident slot (launch_kernel_grid on the host), each block running every grid-th tile, each
// tile's input rows copied into the dynamic shared memory (monarch_prefetch_bytes on the host:
// MT_STAGE_SLOTS 16-byte vectors per thread, twice that gated) while the tile before is
// transformed.
extern "C" __global__ void __launch_bounds__(MT_THREADS, MT_FORWARD_MIN_BLOCKS)
    fftconv_monarch_prefetch(const Params pc, const Buffers bf, const Divisors dv) {
    mt_forward_tiles<true>(pc, bf, dv, (Quad*)smem);
}

// In place: z[k] = sum_j z[j] W_R^(j k) (forward, W_4 = -i) or W_R^(-j k), R = 2^R_LOG2 = 2 or 4.
template <u32 R_LOG2, bool FORWARD>
__device__ __forceinline__ void mt_radix(cpx* z) {
    if (R_LOG2 == 1u) {
        cpx a = z[0], b = z[1];
        z[0] = cadd(a, b);
        z[1] = csub(a, b);
    } else {
        cpx u0 = cadd(z[0], z[2]), u2 = csub(z[0], z[2]);
        cpx u1 = cadd(z[1], z[3]), u3 = csub(z[1], z[3]);
        cpx m = FORWARD ? mk(u3.y, -u3.x) : mk(-u3.y, u3.x); // -i u3 or i u3
        z[0] = cadd(u0, u1);
        z[2] = csub(u0, u1);
        z[1] = cadd(u2, m);
        z[3] = csub(u2, m);
    }
}

// This thread's unit j of fftconv_monarch_wide's load and store: rows a1 + 16 a2 (a2 < R) of the
// pair, 8 columns from `col`.
struct MtUnit {
    u32 a1;
    u32 col;
};

// Units are 8 columns of one of 16 rows (512 per 16 x 256 rows): BT threads take 512 / BT each.
template <u32 BT = MT_THREADS>
__device__ __forceinline__ MtUnit mt_unit(u32 j) {
    u32 unit = threadIdx.x + j * BT;
    return MtUnit{unit >> 5, (unit & 31u) * 8u};
}

// fftconv_monarch_wide for N = 2^(12 + R_LOG2): the pair's N1 = 16 R rows in dynamic shared memory.
template <u32 R_LOG2>
__device__ __forceinline__ void mt_wide(const Params& pc, const Buffers& bf, const Divisors& dv,
                                        u32* row_max, MtLaneTables& lane_tables) {
    constexpr u32 R = 1u << R_LOG2, ROWS = 16u << R_LOG2;
    const u32 n1_log2 = R_LOG2 + 4u;
    const u32 n = 1u << pc.log2n;
    const u32 pair = block_index();
    if (pair >= pc.total_lines) {
        return; // uniform over the block
    }
    u16* base = (u16*)smem;
    MtPlanes pl = {{base, base + ROWS * MT_ROW}};
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (threadIdx.x < 2u) {
        row_max[threadIdx.x] = 0u;
    }
    const u32 h = udiv(pair, dv.pairs);
    // The pair's two rows (located again after S2 rather than held in registers across it).
    auto locate = [&](SegmentRow seg[2]) {
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            seg[s] = locate_segment(pc, dv, 2u * (pair - h * pc.pairs) + s, h);
        }
    };
    SegmentRow seg[2];
    locate(seg);
    mt_fill_lane_tables(lane_tables, pc, bf, 4u);
    __syncthreads();

    // The two rows' largest finite magnitudes: a first read of the pair.
    {
        u32 mx[2] = {0u, 0u};
#pragma unroll 1
        for (u32 k = 0; k < 2u * R; k++) {
            MtUnit m = mt_unit(k >> R_LOG2);
            u32 pos = (m.a1 + 16u * (k & (R - 1u))) * 256u + m.col;
#pragma unroll
            for (u32 s = 0; s < 2u; s++) {
                float x[8];
                mt_input8(pc, dv, bf.u, bf.pre, pc.flags, seg[s], pos, x);
#pragma unroll
                for (u32 j = 0; j < 8u; j++) {
                    mx[s] = max_u(mx[s], finite_bits(x[j]));
                }
            }
        }
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            shared_max(&row_max[s], mx[s]);
        }
    }
    __syncthreads();
    float sc[2];
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        // The row scale (exponent 13 .. 253) and the radix step's 1 / R.
        sc[s] = bits_float((mt_row_scale_exponent(row_max[s]) - R_LOG2) << 23);
    }

    // Load (second read) with the radix-R DFT over a2 and W_N1^(a1 k2): row 16 k2 + a1. The
    // scaled inputs wait for the radix step as f16 pairs (exact for ungated f16 and bf16 inputs,
    // which the power-of-two scale keeps normal; gated ones take one rounding more): R x 2 x 8
    // f32 values would not fit the registers.
#pragma unroll 1
    for (u32 j = 0; j < 2u; j++) {
        MtUnit m = mt_unit(j);
        u32 xh[R][2][4];
#pragma unroll
        for (u32 a2 = 0; a2 < R; a2++) {
#pragma unroll
            for (u32 s = 0; s < 2u; s++) {
                float x[8];
                mt_input8(pc, dv, bf.u, bf.pre, pc.flags, seg[s], (m.a1 + 16u * a2) * 256u + m.col,
                          x);
#pragma unroll
                for (u32 q = 0; q < 4u; q++) {
                    xh[a2][s][q] = pack_f16x2(x[2u * q] * sc[s], x[2u * q + 1u] * sc[s]);
                }
            }
        }
        cpx w[R];
#pragma unroll
        for (u32 k2 = 0; k2 < R; k2++) {
            w[k2] = root(pc, bf, m.a1 * k2, n1_log2);
        }
#pragma unroll
        for (u32 q = 0; q < 4u; q++) {
            cpx z[2][R];
#pragma unroll
            for (u32 hp = 0; hp < 2u; hp++) {
#pragma unroll
                for (u32 a2 = 0; a2 < R; a2++) {
                    z[hp][a2] = mk(half_float(xh[a2][0][q] >> (16u * hp)),
                                   half_float(xh[a2][1][q] >> (16u * hp)));
                }
                mt_radix<R_LOG2, true>(z[hp]);
#pragma unroll
                for (u32 k2 = 1; k2 < R; k2++) {
                    z[hp][k2] = cmul(z[hp][k2], w[k2]);
                }
            }
#pragma unroll
            for (u32 k2 = 0; k2 < R; k2++) {
                u32 at = (16u * k2 + m.a1) * MT_ROW + m.col + 2u * q;
                *(u32*)&pl.p[0][at] = pack_f16x2(z[0][k2].x, z[1][k2].x);
                *(u32*)&pl.p[1][at] = pack_f16x2(z[0][k2].y, z[1][k2].y);
            }
        }
    }
    __syncthreads();

    // S1: per group k2, the 16-point DFT over a1, then W_N^(r k_a), k_a = R k1 + k2.
    {
        u32 a_re[4], a_im[4], a_neg[4];
        mt_get_quads(lane_tables, MT_Q_COL_F, a_re, a_im, a_neg);
        mt_columns_with<true>(pl, pc, bf, 4u, R, R, a_re, a_im, a_neg);
    }
    __syncthreads();

    // S2: rows warp + 8 i.
    {
        MtDft16 f;
        mt_dft16_from(lane_tables, f);
        const cpx* filt = bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u) + 2u + lane;
#pragma unroll 1
        for (u32 i = 0; i < ROWS / 8u; i++) {
            u32 row = warp + 8u * i;
            u32 ka = (row & 15u) * R + (row >> 4);
            mt_row(f, pl, pc, bf, row, ka, filt + ka * 256u, true, mt_compact(pc));
        }
    }
    __syncthreads();

    // S3: per group, the inverse 16-point DFT over k1.
    {
        u32 a_re[4], a_im[4], a_neg[4];
        mt_get_quads(lane_tables, MT_Q_COL_I, a_re, a_im, a_neg);
        mt_columns_with<false>(pl, pc, bf, 4u, R, R, a_re, a_im, a_neg);
    }
    __syncthreads();

    // Store: conj W_N1^(a1 k2), the inverse radix-R over k2 with 1 / R (its results wait for
    // the store as f16 pairs, bounded like the planes), and the scales: (2N)^2 of the DFT
    // matrices, s_k of the filter, the row scale.
    locate(seg);
    float c = 2.0f * (float)n;
    float sk = load_ro(bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u)).x;
    float fs[2];
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        fs[s] = sk * bits_float((254u - mt_row_scale_exponent(row_max[s])) << 23) * c * c;
    }
#pragma unroll 1
    for (u32 j = 0; j < 2u; j++) {
        MtUnit m = mt_unit(j);
        cpx w[R];
#pragma unroll
        for (u32 k2 = 0; k2 < R; k2++) {
            w[k2] = conj_c(root(pc, bf, m.a1 * k2, n1_log2));
        }
        u32 yh[R][2][4];
#pragma unroll
        for (u32 q = 0; q < 4u; q++) {
            cpx z[2][R];
#pragma unroll
            for (u32 k2 = 0; k2 < R; k2++) {
                u32 at = (16u * k2 + m.a1) * MT_ROW + m.col + 2u * q;
                u32 re = *(const u32*)&pl.p[0][at], im = *(const u32*)&pl.p[1][at];
                z[0][k2] = mk(half_float(re), half_float(im));
                z[1][k2] = mk(half_float(re >> 16), half_float(im >> 16));
            }
#pragma unroll
            for (u32 hp = 0; hp < 2u; hp++) {
#pragma unroll
                for (u32 k2 = 1; k2 < R; k2++) {
                    z[hp][k2] = cmul(z[hp][k2], w[k2]);
                }
                mt_radix<R_LOG2, false>(z[hp]);
            }
#pragma unroll
            for (u32 a2 = 0; a2 < R; a2++) {
                const float inv_r = 1.0f / (float)R;
                yh[a2][0][q] = pack_f16x2(z[0][a2].x * inv_r, z[1][a2].x * inv_r);
                yh[a2][1][q] = pack_f16x2(z[0][a2].y * inv_r, z[1][a2].y * inv_r);
            }
        }
#pragma unroll
        for (u32 a2 = 0; a2 < R; a2++) {
#pragma unroll
            for (u32 s = 0; s < 2u; s++) {
                float x[8];
#pragma unroll
                for (u32 q = 0; q < 4u; q++) {
                    x[2u * q] = half_float(yh[a2][s][q]) * fs[s];
                    x[2u * q + 1u] = half_float(yh[a2][s][q] >> 16) * fs[s];
                }
                mt_output8(pc, bf.y, bf.post, seg[s], (m.a1 + 16u * a2) * 256u + m.col, x);
            }
        }
    }
}

// The Monarch pass for N = 8192 and 16384 (N1 = 16 R rows of 256, R = 2 or 4): one pair per
// block (256 threads), its rows as two f16 planes in dynamic shared memory (N1 MT_ROW halves
// each: 33 / 66 KiB). Row a = a1 + 16 a2 (a1 < 16, a2 < R), frequency k_a = R k1 + k2, so that
// S1 splits into
//   load   the radix-R DFT over a2 for each (a1, column) in f32 as the rows are read, times
//          W_N1^(a1 k2), to shared row 16 k2 + a1 (its 1 / R folded into the row scale), and
//   S1     per group k2 of 16 rows the dense 16-point DFT over a1 (F_16 / 32), then W_N^(r k_a);
// S2 is fftconv_monarch's (row 16 k2 + k1 has frequency R k1 + k2), and S3 and the store run
// the same steps backwards. S1 and S3 carry 1 / (2 N1) as fftconv_monarch's do, so the same
// operand bounds hold. The rows are read twice, once for their maxima (the R x 2 x 8 values of
// a unit would not stay in registers across the block-wide maximum); the second read mostly
// hits L1 / L2.
extern "C" __global__ void __launch_bounds__(MT_THREADS, 2)
    fftconv_monarch_wide(const Params pc, const Buffers bf, const Divisors dv) {
    __shared__ u32 row_max[2];
    __shared__ MtLaneTables lane_tables; // fftconv_monarch's
    if (pc.log2n == 13u) {
        mt_wide<1>(pc, bf, dv, row_max, lane_tables);
    } else {
        mt_wide<2>(pc, bf, dv, row_max, lane_tables);
    }
}

// ---- the Monarch backward (N = 256 .. 4096, one segment per row) -----------------------------
//
// fftconv_monarch_backward: fftconv_backward_fused's outputs (per row taps into bf.taps, du, and
// gated dpre and dpost) for the Monarch layout of fftconv_monarch (16 rows of 256 per block,
// 16 / N1 pairs). Per pair, two transforms are packed along the pair's two rows: Zx = x0 + i x1
// (x = pre u) and Zd = d0 + i d1 (d = post dy), each through S1 and S2's forward half (gated,
// a second Zx with other scales, below). Then per
// bin, with K the filter (divided by s_k):
//   T = Zd conj(Zx) 2^-14 (kept bins): IDFT -> Re = the pair's two filter-gradient correlations
//       summed (Im holds cross terms): written to the pair's taps row (bf.taps[pair], K floats;
//       fftconv_taps_sum adds each channel's pairs: the host sums pc.pairs rows, not 2 pc.pairs
//       as after the fused backward's one row per segment);
//   G = Zd conj(K): IDFT -> dx0 + i dx1 (the adjoint);  P = Zx K (gated): IDFT -> c0 + i c1,
//       dpost = dy c;
// each through S2's inverse half and S3, into the planes of Zx, Zd and a third set. The rows of
// d take their own power-of-two scales (max into [2^13, 2^14), as the forward's rows), so each
// du keeps its precision. T needs one product of scales for both rows of the pair (Re T weights
// row r by s_r t_r): the rows of x take the largest scales with s_0 t_0 = s_1 t_1 among the rows
// whose x and d are both nonzero (a row with zero d or x adds nothing to T and keeps its own x
// scale). A row scaled below its best loses only that factor of its share of the taps sum (the
// other row's term is larger by the same factor). Gated, P takes a third transform of x with
// each row's own scale, so dpost keeps its precision. σ, a power of two per pair, keeps T in
// f16 range and as large as it can be (mt_taps_scale_log2: from the sums of |x| and |d|; a
// fixed 2^-14, the worst case, left ~5 bits for sparse or noisy inputs at 16K). Dynamic shared memory: two plane sets
// (three gated: P's output replaces its own x), 16 x MT_ROW halves each.
__device__ __forceinline__ u16* mt_backward_plane(u32 set, u32 c, u32 rows) {
    return (u16*)smem + (2u * set + c) * (rows * MT_ROW);
}

// A pair's maxima (float bits) of x and d per row, and the scale exponents (biased, 1 .. 253)
// from them: d rows their own; x rows the largest with ex_0 + ed_0 = ex_1 + ed_1 among the rows
// whose x and d are both nonzero (the others keep their own).
struct MtPairScales {
    u32 mx[2], md[2];
    u32 ex[2], ed[2];
    u32 prod; // ex + ed of the rows whose x and d are both nonzero (0: none)
};

__device__ __forceinline__ MtPairScales mt_pair_scales(u32 mx0, u32 mx1, u32 md0, u32 md1) {
    MtPairScales p;
    p.mx[0] = mx0;
    p.mx[1] = mx1;
    p.md[0] = md0;
    p.md[1] = md1;
    u32 c = 0xffffffffu;
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        p.ex[s] = mt_row_scale_exponent(p.mx[s]);
        p.ed[s] = mt_row_scale_exponent(p.md[s]);
        if (p.mx[s] != 0u && p.md[s] != 0u) {
            c = min_u(c, p.ex[s] + p.ed[s]);
        }
    }
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        if (p.mx[s] != 0u && p.md[s] != 0u) {
            p.ex[s] = c > p.ed[s] + 1u ? c - p.ed[s] : 1u;
        }
    }
    // A row clamped to 1 above (a product ratio beyond 2^250 between the rows) is off by a
    // negligible share of the taps sum; the taps' unscale uses c, the other row's exact product.
    p.prod = c == 0xffffffffu ? 0u : c;
    return p;
}

// log2 of the power of two σ that T = Zd conj(Zx) is multiplied by: the largest with σ |T| <=
// 2^14 at every bin, from the pair's sums of |scaled x| and |scaled d| (|Z(f)| <= sum / c, c
// the forward's 1 / c): data-dependent, so flat or sparse spectra keep their precision in f16.
__device__ __forceinline__ int mt_taps_scale_log2(const float* sums, float c) {
    float b = (sums[0] / c) * (sums[1] / c);
    if (!(b > 0.0f)) {
        return 60; // T is zero (or its bound underflows): any scale
    }
    int e = (int)(float_bits(b) >> 23) - 127; // floor(log2 b), b normal or not
    int k = 13 - e;
    return k < -60 ? -60 : (k > 60 ? 60 : k);
}

// x (coupled scale), d and (gated) x with its own scale: 8 values of row s of a pair to the
// plane sets at shared row `row`, column `col`.
__device__ __forceinline__ void mt_backward_put8(const MtPairScales& ps, u32 s, const float x[8],
                                                 const float d[8], bool gated, u32 rows,
                                                 u32 row, u32 col) {
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        if (set < 2u || gated) {
            u32 e = set == 0u ? ps.ex[s] : (set == 1u ? ps.ed[s] : mt_row_scale_exponent(ps.mx[s]));
            float sc = bits_float(e << 23);
            const float* v = set == 1u ? d : x;
            Quad q;
#pragma unroll
            for (u32 j = 0; j < 4u; j++) {
                q.w[j] = pack_f16x2(v[2u * j] * sc, v[2u * j + 1u] * sc);
            }
            *(Quad*)&mt_backward_plane(set, s, rows)[row * MT_ROW + col] = q;
        }
    }
}

// Sum of |v scale| over 8 values (scale 2^(e - 127)): a row's share of mt_taps_scale_log2's bound.
__device__ __forceinline__ float mt_abs_sum8(const float v[8], u32 e) {
    float sum = 0.0f;
#pragma unroll
    for (u32 j = 0; j < 8u; j++) {
        sum += bits_float(float_bits(v[j]) & 0x7fffffffu);
    }
    return sum * bits_float(e << 23);
}

// S2 of the backward on one row of the plane sets (x, d, gated x'): both spectra, the products
// T, G, P (frequency f = k_a + N1 (k_b + 16 k_c) of each fragment element, for the kept-bin
// mask), and their inverse halves, T to x's row, G to d's, P to x''s.
__device__ __forceinline__ void mt_backward_row(const MtDft16& f, const MtPlanes* sets,
                                                const Params& pc, const Buffers& bf, u32 row,
                                                u32 ka, u32 n1, const cpx* filt, float sigma,
                                                bool gated, bool twiddle, u32 f_add = 0u,
                                                u32 f_mul = 1u, u32 full_log2n = 0u,
                                                float sigma_g = 1.0f, float sigma_p = 1.0f,
                                                u32* nonfinite = nullptr) {
    const u32 lane = threadIdx.x & 31u, g = lane >> 2, t = lane & 3u;
    const u32 at = row * MT_ROW;
    MtSpectrum sx, sd, sp;
    mt_row_forward<false>(f, sets[0].p[0] + at, sets[0].p[1] + at, sx);
    mt_row_forward<false>(f, sets[1].p[0] + at, sets[1].p[1] + at, sd);
    if (gated) {
        mt_row_forward<false>(f, sets[2].p[0] + at, sets[2].p[1] + at, sp);
    }
    MtSpectrum st, sg;
#pragma unroll
    for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
        for (u32 i = 0; i < 4u; i++) {
            u32 kb = g + 8u * (i >> 1), kc = 2u * t + (i & 1u) + 8u * nt;
            // The full spectrum's frequency (f_add + f_mul (row frequency) for the rows of
            // fftconv_monarch_backward_middle, whose pc.log2n is its 16K rows').
            u32 fr = f_add + f_mul * (ka + n1 * (kb + 16u * kc));
            u32 nf = 1u << (full_log2n != 0u ? full_log2n : pc.log2n);
            cpx x = mk(sx.re[nt][i], sx.im[nt][i]);
            cpx d = mk(sd.re[nt][i], sd.im[nt][i]);
            cpx kf = load_ro(filt + 32u * (4u * nt + i));
            bool kept = (fr <= (nf >> 1) ? fr : nf - fr) < pc.kept_bins;
            cpx tv = kept ? cmul(d, conj_c(x)) : mk(0.0f, 0.0f);
            cpx gv = cmul(d, conj_c(kf));
            cpx pv = gated ? cmul(mk(sp.re[nt][i], sp.im[nt][i]), kf) : mk(0.0f, 0.0f);
            if (nonfinite != nullptr) {
                // fftconv_monarch's rule: a non-finite product goes on as zero, flagged
                // (nonfinite[0..2]: T, G, P), so that it cannot reach the block's other pairs.
                if (!finite_c(tv)) {
                    tv = mk(0.0f, 0.0f);
                    nonfinite[0] = 1u;
                }
                if (!finite_c(gv)) {
                    gv = mk(0.0f, 0.0f);
                    nonfinite[1] = 1u;
                }
                if (!finite_c(pv)) {
                    pv = mk(0.0f, 0.0f);
                    nonfinite[2] = 1u;
                }
            }
            st.re[nt][i] = tv.x * sigma;
            st.im[nt][i] = tv.y * sigma;
            sg.re[nt][i] = gv.x * sigma_g;
            sg.im[nt][i] = gv.y * sigma_g;
            sp.re[nt][i] = pv.x * sigma_p;
            sp.im[nt][i] = pv.y * sigma_p;
        }
    }
    mt_row_inverse<false>(f, st, sets[0].p[0] + at, sets[0].p[1] + at, pc, bf, ka, twiddle);
    mt_row_inverse<false>(f, sg, sets[1].p[0] + at, sets[1].p[1] + at, pc, bf, ka, twiddle);
    if (gated) {
        mt_row_inverse<false>(f, sp, sets[2].p[0] + at, sets[2].p[1] + at, pc, bf, ka, twiddle);
    }
}

// Taps pos .. pos + 7 of a taps row (`row`: its first tap; taps_len of them) from the 8 f16
// values of `q`, each times ft, fa and fb in that order: two 16-byte stores where the row is
// 16-byte aligned (K % 4 == 0) and all 8 are in it, else one store per tap in it.
__device__ __forceinline__ void mt_store_taps8(float* row, u32 pos, u32 taps_len, const Quad& q,
                                               float ft, float fa, float fb) {
    if (pos + 8u <= taps_len && (taps_len & 3u) == 0u) {
#pragma unroll
        for (u32 v = 0; v < 2u; v++) {
            Quad o;
#pragma unroll
            for (u32 j = 0; j < 4u; j++) {
                const u32 e = 4u * v + j;
                o.w[j] = float_bits(half_float(q.w[e >> 1] >> (16u * (e & 1u))) * ft * fa * fb);
            }
            store_words16(row + pos + 4u * v, o.w);
        }
    } else {
#pragma unroll
        for (u32 j = 0; j < 8u; j++) {
            if (pos + j < taps_len) {
                row[pos + j] = half_float(q.w[j >> 1] >> (16u * (j & 1u))) * ft * fa * fb;
            }
        }
    }
}

// The backward's results for positions pos .. pos + 7 of a pair whose position q sits at shared
// row base + q / 256, column q mod 256 (after S3, in natural order). With c = 2N (256 for N =
// 256): taps = Re T c^3 / (σ N s t) (the pair's taps row), dx_r = G_r
// c^2 s_k / t_r (plus the circular history's wrap), P_r c^2 s_k / s'_r (s: coupled x scales,
// t: d scales, s': own x scales).
// nan: outputs to write as NaN (bit 0 the taps, 1 du and dpre, 2 dpost).
__device__ __forceinline__ void mt_backward_store8(const Params& pc, const Divisors& dv,
                                                   const Buffers& bf, const MtPlanes* sets,
                                                   const MtPairScales& ps, int sigma_log2, u32 base,
                                                   u32 pos, u32 pair, float c, bool gated,
                                                   u32 nan = 0u) {
    const float qnan = bits_float(0x7fc00000u);
    const u32 n = 1u << pc.log2n;
    const u32 row = base + (pos >> 8), col = pos & 255u;
    const u32 h = udiv(pair, dv.pairs);
    float sk = load_ro(bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u)).x;
    {
        // 1 / (s t) = 2^k_st (as two normal factors; s t is one product for the rows that add
        // to the taps) and 1 / σ.
        int k_st = ps.prod == 0u ? 0 : 254 - (int)ps.prod;
        float ft = (nan & 1u) != 0u ? qnan : c * c * (c / (float)n) * pow2(-sigma_log2);
        const float fa = pow2(k_st / 2), fb = pow2(k_st - k_st / 2); // applied one after another
        const Quad q = *(const Quad*)&sets[0].p[0][row * MT_ROW + col];
        mt_store_taps8(bf.taps + (u64)pair * pc.taps_len, pos, pc.taps_len, q, ft, fa, fb);
    }
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        SegmentRow seg = locate_segment(pc, dv, 2u * (pair - h * pc.pairs) + s, h);
        if (seg.valid == 0u || pos >= pc.seq_len) {
            continue;
        }
        float fd = (nan & 2u) != 0u ? qnan : sk * bits_float((254u - ps.ed[s]) << 23) * c * c;
        float dx[8];
        Quad q = *(const Quad*)&sets[1].p[s][row * MT_ROW + col];
#pragma unroll
        for (u32 j = 0; j < 8u; j++) {
            u32 tp = pos + j;
            float v = half_float(q.w[j >> 1] >> (16u * (j & 1u)));
            if ((pc.flags & FLAG_WRAPS) != 0u && tp < pc.seq_len && pc.seq_len - tp <= pc.history) {
                // The circular history: the input at t also fed position N - (L - t).
                u32 w = n - (pc.seq_len - tp);
                v += half_float(sets[1].p[s][(base + (w >> 8)) * MT_ROW + (w & 255u)]);
            }
            dx[j] = v * fd;
        }
        mt_output8(pc, bf.y, bf.pre, seg, pos, dx);
        if (gated) {
            mt_output8(pc, bf.y2, bf.u, seg, pos, dx);
            float fp = (nan & 4u) != 0u
                           ? qnan
                           : sk * bits_float((254u - mt_row_scale_exponent(ps.mx[s])) << 23) * c * c;
            float cv[8];
            Quad qp = *(const Quad*)&sets[2].p[s][row * MT_ROW + col];
#pragma unroll
            for (u32 j = 0; j < 8u; j++) {
                cv[j] = half_float(qp.w[j >> 1] >> (16u * (j & 1u))) * fp;
            }
            mt_output8(pc, bf.y3, bf.u2, seg, pos, cv);
        }
    }
}

extern "C" __global__ void __launch_bounds__(MT_THREADS, MT_MIN_BLOCKS)
    fftconv_monarch_backward(const Params pc, const Buffers bf, const Divisors dv) {
    __shared__ u32 row_max[2][32];  // [x, d][pair row 2 p + s]
    __shared__ float abs_sum[16][2]; // [pair][x, d]: sums of |scaled value| over both rows
    // [pair][x, d, T, G, P]: a non-finite input or product seen (fftconv_monarch's rule: up to
    // 2K a block holds several pairs, and the block-diagonal column DFTs' zeros times one pair's
    // NaN would reach the others; such values go on as zeros, the outputs they feed as NaN).
    __shared__ u32 pair_nonfinite[16][5];
    __shared__ MtLaneTables lane_tables; // fftconv_monarch's
    const u32 n1_log2 = pc.log2n - 8u;
    const u32 n1 = 1u << n1_log2;
    const u32 n = 1u << pc.log2n;
    const float c = n1 > 1u ? 2.0f * (float)n : 256.0f;
    const u32 pairs_total = pc.total_lines >> 1; // total_lines: rows (two per pair)
    const u32 first_pair = block_index() << (4u - n1_log2);
    if (first_pair >= pairs_total) {
        return; // uniform over the block
    }
    const bool gated = (pc.flags & FLAG_GATED) != 0u;
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (threadIdx.x < 64u) {
        row_max[threadIdx.x >> 5][threadIdx.x & 31u] = 0u;
    }
    if (threadIdx.x < 32u) {
        abs_sum[threadIdx.x >> 1][threadIdx.x & 1u] = 0.0f;
    }
    if (threadIdx.x < 80u) {
        pair_nonfinite[threadIdx.x / 5u][threadIdx.x % 5u] = 0u;
    }
    mt_fill_lane_tables(lane_tables, pc, bf, n1_log2);
    __syncthreads();

    // Load x and d: two chunks of 8 positions per thread, both rows of a pair.
    const u32 dy_flags = pc.flags | FLAG_BODY_ONLY;
    float xv[2][2][8], dvv[2][2][8];
#pragma unroll
    for (u32 k = 0; k < 2u; k++) {
        MtChunk m = mt_chunk(pc, k);
        u32 pair = first_pair + m.p;
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            SegmentRow seg = SegmentRow{0u, 0u, 0u, 0u};
            if (pair < pairs_total) {
                u32 h = udiv(pair, dv.pairs);
                seg = locate_segment(pc, dv, 2u * (pair - h * pc.pairs) + s, h);
            }
            mt_input8(pc, dv, bf.u, bf.pre, pc.flags, seg, m.pos, xv[k][s]);
            mt_input8(pc, dv, bf.u2, bf.post, dy_flags, seg, m.pos, dvv[k][s]);
            u32 mx = 0u, md = 0u;
            const bool x_bad = mt_finite8(xv[k][s], mx);
            const bool d_bad = mt_finite8(dvv[k][s], md);
            warp_shared_max(&row_max[0][2u * m.p + s], mx); // m.p is the warp's (N >= 256)
            warp_shared_max(&row_max[1][2u * m.p + s], md);
            if (x_bad) {
                pair_nonfinite[m.p][0] = 1u;
            }
            if (d_bad) {
                pair_nonfinite[m.p][1] = 1u;
            }
        }
    }
    __syncthreads();
    auto scales = [&](u32 p) {
        return mt_pair_scales(row_max[0][2u * p], row_max[0][2u * p + 1u], row_max[1][2u * p],
                              row_max[1][2u * p + 1u]);
    };
#pragma unroll
    for (u32 k = 0; k < 2u; k++) {
        MtChunk m = mt_chunk(pc, k);
        MtPairScales ps = scales(m.p);
        float sx = 0.0f, sd = 0.0f;
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            mt_backward_put8(ps, s, xv[k][s], dvv[k][s], gated, 16u, m.row, m.col);
            sx += mt_abs_sum8(xv[k][s], ps.ex[s]);
            sd += mt_abs_sum8(dvv[k][s], ps.ed[s]);
        }
        shared_add(&abs_sum[m.p][0], sx);
        shared_add(&abs_sum[m.p][1], sd);
    }
    __syncthreads();
    MtPlanes sets[3];
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        sets[set] = MtPlanes{{mt_backward_plane(set, 0u, 16u), mt_backward_plane(set, 1u, 16u)}};
    }
    const u32 set_count = gated ? 3u : 2u;
    if (n1 > 1u) {
        u32 a_re[4], a_im[4], a_neg[4];
        mt_get_quads(lane_tables, MT_Q_COL_F, a_re, a_im, a_neg);
#pragma unroll
        for (u32 set = 0; set < 3u; set++) {
            if (set < set_count) {
                mt_columns_with<true>(sets[set], pc, bf, n1_log2, 1u, 1u, a_re, a_im, a_neg);
            }
        }
        __syncthreads();
    }
    // S2: rows 2 warp and 2 warp + 1.
    {
        MtDft16 f;
        mt_dft16_from(lane_tables, f);
#pragma unroll 1
        for (u32 rr = 0; rr < 2u; rr++) {
            u32 row = 2u * warp + rr;
            u32 pair = first_pair + (row >> n1_log2);
            if (pair >= pairs_total) {
                continue; // uniform over the warp; the rows hold zeros
            }
            u32 ka = row & (n1 - 1u);
            u32 h = udiv(pair, dv.pairs);
            const cpx* filt = bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u) + 2u +
                              ka * 256u + lane;
            float sigma = pow2(mt_taps_scale_log2(abs_sum[row >> n1_log2], c));
            mt_backward_row(f, sets, pc, bf, row, ka, n1, filt, sigma, gated, n1 > 1u, 0u, 1u, 0u,
                            1.0f, 1.0f, &pair_nonfinite[row >> n1_log2][2]);
        }
    }
    __syncthreads();
    if (n1 > 1u) {
        u32 a_re[4], a_im[4], a_neg[4];
        mt_get_quads(lane_tables, MT_Q_COL_I, a_re, a_im, a_neg);
#pragma unroll
        for (u32 set = 0; set < 3u; set++) {
            if (set < set_count) {
                mt_columns_with<false>(sets[set], pc, bf, n1_log2, 1u, 1u, a_re, a_im, a_neg);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (u32 k = 0; k < 2u; k++) {
        MtChunk m = mt_chunk(pc, k);
        u32 pair = first_pair + m.p;
        if (pair < pairs_total) {
            const u32* bad = pair_nonfinite[m.p];
            u32 nan = ((bad[0] | bad[1] | bad[2]) != 0u ? 1u : 0u) |
                      ((bad[1] | bad[3]) != 0u ? 2u : 0u) | ((bad[0] | bad[4]) != 0u ? 4u : 0u);
            mt_backward_store8(pc, dv, bf, sets, scales(m.p),
                               mt_taps_scale_log2(abs_sum[m.p], c), m.p << n1_log2, m.pos, pair, c,
                               gated, nan);
        }
    }
}

// fftconv_monarch_backward_taps (N = 256 .. 4096): the filter gradient alone, for the split
// backward (the host's FFTCONV_CUDA_MONARCH_SPLIT_BACKWARD; du comes from fftconv_monarch with
// the filter conjugated). A block per channel and group of pc.stage_count consecutive pairs
// (block b: channel b / G, group b mod G, G = ceil(pc.pairs / pc.stage_count)), taken S =
// 16 / N1 at a time side by side in the 16 rows (slot p: rows p N1 .. p N1 + N1 - 1, as
// fftconv_monarch holds several pairs). Per pair, Zx and Zd through S1 and S2's forward half
// with fftconv_monarch_backward's scales, and T = Zd conj(Zx) on the kept bins added into an
// f32 sum in shared memory per row (lane-local: the spectra share the fragment layout, and a
// row's bins are the same in every slot; mt_taps_sum_at), weighted 2^(ref - prod) against its
// slot's reference product of scales `ref` (the smallest prod seen, i.e. the loudest pair: the
// sum is rescaled when a louder pair comes). After the group: the slots added into slot 0
// against the smallest reference R, σ, the largest power of two with σ |T| <= 2^14 at every
// bin, one inverse half (S2, S3) of slot 0 and Re T c^3 / (σ N) 2^(254 - R) to the group's taps
// row (bf.taps[h G + g], K floats; fftconv_taps_sum adds a channel's G rows). A non-finite
// input or product makes the group's row NaN. Instead of the fused backward's per-pair inverse
// and taps row: one of each per group.
__device__ __forceinline__ float mt_pow2_or_zero(int k) {
    return k < -126 ? 0.0f : pow2(k > 127 ? 127 : k);
}

// The taps kernels' running sum of T in dynamic shared memory after their two plane sets of
// `rows` rows each (in registers it spilled ~1.2 KB per thread at the 128-register cap): per
// row, n-tile, element and lane one complex f32, so each lane reads and writes only its own, 8
// bytes apart.
__device__ __forceinline__ cpx* mt_taps_sum_at(u32 rows, u32 row, u32 nt, u32 i) {
    cpx* sums = (cpx*)((u16*)smem + 4u * rows * MT_ROW);
    return sums + ((row * 8u + nt * 4u + i) << 5) + (threadIdx.x & 31u);
}

// Where fftconv_monarch_backward_taps_prefetch stages a step's rows: after the two plane sets and
// the sums of 16 rows (mt_taps_sum_at), x's MT_STAGE_SLOTS vectors per thread, then dy's.
__device__ __forceinline__ Quad* mt_taps_stage() {
    return (Quad*)((u16*)smem + 4u * 16u * MT_ROW + 16u * 256u * 4u);
}

// Row s of pair j of channel h in a taps group ending at j_end: its segment, or none (zeros)
// past the group.
__device__ __forceinline__ SegmentRow mt_group_segment(const Params& pc, const Divisors& dv,
                                                       u32 h, u32 j, u32 j_end, u32 s) {
    return j < j_end ? locate_segment(pc, dv, 2u * j + s, h) : SegmentRow{0u, 0u, 0u, 0u};
}

// Starts the copies of this thread's staged vectors of x and dy for the step of pairs j0 .. (of
// channel h, up to j_end), as one cp.async group.
__device__ __forceinline__ void mt_taps_stage_step(const Params& pc, const Buffers& bf,
                                                   const Divisors& dv, u32 h, u32 j0, u32 j_end,
                                                   Quad* stage) {
#pragma unroll
    for (u32 k = 0; k < 2u; k++) {
        MtChunk m = mt_chunk(pc, k);
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            const SegmentRow seg = mt_group_segment(pc, dv, h, j0 + m.p, j_end, s);
            const u32 slot = mt_stage_slot(k, s);
            mt_stage8(bf.u, bf.pre, pc.flags, seg, m.pos, stage, slot);
            mt_stage8(bf.u2, bf.post, pc.flags | FLAG_BODY_ONLY, seg, m.pos,
                      stage + MT_STAGE_SLOTS * MT_THREADS, slot);
        }
    }
    mt_copy_async_commit();
}

// fftconv_monarch_backward_taps's body; PREFETCH: each step's rows of x and dy staged during the
// step before (mt_taps_stage_step). The split backward is ungated (`monarch_split_taps_params`),
// so the staging holds no gates: a gated launch of the prefetching kernel traps.
template <bool PREFETCH>
__device__ __forceinline__ void mt_backward_taps_steps(const Params& pc, const Buffers& bf,
                                                       const Divisors& dv) {
    __shared__ u32 row_max_sets[2][2][32]; // [iteration parity][x, d][slot row 2 p + s]
    __shared__ u32 slot_ref[16];  // per slot: its reference product (0: no pair with x, d yet)
    __shared__ u32 group_bad;     // a non-finite input or product in the group
    __shared__ u32 sum_max;       // float bits: the sum's largest |Re| + |Im|
    __shared__ MtLaneTables lane_tables; // fftconv_monarch's
    const u32 n1_log2 = pc.log2n - 8u;
    const u32 n1 = 1u << n1_log2;
    const u32 slots = 16u >> n1_log2;
    const u32 n = 1u << pc.log2n;
    const float c = n1 > 1u ? 2.0f * (float)n : 256.0f;
    const u32 per = pc.stage_count;
    const u32 groups = (pc.pairs + per - 1u) / per;
    const u32 b = block_index(), h = b / groups, g = b - h * groups;
    if (h >= pc.channels) {
        return; // uniform over the block
    }
    const u32 j_end = min_u((g + 1u) * per, pc.pairs);
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31u, gl = lane >> 2, tl = lane & 3u;
    if (threadIdx.x == 0u) {
        group_bad = 0u;
        sum_max = 0u;
    }
    mt_fill_lane_tables(lane_tables, pc, bf, n1_log2);
    MtPlanes sets[2];
#pragma unroll
    for (u32 set = 0; set < 2u; set++) {
        sets[set] = MtPlanes{{mt_backward_plane(set, 0u, 16u), mt_backward_plane(set, 1u, 16u)}};
    }
    // The sum (this warp's rows 2 warp, 2 warp + 1), zeroed.
#pragma unroll
    for (u32 rr = 0; rr < 2u; rr++) {
#pragma unroll
        for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                *mt_taps_sum_at(16u, 2u * warp + rr, nt, i) = mk(0.0f, 0.0f);
            }
        }
    }
    // The references of this warp's rows' slots (the same for both rows from N = 512).
    u32 ref0 = 0u, ref1 = 0u;
    const u32 dy_flags = pc.flags | FLAG_BODY_ONLY;
    Quad* const stage = PREFETCH ? mt_taps_stage() : nullptr;
    if (PREFETCH && (pc.flags & FLAG_GATED) != 0u) {
        // The host never launches it gated (no room for the gates' rows).
#if defined(FFTCONV_HOST_EMULATION)
        __builtin_trap();
#else
        asm volatile("trap;");
#endif
    }
    if (PREFETCH) {
        mt_taps_stage_step(pc, bf, dv, h, g * per, j_end, stage);
    }
    __syncthreads();
    u32 iteration = 0u;
#pragma unroll 1
    for (u32 j0 = g * per; j0 < j_end; j0 += slots, iteration++) {
        // By the iteration's parity: the previous one's maxima may still be read (the rows'
        // weights after its last barrier), the ones before it are not.
        u32(*row_max)[32] = row_max_sets[iteration & 1u];
        if (threadIdx.x < 64u) {
            row_max[threadIdx.x >> 5][threadIdx.x & 31u] = 0u;
        }
        __syncthreads(); // the maxima zeroed; the previous pairs' S2 is done with the planes
        if (PREFETCH) {
            mt_copy_async_wait(); // this thread's staged vectors of the step
        }
        float xv[2][2][8], dvv[2][2][8];
#pragma unroll
        for (u32 k = 0; k < 2u; k++) {
            MtChunk m = mt_chunk(pc, k);
            const u32 j = j0 + m.p;
#pragma unroll
            for (u32 s = 0; s < 2u; s++) {
                const SegmentRow seg = mt_group_segment(pc, dv, h, j, j_end, s);
                if (PREFETCH) {
                    const u32 slot = mt_stage_slot(k, s);
                    mt_staged_input8(pc, dv, bf.u, bf.pre, pc.flags, seg, m.pos, stage, slot,
                                     xv[k][s]);
                    mt_staged_input8(pc, dv, bf.u2, bf.post, dy_flags, seg, m.pos,
                                     stage + MT_STAGE_SLOTS * MT_THREADS, slot, dvv[k][s]);
                } else {
                    mt_input8(pc, dv, bf.u, bf.pre, pc.flags, seg, m.pos, xv[k][s]);
                    mt_input8(pc, dv, bf.u2, bf.post, dy_flags, seg, m.pos, dvv[k][s]);
                }
                u32 mx = 0u, md = 0u;
                const bool x_bad = mt_finite8(xv[k][s], mx);
                const bool d_bad = mt_finite8(dvv[k][s], md);
                warp_shared_max(&row_max[0][2u * m.p + s], mx); // m.p is the warp's
                warp_shared_max(&row_max[1][2u * m.p + s], md);
                if (x_bad || d_bad) {
                    group_bad = 1u;
                }
            }
        }
        __syncthreads();
        if (PREFETCH && j0 + slots < j_end) {
            // Every thread has read its staged vectors of this step (the barrier above): the
            // next step's copies land while this one is transformed.
            mt_taps_stage_step(pc, bf, dv, h, j0 + slots, j_end, stage);
        }
        auto scales = [&](u32 p) {
            return mt_pair_scales(row_max[0][2u * p], row_max[0][2u * p + 1u], row_max[1][2u * p],
                                  row_max[1][2u * p + 1u]);
        };
        // (No skip of a step whose pairs all have zero x or d: the rows below skip their T,
        // and a test over the 2 S maxima cost 2 S shared loads per thread and step.)
#pragma unroll
        for (u32 k = 0; k < 2u; k++) {
            MtChunk m = mt_chunk(pc, k);
            const MtPairScales ps = scales(m.p);
#pragma unroll
            for (u32 s = 0; s < 2u; s++) {
                mt_backward_put8(ps, s, xv[k][s], dvv[k][s], false, 16u, m.row, m.col);
            }
        }
        __syncthreads();
        if (n1 > 1u) {
            u32 a_re[4], a_im[4], a_neg[4];
            mt_get_quads(lane_tables, MT_Q_COL_F, a_re, a_im, a_neg);
#pragma unroll
            for (u32 set = 0; set < 2u; set++) {
                mt_columns_with<true>(sets[set], pc, bf, n1_log2, 1u, 1u, a_re, a_im, a_neg);
            }
        }
        __syncthreads();
        // The row DFT's constants from the lane tables here, not across the loads (in
        // registers all along they spilled).
        MtDft16 f;
        mt_dft16_from(lane_tables, f);
#pragma unroll 1
        for (u32 rr = 0; rr < 2u; rr++) {
            const u32 row = 2u * warp + rr, ka = row & (n1 - 1u), at = row * MT_ROW;
            // The row's weight against its slot's reference (uniform over the warp).
            const u32 prod = scales(row >> n1_log2).prod;
            if (prod == 0u) {
                continue; // no row of the pair with nonzero x and d: T = 0
            }
            u32 ref = rr == 0u ? ref0 : ref1;
            float w = 1.0f;
            if (ref == 0u) {
                ref = prod;
            } else if (prod >= ref) {
                w = mt_pow2_or_zero((int)ref - (int)prod);
            } else {
                const float r = mt_pow2_or_zero((int)prod - (int)ref);
#pragma unroll
                for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
                    for (u32 i = 0; i < 4u; i++) {
                        cpx* a = mt_taps_sum_at(16u, row, nt, i);
                        *a = mk(a->x * r, a->y * r);
                    }
                }
                ref = prod;
            }
            if (rr == 0u) {
                ref0 = ref;
            } else {
                ref1 = ref;
            }
            MtSpectrum sx, sd;
            mt_row_forward<false>(f, sets[0].p[0] + at, sets[0].p[1] + at, sx);
            mt_row_forward<false>(f, sets[1].p[0] + at, sets[1].p[1] + at, sd);
            bool bad = false;
#pragma unroll
            for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
                for (u32 i = 0; i < 4u; i++) {
                    const u32 kb = gl + 8u * (i >> 1), kc = 2u * tl + (i & 1u) + 8u * nt;
                    const u32 fr = ka + n1 * (kb + 16u * kc);
                    const bool kept = (fr <= (n >> 1) ? fr : n - fr) < pc.kept_bins;
                    cpx tv = kept ? cmul(mk(sd.re[nt][i], sd.im[nt][i]),
                                         conj_c(mk(sx.re[nt][i], sx.im[nt][i])))
                                  : mk(0.0f, 0.0f);
                    if (!finite_c(tv)) {
                        tv = mk(0.0f, 0.0f);
                        bad = true;
                    }
                    cpx* a = mt_taps_sum_at(16u, row, nt, i);
                    *a = mk(a->x + tv.x * w, a->y + tv.y * w);
                }
            }
            if (bad) {
                group_bad = 1u;
            }
        }
    }
    // Each slot's reference (the warps of a slot hold the same), then the slots added into slot
    // 0's rows by their warps, against the smallest reference R.
    if (lane == 0u) {
        slot_ref[(2u * warp) >> n1_log2] = ref0;
        slot_ref[(2u * warp + 1u) >> n1_log2] = ref1;
    }
    __syncthreads(); // also: the last pairs' S2 is done with the planes and the sums
    u32 ref = 0u;
    for (u32 p = 0; p < slots; p++) {
        const u32 rp = slot_ref[p];
        if (rp != 0u && (ref == 0u || rp < ref)) {
            ref = rp;
        }
    }
    // σ from the sum's largest |Re| + |Im| (bits; an overflow to inf makes the row NaN).
    u32 m = 0u;
    bool overflow = false;
#pragma unroll
    for (u32 rr = 0; rr < 2u; rr++) {
        const u32 row = 2u * warp + rr;
        if (row >= n1) {
            continue; // uniform over the warp: not slot 0
        }
#pragma unroll
        for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                cpx v = *mt_taps_sum_at(16u, row, nt, i);
                if (slots > 1u) {
                    v = mk(0.0f, 0.0f);
                    for (u32 p = 0; p < slots; p++) {
                        const u32 rp = slot_ref[p];
                        if (rp != 0u) {
                            const float wp = mt_pow2_or_zero((int)ref - (int)rp);
                            const cpx t = *mt_taps_sum_at(16u, p * n1 + row, nt, i);
                            v = mk(v.x + t.x * wp, v.y + t.y * wp);
                        }
                    }
                    *mt_taps_sum_at(16u, row, nt, i) = v;
                }
                const float a = bits_float(float_bits(v.x) & 0x7fffffffu) +
                                bits_float(float_bits(v.y) & 0x7fffffffu);
                overflow = overflow || !finite_f(a);
                m = max_u(m, finite_bits(a));
            }
        }
    }
    if (overflow) {
        group_bad = 1u;
    }
    shared_max(&sum_max, m);
    __syncthreads();
    int sigma_log2 = 0;
    if (sum_max != 0u) {
        const int e = (int)((sum_max >> 23) & 0xffu) - 127; // sum_max < 2^(e + 1)
        sigma_log2 = 13 - e;
        sigma_log2 = sigma_log2 < -120 ? -120 : (sigma_log2 > 120 ? 120 : sigma_log2);
    }
    const float sigma = pow2(sigma_log2);
    MtDft16 f;
    mt_dft16_from(lane_tables, f);
#pragma unroll 1
    for (u32 rr = 0; rr < 2u; rr++) {
        const u32 row = 2u * warp + rr, ka = row & (n1 - 1u), at = row * MT_ROW;
        if (row >= n1) {
            // Not slot 0: zeros, so that the block-diagonal column DFTs' zeros times whatever
            // the planes held cannot reach slot 0.
            u32* z0 = (u32*)(sets[0].p[0] + at);
            u32* z1 = (u32*)(sets[0].p[1] + at);
            for (u32 q = lane; q < MT_ROW / 2u; q += 32u) {
                z0[q] = 0u;
                z1[q] = 0u;
            }
            continue;
        }
        MtSpectrum st;
#pragma unroll
        for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                const cpx v = *mt_taps_sum_at(16u, row, nt, i);
                st.re[nt][i] = v.x * sigma;
                st.im[nt][i] = v.y * sigma;
            }
        }
        mt_row_inverse<false>(f, st, sets[0].p[0] + at, sets[0].p[1] + at, pc, bf, ka, n1 > 1u);
    }
    __syncthreads();
    if (n1 > 1u) {
        u32 a_re[4], a_im[4], a_neg[4];
        mt_get_quads(lane_tables, MT_Q_COL_I, a_re, a_im, a_neg);
        mt_columns_with<false>(sets[0], pc, bf, n1_log2, 1u, 1u, a_re, a_im, a_neg);
        __syncthreads();
    }
    // taps = Re T c^3 / (σ N) 2^(254 - R), the last factor as two normal halves.
    const int k_st = ref == 0u ? 0 : 254 - (int)ref;
    const float fa = pow2(k_st / 2), fb = pow2(k_st - k_st / 2);
    const float ft = group_bad != 0u ? bits_float(0x7fc00000u)
                                     : c * c * (c / (float)n) * pow2(-sigma_log2);
    float* row_out = bf.taps + (u64)(h * groups + g) * pc.taps_len;
#pragma unroll
    for (u32 k = 0; k < 2u; k++) {
        const MtChunk mc = mt_chunk(pc, k);
        if (mc.p != 0u) {
            continue; // slot 0 holds the sum
        }
        const u32 pos = mc.pos;
        const Quad q = *(const Quad*)&sets[0].p[0][mc.row * MT_ROW + mc.col];
        mt_store_taps8(row_out, pos, pc.taps_len, q, ft, fa, fb);
    }
}

extern "C" __global__ void __launch_bounds__(MT_THREADS, MT_MIN_BLOCKS)
    fftconv_monarch_backward_taps(const Params pc, const Buffers bf, const Divisors dv) {
    mt_backward_taps_steps<false>(pc, bf, dv);
}

// fftconv_monarch_backward_taps with each step's rows of x and dy copied into shared memory
// (after its sums: 2 MT_STAGE_SLOTS 16-byte vectors per thread more) during the step before.
extern "C" __global__ void __launch_bounds__(MT_THREADS, MT_MIN_BLOCKS)
    fftconv_monarch_backward_taps_prefetch(const Params pc, const Buffers bf, const Divisors dv) {
    mt_backward_taps_steps<true>(pc, bf, dv);
}

// The block's share of a pair's maxima (float bits) of x = pre u and d = post dy per row, added
// to row_max[x, d][row] (zeroed before, read after a barrier): one read of the pair's rows.
template <u32 BT>
__device__ __forceinline__ void mt_pair_maxima(const Params& pc, const Divisors& dv,
                                               const Buffers& bf, const SegmentRow seg[2],
                                               u32 (*row_max)[2]) {
    const u32 n = 1u << pc.log2n, dy_flags = pc.flags | FLAG_BODY_ONLY;
    u32 mx[2] = {0u, 0u}, md[2] = {0u, 0u};
    for (u32 pos = 8u * threadIdx.x; pos < n; pos += 8u * BT) {
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            float x[8], d[8];
            mt_input8(pc, dv, bf.u, bf.pre, pc.flags, seg[s], pos, x);
            mt_input8(pc, dv, bf.u2, bf.post, dy_flags, seg[s], pos, d);
#pragma unroll
            for (u32 j = 0; j < 8u; j++) {
                mx[s] = max_u(mx[s], finite_bits(x[j]));
                md[s] = max_u(md[s], finite_bits(d[j]));
            }
        }
    }
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        shared_max(&row_max[0][s], mx[s]);
        shared_max(&row_max[1][s], md[s]);
    }
}

// In place on the plane sets' rows {a1 + 16 j : j < R} at columns col .. col + 7 (this thread's
// unit): forward, the radix-R DFT over a2 of rows a1 + 16 a2, times W_N1^(a1 k2) and 1 / R, to
// rows 16 k2 + a1; inverse, the way back (conj twiddle first, then the inverse radix-R and
// 1 / R). The Monarch backward's wide layout keeps its rows in natural order outside S1..S3.
template <u32 R_LOG2, bool FORWARD>
__device__ __forceinline__ void mt_radix_rows(MtPlanes pl, const Params& pc, const Buffers& bf,
                                              MtUnit m) {
    constexpr u32 R = 1u << R_LOG2;
    const float inv_r = 1.0f / (float)R;
    cpx w[R];
#pragma unroll
    for (u32 k2 = 0; k2 < R; k2++) {
        cpx v = root(pc, bf, m.a1 * k2, R_LOG2 + 4u);
        w[k2] = FORWARD ? v : conj_c(v);
    }
#pragma unroll
    for (u32 p = 0; p < 8u; p += 2u) {
        cpx z[2][R];
#pragma unroll
        for (u32 j = 0; j < R; j++) {
            u32 at = (m.a1 + 16u * j) * MT_ROW + m.col + p;
            u32 re = *(const u32*)&pl.p[0][at], im = *(const u32*)&pl.p[1][at];
            z[0][j] = mk(half_float(re), half_float(im));
            z[1][j] = mk(half_float(re >> 16), half_float(im >> 16));
        }
#pragma unroll
        for (u32 hp = 0; hp < 2u; hp++) {
            if (!FORWARD) {
#pragma unroll
                for (u32 k2 = 1; k2 < R; k2++) {
                    z[hp][k2] = cmul(z[hp][k2], w[k2]);
                }
            }
            mt_radix<R_LOG2, FORWARD>(z[hp]);
#pragma unroll
            for (u32 j = 0; j < R; j++) {
                z[hp][j] = mk(z[hp][j].x * inv_r, z[hp][j].y * inv_r);
                if (FORWARD && j != 0u) {
                    z[hp][j] = cmul(z[hp][j], w[j]);
                }
            }
        }
#pragma unroll
        for (u32 j = 0; j < R; j++) {
            u32 at = (m.a1 + 16u * j) * MT_ROW + m.col + p;
            *(u32*)&pl.p[0][at] = pack_f16x2(z[0][j].x, z[1][j].x);
            *(u32*)&pl.p[1][at] = pack_f16x2(z[0][j].y, z[1][j].y);
        }
    }
}

// The Monarch backward for N = 8192 and 16384 (fftconv_monarch_wide's layout: one pair per
// block, N1 = 16 R rows): the rows' maxima (a first read), the scaled x, d (and gated x') in
// natural order, the radix-R step in place (shared row 16 k2 + a1 then holds frequency group
// k2), S1 per group, S2 as fftconv_monarch_backward's (row 16 k2 + k1: k_a = R k1 + k2), S3,
// the inverse radix-R step in place, and the same stores. Dynamic shared memory: two plane
// sets of N1 rows (three gated: 198 KiB at 16K).
template <u32 R_LOG2, u32 BT>
__device__ __forceinline__ void mt_backward_wide(const Params& pc, const Buffers& bf,
                                                 const Divisors& dv, u32 (*row_max)[2],
                                                 float* abs_sum) {
    constexpr u32 R = 1u << R_LOG2, ROWS = 16u << R_LOG2;
    const u32 n = 1u << pc.log2n;
    const u32 pair = block_index();
    if (pair >= (pc.total_lines >> 1)) {
        return; // uniform over the block
    }
    const bool gated = (pc.flags & FLAG_GATED) != 0u;
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (threadIdx.x < 4u) {
        row_max[threadIdx.x >> 1][threadIdx.x & 1u] = 0u;
    }
    if (threadIdx.x < 2u) {
        abs_sum[threadIdx.x] = 0.0f;
    }
    const u32 h = udiv(pair, dv.pairs);
    SegmentRow seg[2];
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        seg[s] = locate_segment(pc, dv, 2u * (pair - h * pc.pairs) + s, h);
    }
    const u32 dy_flags = pc.flags | FLAG_BODY_ONLY;
    __syncthreads();
    mt_pair_maxima<BT>(pc, dv, bf, seg, row_max); // a first read
    __syncthreads();
    const MtPairScales ps = mt_pair_scales(row_max[0][0], row_max[0][1], row_max[1][0], row_max[1][1]);
    // The second read, scaled, in natural order.
    {
        float sx = 0.0f, sd = 0.0f;
        for (u32 pos = 8u * threadIdx.x; pos < n; pos += 8u * BT) {
#pragma unroll
            for (u32 s = 0; s < 2u; s++) {
                float x[8], d[8];
                mt_input8(pc, dv, bf.u, bf.pre, pc.flags, seg[s], pos, x);
                mt_input8(pc, dv, bf.u2, bf.post, dy_flags, seg[s], pos, d);
                mt_backward_put8(ps, s, x, d, gated, ROWS, pos >> 8, pos & 255u);
                sx += mt_abs_sum8(x, ps.ex[s]);
                sd += mt_abs_sum8(d, ps.ed[s]);
            }
        }
        shared_add(&abs_sum[0], sx);
        shared_add(&abs_sum[1], sd);
    }
    __syncthreads();
    const float c = 2.0f * (float)n;
    const int sigma_log2 = mt_taps_scale_log2(abs_sum, c);
    MtPlanes sets[3];
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        sets[set] = MtPlanes{{mt_backward_plane(set, 0u, ROWS), mt_backward_plane(set, 1u, ROWS)}};
    }
    const u32 set_count = gated ? 3u : 2u;
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        if (set < set_count) {
#pragma unroll 1
            for (u32 j = 0; j < 512u / BT; j++) {
                mt_radix_rows<R_LOG2, true>(sets[set], pc, bf, mt_unit<BT>(j));
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        if (set < set_count) {
            mt_columns<true, BT>(sets[set], pc, bf, 4u, R, R);
        }
    }
    __syncthreads();
    {
        MtDft16 f;
        mt_dft16(pc, bf, f);
        const cpx* filt = bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u) + 2u + lane;
#pragma unroll 1
        for (u32 i = 0; i < ROWS / (BT / 32u); i++) {
            u32 row = warp + (BT / 32u) * i;
            u32 ka = (row & 15u) * R + (row >> 4);
            mt_backward_row(f, sets, pc, bf, row, ka, ROWS, filt + ka * 256u, pow2(sigma_log2),
                            gated, true);
        }
    }
    __syncthreads();
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        if (set < set_count) {
            mt_columns<false, BT>(sets[set], pc, bf, 4u, R, R);
        }
    }
    __syncthreads();
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        if (set < set_count) {
#pragma unroll 1
            for (u32 j = 0; j < 512u / BT; j++) {
                mt_radix_rows<R_LOG2, false>(sets[set], pc, bf, mt_unit<BT>(j));
            }
        }
    }
    __syncthreads();
    for (u32 pos = 8u * threadIdx.x; pos < n; pos += 8u * BT) {
        mt_backward_store8(pc, dv, bf, sets, ps, sigma_log2, 0u, pos, pair, c, gated);
    }
}

// 16K alone (8K: fftconv_monarch_backward_wide_8k), with MT_WIDE_THREADS threads: the plane
// sets (135 KiB, 198 KiB gated) leave room for one block per SM, so 16 warps per SM only as one
// block of 512 threads (at 256, 8 warps: the latency-bound case that fftconv_monarch_backward's
// second block per SM ran 1.6-1.7x faster than).
extern "C" __global__ void __launch_bounds__(MT_WIDE_THREADS, 1)
    fftconv_monarch_backward_wide(const Params pc, const Buffers bf, const Divisors dv) {
    __shared__ u32 row_max[2][2]; // [x, d][row]
    __shared__ float abs_sum[2];  // [x, d]: sums of |scaled value| over both rows
    mt_backward_wide<2, MT_WIDE_THREADS>(pc, bf, dv, row_max, abs_sum);
}

// 8K alone, with fftconv_monarch_backward's register cap (MT_MIN_BLOCKS): its plane sets (68
// KiB, 101 KiB gated) leave room for two blocks per SM, which 190 registers would not.
extern "C" __global__ void __launch_bounds__(MT_THREADS, MT_MIN_BLOCKS)
    fftconv_monarch_backward_wide_8k(const Params pc, const Buffers bf, const Divisors dv) {
    __shared__ u32 row_max[2][2]; // [x, d][row]
    __shared__ float abs_sum[2];  // [x, d]: sums of |scaled value| over both rows
    mt_backward_wide<1, MT_THREADS>(pc, bf, dv, row_max, abs_sum);
}

// A lane's 8 sums of a row (`a`: the first, element e at a + 32 e) times `rescale`, plus w t.
__device__ __forceinline__ void mt_taps_sum_add(cpx* a, const cpx t[8], float rescale, float w) {
#pragma unroll
    for (u32 e = 0; e < 8u; e++) {
        const cpx v = a[e << 5];
        a[e << 5] = mk(v.x * rescale + t[e].x * w, v.y * rescale + t[e].y * w);
    }
}

// fftconv_monarch_backward_taps_wide (N = 8192, 16384): fftconv_monarch_backward_taps for the
// wide layout (fftconv_monarch_backward_wide's: one pair per step, N1 = 16 R rows), for the
// split backward at 8K and 16K (du from fftconv_monarch_wide with the filter conjugated). A
// block per channel and group of pc.stage_count consecutive pairs (as
// fftconv_monarch_backward_taps); per pair the rows' maxima (a first read), the scaled x and d
// (a second read), the radix-R step and S1, then S2's forward half per row and T = Zd conj(Zx)
// on the kept bins added into the f32 sum (sum_row below), weighted 2^(ref - prod) against the
// loudest pair so far (one pair per step, so `ref` is the block's). After the group: σ from the
// sum, one inverse (S2's inverse half, S3, the inverse radix-R step) and the group's taps row.
// Dynamic shared memory: two plane sets of N1 rows and the sum's first SHARED_ROWS rows (256
// complex f32 each); its other rows in the block's slice of bf.tmp (L2-resident): at 8K all 32
// rows in shared memory (130 KiB), at 16K 47 of 64 (226 KiB; the whole sum would need 260 KiB,
// over the 227 KiB of a block), so 17 rows go through L2.
template <u32 R_LOG2, u32 BT, u32 SHARED_ROWS>
__device__ __forceinline__ void mt_backward_taps_wide(const Params& pc, const Buffers& bf,
                                                      const Divisors& dv, u32 (*row_max)[2],
                                                      u32& group_bad, u32& sum_max) {
    constexpr u32 R = 1u << R_LOG2, ROWS = 16u << R_LOG2, WARPS = BT / 32u;
    static_assert(ROWS % WARPS == 0u, "every warp holds whole rows of the sum");
    static_assert(SHARED_ROWS <= ROWS, "the sum's rows in shared memory");
    const u32 n = 1u << pc.log2n;
    const float c = 2.0f * (float)n;
    const u32 per = pc.stage_count;
    const u32 groups = (pc.pairs + per - 1u) / per;
    const u32 b = block_index(), h = b / groups, g = b - h * groups;
    if (h >= pc.channels) {
        return; // uniform over the block
    }
    const u32 j_end = min_u((g + 1u) * per, pc.pairs);
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31u, gl = lane >> 2, tl = lane & 3u;
    if (threadIdx.x == 0u) {
        group_bad = 0u;
        sum_max = 0u;
    }
    // The sum's row `row`: lane-local elements 32 apart from the returned one (the block's
    // slice of bf.tmp recomputed at each use rather than held in registers).
    auto sum_row = [&](u32 row) {
        return row < SHARED_ROWS
                   ? mt_taps_sum_at(ROWS, row, 0u, 0u)
                   : bf.tmp + (u64)block_index() * ((ROWS - SHARED_ROWS) * 256u) +
                         (((row - SHARED_ROWS) * 8u) << 5) + lane;
    };
    MtPlanes sets[2];
#pragma unroll
    for (u32 set = 0; set < 2u; set++) {
        sets[set] = MtPlanes{{mt_backward_plane(set, 0u, ROWS), mt_backward_plane(set, 1u, ROWS)}};
    }
    // The sum's rows warp + WARPS i belong to this warp alone (lane-local, too): zeroed here,
    // no barrier needed until the end.
#pragma unroll 1
    for (u32 row = warp; row < ROWS; row += WARPS) {
#pragma unroll
        for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                sum_row(row)[(4u * nt + i) << 5] = mk(0.0f, 0.0f);
            }
        }
    }
    u32 ref = 0u; // the sum's reference product of scales (uniform; 0: no pair with x, d yet)
    const u32 dy_flags = pc.flags | FLAG_BODY_ONLY;
#pragma unroll 1
    for (u32 j = g * per; j < j_end; j++) {
        if (threadIdx.x < 4u) {
            row_max[threadIdx.x >> 1][threadIdx.x & 1u] = 0u;
        }
        SegmentRow seg[2];
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            seg[s] = locate_segment(pc, dv, 2u * j + s, h);
        }
        // The maxima zeroed; the previous pair's maxima read and its S2 done with the planes.
        __syncthreads();
        mt_pair_maxima<BT>(pc, dv, bf, seg, row_max); // a first read
        __syncthreads();
        const MtPairScales ps =
            mt_pair_scales(row_max[0][0], row_max[0][1], row_max[1][0], row_max[1][1]);
        // The second read, scaled, in natural order.
        bool bad = false;
        for (u32 pos = 8u * threadIdx.x; pos < n; pos += 8u * BT) {
#pragma unroll
            for (u32 s = 0; s < 2u; s++) {
                float x[8], d[8];
                mt_input8(pc, dv, bf.u, bf.pre, pc.flags, seg[s], pos, x);
                mt_input8(pc, dv, bf.u2, bf.post, dy_flags, seg[s], pos, d);
                u32 mx = 0u, md = 0u;
                bad = mt_finite8(x, mx) || bad;
                bad = mt_finite8(d, md) || bad;
                mt_backward_put8(ps, s, x, d, false, ROWS, pos >> 8, pos & 255u);
            }
        }
        if (bad) {
            group_bad = 1u;
        }
        __syncthreads();
#pragma unroll
        for (u32 set = 0; set < 2u; set++) {
#pragma unroll 1
            for (u32 k = 0; k < 512u / BT; k++) {
                mt_radix_rows<R_LOG2, true>(sets[set], pc, bf, mt_unit<BT>(k));
            }
        }
        __syncthreads();
#pragma unroll
        for (u32 set = 0; set < 2u; set++) {
            mt_columns<true, BT>(sets[set], pc, bf, 4u, R, R);
        }
        __syncthreads();
        if (ps.prod == 0u) {
            continue; // uniform: no row of the pair with nonzero x and d, T = 0
        }
        // The pair's weight against the reference; a louder pair rescales the sum.
        float w = 1.0f, rescale = 1.0f;
        if (ref == 0u) {
            ref = ps.prod;
        } else if (ps.prod >= ref) {
            w = mt_pow2_or_zero((int)ref - (int)ps.prod);
        } else {
            rescale = mt_pow2_or_zero((int)ps.prod - (int)ref);
            ref = ps.prod;
        }
        MtDft16 f;
        mt_dft16(pc, bf, f);
        bool product_bad = false;
#pragma unroll 1
        for (u32 row = warp; row < ROWS; row += WARPS) {
            const u32 ka = (row & 15u) * R + (row >> 4), at = row * MT_ROW;
            MtSpectrum sx, sd;
            mt_row_forward<false>(f, sets[0].p[0] + at, sets[0].p[1] + at, sx);
            mt_row_forward<false>(f, sets[1].p[0] + at, sets[1].p[1] + at, sd);
            cpx t[8];
#pragma unroll
            for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
                for (u32 i = 0; i < 4u; i++) {
                    const u32 kb = gl + 8u * (i >> 1), kc = 2u * tl + (i & 1u) + 8u * nt;
                    const u32 fr = ka + ROWS * (kb + 16u * kc);
                    const bool kept = (fr <= (n >> 1) ? fr : n - fr) < pc.kept_bins;
                    cpx tv = kept ? cmul(mk(sd.re[nt][i], sd.im[nt][i]),
                                         conj_c(mk(sx.re[nt][i], sx.im[nt][i])))
                                  : mk(0.0f, 0.0f);
                    if (!finite_c(tv)) {
                        tv = mk(0.0f, 0.0f);
                        product_bad = true;
                    }
                    t[4u * nt + i] = tv;
                }
            }
            // Each branch with its own memory space (a pointer that may be either spilled).
            if (row < SHARED_ROWS) {
                mt_taps_sum_add(sum_row(row), t, rescale, w);
            } else {
                mt_taps_sum_add(sum_row(row), t, rescale, w);
            }
        }
        if (product_bad) {
            group_bad = 1u;
        }
    }
    __syncthreads(); // the last pair's S2 is done with the planes
    // σ from the sum's largest |Re| + |Im| (bits; an overflow to inf makes the row NaN).
    u32 m = 0u;
    bool overflow = false;
#pragma unroll 1
    for (u32 row = warp; row < ROWS; row += WARPS) {
#pragma unroll
        for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
            for (u32 i = 0; i < 4u; i++) {
                const cpx v = sum_row(row)[(4u * nt + i) << 5];
                const float a = bits_float(float_bits(v.x) & 0x7fffffffu) +
                                bits_float(float_bits(v.y) & 0x7fffffffu);
                overflow = overflow || !finite_f(a);
                m = max_u(m, finite_bits(a));
            }
        }
    }
    if (overflow) {
        group_bad = 1u;
    }
    shared_max(&sum_max, m);
    __syncthreads();
    int sigma_log2 = 0;
    if (sum_max != 0u) {
        const int e = (int)((sum_max >> 23) & 0xffu) - 127; // sum_max < 2^(e + 1)
        sigma_log2 = 13 - e;
        sigma_log2 = sigma_log2 < -120 ? -120 : (sigma_log2 > 120 ? 120 : sigma_log2);
    }
    const float sigma = pow2(sigma_log2);
    {
        MtDft16 f;
        mt_dft16(pc, bf, f);
#pragma unroll 1
        for (u32 row = warp; row < ROWS; row += WARPS) {
            const u32 ka = (row & 15u) * R + (row >> 4), at = row * MT_ROW;
            MtSpectrum st;
#pragma unroll
            for (u32 nt = 0; nt < 2u; nt++) {
#pragma unroll
                for (u32 i = 0; i < 4u; i++) {
                    const cpx v = sum_row(row)[(4u * nt + i) << 5];
                    st.re[nt][i] = v.x * sigma;
                    st.im[nt][i] = v.y * sigma;
                }
            }
            mt_row_inverse<false>(f, st, sets[0].p[0] + at, sets[0].p[1] + at, pc, bf, ka, true);
        }
    }
    __syncthreads();
    mt_columns<false, BT>(sets[0], pc, bf, 4u, R, R);
    __syncthreads();
#pragma unroll 1
    for (u32 k = 0; k < 512u / BT; k++) {
        mt_radix_rows<R_LOG2, false>(sets[0], pc, bf, mt_unit<BT>(k));
    }
    __syncthreads();
    // taps = Re T c^3 / (σ N) 2^(254 - ref), the last factor as two normal halves.
    const int k_st = ref == 0u ? 0 : 254 - (int)ref;
    const float fa = pow2(k_st / 2), fb = pow2(k_st - k_st / 2);
    const float ft = group_bad != 0u ? bits_float(0x7fc00000u)
                                     : c * c * (c / (float)n) * pow2(-sigma_log2);
    float* row_out = bf.taps + (u64)(h * groups + g) * pc.taps_len;
    for (u32 pos = 8u * threadIdx.x; pos < pc.taps_len; pos += 8u * BT) {
        const Quad q = *(const Quad*)&sets[0].p[0][(pos >> 8) * MT_ROW + (pos & 255u)];
        mt_store_taps8(row_out, pos, pc.taps_len, q, ft, fa, fb);
    }
}

// The sum's rows in shared memory at 16K (the host's monarch_taps_shared_rows).
#define MT_TAPS_SHARED_ROWS_16K 47u

// With MT_WIDE_THREADS threads: the plane sets and the sum (130 KiB at 8K, 226 KiB at 16K) leave
// room for one block per SM, so 16 warps per SM only as one block of 512 threads.
extern "C" __global__ void __launch_bounds__(MT_WIDE_THREADS, 1)
    fftconv_monarch_backward_taps_wide(const Params pc, const Buffers bf, const Divisors dv) {
    __shared__ u32 row_max[2][2]; // [x, d][row]
    __shared__ u32 group_bad;     // a non-finite input or product in the group
    __shared__ u32 sum_max;       // float bits: the sum's largest |Re| + |Im|
    if (pc.log2n == 13u) {
        mt_backward_taps_wide<1, MT_WIDE_THREADS, 32u>(pc, bf, dv, row_max, group_bad, sum_max);
    } else {
        mt_backward_taps_wide<2, MT_WIDE_THREADS, MT_TAPS_SHARED_ROWS_16K>(pc, bf, dv, row_max,
                                                                          group_bad, sum_max);
    }
}

// ---- the Monarch pass for N = 32K .. 4M: four kernels around 16K-point rows -----------------
//
// N = N_o x N_i with N_i = 2^MT_INNER_LOG2 = 16384 and N_o = 2 .. 256; position n = n_i + N_i n_o,
// frequency k = k_o + N_o k_i (the four-step split of the DFT). Per chunk, with the pair's
// intermediate as N f16 (Re, Im) words in bf.tmp (half of the N complex f32 the schedule sizes
// it for; after all pairs' words four scale words per pair, then the scales' MtMaxSum records,
// two per pair and slice):
//   fftconv_monarch_scales           per pair and 16K slice of positions, each row's largest
//                                    finite |value| and scaled sum of |value| (the records)
//   fftconv_monarch_scales_finish    per pair (a warp): the slices merged, each row's power-of-two
//                                    scale (its largest finite |value| into [2^13, 2^14), as
//                                    fftconv_monarch's load) and the product's k
//   fftconv_monarch_columns_forward  per column n_i (a thread): the scaled rows' N_o values, the
//                                    N_o-point DFT / N_o in f32 registers, W_N^(n_i k_o), to row
//                                    k_o of the intermediate (coalesced: threads take consecutive
//                                    n_i)
//   fftconv_monarch_middle           per row k_o (a block): fftconv_monarch_wide's 16K transform
//                                    with the filter bins k_o + N_o k_i, in place
//   fftconv_monarch_columns_inverse  per column: conj W_N^(n_i k_o), the inverse N_o-point DFT,
//                                    the scales undone, post-gated, to y
// The scaled rows keep every intermediate below 2^14 sqrt(2), so f16 words suffice between the
// passes (3.5 times the floor's traffic: u twice, the intermediate twice each way, y once) and
// the two rows of a pair keep their own precision although the column DFT mixes them. The
// product with the filter is multiplied by σ = 2^k (mt_product_scale_log2, from the pair's sum
// of |scaled value|; undone by the inverse column pass), so that sparse rows, whose spectra are
// small, do not leave the inverse transform's f16 values subnormal (1M with 16 impulses a row:
// 2.5e-3 without it).
#define MT_INNER_LOG2 14u

// The pair's two row scale exponents and k (fftconv_monarch_scales), after the chunk's pairs'
// words: four words per pair.
__device__ __forceinline__ u32* mt_scales(const Params& pc, const Buffers& bf, u32 pair) {
    return (u32*)bf.tmp + ((u64)pc.channels * pc.pairs << pc.log2n) + 4u * pair;
}

// log2 of the power of two σ (0 .. 60) that a product bounded by |Z| <= sum / c (|K| <= 1: the
// filter is divided by s_k) is multiplied by: the largest with σ sum / c <= 2^14. A zero, NaN
// or infinite bound takes σ = 1.
__device__ __forceinline__ int mt_product_scale_log2(float sum, float c) {
    float b = sum / c;
    if (!(b > 0.0f) || !(b < 3.0e38f)) {
        return 0;
    }
    int e = (int)(float_bits(b) >> 23) - 127; // floor(log2 b), b normal or not
    int k = 13 - e;
    return k < 0 ? 0 : (k > 60 ? 60 : k);
}

// k of a pair whose rows have maxima (bits) m and sums of |value| `sums` (unscaled) at N = n.
__device__ __forceinline__ int mt_pair_product_scale_log2(const u32 m[2], const float sums[2],
                                                          u32 n) {
    float l1 = 0.0f;
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        l1 += sums[s] * bits_float(mt_row_scale_exponent(m[s]) << 23);
    }
    return mt_product_scale_log2(l1, 2.0f * (float)n);
}

// A largest finite |value| (bits m) and a sum of |value| scaled by 2^(e - 127), e =
// mt_row_scale_exponent(m): the scales passes' partial results. Scaled by the partial's own
// exponent, a sum neither overflows (at most 2^14 a value) nor loses small values to f32's
// subnormals, and parts merge exactly up to rounding (powers of two; a part 2^-126 below the
// total counts as 0, a non-finite sum stays non-finite).
struct MtMaxSum {
    u32 m;
    float s;
};

__device__ __forceinline__ float mt_rescale(float s, u32 from, u32 to) {
    const u32 d = from - to; // to <= from: the larger maximum's exponent
    // A non-finite sum stays what it is (inf * 0 would make NaN of an inf: the backward's taps
    // scale tells them apart).
    return finite_f(s) ? s * (d > 126u ? 0.0f : pow2(-(int)d)) : s;
}

__device__ __forceinline__ MtMaxSum mt_max_sum_merge(MtMaxSum a, MtMaxSum b) {
    const u32 m = max_u(a.m, b.m), e = mt_row_scale_exponent(m);
    return MtMaxSum{m, mt_rescale(a.s, mt_row_scale_exponent(a.m), e) +
                           mt_rescale(b.s, mt_row_scale_exponent(b.m), e)};
}

__device__ __forceinline__ void mt_max_sum_add8(MtMaxSum& a, const float x[8]) {
    u32 m = a.m;
#pragma unroll
    for (u32 j = 0; j < 8u; j++) {
        m = max_u(m, finite_bits(x[j]));
    }
    const u32 e = mt_row_scale_exponent(m);
    a.s = mt_rescale(a.s, mt_row_scale_exponent(a.m), e) + mt_abs_sum8(x, e);
    a.m = m;
}

// The warp's merge of each lane's a[q], in every lane (a butterfly: both lanes of a step merge
// the same two values, so the result does not depend on the lane).
template <u32 Q>
__device__ __forceinline__ void mt_max_sum_warp(MtMaxSum (&a)[Q]) {
#pragma unroll
    for (u32 b = 16u; b >= 1u; b >>= 1) {
#pragma unroll
        for (u32 q = 0; q < Q; q++) {
            MtMaxSum o{shfl_xor(a[q].m, b), bits_float(shfl_xor(float_bits(a[q].s), b))};
            a[q] = mt_max_sum_merge(a[q], o);
        }
    }
}

// The block's merge of each thread's a[q], in thread 0: the warps' merges, then the warps in
// order (the same result every run). `part`: shared, MT_THREADS / 32 entries per q.
template <u32 Q>
__device__ __forceinline__ void mt_max_sum_block(MtMaxSum (&a)[Q], MtMaxSum (*part)[Q]) {
    mt_max_sum_warp<Q>(a);
    if ((threadIdx.x & 31u) == 0u) {
#pragma unroll
        for (u32 q = 0; q < Q; q++) {
            part[threadIdx.x >> 5][q] = a[q];
        }
    }
    __syncthreads();
    if (threadIdx.x == 0u) {
        for (u32 w = 1; w < MT_THREADS / 32u; w++) {
#pragma unroll
            for (u32 q = 0; q < Q; q++) {
                a[q] = mt_max_sum_merge(a[q], part[w][q]);
            }
        }
    }
}

// The scales passes' partial results: per pair and 16K slice of the positions, Q records
// (forward: the two rows; backward: x and d of each row) after the pairs' scale words.
__device__ __forceinline__ MtMaxSum* mt_scale_parts(u32* after_scales, u32 pair, u32 o_log2,
                                                    u32 q) {
    return (MtMaxSum*)after_scales + (((u64)pair << o_log2) * q);
}

// The slice of block b (pair b >> o_log2, positions (b mod N_o) 16K ..): each row's MtMaxSum of
// its inputs (x from u; with D, d from u2 too), merged over the block into thread 0.
template <bool D>
__device__ __forceinline__ void mt_slice_max_sums(const Params& pc, const Divisors& dv,
                                                  const Buffers& bf, u32 b,
                                                  MtMaxSum (&a)[D ? 4 : 2],
                                                  MtMaxSum (*part)[D ? 4 : 2]) {
    const u32 o_log2 = pc.log2n - MT_INNER_LOG2, pair = b >> o_log2;
    const u32 h = udiv(pair, dv.pairs), dy_flags = pc.flags | FLAG_BODY_ONLY;
    const u32 start = (b - (pair << o_log2)) << MT_INNER_LOG2;
#pragma unroll
    for (u32 q = 0; q < (D ? 4u : 2u); q++) {
        a[q] = MtMaxSum{0u, 0.0f};
    }
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        SegmentRow seg = locate_segment(pc, dv, 2u * (pair - h * pc.pairs) + s, h);
        for (u32 pos = start + 8u * threadIdx.x; pos < start + (1u << MT_INNER_LOG2);
             pos += 8u * MT_THREADS) {
            float x[8];
            mt_input8(pc, dv, bf.u, bf.pre, pc.flags, seg, pos, x);
            mt_max_sum_add8(a[s], x);
            if (D) {
                float d[8];
                mt_input8(pc, dv, bf.u2, bf.post, dy_flags, seg, pos, d);
                mt_max_sum_add8(a[2u + s], d);
            }
        }
    }
    mt_max_sum_block<D ? 4 : 2>(a, part);
}

// Lane 0 of the warp of `pair`: its N_o slices' records merged (lane t takes slices t, t + 32,
// .., then the warp's merge).
template <u32 Q>
__device__ __forceinline__ void mt_pair_max_sums(const MtMaxSum* parts, u32 o_log2,
                                                 MtMaxSum (&a)[Q]) {
#pragma unroll
    for (u32 q = 0; q < Q; q++) {
        a[q] = MtMaxSum{0u, 0.0f};
    }
    for (u32 t = threadIdx.x & 31u; t < (1u << o_log2); t += 32u) {
#pragma unroll
        for (u32 q = 0; q < Q; q++) {
            a[q] = mt_max_sum_merge(a[q], parts[Q * t + q]);
        }
    }
    mt_max_sum_warp<Q>(a);
}

// First of the scales' two passes, forward (D false: the two rows) and backward (D true: x and
// d of each row): a block per pair and 16K slice of its positions (N_o blocks a pair: one block
// per pair read whole rows at a few blocks per chunk, 0.73 ms of 1.4 at 1M), its Q records at
// `after` + Q b.
template <bool D>
__device__ __forceinline__ void mt_scales_slice(const Params& pc, const Buffers& bf,
                                                const Divisors& dv, u32* after) {
    constexpr u32 Q = D ? 4u : 2u;
    __shared__ MtMaxSum part[MT_THREADS / 32u][Q];
    const u32 b = block_index();
    if (b >= pc.total_lines) {
        return;
    }
    MtMaxSum a[Q];
    mt_slice_max_sums<D>(pc, dv, bf, b, a, part);
    if (threadIdx.x == 0u) {
        MtMaxSum* parts = mt_scale_parts(after, b, 0u, Q);
#pragma unroll
        for (u32 q = 0; q < Q; q++) {
            parts[q] = a[q];
        }
    }
}

extern "C" __global__ void __launch_bounds__(MT_THREADS, 2)
    fftconv_monarch_scales(const Params pc, const Buffers bf, const Divisors dv) {
    mt_scales_slice<false>(pc, bf, dv, mt_scales(pc, bf, pc.channels * pc.pairs));
}

// Second pass: a warp per pair (pc.total_lines pairs), the slices merged: each row's scale
// exponent and the product's k (mt_product_scale_log2 of the pair's scaled L1 sum).
extern "C" __global__ void __launch_bounds__(MT_THREADS)
    fftconv_monarch_scales_finish(const Params pc, const Buffers bf, const Divisors dv) {
    (void)dv;
    const u32 pair = block_index() * (MT_THREADS / 32u) + (threadIdx.x >> 5);
    if (pair >= pc.total_lines) {
        return; // the whole warp
    }
    const u32 o_log2 = pc.log2n - MT_INNER_LOG2;
    MtMaxSum a[2];
    mt_pair_max_sums<2>(
        mt_scale_parts(mt_scales(pc, bf, pc.channels * pc.pairs), pair, o_log2, 2u), o_log2, a);
    if ((threadIdx.x & 31u) == 0u) {
        u32* sp = mt_scales(pc, bf, pair);
        sp[0] = mt_row_scale_exponent(a[0].m);
        sp[1] = mt_row_scale_exponent(a[1].m);
        sp[2] = (u32)mt_product_scale_log2(a[0].s + a[1].s, 2.0f * (float)(1u << pc.log2n));
    }
}

// In place: the 2^LOG2-point DFT (forward, or inverse without 1 / N) of z in registers, natural
// order in and out (radix-2 decimation in frequency, the bit reversal as register renaming).
template <u32 LOG2, bool FORWARD>
__device__ __forceinline__ void mt_dft_registers(const Params& pc, const Buffers& bf, cpx* z) {
    constexpr u32 N = 1u << LOG2;
#pragma unroll
    for (u32 half = N / 2u; half >= 1u; half >>= 1) {
#pragma unroll
        for (u32 i = 0; i < N; i++) {
            if ((i & half) == 0u) {
                cpx a = z[i], b = z[i + half];
                z[i] = cadd(a, b);
                cpx d = csub(a, b);
                u32 e = (i & (half - 1u)) * (N / (2u * half)); // W_(2 half)^(i mod half)
                if (e != 0u) {
                    cpx w = root(pc, bf, e, LOG2);
                    d = cmul(d, FORWARD ? w : conj_c(w));
                }
                z[i + half] = d;
            }
        }
    }
#pragma unroll
    for (u32 i = 0; i < N; i++) {
        u32 r = 0u;
#pragma unroll
        for (u32 b = 0; b < LOG2; b++) {
            r |= ((i >> b) & 1u) << (LOG2 - 1u - b);
        }
        if (r > i) {
            cpx t = z[i];
            z[i] = z[r];
            z[r] = t;
        }
    }
}

// The column passes' templates by N_o = 2^(log2n - 14): in registers for N_o = 2 .. 16
// (O_LOG2), through shared tiles split A x B for 32 .. 256 (16 x 2, 4 x 16, 8 x 16, 16 x 16; the
// host's `monarch_tile_bytes` sizes the tiles). One table for the forward's and backward's
// entries.
#define MT_COLUMN_DISPATCH(f)                                                                      \
    switch (pc.log2n - MT_INNER_LOG2) {                                                            \
    case 1u: f<1>(pc, bf, dv); break;                                                              \
    case 2u: f<2>(pc, bf, dv); break;                                                              \
    case 3u: f<3>(pc, bf, dv); break;                                                              \
    default: f<4>(pc, bf, dv); break;                                                              \
    }
#define MT_TILE_DISPATCH(f)                                                                        \
    switch (pc.log2n - MT_INNER_LOG2) {                                                            \
    case 5u: f<4, 1>(pc, bf, dv); break;                                                           \
    case 6u: f<2, 4>(pc, bf, dv); break;                                                           \
    case 7u: f<3, 4>(pc, bf, dv); break;                                                           \
    default: f<4, 4>(pc, bf, dv); break;                                                           \
    }

// This thread's column of the column passes: blocks of 256 consecutive n_i of one pair.
struct MtColumn {
    u32 pair;
    u32 ni;
};

__device__ __forceinline__ MtColumn mt_column(u32 block) {
    u32 tiles_log2 = MT_INNER_LOG2 - 8u;
    return MtColumn{block >> tiles_log2, ((block & ((1u << tiles_log2) - 1u)) << 8) + threadIdx.x};
}

// Column n_i of a pair whose rows are `seg` with scale exponents e: the scaled rows' N_o values,
// the N_o-point DFT / N_o in f32 registers and W_N^(n_i k_o); put(k_o, w) stores row k_o's f16
// word w.
template <u32 O_LOG2, typename Put>
__device__ __forceinline__ void mt_column_forward(const Params& pc, const Buffers& bf,
                                                  const Divisors& dv, const SegmentRow seg[2],
                                                  const u32 e[2], u32 ni, Put put) {
    constexpr u32 NO = 1u << O_LOG2;
    cpx z[NO];
    // The row scales and 1 / N_o (exponents 13 .. 253, so 9 .. 253 here).
    float sc0 = bits_float((e[0] - O_LOG2) << 23), sc1 = bits_float((e[1] - O_LOG2) << 23);
#pragma unroll
    for (u32 o = 0; o < NO; o++) {
        u32 pos = ni + (o << MT_INNER_LOG2);
        z[o] = mk(segment_input_at(pc, dv, bf.u, bf.pre, pc.flags, seg[0], pos) * sc0,
                  segment_input_at(pc, dv, bf.u, bf.pre, pc.flags, seg[1], pos) * sc1);
    }
    mt_dft_registers<O_LOG2, true>(pc, bf, z);
    // W_N^(n_i k) as the powers of one gathered W_N^(n_i) (see root()).
    const cpx w1 = root(pc, bf, ni, pc.log2n);
    cpx wk = w1;
#pragma unroll
    for (u32 k = 0; k < NO; k++) {
        cpx v = z[0];
        if (k != 0u) {
            v = cmul(z[k], wk);
            wk = cmul(wk, w1);
        }
        put(k, pack_f16x2(v.x, v.y));
    }
}

// The inverse of mt_column_forward after the middle rows: get(k_o) reads row k_o's f16 word;
// conj W_N^(n_i k_o), the inverse N_o-point DFT, the scales undone, post-gated, to y.
template <u32 O_LOG2, typename Get>
__device__ __forceinline__ void mt_column_inverse(const Params& pc, const Buffers& bf,
                                                  const SegmentRow seg[2], u32 h, const u32 e[2],
                                                  float unscale, u32 ni, Get get) {
    constexpr u32 NO = 1u << O_LOG2;
    cpx z[NO];
    const cpx w1 = conj_c(root(pc, bf, ni, pc.log2n)); // powers of one root (see root())
    cpx wk = w1;
#pragma unroll
    for (u32 k = 0; k < NO; k++) {
        u32 w = get(k);
        z[k] = mk(half_float(w), half_float(w >> 16));
        if (k != 0u) {
            z[k] = cmul(z[k], wk);
            wk = cmul(wk, w1);
        }
    }
    mt_dft_registers<O_LOG2, false>(pc, bf, z);
    // Undo N_o (the forward column DFT's 1 / N_o), (2 N_i)^2 of the middle pass's DFT matrices,
    // s_k of the filter, the row scale and the product's σ (first: z σ^-1 f cannot overflow where
    // the result does not).
    const u32 n = 1u << pc.log2n;
    float ci = 2.0f * (float)(1u << MT_INNER_LOG2);
    float sk = load_ro(bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u)).x;
    float common = (float)NO * ci * ci;
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        float f = sk * bits_float((254u - e[s]) << 23) * common;
#pragma unroll
        for (u32 o = 0; o < NO; o++) {
            store_segment_at(pc, bf.y, bf.post, seg[s], ni + (o << MT_INNER_LOG2),
                             (s == 0u ? z[o].x : z[o].y) * unscale * f);
        }
    }
}

// The two rows of pair `pair` (of channel h).
__device__ __forceinline__ void mt_pair_rows(const Params& pc, const Divisors& dv, u32 pair, u32 h,
                                             SegmentRow seg[2]) {
    seg[0] = locate_segment(pc, dv, 2u * (pair - h * pc.pairs), h);
    seg[1] = locate_segment(pc, dv, 2u * (pair - h * pc.pairs) + 1u, h);
}

template <u32 O_LOG2>
__device__ __forceinline__ void mt_columns_forward(const Params& pc, const Buffers& bf,
                                                   const Divisors& dv) {
    const u32 b = block_index();
    if (b >= pc.total_lines) {
        return;
    }
    MtColumn c = mt_column(b);
    const u32 h = udiv(c.pair, dv.pairs);
    const u32* sp = mt_scales(pc, bf, c.pair);
    const u32 e[2] = {sp[0], sp[1]};
    SegmentRow seg[2];
    mt_pair_rows(pc, dv, c.pair, h, seg);
    u32* out = (u32*)bf.tmp + ((u64)c.pair << pc.log2n) + c.ni;
    mt_column_forward<O_LOG2>(pc, bf, dv, seg, e, c.ni,
                              [&](u32 k, u32 w) { out[k << MT_INNER_LOG2] = w; });
}

template <u32 O_LOG2>
__device__ __forceinline__ void mt_columns_inverse(const Params& pc, const Buffers& bf,
                                                   const Divisors& dv) {
    const u32 b = block_index();
    if (b >= pc.total_lines) {
        return;
    }
    MtColumn c = mt_column(b);
    const u32 h = udiv(c.pair, dv.pairs);
    const u32* in = (const u32*)bf.tmp + ((u64)c.pair << pc.log2n) + c.ni;
    const u32* sp = mt_scales(pc, bf, c.pair);
    const u32 e[2] = {sp[0], sp[1]};
    const float unscale = pow2(-(int)sp[2]);
    SegmentRow seg[2];
    mt_pair_rows(pc, dv, c.pair, h, seg);
    mt_column_inverse<O_LOG2>(pc, bf, seg, h, e, unscale, c.ni,
                              [&](u32 k) { return in[k << MT_INNER_LOG2]; });
}

// N_o = 32 .. 256 (512K .. 4M): N_o complex values do not fit a thread's registers, so a block
// takes 32 columns through a shared-memory tile (N_o x 32 complex f32, up to 64 KiB) and splits
// the column DFT as A x B: n_o = a + A b, k_o = k_b + B k_a. Forward: per (a, column) the B-point
// DFT over b of the scaled rows, times W_(N_o)^(a k_b), to tile row a + A k_b; then per (k_b,
// column) the A-point DFT over a, times W_N^(n_i k_o), to the intermediate. Inverse: the same
// backwards, the inverse A-point DFT first (its words read per (k_b, column)).
#define MT_TILE_COLUMNS 32u

// The tile's forward column DFT of the block's 32 columns from c0: value(pos) is the pair's
// scaled complex value at position pos (Re row 0, Im row 1); put(k_o, n_i, w) stores row k_o's
// f16 word w. The caller separates two uses of the tile by a barrier.
template <u32 A_LOG2, u32 B_LOG2, typename Value, typename Put>
__device__ __forceinline__ void mt_tile_forward(const Params& pc, const Buffers& bf, cpx* tile,
                                                u32 c0, Value value, Put put) {
    constexpr u32 A = 1u << A_LOG2, B = 1u << B_LOG2, O_LOG2 = A_LOG2 + B_LOG2;
    for (u32 item = threadIdx.x; item < A * MT_TILE_COLUMNS; item += MT_THREADS) {
        u32 c = item & 31u, a = item >> 5, ni = c0 + c;
        cpx z[B];
#pragma unroll
        for (u32 b = 0; b < B; b++) {
            z[b] = value(ni + ((a + A * b) << MT_INNER_LOG2));
        }
        mt_dft_registers<B_LOG2, true>(pc, bf, z);
#pragma unroll
        for (u32 kb = 0; kb < B; kb++) {
            cpx v = kb == 0u ? z[0] : cmul(z[kb], root(pc, bf, a * kb, O_LOG2));
            tile[(a + A * kb) * MT_TILE_COLUMNS + c] = v;
        }
    }
    __syncthreads();
    for (u32 item = threadIdx.x; item < B * MT_TILE_COLUMNS; item += MT_THREADS) {
        u32 c = item & 31u, kb = item >> 5, ni = c0 + c;
        cpx z[A];
#pragma unroll
        for (u32 a = 0; a < A; a++) {
            z[a] = tile[(a + A * kb) * MT_TILE_COLUMNS + c];
        }
        mt_dft_registers<A_LOG2, true>(pc, bf, z);
        // W_N^(n_i k_o) = W_N^(n_i k_b) (W_N^(n_i B))^(k_a) (see root()).
        const cpx step = root(pc, bf, ni * B, pc.log2n);
        cpx wk = root(pc, bf, ni * kb, pc.log2n);
#pragma unroll
        for (u32 ka = 0; ka < A; ka++) {
            u32 ko = kb + B * ka;
            cpx v = ko == 0u ? z[0] : cmul(z[ka], wk);
            wk = cmul(wk, step);
            put(ko, ni, pack_f16x2(v.x, v.y));
        }
    }
}

// The inverse of mt_tile_forward: get(k_o, n_i) reads row k_o's word; out(pos, z) takes the
// unscaled complex result at position pos (Re row 0, Im row 1). The caller separates two uses
// of the tile by a barrier.
template <u32 A_LOG2, u32 B_LOG2, typename Get, typename Out>
__device__ __forceinline__ void mt_tile_inverse(const Params& pc, const Buffers& bf, cpx* tile,
                                                u32 c0, Get get, Out out) {
    constexpr u32 A = 1u << A_LOG2, B = 1u << B_LOG2, O_LOG2 = A_LOG2 + B_LOG2;
    for (u32 item = threadIdx.x; item < B * MT_TILE_COLUMNS; item += MT_THREADS) {
        u32 c = item & 31u, kb = item >> 5, ni = c0 + c;
        cpx z[A];
        const cpx step = conj_c(root(pc, bf, ni * B, pc.log2n)); // powers of one root (see root())
        cpx wk = conj_c(root(pc, bf, ni * kb, pc.log2n));
#pragma unroll
        for (u32 ka = 0; ka < A; ka++) {
            u32 ko = kb + B * ka;
            u32 w = get(ko, ni);
            z[ka] = mk(half_float(w), half_float(w >> 16));
            if (ko != 0u) {
                z[ka] = cmul(z[ka], wk);
            }
            wk = cmul(wk, step);
        }
        mt_dft_registers<A_LOG2, false>(pc, bf, z);
#pragma unroll
        for (u32 a = 0; a < A; a++) {
            cpx v = a == 0u || kb == 0u ? z[a] : cmul(z[a], conj_c(root(pc, bf, a * kb, O_LOG2)));
            tile[(a + A * kb) * MT_TILE_COLUMNS + c] = v;
        }
    }
    __syncthreads();
    for (u32 item = threadIdx.x; item < A * MT_TILE_COLUMNS; item += MT_THREADS) {
        u32 c = item & 31u, a = item >> 5, ni = c0 + c;
        cpx z[B];
#pragma unroll
        for (u32 kb = 0; kb < B; kb++) {
            z[kb] = tile[(a + A * kb) * MT_TILE_COLUMNS + c];
        }
        mt_dft_registers<B_LOG2, false>(pc, bf, z);
#pragma unroll
        for (u32 b = 0; b < B; b++) {
            out(ni + ((a + A * b) << MT_INNER_LOG2), z[b]);
        }
    }
}

// The block's pair and first column of the tile column passes (32 columns per block).
__device__ __forceinline__ MtColumn mt_tile_column(u32 blk) {
    const u32 tiles_log2 = MT_INNER_LOG2 - 5u;
    return MtColumn{blk >> tiles_log2, (blk & ((1u << tiles_log2) - 1u)) << 5};
}

template <u32 A_LOG2, u32 B_LOG2>
__device__ __forceinline__ void mt_tile_columns_forward(const Params& pc, const Buffers& bf,
                                                        const Divisors& dv) {
    constexpr u32 O_LOG2 = A_LOG2 + B_LOG2;
    const u32 blk = block_index();
    if (blk >= pc.total_lines) {
        return; // uniform over the block
    }
    const MtColumn t = mt_tile_column(blk);
    const u32 h = udiv(t.pair, dv.pairs);
    const u32* e = mt_scales(pc, bf, t.pair);
    SegmentRow seg[2];
    mt_pair_rows(pc, dv, t.pair, h, seg);
    float sc0 = bits_float((e[0] - O_LOG2) << 23), sc1 = bits_float((e[1] - O_LOG2) << 23);
    u32* out = (u32*)bf.tmp + ((u64)t.pair << pc.log2n);
    mt_tile_forward<A_LOG2, B_LOG2>(
        pc, bf, smem, t.ni,
        [&](u32 pos) {
            return mk(segment_input_at(pc, dv, bf.u, bf.pre, pc.flags, seg[0], pos) * sc0,
                      segment_input_at(pc, dv, bf.u, bf.pre, pc.flags, seg[1], pos) * sc1);
        },
        [&](u32 ko, u32 ni, u32 w) { out[((u64)ko << MT_INNER_LOG2) + ni] = w; });
}

template <u32 A_LOG2, u32 B_LOG2>
__device__ __forceinline__ void mt_tile_columns_inverse(const Params& pc, const Buffers& bf,
                                                        const Divisors& dv) {
    constexpr u32 A = 1u << A_LOG2, B = 1u << B_LOG2;
    const u32 blk = block_index();
    if (blk >= pc.total_lines) {
        return; // uniform over the block
    }
    const MtColumn t = mt_tile_column(blk);
    const u32 h = udiv(t.pair, dv.pairs);
    const u32* in = (const u32*)bf.tmp + ((u64)t.pair << pc.log2n);
    const u32* e = mt_scales(pc, bf, t.pair);
    const u32 n = 1u << pc.log2n;
    float ci = 2.0f * (float)(1u << MT_INNER_LOG2);
    float sk = load_ro(bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u)).x;
    float common = (float)(A * B) * ci * ci;
    float f0 = sk * bits_float((254u - e[0]) << 23) * common;
    float f1 = sk * bits_float((254u - e[1]) << 23) * common;
    const float unscale = pow2(-(int)e[2]);
    SegmentRow seg[2];
    mt_pair_rows(pc, dv, t.pair, h, seg);
    mt_tile_inverse<A_LOG2, B_LOG2>(
        pc, bf, smem, t.ni, [&](u32 ko, u32 ni) { return in[((u64)ko << MT_INNER_LOG2) + ni]; },
        [&](u32 pos, cpx z) {
            store_segment_at(pc, bf.y, bf.post, seg[0], pos, z.x * unscale * f0);
            store_segment_at(pc, bf.y, bf.post, seg[1], pos, z.y * unscale * f1);
        });
}

extern "C" __global__ void __launch_bounds__(MT_THREADS)
    fftconv_monarch_columns_forward(const Params pc, const Buffers bf, const Divisors dv) {
    MT_COLUMN_DISPATCH(mt_columns_forward);
}

extern "C" __global__ void __launch_bounds__(MT_THREADS)
    fftconv_monarch_tile_columns_forward(const Params pc, const Buffers bf, const Divisors dv) {
    MT_TILE_DISPATCH(mt_tile_columns_forward);
}

// N_o = 2 .. 16 (a thread per column) and 32 .. 256 (shared tiles) are separate entries, so
// that the register columns are not held to the tiles' register count.
extern "C" __global__ void __launch_bounds__(MT_THREADS)
    fftconv_monarch_columns_inverse(const Params pc, const Buffers bf, const Divisors dv) {
    MT_COLUMN_DISPATCH(mt_columns_inverse);
}

extern "C" __global__ void __launch_bounds__(MT_THREADS)
    fftconv_monarch_tile_columns_inverse(const Params pc, const Buffers bf, const Divisors dv) {
    MT_TILE_DISPATCH(mt_tile_columns_inverse);
}

// Row k_o of pair `pair`: fftconv_monarch_wide's steps for N1 = 64 rows of 256 (R = 4) on the
// intermediate's f16 words `words` (16K, 256 per row r = a1 + 16 a2), which are already scaled
// (no maxima; the radix step's 1 / 4 applied as it runs), with the filter bins k_o + N_o k_i
// and the product times σ, written back in place without the final scales (the inverse column
// pass applies them).
// ALIASED: the words lie in shared memory under the planes (fftconv_monarch_cluster), so the
// load step reads all of a thread's words before any thread writes the planes, and the store
// step reads all its planes before any thread writes the words.
template <bool ALIASED>
__device__ __forceinline__ void mt_middle_row(const Params& pc, const Buffers& bf,
                                              const Divisors& dv, u32 pair, u32 ko, u32* words,
                                              MtPlanes pl, float sigma) {
    constexpr u32 R_LOG2 = 2u, R = 4u, ROWS = 64u;
    constexpr u32 UNITS = ALIASED ? 2u : 1u; // units (mt_unit) held in registers at once
    const u32 n = 1u << pc.log2n;
    Params rp = pc; // the row transform's parameters: its twiddles are W_(N_i)
    rp.log2n = MT_INNER_LOG2;
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u32 h = udiv(pair, dv.pairs);

    // Load: the radix-4 DFT over a2 and W_64^(a1 k2), to shared row 16 k2 + a1.
#pragma unroll 1
    for (u32 j0 = 0; j0 < 2u; j0 += UNITS) {
        Quad q[UNITS][R][2];
#pragma unroll
        for (u32 u = 0; u < UNITS; u++) {
            MtUnit m = mt_unit(j0 + u);
#pragma unroll
            for (u32 a2 = 0; a2 < R; a2++) {
                const Quad* src = (const Quad*)(words + (m.a1 + 16u * a2) * 256u + m.col);
                q[u][a2][0] = src[0];
                q[u][a2][1] = src[1];
            }
        }
        if (ALIASED) {
            __syncthreads(); // uniform: one iteration
        }
#pragma unroll
        for (u32 u = 0; u < UNITS; u++) {
            MtUnit m = mt_unit(j0 + u);
            cpx w[R];
#pragma unroll
            for (u32 k2 = 0; k2 < R; k2++) {
                w[k2] = root(pc, bf, m.a1 * k2, R_LOG2 + 4u);
            }
#pragma unroll
            for (u32 p = 0; p < 8u; p += 2u) {
                cpx z[2][R];
#pragma unroll
                for (u32 hp = 0; hp < 2u; hp++) {
#pragma unroll
                    for (u32 a2 = 0; a2 < R; a2++) {
                        u32 v = q[u][a2][(p + hp) >> 2].w[(p + hp) & 3u];
                        z[hp][a2] = mk(half_float(v) * 0.25f, half_float(v >> 16) * 0.25f);
                    }
                    mt_radix<R_LOG2, true>(z[hp]);
#pragma unroll
                    for (u32 k2 = 1; k2 < R; k2++) {
                        z[hp][k2] = cmul(z[hp][k2], w[k2]);
                    }
                }
#pragma unroll
                for (u32 k2 = 0; k2 < R; k2++) {
                    u32 at = (16u * k2 + m.a1) * MT_ROW + m.col + p;
                    *(u32*)&pl.p[0][at] = pack_f16x2(z[0][k2].x, z[1][k2].x);
                    *(u32*)&pl.p[1][at] = pack_f16x2(z[0][k2].y, z[1][k2].y);
                }
            }
        }
    }
    __syncthreads();
    mt_columns<true>(pl, rp, bf, 4u, R, R);
    __syncthreads();
    {
        MtDft16 f;
        mt_dft16(rp, bf, f);
        const cpx* filt = bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u) + 2u +
                          ((u64)ko << MT_INNER_LOG2) + lane;
#pragma unroll 1
        for (u32 i = 0; i < ROWS / 8u; i++) {
            u32 row = warp + 8u * i;
            u32 ka = (row & 15u) * R + (row >> 4);
            mt_row(f, pl, rp, bf, row, ka, filt + ka * 256u, true, mt_compact(pc), sigma);
        }
    }
    __syncthreads();
    mt_columns<false>(pl, rp, bf, 4u, R, R);
    __syncthreads();

    // Store: conj W_64^(a1 k2), the inverse radix-4 over k2 with 1 / 4, back to the words.
#pragma unroll 1
    for (u32 j0 = 0; j0 < 2u; j0 += UNITS) {
        Quad q[UNITS][R][2];
#pragma unroll
        for (u32 u = 0; u < UNITS; u++) {
            MtUnit m = mt_unit(j0 + u);
            cpx w[R];
#pragma unroll
            for (u32 k2 = 0; k2 < R; k2++) {
                w[k2] = conj_c(root(pc, bf, m.a1 * k2, R_LOG2 + 4u));
            }
#pragma unroll
            for (u32 p = 0; p < 8u; p += 2u) {
                cpx z[2][R];
#pragma unroll
                for (u32 k2 = 0; k2 < R; k2++) {
                    u32 at = (16u * k2 + m.a1) * MT_ROW + m.col + p;
                    u32 re = *(const u32*)&pl.p[0][at], im = *(const u32*)&pl.p[1][at];
                    z[0][k2] = mk(half_float(re), half_float(im));
                    z[1][k2] = mk(half_float(re >> 16), half_float(im >> 16));
                }
#pragma unroll
                for (u32 hp = 0; hp < 2u; hp++) {
#pragma unroll
                    for (u32 k2 = 1; k2 < R; k2++) {
                        z[hp][k2] = cmul(z[hp][k2], w[k2]);
                    }
                    mt_radix<R_LOG2, false>(z[hp]);
#pragma unroll
                    for (u32 a2 = 0; a2 < R; a2++) {
                        q[u][a2][(p + hp) >> 2].w[(p + hp) & 3u] =
                            pack_f16x2(z[hp][a2].x * 0.25f, z[hp][a2].y * 0.25f);
                    }
                }
            }
        }
        if (ALIASED) {
            __syncthreads(); // uniform: one iteration
        }
#pragma unroll
        for (u32 u = 0; u < UNITS; u++) {
            MtUnit m = mt_unit(j0 + u);
#pragma unroll
            for (u32 a2 = 0; a2 < R; a2++) {
                Quad* dst = (Quad*)(words + (m.a1 + 16u * a2) * 256u + m.col);
                dst[0] = q[u][a2][0];
                dst[1] = q[u][a2][1];
            }
        }
    }
}

// Row k_o of pair p (block p N_o + k_o), in place in bf.tmp.
extern "C" __global__ void __launch_bounds__(MT_THREADS, 2)
    fftconv_monarch_middle(const Params pc, const Buffers bf, const Divisors dv) {
    const u32 b = block_index();
    if (b >= pc.total_lines) {
        return; // uniform over the block
    }
    const u32 o_log2 = pc.log2n - MT_INNER_LOG2;
    const u32 pair = b >> o_log2, ko = b & ((1u << o_log2) - 1u);
    u16* base = (u16*)smem;
    MtPlanes pl = {{base, base + 64u * MT_ROW}};
    u32* words = (u32*)bf.tmp + ((u64)pair << pc.log2n) + ((u64)ko << MT_INNER_LOG2);
    mt_middle_row<false>(pc, bf, dv, pair, ko, words, pl, pow2((int)mt_scales(pc, bf, pair)[2]));
}

// ---- the Monarch pass for N = 32K .. 128K on sm_90: a thread-block cluster per pair -------------
//
// The long path's three steps without the trips through bf.tmp: the N_o = 2, 4, 8 blocks of a
// cluster (__cluster_dims__, one kernel per N_o) hold one 16K-point row k_o = rank each, as f16
// words in their shared memory, and exchange them through distributed shared memory (`mapa`):
//   1. the rows' maxima over the block's positions n_o = rank; cluster barrier; each block reads
//      every block's maxima, so all take the same row scales (mt_row_scale_exponent);
//   2. the forward column DFTs of the block's 16K / N_o columns (mt_column_forward), row k_o's
//      word to block k_o's stage; cluster barrier;
//   3. the block's row (mt_middle_row, on the stage, which the planes alias); cluster barrier;
//   4. the inverse column DFTs of its columns from every block's stage (mt_column_inverse), to
//      y; a last cluster barrier, so that no block leaves while another reads its stage.
// Global traffic is the floor's (u read once, y written once) plus u's second read in step 2
// (from L2: the pair's rows were read in step 1 moments before).
#define MT_CLUSTER_REGION_BYTES (64u * MT_ROW * 2u * 2u) // the planes; the 64 KiB stage under them
#define MT_CLUSTER_BYTES (MT_CLUSTER_REGION_BYTES + 16u)  // then two row maxima, two sums

// The cluster kernels exist for sm_90 and newer (and the emulation); MT_CLUSTERS=1 forces them
// (tests/device_compile.rs, whose clang may stop at sm_80, assembles them for sm_90 then).
#ifndef MT_CLUSTERS
#if defined(FFTCONV_HOST_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
#define MT_CLUSTERS 1
#else
#define MT_CLUSTERS 0
#endif
#endif

#if MT_CLUSTERS
#if defined(FFTCONV_HOST_EMULATION)
__device__ __forceinline__ char* mt_cluster_smem() { return (char*)emu_block_smem(); }
__device__ __forceinline__ void cluster_sync() { emu_cluster_sync(); }
template <typename T>
__device__ __forceinline__ T* cluster_map(T* p, u32 rank) {
    return (T*)emu_map_shared((const void*)p, rank);
}
#else
__device__ __forceinline__ char* mt_cluster_smem() { return (char*)smem; }
// Every thread of every block of the cluster (arrive has release, wait acquire semantics).
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
}
// The generic address of *p's counterpart in the shared memory of the cluster's block `rank`.
template <typename T>
__device__ __forceinline__ T* cluster_map(T* p, u32 rank) {
    u64 out;
    asm("mapa.u64 %0, %1, %2;" : "=l"(out) : "l"((u64)p), "r"(rank));
    return (T*)out;
}
#endif

template <u32 O_LOG2>
__device__ __forceinline__ void mt_cluster(const Params& pc, const Buffers& bf, const Divisors& dv) {
    constexpr u32 NO = 1u << O_LOG2;
    constexpr u32 SLICE = (1u << MT_INNER_LOG2) >> O_LOG2; // columns per block
    const u32 b = block_index();
    const u32 pair = b >> O_LOG2, rank = b & (NO - 1u); // rank = %cluster_ctarank (1-D grid)
    if (pair >= (pc.total_lines >> O_LOG2)) {
        return; // whole clusters: uniform over each
    }
    char* base = mt_cluster_smem();
    u32* stage = (u32*)base;
    MtPlanes pl = {{(u16*)base, (u16*)base + 64u * MT_ROW}};
    u32* maxima = (u32*)(base + MT_CLUSTER_REGION_BYTES); // [2] maxima, then [2] f32 sums
    const u32 h = udiv(pair, dv.pairs);
    SegmentRow seg[2];
    mt_pair_rows(pc, dv, pair, h, seg);

    // 1. The rows' maxima over this block's positions, then over the cluster's.
    float* sums = (float*)(maxima + 2);
    if (threadIdx.x < 2u) {
        maxima[threadIdx.x] = 0u;
        sums[threadIdx.x] = 0.0f;
    }
    __syncthreads();
    const u32 first = rank << MT_INNER_LOG2, end = first + (1u << MT_INNER_LOG2);
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        u32 mx = 0u;
        float sum = 0.0f;
        for (u32 pos = first + 8u * threadIdx.x; pos < end; pos += 8u * MT_THREADS) {
            float x[8];
            mt_input8(pc, dv, bf.u, bf.pre, pc.flags, seg[s], pos, x);
#pragma unroll
            for (u32 j = 0; j < 8u; j++) {
                mx = max_u(mx, finite_bits(x[j]));
            }
            sum += mt_abs_sum8(x, 127u);
        }
        shared_max(&maxima[s], mx);
        shared_add(&sums[s], sum);
    }
    cluster_sync(); // every block's maxima in place (and every block of the cluster running)
    // The rows' maxima and sums over the cluster (the sums in rank order, so that every block
    // computes the same σ).
    u32 e[2], m[2] = {0u, 0u};
    float total[2] = {0.0f, 0.0f};
#pragma unroll
    for (u32 r = 0; r < NO; r++) {
        const u32* remote = cluster_map(maxima, r);
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            m[s] = max_u(m[s], remote[s]);
            total[s] += bits_float(remote[2u + s]);
        }
    }
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        e[s] = mt_row_scale_exponent(m[s]);
    }
    const int k_sigma = mt_pair_product_scale_log2(m, total, 1u << pc.log2n);

    // 2. The forward columns: row k_o of each to block k_o's stage.
    u32* rows[NO];
#pragma unroll
    for (u32 k = 0; k < NO; k++) {
        rows[k] = cluster_map(stage, k);
    }
#pragma unroll 1
    for (u32 c = threadIdx.x; c < SLICE; c += MT_THREADS) {
        const u32 ni = rank * SLICE + c;
        mt_column_forward<O_LOG2>(pc, bf, dv, seg, e, ni, [&](u32 k, u32 w) { rows[k][ni] = w; });
    }
    cluster_sync(); // every stage complete

    // 3. This block's row, in place.
    mt_middle_row<true>(pc, bf, dv, pair, rank, stage, pl, pow2(k_sigma));
    cluster_sync(); // every row transformed

    // 4. The inverse columns, from every block's stage to y.
#pragma unroll 1
    for (u32 c = threadIdx.x; c < SLICE; c += MT_THREADS) {
        const u32 ni = rank * SLICE + c;
        mt_column_inverse<O_LOG2>(pc, bf, seg, h, e, pow2(-k_sigma), ni,
                                  [&](u32 k) { return rows[k][ni]; });
    }
    cluster_sync(); // no block leaves while another may read its stage
}

extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(MT_THREADS, 2)
    fftconv_monarch_cluster2(const Params pc, const Buffers bf, const Divisors dv) {
    mt_cluster<1>(pc, bf, dv);
}

extern "C" __global__ void __cluster_dims__(4, 1, 1) __launch_bounds__(MT_THREADS, 2)
    fftconv_monarch_cluster4(const Params pc, const Buffers bf, const Divisors dv) {
    mt_cluster<2>(pc, bf, dv);
}

extern "C" __global__ void __cluster_dims__(8, 1, 1) __launch_bounds__(MT_THREADS, 2)
    fftconv_monarch_cluster8(const Params pc, const Buffers bf, const Divisors dv) {
    mt_cluster<3>(pc, bf, dv);
}
#endif // MT_CLUSTERS

// ---- the Monarch backward for N = 32K .. 4M: the long path's kernels for two inputs ------
//
// The forward long path's split (N = N_o x 16K, N_o = 2 .. 16, position n_i + N_i n_o,
// frequency k_o + N_o k_i) with fftconv_monarch_backward's products. The intermediates are f16
// (Re, Im) words: x with the coupled scales (then T) in the first half of bf.tmp, gated x with
// its own scales (then P) in the second, d (then G) in the first half of bf.other, and per pair
// eight words after it (the rows' maxima of x and d, the sums of |scaled x| and |scaled d|),
// then the scales' MtMaxSum records (four per pair and slice: x and d of each row):
//   fftconv_monarch_backward_scales           per pair and 16K slice: the records
//   fftconv_monarch_backward_scales_finish    per pair (a warp): the records merged into the
//                                             eight words
//   fftconv_monarch_backward_columns_forward  per column: the N_o-point DFTs / N_o of x, d (and
//                                             x'), W_N^(n_i k_o), to the intermediates
//   fftconv_monarch_backward_middle           per row k_o: the 16K row transforms, T, G, P, back
//   fftconv_monarch_backward_columns_inverse  per column: the inverse column DFTs; taps (Re T at
//                                             positions < K), du, dpre, dpost
// G and P are multiplied by powers of two of their own (mt_backward_product_scales), as the
// forward's product, so that sparse inputs keep du and dpost out of f16's subnormals (1M, 16
// impulses a row: du 2.1e-3 without). Circular problems whose history wraps (N > L) are not
// taken (their dx needs another column's value): the host checks.
__device__ __forceinline__ u32* mt_backward_words(const Params& pc, const Buffers& bf, u32 set,
                                                  u32 pair) {
    u64 pairs = (u64)pc.channels * pc.pairs;
    u32* base = set == 1u ? (u32*)bf.other : (u32*)bf.tmp;
    return base + ((set == 2u ? pairs + pair : (u64)pair) << pc.log2n);
}

__device__ __forceinline__ u32* mt_backward_pair_info(const Params& pc, const Buffers& bf, u32 pair) {
    u64 pairs = (u64)pc.channels * pc.pairs;
    return (u32*)bf.other + (pairs << pc.log2n) + 8u * (u64)pair;
}

__device__ __forceinline__ MtPairScales mt_backward_info_scales(const u32* info) {
    return mt_pair_scales(info[0], info[1], info[2], info[3]);
}

// log2 of the σ that the long backward's products G = Zd conj K and (gated) P = Zx' K are
// multiplied by (mt_product_scale_log2; undone by the inverse column pass): G's from the sum of
// |scaled d| (info[5]); P's from the sum of |scaled x| (info[4], x with the coupled scales)
// times the largest ratio of a row's own x scale (x' takes it) to its coupled one.
struct MtBackwardProductScales {
    int g, p;
};

__device__ __forceinline__ MtBackwardProductScales
mt_backward_product_scales(const u32* info, const MtPairScales& ps, u32 n) {
    const float c = 2.0f * (float)n;
    int r = 0;
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        if (ps.mx[s] != 0u) {
            int d = (int)mt_row_scale_exponent(ps.mx[s]) - (int)ps.ex[s];
            r = d > r ? d : r;
        }
    }
    int p = mt_product_scale_log2(bits_float(info[4]), c) - r;
    return MtBackwardProductScales{mt_product_scale_log2(bits_float(info[5]), c), p < 0 ? 0 : p};
}

// The backward's scales in two passes as the forward's (fftconv_monarch_scales): per pair and
// 16K slice, the MtMaxSum of x and d of each row; then a warp per pair merges them into the
// pair's info words: the maxima, and the sums of |scaled x| (x with the coupled scales of
// mt_pair_scales) and |scaled d|.
extern "C" __global__ void __launch_bounds__(MT_THREADS, 2)
    fftconv_monarch_backward_scales(const Params pc, const Buffers bf, const Divisors dv) {
    mt_scales_slice<true>(pc, bf, dv, mt_backward_pair_info(pc, bf, pc.channels * pc.pairs));
}

extern "C" __global__ void __launch_bounds__(MT_THREADS)
    fftconv_monarch_backward_scales_finish(const Params pc, const Buffers bf, const Divisors dv) {
    (void)dv;
    const u32 pair = block_index() * (MT_THREADS / 32u) + (threadIdx.x >> 5);
    if (pair >= pc.total_lines) {
        return; // the whole warp
    }
    const u32 o_log2 = pc.log2n - MT_INNER_LOG2;
    MtMaxSum a[4]; // x of rows 0, 1; d of rows 0, 1
    mt_pair_max_sums<4>(
        mt_scale_parts(mt_backward_pair_info(pc, bf, pc.channels * pc.pairs), pair, o_log2, 4u),
        o_log2, a);
    if ((threadIdx.x & 31u) == 0u) {
        const MtPairScales ps = mt_pair_scales(a[0].m, a[1].m, a[2].m, a[3].m);
        float sx = 0.0f, sd = 0.0f;
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            // The coupled x scale is at most the row's own (mt_pair_scales lowers one row).
            sx += mt_rescale(a[s].s, mt_row_scale_exponent(a[s].m), ps.ex[s]);
            sd += a[2u + s].s;
        }
        u32* info = mt_backward_pair_info(pc, bf, pair);
        info[0] = a[0].m;
        info[1] = a[1].m;
        info[2] = a[2].m;
        info[3] = a[3].m;
        info[4] = float_bits(sx);
        info[5] = float_bits(sd);
    }
}

template <u32 O_LOG2>
__device__ __forceinline__ void mt_backward_columns_forward(const Params& pc, const Buffers& bf,
                                                            const Divisors& dv) {
    constexpr u32 NO = 1u << O_LOG2;
    const u32 b = block_index();
    if (b >= pc.total_lines) {
        return;
    }
    MtColumn c = mt_column(b);
    const u32 h = udiv(c.pair, dv.pairs);
    const bool gated = (pc.flags & FLAG_GATED) != 0u;
    const MtPairScales ps = mt_backward_info_scales(mt_backward_pair_info(pc, bf, c.pair));
    float x[2][NO], d[2][NO];
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        SegmentRow seg = locate_segment(pc, dv, 2u * (c.pair - h * pc.pairs) + s, h);
#pragma unroll
        for (u32 o = 0; o < NO; o++) {
            u32 pos = c.ni + (o << MT_INNER_LOG2);
            x[s][o] = segment_input_at(pc, dv, bf.u, bf.pre, pc.flags, seg, pos);
            d[s][o] = segment_input_at(pc, dv, bf.u2, bf.post, pc.flags | FLAG_BODY_ONLY, seg, pos);
        }
    }
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        if (set < 2u || gated) {
            cpx z[NO];
            float sc[2];
#pragma unroll
            for (u32 s = 0; s < 2u; s++) {
                // The set's scale and 1 / N_o (exponents 13 .. 253, so 9 .. 253 here).
                u32 e = set == 0u ? ps.ex[s] : (set == 1u ? ps.ed[s] : mt_row_scale_exponent(ps.mx[s]));
                sc[s] = bits_float((e > O_LOG2 ? e - O_LOG2 : 1u) << 23);
            }
#pragma unroll
            for (u32 o = 0; o < NO; o++) {
                const float(*v)[NO] = set == 1u ? d : x;
                z[o] = mk(v[0][o] * sc[0], v[1][o] * sc[1]);
            }
            mt_dft_registers<O_LOG2, true>(pc, bf, z);
            u32* out = mt_backward_words(pc, bf, set, c.pair) + c.ni;
            const cpx w1 = root(pc, bf, c.ni, pc.log2n); // powers of one root (see root())
            cpx wk = w1;
#pragma unroll
            for (u32 k = 0; k < NO; k++) {
                cpx v = z[0];
                if (k != 0u) {
                    v = cmul(z[k], wk);
                    wk = cmul(wk, w1);
                }
                out[k << MT_INNER_LOG2] = pack_f16x2(v.x, v.y);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(MT_THREADS)
    fftconv_monarch_backward_columns_forward(const Params pc, const Buffers bf, const Divisors dv) {
    MT_COLUMN_DISPATCH(mt_backward_columns_forward);
}

// Row k_o of pair p (block p N_o + k_o), for each plane set: fftconv_monarch_middle's load with
// the radix-4 step, S1, then fftconv_monarch_backward's S2 (frequency k_o + N_o k_i for the kept
// mask, the filter row k_o), S3, and the store back to the words.
extern "C" __global__ void __launch_bounds__(MT_WIDE_THREADS, 1)
    fftconv_monarch_backward_middle(const Params pc, const Buffers bf, const Divisors dv) {
    constexpr u32 R_LOG2 = 2u, R = 4u, ROWS = 64u, BT = MT_WIDE_THREADS;
    const u32 b = block_index();
    if (b >= pc.total_lines) {
        return; // uniform over the block
    }
    const u32 o_log2 = pc.log2n - MT_INNER_LOG2;
    const u32 pair = b >> o_log2, ko = b & ((1u << o_log2) - 1u);
    const u32 n = 1u << pc.log2n;
    const bool gated = (pc.flags & FLAG_GATED) != 0u;
    Params rp = pc; // the row transform's parameters: its twiddles are W_(N_i)
    rp.log2n = MT_INNER_LOG2;
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u32 h = udiv(pair, dv.pairs);
    MtPlanes sets[3];
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        sets[set] = MtPlanes{{mt_backward_plane(set, 0u, ROWS), mt_backward_plane(set, 1u, ROWS)}};
    }
    const u32 set_count = gated ? 3u : 2u;
    // Load: per set, the radix-4 DFT over a2 and W_64^(a1 k2), to shared row 16 k2 + a1.
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        if (set < set_count) {
            const u32* words = mt_backward_words(pc, bf, set, pair) + ((u64)ko << MT_INNER_LOG2);
#pragma unroll 1
            for (u32 j = 0; j < 512u / BT; j++) {
                MtUnit m = mt_unit<BT>(j);
                // The words in natural order to the rows a1 + 16 a2, then the radix step in place.
#pragma unroll
                for (u32 a2 = 0; a2 < R; a2++) {
                    const Quad* src = (const Quad*)(words + (m.a1 + 16u * a2) * 256u + m.col);
#pragma unroll
                    for (u32 hq = 0; hq < 2u; hq++) {
                        Quad q = src[hq];
                        Quad re, im;
#pragma unroll
                        for (u32 w = 0; w < 2u; w++) {
                            // Words (re, im) of positions 2w, 2w + 1 -> plane pairs.
                            u32 w0 = q.w[2u * w], w1 = q.w[2u * w + 1u];
                            re.w[w] = (w0 & 0xffffu) | (w1 << 16);
                            im.w[w] = (w0 >> 16) | (w1 & 0xffff0000u);
                        }
                        u32 at = (m.a1 + 16u * a2) * MT_ROW + m.col + 4u * hq;
                        *(u32*)&sets[set].p[0][at] = re.w[0];
                        *(u32*)&sets[set].p[0][at + 2u] = re.w[1];
                        *(u32*)&sets[set].p[1][at] = im.w[0];
                        *(u32*)&sets[set].p[1][at + 2u] = im.w[1];
                    }
                }
                mt_radix_rows<R_LOG2, true>(sets[set], rp, bf, m);
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        if (set < set_count) {
            mt_columns<true, BT>(sets[set], rp, bf, 4u, R, R);
        }
    }
    __syncthreads();
    {
        const float c = 2.0f * (float)(1u << MT_INNER_LOG2);
        const u32* info = mt_backward_pair_info(pc, bf, pair);
        float sums[2] = {bits_float(info[4]), bits_float(info[5])};
        float sigma = pow2(mt_taps_scale_log2(sums, c * (float)(1u << o_log2)));
        const MtBackwardProductScales kp =
            mt_backward_product_scales(info, mt_backward_info_scales(info), n);
        MtDft16 f;
        mt_dft16(rp, bf, f);
        const cpx* filt = bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u) + 2u +
                          ((u64)ko << MT_INNER_LOG2) + lane;
#pragma unroll 1
        for (u32 i = 0; i < ROWS / (BT / 32u); i++) {
            u32 row = warp + (BT / 32u) * i;
            u32 ka = (row & 15u) * R + (row >> 4);
            mt_backward_row(f, sets, rp, bf, row, ka, ROWS, filt + ka * 256u, sigma, gated, true,
                            ko, 1u << o_log2, pc.log2n, pow2(kp.g), pow2(kp.p));
        }
    }
    __syncthreads();
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        if (set < set_count) {
            mt_columns<false, BT>(sets[set], rp, bf, 4u, R, R);
        }
    }
    __syncthreads();
    // Store: per set, the inverse radix step in place, then the rows back to the words.
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        if (set < set_count) {
            u32* words = mt_backward_words(pc, bf, set, pair) + ((u64)ko << MT_INNER_LOG2);
#pragma unroll 1
            for (u32 j = 0; j < 512u / BT; j++) {
                MtUnit m = mt_unit<BT>(j);
                mt_radix_rows<R_LOG2, false>(sets[set], rp, bf, m);
#pragma unroll
                for (u32 a2 = 0; a2 < R; a2++) {
                    Quad* dst = (Quad*)(words + (m.a1 + 16u * a2) * 256u + m.col);
#pragma unroll
                    for (u32 hq = 0; hq < 2u; hq++) {
                        u32 at = (m.a1 + 16u * a2) * MT_ROW + m.col + 4u * hq;
                        u32 re0 = *(const u32*)&sets[set].p[0][at];
                        u32 re1 = *(const u32*)&sets[set].p[0][at + 2u];
                        u32 im0 = *(const u32*)&sets[set].p[1][at];
                        u32 im1 = *(const u32*)&sets[set].p[1][at + 2u];
                        Quad q;
                        q.w[0] = (re0 & 0xffffu) | (im0 << 16);
                        q.w[1] = (re0 >> 16) | (im0 & 0xffff0000u);
                        q.w[2] = (re1 & 0xffffu) | (im1 << 16);
                        q.w[3] = (re1 >> 16) | (im1 & 0xffff0000u);
                        dst[hq] = q;
                    }
                }
            }
        }
    }
}

template <u32 O_LOG2>
__device__ __forceinline__ void mt_backward_columns_inverse(const Params& pc, const Buffers& bf,
                                                            const Divisors& dv) {
    constexpr u32 NO = 1u << O_LOG2;
    const u32 b = block_index();
    if (b >= pc.total_lines) {
        return;
    }
    MtColumn c = mt_column(b);
    const u32 h = udiv(c.pair, dv.pairs);
    const u32 n = 1u << pc.log2n;
    const bool gated = (pc.flags & FLAG_GATED) != 0u;
    const u32* info = mt_backward_pair_info(pc, bf, c.pair);
    const MtPairScales ps = mt_backward_info_scales(info);
    const float ci = 2.0f * (float)(1u << MT_INNER_LOG2);
    float sums[2] = {bits_float(info[4]), bits_float(info[5])};
    const int sigma_log2 = mt_taps_scale_log2(sums, ci * (float)NO);
    const MtBackwardProductScales kp = mt_backward_product_scales(info, ps, n);
    const float sk = load_ro(bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u)).x;
    SegmentRow seg[2];
#pragma unroll
    for (u32 s = 0; s < 2u; s++) {
        seg[s] = locate_segment(pc, dv, 2u * (c.pair - h * pc.pairs) + s, h);
    }
#pragma unroll
    for (u32 set = 0; set < 3u; set++) {
        if (set < 2u || gated) {
            const u32* in = mt_backward_words(pc, bf, set, c.pair) + c.ni;
            cpx z[NO];
            const cpx w1 = conj_c(root(pc, bf, c.ni, pc.log2n)); // powers of one root (see root())
            cpx wk = w1;
#pragma unroll
            for (u32 k = 0; k < NO; k++) {
                u32 w = in[k << MT_INNER_LOG2];
                z[k] = mk(half_float(w), half_float(w >> 16));
                if (k != 0u) {
                    z[k] = cmul(z[k], wk);
                    wk = cmul(wk, w1);
                }
            }
            mt_dft_registers<O_LOG2, false>(pc, bf, z);
            if (set == 0u) {
                // Taps: Re T c^3 N_o / (N_i σ s t) at positions < K (the pair's taps row).
                int k_st = ps.prod == 0u ? 0 : 254 - (int)ps.prod;
                float ft = ci * ci * (ci / (float)(1u << MT_INNER_LOG2)) * (float)NO *
                           pow2(-sigma_log2);
#pragma unroll
                for (u32 o = 0; o < NO; o++) {
                    u32 pos = c.ni + (o << MT_INNER_LOG2);
                    if (pos < pc.taps_len) {
                        bf.taps[(u64)c.pair * pc.taps_len + pos] =
                            z[o].x * ft * pow2(k_st / 2) * pow2(k_st - k_st / 2);
                    }
                }
            } else {
                // dx_r = G_r c^2 N_o s_k / t_r (du, dpre); gated P_r c^2 N_o s_k / s'_r (dpost);
                // each with its product's σ undone.
                const float unscale = pow2(-(set == 1u ? kp.g : kp.p));
#pragma unroll
                for (u32 s = 0; s < 2u; s++) {
                    u32 e = set == 1u ? ps.ed[s] : mt_row_scale_exponent(ps.mx[s]);
                    float f = sk * bits_float((254u - e) << 23) * ci * ci * (float)NO;
#pragma unroll
                    for (u32 o = 0; o < NO; o++) {
                        u32 pos = c.ni + (o << MT_INNER_LOG2);
                        float v = (s == 0u ? z[o].x : z[o].y) * unscale * f;
                        if (set == 1u) {
                            store_segment_at(pc, bf.y, bf.pre, seg[s], pos, v);
                            if (gated) {
                                store_segment_at(pc, bf.y2, bf.u, seg[s], pos, v);
                            }
                        } else {
                            store_segment_at(pc, bf.y3, bf.u2, seg[s], pos, v);
                        }
                    }
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(MT_THREADS)
    fftconv_monarch_backward_columns_inverse(const Params pc, const Buffers bf, const Divisors dv) {
    MT_COLUMN_DISPATCH(mt_backward_columns_inverse);
}

// N_o = 32 .. 256 (512K .. 4M): the backward's column passes through the forward's shared tiles
// (mt_tile_forward, mt_tile_inverse), one set after another (the tile reused after a barrier),
// with the register columns' scales, products and outputs.
template <u32 A_LOG2, u32 B_LOG2>
__device__ __forceinline__ void mt_backward_tile_columns_forward(const Params& pc,
                                                                 const Buffers& bf,
                                                                 const Divisors& dv) {
    constexpr u32 O_LOG2 = A_LOG2 + B_LOG2;
    const u32 blk = block_index();
    if (blk >= pc.total_lines) {
        return; // uniform over the block
    }
    const MtColumn t = mt_tile_column(blk);
    const u32 h = udiv(t.pair, dv.pairs);
    const bool gated = (pc.flags & FLAG_GATED) != 0u;
    const MtPairScales ps = mt_backward_info_scales(mt_backward_pair_info(pc, bf, t.pair));
    SegmentRow seg[2];
    mt_pair_rows(pc, dv, t.pair, h, seg);
#pragma unroll 1
    for (u32 set = 0; set < (gated ? 3u : 2u); set++) {
        float sc[2];
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            // The set's scale and 1 / N_o (as mt_backward_columns_forward).
            u32 e = set == 0u ? ps.ex[s] : (set == 1u ? ps.ed[s] : mt_row_scale_exponent(ps.mx[s]));
            sc[s] = bits_float((e > O_LOG2 ? e - O_LOG2 : 1u) << 23);
        }
        const elem_t* src = set == 1u ? bf.u2 : bf.u;
        const elem_t* gate = set == 1u ? bf.post : bf.pre;
        const u32 flags = set == 1u ? pc.flags | FLAG_BODY_ONLY : pc.flags;
        u32* out = mt_backward_words(pc, bf, set, t.pair);
        if (set != 0u) {
            __syncthreads(); // the previous set's tile read
        }
        mt_tile_forward<A_LOG2, B_LOG2>(
            pc, bf, smem, t.ni,
            [&](u32 pos) {
                return mk(segment_input_at(pc, dv, src, gate, flags, seg[0], pos) * sc[0],
                          segment_input_at(pc, dv, src, gate, flags, seg[1], pos) * sc[1]);
            },
            [&](u32 ko, u32 ni, u32 w) { out[((u64)ko << MT_INNER_LOG2) + ni] = w; });
    }
}

template <u32 A_LOG2, u32 B_LOG2>
__device__ __forceinline__ void mt_backward_tile_columns_inverse(const Params& pc,
                                                                 const Buffers& bf,
                                                                 const Divisors& dv) {
    constexpr u32 NO = 1u << (A_LOG2 + B_LOG2);
    const u32 blk = block_index();
    if (blk >= pc.total_lines) {
        return; // uniform over the block
    }
    const MtColumn t = mt_tile_column(blk);
    const u32 h = udiv(t.pair, dv.pairs);
    const u32 n = 1u << pc.log2n;
    const bool gated = (pc.flags & FLAG_GATED) != 0u;
    const u32* info = mt_backward_pair_info(pc, bf, t.pair);
    const MtPairScales ps = mt_backward_info_scales(info);
    const float ci = 2.0f * (float)(1u << MT_INNER_LOG2);
    float sums[2] = {bits_float(info[4]), bits_float(info[5])};
    const int sigma_log2 = mt_taps_scale_log2(sums, ci * (float)NO);
    const MtBackwardProductScales kp = mt_backward_product_scales(info, ps, n);
    const float sk = load_ro(bf.spectrum + (u64)(pc.channel_offset + h) * (n + 2u)).x;
    SegmentRow seg[2];
    mt_pair_rows(pc, dv, t.pair, h, seg);
    // Taps: Re T c^3 N_o / (N_i σ s t) at positions < K (the pair's taps row), as
    // mt_backward_columns_inverse.
    {
        const u32* in = mt_backward_words(pc, bf, 0u, t.pair);
        int k_st = ps.prod == 0u ? 0 : 254 - (int)ps.prod;
        float ft = ci * ci * (ci / (float)(1u << MT_INNER_LOG2)) * (float)NO * pow2(-sigma_log2);
        // 1 / (s t) in two factors applied one after the other (it may exceed a float).
        float st0 = pow2(k_st / 2), st1 = pow2(k_st - k_st / 2);
        float* taps = bf.taps + (u64)t.pair * pc.taps_len;
        mt_tile_inverse<A_LOG2, B_LOG2>(
            pc, bf, smem, t.ni,
            [&](u32 ko, u32 ni) { return in[((u64)ko << MT_INNER_LOG2) + ni]; },
            [&](u32 pos, cpx z) {
                if (pos < pc.taps_len) {
                    taps[pos] = z.x * ft * st0 * st1;
                }
            });
    }
    // dx_r = G_r c^2 N_o s_k / t_r (du, dpre); gated P_r c^2 N_o s_k / s'_r (dpost); each with
    // its product's σ undone.
#pragma unroll 1
    for (u32 set = 1u; set < (gated ? 3u : 2u); set++) {
        const float unscale = pow2(-(set == 1u ? kp.g : kp.p));
        float f[2];
#pragma unroll
        for (u32 s = 0; s < 2u; s++) {
            u32 e = set == 1u ? ps.ed[s] : mt_row_scale_exponent(ps.mx[s]);
            f[s] = sk * bits_float((254u - e) << 23) * ci * ci * (float)NO;
        }
        const u32* in = mt_backward_words(pc, bf, set, t.pair);
        __syncthreads(); // the previous set's tile read
        mt_tile_inverse<A_LOG2, B_LOG2>(
            pc, bf, smem, t.ni,
            [&](u32 ko, u32 ni) { return in[((u64)ko << MT_INNER_LOG2) + ni]; },
            [&](u32 pos, cpx z) {
#pragma unroll
                for (u32 s = 0; s < 2u; s++) {
                    float v = (s == 0u ? z.x : z.y) * unscale * f[s];
                    if (set == 1u) {
                        store_segment_at(pc, bf.y, bf.pre, seg[s], pos, v);
                        if (gated) {
                            store_segment_at(pc, bf.y2, bf.u, seg[s], pos, v);
                        }
                    } else {
                        store_segment_at(pc, bf.y3, bf.u2, seg[s], pos, v);
                    }
                }
            });
    }
}

extern "C" __global__ void __launch_bounds__(MT_THREADS, 2)
    fftconv_monarch_backward_tile_columns_forward(const Params pc, const Buffers bf,
                                                  const Divisors dv) {
    MT_TILE_DISPATCH(mt_backward_tile_columns_forward);
}

extern "C" __global__ void __launch_bounds__(MT_THREADS, 2)
    fftconv_monarch_backward_tile_columns_inverse(const Params pc, const Buffers bf,
                                                  const Divisors dv) {
    MT_TILE_DISPATCH(mt_backward_tile_columns_inverse);
}

// The filter for fftconv_monarch: per channel h of the launch (pc.channels) a header (s_k,
// 1 / s_k), then (the channel's largest finite |Re| + |Im| as float bits, 0), then the N bins of
// the full spectrum (from the Hermitian half in bf.spectrum, dropped bins 0) divided by s_k, in
// the order of fftconv_monarch's S2 fragments: k = k_a + N1 (k_b + 16 k_c) at k_a 256 +
// 32 (nt 4 + i) + lane with lane = 4 (k_b & 7) + (k_c & 7) / 2, i = 2 (k_b >> 3) + (k_c & 1),
// nt = k_c >> 3 (lane-minor since session 16, so that a warp's load of one (nt, i) reads 256
// contiguous bytes: lane-major, the filter loads were 17% of the 4K forward's L2 sectors, 69%
// of them excess).
// From 32K (N_i = 2^line_log2 = 16K < N) the rows of fftconv_monarch_middle: k = k_o + N_o k_i,
// k_i as k above, row k_o's bins from k_o N_i. s_k is the power of two above the channel's
// largest finite |Re| + |Im| (1 for an all-zero channel), so |bins| <= 1. Written to bf.tmp,
// N + 2 complex values per channel, whose second value must be zero before the launches.
// Two launches of a block per channel and slice of N_i bins (one block per channel
// took 3.3 ms at 1M for 3 channels and 14 ms at 4M for one on the H200): the maximum
// (fftconv_monarch_filter_max, into the second value), then the bins.
__device__ __forceinline__ cpx* mt_filter_out(const Params& pc, const Buffers& bf, u32 h) {
    return bf.tmp + (u64)h * ((1u << pc.log2n) + 2u);
}

extern "C" __global__ void __launch_bounds__(MT_THREADS, 2)
    fftconv_monarch_filter_max(const Params pc, const Buffers bf, const Divisors dv) {
    (void)dv;
    __shared__ u32 block_max;
    const u32 b = block_index(), o_log2 = pc.log2n - pc.line_log2, h = b >> o_log2;
    if (h >= pc.channels) {
        return;
    }
    if (threadIdx.x == 0u) {
        block_max = 0u;
    }
    __syncthreads();
    const u32 start = (b - (h << o_log2)) << pc.line_log2, end = start + (1u << pc.line_log2);
    u32 m = 0u;
    for (u32 k = start + threadIdx.x; k < end; k += MT_THREADS) {
        cpx v = filter_bin(pc, bf, h, k);
        float sum = bits_float(float_bits(v.x) & 0x7fffffffu) + bits_float(float_bits(v.y) & 0x7fffffffu);
        m = max_u(m, finite_bits(sum));
    }
    shared_max(&block_max, m);
    __syncthreads();
    if (threadIdx.x == 0u) {
        atomic_max_u32((u32*)&mt_filter_out(pc, bf, h)[1].x, block_max);
    }
}

extern "C" __global__ void __launch_bounds__(MT_THREADS, 2)
    fftconv_monarch_filter(const Params pc, const Buffers bf, const Divisors dv) {
    (void)dv;
    const u32 b = block_index(), o_log2 = pc.log2n - pc.line_log2, h = b >> o_log2;
    if (h >= pc.channels) {
        return;
    }
    // Frequency k = k_o + N_o k_i, N_o = N / N_i (1 up to 16K), N_i = 2^line_log2.
    const u32 ni_log2 = pc.line_log2, n1_log2 = ni_log2 - 8u;
    cpx* out = mt_filter_out(pc, bf, h);
    const u32 channel_max = float_bits(out[1].x);
    u32 e = channel_max == 0u ? 127u : (channel_max >> 23) + 1u;
    e = e > 253u ? 253u : e; // so that 1 / s_k is a normal float too
    const float inv = bits_float((254u - e) << 23);
    const u32 start = (b - (h << o_log2)) << ni_log2;
    if (start == 0u && threadIdx.x == 0u) {
        out[0] = mk(bits_float(e << 23), inv);
    }
    // Slice b holds row k_o = start >> ni_log2 (0 up to 16K); a thread per output position
    // (ka 256 + 32 (4 nt + i) + lane, written in order) gathers its bin, whose reads stay in
    // the slice's bins of this channel (session 16: scattered writes took 108 us for 61
    // channels at 64K under ncu, 0.6 TB/s).
    const u32 ko = start >> ni_log2;
    cpx* row = out + 2u + start;
    for (u32 o = threadIdx.x; o < (1u << ni_log2); o += MT_THREADS) {
        u32 lane = o & 31u, j = (o >> 5) & 7u, ka = o >> 8;
        u32 nt = j >> 2, i = j & 3u;
        u32 kb = 8u * (i >> 1) + (lane >> 2), kc = 8u * nt + 2u * (lane & 3u) + (i & 1u);
        u32 ki = ka + ((kb + 16u * kc) << n1_log2);
        cpx v = filter_bin(pc, bf, h, ko + (ki << o_log2));
        row[o] = mk(v.x * inv, v.y * inv);
    }
}
#endif
