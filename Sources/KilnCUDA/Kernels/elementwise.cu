// Elementwise ops over bf16 tensors; `n` elements, grid-stride loops.
#include "kiln_common.cuh"

extern "C" __global__ void add_bf16(bf16 *out, const bf16 *a, const bf16 *b, float alpha, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f2bf(bf2f(a[i]) + alpha * bf2f(b[i]));
}

extern "C" __global__ void affine_bf16(bf16 *out, const bf16 *x, float scale, float shift, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f2bf(bf2f(x[i]) * scale + shift);
}

/// out = x + bias[c] over the last dimension (channels).
extern "C" __global__ void bias_add_bf16(bf16 *out, const bf16 *x, const bf16 *bias, int channels, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f2bf(bf2f(x[i]) + bf2f(bias[i % channels]));
}

/// kind: 0 none, 1 SiLU, 2 GELU-tanh.
extern "C" __global__ void activation_bf16(bf16 *out, const bf16 *x, int kind, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f2bf(activate(bf2f(x[i]), kind));
}

/// x [B, rows, C]; shift, scale [B, C]: out = x * (1 + scale) + shift.
extern "C" __global__ void modulate_bf16(bf16 *out, const bf16 *x, const bf16 *shift, const bf16 *scale,
                                         u64 rowsPerBatch, int channels, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 c = i % channels, b = i / ((u64)channels * rowsPerBatch);
        u64 v = b * channels + c;
        out[i] = f2bf(bf2f(x[i]) * (1.f + bf2f(scale[v])) + bf2f(shift[v]));
    }
}

/// out = residual + gate * y (gate [B, C] broadcast over rows); residual may be null for out = gate * y.
extern "C" __global__ void gated_residual_bf16(bf16 *out, const bf16 *residual, const bf16 *gate, const bf16 *y,
                                               u64 rowsPerBatch, int channels, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 c = i % channels, b = i / ((u64)channels * rowsPerBatch);
        float r = residual ? bf2f(residual[i]) : 0.f;
        out[i] = f2bf(r + bf2f(gate[b * channels + c]) * bf2f(y[i]));
    }
}

/// Copies `rows` rows of `cols` elements between strided 2-D regions (concat, slice).
extern "C" __global__ void copy_rows_bf16(bf16 *dst, u64 dstStride, const bf16 *src, u64 srcStride, u64 rows, u64 cols) {
    u64 n = rows * cols;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 r = i / cols, c = i % cols;
        dst[r * dstStride + c] = src[r * srcStride + c];
    }
}

/// Nearest 2x upsampling of NHWC [B, H, W, C].
extern "C" __global__ void upsample_nearest2x_bf16(bf16 *out, const bf16 *x, int height, int width, int channels, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 c = i % channels;
        u64 p = i / channels;
        u64 ox = p % (2 * width);
        u64 oy = (p / (2 * width)) % (2 * height);
        u64 b = p / (4ull * width * height);
        out[i] = x[((b * height + oy / 2) * width + ox / 2) * channels + c];
    }
}

/// im2col for NHWC convolution: out [B*oH*oW, kh*kw*C] with zero padding.
extern "C" __global__ void im2col_nhwc_bf16(bf16 *out, const bf16 *x, int height, int width, int channels, int kh, int kw,
                                            int stride, int padTop, int padLeft, int outH, int outW, u64 n) {
    const u64 rowLength = (u64)kh * kw * channels;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 row = i / rowLength, col = i % rowLength;
        int c = (int)(col % channels);
        int kx = (int)((col / channels) % kw);
        int ky = (int)(col / ((u64)channels * kw));
        int ox = (int)(row % outW);
        int oy = (int)((row / outW) % outH);
        u64 b = row / ((u64)outW * outH);
        int iy = oy * stride + ky - padTop, ix = ox * stride + kx - padLeft;
        out[i] = (iy >= 0 && iy < height && ix >= 0 && ix < width) ? x[((b * height + iy) * width + ix) * channels + c] : (bf16)0;
    }
}
