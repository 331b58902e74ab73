import KilnCore

/// Device time per operation of eager (uncaptured) work, from a pair of CUDA events around each kernel launch,
/// GEMM and cuDNN call. Switched on with `KILN_PROFILE=1`; `kiln bench` prints and saves the table. The events add a
/// little host time per op, so the step figures of a profiled run are not the ones to report.
public final class OpProfile: @unchecked Sendable {
    struct Span {
        let name: String
        let start: CUDAEvent
        let end: CUDAEvent
    }

    /// One row of the report.
    public struct Entry: Sendable {
        public let name: String
        public let calls: Int
        public let milliseconds: Double
    }

    private var spans: [Span] = []
    /// Spans kept until `report` (two events each); ops past it are not timed.
    static let limit = 200_000

    public init() {}

    /// Runs `body` between two events recorded on `stream` under `name`.
    func measure<T>(_ name: String, stream: CUDAStream, _ body: () throws -> T) throws -> T {
        guard spans.count < OpProfile.limit else { return try body() }
        let start = try CUDAEvent(), end = try CUDAEvent()
        try start.record(stream)
        let result = try body()
        try end.record(stream)
        spans.append(Span(name: name, start: start, end: end))
        return result
    }

    /// Totals per name, largest first (waits for the recorded work), and forgets the spans.
    public func report() throws -> [Entry] {
        var totals: [String: (calls: Int, ms: Double)] = [:]
        for span in spans {
            try span.end.synchronize()
            let ms = Double(try span.end.milliseconds(since: span.start))
            totals[span.name, default: (0, 0)].calls += 1
            totals[span.name, default: (0, 0)].ms += ms
        }
        spans.removeAll()
        return totals.map { Entry(name: $0.key, calls: $0.value.calls, milliseconds: $0.value.ms) }
            .sorted { $0.milliseconds > $1.milliseconds }
    }
}
