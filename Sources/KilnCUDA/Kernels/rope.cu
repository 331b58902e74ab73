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
