import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// The reference backend: fp32 on the host, plain loops, parallel over independent rows.
/// Everything else in Kiln is checked against it.
public final class CPUBackend: Backend {
    public typealias Tensor = HostTensor

    /// Worker threads for parallel loops (all online cores).
    static let threadCount: Int = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    public init() {}

    public var name: String { "cpu" }

    public func tensor(_ host: HostTensor) -> HostTensor { host }
    public func weight(_ host: HostTensor, role: WeightRole) -> HostTensor { host }
    public func host(_ tensor: HostTensor) -> HostTensor { tensor }
    public func shape(_ tensor: HostTensor) -> [Int] { tensor.shape }

    // MARK: layout

    public func reshape(_ x: HostTensor, _ shape: [Int]) -> HostTensor { x.reshaped(shape) }

    public func concat(_ parts: [HostTensor], axis: Int) -> HostTensor {
        precondition(!parts.isEmpty)
        let first = parts[0].shape
        let outer = first[..<axis].reduce(1, *)
        let inner = first[(axis + 1)...].reduce(1, *)
        for part in parts {
            precondition(part.shape.count == first.count && part.shape[..<axis] == first[..<axis]
                && part.shape[(axis + 1)...] == first[(axis + 1)...], "concat shapes \(parts.map(\.shape)) on axis \(axis)")
        }
        var shape = first
        shape[axis] = parts.reduce(0) { $0 + $1.shape[axis] }
        var data: [Float] = []
        data.reserveCapacity(shape.reduce(1, *))
        for o in 0..<outer {
            for part in parts {
                let block = part.shape[axis] * inner
                data += part.data[(o * block)..<((o + 1) * block)]
            }
        }
        return HostTensor(shape: shape, data: data)
    }

    public func slice(_ x: HostTensor, axis: Int, _ range: Range<Int>) -> HostTensor {
        precondition(range.lowerBound >= 0 && range.upperBound <= x.shape[axis], "slice \(range) of axis \(axis) in \(x.shape)")
        let outer = x.shape[..<axis].reduce(1, *)
        let inner = x.shape[(axis + 1)...].reduce(1, *)
        var shape = x.shape
        shape[axis] = range.count
        var data: [Float] = []
        data.reserveCapacity(shape.reduce(1, *))
        for o in 0..<outer {
            let base = o * x.shape[axis] * inner
            data += x.data[(base + range.lowerBound * inner)..<(base + range.upperBound * inner)]
        }
        return HostTensor(shape: shape, data: data)
    }

    // MARK: elementwise

    func map(_ x: HostTensor, _ f: (Float) -> Float) -> HostTensor {
        HostTensor(shape: x.shape, data: x.data.map(f))
    }

    func zip(_ a: HostTensor, _ b: HostTensor, _ f: (Float, Float) -> Float) -> HostTensor {
        precondition(a.shape == b.shape, "shapes \(a.shape) and \(b.shape) differ")
        return HostTensor(shape: a.shape, data: (0..<a.count).map { f(a.data[$0], b.data[$0]) })
    }

    public func add(_ a: HostTensor, _ b: HostTensor) -> HostTensor { zip(a, b, +) }

    public func addScaled(_ x: HostTensor, _ y: HostTensor, alpha: Float) -> HostTensor { zip(x, y) { $0 + alpha * $1 } }

    public func affine(_ x: HostTensor, scale a: Float, shift b: Float) -> HostTensor { map(x) { $0 * a + b } }

    public func activation(_ x: HostTensor, _ kind: Activation) -> HostTensor {
        switch kind {
        case .none: return x
        case .silu: return map(x, CPUBackend.silu)
        case .geluTanh: return map(x, CPUBackend.geluTanh)
        }
    }

    static func silu(_ v: Float) -> Float { v / (1 + exp(-v)) }

    static func geluTanh(_ v: Float) -> Float {
        0.5 * v * (1 + tanh(0.797_884_560_802_865_4 * (v + 0.044715 * v * v * v)))
    }

    /// Applies `f(value, vectorValue)` where the `[B, C]` vector broadcasts over the middle dimensions of `x`.
    func broadcastChannels(_ x: HostTensor, _ vectors: [HostTensor], _ f: (Float, [Float]) -> Float) -> HostTensor {
        let batch = x.shape[0]
        let channels = x.shape[x.shape.count - 1]
        let rowsPerBatch = x.count / max(1, batch * channels)
        for v in vectors { precondition(v.count == batch * channels, "vector \(v.shape) does not broadcast over \(x.shape)") }
        var out = x.data
        var lane = [Float](repeating: 0, count: vectors.count)
        for b in 0..<batch {
            for r in 0..<rowsPerBatch {
                let base = (b * rowsPerBatch + r) * channels
                for c in 0..<channels {
                    for (j, v) in vectors.enumerated() { lane[j] = v.data[b * channels + c] }
                    out[base + c] = f(x.data[base + c], lane)
                }
            }
        }
        return HostTensor(shape: x.shape, data: out)
    }

    public func modulate(_ x: HostTensor, shift: HostTensor, scale: HostTensor) -> HostTensor {
        broadcastChannels(x, [shift, scale]) { $0 * (1 + $1[1]) + $1[0] }
    }

    public func scaleChannels(_ x: HostTensor, by gate: HostTensor) -> HostTensor {
        broadcastChannels(x, [gate]) { $0 * $1[0] }
    }

    // MARK: linear algebra

    public func linear(_ x: HostTensor, weight: HostTensor, bias: HostTensor?, activation kind: Activation) -> HostTensor {
        let k = x.shape.last!
        let n = weight.shape[0]
        precondition(weight.shape == [n, k], "linear: input \(x.shape) vs weight \(weight.shape)")
        if let bias { precondition(bias.count == n, "linear: bias \(bias.shape) for \(n) outputs") }
        let rows = x.count / k
        var out = [Float](repeating: 0, count: rows * n)
        x.data.withUnsafeBufferPointer { xp in
            weight.data.withUnsafeBufferPointer { wp in
                out.withUnsafeMutableBufferPointer { op in
                    let op = op
                    // Rows in parallel, or (few rows, as for conditioning vectors) blocks of output columns.
                    let columnBlocks = rows >= CPUBackend.threadCount ? 1 : min(n, CPUBackend.threadCount * 4)
                    let blockWidth = (n + columnBlocks - 1) / columnBlocks
                    parallelFor(rows * columnBlocks) { item in
                        let (r, block) = (item / columnBlocks, item % columnBlocks)
                        let row = xp.baseAddress! + r * k
                        for j in (block * blockWidth)..<min(n, (block + 1) * blockWidth) {
                            var value = dot(row, wp.baseAddress! + j * k, k)
                            if let bias { value += bias.data[j] }
                            switch kind {
                            case .none: break
                            case .silu: value = CPUBackend.silu(value)
                            case .geluTanh: value = CPUBackend.geluTanh(value)
                            }
                            op[r * n + j] = value
                        }
                    }
                }
            }
        }
        return HostTensor(shape: Array(x.shape.dropLast()) + [n], data: out)
    }

    public func attention(q: HostTensor, k: HostTensor, v: HostTensor, heads: Int, scale: Float?, keyMask: HostTensor?) -> HostTensor {
        let keys = k.shape[1]
        return attention(q: q, k: k, v: v, heads: heads, scale: scale ?? 1 / Float(q.shape[2] / heads).squareRoot()) { b, _, _, j in
            keyMask.map { $0.data[b * keys + j] != 0 ? 0 : -.infinity } ?? 0
        }
    }

    /// Attention whose scores get an additive bias `[H, Lq, Lk]` (or `[1, Lq, Lk]` for all heads) before the softmax:
    /// T5's relative positions, CLIP's causal mask (-infinity masks).
    public func attention(q: HostTensor, k: HostTensor, v: HostTensor, heads: Int, scale: Float, bias: HostTensor) -> HostTensor {
        let (queries, keys) = (q.shape[1], k.shape[1])
        precondition(bias.shape == [heads, queries, keys] || bias.shape == [1, queries, keys], "attention bias \(bias.shape)")
        let shared = bias.shape[0] == 1
        return attention(q: q, k: k, v: v, heads: heads, scale: scale) { _, h, i, j in
            bias.data[((shared ? 0 : h) * queries + i) * keys + j]
        }
    }

    /// `softmax(scale · q·kᵀ + scoreBias(b, h, i, j)) · v` per head; -infinity excludes a key.
    func attention(q: HostTensor, k: HostTensor, v: HostTensor, heads: Int, scale softmaxScale: Float,
                   scoreBias: (Int, Int, Int, Int) -> Float) -> HostTensor {
        let (batch, queries, width) = (q.shape[0], q.shape[1], q.shape[2])
        let keys = k.shape[1]
        precondition(k.shape == [batch, keys, width] && v.shape == k.shape, "attention: q \(q.shape) k \(k.shape) v \(v.shape)")
        let d = width / heads
        // Gather K and V per head so each query reads contiguous rows.
        var kh = [Float](repeating: 0, count: k.count)
        var vh = [Float](repeating: 0, count: v.count)
        for b in 0..<batch {
            for j in 0..<keys {
                for h in 0..<heads {
                    let src = (b * keys + j) * width + h * d
                    let dst = ((b * heads + h) * keys + j) * d
                    for e in 0..<d {
                        kh[dst + e] = k.data[src + e]
                        vh[dst + e] = v.data[src + e]
                    }
                }
            }
        }
        var out = [Float](repeating: 0, count: q.count)
        q.data.withUnsafeBufferPointer { qp in
            kh.withUnsafeBufferPointer { kp in
                vh.withUnsafeBufferPointer { vp in
                    out.withUnsafeMutableBufferPointer { op in
                        let op = op
                        parallelFor(batch * heads * queries) { item in
                            let i = item % queries
                            let h = (item / queries) % heads
                            let b = item / (queries * heads)
                            let query = qp.baseAddress! + (b * queries + i) * width + h * d
                            let keyBase = kp.baseAddress! + (b * heads + h) * keys * d
                            let valueBase = vp.baseAddress! + (b * heads + h) * keys * d
                            var scores = [Float](repeating: -.infinity, count: keys)
                            var maximum = -Float.infinity
                            for j in 0..<keys {
                                let bias = scoreBias(b, h, i, j)
                                if bias == -.infinity { continue }
                                scores[j] = dot(query, keyBase + j * d, d) * softmaxScale + bias
                                maximum = max(maximum, scores[j])
                            }
                            var total: Float = 0
                            for j in 0..<keys {
                                scores[j] = scores[j] == -.infinity ? 0 : exp(scores[j] - maximum)
                                total += scores[j]
                            }
                            let target = op.baseAddress! + (b * queries + i) * width + h * d
                            for e in 0..<d { target[e] = 0 }
                            for j in 0..<keys where scores[j] != 0 {
                                let p = scores[j] / total
                                let value = valueBase + j * d
                                for e in 0..<d { target[e] += p * value[e] }
                            }
                        }
                    }
                }
            }
        }
        return HostTensor(shape: q.shape, data: out)
    }

    // MARK: normalization

    public func layerNorm(_ x: HostTensor, weight: HostTensor?, bias: HostTensor?, eps: Float) -> HostTensor {
        let c = x.shape.last!
        var out = x.data
        out.withUnsafeMutableBufferPointer { op in
            let op = op
            parallelFor(x.count / c, minimumChunk: 16) { r in
                let row = op.baseAddress! + r * c
                var mean: Float = 0
                for i in 0..<c { mean += row[i] }
                mean /= Float(c)
                var variance: Float = 0
                for i in 0..<c { variance += (row[i] - mean) * (row[i] - mean) }
                let inverse = 1 / (variance / Float(c) + eps).squareRoot()
                for i in 0..<c {
                    var value = (row[i] - mean) * inverse
                    if let weight { value *= weight.data[i] }
                    if let bias { value += bias.data[i] }
                    row[i] = value
                }
            }
        }
        return HostTensor(shape: x.shape, data: out)
    }

    public func rmsNorm(_ x: HostTensor, weight: HostTensor, eps: Float) -> HostTensor {
        let c = x.shape.last!
        precondition(weight.count == c, "rmsNorm: weight \(weight.shape) for \(c) channels")
        var out = x.data
        out.withUnsafeMutableBufferPointer { op in
            let op = op
            parallelFor(x.count / c, minimumChunk: 16) { r in
                let row = op.baseAddress! + r * c
                var meanSquare: Float = 0
                for i in 0..<c { meanSquare += row[i] * row[i] }
                let inverse = 1 / (meanSquare / Float(c) + eps).squareRoot()
                for i in 0..<c { row[i] = row[i] * inverse * weight.data[i] }
            }
        }
        return HostTensor(shape: x.shape, data: out)
    }

    public func groupNorm(_ x: HostTensor, groups: Int, weight: HostTensor, bias: HostTensor, eps: Float, silu: Bool) -> HostTensor {
        let c = x.shape.last!
        let batch = x.shape[0]
        let pixels = x.count / (batch * c)
        precondition(c % groups == 0, "groupNorm: \(c) channels in \(groups) groups")
        let width = c / groups
        var out = x.data
        out.withUnsafeMutableBufferPointer { op in
            let op = op
            parallelFor(batch * groups) { item in
                let (b, g) = (item / groups, item % groups)
                let base = op.baseAddress! + b * pixels * c + g * width
                var sum = 0.0
                for p in 0..<pixels { for i in 0..<width { sum += Double(base[p * c + i]) } }
                let mean = sum / Double(pixels * width)
                var squares = 0.0
                for p in 0..<pixels { for i in 0..<width { let d = Double(base[p * c + i]) - mean; squares += d * d } }
                let inverse = 1 / (squares / Double(pixels * width) + Double(eps)).squareRoot()
                for p in 0..<pixels {
                    for i in 0..<width {
                        let channel = g * width + i
                        var value = Float((Double(base[p * c + i]) - mean) * inverse) * weight.data[channel] + bias.data[channel]
                        if silu { value = CPUBackend.silu(value) }
                        base[p * c + i] = value
                    }
                }
            }
        }
        return HostTensor(shape: x.shape, data: out)
    }

    // MARK: position

    public func rope(_ x: HostTensor, _ table: RotaryTable<HostTensor>) -> HostTensor {
        let (batch, length, heads, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        precondition(table.cos.shape == [length, d] && table.sin.shape == [length, d], "rope: table \(table.cos.shape) for \(x.shape)")
        var out = x.data
        for b in 0..<batch {
            for l in 0..<length {
                for h in 0..<heads {
                    let base = ((b * length + l) * heads + h) * d
                    for i in stride(from: 0, to: d, by: 2) {
                        let (real, imaginary) = (x.data[base + i], x.data[base + i + 1])
                        out[base + i] = real * table.cos.data[l * d + i] - imaginary * table.sin.data[l * d + i]
                        out[base + i + 1] = imaginary * table.cos.data[l * d + i + 1] + real * table.sin.data[l * d + i + 1]
                    }
                }
            }
        }
        return HostTensor(shape: x.shape, data: out)
    }

    // MARK: images

    public func conv2d(_ x: HostTensor, weight: HostTensor, bias: HostTensor?, stride: Int, padding: Padding) -> HostTensor {
        let (batch, height, width, inC) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (outC, kh, kw) = (weight.shape[0], weight.shape[1], weight.shape[2])
        precondition(weight.shape[3] == inC, "conv2d: input \(x.shape) vs weight \(weight.shape)")
        let outH = (height + padding.top + padding.bottom - kh) / stride + 1
        let outW = (width + padding.left + padding.right - kw) / stride + 1
        var out = [Float](repeating: 0, count: batch * outH * outW * outC)
        x.data.withUnsafeBufferPointer { xp in
            weight.data.withUnsafeBufferPointer { wp in
                out.withUnsafeMutableBufferPointer { op in
                    let op = op
                    parallelFor(batch * outH) { item in
                        let (b, oy) = (item / outH, item % outH)
                        for ox in 0..<outW {
                            let target = op.baseAddress! + ((b * outH + oy) * outW + ox) * outC
                            for o in 0..<outC { target[o] = bias?.data[o] ?? 0 }
                            for ky in 0..<kh {
                                let iy = oy * stride + ky - padding.top
                                if iy < 0 || iy >= height { continue }
                                for kx in 0..<kw {
                                    let ix = ox * stride + kx - padding.left
                                    if ix < 0 || ix >= width { continue }
                                    let pixel = xp.baseAddress! + ((b * height + iy) * width + ix) * inC
                                    for o in 0..<outC {
                                        target[o] += dot(pixel, wp.baseAddress! + ((o * kh + ky) * kw + kx) * inC, inC)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return HostTensor(shape: [batch, outH, outW, outC], data: out)
    }

    public func upsampleNearest2x(_ x: HostTensor) -> HostTensor {
        let (batch, height, width, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        var out = [Float](repeating: 0, count: x.count * 4)
        for b in 0..<batch {
            for y in 0..<(2 * height) {
                for xx in 0..<(2 * width) {
                    let src = ((b * height + y / 2) * width + xx / 2) * c
                    let dst = ((b * 2 * height + y) * 2 * width + xx) * c
                    for i in 0..<c { out[dst + i] = x.data[src + i] }
                }
            }
        }
        return HostTensor(shape: [batch, 2 * height, 2 * width, c], data: out)
    }
}
