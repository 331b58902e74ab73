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

/// Joint attention inputs of one stream with 128-wide heads, in one pass: a warp per (token, head) reads that head's
/// Q, K and V from the fused projection qkv [B, L, 3·H·128] (8 bytes per lane), norms and rotates Q and K, and writes
/// all three into tokens outOffset ..< outOffset + L of each batch item's outLength joint tokens. With FP8 the warps
/// loop over rows (few blocks, so few atomics): Q and K are written as e4m3 with the descales in slots[0], slots[4];
/// V is not written, only its absolute maximum gathered into slots[8] (as float bits): `quantize_v_fp8` reads it from
/// qkv again once the whole tensor's maximum is known.
template <bool FP8>
__device__ __forceinline__ void attention_inputs(void *q, void *k, bf16 *v, const bf16 *qkv, const bf16 *qWeight,
                                                 const bf16 *kWeight, const bf16 *cosTable, const bf16 *sinTable, float eps,
                                                 unsigned rows, int length, int heads, int outLength, int outOffset, float *slots) {
    const int lane = threadIdx.x & 31;
    const u64 width = (u64)heads * 128;
    const bool rotate = cosTable != nullptr;
    float rq = 1.f, rk = 1.f, amax = 0.f;
    if (FP8) { rq = 1.f / slots[0]; rk = 1.f / slots[4]; }
    const unsigned warps = gridDim.x * (blockDim.x >> 5);
    for (unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); row < rows; row += FP8 ? warps : rows) {
        const unsigned token = row / heads;
        const int h = (int)(row - token * heads);
        const unsigned b = token / length;
        const int l = (int)(token - b * length);
        const bf16 *src = qkv + token * 3 * width + h * 128 + 4 * lane;
        const u64 dst = ((u64)(b * outLength + outOffset + l) * heads + h) * 128 + 4 * lane;
        float xq[4], xk[4], xv[4];
        unpack4(*reinterpret_cast<const uint2 *>(src), xq);
        unpack4(*reinterpret_cast<const uint2 *>(src + width), xk);
        const uint2 rv = *reinterpret_cast<const uint2 *>(src + 2 * width);
        if (!FP8) *reinterpret_cast<uint2 *>(v + dst) = rv;
        uint2 cs = make_uint2(0, 0), sn = make_uint2(0, 0);
        if (rotate) {
            cs = *reinterpret_cast<const uint2 *>(cosTable + (u64)l * 128 + 4 * lane);
            sn = *reinterpret_cast<const uint2 *>(sinTable + (u64)l * 128 + 4 * lane);
        }
        norm_rotate4(xq, qWeight, cs, sn, rotate, lane, eps);
        norm_rotate4(xk, kWeight, cs, sn, rotate, lane, eps);
        if (FP8) {
            *reinterpret_cast<unsigned *>((fp8e4m3 *)q + dst) = pack4_e4m3(xq, rq);
            *reinterpret_cast<unsigned *>((fp8e4m3 *)k + dst) = pack4_e4m3(xk, rk);
            unpack4(rv, xv);
            amax = fmaxf(amax, fmaxf(fmaxf(fabsf(xv[0]), fabsf(xv[1])), fmaxf(fabsf(xv[2]), fabsf(xv[3]))));
        } else {
            *reinterpret_cast<uint2 *>((bf16 *)q + dst) = pack4_bf16(xq);
            *reinterpret_cast<uint2 *>((bf16 *)k + dst) = pack4_bf16(xk);
        }
    }
    if (FP8) {
        __shared__ float scratch[32];
        amax = block_max(amax, scratch);
        // Non-negative floats order as their bit patterns do.
        if (threadIdx.x == 0) atomicMax(reinterpret_cast<unsigned *>(slots + 8), __float_as_uint(amax));
    }
}

extern "C" __global__ void attention_inputs_d128(bf16 *q, bf16 *k, bf16 *v, const bf16 *qkv, const bf16 *qWeight,
                                                 const bf16 *kWeight, const bf16 *cosTable, const bf16 *sinTable, float eps,
                                                 unsigned rows, int length, int heads, int outLength, int outOffset) {
    attention_inputs<false>(q, k, v, qkv, qWeight, kWeight, cosTable, sinTable, eps, rows, length, heads, outLength, outOffset, nullptr);
}

extern "C" __global__ void attention_inputs_fp8_d128(fp8e4m3 *q, fp8e4m3 *k, const bf16 *qkv, const bf16 *qWeight,
                                                     const bf16 *kWeight, const bf16 *cosTable, const bf16 *sinTable, float eps,
                                                     unsigned rows, int length, int heads, int outLength, int outOffset, float *slots) {
    attention_inputs<true>(q, k, nullptr, qkv, qWeight, kWeight, cosTable, sinTable, eps, rows, length, heads, outLength, outOffset, slots);
}

/// One stream's V, the last `width` columns of qkv [B, L, 3·width], as e4m3 scaled by 448 / amax[0] (the whole joint
/// tensor's maximum, gathered by attention_inputs_fp8_d128 over every stream), into tokens outOffset ..< outOffset + L
/// of the joint [B, outLength, width]; descale[0] = amax / 448. Read straight from the projection: no BF16 copy of V.
/// Eight elements a thread (two 8-byte loads: qkv rows are 8-byte aligned), width a multiple of 8.
extern "C" __global__ void quantize_v_fp8(fp8e4m3 *out, float *descale, const bf16 *qkv, const float *amax, unsigned rows,
                                          int length, int width, int outLength, int outOffset) {
    const float a = fmaxf(amax[0], 1e-12f), r = 448.f / a;
    if (blockIdx.x == 0 && threadIdx.x == 0) descale[0] = a / 448.f;
    const unsigned chunks = width / 8;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < rows * chunks; i += gridDim.x * blockDim.x) {
        const unsigned token = i / chunks, c = i - token * chunks;
        const unsigned b = token / length, l = token - b * length;
        const uint2 *src = reinterpret_cast<const uint2 *>(qkv + (u64)token * 3 * width + 2 * width + 8 * c);
        float x[8];
        unpack4(src[0], x);
        unpack4(src[1], x + 4);
        *reinterpret_cast<uint2 *>(out + ((u64)b * outLength + outOffset + l) * width + 8 * c) = pack8_e4m3(x, r);
    }
}

/// Per-tensor FP8 descales of the joint Q and K from their norm weights (up to two streams; null for none), before
/// any token is seen: an RMS-normed head has every |x_i| <= sqrt(D), so |q_i| <= sqrt(D) max|w| (the rotation keeps
/// pair norms; 2% margin for bf16 rounding of the weights' products and the tables). slots, 16 bytes apart: descale Q,
/// descale K, amax V (zeroed here), descale V. One block of 128 threads.
extern "C" __global__ void attention_input_scales(float *slots, const bf16 *qWeight0, const bf16 *kWeight0,
                                                  const bf16 *qWeight1, const bf16 *kWeight1) {
    __shared__ float scratch[32];
    const int c = threadIdx.x;
    float mq = fabsf(bf2f(qWeight0[c])), mk = fabsf(bf2f(kWeight0[c]));
    if (qWeight1) { mq = fmaxf(mq, fabsf(bf2f(qWeight1[c]))); mk = fmaxf(mk, fabsf(bf2f(kWeight1[c]))); }
    mq = block_max(mq, scratch);
    mk = block_max(mk, scratch);
    const float bound = 1.02f * sqrtf(128.f) / 448.f;
    if (c == 0) {
        slots[0] = fmaxf(mq, 1e-12f) * bound;
        slots[4] = fmaxf(mk, 1e-12f) * bound;
        slots[8] = 0.f;
    }
}
