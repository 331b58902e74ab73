/// Deliberate wiring bugs, switched on only by the mutation tests to prove that the reference
/// comparisons fail when the model is wrong. Production code never sets them.
public struct Faults: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// Skip the rotary position embedding.
    public static let ropeOff = Faults(rawValue: 1 << 0)
    /// Swap the row and column coordinates of the image position ids.
    public static let imageIdsSwapped = Faults(rawValue: 1 << 1)
    /// Use the unshifted sigma schedule even where the scheduler asks for dynamic shifting.
    public static let noDynamicShift = Faults(rawValue: 1 << 2)
    /// Forget the VAE's latent shift factor.
    public static let vaeShiftDropped = Faults(rawValue: 1 << 3)
    /// Drop the bias of the transformer's image input projection.
    public static let skippedBias = Faults(rawValue: 1 << 4)
}
