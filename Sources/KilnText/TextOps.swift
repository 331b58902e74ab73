#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KilnBackends
import KilnCore

/// Operations the text encoders need that the op interface does not have, composed from the ops it has.
///
/// A backend can later implement them natively (see the report on issue 3):
/// - `attention` with an additive bias `[H, Lq, Lk]` (T5's relative positions; CLIP's causal mask),
/// - an elementwise product (T5's gated feed-forward),
/// - quick-GELU (CLIP's MLP).
extension Backend {
    /// Prepares an additive attention bias `[H, L, L]` (or `[1, L, L]` shared by all heads) for
    /// `attentionWithBias`: kept on the host for the CPU backend, widened into extra lanes (uploaded once) for others.
    /// `widen` forces the choice (tests).
    public func prepareAttentionBias(_ bias: HostTensor, batch: Int, heads: Int, scale: Float,
                                     widen: Bool? = nil) -> AttentionBias<Tensor> {
        if !(widen ?? !(self is CPUBackend)) { return AttentionBias(bias: bias, lanes: nil) }
        return AttentionBias(bias: bias, lanes: AttentionBiasLanes(bias: bias, batch: batch, heads: heads, scale: scale).upload(self))
    }

    /// Multi-head attention whose scores get an additive bias before the softmax:
    /// `softmax(scale · q·kᵀ + bias[h]) · v`, with `q`, `k`, `v` `[B, L, H·D]`.
    ///
    /// On the CPU backend this is computed directly on the host. Elsewhere it is composed from the plain `attention`
    /// op by widening each head: `q' = [q, e_i / scale]`, `k' = [k, bias[h, :, j]]` and `v' = [v, 0]`, so that
    /// `scale · q'·k'ᵀ = scale · q·kᵀ + bias` (the added products are one bias value and zeros). `-infinity` in the
    /// bias (masking) is stored as a large finite negative number. That costs `L` extra lanes per head; a native op
    /// should replace it.
    public func attentionWithBias(q: Tensor, k: Tensor, v: Tensor, heads: Int, scale: Float,
                                  bias: AttentionBias<Tensor>) -> Tensor {
        guard let lanes = bias.lanes else {
            guard let cpu = self as? CPUBackend, let q = q as? HostTensor, let k = k as? HostTensor, let v = v as? HostTensor,
                  let result = cpu.attention(q: q, k: k, v: v, heads: heads, scale: scale, bias: bias.bias) as? Tensor else {
                preconditionFailure("an unwidened attention bias needs host tensors (the CPU backend)")
            }
            return result
        }
        let s = shape(q)
        let (batch, length, width) = (s[0], s[1], s[2])
        let d = width / heads
        // Zero lanes round the widened head up to a multiple of 8, the alignment fused attention kernels expect
        // (CLIP-L: 64 + 77 = 141 lanes gave wrong results on the GPU, 144 is a regular head size).
        let padding = (8 - (d + length) % 8) % 8
        var zeros: [Tensor] = []
        var missing = padding
        while missing > 0 {
            zeros.append(slice(lanes.value, axis: 3, 0..<min(missing, length)))
            missing -= min(missing, length)
        }
        let wide = d + length + padding
        func widen(_ x: Tensor, _ extra: Tensor) -> Tensor {
            let joined = concat([reshape(x, [batch, length, heads, d]), extra] + zeros, axis: 3)
            return reshape(joined, [batch, length, heads * wide])
        }
        let out = attention(q: widen(q, lanes.query), k: widen(k, lanes.key), v: widen(v, lanes.value),
                            heads: heads, scale: scale, keyMask: nil)
        let perHead = slice(reshape(out, [batch, length, heads, wide]), axis: 3, 0..<d)
        return reshape(perHead, [batch, length, width])
    }

    /// `a * b` elementwise for equal shapes, composed from `scaleChannels` over rows of one token.
    public func multiply(_ a: Tensor, _ b: Tensor) -> Tensor {
        let s = shape(a)
        let c = s.last!
        let rows = s.reduce(1, *) / c
        return reshape(scaleChannels(reshape(a, [rows, 1, c]), by: reshape(b, [rows, c])), s)
    }

    /// `x · sigmoid(1.702 x)` (CLIP's quick-GELU), as `silu(1.702 x) / 1.702`.
    public func quickGELU(_ x: Tensor) -> Tensor {
        affine(activation(affine(x, scale: 1.702, shift: 0), .silu), scale: 1 / 1.702, shift: 0)
    }
}

/// An additive attention bias ready for `attentionWithBias`.
public struct AttentionBias<Tensor> {
    /// `[H, L, L]` or `[1, L, L]`.
    public let bias: HostTensor
    /// The widened lanes, for backends without a native biased attention.
    public let lanes: AttentionBiasLanes.Uploaded<Tensor>?
}

/// The extra lanes that fold an additive attention bias into plain attention (see `attentionWithBias`).
public struct AttentionBiasLanes {
    /// `[B, L, H, L]`: one-hot of the query position, divided by the softmax scale.
    public let query: HostTensor
    /// `[B, L, H, L]`: for key `j` and head `h`, the bias column `bias[h, :, j]`.
    public let key: HostTensor
    /// `[B, L, H, L]` zeros.
    public let value: HostTensor

    /// Stands in for −∞ (masked scores): finite, so that zero lanes times it stay zero.
    public static let masked: Float = -1e30

    public struct Uploaded<Tensor> {
        public let query: Tensor
        public let key: Tensor
        public let value: Tensor
    }

    /// `bias` is `[H, L, L]`, or `[1, L, L]` for one bias shared by all heads.
    public init(bias: HostTensor, batch: Int, heads: Int, scale: Float) {
        precondition(bias.shape.count == 3 && bias.shape[1] == bias.shape[2] && (bias.shape[0] == heads || bias.shape[0] == 1),
                     "attention bias \(bias.shape) for \(heads) heads")
        let length = bias.shape[1]
        let shared = bias.shape[0] == 1
        let count = batch * length * heads * length
        var q = [Float](repeating: 0, count: count)
        var k = [Float](repeating: 0, count: count)
        for b in 0..<batch {
            for position in 0..<length {
                for h in 0..<heads {
                    let row = ((b * length + position) * heads + h) * length
                    q[row + position] = 1 / scale
                    let head = shared ? 0 : h
                    for i in 0..<length {
                        let value = bias.data[(head * length + i) * length + position]
                        k[row + i] = value == -.infinity ? AttentionBiasLanes.masked : value
                    }
                }
            }
        }
        let shape = [batch, length, heads, length]
        query = HostTensor(shape: shape, data: q)
        key = HostTensor(shape: shape, data: k)
        value = HostTensor(shape: shape, repeating: 0)
    }

    public func upload<B: Backend>(_ backend: B) -> Uploaded<B.Tensor> {
        Uploaded(query: backend.tensor(query), key: backend.tensor(key), value: backend.tensor(value))
    }
}

/// Rows of an embedding table gathered on the host (the op interface has no gather).
enum Embedding {
    static func gather(_ table: HostTensor, _ ids: [Int]) -> HostTensor {
        let width = table.shape[1]
        var out = [Float](repeating: 0, count: ids.count * width)
        for (row, id) in ids.enumerated() {
            precondition(id >= 0 && id < table.shape[0], "token id \(id) outside the embedding table of \(table.shape[0]) rows")
            let source = id * width
            for c in 0..<width { out[row * width + c] = table.data[source + c] }
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
