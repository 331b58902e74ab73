import KilnBackends

/// Shift, scale and gate vectors `[B, hidden]` for one adaLN-modulated sub-block.
public struct ModulationVectors<Tensor> {
    public var shift: Tensor
    public var scale: Tensor
    public var gate: Tensor

    /// The same vectors for rows `range` of a batch computed for several steps at once.
    public func rows<B: Backend>(_ range: Range<Int>, _ backend: B) -> ModulationVectors where B.Tensor == Tensor {
        ModulationVectors(shift: backend.slice(shift, axis: 0, range), scale: backend.slice(scale, axis: 0, range),
                          gate: backend.slice(gate, axis: 0, range))
    }
}

/// adaLN modulation: `Linear(SiLU(vec))` split into `count` triples of shift, scale and gate.
public struct Modulation<B: Backend> {
    let linear: Linear<B>
    let count: Int

    init(_ loader: WeightLoader<B>, hidden: Int, count: Int) throws {
        linear = try loader.linear("lin", in: hidden, out: 3 * count * hidden)
        self.count = count
    }

    func callAsFunction(_ vec: B.Tensor, _ backend: B) -> [ModulationVectors<B.Tensor>] {
        let parts = backend.chunk(linear(backend.activation(vec, .silu), backend), 3 * count)
        return (0..<count).map { ModulationVectors(shift: parts[3 * $0], scale: parts[3 * $0 + 1], gate: parts[3 * $0 + 2]) }
    }
}
