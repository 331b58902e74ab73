import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// How one run of repeated work went: op by op, captured into a graph (then replayed once), or replayed from an
/// earlier capture.
public enum GraphRoute: String, Sendable {
    case eager
    case captured
    case replayed
}

/// Work that repeats with the same shapes (a text encoder's layers, the denoising loop, the VAE decoder), run as one
/// graph where the backend has graphs. A key's first run is eager: kernels compile, GEMMs tune, the memory pool grows
/// to what the work needs. Its next run is captured, if the pool has not changed since (`Backend.memoryGeneration`),
/// so the capture finds the blocks it needs (it allocates only for results a caller still holds). Later runs write their inputs into the captured input tensors
/// and replay. What is kept (graphs with their tensors, eager runs' generations) is kept for the `limit` most recently
/// used keys.
public final class CapturedGraphs<Key: Hashable, B: Backend> {
    struct Captured {
        var inputs: [B.Tensor?]
        var state: Any?
        var output: B.Tensor
        var graph: DeviceGraph
    }
    private var captured: [Key: Captured] = [:]
    /// The memory generation at each key's latest eager run.
    private var eagerRuns: [Key: Int] = [:]
    private var order: [Key] = []
    /// What the work is, for notes on stderr.
    public let name: String
    public let limit: Int
    /// Off: every run is eager.
    public var enabled = true
    /// The route the last `run` took.
    public private(set) var lastRoute = GraphRoute.eager

    public init(name: String, limit: Int = 2) {
        precondition(limit >= 1, "CapturedGraphs keeps at least one key")
        (self.name, self.limit) = (name, limit)
    }

    /// Drops every graph and what it holds (their memory goes back to the backend's pool).
    public func forget() {
        (captured, eagerRuns, order) = ([:], [:], [])
    }

    /// Makes `key` the most recently used, dropping what is kept for keys beyond `limit`.
    private func use(_ key: Key) {
        order.removeAll { $0 == key }
        order.append(key)
        while order.count > limit {
            let old = order.removeFirst()
            (captured[old], eagerRuns[old]) = (nil, nil)
        }
    }

    /// `work` on `inputs` (uploaded here; nil stays nil) by whichever route applies; returns its output, which for a
    /// graph is the graph's own output tensor (the next replay rewrites it). `state` makes device tensors the work
    /// reads besides its inputs (before an eager run or a capture; a graph keeps them). `work` is told whether it is
    /// being captured (then it must not touch the host). `beforeGraph` runs once the inputs are on the device and a
    /// graph is about to run (after a replay or capture that fails, the eager run follows it, so a caller's progress may
    /// restart).
    public func run(_ key: Key, inputs: [HostTensor?], on backend: B, state: () -> Any? = { nil }, beforeGraph: () -> Void = {},
                    _ work: @escaping (_ inputs: [B.Tensor?], _ state: Any?, _ capturing: Bool) -> B.Tensor) -> B.Tensor {
        use(key)
        if enabled, let known = captured[key] {
            do {
                for (tensor, host) in zip(known.inputs, inputs) {
                    if let tensor, let host { try backend.overwrite(tensor, with: host) }
                }
                beforeGraph()
                try known.graph.replay()
                lastRoute = .replayed
                return known.output
            } catch {
                fputs("kiln: note: \(name) runs op by op: its graph replay failed (\(error))\n", stderr)
                captured[key] = nil
            }
        }
        let tensors = inputs.map { $0.map(backend.tensor) }
        let made = state()
        if enabled, eagerRuns[key] == backend.memoryGeneration {
            var output: B.Tensor?
            do {
                if let graph = try backend.capture({ output = work(tensors, made, true) }), let output {
                    captured[key] = Captured(inputs: tensors, state: made, output: output, graph: graph)
                    beforeGraph()
                    try graph.replay()
                    lastRoute = .captured
                    return output
                }
            } catch {
                fputs("kiln: note: \(name) runs op by op: its graph capture failed (\(error))\n", stderr)
                captured[key] = nil
            }
        }
        let output = work(tensors, made, false)
        eagerRuns[key] = backend.memoryGeneration
        lastRoute = .eager
        return output
    }
}
