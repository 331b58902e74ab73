// Row normalizations over the last dimension (fp32 statistics), and FP8 quantization per row.
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

// adaLN rows held in registers: each thread keeps up to ROW_CHUNKS 8-element chunks, so x is read once (16-byte loads).
#define ROW_CHUNKS 4

/// Whether a row of `channels` fits the register path of a block.
__device__ __forceinline__ bool row_in_registers(int channels, const void *x) {
    return channels % 8 == 0 && channels / 8 <= ROW_CHUNKS * (int)blockDim.x && aligned16(x);
}

// Per-chunk pieces of the row kernels, on 8 packed bf16 values held in registers.
__device__ __forceinline__ float chunk_sum(uint4 v) {
    float f[8], s = 0.f;
    unpack8(v, f);
#pragma unroll
    for (int k = 0; k < 8; k++) s += f[k];
    return s;
}

__device__ __forceinline__ float chunk_squared_deviation(uint4 v, float mean) {
    float f[8], s = 0.f;
    unpack8(v, f);
#pragma unroll
    for (int k = 0; k < 8; k++) { const float d = f[k] - mean; s += d * d; }
    return s;
}

__device__ __forceinline__ float chunk_amax(uint4 v, float amax) {
    float f[8];
    unpack8(v, f);
#pragma unroll
    for (int k = 0; k < 8; k++) amax = fmaxf(amax, fabsf(f[k]));
    return amax;
}

__device__ __forceinline__ uint2 chunk_e4m3(uint4 v, float r) {
    float f[8];
    unpack8(v, f);
    return pack8_e4m3(f, r);
}

/// (x - mean) * inv * (1 + scale) + shift for the chunk at element i of the scale and shift rows, rounded to bf16.
__device__ __forceinline__ uint4 chunk_modulated(uint4 v, float mean, float inv, const bf16 *sc, const bf16 *sh, u64 i, int channels,
                                                 bool vec) {
    float f[8], a[8], b[8];
    unpack8(v, f);
    load8(sc, i, channels, vec, a);
    load8(sh, i, channels, vec, b);
#pragma unroll
    for (int k = 0; k < 8; k++) f[k] = (f[k] - mean) * inv * (1.f + a[k]) + b[k];
    return pack8(f);
}

/// One row held in the block's registers (the thread's chunks, packed bf16) as e4m3 with its scale amax / 448
/// (8-byte stores).
__device__ __forceinline__ void quantize_held_row(fp8e4m3 *o, float *rowScale, u64 row, const uint4 v[ROW_CHUNKS], int channels,
                                                  float *scratch) {
    float amax = 0.f;
#pragma unroll
    for (int j = 0; j < ROW_CHUNKS; j++)
        if (threadIdx.x + j * blockDim.x < channels / 8) amax = chunk_amax(v[j], amax);
    const float s = fmaxf(block_max(amax, scratch), 1e-12f) / 448.f, r = 1.f / s;
    if (threadIdx.x == 0) rowScale[row] = s;
#pragma unroll
    for (int j = 0; j < ROW_CHUNKS; j++) {
        const int c8 = threadIdx.x + j * blockDim.x;
        if (c8 < channels / 8) *reinterpret_cast<uint2 *>(o + 8 * c8) = chunk_e4m3(v[j], r);
    }
}

/// layerNorm(x) * (1 + scale) + shift for the thread's chunks of one row, rounded to bf16 as the BF16 path stores it.
/// Chunks stay packed bf16 in registers (half the registers of floats: more rows in flight per SM).
__device__ __forceinline__ void modulated_row(uint4 v[ROW_CHUNKS], const bf16 *xr, const bf16 *sh, const bf16 *sc,
                                             int channels, float eps, float *scratch) {
    const int chunks = channels / 8;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < ROW_CHUNKS; j++) {
        const int c8 = threadIdx.x + j * blockDim.x;
        if (c8 < chunks) {
            v[j] = *reinterpret_cast<const uint4 *>(xr + 8 * c8);
            sum += chunk_sum(v[j]);
        }
    }
    const float mean = block_sum(sum, scratch) / channels;
    float sq = 0.f;
#pragma unroll
    for (int j = 0; j < ROW_CHUNKS; j++)
        if (threadIdx.x + j * blockDim.x < chunks) sq += chunk_squared_deviation(v[j], mean);
    const float inv = rsqrtf(block_sum(sq, scratch) / channels + eps);
    const bool vec = aligned16(sc) && aligned16(sh);
#pragma unroll
    for (int j = 0; j < ROW_CHUNKS; j++) {
        const int c8 = threadIdx.x + j * blockDim.x;
        if (c8 < chunks) v[j] = chunk_modulated(v[j], mean, inv, sc, sh, 8 * c8, channels, vec);
    }
}

// adaLN rows of up to 32 x 8 x WARP_ROW_CHUNKS channels (FLUX's 3072) in one warp: no block barriers, and many rows in
// flight per SM (a block per 3072-wide row spent most of its time in three barrier-separated reductions).
#define WARP_ROW_CHUNKS 12

/// layerNorm(x) * (1 + scale) + shift for one row, the warp's lanes holding chunks lane, lane + 32, ... (`per` each,
/// packed bf16), rounded to bf16 as the BF16 path stores it.
__device__ __forceinline__ void warp_modulated_row(uint4 v[WARP_ROW_CHUNKS], const bf16 *xr, const bf16 *sh, const bf16 *sc,
                                                  int channels, int per, float eps) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < WARP_ROW_CHUNKS; j++)
        if (j < per) v[j] = *reinterpret_cast<const uint4 *>(xr + 8 * (lane + 32 * j));
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < WARP_ROW_CHUNKS; j++)
        if (j < per) sum += chunk_sum(v[j]);
    const float mean = warp_sum(sum) / channels;
    float sq = 0.f;
#pragma unroll
    for (int j = 0; j < WARP_ROW_CHUNKS; j++)
        if (j < per) sq += chunk_squared_deviation(v[j], mean);
    const float inv = rsqrtf(warp_sum(sq) / channels + eps);
#pragma unroll
    for (int j = 0; j < WARP_ROW_CHUNKS; j++)
        if (j < per) v[j] = chunk_modulated(v[j], mean, inv, sc, sh, 8 * (lane + 32 * j), channels, true);
}

/// One adaLN input of `layernorm_modulate_warp`: x [B, rows / B, C] with shift and scale [B, C], and its output (BF16,
/// or FP8 e4m3 with one fp32 scale per row where rowScale is non-null). All fields are 8 bytes, matching
/// `AdaLNRowsArgument` on the Swift side field for field.
struct AdaLNRows {
    void *out;
    float *rowScale;
    const bf16 *x;
    const bf16 *shift;
    const bf16 *scale;
    u64 rows;
    u64 rowsPerBatch;
};

/// Row `row` of adaLN input s, by one warp.
__device__ __forceinline__ void modulate_warp_row(const AdaLNRows &s, u64 row, float eps, int channels) {
    const int lane = threadIdx.x & 31, per = channels / 256;
    const u64 b = row / s.rowsPerBatch;
    uint4 v[WARP_ROW_CHUNKS];
    warp_modulated_row(v, s.x + row * channels, s.shift + b * channels, s.scale + b * channels, channels, per, eps);
    if (!s.rowScale) {
        bf16 *o = (bf16 *)s.out + row * channels;
#pragma unroll
        for (int j = 0; j < WARP_ROW_CHUNKS; j++) if (j < per) *reinterpret_cast<uint4 *>(o + 8 * (lane + 32 * j)) = v[j];
        return;
    }
    float amax = 0.f;
#pragma unroll
    for (int j = 0; j < WARP_ROW_CHUNKS; j++)
        if (j < per) amax = chunk_amax(v[j], amax);
    const float sc = fmaxf(warp_max(amax), 1e-12f) / 448.f, r = 1.f / sc;
    if (lane == 0) s.rowScale[row] = sc;
    fp8e4m3 *o = (fp8e4m3 *)s.out + row * channels;
#pragma unroll
    for (int j = 0; j < WARP_ROW_CHUNKS; j++)
        if (j < per) *reinterpret_cast<uint2 *>(o + 8 * (lane + 32 * j)) = chunk_e4m3(v[j], r);
}

/// adaLN with one warp per row, for C a multiple of 256 up to 256 x WARP_ROW_CHUNKS and 16-byte aligned rows, of one
/// input or two (b.rows = 0: one) in one launch: FLUX's text rows, too few to fill the GPU alone, ride along with the
/// image's.
extern "C" __global__ void layernorm_modulate_warp(AdaLNRows a, AdaLNRows b, float eps, int channels) {
    const u64 row = blockIdx.x * (u64)(blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= a.rows + b.rows) return;
    // Field by field (one inlined row body; two would cost registers, a selected reference a stack copy).
    const bool first = row < a.rows;
    const AdaLNRows s = {first ? a.out : b.out, first ? a.rowScale : b.rowScale, first ? a.x : b.x, first ? a.shift : b.shift,
                         first ? a.scale : b.scale, first ? a.rows : b.rows, first ? a.rowsPerBatch : b.rowsPerBatch};
    modulate_warp_row(s, first ? row : row - a.rows, eps, channels);
}

/// adaLN: layerNorm(x) * (1 + scale) + shift, x [B, rows, C], shift/scale [B, C], for rows the warp kernel does not
/// take: a block per row (just enough warps, at most 256 threads), statistics in fp32.
extern "C" __global__ void __launch_bounds__(256) layernorm_modulate_bf16(bf16 *out, const bf16 *x, const bf16 *shift, const bf16 *scale,
                                                   float eps, u64 rowsPerBatch, int channels) {
    __shared__ float scratch[32];
    const u64 row = blockIdx.x;
    const u64 b = row / rowsPerBatch;
    const bf16 *xr = x + row * channels;
    const bf16 *sh = shift + b * channels, *sc = scale + b * channels;
    bf16 *o = out + row * channels;
    if (row_in_registers(channels, x) && aligned16(out)) {
        uint4 v[ROW_CHUNKS];
        modulated_row(v, xr, sh, sc, channels, eps, scratch);
#pragma unroll
        for (int j = 0; j < ROW_CHUNKS; j++) {
            const int c8 = threadIdx.x + j * blockDim.x;
            if (c8 < channels / 8) *reinterpret_cast<uint4 *>(o + 8 * c8) = v[j];
        }
        return;
    }
    float mean, inv;
    block_row_moments(xr, channels, eps, scratch, mean, inv);
    for (int c = threadIdx.x; c < channels; c += blockDim.x)
        o[c] = f2bf((bf2f(xr[c]) - mean) * inv * (1.f + bf2f(sc[c])) + bf2f(sh[c]));
}

/// The same, emitting FP8 e4m3 with one fp32 scale per row (amax / 448), for an FP8 GEMM next.
extern "C" __global__ void __launch_bounds__(256) layernorm_modulate_fp8(fp8e4m3 *out, float *rowScale, const bf16 *x, const bf16 *shift,
                                                  const bf16 *scale, float eps, u64 rowsPerBatch, int channels) {
    __shared__ float scratch[32];
    extern __shared__ float values[];  // channels floats (the scalar path)
    const u64 row = blockIdx.x;
    const u64 b = row / rowsPerBatch;
    const bf16 *xr = x + row * channels;
    const bf16 *sh = shift + b * channels, *sc = scale + b * channels;
    fp8e4m3 *o = out + row * channels;
    if (row_in_registers(channels, x) && ((u64)out & 7) == 0) {
        uint4 v[ROW_CHUNKS];
        modulated_row(v, xr, sh, sc, channels, eps, scratch);
        quantize_held_row(o, rowScale, row, v, channels, scratch);
        return;
    }
    float mean, inv;
    block_row_moments(xr, channels, eps, scratch, mean, inv);
    float amax = 0.f;
    for (int c = threadIdx.x; c < channels; c += blockDim.x) {
        float v = bf2f(f2bf((bf2f(xr[c]) - mean) * inv * (1.f + bf2f(sc[c])) + bf2f(sh[c])));
        values[c] = v;
        amax = fmaxf(amax, fabsf(v));
    }
    const float s = fmaxf(block_max(amax, scratch), 1e-12f) / 448.f;
    const float r = 1.f / s;
    if (threadIdx.x == 0) rowScale[row] = s;
    for (int c = 2 * threadIdx.x; c + 1 < channels; c += 2 * blockDim.x)
        *(unsigned short *)(o + c) = pack_e4m3x2(values[c] * r, values[c + 1] * r);
}

/// Per-row dynamic FP8 quantization of a bf16 matrix [rows, C] (C even): e4m3 values and fp32 scales (amax / 448).
/// Used for activations before an FP8 GEMM and for weights (per output channel) at load. One block per row; where C is
/// a multiple of 8, the rows are aligned and each thread's share fits ROW_CHUNKS chunks, the row is read once into
/// registers (16-byte loads), else twice.
extern "C" __global__ void __launch_bounds__(1024) quantize_rows_fp8(fp8e4m3 *out, float *rowScale, const bf16 *x, int channels) {
    __shared__ float scratch[32];
    const u64 row = blockIdx.x;
    const bf16 *xr = x + row * channels;
    fp8e4m3 *o = out + row * channels;
    if (row_in_registers(channels, x) && ((u64)out & 7) == 0) {
        uint4 v[ROW_CHUNKS];
#pragma unroll
        for (int j = 0; j < ROW_CHUNKS; j++) {
            const int c8 = threadIdx.x + j * blockDim.x;
            if (c8 < channels / 8) v[j] = *reinterpret_cast<const uint4 *>(xr + 8 * c8);
        }
        quantize_held_row(o, rowScale, row, v, channels, scratch);
        return;
    }
    float amax = 0.f;
    for (int c = threadIdx.x; c < channels; c += blockDim.x) amax = fmaxf(amax, fabsf(bf2f(xr[c])));
    const float s = fmaxf(block_max(amax, scratch), 1e-12f) / 448.f;
    const float r = 1.f / s;
    if (threadIdx.x == 0) rowScale[row] = s;
    for (int c = 2 * threadIdx.x; c + 1 < channels; c += 2 * blockDim.x)
        *(unsigned short *)(o + c) = pack_e4m3x2(bf2f(xr[c]) * r, bf2f(xr[c + 1]) * r);
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
