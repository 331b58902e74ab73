// Elementwise ops over bf16 tensors of `n` elements: grid-stride loops over 8-element chunks (kiln_common.cuh).
// Ops that index a per-channel vector take the fast path only when `channels` is a multiple of 8, so a chunk never
// straddles two rows.
#include "kiln_common.cuh"

extern "C" __global__ void add_bf16(bf16 *out, const bf16 *a, const bf16 *b, float alpha, u64 n) {
    const bool vec = aligned16(out) && aligned16(a) && aligned16(b);
    FOR_CHUNKS(i, n) {
        float x[8], y[8];
        load8(a, i, n, vec, x);
        load8(b, i, n, vec, y);
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] += alpha * y[k];
        store8(out, i, n, vec, x);
    }
}

extern "C" __global__ void affine_bf16(bf16 *out, const bf16 *x, float scale, float shift, u64 n) {
    const bool vec = aligned16(out) && aligned16(x);
    FOR_CHUNKS(i, n) {
        float v[8];
        load8(x, i, n, vec, v);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = v[k] * scale + shift;
        store8(out, i, n, vec, v);
    }
}

/// kind: 0 none, 1 SiLU, 2 GELU-tanh.
extern "C" __global__ void activation_bf16(bf16 *out, const bf16 *x, int kind, u64 n) {
    const bool vec = aligned16(out) && aligned16(x);
    FOR_CHUNKS(i, n) {
        float v[8];
        load8(x, i, n, vec, v);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = activate(v[k], kind);
        store8(out, i, n, vec, v);
    }
}

/// out[r, c] = gelu_tanh(x[r, c]) * x[r, half + c] for x [rows, 2·half] (T5's gated feed-forward after its joined
/// wi_0 | wi_1 GEMM); n = rows·half.
extern "C" __global__ void gated_gelu_bf16(bf16 *out, const bf16 *x, u64 half, u64 n) {
    const bool vec = aligned16(out) && aligned16(x) && half % 8 == 0;
    FOR_CHUNKS(i, n) {
        if (vec) {
            unsigned c;
            const u64 r = divmod(i, (unsigned)half, c);
            const bf16 *a = x + r * 2 * half + c;
            float g[8], u[8];
            load8(a, 0, 8, true, g);
            load8(a + half, 0, 8, true, u);
#pragma unroll
            for (int k = 0; k < 8; k++) g[k] = gelu_tanh_f(g[k]) * u[k];
            store8(out, i, n, true, g);
        } else {
            for (u64 j = i; j < i + 8 && j < n; j++) {
                const bf16 *a = x + (j / half) * 2 * half + j % half;
                out[j] = f2bf(gelu_tanh_f(bf2f(a[0])) * bf2f(a[half]));
            }
        }
    }
}

// The per-channel-vector ops below index their vectors with vector_index (kiln_common.cuh).

/// out = x + bias[c].
extern "C" __global__ void bias_add_bf16(bf16 *out, const bf16 *x, const bf16 *bias, int channels, u64 n) {
    const bool vec = aligned16(out) && aligned16(x) && channels % 8 == 0;
    FOR_CHUNKS(i, n) {
        float v[8];
        load8(x, i, n, vec, v);
        const u64 base = vec ? vector_index(i, channels, 1, 0) : 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            if (!vec && i + k >= n) break;
            v[k] += bf2f(bias[vec ? base + k : vector_index(i + k, channels, 1, 0)]);
        }
        store8(out, i, n, vec, v);
    }
}

/// out = x * (1 + scale) + shift.
extern "C" __global__ void modulate_bf16(bf16 *out, const bf16 *x, const bf16 *shift, const bf16 *scale,
                                         u64 rowsPerBatch, int channels, u64 n) {
    const bool vec = aligned16(out) && aligned16(x) && channels % 8 == 0;
    FOR_CHUNKS(i, n) {
        float v[8];
        load8(x, i, n, vec, v);
        const u64 base = vec ? vector_index(i, channels, rowsPerBatch, 1) : 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            if (!vec && i + k >= n) break;
            const u64 j = vec ? base + k : vector_index(i + k, channels, rowsPerBatch, 1);
            v[k] = v[k] * (1.f + bf2f(scale[j])) + bf2f(shift[j]);
        }
        store8(out, i, n, vec, v);
    }
}

/// out = residual + gate * y (gate [B, C] broadcast over rows); residual may be null for out = gate * y.
extern "C" __global__ void gated_residual_bf16(bf16 *out, const bf16 *residual, const bf16 *gate, const bf16 *y,
                                               u64 rowsPerBatch, int channels, u64 n) {
    const bool vec = aligned16(out) && aligned16(residual) && aligned16(y) && channels % 8 == 0;
    FOR_CHUNKS(i, n) {
        float v[8], r[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        load8(y, i, n, vec, v);
        if (residual) load8(residual, i, n, vec, r);
        const u64 base = vec ? vector_index(i, channels, rowsPerBatch, 1) : 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            if (!vec && i + k >= n) break;
            const u64 j = vec ? base + k : vector_index(i + k, channels, rowsPerBatch, 1);
            v[k] = r[k] + bf2f(gate[j]) * v[k];
        }
        store8(out, i, n, vec, v);
    }
}

/// Stored weights to bf16: `from` 0 = fp32, 1 = fp16.
extern "C" __global__ void convert_to_bf16(bf16 *out, const void *x, int from, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float v;
        if (from == 0) {
            v = static_cast<const float *>(x)[i];
        } else {
            const unsigned short h = static_cast<const unsigned short *>(x)[i];
            asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(h));
        }
        out[i] = f2bf(v);
    }
}

/// An FP8 output projection with FLUX's gated residual: each of `rows` gate rows [n] folds into the weight's
/// per-output-channel scales and into the bias (either output may then feed the GEMM, which adds the residual as C).
extern "C" __global__ void gate_scales(float *scales, bf16 *gatedBias, const bf16 *gate, const float *weightScales,
                                       const bf16 *bias, int n, int rows) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * rows) return;
    const int j = i % n;
    const float g = bf2f(gate[i]);
    scales[i] = g * weightScales[j];
    if (bias) gatedBias[i] = f2bf(g * bf2f(bias[j]));
}

/// FP8 attention's derived scales, computed on the device so a captured graph follows V's descale: the output descale
/// is descale_v * 1.125 (softmax rows sum to ~1, so |O| <= max |V|, and the margin covers P's e4m3 rounding), written to
/// all `rows` output row scales; scalars get scale_o = 1 / descale_o at [0], descale_s = 1/448 at [4] and scale_s = 448
/// at [8] (P in e4m3's full range), 16 bytes apart as cuDNN's tensors are aligned.
extern "C" __global__ void fp8_attention_scales(float *scalars, float *rowScales, const float *descaleV, u64 rows) {
    const float descaleO = descaleV[0] * 1.125f;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < rows; i += (u64)gridDim.x * blockDim.x) rowScales[i] = descaleO;
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        scalars[0] = 1.f / descaleO;
        scalars[4] = 1.f / 448.f;
        scalars[8] = 448.f;
    }
}

/// Copies `rows` rows of `cols` elements between strided 2-D regions (concat, slice).
extern "C" __global__ void copy_rows_bf16(bf16 *dst, u64 dstStride, const bf16 *src, u64 srcStride, u64 rows, u64 cols) {
    const u64 n = rows * cols;
    const bool vec = aligned16(dst) && aligned16(src) && cols % 8 == 0 && dstStride % 8 == 0 && srcStride % 8 == 0;
    FOR_CHUNKS(i, n) {
        if (vec) {
            const u64 r = i / cols, c = i - r * cols;
            *reinterpret_cast<uint4 *>(dst + r * dstStride + c) = *reinterpret_cast<const uint4 *>(src + r * srcStride + c);
        } else {
            for (u64 j = i; j < i + 8 && j < n; j++) {
                const u64 r = j / cols, c = j - r * cols;
                dst[r * dstStride + c] = src[r * srcStride + c];
            }
        }
    }
}

/// Nearest 2x upsampling of NHWC [B, H, W, C]: each input chunk is read once and written to its four output pixels.
extern "C" __global__ void upsample_nearest2x_bf16(bf16 *out, const bf16 *x, int height, int width, int channels, u64 n) {
    const bool vec = aligned16(out) && aligned16(x) && channels % 8 == 0;
    FOR_CHUNKS(i, n) {
        for (int k = 0; k < (vec ? 1 : 8) && i + k < n; k++) {
            unsigned c, px, py;
            const u64 p = divmod(i + k, channels, c);
            const u64 row = divmod(p, width, px);
            const u64 b = divmod(row, height, py);
            const u64 o = ((b * 2 * height + 2 * py) * 2 * width + 2 * px) * channels + c;
            const u64 down = 2ull * width * channels;
            if (vec) {
                const uint4 v = *reinterpret_cast<const uint4 *>(x + i);
                *reinterpret_cast<uint4 *>(out + o) = v;
                *reinterpret_cast<uint4 *>(out + o + channels) = v;
                *reinterpret_cast<uint4 *>(out + o + down) = v;
                *reinterpret_cast<uint4 *>(out + o + down + channels) = v;
            } else {
                const bf16 v = x[i + k];
                out[o] = v; out[o + channels] = v; out[o + down] = v; out[o + down + channels] = v;
            }
        }
    }
}

/// A 3x3 kernel [O, 3, 3, I] that follows nearest 2x upsampling, as four 2x2 kernels on the low-resolution input,
/// out [4 O, 2, 2, I] with output channel (2a + b) O + o for output pixel parity (a, b). Upsampled rows 2i + a - 1 + ky
/// are input rows i + floor((a + ky - 1) / 2): parity 0 takes tap 0 from row i - 1 and taps 1, 2 from row i; parity 1
/// taps 0, 1 from row i and tap 2 from row i + 1; so 2x2 tap t sums 3x3 taps t == 0 ? [0, a] : [1 + a, 2]. Columns alike.
extern "C" __global__ void subpixel_weights_bf16(bf16 *out, const bf16 *w, int outChannels, int inChannels, u64 n) {
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < n; e += (u64)gridDim.x * blockDim.x) {
        unsigned c, tx, ty, o;
        u64 rest = divmod(e, inChannels, c);
        rest = divmod(rest, 2, tx);
        rest = divmod(rest, 2, ty);
        const unsigned phase = (unsigned)divmod(rest, outChannels, o), a = phase >> 1, b = phase & 1;
        float sum = 0.f;
        for (unsigned ky = ty == 0 ? 0 : 1 + a; ky <= (ty == 0 ? a : 2); ky++)
            for (unsigned kx = tx == 0 ? 0 : 1 + b; kx <= (tx == 0 ? b : 2); kx++)
                sum += bf2f(w[(((u64)o * 3 + ky) * 3 + kx) * inChannels + c]);
        out[e] = f2bf(sum);
    }
}

/// The upsampled convolution's output from the four parity convolutions: y [B, H + 1, W + 1, 4 C] (2x2 kernels,
/// padding 1, channel (2a + b) C + c) to out [B, 2H, 2W, C]: pixel (2i + a, 2j + b) is y's pixel (i + a, j + b).
extern "C" __global__ void subpixel_shuffle_bf16(bf16 *out, const bf16 *y, int height, int width, int channels, u64 n) {
    const bool vec = aligned16(out) && aligned16(y) && channels % 8 == 0;
    FOR_CHUNKS(i, n) {
        for (int k = 0; k < (vec ? 1 : 8) && i + k < n; k++) {
            unsigned c, q, p;
            const u64 row = divmod(i + k, channels, c);
            const u64 image = divmod(divmod(row, 2 * width, q), 2 * height, p);
            const unsigned a = p & 1, b = q & 1;
            const u64 from = ((image * (height + 1) + (p >> 1) + a) * (width + 1) + (q >> 1) + b) * 4ull * channels + (2 * a + b) * channels + c;
            if (vec) {
                *reinterpret_cast<uint4 *>(out + i) = *reinterpret_cast<const uint4 *>(y + from);
            } else {
                out[i + k] = y[from];
            }
        }
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

/// Decoded images [B, H, W, C] (bf16 in [-1, 1]) as PNG image data: `rows` = B·H rows of a filter byte (0) and W·C
/// samples round(clamp(x / 2 + 0.5, 0, 1) · 255), halves to even as on the host; non-finite samples become 0 and are
/// counted in nonFinite[0] (zeroed by the caller).
extern "C" __global__ void image_rows_u8(unsigned char *out, unsigned *nonFinite, const bf16 *x, unsigned rows, unsigned rowSamples) {
    const u64 rowBytes = 1 + (u64)rowSamples, n = rows * rowBytes;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        unsigned j;
        const u64 r = divmod(i, (unsigned)rowBytes, j);
        if (j == 0) { out[i] = 0; continue; }
        const float v = bf2f(x[r * rowSamples + j - 1]);
        if (!isfinite(v)) { atomicAdd(nonFinite, 1u); out[i] = 0; continue; }
        const float clamped = fminf(fmaxf(__fadd_rn(__fmul_rn(v, 0.5f), 0.5f), 0.f), 1.f);
        out[i] = (unsigned char)rintf(__fmul_rn(clamped, 255.f));
    }
}
