// Fused attention (flash-attention 2 style), BF16 in and out, fp32 softmax and accumulation, head size 128,
// non-causal, optional key mask. q, k, v, out are [B, L, H*128] (the op interface's layout, no transposes).
// Block: 8 warps, 128 queries (16 per warp); key/value tiles of 64 rows double-buffered in shared memory by
// cp.async, 16-byte chunks XOR-swizzled against bank conflicts; tensor cores via mma.sync m16n8k16.
#include "kiln_common.cuh"

#define ATT_BM 128
#define ATT_BN 64
#define ATT_D 128
#define ATT_THREADS 256

// Offset in 16-byte units of chunk `c` (0..15) of row `r` in a tile of 128-element rows.
__device__ __forceinline__ int swz(int r, int c) { return r * 16 + (c ^ (r & 7)); }

__device__ __forceinline__ void ldsm_x4(unsigned addr, unsigned &r0, unsigned &r1, unsigned &r2, unsigned &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned addr, unsigned &r0, unsigned &r1, unsigned &r2, unsigned &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

// Loads `rows` rows (row0.. of a sequence of `length`) of head h into a swizzled tile; rows past the end read as zeros.
__device__ __forceinline__ void load_tile(uint4 *tile, const bf16 *base, int row0, int rows, int length, int rowStride) {
    for (int i = threadIdx.x; i < rows * 16; i += ATT_THREADS) {
        const int r = i >> 4, c = i & 15;
        const int gr = row0 + r;
        const bf16 *src = base + (u64)min(gr, length - 1) * rowStride + c * 8;
        cp_async16(smem_addr(tile + swz(r, c)), src, gr < length ? 16 : 0);
    }
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS, 1)
attention_fwd_bf16_d128(bf16 *out, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *keyMask,
                        int queries, int keys, int heads, float scale) {
    extern __shared__ uint4 smem[];
    uint4 *Qs = smem;                          // ATT_BM x 16 chunks
    uint4 *Ks = Qs + ATT_BM * 16;              // 2 x ATT_BN x 16
    uint4 *Vs = Ks + 2 * ATT_BN * 16;          // 2 x ATT_BN x 16
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * ATT_BM;
    const int rowStride = heads * ATT_D;
    const bf16 *qBase = q + ((u64)b * queries * heads + h) * ATT_D;
    const bf16 *kBase = k + ((u64)b * keys * heads + h) * ATT_D;
    const bf16 *vBase = v + ((u64)b * keys * heads + h) * ATT_D;
    const bf16 *mask = keyMask ? keyMask + (u64)b * keys : nullptr;

    load_tile(Qs, qBase, q0, ATT_BM, queries, rowStride);
    load_tile(Ks, kBase, 0, ATT_BN, keys, rowStride);
    load_tile(Vs, vBase, 0, ATT_BN, keys, rowStride);
    cp_commit();

    const float sl2 = scale * 1.4426950408889634f;
    float mRow[2] = {-KILN_INF, -KILN_INF}, lRow[2] = {0.f, 0.f};
    float o[16][4];
#pragma unroll
    for (int j = 0; j < 16; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    unsigned qf[8][4];
    const int tiles = (keys + ATT_BN - 1) / ATT_BN;

    for (int t = 0; t < tiles; t++) {
        cp_wait<0>();
        __syncthreads();
        if (t == 0) {
#pragma unroll
            for (int kk = 0; kk < 8; kk++) {
                const int r = warp * 16 + (lane & 15), c = kk * 2 + (lane >> 4);
                ldsm_x4(smem_addr(Qs + swz(r, c)), qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3]);
            }
        }
        if (t + 1 < tiles) {
            const int nb = (t + 1) & 1;
            load_tile(Ks + nb * ATT_BN * 16, kBase, (t + 1) * ATT_BN, ATT_BN, keys, rowStride);
            load_tile(Vs + nb * ATT_BN * 16, vBase, (t + 1) * ATT_BN, ATT_BN, keys, rowStride);
            cp_commit();
        }
        const uint4 *Kt = Ks + (t & 1) * ATT_BN * 16;
        const uint4 *Vt = Vs + (t & 1) * ATT_BN * 16;

        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                const int r = j * 8 + (lane >> 4) * 8 + (lane & 7), c = kk * 2 + ((lane >> 3) & 1);
                unsigned b0, b1, b2, b3;
                ldsm_x4(smem_addr(Kt + swz(r, c)), b0, b1, b2, b3);
                mma16816(s[j], qf[kk], b0, b1);
                mma16816(s[j + 1], qf[kk], b2, b3);
            }
        }
        if (mask || (t + 1) * ATT_BN > keys) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int key = t * ATT_BN + j * 8 + (lane & 3) * 2 + e;
                    const bool keep = key < keys && (!mask || bf2f(mask[key]) != 0.f);
                    if (!keep) { s[j][e] = -KILN_INF; s[j][e + 2] = -KILN_INF; }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = -KILN_INF;
#pragma unroll
            for (int j = 0; j < 8; j++) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mNew = fmaxf(mRow[r], mx);
            const float base = mNew == -KILN_INF ? 0.f : mNew * sl2;
            const float alpha = exp2f(mRow[r] * sl2 - base);
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                s[j][2 * r] = exp2f(fmaf(s[j][2 * r], sl2, -base));
                s[j][2 * r + 1] = exp2f(fmaf(s[j][2 * r + 1], sl2, -base));
                sum += s[j][2 * r] + s[j][2 * r + 1];
            }
            lRow[r] = lRow[r] * alpha + sum;
            mRow[r] = mNew;
#pragma unroll
            for (int j = 0; j < 16; j++) { o[j][2 * r] *= alpha; o[j][2 * r + 1] *= alpha; }
        }
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            unsigned a[4];
            a[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
            a[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            a[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int j = 0; j < 16; j += 2) {
                const int r = kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7), c = j + (lane >> 4);
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(smem_addr(Vt + swz(r, c)), b0, b1, b2, b3);
                mma16816(o[j], a, b0, b1);
                mma16816(o[j + 1], a, b2, b3);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        lRow[r] += __shfl_xor_sync(0xffffffffu, lRow[r], 1);
        lRow[r] += __shfl_xor_sync(0xffffffffu, lRow[r], 2);
    }
    bf16 *oBase = out + ((u64)b * queries * heads + h) * ATT_D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = q0 + warp * 16 + (lane >> 2) + r * 8;
        if (row >= queries) continue;
        const float inv = lRow[r] > 0.f ? 1.f / lRow[r] : 0.f;
        bf16 *dst = oBase + (u64)row * rowStride + (lane & 3) * 2;
#pragma unroll
        for (int j = 0; j < 16; j++) *(unsigned *)(dst + j * 8) = pack_bf16x2(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
    }
}
