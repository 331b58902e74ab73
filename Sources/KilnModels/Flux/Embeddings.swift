import KilnBackends
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// Host-side embeddings of scalars and positions. They depend only on the timestep, guidance and image size,
/// so they are computed once on the host (keeping timesteps in fp32, never rounded to bf16) and uploaded.
public enum FluxEmbeddings {
    /// Sinusoidal embedding `[cos(t·f), sin(t·f)]` of `values × 1000`, `dim` wide, frequencies `10000^(-i/(dim/2))`.
    /// Computed in fp32 the way diffusers does, so results agree to the last bits.
    public static func timestep(_ values: [Float], dim: Int = 256) -> HostTensor {
        let half = dim / 2
        let frequencies = (0..<half).map { expf(-logf(10_000) * Float($0) / Float(half)) }
        var data: [Float] = []
        data.reserveCapacity(values.count * dim)
        for value in values {
            let t = value * 1000
            let arguments = frequencies.map { t * $0 }
            data += arguments.map { Float(cos(Double($0))) }
            data += arguments.map { Float(sin(Double($0))) }
        }
        return HostTensor(shape: [values.count, dim], data: data)
    }

    /// Position ids of the text tokens: all zeros, `[tokens, 3]`.
    public static func textIds(tokens: Int) -> [[Double]] {
        Array(repeating: [0, 0, 0], count: tokens)
    }

    /// Position ids of a packed latent of `rows × columns` tokens: `(0, row, column)` in row-major order.
    public static func imageIds(rows: Int, columns: Int, swapped: Bool = false) -> [[Double]] {
        var ids: [[Double]] = []
        for r in 0..<rows {
            for c in 0..<columns { ids.append(swapped ? [0, Double(c), Double(r)] : [0, Double(r), Double(c)]) }
        }
        return ids
    }

    /// The rotary table for `ids` (`[L][axes]`): per axis of size d, angles `pos / θ^(2j/d)`, each repeated for
    /// the two lanes of a pair; computed in fp64 and rounded to fp32, as diffusers does.
    public static func rotary(ids: [[Double]], axesDim: [Int], theta: Double) -> (cos: HostTensor, sin: HostTensor) {
        let d = axesDim.reduce(0, +)
        var cosines = [Float](repeating: 0, count: ids.count * d)
        var sines = cosines
        for (l, position) in ids.enumerated() {
            var lane = 0
            for (axis, size) in axesDim.enumerated() {
                for j in 0..<(size / 2) {
                    let frequency = 1 / pow(theta, Double(2 * j) / Double(size))
                    let angle = position[axis] * frequency
                    for k in 0..<2 {
                        cosines[l * d + lane + k] = Float(cos(angle))
                        sines[l * d + lane + k] = Float(sin(angle))
                    }
                    lane += 2
                }
            }
        }
        return (HostTensor(shape: [ids.count, d], data: cosines), HostTensor(shape: [ids.count, d], data: sines))
    }
}

/// Two linear layers with SiLU between: FLUX's embedder of timestep, guidance and pooled text.
public struct MLPEmbedder<B: Backend> {
    let inLayer: Linear<B>
    let outLayer: Linear<B>

    init(_ loader: WeightLoader<B>, inputs: Int, hidden: Int) throws {
        inLayer = try loader.linear("in_layer", in: inputs, out: hidden)
        outLayer = try loader.linear("out_layer", in: hidden, out: hidden)
    }

    func callAsFunction(_ x: B.Tensor, _ backend: B) -> B.Tensor {
        outLayer(inLayer(x, backend, activation: .silu), backend)
    }
}
