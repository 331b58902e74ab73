import KilnBackends
import KilnCore

/// What a text encoder keeps on its backend between prompts, by shape key (sequence length and faults): constant
/// tensors (position biases, masks) and its layer stack as a graph (`CapturedGraphs`: eager on a key's first run,
/// captured on the second, replayed with the new embedded tokens after that), both for the `limit` most recently used
/// keys.
final class EncoderGraphs<B: Backend> {
    private var constants: [[Int]: B.Tensor] = [:]
    private var order: [[Int]] = []
    let graphs: CapturedGraphs<[Int], B>

    init(name: String, limit: Int = 2) { graphs = CapturedGraphs(name: name, limit: limit) }

    /// The constant tensor for `key`, made by `make` on first use.
    func constant(_ key: [Int], _ backend: B, make: () -> HostTensor) -> B.Tensor {
        order.removeAll { $0 == key }
        order.append(key)
        while order.count > graphs.limit { constants[order.removeFirst()] = nil }
        if let known = constants[key] { return known }
        let made = backend.tensor(make())
        constants[key] = made
        return made
    }

    /// `stack` applied to `input` on the device. A replay returns the graph's own output tensor, which the next replay
    /// rewrites.
    func run(_ key: [Int], input host: HostTensor, _ backend: B, _ stack: @escaping (B.Tensor) -> B.Tensor) -> B.Tensor {
        // The graph keeps the key's constant: it reads it on every replay.
        graphs.run(key, inputs: [host], on: backend, state: { self.constants[key] }) { inputs, _, _ in stack(inputs[0]!) }
    }
}
