// Pieces of attention computed with GEMMs (any head size, key masks): row softmax of fp32 scores, and the
// transpose of one head of V so that P·V is a GEMM of the X·Wᵀ form.
#include "kiln_common.cuh"

/// p[r, :] = softmax(scale * s[r, :] + bias[r, :]) over `cols` keys, BF16 out; mask [cols] (0 = ignore that key) or
/// null; bias [rows, cols] (-inf masks) or null. One block of 256 threads per row.
extern "C" __global__ void __launch_bounds__(256) softmax_rows_f32_bf16(bf16 *p, const float *s, const bf16 *mask,
                                                                        const bf16 *bias, float scale, u64 rows, int cols) {
    __shared__ float scratch[32];
    const u64 r = blockIdx.x;
    if (r >= rows) return;
    float *sr = const_cast<float *>(s) + r * cols;
    const bf16 *br = bias ? bias + r * cols : nullptr;
    bf16 *pr = p + r * cols;
    // Scores are scaled (and biased) in place once; each thread rereads only its own columns below.
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sr[c] = sr[c] * scale + (br ? bf2f(br[c]) : 0.f);
    float mx = -KILN_INF;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        if (!mask || bf2f(mask[c]) != 0.f) mx = fmaxf(mx, sr[c]);
    mx = warp_max(mx);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -KILN_INF;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) mx = fmaxf(mx, scratch[w]);
    __syncthreads();
    const float base = mx == -KILN_INF ? 0.f : mx;
    float sum = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        if (!mask || bf2f(mask[c]) != 0.f) sum += __expf(sr[c] - base);
    sum = block_sum(sum, scratch);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        pr[c] = f2bf((!mask || bf2f(mask[c]) != 0.f) ? __expf(sr[c] - base) * inv : 0.f);
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
