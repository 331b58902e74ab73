/// Independent work side by side in captured graphs: `concurrently` forks a second stream off the main one and joins
/// it back, so short work (FLUX's 512 text tokens) fills the SMs that long GEMMs (its 4096 image tokens) leave idle.
extension CUDABackend {
    /// The second stream of `concurrently`, with a GEMM workspace of its own and the events that fork it off the main
    /// stream and join it back.
    struct SideStream {
        let stream: CUDAStream
        let workspace: DeviceBuffer
        let fork: CUDAEvent
        let join: CUDAEvent

        init() throws {
            stream = try CUDAStream()
            workspace = try DeviceBuffer(bytes: CuBLASLt.workspaceBytes)
            fork = try CUDAEvent(timing: false)
            join = try CUDAEvent(timing: false)
        }
    }

    /// While a graph is captured (and `streams` is 2), `first` is enqueued on the main stream and `second` on the side
    /// stream, forked off the main one before and joined back after, so the graph runs them side by side. Eager work
    /// runs both in turn on the main stream: it tunes and profiles, which time ops alone. With two streams, blocks freed
    /// inside are reused only after the join, in eager runs too, so the eager run that sizes the pool needs the memory
    /// the capture will.
    public func concurrently<A, B>(_ first: () -> A, _ second: () -> B) -> (A, B) {
        // Nested in another region: in turn, inside the enclosing one.
        guard streams > 1, !pool.isDeferring else { return (first(), second()) }
        if side == nil, !pool.isCapturing { side = attempt { try SideStream() } }
        pool.beginDeferring()
        defer { pool.endDeferring() }
        guard pool.isCapturing, let side else { return (first(), second()) }
        return attempt {
            // Under capture, a stream that waits on an event recorded in the capturing stream joins the capture; the
            // main stream's wait at the end brings its work back into the graph before the capture ends.
            try side.fork.record(stream)
            try side.stream.wait(for: side.fork)
            let a = first()
            try send(to: side.stream, workspace: side.workspace)
            let b = second()
            try send(to: stream, workspace: lt.workspace)
            try side.join.record(side.stream)
            try stream.wait(for: side.join)
            forkedRegions += 1
            return (a, b)
        }
    }

    /// Makes later work go to `target`: kernels, copies, pool poison fills, cuDNN, and GEMMs with `workspace`.
    func send(to target: CUDAStream, workspace: DeviceBuffer) throws {
        (currentStream, gemmWorkspace, pool.stream) = (target, workspace, target)
        try cudnnState?.library?.use(target)
    }
}
