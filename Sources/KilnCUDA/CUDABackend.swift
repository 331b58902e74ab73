import CKilnCUDA
import KilnBackends
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// Element type of a device tensor.
public enum DeviceType: Sendable {
    case bf16, fp8, f32
    public var size: Int { self == .fp8 ? 1 : self == .bf16 ? 2 : 4 }
}

/// A block of device memory from a `DevicePool`, returned to it when released.
public final class DeviceStorage: @unchecked Sendable {
    public let pointer: CUdeviceptr
    public let bytes: Int
    weak var pool: DevicePool?

    init(pointer: CUdeviceptr, bytes: Int, pool: DevicePool?) {
        (self.pointer, self.bytes, self.pool) = (pointer, bytes, pool)
    }

    deinit { pool?.release(pointer, bytes) }
}

/// A caching allocator over device memory: blocks are rounded to size classes and reused, so after the first pass
/// through a model (or a step) no further driver allocation happens: the memory a step needs is planned by its
/// first run. `poison` fills every handed-out block with NaNs (bf16 0xFFFF), for conformance tests.
public final class DevicePool: @unchecked Sendable {
    private var free: [Int: [CUdeviceptr]] = [:]
    private var owned: [DeviceBuffer] = []
    public private(set) var driverAllocations = 0
    public private(set) var reservedBytes = 0
    /// The most `reservedBytes` has been (a high-water mark; it leaves out the context, modules and cuBLASLt's workspace).
    public private(set) var peakReservedBytes = 0
    /// Changes whenever blocks leave the free lists for good (kept by a captured graph, or returned to the driver).
    public private(set) var generation = 0
    public var poison = false
    let stream: CUDAStream

    init(stream: CUDAStream) { self.stream = stream }

    /// Size class: multiples of 512 bytes up to 1 MiB, of 2 MiB above.
    public static func sizeClass(_ bytes: Int) -> Int {
        let b = max(bytes, 1)
        return b <= 1 << 20 ? (b + 511) / 512 * 512 : (b + (2 << 20) - 1) / (2 << 20) * (2 << 20)
    }

    public func allocate(_ bytes: Int) throws -> DeviceStorage {
        let size = DevicePool.sizeClass(bytes)
        let pointer: CUdeviceptr
        if capturing, var list = captureFree[size], let p = list.popLast() {
            captureFree[size] = list
            pointer = p
        } else if var list = free[size], let p = list.popLast() {
            free[size] = list
            pointer = p
        } else {
            // Stream capture cannot allocate: a graph is captured only after an eager run sized the pool.
            guard !capturing else { throw KilnError.unsupported("device memory allocation during graph capture (\(size) bytes)") }
            let buffer = try DeviceBuffer(bytes: size)
            owned.append(buffer)
            driverAllocations += 1
            reservedBytes += size
            peakReservedBytes = max(peakReservedBytes, reservedBytes)
            pointer = buffer.pointer
        }
        if poison { try DeviceCopy.fill16(pointer, value: 0xFFFF, count: size / 2, stream: stream) }
        return DeviceStorage(pointer: pointer, bytes: size, pool: self)
    }

    func release(_ pointer: CUdeviceptr, _ bytes: Int) {
        if capturing { captureFree[bytes, default: []].append(pointer) } else { free[bytes, default: []].append(pointer) }
    }

    /// Gives every cached free block back to the driver (e.g. once the text encoders are gone), so later
    /// allocations of other sizes do not stack on top of them.
    func trim() {
        let unused = Set(free.values.joined())
        owned.removeAll { unused.contains($0.pointer) }
        reservedBytes -= free.reduce(0) { $0 + $1.key * $1.value.count }
        free = [:]
        generation += 1
    }

    // MARK: graph capture
    // Blocks freed while a graph is captured hold its intermediates: they are reused within the capture, then kept
    // for the graph (which rewrites them on every replay) until it is destroyed.
    private var capturing = false
    /// Whether a graph capture is under way (nothing may synchronize or be timed).
    public var isCapturing: Bool { capturing }
    private var captureFree: [Int: [CUdeviceptr]] = [:]

    func beginCapture() {
        capturing = true
        captureFree = [:]
    }

    /// Ends a capture; returns the blocks the graph keeps.
    func endCapture() -> [Int: [CUdeviceptr]] {
        capturing = false
        generation += 1
        defer { captureFree = [:] }
        return captureFree
    }

    /// Returns a destroyed graph's blocks.
    func returnBlocks(_ blocks: [Int: [CUdeviceptr]]) {
        for (size, pointers) in blocks { free[size, default: []] += pointers }
    }
}

/// A tensor on the GPU: row-major, contiguous, BF16 for activations (FP8 with per-row fp32 scales for quantized
/// linear weights and activations).
public struct CUDATensor {
    public let storage: DeviceStorage
    public let offset: Int
    public let shape: [Int]
    public let type: DeviceType
    /// FP8: one fp32 scale per row (the last dimension is the row).
    public let scales: DeviceStorage?

    public var pointer: CUdeviceptr { storage.pointer + CUdeviceptr(offset) }
    public var count: Int { shape.reduce(1, *) }
    public var bytes: Int { count * type.size }
}

/// The CUDA backend: BF16 activations, NVRTC kernels, cuBLASLt GEMMs (BF16 or FP8), own flash attention.
public final class CUDABackend: Backend {
    public typealias Tensor = CUDATensor

    public let device: CUDADevice
    public let stream: CUDAStream
    public let compiler: KernelCompiler
    public let lt: CuBLASLt
    public let pool: DevicePool
    public let tuner: GemmTuner
    /// Precision of quantizable linear layers: weights loaded as `.quantizableLinear` are quantized to FP8 (per output
    /// channel) when `.fp8`, and their inputs per row as they enter the GEMM.
    public let linearPrecision: GemmPrecision
    /// Time the heuristic's top candidates the first time a GEMM shape is seen (else take the heuristic's first).
    public var autotune = true
    /// Which attention implementation runs: cuDNN's fused flash attention when it has an engine for the shape
    /// (no key mask), else Kiln's own kernel (`KILN_ATTENTION=own|cudnn|auto`).
    public enum AttentionKernel: String, Sendable { case auto, own, cudnn, gemm }
    public var attentionKernel: AttentionKernel = AttentionKernel(rawValue: FileIO.environment("KILN_ATTENTION") ?? "auto") ?? .auto
    /// The implementation the last `attention` call used.
    public private(set) var lastAttentionPath = ""
    private var cudnnState: (library: CuDNN?, error: String?)?
    /// How convolutions run: cuDNN when it has an engine (`KILN_CONV=cudnn|gemm|auto`), else im2col + cuBLASLt.
    public enum ConvolutionKernel: String, Sendable { case auto, cudnn, gemm }
    public var convolutionKernel: ConvolutionKernel = ConvolutionKernel(rawValue: FileIO.environment("KILN_CONV") ?? "auto") ?? .auto
    public private(set) var lastConvolutionPath = ""
    private var modules: [String: KernelModule] = [:]
    private var plans: [GemmKey: GemmPlan] = [:]
    /// Seconds spent compiling or loading kernels, per family.
    public private(set) var kernelLoadSeconds: [String: Double] = [:]
    /// Per-op device times of eager work (`KILN_PROFILE=1`).
    public let profile: OpProfile? = FileIO.environment("KILN_PROFILE") == "1" ? OpProfile() : nil

    public init(device: CUDADevice? = nil, linearPrecision: GemmPrecision = .bf16) throws {
        self.device = try device ?? CUDADevice()
        try self.device.makeCurrent()
        stream = try CUDAStream()
        compiler = try KernelCompiler(arch: self.device.arch)
        lt = try CuBLASLt()
        pool = DevicePool(stream: stream)
        let cache = GemmPlanCache(path: GemmPlanCache.defaultPath(gpuTag: self.device.cacheTag, cublasLtVersion: lt.version),
                                  gpu: self.device.name, cublasLtVersion: lt.version)
        tuner = GemmTuner(lt: lt, cache: cache)
        self.linearPrecision = linearPrecision
    }

    public var name: String { "cuda" }

    // MARK: plumbing

    func fail(_ error: Error) -> Never {
        fputs("kiln: CUDA backend: \(error)\n", stderr)
        exit(1)
    }

    func attempt<T>(_ body: () throws -> T) -> T {
        do { return try body() } catch { fail(error) }
    }

    /// The module of a kernel family, compiled (or read from the cache) on first use.
    public func module(_ family: String) throws -> KernelModule {
        if let m = modules[family] { return m }
        let start = MonotonicClock.now()
        let source = try KernelSources.load(family, in: compiler.sourceFolder)
        let result = try compiler.cubin(for: source)
        let m = try KernelModule(name: family, cubin: result.cubin)
        modules[family] = m
        kernelLoadSeconds[family] = MonotonicClock.now() - start
        return m
    }

    func launchKernel(_ family: String, _ symbol: String, grid: (Int, Int, Int), block: (Int, Int, Int), shared: Int = 0,
                      _ configure: (inout KernelArguments) -> Void) throws {
        let f = try module(family).function(symbol)
        var args = KernelArguments()
        configure(&args)
        try profiled(symbol) { try launch(f, grid: grid, block: block, sharedBytes: shared, stream: stream, name: symbol, args) }
    }

    /// `body` timed under `name` when profiling eager work.
    func profiled<T>(_ name: @autoclosure () -> String, _ body: () throws -> T) throws -> T {
        guard let profile, !pool.isCapturing else { return try body() }
        return try profile.measure(name(), stream: stream, body)
    }

    /// Runs a GEMM with its tuned plan.
    func runGemm(_ key: GemmKey, _ operands: GemmOperands) throws {
        let p = try plan(key, operands: operands)
        try profiled("gemm \(key.precision.rawValue) \(key.m)x\(key.n)x\(key.k)\(key.epilogue == .none ? "" : " " + key.epilogue.rawValue)") {
            try p.run(operands, stream: stream)
        }
    }

    /// Grid for a grid-stride elementwise kernel over `n` elements.
    func elementwiseGrid(_ n: Int) -> (Int, Int, Int) { (max(1, min((n + 255) / 256, device.multiprocessors * 16)), 1, 1) }

    /// The grid for kernels that move 8-element chunks per thread (`FOR_CHUNKS` in kiln_common.cuh).
    func chunkGrid(_ n: Int) -> (Int, Int, Int) { elementwiseGrid((n + 7) / 8) }

    public func empty(_ shape: [Int], _ type: DeviceType = .bf16) throws -> CUDATensor {
        let count = shape.reduce(1, *)
        let scales = type == .fp8 ? try pool.allocate(max(1, count / max(1, shape.last ?? 1)) * 4) : nil
        return CUDATensor(storage: try pool.allocate(count * type.size), offset: 0, shape: shape, type: type, scales: scales)
    }

    func nullable(_ t: CUDATensor?) -> CUdeviceptr { t?.pointer ?? 0 }

    func requireBF16(_ ts: CUDATensor..., op: String) {
        for t in ts where t.type != .bf16 { fail(KilnError.invalidArgument("\(op): expects BF16 tensors, got \(t.type) \(t.shape)")) }
    }

    public func synchronize() throws { try stream.synchronize() }

    // MARK: data movement

    public func upload(_ host: HostTensor) throws -> CUDATensor {
        let out = try empty(host.shape)
        var bits = host.data.map { NumberFormats.floatToBF16($0) }
        try bits.withUnsafeMutableBytes { try DeviceCopy.upload($0.baseAddress!, to: out.pointer, bytes: $0.count, stream: stream) }
        try stream.synchronize()
        return out
    }

    public func download(_ t: CUDATensor) throws -> HostTensor {
        try stream.synchronize()
        switch t.type {
        case .bf16:
            var bits = [UInt16](repeating: 0, count: t.count)
            try bits.withUnsafeMutableBytes { try DeviceCopy.download(t.pointer, to: $0.baseAddress!, bytes: $0.count, stream: stream) }
            try stream.synchronize()
            return HostTensor(shape: t.shape, data: bits.map(NumberFormats.bf16ToFloat))
        case .f32:
            var values = [Float](repeating: 0, count: t.count)
            try values.withUnsafeMutableBytes { try DeviceCopy.download(t.pointer, to: $0.baseAddress!, bytes: $0.count, stream: stream) }
            try stream.synchronize()
            return HostTensor(shape: t.shape, data: values)
        case .fp8:
            let (codes, scales) = try downloadFP8(t)
            let row = t.shape.last ?? 1
            let table = (0..<256).map { NumberFormats.e4m3ToFloat(UInt8($0)) }
            return HostTensor(shape: t.shape, data: codes.enumerated().map { table[Int($0.element)] * scales[$0.offset / row] })
        }
    }

    /// FP8 codes and per-row scales of an FP8 tensor.
    public func downloadFP8(_ t: CUDATensor) throws -> (codes: [UInt8], scales: [Float]) {
        try stream.synchronize()
        var codes = [UInt8](repeating: 0, count: t.count)
        var scales = [Float](repeating: 0, count: t.count / max(1, t.shape.last ?? 1))
        try codes.withUnsafeMutableBytes { try DeviceCopy.download(t.pointer, to: $0.baseAddress!, bytes: $0.count, stream: stream) }
        try scales.withUnsafeMutableBytes { try DeviceCopy.download(t.scales!.pointer, to: $0.baseAddress!, bytes: $0.count, stream: stream) }
        try stream.synchronize()
        return (codes, scales)
    }

    public func tensor(_ host: HostTensor) -> CUDATensor { attempt { try upload(host) } }

    public func weight(_ host: HostTensor, role: WeightRole) -> CUDATensor {
        attempt {
            let t = try upload(host)
            if role == .quantizableLinear && linearPrecision == .fp8 { return try quantizeRows(t) }
            return t
        }
    }

    /// Stored bytes go to the device as they are (one copy from the mapped file per part), then to BF16 on the GPU.
    public func weight(rows parts: [StoredTensor], role: WeightRole) -> CUDATensor {
        attempt {
            guard let dtype = parts.first?.dtype, parts.allSatisfy({ $0.dtype == dtype }), dtype != .f8e4m3 else {
                let decoded = parts.map { $0.decoded() }
                let shape = [decoded.reduce(0) { $0 + ($1.shape.first ?? 1) }] + (decoded.first?.shape.dropFirst() ?? [])
                return weight(HostTensor(shape: shape, data: decoded.flatMap(\.data)), role: role)
            }
            let shape = parts.count == 1 ? parts[0].shape : [parts.reduce(0) { $0 + ($1.shape.first ?? 1) }] + parts[0].shape.dropFirst()
            let count = shape.reduce(1, *)
            let staged = try pool.allocate(count * dtype.size)
            var offset = 0
            for part in parts where part.bytes.count > 0 {
                try DeviceCopy.upload(part.bytes.baseAddress!, to: staged.pointer + CUdeviceptr(offset), bytes: part.bytes.count, stream: stream)
                offset += part.bytes.count
            }
            loadedWeightBytes += offset
            var t: CUDATensor
            if dtype == .bf16 {
                t = CUDATensor(storage: staged, offset: 0, shape: shape, type: .bf16, scales: nil)
            } else {
                t = try empty(shape)
                try launchKernel("elementwise", "convert_to_bf16", grid: elementwiseGrid(count), block: (256, 1, 1)) {
                    $0.add(t.pointer); $0.add(staged.pointer); $0.add(Int32(dtype == .f32 ? 0 : 1)); $0.add(UInt64(count))
                }
            }
            if role == .quantizableLinear && linearPrecision == .fp8 { t = try quantizeRows(t) }
            try stream.synchronize()  // the host pages are only borrowed
            return t
        }
    }

    /// Bytes of stored weights moved to the device with `weight(rows:role:)`.
    public private(set) var loadedWeightBytes = 0

    public func host(_ tensor: CUDATensor) -> HostTensor { attempt { try download(tensor) } }

    public func shape(_ tensor: CUDATensor) -> [Int] { tensor.shape }

    // MARK: layout

    public func reshape(_ x: CUDATensor, _ shape: [Int]) -> CUDATensor {
        precondition(shape.reduce(1, *) == x.count, "reshape \(x.shape) to \(shape)")
        return CUDATensor(storage: x.storage, offset: x.offset, shape: shape, type: x.type, scales: x.scales)
    }

    /// Rows or columns `range` of an FP8 matrix (a quantized weight split at load), with their per-row scales. Split
    /// columns keep their rows' scales: each part is the same codes times the same scale.
    func sliceFP8(_ x: CUDATensor, axis: Int, _ range: Range<Int>) throws -> CUDATensor {
        precondition(x.shape.count == 2 && (axis == 0 || axis == 1) && range.lowerBound >= 0 && range.upperBound <= x.shape[axis],
                     "slice: FP8 tensors split as matrices (\(x.shape), axis \(axis), \(range))")
        let (rows, columns) = (x.shape[0], x.shape[1])
        if axis == 0 {
            let out = try empty([range.count, columns], .fp8)
            try DeviceCopy.copy(x.pointer + CUdeviceptr(range.lowerBound * columns), to: out.pointer, bytes: range.count * columns, stream: stream)
            try DeviceCopy.copy(x.scales!.pointer + CUdeviceptr(range.lowerBound * 4), to: out.scales!.pointer, bytes: range.count * 4, stream: stream)
            return out
        }
        precondition(range.lowerBound % 2 == 0 && range.count % 2 == 0 && columns % 2 == 0, "slice: FP8 columns \(range) of \(x.shape) must be even")
        let out = try empty([rows, range.count], .fp8)
        // Byte pairs moved as 2-byte elements by the row copy kernel.
        try copyRows(dst: out.pointer, dstStride: range.count / 2, src: x.pointer + CUdeviceptr(range.lowerBound), srcStride: columns / 2,
                     rows: rows, cols: range.count / 2)
        try DeviceCopy.copy(x.scales!.pointer, to: out.scales!.pointer, bytes: rows * 4, stream: stream)
        return out
    }

    func copyRows(dst: CUdeviceptr, dstStride: Int, src: CUdeviceptr, srcStride: Int, rows: Int, cols: Int) throws {
        try launchKernel("elementwise", "copy_rows_bf16", grid: chunkGrid(rows * cols), block: (256, 1, 1)) {
            $0.add(dst); $0.add(UInt64(dstStride)); $0.add(src); $0.add(UInt64(srcStride)); $0.add(UInt64(rows)); $0.add(UInt64(cols))
        }
    }

    public func concat(_ parts: [CUDATensor], axis: Int) -> CUDATensor {
        attempt {
            let first = parts[0].shape
            for p in parts { requireBF16(p, op: "concat") }
            let outer = first[..<axis].reduce(1, *)
            let inner = first[(axis + 1)...].reduce(1, *)
            var shape = first
            shape[axis] = parts.reduce(0) { $0 + $1.shape[axis] }
            let out = try empty(shape)
            let total = shape[axis] * inner
            var column = 0
            for p in parts {
                precondition(p.shape.count == first.count && Array(p.shape[..<axis]) == Array(first[..<axis])
                    && Array(p.shape[(axis + 1)...]) == Array(first[(axis + 1)...]), "concat shapes on axis \(axis)")
                let block = p.shape[axis] * inner
                try copyRows(dst: out.pointer + CUdeviceptr(column * 2), dstStride: total, src: p.pointer, srcStride: block, rows: outer, cols: block)
                column += block
            }
            return out
        }
    }

    public func slice(_ x: CUDATensor, axis: Int, _ range: Range<Int>) -> CUDATensor {
        attempt {
            if x.type == .fp8 { return try sliceFP8(x, axis: axis, range) }
            requireBF16(x, op: "slice")
            precondition(range.lowerBound >= 0 && range.upperBound <= x.shape[axis], "slice \(range) of axis \(axis) in \(x.shape)")
            let outer = x.shape[..<axis].reduce(1, *)
            let inner = x.shape[(axis + 1)...].reduce(1, *)
            var shape = x.shape
            shape[axis] = range.count
            if outer == 1 {  // contiguous: a view
                return CUDATensor(storage: x.storage, offset: x.offset + range.lowerBound * inner * 2, shape: shape, type: .bf16, scales: nil)
            }
            let out = try empty(shape)
            try copyRows(dst: out.pointer, dstStride: range.count * inner, src: x.pointer + CUdeviceptr(range.lowerBound * inner * 2),
                         srcStride: x.shape[axis] * inner, rows: outer, cols: range.count * inner)
            return out
        }
    }

    // MARK: elementwise

    public func add(_ a: CUDATensor, _ b: CUDATensor) -> CUDATensor { addScaled(a, b, alpha: 1) }

    public func addScaled(_ x: CUDATensor, _ y: CUDATensor, alpha: Float) -> CUDATensor {
        attempt {
            requireBF16(x, y, op: "add")
            precondition(x.shape == y.shape, "add: shapes \(x.shape) and \(y.shape)")
            let out = try empty(x.shape)
            try launchKernel("elementwise", "add_bf16", grid: chunkGrid(x.count), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(x.pointer); $0.add(y.pointer); $0.add(alpha); $0.add(UInt64(x.count))
            }
            return out
        }
    }

    public func affine(_ x: CUDATensor, scale a: Float, shift b: Float) -> CUDATensor {
        attempt {
            requireBF16(x, op: "affine")
            let out = try empty(x.shape)
            try launchKernel("elementwise", "affine_bf16", grid: chunkGrid(x.count), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(x.pointer); $0.add(a); $0.add(b); $0.add(UInt64(x.count))
            }
            return out
        }
    }

    static func activationCode(_ kind: Activation) -> Int32 {
        switch kind {
        case .none: return 0
        case .silu: return 1
        case .geluTanh: return 2
        }
    }

    public func activation(_ x: CUDATensor, _ kind: Activation) -> CUDATensor {
        if case .none = kind { return x }
        return attempt {
            requireBF16(x, op: "activation")
            let out = try empty(x.shape)
            try launchKernel("elementwise", "activation_bf16", grid: chunkGrid(x.count), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(x.pointer); $0.add(CUDABackend.activationCode(kind)); $0.add(UInt64(x.count))
            }
            return out
        }
    }

    func channelLayout(_ x: CUDATensor, _ vector: CUDATensor, op: String) -> (rowsPerBatch: Int, channels: Int) {
        let batch = x.shape[0], channels = x.shape.last!
        precondition(vector.count == batch * channels, "\(op): vector \(vector.shape) does not broadcast over \(x.shape)")
        return (x.count / (batch * channels), channels)
    }

    public func modulate(_ x: CUDATensor, shift: CUDATensor, scale: CUDATensor) -> CUDATensor {
        attempt {
            requireBF16(x, shift, scale, op: "modulate")
            let (rows, channels) = channelLayout(x, shift, op: "modulate")
            let out = try empty(x.shape)
            try launchKernel("elementwise", "modulate_bf16", grid: chunkGrid(x.count), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(x.pointer); $0.add(shift.pointer); $0.add(scale.pointer)
                $0.add(UInt64(rows)); $0.add(Int32(channels)); $0.add(UInt64(x.count))
            }
            return out
        }
    }

    func gated(_ residual: CUDATensor?, gate: CUDATensor, _ y: CUDATensor) -> CUDATensor {
        attempt {
            requireBF16(gate, y, op: "gatedResidual")
            if let residual { precondition(residual.shape == y.shape, "gatedResidual: \(residual.shape) vs \(y.shape)") }
            let (rows, channels) = channelLayout(y, gate, op: "gatedResidual")
            let out = try empty(y.shape)
            try launchKernel("elementwise", "gated_residual_bf16", grid: chunkGrid(y.count), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(nullable(residual)); $0.add(gate.pointer); $0.add(y.pointer)
                $0.add(UInt64(rows)); $0.add(Int32(channels)); $0.add(UInt64(y.count))
            }
            return out
        }
    }

    public func scaleChannels(_ x: CUDATensor, by gate: CUDATensor) -> CUDATensor { gated(nil, gate: gate, x) }

    public func gatedResidual(_ x: CUDATensor, gate: CUDATensor, _ y: CUDATensor) -> CUDATensor { gated(x, gate: gate, y) }

    // MARK: linear algebra

    /// The plan for a GEMM shape: created once, its algorithm from the disk cache or autotuned on first use.
    public func plan(_ key: GemmKey, operands: GemmOperands) throws -> GemmPlan {
        if let p = plans[key] { return p }
        let p = try GemmPlan(lt, key)
        if autotune { try tuner.tune(p, operands, stream: stream) }
        plans[key] = p
        return p
    }

    /// Per-row FP8 quantization of a BF16 matrix (last dimension = row).
    public func quantizeRows(_ x: CUDATensor) throws -> CUDATensor {
        requireBF16(x, op: "quantizeRows")
        let channels = x.shape.last!
        precondition(channels % 2 == 0, "quantizeRows: odd row length \(channels)")
        let rows = x.count / channels
        let out = try empty(x.shape, .fp8)
        try launchKernel("norm", "quantize_rows_fp8", grid: ((rows + 7) / 8, 1, 1), block: (256, 1, 1)) {
            $0.add(out.pointer); $0.add(out.scales!.pointer); $0.add(x.pointer); $0.add(UInt64(rows)); $0.add(Int32(channels))
        }
        return out
    }

    /// `x · wᵀ (+ bias)` with a fused epilogue; FP8 when the weight is FP8 (the activation is quantized per row
    /// first unless it already is).
    public func gemm(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, epilogue: GemmEpilogue,
                     accumulate residual: CUDATensor? = nil) throws -> CUDATensor {
        let k = x.shape.last!
        let n = weight.shape[0]
        precondition(weight.shape == [n, k], "linear: input \(x.shape) vs weight \(weight.shape)")
        if let bias { precondition(bias.count == n, "linear: bias \(bias.shape) for \(n) outputs"); requireBF16(bias, op: "linear bias") }
        let m = x.count / k
        let out = try empty(Array(x.shape.dropLast()) + [n])
        let precision: GemmPrecision = weight.type == .fp8 ? .fp8 : .bf16
        var key = GemmKey(m: m, n: n, k: k, precision: precision, epilogue: epilogue)
        key.accumulate = residual != nil
        if precision == .fp8 && bf16Fallbacks.contains(key) {
            return try gemmInBF16(x, weight: weight, bias: bias, epilogue: epilogue, accumulate: residual)
        }
        var input = x
        if precision == .fp8 && x.type != .fp8 { input = try quantizeRows(x) }
        if precision == .bf16 {
            precondition(x.type != .fp8, "linear: an FP8 input needs FP8 weights (\(x.shape) x \(weight.shape))")
            requireBF16(x, op: "linear")
        }
        var operands = GemmOperands(x: input.pointer, w: weight.pointer, out: out.pointer, bias: bias?.pointer,
                                    xScale: input.scales?.pointer, wScale: weight.scales?.pointer)
        if let residual {
            requireBF16(residual, op: "linear residual")
            precondition(residual.shape == out.shape, "linear: residual \(residual.shape) for output \(out.shape)")
            operands.accumulator = residual.pointer
        }
        if precision == .fp8 && plans[key] == nil {
            do {
                _ = try plan(key, operands: operands)
            } catch let error as CUDAError where error.status == 15 {  // CUBLAS_STATUS_NOT_SUPPORTED
                // cuBLASLt has no FP8 kernel for a few shapes (FLUX.1-schnell's 256 text tokens into MLP-out).
                fputs("kiln: note: no cuBLASLt FP8 kernel for \(key); it runs in BF16\n", stderr)
                bf16Fallbacks.insert(key)
                return try gemmInBF16(x, weight: weight, bias: bias, epilogue: epilogue, accumulate: residual)
            }
        }
        try runGemm(key, operands)
        return out
    }

    /// FP8 GEMM shapes that run in BF16 (no cuBLASLt FP8 kernel).
    private var bf16Fallbacks: Set<GemmKey> = []

    /// A GEMM with FP8 weights in BF16: the weight dequantized (each call: its scales may carry a gate), and the input
    /// too where it comes quantized.
    func gemmInBF16(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, epilogue: GemmEpilogue,
                    accumulate residual: CUDATensor?) throws -> CUDATensor {
        try gemm(x.type == .fp8 ? try dequantizeRows(x) : x, weight: try dequantizeRows(weight), bias: bias, epilogue: epilogue,
                 accumulate: residual)
    }

    /// BF16 values of an FP8 tensor (codes times per-row scales).
    func dequantizeRows(_ t: CUDATensor) throws -> CUDATensor {
        let channels = t.shape.last!
        let out = try empty(t.shape)
        try launchKernel("norm", "dequantize_rows_fp8", grid: elementwiseGrid(t.count / 2), block: (256, 1, 1)) {
            $0.add(out.pointer); $0.add(t.pointer); $0.add(t.scales!.pointer); $0.add(UInt64(t.count / channels)); $0.add(Int32(channels))
        }
        return out
    }

    public func linear(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, activation kind: Activation) -> CUDATensor {
        attempt {
            switch kind {
            case .geluTanh: return try gemm(x, weight: weight, bias: bias, epilogue: bias == nil ? .gelu : .biasGelu)
            case .none: return try gemm(x, weight: weight, bias: bias, epilogue: bias == nil ? .none : .bias)
            case .silu: return activation(try gemm(x, weight: weight, bias: bias, epilogue: bias == nil ? .none : .bias), .silu)
            }
        }
    }

    /// With FP8 weights and one gate row the whole expression is one GEMM: the gate scales the weight's per-channel
    /// scales and the bias, and the residual comes in as C (`beta = 1`); otherwise the GEMM and a gated-residual pass.
    public func linear(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, gate: CUDATensor, residual: CUDATensor) -> CUDATensor {
        attempt {
            let n = weight.shape[0]
            let epilogue: GemmEpilogue = bias == nil ? .none : .bias
            guard weight.type == .fp8, gate.count == n else {
                return gated(residual, gate: gate, try gemm(x, weight: weight, bias: bias, epilogue: epilogue))
            }
            requireBF16(gate, op: "linear gate")
            let scales = try pool.allocate(n * 4)
            let gatedBias = try bias.map { _ in try empty([n]) }
            try launchKernel("elementwise", "gate_scales", grid: ((n + 255) / 256, 1, 1), block: (256, 1, 1)) {
                $0.add(scales.pointer); $0.add(nullable(gatedBias)); $0.add(gate.pointer); $0.add(weight.scales!.pointer)
                $0.add(nullable(bias)); $0.add(Int32(n))
            }
            let gatedWeight = CUDATensor(storage: weight.storage, offset: weight.offset, shape: weight.shape, type: .fp8, scales: scales)
            return try gemm(x, weight: gatedWeight, bias: gatedBias, epilogue: epilogue, accumulate: residual)
        }
    }

    public func attention(q: CUDATensor, k: CUDATensor, v: CUDATensor, heads: Int, scale: Float?, keyMask: CUDATensor?) -> CUDATensor {
        attempt {
            requireBF16(q, k, v, op: "attention")
            let (batch, queries, width) = (q.shape[0], q.shape[1], q.shape[2])
            let keys = k.shape[1]
            precondition(k.shape == [batch, keys, width] && v.shape == k.shape, "attention: q \(q.shape) k \(k.shape) v \(v.shape)")
            let d = width / heads
            if let keyMask { precondition(keyMask.count == batch * keys, "attention: key mask \(keyMask.shape)") }
            let softmaxScale = scale ?? 1 / Float(d).squareRoot()
            // Heads wider than 256 (the VAE's single 512-wide head) take the GEMM path: cuDNN's engine spent 7 ms on the
            // VAE's 16384-token attention on the H100 (~80 TFLOP/s); selftest times both.
            if keyMask == nil && ((attentionKernel == .auto && d <= 256) || attentionKernel == .cudnn), let dnn = cudnn() {
                if let plan = dnn.plan(batch: batch, heads: heads, queries: queries, keys: keys, dim: d) {
                    let out = try empty(q.shape)
                    let workspace = plan.workspaceBytes > 0 ? try pool.allocate(plan.workspaceBytes) : nil
                    try profiled("cudnn attention \(batch)x\(heads)x\(queries)x\(keys)x\(d)") {
                        try dnn.run(plan, q: q.pointer, k: k.pointer, v: v.pointer, out: out.pointer, scale: softmaxScale,
                                    workspace: workspace?.pointer ?? 0)
                    }
                    withExtendedLifetime(workspace) {}
                    lastAttentionPath = "cudnn"
                    return out
                }
                if attentionKernel == .cudnn {
                    throw KilnError.unsupported("cuDNN attention has no engine for \(q.shape): "
                        + (dnn.failure(batch: batch, heads: heads, queries: queries, keys: keys, dim: d) ?? "?"))
                }
            } else if attentionKernel == .cudnn {
                throw KilnError.unsupported("cuDNN attention unavailable: \(keyMask != nil ? "key masks run on Kiln's kernel" : cudnnState?.error ?? "?")")
            }
            guard d == 128 && attentionKernel != .gemm else {
                return try attentionByGEMM(q: q, k: k, v: v, heads: heads, scale: softmaxScale, keyMask: keyMask)
            }
            lastAttentionPath = "own"
            let out = try empty(q.shape)
            let shared = (128 * 128 + 4 * 64 * 128) * 2
            let f = try module("attention").function("attention_fwd_bf16_d128")
            try check(kc_cu.cuFuncSetAttribute!(f, Int32(KC_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES), Int32(shared)),
                      "cuFuncSetAttribute(attention shared memory)")
            var args = KernelArguments()
            args.add(out.pointer); args.add(q.pointer); args.add(k.pointer); args.add(v.pointer); args.add(nullable(keyMask))
            args.add(Int32(queries)); args.add(Int32(keys)); args.add(Int32(heads)); args.add(softmaxScale)
            try launch(f, grid: ((queries + 127) / 128, heads, batch), block: (256, 1, 1), sharedBytes: shared, stream: stream,
                       name: "attention_fwd_bf16_d128", args)
            return out
        }
    }

    /// Attention for any head size and with key masks, as GEMMs per (batch, head): fp32 scores `Q_h K_hᵀ`, a row
    /// softmax to BF16 probabilities, then `P V_h` (V_h transposed first). Memory: Lq·Lk·6 bytes per call.
    public func attention(q: CUDATensor, k: CUDATensor, v: CUDATensor, heads: Int, scale: Float, bias: CUDATensor) -> CUDATensor {
        attempt {
            requireBF16(q, k, v, bias, op: "attention with bias")
            let (queries, keys) = (q.shape[1], k.shape[1])
            precondition(bias.shape == [heads, queries, keys] || bias.shape == [1, queries, keys], "attention: bias \(bias.shape)")
            return try attentionByGEMM(q: q, k: k, v: v, heads: heads, scale: scale, keyMask: nil, bias: bias)
        }
    }

    /// Attention as per-head GEMMs around a row softmax (fp32 scores): any head size, key masks and score biases.
    func attentionByGEMM(q: CUDATensor, k: CUDATensor, v: CUDATensor, heads: Int, scale: Float, keyMask: CUDATensor?,
                         bias: CUDATensor? = nil) throws -> CUDATensor {
        let (batch, queries, width) = (q.shape[0], q.shape[1], q.shape[2])
        let keys = k.shape[1]
        let d = width / heads
        lastAttentionPath = "gemm"
        let out = try empty(q.shape)
        let scores = try pool.allocate(queries * keys * 4)
        let probabilities = try pool.allocate(queries * keys * 2)
        let vt = try pool.allocate(d * keys * 2)
        // Per-head pointers sit h·d elements into a row: as aligned as the largest power of two dividing 2·d (and 2·width).
        var alignment = 256
        while (2 * d) % alignment != 0 || (2 * width) % alignment != 0 { alignment /= 2 }
        var scoreKey = GemmKey(m: queries, n: keys, k: d, precision: .bf16)
        scoreKey.strideX = width; scoreKey.strideW = width; scoreKey.outputF32 = true; scoreKey.alignment = alignment
        var outKey = GemmKey(m: queries, n: d, k: keys, precision: .bf16)
        outKey.strideOut = width; outKey.alignment = alignment
        for b in 0..<batch {
            for h in 0..<heads {
                let offset = CUdeviceptr((h * d) * 2)
                let qh = q.pointer + CUdeviceptr(b * queries * width * 2) + offset
                let kh = k.pointer + CUdeviceptr(b * keys * width * 2) + offset
                let vh = v.pointer + CUdeviceptr(b * keys * width * 2) + offset
                let oh = out.pointer + CUdeviceptr(b * queries * width * 2) + offset
                let s = GemmOperands(x: qh, w: kh, out: scores.pointer)
                try runGemm(scoreKey, s)
                try launchKernel("softmax", "softmax_rows_f32_bf16", grid: (queries, 1, 1), block: (256, 1, 1)) {
                    $0.add(probabilities.pointer); $0.add(scores.pointer)
                    $0.add(keyMask.map { $0.pointer + CUdeviceptr(b * keys * 2) } ?? 0)
                    $0.add(bias.map { $0.pointer + CUdeviceptr(($0.shape[0] == 1 ? 0 : h) * queries * keys * 2) } ?? 0); $0.add(scale)
                    $0.add(UInt64(queries)); $0.add(Int32(keys))
                }
                try launchKernel("softmax", "transpose_bf16", grid: ((d + 31) / 32, (keys + 31) / 32, 1), block: (32, 8, 1)) {
                    $0.add(vt.pointer); $0.add(vh); $0.add(UInt64(keys)); $0.add(Int32(d)); $0.add(UInt64(width))
                }
                let o = GemmOperands(x: probabilities.pointer, w: vt.pointer, out: oh)
                try runGemm(outKey, o)
            }
        }
        withExtendedLifetime((scores, probabilities, vt)) {}
        return out
    }

    /// cuDNN's attention, loaded on first use; nil (reason in `cudnnError`) when cuDNN is absent.
    public func cudnn() -> CuDNN? {
        if let state = cudnnState { return state.library }
        do {
            cudnnState = (try CuDNN(stream: stream), nil)
        } catch {
            cudnnState = (nil, "\(error)")
        }
        return cudnnState!.library
    }

    public var cudnnError: String? { cudnnState?.error }

    // MARK: normalization

    public func layerNorm(_ x: CUDATensor, weight: CUDATensor?, bias: CUDATensor?, eps: Float) -> CUDATensor {
        attempt {
            requireBF16(x, op: "layerNorm")
            let c = x.shape.last!, rows = x.count / c
            let out = try empty(x.shape)
            try launchKernel("norm", "layernorm_bf16", grid: ((rows + 7) / 8, 1, 1), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(x.pointer); $0.add(nullable(weight)); $0.add(nullable(bias)); $0.add(eps)
                $0.add(UInt64(rows)); $0.add(Int32(c))
            }
            return out
        }
    }

    public func rmsNorm(_ x: CUDATensor, weight: CUDATensor, eps: Float) -> CUDATensor {
        attempt {
            requireBF16(x, weight, op: "rmsNorm")
            let c = x.shape.last!, rows = x.count / c
            precondition(weight.count == c, "rmsNorm: weight \(weight.shape) for \(c) channels")
            let out = try empty(x.shape)
            try launchKernel("norm", "rmsnorm_bf16", grid: ((rows + 7) / 8, 1, 1), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(x.pointer); $0.add(weight.pointer); $0.add(eps); $0.add(UInt64(rows)); $0.add(Int32(c))
            }
            return out
        }
    }

    public func groupNorm(_ x: CUDATensor, groups: Int, weight: CUDATensor, bias: CUDATensor, eps: Float, silu: Bool) -> CUDATensor {
        attempt {
            requireBF16(x, weight, bias, op: "groupNorm")
            let c = x.shape.last!, batch = x.shape[0]
            let pixels = x.count / (batch * c)
            precondition(c % groups == 0 && groups <= 64, "groupNorm: \(c) channels in \(groups) groups")
            let statsBuffer = try pool.allocate(batch * groups * 2 * 8)
            let coefficients = try pool.allocate(batch * c * 8)
            try DeviceCopy.fill8(statsBuffer.pointer, value: 0, count: batch * groups * 2 * 8, stream: stream)
            let perBlock = max(1, (65536 + c - 1) / c)
            let chunks = (pixels + perBlock - 1) / perBlock
            try launchKernel("groupnorm", "groupnorm_stats_bf16", grid: (chunks, batch, 1), block: (256, 1, 1)) {
                $0.add(statsBuffer.pointer); $0.add(x.pointer); $0.add(UInt64(pixels)); $0.add(Int32(c)); $0.add(Int32(groups)); $0.add(UInt64(perBlock))
            }
            try launchKernel("groupnorm", "groupnorm_coefficients", grid: (batch, 1, 1), block: (256, 1, 1)) {
                $0.add(coefficients.pointer); $0.add(statsBuffer.pointer); $0.add(weight.pointer); $0.add(bias.pointer)
                $0.add(eps); $0.add(UInt64(pixels)); $0.add(Int32(c)); $0.add(Int32(groups))
            }
            let out = try empty(x.shape)
            try launchKernel("groupnorm", "groupnorm_apply_bf16", grid: chunkGrid(x.count), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(x.pointer); $0.add(coefficients.pointer); $0.add(UInt64(pixels)); $0.add(Int32(c))
                $0.add(Int32(silu ? 1 : 0)); $0.add(UInt64(x.count))
            }
            withExtendedLifetime(coefficients) {}
            withExtendedLifetime(statsBuffer) {}
            return out
        }
    }

    // MARK: position

    func normRoPE(_ x: CUDATensor, weight: CUDATensor?, table: RotaryTable<CUDATensor>?, eps: Float, length: Int, heads: Int, dim: Int) throws -> CUDATensor {
        requireBF16(x, op: "rope")
        if let table { precondition(table.cos.shape == [length, dim] && table.sin.shape == [length, dim], "rope: table \(table.cos.shape) for L \(length) D \(dim)") }
        let rows = x.count / dim
        let out = try empty(x.shape)
        try launchNormRoPE(out: out.pointer, x: x.pointer, weight: weight, table: table, eps: eps, rows: rows, length: length, heads: heads,
                           dim: dim, tokenStride: heads * dim, outLength: length, outOffset: 0)
        return out
    }

    /// The norm + RoPE kernel over `rows` (token, head) rows of input tokens `tokenStride` elements apart, written to
    /// rows `outOffset ..< outOffset + length` of each batch item's `outLength` output tokens.
    func launchNormRoPE(out: CUdeviceptr, x: CUdeviceptr, weight: CUDATensor?, table: RotaryTable<CUDATensor>?, eps: Float, rows: Int,
                        length: Int, heads: Int, dim: Int, tokenStride: Int, outLength: Int, outOffset: Int) throws {
        try launchKernel("rope", "norm_rope_bf16", grid: ((rows + 7) / 8, 1, 1), block: (256, 1, 1)) {
            $0.add(out); $0.add(x); $0.add(nullable(weight)); $0.add(nullable(table?.cos)); $0.add(nullable(table?.sin))
            $0.add(eps); $0.add(UInt64(rows)); $0.add(Int32(length)); $0.add(Int32(heads)); $0.add(Int32(dim))
            $0.add(UInt64(tokenStride)); $0.add(Int32(outLength)); $0.add(Int32(outOffset))
        }
    }

    /// Q and K go from the fused projections through the norm + RoPE kernel straight into the joint tensors (no
    /// slices, no concatenation); V is copied into place by rows.
    public func attentionInputs(_ streams: [QKVStream<CUDATensor>], eps: Float, heads: Int) -> (q: CUDATensor, k: CUDATensor, v: CUDATensor) {
        attempt {
            let batch = streams[0].qkv.shape[0], width = streams[0].qkv.shape[2] / 3, dim = width / heads
            precondition(streams[0].qkv.shape[2] == 3 * width && width == heads * dim && dim % 2 == 0,
                         "attentionInputs: \(streams[0].qkv.shape[2]) channels for 3 x \(heads) heads of an even size")
            let total = streams.reduce(0) { $0 + $1.qkv.shape[1] }
            let (q, k, v) = (try empty([batch, total, width]), try empty([batch, total, width]), try empty([batch, total, width]))
            var offset = 0
            for s in streams {
                requireBF16(s.qkv, s.queryNorm, s.keyNorm, op: "attentionInputs")
                let length = s.qkv.shape[1]
                precondition(s.qkv.shape == [batch, length, 3 * width], "attentionInputs: projection \(s.qkv.shape) with \(width) channels")
                if let table = s.rope {
                    precondition(table.cos.shape == [length, dim] && table.sin.shape == [length, dim], "attentionInputs: table \(table.cos.shape) for L \(length) D \(dim)")
                }
                for (out, column, weight) in [(q, 0, s.queryNorm), (k, width, s.keyNorm)] {
                    try launchNormRoPE(out: out.pointer, x: s.qkv.pointer + CUdeviceptr(column * 2), weight: weight, table: s.rope, eps: eps,
                                       rows: batch * length * heads, length: length, heads: heads, dim: dim, tokenStride: 3 * width,
                                       outLength: total, outOffset: offset)
                }
                for b in 0..<batch {
                    try copyRows(dst: v.pointer + CUdeviceptr((b * total + offset) * width * 2), dstStride: width,
                                 src: s.qkv.pointer + CUdeviceptr((b * length * 3 * width + 2 * width) * 2), srcStride: 3 * width,
                                 rows: length, cols: width)
                }
                offset += length
            }
            return (q, k, v)
        }
    }

    public func rope(_ x: CUDATensor, _ table: RotaryTable<CUDATensor>) -> CUDATensor {
        attempt { try normRoPE(x, weight: nil, table: table, eps: 0, length: x.shape[1], heads: x.shape[2], dim: x.shape[3]) }
    }

    public func qkNormRoPE(q: CUDATensor, k: CUDATensor, qWeight: CUDATensor, kWeight: CUDATensor, eps: Float, heads: Int,
                           rope table: RotaryTable<CUDATensor>?) -> (q: CUDATensor, k: CUDATensor) {
        attempt {
            let d = q.shape[2] / heads
            return (try normRoPE(q, weight: qWeight, table: table, eps: eps, length: q.shape[1], heads: heads, dim: d),
                    try normRoPE(k, weight: kWeight, table: table, eps: eps, length: k.shape[1], heads: heads, dim: d))
        }
    }

    // MARK: images

    public func conv2d(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, stride: Int, padding: Padding) -> CUDATensor {
        convolution(x, weight: weight, bias: bias, stride: stride, padding: padding, residual: nil)
    }

    public func conv2d(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, stride: Int, padding: Padding,
                       residual: CUDATensor) -> CUDATensor {
        convolution(x, weight: weight, bias: bias, stride: stride, padding: padding, residual: residual)
    }

    /// cuDNN with the bias and residual in its epilogue where it has an engine for that graph, else cuDNN's plain
    /// convolution followed by our kernels, else im2col + GEMM.
    func convolution(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, stride: Int, padding: Padding,
                     residual: CUDATensor?) -> CUDATensor {
        attempt {
            requireBF16(x, weight, op: "conv2d")
            if let bias { requireBF16(bias, op: "conv2d bias") }
            let (batch, height, width, inC) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
            let (outC, kh, kw) = (weight.shape[0], weight.shape[1], weight.shape[2])
            precondition(weight.shape[3] == inC, "conv2d: input \(x.shape) vs weight \(weight.shape)")
            let outH = (height + padding.top + padding.bottom - kh) / stride + 1
            let outW = (width + padding.left + padding.right - kw) / stride + 1
            if let residual {
                requireBF16(residual, op: "conv2d residual")
                precondition(residual.shape == [batch, outH, outW, outC], "conv2d: residual \(residual.shape) for output \([batch, outH, outW, outC])")
            }
            if convolutionKernel != .gemm, outC % 8 != 0, residual == nil, cudnn() != nil {
                return try convolutionPaddingChannels(x, weight: weight, bias: bias, stride: stride, padding: padding)
            }
            if convolutionKernel != .gemm, let dnn = cudnn() {
                func plan(bias: Bool, residual: Bool) -> CuDNN.Plan? {
                    dnn.convolutionPlan(batch: batch, channels: inC, height: height, width: width, outChannels: outC, kh: kh, kw: kw,
                                        stride: stride, padding: (padding.top, padding.left, padding.bottom, padding.right),
                                        outHeight: outH, outWidth: outW, bias: bias, residual: residual)
                }
                let fused = plan(bias: bias != nil, residual: residual != nil)
                if let chosen = fused ?? plan(bias: false, residual: false) {
                    var y = try empty([batch, outH, outW, outC])
                    let workspace = chosen.workspaceBytes > 0 ? try pool.allocate(chosen.workspaceBytes) : nil
                    try profiled("cudnn conv \(kh)x\(kw) \(height)x\(width)x\(inC)->\(outC)\(fused != nil && residual != nil ? " +res" : "")") {
                        try dnn.runConvolution(chosen, x: x.pointer, w: weight.pointer, y: y.pointer, bias: nullable(bias),
                                               residual: nullable(residual), workspace: workspace?.pointer ?? 0)
                    }
                    withExtendedLifetime(workspace) {}
                    lastConvolutionPath = fused != nil && (bias != nil || residual != nil) ? "cudnn fused" : "cudnn"
                    if fused == nil {
                        if let bias { y = try biasAdd(y, bias) }
                        if let residual { y = add(residual, y) }
                    }
                    return y
                }
            }
            if convolutionKernel == .cudnn {
                throw KilnError.unsupported("cuDNN has no convolution engine for \(x.shape) * \(weight.shape): \(cudnn()?.convolutionFailures.last ?? cudnnError ?? "?")")
            }
            lastConvolutionPath = "gemm"
            let k = kh * kw * inC
            var columns = x
            if !(kh == 1 && kw == 1 && stride == 1 && padding == .uniform(0)) {
                columns = try empty([batch * outH * outW, k])
                let n = columns.count
                try launchKernel("elementwise", "im2col_nhwc_bf16", grid: elementwiseGrid(n), block: (256, 1, 1)) {
                    $0.add(columns.pointer); $0.add(x.pointer); $0.add(Int32(height)); $0.add(Int32(width)); $0.add(Int32(inC))
                    $0.add(Int32(kh)); $0.add(Int32(kw)); $0.add(Int32(stride)); $0.add(Int32(padding.top)); $0.add(Int32(padding.left))
                    $0.add(Int32(outH)); $0.add(Int32(outW)); $0.add(UInt64(n))
                }
            }
            let flat = reshape(columns, [batch * outH * outW, k])
            let w2 = reshape(weight, [outC, k])
            let y = reshape(try gemm(flat, weight: w2, bias: bias, epilogue: bias == nil ? .none : .bias), [batch, outH, outW, outC])
            return residual.map { add($0, y) } ?? y
        }
    }

    /// A convolution whose output channels are not a multiple of 8 (the VAE's last, 128 → 3): cuDNN's engines for
    /// such outputs are slow (70 ms at 1024x1024 where 8 channels take well under one), so the filter and bias are
    /// zero-padded to a multiple of 8 and the extra channels dropped after.
    func convolutionPaddingChannels(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, stride: Int, padding: Padding) throws -> CUDATensor {
        let outC = weight.shape[0], padded = (outC + 7) / 8 * 8
        let filter = try empty([padded] + weight.shape.dropFirst())
        try DeviceCopy.fill16(filter.pointer, value: 0, count: filter.count, stream: stream)
        try DeviceCopy.copy(weight.pointer, to: filter.pointer, bytes: weight.bytes, stream: stream)
        let paddedBias = try bias.map { b -> CUDATensor in
            let t = try empty([padded])
            try DeviceCopy.fill16(t.pointer, value: 0, count: padded, stream: stream)
            try DeviceCopy.copy(b.pointer, to: t.pointer, bytes: b.bytes, stream: stream)
            return t
        }
        let wide = convolution(x, weight: filter, bias: paddedBias, stride: stride, padding: padding, residual: nil)
        let out = try empty(Array(wide.shape.dropLast()) + [outC])
        try copyRows(dst: out.pointer, dstStride: outC, src: wide.pointer, srcStride: padded, rows: out.count / outC, cols: outC)
        return out
    }

    func biasAdd(_ y: CUDATensor, _ bias: CUDATensor) throws -> CUDATensor {
        let out = try empty(y.shape)
        try launchKernel("elementwise", "bias_add_bf16", grid: chunkGrid(y.count), block: (256, 1, 1)) {
            $0.add(out.pointer); $0.add(y.pointer); $0.add(bias.pointer); $0.add(Int32(y.shape.last!)); $0.add(UInt64(y.count))
        }
        return out
    }

    public func upsampleNearest2x(_ x: CUDATensor) -> CUDATensor {
        attempt {
            requireBF16(x, op: "upsample")
            let (batch, height, width, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
            let out = try empty([batch, 2 * height, 2 * width, c])
            try launchKernel("elementwise", "upsample_nearest2x_bf16", grid: chunkGrid(x.count), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(x.pointer); $0.add(Int32(height)); $0.add(Int32(width)); $0.add(Int32(c)); $0.add(UInt64(x.count))
            }
            return out
        }
    }

    // MARK: fused

    /// For quantizable linears under `linearPrecision` `.fp8` the result is FP8 with per-row scales
    /// (`layerNormModulateFP8`): the activation is quantized where it is made, not in a pass of its own.
    public func layerNormModulate(_ x: CUDATensor, shift: CUDATensor, scale: CUDATensor, eps: Float, feedsQuantizableLinears: Bool) -> CUDATensor {
        attempt {
            if feedsQuantizableLinears && linearPrecision == .fp8 { return try layerNormModulateFP8(x, shift: shift, scale: scale, eps: eps) }
            requireBF16(x, shift, scale, op: "layerNormModulate")
            let (rows, channels) = channelLayout(x, shift, op: "layerNormModulate")
            let out = try empty(x.shape)
            try launchKernel("norm", "layernorm_modulate_bf16", grid: (x.count / channels, 1, 1), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(x.pointer); $0.add(shift.pointer); $0.add(scale.pointer); $0.add(eps)
                $0.add(UInt64(rows)); $0.add(Int32(channels))
            }
            return out
        }
    }

    /// `layerNormModulate` emitting FP8 e4m3 with per-row scales, to feed an FP8 linear directly.
    public func layerNormModulateFP8(_ x: CUDATensor, shift: CUDATensor, scale: CUDATensor, eps: Float) throws -> CUDATensor {
        requireBF16(x, shift, scale, op: "layerNormModulateFP8")
        let (rows, channels) = channelLayout(x, shift, op: "layerNormModulateFP8")
        let out = try empty(x.shape, .fp8)
        try launchKernel("norm", "layernorm_modulate_fp8", grid: (x.count / channels, 1, 1), block: (256, 1, 1), shared: channels * 4) {
            $0.add(out.pointer); $0.add(out.scales!.pointer); $0.add(x.pointer); $0.add(shift.pointer); $0.add(scale.pointer); $0.add(eps)
            $0.add(UInt64(rows)); $0.add(Int32(channels))
        }
        return out
    }
}
