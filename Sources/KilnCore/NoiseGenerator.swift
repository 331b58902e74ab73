#if canImport(Glibc)
import Glibc
#endif

/// Kiln's seeded Gaussian noise, the same on every machine and backend.
///
/// Uniforms come from SplitMix64 (a 64-bit counter advanced by the golden-ratio constant and mixed by two
/// multiply-xorshift rounds); each pair of uniforms (u1, u2), taken as 53-bit doubles in (0, 1], becomes two
/// normals by the Box–Muller transform: √(−2 ln u1) · (cos 2πu2, sin 2πu2), computed in fp64 and rounded to fp32.
/// Initial latents for seed S are `normal(16·h·w)` from `NoiseGenerator(seed: S)` in NCHW order.
public struct NoiseGenerator: Sendable {
    var state: UInt64
    var spare: Float?

    public init(seed: UInt64) { state = seed }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform double in (0, 1].
    public mutating func uniform() -> Double {
        (Double(next() >> 11) + 1) * 0x1p-53
    }

    /// One standard normal.
    public mutating func normal() -> Float {
        if let value = spare {
            spare = nil
            return value
        }
        let radius = (-2 * log(uniform())).squareRoot()
        let angle = 2 * Double.pi * uniform()
        spare = Float(radius * sin(angle))
        return Float(radius * cos(angle))
    }

    /// `count` standard normals.
    public mutating func normal(_ count: Int) -> [Float] {
        (0..<count).map { _ in normal() }
    }
}
