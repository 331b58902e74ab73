import KilnBackends
import KilnCore

extension CUDABackend {
    /// Seeded normal weights generated on the GPU (kernel `random.cu`), the same values as the host's
    /// `NoiseGenerator` up to bf16 rounding; full-size random models load in seconds, with no host round trip.
    public func randomNormal(shape: [Int], seed: UInt64, mean: Float, std: Float, role: WeightRole) -> CUDATensor {
        attempt {
            let t = try empty(shape)
            try launchKernel("random", "fill_normal_bf16", grid: elementwiseGrid((t.count + 1) / 2), block: (256, 1, 1)) {
                $0.add(t.pointer); $0.add(UInt64(t.count)); $0.add(seed); $0.add(mean); $0.add(std)
            }
            if role == .quantizableLinear && linearPrecision == .fp8 { return try quantizeRows(t) }
            return t
        }
    }
}
