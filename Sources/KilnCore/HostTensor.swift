/// A dense fp32 tensor in host memory, row-major (the last dimension is contiguous).
///
/// This is the exchange format between files, the pipeline and backends: every backend
/// can take one in and give one back.
public struct HostTensor: Equatable, Sendable {
    public var shape: [Int]
    public var data: [Float]

    /// A tensor with the given shape and values; `data.count` must equal the product of `shape`.
    public init(shape: [Int], data: [Float]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        precondition(shape.reduce(1, *) == data.count, "shape \(shape) does not match \(data.count) values")
        self.shape = shape
        self.data = data
    }

    /// A tensor filled with one value.
    public init(shape: [Int], repeating value: Float = 0) {
        self.init(shape: shape, data: [Float](repeating: value, count: shape.reduce(1, *)))
    }

    /// Number of elements.
    public var count: Int { data.count }

    /// The same values seen with another shape of equal element count.
    public func reshaped(_ newShape: [Int]) -> HostTensor {
        HostTensor(shape: newShape, data: data)
    }

    /// Permutes the dimensions: result dimension `i` is source dimension `order[i]`.
    public func permuted(_ order: [Int]) -> HostTensor {
        precondition(order.sorted() == Array(shape.indices), "bad permutation \(order) for rank \(shape.count)")
        let newShape = order.map { shape[$0] }
        var sourceStrides = [Int](repeating: 1, count: shape.count)
        for axis in stride(from: shape.count - 2, through: 0, by: -1) {
            sourceStrides[axis] = sourceStrides[axis + 1] * shape[axis + 1]
        }
        let strides = order.map { sourceStrides[$0] }
        let rank = newShape.count
        guard rank > 0, !data.isEmpty else { return HostTensor(shape: newShape, data: data) }
        // Row by row of the result: the source offset of a row from the outer indices, then a strided inner loop.
        let inner = newShape[rank - 1], innerStride = strides[rank - 1]
        var result = [Float](repeating: 0, count: data.count)
        var index = [Int](repeating: 0, count: rank)
        data.withUnsafeBufferPointer { source in
            result.withUnsafeMutableBufferPointer { target in
                for row in 0..<(data.count / inner) {
                    var offset = 0
                    for axis in 0..<(rank - 1) { offset += index[axis] * strides[axis] }
                    let start = row * inner
                    for j in 0..<inner { target[start + j] = source[offset + j * innerStride] }
                    var axis = rank - 2
                    while axis >= 0 {
                        index[axis] += 1
                        if index[axis] < newShape[axis] { break }
                        index[axis] = 0
                        axis -= 1
                    }
                }
            }
        }
        return HostTensor(shape: newShape, data: result)
    }

    /// Relative error ‖a − b‖₂ / ‖b‖₂ of `self` against a reference.
    public func relativeError(to reference: HostTensor) -> Double {
        precondition(shape == reference.shape, "shape \(shape) vs reference \(reference.shape)")
        var difference = 0.0
        var norm = 0.0
        for i in 0..<data.count {
            let d = Double(data[i]) - Double(reference.data[i])
            difference += d * d
            norm += Double(reference.data[i]) * Double(reference.data[i])
        }
        return norm == 0 ? difference.squareRoot() : (difference / norm).squareRoot()
    }
}

extension HostTensor {
    /// `count` copies stacked along the leading dimension (a `[1, …]` prompt for a batch, pooled text for every step).
    public func repeated(_ count: Int) -> HostTensor {
        if count == 1 { return self }
        var values: [Float] = []
        values.reserveCapacity(data.count * count)
        for _ in 0..<count { values.append(contentsOf: data) }
        return HostTensor(shape: [shape[0] * count] + shape.dropFirst(), data: values)
    }

    /// The items of the leading (batch) dimension, each without it.
    public func batchItems() -> [HostTensor] {
        let itemShape = Array(shape.dropFirst())
        let size = itemShape.reduce(1, *)
        return (0..<shape[0]).map { HostTensor(shape: itemShape, data: Array(data[($0 * size)..<(($0 + 1) * size)])) }
    }
}
