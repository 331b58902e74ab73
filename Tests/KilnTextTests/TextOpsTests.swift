import KilnBackends
import KilnCore
import KilnText
import XCTest

/// Biased attention on the CPU against a direct evaluation of its formula, and the composed elementwise helpers.
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

    /// softmax(scale · q·kᵀ + bias[h]) · v, one output element at a time in Double.
    func expected(_ q: HostTensor, _ k: HostTensor, _ v: HostTensor, heads: Int, scale: Float, bias: HostTensor) -> HostTensor {
        let (batch, length, width) = (q.shape[0], q.shape[1], q.shape[2])
        let d = width / heads
        var out = HostTensor(shape: q.shape)
        for b in 0..<batch {
            for h in 0..<heads {
                let biasHead = bias.shape[0] == 1 ? 0 : h
                for i in 0..<length {
                    let logits = (0..<length).map { j -> Double in
                        var dot = 0.0
                        for c in 0..<d { dot += Double(q.data[(b * length + i) * width + h * d + c]) * Double(k.data[(b * length + j) * width + h * d + c]) }
                        return Double(scale) * dot + Double(bias.data[(biasHead * length + i) * length + j])
                    }
                    let top = logits.max()!
                    let weights = logits.map { exp($0 - top) }
                    let total = weights.reduce(0, +)
                    for c in 0..<d {
                        var sum = 0.0
                        for j in 0..<length { sum += weights[j] / total * Double(v.data[(b * length + j) * width + h * d + c]) }
                        out.data[(b * length + i) * width + h * d + c] = Float(sum)
                    }
                }
            }
        }
        return out
    }

    func testBiasedAttentionFollowsItsFormula() {
        let (length, heads, d) = (7, 3, 4)
        let q = random([2, length, heads * d], seed: 1)
        let k = random([2, length, heads * d], seed: 2)
        let v = random([2, length, heads * d], seed: 3)
        var causal = HostTensor(shape: [1, length, length])
        for i in 0..<length { for j in 0..<length where j > i { causal.data[i * length + j] = -.infinity } }
        for (bias, scale) in [(random([heads, length, length], seed: 4), Float(1)), (causal, 1 / Float(d).squareRoot())] {
            let out = backend.attention(q: q, k: k, v: v, heads: heads, scale: scale, bias: bias)
            XCTAssertLessThan(out.relativeError(to: expected(q, k, v, heads: heads, scale: scale, bias: bias)), 1e-6)
        }
        // With a zero bias it equals the plain op.
        let zero = HostTensor(shape: [1, length, length])
        let plain = backend.attention(q: q, k: k, v: v, heads: heads, scale: 0.5, keyMask: nil)
        XCTAssertLessThan(backend.attention(q: q, k: k, v: v, heads: heads, scale: 0.5, bias: zero).relativeError(to: plain), 1e-6)
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

    /// T5's gated feed-forward op: gelu_tanh of the first half of each row times its second half.
    func testGatedGELUFollowsItsFormula() {
        let x = random([2, 3, 10], seed: 7)
        let out = backend.gatedGELU(x)
        XCTAssertEqual(out.shape, [2, 3, 5])
        for row in 0..<6 {
            for c in 0..<5 {
                let a = Double(x.data[row * 10 + c]), b = Double(x.data[row * 10 + 5 + c])
                let gelu = 0.5 * a * (1 + tanh(0.7978845608028654 * (a + 0.044715 * a * a * a)))
                XCTAssertEqual(Double(out.data[row * 5 + c]), gelu * b, accuracy: 1e-5)
            }
        }
    }

    /// Stacking a tensor's copies along the batch dimension; one copy is the tensor itself.
    func testRepeatedStacksCopies() {
        let x = random([1, 2, 3], seed: 8)
        XCTAssertEqual(x.repeated(1), x)
        let three = x.repeated(3)
        XCTAssertEqual(three.shape, [3, 2, 3])
        XCTAssertEqual(three.data, x.data + x.data + x.data)
    }
}
