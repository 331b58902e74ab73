import KilnBackends
import KilnCore
import KilnText
import XCTest

/// The composed ops: the widened-lane form of biased attention (used by backends without a native op) equals
/// the direct one, and the elementwise helpers compute what they say.
final class TextOpsTests: XCTestCase {
    let backend = CPUBackend()

    func random(_ shape: [Int], seed: UInt64) -> HostTensor {
        var state = seed
        let count = shape.reduce(1, *)
        let data = (0..<count).map { _ -> Float in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: state >> 11) % 2001 - 1000) / 500
        }
        return HostTensor(shape: shape, data: data)
    }

    func testWidenedBiasedAttentionEqualsDirect() {
        let (length, heads, d) = (7, 3, 4)
        let q = random([2, length, heads * d], seed: 1)
        let k = random([2, length, heads * d], seed: 2)
        let v = random([2, length, heads * d], seed: 3)
        var causal = HostTensor(shape: [1, length, length])
        for i in 0..<length { for j in 0..<length where j > i { causal.data[i * length + j] = -.infinity } }
        for (bias, scale) in [(random([heads, length, length], seed: 4), Float(1)), (causal, 1 / Float(d).squareRoot())] {
            let direct = backend.attentionWithBias(q: q, k: k, v: v, heads: heads, scale: scale,
                                                   bias: backend.prepareAttentionBias(bias, batch: 2, heads: heads, scale: scale, widen: false))
            let widened = backend.attentionWithBias(q: q, k: k, v: v, heads: heads, scale: scale,
                                                    bias: backend.prepareAttentionBias(bias, batch: 2, heads: heads, scale: scale, widen: true))
            XCTAssertLessThan(widened.relativeError(to: direct), 1e-6)
        }
        // With a zero bias both equal the plain op.
        let zero = HostTensor(shape: [1, length, length])
        let plain = backend.attention(q: q, k: k, v: v, heads: heads, scale: 0.5, keyMask: nil)
        for widen in [false, true] {
            let out = backend.attentionWithBias(q: q, k: k, v: v, heads: heads, scale: 0.5,
                                                bias: backend.prepareAttentionBias(zero, batch: 2, heads: heads, scale: 0.5, widen: widen))
            XCTAssertLessThan(out.relativeError(to: plain), 1e-6)
        }
    }

    func testMultiplyAndQuickGELU() {
        let a = random([2, 3, 5], seed: 5)
        let b = random([2, 3, 5], seed: 6)
        let product = backend.multiply(a, b)
        XCTAssertEqual(product.shape, a.shape)
        for i in 0..<a.count { XCTAssertEqual(product.data[i], a.data[i] * b.data[i], accuracy: 1e-6) }
        let gelu = backend.quickGELU(a)
        for i in 0..<a.count {
            let x = a.data[i]
            XCTAssertEqual(gelu.data[i], x / (1 + exp(-1.702 * x)), accuracy: 1e-6)
        }
    }
}
