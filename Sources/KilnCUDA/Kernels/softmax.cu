// Pieces of attention computed with GEMMs (any head size, key masks): row softmax of fp32 scores, and the
// transpose of V so that P·V is a GEMM of the X·Wᵀ form.
#include "kiln_common.cuh"

#define SOFTMAX_THREADS 256
#define SOFTMAX_HELD 16      // float4s each thread keeps: rows of up to 256 x 16 x 4 = 16384 columns stay in registers
#define WARP_SOFTMAX_HELD 8  // float4s each lane keeps in the warp-per-row kernel: rows of up to 32 x 8 x 4 = 1024 columns

// The scaled, biased score of column c (-inf where the key is masked).
__device__ __forceinline__ float softmax_score(const bf16 *mask, const bf16 *br, float scale, int c, float v) {
    if (mask && bf2f(mask[c]) == 0.f) return -KILN_INF;
    return v * scale + (br ? bf2f(br[c]) : 0.f);
}

// One row of `cols` (a multiple of 4, at most THREADS x HELD x 4) read once into registers by THREADS threads (`t` is
// this thread's index among them) and written once; `reduce_max` / `reduce_sum` combine over those threads.
template <int THREADS, int HELD, typename Max, typename Sum>
__device__ __forceinline__ void softmax_row_held(bf16 *pr, const float *sr, const bf16 *mask, const bf16 *br, float scale,
                                                 int cols, int t, Max reduce_max, Sum reduce_sum) {
    float4 held[HELD];
    float mx = -KILN_INF;
#pragma unroll
    for (int j = 0; j < HELD; j++) {
        const int c = (j * THREADS + t) * 4;
        float4 v = make_float4(-KILN_INF, -KILN_INF, -KILN_INF, -KILN_INF);
        if (c < cols) {
            v = *reinterpret_cast<const float4 *>(sr + c);
            v = make_float4(softmax_score(mask, br, scale, c, v.x), softmax_score(mask, br, scale, c + 1, v.y),
                            softmax_score(mask, br, scale, c + 2, v.z), softmax_score(mask, br, scale, c + 3, v.w));
        }
        held[j] = v;
        mx = fmaxf(mx, fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
    }
    mx = reduce_max(mx);
    float sum = 0.f;
    const float base = mx == -KILN_INF ? 0.f : mx;
#pragma unroll
    for (int j = 0; j < HELD; j++) {
        float4 &v = held[j];
        v = make_float4(__expf(v.x - base), __expf(v.y - base), __expf(v.z - base), __expf(v.w - base));
        sum += (v.x + v.y) + (v.z + v.w);
    }
    sum = reduce_sum(sum);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
#pragma unroll
    for (int j = 0; j < HELD; j++) {
        const int c = (j * THREADS + t) * 4;
        if (c < cols)
            *reinterpret_cast<uint2 *>(pr + c) = make_uint2(pack_bf16x2(held[j].x * inv, held[j].y * inv),
                                                            pack_bf16x2(held[j].z * inv, held[j].w * inv));
    }
}

/// p[r, :] = softmax(scale * s[r, :] + bias[r % bias_rows, :]) over `cols` keys, BF16 out; mask [cols] (0 = ignore that
/// key) or null; bias [bias_rows, cols] (-inf masks; repeated over heads that share it) or null. One block of 256
/// threads per row. Rows of at most 16384 columns (a multiple of 4) are read once into registers and written once;
/// longer rows are read three times.
extern "C" __global__ void __launch_bounds__(SOFTMAX_THREADS) softmax_rows_f32_bf16(bf16 *p, const float *s, const bf16 *mask,
                                                                                    const bf16 *bias, u64 bias_rows, float scale,
                                                                                    u64 rows, int cols) {
    __shared__ float scratch[32];
    const u64 r = blockIdx.x;
    if (r >= rows) return;
    const float *sr = s + r * cols;
    const bf16 *br = bias ? bias + (r % bias_rows) * cols : nullptr;
    bf16 *pr = p + r * cols;
    if (cols % 4 == 0 && cols <= SOFTMAX_THREADS * SOFTMAX_HELD * 4) {
        softmax_row_held<SOFTMAX_THREADS, SOFTMAX_HELD>(pr, sr, mask, br, scale, cols, threadIdx.x,
                                                        [&](float v) { return block_max(v, scratch); },
                                                        [&](float v) { return block_sum(v, scratch); });
        return;
    }
    float mx = -KILN_INF, sum = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) mx = fmaxf(mx, softmax_score(mask, br, scale, c, sr[c]));
    mx = block_max(mx, scratch);
    const float base = mx == -KILN_INF ? 0.f : mx;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sum += __expf(softmax_score(mask, br, scale, c, sr[c]) - base);
    sum = block_sum(sum, scratch);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) pr[c] = f2bf(__expf(softmax_score(mask, br, scale, c, sr[c]) - base) * inv);
}

/// The same for short rows (a multiple of 4, at most 1024 columns: T5's and CLIP's sequences): one warp per row, 8 rows
/// per block of 256 threads, no block-wide synchronization.
extern "C" __global__ void __launch_bounds__(256) softmax_rows_warp_f32_bf16(bf16 *p, const float *s, const bf16 *mask,
                                                                             const bf16 *bias, u64 bias_rows, float scale,
                                                                             u64 rows, int cols) {
    const u64 r = (u64)blockIdx.x * 8 + (threadIdx.x >> 5);
    if (r >= rows) return;
    softmax_row_held<32, WARP_SOFTMAX_HELD>(p + r * cols, s + r * cols, mask, bias ? bias + (r % bias_rows) * cols : nullptr, scale,
                                            cols, threadIdx.x & 31, [](float v) { return warp_max(v); },
                                            [](float v) { return warp_sum(v); });
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
