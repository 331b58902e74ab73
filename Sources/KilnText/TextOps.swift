import KilnBackends
import KilnCore

/// Operations the text encoders need that the op interface does not have, composed from the ops it has:
/// quick-GELU (CLIP's MLP).
extension Backend {
    /// `x · sigmoid(1.702 x)` (CLIP's quick-GELU), as `silu(1.702 x) / 1.702`.
    public func quickGELU(_ x: Tensor) -> Tensor {
        affine(activation(affine(x, scale: 1.702, shift: 0), .silu), scale: 1 / 1.702, shift: 0)
    }
}

/// Rows of an embedding table gathered on the host (the op interface has no gather).
enum Embedding {
    static func gather(_ table: HostTensor, _ ids: [Int]) -> HostTensor {
        let width = table.shape[1]
        var out: [Float] = []
        out.reserveCapacity(ids.count * width)
        for id in ids {
            precondition(id >= 0 && id < table.shape[0], "token id \(id) outside the embedding table of \(table.shape[0]) rows")
            out.append(contentsOf: table.data[(id * width)..<((id + 1) * width)])
        }
        return HostTensor(shape: [1, ids.count, width], data: out)
    }
}

/// Deliberate wiring bugs in the text encoders, switched on only by the mutation tests to prove that the reference
/// comparisons fail when the model is wrong. Production code never sets them.
public struct TextFaults: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// CLIP attends to later tokens too.
    public static let noCausalMask = TextFaults(rawValue: 1 << 0)
    /// CLIP pools at the last position instead of the end-of-text token.
    public static let pooledAtLastToken = TextFaults(rawValue: 1 << 1)
    /// The final layer norm (CLIP) or RMS norm (T5) is skipped.
    public static let noFinalNorm = TextFaults(rawValue: 1 << 2)
    /// T5's relative positions taken as query − key instead of key − query.
    public static let bucketsMirrored = TextFaults(rawValue: 1 << 3)
    /// T5's relative-position bias left out.
    public static let noPositionBias = TextFaults(rawValue: 1 << 4)
    /// T5's feed-forward gate applied to the other projection.
    public static let gateSwapped = TextFaults(rawValue: 1 << 5)
}
