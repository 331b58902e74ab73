import KilnCore

/// What to generate: size, schedule and seed.
public struct GenerationOptions: Sendable {
    public var width = 1024
    public var height = 1024
    /// Denoising steps; nil picks the variant's default (28 dev, 4 schnell).
    public var steps: Int?
    /// Guidance scale embedded by dev models (ignored by schnell).
    public var guidance: Float = 3.5
    public var seed: UInt64 = 0
    public var batch = 1

    public init() {}

    /// Sizes Kiln accepts: multiples of 16 from 64 to 4096.
    public static let sizeRange = 64...4096

    /// Throws `KilnError.invalidArgument` with one clear line for an impossible request.
    public func validate() throws {
        for (name, value) in [("width", width), ("height", height)] {
            guard GenerationOptions.sizeRange.contains(value) else {
                throw KilnError.invalidArgument("\(name) \(value) is outside \(GenerationOptions.sizeRange.lowerBound)...\(GenerationOptions.sizeRange.upperBound)")
            }
            guard value % 16 == 0 else { throw KilnError.invalidArgument("\(name) \(value) is not a multiple of 16") }
        }
        if let steps, !(1...1000).contains(steps) {
            throw KilnError.invalidArgument("steps must be between 1 and 1000, got \(steps)")
        }
        guard guidance.isFinite, guidance >= 0 else { throw KilnError.invalidArgument("guidance must be a non-negative number") }
        guard (1...16).contains(batch) else { throw KilnError.invalidArgument("batch must be between 1 and 16, got \(batch)") }
    }

    /// Latent height and width (image size / 8).
    public var latentSize: (height: Int, width: Int) { (height / 8, width / 8) }
}
