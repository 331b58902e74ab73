// Seeded normal values generated in place, equal to KilnCore's NoiseGenerator: SplitMix64 is counter-based, so
// value i needs only the seed and i. Pair p takes uniforms number 2p+1 and 2p+2 of the stream, Box–Muller in fp64.
#include "kiln_common.cuh"

__device__ __forceinline__ u64 splitmix_mix(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ double uniform_open_closed(u64 bits) { return ((double)(bits >> 11) + 1.0) * 0x1p-53; }

/// out[i] = mean + std * normal_i, rounded to bf16; `mean + std * x` in two roundings, as the host computes it.
extern "C" __global__ void fill_normal_bf16(bf16 *out, u64 n, u64 seed, float mean, float std) {
    const u64 golden = 0x9E3779B97F4A7C15ull;
    const u64 pairs = (n + 1) / 2;
    for (u64 p = blockIdx.x * (u64)blockDim.x + threadIdx.x; p < pairs; p += (u64)gridDim.x * blockDim.x) {
        double u1 = uniform_open_closed(splitmix_mix(seed + (2 * p + 1) * golden));
        double u2 = uniform_open_closed(splitmix_mix(seed + (2 * p + 2) * golden));
        double radius = sqrt(-2.0 * log(u1));
        double angle = 2.0 * 3.141592653589793 * u2;
        out[2 * p] = f2bf(__fadd_rn(mean, __fmul_rn(std, (float)(radius * cos(angle)))));
        if (2 * p + 1 < n) out[2 * p + 1] = f2bf(__fadd_rn(mean, __fmul_rn(std, (float)(radius * sin(angle)))));
    }
}
