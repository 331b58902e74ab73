// Direct NHWC convolution for few output channels (at most 8: the VAE decoder's last, 128 -> 3), stride 1, 3x3 or
// 1x1, BF16 in and out, fp32 accumulation, bias in the epilogue, the output written at its exact width. cuDNN wants
// such outputs padded to 8 channels and then takes about four times as long as reading the input; here the work is
// an implicit GEMM on the tensor cores (mma m16n8k16) whose N of 8 holds every output channel at once, so the
// products cost little next to reading the input, which each warp does once for its tile and halo.
//
// A warp computes 16 output columns x CONV_ROWS rows, going through the input in 32-channel slices. For each slice
// it keeps the weights of every tap in registers (lane (g, t): output channel g, channels 8t..8t+7) and streams the
// input rows the tile needs, 16 + KS - 1 columns each, through a ring of CONV_STAGES row buffers in shared memory
// filled by cp.async (zeros outside the image), so several rows are in flight per warp without holding registers.
// Each row feeds the accumulators of the up to KS output rows it touches, one per vertical tap; a horizontal tap is
// a read of the row shifted by one column.
//
// The reduction over channels is permuted, identically for both operands, so that a lane's 16-byte chunk is its
// part of two mma steps: step s takes channels 8t + 4s .. 8t + 4s + 3 where the fragment layout has k = 2t, 2t + 1,
// 2t + 8 and 2t + 9.
#include "kiln_common.cuh"

// Output rows per warp: CONV_ROWS + KS - 1 input rows are read for CONV_ROWS of output (1.25x at 3x3; cp.async.cg
// reads through L2 only, where the halo rows and columns that neighbouring warps also read mostly still are), and
// the accumulators take 4 x CONV_ROWS registers.
#define CONV_ROWS 8
// Warps per block, side by side: a block covers 16 x CONV_WARPS columns.
#define CONV_WARPS 4
// Row buffers per warp: CONV_STAGES - 1 rows (1152 bytes each at 3x3) in flight while one is used.
#define CONV_STAGES 4
// 16-byte chunks in a row buffer: 16 + 2 columns x 4 chunks of 8 channels.
#define CONV_ROW_CHUNKS ((16 + 2) * 4)

template <int KS>
__device__ __forceinline__ void conv_few_outputs(uint4 *ring, bf16 *out, const bf16 *x, const bf16 *weight, const bf16 *bias,
                                                 int height, int width, int channels, int outChannels, int outHeight,
                                                 int outWidth, int padTop, int padLeft) {
    constexpr int rowsIn = CONV_ROWS + KS - 1, rowChunks = (16 + KS - 1) * 4;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int ox0 = (blockIdx.x * CONV_WARPS + (threadIdx.x >> 5)) * 16, oy0 = blockIdx.y * CONV_ROWS;
    if (ox0 >= outWidth) return;  // a whole warp, and only warp-wide synchronization follows
    const bf16 *image = x + (u64)blockIdx.z * height * width * channels;
    const int steps = (channels + 31) / 32 * rowsIn;  // (slice, input row) pairs, slice-major
    // Fills the buffer of `step` (its row's columns from ox0 - padLeft, its slice's 32 channels).
    auto fill = [&](int step) {
        const int row = oy0 + step % rowsIn - padTop, c0 = step / rowsIn * 32;
        const unsigned buffer = smem_addr(ring + step % CONV_STAGES * CONV_ROW_CHUNKS);
        for (int i = lane; i < rowChunks; i += 32) {
            const int column = ox0 - padLeft + (i >> 2), channel = c0 + (i & 3) * 8;
            const bool inside = row >= 0 && row < height && column >= 0 && column < width && channel < channels;
            const bf16 *src = inside ? image + ((u64)row * width + column) * channels + channel : image;
            cp_async16(buffer + i * 16, src, inside ? 16 : 0);
        }
    };
    for (int s = 0; s < CONV_STAGES - 1; s++) {
        if (s < steps) fill(s);
        cp_commit();
    }
    float acc[CONV_ROWS][4];
#pragma unroll
    for (int r = 0; r < CONV_ROWS; r++) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = 0.f;
    int step = 0;
    for (int c0 = 0; c0 < channels; c0 += 32) {
        const int channel = c0 + 8 * t;
        uint4 w[KS][KS];
#pragma unroll
        for (int dy = 0; dy < KS; dy++)
#pragma unroll
            for (int dx = 0; dx < KS; dx++)
                w[dy][dx] = channel < channels && g < outChannels
                    ? __ldg(reinterpret_cast<const uint4 *>(weight + ((u64)(g * KS + dy) * KS + dx) * channels + channel))
                    : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
        for (int j = 0; j < rowsIn; j++, step++) {
            // The buffer refilled here was read in the previous step, which every lane finished (the __syncwarp
            // below); an empty group keeps the count of groups per step even at the end.
            if (step + CONV_STAGES - 1 < steps) fill(step + CONV_STAGES - 1);
            cp_commit();
            cp_wait<CONV_STAGES - 1>();
            __syncwarp();  // every lane's copies of this step's row are visible to all
            const uint4 *row = ring + step % CONV_STAGES * CONV_ROW_CHUNKS;
#pragma unroll
            for (int dx = 0; dx < KS; dx++) {
                const uint4 first = row[(g + dx) * 4 + t], second = row[(g + dx + 8) * 4 + t];
                const unsigned a0[4] = {first.x, second.x, first.y, second.y};
                const unsigned a1[4] = {first.z, second.z, first.w, second.w};
#pragma unroll
                for (int dy = 0; dy < KS; dy++) {
                    const int r = j - dy;  // the output row this input row meets at vertical tap dy
                    if (r >= 0 && r < CONV_ROWS) {
                        mma16816(acc[r], a0, w[dy][dx].x, w[dy][dx].y);
                        mma16816(acc[r], a1, w[dy][dx].z, w[dy][dx].w);
                    }
                }
            }
            __syncwarp();
        }
    }
    // Lane (g, t) holds output channels 2t and 2t + 1 of columns g and g + 8.
    const int n = 2 * t;
    const float bias0 = bias && n < outChannels ? bf2f(bias[n]) : 0.f;
    const float bias1 = bias && n + 1 < outChannels ? bf2f(bias[n + 1]) : 0.f;
    bf16 *dst = out + (u64)blockIdx.z * outHeight * outWidth * outChannels;
#pragma unroll
    for (int r = 0; r < CONV_ROWS; r++) {
        const int oy = oy0 + r;
        if (oy >= outHeight) break;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int ox = ox0 + g + 8 * half;
            if (ox >= outWidth) continue;
            bf16 *pixel = dst + ((u64)oy * outWidth + ox) * outChannels;
            if (n < outChannels) pixel[n] = f2bf(acc[r][2 * half] + bias0);
            if (n + 1 < outChannels) pixel[n + 1] = f2bf(acc[r][2 * half + 1] + bias1);
        }
    }
}

/// out [B, outHeight, outWidth, K] = x [B, height, width, C] convolved with weight [K, KS, KS, C] (KS = `kernelSize`,
/// 3 or 1), stride 1, the input offset by (padTop, padLeft), plus bias [K] when not null. K <= 8; C a multiple of 8;
/// x and weight 16-byte aligned. Grid (ceil(outWidth / (16 CONV_WARPS)), ceil(outHeight / CONV_ROWS), B), block
/// 32 CONV_WARPS. Four blocks an SM: ptxas then fits the kernel in 126 registers (five make it spill).
extern "C" __global__ void __launch_bounds__(32 * CONV_WARPS, 4)
conv_few_outputs_bf16(bf16 *out, const bf16 *x, const bf16 *weight, const bf16 *bias, int height, int width, int channels,
                      int outChannels, int outHeight, int outWidth, int padTop, int padLeft, int kernelSize) {
    __shared__ uint4 rings[CONV_WARPS][CONV_STAGES * CONV_ROW_CHUNKS];
    uint4 *ring = rings[threadIdx.x >> 5];
    if (kernelSize == 3) {
        conv_few_outputs<3>(ring, out, x, weight, bias, height, width, channels, outChannels, outHeight, outWidth, padTop, padLeft);
    } else {
        conv_few_outputs<1>(ring, out, x, weight, bias, height, width, channels, outChannels, outHeight, outWidth, padTop, padLeft);
    }
}
