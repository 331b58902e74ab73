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
        var noise = NoiseGenerator(seed: seed ^ RandomWeights.hash(name))
        let count = shape.reduce(1, *)
        let isNorm = name.hasSuffix(".scale") || name.contains("norm")
        if shape.count == 1 {
            let isScale = isNorm && !name.hasSuffix(".bias")
            switch initialization {
            case .conditioned:
                let std: Float = isScale ? 0.1 : 0.05
                return HostTensor(shape: shape, data: noise.normal(count).map { (isScale ? 1 : 0) + std * $0 })
            case .flat:
                return HostTensor(shape: shape, repeating: isScale ? 1 : 0)
            }
        }
        let fanIn = shape.dropFirst().reduce(1, *)
        let std: Float
        switch initialization {
        case .conditioned: std = 1 / Float(fanIn).squareRoot()
        case let .flat(value): std = value
        }
        return HostTensor(shape: shape, data: noise.normal(count).map { std * $0 })
    }

    /// FNV-1a of the name, so each tensor gets its own stream.
    public static func hash(_ name: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in name.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return h
    }
}
