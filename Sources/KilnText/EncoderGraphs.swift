#if canImport(Glibc)
import Glibc
#endif
import KilnBackends
import KilnCore

/// What a text encoder keeps on its backend between prompts, by shape key (sequence length and faults): constant
/// tensors (position biases, masks), and its layer stack as a graph. A key's first run is eager; the second is captured
/// as one graph if the backend's memory pool still holds what the eager run used (as the pipeline does for its loop and
/// decoder); later runs replay it with the new embedded tokens. What is kept for the `limit` most recently used keys
/// stays; older keys' tensors and graphs go.
final class EncoderGraphs<B: Backend> {
    struct Captured {
        var input: B.Tensor
        var output: B.Tensor
        var graph: DeviceGraph
    }
    private var constants: [[Int]: B.Tensor] = [:]
    /// The memory generation at each key's eager run.
    private var eagerRuns: [[Int]: Int] = [:]
    private var captured: [[Int]: Captured] = [:]
    private var order: [[Int]] = []
    /// The encoder, for messages.
    let name: String
    let limit: Int

    init(name: String, limit: Int = 2) { (self.name, self.limit) = (name, limit) }

    /// Makes `key` the most recently used, dropping everything kept for keys beyond `limit`.
    private func use(_ key: [Int]) {
        order.removeAll { $0 == key }
        order.append(key)
        while order.count > limit {
            let old = order.removeFirst()
            (constants[old], eagerRuns[old], captured[old]) = (nil, nil, nil)
        }
    }

    /// The constant tensor for `key`, made by `make` on first use.
    func constant(_ key: [Int], _ backend: B, make: () -> HostTensor) -> B.Tensor {
        use(key)
        if let known = constants[key] { return known }
        let made = backend.tensor(make())
        constants[key] = made
        return made
    }

    /// `stack` applied to `input` on the device, by whichever of the three routes applies. A replay returns the graph's
    /// own output tensor, which the next replay rewrites.
    func run(_ key: [Int], input host: HostTensor, _ backend: B, _ stack: @escaping (B.Tensor) -> B.Tensor) -> B.Tensor {
        use(key)
        if let known = captured[key], (try? backend.overwrite(known.input, with: host)) != nil, (try? known.graph.replay()) != nil {
            return known.output
        }
        let input = backend.tensor(host)
        if eagerRuns[key] == backend.memoryGeneration {
            var output: B.Tensor?
            do {
                if let graph = try backend.capture({ output = stack(input) }), let output {
                    try graph.replay()
                    captured[key] = Captured(input: input, output: output, graph: graph)
                    return output
                }
            } catch {
                fputs("kiln: note: \(name) runs op by op: its graph capture failed (\(error))\n", stderr)
            }
        }
        let output = stack(input)
        eagerRuns[key] = backend.memoryGeneration
        return output
    }
}
