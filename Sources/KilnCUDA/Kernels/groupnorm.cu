// Group norm over NHWC [B, P, C] (P pixels) with per-channel affine and optional SiLU, in two launches: sums per
// (batch, group) accumulated in fp64 (stats), then one pass that turns them into each channel's y = a·x + b and
// normalizes (apply). Both run a fixed grid (blockIdx.y the batch item) sized to fill the GPU once, striding over
// pixels. On the 16-byte path (C a multiple of 8, blockDim a multiple of the C / 8 lanes of a pixel, aligned pointers)
// each thread owns one 8-channel chunk of every stride-th pixel, so what depends on the channel stays in registers.
#include "kiln_common.cuh"

// Pixels a thread loads before using any of them: with ~1024 threads an SM, 64 KiB in flight per SM, well over what
// covers HBM latency. Both kernels' launch bounds ask for one block of 1024 at least, which caps them at 64 registers
// and lets ptxas spend them all; with no minimum it trades registers for occupancy and serializes the loads.
#define GN_UNROLL 4

/// Calls `visit(pixel, chunk)` with the 16-byte chunk `lane` of pixels first, first + step, ... below `pixels` (of a
/// batch item `src` with `lanes` chunks a pixel), GN_UNROLL loads issued before the first visit. `Backward` walks
/// the same pixels from the end.
template <bool Backward, typename Visit>
__device__ __forceinline__ void for_pixel_chunks(const uint4 *src, u64 pixels, int lanes, int lane, u64 first, u64 step,
                                                 Visit visit) {
    u64 row = first;
    for (; row + (GN_UNROLL - 1) * step < pixels; row += GN_UNROLL * step) {
        u64 p[GN_UNROLL];
        uint4 chunk[GN_UNROLL];
#pragma unroll
        for (int u = 0; u < GN_UNROLL; u++) {
            p[u] = Backward ? pixels - 1 - (row + u * step) : row + u * step;
            chunk[u] = __ldg(src + p[u] * lanes + lane);
        }
#pragma unroll
        for (int u = 0; u < GN_UNROLL; u++) visit(p[u], chunk[u]);
    }
    for (; row < pixels; row += step) {
        const u64 p = Backward ? pixels - 1 - row : row;
        visit(p, __ldg(src + p * lanes + lane));
    }
}

/// The element index and channel where this thread starts the scalar paths' grid-stride walk over a batch item, and
/// how far its channel moves a step (the stride mod C), so the channel is tracked without division.
__device__ __forceinline__ u64 scalar_start(int channels, int &c, int &step) {
    const u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x;
    c = (int)(i % channels);
    step = (int)(((u64)gridDim.x * blockDim.x) % channels);
    return i;
}

/// stats [B, groups, 2] (sum, sum of squares) must be zeroed first. Grid (blocks, B), blockDim a multiple of C / 8
/// on the 16-byte path. Each thread sums in fp32 over its pixels, the block in shared memory, and the block adds
/// its sums to stats in fp64.
extern "C" __global__ void __launch_bounds__(1024, 1) groupnorm_stats_bf16(double *stats, const bf16 *x, u64 pixels,
                                                                         int channels, int groups) {
    __shared__ float partial[2 * 64];
    const int b = blockIdx.y;
    const int width = channels / groups;
    for (int i = threadIdx.x; i < 2 * groups; i += blockDim.x) partial[i] = 0.f;
    __syncthreads();
    const u64 n = pixels * channels;
    const bf16 *base = x + (u64)b * n;
    const int lanes = channels / 8;
    if (channels % 8 == 0 && blockDim.x % lanes == 0 && aligned16(base)) {
        const int lane = threadIdx.x % lanes, c0 = lane * 8, rows = blockDim.x / lanes;
        float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, q[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        // Backward: the producer of x wrote it front to back, so its tail is what L2 still holds; and apply, reading
        // front to back next, then finds the head in L2.
        for_pixel_chunks<true>(reinterpret_cast<const uint4 *>(base), pixels, lanes, lane,
                               (u64)blockIdx.x * rows + threadIdx.x / lanes, (u64)gridDim.x * rows, [&](u64, uint4 chunk) {
            float v[8];
            unpack8(chunk, v);
#pragma unroll
            for (int k = 0; k < 8; k++) { s[k] += v[k]; q[k] += v[k] * v[k]; }
        });
        float gs = 0.f, gq = 0.f;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            gs += s[k]; gq += q[k];
            const int g = (c0 + k) / width;
            if (k == 7 || (c0 + k + 1) / width != g) {
                atomicAdd(&partial[2 * g], gs); atomicAdd(&partial[2 * g + 1], gq);
                gs = 0.f; gq = 0.f;
            }
        }
    } else {
        int c, step, lastGroup = -1;
        float s = 0.f, q = 0.f;
        for (u64 i = scalar_start(channels, c, step); i < n; i += (u64)gridDim.x * blockDim.x) {
            const int g = c / width;
            if (g != lastGroup) {
                if (lastGroup >= 0) { atomicAdd(&partial[2 * lastGroup], s); atomicAdd(&partial[2 * lastGroup + 1], q); }
                s = 0.f; q = 0.f; lastGroup = g;
            }
            const float v = bf2f(base[i]);
            s += v; q += v * v;
            c += step;
            if (c >= channels) c -= channels;
        }
        if (lastGroup >= 0) { atomicAdd(&partial[2 * lastGroup], s); atomicAdd(&partial[2 * lastGroup + 1], q); }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 2 * groups; i += blockDim.x) atomicAdd(&stats[(u64)b * 2 * groups + i], (double)partial[i]);
}

/// Channel c's (a, b) of y = a·x + b from its group's mean and 1 / sqrt(var + eps).
__device__ __forceinline__ float2 channel_affine(int c, int width, const float *mean, const float *inverseDeviation,
                                                 const bf16 *weight, const bf16 *bias) {
    const int g = c / width;
    const float a = inverseDeviation[g] * bf2f(weight[c]);
    return make_float2(a, bf2f(bias[c]) - mean[g] * a);
}

/// out = x normalized with stats (from groupnorm_stats_bf16), times weight plus bias, then SiLU when `silu`. Grid and
/// block as for the stats kernel. Each block first turns its batch item's stats into per-group mean and
/// 1 / sqrt(var + eps) in shared memory.
extern "C" __global__ void __launch_bounds__(1024, 1) groupnorm_apply_bf16(bf16 *out, const bf16 *x, const double *stats,
                                                                         const bf16 *weight, const bf16 *bias, float eps,
                                                                         u64 pixels, int channels, int groups, int silu) {
    __shared__ float mean[64], inverseDeviation[64];
    const int b = blockIdx.y;
    const int width = channels / groups;
    const double count = (double)pixels * width;
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        const double m = stats[((u64)b * groups + g) * 2] / count;
        const double var = fmax(stats[((u64)b * groups + g) * 2 + 1] / count - m * m, 0.0);
        mean[g] = (float)m;
        inverseDeviation[g] = (float)(1.0 / sqrt(var + eps));
    }
    __syncthreads();
    const u64 n = pixels * channels;
    const bf16 *src = x + (u64)b * n;
    bf16 *dst = out + (u64)b * n;
    const int lanes = channels / 8;
    if (channels % 8 == 0 && blockDim.x % lanes == 0 && aligned16(src) && aligned16(dst)) {
        const int lane = threadIdx.x % lanes, c0 = lane * 8, rows = blockDim.x / lanes;
        float2 ab[8];
#pragma unroll
        for (int k = 0; k < 8; k++) ab[k] = channel_affine(c0 + k, width, mean, inverseDeviation, weight, bias);
        uint4 *dst4 = reinterpret_cast<uint4 *>(dst);
        for_pixel_chunks<false>(reinterpret_cast<const uint4 *>(src), pixels, lanes, lane,
                                (u64)blockIdx.x * rows + threadIdx.x / lanes, (u64)gridDim.x * rows, [&](u64 p, uint4 chunk) {
            float v[8];
            unpack8(chunk, v);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                v[k] = v[k] * ab[k].x + ab[k].y;
                if (silu) v[k] = silu_f(v[k]);
            }
            dst4[p * lanes + lane] = pack8(v);
        });
    } else {
        int c, step;
        for (u64 i = scalar_start(channels, c, step); i < n; i += (u64)gridDim.x * blockDim.x) {
            const float2 ab = channel_affine(c, width, mean, inverseDeviation, weight, bias);
            float v = bf2f(src[i]) * ab.x + ab.y;
            if (silu) v = silu_f(v);
            dst[i] = f2bf(v);
            c += step;
            if (c >= channels) c -= channels;
        }
    }
}
