import CKilnCUDA
import KilnBackends
import KilnCore
#if canImport(Glibc)
import Glibc
#endif
/// The CUDA backend: BF16 activations, NVRTC kernels, cuBLASLt GEMMs (BF16 or FP8), own flash attention.
public final class CUDABackend: Backend {
    public typealias Tensor = CUDATensor

    public let device: CUDADevice
    /// The main stream: eager work, graph capture and replay, host transfers.
    public let stream: CUDAStream
    /// The stream ops enqueue on: `stream`, or the side stream while the second body of a captured `concurrently` runs.
    public internal(set) var currentStream: CUDAStream
    /// The cuBLASLt workspace of GEMMs on `currentStream` (GEMMs running at once must not share one).
    var gemmWorkspace: DeviceBuffer
    /// How many streams `concurrently` may use (`KILN_STREAMS=1|2`, default 1: on the H100 two were 1% slower per FLUX
    /// step, bench/results/session4-streams-ab); 1 runs both bodies in turn.
    public var streams = FileIO.environment("KILN_STREAMS") == "2" ? 2 : 1
    /// The second stream, made by the first `concurrently` outside a capture (its GEMM workspace is a driver buffer of
    /// its own, not a pool block).
    var side: SideStream?
    /// How many `concurrently` regions were captured on two streams.
    public internal(set) var forkedRegions = 0
    public let compiler: KernelCompiler
    public let lt: CuBLASLt
    public let pool: DevicePool
    /// Page-locked memory that host tensors go through on their way to the device.
    let staging = HostStaging()
    public let tuner: GemmTuner
    /// Precision of quantizable linear layers: weights loaded as `.quantizableLinear` are quantized to FP8 (per output
    /// channel) when `.fp8`, and their inputs per row as they enter the GEMM. Fixed once weights are loaded; the
    /// selftest switches it to check FP8 outputs of the norms that feed such layers.
    public internal(set) var linearPrecision: GemmPrecision
    /// Precision of joint attention (`attentionInputs` then `attention`): FP8 e4m3 through cuDNN where it has an FP8
    /// engine for the shape, with FP8 linears by default (`KILN_ATTENTION_PRECISION=bf16` keeps it in BF16).
    public var attentionPrecision: GemmPrecision
    /// Time the heuristic's top candidates the first time a GEMM shape is seen (else take the heuristic's first).
    public var autotune = true
    /// Which attention implementation runs: cuDNN's fused flash attention when it has an engine for the shape
    /// (no key mask), else Kiln's own kernel (`KILN_ATTENTION=own|cudnn|auto`).
    public enum AttentionKernel: String, Sendable { case auto, own, cudnn, gemm }
    public var attentionKernel: AttentionKernel = AttentionKernel(rawValue: FileIO.environment("KILN_ATTENTION") ?? "auto") ?? .auto
    /// The implementation the last `attention` call used.
    public internal(set) var lastAttentionPath = ""
    var cudnnState: (library: CuDNN?, error: String?)?
    /// How convolutions run (`KILN_CONV=auto|cudnn|gemm`): `auto` takes Kiln's kernel for few output channels where
    /// it applies, then cuDNN when it has an engine, else im2col + cuBLASLt; `cudnn` only cuDNN; `gemm` only im2col +
    /// cuBLASLt.
    public enum ConvolutionKernel: String, Sendable { case auto, cudnn, gemm }
    public var convolutionKernel: ConvolutionKernel = ConvolutionKernel(rawValue: FileIO.environment("KILN_CONV") ?? "auto") ?? .auto
    public internal(set) var lastConvolutionPath = ""
    var modules: [String: KernelModule] = [:]
    var plans: [GemmKey: GemmPlan] = [:]
    /// Seconds spent compiling or loading kernels, per family.
    public private(set) var kernelLoadSeconds: [String: Double] = [:]
    /// FP8 GEMM shapes cuBLASLt has no kernel for, and what runs instead.
    var fp8Fallbacks: [GemmKey: FP8Fallback] = [:]
    enum FP8Fallback: Equatable {
        /// The GEMM without its residual as C, then an add.
        case separateResidual
        /// The GEMM on the rows copied into a matrix of this many (the rest zero), keeping the first rows of the result.
        case paddedRows(Int)
        /// The GEMM in BF16 (weights dequantized per call).
        case bf16
    }
    /// Per-op device times of eager work (`KILN_PROFILE=1`).
    public let profile: OpProfile? = FileIO.environment("KILN_PROFILE") == "1" ? OpProfile() : nil

    public init(device: CUDADevice? = nil, linearPrecision: GemmPrecision = .bf16) throws {
        self.device = try device ?? CUDADevice()
        try self.device.makeCurrent()
        stream = try CUDAStream()
        currentStream = stream
        compiler = try KernelCompiler(arch: self.device.arch)
        lt = try CuBLASLt()
        gemmWorkspace = lt.workspace
        pool = DevicePool(stream: stream)
        let cache = GemmPlanCache(path: GemmPlanCache.defaultPath(gpuTag: self.device.cacheTag, cublasLtVersion: lt.version),
                                  gpu: self.device.name, cublasLtVersion: lt.version)
        tuner = GemmTuner(lt: lt, cache: cache)
        self.linearPrecision = linearPrecision
        attentionPrecision = FileIO.environment("KILN_ATTENTION_PRECISION") == "bf16" ? .bf16 : linearPrecision
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
        try profiled(symbol) { try launch(f, grid: grid, block: block, sharedBytes: shared, stream: currentStream, name: symbol, args) }
    }

    /// `body` timed under `name` when profiling eager work.
    func profiled<T>(_ name: @autoclosure () -> String, _ body: () throws -> T) throws -> T {
        guard let profile, !pool.isCapturing else { return try body() }
        return try profile.measure(name(), stream: currentStream, body)
    }

    /// Runs a GEMM with its tuned plan.
    func runGemm(_ key: GemmKey, _ operands: GemmOperands) throws {
        let p = try plan(key, operands: operands)
        try profiled("gemm \(key.precision.rawValue) \(key.m)x\(key.n)x\(key.k)\(key.epilogue == .none ? "" : " " + key.epilogue.rawValue)") {
            try p.run(operands, stream: currentStream, workspace: gemmWorkspace)
        }
    }

    /// Grid for a grid-stride elementwise kernel over `n` elements.
    func elementwiseGrid(_ n: Int) -> (Int, Int, Int) { (max(1, min((n + 255) / 256, device.multiprocessors * 16)), 1, 1) }

    /// The grid for kernels that move 8-element chunks per thread (`FOR_CHUNKS` in kiln_common.cuh).
    func chunkGrid(_ n: Int) -> (Int, Int, Int) { elementwiseGrid((n + 7) / 8) }

    /// The block for row kernels that keep a row in registers (norm.cu's `ROW_CHUNKS` 8-element chunks per thread):
    /// just enough warps for the row, so a 12288-wide row takes 12 warps and a 3072-wide one 3, not 8 mostly idle ones.
    /// `limit` is the kernel's `__launch_bounds__`; wider rows take the kernel's register-free path.
    func rowBlock(_ channels: Int, limit: Int = 1024) -> (Int, Int, Int) {
        let threads = ((channels + 31) / 32 + 31) / 32 * 32
        return (min(limit, max(32, threads)), 1, 1)
    }

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

    /// CUDA events on the stream around `body` (nil milliseconds where an event failed).
    public func deviceTimed<T>(_ body: () -> T) -> (result: T, milliseconds: () -> Double?) {
        let events = try? (start: CUDAEvent(), end: CUDAEvent())
        _ = try? events?.start.record(stream)
        let result = body()
        _ = try? events?.end.record(stream)
        return (result, {
            guard let events, (try? events.end.synchronize()) != nil, let ms = try? events.end.milliseconds(since: events.start) else { return nil }
            return Double(ms)
        })
    }

    // MARK: data movement

    public func upload(_ host: HostTensor) throws -> CUDATensor {
        let out = try empty(host.shape)
        try staging.uploadBF16(host.data, to: out.pointer, stream: stream)
        return out
    }

    public func download(_ t: CUDATensor) throws -> HostTensor {
        try stream.synchronize()
        switch t.type {
        case .bf16:
            var bits = [UInt16](repeating: 0, count: t.count)
            try bits.withUnsafeMutableBytes { try DeviceCopy.download(t.pointer, to: $0.baseAddress!, bytes: $0.count, stream: stream) }
            try stream.synchronize()
            return HostTensor(shape: t.shape, data: NumberFormats.bf16ToFloats(bits))
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

    /// FP8 codes and per-row scales of an FP8 tensor (a per-tensor scale repeated for every row).
    public func downloadFP8(_ t: CUDATensor) throws -> (codes: [UInt8], scales: [Float]) {
        try stream.synchronize()
        var codes = [UInt8](repeating: 0, count: t.count)
        let rows = t.count / max(1, t.shape.last ?? 1)
        var scales = [Float](repeating: 0, count: t.perTensorScale ? 1 : rows)
        try codes.withUnsafeMutableBytes { try DeviceCopy.download(t.pointer, to: $0.baseAddress!, bytes: $0.count, stream: stream) }
        try scales.withUnsafeMutableBytes { try DeviceCopy.download(t.scales!.pointer, to: $0.baseAddress!, bytes: $0.count, stream: stream) }
        try stream.synchronize()
        return (codes, t.perTensorScale ? [Float](repeating: scales[0], count: rows) : scales)
    }

    public func tensor(_ host: HostTensor) -> CUDATensor { attempt { try upload(host) } }

    public func weight(_ host: HostTensor, role: WeightRole) -> CUDATensor {
        attempt {
            let t = try upload(host)
            if role == .quantizableLinear && linearPrecision == .fp8 { return try quantizeRows(t) }
            if role == .upsamplingConvolution { return try subpixelWeights(t) }
            return t
        }
    }

    /// Stored bytes go to the device as they are (one copy from the mapped file per part), then to BF16 on the GPU.
    public func weight(rows parts: [StoredTensor], role: WeightRole) -> CUDATensor {
        attempt {
            guard let dtype = parts.first?.dtype, parts.allSatisfy({ $0.dtype == dtype }), dtype != .f8e4m3 else {
                return weight(parts.decodedJoined(), role: role)
            }
            let shape = parts.joinedShape
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
            if role == .upsamplingConvolution { t = try subpixelWeights(t) }
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
    /// columns keep their rows' scales: each part is the same codes times the same scale. Token rows of a batched
    /// activation (the text and image parts of an FP8 attention output) are a view for one batch item where cuBLASLt's
    /// alignment holds (codes at 256 bytes, scales at 16), else copied.
    func sliceFP8(_ x: CUDATensor, axis: Int, _ range: Range<Int>) throws -> CUDATensor {
        precondition(!x.perTensorScale, "slice: FP8 tensor \(x.shape) with one scale for the tensor")
        if x.shape.count >= 3, axis == x.shape.count - 2, let scales = x.scales {
            precondition(range.lowerBound >= 0 && range.upperBound <= x.shape[axis], "slice \(range) of axis \(axis) in \(x.shape)")
            let (items, length, row) = (x.shape[..<axis].reduce(1, *), x.shape[axis], x.shape.last!)
            var shape = x.shape
            shape[axis] = range.count
            if items == 1, (range.lowerBound * row) % 256 == 0, range.lowerBound % 4 == 0 {
                return CUDATensor(storage: x.storage, offset: x.offset + range.lowerBound * row, shape: shape, type: .fp8,
                                  scales: DeviceStorage(viewOf: scales, offset: range.lowerBound * 4, bytes: range.count * 4))
            }
            let out = try empty(shape, .fp8)
            for item in 0..<items {
                let (from, to) = (item * length + range.lowerBound, item * range.count)
                try DeviceCopy.copy(x.pointer + CUdeviceptr(from * row), to: out.pointer + CUdeviceptr(to * row), bytes: range.count * row, stream: currentStream)
                try DeviceCopy.copy(scales.pointer + CUdeviceptr(from * 4), to: out.scales!.pointer + CUdeviceptr(to * 4), bytes: range.count * 4, stream: currentStream)
            }
            return out
        }
        precondition(x.shape.count == 2 && (axis == 0 || axis == 1) && range.lowerBound >= 0 && range.upperBound <= x.shape[axis],
                     "slice: FP8 tensors split as matrices (\(x.shape), axis \(axis), \(range))")
        let (rows, columns) = (x.shape[0], x.shape[1])
        if axis == 0 {
            let out = try empty([range.count, columns], .fp8)
            try DeviceCopy.copy(x.pointer + CUdeviceptr(range.lowerBound * columns), to: out.pointer, bytes: range.count * columns, stream: currentStream)
            try DeviceCopy.copy(x.scales!.pointer + CUdeviceptr(range.lowerBound * 4), to: out.scales!.pointer, bytes: range.count * 4, stream: currentStream)
            return out
        }
        precondition(range.lowerBound % 2 == 0 && range.count % 2 == 0 && columns % 2 == 0, "slice: FP8 columns \(range) of \(x.shape) must be even")
        let out = try empty([rows, range.count], .fp8)
        // Byte pairs moved as 2-byte elements by the row copy kernel.
        try copyRows(dst: out.pointer, dstStride: range.count / 2, src: x.pointer + CUdeviceptr(range.lowerBound), srcStride: columns / 2,
                     rows: rows, cols: range.count / 2)
        try DeviceCopy.copy(x.scales!.pointer, to: out.scales!.pointer, bytes: rows * 4, stream: currentStream)
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

    public func gatedGELU(_ x: CUDATensor) -> CUDATensor {
        attempt {
            requireBF16(x, op: "gatedGELU")
            precondition(x.shape.last! % 2 == 0, "gatedGELU: odd last dimension in \(x.shape)")
            let half = x.shape.last! / 2
            let out = try empty(Array(x.shape.dropLast()) + [half])
            try launchKernel("elementwise", "gated_gelu_bf16", grid: chunkGrid(out.count), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(x.pointer); $0.add(UInt64(half)); $0.add(UInt64(out.count))
            }
            return out
        }
    }
}
