// Group norm over NHWC [B, P, C] (P pixels) with per-channel affine and optional SiLU, in three launches: partial sums
// per (batch, group) accumulated in fp64 (stats), per-(batch, channel) coefficients a, b with y = a·x + b
// (coefficients), and one pass over 8-element chunks (apply).
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
    const bf16 *base = x + ((u64)b * pixels + p0) * channels;
    const u64 n = (p1 - p0) * channels;
    const int lanes = channels / 8;
    if (aligned16(x) && channels % 8 == 0 && blockDim.x % lanes == 0) {
        // Each thread sums one fixed 8-channel chunk over every (blockDim / lanes)-th pixel of the run.
        const int c0 = (threadIdx.x % lanes) * 8;
        float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, q[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (u64 i = (u64)(threadIdx.x / lanes) * channels + c0; i < n; i += (u64)(blockDim.x / lanes) * channels) {
            float v[8];
            load8(base, i, n, true, v);
#pragma unroll
            for (int k = 0; k < 8; k++) { s[k] += v[k]; q[k] += v[k] * v[k]; }
        }
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
        // Thread t sees channels t, t + blockDim, ... (mod C), tracked without division.
        const int step = blockDim.x % channels;
        int c = threadIdx.x % channels, lastGroup = -1;
        float s = 0.f, q = 0.f;
        for (u64 i = threadIdx.x; i < n; i += blockDim.x) {
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

/// coefficients [B, C] of (a, b): a = weight / sqrt(var + eps), b = bias - mean·a. Grid (B).
extern "C" __global__ void groupnorm_coefficients(float2 *coefficients, const double *stats, const bf16 *weight,
                                                  const bf16 *bias, float eps, u64 pixels, int channels, int groups) {
    const int b = blockIdx.x;
    const int width = channels / groups;
    const double count = (double)pixels * width;
    for (int c = threadIdx.x; c < channels; c += blockDim.x) {
        const int g = c / width;
        const double mean = stats[((u64)b * groups + g) * 2] / count;
        const double var = fmax(stats[((u64)b * groups + g) * 2 + 1] / count - mean * mean, 0.0);
        const float a = (float)(1.0 / sqrt(var + eps)) * bf2f(weight[c]);
        coefficients[(u64)b * channels + c] = make_float2(a, bf2f(bias[c]) - (float)mean * a);
    }
}

extern "C" __global__ void groupnorm_apply_bf16(bf16 *out, const bf16 *x, const float2 *coefficients, u64 pixels,
                                                int channels, int silu, u64 n) {
    const bool vec = aligned16(out) && aligned16(x) && channels % 8 == 0;
    FOR_CHUNKS(i, n) {
        float v[8];
        load8(x, i, n, vec, v);
        float2 ab[8];
        if (vec && i + KILN_CHUNK <= n) {
            // A whole chunk sits in one pixel: its 8 coefficient pairs are 64 contiguous bytes.
            const float4 *c4 = reinterpret_cast<const float4 *>(coefficients + vector_index(i, channels, pixels, 1));
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const float4 c = c4[k];
                ab[2 * k] = make_float2(c.x, c.y);
                ab[2 * k + 1] = make_float2(c.z, c.w);
            }
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) ab[k] = i + k < n ? coefficients[vector_index(i + k, channels, pixels, 1)] : make_float2(0.f, 0.f);
        }
#pragma unroll
        for (int k = 0; k < 8; k++) {
            v[k] = v[k] * ab[k].x + ab[k].y;
            if (silu) v[k] = silu_f(v[k]);
        }
        store8(out, i, n, vec, v);
    }
}
