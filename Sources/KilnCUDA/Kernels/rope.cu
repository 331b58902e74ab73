// Per-head RMS norm and rotary embedding, fused: one warp per (token, head) row of D = 32 * PER lanes' elements.
#include "kiln_common.cuh"

/// x: B·L tokens of H heads of D, `tokenStride` elements apart (H·D when packed; 3·H·D reading Q or K inside a fused
/// QKV projection); out: the same heads packed, into tokens outOffset ..< outOffset + L of each batch item's outLength
/// (a joint sequence of several streams). weight [D] or null (no norm); cos/sin [L, D] or null (no rotation).
/// Rotation of pairs (2i, 2i+1): out[2i] = x[2i] cos[2i] - x[2i+1] sin[2i]; out[2i+1] = x[2i+1] cos[2i+1] + x[2i] sin[2i+1].
extern "C" __global__ void norm_rope_bf16(bf16 *out, const bf16 *x, const bf16 *weight, const bf16 *cosTable,
                                          const bf16 *sinTable, float eps, u64 rows, int length, int heads, int dim,
                                          u64 tokenStride, int outLength, int outOffset) {
    const u64 row = blockIdx.x * (u64)(blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const u64 token = row / heads;
    const int h = (int)(row - token * heads);
    const int l = (int)(token % length);
    const u64 b = token / length;
    const bf16 *xr = x + token * tokenStride + (u64)h * dim;
    bf16 *o = out + ((b * outLength + outOffset + l) * heads + h) * (u64)dim;
    float inv = 1.f;
    if (weight) {
        float sq = 0.f;
        for (int c = lane; c < dim; c += 32) { float v = bf2f(xr[c]); sq += v * v; }
        inv = rsqrtf(warp_sum(sq) / dim + eps);
    }
    for (int c = 2 * lane; c + 1 < dim; c += 64) {
        float a = bf2f(xr[c]) * inv, b = bf2f(xr[c + 1]) * inv;
        if (weight) {
            a = bf2f(f2bf(a * bf2f(weight[c])));
            b = bf2f(f2bf(b * bf2f(weight[c + 1])));
        }
        if (cosTable) {
            const bf16 *ct = cosTable + (u64)l * dim, *st = sinTable + (u64)l * dim;
            float ra = a * bf2f(ct[c]) - b * bf2f(st[c]);
            float rb = b * bf2f(ct[c + 1]) + a * bf2f(st[c + 1]);
            a = ra; b = rb;
        }
        *(unsigned *)(o + c) = pack_bf16x2(a, b);
    }
}

/// RMS norm times weight (skipped when `weight` is null), rounded to bf16 as the unfused ops store it, then the
/// rotation of the two pairs a lane holds of a 128-wide head (`rotate` false: none), in place.
__device__ __forceinline__ void norm_rotate4(float x[4], const bf16 *weight, uint2 cs, uint2 sn, bool rotate, int lane, float eps) {
    if (weight) {
        const float inv = rsqrtf(warp_sum(x[0] * x[0] + x[1] * x[1] + x[2] * x[2] + x[3] * x[3]) / 128.f + eps);
        const uint2 w = *reinterpret_cast<const uint2 *>(weight + 4 * lane);
        const float wf[4] = {bf_lo(w.x), bf_hi(w.x), bf_lo(w.y), bf_hi(w.y)};
#pragma unroll
        for (int i = 0; i < 4; i++) x[i] = bf2f(f2bf(x[i] * inv * wf[i]));
    }
    if (rotate) {
        const float c[4] = {bf_lo(cs.x), bf_hi(cs.x), bf_lo(cs.y), bf_hi(cs.y)};
        const float s[4] = {bf_lo(sn.x), bf_hi(sn.x), bf_lo(sn.y), bf_hi(sn.y)};
        const float a = x[0] * c[0] - x[1] * s[0], b = x[1] * c[1] + x[0] * s[1];
        const float d = x[2] * c[2] - x[3] * s[2], e = x[3] * c[3] + x[2] * s[3];
        x[0] = a; x[1] = b; x[2] = d; x[3] = e;
    }
}

__device__ __forceinline__ void unpack4(uint2 r, float x[4]) { x[0] = bf_lo(r.x); x[1] = bf_hi(r.x); x[2] = bf_lo(r.y); x[3] = bf_hi(r.y); }
__device__ __forceinline__ uint2 pack4_bf16(const float x[4]) { return make_uint2(pack_bf16x2(x[0], x[1]), pack_bf16x2(x[2], x[3])); }

/// One stream of the joint attention inputs: its fused projection qkv [B, L, 3·H·128], Q and K norm weights [128],
/// rotary tables [L, 128] (null: none) and where its tokens go in the joint sequence. All fields are 8 bytes, matching
/// `AttentionStreamArgument` on the Swift side field for field.
struct AttentionStream {
    const bf16 *qkv;
    const bf16 *qWeight;
    const bf16 *kWeight;
    const bf16 *cosTable;
    const bf16 *sinTable;
    u64 tokens;  // B·L
    u64 length;  // L
    u64 offset;  // first joint token
};

/// What a lane reads of one (token, head) row of a stream with 128-wide heads (8 bytes each of Q, K, V from the fused
/// projection and of the rotary table's cos and sin; zeros where there is no table), and where its outputs go.
struct AttentionRowData {
    uint2 q, k, v, cs, sn;
    u64 dst;
};

__device__ __forceinline__ AttentionRowData load_attention_row(const AttentionStream &s, unsigned row, int heads, int outLength) {
    const int lane = threadIdx.x & 31;
    const u64 width = (u64)heads * 128;
    // 32-bit index arithmetic (64-bit division is a long instruction sequence): rows and tokens fit.
    const unsigned token = row / heads;
    const int h = (int)(row - token * heads);
    const unsigned b = token / (unsigned)s.length;
    const unsigned l = token - b * (unsigned)s.length;
    const bf16 *src = s.qkv + token * 3 * width + h * 128 + 4 * lane;
    AttentionRowData d;
    d.q = *reinterpret_cast<const uint2 *>(src);
    d.k = *reinterpret_cast<const uint2 *>(src + width);
    d.v = *reinterpret_cast<const uint2 *>(src + 2 * width);
    d.cs = d.sn = make_uint2(0, 0);
    if (s.cosTable) {
        d.cs = *reinterpret_cast<const uint2 *>(s.cosTable + (u64)l * 128 + 4 * lane);
        d.sn = *reinterpret_cast<const uint2 *>(s.sinTable + (u64)l * 128 + 4 * lane);
    }
    d.dst = (((u64)b * outLength + s.offset + l) * heads + h) * 128 + 4 * lane;
    return d;
}

/// Q and K of a loaded row normed and rotated (`rotate`: by the loaded table), then written into the joint tensors
/// (BF16, or e4m3 times rq / rk); V copied (BF16) or only its absolute maximum folded into `amax` (FP8).
template <bool FP8>
__device__ __forceinline__ float store_attention_row(void *q, void *k, bf16 *v, const AttentionRowData &d, const bf16 *qWeight,
                                                     const bf16 *kWeight, bool rotate, float eps, float rq, float rk, float amax) {
    const int lane = threadIdx.x & 31;
    float xq[4], xk[4], xv[4];
    unpack4(d.q, xq);
    unpack4(d.k, xk);
    norm_rotate4(xq, qWeight, d.cs, d.sn, rotate, lane, eps);
    norm_rotate4(xk, kWeight, d.cs, d.sn, rotate, lane, eps);
    if (FP8) {
        *reinterpret_cast<unsigned *>((fp8e4m3 *)q + d.dst) = pack4_e4m3(xq, rq);
        *reinterpret_cast<unsigned *>((fp8e4m3 *)k + d.dst) = pack4_e4m3(xk, rk);
        unpack4(d.v, xv);
        return fmaxf(amax, fmaxf(fmaxf(fabsf(xv[0]), fabsf(xv[1])), fmaxf(fabsf(xv[2]), fabsf(xv[3]))));
    }
    *reinterpret_cast<uint2 *>((bf16 *)q + d.dst) = pack4_bf16(xq);
    *reinterpret_cast<uint2 *>((bf16 *)k + d.dst) = pack4_bf16(xk);
    *reinterpret_cast<uint2 *>(v + d.dst) = d.v;
    return amax;
}

/// Joint attention inputs of one stream, BF16: a warp per (token, head).
extern "C" __global__ void attention_inputs_d128(bf16 *q, bf16 *k, bf16 *v, AttentionStream s, float eps, int heads, int outLength) {
    const unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row < s.tokens * heads)
        store_attention_row<false>(q, k, v, load_attention_row(s, row, heads, outLength), s.qWeight, s.kWeight, s.cosTable != nullptr,
                                   eps, 1.f, 1.f, 0.f);
}

/// Row `row` of the joint rows of two streams (s0's first), loaded from its stream: fields picked one by one (a
/// selected reference to a by-value parameter would copy both to the stack).
__device__ __forceinline__ AttentionRowData load_joint_row(const AttentionStream &s0, const AttentionStream &s1, unsigned row,
                                                           unsigned rows0, int heads, int outLength) {
    const bool first = row < rows0;
    const AttentionStream s = {first ? s0.qkv : s1.qkv, nullptr, nullptr, first ? s0.cosTable : s1.cosTable,
                               first ? s0.sinTable : s1.sinTable, 0, first ? s0.length : s1.length, first ? s0.offset : s1.offset};
    return load_attention_row(s, first ? row : row - rows0, heads, outLength);
}

/// The largest |w| of a 128-wide norm weight, over the warp (4 per lane).
__device__ __forceinline__ float norm_weight_amax(const bf16 *w) {
    float x[4];
    unpack4(*reinterpret_cast<const uint2 *>(w + 4 * (threadIdx.x & 31)), x);
    return warp_max(fmaxf(fmaxf(fabsf(x[0]), fabsf(x[1])), fmaxf(fabsf(x[2]), fabsf(x[3]))));
}

/// Joint FP8 attention inputs of up to two streams (s1.tokens = 0: one) in one launch, warps looping over the rows of
/// both. Q and K get per-tensor descales bound from the norm weights before any token is seen: an RMS-normed head has
/// every |x_i| <= sqrt(D), so |q_i| <= sqrt(D) max|w| (the rotation keeps pair norms; 2% margin for the bf16 rounding
/// of the weights' products and the tables). They are written as e4m3 with those scales, the descales into slots[0]
/// and slots[4]. V is only read, for its absolute maximum: each block's goes into partials[blockIdx.x], for
/// `quantize_v_fp8`, which quantizes V once the whole tensor's maximum is known (no zeroed accumulator to prepare).
extern "C" __global__ void __launch_bounds__(256, 4) attention_inputs_fp8_d128(fp8e4m3 *q, fp8e4m3 *k, float *slots, float *partials,
                                                                                AttentionStream s0, AttentionStream s1, float eps,
                                                                                int heads, int outLength) {
    float mq = norm_weight_amax(s0.qWeight), mk = norm_weight_amax(s0.kWeight);
    if (s1.tokens) { mq = fmaxf(mq, norm_weight_amax(s1.qWeight)); mk = fmaxf(mk, norm_weight_amax(s1.kWeight)); }
    const float bound = 1.02f * sqrtf(128.f) / 448.f;
    const float dq = fmaxf(mq, 1e-12f) * bound, dk = fmaxf(mk, 1e-12f) * bound;
    if (blockIdx.x == 0 && threadIdx.x == 0) { slots[0] = dq; slots[4] = dk; }
    const float rq = 1.f / dq, rk = 1.f / dk;
    const unsigned rows0 = s0.tokens * heads, rows = rows0 + s1.tokens * heads;
    const unsigned warps = gridDim.x * (blockDim.x >> 5);
    float amax = 0.f;
    // Two rows an iteration, both loaded before either is used: twice the bytes in flight of one.
    for (unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); row < rows; row += 2 * warps) {
        const unsigned next = row + warps;
        const AttentionRowData a = load_joint_row(s0, s1, row, rows0, heads, outLength);
        AttentionRowData b;
        if (next < rows) b = load_joint_row(s0, s1, next, rows0, heads, outLength);
        const bool firstA = row < rows0, firstB = next < rows0;
        amax = store_attention_row<true>(q, k, nullptr, a, firstA ? s0.qWeight : s1.qWeight, firstA ? s0.kWeight : s1.kWeight,
                                         (firstA ? s0.cosTable : s1.cosTable) != nullptr, eps, rq, rk, amax);
        if (next < rows)
            amax = store_attention_row<true>(q, k, nullptr, b, firstB ? s0.qWeight : s1.qWeight, firstB ? s0.kWeight : s1.kWeight,
                                             (firstB ? s0.cosTable : s1.cosTable) != nullptr, eps, rq, rk, amax);
    }
    __shared__ float scratch[32];
    amax = block_max(amax, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = amax;
}

/// Stream s's V (the last `width` columns of its qkv) as e4m3 times r into its tokens of the joint [B, outLength,
/// width], eight elements a thread and iteration (two 8-byte loads: qkv rows are 8-byte aligned).
__device__ __forceinline__ void quantize_stream_v(fp8e4m3 *out, const AttentionStream &s, float r, unsigned width, int outLength) {
    const unsigned chunks = width / 8, total = s.tokens * chunks, length = s.length;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const unsigned token = i / chunks, c = i - token * chunks;
        const unsigned b = token / length, l = token - b * length;
        const uint2 *src = reinterpret_cast<const uint2 *>(s.qkv + (u64)token * 3 * width + 2 * width + 8 * c);
        float x[8];
        unpack4(src[0], x);
        unpack4(src[1], x + 4);
        *reinterpret_cast<uint2 *>(out + (((u64)b * outLength + s.offset + l) * width + 8 * c)) = pack8_e4m3(x, r);
    }
}

/// The joint V of up to two streams as e4m3 scaled by 448 / amax, amax the largest of attention_inputs_fp8_d128's
/// `count` block maxima; descale[0] = amax / 448. Read straight from the projections: no BF16 copy of V. The streams
/// go one after the other (selecting a by-value parameter per element would put both in local memory).
extern "C" __global__ void quantize_v_fp8(fp8e4m3 *out, float *descale, const float *partials, int count, AttentionStream s0,
                                          AttentionStream s1, int width, int outLength) {
    __shared__ float scratch[32];
    float a = 0.f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) a = fmaxf(a, partials[i]);
    a = fmaxf(block_max(a, scratch), 1e-12f);
    const float r = 448.f / a;
    if (blockIdx.x == 0 && threadIdx.x == 0) descale[0] = a / 448.f;
    quantize_stream_v(out, s0, r, width, outLength);
    quantize_stream_v(out, s1, r, width, outLength);
}
