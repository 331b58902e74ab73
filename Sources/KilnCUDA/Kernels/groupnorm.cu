// Group norm over NHWC [B, P, C] (P pixels) with per-channel affine and optional SiLU, in two passes:
// partial sums per (batch, group) accumulated in fp64, then an elementwise apply.
#include "kiln_common.cuh"

/// stats [B, groups, 2] (sum, sum of squares) must be zeroed first. Grid (chunks, B); each block covers a run of pixels.
extern "C" __global__ void groupnorm_stats_bf16(double *stats, const bf16 *x, u64 pixels, int channels, int groups,
                                                u64 pixelsPerBlock) {
    __shared__ float partial[2 * 64];
    const int b = blockIdx.y;
    const int width = channels / groups;
    for (int i = threadIdx.x; i < 2 * groups; i += blockDim.x) partial[i] = 0.f;
    __syncthreads();
    const u64 p0 = blockIdx.x * pixelsPerBlock;
    const u64 p1 = min(pixels, p0 + pixelsPerBlock);
    const bf16 *base = x + (u64)b * pixels * channels;
    // Each thread walks channels c = threadIdx.x mod C at a fixed channel, so its group is fixed when C divides blockDim.
    const u64 n = (p1 - p0) * channels;
    float s = 0.f, q = 0.f;
    int lastGroup = -1;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) {
        const int c = (int)((p0 * channels + i) % channels);
        const int g = c / width;
        if (g != lastGroup) {
            if (lastGroup >= 0) { atomicAdd(&partial[2 * lastGroup], s); atomicAdd(&partial[2 * lastGroup + 1], q); }
            s = 0.f; q = 0.f; lastGroup = g;
        }
        const float v = bf2f(base[p0 * channels + i]);
        s += v; q += v * v;
    }
    if (lastGroup >= 0) { atomicAdd(&partial[2 * lastGroup], s); atomicAdd(&partial[2 * lastGroup + 1], q); }
    __syncthreads();
    for (int i = threadIdx.x; i < 2 * groups; i += blockDim.x) atomicAdd(&stats[(u64)b * 2 * groups + i], (double)partial[i]);
}

extern "C" __global__ void groupnorm_apply_bf16(bf16 *out, const bf16 *x, const double *stats, const bf16 *weight,
                                                const bf16 *bias, float eps, u64 pixels, int channels, int groups,
                                                int silu, u64 n) {
    const int width = channels / groups;
    const double count = (double)pixels * width;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const int c = (int)(i % channels);
        const u64 b = i / (pixels * channels);
        const int g = c / width;
        const double sum = stats[(b * groups + g) * 2], sq = stats[(b * groups + g) * 2 + 1];
        const double mean = sum / count;
        const double var = fmax(sq / count - mean * mean, 0.0);
        const float inv = (float)(1.0 / sqrt(var + eps));
        float v = (bf2f(x[i]) - (float)mean) * inv * bf2f(weight[c]) + bf2f(bias[c]);
        if (silu) v = silu_f(v);
        out[i] = f2bf(v);
    }
}
