// Pieces of attention computed with GEMMs (any head size, key masks): row softmax of fp32 scores, and the
// transpose of V so that P·V is a GEMM of the X·Wᵀ form.
#include "kiln_common.cuh"

#define SOFTMAX_THREADS 256
#define SOFTMAX_HELD 16  // float4s each thread keeps: rows of up to 256 x 16 x 4 = 16384 columns stay in registers

/// p[r, :] = softmax(scale * s[r, :] + bias[r % bias_rows, :]) over `cols` keys, BF16 out; mask [cols] (0 = ignore that
/// key) or null; bias [bias_rows, cols] (-inf masks; repeated over heads that share it) or null. One block of 256 threads per row. Rows of at most 16384 columns
/// (a multiple of 4) are read once into registers and written once; longer rows are read three times.
extern "C" __global__ void __launch_bounds__(SOFTMAX_THREADS) softmax_rows_f32_bf16(bf16 *p, const float *s, const bf16 *mask,
                                                                                    const bf16 *bias, u64 bias_rows, float scale,
                                                                                    u64 rows, int cols) {
    __shared__ float scratch[32];
    const u64 r = blockIdx.x;
    if (r >= rows) return;
    const float *sr = s + r * cols;
    const bf16 *br = bias ? bias + (r % bias_rows) * cols : nullptr;
    bf16 *pr = p + r * cols;
    auto score = [&](int c, float v) {
        if (mask && bf2f(mask[c]) == 0.f) return -KILN_INF;
        return v * scale + (br ? bf2f(br[c]) : 0.f);
    };
    if (cols % 4 == 0 && cols <= SOFTMAX_THREADS * SOFTMAX_HELD * 4) {
        float4 held[SOFTMAX_HELD];
        float mx = -KILN_INF;
#pragma unroll
        for (int j = 0; j < SOFTMAX_HELD; j++) {
            const int c = (j * SOFTMAX_THREADS + threadIdx.x) * 4;
            float4 v = make_float4(-KILN_INF, -KILN_INF, -KILN_INF, -KILN_INF);
            if (c < cols) {
                v = *reinterpret_cast<const float4 *>(sr + c);
                v = make_float4(score(c, v.x), score(c + 1, v.y), score(c + 2, v.z), score(c + 3, v.w));
            }
            held[j] = v;
            mx = fmaxf(mx, fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
        }
        mx = block_max(mx, scratch);
        float sum = 0.f;
        const float base = mx == -KILN_INF ? 0.f : mx;
#pragma unroll
        for (int j = 0; j < SOFTMAX_HELD; j++) {
            float4 &v = held[j];
            v = make_float4(__expf(v.x - base), __expf(v.y - base), __expf(v.z - base), __expf(v.w - base));
            sum += (v.x + v.y) + (v.z + v.w);
        }
        sum = block_sum(sum, scratch);
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
#pragma unroll
        for (int j = 0; j < SOFTMAX_HELD; j++) {
            const int c = (j * SOFTMAX_THREADS + threadIdx.x) * 4;
            if (c < cols)
                *reinterpret_cast<uint2 *>(pr + c) = make_uint2(pack_bf16x2(held[j].x * inv, held[j].y * inv),
                                                                pack_bf16x2(held[j].z * inv, held[j].w * inv));
        }
        return;
    }
    float mx = -KILN_INF, sum = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) mx = fmaxf(mx, score(c, sr[c]));
    mx = block_max(mx, scratch);
    const float base = mx == -KILN_INF ? 0.f : mx;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sum += __expf(score(c, sr[c]) - base);
    sum = block_sum(sum, scratch);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) pr[c] = f2bf(__expf(score(c, sr[c]) - base) * inv);
}

/// out [cols, rows] = transpose of x [rows, cols] read with row stride `stride` (a head inside a wider row).
extern "C" __global__ void transpose_bf16(bf16 *out, const bf16 *x, u64 rows, int cols, u64 stride) {
    __shared__ bf16 tile[32][33];
    const u64 r0 = (u64)blockIdx.y * 32, c0 = (u64)blockIdx.x * 32;
    for (int i = threadIdx.y; i < 32; i += blockDim.y) {
        const u64 r = r0 + i, c = c0 + threadIdx.x;
        if (r < rows && c < (u64)cols) tile[i][threadIdx.x] = x[r * stride + c];
    }
    __syncthreads();
    for (int i = threadIdx.y; i < 32; i += blockDim.y) {
        const u64 c = c0 + i, r = r0 + threadIdx.x;
        if (r < rows && c < (u64)cols) out[c * rows + r] = tile[threadIdx.x][i];
    }
}
