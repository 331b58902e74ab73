// Row normalizations over the last dimension: one warp per row (rows of any length), fp32 statistics.
#include "kiln_common.cuh"

/// Layer norm with optional affine weight/bias (null when absent).
extern "C" __global__ void layernorm_bf16(bf16 *out, const bf16 *x, const bf16 *weight, const bf16 *bias, float eps,
                                          u64 rows, int channels) {
    const u64 row = blockIdx.x * (u64)(blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const bf16 *xr = x + row * channels;
    float sum = 0.f;
    for (int c = lane; c < channels; c += 32) sum += bf2f(xr[c]);
    const float mean = warp_sum(sum) / channels;
    float sq = 0.f;
    for (int c = lane; c < channels; c += 32) { float d = bf2f(xr[c]) - mean; sq += d * d; }
    const float inv = rsqrtf(warp_sum(sq) / channels + eps);
    bf16 *o = out + row * channels;
    for (int c = lane; c < channels; c += 32) {
        float v = (bf2f(xr[c]) - mean) * inv;
        if (weight) v *= bf2f(weight[c]);
        if (bias) v += bf2f(bias[c]);
        o[c] = f2bf(v);
    }
}

/// RMS norm times weight.
extern "C" __global__ void rmsnorm_bf16(bf16 *out, const bf16 *x, const bf16 *weight, float eps, u64 rows, int channels) {
    const u64 row = blockIdx.x * (u64)(blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const bf16 *xr = x + row * channels;
    float sq = 0.f;
    for (int c = lane; c < channels; c += 32) { float v = bf2f(xr[c]); sq += v * v; }
    const float inv = rsqrtf(warp_sum(sq) / channels + eps);
    bf16 *o = out + row * channels;
    for (int c = lane; c < channels; c += 32) o[c] = f2bf(bf2f(xr[c]) * inv * bf2f(weight[c]));
}

/// Mean and 1/sqrt(variance + eps) of one bf16 row, the block's threads striding over it (two passes, fp32).
__device__ __forceinline__ void block_row_moments(const bf16 *xr, int channels, float eps, float *scratch, float &mean, float &inv) {
    float sum = 0.f;
    for (int c = threadIdx.x; c < channels; c += blockDim.x) sum += bf2f(xr[c]);
    mean = block_sum(sum, scratch) / channels;
    float sq = 0.f;
    for (int c = threadIdx.x; c < channels; c += blockDim.x) { float d = bf2f(xr[c]) - mean; sq += d * d; }
    inv = rsqrtf(block_sum(sq, scratch) / channels + eps);
}

/// adaLN: layerNorm(x) * (1 + scale) + shift, x [B, rows, C], shift/scale [B, C]. Block of 256 threads per row,
/// statistics in fp32.
extern "C" __global__ void __launch_bounds__(256) layernorm_modulate_bf16(bf16 *out, const bf16 *x, const bf16 *shift, const bf16 *scale,
                                                   float eps, u64 rowsPerBatch, int channels) {
    __shared__ float scratch[32];
    const u64 row = blockIdx.x;
    const u64 b = row / rowsPerBatch;
    const bf16 *xr = x + row * channels;
    const bf16 *sh = shift + b * channels, *sc = scale + b * channels;
    bf16 *o = out + row * channels;
    float mean, inv;
    block_row_moments(xr, channels, eps, scratch, mean, inv);
    for (int c = threadIdx.x; c < channels; c += blockDim.x)
        o[c] = f2bf((bf2f(xr[c]) - mean) * inv * (1.f + bf2f(sc[c])) + bf2f(sh[c]));
}

/// The same, emitting FP8 e4m3 with one fp32 scale per row (amax / 448), for an FP8 GEMM next.
extern "C" __global__ void __launch_bounds__(256) layernorm_modulate_fp8(fp8e4m3 *out, float *rowScale, const bf16 *x, const bf16 *shift,
                                                  const bf16 *scale, float eps, u64 rowsPerBatch, int channels) {
    __shared__ float scratch[32];
    extern __shared__ float values[];  // channels floats
    const u64 row = blockIdx.x;
    const u64 b = row / rowsPerBatch;
    const bf16 *xr = x + row * channels;
    const bf16 *sh = shift + b * channels, *sc = scale + b * channels;
    float mean, inv;
    block_row_moments(xr, channels, eps, scratch, mean, inv);
    float amax = 0.f;
    for (int c = threadIdx.x; c < channels; c += blockDim.x) {
        float v = bf2f(f2bf((bf2f(xr[c]) - mean) * inv * (1.f + bf2f(sc[c])) + bf2f(sh[c])));
        values[c] = v;
        amax = fmaxf(amax, fabsf(v));
    }
    __syncthreads();
    amax = warp_max(amax);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) amax = fmaxf(amax, scratch[w]);
    const float s = fmaxf(amax, 1e-12f) / 448.f;
    const float r = 1.f / s;
    if (threadIdx.x == 0) rowScale[row] = s;
    for (int c = 2 * threadIdx.x; c + 1 < channels; c += 2 * blockDim.x)
        *(unsigned short *)(out + row * channels + c) = pack_e4m3x2(values[c] * r, values[c + 1] * r);
}

/// Per-row dynamic FP8 quantization of a bf16 matrix [rows, C] (C even): e4m3 values and fp32 scales (amax / 448).
/// Used for activations before an FP8 GEMM and for weights (per output channel) at load. One warp per row, 16-byte
/// loads where C is a multiple of 8 and the rows are aligned.
extern "C" __global__ void quantize_rows_fp8(fp8e4m3 *out, float *rowScale, const bf16 *x, u64 rows, int channels) {
    const u64 row = blockIdx.x * (u64)(blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const bf16 *xr = x + row * channels;
    fp8e4m3 *outRow = out + row * channels;
    const bool vec = channels % 8 == 0 && aligned16(x) && ((u64)out & 7) == 0;
    float amax = 0.f;
    if (vec) {
        for (int c = 8 * lane; c < channels; c += 256) {
            float v[8];
            load8(xr, c, channels, true, v);
#pragma unroll
            for (int k = 0; k < 8; k++) amax = fmaxf(amax, fabsf(v[k]));
        }
    } else {
        for (int c = lane; c < channels; c += 32) amax = fmaxf(amax, fabsf(bf2f(xr[c])));
    }
    amax = warp_max(amax);
    const float s = fmaxf(amax, 1e-12f) / 448.f;
    const float r = 1.f / s;
    if (lane == 0) rowScale[row] = s;
    if (vec) {
        for (int c = 8 * lane; c < channels; c += 256) {
            float v[8];
            load8(xr, c, channels, true, v);
            const unsigned lo = pack_e4m3x2(v[0] * r, v[1] * r) | ((unsigned)pack_e4m3x2(v[2] * r, v[3] * r) << 16);
            const unsigned hi = pack_e4m3x2(v[4] * r, v[5] * r) | ((unsigned)pack_e4m3x2(v[6] * r, v[7] * r) << 16);
            *reinterpret_cast<uint2 *>(outRow + c) = make_uint2(lo, hi);
        }
    } else {
        for (int c = 2 * lane; c + 1 < channels; c += 64)
            *(unsigned short *)(outRow + c) = pack_e4m3x2(bf2f(xr[c]) * r, bf2f(xr[c + 1]) * r);
    }
}

/// The inverse, for GEMM shapes cuBLASLt runs only in BF16: out[r, c] = codes[r, c] · scale[r] (C even).
extern "C" __global__ void dequantize_rows_fp8(bf16 *out, const fp8e4m3 *codes, const float *rowScale, u64 rows, int channels) {
    const u64 pairs = rows * (u64)channels / 2;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < pairs; i += (u64)gridDim.x * blockDim.x) {
        unsigned c;
        const u64 row = divmod(2 * i, channels, c);
        float lo, hi;
        unpack_e4m3x2(*reinterpret_cast<const unsigned short *>(codes + 2 * i), lo, hi);
        const float s = rowScale[row];
        *reinterpret_cast<unsigned *>(out + 2 * i) = pack_bf16x2(lo * s, hi * s);
    }
}
