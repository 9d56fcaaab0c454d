// fftconv.comp: the portable Vulkan FFT-convolution passes (one source, variants by defines).
//
// Pass (exactly one defined):
//   PASS_FUSED            a whole on-chip block of the plan: load, forward FFT, pointwise product
//                         with the filter spectrum, inverse FFT, store (the plan's fused suffix);
//                         flags let it stop after the forward FFT or start at the product, and
//                         multiply by conj(K) or by a second spectrum (backward)
//   PASS_COLUMNS_FORWARD  one global-memory stage of the plan, forward (column DFTs + twiddle)
//   PASS_COLUMNS_INVERSE  the same stage inverted (conjugate twiddle + inverse column DFTs)
//   PASS_GATHER           backward: sums each input's gradient over the segments that read it
//   PASS_TAPS_SUM         backward: sums the filter-gradient taps over each channel's pairs
//                         and adds them into the filter gradient of the whole problem
//   PASS_REGISTER_FUSED   the forward's fused block with the FFTs as Stockham radix-16 passes in
//                         registers (see register_fused); the host's default
//   PASS_BACKWARD_FUSED   the whole backward per row (one overlap-save segment per row, its FFT
//                         in one workgroup): taps per row, du, and the gate gradients (see there)
// I/O element type of u, gates and y (exactly one defined): IO_F32, IO_F16, IO_BF16.
//
// Work unit: a *pair* of real overlap-save segments of one channel packed as one complex
// sequence a + i*b (the filter is real, so Re and Im of the result are the two outputs).
// A pass works on *lines*: length-M complex sequences. A workgroup holds 2^lines_log2 lines in
// shared memory and runs radix-2 FFTs on them with barriers only: no subgroup operation, so any
// subgroup size works. Forward transforms are decimation in frequency (natural order in,
// bit-reversed out); inverse transforms are decimation in time (bit-reversed in, natural out), so
// no reordering pass ever runs. Twiddles come from a table of W_N^e (e in [0, N)) generated in
// f64 on the host and rounded once to f32; index products are reduced mod N in integers.
#version 450

#if defined(IO_F16) || defined(IO_BF16)
#extension GL_EXT_shader_16bit_storage : require
#define ELEM uint16_t
#else
#define ELEM float
#endif
#if defined(PASS_REGISTER_FUSED) || defined(PASS_COLUMNS_FORWARD) || defined(PASS_COLUMNS_INVERSE) \
    || defined(PASS_FUSED) || defined(PASS_BACKWARD_FUSED)
#define REGISTER_RADIX 1
#extension GL_EXT_control_flow_attributes : require
#endif
// COOP (the cooperative-matrix path; with COOP_LOG2 = log2 T, T x T x T the listed shape): the
// coarse FFT rounds run as f16 matrix products (see coop_round).
#if defined(COOP)
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#define COOP_T (1u << COOP_LOG2)
#define COOP_TT (COOP_T * COOP_T)
#endif

layout(local_size_x_id = 0) in;
// Complex points of shared memory (a power of two; at most maxComputeSharedMemorySize / 8).
layout(constant_id = 1) const uint SHARED_POINTS = 4096;
// 1: one padding point after every 16 in shared memory, so that invocations reading points a
// power of two apart (the last FFT rounds) hit different banks; 0: no padding (it must fit).
layout(constant_id = 2) const uint PAD = 0;
// 1: the fused pass runs the forward's finest FFT round, the pointwise product and the inverse's
// finest round as one register round (no shared-memory round trip between them; groups whose
// bins frequency sparsity all drops are not loaded or transformed; the host's default). 0: three
// passes (FFTCONV_VULKAN_MIDDLE_ROUND=0).
layout(constant_id = 3) const uint MIDDLE = 0;
// Experiments for timing on a GPU (lavapipe measured both slower): 1: per-point divisions through
// a corrected float division (FAST_DIV); one twiddle load per stage and constant W_8 factors in
// the FFT rounds instead of a load per butterfly (CONST_TWIDDLES). 0: off (the default).
layout(constant_id = 4) const uint FAST_DIV = 0;
layout(constant_id = 5) const uint CONST_TWIDDLES = 0;
// COOP: subgroups that run matrix products (each with its own staging tiles); the others wait.
layout(constant_id = 6) const uint COOP_SLOTS = 1;
// COOP: 1 stores the products in f16 over the slot's staged operand (a third of the shared
// memory per slot, so more slots; one more rounding per round, and four barriers per batch
// instead of two; FFTCONV_VULKAN_COOP_F16_PRODUCTS=1, an experiment); 0 stores them in f32 (the
// default).
layout(constant_id = 7) const uint COOP_F16_PRODUCTS = 0;
// 1: the passes that transform lines in place in shared memory (the column passes, the radix-2
// fused pass of the backward's step schedule, the fused backward) run their line DFTs as
// register-radix passes (see register_lines; the host's default); 0: radix-2 rounds in shared
// memory (FFTCONV_VULKAN_REGISTER_FFT=0).
layout(constant_id = 8) const uint REGISTER_LINES = 0;
// R > 1 (2, 4, ...): the register-radix fused pass holds one line of R x SHARED_POINTS points per
// workgroup (16 points per invocation), whose exchanges between passes go through the shared
// memory in R rounds (see register_exchange). 0: its lines fit the shared memory (the host's
// default where the plan's lines fit).
layout(constant_id = 9) const uint LONG_LINES = 0;

layout(std430, set = 0, binding = 0) readonly buffer InputU { ELEM u_buf[]; };
layout(std430, set = 0, binding = 1) readonly buffer PreGate { ELEM pre_buf[]; };
layout(std430, set = 0, binding = 2) readonly buffer PostGate { ELEM post_buf[]; };
layout(std430, set = 0, binding = 3) writeonly buffer OutputY { ELEM y_buf[]; };
// Hermitian half spectrum per channel, natural order, kept bins only, scaled by 1/N.
layout(std430, set = 0, binding = 4) readonly buffer FilterSpectrum { vec2 spectrum[]; };
// W_N^e = exp(-2 pi i e / N), e in [0, N).
layout(std430, set = 0, binding = 5) readonly buffer Twiddles { vec2 twiddles[]; };
// Intermediate spectra between passes: N complex values per pair.
#if defined(TMP_F16)
// TMP_F16 (half spectra; the forward of a plan with one global stage, 16-bit I/O): each value
// is one packHalf2x16 word scaled by its tile's power of two (see half_scale_exponent), then
// after the data (total pairs x N words) the tiles' unscale factors as float bits: region A, per
// pair N / SHARED_POINTS words, one per column-pass workgroup (its lines: SHARED_POINTS points);
// region B, per pair M_0 words, one per line of the fused pass (half_region_a, half_region_b).
layout(std430, set = 0, binding = 6) buffer Intermediate { uint tmp16[]; };
#else
layout(std430, set = 0, binding = 6) buffer Intermediate { vec2 tmp[]; };
#endif
// Backward: the second spectrum of a correlation (same layout as tmp).
layout(std430, set = 0, binding = 7) readonly buffer OtherSpectrum { vec2 other[]; };
// Backward: filter-gradient taps, taps_len per pair (the real part of the correlation);
// `[channels][pairs][taps_len]`. Written by the fused or inverse-column pass, read by the sum.
#if defined(PASS_TAPS_SUM)
layout(std430, set = 0, binding = 8) readonly buffer Taps { float taps[]; };
#else
layout(std430, set = 0, binding = 8) writeonly buffer Taps { float taps[]; };
#endif
// Backward: the second output of the gather pass (the pre-gate gradient).
layout(std430, set = 0, binding = 9) writeonly buffer SecondOutput { ELEM y2_buf[]; };
// Backward: the filter gradient of the whole problem, `[H][taps_len]`: the sum pass adds each
// chunk's taps, summed over each channel's pairs, into rows channel_offset.. (chunks run one
// after another; the host zeroes it before the first).
layout(std430, set = 0, binding = 10) buffer TapsSum { float taps_sum[]; };
// Fused backward: the output gradient dy, and the third output (the post-gate gradient).
layout(std430, set = 0, binding = 11) readonly buffer OutputGradient { ELEM dy_buf[]; };
layout(std430, set = 0, binding = 12) writeonly buffer ThirdOutput { ELEM y3_buf[]; };

layout(push_constant) uniform Params {
    uint log2n;           // N = 2^log2n
    uint flags;           // FLAG_*
    uint line_log2;       // length of this pass's lines (N_s, or M_j for the fused block)
    uint stride_log2;     // columns: log2 M_{s+1} (stride between a line's elements); fused: 0
    uint lines_log2;      // lines per workgroup
    uint total_lines;     // lines in this dispatch
    uint stage_bits;      // fused: log2 of each global stage's factor, 5 bits per stage
    uint stage_count;     // fused: number of global stages before the fused block
    uint seq_len;         // L
    uint channels;        // channels in this chunk
    uint channel_offset;  // first channel of this chunk (into the filter spectrum)
    uint blocks;          // overlap-save blocks per row
    uint block_len;       // outputs per block Lb
    uint history;         // inputs before a block that it reads
    uint kept_bins;       // stored (kept) half-spectrum bins per channel
    uint segments;        // segments per channel in this chunk (rows of the chunk * blocks)
    uint pairs;           // pairs per channel: ceil(segments / 2)
    uint batch_stride;    // channels between consecutive batch rows in the bound buffers
    uint element_offset;  // element of the bound buffers where this chunk's first row starts
    uint taps_len;        // backward: filter taps K stored per pair
} pc;

const uint FLAG_SRC_INPUT = 1u;  // read u (and the pre-gate) instead of tmp
const uint FLAG_DST_OUTPUT = 2u; // write y (and apply the post-gate) instead of tmp
const uint FLAG_GATED = 4u;
const uint FLAG_WRAPS = 8u;      // circular: history before t = 0 wraps around
const uint FLAG_BODY_ONLY = 16u;  // loads read a segment's outputs only (no history): dy * post
const uint FLAG_NO_INVERSE = 32u; // fused: store the spectrum after the forward FFT
const uint FLAG_NO_FORWARD = 64u; // fused: load a spectrum, start at the product
const uint FLAG_CONJ_FILTER = 128u; // product with conj(K) (the adjoint)
const uint FLAG_CORRELATE = 256u;   // product with conj(other) / N on kept bins (filter gradient)
const uint FLAG_DST_TAPS = 512u;    // store Re of positions < taps_len as taps
// (1024: FLAG_F32_ROUNDS, CUDA's tensor-core switch; every round here is f32 anyway.)
const uint FLAG_TAPS_MIRRORED = 2048u; // with FLAG_DST_TAPS: tap t from position N - t (mod N)

#if defined(PASS_TAPS_SUM)
// One partial sum per invocation; no FFT lines (so no SHARED_POINTS of shared memory).
shared float partial[gl_WorkGroupSize.x];
#else
shared vec2 s[SHARED_POINTS + (SHARED_POINTS >> 4) * PAD];
#endif
#if defined(PASS_BACKWARD_FUSED)
// Rows per workgroup of the fused backward at most (monarch-core's
// FUSED_BACKWARD_MAX_ROWS_LOG2 = 4), and each row's largest |x|, |d|, |T|, |G| as float bits
// (slots 0 .. 3, BACKWARD_ROWS words each; an unsigned max of them is exact and order-free).
const uint BACKWARD_ROWS = 16u;
shared uint row_max[4u * BACKWARD_ROWS];
// Slot 3's value for a row whose G has a non-finite bin (above every finite magnitude).
const uint G_NONFINITE = 0xffffffffu;
#endif
#if defined(COOP)
// The DFT matrices of order T as f16 A operands, T x T row-major each: A[b][k] = W_T^(k bitrev(b))
// as re, im, -im (forward), then its conjugate transpose the same way (inverse).
shared float16_t coop_a[6u * COOP_TT];
// Per slot: the B operand (re, then im; f16) and the products (re, then im; f32, or with
// COOP_F16_PRODUCTS f16 in coop_b), row-major.
shared float16_t coop_b[COOP_SLOTS * 2u * COOP_TT];
shared float coop_c[COOP_F16_PRODUCTS != 0u ? 1u : COOP_SLOTS * 2u * COOP_TT];
#endif
// Shared-memory slot of point i.
#define SIDX(i) ((i) + (((i) >> 4u) * PAD))

// ---- element I/O ------------------------------------------------------------------------------

// 16-bit values are converted right at the load or store (a 16-bit type may only live in a buffer).
#if defined(IO_F16)
#define TO_FLOAT(e) unpackHalf2x16(uint(e)).x
#define FROM_FLOAT(v) uint16_t(packHalf2x16(vec2((v), 0.0)) & 0xffffu)
#elif defined(IO_BF16)
#define TO_FLOAT(e) uintBitsToFloat(uint(e) << 16)
#define FROM_FLOAT(v) uint16_t(bf16_bits(v))
// bf16 bits of v, rounded to nearest even; NaN stays NaN (quiet).
uint bf16_bits(float v) {
    uint bits = floatBitsToUint(v);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return (bits >> 16) | 0x40u;
    }
    return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}
#else
#define TO_FLOAT(e) (e)
#define FROM_FLOAT(v) (v)
#endif

// ---- complex helpers --------------------------------------------------------------------------

vec2 cmul(vec2 a, vec2 b) { return vec2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x); }
vec2 conj_c(vec2 a) { return vec2(a.x, -a.y); }

// |v| as float bits, 0 for infinities and NaN (an unsigned max of them is the largest finite).
uint finite_bits(float v) {
    uint a = floatBitsToUint(v) & 0x7fffffffu;
    return a < 0x7f800000u ? a : 0u;
}

// a / b for b > 0. With FAST_DIV: through a float division corrected to the exact quotient when
// both are below 2^24 (the float quotient is then within one of it), else an integer division.
uint udiv(uint a, uint b) {
    if (FAST_DIV == 0u || (a | b) >= (1u << 24)) {
        return a / b;
    }
    uint q = uint(float(a) / float(b));
    int r = int(a) - int(q * b);
    if (r < 0) {
        q -= 1u;
    } else if (uint(r) >= b) {
        q += 1u;
    }
    return q;
}

uint bit_reverse(uint x, uint bits) { return bits == 0u ? 0u : bitfieldReverse(x) >> (32u - bits); }

// W_{2^m_log2}^e for any e (reduced mod 2^m_log2 here).
vec2 root(uint e, uint m_log2) {
    return twiddles[(e & ((1u << m_log2) - 1u)) << (pc.log2n - m_log2)];
}

// x * W_8^e (e mod 8): constant twiddles inside a round (CONST_TWIDDLES).
vec2 mul_w8(vec2 x, uint e) {
    const float r = 0.70710678118654752; // sqrt(1/2)
    switch (e & 7u) {
    case 0u:
        return x;
    case 1u:
        return vec2((x.x + x.y) * r, (x.y - x.x) * r);
    case 2u:
        return vec2(x.y, -x.x);
    case 3u:
        return vec2((x.y - x.x) * r, -(x.x + x.y) * r);
    case 4u:
        return -x;
    case 5u:
        return vec2(-(x.x + x.y) * r, (x.x - x.y) * r);
    case 6u:
        return vec2(-x.y, x.x);
    default:
        return vec2((x.x - x.y) * r, (x.x + x.y) * r);
    }
}

// ---- overlap-save segments --------------------------------------------------------------------

// Segment `seg` of channel `h` (chunk-local): its row and first output.
bool segment_row(uint seg, uint h, out uint row_base, out uint start, out uint outputs) {
    if (seg >= pc.segments) {
        return false;
    }
    uint b = udiv(seg, pc.blocks);
    uint j = seg - b * pc.blocks;
    start = j * pc.block_len;
    outputs = min(pc.block_len, pc.seq_len - start);
    row_base = pc.element_offset + (b * pc.batch_stride + h) * pc.seq_len;
    return true;
}

// The element that position `pos` of a located segment (segment_row) reads (false where the
// segment is zero there; idx is then 0); `flags` as pc.flags (FLAG_BODY_ONLY: the segment's
// outputs only). As selects, not branches (the register-radix pass inlines it 32 times), so a
// caller's loads can be unconditional. Circular history goes back at most L - 1
// (history < K <= L), so one wrap suffices.
bool segment_element_at(uint row_base, uint start, uint outputs, uint pos, uint flags,
                        out uint idx) {
    uint n = 1u << pc.log2n;
    uint back = n - pos;
    bool body = pos < outputs;
    bool history = pos >= n - pc.history && (flags & FLAG_BODY_ONLY) == 0u;
    bool wraps = back > start;
    bool ok = body || (history && (!wraps || (flags & FLAG_WRAPS) != 0u));
    uint t = body ? start + pos : (wraps ? start + pc.seq_len - back : start - back);
    idx = ok ? row_base + t : 0u;
    return ok;
}

// segment_element_at for segment `seg` of channel h (false where there is no such segment).
bool segment_element(uint seg, uint h, uint pos, uint flags, out uint idx) {
    uint row_base, start, outputs;
    idx = 0u;
    if (!segment_row(seg, h, row_base, start, outputs)) {
        return false;
    }
    return segment_element_at(row_base, start, outputs, pos, flags, idx);
}

// Pre-gated input at position `pos` of a located segment (segment_row; `exists` false: none),
// or 0 where the segment is zero (its loads unconditional: from element 0 there).
float segment_value_at(bool exists, uint row_base, uint start, uint outputs, uint pos) {
    uint idx;
    bool ok = segment_element_at(row_base, start, outputs, pos, pc.flags, idx) && exists;
    idx = ok ? idx : 0u;
    float v = TO_FLOAT(u_buf[idx]);
    if ((pc.flags & FLAG_GATED) != 0u) {
        v *= TO_FLOAT(pre_buf[idx]);
    }
    return ok ? v : 0.0;
}

// segment_value_at for segment `seg` of channel h.
float segment_value(uint seg, uint h, uint pos) {
    uint row_base, start, outputs;
    bool exists = segment_row(seg, h, row_base, start, outputs);
    return segment_value_at(exists, row_base, start, outputs, pos);
}

// Writes output `pos` of a located segment (post-gated) when it is one of its outputs.
void store_output_at(bool exists, uint row_base, uint start, uint outputs, uint pos, float v) {
    if (!exists || pos >= outputs) {
        return;
    }
    uint idx = row_base + start + pos;
    if ((pc.flags & FLAG_GATED) != 0u) {
        v *= TO_FLOAT(post_buf[idx]);
    }
    y_buf[idx] = FROM_FLOAT(v);
}

// store_output_at for segment `seg` of channel h.
void store_output(uint seg, uint h, uint pos, float v) {
    uint row_base, start, outputs;
    bool exists = segment_row(seg, h, row_base, start, outputs);
    store_output_at(exists, row_base, start, outputs, pos, v);
}

// Whether full-spectrum frequency f is kept (frequency sparsity keeps the lowest bins).
bool bin_kept(uint f) {
    uint n = 1u << pc.log2n;
    return (f <= (n >> 1) ? f : n - f) < pc.kept_bins;
}

// Filter spectrum at full-spectrum frequency f of chunk channel h (0 where dropped).
vec2 filter_bin(uint h, uint f) {
    uint n = 1u << pc.log2n;
    uint mirrored = f <= (n >> 1) ? f : n - f;
    if (mirrored >= pc.kept_bins) {
        return vec2(0.0);
    }
    vec2 k = spectrum[(pc.channel_offset + h) * pc.kept_bins + mirrored];
    return f <= (n >> 1) ? k : conj_c(k);
}

// From here to fft_inverse: the FFT passes' stores and transforms (the taps sum reads Taps and
// has no FFT lines in shared memory, so it leaves them out).
#if !defined(PASS_TAPS_SUM)
#if defined(TMP_F16)
// ---- half spectra ------------------------------------------------------------------------------
//
// A tile's values go to tmp16 in f16 times 2^(e - 127), e = half_scale_exponent(m) for the
// tile's largest finite |component| (float bits m, half_magnitude): that takes m into
// [2^13, 2^14), so every component stays below f16's 65504 with room to spare and values down
// to 2^-27 of the maximum stay normal f16; non-finite values stay non-finite. The reader
// multiplies by 2^(127 - e) (the tile's stored unscale factor); both are normal floats (e in
// 1 .. 253), so the scaling is exact. The same rule as CUDA's mt_row_scale_exponent.
// Precision: each stored value is a partial transform that mixes every frequency of its residue
// class, so its f16 rounding (2^-11 of it) reaches all of them: the error is relative to the
// input's spectral energy, as in CUDA's f16 Monarch passes, and a filter that removes most of
// that energy (|y| << |u|) leaves a relative error about |u| / |y| times larger than f32
// spectra would.
uint half_scale_exponent(uint m) {
    uint e = m >> 23;
    return min(267u - max(e, 14u), 253u);
}

// The larger finite |component| of v as float bits (0 for non-finite ones; an unsigned max of
// such bits is the largest magnitude). Taken of the values as stored (after the column pass's
// twiddle), so each component of the tile is at most 2^14 once scaled.
uint half_magnitude(vec2 v) { return max(finite_bits(v.x), finite_bits(v.y)); }

// The tile's packed value of v with scale exponent e (half_scale_exponent).
uint half_pack(vec2 v, uint e) { return packHalf2x16(v * uintBitsToFloat(e << 23)); }

// The unscale factor's bits stored for a tile of scale exponent e.
uint half_unscale_bits(uint e) { return (254u - e) << 23; }

// The value at word i of tmp16 times the unscale factor (bits) of its tile.
vec2 half_unpack(uint i, uint unscale_bits) {
    return unpackHalf2x16(tmp16[i]) * uintBitsToFloat(unscale_bits);
}

// Where regions A and B start (words) for `pairs` pairs: after the data, and after A.
uint half_region_a(uint pairs) { return pairs << pc.log2n; }
uint half_region_b(uint pairs) {
    return (pairs << pc.log2n) + ((pairs << pc.log2n) >> uint(findMSB(SHARED_POINTS)));
}

// The largest of `m` (float bits) over each segment of 2^seg_log2 consecutive invocations among
// the first 2^span_log2 (the others keep their own), through s, up to 16 partial maxima per
// level (a 256-invocation segment: 2 levels, 5 barriers in all). Every invocation of the
// workgroup calls it (it has barriers); it begins with a barrier (s may still be being read)
// and ends with one (s is free again after it). span <= the shared points.
uint segment_max(uint m, uint seg_log2, uint span_log2) {
    uint tid = gl_LocalInvocationIndex;
    bool in_span = tid < (1u << span_log2);
    memoryBarrierShared();
    barrier();
    if (in_span) {
        s[SIDX(tid)].x = uintBitsToFloat(m);
    }
    memoryBarrierShared();
    barrier();
    // Level by level: the partial maxima sit w apart; invocations at multiples of w 2^r take
    // 2^r of them (their own and the next 2^r - 1, which no invocation writes at this level).
    uint w = 1u;
    for (uint left = seg_log2; left > 0u;) {
        uint r = min(left, 4u);
        if (in_span && (tid & ((w << r) - 1u)) == 0u) {
            for (uint j = 1u; j < (1u << r); j++) {
                m = max(m, floatBitsToUint(s[SIDX(tid + j * w)].x));
            }
            s[SIDX(tid)].x = uintBitsToFloat(m);
        }
        memoryBarrierShared();
        barrier();
        w <<= r;
        left -= r;
    }
    uint mask = (1u << seg_log2) - 1u;
    uint result = in_span ? floatBitsToUint(s[SIDX(tid & ~mask)].x) : m;
    memoryBarrierShared();
    barrier();
    return result;
}
#endif
// Stores position `pos` of a pair's final result: taps (backward), outputs, or tmp.
void store_result(uint pair, uint pos, vec2 v) {
    uint n = 1u << pc.log2n;
    if ((pc.flags & FLAG_DST_TAPS) != 0u) {
        // FLAG_TAPS_MIRRORED: the pass holds IFFT(V conj D), whose position N - t is tap t.
        uint t = (pc.flags & FLAG_TAPS_MIRRORED) != 0u ? (n - pos) & (n - 1u) : pos;
        if (t < pc.taps_len) {
            taps[pair * pc.taps_len + t] = v.x;
        }
    } else if ((pc.flags & FLAG_DST_OUTPUT) != 0u) {
        uint h = udiv(pair, pc.pairs);
        uint q = pair - h * pc.pairs;
        store_output(2u * q, h, pos, v.x);
        store_output(2u * q + 1u, h, pos, v.y);
    } else {
#if defined(TMP_F16)
        // Not reached: half spectra run plans of one global stage, whose inverse column pass
        // writes the outputs (the host checks; see VulkanConvolution::half_spectra).
        tmp16[pair * n + pos] = packHalf2x16(v);
#else
        tmp[pair * n + pos] = v;
#endif
    }
}

// ---- radix-2 FFTs on the workgroup's lines in shared memory -------------------------------------
//
// Up to three radix-2 stages run per barrier ("radix 2^3"): each invocation takes the eight
// points of one group, applies the stages in registers and writes them back in place. The result
// is exactly the radix-2 one (same twiddles, same bit-reversed order); only a third of the
// barriers and shared-memory round trips remain. Leftover stages run as radix 2^2 or 2.
//
// A group of `r` stages covers group size 2^gl: its points sit at offsets k * q + j
// (k < 2^r, q = 2^(gl - r), j < q) from the group start.

// Index of the first point of group-round item `item` (line, group, j) for stages (gl, r).
uint group_base(uint item, uint m_log2, uint gl, uint r) {
    uint per_line_log2 = m_log2 - r;
    uint line = item >> per_line_log2;
    uint k = item & ((1u << per_line_log2) - 1u);
    uint q_log2 = gl - r;
    uint j = k & ((1u << q_log2) - 1u);
    return (line << m_log2) + ((k >> q_log2) << gl) + j;
}

// Forward (DIF) stages with spans 2^(gl-1) .. 2^(gl-R) on every group, R = 3, 2 or 1.
#define DIF_ROUND(R)                                                                            \
    {                                                                                           \
        uint items = 1u << (m_log2 + lines_log2 - (R));                                         \
        uint q_log2 = gl - (R);                                                                 \
        for (uint it = gl_LocalInvocationIndex; it < items; it += gl_WorkGroupSize.x) {         \
            uint i0 = group_base(it, m_log2, gl, (R));                                          \
            uint j = i0 & ((1u << q_log2) - 1u);                                                \
            vec2 x[1u << (R)];                                                                  \
            for (uint k = 0u; k < (1u << (R)); k++) {                                           \
                x[k] = s[SIDX(i0 + (k << q_log2))];                                                   \
            }                                                                                   \
            for (uint t = 0u; t < (R); t++) {                                                   \
                uint half_k = 1u << ((R) - 1u - t);                                             \
                uint span_log2 = gl - 1u - t;                                                   \
                for (uint k = 0u; k < (1u << (R)); k++) {                                       \
                    if ((k & half_k) == 0u) {                                                   \
                        vec2 a = x[k];                                                          \
                        vec2 b = x[k + half_k];                                                 \
                        x[k] = a + b;                                                           \
                        if (CONST_TWIDDLES != 0u) {                                             \
                            /* W_{2^(gl-t)}^(j + c q) = W_{2^(gl-t)}^j W_8^(c 2^(3-R+t)) */     \
                            vec2 d = mul_w8(a - b, (k & (half_k - 1u)) << (3u - (R) + t));      \
                            x[k + half_k] = cmul(d, root(j, span_log2 + 1u));                   \
                        } else {                                                                \
                            uint e = ((k & (half_k - 1u)) << q_log2) + j;                       \
                            x[k + half_k] = cmul(a - b, root(e, span_log2 + 1u));               \
                        }                                                                       \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
            for (uint k = 0u; k < (1u << (R)); k++) {                                           \
                s[SIDX(i0 + (k << q_log2))] = x[k];                                                   \
            }                                                                                   \
        }                                                                                       \
        memoryBarrierShared();                                                                  \
        barrier();                                                                              \
    }

// Inverse (DIT) stages with spans 2^g .. 2^(g+R-1) on every group (group size 2^(g+R)).
#define DIT_ROUND(R)                                                                            \
    {                                                                                           \
        uint gl = g + (R);                                                                      \
        uint items = 1u << (m_log2 + lines_log2 - (R));                                         \
        for (uint it = gl_LocalInvocationIndex; it < items; it += gl_WorkGroupSize.x) {         \
            uint i0 = group_base(it, m_log2, gl, (R));                                          \
            uint j = i0 & ((1u << g) - 1u);                                                     \
            vec2 x[1u << (R)];                                                                  \
            for (uint k = 0u; k < (1u << (R)); k++) {                                           \
                x[k] = s[SIDX(i0 + (k << g))];                                                        \
            }                                                                                   \
            for (uint t = 0u; t < (R); t++) {                                                   \
                uint half_k = 1u << t;                                                          \
                for (uint k = 0u; k < (1u << (R)); k++) {                                       \
                    if ((k & half_k) == 0u) {                                                   \
                        vec2 c;                                                                 \
                        if (CONST_TWIDDLES != 0u) {                                             \
                            /* conj(W_{2^(g+t+1)}^(j + c 2^g)) = conj(W^j) W_8^(-c 2^(2-t)) */  \
                            uint c8 = 8u - ((k & (half_k - 1u)) << (2u - t));                   \
                            c = mul_w8(cmul(x[k + half_k], conj_c(root(j, g + t + 1u))), c8);   \
                        } else {                                                                \
                            uint e = ((k & (half_k - 1u)) << g) + j;                            \
                            c = cmul(x[k + half_k], conj_c(root(e, g + t + 1u)));               \
                        }                                                                       \
                        vec2 a = x[k];                                                          \
                        x[k] = a + c;                                                           \
                        x[k + half_k] = a - c;                                                  \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
            for (uint k = 0u; k < (1u << (R)); k++) {                                           \
                s[SIDX(i0 + (k << g))] = x[k];                                                        \
            }                                                                                   \
        }                                                                                       \
        memoryBarrierShared();                                                                  \
        barrier();                                                                              \
        g += (R);                                                                               \
    }

#if defined(COOP)
// ---- cooperative-matrix rounds ------------------------------------------------------------------
//
// r = COOP_LOG2 radix-2 stages on groups of G = 2^gl points, q = 2^(gl - r): the points
// k q + j of a group (k < T = 2^r, j < q) are column j of a T-row matrix, one column per item
// (line, group, j) of the round. Forward (DIF): y[b q + j] = W_G^(j f) sum_k W_T^(k f) x[k q + j],
// f = bitrev_r(b), the radix-2 stages' result exactly (bit-reversed rows, the same twiddles).
// Inverse (DIT, its adjoint): x[k q + j] = sum_b conj(W_T^(k f)) conj(W_G^(j f)) y[b q + j].
// Each tile of T items (T columns, from one group or, where q < T, several) is a complex T x T
// product, four f16 matrix products with f32
// accumulation, staged through the subgroup's own slot: the tile is scaled by the power of two
// that brings its largest finite magnitude into [2^10, 2^11) before rounding to f16 (so a tile's
// rounding is relative to its own size, whatever the channel's scale), and scaled back after.

// Fills coop_a (the caller's next barrier publishes it).
void coop_init() {
    for (uint i = gl_LocalInvocationIndex; i < COOP_TT; i += gl_WorkGroupSize.x) {
        uint b = i >> COOP_LOG2;
        uint k = i & (COOP_T - 1u);
        uint e = (k * bit_reverse(b, COOP_LOG2)) & (COOP_T - 1u);
        vec2 w = twiddles[e << (pc.log2n - COOP_LOG2)];
        coop_a[i] = float16_t(w.x);
        coop_a[COOP_TT + i] = float16_t(w.y);
        coop_a[2u * COOP_TT + i] = float16_t(-w.y);
        uint t = (k << COOP_LOG2) + b; // transposed, conjugated
        coop_a[3u * COOP_TT + t] = float16_t(w.x);
        coop_a[4u * COOP_TT + t] = float16_t(-w.y);
        coop_a[5u * COOP_TT + t] = float16_t(w.y);
    }
}

// Orders one subgroup's steps on its own slot and tiles (staging, products, read-back): a
// subgroup-scope barrier, reached by every subgroup of the workgroup alike (lavapipe treats it
// as a workgroup barrier, so all must reach the same ones; NVIDIA's warps each go on at once).
void coop_sync() {
    subgroupMemoryBarrierShared();
    subgroupBarrier();
}

// One round of r stages on every group of size 2^gl of the workgroup's lines.
// Subgroup s < slots takes tiles s, s + slots, ...: a batch of tiles is staged, then
// multiplied, then written back. A subgroup only touches its own slot and its own tiles (tiles
// of a round are disjoint), so subgroup barriers order the steps (coop_sync); every subgroup
// runs the same number of batches and reaches them alike, busy or not: lavapipe gives wrong
// results when only some subgroups reach a subgroup barrier. The workgroup barrier at the end
// publishes the round. (With f32 products the next batch's staging writes coop_b while this
// one's products are read from coop_c, so no barrier is needed between them.)
void coop_round(uint m_log2, uint lines_log2, uint gl, bool inverse) {
    uint q_log2 = gl - COOP_LOG2;
    // Tiles: T consecutive items (line, group, j) of the round (group_base), T points each.
    uint tiles_log2 = m_log2 + lines_log2 - 2u * COOP_LOG2;
    uint slot = gl_SubgroupID;
    // (The host sizes COOP_SLOTS from the subgroup size it was told; the one it runs with
    // decides.)
    uint slots = min(COOP_SLOTS, gl_NumSubgroups);
    uint a0 = inverse ? 3u * COOP_TT : 0u;
    uint b0 = slot * 2u * COOP_TT;
    uint batches = ((1u << tiles_log2) + slots - 1u) / slots;
    coopmat<float16_t, gl_ScopeSubgroup, COOP_T, COOP_T, gl_MatrixUseA> a_re, a_im, a_neg;
    coopmat<float16_t, gl_ScopeSubgroup, COOP_T, COOP_T, gl_MatrixUseAccumulator> h_re, h_im;
    if (slot < slots) { // uniform over the subgroup
        coopMatLoad(a_re, coop_a, a0, COOP_T, gl_CooperativeMatrixLayoutRowMajor);
        coopMatLoad(a_im, coop_a, a0 + COOP_TT, COOP_T, gl_CooperativeMatrixLayoutRowMajor);
        coopMatLoad(a_neg, coop_a, a0 + 2u * COOP_TT, COOP_T, gl_CooperativeMatrixLayoutRowMajor);
    }
    for (uint batch = 0u; batch < batches; batch++) {
        uint tile = batch * slots + slot;
        bool busy = slot < slots && tile < (1u << tiles_log2); // uniform per subgroup
        uint item0 = tile << COOP_LOG2;
        float unscale = 1.0;
        if (busy) {
            uint largest = 0u;
            for (uint e = gl_SubgroupInvocationID; e < COOP_TT; e += gl_SubgroupSize) {
                uint i0 = group_base(item0 + (e & (COOP_T - 1u)), m_log2, gl, COOP_LOG2);
                vec2 v = s[SIDX(i0 + ((e >> COOP_LOG2) << q_log2))];
                largest = max(largest, max(finite_bits(v.x), finite_bits(v.y)));
            }
            largest = subgroupMax(largest);
            // 2^k brings the largest into [2^10, 2^11) ([2^9, 2^10) for f16 products: their
            // magnitudes stay below 2^9 T sqrt(2), finite in f16 for T = 16); k keeps 2^k and
            // 2^-k normal.
            int top = COOP_F16_PRODUCTS != 0u ? 136 : 137;
            int k = largest == 0u ? 0 : clamp(top - int(largest >> 23), -126, 126);
            float scale = uintBitsToFloat(uint(127 + k) << 23);
            unscale = uintBitsToFloat(uint(127 - k) << 23);
            for (uint e = gl_SubgroupInvocationID; e < COOP_TT; e += gl_SubgroupSize) {
                uint row = e >> COOP_LOG2;
                uint i0 = group_base(item0 + (e & (COOP_T - 1u)), m_log2, gl, COOP_LOG2);
                uint j = i0 & ((1u << q_log2) - 1u);
                vec2 v = s[SIDX(i0 + (row << q_log2))];
                if (inverse) {
                    v = cmul(v, conj_c(root(j * bit_reverse(row, COOP_LOG2), gl)));
                }
                v *= scale;
                coop_b[b0 + e] = float16_t(v.x);
                coop_b[b0 + COOP_TT + e] = float16_t(v.y);
            }
        }
        coop_sync();
        if (busy) {
            coopmat<float16_t, gl_ScopeSubgroup, COOP_T, COOP_T, gl_MatrixUseB> b_re, b_im;
            coopMatLoad(b_re, coop_b, b0, COOP_T, gl_CooperativeMatrixLayoutRowMajor);
            coopMatLoad(b_im, coop_b, b0 + COOP_TT, COOP_T, gl_CooperativeMatrixLayoutRowMajor);
            coopmat<float, gl_ScopeSubgroup, COOP_T, COOP_T, gl_MatrixUseAccumulator> c_re, c_im;
            c_re = coopmat<float, gl_ScopeSubgroup, COOP_T, COOP_T, gl_MatrixUseAccumulator>(0.0);
            c_im = coopmat<float, gl_ScopeSubgroup, COOP_T, COOP_T, gl_MatrixUseAccumulator>(0.0);
            c_re = coopMatMulAdd(a_re, b_re, c_re);
            c_re = coopMatMulAdd(a_neg, b_im, c_re);
            c_im = coopMatMulAdd(a_re, b_im, c_im);
            c_im = coopMatMulAdd(a_im, b_re, c_im);
            if (COOP_F16_PRODUCTS == 0u) {
                coopMatStore(c_re, coop_c, b0, COOP_T, gl_CooperativeMatrixLayoutRowMajor);
                coopMatStore(c_im, coop_c, b0 + COOP_TT, COOP_T,
                             gl_CooperativeMatrixLayoutRowMajor);
            } else {
                h_re = coopmat<float16_t, gl_ScopeSubgroup, COOP_T, COOP_T,
                               gl_MatrixUseAccumulator>(c_re);
                h_im = coopmat<float16_t, gl_ScopeSubgroup, COOP_T, COOP_T,
                               gl_MatrixUseAccumulator>(c_im);
            }
        }
        if (COOP_F16_PRODUCTS != 0u) {
            // The subgroup has loaded its operand before the products overwrite it.
            coop_sync();
            if (busy) {
                coopMatStore(h_re, coop_b, b0, COOP_T, gl_CooperativeMatrixLayoutRowMajor);
                coopMatStore(h_im, coop_b, b0 + COOP_TT, COOP_T,
                             gl_CooperativeMatrixLayoutRowMajor);
            }
        }
        coop_sync();
        // (The next batch stages into coop_b and reads other points: only its products, after
        // the next coop_sync, overwrite coop_c.)
        if (busy) {
            for (uint e = gl_SubgroupInvocationID; e < COOP_TT; e += gl_SubgroupSize) {
                uint row = e >> COOP_LOG2;
                uint i0 = group_base(item0 + (e & (COOP_T - 1u)), m_log2, gl, COOP_LOG2);
                uint j = i0 & ((1u << q_log2) - 1u);
                vec2 v = COOP_F16_PRODUCTS != 0u
                    ? vec2(float(coop_b[b0 + e]), float(coop_b[b0 + COOP_TT + e]))
                    : vec2(coop_c[b0 + e], coop_c[b0 + COOP_TT + e]);
                v *= unscale;
                if (!inverse) {
                    v = cmul(v, root(j * bit_reverse(row, COOP_LOG2), gl));
                }
                s[SIDX(i0 + (row << q_log2))] = v;
            }
        }
        if (COOP_F16_PRODUCTS != 0u) {
            // The next batch stages into the slot this one's products were read from.
            coop_sync();
        }
    }
    memoryBarrierShared();
    barrier();
}

// Matrix rounds of a line of 2^m_log2 points: the coarsest ones, leaving 1 .. r stages to the
// radix-2 rounds (the finest of which is the fused pass's middle round). Only for lines of at
// least T^2 points: then a tile (T consecutive items) lies in one line, so in one channel, and
// one scale serves it (lines of several channels side by side may be 2^80 apart).
uint coop_rounds(uint m_log2) {
    return m_log2 >= 2u * COOP_LOG2 ? (m_log2 - 1u) / COOP_LOG2 : 0u;
}
#endif

// Stages left to the radix-2 rounds of a line of 2^m_log2 points (the finest ones).
uint scalar_stages(uint m_log2) {
#if defined(COOP)
    return m_log2 - COOP_LOG2 * coop_rounds(m_log2);
#else
    return m_log2;
#endif
}

// The group size (log2) of a transform's finest round: the forward's last round and the
// inverse's first (both combine points 1 .. 2^(R-1) apart). 0 for lines of one point.
uint finest_round_log2(uint m_log2) {
    uint stages = scalar_stages(m_log2);
    if (stages == 0u) {
        return 0u;
    }
    uint r = stages % 3u;
    return r == 0u ? 3u : r;
}

// Forward, decimation in frequency on 2^lines_log2 lines: line c at s[c * M ...], natural order
// in, bit-reversed out. Stops before the round with group size 2^stop_log2 when that is
// finest_round_log2 (the caller runs it), or runs every round when it is 0.
void fft_forward(uint m_log2, uint lines_log2, uint stop_log2) {
    uint gl = m_log2; // log2 of the group size of the next round
#if defined(COOP)
    for (uint c = coop_rounds(m_log2); c > 0u; c--, gl -= COOP_LOG2) {
        coop_round(m_log2, lines_log2, gl, false);
    }
#endif
    for (; gl >= 3u && gl > stop_log2; gl -= 3u) DIF_ROUND(3u)
    if (gl == 2u && gl > stop_log2) DIF_ROUND(2u)
    if (gl == 1u && gl > stop_log2) DIF_ROUND(1u)
}

// Inverse (unscaled) on 2^lines_log2 lines, decimation in time: bit-reversed order in, natural
// out. Starts at span 2^g0: 0 (every round) or finest_round_log2 (the caller ran the finest
// round).
void fft_inverse(uint m_log2, uint lines_log2, uint g0) {
    uint g = g0; // log2 of the span of the next stage
    uint stages = scalar_stages(m_log2);
    if (g == 0u) {
        uint rest = stages % 3u;
        if (rest == 1u) DIT_ROUND(1u)
        if (rest == 2u) DIT_ROUND(2u)
    }
    while (g < stages) DIT_ROUND(3u)
#if defined(COOP)
    for (; g < m_log2; g += COOP_LOG2) {
        coop_round(m_log2, lines_log2, g + COOP_LOG2, true);
    }
#endif
}
#endif

#if defined(PASS_FUSED) || defined(PASS_REGISTER_FUSED)
// The global stages' part of the frequency held by position pos of a pair after the forward
// transform: position pos = sum_s M_{s+1} p_s + p holds frequency
// f = sum_s (N_0 ... N_{s-1}) bitrev(p_s) + (N_0 ... N_{j-1}) F(p), where F(p) is the line's own
// frequency at its point p (bitrev(p) after the radix-2 fused pass's decimation in frequency, p
// after the register-radix pass's Stockham passes). Returns the first sum; weight_log2 gets
// log2 (N_0 ... N_{j-1}).
uint stage_frequency(uint pos, out uint weight_log2) {
    uint f = 0u;
    weight_log2 = 0u;
    uint shift = pc.log2n;
    for (uint st = 0u; st < pc.stage_count; st++) {
        uint bits = (pc.stage_bits >> (5u * st)) & 31u;
        shift -= bits;
        uint digit = (pos >> shift) & ((1u << bits) - 1u);
        f += bit_reverse(digit, bits) << weight_log2;
        weight_log2 += bits;
    }
    return f;
}
#endif

#if defined(PASS_FUSED)
// Frequency held by position pos of a pair (point p of its line of 2^m_log2 points) after the
// radix-2 fused pass's forward transform (see stage_frequency).
uint position_frequency(uint pos, uint p, uint m_log2) {
    uint weight_log2;
    uint f = stage_frequency(pos, weight_log2);
    return f + (bit_reverse(p, m_log2) << weight_log2);
}

// The pointwise product's factor at frequency f of pair `pair` of channel h (position pos): the
// filter bin (conjugated for the adjoint), or for the filter gradient (FLAG_CORRELATE)
// conj(other) / N; `kept` is false, and the factor 0, where frequency sparsity drops the bin.
vec2 frequency_factor(uint h, uint pair, uint pos, uint f, out bool kept) {
    kept = bin_kept(f);
    if (!kept) {
        return vec2(0.0);
    }
    if ((pc.flags & FLAG_CORRELATE) != 0u) {
        return conj_c(other[pair * (1u << pc.log2n) + pos]) / float(1u << pc.log2n);
    }
    vec2 factor = filter_bin(h, f);
    return (pc.flags & FLAG_CONJ_FILTER) != 0u ? conj_c(factor) : factor;
}

// The finest forward round (group size 2^R, j = 0), the product and the finest inverse round on
// each group of 2^R consecutive points, in registers. The group's points hold frequencies
// f0 + bitrev_R(k) N / 2^R (the low R bits of a position are the top R bits of its frequency).
#define MIDDLE_ROUND(R)                                                                         \
    {                                                                                           \
        uint items = 1u << (m_log2 + pc.lines_log2 - (R));                                      \
        for (uint it = gl_LocalInvocationIndex; it < items; it += gl_WorkGroupSize.x) {         \
            uint i0 = it << (R);                                                                \
            uint line = first_line + (i0 >> m_log2);                                            \
            if (line >= pc.total_lines) {                                                       \
                continue;                                                                       \
            }                                                                                   \
            uint pair = line >> pair_lines_log2;                                                \
            uint p0 = i0 & (m - 1u);                                                            \
            uint pos0 = ((line & ((1u << pair_lines_log2) - 1u)) << m_log2) + p0;               \
            uint h = udiv(pair, pc.pairs);                                                           \
            uint f0 = position_frequency(pos0, p0, m_log2);                                     \
            vec2 factor[1u << (R)];                                                             \
            bool any = false;                                                                   \
            for (uint k = 0u; k < (1u << (R)); k++) {                                           \
                bool kept;                                                                      \
                uint f = f0 + (bit_reverse(k, (R)) << (pc.log2n - (R)));                        \
                factor[k] = frequency_factor(h, pair, pos0 + k, f, kept);                       \
                any = any || kept;                                                              \
            }                                                                                   \
            vec2 x[1u << (R)];                                                                  \
            if (!any) {                                                                         \
                for (uint k = 0u; k < (1u << (R)); k++) {                                       \
                    s[SIDX(i0 + k)] = vec2(0.0);                                                \
                }                                                                               \
                continue;                                                                       \
            }                                                                                   \
            for (uint k = 0u; k < (1u << (R)); k++) {                                           \
                x[k] = s[SIDX(i0 + k)];                                                         \
            }                                                                                   \
            for (uint t = 0u; t < (R); t++) {                                                   \
                uint half_k = 1u << ((R) - 1u - t);                                             \
                for (uint k = 0u; k < (1u << (R)); k++) {                                       \
                    if ((k & half_k) == 0u) {                                                   \
                        vec2 a = x[k];                                                          \
                        vec2 b = x[k + half_k];                                                 \
                        x[k] = a + b;                                                           \
                        x[k + half_k] = cmul(a - b, root(k & (half_k - 1u), (R) - t));          \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
            for (uint k = 0u; k < (1u << (R)); k++) {                                           \
                x[k] = cmul(x[k], factor[k]);                                                   \
            }                                                                                   \
            for (uint t = 0u; t < (R); t++) {                                                   \
                uint half_k = 1u << t;                                                          \
                for (uint k = 0u; k < (1u << (R)); k++) {                                       \
                    if ((k & half_k) == 0u) {                                                   \
                        vec2 c = cmul(x[k + half_k], conj_c(root(k & (half_k - 1u), t + 1u)));  \
                        vec2 a = x[k];                                                          \
                        x[k] = a + c;                                                           \
                        x[k + half_k] = a - c;                                                  \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
            for (uint k = 0u; k < (1u << (R)); k++) {                                           \
                s[SIDX(i0 + k)] = x[k];                                                         \
            }                                                                                   \
        }                                                                                       \
        memoryBarrierShared();                                                                  \
        barrier();                                                                              \
    }
#endif

#if defined(PASS_BACKWARD_FUSED)
// Adds an invocation's running maxima a, b of row `line` (none: 0xffffffff) to the workgroup's
// slots `slot`, `slot + 1`.
void row_max_add(uint slot, uint line, uint a, uint b) {
    if (line != 0xffffffffu) {
        atomicMax(row_max[slot * BACKWARD_ROWS + line], a);
        atomicMax(row_max[(slot + 1u) * BACKWARD_ROWS + line], b);
    }
}

// log2 of the power of two that brings slot + 1's maximum to slot's for row `line`: 0 where
// either is zero or subnormal throughout; clamped so that 2^k and 2^(-k-1) are normal floats.
int row_scale_log2(uint slot, uint line) {
    int e0 = int(row_max[slot * BACKWARD_ROWS + line] >> 23);
    int e1 = int(row_max[(slot + 1u) * BACKWARD_ROWS + line] >> 23);
    int k = e0 == 0 || e1 == 0 ? 0 : e0 - e1;
    return clamp(k, -125, 125);
}

// 2^k for a normal result.
float pow2(int k) { return uintBitsToFloat(uint(127 + k) << 23); }

// Row r of the chunk: segment 2q + (r & 1) of channel h, where r >> 1 = h pairs + q.
void backward_row(uint r, out uint h, out uint seg) {
    uint pair = r >> 1;
    h = udiv(pair, pc.pairs);
    seg = 2u * (pair - h * pc.pairs) + (r & 1u);
}
#endif

#if defined(REGISTER_RADIX)
// ---- register-radix FFT passes ------------------------------------------------------------------
// A line of M = 2^m points (a pair's whole FFT in a one-pass plan, the fused block's lines after
// global stages, or a column of a global stage) gets M / 16 invocations holding 16 points each
// in registers. They run Stockham passes of radix 16 (one pass of radix 2^(m mod 4) first where
// that is not 0), each a DFT in registers after the twiddles, with one shared-memory exchange
// between passes. Stockham passes keep natural order: pass s (radix R, span Ns = product of the
// earlier radices) reads points j + r M / R of butterfly j (r < R) and writes its outputs at
// (j - j mod Ns) R + j mod Ns + r Ns. The inverse is the forward transform of the conjugate
// (conjugated again at the end), so one pass routine serves both.
// PASS_REGISTER_FUSED (register_fused): the last forward pass (R = 16) leaves frequency
// j + r M / 16 in register r of invocation j, which is where the first pass of the inverse reads
// point r: the product and the inverse's first pass run on the registers. The first forward pass
// reads the inputs (u, or the spectra after global stages) from global memory and the last
// inverse pass writes the outputs there, both coalesced (consecutive invocations, consecutive
// positions). Lines per workgroup: 2^lines_log2 (the host sizes it to the shared memory and
// invocations), or with LONG_LINES one line of 16 x the workgroup points, longer than the
// shared memory (so a whole FFT of up to 16K points is one pass on 4096 shared points and 1024
// invocations; see register_exchange). The passes that keep their lines in shared memory (the
// column passes, the radix-2 fused pass, the fused backward) run register_lines between their
// own loads and stores.

// The invocation's points: rp[g R + r] is point r of its butterfly g in a pass of radix R.
vec2 rp[16];
// log2 of the line length M (N for a one-pass plan, the fused block's M_j after global stages).
uint reg_log2;

// W_16^k = exp(-2 pi i k / 16) for k < 8, as selects (k is a constant wherever it is used, after
// unrolling, so this folds to one value; a constant array might be indexed at run time where a
// compiler folds late).
const float COS_PI_8 = 0.92387953251128674;
const float SIN_PI_8 = 0.38268343236508977;
const float SQRT_HALF = 0.70710678118654752;
vec2 w16(uint k) {
    float c = k == 0u ? 1.0 : k == 1u ? COS_PI_8 : k == 2u ? SQRT_HALF : k == 3u ? SIN_PI_8 : 0.0;
    float sn = k == 0u ? 0.0 : k == 1u ? SIN_PI_8 : k == 2u ? SQRT_HALF : k == 3u ? COS_PI_8 : 1.0;
    // W^(k + 4) = -i W^k.
    return k < 4u ? vec2(c, -sn)
                  : vec2(-(k == 4u ? 0.0 : k == 5u ? SIN_PI_8 : k == 6u ? SQRT_HALF : COS_PI_8),
                         -(k == 4u ? 1.0 : k == 5u ? COS_PI_8 : k == 6u ? SQRT_HALF : SIN_PI_8));
}

// The radix-16 Stockham pass on the invocation's 16 points (one butterfly j = t; T = M / 16
// invocations per line): the twiddles W_{16 Ns}^{r (j mod Ns)} (Ns = 2^ns_log2; W^r as products
// of the table's W, W^2, W^4, W^8), then the 16-point DFT (radix-2 decimation in frequency with
// constant W_16 factors), reordered to natural order (register r holds output r).
void register_pass16(uint ns_log2, uint t) {
    if (ns_log2 > 0u) {
        uint e = (t & ((1u << ns_log2) - 1u)) << (pc.log2n - ns_log2 - 4u);
        vec2 w[16];
        w[0] = vec2(1.0, 0.0);
        [[unroll]] for (uint r = 1u; r < 16u; r++) {
            uint low = r & (~r + 1u);
            w[r] = low == r ? twiddles[r * e] : cmul(w[r - low], w[low]);
            rp[r] = cmul(rp[r], w[r]);
        }
    }
    [[unroll]] for (uint st = 0u; st < 4u; st++) {
        uint half_ = 8u >> st;
        [[unroll]] for (uint k = 0u; k < 16u; k++) {
            if ((k & half_) == 0u) {
                vec2 a = rp[k];
                vec2 b = rp[k + half_];
                rp[k] = a + b;
                rp[k + half_] = cmul(a - b, w16((k & (half_ - 1u)) * (8u / half_)));
            }
        }
    }
    vec2 natural[16];
    [[unroll]] for (uint k = 0u; k < 16u; k++) {
        natural[k] = rp[bitfieldReverse(k) >> 28u];
    }
    [[unroll]] for (uint k = 0u; k < 16u; k++) {
        rp[k] = natural[k];
    }
}

// A Stockham pass of radix R = 2^lr < 16 (the one pass of a line of 2^(4q + lr) points that is
// not radix 16): the invocation's 16 / R butterflies j = t + g M / 16 on registers g R .. g R +
// R - 1 (point r of butterfly g in register g R + r). Twiddles W_{R Ns}^{r (j mod Ns)}, one table
// load per register; then the last lr stages of the 16-point decimation-in-frequency network,
// which are the R-point DFTs of the groups of R registers, their outputs left in bit-reversed
// order within each group (register_output gives each register's output). One routine for
// every R < 16, its register indices constant: R only gates stages and twiddles.
void register_pass_small(uint lr, uint ns_log2, uint t) {
    if (ns_log2 > 0u) {
        [[unroll]] for (uint i = 0u; i < 16u; i++) {
            uint j = t + ((i >> lr) << (reg_log2 - 4u));
            uint e = (j & ((1u << ns_log2) - 1u)) << (pc.log2n - ns_log2 - lr);
            uint r = i & ((1u << lr) - 1u);
            if (r != 0u) {
                rp[i] = cmul(rp[i], twiddles[r * e]);
            }
        }
    }
    [[unroll]] for (uint st = 0u; st < 4u; st++) {
        uint half_ = 8u >> st;
        if (half_ < (1u << lr)) {
            [[unroll]] for (uint k = 0u; k < 16u; k++) {
                if ((k & half_) == 0u) {
                    vec2 a = rp[k];
                    vec2 b = rp[k + half_];
                    rp[k] = a + b;
                    rp[k + half_] = cmul(a - b, w16((k & (half_ - 1u)) * (8u / half_)));
                }
            }
        }
    }
}

// Output index within its butterfly of register offset k (< 2^lr) after a pass of radix 2^lr:
// natural after the radix-16 pass, bit-reversed after a smaller one.
uint register_output(uint k, uint lr) {
    return lr == 4u ? k : bitfieldReverse(k) >> (32u - lr);
}

// The pass of radix 2^lr with span 2^ns_log2 (lr in 1..4).
void register_pass(uint lr, uint ns_log2, uint t) {
    if (lr == 4u) {
        register_pass16(ns_log2, t);
    } else {
        register_pass_small(lr, ns_log2, t);
    }
}

// The line position of register i of invocation t in a pass of radix 2^lr that reads points
// j + r M / R: i = g R + r, j = t + g M / 16. (After such a pass as the last one, register i holds
// output position t + g M / 16 + register_output(r, lr) M / R.)
uint register_position(uint i, uint lr, uint t) {
    uint g = i >> lr;
    uint r = i & ((1u << lr) - 1u);
    return t + (g << (reg_log2 - 4u)) + (r << (reg_log2 - lr));
}

// The output position of register i after a last pass of radix 2^lr (see register_position).
uint register_output_position(uint i, uint lr, uint t) {
    uint g = i >> lr;
    uint r = register_output(i & ((1u << lr) - 1u), lr);
    return t + (g << (reg_log2 - 4u)) + (r << (reg_log2 - lr));
}

// Shared-memory exchanges in the invocation's line (starting at point `lb` of `s`): the inputs
// of a pass of radix 2^lr (read), or the outputs of one whose span was 2^ns_log2 (write), at the
// Stockham positions.
void register_read(uint lr, uint lb, uint t) {
    [[unroll]] for (uint i = 0u; i < 16u; i++) {
        rp[i] = s[SIDX(lb + register_position(i, lr, t))];
    }
}

// The line position of register i's output after a pass of radix 2^lr and span 2^ns_log2 (the
// Stockham position (j - j mod Ns) R + j mod Ns + r Ns of its butterfly j's output r).
uint register_write_position(uint i, uint lr, uint ns_log2, uint t) {
    uint j = t + ((i >> lr) << (reg_log2 - 4u));
    uint k = j & ((1u << ns_log2) - 1u);
    uint r = register_output(i & ((1u << lr) - 1u), lr);
    return ((j - k) << lr) + k + (r << ns_log2);
}

void register_write(uint lr, uint ns_log2, uint lb, uint t) {
    [[unroll]] for (uint i = 0u; i < 16u; i++) {
        s[SIDX(lb + register_write_position(i, lr, ns_log2, t))] = rp[i];
    }
}

void register_barrier() {
    memoryBarrierShared();
    barrier();
}

#if !defined(PASS_REGISTER_FUSED)
// Whether register_lines runs 2^lines_log2 lines of 2^m_log2 points: REGISTER_LINES is on,
// M >= 16, and the lines' M / 16 invocations each fit the workgroup (uniform over it).
bool register_lines_fit(uint m_log2, uint lines_log2) {
    return REGISTER_LINES != 0u && m_log2 >= 4u
           && ((1u << (m_log2 + lines_log2)) >> 4u) <= gl_WorkGroupSize.x;
}

// The line DFTs of a pass that holds its lines in shared memory (a global stage's columns, the
// radix-2 fused pass's lines, the fused backward's rows), on the register-radix passes, in
// place: the workgroup's 2^lines_log2 lines of M = 2^m_log2 points, M / 16 invocations per
// line, the line c at point c M. Forward: natural order in, bit-reversed out (position e holds
// frequency bitrev(e), as the radix-2 decimation in frequency leaves it); inverse: bit-reversed
// in, natural out; so it stands in for fft_forward / fft_inverse. Needs register_lines_fit.
void register_lines(uint m_log2, uint lines_log2, bool inverse) {
    reg_log2 = m_log2;
    uint tid = gl_LocalInvocationIndex;
    uint local_line = tid >> (m_log2 - 4u);
    uint t = tid & ((1u << (m_log2 - 4u)) - 1u);
    bool in_group = local_line < (1u << lines_log2);
    uint lb = in_group ? local_line << m_log2 : 0u;
    uint first = (m_log2 & 3u) != 0u ? (m_log2 & 3u) : 4u;
    uint passes = (m_log2 + 3u) >> 2;
    // Pass 0's points (the inverse's in bit-reversed positions, conjugated: the inverse is the
    // conjugate of the forward transform of the conjugate).
    if (in_group) {
        [[unroll]] for (uint i = 0u; i < 16u; i++) {
            uint p = register_position(i, first, t);
            vec2 v = s[SIDX(lb + (inverse ? bit_reverse(p, m_log2) : p))];
            rp[i] = inverse ? conj_c(v) : v;
        }
    }
    uint ns_log2 = 0u;
    for (uint p = 0u; p < passes; p++) {
        uint lr = p == 0u ? first : 4u;
        if (p > 0u && in_group) {
            register_read(lr, lb, t);
        }
        register_pass(lr, ns_log2, t);
        if (p + 1u < passes) {
            register_barrier();
            if (in_group) {
                register_write(lr, ns_log2, lb, t);
            }
            register_barrier();
        }
        ns_log2 += lr;
    }
    // The last pass (radix 16) holds frequency (inverse: position) t + r M / 16 in register r.
    register_barrier();
    if (in_group) {
        [[unroll]] for (uint r = 0u; r < 16u; r++) {
            uint p = t + (r << (m_log2 - 4u));
            s[SIDX(lb + (inverse ? p : bit_reverse(p, m_log2)))] = inverse ? conj_c(rp[r]) : rp[r];
        }
    }
    register_barrier();
}
#endif

#if defined(PASS_REGISTER_FUSED)
// Between two passes of register_fused: the outputs of a pass of radix 2^lr_out and span
// 2^ns_log2 become the inputs of a pass of radix 2^lr_in, through the shared memory. With
// LONG_LINES = R > 1 the workgroup's one line of M = R S points (S = SHARED_POINTS) goes through
// in rounds: the real parts first, then the imaginary parts, each in R / 2 rounds of 2 S
// consecutive positions (float f of a round in component f mod 2 of point f / 2: the S points). In a round each invocation writes its
// registers' part whose output position lies in the round's range, then reads those whose input
// position does. With R = 2 each part is one round, so the reads land in registers whose part
// was already written; with R > 2 a register may be read into before its own output went out,
// so the reads collect in `incoming` until the part's last round.
void register_exchange(uint lr_out, uint ns_log2, uint lr_in, uint lb, bool in_group, uint t) {
    if (LONG_LINES <= 1u) {
        register_barrier();
        if (in_group) {
            register_write(lr_out, ns_log2, lb, t);
        }
        register_barrier();
        if (in_group) {
            register_read(lr_in, lb, t);
        }
        return;
    }
    const uint HALVES = LONG_LINES / 2u; // rounds per part
    uint span_log2 = findMSB(SHARED_POINTS) + 1u; // log2 of the floats per round (2 S)
    float incoming[16];
    [[unroll]] for (uint c = 0u; c < 2u; c++) {
        for (uint q = 0u; q < HALVES; q++) {
            register_barrier();
            [[unroll]] for (uint i = 0u; i < 16u; i++) {
                uint o = register_write_position(i, lr_out, ns_log2, t);
                if ((o >> span_log2) == q) {
                    uint f = o & ((1u << span_log2) - 1u);
                    s[SIDX(f >> 1)][f & 1u] = rp[i][c];
                }
            }
            register_barrier();
            [[unroll]] for (uint i = 0u; i < 16u; i++) {
                uint p = register_position(i, lr_in, t);
                if ((p >> span_log2) == q) {
                    uint f = p & ((1u << span_log2) - 1u);
                    float v = s[SIDX(f >> 1)][f & 1u];
                    if (HALVES == 1u) {
                        rp[i][c] = v;
                    } else {
                        incoming[i] = v;
                    }
                }
            }
        }
        if (HALVES > 1u) {
            [[unroll]] for (uint i = 0u; i < 16u; i++) {
                rp[i][c] = incoming[i];
            }
        }
    }
}

void register_fused(uint first_line) {
    uint log2n = pc.log2n;
    reg_log2 = pc.line_log2;
    uint tid = gl_LocalInvocationIndex;
    uint local_line = tid >> (reg_log2 - 4u);
    uint t = tid & ((1u << (reg_log2 - 4u)) - 1u);
    // Invocations past the workgroup's lines only keep the barriers company.
    bool in_group = local_line < (1u << pc.lines_log2);
    uint line = first_line + local_line;
    bool line_live = in_group && line < pc.total_lines;
    uint lb = in_group ? local_line << reg_log2 : 0u;
    // Lines are contiguous blocks of M points of a pair's N (one line per pair without global
    // stages): this line starts at position pos0 of pair `pair`.
    uint pair_lines_log2 = log2n - reg_log2;
    uint pair = line >> pair_lines_log2;
    uint pos0 = (line & ((1u << pair_lines_log2) - 1u)) << reg_log2;
    uint pair_base = pair << log2n;
    // The pair's two segments (where the pass reads the inputs or writes the outputs).
    uint h = line_live ? udiv(pair, pc.pairs) : 0u;
    uint q = pair - h * pc.pairs;
    uint base_a, start_a, outputs_a, base_b, start_b, outputs_b;
    bool has_a = line_live && segment_row(2u * q, h, base_a, start_a, outputs_a);
    bool has_b = line_live && segment_row(2u * q + 1u, h, base_b, start_b, outputs_b);
    bool from_input = (pc.flags & FLAG_SRC_INPUT) != 0u;
    bool to_output = (pc.flags & FLAG_DST_OUTPUT) != 0u;
    // Pass radices (log2): 2^first then 16s forward; 16s then 2^first inverse.
    uint first = (reg_log2 & 3u) != 0u ? (reg_log2 & 3u) : 4u;
    uint passes = (reg_log2 + 3u) >> 2;

#if defined(TMP_F16)
    // Half spectra: the pairs of this dispatch, and the column pass's tiles per pair (log2) and
    // lines per tile (log2: the shared points over its lines' M_0 = N / M points).
    uint total_pairs = pc.total_lines >> pair_lines_log2;
    uint shared_log2 = uint(findMSB(SHARED_POINTS));
    uint tiles_a_log2 = log2n - shared_log2;
    uint tile_a_log2 = shared_log2 - pair_lines_log2;
#endif
    // Forward pass 0 reads the line: register i holds point i mod R of butterfly i / R
    // (R = 2^first), position j + (i mod R) M / R with j = t + (i / R) M / 16.
    [[unroll]] for (uint i = 0u; i < 16u; i++) {
        uint p = register_position(i, first, t);
        if (from_input) {
            rp[i] = vec2(segment_value_at(has_a, base_a, start_a, outputs_a, p),
                         segment_value_at(has_b, base_b, start_b, outputs_b, p));
        } else {
#if defined(TMP_F16)
            // Point p of the line is line p of the column pass (one global stage: its lines
            // are the columns p of stride M), whose workgroup's tile scaled it.
            uint a = half_region_a(total_pairs) + (pair << tiles_a_log2) + (p >> tile_a_log2);
            rp[i] = line_live ? half_unpack(pair_base + pos0 + p, tmp16[a]) : vec2(0.0);
#else
            rp[i] = line_live ? tmp[pair_base + pos0 + p] : vec2(0.0);
#endif
        }
    }
    // The forward's passes, the product, then the inverse's passes (one loop, so that each pass
    // routine is inlined once).
    uint ns_log2 = 0u;
    for (uint step = 0u; step < 2u * passes; step++) {
        bool inverse = step >= passes;
        uint p = inverse ? step - passes : step;
        uint lr = (inverse ? p + 1u == passes : p == 0u) ? first : 4u;
        if (p == 0u) {
            ns_log2 = 0u; // pass 0's inputs are in the registers (the loads, or the product)
        }
        register_pass(lr, ns_log2, t);
        if (p + 1u < passes) {
            // The next pass's radix: 16, except the inverse's last (2^first).
            uint next = inverse && p + 2u == passes ? first : 4u;
            register_exchange(lr, ns_log2, next, lb, in_group, t);
        } else if (!inverse) {
            // The product: register r holds the line's frequency t + r M / 16, the pair's
            // frequency f0 + that << weight_log2. Then the conjugate, for the inverse.
            uint weight_log2;
            uint f0 = stage_frequency(pos0, weight_log2);
            [[unroll]] for (uint r = 0u; r < 16u; r++) {
                uint f = f0 + ((t + (r << (reg_log2 - 4u))) << weight_log2);
                vec2 k = line_live ? filter_bin(h, f) : vec2(0.0);
                rp[r] = conj_c(cmul(rp[r], k));
            }
        }
        ns_log2 += lr;
    }

    // The last inverse pass holds point j + r M / R in register g R + r: the conjugate of the
    // result. Its real part is segment a's output, its imaginary part segment b's.
#if defined(TMP_F16)
    // Half spectra: one tile per line (region B, by the line's index), scaled by its maximum.
    uint he = 0u;
    if (!to_output) {
        uint m = 0u;
        [[unroll]] for (uint i = 0u; i < 16u; i++) {
            m = max(m, half_magnitude(rp[i]));
        }
        m = segment_max(line_live ? m : 0u, reg_log2 - 4u, pc.lines_log2 + reg_log2 - 4u);
        he = half_scale_exponent(m);
        if (line_live && t == 0u) {
            tmp16[half_region_b(total_pairs) + line] = half_unscale_bits(he);
        }
    }
#endif
    [[unroll]] for (uint i = 0u; i < 16u; i++) {
        uint p = register_output_position(i, first, t);
        if (to_output) {
            store_output_at(has_a, base_a, start_a, outputs_a, p, rp[i].x);
            store_output_at(has_b, base_b, start_b, outputs_b, p, -rp[i].y);
        } else if (line_live) {
#if defined(TMP_F16)
            tmp16[pair_base + pos0 + p] = half_pack(conj_c(rp[i]), he);
#else
            tmp[pair_base + pos0 + p] = conj_c(rp[i]);
#endif
        }
    }
}
#endif
#endif // REGISTER_RADIX

// Column passes: the position within its pair of element e of line `line` (2^pair_lines_log2
// lines per pair, numbered column-fastest): the line is column r of block blk of the pair, its
// elements M_{s+1} = 2^stride_log2 apart in a block of M_s = 2^block_log2 points.
uint column_position(uint line, uint e, uint pair_lines_log2, uint stride_log2, uint block_log2) {
    uint within = line & ((1u << pair_lines_log2) - 1u);
    uint r = within & ((1u << stride_log2) - 1u);
    return ((within >> stride_log2) << block_log2) + (e << stride_log2) + r;
}

#if defined(PASS_GATHER)
// Backward: the adjoint result of segment (b, block j) of channel h at position p (from tmp).
float segment_gradient(uint b, uint h, uint j, uint p) {
    uint seg = b * pc.blocks + j;
    vec2 v = tmp[(h * pc.pairs + (seg >> 1)) * (1u << pc.log2n) + p];
    return (seg & 1u) == 0u ? v.x : v.y;
}
#endif

void main() {
    uint group = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
    uint first_line = group << pc.lines_log2;
    if (first_line >= pc.total_lines) {
        return; // uniform over the workgroup: no barrier is skipped by part of it
    }
    uint m_log2 = pc.line_log2;
    uint m = 1u << m_log2;
    uint points = m << pc.lines_log2;
    uint n = 1u << pc.log2n;
    // Lines per pair: N / M.
    uint pair_lines_log2 = pc.log2n - m_log2;
#if defined(COOP)
    coop_init(); // published by the barrier after the loads
#endif

#if defined(PASS_FUSED)
    // Lines are contiguous blocks of M points of a pair's N.
    for (uint i = gl_LocalInvocationIndex; i < points; i += gl_WorkGroupSize.x) {
        uint line = first_line + (i >> m_log2);
        vec2 v = vec2(0.0);
        if (line < pc.total_lines) {
            uint pair = line >> pair_lines_log2;
            uint pos = ((line & ((1u << pair_lines_log2) - 1u)) << m_log2) + (i & (m - 1u));
            if ((pc.flags & FLAG_SRC_INPUT) != 0u) {
                uint h = udiv(pair, pc.pairs);
                uint q = pair - h * pc.pairs;
                v = vec2(segment_value(2u * q, h, pos), segment_value(2u * q + 1u, h, pos));
            } else {
                v = tmp[pair * n + pos];
            }
        }
        s[SIDX(i)] = v;
    }
    memoryBarrierShared();
    barrier();
    // Forward only (FLAG_NO_INVERSE): the spectrum is stored as it is, for a later pass.
    // (No early return: every invocation reaches every barrier in one program order.)
    bool forward_only = (pc.flags & FLAG_NO_INVERSE) != 0u;
    bool no_forward = (pc.flags & FLAG_NO_FORWARD) != 0u;
    // MIDDLE: the forward's finest round, the product and the inverse's finest round as one.
    // The line DFTs on the register-radix passes where they fit (then without the middle round).
    bool reg = register_lines_fit(m_log2, pc.lines_log2);
    uint middle = MIDDLE != 0u && !reg && !forward_only && !no_forward ? finest_round_log2(m_log2)
                                                                       : 0u;
    if (!no_forward) {
        if (reg) {
            register_lines(m_log2, pc.lines_log2, false);
        } else {
            fft_forward(m_log2, pc.lines_log2, middle);
        }
    }
    if (!forward_only) {
        if (middle == 1u) {
            MIDDLE_ROUND(1u)
        } else if (middle == 2u) {
            MIDDLE_ROUND(2u)
        } else if (middle == 3u) {
            MIDDLE_ROUND(3u)
        } else {
            // Pointwise product.
            for (uint i = gl_LocalInvocationIndex; i < points; i += gl_WorkGroupSize.x) {
                uint line = first_line + (i >> m_log2);
                if (line < pc.total_lines) {
                    uint pair = line >> pair_lines_log2;
                    uint pos = ((line & ((1u << pair_lines_log2) - 1u)) << m_log2) + (i & (m - 1u));
                    bool kept;
                    vec2 factor = frequency_factor(udiv(pair, pc.pairs), pair, pos,
                                                   position_frequency(pos, i & (m - 1u), m_log2),
                                                   kept);
                    s[SIDX(i)] = cmul(s[SIDX(i)], factor);
                }
            }
            memoryBarrierShared();
            barrier();
        }
        if (reg) {
            register_lines(m_log2, pc.lines_log2, true);
        } else {
            fft_inverse(m_log2, pc.lines_log2, middle);
        }
    }

    for (uint i = gl_LocalInvocationIndex; i < points; i += gl_WorkGroupSize.x) {
        uint line = first_line + (i >> m_log2);
        if (line < pc.total_lines) {
            uint pair = line >> pair_lines_log2;
            uint pos = ((line & ((1u << pair_lines_log2) - 1u)) << m_log2) + (i & (m - 1u));
            if (forward_only) {
                tmp[pair * n + pos] = s[SIDX(i)];
            } else {
                store_result(pair, pos, s[SIDX(i)]);
            }
        }
    }
#elif defined(PASS_REGISTER_FUSED)
    register_fused(first_line);
#elif defined(PASS_BACKWARD_FUSED)
    // The whole backward per ROW, for rows that are one overlap-save segment each (blocks == 1)
    // whose FFT fits one workgroup (CUDA's fftconv_backward_fused): one line of N points per
    // row (line_log2 = log2n), 2^lines_log2 rows (at most BACKWARD_ROWS) per workgroup, and when
    // gated a second line per row right after all of them (points .. 2 points). Per row:
    //   z = x + i s d, with x = pre * u, d = dy * post;
    //   Z = FFT(z); for each pair of frequencies f, g = N - f (g = f at 0 and N/2):
    //     X(f) = (Z(f) + conj Z(g)) / 2,  D(f) = (Z(f) - conj Z(g)) / (2 i s),
    //     T = D conj(X) kept / N (the taps' spectrum), G = D conj(K) (the adjoint's),
    //     P = X K (gated: the post-gate's, in the second line);
    //   W(f) = T(f) + i sigma G(f), W(g) = conj T(f) + i sigma conj G(f) (T, G Hermitian);
    //   IFFT(W) = taps + i sigma dseg: taps[t < K] per row (the taps sum adds the rows up),
    //     dx[t] = dseg[t] (+ dseg[N - (L - t)] where circular history wraps), du = pre dx,
    //     dpre = u dx (gated);  IFFT(P) = c: dpost = dy c (gated).
    // s and sigma are powers of two that bring d's largest finite magnitude in the row to x's
    // and G's to T's: two real signals share one complex transform, whose rounding is relative
    // to the larger, so without them a dy 2^-12 the size of u (or the reverse) loses 12 bits.
    if (pc.lines_log2 > 4u) {
        return; // uniform: 2^4 = BACKWARD_ROWS
    }
    bool gated = (pc.flags & FLAG_GATED) != 0u;
    // The per-row loops split the workgroup row-major: 2^lanes_log2 consecutive invocations per
    // row (consecutive positions: contiguous global accesses), each staying on rows
    // line0, line0 + W / lanes, ..., so a row's segment (integer divisions) and scales are
    // worked out once per invocation and row, and its maxima added once (shared atomics).
    uint rows = 1u << pc.lines_log2;
    uint w_log2 = uint(findMSB(gl_WorkGroupSize.x));
    uint lanes_log2 = w_log2 > pc.lines_log2 ? w_log2 - pc.lines_log2 : 0u;
    uint lanes = 1u << lanes_log2;
    uint lane = gl_LocalInvocationIndex & (lanes - 1u);
    uint line0 = gl_LocalInvocationIndex >> lanes_log2;
    uint line_step = gl_WorkGroupSize.x >> lanes_log2;
    for (uint i = gl_LocalInvocationIndex; i < 4u * BACKWARD_ROWS; i += gl_WorkGroupSize.x) {
        row_max[i] = 0u;
    }
    memoryBarrierShared();
    barrier();
    // Load z = x + i d (unscaled) and each row's largest |x| and |d| (slots 0, 1).
    uint dy_flags = pc.flags | FLAG_BODY_ONLY;
    for (uint line = line0; line < rows; line += line_step) {
        uint r = first_line + line;
        uint h, seg, row_base, start, outputs;
        bool valid = false;
        if (r < pc.total_lines) {
            backward_row(r, h, seg);
            valid = segment_row(seg, h, row_base, start, outputs);
        }
        uint ma = 0u;
        uint mb = 0u;
        for (uint pos = lane; pos < m; pos += lanes) {
            vec2 z = vec2(0.0);
            uint idx;
            if (valid && segment_element_at(row_base, start, outputs, pos, pc.flags, idx)) {
                z.x = TO_FLOAT(u_buf[idx]);
                if (gated) {
                    z.x *= TO_FLOAT(pre_buf[idx]);
                }
            }
            if (valid && segment_element_at(row_base, start, outputs, pos, dy_flags, idx)) {
                z.y = TO_FLOAT(dy_buf[idx]);
                if (gated) {
                    z.y *= TO_FLOAT(post_buf[idx]);
                }
            }
            ma = max(ma, finite_bits(z.x));
            mb = max(mb, finite_bits(z.y));
            s[SIDX((line << m_log2) + pos)] = z;
        }
        row_max_add(0u, line, ma, mb);
    }
    memoryBarrierShared();
    barrier();
    for (uint line = line0; line < rows; line += line_step) {
        float scale = pow2(row_scale_log2(0u, line)); // s
        for (uint pos = lane; pos < m; pos += lanes) {
            s[SIDX((line << m_log2) + pos)].y *= scale;
        }
    }
    memoryBarrierShared();
    barrier();
    if (register_lines_fit(m_log2, pc.lines_log2)) {
        register_lines(m_log2, pc.lines_log2, false);
    } else {
        fft_forward(m_log2, pc.lines_log2, 0u);
    }
    // Split Z into X and D per pair of frequencies (f, N - f): item f0 < N/2 of a row, where
    // f0 = 0 also takes N/2 (both their own mirror). T(f) goes to f's position and G(f) to g's
    // (a self-mirrored bin holds the real T + i G); each row's largest |T|, |G| to slots 2, 3.
    float inv_n = 1.0 / float(m);
    for (uint line = line0; line < rows; line += line_step) {
        uint r = first_line + line;
        bool valid = r < pc.total_lines;
        uint h = 0u;
        uint seg = 0u;
        if (valid) {
            backward_row(r, h, seg);
        }
        float half_inv_s = pow2(-1 - row_scale_log2(0u, line)); // 1 / (2 s)
        uint base = line << m_log2;
        uint ma = 0u;
        uint mb = 0u;
        for (uint f0 = lane; f0 < (m >> 1); f0 += lanes) {
            for (uint twice = 0u; twice < (f0 == 0u ? 2u : 1u); twice++) {
                uint f = twice == 0u ? f0 : (m >> 1);
                uint g = (m - f) & (m - 1u);
                uint ip = base + bit_reverse(f, m_log2);
                uint jp = base + bit_reverse(g, m_log2);
                vec2 zf = s[SIDX(ip)];
                vec2 zg = conj_c(s[SIDX(jp)]);
                vec2 x = 0.5 * (zf + zg);
                // (Z(f) - conj Z(g)) / (2 i s) = -i (Z(f) - conj Z(g)) / (2 s)
                vec2 d = vec2((zf.y - zg.y) * half_inv_s, -(zf.x - zg.x) * half_inv_s);
                vec2 t = bin_kept(f) ? cmul(d, vec2(x.x * inv_n, -x.y * inv_n)) : vec2(0.0);
                vec2 kf = valid ? filter_bin(h, f) : vec2(0.0);
                vec2 gk = cmul(d, conj_c(kf));
                vec2 pk = cmul(x, kf);
                // A non-finite G (a NaN or infinite filter) must not reach T through the shared
                // inverse transform: its bins go in as zeros, and slot 3 holds G_NONFINITE, so
                // that the row's dx comes out NaN (its taps do not depend on the filter).
                bool g_finite = !any(isnan(gk)) && !any(isinf(gk));
                if (!g_finite) {
                    gk = vec2(0.0);
                }
                if (ip == jp) {
                    // Its own mirror: T, G and P are real there (up to rounding).
                    t.y = 0.0;
                    gk.y = 0.0;
                    s[SIDX(ip)] = vec2(t.x, gk.x);
                    if (gated) {
                        s[SIDX(points + ip)] = vec2(pk.x, 0.0);
                    }
                } else {
                    s[SIDX(ip)] = t;
                    s[SIDX(jp)] = gk;
                    if (gated) {
                        s[SIDX(points + ip)] = pk;
                        s[SIDX(points + jp)] = conj_c(pk);
                    }
                }
                ma = max(ma, max(finite_bits(t.x), finite_bits(t.y)));
                mb = max(mb, g_finite ? max(finite_bits(gk.x), finite_bits(gk.y)) : G_NONFINITE);
            }
        }
        row_max_add(2u, line, ma, mb);
    }
    memoryBarrierShared();
    barrier();
    // W = T + i sigma G, sigma = 2^row_scale_log2(slots 2, 3).
    for (uint line = line0; line < rows; line += line_step) {
        float sigma = pow2(row_scale_log2(2u, line));
        uint base = line << m_log2;
        for (uint f = lane; f < (m >> 1); f += lanes) {
            uint ip = base + bit_reverse(f, m_log2);
            if (f == 0u) {
                uint iq = base + bit_reverse(m >> 1, m_log2);
                s[SIDX(ip)].y *= sigma;
                s[SIDX(iq)].y *= sigma;
            } else {
                uint jp = base + bit_reverse(m - f, m_log2);
                vec2 t = s[SIDX(ip)];
                vec2 gk = s[SIDX(jp)] * sigma;
                s[SIDX(ip)] = vec2(t.x - gk.y, t.y + gk.x);
                s[SIDX(jp)] = vec2(t.x + gk.y, gk.x - t.y);
            }
        }
    }
    memoryBarrierShared();
    barrier();
    // Both inverse transforms at once when gated: the P lines follow the W lines.
    uint inverse_lines_log2 = gated ? pc.lines_log2 + 1u : pc.lines_log2;
    if (register_lines_fit(m_log2, inverse_lines_log2)) {
        register_lines(m_log2, inverse_lines_log2, true);
    } else {
        fft_inverse(m_log2, inverse_lines_log2, 0u);
    }
    for (uint line = line0; line < rows; line += line_step) {
        uint r = first_line + line;
        if (r >= pc.total_lines) {
            continue;
        }
        uint h, seg, row_base, start, outputs;
        backward_row(r, h, seg);
        bool valid = segment_row(seg, h, row_base, start, outputs);
        float inv_sigma = row_max[3u * BACKWARD_ROWS + line] == G_NONFINITE
                              ? uintBitsToFloat(0x7fc00000u)
                              : pow2(-row_scale_log2(2u, line));
        uint base = line << m_log2;
        for (uint t = lane; t < m; t += lanes) {
            vec2 w = s[SIDX(base + t)];
            if (t < pc.taps_len) {
                taps[r * pc.taps_len + t] = w.x;
            }
            if (!valid || t >= pc.seq_len) {
                continue;
            }
            float dx = w.y;
            if ((pc.flags & FLAG_WRAPS) != 0u && pc.seq_len - t <= pc.history) {
                dx += s[SIDX(base + m - (pc.seq_len - t))].y;
            }
            dx *= inv_sigma;
            // One block per row: its first output is t = 0 (start = 0, outputs = L).
            uint idx = row_base + t;
            if (gated) {
                y_buf[idx] = FROM_FLOAT(dx * TO_FLOAT(pre_buf[idx]));
                y2_buf[idx] = FROM_FLOAT(dx * TO_FLOAT(u_buf[idx]));
                if (t < outputs) {
                    y3_buf[idx] = FROM_FLOAT(s[SIDX(points + base + t)].x * TO_FLOAT(dy_buf[idx]));
                }
            } else {
                y_buf[idx] = FROM_FLOAT(dx);
            }
        }
    }
#elif defined(PASS_TAPS_SUM)
    // A workgroup holds 2^lines_log2 consecutive outputs e = h * taps_len + s (its columns) and
    // splits each one's pairs over W / 2^lines_log2 rows: row r adds pairs r, r + rows, ... in
    // f32, then a shared-memory tree (barriers only) adds the rows; row 0 adds the sum into the
    // filter gradient at row channel_offset + h (f32; one invocation per element, so no atomics).
    // lines_log2 = log2 W: one invocation per output, pairs added in order.
    uint cols_log2 = pc.lines_log2;
    uint c = gl_LocalInvocationIndex & ((1u << cols_log2) - 1u);
    uint r = gl_LocalInvocationIndex >> cols_log2;
    uint rows = gl_WorkGroupSize.x >> cols_log2;
    uint e = first_line + c;
    float sum = 0.0;
    if (e < pc.total_lines) {
        uint h = e / pc.taps_len;
        uint base = h * pc.pairs * pc.taps_len + (e - h * pc.taps_len);
        for (uint p = r; p < pc.pairs; p += rows) {
            sum += taps[base + p * pc.taps_len];
        }
    }
    uint i = gl_LocalInvocationIndex;
    partial[i] = sum;
    for (uint span = rows >> 1; span > 0u; span >>= 1) {
        memoryBarrierShared();
        barrier();
        if (r < span) {
            partial[i] += partial[i + (span << cols_log2)];
        }
    }
    // (Row 0 reads back what it wrote last itself: no barrier needed.)
    if (r == 0u && e < pc.total_lines) {
        taps_sum[pc.channel_offset * pc.taps_len + e] += partial[c];
    }
#elif defined(PASS_GATHER)
    // One invocation per element (b, h, t) of the chunk: the input gradient dx is the sum of
    // the adjoint segment results (in tmp) at every position that read this input: its block's
    // body, the history of later blocks, and (circular) the wrapped history of the first ones.
    uint e = first_line + gl_LocalInvocationIndex;
    if (e >= pc.total_lines) {
        return;
    }
    uint t = e % pc.seq_len;
    uint row = e / pc.seq_len;
    uint h = row % pc.channels;
    uint b = row / pc.channels;
    uint j = t / pc.block_len;
    float dx = segment_gradient(b, h, j, t - j * pc.block_len);
    for (uint jj = j + 1u; jj < pc.blocks; jj++) {
        uint back = jj * pc.block_len - t;
        if (back > pc.history) {
            break;
        }
        dx += segment_gradient(b, h, jj, n - back);
    }
    if ((pc.flags & FLAG_WRAPS) != 0u) {
        for (uint jj = 0u; jj < pc.blocks; jj++) {
            uint start = jj * pc.block_len;
            if (start >= pc.history) {
                break;
            }
            uint back = start + pc.seq_len - t;
            if (back > start && back <= pc.history) {
                dx += segment_gradient(b, h, jj, n - back);
            }
        }
    }
    uint idx = pc.element_offset + (b * pc.batch_stride + h) * pc.seq_len + t;
    if ((pc.flags & FLAG_GATED) != 0u) {
        y_buf[idx] = FROM_FLOAT(dx * TO_FLOAT(pre_buf[idx]));
        y2_buf[idx] = FROM_FLOAT(dx * TO_FLOAT(u_buf[idx]));
    } else {
        y_buf[idx] = FROM_FLOAT(dx);
    }
#else
    // Columns of a global stage s: a line is column r of block blk of one pair; its elements
    // sit M_{s+1} apart. Consecutive lines are consecutive columns, so memory accesses of a
    // workgroup are contiguous runs; in shared memory line c holds points c * M ....
    uint stride_log2 = pc.stride_log2;
    uint block_log2 = m_log2 + stride_log2; // M_s
    uint lines_mask = (1u << pc.lines_log2) - 1u;
#if defined(TMP_F16)
    uint total_pairs = pc.total_lines >> pair_lines_log2;
#endif
    for (uint i = gl_LocalInvocationIndex; i < points; i += gl_WorkGroupSize.x) {
        uint c = i & lines_mask;
        uint e = i >> pc.lines_log2;  // element index n_s (forward) or position p (inverse)
        uint line = first_line + c;
        vec2 v = vec2(0.0);
        if (line < pc.total_lines) {
            uint pair = line >> pair_lines_log2;
            uint pos = column_position(line, e, pair_lines_log2, stride_log2, block_log2);
#if defined(PASS_COLUMNS_FORWARD)
            if ((pc.flags & FLAG_SRC_INPUT) != 0u) {
                uint h = udiv(pair, pc.pairs);
                uint q = pair - h * pc.pairs;
                v = vec2(segment_value(2u * q, h, pos), segment_value(2u * q + 1u, h, pos));
            } else {
#if defined(TMP_F16)
                // Not reached: half spectra run plans of one global stage, whose column pass
                // reads the inputs (the host checks).
                v = unpackHalf2x16(tmp16[pair * n + pos]);
#else
                v = tmp[pair * n + pos];
#endif
            }
#else
#if defined(TMP_F16)
            // Point e of the line is point r of the fused pass's line e (one global stage), whose
            // tile (region B) scaled it.
            uint b = half_region_b(total_pairs) + pair * m + e;
            vec2 stored = half_unpack(pair * n + pos, tmp16[b]);
#else
            vec2 stored = tmp[pair * n + pos];
#endif
            // Position e holds k_s = bitrev(e); undo the twiddle W_{M_s}^{r k_s}.
            uint r = line & ((1u << stride_log2) - 1u);
            v = cmul(stored, conj_c(root(r * bit_reverse(e, m_log2), block_log2)));
#endif
        }
        s[SIDX((c << m_log2) + e)] = v;
    }
    memoryBarrierShared();
    barrier();
    if (register_lines_fit(m_log2, pc.lines_log2)) {
#if defined(PASS_COLUMNS_FORWARD)
        register_lines(m_log2, pc.lines_log2, false);
#else
        register_lines(m_log2, pc.lines_log2, true);
#endif
    } else {
#if defined(PASS_COLUMNS_FORWARD)
        fft_forward(m_log2, pc.lines_log2, 0u);
#else
        fft_inverse(m_log2, pc.lines_log2, 0u);
#endif
    }
#if defined(PASS_COLUMNS_FORWARD) && defined(TMP_F16)
    // Half spectra: the workgroup's lines are one tile (region A, by the workgroup's index), so
    // its results wait in registers for the tile's maximum: at most 16 points per invocation
    // (the host checks that the shared points are at most 16 x the workgroup).
    vec2 held[16];
    uint hm = 0u;
    [[unroll]] for (uint k = 0u; k < 16u; k++) {
        uint i = gl_LocalInvocationIndex + k * gl_WorkGroupSize.x;
        held[k] = vec2(0.0);
        if (i < points && first_line + (i & lines_mask) < pc.total_lines) {
            uint c = i & lines_mask;
            uint e = i >> pc.lines_log2;
            uint r = (first_line + c) & ((1u << stride_log2) - 1u);
            // Position e holds k_s = bitrev(e): apply the twiddle W_{M_s}^{r k_s}.
            vec2 w = root(r * bit_reverse(e, m_log2), block_log2);
            held[k] = cmul(s[SIDX((c << m_log2) + e)], w);
            hm = max(hm, half_magnitude(held[k]));
        }
    }
    uint span_log2 = uint(min(findMSB(gl_WorkGroupSize.x), findMSB(SHARED_POINTS)));
    uint he = half_scale_exponent(segment_max(hm, span_log2, span_log2));
    if (gl_LocalInvocationIndex == 0u) {
        tmp16[half_region_a(total_pairs) + group] = half_unscale_bits(he);
    }
    [[unroll]] for (uint k = 0u; k < 16u; k++) {
        uint i = gl_LocalInvocationIndex + k * gl_WorkGroupSize.x;
        uint c = i & lines_mask;
        uint line = first_line + c;
        if (i < points && line < pc.total_lines) {
            uint e = i >> pc.lines_log2;
            uint pair = line >> pair_lines_log2;
            uint pos = column_position(line, e, pair_lines_log2, stride_log2, block_log2);
            tmp16[pair * n + pos] = half_pack(held[k], he);
        }
    }
#else
    for (uint i = gl_LocalInvocationIndex; i < points; i += gl_WorkGroupSize.x) {
        uint c = i & lines_mask;
        uint e = i >> pc.lines_log2;
        uint line = first_line + c;
        if (line < pc.total_lines) {
            uint pair = line >> pair_lines_log2;
            uint pos = column_position(line, e, pair_lines_log2, stride_log2, block_log2);
            vec2 v = s[SIDX((c << m_log2) + e)];
#if defined(PASS_COLUMNS_FORWARD)
            // Position e holds k_s = bitrev(e): apply the twiddle W_{M_s}^{r k_s}.
            uint r = line & ((1u << stride_log2) - 1u);
            tmp[pair * n + pos] = cmul(v, root(r * bit_reverse(e, m_log2), block_log2));
#else
            store_result(pair, pos, v);
#endif
        }
    }
#endif
#endif
}
