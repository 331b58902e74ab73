import KilnBackends
import KilnCore

/// Seeded random weights of whatever shapes the model asks for, so a model of any size runs without files.
///
/// Each tensor's values depend only on the seed and its name. Two initializations:
/// - `.conditioned` (the default for tiny test models): matrices N(0, 1/fan_in), norm scales 1 + N(0, 0.1²),
///   biases N(0, 0.05²); wiring bugs then move outputs visibly.
/// - `.flat(std)`: matrices N(0, std²) (0.02 matches the reference's random FLUX), norm scales 1, biases 0.
public struct RandomWeights: WeightSource {
    public enum Initialization: Sendable {
        case conditioned
        case flat(std: Float)
    }

    public let seed: UInt64
    public let initialization: Initialization

    public init(seed: UInt64, initialization: Initialization = .conditioned) {
        self.seed = seed
        self.initialization = initialization
    }

    public var origin: String { "random weights (seed \(seed))" }

    public func tensor(_ name: String, shape: [Int]) throws -> HostTensor {
        let (seed, mean, std) = distribution(name, shape)
        var noise = NoiseGenerator(seed: seed)
        return HostTensor(shape: shape, data: noise.normal(shape.reduce(1, *)).map { mean + std * $0 })
    }

    /// Generated where the backend keeps it; equal to `tensor` up to the backend's storage rounding.
    public func load<B: Backend>(_ name: String, shape: [Int], role: WeightRole, backend: B) throws -> B.Tensor {
        let (seed, mean, std) = distribution(name, shape)
        return backend.randomNormal(shape: shape, seed: seed, mean: mean, std: std, role: role)
    }

    /// The stream seed, mean and standard deviation of tensor `name`.
    func distribution(_ name: String, _ shape: [Int]) -> (seed: UInt64, mean: Float, std: Float) {
        let tensorSeed = seed ^ RandomWeights.hash(name)
        if shape.count == 1 {
            let isScale = (name.hasSuffix(".scale") || name.contains("norm")) && !name.hasSuffix(".bias")
            switch initialization {
            case .conditioned: return (tensorSeed, isScale ? 1 : 0, isScale ? 0.1 : 0.05)
            case .flat: return (tensorSeed, isScale ? 1 : 0, 0)
            }
        }
        switch initialization {
        case .conditioned: return (tensorSeed, 0, 1 / Float(shape.dropFirst().reduce(1, *)).squareRoot())
        case let .flat(std): return (tensorSeed, 0, std)
        }
    }

    /// FNV-1a of the name, so each tensor gets its own stream.
    public static func hash(_ name: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in name.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return h
    }
}
