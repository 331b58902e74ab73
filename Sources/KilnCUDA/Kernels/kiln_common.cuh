// Shared helpers for Kiln's NVRTC kernels: our own bf16 / fp8 conversions (no cuda_bf16.h needed), warp reductions.
#pragma once

typedef unsigned short bf16;
typedef unsigned char fp8e4m3;
typedef unsigned long long u64;

#define KILN_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float bf2f(bf16 v) { return __uint_as_float(((unsigned)v) << 16); }

__device__ __forceinline__ bf16 f2bf(float f) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

/// Two floats to a bf16 pair: `lo` in the low half.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float bf_lo(unsigned v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf_hi(unsigned v) { return __uint_as_float(v & 0xffff0000u); }

/// Two floats to an e4m3 pair (saturating): `lo` in the low byte.
__device__ __forceinline__ unsigned short pack_e4m3x2(float lo, float hi) {
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}

/// Four floats times `r` to e4m3, the first in the low byte.
__device__ __forceinline__ unsigned pack4_e4m3(const float *v, float r) {
    return pack_e4m3x2(v[0] * r, v[1] * r) | ((unsigned)pack_e4m3x2(v[2] * r, v[3] * r) << 16);
}

/// Eight floats times `r` to e4m3 (one 8-byte store).
__device__ __forceinline__ uint2 pack8_e4m3(const float *v, float r) { return make_uint2(pack4_e4m3(v, r), pack4_e4m3(v + 4, r)); }

/// An e4m3 pair (`lo` in the low byte) to two floats.
__device__ __forceinline__ void unpack_e4m3x2(unsigned short v, float &lo, float &hi) {
    unsigned h2;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(v));
    asm("cvt.f32.f16 %0, %1;" : "=f"(lo) : "h"((unsigned short)(h2 & 0xffffu)));
    asm("cvt.f32.f16 %0, %1;" : "=f"(hi) : "h"((unsigned short)(h2 >> 16)));
}

__device__ __forceinline__ unsigned smem_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

/// Copies 16 bytes from global to shared memory asynchronously, the first `bytes` of them read and the rest zeroed.
__device__ __forceinline__ void cp_async16(unsigned dst, const void *src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
/// Waits until at most `Pending` of this thread's most recently committed cp.async groups are still in flight.
template <int Pending> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending)); }

/// c += a·b on the tensor cores: a 16x16 BF16 tile (4 registers of the m16n8k16 A fragment) times a 16x8 one (b0,
/// b1), fp32 accumulators c[4].
__device__ __forceinline__ void mma16816(float *c, const unsigned *a, unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < warps ? scratch[lane] : 0.f;
    return warp_sum(total);
}

/// Maximum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_max(float v, float *scratch) {
    v = warp_max(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    float m = -KILN_INF;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) m = fmaxf(m, scratch[w]);
    return m;
}

__device__ __forceinline__ float silu_f(float v) { return v / (1.f + __expf(-v)); }

__device__ __forceinline__ float gelu_tanh_f(float v) {
    const float k = 0.7978845608028654f;
    return 0.5f * v * (1.f + tanhf(k * (v + 0.044715f * v * v * v)));
}

__device__ __forceinline__ float activate(float v, int kind) {
    return kind == 1 ? silu_f(v) : kind == 2 ? gelu_tanh_f(v) : v;
}

// Chunks of 8 bf16 (16 bytes): elementwise kernels move one chunk per thread and iteration, as one 16-byte access when
// the chunk is whole and its pointer 16-byte aligned (`vec`, decided once per launch), element by element otherwise.
#define KILN_CHUNK 8
#define FOR_CHUNKS(i, n) for (u64 i = (blockIdx.x * (u64)blockDim.x + threadIdx.x) * KILN_CHUNK; i < (n); \
                              i += (u64)gridDim.x * blockDim.x * KILN_CHUNK)

__device__ __forceinline__ bool aligned16(const void *p) { return (((u64)p) & 15) == 0; }

/// The 8 bf16 values of a 16-byte chunk, as floats.
__device__ __forceinline__ void unpack8(uint4 r, float *v) {
    v[0] = bf_lo(r.x); v[1] = bf_hi(r.x); v[2] = bf_lo(r.y); v[3] = bf_hi(r.y);
    v[4] = bf_lo(r.z); v[5] = bf_hi(r.z); v[6] = bf_lo(r.w); v[7] = bf_hi(r.w);
}

/// 8 floats rounded to bf16, as one 16-byte chunk.
__device__ __forceinline__ uint4 pack8(const float *v) {
    return make_uint4(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]), pack_bf16x2(v[4], v[5]), pack_bf16x2(v[6], v[7]));
}

__device__ __forceinline__ void load8(const bf16 *p, u64 i, u64 n, bool vec, float *v) {
    if (vec && i + KILN_CHUNK <= n) {
        unpack8(*reinterpret_cast<const uint4 *>(p + i), v);
    } else {
#pragma unroll
        for (int k = 0; k < KILN_CHUNK; k++) v[k] = i + k < n ? bf2f(p[i + k]) : 0.f;
    }
}

__device__ __forceinline__ void store8(bf16 *p, u64 i, u64 n, bool vec, const float *v) {
    if (vec && i + KILN_CHUNK <= n) {
        *reinterpret_cast<uint4 *>(p + i) = pack8(v);
    } else {
#pragma unroll
        for (int k = 0; k < KILN_CHUNK; k++) if (i + k < n) p[i + k] = f2bf(v[k]);
    }
}

/// a / d and a % d, in 32-bit arithmetic when `a` fits (64-bit division is a long software sequence on the GPU).
__device__ __forceinline__ u64 divmod(u64 a, unsigned d, unsigned &rem) {
    if (a < 0x100000000ull) {
        const unsigned q = (unsigned)a / d;
        rem = (unsigned)a - q * d;
        return q;
    }
    const u64 q = a / d;
    rem = (unsigned)(a - q * d);
    return q;
}

/// Per-channel-vector ops see x as [B, rowsPerBatch, channels] and a vector as [B, channels] (or [channels]
/// when `perBatch` is 0); this is the vector index of element i.
__device__ __forceinline__ u64 vector_index(u64 i, unsigned channels, u64 rowsPerBatch, int perBatch) {
    unsigned c;
    const u64 row = divmod(i, channels, c);
    if (!perBatch) return c;
    const u64 item = row < 0x100000000ull && rowsPerBatch < 0x100000000ull ? (unsigned)row / (unsigned)rowsPerBatch : row / rowsPerBatch;
    return item * channels + c;
}
