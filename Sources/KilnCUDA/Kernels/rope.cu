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
/// rotation of the two pairs a lane holds (cos/sin null: none).
__device__ __forceinline__ uint2 norm_rotate4(uint2 raw, const bf16 *weight, uint2 cs, uint2 sn, bool rotate, int lane, float eps) {
    float x[4] = {bf_lo(raw.x), bf_hi(raw.x), bf_lo(raw.y), bf_hi(raw.y)};
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
        return make_uint2(pack_bf16x2(x[0] * c[0] - x[1] * s[0], x[1] * c[1] + x[0] * s[1]),
                          pack_bf16x2(x[2] * c[2] - x[3] * s[2], x[3] * c[3] + x[2] * s[3]));
    }
    return make_uint2(pack_bf16x2(x[0], x[1]), pack_bf16x2(x[2], x[3]));
}

/// Joint attention inputs of one stream with 128-wide heads, in one pass: one warp per (token, head) reads that head's
/// Q, K and V from the fused projection qkv [B, L, 3·H·128] (8 bytes per lane), norms and rotates Q and K, and writes all
/// three into tokens outOffset ..< outOffset + L of each batch item's outLength joint tokens. 32-bit index
/// arithmetic only (rows < 2^32).
extern "C" __global__ void attention_inputs_d128(bf16 *q, bf16 *k, bf16 *v, const bf16 *qkv, const bf16 *qWeight,
                                                 const bf16 *kWeight, const bf16 *cosTable, const bf16 *sinTable, float eps,
                                                 unsigned rows, int length, int heads, int outLength, int outOffset) {
    const unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    const unsigned token = row / heads;
    const int h = (int)(row - token * heads);
    const unsigned b = token / length;
    const int l = (int)(token - b * length);
    const u64 width = (u64)heads * 128;
    const bf16 *src = qkv + token * 3 * width + h * 128 + 4 * lane;
    const u64 dst = ((u64)(b * outLength + outOffset + l) * heads + h) * 128 + 4 * lane;
    const uint2 rq = *reinterpret_cast<const uint2 *>(src);
    const uint2 rk = *reinterpret_cast<const uint2 *>(src + width);
    *reinterpret_cast<uint2 *>(v + dst) = *reinterpret_cast<const uint2 *>(src + 2 * width);
    const bool rotate = cosTable != nullptr;
    uint2 cs = make_uint2(0, 0), sn = make_uint2(0, 0);
    if (rotate) {
        cs = *reinterpret_cast<const uint2 *>(cosTable + (u64)l * 128 + 4 * lane);
        sn = *reinterpret_cast<const uint2 *>(sinTable + (u64)l * 128 + 4 * lane);
    }
    *reinterpret_cast<uint2 *>(q + dst) = norm_rotate4(rq, qWeight, cs, sn, rotate, lane, eps);
    *reinterpret_cast<uint2 *>(k + dst) = norm_rotate4(rk, kWeight, cs, sn, rotate, lane, eps);
}
