import CKilnCUDA
import KilnBackends
import KilnCore

/// A captured CUDA graph with the pool blocks that hold its intermediates; they return to the pool with it.
final class CapturedGraph: DeviceGraph {
    let graph: CUDAGraph
    let stream: CUDAStream
    let pool: DevicePool
    let blocks: [Int: [CUdeviceptr]]

    init(graph: CUDAGraph, stream: CUDAStream, pool: DevicePool, blocks: [Int: [CUdeviceptr]]) {
        (self.graph, self.stream, self.pool, self.blocks) = (graph, stream, pool, blocks)
    }

    func replay() throws { try graph.launch(on: stream) }

    deinit { pool.returnBlocks(blocks) }
}

extension CUDABackend {
    /// The most device memory the pool has held at once.
    public var memoryReservedBytes: Int? { pool.peakReservedBytes }

    public var memoryGeneration: Int { pool.generation }

    /// Frees the pool's cached blocks.
    public func releaseCachedMemory() throws {
        try synchronize()
        pool.trim()
    }

    /// Captures `body` on the backend's stream. Run the same work eagerly once before (kernels compiled, GEMMs tuned,
    /// the pool sized): nothing inside may synchronize. Allocations are served by the pool's free blocks, or from the
    /// driver where it has none (`DevicePool.captureAllocations` counts those).
    public func capture(_ body: @escaping () throws -> Void) throws -> DeviceGraph? {
        pool.beginCapture()
        let graph: CUDAGraph
        do {
            graph = try CUDAGraph(capturing: stream, body)
        } catch {
            pool.returnBlocks(pool.endCapture())
            throw error
        }
        return CapturedGraph(graph: graph, stream: stream, pool: pool, blocks: pool.endCapture())
    }

    /// Uploads `host` into `tensor`'s storage (BF16), stream-ordered before later work.
    public func overwrite(_ tensor: CUDATensor, with host: HostTensor) throws {
        guard tensor.shape == host.shape, tensor.type == .bf16 else {
            throw KilnError.invalidArgument("overwrite: \(host.shape) into a \(tensor.type) tensor of \(tensor.shape)")
        }
        tensor.storage.derived = tensor.storage.derived.filter { $0.value.captureSerial != 0 }  // eager ones: from the old values
        try staging.uploadBF16(host.data, to: tensor.pointer, stream: stream)
    }
}
